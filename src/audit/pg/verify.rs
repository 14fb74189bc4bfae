//! `audit verify --db postgres://…`: every chain of the shared table (or `--chain ID`) checked
//! on its own, as the SQLite store's one chain is: the checkpoints (sequence, links,
//! signatures against the chain's registered key, or `--pubkey`), then the rows in id order
//! (no gap, each links to the one before, each hashes to its stored hash, each signed head is
//! the one signed), then the end (a signed checkpoint or `--expect-head` past the last row is a
//! truncation). The first bad row of each chain is named; the triggers are checked once for
//! the store. Everything is read in one repeatable-read, read-only transaction, so replicas
//! appending meanwhile do not move the ground.

use super::super::chain::{self, RowFields, RowHasher};
use super::super::error::AuditError;
use super::super::sign;
use super::super::store::{self, ChainHead};
use super::super::verify::{
    Problem, ProblemKind, Signed, VerifyOptions, VerifyReport, check_checkpoints,
    expected_head_missing, truncation, unsigned,
};
use super::schema;
use super::target::PgTarget;
use super::writer::checkpoints;
use copy::{CopyError, Fields};
use std::collections::HashMap;
use std::ops::ControlFlow;
use tokio_postgres::types::FromSql;
use tokio_postgres::{IsolationLevel, Transaction};

pub(crate) mod copy;

/// One chain's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainReport {
    pub(crate) chain_id: String,
    pub(crate) report: VerifyReport,
}

/// The outcome of verifying a PostgreSQL store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgVerifyReport {
    /// Every chain checked, by chain id.
    pub chains: Vec<ChainReport>,
    /// What concerns the store rather than a chain (the triggers).
    pub problems: Vec<Problem>,
}

impl PgVerifyReport {
    /// True when no store problem was found and every chain is intact.
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty() && self.chains.iter().all(|c| c.report.is_intact())
    }

    /// The chain `id`'s report.
    pub fn chain(&self, id: &str) -> Option<&VerifyReport> {
        self.chains
            .iter()
            .find(|c| c.chain_id == id)
            .map(|c| &c.report)
    }

    /// One line per chain, then the store's verdict.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for c in &self.chains {
            s.push_str(&format!("chain {}: {}\n", c.chain_id, c.report.summary()));
        }
        let bad = self.chains.iter().filter(|c| !c.report.is_intact()).count();
        match self.is_intact() {
            true => s.push_str(&format!("{} chain(s), all intact", self.chains.len())),
            false => s.push_str(&format!(
                "{} chain(s), {bad} NOT intact{}",
                self.chains.len(),
                match self.problems.len() {
                    0 => String::new(),
                    n => format!(", {n} store problem(s)"),
                }
            )),
        }
        s
    }
}

