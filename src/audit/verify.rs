//! `audit verify`: recomputes the chain and checks the signed checkpoints and the triggers,
//! and names the first bad row and what is wrong with it: changed, missing, reordered,
//! truncated after a checkpoint, or a checkpoint with a bad signature.
//!
//! The fast path reads each row once, in id order, with no allocation per row; only when a
//! row is bad does a second look (by hash) tell a reordered row from a changed one.

use super::chain::{self, GENESIS_HASH, RowFields, RowHasher};
use super::error::AuditError;
use super::sign::{self, Checkpoint, CheckpointKind};
use super::store::{self, ChainHead};
use ed25519_dalek::VerifyingKey;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension};
use std::collections::HashMap;
use std::fmt;
use std::path::Path;

/// What `verify` checks against, beyond the database itself.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// The public key to check signatures with. Without it, the key recorded in the database
    /// is used, which proves consistency but not authenticity.
    pub pubkey: Option<VerifyingKey>,
    /// A row hash recorded earlier (for instance from a previous verify's summary): it must
    /// still be in the chain, which catches a truncation after the last checkpoint.
    pub expect_head: Option<[u8; 32]>,
    /// Split the scan over two threads from this many rows on (default 200,000).
    pub parallel_from_rows: Option<u64>,
    /// Rows after the last verified checkpoint (covered by no signature) are a failure, not
    /// only reported: for a store whose collector has stopped (its shutdown checkpoint signs
    /// everything it wrote).
    pub require_signed: bool,
    /// Also run SQLite's FTS5 integrity check of the full-text index against the chained
    /// columns (every term of every row). It needs a writable file and holds the write lock
    /// while it runs; without it, verify checks that exactly the rows with text are indexed.
    pub check_search_terms: bool,
}

/// The kinds of damage verify tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    /// A row's contents no longer match its hash (or its hash was recomputed to hide it).
    Changed,
    /// Rows are missing from the middle of the chain.
    Missing,
    /// A row sits at a position other than the one it was written at.
    Reordered,
    /// A checkpoint's signature does not verify, or checkpoints are missing from their chain.
    BadSignature,
    /// Rows that a signed checkpoint or `--expect-head` covers are gone from the end.
    Truncated,
    /// A trigger that makes the store append-only is gone or altered.
    TriggersDropped,
    /// Rows no verified signature covers, where `--require-signed` asks for all to be.
    Unsigned,
    /// The full-text index (outside the chain) does not match the chained rows: `query
    /// --text` could hide or invent results.
    SearchIndex,
    /// A table, index or view that the project does not create, or one of its own missing
    /// or altered.
    Schema,
}

impl ProblemKind {
    const ALL: [ProblemKind; 9] = [
        ProblemKind::Changed,
        ProblemKind::Missing,
        ProblemKind::Reordered,
        ProblemKind::BadSignature,
        ProblemKind::Truncated,
        ProblemKind::TriggersDropped,
        ProblemKind::Unsigned,
        ProblemKind::SearchIndex,
        ProblemKind::Schema,
    ];

    /// The kind [`ProblemKind::as_str`] names.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ProblemKind::Changed => "changed",
            ProblemKind::Missing => "missing",
            ProblemKind::Reordered => "reordered",
            ProblemKind::BadSignature => "bad signature",
            ProblemKind::Truncated => "truncated",
            ProblemKind::TriggersDropped => "triggers dropped",
            ProblemKind::Unsigned => "unsigned",
            ProblemKind::SearchIndex => "search index",
            ProblemKind::Schema => "schema changed",
        }
    }
}

/// One thing wrong, with the row it concerns when there is one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// What kind of damage this is.
    pub kind: ProblemKind,
    /// The first row concerned (for `Missing` and `Truncated`, the first missing id).
    pub row: Option<i64>,
    /// What exactly is wrong, in words.
    pub detail: String,
}

impl Problem {
    /// A problem of the store as a whole, not of one row.
    pub(crate) fn whole(kind: ProblemKind, detail: String) -> Self {
        Problem {
            kind,
            row: None,
            detail,
        }
    }

    /// The problem as `audit verify --json` (local, remote, either store) and the console show it.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "kind": self.kind.as_str(), "row": self.row, "detail": self.detail })
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.row {
            Some(row) => write!(f, "row {row}: {}: {}", self.kind.as_str(), self.detail),
            None => write!(f, "{}: {}", self.kind.as_str(), self.detail),
        }
    }
}

