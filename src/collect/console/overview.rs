//! The overview: the seed's key metrics for a time range — calls per time bucket by tool, error
//! rate, average and p95 latency, writes per day by type, calls per user, rate-limit (429) hits
//! and auth failures (401/403).
//!
//! From the audit trail every figure is one SQL aggregation over the time index on a read-only
//! connection (rows are never loaded into the process); without one, the same figures come from
//! the collector's recent window ([`super::feed`]), and the answer says so. Both feed one
//! `Tally`, so the two agree on every definition: an error is a call whose status is not
//! `success` (errors and timeouts, as `McpErrorRateHigh` counts them), p95 is the nearest rank
//! (the smallest duration that at least 95 % of the calls do not exceed).

use super::feed::{CodeClass, RecentWindow};
use crate::audit::rollup::{self, CallCell, CallCounts, Delta, Latency, WriteCounts};
use crate::audit::store::format_time;
use crate::display::visible;
use crate::record::error_code;
use chrono::{DateTime, TimeDelta, Utc};
use rusqlite::{Connection, params};
use serde::Serialize;
use std::collections::BTreeMap;

pub(crate) mod pg;

/// At most this many users are listed; the rest are summed as `users_other`.
pub(crate) const TOP_USERS: usize = 50;

/// The time range of an overview and its bucket size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub(crate) from: DateTime<Utc>,
    pub(crate) to: DateTime<Utc>,
    /// Bucket width in seconds: 5 minutes up to 3 hours, an hour up to 2 days, else a day.
    pub(crate) bucket: i64,
    /// The start of the first bucket (`from` rounded down to a whole bucket, UTC).
    pub(crate) origin: i64,
}

impl Range {
    /// `[from, to)`, refused when empty or longer than 400 days.
    pub(crate) fn new(from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Range, String> {
        let span = to - from;
        if span <= TimeDelta::zero() {
            return Err(format!(
                "`from` must be before `to`, got {} and {}",
                format_time(from),
                format_time(to)
            ));
        }
        if span > TimeDelta::days(400) {
            return Err("a range may span at most 400 days".to_owned());
        }
        let bucket = if span <= TimeDelta::hours(3) {
            300
        } else if span <= TimeDelta::days(2) {
            3600
        } else {
            86_400
        };
        let origin = from.timestamp().div_euclid(bucket) * bucket;
        Ok(Range {
            from,
            to,
            bucket,
            origin,
        })
    }

    /// The last `span` up to `now` (`1h`, `24h`, `7d`, or any duration the CLI accepts).
    pub fn last(span: &str, now: DateTime<Utc>) -> Result<Range, String> {
        let d = crate::duration::parse_span(span).map_err(|e| format!("`range`: {e}"))?;
        Range::new(now - d, now)
    }

    /// How many buckets the range covers.
    pub(crate) fn buckets(&self) -> usize {
        let end = self.to.timestamp() + i64::from(self.to.timestamp_subsec_nanos() > 0);
        ((end - self.origin + self.bucket - 1) / self.bucket).max(1) as usize
    }

    fn bucket_of(&self, t: DateTime<Utc>) -> usize {
        ((t.timestamp() - self.origin) / self.bucket).clamp(0, self.buckets() as i64 - 1) as usize
    }

    fn contains(&self, t: DateTime<Utc>) -> bool {
        t >= self.from && t < self.to
    }
}

/// Calls, errors and latency of one slice (a bucket, a tool, a user, or all).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Figures {
    /// Calls in the slice.
    pub calls: u64,
    pub(crate) errors: u64,
    /// `errors / calls`, absent without calls.
    pub(crate) error_rate: Option<f64>,
    pub(crate) avg_ms: Option<f64>,
    pub(crate) p95_ms: Option<f64>,
    /// Calls answered 429.
    pub(crate) rate_limited: u64,
    /// Calls answered 401 or 403.
    pub(crate) auth_failures: u64,
    #[serde(skip)]
    sum_ms: f64,
}

impl Figures {
    fn add(&mut self, g: &CallCounts<u64>) {
        self.calls += g.calls;
        self.errors += g.errors;
        self.sum_ms += g.sum_ms;
        self.rate_limited += g.rate_limited;
        self.auth_failures += g.auth_failures;
    }

