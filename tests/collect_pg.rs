//! `mcp-otel collect --audit postgres://…` as a process, fed over OTLP/gRPC by the library's
//! own exporter, against a real PostgreSQL server (tests/support/pg.rs): what is acknowledged
//! is stored exactly once and verifies; a database that goes away mid-run gets UNAVAILABLE
//! answers (collect keeps running, nothing is acknowledged that is not stored) and the export
//! goes through once it is back; two replicas write two chains into one table, and a retry
//! that reaches the other replica is not stored twice. Other instrumentations' spans wait out
//! the hold window in `collect_held_calls`: staged before the acknowledgement, stored once
//! after a SIGKILL, released when ours comes, each replica's kept apart.

mod support;

use mcp_otel::emit::{SpanOptions, to_span};
use mcp_otel::record::ToolCall;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::trace::v1::Span;
use std::path::Path;
use std::time::Duration;
use support::CollectProcess;
use support::pg::{PgServer, db_name, roles_sql, shared, verified};
use support::spans::{ids, ours, ours_span, server_span};

const BIN: &str = env!("CARGO_BIN_EXE_mcp-otel");

/// A collect replica writing chain `chain` into `url`, its key in `dir`.
fn replica(url: &str, dir: &Path, chain: &str) -> CollectProcess {
    holding(url, dir, chain, "10s")
}

