//! The Streamable HTTP proxy against real servers (npm `server-everything` in its
//! `streamableHttp` mode, the rmcp tasks server in-process, stateful and stateless) with the
//! official Python SDK client, plus a scripted upstream for error statuses and streaming.

mod support;

use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use mcp_otel::capture::Instrumentation;
use mcp_otel::capture::proxy::ProxyConfig;
use mcp_otel::capture::proxy::keys::{KeyRing, fingerprint};
use mcp_otel::capture::rmcp::Traced;
use mcp_otel::collect::testing::RunningReceiver;
use mcp_otel::demo::tasks::TaskServer;
use mcp_otel::emit::{BatchConfig, EmitConfig, Emitter, SpanTarget};
use mcp_otel::record::{OperationType, Status, Transport};
use serde_json::{Value, json};
use sha2::Digest;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::http::{raw_post, serve_mcp};
use support::proxy::*;

const ALICE_KEY: &str = "sk-alice-7f3e9a1c5b";

/// The key file that names [`ALICE_KEY`] (by its SHA-256) `alice`.
fn alice_keys_toml() -> String {
    let hash = sha2::Sha256::digest(ALICE_KEY.as_bytes());
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("alice = \"sha256:{hex}\"\n")
}

fn keys() -> KeyRing {
    KeyRing::parse(&alice_keys_toml()).unwrap()
}

fn emitter_to(receiver: &RunningReceiver) -> Emitter {
    emitter_at(receiver.endpoint())
}

fn emitter_at(endpoint: String) -> Emitter {
    Emitter::new(&EmitConfig {
        spans: SpanTarget::Otlp {
            endpoint: Some(endpoint),
        },
        batch: Some(BatchConfig {
            scheduled_delay: Duration::from_millis(20),
            ..BatchConfig::default()
        }),
        ..EmitConfig::default()
    })
    .unwrap()
}

/// The proxy in-process on 127.0.0.1:0 in front of `upstream`, exporting to `receiver`.
async fn start_proxy(
    upstream: String,
    keys: Option<KeyRing>,
    tools: ProxyConfig,
    receiver: &RunningReceiver,
) -> SocketAddr {
    start_http_proxy(upstream, keys, tools, emitter_to(receiver)).await
}

/// server-everything in its Streamable HTTP mode on a free port.
async fn everything_over_http() -> (tokio::process::Child, String) {
    let port = support::closed_port();
    let cmd = npm_server("server-everything");
    let child = tokio::process::Command::new(&cmd[0])
        .arg(&cmd[1])
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start server-everything");
    let url = format!("http://127.0.0.1:{port}/mcp");
    listening(port, "server-everything").await;
    (child, url)
}

/// Waits (20 s at most) until something accepts connections on 127.0.0.1:`port`; else fails
/// the test naming `what` did not listen.
async fn listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "{what} did not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// server-everything behind the proxy (keys on, exporting to `receiver`) and alice's raw
/// session through it; the server runs while the child is kept.
async fn alice_at_everything(
    receiver: &RunningReceiver,
) -> (tokio::process::Child, RawHttpSession) {
    let (server, url) = everything_over_http().await;
    let proxy = start_proxy(url, Some(keys()), ProxyConfig::default(), receiver).await;
    let session = RawHttpSession::open(proxy, format!("Bearer {ALICE_KEY}")).await;
    (server, session)
}

async fn drive_http(script: &Value, url: &str, headers: &[String]) -> Vec<Value> {
    let mut args = vec!["--http".to_owned(), url.to_owned()];
    for h in headers {
        args.push("--header".to_owned());
        args.push(h.clone());
    }
    let (lines, _) = drive_with(script, "python-http", &args, None, &[]).await;
    lines
}

