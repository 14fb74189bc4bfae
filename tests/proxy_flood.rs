//! A flood of calls against a small observation queue (`--observe-queue 16`): `--strict`
//! refuses the calls it has no room to record, with a JSON-RPC error, and never relays them;
//! the default mode relays every call and counts the observations it dropped, in its exit
//! summary and on the resource of its exports, so a real `mcp-otel collect` shows them as
//! `mcp_otel_exporter_spans_dropped_total`.
//!
//! Real parts: the `mcp-otel proxy` binary around a small Python stdio server that answers
//! every call, and the `mcp-otel collect` binary the default run exports to.

mod support;

use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::proxy::ANSWER_CALLS;
use support::{CollectProcess, metric_sum, python, scrape_metrics};

const PROXY: &str = env!("CARGO_BIN_EXE_mcp-otel");
const CALLS: u64 = 20_000;

/// What one flood left: the answers by id, the JSON log's records, the exit summary.
struct Flood {
    answers: BTreeMap<u64, Value>,
    records: Vec<Value>,
    stderr: String,
}

/// Runs the proxy with `args` and a 16-event queue, writes the initialize handshake and
/// [`CALLS`] `delete_task` calls at once, and closes stdin.
fn flood(args: &[&str], env: &[(&str, String)]) -> Flood {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("calls.jsonl");
    let mut proxy = Command::new(PROXY);
    proxy
        .args(["proxy", "--observe-queue", "16", "--flush-timeout", "60s"])
        .args(["--user", "flooder", "--log", log.to_str().unwrap()])
        .args(args)
        .arg("--")
        .arg(python())
        .args(["-c", ANSWER_CALLS])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        proxy.env(k, v);
    }
    let mut proxy = proxy.spawn().expect("start the proxy");
    let mut input = format!(
        "{}\n{}\n",
        json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "flood", "version": "1"}}}),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"})
    );
    for id in 1..=CALLS {
        input.push_str(&format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"tools/call\",\"params\":{{\"name\":\"delete_task\",\"arguments\":{{\"id\":\"t{id}\"}}}}}}\n"
        ));
    }
    let mut stdin = proxy.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        // Closing stdin then ends the server once it has answered everything it got.
        let _ = stdin.write_all(input.as_bytes());
    });
    let mut stderr = proxy.stderr.take().unwrap();
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut out = proxy.stdout.take().unwrap();
    let mut answers = BTreeMap::new();
    let mut text = String::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(240);
    while (answers.len() as u64) < CALLS + 1 {
        assert!(Instant::now() < deadline, "{} answers", answers.len());
        let n = out.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "the proxy closed stdout after {} answers",
            answers.len()
        );
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        while let Some(nl) = text.find('\n') {
            let line: String = text.drain(..=nl).collect();
            let v: Value = serde_json::from_str(&line).unwrap();
            let id = v["id"].as_u64().expect("an answer with a numeric id");
            assert!(answers.insert(id, v).is_none(), "{id} answered twice");
        }
    }
    writer.join().unwrap();
    let status = proxy.wait().unwrap();
    assert!(status.success(), "{status}");
    let records = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    Flood {
        answers,
        records,
        stderr: err.join().unwrap(),
    }
}

/// The number before `what` in the exit summary (`… 12 observations dropped …`).
fn summary_count(stderr: &str, what: &str) -> u64 {
    let before = stderr
        .split(what)
        .next()
        .filter(|_| stderr.contains(what))
        .unwrap_or_else(|| panic!("no {what:?} in {stderr}"));
    before
        .rsplit(' ')
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count before {what:?} in {stderr}"))
}

/// `--strict`: every call is either recorded and answered by the server, or refused with
/// -32603 and never relayed; nothing is dropped.
#[test]
fn strict_refuses_what_it_cannot_record_and_relays_nothing_unrecorded() {
    let f = flood(&["--strict"], &[("OTEL_TRACES_EXPORTER", "none".into())]);
    let (refused, served): (Vec<_>, Vec<_>) = f
        .answers
        .iter()
        .filter(|(id, _)| **id > 0)
        .partition(|(_, a)| a.get("error").is_some());
    for (id, a) in &refused {
        assert_eq!(a["error"]["code"], -32603, "{id}: {a}");
        assert!(a["error"]["message"].as_str().unwrap().contains("--strict"));
    }
    for (id, a) in &served {
        assert_eq!(a["result"]["content"][0]["text"], "ok", "{id}: {a}");
    }
    assert!(
        !refused.is_empty(),
        "a 16-event queue under {CALLS} calls refuses some\n{}",
        f.stderr
    );
    // What the server answered is exactly what was recorded: the refused never reached it.
    let recorded: BTreeSet<u64> = f
        .records
        .iter()
        .filter(|r| r["tool_name"] == "delete_task")
        .map(|r| {
            assert_eq!(r["status"], "success", "{r}");
            let id = r["resource_id"].as_str().unwrap_or_else(|| panic!("{r}"));
            id[1..].parse().unwrap()
        })
        .collect();
    let served: BTreeSet<u64> = served.iter().map(|(id, _)| **id).collect();
    assert_eq!(recorded.len(), f.records.len(), "each call recorded once");
    assert_eq!(recorded, served, "{}", f.stderr);
    assert_eq!(
        summary_count(&f.stderr, "refused (strict)"),
        refused.len() as u64
    );
    assert_eq!(summary_count(&f.stderr, "observations dropped"), 0);
    eprintln!("{}", f.stderr.trim());
}

/// The default mode relays every call (the server answers all of them), counts what the
/// observer dropped, and its exports carry that count to `collect`'s `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_mode_relays_every_call_and_counts_the_drops_in_collect() {
    let collect = CollectProcess::start(PROXY, &["--audit", "none"]);
    let env = [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://{}", collect.grpc),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY", "50".to_owned()),
        ("OTEL_SERVICE_NAME", "proxy-flooded".to_owned()),
    ];
    let f = tokio::task::spawn_blocking(move || flood(&[], &env))
        .await
        .unwrap();
    for id in 1..=CALLS {
        let a = &f.answers[&id];
        assert_eq!(a["result"]["content"][0]["text"], "ok", "{id}: {a}");
    }
    let dropped = summary_count(&f.stderr, "observations dropped");
    assert!(
        dropped > 0,
        "a 16-event queue under {CALLS} calls drops\n{}",
        f.stderr
    );
    assert_eq!(summary_count(&f.stderr, "refused (strict)"), 0);
    // What was observed is still recorded: the events that end calls (the client closing,
    // the server exiting) are never the ones dropped.
    assert!(
        !f.records.is_empty() && (f.records.len() as u64) < CALLS,
        "{} records\n{}",
        f.records.len(),
        f.stderr
    );
    eprintln!("{}", f.stderr.trim());

    // The exit's last export carried the count; collect has it by the time it answers.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = scrape_metrics(collect.metrics).await;
        let seen = metric_sum(
            &text,
            "mcp_otel_exporter_spans_dropped_total",
            &["service_name=\"proxy-flooded\""],
        );
        if seen >= dropped as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "collect shows {seen} dropped, the proxy dropped {dropped}:\n{}\n{text}",
            f.stderr
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
