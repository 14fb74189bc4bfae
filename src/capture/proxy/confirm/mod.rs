//! The confirmation gate: before a configured tool runs, the proxy asks the user through the
//! client (MCP elicitation) and forwards the call only when the answer is an approval.
//!
//! The relays call into this module and do only the sending: [`Gate`] decides which calls are
//! held (the [`policy`]), learns the tools' annotations from `tools/list` results, and words the
//! question; [`legacy`] builds the `elicitation/create` request (2024-11-05 … 2025-11-25 peers,
//! form mode with one boolean `confirm` field) in the proxy's own id space, reads the client's
//! answer and words the refusal the model sees; [`mrtr`] does the same for 2026-07-28 peers
//! with an `InputRequiredResult` and a signed, single-use `requestState`; [`settle`] puts the
//! outcome on the record.
//!
//! What an approval proves: that the client answered `accept` with `confirm: true`. A client can
//! answer without showing the question to anyone; the record says "the client approved", and the
//! README says so too.

pub mod held;
pub mod legacy;
pub mod mrtr;
pub mod policy;
pub mod sessions;

use super::config::ProxyConfig;
use crate::record::{Confirmation, ConfirmationOutcome, ConfirmationSource, ToolCall};
use policy::{CallFacts, Unsupported};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A tool's (`readOnlyHint`, `destructiveHint`) as the server listed them.
type Hints = (Option<bool>, Option<bool>);

/// The gate's view of the configuration plus what it learned about the tools.
#[derive(Debug)]
pub struct Gate {
    config: Arc<ProxyConfig>,
    /// Tool name → (`readOnlyHint`, `destructiveHint`) from the server's `tools/list`.
    hints: Mutex<HashMap<String, Hints>>,
    /// Issues and checks the 2026-07-28 request states.
    book: mrtr::StateBook,
}

impl Gate {
    /// A gate when the configuration can gate any call.
    pub fn new(config: Arc<ProxyConfig>) -> Option<Self> {
        if !config.has_confirmation() {
            return None;
        }
        // Validation loaded the key file once already; should it fail now, a random key only
        // makes approvals from other replicas fail (closed).
        let key = config
            .confirm
            .state_key_file
            .as_deref()
            .and_then(|p| mrtr::StateKey::load(p).ok())
            .unwrap_or_else(mrtr::StateKey::random);
        Some(Gate {
            config,
            hints: Mutex::new(HashMap::new()),
            book: mrtr::StateBook::new(key),
        })
    }

    /// Whether a call to `tool` waits for the user's approval.
    pub fn requires(&self, tool: &str) -> bool {
        let configured = self.config.tool(tool);
        let (read_only_hint, destructive_hint) = self
            .hints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(tool)
            .copied()
            .unwrap_or_default();
        self.config.confirm.requires(CallFacts {
            tool,
            tool_override: configured.and_then(|t| t.confirm),
            configured: configured.and_then(|t| t.classification),
            read_only_hint,
            destructive_hint,
        })
    }

    /// Learns the annotations of the tools in a `tools/list` result, if `message` is one.
    pub fn learn_tools(&self, message: &[u8]) {
        #[derive(serde::Deserialize)]
        struct Reply {
            result: Option<Listed>,
        }
        #[derive(serde::Deserialize)]
        struct Listed {
            tools: Vec<Tool>,
        }
        #[derive(serde::Deserialize)]
        struct Tool {
            name: String,
            #[serde(default)]
            annotations: Option<Hints>,
        }
        #[derive(serde::Deserialize, Default)]
        #[serde(rename_all = "camelCase")]
        struct Hints {
            read_only_hint: Option<bool>,
            destructive_hint: Option<bool>,
        }
        let Some(listed) = serde_json::from_slice::<Reply>(message)
            .ok()
            .and_then(|r| r.result)
        else {
            return;
        };
        let mut hints = self.hints.lock().unwrap_or_else(|e| e.into_inner());
        for tool in listed.tools {
            let a = tool.annotations.unwrap_or_default();
            hints.insert(tool.name, (a.read_only_hint, a.destructive_hint));
        }
    }

    /// The question for a call to `tool` with `arguments`.
    pub fn question(&self, tool: &str, arguments: Option<&Value>) -> String {
        let configured = self.config.tool(tool);
        let args = arguments.and_then(Value::as_object);
        let resource = match configured.and_then(|t| t.resource_id.as_deref()) {
            Some(pointer) => arguments
                .and_then(|a| a.pointer(pointer))
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned)),
            None => crate::capture::classify::resource_id_from_args(args),
        };
        let policy = &self.config.confirm;
        policy
            .message
            .render(tool, resource.as_deref(), arguments, &policy.arguments)
    }

    pub fn book(&self) -> &mrtr::StateBook {
        &self.book
    }

    pub fn timeout(&self) -> Duration {
        self.config.confirm.timeout
    }

    /// What to do with a gated call from a client that cannot be asked.
    pub fn unsupported(&self) -> Unsupported {
        self.config.confirm.unsupported
    }
}

/// A gate outcome with the digest of the arguments it was about.
pub fn gated(
    outcome: ConfirmationOutcome,
    arguments: Option<&Value>,
    wait: Option<Duration>,
) -> Confirmation {
    let source = match outcome {
        ConfirmationOutcome::UnsupportedClient | ConfirmationOutcome::NotRequired => None,
        _ => Some(ConfirmationSource::Elicitation),
    };
    Confirmation {
        outcome,
        source,
        arguments_digest: Some(crate::record::arguments_digest(arguments)),
        wait_ms: wait.map(|d| d.as_secs_f64() * 1000.0),
    }
}

/// Puts the confirmation on a finished call: the gate's outcome when the gate held it;
/// otherwise what the client's flag or the server's audit block said (`client_flag` when the
/// flag was sent); otherwise `not_required` for a write while a policy is in force.
/// `user_confirmation` follows the gate's outcome.
pub fn settle(
    call: &mut ToolCall,
    gate: Option<Confirmation>,
    client_flag: Option<bool>,
    policy_in_force: bool,
) {
    if let Some(c) = gate {
        if let Some(w) = call.write.as_mut() {
            w.user_confirmation = c.outcome.user_confirmation();
        }
        call.confirmation = Some(c);
        return;
    }
    let stated = call.write.as_ref().and_then(|w| w.user_confirmation);
    call.confirmation = match stated {
        Some(yes) => {
            let source = match client_flag {
                Some(_) => ConfirmationSource::ClientFlag,
                None => ConfirmationSource::ServerAuditBlock,
            };
            let outcome = match yes {
                true => ConfirmationOutcome::Accepted,
                false => ConfirmationOutcome::Declined,
            };
            Some(Confirmation::new(outcome, Some(source)))
        }
        None if policy_in_force && call.write.is_some() => {
            Some(Confirmation::new(ConfirmationOutcome::NotRequired, None))
        }
        None => None,
    };
}
