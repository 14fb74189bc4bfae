//! Every span attribute key this project reads or writes, once.
//!
//! The official OpenTelemetry MCP semantic conventions (semantic-conventions-genai,
//! `docs/gen-ai/mcp.md`, status Development) are used verbatim for what they cover; what they
//! do not cover lives in the project namespace `mcp_otel.*`. `docs/semconv.md` maps each of the
//! seed's fields to its key.

use crate::record::Status;

// --- Official OpenTelemetry names -------------------------------------------------------------

/// `tools/call`, `initialize`, … (required on MCP spans).
pub const MCP_METHOD_NAME: &str = "mcp.method.name";
/// `mcp.protocol.version`: the MCP protocol version the call was made under (e.g. `2025-06-18`).
pub const MCP_PROTOCOL_VERSION: &str = "mcp.protocol.version";
/// Only for peers before the 2026-07-28 revision (stateless peers have no session).
pub const MCP_SESSION_ID: &str = "mcp.session.id";
/// `mcp.resource.uri`: the URI of the resource a `resources/*` request is about (defined by the
/// conventions; tool-call spans do not carry it).
pub const MCP_RESOURCE_URI: &str = "mcp.resource.uri";
/// `gen_ai.tool.name`: the tool's name as the client called it (`params.name` of `tools/call`).
pub const GEN_AI_TOOL_NAME: &str = "gen_ai.tool.name";
/// `gen_ai.operation.name`: what the GenAI operation was; [`GEN_AI_OPERATION_EXECUTE_TOOL`] on
/// tool-call spans.
pub const GEN_AI_OPERATION_NAME: &str = "gen_ai.operation.name";
/// Value of [`GEN_AI_OPERATION_NAME`] for tool calls.
pub const GEN_AI_OPERATION_EXECUTE_TOOL: &str = "execute_tool";
/// Opt-in: the tool's arguments as JSON.
pub const GEN_AI_TOOL_CALL_ARGUMENTS: &str = "gen_ai.tool.call.arguments";
/// Opt-in: the tool's result as JSON.
pub const GEN_AI_TOOL_CALL_RESULT: &str = "gen_ai.tool.call.result";
/// `jsonrpc.request.id`: the JSON-RPC request id, as text.
pub const JSONRPC_REQUEST_ID: &str = "jsonrpc.request.id";
/// `jsonrpc.protocol.version`: the JSON-RPC version (`2.0`), defined by the conventions.
pub const JSONRPC_PROTOCOL_VERSION: &str = "jsonrpc.protocol.version";
/// The JSON-RPC error code, as a string.
pub const RPC_RESPONSE_STATUS_CODE: &str = "rpc.response.status_code";
/// `error.type`: the class of error a failed call ended with (`tool_error`, `timeout`, a JSON-RPC
/// code or HTTP status); see [`map_error`].
pub const ERROR_TYPE: &str = "error.type";
/// `pipe` for stdio, `tcp` for HTTP.
pub const NETWORK_TRANSPORT: &str = "network.transport";
/// `network.protocol.name`: the application protocol under MCP (e.g. `http`), defined by the
/// conventions.
pub const NETWORK_PROTOCOL_NAME: &str = "network.protocol.name";
/// `network.protocol.version`: the version of [`NETWORK_PROTOCOL_NAME`] (e.g. `1.1`, `2`), defined
/// by the conventions.
pub const NETWORK_PROTOCOL_VERSION: &str = "network.protocol.version";
/// `client.address`: the address of the peer that sent the call (HTTP only).
pub const CLIENT_ADDRESS: &str = "client.address";
/// `enduser.id`: who made the call (API-key name, user id or client identifier; never a raw key).
pub const ENDUSER_ID: &str = "enduser.id";
/// Resource attribute.
pub const SERVICE_NAME: &str = "service.name";
/// Resource attribute: this process among the instances of one service (a random UUID unless
/// `OTEL_RESOURCE_ATTRIBUTES` sets it). Keys the exporter's cumulative counts below.
pub const SERVICE_INSTANCE_ID: &str = "service.instance.id";
/// Resource attribute, present once non-zero: spans this process's exporter lost to failed or
/// timed-out exports so far (cumulative, never reset while the process runs).
pub const EXPORTER_SPANS_FAILED: &str = "mcp_otel.exporter.spans_failed";
/// Resource attribute, present once non-zero: spans this process dropped before export (full
/// queue, stopped pipeline, the proxy's observer under a flood) so far (cumulative).
pub const EXPORTER_SPANS_DROPPED: &str = "mcp_otel.exporter.spans_dropped";

