//! ToolCall → OpenTelemetry span (`SpanData`), attributes and status per `docs/semconv.md`.

use crate::record::ToolCall;
use crate::semconv::{self as sc, map_error};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status as SpanStatus, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What goes on a span besides the always-on attributes.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanOptions {
    /// SERVER on the side that handles the call (library, proxy), CLIENT on the sender's side.
    pub kind: SpanKind,
    /// Opt-in: also record the arguments as `gen_ai.tool.call.arguments`.
    pub record_arguments: bool,
    /// Opt-in: record the tool result as `gen_ai.tool.call.result`.
    pub record_result: bool,
}

impl Default for SpanOptions {
    fn default() -> Self {
        SpanOptions {
            kind: SpanKind::Server,
            record_arguments: false,
            record_result: false,
        }
    }
}

/// The instrumentation scope of every span of ours.
pub(super) static SCOPE: LazyLock<InstrumentationScope> = LazyLock::new(|| {
    InstrumentationScope::builder(sc::SCOPE_NAME)
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
});

pub(super) fn system_time(call: &ToolCall) -> (SystemTime, SystemTime) {
    let nanos = call.timestamp.timestamp_nanos_opt().unwrap_or(0).max(0) as u64;
    let start = UNIX_EPOCH + Duration::from_nanos(nanos);
    // A duration no clock can have (1e289 ms, from a decoded span or a caller's own record)
    // ends the span where it starts; the attribute keeps the value as given.
    let end = Duration::try_from_secs_f64(call.duration_ms.max(0.0) / 1000.0)
        .ok()
        .and_then(|d| start.checked_add(d))
        .unwrap_or(start);
    (start, end)
}

/// Builds the span for a call. Redaction must already have been applied.
pub fn to_span(call: &ToolCall, opts: &SpanOptions) -> SpanData {
    into_span(call.clone(), opts)
}

