//! The observer end to end: events in, JSON lines out.

use super::*;
use crate::emit::EmitConfig;
use crate::emit::Emitter;
use bytes::Bytes;
use serde_json::Value;
use serde_json::json;
use std::io::Write;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);
impl Write for Lines {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
impl Lines {
    fn json(&self) -> Vec<Value> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn observer(config: ObserverConfig) -> (ObserverHandle, Lines) {
    let lines = Lines::default();
    let emitter = Emitter::with_log_writer(&EmitConfig::default(), None, Box::new(lines.clone()));
    (ObserverHandle::spawn(config, emitter).unwrap(), lines)
}

fn send(h: &ObserverHandle, dir: Direction, msg: Value) {
    h.send(Event::Messages {
        scope: Arc::new(Scope::default()),
        dir,
        bytes: Bytes::from(format!("{msg}\n")),
        at: Instant::now(),
        prepared: PreparedCalls::new(),
    });
}

/// The server exits (after the client left, when `client_closed`); the records, once observed.
fn server_exits(h: &ObserverHandle, lines: &Lines, client_closed: bool) -> Vec<Value> {
    h.send(Event::ServerExited {
        at: Instant::now(),
        client_closed,
    });
    assert!(h.sync(Duration::from_secs(5)));
    lines.json()
}

/// The record of the call of `tool`.
fn by_tool(out: &[Value], tool: &str) -> Value {
    out.iter()
        .find(|l| l["tool_name"] == tool)
        .unwrap_or_else(|| panic!("no record of {tool}: {out:#?}"))
        .clone()
}

use Direction::{ClientToServer as C2S, ServerToClient as S2C};

#[test]
fn a_session_becomes_records() {
    let (h, lines) = observer(ObserverConfig::default());
    send(
        &h,
        C2S,
        json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","clientInfo":{"name":"cursor","version":"1.2"}}}),
    );
    send(
        &h,
        S2C,
        json!({"jsonrpc":"2.0","id":0,"result":{"protocolVersion":"2025-06-18"}}),
    );
    send(
        &h,
        C2S,
        json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}),
    );
    send(
        &h,
        S2C,
        json!({"jsonrpc":"2.0","id":1,"result":{"tools":[
            {"name":"read_graph","annotations":{"readOnlyHint":true}},
            {"name":"create_entities","annotations":{"readOnlyHint":false}}]}}),
    );
    send(
        &h,
        C2S,
        json!({"jsonrpc":"2.0","id":"c1","method":"tools/call","params":{"name":"create_entities","arguments":{"name":"A"},"_meta":{"io.mcp-otel/user_confirmation":true}}}),
    );
    // A server-initiated request and its answer in between.
    send(
        &h,
        S2C,
        json!({"jsonrpc":"2.0","id":5,"method":"roots/list"}),
    );
    send(
        &h,
        C2S,
        json!({"jsonrpc":"2.0","id":5,"result":{"roots":[]}}),
    );
    send(
        &h,
        S2C,
        json!({"jsonrpc":"2.0","id":"c1","result":{"content":[{"type":"text","text":"{\"name\":\"A\"}"}]}}),
    );
    send(
        &h,
        C2S,
        json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"read_graph"}}),
    );
    send(
        &h,
        S2C,
        json!({"jsonrpc":"2.0","id":2,"error":{"code":-32602,"message":"bad"}}),
    );
    assert!(h.sync(Duration::from_secs(5)));
    let out = lines.json();
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[0]["tool_name"], "create_entities");
    assert_eq!(out[0]["user"], "cursor");
    assert_eq!(out[0]["status"], "success");
    assert_eq!(out[0]["operation_type"], "create");
    assert_eq!(out[0]["resource_id"], "A");
    assert_eq!(out[0]["after_state"], json!({"name": "A"}));
    assert_eq!(out[0]["user_confirmation"], true);
    assert_eq!(out[1]["tool_name"], "read_graph");
    assert_eq!(out[1]["error_code"], "-32602");
    assert!(out[1].get("operation_type").is_none());
    let s = h.stats();
    assert_eq!(ProxyStats::get(&s.server_requests), 1);
    assert_eq!(ProxyStats::get(&s.unmatched_responses), 0);
}

