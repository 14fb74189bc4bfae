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
use support::pg::{PgServer, db_name, shared, verified};

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

/// One raw export of `calls`, as an exporter's retry sends it: the replica's answer, or `Err`
/// when it is not listening (yet, or any more).
async fn try_send(
    grpc: std::net::SocketAddr,
    calls: &[ToolCall],
) -> Result<Result<(), tonic::Status>, tonic::transport::Error> {
    let spans = calls
        .iter()
        .map(|c| to_span(c, &SpanOptions::default()).into())
        .collect();
    let mut client = TraceServiceClient::connect(format!("http://{grpc}")).await?;
    Ok(client
        .export(support::export_request(spans))
        .await
        .map(drop))
}

/// [`try_send`] to a replica that listens: its answer.
async fn send(grpc: std::net::SocketAddr, calls: &[ToolCall]) -> Result<(), tonic::Status> {
    try_send(grpc, calls).await.expect("the replica listens")
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
    verified(&url, &[("r1", 50)]);
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
    verified(&url, &[]);
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
    let out = verified(&url, &[("r1", 40), ("r2", 40)]);
    assert!(out.contains("2 chain(s), all intact"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_stream_and_restarted_loses_nothing_acknowledged() {
    let server = shared();
    let dir = support::tempdir();
    let url = server.fresh_db();
    let mut replicas: Vec<CollectProcess> = ["r1", "r2", "r3"]
        .iter()
        .map(|c| replica(&url, dir.path(), c))
        .collect();
    let addrs = std::sync::Arc::new(std::sync::Mutex::new(
        replicas.iter().map(|r| r.grpc).collect::<Vec<_>>(),
    ));
    // 3 exporters, 40 exports of 50 calls each, all different calls.
    let batches: Vec<Vec<ToolCall>> = (0..120).map(|b| calls(50, &format!("kill{b}"))).collect();
    let mut tasks = Vec::new();
    for (e, chunk) in batches.chunks(40).enumerate() {
        let (addrs, chunk) = (addrs.clone(), chunk.to_vec());
        tasks.push(tokio::spawn(async move {
            let mut acknowledged = 0;
            for (i, batch) in chunk.iter().enumerate() {
                let mut attempt = e + i;
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                loop {
                    let addr = {
                        let a = addrs.lock().unwrap();
                        a[attempt % a.len()]
                    };
                    let sent =
                        tokio::time::timeout(Duration::from_secs(10), try_send(addr, batch)).await;
                    if let Ok(Ok(Ok(()))) = sent {
                        break;
                    }
                    assert!(
                        std::time::Instant::now() < deadline,
                        "no replica took an export"
                    );
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                acknowledged += batch.len();
            }
            acknowledged
        }));
    }
    // Mid-stream: r2 is killed outright (no shutdown checkpoint), then restarted on a new port
    // with its chain and key.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while count(server, &url, "chain_id = 'r2'") < 300 {
        assert!(std::time::Instant::now() < deadline, "r2 stored nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut r2 = replicas.remove(1);
    r2.child.kill().unwrap();
    r2.child.wait().unwrap();
    let rows_at_kill = count(server, &url, "chain_id = 'r2'");
    let all_at_kill = count(server, &url, "true");
    assert!(all_at_kill < 120 * 50, "the kill came after the stream");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let restarted = tokio::task::spawn_blocking({
        let (url, dir) = (url.clone(), dir.path().to_path_buf());
        move || replica(&url, &dir, "r2")
    })
    .await
    .unwrap();
    addrs.lock().unwrap()[1] = restarted.grpc;
    replicas.insert(1, restarted);
    let mut acknowledged = 0;
    for t in tasks {
        acknowledged += t.await.unwrap();
    }
    assert_eq!(acknowledged, 120 * 50);
    // Every acknowledged call is stored, and once, whichever replica took it.
    assert_eq!(count(server, &url, "tool_name LIKE 'kill%'"), acknowledged);
    let distinct = server.psql(
        db_name(&url),
        "SELECT count(DISTINCT (timestamp, trace_id, span_id)) FROM mcp_logs",
    );
    assert_eq!(distinct.trim().parse::<usize>().unwrap(), acknowledged);
    assert!(
        count(server, &url, "chain_id = 'r2'") >= rows_at_kill,
        "the restarted replica continues its chain"
    );
    for r in replicas {
        stop(r);
    }
    // The restarted replica signed over its killed predecessor's unsigned tail at shutdown.
    let out = verified(&url, &[]);
    assert!(out.contains("3 chain(s), all intact"), "{out}");
}
