//! The console's rollup of the audit trail: per five minutes and per hour, for each tool, the
//! calls, errors, 429s, auth failures, writes by type, the duration sum and a latency
//! histogram; per hour, for each user, the calls and errors. The overview reads these cells
//! instead of the rows, so its cost grows with hours × tools (and hours × users), not with the
//! calls in the range.
//!
//! The writer keeps the rollup in the same transaction as the rows it counts (one upsert per
//! touched cell per transaction, not per call), `audit prune` takes the pruned rows out of it
//! in the prune's transaction, and a store created by a build without it gets it built from its
//! rows when a writer first opens it. It is derived data, outside the hash chain: `audit verify`
//! accepts its tables as the project's own and checks that it counts every stored row.

use crate::record::error_code;
use chrono::DateTime;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
// The delta counts every inserted row on the writer thread: a fast hasher for its small keys.
use foldhash::HashMap;
use std::ops::{Add, AddAssign};

/// The per-tool cells (grain in seconds, cell start in Unix seconds, tool).
pub(crate) const CALLS_TABLE: &str = "console_rollup_calls";
/// The per-user cells.
pub(crate) const USERS_TABLE: &str = "console_rollup_users";
/// The grains of the per-tool cells, coarsest first.
pub(crate) const CALL_GRAINS: &[i64] = &[3600, 300];
/// The grains of the per-user cells, coarsest first.
pub(crate) const USER_GRAINS: &[i64] = &[3600];

/// The rollup tables, created in the writer's schema transaction or by [`ensure`].
const SCHEMA: &str = "
CREATE TABLE console_rollup_calls (
    grain INTEGER NOT NULL,
    t INTEGER NOT NULL,
    tool_name TEXT NOT NULL,
    calls INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    rate_limited INTEGER NOT NULL,
    auth_failures INTEGER NOT NULL,
    sum_ms REAL NOT NULL,
    creates INTEGER NOT NULL,
    updates INTEGER NOT NULL,
    deletes INTEGER NOT NULL,
    other_writes INTEGER NOT NULL,
    latency BLOB NOT NULL,
    PRIMARY KEY (grain, t, tool_name)
) WITHOUT ROWID;
CREATE TABLE console_rollup_users (
    grain INTEGER NOT NULL,
    t INTEGER NOT NULL,
    user TEXT NOT NULL,
    calls INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    PRIMARY KEY (grain, t, user)
) WITHOUT ROWID;
";

/// Histogram buckets per doubling of the duration: a bucket's upper bound is at most
/// 2^(1/16) − 1 ≈ 4.4 % above any duration it holds.
const PER_OCTAVE: f64 = 16.0;
/// The upper bound of bucket 0, in ms; durations up to it (and zero) fall there.
const SMALLEST_MS: f64 = 0.01;
/// The last bucket: its upper bound is 0.01 ms × 2^(1023/16), far beyond any call.
const LAST_BUCKET: u16 = 1023;

/// The histogram bucket of a duration.
pub(crate) fn latency_bucket(ms: f64) -> u16 {
    // NaN and anything up to the smallest bound fall in bucket 0.
    if ms.is_nan() || ms <= SMALLEST_MS {
        return 0;
    }
    let i = ((ms / SMALLEST_MS).log2() * PER_OCTAVE).ceil();
    (i as u64).min(u64::from(LAST_BUCKET)) as u16
}

/// The upper bound (ms) of a histogram bucket: what the estimated percentile reports.
pub(crate) fn bucket_upper_ms(bucket: u16) -> f64 {
    SMALLEST_MS * (f64::from(bucket) / PER_OCTAVE).exp2()
}

/// A latency histogram: bucket → count.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Latency(pub(crate) HashMap<u16, i64>);

impl Latency {
    /// Adds `n` calls of bucket `b` (negative to take them out).
    fn add_bucket(&mut self, b: u16, n: i64) {
        let e = self.0.entry(b).or_insert(0);
        *e += n;
        if *e == 0 {
            self.0.remove(&b);
        }
    }

    /// Adds every count of `other`.
    pub(crate) fn merge(&mut self, other: &Latency) {
        for (&b, &n) in &other.0 {
            self.add_bucket(b, n);
        }
    }

    /// The stored form: (bucket u16 LE, count i64 LE) pairs in bucket order.
    fn encode(&self) -> Vec<u8> {
        let mut keys: Vec<_> = self.0.iter().filter(|(_, n)| **n != 0).collect();
        keys.sort();
        let mut out = Vec::with_capacity(keys.len() * 10);
        for (b, n) in keys {
            out.extend_from_slice(&b.to_le_bytes());
            out.extend_from_slice(&n.to_le_bytes());
        }
        out
    }

