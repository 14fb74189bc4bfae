//! The proxy tests' fixtures: running the Python SDK driver, the proxy's command line and
//! exporter environment, collecting calls from an OTLP receiver. Peer lookups are the parent's.

use super::{example_bin, peer_script};
#[allow(unused_imports)] // the proxy tests take these from here with `use support::proxy::*`
pub use super::{npm_server, peers_dir as peers, python};

use mcp_otel::collect::testing::RunningReceiver;
use mcp_otel::record::ToolCall;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

pub const PROXY: &str = env!("CARGO_BIN_EXE_mcp-otel");

/// A Python stdio server: answers `initialize` and every `tools/call`; ignores the rest (`python -c`).
/// Code placed before it that defines `answered(msg)` limits the calls it answers to those for
/// which that returns true.
pub const ANSWER_CALLS: &str = r#"
import json, sys
answered = globals().get("answered", lambda msg: True)
for line in sys.stdin:
    msg = json.loads(line)
    if "id" not in msg:
        continue
    if msg.get("method") == "initialize":
        result = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                  "serverInfo": {"name": "fake", "version": "1"}}
    elif msg.get("method") == "tools/call" and answered(msg):
        result = {"content": [{"type": "text", "text": "ok"}]}
    else:
        continue
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}) + "\n")
    sys.stdout.flush()
"#;

/// The Python SDK driver script.
pub fn driver() -> PathBuf {
    peer_script("mcp_drive.py")
}

/// A compiled example, built with the test's own profile when missing.
pub fn example(name: &str) -> PathBuf {
    example_bin(name)
}

/// Runs the Python SDK driver with `script` against the stdio server `server` (a command line).
pub async fn drive(
    script: &Value,
    client_name: &str,
    server: &[String],
    env: &[(&str, String)],
) -> (Vec<Value>, String) {
    drive_with(script, client_name, &[], Some(server), env).await
}

/// [`drive`] with extra driver options (`--http URL`, `--header K=V`) and maybe no server.
pub async fn drive_with(
    script: &Value,
    client_name: &str,
    options: &[String],
    server: Option<&[String]>,
    env: &[(&str, String)],
) -> (Vec<Value>, String) {
    let dir = tempfile::tempdir().unwrap();
    let script_path = dir.path().join("script.json");
    std::fs::write(&script_path, script.to_string()).unwrap();
    let mut cmd = tokio::process::Command::new(python());
    cmd.arg(driver())
        .arg("--script")
        .arg(&script_path)
        .arg("--client-name")
        .arg(client_name)
        .arg("--timeout")
        .arg("20")
        .args(options)
        .kill_on_drop(true);
    if let Some(server) = server {
        cmd.arg("--").args(server);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out: Output = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("the driver finishes in time")
        .expect("the driver runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "driver failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    let lines = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("driver lines are JSON"))
        .collect();
    (lines, stderr)
}

/// `@modelcontextprotocol/server-memory` keeping its graph in `dir/memory.jsonl`.
pub fn memory_server(dir: &std::path::Path) -> Vec<String> {
    let mut cmd = vec![
        "env".to_owned(),
        format!("MEMORY_FILE_PATH={}", dir.join("memory.jsonl").display()),
    ];
    cmd.extend(npm_server("server-memory"));
    cmd
}

/// Starts `mcp-otel proxy ARGS -- SERVER…` with piped stdin and stdout (the client's end),
/// stderr as given.
pub fn spawn_proxy<K: AsRef<std::ffi::OsStr>, V: AsRef<std::ffi::OsStr>>(
    args: &[&str],
    server: &[String],
    env: &[(K, V)],
    stderr: std::process::Stdio,
) -> std::process::Child {
    use std::process::{Command, Stdio};
    let mut cmd = Command::new(PROXY);
    cmd.arg("proxy")
        .args(args)
        .arg("--")
        .args(server)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("start the proxy")
}

/// Starts the Streamable HTTP proxy in-process on a free loopback port in front of
/// `upstream`, recording through `emitter`; returns its address.
pub async fn start_http_proxy(
    upstream: String,
    keys: Option<mcp_otel::capture::proxy::keys::KeyRing>,
    tools: mcp_otel::capture::proxy::ProxyConfig,
    emitter: mcp_otel::emit::Emitter,
) -> std::net::SocketAddr {
    use mcp_otel::capture::proxy::http::{HttpOptions, HttpProxy};
    use mcp_otel::capture::proxy::{ObserverConfig, ObserverHandle};
    let tools = std::sync::Arc::new(tools);
    let observer = ObserverHandle::spawn(
        ObserverConfig {
            tools: tools.clone(),
            transport: mcp_otel::record::Transport::Http,
            ..ObserverConfig::default()
        },
        emitter,
    )
    .unwrap();
    let proxy = HttpProxy::bind(
        HttpOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            upstream,
            keys,
            forward_auth: false,
            inject: true,
            tools,
        },
        observer,
    )
    .await
    .unwrap();
    let addr = proxy.local_addr();
    tokio::spawn(proxy.run_until(std::future::pending()));
    addr
}

