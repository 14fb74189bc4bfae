//! collect with its audit trail: an export is acknowledged only after its calls are committed;
//! retries do not duplicate; the trail verifies and answers the daily write review, locally and
//! over the collector's gRPC port.

mod support;

use mcp_otel::collect::{CollectConfig, start};
use mcp_otel::record::{OperationType, Status, ToolCall, WriteOp};
use std::time::Duration;
use support::audit::cli;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_exports_are_in_the_audit_trail() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let config = CollectConfig {
        audit: Some(db.clone()),
        ..CollectConfig::ephemeral()
    };
    let c = start(&config, None).await.unwrap();
    let emitter = support::otlp_emitter(c.grpc_addr, Duration::from_secs(600));
    let mut delete = ToolCall::new("delete_task", "mallory");
    delete.write = Some(
        WriteOp::new(OperationType::Delete)
            .resource_id("t7")
            .confirmed(Some(false)),
    );
    let mut failed = ToolCall::new("update_task", "bob");
    failed.status = Status::Error;
    failed.error_code = Some("tool_error".into());
    failed.write = Some(WriteOp::new(OperationType::Update).resource_id("t2"));
    for call in [ToolCall::new("list_tasks", "alice"), delete.clone(), failed] {
        emitter.emit(call);
    }
    // flush returns once the exporter got the acknowledgement, which collect sends only after
    // the audit rows are committed: they must be there now.
    assert!(emitter.flush(Duration::from_secs(10)).await);
    assert_eq!(emitter.stats().exported, 3);
    let (code, out) = cli(&[
        "sql",
        "--db",
        db.to_str().unwrap(),
        "SELECT COUNT(*) AS n FROM mcp_logs",
    ]);
    assert!(code == 0 && out.contains('3'), "{out}");

    // The collector's retry of the same export does not duplicate rows.
    let again = support::otlp_emitter(c.grpc_addr, Duration::from_secs(600));
    again.emit(delete);
    assert!(again.flush(Duration::from_secs(10)).await);
    let (_, out) = cli(&[
        "sql",
        "--db",
        db.to_str().unwrap(),
        "SELECT COUNT(*) AS n FROM mcp_logs",
    ]);
    assert!(
        out.contains('3') && !out.contains('4'),
        "a retry must not add a row: {out}"
    );

    let (code, out) = cli(&["verify", "--db", db.to_str().unwrap()]);
    assert!(code == 0, "{out}");
    let (code, out) = cli(&[
        "review",
        "--db",
        db.to_str().unwrap(),
        "--since",
        "24h",
        "--json",
    ]);
    assert!(code == 0, "{out}");
    assert!(
        out.contains("delete_task") && out.contains("update_task"),
        "{out}"
    );
    assert!(
        !out.contains("list_tasks"),
        "reads are not in the write review: {out}"
    );
    // The same review over the collector's gRPC port.
    let remote = format!("http://{}", c.grpc_addr);
    let (code, rout) = cli(&["review", "--remote", &remote, "--since", "24h", "--json"]);
    assert!(code == 0, "{rout}");
    assert!(rout.contains("mallory"), "{rout}");
    c.shutdown().await;
}

/// `mcp_tool_calls_total` of the user `locked-out`.
fn locked_out(metrics: &str) -> f64 {
    support::metric_sum(metrics, "mcp_tool_calls_total", &["user=\"locked-out\""])
}

/// A locked database gives the export a retryable error (gRPC `UNAVAILABLE`) and counts nothing;
/// once the lock is gone the exporter's retry is stored and counted, and only once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_store_refuses_exports_retryably_and_metrics_keep_counting() {
    use mcp_otel::audit::writer::{AuditOptions, AuditWriter};
    use mcp_otel::collect::ingest::CallStore;
    use mcp_otel::emit::{SpanOptions, to_span};
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::trace::v1::Span;
    use std::sync::Arc;

    let dir = support::tempdir();
    let db = dir.path().join("audit.db");
    let writer = AuditWriter::open(&db, AuditOptions::default()).unwrap();
    let store: Arc<dyn CallStore> = Arc::new(writer);
    let c = start(&CollectConfig::ephemeral(), Some(store))
        .await
        .unwrap();
    let spans: Vec<Span> = (0..3)
        .map(|i| {
            to_span(
                &ToolCall::new(format!("tool{i}"), "locked-out"),
                &SpanOptions::default(),
            )
            .into()
        })
        .collect();
    let request = support::export_request(spans);
    let mut client = TraceServiceClient::connect(format!("http://{}", c.grpc_addr))
        .await
        .unwrap();

    // Another process holds the write lock for longer than the writer waits.
    let lock = rusqlite::Connection::open(&db).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let refused = client.export(request.clone()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused}");
    assert!(refused.message().contains("audit"), "{refused}");
    let metrics = support::scrape_metrics(c.metrics_addr).await;
    let counted = locked_out(&metrics);
    assert_eq!(
        counted, 0.0,
        "a refused export counts nothing (its retry will): {metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("mcp_otel_audit_errors_total 1")),
        "{metrics}"
    );

    // The lock goes; the exporter retries (twice, as an impatient one may): stored once.
    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);
    client.export(request.clone()).await.unwrap();
    client.export(request).await.unwrap();
    let rows: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row(
            "SELECT count(*) FROM mcp_logs WHERE user = 'locked-out'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(rows, 3);
    let metrics = support::scrape_metrics(c.metrics_addr).await;
    let counted = locked_out(&metrics);
    assert_eq!(counted, 3.0, "the retries counted once: {metrics}");
    let (code, out) = cli(&["verify", "--db", db.to_str().unwrap()]);
    assert!(code == 0, "{out}");
}
