//! The SQLite store: schema, connections, and the mapping of a [`ToolCall`] to a row of
//! `mcp_logs`. Column names are the seed's, so its daily review query runs with only its time
//! expression adapted; timestamps are RFC 3339 UTC text with milliseconds, which sorts and
//! compares correctly as text.
//!
//! Immutability is enforced twice: triggers refuse UPDATE and DELETE (a DELETE passes only for
//! rows covered by a retention checkpoint), and the hash chain makes any change that gets past
//! the triggers (a raw connection that drops them) visible to `audit verify`.

use super::chain::{self, RowFields};
use super::error::AuditError;
use super::sign::{Checkpoint, CheckpointKind};
use crate::record::ToolCall;
use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde_json::{Map, Value};
use std::path::Path;
use std::time::Duration;

/// The default database file of `collect --audit` and the `audit` subcommands.
pub(crate) const DEFAULT_DB: &str = "mcp-audit.db";

/// Tables, indexes and the full-text index. Created once, in one transaction.
///
/// A call is stored once: the uniqueness key is the span's identity as an exporter resends it,
/// `(timestamp, trace_id, span_id)`. A retried export carries the same span, start time
/// included, so it is skipped. The key leads with the timestamp so that inserts land at the
/// right edge of its index (calls arrive roughly in time order) and the index also serves
/// time-range queries; keyed on the random ids alone, every insert dirtied a random leaf page,
/// and durable appends fell from about 60,000 to 35,000 calls/s as the store grew to 3 million
/// rows (docs/benchmarks.md, "Audit"). There is no plain timestamp index: the key serves
/// `ORDER BY timestamp DESC, id DESC LIMIT n` too (`audit query` walks it backwards and sorts
/// only the calls of one millisecond by id), and a third B-tree written for every row cost the
/// serial writer thread more than anything it served.
///
/// `mcp_logs` itself is created from [`COLUMNS`] (see [`create_table_sql`]); [`MIGRATIONS`]
/// bring a store created by an earlier build up to this schema.
pub(crate) const SCHEMA: &str = "
CREATE TABLE audit_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE UNIQUE INDEX mcp_logs_call ON mcp_logs (timestamp, trace_id, span_id);
CREATE INDEX mcp_logs_writes ON mcp_logs (timestamp) WHERE operation_type IS NOT NULL;
CREATE TABLE audit_checkpoints (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    row_id INTEGER NOT NULL,
    row_hash TEXT NOT NULL,
    created_at TEXT NOT NULL,
    prev_digest TEXT NOT NULL,
    signature TEXT NOT NULL
);
CREATE VIRTUAL TABLE mcp_logs_fts USING fts5 (
    context, before_state, after_state, content = 'mcp_logs', content_rowid = 'id'
);
";

/// Statements that bring an existing store up to [`SCHEMA`]; each is idempotent. Stores created
/// before the uniqueness key moved to `(timestamp, trace_id, span_id)` get its index (their old
/// `UNIQUE (trace_id, span_id)` cannot be dropped without rebuilding the append-only table, so
/// it stays; inserts skip a call that either key already holds). The plain timestamp index of
/// earlier builds ([`LEGACY_INDEXES`]) is dropped: derived data outside the chain, which every
/// insert paid for.
const MIGRATIONS: &str = "
CREATE UNIQUE INDEX IF NOT EXISTS mcp_logs_call ON mcp_logs (timestamp, trace_id, span_id);
DROP INDEX IF EXISTS mcp_logs_timestamp;
";

/// Tables other stages keep in the audit database beside the trail, outside the hash chain:
/// collect's held calls of other instrumentations (`collect::staging`). `audit verify` accepts
/// them, and the console's rollup of the rows (`audit::rollup`, derived, checked by verify
/// against the rows); anything else in the schema that the project did not create, it names.
pub(crate) const COMPANION_TABLES: &[&str] = &[
    "collect_held_calls",
    super::rollup::CALLS_TABLE,
    super::rollup::USERS_TABLE,
];

/// The tables and indexes of a store, by name (the triggers are [`TRIGGERS`]; FTS5 keeps its
/// own shadow tables `mcp_logs_fts_*`).
pub(crate) const TABLES: &[&str] = &[
    "audit_meta",
    "mcp_logs",
    "audit_checkpoints",
    "mcp_logs_fts",
    "mcp_logs_fts_data",
    "mcp_logs_fts_idx",
    "mcp_logs_fts_docsize",
    "mcp_logs_fts_config",
];

/// The indexes of `mcp_logs` and their definitions.
pub(crate) const INDEXES: &[(&str, &str)] = &[
    (
        "mcp_logs_call",
        "CREATE UNIQUE INDEX mcp_logs_call ON mcp_logs (timestamp, trace_id, span_id)",
    ),
    (
        "mcp_logs_writes",
        "CREATE INDEX mcp_logs_writes ON mcp_logs (timestamp) WHERE operation_type IS NOT NULL",
    ),
];

/// Indexes that earlier builds created and a writer of this one drops ([`MIGRATIONS`]): a store
/// not opened for writing since may still have them, and verifies with them, provided each is
/// exactly as it was created.
pub(crate) const LEGACY_INDEXES: &[(&str, &str)] = &[(
    "mcp_logs_timestamp",
    "CREATE INDEX mcp_logs_timestamp ON mcp_logs (timestamp)",
)];

/// The (name, text) of the trigger that refuses every `$op` (`UPDATE` or `DELETE`; `$verb` is
/// it in lower case, for the name) on `$table`, a table that is append-only outright.
macro_rules! append_only {
    ($table:literal, $verb:literal, $op:literal) => {
        (
            concat!($table, "_no_", $verb),
            concat!(
                "CREATE TRIGGER ",
                $table,
                "_no_",
                $verb,
                " BEFORE ",
                $op,
                " ON ",
                $table,
                " BEGIN SELECT RAISE(ABORT, '",
                $table,
                " is append-only'); END"
            ),
        )
    };
}

/// The triggers that make the store append-only, by name. `audit verify` checks that each is
/// present with exactly this text.
pub const TRIGGERS: &[(&str, &str)] = &[
    (
        "mcp_logs_no_update",
        "CREATE TRIGGER mcp_logs_no_update BEFORE UPDATE ON mcp_logs BEGIN \
         SELECT RAISE(ABORT, 'mcp_logs is append-only: rows cannot be changed'); END",
    ),
    (
        "mcp_logs_no_delete",
        "CREATE TRIGGER mcp_logs_no_delete BEFORE DELETE ON mcp_logs \
         WHEN OLD.id > (SELECT COALESCE(MAX(row_id), 0) FROM audit_checkpoints \
         WHERE kind = 'retention') BEGIN \
         SELECT RAISE(ABORT, 'mcp_logs is append-only: rows leave only through a retention \
         checkpoint (mcp-otel audit prune)'); END",
    ),
    append_only!("audit_checkpoints", "update", "UPDATE"),
    append_only!("audit_checkpoints", "delete", "DELETE"),
    append_only!("audit_meta", "update", "UPDATE"),
    append_only!("audit_meta", "delete", "DELETE"),
];