/// The outcome of a verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Rows checked.
    pub rows: u64,
    /// First and last row id, when there are rows.
    pub ids: Option<(i64, i64)>,
    /// The chain head after the last row checked (a pruned-through head when all are pruned).
    pub head: ChainHead,
    /// Checkpoints whose signature verified.
    pub checkpoints_verified: usize,
    /// The highest row a verified checkpoint covers.
    pub signed_through: Option<i64>,
    /// The row the latest verified retention checkpoint pruned through.
    pub pruned_through: Option<i64>,
    /// Rows after the last verified checkpoint: what no signature proves (a live collector
    /// signs every 10,000 rows or 60 s, and at shutdown).
    pub unsigned_rows: u64,
    /// The public key used, and whether it came from the caller (true) or the database.
    pub(crate) public_key: Option<(String, bool)>,
    /// Empty when the store is intact. At most one row problem: the first bad row.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// The report as `audit verify --json` prints it (one shape, local or remote).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "summary": self.summary(),
            "intact": self.is_intact(),
            "rows": self.rows,
            "first_id": self.ids.map(|i| i.0),
            "last_id": self.ids.map(|i| i.1),
            "head": { "id": self.head.id, "hash": self.head.hash_hex() },
            "checkpoints_verified": self.checkpoints_verified,
            "signed_through": self.signed_through,
            "pruned_through": self.pruned_through,
            "unsigned_rows": self.unsigned_rows,
            "public_key": self.public_key.as_ref().map(|k| &k.0),
            "problems": self.problems.iter().map(Problem::to_json).collect::<Vec<_>>(),
        })
    }

    /// True when no problem was found: every row links and every checkpoint verified.
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty()
    }

    /// The one-paragraph summary `audit verify` prints.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        if self.is_intact() {
            s.push_str("audit trail intact: ");
        } else {
            s.push_str("audit trail NOT intact: ");
        }
        match self.ids {
            Some((a, b)) => s.push_str(&format!("{} rows (ids {a}..{b})", self.rows)),
            None => s.push_str("0 rows"),
        }
        s.push_str(&format!(", head {} {}", self.head.id, self.head.hash_hex()));
        s.push_str(&format!(
            "; {} signed checkpoint(s) verified",
            self.checkpoints_verified
        ));
        if let Some(r) = self.signed_through {
            s.push_str(&format!(", signed through row {r}"));
        }
        if let Some(r) = self.pruned_through {
            s.push_str(&format!("; pruned through row {r} by retention"));
        }
        if self.checkpoints_verified == 0 && self.rows > 0 {
            s.push_str(
                "; NO signed checkpoint verified: the key proves none of these rows (checkpoints \
                 removed, or never written)",
            );
        } else if self.unsigned_rows > 0 {
            s.push_str(&format!(
                "; {} row(s) after the last signed checkpoint are covered by no signature \
                 (--require-signed makes that a failure)",
                self.unsigned_rows
            ));
        }
        if let Some((key, given)) = &self.public_key {
            if *given {
                s.push_str(&format!("; key {key} (given)"));
            } else {
                s.push_str(&format!(
                    "; key {key} (read from the database: pass --pubkey to check against a key \
                     you trust)"
                ));
            }
        }
        s
    }
}

/// Verifies the store at `path`, opened read-only.
pub fn verify_path(path: &Path, options: &VerifyOptions) -> Result<VerifyReport, AuditError> {
    let conn = store::open_ro(path)?;
    verify(&conn, path, options)
}

/// Verifies the store on `conn`. Errors are for a store that cannot be read at all; damage is
/// reported in [`VerifyReport::problems`].
pub(crate) fn verify(
    conn: &Connection,
    path: &Path,
    options: &VerifyOptions,
) -> Result<VerifyReport, AuditError> {
    let sql = |context| move |e| AuditError::sqlite(path, context, e);
    // One read transaction, so a writer appending meanwhile does not move the ground.
    conn.execute_batch("BEGIN")
        .map_err(sql("starting a read transaction"))?;
    let result = verify_in(conn, path, options);
    let _ = conn.execute_batch("COMMIT");
    result
}

