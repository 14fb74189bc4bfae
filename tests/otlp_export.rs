//! Spans leave through the real opentelemetry-otlp exporter over gRPC and arrive at an
//! in-process tonic `TraceService` on 127.0.0.1:0 with the official attribute names; a dead
//! collector neither slows nor fails the calls.

use mcp_otel::capture::{Instrumentation, Outcome};
use mcp_otel::collect::testing;
use mcp_otel::emit::{BatchConfig, EmitConfig, Emitter, SpanTarget};
use mcp_otel::record::{OperationType, Status, WriteOp};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// A receiver that keeps raw spans and their resource attributes.
struct RawSpans(mpsc::UnboundedSender<(Span, HashMap<String, Any>)>);

#[tonic::async_trait]
impl TraceService for RawSpans {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for rs in req.into_inner().resource_spans {
            let resource = attrs(&rs.resource.map(|r| r.attributes).unwrap_or_default());
            for ss in rs.scope_spans {
                for span in ss.spans {
                    let _ = self.0.send((span, resource.clone()));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn attrs(kvs: &[opentelemetry_proto::tonic::common::v1::KeyValue]) -> HashMap<String, Any> {
    kvs.iter()
        .filter_map(|kv| Some((kv.key.clone(), kv.value.clone()?.value?)))
        .collect()
}

async fn raw_receiver() -> (
    SocketAddr,
    mpsc::UnboundedReceiver<(Span, HashMap<String, Any>)>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let svc = TraceServiceServer::new(RawSpans(tx))
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
    let incoming = futures::stream::unfold(listener, |l| async move {
        Some((l.accept().await.map(|(s, _)| s), l))
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(incoming),
    );
    (addr, rx)
}

fn fast_batches() -> BatchConfig {
    BatchConfig {
        scheduled_delay: Duration::from_millis(50),
        ..BatchConfig::default()
    }
}

fn s(v: &Any) -> &str {
    match v {
        Any::StringValue(s) => s,
        other => panic!("not a string: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_arrive_over_grpc_with_official_names() {
    let (addr, mut rx) = raw_receiver().await;
    let config = EmitConfig {
        spans: SpanTarget::Otlp {
            endpoint: Some(format!("http://{addr}")),
        },
        batch: Some(fast_batches()),
        default_service_name: Some("tasks-test".into()),
        ..EmitConfig::default()
    };
    let inst = Instrumentation::new(Emitter::new(&config).unwrap());

    let mut call = inst.start_call("update_task", "alice");
    call.set_meta(
        json!({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"})
            .as_object(),
    );
    call.set_context(json!({"project_id": "p1", "password": "hunter2"}));
    call.set_request_id("7");
    call.set_write(
        WriteOp::new(OperationType::Update)
            .resource_id("t1")
            .before(json!({"status": "open"}))
            .after(json!({"status": "done"}))
            .confirmed(Some(true)),
    );
    call.finish(Outcome::Success);
    let mut failing = inst.start_call("get_task", "bob");
    failing.set_request_id("8");
    failing.finish(Outcome::Error("-32603".into()));
    assert!(inst.flush(Duration::from_secs(10)).await, "flush timed out");

    let mut spans = HashMap::new();
    for _ in 0..2 {
        let (span, resource) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("span did not arrive")
            .unwrap();
        assert_eq!(s(&resource["service.name"]), "tasks-test");
        spans.insert(span.name.clone(), span);
    }
    let update = &spans["tools/call update_task"];
    let a = attrs(&update.attributes);
    assert_eq!(update.kind, 2, "SERVER");
    assert_eq!(s(&a["mcp.method.name"]), "tools/call");
    assert_eq!(s(&a["gen_ai.tool.name"]), "update_task");
    assert_eq!(s(&a["gen_ai.operation.name"]), "execute_tool");
    assert_eq!(s(&a["enduser.id"]), "alice");
    assert_eq!(s(&a["jsonrpc.request.id"]), "7");
    assert_eq!(s(&a["mcp_otel.status"]), "success");
    assert_eq!(s(&a["mcp_otel.operation_type"]), "update");
    assert_eq!(s(&a["mcp_otel.resource_id"]), "t1");
    assert_eq!(s(&a["mcp_otel.before_state"]), r#"{"status":"open"}"#);
    assert_eq!(s(&a["mcp_otel.after_state"]), r#"{"status":"done"}"#);
    assert_eq!(a["mcp_otel.user_confirmation"], Any::BoolValue(true));
    let ctx: serde_json::Value = serde_json::from_str(s(&a["mcp_otel.context"])).unwrap();
    assert_eq!(ctx, json!({"project_id": "p1", "password": "[REDACTED]"}));
    assert_eq!(hex(&update.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(hex(&update.parent_span_id), "00f067aa0ba902b7");

    let get = &spans["tools/call get_task"];
    let a = attrs(&get.attributes);
    assert_eq!(s(&a["error.type"]), "-32603");
    assert_eq!(s(&a["rpc.response.status_code"]), "-32603");
    assert_eq!(get.status.as_ref().unwrap().code, 2, "ERROR");
    assert!(
        !a.contains_key("mcp_otel.operation_type"),
        "a read has no write fields"
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_project_receiver_decodes_what_the_exporter_sends() {
    let mut rx = testing::serve("127.0.0.1:0".parse().unwrap(), 16)
        .await
        .unwrap();
    let config = EmitConfig {
        spans: SpanTarget::Otlp {
            endpoint: Some(rx.endpoint()),
        },
        batch: Some(fast_batches()),
        ..EmitConfig::default()
    };
    let inst = Instrumentation::new(Emitter::new(&config).unwrap());
    let mut c = inst.start_call("delete_task", "carol");
    c.set_write(WriteOp::new(OperationType::Delete).resource_id("t9"));
    c.finish(Outcome::ToolError);
    assert!(inst.flush(Duration::from_secs(10)).await);
    let call = tokio::time::timeout(Duration::from_secs(10), rx.calls.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(call.tool_name, "delete_task");
    assert_eq!(call.user, "carol");
    assert_eq!(call.status, Status::Error);
    assert_eq!(call.error_code.as_deref(), Some("tool_error"));
    let w = call.write.unwrap();
    assert_eq!(w.operation_type, Some(OperationType::Delete));
    assert_eq!(w.user_confirmation, None, "unknown stays unknown");
}

/// A collector that accepts connections and never answers: every export hangs until timeout.
async fn black_hole() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_neither_blocks_nor_fails_calls() {
    let export_timeout = Duration::from_secs(3);
    for endpoint in [
        // Nothing listens: connection refused.
        format!("http://{}", {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        }),
        // Accepts and hangs.
        format!("http://{}", black_hole().await),
    ] {
        let config = EmitConfig {
            spans: SpanTarget::Otlp {
                endpoint: Some(endpoint.clone()),
            },
            batch: Some(BatchConfig {
                max_queue_size: 100,
                max_export_batch_size: 50,
                scheduled_delay: Duration::from_millis(1),
                export_timeout,
            }),
            ..EmitConfig::default()
        };
        let inst = Instrumentation::new(Emitter::new(&config).unwrap());
        let started = Instant::now();
        let mut slowest = Duration::ZERO;
        for i in 0..1000 {
            let t = Instant::now();
            let mut c = inst.start_call("get_task", "alice");
            c.set_context(json!({"i": i}));
            c.finish(Outcome::Success);
            slowest = slowest.max(t.elapsed());
        }
        let total = started.elapsed();
        // No call waited for an export: all 1,000 were done before one export could time out.
        assert!(
            total < export_timeout,
            "{endpoint}: 1,000 calls took {total:?}"
        );
        let stats = inst.stats();
        assert_eq!(
            stats.enqueued + stats.dropped,
            1000,
            "{endpoint}: {stats:?}"
        );
        assert!(
            stats.dropped > 0,
            "{endpoint}: a full queue must drop and count: {stats:?}"
        );
        assert_eq!(stats.exported, 0, "{endpoint}: {stats:?}");
        eprintln!("{endpoint}: 1,000 calls in {total:?}, slowest {slowest:?}, {stats:?}");
    }
}
