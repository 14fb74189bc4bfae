//! `--strict` (in the manner of Kubernetes' blocking-strict audit): a call the proxy cannot
//! record is refused, with a JSON-RPC error, instead of relayed unobserved. Two things make a
//! call unrecordable: the observer's queue has no room for it, or it is too large to observe
//! and its envelope (method, id, tool name) cannot be read from its bytes.

use serde_json::{Value, json};

/// The JSON-RPC error code of a refusal: an internal error of the proxy, not of the caller.
pub(crate) const REFUSED_CODE: i64 = -32603;

/// Why a call was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unrecordable {
    QueueFull,
    Unreadable,
}

impl Unrecordable {
    /// The error message the client gets.
    pub(crate) fn message(self) -> &'static str {
        match self {
            Unrecordable::QueueFull => {
                "mcp-otel proxy (--strict): the call was not forwarded because it cannot be \
                 recorded now (the proxy's observation queue is full); retry later"
            }
            Unrecordable::Unreadable => {
                "mcp-otel proxy (--strict): the call was not forwarded because it cannot be \
                 recorded (the message is past the observation limit and its method, id and \
                 tool name could not be read)"
            }
        }
    }
}

/// The error answering the request whose id is `id` (its JSON text), as one line.
pub(crate) fn refusal_of_id(id: &str, why: Unrecordable) -> Vec<u8> {
    let id: Value = serde_json::from_str(id).unwrap_or(Value::Null);
    line(error(id, why))
}

fn error(id: Value, why: Unrecordable) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": REFUSED_CODE, "message": why.message()}})
}

fn line(v: Value) -> Vec<u8> {
    let mut out = v.to_string().into_bytes();
    out.push(b'\n');
    out
}

/// The answer refusing every request in `message` (one request, or a batch: one error per
/// request in it), as one line; `None` when nothing in it can be answered (notifications).
pub(crate) fn refusal(message: &[u8], why: Unrecordable) -> Option<Vec<u8>> {
    let request_id = |v: &Value| v.get("method").and(v.get("id")).cloned();
    match serde_json::from_slice::<Value>(message).ok()? {
        Value::Array(items) => {
            let errors: Vec<Value> = items
                .iter()
                .filter_map(request_id)
                .map(|id| error(id, why))
                .collect();
            (!errors.is_empty()).then(|| line(Value::Array(errors)))
        }
        one => request_id(&one).map(|id| line(error(id, why))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_answer_each_request_by_its_id() {
        let one = refusal(
            br#"{"jsonrpc":"2.0","id":"d1","method":"tools/call","params":{"name":"delete_task"}}"#,
            Unrecordable::QueueFull,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&one).unwrap();
        assert_eq!(
            (v["id"].as_str(), v["error"]["code"].as_i64()),
            (Some("d1"), Some(REFUSED_CODE))
        );
        let batch = refusal(
            br#"[{"jsonrpc":"2.0","method":"notifications/x"},{"jsonrpc":"2.0","id":2,"method":"tools/call"}]"#,
            Unrecordable::QueueFull,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&batch).unwrap();
        assert_eq!(v[0]["id"], 2);
        assert!(
            refusal(
                br#"{"jsonrpc":"2.0","method":"n"}"#,
                Unrecordable::QueueFull
            )
            .is_none()
        );
        let by_id: Value =
            serde_json::from_slice(&refusal_of_id("7", Unrecordable::Unreadable)).unwrap();
        assert_eq!(by_id["id"], 7);
    }
}