    /// Reads the stored form; a malformed tail is ignored.
    pub(crate) fn decode(bytes: &[u8]) -> Latency {
        let mut l = Latency::default();
        for pair in bytes.chunks_exact(10) {
            let b = u16::from_le_bytes([pair[0], pair[1]]);
            let n = i64::from_le_bytes(pair[2..10].try_into().unwrap_or([0; 8]));
            l.add_bucket(b, n);
        }
        l
    }

    /// The upper bound of the bucket that holds the nearest rank `rank` (1-based), if any.
    pub(crate) fn rank_upper_ms(&self, rank: u64) -> Option<f64> {
        let mut keys: Vec<(&u16, &i64)> = self.0.iter().collect();
        keys.sort();
        let mut seen = 0u64;
        for (b, n) in keys {
            seen += (*n).max(0) as u64;
            if seen >= rank {
                return Some(bucket_upper_ms(*b));
            }
        }
        None
    }
}

/// The call counts of a per-tool cell or of any group of calls: signed (`i64`) in the rollup,
/// where a delta takes calls out, unsigned (`u64`) in the overview's figures.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct CallCounts<N> {
    pub(crate) calls: N,
    /// Calls whose status is not `success` (errors and timeouts).
    pub(crate) errors: N,
    /// Calls answered 429.
    pub(crate) rate_limited: N,
    /// Calls answered 401 or 403.
    pub(crate) auth_failures: N,
    /// The calls' durations summed, milliseconds.
    pub(crate) sum_ms: f64,
}

/// Writes by operation type: the `operation_type` column's `create`, `update` and `delete`,
/// and `write` for any other type. Serialized as those four keys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub(crate) struct WriteCounts<N> {
    pub(crate) create: N,
    pub(crate) update: N,
    pub(crate) delete: N,
    pub(crate) write: N,
}

impl<N: Copy + AddAssign + Add<Output = N>> WriteCounts<N> {
    /// Adds `n` writes of operation type `op`.
    pub(crate) fn add(&mut self, op: &str, n: N) {
        *match op {
            "create" => &mut self.create,
            "update" => &mut self.update,
            "delete" => &mut self.delete,
            _ => &mut self.write,
        } += n;
    }

    /// (operation type, count) of each type.
    pub(crate) fn by_type(&self) -> [(&'static str, N); 4] {
        [
            ("create", self.create),
            ("update", self.update),
            ("delete", self.delete),
            ("write", self.write),
        ]
    }

    /// Writes of every type.
    pub(crate) fn total(&self) -> N {
        self.create + self.update + self.delete + self.write
    }
}

/// The counts of one per-tool cell.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct CallCell {
    pub(crate) counts: CallCounts<i64>,
    pub(crate) writes: WriteCounts<i64>,
    pub(crate) latency: Latency,
}

impl CallCell {
    /// Counts one call (`sign` −1 takes it out).
    pub(crate) fn add_call(&mut self, call: &CountedCall<'_>, sign: i64) {
        let c = &mut self.counts;
        c.calls += sign;
        c.errors += sign * i64::from(call.status != "success");
        c.rate_limited += sign * i64::from(call.error_code == Some(error_code::RATE_LIMITED));
        c.auth_failures += sign
            * i64::from(matches!(
                call.error_code,
                Some(error_code::UNAUTHORIZED | error_code::FORBIDDEN)
            ));
        c.sum_ms += sign as f64 * call.duration_ms;
        if let Some(op) = call.operation_type {
            self.writes.add(op, sign);
        }
        self.latency
            .add_bucket(latency_bucket(call.duration_ms), sign);
    }
}

/// What the rollup needs of a stored row.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CountedCall<'a> {
    /// Unix seconds of the call's start (rounded down, as SQLite's `unixepoch` does).
    pub(crate) second: i64,
    pub(crate) tool_name: &'a str,
    pub(crate) user: &'a str,
    pub(crate) status: &'a str,
    pub(crate) duration_ms: f64,
    pub(crate) error_code: Option<&'a str>,
    pub(crate) operation_type: Option<&'a str>,
}

/// Unix seconds of a stored timestamp (RFC 3339), rounded down.
pub(crate) fn second_of(timestamp: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(timestamp)
        .ok()
        .map(|t| t.timestamp())
}

/// Changes to the rollup, gathered in memory over a transaction and applied at its end.
///
/// Keyed by tool (or user) first, each with its few cells (one per grain for calls of the same
/// hour): counting a call looks its name up by `&str` and allocates only for a name new to the
/// transaction. This runs on the writer thread, once per inserted row.
#[derive(Debug, Default)]
pub(crate) struct Delta {
    calls: HashMap<String, Cells<CallCell>>,
    /// (calls, errors) per user cell.
    users: HashMap<String, Cells<(i64, i64)>>,
}