/// Verifies the store at `url`: every chain, or only `chain`. `options.pubkey` and
/// `options.expect_head` concern one chain, so they need `chain` when the store has several.
pub async fn verify_url(
    url: &str,
    chain: Option<&str>,
    options: &VerifyOptions,
) -> Result<PgVerifyReport, AuditError> {
    let (t, mut client) = super::review::connect(url).await?;
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(|e| t.error("starting a read transaction", e))?;
    tx.batch_execute(NO_JIT)
        .await
        .map_err(|e| t.error("starting a read transaction", e))?;
    let present: bool = tx
        .query_one("SELECT to_regclass('mcp_logs') IS NOT NULL", &[])
        .await
        .map_err(|e| t.error("reading the schema", e))?
        .get(0);
    if !present {
        return Err(t.unusable("it has no `mcp_logs` table: not an mcp-otel audit store"));
    }
    let mut problems = Vec::new();
    check_columns(&tx, &t, &mut problems).await?;
    if !problems.is_empty() {
        // The rows cannot be read as the chain hashed them: name the columns, check nothing
        // else.
        let _ = tx.commit().await;
        return Ok(PgVerifyReport {
            chains: Vec::new(),
            problems,
        });
    }
    check_triggers(&tx, &t, &mut problems).await?;
    // The chains that rows name without a registration too: their distinct ids found by one
    // probe of the primary key's index per chain (a recursive skip scan), not by reading every
    // row.
    let mut chains: Vec<(String, Option<String>)> = pairs(
        &tx,
        &t,
        "WITH RECURSIVE logged(chain_id) AS ( \
             (SELECT chain_id FROM mcp_logs ORDER BY chain_id LIMIT 1) \
             UNION ALL \
             SELECT (SELECT l.chain_id FROM mcp_logs l WHERE l.chain_id > logged.chain_id \
                     ORDER BY l.chain_id LIMIT 1) \
             FROM logged WHERE logged.chain_id IS NOT NULL) \
         SELECT chain_id, public_key FROM audit_chains \
         UNION ALL SELECT chain_id, NULL FROM logged l WHERE chain_id IS NOT NULL \
         AND NOT EXISTS (SELECT 1 FROM audit_chains c WHERE c.chain_id = l.chain_id) \
         ORDER BY 1",
        "reading the chains",
    )
    .await?;
    if let Some(only) = chain {
        chains.retain(|(id, _)| id == only);
        if chains.is_empty() {
            return Err(t.unusable(format!("there is no chain {only:?}")));
        }
    } else if chains.len() > 1 && (options.pubkey.is_some() || options.expect_head.is_some()) {
        return Err(AuditError::Invalid {
            field: "--chain",
            reason: "--pubkey and --expect-head concern one chain: name it with --chain".to_owned(),
        });
    }
    let mut reports = Vec::with_capacity(chains.len());
    for (chain_id, registered) in chains {
        let report = verify_chain(&tx, &t, &chain_id, registered.as_deref(), options).await?;
        reports.push(ChainReport { chain_id, report });
    }
    let _ = tx.commit().await;
    Ok(PgVerifyReport {
        chains: reports,
        problems,
    })
}

