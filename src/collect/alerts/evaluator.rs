//! The evaluator: counts each call into the windows of every rule, fires a rule once when its
//! condition starts and resolves it once when it ends.

use super::config::AlertConfig;
use super::rules::{COUNT_RULES, ERROR_RATE, LabelValues, Labels};
use super::window::{Keyed, Window};
use crate::record::ToolCall;
use chrono::{DateTime, Utc};
use serde::Serialize;
use smallvec::SmallVec;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// One alert instance: `alertname` plus its labels.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Alert {
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) summary: String,
    /// The observed value when it fired (or last changed).
    pub(crate) value: f64,
    pub(crate) starts_at: DateTime<Utc>,
    pub(crate) ends_at: Option<DateTime<Utc>>,
}

impl Alert {
    pub(crate) fn name(&self) -> &str {
        self.labels
            .get("alertname")
            .map(String::as_str)
            .unwrap_or("")
    }
}
/// A change the evaluator reports.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum AlertEvent {
    Fired(Alert),
    Resolved(Alert),
}

/// Which rule: the error rate, or a count rule by its place in [`COUNT_RULES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum RuleId {
    ErrorRate,
    Count(usize),
}

impl RuleId {
    /// The error rate first, then the count rules in table order.
    fn all() -> impl Iterator<Item = RuleId> {
        std::iter::once(RuleId::ErrorRate).chain((0..COUNT_RULES.len()).map(RuleId::Count))
    }

    fn name(self) -> &'static str {
        match self {
            RuleId::ErrorRate => ERROR_RATE.name,
            RuleId::Count(i) => COUNT_RULES[i].name,
        }
    }

    fn severity(self) -> &'static str {
        match self {
            RuleId::ErrorRate => ERROR_RATE.severity,
            RuleId::Count(i) => COUNT_RULES[i].severity,
        }
    }
}

/// One export's calls of one count rule: per label set, the calls per bucket (mostly one).
#[derive(Default)]
struct Tally<'a>(foldhash::HashMap<LabelValues<'a>, SmallVec<[(i64, u64); 2]>>);

impl<'a> Tally<'a> {
    fn add(&mut self, values: LabelValues<'a>, bucket: i64) {
        let buckets = self.0.entry(values).or_default();
        match buckets.iter_mut().find(|(b, _)| *b == bucket) {
            Some((_, n)) => *n += 1,
            None => buckets.push((bucket, 1)),
        }
    }
}

/// `(rule, labels besides alertname)`.
type AlertKey = (RuleId, Labels);

/// The evaluator's state.
#[derive(Debug)]
pub(crate) struct Evaluator {
    config: AlertConfig,
    calls: Window,
    errors: Window,
    /// One set of keyed windows per count rule, in [`COUNT_RULES`] order.
    counts: Vec<Keyed<Labels>>,
    active: HashMap<AlertKey, Alert>,
    /// Spans too old for every window.
    pub(crate) too_late: u64,
}

impl Evaluator {
    pub(crate) fn new(config: AlertConfig) -> Self {
        Evaluator {
            config,
            calls: Window::default(),
            errors: Window::default(),
            counts: COUNT_RULES.iter().map(|_| Keyed::default()).collect(),
            active: HashMap::new(),
            too_late: 0,
        }
    }

    fn bucket(&self, t: DateTime<Utc>) -> i64 {
        let res = self.config.resolution.as_nanos().max(1) as i64;
        t.timestamp_nanos_opt().unwrap_or(i64::MAX).div_euclid(res)
    }

    /// The last bucket outside a window that ends now.
    fn cutoff(&self, now: DateTime<Utc>, window: Duration) -> i64 {
        let buckets = (window.as_nanos() / self.config.resolution.as_nanos().max(1)) as i64;
        self.bucket(now) - buckets
    }

    fn max_window(&self) -> Duration {
        let c = &self.config;
        COUNT_RULES
            .iter()
            .map(|r| (r.config)(c).window)
            .chain([(ERROR_RATE.config)(c).window])
            .max()
            .unwrap_or_default()
    }

    #[cfg(test)]
    /// Counts one call at `now`; returns the alerts it made fire.
    pub(crate) fn observe(&mut self, call: &ToolCall, now: DateTime<Utc>) -> Vec<AlertEvent> {
        self.observe_batch(std::slice::from_ref(call), now)
    }

