//! The demo's confirmation part: a tasks server whose `delete_task` asks the user first, with
//! the rmcp helper [`confirm`], and a client that answers its
//! elicitations from a script (yes, then no), as a user clicking in a real client would.

use super::tasks::TaskServer;
use crate::capture::rmcp::{Confirm, confirm, forward_to_inner};
use crate::record::ConfirmationOutcome;
use rmcp::model::*;
use rmcp::service::RequestContext;
use rmcp::{ClientHandler, ErrorData as McpError, RoleClient, RoleServer, ServerHandler};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The tasks server, with `delete_task` gated by the user's answer.
#[derive(Clone)]
pub struct GatedTasks {
    /// The tasks server every call goes to once allowed.
    pub inner: TaskServer,
}

impl ServerHandler for GatedTasks {
    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        if request.name == "delete_task" {
            let id = request
                .arguments
                .as_ref()
                .and_then(|a| a.get("id"))
                .and_then(|v| v.as_str())
                .unwrap_or("?")
                .to_owned();
            let question = format!("Delete the task {id}? This cannot be undone.");
            let outcome = match confirm(&context, &request, question, Duration::from_secs(30)).await
            {
                // A 2026-07-28 client is asked through its next call.
                Confirm::Ask(ask) => return Ok(ask),
                Confirm::Answered(outcome) => outcome,
            };
            if outcome != ConfirmationOutcome::Accepted {
                let text = format!(
                    "The user did not confirm deleting {id} ({}); the task was kept.",
                    outcome.as_str()
                );
                return Ok(CallToolResponse::Complete(CallToolResult::error(vec![
                    ContentBlock::text(text),
                ])));
            }
        }
        self.inner.call_tool(request, context).await
    }

    forward_to_inner! {
        request fn list_tools(Option<PaginatedRequestParams>) -> ListToolsResult;
        fn get_tool(name: &str) -> Option<Tool>;
        fn get_info() -> ServerConfig;
    }
}

/// A client that declares elicitation and answers each question with the next scripted
/// answer (true: accept with `confirm: true`; false: decline).
#[derive(Clone)]
pub(crate) struct ScriptedUser {
    pub(crate) answers: Arc<Mutex<VecDeque<bool>>>,
    pub(crate) name: String,
}

impl ClientHandler for ScriptedUser {
    async fn create_elicitation(
        &self,
        _request: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, McpError> {
        let yes = self
            .answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
            .unwrap_or(false);
        let answer = match yes {
            true => serde_json::json!({"action": "accept", "content": {"confirm": true}}),
            false => serde_json::json!({"action": "decline"}),
        };
        serde_json::from_value(answer).map_err(|e| McpError::internal_error(e.to_string(), None))
    }

    fn get_info(&self) -> ClientConfig {
        let capabilities: ClientCapabilities =
            serde_json::from_value(serde_json::json!({"elicitation": {"form": {}}}))
                .unwrap_or_default();
        ClientConfig::new(
            capabilities,
            Implementation::new(self.name.clone(), env!("CARGO_PKG_VERSION")),
        )
    }
}
