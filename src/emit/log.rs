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
///
/// Written field by field rather than through serde's map serializer, with a string that needs
/// no escaping copied as it is (the proxy writes a line per call, and serde_json escapes byte by
/// byte); the bytes are what serde_json's compact serializer writes for the same entries (a
/// property test holds it to that).
pub fn write_line<W: Write>(out: &mut W, call: &ToolCall) -> io::Result<()> {
    let mut line = Line { out, first: true };
    line.str("tool_name", &call.tool_name)?;
    line.str("user", &call.user)?;
    let mut stamp = [0u8; 24];
    match rfc3339_millis(&call.timestamp, &mut stamp) {
        Some(text) => line.ascii("timestamp", text)?,
        None => line.str("timestamp", &call.timestamp_rfc3339())?,
    }
    line.str("status", call.status.as_str())?;
    line.json("duration_ms", &duration_value(call.duration_ms))?;
    line.opt_str("error_code", call.error_code.as_deref())?;
    let colliding = context_entries(call, |k, v| line.context_entry(k, v))?;
    if !colliding.is_empty() {
        line.json("context", &colliding)?;
    }
    if let Some(w) = &call.write {
        line.opt_str("operation_type", w.operation_type.map(|o| o.as_str()))?;
        line.opt_str("resource_id", w.resource_id.as_deref())?;
        line.json("before_state", &w.before_state)?;
        line.json("after_state", &w.after_state)?;
        line.json("user_confirmation", &w.user_confirmation)?;
    }
    if let Some(c) = &call.confirmation {
        line.str("confirmation_outcome", c.outcome.as_str())?;
        line.opt_str("confirmation_source", c.source.map(|s| s.as_str()))?;
        line.opt_str(
            "confirmation_arguments_digest",
            c.arguments_digest.as_deref(),
        )?;
        line.json("confirmation_wait_ms", &c.wait_ms.map(duration_value))?;
    }
    let mut hex = [0u8; 32];
    crate::hex::write(&mut hex, &call.ids.trace_id);
    line.ascii("trace_id", &hex)?;
    crate::hex::write(&mut hex[..16], &call.ids.span_id);
    line.ascii("span_id", &hex[..16])?;
    line.out.write_all(b"}\n")
}

/// The context's top-level fields, each handed to `flat`, except those that would collide with
/// a seed field (or a context that is not an object, under `value`): returned, for the line's
/// `context` entry.
fn context_entries<E>(
    call: &ToolCall,
    mut flat: impl FnMut(&str, &Value) -> Result<(), E>,
) -> Result<Map<String, Value>, E> {
    let mut colliding = Map::new();
    match &call.context {
        Some(Value::Object(ctx)) => {
            for (k, v) in ctx {
                if SEED_FIELDS.contains(&k.as_str()) {
                    colliding.insert(k.clone(), v.clone());
                } else {
                    flat(k, v)?;
                }
            }
        }
        Some(other) => {
            colliding.insert("value".to_owned(), other.clone());
        }
        None => {}
    }
    Ok(colliding)
}

/// One JSON object being written: `{` before the first entry, `,` between entries.
struct Line<'a, W: Write> {
    out: &'a mut W,
    first: bool,
}

impl<W: Write> Line<'_, W> {
    /// One of the line's own keys: plain ASCII, nothing to escape.
    fn key(&mut self, key: &'static str) -> io::Result<()> {
        self.out
            .write_all(if self.first { b"{\"" } else { b",\"" })?;
        self.first = false;
        self.out.write_all(key.as_bytes())?;
        self.out.write_all(b"\":")
    }

    /// A context field: its key comes from the call's arguments.
    fn context_entry(&mut self, key: &str, value: &Value) -> io::Result<()> {
        self.out.write_all(if self.first { b"{" } else { b"," })?;
        self.first = false;
        string(self.out, key)?;
        self.out.write_all(b":")?;
        serde_json::to_writer(&mut *self.out, value).map_err(io::Error::other)
    }

    fn str(&mut self, key: &'static str, value: &str) -> io::Result<()> {
        self.key(key)?;
        string(self.out, value)
    }

    fn opt_str(&mut self, key: &'static str, value: Option<&str>) -> io::Result<()> {
        match value {
            Some(v) => self.str(key, v),
            None => {
                self.key(key)?;
                self.out.write_all(b"null")
            }
        }
    }

    /// Hex digits: nothing to escape.
    fn ascii(&mut self, key: &'static str, digits: &[u8]) -> io::Result<()> {
        self.key(key)?;
        self.out.write_all(b"\"")?;
        self.out.write_all(digits)?;
        self.out.write_all(b"\"")
    }

    fn json<T: serde::Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> io::Result<()> {
        self.key(key)?;
        serde_json::to_writer(&mut *self.out, value).map_err(io::Error::other)
    }
}

