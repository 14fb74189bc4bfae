//! The built-in evaluator of the seed's five alerts, over exact sliding windows.
//!
//! Counts are keyed by each span's own time (its start), in buckets of `resolution` (100 ms by
//! default), and summed exactly over `(now − window, now]`. Spans arrive late and out of order:
//! a late span still counts while its time is inside the window (the lateness bound is the
//! window itself); one older than every window is dropped and counted; one from the future is
//! taken as now. The rules and their labels agree with `collector-config/rules/mcp-alerts.yml`:
//!
//! | alert | condition | window | per |
//! |---|---|---|---|
//! | McpErrorRateHigh | (error + timeout) / calls > 10 % | 5m | — |
//! | McpToolCallLoop | calls > 100 | 1m | user |
//! | McpWriteSpike | write operations > 20 | 1m | — |
//! | McpRateLimited | calls answered 429 > 0 | 5m | tool_name, user |
//! | McpAuthFailures | calls answered 401/403 > 3 | 1m | user |
//!
//! An alert fires once when its condition starts (checked as each span is counted, so firing
//! is prompt) and resolves once when it ends (checked on [`Evaluator::tick`]). Not thread-safe
//! by itself: the caller serialises access (one mutex, held briefly).

use crate::record::{Status, ToolCall, error_code};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

/// A rule over a count in a window: fires when the count is `> threshold`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountRule {
    pub threshold: u64,
    #[serde(with = "crate::duration::text")]
    pub window: Duration,
}

/// The error-rate rule: fires when the error share is `> threshold` with at least `min_calls`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateRule {
    pub threshold: f64,
    #[serde(with = "crate::duration::text")]
    pub window: Duration,
    pub min_calls: u64,
}

/// Thresholds and windows of the five rules.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertConfig {
    pub error_rate: RateRule,
    pub tool_call_loop: CountRule,
    pub write_spike: CountRule,
    pub rate_limited: CountRule,
    pub auth_failures: CountRule,
    /// Bucket width of the windows.
    #[serde(with = "crate::duration::text")]
    pub resolution: Duration,
}

impl Default for AlertConfig {
    fn default() -> Self {
        let minute = Duration::from_secs(60);
        AlertConfig {
            error_rate: RateRule {
                threshold: 0.10,
                window: 5 * minute,
                min_calls: 1,
            },
            tool_call_loop: CountRule {
                threshold: 100,
                window: minute,
            },
            write_spike: CountRule {
                threshold: 20,
                window: minute,
            },
            rate_limited: CountRule {
                threshold: 0,
                window: 5 * minute,
            },
            auth_failures: CountRule {
                threshold: 3,
                window: minute,
            },
            resolution: Duration::from_millis(100),
        }
    }
}

impl AlertConfig {
    /// Every problem, each naming its field.
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        let r = &self.error_rate;
        if !(r.threshold > 0.0 && r.threshold <= 1.0) {
            errors.push(format!(
                "`alerts.error_rate.threshold` must be in (0, 1], got {}",
                r.threshold
            ));
        }
        let res = self.resolution;
        if res.is_zero() {
            errors.push("`alerts.resolution` must be positive, got 0s".to_owned());
        }
        for (name, window) in [
            ("error_rate", r.window),
            ("tool_call_loop", self.tool_call_loop.window),
            ("write_spike", self.write_spike.window),
            ("rate_limited", self.rate_limited.window),
            ("auth_failures", self.auth_failures.window),
        ] {
            if window < res || window.is_zero() {
                errors.push(format!(
                    "`alerts.{name}.window` must be at least the resolution ({res:?}), got {window:?}"
                ));
            }
        }
        errors
    }
}

/// One alert instance: `alertname` plus its labels.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Alert {
    pub labels: BTreeMap<String, String>,
    pub summary: String,
    /// The observed value when it fired (or last changed).
    pub value: f64,
    pub starts_at: DateTime<Utc>,
    pub ends_at: Option<DateTime<Utc>>,
}

impl Alert {
    pub fn name(&self) -> &str {
        self.labels
            .get("alertname")
            .map(String::as_str)
            .unwrap_or("")
    }

    /// The Alertmanager v2 API form (`POST /api/v2/alerts` takes a list of these).
    pub fn to_alertmanager(&self, generator_url: &str) -> serde_json::Value {
        let mut v = serde_json::json!({
            "labels": self.labels,
            "annotations": {"summary": self.summary},
            "startsAt": self.starts_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            "generatorURL": generator_url,
        });
        if let Some(end) = self.ends_at {
            v["endsAt"] = end.to_rfc3339_opts(SecondsFormat::Millis, true).into();
        }
        v
    }
}

