//! OTLP span → ToolCall: the reverse of `emit::span`.
//!
//! Accepts our own spans and any span that follows the official MCP semantic conventions
//! (Python/JS SDK instrumentations, ToolHive, FastMCP): `mcp.method.name = tools/call` or
//! `gen_ai.operation.name = execute_tool` with a tool name; and OpenLLMetry's tool spans
//! (`traceloop.span.kind = tool`). What the official names carry is enough for the metrics; the
//! `mcp_otel.*` attributes add the seed's write fields. A CLIENT span is the caller's view of a
//! call that its server side records: it is never a call (`docs/semconv.md`, "Exactly once").
//! Calls from other instrumentations get the proxy's write classification
//! (`capture::classify`), so their creates and deletes count as writes.

use crate::capture::classify::{WriteEvidence, resolve_write};
use crate::record::{
    Confirmation, McpInfo, OperationType, Status, ToolCall, TraceIds, Transport, WriteOp,
    error_code,
};
use crate::redact::Redactor;
use crate::semconv as sc;
use chrono::{DateTime, Utc};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::{Span, status::StatusCode};
use serde_json::Value;

/// A span that claims to be an MCP tool call but cannot be read as one.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("attribute `{key}` must be {expected}, got {got}")]
    WrongType {
        key: &'static str,
        expected: &'static str,
        got: &'static str,
    },
    #[error("attribute `{key}` has an invalid value {value:?}: {problem}")]
    BadValue {
        key: &'static str,
        value: String,
        problem: String,
    },
    #[error("span field `{field}` must be {expected} bytes, got {got}")]
    BadId {
        field: &'static str,
        expected: usize,
        got: usize,
    },
    #[error(
        "span field `{field}` is empty or all zeros: a tool call needs an identity (W3C Trace Context)"
    )]
    MissingId { field: &'static str },
}

/// An attribute value as the decoder reads it: borrowed from prost's types or straight from
/// the wire bytes ([`super::wire`]). Only strings, bools and numbers are looked into.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum ValueRef<'a> {
    Empty,
    Str(&'a str),
    Bool(bool),
    Int(i64),
    Double(f64),
    Array,
    Kvlist,
    Bytes,
    Strindex,
}

impl<'a> ValueRef<'a> {
    /// The value of an attribute of prost's types.
    pub(crate) fn of(v: &'a Option<AnyValue>) -> Self {
        match v.as_ref().and_then(|a| a.value.as_ref()) {
            None => ValueRef::Empty,
            Some(any_value::Value::StringValue(s)) => ValueRef::Str(s),
            Some(any_value::Value::BoolValue(b)) => ValueRef::Bool(*b),
            Some(any_value::Value::IntValue(i)) => ValueRef::Int(*i),
            Some(any_value::Value::DoubleValue(d)) => ValueRef::Double(*d),
            Some(any_value::Value::ArrayValue(_)) => ValueRef::Array,
            Some(any_value::Value::KvlistValue(_)) => ValueRef::Kvlist,
            Some(any_value::Value::BytesValue(_)) => ValueRef::Bytes,
            Some(any_value::Value::StringValueStrindex(_)) => ValueRef::Strindex,
        }
    }