/// One column of `mcp_logs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Column {
    pub(crate) name: &'static str,
    /// Its SQL type and constraint, as in `CREATE TABLE`.
    pub(crate) sql: &'static str,
    /// Covered by the row hash, in [`RowFields`](super::chain::RowFields) order.
    pub(crate) chained: bool,
    /// Returned by `audit query` (and the review API).
    pub(crate) queried: bool,
}

impl Column {
    const fn new(name: &'static str, sql: &'static str, chained: bool, queried: bool) -> Self {
        Column {
            name,
            sql,
            chained,
            queried,
        }
    }
}

/// The audit row schema, once: `CREATE TABLE`, the insert, verify's reads and the query columns
/// are derived from it. The chained columns come first, in the chain's field order, then the
/// links (`prev_hash`, `hash`). Adding a column means a new entry here, a field in `RowFields`
/// and a new `CHAIN_VERSION`; the tests below hold the three together and against SQLite.
pub(crate) const COLUMNS: &[Column] = &[
    Column::new("id", "INTEGER PRIMARY KEY", true, true),
    Column::new("timestamp", "TEXT NOT NULL", true, true),
    Column::new("tool_name", "TEXT NOT NULL", true, true),
    Column::new("user", "TEXT NOT NULL", true, true),
    Column::new("status", "TEXT NOT NULL", true, true),
    Column::new("duration_ms", "REAL NOT NULL", true, true),
    Column::new("error_code", "TEXT", true, true),
    Column::new("operation_type", "TEXT", true, true),
    Column::new("resource_id", "TEXT", true, true),
    Column::new("before_state", "TEXT", true, true),
    Column::new("after_state", "TEXT", true, true),
    Column::new("user_confirmation", "INTEGER", true, true),
    Column::new("context", "TEXT", true, true),
    Column::new("trace_id", "TEXT NOT NULL", true, true),
    Column::new("span_id", "TEXT NOT NULL", true, true),
    Column::new("parent_span_id", "TEXT", true, false),
    Column::new("mcp", "TEXT", true, true),
    Column::new("result", "TEXT", true, false),
    Column::new("recorded_at", "TEXT NOT NULL", true, false),
    // Chain v2: added by ALTER TABLE to older stores, hence nullable.
    Column::new("confirmation_outcome", "TEXT", true, true),
    Column::new("confirmation_source", "TEXT", true, true),
    Column::new("confirmation_arguments_digest", "TEXT", true, true),
    Column::new("confirmation_wait_ms", "REAL", true, true),
    Column::new("row_version", "INTEGER", true, false),
    Column::new("prev_hash", "TEXT NOT NULL", false, false),
    Column::new("hash", "TEXT NOT NULL", false, false),
];

/// The position of column `name` in [`COLUMNS`] (and so in every `SELECT` of [`ROW_COLUMNS`]);
/// evaluated at compile time where used in a `const`, so a misspelt name does not build.
pub(crate) const fn column_index(name: &str) -> usize {
    let mut i = 0;
    while i < COLUMNS.len() {
        if str_eq(COLUMNS[i].name, name) {
            return i;
        }
        i += 1;
    }
    panic!("no such column in mcp_logs")
}

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// `CREATE TABLE mcp_logs (…)` from [`COLUMNS`].
pub(crate) fn create_table_sql() -> String {
    let cols: Vec<String> = COLUMNS
        .iter()
        .map(|c| format!("    {} {}", c.name, c.sql))
        .collect();
    format!("CREATE TABLE mcp_logs (\n{}\n);\n", cols.join(",\n"))
}

/// Every column of `mcp_logs`, in [`COLUMNS`] order, for `SELECT`s that read whole rows.
pub(crate) static ROW_COLUMNS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    COLUMNS
        .iter()
        .map(|c| c.name)
        .collect::<Vec<_>>()
        .join(", ")
});

/// The first column of chain v2: the columns from here on (up to the links) came with it.
pub(crate) const FIRST_V2_COLUMN: usize = column_index("confirmation_outcome");

/// Every column of `mcp_logs` in [`COLUMNS`] order, like [`ROW_COLUMNS`], with `NULL` in place
/// of the columns a store opened read-only has not been migrated to yet.
pub(crate) fn row_select(conn: &Connection) -> rusqlite::Result<String> {
    let live = live_columns(conn)?;
    Ok(COLUMNS
        .iter()
        .map(|c| match live.iter().any(|l| l == c.name) {
            true => c.name.to_owned(),
            false => format!("NULL AS {}", c.name),
        })
        .collect::<Vec<_>>()
        .join(", "))
}

/// `name` when the store has that column, else `NULL` (for queries on unmigrated stores).
pub(crate) fn column_or_null(conn: &Connection, name: &str) -> rusqlite::Result<String> {
    Ok(match live_columns(conn)?.iter().any(|l| l == name) {
        true => name.to_owned(),
        false => format!("NULL AS {name}"),
    })
}

fn live_columns(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached("SELECT name FROM pragma_table_info('mcp_logs')")?;
    let names = stmt.query_map([], |r| r.get(0))?;
    names.collect()
}

/// The `SELECT` list of [`query_columns`], with `NULL` for columns an unmigrated store lacks.
pub(crate) fn query_select(conn: &Connection) -> rusqlite::Result<String> {
    query_columns()
        .map(|c| column_or_null(conn, c))
        .collect::<rusqlite::Result<Vec<_>>>()
        .map(|v| v.join(", "))
}

/// The columns `audit query` returns, in [`COLUMNS`] order.
pub(crate) fn query_columns() -> impl Iterator<Item = &'static str> {
    COLUMNS.iter().filter(|c| c.queried).map(|c| c.name)
}

/// The row insert: every column, skipping a call already stored.
fn insert_sql() -> String {
    let marks: Vec<String> = (1..=COLUMNS.len()).map(|i| format!("?{i}")).collect();
    format!(
        "INSERT INTO mcp_logs ({}) VALUES ({}) ON CONFLICT DO NOTHING",
        *ROW_COLUMNS,
        marks.join(", ")
    )
}

/// How hard each commit is pushed to disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// fsync the WAL on every commit: an acknowledged row survives a power cut. The default.
    #[default]
    Full,
    /// WAL without fsync on commit: survives a process crash (kill -9), not a power cut.
    Normal,
}

/// The newest row of the chain: what the next row links to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainHead {
    /// 0 when the store is empty.
    pub id: i64,
    /// The row's chain hash; all zeros (the genesis hash) when the store is empty.
    pub hash: [u8; 32],
}

impl ChainHead {
    pub(crate) fn hash_hex(&self) -> String {
        chain::to_hex(&self.hash)
    }
}