    fn finish(&mut self) {
        if self.calls > 0 {
            self.error_rate = Some(self.errors as f64 / self.calls as f64);
            self.avg_ms = Some(self.sum_ms / self.calls as f64);
        }
    }
}

/// One tool's figures and its calls per bucket.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct ToolFigures {
    pub(crate) tool: String,
    #[serde(flatten)]
    pub(crate) figures: Figures,
    pub(crate) per_bucket: Vec<u64>,
}

/// One user's calls.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct UserFigures {
    pub(crate) user: String,
    pub(crate) calls: u64,
    pub(crate) errors: u64,
}

/// Writes of one UTC day by operation type.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub(crate) struct WriteDay {
    pub(crate) day: String,
    #[serde(flatten)]
    pub(crate) counts: WriteCounts<u64>,
}

/// The overview's answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Overview {
    /// `audit` (the audit trail) or `recent` (the collector's in-memory window).
    pub(crate) source: &'static str,
    /// What the figures cover when that is less than asked (the recent window).
    pub(crate) note: Option<String>,
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) bucket_seconds: i64,
    /// The start of each bucket.
    pub(crate) buckets: Vec<String>,
    /// The whole window.
    pub totals: Figures,
    /// Per bucket.
    pub(crate) series: Vec<Figures>,
    /// Per tool, most calls first.
    pub(crate) tools: Vec<ToolFigures>,
    /// Per user, most calls first, at most [`TOP_USERS`].
    pub(crate) users: Vec<UserFigures>,
    /// Calls by the users not listed.
    pub(crate) users_other: u64,
    /// Per UTC day with writes, oldest first.
    pub(crate) writes: Vec<WriteDay>,
    pub(crate) writes_total: u64,
    /// The p95s are the rollup histograms' estimates (at most 4.4 % above the exact nearest
    /// rank), not read from the rows: a range of more than [`EXACT_P95_CALLS`] calls.
    pub(crate) p95_estimated: bool,
}

/// The accumulator both sources feed.
struct Tally {
    range: Range,
    series: Vec<Figures>,
    tools: BTreeMap<String, ToolFigures>,
    users: BTreeMap<String, UserFigures>,
    writes: BTreeMap<String, WriteDay>,
    totals: Figures,
}

impl Tally {
    fn new(range: Range) -> Tally {
        Tally {
            range,
            series: vec![Figures::default(); range.buckets()],
            tools: BTreeMap::new(),
            users: BTreeMap::new(),
            writes: BTreeMap::new(),
            totals: Figures::default(),
        }
    }

    /// Counts the calls of one (bucket, tool) group.
    fn group(&mut self, bucket: usize, tool: &str, g: CallCounts<u64>) {
        let n = self.series.len();
        let b = bucket.min(n - 1);
        self.series[b].add(&g);
        self.totals.add(&g);
        let t = self
            .tools
            .entry(tool.to_owned())
            .or_insert_with(|| ToolFigures {
                tool: visible(tool).into_owned(),
                figures: Figures::default(),
                per_bucket: vec![0; n],
            });
        t.figures.add(&g);
        t.per_bucket[b] += g.calls;
    }

    fn user(&mut self, user: &str, calls: u64, errors: u64) {
        let u = self
            .users
            .entry(user.to_owned())
            .or_insert_with(|| UserFigures {
                user: visible(user).into_owned(),
                calls: 0,
                errors: 0,
            });
        u.calls += calls;
        u.errors += errors;
    }

    fn write(&mut self, day: &str, op: &str, n: u64) {
        let d = self
            .writes
            .entry(day.to_owned())
            .or_insert_with(|| WriteDay {
                day: day.to_owned(),
                ..WriteDay::default()
            });
        d.counts.add(op, n);
    }

