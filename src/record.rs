//! The one model of an observed MCP tool call.
//!
//! Every capture path (library, rmcp wrapper, proxy) produces a [`ToolCall`]; `emit` turns it
//! into a span and a JSON log line, and `collect::decode` turns a span back into it. The field
//! names and meanings follow the seed's log format (see `docs/design.md`, "The record").

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::str::FromStr;

/// `as_str`, `Display` and `FromStr` of a fieldless enum, from one table of its texts (the
/// values logs and span attributes carry): each text is written once, and parsing is the
/// inverse of printing, plus any older spellings listed after a `|`. `$field` names the field
/// in the parse error; the doc comment is `as_str`'s.
macro_rules! text_enum {
    (
        $(#[$doc:meta])*
        $ty:ident as $field:literal {
            $($variant:ident => $text:literal $(| $alias:literal)*,)+
        }
    ) => {
        impl $ty {
            $(#[$doc])*
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text $(| $alias)* => Ok($ty::$variant),)+
                    other => Err(UnknownValue::new($field, other)),
                }
            }
        }
    };
}

/// How a tool call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The call returned a result that is not an error.
    Success,
    /// The call failed: the tool reported an error, or a protocol or transport error (see
    /// `error_code`).
    Error,
    /// No answer within the call timeout.
    Timeout,
}

text_enum! {
    /// The lowercase text used in logs and span attributes (`success`, `error`, `timeout`).
    Status as "status" {
        Success => "success" | "ok",
        Error => "error",
        Timeout => "timeout",
    }
}

/// The `error_code` values this project writes itself (HTTP statuses and JSON-RPC codes pass
/// through as they came). One vocabulary for the library guard, the proxy and collect.
pub mod error_code {
    /// `result.isError: true`: the tool ran and reported a failure.
    pub const TOOL_ERROR: &str = "tool_error";
    /// No answer within the call timeout.
    pub const TIMEOUT: &str = "timeout";
    /// A call guard dropped without `finish`.
    pub const UNFINISHED: &str = "unfinished";
    /// The client cancelled the call (`notifications/cancelled`).
    pub const CANCELLED: &str = "cancelled";
    /// The server exited with the call in flight.
    pub const SERVER_EXITED: &str = "server_exited";
    /// The proxy was stopped by a signal with the call in flight.
    pub const PROXY_TERMINATED: &str = "proxy_terminated";
    /// An HTTP exchange ended without the call's answer.
    pub const NO_RESPONSE: &str = "no_response";
    /// The server exited, after the client had closed its side, without ever answering the
    /// call: it ignored the call (rather than dying with it in flight).
    pub const UNANSWERED: &str = "unanswered";
    /// The proxy stopped waiting for the call's answer: it was the oldest of more open calls
    /// than the proxy tracks (`MAX_PENDING`), and was given up to make room for a new one.
    pub const EVICTED: &str = "evicted";
    /// A task-augmented call whose task ended `failed`.
    pub const TASK_FAILED: &str = "task_failed";
    /// A task-augmented call whose result the proxy stopped waiting for: the task's `ttl` or
    /// the proxy's bound on open tasks (how long, how many) passed first.
    pub const TASK_EXPIRED: &str = "task_expired";
    /// HTTP 401: no or an unknown API key.
    pub const UNAUTHORIZED: &str = "401";
    /// HTTP 403.
    pub const FORBIDDEN: &str = "403";
    /// HTTP 429.
    pub const RATE_LIMITED: &str = "429";
    /// HTTP 502: the upstream could not be reached.
    pub const BAD_GATEWAY: &str = "502";

    /// 401 or 403: what `McpAuthFailures` counts.
    pub fn is_auth_failure(code: &str) -> bool {
        code == UNAUTHORIZED || code == FORBIDDEN
    }
}

/// How a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The call returned a normal result.
    Success,
    /// The tool ran and reported failure (`isError: true`).
    ToolError,
    /// A protocol or transport error: a JSON-RPC code (`-32602`), an HTTP status (`429`), or a
    /// short word (`cancelled`).
    Error(String),
    /// No answer within the call timeout.
    Timeout,
}

