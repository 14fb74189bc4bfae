//! The seed's daily write review ("all write operations of the last 24 hours"), `query` with
//! filters and full-text search over context and states, and read-only `sql`.
//!
//! Time bounds compare as text: `timestamp` is stored as RFC 3339 UTC with milliseconds, so the
//! bounds are formatted the same way and SQLite's index on it does the range scan.

use super::AuditError;
use super::store::{self, format_time};
use chrono::{DateTime, Duration, Utc};
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, params_from_iter};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;

/// The seed's daily review query, with only its time expression adapted to SQLite. `audit
/// review` answers the same question with more (failed writes, counts per user).
pub const SEED_DAILY_REVIEW: &str = "SELECT tool_name, user, operation_type, resource_id, \
timestamp, status, user_confirmation
FROM mcp_logs
WHERE operation_type IN ('create', 'update', 'delete')
  AND timestamp > strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-24 hours')
ORDER BY timestamp DESC;";

/// Parses `90d`, `24h`, `30m`, `45s`, `2w` (a whole number and a unit).
pub fn parse_duration(field: &'static str, s: &str) -> Result<Duration, AuditError> {
    let invalid = || AuditError::Invalid {
        field,
        reason: format!("expected a duration like 24h, 90d, 30m, 45s or 2w, got {s:?}"),
    };
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(invalid)?;
    let n: i64 = s[..split].parse().map_err(|_| invalid())?;
    let d = match &s[split..] {
        "s" => Duration::try_seconds(n),
        "m" => Duration::try_minutes(n),
        "h" => Duration::try_hours(n),
        "d" => Duration::try_days(n),
        "w" => Duration::try_weeks(n),
        _ => None,
    };
    d.ok_or_else(invalid)
}

/// Parses a point in time: `now`, a duration back from `now` (`24h`), or RFC 3339.
pub fn parse_time(
    field: &'static str,
    s: &str,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, AuditError> {
    if s == "now" {
        return Ok(now);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    parse_duration(field, s)
        .map(|d| now - d)
        .map_err(|_| AuditError::Invalid {
            field,
            reason: format!(
                "expected `now`, a duration back from now (24h, 7d) or an RFC 3339 time, got {s:?}"
            ),
        })
}

/// What `audit review` looks at.
#[derive(Clone, Debug)]
pub struct ReviewFilter {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub user: Option<String>,
    pub tool: Option<String>,
}

/// One write in the review.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WriteRow {
    pub id: i64,
    pub timestamp: String,
    pub tool_name: String,
    pub user: String,
    pub operation_type: String,
    pub resource_id: Option<String>,
    pub status: String,
    pub error_code: Option<String>,
    /// `None` is unknown, which is flagged like `false`: the review asks for a clear yes.
    pub user_confirmation: Option<bool>,
}

impl WriteRow {
    pub fn is_delete(&self) -> bool {
        self.operation_type == "delete"
    }
    pub fn is_unconfirmed(&self) -> bool {
        self.user_confirmation != Some(true)
    }
    pub fn is_failed(&self) -> bool {
        self.status != "success"
    }
}

/// Writes of one user in the review window.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct UserCounts {
    pub user: String,
    pub writes: u64,
    pub creates: u64,
    pub updates: u64,
    pub deletes: u64,
    pub unconfirmed: u64,
    pub failed: u64,
}

/// The answer to "all write operations of the last 24 hours".
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Review {
    pub since: String,
    pub until: String,
    /// Every write, newest first.
    pub writes: Vec<WriteRow>,
    pub per_user: Vec<UserCounts>,
}

impl Review {
    pub fn deletes(&self) -> usize {
        self.writes.iter().filter(|w| w.is_delete()).count()
    }
    pub fn unconfirmed(&self) -> usize {
        self.writes.iter().filter(|w| w.is_unconfirmed()).count()
    }
    pub fn failed(&self) -> impl Iterator<Item = &WriteRow> {
        self.writes.iter().filter(|w| w.is_failed())
    }

