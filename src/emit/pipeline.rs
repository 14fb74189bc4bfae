//! The export pipeline: a bounded queue off the call path and one worker thread that sends the
//! tool calls away in batches, through a [`BatchExport`]: our OTLP/gRPC client, which encodes
//! the calls itself ([`super::grpc`], the default), or any OpenTelemetry `SpanExporter`, fed the
//! spans [`into_span`] builds ([`SdkExport`]).
//!
//! The caller only ever does a lock-free push of the finished [`ToolCall`]: building the span and
//! its attributes happens on the worker, off the call path. A full queue drops the call's span and
//! counts it, a dead collector makes exports fail and counts them, and neither blocks nor fails
//! the tool call. A failing export is also told on stderr, once per outage (its first failure,
//! with the error, and the first success after it), never once per call. The worker owns a
//! current-thread Tokio runtime of its own, so the pipeline works from
//! synchronous code, from inside any runtime, and the tonic exporter is built inside a runtime
//! as it must be.

use super::span::{SpanOptions, into_span};
use crate::record::ToolCall;
use crossbeam_queue::ArrayQueue;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot};

/// Batching settings, named after the `OTEL_BSP_*` variables they come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// `OTEL_BSP_MAX_QUEUE_SIZE`: spans waiting beyond this are dropped and counted.
    pub max_queue_size: usize,
    /// `OTEL_BSP_SCHEDULE_DELAY`: the longest a span waits before its batch is sent.
    pub scheduled_delay: Duration,
    /// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`.
    pub max_export_batch_size: usize,
    /// `OTEL_BSP_EXPORT_TIMEOUT`: an export that takes longer is abandoned and counted failed.
    pub export_timeout: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_queue_size: 2048,
            scheduled_delay: Duration::from_millis(5000),
            max_export_batch_size: 512,
            export_timeout: Duration::from_millis(30_000),
        }
    }
}

/// A configuration value that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` {problem}, got {value:?}")]
pub struct ConfigError {
    /// The setting that was wrong (a variable name such as `OTEL_BSP_MAX_QUEUE_SIZE`).
    pub field: String,
    /// What the value must be (e.g. `must be a positive whole number`).
    pub problem: &'static str,
    /// The value as found.
    pub value: String,
}

impl BatchConfig {
    /// Defaults overridden by the `OTEL_BSP_*` variables found through `get`.
    ///
    /// Every bad value is reported, not only the first.
    pub fn from_env_with(get: impl Fn(&str) -> Option<String>) -> Result<Self, Vec<ConfigError>> {
        let mut c = BatchConfig::default();
        let mut errors = Vec::new();
        let mut num = |name: &str, min: u64| -> Option<u64> {
            let raw = get(name)?;
            match raw.trim().parse::<u64>() {
                Ok(n) if n >= min => Some(n),
                _ => {
                    errors.push(ConfigError {
                        field: name.to_owned(),
                        problem: if min > 0 {
                            "must be a positive whole number"
                        } else {
                            "must be a whole number"
                        },
                        value: raw,
                    });
                    None
                }
            }
        };
        if let Some(n) = num("OTEL_BSP_MAX_QUEUE_SIZE", 1) {
            c.max_queue_size = n as usize;
        }
        if let Some(n) = num("OTEL_BSP_SCHEDULE_DELAY", 0) {
            c.scheduled_delay = Duration::from_millis(n);
        }
        if let Some(n) = num("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 1) {
            c.max_export_batch_size = n as usize;
        }
        if let Some(n) = num("OTEL_BSP_EXPORT_TIMEOUT", 1) {
            c.export_timeout = Duration::from_millis(n);
        }
        // The spec: a batch larger than the queue is clamped to the queue.
        c.max_export_batch_size = c.max_export_batch_size.min(c.max_queue_size);
        if errors.is_empty() {
            Ok(c)
        } else {
            Err(errors)
        }
    }

    /// [`BatchConfig::from_env_with`] over the process environment.
    pub fn from_env() -> Result<Self, Vec<ConfigError>> {
        Self::from_env_with(|k| std::env::var(k).ok())
    }
}

/// Counters of what happened to spans after they left the caller. Read them any time.
#[derive(Debug, Default)]
pub struct ExportStats {
    enqueued: AtomicU64,
    dropped: AtomicU64,
    exported: AtomicU64,
    failed: AtomicU64,
    /// The latest export error, as the exporter put it.
    last_error: Mutex<Option<String>>,
}

