//! The staging table: other instrumentations' calls held durably in the audit database while
//! they wait out the hold window (`once`), so that an export is acknowledged only once its held
//! calls would survive a restart. Not part of the hash chain: a row leaves when its call is
//! promoted (appended to `mcp_logs`) or found to be another record of a counted call. After a
//! restart, [`Staging::stored_twin`] asks `mcp_logs` whether a record of ours of a held call was
//! stored before it.
//!
//! One table, `collect_held_calls`, in either store, with the same rows (the key, the origin,
//! when it is due, the call as JSON; times as RFC 3339 UTC text with milliseconds): beside the
//! trail in the SQLite file ([`sqlite`]), or in the PostgreSQL database ([`postgres`]), where
//! each row also names the chain of the replica that staged it, so that replicas sharing the
//! database load and release only their own. What a row holds and what a stored twin is are
//! decided here, once; the backends only run their SQL.

mod postgres;
mod sqlite;

use super::decode::Origin;
use super::once::{Held, SpanKey};
use crate::record::ToolCall;
use chrono::{DateTime, Utc};
use std::path::Path;

/// The staging table: foreign calls held durably in the audit database (not part of the hash
/// chain; rows leave when their call is promoted or found redundant), so an export is
/// acknowledged only once its held calls would survive a restart.
///
/// Every method may be called concurrently; each returns once its change is committed (or
/// failed). A failure is retryable when the database is locked, full, down or restarting.
#[derive(Clone)]
pub(crate) struct Staging(Backend);

#[derive(Clone)]
enum Backend {
    Sqlite(sqlite::SqliteStaging),
    Postgres(postgres::PgStaging),
}

/// A held record as the staging table keeps it.
struct StagedRow {
    timestamp: String,
    trace_id: String,
    span_id: String,
    origin: &'static str,
    due_at: String,
    call: String,
}

impl StagedRow {
    fn of(call: &ToolCall, origin: Origin, due: DateTime<Utc>) -> Self {
        let (timestamp, trace_id, span_id) = key_text(&SpanKey::of(call));
        StagedRow {
            timestamp,
            trace_id,
            span_id,
            origin: origin_str(origin),
            due_at: crate::audit::store::format_time(due),
            call: serde_json::to_string(call).unwrap_or_default(),
        }
    }
}

/// A staged row read back (origin, due time, call); `None` when it does not parse.
fn restored(origin: &str, due_at: &str, call: &str) -> Option<(ToolCall, Origin, DateTime<Utc>)> {
    let call = serde_json::from_str::<ToolCall>(call).ok()?;
    let due = DateTime::parse_from_rfc3339(due_at).ok()?;
    Some((call, origin_parse(origin), due.with_timezone(&Utc)))
}

