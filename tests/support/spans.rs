//! Spans of one call as the instrumentations that record it send them, for the exactly-once
//! tests of `collect` (`collect_exactly_once.rs` in-process, `collect_pg.rs` against
//! PostgreSQL): our proxy's record, the MCP Python SDK server's own SERVER span.

use super::string_kv as kv;
use mcp_otel::emit::{SpanOptions, to_span};
use mcp_otel::record::{ToolCall, TraceIds};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

/// Our proxy's record of a call: user, write state, request id.
pub fn ours(tool: &str, user: &str, ids: TraceIds, request_id: &str) -> ToolCall {
    let mut c = ToolCall::new(tool, user);
    c.ids = ids;
    c.duration_ms = 30.0;
    c.mcp.request_id = Some(request_id.to_owned());
    c
}

/// The MCP Python SDK 2.x server's own span of the same call: official names only, inside ours
/// in time.
pub fn server_span(of: &ToolCall, ids: TraceIds) -> Span {
    let start = of.timestamp.timestamp_nanos_opt().unwrap() as u64 + 2_000_000;
    Span {
        name: format!("tools/call {}", of.tool_name),
        kind: SpanKind::Server as i32,
        trace_id: ids.trace_id.to_vec(),
        span_id: ids.span_id.to_vec(),
        parent_span_id: if ids.has_parent() {
            ids.parent_span_id.to_vec()
        } else {
            Vec::new()
        },
        start_time_unix_nano: start,
        end_time_unix_nano: start + 20_000_000,
        attributes: vec![
            kv("mcp.method.name", "tools/call"),
            kv("mcp.protocol.version", "2025-11-25"),
            kv("jsonrpc.request.id", of.mcp.request_id.as_deref().unwrap()),
            kv("gen_ai.operation.name", "execute_tool"),
            kv("gen_ai.tool.name", &of.tool_name),
        ],
        ..Default::default()
    }
}

/// Trace ids with every byte the same: trace `trace`, span `span`, parent `parent` (0: none).
pub fn ids(trace: u8, span: u8, parent: u8) -> TraceIds {
    TraceIds {
        trace_id: [trace; 16],
        span_id: [span; 8],
        parent_span_id: [parent; 8],
    }
}

/// Our record as our exporter sends it.
pub fn ours_span(call: &ToolCall) -> Span {
    to_span(call, &SpanOptions::default()).into()
}