/// [`replica`] whose hold window (for other instrumentations' spans) is `hold`.
fn holding(url: &str, dir: &Path, chain: &str, hold: &str) -> CollectProcess {
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
            "--hold-window",
            hold,
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

/// One raw export of `spans` to a replica that listens: its answer.
async fn send_spans(grpc: std::net::SocketAddr, spans: Vec<Span>) -> Result<(), tonic::Status> {
    support::export_spans(grpc, spans).await
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

/// The shared server, a folder for the replicas' keys, and a fresh database's URL.
fn fresh() -> (&'static PgServer, tempfile::TempDir, String) {
    let server = shared();
    (server, support::tempdir(), server.fresh_db())
}

/// The calls held (staged) by the replica of chain `chain`.
fn held(server: &PgServer, url: &str, chain: &str) -> usize {
    server
        .psql(
            db_name(url),
            &format!("SELECT count(*) FROM collect_held_calls WHERE chain_id = '{chain}'"),
        )
        .trim()
        .parse()
        .unwrap()
}

/// The rows of `mcp_logs` as `chain | tool | user` lines, by tool and chain.
fn stored(server: &PgServer, url: &str) -> Vec<String> {
    let out = server.psql(
        db_name(url),
        "SELECT chain_id || ' | ' || tool_name || ' | ' || \"user\" FROM mcp_logs \
         ORDER BY tool_name, chain_id",
    );
    out.lines().map(str::to_owned).collect()
}

/// Waits (up to 20 s) until `done`, then a little longer, so that a late double count shows.
async fn settled(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "not settled: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// SIGKILL: no shutdown, no checkpoint; the exit.
fn kill(mut c: CollectProcess) {
    c.child.kill().unwrap();
    c.child.wait().unwrap();
}

/// SIGTERM, the graceful stop (it signs the shutdown checkpoint), and the exit.
fn stop(mut c: CollectProcess) {
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(c.child.id() as i32, libc::SIGTERM) };
    let status = c.wait(Duration::from_secs(20));
    assert!(
        status.success(),
        "{status:?}: {:?}",
        c.stderr.lock().unwrap()
    );
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
    let mut c = holding(&url, dir.path(), "r1", "1s");
    let before = calls(20, "before");
    export(c.grpc, &before).await;
    server.stop();
    let during = calls(10, "during");
    let refused = send(c.grpc, &during).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    // Another instrumentation's span cannot be staged: refused too, not held in memory.
    let theirs = ours("delete_note", "-", ids(0x0d, 0xd0, 0), "1");
    let theirs = vec![server_span(&theirs, ids(0x0d, 0xd1, 0))];
    let refused = send_spans(c.grpc, theirs.clone()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    // Again: it stays a retryable refusal, and collect keeps running.
    let again = send(c.grpc, &during).await.unwrap_err();
    assert_eq!(again.code(), tonic::Code::Unavailable, "{again:?}");
    assert!(c.child.try_wait().unwrap().is_none(), "collect exited");
    server.start_again();
    // The exporter's retry now goes through, once.
    send(c.grpc, &during).await.unwrap();
    send(c.grpc, &during).await.unwrap();
    send_spans(c.grpc, theirs.clone()).await.unwrap();
    send_spans(c.grpc, theirs).await.unwrap();
    export(c.grpc, &calls(5, "after")).await;
    settled("the held call promoted", || held(&server, &url, "r1") == 0).await;
    assert_eq!(count(&server, &url, "tool_name LIKE 'before_%'"), 20);
    assert_eq!(count(&server, &url, "tool_name LIKE 'during_%'"), 10);
    assert_eq!(count(&server, &url, "tool_name = 'delete_note'"), 1);
    assert_eq!(count(&server, &url, "true"), 36);
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

/// Another instrumentation's span of a call waits out the hold window in `collect_held_calls`:
/// acknowledged once staged, it survives a SIGKILL of collect and is stored once by the
/// restarted replica; a held span whose call ours stored before the kill is recognised from
/// `mcp_logs` after the restart, not stored again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_call_survives_a_sigkill_and_is_stored_once() {
    let (server, dir, url) = fresh();
    let c = holding(&url, dir.path(), "r1", "4s");
    let alone = ours("delete_note", "-", ids(0x0a, 0xa0, 0), "1");
    let twin = ours("create_note", "bob", ids(0x0b, 0xb0, 0), "2");
    send_spans(
        c.grpc,
        vec![
            server_span(&alone, ids(0x0a, 0xa1, 0)),
            server_span(&twin, ids(0x0b, 0xb1, 0xb0)),
        ],
    )
    .await
    .unwrap();
    send_spans(c.grpc, vec![ours_span(&twin)]).await.unwrap();
    // Acknowledged: both held spans are staged, ours is stored.
    assert_eq!(held(server, &url, "r1"), 2);
    assert_eq!(stored(server, &url), ["r1 | create_note | bob"]);
    kill(c);
    let c = holding(&url, dir.path(), "r1", "4s");
    settled("the held call promoted", || {
        held(server, &url, "r1") == 0 && count(server, &url, "true") >= 2
    })
    .await;
    assert_eq!(
        stored(server, &url),
        ["r1 | create_note | bob", "r1 | delete_note | unknown"],
        "only the held call that nothing else recorded, once"
    );
    assert_eq!(held(server, &url, "r1"), 0);
    stop(c);
    verified(&url, &[("r1", 2)]);
}

/// A held span whose twin of ours arrives is not stored: ours is, once, and the staging row
/// leaves when the span is due. Run as the README's `collect` role, whose grants on
/// `collect_held_calls` are what staging and releasing need.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_call_whose_twin_arrives_is_stored_once_and_released() {
    let (server, dir, url) = fresh();
    let db = db_name(&url).to_owned();
    // The owner creates the schema once (on start); then collect runs as its own role.
    kill(replica(&url, dir.path(), "owner"));
    server.psql(&db, &roles_sql(&db));
    let collect_url = server.url_as(&format!("{db}_collect"), &db);
    let c = holding(&collect_url, dir.path(), "r1", "2s");
    let call = ours("update_note", "carol", ids(0x0c, 0xc0, 0), "3");
    send_spans(c.grpc, vec![server_span(&call, ids(0x0c, 0xc1, 0xc0))])
        .await
        .unwrap();
    assert_eq!(
        held(server, &url, "r1"),
        1,
        "staged before the acknowledgement"
    );
    send_spans(c.grpc, vec![ours_span(&call)]).await.unwrap();
    settled("the twin released", || held(server, &url, "r1") == 0).await;
    assert_eq!(stored(server, &url), ["r1 | update_note | carol"]);
    stop(c);
    verified(&url, &[("r1", 1)]);
}

/// Two replicas share one database: each stages, restores and releases only its own held
/// calls. Both killed while holding; the first restarted stores its own call and leaves the
/// other's staged (not stored, not dropped) until that replica is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_a_database_keep_their_held_calls_apart() {
    let (server, dir, url) = fresh();
    let (r1, r2) = (
        holding(&url, dir.path(), "r1", "2s"),
        holding(&url, dir.path(), "r2", "2s"),
    );
    let one = ours("create_note", "-", ids(0x1a, 0xa0, 0), "1");
    let two = ours("delete_note", "-", ids(0x2a, 0xa0, 0), "1");
    send_spans(r1.grpc, vec![server_span(&one, ids(0x1a, 0xa1, 0))])
        .await
        .unwrap();
    send_spans(r2.grpc, vec![server_span(&two, ids(0x2a, 0xa1, 0))])
        .await
        .unwrap();
    assert_eq!((held(server, &url, "r1"), held(server, &url, "r2")), (1, 1));
    kill(r1);
    kill(r2);
    let r2 = holding(&url, dir.path(), "r2", "2s");
    settled("r2's held call promoted", || held(server, &url, "r2") == 0).await;
    // Past r1's call's due time too: r2 neither took it nor dropped it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stored(server, &url), ["r2 | delete_note | unknown"]);
    assert_eq!(held(server, &url, "r1"), 1);
    let r1 = holding(&url, dir.path(), "r1", "2s");
    settled("r1's held call promoted", || held(server, &url, "r1") == 0).await;
    assert_eq!(
        stored(server, &url),
        ["r1 | create_note | unknown", "r2 | delete_note | unknown"]
    );
    stop(r1);
    stop(r2);
    verified(&url, &[("r1", 1), ("r2", 1)]);
}

/// A replica restarted while the database is down starts all the same, refuses exports
/// (UNAVAILABLE) while it cannot restore the calls it held, and once the database is back
/// stores the call it held before the kill, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_calls_are_restored_once_the_database_is_back() {
    let server = PgServer::private();
    let dir = support::tempdir();
    let url = server.fresh_db();
    let c = holding(&url, dir.path(), "r1", "1s");
    let theirs = ours("delete_note", "-", ids(0x0e, 0xe0, 0), "1");
    send_spans(c.grpc, vec![server_span(&theirs, ids(0x0e, 0xe1, 0))])
        .await
        .unwrap();
    assert_eq!(held(&server, &url, "r1"), 1);
    kill(c);
    server.stop();
    let c = holding(&url, dir.path(), "r1", "1s");
    let mine = calls(3, "restart");
    let refused = send(c.grpc, &mine).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    server.start_again();
    send(c.grpc, &mine).await.unwrap();
    settled("the restored call promoted", || {
        held(&server, &url, "r1") == 0 && count(&server, &url, "true") >= 4
    })
    .await;
    assert_eq!(count(&server, &url, "tool_name = 'delete_note'"), 1);
    assert_eq!(count(&server, &url, "true"), 4);
    stop(c);
    verified(&url, &[("r1", 4)]);
}