    fn as_str(self) -> Option<&'a str> {
        match self {
            ValueRef::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// What the decoder reads of a span: prost's [`Span`], or a span read straight from the wire
/// bytes ([`super::wire::WireSpan`]); both decode alike.
pub(crate) trait SpanView {
    fn kind(&self) -> i32;
    fn name(&self) -> &str;
    /// `status.code`; 0 (unset) without a status.
    fn status_code(&self) -> i32;
    fn start_time_unix_nano(&self) -> u64;
    fn end_time_unix_nano(&self) -> u64;
    fn trace_id(&self) -> &[u8];
    fn span_id(&self) -> &[u8];
    fn parent_span_id(&self) -> &[u8];
    /// The attributes in order, as `(key, value)`.
    fn attributes(&self) -> impl Iterator<Item = (&str, ValueRef<'_>)>;
}

impl SpanView for Span {
    fn kind(&self) -> i32 {
        self.kind
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn status_code(&self) -> i32 {
        self.status.as_ref().map_or(0, |s| s.code)
    }
    fn start_time_unix_nano(&self) -> u64 {
        self.start_time_unix_nano
    }
    fn end_time_unix_nano(&self) -> u64 {
        self.end_time_unix_nano
    }
    fn trace_id(&self) -> &[u8] {
        &self.trace_id
    }
    fn span_id(&self) -> &[u8] {
        &self.span_id
    }
    fn parent_span_id(&self) -> &[u8] {
        &self.parent_span_id
    }
    fn attributes(&self) -> impl Iterator<Item = (&str, ValueRef<'_>)> {
        self.attributes
            .iter()
            .map(|KeyValue { key, value, .. }| (key.as_str(), ValueRef::of(value)))
    }
}

fn type_name(v: ValueRef<'_>) -> &'static str {
    match v {
        ValueRef::Empty => "empty",
        ValueRef::Str(_) => "a string",
        ValueRef::Bool(_) => "a bool",
        ValueRef::Int(_) => "an int",
        ValueRef::Double(_) => "a double",
        ValueRef::Array => "an array",
        ValueRef::Kvlist => "a key-value list",
        ValueRef::Bytes => "bytes",
        ValueRef::Strindex => "a string index",
    }
}

/// A string attribute; ints are accepted too (request ids and codes are often numbers).
fn string(key: &'static str, v: ValueRef<'_>) -> Result<String, DecodeError> {
    let mut text = String::new();
    string_into(&mut text, key, v)?;
    Ok(text)
}

/// [`string`] into `out`'s buffer (emptied first).
fn string_into(out: &mut String, key: &'static str, v: ValueRef<'_>) -> Result<(), DecodeError> {
    out.clear();
    match v {
        ValueRef::Str(s) => out.push_str(s),
        ValueRef::Int(i) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{i}");
        }
        other => {
            return Err(DecodeError::WrongType {
                key,
                expected: "a string",
                got: type_name(other),
            });
        }
    }
    Ok(())
}

/// A string attribute that must be a string (no int accepted), into `out`'s buffer (emptied
/// first).
fn text_only_into(out: &mut String, key: &'static str, v: ValueRef<'_>) -> Result<(), DecodeError> {
    match v {
        ValueRef::Str(_) => string_into(out, key, v),
        other => Err(DecodeError::WrongType {
            key,
            expected: "a string",
            got: type_name(other),
        }),
    }
}

/// [`string`] into `slot`, in its own buffer or else `spare`'s.
fn set_string(
    slot: &mut Option<String>,
    spare: &mut Option<String>,
    key: &'static str,
    v: ValueRef<'_>,
) -> Result<(), DecodeError> {
    let mut text = slot.take().or_else(|| spare.take()).unwrap_or_default();
    string_into(&mut text, key, v)?;
    *slot = Some(text);
    Ok(())
}

/// The text buffers of a spent record, emptied, for the next record's fields: an export
/// decoded into the records of the one before allocates nothing for the texts every call has
/// (tool, user, method, request id, client, error code).
#[derive(Debug, Default)]
pub(crate) struct Spare {
    tool_name: String,
    user: String,
    method: String,
    request_id: Option<String>,
    client_name: Option<String>,
    error_code: Option<String>,
}

impl Spare {
    /// What of `call` the next record reuses, taken out of it.
    fn take(call: &mut ToolCall) -> Spare {
        let cleared = |s: &mut String| {
            let mut s = std::mem::take(s);
            s.clear();
            s
        };
        Spare {
            tool_name: cleared(&mut call.tool_name),
            user: cleared(&mut call.user),
            method: cleared(&mut call.mcp.method),
            request_id: call.mcp.request_id.take(),
            client_name: call.mcp.client_name.take(),
            error_code: call.error_code.take(),
        }
    }
}

/// Drops what a spent record holds beyond the texts [`Spare`] reuses (arguments, result,
/// states), so that a kept batch costs little memory.
pub(crate) fn shed(call: &mut ToolCall) {
    call.context = None;
    call.result = None;
    call.write = None;
    call.confirmation = None;
}

fn boolean(key: &'static str, v: ValueRef<'_>) -> Result<bool, DecodeError> {
    match v {
        ValueRef::Bool(b) => Ok(b),
        ValueRef::Str(s) if s == "true" || s == "false" => Ok(s == "true"),
        other => Err(DecodeError::WrongType {
            key,
            expected: "a bool",
            got: type_name(other),
        }),
    }
}

fn double(key: &'static str, v: ValueRef<'_>) -> Result<f64, DecodeError> {
    match v {
        ValueRef::Double(d) if d.is_finite() => Ok(d),
        ValueRef::Int(i) => Ok(i as f64),
        other => Err(DecodeError::WrongType {
            key,
            expected: "a number",
            got: type_name(other),
        }),
    }
}

/// A JSON attribute: a JSON string, parsed. A non-JSON string is kept as a JSON string.
/// The largest JSON attribute (arguments, states, result) collect stores as it came; a larger
/// one is kept as a marker that says how large it was, as the exporters cap what they send.
pub(crate) const MAX_STORED_JSON_BYTES: usize = 64 * 1024;

fn json(key: &'static str, v: ValueRef<'_>) -> Result<Value, DecodeError> {
    let s = string(key, v)?;
    if s.len() > MAX_STORED_JSON_BYTES {
        return Ok(serde_json::json!({ "[truncated]": format!("{} bytes of JSON", s.len()) }));
    }
    Ok(serde_json::from_str(&s).unwrap_or(Value::String(s)))
}

fn parse<T: std::str::FromStr>(key: &'static str, s: String) -> Result<T, DecodeError>
where
    T::Err: std::fmt::Display,
{
    s.parse().map_err(|e: T::Err| DecodeError::BadValue {
        key,
        value: s,
        problem: e.to_string(),
    })
}

/// [`parse`] of [`string`], allocating only for the error.
fn parse_value<T: std::str::FromStr>(key: &'static str, v: ValueRef<'_>) -> Result<T, DecodeError>
where
    T::Err: std::fmt::Display,
{
    match v {
        ValueRef::Str(s) => s.parse().map_err(|e: T::Err| DecodeError::BadValue {
            key,
            value: s.to_owned(),
            problem: e.to_string(),
        }),
        other => parse(key, string(key, other)?),
    }
}

/// A string attribute that counting does not read: checked like [`string`], kept unless
/// `light`.
fn kept_string(
    light: bool,
    key: &'static str,
    v: ValueRef<'_>,
) -> Result<Option<String>, DecodeError> {
    match (light, v) {
        (true, ValueRef::Str(_) | ValueRef::Int(_)) => Ok(None),
        _ => string(key, v).map(Some),
    }
}

fn id<const N: usize>(field: &'static str, bytes: &[u8]) -> Result<[u8; N], DecodeError> {
    if bytes.is_empty() {
        return Ok([0u8; N]);
    }
    bytes.try_into().map_err(|_| DecodeError::BadId {
        field,
        expected: N,
        got: bytes.len(),
    })
}

/// A trace or span id that names the call: empty or all zeros is invalid (W3C Trace Context),
/// and would let two different calls collapse into one audit row.
fn nonzero_id<const N: usize>(field: &'static str, bytes: &[u8]) -> Result<[u8; N], DecodeError> {
    let id = id::<N>(field, bytes)?;
    if id == [0u8; N] {
        return Err(DecodeError::MissingId { field });
    }
    Ok(id)
}

/// Which instrumentation a call's span came from, ordered by how much it knows: where two
/// records of one call meet, the greater wins and the other fills its gaps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Origin {
    /// Another instrumentation's non-SERVER span (OpenLLMetry's `create_note.tool`): the tool,
    /// the outcome, the timing.
    ForeignInternal,
    /// Another instrumentation's SERVER span with the official names (the MCP Python SDK's
    /// own): adds the JSON-RPC request id and the protocol version.
    ForeignServer,
    /// This project's span (`mcp_otel.status` set): adds the user, the write state and the
    /// confirmation.
    Ours,
}

impl Origin {
    pub(crate) fn is_ours(self) -> bool {
        self == Origin::Ours
    }
}

/// True when the span is a call the collector counts: an MCP tool call by our or the official
/// conventions or OpenLLMetry's, or any MCP request that was refused for want of a valid key
/// (`error_code` 401 or 403, as the proxy records them). A client without a key is refused at
/// `initialize`, before it ever calls a tool; counting those refusals is what lets
/// `McpAuthFailures` see it. CLIENT spans are never calls: the server side counts.
pub(crate) fn is_recorded_call(span: &impl SpanView) -> bool {
    if span.kind() == SpanKind::Client as i32 {
        return false;
    }
    let mut method = None;
    let mut op = None;
    let mut tool = false;
    let mut refused = false;
    let mut traceloop_tool = false;
    let mut entity = false;
    for (key, value) in span.attributes() {
        let s = value.as_str();
        match key {
            sc::MCP_METHOD_NAME => method = s,
            sc::GEN_AI_OPERATION_NAME => op = s,
            sc::GEN_AI_TOOL_NAME => tool = true,
            sc::ERROR_CODE => refused = s.is_some_and(error_code::is_auth_failure),
            sc::TRACELOOP_SPAN_KIND => traceloop_tool = s == Some(sc::TRACELOOP_SPAN_KIND_TOOL),
            sc::TRACELOOP_ENTITY_NAME => entity = s.is_some_and(|s| !s.is_empty()),
            _ => {}
        }
    }
    match method {
        Some(m) => m == "tools/call" || (refused && !m.is_empty()),
        None => {
            (op == Some(sc::GEN_AI_OPERATION_EXECUTE_TOOL) && tool) || (traceloop_tool && entity)
        }
    }
}

/// The origin of a span that [`is_recorded_call`] accepted.
fn origin_of(span: &impl SpanView) -> Origin {
    if span.attributes().any(|(key, _)| key == sc::STATUS) {
        Origin::Ours
    } else if span.kind() == SpanKind::Server as i32 {
        Origin::ForeignServer
    } else {
        Origin::ForeignInternal
    }
}

#[cfg(test)]
/// Decodes one span. `Ok(None)` for spans that are not calls ([`is_recorded_call`]).
pub(crate) fn decode_span(span: &impl SpanView) -> Result<Option<ToolCall>, DecodeError> {
    Ok(decode_call(span)?.map(|(call, _)| call))
}

#[cfg(test)]
/// [`decode_span`], with the span's [`Origin`]. A call from another instrumentation is
/// redacted (its arguments may hold secrets our capture would have removed) and classified
/// like the proxy classifies: tool annotations when the span carries them, a server audit block
/// in the result, then the tool-name verbs.
pub(crate) fn decode_call(span: &impl SpanView) -> Result<Option<(ToolCall, Origin)>, DecodeError> {
    decode_call_for(span, Use::Store, Spare::default())
}

/// What a decoded call is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Use {
    /// Stored or forwarded: every field.
    Store,
    /// Only counted (metrics, alerts, the exactly-once ledger; no audit trail): a call of ours
    /// leaves its JSON attributes (arguments, states, result) unparsed, `Value::Null` where one
    /// was sent. Their types are still checked, so a span is rejected exactly as with
    /// [`Use::Store`]. Other instrumentations' calls are decoded whole (their write
    /// classification reads the arguments and the result).
    Count,
}

/// [`decode_call`] for `usage`, its texts written into `spare`'s buffers.
pub(crate) fn decode_call_for(
    span: &impl SpanView,
    usage: Use,
    spare: Spare,
) -> Result<Option<(ToolCall, Origin)>, DecodeError> {
    if !is_recorded_call(span) {
        return Ok(None);
    }
    let origin = origin_of(span);
    let light = usage == Use::Count && origin.is_ours();
    let mut call = decode_fields(span, light, spare)?;
    // Whoever sent it: what collect stores or exposes is redacted and capped like what the
    // exporters send (a span claiming to be ours is no proof that it was redacted).
    REDACTOR.redact_call(&mut call);
    if !origin.is_ours() {
        classify_foreign(&mut call);
    }
    Ok(Some((call, origin)))
}

/// Redaction with the defaults, compiled once.
pub(crate) static REDACTOR: std::sync::LazyLock<Redactor> =
    std::sync::LazyLock::new(Redactor::default);

/// The write classification of the proxy (the one [`resolve_write`]), for a call whose span
/// says nothing about writes.
fn classify_foreign(call: &mut ToolCall) {
    if call.write.is_some() || call.mcp.method != "tools/call" || call.tool_name.is_empty() {
        return;
    }
    let rpc_error = call
        .error_code
        .as_deref()
        .and_then(|c| c.parse::<i64>().ok())
        .filter(|c| *c < 0);
    call.write = resolve_write(WriteEvidence {
        tool: &call.tool_name,
        result: call.result.as_ref(),
        rpc_error,
        read_only: call.read_only_hint,
        arguments: call.context.as_ref(),
        ..Default::default()
    });
}

fn decode_fields(span: &impl SpanView, light: bool, spare: Spare) -> Result<ToolCall, DecodeError> {
    // Counted only: a JSON attribute's type is checked, its text left unparsed.
    let json = |key: &'static str, v: ValueRef<'_>| match (light, v) {
        (true, ValueRef::Str(_) | ValueRef::Int(_)) => Ok(Value::Null),
        _ => json(key, v),
    };
    // Not `ToolCall::new`: the clock and fresh random ids would be read only to be replaced.
    let Spare {
        tool_name,
        user,
        method,
        request_id: mut spare_request_id,
        client_name: mut spare_client_name,
        error_code: mut spare_error_code,
    } = spare;
    let mut call = ToolCall {
        tool_name,
        user,
        timestamp: DateTime::<Utc>::UNIX_EPOCH,
        status: Status::Success,
        duration_ms: 0.0,
        error_code: None,
        context: None,
        write: None,
        mcp: McpInfo {
            method,
            ..McpInfo::default()
        },
        ids: TraceIds::default(),
        read_only_hint: None,
        destructive_hint: None,
        result: None,
        confirmation: None,
    };
    let mut has_method = false;
    let mut status: Option<Status> = None;
    let mut duration_ms: Option<f64> = None;
    let mut error_type: Option<String> = None;
    let mut rpc_code: Option<String> = None;
    let mut user_fallback: Option<String> = None;
    let mut arguments: Option<Value> = None;
    let mut entity_name: Option<String> = None;
    let mut entity_arguments: Option<Value> = None;
    let mut entity_output: Option<Value> = None;
    let mut write = WriteOp::default();
    let mut confirmation: Option<Confirmation> = None;
    let (mut confirmation_source, mut confirmation_digest, mut confirmation_wait) =
        (None, None, None);
    for (key, value) in span.attributes() {
        match key {
            // Strictly a string: it is what made the span a call (or not) in
            // `is_recorded_call`, which reads it only as one.
            sc::MCP_METHOD_NAME => {
                text_only_into(&mut call.mcp.method, sc::MCP_METHOD_NAME, value)?;
                has_method = true;
            }
            sc::GEN_AI_TOOL_NAME => string_into(&mut call.tool_name, sc::GEN_AI_TOOL_NAME, value)?,
            sc::ENDUSER_ID => string_into(&mut call.user, sc::ENDUSER_ID, value)?,
            "user.id" => user_fallback = Some(string("user.id", value)?),
            sc::STATUS => status = Some(parse_value(sc::STATUS, value)?),
            sc::DURATION_MS => duration_ms = Some(double(sc::DURATION_MS, value)?),
            sc::ERROR_CODE => set_string(
                &mut call.error_code,
                &mut spare_error_code,
                sc::ERROR_CODE,
                value,
            )?,
            sc::ERROR_TYPE => error_type = Some(string(sc::ERROR_TYPE, value)?),
            sc::RPC_RESPONSE_STATUS_CODE => {
                rpc_code = Some(string(sc::RPC_RESPONSE_STATUS_CODE, value)?)
            }
            sc::JSONRPC_REQUEST_ID => set_string(
                &mut call.mcp.request_id,
                &mut spare_request_id,
                sc::JSONRPC_REQUEST_ID,
                value,
            )?,
            sc::MCP_PROTOCOL_VERSION => {
                call.mcp.protocol_version = kept_string(light, sc::MCP_PROTOCOL_VERSION, value)?
            }
            sc::MCP_SESSION_ID => {
                call.mcp.session_id = kept_string(light, sc::MCP_SESSION_ID, value)?
            }
            sc::CLIENT_ADDRESS => {
                call.mcp.client_address = kept_string(light, sc::CLIENT_ADDRESS, value)?
            }
            sc::CLIENT_NAME => set_string(
                &mut call.mcp.client_name,
                &mut spare_client_name,
                sc::CLIENT_NAME,
                value,
            )?,
            sc::CLIENT_VERSION => {
                call.mcp.client_version = kept_string(light, sc::CLIENT_VERSION, value)?
            }
            sc::TASK_ID => call.mcp.task_id = kept_string(light, sc::TASK_ID, value)?,
            sc::NETWORK_TRANSPORT => {
                call.mcp.transport = match value {
                    ValueRef::Str(s) => Transport::from_network_transport(s),
                    other => {
                        Transport::from_network_transport(&string(sc::NETWORK_TRANSPORT, other)?)
                    }
                }
            }
            sc::CONTEXT => call.context = Some(json(sc::CONTEXT, value)?),
            sc::GEN_AI_TOOL_CALL_ARGUMENTS => {
                arguments = Some(json(sc::GEN_AI_TOOL_CALL_ARGUMENTS, value)?)
            }
            sc::GEN_AI_TOOL_CALL_RESULT => {
                call.result = Some(json(sc::GEN_AI_TOOL_CALL_RESULT, value)?)
            }
            sc::OPERATION_TYPE => {
                let op: OperationType = parse_value(sc::OPERATION_TYPE, value)?;
                write.operation_type = Some(op);
            }
            sc::RESOURCE_ID => write.resource_id = Some(string(sc::RESOURCE_ID, value)?),
            sc::BEFORE_STATE => write.before_state = Some(json(sc::BEFORE_STATE, value)?),
            sc::AFTER_STATE => write.after_state = Some(json(sc::AFTER_STATE, value)?),
            sc::USER_CONFIRMATION => {
                write.user_confirmation = Some(boolean(sc::USER_CONFIRMATION, value)?)
            }
            sc::CONFIRMATION_OUTCOME => {
                let outcome = parse_value(sc::CONFIRMATION_OUTCOME, value)?;
                confirmation
                    .get_or_insert(Confirmation::new(outcome, None))
                    .outcome = outcome;
            }
            sc::CONFIRMATION_SOURCE => {
                confirmation_source = Some(parse_value(sc::CONFIRMATION_SOURCE, value)?)
            }
            sc::CONFIRMATION_ARGUMENTS_DIGEST => {
                confirmation_digest = kept_string(light, sc::CONFIRMATION_ARGUMENTS_DIGEST, value)?
            }
            sc::CONFIRMATION_WAIT_MS => {
                confirmation_wait = Some(double(sc::CONFIRMATION_WAIT_MS, value)?)
            }
            sc::TOOL_READ_ONLY => call.read_only_hint = Some(boolean(sc::TOOL_READ_ONLY, value)?),
            sc::TOOL_DESTRUCTIVE => {
                call.destructive_hint = Some(boolean(sc::TOOL_DESTRUCTIVE, value)?)
            }
            sc::TRACELOOP_ENTITY_NAME => {
                entity_name = Some(string(sc::TRACELOOP_ENTITY_NAME, value)?)
            }
            sc::TRACELOOP_ENTITY_INPUT => {
                // `{"tool_name": …, "arguments": {…}}`: the arguments are the context.
                let input = json(sc::TRACELOOP_ENTITY_INPUT, value)?;
                entity_arguments = input.get("arguments").filter(|a| !a.is_null()).cloned();
            }
            sc::TRACELOOP_ENTITY_OUTPUT => {
                entity_output = Some(json(sc::TRACELOOP_ENTITY_OUTPUT, value)?)
            }
            _ => {}
        }
    }
    // No method: OpenLLMetry's or the official tool span, a tool call.
    if !has_method {
        call.mcp.method.clear();
        call.mcp.method.push_str("tools/call");
    }
    // The outcome is what makes a confirmation; the rest only describes one.
    call.confirmation = confirmation.map(|c| Confirmation {
        source: confirmation_source,
        arguments_digest: confirmation_digest,
        wait_ms: confirmation_wait,
        ..c
    });
    if call.tool_name.is_empty() {
        if let Some(name) = entity_name {
            // OpenLLMetry: no `mcp.method.name`; the entity is the tool.
            call.tool_name = name;
        } else if call.mcp.method == "tools/call" {
            // Span name `tools/call {tool}`.
            call.tool_name = span
                .name()
                .split_once(' ')
                .map(|(_, t)| t.to_owned())
                .unwrap_or_default();
        }
    }
    if arguments.is_none() {
        arguments = entity_arguments;
    }
    if call.result.is_none() {
        call.result = entity_output;
    }
    if call.user.is_empty() {
        // An empty `user.id` or client name names nobody (and our own spans leave an empty
        // user out, so it would not survive being forwarded).
        call.user = user_fallback
            .filter(|u| !u.is_empty())
            .or_else(|| call.mcp.client_name.clone().filter(|n| !n.is_empty()))
            .unwrap_or_else(|| "unknown".to_owned());
    }
    if call.context.is_none() {
        call.context = arguments;
    }
    if status.is_none() && call.error_code.is_none() {
        // A span from another instrumentation: the code is what the official names carry.
        call.error_code = match error_type.as_deref() {
            Some("_OTHER") | None => rpc_code.clone(),
            Some(t) => Some(t.to_owned()),
        };
    }
    call.status = status.unwrap_or({
        let span_error = span.status_code() == StatusCode::Error as i32;
        if error_type.as_deref() == Some(sc::ERROR_TYPE_TIMEOUT) {
            Status::Timeout
        } else if span_error || error_type.is_some() || rpc_code.is_some() {
            Status::Error
        } else {
            Status::Success
        }
    });
    let start = span.start_time_unix_nano();
    call.timestamp = DateTime::<Utc>::from_timestamp_nanos(start.min(i64::MAX as u64) as i64);
    call.duration_ms = duration_ms
        .unwrap_or_else(|| span.end_time_unix_nano().saturating_sub(start) as f64 / 1_000_000.0);
    if !write.is_empty() {
        call.write = Some(write);
    }
    call.ids = TraceIds {
        trace_id: nonzero_id("trace_id", span.trace_id())?,
        span_id: nonzero_id("span_id", span.span_id())?,
        parent_span_id: id("parent_span_id", span.parent_span_id())?,
    };
    Ok(call)
}

/// Attributes (or the entries of a key-value list) from `(key, value)` pairs: how the tests'
/// span generators build them.
#[cfg(test)]
pub(crate) fn key_values(pairs: Vec<(String, Option<AnyValue>)>) -> Vec<KeyValue> {
    pairs
        .into_iter()
        .map(|(key, value)| KeyValue {
            key,
            value,
            ..Default::default()
        })
        .collect()
}

/// What one OTLP export request decoded to.
#[derive(Debug, Default)]
pub(crate) struct DecodedRequest {
    pub(crate) calls: Vec<ToolCall>,
    /// The origin of each of `calls`, in the same order.
    pub(crate) origins: Vec<Origin>,
    pub(crate) received: u64,
    /// Spans that are not MCP tool calls (forwarded, not counted as calls).
    pub(crate) ignored: u64,
    /// Tool-call spans that could not be read; the first problem is kept.
    pub(crate) invalid: u64,
    pub(crate) first_error: Option<String>,
    /// What the senders' exporters said they lost so far (one per resource that says it).
    pub(crate) losses: Vec<ExporterLosses>,
}

/// The loss counts an exporter of ours puts on its resource once they are non-zero
/// ([`sc::EXPORTER_SPANS_FAILED`], [`sc::EXPORTER_SPANS_DROPPED`]): cumulative for the sending
/// process, keyed by its service name and instance id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExporterLosses {
    pub(crate) service_name: String,
    pub(crate) instance_id: String,
    /// Spans lost to failed or timed-out exports.
    pub(crate) failed: u64,
    /// Spans dropped before export.
    pub(crate) dropped: u64,
}

/// The loss counts on a resource, if it carries any. Counts that are not non-negative
/// integers are ignored (a foreign resource may use the names for anything).
pub(crate) fn exporter_losses(
    resource: &opentelemetry_proto::tonic::resource::v1::Resource,
) -> Option<ExporterLosses> {
    let mut out = ExporterLosses {
        service_name: String::new(),
        instance_id: String::new(),
        failed: 0,
        dropped: 0,
    };
    let mut any = false;
    for kv in &resource.attributes {
        let v = kv.value.as_ref().and_then(|v| v.value.as_ref());
        let count = || match v {
            Some(any_value::Value::IntValue(n)) => u64::try_from(*n).ok(),
            _ => None,
        };
        let text = || match v {
            Some(any_value::Value::StringValue(s)) => s.clone(),
            _ => String::new(),
        };
        match kv.key.as_str() {
            sc::SERVICE_NAME => out.service_name = text(),
            sc::SERVICE_INSTANCE_ID => out.instance_id = text(),
            sc::EXPORTER_SPANS_FAILED => {
                if let Some(n) = count() {
                    out.failed = n;
                    any = true;
                }
            }
            sc::EXPORTER_SPANS_DROPPED => {
                if let Some(n) = count() {
                    out.dropped = n;
                    any = true;
                }
            }
            _ => {}
        }
    }
    any.then_some(out)
}

/// Decodes every span of an export request.
pub(crate) fn decode_request(
    req: &opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
) -> DecodedRequest {
    let mut out = DecodedRequest {
        losses: req
            .resource_spans
            .iter()
            .filter_map(|rs| rs.resource.as_ref().and_then(exporter_losses))
            .collect(),
        ..DecodedRequest::default()
    };
    for span in req
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
    {
        out.add(span, Use::Store);
    }
    out
}

impl DecodedRequest {
    /// Decodes one more span of the request for `usage`.
    pub(crate) fn add(&mut self, span: &impl SpanView, usage: Use) {
        let mut kept = self.calls.len();
        self.add_at(span, usage, &mut kept);
    }

    /// [`DecodedRequest::add`] into `calls[*kept]`, a spent record whose text buffers it
    /// reuses, while there is one (then pushed). The records past `kept` are spent ones, for
    /// the caller to truncate.
    pub(crate) fn add_at(&mut self, span: &impl SpanView, usage: Use, kept: &mut usize) {
        self.received += 1;
        let spare = self
            .calls
            .get_mut(*kept)
            .map(Spare::take)
            .unwrap_or_default();
        match decode_call_for(span, usage, spare) {
            Ok(Some((call, origin))) => {
                match self.calls.get_mut(*kept) {
                    Some(slot) => *slot = call,
                    None => self.calls.push(call),
                }
                *kept += 1;
                self.origins.push(origin);
            }
            Ok(None) => self.ignored += 1,
            Err(e) => {
                self.invalid += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(format!("span {:?}: {e}", span.name()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emit::{SpanOptions, to_span};

    #[test]
    fn a_huge_json_attribute_is_stored_as_a_marker() {
        let big = format!("{{\"blob\": \"{}\"}}", "x".repeat(MAX_STORED_JSON_BYTES));
        let v = json(sc::CONTEXT, ValueRef::Str(&big)).unwrap();
        assert_eq!(v["[truncated]"], format!("{} bytes of JSON", big.len()));
    }

    #[test]
    fn a_call_without_an_identity_is_rejected() {
        for (trace, span) in [
            (vec![], vec![2; 8]),
            (vec![1; 16], vec![0; 8]),
            (vec![0; 16], vec![]),
        ] {
            let s = Span {
                name: "tools/call delete_task".into(),
                trace_id: trace,
                span_id: span,
                kind: SpanKind::Server as i32,
                attributes: vec![
                    kv(
                        sc::MCP_METHOD_NAME,
                        any_value::Value::StringValue("tools/call".into()),
                    ),
                    kv(
                        sc::GEN_AI_TOOL_NAME,
                        any_value::Value::StringValue("delete_task".into()),
                    ),
                ],
                ..Default::default()
            };
            let e = decode_call(&s).unwrap_err();
            assert!(matches!(e, DecodeError::MissingId { .. }), "{e}");
        }
    }
    use crate::record::tests_support::arb_tool_call;
    use crate::redact::Redactor;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use proptest::prelude::*;
    use prost::Message;

    fn kv(key: &str, v: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    fn s(v: &str) -> any_value::Value {
        any_value::Value::StringValue(v.to_owned())
    }

    fn to_bytes(span: Span) -> Vec<u8> {
        crate::collect::testing::export_request(vec![span]).encode_to_vec()
    }

    fn from_bytes(bytes: &[u8]) -> Span {
        let req = ExportTraceServiceRequest::decode(bytes).unwrap();
        req.resource_spans[0].scope_spans[0].spans[0].clone()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn record_span_bytes_record_is_identity_after_redaction(call in arb_tool_call()) {
            let mut expected = call.clone();
            Redactor::default().redact_call(&mut expected);
            let opts = SpanOptions { record_result: true, ..SpanOptions::default() };
            let span: Span = to_span(&expected, &opts).into();
            let decoded = decode_span(&from_bytes(&to_bytes(span))).unwrap().unwrap();
            prop_assert_eq!(decoded, expected);
        }
    }

    #[test]
    fn foreign_official_spans_decode() {
        // What a Python SDK instrumentation sends: official names only.
        let span = Span {
            name: "tools/call search".into(),
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            start_time_unix_nano: 1_700_000_000_000_000_000,
            end_time_unix_nano: 1_700_000_000_250_000_000,
            attributes: vec![
                kv("mcp.method.name", s("tools/call")),
                kv("gen_ai.tool.name", s("search")),
                kv("jsonrpc.request.id", any_value::Value::IntValue(7)),
                kv("rpc.response.status_code", s("-32603")),
                kv("error.type", s("-32603")),
            ],
            ..Default::default()
        };
        let call = decode_span(&span).unwrap().unwrap();
        assert_eq!(call.tool_name, "search");
        assert_eq!(call.user, "unknown");
        assert_eq!(call.status, Status::Error);
        assert_eq!(call.error_code.as_deref(), Some("-32603"));
        assert_eq!(call.duration_ms, 250.0);
        assert_eq!(call.mcp.request_id.as_deref(), Some("7"));
    }

    /// The MCP Python SDK 2.x client's own span: the caller's view, never a call.
    #[test]
    fn client_spans_are_not_calls() {
        let span = Span {
            name: "MCP send tools/call create_note".into(),
            kind: SpanKind::Client as i32,
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            attributes: vec![
                kv("mcp.method.name", s("tools/call")),
                kv("jsonrpc.request.id", s("3")),
            ],
            ..Default::default()
        };
        assert_eq!(decode_span(&span).unwrap(), None);
    }

    /// The MCP Python SDK 2.x server's own span: a foreign call, classified like the proxy does.
    #[test]
    fn sdk_server_spans_are_foreign_calls_with_the_write_classification() {
        let span = Span {
            name: "tools/call delete_note".into(),
            kind: SpanKind::Server as i32,
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            parent_span_id: vec![3; 8],
            attributes: vec![
                kv("mcp.method.name", s("tools/call")),
                kv("mcp.protocol.version", s("2025-11-25")),
                kv("jsonrpc.request.id", s("3")),
                kv("gen_ai.operation.name", s("execute_tool")),
                kv("gen_ai.tool.name", s("delete_note")),
                kv(
                    "gen_ai.tool.call.arguments",
                    s(r#"{"note_id":"n1","token":"sk-live-123456"}"#),
                ),
            ],
            ..Default::default()
        };
        let (call, origin) = decode_call(&span).unwrap().unwrap();
        assert_eq!(origin, Origin::ForeignServer);
        assert_eq!(call.operation_type(), Some(OperationType::Delete));
        assert_eq!(call.write.unwrap().resource_id.as_deref(), Some("n1"));
        assert!(
            !call.context.unwrap().to_string().contains("sk-live"),
            "redacted"
        );
        let mut read = span.clone();
        read.attributes[4] = kv("gen_ai.tool.name", s("get_note"));
        read.attributes.pop();
        assert_eq!(decode_call(&read).unwrap().unwrap().0.write, None);
        // Ours is never classified again: a read of ours stays a read.
        let mut ours = read.clone();
        ours.attributes[4] = kv("gen_ai.tool.name", s("archive_note"));
        ours.attributes.push(kv("mcp_otel.status", s("success")));
        let (call, origin) = decode_call(&ours).unwrap().unwrap();
        assert_eq!((origin, call.write), (Origin::Ours, None));
    }

    /// OpenLLMetry 0.62 on mcp 1.x: an INTERNAL `create_note.tool` span, traceloop names only.
    #[test]
    fn openllmetry_tool_spans_decode() {
        let span = Span {
            name: "create_note.tool".into(),
            kind: SpanKind::Internal as i32,
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            start_time_unix_nano: 1_700_000_000_000_000_000,
            end_time_unix_nano: 1_700_000_000_040_000_000,
            attributes: vec![
                kv("traceloop.span.kind", s("tool")),
                kv("traceloop.entity.name", s("create_note")),
                kv(
                    "traceloop.entity.input",
                    s(r#"{"tool_name":"create_note","arguments":{"id":"n7","text":"hi"}}"#),
                ),
                kv(
                    "traceloop.entity.output",
                    s(r#"{"result":"boom","is_error":true}"#),
                ),
                kv("error.type", s("tool_error")),
            ],
            status: Some(opentelemetry_proto::tonic::trace::v1::Status {
                code: StatusCode::Error as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        let (call, origin) = decode_call(&span).unwrap().unwrap();
        assert_eq!(origin, Origin::ForeignInternal);
        assert_eq!(call.tool_name, "create_note");
        assert_eq!(call.mcp.method, "tools/call");
        assert_eq!(call.status, Status::Error);
        assert_eq!(call.error_code.as_deref(), Some("tool_error"));
        assert_eq!(call.duration_ms, 40.0);
        assert_eq!(
            call.context,
            Some(serde_json::json!({"id": "n7", "text": "hi"}))
        );
        assert_eq!(call.operation_type(), Some(OperationType::Create));
        assert_eq!(call.write.unwrap().resource_id.as_deref(), Some("n7"));
        // Its other spans (`tools/list.mcp`, `ResponseStreamWriter`) are not calls.
        let other = Span {
            name: "tools/list.mcp".into(),
            attributes: vec![kv("traceloop.entity.input", s("{}"))],
            ..Default::default()
        };
        assert_eq!(decode_span(&other).unwrap(), None);
    }

    #[test]
    fn other_spans_are_not_tool_calls() {
        let span = Span {
            name: "GET /".into(),
            attributes: vec![kv("http.request.method", s("GET"))],
            ..Default::default()
        };
        assert_eq!(decode_span(&span).unwrap(), None);
        let list = Span {
            name: "tools/list".into(),
            attributes: vec![kv("mcp.method.name", s("tools/list"))],
            ..Default::default()
        };
        assert_eq!(decode_span(&list).unwrap(), None);
    }

    #[test]
    fn a_refused_request_counts_whatever_its_method() {
        // The proxy refused an `initialize` without a valid key: no tool, error_code 401.
        let refused = Span {
            name: "initialize".into(),
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            attributes: vec![
                kv("mcp.method.name", s("initialize")),
                kv("enduser.id", s("key:0badc0de")),
                kv("mcp_otel.status", s("error")),
                kv("mcp_otel.error_code", s("401")),
            ],
            ..Default::default()
        };
        let call = decode_span(&refused)
            .unwrap()
            .expect("a refused request is a call");
        assert_eq!(call.mcp.method, "initialize");
        assert_eq!(call.tool_name, "");
        assert_eq!(call.user, "key:0badc0de");
        assert_eq!(call.error_code.as_deref(), Some("401"));
        assert_eq!(call.status, Status::Error);
        // Other failures of other methods stay out.
        let failed_list = Span {
            name: "tools/list".into(),
            attributes: vec![
                kv("mcp.method.name", s("tools/list")),
                kv("mcp_otel.error_code", s("500")),
            ],
            ..Default::default()
        };
        assert_eq!(decode_span(&failed_list).unwrap(), None);
    }

    #[test]
    fn wrong_types_are_named() {
        let span = Span {
            name: "tools/call x".into(),
            attributes: vec![
                kv("mcp.method.name", s("tools/call")),
                kv("mcp_otel.user_confirmation", any_value::Value::IntValue(1)),
            ],
            ..Default::default()
        };
        let err = decode_span(&span).unwrap_err();
        assert_eq!(
            err.to_string(),
            "attribute `mcp_otel.user_confirmation` must be a bool, got an int"
        );
        let span = Span {
            name: "tools/call x".into(),
            trace_id: vec![1; 16],
            span_id: vec![1, 2, 3],
            attributes: vec![kv("mcp.method.name", s("tools/call"))],
            ..Default::default()
        };
        assert!(matches!(
            decode_span(&span),
            Err(DecodeError::BadId {
                field: "span_id",
                ..
            })
        ));
    }
}
