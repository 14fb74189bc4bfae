//! Shared pieces of the proxy tests: where the real peers are (a missing one fails the test,
//! never skips it), running the Python SDK driver, collecting calls from an OTLP receiver.
#![allow(dead_code)]

use mcp_otel::collect::receive::RunningReceiver;
use mcp_otel::record::ToolCall;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

pub const PROXY: &str = env!("CARGO_BIN_EXE_mcp-otel");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn must_exist(path: PathBuf, what: &str) -> PathBuf {
    assert!(
        path.exists(),
        "missing test peer {what} at {} (run `bash scripts/setup-peers.sh`)",
        path.display()
    );
    path
}

/// `MCP_OTEL_PYTHON`, else the repo's `.venv/bin/python`.
pub fn python() -> PathBuf {
    let p = std::env::var_os("MCP_OTEL_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/python"));
    must_exist(p, "python (with the `mcp` SDK)")
}

/// `MCP_OTEL_PEERS`, else the repo's `tests/peers`.
pub fn peers() -> PathBuf {
    std::env::var_os("MCP_OTEL_PEERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("tests/peers"))
}

pub fn driver() -> PathBuf {
    must_exist(peers().join("mcp_drive.py"), "mcp_drive.py")
}

/// `node …/dist/index.js` of an npm MCP server (`server-memory`, `server-everything`).
pub fn npm_server(name: &str) -> Vec<String> {
    let js = must_exist(
        peers().join(format!(
            "node_modules/@modelcontextprotocol/{name}/dist/index.js"
        )),
        name,
    );
    let mut cmd = vec!["node".to_owned(), js.display().to_string()];
    if name == "server-everything" {
        cmd.push("stdio".to_owned());
    }
    cmd
}

/// A compiled example (`cargo test --all-targets` builds them); built here if missing.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test exe path");
    let debug = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let path = debug.join("examples").join(name);
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "--example", name])
            .current_dir(repo())
            .status()
            .expect("run cargo build --example");
        assert!(status.success(), "cargo build --example {name} failed");
    }
    must_exist(path, name)
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

/// The proxy's own command line: `mcp-otel proxy ARGS -- SERVER…`.
pub fn proxied(args: &[&str], server: &[String]) -> Vec<String> {
    let mut cmd = vec![PROXY.to_owned(), "proxy".to_owned()];
    cmd.extend(args.iter().map(|s| s.to_string()));
    cmd.push("--".to_owned());
    cmd.extend(server.iter().cloned());
    cmd
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
