//! One JSON-RPC message's envelope (`id`, `method`, `params`, `result`, `error`), read in one
//! borrowed pass over its bytes that also checks that the whole message is JSON.
//!
//! The observer reads every message the relays see, and this is the first thing it does with
//! each. serde_json's derive did the same work at about three times the instructions (a raw
//! value is skipped, then its bytes checked for UTF-8 again, field by field). What this reader
//! accepts, and what it returns, is what `serde_json::from_slice` into [`Envelope`] gave for
//! every JSON object (a property test holds the two together): the same grammar (numbers,
//! escapes, control characters, any nesting depth in the values), `null` read as absent, one
//! of the five members given twice is an error, anything but whitespace after the object is an
//! error. The rare messages it does not read itself it hands to that parse: a member name or
//! a `method` spelled with escapes (`"\u0069d"` is `id`), or bytes that are not UTF-8 (serde
//! skips over those inside strings it does not keep). The one difference: a message that is a
//! JSON array is not an envelope here (serde would read a five-element array as one, field by
//! field); JSON-RPC requests and responses are objects, and a server answers an array in
//! place of one with an error.

use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// A message's envelope; each member's JSON text as it was written (no surrounding
/// whitespace), `None` when absent or `null`.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Message<'a> {
    pub(super) id: Option<&'a str>,
    /// Borrowed unless escaped.
    pub(super) method: Option<Cow<'a, str>>,
    pub(super) params: Option<&'a str>,
    pub(super) result: Option<&'a str>,
    pub(super) error: Option<&'a str>,
}

/// The envelope as serde_json reads it: the reader's fallback, and its oracle in the tests.
#[derive(Deserialize)]
pub(super) struct Envelope<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
    #[serde(borrow)]
    result: Option<&'a RawValue>,
    #[serde(borrow)]
    error: Option<&'a RawValue>,
}

impl<'a> From<Envelope<'a>> for Message<'a> {
    fn from(e: Envelope<'a>) -> Self {
        Message {
            id: e.id.map(RawValue::get),
            method: e.method,
            params: e.params.map(RawValue::get),
            result: e.result.map(RawValue::get),
            error: e.error.map(RawValue::get),
        }
    }
}

/// serde_json's reading of `raw` as an [`Envelope`].
pub(super) fn read_with_serde(raw: &[u8]) -> Option<Message<'_>> {
    serde_json::from_slice::<Envelope>(raw)
        .ok()
        .map(Message::from)
}

/// Reads `raw` as one JSON-RPC message; `None` when it is not a JSON object or gives one of the
/// envelope's members twice (or `method` is not a string).
pub(super) fn read(raw: &[u8]) -> Option<Message<'_>> {
    let Ok(text) = std::str::from_utf8(raw) else {
        return read_with_serde(raw);
    };
    match Reader::new(text).envelope() {
        Ok(message) => Some(message),
        Err(Unread::Invalid) => None,
        Err(Unread::Escaped) => read_with_serde(raw),
    }
}

/// Why the reader gave up.
enum Unread {
    /// Not an envelope.
    Invalid,
    /// A member name or the method has escapes: serde decides.
    Escaped,
}

/// Which member a top-level name is.
#[derive(Clone, Copy)]
enum Member {
    Id,
    Method,
    Params,
    Result,
    Error,
    Other,
}

/// How many bytes at the start of `b` are neither `"`, `\\` nor a control character: eight at a
/// time (the lowest byte a test flags is a true match; a borrow can only flag bytes above it).
fn plain_run(b: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |v: u64| v.wrapping_sub(ONES) & !v;
    let mut n = 0;
    while let Some(chunk) = b.get(n..n + 8) {
        let x = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        let found = (zero(x ^ (ONES * u64::from(b'"')))
            | zero(x ^ (ONES * u64::from(b'\\')))
            | (x.wrapping_sub(ONES * 0x20) & !x))
            & HIGH;
        if found != 0 {
            return n + (found.trailing_zeros() / 8) as usize;
        }
        n += 8;
    }
    n + b[n..]
        .iter()
        .take_while(|&&c| c != b'"' && c != b'\\' && c >= 0x20)
        .count()
}

struct Reader<'a> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
    /// The open arrays and objects of the value being skipped (`true` for an object).
    stack: Vec<bool>,
}

type Step<T> = Result<T, Unread>;

