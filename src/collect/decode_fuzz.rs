//! Fuzzing the OTLP decoder: arbitrary bytes, mutations of valid exports (protobuf and OTLP/JSON,
//! the two bodies the receivers take) and structure-aware spans whose attributes use the keys the
//! decoder reads with values of every type. Bounded: a fixed case count per target (raise it
//! with `MCP_OTEL_FUZZ_CASES` for a longer run); the whole module runs in a few seconds.
//!
//! Properties: nothing panics; a request that decodes gives calls whose JSON log line is valid
//! JSON; a decoded call re-encoded as our span decodes to itself (what collect stores and
//! forwards is stable).

use super::decode::{decode_call, decode_request};
use crate::emit::log::to_line;
use crate::emit::{SpanOptions, to_span};
use crate::record::tests_support::arb_tool_call;
use crate::semconv as sc;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, KeyValue, KeyValueList, any_value,
};
use opentelemetry_proto::tonic::trace::v1::{Span, Status};
use proptest::prelude::*;
use prost::Message;

/// Cases per target: `MCP_OTEL_FUZZ_CASES` or `default`.
pub(crate) fn cases(default: u32) -> ProptestConfig {
    let n = std::env::var("MCP_OTEL_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases: n,
        // Shrinking a failure is bounded too, so a failing run still ends.
        max_shrink_time: 20_000,
        ..ProptestConfig::default()
    }
}

/// One byte-level edit of a valid input.
#[derive(Clone, Debug)]
pub(crate) enum Edit {
    Set(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
    /// Copies `len` bytes from one place to another (repeats a field, a length prefix, …).
    Splice(usize, usize, usize),
}

/// Bytes a mutation likes to insert: JSON and protobuf structure, and bytes that are not UTF-8.
pub(crate) fn interesting_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => any::<u8>(),
        1 => prop::sample::select(
            b"{}[]\",:\\ \n0-1e.tfn\x00\x7f\xff\xc3\x80\x08\x0a\x12\x1a\x22".to_vec()
        ),
    ]
}

pub(crate) fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let at = any::<usize>();
    let edit = prop_oneof![
        (at, interesting_byte()).prop_map(|(i, b)| Edit::Set(i, b)),
        (at, interesting_byte()).prop_map(|(i, b)| Edit::Insert(i, b)),
        at.prop_map(Edit::Remove),
        at.prop_map(Edit::Truncate),
        (at, at, 1usize..64).prop_map(|(a, b, n)| Edit::Splice(a, b, n)),
    ];
    prop::collection::vec(edit, 1..6)
}

/// `bytes` with `edits` applied (positions taken modulo the length).
pub(crate) fn mutate(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let n = bytes.len();
        match *e {
            Edit::Set(i, b) if n > 0 => bytes[i % n] = b,
            Edit::Insert(i, b) => bytes.insert(i % (n + 1), b),
            Edit::Remove(i) if n > 0 => {
                bytes.remove(i % n);
            }
            Edit::Truncate(i) => bytes.truncate(i % (n + 1)),
            Edit::Splice(from, to, len) if n > 0 => {
                let from = from % n;
                let piece = bytes[from..(from + len).min(n)].to_vec();
                let to = to % (n + 1);
                bytes.splice(to..to, piece);
            }
            _ => {}
        }
    }
    bytes
}

use super::testing::export_request as request;

