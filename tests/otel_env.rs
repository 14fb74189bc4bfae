//! The standard `OTEL_*` variables configure a real instrumented server process: endpoint
//! precedence (signal-specific over generic), headers, service name, resource attributes and
//! batching; a bad `OTEL_BSP_*` value is named at start-up. `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`
//! picks gRPC, HTTP/protobuf or HTTP/JSON for the library (rmcp wrapper) and the proxy alike,
//! end to end into `mcp-otel collect`; an endpoint that speaks another protocol, or none, is
//! reported once on stderr and in the proxy's exit summary.

mod support;

use mcp_otel::collect::{CollectConfig, RunningCollector, start};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::TokioChildProcess;
use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// What one export carried: its gRPC metadata, resource attributes and span names.
#[derive(Debug)]
struct Export {
    metadata: HashMap<String, String>,
    resource: HashMap<String, String>,
    spans: Vec<(String, HashMap<String, String>)>,
}

fn strings(kvs: &[opentelemetry_proto::tonic::common::v1::KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Any::StringValue(s) => Some((kv.key.clone(), s.clone())),
            _ => None,
        })
        .collect()
}

impl From<support::RawExport> for Export {
    /// The first resource of the export, with every span in it.
    fn from(raw: support::RawExport) -> Export {
        let rs = raw.request.resource_spans.into_iter().next().unwrap();
        Export {
            metadata: raw.metadata,
            resource: strings(&rs.resource.map(|r| r.attributes).unwrap_or_default()),
            spans: rs
                .scope_spans
                .into_iter()
                .flat_map(|s| s.spans)
                .map(|s| (s.name, strings(&s.attributes)))
                .collect(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_otel_variables_configure_the_exporter() {
    let (addr, mut rx) = support::raw_trace_receiver().await;

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

    let export: Export = tokio::time::timeout(Duration::from_secs(15), rx.recv())
        .await
        .expect("the span arrived at the signal-specific endpoint")
        .unwrap()
        .into();
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
    let err = support::start_up_error(
        std::process::Command::new(support::example_bin("tasks_server"))
            .env("OTEL_BSP_MAX_QUEUE_SIZE", "lots")
            .env("OTEL_BSP_EXPORT_TIMEOUT", "-5"),
    );
    assert!(
        err.contains("`OTEL_BSP_MAX_QUEUE_SIZE` must be a positive whole number, got \"lots\""),
        "{err}"
    );
    assert!(
        err.contains("`OTEL_BSP_EXPORT_TIMEOUT`"),
        "both problems are named: {err}"
    );
}

const PROXY: &str = env!("CARGO_BIN_EXE_mcp-otel");

/// Starts `cmd` as an MCP server, calls `tool` `calls` times, closes the client, and returns
/// what the server process printed on stderr (to its end).
async fn call_through(
    cmd: tokio::process::Command,
    tool: &str,
    args: serde_json::Value,
    calls: usize,
) -> String {
    let (transport, stderr) = TokioChildProcess::builder(cmd)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = stderr.expect("stderr is piped");
    let client = ().serve(transport).await.unwrap();
    for _ in 0..calls {
        let params = CallToolRequestParams::new(tool.to_owned())
            .with_arguments(args.as_object().unwrap().clone());
        client.call_tool(params).await.unwrap();
    }
    client.cancel().await.unwrap();
    let mut err = String::new();
    tokio::time::timeout(Duration::from_secs(20), stderr.read_to_string(&mut err))
        .await
        .expect("the server's stderr ends")
        .unwrap();
    err
}

/// `mcp-otel proxy --user USER echo_server`, with `env`.
fn proxy_cmd(user: &str, env: &[(&str, String)]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(PROXY);
    cmd.args(["proxy", "--log", "none", "--user", user])
        .arg(support::example_bin("echo_server"))
        .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .env("OTEL_BSP_SCHEDULE_DELAY", "50");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

async fn calls_counted(c: &RunningCollector, tool: &str, user: &str) -> Option<f64> {
    let url = format!("http://{}/metrics", c.metrics_addr);
    let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
    let series = format!(
        r#"mcp_tool_calls_total{{tool_name="{tool}",user="{user}",status="success",error_code=""}}"#
    );
    text.lines()
        .find(|l| l.starts_with(&series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Polls collect's `/metrics` until `user`'s calls of `tool` reach `want` (bounded).
async fn wait_counted(c: &RunningCollector, tool: &str, user: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while calls_counted(c, tool, user).await != Some(want) {
        assert!(
            Instant::now() < deadline,
            "{user}'s {tool} calls: {:?}, want {want}",
            calls_counted(c, tool, user).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_http_protobuf_and_json_reach_collect_from_the_library_and_the_proxy() {
    let c = start(&CollectConfig::ephemeral(), None).await.unwrap();
    let base = format!("http://{}", c.http_addr);
    // The library (through the rmcp wrapper): HTTP/protobuf, the generic endpoint as a base.
    for (protocol, user) in [("http/protobuf", "lib-proto"), ("http/json", "lib-json")] {
        let mut cmd = tokio::process::Command::new(support::example_bin("tasks_server"));
        cmd.env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &base)
            .env("OTEL_BSP_SCHEDULE_DELAY", "50")
            .env("MCP_OTEL_USER", user)
            .env("MCP_OTEL_LOG", "none");
        let err = call_through(cmd, "get_task", serde_json::json!({"id": "t1"}), 1).await;
        wait_counted(&c, "get_task", user, 1.0).await;
        assert!(!err.contains("span export failed"), "{err}");
    }
    // The proxy: the signal-specific protocol wins over the generic one.
    for (protocol, user) in [
        ("http/json", "proxy-json"),
        ("http/protobuf", "proxy-proto"),
    ] {
        let cmd = proxy_cmd(
            user,
            &[
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", protocol.to_owned()),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", base.clone()),
            ],
        );
        let err = call_through(cmd, "echo", serde_json::json!({"message": "m"}), 2).await;
        wait_counted(&c, "echo", user, 2.0).await;
        assert!(
            err.contains("spans: 2 exported, 0 failed, 0 dropped"),
            "{protocol}: {err}"
        );
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_speaks_another_protocol_is_reported_once() {
    let c = start(&CollectConfig::ephemeral(), None).await.unwrap();
    let refused = format!("http://127.0.0.1:{}", support::closed_port());
    for (protocol, endpoint, target) in [
        // gRPC into the OTLP/HTTP listener (the issue's case: :4318 with the default protocol).
        (
            "grpc",
            format!("http://{}", c.http_addr),
            format!("OTLP grpc to http://{}", c.http_addr),
        ),
        // OTLP/HTTP into the gRPC listener.
        (
            "http/protobuf",
            format!("http://{}", c.grpc_addr),
            format!("OTLP http/protobuf to http://{}/v1/traces", c.grpc_addr),
        ),
        // Nothing listening.
        ("grpc", refused.clone(), format!("OTLP grpc to {refused}")),
    ] {
        let cmd = proxy_cmd(
            "misdirected",
            &[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.to_owned()),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ],
        );
        let err = call_through(cmd, "echo", serde_json::json!({"message": "m"}), 3).await;
        let reports: Vec<&str> = err
            .lines()
            .filter(|l| l.contains("span export failed"))
            .collect();
        assert_eq!(reports.len(), 1, "once, not per call: {err}");
        assert!(reports[0].contains(&format!("({target})")), "{err}");
        let summary = err
            .lines()
            .find(|l| l.contains("tool calls recorded"))
            .unwrap_or_else(|| panic!("no summary: {err}"));
        assert!(
            summary.contains("spans: 0 exported, 3 failed, 0 dropped (last export error: "),
            "{summary}"
        );
    }
    assert_eq!(calls_counted(&c, "echo", "misdirected").await, None);
    c.shutdown().await;
}

#[test]
fn an_unknown_protocol_is_named_at_start_up() {
    let out = std::process::Command::new(PROXY)
        .args(["proxy", "cat"])
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "`OTEL_EXPORTER_OTLP_PROTOCOL` must be grpc, http/protobuf or http/json, got \"http\""
        ),
        "{err}"
    );
}
