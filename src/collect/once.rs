//! Exactly once: one real tool call is one counted call and one audit row, whichever layers
//! instrument it, in whatever order their exports arrive, however often an exporter resends.
//!
//! Several records of one call meet here: our proxy's SERVER span, the server's own SERVER span
//! (the MCP Python SDK makes one as soon as a TracerProvider exists: the child of the proxy's
//! span, or its sibling when the client sent its own `traceparent`), OpenLLMetry's `X.tool` span.
//! They are recognised as one call by [`same_call`]: same trace, same tool, the same JSON-RPC
//! request id when both carry one, and either a direct parent/child/sibling link or overlapping
//! times.
//!
//! Ours (user, write state, confirmation) is counted and appended at once: it is the richest
//! record, and the audit is append-only, so a row cannot be improved later. Another
//! instrumentation's record is *held* for the hold window (durably, in a staging table of the
//! audit database, when there is one, so the export can be acknowledged) and promoted to a
//! counted call and an audit row only if no record of ours came for the same call in the
//! meantime. Two foreign records of one call are merged while held (the richer [`Origin`] is the
//! base, the other fills its gaps); one of ours takes the gaps it has from a held twin.
//!
//! Resends: with an audit trail only what its append newly inserted is counted (a failed append
//! counts nothing; a duplicate is the same span, by the store's key); without one, a bounded set
//! of recently counted spans answers.
//!
//! This module is the matching and the in-memory [`Ledger`]; `staging` keeps held calls durable.

use super::decode::Origin;
use crate::record::ToolCall;
use chrono::{DateTime, Utc};
use std::collections::VecDeque;
use std::hash::BuildHasher;

/// How far apart in time two records of one call may start and end: the proxy's span encloses
/// the server's, but a remote server's clock may be off by this much.
const CLOCK_SLACK_MS: i64 = 1000;
/// Counted calls remembered at most (oldest forgotten first), for twins and resends, with an
/// audit trail: 64 bytes each in [`Counted`] plus its map, about 9 MB; ten seconds of 10,000
/// calls/s.
pub(crate) const MAX_REMEMBERED: usize = 100_000;
/// [`MAX_REMEMBERED`] without an audit trail (`collect` only counts, and stays small): about
/// 4.3 MB; five seconds of 10,000 calls/s, the first retry interval of the OTel exporters, so a
/// resend after a lost acknowledgement is still recognised at that rate.
pub(crate) const MAX_REMEMBERED_COUNTING: usize = 50_000;

/// A span's identity as an exporter resends it: the audit store's unique key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct SpanKey {
    pub(crate) timestamp_ms: i64,
    pub(crate) trace_id: [u8; 16],
    pub(crate) span_id: [u8; 8],
}

impl SpanKey {
    pub(crate) fn of(call: &ToolCall) -> Self {
        SpanKey {
            timestamp_ms: call.timestamp.timestamp_millis(),
            trace_id: call.ids.trace_id,
            span_id: call.ids.span_id,
        }
    }
}

/// What [`same_call`] needs of a record, in 56 bytes (the ledger holds many).
#[derive(Clone, Debug, PartialEq)]
struct Footprint {
    key: SpanKey,
    parent: [u8; 8],
    /// By hash: compared only within one trace, where 32 bits tell methods apart.
    method: u32,
    /// By hash, 0 when there is none.
    request_id: u32,
    /// Milliseconds, at most [`u32::MAX`] (49 days).
    duration_ms: u32,
    origin: Origin,
}

impl Footprint {
    fn of(call: &ToolCall, origin: Origin) -> Self {
        let duration = if call.duration_ms.is_finite() {
            call.duration_ms.clamp(0.0, f64::from(u32::MAX)) as u32
        } else {
            0
        };
        Footprint {
            key: SpanKey::of(call),
            parent: call.ids.parent_span_id,
            method: text_hash(&call.mcp.method) as u32,
            request_id: call
                .mcp
                .request_id
                .as_deref()
                .map_or(0, |r| (text_hash(r) as u32).max(1)),
            duration_ms: duration,
            origin,
        }
    }

    fn end_ms(&self) -> i64 {
        self.key
            .timestamp_ms
            .saturating_add(i64::from(self.duration_ms))
    }

