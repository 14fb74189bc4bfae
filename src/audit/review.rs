//! The seed's daily write review ("all write operations of the last 24 hours"), `query` with
//! filters and full-text search over context and states, and read-only `sql`.
//!
//! Time bounds compare as text: `timestamp` is stored as RFC 3339 UTC with milliseconds, so the
//! bounds are formatted the same way and SQLite's index on it does the range scan.

use super::error::AuditError;
use super::store::{self, format_time};
use crate::display::visible;
use chrono::{DateTime, Duration, Utc};
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, params_from_iter};
use serde::Serialize;
use serde_json::Value;
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

/// Parses a span back in time (`90d`, `24h`, `1.5d`) with the one duration parser.
pub fn parse_duration(field: &'static str, s: &str) -> Result<Duration, AuditError> {
    crate::duration::parse_span(s).map_err(|reason| AuditError::Invalid { field, reason })
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
    /// Start of the window (inclusive): writes with a timestamp or a recording time from here on.
    pub since: DateTime<Utc>,
    /// End of the window (exclusive).
    pub until: DateTime<Utc>,
    /// Only this user's writes (exact match); `None` for everyone.
    pub user: Option<String>,
    /// Only writes by this tool (exact name); `None` for every tool.
    pub tool: Option<String>,
}

/// One write in the review.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WriteRow {
    pub(crate) id: i64,
    pub(crate) timestamp: String,
    pub(crate) tool_name: String,
    /// Who made the call.
    pub user: String,
    /// `create`, `update`, `delete` or `write`.
    pub operation_type: String,
    /// The id of the resource written, when the call said.
    pub resource_id: Option<String>,
    pub(crate) status: String,
    /// The call's error code (`401`, `-32602`, `tool_error`, …); `None` on success.
    pub error_code: Option<String>,
    /// `None` is unknown, which is flagged like `false`: the review asks for a clear yes.
    pub(crate) user_confirmation: Option<bool>,
    /// What became of the confirmation (`accepted`, `declined`, …), when one was involved.
    pub(crate) confirmation_outcome: Option<String>,
    /// How it was obtained (`elicitation`, `client_flag`, `server_audit_block`).
    pub(crate) confirmation_source: Option<String>,
    /// When the collector stored it: a call whose own timestamp is far from this (a wrong
    /// clock, or a span dated to hide it) is listed by both and flagged.
    pub(crate) recorded_at: String,
    /// The chain (the `collect` replica) that recorded it, in a PostgreSQL store; `None` in a
    /// SQLite store's one chain (and then left out of the JSON).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) chain_id: Option<String>,
}

impl WriteRow {
    /// Its own timestamp is more than `limit` away from the time it was recorded.
    pub(crate) fn is_skewed(&self, limit: Duration) -> bool {
        let parse = |t: &str| DateTime::parse_from_rfc3339(t).map(|t| t.with_timezone(&Utc));
        match (parse(&self.timestamp), parse(&self.recorded_at)) {
            (Ok(a), Ok(b)) => (a - b).abs() > limit,
            // A timestamp that does not even parse is as suspicious as a far one.
            _ => true,
        }
    }

    pub(crate) fn is_delete(&self) -> bool {
        self.operation_type == "delete"
    }
    /// A write that ran without a clear yes (refused attempts did not run).
    pub(crate) fn is_unconfirmed(&self) -> bool {
        !self.is_refused() && self.user_confirmation != Some(true)
    }
    /// A write that ran and failed (refused attempts are listed on their own).
    pub(crate) fn is_failed(&self) -> bool {
        !self.is_refused() && self.status != "success"
    }
    /// An attempt the confirmation gate stopped: the user declined, cancelled or did not
    /// answer, or the client could not be asked and the policy denied it. It never reached
    /// the server.
    pub(crate) fn is_refused(&self) -> bool {
        match self.confirmation_outcome.as_deref() {
            Some("declined" | "cancelled" | "timeout") => {
                self.confirmation_source.as_deref() == Some("elicitation")
            }
            Some("unsupported_client") => self.status != "success",
            _ => false,
        }
    }
    /// The CONFIRMED cell: the answer and how it was obtained.
    fn confirmation_text(&self) -> std::borrow::Cow<'_, str> {
        use std::borrow::Cow::{Borrowed, Owned};
        let answer = match self.user_confirmation {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "unknown",
        };
        match (&self.confirmation_outcome, &self.confirmation_source) {
            (Some(o), Some(s)) => Owned(format!("{answer} ({o}, {s})")),
            (Some(o), None) => Owned(format!("{answer} ({o})")),
            _ => Borrowed(answer),
        }
    }
}

