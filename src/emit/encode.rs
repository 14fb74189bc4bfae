//! ToolCalls → the protobuf bytes of one OTLP `ExportTraceServiceRequest`, for the OTLP/gRPC
//! client ([`super::grpc`]).
//!
//! The bytes are the ones opentelemetry-otlp sends for the same calls (the SDK's `SpanData` from
//! [`super::span::into_span`], opentelemetry-proto's conversion, prost's encoding: a property
//! test holds the two to the same bytes), written straight from each [`ToolCall`] into a buffer
//! kept from batch to batch. No span, attribute or string is built on the way; the JSON texts
//! (arguments, states, result) are written into a second kept buffer first, for their length.
//! The attributes are [`into_span`](super::span::into_span)'s, in its order: a change to one is
//! a change to the other.

use super::span::{SCOPE, SpanOptions, system_time};
use crate::record::ToolCall;
use crate::semconv::{self as sc, map_error_ref};
use opentelemetry::trace::SpanKind;
use opentelemetry::{Array, Value};
use opentelemetry_sdk::Resource;
use std::time::{SystemTime, UNIX_EPOCH};

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

/// A varint is at most 10 bytes; a length (`usize` of a buffer) fits in 5 for any batch.
const MAX_LEN_VARINT: usize = 5;

/// The room kept between requests: a batch of 512 small calls takes about 200 KiB; the room of
/// a larger one (large arguments or results) is given back after it.
const KEPT_ROOM: usize = 1 << 20;

// Field numbers, from opentelemetry-proto's `.proto` files.
const REQUEST_RESOURCE_SPANS: u32 = 1;
const RESOURCE_SPANS_RESOURCE: u32 = 1;
const RESOURCE_SPANS_SCOPE_SPANS: u32 = 2;
const RESOURCE_SPANS_SCHEMA_URL: u32 = 3;
const SCOPE_SPANS_SCOPE: u32 = 1;
const SCOPE_SPANS_SPANS: u32 = 2;
const SCOPE_SPANS_SCHEMA_URL: u32 = 3;
const RESOURCE_ATTRIBUTES: u32 = 1;
const SCOPE_NAME: u32 = 1;
const SCOPE_VERSION: u32 = 2;
const SCOPE_ATTRIBUTES: u32 = 3;
const SPAN_TRACE_ID: u32 = 1;
const SPAN_SPAN_ID: u32 = 2;
const SPAN_PARENT_SPAN_ID: u32 = 4;
const SPAN_NAME: u32 = 5;
const SPAN_KIND: u32 = 6;
const SPAN_START: u32 = 7;
const SPAN_END: u32 = 8;
const SPAN_ATTRIBUTES: u32 = 9;
const SPAN_STATUS: u32 = 15;
const SPAN_FLAGS: u32 = 16;
const STATUS_MESSAGE: u32 = 2;
const STATUS_CODE: u32 = 3;
const KEY_VALUE_KEY: u32 = 1;
const KEY_VALUE_VALUE: u32 = 2;
const ANY_STRING: u32 = 1;
const ANY_BOOL: u32 = 2;
const ANY_INT: u32 = 3;
const ANY_DOUBLE: u32 = 4;
const ANY_ARRAY: u32 = 5;
const ARRAY_VALUES: u32 = 1;

/// `SpanFlags`: the sampled trace flag, and whether the parent is remote is known (and if so).
const FLAG_SAMPLED: u32 = 0x01;
const FLAG_HAS_IS_REMOTE: u32 = 0x100;
const FLAG_IS_REMOTE: u32 = 0x200;
const STATUS_CODE_ERROR: u64 = 2;

/// Writes export requests, keeping its buffers (and the encoded resource) between them.
#[derive(Debug)]
pub(crate) struct RequestEncoder {
    buf: Vec<u8>,
    json: Vec<u8>,
    head: Vec<u8>,
    /// The fields of the `Resource` message of every export, set by [`Self::set_resource`].
    resource: Vec<u8>,
    resource_schema_url: String,
    /// The fields of the `InstrumentationScope` message.
    scope: Vec<u8>,
    scope_schema_url: String,
}

