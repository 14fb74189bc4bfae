//! Exactly once with real peers that instrument themselves (issue 16): the official MCP Python
//! SDK 2.x client and server with their own OpenTelemetry spans, OpenLLMetry
//! (`opentelemetry-instrumentation-mcp` on the SDK 1.x), each without and behind `mcp-otel
//! proxy`, all exporting to one `mcp-otel collect` with an audit trail; and an export the
//! Python exporter retries after a locked store.
//!
//! What a user relies on: N tool calls give exactly N in `mcp_tool_calls_total`, N audit rows,
//! and the write classification the proxy would give (create, delete, `write` for an unknown
//! verb, nothing for reads), with the proxy's user when the proxy saw the call.
//!
//! Peers: `bash scripts/setup-peers.sh` (`.venv` for the SDK 2.x, `.venv-openllmetry` for
//! OpenLLMetry, found through `MCP_OTEL_PYTHON` and `MCP_OTEL_PYTHON_OPENLLMETRY`). A missing
//! peer fails these tests.

mod support;

use mcp_otel::collect::{CollectConfig, RunningCollector, start};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::{McpDrive, peer_script, python, run_bounded, tempdir};

const PROXY: &str = env!("CARGO_BIN_EXE_mcp-otel");
/// Long enough for the proxy's export to catch up with the server's under a loaded CI machine.
const HOLD: Duration = Duration::from_secs(3);

/// The OpenLLMetry venv's interpreter (`MCP_OTEL_PYTHON_OPENLLMETRY`, else
/// `.venv-openllmetry/bin/python`). Panics, naming the setup command, when it is missing.
fn openllmetry_python() -> PathBuf {
    let path = std::env::var_os("MCP_OTEL_PYTHON_OPENLLMETRY")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-openllmetry/bin/python")
        });
    assert!(
        path.is_file(),
        "the OpenLLMetry peers' Python interpreter {} does not exist \
         (MCP_OTEL_PYTHON_OPENLLMETRY={:?}): run `bash scripts/setup-peers.sh`",
        path.display(),
        std::env::var_os("MCP_OTEL_PYTHON_OPENLLMETRY"),
    );
    path
}

/// The calls every session makes: two creates, a read, a failing call (unknown verb: a
/// `write`), a delete.
fn calls() -> Value {
    json!([
        {"tool": "create_note", "args": {"id": "n1", "text": "first"}},
        {"tool": "get_note", "args": {"id": "n1"}},
        {"tool": "fail_note", "args": {"id": "n1"}},
        {"tool": "delete_note", "args": {"id": "n1"}},
        {"tool": "create_note", "args": {"id": "n2", "text": "second"}},
    ])
}
const N: f64 = 5.0;

struct Collect {
    running: RunningCollector,
    db: PathBuf,
    _dir: tempfile::TempDir,
}

async fn collect() -> Collect {
    let dir = tempdir();
    let db = dir.path().join("audit.db");
    let config = CollectConfig {
        audit: Some(db.clone()),
        hold_window: HOLD,
        ..CollectConfig::ephemeral()
    };
    Collect {
        running: start(&config, None).await.unwrap(),
        db,
        _dir: dir,
    }
}

