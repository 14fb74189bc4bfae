//! ToolCall → span + JSON log line, and the OTLP pipeline (gRPC, HTTP/protobuf or HTTP/JSON)
//! that carries the spans away.
//!
//! [`Emitter::emit`] is the one call every capture path makes when a tool call ends: it redacts
//! the call, writes its JSON line (when a log sink is set), builds its span and hands the span to
//! the bounded export queue. It never blocks on the network.

mod encode;
mod grpc;
pub mod log;
pub mod otlp;
pub mod pipeline;
pub mod span;

use crate::record::ToolCall;
use crate::redact::{RedactConfig, Redactor};
pub use otlp::{OtlpProtocol, OtlpTarget, otlp_exporter};
pub use pipeline::{BatchConfig, ExportCounts, FailureReport, PipelineError, SpanQueue};
pub use span::{SpanOptions, to_span};

use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SpanExporter;
use std::cell::RefCell;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where JSON log lines go.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum LogTarget {
    /// No JSON lines.
    #[default]
    None,
    /// Each JSON line to standard output.
    Stdout,
    /// Each JSON line to standard error.
    Stderr,
    /// Appended to a file (created if missing).
    File(PathBuf),
}

impl std::str::FromStr for LogTarget {
    type Err = std::convert::Infallible;
    /// `-` is stdout, `stderr` is stderr, `none`/`off` is none, anything else is a path.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "-" | "stdout" => LogTarget::Stdout,
            "stderr" => LogTarget::Stderr,
            "none" | "off" | "" => LogTarget::None,
            path => LogTarget::File(PathBuf::from(path)),
        })
    }
}

/// Where spans go.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum SpanTarget {
    /// OTLP, over the protocol [`EmitConfig::otlp_protocol`] or the
    /// `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL` variables choose (gRPC by default). `endpoint:
    /// None` means the `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT` variables, then the protocol's
    /// default (`http://localhost:4317`, or `http://localhost:4318/v1/traces` for HTTP); see
    /// [`OtlpTarget::resolve`].
    Otlp {
        /// The collector's OTLP endpoint URL; `None`: from the environment, then the default.
        endpoint: Option<String>,
    },
    /// Spans are built but not exported (JSON lines only).
    #[default]
    None,
}

/// Everything an [`Emitter`] needs.
#[derive(Clone, Debug, Default)]
pub struct EmitConfig {
    /// Where spans go (OTLP or nowhere).
    pub spans: SpanTarget,
    /// Where JSON log lines go.
    pub log: LogTarget,
    /// Span kind and the opt-in content attributes.
    pub span_options: SpanOptions,
    /// What is redacted from arguments, states and results before anything leaves the process.
    pub redact: RedactConfig,
    /// `None` reads the `OTEL_BSP_*` variables.
    pub batch: Option<BatchConfig>,
    /// `service.name` when neither `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES` set one.
    pub default_service_name: Option<String>,
    /// The OTLP protocol; `None` reads `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL` (default gRPC).
    pub otlp_protocol: Option<OtlpProtocol>,
}

/// Why an emitter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    /// An `OTEL_BSP_*` variable is invalid (read when [`EmitConfig::batch`] is `None`); every
    /// problem is listed.
    #[error("invalid OTEL_BSP_* configuration: {}", list(.0))]
    Batch(Vec<pipeline::ConfigError>),
    /// An `OTEL_EXPORTER_OTLP_*` setting (the protocol, an endpoint) cannot be used.
    #[error("invalid OTLP exporter configuration: {0}")]
    Otlp(pipeline::ConfigError),
    /// The export pipeline could not start.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// The JSON log file could not be opened for appending.
    #[error("cannot open JSON log file {path}")]
    LogFile {
        /// The file's path.
        path: PathBuf,
        /// Why opening it failed.
        #[source]
        source: std::io::Error,
    },
}

fn list(errors: &[pipeline::ConfigError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

type Sink = Arc<Mutex<Box<dyn Write + Send>>>;

/// Turns finished tool calls into JSON lines and exported spans. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Emitter {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    redactor: Redactor,
    span_options: SpanOptions,
    queue: Option<SpanQueue>,
    log: Option<Sink>,
}

impl std::fmt::Debug for Emitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emitter")
            .field("queue", &self.inner.queue)
            .field("log", &self.inner.log.is_some())
            .finish()
    }
}