impl Default for RequestEncoder {
    fn default() -> Self {
        let mut scope = Vec::new();
        string_field(&mut scope, SCOPE_NAME, SCOPE.name());
        string_field(
            &mut scope,
            SCOPE_VERSION,
            SCOPE.version().unwrap_or_default(),
        );
        for kv in SCOPE.attributes() {
            any_key_value(&mut scope, SCOPE_ATTRIBUTES, kv.key.as_str(), &kv.value);
        }
        RequestEncoder {
            buf: Vec::new(),
            json: Vec::new(),
            head: Vec::new(),
            resource: Vec::new(),
            resource_schema_url: String::new(),
            scope,
            scope_schema_url: SCOPE.schema_url().unwrap_or_default().to_owned(),
        }
    }
}

impl RequestEncoder {
    /// The resource the following requests carry (its attributes in `resource.iter()`'s order,
    /// as opentelemetry-proto's conversion takes them).
    pub(crate) fn set_resource(&mut self, resource: &Resource) {
        self.resource.clear();
        for (key, value) in resource.iter() {
            any_key_value(&mut self.resource, RESOURCE_ATTRIBUTES, key.as_str(), value);
        }
        self.resource_schema_url = resource.schema_url().unwrap_or_default().to_owned();
    }

    /// Gives back the room of a request larger than [`KEPT_ROOM`], once it is sent.
    pub(crate) fn release_large(&mut self) {
        for buf in [&mut self.buf, &mut self.json] {
            if buf.capacity() > KEPT_ROOM {
                *buf = Vec::new();
            }
        }
    }

    /// The request for `calls` (one resource, one scope, a span per call, in order).
    pub(crate) fn encode(&mut self, calls: &[ToolCall], options: &SpanOptions) -> &[u8] {
        // The spans are written first, behind room for the heads of the messages that hold
        // them, whose lengths are known only then: the heads go right before the spans.
        let room = 4 * (1 + MAX_LEN_VARINT) + self.resource.len() + self.scope.len();
        let buf = &mut self.buf;
        buf.clear();
        buf.resize(room, 0);
        for call in calls {
            span(buf, &mut self.json, call, options);
        }
        string_field(buf, SCOPE_SPANS_SCHEMA_URL, &self.scope_schema_url);
        let scope_spans = field_len(self.scope.len()) + (buf.len() - room);
        string_field(buf, RESOURCE_SPANS_SCHEMA_URL, &self.resource_schema_url);
        let resource_spans = field_len(self.resource.len())
            + field_len(scope_spans)
            + string_field_len(&self.resource_schema_url);

        let head = &mut self.head;
        head.clear();
        key(head, REQUEST_RESOURCE_SPANS, LEN);
        varint(head, resource_spans as u64);
        key(head, RESOURCE_SPANS_RESOURCE, LEN);
        varint(head, self.resource.len() as u64);
        head.extend_from_slice(&self.resource);
        key(head, RESOURCE_SPANS_SCOPE_SPANS, LEN);
        varint(head, scope_spans as u64);
        key(head, SCOPE_SPANS_SCOPE, LEN);
        varint(head, self.scope.len() as u64);
        head.extend_from_slice(&self.scope);
        let start = room - head.len();
        buf[start..room].copy_from_slice(head);
        &buf[start..]
    }
}

