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
    h.send(Event::ServerExited { at: Instant::now() });
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
