//! The envelope of a message too large to observe whole: its `id`, `method`, `params.name`,
//! `error.code` and `result.isError`, read by a forward-only scan as the bytes stream past,
//! whatever the key order and however the bytes are cut.
//!
//! The relay feeds every piece of an oversize line (stdio) or body (HTTP) to an
//! [`EnvelopeScan`] as it forwards it; nothing is buffered but the few short values the scan
//! keeps (at most [`MAX_FIELD`] bytes each). So a `tools/call` of any size is still recorded by
//! its method, id and tool name, with its arguments capped to a marker, and its answer, however
//! large, still ends it.

use serde_json::Value;

/// The longest value the scan keeps for a field; a longer one makes the envelope unreadable.
pub(crate) const MAX_FIELD: usize = 1024;
/// Keys longer than this are not among the ones the scan looks for.
const MAX_KEY: usize = 64;

/// The fields the scan keeps: (top-level key, member key inside it).
const FIELDS: [(&str, Option<&str>); 5] = [
    ("id", None),
    ("method", None),
    ("params", Some("name")),
    ("error", Some("code")),
    ("result", Some("isError")),
];
const ID: usize = 0;
const METHOD: usize = 1;
const NAME: usize = 2;
const ERROR_CODE: usize = 3;
const IS_ERROR: usize = 4;

/// What the scan found.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Envelope {
    /// The id's JSON text (`7`, `"a"`).
    pub(crate) id: Option<String>,
    pub(crate) method: Option<String>,
    /// `params.name`.
    pub(crate) tool: Option<String>,
    /// Top-level `result` / `error` members were seen.
    pub(crate) has_result: bool,
    pub(crate) has_error: bool,
    pub(crate) error_code: Option<i64>,
    pub(crate) is_error: Option<bool>,
    /// Bytes scanned.
    pub(crate) len: usize,
    /// The message was cut off: the proxy ended (the server exited, or the HTTP body stopped)
    /// while its bytes were still on their way, so this is what its first `len` bytes showed.
    pub(crate) cut_off: bool,
}

impl Envelope {
    /// A request the observer can open a call for: a method and an id.
    pub(crate) fn is_request(&self) -> bool {
        self.method.is_some() && self.id.as_deref().is_some_and(|id| id != "null")
    }

    /// A `tools/call` request, known by its id and tool name.
    pub(crate) fn is_tools_call(&self) -> bool {
        self.is_request() && self.method.as_deref() == Some("tools/call") && self.tool.is_some()
    }

    /// Enough is known to decide about the message: it is a complete `tools/call` envelope, or
    /// certainly not a `tools/call` (another method, or a response).
    pub(crate) fn settled(&self) -> bool {
        match self.method.as_deref() {
            Some("tools/call") => self.is_tools_call(),
            Some(_) => true,
            None => self.has_result || self.has_error,
        }
    }

    /// The arguments as recorded: a marker saying how large the message was (how much of it
    /// went by, when it was cut off).
    pub(crate) fn capped_arguments(&self) -> Value {
        match self.cut_off {
            false => Value::String(format!("…[truncated {} bytes]", self.len)),
            true => Value::String(format!("…[truncated, cut off after {} bytes]", self.len)),
        }
    }

    /// A `tools/call` the transport ended in the middle of: its method was seen, and its tool
    /// name; its id may not have come yet (it often follows the arguments).
    pub(crate) fn is_cut_off_call(&self) -> bool {
        self.cut_off && self.method.as_deref() == Some("tools/call") && self.tool.is_some()
    }
}

/// Where the current token's bytes go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Skip,
    Key,
    Field(usize),
}

/// A forward-only, resumable scan of one JSON object for the [`Envelope`] fields.
#[derive(Debug, Default)]
pub(crate) struct EnvelopeScan {
    depth: usize,
    /// `{` or `[` for nesting levels 1 and 2.
    kinds: [u8; 2],
    expect_key: bool,
    in_string: bool,
    in_scalar: bool,
    escape: bool,
    target: Option<Target>,
    token: Vec<u8>,
    /// The last key read at levels 1 and 2 (decoded; empty when too long).
    keys: [String; 2],
    fields: [Option<Vec<u8>>; 5],
    seen_result: bool,
    seen_error: bool,
    /// Not a single JSON object, or a field given twice or too long: nothing is trusted.
    bad: bool,
    done: bool,
    len: usize,
}