impl ToolCall {
    /// Ends the call: status and error code from `outcome`, and its duration. The one place
    /// where an outcome becomes a record (library guard, proxy observer, HTTP refusals).
    pub fn finish(&mut self, outcome: Outcome, duration: std::time::Duration) {
        let (status, code) = match outcome {
            Outcome::Success => (Status::Success, None),
            Outcome::ToolError => (Status::Error, Some(error_code::TOOL_ERROR.to_owned())),
            Outcome::Error(code) => (Status::Error, Some(code)),
            Outcome::Timeout => (Status::Timeout, Some(error_code::TIMEOUT.to_owned())),
        };
        self.status = status;
        self.error_code = code;
        self.duration_ms = duration.as_secs_f64() * 1000.0;
    }
}

/// What a write did. `Write` means "not read-only, but not classified further".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OperationType {
    /// The write made a new resource.
    Create,
    /// The write changed an existing resource.
    Update,
    /// The write removed a resource.
    Delete,
    /// Not read-only, kind unknown.
    Write,
}

text_enum! {
    /// The lowercase text used in logs and span attributes (`create`, `update`, `delete`, `write`).
    OperationType as "operation_type" {
        Create => "create",
        Update => "update",
        Delete => "delete",
        Write => "write",
    }
}

/// What became of a call's confirmation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfirmationOutcome {
    /// The user (or the client answering for them) approved the call.
    Accepted,
    /// The user said no: the call did not reach the server.
    Declined,
    /// The user dismissed the question: the call did not reach the server.
    Cancelled,
    /// No answer in time: the call did not reach the server.
    Timeout,
    /// The call needed confirmation but the client cannot be asked; the policy said what
    /// happened (denied, or run unconfirmed).
    UnsupportedClient,
    /// A confirmation policy is in force and this call is not gated by it.
    NotRequired,
}

impl ConfirmationOutcome {
    /// Every outcome, in declaration order.
    pub const ALL: [ConfirmationOutcome; 6] = [
        ConfirmationOutcome::Accepted,
        ConfirmationOutcome::Declined,
        ConfirmationOutcome::Cancelled,
        ConfirmationOutcome::Timeout,
        ConfirmationOutcome::UnsupportedClient,
        ConfirmationOutcome::NotRequired,
    ];

    /// What `user_confirmation` says for this outcome: true only for an acceptance, false
    /// when confirmation was needed and not given, unknown when none was needed.
    pub fn user_confirmation(self) -> Option<bool> {
        match self {
            ConfirmationOutcome::Accepted => Some(true),
            ConfirmationOutcome::NotRequired => None,
            _ => Some(false),
        }
    }
}

text_enum! {
    /// The snake_case text used in logs and span attributes (`accepted`, `unsupported_client`, …).
    ConfirmationOutcome as "confirmation.outcome" {
        Accepted => "accepted",
        Declined => "declined",
        Cancelled => "cancelled",
        Timeout => "timeout",
        UnsupportedClient => "unsupported_client",
        NotRequired => "not_required",
    }
}

/// How a confirmation was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfirmationSource {
    /// The proxy or the rmcp helper asked the client (`elicitation/create` or MRTR).
    Elicitation,
    /// The client's own `io.mcp-otel/user_confirmation` flag in `params._meta`.
    ClientFlag,
    /// The server's `io.mcp-otel/audit` block in `result._meta`.
    ServerAuditBlock,
}

text_enum! {
    /// The snake_case text used in logs and span attributes (`elicitation`, `client_flag`,
    /// `server_audit_block`).
    ConfirmationSource as "confirmation.source" {
        Elicitation => "elicitation",
        ClientFlag => "client_flag",
        ServerAuditBlock => "server_audit_block",
    }
}

/// What was asked before a call ran and what was answered. An accepted elicitation proves
/// that the client answered, not that a human read the question.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Confirmation {
    /// What became of the question (or why none was asked).
    pub outcome: ConfirmationOutcome,
    /// How the answer was obtained; `None` when nothing was asked (e.g. `not_required`) or the
    /// source is unknown.
    pub source: Option<ConfirmationSource>,
    /// `sha256:<hex>` of the canonical JSON of the arguments the question was about.
    pub arguments_digest: Option<String>,
    /// How long the answer took, from the question leaving to the answer arriving.
    pub wait_ms: Option<f64>,
}