/// Every key the decoder reads, and some it does not.
fn key() -> impl Strategy<Value = String> {
    let known = [
        sc::MCP_METHOD_NAME,
        sc::GEN_AI_TOOL_NAME,
        sc::GEN_AI_OPERATION_NAME,
        sc::ENDUSER_ID,
        "user.id",
        sc::STATUS,
        sc::DURATION_MS,
        sc::ERROR_CODE,
        sc::ERROR_TYPE,
        sc::RPC_RESPONSE_STATUS_CODE,
        sc::JSONRPC_REQUEST_ID,
        sc::MCP_PROTOCOL_VERSION,
        sc::MCP_SESSION_ID,
        sc::CLIENT_ADDRESS,
        sc::CLIENT_NAME,
        sc::CLIENT_VERSION,
        sc::TASK_ID,
        sc::NETWORK_TRANSPORT,
        sc::CONTEXT,
        sc::GEN_AI_TOOL_CALL_ARGUMENTS,
        sc::GEN_AI_TOOL_CALL_RESULT,
        sc::OPERATION_TYPE,
        sc::RESOURCE_ID,
        sc::BEFORE_STATE,
        sc::AFTER_STATE,
        sc::USER_CONFIRMATION,
        sc::CONFIRMATION_OUTCOME,
        sc::CONFIRMATION_SOURCE,
        sc::CONFIRMATION_ARGUMENTS_DIGEST,
        sc::CONFIRMATION_WAIT_MS,
        sc::TOOL_READ_ONLY,
        sc::TOOL_DESTRUCTIVE,
        sc::TRACELOOP_SPAN_KIND,
        sc::TRACELOOP_ENTITY_NAME,
        sc::TRACELOOP_ENTITY_INPUT,
        sc::TRACELOOP_ENTITY_OUTPUT,
    ];
    prop_oneof![
        6 => prop::sample::select(known.to_vec()).prop_map(str::to_owned),
        1 => "[a-z_.]{0,12}",
    ]
}

/// Strings the decoder parses: enum spellings it knows, JSON (valid, nested, broken), secrets,
/// control characters, long runs.
fn text() -> impl Strategy<Value = String> {
    let words = [
        "tools/call",
        "initialize",
        "execute_tool",
        "tool",
        "success",
        "error",
        "timeout",
        "create",
        "update",
        "delete",
        "write",
        "accepted",
        "declined",
        "elicitation",
        "401",
        "403",
        "-32602",
        "_OTHER",
        "pipe",
        "tcp",
        "true",
        "false",
        "",
    ];
    prop_oneof![
        4 => prop::sample::select(words.to_vec()).prop_map(str::to_owned),
        2 => "\\PC{0,24}",
        2 => crate::record::tests_support::arb_json().prop_map(|v| v.to_string()),
        1 => (crate::record::tests_support::arb_json(), edits())
            .prop_map(|(v, e)| String::from_utf8_lossy(&mutate(v.to_string().into_bytes(), &e))
                .into_owned()),
        1 => (0usize..5, 1usize..3000).prop_map(|(d, n)| {
            // Deep or long: `[[[…]]]`, or a long string with a secret in it.
            if d == 0 {
                format!("{{\"password\":\"{}\"}}", "p".repeat(n))
            } else {
                format!("{}{}", "[".repeat(n.min(200)), "]".repeat(n.min(200)))
            }
        }),
    ]
}

fn any_value() -> impl Strategy<Value = Option<AnyValue>> {
    use any_value::Value as V;
    let leaf = prop_oneof![
        1 => any::<bool>().prop_map(V::BoolValue),
        1 => any::<i64>().prop_map(V::IntValue),
        1 => any::<f64>().prop_map(V::DoubleValue),
        1 => prop::collection::vec(any::<u8>(), 0..16).prop_map(V::BytesValue),
        1 => any::<i32>().prop_map(V::StringValueStrindex),
        1 => text().prop_map(V::StringValue),
    ];
    let nested = leaf.prop_recursive(2, 8, 3, |inner| {
        let inner = prop::option::of(inner.prop_map(|v| AnyValue { value: Some(v) }));
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(|v| V::ArrayValue(ArrayValue {
                values: v.into_iter().flatten().collect()
            })),
            prop::collection::vec(("[a-z]{0,4}", inner), 0..3).prop_map(|kv| {
                V::KvlistValue(KeyValueList {
                    values: super::decode::key_values(kv),
                })
            }),
        ]
    });
    // Mostly strings, the type of nearly every attribute, so that most spans decode and the
    // values get parsed; every other type now and then, which makes the span invalid.
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(AnyValue { value: None })),
        40 => text().prop_map(|t| Some(AnyValue { value: Some(V::StringValue(t)) })),
        3 => any::<bool>().prop_map(|b| Some(AnyValue { value: Some(V::BoolValue(b)) })),
        3 => any::<i64>().prop_map(|i| Some(AnyValue { value: Some(V::IntValue(i)) })),
        3 => nested.prop_map(|v| Some(AnyValue { value: Some(v) })),
    ]
}

fn id(len: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => prop::collection::vec(any::<u8>(), len),
        1 => prop::collection::vec(any::<u8>(), 0..20),
        1 => Just(vec![0; len]),
    ]
}