impl Collect {
    fn endpoint(&self) -> String {
        format!("http://{}", self.running.grpc_addr)
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.running.metrics_addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Waits (bounded) for `want` counted calls and nothing held, then a hold window more, so
    /// that a late double count shows.
    async fn settle(&self, want: f64) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = self.metrics().await;
            let done = sum(&text, "mcp_otel_calls_held", &[]) == 0.0
                && sum(&text, "mcp_tool_calls_total", &[]) >= want;
            if done || Instant::now() > deadline {
                tokio::time::sleep(HOLD + Duration::from_millis(500)).await;
                return self.metrics().await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `(tool_name, user, status, operation_type)` of every audit row, by tool then id.
    fn rows(&self) -> Vec<(String, String, String, Option<String>)> {
        let conn = rusqlite::Connection::open(&self.db).unwrap();
        let mut stmt = conn
            .prepare(
                "SELECT tool_name, user, status, operation_type FROM mcp_logs \
                 ORDER BY tool_name, id",
            )
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// Asserts N counted calls, N rows, the classification and the user, and that at least
    /// `twins` records were recognised as another record of a counted call (so that the test
    /// saw the layers it claims to).
    async fn assert_exactly_once(&self, user: &str, twins: f64, what: &str) {
        let text = self.settle(N).await;
        assert!(
            sum(&text, "mcp_otel_spans_merged_total", &[]) >= twins,
            "{what}: expected at least {twins} twin records\n{text}"
        );
        assert_eq!(
            sum(&text, "mcp_tool_calls_total", &[]),
            N,
            "{what}: mcp_tool_calls_total\n{text}"
        );
        assert!(
            !text.contains("send tools/call"),
            "{what}: a CLIENT span was counted\n{text}"
        );
        assert_eq!(
            sum(&text, "mcp_tool_calls_total", &["status=\"error\""]),
            1.0,
            "{what}: fail_note failed\n{text}"
        );
        for (op, n) in [("create", 2.0), ("delete", 1.0), ("write", 1.0)] {
            assert_eq!(
                sum(
                    &text,
                    "mcp_write_operations_total",
                    &[&format!("operation_type=\"{op}\"")]
                ),
                n,
                "{what}: {op} writes\n{text}"
            );
        }
        let rows = self.rows();
        let o = |s: &str| Some(s.to_owned());
        let want = [
            ("create_note", "success", o("create")),
            ("create_note", "success", o("create")),
            ("delete_note", "success", o("delete")),
            ("fail_note", "error", o("write")),
            ("get_note", "success", None),
        ];
        assert_eq!(rows.len(), want.len(), "{what}: audit rows {rows:#?}");
        for (row, (tool, status, op)) in rows.iter().zip(want) {
            assert_eq!(
                (row.0.as_str(), row.1.as_str(), row.2.as_str(), &row.3),
                (tool, user, status, &op),
                "{what}: {rows:#?}"
            );
        }
    }
}

/// The sum of a metric's series whose lines contain every `filter`.
fn sum(text: &str, metric: &str, filters: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) || l.starts_with(&format!("{metric} ")))
        .filter(|l| filters.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `otel_client.py` on `client_python` against `server` (a stdio command), every process
/// exporting its spans to `endpoint`.
fn run_client(client_python: &Path, flags: &[&str], server: &[String], endpoint: &str) {
    let dir = tempdir();
    let calls_file = dir.path().join("calls.json");
    std::fs::write(&calls_file, calls().to_string()).unwrap();
    let mut cmd = Command::new(client_python);
    cmd.arg(peer_script("otel_client.py"))
        .arg("--calls")
        .arg(&calls_file)
        .args(flags)
        .arg("--")
        .args(server);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("OTEL_") || key.starts_with("MCP_OTEL_") {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", "200");
    let out = run_bounded(&mut cmd, Duration::from_secs(90));
    assert!(
        out.status.success(),
        "otel_client.py failed ({})\n--- stdout:\n{}\n--- stderr:\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    let lines: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(lines[2]["is_error"], true, "{lines:?}");
    assert_eq!(lines[1]["text"], "first", "{lines:?}");
}

fn server(py: &Path, flags: &[&str]) -> Vec<String> {
    let mut cmd = vec![
        py.display().to_string(),
        peer_script("otel_server.py").display().to_string(),
    ];
    cmd.extend(flags.iter().map(|f| f.to_string()));
    cmd
}

fn proxied(inner: Vec<String>) -> Vec<String> {
    let mut cmd = vec![
        PROXY.to_owned(),
        "proxy".into(),
        "--user".into(),
        "alice".into(),
        "--log".into(),
        "none".into(),
        "--".into(),
    ];
    cmd.extend(inner);
    cmd
}

/// The SDK 2.x client (CLIENT spans) and server (SERVER spans), no proxy: the server's spans
/// are the calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_client_and_server_without_the_proxy() {
    let c = collect().await;
    let (endpoint, py) = (c.endpoint(), python());
    tokio::task::spawn_blocking(move || run_client(&py, &[], &server(&py, &[]), &endpoint))
        .await
        .unwrap();
    c.assert_exactly_once("unknown", 0.0, "SDK 2.x client + server")
        .await;
    // The client's CLIENT spans came too (and were not counted).
    let text = c.metrics().await;
    assert!(
        sum(&text, "mcp_otel_spans_received_total", &[]) >= 2.0 * N,
        "{text}"
    );
    c.running.shutdown().await;
}

/// Behind the proxy, the client's own `traceparent` forwarded: the server's span is the
/// proxy span's sibling. Ours counts (user alice); the server's and the client's do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_client_and_server_behind_the_proxy() {
    let c = collect().await;
    let (endpoint, py) = (c.endpoint(), python());
    tokio::task::spawn_blocking(move || {
        run_client(&py, &[], &proxied(server(&py, &[])), &endpoint)
    })
    .await
    .unwrap();
    c.assert_exactly_once("alice", N, "SDK 2.x behind the proxy (sibling)")
        .await;
    c.running.shutdown().await;
}

/// Behind the proxy with a client that sends no `traceparent` (the SDK's client without a
/// TracerProvider): the proxy injects its own, and the server's span is its child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_server_nested_under_the_proxy() {
    let c = collect().await;
    let endpoint = c.endpoint();
    tokio::task::spawn_blocking(move || {
        let script: Vec<Value> = calls()
            .as_array()
            .unwrap()
            .iter()
            .map(|s| json!({"call": s["tool"], "args": s["args"]}))
            .collect();
        let steps = McpDrive::new(proxied(server(&python(), &[])))
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            .env("OTEL_BSP_SCHEDULE_DELAY", "200")
            .run(&Value::Array(script));
        assert_eq!(steps[2]["is_error"], true, "{steps:?}");
    })
    .await
    .unwrap();
    c.assert_exactly_once("alice", N, "SDK 2.x server under the proxy (child)")
        .await;
    c.running.shutdown().await;
}

/// OpenLLMetry on the SDK 1.x, client and server instrumented, no proxy: its INTERNAL
/// `X.tool` spans are the only records of the calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openllmetry_without_the_proxy() {
    let c = collect().await;
    let (endpoint, py) = (c.endpoint(), openllmetry_python());
    tokio::task::spawn_blocking(move || {
        run_client(
            &py,
            &["--openllmetry"],
            &server(&py, &["--openllmetry"]),
            &endpoint,
        )
    })
    .await
    .unwrap();
    c.assert_exactly_once("unknown", 0.0, "OpenLLMetry").await;
    c.running.shutdown().await;
}

/// OpenLLMetry's client behind the proxy: the proxy's span sits under OpenLLMetry's (through
/// its `ResponseStreamWriter` span); one call each, ours wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openllmetry_behind_the_proxy() {
    let c = collect().await;
    let (endpoint, py) = (c.endpoint(), openllmetry_python());
    tokio::task::spawn_blocking(move || {
        run_client(
            &py,
            &["--openllmetry"],
            &proxied(server(&py, &[])),
            &endpoint,
        )
    })
    .await
    .unwrap();
    c.assert_exactly_once("alice", N, "OpenLLMetry behind the proxy")
        .await;
    c.running.shutdown().await;
}