impl<'a> Reader<'a> {
    fn new(text: &'a str) -> Self {
        Reader {
            text,
            b: text.as_bytes(),
            i: 0,
            stack: Vec::new(),
        }
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    /// The next byte after whitespace, not consumed.
    fn peek(&mut self) -> Step<u8> {
        self.ws();
        self.b.get(self.i).copied().ok_or(Unread::Invalid)
    }

    fn eat(&mut self, byte: u8) -> Step<()> {
        match self.peek()? == byte {
            true => {
                self.i += 1;
                Ok(())
            }
            false => Err(Unread::Invalid),
        }
    }

    fn envelope(mut self) -> Step<Message<'a>> {
        self.eat(b'{')?;
        let mut m = Message::default();
        // Which of the five were given (a `null` included): the second of one is an error.
        let mut given = [false; 5];
        if self.peek()? == b'}' {
            self.i += 1;
        } else {
            loop {
                let member = self.member_name()?;
                self.eat(b':')?;
                self.ws();
                let start = self.i;
                let first = self.peek()?;
                self.value()?;
                let text = &self.text[start..self.i];
                let slot = match member {
                    Member::Id => Some((0, &mut m.id)),
                    Member::Params => Some((2, &mut m.params)),
                    Member::Result => Some((3, &mut m.result)),
                    Member::Error => Some((4, &mut m.error)),
                    Member::Method | Member::Other => None,
                };
                if let Some((k, slot)) = slot {
                    if std::mem::replace(&mut given[k], true) {
                        return Err(Unread::Invalid);
                    }
                    *slot = (text != "null").then_some(text);
                } else if let Member::Method = member {
                    if std::mem::replace(&mut given[1], true) {
                        return Err(Unread::Invalid);
                    }
                    m.method = match first {
                        b'"' if text.contains('\\') => return Err(Unread::Escaped),
                        b'"' => Some(Cow::Borrowed(&text[1..text.len() - 1])),
                        _ if text == "null" => None,
                        _ => return Err(Unread::Invalid),
                    };
                }
                match self.peek()? {
                    b',' => self.i += 1,
                    b'}' => {
                        self.i += 1;
                        break;
                    }
                    _ => return Err(Unread::Invalid),
                }
            }
        }
        self.ws();
        match self.i == self.b.len() {
            true => Ok(m),
            false => Err(Unread::Invalid),
        }
    }

    /// A top-level member's name.
    fn member_name(&mut self) -> Step<Member> {
        if self.peek()? != b'"' {
            return Err(Unread::Invalid);
        }
        let start = self.i + 1;
        self.string()?;
        let name = &self.b[start..self.i - 1];
        if name.contains(&b'\\') {
            return Err(Unread::Escaped);
        }
        Ok(match name {
            b"id" => Member::Id,
            b"method" => Member::Method,
            b"params" => Member::Params,
            b"result" => Member::Result,
            b"error" => Member::Error,
            _ => Member::Other,
        })
    }