#[test]
fn timeouts_cancellations_and_exits_end_open_calls() {
    let (h, lines) = observer(ObserverConfig {
        call_timeout: Some(Duration::from_millis(50)),
        default_user: Some("ops".into()),
        ..ObserverConfig::default()
    });
    let call = |id: i64, name: &str| json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":name}});
    send(&h, C2S, call(1, "slow"));
    std::thread::sleep(Duration::from_millis(150));
    send(&h, S2C, json!({"jsonrpc":"2.0","id":1,"result":{}}));
    send(&h, C2S, call(2, "cancel_me"));
    send(
        &h,
        C2S,
        json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":2}}),
    );
    send(&h, C2S, call(3, "in_flight"));
    h.send(Event::ServerExited {
        at: Instant::now(),
        client_closed: false,
    });
    send(&h, S2C, json!("garbage"));
    h.send(Event::Messages {
        scope: Arc::new(Scope::default()),
        dir: S2C,
        bytes: Bytes::from_static(b"\x00\xff{{{\n"),
        at: Instant::now(),
        prepared: PreparedCalls::new(),
    });
    assert!(h.sync(Duration::from_secs(5)));
    let out = lines.json();
    let by = |t: &str| out.iter().find(|l| l["tool_name"] == t).unwrap().clone();
    assert_eq!(by("slow")["status"], "timeout");
    assert_eq!(by("slow")["user"], "ops");
    assert!(by("slow")["duration_ms"].as_f64().unwrap() >= 50.0);
    assert_eq!(by("cancel_me")["error_code"], "cancelled");
    assert_eq!(by("in_flight")["error_code"], "server_exited");
    assert_eq!(out.len(), 3);
    assert_eq!(ProxyStats::get(&h.stats().late_responses), 1);
    assert_eq!(ProxyStats::get(&h.stats().malformed), 2);
}

#[test]
fn stateless_meta_and_audit_block() {
    let (h, lines) = observer(ObserverConfig::default());
    send(
        &h,
        C2S,
        json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"archive","arguments":{"id":"x"},
          "_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28",
                   "io.modelcontextprotocol/clientInfo":{"name":"rmcp-client","version":"3"}}}}),
    );
    send(
        &h,
        S2C,
        json!({"jsonrpc":"2.0","id":1,"result":{"content":[],"structuredContent":{"v":2},
          "_meta":{"io.mcp-otel/audit":{"operation_type":"update","before_state":{"v":1}}}}}),
    );
    assert!(h.sync(Duration::from_secs(5)));
    let out = lines.json();
    assert_eq!(out[0]["user"], "rmcp-client");
    assert_eq!(out[0]["operation_type"], "update");
    assert_eq!(out[0]["before_state"], json!({"v": 1}));
    assert_eq!(out[0]["after_state"], json!({"v": 2}));
    assert_eq!(out[0]["resource_id"], "x");
}