/// The two columns of every row `sql` selects.
async fn pairs<A, B>(
    tx: &Transaction<'_>,
    t: &PgTarget,
    sql: &str,
    context: &'static str,
) -> Result<Vec<(A, B)>, AuditError>
where
    A: for<'a> FromSql<'a>,
    B: for<'a> FromSql<'a>,
{
    let rows = tx.query(sql, &[]).await.map_err(|e| t.error(context, e))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Every column of [`store::COLUMNS`] and `chain_id` present with the type the writer gave it
/// (a column altered to another type would be read, and hashed, as something else).
async fn check_columns(
    tx: &Transaction<'_>,
    t: &PgTarget,
    problems: &mut Vec<Problem>,
) -> Result<(), AuditError> {
    let live: Vec<(String, String)> = pairs(
        tx,
        t,
        "SELECT column_name::text, data_type::text FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = 'mcp_logs'",
        "reading the columns",
    )
    .await?;
    let expected = std::iter::once(("chain_id", "text")).chain(
        store::COLUMNS
            .iter()
            .map(|c| (c.name, schema::data_type(c))),
    );
    for (name, want) in expected {
        let detail = match live.iter().find(|(n, _)| n == name) {
            None => format!("column `{name}` of mcp_logs is gone"),
            Some((_, have)) if have != want => {
                format!("column `{name}` of mcp_logs is `{have}`, not `{want}`")
            }
            Some(_) => continue,
        };
        problems.push(Problem::whole(ProblemKind::Schema, detail));
    }
    Ok(())
}

/// Each trigger of [`schema::TRIGGERS`] present and enabled, and no other (a trigger that
/// silently drops some user's inserts would censor the trail).
async fn check_triggers(
    tx: &Transaction<'_>,
    t: &PgTarget,
    problems: &mut Vec<Problem>,
) -> Result<(), AuditError> {
    let rows = tx
        .query(
            "SELECT tg.tgname::text, tg.tgrelid::regclass::text, tg.tgenabled::text \
             FROM pg_trigger tg WHERE NOT tg.tgisinternal AND tg.tgrelid IN \
             (SELECT to_regclass(n) FROM unnest(ARRAY['mcp_logs', 'audit_checkpoints', \
             'audit_chains']) AS n)",
            &[],
        )
        .await
        .map_err(|e| t.error("reading the triggers", e))?;
    let found: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    for (name, table, _) in schema::TRIGGERS {
        let detail = match found.iter().find(|(n, _, _)| n == name) {
            None => format!(
                "trigger {name} on {table} is gone: rows could be changed or deleted without an \
                 error (the chain check says whether any were)"
            ),
            Some((_, _, enabled)) if enabled == "D" => format!(
                "trigger {name} on {table} is disabled: rows could be changed or deleted without \
                 an error (the chain check says whether any were)"
            ),
            Some(_) => continue,
        };
        problems.push(Problem::whole(ProblemKind::TriggersDropped, detail));
    }
    for (name, table, _) in &found {
        if !schema::TRIGGERS.iter().any(|(n, _, _)| n == name) {
            problems.push(Problem::whole(
                ProblemKind::TriggersDropped,
                format!("the schema has a trigger {name} on {table} that mcp-otel does not create"),
            ));
        }
    }
    Ok(())
}

/// The first thing wrong in a chain's rows, before diagnosis.
enum Suspect {
    Gap {
        expected: i64,
        found: i64,
    },
    BelowRetention {
        id: i64,
        base: i64,
    },
    /// The row does not hash to its stored hash, or does not link to the row before.
    Bad {
        id: i64,
        stored_prev: String,
        self_consistent: bool,
    },
    /// A column holds what the chain cannot encode.
    BadColumn {
        id: i64,
        column: &'static str,
    },
    /// The row is not the one signed checkpoint `seq` recorded.
    NotSigned {
        id: i64,
        seq: i64,
    },
}

async fn verify_chain(
    tx: &Transaction<'_>,
    t: &PgTarget,
    chain_id: &str,
    registered: Option<&str>,
    options: &VerifyOptions,
) -> Result<VerifyReport, AuditError> {
    let mut problems = Vec::new();
    let key = match (&options.pubkey, registered) {
        (Some(k), _) => Some((*k, true)),
        (None, Some(hex)) => Some((sign::parse_public_key(hex)?, false)),
        (None, None) => {
            problems.push(Problem::whole(
                ProblemKind::BadSignature,
                format!(
                    "chain {chain_id:?} is not registered in audit_chains: no key vouches for it"
                ),
            ));
            None
        }
    };
    let cps = checkpoints(tx, t, chain_id, false).await?;
    let signed = check_checkpoints(cps, key, chain_id, &mut problems);
    let base = signed.base.clone();
    let parallel_from_rows = options.parallel_from_rows.unwrap_or(PARALLEL_FROM_ROWS);
    let scan = scan_rows(tx, t, chain_id, &signed, parallel_from_rows).await?;
    let head = scan.last.clone().unwrap_or_else(|| base.clone());
    let rows = scan.rows;
    let first_id = scan.first.filter(|_| rows > 0).map(|(id, _)| id);
    let row_problem = match scan.bad {
        Some(s) => Some(diagnose(tx, t, chain_id, s).await?),
        None => None,
    };
    let intact_rows = row_problem.is_none();
    problems.extend(row_problem);

    if intact_rows {
        problems.extend(truncation(&signed.signed, &head));
        if let Some(expected) = options.expect_head {
            let found = expected == base.hash
                || tx
                    .query_opt(
                        "SELECT 1 FROM mcp_logs WHERE chain_id = $1 AND hash = $2",
                        &[&chain_id, &chain::to_hex(&expected)],
                    )
                    .await
                    .map_err(|e| t.error("looking up --expect-head", e))?
                    .is_some();
            if !found {
                problems.push(expected_head_missing(&expected, &head));
            }
        }
    }
    let (unsigned_rows, unsigned) =
        unsigned(&head, signed.signed_through, &base, options.require_signed);
    problems.extend(unsigned);
    Ok(VerifyReport {
        rows,
        ids: first_id.map(|f| (f, head.id)),
        head,
        checkpoints_verified: signed.verified,
        signed_through: signed.signed_through,
        pruned_through: signed.retention_seq.map(|_| base.id),
        unsigned_rows,
        public_key: key.map(|(k, given)| (sign::public_key_hex(&k), given)),
        problems,
    })
}

/// Tells a reordered row (it links to, and hashes as, another position of the chain) from a
/// changed one.
async fn diagnose(
    tx: &Transaction<'_>,
    t: &PgTarget,
    chain_id: &str,
    suspect: Suspect,
) -> Result<Problem, AuditError> {
    let problem = |kind, row, detail| Problem {
        kind,
        row: Some(row),
        detail,
    };
    Ok(match suspect {
        Suspect::Gap { expected, found } => problem(
            ProblemKind::Missing,
            expected,
            format!(
                "rows {expected}..{} are missing (the next row present is {found})",
                found - 1
            ),
        ),
        Suspect::BelowRetention { id, base } => problem(
            ProblemKind::Changed,
            id,
            format!("the row is at or below the retention point (row {base}) yet present"),
        ),
        Suspect::BadColumn { id, column } => problem(
            ProblemKind::Changed,
            id,
            format!("column `{column}` holds a value the chain cannot have written"),
        ),
        Suspect::NotSigned { id, seq } => problem(
            ProblemKind::Changed,
            id,
            format!(
                "the row is not the one signed checkpoint #{seq} recorded: the chain was \
                 rewritten up to here"
            ),
        ),
        Suspect::Bad {
            id,
            stored_prev,
            self_consistent,
        } => {
            // The row it links to, wherever that is now.
            let before: Option<i64> = tx
                .query_opt(
                    "SELECT id FROM mcp_logs WHERE chain_id = $1 AND hash = $2 LIMIT 1",
                    &[&chain_id, &stored_prev],
                )
                .await
                .map_err(|e| t.error("diagnosing a bad row", e))?
                .map(|r| r.get(0));
            let written_at = before.map(|b| b + 1).filter(|p| *p != id);
            let moved = match written_at {
                Some(p) => hashes_at(tx, t, chain_id, id, p).await?,
                None => false,
            };
            match (moved, written_at) {
                (true, Some(p)) => problem(
                    ProblemKind::Reordered,
                    id,
                    format!("the row was written at position {p}: rows were swapped or moved"),
                ),
                _ if self_consistent => problem(
                    ProblemKind::Changed,
                    id,
                    "the row does not link to the row before it: the row before was changed \
                     or removed, or this row's hash was recomputed"
                        .to_owned(),
                ),
                _ => problem(
                    ProblemKind::Changed,
                    id,
                    "the row's contents no longer match its hash".to_owned(),
                ),
            }
        }
    })
}

/// Whether the row at `id` hashes to its stored hash when numbered `position`.
async fn hashes_at(
    tx: &Transaction<'_>,
    t: &PgTarget,
    chain_id: &str,
    id: i64,
    position: i64,
) -> Result<bool, AuditError> {
    let mut times = Times::default();
    let mut moved = false;
    for_rows(tx.client(), t, &copy_rows_sql(chain_id, id, id), |f| {
        let (Ok(row), Some(prev)) = (
            fields(f, &mut times),
            f[PREV_HASH].and_then(copy::text).and_then(chain::from_hex),
        ) else {
            return ControlFlow::Break(());
        };
        let hash = RowHasher::new().hash(
            &RowFields {
                id: position,
                ..row
            },
            &prev,
        );
        moved = f[HASH] == Some(&hex64(&hash)[..]);
        ControlFlow::Break(())
    })
    .await?;
    Ok(moved)
}

const fn at(name: &str) -> usize {
    store::column_index(name)
}
const PREV_HASH: usize = at("prev_hash");
const HASH: usize = at("hash");
const ID: usize = at("id");
/// The fields of a chained row: [`store::COLUMNS`].
const N: usize = store::COLUMNS.len();

/// For the rest of a verify's transaction: no JIT compilation. The scans are one plan node each
/// and spend their time rendering values, which JIT does not speed up; compiling (and loading
/// LLVM into each backend) would only add to it.
const NO_JIT: &str = "SET LOCAL jit = off";

/// Below this many rows a second connection costs more than it saves.
const PARALLEL_FROM_ROWS: u64 = 200_000;

/// `s` as an SQL string literal, whatever `standard_conforming_strings` says: `COPY` takes no
/// parameters.
pub(crate) fn literal(s: &str) -> String {
    format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// The binary `COPY` of the rows `lo..=hi` of `chain_id`, every column of [`store::COLUMNS`], in
/// id order.
fn copy_rows_sql(chain_id: &str, lo: i64, hi: i64) -> String {
    format!(
        "COPY (SELECT {} FROM mcp_logs WHERE chain_id = {} AND id BETWEEN {lo} AND {hi} \
         ORDER BY id) TO STDOUT (FORMAT binary)",
        schema::row_columns(),
        literal(chain_id)
    )
}

/// Runs the binary `COPY` `sql` of [`store::COLUMNS`] on `client`, handing each row to `row`
/// until it breaks.
async fn for_rows(
    client: &tokio_postgres::Client,
    t: &PgTarget,
    sql: &str,
    row: impl FnMut(&Fields<'_, N>) -> ControlFlow<()>,
) -> Result<(), AuditError> {
    let stream = client
        .copy_out(sql)
        .await
        .map_err(|e| t.error("reading mcp_logs", e))?;
    match copy::for_each(stream, row).await {
        Ok(_) => Ok(()),
        Err(CopyError::Postgres(e)) => Err(t.error("reading mcp_logs", e)),
        Err(CopyError::Malformed(what)) => Err(t.unusable(format!(
            "the server's binary COPY of mcp_logs cannot be read: {what}"
        ))),
    }
}

/// The times of a row as the chain hashes them (RFC 3339 text), in buffers reused row after
/// row.
#[derive(Default)]
struct Times {
    timestamp: Time,
    recorded_at: Time,
}

/// A time as text, and the microseconds it was written from: rows written together share
/// their times, so most rows need no formatting.
#[derive(Default)]
struct Time {
    micros: Option<i64>,
    text: String,
}

impl Time {
    /// The text of `micros`; `false` when it has no such text.
    fn set(&mut self, micros: i64) -> bool {
        if self.micros != Some(micros) {
            self.micros = None;
            if !copy::write_time(&mut self.text, micros) {
                return false;
            }
            self.micros = Some(micros);
        }
        true
    }
}

/// Reads one row into the chain's input, or names the column that holds what the writer cannot
/// have written (a time finer than the chain's milliseconds, a row version it does not know, a
/// v1 row with confirmation values its hash does not cover).
fn fields<'a>(f: &Fields<'a, N>, times: &'a mut Times) -> Result<RowFields<'a>, &'static str> {
    /// The index of the column `name`, computed once, at compile time.
    macro_rules! col {
        ($name:literal) => {{
            const I: usize = at($name);
            I
        }};
    }
    /// Column `i`, `None` when NULL, or the column's name when `read` cannot read it.
    fn opt<'a, T>(
        f: &Fields<'a, N>,
        i: usize,
        read: impl Fn(&'a [u8]) -> Option<T>,
    ) -> Result<Option<T>, &'static str> {
        let name = store::COLUMNS[i].name;
        f[i].map(|b| read(b).ok_or(name)).transpose()
    }
    let opt_text = |i| opt(f, i, copy::text);
    let text = |i| opt_text(i)?.ok_or(store::COLUMNS[i].name);
    let real = |i| opt(f, i, copy::float8);
    let time = |i: usize, out: &mut Time| match f[i].and_then(copy::micros) {
        Some(m) if m.rem_euclid(1000) == 0 && out.set(m) => Ok(()),
        _ => Err(store::COLUMNS[i].name),
    };
    time(col!("timestamp"), &mut times.timestamp)?;
    time(col!("recorded_at"), &mut times.recorded_at)?;
    let row_version = opt(f, col!("row_version"), |b| {
        u32::try_from(copy::int8(b)?)
            .ok()
            .filter(|v| chain::READABLE_VERSIONS.contains(v))
    })?
    // NULL: a row written before chain v2, which is a v1 row.
    .unwrap_or(1);
    let f = RowFields {
        id: opt(f, col!("id"), copy::int8)?.ok_or("id")?,
        timestamp: &times.timestamp.text,
        tool_name: text(col!("tool_name"))?,
        user: text(col!("user"))?,
        status: text(col!("status"))?,
        duration_ms: real(col!("duration_ms"))?.ok_or("duration_ms")?,
        error_code: opt_text(col!("error_code"))?,
        operation_type: opt_text(col!("operation_type"))?,
        resource_id: opt_text(col!("resource_id"))?,
        before_state: opt_text(col!("before_state"))?,
        after_state: opt_text(col!("after_state"))?,
        user_confirmation: opt(f, col!("user_confirmation"), copy::boolean)?,
        context: opt_text(col!("context"))?,
        trace_id: text(col!("trace_id"))?,
        span_id: text(col!("span_id"))?,
        parent_span_id: opt_text(col!("parent_span_id"))?,
        mcp: opt_text(col!("mcp"))?,
        result: opt_text(col!("result"))?,
        recorded_at: &times.recorded_at.text,
        confirmation_outcome: opt_text(col!("confirmation_outcome"))?,
        confirmation_source: opt_text(col!("confirmation_source"))?,
        confirmation_arguments_digest: opt_text(col!("confirmation_arguments_digest"))?,
        confirmation_wait_ms: real(col!("confirmation_wait_ms"))?,
        row_version,
    };
    // The v1 encoding does not cover the confirmation: a v1 row that has one was changed.
    if f.row_version < 2 && f.has_v2_fields() {
        return Err("row_version");
    }
    Ok(f)
}

fn hex64(hash: &[u8; 32]) -> [u8; 64] {
    let mut out = [0u8; 64];
    crate::hex::write(&mut out, hash);
    out
}

/// What one scan of an id range of a chain found.
#[derive(Default)]
struct RangeScan {
    /// Rows that checked out.
    rows: u64,
    /// The first row's id and the `prev_hash` it stores.
    first: Option<(i64, [u8; 32])>,
    /// The last row that checked out.
    last: Option<ChainHead>,
    /// The first thing wrong.
    bad: Option<Suspect>,
}

/// Scans rows `lo..=hi` of `chain_id` on `client`, in id order. With `base`, the first row must
/// follow it; without, the first row's own `prev_hash` is taken on trust, for the caller to
/// check at the boundary.
///
/// Per row: one SHA-256, one hex encoding and two 64-byte comparisons, over fields borrowed
/// from the bytes received; stored hashes are compared as text, never decoded.
#[allow(clippy::too_many_arguments)]
async fn scan_range(
    client: &tokio_postgres::Client,
    t: &PgTarget,
    chain_id: &str,
    base: Option<&ChainHead>,
    base_id: i64,
    (lo, hi): (i64, i64),
    signed: &HashMap<i64, (i64, [u8; 32])>,
) -> Result<RangeScan, AuditError> {
    let mut hasher = RowHasher::new();
    let mut times = Times::default();
    let mut scan = RangeScan::default();
    // The previous row's id, hash, and hash as stored text.
    let mut prev: Option<(i64, [u8; 32], [u8; 64])> = base.map(|b| (b.id, b.hash, hex64(&b.hash)));
    let mut check = |f: &Fields<'_, N>| -> Result<(), Suspect> {
        let row = fields(f, &mut times).map_err(|column| Suspect::BadColumn {
            id: f[ID]
                .and_then(copy::int8)
                .unwrap_or(prev.map_or(lo, |p| p.0 + 1)),
            column,
        })?;
        let stored_prev = f[PREV_HASH].unwrap_or_default();
        let stored_hash = f[HASH].unwrap_or_default();
        if row.id <= base_id {
            return Err(Suspect::BelowRetention {
                id: row.id,
                base: base_id,
            });
        }
        let (prev_id, prev_hash, prev_hex) = match prev {
            Some(p) => p,
            None => {
                // The first row of an unanchored range: its link is the caller's to check.
                let p = copy::text(stored_prev).and_then(chain::from_hex).ok_or(
                    Suspect::BadColumn {
                        id: row.id,
                        column: "prev_hash",
                    },
                )?;
                (row.id - 1, p, hex64(&p))
            }
        };
        scan.first.get_or_insert((row.id, prev_hash));
        if row.id != prev_id + 1 {
            return Err(Suspect::Gap {
                expected: prev_id + 1,
                found: row.id,
            });
        }
        let linked = stored_prev == prev_hex;
        let hash = match linked {
            true => hasher.hash(&row, &prev_hash),
            false => copy::text(stored_prev)
                .and_then(chain::from_hex)
                .map_or([0xff; 32], |p| hasher.hash(&row, &p)),
        };
        let hex = hex64(&hash);
        let self_consistent = stored_hash == hex;
        if !linked || !self_consistent {
            return Err(Suspect::Bad {
                id: row.id,
                stored_prev: String::from_utf8_lossy(stored_prev).into_owned(),
                self_consistent,
            });
        }
        if let Some((seq, h)) = signed.get(&row.id)
            && *h != hash
        {
            return Err(Suspect::NotSigned {
                id: row.id,
                seq: *seq,
            });
        }
        prev = Some((row.id, hash, hex));
        scan.rows += 1;
        scan.last = Some(ChainHead { id: row.id, hash });
        Ok(())
    };
    let mut bad = None;
    for_rows(
        client,
        t,
        &copy_rows_sql(chain_id, lo, hi),
        |f| match check(f) {
            Ok(()) => ControlFlow::Continue(()),
            Err(s) => {
                bad = Some(s);
                ControlFlow::Break(())
            }
        },
    )
    .await?;
    scan.bad = bad;
    Ok(scan)
}