/// The official Python client reaches server-everything through the proxy exactly as directly
/// (SSE responses and progress notifications streamed through), and its calls arrive as spans
/// with the key's name as the user, the session id and the client's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_reaches_server_everything_through_the_http_proxy() {
    let mut receiver = receiver().await;
    let (_server, url) = everything_over_http().await;
    let proxy = start_proxy(url.clone(), Some(keys()), ProxyConfig::default(), &receiver).await;
    let script = json!([
        {"list_tools": true},
        {"call": "echo", "args": {"message": "through"}},
        {"call": "get-sum", "args": {"a": 40, "b": 2}},
        {"call": "get-structured-content", "args": {"location": "Chicago"}},
        {"call": "trigger-long-running-operation", "args": {"duration": 0.3, "steps": 3},
         "meta": {"progressToken": 11}},
        {"call": "no-such-tool"},
        {"ping": true}
    ]);
    let direct = drive_http(&script, &url, &[]).await;
    let through = drive_http(
        &script,
        &format!("http://{proxy}/mcp"),
        &[format!("Authorization=Bearer {ALICE_KEY}")],
    )
    .await;
    assert_eq!(direct, through);

    let calls = calls(&mut receiver, 5).await;
    for c in &calls {
        assert_eq!(c.user, "alice");
        assert_eq!(c.mcp.transport, Some(Transport::Http));
        assert_eq!(c.mcp.client_address.as_deref(), Some("127.0.0.1"));
        assert!(c.mcp.session_id.is_some(), "stateful server: {c:#?}");
        assert_eq!(c.mcp.client_name.as_deref(), Some("python-http"));
        assert!(c.mcp.protocol_version.is_some());
    }
    assert_eq!(by_tool(&calls, "echo").status, Status::Success);
    assert_eq!(by_tool(&calls, "echo").read_only_hint, Some(true));
    assert!(by_tool(&calls, "trigger-long-running-operation").duration_ms >= 250.0);
    assert_eq!(
        by_tool(&calls, "no-such-tool").error_code.as_deref(),
        Some("tool_error")
    );
}

/// A raw client that never sends `tools/list` calls server-everything's `echo` (annotated
/// read-only; its name has no read verb): the proxy lists the tools itself in the client's
/// session, so the call is recorded as a read, not as a write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_learns_annotations_a_client_never_listed() {
    let mut receiver = receiver().await;
    let (_server, session) = alice_at_everything(&receiver).await;
    let (proxy, headers) = (session.proxy, session.headers());
    let echo = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": "hi"}}});
    let (s, _, body, _) = raw_post(proxy, &headers, echo.to_string().as_bytes()).await;
    assert_eq!(s, 200);
    assert!(body.contains("Echo: hi"), "{body}");
    assert!(!body.contains("mcp-otel-proxy-"), "{body}");
    let calls = calls(&mut receiver, 1).await;
    assert_eq!(calls[0].tool_name, "echo");
    assert_eq!(calls[0].read_only_hint, Some(true), "{:#?}", calls[0]);
    assert!(calls[0].write.is_none(), "{:#?}", calls[0]);
}

/// A session opened through the proxy with raw POSTs under `Authorization: BEARER`.
struct RawHttpSession {
    proxy: SocketAddr,
    bearer: String,
    id: String,
}

impl RawHttpSession {
    /// `initialize` and `notifications/initialized` through the proxy.
    async fn open(proxy: SocketAddr, bearer: String) -> RawHttpSession {
        let initialize = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "raw-http", "version": "1"}}});
        let (s, head, _, _) = raw_post(
            proxy,
            &[("Authorization", &bearer)],
            initialize.to_string().as_bytes(),
        )
        .await;
        assert_eq!(s, 200, "{head}");
        let id = head
            .lines()
            .find_map(|l| l.strip_prefix("mcp-session-id: "))
            .expect("a session")
            .trim()
            .to_owned();
        let session = RawHttpSession { proxy, bearer, id };
        let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        raw_post(
            proxy,
            &session.headers(),
            initialized.to_string().as_bytes(),
        )
        .await;
        session
    }

    /// The headers of a request in this session.
    fn headers(&self) -> [(&str, &str); 3] {
        [
            ("Authorization", &self.bearer),
            ("Mcp-Session-Id", &self.id),
            ("MCP-Protocol-Version", "2025-11-25"),
        ]
    }
}

/// The JSON-RPC message in a response body: the body itself, or the SSE event's data.
fn message_in(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|_| {
        let data = body
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .find(|d| d.contains("\"id\""))
            .unwrap_or_else(|| panic!("no message in {body}"));
        serde_json::from_str(data.trim()).unwrap()
    })
}