/// The proxy's own command line: `mcp-otel proxy ARGS -- SERVER…`.
pub fn proxied(args: &[&str], server: &[String]) -> Vec<String> {
    let mut cmd = vec![PROXY.to_owned(), "proxy".to_owned()];
    cmd.extend(args.iter().map(|s| s.to_string()));
    cmd.push("--".to_owned());
    cmd.extend(server.iter().cloned());
    cmd
}

/// An in-process OTLP receiver on a free loopback port, keeping up to 64 calls.
pub async fn receiver() -> RunningReceiver {
    mcp_otel::collect::testing::serve("127.0.0.1:0".parse().unwrap(), 64)
        .await
        .unwrap()
}

/// Environment that points the proxy's exporter at `receiver`, with a short batch delay.
pub fn otel_env(receiver: &RunningReceiver) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        ("OTEL_BSP_SCHEDULE_DELAY", "50".to_owned()),
        ("OTEL_SERVICE_NAME", "proxy-under-test".to_owned()),
    ]
}

/// Receives exactly `n` calls (more arriving within a short grace period fail the test).
pub async fn calls(receiver: &mut RunningReceiver, n: usize) -> Vec<ToolCall> {
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(20), receiver.calls.recv()).await {
            Ok(Some(c)) => out.push(c),
            _ => panic!("got {} of {n} calls: {out:#?}", out.len()),
        }
    }
    if let Ok(Some(extra)) =
        tokio::time::timeout(Duration::from_millis(300), receiver.calls.recv()).await
    {
        panic!("more than {n} calls; extra: {extra:#?}");
    }
    out
}

/// The calls among `among` in `parent`'s trace, each of which must be a child of `parent`'s span.
pub fn children_of<'a>(parent: &ToolCall, among: &[&'a ToolCall]) -> Vec<&'a ToolCall> {
    let children: Vec<&ToolCall> = among
        .iter()
        .copied()
        .filter(|c| c.ids.trace_id == parent.ids.trace_id)
        .collect();
    assert!(
        children
            .iter()
            .all(|c| c.ids.parent_span_id == parent.ids.span_id),
        "not every call in the trace is a child of {parent:#?}: {children:#?}"
    );
    children
}

pub fn by_tool<'a>(calls: &'a [ToolCall], tool: &str) -> &'a ToolCall {
    calls
        .iter()
        .find(|c| c.tool_name == tool)
        .unwrap_or_else(|| panic!("no call of {tool} in {calls:#?}"))
}

/// `sh -c` with a command built from already-safe parts.
pub fn sh(script: String) -> Vec<String> {
    vec!["sh".to_owned(), "-c".to_owned(), script]
}

/// A shell-quoted command line.
pub fn quote(cmd: &[String]) -> String {
    cmd.iter()
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ")
}
