//! The audit page's data: `audit verify`'s result for the trail `collect` writes, and full-text
//! search over the calls' context and before/after states (`audit query --text`).
//!
//! A verify reads every row (seconds over a million), so the page never waits for one: the
//! console keeps the last result, starts a run in the background when it has none or when the
//! page asks for a fresh one, and the page shows the last result with its age until the new
//! one is in. At most one verify runs at a time. The search is `audit query`'s own, newest
//! first, at most [`SEARCH_LIMIT`] rows, each hit re-checked against the chained text.

use super::store::Trail;
use crate::audit::review::{self, QueryFilter};
use crate::audit::store::format_time;
use crate::audit::verify::VerifyReport;
use chrono::Utc;
use rusqlite::Connection;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The most search results listed.
pub const SEARCH_LIMIT: u64 = 100;

/// The last verify result and whether one is running.
#[derive(Debug, Default)]
pub struct Verifier {
    state: Mutex<VerifyState>,
}

#[derive(Debug, Default)]
struct VerifyState {
    last: Option<Value>,
    running: bool,
}

impl Verifier {
    /// What the page shows: the last result of verifying `trail` (`null` before the first),
    /// whether a run is going on. Starts a run when there is no result yet or `fresh` asks for
    /// one.
    pub(crate) fn status(self: &Arc<Self>, trail: &Arc<Trail>, fresh: bool) -> Value {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !s.running && (fresh || s.last.is_none()) {
            s.running = true;
            let me = self.clone();
            let trail = trail.clone();
            tokio::spawn(async move { me.run(&trail).await });
        }
        json!({ "last": s.last, "running": s.running })
    }

    async fn run(&self, trail: &Trail) {
        let started = Instant::now();
        let at = format_time(Utc::now());
        let result = trail.verify(report_json).await;
        let took_ms = started.elapsed().as_millis() as u64;
        let mut v = match result {
            Ok(v) => v,
            Err(e) => json!({ "error": e }),
        };
        v["checked_at"] = json!(at);
        v["took_ms"] = json!(took_ms);
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.last = Some(v);
        s.running = false;
    }
}

/// The SHA-256 fingerprint of a hex public key: its first 16 bytes, in hex pairs.
pub fn key_fingerprint(public_key_hex: &str) -> Option<String> {
    let bytes = crate::hex::decode_vec(public_key_hex, crate::hex::Case::Any)?;
    let digest = Sha256::digest(&bytes);
    Some(
        digest[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
    )
}

/// `audit verify --json`'s fields, with the key's fingerprint.
fn report_json(report: &VerifyReport) -> Value {
    let mut v = report.to_json();
    let fingerprint = report
        .public_key
        .as_ref()
        .and_then(|k| key_fingerprint(&k.0));
    v["key_fingerprint"] = json!(fingerprint);
    v
}

/// What the search asks for.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct SearchQuery {
    /// Words that must all occur in the context or a before/after state.
    pub text: Option<String>,
}

/// The words of `q.text`, trimmed, or why there are none to search for.
pub(crate) fn search_text(q: &SearchQuery) -> Result<String, String> {
    let text = q.text.as_deref().map(str::trim).unwrap_or("");
    if text.is_empty() {
        return Err("`text`: give the words to search for".to_owned());
    }
    if text.len() > 500 {
        return Err("`text` may be at most 500 bytes".to_owned());
    }
    Ok(text.to_owned())
}

/// `audit query --text`'s filter for `text`: the newest calls, one more than are listed.
pub(crate) fn search_filter(text: &str) -> QueryFilter {
    QueryFilter {
        text: Some(text.to_owned()),
        limit: SEARCH_LIMIT + 1,
        ..QueryFilter::default()
    }
}

/// The calls of the SQLite store whose context or states hold every word of `q.text`, newest
/// first.
pub fn search(conn: &Connection, path: &Path, q: &SearchQuery) -> Result<Value, String> {
    let text = search_text(q)?;
    let mut rows = Vec::new();
    review::query(conn, path, &search_filter(&text), |row| {
        rows.push(row);
        Ok(())
    })
    .map_err(|e| e.to_string())?;
    Ok(search_answer(&text, rows))
}

/// The search's answer: the newest [`SEARCH_LIMIT`] of `rows` (newest first, one more than
/// the limit when there are more).
pub(crate) fn search_answer(text: &str, mut rows: Vec<Value>) -> Value {
    let more = rows.len() as u64 > SEARCH_LIMIT;
    rows.truncate(SEARCH_LIMIT as usize);
    json!({ "text": text, "results": rows, "more": more, "limit": SEARCH_LIMIT })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_is_sixteen_bytes_of_the_keys_sha256() {
        let f = key_fingerprint(&"00".repeat(32)).unwrap();
        assert_eq!(f.len(), 16 * 3 - 1);
        // SHA-256 of 32 zero bytes starts 66 68 7a ad.
        assert!(f.starts_with("66:68:7a:ad"), "{f}");
        assert!(key_fingerprint("zz").is_none());
    }
}
