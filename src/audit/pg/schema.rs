//! The PostgreSQL schema: `mcp_logs` from [`COLUMNS`] (types mapped, every name quoted, since
//! `user` is a reserved word in PostgreSQL), plus `chain_id`; the chain registry
//! `audit_chains` (each chain's public key); `audit_checkpoints` per chain; and the triggers
//! that refuse UPDATE, DELETE and TRUNCATE (a DELETE passes only for rows a retention
//! checkpoint of their chain covers).
//!
//! `mcp_logs` is partitioned by day of `recorded_at` (UTC), one partition `mcp_logs_YYYYMMDD`
//! per day, so that retention drops whole days (detached concurrently, then dropped: the live
//! table is neither rewritten nor locked against inserts and reads). Each chain is recorded in
//! id order, so the days before a cutoff hold a prefix of every chain. The writers create the
//! partitions ahead of time through [`ADD_PARTITIONS`], a `SECURITY DEFINER` function of the
//! schema's owner, so that `collect`'s role needs no DDL rights. A unique index must contain
//! the partition key, so the uniqueness of a call, `(timestamp, trace_id, span_id)`, is an
//! index of each day's partition; the writer looks a batch's keys up in the recent days
//! ([`super::writer`]).
//!
//! `timestamp` and `recorded_at` are `timestamptz`, so that the seed's
//! `WHERE timestamp > NOW() - INTERVAL '1 day'` runs as written; the chain hashes them as the
//! SQLite store keeps them (RFC 3339 UTC, milliseconds), which a `timestamptz` holds exactly.
//! The JSON columns stay `text`: the hash covers the exact text stored, which `jsonb` would
//! reorder.

use super::super::chain;
use super::super::error::AuditError;
use super::super::store::{COLUMNS, Column};
use super::target::PgTarget;
use tokio_postgres::GenericClient;

/// The PostgreSQL type of a column of [`COLUMNS`].
pub(crate) fn column_type(c: &Column) -> &'static str {
    match (c.name, c.sql) {
        ("id", _) => "BIGINT NOT NULL",
        ("timestamp" | "recorded_at", _) => "TIMESTAMPTZ NOT NULL",
        ("user_confirmation", _) => "BOOLEAN",
        (_, "INTEGER") => "BIGINT",
        (_, "REAL") => "DOUBLE PRECISION",
        (_, "REAL NOT NULL") => "DOUBLE PRECISION NOT NULL",
        (_, sql) => sql,
    }
}

/// The element type of a column in an `unnest($n::type[])` insert.
pub(crate) fn array_type(c: &Column) -> &'static str {
    column_type(c)
        .trim_end_matches(" NOT NULL")
        .trim_end_matches(" PRIMARY KEY")
}

/// The type of a column of [`COLUMNS`] as `information_schema.columns.data_type` names it.
pub(crate) fn data_type(c: &Column) -> &'static str {
    match array_type(c) {
        "BIGINT" => "bigint",
        "TIMESTAMPTZ" => "timestamp with time zone",
        "TEXT" => "text",
        "DOUBLE PRECISION" => "double precision",
        "BOOLEAN" => "boolean",
        other => other,
    }
}

/// `"name"`: every column quoted, so `user` is the column, not the current role.
pub(crate) fn quoted(name: &str) -> String {
    format!("\"{name}\"")
}

