//! The stdio proxy between real MCP peers: the official Python SDK client driving the npm
//! servers (`server-memory`, `server-everything`) and the rmcp tasks server, with the spans
//! received by an in-process OTLP receiver.

mod support;

use mcp_otel::record::{OperationType, Status, Transport};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::proxy::*;

const CLIENT_TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// The client's calls to server-memory arrive as spans with the official names, the user,
/// the status, the error code and the write classification; a client `traceparent` becomes
/// the parent, and calls without one reach the server with the proxy span's `traceparent`.
#[tokio::test]
async fn server_memory_calls_arrive_as_classified_spans() {
    let mut receiver = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let server_in = dir.path().join("server_in.bin");
    // The server's input is recorded on its way in, to see what the proxy forwarded.
    let server = sh(format!(
        "tee {} | exec {}",
        quote(&[server_in.display().to_string()]),
        quote(&memory_server(dir.path()))
    ));
    let script = json!([
        {"list_tools": true},
        {"call": "create_entities",
         "args": {"entities": [{"name": "alpha", "entityType": "t", "observations": ["o1"]}]},
         "meta": {"traceparent": CLIENT_TRACEPARENT}},
        {"call": "add_observations",
         "args": {"observations": [{"entityName": "alpha", "contents": ["o2"]}]}},
        {"call": "read_graph"},
        {"call": "search_nodes", "args": {"query": "alpha"}},
        {"call": "delete_entities", "args": {"entityNames": ["alpha"]}},
        {"call": "no_such_tool"}
    ]);
    let (out, _) = drive(
        &script,
        "claude-desktop",
        &proxied(&[], &server),
        &otel_env(&receiver),
    )
    .await;
    assert_eq!(out.len(), 7);
    assert_eq!(out[1]["is_error"], false);
    assert_eq!(
        out[3]["structured_content"]["entities"][0]["name"], "alpha",
        "read_graph through the proxy sees the created entity"
    );
    assert_eq!(out[6]["is_error"], true);

    let calls = calls(&mut receiver, 6).await;
    for c in &calls {
        assert_eq!(c.user, "claude-desktop", "{c:#?}");
        assert_eq!(c.mcp.method, "tools/call");
        assert_eq!(c.mcp.transport, Some(Transport::Stdio));
        assert_eq!(c.mcp.protocol_version.as_deref(), Some("2025-11-25"));
        assert_eq!(c.mcp.client_name.as_deref(), Some("claude-desktop"));
        assert!(c.mcp.request_id.is_some());
        assert!(c.duration_ms > 0.0);
    }
    let create = by_tool(&calls, "create_entities");
    assert_eq!(create.status, Status::Success);
    assert_eq!(create.operation_type(), Some(OperationType::Create));
    let w = create.write.as_ref().unwrap();
    assert_eq!(
        w.after_state.as_ref().unwrap()["entities"][0]["name"],
        "alpha"
    );
    assert_eq!(
        create.ids.trace_id_hex(),
        "0af7651916cd43dd8448eb211c80319c"
    );
    assert_eq!(
        mcp_otel::record::TraceIds {
            span_id: create.ids.parent_span_id,
            ..create.ids
        }
        .span_id_hex(),
        "b7ad6b7169203331"
    );
    assert_eq!(
        by_tool(&calls, "add_observations").operation_type(),
        Some(OperationType::Create)
    );
    let read = by_tool(&calls, "read_graph");
    assert_eq!(read.operation_type(), None);
    assert_eq!(read.read_only_hint, Some(true));
    assert_eq!(by_tool(&calls, "search_nodes").operation_type(), None);
    let delete = by_tool(&calls, "delete_entities");
    assert_eq!(delete.operation_type(), Some(OperationType::Delete));
    assert_eq!(delete.destructive_hint, Some(true));
    let unknown = by_tool(&calls, "no_such_tool");
    assert_eq!(unknown.status, Status::Error);
    assert_eq!(unknown.error_code.as_deref(), Some("tool_error"));

    // What the server received: the client's traceparent untouched, the others injected with
    // the proxy span as parent.
    let forwarded = std::fs::read_to_string(&server_in).unwrap();
    let sent: Vec<Value> = forwarded
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let meta_of = |tool: &str| {
        sent.iter()
            .find(|m| m["method"] == "tools/call" && m["params"]["name"] == tool)
            .unwrap()["params"]["_meta"]
            .clone()
    };
    assert_eq!(
        meta_of("create_entities")["traceparent"],
        CLIENT_TRACEPARENT
    );
    assert_eq!(
        meta_of("read_graph")["traceparent"],
        format!(
            "00-{}-{}-01",
            read.ids.trace_id_hex(),
            read.ids.span_id_hex()
        )
    );
}