/// A task-augmented call over Streamable HTTP: creation, polling and the result travel in
/// separate POSTs of one session; the proxy records one call with the task's result, its
/// seconds and its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_augmented_call_over_http_is_one_record_with_its_result() {
    let mut receiver = receiver().await;
    let (_server, session) = alice_at_everything(&receiver).await;
    let (proxy, headers) = (session.proxy, session.headers());
    let post = |id: i64, method: &str, params: Value| {
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        async move {
            let (s, _, body, _) = raw_post(proxy, &headers, body.to_string().as_bytes()).await;
            assert_eq!(s, 200, "{body}");
            message_in(&body)
        }
    };
    let created = post(
        1,
        "tools/call",
        json!({"name": "simulate-research-query", "arguments": {"topic": "tracing"},
               "task": {"ttl": 60000}}),
    )
    .await;
    let task_id = created["result"]["task"]["taskId"]
        .as_str()
        .unwrap_or_else(|| panic!("no task: {created}"))
        .to_owned();
    let started = Instant::now();
    let mut id = 2;
    loop {
        let got = post(id, "tasks/get", json!({"taskId": task_id})).await;
        id += 1;
        if got["result"]["status"] == "completed" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{got}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let result = post(id, "tasks/result", json!({"taskId": task_id})).await;
    assert!(result.to_string().contains("Research Report"), "{result}");
    let calls = calls(&mut receiver, 1).await;
    assert_eq!(calls[0].tool_name, "simulate-research-query");
    assert_eq!(calls[0].status, Status::Success, "{:#?}", calls[0]);
    assert_eq!(calls[0].mcp.task_id.as_deref(), Some(task_id.as_str()));
    assert_eq!(calls[0].user, "alice");
    assert!(calls[0].duration_ms >= 3_000.0, "{}", calls[0].duration_ms);
}

/// The rmcp tasks server behind Streamable HTTP, instrumented itself: the key header never
/// reaches it, its spans continue the proxy's trace, and a configured before-state read goes
/// upstream in the client's session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmcp_server_sees_the_proxy_trace_and_no_key_and_before_state_is_read() {
    let mut receiver = receiver().await;
    let inst = Instrumentation::new(emitter_to(&receiver));
    let store = TaskServer::with_sample_tasks();
    let make = move || {
        Ok(
            Traced::new(store.clone(), inst.clone()).with_user_from_parts(|p| {
                Some(if p.headers.contains_key("authorization") {
                    "upstream-saw-the-key".into()
                } else {
                    "upstream".into()
                })
            }),
        )
    };
    let upstream = serve_mcp(make, true).await;
    let tools = ProxyConfig::parse(
        r#"
        [tools.update_task]
        before = { tool = "get_task", args = { id = "/id" } }
        "#,
    )
    .unwrap();
    let proxy = start_proxy(
        format!("http://{upstream}/mcp"),
        Some(keys()),
        tools,
        &receiver,
    )
    .await;
    let script = json!([
        {"call": "update_task", "args": {"id": "t3", "title": "Plan the offsite (moved)"}},
        {"call": "list_tasks", "args": {"project_id": "p2"}}
    ]);
    let out = drive_http(
        &script,
        &format!("http://{proxy}/mcp"),
        &[format!("X-API-Key={ALICE_KEY}")],
    )
    .await;
    assert_eq!(
        out[0]["structured_content"]["title"],
        "Plan the offsite (moved)"
    );
    assert_eq!(out.len(), 2);

    // Proxy: update_task, list_tasks. Upstream: get_task (hidden read), update_task, list_tasks.
    let calls = calls(&mut receiver, 5).await;
    let (proxy_side, upstream_side): (Vec<_>, Vec<_>) =
        calls.iter().partition(|c| c.user == "alice");
    assert_eq!(proxy_side.len(), 2, "{calls:#?}");
    assert!(
        upstream_side.iter().all(|c| c.user == "upstream"),
        "the key header reached the upstream: {upstream_side:#?}"
    );
    let update = proxy_side
        .iter()
        .find(|c| c.tool_name == "update_task")
        .unwrap();
    let w = update.write.as_ref().unwrap();
    assert_eq!(w.operation_type, Some(OperationType::Update));
    assert_eq!(w.resource_id.as_deref(), Some("t3"));
    assert_eq!(
        w.before_state.as_ref().unwrap()["title"],
        "Plan the offsite"
    );
    assert_eq!(
        w.after_state.as_ref().unwrap()["title"],
        "Plan the offsite (moved)"
    );
    let under_update = children_of(update, &upstream_side);
    assert_eq!(under_update.len(), 2, "{upstream_side:#?}");
    let server_update = under_update
        .iter()
        .find(|c| c.tool_name == "update_task")
        .unwrap();
    assert_eq!(server_update.mcp.session_id, update.mcp.session_id);
}