/// A change the evaluator reports.
#[derive(Clone, Debug, PartialEq)]
pub enum AlertEvent {
    Fired(Alert),
    Resolved(Alert),
}

/// Exact counts per bucket over a sliding window; the sum is kept up to date.
#[derive(Debug, Default)]
struct Window {
    buckets: VecDeque<(i64, u64)>,
    sum: u64,
}

impl Window {
    fn add(&mut self, bucket: i64, n: u64) {
        self.sum += n;
        match self.buckets.back_mut() {
            Some((b, c)) if *b == bucket => *c += n,
            Some((b, _)) if *b > bucket => {
                // Late: keep the buckets sorted.
                match self.buckets.binary_search_by_key(&bucket, |(b, _)| *b) {
                    Ok(i) => self.buckets[i].1 += n,
                    Err(i) => self.buckets.insert(i, (bucket, n)),
                }
            }
            _ => self.buckets.push_back((bucket, n)),
        }
    }

    /// Drops buckets at or before `cutoff`; returns the sum of what is left.
    fn prune(&mut self, cutoff: i64) -> u64 {
        while let Some(&(b, c)) = self.buckets.front() {
            if b > cutoff {
                break;
            }
            self.sum -= c;
            self.buckets.pop_front();
        }
        self.sum
    }
}

/// Windows keyed by a label tuple.
#[derive(Debug, Default)]
struct Keyed<K> {
    windows: HashMap<K, Window>,
}

impl<K: std::hash::Hash + Eq + Clone> Keyed<K> {
    fn add(&mut self, key: &K, bucket: i64, cutoff: i64) -> u64 {
        let w = self.windows.entry(key.clone()).or_default();
        w.add(bucket, 1);
        w.prune(cutoff)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Rule {
    ErrorRate,
    Loop,
    WriteSpike,
    RateLimited,
    AuthFailures,
}

impl Rule {
    const ALL: [Rule; 5] = [
        Rule::ErrorRate,
        Rule::Loop,
        Rule::WriteSpike,
        Rule::RateLimited,
        Rule::AuthFailures,
    ];

    fn name(self) -> &'static str {
        match self {
            Rule::ErrorRate => "McpErrorRateHigh",
            Rule::Loop => "McpToolCallLoop",
            Rule::WriteSpike => "McpWriteSpike",
            Rule::RateLimited => "McpRateLimited",
            Rule::AuthFailures => "McpAuthFailures",
        }
    }

    fn severity(self) -> &'static str {
        match self {
            Rule::ErrorRate | Rule::WriteSpike => "critical",
            _ => "warning",
        }
    }
}