    /// The JSON document of `audit review --json`.
    pub fn to_json(&self) -> Value {
        json!({
            "since": self.since,
            "until": self.until,
            "totals": {
                "writes": self.writes.len(),
                "deletes": self.deletes(),
                "unconfirmed": self.unconfirmed(),
                "failed": self.failed().count(),
            },
            "writes": self.writes.iter().map(|w| {
                let mut v = serde_json::to_value(w).unwrap_or(Value::Null);
                v["flags"] = json!(flags(w));
                v
            }).collect::<Vec<_>>(),
            "failed": self.failed().collect::<Vec<_>>(),
            "per_user": self.per_user,
        })
    }

    /// The terminal table: deletes highlighted (red with `color`, and marked `!` always),
    /// writes without a clear confirmation flagged, failed writes listed again, counts per user.
    pub fn render(&self, out: &mut dyn Write, color: bool) -> io::Result<()> {
        writeln!(
            out,
            "Write operations from {} to {} (newest first): {} writes, {} deletes, {} without \
             user confirmation, {} failed",
            self.since,
            self.until,
            self.writes.len(),
            self.deletes(),
            self.unconfirmed(),
            self.failed().count()
        )?;
        if self.writes.is_empty() {
            return Ok(());
        }
        writeln!(out)?;
        table(out, &self.writes, color)?;
        let failed: Vec<WriteRow> = self.failed().cloned().collect();
        if !failed.is_empty() {
            writeln!(out, "\nFailed writes:")?;
            table(out, &failed, color)?;
        }
        writeln!(out, "\nPer user:")?;
        let header = [
            "USER",
            "WRITES",
            "CREATE",
            "UPDATE",
            "DELETE",
            "UNCONFIRMED",
            "FAILED",
        ];
        let rows: Vec<Vec<String>> = self
            .per_user
            .iter()
            .map(|u| {
                vec![
                    u.user.clone(),
                    u.writes.to_string(),
                    u.creates.to_string(),
                    u.updates.to_string(),
                    u.deletes.to_string(),
                    u.unconfirmed.to_string(),
                    u.failed.to_string(),
                ]
            })
            .collect();
        aligned(out, &header, &rows, |_| None)
    }
}

fn flags(w: &WriteRow) -> Vec<&'static str> {
    let mut f = Vec::new();
    if w.is_delete() {
        f.push("delete");
    }
    if w.is_unconfirmed() {
        f.push(if w.user_confirmation.is_none() {
            "confirmation unknown"
        } else {
            "not confirmed"
        });
    }
    if w.is_failed() {
        f.push("failed");
    }
    f
}

fn table(out: &mut dyn Write, writes: &[WriteRow], color: bool) -> io::Result<()> {
    let header = [
        "",
        "TIMESTAMP",
        "USER",
        "TOOL",
        "OPERATION",
        "RESOURCE",
        "STATUS",
        "CONFIRMED",
        "FLAGS",
    ];
    let rows: Vec<Vec<String>> = writes
        .iter()
        .map(|w| {
            vec![
                if w.is_delete() { "!" } else { "" }.to_owned(),
                w.timestamp.clone(),
                w.user.clone(),
                w.tool_name.clone(),
                if w.is_delete() {
                    "DELETE".to_owned()
                } else {
                    w.operation_type.clone()
                },
                w.resource_id.clone().unwrap_or_else(|| "-".to_owned()),
                match &w.error_code {
                    Some(code) if w.is_failed() => format!("{} {code}", w.status),
                    _ => w.status.clone(),
                },
                match w.user_confirmation {
                    Some(true) => "yes",
                    Some(false) => "NO",
                    None => "unknown",
                }
                .to_owned(),
                flags(w).join(", "),
            ]
        })
        .collect();
    aligned(out, &header, &rows, |i| {
        (color && writes[i].is_delete()).then_some("\x1b[1;31m")
    })
}