/// Three layers of one call: OpenLLMetry's client span, the proxy's, the SDK 2.x server's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openllmetry_client_proxy_and_sdk_server() {
    let c = collect().await;
    let endpoint = c.endpoint();
    tokio::task::spawn_blocking(move || {
        run_client(
            &openllmetry_python(),
            &["--openllmetry"],
            &proxied(server(&python(), &[])),
            &endpoint,
        )
    })
    .await
    .unwrap();
    c.assert_exactly_once("alice", 2.0 * N, "OpenLLMetry + proxy + SDK 2.x server")
        .await;
    c.running.shutdown().await;
}

/// The store is locked while the peers export: collect answers UNAVAILABLE, the Python
/// exporter retries, and each call is counted and stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_retried_after_a_locked_store() {
    let c = collect().await;
    let lock = rusqlite::Connection::open(&c.db).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let (endpoint, py) = (c.endpoint(), python());
    // The session stays open for a while after its calls, as a long-running server does: a
    // Python exporter stops retrying once its process shuts it down.
    let session = tokio::task::spawn_blocking(move || {
        run_client(&py, &["--linger", "12"], &server(&py, &[]), &endpoint)
    });
    // Locked until collect has refused at least one export (bounded).
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut refused = 0.0;
    while refused < 1.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        refused = sum(&c.metrics().await, "mcp_otel_audit_errors_total", &[]);
    }
    let counted_while_locked = sum(&c.metrics().await, "mcp_tool_calls_total", &[]);
    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);
    session.await.unwrap();
    assert!(refused >= 1.0, "the locked store refused no export");
    assert_eq!(counted_while_locked, 0.0, "a refused export counts nothing");
    c.assert_exactly_once("unknown", 0.0, "after a locked store")
        .await;
    c.running.shutdown().await;
}