/// server-everything answers through the proxy exactly as without it, progress notifications
/// included, and its read-only tools are recorded as reads.
#[tokio::test]
async fn server_everything_answers_as_without_the_proxy() {
    let mut receiver = receiver().await;
    let script = json!([
        {"list_tools": true},
        {"call": "echo", "args": {"message": "hi"}},
        {"call": "get-sum", "args": {"a": 2, "b": 3}},
        {"call": "get-structured-content", "args": {"location": "Chicago"}},
        {"call": "trigger-long-running-operation", "args": {"duration": 0.3, "steps": 3},
         "meta": {"progressToken": 7}},
        {"call": "echo", "args": {}},
        {"ping": true}
    ]);
    let server = npm_server("server-everything");
    let (direct, _) = drive(&script, "cursor", &server, &[]).await;
    let (through, _) = drive(
        &script,
        "cursor",
        &proxied(&["--user", "ops@example.com"], &server),
        &otel_env(&receiver),
    )
    .await;
    assert_eq!(direct, through, "the client sees the same answers");

    let calls = calls(&mut receiver, 5).await;
    assert!(calls.iter().all(|c| c.user == "ops@example.com"));
    let echo = calls
        .iter()
        .find(|c| c.tool_name == "echo" && c.status == Status::Success)
        .unwrap();
    assert_eq!(echo.operation_type(), None, "echo is readOnlyHint");
    let long = by_tool(&calls, "trigger-long-running-operation");
    assert!(long.duration_ms >= 250.0, "{}", long.duration_ms);
    let bad_echo = calls
        .iter()
        .find(|c| c.tool_name == "echo" && c.status == Status::Error)
        .unwrap();
    assert_eq!(bad_echo.error_code.as_deref(), Some("tool_error"));
}

fn read_file(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Byte transparency with a real client and server: with injection off, the client receives
/// exactly the bytes it receives without the proxy, and the server receives exactly the bytes
/// the client sent.
#[tokio::test]
async fn client_and_server_see_the_same_bytes_as_without_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    let script = json!([
        {"list_tools": true},
        {"call": "create_entities",
         "args": {"entities": [{"name": "é \"quoted\" \u{1F600}", "entityType": "t", "observations": []}]}},
        {"call": "read_graph"},
        {"call": "search_nodes", "args": {"query": "quoted"}},
        {"call": "delete_entities", "args": {"entityNames": ["é \"quoted\" \u{1F600}"]}},
        {"call": "no_such_tool", "args": {"x": [1, 2.5, null]}},
        {"ping": true}
    ]);
    std::fs::create_dir(dir.path().join("direct")).unwrap();
    std::fs::create_dir(dir.path().join("proxied")).unwrap();
    let direct = sh(format!(
        "tee {} | {} | tee {}",
        quote(&[p("direct_c2s")]),
        quote(&memory_server(&dir.path().join("direct"))),
        quote(&[p("direct_s2c")])
    ));
    drive(&script, "byte-check", &direct, &[]).await;
    let inner = sh(format!(
        "tee {} | exec {}",
        quote(&[p("server_in")]),
        quote(&memory_server(&dir.path().join("proxied")))
    ));
    let proxy = proxied(&["--no-inject", "--log", "none"], &inner);
    let through = sh(format!(
        "tee {} | {} | tee {}",
        quote(&[p("proxied_c2s")]),
        quote(&proxy),
        quote(&[p("proxied_s2c")])
    ));
    drive(
        &script,
        "byte-check",
        &through,
        &[("OTEL_TRACES_EXPORTER", "none".into())],
    )
    .await;
    let direct_s2c = read_file(&dir.path().join("direct_s2c"));
    assert!(direct_s2c.len() > 1000);
    assert!(
        read_file(&dir.path().join("proxied_s2c")) == direct_s2c,
        "the client received other bytes through the proxy"
    );
    let client_sent = read_file(&dir.path().join("proxied_c2s"));
    assert_eq!(client_sent, read_file(&dir.path().join("direct_c2s")));
    assert!(
        read_file(&dir.path().join("server_in")) == client_sent,
        "the server received other bytes than the client sent"
    );
}

