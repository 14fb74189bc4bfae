//! collect with its audit trail: an export is acknowledged only after its calls are committed;
//! retries do not duplicate; the trail verifies and answers the daily write review, locally and
//! over the collector's gRPC port.

mod common;

use mcp_otel::collect::{CollectConfig, start};
use mcp_otel::record::{OperationType, Status, ToolCall, WriteOp};
use std::process::Command;
use std::time::Duration;

fn audit(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mcp-otel"))
        .arg("audit")
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_exports_are_in_the_audit_trail() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let config = CollectConfig {
        audit: Some(db.clone()),
        ..CollectConfig::ephemeral()
    };
    let c = start(&config, None).await.unwrap();
    let emitter = common::otlp_emitter(c.grpc_addr, Duration::from_secs(600));
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
    let (ok, out) = audit(&[
        "sql",
        "--db",
        db.to_str().unwrap(),
        "SELECT COUNT(*) AS n FROM mcp_logs",
    ]);
    assert!(ok && out.contains('3'), "{out}");

    // The collector's retry of the same export does not duplicate rows.
    let again = common::otlp_emitter(c.grpc_addr, Duration::from_secs(600));
    again.emit(delete);
    assert!(again.flush(Duration::from_secs(10)).await);
    let (_, out) = audit(&[
        "sql",
        "--db",
        db.to_str().unwrap(),
        "SELECT COUNT(*) AS n FROM mcp_logs",
    ]);
    assert!(
        out.contains('3') && !out.contains('4'),
        "a retry must not add a row: {out}"
    );

    let (ok, out) = audit(&["verify", "--db", db.to_str().unwrap()]);
    assert!(ok, "{out}");
    let (ok, out) = audit(&[
        "review",
        "--db",
        db.to_str().unwrap(),
        "--since",
        "24h",
        "--json",
    ]);
    assert!(ok, "{out}");
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
    let (ok, rout) = audit(&["review", "--remote", &remote, "--since", "24h", "--json"]);
    assert!(ok, "{rout}");
    assert!(rout.contains("mallory"), "{rout}");
    c.shutdown().await;
}