/// A scripted upstream: the tool name picks the answer (429, 503, a slow SSE stream, the size
/// of the body it got, or a plain JSON result); it keeps the headers it received.
type Seen = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

/// The last request the upstream got from the client, not counting the proxy's own
/// `tools/list` (sent beside a session's first call, so it may arrive after it).
fn last_from_client(seen: &Seen) -> (HeaderMap, Bytes) {
    let seen = seen.lock().unwrap();
    seen.iter()
        .rev()
        .find(|(_, body)| memchr::memmem::find(body, b"mcp-otel-proxy-").is_none())
        .cloned()
        .expect("a request from the client")
}

async fn scripted(State(seen): State<Seen>, headers: HeaderMap, body: Bytes) -> Response {
    seen.lock().unwrap().push((headers, body.clone()));
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let id = v["id"].clone();
    match v["params"]["name"].as_str() {
        Some("rate_limited") => (StatusCode::TOO_MANY_REQUESTS, "slow down").into_response(),
        Some("broken") => (StatusCode::SERVICE_UNAVAILABLE, "down").into_response(),
        Some("stream") => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
            tokio::spawn(async move {
                let progress = json!({"jsonrpc":"2.0","method":"notifications/progress",
                    "params":{"progressToken":1,"progress":1}});
                let _ = tx
                    .send(Ok(Bytes::from(format!(
                        "event: message\ndata: {progress}\n\n"
                    ))))
                    .await;
                tokio::time::sleep(Duration::from_millis(800)).await;
                let result = json!({"jsonrpc":"2.0","id":id,"result":{"content":[
                    {"type":"text","text":"{\"done\":true}"}]}});
                let _ = tx
                    .send(Ok(Bytes::from(format!(
                        "event: message\ndata: {result}\n\n"
                    ))))
                    .await;
            });
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            });
            let mut resp = axum::body::Body::from_stream(stream).into_response();
            resp.headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            resp
        }
        Some("size") => axum::Json(json!({"jsonrpc":"2.0","id":id,
            "result":{"content":[],"structuredContent":{"len": body.len()}}}))
        .into_response(),
        _ => axum::Json(json!({"jsonrpc":"2.0","id":id,"result":{"content":[]}})).into_response(),
    }
}

/// The [`scripted`] upstream on 127.0.0.1:0, no body limit: what it received, and its address.
async fn scripted_upstream() -> (Seen, SocketAddr) {
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .fallback(scripted)
        .layer(DefaultBodyLimit::disable())
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (seen, upstream)
}

