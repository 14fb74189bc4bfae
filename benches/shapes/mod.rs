//! The spans the ingest harnesses send: the harness's own tool-call span ([`span`],
//! [`mixed_batch`]) and a span as `mcp-otel`'s exporter sends an MCP tool call ([`mcp_batch`]).
// Each harness uses its part.
#![allow(dead_code)]

use super::support;
use super::support::string_kv as kv;
use mcp_otel::emit::{SpanOptions, to_span};
use mcp_otel::record::{McpInfo, OperationType, Status, ToolCall, TraceIds, Transport, WriteOp};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use std::time::{SystemTime, UNIX_EPOCH};

/// Spans per export.
pub const BATCH: usize = 512;

pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// One MCP tool-call span as the harness has always built it: the official names plus
/// `mcp_otel.status`, 7 to 9 short attributes, no arguments.
pub fn span(i: u64, user: &str, tool: &str, status: &str, code: Option<&str>) -> Span {
    let t = now_nanos();
    let mut attributes = vec![
        kv("mcp.method.name", "tools/call"),
        kv("gen_ai.tool.name", tool),
        kv("gen_ai.operation.name", "execute_tool"),
        kv("enduser.id", user),
        kv("mcp_otel.status", status),
        kv("jsonrpc.request.id", &i.to_string()),
        kv("network.transport", "pipe"),
    ];
    if let Some(c) = code {
        attributes.push(kv("mcp_otel.error_code", c));
    }
    if tool.starts_with("update") {
        attributes.push(kv("mcp_otel.operation_type", "update"));
        attributes.push(kv("mcp_otel.resource_id", "t1"));
    }
    let mut trace_id = [0u8; 16];
    trace_id[..8].copy_from_slice(&(i + 1).to_le_bytes());
    Span {
        trace_id: trace_id.to_vec(),
        span_id: (i + 1).to_le_bytes().to_vec(),
        name: format!("tools/call {tool}"),
        kind: 2,
        start_time_unix_nano: t,
        end_time_unix_nano: t + 2_000_000,
        attributes,
        ..Default::default()
    }
}

const TOOLS: [&str; 8] = [
    "list_tasks",
    "get_task",
    "search",
    "update_task",
    "read_file",
    "echo",
    "get_sum",
    "fetch",
];

/// A realistic mix in the harness's own shape ([`span`]): 50 users, 8 tools, 5 % errors,
/// 1 call in 8 a write. Export `seed` holds the calls `seed * BATCH ..`.
pub fn mixed_batch(seed: u64) -> ExportTraceServiceRequest {
    let spans = (0..BATCH as u64)
        .map(|i| {
            let n = seed * BATCH as u64 + i;
            let user = format!("user-{}", n % 50);
            let tool = TOOLS[(n % 8) as usize];
            if n.is_multiple_of(20) {
                span(n, &user, tool, "error", Some("tool_error"))
            } else {
                span(n, &user, tool, "success", None)
            }
        })
        .collect();
    support::export_request(spans)
}

/// Call `n` as `mcp-otel`'s exporter sends it (`emit::to_span`, the proxy's fields): random
/// ids, a parent, a ~100-byte `mcp_otel.context`, the request id, protocol version and
/// transport; 5 % errors (`tool_error`), 1 call in 8 an update with its resource and
/// confirmation. 9 to 11 attributes, about 450 bytes encoded.
pub fn mcp_span(n: u64) -> Span {
    let tool = TOOLS[(n % 8) as usize];
    let mut call = ToolCall::new(tool, format!("user-{}", n % 50));
    call.duration_ms = 1.0 + (n % 40) as f64 * 0.75;
    call.context = Some(serde_json::json!({
        "project_id": format!("proj-{}", n % 100),
        "task_id": format!("task-{n}"),
        "filters": {"status": "open", "limit": 20},
    }));
    call.mcp = McpInfo {
        method: "tools/call".to_owned(),
        request_id: Some((n % 100_000).to_string()),
        protocol_version: Some("2025-11-25".to_owned()),
        transport: Some(Transport::Stdio),
        ..McpInfo::default()
    };
    call.ids = TraceIds {
        trace_id: rand::random(),
        span_id: rand::random(),
        parent_span_id: rand::random(),
    };
    if n.is_multiple_of(20) {
        call.status = Status::Error;
        call.error_code = Some("tool_error".to_owned());
    }
    if tool == "update_task" {
        let mut w = WriteOp::new(OperationType::Update);
        w.resource_id = Some(format!("task-{n}"));
        w.user_confirmation = Some(!n.is_multiple_of(3));
        call.write = Some(w);
    }
    to_span(&call, &SpanOptions::default()).into()
}

/// Export `seed` of MCP-shaped spans ([`mcp_span`]).
pub fn mcp_batch(seed: u64) -> ExportTraceServiceRequest {
    let spans = (0..BATCH as u64)
        .map(|i| mcp_span(seed * BATCH as u64 + i))
        .collect();
    support::export_request(spans)
}

/// The resident set of process `pid`, in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmRSS:")
}

/// The anonymous part of a process's resident set, in MiB: its heap and stacks, without the
/// pages of its executable and libraries (which `VmRSS` counts too, and which are larger for
/// `mcp-otel`, one binary for every subcommand, than for a small receiver).
pub fn anon_mib(pid: u32) -> f64 {
    status_mib(pid, "RssAnon:")
}

/// A kB field of `/proc/PID/status`, in MiB.
fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kb / 1024.0
}