/// The resource every span carries: the SDK's detectors (`OTEL_SERVICE_NAME`,
/// `OTEL_RESOURCE_ATTRIBUTES`, telemetry.sdk.*), with our default service name when unset and
/// a random `service.instance.id` (a UUID) when the environment sets none, so that the
/// exporter's cumulative loss counts ([`crate::semconv::EXPORTER_SPANS_FAILED`]) have a key.
pub fn resource(default_service_name: Option<&str>) -> Resource {
    let env_sets = |key: &str| {
        std::env::var("OTEL_RESOURCE_ATTRIBUTES")
            .map(|v| {
                v.split(',')
                    .any(|kv| kv.trim_start().starts_with(&format!("{key}=")))
            })
            .unwrap_or(false)
    };
    let has_env_name =
        std::env::var_os("OTEL_SERVICE_NAME").is_some() || env_sets(crate::semconv::SERVICE_NAME);
    let mut builder = Resource::builder();
    if !env_sets(crate::semconv::SERVICE_INSTANCE_ID) {
        builder = builder.with_attribute(opentelemetry::KeyValue::new(
            crate::semconv::SERVICE_INSTANCE_ID,
            random_uuid(),
        ));
    }
    match default_service_name {
        Some(name) if !has_env_name => builder.with_service_name(name.to_owned()).build(),
        _ => builder.build(),
    }
}

