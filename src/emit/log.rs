//! ToolCall → one structured JSON log line, with exactly the seed's flat field names.
//!
//! ```json
//! {"tool_name":"list_tasks","user":"alice","timestamp":"2026-11-23T10:00:00.123Z",
//!  "status":"success","duration_ms":245,"error_code":null,"project_id":"p1","filters":{…}}
//! ```
//!
//! Context fields (the call's redacted arguments) sit at the top level as in the seed's example;
//! one that would collide with a seed field is kept under `context` instead, so nothing is lost
//! and no seed field is overwritten. Writes add `operation_type`, `resource_id`, `before_state`,
//! `after_state` and `user_confirmation` (`null` when unknown); a call the confirmation gate (or
//! a confirmation flag) concerned adds `confirmation_outcome`, `confirmation_source`,
//! `confirmation_arguments_digest` and `confirmation_wait_ms`.

use crate::record::ToolCall;
use serde::Serializer;
use serde::ser::SerializeMap;
use serde_json::{Map, Value};
use std::io::{self, Write};

/// The seed's fields, which a context field may not overwrite.
pub const SEED_FIELDS: &[&str] = &[
    "tool_name",
    "user",
    "timestamp",
    "status",
    "duration_ms",
    "error_code",
    "operation_type",
    "resource_id",
    "before_state",
    "after_state",
    "user_confirmation",
    "confirmation_outcome",
    "confirmation_source",
    "confirmation_arguments_digest",
    "confirmation_wait_ms",
    "trace_id",
    "span_id",
    "context",
];

/// Writes the call as one JSON object followed by `\n`.
pub fn write_line<W: Write>(out: &mut W, call: &ToolCall) -> io::Result<()> {
    let mut ser = serde_json::Serializer::new(&mut *out);
    let mut map = ser.serialize_map(None).map_err(io::Error::other)?;
    entries(&mut map, call).map_err(io::Error::other)?;
    map.end().map_err(io::Error::other)?;
    out.write_all(b"\n")
}

/// The call as a JSON line (without the newline), for tests and small uses.
pub fn to_line(call: &ToolCall) -> String {
    let mut buf = Vec::with_capacity(256);
    write_line(&mut buf, call).expect("writing to a Vec cannot fail");
    buf.pop();
    String::from_utf8(buf).expect("serde_json writes UTF-8")
}

fn duration_value(ms: f64) -> Value {
    if ms.fract() == 0.0 && ms >= 0.0 && ms < u64::MAX as f64 {
        Value::from(ms as u64)
    } else {
        Value::from((ms * 1000.0).round() / 1000.0)
    }
}

fn entries<M: SerializeMap>(map: &mut M, call: &ToolCall) -> Result<(), M::Error> {
    map.serialize_entry("tool_name", &call.tool_name)?;
    map.serialize_entry("user", &call.user)?;
    map.serialize_entry("timestamp", &call.timestamp_rfc3339())?;
    map.serialize_entry("status", call.status.as_str())?;
    map.serialize_entry("duration_ms", &duration_value(call.duration_ms))?;
    map.serialize_entry("error_code", &call.error_code)?;
    let mut colliding = Map::new();
    if let Some(Value::Object(ctx)) = &call.context {
        for (k, v) in ctx {
            if SEED_FIELDS.contains(&k.as_str()) {
                colliding.insert(k.clone(), v.clone());
            } else {
                map.serialize_entry(k, v)?;
            }
        }
    } else if let Some(other) = &call.context {
        colliding.insert("value".to_owned(), other.clone());
    }
    if !colliding.is_empty() {
        map.serialize_entry("context", &colliding)?;
    }
    if let Some(w) = &call.write {
        map.serialize_entry("operation_type", &w.operation_type.map(|o| o.as_str()))?;
        map.serialize_entry("resource_id", &w.resource_id)?;
        map.serialize_entry("before_state", &w.before_state)?;
        map.serialize_entry("after_state", &w.after_state)?;
        map.serialize_entry("user_confirmation", &w.user_confirmation)?;
    }
    if let Some(c) = &call.confirmation {
        map.serialize_entry("confirmation_outcome", c.outcome.as_str())?;
        map.serialize_entry("confirmation_source", &c.source.map(|s| s.as_str()))?;
        map.serialize_entry("confirmation_arguments_digest", &c.arguments_digest)?;
        map.serialize_entry("confirmation_wait_ms", &c.wait_ms.map(duration_value))?;
    }
    map.serialize_entry("trace_id", &Hex::<32>::of(&call.ids.trace_id))?;
    map.serialize_entry("span_id", &Hex::<16>::of(&call.ids.span_id))?;
    Ok(())
}

