//! Call detail on the PostgreSQL store: the row found by its key (by the primary key within a
//! chain, else over the time index), its columns as `audit query --json` gives them on that
//! store (read through [`crate::audit::pg::review::query`], `chain_id` included), plus the
//! columns the query leaves out (chain links, result, recording time), and the trace's calls
//! from every chain, in time order.

use super::{CallError, CallKey, TRACE_CALLS, TRACE_REACH, answer, start_of};
use crate::audit::pg::PgTarget;
use crate::audit::pg::review;
use crate::audit::review::QueryFilter;
use crate::audit::store::format_time;
use axum::http::StatusCode;
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Value, json};
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

/// A time as the chain keeps it (RFC 3339, UTC, milliseconds), in SQL.
const TIME_TEXT: &str = "'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'";

fn unavailable(e: impl std::fmt::Display) -> CallError {
    (StatusCode::SERVICE_UNAVAILABLE, format!("audit trail: {e}"))
}

/// The call `key` names and its trace, or `None` when no chain holds it.
pub(crate) async fn detail(
    client: &Client,
    t: &PgTarget,
    key: &CallKey,
) -> Result<Option<Value>, CallError> {
    let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    let mut cond: Vec<String> = Vec::new();
    let mut add = |c: &str, v: Box<dyn ToSql + Sync + Send>| {
        args.push(v);
        cond.push(format!("{c} = ${}", args.len()));
    };
    match key {
        CallKey::Row {
            id,
            chain,
            timestamp,
        } => {
            add("id", Box::new(*id));
            if let Some(c) = chain {
                add("chain_id", Box::new(c.clone()));
            }
            if let Some(at) = timestamp {
                add("\"timestamp\"", Box::new(*at));
            }
        }
        CallKey::Span {
            timestamp,
            trace_id,
            span_id,
        } => {
            add("\"timestamp\"", Box::new(*timestamp));
            add("trace_id", Box::new(trace_id.clone()));
            add("span_id", Box::new(span_id.clone()));
        }
    }
    let sql = format!(
        "SELECT chain_id, id, \"timestamp\", tool_name, \"user\", parent_span_id, result, \
         recorded_at, row_version, prev_hash, hash FROM mcp_logs WHERE {} \
         ORDER BY chain_id LIMIT 10",
        cond.join(" AND ")
    );
    let refs: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a.as_ref() as _).collect();
    let found = client
        .query(sql.as_str(), &refs)
        .await
        .map_err(|e| unavailable(t.error("finding the call", e)))?;
    let Some(row) = found.first() else {
        return Ok(None);
    };
    if found.len() > 1 {
        let chains: Vec<&str> = found.iter().map(|r| r.get(0)).collect();
        return Err((
            StatusCode::CONFLICT,
            format!(
                "row id {} is in several chains ({}): name the chain with `chain`",
                row.get::<_, i64>(1),
                chains.join(", ")
            ),
        ));
    }
    let (chain, id): (String, i64) = (row.get(0), row.get(1));
    let at: DateTime<Utc> = row.get(2);
    // The row as `audit query` shows it: the calls of its millisecond by its user and tool.
    let filter = QueryFilter {
        since: Some(at),
        until: Some(at + TimeDelta::milliseconds(1)),
        user: Some(row.get(4)),
        tool: Some(row.get(3)),
        limit: i64::MAX as u64,
        ..QueryFilter::default()
    };
    let mut call = None;
    review::query(client, t, &filter, |v| {
        if v["chain_id"] == chain.as_str() && v["id"] == id {
            call = Some(v);
        }
        Ok(())
    })
    .await
    .map_err(unavailable)?;
    let Some(mut call) = call else {
        return Ok(None);
    };
    let result: Option<String> = row.get(6);
    for (k, v) in [
        ("parent_span_id", json!(row.get::<_, Option<String>>(5))),
        (
            "result",
            result.map_or(Value::Null, |s| {
                serde_json::from_str(&s).unwrap_or(Value::String(s))
            }),
        ),
        ("recorded_at", json!(format_time(row.get(7)))),
        ("row_version", json!(row.get::<_, Option<i64>>(8))),
        ("prev_hash", json!(row.get::<_, String>(9))),
        ("hash", json!(row.get::<_, String>(10))),
    ] {
        call[k] = v;
    }
    let trace = trace(client, t, &call).await?;
    Ok(Some(answer(call, trace)))
}

/// The calls of `call`'s trace within [`TRACE_REACH`] of it, from every chain, in time order.
async fn trace(client: &Client, t: &PgTarget, call: &Value) -> Result<Vec<Value>, CallError> {
    let at = start_of(call);
    let sql = format!(
        "SELECT json_build_object('id', id, 'chain_id', chain_id, \
         'timestamp', to_char(\"timestamp\" AT TIME ZONE 'UTC', {TIME_TEXT}), \
         'tool_name', tool_name, 'user', \"user\", 'status', status, \
         'duration_ms', duration_ms, 'error_code', error_code, \
         'operation_type', operation_type, 'span_id', span_id, \
         'parent_span_id', parent_span_id)::text \
         FROM mcp_logs WHERE \"timestamp\" >= $1 AND \"timestamp\" <= $2 AND trace_id = $3 \
         ORDER BY \"timestamp\", chain_id, id LIMIT $4"
    );
    let rows = client
        .query(
            sql.as_str(),
            &[
                &(at - TRACE_REACH),
                &(at + TRACE_REACH),
                &call["trace_id"].as_str().unwrap_or(""),
                &(TRACE_CALLS as i64),
            ],
        )
        .await
        .map_err(|e| unavailable(t.error("reading the trace", e)))?;
    rows.iter()
        .map(|r| serde_json::from_str(r.get(0)).map_err(unavailable))
        .collect()
}
