//! Fuzzing what listens on a socket, through real loopback listeners: the Streamable HTTP
//! proxy's request handling (arbitrary request heads and bodies, raw over TCP, in front of a
//! scripted upstream) and collect's OTLP/HTTP receiver (arbitrary and mutated protobuf and
//! JSON bodies, plain or gzip, into a collector with an audit trail). Bounded: a fixed number of
//! requests per target (`MCP_OTEL_FUZZ_CASES` raises it), each with a deadline.
//!
//! Properties: no panic in the code under test (a panic hook counts them; a panicking handler
//! would only drop its connection, which a client cannot tell from a refusal), every request
//! gets an answer or a close in time, collect never answers 5xx to input it could not read, and
//! afterwards both still do their job: a valid call through the proxy is recorded, the audit
//! trail verifies.

mod support;

use axum::body::Bytes;
use mcp_otel::capture::proxy::ProxyConfig;
use mcp_otel::collect::{CollectConfig, testing};
use mcp_otel::emit::SpanOptions;
use mcp_otel::record::ToolCall;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use prost::Message;
use serde_json::{Value, json};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// This file's tests. libtest runs each on a thread of its name, so a panic on one of these
/// threads is a test's own failed assertion (libtest reports it), not the code under test's.
const TESTS: &[&str] = &[
    "the_http_proxy_survives_arbitrary_requests",
    "collect_survives_arbitrary_otlp_http_bodies",
];

/// Counts every panic of the code under test (its runtime's threads, handler tasks included),
/// then reports it as usual. The tests run in parallel: one test's failed assertion is not
/// counted, so it does not fail the other as "a panic in the proxy".
fn count_panics() {
    let test = std::thread::current();
    assert!(
        test.name().is_some_and(|n| TESTS.contains(&n)),
        "{:?} is not in TESTS: its failed assertions would count as panics",
        test.name()
    );
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let on_a_test = std::thread::current()
                .name()
                .is_some_and(|n| TESTS.contains(&n));
            if !on_a_test {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            default(info);
        }));
    });
}

fn runner(default: u32) -> TestRunner {
    let cases = std::env::var("MCP_OTEL_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    TestRunner::new(Config {
        cases,
        max_shrink_iters: 64,
        failure_persistence: None,
        ..Config::default()
    })
}

/// One byte-level edit, applied modulo the length.
fn mutate(mut b: Vec<u8>, edits: &[(u8, usize, u8)]) -> Vec<u8> {
    for &(op, at, byte) in edits {
        let n = b.len();
        match op % 4 {
            0 if n > 0 => b[at % n] = byte,
            1 => b.insert(at % (n + 1), byte),
            2 if n > 0 => {
                b.remove(at % n);
            }
            _ => b.truncate(at % (n + 1)),
        }
    }
    b
}

fn edits() -> impl Strategy<Value = Vec<(u8, usize, u8)>> {
    let byte = prop_oneof![
        any::<u8>(),
        prop::sample::select(b"{}[]\",:\\ \r\n0\x00\xff".to_vec())
    ];
    prop::collection::vec((any::<u8>(), any::<usize>(), byte), 0..5)
}

/// A request as a client could write it: method, path, headers, body, and a Content-Length
/// that is right, missing, or wrong.
#[derive(Clone, Debug)]
struct RawRequest {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    length: Option<Option<usize>>,
}

impl RawRequest {
    fn bytes(&self) -> Vec<u8> {
        // `Connection: close` so that each exchange ends with the answer.
        let mut out = format!(
            "{} {} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n",
            self.method, self.path
        );
        for (k, v) in &self.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        match self.length {
            Some(Some(n)) => out.push_str(&format!("Content-Length: {n}\r\n")),
            Some(None) => {}
            None => out.push_str(&format!("Content-Length: {}\r\n", self.body.len())),
        }
        out.push_str("\r\n");
        let mut b = out.into_bytes();
        b.extend_from_slice(&self.body);
        b
    }
}

