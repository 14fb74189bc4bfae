//! The audit tests' fixtures: a deterministic session of calls and a store holding it.

use chrono::{DateTime, Duration, Utc};
use mcp_otel::audit::{AuditOptions, AuditWriter};
use mcp_otel::record::{OperationType, Status, ToolCall, WriteOp};
use serde_json::json;
use std::path::{Path, PathBuf};

/// Call `i` of a deterministic session: reads and writes of every kind, some failing.
pub fn call(i: usize, at: DateTime<Utc>) -> ToolCall {
    let kinds = [
        "list_tasks",
        "create_task",
        "update_task",
        "delete_task",
        "get_task",
    ];
    let tool = kinds[i % kinds.len()];
    let mut c = ToolCall::new(tool, if i.is_multiple_of(2) { "alice" } else { "bob" });
    c.timestamp = at + Duration::milliseconds(i as i64);
    c.duration_ms = 1.5 + i as f64;
    c.context = Some(json!({ "project_id": format!("p{}", i % 3), "n": i }));
    if let Some(op) = task_operation(tool) {
        c.write = Some(
            WriteOp::new(op)
                .resource_id(format!("task-{i}"))
                .before(json!({ "title": format!("old {i}") }))
                .after(json!({ "title": format!("new {i}") }))
                .confirmed(Some(i % 4 != 3)),
        );
    }
    if i % 7 == 6 {
        c.status = Status::Error;
        c.error_code = Some("500".to_owned());
    }
    c
}

/// The write a task tool stands for (`create_task`: a create, …); `None` for the reads.
pub fn task_operation(tool: &str) -> Option<OperationType> {
    match tool {
        "create_task" => Some(OperationType::Create),
        "update_task" => Some(OperationType::Update),
        "delete_task" => Some(OperationType::Delete),
        _ => None,
    }
}

/// A call of `tool` by `user` at `at`, a write when `write` says so.
pub fn tool_call(tool: &str, user: &str, at: DateTime<Utc>, write: Option<WriteOp>) -> ToolCall {
    let mut c = ToolCall::new(tool, user);
    c.timestamp = at;
    c.write = write;
    c
}

/// The session of the review tests, `now` the end of the review window: a create outside the
/// window (30 hours ago), a confirmed create, a failed update (403), a read with a context, an
/// unconfirmed delete, and a `write` of unknown kind without confirmation.
pub fn review_session(now: DateTime<Utc>) -> Vec<ToolCall> {
    let call = tool_call;
    let h = |hours: i64| now - Duration::hours(hours);
    let mut failed_update = call(
        "update_task",
        "bob",
        h(3),
        Some(
            WriteOp::new(OperationType::Update)
                .resource_id("task-2")
                .before(json!({"title": "draft"}))
                .after(json!({"title": "final"}))
                .confirmed(Some(true)),
        ),
    );
    failed_update.status = Status::Error;
    failed_update.error_code = Some("403".to_owned());
    let mut read = call("list_tasks", "alice", h(1), None);
    read.context = Some(json!({"project_id": "apollo", "filters": {"done": false}}));
    vec![
        call(
            "create_task",
            "alice",
            h(30),
            Some(
                WriteOp::new(OperationType::Create)
                    .resource_id("task-old")
                    .confirmed(Some(true)),
            ),
        ),
        call(
            "create_task",
            "alice",
            h(5),
            Some(
                WriteOp::new(OperationType::Create)
                    .resource_id("task-1")
                    .after(json!({"title": "quarterly report"}))
                    .confirmed(Some(true)),
            ),
        ),
        failed_update,
        read,
        call(
            "delete_task",
            "mallory",
            h(2),
            Some(
                WriteOp::new(OperationType::Delete)
                    .resource_id("task-1")
                    .before(json!({"title": "quarterly report"}))
                    .confirmed(Some(false)),
            ),
        ),
        call(
            "set_owner",
            "alice",
            h(1) - Duration::minutes(1),
            Some(WriteOp::new(OperationType::Write).resource_id("task-3")),
        ),
    ]
}

/// The daily review query of the seed as PostgreSQL runs it: as written, `NOW() - INTERVAL
/// '1 day'` and all, with the one change that `user` is quoted (a bare `user` is the current
/// role there).
pub const SEED_QUERY_PG: &str = "SELECT timestamp, tool_name, \"user\", operation_type, \
    resource_id, before_state, after_state, user_confirmation \
    FROM mcp_logs \
    WHERE operation_type IS NOT NULL \
      AND timestamp > NOW() - INTERVAL '1 day' \
    ORDER BY timestamp DESC";

/// A store at `dir/audit.db` holding `n` calls, with a checkpoint every `every` rows.
pub fn store_with(dir: &Path, n: usize, every: u64) -> PathBuf {
    let path = dir.join("audit.db");
    let writer = AuditWriter::open(
        &path,
        AuditOptions {
            checkpoint_every_rows: every,
            ..AuditOptions::default()
        },
    )
    .unwrap();
    let start = Utc::now() - Duration::hours(1);
    for chunk in (0..n).collect::<Vec<_>>().chunks(5) {
        let calls = chunk.iter().map(|&i| call(i, start)).collect();
        writer.append_blocking(calls).unwrap();
    }
    drop(writer);
    path
}

/// A raw read-write connection, as an attacker with file access would have.
pub fn raw(path: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).unwrap()
}

/// The first column, as text, of every row that `sql` selects from the store at `path`
/// (opened read-only).
pub fn column(path: &Path, sql: &str) -> Vec<String> {
    mcp_otel::audit::store::open_ro(path)
        .unwrap()
        .prepare(sql)
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// `mcp-otel audit <args>`: its exit code, and its stdout followed by its stderr.
pub fn cli(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mcp-otel"))
        .arg("audit")
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}
