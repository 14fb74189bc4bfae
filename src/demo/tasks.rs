//! A real rmcp MCP server with in-memory tasks: the example every test and the demo drive.
//!
//! Tools: `list_tasks`, `get_task` (read-only), `create_task`, `update_task`, `delete_task`.
//! Writes report their true state through [`record_write`]: after state on create, before and
//! after on update, before on delete. The client's `io.mcp-otel/user_confirmation` flag in
//! `params._meta` is picked up by the wrapper. An unknown task id is a tool error
//! (`isError: true`), as the MCP spec asks for errors the model can act on.

use crate::capture::record_write;
use crate::record::{OperationType, WriteOp};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::{ServerHandler, schemars, tool, tool_handler, tool_router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// One task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub(crate) struct Task {
    pub(crate) id: String,
    pub(crate) project_id: String,
    pub(crate) title: String,
    /// `open`, `in_progress` or `done`.
    pub(crate) status: String,
    /// ISO date, e.g. `2026-12-01`.
    pub(crate) due_date: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct ListArgs {
    /// Only tasks of this project.
    pub(crate) project_id: Option<String>,
    /// Only tasks with this status.
    pub(crate) status: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct IdArgs {
    /// The task id, e.g. `t1`.
    pub(crate) id: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct CreateArgs {
    pub(crate) project_id: String,
    pub(crate) title: String,
    pub(crate) due_date: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct UpdateArgs {
    pub(crate) id: String,
    pub(crate) title: Option<String>,
    /// `open`, `in_progress` or `done`.
    pub(crate) status: Option<String>,
    pub(crate) due_date: Option<String>,
}

#[derive(Debug, Default)]
struct Store {
    tasks: BTreeMap<String, Task>,
    next_id: u64,
}

/// The tasks server. Clones share one store.
#[derive(Clone)]
pub struct TaskServer {
    store: Arc<Mutex<Store>>,
    tool_router: ToolRouter<Self>,
}

impl Default for TaskServer {
    fn default() -> Self {
        Self::new()
    }
}

const STATUSES: &[&str] = &["open", "in_progress", "done"];

fn not_found(id: &str) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(format!("task {id:?} not found"))])
}

fn task_result(task: &Task) -> CallToolResult {
    CallToolResult::structured(json!(task))
}

fn bad_status(status: &str) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(format!(
        "status must be one of {STATUSES:?}, got {status:?}"
    ))])
}

impl TaskServer {
    /// An empty server.
    pub(crate) fn new() -> Self {
        TaskServer {
            store: Arc::default(),
            tool_router: Self::tool_router(),
        }
    }

    /// A server with a few tasks in project `p1` and `p2`.
    pub fn with_sample_tasks() -> Self {
        let server = Self::new();
        {
            let mut store = server.store.lock().unwrap();
            for (project, title, status, due) in [
                ("p1", "Draft the Q4 report", "open", Some("2026-12-01")),
                ("p1", "Review the budget", "in_progress", None),
                ("p2", "Plan the offsite", "open", Some("2027-01-15")),
            ] {
                store.next_id += 1;
                let id = format!("t{}", store.next_id);
                store.tasks.insert(
                    id.clone(),
                    Task {
                        id,
                        project_id: project.into(),
                        title: title.into(),
                        status: status.into(),
                        due_date: due.map(Into::into),
                    },
                );
            }
        }
        server
    }

    /// The ids of the tasks it holds now, sorted (for tests and the demo).
    pub fn task_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.lock().tasks.keys().cloned().collect();
        ids.sort();
        ids
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[tool_router]
impl TaskServer {
    #[tool(
        description = "List tasks, optionally filtered by project and status",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn list_tasks(&self, Parameters(args): Parameters<ListArgs>) -> CallToolResult {
        let store = self.lock();
        let tasks: Vec<&Task> = store
            .tasks
            .values()
            .filter(|t| args.project_id.as_ref().is_none_or(|p| &t.project_id == p))
            .filter(|t| args.status.as_ref().is_none_or(|s| &t.status == s))
            .collect();
        CallToolResult::structured(json!({ "tasks": tasks }))
    }

    #[tool(
        description = "Get one task by id",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn get_task(&self, Parameters(IdArgs { id }): Parameters<IdArgs>) -> CallToolResult {
        match self.lock().tasks.get(&id) {
            Some(t) => task_result(t),
            None => not_found(&id),
        }
    }

    #[tool(
        description = "Create a task in a project",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn create_task(&self, Parameters(args): Parameters<CreateArgs>) -> CallToolResult {
        let mut store = self.lock();
        store.next_id += 1;
        let id = format!("t{}", store.next_id);
        let task = Task {
            id: id.clone(),
            project_id: args.project_id,
            title: args.title,
            status: "open".into(),
            due_date: args.due_date,
        };
        store.tasks.insert(id.clone(), task.clone());
        record_write(
            WriteOp::new(OperationType::Create)
                .resource_id(id)
                .after(json!(task)),
        );
        task_result(&task)
    }

    #[tool(
        description = "Change a task's title, status or due date",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn update_task(&self, Parameters(args): Parameters<UpdateArgs>) -> CallToolResult {
        if let Some(s) = args.status.as_deref().filter(|s| !STATUSES.contains(s)) {
            return bad_status(s);
        }
        let mut store = self.lock();
        let Some(task) = store.tasks.get_mut(&args.id) else {
            return not_found(&args.id);
        };
        let before = json!(task);
        if let Some(t) = args.title {
            task.title = t;
        }
        if let Some(s) = args.status {
            task.status = s;
        }
        if let Some(d) = args.due_date {
            task.due_date = Some(d);
        }
        record_write(
            WriteOp::new(OperationType::Update)
                .resource_id(args.id)
                .before(before)
                .after(json!(task)),
        );
        task_result(task)
    }

    #[tool(
        description = "Delete a task",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn delete_task(&self, Parameters(IdArgs { id }): Parameters<IdArgs>) -> CallToolResult {
        let Some(task) = self.lock().tasks.remove(&id) else {
            return not_found(&id);
        };
        record_write(
            WriteOp::new(OperationType::Delete)
                .resource_id(id)
                .before(json!(task)),
        );
        CallToolResult::structured(json!({ "deleted": task.id }))
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for TaskServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                "mcp-otel-tasks",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions("In-memory tasks: list, get, create, update, delete.")
    }
}
