//! What the console sees of ingestion as it happens: every counted batch of calls, broadcast to
//! the live views as one shared `Arc` (no per-call copy, no lock held by a slow reader), a
//! bounded window of recent calls for the overview when there is no audit trail, and a bounded
//! history of alert firings and resolutions.
//!
//! [`CallFeed::publish`] is on ingestion's path: it moves the batch into an `Arc`, pushes that
//! `Arc` into the recent window (only without an audit trail; one short lock per batch) and
//! sends it on a broadcast channel, which never waits: a live view that falls behind misses
//! batches and says how many ([`tokio::sync::broadcast::error::RecvError::Lagged`]).

use crate::collect::alerts::{Alert, AlertEvent};
use crate::record::ToolCall;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// One counted batch, shared by every reader.
pub(crate) type CallBatch = Arc<Vec<ToolCall>>;

/// Batches the broadcast keeps for a reader that has not caught up yet.
const LIVE_BATCHES: usize = 1024;
/// Calls the recent window keeps (without an audit trail).
pub(crate) const RECENT_CALLS: usize = 100_000;
/// Alert firings the history keeps.
pub(crate) const ALERT_HISTORY: usize = 500;

/// The console's tap on ingestion.
pub struct CallFeed {
    live: broadcast::Sender<CallBatch>,
    recent: Option<Mutex<Recent>>,
    alerts: Mutex<VecDeque<AlertRecord>>,
}

impl std::fmt::Debug for CallFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallFeed").finish_non_exhaustive()
    }
}

/// The last [`RECENT_CALLS`] counted calls, as the batches they came in.
#[derive(Default)]
struct Recent {
    batches: VecDeque<CallBatch>,
    calls: usize,
}

/// One firing of an alert, and its end once resolved.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct AlertRecord {
    #[serde(flatten)]
    pub(crate) alert: Alert,
    /// The summary when it fired (the alert's own summary changes to the resolved text).
    pub(crate) fired_summary: String,
    pub(crate) resolved_at: Option<DateTime<Utc>>,
}

impl CallFeed {
    /// A feed; `keep_recent` keeps the recent window (for a collector without an audit trail).
    pub fn new(keep_recent: bool) -> Self {
        CallFeed {
            live: broadcast::channel(LIVE_BATCHES).0,
            recent: keep_recent.then(|| Mutex::new(Recent::default())),
            alerts: Mutex::new(VecDeque::new()),
        }
    }

    /// Hands a counted batch to the console. Never waits for a reader.
    pub fn publish(&self, calls: Vec<ToolCall>) {
        if calls.is_empty() {
            return;
        }
        let batch = Arc::new(calls);
        if let Some(recent) = &self.recent {
            let mut evicted = Vec::new();
            {
                let mut r = recent.lock().unwrap_or_else(|e| e.into_inner());
                r.calls += batch.len();
                r.batches.push_back(batch.clone());
                while r.calls > RECENT_CALLS {
                    match r.batches.pop_front() {
                        Some(old) => {
                            r.calls -= old.len();
                            evicted.push(old);
                        }
                        None => break,
                    }
                }
            }
            // Freed after the lock: an overview copying the window never waits for it.
            drop(evicted);
        }
        // No receiver is not an error: nobody is watching.
        let _ = self.live.send(batch);
    }

    /// A new reader of the batches published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<CallBatch> {
        self.live.subscribe()
    }

    /// The recent window (oldest first), or `None` when the feed keeps none.
    pub(crate) fn recent(&self) -> Option<Vec<CallBatch>> {
        let r = self.recent.as_ref()?;
        let r = r.lock().unwrap_or_else(|e| e.into_inner());
        Some(r.batches.iter().cloned().collect())
    }

    /// Records alert changes: a firing opens a record, a resolution closes the open record of
    /// the same alert.
    pub(crate) fn alerts_changed(&self, events: &[AlertEvent]) {
        if events.is_empty() {
            return;
        }
        let mut h = self.alerts.lock().unwrap_or_else(|e| e.into_inner());
        for event in events {
            match event {
                AlertEvent::Fired(a) => {
                    h.push_back(AlertRecord {
                        fired_summary: a.summary.clone(),
                        alert: a.clone(),
                        resolved_at: None,
                    });
                    if h.len() > ALERT_HISTORY {
                        h.pop_front();
                    }
                }
                AlertEvent::Resolved(a) => {
                    if let Some(open) = h
                        .iter_mut()
                        .rev()
                        .find(|r| r.resolved_at.is_none() && r.alert.labels == a.labels)
                    {
                        open.resolved_at = Some(a.ends_at.unwrap_or_else(Utc::now));
                        open.alert.summary = a.summary.clone();
                        open.alert.ends_at = a.ends_at;
                    }
                }
            }
        }
    }

    /// The alert history, newest first.
    pub(crate) fn alert_history(&self) -> Vec<AlertRecord> {
        let h = self.alerts.lock().unwrap_or_else(|e| e.into_inner());
        h.iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn the_recent_window_is_bounded_and_keeps_the_newest() {
        let feed = CallFeed::new(true);
        for i in 0..(RECENT_CALLS / 1000 + 5) {
            feed.publish(vec![ToolCall::new(format!("t{i}"), "u"); 1000]);
        }
        let recent = feed.recent().unwrap();
        let n: usize = recent.iter().map(|b| b.len()).sum();
        assert_eq!(n, RECENT_CALLS);
        assert_eq!(
            recent.last().unwrap()[0].tool_name,
            format!("t{}", RECENT_CALLS / 1000 + 4)
        );
        assert!(CallFeed::new(false).recent().is_none());
    }

    #[tokio::test]
    async fn a_reader_that_falls_behind_learns_how_many_batches_it_missed() {
        let feed = CallFeed::new(false);
        let mut rx = feed.subscribe();
        for _ in 0..LIVE_BATCHES + 10 {
            feed.publish(vec![ToolCall::new("t", "u")]);
        }
        assert!(matches!(
            rx.recv().await,
            Err(broadcast::error::RecvError::Lagged(10))
        ));
        assert!(rx.recv().await.is_ok());
    }

    #[test]
    fn a_resolution_closes_the_open_firing_of_the_same_alert() {
        let feed = CallFeed::new(false);
        let alert = |name: &str, ends: Option<DateTime<Utc>>| Alert {
            labels: BTreeMap::from([("alertname".to_owned(), name.to_owned())]),
            summary: format!("{name} {}", if ends.is_some() { "ok" } else { "firing" }),
            value: 1.0,
            starts_at: Utc::now(),
            ends_at: ends,
        };
        feed.alerts_changed(&[
            AlertEvent::Fired(alert("A", None)),
            AlertEvent::Fired(alert("B", None)),
        ]);
        feed.alerts_changed(&[AlertEvent::Resolved(alert("A", Some(Utc::now())))]);
        let h = feed.alert_history();
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].alert.name(), "B");
        assert!(h[0].resolved_at.is_none());
        assert!(h[1].resolved_at.is_some());
        assert_eq!(h[1].fired_summary, "A firing");
    }
}
