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
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde_json::{Map, Value};
use std::io;
use tokio_postgres::GenericClient;
use tokio_postgres::types::{ToSql, Type};

/// The review's columns, in [`WriteRow`] order.
const REVIEW_COLUMNS: &str = "id, \"timestamp\", tool_name, \"user\", operation_type, \
resource_id, status, error_code, user_confirmation, confirmation_outcome, confirmation_source, \
recorded_at";

/// Runs the daily write review over every chain of the store at `url`.
pub async fn review_url(url: &str, filter: &ReviewFilter) -> Result<Review, AuditError> {
    let t = PgTarget::parse(url, "--db")?;
    let client = t.connect().await?;
    // A day's writes are sorted newest first in one go: in memory, not in temporary files
    // (PostgreSQL's default work_mem, 4 MB, spills a sort of 500,000 writes to disk).
    client
        .batch_execute("SET work_mem = '256MB'")
        .await
        .map_err(|e| t.error("configuring the session", e))?;
    review(&client, &t, filter).await
}

/// The daily write review on `client`: writes dated or recorded in the window, newest first
/// (ties by chain, then by id, newest first), with the counts per user.
pub(crate) async fn review(
    client: &impl GenericClient,
    t: &PgTarget,
    filter: &ReviewFilter,
) -> Result<Review, AuditError> {
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> =
        vec![Box::new(filter.since), Box::new(filter.until)];
    let mut extra = String::new();
    for (col, v) in [("user", &filter.user), ("tool_name", &filter.tool)] {
        if let Some(v) = v {
            params.push(Box::new(v.clone()));
            extra.push_str(&format!(" AND {} = ${}", quoted(col), params.len()));
        }
    }
    // One scan: the two partial indexes of the writes, OR-ed (no duplicate to remove).
    let sql = format!(
        "SELECT {REVIEW_COLUMNS} FROM mcp_logs WHERE operation_type IS NOT NULL{extra} \
         AND ((\"timestamp\" >= $1 AND \"timestamp\" < $2) \
         OR (recorded_at >= $1 AND recorded_at < $2)) \
         ORDER BY \"timestamp\" DESC, chain_id DESC, id DESC"
    );
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref() as _).collect();
    let rows = client
        .query(sql.as_str(), &refs)
        .await
        .map_err(|e| t.error("reading the write review", e))?;
    let time = |r: &tokio_postgres::Row, i| store::format_time(r.get::<_, DateTime<Utc>>(i));
    let writes = rows
        .iter()
        .map(|r| WriteRow {
            id: r.get(0),
            timestamp: time(r, 1),
            tool_name: r.get(2),
            user: r.get(3),
            operation_type: r.get(4),
            resource_id: r.get(5),
            status: r.get(6),
            error_code: r.get(7),
            user_confirmation: r.get(8),
            confirmation_outcome: r.get(9),
            confirmation_source: r.get(10),
            recorded_at: time(r, 11),
        })
        .collect();
    Ok(Review::of_writes(filter, writes))
}

/// Runs `query` over every chain of the store at `url`; see `query`.
pub async fn query_url(
    url: &str,
    filter: &QueryFilter,
    row: impl FnMut(Value) -> io::Result<()>,
) -> Result<u64, AuditError> {
    let t = PgTarget::parse(url, "--db")?;
    let client = t.connect().await?;
    query(&client, &t, filter, row).await
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
        row(row_to_json(&columns, &r)).map_err(|e| AuditError::Output(e.into()))?;
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