/// RFC 3339 UTC with milliseconds and `Z`: the one timestamp format of the store.
pub(crate) fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Opens (creating when absent) the store for writing: WAL, the schema, the meta rows.
pub(crate) fn open_rw(path: &Path, durability: Durability) -> Result<Connection, AuditError> {
    let conn = Connection::open(path).map_err(|e| AuditError::Open {
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    let sync = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    let sql = |e| AuditError::sqlite(path, "configuring the connection", e);
    conn.busy_timeout(Duration::from_secs(2)).map_err(sql)?;
    // 16 KiB pages for a new store (an existing one keeps its own): rows are several hundred
    // bytes, and audited ingest spent about a tenth less CPU per call than with 4 KiB pages
    // (docs/benchmarks.md, "Audit"). A page cache and a memory map large enough for the
    // indexes' working set (duplicate checks and the full-text index read pages all over the
    // file).
    conn.execute_batch(&format!(
        "PRAGMA page_size = 16384; \
         PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync}; PRAGMA foreign_keys = OFF; \
         PRAGMA cache_size = -65536; PRAGMA mmap_size = 268435456; PRAGMA temp_store = MEMORY;"
    ))
    .map_err(sql)?;
    ensure_schema(&conn, path)?;
    Ok(conn)
}

/// Opens an existing store read-only (`audit verify`, `review`, `query`, `sql`).
pub fn open_ro(path: &Path) -> Result<Connection, AuditError> {
    if !path.exists() {
        return Err(AuditError::Missing {
            path: path.to_path_buf(),
        });
    }
    // Readers write their read marks into the mapped `-shm` too.
    super::writable::check(path)?;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| AuditError::Open {
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| AuditError::sqlite(path, "configuring the connection", e))?;
    let has_meta: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'mcp_logs')",
            [],
            |r| r.get(0),
        )
        .map_err(|e| AuditError::NotAStore {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if !has_meta {
        return Err(AuditError::NotAStore {
            path: path.to_path_buf(),
            reason: "it has no `mcp_logs` table".to_owned(),
        });
    }
    Ok(conn)
}

fn ensure_schema(conn: &Connection, path: &Path) -> Result<(), AuditError> {
    let sql = |context| move |e| AuditError::sqlite(path, context, e);
    let exists: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'audit_meta')",
            [],
            |r| r.get(0),
        )
        .map_err(sql("reading the schema"))?;
    if !exists {
        let mut ddl = String::from("BEGIN IMMEDIATE;");
        ddl.push_str(&create_table_sql());
        ddl.push_str(SCHEMA);
        ddl.push_str(super::rollup::schema());
        for (_, trigger) in TRIGGERS {
            ddl.push_str(trigger);
            ddl.push_str(";\n");
        }
        let mut chain_id = [0u8; 16];
        rand::fill(&mut chain_id);
        ddl.push_str(&format!(
            "INSERT INTO audit_meta VALUES ('chain_version', '{}'), ('chain_id', '{}'), \
             ('created_at', '{}'); COMMIT;",
            chain::CHAIN_VERSION,
            crate::hex::encode(&chain_id),
            format_time(Utc::now()),
        ));
        if let Err(e) = conn.execute_batch(&ddl) {
            let _ = conn.execute_batch("ROLLBACK");
            // Another process may have created it first; that is fine if it now exists.
            let now: bool = conn
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'audit_meta')",
                    [],
                    |r| r.get(0),
                )
                .unwrap_or(false);
            if !now {
                return Err(AuditError::sqlite(path, "creating the schema", e));
            }
        }
    }
    // `chain_version` is the version the store was created with; rows carry their own.
    let version = meta(conn, path, "chain_version")?;
    let readable = version
        .as_deref()
        .and_then(|v| v.parse::<u32>().ok())
        .is_some_and(|v| chain::READABLE_VERSIONS.contains(&v));
    if !readable {
        return Err(AuditError::NotAStore {
            path: path.to_path_buf(),
            reason: format!(
                "chain_version is {version:?}; this build reads versions {:?}",
                chain::READABLE_VERSIONS
            ),
        });
    }
    conn.execute_batch(MIGRATIONS)
        .map_err(sql("bringing the schema up to date"))?;
    super::rollup::ensure(conn).map_err(sql("building the console rollup"))?;
    // A store from before chain v2 gets its columns; its rows keep verifying as v1 rows.
    let live = live_columns(conn).map_err(sql("reading the schema"))?;
    let missing: Vec<&Column> = COLUMNS[FIRST_V2_COLUMN..]
        .iter()
        .filter(|c| c.chained && !live.iter().any(|l| l == c.name))
        .collect();
    if !missing.is_empty() {
        let mut ddl = String::from("BEGIN IMMEDIATE;");
        for c in &missing {
            ddl.push_str(&format!(
                "ALTER TABLE mcp_logs ADD COLUMN {} {};",
                c.name, c.sql
            ));
        }
        ddl.push_str(&format!(
            "INSERT INTO audit_meta VALUES ('chain_v2_since', '{}') ON CONFLICT DO NOTHING; \
             COMMIT;",
            format_time(Utc::now())
        ));
        if let Err(e) = conn.execute_batch(&ddl) {
            let _ = conn.execute_batch("ROLLBACK");
            // Another writer may have migrated it first.
            let now = live_columns(conn).map_err(sql("reading the schema"))?;
            if missing.iter().any(|c| !now.iter().any(|l| l == c.name)) {
                return Err(AuditError::sqlite(path, "migrating to chain v2", e));
            }
        }
    }
    Ok(())
}

/// A value of `audit_meta`.
pub(crate) fn meta(
    conn: &Connection,
    path: &Path,
    key: &str,
) -> Result<Option<String>, AuditError> {
    conn.query_row("SELECT value FROM audit_meta WHERE key = ?1", [key], |r| {
        r.get(0)
    })
    .optional()
    .map_err(|e| AuditError::sqlite(path, "reading audit_meta", e))
}

/// Records a value of `audit_meta` once; the triggers refuse changing it later.
pub(crate) fn set_meta(
    conn: &Connection,
    path: &Path,
    key: &str,
    value: &str,
) -> Result<(), AuditError> {
    conn.execute(
        "INSERT INTO audit_meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
        [key, value],
    )
    .map(drop)
    .map_err(|e| AuditError::sqlite(path, "writing audit_meta", e))
}

/// The chain's random id, bound into every checkpoint signature.
pub(crate) fn chain_id(conn: &Connection, path: &Path) -> Result<String, AuditError> {
    meta(conn, path, "chain_id")?.ok_or_else(|| AuditError::NotAStore {
        path: path.to_path_buf(),
        reason: "audit_meta has no chain_id".to_owned(),
    })
}

/// The newest row, or the last pruned row (from the latest retention checkpoint) when every
/// row has been pruned, or the genesis link.
pub(crate) fn head(conn: &Connection) -> rusqlite::Result<ChainHead> {
    let last: Option<(i64, String)> = conn
        .prepare_cached("SELECT id, hash FROM mcp_logs ORDER BY id DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let last = match last {
        Some(row) => Some(row),
        None => conn
            .prepare_cached(
                "SELECT row_id, row_hash FROM audit_checkpoints WHERE kind = 'retention' \
                 ORDER BY seq DESC LIMIT 1",
            )?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?,
    };
    Ok(match last {
        // A hash that does not parse is tampering; verify reports it. The writer links to the
        // zero hash, which keeps appending possible and leaves the break visible.
        Some((id, hash)) => ChainHead {
            id,
            hash: chain::from_hex(&hash).unwrap_or(chain::GENESIS_HASH),
        },
        None => ChainHead {
            id: 0,
            hash: chain::GENESIS_HASH,
        },
    })
}

