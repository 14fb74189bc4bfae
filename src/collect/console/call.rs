//! The call detail page's data: one stored call with every column (as `audit query --json`
//! shows it, plus the chain links), and the other calls of its trace in time order.
//!
//! A call is named by its row id (from the review, the search or the trace) or by the key an
//! exporter gives it, start time, trace and span id (from the live view), which the store's
//! unique index finds. On PostgreSQL ids are per chain, so a row id is read with its chain
//! (`chain`), or with its start time, and an id that is still in several chains is refused
//! with their names ([`pg`]). The trace's other calls are looked up within `TRACE_REACH` of
//! the call's start, over the time index, so the lookup never scans the store.

pub(crate) mod pg;

use crate::audit::store::{self, format_time};
use axum::http::StatusCode;
use chrono::{DateTime, TimeDelta, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Deserialize;
use serde_json::{Value, json};

/// How far from the call's start the other calls of its trace are looked for.
pub(crate) const TRACE_REACH: TimeDelta = TimeDelta::hours(1);
/// The most calls of one trace listed.
pub(crate) const TRACE_CALLS: usize = 200;

/// Which call: `id` (with `chain`, or `timestamp`, on PostgreSQL), or `timestamp` +
/// `trace_id` + `span_id`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct CallQuery {
    /// The row id.
    pub id: Option<i64>,
    /// The chain (replica) that stored the row, on PostgreSQL.
    pub chain: Option<String>,
    /// The call's start (RFC 3339), with its trace and span id, or with its row id.
    pub timestamp: Option<String>,
    /// The trace id, 32 hex digits.
    pub trace_id: Option<String>,
    /// The span id, 16 hex digits.
    pub span_id: Option<String>,
}

/// A call as a [`CallQuery`] names it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum CallKey {
    /// A row id; on PostgreSQL, within `chain` or at `timestamp` when given.
    Row {
        id: i64,
        chain: Option<String>,
        timestamp: Option<DateTime<Utc>>,
    },
    /// The exporter's key of the call, unique in the store.
    Span {
        timestamp: DateTime<Utc>,
        trace_id: String,
        span_id: String,
    },
}

impl CallQuery {
    /// The call the query names, or why it names none.
    pub(crate) fn key(&self) -> Result<CallKey, String> {
        let time = |t: &String| {
            DateTime::parse_from_rfc3339(t)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| format!("`timestamp` must be RFC 3339, got {t:?}: {e}"))
        };
        match self {
            CallQuery { id: Some(id), .. } => Ok(CallKey::Row {
                id: *id,
                chain: self.chain.clone().filter(|c| !c.is_empty()),
                timestamp: self.timestamp.as_ref().map(time).transpose()?,
            }),
            CallQuery {
                timestamp: Some(t),
                trace_id: Some(trace),
                span_id: Some(span),
                ..
            } => Ok(CallKey::Span {
                timestamp: time(t)?,
                trace_id: trace.clone(),
                span_id: span.clone(),
            }),
            _ => Err("name the call by `id`, or by `timestamp`, `trace_id` and `span_id`".into()),
        }
    }
}

/// Why a call could not be shown: the HTTP status and the message.
pub(crate) type CallError = (StatusCode, String);

/// The page's answer: the call, and its trace's calls in time order.
fn answer(call: Value, trace: Vec<Value>) -> Value {
    json!({
        "call": call,
        "trace": trace,
        "trace_reach_seconds": TRACE_REACH.num_seconds(),
        "trace_limit": TRACE_CALLS,
    })
}

