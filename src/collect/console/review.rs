//! The write review page's data: `audit review` for one UTC day (or the last 24 hours), the same
//! query and the same JSON document as the CLI ([`crate::audit::review`]), and a CSV of it.

use crate::audit::review::{Review, ReviewFilter};
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use serde::Deserialize;

/// What the page asks for: a UTC day (`2026-12-01`), else the last 24 hours; optionally one
/// user or tool.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ReviewQuery {
    /// A UTC day, `2026-12-01`; absent or empty for the last 24 hours.
    pub day: Option<String>,
    /// Only this user's writes.
    pub user: Option<String>,
    /// Only this tool's writes.
    pub tool: Option<String>,
}

impl ReviewQuery {
    /// The review's window and filters.
    pub fn filter(&self, now: DateTime<Utc>) -> Result<ReviewFilter, String> {
        let (since, until) = match self.day.as_deref().filter(|d| !d.is_empty()) {
            Some(d) => {
                let day = NaiveDate::parse_from_str(d, "%Y-%m-%d")
                    .map_err(|e| format!("`day` must be a date like 2026-12-01, got {d:?}: {e}"))?;
                let start = day.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc();
                (start, start + TimeDelta::days(1))
            }
            None => (now - TimeDelta::hours(24), now),
        };
        let given = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        Ok(ReviewFilter {
            since,
            until,
            user: given(&self.user),
            tool: given(&self.tool),
        })
    }
}

/// The most writes (and failed, and refused) the review page lists; its totals and per-user
/// counts cover every write, and the CSV and JSON exports hold them all.
pub const PAGE_WRITES: usize = 1000;

/// The CSV columns, in order.
const CSV_HEADER: &str = "timestamp,user,tool_name,operation_type,resource_id,status,\
error_code,user_confirmation,confirmation_outcome,confirmation_source,flags";

/// The review's writes as CSV (RFC 4180), newest first. A cell a spreadsheet would run as a
/// formula (`=`, `+`, `-`, `@`, tab, carriage return first) is prefixed with `'`.
pub(crate) fn csv(review: &Review) -> String {
    let doc = review.to_json();
    let mut out = String::with_capacity(64 * (review.writes.len() + 1));
    out.push_str(CSV_HEADER);
    out.push_str("\r\n");
    for w in doc["writes"].as_array().into_iter().flatten() {
        let text = |k: &str| match &w[k] {
            serde_json::Value::Null => String::new(),
            serde_json::Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        let flags: Vec<&str> = w["flags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str())
            .collect();
        let cells = [
            text("timestamp"),
            text("user"),
            text("tool_name"),
            text("operation_type"),
            text("resource_id"),
            text("status"),
            text("error_code"),
            text("user_confirmation"),
            text("confirmation_outcome"),
            text("confirmation_source"),
            flags.join("; "),
        ];
        for (i, c) in cells.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&cell(c));
        }
        out.push_str("\r\n");
    }
    out
}

fn cell(s: &str) -> String {
    let defused = match s.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{s}"),
        _ => s.to_owned(),
    };
    if defused.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", defused.replace('"', "\"\""))
    } else {
        defused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_is_a_utc_day_and_nothing_is_the_last_24_hours() {
        let now = Utc::now();
        let q = ReviewQuery {
            day: Some("2026-11-30".into()),
            user: Some(String::new()),
            tool: Some("delete_task".into()),
        };
        let f = q.filter(now).unwrap();
        assert_eq!(f.since.to_rfc3339(), "2026-11-30T00:00:00+00:00");
        assert_eq!(f.until - f.since, TimeDelta::days(1));
        assert_eq!((f.user, f.tool.as_deref()), (None, Some("delete_task")));
        let f = ReviewQuery::default().filter(now).unwrap();
        assert_eq!((f.since, f.until), (now - TimeDelta::hours(24), now));
        assert!(
            ReviewQuery {
                day: Some("yesterday".into()),
                ..Default::default()
            }
            .filter(now)
            .is_err()
        );
    }

    #[test]
    fn csv_cells_are_quoted_and_formulas_defused() {
        assert_eq!(cell("plain"), "plain");
        assert_eq!(cell("a,b"), "\"a,b\"");
        assert_eq!(cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(cell("-1"), "'-1");
    }
}