/// Left-aligned columns, cells capped at 40 characters; `style(i)` wraps row `i` in an ANSI
/// style.
fn aligned(
    out: &mut dyn Write,
    header: &[&str],
    rows: &[Vec<String>],
    style: impl Fn(usize) -> Option<&'static str>,
) -> io::Result<()> {
    const MAX: usize = 40;
    let cell = |s: &str| -> String {
        if s.chars().count() > MAX {
            let cut: String = s.chars().take(MAX - 1).collect();
            format!("{cut}…")
        } else {
            s.to_owned()
        }
    };
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell(c).chars().count());
        }
    }
    let line = |cells: Vec<String>| -> String {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            s.push_str(c);
            s.extend(std::iter::repeat_n(
                ' ',
                w.saturating_sub(c.chars().count()),
            ));
        }
        s.trim_end().to_owned()
    };
    writeln!(
        out,
        "{}",
        line(header.iter().map(|h| (*h).to_owned()).collect())
    )?;
    for (i, r) in rows.iter().enumerate() {
        let text = line(r.iter().map(|c| cell(c)).collect());
        match style(i) {
            Some(s) => writeln!(out, "{s}{text}\x1b[0m")?,
            None => writeln!(out, "{text}")?,
        }
    }
    Ok(())
}

/// Runs the daily write review on `conn`.
pub fn review(conn: &Connection, path: &Path, filter: &ReviewFilter) -> Result<Review, AuditError> {
    let sql = |e| AuditError::sqlite(path, "reading the write review", e);
    let mut where_ =
        String::from("operation_type IS NOT NULL AND timestamp >= ?1 AND timestamp < ?2");
    let mut args: Vec<SqlValue> = vec![
        format_time(filter.since).into(),
        format_time(filter.until).into(),
    ];
    if let Some(user) = &filter.user {
        args.push(user.clone().into());
        where_.push_str(&format!(" AND user = ?{}", args.len()));
    }
    if let Some(tool) = &filter.tool {
        args.push(tool.clone().into());
        where_.push_str(&format!(" AND tool_name = ?{}", args.len()));
    }
    let mut stmt = conn
        .prepare(&format!(
            "SELECT id, timestamp, tool_name, user, operation_type, resource_id, status, \
             error_code, user_confirmation FROM mcp_logs INDEXED BY mcp_logs_writes \
             WHERE {where_} ORDER BY timestamp DESC, id DESC"
        ))
        .map_err(sql)?;
    let writes = stmt
        .query_map(params_from_iter(args), |r| {
            Ok(WriteRow {
                id: r.get(0)?,
                timestamp: r.get(1)?,
                tool_name: r.get(2)?,
                user: r.get(3)?,
                operation_type: r.get(4)?,
                resource_id: r.get(5)?,
                status: r.get(6)?,
                error_code: r.get(7)?,
                user_confirmation: r.get(8)?,
            })
        })
        .map_err(sql)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sql)?;
    let mut per_user: BTreeMap<&str, UserCounts> = BTreeMap::new();
    for w in &writes {
        let c = per_user.entry(&w.user).or_insert_with(|| UserCounts {
            user: w.user.clone(),
            ..UserCounts::default()
        });
        c.writes += 1;
        match w.operation_type.as_str() {
            "create" => c.creates += 1,
            "update" => c.updates += 1,
            "delete" => c.deletes += 1,
            _ => {}
        }
        c.unconfirmed += u64::from(w.is_unconfirmed());
        c.failed += u64::from(w.is_failed());
    }
    let per_user = per_user.into_values().collect();
    Ok(Review {
        since: format_time(filter.since),
        until: format_time(filter.until),
        writes,
        per_user,
    })
}

/// What `audit query` selects. Every filter is optional; `text` searches context and states.
#[derive(Clone, Debug, Default)]
pub struct QueryFilter {
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub user: Option<String>,
    pub tool: Option<String>,
    pub status: Option<String>,
    pub error_code: Option<String>,
    pub operation_type: Option<String>,
    /// Words that must all occur in `context`, `before_state` or `after_state` (FTS5).
    pub text: Option<String>,
    /// At most this many rows, newest first.
    pub limit: u64,
}

