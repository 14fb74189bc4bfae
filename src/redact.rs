//! Secrets and size caps, applied to a [`ToolCall`] before anything leaves the process.
//!
//! Two kinds of secret are removed:
//!
//! - values under keys that look secret, matched case-insensitively with `_`/`-` ignored: a key
//!   containing one of [`DEFAULT_SECRET_KEYS`] (`password`, `token`, `api_key`, `client_secret`,
//!   …), a key that is one of [`EXACT_SECRET_KEYS`] (`auth`, `pwd`, `pass`, `dsn`, …), or one
//!   that ends in one of [`SECRET_KEY_SUFFIXES`] (`db_pass`, `admin_pwd`, `basic_auth`); the same
//!   keys in `key=value` and `key: value` text (query strings, libpq DSNs, headers);
//! - values that look secret wherever they are, as secret scanners in the field find them:
//!   `Bearer …` and `Basic …` credentials, JWTs, AWS access key ids, GitHub, GitLab, Slack, npm
//!   and Hugging Face tokens, Stripe (`sk_live_…`), OpenAI/Anthropic (`sk-…`), Google (`AIza…`)
//!   and SendGrid keys, age and PEM private keys, the password of a URL (`scheme://user:pw@…`),
//!   and payment card numbers (13–19 digits that pass the Luhn check);
//! - strings that hold JSON (a tool result's `content[].text`, an argument carrying a document)
//!   are parsed and redacted as JSON, so a `password` inside them goes too.
//!
//! Every string is then capped at a per-value size with a visible truncation marker. The common
//! case (nothing to redact) allocates nothing.

use crate::record::ToolCall;
use aho_corasick::AhoCorasick;
use serde_json::Value;
use std::sync::Arc;

/// What replaces a secret.
pub const REDACTED: &str = "[REDACTED]";

/// The default secret-looking key fragments (compared lower-case, without `_` and `-`).
pub const DEFAULT_SECRET_KEYS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "apikey",
    "authorization",
    "cookie",
    "privatekey",
    "credential",
    "passphrase",
    "accesskey",
    "sessionid",
    "connectionstring",
];

/// Keys that are secret as a whole word only (`auth`, but not `author`).
pub const EXACT_SECRET_KEYS: &[&str] = &["auth", "pwd", "pass", "pw", "dsn", "cvv", "cvc", "pin"];

/// Last words of a key that mark a secret (`db_pass`, `AdminPwd`, `proxy-auth`; not `compass`).
pub const SECRET_KEY_SUFFIXES: &[&str] = &["pass", "pwd", "pw", "auth"];

/// The default cap on one string value, in bytes.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 4096;

/// Redaction settings.
#[derive(Clone, Debug, PartialEq)]
pub struct RedactConfig {
    /// Key fragments that mark a value as secret; `_` and `-` are ignored, case is ignored.
    pub secret_keys: Vec<String>,
    /// Strings longer than this are cut, with a marker saying how much was cut.
    pub max_value_bytes: usize,
}

impl Default for RedactConfig {
    fn default() -> Self {
        RedactConfig {
            secret_keys: DEFAULT_SECRET_KEYS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
        }
    }
}

/// Value prefixes that start a candidate secret; each is confirmed by [`secret_len`].
const VALUE_PREFIXES: &[&str] = &[
    "Bearer ",
    "bearer ",
    "BEARER ",
    "Basic ",
    "basic ",
    "sk_live_",
    "sk_test_",
    "rk_live_",
    "rk_test_",
    "sk-",
    "AIza",
    "glpat-",
    "npm_",
    "hf_",
    "SG.",
    "xapp-",
    "AGE-SECRET-KEY-",
    "://",
    "=",
    ": ",
    "\":",
    "':",
    "AKIA",
    "ASIA",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "xoxb-",
    "xoxp-",
    "xoxa-",
    "xoxr-",
    "xoxs-",
    "xoxe-",
    "eyJ",
    "-----BEGIN",
];