    fn finish(mut self, source: &'static str, note: Option<String>, p95: P95s) -> Overview {
        let r = self.range;
        for (i, f) in self.series.iter_mut().enumerate() {
            f.finish();
            f.p95_ms = p95.buckets.get(&i).copied();
        }
        self.totals.finish();
        self.totals.p95_ms = p95.total;
        let mut tools: Vec<ToolFigures> = self
            .tools
            .into_iter()
            .map(|(name, mut t)| {
                t.figures.finish();
                t.figures.p95_ms = p95.tools.get(&name).copied();
                t
            })
            .collect();
        tools.sort_by(|a, b| {
            b.figures
                .calls
                .cmp(&a.figures.calls)
                .then(a.tool.cmp(&b.tool))
        });
        let mut users: Vec<UserFigures> = self.users.into_values().collect();
        users.sort_by(|a, b| b.calls.cmp(&a.calls).then(a.user.cmp(&b.user)));
        let users_other = users.iter().skip(TOP_USERS).map(|u| u.calls).sum();
        users.truncate(TOP_USERS);
        let writes: Vec<WriteDay> = self.writes.into_values().collect();
        let writes_total = writes.iter().map(|d| d.counts.total()).sum();
        let buckets = (0..self.series.len())
            .map(|i| {
                DateTime::from_timestamp(r.origin + i as i64 * r.bucket, 0)
                    .map(format_time)
                    .unwrap_or_default()
            })
            .collect();
        Overview {
            source,
            note,
            from: format_time(r.from),
            to: format_time(r.to),
            bucket_seconds: r.bucket,
            buckets,
            totals: self.totals,
            series: self.series,
            tools,
            users,
            users_other,
            writes,
            writes_total,
            p95_estimated: false,
        }
    }
}

/// Nearest-rank p95s: per bucket, per tool (by stored name), overall.
#[derive(Default)]
struct P95s {
    buckets: BTreeMap<usize, f64>,
    tools: BTreeMap<String, f64>,
    total: Option<f64>,
}

/// The 1-based nearest rank of the 95th percentile among `n` values.
fn p95_rank(n: usize) -> usize {
    (n * 95).div_ceil(100).max(1)
}

/// Ranges holding at most this many calls get the exact nearest-rank p95s from the rows; a
/// larger range gets them from the rollup's latency histograms (the upper bound of the bucket
/// that holds the rank: at most 4.4 % above the exact value, never below it).
pub const EXACT_P95_CALLS: u64 = 20_000;

/// The overview from the audit trail (`conn` read-only), in one read transaction so that a
/// writer committing meanwhile does not split it. From the store's rollup
/// (`crate::audit::rollup`) when it has one: whole five-minute and hourly cells for the
/// inside of the range, rows only for its ragged edges (less than five minutes at each end for
/// the per-tool figures, less than an hour for the per-user ones); else, from the rows.
pub fn from_store(conn: &Connection, range: Range) -> rusqlite::Result<Overview> {
    let tx = conn.unchecked_transaction()?;
    let o = if rollup::present(&tx)? {
        from_rollup(&tx, range, EXACT_P95_CALLS)
    } else {
        from_rows(&tx, range)
    }?;
    tx.commit()?;
    Ok(o)
}

/// One piece of a range: whole rollup cells of one grain (`[from, to)` in Unix seconds), or
/// the rows of a stretch no whole cell fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Piece {
    Cells {
        grain: i64,
        from: i64,
        to: i64,
    },
    Rows {
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    },
}

/// Covers `[from, to)` with the coarsest cells that fit whole, finer ones at the edges, rows
/// for what is left.
fn cover(from: DateTime<Utc>, to: DateTime<Utc>, grains: &[i64], out: &mut Vec<Piece>) {
    if from >= to {
        return;
    }
    let Some((&g, finer)) = grains.split_first() else {
        out.push(Piece::Rows { from, to });
        return;
    };
    let start = from.timestamp() + i64::from(from.timestamp_subsec_nanos() > 0);
    let lo = (start + g - 1).div_euclid(g) * g;
    let hi = to.timestamp().div_euclid(g) * g;
    match (
        DateTime::from_timestamp(lo, 0),
        DateTime::from_timestamp(hi, 0),
    ) {
        (Some(lo_t), Some(hi_t)) if lo < hi => {
            cover(from, lo_t, finer, out);
            out.push(Piece::Cells {
                grain: g,
                from: lo,
                to: hi,
            });
            cover(hi_t, to, finer, out);
        }
        _ => cover(from, to, finer, out),
    }
}

/// Latency histograms per bucket, per tool (by stored name) and overall.
#[derive(Default)]
struct Histograms {
    buckets: BTreeMap<usize, Latency>,
    tools: BTreeMap<String, Latency>,
    total: Latency,
}

