//! Signals and the stdio proxy: clients that quit the usual way (the official Python and
//! TypeScript SDKs close stdin, wait 2 s, then SIGTERM) in front of a server that takes 3 s to
//! exit lose no answered call; SIGTERM, SIGINT and SIGHUP are passed on to the server once,
//! the call in flight is recorded as `proxy_terminated`, the summary is printed and the exit
//! status is 128 + the signal.
//!
//! The batch delay is left at its default (5 s) throughout: the spans must leave because the
//! proxy exports when the client goes, not because a short delay happened to fire.

mod proxy_support;

use mcp_otel::collect::receive;
use mcp_otel::record::Status;
use proxy_support::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

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
fn export_env(receiver: &receive::RunningReceiver) -> Vec<(&'static str, String)> {
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
    let mut receiver = receive::serve("127.0.0.1:0".parse().unwrap(), 64)
        .await
        .unwrap();
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
    let mut receiver = receive::serve("127.0.0.1:0".parse().unwrap(), 64)
        .await
        .unwrap();
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

/// A scripted stdio server: answers `initialize` and the tool `fast`, never `slow`; writes the
/// name of every signal it gets to the marker file and exits 0.2 s after the first.
const FAKE_SERVER: &str = r#"
import json, os, signal, sys, threading
marker = sys.argv[1]
def on_signal(sig, frame):
    with open(marker, "a") as f:
        f.write(signal.Signals(sig).name + "\n")
    threading.Timer(0.2, lambda: os._exit(0)).start()
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, on_signal)
for line in sys.stdin:
    msg = json.loads(line)
    if "id" not in msg:
        continue
    if msg.get("method") == "initialize":
        result = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                  "serverInfo": {"name": "fake", "version": "1"}}
    elif msg.get("method") == "tools/call" and msg["params"]["name"] == "fast":
        result = {"content": [{"type": "text", "text": "ok"}]}
    else:
        continue
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}) + "\n")
    sys.stdout.flush()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_signal_is_passed_on_once_and_ends_the_call_in_flight() {
    let mut receiver = receive::serve("127.0.0.1:0".parse().unwrap(), 64)
        .await
        .unwrap();
    for (signal, name) in [
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGINT, "SIGINT"),
        (libc::SIGHUP, "SIGHUP"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("signals");
        let mut proxy = Command::new(PROXY)
            .args(["proxy", "--user", "signaller", "--log", "none"])
            .arg(python())
            .args(["-c", FAKE_SERVER])
            .arg(&marker)
            .envs(export_env(&receiver))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = proxy.stdin.take().unwrap();
        let stdout = BufReader::new(proxy.stdout.take().unwrap());
        let mut stderr = proxy.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        for msg in [
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "raw", "version": "1"}}}),
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": "fast", "arguments": {}}}),
            json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                "params": {"name": "slow", "arguments": {}}}),
        ] {
            writeln!(stdin, "{msg}").unwrap();
        }
        stdin.flush().unwrap();
        // The answer to `fast` came back: both calls have gone through the proxy.
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(20))
                .expect("the fast call is answered");
            if serde_json::from_str::<Value>(&line).unwrap()["id"] == 2 {
                break;
            }
        }
        let signalled = Instant::now();
        // SAFETY: kill takes plain integers; the pid is our own child's, not yet reaped.
        unsafe {
            libc::kill(proxy.id() as libc::pid_t, signal);
        }
        let status = loop {
            if let Some(s) = proxy.try_wait().unwrap() {
                break s;
            }
            assert!(
                signalled.elapsed() < Duration::from_secs(10),
                "the proxy did not stop on {name}"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let elapsed = signalled.elapsed();
        drop(stdin);
        let stderr = err.join().unwrap();
        assert_eq!(status.code(), Some(128 + signal), "{name}: {stderr}");
        assert!(elapsed < Duration::from_secs(3), "{name}: {elapsed:?}");
        assert!(stderr.contains(&format!("stopped by {name}")), "{stderr}");
        assert!(stderr.contains("2 tool calls recorded"), "{stderr}");
        assert!(
            stderr.contains("spans: 2 exported, 0 failed, 0 dropped"),
            "{name}: {stderr}"
        );
        let got = std::fs::read_to_string(&marker).unwrap_or_default();
        assert_eq!(
            got,
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
