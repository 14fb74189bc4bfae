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

use super::decode::Origin;
use crate::record::ToolCall;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How far apart in time two records of one call may start and end: the proxy's span encloses
/// the server's, but a remote server's clock may be off by this much.
const CLOCK_SLACK_MS: i64 = 1000;
/// Counted calls remembered at most (oldest forgotten first), for twins and resends: about
/// 40 MB, ten seconds of 20,000 calls/s.
const MAX_REMEMBERED: usize = 200_000;

/// A span's identity as an exporter resends it: the audit store's unique key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpanKey {
    pub timestamp_ms: i64,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
}

impl SpanKey {
    pub fn of(call: &ToolCall) -> Self {
        SpanKey {
            timestamp_ms: call.timestamp.timestamp_millis(),
            trace_id: call.ids.trace_id,
            span_id: call.ids.span_id,
        }
    }
}

/// What [`same_call`] needs of a record.
#[derive(Clone, Debug, PartialEq)]
struct Footprint {
    key: SpanKey,
    parent: [u8; 8],
    method: u64,
    request_id: Option<String>,
    end_ms: i64,
    origin: Origin,
}

impl Footprint {
    fn of(call: &ToolCall, origin: Origin) -> Self {
        let start = call.timestamp.timestamp_millis();
        let duration = if call.duration_ms.is_finite() {
            call.duration_ms.max(0.0) as i64
        } else {
            0
        };
        Footprint {
            key: SpanKey::of(call),
            parent: call.ids.parent_span_id,
            method: text_hash(&call.mcp.method),
            request_id: call.mcp.request_id.clone(),
            end_ms: start.saturating_add(duration),
            origin,
        }
    }

    fn same_call(&self, other: &Footprint) -> bool {
        let (a, b) = (self, other);
        if a.key == b.key {
            return true; // the same span, resent
        }
        if a.key.trace_id != b.key.trace_id || a.key.trace_id == [0; 16] || a.method != b.method {
            return false;
        }
        let overlaps = a.key.timestamp_ms - CLOCK_SLACK_MS <= b.end_ms
            && b.key.timestamp_ms - CLOCK_SLACK_MS <= a.end_ms;
        let zero = [0u8; 8];
        let related = a.parent == b.key.span_id
            || b.parent == a.key.span_id
            || (a.parent == b.parent && a.parent != zero);
        match (&a.request_id, &b.request_id) {
            (Some(x), Some(y)) => x == y && (related || overlaps),
            _ => related || overlaps,
        }
    }
}

/// Whether `a` and `b` (of the same tool) are records of one call. See the module docs.
pub fn same_call(a: &ToolCall, b: &ToolCall) -> bool {
    a.tool_name == b.tool_name
        && Footprint::of(a, Origin::Ours).same_call(&Footprint::of(b, Origin::Ours))
}

/// Fills what `into` (the richer record) lacks from `from` (another record of the same call).
/// The richer record's outcome, user and classification stand; only absent facts are taken.
pub fn fill_gaps(into: &mut ToolCall, from: &ToolCall) {
    let take = |slot: &mut Option<String>, v: &Option<String>| {
        if slot.is_none() {
            slot.clone_from(v);
        }
    };
    let (m, f) = (&mut into.mcp, &from.mcp);
    take(&mut m.request_id, &f.request_id);
    take(&mut m.session_id, &f.session_id);
    take(&mut m.protocol_version, &f.protocol_version);
    take(&mut m.client_name, &f.client_name);
    take(&mut m.client_version, &f.client_version);
    take(&mut m.client_address, &f.client_address);
    if m.transport.is_none() {
        m.transport = f.transport;
    }
    if into.user == "unknown" && from.user != "unknown" {
        into.user.clone_from(&from.user);
    }
    if into.context.is_none() {
        into.context.clone_from(&from.context);
    }
    if into.result.is_none() {
        into.result.clone_from(&from.result);
    }
    if into.read_only_hint.is_none() {
        into.read_only_hint = from.read_only_hint;
    }
    if into.destructive_hint.is_none() {
        into.destructive_hint = from.destructive_hint;
    }
    if let (Some(w), Some(fw)) = (&mut into.write, &from.write) {
        take(&mut w.resource_id, &fw.resource_id);
        if w.before_state.is_none() {
            w.before_state.clone_from(&fw.before_state);
        }
        if w.after_state.is_none() {
            w.after_state.clone_from(&fw.after_state);
        }
        if w.user_confirmation.is_none() {
            w.user_confirmation = fw.user_confirmation;
        }
    }
}