/// The traceparent in the `_meta` of the body the upstream got for request id 6.
fn got_tp(seen: &Seen) -> String {
    let seen = seen.lock().unwrap();
    let v: Value = seen
        .iter()
        .filter_map(|(_, b)| serde_json::from_slice::<Value>(b).ok())
        .find(|v| v["id"] == 6)
        .unwrap();
    v["params"]["_meta"]["traceparent"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The status the server at `addr` answers a raw POST of `body` with.
async fn status_of(addr: SocketAddr, headers: &[(&str, &str)], body: &[u8]) -> u16 {
    raw_post(addr, headers, body).await.0
}

fn call(id: i64, tool: &str, args: Value) -> Vec<u8> {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":args}})
        .to_string()
        .into_bytes()
}

/// A missing or unknown key gets 401 with a JSON-RPC error body and is recorded as such
/// (fingerprint, never the key); upstream 429/503 become error codes; an SSE response streams
/// through as it arrives; the MCP headers pass, the key header does not; a 17 MiB body goes
/// through whole and is recorded by its envelope; a 2026-07-28 stateless request is recorded with its `_meta` client info.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_statuses_streaming_and_headers() {
    let mut receiver = receiver().await;
    let (seen, upstream) = scripted_upstream().await;
    let proxy = start_proxy(
        format!("http://{upstream}/mcp"),
        Some(keys()),
        ProxyConfig::default(),
        &receiver,
    )
    .await;
    let bearer = format!("Bearer {ALICE_KEY}");
    let auth = [("Authorization", bearer.as_str())];

    // Unknown and missing keys.
    let (status, head, body, _) = raw_post(
        proxy,
        &[("Authorization", "Bearer sk-mallory-guess")],
        &call(1, "delete_task", json!({"id": "t1"})),
    )
    .await;
    assert_eq!(status, 401);
    assert!(head.contains("www-authenticate: bearer"), "{head}");
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["id"], 1);
    assert_eq!(err["jsonrpc"], "2.0");
    assert!(err["error"]["code"].is_i64());
    let missing = status_of(proxy, &[], &call(2, "get_task", json!({}))).await;
    assert_eq!(missing, 401);
    assert!(seen.lock().unwrap().is_empty(), "nothing reached upstream");

    // Upstream statuses.
    let limited = status_of(proxy, &auth, &call(3, "rate_limited", json!({}))).await;
    assert_eq!(limited, 429);
    let broken = status_of(proxy, &auth, &call(4, "broken", json!({}))).await;
    assert_eq!(broken, 503);

    // Streaming: the first event arrives long before the stream ends.
    let (s, _, body, first) = raw_post(
        proxy,
        &[
            ("Authorization", bearer.as_str()),
            ("Mcp-Session-Id", "sess-1"),
            ("MCP-Protocol-Version", "2025-11-25"),
            ("Mcp-Method", "tools/call"),
            ("Mcp-Name", "stream"),
        ],
        &call(5, "stream", json!({"id": "s1"})),
    )
    .await;
    assert_eq!(s, 200);
    assert!(body.contains("notifications/progress") && body.contains("\"done\\\":true"));
    assert!(
        first < Duration::from_millis(500),
        "first SSE event after {first:?}"
    );
    let h = last_from_client(&seen).0;
    assert_eq!(h["mcp-session-id"], "sess-1");
    assert_eq!(h["mcp-protocol-version"], "2025-11-25");
    assert_eq!(h["mcp-method"], "tools/call");
    assert_eq!(h["mcp-name"], "stream");
    assert!(h.get("authorization").is_none(), "the key went upstream");

    // The upstream gets the call with the proxy's traceparent in `_meta`, nothing else changed.
    let plain = call(6, "plain", json!({"k": 1.50}));
    assert_eq!(status_of(proxy, &auth, &plain).await, 200);
    let got = last_from_client(&seen).1;
    let got = String::from_utf8(got.to_vec()).unwrap();
    let tp_at = got.find("\"traceparent\":\"").unwrap() + 15;
    let tp = &got[tp_at..tp_at + 55];
    let sent = String::from_utf8(plain).unwrap().replace(
        "\"params\":{",
        &format!("\"params\":{{\"_meta\":{{\"traceparent\":\"{tp}\"}},"),
    );
    assert_eq!(got, sent);

    // A body over the observation limit goes through whole, and is recorded by its envelope.
    let big = "x".repeat(17 * 1024 * 1024);
    let big_call = call(7, "size", json!({ "blob": big }));
    let (s, _, body, _) = raw_post(proxy, &auth, &big_call).await;
    assert_eq!(s, 200);
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["result"]["structuredContent"]["len"], big_call.len());

    // A stateless 2026-07-28 request.
    let stateless = json!({"jsonrpc":"2.0","id":"z","method":"tools/call","params":{
        "name":"plain","arguments":{},"_meta":{
            "io.modelcontextprotocol/protocolVersion":"2026-07-28",
            "io.modelcontextprotocol/clientInfo":{"name":"agent-2026","version":"2.0"}}}});
    let modern = [
        ("Authorization", bearer.as_str()),
        ("MCP-Protocol-Version", "2026-07-28"),
    ];
    let s = status_of(proxy, &modern, stateless.to_string().as_bytes()).await;
    assert_eq!(s, 200);

    let calls = calls(&mut receiver, 8).await;
    let size = by_tool(&calls, "size");
    assert_eq!(size.mcp.request_id.as_deref(), Some("7"));
    assert!(
        size.context
            .as_ref()
            .unwrap()
            .to_string()
            .contains("truncated")
    );
    let mallory = by_tool(&calls, "delete_task");
    assert_eq!(mallory.error_code.as_deref(), Some("401"));
    assert_eq!(mallory.status, Status::Error);
    assert_eq!(mallory.user, fingerprint("sk-mallory-guess"));
    assert!(mallory.user.starts_with("key:") && mallory.user.len() == 12);
    assert!(!format!("{calls:?}").contains("mallory-guess"));
    assert!(!format!("{calls:?}").contains(ALICE_KEY));
    assert_eq!(by_tool(&calls, "get_task").user, "anonymous");
    assert_eq!(
        by_tool(&calls, "get_task").error_code.as_deref(),
        Some("401")
    );
    assert_eq!(
        by_tool(&calls, "rate_limited").error_code.as_deref(),
        Some("429")
    );
    assert_eq!(by_tool(&calls, "broken").error_code.as_deref(), Some("503"));
    let stream = by_tool(&calls, "stream");
    assert_eq!(stream.status, Status::Success);
    assert!(stream.duration_ms >= 750.0, "{}", stream.duration_ms);
    assert_eq!(stream.mcp.session_id.as_deref(), Some("sess-1"));
    assert_eq!(stream.user, "alice");
    let plain = calls
        .iter()
        .find(|c| c.mcp.request_id.as_deref() == Some("6"))
        .unwrap();
    assert_eq!(
        mcp_otel::capture::context::format_traceparent(&plain.ids),
        got_tp(&seen),
        "the injected traceparent names the proxy's span"
    );
    let z = calls
        .iter()
        .find(|c| c.mcp.request_id.as_deref() == Some("z"))
        .unwrap();
    assert_eq!(z.mcp.protocol_version.as_deref(), Some("2026-07-28"));
    assert_eq!(z.mcp.client_name.as_deref(), Some("agent-2026"));
    assert_eq!(z.mcp.session_id, None);
    assert_eq!(z.user, "alice");
}

