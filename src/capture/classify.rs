//! Write classification: which tool calls are writes, and of what kind.
//!
//! First match wins (`docs/design.md`, "Write classification"): explicit configuration per
//! tool → a server-provided audit block in `result._meta["io.mcp-otel/audit"]` →
//! `readOnlyHint: true` means read → tool-name verbs → otherwise `write`. Annotations are the
//! server's hints, not proof; the name verbs are a guess,
//! which is why `write` (not classified further) exists.
//!
//! [`resolve_write`] is the one implementation of that order, with the resource id and the
//! before/after state selection; the rmcp wrapper, the proxy and the collector's decoder (for
//! spans of other instrumentations) all call it.

use crate::record::{OperationType, WriteOp};
use crate::semconv as sc;
use serde_json::{Map, Value};

/// What a configuration says a tool is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Classification {
    Read,
    Write(OperationType),
}

/// Everything known about one call that bears on whether it wrote, and what.
///
/// Each source is optional; [`resolve_write`] takes them in `docs/design.md`'s order.
#[derive(Clone, Debug, Default)]
pub(crate) struct WriteEvidence<'a> {
    /// `params.name`.
    pub(crate) tool: &'a str,
    /// The operator's per-tool configuration.
    pub(crate) configured: Option<Classification>,
    /// A JSON pointer into the arguments that names the resource (configuration).
    pub(crate) configured_resource: Option<&'a str>,
    /// The tool's own report (`record_write` inside an rmcp tool), which wins over the block.
    pub(crate) reported: Option<WriteOp>,
    /// The tool result, when the server answered with one (`isError` or not).
    pub(crate) result: Option<&'a Value>,
    /// The JSON-RPC error code the server answered with instead of a result.
    pub(crate) rpc_error: Option<i64>,
    /// The tool's `readOnlyHint`.
    pub(crate) read_only: Option<bool>,
    /// `params.arguments`.
    pub(crate) arguments: Option<&'a Value>,
    /// A state the proxy read before forwarding the call.
    pub(crate) before_state: Option<Value>,
    /// The client's own confirmation flag.
    pub(crate) confirmation: Option<bool>,
}

/// The write a call did, or `None` for a read: the one implementation of the classification
/// order, resource id and state selection.
///
/// - operation: configuration → the tool's report → the `io.mcp-otel/audit` block →
///   `readOnlyHint: true` → the tool-name verb → `write`. A JSON-RPC error that says the tool
///   never ran (unknown tool, invalid arguments: the caller's mistakes) is no write unless the
///   tool reported one; a refusal or a failure of a tool that exists still is a write attempt.
/// - resource id: the configured pointer → the report/block → the arguments → for creates, the
///   id the server generated (in the result).
/// - before state: the report/block → the state the proxy read first.
/// - after state: the report/block → for a successful create or update, the result's state.
/// - confirmation: the report/block → the client's flag.
pub(crate) fn resolve_write(evidence: WriteEvidence<'_>) -> Option<WriteOp> {
    let WriteEvidence {
        tool,
        configured,
        configured_resource,
        reported,
        result,
        rpc_error,
        read_only,
        arguments,
        before_state,
        confirmation,
    } = evidence;
    let audit = result.and_then(|r| audit_block(r.get(sc::MCP_META).and_then(Value::as_object)));
    let stated = match (reported, audit) {
        (Some(mut own), Some(block)) => {
            // The tool's own report wins; the block fills what it left out.
            own.operation_type = own.operation_type.or(block.operation_type);
            own.resource_id = own.resource_id.or(block.resource_id);
            own.before_state = own.before_state.or(block.before_state);
            own.after_state = own.after_state.or(block.after_state);
            own.user_confirmation = own.user_confirmation.or(block.user_confirmation);
            Some(own)
        }
        (own, block) => own.or(block),
    };
    let never_ran = rpc_error.is_some_and(sc::is_caller_error);
    let op = match configured {
        Some(Classification::Read) => return None,
        Some(Classification::Write(op)) => op,
        None if never_ran && stated.as_ref().is_none_or(|s| s.operation_type.is_none()) => {
            return None;
        }
        None => classify(tool, None, stated.as_ref(), read_only)?,
    };
    let stated = stated.unwrap_or_default();
    let args = arguments.and_then(Value::as_object);
    let succeeded = result.is_some_and(|r| !is_tool_error(r));
    let configured_id = configured_resource
        .and_then(|p| arguments?.pointer(p))
        .and_then(scalar_text);
    let generated_id = || match op {
        OperationType::Create if succeeded => result.and_then(resource_id_from_result),
        _ => None,
    };
    let after = || match op {
        _ if succeeded && reads_result_state(op) => result.and_then(state_of_result),
        _ => None,
    };
    Some(WriteOp {
        operation_type: Some(op),
        resource_id: configured_id
            .or(stated.resource_id)
            .or_else(|| resource_id_from_args(args))
            .or_else(generated_id),
        before_state: stated.before_state.or(before_state),
        after_state: stated.after_state.or_else(after),
        user_confirmation: stated.user_confirmation.or(confirmation),
    })
}

/// Whether [`resolve_write`] reads a successful result's state (`structuredContent` or its
/// content) for a write of this kind: besides that, it reads only the result's `isError` and
/// its `_meta` (the audit block), which lets the proxy leave most results unparsed.
pub(crate) fn reads_result_state(op: OperationType) -> bool {
    matches!(op, OperationType::Create | OperationType::Update)
}

/// `result.isError: true`.
pub(crate) fn is_tool_error(result: &Value) -> bool {
    result.get(sc::RESULT_IS_ERROR).and_then(Value::as_bool) == Some(true)
}