    fn same_call(&self, other: &Footprint) -> bool {
        let (a, b) = (self, other);
        if a.key == b.key {
            return true; // the same span, resent
        }
        if a.key.trace_id != b.key.trace_id || a.key.trace_id == [0; 16] || a.method != b.method {
            return false;
        }
        let overlaps = a.key.timestamp_ms - CLOCK_SLACK_MS <= b.end_ms()
            && b.key.timestamp_ms - CLOCK_SLACK_MS <= a.end_ms();
        let zero = [0u8; 8];
        let related = a.parent == b.key.span_id
            || b.parent == a.key.span_id
            || (a.parent == b.parent && a.parent != zero);
        match (a.request_id, b.request_id) {
            (0, _) | (_, 0) => related || overlaps,
            (x, y) => x == y && (related || overlaps),
        }
    }
}

#[cfg(test)]
/// Whether `a` and `b` (of the same tool) are records of one call. See the module docs.
pub(crate) fn same_call(a: &ToolCall, b: &ToolCall) -> bool {
    a.tool_name == b.tool_name
        && Footprint::of(a, Origin::Ours).same_call(&Footprint::of(b, Origin::Ours))
}

/// Fills what `into` (the richer record) lacks from `from` (another record of the same call).
/// The richer record's outcome, user and classification stand; only absent facts are taken.
pub(crate) fn fill_gaps(into: &mut ToolCall, from: &ToolCall) {
    let (m, f) = (&mut into.mcp, &from.mcp);
    fill(&mut m.request_id, &f.request_id);
    fill(&mut m.session_id, &f.session_id);
    fill(&mut m.protocol_version, &f.protocol_version);
    fill(&mut m.client_name, &f.client_name);
    fill(&mut m.client_version, &f.client_version);
    fill(&mut m.client_address, &f.client_address);
    fill(&mut m.transport, &f.transport);
    if into.user == "unknown" && from.user != "unknown" {
        into.user.clone_from(&from.user);
    }
    fill(&mut into.context, &from.context);
    fill(&mut into.result, &from.result);
    fill(&mut into.read_only_hint, &from.read_only_hint);
    fill(&mut into.destructive_hint, &from.destructive_hint);
    if let (Some(w), Some(fw)) = (&mut into.write, &from.write) {
        fill(&mut w.resource_id, &fw.resource_id);
        fill(&mut w.before_state, &fw.before_state);
        fill(&mut w.after_state, &fw.after_state);
        fill(&mut w.user_confirmation, &fw.user_confirmation);
    }
}

/// An absent fact taken from the other record.
fn fill<T: Clone>(slot: &mut Option<T>, from: &Option<T>) {
    if slot.is_none() {
        slot.clone_from(from);
    }
}

/// Records that may be of one call: same trace, same tool (by hash; [`Footprint`] decides).
type Group = ([u8; 16], u64);

/// The ledger's hash: seeded once per process (a sender cannot aim at its buckets), and cheap
/// (several per call).
static HASH: std::sync::LazyLock<foldhash::fast::RandomState> =
    std::sync::LazyLock::new(foldhash::fast::RandomState::default);

fn text_hash(s: &str) -> u64 {
    HASH.hash_one(s)
}

/// Almost every group holds one record: no room for four (`Vec`'s first growth).
fn one<T>() -> Vec<T> {
    Vec::with_capacity(1)
}

fn group_of(call: &ToolCall) -> Group {
    (call.ids.trace_id, text_hash(&call.tool_name))
}

/// A foreign call waiting out the hold window: its records merged into one.
#[derive(Clone, Debug)]
pub(crate) struct Held {
    pub(crate) call: ToolCall,
    pub(crate) origin: Origin,
    /// Every staged record merged into this call (released together).
    pub(crate) keys: Vec<SpanKey>,
    pub(crate) due: DateTime<Utc>,
    /// Loaded from the staging table at start: a record of ours may have been stored before the
    /// restart, which only the audit trail remembers.
    pub(crate) restored: bool,
    footprints: Vec<Footprint>,
}

