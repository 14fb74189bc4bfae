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
//! is prompt) and resolves once when it ends (checked on `Evaluator::tick`). Not thread-safe
//! by itself: the caller serialises access (one mutex, held briefly).
//!
//! - `rules`: each rule declared once (name, severity, what it counts, its notifications);
//! - `config`: thresholds and windows (`[alerts.*]`), validated;
//! - `window`: the exact sliding windows;
//! - `evaluator`: counting, firing and resolving.

pub(crate) mod config;
pub(crate) mod evaluator;
pub(crate) mod rules;
mod window;

pub use config::{AlertConfig, CountRule, RateRule};
pub(crate) use evaluator::{Alert, AlertEvent, Evaluator};
