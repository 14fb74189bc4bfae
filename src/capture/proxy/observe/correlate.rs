//! The correlation state machine: requests paired with their answers by JSON-RPC id per
//! correlation scope (the stdio connection, or one HTTP exchange), in both directions (client
//! requests answered by the server, server-initiated requests answered by the client); session
//! state (the client's identity, the negotiated protocol version, the tool annotations from
//! `tools/list`) per session (the stdio connection, an `Mcp-Session-Id`, or a client for
//! stateless peers); and the end of each `tools/call`: outcome, classification, emit.

use super::event::{Direction, Event, Prepared, Scope, Unobserved};
use super::stats::ProxyStats;
use crate::capture::classify::{WriteEvidence, is_tool_error, resolve_write};
use crate::capture::context::{ids_from_meta, user_confirmation};
use crate::capture::proxy::config::ProxyConfig;
use crate::capture::proxy::confirm;
use crate::emit::Emitter;
use crate::record::{Confirmation, Outcome, ToolCall, Transport, error_code};
use crate::semconv as sc;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Open requests tracked at most, per direction: past this, new ones go unobserved (counted as
/// dropped observations) rather than growing memory without bound.
pub const MAX_PENDING: usize = 65_536;

/// What the observer needs to know besides the messages.
#[derive(Clone, Debug)]
pub struct ObserverConfig {
    pub tools: Arc<ProxyConfig>,
    pub transport: Transport,
    /// `--user` / `MCP_OTEL_USER`: wins over the client's name, loses to an API key's name.
    pub default_user: Option<String>,
    /// No response within this → status `timeout` (a late response is still relayed).
    pub call_timeout: Option<Duration>,
    /// Keep the tool result on the record (`gen_ai.tool.call.result`, opt-in).
    pub record_result: bool,
    /// Events queued before the relay starts dropping observations.
    pub queue_capacity: usize,
}

impl Default for ObserverConfig {
    fn default() -> Self {
        ObserverConfig {
            tools: Arc::default(),
            transport: Transport::Stdio,
            default_user: None,
            call_timeout: None,
            record_result: false,
            queue_capacity: 16_384,
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Hints {
    read_only: Option<bool>,
    destructive: Option<bool>,
}

#[derive(Debug, Default)]
struct Session {
    client_name: Option<String>,
    client_version: Option<String>,
    protocol_version: Option<String>,
    tools: HashMap<String, Hints>,
}

#[derive(Debug)]
struct OpenCall {
    call: ToolCall,
    started: Instant,
    arguments: Option<Value>,
    before: Option<Result<Value, String>>,
    confirmation: Option<bool>,
    gate: Option<Confirmation>,
    deadline: Option<Instant>,
}

#[derive(Debug)]
enum Kind {
    Initialize {
        client: Option<(String, Option<String>)>,
    },
    ToolsList,
    ToolsCall(Box<OpenCall>),
    Other,
}

#[derive(Debug)]
struct Pending {
    kind: Kind,
    session: Arc<str>,
}

/// How an open call ended.
enum Ending<'a> {
    Result(&'a Value),
    RpcError(i64),
    Code(String),
    Timeout,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    method: Option<String>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
    #[serde(borrow)]
    result: Option<&'a RawValue>,
    #[serde(borrow)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RpcError {
    code: i64,
}

/// The JSON-RPC id's canonical key (strings re-serialised, numbers as written).
fn id_key(raw: &RawValue) -> Option<String> {
    let text = raw.get().trim();
    match serde_json::from_str::<Value>(text).ok()? {
        Value::String(s) => serde_json::to_string(&s).ok(),
        Value::Number(_) => Some(text.to_owned()),
        _ => None,
    }
}

/// The id as the record shows it: `7` or `abc`.
fn id_text(key: &str) -> String {
    serde_json::from_str::<String>(key).unwrap_or_else(|_| key.to_owned())
}

fn str_field(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

pub(super) struct Observer {
    config: ObserverConfig,
    emitter: Emitter,
    stats: Arc<ProxyStats>,
    /// Wall clock at `base_instant`, to turn relay `Instant`s into timestamps.
    base_wall: DateTime<Utc>,
    base_instant: Instant,
    sessions: HashMap<Arc<str>, Session>,
    /// Annotations from any session: a fallback when a session never listed its tools.
    any_session_tools: HashMap<String, Hints>,
    /// Client requests awaiting the server's answer, by (scope, id).
    pending: HashMap<(u64, String), Pending>,
    /// Server-initiated requests awaiting the client's answer, by (session, id).
    server_pending: HashMap<(Arc<str>, String), Instant>,
    /// Calls already recorded as timed out or cancelled, so a late answer is not an orphan.
    closed: HashSet<(u64, String)>,
    next_deadline: Option<Instant>,
}

impl Observer {
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.next_deadline
    }

    pub(super) fn new(config: ObserverConfig, emitter: Emitter, stats: Arc<ProxyStats>) -> Self {
        Observer {
            config,
            emitter,
            stats,
            base_wall: Utc::now(),
            base_instant: Instant::now(),
            sessions: HashMap::new(),
            any_session_tools: HashMap::new(),
            pending: HashMap::new(),
            server_pending: HashMap::new(),
            closed: HashSet::new(),
            next_deadline: None,
        }
    }

    fn wall(&self, at: Instant) -> DateTime<Utc> {
        let offset = at.saturating_duration_since(self.base_instant);
        self.base_wall + chrono::Duration::from_std(offset).unwrap_or_default()
    }

    pub(super) fn handle(&mut self, event: Event) {
        match event {
            Event::Messages {
                scope,
                dir,
                bytes,
                at,
                prepared,
            } => {
                for line in bytes.split(|b| *b == b'\n') {
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    self.on_message(&scope, dir, line, at, &prepared);
                }
            }
            Event::Unobserved { why, .. } => {
                if why == Unobserved::Oversize {
                    ProxyStats::add(&self.stats.oversize, 1);
                } else {
                    ProxyStats::add(&self.stats.malformed, 1);
                }
            }
            Event::ExchangeFailed { corr, code, at } => {
                self.end_where(|(c, _), _| *c == corr, at, || Ending::Code(code.clone()));
            }
            Event::ExchangeEnded { corr, at } => {
                self.end_where(
                    |(c, _), _| *c == corr,
                    at,
                    || Ending::Code(error_code::NO_RESPONSE.into()),
                );
            }
            Event::SessionClosed { session } => {
                self.sessions.remove(&session);
            }
            Event::ServerExited { at } => {
                self.end_where(
                    |_, _| true,
                    at,
                    || Ending::Code(error_code::SERVER_EXITED.into()),
                );
            }
            Event::Record(call) => {
                ProxyStats::add(&self.stats.tool_calls, 1);
                self.emitter.emit(*call);
            }
            Event::Barrier(reply) => {
                let _ = reply.send(());
            }
        }
    }

    /// Ends every open call whose key matches.
    fn end_where<'e>(
        &mut self,
        matches: impl Fn(&(u64, String), &Pending) -> bool,
        at: Instant,
        ending: impl Fn() -> Ending<'e>,
    ) {
        for (_, open) in self.take_open(matches) {
            self.finish(*open, at, ending());
        }
    }

    /// Removes and returns the open tool calls whose key matches.
    fn take_open(
        &mut self,
        matches: impl Fn(&(u64, String), &Pending) -> bool,
    ) -> Vec<((u64, String), Box<OpenCall>)> {
        let keys: Vec<_> = self
            .pending
            .iter()
            .filter(|(k, p)| matches(k, p))
            .map(|(k, _)| k.clone())
            .collect();
        keys.into_iter()
            .filter_map(|key| match self.pending.remove(&key) {
                Some(Pending {
                    kind: Kind::ToolsCall(open),
                    ..
                }) => Some((key, open)),
                _ => None,
            })
            .collect()
    }

    fn on_message(
        &mut self,
        scope: &Arc<Scope>,
        dir: Direction,
        raw: &[u8],
        at: Instant,
        prepared: &[Prepared],
    ) {
        let first = raw.iter().find(|b| !b.is_ascii_whitespace()).copied();
        if first == Some(b'[') {
            match serde_json::from_slice::<Vec<&RawValue>>(raw) {
                Ok(items) => {
                    for item in items {
                        self.on_value(scope, dir, item.get().as_bytes(), at, prepared);
                    }
                }
                Err(_) => ProxyStats::add(&self.stats.malformed, 1),
            }
        } else {
            self.on_value(scope, dir, raw, at, prepared);
        }
    }

    fn on_value(
        &mut self,
        scope: &Arc<Scope>,
        dir: Direction,
        raw: &[u8],
        at: Instant,
        prepared: &[Prepared],
    ) {
        let counter = match dir {
            Direction::ClientToServer => &self.stats.messages_from_client,
            Direction::ServerToClient => &self.stats.messages_from_server,
        };
        ProxyStats::add(counter, 1);
        let Ok(env) = serde_json::from_slice::<Envelope>(raw) else {
            ProxyStats::add(&self.stats.malformed, 1);
            return;
        };
        let id = env.id.and_then(id_key);
        match (env.method, id) {
            (Some(method), Some(id)) => match dir {
                Direction::ClientToServer => {
                    self.on_client_request(scope, &method, id, env.params, at, prepared)
                }
                Direction::ServerToClient => {
                    ProxyStats::add(&self.stats.server_requests, 1);
                    if self.server_pending.len() < MAX_PENDING {
                        self.server_pending.insert((scope.session.clone(), id), at);
                    }
                }
            },
            (Some(method), None) => self.on_notification(scope, dir, &method, env.params, at),
            (None, Some(id)) if env.result.is_some() || env.error.is_some() => match dir {
                Direction::ServerToClient => {
                    self.on_server_response(scope, id, env.result, env.error, at)
                }
                Direction::ClientToServer => {
                    if self
                        .server_pending
                        .remove(&(scope.session.clone(), id))
                        .is_none()
                    {
                        ProxyStats::add(&self.stats.unmatched_responses, 1);
                    }
                }
            },
            _ => ProxyStats::add(&self.stats.malformed, 1),
        }
    }

    fn session(&mut self, key: &Arc<str>) -> &mut Session {
        self.sessions.entry(key.clone()).or_default()
    }

    fn on_client_request(
        &mut self,
        scope: &Arc<Scope>,
        method: &str,
        id: String,
        params: Option<&RawValue>,
        at: Instant,
        prepared: &[Prepared],
    ) {
        if self.pending.len() >= MAX_PENDING {
            ProxyStats::add(&self.stats.observe_dropped, 1);
            return;
        }
        let params: Option<Value> = match method {
            // Only these need their params; other requests are not parsed further.
            "initialize" | "tools/call" => params.and_then(|p| serde_json::from_str(p.get()).ok()),
            _ => params
                .and_then(|p| serde_json::from_str::<MetaOnly>(p.get()).ok())
                .and_then(|m| m.meta)
                .map(|meta| serde_json::json!({ "_meta": meta })),
        };
        let meta = params
            .as_ref()
            .and_then(|p| p.get(sc::MCP_META))
            .and_then(Value::as_object);
        self.learn_from_meta(&scope.session, meta);
        let kind = match method {
            "initialize" => {
                let p = params.as_ref();
                let client = p
                    .and_then(|p| p.get("clientInfo"))
                    .and_then(|c| Some((str_field(c, "name")?, str_field(c, "version"))));
                // Known now for requests that do not wait for the answer; over HTTP the
                // answer may name a new session, which learns it again then.
                if let Some((name, version)) = &client {
                    let s = self.session(&scope.session);
                    s.client_name = Some(name.clone());
                    s.client_version = version.clone();
                }
                Kind::Initialize { client }
            }
            "tools/list" => Kind::ToolsList,
            "tools/call" => {
                let Some(params) = params.as_ref() else {
                    ProxyStats::add(&self.stats.malformed, 1);
                    return;
                };
                let prep = prepared.iter().find(|p| p.id == *id);
                Kind::ToolsCall(Box::new(self.open_call(scope, &id, params, at, prep)))
            }
            _ => Kind::Other,
        };
        if let Kind::ToolsCall(open) = &kind
            && let Some(d) = open.deadline
        {
            self.next_deadline = Some(self.next_deadline.map_or(d, |n| n.min(d)));
        }
        self.pending.insert(
            (scope.corr, id),
            Pending {
                kind,
                session: scope.session.clone(),
            },
        );
    }

    /// Stateless peers carry their protocol version and client info in every request's `_meta`.
    fn learn_from_meta(&mut self, session: &Arc<str>, meta: Option<&Map<String, Value>>) {
        let Some(meta) = meta else { return };
        let version = meta.get(sc::META_PROTOCOL_VERSION).and_then(Value::as_str);
        let info = meta.get(sc::META_CLIENT_INFO);
        if version.is_none() && info.is_none() {
            return;
        }
        let s = self.session(session);
        if let Some(v) = version {
            s.protocol_version = Some(v.to_owned());
        }
        if let Some(info) = info {
            s.client_name = str_field(info, "name").or(s.client_name.take());
            s.client_version = str_field(info, "version").or(s.client_version.take());
        }
    }

    fn open_call(
        &mut self,
        scope: &Arc<Scope>,
        id: &str,
        params: &Value,
        at: Instant,
        prep: Option<&Prepared>,
    ) -> OpenCall {
        let tool = str_field(params, "name").unwrap_or_default();
        let meta = params.get(sc::MCP_META).and_then(Value::as_object);
        let session = self.sessions.get(&scope.session);
        let client_name = session.and_then(|s| s.client_name.clone());
        let user = scope
            .user
            .clone()
            .or_else(|| self.config.default_user.clone())
            .or_else(|| client_name.clone())
            .unwrap_or_else(|| "unknown".to_owned());
        let mut call = ToolCall::new(tool.clone(), user);
        call.timestamp = self.wall(at);
        call.ids = match prep {
            Some(p) => p.ids,
            None => ids_from_meta(meta),
        };
        call.mcp.request_id = Some(id_text(id));
        call.mcp.session_id = scope.session_id.clone();
        call.mcp.protocol_version = meta
            .and_then(|m| m.get(sc::META_PROTOCOL_VERSION))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| scope.protocol_version.clone())
            .or_else(|| session.and_then(|s| s.protocol_version.clone()));
        call.mcp.client_name = client_name;
        call.mcp.client_version = session.and_then(|s| s.client_version.clone());
        call.mcp.transport = Some(self.config.transport);
        call.mcp.client_address = scope.client_address.clone();
        let hints = session
            .and_then(|s| s.tools.get(&tool))
            .or_else(|| self.any_session_tools.get(&tool))
            .copied()
            .unwrap_or_default();
        call.read_only_hint = hints.read_only;
        call.destructive_hint = hints.destructive;
        let arguments = params.get("arguments").cloned();
        call.context = arguments.clone();
        OpenCall {
            call,
            started: at,
            arguments,
            before: prep.and_then(|p| p.before.clone()),
            confirmation: user_confirmation(meta),
            gate: prep.and_then(|p| p.confirmation.clone()),
            deadline: self.config.call_timeout.map(|t| at + t),
        }
    }

    fn on_notification(
        &mut self,
        scope: &Arc<Scope>,
        dir: Direction,
        method: &str,
        params: Option<&RawValue>,
        at: Instant,
    ) {
        if method != "notifications/cancelled" {
            return;
        }
        let Some(request_id) = params
            .and_then(|p| serde_json::from_str::<Cancelled>(p.get()).ok())
            .and_then(|c| c.request_id)
            .and_then(|r| id_key(&r))
        else {
            return;
        };
        match dir {
            Direction::ClientToServer => {
                let key = self.find_pending(scope, &request_id);
                if let Some(key) = key
                    && let Some(Pending {
                        kind: Kind::ToolsCall(open),
                        ..
                    }) = self.pending.remove(&key)
                {
                    self.finish(*open, at, Ending::Code(error_code::CANCELLED.into()));
                    self.remember_closed(key);
                }
            }
            Direction::ServerToClient => {
                self.server_pending
                    .remove(&(scope.session.clone(), request_id));
            }
        }
    }

    /// The open request `id` in this scope, else in this scope's session (a response or a
    /// cancellation can travel in another HTTP exchange than its request).
    fn find_pending(&self, scope: &Scope, id: &str) -> Option<(u64, String)> {
        let key = (scope.corr, id.to_owned());
        if self.pending.contains_key(&key) {
            return Some(key);
        }
        self.pending
            .iter()
            .find(|((_, i), p)| i == id && p.session == scope.session)
            .map(|(k, _)| k.clone())
    }

    fn remember_closed(&mut self, key: (u64, String)) {
        if self.closed.len() > 10_000 {
            self.closed.clear();
        }
        self.closed.insert(key);
    }

    fn on_server_response(
        &mut self,
        scope: &Arc<Scope>,
        id: String,
        result: Option<&RawValue>,
        error: Option<&RawValue>,
        at: Instant,
    ) {
        let Some(key) = self.find_pending(scope, &id) else {
            let key = (scope.corr, id);
            if self.closed.remove(&key) {
                ProxyStats::add(&self.stats.late_responses, 1);
            } else {
                ProxyStats::add(&self.stats.unmatched_responses, 1);
            }
            return;
        };
        let Some(pending) = self.pending.remove(&key) else {
            return;
        };
        let error_code = error
            .and_then(|e| serde_json::from_str::<RpcError>(e.get()).ok())
            .map(|e| e.code);
        match pending.kind {
            Kind::Initialize { client } => {
                let version = result
                    .and_then(|r| serde_json::from_str::<Value>(r.get()).ok())
                    .and_then(|r| str_field(&r, "protocolVersion"));
                // Over HTTP the session id is assigned in this response: learn into its session.
                let s = self.session(&scope.session);
                if let Some((name, version)) = client {
                    s.client_name = Some(name);
                    s.client_version = version;
                }
                if version.is_some() {
                    s.protocol_version = version;
                }
            }
            Kind::ToolsList => {
                if let Some(r) = result {
                    self.learn_tools(&scope.session, r);
                }
            }
            Kind::ToolsCall(open) => {
                if let Some(code) = error_code {
                    self.finish(*open, at, Ending::RpcError(code));
                } else {
                    match result.and_then(|r| serde_json::from_str::<Value>(r.get()).ok()) {
                        Some(v) => self.finish(*open, at, Ending::Result(&v)),
                        None => self.finish(*open, at, Ending::Code("malformed_response".into())),
                    }
                }
            }
            Kind::Other => {}
        }
    }

    fn learn_tools(&mut self, session: &Arc<str>, result: &RawValue) {
        let Ok(list) = serde_json::from_str::<ToolList>(result.get()) else {
            return;
        };
        let mut learned = Vec::with_capacity(list.tools.len());
        for t in list.tools {
            let a = t.annotations.unwrap_or_default();
            learned.push((
                t.name,
                Hints {
                    read_only: a.read_only_hint,
                    destructive: a.destructive_hint,
                },
            ));
        }
        for (name, hints) in &learned {
            self.any_session_tools.insert(name.clone(), *hints);
        }
        self.session(session).tools.extend(learned);
    }

    pub(super) fn expire(&mut self, now: Instant) {
        let due = |_: &(u64, String), p: &Pending| matches!(&p.kind, Kind::ToolsCall(o) if o.deadline.is_some_and(|d| d <= now));
        for (key, open) in self.take_open(due) {
            let end = open.deadline.unwrap_or(now);
            self.finish(*open, end, Ending::Timeout);
            self.remember_closed(key);
        }
        self.next_deadline = self
            .pending
            .values()
            .filter_map(|p| match &p.kind {
                Kind::ToolsCall(o) => o.deadline,
                _ => None,
            })
            .min();
    }

    fn finish(&mut self, open: OpenCall, at: Instant, ending: Ending<'_>) {
        let OpenCall {
            mut call,
            started,
            arguments,
            before,
            confirmation,
            gate,
            ..
        } = open;
        let tool_config = self.config.tools.tool(&call.tool_name);
        let (result, rpc_error) = match &ending {
            Ending::Result(r) => (Some(*r), None),
            Ending::RpcError(c) => (None, Some(*c)),
            _ => (None, None),
        };
        let outcome = match &ending {
            Ending::Result(r) if is_tool_error(r) => Outcome::ToolError,
            Ending::Result(_) => Outcome::Success,
            Ending::RpcError(c) => Outcome::Error(c.to_string()),
            Ending::Code(c) => Outcome::Error(c.clone()),
            Ending::Timeout => Outcome::Timeout,
        };
        call.finish(outcome, at.saturating_duration_since(started));
        call.write = resolve_write(WriteEvidence {
            tool: &call.tool_name,
            configured: tool_config.and_then(|t| t.classification),
            configured_resource: tool_config.and_then(|t| t.resource_id.as_deref()),
            result,
            rpc_error,
            read_only: call.read_only_hint,
            arguments: arguments.as_ref(),
            before_state: before.and_then(Result::ok),
            confirmation,
            ..Default::default()
        });
        confirm::settle(
            &mut call,
            gate,
            confirmation,
            self.config.tools.has_confirmation(),
        );
        let result_value = result;
        if self.config.record_result
            && let Some(r) = result_value
        {
            call.result = Some(r.clone());
        }
        ProxyStats::add(&self.stats.tool_calls, 1);
        self.emitter.emit(call);
    }
}

/// The tools in a `tools/list` result, and only what the observer uses.
#[derive(Deserialize)]
struct ToolList {
    tools: Vec<ListedTool>,
}

#[derive(Deserialize)]
struct ListedTool {
    name: String,
    annotations: Option<Annotations>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Annotations {
    read_only_hint: Option<bool>,
    destructive_hint: Option<bool>,
}

#[derive(Deserialize)]
struct MetaOnly {
    #[serde(rename = "_meta")]
    meta: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Cancelled {
    request_id: Option<Box<RawValue>>,
}