/// The checkpoints, oldest first. Rows that do not parse are returned as `Err(seq, reason)`.
pub(crate) fn checkpoints(
    conn: &Connection,
) -> rusqlite::Result<Vec<Result<Checkpoint, (i64, String)>>> {
    let mut stmt = conn.prepare(
        "SELECT seq, kind, row_id, row_hash, created_at, prev_digest, signature \
         FROM audit_checkpoints ORDER BY seq",
    )?;
    let rows = stmt.query_map([], |r| {
        let seq: i64 = r.get(0)?;
        let kind: String = r.get(1)?;
        let row_hash: String = r.get(3)?;
        let prev: String = r.get(5)?;
        let sig: String = r.get(6)?;
        let parsed = (|| {
            Some(Checkpoint {
                seq,
                kind: CheckpointKind::parse(&kind)?,
                row_id: r.get(2).ok()?,
                row_hash: chain::from_hex(&row_hash)?,
                created_at: r.get(4).ok()?,
                prev_digest: chain::from_hex(&prev)?,
                signature: super::sign::signature_from_hex(&sig)?,
            })
        })();
        Ok(parsed.ok_or((seq, "a field does not parse".to_owned())))
    })?;
    rows.collect()
}

/// The latest checkpoint, if any (the writer's view; verify reads them all).
pub(crate) fn last_checkpoint(conn: &Connection) -> rusqlite::Result<Option<Checkpoint>> {
    let row: Option<(i64, String, i64, String, String, String, String)> = conn
        .prepare_cached(
            "SELECT seq, kind, row_id, row_hash, created_at, prev_digest, signature \
             FROM audit_checkpoints ORDER BY seq DESC LIMIT 1",
        )?
        .query_row([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })
        .optional()?;
    Ok(
        row.and_then(|(seq, kind, row_id, hash, created_at, prev, sig)| {
            Some(Checkpoint {
                seq,
                kind: CheckpointKind::parse(&kind)?,
                row_id,
                row_hash: chain::from_hex(&hash)?,
                created_at,
                prev_digest: chain::from_hex(&prev)?,
                signature: super::sign::signature_from_hex(&sig)?,
            })
        }),
    )
}

pub(crate) fn insert_checkpoint(conn: &Connection, cp: &Checkpoint) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO audit_checkpoints \
         (seq, kind, row_id, row_hash, created_at, prev_digest, signature) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        cp.seq,
        cp.kind.as_str(),
        cp.row_id,
        chain::to_hex(&cp.row_hash),
        cp.created_at,
        chain::to_hex(&cp.prev_digest),
        crate::hex::encode(&cp.signature),
    ])
    .map(drop)
}

/// A [`ToolCall`] turned into the text the store keeps; [`StoredCall::fields`] borrows it for
/// hashing and inserting. Its texts are one string, cut into the columns: one allocation per
/// call rather than one per column (this is built for every audited call on the exporting
/// thread, and freed after the commit).
#[derive(Clone, Debug, Default)]
pub(crate) struct StoredCall {
    /// Every text of the row, one after the other; the `Cut`s below are ranges of it.
    text: String,
    timestamp: Cut,
    /// Unix seconds of `timestamp` (what [`rollup::second_of`](super::rollup::second_of) reads
    /// from it), for the console rollup: worked out here, on the caller's thread, so that the
    /// writer thread does not parse every row's timestamp again.
    pub(crate) second: Option<i64>,
    tool_name: Cut,
    user: Cut,
    pub(crate) status: &'static str,
    pub(crate) duration_ms: f64,
    error_code: Option<Cut>,
    pub(crate) operation_type: Option<&'static str>,
    resource_id: Option<Cut>,
    before_state: Option<Cut>,
    after_state: Option<Cut>,
    pub(crate) user_confirmation: Option<bool>,
    context: Option<Cut>,
    trace_id: Cut,
    span_id: Cut,
    parent_span_id: Option<Cut>,
    mcp: Option<Cut>,
    result: Option<Cut>,
    pub(crate) confirmation_outcome: Option<&'static str>,
    pub(crate) confirmation_source: Option<&'static str>,
    confirmation_arguments_digest: Option<Cut>,
    pub(crate) confirmation_wait_ms: Option<f64>,
}

/// A column's range of [`StoredCall::text`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Cut {
    start: usize,
    end: usize,
}

/// [`StoredCall::text`] as it is written: each column appended, its range handed back.
struct Texts(String);

impl Texts {
    fn push(&mut self, s: &str) -> Cut {
        self.write(|t| t.push_str(s))
    }

    fn write(&mut self, f: impl FnOnce(&mut String)) -> Cut {
        let start = self.0.len();
        f(&mut self.0);
        Cut {
            start,
            end: self.0.len(),
        }
    }

    /// `v`'s compact JSON text, the same bytes as `Value::to_string` prints.
    fn json(&mut self, v: &Value) -> Cut {
        self.write(|t| {
            let start = t.len();
            // A `Value` always serialises (its map keys are strings), and serde_json writes
            // whole UTF-8 pieces; the fallback is never taken.
            if serde_json::to_writer(StrWriter(t), v).is_err() {
                t.truncate(start);
                t.push_str(&v.to_string());
            }
        })
    }
}

/// `io::Write` into a `String`, for serde_json's writer: each piece it writes is UTF-8 text.
struct StrWriter<'a>(&'a mut String);

impl std::io::Write for StrWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let s = std::str::from_utf8(buf).map_err(std::io::Error::other)?;
        self.0.push_str(s);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Accessors of the texts of a [`StoredCall`].
macro_rules! texts {
    (required: $($r:ident),*; optional: $($o:ident),*) => {
        $(
            pub(crate) fn $r(&self) -> &str {
                self.cut(self.$r)
            }
        )*
        $(
            pub(crate) fn $o(&self) -> Option<&str> {
                self.$o.map(|c| self.cut(c))
            }
        )*
    };
}

impl StoredCall {
    pub(crate) fn from_call(call: &ToolCall) -> Self {
        Self::from_call_at(call, call.timestamp)
    }