impl Confirmation {
    /// An outcome and source, with no arguments digest or wait time yet.
    pub fn new(outcome: ConfirmationOutcome, source: Option<ConfirmationSource>) -> Self {
        Confirmation {
            outcome,
            source,
            arguments_digest: None,
            wait_ms: None,
        }
    }
}

/// `sha256:<hex>` over the canonical JSON of `arguments` (object keys sorted, no spaces;
/// absent arguments digest as `{}`): what an approval is bound to.
pub fn arguments_digest(arguments: Option<&Value>) -> String {
    use sha2::Digest;
    let empty = Value::Object(serde_json::Map::new());
    let text = canonical_json(arguments.unwrap_or(&empty));
    format!(
        "sha256:{}",
        crate::hex::encode(&sha2::Sha256::digest(text.as_bytes()))
    )
}

fn canonical_json(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let body: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", Value::String(k.clone()), canonical_json(&m[k])))
                .collect();
            format!("{{{}}}", body.join(","))
        }
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(canonical_json).collect::<Vec<_>>().join(",")
        ),
        other => other.to_string(),
    }
}

/// A value that is not one of a field's allowed values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` must be one of its allowed values, got {value:?}")]
pub struct UnknownValue {
    /// The field (or attribute key) whose value was rejected.
    pub field: &'static str,
    /// The rejected text.
    pub value: String,
}

impl UnknownValue {
    fn new(field: &'static str, value: &str) -> Self {
        UnknownValue {
            field,
            value: value.to_owned(),
        }
    }
}

/// How the MCP message reached the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// stdio: `network.transport = pipe`.
    Stdio,
    /// Streamable HTTP (or SSE): `network.transport = tcp`.
    Http,
}

impl Transport {
    /// The `network.transport` value the semantic conventions use.
    pub fn network_transport(self) -> &'static str {
        match self {
            Transport::Stdio => "pipe",
            Transport::Http => "tcp",
        }
    }

    /// Reverse of [`Transport::network_transport`].
    pub fn from_network_transport(s: &str) -> Option<Self> {
        match s {
            "pipe" | "stdio" => Some(Transport::Stdio),
            "tcp" | "http" => Some(Transport::Http),
            _ => None,
        }
    }
}

/// The write part of a call: absent for reads.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WriteOp {
    /// What kind of write; `None` when only other write facts are known.
    pub operation_type: Option<OperationType>,
    /// The id of the resource written (e.g. a task id), when the tool or server says.
    pub resource_id: Option<String>,
    /// The resource's state before the write (JSON), when known; subject to redaction.
    pub before_state: Option<Value>,
    /// The resource's state after the write (JSON), when known; subject to redaction.
    pub after_state: Option<Value>,
    /// `None` is "unknown", which is not the same as `Some(false)`.
    pub user_confirmation: Option<bool>,
}

impl WriteOp {
    /// A write of the given kind with nothing else known yet.
    pub fn new(operation_type: OperationType) -> Self {
        WriteOp {
            operation_type: Some(operation_type),
            ..WriteOp::default()
        }
    }

    /// Sets the id of the resource written.
    pub fn resource_id(mut self, id: impl Into<String>) -> Self {
        self.resource_id = Some(id.into());
        self
    }

    /// Sets the resource's state before the write.
    pub fn before(mut self, state: Value) -> Self {
        self.before_state = Some(state);
        self
    }

    /// Sets the resource's state after the write.
    pub fn after(mut self, state: Value) -> Self {
        self.after_state = Some(state);
        self
    }

    /// Sets whether the user confirmed the write (`None`: unknown).
    pub fn confirmed(mut self, confirmation: Option<bool>) -> Self {
        self.user_confirmation = confirmation;
        self
    }

    /// True when nothing about a write is recorded.
    pub fn is_empty(&self) -> bool {
        *self == WriteOp::default()
    }
}

