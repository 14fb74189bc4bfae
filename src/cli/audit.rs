//! `mcp-otel audit …`: verify, review, query, sql, prune and pubkey on an audit database.
//!
//! Exit codes: 0 success (for `verify`: intact), 1 `verify` found damage, 2 the command could
//! not run (no database, bad flag, I/O error).

use crate::audit::review::{self, QueryFilter, Review, ReviewFilter};
use crate::audit::sign::{self, AuditKey};
use crate::audit::store::{self, DEFAULT_DB};
use crate::audit::verify::{self, VerifyOptions, VerifyReport};
use crate::audit::{AuditError, AuditOptions, AuditWriter, Durability, chain, retention};
use crate::display::visible;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod pg;

/// `mcp-otel audit`: inspect the audit trail that `collect --audit` keeps.
#[derive(Args, Debug)]
pub struct AuditArgs {
    /// The audit database: a SQLite file, or a PostgreSQL URL (`postgres://…`).
    #[arg(long, global = true, env = "MCP_OTEL_AUDIT_DB", default_value = DEFAULT_DB)]
    pub(crate) db: PathBuf,
    /// Use the store of a running `mcp-otel collect` over gRPC instead of a local file
    /// (`verify`, `review` and `query`), e.g. `http://collector:4317`.
    #[arg(long, global = true, env = "MCP_OTEL_AUDIT_REMOTE")]
    pub(crate) remote: Option<String>,
    /// Bearer token for `--remote` (the collector's token).
    #[arg(long, global = true, env = "MCP_OTEL_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    #[command(subcommand)]
    pub(crate) command: Box<AuditCommand>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum AuditCommand {
    /// Check the hash chain, the signed checkpoints, the triggers and the search index. Exit 0
    /// when intact; 1 with the first bad row and what is wrong (changed, missing, reordered,
    /// bad signature, truncated, triggers dropped, unsigned, search index) when not.
    Verify(VerifyArgs),
    /// The daily write review: every create/update/delete, newest first; deletes highlighted,
    /// writes without user confirmation flagged, failed writes listed, counts per user.
    Review(ReviewArgs),
    /// Search the calls (reads too), newest first.
    Query(QueryArgs),
    /// Run one SQL query on a read-only connection, e.g. the seed's daily review query.
    Sql {
        statement: String,
        /// One JSON object per line instead of tab-separated columns.
        #[arg(long)]
        json: bool,
    },
    /// Remove rows older than the retention through a signed retention checkpoint (on
    /// PostgreSQL: whole day partitions, a retention checkpoint per chain).
    Prune {
        /// Keep this much: rows recorded before now minus this go.
        #[arg(long, default_value = retention::DEFAULT_RETENTION)]
        retention: String,
        /// Show what would go, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// The signing key (default: the database path with extension .key). On PostgreSQL:
        /// the directory of every chain's key file, `mcp-audit-<chain>.key` (default: the
        /// working directory), or one key file when one chain has rows to prune.
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Print the public key that verifies the checkpoints (keep a copy elsewhere).
    Pubkey {
        /// The signing key (default: the database path with extension .key).
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Load generator and crash-test child: appends synthetic calls from concurrent writers
    /// and prints throughput (and, with --print-acks, each acknowledged span id).
    #[command(hide = true)]
    Load {
        #[arg(long, default_value_t = 4)]
        writers: usize,
        /// Calls per append (one OTLP export).
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Total calls; 0 runs until killed.
        #[arg(long, default_value_t = 100_000)]
        rows: u64,
        #[arg(long)]
        print_acks: bool,
        /// fsync every commit (`full`) or not (`normal`).
        #[arg(long, default_value = "full")]
        durability: String,
    },
}

/// `audit verify`'s flags.
#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The public key to check checkpoint signatures with (hex, from `audit pubkey`).
    /// Without it the key recorded in the database is used.
    #[arg(long, env = "MCP_OTEL_AUDIT_PUBKEY")]
    pubkey: Option<String>,
    /// A head hash recorded earlier (printed by verify): it must still be in the chain.
    #[arg(long)]
    expect_head: Option<String>,
    /// Rows covered by no signed checkpoint fail the check (use on a store whose
    /// collector has stopped: its shutdown checkpoint signs everything it wrote).
    #[arg(long)]
    require_signed: bool,
    /// Also check every term of the full-text index against the rows (SQLite's FTS5
    /// integrity check; needs a writable file and holds its write lock while it runs).
    #[arg(long)]
    check_fts: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// On a PostgreSQL store: check only this replica's chain (default: every chain).
    #[arg(long)]
    chain: Option<String>,
}

impl VerifyArgs {
    /// The options of a local verification.
    fn options(&self) -> Result<VerifyOptions, CliError> {
        Ok(VerifyOptions {
            pubkey: self
                .pubkey
                .as_deref()
                .map(sign::parse_public_key)
                .transpose()?,
            expect_head: self
                .expect_head
                .as_deref()
                .map(|h| {
                    chain::from_hex(h.trim()).ok_or_else(|| CliError::Invalid {
                        field: "--expect-head",
                        reason: format!("expected 64 hex digits, got {h:?}"),
                    })
                })
                .transpose()?,
            parallel_from_rows: None,
            require_signed: self.require_signed,
            check_search_terms: self.check_fts,
        })
    }
}

/// `audit review`'s flags.
#[derive(Debug, Args)]
pub(crate) struct ReviewArgs {
    /// Start of the window: a duration back from now (24h, 7d) or an RFC 3339 time.
    #[arg(long, default_value = "24h")]
    since: String,
    /// End of the window (exclusive): `now`, a duration back from now, or RFC 3339.
    #[arg(long, default_value = "now")]
    until: String,
    #[arg(long)]
    user: Option<String>,
    #[arg(long)]
    tool: Option<String>,
    /// Show and flag (`clock skew`) a write whose own timestamp is further than this from
    /// the time collect recorded it.
    #[arg(long, default_value = "1h", value_parser = crate::duration::parse_span)]
    max_skew: chrono::Duration,
    #[arg(long)]
    json: bool,
}

impl ReviewArgs {
    /// The review window and filters, with times resolved against `now`.
    fn filter(&self, now: DateTime<Utc>) -> Result<ReviewFilter, AuditError> {
        Ok(ReviewFilter {
            since: review::parse_time("--since", &self.since, now)?,
            until: review::parse_time("--until", &self.until, now)?,
            user: self.user.clone(),
            tool: self.tool.clone(),
        })
    }
}

/// `audit query`'s flags.
#[derive(Debug, Args)]
pub(crate) struct QueryArgs {
    #[arg(long)]
    since: Option<String>,
    #[arg(long)]
    until: Option<String>,
    #[arg(long)]
    user: Option<String>,
    #[arg(long)]
    tool: Option<String>,
    /// success, error or timeout.
    #[arg(long)]
    status: Option<String>,
    #[arg(long)]
    error_code: Option<String>,
    /// create, update, delete or write.
    #[arg(long = "operation", alias = "operation-type")]
    operation_type: Option<String>,
    /// Words that must all occur in the context or the before/after states.
    #[arg(long)]
    text: Option<String>,
    #[arg(long, default_value_t = 100)]
    limit: u64,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

impl QueryArgs {
    /// The query filters, with times resolved against `now`.
    fn filter(&self, now: DateTime<Utc>) -> Result<QueryFilter, AuditError> {
        let time = |field, s: &Option<String>| {
            s.as_deref()
                .map(|s| review::parse_time(field, s, now))
                .transpose()
        };
        Ok(QueryFilter {
            since: time("--since", &self.since)?,
            until: time("--until", &self.until)?,
            user: self.user.clone(),
            tool: self.tool.clone(),
            status: self.status.clone(),
            error_code: self.error_code.clone(),
            operation_type: self.operation_type.clone(),
            text: self.text.clone(),
            limit: self.limit,
        })
    }
}

/// What an `audit` command can fail with: the store's own errors, and the command line's.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// A flag or argument is not valid.
    #[error("`{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// Writing the output failed (a closed pipe, a full disk).
    #[error("writing the output: {0}")]
    Output(#[source] std::io::Error),
    /// A call to a remote audit service failed.
    #[error("remote audit service {url}: {message}")]
    Remote { url: String, message: String },
}

impl CliError {
    /// `audit review | head` closes the pipe early: not an error worth a message.
    fn is_broken_pipe(&self) -> bool {
        let kind = match self {
            CliError::Output(e) => e.kind(),
            CliError::Audit(AuditError::Output(e)) => e.kind(),
            _ => return false,
        };
        kind == std::io::ErrorKind::BrokenPipe
    }
}

/// Runs an `audit` subcommand and returns the process exit code. Local work is blocking
/// (SQLite), so it runs on a blocking thread; `--remote` talks gRPC on the caller's runtime.
pub async fn run(args: AuditArgs) -> ExitCode {
    if let Some(url) = args.remote.clone() {
        let mut out = std::io::BufWriter::new(std::io::stdout());
        let result = remote::execute(&url, args.token.clone(), &args.command, &mut out).await;
        return finish(result, &mut out);
    }
    if let Some(url) = args
        .db
        .to_str()
        .filter(|d| crate::audit::pg::is_postgres_url(d))
    {
        let mut out = std::io::BufWriter::new(std::io::stdout());
        let result = pg::execute(url, &args.command, &mut out).await;
        return finish(result, &mut out);
    }
    match tokio::task::spawn_blocking(move || run_blocking(args)).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mcp-otel audit: {e}");
            ExitCode::from(2)
        }
    }
}

/// [`run`] for a local database, for callers outside an async runtime.
pub(crate) fn run_blocking(args: AuditArgs) -> ExitCode {
    // Buffered but not locked: `load` prints acknowledgements from its writer threads.
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let result = execute(&args, &mut out);
    finish(result, &mut out)
}

fn finish(result: Result<ExitCode, CliError>, out: &mut dyn Write) -> ExitCode {
    let result = result.and_then(|code| out.flush().map(|_| code).map_err(io));
    match result {
        Ok(code) => code,
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            let _ = out.flush();
            super::print_error("mcp-otel audit", &e);
            ExitCode::from(2)
        }
    }
}

