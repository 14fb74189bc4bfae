//! `audit review` and `audit query` on the PostgreSQL store: one answer for every chain (every
//! replica) of the shared table, as the SQLite store gives for its one chain.
//!
//! The review takes the writes dated in the window and the writes recorded in it whatever they
//! are dated (a wrong clock, or a span dated to hide it), as the SQLite store does; both halves
//! use a partial index on the writes. `query --text` uses PostgreSQL's own text search over
//! [`schema::SEARCH_DOCUMENT`] (context and states), indexed by a GIN index on that
//! expression: the words are split as SQLite's FTS5 splits them (letters and digits; everything
//! else separates), case-folded, and a search word of several tokens (`task-3`) is a phrase.
//! The index is computed by the server from the chained columns themselves, so unlike the
//! SQLite store's external index there is no second copy that could be edited apart from them.

use super::super::error::AuditError;
use super::super::review::{QueryFilter, Review, ReviewFilter, WriteRow};
use super::super::store;
use super::schema::{self, quoted};
use super::target::PgTarget;
use super::verify::copy::{self, CopyError, Fields};
use super::verify::literal;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde_json::{Map, Value};
use std::io;
use std::ops::ControlFlow;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, GenericClient};

/// The review's columns, in [`WriteRow`] order.
const REVIEW_COLUMNS: &str = "id, \"timestamp\", tool_name, \"user\", operation_type, \
resource_id, status, error_code, user_confirmation, confirmation_outcome, confirmation_source, \
recorded_at, chain_id";
/// How many they are.
const R: usize = 13;

/// Connects to the store at `url` (`--db`).
pub(crate) async fn connect(url: &str) -> Result<(PgTarget, Client), AuditError> {
    let t = PgTarget::parse(url, "--db")?;
    let client = t.connect().await?;
    Ok((t, client))
}

/// Runs the daily write review over every chain of the store at `url`.
pub async fn review_url(url: &str, filter: &ReviewFilter) -> Result<Review, AuditError> {
    let (t, client) = connect(url).await?;
    review(&client, &t, filter).await
}

/// `t` as a `timestamptz` literal, to the microsecond (as a parameter would be sent).
fn time_literal(t: DateTime<Utc>) -> String {
    format!(
        "'{}'::timestamptz",
        t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    )
}

/// The daily write review on `client`: writes dated or recorded in the window, newest first
/// (ties by chain, then by id, newest first), with the counts per user.
///
/// One binary `COPY` of the writes (both partial indexes of the writes, OR-ed: no duplicate to
/// remove), read as it arrives, each row decoded from the bytes received; the server does not
/// sort (half a million writes sort faster here, on their binary timestamps).
pub(crate) async fn review(
    client: &impl GenericClient,
    t: &PgTarget,
    filter: &ReviewFilter,
) -> Result<Review, AuditError> {
    let (since, until) = (time_literal(filter.since), time_literal(filter.until));
    let mut extra = String::new();
    for (col, v) in [("user", &filter.user), ("tool_name", &filter.tool)] {
        if let Some(v) = v {
            extra.push_str(&format!(" AND {} = {}", quoted(col), literal(v)));
        }
    }
    let sql = format!(
        "COPY (SELECT {REVIEW_COLUMNS} FROM mcp_logs WHERE operation_type IS NOT NULL{extra} \
         AND ((\"timestamp\" >= {since} AND \"timestamp\" < {until}) \
         OR (recorded_at >= {since} AND recorded_at < {until}))) TO STDOUT (FORMAT binary)"
    );
    let err = |e| t.error("reading the write review", e);
    let stream = client.client().copy_out(sql.as_str()).await.map_err(err)?;
    // The writes as they arrive, and the sort key of each (its timestamp, its index there):
    // half a million rows are sorted by moving 16-byte keys, then each row is moved once.
    let mut arrived: Vec<Option<WriteRow>> = Vec::new();
    let mut keys: Vec<(i64, usize)> = Vec::new();
    let mut unreadable = None;
    let read = copy::for_each::<R>(stream, |f| match write_row(f) {
        Ok((micros, w)) => {
            keys.push((micros, arrived.len()));
            arrived.push(Some(w));
            ControlFlow::Continue(())
        }
        Err(column) => {
            unreadable = Some(column);
            ControlFlow::Break(())
        }
    })
    .await;
    match read {
        Err(CopyError::Postgres(e)) => return Err(err(e)),
        Err(CopyError::Malformed(what)) => {
            return Err(t.unusable(format!(
                "the server's binary COPY of the write review cannot be read: {what}"
            )));
        }
        Ok(_) => {}
    }
    if let Some(column) = unreadable {
        return Err(t.unusable(format!(
            "column `{column}` of mcp_logs holds a value of another type than the writer's"
        )));
    }
    let row = |i: usize| arrived[i].as_ref().map(|w| (&w.chain_id, w.id));
    keys.sort_unstable_by(|&(ta, a), &(tb, b)| tb.cmp(&ta).then_with(|| row(b).cmp(&row(a))));
    let writes = keys
        .iter()
        .filter_map(|&(_, i)| arrived[i].take())
        .collect();
    Ok(Review::of_writes(filter, writes))
}