fn mcp_body() -> impl Strategy<Value = Vec<u8>> {
    let call = (any::<u16>(), "[a-z_]{1,10}", "[ -~]{0,12}").prop_map(|(id, tool, arg)| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
               "params": {"name": tool, "arguments": {"q": arg, "password": "hunter2"}}})
    });
    let other = prop::sample::select(vec![
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "fuzz", "version": "0"}}}),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
        json!({"jsonrpc": "2.0", "id": 3, "result": {"action": "accept", "content": {}}}),
        json!([]),
        json!(null),
    ]);
    let value = prop_oneof![
        3 => call.clone(),
        1 => other,
        1 => prop::collection::vec(call, 1..4).prop_map(Value::Array),
    ];
    prop_oneof![
        4 => (value, edits()).prop_map(|(v, e)| mutate(v.to_string().into_bytes(), &e)),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

fn header() -> impl Strategy<Value = (String, String)> {
    let names = [
        "Content-Type",
        "Accept",
        "Mcp-Session-Id",
        "MCP-Protocol-Version",
        "Mcp-Method",
        "Mcp-Name",
        "Authorization",
        "Transfer-Encoding",
        "Content-Encoding",
        "Last-Event-ID",
        "Connection",
        "Expect",
        "X-Fuzz",
    ];
    let values = prop_oneof![
        prop::sample::select(vec![
            "application/json",
            "text/event-stream",
            "application/json, text/event-stream",
            "2025-06-18",
            "2026-07-28",
            "tools/call",
            "Bearer sk-nobody",
            "chunked",
            "gzip",
            "close",
            "100-continue",
            "",
        ])
        .prop_map(str::to_owned),
        "[ -~]{0,24}",
        "[\\x00-\\xff]{0,8}",
    ];
    (
        prop::sample::select(names.to_vec()).prop_map(str::to_owned),
        values,
    )
}

fn raw_request() -> impl Strategy<Value = RawRequest> {
    let method = prop_oneof![
        6 => Just("POST".to_owned()),
        1 => prop::sample::select(vec!["GET", "DELETE", "PUT", "OPTIONS", "HEAD"])
            .prop_map(str::to_owned),
        1 => "[A-Z]{1,8}",
    ];
    let path = prop_oneof![
        4 => Just("/mcp".to_owned()),
        1 => Just("/".to_owned()),
        1 => "/[ -~&&[^ ]]{0,20}",
    ];
    let length = prop_oneof![
        6 => Just(None),
        1 => Just(Some(None)),
        1 => (0usize..128).prop_map(|n| Some(Some(n))),
    ];
    (
        method,
        path,
        prop::collection::vec(header(), 0..6),
        mcp_body(),
        length,
    )
        .prop_map(|(method, path, headers, body, length)| RawRequest {
            method,
            path,
            headers: headers
                .into_iter()
                .map(|(k, v)| (k, v.replace(['\r', '\n'], "")))
                .collect(),
            body,
            length,
        })
}

/// Sends `bytes` and returns what came back before the peer closed. A peer still waiting for
/// body bytes that will not come gets a half-close after 1 s; then it has 10 s to end.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut sock = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    // The peer may answer (and close) before reading everything: a failed write is fine.
    let _ = sock.write_all(bytes).await;
    let mut out = Vec::new();
    let wait = Duration::from_secs(1);
    if tokio::time::timeout(wait, sock.read_to_end(&mut out))
        .await
        .is_ok()
    {
        return Ok(out);
    }
    let _ = sock.shutdown().await;
    match tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut out)).await {
        Ok(_) => Ok(out),
        Err(_) => Err(format!(
            "no answer or close within 11 s ({} bytes)",
            out.len()
        )),
    }
}

/// An upstream MCP endpoint that answers every POST: a result for each request id it can
/// read, 202 for anything else.
async fn scripted_upstream() -> String {
    async fn answer(body: Bytes) -> axum::response::Response {
        use axum::response::IntoResponse;
        let result = |id: &Value| {
            json!({"jsonrpc": "2.0", "id": id,
                   "result": {"content": [{"type": "text", "text": "{\"token\":\"s3cr3t\"}"}]}})
        };
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(m)) if m.get("id").is_some_and(|i| !i.is_null()) => {
                axum::Json(result(&m["id"])).into_response()
            }
            Ok(Value::Array(a)) if !a.is_empty() => axum::Json(Value::Array(
                a.iter()
                    .filter_map(|m| m.get("id").filter(|i| !i.is_null()).map(result))
                    .collect(),
            ))
            .into_response(),
            _ => http::StatusCode::ACCEPTED.into_response(),
        }
    }
    let app = axum::Router::new().fallback(axum::routing::any(answer));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/mcp")
}