/// MCP protocol facts about the call that MCP itself knows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct McpInfo {
    /// `tools/call` for tool calls.
    pub method: String,
    /// The JSON-RPC request id, as text (`7` or `"abc"` both become their text).
    pub request_id: Option<String>,
    /// `Mcp-Session-Id`, only for peers before 2026-07-28.
    pub session_id: Option<String>,
    /// The negotiated MCP protocol version (e.g. `2025-06-18`), when known.
    pub protocol_version: Option<String>,
    /// The client's `clientInfo.name` from `initialize`, when known.
    pub client_name: Option<String>,
    /// The client's `clientInfo.version` from `initialize`, when known.
    pub client_version: Option<String>,
    /// How the message reached the server (stdio or HTTP), when known.
    pub transport: Option<Transport>,
    /// `client.address`: the peer's address, for HTTP.
    pub client_address: Option<String>,
    /// The task id of a task-augmented call (MCP 2025-11-25 tasks): the call was answered
    /// with a task, and its outcome is the task's result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
}

/// A 16-byte trace id and 8-byte span id, plus the parent when the call continues a trace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceIds {
    /// The trace the call's span belongs to.
    pub trace_id: [u8; 16],
    /// The call's own span id.
    pub span_id: [u8; 8],
    /// All zeros when the span is a root.
    pub parent_span_id: [u8; 8],
}

impl TraceIds {
    /// Fresh random ids for a root span.
    pub fn random() -> Self {
        let mut ids = TraceIds::default();
        rand::fill(&mut ids.trace_id);
        rand::fill(&mut ids.span_id);
        // An all-zero id is invalid; the odds are negligible but the fix is free.
        ids.trace_id[0] |= 1;
        ids.span_id[0] |= 1;
        ids
    }

    /// Fresh span id inside an existing trace.
    pub fn child_of(trace_id: [u8; 16], parent_span_id: [u8; 8]) -> Self {
        let mut span_id = [0u8; 8];
        rand::fill(&mut span_id);
        span_id[0] |= 1;
        TraceIds {
            trace_id,
            span_id,
            parent_span_id,
        }
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        crate::hex::encode(&self.trace_id)
    }

    /// The span id as 16 lowercase hex digits.
    pub fn span_id_hex(&self) -> String {
        crate::hex::encode(&self.span_id)
    }

    /// True when the span continues a trace (the parent span id is not all zeros).
    pub fn has_parent(&self) -> bool {
        self.parent_span_id != [0u8; 8]
    }
}

/// One observed MCP tool call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// `params.name` of `tools/call`.
    pub tool_name: String,
    /// API-key name, user id or client identifier; never a raw key.
    pub user: String,
    /// Start of the call, UTC, millisecond precision in logs.
    pub timestamp: DateTime<Utc>,
    /// How the call ended.
    pub status: Status,
    /// Wall-clock time from the request to its answer (or to giving up), in milliseconds.
    pub duration_ms: f64,
    /// `401`, `429`, `-32602`, `tool_error`, `timeout`, …
    pub error_code: Option<String>,
    /// The call's arguments after redaction (a JSON object), e.g. `project_id`, `filters`.
    pub context: Option<Value>,
    /// The write facts, for a call that changed something; `None` for reads.
    pub write: Option<WriteOp>,
    /// MCP protocol facts: method, request id, session, client, transport.
    pub mcp: McpInfo,
    /// The call span's trace, span and parent ids.
    pub ids: TraceIds,
    /// Tool annotations as the server announced them, when known.
    pub read_only_hint: Option<bool>,
    /// The tool's `destructiveHint` annotation as the server announced it, when known.
    pub destructive_hint: Option<bool>,
    /// Opt-in only: the tool result (`gen_ai.tool.call.result`).
    pub result: Option<Value>,
    /// What was asked before the call ran, and answered; absent when nothing was asked and
    /// no policy applied.
    pub confirmation: Option<Confirmation>,
}

impl ToolCall {
    /// A call that starts now, for `tool` by `user`, with fresh root trace ids.
    pub fn new(tool_name: impl Into<String>, user: impl Into<String>) -> Self {
        Self::with_ids(tool_name, user, TraceIds::random())
    }