impl Histograms {
    fn add(&mut self, bucket: usize, tool: &str, l: &Latency) {
        self.buckets.entry(bucket).or_default().merge(l);
        match self.tools.get_mut(tool) {
            Some(t) => t.merge(l),
            None => {
                self.tools.insert(tool.to_owned(), l.clone());
            }
        }
        self.total.merge(l);
    }

    /// The p95 estimates, from the counts the tally holds.
    fn p95s(&self, tally: &Tally) -> P95s {
        let at = |l: &Latency, calls: u64| l.rank_upper_ms(p95_rank(calls as usize) as u64);
        let mut p = P95s::default();
        for (b, l) in &self.buckets {
            if let Some(v) = tally.series.get(*b).and_then(|f| at(l, f.calls)) {
                p.buckets.insert(*b, v);
            }
        }
        for (name, l) in &self.tools {
            if let Some(v) = tally.tools.get(name).and_then(|t| at(l, t.figures.calls)) {
                p.tools.insert(name.clone(), v);
            }
        }
        p.total = at(&self.total, tally.totals.calls);
        p
    }
}

impl Tally {
    /// Counts one per-tool cell (or the rows of one bucket) starting at Unix second `t`.
    fn cell(&mut self, t: i64, tool: &str, c: &CallCell, hist: &mut Histograms) {
        let r = self.range;
        let b = (t - r.origin).div_euclid(r.bucket).max(0) as usize;
        self.group(
            b,
            tool,
            CallCounts {
                calls: c.counts.calls.max(0) as u64,
                errors: c.counts.errors.max(0) as u64,
                sum_ms: c.counts.sum_ms,
                rate_limited: c.counts.rate_limited.max(0) as u64,
                auth_failures: c.counts.auth_failures.max(0) as u64,
            },
        );
        let day = DateTime::from_timestamp(t, 0)
            .map(|d| d.format("%Y-%m-%d").to_string())
            .unwrap_or_default();
        for (op, n) in c.writes.by_type() {
            if n > 0 {
                self.write(&day, op, n as u64);
            }
        }
        hist.add(b.min(self.series.len() - 1), tool, &c.latency);
    }
}

/// The overview from the rollup's cells and the rows of the range's edges.
fn from_rollup(conn: &Connection, range: Range, exact_p95: u64) -> rusqlite::Result<Overview> {
    let mut tally = Tally::new(range);
    let mut hist = Histograms::default();
    let fits = |g: &&i64| range.bucket % **g == 0;
    let call_grains: Vec<i64> = rollup::CALL_GRAINS.iter().filter(fits).copied().collect();
    let user_grains: Vec<i64> = rollup::USER_GRAINS.iter().filter(fits).copied().collect();
    let mut pieces = Vec::new();
    cover(range.from, range.to, &call_grains, &mut pieces);
    let mut cells = conn.prepare_cached(
        "SELECT t, tool_name, calls, errors, rate_limited, auth_failures, sum_ms, creates, \
         updates, deletes, other_writes, latency FROM console_rollup_calls \
         WHERE grain = ?1 AND t >= ?2 AND t < ?3",
    )?;
    for piece in &pieces {
        match *piece {
            Piece::Cells { grain, from, to } => {
                let mut rows = cells.query(params![grain, from, to])?;
                while let Some(r) = rows.next()? {
                    let t: i64 = r.get(0)?;
                    let tool: String = r.get(1)?;
                    let c = CallCell {
                        counts: CallCounts {
                            calls: r.get(2)?,
                            errors: r.get(3)?,
                            rate_limited: r.get(4)?,
                            auth_failures: r.get(5)?,
                            sum_ms: r.get(6)?,
                        },
                        writes: WriteCounts {
                            create: r.get(7)?,
                            update: r.get(8)?,
                            delete: r.get(9)?,
                            write: r.get(10)?,
                        },
                        latency: Latency::decode(r.get_ref(11)?.as_blob()?),
                    };
                    tally.cell(t, &tool, &c, &mut hist);
                }
            }
            Piece::Rows { from, to } => {
                let mut edge = Delta::default();
                rollup::count_rows(
                    conn,
                    "timestamp >= ?1 AND timestamp < ?2",
                    params![format_time(from), format_time(to)],
                    1,
                    &mut edge,
                )?;
                // The edge is shorter than the finest grain: its cells of that grain lie in
                // one bucket each.
                for ((g, t, tool), c) in edge.calls() {
                    if g == *rollup::CALL_GRAINS.last().unwrap_or(&300) {
                        tally.cell(t, tool, c, &mut hist);
                    }
                }
            }
        }
    }
    let mut pieces = Vec::new();
    cover(range.from, range.to, &user_grains, &mut pieces);
    let mut cells = conn.prepare_cached(
        "SELECT user, SUM(calls), SUM(errors) FROM console_rollup_users \
         WHERE grain = ?1 AND t >= ?2 AND t < ?3 GROUP BY user",
    )?;
    let mut rows_of = conn.prepare_cached(
        "SELECT user, COUNT(*), SUM(status != 'success') FROM mcp_logs \
         WHERE timestamp >= ?1 AND timestamp < ?2 GROUP BY user",
    )?;
    for piece in &pieces {
        let mut rows = match *piece {
            Piece::Cells { grain, from, to } => cells.query(params![grain, from, to])?,
            Piece::Rows { from, to } => {
                rows_of.query(params![format_time(from), format_time(to)])?
            }
        };
        while let Some(r) = rows.next()? {
            let user: String = r.get(0)?;
            tally.user(
                &user,
                r.get::<_, i64>(1)?.max(0) as u64,
                r.get::<_, i64>(2)?.max(0) as u64,
            );
        }
    }
    let (p95, estimated) = if tally.totals.calls <= exact_p95 {
        let (from, to) = (format_time(range.from), format_time(range.to));
        (
            store_p95s(conn, &range, &from, &to, tally.totals.calls)?,
            false,
        )
    } else {
        (hist.p95s(&tally), true)
    };
    let mut o = tally.finish("audit", None, p95);
    o.p95_estimated = estimated;
    Ok(o)
}