/// [`to_span`] that moves the call's strings into the attributes instead of copying them.
pub fn into_span(call: ToolCall, opts: &SpanOptions) -> SpanData {
    let name = call.span_name();
    let (start_time, end_time) = system_time(&call);
    let mapping = map_error(call.status, call.error_code.as_deref());
    let ToolCall {
        tool_name,
        user,
        status,
        duration_ms,
        error_code,
        context,
        write,
        mcp,
        ids,
        ..
    } = call;
    let mut attrs = Vec::with_capacity(24);
    attrs.push(KeyValue::new(sc::MCP_METHOD_NAME, mcp.method));
    attrs.push(KeyValue::new(sc::GEN_AI_TOOL_NAME, tool_name));
    attrs.push(KeyValue::new(
        sc::GEN_AI_OPERATION_NAME,
        sc::GEN_AI_OPERATION_EXECUTE_TOOL,
    ));
    attrs.push(KeyValue::new(sc::ENDUSER_ID, user));
    attrs.push(KeyValue::new(sc::STATUS, status.as_str()));
    attrs.push(KeyValue::new(sc::DURATION_MS, duration_ms));
    let optional = [
        (sc::JSONRPC_REQUEST_ID, mcp.request_id),
        (sc::MCP_PROTOCOL_VERSION, mcp.protocol_version),
        (sc::MCP_SESSION_ID, mcp.session_id),
        (sc::CLIENT_ADDRESS, mcp.client_address),
        (sc::CLIENT_NAME, mcp.client_name),
        (sc::CLIENT_VERSION, mcp.client_version),
        (sc::TASK_ID, mcp.task_id),
        (sc::ERROR_CODE, error_code),
    ];
    for (key, value) in optional {
        if let Some(v) = value {
            attrs.push(KeyValue::new(key, v));
        }
    }
    if let Some(t) = mcp.transport {
        attrs.push(KeyValue::new(sc::NETWORK_TRANSPORT, t.network_transport()));
    }
    if let Some(t) = &mapping.error_type {
        attrs.push(KeyValue::new(sc::ERROR_TYPE, t.clone()));
    }
    if let Some(c) = mapping.rpc_status_code {
        attrs.push(KeyValue::new(sc::RPC_RESPONSE_STATUS_CODE, c));
    }
    if let Some(ctx) = &context {
        let text = ctx.to_string();
        if opts.record_arguments {
            attrs.push(KeyValue::new(sc::GEN_AI_TOOL_CALL_ARGUMENTS, text.clone()));
        }
        attrs.push(KeyValue::new(sc::CONTEXT, text));
    }
    if opts.record_result
        && let Some(result) = &call.result
    {
        attrs.push(KeyValue::new(
            sc::GEN_AI_TOOL_CALL_RESULT,
            result.to_string(),
        ));
    }
    if let Some(w) = write {
        if let Some(op) = w.operation_type {
            attrs.push(KeyValue::new(sc::OPERATION_TYPE, op.as_str()));
        }
        if let Some(id) = w.resource_id {
            attrs.push(KeyValue::new(sc::RESOURCE_ID, id));
        }
        if let Some(s) = &w.before_state {
            attrs.push(KeyValue::new(sc::BEFORE_STATE, s.to_string()));
        }
        if let Some(s) = &w.after_state {
            attrs.push(KeyValue::new(sc::AFTER_STATE, s.to_string()));
        }
        if let Some(c) = w.user_confirmation {
            attrs.push(KeyValue::new(sc::USER_CONFIRMATION, c));
        }
    }
    if let Some(v) = call.read_only_hint {
        attrs.push(KeyValue::new(sc::TOOL_READ_ONLY, v));
    }
    if let Some(v) = call.destructive_hint {
        attrs.push(KeyValue::new(sc::TOOL_DESTRUCTIVE, v));
    }
    if let Some(c) = call.confirmation {
        attrs.push(KeyValue::new(sc::CONFIRMATION_OUTCOME, c.outcome.as_str()));
        if let Some(s) = c.source {
            attrs.push(KeyValue::new(sc::CONFIRMATION_SOURCE, s.as_str()));
        }
        if let Some(d) = c.arguments_digest {
            attrs.push(KeyValue::new(sc::CONFIRMATION_ARGUMENTS_DIGEST, d));
        }
        if let Some(ms) = c.wait_ms {
            attrs.push(KeyValue::new(sc::CONFIRMATION_WAIT_MS, ms));
        }
    }

    let status = if mapping.is_span_error {
        SpanStatus::error(mapping.error_type.unwrap_or_default())
    } else {
        SpanStatus::Unset
    };
    SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(ids.trace_id),
            SpanId::from_bytes(ids.span_id),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        ),
        parent_span_id: SpanId::from_bytes(ids.parent_span_id),
        parent_span_is_remote: ids.has_parent(),
        span_kind: opts.kind.clone(),
        name: name.into(),
        start_time,
        end_time,
        attributes: attrs,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: SCOPE.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Status;

    fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a opentelemetry::Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }

    #[test]
    fn span_carries_official_names_and_times() {
        let mut call = ToolCall::new("create_task", "alice");
        call.duration_ms = 12.5;
        call.status = Status::Error;
        call.error_code = Some("tool_error".into());
        let span = to_span(&call, &SpanOptions::default());
        assert_eq!(span.name, "tools/call create_task");
        assert_eq!(span.span_kind, SpanKind::Server);
        assert_eq!(
            attr(&span, "gen_ai.tool.name").unwrap().as_str(),
            "create_task"
        );
        assert_eq!(
            attr(&span, "mcp.method.name").unwrap().as_str(),
            "tools/call"
        );
        assert_eq!(attr(&span, "enduser.id").unwrap().as_str(), "alice");
        assert_eq!(attr(&span, "error.type").unwrap().as_str(), "tool_error");
        assert!(matches!(span.status, SpanStatus::Error { .. }));
        let d = span.end_time.duration_since(span.start_time).unwrap();
        assert_eq!(d, Duration::from_micros(12_500));
    }
}
