//! Observation: JSON-RPC messages seen by the relay → correlated requests and responses →
//! [`ToolCall`]s handed to the [`Emitter`].
//!
//! The observer runs on its own thread and is fed through a bounded lock-free queue that the
//! relay never waits on: [`ObserverHandle::send`] drops (and counts) an event when the queue is
//! full, so a slow log sink or a stuck exporter can only cost observations, never relaying. Everything
//! else (parsing, correlation, classification, emit) happens here, off the relay's path.
//!
//! Requests are correlated with their responses by JSON-RPC id per correlation scope (the
//! stdio connection, or one HTTP exchange), in both directions: client requests (answered by
//! the server) and server-initiated requests (answered by the client). Session state, which is
//! the client's identity, the negotiated protocol version and the tool annotations from
//! `tools/list`, is kept per session (the stdio connection, an `Mcp-Session-Id`, or a client
//! for stateless peers).

use super::config::{BeforeCapture, Classification, ProxyConfig};
use super::inject::IdText;
use crate::capture::classify::{audit_block, classify, resource_id_from_args};
use crate::capture::context::{ids_from_meta, user_confirmation};
use crate::emit::Emitter;
use crate::record::{OperationType, Status, ToolCall, TraceIds, Transport, WriteOp};
use crate::semconv as sc;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Open requests tracked at most, per direction: past this, new ones go unobserved (counted as
/// dropped observations) rather than growing memory without bound.
pub const MAX_PENDING: usize = 65_536;

/// `error_code` of a call still in flight when a signal stopped the proxy.
pub const PROXY_TERMINATED: &str = "proxy_terminated";

/// `_meta` keys of stateless (2026-07-28) requests.
pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
pub const META_CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";

/// Which way a message travelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    ClientToServer,
    ServerToClient,
}

/// Where a message belongs: its correlation scope and its session, plus what the transport
/// knows about the caller.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// Requests and responses are matched within one scope (stdio: 0; HTTP: one exchange).
    pub corr: u64,
    /// Session state key (stdio: one; HTTP: the session id, or the client for stateless peers).
    pub session: Arc<str>,
    /// `Mcp-Session-Id` as the client sent it.
    pub session_id: Option<String>,
    /// The identity the transport established (an API key's name).
    pub user: Option<String>,
    pub client_address: Option<String>,
    /// The `MCP-Protocol-Version` header.
    pub protocol_version: Option<String>,
}

/// The calls prepared in one batch of messages: mostly none or one, kept inline so that the
/// relay path does not allocate for them.
pub type PreparedCalls = smallvec::SmallVec<[Prepared; 1]>;

/// What the relay learned about a `tools/call` before forwarding it.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// The request id as JSON text.
    pub id: IdText,
    /// The proxy span's ids (the injected `traceparent` names this span).
    pub ids: TraceIds,
    pub before: Option<Result<Value, String>>,
}

/// Why bytes went by without being observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unobserved {
    /// Part of a line longer than the observation limit.
    Oversize,
    /// A partial line that does not look like JSON, relayed at once.
    NotJson,
}

/// What the relays tell the observer.
#[derive(Debug)]
pub enum Event {
    /// Complete messages: newline-delimited (stdio) or one JSON value (HTTP).
    Messages {
        scope: Arc<Scope>,
        dir: Direction,
        bytes: Bytes,
        at: Instant,
        prepared: PreparedCalls,
    },
    Unobserved {
        dir: Direction,
        len: usize,
        why: Unobserved,
    },
    /// An HTTP exchange failed as a whole (upstream status, connection error): its open calls
    /// end with `code`.
    ExchangeFailed {
        corr: u64,
        code: String,
        at: Instant,
    },
    /// An HTTP exchange's response stream ended; calls still open in it got no answer.
    ExchangeEnded {
        corr: u64,
        at: Instant,
    },
    SessionClosed {
        session: Arc<str>,
    },
    /// The server process exited: open calls end with `server_exited`.
    ServerExited {
        at: Instant,
    },
    /// A call the transport itself answered (an HTTP 401), already complete.
    Record(Box<ToolCall>),
    /// Replies once everything sent before it is processed.
    Barrier(std::sync::mpsc::Sender<()>),
}

