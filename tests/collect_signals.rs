//! `mcp-otel collect` as a process, stopped the way service managers stop it: SIGTERM (docker
//! stop, Kubernetes, systemd), SIGINT and SIGHUP each drain and sign the audit head before
//! exiting, so a stopped collector leaves no unsigned row.

mod support;

use mcp_otel::record::ToolCall;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mcp-otel");

/// Starts collect on free loopback ports with an audit file; returns it and its gRPC address.
fn start(db: &std::path::Path) -> (std::process::Child, SocketAddr) {
    let mut child = Command::new(BIN)
        .args([
            "collect",
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args(["--metrics-listen", "127.0.0.1:0", "--audit"])
        .arg(db)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = first
        .split("OTLP/gRPC on ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap_or_else(|| panic!("no gRPC address in {first:?}"))
        .parse()
        .unwrap();
    // Keep reading stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

fn wait(child: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "collect did not stop in {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stop_signal_drains_and_signs_the_audit_head() {
    for signal in ["TERM", "INT", "HUP"] {
        let dir = support::tempdir();
        let db = dir.path().join("audit.db");
        let (mut child, addr) = start(&db);
        let emitter = support::otlp_emitter(addr, Duration::from_secs(3600));
        for i in 0..5 {
            emitter.emit(ToolCall::new(format!("delete_task_{i}"), "alice"));
        }
        assert!(
            emitter.flush(Duration::from_secs(10)).await,
            "export acknowledged"
        );
        let pid = child.id().to_string();
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status();
        assert!(sent.unwrap().success());
        let status = wait(&mut child, Duration::from_secs(15));
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