    /// [`from_call`](Self::from_call) with `timestamp` stored as the call's start.
    pub(crate) fn from_call_at(call: &ToolCall, timestamp: DateTime<Utc>) -> Self {
        let write = call.write.as_ref();
        let mut t = Texts(String::with_capacity(
            160 + call.tool_name.len() + call.user.len(),
        ));
        let time = t.write(|t| push_time(t, timestamp));
        let text = |t: &mut Texts, s: &Option<String>| s.as_deref().map(|s| t.push(s));
        let json = |t: &mut Texts, v: &Option<Value>| v.as_ref().map(|v| t.json(v));
        let mut stored = StoredCall {
            timestamp: time,
            second: None,
            tool_name: t.push(&call.tool_name),
            user: t.push(&call.user),
            status: call.status.as_str(),
            // SQLite stores NaN as NULL; a duration that is not a number is recorded as 0.
            duration_ms: if call.duration_ms.is_finite() {
                call.duration_ms
            } else {
                0.0
            },
            error_code: text(&mut t, &call.error_code),
            operation_type: call.operation_type().map(|o| o.as_str()),
            resource_id: write.and_then(|w| text(&mut t, &w.resource_id)),
            before_state: write.and_then(|w| json(&mut t, &w.before_state)),
            after_state: write.and_then(|w| json(&mut t, &w.after_state)),
            user_confirmation: write.and_then(|w| w.user_confirmation),
            context: json(&mut t, &call.context),
            trace_id: t.write(|t| crate::hex::push(t, &call.ids.trace_id)),
            span_id: t.write(|t| crate::hex::push(t, &call.ids.span_id)),
            parent_span_id: call
                .ids
                .has_parent()
                .then(|| t.write(|t| crate::hex::push(t, &call.ids.parent_span_id))),
            mcp: None,
            result: json(&mut t, &call.result),
            confirmation_outcome: call.confirmation.as_ref().map(|c| c.outcome.as_str()),
            confirmation_source: call
                .confirmation
                .as_ref()
                .and_then(|c| c.source.map(|s| s.as_str())),
            confirmation_arguments_digest: call
                .confirmation
                .as_ref()
                .and_then(|c| text(&mut t, &c.arguments_digest)),
            confirmation_wait_ms: call
                .confirmation
                .as_ref()
                .and_then(|c| c.wait_ms)
                .filter(|ms| ms.is_finite()),
            text: String::new(),
        };
        let mcp = t.write(|t| mcp_json(call, t));
        stored.mcp = (mcp.end > mcp.start).then_some(mcp);
        stored.text = t.0;
        stored.second = second_of_formatted(stored.timestamp(), timestamp);
        stored
    }

    fn cut(&self, c: Cut) -> &str {
        // Cuts are made at the ends of whole pieces of text.
        self.text.get(c.start..c.end).unwrap_or_default()
    }

    texts!(
        required: timestamp, tool_name, user, trace_id, span_id;
        optional: error_code, resource_id, before_state, after_state, context, parent_span_id,
            mcp, result, confirmation_arguments_digest
    );

    /// The row as hashed and inserted, at `id`, committed at `recorded_at`.
    pub(crate) fn fields<'a>(&'a self, id: i64, recorded_at: &'a str) -> RowFields<'a> {
        RowFields {
            id,
            timestamp: self.timestamp(),
            tool_name: self.tool_name(),
            user: self.user(),
            status: self.status,
            duration_ms: self.duration_ms,
            error_code: self.error_code(),
            operation_type: self.operation_type,
            resource_id: self.resource_id(),
            before_state: self.before_state(),
            after_state: self.after_state(),
            user_confirmation: self.user_confirmation,
            context: self.context(),
            trace_id: self.trace_id(),
            span_id: self.span_id(),
            parent_span_id: self.parent_span_id(),
            mcp: self.mcp(),
            result: self.result(),
            recorded_at,
            confirmation_outcome: self.confirmation_outcome,
            confirmation_source: self.confirmation_source,
            confirmation_arguments_digest: self.confirmation_arguments_digest(),
            confirmation_wait_ms: self.confirmation_wait_ms,
            row_version: chain::CHAIN_VERSION,
        }
    }
}

/// [`format_time`] of `t` appended to `out` (`YYYY-MM-DDTHH:MM:SS.mmmZ`), written digit by
/// digit for the usual four-digit years: chrono's formatter was a large share of building a row.
fn push_time(out: &mut String, t: DateTime<Utc>) {
    use chrono::{Datelike, Timelike};
    let year = t.year();
    // Other years, and leap seconds, are left to chrono.
    if !(0..=9999).contains(&year) || t.nanosecond() >= 1_000_000_000 {
        out.push_str(&format_time(t));
        return;
    }
    let mut put = |v: u32, width: u32, then: char| {
        for i in (0..width).rev() {
            out.push(char::from(b'0' + (v / 10u32.pow(i) % 10) as u8));
        }
        out.push(then);
    };
    put(year.unsigned_abs(), 4, '-');
    put(t.month(), 2, '-');
    put(t.day(), 2, 'T');
    put(t.hour(), 2, ':');
    put(t.minute(), 2, ':');
    put(t.second(), 2, '.');
    put(t.nanosecond() / 1_000_000, 3, 'Z');
}

/// The second [`rollup::second_of`](super::rollup::second_of) reads from `text`, the store's
/// rendering of `t`: `t`'s own when the text has the store's usual shape (a four-digit year,
/// `YYYY-MM-DDTHH:MM:SS.mmmZ`), else parsed from it (years the format renders otherwise).
fn second_of_formatted(text: &str, t: DateTime<Utc>) -> Option<i64> {
    let usual = text.len() == 24 && text.as_bytes()[..4].iter().all(u8::is_ascii_digit);
    match usual {
        true => Some(t.timestamp()),
        false => super::rollup::second_of(text),
    }
}

/// What MCP knows about the call that has no seed column: one JSON object, absent fields left
/// out, keys in byte order (as a `serde_json` object prints them), appended to `out`; nothing
/// when every field is absent. Written straight into the row's text: this runs once per stored
/// call, on the exporting thread.
fn mcp_json(call: &ToolCall, out: &mut String) {
    let m = &call.mcp;
    fn text(s: &Option<String>) -> Option<JsonField<'_>> {
        s.as_deref().map(JsonField::Text)
    }
    let flag = |b: Option<bool>| b.map(JsonField::Flag);
    // In key order.
    let fields = [
        ("client_address", text(&m.client_address)),
        ("client_name", text(&m.client_name)),
        ("client_version", text(&m.client_version)),
        ("destructive_hint", flag(call.destructive_hint)),
        (
            "method",
            (!m.method.is_empty()).then_some(JsonField::Text(&m.method)),
        ),
        ("protocol_version", text(&m.protocol_version)),
        ("read_only_hint", flag(call.read_only_hint)),
        ("request_id", text(&m.request_id)),
        ("session_id", text(&m.session_id)),
        (
            "transport",
            m.transport.map(|t| JsonField::Text(t.network_transport())),
        ),
    ];
    let start = out.len();
    for (key, value) in fields {
        let Some(value) = value else { continue };
        out.push(if out.len() == start { '{' } else { ',' });
        out.push('"');
        out.push_str(key);
        out.push_str("\":");
        match value {
            JsonField::Text(s) => {
                let at = out.len();
                // A string always serialises; the fallback is never taken.
                if serde_json::to_writer(StrWriter(out), s).is_err() {
                    out.truncate(at);
                    out.push_str(&Value::from(s).to_string());
                }
            }
            JsonField::Flag(b) => out.push_str(if b { "true" } else { "false" }),
        }
    }
    if out.len() > start {
        out.push('}');
    }
}