/// The overview by aggregating the rows (a store without the rollup).
fn from_rows(conn: &Connection, range: Range) -> rusqlite::Result<Overview> {
    let from = format_time(range.from);
    let to = format_time(range.to);
    let mut tally = Tally::new(range);
    let bucket = "(unixepoch(timestamp) - ?1) / ?2";
    let mut groups = conn.prepare_cached(&format!(
        "SELECT {bucket} AS b, tool_name, COUNT(*), SUM(status != 'success'), SUM(duration_ms), \
         SUM(error_code = '{rl}'), SUM(error_code IN ('{e401}', '{e403}')) \
         FROM mcp_logs WHERE timestamp >= ?3 AND timestamp < ?4 GROUP BY b, tool_name",
        rl = error_code::RATE_LIMITED,
        e401 = error_code::UNAUTHORIZED,
        e403 = error_code::FORBIDDEN,
    ))?;
    let mut rows = groups.query(params![range.origin, range.bucket, from, to])?;
    while let Some(r) = rows.next()? {
        let b: i64 = r.get(0)?;
        let tool: String = r.get(1)?;
        let g = CallCounts {
            calls: r.get::<_, i64>(2)? as u64,
            errors: r.get::<_, i64>(3)? as u64,
            sum_ms: r.get(4)?,
            rate_limited: r.get::<_, Option<i64>>(5)?.unwrap_or(0) as u64,
            auth_failures: r.get::<_, Option<i64>>(6)?.unwrap_or(0) as u64,
        };
        tally.group(b.max(0) as usize, &tool, g);
    }
    let mut users = conn.prepare_cached(
        "SELECT user, COUNT(*), SUM(status != 'success') FROM mcp_logs \
         WHERE timestamp >= ?1 AND timestamp < ?2 GROUP BY user",
    )?;
    let mut rows = users.query(params![from, to])?;
    while let Some(r) = rows.next()? {
        let user: String = r.get(0)?;
        tally.user(
            &user,
            r.get::<_, i64>(1)? as u64,
            r.get::<_, i64>(2)? as u64,
        );
    }
    let mut writes = conn.prepare_cached(
        "SELECT substr(timestamp, 1, 10), operation_type, COUNT(*) FROM mcp_logs \
         WHERE operation_type IS NOT NULL AND timestamp >= ?1 AND timestamp < ?2 \
         GROUP BY 1, 2",
    )?;
    let mut rows = writes.query(params![from, to])?;
    while let Some(r) = rows.next()? {
        let day: String = r.get(0)?;
        let op: String = r.get(1)?;
        tally.write(&day, &op, r.get::<_, i64>(2)? as u64);
    }
    let p95 = store_p95s(conn, &range, &from, &to, tally.totals.calls)?;
    Ok(tally.finish("audit", None, p95))
}