/// Counters kept by the relays and the observer.
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub messages_from_client: AtomicU64,
    pub messages_from_server: AtomicU64,
    pub bytes_from_client: AtomicU64,
    pub bytes_from_server: AtomicU64,
    /// Lines or bodies that are not JSON-RPC (relayed as they are).
    pub malformed: AtomicU64,
    /// Lines longer than the observation limit (relayed, not observed).
    pub oversize: AtomicU64,
    pub tool_calls: AtomicU64,
    pub server_requests: AtomicU64,
    pub unmatched_responses: AtomicU64,
    /// Responses that arrived after their call was recorded as timed out or cancelled.
    pub late_responses: AtomicU64,
    pub injected: AtomicU64,
    pub before_captured: AtomicU64,
    pub before_failed: AtomicU64,
    /// Events lost because the observer's queue was full.
    pub observe_dropped: AtomicU64,
    pub unauthorized: AtomicU64,
}

impl ProxyStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// One line for the operator at exit.
    pub fn summary(&self) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "{} messages from the client, {} from the server, {} tool calls recorded, \
             {} malformed, {} oversize, {} unmatched responses, {} late, {} observations dropped",
            g(&self.messages_from_client),
            g(&self.messages_from_server),
            g(&self.tool_calls),
            g(&self.malformed),
            g(&self.oversize),
            g(&self.unmatched_responses),
            g(&self.late_responses),
            g(&self.observe_dropped),
        )
    }
}

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

/// How long the observer lets events gather while traffic flows. Timestamps are taken by the
/// relay, so the delay changes when a call is recorded, not what is recorded.
pub const OBSERVE_INTERVAL: Duration = Duration::from_millis(5);

/// The queue between the relays and the observer thread.
///
/// Pushing is lock-free and makes no system call while the observer is awake: it wakes by
/// itself every [`OBSERVE_INTERVAL`] while events arrive, and only after a quiet interval does
/// it sleep until the next push unparks it. So a relay pays a queue push per message, and at
/// most one wake-up per burst, rather than a context switch per message.
struct Queue {
    /// Boxed, so the ring's slots (all touched when it is built) stay small.
    events: crossbeam_queue::ArrayQueue<Box<Event>>,
    /// The observer is parked without a timeout: the next push must unpark it.
    sleeping: AtomicBool,
    /// Every handle is gone: drain and stop.
    closed: AtomicBool,
    observer: std::sync::OnceLock<std::thread::Thread>,
}

impl Queue {
    fn wake(&self) {
        if let Some(t) = self.observer.get() {
            t.unpark();
        }
    }
}

/// Dropped with the last handle: tells the observer to finish.
struct Closer(Arc<Queue>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::SeqCst);
        self.0.wake();
    }
}

/// The relays' end of the observer: cheap to clone, never blocks.
#[derive(Clone)]
pub struct ObserverHandle {
    queue: Arc<Queue>,
    stats: Arc<ProxyStats>,
    _closer: Arc<Closer>,
}

impl std::fmt::Debug for ObserverHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObserverHandle")
            .field("queued", &self.queue.events.len())
            .finish()
    }
}

