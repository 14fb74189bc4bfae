//! One OTLP export in: decode, sort out the records of one call (`once`), forward, make durable
//! (audit), count (metrics, alerts), then acknowledge.
//!
//! `Collector::ingest` may be called concurrently from both receivers; at most
//! `max_concurrent_requests` run at once (later ones wait for a permit, which is the
//! backpressure a sender sees). A call is counted once: with an audit trail, when its append
//! newly inserted it (a failed append counts nothing, a resent span nothing again); without
//! one, unless a recently counted span is the same. Our records are counted at once; other
//! instrumentations' are held for the hold window and counted by `Collector::promote_due`
//! unless one of ours came for the same call. The export is acknowledged only after its calls
//! are committed to the audit trail (ours appended, foreign ones staged), when one is
//! configured.

use super::alerts::{Alert, Evaluator};
use super::config::CollectConfig;
use super::console::feed::CallFeed;
use super::decode::{DecodedRequest, Origin, Use, decode_request, shed};
use super::forward::Forwarder;
use super::metrics::Metrics;
use super::notify::Notifier;
use super::once::{ForeignVerdict, Ledger, OursVerdict, SpanKey};
use super::receive::partial_success;
use super::staging::{Staging, StagingError};
use crate::record::ToolCall;
use bytes::Bytes;
use chrono::Utc;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// A store failure, as the exporter should see it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    /// True when a retry may succeed (disk full, database locked).
    pub(crate) retryable: bool,
    pub(crate) message: String,
}

impl From<StagingError> for StoreError {
    fn from(e: StagingError) -> Self {
        StoreError {
            retryable: e.retryable,
            message: e.to_string(),
        }
    }
}

/// Where decoded calls are made durable before an export is acknowledged.
///
/// `append` may be called concurrently; it returns once the calls are committed (or failed),
/// with, for each call in order, whether it was newly stored. Calls already stored (a retry:
/// same start time, trace and span id) are skipped and reported `false`, not an error.
pub trait CallStore: Send + Sync + 'static {
    /// Stores `calls` durably; for each, in order, whether it was newly stored.
    fn append<'a>(
        &'a self,
        calls: &'a [ToolCall],
    ) -> Pin<Box<dyn Future<Output = Result<Vec<bool>, StoreError>> + Send + 'a>>;

    /// The SQLite file in which other instrumentations' calls may be held durably during the
    /// hold window (a staging table beside the audit trail); `None` holds them in memory, unless
    /// `collect` opened the store itself (`--audit postgres://…` stages them in PostgreSQL).
    fn staging_path(&self) -> Option<&Path> {
        None
    }
}

/// The calls of `calls` that the store newly inserted (`inserted`, in the same order, as
/// [`CallStore::append`] answers): what is counted; the rest were resent.
fn newly_stored(mut calls: Vec<ToolCall>, inserted: &[bool]) -> Vec<ToolCall> {
    // Usually all of them: the calls stay where they are (a call is a large value to move).
    let mut new = inserted.iter();
    calls.retain(|_| new.next().copied().unwrap_or(false));
    calls
}

/// Why an export was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IngestError {
    #[error("audit trail unavailable: {0}")]
    Store(#[source] StoreError),
    #[error("the collector is shutting down")]
    ShuttingDown,
}

/// The processor: shared by the receivers and the alert ticker.
pub(crate) struct Collector {
    pub(crate) metrics: Arc<Metrics>,
    /// The console's tap: counted calls and alert changes.
    pub(crate) console: CallFeed,
    evaluator: Mutex<Evaluator>,
    notifier: Notifier,
    forwarder: Option<Forwarder>,
    store: Option<Arc<dyn CallStore>>,
    staging: Option<Staging>,
    /// Set once the calls held in `staging` by the last run are in the ledger.
    restored: AtomicBool,
    /// Serialises [`Collector::restore`].
    restoring: tokio::sync::Mutex<()>,
    ledger: Mutex<Ledger>,
    hold_window: chrono::TimeDelta,
    permits: Semaphore,
    /// Counted batches, for the next exports' records to be decoded into (at most
    /// [`SPENT_BATCHES`] of at most [`SPENT_CALLS`], holding only their texts).
    spent: Mutex<Vec<Vec<ToolCall>>>,
    /// Set when an export takes a spent batch, cleared by the clock: a quiet collector keeps
    /// none.
    reusing: AtomicBool,
}