fn span() -> impl Strategy<Value = Span> {
    let name = prop_oneof![
        Just("tools/call delete_task".to_owned()),
        Just("tools/call".to_owned()),
        "\\PC{0,16}",
    ];
    let attribute = (key(), any_value()).prop_map(|(key, value)| KeyValue {
        key,
        value,
        ..Default::default()
    });
    // Most spans claim to be a call in one of the ways the decoder recognises (else it looks
    // no further), ours or foreign; the random attributes come after, and may contradict it.
    const CLAIMS: &[&[(&str, &str)]] = &[
        &[(sc::MCP_METHOD_NAME, "tools/call")],
        &[(sc::MCP_METHOD_NAME, "tools/call"), (sc::STATUS, "success")],
        &[
            (sc::GEN_AI_OPERATION_NAME, "execute_tool"),
            (sc::GEN_AI_TOOL_NAME, "x"),
        ],
        &[
            (sc::TRACELOOP_SPAN_KIND, "tool"),
            (sc::TRACELOOP_ENTITY_NAME, "x"),
        ],
        &[(sc::MCP_METHOD_NAME, "initialize"), (sc::ERROR_CODE, "401")],
        &[],
    ];
    let claim = prop::sample::select(CLAIMS);
    let attributes = (claim, prop::collection::vec(attribute, 0..8)).prop_map(|(claim, rest)| {
        let claim = claim.iter().map(|&(k, v)| KeyValue {
            key: k.to_owned(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.to_owned())),
            }),
            ..Default::default()
        });
        claim.chain(rest).collect::<Vec<_>>()
    });
    let times = prop_oneof![
        Just((1_700_000_000_000_000_000u64, 1_700_000_000_250_000_000u64)),
        (any::<u64>(), any::<u64>()),
    ];
    (
        name,
        prop_oneof![4 => Just(2i32), 1 => -1i32..7],
        id(16),
        id(8),
        id(8),
        times,
        attributes,
        prop::option::of(-1i32..4),
    )
        .prop_map(
            |(name, kind, trace_id, span_id, parent, (start, end), attributes, status)| Span {
                name,
                kind,
                trace_id,
                span_id,
                parent_span_id: parent,
                start_time_unix_nano: start,
                end_time_unix_nano: end,
                attributes,
                status: status.map(|code| Status {
                    code,
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
}

/// What must hold for any request: decoding does not panic, the counts add up, every call it
/// gives has a JSON log line that parses, and re-encoding a call as our span decodes to the
/// same call.
fn check(req: &ExportTraceServiceRequest) -> Result<(), TestCaseError> {
    let d = decode_request(req);
    prop_assert_eq!(
        d.received,
        d.calls.len() as u64 + d.ignored + d.invalid,
        "every span is a call, ignored or invalid"
    );
    prop_assert_eq!(d.calls.len(), d.origins.len());
    for call in &d.calls {
        let line = to_line(call);
        let parsed: Result<serde_json::Value, _> = serde_json::from_str(line.trim_end());
        prop_assert!(parsed.is_ok(), "log line is not JSON: {}", line);
        let opts = SpanOptions {
            record_result: true,
            ..SpanOptions::default()
        };
        let again: Span = to_span(call, &opts).into();
        let again = decode_call(&again);
        prop_assert!(
            matches!(&again, Ok(Some((c, _))) if c == call),
            "a decoded call re-encoded as our span decodes to itself:\n{:?}\n{:?}",
            call,
            again
        );
    }
    Ok(())
}

/// Protobuf bytes of one export of `calls` as our exporters send them.
fn our_export(calls: &[crate::record::ToolCall]) -> ExportTraceServiceRequest {
    let opts = SpanOptions {
        record_result: true,
        ..SpanOptions::default()
    };
    request(calls.iter().map(|c| to_span(c, &opts).into()).collect())
}

proptest! {
    #![proptest_config(cases(2000))]

    /// Arbitrary bytes as an OTLP/HTTP protobuf body.
    #[test]
    fn arbitrary_protobuf_bodies(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(req) = ExportTraceServiceRequest::decode(&bytes[..]) {
            check(&req)?;
        }
    }

    /// Arbitrary bytes as an OTLP/HTTP JSON body.
    #[test]
    fn arbitrary_json_bodies(bytes in prop::collection::vec(interesting_byte(), 0..256)) {
        if let Ok(req) = serde_json::from_slice::<ExportTraceServiceRequest>(&bytes) {
            check(&req)?;
        }
    }
}

proptest! {
    #![proptest_config(cases(1000))]

    /// Spans built from every attribute the decoder reads, with values of every type.
    #[test]
    fn structured_spans(spans in prop::collection::vec(span(), 1..4)) {
        check(&request(spans))?;
    }

    /// Our own exports, protobuf, with a few bytes changed.
    #[test]
    fn mutated_protobuf_exports(
        calls in prop::collection::vec(arb_tool_call(), 1..3),
        edits in edits(),
    ) {
        let valid = our_export(&calls);
        let bytes = valid.encode_to_vec();
        // Unchanged, it decodes to the calls sent (redaction aside, which they do not need).
        let same = ExportTraceServiceRequest::decode(&bytes[..]).unwrap();
        prop_assert_eq!(decode_request(&same).calls.len(), calls.len());
        if let Ok(req) = ExportTraceServiceRequest::decode(&mutate(bytes, &edits)[..]) {
            check(&req)?;
        }
    }

    /// Our own exports as OTLP/JSON, with a few bytes changed.
    #[test]
    fn mutated_json_exports(
        calls in prop::collection::vec(arb_tool_call(), 1..3),
        edits in edits(),
    ) {
        let valid = our_export(&calls);
        let bytes = serde_json::to_vec(&valid).unwrap();
        let same: ExportTraceServiceRequest = serde_json::from_slice(&bytes).unwrap();
        prop_assert_eq!(&same, &valid, "OTLP/JSON round trip");
        if let Ok(req) = serde_json::from_slice::<ExportTraceServiceRequest>(&mutate(bytes, &edits)) {
            check(&req)?;
        }
    }
}

/// The cases the fuzzing above found, kept as plain tests (proptest also replays them from
/// `proptest-regressions/collect/decode_fuzz.txt`).
mod found {
    use super::*;
    use crate::record::ToolCall;

    fn kv(key: &str, v: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    fn call_span(attributes: Vec<KeyValue>) -> Span {
        Span {
            name: "tools/call delete_task".into(),
            kind: 2,
            trace_id: vec![1; 16],
            span_id: vec![1; 8],
            start_time_unix_nano: 1_700_000_000_000_000_000,
            end_time_unix_nano: 1_700_000_000_250_000_000,
            attributes,
            ..Default::default()
        }
    }

    fn s(v: &str) -> any_value::Value {
        any_value::Value::StringValue(v.to_owned())
    }

    /// `mcp_otel.duration_ms = 5.5e289` panicked in `to_span` (`Duration::from_secs_f64`).
    #[test]
    fn a_duration_no_clock_can_have_does_not_panic() {
        let span = call_span(vec![
            kv(sc::MCP_METHOD_NAME, s("tools/call")),
            kv(sc::DURATION_MS, any_value::Value::DoubleValue(5.5e289)),
        ]);
        check(&request(vec![span])).unwrap();
        let mut call = ToolCall::new("x", "alice");
        call.duration_ms = f64::MAX;
        let _ = to_span(&call, &SpanOptions::default());
    }

    /// An empty `user.id` was stored as the user "" (and came back "unknown" once forwarded).
    #[test]
    fn an_empty_user_id_names_nobody() {
        let span = call_span(vec![
            kv(sc::MCP_METHOD_NAME, s("tools/call")),
            kv("user.id", s("")),
        ]);
        let (call, _) = decode_call(&span).unwrap().unwrap();
        assert_eq!(call.user, "unknown");
    }

    /// An int `mcp.method.name` beside `gen_ai.operation.name = execute_tool` was a call with
    /// method "0" (the call test reads the method only as a string): now it is invalid.
    #[test]
    fn a_method_that_is_not_a_string_is_invalid() {
        let span = call_span(vec![
            kv(sc::GEN_AI_OPERATION_NAME, s("execute_tool")),
            kv(sc::GEN_AI_TOOL_NAME, s("x")),
            kv(sc::MCP_METHOD_NAME, any_value::Value::IntValue(0)),
        ]);
        let e = decode_call(&span).unwrap_err();
        assert!(
            e.to_string().contains("`mcp.method.name` must be a string"),
            "{e}"
        );
    }
}
