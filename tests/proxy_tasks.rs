//! The stdio proxy and what a call's record needs beyond its own answer: the task-augmented
//! calls of MCP 2025-11-25 (server-everything's `simulate-research-query`, a real task-based
//! tool) and the annotations of a client that never listed the tools (server-memory), which the
//! proxy learns with its own `tools/list`. The client is a raw line client here, because it
//! has to read the task id out of one answer to write the next request.

mod support;

use mcp_otel::record::{OperationType, Status};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};
use support::proxy::*;

/// A proxy with a raw JSON-lines client on its stdin and stdout.
struct LineClient {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// Every line the client received, in order.
    seen: Vec<String>,
}

impl LineClient {
    fn start(args: &[&str], server: &[String], env: &[(&str, String)]) -> Self {
        let mut child = spawn_proxy(args, server, env, Stdio::inherit());
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        LineClient {
            child,
            stdin,
            lines,
            seen: Vec::new(),
        }
    }

    fn send(&mut self, msg: Value) {
        let stdin = self.stdin.as_mut().expect("still open");
        writeln!(stdin, "{msg}").unwrap();
        stdin.flush().unwrap();
    }

    /// The answer to request `id` (messages in between are kept in `seen`).
    fn answer(&mut self, id: &Value) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no answer to {id}; seen: {:#?}", self.seen));
            self.seen.push(line.clone());
            let v: Value = serde_json::from_str(&line).expect("the client gets JSON lines");
            if v.get("method").is_none() && v["id"] == *id {
                return v;
            }
        }
    }

    fn call(&mut self, id: i64, method: &str, params: Value) -> Value {
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        self.answer(&json!(id))
    }

    fn initialize(&mut self) {
        let init = self.call(
            0,
            "initialize",
            json!({"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": "line-client", "version": "1"}}),
        );
        assert!(init.get("result").is_some(), "{init}");
        self.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    }

    /// Closes stdin and waits for the proxy to exit, with a SIGTERM after 2 s as the official
    /// SDK clients do (server-everything keeps running after its stdin closed); returns the
    /// proxy's exit code and every line the client received.
    fn close(mut self) -> (Option<i32>, Vec<String>) {
        drop(self.stdin.take());
        let term_at = Instant::now() + Duration::from_secs(2);
        let mut termed = false;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if !termed && Instant::now() > term_at {
                termed = true;
                let _ = Command::new("kill")
                    .args(["-TERM", &self.child.id().to_string()])
                    .status();
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                // What was still on the way to the client.
                self.seen.extend(self.lines.try_iter());
                return (status.code(), self.seen);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the proxy did not exit");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A task-augmented `tools/call` to server-everything: the call is answered at once with a
/// task, the client polls `tasks/get` and fetches `tasks/result` seconds later. The proxy
/// records one call, with the task's real outcome, the seconds it took, and the task id; the
/// client never sees the proxy's own `tools/list`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_augmented_call_is_recorded_with_its_real_result() {
    let mut receiver = receiver().await;
    let env = otel_env(&receiver);
    let mut client = LineClient::start(&["--log", "none"], &npm_server("server-everything"), &env);
    client.initialize();
    let started = Instant::now();
    let created = client.call(
        1,
        "tools/call",
        json!({"name": "simulate-research-query", "arguments": {"topic": "observability"},
               "task": {"ttl": 60000}}),
    );
    let task_id = created["result"]["task"]["taskId"]
        .as_str()
        .unwrap_or_else(|| panic!("no task: {created}"))
        .to_owned();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the task is created at once"
    );
    let mut id = 2;
    loop {
        let got = client.call(id, "tasks/get", json!({"taskId": task_id}));
        id += 1;
        match got["result"]["status"].as_str() {
            Some("completed") => break,
            Some("working") | Some("input_required") => {}
            other => panic!("task status {other:?}: {got}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never completed"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let result = client.call(id, "tasks/result", json!({"taskId": task_id}));
    let text = result["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("Research Report"), "{result}");
    let (code, seen) = client.close();
    assert!(matches!(code, Some(0) | Some(143)), "{code:?}");
    assert!(
        seen.iter().all(|l| !l.contains("mcp-otel-proxy-")),
        "the client saw the proxy's own request: {seen:#?}"
    );

    let calls = calls(&mut receiver, 1).await;
    let call = &calls[0];
    assert_eq!(call.tool_name, "simulate-research-query");
    assert_eq!(call.status, Status::Success, "{call:#?}");
    assert_eq!(call.mcp.task_id.as_deref(), Some(task_id.as_str()));
    // Four stages of a second each, not the milliseconds of the task's creation.
    assert!(call.duration_ms >= 3_500.0, "{}", call.duration_ms);
    // Annotated `readOnlyHint: false` and named without a verb: a write, not classified further.
    let write = call.write.as_ref().expect("a write");
    assert_eq!(write.operation_type, Some(OperationType::Write));
}

/// A client that never sends `tools/list`: the proxy lists the tools itself (once, with its own
/// id, the answer kept from the client) and classifies server-memory's calls by their
/// annotations: `open_nodes` is read-only although its name has no read verb.
#[test]
fn annotations_are_learned_for_a_client_that_never_listed_the_tools() {
    let dir = support::tempdir();
    let log = dir.path().join("calls.jsonl");
    let server = memory_server(dir.path());
    let mut client = LineClient::start(
        &["--log", &log.display().to_string()],
        &server,
        &[("OTEL_TRACES_EXPORTER", "none".to_owned())],
    );
    client.initialize();
    let created = client.call(
        1,
        "tools/call",
        json!({"name": "create_entities", "arguments": {"entities": [
            {"name": "A", "entityType": "t", "observations": ["x"]}]}}),
    );
    assert_eq!(created["result"]["isError"], json!(null), "{created}");
    let opened = client.call(
        2,
        "tools/call",
        json!({"name": "open_nodes", "arguments": {"names": ["A"]}}),
    );
    assert!(opened.get("result").is_some(), "{opened}");
    let (code, seen) = client.close();
    assert_eq!(code, Some(0));
    assert!(
        seen.iter().all(|l| !l.contains("mcp-otel-proxy-")),
        "the client saw the proxy's own tools/list: {seen:#?}"
    );
    let lines: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    let by = |t: &str| lines.iter().find(|l| l["tool_name"] == t).unwrap();
    assert_eq!(by("create_entities")["operation_type"], "create");
    assert!(
        by("open_nodes").get("operation_type").is_none(),
        "open_nodes is read-only: {lines:#?}"
    );
}