    /// The string at the cursor (its opening quote), checked: no control character, only
    /// JSON's escapes (`\u` with four hex digits; not decoded, so any code unit).
    fn string(&mut self) -> Step<()> {
        let b = self.b;
        let mut i = self.i + 1;
        loop {
            i += plain_run(&b[i.min(b.len())..]);
            match *b.get(i).ok_or(Unread::Invalid)? {
                b'"' => {
                    self.i = i + 1;
                    return Ok(());
                }
                b'\\' => {
                    i += match *b.get(i + 1).ok_or(Unread::Invalid)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => 2,
                        b'u' => match b.get(i + 2..i + 6) {
                            Some(hex) if hex.iter().all(u8::is_ascii_hexdigit) => 6,
                            _ => return Err(Unread::Invalid),
                        },
                        _ => return Err(Unread::Invalid),
                    }
                }
                // A control character.
                _ => return Err(Unread::Invalid),
            }
        }
    }

    /// Skips the number at the cursor: `-`, then `0` or digits not led by `0`, then an optional
    /// fraction and exponent, each with at least one digit.
    fn number(&mut self) -> Step<()> {
        let b = self.b;
        let digits = |i: usize| {
            b[i.min(b.len())..]
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .count()
        };
        let mut i = self.i + usize::from(b[self.i] == b'-');
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => i += digits(i),
            _ => return Err(Unread::Invalid),
        }
        if b.get(i) == Some(&b'.') {
            let n = digits(i + 1);
            if n == 0 {
                return Err(Unread::Invalid);
            }
            i += 1 + n;
        }
        if let Some(b'e' | b'E') = b.get(i) {
            i += 1;
            if let Some(b'+' | b'-') = b.get(i) {
                i += 1;
            }
            let n = digits(i);
            if n == 0 {
                return Err(Unread::Invalid);
            }
            i += n;
        }
        self.i = i;
        Ok(())
    }

    fn literal(&mut self, word: &[u8]) -> Step<()> {
        match self.b[self.i..].starts_with(word) {
            true => {
                self.i += word.len();
                Ok(())
            }
            false => Err(Unread::Invalid),
        }
    }

    /// Skips one value (any depth, without recursion), checking it.
    fn value(&mut self) -> Step<()> {
        self.stack.clear();
        loop {
            // A value starts here.
            match self.peek()? {
                b'"' => self.string()?,
                b'-' | b'0'..=b'9' => self.number()?,
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                open @ (b'{' | b'[') => {
                    self.i += 1;
                    let object = open == b'{';
                    let close = if object { b'}' } else { b']' };
                    if self.peek()? == close {
                        self.i += 1;
                    } else {
                        self.stack.push(object);
                        if object {
                            self.key()?;
                        }
                        continue;
                    }
                }
                _ => return Err(Unread::Invalid),
            }
            // A value ended: close what it ends, or go on to the next one.
            loop {
                let Some(&object) = self.stack.last() else {
                    return Ok(());
                };
                match (self.peek()?, object) {
                    (b',', _) => {
                        self.i += 1;
                        if object {
                            self.key()?;
                        }
                        break;
                    }
                    (b'}', true) | (b']', false) => {
                        self.i += 1;
                        self.stack.pop();
                    }
                    _ => return Err(Unread::Invalid),
                }
            }
        }
    }

    /// A key and its colon, inside a skipped object.
    fn key(&mut self) -> Step<()> {
        if self.peek()? != b'"' {
            return Err(Unread::Invalid);
        }
        self.string()?;
        self.eat(b':')
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Both readings of `raw`: this reader's, and serde's for a message that is not an array.
    fn agree(raw: &[u8]) {
        let ours = read(raw);
        let first = raw.iter().find(|b| !b.is_ascii_whitespace());
        let serde = match first {
            Some(b'[') => None,
            _ => read_with_serde(raw),
        };
        assert_eq!(ours, serde, "{:?}", String::from_utf8_lossy(raw));
    }

    #[test]
    fn messages_as_serde_reads_them() {
        for raw in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hello"}}}"#,
            r#" {"id" : "a" , "result" : {"content":[{"type":"text","text":"hi \"x\" \u00e9"}],"isError":false} } "#,
            r#"{"id":null,"error":{"code":-32600,"message":"bad"}}"#,
            r#"{"method":null,"id":-0.5e+10,"params":[]}"#,
            r#"{"method":"a","method":"b"}"#,
            r#"{"id":1,"id":2}"#,
            r#"{"id":null,"id":2}"#,
            r#"{"jsonrpc":"2.0","jsonrpc":"1.0","id":1}"#,
            r#"{"\u0069d":7,"method":"ping"}"#,
            r#"{"id":1,"method":"tools\/call"}"#,
            r#"{"method":7}"#,
            r#"{"method":{}}"#,
            r#"{}"#,
            r#"{"a":{"b":[1,2,{"c":[]}]},"id":3}"#,
            r#"{"id":01}"#,
            r#"{"id":1.}"#,
            r#"{"id":1e}"#,
            r#"{"id":-}"#,
            r#"{"id":1,}"#,
            r#"{"id":[1,]}"#,
            r#"{"id":{"a":1,}}"#,
            r#"{"id":{"a"}}"#,
            r#"{"id":{1:2}}"#,
            r#"{"id":"\x"}"#,
            r#"{"id":"\u12g4"}"#,
            r#"{"id":"\ud800"}"#,
            "{\"id\":\"a\tb\"}",
            r#"{"id":tru}"#,
            r#"{"id":nul}"#,
            r#"{"id":1} x"#,
            r#"{"id":1}}"#,
            r#"{"id":1"#,
            r#"{"id""#,
            r#""id""#,
            r#"7"#,
            "",
            "   ",
        ] {
            agree(raw.as_bytes());
        }
        let deep = format!(
            "{{\"id\":1,\"params\":{}{}}}",
            "[".repeat(5000),
            "]".repeat(5000)
        );
        agree(deep.as_bytes());
        assert!(read(deep.as_bytes()).unwrap().params.is_some(), "any depth");
        // Not UTF-8 inside a string serde skips: its reading stands.
        agree(b"{\"x\":\"\xff\",\"id\":1,\"method\":\"ping\"}");
        agree(b"{\"id\":\"\xff\"}");
    }

    #[test]
    fn an_array_is_not_an_envelope() {
        assert!(read_with_serde(br#"[1,"tools/call",{"name":"x"},null,null]"#).is_some());
        assert_eq!(read(br#"[1,"tools/call",{"name":"x"},null,null]"#), None);
    }

    /// JSON-ish text: messages built from pieces that are mostly valid, sometimes not.
    fn piece() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just("fals".to_owned()),
            "-?(0|[1-9][0-9]{0,3}|00|01)(\\.[0-9]{0,2})?([eE][+-]?[0-9]{0,2})?",
            "\"([a-z /]|\\\\[nt\"\\\\/u]|\\\\u[0-9a-fA-F]{4}|\\\\u12|\\\\q|\t|é|\u{1F600})*\"",
        ];
        leaf.prop_recursive(4, 32, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec((key(), inner), 0..4).prop_map(|v| {
                    let members: Vec<String> =
                        v.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
                    format!("{{{}}}", members.join(","))
                }),
            ]
        })
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("\"id\"".to_owned()),
            Just("\"method\"".to_owned()),
            Just("\"params\"".to_owned()),
            Just("\"result\"".to_owned()),
            Just("\"error\"".to_owned()),
            Just("\"jsonrpc\"".to_owned()),
            Just("\"\\u0069d\"".to_owned()),
            Just("\"name\"".to_owned()),
            Just("7".to_owned()),
        ]
    }

    fn message() -> impl Strategy<Value = String> {
        let ws = prop_oneof![Just(""), Just(" "), Just("\n\t "), Just("\r")];
        let method = prop_oneof![
            Just("\"tools/call\"".to_owned()),
            Just("\"tools\\/call\"".to_owned()),
            Just("null".to_owned()),
            Just("3".to_owned()),
        ];
        let member = prop_oneof![
            (key(), piece()).prop_map(|(k, v)| format!("{k}:{v}")),
            method.prop_map(|m| format!("\"method\":{m}")),
        ];
        (
            ws.clone(),
            prop::collection::vec((member, ws.clone()), 0..6),
            ws,
            any::<u8>(),
        )
            .prop_map(|(a, members, b, tail)| {
                let body: Vec<String> = members
                    .into_iter()
                    .map(|(m, w)| format!("{w}{m}{w}"))
                    .collect();
                let mut text = format!("{a}{{{}}}{b}", body.join(","));
                // Now and then a byte cut off or one too many.
                match tail % 16 {
                    0 => {
                        text.pop();
                    }
                    1 => text.push(','),
                    _ => {}
                }
                text
            })
    }

    /// The generated messages are not all rejects: most are envelopes both readings take, so the
    /// property below compares fields, not only failures.
    #[test]
    fn the_generator_makes_envelopes_as_well_as_rejects() {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let (mut read_whole, mut with_tool_call) = (0, 0);
        for _ in 0..1000 {
            let text = message().new_tree(&mut runner).unwrap().current();
            if let Some(m) = read(text.as_bytes()) {
                read_whole += 1;
                with_tool_call += usize::from(m.method.as_deref() == Some("tools/call"));
            }
        }
        assert!(read_whole > 200, "{read_whole} of 1000 read");
        assert!(
            with_tool_call > 50,
            "{with_tool_call} of 1000 with a method"
        );
    }

    proptest! {
        #[test]
        fn the_run_scan_finds_the_first_quote_backslash_or_control(
            bytes in prop::collection::vec(prop_oneof![
                any::<u8>(),
                Just(b'"'),
                Just(b'\\'),
                Just(0x1f),
                Just(0x20),
                Just(b'a'),
            ], 0..40),
        ) {
            let naive = bytes
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
                .unwrap_or(bytes.len());
            prop_assert_eq!(plain_run(&bytes), naive);
        }

        #[test]
        fn the_reader_agrees_with_serde(text in message()) {
            agree(text.as_bytes());
        }

        #[test]
        fn no_bytes_crash_it_and_it_agrees_on_them(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            agree(&bytes);
        }

        #[test]
        fn a_message_cut_anywhere_agrees(text in message(), cut in any::<prop::sample::Index>()) {
            let bytes = text.as_bytes();
            agree(&bytes[..cut.index(bytes.len() + 1)]);
        }
    }
}
