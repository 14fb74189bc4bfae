//! `audit prune --db postgres://…`: retention by whole days. The day partitions of
//! `mcp_logs` that end before the cutoff hold a prefix of every chain (each chain is recorded
//! in id order); for each chain with rows in them, a retention checkpoint signed with that
//! chain's own key names the chain's last row there and its hash, so the first remaining row
//! of the chain still links to a signed point and every chain still verifies on its own. Then
//! each of those partitions is detached concurrently (a lock that does not block inserts or
//! reads of the live table) and dropped whole: nothing is rewritten, no row is deleted one by
//! one (but for the rare row of a chain recorded after the cutoff with an id below the chain's
//! retention point, a clock set back; those are deleted, which the delete trigger allows).
//!
//! Dropping partitions needs the table's owner (the README's role set-up: not `collect`'s
//! role). An interrupted prune is finished by the next one: a checkpoint already written is not
//! written again, a partition left detaching is finalised.

use super::super::chain;
use super::super::error::AuditError;
use super::super::sign::{AuditKey, Checkpoint, CheckpointKind};
use super::schema;
use super::target::PgTarget;
use super::writer::{CHECKPOINT_LOCK, checkpoints, default_key_path, insert_checkpoint};
use chrono::{DateTime, NaiveDate, Utc};
use std::path::{Path, PathBuf};

/// Where the chains' signing keys are: a directory holding each chain's default key file
/// (`mcp-audit-<chain>.key`), or one file for the one chain that has rows to prune.
#[derive(Clone, Debug)]
pub(crate) enum ChainKeys {
    /// A directory of key files named as [`default_key_path`] names them.
    Dir(PathBuf),
    /// One key file: valid when one chain only has rows to prune.
    File(PathBuf),
}

impl ChainKeys {
    /// `path` as a directory or a file.
    pub(crate) fn at(path: &Path) -> Self {
        match path.is_dir() {
            true => ChainKeys::Dir(path.to_path_buf()),
            false => ChainKeys::File(path.to_path_buf()),
        }
    }

    fn path(&self, chain_id: &str, chains: usize) -> Result<PathBuf, AuditError> {
        match self {
            ChainKeys::Dir(dir) => Ok(dir.join(default_key_path(chain_id))),
            ChainKeys::File(f) if chains == 1 => Ok(f.clone()),
            ChainKeys::File(f) => Err(AuditError::Invalid {
                field: "--key",
                reason: format!(
                    "{} is one key file, but {chains} chains have rows to prune: pass the \
                     directory that holds every chain's key file (mcp-audit-<chain>.key)",
                    f.display()
                ),
            }),
        }
    }
}

/// What pruning did to one chain (or, on a dry run, would do).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ChainPruned {
    pub chain_id: String,
    /// Rows removed.
    pub rows: u64,
    /// The chain's last removed row: the retention point.
    pub through: i64,
    /// The oldest and newest `timestamp` among them.
    pub timestamps: (String, String),
    /// The retention checkpoint written (`None` on a dry run, or when an interrupted prune had
    /// written it already).
    pub checkpoint_seq: Option<i64>,
}

/// What pruning did (or, on a dry run, would do).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PgPruneOutcome {
    /// The day partitions dropped, oldest first.
    pub partitions: Vec<String>,
    /// Rows recorded before this went (the end of the last day dropped); `None` when no day
    /// ended before the cutoff.
    pub before: Option<DateTime<Utc>>,
    /// Each chain that had rows in those days.
    pub chains: Vec<ChainPruned>,
}

impl PgPruneOutcome {
    /// Rows removed over every chain.
    pub(crate) fn rows(&self) -> u64 {
        self.chains.iter().map(|c| c.rows).sum()
    }
}

/// The start of `day`, UTC.
fn midnight(day: NaiveDate) -> DateTime<Utc> {
    day.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc()
}