    /// [`ToolCall::new`] whose span ids are already known (a proxy that injected them, a
    /// caller's trace context): no random ids are drawn only to be replaced.
    pub fn with_ids(tool_name: impl Into<String>, user: impl Into<String>, ids: TraceIds) -> Self {
        ToolCall {
            tool_name: tool_name.into(),
            user: user.into(),
            timestamp: Utc::now(),
            status: Status::Success,
            duration_ms: 0.0,
            error_code: None,
            context: None,
            write: None,
            mcp: McpInfo {
                method: "tools/call".to_owned(),
                ..McpInfo::default()
            },
            ids,
            read_only_hint: None,
            destructive_hint: None,
            result: None,
            confirmation: None,
        }
    }

    /// The span name per the semantic conventions: `{mcp.method.name} {gen_ai.tool.name}`.
    pub fn span_name(&self) -> String {
        if self.tool_name.is_empty() {
            self.mcp.method.clone()
        } else {
            format!("{} {}", self.mcp.method, self.tool_name)
        }
    }

    /// The seed's timestamp format: RFC 3339, UTC, milliseconds, `Z`.
    pub fn timestamp_rfc3339(&self) -> String {
        self.timestamp.to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    /// The kind of write, when the call is a write.
    pub fn operation_type(&self) -> Option<OperationType> {
        self.write.as_ref().and_then(|w| w.operation_type)
    }

    /// True when the call is a write (its write facts name an operation type).
    pub fn is_write(&self) -> bool {
        self.operation_type().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_name_follows_semconv() {
        let call = ToolCall::new("create_task", "alice");
        assert_eq!(call.span_name(), "tools/call create_task");
    }

    #[test]
    fn the_arguments_digest_ignores_key_order() {
        let a = arguments_digest(Some(
            &serde_json::json!({"b": [1, {"y": 2, "x": 1}], "a": "s"}),
        ));
        let b = arguments_digest(Some(
            &serde_json::json!({"a": "s", "b": [1, {"x": 1, "y": 2}]}),
        ));
        assert_eq!(a, b);
        assert!(a.starts_with("sha256:") && a.len() == 7 + 64, "{a}");
        assert_ne!(a, arguments_digest(Some(&serde_json::json!({"a": "t"}))));
        assert_eq!(
            arguments_digest(None),
            arguments_digest(Some(&serde_json::json!({})))
        );
    }

    #[test]
    fn timestamp_has_millis_and_z() {
        let mut call = ToolCall::new("t", "u");
        call.timestamp = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.678901Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(call.timestamp_rfc3339(), "2026-01-02T03:04:05.678Z");
    }

    #[test]
    fn unknown_confirmation_is_not_false() {
        let w = WriteOp::new(OperationType::Delete);
        assert_eq!(w.user_confirmation, None);
        assert_ne!(w.clone().confirmed(Some(false)), w);
    }

    #[test]
    fn enums_parse_their_own_text() {
        for s in [Status::Success, Status::Error, Status::Timeout] {
            assert_eq!(s.as_str().parse::<Status>().unwrap(), s);
        }
        for o in [
            OperationType::Create,
            OperationType::Update,
            OperationType::Delete,
            OperationType::Write,
        ] {
            assert_eq!(o.as_str().parse::<OperationType>().unwrap(), o);
        }
        let err = "exploded".parse::<Status>().unwrap_err();
        assert!(err.to_string().contains("status"));
    }
}

/// Proptest strategies shared by the modules' tests.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    pub(crate) fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            (-1e9f64..1e9).prop_map(|f| json!(f)),
            "[a-zA-Z0-9 _é-]{0,16}".prop_map(Value::String),
            Just(json!("Bearer abcdefghijklmnop")),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof!["[a-z_]{1,8}", Just("token".to_owned())],
                    inner,
                    0..4
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn arb_object() -> impl Strategy<Value = Value> {
        prop::collection::btree_map("[a-z_]{1,8}", arb_json(), 0..4)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    }

    fn arb_write() -> impl Strategy<Value = WriteOp> {
        (
            prop_oneof![
                Just(OperationType::Create),
                Just(OperationType::Update),
                Just(OperationType::Delete),
                Just(OperationType::Write),
            ],
            proptest::option::of("[a-z0-9-]{1,12}"),
            proptest::option::of(arb_object()),
            proptest::option::of(arb_object()),
            proptest::option::of(any::<bool>()),
        )
            .prop_map(|(op, id, before, after, confirmed)| WriteOp {
                operation_type: Some(op),
                resource_id: id,
                before_state: before,
                after_state: after,
                user_confirmation: confirmed,
            })
    }

    fn arb_confirmation() -> impl Strategy<Value = Confirmation> {
        (
            prop::sample::select(ConfirmationOutcome::ALL.to_vec()),
            proptest::option::of(prop_oneof![
                Just(ConfirmationSource::Elicitation),
                Just(ConfirmationSource::ClientFlag),
                Just(ConfirmationSource::ServerAuditBlock),
            ]),
            proptest::option::of("sha256:[0-9a-f]{64}"),
            proptest::option::of((0u32..10_000_000).prop_map(|n| f64::from(n) / 1000.0)),
        )
            .prop_map(
                |(outcome, source, arguments_digest, wait_ms)| Confirmation {
                    outcome,
                    source,
                    arguments_digest,
                    wait_ms,
                },
            )
    }

    fn arb_mcp() -> impl Strategy<Value = McpInfo> {
        (
            proptest::option::of("[0-9a-z]{1,8}"),
            proptest::option::of("[0-9a-f]{32}"),
            proptest::option::of(prop_oneof![Just("2025-06-18"), Just("2026-07-28")]),
            proptest::option::of("[a-z-]{1,10}"),
            proptest::option::of("[0-9.]{1,6}"),
            proptest::option::of(prop_oneof![Just(Transport::Stdio), Just(Transport::Http)]),
            proptest::option::of("127\\.0\\.0\\.[0-9]{1,3}"),
            proptest::option::of("[0-9a-f-]{1,36}"),
        )
            .prop_map(
                |(request_id, session_id, version, cname, cver, transport, addr, task)| McpInfo {
                    method: "tools/call".to_owned(),
                    request_id,
                    session_id,
                    protocol_version: version.map(str::to_owned),
                    client_name: cname,
                    client_version: cver,
                    transport,
                    client_address: addr,
                    task_id: task,
                },
            )
    }

    /// Any tool call the capture side can produce.
    pub(crate) fn arb_tool_call() -> impl Strategy<Value = ToolCall> {
        (
            (
                "[a-z_]{1,16}",
                "[a-zA-Z0-9:@._-]{1,16}",
                0i64..4_000_000_000_000,
                0.0f64..1e6,
            ),
            (
                prop_oneof![
                    Just(Status::Success),
                    Just(Status::Error),
                    Just(Status::Timeout)
                ],
                proptest::option::of(prop_oneof![
                    Just("tool_error".to_owned()),
                    Just("-32602".to_owned()),
                    Just("-32603".to_owned()),
                    Just("429".to_owned()),
                    Just("timeout".to_owned()),
                    "[a-z_]{1,10}",
                ]),
            ),
            (
                proptest::option::of(arb_object()),
                proptest::option::of(arb_write()),
            ),
            (
                arb_mcp(),
                any::<([u8; 16], [u8; 8])>(),
                any::<Option<[u8; 8]>>(),
            ),
            (
                any::<Option<bool>>(),
                any::<Option<bool>>(),
                proptest::option::of(arb_json()),
                proptest::option::of(arb_confirmation()),
            ),
        )
            .prop_map(
                |(
                    (tool, user, ts_ms, duration_ms),
                    (status, error_code),
                    (context, write),
                    (mcp, (trace_id, span_id), parent),
                    (read_only, destructive, result, confirmation),
                )| {
                    let mut ids = TraceIds {
                        trace_id,
                        span_id,
                        parent_span_id: [0; 8],
                    };
                    ids.trace_id[0] |= 1;
                    ids.span_id[0] |= 1;
                    if let Some(p) = parent {
                        ids.parent_span_id = p;
                        ids.parent_span_id[0] |= 1;
                    }
                    ToolCall {
                        tool_name: tool,
                        user,
                        timestamp: DateTime::from_timestamp_millis(ts_ms).unwrap(),
                        status,
                        duration_ms,
                        error_code,
                        context,
                        write,
                        mcp,
                        ids,
                        read_only_hint: read_only,
                        destructive_hint: destructive,
                        result,
                        confirmation,
                    }
                },
            )
    }
}