fn verify_in(
    conn: &Connection,
    path: &Path,
    options: &VerifyOptions,
) -> Result<VerifyReport, AuditError> {
    let sql = |context| move |e| AuditError::sqlite(path, context, e);
    let mut problems = Vec::new();
    check_triggers(conn, &mut problems).map_err(sql("reading the schema"))?;
    check_schema_objects(conn, &mut problems).map_err(sql("reading the schema"))?;

    let chain_id = store::chain_id(conn, path)?;
    let stored_key = store::meta(conn, path, "public_key")?;
    let key = match (&options.pubkey, &stored_key) {
        (Some(k), _) => Some((*k, true)),
        (None, Some(hex)) => Some((sign::parse_public_key(hex)?, false)),
        (None, None) => None,
    };

    // Checkpoints first: the valid ones say where the chain starts (retention) and what it
    // must contain (signed heads).
    let has_checkpoints: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' \
             AND name = 'audit_checkpoints')",
            [],
            |r| r.get(0),
        )
        .map_err(sql("reading the schema"))?;
    let checkpoints = if has_checkpoints {
        store::checkpoints(conn).map_err(sql("reading checkpoints"))?
    } else {
        problems.push(Problem::whole(
            ProblemKind::BadSignature,
            "the audit_checkpoints table is gone: no signed checkpoint can be checked".to_owned(),
        ));
        Vec::new()
    };
    let Signed {
        signed,
        signed_through,
        base,
        retention_seq,
        verified,
    } = check_checkpoints(checkpoints, key, &chain_id, &mut problems);

    let parallel_from_rows = options.parallel_from_rows.unwrap_or(PARALLEL_FROM_ROWS);
    let scan = scan_rows(conn, path, &base, &signed, parallel_from_rows)
        .map_err(sql("reading mcp_logs"))?;
    let mut head = base.clone();
    let mut ids = None;
    let rows = match scan {
        Scan::Intact {
            rows: n,
            last,
            first_id,
        } => {
            if let Some(last) = last {
                ids = Some((first_id, last.id));
                head = last;
            }
            n
        }
        Scan::Bad { rows: n, problem } => {
            problems.push(diagnose(conn, problem).map_err(sql("diagnosing a bad row"))?);
            n
        }
    };

    // Truncation: a verified checkpoint covers rows past the end.
    if !problems
        .iter()
        .any(|p| p.row.is_some() && p.kind != ProblemKind::BadSignature)
    {
        problems.extend(truncation(&signed, &head));
        if let Some(expected) = options.expect_head {
            let found = expected == base.hash
                || find_row_by_hash(conn, &expected)
                    .map_err(sql("looking up --expect-head"))?
                    .is_some();
            if !found {
                problems.push(expected_head_missing(&expected, &head));
            }
        }
    }

    check_search_index(conn, &mut problems).map_err(sql("checking the full-text index"))?;
    if options.check_search_terms {
        check_search_terms(path, &mut problems)?;
    }
    let (unsigned_rows, unsigned) = unsigned(&head, signed_through, &base, options.require_signed);
    problems.extend(unsigned);
    // Last: a row problem, when there is one, stays the first problem named.
    check_rollup(conn, &mut problems).map_err(sql("reading the console rollup"))?;

    Ok(VerifyReport {
        rows,
        ids,
        head,
        unsigned_rows,
        checkpoints_verified: verified,
        signed_through,
        pruned_through: retention_seq.map(|_| base.id),
        public_key: key.map(|(k, given)| (sign::public_key_hex(&k), given)),
        problems,
    })
}

/// What the checkpoints of one chain establish.
pub(crate) struct Signed {
    /// Signed heads (not retention) by row: (checkpoint seq, row hash).
    pub(crate) signed: HashMap<i64, (i64, [u8; 32])>,
    /// The highest row a verified checkpoint covers.
    pub(crate) signed_through: Option<i64>,
    /// Where the chain starts: the latest verified retention checkpoint, else genesis.
    pub(crate) base: ChainHead,
    pub(crate) retention_seq: Option<i64>,
    /// Checkpoints whose signature verified.
    pub(crate) verified: usize,
}

/// Checks one chain's checkpoints (oldest first): sequence, links, signatures with `key` for
/// `chain_id`. Problems go to `problems`; the verified ones say where the chain starts
/// (retention) and what it must contain (signed heads).
pub(crate) fn check_checkpoints(
    checkpoints: Vec<Result<Checkpoint, (i64, String)>>,
    key: Option<(VerifyingKey, bool)>,
    chain_id: &str,
    problems: &mut Vec<Problem>,
) -> Signed {
    let mut signed: HashMap<i64, (i64, [u8; 32])> = HashMap::new();
    let mut signed_through = None;
    let mut base = ChainHead {
        id: 0,
        hash: GENESIS_HASH,
    };
    let mut retention_seq = None;
    let mut verified = 0;
    let mut prev_digest = [0u8; 32];
    let mut expected_seq = 1;
    for cp in checkpoints {
        let cp: Checkpoint = match cp {
            Ok(cp) => cp,
            Err((seq, reason)) => {
                problems.push(Problem::whole(
                    ProblemKind::BadSignature,
                    format!("checkpoint #{seq}: {reason}"),
                ));
                expected_seq = seq + 1;
                continue;
            }
        };
        let what = format!("checkpoint #{} (row {})", cp.seq, cp.row_id);
        if cp.seq != expected_seq {
            problems.push(Problem::whole(
                ProblemKind::BadSignature,
                format!(
                    "checkpoints #{expected_seq}..#{} are missing before {what}",
                    cp.seq - 1
                ),
            ));
        } else if cp.prev_digest != prev_digest {
            problems.push(Problem::whole(
                ProblemKind::BadSignature,
                format!("{what} does not link to checkpoint #{}", cp.seq - 1),
            ));
        }
        expected_seq = cp.seq + 1;
        prev_digest = cp.digest();
        let Some((key, _)) = key else {
            problems.push(Problem {
                kind: ProblemKind::BadSignature,
                row: Some(cp.row_id),
                detail: format!("{what}: no public key to check it with (pass --pubkey)"),
            });
            continue;
        };
        if !cp.verify(chain_id, &key) {
            problems.push(Problem {
                kind: ProblemKind::BadSignature,
                row: Some(cp.row_id),
                detail: format!(
                    "{what}, {} at {}: the signature does not verify (forged or altered)",
                    cp.kind.as_str(),
                    cp.created_at
                ),
            });
            continue;
        }
        verified += 1;
        signed_through = Some(signed_through.map_or(cp.row_id, |r: i64| r.max(cp.row_id)));
        if cp.kind == CheckpointKind::Retention {
            if cp.row_id >= base.id {
                base = ChainHead {
                    id: cp.row_id,
                    hash: cp.row_hash,
                };
                retention_seq = Some(cp.seq);
            }
        } else {
            signed.insert(cp.row_id, (cp.seq, cp.row_hash));
        }
    }
    Signed {
        signed,
        signed_through,
        base,
        retention_seq,
        verified,
    }
}