/// Stateless rmcp (2026-07-28 style JSON responses, no session): the proxy relays and records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateless_rmcp_server_through_the_proxy() {
    let mut receiver = receiver().await;
    let store = TaskServer::with_sample_tasks();
    let upstream = serve_mcp(move || Ok(store.clone()), false).await;
    let proxy = start_proxy(
        format!("http://{upstream}/mcp"),
        None,
        ProxyConfig::default(),
        &receiver,
    )
    .await;
    let body = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{
        "name":"create_task","arguments":{"project_id":"p9","title":"New"},"_meta":{
            "io.modelcontextprotocol/protocolVersion":"2026-07-28",
            "io.modelcontextprotocol/clientInfo":{"name":"stateless-agent","version":"1"},
            "io.modelcontextprotocol/clientCapabilities":{}}}});
    let (s, head, body, _) = raw_post(
        proxy,
        &[
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "tools/call"),
            ("Mcp-Name", "create_task"),
        ],
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(s, 200, "{head}\n{body}");
    assert!(head.contains("application/json"), "{head}");
    let calls = calls(&mut receiver, 1).await;
    let c = &calls[0];
    assert_eq!(c.user, "stateless-agent");
    assert_eq!(c.mcp.protocol_version.as_deref(), Some("2026-07-28"));
    assert_eq!(c.operation_type(), Some(OperationType::Create));
    assert_eq!(
        c.write.as_ref().unwrap().after_state.as_ref().unwrap()["title"],
        "New"
    );
}

