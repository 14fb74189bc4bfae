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
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio_postgres::{IsolationLevel, Transaction};

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
    let t = PgTarget::parse(url, "--db")?;
    let mut client = t.connect().await?;
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
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
    let mut chains: Vec<(String, Option<String>)> = tx
        .query(
            "SELECT chain_id, public_key FROM audit_chains \
             UNION ALL SELECT DISTINCT chain_id, NULL FROM mcp_logs l \
             WHERE NOT EXISTS (SELECT 1 FROM audit_chains c WHERE c.chain_id = l.chain_id) \
             ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| t.error("reading the chains", e))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
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

/// Every column of [`store::COLUMNS`] and `chain_id` present with the type the writer gave it
/// (a column altered to another type would be read, and hashed, as something else).
async fn check_columns(
    tx: &Transaction<'_>,
    t: &PgTarget,
    problems: &mut Vec<Problem>,
) -> Result<(), AuditError> {
    let live: Vec<(String, String)> = tx
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = 'mcp_logs'",
            &[],
        )
        .await
        .map_err(|e| t.error("reading the columns", e))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
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
    let Signed {
        signed,
        signed_through,
        base,
        retention_seq,
        verified,
    } = check_checkpoints(cps, key, chain_id, &mut problems);

    let sql = format!(
        "SELECT {} FROM mcp_logs WHERE chain_id = $1 ORDER BY id",
        schema::row_columns()
    );
    let stream = tx
        .query_raw(sql.as_str(), [chain_id])
        .await
        .map_err(|e| t.error("reading mcp_logs", e))?;
    // Boxed, so that dropping it at the first bad row really releases it: the diagnosis
    // queries run on the same connection, which would wait behind an unread stream.
    let mut stream = Box::pin(stream);
    let mut hasher = RowHasher::new();
    let mut head = base.clone();
    let mut rows = 0u64;
    let mut first_id = None;
    let mut suspect = None;
    let mut hex = String::new();
    while let Some(row) = stream.next().await {
        let row = row.map_err(|e| t.error("reading mcp_logs", e))?;
        let owned = match Owned::read(&row) {
            Ok(o) => o,
            Err((id, column)) => {
                suspect = Some(Suspect::BadColumn { id, column });
                break;
            }
        };
        let f = owned.fields(&row);
        if f.id <= base.id {
            suspect = Some(Suspect::BelowRetention {
                id: f.id,
                base: base.id,
            });
            break;
        }
        if f.id != head.id + 1 {
            suspect = Some(Suspect::Gap {
                expected: head.id + 1,
                found: f.id,
            });
            break;
        }
        let stored_prev: &str = row.get(PREV_HASH);
        let stored_hash: &str = row.get(HASH);
        let computed = hasher.hash(&f, &chain::from_hex(stored_prev).unwrap_or([0xff; 32]));
        chain::write_hex(&mut hex, &computed);
        let self_consistent = hex == stored_hash;
        chain::write_hex(&mut hex, &head.hash);
        if !self_consistent || hex != stored_prev {
            suspect = Some(Suspect::Bad {
                id: f.id,
                stored_prev: stored_prev.to_owned(),
                self_consistent,
            });
            break;
        }
        if let Some((seq, h)) = signed.get(&f.id)
            && *h != computed
        {
            suspect = Some(Suspect::NotSigned {
                id: f.id,
                seq: *seq,
            });
            break;
        }
        rows += 1;
        first_id.get_or_insert(f.id);
        head = ChainHead {
            id: f.id,
            hash: computed,
        };
    }
    drop(stream);
    let row_problem = match suspect {
        Some(s) => Some(diagnose(tx, t, chain_id, s).await?),
        None => None,
    };
    let intact_rows = row_problem.is_none();
    problems.extend(row_problem);

    if intact_rows {
        problems.extend(truncation(&signed, &head));
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
    let (unsigned_rows, unsigned) = unsigned(&head, signed_through, &base, options.require_signed);
    problems.extend(unsigned);
    Ok(VerifyReport {
        rows,
        ids: first_id.map(|f| (f, head.id)),
        head,
        checkpoints_verified: verified,
        signed_through,
        pruned_through: retention_seq.map(|_| base.id),
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
    let sql = format!(
        "SELECT {} FROM mcp_logs WHERE chain_id = $1 AND id = $2",
        schema::row_columns()
    );
    let Some(row) = tx
        .query_opt(sql.as_str(), &[&chain_id, &id])
        .await
        .map_err(|e| t.error("diagnosing a bad row", e))?
    else {
        return Ok(false);
    };
    let Ok(owned) = Owned::read(&row) else {
        return Ok(false);
    };
    let f = RowFields {
        id: position,
        ..owned.fields(&row)
    };
    let prev = chain::from_hex(row.get(PREV_HASH)).unwrap_or([0xff; 32]);
    let hash = RowHasher::new().hash(&f, &prev);
    Ok(chain::to_hex(&hash) == row.get::<_, &str>(HASH))
}

const fn at(name: &str) -> usize {
    store::column_index(name)
}
const PREV_HASH: usize = at("prev_hash");
const HASH: usize = at("hash");

/// The parts of a row that are not borrowed text: the times as the chain hashes them.
struct Owned {
    timestamp: String,
    recorded_at: String,
    row_version: u32,
}

impl Owned {
    /// Reads what must be converted, or names the row and the column that cannot be.
    fn read(row: &tokio_postgres::Row) -> Result<Self, (i64, &'static str)> {
        let id: i64 = row.get(at("id"));
        let time = |name: &'static str| -> Result<String, (i64, &'static str)> {
            let t: DateTime<Utc> = row.try_get(at(name)).map_err(|_| (id, name))?;
            // The chain covers milliseconds; a finer time was not written by the writer.
            match t.timestamp_subsec_micros() % 1000 {
                0 => Ok(store::format_time(t)),
                _ => Err((id, name)),
            }
        };
        let row_version = match row.try_get::<_, Option<i64>>(at("row_version")) {
            Ok(None) => 1,
            Ok(Some(v)) => match u32::try_from(v) {
                Ok(v) if chain::READABLE_VERSIONS.contains(&v) => v,
                _ => return Err((id, "row_version")),
            },
            Err(_) => return Err((id, "row_version")),
        };
        Ok(Owned {
            timestamp: time("timestamp")?,
            recorded_at: time("recorded_at")?,
            row_version,
        })
    }

    fn fields<'a>(&'a self, row: &'a tokio_postgres::Row) -> RowFields<'a> {
        RowFields {
            id: row.get(at("id")),
            timestamp: &self.timestamp,
            tool_name: row.get(at("tool_name")),
            user: row.get(at("user")),
            status: row.get(at("status")),
            duration_ms: row.get(at("duration_ms")),
            error_code: row.get(at("error_code")),
            operation_type: row.get(at("operation_type")),
            resource_id: row.get(at("resource_id")),
            before_state: row.get(at("before_state")),
            after_state: row.get(at("after_state")),
            user_confirmation: row.get(at("user_confirmation")),
            context: row.get(at("context")),
            trace_id: row.get(at("trace_id")),
            span_id: row.get(at("span_id")),
            parent_span_id: row.get(at("parent_span_id")),
            mcp: row.get(at("mcp")),
            result: row.get(at("result")),
            recorded_at: &self.recorded_at,
            confirmation_outcome: row.get(at("confirmation_outcome")),
            confirmation_source: row.get(at("confirmation_source")),
            confirmation_arguments_digest: row.get(at("confirmation_arguments_digest")),
            confirmation_wait_ms: row.get(at("confirmation_wait_ms")),
            row_version: self.row_version,
        }
    }
}
