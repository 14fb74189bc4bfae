//! Secrets and size caps, applied to a [`ToolCall`] before anything leaves the process.
//!
//! Two kinds of secret are removed: values under keys that look secret (`password`, `token`,
//! `api_key`, …, matched case-insensitively with `_`/`-` ignored), and values that look secret
//! wherever they are (`Bearer …`, JWTs, AWS access key ids, GitHub and Slack tokens, PEM private
//! keys). Every string is then capped at a per-value size with a visible truncation marker.
//! The common case (nothing to redact) allocates nothing.

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
];

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
/// shorter than this are not scanned.
const MIN_SECRET_LEN: usize = 15;

impl Default for Redactor {
    fn default() -> Self {
        Redactor::new(&RedactConfig::default())
    }
}

impl Redactor {
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
        if key.len() < self.inner.min_key_len {
            return false;
        }
        let mut buf = [0u8; 64];
        let mut n = 0;
        for b in key.bytes() {
            if b == b'_' || b == b'-' {
                continue;
            }
            if n == buf.len() {
                // Long keys are rare; fall back to an allocation.
                return self.inner.keys.is_match(&normalize_key(key));
            }
            buf[n] = b.to_ascii_lowercase();
            n += 1;
        }
        self.inner.keys.is_match(&buf[..n])
    }

    /// Redacts and caps one string; borrows when nothing changes.
    pub fn redact_str<'a>(&self, s: &'a str) -> std::borrow::Cow<'a, str> {
        use std::borrow::Cow;
        if s.len() < MIN_SECRET_LEN {
            return self.cap(Cow::Borrowed(s));
        }
        let mut out: Option<String> = None;
        let mut copied_to = 0;
        let mut search_from = 0;
        while let Some(m) = self.inner.values.find(&s[search_from..]) {
            let start = search_from + m.start();
            match secret_len(&s[start..], VALUE_PREFIXES[m.pattern().as_usize()]) {
                Some(len) => {
                    let buf = out.get_or_insert_with(|| String::with_capacity(s.len()));
                    buf.push_str(&s[copied_to..start]);
                    buf.push_str(REDACTED);
                    copied_to = start + len;
                    search_from = copied_to;
                }
                None => search_from = start + 1,
            }
            while !s.is_char_boundary(search_from) {
                search_from += 1;
            }
            if search_from >= s.len() {
                break;
            }
        }
        let redacted = match out {
            Some(mut buf) => {
                buf.push_str(&s[copied_to..]);
                Cow::Owned(buf)
            }
            None => Cow::Borrowed(s),
        };
        self.cap(redacted)
    }

    fn cap<'a>(&self, s: std::borrow::Cow<'a, str>) -> std::borrow::Cow<'a, str> {
        let max = self.inner.max_value_bytes;
        if s.len() <= max {
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
        match value {
            Value::String(s) => {
                if let std::borrow::Cow::Owned(new) = self.redact_str(s) {
                    *s = new;
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.redact_value(v)),
            Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    if self.is_secret_key(k) && !v.is_null() {
                        *v = Value::String(REDACTED.to_owned());
                    } else {
                        self.redact_value(v);
                    }
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
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

fn normalize_key(key: &str) -> String {
    key.bytes()
        .filter(|b| *b != b'_' && *b != b'-')
        .map(|b| b.to_ascii_lowercase() as char)
        .collect()
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
}

fn is_b64url_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Counts leading bytes of `s` that satisfy `pred`.
fn run(s: &[u8], pred: impl Fn(u8) -> bool) -> usize {
    s.iter().take_while(|b| pred(**b)).count()
}

/// If `s` (which starts with `prefix`) is a secret, the byte length of the secret.
fn secret_len(s: &str, prefix: &str) -> Option<usize> {
    let b = s.as_bytes();
    let rest = &b[prefix.len()..];
    let p = prefix.len();
    match prefix {
        "Bearer " | "bearer " | "BEARER " => {
            let n = run(rest, is_token_byte);
            (n >= 8).then_some(p + n)
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
        _ if prefix.starts_with("xox") => {
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

    #[test]
    fn secret_keys_match_any_spelling() {
        let r = Redactor::default();
        for k in [
            "password",
            "API_KEY",
            "apiKey",
            "x-api-key",
            "Authorization",
            "refresh_token",
        ] {
            assert!(r.is_secret_key(k), "{k}");
        }
        for k in ["project_id", "filters", "title", "author"] {
            assert!(!r.is_secret_key(k), "{k}");
        }
    }

    #[test]
    fn long_values_are_capped_with_a_marker() {
        let r = Redactor::new(&RedactConfig {
            max_value_bytes: 10,
            ..RedactConfig::default()
        });
        let out = r.redact_str("ééééééééé"); // 18 bytes
        assert_eq!(out, "ééééé…[truncated 8 bytes]");
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