/// A truncation: a verified checkpoint in `signed` covers rows past `head`.
pub(crate) fn truncation(
    signed: &HashMap<i64, (i64, [u8; 32])>,
    head: &ChainHead,
) -> Option<Problem> {
    let (row, (seq, _)) = signed
        .iter()
        .filter(|(row, _)| **row > head.id)
        .max_by_key(|(row, _)| **row)?;
    Some(Problem {
        kind: ProblemKind::Truncated,
        row: Some(head.id + 1),
        detail: format!(
            "rows {}..{row} are gone from the end: the chain ends at row {} but signed \
             checkpoint #{seq} covers row {row}",
            head.id + 1,
            head.id
        ),
    })
}

/// `--expect-head` is not in the chain that ends at `head`.
pub(crate) fn expected_head_missing(expected: &[u8; 32], head: &ChainHead) -> Problem {
    Problem {
        kind: ProblemKind::Truncated,
        row: Some(head.id + 1),
        detail: format!(
            "the expected head {} is not in the chain (which ends at row {}): rows after row {} \
             were removed or the chain was rewritten",
            chain::to_hex(expected),
            head.id,
            head.id
        ),
    }
}

/// The rows after the last verified checkpoint (and the retention point), and the problem they
/// are when every row must be signed.
pub(crate) fn unsigned(
    head: &ChainHead,
    signed_through: Option<i64>,
    base: &ChainHead,
    require_signed: bool,
) -> (u64, Option<Problem>) {
    let rows = head
        .id
        .saturating_sub(signed_through.unwrap_or(0).max(base.id))
        .max(0) as u64;
    let from = head.id - rows as i64 + 1;
    let problem = (require_signed && rows > 0).then(|| Problem {
        kind: ProblemKind::Unsigned,
        row: Some(from),
        detail: format!(
            "rows {from}..{} are covered by no verified signed checkpoint: appended after the \
             last checkpoint (or its checkpoints were removed)",
            head.id
        ),
    });
    (rows, problem)
}

/// The full-text index is outside the hash chain. Exactly the rows that have text to search
/// must be indexed, up to the newest row it holds (the rows after it are the tail the writer
/// has not indexed yet, which `query --text` reads without the index): a row removed from the
/// index would vanish from `query --text`, an entry for a row that is not there would answer
/// for it. (Hits are also re-checked against the chained text when a query runs;
/// [`check_search_terms`] checks every term.)
fn check_search_index(conn: &Connection, problems: &mut Vec<Problem>) -> rusqlite::Result<()> {
    let present: bool = conn.query_row(
        "SELECT count(*) = 2 FROM sqlite_master WHERE name IN ('mcp_logs_fts', \
         'mcp_logs_fts_docsize')",
        [],
        |r| r.get(0),
    )?;
    if !present {
        problems.push(Problem::whole(
            ProblemKind::SearchIndex,
            "the full-text index mcp_logs_fts is gone".to_owned(),
        ));
        return Ok(());
    }
    let unindexed: Option<i64> = conn
        .query_row(
            &format!(
                "SELECT id FROM mcp_logs WHERE (context IS NOT NULL OR before_state IS NOT NULL \
                 OR after_state IS NOT NULL) AND id NOT IN (SELECT id FROM mcp_logs_fts_docsize) \
                 AND id <= {} ORDER BY id LIMIT 1",
                store::INDEXED_THROUGH
            ),
            [],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(id) = unindexed {
        problems.push(Problem {
            kind: ProblemKind::SearchIndex,
            row: Some(id),
            detail: "the row is missing from the full-text index: `query --text` cannot find it"
                .to_owned(),
        });
    }
    let foreign: Option<i64> = conn
        .query_row(
            "SELECT id FROM mcp_logs_fts_docsize WHERE id NOT IN (SELECT id FROM mcp_logs \
             WHERE context IS NOT NULL OR before_state IS NOT NULL OR after_state IS NOT NULL) \
             ORDER BY id LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(id) = foreign {
        problems.push(Problem {
            kind: ProblemKind::SearchIndex,
            row: Some(id),
            detail: "the full-text index has an entry for a row with no such text".to_owned(),
        });
    }
    Ok(())
}

/// The console's rollup (derived from the rows, outside the chain) must count every stored row
/// once, per tool and per user: otherwise the overview shows figures the trail does not hold.
fn check_rollup(conn: &Connection, problems: &mut Vec<Problem>) -> rusqlite::Result<()> {
    if !super::rollup::present(conn)? {
        return Ok(());
    }
    let rows: i64 = conn.query_row("SELECT COUNT(*) FROM mcp_logs", [], |r| r.get(0))?;
    let (per_tool, per_user) = super::rollup::counted_calls(conn)?;
    if per_tool != rows || per_user != rows {
        problems.push(Problem::whole(
            ProblemKind::Schema,
            format!(
                "the console rollup counts {per_tool} calls by tool and {per_user} by user, \
                 the store holds {rows} rows: the console's overview does not match the trail"
            ),
        ));
    }
    Ok(())
}

/// SQLite's own check of the full-text index against the content it was built from.
fn check_search_terms(path: &Path, problems: &mut Vec<Problem>) -> Result<(), AuditError> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| AuditError::sqlite(path, "opening the store to check the full-text index", e))?;
    let _ = conn.busy_timeout(std::time::Duration::from_secs(10));
    // Nothing is kept: the tail the writer has not indexed yet is indexed inside the
    // transaction (the check compares the index with every row), which is rolled back.
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(|e| AuditError::sqlite(path, "locking the store for the index check", e))?;
    let checked = store::index_text(&conn, 0).and_then(|_| {
        conn.execute(
            "INSERT INTO mcp_logs_fts (mcp_logs_fts, rank) VALUES ('integrity-check', 1)",
            [],
        )
    });
    let _ = conn.execute_batch("ROLLBACK");
    if let Err(e) = checked {
        problems.push(Problem::whole(
            ProblemKind::SearchIndex,
            format!(
                "the full-text index does not match the rows it was built from ({e}): \
                 `query --text` may hide or invent results"
            ),
        ));
    }
    Ok(())
}

