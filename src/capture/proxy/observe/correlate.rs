//! The correlation state machine: requests paired with their answers by JSON-RPC id per
//! correlation scope (the stdio connection, or one HTTP exchange), in both directions (client
//! requests answered by the server, server-initiated requests answered by the client); session
//! state (the client's identity, the negotiated protocol version, the tool annotations from
//! `tools/list`) per session (the stdio connection, an `Mcp-Session-Id`, or a client for
//! stateless peers); and the end of each `tools/call`: outcome, classification, emit.
//!
//! Every open call ends exactly once (`docs/design.md`, "Exactly once"): by its answer, a
//! timeout, a cancellation, the id-less error that answers its batch, the server's exit, or the
//! end of its HTTP exchange. A task-augmented call (MCP 2025-11-25 tasks) is not ended by the
//! task its `tools/call` creates: it stays open under its task id until `tasks/result` answers,
//! or the task ends failed or cancelled. A call whose tool has no known annotations while a
//! `tools/list` of its session is under way waits (briefly) for that list before it is
//! classified.

use super::event::{Direction, Event, Prepared, Scope, Unobserved};
use super::message;
use super::stats::ProxyStats;
use crate::capture::classify::{WriteEvidence, is_tool_error, reads_result_state, resolve_write};
use crate::capture::context::{ids_from_meta, user_confirmation};
use crate::capture::proxy::config::ProxyConfig;
use crate::capture::proxy::confirm;
use crate::capture::proxy::envelope::Envelope as Scanned;
use crate::emit::Emitter;
use crate::record::{Confirmation, Outcome, ToolCall, Transport, error_code};
use crate::semconv as sc;
use chrono::{DateTime, Utc};
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Open requests tracked at most, per direction: past this, the oldest is given up to make room
/// (a `tools/call` among them is recorded as [`EVICTED`](error_code::EVICTED)), so memory stays
/// bounded and every new call is still recorded.
pub(crate) const MAX_PENDING: usize = 65_536;

/// Task-augmented calls kept open at most: past this, the oldest ends as `task_expired`.
pub(crate) const MAX_OPEN_TASKS: usize = 4_096;

/// How long a task-augmented call is kept open at most, whatever the task's `ttl` says.
pub(crate) const MAX_TASK_KEEP: Duration = Duration::from_secs(3_600);

/// How long a call with unknown annotations waits for a `tools/list` under way in its session.
pub(crate) const TOOLS_LIST_WAIT: Duration = Duration::from_secs(2);

/// Client batches remembered, to end their calls when one id-less error answers the batch.
const MAX_BATCHES: usize = 1_024;

/// What the observer needs to know besides the messages.
#[derive(Clone, Debug)]
pub struct ObserverConfig {
    /// Per-tool settings (write classification, annotations, confirmation) from the proxy's TOML.
    pub tools: Arc<ProxyConfig>,
    /// How the proxied calls travel: recorded as every call's `network.transport`.
    pub transport: Transport,
    /// `--user` / `MCP_OTEL_USER`: wins over the client's name, loses to an API key's name.
    pub default_user: Option<String>,
    /// No response within this → status `timeout` (a late response is still relayed).
    pub call_timeout: Option<Duration>,
    /// Keep the tool result on the record (`gen_ai.tool.call.result`, opt-in).
    pub record_result: bool,
    /// Events queued before the relay starts dropping observations.
    pub queue_capacity: usize,
    /// `--strict`: the relays never drop an observation; a call that cannot be recorded is
    /// refused instead of relayed (see [`ObserverHandle`](super::ObserverHandle)).
    pub strict: bool,
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
            strict: false,
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
    session: Arc<str>,
    started: Instant,
    before: Option<Result<Value, String>>,
    confirmation: Option<bool>,
    gate: Option<Confirmation>,
    deadline: Option<Instant>,
}

/// A task-augmented call: answered with a task, waiting for the task's result.
#[derive(Debug)]
struct OpenTask {
    open: Box<OpenCall>,
    /// When the proxy first saw the task `completed` (`tasks/get`, a status notification).
    completed_at: Option<Instant>,
    /// The task's `ttl`, capped by [`MAX_TASK_KEEP`].
    deadline: Instant,
}

/// A call that ended while its session's `tools/list` was under way: classified when the list
/// is in, or at `until`.
#[derive(Debug)]
struct Held {
    open: Box<OpenCall>,
    at: Instant,
    ending: Ending,
    until: Instant,
}

#[derive(Debug)]
enum Kind {
    Initialize {
        client: Option<(String, Option<String>)>,
    },
    ToolsList,
    ToolsCall(Box<OpenCall>),
    /// `tasks/result`: its answer is the task's call's outcome.
    TaskResult {
        task_id: String,
    },
    /// `tasks/get`, `tasks/cancel`: their answer is a task with its status.
    TaskQuery,
    Other,
}

#[derive(Debug)]
struct Pending {
    kind: Kind,
    session: Arc<str>,
    /// Opening order, for eviction.
    seq: u64,
}

/// How an open call ended.
#[derive(Debug)]
enum Ending {
    Result(Answer),
    RpcError(i64),
    Code(String),
    Timeout,
}