#[test]
fn the_http_proxy_survives_arbitrary_requests() {
    count_panics();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (proxy, seen) = rt.block_on(async {
        let mut receiver = testing::serve("127.0.0.1:0".parse().unwrap(), 1024)
            .await
            .unwrap();
        let upstream = scripted_upstream().await;
        let emitter = support::otlp_emitter(receiver.addr, Duration::from_millis(20));
        let proxy =
            support::proxy::start_http_proxy(upstream, None, ProxyConfig::default(), emitter).await;
        let seen = Arc::new(Mutex::new(Vec::<ToolCall>::new()));
        let sink = seen.clone();
        tokio::spawn(async move {
            while let Some(c) = receiver.calls.recv().await {
                sink.lock().unwrap().push(c);
            }
        });
        (proxy, seen)
    });
    let answered = AtomicUsize::new(0);
    runner(300)
        .run(&raw_request(), |req| {
            let out = rt
                .block_on(exchange(proxy, &req.bytes()))
                .map_err(TestCaseError::fail)?;
            if !out.is_empty() {
                prop_assert!(
                    out.starts_with(b"HTTP/1."),
                    "{:?}",
                    String::from_utf8_lossy(&out)
                );
                answered.fetch_add(1, Ordering::Relaxed);
            }
            prop_assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a panic in the proxy");
            Ok(())
        })
        .unwrap();
    assert!(
        answered.load(Ordering::Relaxed) > 0,
        "some requests were answered"
    );
    // It still relays and records: a valid call after all that.
    let body = json!({"jsonrpc": "2.0", "id": 99, "method": "tools/call",
                      "params": {"name": "after_the_fuzz", "arguments": {}}});
    let ok = RawRequest {
        method: "POST".into(),
        path: "/mcp".into(),
        headers: vec![
            ("Content-Type".into(), "application/json".into()),
            (
                "Accept".into(),
                "application/json, text/event-stream".into(),
            ),
        ],
        body: body.to_string().into_bytes(),
        length: None,
    };
    let out = rt.block_on(exchange(proxy, &ok.bytes())).unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !seen
        .lock()
        .unwrap()
        .iter()
        .any(|c| c.tool_name == "after_the_fuzz")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the call was recorded"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A mutation can turn the key `password` into one no rule knows (`passJord`): what must
    // hold is that every value still under a secret key is redacted.
    fn secret_values_left(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::Object(m) => m
                .iter()
                .any(|(k, v)| (k == "password" && v == "hunter2") || secret_values_left(v)),
            serde_json::Value::Array(a) => a.iter().any(secret_values_left),
            _ => false,
        }
    }
    for c in seen.lock().unwrap().iter() {
        let line = serde_json::to_value(c).unwrap();
        assert!(!secret_values_left(&line), "redacted: {line}");
    }
    assert_eq!(PANICS.load(Ordering::SeqCst), 0);
}

