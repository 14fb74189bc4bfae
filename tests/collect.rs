//! `mcp-otel collect` end to end on loopback: spans from the real opentelemetry-otlp exporter,
//! from the official Python OpenTelemetry SDK and over OTLP/HTTP move `/metrics`; the five
//! alerts fire and resolve (API, gauge, webhook); bad input is refused and the processor keeps
//! serving; forwarding reaches the next hop; the bearer token is enforced.

mod support;

use axum::routing::post;
use mcp_otel::collect::alerts::{AlertConfig, CountRule, RateRule};
use mcp_otel::collect::{CollectConfig, RunningCollector, start, testing};
use mcp_otel::emit::Emitter;
use mcp_otel::record::{OperationType, Status, ToolCall, WriteOp};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{export_request, string_kv};

fn emitter(c: &RunningCollector) -> Emitter {
    support::otlp_emitter(c.grpc_addr, Duration::from_millis(20))
}

async fn get(url: String) -> (u16, String) {
    let r = reqwest::get(&url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The value of the first sample line starting with `series` (labels in exposition order).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Polls `/metrics` until `series` reaches `want` (bounded).
async fn wait_for(c: &RunningCollector, series: &str, want: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, text) = get(format!("http://{}/metrics", c.metrics_addr)).await;
        if sample(&text, series) == Some(want) || Instant::now() > deadline {
            assert_eq!(sample(&text, series), Some(want), "{series} in:\n{text}");
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts collect on the ephemeral configuration changed by `set`.
async fn start_with(set: impl FnOnce(&mut CollectConfig)) -> RunningCollector {
    let mut config = CollectConfig::ephemeral();
    set(&mut config);
    start(&config, None).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_from_the_rust_exporter_move_the_metrics() {
    let c = start(&CollectConfig::ephemeral(), None).await.unwrap();
    let e = emitter(&c);
    for i in 0..3 {
        let mut call = ToolCall::new("create_task", "alice");
        call.duration_ms = 30.0;
        call.write = Some(WriteOp::new(OperationType::Create).confirmed((i == 0).then_some(true)));
        e.emit(call);
    }
    let mut limited = ToolCall::new("search", "bob");
    limited.status = Status::Error;
    limited.error_code = Some("429".into());
    e.emit(limited);
    assert!(e.flush(Duration::from_secs(10)).await);
    let text = wait_for(
        &c,
        r#"mcp_tool_calls_total{tool_name="create_task",user="alice",status="success",error_code=""}"#,
        3.0,
    )
    .await;
    let calls429 =
        r#"mcp_tool_calls_total{tool_name="search",user="bob",status="error",error_code="429"}"#;
    assert_eq!(sample(&text, calls429), Some(1.0));
    let w = r#"mcp_write_operations_total{tool_name="create_task",user="alice",operation_type="create",user_confirmation="#;
    assert_eq!(sample(&text, &format!(r#"{w}"unknown"}}"#)), Some(2.0));
    assert_eq!(sample(&text, &format!(r#"{w}"true"}}"#)), Some(1.0));
    let bucket = r#"mcp_server_operation_duration_seconds_bucket{le="0.05",mcp_method_name="tools/call",gen_ai_tool_name="create_task",error_type=""}"#;
    assert_eq!(
        sample(&text, bucket),
        Some(3.0),
        "30 ms falls in the 0.05 s bucket"
    );
    assert_eq!(sample(&text, "mcp_otel_spans_received_total"), Some(4.0));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_from_the_official_python_sdk_move_the_metrics() {
    let c = start(&CollectConfig::ephemeral(), None).await.unwrap();
    let endpoint = format!("http://{}", c.grpc_addr);
    let send = |args: &[&str]| {
        let mut cmd = std::process::Command::new(support::python());
        cmd.arg(support::peer_script("otlp_send.py"))
            .args(["--endpoint", &endpoint])
            .args(args);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "otlp_send: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // A foreign instrumentation following the official names only.
    send(&[
        "--count",
        "4",
        "--name",
        "tools/call search_docs",
        "--kind",
        "server",
        "--attr",
        "mcp.method.name=tools/call",
        "--attr",
        "gen_ai.tool.name=search_docs",
        "--attr",
        "enduser.id=py-user",
        "--attr",
        "error.type=-32603",
        "--attr",
        "rpc.response.status_code=-32603",
        "--error",
    ]);
    // Not an MCP span: forwarded, counted as ignored, not a call.
    send(&[
        "--count",
        "2",
        "--name",
        "GET /",
        "--attr",
        "http.request.method=GET",
    ]);
    let text = wait_for(
        &c,
        r#"mcp_tool_calls_total{tool_name="search_docs",user="py-user",status="error",error_code="-32603"}"#,
        4.0,
    )
    .await;
    assert_eq!(sample(&text, "mcp_otel_spans_ignored_total"), Some(2.0));
    c.shutdown().await;
}

fn tool_span(tool: &str, user: &str, extra: Vec<KeyValue>) -> Span {
    let mut attributes = vec![
        string_kv("mcp.method.name", "tools/call"),
        string_kv("gen_ai.tool.name", tool),
        string_kv("enduser.id", user),
    ];
    attributes.extend(extra);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    Span {
        trace_id: rand_bytes::<16>(),
        span_id: rand_bytes::<8>().to_vec(),
        name: format!("tools/call {tool}"),
        start_time_unix_nano: now.as_nanos() as u64,
        end_time_unix_nano: now.as_nanos() as u64 + 1_000_000,
        attributes,
        ..Default::default()
    }
}

fn rand_bytes<const N: usize>() -> Vec<u8> {
    (0..N).map(|_| rand::random::<u8>() | 1).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_http_accepts_protobuf_json_and_gzip_and_refuses_garbage() {
    let c = start(&CollectConfig::ephemeral(), None).await.unwrap();
    let url = format!("http://{}/v1/traces", c.http_addr);
    let client = reqwest::Client::new();
    let pb = export_request(vec![tool_span("get_task", "h1", vec![])]).encode_to_vec();
    let r = client
        .post(&url)
        .header("content-type", "application/x-protobuf")
        .body(pb.clone());
    let r = r.send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-protobuf");
    // gzip-compressed protobuf (another call: the same span again would be a resend).
    let pb2 = export_request(vec![tool_span("get_task", "h1", vec![])]).encode_to_vec();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &pb2).unwrap();
    let r = client
        .post(&url)
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "gzip")
        .body(gz.finish().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // OTLP JSON: hex ids, camelCase, as the spec's JSON encoding says.
    let body = json!({"resourceSpans": [{"scopeSpans": [{"spans": [{
        "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
        "name": "tools/call get_task", "kind": 2,
        "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000000100000000",
        "attributes": [
            {"key": "mcp.method.name", "value": {"stringValue": "tools/call"}},
            {"key": "gen_ai.tool.name", "value": {"stringValue": "get_task"}},
            {"key": "enduser.id", "value": {"stringValue": "h1"}}]}]}]}]});
    let r = client
        .post(&url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    wait_for(
        &c,
        r#"mcp_tool_calls_total{tool_name="get_task",user="h1",status="success",error_code=""}"#,
        3.0,
    )
    .await;

    // Garbage: refused with a clear error, nothing counted, still serving.
    let r = client
        .post(&url)
        .header("content-type", "application/x-protobuf")
        .body(vec![0xff, 0xff, 0xff, 0x01, 0x02])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("invalid OTLP protobuf"));
    let post = |content_type: &'static str, body: Vec<u8>| {
        let r = client.post(&url).header("content-type", content_type);
        async move { r.body(body).send().await.unwrap().status() }
    };
    assert_eq!(post("application/json", b"{not json".to_vec()).await, 400);
    assert_eq!(post("text/plain", b"hi".to_vec()).await, 415);
    let big = vec![0u8; 65 * 1024 * 1024];
    assert_eq!(
        post("application/x-protobuf", big).await,
        413,
        "over the 64 MiB limit"
    );
    let (status, body) = get(format!("http://{}/healthz", c.metrics_addr)).await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_grpc_input_is_refused_and_the_processor_keeps_serving() {
    let c = start(&CollectConfig::ephemeral(), None).await.unwrap();
    let mut client = TraceServiceClient::connect(format!("http://{}", c.grpc_addr))
        .await
        .unwrap();
    // Wrong attribute types: the span is rejected in the partial-success answer, others count.
    let bad = tool_span(
        "get_task",
        "typo",
        vec![string_kv("mcp_otel.user_confirmation", "maybe")],
    );
    let good = tool_span("get_task", "fine", vec![]);
    let resp = client
        .export(export_request(vec![bad, good]))
        .await
        .unwrap()
        .into_inner();
    let partial = resp.partial_success.expect("one span rejected");
    assert_eq!(partial.rejected_spans, 1);
    assert!(
        partial.error_message.contains("mcp_otel.user_confirmation"),
        "{partial:?}"
    );
    // Malformed protobuf on the wire: a gRPC error, not a crash.
    let mut raw = tonic::client::Grpc::new(
        tonic::transport::Channel::from_shared(format!("http://{}", c.grpc_addr))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    raw.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    );
    let err = raw
        .unary::<Vec<u8>, Vec<u8>, _>(
            tonic::Request::new(vec![0xff, 0xff, 0xff, 0x07]),
            path,
            RawCodec,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Internal, "{err}");
    let text = wait_for(
        &c,
        r#"mcp_tool_calls_total{tool_name="get_task",user="fine",status="success",error_code=""}"#,
        1.0,
    )
    .await;
    assert_eq!(sample(&text, "mcp_otel_spans_invalid_total"), Some(1.0));
    // Still serving.
    client
        .export(export_request(vec![tool_span("get_task", "fine", vec![])]))
        .await
        .unwrap();
    c.shutdown().await;
}

/// Sends bytes as they are (to put malformed protobuf on the wire).
#[derive(Clone, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_token_is_required_on_both_receivers() {
    let token = "s3cret-token-0123456789";
    let c = start_with(|config| config.token = Some(token.into())).await;
    let mut client = TraceServiceClient::connect(format!("http://{}", c.grpc_addr))
        .await
        .unwrap();
    let err = client
        .export(export_request(vec![tool_span("t", "u", vec![])]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let mut req = tonic::Request::new(export_request(vec![tool_span("t", "u", vec![])]));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    client.export(req).await.unwrap();
    let url = format!("http://{}/v1/traces", c.http_addr);
    let pb = export_request(vec![tool_span("t", "u", vec![])]).encode_to_vec();
    let http = reqwest::Client::new();
    let r = http
        .post(&url)
        .header("content-type", "application/x-protobuf")
        .body(pb.clone());
    assert_eq!(r.send().await.unwrap().status(), 401);
    let r = http
        .post(&url)
        .header("content-type", "application/x-protobuf")
        .bearer_auth(token)
        .body(pb);
    assert_eq!(r.send().await.unwrap().status(), 200);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_forwarded_unchanged_and_a_dead_hop_does_not_stop_metrics() {
    let mut next = testing::serve("127.0.0.1:0".parse().unwrap(), 64)
        .await
        .unwrap();
    let c = start_with(|config| config.forward = Some(next.endpoint())).await;
    let e = emitter(&c);
    let mut call = ToolCall::new("update_task", "dana");
    call.write = Some(WriteOp::new(OperationType::Update).resource_id("t1"));
    let sent = call.clone();
    e.emit(call);
    assert!(e.flush(Duration::from_secs(10)).await);
    let got = tokio::time::timeout(Duration::from_secs(10), next.calls.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.ids, sent.ids, "same trace and span ids");
    assert_eq!(got.write, sent.write);
    c.shutdown().await;

    // The next hop is down: metrics go on, failures are counted.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let c = start_with(|config| config.forward = Some(format!("http://{dead}"))).await;
    let e = emitter(&c);
    e.emit(ToolCall::new("get_task", "erin"));
    assert!(e.flush(Duration::from_secs(10)).await);
    wait_for(
        &c,
        r#"mcp_tool_calls_total{tool_name="get_task",user="erin",status="success",error_code=""}"#,
        1.0,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = get(format!("http://{}/metrics", c.metrics_addr)).await;
        if sample(&text, "mcp_otel_forward_failures_total").unwrap_or(0.0) >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "forward failures not counted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.shutdown().await;
}

/// Short windows so a test sees alerts fire and resolve in seconds.
fn quick_alerts() -> AlertConfig {
    let w = Duration::from_secs(2);
    AlertConfig {
        error_rate: RateRule {
            threshold: 0.10,
            window: w,
            min_calls: 1,
        },
        tool_call_loop: CountRule {
            threshold: 100,
            window: w,
        },
        write_spike: CountRule {
            threshold: 20,
            window: w,
        },
        rate_limited: CountRule {
            threshold: 0,
            window: w,
        },
        auth_failures: CountRule {
            threshold: 3,
            window: w,
        },
        resolution: Duration::from_millis(50),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_alert_fires_on_a_burst_and_resolves_after() {
    // A webhook that records what Alertmanager would receive.
    let posts: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = posts.clone();
    let app = axum::Router::new().route(
        "/api/v2/alerts",
        post(move |axum::Json(v): axum::Json<Value>| {
            let sink = sink.clone();
            async move {
                sink.lock()
                    .unwrap()
                    .extend(v.as_array().cloned().unwrap_or_default());
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let config = CollectConfig {
        alert_webhook: Some(hook),
        alerts: quick_alerts(),
        ..CollectConfig::ephemeral()
    };
    let c = start(&config, None).await.unwrap();
    // Exports happen only on flush: each phase below reaches collect as one export.
    let e = support::otlp_emitter(c.grpc_addr, Duration::from_secs(600));
    let call = |tool: &str, user: &str, code: Option<&str>| {
        let mut c = ToolCall::new(tool, user);
        if let Some(code) = code {
            c.status = Status::Error;
            c.error_code = Some(code.into());
        }
        c
    };
    // Below every threshold: 100 calls by one user, 20 writes, 3 auth failures, and
    // 10 errors out of 103 calls (under 10 %). The errors come first: the evaluator checks a
    // whole export before firing, so a batch that starts with errors does not fire on its own
    // (the flush below sends everything as one export).
    for i in 0..100 {
        let mut c = call("get_task", "calm", (i < 7).then_some("500"));
        if i < 20 {
            c.write = Some(WriteOp::new(OperationType::Update));
        }
        e.emit(c);
    }
    for _ in 0..3 {
        e.emit(call("get_task", "almost", Some("401")));
    }
    assert!(e.flush(Duration::from_secs(10)).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, body) = get(format!("http://{}/api/alerts", c.metrics_addr)).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["alerts"], json!([]), "nothing is over its threshold yet");

    // Over every threshold.
    for _ in 0..101 {
        e.emit(call("get_task", "looper", None));
    }
    for _ in 0..21 {
        let mut c = call("delete_task", "writer", None);
        c.write = Some(WriteOp::new(OperationType::Delete));
        e.emit(c);
    }
    e.emit(call("search", "carol", Some("429")));
    for _ in 0..4 {
        e.emit(call("get_task", "intruder", Some("403")));
    }
    for _ in 0..30 {
        let mut c = call("get_task", "flaky", None);
        c.status = Status::Timeout;
        e.emit(c);
    }
    assert!(e.flush(Duration::from_secs(10)).await);
    let want = [
        "McpAuthFailures",
        "McpErrorRateHigh",
        "McpRateLimited",
        "McpToolCallLoop",
        "McpWriteSpike",
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    let firing = loop {
        let (_, body) = get(format!("http://{}/api/alerts", c.metrics_addr)).await;
        let v: Value = serde_json::from_str(&body).unwrap();
        let mut names = support::texts_at(&v["alerts"], "/labels/alertname");
        names.sort();
        names.dedup();
        if names == want || Instant::now() > deadline {
            assert_eq!(names, want, "{body}");
            break v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let alerts = firing["alerts"].as_array().unwrap();
    let by = |name: &str| {
        alerts
            .iter()
            .find(|a| a["labels"]["alertname"] == name)
            .unwrap()
    };
    assert_eq!(by("McpToolCallLoop")["labels"]["user"], "looper");
    assert!(
        by("McpToolCallLoop")["summary"]
            .as_str()
            .unwrap()
            .contains("looper made 101")
    );
    assert_eq!(by("McpAuthFailures")["labels"]["user"], "intruder");
    assert_eq!(by("McpRateLimited")["labels"]["tool_name"], "search");
    assert_eq!(by("McpWriteSpike")["labels"]["severity"], "critical");
    assert!(
        !alerts
            .iter()
            .any(|a| a["labels"]["user"] == "calm" || a["labels"]["user"] == "almost"),
        "below-threshold users must not alert: {firing}"
    );
    let (_, text) = get(format!("http://{}/metrics", c.metrics_addr)).await;
    assert_eq!(
        sample(&text, r#"mcp_alerts_firing{alertname="McpToolCallLoop"}"#),
        Some(1.0)
    );

    // The windows pass: everything resolves, once.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = get(format!("http://{}/api/alerts", c.metrics_addr)).await;
        if body == r#"{"alerts":[]}"# {
            break;
        }
        assert!(Instant::now() < deadline, "alerts did not resolve: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let posts = posts.lock().unwrap().clone();
    for name in want {
        let of = |resolved: bool| {
            posts
                .iter()
                .filter(|p| {
                    p["labels"]["alertname"] == name && p.get("endsAt").is_some() == resolved
                })
                .count()
        };
        assert_eq!(of(false), 1, "{name} fired once on the webhook: {posts:#?}");
        assert_eq!(of(true), 1, "{name} resolved once on the webhook");
    }
    let (_, text) = get(format!("http://{}/metrics", c.metrics_addr)).await;
    assert_eq!(
        sample(&text, r#"mcp_alerts_firing{alertname="McpToolCallLoop"}"#),
        Some(0.0)
    );
    c.shutdown().await;
}