/// Prunes the store at `url`: the day partitions that end at or before `cutoff`, through a
/// retention checkpoint per chain signed with the chain's key from `keys`. `keys: None` is a
/// dry run: it reports, reads no key and changes nothing.
pub(crate) async fn prune_url(
    url: &str,
    keys: Option<&ChainKeys>,
    cutoff: DateTime<Utc>,
) -> Result<PgPruneOutcome, AuditError> {
    let t = PgTarget::parse(url, "--db")?;
    let mut client = t.connect().await?;
    let relkind: Option<String> = client
        .query_one(
            "SELECT relkind::text FROM pg_class WHERE oid = to_regclass('mcp_logs')",
            &[],
        )
        .await
        .ok()
        .map(|r| r.get(0));
    match relkind.as_deref() {
        Some("p") => {}
        Some(_) => {
            return Err(t.unusable(
                "mcp_logs was created unpartitioned by an earlier build: retention drops day \
                 partitions, which this table has none of",
            ));
        }
        None => return Err(t.unusable("it has no `mcp_logs` table: not an mcp-otel audit store")),
    }
    finish_detaching(&client, &t).await?;
    let parts: Vec<(NaiveDate, String)> = client
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'mcp_logs'::regclass",
            &[],
        )
        .await
        .map_err(|e| t.error("listing the day partitions", e))?
        .iter()
        .filter_map(|r| {
            let name: String = r.get(0);
            schema::partition_day(&name).map(|d| (d, name))
        })
        .collect();
    let mut old: Vec<(NaiveDate, String)> = parts
        .into_iter()
        .filter(|(d, _)| midnight(*d + chrono::Days::new(1)) <= cutoff)
        .collect();
    old.sort();
    let Some((last_day, _)) = old.last() else {
        return Ok(PgPruneOutcome {
            partitions: Vec::new(),
            before: None,
            chains: Vec::new(),
        });
    };
    let before = midnight(*last_day + chrono::Days::new(1));
    let mut chains: Vec<ChainPruned> = client
        .query(
            "SELECT chain_id, count(*), max(id), min(\"timestamp\"), max(\"timestamp\") \
             FROM mcp_logs WHERE recorded_at < $1 GROUP BY chain_id ORDER BY chain_id",
            &[&before],
        )
        .await
        .map_err(|e| t.error("reading the rows to prune", e))?
        .iter()
        .map(|r| ChainPruned {
            chain_id: r.get(0),
            rows: r.get::<_, i64>(1).max(0) as u64,
            through: r.get(2),
            timestamps: (
                crate::audit::store::format_time(r.get(3)),
                crate::audit::store::format_time(r.get(4)),
            ),
            checkpoint_seq: None,
        })
        .collect();
    let partitions: Vec<String> = old.into_iter().map(|(_, name)| name).collect();
    let Some(keys) = keys else {
        return Ok(PgPruneOutcome {
            partitions,
            before: Some(before),
            chains,
        });
    };
    // Every key first: a prune that cannot sign for one chain changes nothing.
    let mut signers = Vec::with_capacity(chains.len());
    for c in &chains {
        let path = keys.path(&c.chain_id, chains.len())?;
        let key = AuditKey::load(&path)?;
        let registered: Option<String> = client
            .query_opt(
                "SELECT public_key FROM audit_chains WHERE chain_id = $1",
                &[&c.chain_id],
            )
            .await
            .map_err(|e| t.error("reading the chain's key", e))?
            .map(|r| r.get(0));
        if registered.as_deref() != Some(key.public_hex().as_str()) {
            return Err(AuditError::Key {
                path,
                reason: format!(
                    "it is not the key chain {:?} was registered with",
                    c.chain_id
                ),
            });
        }
        signers.push(key);
    }
    let tx = client
        .transaction()
        .await
        .map_err(|e| t.error("starting the prune transaction", e))?;
    for (c, key) in chains.iter_mut().zip(&signers) {
        c.checkpoint_seq = sign_retention(&tx, &t, c, key, before).await?;
    }
    tx.commit()
        .await
        .map_err(|e| t.error("committing the retention checkpoints", e))?;
    for p in &partitions {
        // Not in a transaction: DETACH … CONCURRENTLY waits out the readers of the partition
        // without blocking anyone, then the detached table goes whole.
        detach_and_drop(&client, &t, p, "CONCURRENTLY", "dropping a day partition").await?;
    }
    Ok(PgPruneOutcome {
        partitions,
        before: Some(before),
        chains,
    })
}