/// A value of [`mcp_json`].
#[derive(Clone, Copy)]
enum JsonField<'a> {
    Text(&'a str),
    Flag(bool),
}

/// The newest row the full-text index holds, 0 when it holds none, as an SQL expression. Rows
/// are indexed in id order, a whole batch per transaction ([`index_text`]), so every row with
/// text up to it is indexed and none after it: the rows after it are the unindexed tail, which
/// `audit query --text` reads without the index.
pub(crate) const INDEXED_THROUGH: &str = "(SELECT coalesce(max(id), 0) FROM mcp_logs_fts_docsize)";

/// Adds to the full-text index every row after [`INDEXED_THROUGH`] and after row `after` (a row
/// the caller knows to be indexed through, 0 when it knows none) that has text to search, in id
/// order, inside the caller's transaction; returns how many. The writer calls it every few
/// thousand rows (or about once a second) rather than for every row: the index pays for its
/// flush and segment merges once per transaction that writes to it, and a group commit of a
/// few hundred rows paid them for a handful of terms each. (`after` spares the writer reading
/// again the rows without text after the newest indexed one.)
pub(crate) fn index_text(conn: &Connection, after: i64) -> rusqlite::Result<usize> {
    let tail = format!(
        "FROM mcp_logs WHERE id > max(?1, {INDEXED_THROUGH}) AND (context IS NOT NULL \
         OR before_state IS NOT NULL OR after_state IS NOT NULL)"
    );
    // Read first: with nothing to add, nothing is written (nor the file locked for writing).
    let pending: bool = conn
        .prepare_cached(&format!("SELECT EXISTS (SELECT 1 {tail})"))?
        .query_row([after], |r| r.get(0))?;
    if !pending {
        return Ok(0);
    }
    conn.prepare_cached(&format!(
        "INSERT INTO mcp_logs_fts (rowid, context, before_state, after_state) \
         SELECT id, context, before_state, after_state {tail} ORDER BY id"
    ))?
    .execute([after])
}

/// Inserts rows into `mcp_logs`, with the statements prepared once per transaction. The
/// full-text index follows in batches ([`index_text`]).
pub(crate) struct RowInserter<'c> {
    conn: &'c Connection,
    /// The console rollup's changes for the inserted rows, applied by [`RowInserter::finish`].
    rollup: super::rollup::Delta,
    row: rusqlite::CachedStatement<'c>,
    id_taken: rusqlite::CachedStatement<'c>,
    /// The stored call that holds a key, for confirming that a skipped row is the same call.
    holder: rusqlite::CachedStatement<'c>,
    /// The store still has the ids-only key of an earlier build (a clash need not share the
    /// start time). Asked of the schema on the first clash of the transaction, not for every
    /// transaction: most commit none.
    ids_only_key: Option<bool>,
}

/// The columns a resend of the same span reproduces (all but the row id, the time it was
/// recorded and the links), in the order both stores read them back.
pub(crate) const SAME_CALL: [&str; 14] = same_call();

/// [`SAME_CALL`] from [`COLUMNS`]: the chain v1 columns but the span's identity (`timestamp`,
/// `trace_id`, `span_id`), the row id and `recorded_at`.
const fn same_call() -> [&'static str; 14] {
    let mut out = [""; 14];
    let (mut i, mut n) = (0, 0);
    while i < FIRST_V2_COLUMN {
        let name = COLUMNS[i].name;
        let kept = !(str_eq(name, "id")
            || str_eq(name, "timestamp")
            || str_eq(name, "trace_id")
            || str_eq(name, "span_id")
            || str_eq(name, "recorded_at"));
        if kept {
            // More than 14 does not build.
            out[n] = name;
            n += 1;
        }
        i += 1;
    }
    assert!(
        n == out.len(),
        "SAME_CALL lists every column a resend reproduces"
    );
    out
}

impl<'c> RowInserter<'c> {
    pub(crate) fn new(conn: &'c Connection) -> rusqlite::Result<Self> {
        Ok(RowInserter {
            conn,
            rollup: super::rollup::Delta::default(),
            row: conn.prepare_cached(&insert_sql())?,
            id_taken: conn
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM mcp_logs WHERE id = ?1)")?,
            // The time-led key, else the ids-only key of a store from before it.
            holder: conn.prepare_cached(&format!(
                "SELECT {}, timestamp FROM mcp_logs \
                 WHERE trace_id = ?2 AND span_id = ?3 ORDER BY timestamp = ?1 DESC, id LIMIT 1",
                SAME_CALL.join(", ")
            ))?,
            ids_only_key: None,
        })
    }

    /// Whether the store still has the ids-only key of an earlier build.
    fn ids_only_key(&mut self) -> rusqlite::Result<bool> {
        if let Some(known) = self.ids_only_key {
            return Ok(known);
        }
        let found = self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM pragma_index_list('mcp_logs') AS l \
             WHERE l.\"unique\" AND (SELECT group_concat(name) FROM \
             pragma_index_info(l.name)) = 'trace_id,span_id')",
            [],
            |r| r.get(0),
        )?;
        self.ids_only_key = Some(found);
        Ok(found)
    }

    /// Inserts one row unless the same call is already stored: same (timestamp, trace_id,
    /// span_id), or, in a store created before that key, same (trace_id, span_id). Returns
    /// whether it was new. `second` is the Unix second of `row.timestamp` (`None`: not one the
    /// rollup can place), for the console rollup.
    ///
    /// A row is skipped only when the call holding its key is confirmed to be the same call
    /// (a resend: every column equal, or absent from the resend); anything else that stores
    /// nothing is an error, never a silently skipped row: a different call claiming the same
    /// identity, an insert that something in the database ignored (a `RAISE(IGNORE)` trigger
    /// nobody should have added), a clash on the row id (another writer on the same file).
    pub(crate) fn insert(
        &mut self,
        row: &RowFields<'_>,
        second: Option<i64>,
        prev_hash: &str,
        hash: &str,
    ) -> rusqlite::Result<bool> {
        let values = row.values();
        let links: [&dyn rusqlite::ToSql; 2] = [&prev_hash, &hash];
        let n = self
            .row
            .execute(rusqlite::params_from_iter(values.iter().chain(&links)))?;
        let refused = |code, message: String| {
            rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), Some(message))
        };
        if n == 0 && self.id_taken.query_row([row.id], |r| r.get::<_, bool>(0))? {
            return Err(refused(
                rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY,
                format!(
                    "row id {} is already taken: is another writer appending to this file?",
                    row.id
                ),
            ));
        }
        if n == 0 {
            let ids_only_key = self.ids_only_key()?;
            let holder = self
                .holder
                .query_row(params![row.timestamp, row.trace_id, row.span_id], |r| {
                    let same_start =
                        ids_only_key || r.get_ref(14)?.as_str().ok() == Some(row.timestamp);
                    Ok(differs_from_holder(row, r).and(if same_start {
                        Ok(())
                    } else {
                        Err("timestamp")
                    }))
                })
                .optional()?;
            match holder {
                Some(Ok(())) => {}
                Some(Err(column)) => {
                    return Err(refused(
                        rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE,
                        format!(
                            "a different call already holds span {}/{} started {} (its \
                             `{column}` differs): not stored",
                            row.trace_id, row.span_id, row.timestamp
                        ),
                    ));
                }
                None => {
                    return Err(refused(
                        rusqlite::ffi::SQLITE_CONSTRAINT_TRIGGER,
                        format!(
                            "the database ignored the insert of span {}/{} (no row stored, none \
                             held its key): is an extra trigger censoring mcp_logs? Run `mcp-otel \
                             audit verify`",
                            row.trace_id, row.span_id
                        ),
                    ));
                }
            }
        }
        if n == 1 {
            self.count(row, second);
        }
        Ok(n == 1)
    }

    /// Counts a row inserted into the transaction into the console rollup (`second` as for
    /// [`RowInserter::insert`]). `insert` does for its rows; rows inserted otherwise
    /// (`bulk`) are counted here.
    pub(crate) fn count(&mut self, row: &RowFields<'_>, second: Option<i64>) {
        let Some(second) = second else { return };
        self.rollup.add(
            &super::rollup::CountedCall {
                second,
                tool_name: row.tool_name,
                user: row.user,
                status: row.status,
                duration_ms: row.duration_ms,
                error_code: row.error_code,
                operation_type: row.operation_type,
            },
            1,
        );
    }
}