/// A compiled redactor: cheap to clone, shareable across threads.
#[derive(Clone, Debug)]
pub struct Redactor {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    keys: AhoCorasick,
    /// Keys shorter than the shortest fragment cannot match: no scan needed.
    min_key_len: usize,
    values: AhoCorasick,
    max_value_bytes: usize,
}

/// The shortest secret any value prefix can confirm (`Bearer ` + 8, `xoxb-` + 10): strings
/// shorter than this are not scanned, unless a key may name a secret in them (`=` or `:`).
const MIN_SECRET_LEN: usize = 15;

impl Default for Redactor {
    fn default() -> Self {
        Redactor::new(&RedactConfig::default())
    }
}

impl Redactor {
    /// Compiles `config`'s secret key fragments and value-size cap (and the built-in secret value
    /// prefixes).
    pub fn new(config: &RedactConfig) -> Self {
        let keys: Vec<String> = config
            .secret_keys
            .iter()
            .map(|k| normalize_key(k))
            .collect();
        let min_key_len = keys.iter().map(String::len).min().unwrap_or(0);
        let keys = AhoCorasick::new(keys).expect("key fragments are plain strings");
        let values = AhoCorasick::new(VALUE_PREFIXES).expect("prefixes are plain strings");
        let max_value_bytes = config.max_value_bytes;
        Redactor {
            inner: Arc::new(Inner {
                keys,
                min_key_len,
                values,
                max_value_bytes,
            }),
        }
    }

    /// True when a value stored under `key` must not leave the process.
    pub fn is_secret_key(&self, key: &str) -> bool {
        let mut buf = [0u8; 64];
        let mut n = 0;
        for b in key.bytes() {
            if b == b'_' || b == b'-' || b == b'.' {
                continue;
            }
            if n == buf.len() {
                // Long keys are rare; fall back to an allocation.
                return self.is_secret_normalized(normalize_key(key).as_bytes())
                    || last_word_is_secret(key);
            }
            buf[n] = b.to_ascii_lowercase();
            n += 1;
        }
        self.is_secret_normalized(&buf[..n]) || last_word_is_secret(key)
    }

    fn is_secret_normalized(&self, key: &[u8]) -> bool {
        key.len() >= 2
            && (EXACT_SECRET_KEYS.iter().any(|k| k.as_bytes() == key)
                || (key.len() >= self.inner.min_key_len && self.inner.keys.is_match(key)))
    }