/// The columns `query` returns, in order.
pub const QUERY_COLUMNS: &[&str] = &[
    "id",
    "timestamp",
    "tool_name",
    "user",
    "status",
    "duration_ms",
    "error_code",
    "operation_type",
    "resource_id",
    "user_confirmation",
    "before_state",
    "after_state",
    "context",
    "trace_id",
    "span_id",
    "mcp",
];

/// Turns words into an FTS5 query that matches rows containing all of them, so that text like
/// `task-3` or `a"b` is searched for, not parsed as FTS5 syntax.
fn fts_phrases(text: &str) -> String {
    text.split_whitespace()
        .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `query` on `conn`, calling `row` with each matching row as a JSON object, newest first.
pub fn query(
    conn: &Connection,
    path: &Path,
    filter: &QueryFilter,
    mut row: impl FnMut(Value) -> io::Result<()>,
) -> Result<u64, AuditError> {
    let sql = |e| AuditError::sqlite(path, "running the query", e);
    let mut where_: Vec<String> = Vec::new();
    let mut args: Vec<SqlValue> = Vec::new();
    let mut add = |cond: &str, v: SqlValue| {
        args.push(v);
        where_.push(cond.replace('?', &format!("?{}", args.len())));
    };
    if let Some(t) = filter.since {
        add("timestamp >= ?", format_time(t).into());
    }
    if let Some(t) = filter.until {
        add("timestamp < ?", format_time(t).into());
    }
    for (col, v) in [
        ("user", &filter.user),
        ("tool_name", &filter.tool),
        ("status", &filter.status),
        ("error_code", &filter.error_code),
        ("operation_type", &filter.operation_type),
    ] {
        if let Some(v) = v {
            add(&format!("{col} = ?"), v.clone().into());
        }
    }
    if let Some(text) = filter.text.as_deref().filter(|t| !t.trim().is_empty()) {
        add(
            "id IN (SELECT rowid FROM mcp_logs_fts WHERE mcp_logs_fts MATCH ?)",
            fts_phrases(text).into(),
        );
    }
    let where_ = if where_.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", where_.join(" AND "))
    };
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {} FROM mcp_logs {where_} ORDER BY timestamp DESC, id DESC LIMIT {}",
            QUERY_COLUMNS.join(", "),
            filter.limit
        ))
        .map_err(sql)?;
    let columns: Vec<String> = QUERY_COLUMNS.iter().map(|c| (*c).to_owned()).collect();
    let mut rows = stmt.query(params_from_iter(args)).map_err(sql)?;
    let mut n = 0;
    while let Some(r) = rows.next().map_err(sql)? {
        let v = store::row_to_json(&columns, r).map_err(sql)?;
        row(v).map_err(|e| AuditError::Output(e.into()))?;
        n += 1;
    }
    Ok(n)
}

/// Runs one read-only statement, calling `row` with each result row as a JSON object. The
/// connection is read-only; a statement that would write is refused before it runs.
pub fn sql(
    conn: &Connection,
    statement: &str,
    mut header: impl FnMut(&[String]) -> io::Result<()>,
    mut row: impl FnMut(&[String], Value) -> io::Result<()>,
) -> Result<u64, AuditError> {
    let err = |e: rusqlite::Error| match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::ReadOnly) => AuditError::ReadOnly(e.to_string()),
        _ => AuditError::Invalid {
            field: "statement",
            reason: e.to_string(),
        },
    };
    conn.execute_batch("PRAGMA query_only = ON").map_err(err)?;
    let mut stmt = conn.prepare(statement).map_err(err)?;
    if !stmt.readonly() {
        return Err(AuditError::ReadOnly(format!(
            "refused: {:?} would write",
            statement.trim()
        )));
    }
    let columns: Vec<String> = stmt.column_names().map(str::to_owned).collect();
    let io = |e: io::Error| AuditError::Output(e.into());
    header(&columns).map_err(io)?;
    let mut rows = stmt.query([]).map_err(err)?;
    let mut n = 0;
    while let Some(r) = rows.next().map_err(err)? {
        row(&columns, store::row_to_json(&columns, r).map_err(err)?).map_err(io)?;
        n += 1;
    }
    Ok(n)
}