/// The call's start, from its row.
fn start_of(call: &Value) -> DateTime<Utc> {
    call["timestamp"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(Utc::now)
}

/// The call and its trace from the SQLite store (one chain: a row id alone names a row), or
/// `None` when the store has no such call.
pub fn detail(conn: &Connection, q: &CallQuery) -> Result<Option<Value>, String> {
    detail_of(conn, &q.key()?).map_err(|e| format!("audit trail: {e}"))
}

fn detail_of(conn: &Connection, key: &CallKey) -> rusqlite::Result<Option<Value>> {
    let select = store::row_select(conn)?;
    let (where_, args): (&str, Vec<rusqlite::types::Value>) = match key {
        CallKey::Row { id, .. } => ("id = ?1", vec![(*id).into()]),
        CallKey::Span {
            timestamp,
            trace_id,
            span_id,
        } => (
            "timestamp = ?1 AND trace_id = ?2 AND span_id = ?3",
            vec![
                format_time(*timestamp).into(),
                trace_id.clone().into(),
                span_id.clone().into(),
            ],
        ),
    };
    let mut stmt = conn.prepare(&format!("SELECT {select} FROM mcp_logs WHERE {where_}"))?;
    let names: Vec<String> = stmt.column_names().map(str::to_owned).collect();
    let call = stmt
        .query_row(rusqlite::params_from_iter(args), |r| {
            store::row_to_json(&names, r)
        })
        .optional()?;
    let Some(call) = call else {
        return Ok(None);
    };
    let at = start_of(&call);
    let mut trace = conn.prepare_cached(
        "SELECT id, timestamp, tool_name, user, status, duration_ms, error_code, \
         operation_type, span_id, parent_span_id FROM mcp_logs \
         WHERE timestamp >= ?1 AND timestamp <= ?2 AND trace_id = ?3 \
         ORDER BY timestamp, id LIMIT ?4",
    )?;
    let calls = trace
        .query_map(
            params![
                format_time(at - TRACE_REACH),
                format_time(at + TRACE_REACH),
                call["trace_id"].as_str().unwrap_or(""),
                TRACE_CALLS as i64,
            ],
            |r| {
                Ok(json!({
                    "id": r.get::<_, i64>(0)?,
                    "timestamp": r.get::<_, String>(1)?,
                    "tool_name": r.get::<_, String>(2)?,
                    "user": r.get::<_, String>(3)?,
                    "status": r.get::<_, String>(4)?,
                    "duration_ms": r.get::<_, f64>(5)?,
                    "error_code": r.get::<_, Option<String>>(6)?,
                    "operation_type": r.get::<_, Option<String>>(7)?,
                    "span_id": r.get::<_, String>(8)?,
                    "parent_span_id": r.get::<_, Option<String>>(9)?,
                }))
            },
        )?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(answer(call, calls)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditOptions, AuditWriter};
    use crate::record::{OperationType, ToolCall, TraceIds, WriteOp};

    #[test]
    fn a_call_is_found_by_id_or_key_with_its_trace_in_time_order() {
        let (_dir, path) = crate::testing::temp_path("audit.db");
        let w = AuditWriter::open(&path, AuditOptions::default()).unwrap();
        let root = ToolCall::new("list_tasks", "alice");
        let mut child = ToolCall::new("update_task", "alice");
        child.ids = TraceIds::child_of(root.ids.trace_id, root.ids.span_id);
        child.timestamp = root.timestamp + TimeDelta::milliseconds(5);
        child.write = Some(
            WriteOp::new(OperationType::Update)
                .before(json!({"title": "a"}))
                .after(json!({"title": "b"})),
        );
        let other = ToolCall::new("get_task", "bob");
        w.append_blocking(vec![child.clone(), other, root.clone()])
            .unwrap();
        drop(w);
        let conn = store::open_ro(&path).unwrap();
        let by_key = detail(
            &conn,
            &CallQuery {
                timestamp: Some(child.timestamp_rfc3339()),
                trace_id: Some(child.ids.trace_id_hex()),
                span_id: Some(child.ids.span_id_hex()),
                ..CallQuery::default()
            },
        )
        .unwrap()
        .unwrap();
        assert_eq!(by_key["call"]["after_state"], json!({"title": "b"}));
        assert!(by_key["call"]["hash"].is_string());
        let trace: Vec<&str> = by_key["trace"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["tool_name"].as_str().unwrap())
            .collect();
        assert_eq!(trace, ["list_tasks", "update_task"]);
        let id = by_key["call"]["id"].as_i64().unwrap();
        let by_id = detail(
            &conn,
            &CallQuery {
                id: Some(id),
                ..CallQuery::default()
            },
        )
        .unwrap();
        assert_eq!(by_id.unwrap()["call"], by_key["call"]);
        assert!(
            detail(
                &conn,
                &CallQuery {
                    id: Some(999),
                    ..CallQuery::default()
                }
            )
            .unwrap()
            .is_none()
        );
        assert!(detail(&conn, &CallQuery::default()).is_err());
    }
}
