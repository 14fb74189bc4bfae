//! Write classification: which tool calls are writes, and of what kind.
//!
//! First match wins (DESIGN.md): explicit configuration per tool → a server-provided audit block
//! in `result._meta["io.mcp-otel/audit"]` → `readOnlyHint: true` means read → tool-name verbs →
//! otherwise `write`. Annotations are the server's hints, not proof; the name verbs are a guess,
//! which is why `write` (not classified further) exists.

use crate::record::{OperationType, WriteOp};
use crate::semconv as sc;
use serde_json::Value;

/// Verb prefixes (and their `-`/camelCase spellings are normalised to `_` first).
const VERBS: &[(&str, Option<OperationType>)] = &[
    ("create", Some(OperationType::Create)),
    ("add", Some(OperationType::Create)),
    ("new", Some(OperationType::Create)),
    ("insert", Some(OperationType::Create)),
    ("update", Some(OperationType::Update)),
    ("edit", Some(OperationType::Update)),
    ("set", Some(OperationType::Update)),
    ("move", Some(OperationType::Update)),
    ("rename", Some(OperationType::Update)),
    ("delete", Some(OperationType::Delete)),
    ("remove", Some(OperationType::Delete)),
    ("drop", Some(OperationType::Delete)),
    ("get", None),
    ("list", None),
    ("read", None),
    ("search", None),
    ("find", None),
    ("query", None),
    ("fetch", None),
    ("open", None),
    ("describe", None),
    ("echo", None),
];

/// What the tool-name verb says: `Some(Some(op))` a write, `Some(None)` a read, `None` unknown.
pub fn verb_of(tool: &str) -> Option<Option<OperationType>> {
    let first: String = tool
        .chars()
        .take_while(|c| c.is_ascii_lowercase())
        .collect();
    let rest = &tool[first.len()..];
    // The verb must be a whole word: `create_task`, `createTask`, `create-task`, `create`.
    let whole = rest.is_empty()
        || rest.starts_with(['_', '-', '.'])
        || rest.starts_with(|c: char| c.is_ascii_uppercase());
    if !whole {
        return None;
    }
    VERBS.iter().find(|(v, _)| *v == first).map(|(_, op)| *op)
}

/// The audit block a server put in `result._meta`, when present and well-formed.
pub fn audit_block(result_meta: Option<&serde_json::Map<String, Value>>) -> Option<WriteOp> {
    let block = result_meta?.get(sc::META_AUDIT)?.as_object()?;
    let operation_type = block
        .get("operation_type")
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<OperationType>().ok());
    let resource_id = block.get("resource_id").and_then(|v| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    });
    let state = |k: &str| block.get(k).filter(|v| !v.is_null()).cloned();
    let user_confirmation = block.get("user_confirmation").and_then(Value::as_bool);
    Some(WriteOp {
        operation_type,
        resource_id,
        before_state: state("before_state"),
        after_state: state("after_state"),
        user_confirmation,
    })
}

/// The resource a call is about, from its arguments: `id`, `resource_id`, a `<noun>_id`, then
/// `path`, `uri`, `name` (first match in that order; strings and numbers only).
pub fn resource_id_from_args(args: Option<&serde_json::Map<String, Value>>) -> Option<String> {
    let args = args?;
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let by_key = |k: &str| args.get(k).and_then(text);
    by_key("id")
        .or_else(|| by_key("resource_id"))
        .or_else(|| {
            let mut noun_ids = args
                .iter()
                .filter(|(k, _)| k.ends_with("_id") && k.len() > 3);
            // Exactly one `<noun>_id` names the resource; several (task_id, project_id) do not.
            match (noun_ids.next(), noun_ids.next()) {
                (Some((_, v)), None) => text(v),
                _ => None,
            }
        })
        .or_else(|| by_key("path"))
        .or_else(|| by_key("uri"))
        .or_else(|| by_key("name"))
}

/// The operation type of a call to `tool`, or `None` for a read.
///
/// `configured` is the per-tool configuration, `audit` the server's audit block, `read_only` the
/// tool's `readOnlyHint`.
pub fn classify(
    tool: &str,
    configured: Option<OperationType>,
    audit: Option<&WriteOp>,
    read_only: Option<bool>,
) -> Option<OperationType> {
    if let Some(op) = configured {
        return Some(op);
    }
    if let Some(op) = audit.and_then(|a| a.operation_type) {
        return Some(op);
    }
    if read_only == Some(true) {
        return None;
    }
    match verb_of(tool) {
        Some(op) => op,
        None => Some(OperationType::Write),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn first_match_wins() {
        use OperationType::*;
        assert_eq!(classify("create_task", None, None, None), Some(Create));
        assert_eq!(classify("createTask", None, None, None), Some(Create));
        assert_eq!(
            classify("delete_entities", None, None, Some(false)),
            Some(Delete)
        );
        assert_eq!(classify("read_graph", None, None, Some(true)), None);
        assert_eq!(classify("get_task", None, None, None), None);
        assert_eq!(classify("archive_task", None, None, None), Some(Write));
        // `settle_invoice` is not `set_…`.
        assert_eq!(classify("settle_invoice", None, None, None), Some(Write));
        // readOnlyHint beats the verb; configuration and the audit block beat both.
        assert_eq!(classify("delete_cache_entry", None, None, Some(true)), None);
        let audit = WriteOp::new(Update);
        assert_eq!(
            classify("get_task", None, Some(&audit), Some(true)),
            Some(Update)
        );
        assert_eq!(
            classify("get_task", Some(Delete), Some(&audit), None),
            Some(Delete)
        );
    }

    #[test]
    fn resource_id_comes_from_the_arguments() {
        let id = |v: serde_json::Value| resource_id_from_args(v.as_object());
        assert_eq!(id(json!({"id": "t1", "name": "x"})).as_deref(), Some("t1"));
        assert_eq!(id(json!({"task_id": 7})).as_deref(), Some("7"));
        assert_eq!(id(json!({"task_id": 7, "project_id": "p"})), None);
        assert_eq!(id(json!({"path": "/a/b"})).as_deref(), Some("/a/b"));
        assert_eq!(id(json!({"filters": {}})), None);
    }

    #[test]
    fn audit_block_is_read_from_result_meta() {
        let meta = json!({"io.mcp-otel/audit": {
            "operation_type": "update", "resource_id": 42,
            "before_state": {"a": 1}, "after_state": {"a": 2}}});
        let w = audit_block(meta.as_object()).unwrap();
        assert_eq!(w.operation_type, Some(OperationType::Update));
        assert_eq!(w.resource_id.as_deref(), Some("42"));
        assert_eq!(w.after_state, Some(json!({"a": 2})));
        assert_eq!(audit_block(json!({"other": 1}).as_object()), None);
    }
}
