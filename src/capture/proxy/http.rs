//! The Streamable HTTP reverse proxy: POST (JSON and SSE responses streamed through as they
//! arrive), GET SSE streams and DELETE are forwarded to one upstream MCP endpoint, with
//! `Mcp-Session-Id`, `MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name` and every other
//! end-to-end header passed through.
//!
//! Every path on the listener is the MCP endpoint (MCP has one); requests go to the upstream
//! URL with their query string. A POST body is read whole (up to the observation limit; a larger
//! one is streamed through unobserved) because a `tools/call` in it may get a `traceparent`.
//! Response bodies are never buffered on the way: each chunk goes to the client as it arrives,
//! and a copy goes to a tee that cuts it into messages (SSE events, or the whole JSON body) for
//! the observer.
//!
//! With `--keys`, a request without a configured key is answered 401 with a JSON-RPC error
//! body and recorded (user `key:<first 8 hex of its SHA-256>`); the key header is removed
//! before forwarding unless `--forward-auth`.
//!
//! With a confirmation policy, a gated `tools/call` POST is answered as an SSE stream: first
//! the proxy's own `elicitation/create`, then (after the client's answer arrived as a separate
//! POST in the same session, which the proxy answers 202 and does not forward) either the
//! upstream's answer to the forwarded call or the refusal (`super::confirm` decides).

use super::ProxyError;
use super::before::{self, OwnIds};
use super::config::ProxyConfig;
use super::confirm::held::{self, parse_call, refuse_gated_batch};
use super::confirm::legacy::{self, Answer};
use super::confirm::policy::Unsupported;
use super::confirm::sessions::HttpGate;
use super::confirm::{Gate, Verdict, gated, mrtr};
use super::envelope::EnvelopeScan;
use super::inject::{CallPlan, first_tools_call, plan_call};
use super::keys::{Identity, KeyRing, presented_key};
use super::observe::{
    Direction, Event, ObserverHandle, Prepared, PreparedCalls, ProxyStats, Scope,
};
use super::strict::{self, Unrecordable};
use crate::capture::classify::{WriteEvidence, resolve_write};
use crate::capture::context::ids_from_meta;
use crate::record::{Confirmation, ConfirmationOutcome, Outcome, ToolCall, Transport, error_code};
use crate::serve::{BodyBudget, BodyError, Head};
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// POST bodies and JSON responses larger than this are not observed whole (16 MiB): they are
/// streamed through and observed by their envelope ([`super::envelope`]).
pub(crate) const MAX_OBSERVED_BODY: usize = 16 * 1024 * 1024;

/// How the HTTP proxy runs.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// The address the proxy listens on (port 0 picks a free one; see [`HttpProxy::local_addr`]).
    pub listen: SocketAddr,
    /// `http://host:port/path` of the upstream MCP endpoint.
    pub upstream: String,
    /// With `--keys`: the API keys a request must present (`Authorization: Bearer` or `x-api-key`);
    /// the key's name becomes the call's user. `None`: no key check.
    pub keys: Option<KeyRing>,
    /// Forward the key header upstream too (by default it is removed when `keys` is set).
    pub forward_auth: bool,
    /// Inject the proxy span's `traceparent` into forwarded calls that carry none.
    pub inject: bool,
    /// Per-tool settings from the proxy's TOML file (write classification, before-state reads,
    /// confirmation).
    pub tools: Arc<ProxyConfig>,
}

type UpstreamClient = Client<HttpConnector, Body>;

struct Shared {
    upstream: Uri,
    client: UpstreamClient,
    keys: Option<KeyRing>,
    forward_auth: bool,
    inject: bool,
    tools: Arc<ProxyConfig>,
    observer: ObserverHandle,
    next_exchange: AtomicU64,
    own_ids: OwnIds,
    gate: Option<HttpGate>,
    /// Sessions whose tools were listed: see [`list_tools_once`].
    listed: std::sync::Mutex<std::collections::HashSet<Arc<str>>>,
    /// Request body bytes held at once, across all connections
    /// ([`Limits::body_bytes_in_flight`](crate::serve::Limits)).
    budget: BodyBudget,
}

/// A bound, not yet running proxy.
pub struct HttpProxy {
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
}

fn parse_upstream(url: &str) -> Result<Uri, ProxyError> {
    let bad = |reason: &str| ProxyError::Upstream {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(_) => {
            return Err(bad(
                "only http:// is supported (put TLS in front of the proxy)",
            ));
        }
        None => return Err(bad("missing http://")),
    }
    if uri.authority().is_none() {
        return Err(bad("missing host"));
    }
    Ok(uri)
}

