//! Signals and the stdio proxy: clients that quit the usual way (the official Python and
//! TypeScript SDKs close stdin, wait 2 s, then SIGTERM) in front of a server that takes 3 s to
//! exit lose no answered call; SIGTERM, SIGINT and SIGHUP are passed on to the server once,
//! the call in flight is recorded as `proxy_terminated`, the summary is printed and the exit
//! status is 128 + the signal.
//!
//! The batch delay is left at its default (5 s) throughout: the spans must leave because the
//! proxy exports when the client goes, not because a short delay happened to fire.

mod support;

use mcp_otel::collect::testing;
use mcp_otel::record::Status;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::proxy::*;

/// server-memory, then 3 s of cleanup during which SIGTERM, SIGINT and SIGHUP are ignored: a
/// server that outlasts the SDKs' 2-second grace after stdin closes.
fn slow_exiting_memory_server(dir: &std::path::Path) -> Vec<String> {
    sh(format!(
        "MEMORY_FILE_PATH={} {}; trap '' TERM INT HUP; sleep 3",
        quote(&[dir.join("memory.jsonl").display().to_string()]),
        quote(&npm_server("server-memory"))
    ))
}

/// Twenty calls: ten writes and ten reads.
fn twenty_calls() -> Value {
    let mut steps = Vec::new();
    for i in 0..10 {
        steps.push(json!({"call": "create_entities",
            "args": {"entities": [{"name": format!("e{i}"), "entityType": "t", "observations": []}]}}));
        steps.push(json!({"call": "search_nodes", "args": {"query": format!("e{i}")}}));
    }
    Value::Array(steps)
}

/// Only the receiver's address: batching stays at its defaults.
fn export_env(receiver: &testing::RunningReceiver) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        ("OTEL_SERVICE_NAME", "proxy-under-signals".to_owned()),
    ]
}