/// One `Span` of `ScopeSpans.spans`: what `into_span` builds for `call`, as prost writes it
/// (fields in number order, proto3 defaults left out).
fn span(buf: &mut Vec<u8>, json: &mut Vec<u8>, call: &ToolCall, options: &SpanOptions) {
    nested(buf, SCOPE_SPANS_SPANS, 2, |buf| {
        let ids = &call.ids;
        bytes_field(buf, SPAN_TRACE_ID, &ids.trace_id);
        bytes_field(buf, SPAN_SPAN_ID, &ids.span_id);
        if ids.has_parent() {
            bytes_field(buf, SPAN_PARENT_SPAN_ID, &ids.parent_span_id);
        }
        // `ToolCall::span_name`, without building it.
        let (method, tool) = (call.mcp.method.as_bytes(), call.tool_name.as_bytes());
        if tool.is_empty() {
            bytes_field(buf, SPAN_NAME, method);
        } else {
            key(buf, SPAN_NAME, LEN);
            varint(buf, (method.len() + 1 + tool.len()) as u64);
            buf.extend_from_slice(method);
            buf.push(b' ');
            buf.extend_from_slice(tool);
        }
        uint_field(buf, SPAN_KIND, span_kind(&options.kind));
        let (start, end) = system_time(call);
        fixed64_field(buf, SPAN_START, nanos(start));
        fixed64_field(buf, SPAN_END, nanos(end));
        attributes(buf, json, call, options);
        let mapping = map_error_ref(call.status, call.error_code.as_deref());
        nested(buf, SPAN_STATUS, 1, |buf| {
            if mapping.is_span_error {
                string_field(buf, STATUS_MESSAGE, mapping.error_type.unwrap_or_default());
                uint_field(buf, STATUS_CODE, STATUS_CODE_ERROR);
            }
        });
        let remote = if ids.has_parent() { FLAG_IS_REMOTE } else { 0 };
        key(buf, SPAN_FLAGS, FIXED32);
        buf.extend_from_slice(&(FLAG_SAMPLED | FLAG_HAS_IS_REMOTE | remote).to_le_bytes());
    });
}

/// The span's attributes, `into_span`'s in its order.
fn attributes(buf: &mut Vec<u8>, json: &mut Vec<u8>, call: &ToolCall, options: &SpanOptions) {
    let attr = |buf: &mut Vec<u8>, key: &str, value: Scalar<'_>| {
        key_value(buf, SPAN_ATTRIBUTES, key, value)
    };
    let text = |buf: &mut Vec<u8>, key: &str, value: &str| attr(buf, key, Scalar::Str(value));
    let mcp = &call.mcp;
    text(buf, sc::MCP_METHOD_NAME, &mcp.method);
    text(buf, sc::GEN_AI_TOOL_NAME, &call.tool_name);
    text(
        buf,
        sc::GEN_AI_OPERATION_NAME,
        sc::GEN_AI_OPERATION_EXECUTE_TOOL,
    );
    text(buf, sc::ENDUSER_ID, &call.user);
    text(buf, sc::STATUS, call.status.as_str());
    attr(buf, sc::DURATION_MS, Scalar::F64(call.duration_ms));
    let optional = [
        (sc::JSONRPC_REQUEST_ID, &mcp.request_id),
        (sc::MCP_PROTOCOL_VERSION, &mcp.protocol_version),
        (sc::MCP_SESSION_ID, &mcp.session_id),
        (sc::CLIENT_ADDRESS, &mcp.client_address),
        (sc::CLIENT_NAME, &mcp.client_name),
        (sc::CLIENT_VERSION, &mcp.client_version),
        (sc::TASK_ID, &mcp.task_id),
        (sc::ERROR_CODE, &call.error_code),
    ];
    for (key, value) in optional {
        if let Some(v) = value {
            text(buf, key, v);
        }
    }
    if let Some(t) = mcp.transport {
        text(buf, sc::NETWORK_TRANSPORT, t.network_transport());
    }
    let mapping = map_error_ref(call.status, call.error_code.as_deref());
    if let Some(t) = mapping.error_type {
        text(buf, sc::ERROR_TYPE, t);
    }
    if let Some(c) = mapping.rpc_status_code {
        text(buf, sc::RPC_RESPONSE_STATUS_CODE, c);
    }
    let mut json_attr = |buf: &mut Vec<u8>, keys: &[&str], value: &serde_json::Value| {
        json.clear();
        // Writing a `Value` into a `Vec` cannot fail; the text is its `to_string()`.
        let _ = serde_json::to_writer(&mut *json, value);
        for key in keys {
            key_value(buf, SPAN_ATTRIBUTES, key, Scalar::Bytes(json));
        }
    };
    if let Some(ctx) = &call.context {
        match options.record_arguments {
            true => json_attr(buf, &[sc::GEN_AI_TOOL_CALL_ARGUMENTS, sc::CONTEXT], ctx),
            false => json_attr(buf, &[sc::CONTEXT], ctx),
        }
    }
    if options.record_result
        && let Some(result) = &call.result
    {
        json_attr(buf, &[sc::GEN_AI_TOOL_CALL_RESULT], result);
    }
    if let Some(w) = &call.write {
        if let Some(op) = w.operation_type {
            key_value(
                buf,
                SPAN_ATTRIBUTES,
                sc::OPERATION_TYPE,
                Scalar::Str(op.as_str()),
            );
        }
        if let Some(id) = &w.resource_id {
            key_value(buf, SPAN_ATTRIBUTES, sc::RESOURCE_ID, Scalar::Str(id));
        }
        if let Some(s) = &w.before_state {
            json_attr(buf, &[sc::BEFORE_STATE], s);
        }
        if let Some(s) = &w.after_state {
            json_attr(buf, &[sc::AFTER_STATE], s);
        }
        if let Some(c) = w.user_confirmation {
            key_value(buf, SPAN_ATTRIBUTES, sc::USER_CONFIRMATION, Scalar::Bool(c));
        }
    }
    let flag = |buf: &mut Vec<u8>, key: &str, value: Option<bool>| {
        if let Some(v) = value {
            key_value(buf, SPAN_ATTRIBUTES, key, Scalar::Bool(v));
        }
    };
    flag(buf, sc::TOOL_READ_ONLY, call.read_only_hint);
    flag(buf, sc::TOOL_DESTRUCTIVE, call.destructive_hint);
    if let Some(c) = &call.confirmation {
        let text = |buf: &mut Vec<u8>, key: &str, value: &str| {
            key_value(buf, SPAN_ATTRIBUTES, key, Scalar::Str(value))
        };
        text(buf, sc::CONFIRMATION_OUTCOME, c.outcome.as_str());
        if let Some(s) = c.source {
            text(buf, sc::CONFIRMATION_SOURCE, s.as_str());
        }
        if let Some(d) = &c.arguments_digest {
            text(buf, sc::CONFIRMATION_ARGUMENTS_DIGEST, d);
        }
        if let Some(ms) = c.wait_ms {
            key_value(
                buf,
                SPAN_ATTRIBUTES,
                sc::CONFIRMATION_WAIT_MS,
                Scalar::F64(ms),
            );
        }
    }
}

