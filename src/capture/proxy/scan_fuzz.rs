//! Fuzzing the relay's JSON-RPC scanning: the stdio line framer ([`super::frame`]) and the
//! `tools/call` scanner with its splice ([`super::inject`]), on arbitrary bytes and on valid
//! calls with a few bytes changed. Bounded like the decoder's (`MCP_OTEL_FUZZ_CASES`).
//!
//! Properties: nothing panics; framing relays exactly the input; a splice only inserts (the
//! original bytes are all there, in order, around one insertion); when the input was JSON, the
//! spliced output is JSON, the call the scanner saw is the call a full parse sees, and the only
//! change is `params._meta.traceparent`.

use super::frame::{LineFramer, Piece};
use super::inject::{first_tools_call, plan_call};
use crate::capture::context::format_traceparent;
use crate::collect::decode_fuzz::{cases, edits, interesting_byte, mutate};
use crate::record::TraceIds;
use proptest::prelude::*;
use serde_json::{Value, json};

/// Valid calls in the spellings clients use.
fn valid_call() -> impl Strategy<Value = String> {
    let id = prop_oneof![
        any::<u32>().prop_map(|n| json!(n)),
        "[a-z0-9-]{0,8}".prop_map(Value::String)
    ];
    let meta = prop_oneof![
        Just(None),
        Just(Some(json!({}))),
        Just(Some(json!({"progressToken": 3}))),
        Just(Some(
            json!({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"})
        )),
    ];
    let arguments = crate::record::tests_support::arb_json();
    (
        id,
        "[a-z_]{1,12}",
        prop::option::of(arguments),
        meta,
        any::<bool>(),
    )
        .prop_map(|(id, name, arguments, meta, pretty)| {
            let mut params = json!({ "name": name });
            if let Some(a) = arguments {
                params["arguments"] = a;
            }
            if let Some(m) = meta {
                params["_meta"] = m;
            }
            let call =
                json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params});
            if pretty {
                serde_json::to_string_pretty(&call)
                    .unwrap()
                    .replace('\n', " ")
            } else {
                call.to_string()
            }
        })
}

/// The scanner on one line: whatever it makes of it must hold up against a full parse.
fn check_line(line: &[u8]) -> Result<(), TestCaseError> {
    let _ = first_tools_call(line);
    let Some(plan) = plan_call(line, true) else {
        return Ok(());
    };
    let parsed: Option<Value> = serde_json::from_slice(line).ok();
    if let Some(v) = &parsed {
        // What the scanner recognised is what a parser reads.
        prop_assert_eq!(&v["method"], "tools/call");
        let id: Value = serde_json::from_str(plan.id.as_str())
            .map_err(|e| TestCaseError::fail(format!("id {:?}: {e}", plan.id)))?;
        prop_assert_eq!(&id, &v["id"]);
        prop_assert_eq!(v["params"]["name"].as_str(), Some(plan.tool.as_ref()));
        prop_assert_eq!(plan.arguments(), v["params"].get("arguments").cloned());
    }
    let Some(splice) = &plan.splice else {
        return Ok(());
    };
    let out = splice.apply(line);
    // Only an insertion: the common prefix and suffix cover the whole original.
    let prefix = out.iter().zip(line).take_while(|(a, b)| a == b).count();
    let suffix = out
        .iter()
        .rev()
        .zip(line.iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    prop_assert!(out.len() > line.len());
    prop_assert!(
        prefix + suffix >= line.len(),
        "the splice changed more than it inserted:\n{}\n{}",
        String::from_utf8_lossy(line),
        String::from_utf8_lossy(&out)
    );
    if let Some(call) = parsed {
        let got: Value = serde_json::from_slice(&out).map_err(|e| {
            TestCaseError::fail(format!(
                "valid JSON in, invalid out ({e}):\n{}\n{}",
                String::from_utf8_lossy(line),
                String::from_utf8_lossy(&out)
            ))
        })?;
        prop_assert_eq!(got, with_traceparent(call, &plan.ids));
    }
    Ok(())
}

/// `call` as a splice of `ids` should leave it: `params._meta.traceparent` set, and `_meta`
/// made when the call had none. Nothing else changes.
pub(super) fn with_traceparent(mut call: Value, ids: &TraceIds) -> Value {
    let tp = json!(format_traceparent(ids));
    match call["params"].get_mut("_meta") {
        Some(Value::Object(m)) => {
            m.insert("traceparent".into(), tp);
        }
        _ => call["params"]["_meta"] = json!({ "traceparent": tp }),
    }
    call
}

/// Frames `data` cut at `cuts` with `max`; returns the relayed bytes and the complete lines.
fn frame(data: &[u8], cuts: &[usize], max: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    cuts.sort();
    let mut f = LineFramer::new(max);
    let (mut relayed, mut lines) = (Vec::new(), Vec::new());
    let mut take = |p: Piece<'_>| -> Result<(), ()> {
        match p {
            Piece::Lines(b) => {
                relayed.extend_from_slice(b);
                lines.extend(b.split_inclusive(|&c| c == b'\n').map(<[u8]>::to_vec));
            }
            Piece::Raw(b, _) => relayed.extend_from_slice(b),
        }
        Ok(())
    };
    let mut prev = 0;
    for c in cuts.into_iter().chain([data.len()]) {
        f.push(&data[prev..c], &mut take).unwrap();
        prev = c;
    }
    f.finish(&mut take).unwrap();
    (relayed, lines)
}

proptest! {
    #![proptest_config(cases(2000))]

    /// Arbitrary bytes as one message.
    #[test]
    fn arbitrary_lines(line in prop::collection::vec(interesting_byte(), 0..300)) {
        check_line(&line)?;
        let mut with_call = b"{\"method\":\"tools/call\",".to_vec();
        with_call.extend_from_slice(&line);
        check_line(&with_call)?;
    }

    /// Valid calls with a few bytes changed.
    #[test]
    fn mutated_calls(call in valid_call(), edits in edits()) {
        check_line(call.as_bytes())?;
        check_line(&mutate(call.into_bytes(), &edits))?;
    }
}

proptest! {
    #![proptest_config(cases(500))]

    /// A stream of valid, mutated and garbage lines, read in arbitrary pieces: the relay
    /// forwards exactly what it read, every complete line ends in a newline, and every line
    /// it hands to the scanner holds up.
    #[test]
    fn streams(
        lines in prop::collection::vec(
            prop_oneof![
                valid_call().prop_map(String::into_bytes),
                (valid_call(), edits()).prop_map(|(c, e)| mutate(c.into_bytes(), &e)),
                prop::collection::vec(interesting_byte(), 0..80),
            ],
            0..8,
        ),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        max in prop_oneof![1usize..64, Just(1 << 20)],
    ) {
        let data: Vec<u8> = lines.iter().flat_map(|l| l.iter().copied().chain([b'\n'])).collect();
        let (relayed, complete) = frame(&data, &cuts, max);
        prop_assert_eq!(&relayed, &data);
        for line in &complete {
            prop_assert_eq!(line.last(), Some(&b'\n'));
            check_line(line.strip_suffix(b"\n").unwrap_or(line))?;
        }
    }
}
