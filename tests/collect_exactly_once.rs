//! Exactly once, on the collector side (issue 16): every real call is one count in
//! `mcp_tool_calls_total` and one audit row, whichever layers instrument it (ours, the MCP
//! server's own SERVER span, a client's CLIENT span), whatever order their exports arrive in,
//! and however often an exporter resends an export the store first refused.
//!
//! The spans here are built in-process in the exact shapes the real peers send
//! (`collect_exactly_once_peers.rs` runs the peers themselves) and go over real OTLP/gRPC.

mod support;

use mcp_otel::collect::{CollectConfig, RunningCollector, start};
use mcp_otel::record::{ToolCall, TraceIds};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::spans::{ids, ours, ours_span, server_span};
use support::{metric_sum as sum, string_kv as kv};

const HOLD: Duration = Duration::from_millis(600);

fn config(audit: Option<&Path>) -> CollectConfig {
    CollectConfig {
        audit: audit.map(Path::to_path_buf),
        hold_window: HOLD,
        ..CollectConfig::ephemeral()
    }
}

/// Starts collect with an audit trail in a fresh folder; returns the folder, the store's path
/// and the collector.
async fn start_audited() -> (tempfile::TempDir, PathBuf, RunningCollector) {
    let dir = support::tempdir();
    let db = dir.path().join("audit.db");
    let c = start(&config(Some(&db)), None).await.unwrap();
    (dir, db, c)
}

/// The SDK 2.x client's span: `MCP send tools/call X`, no tool name attribute.
fn client_span(of: &ToolCall, ids: TraceIds) -> Span {
    let start = of.timestamp.timestamp_nanos_opt().unwrap() as u64;
    Span {
        name: format!("MCP send tools/call {}", of.tool_name),
        kind: SpanKind::Client as i32,
        trace_id: ids.trace_id.to_vec(),
        span_id: ids.span_id.to_vec(),
        start_time_unix_nano: start,
        end_time_unix_nano: start + 40_000_000,
        attributes: vec![
            kv("mcp.method.name", "tools/call"),
            kv("jsonrpc.request.id", of.mcp.request_id.as_deref().unwrap()),
        ],
        ..Default::default()
    }
}

async fn send(c: &RunningCollector, spans: Vec<Span>) -> Result<(), tonic::Status> {
    support::export_spans(c.grpc_addr, spans).await
}

async fn metrics(c: &RunningCollector) -> String {
    support::scrape_metrics(c.metrics_addr).await
}