/// The p95s by SQL window functions: one sort per partitioning, no row leaves SQLite but the
/// one at the rank.
fn store_p95s(
    conn: &Connection,
    range: &Range,
    from: &str,
    to: &str,
    total: u64,
) -> rusqlite::Result<P95s> {
    let mut p = P95s::default();
    if total == 0 {
        return Ok(p);
    }
    let bucket = "(unixepoch(timestamp) - ?1) / ?2";
    let mut by_bucket = conn.prepare_cached(&format!(
        "SELECT b, duration_ms FROM (SELECT {bucket} AS b, duration_ms, \
         ROW_NUMBER() OVER (PARTITION BY {bucket} ORDER BY duration_ms) AS rn, \
         COUNT(*) OVER (PARTITION BY {bucket}) AS n \
         FROM mcp_logs WHERE timestamp >= ?3 AND timestamp < ?4) \
         WHERE rn = (n * 95 + 99) / 100"
    ))?;
    let mut rows = by_bucket.query(params![range.origin, range.bucket, from, to])?;
    while let Some(r) = rows.next()? {
        p.buckets
            .insert(r.get::<_, i64>(0)?.max(0) as usize, r.get(1)?);
    }
    let mut by_tool = conn.prepare_cached(
        "SELECT tool_name, duration_ms FROM (SELECT tool_name, duration_ms, \
         ROW_NUMBER() OVER (PARTITION BY tool_name ORDER BY duration_ms) AS rn, \
         COUNT(*) OVER (PARTITION BY tool_name) AS n \
         FROM mcp_logs WHERE timestamp >= ?1 AND timestamp < ?2) \
         WHERE rn = (n * 95 + 99) / 100",
    )?;
    let mut rows = by_tool.query(params![from, to])?;
    while let Some(r) = rows.next()? {
        p.tools.insert(r.get(0)?, r.get(1)?);
    }
    let rank = p95_rank(total as usize) as i64;
    p.total = Some(conn.query_row(
        "SELECT duration_ms FROM mcp_logs WHERE timestamp >= ?1 AND timestamp < ?2 \
         ORDER BY duration_ms LIMIT 1 OFFSET ?3",
        params![from, to, rank - 1],
        |r| r.get(0),
    )?);
    Ok(p)
}