/// `audit verify`'s output, the same for a local store and a remote collector: the problems
/// and the summary, or one JSON object; exit 0 when intact, 1 when not.
fn print_verify(
    out: &mut dyn Write,
    report: &VerifyReport,
    json: bool,
) -> Result<ExitCode, CliError> {
    if json {
        writeln!(out, "{}", report.to_json()).map_err(io)?;
    } else {
        for p in &report.problems {
            writeln!(out, "{p}").map_err(io)?;
        }
        writeln!(out, "{}", report.summary()).map_err(io)?;
    }
    Ok(if report.is_intact() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `audit review`'s output, local or remote.
fn print_review(out: &mut dyn Write, review: &Review, json: bool) -> Result<ExitCode, CliError> {
    if json {
        review.write_json(out).map_err(io)?;
    } else {
        review
            .render(out, std::io::stdout().is_terminal())
            .map_err(io)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `audit query`'s output, local or remote: JSON lines as rows arrive, or a table at the end.
struct QueryPrinter {
    json: bool,
    rows: Vec<Value>,
    count: u64,
}

impl QueryPrinter {
    fn new(json: bool) -> Self {
        QueryPrinter {
            json,
            rows: Vec::new(),
            count: 0,
        }
    }

    fn row(&mut self, out: &mut dyn Write, v: Value) -> std::io::Result<()> {
        self.count += 1;
        if self.json {
            writeln!(out, "{v}")
        } else {
            self.rows.push(v);
            Ok(())
        }
    }

    fn finish(self, out: &mut dyn Write) -> Result<ExitCode, CliError> {
        if !self.json {
            query_table(out, &self.rows).map_err(io)?;
            writeln!(out, "{} row(s)", self.count).map_err(io)?;
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn io(e: std::io::Error) -> CliError {
    CliError::Output(e)
}

fn execute(args: &AuditArgs, out: &mut dyn Write) -> Result<ExitCode, CliError> {
    let db = &args.db;
    let now = Utc::now();
    match args.command.as_ref() {
        AuditCommand::Verify(v) => {
            let report = verify::verify_path(db, &v.options()?)?;
            print_verify(out, &report, v.json)
        }
        AuditCommand::Review(r) => {
            let conn = store::open_ro(db)?;
            let review = review::review(&conn, db, &r.filter(now)?)?.with_max_skew(r.max_skew);
            print_review(out, &review, r.json)
        }
        AuditCommand::Query(q) => {
            let conn = store::open_ro(db)?;
            let mut rows = QueryPrinter::new(q.json);
            review::query(&conn, db, &q.filter(now)?, |v| rows.row(out, v))?;
            rows.finish(out)
        }
        AuditCommand::Sql { statement, json } => {
            let conn = store::open_ro(db)?;
            let json = *json;
            let mut header = |cols: &[String]| {
                if json {
                    Ok(())
                } else {
                    writeln!(out, "{}", cols.join("\t"))
                }
            };
            let mut lines: Vec<String> = Vec::new();
            let n = review::sql(&conn, statement, &mut header, |cols, v| {
                if json {
                    lines.push(v.to_string());
                } else {
                    let cells: Vec<String> = cols
                        .iter()
                        .map(|c| match &v[c] {
                            Value::Null => "NULL".to_owned(),
                            Value::String(s) => visible(s).into_owned(),
                            other => other.to_string(),
                        })
                        .collect();
                    lines.push(cells.join("\t"));
                }
                Ok(())
            })?;
            for l in lines {
                writeln!(out, "{l}").map_err(io)?;
            }
            if !json {
                eprintln!("{n} row(s)");
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Prune {
            retention: keep,
            dry_run,
            key,
        } => {
            let keep = review::parse_duration("--retention", keep)?;
            let cutoff = now - keep;
            let key = key.clone().unwrap_or_else(|| AuditKey::default_path(db));
            let outcome = retention::prune(db, &key, cutoff, *dry_run)?;
            let verb = if *dry_run { "would prune" } else { "pruned" };
            match (&outcome.ids, &outcome.timestamps) {
                (Some((a, b)), Some((oldest, newest))) => writeln!(
                    out,
                    "{verb} {} row(s): ids {a}..{b}, calls from {oldest} to {newest} (recorded \
                     before {}){}",
                    outcome.rows,
                    store::format_time(cutoff),
                    outcome
                        .checkpoint_seq
                        .map(|s| format!("; retention checkpoint #{s}"))
                        .unwrap_or_default()
                ),
                _ => writeln!(
                    out,
                    "nothing to prune: no row was recorded before {}",
                    store::format_time(cutoff)
                ),
            }
            .map_err(io)?;
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Pubkey { key } => {
            let key_path = key.clone().unwrap_or_else(|| AuditKey::default_path(db));
            let public = match AuditKey::load(&key_path) {
                Ok(k) => k.public_hex(),
                // Without the private key file, the key the database records will do.
                Err(e) => match store::open_ro(db)
                    .ok()
                    .and_then(|c| store::meta(&c, db, "public_key").ok().flatten())
                {
                    Some(k) => k,
                    None => return Err(e.into()),
                },
            };
            writeln!(out, "{public}").map_err(io)?;
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Load {
            writers,
            batch,
            rows,
            print_acks,
            durability,
        } => load(db, *writers, *batch, *rows, *print_acks, durability, out),
    }
}

pub(crate) fn query_table(out: &mut dyn Write, rows: &[Value]) -> std::io::Result<()> {
    let cols = [
        "id",
        "timestamp",
        "user",
        "tool_name",
        "status",
        "error_code",
        "operation_type",
        "resource_id",
        "duration_ms",
    ];
    writeln!(out, "{}", cols.join("\t"))?;
    for r in rows {
        let cells: Vec<String> = cols
            .iter()
            .map(|c| match &r[*c] {
                Value::Null => "-".to_owned(),
                Value::String(s) => visible(s).into_owned(),
                // Stored at full precision; a table reader wants 3.902, not 3.9015310000000003.
                Value::Number(n) if *c == "duration_ms" => {
                    n.as_f64().map_or_else(|| n.to_string(), display_ms)
                }
                other => other.to_string(),
            })
            .collect();
        writeln!(out, "{}", cells.join("\t"))?;
    }
    Ok(())
}

/// A duration in milliseconds for a table: at most three decimals (microseconds), without
/// trailing zeros (`12`, `3.902`, `0.25`).
fn display_ms(ms: f64) -> String {
    let text = format!("{ms:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    match text {
        "-0" => "0".to_owned(),
        t => t.to_owned(),
    }
}

/// The load generator: `writers` threads, each appending `batch` calls at a time.
fn load(
    db: &Path,
    writers: usize,
    batch: usize,
    rows: u64,
    print_acks: bool,
    durability: &str,
    out: &mut dyn Write,
) -> Result<ExitCode, CliError> {
    use crate::record::{OperationType, ToolCall, WriteOp};
    use std::sync::atomic::{AtomicU64, Ordering};
    let durability = match durability {
        "full" => Durability::Full,
        "normal" => Durability::Normal,
        other => {
            return Err(CliError::Invalid {
                field: "--durability",
                reason: format!("expected full or normal, got {other:?}"),
            });
        }
    };
    let writer = AuditWriter::open(
        db,
        AuditOptions {
            durability,
            ..AuditOptions::default()
        },
    )?;
    let next = AtomicU64::new(0);
    let acks = std::sync::Mutex::new(std::io::stdout());
    let started = std::time::Instant::now();
    let result: Result<u64, AuditError> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers.max(1))
            .map(|w| {
                let writer = writer.clone();
                let (next, acks) = (&next, &acks);
                s.spawn(move || -> Result<u64, AuditError> {
                    let mut done = 0;
                    loop {
                        let start = next.fetch_add(batch as u64, Ordering::Relaxed);
                        if rows > 0 && start >= rows {
                            return Ok(done);
                        }
                        let n = if rows > 0 {
                            (rows - start).min(batch as u64)
                        } else {
                            batch as u64
                        };
                        let calls: Vec<ToolCall> = (start..start + n)
                            .map(|i| {
                                let mut c = ToolCall::new(
                                    ["list_tasks", "update_task", "get_task", "delete_task"]
                                        [(i % 4) as usize],
                                    format!("user-{}", i % 50),
                                );
                                c.duration_ms = (i % 1000) as f64 / 10.0;
                                c.context = Some(json!({ "project_id": i % 100, "writer": w }));
                                if i % 2 == 1 {
                                    c.write = Some(
                                        WriteOp::new(if i % 4 == 1 {
                                            OperationType::Update
                                        } else {
                                            OperationType::Delete
                                        })
                                        .resource_id(format!("task-{i}"))
                                        .confirmed(Some(i % 3 != 0)),
                                    );
                                }
                                c
                            })
                            .collect();
                        let spans: Vec<String> = if print_acks {
                            calls.iter().map(|c| c.ids.span_id_hex()).collect()
                        } else {
                            Vec::new()
                        };
                        writer.append_blocking(calls)?;
                        done += n;
                        if print_acks {
                            let mut o = acks.lock().unwrap_or_else(|p| p.into_inner());
                            for s in spans {
                                let _ = writeln!(o, "ack {s}");
                            }
                            let _ = o.flush();
                        }
                    }
                })
            })
            .collect();
        let mut total = 0;
        for h in handles {
            total += h.join().unwrap_or(Ok(0))?;
        }
        Ok(total)
    });
    let total = result?;
    drop(writer);
    let secs = started.elapsed().as_secs_f64();
    writeln!(
        out,
        "appended {total} calls in {secs:.2} s with {writers} writer(s), {batch} calls per \
         append, durability {durability:?}: {:.0} calls/s",
        total as f64 / secs
    )
    .map_err(io)?;
    Ok(ExitCode::SUCCESS)
}

/// `--remote`: the same commands against a collector's `AuditService`.
mod remote {
    use super::CliError;
    use super::{AuditCommand, QueryPrinter, io, print_review, print_verify};
    use crate::audit::grpc::{self, AuditServiceClient, proto};
    use crate::audit::review::Review;
    use crate::audit::verify::VerifyReport;
    use chrono::Utc;
    use std::io::Write;
    use std::process::ExitCode;
    use tonic::metadata::MetadataValue;

    /// Large reviews exceed tonic's 4 MiB default; this is the most one answer may carry.
    const MAX_MESSAGE: usize = 1 << 30;

    pub(super) async fn execute(
        url: &str,
        token: Option<String>,
        command: &AuditCommand,
        out: &mut dyn Write,
    ) -> Result<ExitCode, CliError> {
        let failed = |message: String| CliError::Remote {
            url: url.to_owned(),
            message,
        };
        let status = |s: tonic::Status| failed(format!("{:?}: {}", s.code(), s.message()));
        let now = Utc::now();
        // Flags are checked before connecting, so a typo does not wait for a network timeout.
        let local_only = |name: &str| CliError::Invalid {
            field: "--remote",
            reason: format!("`audit {name}` works on a local database only (use --db)"),
        };
        match command {
            AuditCommand::Sql { .. } => return Err(local_only("sql")),
            AuditCommand::Prune { .. } => return Err(local_only("prune")),
            AuditCommand::Pubkey { .. } => return Err(local_only("pubkey")),
            AuditCommand::Load { .. } => return Err(local_only("load")),
            _ => {}
        }
        let bearer = match &token {
            Some(t) => Some(MetadataValue::try_from(format!("Bearer {t}")).map_err(|_| {
                CliError::Invalid {
                    field: "--token",
                    reason: "must be printable ASCII".to_owned(),
                }
            })?),
            None => None,
        };
        let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
            .map_err(|e| CliError::Invalid {
                field: "--remote",
                reason: format!("{url:?} is not a URL: {e}"),
            })?
            .connect()
            .await
            .map_err(|e| failed(format!("cannot connect: {e}")))?;
        let mut client =
            AuditServiceClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
                if let Some(b) = &bearer {
                    req.metadata_mut().insert("authorization", b.clone());
                }
                Ok(req)
            })
            .max_decoding_message_size(MAX_MESSAGE);
        match command {
            AuditCommand::Verify(v) => {
                if v.check_fts {
                    return Err(CliError::Invalid {
                        field: "--check-fts",
                        reason: "the deep index check runs on a local database only (use --db)"
                            .to_owned(),
                    });
                }
                let r = client
                    .verify(proto::VerifyRequest {
                        pubkey: v.pubkey.clone(),
                        expect_head: v.expect_head.clone(),
                        require_signed: v.require_signed,
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                let report = VerifyReport::try_from(r).map_err(failed)?;
                print_verify(out, &report, v.json)
            }
            AuditCommand::Review(args) => {
                let request = proto::ReviewRequest::from(&args.filter(now)?);
                let r: Review = client
                    .review(request)
                    .await
                    .map_err(status)?
                    .into_inner()
                    .into();
                print_review(out, &r.with_max_skew(args.max_skew), args.json)
            }
            AuditCommand::Query(args) => {
                let request = proto::QueryRequest::from(&args.filter(now)?);
                let mut stream = client.query(request).await.map_err(status)?.into_inner();
                let mut rows = QueryPrinter::new(args.json);
                while let Some(record) = stream.message().await.map_err(status)? {
                    rows.row(out, grpc::record_to_json(&record)).map_err(io)?;
                }
                rows.finish(out)
            }
            AuditCommand::Sql { .. } => Err(local_only("sql")),
            AuditCommand::Prune { .. } => Err(local_only("prune")),
            AuditCommand::Pubkey { .. } => Err(local_only("pubkey")),
            AuditCommand::Load { .. } => Err(local_only("load")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_table_rounds_durations_for_display() {
        let rows = [
            serde_json::json!({"id": 1, "tool_name": "t", "duration_ms": 3.9015310000000003}),
            serde_json::json!({"id": 2, "tool_name": "u", "duration_ms": 12.0}),
            serde_json::json!({"id": 3, "tool_name": "v", "duration_ms": 0.25}),
        ];
        let mut out = Vec::new();
        query_table(&mut out, &rows).unwrap();
        let text = String::from_utf8(out).unwrap();
        let ms: Vec<&str> = text
            .lines()
            .skip(1)
            .map(|l| l.rsplit('\t').next().unwrap())
            .collect();
        assert_eq!(ms, ["3.902", "12", "0.25"], "{text}");
    }
}