    /// Counts a batch of calls (one OTLP export) at `now`, then checks the rules they touched
    /// once: a batch that starts with an error does not fire the error rate on its own.
    pub(crate) fn observe_batch(
        &mut self,
        calls: &[ToolCall],
        now: DateTime<Utc>,
    ) -> Vec<AlertEvent> {
        let too_old = self.cutoff(now, self.max_window());
        let rate_cut = self.cutoff(now, (ERROR_RATE.config)(&self.config).window);
        let cuts: Vec<i64> = COUNT_RULES
            .iter()
            .map(|spec| self.cutoff(now, (spec.config)(&self.config).window))
            .collect();
        // The export's calls per rule, label values and bucket first: each window is then
        // touched once per label set, not once per call (an export is mostly a few users).
        let mut tallies: Vec<Tally<'_>> = COUNT_RULES.iter().map(|_| Tally::default()).collect();
        let mut rate_touched = false;
        for call in calls {
            let b = self.bucket(call.timestamp.min(now));
            if b <= too_old {
                self.too_late += 1;
                continue;
            }
            if b > rate_cut {
                rate_touched = true;
                self.calls.add(b, 1);
                if (ERROR_RATE.failing)(call) {
                    self.errors.add(b, 1);
                }
            }
            for ((spec, cut), tally) in COUNT_RULES.iter().zip(&cuts).zip(&mut tallies) {
                if b <= *cut {
                    continue;
                }
                if let Some(values) = (spec.values)(call) {
                    tally.add(values, b);
                }
            }
        }
        let mut over: HashMap<AlertKey, f64> = HashMap::new();
        for (i, tally) in tallies.into_iter().enumerate() {
            let spec = &COUNT_RULES[i];
            let threshold = (spec.config)(&self.config).threshold;
            for (values, buckets) in tally.0 {
                let labels = spec.labels(values);
                let n = self.counts[i].add_all(&labels, buckets.as_slice(), cuts[i]);
                if n > threshold {
                    over.insert((RuleId::Count(i), labels), n as f64);
                }
            }
        }
        if rate_touched {
            let (total, errors) = (self.calls.prune(rate_cut), self.errors.prune(rate_cut));
            if let Some(v) = self.error_rate_value(total, errors) {
                over.insert((RuleId::ErrorRate, vec![]), v);
            }
        }
        let mut events = Vec::new();
        for ((rule, labels), value) in over {
            self.fire(rule, labels, value, now, &mut events);
        }
        events
    }

    fn error_rate_value(&self, total: u64, errors: u64) -> Option<f64> {
        let r = (ERROR_RATE.config)(&self.config);
        if total == 0 || total < r.min_calls {
            return None;
        }
        let share = errors as f64 / total as f64;
        (share > r.threshold).then_some(share)
    }

    fn summary(&self, rule: RuleId, labels: &Labels, value: f64) -> String {
        match rule {
            RuleId::ErrorRate => (ERROR_RATE.firing)(value, (ERROR_RATE.config)(&self.config)),
            RuleId::Count(i) => {
                let spec = &COUNT_RULES[i];
                (spec.firing)(labels, value as u64, (spec.config)(&self.config))
            }
        }
    }

    /// The summary a resolved notification carries: the condition no longer holds (the value
    /// it fired with would read as if it still did).
    fn resolved_summary(&self, rule: RuleId, labels: &Labels) -> String {
        match rule {
            RuleId::ErrorRate => (ERROR_RATE.resolved)((ERROR_RATE.config)(&self.config)),
            RuleId::Count(i) => {
                let spec = &COUNT_RULES[i];
                (spec.resolved)(labels, (spec.config)(&self.config))
            }
        }
    }

    fn fire(
        &mut self,
        rule: RuleId,
        labels: Labels,
        value: f64,
        now: DateTime<Utc>,
        events: &mut Vec<AlertEvent>,
    ) {
        let summary = self.summary(rule, &labels, value);
        let key = (rule, labels);
        if let Some(active) = self.active.get_mut(&key) {
            active.value = value;
            active.summary = summary;
            return;
        }
        let mut all = BTreeMap::new();
        all.insert("alertname".to_owned(), rule.name().to_owned());
        all.insert("severity".to_owned(), rule.severity().to_owned());
        for (k, v) in &key.1 {
            all.insert((*k).to_owned(), v.clone());
        }
        let alert = Alert {
            labels: all,
            summary,
            value,
            starts_at: now,
            ends_at: None,
        };
        events.push(AlertEvent::Fired(alert.clone()));
        self.active.insert(key, alert);
    }

