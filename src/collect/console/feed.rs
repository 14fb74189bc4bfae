//! What the console sees of ingestion as it happens: every counted batch of calls, broadcast to
//! the live views as one shared `Arc` (no per-call copy, no lock held by a slow reader), a
//! window of recent calls for the overview when there is no audit trail, bounded by bytes, and
//! a bounded history of alert firings and resolutions.
//!
//! The recent window keeps of each call only what the overview counts (`RecentCall`: 32
//! bytes, the tool and user names interned once while any kept call names them), so its
//! `RECENT_BYTES` hold about 100,000 calls of a few hundred users.
//!
//! [`CallFeed::publish`] is on ingestion's path: it appends the batch's compact records to the
//! recent window (only without an audit trail; one short lock per batch), and, when a live
//! view is open, moves the batch into an `Arc` and sends it on a broadcast channel, which never
//! waits: a live view that falls behind misses batches and says how many
//! ([`tokio::sync::broadcast::error::RecvError::Lagged`]).

use crate::collect::alerts::{Alert, AlertEvent};
use crate::record::{OperationType, Status, ToolCall, error_code};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// One counted batch, shared by every reader.
pub(crate) type CallBatch = Arc<Vec<ToolCall>>;

/// Batches the broadcast keeps for a reader that has not caught up yet.
const LIVE_BATCHES: usize = 1024;
/// The most bytes the recent window holds (without an audit trail): its records and the names
/// they use, counted with their bookkeeping.
pub(crate) const RECENT_BYTES: usize = 4 << 20;
/// What one interned name costs beyond its text (its `Arc`, map entry and table slot).
const NAME_OVERHEAD: usize = 80;
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

/// What the overview counts of one call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct RecentCall {
    /// Start, Unix milliseconds.
    pub(crate) at_ms: i64,
    pub(crate) duration_ms: f64,
    /// Index into [`RecentWindow::names`].
    pub(crate) tool: u32,
    pub(crate) user: u32,
    /// Not `success` (an error or a timeout).
    pub(crate) failed: bool,
    pub(crate) code: CodeClass,
    pub(crate) op: Option<OperationType>,
}

/// The error codes the overview counts apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CodeClass {
    /// No error code, or one the overview does not count apart.
    Other,
    RateLimited,
    Unauthorized,
    Forbidden,
}

impl CodeClass {
    fn of(code: Option<&str>) -> CodeClass {
        match code {
            Some(error_code::RATE_LIMITED) => CodeClass::RateLimited,
            Some(error_code::UNAUTHORIZED) => CodeClass::Unauthorized,
            Some(error_code::FORBIDDEN) => CodeClass::Forbidden,
            _ => CodeClass::Other,
        }
    }
}

/// A copy of the recent window, oldest call first, with the names its calls refer to.
#[derive(Clone, Debug, Default)]
pub(crate) struct RecentWindow {
    pub(crate) calls: Vec<RecentCall>,
    /// By index; `None` for a slot no kept call uses.
    pub(crate) names: Vec<Option<Arc<str>>>,
}

impl RecentWindow {
    /// The name at `i` (empty for a free slot, which no kept call names).
    pub(crate) fn name(&self, i: u32) -> &str {
        self.names
            .get(i as usize)
            .and_then(|n| n.as_deref())
            .unwrap_or("")
    }
}

/// Interned names with the number of kept calls that use each.
#[derive(Default)]
struct Names {
    ids: HashMap<Arc<str>, u32>,
    slots: Vec<Option<(Arc<str>, u32)>>,
    free: Vec<u32>,
    bytes: usize,
}

impl Names {
    fn intern(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            if let Some((_, uses)) = &mut self.slots[id as usize] {
                *uses += 1;
            }
            return id;
        }
        let name: Arc<str> = Arc::from(name);
        let entry = Some((name.clone(), 1));
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id as usize] = entry;
                id
            }
            None => {
                self.slots.push(entry);
                (self.slots.len() - 1) as u32
            }
        };
        self.bytes += name.len() + NAME_OVERHEAD;
        self.ids.insert(name, id);
        id
    }

    fn release(&mut self, id: u32) {
        let Some(slot) = self.slots.get_mut(id as usize) else {
            return;
        };
        if let Some((name, uses)) = slot {
            *uses -= 1;
            if *uses == 0 {
                self.bytes -= name.len() + NAME_OVERHEAD;
                self.ids.remove(&**name);
                *slot = None;
                self.free.push(id);
            }
        }
    }
}