/// How failed exports are made visible besides the `failed` counter.
#[derive(Clone, Debug, Default)]
pub struct FailureReport {
    /// What the exports go to, for the message (`OTLP grpc to http://…`).
    pub target: String,
    /// Added to the message: what may be wrong (e.g. the port is the other protocol's).
    pub hint: Option<String>,
    /// Tell the first failure of an outage, and the recovery, on stderr.
    pub stderr: bool,
}

/// A snapshot of [`ExportStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExportCounts {
    /// Spans accepted into the queue.
    pub enqueued: u64,
    /// Spans dropped because the queue was full (or the pipeline had stopped).
    pub dropped: u64,
    /// Spans the exporter accepted.
    pub exported: u64,
    /// Spans in batches whose export failed or timed out.
    pub failed: u64,
}

impl ExportStats {
    /// The latest export error, if any export failed.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The counters as they are now (each read on its own; not one atomic snapshot).
    pub fn snapshot(&self) -> ExportCounts {
        ExportCounts {
            enqueued: self.enqueued.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            exported: self.exported.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

enum Control {
    Flush(oneshot::Sender<()>),
    /// The last [`SpanQueue`] clone is gone: export what is left and stop.
    Shutdown,
}

/// What the callers and the worker share.
struct Shared {
    calls: ArrayQueue<ToolCall>,
    /// Wakes the worker early when a full batch is waiting (once per batch, not per span).
    batch_ready: Notify,
    batch_signalled: AtomicBool,
    max_export_batch_size: usize,
    stats: ExportStats,
    /// Counts of calls lost before they reached the queue (the proxy's observer), added to
    /// the dropped count the exports report.
    loss_sources: Mutex<Vec<LossSource>>,
}

/// A cumulative count of calls lost before the queue, read when exports report their losses.
pub type LossSource = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Sends `Shutdown` when the last queue clone drops.
struct Alive(mpsc::UnboundedSender<Control>);

impl Drop for Alive {
    fn drop(&mut self) {
        let _ = self.0.send(Control::Shutdown);
    }
}

/// The caller's end of the pipeline. Cheap to clone; all clones feed one worker.
#[derive(Clone)]
pub struct SpanQueue {
    shared: Arc<Shared>,
    control: mpsc::UnboundedSender<Control>,
    _alive: Arc<Alive>,
}

impl fmt::Debug for SpanQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpanQueue")
            .field("stats", &self.stats())
            .finish()
    }
}

impl SpanQueue {
    /// Hands a finished call to the worker without waiting. Returns false (and counts) when
    /// dropped.
    ///
    /// Lock-free: a push into a bounded ring, and a wake-up only when a full batch is waiting.
    pub fn enqueue(&self, call: ToolCall) -> bool {
        let shared = &*self.shared;
        if shared.calls.push(call).is_err() {
            shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        shared.stats.enqueued.fetch_add(1, Ordering::Relaxed);
        if shared.calls.len() >= shared.max_export_batch_size
            && !shared.batch_signalled.swap(true, Ordering::AcqRel)
        {
            shared.batch_ready.notify_one();
        }
        true
    }

    /// The pipeline's counters so far (see [`ExportCounts`]).
    pub fn stats(&self) -> ExportCounts {
        self.shared.stats.snapshot()
    }

    /// Adds `source` (a cumulative count of calls lost before they were enqueued, e.g. the
    /// proxy's dropped observations) to the dropped count that exports report to the collector
    /// ([`crate::semconv::EXPORTER_SPANS_DROPPED`]).
    pub fn add_loss_source(&self, source: LossSource) {
        self.shared
            .loss_sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(source);
    }

    /// The latest export error, if any export failed.
    pub fn last_error(&self) -> Option<String> {
        self.shared.stats.last_error()
    }

    /// Exports everything enqueued so far and waits for it (bounded by `timeout`).
    /// Returns false when the worker did not finish in time.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.control.send(Control::Flush(tx)).is_err() {
            return false;
        }
        matches!(tokio::time::timeout(timeout, rx).await, Ok(Ok(())))
    }