impl Held {
    fn new(call: ToolCall, origin: Origin, due: DateTime<Utc>, restored: bool) -> Self {
        Held {
            keys: vec![SpanKey::of(&call)],
            footprints: vec![Footprint::of(&call, origin)],
            call,
            origin,
            due,
            restored,
        }
    }

    fn matches(&self, f: &Footprint) -> bool {
        self.footprints.iter().any(|g| g.same_call(f))
    }

    /// Whether `call` (of the same tool) is a record of this held call.
    pub(crate) fn is_record_of(&self, call: &ToolCall) -> bool {
        call.tool_name == self.call.tool_name && self.matches(&Footprint::of(call, Origin::Ours))
    }

    /// Merges another record of this call: the richer one becomes the base.
    fn merge(&mut self, mut call: ToolCall, origin: Origin) {
        self.keys.push(SpanKey::of(&call));
        self.footprints.push(Footprint::of(&call, origin));
        if origin > self.origin {
            fill_gaps(&mut call, &self.call);
            self.call = call;
            self.origin = origin;
        } else {
            fill_gaps(&mut self.call, &call);
        }
    }
}

/// What became of one incoming record of ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OursVerdict {
    /// Count and append it.
    Record,
    /// The same span was counted already (no audit trail to ask): nothing moves.
    Resent,
    /// A foreign record of this call was promoted before it came (past the hold window).
    Late,
}

/// What became of one incoming foreign record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ForeignVerdict {
    /// Held, alone or merged into a held twin.
    Held,
    /// The same span is held already: nothing moves.
    Resent,
    /// The same span was counted already: nothing moves (its staged row is released).
    Counted,
    /// Another record of this call was counted: this one is dropped (its staged row released).
    Twin,
}

/// The in-memory side: held calls and recently counted ones. Short critical sections only.
#[derive(Debug)]
pub(crate) struct Ledger {
    held: foldhash::HashMap<Group, Vec<Held>>,
    held_count: usize,
    counted: Counted,
    /// Counted records remembered at most.
    remembered: usize,
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger::remembering(MAX_REMEMBERED)
    }
}

/// One counted record in [`Counted`]: 64 bytes.
#[derive(Clone, Debug)]
struct Remembered {
    footprint: Footprint,
    /// When it was counted, in seconds since the epoch; [`FORGOTTEN`] once taken back.
    at_s: u32,
    /// How many records before it the next older record of its group is; 0 for none.
    older: u32,
}

const FORGOTTEN: u32 = 0;

const _: () = assert!(std::mem::size_of::<Remembered>() == 64);

/// Recently counted records, oldest first, and per group its newest one (each links to the
/// group's next older one): one ring and one small map, no allocation per record.
#[derive(Debug, Default)]
struct Counted {
    ring: VecDeque<Remembered>,
    /// The sequence number of `ring[0]`.
    first: u64,
    /// [`group_hash`] → the group's newest record, by its sequence number's low 32 bits (the
    /// ring is far shorter than 2³², so they name one record of it). 8 bytes an entry: the map
    /// holds one per group, a few tens of thousands.
    newest: foldhash::HashMap<u32, u32>,
    /// Records in `ring` not taken back.
    live: usize,
}

/// By 32 bits: a collision only joins two groups' lists, which [`Counted::group`] filters by
/// trace and [`Footprint::same_call`] by method and request.
fn group_hash(g: &Group) -> u32 {
    HASH.hash_one(g) as u32
}

fn at_secs(t: DateTime<Utc>) -> u32 {
    t.timestamp().clamp(1, i64::from(u32::MAX)) as u32
}

impl Counted {
    /// The record that `low` (a sequence number's low 32 bits) names, if still in the ring.
    fn seq_of(&self, low: u32) -> Option<u64> {
        let offset = low.wrapping_sub(self.first as u32);
        ((offset as usize) < self.ring.len()).then(|| self.first + u64::from(offset))
    }

    fn push(&mut self, at: DateTime<Utc>, g: &Group, footprint: Footprint) {
        let group = group_hash(g);
        let seq = self.first + self.ring.len() as u64;
        let previous = self.newest.insert(group, seq as u32);
        let older = previous
            .and_then(|low| self.seq_of(low))
            .map_or(0, |o| (seq - o) as u32);
        self.ring.push_back(Remembered {
            footprint,
            at_s: at_secs(at),
            older,
        });
        self.live += 1;
        self.sweep();
    }

