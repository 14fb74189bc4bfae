//! Attempts to slip a call past the stdio proxy unrecorded: a `tools/call` padded past the
//! 16 MiB observation limit, 70,000 calls the server never answers before a delete, and (in
//! `--strict` mode) a padded call whose id comes only after its arguments. The JSON log is the
//! record read back.

mod support;

use serde_json::{Value, json};
use std::io::{Read, Write};
use std::process::Stdio;
use std::time::Duration;
use support::proxy::*;

/// Runs the proxy on `server` with `args`, writes `input` and holds stdin open for `hold`;
/// returns (stdout, stderr, the JSON log lines).
fn session(
    args: &[&str],
    server: &[String],
    input: Vec<u8>,
    hold: Duration,
) -> (Vec<u8>, String, Vec<Value>) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("calls.jsonl");
    let mut all: Vec<&str> = vec!["--log", log.to_str().unwrap()];
    all.extend_from_slice(args);
    let mut child = spawn_proxy(
        &all,
        server,
        &[("OTEL_TRACES_EXPORTER", "none")],
        Stdio::piped(),
    );
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
        std::thread::sleep(hold);
    });
    let mut stderr = child.stderr.take().unwrap();
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    writer.join().unwrap();
    child.wait().unwrap();
    let lines = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (out, err.join().unwrap(), lines)
}

fn init() -> String {
    let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"mallory","version":"1"}}});
    format!(
        "{init}\n{}\n",
        json!({"jsonrpc":"2.0","method":"notifications/initialized"})
    )
}

/// A `delete_entities` padded to 17 MiB, with its id after the arguments (the TypeScript SDK's
/// key order), reaches server-memory and is recorded as a delete by its tool, user and outcome
/// (the server exits on it), its arguments capped to a marker. Before: relayed, never recorded.
#[test]
fn a_padded_delete_past_the_observation_limit_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let pad = "a".repeat(17 * 1024 * 1024);
    let delete = format!(
        r#"{{"method":"tools/call","params":{{"name":"delete_entities","arguments":{{"entityNames":["ghost","{pad}"]}}}},"jsonrpc":"2.0","id":"del-1"}}"#
    );
    let input = format!("{}{delete}\n", init()).into_bytes();
    let (out, stderr, lines) = session(
        &[],
        &memory_server(dir.path()),
        input,
        Duration::from_secs(8),
    );
    drop(out);
    assert_eq!(lines.len(), 1, "{lines:#?}\n{stderr}");
    let call = &lines[0];
    assert_eq!(call["tool_name"], "delete_entities");
    assert_eq!(call["operation_type"], "delete");
    // server-memory dies on a line that long: the call is recorded as what it did to it.
    assert_eq!(call["error_code"], "server_exited", "{call}");
    assert_eq!(call["user"], "mallory");
    let context = call["context"].to_string();
    assert!(context.contains("truncated"), "{context:.300}");
    assert!(
        context.len() < 1024,
        "arguments are capped: {} bytes",
        context.len()
    );
    assert!(stderr.contains("1 oversize"), "{stderr}");
    assert!(stderr.contains("0 observations dropped"), "{stderr}");
}