/// `error.type` for a tool result with `isError: true`.
pub const ERROR_TYPE_TOOL_ERROR: &str = crate::record::error_code::TOOL_ERROR;
/// `error.type` and `mcp_otel.error_code` for a call that got no answer in time.
pub const ERROR_TYPE_TIMEOUT: &str = crate::record::error_code::TIMEOUT;

/// Trace context keys inside `params._meta` (SEP-414, unprefixed).
pub const META_TRACEPARENT: &str = "traceparent";
/// W3C `tracestate` inside `params._meta`: vendor trace state that goes with `traceparent`.
pub const META_TRACESTATE: &str = "tracestate";
/// W3C `baggage` inside `params._meta`: key-value context propagated with the trace.
pub const META_BAGGAGE: &str = "baggage";

// --- Other instrumentations' names, read by `collect` only ----------------------------------

/// OpenLLMetry (`opentelemetry-instrumentation-mcp`): the kind of a traceloop span; `tool` for
/// a tool call.
pub const TRACELOOP_SPAN_KIND: &str = "traceloop.span.kind";
/// [`TRACELOOP_SPAN_KIND`] of a tool call.
pub const TRACELOOP_SPAN_KIND_TOOL: &str = "tool";
/// OpenLLMetry: the tool's name on a `tool` span.
pub const TRACELOOP_ENTITY_NAME: &str = "traceloop.entity.name";
/// OpenLLMetry: `{"tool_name": …, "arguments": {…}}` as JSON (content capture on).
pub const TRACELOOP_ENTITY_INPUT: &str = "traceloop.entity.input";
/// OpenLLMetry: `{"result": …, "is_error": true}` as JSON (content capture on).
pub const TRACELOOP_ENTITY_OUTPUT: &str = "traceloop.entity.output";
/// OpenLLMetry's span-name suffix for tool calls: `create_note.tool`.
pub const TRACELOOP_TOOL_SPAN_SUFFIX: &str = ".tool";

// --- Project namespace: what OpenTelemetry does not define ---------------------------------

