//! Retention: rows recorded before a cutoff leave the store as one whole prefix of the chain,
//! and only through a signed retention checkpoint that names the last pruned row and its hash.
//! The first remaining row links to that hash, so `audit verify` still passes, and the delete
//! trigger lets through only rows that such a checkpoint covers.

use super::chain;
use super::error::AuditError;
use super::sign::{AuditKey, Checkpoint, CheckpointKind};
use super::store;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;

/// The default retention: 90 days.
pub(crate) const DEFAULT_RETENTION: &str = "90d";

/// What pruning did (or, on a dry run, would do).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PruneOutcome {
    /// Rows removed (or that would be removed).
    pub rows: u64,
    /// The id range removed, inclusive; `None` when nothing is old enough.
    pub ids: Option<(i64, i64)>,
    /// The oldest and newest `timestamp` among them.
    pub(crate) timestamps: Option<(String, String)>,
    /// The retention checkpoint written (`None` on a dry run or when nothing was pruned).
    pub checkpoint_seq: Option<i64>,
}

impl PruneOutcome {
    /// Nothing pruned.
    fn none() -> Self {
        PruneOutcome {
            rows: 0,
            ids: None,
            timestamps: None,
            checkpoint_seq: None,
        }
    }
}

/// Who signs a retention checkpoint: the key and the chain id it is bound to.
pub(crate) struct Signer<'a> {
    pub(crate) key: &'a AuditKey,
    pub(crate) chain_id: &'a str,
}

/// Prunes the rows recorded before `cutoff` on `conn`, in one transaction that first writes
/// the signed retention checkpoint; without a signer (a dry run), only reports what would go.
pub(crate) fn prune_with(
    conn: &Connection,
    path: &Path,
    signer: Option<Signer<'_>>,
    cutoff: DateTime<Utc>,
) -> Result<PruneOutcome, AuditError> {
    let sql = |context| move |e| AuditError::sqlite(path, context, e);
    let dry_run = signer.is_none();
    if !dry_run {
        conn.execute_batch("BEGIN IMMEDIATE")
            .map_err(sql("starting the prune transaction"))?;
    }
    let result = plan_and_prune(conn, signer, cutoff).map_err(sql("pruning"));
    if !dry_run {
        let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
        conn.execute_batch(end)
            .map_err(sql("committing the prune"))?;
    }
    result
}

fn plan_and_prune(
    conn: &Connection,
    signer: Option<Signer<'_>>,
    cutoff: DateTime<Utc>,
) -> rusqlite::Result<PruneOutcome> {
    let cutoff = store::format_time(cutoff);
    // Rows are recorded in id order, so "recorded before the cutoff" is a prefix of the chain:
    // everything before the first row recorded at or after it.
    let first: Option<i64> = conn.query_row("SELECT MIN(id) FROM mcp_logs", [], |r| r.get(0))?;
    let Some(first) = first else {
        return Ok(PruneOutcome::none());
    };
    let keep_from: Option<i64> = conn
        .query_row(
            "SELECT id FROM mcp_logs WHERE recorded_at >= ?1 ORDER BY id LIMIT 1",
            [&cutoff],
            |r| r.get(0),
        )
        .optional()?;
    let last = match keep_from {
        Some(k) => k - 1,
        None => conn.query_row("SELECT MAX(id) FROM mcp_logs", [], |r| r.get(0))?,
    };
    if last < first {
        return Ok(PruneOutcome::none());
    }
    let (rows, oldest, newest): (i64, String, String) = conn.query_row(
        "SELECT COUNT(*), MIN(timestamp), MAX(timestamp) FROM mcp_logs WHERE id <= ?1",
        [last],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let mut outcome = PruneOutcome {
        rows: rows.max(0) as u64,
        ids: Some((first, last)),
        timestamps: Some((oldest, newest)),
        checkpoint_seq: None,
    };
    let Some(Signer { key, chain_id }) = signer else {
        return Ok(outcome);
    };
    let last_hash: String =
        conn.query_row("SELECT hash FROM mcp_logs WHERE id = ?1", [last], |r| {
            r.get(0)
        })?;
    let previous = store::last_checkpoint(conn)?;
    let hash = chain::from_hex(&last_hash).unwrap_or(chain::GENESIS_HASH);
    let cp = key.sign(
        chain_id,
        Checkpoint::next(previous.as_ref(), CheckpointKind::Retention, last, hash),
    );
    store::insert_checkpoint(conn, &cp)?;
    // The full-text index keeps no copy of the text (external content), so its entries are
    // removed with the values they were built from, before the rows go; the rows it does not
    // hold yet (it follows the writer in batches) are added first, so that every row removed
    // from it is one it holds.
    store::index_text(conn, 0)?;
    conn.execute(
        "INSERT INTO mcp_logs_fts (mcp_logs_fts, rowid, context, before_state, after_state) \
         SELECT 'delete', id, context, before_state, after_state FROM mcp_logs \
         WHERE id <= ?1 AND (context IS NOT NULL OR before_state IS NOT NULL \
         OR after_state IS NOT NULL)",
        params![last],
    )?;
    // The console's rollup stops counting them in the same transaction.
    if super::rollup::present(conn)? {
        let mut gone = super::rollup::Delta::default();
        super::rollup::count_rows(conn, "id <= ?1", [last], -1, &mut gone)?;
        gone.apply(conn)?;
    }
    conn.execute("DELETE FROM mcp_logs WHERE id <= ?1", [last])?;
    outcome.checkpoint_seq = Some(cp.seq);
    Ok(outcome)
}

/// Prunes the store at `path` from its own connection (the `audit prune` command), signing
/// with the key at `key_path`.
pub fn prune(
    path: &Path,
    key_path: &Path,
    cutoff: DateTime<Utc>,
    dry_run: bool,
) -> Result<PruneOutcome, AuditError> {
    if !path.exists() {
        return Err(AuditError::Missing {
            path: path.to_path_buf(),
        });
    }
    if dry_run {
        // A dry run writes and signs nothing, so it needs no key and no write access.
        return prune_with(&store::open_ro(path)?, path, None, cutoff);
    }
    let conn = store::open_rw(path, store::Durability::Full)?;
    let chain_id = store::chain_id(&conn, path)?;
    let key = AuditKey::load(key_path)?;
    let recorded = store::meta(&conn, path, "public_key")?;
    if recorded.is_some_and(|k| k != key.public_hex()) {
        return Err(AuditError::Key {
            path: key_path.to_path_buf(),
            reason: "it is not the key this database was started with".to_owned(),
        });
    }
    let signer = Signer {
        key: &key,
        chain_id: &chain_id,
    };
    prune_with(&conn, path, Some(signer), cutoff)
}
