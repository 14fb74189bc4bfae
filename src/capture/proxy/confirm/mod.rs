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

pub(crate) mod held;
pub(crate) mod legacy;
pub(crate) mod mrtr;
pub(crate) mod policy;
pub(crate) mod sessions;

use super::config::ProxyConfig;
use crate::record::{Confirmation, ConfirmationOutcome, ConfirmationSource, ToolCall};
use policy::{CallFacts, Unsupported};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A tool's (`readOnlyHint`, `destructiveHint`) as the server listed them.
type Hints = (Option<bool>, Option<bool>);

/// How long a successful `tools/list` answers for tools it did not name: a tool missing from it
/// is taken as not annotated until then, and listed again after.
pub(crate) const LISTING_FRESH: Duration = Duration::from_secs(30);

/// What the gate says about a call before it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The call runs without asking.
    Free,
    /// The call waits for the user's approval.
    Gated,
    /// The answer depends on the tool's annotations (`destructive`, or `operations` with an
    /// unconfigured tool), and the gate has not seen them: the relay lists the tools first
    /// (the proxy's own `tools/list`), and asks again.
    Unlisted,
}

/// The last `tools/list` the gate learned from, or tried to.
#[derive(Clone, Copy, Debug)]
struct Listing {
    at: std::time::Instant,
    answered: bool,
}

/// The gate's view of the configuration plus what it learned about the tools.
#[derive(Debug)]
pub(crate) struct Gate {
    config: Arc<ProxyConfig>,
    /// Tool name → (`readOnlyHint`, `destructiveHint`) from the server's `tools/list`.
    hints: Mutex<HashMap<String, Hints>>,
    listing: Mutex<Option<Listing>>,
    /// Issues and checks the 2026-07-28 request states.
    book: mrtr::StateBook,
}

impl Gate {
    /// A gate when the configuration can gate any call.
    pub(crate) fn new(config: Arc<ProxyConfig>) -> Option<Self> {
        if !config.has_confirmation() {
            return None;
        }
        // Validation loaded the key file once already; should it fail now, a random key only
        // makes approvals from other replicas fail (closed).
        let key = config
            .confirm
            .state_key_file
            .as_deref()
            .and_then(|p| mrtr::StateKey::load(p).ok());
        let book = match (key, &config.confirm.replay_dir) {
            (Some(key), Some(dir)) => mrtr::StateBook::shared(key, dir.clone()),
            // Validation requires a replay directory with a key file: without both, a random
            // key that no other process can verify.
            _ => mrtr::StateBook::new(mrtr::StateKey::random()),
        };
        Some(Gate {
            book,
            config,
            hints: Mutex::new(HashMap::new()),
            listing: Mutex::new(None),
        })
    }

    /// Whether a call to `tool` waits for the user's approval. A tool whose annotations decide
    /// it and are unknown ([`Verdict::Unlisted`]) waits: the gate fails closed.
    pub(crate) fn requires(&self, tool: &str) -> bool {
        self.verdict(tool) != Verdict::Free
    }

    /// What the gate says about a call to `tool`, with what it knows now.
    pub(crate) fn verdict(&self, tool: &str) -> Verdict {
        let configured = self.config.tool(tool);
        let facts = |hints: Hints| CallFacts {
            tool,
            tool_override: configured.and_then(|t| t.confirm),
            configured: configured.and_then(|t| t.classification),
            read_only_hint: hints.0,
            destructive_hint: hints.1,
        };
        let policy = &self.config.confirm;
        let known = self
            .hints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(tool)
            .copied();
        let decided = |yes: bool| if yes { Verdict::Gated } else { Verdict::Free };
        if let Some(hints) = known {
            return decided(policy.requires(facts(hints)));
        }
        let unannotated = policy.requires(facts((None, None)));
        let destructive = policy.requires(facts((Some(false), Some(true))));
        let read_only = policy.requires(facts((Some(true), Some(false))));
        if unannotated == destructive && unannotated == read_only {
            return decided(unannotated);
        }
        let listing = *self.listing.lock().unwrap_or_else(|e| e.into_inner());
        match listing {
            Some(l) if l.at.elapsed() < LISTING_FRESH => match l.answered {
                // Listed, and not among the tools: nothing says it is annotated.
                true => decided(unannotated),
                // The list did not come: fail closed.
                false => Verdict::Gated,
            },
            _ => Verdict::Unlisted,
        }
    }

    /// Whether the gate learned from a `tools/list` answer.
    pub(crate) fn has_listed(&self) -> bool {
        self.listing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|l| l.answered)
    }

    /// The proxy's own `tools/list` got no answer: calls whose gating depends on annotations
    /// are gated until a list comes (or [`LISTING_FRESH`] has passed, and it is tried again).
    pub(crate) fn listing_failed(&self) {
        *self.listing.lock().unwrap_or_else(|e| e.into_inner()) = Some(Listing {
            at: std::time::Instant::now(),
            answered: false,
        });
    }

    /// Learns the annotations of the tools in a `tools/list` result, if `message` is one.
    pub(crate) fn learn_tools(&self, message: &[u8]) {
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
        *self.listing.lock().unwrap_or_else(|e| e.into_inner()) = Some(Listing {
            at: std::time::Instant::now(),
            answered: true,
        });
    }

    /// The question for a call to `tool` with `arguments`.
    pub(crate) fn question(&self, tool: &str, arguments: Option<&Value>) -> String {
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

    pub(crate) fn book(&self) -> &mrtr::StateBook {
        &self.book
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.config.confirm.timeout
    }

    /// What to do with a gated call from a client that cannot be asked.
    pub(crate) fn unsupported(&self) -> Unsupported {
        self.config.confirm.unsupported
    }
}

/// A gate outcome with the digest of the arguments it was about.
pub(crate) fn gated(
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
pub(crate) fn settle(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(policy: &str) -> Gate {
        Gate::new(Arc::new(ProxyConfig::parse(policy).unwrap())).unwrap()
    }

    const LIST: &[u8] = br#"{"jsonrpc":"2.0","id":"mcp-otel-proxy-1","result":{"tools":[
        {"name":"wipe","annotations":{"destructiveHint":true}},
        {"name":"peek","annotations":{"readOnlyHint":true,"destructiveHint":false}}]}}"#;

    #[test]
    fn annotations_decide_only_once_they_are_known() {
        let g = gate("[confirm]\ndestructive = true\ntools = [\"drop_*\"]");
        // A glob decides without annotations; `destructive` needs them.
        assert_eq!(g.verdict("drop_table"), Verdict::Gated);
        assert_eq!(g.verdict("wipe"), Verdict::Unlisted);
        assert!(g.requires("wipe"), "unknown annotations fail closed");
        g.learn_tools(LIST);
        assert_eq!(g.verdict("wipe"), Verdict::Gated);
        assert_eq!(g.verdict("peek"), Verdict::Free);
        // Not in the list: not annotated, not gated (until the list is stale).
        assert_eq!(g.verdict("other"), Verdict::Free);
    }

    #[test]
    fn without_a_list_the_gate_fails_closed() {
        let g = gate("[confirm]\noperations = [\"delete\"]");
        // `delete_x` by its verb; a read-only annotation would free it.
        assert_eq!(g.verdict("delete_x"), Verdict::Unlisted);
        assert_eq!(
            g.verdict("create_x"),
            Verdict::Free,
            "no annotation makes it a delete"
        );
        g.listing_failed();
        assert_eq!(g.verdict("delete_x"), Verdict::Gated);
    }
}