    /// [`SpanQueue::flush`] for code outside any Tokio runtime.
    pub fn flush_blocking(&self, timeout: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.control.send(Control::Flush(tx)).is_err() {
            return false;
        }
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done_tx.send(rx.blocking_recv().is_ok());
        });
        done_rx.recv_timeout(timeout).unwrap_or(false)
    }
}

/// Why the worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The worker thread could not be spawned.
    #[error("could not start the export worker thread")]
    Thread(#[source] std::io::Error),
    /// The exporter could not be built on the worker, or the worker exited while starting.
    #[error("could not build the span exporter: {0}")]
    Exporter(String),
}

/// Where the worker sends its batches.
///
/// One export at a time: the worker awaits each before it starts the next, and calls
/// `set_resource` only between them. An export may take as long as it likes; the worker gives
/// up on it after `OTEL_BSP_EXPORT_TIMEOUT` (dropping the future) and counts the batch failed.
pub(crate) trait BatchExport: 'static {
    /// Sends `calls` (never empty), and leaves `calls` empty. The error's text is what is
    /// counted and told.
    fn export(
        &mut self,
        calls: &mut Vec<ToolCall>,
        options: &SpanOptions,
    ) -> impl Future<Output = OTelSdkResult>;

    /// The resource of the exports that follow.
    fn set_resource(&mut self, resource: &Resource);

    /// After the last export.
    fn shutdown(&mut self);
}

/// Any OpenTelemetry `SpanExporter` as a [`BatchExport`]: each call becomes a `SpanData`.
#[derive(Debug)]
pub(crate) struct SdkExport<E>(pub(crate) E);

impl<E: SpanExporter + 'static> BatchExport for SdkExport<E> {
    async fn export(&mut self, calls: &mut Vec<ToolCall>, options: &SpanOptions) -> OTelSdkResult {
        let batch: Vec<SpanData> = calls.drain(..).map(|c| into_span(c, options)).collect();
        self.0.export(batch).await
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource);
    }

    fn shutdown(&mut self) {
        let _ = self.0.shutdown();
    }
}

/// Starts the worker thread and returns the caller's end.
///
/// `make_exporter` runs on the worker, inside its Tokio runtime (the tonic exporter needs one).
/// The worker stops when every [`SpanQueue`] clone is dropped, after exporting what was queued.
/// Failed exports are counted, and told as `report` says.
pub fn start<E, F>(
    config: &BatchConfig,
    span_options: SpanOptions,
    resource: Resource,
    report: FailureReport,
    make_exporter: F,
) -> Result<SpanQueue, PipelineError>
where
    E: SpanExporter + 'static,
    F: FnOnce() -> Result<E, String> + Send + 'static,
{
    start_batches(config, span_options, resource, report, move || {
        make_exporter().map(SdkExport)
    })
}

