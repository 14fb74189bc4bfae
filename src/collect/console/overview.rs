//! The overview: the seed's key metrics for a time range — calls per time bucket by tool, error
//! rate, average and p95 latency, writes per day by type, calls per user, rate-limit (429) hits
//! and auth failures (401/403).
//!
//! From the audit trail every figure is one SQL aggregation over the time index on a read-only
//! connection (rows are never loaded into the process); without one, the same figures come from
//! the collector's recent window ([`super::feed`]), and the answer says so. Both feed one
//! [`Tally`], so the two agree on every definition: an error is a call whose status is not
//! `success` (errors and timeouts, as `McpErrorRateHigh` counts them), p95 is the nearest rank
//! (the smallest duration that at least 95 % of the calls do not exceed).

use super::feed::CallBatch;
use crate::audit::store::format_time;
use crate::display::visible;
use crate::record::{Status, error_code};
use chrono::{DateTime, TimeDelta, Utc};
use rusqlite::{Connection, params};
use serde::Serialize;
use std::collections::BTreeMap;

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
    fn add(&mut self, g: &Group) {
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
    pub(crate) create: u64,
    pub(crate) update: u64,
    pub(crate) delete: u64,
    pub(crate) write: u64,
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
}

/// Calls of one (bucket, tool) group.
struct Group {
    calls: u64,
    errors: u64,
    sum_ms: f64,
    rate_limited: u64,
    auth_failures: u64,
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

    fn group(&mut self, bucket: usize, tool: &str, g: Group) {
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
        match op {
            "create" => d.create += n,
            "update" => d.update += n,
            "delete" => d.delete += n,
            _ => d.write += n,
        }
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
        let writes_total = writes
            .iter()
            .map(|d| d.create + d.update + d.delete + d.write)
            .sum();
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

/// The overview from the audit trail (`conn` read-only).
pub fn from_store(conn: &Connection, range: Range) -> rusqlite::Result<Overview> {
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
        let g = Group {
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
pub(crate) fn from_recent(batches: &[CallBatch], range: Range) -> Overview {
    let mut tally = Tally::new(range);
    let mut durations: Vec<(usize, &str, f64)> = Vec::new();
    let mut kept = 0usize;
    let mut oldest: Option<DateTime<Utc>> = None;
    for call in batches.iter().flat_map(|b| b.iter()) {
        kept += 1;
        oldest = Some(oldest.map_or(call.timestamp, |o| o.min(call.timestamp)));
        if !range.contains(call.timestamp) {
            continue;
        }
        let b = range.bucket_of(call.timestamp);
        let code = call.error_code.as_deref();
        tally.group(
            b,
            &call.tool_name,
            Group {
                calls: 1,
                errors: u64::from(call.status != Status::Success),
                sum_ms: call.duration_ms,
                rate_limited: u64::from(code == Some(error_code::RATE_LIMITED)),
                auth_failures: u64::from(
                    code.is_some_and(|c| {
                        c == error_code::UNAUTHORIZED || c == error_code::FORBIDDEN
                    }),
                ),
            },
        );
        tally.user(&call.user, 1, u64::from(call.status != Status::Success));
        if let Some(op) = call.operation_type() {
            let day = format_time(call.timestamp);
            tally.write(&day[..10], op.as_str(), 1);
        }
        durations.push((b, call.tool_name.as_str(), call.duration_ms));
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
        per_tool.entry((*tool).to_owned()).or_default().push(*d);
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
         collector counted since it started (at most {}){}.",
        super::feed::RECENT_CALLS,
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
    use crate::record::ToolCall;
    use std::sync::Arc;

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
        let o = from_recent(&[Arc::new(calls)], r);
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
}
