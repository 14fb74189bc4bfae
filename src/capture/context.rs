//! W3C trace context carried in MCP `params._meta` (SEP-414: unprefixed `traceparent`,
//! `tracestate`, `baggage`).

use crate::hex::Case;
use crate::record::TraceIds;
use crate::semconv as sc;
use serde_json::{Map, Value};

/// The parent a `traceparent` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParentContext {
    pub(crate) trace_id: [u8; 16],
    pub(crate) span_id: [u8; 8],
    pub(crate) sampled: bool,
}

/// Parses a W3C `traceparent` (`00-<trace id>-<parent id>-<flags>`). Invalid → `None`.
pub fn parse_traceparent(s: &str) -> Option<ParentContext> {
    let mut parts = s.trim().split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let span = parts.next()?;
    let flags = parts.next()?;
    // Version 00 has exactly four parts; later versions may append more.
    if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    let trace_id: [u8; 16] = crate::hex::decode(trace, Case::Lower)?;
    let span_id: [u8; 8] = crate::hex::decode(span, Case::Lower)?;
    let flags: [u8; 1] = crate::hex::decode(flags, Case::Lower)?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(ParentContext {
        trace_id,
        span_id,
        sampled: flags[0] & 1 == 1,
    })
}

/// Length of a version-00 `traceparent`.
pub(crate) const TRACEPARENT_LEN: usize = 55;

/// The `traceparent` that makes `ids`' span the parent of the next hop, without allocating.
pub(crate) fn traceparent_bytes(ids: &TraceIds) -> [u8; TRACEPARENT_LEN] {
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-01";
    // Trace id hex at 3..35, span id hex at 36..52.
    crate::hex::write(&mut out[3..35], &ids.trace_id);
    crate::hex::write(&mut out[36..52], &ids.span_id);
    out
}

/// The `traceparent` that makes `ids`' span the parent of the next hop.
pub fn format_traceparent(ids: &TraceIds) -> String {
    let bytes = traceparent_bytes(ids);
    // Only ASCII hex digits and dashes.
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Ids for a span whose parent is the `traceparent` in `meta`, or a new root.
pub(crate) fn ids_from_meta(meta: Option<&Map<String, Value>>) -> TraceIds {
    match meta
        .and_then(|m| m.get(sc::META_TRACEPARENT))
        .and_then(Value::as_str)
        .and_then(parse_traceparent)
    {
        Some(p) => TraceIds::child_of(p.trace_id, p.span_id),
        None => TraceIds::random(),
    }
}

/// The client's `io.mcp-otel/user_confirmation` flag: `Some(true/false)`, or `None` if absent.
pub(crate) fn user_confirmation(meta: Option<&Map<String, Value>>) -> Option<bool> {
    meta?.get(sc::META_USER_CONFIRMATION)?.as_bool()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hex::encode as hex;
    use serde_json::json;

    #[test]
    fn traceparent_round_trips_and_rejects_garbage() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let p = parse_traceparent(tp).unwrap();
        assert!(p.sampled);
        let ids = TraceIds {
            trace_id: p.trace_id,
            span_id: p.span_id,
            parent_span_id: [0; 8],
        };
        assert_eq!(format_traceparent(&ids), tp);
        assert_eq!(
            format!("00-{}-{}-01", hex(&ids.trace_id), hex(&ids.span_id)),
            tp
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
    }

    #[test]
    fn meta_parent_becomes_the_parent() {
        let meta = json!({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                          "io.mcp-otel/user_confirmation": true});
        let meta = meta.as_object().unwrap();
        let ids = ids_from_meta(Some(meta));
        assert_eq!(hex(&ids.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&ids.parent_span_id), "00f067aa0ba902b7");
        assert_ne!(ids.span_id, ids.parent_span_id);
        assert_eq!(user_confirmation(Some(meta)), Some(true));
        assert_eq!(user_confirmation(None), None);
        assert!(!ids_from_meta(None).has_parent());
    }
}
