//! What the console sees of ingestion as it happens: every counted batch of calls, broadcast to
//! the live views as one shared `Arc` (no per-call copy, no lock held by a slow reader), a
//! window of recent calls for the overview when there is no audit trail, bounded by bytes, and
//! a bounded history of alert firings and resolutions.
//!
//! The recent window keeps of each call only what the overview counts (`RecentCall`: 16
//! bytes, the tool and user names interned once while any kept call names them), so its
//! `RECENT_BYTES` hold about 130,000 calls of a few hundred users.
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
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// One counted batch, shared by every reader.
pub(crate) type CallBatch = Arc<Vec<ToolCall>>;

/// Batches the broadcast keeps for a reader that has not caught up yet.
const LIVE_BATCHES: usize = 1024;
/// The most bytes the recent window holds (without an audit trail): its records and the names
/// they use, counted with their bookkeeping.
pub(crate) const RECENT_BYTES: usize = 2 << 20;
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

/// What the overview counts of one call, in 16 bytes (the window holds many).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct RecentCall {
    /// Start in Unix milliseconds (the high 56 bits, signed) and, in the low byte, the outcome:
    /// failed (bit 0), the error code's [`CodeClass`] (bits 1–2), the write's operation (bits
    /// 3–5: 0 for none, then [`OPS`] from 1).
    at_outcome: i64,
    /// Milliseconds, to the 7 significant digits the overview's averages and percentiles show.
    duration_ms: f32,
    /// Index into [`RecentWindow::names`].
    tool: u16,
    /// Index into [`RecentWindow::names`].
    user: u16,
}

const _: () = assert!(std::mem::size_of::<RecentCall>() == 16);

/// Every kept name costs at least [`NAME_OVERHEAD`] of [`RECENT_BYTES`], so the window never
/// names more than a 16-bit index can tell apart (two more while a call is pushed).
const _: () = assert!(RECENT_BYTES / NAME_OVERHEAD + 2 < 1 << 16);

/// Unix milliseconds a [`RecentCall`] keeps (±2⁵⁵ ms: a million years either way).
const AT_LIMIT: i64 = (1 << 55) - 1;

/// The operations, in the order [`RecentCall::at_outcome`] numbers them from 1.
const OPS: [OperationType; 4] = [
    OperationType::Create,
    OperationType::Update,
    OperationType::Delete,
    OperationType::Write,
];

impl RecentCall {
    fn new(
        at_ms: i64,
        duration_ms: f64,
        (tool, user): (u16, u16),
        failed: bool,
        code: CodeClass,
        op: Option<OperationType>,
    ) -> Self {
        let op = op
            .and_then(|op| OPS.iter().position(|o| *o == op))
            .map_or(0, |i| i + 1);
        let outcome = i64::from(failed) | (code as i64) << 1 | (op as i64) << 3;
        RecentCall {
            at_outcome: at_ms.clamp(-AT_LIMIT, AT_LIMIT) << 8 | outcome,
            duration_ms: duration_ms as f32,
            tool,
            user,
        }
    }

    /// Start, Unix milliseconds.
    pub(crate) fn at_ms(&self) -> i64 {
        self.at_outcome >> 8
    }

    pub(crate) fn duration_ms(&self) -> f64 {
        f64::from(self.duration_ms)
    }

    /// Index into [`RecentWindow::names`].
    pub(crate) fn tool(&self) -> u32 {
        u32::from(self.tool)
    }

    /// Index into [`RecentWindow::names`].
    pub(crate) fn user(&self) -> u32 {
        u32::from(self.user)
    }

    fn outcome(&self) -> u32 {
        (self.at_outcome & 0xff) as u32
    }

    /// Not `success` (an error or a timeout).
    pub(crate) fn failed(&self) -> bool {
        self.outcome() & 1 == 1
    }

    pub(crate) fn code(&self) -> CodeClass {
        CodeClass::ALL[(self.outcome() >> 1 & 3) as usize]
    }

    pub(crate) fn op(&self) -> Option<OperationType> {
        let i = (self.outcome() >> 3 & 7) as usize;
        i.checked_sub(1).and_then(|i| OPS.get(i)).copied()
    }
}

/// The error codes the overview counts apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CodeClass {
    /// No error code, or one the overview does not count apart.
    Other = 0,
    RateLimited = 1,
    Unauthorized = 2,
    Forbidden = 3,
}

impl CodeClass {
    /// By their numbers (two bits in [`RecentCall::at_outcome`]).
    const ALL: [CodeClass; 4] = [
        CodeClass::Other,
        CodeClass::RateLimited,
        CodeClass::Unauthorized,
        CodeClass::Forbidden,
    ];

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
    ids: foldhash::HashMap<Arc<str>, u16>,
    slots: Vec<Option<(Arc<str>, u32)>>,
    free: Vec<u16>,
    bytes: usize,
}

impl Names {
    fn intern(&mut self, name: &str) -> u16 {
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
                // Within 16 bits: see the assertion under `RecentCall`.
                (self.slots.len() - 1) as u16
            }
        };
        self.bytes += name.len() + NAME_OVERHEAD;
        self.ids.insert(name, id);
        id
    }

    fn release(&mut self, id: u16) {
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
        self.calls.push_back(RecentCall::new(
            call.timestamp.timestamp_millis(),
            call.duration_ms,
            (tool, user),
            call.status != Status::Success,
            CodeClass::of(call.error_code.as_deref()),
            call.operation_type(),
        ));
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

    /// Hands a counted batch to the console. Never waits for a reader. The batch comes back
    /// when no live view took it.
    pub fn publish(&self, calls: Vec<ToolCall>) -> Option<Vec<ToolCall>> {
        if calls.is_empty() {
            return Some(calls);
        }
        if let Some(recent) = &self.recent {
            let mut r = recent.lock().unwrap_or_else(|e| e.into_inner());
            for call in &calls {
                r.push(call);
            }
        }
        // Nobody watching: nothing to share.
        if self.live.receiver_count() == 0 {
            return Some(calls);
        }
        let _ = self.live.send(Arc::new(calls));
        None
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
        assert_eq!(w.name(last.user()), format!("user-{}", batches - 1));
        assert_eq!(w.name(last.tool()), format!("t{}", (batches - 1) % 3));
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
                .any(|c| c.failed() && c.code() == CodeClass::RateLimited)
        );
        assert!(CallFeed::new(false).recent().is_none());
    }

    #[test]
    fn a_kept_call_says_what_the_overview_counts_of_it() {
        let ops = [
            None,
            Some(OperationType::Create),
            Some(OperationType::Update),
            Some(OperationType::Delete),
            Some(OperationType::Write),
        ];
        for failed in [false, true] {
            for code in CodeClass::ALL {
                for op in ops {
                    for at in [-5, 0, 1_764_590_400_123, AT_LIMIT, -AT_LIMIT] {
                        let c = RecentCall::new(at, 1.25, (u16::MAX, 7), failed, code, op);
                        assert_eq!(
                            (c.at_ms(), c.duration_ms(), c.tool(), c.user()),
                            (at, 1.25, 65_535, 7)
                        );
                        assert_eq!((c.failed(), c.code(), c.op()), (failed, code, op));
                    }
                }
            }
        }
        // Beyond a million years either way: the nearest kept time, never another outcome.
        let c = RecentCall::new(i64::MIN, 0.0, (0, 0), true, CodeClass::Forbidden, None);
        assert_eq!(
            (c.at_ms(), c.failed(), c.code()),
            (-AT_LIMIT, true, CodeClass::Forbidden)
        );
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