/// A server that answers only deletes: 70,000 calls it ignores, then a delete. Past 65,536 open
/// calls the oldest are given up (recorded `evicted`), every call is recorded once, and the
/// delete with its answer.
#[test]
fn seventy_thousand_unanswered_calls_do_not_hide_the_delete() {
    let answer_deletes = "import sys, json\nfor line in sys.stdin:\n    m = json.loads(line)\n    \
        if m.get('params', {}).get('name', '').startswith('delete'):\n        \
        print(json.dumps({'jsonrpc': '2.0', 'id': m['id'], 'result': {'content': []}}), flush=True)\n";
    let server = vec![
        python().display().to_string(),
        "-c".to_owned(),
        answer_deletes.to_owned(),
    ];
    let mut input = String::new();
    for i in 0..70_000 {
        input.push_str(&format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":{i},\"method\":\"tools/call\",\"params\":{{\"name\":\"read_graph\",\"arguments\":{{}}}}}}\n"
        ));
    }
    input.push_str(r#"{"jsonrpc":"2.0","id":"last","method":"tools/call","params":{"name":"delete_task","arguments":{"id":"t1"}}}"#);
    input.push('\n');
    // 70,001 records take the debug build's observer (at background priority) a while on a
    // busy machine: the exit waits for them rather than the default 2 s.
    let (out, stderr, lines) = session(
        &["--flush-timeout", "60s"],
        &server,
        input.into_bytes(),
        Duration::from_secs(3),
    );
    assert!(
        String::from_utf8_lossy(&out).contains(r#""id": "last""#),
        "{stderr}"
    );
    assert_eq!(lines.len(), 70_001, "{stderr}");
    let delete: Vec<&Value> = lines
        .iter()
        .filter(|l| l["tool_name"] == "delete_task")
        .collect();
    assert_eq!(delete.len(), 1);
    assert_eq!(delete[0]["status"], "success", "{}", delete[0]);
    assert_eq!(delete[0]["operation_type"], "delete");
    let evicted = lines
        .iter()
        .filter(|l| l["error_code"] == "evicted")
        .count();
    // 70,002 requests (the proxy's own `tools/list` among them) for 65,536 places.
    let statuses: std::collections::BTreeMap<String, usize> =
        lines.iter().fold(Default::default(), |mut m, l| {
            *m.entry(l["error_code"].to_string()).or_default() += 1;
            m
        });
    assert_eq!(evicted, 70_002 - 65_536 - 1, "{statuses:?}\n{stderr}");
    assert!(
        stderr.contains(&format!("{} evicted", evicted + 1)),
        "{stderr}"
    );
}

/// `--strict`: a padded call whose id and tool name come after 17 MiB of arguments cannot be
/// recorded when it must be forwarded, so it is refused (-32603, by its id) and never reaches
/// the server; without `--strict` it is relayed and still recorded.
#[test]
fn strict_refuses_a_call_it_cannot_read_in_time_and_default_records_it() {
    let pad = "b".repeat(17 * 1024 * 1024);
    let call = format!(
        r#"{{"method":"tools/call","params":{{"arguments":{{"pad":"{pad}"}},"name":"delete_task"}},"jsonrpc":"2.0","id":"d2"}}"#
    );
    let input = format!("{}{call}\n", init()).into_bytes();
    // The server counts the bytes it got and answers everything with a request id.
    let counting = "import sys, json\nn = 0\nfor line in sys.stdin:\n    n += len(line)\n    m = json.loads(line)\n    \
        if 'id' in m:\n        print(json.dumps({'jsonrpc': '2.0', 'id': m['id'], 'result': {'content': [], 'got': n}}), flush=True)\n";
    let server = vec![
        python().display().to_string(),
        "-c".to_owned(),
        counting.to_owned(),
    ];
    let (out, stderr, lines) = session(
        &["--strict"],
        &server,
        input.clone(),
        Duration::from_secs(3),
    );
    let answers: Vec<Value> = String::from_utf8_lossy(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let refusal = answers
        .iter()
        .find(|a| a["id"] == "d2")
        .expect("an answer to d2");
    assert_eq!(refusal["error"]["code"], -32603, "{refusal}");
    assert!(
        refusal["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--strict")
    );
    assert!(
        answers
            .iter()
            .all(|a| a["result"]["got"].as_u64().unwrap_or(0) < 1 << 20)
    );
    assert!(lines.is_empty(), "{lines:?}");
    assert!(stderr.contains("1 refused"), "{stderr}");

    let (out, stderr, lines) = session(&[], &server, input, Duration::from_secs(3));
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.contains(r#""id": "d2""#) && out.contains("\"got\""),
        "{stderr}"
    );
    assert_eq!(lines.len(), 1, "{stderr}");
    assert_eq!(lines[0]["tool_name"], "delete_task");
    assert_eq!(lines[0]["status"], "success");
}