/// Writes of one user in the review window.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct UserCounts {
    /// The user these counts are for.
    pub user: String,
    /// Every write of the user in the window (refused attempts included).
    pub writes: u64,
    /// Writes with operation type `create`.
    pub creates: u64,
    pub(crate) updates: u64,
    /// Writes with operation type `delete`.
    pub deletes: u64,
    /// Writes that ran without a clear yes (confirmation `false` or unknown; refused attempts
    /// excluded).
    pub unconfirmed: u64,
    pub(crate) failed: u64,
}

/// The answer to "all write operations of the last 24 hours".
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Review {
    pub(crate) since: String,
    pub(crate) until: String,
    /// Every write, newest first.
    pub writes: Vec<WriteRow>,
    /// Per-user counts, one entry per user with a write in the window.
    pub per_user: Vec<UserCounts>,
    /// A write whose own timestamp is further than this from its recording time is shown
    /// with both and flagged `clock skew` ([`DEFAULT_MAX_SKEW`] unless `--max-skew` says).
    #[serde(skip)]
    pub(crate) max_skew: Duration,
}

impl Review {
    /// The same review, flagging timestamps further than `limit` from their recording time.
    pub fn with_max_skew(self, limit: Duration) -> Self {
        Review {
            max_skew: limit,
            ..self
        }
    }

    /// How many of the writes are deletes.
    pub fn deletes(&self) -> usize {
        self.writes.iter().filter(|w| w.is_delete()).count()
    }
    /// How many writes ran without a clear yes (see [`UserCounts::unconfirmed`]).
    pub fn unconfirmed(&self) -> usize {
        self.writes.iter().filter(|w| w.is_unconfirmed()).count()
    }
    /// The writes that ran and failed (status not `success`; refused attempts excluded).
    pub fn failed(&self) -> impl Iterator<Item = &WriteRow> {
        self.writes.iter().filter(|w| w.is_failed())
    }
    /// The attempts the confirmation gate stopped.
    pub(crate) fn refused(&self) -> impl Iterator<Item = &WriteRow> {
        self.writes.iter().filter(|w| w.is_refused())
    }

