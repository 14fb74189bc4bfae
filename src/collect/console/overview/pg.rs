//! The overview from the PostgreSQL store, over every chain (every replica) of the shared table.
//!
//! There is no rollup there: the figures are SQL aggregates over the rows in range, read over
//! the time index in one repeatable-read snapshot, as [`Tally`] cells (one per bucket and
//! tool) and per-user counts, so that both stores share every definition. One scan gives both
//! (two grouping sets, hashed in one pass), each cell with its latency histogram (the rollup's
//! buckets); the p95s are the exact nearest ranks
//! (`percentile_disc(0.95)`, which takes the `ceil(0.95 n)`-th value) up to
//! [`EXACT_P95_CALLS`] calls, else the histograms' estimates, as on SQLite.

use super::{EXACT_P95_CALLS, Histograms, Overview, P95s, Range, Tally};
use crate::audit::AuditError;
use crate::audit::pg::PgTarget;
use crate::audit::rollup::{CallCell, Latency};
use crate::record::error_code;
use std::collections::BTreeMap;
use tokio_postgres::{Client, Row};

/// The bucket of a row: whole seconds since the range's origin (`$1`), divided by the bucket
/// width (`$2`); never negative, since only rows from the range's start on are read.
/// (`date_part` is a float; `extract` would be a numeric, several times slower per row.)
const BUCKET: &str = "(floor(date_part('epoch', \"timestamp\"))::bigint - $1) / $2";

/// The latency histogram bucket of a row, as `crate::audit::rollup::latency_bucket` computes
/// it (`ceil(log2(ms / 0.01) × 16)`, 0 up to 0.01 ms, at most 1023), up to floating-point
/// rounding at a bucket's bound. Arithmetic per row: a search in an array of the bounds
/// (`width_bucket`) costs several times more.
const LATENCY_BUCKET: &str = "CASE WHEN duration_ms > 0.01 \
     THEN least(ceil(ln(duration_ms / 0.01) * (16 / ln(2))), 1023)::int ELSE 0 END";

/// The overview of `range` over every chain.
pub(crate) async fn from_store(
    client: &mut Client,
    t: &PgTarget,
    range: Range,
) -> Result<Overview, AuditError> {
    let err = |e| t.error("reading the overview", e);
    // One snapshot for every statement, as one read transaction on SQLite.
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(err)?;
    let sql = format!(
        "SELECT GROUPING(\"user\"), b, tool_name, l, \"user\", count(*), \
         count(*) FILTER (WHERE status <> 'success'), coalesce(sum(duration_ms), 0), \
         count(*) FILTER (WHERE error_code = '{rl}'), \
         count(*) FILTER (WHERE error_code IN ('{e401}', '{e403}')), \
         count(*) FILTER (WHERE operation_type = 'create'), \
         count(*) FILTER (WHERE operation_type = 'update'), \
         count(*) FILTER (WHERE operation_type = 'delete'), \
         count(*) FILTER (WHERE operation_type NOT IN ('create', 'update', 'delete')) \
         FROM (SELECT {BUCKET} AS b, tool_name, \
         {LATENCY_BUCKET} AS l, \"user\", status, \
         duration_ms, error_code, operation_type FROM mcp_logs \
         WHERE \"timestamp\" >= $3 AND \"timestamp\" < $4) s \
         GROUP BY GROUPING SETS ((b, tool_name, l), (\"user\"))",
        rl = error_code::RATE_LIMITED,
        e401 = error_code::UNAUTHORIZED,
        e403 = error_code::FORBIDDEN,
    );
    let rows = tx
        .query(
            sql.as_str(),
            &[&range.origin, &range.bucket, &range.from, &range.to],
        )
        .await
        .map_err(err)?;
    let mut tally = Tally::new(range);
    let mut cells: BTreeMap<(i64, String), CallCell> = BTreeMap::new();
    for r in &rows {
        match r.get::<_, i32>(0) {
            0 => tally.user(r.get(4), count(r, 5), count(r, 6)),
            _ => add(
                cells.entry((r.get(1), r.get(2))).or_default(),
                r.get::<_, i32>(3),
                r,
            ),
        }
    }
    let mut hist = Histograms::default();
    for ((b, tool), cell) in &cells {
        tally.cell(range.origin + b * range.bucket, tool, cell, &mut hist);
    }
    let estimated = tally.totals.calls > EXACT_P95_CALLS;
    let p95 = match (estimated, tally.totals.calls) {
        (true, _) => hist.p95s(&tally),
        // No calls, no percentiles (the query's grand total would be NULL).
        (false, 0) => P95s::default(),
        (false, _) => exact_p95s(&tx, &range).await.map_err(err)?,
    };
    tx.commit().await.map_err(err)?;
    let mut o = tally.finish("audit", None, p95);
    o.p95_estimated = estimated;
    Ok(o)
}

/// Column `i`, a count.
fn count(r: &Row, i: usize) -> u64 {
    r.get::<_, i64>(i).max(0) as u64
}

/// Adds the calls of one (bucket, tool, latency bucket) group to its cell.
fn add(cell: &mut CallCell, latency: i32, r: &Row) {
    let n: i64 = r.get(5);
    let c = &mut cell.counts;
    c.calls += n;
    c.errors += r.get::<_, i64>(6);
    c.sum_ms += r.get::<_, f64>(7);
    c.rate_limited += r.get::<_, i64>(8);
    c.auth_failures += r.get::<_, i64>(9);
    let w = &mut cell.writes;
    w.create += r.get::<_, i64>(10);
    w.update += r.get::<_, i64>(11);
    w.delete += r.get::<_, i64>(12);
    w.write += r.get::<_, i64>(13);
    let mut l = Latency::default();
    l.0.insert(latency.clamp(0, 1023) as u16, n);
    cell.latency.merge(&l);
}

/// The exact nearest-rank p95s per bucket, per tool and overall, in one statement.
async fn exact_p95s(
    tx: &tokio_postgres::Transaction<'_>,
    range: &Range,
) -> Result<P95s, tokio_postgres::Error> {
    let sql = format!(
        "SELECT GROUPING(b, tool_name), b, tool_name, \
         percentile_disc(0.95) WITHIN GROUP (ORDER BY duration_ms) \
         FROM (SELECT {BUCKET} AS b, tool_name, duration_ms FROM mcp_logs \
         WHERE \"timestamp\" >= $3 AND \"timestamp\" < $4) s \
         GROUP BY GROUPING SETS ((b), (tool_name), ())"
    );
    let rows = tx
        .query(
            sql.as_str(),
            &[&range.origin, &range.bucket, &range.from, &range.to],
        )
        .await?;
    let mut p = P95s::default();
    for r in rows {
        // NULL where a group has no durations at all.
        let Some(v) = r.get::<_, Option<f64>>(3) else {
            continue;
        };
        match r.get::<_, i32>(0) {
            1 => {
                let b = r.get::<_, i64>(1).clamp(0, range.buckets() as i64 - 1);
                p.buckets.insert(b as usize, v);
            }
            2 => {
                p.tools.insert(r.get(2), v);
            }
            _ => p.total = Some(v),
        }
    }
    Ok(p)
}