/// Every column of [`COLUMNS`], quoted, in order.
pub(crate) fn row_columns() -> String {
    COLUMNS
        .iter()
        .map(|c| quoted(c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `CREATE TABLE IF NOT EXISTS mcp_logs (chain_id, …COLUMNS…) PARTITION BY RANGE
/// (recorded_at)`.
pub(crate) fn create_table_sql() -> String {
    let mut cols = vec!["    chain_id TEXT NOT NULL".to_owned()];
    cols.extend(
        COLUMNS
            .iter()
            .map(|c| format!("    {} {}", quoted(c.name), column_type(c))),
    );
    cols.push("    PRIMARY KEY (chain_id, id, recorded_at)".to_owned());
    format!(
        "CREATE TABLE IF NOT EXISTS mcp_logs (\n{}\n) PARTITION BY RANGE (recorded_at);\n",
        cols.join(",\n")
    )
}

/// The searched text of a row, lower-cased, with every run of characters that are not letters
/// or digits made one space: the word split of the SQLite store's FTS5 tokenizer (`unicode61`),
/// so that PostgreSQL's parser sees plain words and numbers only (not the e-mail addresses,
/// hosts, paths and hyphenated words it would otherwise keep whole). `{}` is the text.
const SEARCH_NORMAL: &str = "regexp_replace(lower({}), '[^[:alnum:]]+', ' ', 'g')";

/// The most characters of a row's context and states that the search index covers: a tsvector
/// holds at most 1 MiB, and this bound keeps any text well under it (an insert must never fail
/// on its search document).
pub(crate) const SEARCH_MAX_CHARS: usize = 100_000;

/// [`SEARCH_NORMAL`] applied to `text` (an SQL expression).
pub(crate) fn search_text(text: &str) -> String {
    SEARCH_NORMAL.replace("{}", text)
}

/// The text-search document of a row: context, before and after state, normalised by
/// [`search_text`], as a `simple` (no stemming, no stop words) tsvector. The GIN index
/// `mcp_logs_search` is on exactly this expression, which `audit query --text` repeats.
pub(crate) static SEARCH_DOCUMENT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let text = format!(
        "left(coalesce(context, '') || ' ' || coalesce(before_state, '') || ' ' || \
         coalesce(after_state, ''), {SEARCH_MAX_CHARS})"
    );
    format!("to_tsvector('simple'::regconfig, {})", search_text(&text))
});

/// The condition that a row's search document holds every word of `words` (SQL expressions of
/// text: `$3`, `'apollo'`), each as a phrase of its tokens (`task-3` is `task` then `3`), in
/// one tsquery so that the planner answers it from `mcp_logs_search` in one probe.
pub fn search_condition(words: &[String]) -> String {
    let phrases: Vec<String> = words
        .iter()
        .map(|w| format!("phraseto_tsquery('simple', {})", search_text(w)))
        .collect();
    format!("{} @@ ({})", *SEARCH_DOCUMENT, phrases.join(" && "))
}

/// The other tables and the indexes of every partition (the uniqueness key is each partition's
/// own: [`ADD_PARTITIONS`]). `collect_held_calls` is collect's staging table
/// (`collect::staging`): other instrumentations' calls held during the hold window, outside the
/// chain (so without the append-only triggers: rows leave when their call is settled), keyed by
/// the chain of the replica that holds them.
const TABLES: &str = "
CREATE TABLE IF NOT EXISTS audit_chains (
    chain_id TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    chain_version INTEGER NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    chain_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    kind TEXT NOT NULL,
    row_id BIGINT NOT NULL,
    row_hash TEXT NOT NULL,
    created_at TEXT NOT NULL,
    prev_digest TEXT NOT NULL,
    signature TEXT NOT NULL,
    PRIMARY KEY (chain_id, seq)
);
CREATE TABLE IF NOT EXISTS collect_held_calls (
    chain_id TEXT NOT NULL,
    \"timestamp\" TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    origin TEXT NOT NULL,
    due_at TEXT NOT NULL,
    call TEXT NOT NULL,
    PRIMARY KEY (chain_id, \"timestamp\", trace_id, span_id)
);
CREATE INDEX IF NOT EXISTS mcp_logs_timestamp ON mcp_logs (timestamp);
CREATE INDEX IF NOT EXISTS mcp_logs_writes ON mcp_logs (timestamp) WHERE operation_type IS NOT NULL;
CREATE INDEX IF NOT EXISTS mcp_logs_writes_recorded ON mcp_logs (recorded_at)
    WHERE operation_type IS NOT NULL;
";

/// The indexes [`TABLES`] creates, by name.
const INDEXES: &[&str] = &[
    "mcp_logs_timestamp",
    "mcp_logs_writes",
    "mcp_logs_writes_recorded",
];

/// The indexes that [`TABLES`] does not create because they are built from Rust constants:
/// (name, definition). `ensure` creates a missing one on a store of an earlier build.
pub(crate) fn derived_indexes() -> Vec<(&'static str, String)> {
    vec![(
        "mcp_logs_search",
        format!(
            "CREATE INDEX IF NOT EXISTS mcp_logs_search ON mcp_logs USING gin (({}))",
            *SEARCH_DOCUMENT
        ),
    )]
}

/// `mcp_otel_add_partitions(first date, days integer)`: creates the day partitions of `first`
/// and the `days - 1` days after it that are missing, each with its uniqueness index, and
/// returns how many it created. A partition is created apart and then attached, which takes no
/// lock that blocks inserts or reads of `mcp_logs` (a `CREATE TABLE … PARTITION OF` would).
/// Runs as the schema's owner (`SECURITY DEFINER`, with the search path it was created with),
/// serialised by the set-up lock; a no-op on a table an earlier build created unpartitioned.
pub(crate) const ADD_PARTITIONS: &str = "mcp_otel_add_partitions";

/// The name of the day partition of `day`.
pub fn partition_name(day: chrono::NaiveDate) -> String {
    format!("mcp_logs_{}", day.format("%Y%m%d"))
}

/// The day of a partition named by [`partition_name`].
pub(crate) fn partition_day(name: &str) -> Option<chrono::NaiveDate> {
    let digits = name.strip_prefix("mcp_logs_")?;
    match digits.len() == 8 && digits.bytes().all(|b| b.is_ascii_digit()) {
        true => chrono::NaiveDate::parse_from_str(digits, "%Y%m%d").ok(),
        false => None,
    }
}

/// The trigger functions (one refusal for every table, and the retention exception for
/// `mcp_logs` deletes) and [`ADD_PARTITIONS`].
const FUNCTIONS: &str = "
CREATE OR REPLACE FUNCTION mcp_otel_add_partitions(first date, days integer) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    d date;
    part text;
    made integer := 0;
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = 'mcp_logs'::regclass) <> 'p' THEN
        RETURN 0;
    END IF;
    PERFORM pg_advisory_xact_lock(7882267113274238316); -- SETUP_LOCK
    FOR i IN 0 .. days - 1 LOOP
        d := first + i;
        part := 'mcp_logs_' || to_char(d, 'YYYYMMDD');
        CONTINUE WHEN to_regclass(part) IS NOT NULL;
        EXECUTE format('CREATE TABLE %I (LIKE mcp_logs INCLUDING DEFAULTS)', part);
        EXECUTE format('CREATE UNIQUE INDEX %I ON %I (\"timestamp\", trace_id, span_id)',
                       part || '_call', part);
        EXECUTE format('ALTER TABLE mcp_logs ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                       part, d::timestamp AT TIME ZONE 'UTC',
                       (d + 1)::timestamp AT TIME ZONE 'UTC');
        made := made + 1;
    END LOOP;
    RETURN made;
END $$;
CREATE OR REPLACE FUNCTION mcp_otel_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END $$;
CREATE OR REPLACE FUNCTION mcp_otel_retained_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.id <= (SELECT COALESCE(MAX(row_id), 0) FROM audit_checkpoints
                  WHERE chain_id = OLD.chain_id AND kind = 'retention') THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'mcp_logs is append-only: rows leave only through a retention checkpoint (mcp-otel audit prune)'
        USING ERRCODE = 'integrity_constraint_violation';
END $$;
";

/// A trigger of [`TRIGGERS`] that refuses `$events` on `$table` outright: (`$table$suffix`,
/// `$table`, `BEFORE $events ON $table FOR EACH $each EXECUTE FUNCTION
/// mcp_otel_append_only()`).
macro_rules! refusal {
    ($table:literal, $suffix:literal, $events:literal, $each:literal) => {
        (
            concat!($table, $suffix),
            $table,
            concat!(
                "BEFORE ",
                $events,
                " ON ",
                $table,
                " FOR EACH ",
                $each,
                " EXECUTE FUNCTION mcp_otel_append_only()"
            ),
        )
    };
}

/// The triggers that make the store append-only: (name, table, definition). `audit verify`
/// checks that each is present and enabled.
pub(crate) const TRIGGERS: &[(&str, &str, &str)] = &[
    refusal!("mcp_logs", "_no_update", "UPDATE", "ROW"),
    (
        "mcp_logs_no_delete",
        "mcp_logs",
        "BEFORE DELETE ON mcp_logs FOR EACH ROW EXECUTE FUNCTION mcp_otel_retained_delete()",
    ),
    refusal!("mcp_logs", "_no_truncate", "TRUNCATE", "STATEMENT"),
    refusal!("audit_checkpoints", "_no_change", "UPDATE OR DELETE", "ROW"),
    refusal!("audit_checkpoints", "_no_truncate", "TRUNCATE", "STATEMENT"),
    refusal!("audit_chains", "_no_change", "UPDATE OR DELETE", "ROW"),
    refusal!("audit_chains", "_no_truncate", "TRUNCATE", "STATEMENT"),
];

/// Serialises concurrent set-ups (two replicas starting at once) in the database.
const SETUP_LOCK: i64 = 0x6d63_702d_6f74_656c; // "mcp-otel"

/// Creates what is missing (tables, indexes, functions, triggers), in one transaction under an
/// advisory lock. Idempotent: every replica runs it on every connect. A complete schema is left
/// alone, so a role that may only INSERT and SELECT (README, "PostgreSQL") can run `collect`
/// once an owner has created it.
pub(crate) async fn ensure(
    client: &mut tokio_postgres::Client,
    target: &PgTarget,
) -> Result<(), AuditError> {
    let err = |context| move |e| target.error(context, e);
    let names: Vec<&str> = TRIGGERS.iter().map(|(name, _, _)| *name).collect();
    let derived = derived_indexes();
    let indexes: Vec<&str> = INDEXES
        .iter()
        .copied()
        .chain(derived.iter().map(|(name, _)| *name))
        .collect();
    let complete: bool = client
        .query_one(
            "SELECT to_regclass('mcp_logs') IS NOT NULL \
             AND to_regclass('audit_checkpoints') IS NOT NULL \
             AND to_regclass('audit_chains') IS NOT NULL \
             AND to_regclass('collect_held_calls') IS NOT NULL \
             AND (SELECT count(DISTINCT tgname) FROM pg_trigger \
                  WHERE NOT tgisinternal AND tgname::text = ANY($1::text[])) = cardinality($1::text[]) \
             AND (SELECT count(*) FROM unnest($2::text[]) AS i(name) \
                  WHERE to_regclass(i.name) IS NOT NULL) = cardinality($2::text[]) \
             AND to_regprocedure('mcp_otel_add_partitions(date, integer)') IS NOT NULL",
            &[&names, &indexes],
        )
        .await
        .map_err(err("reading the schema"))?
        .get(0);
    if complete {
        return Ok(());
    }
    let tx = client
        .transaction()
        .await
        .map_err(err("starting the schema set-up"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SETUP_LOCK])
        .await
        .map_err(err("locking the schema set-up"))?;
    let mut ddl = create_table_sql();
    ddl.push_str(TABLES);
    for (_, definition) in &derived {
        ddl.push_str(definition);
        ddl.push_str(";\n");
    }
    ddl.push_str(FUNCTIONS);
    for (name, _, definition) in TRIGGERS {
        ddl.push_str(&format!("CREATE OR REPLACE TRIGGER {name} {definition};\n"));
    }
    tx.batch_execute(&ddl)
        .await
        .map_err(err("creating the schema"))?;
    tx.commit().await.map_err(err("committing the schema"))
}

/// Registers `chain_id` with `public_key`, or checks that it was registered with it: a chain
/// keeps the key it was started with, so its checkpoints keep verifying against the key its
/// operators kept.
pub(crate) async fn register_chain(
    client: &impl GenericClient,
    target: &PgTarget,
    chain_id: &str,
    public_key: &str,
) -> Result<(), AuditError> {
    let version = chain::CHAIN_VERSION as i32;
    client
        .execute(
            "INSERT INTO audit_chains (chain_id, public_key, chain_version) VALUES ($1, $2, $3) \
             ON CONFLICT (chain_id) DO NOTHING",
            &[&chain_id, &public_key, &version],
        )
        .await
        .map_err(|e| target.error("registering the chain", e))?;
    let recorded: String = client
        .query_one(
            "SELECT public_key FROM audit_chains WHERE chain_id = $1",
            &[&chain_id],
        )
        .await
        .map_err(|e| target.error("reading the chain's key", e))?
        .get(0);
    if recorded != public_key {
        return Err(target.unusable(format!(
            "chain {chain_id:?} was started with public key {recorded}, but this replica's key \
             is {public_key}: its checkpoints would not verify; pass the chain's own key file \
             (--audit-key) or another --chain-id"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_every_column_quoted_and_the_chain_key() {
        let sql = create_table_sql();
        for c in COLUMNS {
            assert!(sql.contains(&format!("\"{}\" ", c.name)), "{}", c.name);
        }
        assert!(sql.contains("\"user\" TEXT NOT NULL"));
        assert!(sql.contains("\"timestamp\" TIMESTAMPTZ NOT NULL"));
        assert!(sql.contains("PRIMARY KEY (chain_id, id, recorded_at)"));
        assert!(sql.contains("PARTITION BY RANGE (recorded_at)"));
        assert_eq!(array_type(&COLUMNS[0]), "BIGINT");
        for c in COLUMNS {
            assert!(
                data_type(c)
                    .chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch == ' '),
                "{}: {}",
                c.name,
                data_type(c)
            );
        }
    }

    #[test]
    fn every_trigger_refuses_on_its_own_table() {
        for (name, table, definition) in TRIGGERS {
            assert!(name.starts_with(table), "{name}");
            assert!(
                definition.contains(&format!(" ON {table} FOR EACH ")),
                "{definition}"
            );
        }
        assert_eq!(
            TRIGGERS[3].2,
            "BEFORE UPDATE OR DELETE ON audit_checkpoints FOR EACH ROW \
             EXECUTE FUNCTION mcp_otel_append_only()"
        );
    }

    #[test]
    fn partition_names_are_their_day() {
        let day = chrono::NaiveDate::from_ymd_opt(2026, 3, 9).unwrap();
        assert_eq!(partition_name(day), "mcp_logs_20260309");
        assert_eq!(partition_day("mcp_logs_20260309"), Some(day));
        assert_eq!(partition_day("mcp_logs_search"), None);
        assert_eq!(partition_day("mcp_logs_2026030"), None);
        assert!(FUNCTIONS.contains(&format!("pg_advisory_xact_lock({SETUP_LOCK})")));
    }
}
