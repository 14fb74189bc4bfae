//! The PostgreSQL schema: `mcp_logs` from [`COLUMNS`] (types mapped, every name quoted, since
//! `user` is a reserved word in PostgreSQL), plus `chain_id`; the chain registry
//! `audit_chains` (each chain's public key); `audit_checkpoints` per chain; and the triggers
//! that refuse UPDATE, DELETE and TRUNCATE (a DELETE passes only for rows a retention
//! checkpoint of their chain covers).
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

/// `CREATE TABLE IF NOT EXISTS mcp_logs (chain_id, …COLUMNS…, PRIMARY KEY (chain_id, id))`.
pub(crate) fn create_table_sql() -> String {
    let mut cols = vec!["    chain_id TEXT NOT NULL".to_owned()];
    cols.extend(
        COLUMNS
            .iter()
            .map(|c| format!("    {} {}", quoted(c.name), column_type(c))),
    );
    cols.push("    PRIMARY KEY (chain_id, id)".to_owned());
    format!(
        "CREATE TABLE IF NOT EXISTS mcp_logs (\n{}\n);\n",
        cols.join(",\n")
    )
}

/// The other tables and the indexes (the uniqueness key spans every chain: a retry that the
/// load balancer sends to another replica is still the same call).
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
CREATE UNIQUE INDEX IF NOT EXISTS mcp_logs_call ON mcp_logs (timestamp, trace_id, span_id);
CREATE INDEX IF NOT EXISTS mcp_logs_timestamp ON mcp_logs (timestamp);
CREATE INDEX IF NOT EXISTS mcp_logs_writes ON mcp_logs (timestamp) WHERE operation_type IS NOT NULL;
";

/// The trigger functions: one refusal for every table, and the retention exception for
/// `mcp_logs` deletes.
const FUNCTIONS: &str = "
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

/// The triggers that make the store append-only: (name, table, definition). `audit verify`
/// checks that each is present and enabled.
pub(crate) const TRIGGERS: &[(&str, &str, &str)] = &[
    (
        "mcp_logs_no_update",
        "mcp_logs",
        "BEFORE UPDATE ON mcp_logs FOR EACH ROW EXECUTE FUNCTION mcp_otel_append_only()",
    ),
    (
        "mcp_logs_no_delete",
        "mcp_logs",
        "BEFORE DELETE ON mcp_logs FOR EACH ROW EXECUTE FUNCTION mcp_otel_retained_delete()",
    ),
    (
        "mcp_logs_no_truncate",
        "mcp_logs",
        "BEFORE TRUNCATE ON mcp_logs FOR EACH STATEMENT EXECUTE FUNCTION mcp_otel_append_only()",
    ),
    (
        "audit_checkpoints_no_change",
        "audit_checkpoints",
        "BEFORE UPDATE OR DELETE ON audit_checkpoints FOR EACH ROW \
         EXECUTE FUNCTION mcp_otel_append_only()",
    ),
    (
        "audit_checkpoints_no_truncate",
        "audit_checkpoints",
        "BEFORE TRUNCATE ON audit_checkpoints FOR EACH STATEMENT \
         EXECUTE FUNCTION mcp_otel_append_only()",
    ),
    (
        "audit_chains_no_change",
        "audit_chains",
        "BEFORE UPDATE OR DELETE ON audit_chains FOR EACH ROW \
         EXECUTE FUNCTION mcp_otel_append_only()",
    ),
    (
        "audit_chains_no_truncate",
        "audit_chains",
        "BEFORE TRUNCATE ON audit_chains FOR EACH STATEMENT \
         EXECUTE FUNCTION mcp_otel_append_only()",
    ),
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
    let complete: bool = client
        .query_one(
            "SELECT to_regclass('mcp_logs') IS NOT NULL \
             AND to_regclass('audit_checkpoints') IS NOT NULL \
             AND to_regclass('audit_chains') IS NOT NULL \
             AND (SELECT count(DISTINCT tgname) FROM pg_trigger \
                  WHERE NOT tgisinternal AND tgname::text = ANY($1::text[])) = cardinality($1::text[])",
            &[&names],
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
        assert!(sql.contains("PRIMARY KEY (chain_id, id)"));
        assert_eq!(array_type(&COLUMNS[0]), "BIGINT");
    }
}
