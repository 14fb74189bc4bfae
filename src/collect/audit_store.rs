//! The audit trail as collect's [`CallStore`]: an export is acknowledged only after `append`
//! commits, and only what it newly inserted is counted. Both stores answer the same way: the
//! SQLite file ([`AuditWriter`]) and PostgreSQL ([`PgWriter`], `--audit postgres://…`).

use super::ingest::{CallStore, StoreError};
use crate::audit::pg::PgWriter;
use crate::audit::{AuditError, AuditWriter};
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
            AuditWriter::append_calls(self, calls)
                .await
                .map(|outcome| outcome.inserted)
                .map_err(store_error)
        })
    }

    fn staging_path(&self) -> Option<&Path> {
        Some(self.path())
    }
}

fn store_error(e: AuditError) -> StoreError {
    StoreError {
        retryable: e.is_retryable(),
        message: e.to_string(),
    }
}

/// Other instrumentations' held calls are staged in the same database (`collect_held_calls`,
/// per chain) when `collect` opens the store itself (`--audit postgres://…`); given to
/// [`start`](super::start) as a store, they stay in memory.
impl CallStore for PgWriter {
    fn append<'a>(
        &'a self,
        calls: &'a [ToolCall],
    ) -> Pin<Box<dyn Future<Output = Result<Vec<bool>, StoreError>> + Send + 'a>> {
        Box::pin(async move {
            PgWriter::append(self, calls)
                .await
                .map(|outcome| outcome.inserted)
                .map_err(store_error)
        })
    }
}