/// `mcp_otel.status`: how the call ended: `success`, `error` or `timeout`.
pub const STATUS: &str = "mcp_otel.status";
/// `mcp_otel.error_code`: the call's error code as the record has it (`401`, `-32602`,
/// `tool_error`, …); absent on success.
pub const ERROR_CODE: &str = "mcp_otel.error_code";
/// `mcp_otel.duration_ms`: the call's duration in milliseconds (a double).
pub const DURATION_MS: &str = "mcp_otel.duration_ms";
/// `mcp_otel.context`: the call's arguments after redaction, as JSON text.
pub const CONTEXT: &str = "mcp_otel.context";
/// `mcp_otel.operation_type`: what a write did: `create`, `update`, `delete` or `write`.
pub const OPERATION_TYPE: &str = "mcp_otel.operation_type";
/// `mcp_otel.resource_id`: the id of the resource a write changed.
pub const RESOURCE_ID: &str = "mcp_otel.resource_id";
/// `mcp_otel.before_state`: the resource's state before a write, as JSON text (redacted).
pub const BEFORE_STATE: &str = "mcp_otel.before_state";
/// `mcp_otel.after_state`: the resource's state after a write, as JSON text (redacted).
pub const AFTER_STATE: &str = "mcp_otel.after_state";
/// `mcp_otel.user_confirmation`: whether the user confirmed the write (a bool; absent when
/// unknown).
pub const USER_CONFIRMATION: &str = "mcp_otel.user_confirmation";
/// `accepted` | `declined` | `cancelled` | `timeout` | `unsupported_client` | `not_required`.
pub const CONFIRMATION_OUTCOME: &str = "mcp_otel.confirmation.outcome";
/// `elicitation` | `client_flag` | `server_audit_block`.
pub const CONFIRMATION_SOURCE: &str = "mcp_otel.confirmation.source";
/// `sha256:<hex>` of the canonical JSON of the arguments the answer was about.
pub const CONFIRMATION_ARGUMENTS_DIGEST: &str = "mcp_otel.confirmation.arguments_digest";
/// How long the answer took, in milliseconds (a double).
pub const CONFIRMATION_WAIT_MS: &str = "mcp_otel.confirmation.wait_ms";
/// `mcp_otel.tool.read_only`: the tool's `readOnlyHint` annotation as the server announced it.
pub const TOOL_READ_ONLY: &str = "mcp_otel.tool.read_only";
/// `mcp_otel.tool.destructive`: the tool's `destructiveHint` annotation as the server announced it.
pub const TOOL_DESTRUCTIVE: &str = "mcp_otel.tool.destructive";
/// `mcp_otel.client.name`: the client's `clientInfo.name`.
pub const CLIENT_NAME: &str = "mcp_otel.client.name";
/// `mcp_otel.client.version`: the client's `clientInfo.version`.
pub const CLIENT_VERSION: &str = "mcp_otel.client.version";
/// The task id of a task-augmented `tools/call` (MCP 2025-11-25 tasks).
pub const TASK_ID: &str = "mcp_otel.task.id";

/// The instrumentation scope name on every span this project emits.
pub const SCOPE_NAME: &str = "mcp-otel";

// --- MCP protocol member names ---------------------------------------------------------------

/// The member that carries request and result metadata.
pub const MCP_META: &str = "_meta";
/// `_meta` keys of stateless (2026-07-28) requests.
pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
/// `_meta` key of stateless (2026-07-28) requests: the client's name and version (`clientInfo`).
pub const META_CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
/// `_meta.progressToken`: a request's progress notifications.
pub const META_PROGRESS_TOKEN: &str = "progressToken";
/// `result.isError`: a tool that ran and failed.
pub const RESULT_IS_ERROR: &str = "isError";
/// `result.structuredContent`.
pub const RESULT_STRUCTURED_CONTENT: &str = "structuredContent";
/// ToolAnnotations members.
pub const ANNOTATION_READ_ONLY: &str = "readOnlyHint";
/// ToolAnnotations member: the tool may destroy or overwrite data.
pub const ANNOTATION_DESTRUCTIVE: &str = "destructiveHint";

/// The `_meta` key a client sets to say the user confirmed this call.
pub const META_USER_CONFIRMATION: &str = "io.mcp-otel/user_confirmation";
/// The `result._meta` key under which a server may report the write it did.
pub const META_AUDIT: &str = "io.mcp-otel/audit";

/// JSON-RPC codes that, on the server side, are the caller's mistake rather than the server's:
/// they set `rpc.response.status_code` but not span status ERROR.
pub fn is_caller_error(code: i64) -> bool {
    matches!(
        code,
        -32700 | -32600 | -32601 | -32602 | -32002 | -32022..=-32020
    )
}

/// HTTP statuses that, on the server side, are the caller's mistake (auth, rate limit, bad
/// request): recorded as `error.type` but not span status ERROR.
pub fn is_caller_http_error(status: u16) -> bool {
    (400..500).contains(&status)
}

/// How a call's outcome shows on the span: `error.type`, `rpc.response.status_code`, status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorMapping {
    /// The `error.type` value; `None` on success and for JSON-RPC codes that are the caller's
    /// mistake (HTTP 4xx still get one).
    pub error_type: Option<String>,
    /// The `rpc.response.status_code` value: the JSON-RPC error code as text, when there was one.
    pub rpc_status_code: Option<String>,
    /// True when the span status is ERROR.
    pub is_span_error: bool,
}