/// The cells of one tool or user: ((grain, start), counts).
type Cells<V> = Vec<((i64, i64), V)>;

/// The cell of `(grain, start)` among `cells`, added when absent.
fn cell<V: Default>(cells: &mut Cells<V>, key: (i64, i64)) -> &mut V {
    let at = match cells.iter().position(|(k, _)| *k == key) {
        Some(at) => at,
        None => {
            cells.push((key, V::default()));
            cells.len() - 1
        }
    };
    &mut cells[at].1
}

/// The cells of `name` in `map`, added when absent.
fn cells_of<'m, V>(map: &'m mut HashMap<String, Cells<V>>, name: &str) -> &'m mut Cells<V> {
    if !map.contains_key(name) {
        map.insert(name.to_owned(), Vec::new());
    }
    map.get_mut(name).expect("inserted above")
}

impl Delta {
    /// Counts one call into every grain (`sign` −1 takes it out).
    pub(crate) fn add(&mut self, call: &CountedCall<'_>, sign: i64) {
        let cells = cells_of(&mut self.calls, call.tool_name);
        for &g in CALL_GRAINS {
            let t = call.second.div_euclid(g) * g;
            cell(cells, (g, t)).add_call(call, sign);
        }
        let cells = cells_of(&mut self.users, call.user);
        for &g in USER_GRAINS {
            let t = call.second.div_euclid(g) * g;
            let e: &mut (i64, i64) = cell(cells, (g, t));
            e.0 += sign;
            e.1 += sign * i64::from(call.status != "success");
        }
    }

    /// The per-tool cells: ((grain, start, tool), counts).
    pub(crate) fn calls(&self) -> impl Iterator<Item = ((i64, i64, &str), &CallCell)> {
        self.calls.iter().flat_map(|(tool, cells)| {
            cells
                .iter()
                .map(move |((g, t), c)| ((*g, *t, tool.as_str()), c))
        })
    }

    /// The per-user cells: ((grain, start, user), (calls, errors)).
    fn users(&self) -> impl Iterator<Item = ((i64, i64, &str), &(i64, i64))> {
        self.users.iter().flat_map(|(user, cells)| {
            cells
                .iter()
                .map(move |((g, t), c)| ((*g, *t, user.as_str()), c))
        })
    }

    /// Whether nothing was counted.
    pub(crate) fn is_empty(&self) -> bool {
        self.calls.is_empty() && self.users.is_empty()
    }

    /// Applies the changes on `conn` (inside the caller's transaction); cells left without
    /// calls are removed.
    pub(crate) fn apply(&self, conn: &Connection) -> rusqlite::Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        let mut read = conn.prepare_cached(
            "SELECT latency FROM console_rollup_calls WHERE grain = ?1 AND t = ?2 \
             AND tool_name = ?3",
        )?;
        let mut upsert = conn.prepare_cached(
            "INSERT INTO console_rollup_calls VALUES \
             (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) \
             ON CONFLICT DO UPDATE SET calls = calls + excluded.calls, \
             errors = errors + excluded.errors, rate_limited = rate_limited + excluded.rate_limited, \
             auth_failures = auth_failures + excluded.auth_failures, \
             sum_ms = sum_ms + excluded.sum_ms, creates = creates + excluded.creates, \
             updates = updates + excluded.updates, deletes = deletes + excluded.deletes, \
             other_writes = other_writes + excluded.other_writes, latency = excluded.latency",
        )?;
        let mut emptied = false;
        for ((g, t, tool), c) in self.calls() {
            let old: Option<Vec<u8>> = read
                .query_row(params![g, t, tool], |r| r.get(0))
                .optional()?;
            let mut latency = old.map(|b| Latency::decode(&b)).unwrap_or_default();
            latency.merge(&c.latency);
            upsert.execute(params![
                g,
                t,
                tool,
                c.counts.calls,
                c.counts.errors,
                c.counts.rate_limited,
                c.counts.auth_failures,
                c.counts.sum_ms,
                c.writes.create,
                c.writes.update,
                c.writes.delete,
                c.writes.write,
                latency.encode(),
            ])?;
            emptied |= c.counts.calls < 0;
        }
        let mut upsert = conn.prepare_cached(
            "INSERT INTO console_rollup_users VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT DO UPDATE SET calls = calls + excluded.calls, \
             errors = errors + excluded.errors",
        )?;
        for ((g, t, user), (calls, errors)) in self.users() {
            upsert.execute(params![g, t, user, calls, errors])?;
            emptied |= *calls < 0;
        }
        if emptied {
            conn.execute_batch(
                "DELETE FROM console_rollup_calls WHERE calls <= 0; \
                 DELETE FROM console_rollup_users WHERE calls <= 0;",
            )?;
        }
        Ok(())
    }
}