/// Spent batches kept for reuse: one per receiving thread of a two-core machine.
const SPENT_BATCHES: usize = 2;
/// Records of a spent batch kept for reuse (an export's worth, as exporters batch them).
const SPENT_CALLS: usize = 1024;

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector").finish_non_exhaustive()
    }
}

impl Collector {
    /// Builds the processor. Must run inside a Tokio runtime (it starts the forwarding and
    /// webhook tasks). Calls held in `staging` when the last run stopped are held again, due
    /// when they were, by [`Collector::restore`], before anything else is processed.
    pub(crate) fn new(
        config: &CollectConfig,
        forward: Option<http::Uri>,
        webhook: Option<String>,
        generator_url: String,
        store: Option<Arc<dyn CallStore>>,
        staging: Option<Staging>,
    ) -> Self {
        let ledger = Ledger::remembering(if store.is_some() {
            super::once::MAX_REMEMBERED
        } else {
            super::once::MAX_REMEMBERED_COUNTING
        });
        let metrics = Arc::new(Metrics::new(config.max_label_values));
        let notifier = Notifier::start(
            webhook,
            generator_url,
            metrics.health.alerts_dropped.clone(),
        );
        let forwarder = forward.map(|uri| {
            Forwarder::start(
                uri,
                config.forward_buffer_spans,
                config.forward_batch_spans,
                metrics.clone(),
            )
        });
        let evaluator = Evaluator::new(config.alerts.clone());
        for (name, n) in evaluator.firing_counts() {
            metrics.set_alerts_firing(name, n);
        }
        Collector {
            restored: AtomicBool::new(staging.is_none()),
            restoring: tokio::sync::Mutex::new(()),
            metrics,
            console: CallFeed::new(store.is_none()),
            evaluator: Mutex::new(evaluator),
            notifier,
            forwarder,
            store,
            staging,
            ledger: Mutex::new(ledger),
            hold_window: chrono::TimeDelta::from_std(config.hold_window)
                .unwrap_or(chrono::TimeDelta::MAX),
            permits: Semaphore::new(config.max_concurrent_requests),
            spent: Mutex::new(Vec::new()),
            reusing: AtomicBool::new(false),
        }
    }