    /// Moves every window to `now`: resolves alerts whose condition ended, forgets idle keys.
    pub(crate) fn tick(&mut self, now: DateTime<Utc>) -> Vec<AlertEvent> {
        let mut holding: HashMap<AlertKey, f64> = HashMap::new();
        let cut = self.cutoff(now, (ERROR_RATE.config)(&self.config).window);
        let (total, errors) = (self.calls.prune(cut), self.errors.prune(cut));
        if let Some(v) = self.error_rate_value(total, errors) {
            holding.insert((RuleId::ErrorRate, vec![]), v);
        }
        for (i, spec) in COUNT_RULES.iter().enumerate() {
            let rule = (spec.config)(&self.config);
            let (cut, threshold) = (self.cutoff(now, rule.window), rule.threshold);
            self.counts[i].windows.retain(|labels, w| {
                let n = w.prune(cut);
                if n > threshold {
                    holding.insert((RuleId::Count(i), labels.clone()), n as f64);
                }
                n > 0
            });
        }
        let mut events = Vec::new();
        // Conditions that hold but have not fired (a late span pushed them over) fire now.
        for (key, value) in &holding {
            if !self.active.contains_key(key) {
                self.fire(key.0, key.1.clone(), *value, now, &mut events);
            }
        }
        let ended: Vec<AlertKey> = self
            .active
            .keys()
            .filter(|k| !holding.contains_key(*k))
            .cloned()
            .collect();
        for key in ended {
            if let Some(mut alert) = self.active.remove(&key) {
                alert.ends_at = Some(now);
                alert.summary = self.resolved_summary(key.0, &key.1);
                events.push(AlertEvent::Resolved(alert));
            }
        }
        for (key, value) in holding {
            let summary = self.summary(key.0, &key.1, value);
            if let Some(a) = self.active.get_mut(&key) {
                a.value = value;
                a.summary = summary;
            }
        }
        events
    }

    /// The alerts firing now, sorted by name and labels.
    pub(crate) fn active(&self) -> Vec<Alert> {
        let mut v: Vec<Alert> = self.active.values().cloned().collect();
        v.sort_by(|a, b| a.labels.cmp(&b.labels));
        v
    }

