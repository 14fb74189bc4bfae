//! The one rewrite the proxy makes: `traceparent` spliced into a forwarded `tools/call`'s
//! `params._meta`, so the server's own spans (if any) continue the proxy's trace.
//!
//! The splice inserts text into the original bytes at one position and changes nothing else:
//! key order, whitespace, escapes and number spellings of the client's message survive.

use crate::capture::context::{format_traceparent, parse_traceparent};
use crate::record::TraceIds;
use crate::semconv as sc;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::HashMap;

/// A `tools/call` request as the relay sees it before forwarding it.
#[derive(Debug)]
pub struct CallPlan {
    /// The JSON-RPC id as its JSON text (`7`, `"a"`).
    pub id: String,
    pub tool: String,
    pub arguments: Option<serde_json::Value>,
    /// `params._meta` as given (without our injection).
    pub meta: Option<serde_json::Map<String, serde_json::Value>>,
    /// The proxy span's ids: a child of the client's `traceparent`, or a new root.
    pub ids: TraceIds,
    /// Where to insert what, when the message gets a `traceparent`.
    pub splice: Option<(usize, String)>,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Option<&'a RawValue>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
}

fn offset_in(outer: &str, inner: &str) -> usize {
    inner.as_ptr() as usize - outer.as_ptr() as usize
}

/// Is the JSON object text `{…}` empty?
fn object_is_empty(raw: &str) -> bool {
    raw[1..].trim_start().starts_with('}')
}

/// Parses `line` as a `tools/call` request; `None` for anything else (left untouched).
/// With `inject`, a call without a `traceparent` gets a splice that adds one.
pub fn plan_call(line: &[u8], inject: bool) -> Option<CallPlan> {
    let text = std::str::from_utf8(line).ok()?;
    let env: Envelope = serde_json::from_str(text).ok()?;
    let method: &str = serde_json::from_str(env.method?.get()).ok()?;
    if method != "tools/call" {
        return None;
    }
    let id = env.id?.get().trim();
    if id == "null" {
        return None;
    }
    let params = env.params?;
    let fields: HashMap<String, &RawValue> = serde_json::from_str(params.get()).ok()?;
    let tool: String = serde_json::from_str(fields.get("name")?.get()).ok()?;
    let arguments = fields
        .get("arguments")
        .and_then(|a| serde_json::from_str(a.get()).ok());
    let meta_raw = fields.get("_meta");
    let meta: Option<serde_json::Map<String, serde_json::Value>> =
        meta_raw.and_then(|m| serde_json::from_str(m.get()).ok());
    let client_parent = meta
        .as_ref()
        .and_then(|m| m.get(sc::META_TRACEPARENT))
        .and_then(|v| v.as_str())
        .and_then(parse_traceparent);
    let ids = match client_parent {
        Some(p) => TraceIds::child_of(p.trace_id, p.span_id),
        None => TraceIds::random(),
    };
    let has_traceparent = meta
        .as_ref()
        .is_some_and(|m| m.contains_key(sc::META_TRACEPARENT));
    let splice = if inject && !has_traceparent {
        let tp = format_traceparent(&ids);
        match meta_raw {
            Some(m) => {
                let raw = m.get();
                // `_meta` that is not an object (null, garbage) is the client's business.
                meta.as_ref().map(|_| {
                    let comma = if object_is_empty(raw) { "" } else { "," };
                    (
                        offset_in(text, raw) + 1,
                        format!("\"{}\":\"{tp}\"{comma}", sc::META_TRACEPARENT),
                    )
                })
            }
            None => {
                let raw = params.get();
                let comma = if object_is_empty(raw) { "" } else { "," };
                Some((
                    offset_in(text, raw) + 1,
                    format!("\"_meta\":{{\"{}\":\"{tp}\"}}{comma}", sc::META_TRACEPARENT),
                ))
            }
        }
    } else {
        None
    };
    Some(CallPlan {
        id: id.to_owned(),
        tool,
        arguments,
        meta,
        ids,
        splice,
    })
}

/// `line` with `insert` placed at byte `at`.
pub fn apply_splice(line: &[u8], at: usize, insert: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(line.len() + insert.len());
    out.extend_from_slice(&line[..at]);
    out.extend_from_slice(insert.as_bytes());
    out.extend_from_slice(&line[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn injected(line: &str) -> (CallPlan, String) {
        let plan = plan_call(line.as_bytes(), true).expect("a tools/call");
        let (at, text) = plan.splice.clone().expect("a splice");
        let out = String::from_utf8(apply_splice(line.as_bytes(), at, &text)).unwrap();
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
        assert_eq!(plan.id, "7");
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
        assert_eq!(plan.id, "\"a\"");

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
            crate::record::hex(&plan.ids.parent_span_id),
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
}
