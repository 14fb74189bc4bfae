//! The proxy's counters, kept by the relays and the observer and printed in the exit summary.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters kept by the relays and the observer.
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub(crate) messages_from_client: AtomicU64,
    pub(crate) messages_from_server: AtomicU64,
    pub(crate) bytes_from_client: AtomicU64,
    pub(crate) bytes_from_server: AtomicU64,
    /// Lines or bodies that are not JSON-RPC (relayed as they are).
    pub(crate) malformed: AtomicU64,
    /// Messages longer than the observation limit (relayed, observed by their envelope only).
    pub(crate) oversize: AtomicU64,
    /// Oversize messages whose envelope could not be read (not one JSON object, a field given
    /// twice): relayed unrecorded in the default mode.
    pub(crate) unobservable: AtomicU64,
    /// Open calls given up to make room (recorded as `evicted`).
    pub(crate) evicted: AtomicU64,
    /// `--strict`: calls refused because they could not be recorded.
    pub(crate) refused: AtomicU64,
    pub(crate) tool_calls: AtomicU64,
    pub(crate) server_requests: AtomicU64,
    pub(crate) unmatched_responses: AtomicU64,
    /// Responses that arrived after their call was recorded as timed out or cancelled.
    pub(crate) late_responses: AtomicU64,
    pub(crate) injected: AtomicU64,
    pub(crate) before_captured: AtomicU64,
    pub(crate) before_failed: AtomicU64,
    /// Events lost because the observer's queue was full.
    pub(crate) observe_dropped: AtomicU64,
    pub(crate) unauthorized: AtomicU64,
}

impl ProxyStats {
    pub(crate) fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Observations lost: events dropped on a full queue, and oversize messages that could not
    /// be read. Zero in `--strict` mode, where such calls are refused instead.
    pub(crate) fn dropped(&self) -> u64 {
        Self::get(&self.observe_dropped) + Self::get(&self.unobservable)
    }

    /// One line for the operator at exit.
    pub(crate) fn summary(&self) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "{} messages from the client, {} from the server, {} tool calls recorded, \
             {} malformed, {} oversize, {} unmatched responses, {} late, {} evicted, \
             {} observations dropped ({} on a full queue, {} unreadable), {} refused (strict)",
            g(&self.messages_from_client),
            g(&self.messages_from_server),
            g(&self.tool_calls),
            g(&self.malformed),
            g(&self.oversize),
            g(&self.unmatched_responses),
            g(&self.late_responses),
            g(&self.evicted),
            self.dropped(),
            g(&self.observe_dropped),
            g(&self.unobservable),
            g(&self.refused),
        )
    }
}