    /// Redacts and caps one string; borrows when nothing changes.
    pub fn redact_str<'a>(&self, s: &'a str) -> std::borrow::Cow<'a, str> {
        use std::borrow::Cow;
        // Short text holds no secret a value prefix confirms, but `pin=4829` or `{"pin":4829`
        // may hold one that its key names.
        if s.len() < MIN_SECRET_LEN && !s.bytes().any(|b| matches!(b, b'=' | b':')) {
            return self.cap(Cow::Borrowed(s));
        }
        // Secret ranges in order, without overlaps; inline for the usual none or one.
        let mut found: smallvec::SmallVec<[(usize, usize); 2]> = smallvec::SmallVec::new();
        let mut search_from = 0;
        while let Some(m) = self.inner.values.find(&s[search_from..]) {
            let at = search_from + m.start();
            match self.secret_at(s, at, VALUE_PREFIXES[m.pattern().as_usize()]) {
                // Redacted already: redacting again changes nothing (and borrows).
                Some((start, end)) if &s[start..end] == REDACTED => search_from = end,
                Some((start, end)) => {
                    found.push((start, end));
                    search_from = end;
                }
                None => search_from = at + 1,
            }
            while !s.is_char_boundary(search_from) {
                search_from += 1;
            }
            if search_from >= s.len() {
                break;
            }
        }
        card_numbers(s, &mut found);
        if found.is_empty() {
            return self.cap(Cow::Borrowed(s));
        }
        found.sort_unstable();
        let mut buf = String::with_capacity(s.len());
        let mut copied_to = 0;
        for (start, end) in found {
            if start < copied_to {
                continue;
            }
            buf.push_str(&s[copied_to..start]);
            buf.push_str(REDACTED);
            copied_to = end;
        }
        buf.push_str(&s[copied_to..]);
        let redacted = Cow::Owned(buf);
        self.cap(redacted)
    }

    /// The byte range of the secret that the pattern `prefix` found at `at` starts, if the rest
    /// confirms it.
    fn secret_at(&self, s: &str, at: usize, prefix: &str) -> Option<(usize, usize)> {
        match prefix {
            "://" => url_password(s, at),
            "=" | ": " => {
                // `key=value` / `key: value`: the key is the word just before.
                let key_start = s[..at]
                    .bytes()
                    .rev()
                    .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
                    .count();
                let key = &s[at - key_start..at];
                if key.is_empty() || !self.is_secret_key(key) {
                    return None;
                }
                let from = at + prefix.len();
                let rest = &s.as_bytes()[from..];
                let n = match rest.first() {
                    // A quoted value: up to the closing quote.
                    Some(&q @ (b'"' | b'\'')) => 1 + run(&rest[1..], |b| b != q),
                    // A header line (`Authorization: Basic …`): the rest of the line.
                    _ if prefix == ": " => run(rest, |b| !matches!(b, b'\n' | b'\r' | b'"')),
                    // A query string or DSN (`api_key=…&`, `password=… host=…`): one word.
                    _ => run(rest, |b| {
                        !b.is_ascii_whitespace() && !matches!(b, b'&' | b';' | b',' | b'"' | b'\'')
                    }),
                };
                (n > 0).then_some((from, from + n))
            }
            // `"key": value` in text that is not (or no longer) JSON: a quoted key just before
            // (its quotes escaped, `\"key\":`, in a JSON document held in a JSON string).
            "\":" | "':" => {
                let b = s.as_bytes();
                let quote = b[at];
                let escaped = at > 0 && b[at - 1] == b'\\';
                let key_end = at - usize::from(escaped);
                let open = s[..key_end].rfind(quote as char)?;
                let key = &s[open + 1..key_end];
                if key.is_empty() || key.len() > 64 || !self.is_secret_key(key) {
                    return None;
                }
                let mut from = at + 2 + run(&b[at + 2..], |c| c == b' ');
                if escaped && b.get(from) == Some(&b'\\') {
                    from += 1;
                }
                let rest = &b[from..];
                // A quoted value keeps its quotes; a bare one is one word; a nested one's own
                // strings are scanned on their own.
                let (from, n) = match rest.first() {
                    Some(b'[' | b'{') => return None,
                    Some(&q @ (b'"' | b'\'')) => (from + 1, quoted_len(&rest[1..], q, escaped)),
                    _ => (
                        from,
                        run(rest, |c| {
                            !c.is_ascii_whitespace()
                                && !matches!(c, b',' | b'}' | b']' | b'"' | b'\\')
                        }),
                    ),
                };
                (n > 0).then_some((from, from + n))
            }
            // Short prefixes that end ordinary words (`risk-…`, `graph_…`) count only as a
            // word of their own.
            "sk-" | "hf_" | "npm_" | "SG." if at > 0 && is_b64url_byte(s.as_bytes()[at - 1]) => {
                None
            }
            _ => secret_len(&s[at..], prefix).map(|len| (at, at + len)),
        }
    }

    fn cap<'a>(&self, s: std::borrow::Cow<'a, str>) -> std::borrow::Cow<'a, str> {
        let max = self.inner.max_value_bytes;
        if s.len() <= max || already_capped(&s, max) {
            return s;
        }
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        let dropped = s.len() - cut;
        std::borrow::Cow::Owned(format!("{}…[truncated {dropped} bytes]", &s[..cut]))
    }

    /// Redacts a JSON value in place, however deeply nested.
    pub fn redact_value(&self, value: &mut Value) {
        self.redact_in(value);
    }

    /// [`Redactor::redact_value`], saying whether anything changed (so that a JSON document
    /// held in a string is re-serialised only when something in it was redacted).
    fn redact_in(&self, value: &mut Value) -> bool {
        match value {
            Value::String(s) => {
                let mut changed = false;
                if let Some(new) = self.redact_embedded_json(s) {
                    *s = new;
                    changed = true;
                }
                if let std::borrow::Cow::Owned(new) = self.redact_str(s) {
                    *s = new;
                    changed = true;
                }
                changed
            }
            Value::Array(items) => items
                .iter_mut()
                .fold(false, |changed, v| self.redact_in(v) | changed),
            Value::Object(map) => map.iter_mut().fold(false, |changed, (k, v)| {
                if self.is_secret_key(k) && !v.is_null() {
                    *v = Value::String(REDACTED.to_owned());
                    true
                } else {
                    self.redact_in(v) | changed
                }
            }),
            Value::Null | Value::Bool(_) | Value::Number(_) => false,
        }
    }

    /// An OTLP string attribute as a next hop gets it: JSON text (an object or array) redacted
    /// as JSON and left whole (its strings are capped, not the document), any other text
    /// redacted and capped; `None` when nothing changed.
    pub fn redact_attribute_text(&self, s: &str) -> Option<String> {
        let t = s.trim_start();
        if (t.starts_with('{') || t.starts_with('['))
            && let Ok(mut v) = serde_json::from_str::<Value>(s)
        {
            return self.redact_in(&mut v).then(|| v.to_string());
        }
        match self.redact_str(s) {
            std::borrow::Cow::Owned(new) => Some(new),
            std::borrow::Cow::Borrowed(_) => None,
        }
    }

    /// A string that holds a JSON object or array, redacted as JSON; `None` when it holds none
    /// or nothing in it is secret.
    fn redact_embedded_json(&self, s: &str) -> Option<String> {
        let t = s.trim_start();
        if !(t.starts_with('{') || t.starts_with('[')) || s.len() < 8 {
            return None;
        }
        let mut v: Value = serde_json::from_str(s).ok()?;
        self.redact_in(&mut v).then(|| v.to_string())
    }

    fn redact_string_field(&self, s: &mut String) {
        if let std::borrow::Cow::Owned(new) = self.redact_str(s) {
            *s = new;
        }
    }

    fn redact_opt_field(&self, s: &mut Option<String>) {
        if let Some(s) = s {
            self.redact_string_field(s);
        }
    }

    /// Redacts every text and JSON field of a call that can carry user data.
    pub fn redact_call(&self, call: &mut ToolCall) {
        self.redact_string_field(&mut call.user);
        self.redact_string_field(&mut call.tool_name);
        self.redact_opt_field(&mut call.error_code);
        self.redact_opt_field(&mut call.mcp.request_id);
        self.redact_opt_field(&mut call.mcp.client_name);
        self.redact_opt_field(&mut call.mcp.client_version);
        for v in [&mut call.context, &mut call.result].into_iter().flatten() {
            self.redact_value(v);
        }
        if let Some(w) = &mut call.write {
            self.redact_opt_field(&mut w.resource_id);
            for v in [&mut w.before_state, &mut w.after_state]
                .into_iter()
                .flatten()
            {
                self.redact_value(v);
            }
        }
    }
}