/// [`start`] with any [`BatchExport`].
pub(crate) fn start_batches<X, F>(
    config: &BatchConfig,
    span_options: SpanOptions,
    resource: Resource,
    report: FailureReport,
    make_exporter: F,
) -> Result<SpanQueue, PipelineError>
where
    X: BatchExport,
    F: FnOnce() -> Result<X, String> + Send + 'static,
{
    let shared = Arc::new(Shared {
        calls: ArrayQueue::new(config.max_queue_size.max(1)),
        batch_ready: Notify::new(),
        batch_signalled: AtomicBool::new(false),
        max_export_batch_size: config.max_export_batch_size.max(1),
        stats: ExportStats::default(),
        loss_sources: Mutex::new(Vec::new()),
    });
    let (control, control_rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let worker_shared = shared.clone();
    let config = config.clone();
    std::thread::Builder::new()
        .name("mcp-otel-export".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            rt.block_on(async move {
                let mut exporter = match make_exporter() {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                exporter.set_resource(&resource);
                let _ = ready_tx.send(Ok(()));
                Worker {
                    exporter,
                    batch: Vec::new(),
                    resource,
                    reported: (0, 0),
                    config,
                    span_options,
                    shared: worker_shared,
                    control_rx,
                    report,
                    outage: Outage::default(),
                }
                .run()
                .await;
            });
        })
        .map_err(PipelineError::Thread)?;
    match ready_rx.recv() {
        Ok(Ok(())) => {
            let alive = Arc::new(Alive(control.clone()));
            Ok(SpanQueue {
                shared,
                control,
                _alive: alive,
            })
        }
        Ok(Err(e)) => Err(PipelineError::Exporter(e)),
        Err(_) => Err(PipelineError::Exporter(
            "the export worker exited while starting".into(),
        )),
    }
}

struct Worker<X> {
    exporter: X,
    /// The calls of the batch being sent (kept: its room is reused).
    batch: Vec<ToolCall>,
    /// The resource as configured; exports carry it plus the loss counts while they are
    /// non-zero.
    resource: Resource,
    /// The (failed, dropped) counts the exporter's resource carries now.
    reported: (u64, u64),
    config: BatchConfig,
    span_options: SpanOptions,
    shared: Arc<Shared>,
    control_rx: mpsc::UnboundedReceiver<Control>,
    report: FailureReport,
    outage: Outage,
}

/// Whether exports are failing, so that an outage is told once.
#[derive(Debug, Default)]
struct Outage {
    failing: bool,
}

impl Outage {
    /// The line to tell after an export that ended with `error` (`None`: it went out), if any:
    /// the first failure of an outage, and the first success after one.
    fn line(&mut self, report: &FailureReport, error: Option<&str>) -> Option<String> {
        let was_failing = std::mem::replace(&mut self.failing, error.is_some());
        match error {
            Some(e) if !was_failing => {
                let hint = report
                    .hint
                    .as_deref()
                    .map_or(String::new(), |h| format!(" ({h})"));
                Some(format!(
                    "mcp-otel: span export failed ({}): {e}{hint}; further failures are counted, \
                     not printed",
                    report.target
                ))
            }
            None if was_failing => Some(format!(
                "mcp-otel: span export ({}) works again",
                report.target
            )),
            _ => None,
        }
    }
}

impl<X: BatchExport> Worker<X> {
    async fn run(mut self) {
        let shared = self.shared.clone();
        loop {
            let mut flushers = Vec::new();
            let mut stop = false;
            let mut full_batch = false;
            tokio::select! {
                biased;
                msg = self.control_rx.recv() => match msg {
                    Some(Control::Flush(ack)) => flushers.push(ack),
                    Some(Control::Shutdown) | None => stop = true,
                },
                _ = shared.batch_ready.notified() => full_batch = true,
                _ = tokio::time::sleep(self.config.scheduled_delay) => {}
            }
            shared.batch_signalled.store(false, Ordering::Release);
            // Woken by a full batch, full batches go out: the calls queued while they were sent
            // wait to fill the next one (or for the schedule delay), rather than leave as a
            // small batch of their own that costs a request's overhead for a few spans. On the
            // timer, a flush or shutdown, everything queued goes, one batch at a time.
            let max = self.config.max_export_batch_size;
            loop {
                let queued = shared.calls.len();
                if queued == 0 || (full_batch && queued < max) {
                    break;
                }
                let n = queued.min(max);
                self.batch.extend((0..n).filter_map(|_| shared.calls.pop()));
                self.export().await;
            }
            for ack in flushers {
                let _ = ack.send(());
            }
            if stop {
                self.exporter.shutdown();
                return;
            }
        }
    }

    async fn export(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let n = self.batch.len() as u64;
        self.report_losses();
        let timeout = self.config.export_timeout;
        let sent = self.exporter.export(&mut self.batch, &self.span_options);
        let result = tokio::time::timeout(timeout, sent).await;
        // An export given up on leaves its calls behind.
        self.batch.clear();
        let error = match result {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!(
                "no answer within {timeout:?} (OTEL_BSP_EXPORT_TIMEOUT)"
            )),
        };
        let stats = &self.shared.stats;
        match &error {
            None => stats.exported.fetch_add(n, Ordering::Relaxed),
            Some(_) => stats.failed.fetch_add(n, Ordering::Relaxed),
        };
        if let Some(line) = self.outage.line(&self.report, error.as_deref())
            && self.report.stderr
        {
            eprintln!("{line}");
        }
        if let Some(error) = error {
            *stats.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
        }
    }
}

