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
use std::borrow::Cow;

/// A `tools/call` request as the relay sees it before forwarding it. It borrows the message:
/// the arguments and `_meta` are parsed only when a before-state read needs them.
#[derive(Debug)]
pub struct CallPlan<'a> {
    /// The JSON-RPC id as its JSON text (`7`, `"a"`).
    pub id: String,
    pub tool: Cow<'a, str>,
    arguments: Option<&'a RawValue>,
    meta: Option<&'a RawValue>,
    /// The proxy span's ids: a child of the client's `traceparent`, or a new root.
    pub ids: TraceIds,
    /// Where to insert what, when the message gets a `traceparent`.
    pub splice: Option<(usize, String)>,
}

impl CallPlan<'_> {
    /// `params.arguments`, parsed.
    pub fn arguments(&self) -> Option<serde_json::Value> {
        self.arguments
            .and_then(|a| serde_json::from_str(a.get()).ok())
    }

    /// `params._meta` as given (without our injection), parsed.
    pub fn meta(&self) -> Option<serde_json::Map<String, serde_json::Value>> {
        self.meta.and_then(|m| serde_json::from_str(m.get()).ok())
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Params<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    arguments: Option<&'a RawValue>,
    #[serde(borrow, rename = "_meta")]
    meta: Option<&'a RawValue>,
}

/// Just the trace context keys of `_meta`.
#[derive(Deserialize)]
struct TraceMeta<'a> {
    #[serde(borrow)]
    traceparent: Option<&'a RawValue>,
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
///
/// This runs on the relay path, so it parses only the envelope and `params`' top level and
/// borrows everything else.
pub fn plan_call(line: &[u8], inject: bool) -> Option<CallPlan<'_>> {
    let text = std::str::from_utf8(line).ok()?;
    let env: Envelope = serde_json::from_str(text).ok()?;
    if env.method? != "tools/call" {
        return None;
    }
    let id = env.id?.get().trim();
    if id == "null" {
        return None;
    }
    let params_raw = env.params?;
    let params: Params = serde_json::from_str(params_raw.get()).ok()?;
    let meta_raw = params.meta.map(RawValue::get);
    let meta_is_object = meta_raw.is_some_and(|m| m.starts_with('{'));
    // `traceparent` present (valid or not) means the client set its context: leave it.
    let traceparent = match meta_raw {
        Some(m)
            if meta_is_object && memchr::memmem::find(m.as_bytes(), b"traceparent").is_some() =>
        {
            serde_json::from_str::<TraceMeta>(m)
                .ok()
                .and_then(|t| t.traceparent)
        }
        _ => None,
    };
    let client_parent = traceparent
        .and_then(|t| serde_json::from_str::<&str>(t.get()).ok())
        .and_then(parse_traceparent);
    let ids = match client_parent {
        Some(p) => TraceIds::child_of(p.trace_id, p.span_id),
        None => TraceIds::random(),
    };
    let splice = if inject && traceparent.is_none() {
        let tp = format_traceparent(&ids);
        match meta_raw {
            // `_meta` that is not an object (null, garbage) is the client's business.
            Some(_) if !meta_is_object => None,
            Some(m) => {
                let comma = if object_is_empty(m) { "" } else { "," };
                Some((
                    offset_in(text, m) + 1,
                    format!("\"{}\":\"{tp}\"{comma}", sc::META_TRACEPARENT),
                ))
            }
            None => {
                let raw = params_raw.get();
                // `"_meta": null` reads as absent: never add a second `_meta`.
                let has_meta_key = memchr::memmem::find(raw.as_bytes(), b"\"_meta\"").is_some();
                (raw.starts_with('{') && !has_meta_key).then(|| {
                    let comma = if object_is_empty(raw) { "" } else { "," };
                    (
                        offset_in(text, raw) + 1,
                        format!("\"_meta\":{{\"{}\":\"{tp}\"}}{comma}", sc::META_TRACEPARENT),
                    )
                })
            }
        }
    } else {
        None
    };
    Some(CallPlan {
        id: id.to_owned(),
        tool: params.name,
        arguments: params.arguments,
        meta: params.meta,
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

    fn injected(line: &str) -> (CallPlan<'_>, String) {
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