/// `(rule, labels besides alertname)`.
type AlertKey = (Rule, Vec<(&'static str, String)>);

/// The evaluator's state.
#[derive(Debug)]
pub struct Evaluator {
    config: AlertConfig,
    calls: Window,
    errors: Window,
    writes: Window,
    per_user: Keyed<String>,
    rate_limited: Keyed<(String, String)>,
    auth: Keyed<String>,
    active: HashMap<AlertKey, Alert>,
    /// Spans too old for every window.
    pub too_late: u64,
}

fn window_text(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 60.0 && s % 60.0 == 0.0 {
        format!("{}m", s / 60.0)
    } else {
        format!("{s}s")
    }
}

impl Evaluator {
    pub fn new(config: AlertConfig) -> Self {
        Evaluator {
            config,
            calls: Window::default(),
            errors: Window::default(),
            writes: Window::default(),
            per_user: Keyed::default(),
            rate_limited: Keyed::default(),
            auth: Keyed::default(),
            active: HashMap::new(),
            too_late: 0,
        }
    }

    pub fn config(&self) -> &AlertConfig {
        &self.config
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
        [
            c.error_rate.window,
            c.tool_call_loop.window,
            c.write_spike.window,
        ]
        .into_iter()
        .chain([c.rate_limited.window, c.auth_failures.window])
        .max()
        .unwrap_or_default()
    }

    /// Counts one call at `now`; returns the alerts it made fire.
    pub fn observe(&mut self, call: &ToolCall, now: DateTime<Utc>) -> Vec<AlertEvent> {
        self.observe_batch(std::slice::from_ref(call), now)
    }

    /// Counts a batch of calls (one OTLP export) at `now`, then checks the rules they touched
    /// once: a batch that starts with an error does not fire the error rate on its own.
    pub fn observe_batch(&mut self, calls: &[ToolCall], now: DateTime<Utc>) -> Vec<AlertEvent> {
        let mut over: HashMap<AlertKey, f64> = HashMap::new();
        let mut rate_touched = false;
        for call in calls {
            rate_touched |= self.count(call, now, &mut over);
        }
        if rate_touched {
            let cut = self.cutoff(now, self.config.error_rate.window);
            let (total, errors) = (self.calls.prune(cut), self.errors.prune(cut));
            if let Some(v) = self.error_rate_value(total, errors) {
                over.insert((Rule::ErrorRate, vec![]), v);
            }
        }
        let mut events = Vec::new();
        for ((rule, labels), value) in over {
            self.fire(rule, labels, value, now, &mut events);
        }
        events
    }

    /// Adds one call to the windows; records count rules it pushed over their threshold.
    /// Returns whether it counted towards the error rate.
    fn count(
        &mut self,
        call: &ToolCall,
        now: DateTime<Utc>,
        over: &mut HashMap<AlertKey, f64>,
    ) -> bool {
        let t = call.timestamp.min(now);
        let b = self.bucket(t);
        if b <= self.cutoff(now, self.max_window()) {
            self.too_late += 1;
            return false;
        }
        let c = &self.config;
        let cut_err = self.cutoff(now, c.error_rate.window);
        let cut_loop = self.cutoff(now, c.tool_call_loop.window);
        let cut_write = self.cutoff(now, c.write_spike.window);
        let cut_429 = self.cutoff(now, c.rate_limited.window);
        let cut_auth = self.cutoff(now, c.auth_failures.window);
        let (loop_max, write_max) = (c.tool_call_loop.threshold, c.write_spike.threshold);
        let (limited_max, auth_max) = (c.rate_limited.threshold, c.auth_failures.threshold);

        let rate = b > cut_err;
        if rate {
            self.calls.add(b, 1);
            if call.status != Status::Success {
                self.errors.add(b, 1);
            }
        }
        if b > cut_loop {
            let n = self.per_user.add(&call.user, b, cut_loop);
            if n > loop_max {
                over.insert((Rule::Loop, vec![("user", call.user.clone())]), n as f64);
            }
        }
        if call.is_write() && b > cut_write {
            self.writes.add(b, 1);
            let n = self.writes.prune(cut_write);
            if n > write_max {
                over.insert((Rule::WriteSpike, vec![]), n as f64);
            }
        }
        let code = call.error_code.as_deref();
        if code == Some(error_code::RATE_LIMITED) && b > cut_429 {
            let key = (call.tool_name.clone(), call.user.clone());
            let n = self.rate_limited.add(&key, b, cut_429);
            if n > limited_max {
                over.insert(
                    (
                        Rule::RateLimited,
                        vec![("tool_name", key.0), ("user", key.1)],
                    ),
                    n as f64,
                );
            }
        }
        if code.is_some_and(error_code::is_auth_failure) && b > cut_auth {
            let n = self.auth.add(&call.user, b, cut_auth);
            if n > auth_max {
                over.insert(
                    (Rule::AuthFailures, vec![("user", call.user.clone())]),
                    n as f64,
                );
            }
        }
        rate
    }

    fn error_rate_value(&self, total: u64, errors: u64) -> Option<f64> {
        let r = &self.config.error_rate;
        if total == 0 || total < r.min_calls {
            return None;
        }
        let share = errors as f64 / total as f64;
        (share > r.threshold).then_some(share)
    }

    fn summary(&self, rule: Rule, labels: &[(&'static str, String)], value: f64) -> String {
        let c = &self.config;
        let label = |k: &str| {
            labels
                .iter()
                .find(|(l, _)| *l == k)
                .map(|(_, v)| v.as_str())
                .unwrap_or("")
        };
        match rule {
            Rule::ErrorRate => format!(
                "MCP tool calls failing: {:.1}% errors or timeouts over {} (threshold {}%)",
                value * 100.0,
                window_text(c.error_rate.window),
                c.error_rate.threshold * 100.0
            ),
            Rule::Loop => format!(
                "{} made {value} MCP tool calls in {} (threshold {}): possible agent loop",
                label("user"),
                window_text(c.tool_call_loop.window),
                c.tool_call_loop.threshold
            ),
            Rule::WriteSpike => format!(
                "{value} MCP write operations in {} (threshold {})",
                window_text(c.write_spike.window),
                c.write_spike.threshold
            ),
            Rule::RateLimited => format!(
                "{} was rate limited (HTTP 429) {value} times on {} in {}",
                label("user"),
                label("tool_name"),
                window_text(c.rate_limited.window)
            ),
            Rule::AuthFailures => format!(
                "{} had {value} MCP calls rejected with 401/403 in {} (threshold {})",
                label("user"),
                window_text(c.auth_failures.window),
                c.auth_failures.threshold
            ),
        }
    }

    /// The summary a resolved notification carries: the condition no longer holds (the value
    /// it fired with would read as if it still did).
    fn resolved_summary(&self, rule: Rule, labels: &[(&'static str, String)]) -> String {
        let c = &self.config;
        let label = |k: &str| {
            labels
                .iter()
                .find(|(l, _)| *l == k)
                .map(|(_, v)| v.as_str())
                .unwrap_or("")
        };
        match rule {
            Rule::ErrorRate => format!(
                "Resolved: MCP tool call errors and timeouts are back to at most {}% over {}",
                c.error_rate.threshold * 100.0,
                window_text(c.error_rate.window)
            ),
            Rule::Loop => format!(
                "Resolved: {} is back to at most {} MCP tool calls in {}",
                label("user"),
                c.tool_call_loop.threshold,
                window_text(c.tool_call_loop.window)
            ),
            Rule::WriteSpike => format!(
                "Resolved: MCP write operations are back to at most {} in {}",
                c.write_spike.threshold,
                window_text(c.write_spike.window)
            ),
            Rule::RateLimited if c.rate_limited.threshold == 0 => format!(
                "Resolved: no HTTP 429 for {} on {} in the last {}",
                label("user"),
                label("tool_name"),
                window_text(c.rate_limited.window)
            ),
            Rule::RateLimited => format!(
                "Resolved: {} is back to at most {} HTTP 429 on {} in {}",
                label("user"),
                c.rate_limited.threshold,
                label("tool_name"),
                window_text(c.rate_limited.window)
            ),
            Rule::AuthFailures => format!(
                "Resolved: {} is back to at most {} MCP calls rejected with 401/403 in {}",
                label("user"),
                c.auth_failures.threshold,
                window_text(c.auth_failures.window)
            ),
        }
    }

    fn fire(
        &mut self,
        rule: Rule,
        labels: Vec<(&'static str, String)>,
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
    pub fn tick(&mut self, now: DateTime<Utc>) -> Vec<AlertEvent> {
        let c = self.config.clone();
        let mut holding: HashMap<AlertKey, f64> = HashMap::new();
        let total = self.calls.prune(self.cutoff(now, c.error_rate.window));
        let errors = self.errors.prune(self.cutoff(now, c.error_rate.window));
        if let Some(v) = self.error_rate_value(total, errors) {
            holding.insert((Rule::ErrorRate, vec![]), v);
        }
        let writes = self.writes.prune(self.cutoff(now, c.write_spike.window));
        if writes > c.write_spike.threshold {
            holding.insert((Rule::WriteSpike, vec![]), writes as f64);
        }
        let cut = self.cutoff(now, c.tool_call_loop.window);
        self.per_user.windows.retain(|user, w| {
            let n = w.prune(cut);
            if n > c.tool_call_loop.threshold {
                holding.insert((Rule::Loop, vec![("user", user.clone())]), n as f64);
            }
            n > 0
        });
        let cut = self.cutoff(now, c.rate_limited.window);
        self.rate_limited.windows.retain(|(tool, user), w| {
            let n = w.prune(cut);
            if n > c.rate_limited.threshold {
                let labels = vec![("tool_name", tool.clone()), ("user", user.clone())];
                holding.insert((Rule::RateLimited, labels), n as f64);
            }
            n > 0
        });
        let cut = self.cutoff(now, c.auth_failures.window);
        self.auth.windows.retain(|user, w| {
            let n = w.prune(cut);
            if n > c.auth_failures.threshold {
                holding.insert((Rule::AuthFailures, vec![("user", user.clone())]), n as f64);
            }
            n > 0
        });
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
    pub fn active(&self) -> Vec<Alert> {
        let mut v: Vec<Alert> = self.active.values().cloned().collect();
        v.sort_by(|a, b| a.labels.cmp(&b.labels));
        v
    }

    /// How many instances of each alert are firing (every rule named, zeros included).
    pub fn firing_counts(&self) -> Vec<(&'static str, i64)> {
        Rule::ALL
            .iter()
            .map(|r| {
                (
                    r.name(),
                    self.active.keys().filter(|(k, _)| k == r).count() as i64,
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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

    fn fired(events: &[AlertEvent]) -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match e {
                AlertEvent::Fired(a) => Some(a.name().to_owned()),
                _ => None,
            })
            .collect()
    }

    fn resolved(events: &[AlertEvent]) -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match e {
                AlertEvent::Resolved(a) => Some(a.name().to_owned()),
                _ => None,
            })
            .collect()
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
        assert!(ev.per_user.windows.is_empty(), "idle keys are forgotten");
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
