//! Live calls over server-sent events (`GET /api/console/live`): every counted call that
//! matches the filter, sent in batches at most every [`FLUSH`] so that a busy collector costs a
//! browser a few events a second, not one per call.
//!
//! Each client has a task that reads the feed's broadcast and a bounded buffer of
//! [`MAX_PENDING`] calls: what does not fit, and any batch the broadcast dropped because the
//! client fell behind, is skipped and counted, and the next event says how many. Ingestion never
//! waits for a client.

use super::feed::CallFeed;
use crate::display::visible;
use crate::record::ToolCall;
use axum::response::sse::{Event, KeepAlive, Sse};
use serde::Deserialize;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

/// The most often a client gets an event.
pub(crate) const FLUSH: Duration = Duration::from_millis(250);
/// Calls a client's buffer holds between two events.
pub(crate) const MAX_PENDING: usize = 500;

/// Which calls a live view wants; every field given must match: `user` and `tool` as a part of
/// the name, ignoring case (`ali` finds `alice`), the others exactly.
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct LiveFilter {
    pub(crate) user: Option<String>,
    pub(crate) tool: Option<String>,
    pub(crate) status: Option<String>,
    pub(crate) error_code: Option<String>,
    pub(crate) operation: Option<String>,
}

impl LiveFilter {
    fn normalised(mut self) -> Self {
        for f in [
            &mut self.user,
            &mut self.tool,
            &mut self.status,
            &mut self.error_code,
            &mut self.operation,
        ] {
            if f.as_deref().is_some_and(|s| s.is_empty()) {
                *f = None;
            }
        }
        for s in [&mut self.user, &mut self.tool].into_iter().flatten() {
            *s = s.to_lowercase();
        }
        self
    }

    pub(crate) fn matches(&self, c: &ToolCall) -> bool {
        let is = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| Some(w) == have)
        };
        let part = |want: &Option<String>, have: &str| {
            want.as_deref()
                .is_none_or(|w| have.to_lowercase().contains(w))
        };
        part(&self.user, &c.user)
            && part(&self.tool, &c.tool_name)
            && is(&self.status, Some(c.status.as_str()))
            && is(&self.error_code, c.error_code.as_deref())
            && is(&self.operation, c.operation_type().map(|o| o.as_str()))
    }
}

/// A call as the live view shows it, names made visible.
pub(crate) fn call_json(c: &ToolCall) -> Value {
    let w = c.write.as_ref();
    json!({
        "timestamp": c.timestamp_rfc3339(),
        "tool_name": visible(&c.tool_name),
        "user": visible(&c.user),
        "status": c.status.as_str(),
        "duration_ms": c.duration_ms,
        "error_code": c.error_code.as_deref().map(visible),
        "operation_type": c.operation_type().map(|o| o.as_str()),
        "resource_id": w.and_then(|w| w.resource_id.as_deref()).map(visible),
        "user_confirmation": w.and_then(|w| w.user_confirmation),
        "method": visible(&c.mcp.method),
        "trace_id": c.ids.trace_id_hex(),
        "span_id": c.ids.span_id_hex(),
    })
}

/// The SSE response for one client.
pub(crate) fn stream(
    feed: &CallFeed,
    filter: LiveFilter,
    stop: CancellationToken,
) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>> + use<>> {
    let filter = filter.normalised();
    let rx = feed.subscribe();
    // Two events in flight at most: a client that reads slower skips, it does not queue.
    let (tx, out) = mpsc::channel::<Event>(2);
    tokio::spawn(pump(rx, tx, filter, stop));
    let events = futures::stream::unfold(out, |mut out| async move {
        out.recv().await.map(|e| (Ok(e), out))
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// Reads the broadcast, filters, and sends what gathered every [`FLUSH`].
async fn pump(
    mut rx: broadcast::Receiver<super::feed::CallBatch>,
    tx: mpsc::Sender<Event>,
    filter: LiveFilter,
    stop: CancellationToken,
) {
    let mut pending: Vec<Value> = Vec::new();
    let mut skipped: u64 = 0;
    let mut skipped_batches: u64 = 0;
    let mut tick = tokio::time::interval(FLUSH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first event says the stream is open, so a page knows it is live.
    if tx
        .send(Event::default().event("open").data("{}"))
        .await
        .is_err()
    {
        return;
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tx.closed() => return,
            got = rx.recv() => match got {
                Ok(batch) => {
                    for c in batch.iter().filter(|c| filter.matches(c)) {
                        if pending.len() < MAX_PENDING {
                            pending.push(call_json(c));
                        } else {
                            skipped += 1;
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => skipped_batches += n,
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = tick.tick() => {
                if pending.is_empty() && skipped == 0 && skipped_batches == 0 {
                    continue;
                }
                let data = json!({
                    "calls": pending,
                    "skipped": skipped,
                    "skipped_batches": skipped_batches,
                });
                let event = Event::default().event("calls").data(data.to_string());
                match tx.try_send(event) {
                    Ok(()) => {
                        pending = Vec::new();
                        skipped = 0;
                        skipped_batches = 0;
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        // The client has not read the last two events: drop what gathered.
                        skipped += pending.len() as u64;
                        pending.clear();
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{OperationType, Status, WriteOp};

    #[test]
    fn every_given_field_must_match() {
        let mut c = ToolCall::new("delete_task", "alice");
        c.status = Status::Error;
        c.error_code = Some("403".into());
        c.write = Some(WriteOp::new(OperationType::Delete));
        let f = |s: &str| serde_json::from_str::<LiveFilter>(s).unwrap().normalised();
        assert!(f("{}").matches(&c));
        assert!(f(r#"{"user":"alice","tool":"","operation":"delete"}"#).matches(&c));
        assert!(f(r#"{"status":"error","error_code":"403"}"#).matches(&c));
        assert!(!f(r#"{"user":"bob"}"#).matches(&c));
        assert!(!f(r#"{"operation":"create"}"#).matches(&c));
        assert!(!f(r#"{"error_code":"401"}"#).matches(&ToolCall::new("x", "y")));
        // Names match by a part, ignoring case; the other fields exactly.
        assert!(f(r#"{"user":"ALI","tool":"delete"}"#).matches(&c));
        assert!(f(r#"{"tool":"_ta"}"#).matches(&c));
        assert!(!f(r#"{"user":"alicia"}"#).matches(&c));
        assert!(!f(r#"{"status":"err"}"#).matches(&c));
    }

    #[test]
    fn names_are_shown_with_their_control_characters_visible() {
        let c = ToolCall::new("t\x1b[2K", "mallory\u{202e}");
        let j = call_json(&c);
        assert_eq!(j["tool_name"], "t\\u{1b}[2K");
        assert_eq!(j["user"], "mallory\\u{202e}");
    }
}