/// A raw stdio session with the proxy: writes `input` (from another thread, so large inputs
/// cannot deadlock), reads stdout to its end. Returns (stdout, stderr, exit code).
fn raw_session(
    args: &[&str],
    server: &[String],
    input: Vec<u8>,
    env: &[(&str, &str)],
    hold_open: Duration,
) -> (Vec<u8>, String, Option<i32>) {
    let mut child = spawn_proxy(args, server, env, Stdio::piped());
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
        std::thread::sleep(hold_open);
        drop(stdin);
    });
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        let _ = tx.send(out);
    });
    let out = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out,
        Err(_) => {
            let _ = child.kill();
            panic!("the proxy stalled");
        }
    };
    drop(writer); // it may still be holding stdin open; the proxy has ended anyway
    let status = child.wait().unwrap();
    (out, err_reader.join().unwrap(), status.code())
}

/// Malformed JSON, unknown methods, a 17 MiB message, binary garbage and an unterminated last
/// line go through unchanged in both directions (the server is `cat`, which echoes), are
/// counted, and a dead OTLP endpoint changes nothing.
#[test]
fn bad_input_is_relayed_unchanged_and_counted() {
    let mut input = Vec::new();
    input.extend_from_slice(
        b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"no/such/method\",\"params\":{}}\n",
    );
    input.extend_from_slice(
        "{\"jsonrpc\": \"2.0\" , \"id\" : \"x\\u00e9\", \"method\":\"tools/call\",\"params\":{\"name\":\"t\"}}\r\n".as_bytes(),
    );
    input.extend_from_slice(b"{not json at all\n");
    input.extend_from_slice(&[
        0, 0xff, 0xfe, b'\n', 0x80, b'{', b'\n', 0x1b, b'[', b'0', b'm',
    ]);
    input.push(b'\n');
    let mut big =
        b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{\"data\":\""
            .to_vec();
    big.resize(big.len() + 17 * 1024 * 1024, b'a');
    big.extend_from_slice(b"\"}}\n");
    input.extend_from_slice(&big);
    for i in 0..2000 {
        input.extend_from_slice(
            format!("{{\"jsonrpc\":\"2.0\",\"id\":{i},\"method\":\"ping\"}}\n").as_bytes(),
        );
    }
    input.extend_from_slice(b"{\"unterminated\":");
    let started = Instant::now();
    let (out, stderr, code) = raw_session(
        &["--no-inject", "--log", "none"],
        &["cat".to_owned()],
        input.clone(),
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")],
        Duration::ZERO,
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        out == input,
        "output differs from input ({} vs {} bytes)",
        out.len(),
        input.len()
    );
    assert!(
        stderr.contains("1 oversize") || stderr.contains("2 oversize"),
        "{stderr}"
    );
    assert!(!stderr.contains(" 0 malformed"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

/// With injection on, the only change to a message is the `traceparent` added to a
/// `tools/call`'s `_meta`; everything else arrives as sent.
#[test]
fn injection_changes_only_the_calls_meta() {
    let lines = [
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"}\n",
        "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/call\",\"params\":{\"name\":\"t\",\"arguments\":{\"n\":1.50}}}\n",
        "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"tools/call\",\"params\":{\"name\":\"t\",\"_meta\":{\"traceparent\":\"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\"}}}\n",
    ];
    let (out, stderr, code) = raw_session(
        &["--log", "none"],
        &["cat".to_owned()],
        lines.concat().into_bytes(),
        &[("OTEL_TRACES_EXPORTER", "none")],
        Duration::ZERO,
    );
    assert_eq!(code, Some(0), "{stderr}");
    let out = String::from_utf8(out).unwrap();
    let got: Vec<&str> = out.split_inclusive('\n').collect();
    assert_eq!(got.len(), 3);
    assert_eq!(got[0], lines[0]);
    assert_eq!(got[2], lines[2]);
    let injected = got[1];
    let tp_start = injected.find("00-").unwrap();
    let tp = &injected[tp_start..tp_start + 55];
    assert!(mcp_otel::capture::context::parse_traceparent(tp).is_some());
    assert_eq!(
        injected,
        lines[1].replace(
            "\"params\":{",
            &format!("\"params\":{{\"_meta\":{{\"traceparent\":\"{tp}\"}},")
        )
    );
}

/// A call with no answer in time is recorded as `timeout` while the late answer still reaches
/// the client; a cancelled call is `cancelled`; calls in flight when the server exits are
/// `server_exited`, and the proxy exits with the server's status.
#[tokio::test]
async fn timeout_cancellation_and_server_exit_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    // Timeout, with the real Python client and server-everything.
    let log = dir.path().join("timeout.jsonl");
    let script = json!([
        {"call": "trigger-long-running-operation", "args": {"duration": 1, "steps": 2}},
        {"call": "echo", "args": {"message": "after"}}
    ]);
    let (out, _) = drive(
        &script,
        "cli",
        &proxied(
            &[
                "--call-timeout",
                "300ms",
                "--log",
                &log.display().to_string(),
            ],
            &npm_server("server-everything"),
        ),
        &[("OTEL_TRACES_EXPORTER", "none".into())],
    )
    .await;
    assert_eq!(out[0]["is_error"], false, "the late answer was relayed");
    assert_eq!(out[1]["text"], "Echo: after");
    let lines = log_lines(&log);
    let long = lines
        .iter()
        .find(|l| l["tool_name"] == "trigger-long-running-operation")
        .unwrap();
    assert_eq!(long["status"], "timeout");
    assert_eq!(long["error_code"], "timeout");
    let ms = long["duration_ms"].as_f64().unwrap();
    assert!((300.0..900.0).contains(&ms), "{ms}");
    assert_eq!(lines.len(), 2);

    // Cancellation: a raw client cancels a long call.
    let log = dir.path().join("cancel.jsonl");
    let session = [
        json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}),
        json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
        json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"trigger-long-running-operation","arguments":{"duration":2,"steps":2}}}),
        json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1,"reason":"user"}}),
    ];
    let input: String = session.iter().map(|m| format!("{m}\n")).collect();
    let (_, stderr, code) = raw_session(
        &["--log", &log.display().to_string()],
        &npm_server("server-everything"),
        input.into_bytes(),
        &[("OTEL_TRACES_EXPORTER", "none")],
        Duration::from_millis(500),
    );
    assert_eq!(code, Some(0), "{stderr}");
    let lines = log_lines(&log);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["status"], "error");
    assert_eq!(lines[0]["error_code"], "cancelled");
    assert_eq!(lines[0]["user"], "raw");

    // Server exit with a call in flight.
    let log = dir.path().join("exit.jsonl");
    let call = json!({"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"slow"}});
    let (_, stderr, code) = raw_session(
        &["--log", &log.display().to_string()],
        &sh("read line; exit 7".into()),
        format!("{call}\n").into_bytes(),
        &[("OTEL_TRACES_EXPORTER", "none")],
        Duration::from_secs(30),
    );
    assert_eq!(
        code,
        Some(7),
        "the proxy exits with the server's status: {stderr}"
    );
    let lines = log_lines(&log);
    assert_eq!(lines[0]["tool_name"], "slow");
    assert_eq!(lines[0]["error_code"], "server_exited");
}

/// server-memory (the TypeScript SDK) drops a JSON-RPC batch line without a word: the batch's
/// calls are recorded once each, as `unanswered` (the server exits after the client closed
/// stdin, never having answered them), not as `server_exited`; the later call is a success.
/// Exactly three calls, three records.
#[test]
fn calls_a_server_ignored_are_recorded_as_unanswered() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("calls.jsonl");
    let call = |id: i64, name: &str| json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":name,"arguments":{}}});
    let session = [
        json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}),
        json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
        json!([call(1, "read_graph"), call(2, "search_nodes")]),
        call(3, "read_graph"),
    ];
    let input: String = session.iter().map(|m| format!("{m}\n")).collect();
    let (out, stderr, code) = raw_session(
        &["--log", &log.display().to_string()],
        &memory_server(dir.path()),
        input.into_bytes(),
        &[("OTEL_TRACES_EXPORTER", "none")],
        Duration::from_millis(1500),
    );
    assert_eq!(code, Some(0), "{stderr}");
    let out = String::from_utf8(out).unwrap();
    assert!(out.contains("\"id\":3"), "{out}");
    assert!(!out.contains("mcp-otel-proxy-"), "{out}");
    let lines = log_lines(&log);
    assert_eq!(lines.len(), 3, "{lines:#?}\n{out}");
    let unanswered = lines
        .iter()
        .filter(|l| l["status"] == "error" && l["error_code"] == "unanswered")
        .count();
    assert_eq!(unanswered, 2, "{lines:#?}");
    assert_eq!(
        lines.iter().filter(|l| l["status"] == "success").count(),
        1,
        "{lines:#?}"
    );
}

