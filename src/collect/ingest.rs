//! One OTLP export in: decode, count (metrics), evaluate (alerts), forward, make durable
//! (audit), then acknowledge.
//!
//! [`Collector::ingest`] may be called concurrently from both receivers; at most
//! `max_concurrent_requests` run at once (later ones wait for a permit, which is the
//! backpressure a sender sees). Metrics and alerts are updated for every export, whatever
//! happens to forwarding or the audit trail; the export is acknowledged only after its calls
//! are committed to the audit trail, when one is configured.

use super::alerts::{Alert, Evaluator};
use super::config::CollectConfig;
use super::decode::decode_request;
use super::forward::Forwarder;
use super::metrics::Metrics;
use super::notify::Notifier;
use super::receive::partial_success;
use crate::record::ToolCall;
use chrono::Utc;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// A store failure, as the exporter should see it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    /// True when a retry may succeed (disk full, database locked).
    pub retryable: bool,
    pub message: String,
}

/// Where decoded calls are made durable before an export is acknowledged.
///
/// `append` may be called concurrently; it returns once the calls are committed (or failed).
/// Calls already stored (a retry: same start time, trace and span id) are skipped, not an error.
pub trait CallStore: Send + Sync + 'static {
    fn append<'a>(
        &'a self,
        calls: &'a [ToolCall],
    ) -> Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'a>>;
}

/// Why an export was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("audit trail unavailable: {0}")]
    Store(#[source] StoreError),
    #[error("the collector is shutting down")]
    ShuttingDown,
}

/// The processor: shared by the receivers and the alert ticker.
pub struct Collector {
    pub metrics: Arc<Metrics>,
    evaluator: Mutex<Evaluator>,
    notifier: Notifier,
    forwarder: Option<Forwarder>,
    store: Option<Arc<dyn CallStore>>,
    permits: Semaphore,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector").finish_non_exhaustive()
    }
}

impl Collector {
    /// Builds the processor. Must run inside a Tokio runtime (it starts the forwarding and
    /// webhook tasks).
    pub fn new(
        config: &CollectConfig,
        forward: Option<http::Uri>,
        webhook: Option<String>,
        generator_url: String,
        store: Option<Arc<dyn CallStore>>,
    ) -> Self {
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
            metrics,
            evaluator: Mutex::new(evaluator),
            notifier,
            forwarder,
            store,
            permits: Semaphore::new(config.max_concurrent_requests),
        }
    }

    fn evaluator(&self) -> std::sync::MutexGuard<'_, Evaluator> {
        self.evaluator.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Processes one export request.
    pub async fn ingest(
        &self,
        req: ExportTraceServiceRequest,
    ) -> Result<ExportTraceServiceResponse, IngestError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| IngestError::ShuttingDown)?;
        let decoded = decode_request(&req);
        let h = &self.metrics.health;
        h.spans_received.inc_by(decoded.received);
        h.spans_ignored.inc_by(decoded.ignored);
        h.spans_invalid.inc_by(decoded.invalid);
        for call in &decoded.calls {
            self.metrics.record(call);
        }
        if !decoded.calls.is_empty() {
            let now = Utc::now();
            let events = {
                let mut ev = self.evaluator();
                let events = ev.observe_batch(&decoded.calls, now);
                if !events.is_empty() {
                    for (name, n) in ev.firing_counts() {
                        self.metrics.set_alerts_firing(name, n);
                    }
                }
                events
            };
            self.notifier.send(events);
        }
        if let Some(f) = &self.forwarder {
            f.push(req);
        }
        if let (Some(store), false) = (&self.store, decoded.calls.is_empty()) {
            match store.append(&decoded.calls).await {
                Ok(()) => {
                    h.audit_writes.inc_by(decoded.calls.len() as u64);
                }
                Err(e) => {
                    h.audit_errors.inc();
                    return Err(IngestError::Store(e));
                }
            }
        }
        Ok(ExportTraceServiceResponse {
            partial_success: partial_success(decoded.invalid, decoded.first_error),
        })
    }

    /// Moves the alert windows to now: resolutions, and firings pushed over by late spans.
    pub fn tick(&self) {
        let events = {
            let mut ev = self.evaluator();
            let events = ev.tick(Utc::now());
            for (name, n) in ev.firing_counts() {
                self.metrics.set_alerts_firing(name, n);
            }
            events
        };
        self.notifier.send(events);
    }

    /// Sends the firing alerts to the webhook again (Alertmanager forgets silent alerts).
    pub fn resend_firing(&self) {
        self.notifier.resend(self.active_alerts());
    }

    /// The alerts firing now.
    pub fn active_alerts(&self) -> Vec<Alert> {
        self.evaluator().active()
    }
}