fn check_triggers(conn: &Connection, problems: &mut Vec<Problem>) -> rusqlite::Result<()> {
    let mut stmt =
        conn.prepare("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = ?1")?;
    for (name, expected) in store::TRIGGERS {
        let found: Option<String> =
            stmt.query_row([name], |r| r.get(0))
                .map(Some)
                .or_else(|e| match e {
                    rusqlite::Error::QueryReturnedNoRows => Ok(None),
                    e => Err(e),
                })?;
        let detail = match found {
            None => format!(
                "trigger {name} is gone: rows could be changed or deleted without an error \
                 (the chain check says whether any were)"
            ),
            Some(sql) if normalise(&sql) != normalise(expected) => {
                format!("trigger {name} was altered: {sql}")
            }
            Some(_) => continue,
        };
        problems.push(Problem::whole(ProblemKind::TriggersDropped, detail));
    }
    Ok(())
}

/// Everything in the schema must be what the project creates: an extra trigger (one that
/// silently drops inserts of some user's calls), view, table or index is named, and so is a
/// missing or altered index (the uniqueness key is what makes a resend a duplicate).
fn check_schema_objects(conn: &Connection, problems: &mut Vec<Problem>) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare(
        "SELECT type, name, tbl_name, coalesce(sql, '') FROM sqlite_master ORDER BY type, name",
    )?;
    let objects: Vec<(String, String, String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<_, _>>()?;
    let known_table = |t: &str| store::TABLES.contains(&t) || store::COMPANION_TABLES.contains(&t);
    for (kind, name, table, sql) in &objects {
        let expected = match kind.as_str() {
            "table" => known_table(name),
            "trigger" => store::TRIGGERS.iter().any(|(n, _)| n == name),
            // Automatic indexes of known tables (the ids-only key of an earlier build).
            "index" if name.starts_with("sqlite_autoindex_") => known_table(table),
            "index" => {
                store::INDEXES.iter().any(|(n, _)| n == name)
                    || store::LEGACY_INDEXES
                        .iter()
                        .any(|(n, want)| n == name && normalise(sql) == normalise(want))
                    || store::COMPANION_TABLES.contains(&table.as_str())
                    || is_ids_only_key(sql)
            }
            _ => false,
        };
        if !expected {
            problems.push(Problem::whole(
                if kind == "trigger" {
                    ProblemKind::TriggersDropped
                } else {
                    ProblemKind::Schema
                },
                format!(
                    "the schema has a {kind} {name} on {table} that mcp-otel does not create: {}",
                    normalise(sql)
                ),
            ));
        }
    }
    for (name, want) in store::INDEXES {
        let found = objects
            .iter()
            .find(|(kind, n, _, _)| kind == "index" && n == name);
        let detail = match found {
            None => format!("index {name} is gone"),
            Some((_, _, _, sql)) if normalise(sql) != normalise(want) => {
                format!("index {name} was altered: {}", normalise(sql))
            }
            Some(_) => continue,
        };
        problems.push(Problem::whole(ProblemKind::Schema, detail));
    }
    Ok(())
}

/// The uniqueness key of a store from before the time-led key: unique on the ids alone.
fn is_ids_only_key(sql: &str) -> bool {
    let s = normalise(sql);
    s.starts_with("CREATE UNIQUE INDEX ") && s.ends_with(" ON mcp_logs (trace_id, span_id)")
}

