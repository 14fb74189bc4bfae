//! The staging table: other instrumentations' calls held durably in the audit database while
//! they wait out the hold window (`once`), so that an export is acknowledged only once its held
//! calls would survive a restart. Not part of the hash chain: a row leaves when its call is
//! promoted (appended to `mcp_logs`) or found to be another record of a counted call. After a
//! restart, [`Staging::stored_twin`] asks `mcp_logs` whether a record of ours of a held call was
//! stored before it.

use super::decode::Origin;
use super::once::{Held, SpanKey};
use crate::record::ToolCall;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The staging table: foreign calls held durably in the audit database (not part of the hash
/// chain; rows leave when their call is promoted or found redundant), so an export is
/// acknowledged only once its held calls would survive a restart.
#[derive(Clone)]
pub(crate) struct Staging {
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

/// A staging failure: retryable when the database is locked or full.
#[derive(Debug, Clone, thiserror::Error)]
#[error("audit staging table in {path}: {message}")]
pub struct StagingError {
    pub(crate) path: PathBuf,
    pub(crate) message: String,
    pub(crate) retryable: bool,
}

fn origin_str(o: Origin) -> &'static str {
    match o {
        Origin::Ours => "ours",
        Origin::ForeignServer => "server",
        Origin::ForeignInternal => "internal",
    }
}

fn origin_parse(s: &str) -> Origin {
    match s {
        "ours" => Origin::Ours,
        "server" => Origin::ForeignServer,
        _ => Origin::ForeignInternal,
    }
}

fn key_text(k: &SpanKey) -> (String, String, String) {
    let ts = DateTime::<Utc>::from_timestamp_millis(k.timestamp_ms).unwrap_or_default();
    (
        crate::audit::store::format_time(ts),
        crate::hex::encode(&k.trace_id),
        crate::hex::encode(&k.span_id),
    )
}

impl Staging {
    /// Opens the staging table in the audit database at `path` (creating it when absent).
    pub(crate) fn open(path: &Path) -> Result<Self, StagingError> {
        let err = |e: rusqlite::Error| StagingError {
            path: path.to_path_buf(),
            retryable: false,
            message: e.to_string(),
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(2)).map_err(err)?;
        conn.execute_batch(STAGING_SCHEMA).map_err(err)?;
        Ok(Staging {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_path_buf(),
        })
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
        StagingError {
            path: self.path.clone(),
            message: e.to_string(),
            retryable,
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StagingError> {
        // The staging table lives in the audit database: its files are checked the same way.
        if let Err(e) = crate::audit::writable::check(&self.path) {
            return Err(StagingError {
                path: self.path.clone(),
                message: e.to_string(),
                retryable: true,
            });
        }
        let conn = self.conn.clone();
        let out = tokio::task::spawn_blocking(move || {
            let mut c = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut c)
        })
        .await
        .map_err(|e| StagingError {
            path: self.path.clone(),
            message: format!("the staging task failed: {e}"),
            retryable: true,
        })?;
        out.map_err(|e| self.error(e))
    }

    /// Stages foreign records (a resent one is kept once), committed before this returns.
    pub(crate) async fn stage(
        &self,
        calls: Vec<(ToolCall, Origin, DateTime<Utc>)>,
    ) -> Result<(), StagingError> {
        if calls.is_empty() {
            return Ok(());
        }
        let rows: Vec<_> = calls
            .iter()
            .map(|(c, o, due)| {
                let (ts, trace, span) = key_text(&SpanKey::of(c));
                let json = serde_json::to_string(c).unwrap_or_default();
                (
                    ts,
                    trace,
                    span,
                    origin_str(*o),
                    crate::audit::store::format_time(*due),
                    json,
                )
            })
            .collect();
        self.blocking(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT OR IGNORE INTO collect_held_calls \
                     (timestamp, trace_id, span_id, origin, due_at, call) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?;
                for r in &rows {
                    stmt.execute(params![r.0, r.1, r.2, r.3, r.4, r.5])?;
                }
            }
            tx.commit()
        })
        .await
    }

    /// Removes staged records whose call was promoted or found redundant.
    pub(crate) async fn release(&self, keys: Vec<SpanKey>) -> Result<(), StagingError> {
        if keys.is_empty() {
            return Ok(());
        }
        self.blocking(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            {
                let mut stmt = tx.prepare_cached(
                    "DELETE FROM collect_held_calls \
                     WHERE timestamp = ?1 AND trace_id = ?2 AND span_id = ?3",
                )?;
                for k in &keys {
                    let (ts, trace, span) = key_text(k);
                    stmt.execute(params![ts, trace, span])?;
                }
            }
            tx.commit()
        })
        .await
    }

    /// Every staged record, for the ledger at start. Rows that do not parse are skipped.
    pub(crate) fn load(&self) -> Result<Vec<(ToolCall, Origin, DateTime<Utc>)>, StagingError> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let mut stmt = conn
            .prepare("SELECT origin, due_at, call FROM collect_held_calls ORDER BY timestamp")
            .map_err(|e| self.error(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .map_err(|e| self.error(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (origin, due, call) = row.map_err(|e| self.error(e))?;
            let (Ok(call), Ok(due)) = (
                serde_json::from_str::<ToolCall>(&call),
                DateTime::parse_from_rfc3339(&due),
            ) else {
                continue;
            };
            out.push((call, origin_parse(&origin), due.with_timezone(&Utc)));
        }
        Ok(out)
    }

    /// True when the audit trail already holds a record of `held`'s call (stored before a
    /// restart, which the ledger does not remember).
    pub(crate) async fn stored_twin(&self, held: &Held) -> Result<bool, StagingError> {
        let held = held.clone();
        let call = held.call.clone();
        self.blocking(move |conn| {
            let start = call.timestamp - chrono::TimeDelta::seconds(60);
            let end = call.timestamp
                + chrono::TimeDelta::milliseconds(call.duration_ms.max(0.0) as i64)
                + chrono::TimeDelta::seconds(60);
            let mut stmt = conn.prepare_cached(
                "SELECT timestamp, span_id, parent_span_id, duration_ms, \
                 json_extract(mcp, '$.method'), json_extract(mcp, '$.request_id') \
                 FROM mcp_logs WHERE timestamp >= ?1 AND timestamp <= ?2 \
                 AND trace_id = ?3 AND tool_name = ?4",
            )?;
            let rows = stmt.query_map(
                params![
                    crate::audit::store::format_time(start),
                    crate::audit::store::format_time(end),
                    call.ids.trace_id_hex(),
                    call.tool_name,
                ],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<String>>(2)?,
                        r.get::<_, f64>(3)?,
                        r.get::<_, Option<String>>(4)?,
                        r.get::<_, Option<String>>(5)?,
                    ))
                },
            )?;
            for row in rows {
                let (ts, span, parent, duration, method, request_id) = row?;
                let Some(stored) = stored_record(
                    &call,
                    &ts,
                    &span,
                    parent.as_deref(),
                    duration,
                    method,
                    request_id,
                ) else {
                    continue;
                };
                if held.is_record_of(&stored) {
                    return Ok(true);
                }
            }
            Ok(false)
        })
        .await
    }
}

fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// What `stored_twin` needs of a stored row, as a (partial) call.
fn stored_record(
    held: &ToolCall,
    ts: &str,
    span: &str,
    parent: Option<&str>,
    duration_ms: f64,
    method: Option<String>,
    request_id: Option<String>,
) -> Option<ToolCall> {
    let start = DateTime::parse_from_rfc3339(ts).ok()?.with_timezone(&Utc);
    let mut call = ToolCall::new(held.tool_name.clone(), "");
    call.timestamp = start;
    call.duration_ms = duration_ms;
    call.ids.trace_id = held.ids.trace_id;
    call.ids.span_id = parse_hex(span)?;
    call.ids.parent_span_id = parent.and_then(parse_hex).unwrap_or_default();
    call.mcp.method = method.unwrap_or_else(|| "tools/call".to_owned());
    call.mcp.request_id = request_id;
    Some(call)
}
