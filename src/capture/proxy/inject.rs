//! The one rewrite the proxy makes: `traceparent` spliced into a forwarded `tools/call`'s
//! `params._meta`, so the server's own spans (if any) continue the proxy's trace.
//!
//! The splice inserts text into the original bytes at one position and changes nothing else:
//! key order, whitespace, escapes and number spellings of the client's message survive.

use crate::capture::context::{TRACEPARENT_LEN, parse_traceparent, traceparent_bytes};
use crate::record::TraceIds;
use crate::semconv as sc;
use memchr::memmem::Finder;
use std::borrow::Cow;
use std::sync::LazyLock;

static TOOLS_CALL: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"tools/call"));

/// Where `bytes` first mentions `tools/call`: the cheap test before [`plan_call`].
pub(crate) fn first_tools_call(bytes: &[u8]) -> Option<usize> {
    TOOLS_CALL.find(bytes)
}

/// A JSON-RPC id as its JSON text (`7`, `"a"`), stored inline when short so that the relay
/// path does not allocate for it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum IdText {
    Inline { len: u8, buf: [u8; 22] },
    Heap(Box<str>),
}

impl IdText {
    pub(crate) fn new(text: &str) -> Self {
        let mut buf = [0u8; 22];
        match buf.get_mut(..text.len()) {
            Some(slot) => {
                slot.copy_from_slice(text.as_bytes());
                IdText::Inline {
                    len: text.len() as u8,
                    buf,
                }
            }
            None => IdText::Heap(text.into()),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            // Built from a `&str` cut at a char boundary.
            IdText::Inline { len, buf } => {
                std::str::from_utf8(&buf[..usize::from(*len)]).unwrap_or_default()
            }
            IdText::Heap(s) => s,
        }
    }
}

impl std::fmt::Debug for IdText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

impl PartialEq<str> for IdText {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

/// A `tools/call` request as the relay sees it before forwarding it. It borrows the message:
/// the arguments and `_meta` are parsed only when a before-state read needs them.
#[derive(Debug)]
pub struct CallPlan<'a> {
    /// The JSON-RPC id as its JSON text (`7`, `"a"`).
    pub(crate) id: IdText,
    pub(crate) tool: Cow<'a, str>,
    arguments: Option<&'a [u8]>,
    meta: Option<&'a [u8]>,
    /// The proxy span's ids: a child of the client's `traceparent`, or a new root.
    pub(crate) ids: TraceIds,
    /// Where the message gets a `traceparent`, when it does.
    pub splice: Option<Splice>,
}

impl CallPlan<'_> {
    /// `params.arguments`, parsed.
    pub(crate) fn arguments(&self) -> Option<serde_json::Value> {
        self.arguments.and_then(|a| serde_json::from_slice(a).ok())
    }

    /// `params._meta` as given (without our injection), parsed.
    pub(crate) fn meta(&self) -> Option<serde_json::Map<String, serde_json::Value>> {
        self.meta.and_then(|m| serde_json::from_slice(m).ok())
    }
}

/// The one rewrite: text inserted at one byte offset of the original message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Splice {
    /// Byte offset just after the `{` of `params` or of `params._meta`.
    at: usize,
    /// Into an existing `_meta` object (else a new `_meta` member of `params`).
    into_meta: bool,
    /// The object had members, so the inserted one needs a comma after it.
    comma: bool,
    traceparent: [u8; TRACEPARENT_LEN],
}

impl Splice {
    /// Appends `line` with the `traceparent` spliced in to `out`.
    pub(crate) fn write(&self, line: &[u8], out: &mut Vec<u8>) {
        out.reserve(line.len() + TRACEPARENT_LEN + 32);
        out.extend_from_slice(&line[..self.at]);
        if !self.into_meta {
            out.extend_from_slice(b"\"_meta\":{");
        }
        out.push(b'"');
        out.extend_from_slice(sc::META_TRACEPARENT.as_bytes());
        out.extend_from_slice(b"\":\"");
        out.extend_from_slice(&self.traceparent);
        out.push(b'"');
        if !self.into_meta {
            out.push(b'}');
        }
        if self.comma {
            out.push(b',');
        }
        out.extend_from_slice(&line[self.at..]);
    }

    /// `line` with the `traceparent` spliced in.
    pub fn apply(&self, line: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(line, &mut out);
        out
    }
}