/// An id's `N` hex digits on the stack: the line is written without a `String` per id.
struct Hex<const N: usize>([u8; N]);

impl<const N: usize> Hex<N> {
    fn of(bytes: &[u8]) -> Self {
        let mut out = [0u8; N];
        crate::hex::write(&mut out, bytes);
        Hex(out)
    }
}

impl<const N: usize> serde::Serialize for Hex<N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(std::str::from_utf8(&self.0).expect("hex digits are ASCII"))
    }
}

/// An in-memory log sink: give a clone to [`Emitter::with_log`](super::Emitter::with_log) and
/// read the lines back (tests, embedding).
#[derive(Clone, Debug, Default)]
pub struct MemoryLog(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for MemoryLog {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl MemoryLog {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// Every line parsed as JSON (panics on a line that is not JSON: for tests).
    pub fn json(&self) -> Vec<Value> {
        self.text()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{OperationType, Status, WriteOp};
    use serde_json::json;

    #[test]
    fn seed_fields_are_flat_and_context_is_top_level() {
        let mut call = ToolCall::new("list_tasks", "alice");
        call.duration_ms = 245.0;
        call.context = Some(json!({"project_id": "p1", "filters": {"status": "open"}}));
        let v: Value = serde_json::from_str(&to_line(&call)).unwrap();
        assert_eq!(v["tool_name"], "list_tasks");
        assert_eq!(v["user"], "alice");
        assert_eq!(v["status"], "success");
        assert_eq!(v["duration_ms"], 245);
        assert_eq!(v["error_code"], Value::Null);
        assert_eq!(v["project_id"], "p1");
        assert_eq!(v["filters"]["status"], "open");
        assert!(
            v.get("operation_type").is_none(),
            "reads carry no write fields"
        );
    }

    #[test]
    fn writes_carry_state_and_unknown_confirmation_is_null() {
        let mut call = ToolCall::new("delete_task", "bob");
        call.status = Status::Error;
        call.error_code = Some("403".into());
        call.write = Some(
            WriteOp::new(OperationType::Delete)
                .resource_id("t1")
                .before(json!({"id": "t1"})),
        );
        let v: Value = serde_json::from_str(&to_line(&call)).unwrap();
        assert_eq!(v["operation_type"], "delete");
        assert_eq!(v["resource_id"], "t1");
        assert_eq!(v["before_state"]["id"], "t1");
        assert_eq!(v["after_state"], Value::Null);
        assert!(v.as_object().unwrap().contains_key("user_confirmation"));
        assert_eq!(v["user_confirmation"], Value::Null);
        assert_eq!(v["error_code"], "403");
    }

    #[test]
    fn colliding_context_keys_do_not_overwrite_seed_fields() {
        let mut call = ToolCall::new("set_status", "carol");
        call.context = Some(json!({"status": "done", "user": "mallory", "id": 3}));
        let v: Value = serde_json::from_str(&to_line(&call)).unwrap();
        assert_eq!(v["status"], "success");
        assert_eq!(v["user"], "carol");
        assert_eq!(v["context"]["status"], "done");
        assert_eq!(v["context"]["user"], "mallory");
        assert_eq!(v["id"], 3);
    }
}