impl RowInserter<'_> {
    /// Counts the inserted rows into the console rollup: call once, inside the transaction
    /// that inserted them, before it commits.
    pub(crate) fn finish(self) -> rusqlite::Result<()> {
        self.rollup.apply(self.conn)
    }
}

/// `Ok` when the stored row `r` (the [`SAME_CALL`] columns) is the call `row` resends, else the
/// first column that differs. A column the resend lacks matches anything: a record that a
/// collector enriched from another instrumentation's twin is still the same call.
fn differs_from_holder(row: &RowFields<'_>, r: &rusqlite::Row<'_>) -> Result<(), &'static str> {
    use rusqlite::types::ValueRef;
    fn text<'a>(r: &'a rusqlite::Row<'_>, i: usize) -> Option<&'a str> {
        match r.get_ref(i) {
            Ok(ValueRef::Text(t)) => std::str::from_utf8(t).ok(),
            _ => None,
        }
    }
    let same = |want: Option<&str>, i: usize| want.is_none() || want == text(r, i);
    let stored_duration = match r.get_ref(3) {
        Ok(ValueRef::Real(f)) => Some(f),
        Ok(ValueRef::Integer(n)) => Some(n as f64),
        _ => None,
    };
    let stored_confirmation = match r.get_ref(9) {
        Ok(ValueRef::Integer(n)) => Some(n != 0),
        _ => None,
    };
    let checks: [(&'static str, bool); 14] = [
        ("tool_name", same(Some(row.tool_name), 0)),
        ("user", same(Some(row.user), 1)),
        ("status", same(Some(row.status), 2)),
        ("duration_ms", stored_duration == Some(row.duration_ms)),
        ("error_code", same(row.error_code, 4)),
        ("operation_type", same(row.operation_type, 5)),
        ("resource_id", same(row.resource_id, 6)),
        ("before_state", same(row.before_state, 7)),
        ("after_state", same(row.after_state, 8)),
        (
            "user_confirmation",
            row.user_confirmation.is_none() || row.user_confirmation == stored_confirmation,
        ),
        ("context", same(row.context, 10)),
        ("parent_span_id", same(row.parent_span_id, 11)),
        ("mcp", same(row.mcp, 12)),
        ("result", same(row.result, 13)),
    ];
    match checks.iter().find(|(_, ok)| !ok) {
        Some((column, _)) => Err(column),
        None => Ok(()),
    }
}

