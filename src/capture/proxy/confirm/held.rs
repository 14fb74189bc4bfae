//! The calls a stream relay (stdio) holds while the user is asked: which lines the gate takes
//! out of the client's stream, the question it sends, and what becomes of the held line when the
//! answer (or the timeout) comes.
//!
//! The relay stays in charge of the pipes: [`HeldCalls::on_client_line`] and
//! [`HeldCalls::expire`] return [`Step`]s that say what to write where, and the relay writes
//! them. One client line is looked at a time; lines the gate does not take pass as they are.

use super::legacy::{self, Answer};
use super::mrtr;
use super::policy::Unsupported;
use super::{Gate, Verdict, gated};
use crate::capture::context::ids_from_meta;
use crate::capture::proxy::before::{OWN_ID_PREFIX, OwnIds};
use crate::capture::proxy::inject::{IdText, plan_call};
use crate::capture::proxy::observe::Prepared;
use crate::record::{Confirmation, ConfirmationOutcome};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A `tools/call` request, fully parsed (the gate does not trust the relay's borrowing scanner
/// to see every spelling of a call).
#[derive(Clone, Debug)]
pub(crate) struct GatedCall {
    /// The request id as JSON text.
    pub(crate) id: String,
    pub(crate) tool: String,
    pub(crate) arguments: Option<Value>,
    /// `params._meta`, when it is an object.
    pub(crate) meta: Option<serde_json::Map<String, Value>>,
}

/// If `line` is a `tools/call` request, what the gate needs of it.
pub(crate) fn parse_call(line: &[u8]) -> Option<GatedCall> {
    #[derive(serde::Deserialize)]
    struct Request {
        id: Option<Value>,
        method: Option<String>,
        params: Option<Params>,
    }
    #[derive(serde::Deserialize)]
    struct Params {
        name: Option<String>,
        arguments: Option<Value>,
        #[serde(rename = "_meta")]
        meta: Option<Value>,
    }
    let r: Request = serde_json::from_slice(line).ok()?;
    if r.method.as_deref() != Some("tools/call") {
        return None;
    }
    let id = r.id?;
    let params = r.params?;
    Some(GatedCall {
        id: id.to_string(),
        tool: params.name?,
        arguments: params.arguments,
        meta: match params.meta {
            Some(Value::Object(m)) => Some(m),
            _ => None,
        },
    })
}

/// What the observer needs to put the gate's `confirmation` on the call in `line`, which the
/// gate forwarded or refused. The relay's borrowing scanner gives the ids when it can plan the
/// call; a spelling it does not plan (an escaped member name, `"tools\/call"`) is read here with
/// a full parse, so that the record keeps the confirmation whatever the spelling.
pub(crate) fn prepared(line: &[u8], confirmation: Confirmation) -> Prepared {
    match plan_call(line, false) {
        Some(plan) => Prepared {
            id: plan.id,
            ids: plan.ids,
            before: None,
            confirmation: Some(confirmation),
        },
        None => {
            let call = parse_call(line);
            Prepared {
                id: IdText::new(call.as_ref().map_or("", |c| c.id.as_str())),
                ids: ids_from_meta(call.as_ref().and_then(|c| c.meta.as_ref())),
                before: None,
                confirmation: Some(confirmation),
            }
        }
    }
}

/// If `message` is a JSON-RPC batch holding a call the gate would hold, the answer to the whole
/// batch: an error for each request in it, none of which is forwarded. A batch cannot wait for
/// one of its members' confirmation, and letting it through would skip the gate.
pub(crate) fn refuse_gated_batch(gate: &Gate, message: &[u8]) -> Option<Vec<u8>> {
    let first = message.iter().find(|b| !b.is_ascii_whitespace())?;
    if *first != b'[' {
        return None;
    }
    let items: Vec<Value> = serde_json::from_slice(message).ok()?;
    let gated = items.iter().any(|item| {
        item.get("method").and_then(Value::as_str) == Some("tools/call")
            && item
                .pointer("/params/name")
                .and_then(Value::as_str)
                .is_some_and(|t| gate.requires(t))
    });
    if !gated {
        return None;
    }
    let errors: Vec<Value> = items
        .iter()
        .filter_map(|item| item.get("id").filter(|_| item.get("method").is_some()))
        .map(|id| {
            serde_json::json!({"jsonrpc": "2.0", "id": id, "error": {
                "code": -32600,
                "message": "mcp-otel proxy: this batch holds a call that needs the user's \
                            confirmation; send that call on its own"
            }})
        })
        .collect();
    Some(Value::Array(errors).to_string().into_bytes())
}

/// If `line` is a `notifications/cancelled`, the id (JSON text) of the request it cancels.
pub(crate) fn cancelled_request(line: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Notice {
        method: Option<String>,
        params: Option<Params>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Params {
        request_id: Option<Value>,
    }
    let n: Notice = serde_json::from_slice(line).ok()?;
    if n.method.as_deref() != Some("notifications/cancelled") {
        return None;
    }
    match n.params?.request_id? {
        id @ (Value::String(_) | Value::Number(_)) => Some(id.to_string()),
        _ => None,
    }
}

/// What the relay does next.
#[derive(Debug)]
pub(crate) enum Step {
    /// Relay the line as usual (it is none of the gate's business).
    Pass,
    /// The line was the client's answer to a question that is no longer open: drop it.
    Drop,
    /// Send this request (one line) to the client; the call is held.
    Ask(Vec<u8>),
    /// Whether the call is gated depends on annotations the gate has not seen: list the tools
    /// (the proxy's own `tools/list`, with the protocol keys of the call's `_meta`), wait for
    /// the answer, and look at the line again.
    ListFirst(Option<serde_json::Map<String, Value>>),
    /// Answer the client with this line (a 2026-07-28 `input_required` round); nothing is
    /// recorded, since no call was made.
    Reply(Vec<u8>),
    /// Relay `line` (the held or allowed call) to the server, its record carrying
    /// `confirmation`.
    Forward {
        line: Vec<u8>,
        confirmation: Confirmation,
    },
    /// Do not relay `line`: record it with `confirmation`, and answer the client with
    /// `response` (a tool error saying why).
    Refuse {
        line: Vec<u8>,
        confirmation: Confirmation,
        response: Vec<u8>,
    },
    /// The client cancelled the held call `line` (`notice` is its `notifications/cancelled`):
    /// relay neither, record the call with `confirmation` as cancelled, and withdraw the
    /// question by sending the client `withdraw` (the proxy's own cancellation of it).
    Withdraw {
        line: Vec<u8>,
        notice: Vec<u8>,
        confirmation: Confirmation,
        withdraw: Vec<u8>,
    },
}

#[derive(Debug)]
struct Held {
    line: Vec<u8>,
    call: GatedCall,
    asked: Instant,
}

/// The held calls of one stdio connection.
#[derive(Debug)]
pub(crate) struct HeldCalls {
    gate: Gate,
    /// Set from the client's `initialize`.
    can_elicit: AtomicBool,
    held: Mutex<HashMap<String, Held>>,
}

impl HeldCalls {
    pub(crate) fn new(gate: Gate) -> Self {
        HeldCalls {
            gate,
            can_elicit: AtomicBool::new(false),
            held: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn gate(&self) -> &Gate {
        &self.gate
    }

    /// How long a question stays open.
    pub(crate) fn timeout(&self) -> Duration {
        self.gate.timeout()
    }

    /// True when `lines` may hold something for the gate: a call, an `initialize`, an
    /// answer to one of the proxy's questions, or a cancellation. The cheap test before
    /// [`Self::on_client_line`].
    pub(crate) fn concerns(lines: &[u8]) -> bool {
        memchr::memmem::find(lines, b"tools").is_some()
            || memchr::memmem::find(lines, b"initialize").is_some()
            || memchr::memmem::find(lines, OWN_ID_PREFIX.as_bytes()).is_some()
            || memchr::memmem::find(lines, b"cancelled").is_some()
    }

    /// Looks at one client line. `ids` names the question when one is asked; the caller
    /// arms a timer for it ([`Self::expire`]) when the step is [`Step::Ask`], with the id it
    /// gets back.
    pub(crate) fn on_client_line(&self, line: &[u8], ids: &OwnIds) -> (Step, Option<String>) {
        if let Some(can) = legacy::initialize_can_elicit(line) {
            self.can_elicit.store(can, Ordering::SeqCst);
            return (Step::Pass, None);
        }
        if memchr::memmem::find(line, OWN_ID_PREFIX.as_bytes()).is_some()
            && let Some((id, answer)) = legacy::answer(line)
            && id.starts_with(OWN_ID_PREFIX)
        {
            let held = self
                .held
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            return match held {
                Some(held) => (self.conclude(held, &answer), None),
                None => (Step::Drop, None),
            };
        }
        if memchr::memmem::find(line, b"cancelled").is_some()
            && let Some(id) = cancelled_request(line)
        {
            return (self.cancel(&id, line).unwrap_or(Step::Pass), None);
        }
        if let Some(mut errors) = refuse_gated_batch(&self.gate, line) {
            errors.push(b'\n');
            return (Step::Reply(errors), None);
        }
        let Some(call) = parse_call(line) else {
            return (Step::Pass, None);
        };
        match self.gate.verdict(&call.tool) {
            Verdict::Free => return (Step::Pass, None),
            Verdict::Unlisted => return (Step::ListFirst(call.meta), None),
            Verdict::Gated => {}
        }
        if let Ok(request) = serde_json::from_slice::<Value>(line)
            && mrtr::is_modern(&request, None)
        {
            // One stdio connection is one caller.
            return (self.modern(request, line), None);
        }
        if !self.can_elicit.load(Ordering::SeqCst) {
            let confirmation = gated(
                ConfirmationOutcome::UnsupportedClient,
                call.arguments.as_ref(),
                None,
            );
            return match self.gate.unsupported() {
                Unsupported::Allow => (
                    Step::Forward {
                        line: line.to_vec(),
                        confirmation,
                    },
                    None,
                ),
                Unsupported::Deny => (self.refuse(line.to_vec(), &call, confirmation), None),
            };
        }
        let own = ids.next();
        let question = self.gate.question(&call.tool, call.arguments.as_ref());
        let mut request = legacy::request(&own, &question).into_bytes();
        request.push(b'\n');
        self.held.lock().unwrap_or_else(|e| e.into_inner()).insert(
            own.clone(),
            Held {
                line: line.to_vec(),
                call,
                asked: Instant::now(),
            },
        );
        (Step::Ask(request), Some(own))
    }

    fn modern(&self, request: Value, line: &[u8]) -> Step {
        match mrtr::step(&self.gate, self.gate.book(), request, "stdio") {
            mrtr::ModernStep::Ask(mut response) => {
                response.push(b'\n');
                Step::Reply(response)
            }
            mrtr::ModernStep::Forward {
                mut body,
                confirmation,
            } => {
                body.push(b'\n');
                Step::Forward {
                    line: body,
                    confirmation,
                }
            }
            mrtr::ModernStep::Refuse {
                mut response,
                confirmation,
            } => {
                response.push(b'\n');
                Step::Refuse {
                    line: line.to_vec(),
                    confirmation,
                    response,
                }
            }
        }
    }

    /// The client cancelled its call `id` (JSON text): if that call is held, it is dropped and
    /// its question withdrawn. `None` when no held call has that id (the notice is relayed).
    fn cancel(&self, id: &str, notice: &[u8]) -> Option<Step> {
        let (own, held) = {
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            let own = held.iter().find(|(_, h)| h.call.id == id)?.0.clone();
            held.remove_entry(&own)?
        };
        let confirmation = gated(
            ConfirmationOutcome::Cancelled,
            held.call.arguments.as_ref(),
            Some(held.asked.elapsed()),
        );
        let mut withdraw = legacy::withdrawal(&own).into_bytes();
        withdraw.push(b'\n');
        Some(Step::Withdraw {
            line: held.line,
            notice: notice.to_vec(),
            confirmation,
            withdraw,
        })
    }

    /// The question `own` timed out: the held call is refused, unless it was answered.
    pub(crate) fn expire(&self, own: &str) -> Option<Step> {
        let held = self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(own)?;
        let confirmation = gated(
            ConfirmationOutcome::Timeout,
            held.call.arguments.as_ref(),
            Some(held.asked.elapsed()),
        );
        Some(self.refuse(held.line, &held.call, confirmation))
    }

    /// Every question still open, refused as cancelled: the connection is ending, and a held
    /// call is still an attempt the record must show.
    pub(crate) fn drain(&self) -> Vec<Step> {
        let held: Vec<Held> = self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, h)| h)
            .collect();
        held.into_iter()
            .map(|h| self.conclude(h, &Answer::Cancelled))
            .collect()
    }

    fn conclude(&self, held: Held, answer: &Answer) -> Step {
        let confirmation = gated(
            answer.outcome(),
            held.call.arguments.as_ref(),
            Some(held.asked.elapsed()),
        );
        match answer {
            Answer::Approved => Step::Forward {
                line: held.line,
                confirmation,
            },
            _ => self.refuse(held.line, &held.call, confirmation),
        }
    }

    fn refuse(&self, line: Vec<u8>, call: &GatedCall, confirmation: Confirmation) -> Step {
        let text = legacy::refusal_text(
            &call.tool,
            confirmation.outcome,
            self.gate.timeout().as_secs_f64(),
        );
        Step::Refuse {
            line,
            response: legacy::refusal(&call.id, &text),
            confirmation,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::proxy::config::ProxyConfig;
    use std::sync::Arc;

    fn gate() -> Gate {
        let c = ProxyConfig::parse("[confirm]\ntools = [\"delete_*\"]").unwrap();
        Gate::new(Arc::new(c)).unwrap()
    }

    #[test]
    fn a_batch_cannot_smuggle_a_gated_call_past_the_gate() {
        let batch = br#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"list"}},
            {"jsonrpc":"2.0","id":"x","method":"tools/call","params":{"name":"delete_all"}},
            {"jsonrpc":"2.0","method":"notifications/progress"}]"#;
        let errors: Value =
            serde_json::from_slice(&refuse_gated_batch(&gate(), batch).unwrap()).unwrap();
        let ids: Vec<&Value> = errors
            .as_array()
            .unwrap()
            .iter()
            .map(|e| &e["id"])
            .collect();
        assert_eq!(ids, [&Value::from(1), &Value::from("x")]);
        assert_eq!(errors[0]["error"]["code"], -32600);
        let harmless =
            br#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"list"}}]"#;
        assert!(refuse_gated_batch(&gate(), harmless).is_none());
        assert!(refuse_gated_batch(&gate(), br#"{"id":1}"#).is_none());
    }

    #[test]
    fn an_escaped_method_name_is_still_a_call() {
        let line = br#"{"jsonrpc":"2.0","id":3,"method":"tools\/call","params":{"name":"delete_\u0061ll"}}"#;
        let call = parse_call(line).unwrap();
        assert_eq!(call.tool, "delete_all");
        assert!(gate().requires(&call.tool));
    }
}