fn log_lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Before-state capture against the rmcp tasks server: the proxy reads `get_task` before
/// forwarding `update_task`, invisibly to the client, and records both states; the server's own
/// spans (it is instrumented too) continue the proxy's trace through the injected traceparent.
#[tokio::test]
async fn before_state_is_captured_from_the_tasks_server() {
    let mut receiver = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        r#"
        [tools.update_task]
        resource_id = "/id"
        before = { tool = "get_task", args = { id = "/id" } }
        "#,
    )
    .unwrap();
    let server = vec![example("tasks_server").display().to_string()];
    let script = json!([
        {"call": "update_task", "args": {"id": "t1", "status": "done"}},
        {"call": "get_task", "args": {"id": "t1"}}
    ]);
    let mut env = otel_env(&receiver);
    env.push(("MCP_OTEL_USER", "server-side".into()));
    env.push(("MCP_OTEL_LOG", "none".into()));
    let (out, _) = drive(
        &script,
        "cli",
        &proxied(
            &[
                "--user",
                "proxy-side",
                "--config",
                &config.display().to_string(),
            ],
            &server,
        ),
        &env,
    )
    .await;
    assert_eq!(out.len(), 2);
    assert_eq!(out[0]["structured_content"]["status"], "done");
    assert_eq!(out[1]["structured_content"]["status"], "done");

    // 2 proxy spans + 3 server spans (the hidden read, the update, the client's read).
    let calls = calls(&mut receiver, 5).await;
    let proxy_side: Vec<_> = calls.iter().filter(|c| c.user == "proxy-side").collect();
    let server_side: Vec<_> = calls.iter().filter(|c| c.user == "server-side").collect();
    assert_eq!((proxy_side.len(), server_side.len()), (2, 3), "{calls:#?}");
    let update = proxy_side
        .iter()
        .find(|c| c.tool_name == "update_task")
        .unwrap_or_else(|| panic!("{calls:#?}"));
    let w = update.write.as_ref().unwrap();
    assert_eq!(w.operation_type, Some(OperationType::Update));
    assert_eq!(w.resource_id.as_deref(), Some("t1"));
    assert_eq!(w.before_state.as_ref().unwrap()["status"], "open");
    assert_eq!(w.after_state.as_ref().unwrap()["status"], "done");
    // The server's spans hang under the proxy's: the update and the hidden read.
    let children = children_of(update, &server_side);
    assert_eq!(children.len(), 2, "{server_side:#?}");
    assert!(children.iter().any(|c| c.tool_name == "get_task"));
}

