//! The staging table in the SQLite audit database: a `WITHOUT ROWID` table beside the trail,
//! written on the blocking pool through one connection of its own.

use super::{StagedRow, StagingError, StoredRow, TwinQuery};
use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone)]
pub(super) struct SqliteStaging {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

const STAGING_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS collect_held_calls (
    timestamp TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    origin TEXT NOT NULL,
    due_at TEXT NOT NULL,
    call TEXT NOT NULL,
    PRIMARY KEY (timestamp, trace_id, span_id)
) WITHOUT ROWID;
";

impl SqliteStaging {
    /// Opens the staging table in the audit database at `path` (creating it when absent).
    pub(super) fn open(path: &Path) -> Result<Self, StagingError> {
        let err = |e: rusqlite::Error| StagingError {
            place: path.display().to_string(),
            retryable: false,
            message: e.to_string(),
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(2)).map_err(err)?;
        conn.execute_batch(STAGING_SCHEMA).map_err(err)?;
        Ok(SqliteStaging {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_path_buf(),
        })
    }

    fn failure(&self, message: String, retryable: bool) -> StagingError {
        StagingError {
            place: self.path.display().to_string(),
            message,
            retryable,
        }
    }

    fn error(&self, e: rusqlite::Error) -> StagingError {
        let retryable = matches!(
            e.sqlite_error_code(),
            Some(
                rusqlite::ErrorCode::DatabaseBusy
                    | rusqlite::ErrorCode::DatabaseLocked
                    | rusqlite::ErrorCode::DiskFull
                    | rusqlite::ErrorCode::SystemIoFailure
            )
        );
        self.failure(e.to_string(), retryable)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StagingError> {
        // The staging table lives in the audit database: its files are checked the same way.
        if let Err(e) = crate::audit::writable::check(&self.path) {
            return Err(self.failure(e.to_string(), true));
        }
        let conn = self.conn.clone();
        let out = tokio::task::spawn_blocking(move || {
            let mut c = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut c)
        })
        .await
        .map_err(|e| self.failure(format!("the staging task failed: {e}"), true))?;
        out.map_err(|e| self.error(e))
    }

    pub(super) async fn stage(&self, rows: Vec<StagedRow>) -> Result<(), StagingError> {
        self.blocking(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT OR IGNORE INTO collect_held_calls \
                     (timestamp, trace_id, span_id, origin, due_at, call) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?;
                for r in &rows {
                    stmt.execute(params![
                        r.timestamp,
                        r.trace_id,
                        r.span_id,
                        r.origin,
                        r.due_at,
                        r.call
                    ])?;
                }
            }
            tx.commit()
        })
        .await
    }

    pub(super) async fn release(
        &self,
        keys: Vec<(String, String, String)>,
    ) -> Result<(), StagingError> {
        self.blocking(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            {
                let mut stmt = tx.prepare_cached(
                    "DELETE FROM collect_held_calls \
                     WHERE timestamp = ?1 AND trace_id = ?2 AND span_id = ?3",
                )?;
                for (ts, trace, span) in &keys {
                    stmt.execute(params![ts, trace, span])?;
                }
            }
            tx.commit()
        })
        .await
    }

    /// Every staged row: (origin, due time, call), oldest first.
    pub(super) async fn load(&self) -> Result<Vec<(String, String, String)>, StagingError> {
        self.blocking(|conn| {
            let mut stmt = conn.prepare(
                "SELECT origin, due_at, call FROM collect_held_calls ORDER BY timestamp",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect()
        })
        .await
    }

    /// The rows of `mcp_logs` that `q` finds.
    pub(super) async fn twins(&self, q: TwinQuery) -> Result<Vec<StoredRow>, StagingError> {
        self.blocking(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT timestamp, span_id, parent_span_id, duration_ms, mcp \
                 FROM mcp_logs WHERE timestamp >= ?1 AND timestamp <= ?2 \
                 AND trace_id = ?3 AND tool_name = ?4",
            )?;
            let rows = stmt.query_map(
                params![
                    crate::audit::store::format_time(q.start),
                    crate::audit::store::format_time(q.end),
                    q.trace_id,
                    q.tool_name,
                ],
                |r| {
                    let start: String = r.get(0)?;
                    let Ok(start) = DateTime::parse_from_rfc3339(&start) else {
                        return Ok(None);
                    };
                    Ok(Some(StoredRow {
                        start: start.with_timezone(&Utc),
                        span_id: r.get(1)?,
                        parent_span_id: r.get(2)?,
                        duration_ms: r.get(3)?,
                        mcp: r.get(4)?,
                    }))
                },
            )?;
            rows.filter_map(Result::transpose).collect()
        })
        .await
    }
}
