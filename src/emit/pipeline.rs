//! The export pipeline: a bounded queue off the call path and one worker thread that batches
//! spans into an OpenTelemetry `SpanExporter` (OTLP/gRPC by default).
//!
//! The caller only ever does a non-blocking `try_send`: a full queue drops the span and counts
//! it, a dead collector makes exports fail and counts them, and neither blocks nor fails the tool
//! call. The worker owns a current-thread Tokio runtime of its own, so the pipeline works from
//! synchronous code, from inside any runtime, and the tonic exporter is built inside a runtime
//! as it must be.

use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

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
    pub field: String,
    pub problem: &'static str,
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
}

/// The caller's end of the pipeline. Cheap to clone; all clones feed one worker.
#[derive(Clone)]
pub struct SpanQueue {
    tx: mpsc::Sender<SpanData>,
    control: mpsc::UnboundedSender<Control>,
    stats: Arc<ExportStats>,
}

impl fmt::Debug for SpanQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpanQueue")
            .field("stats", &self.stats.snapshot())
            .finish()
    }
}

impl SpanQueue {
    /// Hands a span to the worker without waiting. Returns false (and counts) when dropped.
    pub fn enqueue(&self, span: SpanData) -> bool {
        match self.tx.try_send(span) {
            Ok(()) => {
                self.stats.enqueued.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(_) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    pub fn stats(&self) -> ExportCounts {
        self.stats.snapshot()
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
    #[error("could not start the export worker thread")]
    Thread(#[source] std::io::Error),
    #[error("could not build the span exporter: {0}")]
    Exporter(String),
}

/// Starts the worker thread and returns the caller's end.
///
/// `make_exporter` runs on the worker, inside its Tokio runtime (the tonic exporter needs one).
/// The worker stops when every [`SpanQueue`] clone is dropped, after exporting what was queued.
pub fn start<E, F>(
    config: &BatchConfig,
    resource: Resource,
    make_exporter: F,
) -> Result<SpanQueue, PipelineError>
where
    E: SpanExporter + 'static,
    F: FnOnce() -> Result<E, String> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(config.max_queue_size.max(1));
    let (control, control_rx) = mpsc::unbounded_channel();
    let stats = Arc::new(ExportStats::default());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let worker_stats = stats.clone();
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
                    config,
                    stats: worker_stats,
                    rx,
                    control_rx,
                }
                .run()
                .await;
            });
        })
        .map_err(PipelineError::Thread)?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(SpanQueue { tx, control, stats }),
        Ok(Err(e)) => Err(PipelineError::Exporter(e)),
        Err(_) => Err(PipelineError::Exporter(
            "the export worker exited while starting".into(),
        )),
    }
}

struct Worker<E> {
    exporter: E,
    config: BatchConfig,
    stats: Arc<ExportStats>,
    rx: mpsc::Receiver<SpanData>,
    control_rx: mpsc::UnboundedReceiver<Control>,
}

impl<E: SpanExporter> Worker<E> {
    async fn run(mut self) {
        let mut batch: Vec<SpanData> = Vec::with_capacity(self.config.max_export_batch_size);
        let mut control_open = true;
        loop {
            let deadline = tokio::time::sleep(self.config.scheduled_delay);
            tokio::pin!(deadline);
            // Fill a batch until it is full, the delay passes, or someone asks for a flush.
            let mut flushers = Vec::new();
            let closed = loop {
                tokio::select! {
                    biased;
                    msg = self.control_rx.recv(), if control_open => match msg {
                        Some(Control::Flush(ack)) => {
                            flushers.push(ack);
                            break false;
                        }
                        None => control_open = false,
                    },
                    span = self.rx.recv() => match span {
                        Some(span) => {
                            batch.push(span);
                            if batch.len() >= self.config.max_export_batch_size {
                                break false;
                            }
                        }
                        None => break true,
                    },
                    _ = &mut deadline => break false,
                }
            };
            if !flushers.is_empty() || closed {
                // Everything queued before the flush request goes out now.
                while let Ok(span) = self.rx.try_recv() {
                    batch.push(span);
                    if batch.len() >= self.config.max_export_batch_size {
                        self.export(&mut batch).await;
                    }
                }
            }
            self.export(&mut batch).await;
            for ack in flushers {
                let _ = ack.send(());
            }
            if closed {
                let _ = self.exporter.shutdown();
                return;
            }
        }
    }

    async fn export(&mut self, batch: &mut Vec<SpanData>) {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        let spans = std::mem::replace(batch, Vec::with_capacity(self.config.max_export_batch_size));
        let result = tokio::time::timeout(self.config.export_timeout, self.exporter.export(spans));
        match result.await {
            Ok(Ok(())) => self.stats.exported.fetch_add(n, Ordering::Relaxed),
            _ => self.stats.failed.fetch_add(n, Ordering::Relaxed),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