impl EnvelopeScan {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Scans the next bytes of the message.
    pub(crate) fn push(&mut self, data: &[u8]) {
        self.len += data.len();
        let mut i = 0;
        while i < data.len() && !self.bad {
            let b = data[i];
            if self.in_string {
                if self.escape {
                    self.escape = false;
                    self.keep(b);
                } else if b == b'\\' {
                    self.escape = true;
                    self.keep(b);
                } else if b == b'"' {
                    self.in_string = false;
                    self.keep(b);
                    self.end_token();
                } else if self.target == Some(Target::Skip) {
                    // Long strings (the padding) are skipped with memchr.
                    match memchr::memchr2(b'"', b'\\', &data[i..]) {
                        Some(k) => {
                            i += k;
                            continue;
                        }
                        None => return,
                    }
                } else {
                    self.keep(b);
                }
                i += 1;
                continue;
            }
            if self.in_scalar {
                if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n') {
                    self.in_scalar = false;
                    self.end_token();
                } else {
                    self.keep(b);
                    i += 1;
                    continue;
                }
            }
            self.structural(b);
            i += 1;
        }
    }

    fn structural(&mut self, b: u8) {
        if self.done {
            if !b.is_ascii_whitespace() {
                self.bad = true;
            }
            return;
        }
        match b {
            b' ' | b'\t' | b'\r' | b'\n' => {}
            b'"' => {
                let key = self.level_is_object() && self.expect_key;
                let target = if key {
                    Target::Key
                } else {
                    self.value_target()
                };
                self.start(target);
                self.in_string = true;
                self.keep(b);
            }
            b'{' | b'[' => {
                if let Target::Field(f) = self.value_target() {
                    // A field the scan keeps must be a scalar.
                    self.set_field(f, b"{}".to_vec());
                }
                self.depth += 1;
                if self.depth == 1 && b != b'{' {
                    self.bad = true;
                    return;
                }
                if self.depth <= 2 {
                    self.kinds[self.depth - 1] = b;
                    self.keys[self.depth - 1].clear();
                }
                self.expect_key = b == b'{';
            }
            b'}' | b']' => {
                if self.depth == 0 {
                    self.bad = true;
                    return;
                }
                self.depth -= 1;
                self.expect_key = false;
                if self.depth == 0 {
                    self.done = true;
                }
            }
            b':' => self.expect_key = false,
            b',' => self.expect_key = self.level_is_object(),
            _ => {
                if self.depth == 0 {
                    self.bad = true;
                    return;
                }
                let target = self.value_target();
                self.start(target);
                self.in_scalar = true;
                self.keep(b);
            }
        }
    }

    fn level_is_object(&self) -> bool {
        (1..=2).contains(&self.depth) && self.kinds[self.depth - 1] == b'{'
    }

    /// The field a value starting now belongs to, if the scan keeps it.
    fn value_target(&mut self) -> Target {
        if !self.level_is_object() {
            return Target::Skip;
        }
        let outer = self.keys[0].as_str();
        let found = FIELDS.iter().position(|(k1, k2)| match self.depth {
            1 => k2.is_none() && *k1 == outer,
            _ => Some(self.keys[1].as_str()) == *k2 && *k1 == outer,
        });
        if self.depth == 1 {
            // Seen as members, whatever their value.
            match outer {
                "result" => self.seen_result = true,
                "error" => self.seen_error = true,
                _ => {}
            }
        }
        found.map_or(Target::Skip, Target::Field)
    }

    fn start(&mut self, target: Target) {
        self.target = Some(target);
        self.token.clear();
    }

    fn keep(&mut self, b: u8) {
        match self.target {
            Some(Target::Key) if self.token.len() <= MAX_KEY * 6 => self.token.push(b),
            Some(Target::Field(_)) if self.token.len() <= MAX_FIELD => self.token.push(b),
            Some(Target::Field(_)) => self.bad = true,
            _ => {}
        }
    }

    fn end_token(&mut self) {
        match self.target.take() {
            Some(Target::Key) => {
                let key = serde_json::from_slice::<String>(&self.token)
                    .ok()
                    .filter(|k| k.len() <= MAX_KEY)
                    .unwrap_or_default();
                if let Some(slot) = self.keys.get_mut(self.depth.wrapping_sub(1)) {
                    *slot = key;
                }
            }
            Some(Target::Field(f)) => {
                let token = std::mem::take(&mut self.token);
                self.set_field(f, token);
            }
            _ => {}
        }
    }

    fn set_field(&mut self, f: usize, value: Vec<u8>) {
        if self.fields[f].replace(value).is_some() {
            // Given twice: which one the server takes is its parser's choice.
            self.bad = true;
        }
    }

    /// The message's JSON value has ended.
    pub(crate) fn done(&self) -> bool {
        self.done && !self.bad
    }

    /// What is known so far (all of it once the message ended).
    pub(crate) fn envelope(&self) -> Envelope {
        if self.bad {
            return Envelope {
                len: self.len,
                ..Envelope::default()
            };
        }
        let text = |f: usize| {
            self.fields[f]
                .as_deref()
                .and_then(|v| serde_json::from_slice::<Value>(v).ok())
        };
        let string = |f: usize| text(f).and_then(|v| v.as_str().map(str::to_owned));
        let id = text(ID).and_then(|v| match v {
            Value::String(_) | Value::Number(_) => serde_json::to_string(&v).ok(),
            _ => None,
        });
        Envelope {
            id: match text(ID) {
                Some(Value::Number(_)) => self.fields[ID]
                    .as_deref()
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .map(str::to_owned),
                _ => id,
            },
            method: string(METHOD),
            tool: string(NAME),
            has_result: self.seen_result,
            has_error: self.seen_error,
            error_code: text(ERROR_CODE).and_then(|v| v.as_i64()),
            is_error: text(IS_ERROR).and_then(|v| v.as_bool()),
            len: self.len,
            cut_off: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn scan(chunks: &[&[u8]]) -> Envelope {
        let mut s = EnvelopeScan::new();
        for c in chunks {
            s.push(c);
        }
        s.envelope()
    }

    #[test]
    fn any_key_order_and_any_cut() {
        let pad = "x".repeat(100_000);
        let line = format!(
            r#"{{"method":"tools/call","params":{{"arguments":{{"pad":"{pad}","n":[1,{{"name":"no"}}]}},"name":"delete_task"}},"jsonrpc":"2.0","id":"a\"b"}}"#
        );
        for cut in [1, 7, 4096, 99_999, line.len() - 3] {
            let (a, b) = line.as_bytes().split_at(cut);
            let e = scan(&[a, b]);
            assert!(e.is_tools_call(), "{e:?}");
            assert_eq!(e.tool.as_deref(), Some("delete_task"));
            assert_eq!(e.id.as_deref(), Some(r#""a\"b""#));
            assert_eq!(e.len, line.len());
        }
    }

    #[test]
    fn responses_and_escaped_keys() {
        let e = scan(&[br#"{"jsonrpc":"2.0","id":7,"result":{"content":[],"isError":true}}"#]);
        assert_eq!(
            (e.id.as_deref(), e.is_error, e.has_result),
            (Some("7"), Some(true), true)
        );
        assert!(e.settled());
        let e = scan(&[br#"{"\u0069d":3,"error":{"code":-32602,"message":"m"}}"#]);
        assert_eq!((e.id.as_deref(), e.error_code), (Some("3"), Some(-32602)));
    }

    #[test]
    fn doubtful_messages_are_not_trusted() {
        for line in [
            &br#"{"id":1,"id":2,"method":"tools/call","params":{"name":"x"}}"#[..],
            br#"[{"id":1,"method":"tools/call","params":{"name":"x"}}]"#,
            br#"{"id":1,"method":"tools/call","params":{"name":"x"}} {"#,
        ] {
            let e = scan(&[line]);
            assert!(!e.is_tools_call() && !e.settled(), "{e:?}");
        }
        let head =
            scan(&[br#"{"jsonrpc":"2.0","method":"tools/call","params":{"arguments":{"p":"xx"#]);
        assert!(!head.settled(), "{head:?}");
    }

    proptest! {
        /// Whatever the bytes and cuts, the scan never panics; on a real call it agrees with a
        /// full parse.
        #[test]
        fn agrees_with_a_full_parse(id in 0u32..1000, name in "[a-z_]{1,12}", pad in ".{0,64}",
                cut in 0usize..200, garbage in prop::collection::vec(any::<u8>(), 0..64)) {
            let line = json!({"params": {"arguments": {"pad": pad}, "name": name},
                              "jsonrpc": "2.0", "id": id, "method": "tools/call"}).to_string();
            let cut = cut.min(line.len());
            let (a, b) = line.as_bytes().split_at(cut);
            let e = scan(&[a, b]);
            prop_assert!(e.is_tools_call());
            prop_assert_eq!(e.tool, Some(name));
            prop_assert_eq!(e.id, Some(id.to_string()));
            let _ = scan(&[&garbage, a]);
        }
    }
}