/// Reads a stored row back as a JSON object (for `query --json`, `sql --json` and gRPC).
pub(crate) fn row_to_json(
    stmt_columns: &[String],
    row: &rusqlite::Row<'_>,
) -> rusqlite::Result<Value> {
    use rusqlite::types::ValueRef;
    let mut o = Map::new();
    for (i, name) in stmt_columns.iter().enumerate() {
        let v = match row.get_ref(i)? {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(n) if name == "user_confirmation" => Value::from(n != 0),
            ValueRef::Integer(n) => Value::from(n),
            ValueRef::Real(f) => Value::from(f),
            ValueRef::Text(t) => {
                let s = String::from_utf8_lossy(t);
                // JSON columns come back as JSON, not as strings holding JSON.
                if matches!(
                    name.as_str(),
                    "context" | "before_state" | "after_state" | "mcp" | "result"
                ) {
                    serde_json::from_str(&s).unwrap_or(Value::String(s.into_owned()))
                } else {
                    Value::String(s.into_owned())
                }
            }
            ValueRef::Blob(b) => Value::String(crate::hex::encode(b)),
        };
        o.insert(name.clone(), v);
    }
    Ok(Value::Object(o))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::{RowFields, RowHasher};

    #[test]
    fn the_column_table_is_the_schema_sqlite_has() {
        let (_dir, path) = crate::testing::temp_path("a.db");
        let conn = open_rw(&path, Durability::Normal).unwrap();
        ensure_schema(&conn, &path).unwrap();
        let mut stmt = conn.prepare("PRAGMA table_info(mcp_logs)").unwrap();
        let live: Vec<(String, String, bool, bool)> = stmt
            .query_map([], |r| {
                Ok((r.get(1)?, r.get(2)?, r.get(3)?, r.get::<_, i64>(5)? > 0))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let declared: Vec<(String, String, bool, bool)> = COLUMNS
            .iter()
            .map(|c| {
                let ty = c.sql.split_whitespace().next().unwrap().to_owned();
                let not_null = c.sql.contains("NOT NULL");
                (
                    c.name.to_owned(),
                    ty,
                    not_null,
                    c.sql.contains("PRIMARY KEY"),
                )
            })
            .collect();
        assert_eq!(live, declared);
    }

    /// The `mcp` column as it was built before it was written directly: a `serde_json` object.
    fn mcp_json_by_map(call: &ToolCall) -> Option<String> {
        let m = &call.mcp;
        let mut o = Map::new();
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                o.insert(k.to_owned(), v);
            }
        };
        put(
            "method",
            (!m.method.is_empty()).then(|| Value::from(m.method.clone())),
        );
        put("request_id", m.request_id.clone().map(Value::from));
        put("session_id", m.session_id.clone().map(Value::from));
        put(
            "protocol_version",
            m.protocol_version.clone().map(Value::from),
        );
        put("client_name", m.client_name.clone().map(Value::from));
        put("client_version", m.client_version.clone().map(Value::from));
        put(
            "transport",
            m.transport.map(|t| Value::from(t.network_transport())),
        );
        put("client_address", m.client_address.clone().map(Value::from));
        put("read_only_hint", call.read_only_hint.map(Value::from));
        put("destructive_hint", call.destructive_hint.map(Value::from));
        (!o.is_empty()).then(|| Value::Object(o).to_string())
    }

    proptest::proptest! {
        #[test]
        fn the_mcp_column_is_the_text_a_json_object_prints(
            call in crate::record::tests_support::arb_tool_call(),
            quirky in "[\\x00-\\x7f\"\\\\é\u{2028}]{0,12}",
            empty_method: bool,
        ) {
            let mut call = call;
            call.mcp.client_address = Some(quirky);
            if empty_method {
                call.mcp = crate::record::McpInfo::default();
                call.read_only_hint = None;
                call.destructive_hint = None;
            }
            let mut text = String::new();
            mcp_json(&call, &mut text);
            proptest::prop_assert_eq!((!text.is_empty()).then_some(text), mcp_json_by_map(&call));
            proptest::prop_assert_eq!(
                StoredCall::from_call(&call).mcp().map(str::to_owned),
                mcp_json_by_map(&call)
            );
        }

        #[test]
        fn the_json_columns_are_the_text_a_value_prints(
            call in crate::record::tests_support::arb_tool_call(),
            quirky in "[\\x00-\\x7f\"\\\\é\u{2028}]{0,12}",
            number in proptest::num::f64::NORMAL,
        ) {
            let mut call = call;
            call.context = Some(serde_json::json!({
                "quirky": quirky,
                "number": number,
                "nested": [call.context.take(), null, true, -7, u64::MAX],
            }));
            let stored = StoredCall::from_call(&call);
            let printed = |v: &Option<Value>| v.as_ref().map(Value::to_string);
            let write = call.write.as_ref();
            let owned = |s: Option<&str>| s.map(str::to_owned);
            proptest::prop_assert_eq!(owned(stored.context()), printed(&call.context));
            proptest::prop_assert_eq!(owned(stored.result()), printed(&call.result));
            proptest::prop_assert_eq!(
                owned(stored.before_state()),
                write.and_then(|w| printed(&w.before_state))
            );
            proptest::prop_assert_eq!(
                owned(stored.after_state()),
                write.and_then(|w| printed(&w.after_state))
            );
        }

        #[test]
        fn the_texts_of_a_stored_call_are_the_calls_own(
            call in crate::record::tests_support::arb_tool_call(),
            millis in -62_135_596_800_000i64..253_402_300_800_000,
            sub_milli in 0u32..1_000_000,
        ) {
            let mut call = call;
            call.timestamp = DateTime::from_timestamp_millis(millis).unwrap()
                + chrono::Duration::nanoseconds(i64::from(sub_milli));
            let stored = StoredCall::from_call(&call);
            let write = call.write.as_ref();
            proptest::prop_assert_eq!(stored.timestamp(), format_time(call.timestamp));
            proptest::prop_assert_eq!(stored.tool_name(), call.tool_name.as_str());
            proptest::prop_assert_eq!(stored.user(), call.user.as_str());
            proptest::prop_assert_eq!(stored.error_code(), call.error_code.as_deref());
            proptest::prop_assert_eq!(
                stored.resource_id(),
                write.and_then(|w| w.resource_id.as_deref())
            );
            proptest::prop_assert_eq!(stored.trace_id(), call.ids.trace_id_hex());
            proptest::prop_assert_eq!(stored.span_id(), call.ids.span_id_hex());
            proptest::prop_assert_eq!(
                stored.parent_span_id().map(str::to_owned),
                call.ids
                    .has_parent()
                    .then(|| crate::hex::encode(&call.ids.parent_span_id))
            );
            proptest::prop_assert_eq!(
                stored.confirmation_arguments_digest(),
                call.confirmation.as_ref().and_then(|c| c.arguments_digest.as_deref())
            );
        }
    }

    #[test]
    fn the_rollup_second_is_the_one_read_back_from_the_stored_timestamp() {
        let times = [
            "2026-12-01T18:59:59.999Z",
            "1969-12-31T23:59:59.500Z",
            "0001-01-01T00:00:00.000Z",
            "9999-12-31T23:59:59.999Z",
        ];
        let mut calls: Vec<ToolCall> = times
            .iter()
            .map(|t| {
                let mut c = ToolCall::new("t", "u");
                c.timestamp = t.parse().unwrap();
                c
            })
            .collect();
        // A year the format renders with a sign and five digits.
        let mut far = ToolCall::new("t", "u");
        far.timestamp = DateTime::<Utc>::MAX_UTC;
        calls.push(far);
        for call in &calls {
            let stored = StoredCall::from_call(call);
            assert_eq!(
                stored.second,
                super::super::rollup::second_of(stored.timestamp()),
                "{}",
                stored.timestamp()
            );
        }
        assert_eq!(
            StoredCall::from_call(&calls[1]).second,
            Some(-1),
            "rounded down"
        );
    }

    #[test]
    fn chained_columns_are_hashed_in_table_order() {
        let chained: Vec<&str> = COLUMNS
            .iter()
            .filter(|c| c.chained)
            .map(|c| c.name)
            .collect();
        let links: Vec<&str> = COLUMNS[chained.len()..].iter().map(|c| c.name).collect();
        assert_eq!(links, ["prev_hash", "hash"], "the links come last");
        // Every text column carries its own name: the encoding must meet them in table order.
        let row = RowFields {
            id: 1,
            timestamp: "timestamp",
            tool_name: "tool_name",
            user: "user",
            status: "status",
            duration_ms: 1.0,
            error_code: Some("error_code"),
            operation_type: Some("operation_type"),
            resource_id: Some("resource_id"),
            before_state: Some("before_state"),
            after_state: Some("after_state"),
            user_confirmation: Some(true),
            context: Some("context"),
            trace_id: "trace_id",
            span_id: "span_id",
            parent_span_id: Some("parent_span_id"),
            mcp: Some("mcp"),
            result: Some("result"),
            recorded_at: "recorded_at",
            confirmation_outcome: Some("confirmation_outcome"),
            confirmation_source: Some("confirmation_source"),
            confirmation_arguments_digest: Some("confirmation_arguments_digest"),
            confirmation_wait_ms: Some(1.0),
            row_version: 2,
        };
        let encoded = RowHasher::new().encode(&row, &[0; 32]).to_vec();
        let mut at = 0;
        for name in chained {
            if [
                "id",
                "duration_ms",
                "user_confirmation",
                "confirmation_wait_ms",
                "row_version",
            ]
            .contains(&name)
            {
                continue;
            }
            let len = u32::try_from(name.len()).unwrap().to_be_bytes();
            let tagged = [&[3u8][..], &len, name.as_bytes()].concat();
            let found = memchr::memmem::find(&encoded[at..], &tagged);
            let p = found.unwrap_or_else(|| panic!("`{name}` is not where the table puts it"));
            at += p + tagged.len();
        }
    }
}
