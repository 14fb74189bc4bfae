//! The rmcp wrapper over Streamable HTTP (stateful sessions and stateless 2026-07-28 requests),
//! the user taken from the HTTP request, and the pin on rmcp's handler method list.

mod support;

use mcp_otel::capture::Instrumentation;
use mcp_otel::capture::rmcp::Traced;
use mcp_otel::collect::testing;
use mcp_otel::demo::tasks::TaskServer;
use mcp_otel::emit::log::MemoryLog;
use mcp_otel::emit::{BatchConfig, EmitConfig, Emitter, SpanTarget};
use mcp_otel::record::{OperationType, Status, ToolCall, Transport};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;

/// The tasks server behind Streamable HTTP on 127.0.0.1:0, traced, user from `X-User`.
async fn http_server(
    stateful: bool,
) -> (
    SocketAddr,
    testing::RunningReceiver,
    MemoryLog,
    Instrumentation,
) {
    let receiver = testing::serve("127.0.0.1:0".parse().unwrap(), 64)
        .await
        .unwrap();
    let lines = MemoryLog::default();
    let config = EmitConfig {
        spans: SpanTarget::Otlp {
            endpoint: Some(receiver.endpoint()),
        },
        batch: Some(BatchConfig {
            scheduled_delay: Duration::from_millis(20),
            ..BatchConfig::default()
        }),
        ..EmitConfig::default()
    };
    let inst = Instrumentation::new(
        Emitter::new(&config)
            .unwrap()
            .with_log(Box::new(lines.clone())),
    );
    let store = TaskServer::with_sample_tasks();
    let factory_inst = inst.clone();
    let make = move || {
        Ok(
            Traced::new(store.clone(), factory_inst.clone()).with_user_from_parts(|parts| {
                parts
                    .headers
                    .get("x-user")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            }),
        )
    };
    let addr = support::http::serve_mcp(make, stateful).await;
    (addr, receiver, lines, inst)
}

/// One HTTP/1.1 POST of a JSON body: (status, lowercased head, body).
async fn post(addr: SocketAddr, headers: &[(&str, &str)], body: &Value) -> (u16, String, String) {
    let (status, head, body, _) =
        support::http::raw_post(addr, headers, body.to_string().as_bytes()).await;
    (status, head, body)
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(|v| v.trim().to_owned())
}