/// The spans leave the proxy with the official OpenTelemetry names, as an independent
/// receiver (the Python `opentelemetry-proto` types over grpcio) decodes them.
#[tokio::test]
async fn spans_reach_an_independent_receiver_with_the_official_names() {
    use tokio::io::AsyncBufReadExt;
    let mut receiver = tokio::process::Command::new(python())
        .arg(peers().join("otlp_receive.py"))
        .args(["--max-spans", "3", "--timeout", "60"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start otlp_receive.py");
    let mut lines = tokio::io::BufReader::new(receiver.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the receiver starts")
        .unwrap()
        .unwrap();
    let port = first.strip_prefix("LISTENING ").expect("LISTENING <port>");
    let dir = tempfile::tempdir().unwrap();
    let script = json!([
        {"call": "create_entities",
         "args": {"entities": [{"name": "beta", "entityType": "t", "observations": []}]},
         "meta": {"traceparent": CLIENT_TRACEPARENT}},
        {"call": "read_graph"},
        {"call": "no_such_tool"}
    ]);
    drive(
        &script,
        "zed",
        &proxied(&[], &memory_server(dir.path())),
        &[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{port}"),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY", "50".into()),
            ("OTEL_SERVICE_NAME", "memory-behind-proxy".into()),
        ],
    )
    .await;
    let mut spans = Vec::new();
    while spans.len() < 3 {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("spans arrive")
            .unwrap()
            .expect("the receiver printed 3 spans");
        spans.push(serde_json::from_str::<Value>(&line).unwrap());
    }
    let span = |tool: &str| {
        spans
            .iter()
            .find(|s| s["attributes"]["gen_ai.tool.name"] == tool)
            .unwrap_or_else(|| panic!("{tool}: {spans:#?}"))
            .clone()
    };
    let create = span("create_entities");
    assert_eq!(create["name"], "tools/call create_entities");
    assert_eq!(create["kind"], "server");
    assert_eq!(create["trace_id"], "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(create["parent_span_id"], "b7ad6b7169203331");
    let a = &create["attributes"];
    assert_eq!(a["mcp.method.name"], "tools/call");
    assert_eq!(a["gen_ai.operation.name"], "execute_tool");
    assert_eq!(a["enduser.id"], "zed");
    assert_eq!(a["network.transport"], "pipe");
    assert_eq!(a["mcp.protocol.version"], "2025-11-25");
    assert_eq!(a["mcp_otel.operation_type"], "create");
    assert_eq!(a["mcp_otel.status"], "success");
    assert!(a["jsonrpc.request.id"].is_string());
    assert_eq!(
        create["resource_attributes"]["service.name"],
        "memory-behind-proxy"
    );
    let read = span("read_graph");
    assert!(read["attributes"].get("mcp_otel.operation_type").is_none());
    assert_eq!(read["parent_span_id"], Value::Null);
    let bad = span("no_such_tool");
    assert_eq!(bad["status_code"], "error");
    assert_eq!(bad["attributes"]["error.type"], "tool_error");
    assert_eq!(bad["attributes"]["mcp_otel.error_code"], "tool_error");
}

/// A bad `--config` stops the proxy before it starts the server, naming every problem.
#[test]
fn a_bad_config_names_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "[tools.update_task]\noperation_type = \"upsert\"\nresource_id = \"id\"\n",
    )
    .unwrap();
    let out = Command::new(PROXY)
        .args(["proxy", "--config"])
        .arg(&config)
        .args(["--", "cat"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`tools.update_task.operation_type`"), "{err}");
    assert!(err.contains("`tools.update_task.resource_id`"), "{err}");
    assert!(err.contains("bad.toml"), "{err}");
}

/// The server command may follow the proxy's options directly, as in
/// `mcp-otel proxy --user carol npx server`; `--` keeps working, and what follows the command
/// (even flags the proxy also has) is the server's.
#[tokio::test]
async fn the_server_command_needs_no_double_dash() {
    let mut receiver = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let mut without = vec![
        PROXY.to_owned(),
        "proxy".into(),
        "--user".into(),
        "carol".into(),
    ];
    without.extend(memory_server(dir.path()));
    let script = json!([{"call": "read_graph"}]);
    let (out, _) = drive(&script, "client", &without, &otel_env(&receiver)).await;
    assert_eq!(out[0]["is_error"], false, "{out:?}");
    let with = proxied(&["--user", "dave"], &memory_server(dir.path()));
    drive(&script, "client", &with, &otel_env(&receiver)).await;
    let calls = calls(&mut receiver, 2).await;
    let users: Vec<&str> = calls.iter().map(|c| c.user.as_str()).collect();
    assert_eq!(users, ["carol", "dave"]);

    // `--user` after the command belongs to the server (here: `echo`, which prints it).
    let out = Command::new(PROXY)
        .args(["proxy", "--log", "none", "echo", "--user", "x"])
        .env("OTEL_TRACES_EXPORTER", "none")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "--user x\n");
}

/// The MCP Inspector CLI consumes `--`, so its documented form gives the proxy the server
/// command without one: `npx @modelcontextprotocol/inspector --cli mcp-otel proxy --user carol
/// SERVER --method tools/call --tool-name echo --tool-arg message=hi`.
#[tokio::test]
async fn the_inspector_cli_calls_a_tool_through_the_proxy() {
    let mut receiver = receiver().await;
    let inspector = peers().join("node_modules/@modelcontextprotocol/inspector/cli/build/cli.js");
    assert!(
        inspector.exists(),
        "missing test peer @modelcontextprotocol/inspector (run `bash scripts/setup-peers.sh`)"
    );
    let echo = example("echo_server");
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(&inspector)
        .args(["--cli", PROXY, "proxy", "--user", "carol"])
        .arg(&echo)
        .args(["--method", "tools/call", "--tool-name", "echo"])
        .args(["--tool-arg", "message=hello inspector"])
        .envs(otel_env(&receiver))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the inspector finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_str(&stdout).expect("the inspector prints the result");
    assert_eq!(result["content"][0]["text"], "hello inspector");
    assert_eq!(result["isError"], false);
    let calls = calls(&mut receiver, 1).await;
    assert_eq!(calls[0].tool_name, "echo");
    assert_eq!(calls[0].user, "carol");
    assert_eq!(calls[0].status, Status::Success);
}