impl HttpProxy {
    /// Checks the upstream URL (`http://` only) and binds the listener; calls are recorded through
    /// `observer` once [`HttpProxy::run_until`] serves.
    pub async fn bind(options: HttpOptions, observer: ObserverHandle) -> Result<Self, ProxyError> {
        let upstream = parse_upstream(&options.upstream)?;
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .map_err(|source| ProxyError::Bind {
                addr: options.listen,
                source,
            })?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(HttpProxy {
            listener,
            shared: Arc::new(Shared {
                upstream,
                client,
                keys: options.keys,
                forward_auth: options.forward_auth,
                inject: options.inject,
                observer,
                next_exchange: AtomicU64::new(1),
                own_ids: OwnIds::default(),
                gate: Gate::new(options.tools.clone()).map(HttpGate::new),
                listed: Default::default(),
                tools: options.tools,
                budget: BodyBudget::new(crate::serve::Limits::default().body_bytes_in_flight),
            }),
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` completes (open streams are dropped then), under the default
    /// [`Limits`](crate::serve::Limits): slow or idle connections are closed, at most a share
    /// of the descriptor limit is open at once.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), ProxyError> {
        let router = axum::Router::new().fallback(handle).with_state(self.shared);
        let stop = tokio_util::sync::CancellationToken::new();
        let limits = crate::serve::Limits::default();
        let serve = crate::serve::serve_http(
            self.listener,
            router,
            limits,
            crate::serve::connection_cap(1),
            stop.clone(),
        );
        tokio::select! {
            _ = serve => Ok(()),
            _ = shutdown => {
                stop.cancel();
                Ok(())
            }
        }
    }
}

/// Headers that belong to one hop, never forwarded.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn jsonrpc_error_response(status: StatusCode, id: Value, code: i64, message: &str) -> Response {
    let body = json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}});
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// 502 for `request` (a POST body, or empty): a JSON-RPC error carrying the request's id; for a
/// batch, one error per request in it (notifications get none, as JSON-RPC says), or a single
/// error with a null id when nothing in the body can be answered.
fn bad_gateway(request: &[u8], message: &str) -> Response {
    let error = |id: Value| json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32603, "message": message}});
    // A request has a method and an id; a notification has no id and gets no answer.
    let request_id = |v: &Value| v.get("method").and(v.get("id")).cloned();
    let body = match serde_json::from_slice::<Value>(request) {
        Ok(Value::Array(items)) => {
            let errors: Vec<Value> = items.iter().filter_map(request_id).map(error).collect();
            match errors.is_empty() {
                true => error(Value::Null),
                false => Value::Array(errors),
            }
        }
        Ok(one) => error(request_id(&one).unwrap_or(Value::Null)),
        Err(_) => error(Value::Null),
    };
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = StatusCode::BAD_GATEWAY;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The requests in a POST body: (id, method, params) of each.
fn requests_in(body: &[u8]) -> Vec<(Option<Value>, String, Option<Value>)> {
    let values = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(items)) => items,
        Ok(v) => vec![v],
        Err(_) => return Vec::new(),
    };
    values
        .into_iter()
        .filter_map(|mut v| {
            let method = v.get("method")?.as_str()?.to_owned();
            Some((
                v.get("id").cloned(),
                method,
                v.get_mut("params").map(Value::take),
            ))
        })
        .collect()
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let at = Instant::now();
    let (parts, body) = request.into_parts();
    let identity = shared
        .keys
        .as_ref()
        .map(|ring| ring.identify(presented_key(&parts.headers)));
    if let Some(id) = &identity
        && !matches!(id, Identity::Known(_))
    {
        return unauthorized(&shared, &parts, body, peer, id, at).await;
    }
    let corr = shared.next_exchange.fetch_add(1, Ordering::Relaxed);
    let user = match identity {
        Some(Identity::Known(name)) => Some(name),
        _ => None,
    };
    let session_id = header_str(&parts.headers, "mcp-session-id");
    let session: Arc<str> = match (&session_id, &user) {
        (Some(sid), _) => Arc::from(format!("session:{sid}")),
        (None, Some(u)) => Arc::from(format!("client:{u}@{}", peer.ip())),
        (None, None) => Arc::from(format!("client:{}", peer.ip())),
    };
    let scope = Arc::new(Scope {
        corr,
        session,
        session_id,
        user,
        client_address: Some(peer.ip().to_string()),
        protocol_version: header_str(&parts.headers, "mcp-protocol-version"),
    });
    match parts.method {
        Method::POST => post(shared, parts, body, scope, at).await,
        Method::DELETE => {
            let resp = forward(&shared, &parts, Body::empty()).await;
            if let Ok(r) = &resp
                && r.status().is_success()
            {
                shared.observer.send(Event::SessionClosed {
                    session: scope.session.clone(),
                });
                if let Some(gate) = &shared.gate {
                    gate.closed(&scope.session);
                }
            }
            relay_response(&shared, resp, scope, at, &[])
        }
        _ => {
            let resp = forward(&shared, &parts, body).await;
            relay_response(&shared, resp, scope, at, &[])
        }
    }
}

/// Reads a body up to `limit`: `Ok(bytes)` when it fit, else `Err` with what was read and
/// the rest of the body.
async fn read_limited(body: Body, limit: usize) -> Result<Bytes, (Bytes, Body)> {
    let mut body = body;
    let mut buf = BytesMut::new();
    loop {
        match body.frame().await {
            None => return Ok(buf.freeze()),
            Some(Err(_)) => return Ok(buf.freeze()),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                    if buf.len() > limit {
                        return Err((buf.freeze(), body));
                    }
                }
            }
        }
    }
}

/// How much of an unauthenticated request's body is read, to record what was refused: no more
/// is ever read before the key is checked, and a body declared larger is not read at all.
pub(crate) const UNAUTHORIZED_PEEK: usize = 64 * 1024;
/// How long the proxy waits for that much.
pub(crate) const UNAUTHORIZED_PEEK_TIME: Duration = Duration::from_secs(2);

/// The body of a refused request, when it is small and comes at once; else nothing.
async fn peek_unauthorized(headers: &HeaderMap, body: Body) -> Bytes {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > UNAUTHORIZED_PEEK as u64) {
        return Bytes::new();
    }
    match tokio::time::timeout(
        UNAUTHORIZED_PEEK_TIME,
        read_limited(body, UNAUTHORIZED_PEEK),
    )
    .await
    {
        Ok(Ok(bytes)) => bytes,
        _ => Bytes::new(),
    }
}

/// A POST body past the observation limit: scanned for its envelope as it streams upstream,
/// and observed by that envelope as soon as its JSON value ends. In `--strict` mode it is
/// refused instead when its head does not say what it is (or the call cannot be queued).
async fn oversize_post(
    shared: &Arc<Shared>,
    parts: &http::request::Parts,
    head: Bytes,
    rest: Body,
    scope: Arc<Scope>,
    at: Instant,
) -> Response {
    let mut scan = EnvelopeScan::new();
    scan.push(&head);
    let e = scan.envelope();
    if shared.observer.strict() {
        let refused = match () {
            _ if !e.settled() => Some((Unrecordable::Unreadable, StatusCode::PAYLOAD_TOO_LARGE)),
            _ if e.is_tools_call() && !shared.observer.has_room() => {
                Some((Unrecordable::QueueFull, StatusCode::SERVICE_UNAVAILABLE))
            }
            _ => None,
        };
        if let Some((why, status)) = refused {
            ProxyStats::add(&shared.observer.stats().refused, 1);
            let id = e.id.as_deref().filter(|_| e.is_request()).unwrap_or("null");
            let mut resp = json_response(strict::refusal_of_id(id, why));
            *resp.status_mut() = status;
            return resp;
        }
    }
    let mut long = LongBody {
        scan: Some(scan),
        observer: shared.observer.clone(),
        scope: scope.clone(),
        at,
    };
    long.ended();
    let rest = futures::StreamExt::map(rest.into_data_stream(), move |chunk| {
        if let Ok(data) = &chunk {
            long.push(data);
        }
        chunk
    });
    let head = futures::stream::once(async move { Ok::<Bytes, axum::Error>(head) });
    let body = Body::from_stream(futures::StreamExt::chain(head, rest));
    let resp = forward(shared, parts, body).await;
    relay_response(shared, resp, scope, at, &[])
}

/// The scan of a body streaming upstream; its envelope goes to the observer once, when the
/// JSON value ends (before its last bytes go on), or when the body is dropped.
struct LongBody {
    scan: Option<EnvelopeScan>,
    observer: ObserverHandle,
    scope: Arc<Scope>,
    at: Instant,
}

impl LongBody {
    fn push(&mut self, data: &[u8]) {
        if let Some(scan) = &mut self.scan {
            scan.push(data);
        }
        self.ended();
    }

    fn ended(&mut self) {
        if self.scan.as_ref().is_some_and(EnvelopeScan::done) {
            self.send(false);
        }
    }

    /// `cut_off`: the body stopped before its JSON value ended (the client or the upstream went
    /// away): a `tools/call` is recorded by what its envelope showed, with or without its id.
    fn send(&mut self, cut_off: bool) {
        if let Some(scan) = self.scan.take() {
            let mut envelope = scan.envelope();
            envelope.cut_off = cut_off;
            self.observer.send(Event::Oversize {
                scope: self.scope.clone(),
                dir: Direction::ClientToServer,
                at: self.at,
                envelope,
            });
        }
    }
}

impl Drop for LongBody {
    fn drop(&mut self) {
        self.send(true);
    }
}

async fn unauthorized(
    shared: &Shared,
    parts: &http::request::Parts,
    body: Body,
    peer: SocketAddr,
    identity: &Identity,
    at: Instant,
) -> Response {
    ProxyStats::add(&shared.observer.stats().unauthorized, 1);
    let bytes = peek_unauthorized(&parts.headers, body).await;
    let requests = requests_in(&bytes);
    let first_id = requests
        .iter()
        .find_map(|(id, _, _)| id.clone())
        .unwrap_or(Value::Null);
    let record = |method: String, id: Option<Value>, params: Option<Value>| {
        let tool = match method.as_str() {
            "tools/call" => params
                .as_ref()
                .and_then(|p| p.get("name"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            // Not a tool call (`initialize`, `tools/list`, a body without requests): named by
            // its method, so that the refusal says what was refused.
            _ => method.clone(),
        };
        let mut call = ToolCall::new(tool, identity.user());
        call.mcp.method = method;
        call.mcp.request_id = id.map(|v| match v {
            Value::String(s) => s,
            other => other.to_string(),
        });
        call.mcp.transport = Some(Transport::Http);
        call.mcp.client_address = Some(peer.ip().to_string());
        call.mcp.session_id = header_str(&parts.headers, "mcp-session-id");
        call.mcp.protocol_version = header_str(&parts.headers, "mcp-protocol-version");
        let meta = params
            .as_ref()
            .and_then(|p| p.get(crate::semconv::MCP_META))
            .and_then(Value::as_object);
        call.ids = ids_from_meta(meta);
        let arguments = params.as_ref().and_then(|p| p.get("arguments"));
        // A refused write is still a write attempt: the daily review lists it.
        if call.mcp.method == "tools/call" {
            call.write = resolve_write(WriteEvidence {
                tool: &call.tool_name,
                arguments,
                ..Default::default()
            });
        }
        call.context = arguments.cloned();
        call.finish(
            Outcome::Error(error_code::UNAUTHORIZED.to_owned()),
            at.elapsed(),
        );
        shared.observer.send(Event::Record(Box::new(call)));
    };
    if requests.is_empty() {
        record(parts.method.as_str().to_owned(), None, None);
    }
    for (id, method, params) in requests {
        if id.is_some() {
            record(method, id, params);
        }
    }
    let mut resp = jsonrpc_error_response(
        StatusCode::UNAUTHORIZED,
        first_id,
        -32001,
        "Unauthorized: a valid API key is required (Authorization: Bearer <key> or X-API-Key)",
    );
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

async fn post(
    shared: Arc<Shared>,
    parts: http::request::Parts,
    body: Body,
    scope: Arc<Scope>,
    at: Instant,
) -> Response {
    let timeout = crate::serve::Limits::default().body_timeout;
    let declared = crate::serve::declared_length(&parts.headers);
    // Against the budget every connection shares: held until the call is forwarded.
    let read = shared
        .budget
        .read_up_to(body, declared, MAX_OBSERVED_BODY, timeout)
        .await;
    let (bytes, _held) = match read {
        Ok(Head::Whole(held)) => (held.bytes.clone(), held),
        Ok(Head::Longer(head, rest)) => {
            let bytes = head.bytes.clone();
            return oversize_post(&shared, &parts, bytes, rest, scope, at).await;
        }
        Err(e) => {
            let (status, message) = match e {
                BodyError::TooSlow(_) => (
                    StatusCode::REQUEST_TIMEOUT,
                    "mcp-otel proxy: the request body did not arrive in time",
                ),
                BodyError::Busy => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "mcp-otel proxy: too many request bytes in flight; retry later",
                ),
                _ => (
                    StatusCode::BAD_REQUEST,
                    "mcp-otel proxy: the request body could not be read",
                ),
            };
            let mut resp = jsonrpc_error_response(status, Value::Null, -32600, message);
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return resp;
        }
    };
    if shared.observer.strict()
        && !shared.observer.has_room()
        && first_tools_call(&bytes).is_some()
        && let Some(answer) = strict::refusal(&bytes, Unrecordable::QueueFull)
    {
        ProxyStats::add(&shared.observer.stats().refused, 1);
        let mut resp = json_response(answer);
        *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        return resp;
    }
    let mut confirmation = None;
    let mut bytes = bytes;
    if let Some(gate) = &shared.gate {
        match gate_post(&shared, gate, &parts, &bytes, &scope).await {
            GateStep::Respond(resp) => return resp,
            GateStep::Forward(c) => confirmation = c,
            GateStep::Rewritten(body, c) => {
                bytes = body;
                confirmation = Some(c);
            }
        }
    }
    let initialize = shared
        .gate
        .as_ref()
        .and_then(|_| legacy::initialize_can_elicit(&bytes));
    let resp = forward_call(&shared, &parts, bytes, scope.clone(), at, confirmation).await;
    if let (Some(can_elicit), Some(gate)) = (initialize, &shared.gate) {
        // The session is named in the answer to `initialize`.
        let session = header_str(resp.headers(), "mcp-session-id")
            .map_or_else(|| scope.session.to_string(), |sid| format!("session:{sid}"));
        gate.initialized(session, can_elicit);
    }
    resp
}

/// What the gate made of a POST.
enum GateStep {
    /// Answered by the proxy (an answer to its question, a refusal, a held call's stream).
    Respond(Response),
    /// Forwarded as usual, the call's record carrying this confirmation.
    Forward(Option<Confirmation>),
    /// This body forwarded instead of the client's (a 2026-07-28 retry without the proxy's
    /// answer and state).
    Rewritten(Bytes, Confirmation),
}

fn json_response(body: Vec<u8>) -> Response {
    let mut resp = Response::new(Body::from(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The confirmation gate's part of a POST: takes the client's answers to the proxy's
/// questions out of the traffic, and holds gated calls until the user approves them.
async fn gate_post(
    shared: &Arc<Shared>,
    gate: &HttpGate,
    parts: &http::request::Parts,
    bytes: &Bytes,
    scope: &Arc<Scope>,
) -> GateStep {
    if memchr::memmem::find(bytes, before::OWN_ID_PREFIX.as_bytes()).is_some()
        && let Some((own, answer)) = legacy::answer(bytes)
        && own.starts_with(before::OWN_ID_PREFIX)
    {
        // Taken whether or not the question is still open: it is the proxy's, not the server's.
        gate.answer(&own, &scope.session, answer);
        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = StatusCode::ACCEPTED;
        return GateStep::Respond(resp);
    }
    if memchr::memmem::find(bytes, b"cancelled").is_some()
        && let Some(call) = held::cancelled_request(bytes)
        && gate.cancel(&scope.session, &call)
    {
        // The held call's exchange records it and withdraws the question; the server never
        // saw the call, so it gets no cancellation either.
        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = StatusCode::ACCEPTED;
        return GateStep::Respond(resp);
    }
    if first_tools_call(bytes).is_none() && memchr::memmem::find(bytes, b"tools").is_none() {
        return GateStep::Forward(None);
    }
    if let Some(errors) = refuse_gated_batch(gate.gate(), bytes) {
        return GateStep::Respond(json_response(errors));
    }
    let Some(call) = parse_call(bytes) else {
        return GateStep::Forward(None);
    };
    if gate.gate().verdict(&call.tool) == Verdict::Unlisted {
        list_tools_for_gate(shared, gate, parts, scope, &call).await;
    }
    if !gate.gate().requires(&call.tool) {
        return GateStep::Forward(None);
    }
    if let Ok(request) = serde_json::from_slice::<Value>(bytes)
        && mrtr::is_modern(&request, scope.protocol_version.as_deref())
    {
        let caller = scope
            .user
            .clone()
            .unwrap_or_else(|| scope.session.to_string());
        return match mrtr::step(gate.gate(), gate.gate().book(), request, &caller) {
            mrtr::ModernStep::Ask(response) => GateStep::Respond(json_response(response)),
            mrtr::ModernStep::Forward { body, confirmation } => {
                GateStep::Rewritten(Bytes::from(body), confirmation)
            }
            mrtr::ModernStep::Refuse {
                response,
                confirmation,
            } => {
                observe_refusal(shared, scope, bytes, confirmation, &response);
                GateStep::Respond(json_response(response))
            }
        };
    }
    if !gate.can_elicit(&scope.session) {
        let confirmation = gated(
            ConfirmationOutcome::UnsupportedClient,
            call.arguments.as_ref(),
            None,
        );
        return match gate.gate().unsupported() {
            Unsupported::Allow => GateStep::Forward(Some(confirmation)),
            Unsupported::Deny => {
                let refusal = refusal_of(gate.gate(), &call.tool, &call.id, &confirmation);
                observe_refusal(shared, scope, bytes, confirmation, &refusal);
                let mut resp = Response::new(Body::from(refusal));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                GateStep::Respond(resp)
            }
        };
    }
    GateStep::Respond(held_call(
        shared.clone(),
        parts.clone(),
        bytes.clone(),
        scope.clone(),
        call,
    ))
}

fn refusal_of(gate: &Gate, tool: &str, id: &str, confirmation: &Confirmation) -> Vec<u8> {
    let text = legacy::refusal_text(tool, confirmation.outcome, gate.timeout().as_secs_f64());
    let mut line = legacy::refusal(id, &text);
    line.pop();
    line
}

/// Records the call in `request` as one the server never saw, answered with `refusal`.
fn observe_refusal(
    shared: &Shared,
    scope: &Arc<Scope>,
    request: &[u8],
    confirmation: Confirmation,
    refusal: &[u8],
) {
    let at = Instant::now();
    let prepared = PreparedCalls::from_elem(held::prepared(request, confirmation), 1);
    shared.observer.send(Event::Messages {
        scope: scope.clone(),
        dir: Direction::ClientToServer,
        bytes: one_line(request),
        at,
        prepared,
    });
    shared.observer.send(Event::Messages {
        scope: scope.clone(),
        dir: Direction::ServerToClient,
        bytes: Bytes::copy_from_slice(refusal),
        at,
        prepared: PreparedCalls::new(),
    });
}

fn sse_event(data: &[u8]) -> Bytes {
    let mut e = Vec::with_capacity(data.len() + 24);
    e.extend_from_slice(b"event: message\ndata: ");
    e.extend_from_slice(data);
    e.extend_from_slice(b"\n\n");
    Bytes::from(e)
}

/// Answers a gated call's POST with an SSE stream: the question now; after the answer, the
/// upstream's answer to the forwarded call, or the refusal.
fn held_call(
    shared: Arc<Shared>,
    parts: http::request::Parts,
    bytes: Bytes,
    scope: Arc<Scope>,
    call: super::confirm::held::GatedCall,
) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let own = shared.own_ids.next();
    let gate = shared.gate.as_ref().expect("only called with a gate");
    let question = gate.gate().question(&call.tool, call.arguments.as_ref());
    let answer = gate.ask(&own, &scope.session, &call.id);
    let first = sse_event(legacy::request(&own, &question).as_bytes());
    let timeout = gate.gate().timeout();
    tokio::spawn(async move {
        let asked = Instant::now();
        if tx.send(first).await.is_err() {
            if let Some(g) = &shared.gate {
                g.forget(&own);
            }
            return;
        }
        let answer = match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(a)) => Some(a),
            _ => None,
        };
        let gate = shared.gate.as_ref().expect("only called with a gate");
        gate.forget(&own);
        let outcome = answer
            .as_ref()
            .map_or(ConfirmationOutcome::Timeout, Answer::outcome);
        let confirmation = gated(outcome, call.arguments.as_ref(), Some(asked.elapsed()));
        if answer == Some(Answer::Withdrawn) {
            // The call, then its cancellation: the observer records it as cancelled.
            let at = Instant::now();
            let notice = serde_json::json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                "params": {"requestId": serde_json::from_str::<Value>(&call.id).unwrap_or_default()}});
            for (bytes, prepared) in [
                (
                    one_line(&bytes),
                    PreparedCalls::from_elem(held::prepared(&bytes, confirmation), 1),
                ),
                (Bytes::from(notice.to_string()), PreparedCalls::new()),
            ] {
                shared.observer.send(Event::Messages {
                    scope: scope.clone(),
                    dir: Direction::ClientToServer,
                    bytes,
                    at,
                    prepared,
                });
            }
            let _ = tx
                .send(sse_event(legacy::withdrawal(&own).as_bytes()))
                .await;
            return;
        }
        if answer != Some(Answer::Approved) {
            let refusal = refusal_of(gate.gate(), &call.tool, &call.id, &confirmation);
            observe_refusal(&shared, &scope, &bytes, confirmation, &refusal);
            let _ = tx.send(sse_event(&refusal)).await;
            return;
        }
        let resp = forward_call(
            &shared,
            &parts,
            bytes,
            scope,
            Instant::now(),
            Some(confirmation),
        )
        .await;
        let json = header_str(resp.headers(), "content-type")
            .is_some_and(|t| t.starts_with("application/json"));
        let mut body = resp.into_body();
        let mut whole = BytesMut::new();
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if json {
                whole.extend_from_slice(&data);
            } else if tx.send(data).await.is_err() {
                return;
            }
        }
        if json && !whole.is_empty() {
            let _ = tx.send(sse_event(&one_line(&whole))).await;
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// Prepares (injection, before-state), observes and forwards one POST body, and relays the
/// upstream's answer. `confirmation` is the gate's outcome for the call in it.
async fn forward_call(
    shared: &Arc<Shared>,
    parts: &http::request::Parts,
    bytes: Bytes,
    scope: Arc<Scope>,
    at: Instant,
    confirmation: Option<Confirmation>,
) -> Response {
    let intercept = shared.inject || shared.tools.has_before_capture() || confirmation.is_some();
    let mut confirmation = confirmation;
    let mut forwarded = bytes.clone();
    let mut prepared = PreparedCalls::new();
    if intercept
        && first_tools_call(&bytes).is_some()
        && let Some(plan) = plan_call(&bytes, shared.inject)
    {
        let before = match shared
            .tools
            .tool(&plan.tool)
            .and_then(|t| t.before.as_ref())
        {
            Some(capture) => Some(capture_before(shared, parts, capture, &plan).await),
            None => None,
        };
        if let Some(splice) = &plan.splice {
            forwarded = Bytes::from(splice.apply(&bytes));
            ProxyStats::add(&shared.observer.stats().injected, 1);
        }
        prepared.push(Prepared {
            id: plan.id,
            ids: plan.ids,
            before,
            confirmation: confirmation.take(),
        });
    }
    if let Some(c) = confirmation {
        // The gate's call in a spelling the scanner does not plan: relayed untouched.
        prepared.push(held::prepared(&bytes, c));
    }
    ProxyStats::add(
        &shared.observer.stats().bytes_from_client,
        bytes.len() as u64,
    );
    shared.observer.send(Event::Messages {
        scope: scope.clone(),
        dir: Direction::ClientToServer,
        bytes: one_line(&bytes),
        at,
        prepared,
    });
    list_tools_once(shared, parts, &scope, &bytes);
    let resp = forward(shared, parts, Body::from(forwarded)).await;
    relay_response(shared, resp, scope, at, &bytes)
}

/// A JSON text as one line (its newlines are whitespace), for the line-oriented observer.
fn one_line(bytes: &[u8]) -> Bytes {
    if memchr::memchr2(b'\n', b'\r', bytes).is_none() {
        return Bytes::copy_from_slice(bytes);
    }
    Bytes::from(
        bytes
            .iter()
            .map(|b| if matches!(b, b'\n' | b'\r') { b' ' } else { *b })
            .collect::<Vec<u8>>(),
    )
}

/// The upstream request for `parts` with `body`: same method, headers minus hop-by-hop ones
/// (and the key unless `--forward-auth`), the upstream URI plus the query string.
fn upstream_request(
    shared: &Shared,
    parts: &http::request::Parts,
    body: Body,
) -> http::Request<Body> {
    let mut uri = shared.upstream.to_string();
    if let Some(q) = parts.uri.query() {
        uri.push(if shared.upstream.query().is_some() {
            '&'
        } else {
            '?'
        });
        uri.push_str(q);
    }
    let mut req = http::Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri.parse().unwrap_or_else(|_| shared.upstream.clone());
    let strip_key = shared.keys.is_some() && !shared.forward_auth;
    let headers = req.headers_mut();
    for (name, value) in &parts.headers {
        if hop_by_hop(name)
            || (strip_key && (name == header::AUTHORIZATION || name.as_str() == "x-api-key"))
        {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    req
}

async fn forward(
    shared: &Shared,
    parts: &http::request::Parts,
    body: Body,
) -> Result<http::Response<hyper::body::Incoming>, String> {
    shared
        .client
        .request(upstream_request(shared, parts, body))
        .await
        .map_err(|e| e.to_string())
}

/// Streams the upstream response to the client, teeing a copy to the observer. `request` is
/// the client's body when it was read whole (else empty): an unreachable upstream is answered
/// per request in it.
fn relay_response(
    shared: &Shared,
    resp: Result<http::Response<hyper::body::Incoming>, String>,
    scope: Arc<Scope>,
    at: Instant,
    request: &[u8],
) -> Response {
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            shared.observer.send(Event::ExchangeFailed {
                corr: scope.corr,
                code: StatusCode::BAD_GATEWAY.as_u16().to_string(),
                at: Instant::now(),
            });
            return bad_gateway(
                request,
                &format!("mcp-otel proxy: upstream unreachable: {e}"),
            );
        }
    };
    let status = resp.status();
    let (mut parts, body) = resp.into_parts();
    if !status.is_success() {
        shared.observer.send(Event::ExchangeFailed {
            corr: scope.corr,
            code: status.as_u16().to_string(),
            at: Instant::now(),
        });
    }
    // A new session is named in the response to `initialize`: its messages belong to it.
    let scope = match header_str(&parts.headers, "mcp-session-id") {
        Some(sid) if scope.session_id.as_deref() != Some(sid.as_str()) => Arc::new(Scope {
            session: Arc::from(format!("session:{sid}")),
            session_id: Some(sid),
            ..(*scope).clone()
        }),
        _ => scope,
    };
    let content_type = header_str(&parts.headers, "content-type").unwrap_or_default();
    let kind = if !status.is_success() {
        TeeKind::Ignore
    } else if content_type.starts_with("text/event-stream") {
        TeeKind::Sse(SseParser::default())
    } else if content_type.starts_with("application/json") {
        TeeKind::Json(BytesMut::new())
    } else {
        TeeKind::Ignore
    };
    let mut tee = Tee {
        observer: shared.observer.clone(),
        scope,
        kind,
        last: at,
    };
    // The body goes through unchanged, so its Content-Length stays true.
    let headers: Vec<_> = parts
        .headers
        .iter()
        .filter(|(n, _)| !hop_by_hop(n) || *n == header::CONTENT_LENGTH)
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    parts.headers.clear();
    for (n, v) in headers {
        parts.headers.append(n, v);
    }
    let body = body.map_frame(move |frame| {
        if let Some(data) = frame.data_ref() {
            tee.chunk(data);
        }
        frame
    });
    Response::from_parts(parts, Body::new(body))
}

enum TeeKind {
    Json(BytesMut),
    /// A JSON body past the observation limit, scanned for its envelope.
    Long(Box<EnvelopeScan>),
    Sse(SseParser),
    Ignore,
}

/// Cuts a response body into messages for the observer while the body streams past.
struct Tee {
    observer: ObserverHandle,
    scope: Arc<Scope>,
    kind: TeeKind,
    last: Instant,
}

impl Tee {
    fn chunk(&mut self, data: &Bytes) {
        self.last = Instant::now();
        ProxyStats::add(&self.observer.stats().bytes_from_server, data.len() as u64);
        match &mut self.kind {
            TeeKind::Json(buf) => {
                if buf.len() + data.len() > MAX_OBSERVED_BODY {
                    // Observed by its envelope from here on.
                    let mut scan = EnvelopeScan::new();
                    scan.push(buf);
                    scan.push(data);
                    self.kind = TeeKind::Long(Box::new(scan));
                } else {
                    buf.extend_from_slice(data);
                }
            }
            TeeKind::Sse(parser) => {
                let mut events = Vec::new();
                parser.push(data, &mut events);
                for e in events {
                    self.message(&e);
                }
            }
            TeeKind::Long(scan) => scan.push(data),
            TeeKind::Ignore => {}
        }
    }

    fn message(&self, data: &[u8]) {
        self.observer.send(Event::Messages {
            scope: self.scope.clone(),
            dir: Direction::ServerToClient,
            bytes: one_line(data),
            at: self.last,
            prepared: PreparedCalls::new(),
        });
    }
}

impl Drop for Tee {
    /// The body is done (complete, or dropped because the client went away).
    fn drop(&mut self) {
        if let TeeKind::Json(buf) = &self.kind
            && !buf.is_empty()
        {
            self.message(buf);
        }
        if let TeeKind::Long(scan) = &self.kind {
            self.observer.send(Event::Oversize {
                scope: self.scope.clone(),
                dir: Direction::ServerToClient,
                at: self.last,
                envelope: scan.envelope(),
            });
        }
        self.observer.send(Event::ExchangeEnded {
            corr: self.scope.corr,
            at: Instant::now(),
        });
    }
}

/// Server-sent events → the `data` of each event.
#[derive(Default)]
struct SseParser {
    line: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
}

impl SseParser {
    fn push(&mut self, chunk: &[u8], events: &mut Vec<Vec<u8>>) {
        let mut rest = chunk;
        while let Some(nl) = memchr::memchr(b'\n', rest) {
            self.line.extend_from_slice(&rest[..nl]);
            rest = &rest[nl + 1..];
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.is_empty() {
                if self.has_data {
                    events.push(std::mem::take(&mut self.data));
                    self.has_data = false;
                }
            } else if let Some(value) = line.strip_prefix(b"data:") {
                let value = value.strip_prefix(b" ").unwrap_or(value);
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            self.line = line;
            self.line.clear();
            if self.line.capacity() > 64 * 1024 {
                self.line = Vec::new();
            }
        }
        if self.line.len() + rest.len() <= MAX_OBSERVED_BODY {
            self.line.extend_from_slice(rest);
        }
    }
}

/// Sends the configured read call upstream in the client's session and reads its answer.
async fn capture_before(
    shared: &Shared,
    parts: &http::request::Parts,
    capture: &super::config::BeforeCapture,
    plan: &CallPlan<'_>,
) -> Result<Value, String> {
    let stats = shared.observer.stats();
    let read = before::prepare(capture, plan, &shared.own_ids, stats)?;
    let id = read.id.as_str();
    let mut body = read.request.clone();
    body.pop();
    let mut own_parts = parts.clone();
    // The read is a plain tools/call: the client's per-request routing headers do not fit it.
    own_parts.headers.remove("mcp-method");
    own_parts.headers.remove("mcp-name");
    own_parts
        .headers
        .insert("mcp-method", HeaderValue::from_static("tools/call"));
    if let Ok(v) = HeaderValue::from_str(read.tool()) {
        own_parts.headers.insert("mcp-name", v);
    }
    let exchange = own_exchange(shared, &own_parts, body, id);
    let answer = match tokio::time::timeout(read.timeout(), exchange).await {
        Ok(Ok(bytes)) => before::Answer::Reply(bytes),
        Ok(Err(e)) => before::Answer::Failed(e),
        Err(_) => before::Answer::Silence,
    };
    before::conclude(&read, answer, stats)
}

/// Posts one of the proxy's own requests upstream (headers from `parts`) and returns the
/// answer with `id`: the JSON body, or the SSE event that carries it.
async fn own_exchange(
    shared: &Shared,
    parts: &http::request::Parts,
    body: Vec<u8>,
    id: &str,
) -> Result<Vec<u8>, String> {
    let req = upstream_request(shared, parts, Body::from(body));
    let resp = shared
        .client
        .request(req)
        .await
        .map_err(|e| format!("upstream: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("upstream answered {}", resp.status()));
    }
    let sse = header_str(resp.headers(), "content-type")
        .is_some_and(|c| c.starts_with("text/event-stream"));
    let mut body = resp.into_body();
    let mut parser = SseParser::default();
    let mut json = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("upstream body: {e}"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if !sse {
            json.extend_from_slice(&data);
            continue;
        }
        let mut events = Vec::new();
        parser.push(&data, &mut events);
        if let Some(answer) = events
            .into_iter()
            .find(|e| memchr::memmem::find(e, id.as_bytes()).is_some())
        {
            return Ok(answer);
        }
    }
    Ok(json)
}

/// Sessions that listed their tools (or had the proxy list them), at most this many remembered.
const LISTED_SESSIONS: usize = 10_000;

/// After the first `tools/call` of a session that has not listed its tools, the proxy lists
/// them itself, in the client's session with its own id, so that the observer learns the
/// annotations. Not awaited: the call goes on at once; the observer holds the call's record
/// until the list is in. Returns at once.
fn list_tools_once(shared: &Arc<Shared>, parts: &http::request::Parts, scope: &Scope, body: &[u8]) {
    let listing = memchr::memmem::find(body, b"\"tools/list\"").is_some();
    let calling = first_tools_call(body).is_some();
    if !listing && !calling {
        return;
    }
    {
        let mut listed = shared.listed.lock().unwrap_or_else(|e| e.into_inner());
        if listed.contains(&scope.session) {
            return;
        }
        if listed.len() >= LISTED_SESSIONS {
            listed.clear();
        }
        listed.insert(scope.session.clone());
    }
    if listing {
        return;
    }
    let listed = own_tools_list(shared, parts, scope, None);
    let shared = shared.clone();
    tokio::spawn(async move {
        if let (Some(answer), Some(gate)) = (listed.await, &shared.gate) {
            gate.gate().learn_tools(&answer);
        }
    });
}

/// The proxy's own `tools/list` in the client's session (the protocol keys of `meta`, a call's
/// `_meta`, go with it): observed now, so that the observer knows a list is under way before any
/// answer; the returned future posts it and hands the answer to the observer, and returns it.
fn own_tools_list(
    shared: &Arc<Shared>,
    parts: &http::request::Parts,
    scope: &Scope,
    meta: Option<&serde_json::Map<String, Value>>,
) -> impl Future<Output = Option<Vec<u8>>> + Send + 'static {
    let (id, mut request) = before::tools_list_request_like(&shared.own_ids, meta);
    request.pop();
    let own_scope = Arc::new(Scope {
        corr: shared.next_exchange.fetch_add(1, Ordering::Relaxed),
        ..scope.clone()
    });
    shared.observer.send(Event::Messages {
        scope: own_scope.clone(),
        dir: Direction::ClientToServer,
        bytes: Bytes::from(request.clone()),
        at: Instant::now(),
        prepared: PreparedCalls::new(),
    });
    let mut own_parts = parts.clone();
    own_parts.headers.remove("mcp-name");
    own_parts
        .headers
        .insert("mcp-method", HeaderValue::from_static("tools/list"));
    let shared = shared.clone();
    async move {
        let exchange = own_exchange(&shared, &own_parts, request, &id);
        let wait = super::observe::correlate::TOOLS_LIST_WAIT;
        let answer = tokio::time::timeout(wait, exchange).await.ok()?.ok()?;
        shared.observer.send(Event::Messages {
            scope: own_scope,
            dir: Direction::ServerToClient,
            bytes: one_line(&answer),
            at: Instant::now(),
            prepared: PreparedCalls::new(),
        });
        Some(answer)
    }
}

/// The gate needs the tools' annotations before it can decide on the call `call`: the proxy
/// lists them itself (see [`own_tools_list`]) and waits for the answer; without one, calls
/// whose gating depends on annotations are gated (closed).
async fn list_tools_for_gate(
    shared: &Arc<Shared>,
    gate: &HttpGate,
    parts: &http::request::Parts,
    scope: &Scope,
    call: &super::confirm::held::GatedCall,
) {
    {
        let mut listed = shared.listed.lock().unwrap_or_else(|e| e.into_inner());
        if listed.len() >= LISTED_SESSIONS {
            listed.clear();
        }
        listed.insert(scope.session.clone());
    }
    if let Some(answer) = own_tools_list(shared, parts, scope, call.meta.as_ref()).await {
        gate.gate().learn_tools(&answer);
    }
    if gate.gate().verdict(&call.tool) == Verdict::Unlisted {
        gate.gate().listing_failed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_are_cut_across_chunks() {
        let mut p = SseParser::default();
        let mut ev = Vec::new();
        p.push(b"event: message\r\nid: 1\r\ndata: {\"a\":", &mut ev);
        assert!(ev.is_empty());
        p.push(b"1}\r\n\r\n: keepalive\n\ndata: x\ndata: y\n\n", &mut ev);
        assert_eq!(ev, vec![b"{\"a\":1}".to_vec(), b"x\ny".to_vec()]);
    }

    #[test]
    fn upstream_must_be_plain_http() {
        assert!(parse_upstream("http://127.0.0.1:3001/mcp").is_ok());
        assert!(parse_upstream("https://example/mcp").is_err());
        assert!(parse_upstream("127.0.0.1:3001").is_err());
    }

    async fn body_of(resp: Response) -> Value {
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    /// An unreachable upstream is answered with the ids of the requests that were sent.
    #[tokio::test]
    async fn bad_gateway_answers_with_the_request_ids() {
        let one = body_of(bad_gateway(
            br#"{"jsonrpc":"2.0","id":"call-7","method":"tools/call","params":{}}"#,
            "down",
        ))
        .await;
        assert_eq!(one["id"], "call-7");
        assert_eq!(one["error"]["code"], -32603);
        assert_eq!(one["error"]["message"], "down");
        let batch = body_of(bad_gateway(
            br#"[{"jsonrpc":"2.0","id":1,"method":"ping"},
                 {"jsonrpc":"2.0","method":"notifications/initialized"},
                 {"jsonrpc":"2.0","id":2,"method":"tools/list"}]"#,
            "down",
        ))
        .await;
        let ids: Vec<&Value> = batch.as_array().unwrap().iter().map(|e| &e["id"]).collect();
        assert_eq!(ids, [&json!(1), &json!(2)]);
        let get = body_of(bad_gateway(b"", "down")).await;
        assert_eq!(get["id"], Value::Null);
    }

    /// Through the running proxy: a call to an upstream that is not there gets a 502 whose
    /// JSON-RPC error has the call's id.
    #[tokio::test]
    async fn an_unreachable_upstream_answers_the_call_by_its_id() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let upstream = format!("http://{}/mcp", closed.local_addr().unwrap());
        drop(closed);
        let emitter = crate::emit::Emitter::new(&crate::emit::EmitConfig::default()).unwrap();
        let observer =
            ObserverHandle::spawn(crate::capture::proxy::ObserverConfig::default(), emitter)
                .unwrap();
        let proxy = HttpProxy::bind(
            HttpOptions {
                listen: "127.0.0.1:0".parse().unwrap(),
                upstream,
                keys: None,
                forward_auth: false,
                inject: true,
                tools: Arc::default(),
            },
            observer,
        )
        .await
        .unwrap();
        let addr = proxy.local_addr();
        tokio::spawn(proxy.run_until(std::future::pending()));
        let resp = reqwest::Client::new()
            .post(format!("http://{addr}/mcp"))
            .header("content-type", "application/json")
            .body(r#"{"jsonrpc":"2.0","id":"call-9","method":"tools/call","params":{"name":"x"}}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 502);
        let body: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
        assert_eq!(body["id"], "call-9", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("upstream unreachable"),
            "{body}"
        );
    }
}