    fn document(&self) -> ReviewJson<'_> {
        self.document_listing(usize::MAX)
    }

    /// The document with at most `limit` rows in each list (`writes`, `failed`, `refused`);
    /// the totals and per-user counts still cover every write.
    fn document_listing(&self, limit: usize) -> ReviewJson<'_> {
        // `failed` and `refused` are parts of `writes`: only it can pass the limit first.
        let capped = self.writes.len() > limit;
        ReviewJson {
            listed_at_most: capped.then_some(limit),
            since: &self.since,
            until: &self.until,
            totals: Totals {
                writes: self.writes.len(),
                deletes: self.deletes(),
                unconfirmed: self.unconfirmed(),
                failed: self.failed().count(),
                refused: self.refused().count(),
            },
            writes: self
                .writes
                .iter()
                .take(limit)
                .map(|w| self.json_row(w))
                .collect(),
            failed: self
                .failed()
                .take(limit)
                .map(|w| self.json_row(w))
                .collect(),
            refused: self
                .refused()
                .take(limit)
                .map(|w| self.json_row(w))
                .collect(),
            per_user: &self.per_user,
        }
    }

    /// The JSON document with at most `limit` rows per list (newest first) and
    /// `listed_at_most: limit` when that cut any: what a page shows of a large review (the
    /// totals and per-user counts still cover every write).
    pub fn json_listing(&self, limit: usize) -> Vec<u8> {
        serde_json::to_vec(&self.document_listing(limit)).unwrap_or_default()
    }

    fn json_row<'a>(&self, w: &'a WriteRow) -> WriteJson<'a> {
        let flags = flags_text(w);
        WriteJson {
            row: w,
            flags: FlagList(
                (!flags.is_empty()).then_some(flags),
                w.is_skewed(self.max_skew),
            ),
        }
    }

    /// The JSON document of `audit review --json`, written without building a value tree.
    pub fn write_json(&self, out: &mut dyn Write) -> io::Result<()> {
        serde_json::to_writer(&mut *out, &self.document())?;
        writeln!(out)
    }

    /// The same document as a value.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self.document()).unwrap_or(Value::Null)
    }

    /// The terminal table: deletes highlighted (red with `color`, and marked `!` always),
    /// writes without a clear confirmation flagged, failed writes listed again, counts per user.
    pub fn render(&self, out: &mut dyn Write, color: bool) -> io::Result<()> {
        writeln!(
            out,
            "Write operations from {} to {} (newest first): {}, {}, {} without user \
             confirmation, {} failed, {} refused at confirmation",
            self.since,
            self.until,
            counted(self.writes.len(), "write", "writes"),
            counted(self.deletes(), "delete", "deletes"),
            self.unconfirmed(),
            self.failed().count(),
            self.refused().count()
        )?;
        if self.writes.is_empty() {
            return Ok(());
        }
        writeln!(out)?;
        let all: Vec<&WriteRow> = self.writes.iter().collect();
        table(out, &all, color, self.max_skew)?;
        let failed: Vec<&WriteRow> = self.failed().collect();
        if !failed.is_empty() {
            writeln!(out, "\nFailed writes:")?;
            table(out, &failed, color, self.max_skew)?;
        }
        let refused: Vec<&WriteRow> = self.refused().collect();
        if !refused.is_empty() {
            writeln!(
                out,
                "\nDeclined attempts (stopped at confirmation: the write never ran):"
            )?;
            table(out, &refused, color, self.max_skew)?;
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
        let users = &self.per_user;
        aligned(
            out,
            &header,
            users.len(),
            |i| {
                let u = &users[i];
                [
                    visible(&u.user).into_owned(),
                    u.writes.to_string(),
                    u.creates.to_string(),
                    u.updates.to_string(),
                    u.deletes.to_string(),
                    u.unconfirmed.to_string(),
                    u.failed.to_string(),
                ]
            },
            |_| None,
        )
    }
}

/// `1 delete`, `2 deletes`, `0 deletes`.
fn counted(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The flags of a write as one text, from a fixed table (no allocation per row).
fn flags_text(w: &WriteRow) -> &'static str {
    if w.is_refused() {
        return match w.is_delete() {
            true => "delete, refused (never ran)",
            false => "refused (never ran)",
        };
    }
    const TEXT: [&str; 12] = [
        "",
        "failed",
        "not confirmed",
        "not confirmed, failed",
        "confirmation unknown",
        "confirmation unknown, failed",
        "delete",
        "delete, failed",
        "delete, not confirmed",
        "delete, not confirmed, failed",
        "delete, confirmation unknown",
        "delete, confirmation unknown, failed",
    ];
    let confirmation = match w.user_confirmation {
        Some(true) => 0,
        Some(false) => 1,
        None => 2,
    };
    TEXT[usize::from(w.is_delete()) * 6 + confirmation * 2 + usize::from(w.is_failed())]
}

#[derive(Serialize)]
struct Totals {
    writes: usize,
    deletes: usize,
    unconfirmed: usize,
    failed: usize,
    refused: usize,
}