/// One row of the review's `COPY`: its timestamp (PostgreSQL's microseconds, to sort on) and the
/// write; or the column that cannot be read.
fn write_row(f: &Fields<'_, R>) -> Result<(i64, WriteRow), &'static str> {
    const NAMES: [&str; R] = [
        "id",
        "timestamp",
        "tool_name",
        "user",
        "operation_type",
        "resource_id",
        "status",
        "error_code",
        "user_confirmation",
        "confirmation_outcome",
        "confirmation_source",
        "recorded_at",
        "chain_id",
    ];
    let opt = |i: usize| -> Result<Option<String>, &'static str> {
        f[i].map(|b| copy::text(b).map(str::to_owned).ok_or(NAMES[i]))
            .transpose()
    };
    let text = |i: usize| opt(i)?.ok_or(NAMES[i]);
    let time = |i: usize| -> Result<(i64, String), &'static str> {
        let micros = f[i].and_then(copy::micros).ok_or(NAMES[i])?;
        let mut s = String::with_capacity(24);
        match copy::write_time(&mut s, micros) {
            true => Ok((micros, s)),
            false => Err(NAMES[i]),
        }
    };
    let (micros, timestamp) = time(1)?;
    let write = WriteRow {
        id: f[0].and_then(copy::int8).ok_or(NAMES[0])?,
        timestamp,
        tool_name: text(2)?,
        user: text(3)?,
        operation_type: text(4)?,
        resource_id: opt(5)?,
        status: text(6)?,
        error_code: opt(7)?,
        user_confirmation: f[8].map(|b| copy::boolean(b).ok_or(NAMES[8])).transpose()?,
        confirmation_outcome: opt(9)?,
        confirmation_source: opt(10)?,
        recorded_at: time(11)?.1,
        chain_id: Some(text(12)?),
    };
    Ok((micros, write))
}

/// Runs `query` over every chain of the store at `url`; see `query`.
pub async fn query_url(
    url: &str,
    filter: &QueryFilter,
    row: impl FnMut(Value) -> io::Result<()>,
) -> Result<u64, AuditError> {
    let (t, client) = connect(url).await?;
    query(&client, &t, filter, row).await
}

/// [`query_url`] with a `row` that may wait (for a slow reader to take the row).
pub(crate) async fn query_each<F: Future<Output = io::Result<()>>>(
    url: &str,
    filter: &QueryFilter,
    row: impl FnMut(Value) -> F,
) -> Result<u64, AuditError> {
    let (t, client) = connect(url).await?;
    query_waiting(&client, &t, filter, row).await
}

/// The search terms of `text`, one per word, as [`schema::SEARCH_DOCUMENT`] splits words; a
/// word without a letter or digit searches for nothing and is left out.
fn search_words(text: &str) -> Vec<String> {
    text.split_whitespace()
        .filter(|w| w.chars().any(char::is_alphanumeric))
        .map(str::to_owned)
        .collect()
}

/// Calls `row` with each call matching `filter` (reads too) as a JSON object (the SQLite
/// store's query columns, plus `chain_id`), newest first; returns how many.
pub(crate) async fn query(
    client: &impl GenericClient,
    t: &PgTarget,
    filter: &QueryFilter,
    mut row: impl FnMut(Value) -> io::Result<()>,
) -> Result<u64, AuditError> {
    query_waiting(client, t, filter, |v| std::future::ready(row(v))).await
}