/// The recent window: compact records, oldest first, within [`RECENT_BYTES`].
#[derive(Default)]
struct Recent {
    calls: VecDeque<RecentCall>,
    names: Names,
}

impl Recent {
    fn bytes(&self) -> usize {
        self.calls.len() * std::mem::size_of::<RecentCall>() + self.names.bytes
    }

    fn push(&mut self, call: &ToolCall) {
        let tool = self.names.intern(&call.tool_name);
        let user = self.names.intern(&call.user);
        self.calls.push_back(RecentCall {
            at_ms: call.timestamp.timestamp_millis(),
            duration_ms: call.duration_ms,
            tool,
            user,
            failed: call.status != Status::Success,
            code: CodeClass::of(call.error_code.as_deref()),
            op: call.operation_type(),
        });
        while self.bytes() > RECENT_BYTES {
            let Some(old) = self.calls.pop_front() else {
                break;
            };
            self.names.release(old.tool);
            self.names.release(old.user);
        }
    }
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
        if let Some(recent) = &self.recent {
            let mut r = recent.lock().unwrap_or_else(|e| e.into_inner());
            for call in &calls {
                r.push(call);
            }
        }
        // Nobody watching: nothing to share.
        if self.live.receiver_count() > 0 {
            let _ = self.live.send(Arc::new(calls));
        }
    }

    /// A new reader of the batches published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<CallBatch> {
        self.live.subscribe()
    }

    /// A copy of the recent window, or `None` when the feed keeps none.
    pub(crate) fn recent(&self) -> Option<RecentWindow> {
        let r = self.recent.as_ref()?;
        let r = r.lock().unwrap_or_else(|e| e.into_inner());
        Some(RecentWindow {
            calls: r.calls.iter().copied().collect(),
            names: r
                .names
                .slots
                .iter()
                .map(|s| s.as_ref().map(|(n, _)| n.clone()))
                .collect(),
        })
    }

    /// Bytes the recent window holds now (0 without one).
    pub fn recent_bytes(&self) -> usize {
        self.recent
            .as_ref()
            .map_or(0, |r| r.lock().unwrap_or_else(|e| e.into_inner()).bytes())
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
    fn the_recent_window_is_bounded_by_bytes_and_keeps_the_newest() {
        let feed = CallFeed::new(true);
        let per_call = std::mem::size_of::<RecentCall>();
        let batches = RECENT_BYTES / per_call / 1000 + 5;
        for i in 0..batches {
            // A new user in every batch: names come and go with the calls that use them.
            let mut batch = vec![ToolCall::new(format!("t{}", i % 3), format!("user-{i}")); 1000];
            batch[0].status = Status::Error;
            batch[0].error_code = Some("429".into());
            feed.publish(batch);
        }
        assert!(feed.recent_bytes() <= RECENT_BYTES);
        assert!(feed.recent_bytes() > RECENT_BYTES - per_call - 2 * (NAME_OVERHEAD + 16));
        let w = feed.recent().unwrap();
        let last = w.calls.last().unwrap();
        assert_eq!(w.name(last.user), format!("user-{}", batches - 1));
        assert_eq!(w.name(last.tool), format!("t{}", (batches - 1) % 3));
        // The oldest batches' users are gone with their calls; only kept ones stay interned.
        let live_names = w.names.iter().flatten().count();
        let users = w.calls.len().div_ceil(1000) + 1;
        assert!(
            live_names <= users + 3,
            "{live_names} names for {users} users"
        );
        assert!(
            w.calls
                .iter()
                .any(|c| c.failed && c.code == CodeClass::RateLimited)
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
