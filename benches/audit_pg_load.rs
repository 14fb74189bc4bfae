//! Load harness for the PostgreSQL audit store (issue 15), with the SQLite store side by side in
//! the same run.
//!
//! Hypothesis (issue 15, item 6): two `collect` replicas writing one PostgreSQL database
//! (`fsync = on`, `synchronous_commit = on`: an export is acknowledged only after its rows'
//! commit is flushed) acknowledge at least 50,000 calls/s together, 8 exporters (4 per replica)
//! sending OTLP/gRPC exports of 100 calls with random ids; the store then holds exactly the
//! acknowledged calls in two chains, and both verify. The same load into one `collect` with the
//! SQLite store, for comparison. Server, replicas and load generator share this machine.
//!
//! Then, on a chain of 1,000,000 rows all recorded today (half of them writes), written by the
//! library's writer: `audit verify` of the chain (hypothesis: ≥ 1,000,000 rows/s) and the
//! daily review of that day (hypothesis: ≤ 1 s for its 500,000 writes), and a full-text
//! `audit query` answered from the GIN index.
//!
//! `cargo bench --bench audit_pg_load` (release; `AUDIT_PG_CALLS=N`, default 200,000;
//! `AUDIT_PG_ROWS=N`, default 1,000,000; `AUDIT_PG_EXPORTERS=N` exporters per replica, default
//! 4, and twice as many into the one SQLite `collect`). Without `--bench` (`cargo test --all-targets`) a smoke
//! run of 2,000 calls and 5,000 rows checks the harness. Needs the PostgreSQL binaries
//! (`scripts/setup-peers.sh`); loopback only; every wait is bounded.

#[path = "../tests/support/mod.rs"]
mod support;

use mcp_otel::audit::pg::{PgOptions, PgWriter, query_url, review_url, verify_url};
use mcp_otel::audit::review::{QueryFilter, ReviewFilter};
use mcp_otel::audit::verify::VerifyOptions;
use mcp_otel::emit::{SpanOptions, to_span};
use mcp_otel::record::{OperationType, ToolCall, WriteOp};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::trace::v1::Span;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::CollectProcess;
use support::pg::{PgServer, db_name};

const BIN: &str = env!("CARGO_BIN_EXE_mcp-otel");

/// Call `n` as a span: see [`call`].
fn call_span(n: u64) -> Span {
    to_span(&call(n), &SpanOptions::default()).into()
}

/// Call `n`: random trace and span ids (as real exporters send them), every other one a write
/// with a resource and a confirmation.
fn call(n: u64) -> ToolCall {
    let mut c = ToolCall::new(
        if n.is_multiple_of(2) {
            "get_task"
        } else {
            "update_task"
        },
        "load",
    );
    c.user = format!("user-{}", n % 50);
    c.duration_ms = 3.0;
    if !n.is_multiple_of(2) {
        c.write = Some(
            WriteOp::new(OperationType::Update)
                .resource_id(format!("task-{n}"))
                .confirmed(Some(true)),
        );
    }
    c.context = Some(serde_json::json!({ "project_id": format!("p{}", n % 100), "n": n }));
    c
}

