//! The evaluator's settings: thresholds and windows of each rule (`[alerts.*]` in collect's
//! TOML), validated with every problem named.

use super::rules::COUNT_RULES;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A rule over a count in a window: fires when the count is `> threshold`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountRule {
    /// The rule fires when more than this many calls are counted in the window.
    pub threshold: u64,
    /// How far back the count reaches.
    #[serde(with = "crate::duration::text")]
    pub window: Duration,
}

/// The error-rate rule: fires when the error share is `> threshold` with at least `min_calls`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateRule {
    /// The share of failing calls (errors and timeouts) above which the rule fires, in (0, 1].
    pub threshold: f64,
    /// How far back the share is computed.
    #[serde(with = "crate::duration::text")]
    pub window: Duration,
    /// The fewest calls in the window for the rule to fire at all.
    pub min_calls: u64,
}

/// Thresholds and windows of the five rules.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertConfig {
    /// `McpErrorRateHigh` (critical): error or timeout share of all calls.
    pub error_rate: RateRule,
    /// `McpToolCallLoop` (warning): calls per user, a possible agent loop.
    pub tool_call_loop: CountRule,
    /// `McpWriteSpike` (critical): write operations across all users.
    pub write_spike: CountRule,
    /// `McpRateLimited` (warning): HTTP 429 answers, per tool and user.
    pub rate_limited: CountRule,
    /// `McpAuthFailures` (warning): 401 and 403 answers, per user.
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
    pub(crate) fn validate(&self) -> Vec<String> {
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
        let counted = COUNT_RULES
            .iter()
            .map(|rule| (rule.config_key, (rule.config)(self).window));
        for (name, window) in std::iter::once(("error_rate", r.window)).chain(counted) {
            if window < res || window.is_zero() {
                errors.push(format!(
                    "`alerts.{name}.window` must be at least the resolution ({res:?}), got {window:?}"
                ));
            }
        }
        errors
    }
}