/// A forward-only scanner that finds where JSON values start and end without building them.
/// It checks structure only as far as the relay needs: anything it does not understand ends
/// the plan (`None`), and the message is then forwarded untouched.
struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        self.ws();
        (self.b.get(self.i) == Some(&byte)).then(|| self.i += 1)
    }

    /// A string starting at the cursor: the bytes between its quotes (escapes left as they
    /// are) and whether it has any escape.
    fn string(&mut self) -> Option<(&'a [u8], bool)> {
        self.eat(b'"')?;
        let (b, start) = (self.b, self.i);
        let mut i = start;
        let mut escaped = false;
        loop {
            match *b.get(i)? {
                b'"' => {
                    self.i = i + 1;
                    return Some((&b[start..i], escaped));
                }
                b'\\' => {
                    escaped = true;
                    i += 2;
                }
                // Keys and names are short; a long string is skipped with memchr.
                _ if i - start >= 16 => i += memchr::memchr2(b'"', b'\\', &b[i..])?,
                _ => i += 1,
            }
        }
    }

    /// Skips one value and returns its text.
    fn value(&mut self) -> Option<&'a [u8]> {
        self.ws();
        let start = self.i;
        match *self.b.get(self.i)? {
            b'"' => {
                self.string()?;
            }
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match *self.b.get(self.i)? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.i += 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
            }
            _ => {
                let len = self.b[start..]
                    .iter()
                    .position(|c| matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                    .unwrap_or(self.b.len() - start);
                if len == 0 {
                    return None;
                }
                self.i += len;
            }
        }
        Some(&self.b[start..self.i])
    }

    /// Walks the members of the object at the cursor, calling `member(key, value)` for each
    /// (the key as written, without quotes). Returns the offset just after its `{` and whether
    /// it has members.
    fn object(
        &mut self,
        mut member: impl FnMut(&'a [u8], bool, &'a [u8]) -> Option<()>,
    ) -> Option<(usize, bool)> {
        self.eat(b'{')?;
        let open = self.i;
        if self.eat(b'}').is_some() {
            return Some((open, false));
        }
        loop {
            let (key, escaped) = self.string()?;
            self.eat(b':')?;
            let value = self.value()?;
            member(key, escaped, value)?;
            if self.eat(b',').is_none() {
                self.eat(b'}')?;
                return Some((open, true));
            }
        }
    }
}

/// Sets `slot` once; a key given twice ends the plan, as it ends serde's parse of the message.
fn once<'a>(slot: &mut Option<&'a [u8]>, value: &'a [u8]) -> Option<()> {
    slot.replace(value).is_none().then_some(())
}

fn as_str(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes).ok()
}

/// The members of `params` the plan needs.
#[derive(Default)]
struct ParamsScan<'a> {
    name: Option<&'a [u8]>,
    arguments: Option<&'a [u8]>,
    meta: Option<&'a [u8]>,
}