/// opentelemetry-proto's `span::SpanKind` number.
fn span_kind(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

/// opentelemetry-proto's `to_nanos` (before the epoch is 0; past `u64` wraps as its `as` does).
fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64
}

/// The value of an attribute of ours: one `AnyValue` case.
#[derive(Clone, Copy)]
enum Scalar<'a> {
    Str(&'a str),
    /// A string value given as its UTF-8 bytes (a JSON text).
    Bytes(&'a [u8]),
    Bool(bool),
    I64(i64),
    F64(f64),
}

impl Scalar<'_> {
    /// The length of the `AnyValue` message holding it (a oneof: written even when zero).
    fn any_len(self) -> usize {
        match self {
            Scalar::Str(s) => field_len(s.len()),
            Scalar::Bytes(b) => field_len(b.len()),
            Scalar::Bool(_) => 2,
            Scalar::I64(n) => 1 + varint_len(n as u64),
            Scalar::F64(_) => 9,
        }
    }

    fn write_any(self, buf: &mut Vec<u8>) {
        match self {
            Scalar::Str(s) => len_field(buf, ANY_STRING, s.as_bytes()),
            Scalar::Bytes(b) => len_field(buf, ANY_STRING, b),
            Scalar::Bool(v) => {
                key(buf, ANY_BOOL, VARINT);
                buf.push(u8::from(v));
            }
            Scalar::I64(n) => {
                key(buf, ANY_INT, VARINT);
                varint(buf, n as u64);
            }
            Scalar::F64(x) => {
                key(buf, ANY_DOUBLE, FIXED64);
                buf.extend_from_slice(&x.to_le_bytes());
            }
        }
    }
}