/// A random (version 4) UUID in its usual text form.
fn random_uuid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = crate::hex::encode(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl Emitter {
    /// Builds the emitter and, for OTLP, starts the export worker.
    pub fn new(config: &EmitConfig) -> Result<Self, EmitError> {
        let queue = match &config.spans {
            SpanTarget::None => None,
            SpanTarget::Otlp { endpoint } => {
                let target = OtlpTarget::from_env(config.otlp_protocol, endpoint.as_deref())
                    .map_err(EmitError::Otlp)?;
                let report = FailureReport {
                    target: target.to_string(),
                    hint: target.protocol_hint().map(str::to_owned),
                    stderr: true,
                };
                Some(Self::start_queue(config, report, move || {
                    otlp::otlp_export(&target)
                })?)
            }
        };
        Self::with_queue(config, queue)
    }

    /// An emitter exporting through any `SpanExporter` (tests, other protocols).
    pub fn with_exporter<E, F>(config: &EmitConfig, make_exporter: F) -> Result<Self, EmitError>
    where
        E: SpanExporter + 'static,
        F: FnOnce() -> Result<E, String> + Send + 'static,
    {
        let report = FailureReport {
            target: "the span exporter".into(),
            hint: None,
            stderr: true,
        };
        let queue = Self::start_queue(config, report, move || {
            make_exporter().map(pipeline::SdkExport)
        })?;
        Self::with_queue(config, Some(queue))
    }

    fn start_queue<X, F>(
        config: &EmitConfig,
        report: FailureReport,
        make: F,
    ) -> Result<SpanQueue, EmitError>
    where
        X: pipeline::BatchExport,
        F: FnOnce() -> Result<X, String> + Send + 'static,
    {
        let batch = match &config.batch {
            Some(b) => b.clone(),
            None => BatchConfig::from_env().map_err(EmitError::Batch)?,
        };
        let resource = resource(config.default_service_name.as_deref());
        Ok(pipeline::start_batches(
            &batch,
            config.span_options.clone(),
            resource,
            report,
            make,
        )?)
    }

    fn with_queue(config: &EmitConfig, queue: Option<SpanQueue>) -> Result<Self, EmitError> {
        let log: Option<Box<dyn Write + Send>> = match &config.log {
            LogTarget::None => None,
            LogTarget::Stdout => Some(Box::new(std::io::stdout())),
            LogTarget::Stderr => Some(Box::new(std::io::stderr())),
            LogTarget::File(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| EmitError::LogFile {
                        path: path.clone(),
                        source,
                    })?;
                Some(Box::new(file))
            }
        };
        Ok(Self::from_parts(config, queue, log))
    }

    /// An emitter writing JSON lines to any writer (one `write_all` per line).
    pub fn with_log_writer(
        config: &EmitConfig,
        queue: Option<SpanQueue>,
        writer: Box<dyn Write + Send>,
    ) -> Self {
        Self::from_parts(config, queue, Some(writer))
    }

    fn from_parts(
        config: &EmitConfig,
        queue: Option<SpanQueue>,
        log: Option<Box<dyn Write + Send>>,
    ) -> Self {
        let inner = Inner {
            redactor: Redactor::new(&config.redact),
            span_options: config.span_options.clone(),
            queue,
            log: log.map(|w| Arc::new(Mutex::new(w))),
        };
        Emitter {
            inner: Arc::new(inner),
        }
    }

    /// The same emitter, writing JSON lines to `writer` too (one `write_all` per line).
    pub fn with_log(self, writer: Box<dyn Write + Send>) -> Self {
        let mut inner = Arc::unwrap_or_clone(self.inner);
        inner.log = Some(Arc::new(Mutex::new(writer)));
        Emitter {
            inner: Arc::new(inner),
        }
    }

    /// From now on JSON lines gather in memory (up to `capacity` bytes) and leave together at
    /// [`Emitter::flush_log`], [`Emitter::flush`] or when the buffer is full, not with one
    /// write per line: for a caller that emits in bursts and flushes after each (the proxy's
    /// observer), one system call per burst. A line is never split between two writes (one
    /// longer than `capacity` is written on its own). Applies to every clone.
    pub fn buffer_log_lines(&self, capacity: usize) {
        if let Some(sink) = &self.inner.log {
            let mut w = sink.lock().unwrap_or_else(|e| e.into_inner());
            let unbuffered = std::mem::replace(&mut *w, Box::new(std::io::sink()));
            *w = Box::new(std::io::BufWriter::with_capacity(capacity, unbuffered));
        }
    }

    /// Writes the JSON lines gathered since [`Emitter::buffer_log_lines`] (nothing to do
    /// without it: each line was written at once).
    pub fn flush_log(&self) {
        if let Some(sink) = &self.inner.log {
            let _ = sink.lock().unwrap_or_else(|e| e.into_inner()).flush();
        }
    }

    /// The redactor this emitter applies to every call (built from [`EmitConfig::redact`]).
    pub fn redactor(&self) -> &Redactor {
        &self.inner.redactor
    }

    /// Redacts the call, writes its JSON line and enqueues its span. Never blocks on export.
    pub fn emit(&self, mut call: ToolCall) {
        let inner = &*self.inner;
        inner.redactor.redact_call(&mut call);
        if !inner.span_options.record_result {
            call.result = None;
        }
        self.emit_redacted(call);
    }

    /// [`Emitter::emit`] for a call that is already redacted.
    pub fn emit_redacted(&self, call: ToolCall) {
        let inner = &*self.inner;
        if let Some(sink) = &inner.log {
            thread_local! {
                static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
            }
            LINE.with_borrow_mut(|buf| {
                buf.clear();
                if log::write_line(buf, &call).is_ok() {
                    // A poisoned lock means a writer panicked mid-line; keep logging anyway.
                    let mut w = sink.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = w.write_all(buf);
                }
            });
        }
        if let Some(q) = &inner.queue {
            q.enqueue(call);
        }
    }

    /// Export counters (enqueued, dropped, exported, failed); zero without a queue.
    pub fn stats(&self) -> ExportCounts {
        self.inner
            .queue
            .as_ref()
            .map(|q| q.stats())
            .unwrap_or_default()
    }

    /// Adds a cumulative count of calls lost before they reached this emitter (the proxy's
    /// dropped observations) to the losses its exports report; nothing without a queue.
    pub fn add_loss_source(&self, source: pipeline::LossSource) {
        if let Some(q) = &self.inner.queue {
            q.add_loss_source(source);
        }
    }

    /// The latest export error, if any export failed.
    pub fn last_export_error(&self) -> Option<String> {
        self.inner.queue.as_ref().and_then(|q| q.last_error())
    }

    /// One clause for an exit summary: `spans: 20 exported, 0 failed, 0 dropped`, plus the
    /// latest export error when there was one; `span export off` without a queue.
    pub fn export_summary(&self) -> String {
        if self.inner.queue.is_none() {
            return "span export off".into();
        }
        let c = self.stats();
        let mut out = format!(
            "spans: {} exported, {} failed, {} dropped",
            c.exported, c.failed, c.dropped
        );
        if let Some(e) = self.last_export_error() {
            out.push_str(&format!(" (last export error: {e})"));
        }
        out
    }

    /// Exports what is queued and waits up to `timeout`. True when everything went out.
    pub async fn flush(&self, timeout: Duration) -> bool {
        if let Some(sink) = &self.inner.log {
            let _ = sink.lock().unwrap_or_else(|e| e.into_inner()).flush();
        }
        match &self.inner.queue {
            Some(q) => q.flush(timeout).await,
            None => true,
        }
    }

    /// [`Emitter::flush`] from synchronous code (not from inside a runtime's worker thread).
    pub fn flush_blocking(&self, timeout: Duration) -> bool {
        if let Some(sink) = &self.inner.log {
            let _ = sink.lock().unwrap_or_else(|e| e.into_inner()).flush();
        }
        match &self.inner.queue {
            Some(q) => q.flush_blocking(timeout),
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redact::tests::{KEYED_SECRET, SECRET_MARKERS, SECRET_VALUES, json_with_secrets};
    use proptest::prelude::*;

    fn assert_clean(what: &str, text: &str) {
        for m in SECRET_MARKERS.iter().chain([&KEYED_SECRET]) {
            assert!(
                !text.contains(m),
                "secret {m:?} survived in the {what}: {text}"
            );
        }
    }

    /// Keeps each `write` it gets apart, to show how lines are grouped into writes.
    #[derive(Clone, Default)]
    struct Writes(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Writes {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push(b.to_vec());
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Writes {
        /// The tool names of the lines in each write (every write must hold whole lines).
        fn tools(&self) -> Vec<Vec<String>> {
            let writes = self.0.lock().unwrap();
            writes
                .iter()
                .map(|w| {
                    let text = std::str::from_utf8(w).unwrap();
                    assert!(text.ends_with('\n'), "a write ends inside a line: {text:?}");
                    text.lines()
                        .map(|l| {
                            let v: serde_json::Value = serde_json::from_str(l).unwrap();
                            v["tool_name"].as_str().unwrap().to_owned()
                        })
                        .collect()
                })
                .collect()
        }
    }

    #[test]
    fn buffered_log_lines_leave_together_at_the_flush_and_whole() {
        let writes = Writes::default();
        let emitter =
            Emitter::with_log_writer(&EmitConfig::default(), None, Box::new(writes.clone()));
        emitter.emit(ToolCall::new("a", "u"));
        assert_eq!(
            writes.tools(),
            [["a"]],
            "unbuffered, a line is written at once"
        );
        emitter.buffer_log_lines(4096);
        for tool in ["b", "c", "d"] {
            emitter.emit(ToolCall::new(tool, "u"));
        }
        assert_eq!(writes.tools().len(), 1, "buffered lines wait for the flush");
        emitter.flush_log();
        assert_eq!(writes.tools(), [vec!["a"], vec!["b", "c", "d"]]);

        // A buffer smaller than a line: every line is still written whole, on its own.
        let writes = Writes::default();
        let emitter =
            Emitter::with_log_writer(&EmitConfig::default(), None, Box::new(writes.clone()));
        emitter.buffer_log_lines(16);
        for tool in ["e", "f"] {
            emitter.emit(ToolCall::new(tool, "u"));
        }
        emitter.flush_log();
        assert_eq!(writes.tools(), [["e"], ["f"]]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        /// Secrets anywhere in a call (arguments, states, result, even the user and resource
        /// id fields) reach neither the span nor the JSON line.
        #[test]
        fn no_secret_reaches_a_span_or_a_log_line(
            context in json_with_secrets(),
            before in json_with_secrets(),
            result in json_with_secrets(),
            secret in 0..SECRET_VALUES.len(),
        ) {
            let mut call = ToolCall::new("update_task", format!("user {}", SECRET_VALUES[secret]));
            call.context = Some(context);
            call.result = Some(result);
            call.write = Some(
                crate::record::WriteOp::new(crate::record::OperationType::Update)
                    .resource_id(SECRET_VALUES[secret])
                    .before(before),
            );
            let config = EmitConfig {
                span_options: SpanOptions { record_arguments: true, record_result: true, ..SpanOptions::default() },
                ..EmitConfig::default()
            };
            let emitter = Emitter::from_parts(&config, None, None);
            emitter.inner.redactor.redact_call(&mut call);
            let line = log::to_line(&call);
            assert_clean("JSON line", &line);
            let span = to_span(&call, &config.span_options);
            for kv in &span.attributes {
                assert_clean(kv.key.as_str(), &kv.value.as_str());
            }
        }
    }
}