#[derive(Serialize)]
struct ReviewJson<'a> {
    /// Set when the lists were cut to this many rows each.
    #[serde(skip_serializing_if = "Option::is_none")]
    listed_at_most: Option<usize>,
    since: &'a str,
    until: &'a str,
    totals: Totals,
    writes: Vec<WriteJson<'a>>,
    failed: Vec<WriteJson<'a>>,
    refused: Vec<WriteJson<'a>>,
    per_user: &'a [UserCounts],
}

/// A write for JSON: its row's fields (as [`WriteRow`] serializes them), then its `flags` list.
#[derive(Serialize)]
struct WriteJson<'a> {
    #[serde(flatten)]
    row: &'a WriteRow,
    flags: FlagList,
}

/// The flags of [`flags_text`], then `clock skew` when `.1` is set.
struct FlagList(Option<&'static str>, bool);

impl Serialize for FlagList {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let skew = self.1.then_some("clock skew");
        s.collect_seq(self.0.into_iter().flat_map(|f| f.split(", ")).chain(skew))
    }
}

/// The cells of one row of the write table; borrowed except where a value is composed or has
/// characters that would act on a terminal (shown as `\u{…}`, see [`visible`]).
fn cells(w: &WriteRow, max_skew: Duration) -> [std::borrow::Cow<'_, str>; 10] {
    use std::borrow::Cow::{Borrowed, Owned};
    [
        Borrowed(if w.is_delete() { "!" } else { "" }),
        if w.is_skewed(max_skew) {
            Owned(format!(
                "{} (recorded {})",
                visible(&w.timestamp),
                visible(&w.recorded_at)
            ))
        } else {
            visible(&w.timestamp)
        },
        visible(&w.user),
        visible(&w.tool_name),
        Borrowed(if w.is_delete() {
            "DELETE"
        } else {
            &w.operation_type
        }),
        visible(w.resource_id.as_deref().unwrap_or("-")),
        match &w.error_code {
            Some(code) if w.is_failed() => Owned(format!("{} {code}", w.status)),
            _ => Borrowed(&w.status),
        },
        w.confirmation_text(),
        Borrowed(flags_text(w)),
        visible(w.chain_id.as_deref().unwrap_or_default()),
    ]
}

fn table(
    out: &mut dyn Write,
    writes: &[&WriteRow],
    color: bool,
    max_skew: Duration,
) -> io::Result<()> {
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
        // Last, and only for a store of several chains: a SQLite store's table is unchanged.
        match writes.iter().any(|w| w.chain_id.is_some()) {
            true => "CHAIN",
            false => "",
        },
    ];
    aligned(
        out,
        &header,
        writes.len(),
        |i| cells(writes[i], max_skew),
        |i| (color && writes[i].is_delete()).then_some("\x1b[1;31m"),
    )
}

