//! Elicitation for 2024-11-05 … 2025-11-25 peers: the proxy's own `elicitation/create` request
//! to the client (form mode, one required boolean `confirm`), the reading of the client's
//! answer, and the tool result that tells the model a call was not made.

use crate::record::ConfirmationOutcome;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

/// The name of the one form field.
pub(crate) const CONFIRM_FIELD: &str = "confirm";

/// Whether an `initialize` request's client declared elicitation (`capabilities.elicitation`
/// present; `{}` means form mode in 2025-06-18, `{ "form": {} }` in 2025-11-25). `None` when
/// `message` is not an `initialize` request.
pub(crate) fn initialize_can_elicit(message: &[u8]) -> Option<bool> {
    #[derive(Deserialize)]
    struct Request {
        method: Option<String>,
        params: Option<Params>,
    }
    #[derive(Deserialize)]
    struct Params {
        capabilities: Option<Capabilities>,
    }
    #[derive(Deserialize)]
    struct Capabilities {
        elicitation: Option<Value>,
    }
    let request: Request = serde_json::from_slice(message).ok()?;
    if request.method.as_deref() != Some("initialize") {
        return None;
    }
    let elicitation = request
        .params
        .and_then(|p| p.capabilities)
        .and_then(|c| c.elicitation);
    Some(match elicitation {
        Some(Value::Object(modes)) => modes.is_empty() || modes.contains_key("form"),
        _ => false,
    })
}

/// The `elicitation/create` request (a JSON text without the newline) asking `message`, with
/// the proxy's own `id`.
pub(crate) fn request(id: &str, message: &str) -> String {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "method": "elicitation/create",
        "params": {
            "message": message,
            "requestedSchema": {
                "type": "object",
                "properties": {
                    CONFIRM_FIELD: {
                        "type": "boolean",
                        "title": "Run this tool call",
                        "description": "Approve to let the call reach the server.",
                        "default": false
                    }
                },
                "required": [CONFIRM_FIELD]
            }
        }
    })
    .to_string()
}

/// What the client answered to an elicitation.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Answer {
    /// `accept` with `confirm: true`.
    Approved,
    /// `decline`, or `accept` without `confirm: true` (the user unticked the box).
    Declined,
    Cancelled,
    /// A JSON-RPC error (the client could not ask), with its message.
    Failed(String),
    /// The client cancelled the held call itself (`notifications/cancelled`): nothing is
    /// answered, the question is withdrawn.
    Withdrawn,
}

impl Answer {
    pub(crate) fn outcome(&self) -> ConfirmationOutcome {
        match self {
            Answer::Approved => ConfirmationOutcome::Accepted,
            Answer::Declined => ConfirmationOutcome::Declined,
            Answer::Cancelled | Answer::Failed(_) | Answer::Withdrawn => {
                ConfirmationOutcome::Cancelled
            }
        }
    }
}

/// If `message` is a response (no `method`) with a string id, that id and the answer.
pub(crate) fn answer(message: &[u8]) -> Option<(String, Answer)> {
    #[derive(Deserialize)]
    struct Response<'a> {
        #[serde(borrow)]
        id: Option<&'a RawValue>,
        method: Option<&'a RawValue>,
        result: Option<Value>,
        error: Option<Value>,
    }
    let r: Response = serde_json::from_slice(message).ok()?;
    if r.method.is_some() {
        return None;
    }
    let id: String = serde_json::from_str(r.id?.get()).ok()?;
    Some((id, read(r.result.as_ref(), r.error.as_ref())))
}

/// Reads an elicitation result (`{action, content}`) or error.
pub(crate) fn read(result: Option<&Value>, error: Option<&Value>) -> Answer {
    if let Some(e) = error {
        let message = e.get("message").and_then(Value::as_str).unwrap_or("error");
        return Answer::Failed(message.to_owned());
    }
    let result = result.unwrap_or(&Value::Null);
    match result.get("action").and_then(Value::as_str) {
        Some("accept") => {
            let confirmed = result
                .get("content")
                .and_then(|c| c.get(CONFIRM_FIELD))
                .and_then(Value::as_bool);
            match confirmed {
                Some(true) => Answer::Approved,
                _ => Answer::Declined,
            }
        }
        Some("decline") => Answer::Declined,
        _ => Answer::Cancelled,
    }
}