/// A `KeyValue` in field `field`, its length computed, not patched.
fn key_value(buf: &mut Vec<u8>, field: u32, k: &str, value: Scalar<'_>) {
    let any = value.any_len();
    key(buf, field, LEN);
    varint(buf, (string_field_len(k) + field_len(any)) as u64);
    string_field(buf, KEY_VALUE_KEY, k);
    key(buf, KEY_VALUE_VALUE, LEN);
    varint(buf, any as u64);
    value.write_any(buf);
}

/// A `KeyValue` with any value the SDK has (the resource's and the scope's attributes).
fn any_key_value(buf: &mut Vec<u8>, field: u32, k: &str, value: &Value) {
    nested(buf, field, 1, |buf| {
        string_field(buf, KEY_VALUE_KEY, k);
        nested(buf, KEY_VALUE_VALUE, 1, |buf| any_value(buf, value));
    });
}

/// The fields of the `AnyValue` opentelemetry-proto makes of `value`.
fn any_value(buf: &mut Vec<u8>, value: &Value) {
    fn array<T>(buf: &mut Vec<u8>, values: &[T], each: impl Fn(&T) -> Value) {
        nested(buf, ANY_ARRAY, 1, |buf| {
            for v in values {
                nested(buf, ARRAY_VALUES, 1, |buf| any_value(buf, &each(v)));
            }
        });
    }
    match value {
        Value::Bool(v) => Scalar::Bool(*v).write_any(buf),
        Value::I64(v) => Scalar::I64(*v).write_any(buf),
        Value::F64(v) => Scalar::F64(*v).write_any(buf),
        Value::String(s) => Scalar::Str(s.as_str()).write_any(buf),
        Value::Array(Array::Bool(vs)) => array(buf, vs, |v| Value::Bool(*v)),
        Value::Array(Array::I64(vs)) => array(buf, vs, |v| Value::I64(*v)),
        Value::Array(Array::F64(vs)) => array(buf, vs, |v| Value::F64(*v)),
        Value::Array(Array::String(vs)) => array(buf, vs, |v| Value::String(v.clone())),
        // Kinds newer than opentelemetry 0.33 (its conversion panics on them): their text.
        other => Scalar::Str(&other.as_str()).write_any(buf),
    }
}

fn key(buf: &mut Vec<u8>, field: u32, wire: u32) {
    varint(buf, u64::from(field << 3 | wire));
}

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push(v as u8 | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    // 1 byte per 7 bits, at least one.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// The bytes a length-delimited field of `len` bytes takes (for the field numbers below 16
/// that hold these).
fn field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// [`field_len`] of a string field prost leaves out when empty.
fn string_field_len(s: &str) -> usize {
    if s.is_empty() { 0 } else { field_len(s.len()) }
}

/// A length-delimited field, written even when empty (a oneof case).
fn len_field(buf: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    key(buf, field, LEN);
    varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

/// A proto3 `string` or `bytes` field: left out when empty.
fn bytes_field(buf: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    if !bytes.is_empty() {
        len_field(buf, field, bytes);
    }
}

fn string_field(buf: &mut Vec<u8>, field: u32, s: &str) {
    bytes_field(buf, field, s.as_bytes());
}

/// A proto3 varint field (an enum, a count): left out when zero.
fn uint_field(buf: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        key(buf, field, VARINT);
        varint(buf, v);
    }
}

/// A proto3 `fixed64` field: left out when zero.
fn fixed64_field(buf: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        key(buf, field, FIXED64);
        buf.extend_from_slice(&v.to_le_bytes());
    }
}