/// Left-aligned columns, cells capped at 40 characters; `style(i)` wraps row `i` in an ANSI
/// style. Rows are produced twice by `row(i)` (widths, then output) instead of being stored.
fn aligned<const N: usize, C: AsRef<str>>(
    out: &mut dyn Write,
    header: &[&str; N],
    rows: usize,
    row: impl Fn(usize) -> [C; N],
    style: impl Fn(usize) -> Option<&'static str>,
) -> io::Result<()> {
    const MAX: usize = 40;
    let width = |s: &str| s.chars().count().min(MAX);
    let mut widths: [usize; N] = std::array::from_fn(|i| header[i].len());
    for i in 0..rows {
        for (w, c) in widths.iter_mut().zip(row(i).iter()) {
            *w = (*w).max(width(c.as_ref()));
        }
    }
    let line = |out: &mut dyn Write, cells: &[&str]| -> io::Result<()> {
        let last = cells.iter().rposition(|c| !c.is_empty()).unwrap_or(0);
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate().take(last + 1) {
            if i > 0 {
                out.write_all(b"  ")?;
            }
            let pad = if i == last { 0 } else { *w };
            if c.chars().count() > MAX {
                let cut: String = c.chars().take(MAX - 1).collect();
                write!(out, "{:<pad$}", format!("{cut}…"))?;
            } else {
                write!(out, "{c:<pad$}")?;
            }
        }
        Ok(())
    };
    line(out, header)?;
    out.write_all(b"\n")?;
    for i in 0..rows {
        let r = row(i);
        let cells: [&str; N] = std::array::from_fn(|k| r[k].as_ref());
        let s = style(i);
        if let Some(s) = s {
            out.write_all(s.as_bytes())?;
        }
        line(out, &cells)?;
        if s.is_some() {
            out.write_all(b"\x1b[0m")?;
        }
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// The row ids recorded in `[since, until)`: `(first, end)`, end exclusive. `recorded_at` grows
/// with the id (the writer stamps each transaction), so a binary search on the primary key
/// finds them without an index.
fn recorded_ids(
    conn: &Connection,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> rusqlite::Result<(i64, i64)> {
    let (lo, hi): (Option<i64>, Option<i64>) =
        conn.query_row("SELECT MIN(id), MAX(id) FROM mcp_logs", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let (Some(lo), Some(hi)) = (lo, hi) else {
        return Ok((0, 0));
    };
    let mut at = conn.prepare_cached("SELECT recorded_at FROM mcp_logs WHERE id = ?1")?;
    // The first id whose recorded_at is at or after `t` (hi + 1 when none).
    let mut first_at = |t: &str| -> rusqlite::Result<i64> {
        let (mut a, mut b) = (lo, hi + 1);
        while a < b {
            let mid = a + (b - a) / 2;
            let r: Option<String> = at.query_row([mid], |r| r.get(0)).optional()?;
            match r {
                Some(r) if r.as_str() < t => a = mid + 1,
                _ => b = mid,
            }
        }
        Ok(a)
    };
    Ok((
        first_at(&format_time(since))?,
        first_at(&format_time(until))?,
    ))
}

/// How far a call's own timestamp may be from the time it was recorded before the review
/// shows both, unless `audit review --max-skew` says otherwise.
pub(crate) const DEFAULT_MAX_SKEW: Duration = Duration::hours(1);

/// Runs the daily write review on `conn`.
pub fn review(conn: &Connection, path: &Path, filter: &ReviewFilter) -> Result<Review, AuditError> {
    let sql = |e| AuditError::sqlite(path, "reading the write review", e);
    // Writes dated in the window, and writes recorded in it whatever they are dated (rows are
    // recorded in id order, so that is an id range, found by binary search on the row id).
    let (first, end) = recorded_ids(conn, filter.since, filter.until).map_err(sql)?;
    let mut where_ = String::from("operation_type IS NOT NULL");
    let mut args: Vec<SqlValue> = vec![
        format_time(filter.since).into(),
        format_time(filter.until).into(),
        first.into(),
        end.into(),
    ];
    if let Some(user) = &filter.user {
        args.push(user.clone().into());
        where_.push_str(&format!(" AND user = ?{}", args.len()));
    }
    if let Some(tool) = &filter.tool {
        args.push(tool.clone().into());
        where_.push_str(&format!(" AND tool_name = ?{}", args.len()));
    }
    let outcome = store::column_or_null(conn, "confirmation_outcome").map_err(sql)?;
    let source = store::column_or_null(conn, "confirmation_source").map_err(sql)?;
    let columns = format!(
        "id, timestamp, tool_name, user, operation_type, resource_id, status, error_code, \
         user_confirmation, {outcome}, {source}, recorded_at"
    );
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {columns} FROM mcp_logs INDEXED BY mcp_logs_writes \
             WHERE {where_} AND timestamp >= ?1 AND timestamp < ?2 \
             UNION SELECT {columns} FROM mcp_logs \
             WHERE {where_} AND id >= ?3 AND id < ?4 \
             ORDER BY timestamp DESC, id DESC"
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
                confirmation_outcome: r.get(9)?,
                confirmation_source: r.get(10)?,
                recorded_at: r.get(11)?,
                chain_id: None,
            })
        })
        .map_err(sql)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sql)?;
    Ok(Review::of_writes(filter, writes))
}