    /// Holds again the calls that the staging table kept from the last run (once; later calls
    /// return at once). Until it succeeded nothing is processed: every export is refused
    /// (retryably) and nothing is promoted, so a restored call meets the ledger as it was.
    pub(crate) async fn restore(&self) -> Result<(), StagingError> {
        if self.restored.load(Ordering::Acquire) {
            return Ok(());
        }
        let _one = self.restoring.lock().await;
        if self.restored.load(Ordering::Acquire) {
            return Ok(());
        }
        let Some(st) = &self.staging else {
            return Ok(());
        };
        let staged = st.load().await?;
        let held = {
            let mut l = self.ledger();
            for (call, origin, due) in staged {
                // Restored: a record of ours may be in the audit trail already, which
                // `promote_due` asks before promoting.
                let _ = l.foreign(call, origin, due, true);
            }
            l.held_count()
        };
        self.metrics.health.calls_held.set(held as i64);
        self.restored.store(true, Ordering::Release);
        Ok(())
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts calls that are new: metrics, the alert evaluator, the audit write counter.
    fn count(&self, calls: &[ToolCall]) {
        if calls.is_empty() {
            return;
        }
        self.metrics.record_all(calls);
        if self.store.is_some() {
            self.metrics.health.audit_writes.inc_by(calls.len() as u64);
        }
        let now = Utc::now();
        let events = {
            let mut ev = self.evaluator();
            let events = ev.observe_batch(calls, now);
            if !events.is_empty() {
                for (name, n) in ev.firing_counts() {
                    self.metrics.set_alerts_firing(name, n);
                }
            }
            events
        };
        self.console.alerts_changed(&events);
        self.notifier.send(events);
    }

    /// Releases staged records whose call is settled; a failure only leaves them for the next
    /// start, where they are found redundant.
    async fn release(&self, keys: Vec<SpanKey>) {
        if let (Some(st), false) = (&self.staging, keys.is_empty())
            && let Err(e) = st.release(keys).await
        {
            eprintln!("mcp-otel collect: {e}");
        }
    }

    /// Promotes the held calls whose hold window has passed and for which no record of ours
    /// came: each is appended to the audit trail and counted (once). Called by the alert clock;
    /// a store failure puts them back for the next call. Nothing is promoted before the calls
    /// held by the last run are restored.
    pub(crate) async fn promote_due(&self) {
        if self.restore().await.is_err() {
            // Tried again at the next tick; until then exports are answered with the reason
            // (and `start` printed it): not a line per tick.
            return;
        }
        let now = Utc::now();
        let (promote, mut release) = {
            let mut l = self.ledger();
            let keep = (self.hold_window * 2).max(chrono::TimeDelta::seconds(60));
            l.forget_before(now - keep);
            l.take_due(now)
        };
        self.metrics
            .health
            .spans_merged
            .inc_by(release.len() as u64);
        let mut ready = Vec::with_capacity(promote.len());
        let mut retry = Vec::new();
        for h in promote {
            match (&self.staging, h.restored) {
                (Some(st), true) => match st.stored_twin(&h).await {
                    Ok(true) => release.extend(h.keys),
                    Ok(false) => ready.push(h),
                    Err(e) => {
                        eprintln!("mcp-otel collect: {e}");
                        retry.push(h);
                    }
                },
                _ => ready.push(h),
            }
        }
        if !ready.is_empty() {
            let calls: Vec<ToolCall> = ready.iter().map(|h| h.call.clone()).collect();
            let stored = match &self.store {
                Some(store) => store.append(&calls).await,
                None => Ok(vec![true; calls.len()]),
            };
            match stored {
                Ok(inserted) => {
                    let new = newly_stored(calls, &inserted);
                    self.metrics
                        .health
                        .spans_resent
                        .inc_by((ready.len() - new.len()) as u64);
                    self.count(&new);
                    self.console.publish(new);
                    release.extend(ready.into_iter().flat_map(|h| h.keys));
                }
                Err(e) => {
                    self.metrics.health.audit_errors.inc();
                    eprintln!("mcp-otel collect: promoting held calls: {e}");
                    retry.extend(ready);
                }
            }
        }
        let held = {
            let mut l = self.ledger();
            l.requeue(retry);
            l.held_count()
        };
        self.metrics.health.calls_held.set(held as i64);
        self.release(release).await;
    }

    /// A spent batch to decode the next export into (empty when there is none).
    fn take_spent(&self) -> Vec<ToolCall> {
        self.reusing.store(true, Ordering::Relaxed);
        let mut spent = self.spent.lock().unwrap_or_else(|e| e.into_inner());
        spent.pop().unwrap_or_default()
    }

    /// Keeps a counted batch that nobody else holds, its records shed of all but their texts,
    /// within bounds.
    fn keep_spent(&self, mut calls: Vec<ToolCall>) {
        if calls.is_empty() || calls.capacity() > SPENT_CALLS || self.spent_full() {
            return;
        }
        calls.iter_mut().for_each(shed);
        let mut spent = self.spent.lock().unwrap_or_else(|e| e.into_inner());
        if spent.len() < SPENT_BATCHES {
            spent.push(calls);
        }
    }

    fn spent_full(&self) -> bool {
        self.spent.lock().unwrap_or_else(|e| e.into_inner()).len() >= SPENT_BATCHES
    }

    /// The calls held now (waiting out the hold window).
    pub(crate) fn held_calls(&self) -> usize {
        self.ledger().held_count()
    }

    fn evaluator(&self) -> std::sync::MutexGuard<'_, Evaluator> {
        self.evaluator.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Processes one export request.
    pub(crate) async fn ingest(
        &self,
        req: ExportTraceServiceRequest,
    ) -> Result<ExportTraceServiceResponse, IngestError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| IngestError::ShuttingDown)?;
        let decoded = decode_request(&req);
        self.process(decoded, Some(req)).await
    }

    /// What the calls of an export are decoded for when nothing is forwarded: stored whole when
    /// there is an audit trail, else only counted. `None` when exports are forwarded (the next
    /// hop gets prost's decoding of the request, redacted).
    fn wire_use(&self) -> Option<Use> {
        match (&self.forwarder, &self.store) {
            (Some(_), _) => None,
            (None, Some(_)) => Some(Use::Store),
            (None, None) => Some(Use::Count),
        }
    }

    /// Processes one export request as it came over the wire (protobuf bytes). When nothing is
    /// forwarded, the spans are read straight from the bytes ([`wire`](super::wire)), whole
    /// when they are stored; else, or when the walk leaves the bytes to prost, prost decodes
    /// them and [`Collector::ingest`] takes over. Bytes prost cannot decode are answered as
    /// tonic answers them.
    pub(crate) async fn ingest_wire(
        &self,
        bytes: Bytes,
    ) -> Result<ExportTraceServiceResponse, tonic::Status> {
        if let Some(usage) = self.wire_use() {
            let _permit = self
                .permits
                .acquire()
                .await
                .map_err(|_| IngestError::ShuttingDown)?;
            let spent = self.take_spent();
            if let Ok(decoded) = super::wire::decode_request_bytes(&bytes, usage, spent) {
                return Ok(self.process(decoded, None).await?);
            }
        }
        let req = ExportTraceServiceRequest::decode(bytes)
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        Ok(self.ingest(req).await?)
    }

    /// Sorts, stores, forwards and counts the calls of one decoded export; `req` is what is
    /// forwarded.
    async fn process(
        &self,
        decoded: DecodedRequest,
        req: Option<ExportTraceServiceRequest>,
    ) -> Result<ExportTraceServiceResponse, IngestError> {
        let h = &self.metrics.health;
        if let Err(e) = self.restore().await {
            h.audit_errors.inc();
            return Err(IngestError::Store(e.into()));
        }
        h.spans_received.inc_by(decoded.received);
        h.spans_ignored.inc_by(decoded.ignored);
        h.spans_invalid.inc_by(decoded.invalid);
        self.metrics.record_exporter_losses(&decoded.losses);
        let now = Utc::now();
        let due = now + self.hold_window;
        // Sorted in place: a call is a large value, and almost every export is all ours.
        let mut record = decoded.calls;
        let origins = decoded.origins;
        let foreign: Vec<(ToolCall, Origin)> = if origins.iter().all(|o| o.is_ours()) {
            Vec::new()
        } else {
            let mut each = origins.iter();
            let taken: Vec<ToolCall> = record
                .extract_if(.., |_| each.next().is_some_and(|o| !o.is_ours()))
                .collect();
            taken
                .into_iter()
                .zip(origins.into_iter().filter(|o| !o.is_ours()))
                .collect()
        };
        // Ours: counted below, once stored; resends and late twins move nothing.
        {
            let mut l = self.ledger();
            let dedupe = self.store.is_none();
            record.retain_mut(|call| match l.ours(call, dedupe, now) {
                OursVerdict::Record => true,
                OursVerdict::Resent => {
                    h.spans_resent.inc();
                    false
                }
                OursVerdict::Late => {
                    h.spans_late.inc();
                    false
                }
            });
        }
        // Foreign: staged durably before the acknowledgement, then held.
        if let Some(st) = &self.staging {
            let staged: Vec<(ToolCall, Origin, chrono::DateTime<Utc>)> =
                foreign.iter().map(|(c, o)| (c.clone(), *o, due)).collect();
            if let Err(e) = st.stage(staged).await {
                h.audit_errors.inc();
                return Err(IngestError::Store(e.into()));
            }
        }
        let mut release = Vec::new();
        {
            let mut l = self.ledger();
            for (call, origin) in foreign {
                let key = SpanKey::of(&call);
                match l.foreign(call, origin, due, false) {
                    ForeignVerdict::Held => {}
                    ForeignVerdict::Resent => {
                        h.spans_resent.inc();
                    }
                    ForeignVerdict::Counted => {
                        h.spans_resent.inc();
                        release.push(key);
                    }
                    ForeignVerdict::Twin => {
                        h.spans_merged.inc();
                        release.push(key);
                    }
                }
            }
            h.calls_held.set(l.held_count() as i64);
        }
        if let (Some(f), Some(mut req)) = (&self.forwarder, req) {
            // The next hop sees what the store sees: redacted, whoever sent it.
            super::scrub::redact_request(&super::decode::REDACTOR, &mut req);
            f.push(req);
        }
        let counted = match (&self.store, record.is_empty()) {
            (Some(store), false) => match store.append(&record).await {
                Ok(inserted) => {
                    let new = newly_stored(record, &inserted);
                    h.spans_resent.inc_by((inserted.len() - new.len()) as u64);
                    new
                }
                Err(e) => {
                    h.audit_errors.inc();
                    return Err(IngestError::Store(e));
                }
            },
            _ => record,
        };
        self.count(&counted);
        if let Some(spent) = self.console.publish(counted) {
            self.keep_spent(spent);
        }
        self.release(release).await;
        Ok(ExportTraceServiceResponse {
            partial_success: partial_success(decoded.invalid, decoded.first_error),
        })
    }

    /// Moves the alert windows to now: resolutions, and firings pushed over by late spans.
    /// Drops the spent batches once no export came since the last tick.
    pub(crate) fn tick(&self) {
        if !self.reusing.swap(false, Ordering::Relaxed) {
            let old = std::mem::take(&mut *self.spent.lock().unwrap_or_else(|e| e.into_inner()));
            drop(old);
            super::wire::drop_kept_walks();
        }
        let events = {
            let mut ev = self.evaluator();
            let events = ev.tick(Utc::now());
            for (name, n) in ev.firing_counts() {
                self.metrics.set_alerts_firing(name, n);
            }
            events
        };
        self.console.alerts_changed(&events);
        self.notifier.send(events);
    }

    /// Sends the firing alerts to the webhook again (Alertmanager forgets silent alerts).
    pub(crate) fn resend_firing(&self) {
        self.notifier.resend(self.active_alerts());
    }

    /// The alerts firing now.
    pub(crate) fn active_alerts(&self) -> Vec<Alert> {
        self.evaluator().active()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newly_stored_keeps_the_inserted_calls_in_order() {
        let calls: Vec<ToolCall> = ["a", "b", "c", "d"]
            .iter()
            .map(|t| ToolCall::new(*t, "u"))
            .collect();
        let names = |v: &[ToolCall]| v.iter().map(|c| c.tool_name.clone()).collect::<Vec<_>>();
        let all = newly_stored(calls.clone(), &[true; 4]);
        assert_eq!(names(&all), ["a", "b", "c", "d"]);
        let some = newly_stored(calls.clone(), &[false, true, false, true]);
        assert_eq!(names(&some), ["b", "d"]);
        // An answer shorter than the calls counts none past its end.
        let short = newly_stored(calls, &[true, true]);
        assert_eq!(names(&short), ["a", "b"]);
    }
}