fn assert_every_call_arrived(calls: &[mcp_otel::record::ToolCall], user: &str) {
    assert!(
        calls
            .iter()
            .all(|c| c.status == Status::Success && c.user == user),
        "{calls:#?}"
    );
    let writes = calls
        .iter()
        .filter(|c| c.tool_name == "create_entities")
        .count();
    assert_eq!(writes, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_client_that_quits_loses_no_answered_call() {
    let mut receiver = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let server = slow_exiting_memory_server(dir.path());
    let (out, stderr) = drive(
        &twenty_calls(),
        "py-quitter",
        &proxied(&[], &server),
        &export_env(&receiver),
    )
    .await;
    assert_eq!(out.len(), 20, "{out:#?}");
    let calls = calls(&mut receiver, 20).await;
    assert_every_call_arrived(&calls, "py-quitter");
    // The SDK really had to signal the proxy: the server was still cleaning up.
    assert!(stderr.contains("stopped by SIGTERM"), "{stderr}");
    assert!(stderr.contains("20 tool calls recorded"), "{stderr}");
    assert!(
        stderr.contains("spans: 20 exported, 0 failed, 0 dropped"),
        "{stderr}"
    );
}

/// Runs `tests/peers/mcp_drive_ts.mjs` (the TypeScript SDK client) with `script` against
/// `server`; returns its stdout lines and its stderr (where the proxy's stderr goes too).
fn drive_ts(
    script: &Value,
    client_name: &str,
    server: &[String],
    env: &[(&str, String)],
) -> (Vec<Value>, String) {
    let driver = peers().join("mcp_drive_ts.mjs");
    assert!(
        driver.exists()
            && peers()
                .join("node_modules/@modelcontextprotocol/sdk")
                .exists(),
        "missing test peer: the TypeScript SDK driver (run `bash scripts/setup-peers.sh`)"
    );
    let dir = tempfile::tempdir().unwrap();
    let script_path = dir.path().join("script.json");
    std::fs::write(&script_path, script.to_string()).unwrap();
    let mut cmd = Command::new("node");
    cmd.arg(&driver)
        .arg("--script")
        .arg(&script_path)
        .args(["--client-name", client_name, "--timeout", "20", "--"])
        .args(server)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("node runs the TypeScript driver");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut out = String::new();
    stdout.read_to_string(&mut out).unwrap();
    let status = child.wait().unwrap();
    let err = err.join().unwrap();
    assert!(status.success(), "driver failed ({status}):\n{out}\n{err}");
    let lines = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("driver lines are JSON"))
        .collect();
    (lines, err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_sdk_client_that_quits_loses_no_answered_call() {
    let mut receiver = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let server = slow_exiting_memory_server(dir.path());
    let proxy = proxied(&[], &server);
    let env = export_env(&receiver);
    let (out, stderr) =
        tokio::task::spawn_blocking(move || drive_ts(&twenty_calls(), "ts-quitter", &proxy, &env))
            .await
            .unwrap();
    assert_eq!(out.len(), 21, "{out:#?}");
    let closed = &out[20];
    assert_eq!(closed["type"], "closed");
    assert_eq!(
        closed["exit_code"], 143,
        "SIGTERM, handled: {closed} {stderr}"
    );
    assert!(
        closed["ms"].as_u64().unwrap() < 4000,
        "the proxy exits before the SDK's SIGKILL: {closed}"
    );
    let calls = calls(&mut receiver, 20).await;
    assert_every_call_arrived(&calls, "ts-quitter");
    assert!(stderr.contains("20 tool calls recorded"), "{stderr}");
    assert!(
        stderr.contains("spans: 20 exported, 0 failed, 0 dropped"),
        "{stderr}"
    );
}

/// A scripted stdio server ([`ANSWER_CALLS`] answering `initialize` and the tool `fast`, never
/// `slow`); writes the name of every signal it gets to the marker file (argv 1) and exits 0.2 s
/// after the first; at the end of its stdin it lingers for argv 2 seconds (default 0) before
/// exiting.
fn fake_server() -> String {
    const SIGNALS: &str = r#"
import os, signal, sys, threading, time
marker = sys.argv[1]
linger = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
def on_signal(sig, frame):
    with open(marker, "a") as f:
        f.write(signal.Signals(sig).name + "\n")
    threading.Timer(0.2, lambda: os._exit(0)).start()
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, on_signal)
def answered(msg):
    return msg["params"]["name"] == "fast"
"#;
    format!("{SIGNALS}{ANSWER_CALLS}time.sleep(linger)\n")
}

/// The proxy around [`fake_server`], spoken to with raw JSON-RPC lines.
struct RawSession {
    proxy: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
    marker: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl RawSession {
    /// Starts the proxy (in a process group of its own when `own_group`, as the Python SDK
    /// starts servers) and initializes the session.
    fn start(receiver: &testing::RunningReceiver, linger_secs: &str, own_group: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("signals");
        let mut cmd = Command::new(PROXY);
        cmd.args(["proxy", "--user", "signaller", "--log", "none"])
            .arg(python())
            .args(["-c", &fake_server()])
            .arg(&marker)
            .arg(linger_secs)
            .envs(export_env(receiver))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if own_group {
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        }
        let mut proxy = cmd.spawn().unwrap();
        let stdout = BufReader::new(proxy.stdout.take().unwrap());
        let mut stderr = proxy.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let mut session = RawSession {
            stdin: proxy.stdin.take(),
            proxy,
            lines,
            stderr: Some(stderr),
            marker,
            _dir: dir,
        };
        session.send(&[
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "raw", "version": "1"}}}),
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        ]);
        session.answer(1);
        session
    }

    fn send(&mut self, messages: &[Value]) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        for msg in messages {
            writeln!(stdin, "{msg}").unwrap();
        }
        stdin.flush().unwrap();
    }

    fn call(&mut self, id: u64, tool: &str) {
        self.send(&[json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": tool, "arguments": {}}})]);
    }

    /// Waits (bounded) for the answer to `id`.
    fn answer(&self, id: u64) {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("no answer to {id}"));
            if serde_json::from_str::<Value>(&line).unwrap()["id"] == id {
                return;
            }
        }
    }

    /// Sends `signal` to the proxy, or to its whole process group (as the Python SDK does).
    fn signal(&self, signal: i32, group: bool) {
        let pid = self.proxy.id() as libc::pid_t;
        // SAFETY: kill takes plain integers; the pid is our own child's, not yet reaped, and
        // leads its own group when `group` is asked for.
        unsafe {
            libc::kill(if group { -pid } else { pid }, signal);
        }
    }

    /// Waits (bounded) for the proxy to exit; returns its status, how long that took and its
    /// stderr.
    fn exit(&mut self, within: Duration) -> (std::process::ExitStatus, Duration, String) {
        let started = Instant::now();
        let status = loop {
            if let Some(s) = self.proxy.try_wait().unwrap() {
                break s;
            }
            assert!(
                started.elapsed() < within,
                "the proxy did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let elapsed = started.elapsed();
        self.stdin = None;
        let stderr = self.stderr.take().unwrap().join().unwrap();
        (status, elapsed, stderr)
    }

    fn signals_seen_by_the_server(&self) -> String {
        std::fs::read_to_string(&self.marker).unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_signal_is_passed_on_once_and_ends_the_call_in_flight() {
    let mut receiver = receiver().await;
    for (signal, name, group) in [
        (libc::SIGTERM, "SIGTERM", false),
        (libc::SIGINT, "SIGINT", false),
        (libc::SIGHUP, "SIGHUP", false),
        // To the proxy's whole process group, as the Python SDK sends it: the server, in a
        // group of its own, still gets it once, from the proxy.
        (libc::SIGTERM, "SIGTERM", true),
    ] {
        let mut session = RawSession::start(&receiver, "0", group);
        session.call(2, "fast");
        session.call(3, "slow");
        // The answer to `fast` came back: both calls have gone through the proxy.
        session.answer(2);
        session.signal(signal, group);
        let (status, elapsed, stderr) = session.exit(Duration::from_secs(10));
        assert_eq!(status.code(), Some(128 + signal), "{name}: {stderr}");
        assert!(elapsed < Duration::from_secs(3), "{name}: {elapsed:?}");
        assert!(stderr.contains(&format!("stopped by {name}")), "{stderr}");
        assert!(stderr.contains("2 tool calls recorded"), "{stderr}");
        assert!(
            stderr.contains("spans: 2 exported, 0 failed, 0 dropped"),
            "{name}: {stderr}"
        );
        assert_eq!(
            session.signals_seen_by_the_server(),
            format!("{name}\n"),
            "the server got {name} exactly once"
        );

        let calls = calls(&mut receiver, 2).await;
        let fast = by_tool(&calls, "fast");
        assert_eq!(fast.status, Status::Success);
        let slow = by_tool(&calls, "slow");
        assert_eq!(slow.status, Status::Error, "{name}: {slow:#?}");
        assert_eq!(slow.error_code.as_deref(), Some("proxy_terminated"));
        assert_eq!(slow.user, "signaller");
    }
}

/// With the default 5-second batch delay and a server that takes 5 s to exit after its stdin
/// closes, the answered calls still leave at once: the export starts when the client goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_calls_leave_when_stdin_closes_not_when_the_server_exits() {
    let mut receiver = receiver().await;
    let mut session = RawSession::start(&receiver, "5", false);
    session.call(2, "fast");
    session.answer(2);
    session.stdin = None;
    let closed = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(2), receiver.calls.recv())
        .await
        .expect("the call arrives within 2 s of stdin closing")
        .unwrap();
    assert_eq!(got.tool_name, "fast");
    assert!(
        session.proxy.try_wait().unwrap().is_none(),
        "the server (and so the proxy) is still running after {:?}",
        closed.elapsed()
    );
    session.signal(libc::SIGTERM, false);
    let (status, _, stderr) = session.exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(143), "{stderr}");
    assert!(
        stderr.contains("spans: 1 exported, 0 failed, 0 dropped"),
        "{stderr}"
    );
}
