//! The audit trail as collect's [`CallStore`]: an export is acknowledged only after `append`
//! commits, and only what it newly inserted is counted.

use super::ingest::{CallStore, StoreError};
use crate::audit::AuditWriter;
use crate::record::ToolCall;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;

impl CallStore for AuditWriter {
    fn append<'a>(
        &'a self,
        calls: &'a [ToolCall],
    ) -> Pin<Box<dyn Future<Output = Result<Vec<bool>, StoreError>> + Send + 'a>> {
        Box::pin(async move {
            AuditWriter::append(self, calls.to_vec())
                .await
                .map(|outcome| outcome.inserted)
                .map_err(|e| StoreError {
                    retryable: e.is_retryable(),
                    message: e.to_string(),
                })
        })
    }

    fn staging_path(&self) -> Option<&Path> {
        Some(self.path())
    }
}