impl<X: BatchExport> Worker<X> {
    /// Puts the cumulative loss counts on the resource of the exports that follow, so that a
    /// collector learns what this process lost once an export gets through
    /// (`mcp_otel_exporter_spans_{failed,dropped}_total` in `collect`). Set only when a count
    /// moved: the resource is copied once per change, not per export.
    fn report_losses(&mut self) {
        let stats = &self.shared.stats;
        let upstream: u64 = self
            .shared
            .loss_sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|source| source())
            .sum();
        let now = (
            stats.failed.load(Ordering::Relaxed),
            stats.dropped.load(Ordering::Relaxed) + upstream,
        );
        if now == self.reported {
            return;
        }
        self.reported = now;
        self.exporter
            .set_resource(&with_loss_counts(&self.resource, now.0, now.1));
    }
}

/// `resource` with the exporter's loss counts (attributes only for non-zero counts).
fn with_loss_counts(resource: &Resource, failed: u64, dropped: u64) -> Resource {
    use crate::semconv as sc;
    use opentelemetry::KeyValue;
    let counts = [
        (sc::EXPORTER_SPANS_FAILED, failed),
        (sc::EXPORTER_SPANS_DROPPED, dropped),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .map(|(k, n)| KeyValue::new(k, i64::try_from(n).unwrap_or(i64::MAX)));
    Resource::builder_empty()
        .with_attributes(
            resource
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
                .chain(counts),
        )
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_counts_join_the_resource_once_non_zero() {
        let base = Resource::builder_empty().with_service_name("svc").build();
        let get = |r: &Resource, k: &'static str| r.get(&opentelemetry::Key::from_static_str(k));
        let r = with_loss_counts(&base, 0, 0);
        assert_eq!(r.len(), 1);
        let r = with_loss_counts(&base, 7, 0);
        assert_eq!(
            get(&r, crate::semconv::EXPORTER_SPANS_FAILED),
            Some(opentelemetry::Value::I64(7))
        );
        assert_eq!(get(&r, crate::semconv::EXPORTER_SPANS_DROPPED), None);
        assert_eq!(
            get(&r, "service.name"),
            Some(opentelemetry::Value::from("svc"))
        );
    }

    /// Fails its first export, then takes the rest; keeps the resource it was last given.
    #[derive(Debug, Default)]
    struct FlakyExporter {
        calls: std::sync::atomic::AtomicUsize,
        resource: Arc<Mutex<Option<Resource>>>,
    }

    impl SpanExporter for FlakyExporter {
        async fn export(&self, _batch: Vec<SpanData>) -> opentelemetry_sdk::error::OTelSdkResult {
            if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
                Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(
                    "refused".into(),
                ))
            } else {
                Ok(())
            }
        }

        fn set_resource(&mut self, resource: &Resource) {
            *self.resource.lock().unwrap() = Some(resource.clone());
        }
    }

    #[test]
    fn exports_after_a_failure_carry_the_losses_and_the_upstream_drops() {
        let seen = Arc::new(Mutex::new(None));
        let exporter = FlakyExporter {
            resource: seen.clone(),
            ..FlakyExporter::default()
        };
        let config = BatchConfig {
            scheduled_delay: Duration::from_secs(60),
            ..BatchConfig::default()
        };
        let report = FailureReport::default();
        let q = start(
            &config,
            SpanOptions::default(),
            Resource::builder_empty().with_service_name("svc").build(),
            report,
            move || Ok(exporter),
        )
        .unwrap();
        q.add_loss_source(Arc::new(|| 4));
        let call = || ToolCall::new("t", "u");
        q.enqueue(call());
        q.enqueue(call());
        assert!(q.flush_blocking(Duration::from_secs(10)));
        assert_eq!(q.stats().failed, 2);
        q.enqueue(call());
        assert!(q.flush_blocking(Duration::from_secs(10)));
        assert_eq!(q.stats().exported, 1);
        let r = seen.lock().unwrap().clone().expect("a resource");
        let get = |k: &'static str| r.get(&opentelemetry::Key::from_static_str(k));
        assert_eq!(
            get(crate::semconv::EXPORTER_SPANS_FAILED),
            Some(opentelemetry::Value::I64(2))
        );
        assert_eq!(
            get(crate::semconv::EXPORTER_SPANS_DROPPED),
            Some(opentelemetry::Value::I64(4)),
            "the upstream source's drops are reported as dropped"
        );
    }

    /// Records the size of every batch; the first export takes a while.
    #[derive(Debug, Default)]
    struct SizesExporter {
        sizes: Arc<Mutex<Vec<usize>>>,
    }

    impl SpanExporter for SizesExporter {
        async fn export(&self, batch: Vec<SpanData>) -> opentelemetry_sdk::error::OTelSdkResult {
            let first = {
                let mut sizes = self.sizes.lock().unwrap();
                sizes.push(batch.len());
                sizes.len() == 1
            };
            if first {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Ok(())
        }
    }

    /// Woken by a full batch, the worker sends full batches only: the calls queued while the
    /// first was on its way leave in full batches, and the few left over wait for the next
    /// batch, the schedule delay or a flush instead of going out as a small request at once.
    #[test]
    fn a_full_batch_wake_leaves_a_partial_remainder_queued() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let exporter = SizesExporter {
            sizes: sizes.clone(),
        };
        let config = BatchConfig {
            max_queue_size: 64,
            max_export_batch_size: 4,
            scheduled_delay: Duration::from_secs(60),
            ..BatchConfig::default()
        };
        let q = start(
            &config,
            SpanOptions::default(),
            Resource::builder_empty().with_service_name("svc").build(),
            FailureReport::default(),
            move || Ok(exporter),
        )
        .unwrap();
        let call = || ToolCall::new("t", "u");
        let wait_for = |what: &dyn Fn() -> bool| {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !what() {
                assert!(std::time::Instant::now() < deadline, "timed out");
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        for _ in 0..4 {
            q.enqueue(call());
        }
        wait_for(&|| !sizes.lock().unwrap().is_empty());
        // While the first batch is on its way: one batch and a half more.
        for _ in 0..6 {
            q.enqueue(call());
        }
        wait_for(&|| q.stats().exported >= 8);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(*sizes.lock().unwrap(), [4, 4], "the remainder of 2 waits");
        assert_eq!(q.stats().exported, 8);
        assert!(q.flush_blocking(Duration::from_secs(10)));
        assert_eq!(
            *sizes.lock().unwrap(),
            [4, 4, 2],
            "a flush sends what is left"
        );
        assert_eq!(q.stats().exported, 10);
    }

    #[test]
    fn an_outage_is_told_once_and_its_end_too() {
        let report = FailureReport {
            target: "OTLP grpc to http://localhost:4318".into(),
            hint: Some("4318 is the OTLP/HTTP port".into()),
            stderr: true,
        };
        let mut outage = Outage::default();
        let lines: Vec<Option<String>> = [
            None,
            Some("refused"),
            Some("refused"),
            Some("refused"),
            None,
            None,
            Some("timed out"),
        ]
        .into_iter()
        .map(|e| outage.line(&report, e))
        .collect();
        assert_eq!(
            lines[1].as_deref(),
            Some(
                "mcp-otel: span export failed (OTLP grpc to http://localhost:4318): refused \
                 (4318 is the OTLP/HTTP port); further failures are counted, not printed"
            )
        );
        assert_eq!(
            lines[4].as_deref(),
            Some("mcp-otel: span export (OTLP grpc to http://localhost:4318) works again")
        );
        assert!(lines[6].as_deref().unwrap().contains("timed out"));
        let told: Vec<usize> = (0..lines.len()).filter(|i| lines[*i].is_some()).collect();
        assert_eq!(told, [1, 4, 6]);
    }

    #[test]
    fn bsp_variables_override_defaults_and_bad_values_are_all_named() {
        let env = |k: &str| match k {
            "OTEL_BSP_MAX_QUEUE_SIZE" => Some("100".to_owned()),
            "OTEL_BSP_SCHEDULE_DELAY" => Some("250".to_owned()),
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE" => Some("512".to_owned()),
            _ => None,
        };
        let c = BatchConfig::from_env_with(env).unwrap();
        assert_eq!(c.max_queue_size, 100);
        assert_eq!(c.scheduled_delay, Duration::from_millis(250));
        assert_eq!(c.max_export_batch_size, 100, "clamped to the queue size");
        let bad = |k: &str| match k {
            "OTEL_BSP_MAX_QUEUE_SIZE" => Some("lots".to_owned()),
            "OTEL_BSP_EXPORT_TIMEOUT" => Some("0".to_owned()),
            _ => None,
        };
        let errors = BatchConfig::from_env_with(bad).unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["OTEL_BSP_MAX_QUEUE_SIZE", "OTEL_BSP_EXPORT_TIMEOUT"]
        );
        assert!(errors[0].to_string().contains("\"lots\""));
    }
}