/// Records that may be of one call: same trace, same tool (by hash; [`Footprint`] decides).
type Group = ([u8; 16], u64);

fn text_hash(s: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

fn group_of(call: &ToolCall) -> Group {
    (call.ids.trace_id, text_hash(&call.tool_name))
}

/// A foreign call waiting out the hold window: its records merged into one.
#[derive(Clone, Debug)]
pub struct Held {
    pub call: ToolCall,
    pub origin: Origin,
    /// Every staged record merged into this call (released together).
    pub keys: Vec<SpanKey>,
    pub due: DateTime<Utc>,
    /// Loaded from the staging table at start: a record of ours may have been stored before the
    /// restart, which only the audit trail remembers.
    pub restored: bool,
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
pub enum OursVerdict {
    /// Count and append it.
    Record,
    /// The same span was counted already (no audit trail to ask): nothing moves.
    Resent,
    /// A foreign record of this call was promoted before it came (past the hold window).
    Late,
}

/// What became of one incoming foreign record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForeignVerdict {
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
#[derive(Debug, Default)]
pub struct Ledger {
    held: HashMap<Group, Vec<Held>>,
    held_count: usize,
    counted: HashMap<Group, Vec<Footprint>>,
    counted_order: VecDeque<(DateTime<Utc>, Group, SpanKey)>,
    counted_count: usize,
}

impl Ledger {
    pub fn held_count(&self) -> usize {
        self.held_count
    }

    fn remember(&mut self, call: &ToolCall, origin: Origin, now: DateTime<Utc>) {
        let g = group_of(call);
        let f = Footprint::of(call, origin);
        self.counted_order.push_back((now, g, f.key));
        self.counted.entry(g).or_default().push(f);
        self.counted_count += 1;
        while self.counted_count > MAX_REMEMBERED {
            if !self.forget_oldest() {
                break;
            }
        }
    }

    fn forget_oldest(&mut self) -> bool {
        let Some((_, g, key)) = self.counted_order.pop_front() else {
            return false;
        };
        if let Some(v) = self.counted.get_mut(&g) {
            if let Some(i) = v.iter().position(|f| f.key == key) {
                v.swap_remove(i);
                self.counted_count -= 1;
            }
            if v.is_empty() {
                self.counted.remove(&g);
            }
        }
        true
    }

    /// Forgets counted calls remembered before `cutoff`.
    pub fn forget_before(&mut self, cutoff: DateTime<Utc>) {
        while self
            .counted_order
            .front()
            .is_some_and(|(at, _, _)| *at < cutoff)
        {
            self.forget_oldest();
        }
    }

    /// A counted record of `f`'s call: the same span first, else any other record of it.
    fn counted_twin(&self, g: &Group, f: &Footprint) -> Option<&Footprint> {
        let v = self.counted.get(g)?;
        v.iter()
            .find(|c| c.key == f.key)
            .or_else(|| v.iter().find(|c| c.same_call(f)))
    }

    /// A record of ours: takes the gaps it has from a held twin, and is remembered so that held
    /// twins are dropped. `dedupe` (no audit trail) answers resends from memory; with a trail
    /// the store's insert says what is new.
    pub fn ours(&mut self, call: &mut ToolCall, dedupe: bool, now: DateTime<Utc>) -> OursVerdict {
        let g = group_of(call);
        let f = Footprint::of(call, Origin::Ours);
        let remembered = match self.counted_twin(&g, &f) {
            Some(c) if c.key == f.key && dedupe => return OursVerdict::Resent,
            // A resend the store will recognise (or an append that failed before).
            Some(c) if c.key == f.key => true,
            Some(c) if !c.origin.is_ours() => return OursVerdict::Late,
            _ => false,
        };
        if let Some(h) = self
            .held
            .get(&g)
            .and_then(|v| v.iter().find(|h| h.matches(&f)))
        {
            fill_gaps(call, &h.call);
        }
        if !remembered {
            self.remember(call, Origin::Ours, now);
        }
        OursVerdict::Record
    }

    /// A foreign record, already staged when there is a staging table.
    pub fn foreign(
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
        let held = self.held.entry(g).or_default();
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
    pub fn take_due(&mut self, now: DateTime<Utc>) -> (Vec<Held>, Vec<SpanKey>) {
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
                        self.counted_order.push_back((now, g, f.key));
                        self.counted.entry(g).or_default().push(f.clone());
                        self.counted_count += 1;
                    }
                    promote.push(h);
                }
            }
        }
        (promote, release)
    }

    /// Puts back promotions that could not be stored (the next tick tries again).
    pub fn requeue(&mut self, held: Vec<Held>) {
        for h in held {
            let g = group_of(&h.call);
            if let Some(v) = self.counted.get_mut(&g) {
                v.retain(|c| !h.keys.contains(&c.key));
            }
            self.held_count += 1;
            self.held.entry(g).or_default().push(h);
        }
        self.counted_count = self.counted.values().map(Vec::len).sum();
    }
}

