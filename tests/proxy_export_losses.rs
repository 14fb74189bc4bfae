//! A proxy whose exports fail tells the collector what it lost once an export gets through:
//! `mcp_otel_exporter_spans_failed_total{service_name}` in `collect`'s `/metrics`, which the
//! `McpExporterSpansLost` rule (collector-config/rules/mcp-otel-health-alerts.yml) watches.
//!
//! Real parts: the `mcp-otel proxy` binary around a small Python stdio server, and the
//! `mcp-otel collect` binary, started only after the proxy's first export has failed.

mod support;

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::{CollectProcess, closed_port, metric_sum, python, scrape_metrics};

const PROXY: &str = env!("CARGO_BIN_EXE_mcp-otel");

/// Answers `initialize` and every `tools/call`; ignores the rest.
const SERVER: &str = r#"
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if "id" not in msg:
        continue
    if msg.get("method") == "initialize":
        result = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                  "serverInfo": {"name": "fake", "version": "1"}}
    elif msg.get("method") == "tools/call":
        result = {"content": [{"type": "text", "text": "ok"}]}
    else:
        continue
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}) + "\n")
    sys.stdout.flush()
"#;

fn wait_for(rx: &mpsc::Receiver<String>, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no {what} within 20 s"));
        if pred(&line) {
            return line;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_a_proxy_failed_to_export_are_counted_by_the_collector() {
    let port = closed_port();
    let mut proxy = Command::new(PROXY)
        .args(["proxy", "--user", "loser", "--log", "none", "--"])
        .arg(python())
        .args(["-c", SERVER])
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        )
        .env("OTEL_BSP_SCHEDULE_DELAY", "50")
        .env("OTEL_SERVICE_NAME", "proxy-losing")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the proxy");
    let (out_tx, out) = mpsc::channel();
    let stdout = BufReader::new(proxy.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = out_tx.send(line);
        }
    });
    let (err_tx, err) = mpsc::channel();
    let stderr = BufReader::new(proxy.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = err_tx.send(line);
        }
    });
    let mut stdin = proxy.stdin.take().unwrap();
    let mut send = |msg: Value| {
        writeln!(stdin, "{msg}").unwrap();
        stdin.flush().unwrap();
    };
    let answer = |id: u64| {
        wait_for(&out, &format!("answer to {id}"), |l| {
            serde_json::from_str::<Value>(l).is_ok_and(|v| v["id"] == id)
        })
    };
    send(
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "1"}}}),
    );
    answer(1);
    send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));

    // Nothing listens yet: the first call's export fails.
    send(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "first", "arguments": {}}}));
    answer(2);
    wait_for(&err, "export failure on stderr", |l| {
        l.contains("span export failed")
    });

    let collect =
        CollectProcess::start_on(PROXY, &format!("127.0.0.1:{port}"), &["--audit", "none"]);
    // The next call's export gets through and carries the count of what was lost.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut id = 3;
    let text = loop {
        send(json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": "second", "arguments": {}}}));
        answer(id);
        id += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let text = scrape_metrics(collect.metrics).await;
        if metric_sum(&text, "mcp_tool_calls_total", &["tool_name=\"second\""]) >= 1.0 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "collect never got a call from the proxy:\n{text}"
        );
    };
    let lost = metric_sum(
        &text,
        "mcp_otel_exporter_spans_failed_total",
        &["service_name=\"proxy-losing\""],
    );
    assert!(
        lost >= 1.0,
        "the failed export of `first` is counted:\n{text}"
    );
    assert_eq!(
        metric_sum(&text, "mcp_tool_calls_total", &["tool_name=\"first\""]),
        0.0,
        "`first` itself was lost"
    );

    // The proxy's own summary says at least as many failed as the collector was told.
    drop(stdin);
    let status = proxy.wait().unwrap();
    assert!(status.success(), "{status}");
    let summary = wait_for(&err, "exit summary", |l| l.contains(" failed, "));
    let failed: f64 = summary
        .split(" failed, ")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no failed count in {summary:?}"));
    assert!(failed >= lost, "summary {summary:?} vs collector {lost}");
}