    /// Forgets the oldest record; false when there is none.
    fn pop(&mut self) -> bool {
        let Some(r) = self.ring.pop_front() else {
            return false;
        };
        self.first += 1;
        if r.at_s != FORGOTTEN {
            self.live -= 1;
        }
        // Its group's entry in `newest` stays until `sweep`: looking it up here would be a
        // cache miss per call. An entry older than `first` leads nowhere (`seq_of`).
        true
    }

    /// Drops the entries of `newest` whose group has no record left, once there are an eighth
    /// more of them than records (so the map keeps the size it has for the ring).
    fn sweep(&mut self) {
        if self.newest.len() > self.ring.len() + self.ring.len() / 8 + 64 {
            let (first, len) = (self.first as u32, self.ring.len());
            self.newest
                .retain(|_, low| (low.wrapping_sub(first) as usize) < len);
        }
    }

    /// The sequence numbers of group `g`'s records, newest first.
    fn seqs(&self, g: Group) -> impl Iterator<Item = u64> + '_ {
        let mut next = self
            .newest
            .get(&group_hash(&g))
            .and_then(|low| self.seq_of(*low));
        std::iter::from_fn(move || {
            let seq = next.filter(|s| *s >= self.first)?;
            let r = &self.ring[(seq - self.first) as usize];
            next = (r.older != 0).then(|| seq - u64::from(r.older));
            Some(seq)
        })
    }

    /// Group `g`'s records not taken back, newest first.
    fn group(&self, g: Group) -> impl Iterator<Item = &Footprint> + '_ {
        self.seqs(g).filter_map(move |seq| {
            let r = &self.ring[(seq - self.first) as usize];
            (r.at_s != FORGOTTEN && r.footprint.key.trace_id == g.0).then_some(&r.footprint)
        })
    }

    /// Takes back group `g`'s records of `keys`.
    fn take_back(&mut self, g: &Group, keys: &[SpanKey]) {
        let seqs: Vec<u64> = self.seqs(*g).collect();
        for seq in seqs {
            let r = &mut self.ring[(seq - self.first) as usize];
            if r.at_s != FORGOTTEN && keys.contains(&r.footprint.key) {
                r.at_s = FORGOTTEN;
                self.live -= 1;
            }
        }
    }
}

impl Ledger {
    /// A ledger that remembers at most `remembered` counted records (its ring grows as calls
    /// come, up to that).
    pub(crate) fn remembering(remembered: usize) -> Self {
        Ledger {
            held: foldhash::HashMap::default(),
            held_count: 0,
            counted: Counted::default(),
            remembered,
        }
    }

    pub(crate) fn held_count(&self) -> usize {
        self.held_count
    }

    fn remember(&mut self, g: &Group, footprint: Footprint, now: DateTime<Utc>) {
        let ring = &mut self.counted.ring;
        if ring.len() == ring.capacity() {
            // Doubling, but never past the bound: a ring turns through all its capacity, so
            // room beyond the bound would be touched too.
            let room = (self.remembered + 1).saturating_sub(ring.len()).max(1);
            ring.reserve_exact(ring.len().max(1024).min(room));
        }
        self.counted.push(now, g, footprint);
        while self.counted.ring.len() > self.remembered {
            if !self.counted.pop() {
                break;
            }
        }
    }

    /// Forgets counted calls remembered before `cutoff` (to the second).
    pub(crate) fn forget_before(&mut self, cutoff: DateTime<Utc>) {
        let cutoff = at_secs(cutoff);
        while self.counted.ring.front().is_some_and(|r| r.at_s < cutoff) {
            self.counted.pop();
        }
        if self.counted.ring.is_empty() {
            self.counted.newest.clear();
        } else {
            self.counted.sweep();
        }
    }

    /// A counted record of `f`'s call: the same span first, else any other record of it.
    fn counted_twin(&self, g: &Group, f: &Footprint) -> Option<&Footprint> {
        self.counted
            .group(*g)
            .find(|c| c.key == f.key)
            .or_else(|| self.counted.group(*g).filter(|c| c.same_call(f)).last())
    }