async fn next_call(rx: &mut testing::RunningReceiver) -> ToolCall {
    tokio::time::timeout(Duration::from_secs(10), rx.calls.recv())
        .await
        .expect("span arrived")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateless_http_calls_carry_the_user_from_the_request_and_the_2026_meta() {
    let (addr, mut rx, lines, _inst) = http_server(false).await;
    // A 2025-06-18 peer: version in the header, user from X-User, a bearer token that must
    // never be recorded.
    let (status, _, body) = post(
        addr,
        &[
            ("MCP-Protocol-Version", "2025-06-18"),
            ("X-User", "bob"),
            ("Authorization", "Bearer sk_live_abcdefghijk"),
        ],
        &json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                "params": {"name": "delete_task", "arguments": {"id": "t2"},
                           "_meta": {"io.mcp-otel/user_confirmation": false}}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"deleted\":\"t2\""), "{body}");
    let call = next_call(&mut rx).await;
    assert_eq!(call.user, "bob");
    assert_eq!(call.mcp.transport, Some(Transport::Http));
    assert_eq!(call.mcp.request_id.as_deref(), Some("5"));
    assert_eq!(call.mcp.protocol_version.as_deref(), Some("2025-06-18"));
    assert_eq!(call.mcp.session_id, None, "stateless: no session");
    let w = call.write.unwrap();
    assert_eq!(w.operation_type, Some(OperationType::Delete));
    assert_eq!(
        w.user_confirmation,
        Some(false),
        "false is recorded, not unknown"
    );
    assert_eq!(w.before_state.unwrap()["title"], "Review the budget");

    // A 2026-07-28 stateless request: version and client info travel in `_meta`.
    let (status, _, body) = post(
        addr,
        &[("MCP-Protocol-Version", "2026-07-28"), ("Mcp-Method", "tools/call"), ("Mcp-Name", "get_task")],
        &json!({"jsonrpc": "2.0", "id": "abc", "method": "tools/call",
                "params": {"name": "get_task", "arguments": {"id": "t1"}, "_meta": {
                    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                    "io.modelcontextprotocol/clientInfo": {"name": "agent-2026", "version": "1.0.0"},
                    "io.modelcontextprotocol/clientCapabilities": {},
                    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let call = next_call(&mut rx).await;
    assert_eq!(call.user, "agent-2026", "no X-User: the client's name");
    assert_eq!(call.mcp.client_name.as_deref(), Some("agent-2026"));
    assert_eq!(call.mcp.protocol_version.as_deref(), Some("2026-07-28"));
    assert_eq!(call.mcp.request_id.as_deref(), Some("abc"));
    assert_eq!(call.status, Status::Success);
    assert!(call.write.is_none());
    assert_eq!(call.ids.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");

    let log = lines.text();
    assert_eq!(log.lines().count(), 2, "{log}");
    assert!(
        !log.contains("sk_live"),
        "the bearer token must not be logged: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateful_http_sessions_record_the_session_id() {
    let (addr, mut rx, _lines, _inst) = http_server(true).await;
    let (status, head, body) = post(
        addr,
        &[],
        &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-03-26", "capabilities": {},
            "clientInfo": {"name": "cursor", "version": "1.2"}}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let sid = header(&head, "mcp-session-id").expect("a stateful server issues a session id");
    let session = [
        ("Mcp-Session-Id", sid.as_str()),
        ("MCP-Protocol-Version", "2025-03-26"),
    ];
    let (status, _, _) = post(
        addr,
        &session,
        &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    assert_eq!(status, 202);
    let (status, _, body) = post(
        addr,
        &session,
        &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": "update_task", "arguments": {"id": "t9", "status": "done"}}}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.contains("not found"), "{body}");
    let call = next_call(&mut rx).await;
    assert_eq!(call.mcp.session_id.as_deref(), Some(sid.as_str()));
    assert_eq!(call.mcp.protocol_version.as_deref(), Some("2025-03-26"));
    assert_eq!(call.user, "cursor", "client name from initialize");
    assert_eq!(call.status, Status::Error);
    assert_eq!(call.error_code.as_deref(), Some("tool_error"));
    let w = call
        .write
        .expect("a failed update is still a write attempt");
    assert_eq!(w.operation_type, Some(OperationType::Update));
    assert_eq!(w.resource_id.as_deref(), Some("t9"));
}

/// Names of the functions defined in `text` between `start` and the next line equal to `end`.
fn fn_names(text: &str, start: &str, end: &str) -> Vec<String> {
    let from = text
        .find(start)
        .unwrap_or_else(|| panic!("{start:?} not found"));
    let body = &text[from..];
    let body = &body[..body.find(end).unwrap_or(body.len())];
    let mut names: Vec<String> = body
        .lines()
        .filter_map(|l| {
            // rmcp's own `fn`/`async fn`, or an entry of the wrapper's `forward_to_inner!`
            // (`request fn`, `notification fn`).
            let l = l.trim_start();
            let l = ["async fn ", "fn ", "request fn ", "notification fn "]
                .iter()
                .find_map(|kind| l.strip_prefix(kind))?;
            Some(l.split(['(', '<']).next().unwrap().to_owned())
        })
        .collect();
    names.sort();
    names
}

#[test]
fn every_rmcp_handler_method_is_delegated_by_the_wrapper() {
    // The rmcp version the build uses, from Cargo.lock; its source is unpacked in the registry
    // (cargo unpacked it to build this test).
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock")).unwrap();
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"rmcp\"\n"))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")))
        .map(|v| v.trim_end_matches('"').to_owned())
        .expect("rmcp in Cargo.lock");
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cargo")
        });
    let dir = std::fs::read_dir(cargo_home.join("registry/src"))
        .unwrap()
        .map(|e| e.unwrap().path().join(format!("rmcp-{version}")))
        .find(|p| p.is_dir())
        .unwrap_or_else(|| panic!("rmcp-{version} source not found under {cargo_home:?}"));
    let upstream = std::fs::read_to_string(dir.join("src/handler/server.rs")).unwrap();
    let theirs = fn_names(&upstream, "macro_rules! server_handler_methods", "\n}\n");
    let ours_src =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/capture/rmcp.rs"))
            .unwrap();
    let ours = fn_names(
        &ours_src,
        "impl<H: ServerHandler> ServerHandler for Traced<H>",
        "\n}\n",
    );
    assert!(
        theirs.len() >= 30,
        "parsed too few rmcp methods: {theirs:?}"
    );
    assert_eq!(
        ours, theirs,
        "rmcp {version} changed ServerHandler: Traced<H> must delegate every method"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_call_is_not_a_write() {
    let (addr, mut rx, _lines, _inst) = http_server(false).await;
    let (status, _, body) = post(
        addr,
        &[("MCP-Protocol-Version", "2025-06-18")],
        &json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                "params": {"name": "drop_everything", "arguments": {"id": "t1"}}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("-32602"),
        "unknown tool is a JSON-RPC error: {body}"
    );
    let call = next_call(&mut rx).await;
    assert_eq!(call.tool_name, "drop_everything");
    assert_eq!(call.error_code.as_deref(), Some("-32602"));
    assert!(call.write.is_none(), "the tool never ran: {:?}", call.write);
}

/// The demo's `GatedTasks` (its `delete_task` asks through the helper `confirm`), traced, behind
/// Streamable HTTP: stateless 2026-07-28 (`modern`) or with sessions.
async fn gated_server(modern: bool) -> (SocketAddr, TaskServer, MemoryLog) {
    use mcp_otel::demo::confirm::GatedTasks;
    let tasks = TaskServer::with_sample_tasks();
    let lines = MemoryLog::default();
    let emitter = Emitter::new(&EmitConfig {
        spans: SpanTarget::None,
        ..EmitConfig::default()
    })
    .unwrap()
    .with_log(Box::new(lines.clone()));
    let inst = Instrumentation::new(emitter);
    let server = tasks.clone();
    let make = move || {
        Ok(Traced::new(
            GatedTasks {
                inner: server.clone(),
            },
            inst.clone(),
        ))
    };
    let addr = support::http::serve_mcp(make, !modern).await;
    (addr, tasks, lines)
}

/// The rmcp helper `confirm` at 2026-07-28: the gated tool answers the first call with an
/// `input_required` (its question and a signed state), the official Python SDK client resolves
/// it through its elicitation callback and calls again, and the tool runs only on approval. The
/// record carries the confirmation; the `input_required` round is no call. Also legacy
/// (2025-11-25, a server-to-client elicitation) against the same server.
#[tokio::test]
async fn the_confirm_helper_asks_a_2026_client_through_mrtr() {
    for (modern, answer, ran, outcome) in [
        (true, "accept", true, "accepted"),
        (true, "decline", false, "declined"),
        (false, "accept", true, "accepted"),
    ] {
        let (addr, tasks, lines) = gated_server(modern).await;
        let url = format!("http://{addr}/mcp");
        let mut client = tokio::process::Command::new(support::python());
        client
            .arg(support::peer_script("mcp_confirm.py"))
            .args(["--answer", answer, "--flavor", "tasks", "--entity", "t1"])
            .args(["--http", &url])
            .kill_on_drop(true);
        if modern {
            client.arg("--modern");
        }
        let out = tokio::time::timeout(Duration::from_secs(60), client.output())
            .await
            .unwrap()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let case = format!("modern={modern} {answer}");
        assert!(
            out.status.success(),
            "{case}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            stdout.matches("\"type\": \"elicitation\"").count(),
            1,
            "{case}: {stdout}"
        );
        assert_eq!(!tasks.task_ids().contains(&"t1".to_owned()), ran, "{case}");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !lines.text().contains("list_tasks") && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let records = lines.json();
        let deletes: Vec<&Value> = records
            .iter()
            .filter(|l| l["tool_name"] == "delete_task")
            .collect();
        assert_eq!(deletes.len(), 1, "{case}: one call, {records:#?}");
        let d = deletes[0];
        assert_eq!(d["confirmation_outcome"], outcome, "{case}: {d}");
        assert_eq!(d["confirmation_source"], "elicitation", "{case}: {d}");
        assert_eq!(d["user_confirmation"], ran, "{case}: {d}");
        assert_eq!(
            d["confirmation_arguments_digest"],
            mcp_otel::record::arguments_digest(Some(&json!({"id": "t1"}))),
            "{case}"
        );
    }
}

/// The helper's `requestState` is checked like the proxy's: a tampered one and a replayed one
/// are declined (recorded without a source), the genuine one runs the tool once.
#[tokio::test]
async fn the_confirm_helper_refuses_forged_and_replayed_states() {
    let (addr, tasks, lines) = gated_server(true).await;
    let call = |id: u64, extra: Value| {
        let mut params = json!({"name": "delete_task", "arguments": {"id": "t1"}, "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "raw-2026", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"form": {}}}}});
        for (k, v) in extra.as_object().unwrap() {
            params[k] = v.clone();
        }
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params})
    };
    let headers = [
        ("MCP-Protocol-Version", "2026-07-28"),
        ("Mcp-Method", "tools/call"),
        ("Mcp-Name", "delete_task"),
    ];
    let send = |body: Value| async move {
        let (status, _, text) = post(addr, &headers, &body).await;
        assert_eq!(status, 200, "{text}");
        serde_json::from_str::<Value>(&text).unwrap()
    };
    let first = send(call(1, json!({}))).await;
    assert_eq!(first["result"]["resultType"], "input_required", "{first}");
    let state = first["result"]["requestState"].as_str().unwrap().to_owned();
    let yes = json!({"io.mcp-otel/confirm": {"action": "accept", "content": {"confirm": true}}});
    let mut forged = state.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == '0' { '1' } else { '0' });
    let tampered = send(call(
        2,
        json!({"inputResponses": yes, "requestState": forged}),
    ))
    .await;
    assert_eq!(tampered["result"]["isError"], true, "{tampered}");
    assert!(tasks.task_ids().contains(&"t1".to_owned()));
    let ok = send(call(
        3,
        json!({"inputResponses": yes, "requestState": state}),
    ))
    .await;
    assert_ne!(ok["result"]["isError"], true, "{ok}");
    assert!(!tasks.task_ids().contains(&"t1".to_owned()));
    let again = send(call(
        4,
        json!({"inputResponses": yes, "requestState": state}),
    ))
    .await;
    assert_eq!(again["result"]["isError"], true, "replayed: {again}");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while lines.json().len() < 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let outcomes: Vec<(Value, Value)> = lines
        .json()
        .iter()
        .map(|l| {
            (
                l["confirmation_outcome"].clone(),
                l["confirmation_source"].clone(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            (json!("declined"), Value::Null),
            (json!("accepted"), json!("elicitation")),
            (json!("declined"), Value::Null),
        ]
    );
}
