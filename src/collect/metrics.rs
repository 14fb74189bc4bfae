//! Derived metrics for Prometheus (`prometheus-client`), with a per-label cardinality cap.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `mcp_tool_calls_total` | counter | tool_name, user, status, error_code |
//! | `mcp_write_operations_total` | counter | tool_name, user, operation_type, user_confirmation |
//! | `mcp_confirmations_total` | counter | tool_name, outcome (accepted, declined, cancelled, timeout, unsupported_client, not_required) |
//! | `mcp_server_operation_duration_seconds` | histogram | mcp_method_name, gen_ai_tool_name, error_type |
//! | `mcp_alerts_firing` | gauge | alertname |
//! | `mcp_otel_exporter_spans_{failed,dropped}_total` | counter | service_name: spans the senders' exporters say they lost |
//! | `mcp_otel_*` | the processor's own health | |
//!
//! Each label of each metric keeps at most `max_label_values` distinct values (default 1000);
//! later values fold into `__overflow__`, so a user-controlled label cannot exhaust memory.
//! `collector-config/metrics.txt` is the contract with the shipped rules and dashboard.

use super::decode::ExporterLosses;
use crate::record::{Status, ToolCall};
use crate::semconv::map_error;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

/// The folded value of a capped label.
pub(crate) const OVERFLOW: &str = "__overflow__";