/// Maps a call's status and error code to the semantic conventions, server side.
///
/// - `isError: true` (`tool_error`) → `error.type = tool_error`, ERROR;
/// - a JSON-RPC code → `rpc.response.status_code`; plus `error.type` and ERROR unless the code is
///   the caller's mistake (-32700, -32600, -32601, -32602, -32002, -32020..-32022);
/// - an HTTP status → `error.type` and ERROR for 5xx; 4xx (401, 403, 429, …) are the caller's;
/// - `timeout` → `error.type = timeout`, ERROR; any other code → `error.type` = the code, ERROR.
pub fn map_error(status: Status, error_code: Option<&str>) -> ErrorMapping {
    let m = map_error_ref(status, error_code);
    ErrorMapping {
        error_type: m.error_type.map(str::to_owned),
        rpc_status_code: m.rpc_status_code.map(str::to_owned),
        is_span_error: m.is_span_error,
    }
}

/// [`ErrorMapping`] with its texts borrowed from the error code, not copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorMappingRef<'a> {
    /// See [`ErrorMapping::error_type`].
    pub error_type: Option<&'a str>,
    /// See [`ErrorMapping::rpc_status_code`].
    pub rpc_status_code: Option<&'a str>,
    /// True when the span status is ERROR.
    pub is_span_error: bool,
}

/// [`map_error`] without an allocation (the span encoder's, once per call).
pub fn map_error_ref(status: Status, error_code: Option<&str>) -> ErrorMappingRef<'_> {
    let none = ErrorMappingRef {
        error_type: None,
        rpc_status_code: None,
        is_span_error: false,
    };
    if status == Status::Timeout {
        return ErrorMappingRef {
            error_type: Some(ERROR_TYPE_TIMEOUT),
            is_span_error: true,
            ..none
        };
    }
    let Some(code) = error_code else {
        return if status == Status::Error {
            ErrorMappingRef {
                error_type: Some("_OTHER"),
                is_span_error: true,
                ..none
            }
        } else {
            none
        };
    };
    if let Ok(n) = code.parse::<i64>() {
        if n < 0 {
            let caller = is_caller_error(n);
            return ErrorMappingRef {
                error_type: (!caller).then_some(code),
                rpc_status_code: Some(code),
                is_span_error: !caller,
            };
        }
        if (100..600).contains(&n) {
            let caller = is_caller_http_error(n as u16);
            return ErrorMappingRef {
                error_type: (!caller).then_some(code),
                is_span_error: !caller,
                ..none
            };
        }
    }
    ErrorMappingRef {
        error_type: Some(code),
        is_span_error: true,
        ..none
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_mistakes_are_not_server_errors() {
        let m = map_error(Status::Error, Some("-32602"));
        assert_eq!(m.rpc_status_code.as_deref(), Some("-32602"));
        assert_eq!(m.error_type, None);
        assert!(!m.is_span_error);
        let m = map_error(Status::Error, Some("-32603"));
        assert_eq!(m.error_type.as_deref(), Some("-32603"));
        assert!(m.is_span_error);
        let m = map_error(Status::Error, Some("429"));
        assert!(!m.is_span_error);
        let m = map_error(Status::Error, Some("503"));
        assert_eq!(m.error_type.as_deref(), Some("503"));
        assert!(m.is_span_error);
        let m = map_error(Status::Error, Some("tool_error"));
        assert_eq!(m.error_type.as_deref(), Some("tool_error"));
        assert!(m.is_span_error);
        let m = map_error(Status::Timeout, None);
        assert_eq!(m.error_type.as_deref(), Some("timeout"));
    }

    #[test]
    fn caller_errors_are_the_semconv_list() {
        for code in [
            -32700, -32600, -32601, -32602, -32002, -32020, -32021, -32022,
        ] {
            assert!(is_caller_error(code), "{code}");
        }
        for code in [-32603, -32000, -32001, -32019, -32023, 0, 1] {
            assert!(!is_caller_error(code), "{code}");
        }
    }
}
