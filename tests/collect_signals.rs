//! `mcp-otel collect` as a process, stopped the way service managers stop it: SIGTERM (docker
//! stop, Kubernetes, systemd), SIGINT and SIGHUP each drain and sign the audit head before
//! exiting, so a stopped collector leaves no unsigned row.

mod support;

use mcp_otel::record::ToolCall;
use std::ffi::OsStr;
use std::process::Command;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_mcp-otel");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stop_signal_drains_and_signs_the_audit_head() {
    for signal in ["TERM", "INT", "HUP"] {
        let dir = support::tempdir();
        let db = dir.path().join("audit.db");
        let mut collect =
            support::CollectProcess::start(BIN, &[OsStr::new("--audit"), db.as_os_str()]);
        let emitter = support::otlp_emitter(collect.grpc, Duration::from_secs(3600));
        for i in 0..5 {
            emitter.emit(ToolCall::new(format!("delete_task_{i}"), "alice"));
        }
        assert!(
            emitter.flush(Duration::from_secs(10)).await,
            "export acknowledged"
        );
        let pid = collect.child.id().to_string();
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status();
        assert!(sent.unwrap().success());
        let status = collect.wait(Duration::from_secs(15));
        assert!(
            status.success(),
            "SIG{signal}: collect exited with {status}"
        );
        let verify = Command::new(BIN)
            .args(["audit", "verify", "--require-signed", "--db"])
            .arg(&db)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&verify.stdout);
        assert!(verify.status.success(), "SIG{signal}: {text}");
        assert!(text.contains("5 rows"), "SIG{signal}: {text}");
        assert!(text.contains("signed through row 5"), "SIG{signal}: {text}");
    }
}
