//! The audit trail as collect's [`CallStore`]: the adapter lives on collect's side, so the
//! audit stage knows nothing of the collector that feeds it.

use super::ingest::{CallStore, StoreError};
use crate::audit::AuditWriter;
use crate::record::ToolCall;
use std::future::Future;
use std::pin::Pin;

/// An export is acknowledged only after `append` commits.
impl CallStore for AuditWriter {
    fn append<'a>(
        &'a self,
        calls: &'a [ToolCall],
    ) -> Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'a>> {
        Box::pin(async move {
            AuditWriter::append(self, calls.to_vec())
                .await
                .map(|_| ())
                .map_err(|e| StoreError {
                    retryable: e.is_retryable(),
                    message: e.to_string(),
                })
        })
    }
}