/// Writes chain `c`'s retention checkpoint at its row `c.through` (unless one already covers
/// it), then deletes the chain's rows at or below it that were recorded after `before` (a clock
/// set back); returns the checkpoint's sequence number.
async fn sign_retention(
    tx: &tokio_postgres::Transaction<'_>,
    t: &PgTarget,
    c: &ChainPruned,
    key: &AuditKey,
    before: DateTime<Utc>,
) -> Result<Option<i64>, AuditError> {
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[&CHECKPOINT_LOCK, &c.chain_id],
    )
    .await
    .map_err(|e| t.error("locking the chain's checkpoints", e))?;
    let all = checkpoints(tx, t, &c.chain_id, false).await?;
    let last = all.iter().rev().find_map(|c| c.as_ref().ok()).cloned();
    let covered = all
        .iter()
        .flatten()
        .filter(|cp| cp.kind == CheckpointKind::Retention)
        .map(|cp| cp.row_id)
        .max()
        .unwrap_or(0);
    let mut seq = None;
    if covered < c.through {
        let hash: String = tx
            .query_one(
                "SELECT hash FROM mcp_logs WHERE chain_id = $1 AND id = $2",
                &[&c.chain_id, &c.through],
            )
            .await
            .map_err(|e| t.error("reading the retention point", e))?
            .get(0);
        let hash = chain::from_hex(&hash).ok_or_else(|| {
            t.unusable(format!(
                "chain {:?}: row {} has no valid hash; run `mcp-otel audit verify` first",
                c.chain_id, c.through
            ))
        })?;
        let cp = key.sign(
            &c.chain_id,
            Checkpoint::next(last.as_ref(), CheckpointKind::Retention, c.through, hash),
        );
        insert_checkpoint(tx, t, &c.chain_id, &cp).await?;
        seq = Some(cp.seq);
    }
    tx.execute(
        "DELETE FROM mcp_logs WHERE chain_id = $1 AND id <= $2 AND recorded_at >= $3",
        &[&c.chain_id, &c.through, &before],
    )
    .await
    .map_err(|e| t.error("removing rows below the retention point", e))?;
    Ok(seq)
}

/// Finalises and drops a day partition an interrupted prune left detaching.
async fn finish_detaching(client: &tokio_postgres::Client, t: &PgTarget) -> Result<(), AuditError> {
    let pending: Vec<String> = client
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'mcp_logs'::regclass AND i.inhdetachpending",
            &[],
        )
        .await
        .map_err(|e| t.error("listing the day partitions", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for p in pending
        .iter()
        .filter(|p| schema::partition_day(p).is_some())
    {
        detach_and_drop(client, t, p, "FINALIZE", "finishing an interrupted prune").await?;
    }
    Ok(())
}

/// `ALTER TABLE mcp_logs DETACH PARTITION p {how}`, then `DROP TABLE p`: two statements, since
/// a concurrent detach cannot run inside a transaction block (nor a multi-statement query).
async fn detach_and_drop(
    client: &tokio_postgres::Client,
    t: &PgTarget,
    partition: &str,
    how: &str,
    context: &'static str,
) -> Result<(), AuditError> {
    for sql in [
        format!("ALTER TABLE mcp_logs DETACH PARTITION {partition} {how}"),
        format!("DROP TABLE {partition}"),
    ] {
        client
            .batch_execute(&sql)
            .await
            .map_err(|e| t.error(context, e))?;
    }
    Ok(())
}