/// Scans the whole chain from the base the checkpoints established. A long chain is split in
/// two id ranges, each read over a connection of its own in `tx`'s snapshot (exported by `tx`,
/// imported by both) and hashed on a thread of its own, joined at the boundary; anything
/// suspicious is re-read in one sequential scan, so that the report names the first bad row
/// exactly.
async fn scan_rows(
    tx: &Transaction<'_>,
    t: &PgTarget,
    chain_id: &str,
    signed: &Signed,
    parallel_from_rows: u64,
) -> Result<RangeScan, AuditError> {
    let bounds: (Option<i64>, Option<i64>) = tx
        .query_one(
            "SELECT min(id), max(id) FROM mcp_logs WHERE chain_id = $1",
            &[&chain_id],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .map_err(|e| t.error("reading mcp_logs", e))?;
    let (Some(lo), Some(hi)) = bounds else {
        return Ok(RangeScan::default());
    };
    let base = &signed.base;
    if (hi - lo).max(0) as u64 >= parallel_from_rows.max(2) {
        let mid = lo + (hi - lo) / 2;
        let snapshot: String = tx
            .query_one("SELECT pg_export_snapshot()", &[])
            .await
            .map_err(|e| t.error("exporting the snapshot", e))?
            .get(0);
        let range = |from: Option<&ChainHead>, ids| RangeReader {
            target: t.clone(),
            snapshot: snapshot.clone(),
            chain_id: chain_id.to_owned(),
            base: from.cloned(),
            base_id: base.id,
            ids,
            signed: signed.signed.clone(),
        };
        let second = range(None, (mid + 1, hi)).spawn()?;
        let first = range(Some(base), (lo, mid)).spawn()?;
        // A failed half stops the other (dropping its reader does): its answer would go
        // unread.
        let first = first.finish(t).await?;
        let second = second.finish(t).await?;
        let joined = first.bad.is_none()
            && second.bad.is_none()
            && match (&first.last, second.first) {
                (Some(last), Some((id, prev))) => id == last.id + 1 && prev == last.hash,
                _ => false,
            };
        if joined {
            return Ok(RangeScan {
                rows: first.rows + second.rows,
                first: first.first,
                last: second.last,
                bad: None,
            });
        }
    }
    scan_range(
        tx.client(),
        t,
        chain_id,
        Some(base),
        base.id,
        (lo, hi),
        &signed.signed,
    )
    .await
}

/// What one reader of a split scan needs: see [`scan_range`].
struct RangeReader {
    target: PgTarget,
    /// The snapshot its connection imports.
    snapshot: String,
    chain_id: String,
    base: Option<ChainHead>,
    base_id: i64,
    ids: (i64, i64),
    signed: HashMap<i64, (i64, [u8; 32])>,
}

/// A [`RangeReader`] at work; dropping it stops the reader.
struct RunningReader(tokio::sync::oneshot::Receiver<Result<RangeScan, AuditError>>);

impl RangeReader {
    /// Starts the scan on a thread of its own, with a current-thread runtime that also drives
    /// its connection: a message from the server then wakes no other thread, and the two
    /// readers' parsing and hashing run side by side whatever else the caller's runtime does.
    fn spawn(self) -> Result<RunningReader, AuditError> {
        let (mut done, result) = tokio::sync::oneshot::channel();
        let t = self.target.clone();
        std::thread::Builder::new()
            .name("mcp-otel-verify".to_owned())
            .spawn(move || {
                let scan = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime.block_on(self.run_until_dropped(&mut done)),
                    Err(e) => Some(Err(self
                        .target
                        .unusable(format!("cannot start a reader's runtime: {e}")))),
                };
                if let Some(scan) = scan {
                    let _ = done.send(scan);
                }
            })
            .map_err(|e| t.unusable(format!("cannot start a reader thread: {e}")))?;
        Ok(RunningReader(result))
    }

    /// The scan, or `None` once the [`RunningReader`] is dropped.
    async fn run_until_dropped(
        &self,
        done: &mut tokio::sync::oneshot::Sender<Result<RangeScan, AuditError>>,
    ) -> Option<Result<RangeScan, AuditError>> {
        let scan = async {
            let t = &self.target;
            let client = t.connect().await?;
            client
                .batch_execute(&format!(
                    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT \
                     {}; {NO_JIT}",
                    literal(&self.snapshot)
                ))
                .await
                .map_err(|e| t.error("importing the snapshot", e))?;
            let base = self.base.as_ref();
            scan_range(
                &client,
                t,
                &self.chain_id,
                base,
                self.base_id,
                self.ids,
                &self.signed,
            )
            .await
        };
        tokio::select! {
            scan = scan => Some(scan),
            () = done.closed() => None,
        }
    }
}

impl RunningReader {
    async fn finish(mut self, t: &PgTarget) -> Result<RangeScan, AuditError> {
        (&mut self.0)
            .await
            .map_err(|_| t.unusable("a reader thread failed"))?
    }
}