/// The proxy's `notifications/cancelled` (one JSON text) withdrawing its question `own`.
pub(crate) fn withdrawal(own: &str) -> String {
    json!({
        "jsonrpc": "2.0",
        "method": "notifications/cancelled",
        "params": {"requestId": own, "reason": "the client cancelled the call"}
    })
    .to_string()
}

/// Why the call was not made, in words the model can act on.
pub(crate) fn refusal_text(tool: &str, outcome: ConfirmationOutcome, timeout_secs: f64) -> String {
    match outcome {
        ConfirmationOutcome::Declined => format!(
            "The user declined to run the tool {tool}; the call was not made. Do not retry it \
             unless the user asks for it."
        ),
        ConfirmationOutcome::Cancelled => format!(
            "The user cancelled the confirmation of the tool {tool}; the call was not made."
        ),
        ConfirmationOutcome::Timeout => format!(
            "The user did not confirm the tool {tool} within {timeout_secs}s; the call was not \
             made."
        ),
        _ => format!(
            "The tool {tool} needs the user's confirmation, and this client cannot ask for it \
             (it did not declare the elicitation capability); the call was not made."
        ),
    }
}

/// The JSON-RPC response (one line, with the newline) answering the call `id` (its JSON text)
/// with a tool error saying why it was not made.
pub(crate) fn refusal(id: &str, text: &str) -> Vec<u8> {
    let result = json!({
        "content": [{"type": "text", "text": text}],
        "isError": true
    });
    let mut line = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{result}}}"#).into_bytes();
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_strictly() {
        let a = |s: &str| answer(s.as_bytes()).unwrap();
        assert_eq!(
            a(
                r#"{"jsonrpc":"2.0","id":"p-1","result":{"action":"accept","content":{"confirm":true}}}"#
            ),
            ("p-1".into(), Answer::Approved)
        );
        assert_eq!(
            a(r#"{"id":"p-1","result":{"action":"accept","content":{"confirm":false}}}"#).1,
            Answer::Declined
        );
        assert_eq!(
            a(r#"{"id":"p","result":{"action":"accept"}}"#).1,
            Answer::Declined
        );
        assert_eq!(
            a(r#"{"id":"p","result":{"action":"decline"}}"#).1,
            Answer::Declined
        );
        assert_eq!(
            a(r#"{"id":"p","result":{"action":"cancel"}}"#).1,
            Answer::Cancelled
        );
        assert!(matches!(
            a(r#"{"id":"p","error":{"code":-32600,"message":"no"}}"#).1,
            Answer::Failed(_)
        ));
        assert!(answer(br#"{"id":"p","method":"x"}"#).is_none());
        assert!(answer(br#"{"id":7,"result":{}}"#).is_none());
    }

    #[test]
    fn capabilities_are_read_from_initialize() {
        let init = |caps: &str| {
            initialize_can_elicit(
                format!(r#"{{"id":0,"method":"initialize","params":{{"capabilities":{caps}}}}}"#)
                    .as_bytes(),
            )
        };
        assert_eq!(init(r#"{"elicitation":{}}"#), Some(true));
        assert_eq!(init(r#"{"elicitation":{"form":{},"url":{}}}"#), Some(true));
        assert_eq!(init(r#"{"elicitation":{"url":{}}}"#), Some(false));
        assert_eq!(init(r#"{}"#), Some(false));
        assert_eq!(initialize_can_elicit(br#"{"id":1,"method":"ping"}"#), None);
    }

    #[test]
    fn a_refusal_is_a_tool_error_with_the_callers_id() {
        let line = refusal(r#""abc""#, "no");
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["id"], "abc");
        assert_eq!(v["result"]["isError"], true);
        assert_eq!(v["result"]["content"][0]["text"], "no");
        assert!(line.ends_with(b"\n"));
    }
}