/// Whether the store at `conn` has the rollup (a store no writer of this build has opened
/// does not; the overview then aggregates the rows).
pub(crate) fn present(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT COUNT(*) = 2 FROM sqlite_master WHERE type = 'table' AND name IN (?1, ?2)",
        params![CALLS_TABLE, USERS_TABLE],
        |r| r.get(0),
    )
}

/// Counts the rows `WHERE {filter}` (bound to `args`) into `delta` with `sign`.
pub(crate) fn count_rows(
    conn: &Connection,
    filter: &str,
    args: impl rusqlite::Params,
    sign: i64,
    delta: &mut Delta,
) -> rusqlite::Result<u64> {
    let mut stmt = conn.prepare(&format!(
        "SELECT timestamp, tool_name, user, status, duration_ms, error_code, operation_type \
         FROM mcp_logs WHERE {filter}"
    ))?;
    let mut rows = stmt.query(args)?;
    let mut n = 0;
    while let Some(r) = rows.next()? {
        let ts: &str = r.get_ref(0)?.as_str()?;
        let Some(second) = second_of(ts) else {
            continue;
        };
        let tool_name = r.get_ref(1)?.as_str()?.to_owned();
        let user = r.get_ref(2)?.as_str()?.to_owned();
        let status = r.get_ref(3)?.as_str()?.to_owned();
        let error_code: Option<String> = r.get(5)?;
        let operation_type: Option<String> = r.get(6)?;
        delta.add(
            &CountedCall {
                second,
                tool_name: &tool_name,
                user: &user,
                status: &status,
                duration_ms: r.get(4)?,
                error_code: error_code.as_deref(),
                operation_type: operation_type.as_deref(),
            },
            sign,
        );
        n += 1;
    }
    Ok(n)
}

/// Creates the rollup of a store that lacks it and counts every row into it, in one
/// transaction (a store from an earlier build, on the first open by a writer of this one).
pub(crate) fn ensure(conn: &Connection) -> rusqlite::Result<()> {
    if present(conn)? {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let built = (|| {
        // Another writer may have built it meanwhile.
        if present(conn)? {
            return Ok(());
        }
        conn.execute_batch(SCHEMA)?;
        let mut delta = Delta::default();
        count_rows(conn, "1", [], 1, &mut delta)?;
        delta.apply(conn)
    })();
    match built {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// The rollup's tables in a new store's schema.
pub(crate) fn schema() -> &'static str {
    SCHEMA
}

/// The calls the rollup counts (its hourly cells), to hold against `COUNT(*)` of the rows.
pub(crate) fn counted_calls(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    let calls = conn.query_row(
        "SELECT COALESCE(SUM(calls), 0) FROM console_rollup_calls WHERE grain = ?1",
        [CALL_GRAINS[0]],
        |r| r.get(0),
    )?;
    let users = conn.query_row(
        "SELECT COALESCE(SUM(calls), 0) FROM console_rollup_users WHERE grain = ?1",
        [USER_GRAINS[0]],
        |r| r.get(0),
    )?;
    Ok((calls, users))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_bound_is_at_or_just_above_its_durations() {
        for ms in [
            0.02,
            0.5,
            1.0,
            3.7,
            19.0,
            150.0,
            199.9,
            2500.0,
            86_400_000.0,
        ] {
            let up = bucket_upper_ms(latency_bucket(ms));
            assert!(up >= ms, "{ms} → {up}");
            assert!(up <= ms * 1.0444, "{ms} → {up}");
        }
        assert_eq!(latency_bucket(0.0), 0);
        assert_eq!(latency_bucket(f64::NAN), 0);
        assert_eq!(latency_bucket(f64::INFINITY), LAST_BUCKET);
    }

    #[test]
    fn a_histogram_round_trips_and_finds_the_rank() {
        let mut c = CallCell::default();
        for ms in 1..=100 {
            let call = CountedCall {
                second: 0,
                tool_name: "t",
                user: "u",
                status: "success",
                duration_ms: f64::from(ms),
                error_code: None,
                operation_type: None,
            };
            c.add_call(&call, 1);
        }
        let l = Latency::decode(&c.latency.encode());
        assert_eq!(l, c.latency);
        let p95 = l.rank_upper_ms(95).unwrap();
        assert!((95.0..=95.0 * 1.045).contains(&p95), "{p95}");
        assert_eq!(l.rank_upper_ms(101), None);
    }
}