/// Results the observer reads only for `isError` (no `_meta`, no `task`) are recorded as when
/// they were parsed whole: the outcome from a boolean `isError` only, the state of a successful
/// update still taken from the result, a result serde_json cannot parse (nested 128 deep) still
/// malformed; and so with `--record-result`, which parses every result.
#[test]
fn results_read_for_is_error_only_record_what_a_whole_parse_did() {
    let deep = format!("{}{}", "[".repeat(130), "]".repeat(130));
    let shallow = format!("{}{}", "[".repeat(100), "]".repeat(100));
    let results: Vec<(&str, String)> = vec![
        ("failed", r#"{"content":[],"isError":true}"#.into()),
        ("not_failed", r#"{"content":[],"isError":"true"}"#.into()),
        ("in_an_array", "[true]".into()),
        (
            "update_doc",
            r#"{"content":[],"structuredContent":{"v":2}}"#.into(),
        ),
        (
            "update_failed",
            r#"{"isError":true,"structuredContent":{"v":2}}"#.into(),
        ),
        ("too_deep", format!(r#"{{"content":{deep}}}"#)),
        (
            "deep_enough",
            format!(r#"{{"content":{shallow},"s":"]]]\"[[["}}"#),
        ),
    ];
    for record_result in [false, true] {
        let config = ObserverConfig {
            record_result,
            ..ObserverConfig::default()
        };
        let (h, lines) = observer(config);
        for (i, (tool, result)) in results.iter().enumerate() {
            send(
                &h,
                C2S,
                json!({"jsonrpc":"2.0","id":i,"method":"tools/call","params":{"name":tool,"arguments":{"id":"d1"}}}),
            );
            let answer = format!(r#"{{"jsonrpc":"2.0","id":{i},"result":{result}}}"#);
            h.send(Event::Messages {
                scope: Arc::new(Scope::default()),
                dir: S2C,
                bytes: Bytes::from(answer + "\n"),
                at: Instant::now(),
                prepared: PreparedCalls::new(),
            });
        }
        assert!(h.sync(Duration::from_secs(5)));
        let out = lines.json();
        assert_eq!(out.len(), results.len(), "{out:#?}");
        let status = |tool| by_tool(&out, tool)["status"].clone();
        let code = |tool| by_tool(&out, tool)["error_code"].clone();
        assert_eq!(code("failed"), "tool_error");
        assert_eq!(status("not_failed"), "success");
        assert_eq!(status("in_an_array"), "success");
        let update = by_tool(&out, "update_doc");
        assert_eq!(update["operation_type"], "update");
        assert_eq!(update["after_state"], json!({"v": 2}));
        assert_eq!(update["resource_id"], "d1");
        let failed = by_tool(&out, "update_failed");
        assert_eq!(failed["error_code"], "tool_error");
        assert_eq!(failed["after_state"], Value::Null);
        assert_eq!(code("too_deep"), "malformed_response");
        assert_eq!(status("deep_enough"), "success");
    }
}

/// A task-augmented call is one record with the task's real outcome and duration, however the
/// client learns how the task went; a task that fails ends its call as `task_failed`, and a
/// later `tasks/result` for it adds nothing.
#[test]
fn task_augmented_calls_are_recorded_with_the_tasks_result() {
    let (h, lines) = observer(ObserverConfig {
        call_timeout: Some(Duration::from_millis(50)),
        ..ObserverConfig::default()
    });
    let task_call = |id: i64, name: &str| {
        json!({"jsonrpc":"2.0","id":id,"method":"tools/call",
        "params":{"name":name,"arguments":{"title":"q3"},"task":{"ttl":60000}}})
    };
    let created = |id: i64, task: &str| {
        json!({"jsonrpc":"2.0","id":id,"result":{"task":{
        "taskId":task,"status":"working","createdAt":"2025-11-25T10:00:00Z","ttl":60000}}})
    };
    let start = Instant::now();
    send(&h, C2S, task_call(1, "create_report"));
    send(&h, S2C, created(1, "t-1"));
    // Longer than the call timeout: the task's creation met it.
    std::thread::sleep(Duration::from_millis(120));
    send(
        &h,
        C2S,
        json!({"jsonrpc":"2.0","id":2,"method":"tasks/get","params":{"taskId":"t-1"}}),
    );
    send(
        &h,
        S2C,
        json!({"jsonrpc":"2.0","id":2,"result":{"taskId":"t-1","status":"working"}}),
    );
    let completed = start.elapsed().as_secs_f64() * 1000.0;
    send(
        &h,
        S2C,
        json!({"jsonrpc":"2.0","method":"notifications/tasks/status","params":{"taskId":"t-1","status":"completed"}}),
    );
    std::thread::sleep(Duration::from_millis(50));
    send(
        &h,
        C2S,
        json!({"jsonrpc":"2.0","id":3,"method":"tasks/result","params":{"taskId":"t-1"}}),
    );
    send(
        &h,
        S2C,
        json!({"jsonrpc":"2.0","id":3,"result":{"content":[{"type":"text","text":"{\"id\":\"r9\"}"}],
            "_meta":{"io.modelcontextprotocol/related-task":{"taskId":"t-1"}}}}),
    );
    // A task that fails: told by tasks/get; the client's tasks/result afterwards adds nothing.
    send(&h, C2S, task_call(4, "build_index"));
    send(&h, S2C, created(4, "t-2"));
    send(
        &h,
        C2S,
        json!({"jsonrpc":"2.0","id":5,"method":"tasks/get","params":{"taskId":"t-2"}}),
    );
    send(
        &h,
        S2C,
        json!({"jsonrpc":"2.0","id":5,"result":{"taskId":"t-2","status":"failed"}}),
    );
    send(
        &h,
        C2S,
        json!({"jsonrpc":"2.0","id":6,"method":"tasks/result","params":{"taskId":"t-2"}}),
    );
    send(
        &h,
        S2C,
        json!({"jsonrpc":"2.0","id":6,"error":{"code":-32603,"message":"boom"}}),
    );
    // A server without task support answers with a plain result: an ordinary call.
    send(&h, C2S, task_call(7, "create_note"));
    send(
        &h,
        S2C,
        json!({"jsonrpc":"2.0","id":7,"result":{"content":[]}}),
    );
    // Still open when the server exits.
    send(&h, C2S, task_call(8, "slow_job"));
    send(&h, S2C, created(8, "t-3"));
    let out = server_exits(&h, &lines, false);
    assert_eq!(out.len(), 4, "{out:#?}");
    let by = |t: &str| by_tool(&out, t);
    let report = by("create_report");
    assert_eq!(report["status"], "success");
    assert_eq!(report["operation_type"], "create");
    assert_eq!(report["after_state"], json!({"id": "r9"}));
    let ms = report["duration_ms"].as_f64().unwrap();
    // It ends when the task completed, not when the result was fetched (50 ms later).
    assert!(
        ms >= 120.0 && ms < completed + 25.0,
        "{ms} ms, completed after {completed} ms"
    );
    assert_eq!(by("build_index")["error_code"], "task_failed");
    assert_eq!(by("create_note")["status"], "success");
    assert_eq!(by("slow_job")["error_code"], "server_exited");
    assert_eq!(ProxyStats::get(&h.stats().tool_calls), 4);
}

/// A batch the server answers with one id-less error ends its calls with that error; a call
/// still open when the server exits after the client left is `unanswered` (the exit while
/// the client is there, `server_exited`, is in the test above).
#[test]
fn batch_errors_and_ignored_calls_say_what_happened() {
    let (h, lines) = observer(ObserverConfig::default());
    let call = |id: i64, name: &str| json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":name}});
    send(
        &h,
        C2S,
        json!([call(1, "in_batch_a"), call(2, "in_batch_b")]),
    );
    send(
        &h,
        S2C,
        json!({"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"batches are not supported"}}),
    );
    send(&h, C2S, call(3, "ignored"));
    send(&h, C2S, call(4, "answered"));
    send(
        &h,
        S2C,
        json!({"jsonrpc":"2.0","id":4,"result":{"content":[]}}),
    );
    let out = server_exits(&h, &lines, true);
    assert_eq!(out.len(), 4, "{out:#?}");
    let by = |t: &str| by_tool(&out, t);
    assert_eq!(by("in_batch_a")["error_code"], "-32600");
    assert_eq!(by("in_batch_b")["error_code"], "-32600");
    assert_eq!(by("ignored")["error_code"], "unanswered");
    assert_eq!(by("answered")["status"], "success");
}

/// A call that ends while the proxy's own `tools/list` is under way is classified with the
/// annotations that list brings (a read-only tool whose name has no read verb is not a write).
#[test]
fn a_call_waits_for_the_tools_list_under_way() {
    let (h, lines) = observer(ObserverConfig::default());
    send(
        &h,
        C2S,
        json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"open_nodes","arguments":{"names":["A"]}}}),
    );
    send(
        &h,
        C2S,
        json!({"jsonrpc":"2.0","id":"mcp-otel-proxy-1","method":"tools/list"}),
    );
    send(
        &h,
        S2C,
        json!({"jsonrpc":"2.0","id":1,"result":{"content":[]}}),
    );
    assert!(h.sync(Duration::from_secs(5)));
    assert!(lines.json().is_empty(), "recorded before the list was in");
    send(
        &h,
        S2C,
        json!({"jsonrpc":"2.0","id":"mcp-otel-proxy-1","result":{"tools":[
            {"name":"open_nodes","annotations":{"readOnlyHint":true}}]}}),
    );
    // Without a list under way, an unknown tool is recorded at once, as a write.
    send(
        &h,
        C2S,
        json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"frobnicate"}}),
    );
    send(
        &h,
        S2C,
        json!({"jsonrpc":"2.0","id":2,"result":{"content":[]}}),
    );
    assert!(h.sync(Duration::from_secs(5)));
    let out = lines.json();
    assert_eq!(out.len(), 2, "{out:#?}");
    assert_eq!(out[0]["tool_name"], "open_nodes");
    assert!(out[0].get("operation_type").is_none(), "{out:#?}");
    assert_eq!(out[1]["operation_type"], "write");
}

/// A signal stopping the proxy ends open calls and open tasks alike as `proxy_terminated`.
#[test]
fn termination_ends_open_tasks_too() {
    let (h, lines) = observer(ObserverConfig::default());
    send(
        &h,
        C2S,
        json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"job","task":{}}}),
    );
    send(
        &h,
        S2C,
        json!({"jsonrpc":"2.0","id":1,"result":{"task":{"taskId":"t","status":"working"}}}),
    );
    send(
        &h,
        C2S,
        json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"plain"}}),
    );
    h.send(Event::Terminated { at: Instant::now() });
    assert!(h.sync(Duration::from_secs(5)));
    let out = lines.json();
    assert_eq!(out.len(), 2, "{out:#?}");
    assert!(out.iter().all(|l| l["error_code"] == "proxy_terminated"));
}