impl Review {
    /// The review of `filter`'s window holding `writes` (newest first), with the counts per
    /// user: the one place both stores turn their rows into a review.
    pub(crate) fn of_writes(filter: &ReviewFilter, writes: Vec<WriteRow>) -> Review {
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
        Review {
            since: format_time(filter.since),
            until: format_time(filter.until),
            writes,
            per_user,
            max_skew: DEFAULT_MAX_SKEW,
        }
    }
}

/// What `audit query` selects. Every filter is optional; `text` searches context and states.
#[derive(Clone, Debug, Default)]
pub struct QueryFilter {
    /// Only calls from this time on (by their own timestamp, inclusive).
    pub since: Option<DateTime<Utc>>,
    /// Only calls before this time (by their own timestamp).
    pub until: Option<DateTime<Utc>>,
    /// Only this user's calls (exact match).
    pub user: Option<String>,
    /// Only calls of this tool (exact name).
    pub tool: Option<String>,
    /// Only calls with this status (`success`, `error`, `timeout`).
    pub status: Option<String>,
    /// Only calls with this error code (`401`, `tool_error`, …).
    pub error_code: Option<String>,
    /// Only calls with this operation type (`create`, `update`, `delete`, `write`).
    pub operation_type: Option<String>,
    /// Words that must all occur in `context`, `before_state` or `after_state` (FTS5; the
    /// newest rows, which the writer has not indexed yet, are matched without the index).
    pub text: Option<String>,
    /// At most this many rows, newest first.
    pub limit: u64,
}

impl QueryFilter {
    /// The filters that ask for a column to equal a value: (column, value), for each given.
    pub(crate) fn equalities(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("user", &self.user),
            ("tool_name", &self.tool),
            ("status", &self.status),
            ("error_code", &self.error_code),
            ("operation_type", &self.operation_type),
        ]
        .into_iter()
        .filter_map(|(col, v)| v.as_deref().map(|v| (col, v)))
    }
}

/// The lower-cased ASCII tokens of a search, as the index splits them (`task-3` → `task`, `3`).
fn search_tokens(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty() && t.is_ascii())
        .map(str::to_ascii_lowercase)
        .collect()
}

/// The tokens of `text` as the full-text index (FTS5's `unicode61`) splits them: runs of letters
/// and digits, lower-cased. (The index also folds accents away; this does not.)
fn index_tokens(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_lowercase)
}

/// Whether `search` matches `columns` as the index's query of [`fts_phrases`] would: each word
/// of it, as its tokens in a row, occurs in one of the columns (words without tokens are
/// ignored, and match nothing alone). The match for the rows the index does not hold yet.
fn text_matches(search: &str, columns: &[Option<&str>]) -> bool {
    let phrases: Vec<Vec<String>> = search
        .split_whitespace()
        .map(|w| index_tokens(w).collect::<Vec<_>>())
        .filter(|p| !p.is_empty())
        .collect();
    let docs: Vec<Vec<String>> = columns
        .iter()
        .flatten()
        .map(|c| index_tokens(c).collect())
        .collect();
    !phrases.is_empty()
        && phrases.iter().all(|p| {
            docs.iter()
                .any(|d| d.windows(p.len()).any(|w| w == p.as_slice()))
        })
}