fn normalise(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The first thing wrong found by the fast scan, before diagnosis.
enum Suspect {
    /// The ids jump from `expected` to `found`.
    Gap { expected: i64, found: i64 },
    /// Row `id`'s `prev_hash` is not the previous row's hash. `self_consistent` says whether
    /// its own hash still matches its contents with the `prev_hash` it stores.
    BadLink {
        id: i64,
        stored_prev: Option<[u8; 32]>,
        prev_id: i64,
        self_consistent: bool,
    },
    /// Row `id`'s hash does not match its contents.
    BadHash { id: i64 },
    /// A column holds a value of the wrong type, so the row cannot even be read.
    BadColumn { id: i64, column: &'static str },
    /// Row `id` differs from what signed checkpoint `seq` recorded.
    Unsigned { id: i64, seq: i64 },
    /// A row below the retention point is still (or again) present.
    BelowRetention { id: i64, base: i64 },
}

enum Scan {
    Intact {
        rows: u64,
        first_id: i64,
        last: Option<ChainHead>,
    },
    Bad {
        rows: u64,
        problem: Suspect,
    },
}

fn column(i: usize) -> &'static str {
    store::COLUMNS[i].name
}

const ID: usize = store::column_index("id");
const DURATION_MS: usize = store::column_index("duration_ms");
const USER_CONFIRMATION: usize = store::column_index("user_confirmation");
/// What [`fields`] names for a v1 row that carries confirmation columns.
const V1_WITH_CONFIRMATION: &str = "confirmation_outcome";

const PREV_HASH: usize = store::column_index("prev_hash");
const HASH: usize = store::column_index("hash");

fn text<'a>(row: &'a rusqlite::Row<'_>, i: usize) -> Result<&'a str, &'static str> {
    match row.get_ref(i) {
        Ok(ValueRef::Text(t)) => std::str::from_utf8(t).map_err(|_| column(i)),
        _ => Err(column(i)),
    }
}

fn opt_text<'a>(row: &'a rusqlite::Row<'_>, i: usize) -> Result<Option<&'a str>, &'static str> {
    match row.get_ref(i) {
        Ok(ValueRef::Null) => Ok(None),
        Ok(ValueRef::Text(t)) => std::str::from_utf8(t).map(Some).map_err(|_| column(i)),
        _ => Err(column(i)),
    }
}

/// Reads one stored row into the chain's input, or names the column that cannot be read.
fn fields<'a>(row: &'a rusqlite::Row<'_>) -> Result<RowFields<'a>, &'static str> {
    use store::column_index as at;
    let id = match row.get_ref(ID) {
        Ok(ValueRef::Integer(n)) => n,
        _ => return Err("id"),
    };
    let duration_ms = match row.get_ref(DURATION_MS) {
        Ok(ValueRef::Real(f)) => f,
        Ok(ValueRef::Integer(n)) => n as f64,
        _ => return Err("duration_ms"),
    };
    let user_confirmation = match row.get_ref(USER_CONFIRMATION) {
        Ok(ValueRef::Null) => None,
        Ok(ValueRef::Integer(0)) => Some(false),
        Ok(ValueRef::Integer(1)) => Some(true),
        _ => return Err("user_confirmation"),
    };
    let confirmation_wait_ms = match row.get_ref(at("confirmation_wait_ms")) {
        Ok(ValueRef::Null) => None,
        Ok(ValueRef::Real(f)) => Some(f),
        Ok(ValueRef::Integer(n)) => Some(n as f64),
        _ => return Err("confirmation_wait_ms"),
    };
    // NULL: a row written before chain v2, which is a v1 row.
    let row_version = match row.get_ref(at("row_version")) {
        Ok(ValueRef::Null) => 1,
        Ok(ValueRef::Integer(n)) => match u32::try_from(n) {
            Ok(v) if chain::READABLE_VERSIONS.contains(&v) => v,
            _ => return Err("row_version"),
        },
        _ => return Err("row_version"),
    };
    let f = RowFields {
        id,
        timestamp: text(row, at("timestamp"))?,
        tool_name: text(row, at("tool_name"))?,
        user: text(row, at("user"))?,
        status: text(row, at("status"))?,
        duration_ms,
        error_code: opt_text(row, at("error_code"))?,
        operation_type: opt_text(row, at("operation_type"))?,
        resource_id: opt_text(row, at("resource_id"))?,
        before_state: opt_text(row, at("before_state"))?,
        after_state: opt_text(row, at("after_state"))?,
        user_confirmation,
        context: opt_text(row, at("context"))?,
        trace_id: text(row, at("trace_id"))?,
        span_id: text(row, at("span_id"))?,
        parent_span_id: opt_text(row, at("parent_span_id"))?,
        mcp: opt_text(row, at("mcp"))?,
        result: opt_text(row, at("result"))?,
        recorded_at: text(row, at("recorded_at"))?,
        confirmation_outcome: opt_text(row, at("confirmation_outcome"))?,
        confirmation_source: opt_text(row, at("confirmation_source"))?,
        confirmation_arguments_digest: opt_text(row, at("confirmation_arguments_digest"))?,
        confirmation_wait_ms,
        row_version,
    };
    // The v1 encoding does not cover the confirmation: a v1 row that has one was changed.
    if f.row_version < 2 && f.has_v2_fields() {
        return Err(V1_WITH_CONFIRMATION);
    }
    Ok(f)
}