/// The overview from the recent window, with a note of what it covers.
pub(crate) fn from_recent(window: &RecentWindow, range: Range) -> Overview {
    let mut tally = Tally::new(range);
    let mut durations: Vec<(usize, u32, f64)> = Vec::new();
    let kept = window.calls.len();
    let oldest = window
        .calls
        .iter()
        .map(|c| c.at_ms())
        .min()
        .and_then(DateTime::from_timestamp_millis);
    for call in &window.calls {
        let Some(at) = DateTime::from_timestamp_millis(call.at_ms()) else {
            continue;
        };
        if !range.contains(at) {
            continue;
        }
        let b = range.bucket_of(at);
        let tool = window.name(call.tool());
        tally.group(
            b,
            tool,
            CallCounts {
                calls: 1,
                errors: u64::from(call.failed()),
                sum_ms: call.duration_ms(),
                rate_limited: u64::from(call.code() == CodeClass::RateLimited),
                auth_failures: u64::from(matches!(
                    call.code(),
                    CodeClass::Unauthorized | CodeClass::Forbidden
                )),
            },
        );
        tally.user(window.name(call.user()), 1, u64::from(call.failed()));
        if let Some(op) = call.op() {
            let day = format_time(at);
            tally.write(&day[..10], op.as_str(), 1);
        }
        durations.push((b, call.tool(), call.duration_ms()));
    }
    let mut p = P95s::default();
    let pick = |mut v: Vec<f64>| -> Option<f64> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(v[p95_rank(v.len()) - 1])
    };
    let mut per_bucket: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let mut per_tool: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (b, tool, d) in &durations {
        per_bucket.entry(*b).or_default().push(*d);
        let tool = window.name(*tool);
        match per_tool.get_mut(tool) {
            Some(v) => v.push(*d),
            None => {
                per_tool.insert(tool.to_owned(), vec![*d]);
            }
        }
    }
    p.buckets = per_bucket
        .into_iter()
        .filter_map(|(b, v)| Some((b, pick(v)?)))
        .collect();
    p.tools = per_tool
        .into_iter()
        .filter_map(|(t, v)| Some((t, pick(v)?)))
        .collect();
    p.total = pick(durations.iter().map(|d| d.2).collect());
    let note = Some(format!(
        "No audit trail (--audit none): these figures cover the {kept} most recent calls this \
         collector counted since it started (as many as {} MiB hold){}.",
        super::feed::RECENT_BYTES >> 20,
        oldest.map_or(String::new(), |o| format!(
            ", the oldest from {}",
            format_time(o)
        ))
    ));
    tally.finish("recent", note, p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Status, ToolCall};

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn buckets_follow_the_span() {
        let r = Range::new(at("2026-12-01T10:07:00Z"), at("2026-12-01T11:07:00Z")).unwrap();
        assert_eq!((r.bucket, r.buckets()), (300, 13));
        let r = Range::new(at("2026-11-30T10:07:00Z"), at("2026-12-01T10:07:00Z")).unwrap();
        assert_eq!((r.bucket, r.buckets()), (3600, 25));
        let r = Range::new(at("2026-11-24T10:07:00Z"), at("2026-12-01T10:07:00Z")).unwrap();
        assert_eq!((r.bucket, r.buckets()), (86_400, 8));
        assert!(Range::new(r.to, r.from).is_err());
        assert!(Range::last("2w", Utc::now()).is_ok() || Range::last("14d", Utc::now()).is_ok());
    }

    #[test]
    fn the_p95_is_the_nearest_rank() {
        assert_eq!(p95_rank(1), 1);
        assert_eq!(p95_rank(20), 19);
        assert_eq!(p95_rank(21), 20);
        assert_eq!(p95_rank(100), 95);
    }

    #[test]
    fn the_recent_window_counts_what_is_in_range() {
        let r = Range::new(at("2026-12-01T10:00:00Z"), at("2026-12-01T11:00:00Z")).unwrap();
        let mut calls = Vec::new();
        for i in 0..20 {
            let mut c = ToolCall::new(if i < 15 { "list" } else { "get" }, "alice");
            c.timestamp = at("2026-12-01T10:00:00Z") + TimeDelta::minutes(i);
            c.duration_ms = (i + 1) as f64;
            if i == 3 {
                c.status = Status::Error;
                c.error_code = Some("429".into());
            }
            calls.push(c);
        }
        let mut late = ToolCall::new("list", "bob");
        late.timestamp = at("2026-12-01T12:00:00Z");
        calls.push(late);
        let feed = super::super::feed::CallFeed::new(true);
        feed.publish(calls);
        let o = from_recent(&feed.recent().unwrap(), r);
        assert_eq!(o.source, "recent");
        assert_eq!(o.totals.calls, 20);
        assert_eq!(o.totals.errors, 1);
        assert_eq!(o.totals.rate_limited, 1);
        assert_eq!(o.totals.p95_ms, Some(19.0));
        assert_eq!(o.totals.avg_ms, Some(10.5));
        assert_eq!(o.tools[0].tool, "list");
        assert_eq!(o.tools[0].per_bucket[0], 5);
        assert_eq!(o.series[0].calls, 5);
        assert_eq!(o.users.len(), 1);
        assert!(o.note.unwrap().contains("21 most recent"));
    }

    /// A store with calls spread over three days, some pruned; its path.
    async fn pruned_store(dir: &std::path::Path) -> std::path::PathBuf {
        use crate::audit::{AuditOptions, AuditWriter, Durability};
        use crate::record::{OperationType, WriteOp};
        let path = dir.join("a.db");
        let w = AuditWriter::open(
            &path,
            AuditOptions {
                durability: Durability::Normal,
                ..AuditOptions::default()
            },
        )
        .unwrap();
        let now = Utc::now();
        // Durations in quarters of a ms: every sum is exact, whatever the order of addition.
        let call = |i: i64| {
            let mut c = ToolCall::new(["list", "get", "update"][(i % 3) as usize], "u");
            c.user = format!("user-{}", i % 7);
            c.timestamp =
                now - TimeDelta::seconds((2700 - i) * 97) - TimeDelta::milliseconds(i % 1000);
            c.duration_ms = ((i * 37) % 500) as f64 / 4.0;
            if i % 11 == 0 {
                c.status = Status::Error;
                c.error_code = Some(["429", "401", "403", "-32603"][(i / 11 % 4) as usize].into());
            }
            if i % 3 == 2 {
                let op = [
                    OperationType::Update,
                    OperationType::Delete,
                    OperationType::Create,
                ][(i / 3 % 3) as usize];
                c.write = Some(WriteOp::new(op).resource_id(format!("r{i}")));
            }
            c
        };
        w.append((0..1200).map(call).collect()).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let cutoff = Utc::now();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        w.append((1200..2700).map(call).collect()).await.unwrap();
        let pruned = w.prune(cutoff).await.unwrap();
        assert_eq!(pruned.rows, 1200);
        path
    }

    #[tokio::test]
    async fn the_rollup_gives_the_figures_the_rows_give_and_verify_checks_it() {
        use crate::audit::{store, verify};
        let dir = tempfile::tempdir().unwrap();
        let path = pruned_store(dir.path()).await;
        let conn = store::open_ro(&path).unwrap();
        assert!(rollup::present(&conn).unwrap());
        let now = Utc::now();
        let ranges = [
            Range::last("1h", now).unwrap(),
            Range::last("24h", now).unwrap(),
            Range::last("7d", now).unwrap(),
            // Ragged at both ends, hourly buckets.
            Range::new(
                now - TimeDelta::seconds(100_003),
                now - TimeDelta::seconds(7_777),
            )
            .unwrap(),
            // Ragged, five-minute buckets, inside one hour.
            Range::new(
                now - TimeDelta::seconds(50_001),
                now - TimeDelta::seconds(49_000),
            )
            .unwrap(),
        ];
        for range in ranges {
            let rows = from_rows(&conn, range).unwrap();
            assert!(rows.totals.calls > 0, "{range:?}");
            assert_eq!(from_store(&conn, range).unwrap(), rows, "{range:?}");
            // The histograms' estimates: never below the exact value, at most 4.4 % above.
            let est = from_rollup(&conn, range, 0).unwrap();
            assert!(est.p95_estimated);
            let close = |e: Option<f64>, x: Option<f64>| match (e, x) {
                (Some(e), Some(x)) => e >= x && e <= x * 1.0444 + 0.01,
                (e, x) => e == x,
            };
            assert!(close(est.totals.p95_ms, rows.totals.p95_ms), "{range:?}");
            for (a, b) in est.series.iter().zip(&rows.series) {
                assert!(close(a.p95_ms, b.p95_ms), "{range:?}: {a:?} vs {b:?}");
            }
            for (a, b) in est.tools.iter().zip(&rows.tools) {
                assert!(close(a.figures.p95_ms, b.figures.p95_ms), "{range:?}");
            }
        }
        let report = verify::verify(&conn, &path, &verify::VerifyOptions::default()).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        // A rollup that no longer counts the rows is named.
        let rw = rusqlite::Connection::open(&path).unwrap();
        rw.execute(
            "UPDATE console_rollup_users SET calls = calls + 1 WHERE user = 'user-1'",
            [],
        )
        .unwrap();
        let report = verify::verify(&conn, &path, &verify::VerifyOptions::default()).unwrap();
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.detail.contains("console rollup counts")),
            "{:?}",
            report.problems
        );
    }

    #[test]
    fn a_range_is_covered_by_whole_cells_and_ragged_edges() {
        let from = at("2026-12-01T10:07:30.500Z");
        let to = at("2026-12-01T13:02:00Z");
        let mut p = Vec::new();
        cover(from, to, &[3600, 300], &mut p);
        let t = |s: &str| at(s).timestamp();
        assert_eq!(
            p,
            vec![
                Piece::Rows {
                    from,
                    to: at("2026-12-01T10:10:00Z")
                },
                Piece::Cells {
                    grain: 300,
                    from: t("2026-12-01T10:10:00Z"),
                    to: t("2026-12-01T11:00:00Z")
                },
                Piece::Cells {
                    grain: 3600,
                    from: t("2026-12-01T11:00:00Z"),
                    to: t("2026-12-01T13:00:00Z")
                },
                Piece::Rows {
                    from: at("2026-12-01T13:00:00Z"),
                    to
                },
            ]
        );
    }
}