/// Parses `line` as a `tools/call` request; `None` for anything else (left untouched).
/// With `inject`, a call without a `traceparent` gets a splice that adds one.
///
/// This runs on the relay path, so it scans the envelope and `params`' top level without
/// building values or allocating and borrows everything else. What it does not recognise
/// ends the plan: a member name spelled with escapes at the top level of `params` or `_meta`
/// (it could spell `_meta` or `traceparent`), or `"tools\/call"`. Such a call is relayed
/// untouched: no injection, no before-state read; the observer still records it. Scalars are
/// not validated and only the parts it reads are checked for UTF-8: a message that is not JSON
/// may still be spliced, and stays as invalid as it was (the observer parses it fully).
pub fn plan_call(line: &[u8], inject: bool) -> Option<CallPlan<'_>> {
    let (mut id, mut method, mut params) = (None, None, None);
    let mut top = Scan { b: line, i: 0 };
    top.object(|key, escaped, value| match (key, escaped) {
        (b"id", false) => once(&mut id, value),
        (b"method", false) => once(&mut method, value),
        (b"params", false) => once(&mut params, value),
        _ => Some(()),
    })?;
    top.ws();
    if top.i != line.len() {
        return None;
    }
    if method? != br#""tools/call""# {
        return None;
    }
    let id = as_str(id?)?;
    if id == "null" {
        return None;
    }
    let params = params?;
    let params_at = params.as_ptr() as usize - line.as_ptr() as usize;
    let mut p = ParamsScan::default();
    let mut scan = Scan {
        b: line,
        i: params_at,
    };
    let (params_open, params_full) = scan.object(|key, escaped, value| match (key, escaped) {
        (b"name", false) => once(&mut p.name, value),
        (b"arguments", false) => once(&mut p.arguments, value),
        (b"_meta", false) => once(&mut p.meta, value),
        // `"\u005fmeta"` is `_meta` too: never risk a second one.
        (_, true) => None,
        _ => Some(()),
    })?;
    let tool = match (Scan { b: p.name?, i: 0 }).string()? {
        (raw, false) => Cow::Borrowed(as_str(raw)?),
        (_, true) => Cow::Owned(serde_json::from_slice::<String>(p.name?).ok()?),
    };
    // `traceparent` present (valid or not) means the client set its context: leave it.
    let mut traceparent = None;
    let meta_object = match p.meta {
        Some(m) if m.first() == Some(&b'{') => {
            let meta_at = m.as_ptr() as usize - line.as_ptr() as usize;
            let mut scan = Scan {
                b: line,
                i: meta_at,
            };
            Some(scan.object(|key, escaped, value| {
                if escaped {
                    // Could spell `traceparent`: never risk a second one.
                    None
                } else if key == sc::META_TRACEPARENT.as_bytes() {
                    once(&mut traceparent, value)
                } else {
                    Some(())
                }
            })?)
        }
        _ => None,
    };
    let client_parent = traceparent
        .and_then(|t| Scan { b: t, i: 0 }.string())
        .and_then(|(raw, escaped)| if escaped { None } else { as_str(raw) })
        .and_then(parse_traceparent);
    let ids = match client_parent {
        Some(p) => TraceIds::child_of(p.trace_id, p.span_id),
        None => TraceIds::random(),
    };
    let splice = match (inject && traceparent.is_none(), p.meta, meta_object) {
        (false, _, _) => None,
        (true, None, None) => Some(Splice {
            at: params_open,
            into_meta: false,
            comma: params_full,
            traceparent: traceparent_bytes(&ids),
        }),
        (true, Some(_), Some((meta_open, meta_full))) => Some(Splice {
            at: meta_open,
            into_meta: true,
            comma: meta_full,
            traceparent: traceparent_bytes(&ids),
        }),
        // `_meta` that is not an object (null, garbage) is the client's business.
        _ => None,
    };
    Some(CallPlan {
        id: IdText::new(id),
        tool,
        arguments: p.arguments,
        meta: p.meta,
        ids,
        splice,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::context::format_traceparent;
    use crate::capture::proxy::scan_fuzz::with_traceparent;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn injected(line: &str) -> (CallPlan<'_>, String) {
        let plan = plan_call(line.as_bytes(), true).expect("a tools/call");
        let splice = plan.splice.clone().expect("a splice");
        let out = String::from_utf8(splice.apply(line.as_bytes())).unwrap();
        (plan, out)
    }

    #[test]
    fn splice_changes_only_the_meta() {
        let line = r#"{"jsonrpc":"2.0", "id":7,"method":"tools/call","params":{ "name":"x","arguments":{"n":1.50}}}"#;
        let (plan, out) = injected(line);
        let tp = format_traceparent(&plan.ids);
        assert_eq!(
            out,
            format!(
                r#"{{"jsonrpc":"2.0", "id":7,"method":"tools/call","params":{{"_meta":{{"traceparent":"{tp}"}}, "name":"x","arguments":{{"n":1.50}}}}}}"#
            )
        );
        assert_eq!(plan.id, *"7");
        assert_eq!(plan.tool, "x");
        assert!(!plan.ids.has_parent());

        let line = r#"{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"x","_meta":{"progressToken":3}}}"#;
        let (plan, out) = injected(line);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["params"]["_meta"]["progressToken"], 3);
        assert_eq!(
            v["params"]["_meta"]["traceparent"],
            json!(format_traceparent(&plan.ids))
        );
        assert_eq!(plan.id, *"\"a\"");

        let line =
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","_meta":{ }}}"#;
        let (_, out) = injected(line);
        assert!(serde_json::from_str::<Value>(&out).is_ok(), "{out}");
    }

    #[test]
    fn a_client_traceparent_is_kept_and_becomes_the_parent() {
        let line = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","_meta":{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}}}"#;
        let plan = plan_call(line.as_bytes(), true).unwrap();
        assert!(plan.splice.is_none());
        assert_eq!(plan.ids.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            crate::hex::encode(&plan.ids.parent_span_id),
            "00f067aa0ba902b7"
        );
    }

    #[test]
    fn other_messages_are_left_alone() {
        for line in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
            r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"x"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","_meta":null}}"#,
            "not json tools/call",
            "[{\"method\":\"tools/call\"}]",
        ] {
            let plan = plan_call(line.as_bytes(), true);
            assert!(plan.is_none_or(|p| p.splice.is_none()), "{line}");
        }
        let quiet = plan_call(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}"#,
            false,
        )
        .unwrap();
        assert!(quiet.splice.is_none());
    }

    /// Any JSON value, with strings that need escapes.
    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            (-1e9f64..1e9).prop_map(|f| json!(f)),
            "[a-z\"\\\\\n\u{e9}{}\\[\\],:]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z_{}\"]{1,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A `tools/call` request, sometimes not quite one.
    fn arb_call() -> impl Strategy<Value = Value> {
        let meta = prop_oneof![
            Just(None),
            Just(Some(Value::Null)),
            Just(Some(json!({}))),
            arb_json().prop_map(|v| Some(json!({"progressToken": v}))),
            Just(Some(
                json!({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"})
            )),
            Just(Some(json!({"traceparent": 7, "x": [1]}))),
        ];
        let id = prop_oneof![
            Just(Value::Null),
            any::<u32>().prop_map(|n| json!(n)),
            "[a-z\"]{0,5}".prop_map(Value::String)
        ];
        let name = prop_oneof![
            "[a-z_\"\\\\/]{1,10}".prop_map(Value::String),
            Just(json!(5)),
        ];
        let method = prop_oneof![4 => Just("tools/call"), 1 => Just("tools/list")];
        (
            id,
            method,
            name,
            prop::option::of(arb_json()),
            meta,
            prop::option::of(arb_json()),
        )
            .prop_map(|(id, method, name, arguments, meta, extra)| {
                let mut params = serde_json::Map::new();
                params.insert("name".into(), name);
                if let Some(a) = arguments {
                    params.insert("arguments".into(), a);
                }
                if let Some(m) = meta {
                    params.insert("_meta".into(), m);
                }
                if let Some(x) = extra {
                    params.insert("extra".into(), x);
                }
                json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
            })
    }

    proptest! {
        /// The scanner agrees with a full parse: same calls recognised, same id and tool, and
        /// the spliced message is the original plus exactly `_meta.traceparent`.
        #[test]
        fn plan_agrees_with_a_full_parse(call in arb_call(), pretty in any::<bool>()) {
            let line = if pretty {
                serde_json::to_string_pretty(&call).unwrap().replace('\n', " ")
            } else {
                serde_json::to_string(&call).unwrap()
            };
            let params = &call["params"];
            let is_call = call["method"] == "tools/call"
                && !call["id"].is_null()
                && params["name"].is_string();
            let plan = plan_call(line.as_bytes(), true);
            prop_assert_eq!(plan.is_some(), is_call, "{}", line);
            let Some(plan) = plan else { return Ok(()) };
            prop_assert_eq!(plan.id.as_str(), serde_json::to_string(&call["id"]).unwrap());
            prop_assert_eq!(plan.tool.as_ref(), params["name"].as_str().unwrap());
            prop_assert_eq!(plan.arguments(), params.get("arguments").cloned());
            let meta = params.get("_meta");
            let wants_splice = match meta {
                None => true,
                Some(Value::Object(m)) => !m.contains_key("traceparent"),
                Some(_) => false,
            };
            prop_assert_eq!(plan.splice.is_some(), wants_splice, "{}", line);
            if let Some(splice) = &plan.splice {
                let out: Value = serde_json::from_slice(&splice.apply(line.as_bytes()))
                    .map_err(|e| TestCaseError::fail(format!("{e}: {line}")))?;
                prop_assert_eq!(out, with_traceparent(call.clone(), &plan.ids));
            }
        }

        /// Whatever the bytes, planning never panics and a splice keeps valid JSON valid.
        #[test]
        fn plan_survives_garbage(bytes in prop::collection::vec(any::<u8>(), 0..200), cut in 0usize..200) {
            let mut line = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","_meta":{"a":[1,{"b":"}"}]}}}"#.to_vec();
            let cut = cut.min(line.len());
            line.truncate(cut);
            line.extend_from_slice(&bytes);
            if let Some(splice) = plan_call(&line, true).and_then(|p| p.splice) {
                let out = splice.apply(&line);
                if serde_json::from_slice::<Value>(&line).is_ok() {
                    prop_assert!(serde_json::from_slice::<Value>(&out).is_ok());
                }
            }
        }
    }
}