/// What one scan of an id range found.
struct RangeScan {
    rows: u64,
    /// The first row's id and the `prev_hash` it stores.
    first: Option<(i64, [u8; 32])>,
    last: Option<ChainHead>,
    bad: Option<Suspect>,
}

/// Scans rows `lo..=hi` in id order. With `base`, the first row must follow it; without, the
/// first row's own `prev_hash` is taken on trust and checked by the caller at the boundary.
///
/// Per row: one SHA-256, one hex encoding and two 64-byte comparisons; stored hashes are
/// compared as text, never decoded.
fn scan_range(
    conn: &Connection,
    base: Option<&ChainHead>,
    base_id: i64,
    lo: i64,
    hi: i64,
    signed: &HashMap<i64, (i64, [u8; 32])>,
) -> rusqlite::Result<RangeScan> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {} FROM mcp_logs WHERE id BETWEEN ?1 AND ?2 ORDER BY id",
        store::row_select(conn)?
    ))?;
    let mut rows = stmt.query([lo, hi])?;
    let mut hasher = RowHasher::new();
    let mut scan = RangeScan {
        rows: 0,
        first: None,
        last: None,
        bad: None,
    };
    // The previous row's id, hash, and hash as stored text.
    let mut prev: Option<(i64, [u8; 32], [u8; 64])> = base.map(|b| (b.id, b.hash, hex64(&b.hash)));
    while let Some(row) = rows.next()? {
        let f = match fields(row) {
            Ok(f) => f,
            Err(column) => {
                let id = row.get::<_, i64>(0).unwrap_or(prev.map_or(lo, |p| p.0 + 1));
                scan.bad = Some(Suspect::BadColumn { id, column });
                return Ok(scan);
            }
        };
        let stored_prev = text(row, PREV_HASH).unwrap_or("").as_bytes();
        let stored_hash = text(row, HASH).unwrap_or("").as_bytes();
        if f.id <= base_id {
            scan.bad = Some(Suspect::BelowRetention {
                id: f.id,
                base: base_id,
            });
            return Ok(scan);
        }
        let (prev_id, prev_hash, prev_hex) = match prev {
            Some(p) => p,
            None => {
                // First row of an unanchored range: trust its link, the caller checks it.
                let Some(p) = std::str::from_utf8(stored_prev)
                    .ok()
                    .and_then(chain::from_hex)
                else {
                    scan.bad = Some(Suspect::BadColumn {
                        id: f.id,
                        column: "prev_hash",
                    });
                    return Ok(scan);
                };
                scan.first = Some((f.id, p));
                (f.id - 1, p, hex64(&p))
            }
        };
        if scan.first.is_none() {
            scan.first = Some((f.id, prev_hash));
        }
        if f.id != prev_id + 1 {
            scan.bad = Some(Suspect::Gap {
                expected: prev_id + 1,
                found: f.id,
            });
            return Ok(scan);
        }
        if stored_prev != prev_hex {
            let stored_prev = std::str::from_utf8(stored_prev)
                .ok()
                .and_then(chain::from_hex);
            let stored_hash = std::str::from_utf8(stored_hash)
                .ok()
                .and_then(chain::from_hex);
            let self_consistent = match (stored_prev, stored_hash) {
                (Some(p), Some(h)) => hasher.hash(&f, &p) == h,
                _ => false,
            };
            scan.bad = Some(Suspect::BadLink {
                id: f.id,
                stored_prev,
                prev_id,
                self_consistent,
            });
            return Ok(scan);
        }
        let hash = hasher.hash(&f, &prev_hash);
        let hash_hex = hex64(&hash);
        if stored_hash != hash_hex {
            scan.bad = Some(Suspect::BadHash { id: f.id });
            return Ok(scan);
        }
        if let Some((seq, signed_hash)) = signed.get(&f.id)
            && *signed_hash != hash
        {
            scan.bad = Some(Suspect::Unsigned {
                id: f.id,
                seq: *seq,
            });
            return Ok(scan);
        }
        prev = Some((f.id, hash, hash_hex));
        scan.rows += 1;
    }
    scan.last = prev
        .filter(|_| scan.rows > 0)
        .map(|(id, hash, _)| ChainHead { id, hash });
    Ok(scan)
}

fn hex64(hash: &[u8; 32]) -> [u8; 64] {
    let mut out = [0u8; 64];
    crate::hex::write(&mut out, hash);
    out
}

/// Below this many rows a second thread costs more than it saves.
const PARALLEL_FROM_ROWS: u64 = 200_000;