    /// A record of ours: takes the gaps it has from a held twin, and is remembered so that held
    /// twins are dropped. `dedupe` (no audit trail) answers resends from memory; with a trail
    /// the store's insert says what is new.
    pub(crate) fn ours(
        &mut self,
        call: &mut ToolCall,
        dedupe: bool,
        now: DateTime<Utc>,
    ) -> OursVerdict {
        let g = group_of(call);
        let f = Footprint::of(call, Origin::Ours);
        let remembered = match self.counted_twin(&g, &f) {
            Some(c) if c.key == f.key && dedupe => return OursVerdict::Resent,
            // A resend the store will recognise (or an append that failed before).
            Some(c) if c.key == f.key => true,
            Some(c) if !c.origin.is_ours() => return OursVerdict::Late,
            _ => false,
        };
        let mut f = f;
        if let Some(h) = self
            .held
            .get(&g)
            .and_then(|v| v.iter().find(|h| h.matches(&f)))
        {
            fill_gaps(call, &h.call);
            // What it took (a request id) is part of how later records match it.
            f = Footprint::of(call, Origin::Ours);
        }
        if !remembered {
            self.remember(&g, f, now);
        }
        OursVerdict::Record
    }

    /// A foreign record, already staged when there is a staging table.
    pub(crate) fn foreign(
        &mut self,
        call: ToolCall,
        origin: Origin,
        due: DateTime<Utc>,
        restored: bool,
    ) -> ForeignVerdict {
        let g = group_of(&call);
        let f = Footprint::of(&call, origin);
        if let Some(c) = self.counted_twin(&g, &f) {
            return if c.key == f.key {
                ForeignVerdict::Counted
            } else {
                ForeignVerdict::Twin
            };
        }
        let held = self.held.entry(g).or_insert_with(one);
        if let Some(h) = held.iter_mut().find(|h| h.matches(&f)) {
            if h.keys.contains(&f.key) {
                return ForeignVerdict::Resent;
            }
            h.merge(call, origin);
            h.restored |= restored;
            return ForeignVerdict::Held;
        }
        held.push(Held::new(call, origin, due, restored));
        self.held_count += 1;
        ForeignVerdict::Held
    }

    /// Takes the held calls due by `now`: those to promote, and the staged keys of those that a
    /// record of ours (or a promoted twin) made redundant. Promoted calls are remembered as
    /// counted from here on, so a late twin finds them.
    pub(crate) fn take_due(&mut self, now: DateTime<Utc>) -> (Vec<Held>, Vec<SpanKey>) {
        let mut promote = Vec::new();
        let mut release = Vec::new();
        let groups: Vec<Group> = self
            .held
            .iter()
            .filter(|(_, v)| v.iter().any(|h| h.due <= now))
            .map(|(g, _)| *g)
            .collect();
        for g in groups {
            let Some(v) = self.held.remove(&g) else {
                continue;
            };
            let (due, keep): (Vec<Held>, Vec<Held>) = v.into_iter().partition(|h| h.due <= now);
            self.held_count -= due.len();
            if !keep.is_empty() {
                self.held.insert(g, keep);
            }
            for h in due {
                let twin = h
                    .footprints
                    .iter()
                    .any(|f| self.counted_twin(&g, f).is_some());
                if twin {
                    release.extend(h.keys);
                } else {
                    for f in &h.footprints {
                        self.counted.push(now, &g, f.clone());
                    }
                    promote.push(h);
                }
            }
        }
        (promote, release)
    }