impl ObserverHandle {
    /// Starts the observer thread.
    pub fn spawn(config: ObserverConfig, emitter: Emitter) -> std::io::Result<Self> {
        let queue = Arc::new(Queue {
            events: crossbeam_queue::ArrayQueue::new(config.queue_capacity.max(16)),
            sleeping: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            observer: std::sync::OnceLock::new(),
        });
        let stats = Arc::new(ProxyStats::default());
        let observer = Observer::new(config, emitter, stats.clone());
        let q = queue.clone();
        let thread = std::thread::Builder::new()
            .name("mcp-otel-observe".into())
            .spawn(move || {
                super::background_priority();
                observer.run(&q)
            })?;
        let _ = queue.observer.set(thread.thread().clone());
        Ok(ObserverHandle {
            _closer: Arc::new(Closer(queue.clone())),
            queue,
            stats,
        })
    }

    pub fn stats(&self) -> &Arc<ProxyStats> {
        &self.stats
    }

    /// Queues an event; when the queue is full the event is dropped and counted.
    pub fn send(&self, event: Event) {
        if self.queue.events.push(Box::new(event)).is_err() {
            ProxyStats::add(&self.stats.observe_dropped, 1);
            return;
        }
        if self.queue.sleeping.swap(false, Ordering::SeqCst) {
            self.queue.wake();
        }
    }