/// Scans the whole chain from `base`. Large stores are split in two id ranges verified on two
/// threads (each row's check needs only its own `prev_hash`), joined at the boundary; anything
/// suspicious is re-scanned sequentially on `conn`, inside its read transaction, so that the
/// report names the first bad row exactly.
fn scan_rows(
    conn: &Connection,
    path: &Path,
    base: &ChainHead,
    signed: &HashMap<i64, (i64, [u8; 32])>,
    parallel_from_rows: u64,
) -> rusqlite::Result<Scan> {
    let (lo, hi): (Option<i64>, Option<i64>) =
        conn.query_row("SELECT MIN(id), MAX(id) FROM mcp_logs", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let (Some(lo), Some(hi)) = (lo, hi) else {
        return Ok(Scan::Intact {
            rows: 0,
            first_id: 0,
            last: None,
        });
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads > 1 && (hi - lo).max(0) as u64 >= parallel_from_rows.max(2) {
        let mid = lo + (hi - lo) / 2;
        let second = std::thread::scope(|s| {
            let second = s.spawn(|| -> rusqlite::Result<RangeScan> {
                let other = store::open_ro(path).map_err(|_| rusqlite::Error::InvalidQuery)?;
                other.execute_batch("BEGIN")?;
                scan_range(&other, None, base.id, mid + 1, hi, signed)
            });
            let first = scan_range(conn, Some(base), base.id, lo, mid, signed);
            (first, second.join())
        });
        if let (Ok(a), Ok(Ok(b))) = second {
            let joined = a.bad.is_none()
                && b.bad.is_none()
                && match (&a.last, &b.first) {
                    (Some(last), Some((first_id, first_prev))) => {
                        *first_id == last.id + 1 && *first_prev == last.hash
                    }
                    _ => false,
                };
            if joined {
                return Ok(Scan::Intact {
                    rows: a.rows + b.rows,
                    first_id: a.first.map_or(0, |f| f.0),
                    last: b.last,
                });
            }
        }
    }
    let scan = scan_range(conn, Some(base), base.id, lo, hi, signed)?;
    Ok(match scan.bad {
        Some(problem) => Scan::Bad {
            rows: scan.rows,
            problem,
        },
        None => Scan::Intact {
            rows: scan.rows,
            first_id: scan.first.map_or(0, |f| f.0),
            last: scan.last,
        },
    })
}

fn find_row_by_hash(conn: &Connection, hash: &[u8; 32]) -> rusqlite::Result<Option<i64>> {
    conn.query_row(
        "SELECT id FROM mcp_logs WHERE hash = ?1 LIMIT 1",
        [chain::to_hex(hash)],
        |r| r.get(0),
    )
    .map(Some)
    .or_else(|e| match e {
        rusqlite::Error::QueryReturnedNoRows => Ok(None),
        e => Err(e),
    })
}

/// Turns what the scan found into a named problem, looking further where that tells a
/// reordered row from a changed one.
fn diagnose(conn: &Connection, suspect: Suspect) -> rusqlite::Result<Problem> {
    Ok(match suspect {
        Suspect::Gap { expected, found } => Problem {
            kind: ProblemKind::Missing,
            row: Some(expected),
            detail: if found - expected == 1 {
                format!("row {expected} was deleted (the chain jumps to row {found})")
            } else {
                format!(
                    "rows {expected}..{} were deleted (the chain jumps to row {found})",
                    found - 1
                )
            },
        },
        Suspect::BadColumn { id, column } => Problem {
            kind: ProblemKind::Changed,
            row: Some(id),
            detail: match column {
                V1_WITH_CONFIRMATION => "a v1 row (written before the confirmation columns) \
                                         carries confirmation_* values, which its hash does not \
                                         cover"
                    .to_owned(),
                _ => format!("column {column} holds a value of the wrong type"),
            },
        },
        Suspect::BadHash { id } => Problem {
            kind: ProblemKind::Changed,
            row: Some(id),
            detail: "its contents no longer match its hash".to_owned(),
        },
        Suspect::Unsigned { id, seq } => Problem {
            kind: ProblemKind::Changed,
            row: Some(id),
            detail: format!(
                "its hash differs from the one signed in checkpoint #{seq}: the chain was \
                 rewritten at or before this row"
            ),
        },
        Suspect::BelowRetention { id, base } => Problem {
            kind: ProblemKind::Changed,
            row: Some(id),
            detail: format!("it is present although retention pruned through row {base}"),
        },
        Suspect::BadLink {
            id,
            stored_prev,
            prev_id,
            self_consistent,
        } => {
            // Where does this row's link point? To another row: it was moved here. To nothing,
            // while the row itself is intact: the previous row was changed and re-hashed.
            let linked = match stored_prev {
                Some(p) => find_row_by_hash(conn, &p)?,
                None => None,
            };
            match (linked, self_consistent) {
                (Some(other), _) if other != prev_id => Problem {
                    kind: ProblemKind::Reordered,
                    row: Some(id),
                    detail: format!(
                        "it was written after row {other}, not after row {prev_id} (rows were \
                         moved)"
                    ),
                },
                (None, true) if prev_id > 0 => Problem {
                    kind: ProblemKind::Changed,
                    row: Some(prev_id),
                    detail: format!(
                        "its hash was recomputed to hide a change: row {id} still links to the \
                         original hash"
                    ),
                },
                _ => Problem {
                    kind: ProblemKind::Changed,
                    row: Some(id),
                    detail: format!("its prev_hash does not link to row {prev_id}"),
                },
            }
        }
    })
}