/// The staging table: foreign calls held durably in the audit database (not part of the hash
/// chain; rows leave when their call is promoted or found redundant), so an export is
/// acknowledged only once its held calls would survive a restart.
#[derive(Clone)]
pub struct Staging {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

const STAGING_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS collect_held_calls (
    timestamp TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    origin TEXT NOT NULL,
    due_at TEXT NOT NULL,
    call TEXT NOT NULL,
    PRIMARY KEY (timestamp, trace_id, span_id)
) WITHOUT ROWID;
";

/// A staging failure: retryable when the database is locked or full.
#[derive(Debug, Clone, thiserror::Error)]
#[error("audit staging table in {path}: {message}")]
pub struct StagingError {
    pub path: PathBuf,
    pub message: String,
    pub retryable: bool,
}

fn origin_str(o: Origin) -> &'static str {
    match o {
        Origin::Ours => "ours",
        Origin::ForeignServer => "server",
        Origin::ForeignInternal => "internal",
    }
}

fn origin_parse(s: &str) -> Origin {
    match s {
        "ours" => Origin::Ours,
        "server" => Origin::ForeignServer,
        _ => Origin::ForeignInternal,
    }
}

fn key_text(k: &SpanKey) -> (String, String, String) {
    let ts = DateTime::<Utc>::from_timestamp_millis(k.timestamp_ms).unwrap_or_default();
    (
        crate::audit::store::format_time(ts),
        crate::record::hex(&k.trace_id),
        crate::record::hex(&k.span_id),
    )
}

impl Staging {
    /// Opens the staging table in the audit database at `path` (creating it when absent).
    pub fn open(path: &Path) -> Result<Self, StagingError> {
        let err = |e: rusqlite::Error| StagingError {
            path: path.to_path_buf(),
            retryable: false,
            message: e.to_string(),
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(2)).map_err(err)?;
        conn.execute_batch(STAGING_SCHEMA).map_err(err)?;
        Ok(Staging {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_path_buf(),
        })
    }