    /// Waits (up to `timeout`) until everything sent so far is processed. Blocking: for
    /// shutdown and tests, never on a relay path.
    pub fn sync(&self, timeout: Duration) -> bool {
        let (tx, rx) = std::sync::mpsc::channel();
        let deadline = Instant::now() + timeout;
        let mut event = Box::new(Event::Barrier(tx));
        loop {
            match self.queue.events.push(event) {
                Ok(()) => break,
                Err(e) if Instant::now() < deadline => {
                    event = e;
                    self.queue.wake();
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return false,
            }
        }
        self.queue.sleeping.store(false, Ordering::SeqCst);
        self.queue.wake();
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
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

/// The state a result reports: `structuredContent`, else the first text block parsed as JSON.
pub fn state_of_result(result: &Value) -> Option<Value> {
    if let Some(sc) = result.get("structuredContent").filter(|v| !v.is_null()) {
        return Some(sc.clone());
    }
    result
        .get("content")?
        .as_array()?
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .find_map(|t| serde_json::from_str::<Value>(t).ok())
        .filter(|v| v.is_object() || v.is_array())
}

/// Returns the allocator's free pages to the system (glibc keeps them otherwise), so an idle
/// proxy's resident memory falls back after a burst.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

struct Observer {
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
    fn new(config: ObserverConfig, emitter: Emitter, stats: Arc<ProxyStats>) -> Self {
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

    fn run(mut self, queue: &Queue) {
        loop {
            let mut handled = 0usize;
            while let Some(e) = queue.events.pop() {
                self.handle(*e);
                handled += 1;
            }
            let now = Instant::now();
            if self.next_deadline.is_some_and(|d| d <= now) {
                self.expire(now);
            }
            if queue.closed.load(Ordering::SeqCst) && queue.events.is_empty() {
                break;
            }
            let until_deadline = self
                .next_deadline
                .map(|d| d.saturating_duration_since(Instant::now()));
            if handled > 0 {
                // Traffic: let the next events gather.
                std::thread::park_timeout(
                    until_deadline.map_or(OBSERVE_INTERVAL, |d| d.min(OBSERVE_INTERVAL)),
                );
                continue;
            }
            // Quiet: hand memory freed by the burst back to the system, then sleep until a
            // push (or a deadline) wakes us.
            release_free_memory();
            queue.sleeping.store(true, Ordering::SeqCst);
            if !queue.events.is_empty() || queue.closed.load(Ordering::SeqCst) {
                queue.sleeping.store(false, Ordering::SeqCst);
                continue;
            }
            match until_deadline {
                Some(d) => std::thread::park_timeout(d),
                None => std::thread::park(),
            }
            queue.sleeping.store(false, Ordering::SeqCst);
        }
    }

    fn wall(&self, at: Instant) -> DateTime<Utc> {
        let offset = at.saturating_duration_since(self.base_instant);
        self.base_wall + chrono::Duration::from_std(offset).unwrap_or_default()
    }

    fn handle(&mut self, event: Event) {
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
                    || Ending::Code("no_response".into()),
                );
            }
            Event::SessionClosed { session } => {
                self.sessions.remove(&session);
            }
            Event::ServerExited { at } => {
                self.end_where(|_, _| true, at, || Ending::Code("server_exited".into()));
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
        let keys: Vec<_> = self
            .pending
            .iter()
            .filter(|(k, p)| matches(k, p))
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            if let Some(Pending {
                kind: Kind::ToolsCall(open),
                ..
            }) = self.pending.remove(&key)
            {
                self.finish(*open, at, ending());
            }
        }
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
            .and_then(|p| p.get("_meta"))
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
        let version = meta.get(META_PROTOCOL_VERSION).and_then(Value::as_str);
        let info = meta.get(META_CLIENT_INFO);
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
        let meta = params.get("_meta").and_then(Value::as_object);
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
            .and_then(|m| m.get(META_PROTOCOL_VERSION))
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
                    self.finish(*open, at, Ending::Code("cancelled".into()));
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

    fn expire(&mut self, now: Instant) {
        let expired: Vec<_> = self
            .pending
            .iter()
            .filter(|(_, p)| matches!(&p.kind, Kind::ToolsCall(o) if o.deadline.is_some_and(|d| d <= now)))
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            if let Some(Pending {
                kind: Kind::ToolsCall(open),
                ..
            }) = self.pending.remove(&key)
            {
                let end = open.deadline.unwrap_or(now);
                self.finish(*open, end, Ending::Timeout);
                self.remember_closed(key);
            }
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
            ..
        } = open;
        call.duration_ms = at.saturating_duration_since(started).as_secs_f64() * 1000.0;
        let args = arguments.as_ref().and_then(Value::as_object);
        let tool_config = self.config.tools.tool(&call.tool_name);
        let mut result_value = None;
        let (status, code) = match &ending {
            Ending::Result(r) => {
                result_value = Some(*r);
                if r.get("isError").and_then(Value::as_bool) == Some(true) {
                    (Status::Error, Some(sc::ERROR_TYPE_TOOL_ERROR.to_owned()))
                } else {
                    (Status::Success, None)
                }
            }
            Ending::RpcError(c) => (Status::Error, Some(c.to_string())),
            Ending::Code(c) => (Status::Error, Some(c.clone())),
            Ending::Timeout => (Status::Timeout, Some(sc::ERROR_TYPE_TIMEOUT.to_owned())),
        };
        call.status = status;
        call.error_code = code;

        let audit =
            result_value.and_then(|r| audit_block(r.get("_meta").and_then(Value::as_object)));
        let configured = tool_config.and_then(|t| t.classification);
        let op = match configured {
            Some(Classification::Read) => None,
            Some(Classification::Write(op)) => Some(op),
            None => classify(&call.tool_name, None, audit.as_ref(), call.read_only_hint),
        };
        if let Some(op) = op {
            let audit = audit.unwrap_or_default();
            let configured_id = tool_config
                .and_then(|t| t.resource_id.as_deref())
                .and_then(|p| arguments.as_ref()?.pointer(p))
                .and_then(|v| match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                });
            let after = match (op, status, result_value) {
                (OperationType::Create | OperationType::Update, Status::Success, Some(r)) => {
                    state_of_result(r)
                }
                _ => None,
            };
            let mut write = WriteOp::new(op);
            write.resource_id = configured_id
                .or(audit.resource_id)
                .or_else(|| resource_id_from_args(args));
            write.before_state = audit.before_state.or_else(|| before.and_then(Result::ok));
            write.after_state = audit.after_state.or(after);
            write.user_confirmation = audit.user_confirmation.or(confirmation);
            call.write = Some(write);
        }
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

/// A before-state read's result → the state to record, or why there is none.
pub fn before_state_from_response(response: &[u8]) -> Result<Value, String> {
    let v: Value =
        serde_json::from_slice(response).map_err(|e| format!("malformed response: {e}"))?;
    if let Some(e) = v.get("error") {
        return Err(format!("JSON-RPC error {e}"));
    }
    let result = v.get("result").ok_or("response has no result")?;
    if result.get("isError").and_then(Value::as_bool) == Some(true) {
        return Err("the read tool reported an error".into());
    }
    state_of_result(result).ok_or_else(|| "the read tool returned no JSON state".into())
}

/// The JSON-RPC request the proxy sends on its own to read a before-state. `meta` is the
/// intercepted call's `_meta` minus its progress token (stateless peers need their
/// protocol version and client info on every request), with the proxy span as the parent.
pub fn before_request(
    id: &str,
    capture: &BeforeCapture,
    arguments: Value,
    meta: Option<&Map<String, Value>>,
    ids: &TraceIds,
) -> Vec<u8> {
    let mut meta = meta.cloned().unwrap_or_default();
    meta.remove("progressToken");
    meta.insert(
        sc::META_TRACEPARENT.to_owned(),
        Value::String(crate::capture::context::format_traceparent(ids)),
    );
    let msg = serde_json::json!({
        "jsonrpc": "2.0",
        "id": id,
        "method": "tools/call",
        "params": {"name": capture.tool, "arguments": arguments, "_meta": meta},
    });
    let mut out = serde_json::to_vec(&msg).expect("a JSON value serialises");
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emit::EmitConfig;
    use serde_json::json;
    use std::io::Write;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);
    impl Write for Lines {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Lines {
        fn json(&self) -> Vec<Value> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        }
    }

    fn observer(config: ObserverConfig) -> (ObserverHandle, Lines) {
        let lines = Lines::default();
        let emitter =
            Emitter::with_log_writer(&EmitConfig::default(), None, Box::new(lines.clone()));
        (ObserverHandle::spawn(config, emitter).unwrap(), lines)
    }

    fn send(h: &ObserverHandle, dir: Direction, msg: Value) {
        h.send(Event::Messages {
            scope: Arc::new(Scope::default()),
            dir,
            bytes: Bytes::from(format!("{msg}\n")),
            at: Instant::now(),
            prepared: PreparedCalls::new(),
        });
    }

    use Direction::{ClientToServer as C2S, ServerToClient as S2C};

    #[test]
    fn a_session_becomes_records() {
        let (h, lines) = observer(ObserverConfig::default());
        send(
            &h,
            C2S,
            json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","clientInfo":{"name":"cursor","version":"1.2"}}}),
        );
        send(
            &h,
            S2C,
            json!({"jsonrpc":"2.0","id":0,"result":{"protocolVersion":"2025-06-18"}}),
        );
        send(
            &h,
            C2S,
            json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}),
        );
        send(
            &h,
            S2C,
            json!({"jsonrpc":"2.0","id":1,"result":{"tools":[
                {"name":"read_graph","annotations":{"readOnlyHint":true}},
                {"name":"create_entities","annotations":{"readOnlyHint":false}}]}}),
        );
        send(
            &h,
            C2S,
            json!({"jsonrpc":"2.0","id":"c1","method":"tools/call","params":{"name":"create_entities","arguments":{"name":"A"},"_meta":{"io.mcp-otel/user_confirmation":true}}}),
        );
        // A server-initiated request and its answer in between.
        send(
            &h,
            S2C,
            json!({"jsonrpc":"2.0","id":5,"method":"roots/list"}),
        );
        send(
            &h,
            C2S,
            json!({"jsonrpc":"2.0","id":5,"result":{"roots":[]}}),
        );
        send(
            &h,
            S2C,
            json!({"jsonrpc":"2.0","id":"c1","result":{"content":[{"type":"text","text":"{\"name\":\"A\"}"}]}}),
        );
        send(
            &h,
            C2S,
            json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"read_graph"}}),
        );
        send(
            &h,
            S2C,
            json!({"jsonrpc":"2.0","id":2,"error":{"code":-32602,"message":"bad"}}),
        );
        assert!(h.sync(Duration::from_secs(5)));
        let out = lines.json();
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0]["tool_name"], "create_entities");
        assert_eq!(out[0]["user"], "cursor");
        assert_eq!(out[0]["status"], "success");
        assert_eq!(out[0]["operation_type"], "create");
        assert_eq!(out[0]["resource_id"], "A");
        assert_eq!(out[0]["after_state"], json!({"name": "A"}));
        assert_eq!(out[0]["user_confirmation"], true);
        assert_eq!(out[1]["tool_name"], "read_graph");
        assert_eq!(out[1]["error_code"], "-32602");
        assert!(out[1].get("operation_type").is_none());
        let s = h.stats();
        assert_eq!(ProxyStats::get(&s.server_requests), 1);
        assert_eq!(ProxyStats::get(&s.unmatched_responses), 0);
    }

    #[test]
    fn timeouts_cancellations_and_exits_end_open_calls() {
        let (h, lines) = observer(ObserverConfig {
            call_timeout: Some(Duration::from_millis(50)),
            default_user: Some("ops".into()),
            ..ObserverConfig::default()
        });
        let call = |id: i64, name: &str| json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":name}});
        send(&h, C2S, call(1, "slow"));
        std::thread::sleep(Duration::from_millis(150));
        send(&h, S2C, json!({"jsonrpc":"2.0","id":1,"result":{}}));
        send(&h, C2S, call(2, "cancel_me"));
        send(
            &h,
            C2S,
            json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":2}}),
        );
        send(&h, C2S, call(3, "in_flight"));
        h.send(Event::ServerExited { at: Instant::now() });
        send(&h, S2C, json!("garbage"));
        h.send(Event::Messages {
            scope: Arc::new(Scope::default()),
            dir: S2C,
            bytes: Bytes::from_static(b"\x00\xff{{{\n"),
            at: Instant::now(),
            prepared: PreparedCalls::new(),
        });
        assert!(h.sync(Duration::from_secs(5)));
        let out = lines.json();
        let by = |t: &str| out.iter().find(|l| l["tool_name"] == t).unwrap().clone();
        assert_eq!(by("slow")["status"], "timeout");
        assert_eq!(by("slow")["user"], "ops");
        assert!(by("slow")["duration_ms"].as_f64().unwrap() >= 50.0);
        assert_eq!(by("cancel_me")["error_code"], "cancelled");
        assert_eq!(by("in_flight")["error_code"], "server_exited");
        assert_eq!(out.len(), 3);
        assert_eq!(ProxyStats::get(&h.stats().late_responses), 1);
        assert_eq!(ProxyStats::get(&h.stats().malformed), 2);
    }

    #[test]
    fn stateless_meta_and_audit_block() {
        let (h, lines) = observer(ObserverConfig::default());
        send(
            &h,
            C2S,
            json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"archive","arguments":{"id":"x"},
              "_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28",
                       "io.modelcontextprotocol/clientInfo":{"name":"rmcp-client","version":"3"}}}}),
        );
        send(
            &h,
            S2C,
            json!({"jsonrpc":"2.0","id":1,"result":{"content":[],"structuredContent":{"v":2},
              "_meta":{"io.mcp-otel/audit":{"operation_type":"update","before_state":{"v":1}}}}}),
        );
        assert!(h.sync(Duration::from_secs(5)));
        let out = lines.json();
        assert_eq!(out[0]["user"], "rmcp-client");
        assert_eq!(out[0]["operation_type"], "update");
        assert_eq!(out[0]["before_state"], json!({"v": 1}));
        assert_eq!(out[0]["after_state"], json!({"v": 2}));
        assert_eq!(out[0]["resource_id"], "x");
    }
}
