//! The seed's alert rules, each declared once: its name, severity, settings, which calls it
//! counts and under which labels, and what its firing and resolved notifications say.
//!
//! A count rule (calls in a window per label set, fires above a threshold) is one entry of
//! [`COUNT_RULES`] plus its field in [`AlertConfig`]; its Prometheus twin lives in
//! `collector-config/rules/mcp-alerts.yml`. The error rate is a ratio over two windows, the one
//! rule of its kind ([`ERROR_RATE`]).

use super::config::{AlertConfig, CountRule, RateRule};
use crate::record::{Status, ToolCall, error_code};
use std::time::Duration;

/// The labels of one alert instance besides `alertname` and `severity`.
pub(crate) type Labels = Vec<(&'static str, String)>;

/// A rule over a count of calls in a window, per label set.
pub(crate) struct CountSpec {
    /// `alertname`.
    pub(crate) name: &'static str,
    pub(crate) severity: &'static str,
    /// The `[alerts.<key>]` table of its settings.
    pub(crate) config_key: &'static str,
    pub(crate) config: fn(&AlertConfig) -> &CountRule,
    /// The labels a call counts under, or `None` when the rule does not count it.
    pub(crate) labels: fn(&ToolCall) -> Option<Labels>,
    /// The firing summary for a count of `value`.
    pub(crate) firing: fn(&Labels, u64, &CountRule) -> String,
    /// The resolved summary: the condition no longer holds.
    pub(crate) resolved: fn(&Labels, &CountRule) -> String,
}

/// The ratio rule: (errors + timeouts) / calls over a window.
pub(crate) struct RateSpec {
    pub(crate) name: &'static str,
    pub(crate) severity: &'static str,
    pub(crate) config: fn(&AlertConfig) -> &RateRule,
    /// The calls that count as failing.
    pub(crate) failing: fn(&ToolCall) -> bool,
    pub(crate) firing: fn(f64, &RateRule) -> String,
    pub(crate) resolved: fn(&RateRule) -> String,
}

/// McpErrorRateHigh: error or timeout share of calls > 10 % over 5 min.
pub(crate) const ERROR_RATE: RateSpec = RateSpec {
    name: "McpErrorRateHigh",
    severity: "critical",
    config: |c| &c.error_rate,
    failing: |call| call.status != Status::Success,
    firing: |share, r| {
        format!(
            "MCP tool calls failing: {:.1}% errors or timeouts over {} (threshold {}%)",
            share * 100.0,
            window_text(r.window),
            r.threshold * 100.0
        )
    },
    resolved: |r| {
        format!(
            "Resolved: MCP tool call errors and timeouts are back to at most {}% over {}",
            r.threshold * 100.0,
            window_text(r.window)
        )
    },
};

/// The count rules, in the order `mcp_alerts_firing` lists them after the error rate.
pub(crate) const COUNT_RULES: &[CountSpec] = &[
    // McpToolCallLoop: > 100 calls in 1 min by one user.
    CountSpec {
        name: "McpToolCallLoop",
        severity: "warning",
        config_key: "tool_call_loop",
        config: |c| &c.tool_call_loop,
        labels: |call| Some(vec![("user", call.user.clone())]),
        firing: |l, n, r| {
            format!(
                "{} made {n} MCP tool calls in {} (threshold {}): possible agent loop",
                label(l, "user"),
                window_text(r.window),
                r.threshold
            )
        },
        resolved: |l, r| {
            format!(
                "Resolved: {} is back to at most {} MCP tool calls in {}",
                label(l, "user"),
                r.threshold,
                window_text(r.window)
            )
        },
    },
    // McpWriteSpike: > 20 write operations in 1 min.
    CountSpec {
        name: "McpWriteSpike",
        severity: "critical",
        config_key: "write_spike",
        config: |c| &c.write_spike,
        labels: |call| call.is_write().then(Vec::new),
        firing: |_, n, r| {
            format!(
                "{n} MCP write operations in {} (threshold {})",
                window_text(r.window),
                r.threshold
            )
        },
        resolved: |_, r| {
            format!(
                "Resolved: MCP write operations are back to at most {} in {}",
                r.threshold,
                window_text(r.window)
            )
        },
    },
    // McpRateLimited: any 429, per tool and user.
    CountSpec {
        name: "McpRateLimited",
        severity: "warning",
        config_key: "rate_limited",
        config: |c| &c.rate_limited,
        labels: |call| {
            (call.error_code.as_deref() == Some(error_code::RATE_LIMITED)).then(|| {
                vec![
                    ("tool_name", call.tool_name.clone()),
                    ("user", call.user.clone()),
                ]
            })
        },
        firing: |l, n, r| {
            format!(
                "{} was rate limited (HTTP 429) {n} times on {} in {}",
                label(l, "user"),
                label(l, "tool_name"),
                window_text(r.window)
            )
        },
        resolved: |l, r| match r.threshold {
            0 => format!(
                "Resolved: no HTTP 429 for {} on {} in the last {}",
                label(l, "user"),
                label(l, "tool_name"),
                window_text(r.window)
            ),
            max => format!(
                "Resolved: {} is back to at most {max} HTTP 429 on {} in {}",
                label(l, "user"),
                label(l, "tool_name"),
                window_text(r.window)
            ),
        },
    },
    // McpAuthFailures: > 3 401/403 in 1 min, per user.
    CountSpec {
        name: "McpAuthFailures",
        severity: "warning",
        config_key: "auth_failures",
        config: |c| &c.auth_failures,
        labels: |call| {
            call.error_code
                .as_deref()
                .is_some_and(error_code::is_auth_failure)
                .then(|| vec![("user", call.user.clone())])
        },
        firing: |l, n, r| {
            format!(
                "{} had {n} MCP calls rejected with 401/403 in {} (threshold {})",
                label(l, "user"),
                window_text(r.window),
                r.threshold
            )
        },
        resolved: |l, r| {
            format!(
                "Resolved: {} is back to at most {} MCP calls rejected with 401/403 in {}",
                label(l, "user"),
                r.threshold,
                window_text(r.window)
            )
        },
    },
];

/// A label's value, or `""`.
fn label<'a>(labels: &'a Labels, key: &str) -> &'a str {
    labels
        .iter()
        .find(|(k, _)| *k == key)
        .map_or("", |(_, v)| v.as_str())
}

/// `1m`, `5m`, `30s`.
pub(crate) fn window_text(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 60.0 && s % 60.0 == 0.0 {
        format!("{}m", s / 60.0)
    } else {
        format!("{s}s")
    }
}