    fn error(&self, e: rusqlite::Error) -> StagingError {
        let retryable = matches!(
            e.sqlite_error_code(),
            Some(
                rusqlite::ErrorCode::DatabaseBusy
                    | rusqlite::ErrorCode::DatabaseLocked
                    | rusqlite::ErrorCode::DiskFull
            )
        );
        StagingError {
            path: self.path.clone(),
            message: e.to_string(),
            retryable,
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StagingError> {
        let conn = self.conn.clone();
        let out = tokio::task::spawn_blocking(move || {
            let mut c = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut c)
        })
        .await
        .map_err(|e| StagingError {
            path: self.path.clone(),
            message: format!("the staging task failed: {e}"),
            retryable: true,
        })?;
        out.map_err(|e| self.error(e))
    }

    /// Stages foreign records (a resent one is kept once), committed before this returns.
    pub async fn stage(
        &self,
        calls: Vec<(ToolCall, Origin, DateTime<Utc>)>,
    ) -> Result<(), StagingError> {
        if calls.is_empty() {
            return Ok(());
        }
        let rows: Vec<_> = calls
            .iter()
            .map(|(c, o, due)| {
                let (ts, trace, span) = key_text(&SpanKey::of(c));
                let json = serde_json::to_string(c).unwrap_or_default();
                (
                    ts,
                    trace,
                    span,
                    origin_str(*o),
                    crate::audit::store::format_time(*due),
                    json,
                )
            })
            .collect();
        self.blocking(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT OR IGNORE INTO collect_held_calls \
                     (timestamp, trace_id, span_id, origin, due_at, call) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?;
                for r in &rows {
                    stmt.execute(params![r.0, r.1, r.2, r.3, r.4, r.5])?;
                }
            }
            tx.commit()
        })
        .await
    }

    /// Removes staged records whose call was promoted or found redundant.
    pub async fn release(&self, keys: Vec<SpanKey>) -> Result<(), StagingError> {
        if keys.is_empty() {
            return Ok(());
        }
        self.blocking(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            {
                let mut stmt = tx.prepare_cached(
                    "DELETE FROM collect_held_calls \
                     WHERE timestamp = ?1 AND trace_id = ?2 AND span_id = ?3",
                )?;
                for k in &keys {
                    let (ts, trace, span) = key_text(k);
                    stmt.execute(params![ts, trace, span])?;
                }
            }
            tx.commit()
        })
        .await
    }

    /// Every staged record, for the ledger at start. Rows that do not parse are skipped.
    pub fn load(&self) -> Result<Vec<(ToolCall, Origin, DateTime<Utc>)>, StagingError> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let mut stmt = conn
            .prepare("SELECT origin, due_at, call FROM collect_held_calls ORDER BY timestamp")
            .map_err(|e| self.error(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .map_err(|e| self.error(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (origin, due, call) = row.map_err(|e| self.error(e))?;
            let (Ok(call), Ok(due)) = (
                serde_json::from_str::<ToolCall>(&call),
                DateTime::parse_from_rfc3339(&due),
            ) else {
                continue;
            };
            out.push((call, origin_parse(&origin), due.with_timezone(&Utc)));
        }
        Ok(out)
    }

    /// True when the audit trail already holds a record of `held`'s call (stored before a
    /// restart, which the ledger does not remember).
    pub async fn stored_twin(&self, held: &Held) -> Result<bool, StagingError> {
        let footprints = held.footprints.clone();
        let call = held.call.clone();
        self.blocking(move |conn| {
            let start = call.timestamp - chrono::TimeDelta::seconds(60);
            let end = call.timestamp
                + chrono::TimeDelta::milliseconds(call.duration_ms.max(0.0) as i64)
                + chrono::TimeDelta::seconds(60);
            let mut stmt = conn.prepare_cached(
                "SELECT timestamp, span_id, parent_span_id, duration_ms, \
                 json_extract(mcp, '$.method'), json_extract(mcp, '$.request_id') \
                 FROM mcp_logs WHERE timestamp >= ?1 AND timestamp <= ?2 \
                 AND trace_id = ?3 AND tool_name = ?4",
            )?;
            let rows = stmt.query_map(
                params![
                    crate::audit::store::format_time(start),
                    crate::audit::store::format_time(end),
                    call.ids.trace_id_hex(),
                    call.tool_name,
                ],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<String>>(2)?,
                        r.get::<_, f64>(3)?,
                        r.get::<_, Option<String>>(4)?,
                        r.get::<_, Option<String>>(5)?,
                    ))
                },
            )?;
            for row in rows {
                let (ts, span, parent, duration, method, request_id) = row?;
                let Some(stored) = stored_footprint(
                    &call,
                    &ts,
                    &span,
                    parent.as_deref(),
                    duration,
                    method,
                    request_id,
                ) else {
                    continue;
                };
                if footprints.iter().any(|f| f.same_call(&stored)) {
                    return Ok(true);
                }
            }
            Ok(false)
        })
        .await
    }

    /// How many records are staged (for tests and the health gauge at start).
    pub fn count(&self) -> Result<usize, StagingError> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        conn.query_row("SELECT count(*) FROM collect_held_calls", [], |r| {
            r.get::<_, i64>(0)
        })
        .optional()
        .map(|n| n.unwrap_or(0) as usize)
        .map_err(|e| self.error(e))
    }
}

fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn stored_footprint(
    held: &ToolCall,
    ts: &str,
    span: &str,
    parent: Option<&str>,
    duration_ms: f64,
    method: Option<String>,
    request_id: Option<String>,
) -> Option<Footprint> {
    let start = DateTime::parse_from_rfc3339(ts).ok()?.with_timezone(&Utc);
    let mut call = ToolCall::new(held.tool_name.clone(), "");
    call.timestamp = start;
    call.duration_ms = duration_ms;
    call.ids.trace_id = held.ids.trace_id;
    call.ids.span_id = parse_hex(span)?;
    call.ids.parent_span_id = parent.and_then(parse_hex).unwrap_or_default();
    call.mcp.method = method.unwrap_or_else(|| "tools/call".to_owned());
    call.mcp.request_id = request_id;
    Some(Footprint::of(&call, Origin::Ours))
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
}
