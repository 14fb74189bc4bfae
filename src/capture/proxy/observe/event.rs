//! The event protocol between the relays and the observer: what travelled, which way, in which
//! correlation scope, and what the relay already learned about a call before forwarding it.

use crate::capture::proxy::inject::IdText;
use crate::record::{Confirmation, ToolCall, TraceIds};
use bytes::Bytes;
use serde_json::Value;
use std::sync::Arc;
use std::time::Instant;

/// Which way a message travelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Direction {
    ClientToServer,
    ServerToClient,
}

/// Where a message belongs: its correlation scope and its session, plus what the transport
/// knows about the caller.
#[derive(Clone, Debug, Default)]
pub(crate) struct Scope {
    /// Requests and responses are matched within one scope (stdio: 0; HTTP: one exchange).
    pub(crate) corr: u64,
    /// Session state key (stdio: one; HTTP: the session id, or the client for stateless peers).
    pub(crate) session: Arc<str>,
    /// `Mcp-Session-Id` as the client sent it.
    pub(crate) session_id: Option<String>,
    /// The identity the transport established (an API key's name).
    pub(crate) user: Option<String>,
    pub(crate) client_address: Option<String>,
    /// The `MCP-Protocol-Version` header.
    pub(crate) protocol_version: Option<String>,
}

/// The calls prepared in one batch of messages: mostly none or one, kept inline so that the
/// relay path does not allocate for them.
pub(crate) type PreparedCalls = smallvec::SmallVec<[Prepared; 1]>;

/// What the relay learned about a `tools/call` before forwarding it.
#[derive(Clone, Debug)]
pub(crate) struct Prepared {
    /// The request id as JSON text.
    pub(crate) id: IdText,
    /// The proxy span's ids (the injected `traceparent` names this span).
    pub(crate) ids: TraceIds,
    pub(crate) before: Option<Result<Value, String>>,
    /// The confirmation gate's outcome, when the gate held or refused the call.
    pub(crate) confirmation: Option<Confirmation>,
}

/// Why bytes went by without being observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unobserved {
    /// Part of a line longer than the observation limit.
    Oversize,
    /// A partial line that does not look like JSON, relayed at once.
    NotJson,
}

/// What the relays tell the observer.
#[derive(Debug)]
pub(crate) enum Event {
    /// Complete messages: newline-delimited (stdio) or one JSON value (HTTP).
    Messages {
        scope: Arc<Scope>,
        dir: Direction,
        bytes: Bytes,
        at: Instant,
        prepared: PreparedCalls,
    },
    Unobserved {
        why: Unobserved,
    },
    /// A message past the observation limit, by what a scan of its bytes found (queued before
    /// its last bytes are relayed).
    Oversize {
        scope: Arc<Scope>,
        dir: Direction,
        at: Instant,
        envelope: crate::capture::proxy::envelope::Envelope,
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
    /// The stdio client closed its side: the calls of `session` waiting for a `tools/list`
    /// are recorded now, with what is known (they are about to be exported).
    ClientClosed {
        session: Arc<str>,
    },
    /// The server process exited: open calls end with `server_exited`, or with `unanswered`
    /// when the client had closed its side first (the server ended the session without
    /// answering them: it was not caught in the middle of them).
    ServerExited {
        at: Instant,
        client_closed: bool,
    },
    /// The proxy is stopping (a signal): every open call, task-augmented ones included, ends
    /// with `proxy_terminated`.
    Terminated {
        at: Instant,
    },
    /// A call the transport itself answered (an HTTP 401), already complete.
    Record(Box<ToolCall>),
    /// Replies once everything sent before it is processed.
    Barrier(std::sync::mpsc::Sender<()>),
}