/// [`query`] with a `row` that may wait.
async fn query_waiting<F: Future<Output = io::Result<()>>>(
    client: &impl GenericClient,
    t: &PgTarget,
    filter: &QueryFilter,
    mut row: impl FnMut(Value) -> F,
) -> Result<u64, AuditError> {
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    let mut where_: Vec<String> = Vec::new();
    let mut add = |cond: &str, v: Box<dyn ToSql + Sync + Send>| {
        params.push(v);
        where_.push(cond.replace('?', &format!("${}", params.len())));
    };
    if let Some(at) = filter.since {
        add("\"timestamp\" >= ?", Box::new(at));
    }
    if let Some(at) = filter.until {
        add("\"timestamp\" < ?", Box::new(at));
    }
    for (col, v) in filter.equalities() {
        add(&format!("{} = ?", quoted(col)), Box::new(v.to_owned()));
    }
    if let Some(text) = &filter.text {
        let words = search_words(text);
        if !words.is_empty() {
            let first = params.len() + 1;
            let marks: Vec<String> = (first..first + words.len())
                .map(|n| format!("${n}"))
                .collect();
            where_.push(schema::search_condition(&marks));
            for w in words {
                params.push(Box::new(w));
            }
        }
    }
    let where_ = match where_.is_empty() {
        true => String::new(),
        false => format!("WHERE {}", where_.join(" AND ")),
    };
    let columns: Vec<&str> = std::iter::once("chain_id")
        .chain(store::query_columns())
        .collect();
    let select: Vec<String> = columns.iter().map(|c| quoted(c)).collect();
    let sql = format!(
        "SELECT {} FROM mcp_logs {where_} ORDER BY \"timestamp\" DESC, chain_id DESC, id DESC \
         LIMIT {}",
        select.join(", "),
        filter.limit
    );
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref() as _).collect();
    let stream = client
        .query_raw(sql.as_str(), refs)
        .await
        .map_err(|e| t.error("running the query", e))?;
    let mut stream = Box::pin(stream);
    let mut n = 0;
    while let Some(r) = stream.next().await {
        let r = r.map_err(|e| t.error("running the query", e))?;
        row(row_to_json(&columns, &r))
            .await
            .map_err(|e| AuditError::Output(e.into()))?;
        n += 1;
    }
    Ok(n)
}

/// A row of `columns` (names of [`store::COLUMNS`], or `chain_id`) as the SQLite store's
/// [`store::row_to_json`] gives it: times in the chain's RFC 3339 text, JSON columns as JSON.
fn row_to_json(columns: &[&str], r: &tokio_postgres::Row) -> Value {
    let mut o = Map::new();
    for (i, (name, col)) in columns.iter().zip(r.columns()).enumerate() {
        let v = match *col.type_() {
            Type::TIMESTAMPTZ => r
                .get::<_, Option<DateTime<Utc>>>(i)
                .map_or(Value::Null, |t| Value::from(store::format_time(t))),
            Type::INT8 => r.get::<_, Option<i64>>(i).map_or(Value::Null, Value::from),
            Type::FLOAT8 => r.get::<_, Option<f64>>(i).map_or(Value::Null, Value::from),
            Type::BOOL => r.get::<_, Option<bool>>(i).map_or(Value::Null, Value::from),
            _ => match r.get::<_, Option<String>>(i) {
                None => Value::Null,
                Some(s) if is_json(name) => serde_json::from_str(&s).unwrap_or(Value::String(s)),
                Some(s) => Value::String(s),
            },
        };
        o.insert((*name).to_owned(), v);
    }
    Value::Object(o)
}

/// The columns that hold JSON text.
fn is_json(name: &str) -> bool {
    matches!(
        name,
        "context" | "before_state" | "after_state" | "mcp" | "result"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_words_keep_only_words_with_something_to_find() {
        assert_eq!(search_words("task-1  \"x \" -"), ["task-1", "\"x"]);
        assert!(search_words(" \" ").is_empty());
    }
}