/// The `mcp-otel proxy --listen … --upstream … --keys …` command line end to end: a known key
/// passes and is logged by name, an unknown one is refused and logged by fingerprint, and bodies
/// that are not JSON-RPC are relayed to the upstream as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_http_proxy() {
    let (seen, upstream) = scripted_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let keys_file = dir.path().join("keys.toml");
    std::fs::write(&keys_file, alice_keys_toml()).unwrap();
    let log = dir.path().join("calls.jsonl");
    let port = support::closed_port();
    let mut proxy = tokio::process::Command::new(PROXY)
        .args(["proxy", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--upstream", &format!("http://{upstream}/mcp")])
        .arg("--keys")
        .arg(&keys_file)
        .arg("--log")
        .arg(&log)
        .env("OTEL_TRACES_EXPORTER", "none")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    listening(port, "the proxy").await;
    let bearer = format!("Bearer {ALICE_KEY}");
    let alice = [("Authorization", bearer.as_str())];
    let known = status_of(addr, &alice, &call(1, "get_task", json!({"id": "t1"}))).await;
    assert_eq!(known, 200);
    let unknown = [("X-API-Key", "not-a-key")];
    let refused = status_of(addr, &unknown, &call(2, "delete_task", json!({"id": "t1"}))).await;
    assert_eq!(refused, 401);
    for garbage in [&b"{not json"[..], &[0u8, 0xff, b'\n', 0x80][..]] {
        assert_eq!(status_of(addr, &alice, garbage).await, 200);
        assert_eq!(&last_from_client(&seen).1[..], garbage);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= 2 || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    proxy.kill().await.unwrap();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let ok = lines.iter().find(|l| l["tool_name"] == "get_task").unwrap();
    assert_eq!(ok["user"], "alice");
    assert_eq!(ok["status"], "success");
    let refused = lines
        .iter()
        .find(|l| l["tool_name"] == "delete_task")
        .unwrap();
    assert_eq!(refused["error_code"], "401");
    assert_eq!(refused["user"], fingerprint("not-a-key"));
    assert!(!std::fs::read_to_string(&log).unwrap().contains("not-a-key"));
}

/// A client without a valid key is refused at `initialize`, before any tool call: the proxy
/// records each refusal under the method it refused (`tool_name` `initialize`), and the
/// collector counts them, so `McpAuthFailures` fires for the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_initialize_requests_trip_the_auth_failure_alert() {
    use mcp_otel::collect::alerts::{AlertConfig, CountRule};
    use mcp_otel::collect::config::CollectConfig;
    let window = Duration::from_secs(60);
    let config = CollectConfig {
        alerts: AlertConfig {
            auth_failures: CountRule {
                threshold: 3,
                window,
            },
            ..AlertConfig::default()
        },
        ..CollectConfig::ephemeral()
    };
    let collect = mcp_otel::collect::server::start(&config, None)
        .await
        .unwrap();
    // Nothing may reach the upstream: a port with no listener.
    let upstream = format!("http://127.0.0.1:{}/mcp", support::closed_port());
    let proxy = start_http_proxy(
        upstream,
        Some(keys()),
        ProxyConfig::default(),
        emitter_at(format!("http://{}", collect.grpc_addr)),
    )
    .await;
    let initialize = serde_json::to_vec(&json!({
        "jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "guesser", "version": "1"}}
    }))
    .unwrap();
    let guess = "sk-mallory-guess";
    for _ in 0..4 {
        let bearer = format!("Bearer {guess}");
        let status = status_of(proxy, &[("Authorization", &bearer)], &initialize).await;
        assert_eq!(status, 401);
    }
    let user = fingerprint(guess);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let body = reqwest::get(format!("http://{}/api/alerts", collect.metrics_addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        let fired = v["alerts"].as_array().unwrap().iter().any(|a| {
            a["labels"]["alertname"] == "McpAuthFailures" && a["labels"]["user"] == user.as_str()
        });
        if fired {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no McpAuthFailures for {user}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = support::scrape_metrics(collect.metrics_addr).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("mcp_tool_calls_total")
                && l.contains(&format!("user=\"{user}\""))
                && l.contains("tool_name=\"initialize\"")
                && l.contains("error_code=\"401\"")
                && l.ends_with(" 4")),
        "{metrics}"
    );
}