/// The state a result reports: `structuredContent`, else the first text block parsed as JSON.
pub(crate) fn state_of_result(result: &Value) -> Option<Value> {
    if let Some(sc) = result
        .get(sc::RESULT_STRUCTURED_CONTENT)
        .filter(|v| !v.is_null())
    {
        return Some(sc.clone());
    }
    result
        .get("content")?
        .as_array()?
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .find_map(|t| serde_json::from_str::<Value>(t).ok())
        .filter(|v| v.is_object() || v.is_array())
}

/// The id a server generated for what it created: `id`, `resource_id` or one `<noun>_id` of
/// the result's state (`structuredContent`, else JSON text content).
pub(crate) fn resource_id_from_result(result: &Value) -> Option<String> {
    let state = state_of_result(result)?;
    let fields = state.as_object()?;
    let by_key = |k: &str| fields.get(k).and_then(scalar_text);
    by_key("id")
        .or_else(|| by_key("resource_id"))
        .or_else(|| single_noun_id(fields))
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Exactly one `<noun>_id` names the resource; several (task_id, project_id) do not.
fn single_noun_id(fields: &Map<String, Value>) -> Option<String> {
    let mut noun_ids = fields
        .iter()
        .filter(|(k, _)| k.ends_with("_id") && k.len() > 3);
    match (noun_ids.next(), noun_ids.next()) {
        (Some((_, v)), None) => scalar_text(v),
        _ => None,
    }
}

/// Verb prefixes (and their `-`/camelCase spellings are normalised to `_` first), by what they
/// say: a write of that type, or (`None`) a read.
const VERBS: &[(Option<OperationType>, &[&str])] = &[
    (
        Some(OperationType::Create),
        &["create", "add", "new", "insert"],
    ),
    (
        Some(OperationType::Update),
        &["update", "edit", "set", "move", "rename"],
    ),
    (Some(OperationType::Delete), &["delete", "remove", "drop"]),
    (
        None,
        &[
            "get", "list", "read", "search", "find", "query", "fetch", "open", "describe", "echo",
        ],
    ),
];

/// What the tool-name verb says: `Some(Some(op))` a write, `Some(None)` a read, `None` unknown.
pub(crate) fn verb_of(tool: &str) -> Option<Option<OperationType>> {
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
    VERBS
        .iter()
        .find(|(_, verbs)| verbs.contains(&first.as_str()))
        .map(|(op, _)| *op)
}

/// The audit block a server put in `result._meta`, when present and well-formed.
pub(crate) fn audit_block(result_meta: Option<&Map<String, Value>>) -> Option<WriteOp> {
    let block = result_meta?.get(sc::META_AUDIT)?.as_object()?;
    let operation_type = block
        .get("operation_type")
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<OperationType>().ok());
    let resource_id = block.get("resource_id").and_then(scalar_text);
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
/// `path`, `uri`, `name`, `source` (first match in that order; strings and numbers only). A
/// two-path tool (`move_file(source, destination)`) is about its source.
pub(crate) fn resource_id_from_args(args: Option<&Map<String, Value>>) -> Option<String> {
    let args = args?;
    let by_key = |k: &str| args.get(k).and_then(scalar_text);
    by_key("id")
        .or_else(|| by_key("resource_id"))
        .or_else(|| single_noun_id(args))
        .or_else(|| by_key("path"))
        .or_else(|| by_key("uri"))
        .or_else(|| by_key("name"))
        .or_else(|| by_key("source"))
}

/// The operation type of a call to `tool`, or `None` for a read.
///
/// `configured` is the per-tool configuration, `audit` the server's audit block, `read_only` the
/// tool's `readOnlyHint`.
pub(crate) fn classify(
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
    fn resolve_write_follows_the_order() {
        let result = json!({"content": [{"type": "text", "text": "{\"id\": \"n-7\"}"}]});
        let args = json!({"title": "x"});
        // A create whose id the server generated: taken from the result, with its state.
        let w = resolve_write(WriteEvidence {
            tool: "create_note",
            result: Some(&result),
            arguments: Some(&args),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(w.operation_type, Some(OperationType::Create));
        assert_eq!(w.resource_id.as_deref(), Some("n-7"));
        assert_eq!(w.after_state, Some(json!({"id": "n-7"})));
        // Configured read beats every verb; unknown tool (the caller's mistake) is no write.
        let read = WriteEvidence {
            tool: "delete_x",
            configured: Some(Classification::Read),
            ..Default::default()
        };
        assert_eq!(resolve_write(read), None);
        let unknown = WriteEvidence {
            tool: "delete_x",
            rpc_error: Some(-32602),
            ..Default::default()
        };
        assert_eq!(resolve_write(unknown), None);
        // A refused or failed delete still is a delete attempt.
        let refused = WriteEvidence {
            tool: "delete_x",
            arguments: Some(&json!({"id": 3})),
            ..Default::default()
        };
        let w = resolve_write(refused).unwrap();
        assert_eq!(w.operation_type, Some(OperationType::Delete));
        assert_eq!(w.resource_id.as_deref(), Some("3"));
        // The tool's report beats the block, the block fills the rest; two paths → source.
        let block = json!({"_meta": {"io.mcp-otel/audit": {"operation_type": "delete",
            "before_state": {"v": 1}}}});
        let w = resolve_write(WriteEvidence {
            tool: "move_file",
            reported: Some(WriteOp::new(OperationType::Update)),
            result: Some(&block),
            arguments: Some(&json!({"source": "/a", "destination": "/b"})),
            confirmation: Some(true),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(w.operation_type, Some(OperationType::Update));
        assert_eq!(w.before_state, Some(json!({"v": 1})));
        assert_eq!(w.resource_id.as_deref(), Some("/a"));
        assert_eq!(w.user_confirmation, Some(true));
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
