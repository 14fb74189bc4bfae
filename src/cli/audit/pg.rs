//! `mcp-otel audit … --db postgres://…`: the commands on the PostgreSQL store: `verify` (every
//! chain or `--chain`), `review` and `query` over every chain, `sql` in a read-only
//! transaction, `prune` (whole day partitions) and `pubkey`.

use super::{AuditCommand, CliError, QueryPrinter, io, print_review, print_verify};
use crate::audit::AuditError;
use crate::audit::pg;
use serde_json::{Map, Value, json};
use std::io::Write;
use std::process::ExitCode;
use tokio_postgres::SimpleQueryMessage;

/// Runs `command` on the store at `url`.
pub(super) async fn execute(
    url: &str,
    command: &AuditCommand,
    out: &mut dyn Write,
) -> Result<ExitCode, CliError> {
    match command {
        AuditCommand::Verify(v) => {
            let report = pg::verify_url(url, v.chain.as_deref(), &v.options()?).await?;
            print(out, &report, v.json)
        }
        AuditCommand::Review(r) => {
            let review = pg::review::review_url(url, &r.filter(chrono::Utc::now())?).await?;
            print_review(out, &review.with_max_skew(r.max_skew), r.json)
        }
        AuditCommand::Query(q) => {
            let mut rows = QueryPrinter::new(q.json);
            pg::review::query_url(url, &q.filter(chrono::Utc::now())?, |v| rows.row(out, v))
                .await?;
            rows.finish(out)
        }
        AuditCommand::Sql { statement, json } => sql(url, statement, *json, out).await,
        AuditCommand::Pubkey { key: Some(key) } => {
            let public = crate::audit::sign::AuditKey::load(key)?.public_hex();
            writeln!(out, "{public}").map_err(io)?;
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Pubkey { key: None } => pubkeys(url, out).await,
        AuditCommand::Prune {
            retention,
            dry_run,
            key,
        } => prune(url, retention, *dry_run, key.as_deref(), out).await,
        AuditCommand::Load { .. } => Err(CliError::Invalid {
            field: "--db",
            reason: "`audit load` writes a SQLite store; on PostgreSQL, load `collect` over \
                     OTLP (benches/audit_pg_load.rs)"
                .to_owned(),
        }),
    }
}

/// Each chain's report as `verify` prints one (its lines prefixed with the chain), then the
/// store's problems and verdict; with `--json`, one object per chain and a last one for the
/// store.
fn print(
    out: &mut dyn Write,
    report: &pg::PgVerifyReport,
    json: bool,
) -> Result<ExitCode, CliError> {
    for c in &report.chains {
        match json {
            true => {
                let mut line = Vec::new();
                print_verify(&mut line, &c.report, true)?;
                let mut v: Value = serde_json::from_slice(&line).unwrap_or(Value::Null);
                if let Some(o) = v.as_object_mut() {
                    o.insert("chain_id".to_owned(), Value::from(c.chain_id.clone()));
                }
                writeln!(out, "{v}").map_err(io)?;
            }
            false => {
                for p in &c.report.problems {
                    writeln!(out, "chain {}: {p}", c.chain_id).map_err(io)?;
                }
            }
        }
    }
    match json {
        true => {
            let v = json!({
                "intact": report.is_intact(),
                "chains": report.chains.len(),
                "problems": report.problems.iter().map(|p| p.to_json()).collect::<Vec<_>>(),
            });
            writeln!(out, "{v}").map_err(io)?;
        }
        false => {
            for p in &report.problems {
                writeln!(out, "{p}").map_err(io)?;
            }
            writeln!(out, "{}", report.summary()).map_err(io)?;
        }
    }
    Ok(match report.is_intact() {
        true => ExitCode::SUCCESS,
        false => ExitCode::from(1),
    })
}

/// Drops the day partitions older than `retention`, through a retention checkpoint per chain
/// signed with the chain's key from `key` (a directory of `mcp-audit-<chain>.key` files, the
/// working directory by default, or one key file when one chain has rows to prune).
async fn prune(
    url: &str,
    retention: &str,
    dry_run: bool,
    key: Option<&std::path::Path>,
    out: &mut dyn Write,
) -> Result<ExitCode, CliError> {
    use crate::audit::pg::retention::{ChainKeys, prune_url};
    let keep = crate::audit::review::parse_duration("--retention", retention)?;
    let cutoff = chrono::Utc::now() - keep;
    let keys = ChainKeys::at(key.unwrap_or(std::path::Path::new(".")));
    let outcome = prune_url(url, (!dry_run).then_some(&keys), cutoff).await?;
    let verb = if dry_run { "would prune" } else { "pruned" };
    let Some(before) = outcome.before else {
        writeln!(
            out,
            "nothing to prune: no day partition ends before {}",
            crate::audit::store::format_time(cutoff)
        )
        .map_err(io)?;
        return Ok(ExitCode::SUCCESS);
    };
    writeln!(
        out,
        "{verb} {} row(s) recorded before {} ({} day partition(s): {})",
        outcome.rows(),
        crate::audit::store::format_time(before),
        outcome.partitions.len(),
        outcome.partitions.join(", ")
    )
    .map_err(io)?;
    for c in &outcome.chains {
        writeln!(
            out,
            "chain {}: {} row(s), ids ..{}, calls from {} to {}{}",
            c.chain_id,
            c.rows,
            c.through,
            c.timestamps.0,
            c.timestamps.1,
            c.checkpoint_seq
                .map(|s| format!("; retention checkpoint #{s}"))
                .unwrap_or_default()
        )
        .map_err(io)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Every chain and the public key it was registered with, tab-separated (keep a copy elsewhere:
/// `verify --chain ID --pubkey KEY` then checks a chain against the copy, not the database).
async fn pubkeys(url: &str, out: &mut dyn Write) -> Result<ExitCode, CliError> {
    let (t, client) = pg::review::connect(url).await?;
    let rows = client
        .query(
            "SELECT chain_id, public_key FROM audit_chains ORDER BY chain_id",
            &[],
        )
        .await
        .map_err(|e| t.error("reading the chains", e))?;
    for r in rows {
        let (chain, key): (&str, &str) = (r.get(0), r.get(1));
        writeln!(out, "{chain}\t{key}").map_err(io)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// One statement in a read-only transaction: a write is refused by the server. Columns are
/// printed as the server renders them (tab-separated with a header, or JSON strings).
async fn sql(
    url: &str,
    statement: &str,
    json: bool,
    out: &mut dyn Write,
) -> Result<ExitCode, CliError> {
    let (t, client) = pg::review::connect(url).await?;
    client
        .batch_execute("BEGIN READ ONLY")
        .await
        .map_err(|e| t.error("starting a read-only transaction", e))?;
    let messages = client
        .simple_query(statement)
        .await
        .map_err(|e| match e.code() {
            Some(c) if c.code() == "25006" => AuditError::ReadOnly(e.to_string()),
            _ => t.error("running the statement", e),
        })?;
    let _ = client.batch_execute("ROLLBACK").await;
    let mut header = false;
    for m in &messages {
        let SimpleQueryMessage::Row(row) = m else {
            continue;
        };
        let names: Vec<&str> = row.columns().iter().map(|c| c.name()).collect();
        if json {
            let mut o = Map::new();
            for (i, name) in names.iter().enumerate() {
                o.insert(
                    (*name).to_owned(),
                    row.get(i).map_or(Value::Null, Value::from),
                );
            }
            writeln!(out, "{}", Value::Object(o)).map_err(io)?;
        } else {
            if !header {
                writeln!(out, "{}", names.join("\t")).map_err(io)?;
                header = true;
            }
            let cells: Vec<&str> = (0..names.len())
                .map(|i| row.get(i).unwrap_or("NULL"))
                .collect();
            writeln!(out, "{}", cells.join("\t")).map_err(io)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