/// A staging failure: retryable when the database is locked, full or cannot be reached.
#[derive(Debug, Clone, thiserror::Error)]
#[error("audit staging table in {place}: {message}")]
pub struct StagingError {
    /// The SQLite file, or the PostgreSQL URL without its password.
    pub(crate) place: String,
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

/// A key as the staging table keeps it: (timestamp, trace id, span id).
fn key_text(k: &SpanKey) -> (String, String, String) {
    let ts = DateTime::<Utc>::from_timestamp_millis(k.timestamp_ms).unwrap_or_default();
    (
        crate::audit::store::format_time(ts),
        crate::hex::encode(&k.trace_id),
        crate::hex::encode(&k.span_id),
    )
}

/// Where [`Staging::stored_twin`] looks in `mcp_logs`: rows of the held call's trace and tool
/// that started within a minute of it (clocks of two instrumentations differ).
struct TwinQuery {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    trace_id: String,
    tool_name: String,
}

impl TwinQuery {
    fn of(call: &ToolCall) -> Self {
        let slack = chrono::TimeDelta::seconds(60);
        TwinQuery {
            start: call.timestamp - slack,
            end: call.timestamp
                + chrono::TimeDelta::milliseconds(call.duration_ms.max(0.0) as i64)
                + slack,
            trace_id: call.ids.trace_id_hex(),
            tool_name: call.tool_name.clone(),
        }
    }
}

/// What [`Staging::stored_twin`] reads of a row of `mcp_logs` that [`TwinQuery`] found.
struct StoredRow {
    start: DateTime<Utc>,
    span_id: String,
    parent_span_id: Option<String>,
    duration_ms: f64,
    /// The row's `mcp` column (JSON: the method and the request id).
    mcp: Option<String>,
}

impl StoredRow {
    /// The row as a (partial) call of `held`'s trace and tool, enough for `Held::is_record_of`.
    fn as_call(&self, held: &ToolCall) -> Option<ToolCall> {
        let mcp: Option<serde_json::Value> = self
            .mcp
            .as_deref()
            .and_then(|m| serde_json::from_str(m).ok());
        let text = |key: &str| {
            mcp.as_ref()
                .and_then(|m| m.get(key))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        let mut call = ToolCall::new(held.tool_name.clone(), "");
        call.timestamp = self.start;
        call.duration_ms = self.duration_ms;
        call.ids.trace_id = held.ids.trace_id;
        call.ids.span_id = parse_hex(&self.span_id)?;
        call.ids.parent_span_id = self
            .parent_span_id
            .as_deref()
            .and_then(parse_hex)
            .unwrap_or_default();
        call.mcp.method = text("method").unwrap_or_else(|| "tools/call".to_owned());
        call.mcp.request_id = text("request_id");
        Some(call)
    }
}

/// Whether one of `rows` (found by [`TwinQuery`]) is a record of `held`'s call.
fn any_record_of(held: &Held, rows: impl IntoIterator<Item = StoredRow>) -> bool {
    rows.into_iter()
        .filter_map(|r| r.as_call(&held.call))
        .any(|stored| held.is_record_of(&stored))
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

impl Staging {
    /// The staging table in the SQLite audit database at `path` (created when absent).
    pub(crate) fn sqlite(path: &Path) -> Result<Self, StagingError> {
        sqlite::SqliteStaging::open(path).map(|s| Staging(Backend::Sqlite(s)))
    }

    /// The staging table in the PostgreSQL store at `url`, for the replica writing chain
    /// `chain_id`. Connects on first use (a database that is down now is not an error).
    pub(crate) fn postgres(url: &str, chain_id: &str) -> Result<Self, StagingError> {
        postgres::PgStaging::new(url, chain_id).map(|s| Staging(Backend::Postgres(s)))
    }

    /// Stages foreign records (a resent one is kept once), committed before this returns.
    pub(crate) async fn stage(
        &self,
        calls: Vec<(ToolCall, Origin, DateTime<Utc>)>,
    ) -> Result<(), StagingError> {
        if calls.is_empty() {
            return Ok(());
        }
        let rows: Vec<StagedRow> = calls
            .iter()
            .map(|(c, o, due)| StagedRow::of(c, *o, *due))
            .collect();
        match &self.0 {
            Backend::Sqlite(s) => s.stage(rows).await,
            Backend::Postgres(s) => s.stage(rows).await,
        }
    }

    /// Removes staged records whose call was promoted or found redundant.
    pub(crate) async fn release(&self, keys: Vec<SpanKey>) -> Result<(), StagingError> {
        if keys.is_empty() {
            return Ok(());
        }
        let keys: Vec<_> = keys.iter().map(key_text).collect();
        match &self.0 {
            Backend::Sqlite(s) => s.release(keys).await,
            Backend::Postgres(s) => s.release(keys).await,
        }
    }

    /// Every record this replica staged, oldest first, for the ledger at start. Rows that do
    /// not parse are skipped.
    pub(crate) async fn load(
        &self,
    ) -> Result<Vec<(ToolCall, Origin, DateTime<Utc>)>, StagingError> {
        let rows = match &self.0 {
            Backend::Sqlite(s) => s.load().await,
            Backend::Postgres(s) => s.load().await,
        }?;
        Ok(rows
            .iter()
            .filter_map(|(origin, due, call)| restored(origin, due, call))
            .collect())
    }

    /// True when the audit trail already holds a record of `held`'s call (stored before a
    /// restart, which the ledger does not remember), in any chain.
    pub(crate) async fn stored_twin(&self, held: &Held) -> Result<bool, StagingError> {
        let query = TwinQuery::of(&held.call);
        let rows = match &self.0 {
            Backend::Sqlite(s) => s.twins(query).await,
            Backend::Postgres(s) => s.twins(query).await,
        }?;
        Ok(any_record_of(held, rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_staged_row_reads_back_as_the_call_it_was() {
        let mut call = ToolCall::new("delete_note", "unknown");
        call.timestamp = DateTime::from_timestamp_millis(1_800_000_000_123).unwrap();
        call.ids.trace_id = [0xab; 16];
        call.ids.span_id = [0xcd; 8];
        let due = call.timestamp + chrono::TimeDelta::seconds(10);
        let row = StagedRow::of(&call, Origin::ForeignServer, due);
        assert_eq!(row.timestamp, "2027-01-15T08:00:00.123Z");
        assert_eq!(row.span_id, "cdcdcdcdcdcdcdcd");
        let (back, origin, at) = restored(row.origin, &row.due_at, &row.call).unwrap();
        assert_eq!((back, origin, at), (call, Origin::ForeignServer, due));
        assert!(restored("server", "yesterday", &row.call).is_none());
    }

    #[test]
    fn a_stored_row_is_read_with_its_method_and_request_id() {
        let mut held = ToolCall::new("create_note", "unknown");
        held.ids.trace_id = [1; 16];
        let row = StoredRow {
            start: held.timestamp,
            span_id: "1010101010101010".into(),
            parent_span_id: None,
            duration_ms: 30.0,
            mcp: Some(r#"{"method":"tools/call","request_id":"7"}"#.into()),
        };
        let call = row.as_call(&held).unwrap();
        assert_eq!(call.ids.span_id, [0x10; 8]);
        assert_eq!(call.ids.trace_id, [1; 16]);
        assert_eq!(call.mcp.request_id.as_deref(), Some("7"));
        let short = StoredRow {
            span_id: "10".into(),
            ..row
        };
        assert!(short.as_call(&held).is_none());
    }
}