/// The key's last word (after `_`, `-`, `.` or a lower-to-upper case step) is a secret one.
fn last_word_is_secret(key: &str) -> bool {
    let b = key.as_bytes();
    let mut start = 0;
    for i in 1..b.len() {
        if matches!(b[i - 1], b'_' | b'-' | b'.')
            || (b[i - 1].is_ascii_lowercase() && b[i].is_ascii_uppercase())
        {
            start = i;
        }
    }
    start > 0
        && SECRET_KEY_SUFFIXES
            .iter()
            .any(|w| key[start..].eq_ignore_ascii_case(w))
}

/// A value this cap already cut (`…[truncated N bytes]` after at most `max` bytes): capping
/// twice (the exporter, then the collector) changes nothing.
fn already_capped(s: &str, max: usize) -> bool {
    let Some(at) = s.rfind("…[truncated ") else {
        return false;
    };
    at <= max
        && s[at..]
            .strip_prefix("…[truncated ")
            .and_then(|r| r.strip_suffix(" bytes]"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn normalize_key(key: &str) -> String {
    key.bytes()
        .filter(|b| *b != b'_' && *b != b'-' && *b != b'.')
        .map(|b| b.to_ascii_lowercase() as char)
        .collect()
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
}

fn is_b64url_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// The length of a quoted value up to its closing `q` (`v` starts after the opening one): a
/// backslash escapes the next byte, except that in `escaped` text (JSON inside a JSON string)
/// `\"` is the closing quote itself.
fn quoted_len(v: &[u8], q: u8, escaped: bool) -> usize {
    let mut i = 0;
    while i < v.len() {
        match v[i] {
            b'\\' if escaped && v.get(i + 1) == Some(&q) => return i,
            b'\\' => i += 2,
            c if c == q => return i,
            _ => i += 1,
        }
    }
    v.len()
}

/// Counts leading bytes of `s` that satisfy `pred`.
fn run(s: &[u8], pred: impl Fn(u8) -> bool) -> usize {
    s.iter().take_while(|b| pred(**b)).count()
}

/// The password of a URL whose `://` is at `at`: `scheme://user:PASSWORD@host`.
fn url_password(s: &str, at: usize) -> Option<(usize, usize)> {
    let from = at + 3;
    let authority = run(&s.as_bytes()[from..], |b| {
        !b.is_ascii_whitespace() && !matches!(b, b'/' | b'?' | b'#' | b'"' | b'\'' | b'<' | b'>')
    });
    let auth = &s[from..from + authority];
    let userinfo = &auth[..auth.rfind('@')?];
    let colon = userinfo.find(':')?;
    let start = from + colon + 1;
    let end = from + userinfo.len();
    (end > start).then_some((start, end))
}

/// Payment card numbers in `s`: 13 to 19 digits, single spaces or dashes between groups
/// allowed, passing the Luhn check, not part of a longer run of digits.
fn card_numbers(s: &str, found: &mut smallvec::SmallVec<[(usize, usize); 2]>) {
    let b = s.as_bytes();
    if b.iter().filter(|c| c.is_ascii_digit()).count() < 13 {
        return;
    }
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() || (i > 0 && b[i - 1].is_ascii_digit()) {
            i += 1;
            continue;
        }
        let start = i;
        let mut digits = smallvec::SmallVec::<[u8; 20]>::new();
        let mut end = i;
        let mut j = i;
        while j < b.len() && digits.len() <= 19 {
            if b[j].is_ascii_digit() {
                digits.push(b[j] - b'0');
                j += 1;
                end = j;
            } else if matches!(b[j], b' ' | b'-') && j + 1 < b.len() && b[j + 1].is_ascii_digit() {
                j += 1;
            } else {
                break;
            }
        }
        if (13..=19).contains(&digits.len()) && luhn(&digits) {
            found.push((start, end));
        }
        i = end.max(i + 1);
    }
}

fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// If `s` (which starts with `prefix`) is a secret, the byte length of the secret.
fn secret_len(s: &str, prefix: &str) -> Option<usize> {
    let b = s.as_bytes();
    let rest = &b[prefix.len()..];
    let p = prefix.len();
    match prefix {
        "Bearer " | "bearer " | "BEARER " | "Basic " | "basic " => {
            let n = run(rest, is_token_byte);
            (n >= 8).then_some(p + n)
        }
        "sk_live_" | "sk_test_" | "rk_live_" | "rk_test_" => {
            let n = run(rest, |c| c.is_ascii_alphanumeric());
            (n >= 16).then_some(p + n)
        }
        "sk-" | "glpat-" | "AIza" => {
            let n = run(rest, is_b64url_byte);
            (n >= 20).then_some(p + n)
        }
        "npm_" | "hf_" => {
            let n = run(rest, |c| c.is_ascii_alphanumeric());
            (n >= 30).then_some(p + n)
        }
        "SG." => {
            let n = run(rest, |c| is_b64url_byte(c) || c == b'.');
            (n >= 40).then_some(p + n)
        }
        "AGE-SECRET-KEY-" => {
            let n = run(rest, |c| c.is_ascii_alphanumeric());
            (n >= 20).then_some(p + n)
        }
        "AKIA" | "ASIA" => {
            let n = run(rest, |c| c.is_ascii_uppercase() || c.is_ascii_digit());
            (n >= 16).then_some(p + n)
        }
        "github_pat_" => {
            let n = run(rest, |c| c.is_ascii_alphanumeric() || c == b'_');
            (n >= 20).then_some(p + n)
        }
        "eyJ" => {
            // header.payload.signature, base64url; the payload is JSON too.
            let h = run(rest, is_b64url_byte);
            let after_h = &rest[h..];
            if h < 8 || after_h.first() != Some(&b'.') {
                return None;
            }
            let pl = run(&after_h[1..], is_b64url_byte);
            let after_p = &after_h[1 + pl..];
            if pl < 8 || after_p.first() != Some(&b'.') {
                return None;
            }
            let sig = run(&after_p[1..], is_b64url_byte);
            Some(p + h + 1 + pl + 1 + sig)
        }
        "-----BEGIN" => {
            let line_end = s.find('\n').unwrap_or(s.len());
            if !s[..line_end].contains("PRIVATE KEY-----") {
                return None;
            }
            // Up to and including the END marker line, or to the end of the value.
            match s.find("-----END") {
                Some(end) => {
                    let close = s[end + 8..].find("-----").map(|i| end + 8 + i + 5);
                    Some(close.unwrap_or(s.len()))
                }
                None => Some(s.len()),
            }
        }
        _ if prefix.starts_with("xox") || prefix == "xapp-" => {
            let n = run(rest, |c| c.is_ascii_alphanumeric() || c == b'-');
            (n >= 10).then_some(p + n)
        }
        _ => {
            // ghp_, gho_, ghu_, ghs_, ghr_
            let n = run(rest, |c| c.is_ascii_alphanumeric());
            (n >= 20).then_some(p + n)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// Secret values that must never survive redaction.
    pub(crate) const SECRET_VALUES: &[&str] = &[
        "Bearer sk_live_abcdefghijklmnop",
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
        "xoxb-123456789012-abcdefghijkl",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dBjftJeZ4CVPmB92K27uhbUJU1p1r_wW1gFWFOEjXk",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\n-----END RSA PRIVATE KEY-----",
    ];

    /// The parts of [`SECRET_VALUES`] that must not appear in any output.
    pub(crate) const SECRET_MARKERS: &[&str] = &[
        "sk_live_abcdefghijklmnop",
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
        "github_pat_11ABCDEFG",
        "xoxb-123456789012",
        "dBjftJeZ4CVPmB92K27uhbUJU1p1r_wW1gFWFOEjXk",
        "MIIEowIBAAKCAQEA7",
    ];

    /// A value that is only secret because of its key.
    pub(crate) const KEYED_SECRET: &str = "hunter2-correct-horse";

    fn assert_clean(text: &str) {
        for m in SECRET_MARKERS.iter().chain([&KEYED_SECRET]) {
            assert!(!text.contains(m), "secret {m:?} survived in {text}");
        }
    }

    #[test]
    fn secret_values_are_redacted_in_place() {
        let r = Redactor::default();
        for s in SECRET_VALUES {
            let text = format!("header: {s} trailing");
            let out = r.redact_str(&text);
            assert_clean(&out);
            assert!(out.starts_with("header: [REDACTED]"), "{out}");
        }
    }

    #[test]
    fn ordinary_text_is_borrowed_unchanged() {
        let r = Redactor::default();
        for s in [
            "hello",
            "Bearer",
            "AKIA short",
            "eyJ not a jwt",
            "xoxo",
            "café ☕ eyJ",
        ] {
            assert!(
                matches!(r.redact_str(s), std::borrow::Cow::Borrowed(_)),
                "{s}"
            );
        }
    }

    /// Every kind of secret the field's scanners find, as a value (with what must not survive).
    pub(crate) const CORPUS: &[(&str, &str)] = &[
        ("Basic dXNlcjpodW50ZXIyLXNlY3JldA==", "dXNlcjpodW50ZXIy"),
        ("Authorization: Basic dXNlcjpodW50ZXIy", "dXNlcjpodW50ZXIy"),
        (
            "postgres://app:s3cr3t-pw@db.internal:5432/prod",
            "s3cr3t-pw",
        ),
        ("https://admin:hunter2pass@example.com/x", "hunter2pass"),
        (
            "https://api.example.com/v1/items?api_key=AbCdEf123456&page=2",
            "AbCdEf123456",
        ),
        (
            "https://h.example.com/cb?access_token=zz9zz9zz9zz9&x=1",
            "zz9zz9zz9zz9",
        ),
        (
            "host=db user=app password=pg-pass-77 dbname=prod",
            "pg-pass-77",
        ),
        (
            "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
            "4eC39HqLyjWDarjtT1zdp7dc",
        ),
        (
            "sk_test_4eC39HqLyjWDarjtT1zdp7dc",
            "4eC39HqLyjWDarjtT1zdp7dc",
        ),
        (
            "AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW",
            "SyA1b2C3d4E5f6G7h8I9",
        ),
        (
            "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789ABCD",
            "abcdefghijklmnopqrst",
        ),
        (
            "sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123",
            "api03-abcdefghijklmn",
        ),
        ("glpat-abcdefghijklmnopqrst", "abcdefghijklmnopqrst"),
        (
            "npm_abcdefghijklmnopqrstuvwxyz0123456789",
            "abcdefghijklmnopqrstuvwxyz",
        ),
        (
            "hf_abcdefghijklmnopqrstuvwxyz01234567",
            "abcdefghijklmnopqrstuvwxyz",
        ),
        (
            "SG.abcdefghijklmnopqrstuv.abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
            "abcdefghijklmnopqrstuv.abcdefghij",
        ),
        (
            "xapp-1-A0123456789-0123456789012-abcdef",
            "A0123456789-0123456789012",
        ),
        (
            "AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ",
            "1QQQQQQQQQQQQQQQQQQQ",
        ),
        ("card 4111 1111 1111 1111 on file", "4111 1111 1111 1111"),
        ("card 5500-0000-0000-0004", "5500-0000-0000-0004"),
        ("378282246310005", "378282246310005"),
        (
            "password: \"correct horse battery\"",
            "correct horse battery",
        ),
        // JSON-looking text that does not parse (cut off, or edited on the way).
        (
            "{\"api_key\":\"sk_live _4eC39HqLyjWDarjtT1zdp7dc\"[\"n\":1}",
            "4eC39HqLyjWDarjtT1zdp7dc",
        ),
        ("{'password': 'hunter2 horse', 'n': 1", "hunter2 horse"),
        ("{\"pin\": 482913, \"n\": 1", "482913"),
        ("{\"pin\":4829", "4829"),
        ("{'pwd': 'abc'}", "abc"),
        (
            "{\"p\": \"{\\\"password\\\":\\\"hunter2 horse\\\"}",
            "hunter2 horse",
        ),
        ("{\"password\":\"a\\\"b c\", \"n\": 1", "b c"),
        (
            "{\"token\":[\"a\"], \"secret\": 0xdeadbeef, \"n\": 1",
            "0xdeadbeef",
        ),
    ];

    #[test]
    fn the_corpus_is_redacted_in_text() {
        let r = Redactor::default();
        for (value, secret) in CORPUS {
            let out = r.redact_str(value);
            assert!(!out.contains(secret), "{value:?} -> {out:?}");
            assert!(out.contains(REDACTED), "{value:?} -> {out:?}");
            // What was redacted once is left as it is (a next hop redacts again).
            assert!(
                matches!(r.redact_str(&out), std::borrow::Cow::Borrowed(_)),
                "{value:?}: {out:?} -> {:?}",
                r.redact_str(&out)
            );
        }
        // What is not a secret stays.
        for plain in [
            "order 1234567890123 shipped",        // 13 digits, Luhn fails
            "https://example.com/a?page=2&q=cat", // no secret parameter
            "author: Ada Lovelace",
            "{\"title\": \"a long enough title\", \"n\": 1",
            "ratio=0.5 and basic_auth_enabled=true",
            "task-sk-1",
        ] {
            assert_eq!(r.redact_str(plain), plain);
        }
    }

    /// Key names and whether they are secret: any spelling of the rule's words, the names
    /// found in the field, and names that only contain or resemble one.
    const KEYS: &[(&str, bool)] = &[
        ("password", true),
        ("API_KEY", true),
        ("apiKey", true),
        ("x-api-key", true),
        ("Authorization", true),
        ("refresh_token", true),
        ("db_pass", true),
        ("pwd", true),
        ("auth", true),
        ("AdminPwd", true),
        ("user.pw", true),
        ("client_secret", true),
        ("passphrase", true),
        ("dsn", true),
        ("aws_access_key_id", true),
        ("session_id", true),
        ("proxy-auth", true),
        ("x.api.key", true),
        ("connection_string", true),
        ("project_id", false),
        ("filters", false),
        ("title", false),
        ("author", false),
        ("passenger_count", false),
        ("compass", false),
        ("authority_level", false),
        ("pinned", false),
    ];

    #[test]
    fn keys_of_every_spelling_in_the_field() {
        let r = Redactor::default();
        for &(key, secret) in KEYS {
            assert_eq!(r.is_secret_key(key), secret, "{key}");
        }
    }

    #[test]
    fn json_inside_text_is_redacted_as_json() {
        let r = Redactor::default();
        let inner = json!({"user": "a", "password": KEYED_SECRET, "client_secret": "cs-1234"});
        let mut result = json!({"content": [{"type": "text", "text": inner.to_string()}]});
        r.redact_value(&mut result);
        let text = result["content"][0]["text"].as_str().unwrap();
        assert!(
            !text.contains(KEYED_SECRET) && !text.contains("cs-1234"),
            "{text}"
        );
        let parsed: Value = serde_json::from_str(text).unwrap();
        assert_eq!(parsed["user"], "a");
        assert_eq!(parsed["password"], REDACTED);
    }

    #[test]
    fn long_values_are_capped_with_a_marker() {
        let r = Redactor::new(&RedactConfig {
            max_value_bytes: 10,
            ..RedactConfig::default()
        });
        let out = r.redact_str("ééééééééé"); // 18 bytes
        assert_eq!(out, "ééééé…[truncated 8 bytes]");
        assert_eq!(r.redact_str(&out), out, "a second cap changes nothing");
    }

    #[test]
    fn nested_values_are_redacted() {
        let r = Redactor::default();
        let mut v = json!({
            "project_id": "p1",
            "nested": [{"deeper": {"password": KEYED_SECRET, "note": SECRET_VALUES[1]}}],
            "credentials": {"user": "a", "pass": "b"},
        });
        r.redact_value(&mut v);
        assert_clean(&v.to_string());
        assert_eq!(v["project_id"], "p1");
        assert_eq!(v["credentials"], REDACTED);
    }

    /// Arbitrary nested JSON with secrets planted under secret keys and inside text.
    pub(crate) fn json_with_secrets() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            "[a-z ]{0,20}".prop_map(Value::String),
            (0..SECRET_VALUES.len(), "[a-z ]{0,8}")
                .prop_map(|(i, pre)| Value::String(format!("{pre}{}", SECRET_VALUES[i]))),
        ];
        leaf.prop_recursive(5, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec(
                    (
                        prop_oneof!["[a-z_]{1,10}", Just("api_key".to_owned())],
                        prop_oneof![inner, Just(json!(KEYED_SECRET))]
                    ),
                    0..6
                )
                .prop_map(|kv| {
                    // A keyed secret under a non-secret key is not a secret: rename it.
                    let map = kv
                        .into_iter()
                        .map(|(k, v)| {
                            if v == json!(KEYED_SECRET) {
                                ("password".to_owned(), v)
                            } else {
                                (k, v)
                            }
                        })
                        .collect();
                    Value::Object(map)
                }),
            ]
        })
    }

    proptest! {
        #[test]
        fn no_secret_survives_in_json(mut v in json_with_secrets()) {
            Redactor::default().redact_value(&mut v);
            assert_clean(&v.to_string());
        }
    }
}
