//! Before-state capture: for a tool configured with `before = { tool = …, args = … }`, the
//! proxy first sends that read call to the server itself, in its own request-id space, and
//! records the answer as the call's `before_state`.
//!
//! This module owns the read request, the id space, the answer's interpretation and the
//! counters. The same id space carries the proxy's own `tools/list` ([`tools_list_request`]),
//! sent once per session that calls tools without having listed them, so that the observer
//! learns the tools' annotations. A transport supplies only "send this request and await its answer": the stdio
//! relay writes a line and waits on a channel, the HTTP proxy posts in the client's session.

use super::config::BeforeCapture;
use super::inject::CallPlan;
use super::observe::ProxyStats;
use crate::capture::classify::{is_tool_error, state_of_result};
use crate::record::TraceIds;
use crate::semconv as sc;
use serde_json::{Map, Value};
use std::sync::atomic::{AtomicU64, Ordering};

/// The prefix of the proxy's own request ids (`"mcp-otel-proxy-7"`): the relays take answers
/// with such an id out of the stream, so the client never sees them.
pub(crate) const OWN_ID_PREFIX: &str = "mcp-otel-proxy-";

/// The proxy's own request ids, one sequence per proxy.
#[derive(Debug, Default)]
pub(crate) struct OwnIds(AtomicU64);

impl OwnIds {
    /// The next id, `mcp-otel-proxy-N`.
    pub(crate) fn next(&self) -> String {
        format!(
            "{OWN_ID_PREFIX}{}",
            self.0.fetch_add(1, Ordering::Relaxed) + 1
        )
    }
}

/// A read call ready to send.
#[derive(Debug)]
pub(crate) struct BeforeRead {
    /// The read's own JSON-RPC id (a string).
    pub(crate) id: String,
    /// The request, one JSON line ending in `\n`.
    pub(crate) request: Vec<u8>,
    tool: String,
    timeout: std::time::Duration,
}

impl BeforeRead {
    /// How long the transport waits for the answer.
    pub(crate) fn timeout(&self) -> std::time::Duration {
        self.timeout
    }

    /// The read tool's name (the HTTP proxy's `Mcp-Name`).
    pub(crate) fn tool(&self) -> &str {
        &self.tool
    }
}

/// What the transport got back.
#[derive(Debug)]
pub(crate) enum Answer {
    /// The answer's bytes (one JSON-RPC response).
    Reply(Vec<u8>),
    /// Nothing arrived within [`BeforeRead::timeout`].
    Silence,
    /// The exchange failed: why.
    Failed(String),
}

/// Builds the read for the call `plan`; `Err` (counted as a failed capture) when the call's
/// arguments do not have what the configured read needs.
pub(crate) fn prepare(
    capture: &BeforeCapture,
    plan: &CallPlan<'_>,
    ids: &OwnIds,
    stats: &ProxyStats,
) -> Result<BeforeRead, String> {
    let arguments = capture
        .arguments_for(plan.arguments().as_ref())
        .inspect_err(|_| ProxyStats::add(&stats.before_failed, 1))?;
    let id = ids.next();
    let request = before_request(&id, capture, arguments, plan.meta().as_ref(), &plan.ids);
    Ok(BeforeRead {
        id,
        request,
        tool: capture.tool.clone(),
        timeout: capture.timeout,
    })
}

/// The state to record from the transport's answer, or why there is none; counted.
pub(crate) fn conclude(
    read: &BeforeRead,
    answer: Answer,
    stats: &ProxyStats,
) -> Result<Value, String> {
    let state = match answer {
        Answer::Reply(bytes) => before_state_from_response(&bytes),
        Answer::Silence => Err(format!(
            "no answer from `{}` within {:?}",
            read.tool, read.timeout
        )),
        Answer::Failed(why) => Err(why),
    };
    let counter = match &state {
        Ok(_) => &stats.before_captured,
        Err(_) => &stats.before_failed,
    };
    ProxyStats::add(counter, 1);
    state
}

/// A before-state read's result → the state to record, or why there is none.
fn before_state_from_response(response: &[u8]) -> Result<Value, String> {
    let v: Value =
        serde_json::from_slice(response).map_err(|e| format!("malformed response: {e}"))?;
    if let Some(e) = v.get("error") {
        return Err(format!("JSON-RPC error {e}"));
    }
    let result = v.get("result").ok_or("response has no result")?;
    if is_tool_error(result) {
        return Err("the read tool reported an error".into());
    }
    state_of_result(result).ok_or_else(|| "the read tool returned no JSON state".into())
}

/// The JSON-RPC request the proxy sends on its own to read a before-state. `meta` is the
/// intercepted call's `_meta` minus its progress token (stateless peers need their
/// protocol version and client info on every request), with the proxy span as the parent.
fn before_request(
    id: &str,
    capture: &BeforeCapture,
    arguments: Value,
    meta: Option<&Map<String, Value>>,
    ids: &TraceIds,
) -> Vec<u8> {
    let mut meta = meta.cloned().unwrap_or_default();
    meta.remove(sc::META_PROGRESS_TOKEN);
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

/// The proxy's own `tools/list` request: (its id, the request as one JSON line ending in `\n`).
/// Its answer goes to the observer like any `tools/list` answer, but not to the client.
pub(crate) fn tools_list_request(ids: &OwnIds) -> (String, Vec<u8>) {
    tools_list_request_like(ids, None)
}

/// [`tools_list_request`] carrying the protocol keys (`io.modelcontextprotocol/…`: version,
/// client info, capabilities) of `meta`, a call's `_meta`: a 2026-07-28 server needs them in
/// every request.
pub(crate) fn tools_list_request_like(
    ids: &OwnIds,
    meta: Option<&Map<String, Value>>,
) -> (String, Vec<u8>) {
    let id = ids.next();
    let protocol: Map<String, Value> = meta
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.starts_with("io.modelcontextprotocol/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut msg = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "tools/list"});
    if !protocol.is_empty() {
        msg["params"] = serde_json::json!({ "_meta": protocol });
    }
    let mut out = serde_json::to_vec(&msg).expect("a JSON value serialises");
    out.push(b'\n');
    (id, out)
}