/// `2026-11-23T10:00:00.123Z` (what [`ToolCall::timestamp_rfc3339`] gives) written on the
/// stack; `None` for a year outside 0–9999 or a leap second, which chrono formats.
fn rfc3339_millis<'a>(
    t: &chrono::DateTime<chrono::Utc>,
    out: &'a mut [u8; 24],
) -> Option<&'a [u8]> {
    use chrono::{Datelike, Timelike};
    let (year, nanos) = (t.year(), t.nanosecond());
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        return None;
    }
    let mut put = |at: usize, value: u32, width: usize| {
        let mut v = value;
        for i in (at..at + width).rev() {
            out[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year as u32, 4);
    put(5, t.month(), 2);
    put(8, t.day(), 2);
    put(11, t.hour(), 2);
    put(14, t.minute(), 2);
    put(17, t.second(), 2);
    put(20, nanos / 1_000_000, 3);
    for (at, sep) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
    ] {
        out[at] = sep;
    }
    out[23] = b'Z';
    Some(&out[..])
}

/// A JSON string: copied between quotes when no byte needs an escape (no control character,
/// quote or backslash: the common case), escaped by serde_json otherwise.
fn string<W: Write>(out: &mut W, s: &str) -> io::Result<()> {
    // No early exit, so the loop vectorises.
    let plain = !s.bytes().fold(false, |any, b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if plain {
        out.write_all(b"\"")?;
        out.write_all(s.as_bytes())?;
        out.write_all(b"\"")
    } else {
        serde_json::to_writer(&mut *out, s).map_err(io::Error::other)
    }
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
    use serde::Serializer;
    use serde::ser::SerializeMap;

    /// The line as serde_json's compact serializer writes the entries: what [`write_line`]
    /// must write byte for byte.
    fn serde_line(call: &ToolCall) -> Vec<u8> {
        let mut out = Vec::new();
        let mut ser = serde_json::Serializer::new(&mut out);
        let mut map = ser.serialize_map(None).unwrap();
        entries(&mut map, call).unwrap();
        map.end().unwrap();
        out.push(b'\n');
        out
    }

    fn entries<M: SerializeMap>(map: &mut M, call: &ToolCall) -> Result<(), M::Error> {
        map.serialize_entry("tool_name", &call.tool_name)?;
        map.serialize_entry("user", &call.user)?;
        map.serialize_entry("timestamp", &call.timestamp_rfc3339())?;
        map.serialize_entry("status", call.status.as_str())?;
        map.serialize_entry("duration_ms", &duration_value(call.duration_ms))?;
        map.serialize_entry("error_code", &call.error_code)?;
        let colliding = context_entries(call, |k, v| map.serialize_entry(k, v))?;
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

    use crate::record::{OperationType, Status, WriteOp};
    use serde_json::json;

    proptest::proptest! {
        /// The stack-written timestamp is chrono's, for any time it writes (years 0–9999,
        /// leap seconds left to chrono).
        #[test]
        fn the_timestamp_is_chronos(secs in -62_167_219_200i64..253_402_300_800, nanos in 0u32..2_000_000_000) {
            let Some(t) = chrono::DateTime::from_timestamp(secs, nanos) else {
                return Ok(());
            };
            let mut buf = [0u8; 24];
            let chrono_text = t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            match rfc3339_millis(&t, &mut buf) {
                Some(text) => proptest::prop_assert_eq!(std::str::from_utf8(text).unwrap(), chrono_text),
                None => proptest::prop_assert!(nanos >= 1_000_000_000),
            }
        }
    }

    proptest::proptest! {
        /// The hand-written line is serde_json's, byte for byte, for any call: strings that
        /// need escapes (quotes, backslashes, control characters, non-ASCII) included.
        #[test]
        fn the_line_is_what_serde_json_writes(
            mut call in crate::record::tests_support::arb_tool_call(),
            tool in proptest::prelude::any::<String>(),
            user in "[a-z\"\\\\\u{0}-\u{1f}é☃]{0,12}",
            key in "[a-z\"\\\\\u{0}-\u{1f}]{1,8}",
            code in proptest::option::of("[a-z\"\u{7}]{0,6}"),
        ) {
            call.tool_name = tool;
            call.user = user;
            call.error_code = code;
            if let Some(Value::Object(ctx)) = &mut call.context {
                ctx.insert(key, Value::String("a\"b\\c\u{1}".into()));
            }
            let mut ours = Vec::new();
            write_line(&mut ours, &call).unwrap();
            proptest::prop_assert_eq!(
                String::from_utf8(ours).unwrap(),
                String::from_utf8(serde_line(&call)).unwrap()
            );
        }
    }

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