    /// Puts back promotions that could not be stored (the next tick tries again).
    pub(crate) fn requeue(&mut self, held: Vec<Held>) {
        for h in held {
            let g = group_of(&h.call);
            self.counted.take_back(&g, &h.keys);
            self.held_count += 1;
            self.held.entry(g).or_insert_with(one).push(h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::TraceIds;

    fn call(tool: &str, trace: u8, span: u8, parent: u8, request: Option<&str>) -> ToolCall {
        let mut c = ToolCall::new(tool, "unknown");
        c.timestamp = DateTime::from_timestamp_millis(1_800_000_000_000).unwrap();
        c.duration_ms = 20.0;
        c.ids = TraceIds {
            trace_id: [trace; 16],
            span_id: [span; 8],
            parent_span_id: [parent; 8],
        };
        c.mcp.request_id = request.map(str::to_owned);
        c
    }

    #[test]
    fn child_and_sibling_shapes_are_one_call() {
        let proxy = call("create_note", 1, 10, 0, Some("3"));
        let child = call("create_note", 1, 11, 10, Some("3"));
        assert!(same_call(&proxy, &child));
        // The client's traceparent forwarded unchanged: both children of the client's span.
        let proxy = call("create_note", 1, 10, 9, Some("3"));
        let sibling = call("create_note", 1, 11, 9, Some("3"));
        assert!(same_call(&proxy, &sibling));
        // Another request id, another tool, another trace: other calls.
        assert!(!same_call(
            &proxy,
            &call("create_note", 1, 11, 9, Some("4"))
        ));
        assert!(!same_call(
            &proxy,
            &call("delete_note", 1, 11, 9, Some("3"))
        ));
        assert!(!same_call(
            &proxy,
            &call("create_note", 2, 11, 9, Some("3"))
        ));
        // Same trace and request id but hours apart: another session of the same trace.
        let mut later = sibling.clone();
        later.ids.parent_span_id = [7; 8];
        later.timestamp += chrono::TimeDelta::hours(1);
        assert!(!same_call(&proxy, &later));
    }

    #[test]
    fn a_held_foreign_record_is_dropped_when_ours_comes_and_fills_its_gaps() {
        let now = Utc::now();
        let mut l = Ledger::default();
        let mut server = call("create_note", 1, 11, 10, Some("3"));
        server.mcp.protocol_version = Some("2025-11-25".into());
        let v = l.foreign(server, Origin::ForeignServer, now, false);
        assert_eq!(v, ForeignVerdict::Held);
        let mut ours = call("create_note", 1, 10, 0, Some("3"));
        ours.user = "alice".into();
        assert_eq!(l.ours(&mut ours, false, now), OursVerdict::Record);
        assert_eq!(ours.mcp.protocol_version.as_deref(), Some("2025-11-25"));
        let (promote, release) = l.take_due(now);
        assert!(promote.is_empty());
        assert_eq!(release.len(), 1);
        // A late resend of the foreign record is a twin of a counted call.
        let again = call("create_note", 1, 11, 10, Some("3"));
        assert_eq!(
            l.foreign(again, Origin::ForeignServer, now, false),
            ForeignVerdict::Twin
        );
    }

    #[test]
    fn foreign_records_merge_and_are_promoted_once() {
        let now = Utc::now();
        let mut l = Ledger::default();
        let internal = call("create_note", 1, 20, 0, None);
        let server = call("create_note", 1, 21, 20, Some("5"));
        assert_eq!(
            l.foreign(internal, Origin::ForeignInternal, now, false),
            ForeignVerdict::Held
        );
        assert_eq!(
            l.foreign(server.clone(), Origin::ForeignServer, now, false),
            ForeignVerdict::Held
        );
        assert_eq!(
            l.foreign(server.clone(), Origin::ForeignServer, now, false),
            ForeignVerdict::Resent
        );
        assert_eq!(l.held_count(), 1);
        let (promote, release) = l.take_due(now);
        assert!(release.is_empty());
        assert_eq!(promote.len(), 1);
        assert_eq!(promote[0].origin, Origin::ForeignServer);
        assert_eq!(promote[0].keys.len(), 2);
        assert_eq!(l.held_count(), 0);
        // Resent after its promotion: counted already.
        assert_eq!(
            l.foreign(server, Origin::ForeignServer, now, false),
            ForeignVerdict::Counted
        );
        // Ours past the window: late, not counted again.
        let mut ours = call("create_note", 1, 22, 0, Some("5"));
        assert_eq!(l.ours(&mut ours, false, now), OursVerdict::Late);
        // A resend of a counted span of ours, without an audit trail to ask.
        let mut mine = call("get_note", 3, 1, 0, Some("1"));
        assert_eq!(l.ours(&mut mine.clone(), true, now), OursVerdict::Record);
        assert_eq!(l.ours(&mut mine, true, now), OursVerdict::Resent);
    }

    #[test]
    fn gaps_are_filled_but_the_richer_record_stands() {
        let mut ours = call("delete_note", 1, 10, 0, None);
        ours.user = "alice".into();
        ours.status = crate::record::Status::Success;
        let mut foreign = call("delete_note", 1, 11, 10, Some("9"));
        foreign.status = crate::record::Status::Error;
        foreign.context = Some(serde_json::json!({"id": "n1"}));
        fill_gaps(&mut ours, &foreign);
        assert_eq!(ours.user, "alice");
        assert_eq!(ours.status, crate::record::Status::Success);
        assert_eq!(ours.mcp.request_id.as_deref(), Some("9"));
        assert_eq!(ours.context, Some(serde_json::json!({"id": "n1"})));
    }

    #[test]
    fn the_oldest_counted_records_are_forgotten_first_and_their_groups_stay_found() {
        let now = DateTime::from_timestamp_millis(1_800_000_000_000).unwrap();
        let nth = |i: usize| {
            let mut c = call("get_note", 0, 0, 0, Some("1"));
            c.ids.trace_id[..8].copy_from_slice(&((i % 1000) as u64 + 1).to_le_bytes());
            c.ids.span_id = (i as u64 + 1).to_le_bytes();
            c.timestamp += chrono::TimeDelta::milliseconds(i as i64 * 10_000);
            c
        };
        let mut l = Ledger::default();
        for i in 0..MAX_REMEMBERED + 10 {
            assert_eq!(l.ours(&mut nth(i), true, now), OursVerdict::Record);
        }
        assert_eq!(l.counted.live, MAX_REMEMBERED);
        // The first ten are forgotten (a resend counts again, and pushes the oldest out), the
        // rest remembered, though their groups (1000 traces) hold records older and newer.
        assert_eq!(l.ours(&mut nth(3), true, now), OursVerdict::Record);
        assert_eq!(l.ours(&mut nth(10), true, now), OursVerdict::Record);
        assert_eq!(l.ours(&mut nth(12), true, now), OursVerdict::Resent);
        assert_eq!(
            l.ours(&mut nth(MAX_REMEMBERED + 9), true, now),
            OursVerdict::Resent
        );
        // Everything counted before a cutoff is forgotten.
        l.forget_before(now + chrono::TimeDelta::seconds(1));
        assert_eq!((l.counted.live, l.counted.newest.len()), (0, 0));
        assert_eq!(l.ours(&mut nth(10), true, now), OursVerdict::Record);
    }

    #[test]
    fn the_group_map_stays_the_size_of_the_ring() {
        let now = DateTime::from_timestamp_millis(1_800_000_000_000).unwrap();
        let mut l = Ledger::remembering(1000);
        // The ring is grown as calls come, not allocated up front.
        assert_eq!(l.counted.ring.capacity(), 0);
        for i in 0..20_000u64 {
            let mut c = call("get_note", 0, 0, 0, None);
            c.ids.trace_id[..8].copy_from_slice(&(i + 1).to_le_bytes());
            c.ids.span_id = (i + 1).to_le_bytes();
            assert_eq!(l.ours(&mut c, true, now), OursVerdict::Record);
            // Every record its own group: the groups of forgotten records are swept.
            assert!(l.counted.newest.len() <= 1000 + 1000 / 8 + 65, "{i}");
        }
        assert_eq!(l.counted.ring.len(), 1000);
        // Never past its bound: a ring turns through all its capacity, so all of it is touched.
        let capacity = l.counted.ring.capacity();
        assert!(capacity <= 1001, "{capacity}");
        // The newest records are found, the forgotten ones not.
        let mut newest = call("get_note", 0, 0, 0, None);
        newest.ids.trace_id[..8].copy_from_slice(&20_000u64.to_le_bytes());
        newest.ids.span_id = 20_000u64.to_le_bytes();
        assert_eq!(l.ours(&mut newest, true, now), OursVerdict::Resent);
        let mut old = call("get_note", 0, 0, 0, None);
        old.ids.trace_id[..8].copy_from_slice(&5u64.to_le_bytes());
        old.ids.span_id = 5u64.to_le_bytes();
        assert_eq!(l.ours(&mut old, true, now), OursVerdict::Record);
    }
}