    /// How many instances of each alert are firing (every rule named, zeros included).
    pub(crate) fn firing_counts(&self) -> Vec<(&'static str, i64)> {
        RuleId::all()
            .map(|r| {
                (
                    r.name(),
                    self.active.keys().filter(|(k, _)| *k == r).count() as i64,
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Status;
    use crate::record::{OperationType, WriteOp};
    use chrono::TimeDelta;

    fn at(secs: f64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_800_000_000_000 + (secs * 1000.0) as i64).unwrap()
    }

    fn call(user: &str, t: f64) -> ToolCall {
        let mut c = ToolCall::new("get_task", user);
        c.timestamp = at(t);
        c
    }

    /// The names of the alerts of the `events` that `pick` keeps, in order.
    fn names(events: &[AlertEvent], pick: fn(&AlertEvent) -> bool) -> Vec<String> {
        events
            .iter()
            .filter(|e| pick(e))
            .map(|(AlertEvent::Fired(a) | AlertEvent::Resolved(a))| a.name().to_owned())
            .collect()
    }

    fn fired(events: &[AlertEvent]) -> Vec<String> {
        names(events, |e| matches!(e, AlertEvent::Fired(_)))
    }

    fn resolved(events: &[AlertEvent]) -> Vec<String> {
        names(events, |e| matches!(e, AlertEvent::Resolved(_)))
    }

    #[test]
    fn loop_fires_above_100_per_minute_once_and_resolves_once() {
        let mut ev = Evaluator::new(AlertConfig::default());
        let mut all = Vec::new();
        for i in 0..100 {
            all.extend(ev.observe(&call("bob", i as f64 * 0.5), at(i as f64 * 0.5)));
        }
        assert!(fired(&all).is_empty(), "exactly 100 does not fire");
        let events = ev.observe(&call("bob", 50.0), at(50.0));
        assert_eq!(fired(&events), ["McpToolCallLoop"]);
        assert_eq!(ev.active()[0].labels["user"], "bob");
        assert!(
            ev.active()[0].summary.contains("101"),
            "{}",
            ev.active()[0].summary
        );
        // More calls do not fire again.
        assert!(fired(&ev.observe(&call("bob", 51.0), at(51.0))).is_empty());
        assert!(ev.tick(at(55.0)).is_empty(), "still 102 in the window");
        // At t=100 only the calls stamped after t=40 are in the window: about 22.
        let events = ev.tick(at(100.0));
        assert_eq!(resolved(&events), ["McpToolCallLoop"]);
        assert!(ev.tick(at(101.0)).is_empty(), "resolves once");
        assert_eq!(ev.firing_counts()[1], ("McpToolCallLoop", 0));
    }

    #[test]
    fn late_and_out_of_order_spans_count_inside_their_window_only() {
        let mut ev = Evaluator::new(AlertConfig::default());
        // 21 writes stamped over the last 30 s, arriving in reverse order.
        for i in (0..21).rev() {
            let mut c = call("alice", 100.0 - i as f64);
            c.write = Some(WriteOp::new(OperationType::Create));
            let events = ev.observe(&c, at(100.0));
            if i == 0 {
                assert_eq!(fired(&events), ["McpWriteSpike"]);
            }
        }
        // A span older than every window is dropped and counted.
        ev.observe(&call("alice", -1000.0), at(100.0));
        assert_eq!(ev.too_late, 1);
        // One write stamped 70 s ago (outside the 1 m write window) does not count.
        let mut ev = Evaluator::new(AlertConfig::default());
        for i in 0..20 {
            let mut c = call("alice", 100.0 - i as f64);
            c.write = Some(WriteOp::new(OperationType::Create));
            ev.observe(&c, at(100.0));
        }
        let mut old = call("alice", 30.0);
        old.write = Some(WriteOp::new(OperationType::Delete));
        assert!(fired(&ev.observe(&old, at(100.0))).is_empty());
    }

    #[test]
    fn error_rate_auth_and_429_rules() {
        let mut ev = Evaluator::new(AlertConfig::default());
        let t0 = 10.0;
        // 9 successes + 1 error = exactly 10 %: silent.
        for i in 0..9 {
            ev.observe(&call("u", t0 + i as f64), at(t0 + i as f64));
        }
        let mut err = call("u", t0 + 9.0);
        err.status = Status::Timeout;
        assert!(fired(&ev.observe(&err, at(t0 + 9.0))).is_empty());
        // One more error: 2/11 > 10 %.
        assert_eq!(fired(&ev.observe(&err, at(t0 + 9.5))), ["McpErrorRateHigh"]);

        let mut auth = call("mallory", 20.0);
        auth.status = Status::Error;
        auth.error_code = Some("401".into());
        for _ in 0..3 {
            assert!(!fired(&ev.observe(&auth, at(20.0))).contains(&"McpAuthFailures".into()));
        }
        auth.error_code = Some("403".into());
        assert!(fired(&ev.observe(&auth, at(20.0))).contains(&"McpAuthFailures".into()));

        let mut limited = call("carol", 21.0);
        limited.status = Status::Error;
        limited.error_code = Some("429".into());
        let events = ev.observe(&limited, at(21.0));
        assert!(fired(&events).contains(&"McpRateLimited".into()));
        let a = ev
            .active()
            .into_iter()
            .find(|a| a.name() == "McpRateLimited")
            .unwrap();
        assert_eq!(a.labels["tool_name"], "get_task");
        assert_eq!(a.labels["user"], "carol");
        assert_eq!(a.labels["severity"], "warning");
        // Five minutes later everything has resolved.
        let later = at(21.0) + TimeDelta::seconds(301);
        let mut gone = resolved(&ev.tick(later));
        gone.sort();
        assert_eq!(
            gone,
            ["McpAuthFailures", "McpErrorRateHigh", "McpRateLimited"]
        );
        assert!(
            ev.counts.iter().all(|k| k.windows.is_empty()),
            "idle keys are forgotten"
        );
    }

    #[test]
    fn config_errors_name_the_field() {
        let mut c = AlertConfig::default();
        c.error_rate.threshold = 1.5;
        c.write_spike.window = Duration::ZERO;
        let errors = c.validate();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(
            errors[0],
            "`alerts.error_rate.threshold` must be in (0, 1], got 1.5"
        );
        assert!(errors[1].starts_with("`alerts.write_spike.window`"));
    }

    #[test]
    fn a_resolved_alert_says_it_resolved() {
        let mut ev = Evaluator::new(AlertConfig::default());
        for i in 0..21 {
            let mut c = call("alice", 10.0 + i as f64);
            c.write = Some(WriteOp::new(OperationType::Create));
            ev.observe(&c, at(31.0));
        }
        assert_eq!(
            ev.active()[0].summary,
            "21 MCP write operations in 1m (threshold 20)"
        );
        let events = ev.tick(at(100.0));
        let [AlertEvent::Resolved(a)] = &events[..] else {
            panic!("{events:?}")
        };
        assert_eq!(
            a.summary,
            "Resolved: MCP write operations are back to at most 20 in 1m"
        );
        assert!(a.ends_at.is_some());
    }
}
