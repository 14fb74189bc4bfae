//! `mcp-otel collect --audit postgres://…` as a process, fed over OTLP/gRPC by the library's
//! own exporter, against a real PostgreSQL server (tests/support/pg.rs): what is acknowledged
//! is stored exactly once and verifies; a database that goes away mid-run gets UNAVAILABLE
//! answers (collect keeps running, nothing is acknowledged that is not stored) and the export
//! goes through once it is back; two replicas write two chains into one table, and a retry
//! that reaches the other replica is not stored twice.

mod support;

use mcp_otel::emit::{SpanOptions, to_span};
use mcp_otel::record::ToolCall;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use std::path::Path;
use std::time::Duration;
use support::CollectProcess;
use support::pg::{PgServer, db_name, shared};

const BIN: &str = env!("CARGO_BIN_EXE_mcp-otel");

/// A collect replica writing chain `chain` into `url`, its key in `dir`.
fn replica(url: &str, dir: &Path, chain: &str) -> CollectProcess {
    let key = dir.join(format!("{chain}.key"));
    CollectProcess::start(
        BIN,
        &[
            "--audit",
            url,
            "--chain-id",
            chain,
            "--audit-key",
            key.to_str().unwrap(),
        ],
    )
}

fn verify(url: &str, extra: &[&str]) -> (i32, String) {
    support::audit::cli(&[&["verify", "--db", url], extra].concat())
}

fn calls(n: usize, tag: &str) -> Vec<ToolCall> {
    (0..n)
        .map(|i| support::audit::call(i, chrono::Utc::now()))
        .map(|mut c| {
            c.tool_name = format!("{tag}_{}", c.tool_name);
            c
        })
        .collect()
}

/// Exports `calls` through the library's OTLP exporter and waits for the acknowledgement.
async fn export(grpc: std::net::SocketAddr, calls: &[ToolCall]) {
    let emitter = support::otlp_emitter(grpc, Duration::from_secs(600));
    for c in calls {
        emitter.emit(c.clone());
    }
    assert!(
        emitter.flush(Duration::from_secs(20)).await,
        "not acknowledged"
    );
    assert_eq!(emitter.stats().exported, calls.len() as u64);
}

/// One raw export of `calls`, as an exporter's retry sends it.
async fn send(grpc: std::net::SocketAddr, calls: &[ToolCall]) -> Result<(), tonic::Status> {
    let spans = calls
        .iter()
        .map(|c| to_span(c, &SpanOptions::default()).into())
        .collect();
    let mut client = TraceServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    client
        .export(support::export_request(spans))
        .await
        .map(drop)
}

fn count(server: &PgServer, url: &str, filter: &str) -> usize {
    server
        .psql(
            db_name(url),
            &format!("SELECT count(*) FROM mcp_logs WHERE {filter}"),
        )
        .trim()
        .parse()
        .unwrap()
}

/// SIGTERM, the graceful stop (it signs the shutdown checkpoint), and the exit.
fn stop(mut c: CollectProcess) {
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(c.child.id() as i32, libc::SIGTERM) };
    assert!(c.wait(Duration::from_secs(20)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_calls_are_stored_exactly_once_and_verify() {
    let server = shared();
    let dir = support::tempdir();
    let url = server.fresh_db();
    let c = replica(&url, dir.path(), "r1");
    let batch = calls(50, "once");
    export(c.grpc, &batch).await;
    // Acknowledged means committed: the rows are there now.
    assert_eq!(count(server, &url, "tool_name LIKE 'once_%'"), 50);
    // The exporter's retry of an acknowledged export stores nothing again.
    send(c.grpc, &batch[10..30]).await.unwrap();
    export(c.grpc, &batch[..5]).await;
    assert_eq!(count(server, &url, "true"), 50);
    stop(c);
    let (code, out) = verify(&url, &["--require-signed"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("chain r1: audit trail intact: 50 rows"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_goes_away_gets_unavailable_and_nothing_is_lost() {
    let server = PgServer::private();
    let dir = support::tempdir();
    let url = server.fresh_db();
    let mut c = replica(&url, dir.path(), "r1");
    let before = calls(20, "before");
    export(c.grpc, &before).await;
    server.stop();
    let during = calls(10, "during");
    let refused = send(c.grpc, &during).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    // Again: it stays a retryable refusal, and collect keeps running.
    let again = send(c.grpc, &during).await.unwrap_err();
    assert_eq!(again.code(), tonic::Code::Unavailable, "{again:?}");
    assert!(c.child.try_wait().unwrap().is_none(), "collect exited");
    server.start_again();
    // The exporter's retry now goes through, once.
    send(c.grpc, &during).await.unwrap();
    send(c.grpc, &during).await.unwrap();
    export(c.grpc, &calls(5, "after")).await;
    assert_eq!(count(&server, &url, "tool_name LIKE 'before_%'"), 20);
    assert_eq!(count(&server, &url, "tool_name LIKE 'during_%'"), 10);
    assert_eq!(count(&server, &url, "true"), 35);
    stop(c);
    let (code, out) = verify(&url, &["--require-signed"]);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_write_two_chains_that_both_verify() {
    let server = shared();
    let dir = support::tempdir();
    let url = server.fresh_db();
    let r1 = replica(&url, dir.path(), "r1");
    let r2 = replica(&url, dir.path(), "r2");
    let (one, two) = (calls(40, "one"), calls(40, "two"));
    tokio::join!(export(r1.grpc, &one), export(r2.grpc, &two));
    // A retry that the load balancer sends to the other replica.
    send(r2.grpc, &one[..20]).await.unwrap();
    assert_eq!(count(server, &url, "chain_id = 'r1'"), 40);
    assert_eq!(count(server, &url, "chain_id = 'r2'"), 40);
    stop(r1);
    stop(r2);
    let (code, out) = verify(&url, &["--require-signed"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("chain r1: audit trail intact: 40 rows")
            && out.contains("chain r2: audit trail intact: 40 rows")
            && out.contains("2 chain(s), all intact"),
        "{out}"
    );
}