/// Fills chain `big` of `url` with `rows` calls through the library's writer (4 appends of
/// 5,000 in flight); rows/s.
async fn fill(url: &str, dir: &std::path::Path, rows: u64) -> f64 {
    let mut o = PgOptions::new("big");
    o.key_path = dir.join("big.key");
    let writer = PgWriter::open(url, o).unwrap();
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (writer, next) = (writer.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let start = next.fetch_add(5_000, Ordering::Relaxed);
                    if start >= rows {
                        break;
                    }
                    let calls: Vec<ToolCall> =
                        (start..(start + 5_000).min(rows)).map(call).collect();
                    writer.append(&calls).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let rate = rows as f64 / started.elapsed().as_secs_f64();
    drop(writer);
    rate
}

/// Verify, review and query on a chain of `rows` rows recorded today.
async fn day_of_rows(server: &PgServer, dir: &std::path::Path, rows: u64) {
    let url = server.fresh_db();
    let fill_rate = fill(&url, dir, rows).await;
    server.psql(db_name(&url), "VACUUM ANALYZE mcp_logs");
    let started = Instant::now();
    let report = verify_url(&url, Some("big"), &VerifyOptions::default())
        .await
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert!(report.is_intact(), "{}", report.summary());
    assert_eq!(report.chain("big").unwrap().rows, rows);
    println!(
        "PostgreSQL verify, one chain of {rows} rows: {secs:.2} s, {:.0} rows/s (filled at \
         {fill_rate:.0} rows/s by the writer)",
        rows as f64 / secs
    );
    let now = chrono::Utc::now();
    let filter = ReviewFilter {
        since: now - chrono::Duration::hours(24),
        until: now + chrono::Duration::minutes(1),
        user: None,
        tool: None,
    };
    for _ in 0..2 {
        let started = Instant::now();
        let review = review_url(&url, &filter).await.unwrap();
        let mut sink = std::io::sink();
        review.write_json(&mut sink).unwrap();
        println!(
            "PostgreSQL review of a day of {rows} rows: {:.3} s ({} writes listed, JSON to a \
             sink)",
            started.elapsed().as_secs_f64(),
            review.writes.len()
        );
        assert_eq!(review.writes.len() as u64, rows / 2);
    }
    let started = Instant::now();
    let filter = QueryFilter {
        text: Some(format!("p7 {}", rows / 2 + 7)),
        limit: 100,
        ..QueryFilter::default()
    };
    let n = query_url(&url, &filter, |_| Ok(())).await.unwrap();
    println!(
        "PostgreSQL query --text over {rows} rows: {:.3} s ({n} row(s))",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(n, 1);
}

/// `streams` exporters per address, each sending exports of `batch` calls back to back (each
/// waits for its acknowledgement) until `calls` are acknowledged; acknowledged calls/s.
async fn load(addrs: &[SocketAddr], calls: u64, streams: u64, batch: u64) -> f64 {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for addr in addrs {
        for _ in 0..streams {
            let client = TraceServiceClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
            tasks.push(tokio::spawn(support::export_until(
                client,
                next.clone(),
                calls,
                batch,
                call_span,
            )));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    calls as f64 / started.elapsed().as_secs_f64()
}

/// SIGTERM (the graceful stop that signs the shutdown checkpoint) and the exit.
fn stop(mut c: CollectProcess) {
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(c.child.id() as i32, libc::SIGTERM) };
    assert!(c.wait(Duration::from_secs(60)).success());
}

/// `audit verify --db DB`: its last line, asserting success.
fn verify(db: &str) -> String {
    let out = Command::new(BIN)
        .args(["audit", "verify", "--db", db])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "verify: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines().last().unwrap_or("").to_owned()
}

/// The number in environment variable `name`, else `default`.
fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let calls = env_or("AUDIT_PG_CALLS", if full { 200_000 } else { 2_000 });
    let exporters = env_or("AUDIT_PG_EXPORTERS", 4);
    let dir = support::tempdir();

    let server = PgServer::private();
    let url = server.fresh_db();
    let replicas: Vec<CollectProcess> = ["r1", "r2"]
        .iter()
        .map(|chain| {
            let key = dir.path().join(format!("{chain}.key"));
            CollectProcess::start(
                BIN,
                &[
                    "--audit",
                    &url,
                    "--chain-id",
                    chain,
                    "--audit-key",
                    key.to_str().unwrap(),
                ],
            )
        })
        .collect();
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.grpc).collect();
    let rate = load(&addrs, calls, exporters, 100).await;
    for r in replicas {
        stop(r);
    }
    let stored: u64 = server
        .psql(db_name(&url), "SELECT count(*) FROM mcp_logs")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        stored, calls,
        "the store holds exactly the acknowledged calls"
    );
    println!(
        "PostgreSQL, 2 replicas: {rate:.0} calls/s acknowledged ({calls} calls, {} exporters, \
         exports of 100, synchronous_commit on, fsync on; {stored} rows; verify: {})",
        2 * exporters,
        verify(&url)
    );
    let rows = env_or("AUDIT_PG_ROWS", if full { 1_000_000 } else { 5_000 });
    day_of_rows(&server, dir.path(), rows).await;
    drop(server);

    let db = dir.path().join("audit.db");
    let c = CollectProcess::start(BIN, &["--audit", db.to_str().unwrap()]);
    let rate = load(&[c.grpc], calls, 2 * exporters, 100).await;
    stop(c);
    println!(
        "SQLite, 1 collect: {rate:.0} calls/s acknowledged ({calls} calls, {} exporters, exports \
         of 100, synchronous = FULL; verify: {})",
        2 * exporters,
        verify(db.to_str().unwrap())
    );
}
