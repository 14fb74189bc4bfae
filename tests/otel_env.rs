//! The standard `OTEL_*` variables configure a real instrumented server process: endpoint
//! precedence (signal-specific over generic), headers, service name, resource attributes and
//! batching; a bad `OTEL_BSP_*` value is named at start-up.

mod support;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::TokioChildProcess;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc;

/// What one export carried: its gRPC metadata, resource attributes and span names.
#[derive(Debug)]
struct Export {
    metadata: HashMap<String, String>,
    resource: HashMap<String, String>,
    spans: Vec<(String, HashMap<String, String>)>,
}

struct Capture(mpsc::UnboundedSender<Export>);

fn strings(kvs: &[opentelemetry_proto::tonic::common::v1::KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Any::StringValue(s) => Some((kv.key.clone(), s.clone())),
            _ => None,
        })
        .collect()
}

#[tonic::async_trait]
impl TraceService for Capture {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let metadata: HashMap<String, String> = req
            .metadata()
            .iter()
            .filter_map(|kv| match kv {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                    Some((k.to_string(), v.to_str().ok()?.to_owned()))
                }
                _ => None,
            })
            .collect();
        for rs in req.into_inner().resource_spans {
            let resource = strings(&rs.resource.map(|r| r.attributes).unwrap_or_default());
            let spans = rs
                .scope_spans
                .into_iter()
                .flat_map(|s| s.spans)
                .map(|s| (s.name, strings(&s.attributes)))
                .collect();
            let _ = self.0.send(Export {
                metadata: metadata.clone(),
                resource,
                spans,
            });
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_otel_variables_configure_the_exporter() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let incoming = futures::stream::unfold(listener, |l| async move {
        Some((l.accept().await.map(|(s, _)| s), l))
    });
    let svc = TraceServiceServer::new(Capture(tx))
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(incoming),
    );

    let dir = support::tempdir();
    let mut cmd = tokio::process::Command::new(support::example_bin("tasks_server"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        // Signal-specific wins over generic: the generic one points at nothing.
        .env(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            format!("http://{addr}"),
        )
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", support::closed_port()),
        )
        .env(
            "OTEL_EXPORTER_OTLP_HEADERS",
            "x-tenant=acme,x-team=payments",
        )
        .env("OTEL_SERVICE_NAME", "billing-mcp")
        .env(
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=test,service.version=9.9",
        )
        .env("OTEL_BSP_SCHEDULE_DELAY", "50")
        .env("MCP_OTEL_USER", "svc-billing")
        .env("MCP_OTEL_LOG", dir.path().join("calls.jsonl"));
    let client = ().serve(TokioChildProcess::new(cmd).unwrap()).await.unwrap();
    let args = serde_json::json!({"id": "t1"}).as_object().unwrap().clone();
    client
        .call_tool(CallToolRequestParams::new("get_task").with_arguments(args))
        .await
        .unwrap();
    client.cancel().await.unwrap();

    let export = tokio::time::timeout(Duration::from_secs(15), rx.recv())
        .await
        .expect("the span arrived at the signal-specific endpoint")
        .unwrap();
    assert_eq!(
        export.metadata.get("x-tenant").map(String::as_str),
        Some("acme"),
        "{export:?}"
    );
    assert_eq!(
        export.metadata.get("x-team").map(String::as_str),
        Some("payments")
    );
    assert_eq!(export.resource["service.name"], "billing-mcp");
    assert_eq!(export.resource["deployment.environment"], "test");
    assert_eq!(export.resource["service.version"], "9.9");
    let (name, attrs) = &export.spans[0];
    assert_eq!(name, "tools/call get_task");
    assert_eq!(attrs["enduser.id"], "svc-billing");
    let log = std::fs::read_to_string(dir.path().join("calls.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 1, "{log}");
}

#[test]
fn a_bad_bsp_value_is_named_at_start_up() {
    let out = std::process::Command::new(support::example_bin("tasks_server"))
        .env("OTEL_BSP_MAX_QUEUE_SIZE", "lots")
        .env("OTEL_BSP_EXPORT_TIMEOUT", "-5")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`OTEL_BSP_MAX_QUEUE_SIZE` must be a positive whole number, got \"lots\""),
        "{err}"
    );
    assert!(
        err.contains("`OTEL_BSP_EXPORT_TIMEOUT`"),
        "both problems are named: {err}"
    );
}