/// A `tools/call`'s result as the observer keeps it until the call is recorded.
#[derive(Debug)]
enum Answer {
    /// Parsed whole.
    Parsed(Value),
    /// An object without `_meta` and `task`, of which only `isError` was read: the record needs
    /// no more unless the call was a successful create or update (its state) or results are
    /// recorded, and then it is parsed whole ([`Answer::whole`]). Most calls never parse it.
    Unread {
        text: Box<str>,
        /// `isError: true`.
        tool_error: bool,
    },
}

/// What [`Answer::read`] takes of a result: the fields that decide whether it must be parsed.
#[derive(Deserialize)]
struct ResultHead<'a> {
    #[serde(rename = "isError", borrow)]
    is_error: Option<&'a RawValue>,
    #[serde(rename = "_meta", borrow)]
    meta: Option<&'a RawValue>,
    #[serde(borrow)]
    task: Option<&'a RawValue>,
}

/// Nesting depth at which serde_json gives up parsing a `Value` (its recursion limit).
const VALUE_DEPTH_LIMIT: usize = 128;

/// Whether `json` (valid JSON) nests arrays and objects as deep as [`VALUE_DEPTH_LIMIT`]: it
/// cannot be parsed into a `Value`, so the result is malformed as when it was parsed whole.
fn nests_too_deep(json: &str) -> bool {
    // Valid JSON that opens this many arrays and objects closes them too: a shorter text
    // cannot reach the limit.
    if json.len() < 2 * VALUE_DEPTH_LIMIT {
        return false;
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in json.as_bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth >= VALUE_DEPTH_LIMIT {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

impl Answer {
    /// A `tools/call` result: read for `isError` only when nothing else can need it now
    /// (`_meta` may hold an audit block, `task` opens a task), parsed whole otherwise. `None`:
    /// it cannot be parsed into a `Value` (`malformed_response`).
    fn read(text: &str) -> Option<Answer> {
        if text.starts_with('{')
            && let Ok(head) = serde_json::from_str::<ResultHead>(text)
            && head.meta.is_none()
            && head.task.is_none()
            && !nests_too_deep(text)
        {
            return Some(Answer::Unread {
                tool_error: head.is_error.is_some_and(|v| v.get() == "true"),
                text: text.into(),
            });
        }
        serde_json::from_str(text).ok().map(Answer::Parsed)
    }

    /// `result.isError: true` ([`is_tool_error`]).
    fn is_tool_error(&self) -> bool {
        match self {
            Answer::Parsed(v) => is_tool_error(v),
            Answer::Unread { tool_error, .. } => *tool_error,
        }
    }

    /// The result parsed whole.
    fn whole(self) -> Option<Value> {
        match self {
            Answer::Parsed(v) => Some(v),
            Answer::Unread { text, .. } => serde_json::from_str(&text).ok(),
        }
    }
}

/// Where messages were seen: their scope, which way they went, when, and what the relay
/// prepared for the calls among them.
#[derive(Clone, Copy)]
struct Seen<'a> {
    scope: &'a Arc<Scope>,
    dir: Direction,
    at: Instant,
    prepared: &'a [Prepared],
}

#[derive(Deserialize)]
struct RpcError {
    code: i64,
}

/// The JSON-RPC id's canonical key (strings re-serialised, numbers as written).
fn id_key(raw: &str) -> Option<String> {
    let text = raw.trim();
    // The usual ids, without a parse: an integer as JSON writes it (no leading zero), or a
    // string with no escape, whose re-serialised form is its text.
    let digits = text.strip_prefix('-').unwrap_or(text);
    let integer = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits.len() == 1 || !digits.starts_with('0'));
    let plain_string = text.len() >= 2
        && text.starts_with('"')
        && text.ends_with('"')
        && !text[1..text.len() - 1]
            .bytes()
            .any(|b| b == b'"' || b == b'\\' || b < 0x20);
    if integer || plain_string {
        return Some(text.to_owned());
    }
    match serde_json::from_str::<Value>(text).ok()? {
        Value::String(s) => serde_json::to_string(&s).ok(),
        Value::Number(_) => Some(text.to_owned()),
        _ => None,
    }
}

/// The id as the record shows it: `7` or `abc`.
fn id_text(key: &str) -> String {
    // Only a string id is decoded: a number's text is the id as shown (and a parse of it as a
    // string would build an error to throw away, at every call).
    match key.starts_with('"') {
        true => serde_json::from_str::<String>(key).unwrap_or_else(|_| key.to_owned()),
        false => key.to_owned(),
    }
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
    /// `pending`'s keys in opening order, with their `seq`: entries answered since are skipped
    /// when evicting, and compacted away.
    opened: VecDeque<(u64, (u64, String))>,
    next_seq: u64,
    /// Server-initiated requests awaiting the client's answer, by (session, id).
    server_pending: HashMap<(Arc<str>, String), Instant>,
    /// Calls already recorded as timed out or cancelled, so a late answer is not an orphan.
    closed: HashSet<(u64, String)>,
    next_deadline: Option<Instant>,
    /// Client batches with `tools/call`s: (scope, the calls' ids), oldest first.
    batches: VecDeque<(u64, Vec<String>)>,
    /// Task-augmented calls by (session, task id).
    tasks: HashMap<(Arc<str>, String), OpenTask>,
    /// Sessions with a `tools/list` under way, since when.
    listing: HashMap<Arc<str>, Instant>,
    held: Vec<Held>,
}

impl Observer {
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.next_deadline
    }

    /// Writes the JSON lines of the calls recorded so far.
    pub(super) fn flush_log(&self) {
        self.emitter.flush_log();
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
            opened: VecDeque::new(),
            next_seq: 0,
            server_pending: HashMap::new(),
            closed: HashSet::new(),
            next_deadline: None,
            batches: VecDeque::new(),
            tasks: HashMap::new(),
            listing: HashMap::new(),
            held: Vec::new(),
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
                let seen = Seen {
                    scope: &scope,
                    dir,
                    at,
                    prepared: &prepared,
                };
                let mut start = 0;
                let ends = memchr::memchr_iter(b'\n', &bytes).chain([bytes.len()]);
                for end in ends {
                    let line = &bytes[start..end];
                    start = end + 1;
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    self.on_message(&seen, line);
                }
            }
            Event::Oversize {
                scope,
                dir,
                at,
                envelope,
            } => self.on_oversize(&scope, dir, at, &envelope),
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
                // Its tasks' results can no longer be fetched.
                let gone: Vec<_> = self
                    .tasks
                    .keys()
                    .filter(|(s, _)| *s == session)
                    .cloned()
                    .collect();
                for key in gone {
                    if let Some(t) = self.tasks.remove(&key) {
                        let at = t.completed_at.unwrap_or_else(Instant::now);
                        self.finish(*t.open, at, Ending::Code(error_code::TASK_EXPIRED.into()));
                    }
                }
            }
            Event::ClientClosed { session } => {
                self.listing.remove(&session);
                self.release_held();
            }
            Event::ServerExited { at, client_closed } => {
                // After the client left, the server ending the session is no crash: what it
                // had not answered by then it ignored.
                let code = match client_closed {
                    true => error_code::UNANSWERED,
                    false => error_code::SERVER_EXITED,
                };
                self.end_all(at, code, error_code::SERVER_EXITED);
            }
            Event::Terminated { at } => {
                let code = error_code::PROXY_TERMINATED;
                self.end_all(at, code, code);
            }
            Event::Record(call) => {
                ProxyStats::add(&self.stats.tool_calls, 1);
                self.emitter.emit(*call);
            }
            Event::Barrier(reply) => {
                // Everything before the barrier is written, its log lines included.
                self.flush_log();
                let _ = reply.send(());
            }
        }
    }

    /// Ends everything still open: calls with `code`, task-augmented calls with `task_code`,
    /// and records the calls waiting for a `tools/list` (none can come any more).
    fn end_all(&mut self, at: Instant, code: &str, task_code: &str) {
        self.end_where(|_, _| true, at, || Ending::Code(code.into()));
        for (_, t) in std::mem::take(&mut self.tasks) {
            let end = t.completed_at.unwrap_or(at);
            self.finish(*t.open, end, Ending::Code(task_code.into()));
        }
        self.listing.clear();
        self.release_held();
    }

    /// Ends every open call whose key matches.
    fn end_where(
        &mut self,
        matches: impl Fn(&(u64, String), &Pending) -> bool,
        at: Instant,
        ending: impl Fn() -> Ending,
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

    /// One message, or a batch of them (a JSON array).
    fn on_message(&mut self, seen: &Seen<'_>, raw: &[u8]) {
        let first = raw.iter().find(|b| !b.is_ascii_whitespace()).copied();
        if first == Some(b'[') {
            match serde_json::from_slice::<Vec<&RawValue>>(raw) {
                Ok(items) => {
                    let mut calls = Vec::new();
                    for item in items {
                        if let Some(id) = self.on_value(seen, item.get().as_bytes()) {
                            calls.push(id);
                        }
                    }
                    if !calls.is_empty() {
                        if self.batches.len() >= MAX_BATCHES {
                            self.batches.pop_front();
                        }
                        self.batches.push_back((seen.scope.corr, calls));
                    }
                }
                Err(_) => ProxyStats::add(&self.stats.malformed, 1),
            }
        } else {
            self.on_value(seen, raw);
        }
    }

    /// One id-less error (`"id": null`, e.g. -32600) answering a client batch: the batch's
    /// calls end with it. The oldest batch of the scope with calls still open is the one.
    fn on_idless_error(&mut self, scope: &Scope, error: &str, at: Instant) {
        let code = serde_json::from_str::<RpcError>(error).map(|e| e.code);
        let open_in = |this: &Self, corr: u64, ids: &[String]| {
            ids.iter().any(|id| {
                matches!(
                    this.pending.get(&(corr, id.clone())),
                    Some(Pending {
                        kind: Kind::ToolsCall(_),
                        ..
                    })
                )
            })
        };
        let found = self
            .batches
            .iter()
            .position(|(corr, ids)| *corr == scope.corr && open_in(self, *corr, ids));
        let (Ok(code), Some(i)) = (code, found) else {
            ProxyStats::add(&self.stats.unmatched_responses, 1);
            return;
        };
        let (corr, ids) = self.batches.remove(i).expect("found above");
        let ids: HashSet<String> = ids.into_iter().collect();
        self.end_where(
            |(c, id), _| *c == corr && ids.contains(id),
            at,
            || Ending::RpcError(code),
        );
    }

    /// Handles one message; returns the id of the `tools/call` it opened, if it did.
    fn on_value(&mut self, seen: &Seen<'_>, raw: &[u8]) -> Option<String> {
        let Seen {
            scope,
            dir,
            at,
            prepared,
        } = *seen;
        let counter = match dir {
            Direction::ClientToServer => &self.stats.messages_from_client,
            Direction::ServerToClient => &self.stats.messages_from_server,
        };
        ProxyStats::add(counter, 1);
        let Some(env) = message::read(raw) else {
            ProxyStats::add(&self.stats.malformed, 1);
            return None;
        };
        let id = env.id.and_then(id_key);
        match (env.method, id) {
            (Some(method), Some(id)) => match dir {
                Direction::ClientToServer => {
                    let opened =
                        self.on_client_request(scope, &method, &id, env.params, at, prepared);
                    return opened.then_some(id);
                }
                Direction::ServerToClient => {
                    ProxyStats::add(&self.stats.server_requests, 1);
                    if self.server_pending.len() >= MAX_PENDING
                        && let Some(oldest) = self
                            .server_pending
                            .iter()
                            .min_by_key(|(_, at)| **at)
                            .map(|(k, _)| k.clone())
                    {
                        self.server_pending.remove(&oldest);
                    }
                    self.server_pending.insert((scope.session.clone(), id), at);
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
            (None, None) if dir == Direction::ServerToClient && env.error.is_some() => {
                self.on_idless_error(scope, env.error.expect("checked"), at)
            }
            _ => ProxyStats::add(&self.stats.malformed, 1),
        }
        None
    }

    fn session(&mut self, key: &Arc<str>) -> &mut Session {
        self.sessions.entry(key.clone()).or_default()
    }

    /// Returns whether the request opened a `tools/call`.
    fn on_client_request(
        &mut self,
        scope: &Arc<Scope>,
        method: &str,
        id: &str,
        params: Option<&str>,
        at: Instant,
        prepared: &[Prepared],
    ) -> bool {
        if self.pending.len() >= MAX_PENDING {
            self.evict_oldest(at);
        }
        let mut call_params = None;
        let params: Option<Value> = match method {
            "tools/call" => {
                call_params = params.and_then(CallParams::read);
                None
            }
            // Only these need their params; other requests are not parsed further.
            "initialize" | "tasks/result" | "tasks/get" | "tasks/cancel" => {
                params.and_then(|p| serde_json::from_str(p).ok())
            }
            _ => params
                .and_then(|p| serde_json::from_str::<MetaOnly>(p).ok())
                .and_then(|m| m.meta)
                .map(|meta| serde_json::json!({ "_meta": meta })),
        };
        let meta = match &call_params {
            Some(p) => p.meta.as_ref(),
            None => params
                .as_ref()
                .and_then(|p| p.get(sc::MCP_META))
                .and_then(Value::as_object),
        };
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
            "tools/list" => {
                self.listing.insert(scope.session.clone(), at);
                Kind::ToolsList
            }
            "tools/call" => {
                let Some(params) = call_params else {
                    ProxyStats::add(&self.stats.malformed, 1);
                    return false;
                };
                let prep = prepared.iter().find(|p| p.id == *id);
                Kind::ToolsCall(Box::new(self.open_call(scope, id, params, at, prep)))
            }
            "tasks/result" | "tasks/get" | "tasks/cancel" => {
                match params.as_ref().and_then(|p| str_field(p, "taskId")) {
                    Some(task_id) if method == "tasks/result" => Kind::TaskResult { task_id },
                    Some(_) => Kind::TaskQuery,
                    None => Kind::Other,
                }
            }
            _ => Kind::Other,
        };
        let opened = matches!(kind, Kind::ToolsCall(_));
        if let Kind::ToolsCall(open) = &kind
            && let Some(d) = open.deadline
        {
            self.note_deadline(d);
        }
        let key = (scope.corr, id.to_owned());
        self.next_seq += 1;
        self.opened.push_back((self.next_seq, key.clone()));
        if self.opened.len() > 2 * self.pending.len() + 1024 {
            let pending = &self.pending;
            self.opened
                .retain(|(seq, k)| pending.get(k).is_some_and(|p| p.seq == *seq));
        }
        self.pending.insert(
            key,
            Pending {
                kind,
                session: scope.session.clone(),
                seq: self.next_seq,
            },
        );
        opened
    }

    /// Gives up the oldest open request to make room: a `tools/call` is recorded as
    /// [`EVICTED`](error_code::EVICTED), and its answer, should it come, counts as late.
    fn evict_oldest(&mut self, at: Instant) {
        while let Some((seq, key)) = self.opened.pop_front() {
            if self.pending.get(&key).is_none_or(|p| p.seq != seq) {
                continue;
            }
            let Some(pending) = self.pending.remove(&key) else {
                continue;
            };
            ProxyStats::add(&self.stats.evicted, 1);
            if let Kind::ToolsCall(open) = pending.kind {
                self.finish(*open, at, Ending::Code(error_code::EVICTED.into()));
            }
            self.remember_closed(key);
            return;
        }
    }

    /// A message too large to observe whole, known by its envelope: a request opens its call
    /// (arguments capped to a marker), an answer ends its call.
    fn on_oversize(&mut self, scope: &Arc<Scope>, dir: Direction, at: Instant, e: &Scanned) {
        ProxyStats::add(&self.stats.oversize, 1);
        let counter = match dir {
            Direction::ClientToServer => &self.stats.messages_from_client,
            Direction::ServerToClient => &self.stats.messages_from_server,
        };
        ProxyStats::add(counter, 1);
        let raw = |v: Value| v.to_string();
        let id = e.id.clone().filter(|id| id != "null");
        if dir == Direction::ClientToServer && id.is_none() && e.is_cut_off_call() {
            return self.on_cut_off_call(scope, at, e);
        }
        match (dir, e.method.as_deref(), id) {
            (Direction::ClientToServer, Some(method), Some(id)) => {
                let params = match e.tool.as_deref() {
                    Some(tool) => serde_json::json!({
                        "name": tool,
                        "arguments": e.capped_arguments(),
                    }),
                    None => serde_json::json!({}),
                };
                let params = raw(params);
                self.on_client_request(scope, method, &id, Some(&params), at, &[]);
            }
            (Direction::ServerToClient, Some(_), Some(id)) => {
                ProxyStats::add(&self.stats.server_requests, 1);
                self.server_pending.insert((scope.session.clone(), id), at);
            }
            (_, Some(_), None) => {}
            (Direction::ServerToClient, None, Some(id)) if e.has_result || e.has_error => {
                let error = e
                    .has_error
                    .then(|| raw(serde_json::json!({"code": e.error_code.unwrap_or(-32603)})));
                let result = match e.is_error {
                    Some(is_error) => raw(serde_json::json!({"isError": is_error})),
                    None => raw(serde_json::json!({})),
                };
                self.on_server_response(scope, id, Some(&result), error.as_deref(), at);
            }
            (Direction::ClientToServer, None, Some(id)) if e.has_result || e.has_error => {
                self.server_pending.remove(&(scope.session.clone(), id));
            }
            _ => ProxyStats::add(&self.stats.unobservable, 1),
        }
    }

    /// A `tools/call` cut off before its id came (the server exited, or the body stopped, while
    /// its arguments were still going by): the server got part of it, so it is recorded, by its
    /// tool name with its arguments capped, under a key no answer can match and with no
    /// request id. It ends with whatever ends the transport (`server_exited` on stdio).
    fn on_cut_off_call(&mut self, scope: &Arc<Scope>, at: Instant, e: &Scanned) {
        let key = format!("\"mcp-otel-cut-off-{}\"", self.next_seq + 1);
        let params = serde_json::json!({
            "name": e.tool.as_deref().unwrap_or_default(),
            "arguments": e.capped_arguments(),
        });
        let params = params.to_string();
        self.on_client_request(scope, "tools/call", &key, Some(&params), at, &[]);
        if let Some(Pending {
            kind: Kind::ToolsCall(open),
            ..
        }) = self.pending.get_mut(&(scope.corr, key))
        {
            open.call.mcp.request_id = None;
        }
    }

    fn note_deadline(&mut self, d: Instant) {
        self.next_deadline = Some(self.next_deadline.map_or(d, |n| n.min(d)));
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
        params: CallParams,
        at: Instant,
        prep: Option<&Prepared>,
    ) -> OpenCall {
        let CallParams {
            name: tool,
            arguments,
            meta,
        } = params;
        let meta = meta.as_ref();
        let session = self.sessions.get(&scope.session);
        let client_name = session.and_then(|s| s.client_name.clone());
        let user = scope
            .user
            .clone()
            .or_else(|| self.config.default_user.clone())
            .or_else(|| client_name.clone())
            .unwrap_or_else(|| "unknown".to_owned());
        let hints = session
            .and_then(|s| s.tools.get(&tool))
            .or_else(|| self.any_session_tools.get(&tool))
            .copied()
            .unwrap_or_default();
        let ids = match prep {
            Some(p) => p.ids,
            None => ids_from_meta(meta),
        };
        let mut call = ToolCall::with_ids(tool, user, ids);
        call.timestamp = self.wall(at);
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
        call.read_only_hint = hints.read_only;
        call.destructive_hint = hints.destructive;
        // The arguments travel as the record's context, also read when the call is classified.
        call.context = arguments;
        OpenCall {
            call,
            session: scope.session.clone(),
            started: at,
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
        params: Option<&str>,
        at: Instant,
    ) {
        if method == "notifications/tasks/status" && dir == Direction::ServerToClient {
            if let Some(task) = params.and_then(|p| serde_json::from_str::<Value>(p).ok()) {
                self.on_task_status(&scope.session, &task, at);
            }
            return;
        }
        if method != "notifications/cancelled" {
            return;
        }
        let Some(request_id) = params
            .and_then(|p| serde_json::from_str::<Cancelled>(p).ok())
            .and_then(|c| c.request_id)
            .and_then(|r| id_key(r.get()))
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
        result: Option<&str>,
        error: Option<&str>,
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
            .and_then(|e| serde_json::from_str::<RpcError>(e).ok())
            .map(|e| e.code);
        let ending = || match error_code {
            Some(code) => Ending::RpcError(code),
            None => match result.and_then(|r| serde_json::from_str::<Value>(r).ok()) {
                Some(v) => Ending::Result(Answer::Parsed(v)),
                None => Ending::Code("malformed_response".into()),
            },
        };
        match pending.kind {
            Kind::Initialize { client } => {
                let version = result
                    .and_then(|r| serde_json::from_str::<Value>(r).ok())
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
                    self.learn_tools(&pending.session, r);
                }
                self.listing.remove(&pending.session);
                self.release_held();
            }
            // A task's creation has a `task`, so it is always parsed.
            Kind::ToolsCall(open) => match error_code {
                Some(code) => self.finish(*open, at, Ending::RpcError(code)),
                None => match result.and_then(Answer::read) {
                    Some(Answer::Parsed(v)) if created_task(&v).is_some() => {
                        self.open_task(*open, &v, at);
                    }
                    Some(answer) => self.finish(*open, at, Ending::Result(answer)),
                    None => self.finish(*open, at, Ending::Code("malformed_response".into())),
                },
            },
            Kind::TaskResult { task_id } => {
                if let Some(t) = self.tasks.remove(&(pending.session.clone(), task_id)) {
                    let end = t.completed_at.map_or(at, |c| c.min(at));
                    self.finish(*t.open, end, ending());
                }
            }
            Kind::TaskQuery => {
                if let Ending::Result(Answer::Parsed(task)) = ending() {
                    self.on_task_status(&pending.session, &task, at);
                }
            }
            Kind::Other => {}
        }
    }

    /// The `tools/call` was answered with a task: the call stays open under the task's id.
    fn open_task(&mut self, mut open: OpenCall, created: &Value, at: Instant) {
        let task = created.get("task").expect("created_task checked it");
        let task_id = created_task(created).expect("checked").to_owned();
        open.call.mcp.task_id = Some(task_id.clone());
        // The call's own timeout was met by the task's creation.
        open.deadline = None;
        let keep = task
            .get("ttl")
            .and_then(Value::as_u64)
            .map_or(MAX_TASK_KEEP, |ms| {
                Duration::from_millis(ms).min(MAX_TASK_KEEP)
            });
        if self.tasks.len() >= MAX_OPEN_TASKS
            && let Some(oldest) = self
                .tasks
                .iter()
                .min_by_key(|(_, t)| t.open.started)
                .map(|(k, _)| k.clone())
            && let Some(t) = self.tasks.remove(&oldest)
        {
            self.finish(*t.open, at, Ending::Code(error_code::TASK_EXPIRED.into()));
        }
        let key = (open.session.clone(), task_id);
        let deadline = at + keep;
        self.note_deadline(deadline);
        self.tasks.insert(
            key.clone(),
            OpenTask {
                open: Box::new(open),
                completed_at: None,
                deadline,
            },
        );
        // The creation may already say how the task stands.
        self.on_task_status(&key.0, task, at);
    }

    /// A task's status, from a `tasks/get` or `tasks/cancel` answer, a status notification, or
    /// the task's creation: a failed or cancelled task ends its call; a completed one marks the
    /// end of its duration (its outcome comes with `tasks/result`).
    fn on_task_status(&mut self, session: &Arc<str>, task: &Value, at: Instant) {
        let (Some(task_id), Some(status)) = (
            task.get("taskId").and_then(Value::as_str),
            task.get("status").and_then(Value::as_str),
        ) else {
            return;
        };
        let key = (session.clone(), task_id.to_owned());
        let code = match status {
            "completed" => {
                if let Some(t) = self.tasks.get_mut(&key) {
                    t.completed_at.get_or_insert(at);
                }
                return;
            }
            "failed" => error_code::TASK_FAILED,
            "cancelled" => error_code::CANCELLED,
            _ => return,
        };
        if let Some(t) = self.tasks.remove(&key) {
            self.finish(*t.open, at, Ending::Code(code.into()));
        }
    }

    /// Ends a call, unless its tool's annotations are unknown while a `tools/list` of its
    /// session is under way: then it waits for that list (at most [`TOOLS_LIST_WAIT`]).
    fn finish(&mut self, mut open: OpenCall, at: Instant, ending: Ending) {
        if open.call.read_only_hint.is_none() && open.call.destructive_hint.is_none() {
            self.refresh_hints(&mut open);
        }
        let unknown = open.call.read_only_hint.is_none()
            && open.call.destructive_hint.is_none()
            && self
                .config
                .tools
                .tool(&open.call.tool_name)
                .and_then(|t| t.classification)
                .is_none();
        if unknown && let Some(since) = self.listing.get(&open.session) {
            let until = *since + TOOLS_LIST_WAIT;
            if until > Instant::now() {
                self.note_deadline(until);
                self.held.push(Held {
                    open: Box::new(open),
                    at,
                    ending,
                    until,
                });
                return;
            }
        }
        self.record(open, at, ending);
    }

    fn refresh_hints(&self, open: &mut OpenCall) {
        let tool = &open.call.tool_name;
        let hints = self
            .sessions
            .get(&open.session)
            .and_then(|s| s.tools.get(tool))
            .or_else(|| self.any_session_tools.get(tool))
            .copied()
            .unwrap_or_default();
        open.call.read_only_hint = hints.read_only;
        open.call.destructive_hint = hints.destructive;
    }

    /// Records the held calls whose list is in (or will not come) or whose wait is over.
    fn release_held(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let now = Instant::now();
        let (due, kept): (Vec<Held>, Vec<Held>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|h| !self.listing.contains_key(&h.open.session) || h.until <= now);
        self.held = kept;
        for h in due {
            let mut open = *h.open;
            self.refresh_hints(&mut open);
            self.record(open, h.at, h.ending);
        }
    }

    fn learn_tools(&mut self, session: &Arc<str>, result: &str) {
        let Ok(list) = serde_json::from_str::<ToolList>(result) else {
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
        let expired: Vec<_> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.deadline <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            if let Some(t) = self.tasks.remove(&key) {
                let end = t.completed_at.unwrap_or(t.deadline);
                self.finish(*t.open, end, Ending::Code(error_code::TASK_EXPIRED.into()));
            }
        }
        self.listing
            .retain(|_, since| *since + TOOLS_LIST_WAIT > now);
        self.release_held();
        let calls = self.pending.values().filter_map(|p| match &p.kind {
            Kind::ToolsCall(o) => o.deadline,
            _ => None,
        });
        let tasks = self.tasks.values().map(|t| t.deadline);
        let held = self.held.iter().map(|h| h.until);
        self.next_deadline = calls.chain(tasks).chain(held).min();
    }

    /// Emits the record of a call that ended.
    fn record(&mut self, open: OpenCall, at: Instant, ending: Ending) {
        let OpenCall {
            mut call,
            started,
            before,
            confirmation,
            gate,
            ..
        } = open;
        let tool_config = self.config.tools.tool(&call.tool_name);
        let rpc_error = match &ending {
            Ending::RpcError(c) => Some(*c),
            _ => None,
        };
        let outcome = match &ending {
            Ending::Result(r) if r.is_tool_error() => Outcome::ToolError,
            Ending::Result(_) => Outcome::Success,
            Ending::RpcError(c) => Outcome::Error(c.to_string()),
            Ending::Code(c) => Outcome::Error(c.clone()),
            Ending::Timeout => Outcome::Timeout,
        };
        call.finish(outcome, at.saturating_duration_since(started));
        let before_state = before.and_then(Result::ok);
        let write_of = |result: Option<&Value>, before_state: Option<Value>, call: &ToolCall| {
            resolve_write(WriteEvidence {
                tool: &call.tool_name,
                configured: tool_config.and_then(|t| t.classification),
                configured_resource: tool_config.and_then(|t| t.resource_id.as_deref()),
                result,
                rpc_error,
                read_only: call.read_only_hint,
                arguments: call.context.as_ref(),
                before_state,
                confirmation,
                ..Default::default()
            })
        };
        let mut result = None;
        call.write = match ending {
            Ending::Result(Answer::Unread { text, tool_error }) if !self.config.record_result => {
                // Without `_meta` (so without an audit block), all that the classification
                // reads of a result is its `isError`, unless the write is a successful create
                // or update: then it takes the result's state, and the result is parsed.
                let stand_in = match tool_error {
                    true => serde_json::json!({ sc::RESULT_IS_ERROR: true }),
                    false => Value::Object(Map::new()),
                };
                let write = write_of(Some(&stand_in), before_state.clone(), &call);
                match write.as_ref().and_then(|w| w.operation_type) {
                    Some(op) if !tool_error && reads_result_state(op) => {
                        let whole = serde_json::from_str::<Value>(&text).ok();
                        write_of(whole.as_ref(), before_state, &call)
                    }
                    _ => write,
                }
            }
            Ending::Result(answer) => {
                result = answer.whole();
                write_of(result.as_ref(), before_state, &call)
            }
            _ => write_of(None, before_state, &call),
        };
        confirm::settle(
            &mut call,
            gate,
            confirmation,
            self.config.tools.has_confirmation(),
        );
        if self.config.record_result {
            call.result = result;
        }
        ProxyStats::add(&self.stats.tool_calls, 1);
        self.emitter.emit(call);
    }
}

/// The task id of a `CreateTaskResult` (a result with a `task` and no `content`).
fn created_task(result: &Value) -> Option<&str> {
    if result.get("content").is_some() {
        return None;
    }
    result.get("task")?.get("taskId")?.as_str()
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

/// What a `tools/call` request's params give the record.
struct CallParams {
    /// `name`, empty when it is not a string.
    name: String,
    arguments: Option<Value>,
    /// `_meta`, when it is an object.
    meta: Option<Map<String, Value>>,
}

/// The members of [`CallParams`], read without building the rest of the params.
#[derive(Deserialize)]
struct CallParamsOnly<'a> {
    #[serde(borrow)]
    name: Option<std::borrow::Cow<'a, str>>,
    /// `null` is kept as `null` (it is what the client sent as its arguments).
    #[serde(default, deserialize_with = "present")]
    arguments: Option<Value>,
    #[serde(rename = "_meta")]
    meta: Option<Map<String, Value>>,
}

/// A member that is there, `null` included.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

impl CallParams {
    /// The params of a `tools/call`; `None` when they are not JSON. Their three members are
    /// read into values and the rest is skipped; what that reading does not take (a member
    /// given twice, a `name` that is not a string, a `_meta` that is not an object, params that
    /// are not an object) is read whole and taken apart, so the record is the same either way
    /// (a property test holds it). A member the record does not read is only checked as JSON:
    /// nested past serde_json's limit, or holding a number beyond `f64`, it no longer leaves
    /// the call unrecorded as malformed (the server got a call).
    fn read(text: &str) -> Option<CallParams> {
        if text.starts_with('{')
            && let Ok(p) = serde_json::from_str::<CallParamsOnly>(text)
        {
            return Some(CallParams {
                name: p.name.map(std::borrow::Cow::into_owned).unwrap_or_default(),
                arguments: p.arguments,
                meta: p.meta,
            });
        }
        let mut whole: Value = serde_json::from_str(text).ok()?;
        let arguments = whole.as_object_mut().and_then(|p| p.remove("arguments"));
        let name = str_field(&whole, "name").unwrap_or_default();
        let meta = match whole.as_object_mut().and_then(|p| p.remove(sc::MCP_META)) {
            Some(Value::Object(m)) => Some(m),
            _ => None,
        };
        Some(CallParams {
            name,
            arguments,
            meta,
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The shortcut for plain ids gives what parsing them gives, for any id text.
        #[test]
        fn the_id_shortcut_agrees_with_the_parse(
            text in proptest::prop_oneof![
                "-?[0-9]{1,6}",
                "\"[a-z0-9\"\\\\\u{1}é-]{0,8}\"",
                proptest::prelude::any::<String>(),
            ],
        ) {
            let Ok(raw) = serde_json::from_str::<Box<RawValue>>(&text) else {
                return Ok(());
            };
            let parsed = match serde_json::from_str::<Value>(raw.get().trim()) {
                Ok(Value::String(s)) => serde_json::to_string(&s).ok(),
                Ok(Value::Number(_)) => Some(raw.get().trim().to_owned()),
                _ => None,
            };
            proptest::prop_assert_eq!(id_key(raw.get()), parsed);
        }
    }

    /// A call's name, arguments and `_meta`.
    type CallParts = (String, Option<Value>, Option<Map<String, Value>>);

    /// The params as they were read before: whole, then taken apart.
    fn call_params_whole(text: &str) -> Option<CallParts> {
        let mut whole: Value = serde_json::from_str(text).ok()?;
        let arguments = whole.as_object_mut().and_then(|p| p.remove("arguments"));
        let name = str_field(&whole, "name").unwrap_or_default();
        let meta = whole.get(sc::MCP_META).and_then(Value::as_object).cloned();
        Some((name, arguments, meta))
    }

    fn json_piece() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just("1e400".to_owned()),
            "-?[0-9]{1,3}(\\.[0-9])?",
            "\"([a-z]|\\\\n|\\\\u00e9|\\\\ud800)*\"",
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec((call_key(), inner), 0..3).prop_map(|v| {
                    let m: Vec<String> = v.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
                    format!("{{{}}}", m.join(","))
                }),
            ]
        })
    }

    fn call_key() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            Just("\"name\"".to_owned()),
            Just("\"arguments\"".to_owned()),
            Just("\"_meta\"".to_owned()),
            Just("\"n\\u0061me\"".to_owned()),
            Just("\"traceparent\"".to_owned()),
            Just("\"task\"".to_owned()),
            Just("\"x\"".to_owned()),
        ]
    }

    proptest::proptest! {
        /// Reading a call's three members gives what reading its params whole gave, whenever
        /// that worked.
        #[test]
        fn call_params_read_as_the_whole_params_gave(
            members in proptest::collection::vec((call_key(), json_piece()), 0..5),
            as_array in proptest::prelude::any::<u8>(),
        ) {
            let body: Vec<String> = members.iter().map(|(k, v)| format!("{k}:{v}")).collect();
            let text = match as_array % 8 {
                0 => format!("[{}]", members.iter().map(|(_, v)| v.as_str()).collect::<Vec<_>>().join(",")),
                _ => format!("{{{}}}", body.join(",")),
            };
            let Some(whole) = call_params_whole(&text) else {
                return Ok(());
            };
            let read = CallParams::read(&text).expect("read where the whole parse reads");
            proptest::prop_assert_eq!((read.name, read.arguments, read.meta), whole, "{}", text);
        }
    }

    /// The scan gives up exactly where serde_json's `Value` parse does, and counts no bracket
    /// inside a string.
    #[test]
    fn the_depth_scan_agrees_with_serde_json() {
        for depth in [1, 126, 127, 128, 129] {
            for (open, close) in [("[", "]"), ("{\"k\":", "}")] {
                let json = format!("{}0{}", open.repeat(depth), close.repeat(depth));
                let parsed = serde_json::from_str::<Value>(&json).is_ok();
                assert_eq!(nests_too_deep(&json), !parsed, "depth {depth} of {open}");
            }
        }
        let strings = format!(r#"["{}\"{}", "\\"]"#, "[".repeat(200), "{".repeat(200));
        assert!(serde_json::from_str::<Value>(&strings).is_ok());
        assert!(!nests_too_deep(&strings));
    }
}