/// The SQL function `mcp_otel_text_match(search, context, before_state, after_state)`:
/// [`text_matches`], for the unindexed tail in [`query`].
fn register_text_match(conn: &Connection) -> rusqlite::Result<()> {
    use rusqlite::functions::FunctionFlags;
    conn.create_scalar_function(
        "mcp_otel_text_match",
        4,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let text = |i| ctx.get_raw(i).as_str().ok();
            let search = text(0).unwrap_or("");
            Ok(text_matches(search, &[text(1), text(2), text(3)]))
        },
    )
}

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
    register_text_match(conn).map_err(sql)?;
    let (statement, args) = query_statement(conn, filter).map_err(sql)?;
    let mut stmt = conn.prepare(&statement).map_err(sql)?;
    let columns: Vec<String> = store::query_columns().map(str::to_owned).collect();
    let mut rows = stmt.query(params_from_iter(args)).map_err(sql)?;
    let mut n = 0;
    while let Some(r) = rows.next().map_err(sql)? {
        let v = store::row_to_json(&columns, r).map_err(sql)?;
        row(v).map_err(|e| AuditError::Output(e.into()))?;
        n += 1;
    }
    Ok(n)
}

/// The statement of [`query`] and its arguments.
fn query_statement(
    conn: &Connection,
    filter: &QueryFilter,
) -> rusqlite::Result<(String, Vec<SqlValue>)> {
    let mut where_: Vec<String> = Vec::new();
    let mut args: Vec<SqlValue> = Vec::new();
    // The placeholder of a new argument.
    let mut arg = |v: SqlValue| {
        args.push(v);
        format!("?{}", args.len())
    };
    let text = filter.text.as_deref().filter(|t| !t.trim().is_empty());
    match (filter.since, text) {
        (Some(t), _) => where_.push(format!("timestamp >= {}", arg(format_time(t).into()))),
        // The bound every stored timestamp meets: without any, the planner sorts the whole
        // table; with it, it walks the time-led key (`timestamp, trace_id, span_id`) backwards
        // and sorts only the calls of one millisecond by id, stopping at the limit. (A search
        // starts from the index's hits instead.)
        (None, None) => where_.push(format!("timestamp >= {}", arg(String::new().into()))),
        (None, Some(_)) => {}
    }
    if let Some(t) = filter.until {
        where_.push(format!("timestamp < {}", arg(format_time(t).into())));
    }
    for (col, v) in filter.equalities() {
        where_.push(format!("{col} = {}", arg(v.to_owned().into())));
    }
    if let Some(text) = text {
        // The index's hits, and the rows it does not hold yet (the writer indexes every few
        // thousand rows, or about once a second: `TEXT_INDEX_LAG`), matched here.
        let phrases = arg(fts_phrases(text).into());
        let words = arg(text.to_owned().into());
        where_.push(format!(
            "(id IN (SELECT rowid FROM mcp_logs_fts WHERE mcp_logs_fts MATCH {phrases}) \
             OR (id > {} AND mcp_otel_text_match({words}, context, before_state, after_state)))",
            store::INDEXED_THROUGH
        ));
        // The index is outside the hash chain: every hit is re-checked against the chained
        // text, so an edited index cannot add rows to the results (ASCII words; others are
        // matched as the index folds them).
        for token in search_tokens(text) {
            where_.push(format!(
                "instr(lower(coalesce(context, '') || ' ' || coalesce(before_state, '') || ' ' \
                 || coalesce(after_state, '')), {}) > 0",
                arg(token.into())
            ));
        }
    }
    let where_ = if where_.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", where_.join(" AND "))
    };
    let statement = format!(
        "SELECT {} FROM mcp_logs {where_} ORDER BY timestamp DESC, id DESC LIMIT {}",
        store::query_select(conn)?,
        filter.limit
    );
    Ok((statement, args))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `EXPLAIN QUERY PLAN` of [`query`]'s statement for `filter`, one detail per line.
    fn plan(conn: &Connection, filter: &QueryFilter) -> String {
        register_text_match(conn).unwrap();
        let (statement, args) = query_statement(conn, filter).unwrap();
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {statement}"))
            .unwrap();
        let details = stmt
            .query_map(params_from_iter(args), |r| r.get::<_, String>(3))
            .unwrap();
        details.map(Result::unwrap).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn the_unindexed_tail_is_matched_as_the_index_matches() {
        let m = |search: &str, columns: &[Option<&str>]| text_matches(search, columns);
        let context = Some(r#"{"task_id":"task-3","title":"Quarterly Report"}"#);
        // Whole tokens, in order, within one column; every word; case folded.
        assert!(m("task-3", &[context]));
        assert!(m("TASK_3 report", &[context]));
        assert!(m("id task", &[context]), "tokens run across punctuation");
        assert!(!m("task-30", &[context]));
        assert!(!m("3-task", &[context]));
        assert!(!m("task-3 missing", &[context]));
        assert!(m("quarterly", &[None, None, context]));
        assert!(m("3 quarterly", &[Some("task 3"), Some("quarterly")]));
        assert!(
            !m("task-quarterly", &[Some("task"), Some("quarterly")]),
            "a word's tokens do not run from one column into the next"
        );
        // Words without tokens are ignored, and match nothing alone.
        assert!(m("-- task", &[context]));
        assert!(!m("--", &[context]));
        assert!(!m("task", &[None, None, None]));
    }

    #[test]
    fn the_newest_calls_are_read_from_the_key_without_sorting_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let conn = store::open_rw(&path, store::Durability::Normal).unwrap();
        let newest = QueryFilter {
            user: Some("user-7".into()),
            limit: 100,
            ..QueryFilter::default()
        };
        let since = QueryFilter {
            since: Some(Utc::now()),
            ..newest.clone()
        };
        for filter in [newest, since] {
            let plan = plan(&conn, &filter);
            // Sorted only within the key's order (`RIGHT PART` or `LAST TERM OF ORDER BY`,
            // as SQLite versions say it), not as a whole (`FOR ORDER BY`).
            assert!(plan.contains("USING INDEX mcp_logs_call"), "{plan}");
            assert!(!plan.contains("B-TREE FOR ORDER BY"), "{plan}");
        }
        let text = QueryFilter {
            text: Some("task-3".into()),
            limit: 100,
            ..QueryFilter::default()
        };
        let plan = plan(&conn, &text);
        assert!(plan.contains("mcp_logs_fts"), "{plan}");
    }

    #[test]
    fn a_listing_cuts_the_lists_not_the_counts() {
        let row = |id: i64, op: &str, status: &str| WriteRow {
            id,
            timestamp: format!("2026-12-01T10:00:{id:02}.000Z"),
            tool_name: "t".into(),
            user: "u".into(),
            operation_type: op.into(),
            resource_id: None,
            status: status.into(),
            error_code: None,
            user_confirmation: Some(true),
            confirmation_outcome: None,
            confirmation_source: None,
            recorded_at: format!("2026-12-01T10:00:{id:02}.000Z"),
            chain_id: None,
        };
        let r = Review {
            since: "2026-12-01T00:00:00.000Z".into(),
            until: "2026-12-02T00:00:00.000Z".into(),
            writes: (1..=5)
                .map(|i| row(i, if i % 2 == 0 { "delete" } else { "update" }, "error"))
                .collect(),
            per_user: Vec::new(),
            max_skew: DEFAULT_MAX_SKEW,
        };
        let page: Value = serde_json::from_slice(&r.json_listing(2)).unwrap();
        assert_eq!(page["listed_at_most"], 2);
        assert_eq!(page["writes"].as_array().unwrap().len(), 2);
        assert_eq!(page["failed"].as_array().unwrap().len(), 2);
        assert_eq!(page["totals"]["writes"], 5);
        assert_eq!(page["totals"]["deletes"], 2);
        assert_eq!(page["totals"]["failed"], 5);
        assert_eq!(page["writes"][0]["id"], 1);
        let whole: Value = serde_json::from_slice(&r.json_listing(5)).unwrap();
        assert_eq!(whole, r.to_json());
        assert!(whole.get("listed_at_most").is_none());
    }

    #[test]
    fn counts_are_pluralised() {
        assert_eq!(super::counted(1, "delete", "deletes"), "1 delete");
        assert_eq!(super::counted(0, "delete", "deletes"), "0 deletes");
        assert_eq!(super::counted(2, "write", "writes"), "2 writes");
    }
}