/// Waits until nothing is held and `mcp_tool_calls_total` reached `want`, then a little
/// longer (a late double count must have its chance to show).
async fn settle(c: &RunningCollector, want: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = metrics(c).await;
        let done = sum(&text, "mcp_otel_calls_held", &[]) == 0.0
            && sum(&text, "mcp_tool_calls_total", &[]) >= want;
        if done || Instant::now() > deadline {
            tokio::time::sleep(HOLD * 2).await;
            return metrics(c).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn rows(db: &Path, sql: &str) -> Vec<Vec<String>> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn.prepare(sql).unwrap();
    let n = stmt.column_count();
    stmt.query_map([], |r| {
        (0..n)
            .map(|i| {
                use rusqlite::types::Value;
                r.get::<_, Value>(i).map(|v| match v {
                    Value::Null => "NULL".to_owned(),
                    Value::Integer(n) => n.to_string(),
                    Value::Real(f) => f.to_string(),
                    Value::Text(t) => t,
                    Value::Blob(_) => "<blob>".to_owned(),
                })
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// Behind the proxy: the server's SERVER span is the child of the proxy's (the injected
/// `traceparent`) or its sibling (the client's own `traceparent` forwarded), and arrives before
/// or after ours; the client's CLIENT span comes too. Each call counts once, ours wins (user),
/// the server's span fills what ours lacks (protocol version), and a call only the server saw
/// counts once after the hold window, classified like the proxy would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_layer_of_one_call_gives_one_count_and_one_row() {
    let (_dir, db, c) = start_audited().await;

    // 1: child shape, ours first. 2: child shape, the server's first.
    // 3: sibling shape (both under the client's span 0x33), ours first. 4: sibling, theirs first.
    let c1 = ours("create_note", "alice", ids(1, 0x10, 0), "1");
    let c2 = ours("delete_note", "alice", ids(2, 0x20, 0), "2");
    let c3 = ours("create_note", "alice", ids(3, 0x30, 0x33), "3");
    let c4 = ours("get_note", "alice", ids(4, 0x40, 0x44), "4");
    let s1 = server_span(&c1, ids(1, 0x11, 0x10));
    let s2 = server_span(&c2, ids(2, 0x21, 0x20));
    let s3 = server_span(&c3, ids(3, 0x31, 0x33));
    let s4 = server_span(&c4, ids(4, 0x41, 0x44));
    let k3 = client_span(&c3, ids(3, 0x33, 0));
    send(&c, vec![ours_span(&c1), k3]).await.unwrap();
    send(&c, vec![s1, s2, s4]).await.unwrap();
    send(&c, vec![ours_span(&c2), ours_span(&c3)])
        .await
        .unwrap();
    send(&c, vec![s3]).await.unwrap();
    // Ours of call 4 comes a moment later, still inside the hold window.
    tokio::time::sleep(HOLD / 3).await;
    send(&c, vec![ours_span(&c4)]).await.unwrap();
    // 5: a call only the server instrumented (no proxy): counted after the window.
    let c5 = ours("delete_note", "unused", ids(5, 0x50, 0), "5");
    send(&c, vec![server_span(&c5, ids(5, 0x51, 0))])
        .await
        .unwrap();

    let text = settle(&c, 5.0).await;
    assert_eq!(sum(&text, "mcp_tool_calls_total", &[]), 5.0, "{text}");
    assert_eq!(
        sum(&text, "mcp_tool_calls_total", &["user=\"alice\""]),
        4.0,
        "{text}"
    );
    assert_eq!(
        sum(
            &text,
            "mcp_tool_calls_total",
            &["user=\"unknown\"", "tool_name=\"delete_note\""]
        ),
        1.0,
        "the server-only call: {text}"
    );
    assert_eq!(
        sum(
            &text,
            "mcp_write_operations_total",
            &["operation_type=\"delete\""]
        ),
        1.0,
        "the server-only delete is a delete; ours has no write state in this test: {text}"
    );
    assert!(!text.contains("send tools/call"), "{text}");
    let stored = rows(
        &db,
        "SELECT trace_id, user, json_extract(mcp, '$.protocol_version'), operation_type \
         FROM mcp_logs ORDER BY trace_id",
    );
    assert_eq!(stored.len(), 5, "{stored:?}");
    for (i, row) in stored.iter().take(4).enumerate() {
        assert_eq!(row[1], "alice", "call {}: ours wins: {row:?}", i + 1);
    }
    // Ours filled its gap from the server's span when that was held when ours came (2 and 4).
    assert_eq!(stored[1][2], "2025-11-25", "{stored:?}");
    assert_eq!(stored[3][2], "2025-11-25", "{stored:?}");
    assert_eq!(
        stored[4][1..],
        ["unknown", "2025-11-25", "delete"],
        "{stored:?}"
    );
    let staged = rows(&db, "SELECT count(*) FROM collect_held_calls");
    assert_eq!(staged[0][0], "0", "settled holds leave the staging table");
    c.shutdown().await;
}

/// Point 4: a store that refuses an export (locked) counts nothing and answers UNAVAILABLE; the
/// exporter's retries (twice) then count every call once, and alerts see no duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_retried_after_a_locked_store_counts_once() {
    let (_dir, db, c) = start_audited().await;
    let a = ours("create_note", "locked-out", ids(7, 0x70, 0), "1");
    let b = ours("update_note", "locked-out", ids(8, 0x80, 0), "2");
    let foreign_only = ours("delete_note", "-", ids(9, 0x90, 0), "3");
    let spans = vec![
        ours_span(&a),
        server_span(&a, ids(7, 0x71, 0x70)),
        ours_span(&b),
        server_span(&foreign_only, ids(9, 0x91, 0)),
    ];
    let lock = rusqlite::Connection::open(&db).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let refused = send(&c, spans.clone()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused}");
    let text = metrics(&c).await;
    assert_eq!(
        sum(&text, "mcp_tool_calls_total", &[]),
        0.0,
        "nothing counted: {text}"
    );
    assert_eq!(sum(&text, "mcp_write_operations_total", &[]), 0.0, "{text}");
    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);
    send(&c, spans.clone()).await.unwrap();
    send(&c, spans).await.unwrap();
    let text = settle(&c, 3.0).await;
    assert_eq!(sum(&text, "mcp_tool_calls_total", &[]), 3.0, "{text}");
    assert_eq!(
        sum(&text, "mcp_write_operations_total", &[]),
        1.0,
        "the held delete: {text}"
    );
    assert!(
        sum(&text, "mcp_otel_spans_resent_total", &[]) >= 2.0,
        "{text}"
    );
    assert_eq!(rows(&db, "SELECT count(*) FROM mcp_logs")[0][0], "3");
    c.shutdown().await;
}

/// A held call survives a restart (the staging table), and after it a held record whose call
/// ours already stored before the restart is recognised from the audit trail, not counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_calls_survive_a_restart() {
    let dir = support::tempdir();
    let db = dir.path().join("audit.db");
    let slow = CollectConfig {
        hold_window: Duration::from_secs(3),
        ..config(Some(&db))
    };
    let c = start(&slow, None).await.unwrap();
    let alone = ours("delete_note", "-", ids(0x0a, 0xa0, 0), "1");
    let twin = ours("create_note", "bob", ids(0x0b, 0xb0, 0), "2");
    send(
        &c,
        vec![
            server_span(&alone, ids(0x0a, 0xa1, 0)),
            server_span(&twin, ids(0x0b, 0xb1, 0xb0)),
        ],
    )
    .await
    .unwrap();
    // Ours of the twin comes next: stored at once; its held twin leaves only when due.
    send(&c, vec![ours_span(&twin)]).await.unwrap();
    let text = metrics(&c).await;
    assert_eq!(
        sum(&text, "mcp_tool_calls_total", &[]),
        1.0,
        "ours at once: {text}"
    );
    assert_eq!(sum(&text, "mcp_otel_calls_held", &[]), 2.0, "{text}");
    c.shutdown().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        rows(&db, "SELECT count(*) FROM collect_held_calls")[0][0],
        "2"
    );

    let c = start(&slow, None).await.unwrap();
    let text = settle(&c, 1.0).await;
    assert_eq!(
        sum(&text, "mcp_tool_calls_total", &[]),
        1.0,
        "only the held call that nothing else recorded: {text}"
    );
    let stored = rows(&db, "SELECT tool_name, user FROM mcp_logs ORDER BY id");
    assert_eq!(
        stored,
        [["create_note", "bob"], ["delete_note", "unknown"]],
        "{stored:?}"
    );
    assert_eq!(
        rows(&db, "SELECT count(*) FROM collect_held_calls")[0][0],
        "0"
    );
    c.shutdown().await;
}

/// Without an audit trail the hold lives in memory and a resent span is recognised from the
/// recently counted ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_audit_trail_a_resent_export_counts_once() {
    let c = start(&config(None), None).await.unwrap();
    let a = ours("create_note", "carol", ids(0x0c, 0xc0, 0), "1");
    let only = ours("create_note", "-", ids(0x0d, 0xd0, 0), "2");
    let spans = vec![
        ours_span(&a),
        server_span(&a, ids(0x0c, 0xc1, 0xc0)),
        server_span(&only, ids(0x0d, 0xd1, 0)),
    ];
    send(&c, spans.clone()).await.unwrap();
    send(&c, spans.clone()).await.unwrap();
    let text = settle(&c, 2.0).await;
    send(&c, spans).await.unwrap(); // after the promotion too
    tokio::time::sleep(HOLD * 2).await;
    let text2 = metrics(&c).await;
    assert_eq!(sum(&text, "mcp_tool_calls_total", &[]), 2.0, "{text}");
    assert_eq!(sum(&text2, "mcp_tool_calls_total", &[]), 2.0, "{text2}");
    assert_eq!(
        sum(&text2, "mcp_write_operations_total", &[]),
        1.0,
        "the server-only create is classified; ours carries no write here: {text2}"
    );
    c.shutdown().await;
}