/// Bodies for `POST /v1/traces`: our own exports (protobuf or OTLP/JSON), mutated or not, and
/// arbitrary bytes, under every content type and encoding the receiver knows and some it does
/// not.
fn otlp_body() -> impl Strategy<Value = (Vec<u8>, &'static str, bool)> {
    let calls = prop::collection::vec(
        ("[a-z_]{1,10}", "[a-z]{1,6}", any::<u64>()).prop_map(|(tool, user, n)| {
            let mut c = ToolCall::new(tool, user);
            c.context = Some(json!({"n": n, "api_key": "sk_live_4eC39HqLyjWDarjtT1zdp7dc"}));
            c
        }),
        1..4,
    );
    let export = calls.prop_map(|calls| ExportTraceServiceRequest {
        resource_spans: vec![opentelemetry_proto::tonic::trace::v1::ResourceSpans {
            scope_spans: vec![opentelemetry_proto::tonic::trace::v1::ScopeSpans {
                spans: calls
                    .iter()
                    .map(|c| mcp_otel::emit::to_span(c, &SpanOptions::default()).into())
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    });
    let content_type = prop::sample::select(vec![
        "application/x-protobuf",
        "application/json",
        "text/plain",
    ]);
    (
        export,
        any::<bool>(),
        edits(),
        prop::collection::vec(any::<u8>(), 0..200),
        0u8..5,
        content_type,
        any::<bool>(),
    )
        .prop_map(|(export, json, edits, junk, pick, ct, gzip)| {
            let body = match pick {
                0 => junk,
                _ if json => mutate(serde_json::to_vec(&export).unwrap(), &edits),
                _ => mutate(export.encode_to_vec(), &edits),
            };
            let ct = match (pick, json) {
                (0, _) => ct,
                (_, true) => "application/json",
                (_, false) => "application/x-protobuf",
            };
            (body, ct, gzip)
        })
}

/// A stored context (JSON text of the context's text) in which the key `api_key` still stands
/// right before a quoted value that holds the secret: what the redactor must catch, however the
/// rest was edited.
fn keyed_secret_left(stored: &str) -> bool {
    stored.match_indices(r#"\"api_key\":"#).any(|(i, m)| {
        stored[i + m.len()..]
            .trim_start_matches(' ')
            .strip_prefix(r#"\""#)
            .and_then(|v| v.split(r#"\""#).next())
            .is_some_and(|v| v.contains("4eC39HqLyjWDarjtT1zdp7dc"))
    })
}

#[test]
fn collect_survives_arbitrary_otlp_http_bodies() {
    count_panics();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = CollectConfig {
        audit: Some(db.clone()),
        ..CollectConfig::ephemeral()
    };
    let collect = rt
        .block_on(mcp_otel::collect::start(&config, None))
        .unwrap();
    let url = format!("http://{}/v1/traces", collect.http_addr);
    let client = reqwest::Client::new();
    let statuses = Mutex::new(std::collections::BTreeMap::<u16, u32>::new());
    runner(300)
        .run(&otlp_body(), |(body, ct, gzip)| {
            let mut req = client.post(&url).header("content-type", ct);
            let body = if gzip {
                req = req.header("content-encoding", "gzip");
                let mut e = flate2::write::GzEncoder::new(Vec::new(), Default::default());
                e.write_all(&body).unwrap();
                e.finish().unwrap()
            } else {
                body
            };
            let status = rt
                .block_on(async {
                    tokio::time::timeout(Duration::from_secs(10), req.body(body).send()).await
                })
                .map_err(|_| TestCaseError::fail("no answer within 10 s"))?
                .map_err(|e| TestCaseError::fail(e.to_string()))?
                .status()
                .as_u16();
            *statuses.lock().unwrap().entry(status).or_default() += 1;
            prop_assert!(
                [200, 400, 415].contains(&status),
                "input it cannot read is the client's problem, never a 5xx: {}",
                status
            );
            prop_assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a panic in collect");
            Ok(())
        })
        .unwrap();
    let statuses = statuses.into_inner().unwrap();
    assert!(
        statuses.contains_key(&200) && statuses.contains_key(&400),
        "{statuses:?}"
    );
    rt.block_on(collect.shutdown());
    let report = mcp_otel::audit::verify::verify_path(
        &db,
        &mcp_otel::audit::verify::VerifyOptions::default(),
    )
    .unwrap();
    assert!(report.is_intact(), "{}", report.summary());
    assert!(
        report.rows > 0,
        "some fuzzed exports were calls and were stored"
    );
    let secrets = support::audit::column(&db, "SELECT coalesce(context, '') FROM mcp_logs");
    // A secret is redacted wherever it still looks like one: its key intact before its quoted
    // value, or the value's own prefix intact (up to four edits may have broken both, and then
    // it is not).
    let leaked: Vec<&String> = secrets
        .iter()
        .filter(|c| c.contains("4eC39HqLyjWDarjtT1zdp7dc"))
        .filter(|c| keyed_secret_left(c) || c.contains("sk_live_4eC39"))
        .collect();
    assert!(
        leaked.is_empty(),
        "redacted in every stored row: {leaked:?}"
    );
    assert_eq!(PANICS.load(Ordering::SeqCst), 0);
}