/// A message in field `field`, written by `body` behind `reserve` bytes for its length, which
/// is patched in after (the body moved when its length takes more or fewer bytes).
fn nested(buf: &mut Vec<u8>, field: u32, reserve: usize, body: impl FnOnce(&mut Vec<u8>)) {
    key(buf, field, LEN);
    let at = buf.len();
    buf.resize(at + reserve, 0);
    body(buf);
    let len = buf.len() - at - reserve;
    let need = varint_len(len as u64);
    if need > reserve {
        buf.resize(buf.len() + need - reserve, 0);
        buf.copy_within(at + reserve..at + reserve + len, at + need);
    } else if need < reserve {
        buf.copy_within(at + reserve.., at + need);
        buf.truncate(at + need + len);
    }
    let mut v = len as u64;
    for b in &mut buf[at..at + need] {
        *b = v as u8 & 0x7f | if v >= 0x80 { 0x80 } else { 0 };
        v >>= 7;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emit::span::into_span;
    use crate::record::tests_support::arb_tool_call;
    use opentelemetry::KeyValue;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use proptest::prelude::*;
    use prost::Message;

    /// What opentelemetry-otlp's tonic exporter sends for `calls`.
    fn sdk_request(
        calls: &[ToolCall],
        options: &SpanOptions,
        resource: &Resource,
    ) -> ExportTraceServiceRequest {
        let spans = calls
            .iter()
            .map(|c| into_span(c.clone(), options))
            .collect();
        let resource = ResourceAttributesWithSchema::from(resource);
        ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(spans, &resource),
        }
    }

    fn resource() -> Resource {
        let base = Resource::builder()
            .with_service_name("svc")
            .with_attributes([
                KeyValue::new("count", 7),
                KeyValue::new("ratio", 0.5),
                KeyValue::new("on", true),
                KeyValue::new("list", Value::Array(vec![1i64, -2].into())),
                KeyValue::new("names", Value::Array(Array::String(vec!["a".into()]))),
                KeyValue::new("empty", ""),
            ])
            .build();
        // The resource the worker gives after a loss: the loss counts join it.
        Resource::builder_empty()
            .with_attributes(
                base.iter()
                    .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
                    .chain([KeyValue::new(sc::EXPORTER_SPANS_FAILED, 3)]),
            )
            .build()
    }

    fn arb_options() -> impl Strategy<Value = SpanOptions> {
        (
            prop_oneof![Just(SpanKind::Server), Just(SpanKind::Client)],
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(kind, record_arguments, record_result)| SpanOptions {
                kind,
                record_arguments,
                record_result,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Any batch of calls encodes to the bytes prost writes for the request today's
        /// exporter builds (and so decodes to it).
        #[test]
        fn the_bytes_are_what_opentelemetry_otlp_sends(
            calls in prop::collection::vec(arb_tool_call(), 1..6),
            options in arb_options(),
            schema in any::<bool>(),
        ) {
            let resource = match schema {
                true => Resource::builder_empty()
                    .with_schema_url([KeyValue::new("k", "v")], "https://example.com/s")
                    .build(),
                false => resource(),
            };
            let mut encoder = RequestEncoder::default();
            encoder.set_resource(&resource);
            let want = sdk_request(&calls, &options, &resource);
            let ours = encoder.encode(&calls, &options).to_vec();
            prop_assert_eq!(&ExportTraceServiceRequest::decode(&ours[..]).unwrap(), &want);
            prop_assert_eq!(ours, want.encode_to_vec());
            // The kept buffers carry nothing over into the next request.
            let again = encoder.encode(&calls[..1], &options).to_vec();
            prop_assert_eq!(again, sdk_request(&calls[..1], &options, &resource).encode_to_vec());
        }
    }

    #[test]
    fn lengths_that_need_more_or_fewer_bytes_than_reserved_are_moved() {
        let mut call = ToolCall::new("t", "u");
        let options = SpanOptions::default();
        let resource = Resource::builder_empty().build();
        let mut encoder = RequestEncoder::default();
        encoder.set_resource(&resource);
        for size in [0, 10, 200, 20_000, 3_000_000] {
            call.context = Some(serde_json::json!({ "a": "x".repeat(size) }));
            let calls = vec![call.clone(); if size < 1000 { 3 } else { 1 }];
            let ours = encoder.encode(&calls, &options).to_vec();
            assert_eq!(
                ours,
                sdk_request(&calls, &options, &resource).encode_to_vec(),
                "{size}"
            );
            encoder.release_large();
            assert!(
                encoder.buf.capacity() <= KEPT_ROOM,
                "{size}: the room is given back"
            );
        }
    }

    #[test]
    fn varint_lengths() {
        for v in [0u64, 1, 127, 128, 16_383, 16_384, u64::MAX] {
            let mut b = Vec::new();
            varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "{v}");
        }
    }
}