/// The semantic conventions' buckets for `mcp.server.operation.duration`, in seconds.
pub(crate) const DURATION_BUCKETS: [f64; 14] = [
    0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    tool_name: String,
    user: String,
    status: String,
    error_code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WriteLabels {
    tool_name: String,
    user: String,
    operation_type: String,
    user_confirmation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConfirmationLabels {
    tool_name: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    mcp_method_name: String,
    gen_ai_tool_name: String,
    error_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service_name: String,
}

/// The last loss counts each sending process reported, to turn its cumulative counts into
/// counter increments. A count lower than the last one is a restarted process that kept its
/// instance id (or sends none): its new count is all new.
#[derive(Debug, Default)]
struct LossLedger {
    last: std::collections::HashMap<(String, String), (u64, u64)>,
}

impl LossLedger {
    /// The increments (failed, dropped) that `report` brings.
    fn delta(&mut self, r: &ExporterLosses) -> (u64, u64) {
        let key = (r.service_name.clone(), r.instance_id.clone());
        if !self.last.contains_key(&key) && self.last.len() >= MAX_SERIES {
            // Bounded: forget every process (each reports its whole count again, so what is
            // counted twice is at most one report per process after this).
            self.last.clear();
        }
        let (f0, d0) = self
            .last
            .insert(key, (r.failed, r.dropped))
            .unwrap_or((0, 0));
        let step = |now: u64, before: u64| if now >= before { now - before } else { now };
        (step(r.failed, f0), step(r.dropped, d0))
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct AlertLabels {
    pub(crate) alertname: String,
}

/// At most `max` distinct values of one label; the rest are [`OVERFLOW`].
#[derive(Debug)]
struct LabelCap {
    max: usize,
    seen: RwLock<HashSet<String>>,
}

impl LabelCap {
    fn new(max: usize) -> Self {
        LabelCap {
            max,
            seen: RwLock::new(HashSet::new()),
        }
    }

    fn cap(&self, value: &str) -> String {
        let value = truncate_label(value);
        let value = value.as_ref();
        if self
            .seen
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(value)
        {
            return value.to_owned();
        }
        let mut seen = self.seen.write().unwrap_or_else(|e| e.into_inner());
        if seen.contains(value) {
            value.to_owned()
        } else if seen.len() < self.max {
            seen.insert(value.to_owned());
            value.to_owned()
        } else {
            OVERFLOW.to_owned()
        }
    }
}

/// The longest label value kept, in bytes; longer ones are cut with a `…`.
pub(crate) const MAX_LABEL_VALUE_BYTES: usize = 256;

/// The most series one metric keeps; past it every new label set is the overflow series.
pub(crate) const MAX_SERIES: usize = 10_000;

fn truncate_label(value: &str) -> std::borrow::Cow<'_, str> {
    if value.len() <= MAX_LABEL_VALUE_BYTES {
        return std::borrow::Cow::Borrowed(value);
    }
    let mut cut = MAX_LABEL_VALUE_BYTES;
    while !value.is_char_boundary(cut) {
        cut -= 1;
    }
    std::borrow::Cow::Owned(format!("{}…", &value[..cut]))
}

/// Caps for one metric's labels, in label order, and on its number of series.
#[derive(Debug)]
struct Caps<const N: usize> {
    labels: [LabelCap; N],
    /// Hashes of the label sets seen, at most [`MAX_SERIES`].
    series: RwLock<HashSet<u64>>,
}

impl<const N: usize> Caps<N> {
    fn new(max: usize) -> Self {
        Caps {
            labels: std::array::from_fn(|_| LabelCap::new(max)),
            series: RwLock::new(HashSet::new()),
        }
    }

    fn apply(&self, values: [&str; N]) -> [String; N] {
        let capped: [String; N] = std::array::from_fn(|i| self.labels[i].cap(values[i]));
        let key = {
            use std::hash::{Hash, Hasher};
            // Fixed keys: the same label set hashes the same on every call.
            let mut h = std::hash::DefaultHasher::new();
            capped.hash(&mut h);
            h.finish()
        };
        if self
            .series
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&key)
        {
            return capped;
        }
        let mut series = self.series.write().unwrap_or_else(|e| e.into_inner());
        if series.len() < MAX_SERIES || series.contains(&key) {
            series.insert(key);
            capped
        } else {
            std::array::from_fn(|_| OVERFLOW.to_owned())
        }
    }
}

type HistogramFamily = Family<DurationLabels, Histogram, fn() -> Histogram>;

/// The processor's own health counters.
#[derive(Debug, Default)]
pub(crate) struct Health {
    pub(crate) spans_received: Counter,
    pub(crate) spans_ignored: Counter,
    pub(crate) spans_invalid: Counter,
    pub(crate) forward_failures: Counter,
    pub(crate) forward_dropped: Counter,
    pub(crate) audit_writes: Counter,
    pub(crate) audit_errors: Counter,
    pub(crate) alerts_dropped: Counter,
    pub(crate) queue_depth: Gauge<i64, AtomicI64>,
    /// Other instrumentations' calls waiting out the hold window.
    pub(crate) calls_held: Gauge<i64, AtomicI64>,
    /// Records of a call that another record already accounts for (merged or dropped).
    pub(crate) spans_merged: Counter,
    /// Spans resent by a retrying exporter: counted before, nothing moved.
    pub(crate) spans_resent: Counter,
    /// Records of ours that came after a foreign record of the same call was promoted.
    pub(crate) spans_late: Counter,
    /// Calls whose duration is negative, not a number or longer than a day: counted as calls,
    /// kept out of the latency histogram.
    pub(crate) durations_invalid: Counter,
}

/// The longest duration the latency histogram takes: a call said to last longer (or less than
/// nothing) is a broken clock or a forged span, not a latency.
pub(crate) const MAX_DURATION_SECONDS: f64 = 86_400.0;

/// Every metric `collect` exposes.
pub(crate) struct Metrics {
    registry: Registry,
    calls: Family<CallLabels, Counter>,
    writes: Family<WriteLabels, Counter>,
    confirmations: Family<ConfirmationLabels, Counter>,
    duration: HistogramFamily,
    alerts: Family<AlertLabels, Gauge>,
    exporter_failed: Family<ServiceLabels, Counter>,
    exporter_dropped: Family<ServiceLabels, Counter>,
    losses: std::sync::Mutex<LossLedger>,
    service_caps: Caps<1>,
    pub(crate) health: Health,
    call_caps: Caps<4>,
    write_caps: Caps<2>,
    confirmation_caps: Caps<1>,
    duration_caps: Caps<2>,
    /// The series of the label sets seen, by [`SeriesKey::hash_of`]: counting a call whose
    /// label set was seen before caps, hashes and allocates nothing.
    resolved: RwLock<ResolvedSeries>,
    resolved_count: AtomicUsize,
}

/// The remembered label sets by hash, each with its series.
type ResolvedSeries = foldhash::HashMap<u64, Vec<(SeriesKey, Arc<Resolved>)>>;

/// Label sets whose series [`Metrics`] remembers; calls of later ones are capped every time.
pub(crate) const MAX_RESOLVED: usize = 4096;

/// What picks a call's series: the labels of `mcp_tool_calls_total`,
/// `mcp_write_operations_total` and the duration histogram, before capping.
#[derive(Debug, PartialEq)]
struct SeriesKey {
    method: Box<str>,
    tool: Box<str>,
    user: Box<str>,
    status: Status,
    error_code: Option<Box<str>>,
    write: Option<(crate::record::OperationType, Option<bool>)>,
}

fn write_of(call: &ToolCall) -> Option<(crate::record::OperationType, Option<bool>)> {
    call.operation_type()
        .map(|op| (op, call.write.as_ref().and_then(|w| w.user_confirmation)))
}

impl SeriesKey {
    fn of(call: &ToolCall) -> Self {
        SeriesKey {
            method: call.mcp.method.as_str().into(),
            tool: call.tool_name.as_str().into(),
            user: call.user.as_str().into(),
            status: call.status,
            error_code: call.error_code.as_deref().map(Into::into),
            write: write_of(call),
        }
    }

    fn is(&self, call: &ToolCall) -> bool {
        *self.tool == *call.tool_name
            && *self.user == *call.user
            && self.status == call.status
            && self.error_code.as_deref() == call.error_code.as_deref()
            && *self.method == *call.mcp.method
            && self.write == write_of(call)
    }

    /// A hash of the fields of [`SeriesKey`], read from the call (word at a time: this is on
    /// every counted call's path).
    fn hash_of(call: &ToolCall) -> u64 {
        use std::hash::{BuildHasher, Hash, Hasher};
        let mut h = SERIES_HASH.build_hasher();
        call.tool_name.hash(&mut h);
        call.user.hash(&mut h);
        call.status.as_str().hash(&mut h);
        call.error_code.as_deref().hash(&mut h);
        call.mcp.method.hash(&mut h);
        write_of(call)
            .map(|(op, confirmed)| (op.as_str(), confirmed))
            .hash(&mut h);
        h.finish()
    }
}

/// Seeded per process, so label values sent to collide cannot pile into one list.
static SERIES_HASH: std::sync::LazyLock<foldhash::fast::RandomState> =
    std::sync::LazyLock::new(foldhash::fast::RandomState::default);

/// The series one label set counts into.
#[derive(Debug)]
struct Resolved {
    calls: Counter,
    write: Option<Counter>,
    /// Resolved with the first call of the set whose duration is valid, as
    /// [`Metrics::record_uncached`] caps it.
    duration: OnceLock<Histogram>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

impl Metrics {
    /// Registers every metric; `max_label_values` caps each label of each metric.
    pub(crate) fn new(max_label_values: usize) -> Self {
        let mut registry = Registry::default();
        let calls = Family::<CallLabels, Counter>::default();
        let writes = Family::<WriteLabels, Counter>::default();
        let confirmations = Family::<ConfirmationLabels, Counter>::default();
        let duration: HistogramFamily = Family::new_with_constructor(duration_histogram);
        let alerts = Family::<AlertLabels, Gauge>::default();
        let exporter_failed = Family::<ServiceLabels, Counter>::default();
        let exporter_dropped = Family::<ServiceLabels, Counter>::default();
        let health = Health::default();
        registry.register("mcp_tool_calls", "MCP tool calls", calls.clone());
        registry.register(
            "mcp_write_operations",
            "MCP tool calls that wrote (create, update, delete, write)",
            writes.clone(),
        );
        registry.register(
            "mcp_confirmations",
            "MCP tool calls by what became of their confirmation (the proxy's gate, the rmcp \
             helper, a client flag or a server audit block)",
            confirmations.clone(),
        );
        registry.register(
            "mcp_server_operation_duration_seconds",
            "MCP request duration as observed on the server (semconv mcp.server.operation.duration)",
            duration.clone(),
        );
        registry.register(
            "mcp_alerts_firing",
            "Built-in alerts currently firing",
            alerts.clone(),
        );
        registry.register(
            "mcp_otel_exporter_spans_failed",
            "Spans the senders' exporters (mcp-otel proxy, library, rmcp wrapper) lost to failed \
             or timed-out exports, as they report once an export gets through",
            exporter_failed.clone(),
        );
        registry.register(
            "mcp_otel_exporter_spans_dropped",
            "Spans the senders' exporters dropped before export (full queue, the proxy's \
             observer under a flood), as they report once an export gets through",
            exporter_dropped.clone(),
        );
        let h = &health;
        for (name, help, c) in [
            (
                "mcp_otel_spans_received",
                "Spans received over OTLP",
                &h.spans_received,
            ),
            (
                "mcp_otel_spans_ignored",
                "Spans that are not MCP tool calls",
                &h.spans_ignored,
            ),
            (
                "mcp_otel_spans_invalid",
                "Tool-call spans that could not be decoded",
                &h.spans_invalid,
            ),
            (
                "mcp_otel_forward_failures",
                "Forward attempts that failed",
                &h.forward_failures,
            ),
            (
                "mcp_otel_forward_dropped",
                "Spans dropped from a full forward buffer",
                &h.forward_dropped,
            ),
            (
                "mcp_otel_audit_writes",
                "Rows written to the audit trail",
                &h.audit_writes,
            ),
            (
                "mcp_otel_audit_errors",
                "Audit writes that failed",
                &h.audit_errors,
            ),
            (
                "mcp_otel_alerts_dropped",
                "Alert notifications dropped (webhook queue full)",
                &h.alerts_dropped,
            ),
            (
                "mcp_otel_spans_merged",
                "Records of a tool call that another record of it already accounts for",
                &h.spans_merged,
            ),
            (
                "mcp_otel_spans_resent",
                "Spans resent by a retrying exporter (counted once, before)",
                &h.spans_resent,
            ),
            (
                "mcp_otel_durations_invalid",
                "Tool calls whose duration is negative, not a number or over a day: kept out of \
                 the latency histogram",
                &h.durations_invalid,
            ),
            (
                "mcp_otel_spans_late",
                "Records of ours dropped: another instrumentation's record of the same call was \
                 promoted before they came (raise --hold-window)",
                &h.spans_late,
            ),
        ] {
            registry.register(name, help, c.clone());
        }
        registry.register(
            "mcp_otel_queue_depth",
            "Requests waiting in the forward buffer",
            h.queue_depth.clone(),
        );
        registry.register(
            "mcp_otel_calls_held",
            "Other instrumentations' tool calls waiting out the hold window",
            h.calls_held.clone(),
        );
        Metrics {
            registry,
            calls,
            writes,
            confirmations,
            duration,
            alerts,
            exporter_failed,
            exporter_dropped,
            losses: Default::default(),
            service_caps: Caps::new(max_label_values),
            health,
            call_caps: Caps::new(max_label_values),
            write_caps: Caps::new(max_label_values),
            confirmation_caps: Caps::new(max_label_values),
            duration_caps: Caps::new(max_label_values),
            resolved: RwLock::default(),
            resolved_count: AtomicUsize::new(0),
        }
    }

    /// Counts tool calls: those of label sets seen before under one read lock.
    pub(crate) fn record_all(&self, calls: &[ToolCall]) {
        let mut unseen = Vec::new();
        {
            let resolved = self.resolved.read().unwrap_or_else(|e| e.into_inner());
            for call in calls {
                let hash = SeriesKey::hash_of(call);
                match resolved
                    .get(&hash)
                    .and_then(|v| v.iter().find(|(k, _)| k.is(call)))
                {
                    Some((_, r)) => self.record_resolved(r, call),
                    None => unseen.push(call),
                }
            }
        }
        for call in unseen {
            self.record(call);
        }
    }

    /// Counts one tool call.
    pub(crate) fn record(&self, call: &ToolCall) {
        let hash = SeriesKey::hash_of(call);
        let resolved = self
            .resolved
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&hash)
            .and_then(|v| v.iter().find(|(k, _)| k.is(call)))
            .map(|(_, r)| r.clone());
        match resolved.or_else(|| self.resolve(hash, call)) {
            Some(r) => self.record_resolved(&r, call),
            None => self.record_uncached(call),
        }
    }

    /// Counts `call` into the series of its label set.
    fn record_resolved(&self, r: &Resolved, call: &ToolCall) {
        r.calls.inc();
        if let Some(w) = &r.write {
            w.inc();
        }
        self.record_confirmation(call);
        let seconds = call.duration_ms / 1000.0;
        if !(0.0..=MAX_DURATION_SECONDS).contains(&seconds) {
            self.health.durations_invalid.inc();
            return;
        }
        r.duration
            .get_or_init(|| self.duration_series(call))
            .observe(seconds);
    }

    /// Resolves the series of `call`'s label set, as [`Metrics::record_uncached`] would (the
    /// caps see the same values in the same order), and remembers them; `None` once
    /// [`MAX_RESOLVED`] label sets are remembered.
    fn resolve(&self, hash: u64, call: &ToolCall) -> Option<Arc<Resolved>> {
        let mut map = self.resolved.write().unwrap_or_else(|e| e.into_inner());
        if let Some((_, r)) = map
            .get(&hash)
            .and_then(|v| v.iter().find(|(k, _)| k.is(call)))
        {
            return Some(r.clone());
        }
        if self.resolved_count.load(Ordering::Relaxed) >= MAX_RESOLVED {
            return None;
        }
        let r = Arc::new(Resolved {
            calls: self.calls_series(call),
            write: call.operation_type().map(|op| self.write_series(call, op)),
            duration: OnceLock::new(),
        });
        map.entry(hash)
            .or_default()
            .push((SeriesKey::of(call), r.clone()));
        self.resolved_count.fetch_add(1, Ordering::Relaxed);
        Some(r)
    }

    fn calls_series(&self, call: &ToolCall) -> Counter {
        // status and error code come from small fixed sets in practice, but a foreign span can
        // put anything there: they are capped like the rest.
        let [tool_name, user, status, error_code] = self.call_caps.apply([
            &call.tool_name,
            &call.user,
            call.status.as_str(),
            call.error_code.as_deref().unwrap_or(""),
        ]);
        self.calls
            .get_or_create(&CallLabels {
                tool_name,
                user,
                status,
                error_code,
            })
            .clone()
    }

    fn write_series(&self, call: &ToolCall, op: crate::record::OperationType) -> Counter {
        let [tool_name, user] = self.write_caps.apply([&call.tool_name, &call.user]);
        let user_confirmation = match call.write.as_ref().and_then(|w| w.user_confirmation) {
            Some(true) => "true",
            Some(false) => "false",
            None => "unknown",
        };
        let labels = WriteLabels {
            tool_name,
            user,
            operation_type: op.as_str().to_owned(),
            user_confirmation: user_confirmation.to_owned(),
        };
        self.writes.get_or_create(&labels).clone()
    }

    fn record_confirmation(&self, call: &ToolCall) {
        if let Some(c) = &call.confirmation {
            let [tool_name] = self.confirmation_caps.apply([&call.tool_name]);
            let labels = ConfirmationLabels {
                tool_name,
                outcome: c.outcome.as_str().to_owned(),
            };
            self.confirmations.get_or_create(&labels).inc();
        }
    }

    fn duration_series(&self, call: &ToolCall) -> Histogram {
        let error_type = map_error(call.status, call.error_code.as_deref()).error_type;
        let [mcp_method_name, gen_ai_tool_name] = self
            .duration_caps
            .apply([&call.mcp.method, &call.tool_name]);
        let labels = DurationLabels {
            mcp_method_name,
            gen_ai_tool_name,
            error_type: error_type.unwrap_or_default(),
        };
        self.duration.get_or_create(&labels).clone()
    }

    /// [`Metrics::record`] without remembering the label set: every label capped again.
    fn record_uncached(&self, call: &ToolCall) {
        self.calls_series(call).inc();
        if let Some(op) = call.operation_type() {
            self.write_series(call, op).inc();
        }
        self.record_confirmation(call);
        let seconds = call.duration_ms / 1000.0;
        if !(0.0..=MAX_DURATION_SECONDS).contains(&seconds) {
            self.health.durations_invalid.inc();
            return;
        }
        self.duration_series(call).observe(seconds);
    }

    /// Counts what the senders' exporters report they lost
    /// (`mcp_otel_exporter_spans_{failed,dropped}_total{service_name}`).
    pub(crate) fn record_exporter_losses(&self, reports: &[ExporterLosses]) {
        if reports.is_empty() {
            return;
        }
        let mut ledger = self.losses.lock().unwrap_or_else(|e| e.into_inner());
        for r in reports {
            let (failed, dropped) = ledger.delta(r);
            let [service_name] = self.service_caps.apply([&r.service_name]);
            let labels = ServiceLabels { service_name };
            // Both series exist once a process reports, so a rule sees a zero before a rise.
            self.exporter_failed.get_or_create(&labels).inc_by(failed);
            self.exporter_dropped.get_or_create(&labels).inc_by(dropped);
        }
    }

    /// Sets `mcp_alerts_firing{alertname}`.
    pub(crate) fn set_alerts_firing(&self, alertname: &str, firing: i64) {
        self.alerts
            .get_or_create(&AlertLabels {
                alertname: alertname.to_owned(),
            })
            .set(firing);
    }

    /// The OpenMetrics text exposition.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{OperationType, Status, WriteOp};

    fn line_value(text: &str, prefix: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    #[test]
    fn exporter_losses_count_what_is_new_per_process() {
        let m = Metrics::new(100);
        let report = |instance: &str, failed, dropped| ExporterLosses {
            service_name: "proxy".into(),
            instance_id: instance.into(),
            failed,
            dropped,
        };
        let failed = |m: &Metrics| {
            line_value(
                &m.encode(),
                "mcp_otel_exporter_spans_failed_total{service_name=\"proxy\"}",
            )
        };
        m.record_exporter_losses(&[report("a", 5, 0)]);
        assert_eq!(failed(&m), Some(5.0));
        // A retried export repeats the report: nothing new.
        m.record_exporter_losses(&[report("a", 5, 0), report("a", 5, 0)]);
        assert_eq!(failed(&m), Some(5.0));
        m.record_exporter_losses(&[report("a", 8, 2), report("b", 1, 0)]);
        assert_eq!(failed(&m), Some(9.0), "5 + 3 more from a + 1 from b");
        // A lower count under the same key is a restarted process: all of it is new.
        m.record_exporter_losses(&[report("a", 3, 2)]);
        assert_eq!(failed(&m), Some(12.0));
        assert_eq!(
            line_value(
                &m.encode(),
                "mcp_otel_exporter_spans_dropped_total{service_name=\"proxy\"}"
            ),
            Some(2.0)
        );
    }

    #[test]
    fn label_values_and_series_are_bounded() {
        let m = Metrics::new(1_000_000);
        let long = "u".repeat(10_000);
        m.record(&ToolCall::new("t", long.as_str()));
        let text = m.encode();
        assert!(!text.contains(&long), "a 10 kB user is not a label value");
        assert!(text.contains(&format!("user=\"{}…\"", "u".repeat(MAX_LABEL_VALUE_BYTES))));
        for i in 0..MAX_SERIES + 50 {
            m.record(&ToolCall::new("t", format!("user-{i}")));
        }
        let text = m.encode();
        let series = text
            .lines()
            .filter(|l| l.starts_with("mcp_tool_calls_total{"))
            .count();
        assert_eq!(series, MAX_SERIES + 1, "the cap plus the overflow series");
        assert!(
            text.contains("user=\"__overflow__\""),
            "past the cap: overflow"
        );
    }

    #[test]
    fn absurd_durations_count_as_calls_but_stay_out_of_the_histogram() {
        let m = Metrics::new(1000);
        for ms in [-5.0, f64::NAN, 90_000_000.0, 12.0] {
            let mut call = ToolCall::new("delete_task", "alice");
            call.duration_ms = ms;
            m.record(&call);
        }
        let text = m.encode();
        let calls = r#"mcp_tool_calls_total{tool_name="delete_task",user="alice",status="success",error_code=""} 4"#;
        assert!(text.contains(calls), "{text}");
        assert!(
            text.contains("mcp_otel_durations_invalid_total 3"),
            "{text}"
        );
        assert!(text.contains("mcp_server_operation_duration_seconds_count{mcp_method_name=\"tools/call\",gen_ai_tool_name=\"delete_task\",error_type=\"\"} 1"), "{text}");
    }

    #[test]
    fn calls_writes_and_durations_are_counted() {
        let m = Metrics::new(1000);
        let mut call = ToolCall::new("delete_task", "alice");
        call.status = Status::Error;
        call.error_code = Some("429".into());
        call.duration_ms = 150.0;
        call.write = Some(WriteOp::new(OperationType::Delete));
        m.record(&call);
        m.record(&call);
        let text = m.encode();
        let calls = r#"mcp_tool_calls_total{tool_name="delete_task",user="alice",status="error",error_code="429"}"#;
        assert_eq!(line_value(&text, calls), Some(2.0), "{text}");
        let writes = r#"mcp_write_operations_total{tool_name="delete_task",user="alice",operation_type="delete",user_confirmation="unknown"}"#;
        assert_eq!(line_value(&text, writes), Some(2.0), "{text}");
        let bucket = r#"mcp_server_operation_duration_seconds_bucket{le="0.2",mcp_method_name="tools/call",gen_ai_tool_name="delete_task",error_type=""}"#;
        assert_eq!(line_value(&text, bucket), Some(2.0), "{text}");
        let below = r#"mcp_server_operation_duration_seconds_bucket{le="0.1","#;
        assert_eq!(line_value(&text, below), Some(0.0), "{text}");
    }

    #[test]
    fn confirmations_are_counted_by_tool_and_outcome() {
        use crate::record::{Confirmation, ConfirmationOutcome as O, ConfirmationSource};
        let m = Metrics::new(1000);
        for outcome in [O::Accepted, O::Declined, O::Declined] {
            let mut call = ToolCall::new("delete_entities", "alice");
            call.confirmation = Some(Confirmation::new(
                outcome,
                Some(ConfirmationSource::Elicitation),
            ));
            m.record(&call);
        }
        m.record(&ToolCall::new("read_graph", "alice"));
        let text = m.encode();
        let at = |o: &str| {
            line_value(
                &text,
                &format!(r#"mcp_confirmations_total{{tool_name="delete_entities",outcome="{o}"}}"#),
            )
        };
        assert_eq!(at("accepted"), Some(1.0), "{text}");
        assert_eq!(at("declined"), Some(2.0), "{text}");
        assert!(!text.contains(r#"mcp_confirmations_total{tool_name="read_graph""#));
    }

    #[test]
    fn label_values_beyond_the_cap_fold_into_overflow() {
        let m = Metrics::new(3);
        for i in 0..10 {
            m.record(&ToolCall::new("get_task", format!("user-{i}")));
        }
        let text = m.encode();
        let overflow = r#"mcp_tool_calls_total{tool_name="get_task",user="__overflow__",status="success",error_code=""}"#;
        assert_eq!(line_value(&text, overflow), Some(7.0), "{text}");
        assert_eq!(text.matches("mcp_tool_calls_total{").count(), 4);
    }
}
