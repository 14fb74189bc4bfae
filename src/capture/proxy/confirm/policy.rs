//! The confirmation policy: which calls the proxy holds until the user approves them, what it
//! asks, how long it waits, and what it does with a client that cannot be asked.
//!
//! ```toml
//! [confirm]
//! tools = ["delete_*"]                # tool-name globs (`*`, `?`)
//! operations = ["delete"]             # create | update | delete | write | writes (all four)
//! destructive = true                  # tools the server annotated `destructiveHint: true`
//! message = "Allow {tool} on {resource}? {arguments}"
//! arguments = ["entityNames"]         # the arguments `{arguments}` shows (default: all)
//! timeout = "60s"                     # default 120s
//! unsupported_client = "deny"         # deny (default: fail closed) | allow (run, unconfirmed)
//! state_key_file = "/etc/mcp-otel/confirm.key"  # 2026-07-28: the key that signs requestState
//!                                     # (≥ 32 bytes; share it between replicas); default random
//! replay_dir = "/var/lib/mcp-otel/confirm-spent"  # required with state_key_file: where every
//!                                     # replica holding the key marks an approval as used
//!
//! [tools.read_graph]
//! confirm = false                     # per tool: always (true) or never (false)
//! ```
//!
//! A call is gated when its tool says `confirm = true`, or (unless it says `false`) when any of
//! `tools`, `operations` and `destructive` matches it. Validation collects every problem, like
//! the rest of the configuration.

use crate::capture::classify::{Classification, verb_of};
use crate::record::OperationType;
use crate::redact::Redactor;
use serde_json::Value;
use std::time::Duration;

/// How long the proxy waits for an answer unless the policy says otherwise.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// The message the user sees unless the policy says otherwise.
pub(crate) const DEFAULT_MESSAGE: &str = "Allow the tool {tool} to run on {resource}?\n{arguments}";
/// One argument value is shown up to this many bytes.
pub(crate) const MAX_VALUE_LEN: usize = 200;
/// The whole message is capped at this many bytes.
pub(crate) const MAX_MESSAGE_LEN: usize = 2000;

/// What happens to a gated call from a client that did not declare elicitation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Unsupported {
    /// Refused with a tool error (fail closed).
    #[default]
    Deny,
    /// Forwarded, recorded as unconfirmed.
    Allow,
}

/// One piece of a message template.
#[derive(Clone, Debug, PartialEq)]
enum Piece {
    Text(String),
    Tool,
    Resource,
    Arguments,
    Argument(String),
}

/// The question shown to the user, with placeholders `{tool}`, `{resource}`, `{arguments}`
/// and `{arg.NAME}`; `{{` and `}}` are literal braces.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct MessageTemplate(Vec<Piece>);

impl MessageTemplate {
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(i) = rest.find(['{', '}']) {
            literal.push_str(&rest[..i]);
            let tail = &rest[i..];
            if tail.starts_with("{{") || tail.starts_with("}}") {
                literal.push(tail.as_bytes()[0] as char);
                rest = &tail[2..];
                continue;
            }
            if tail.starts_with('}') {
                return Err("has a `}` without its `{` (write `}}` for a brace)".to_owned());
            }
            let Some(end) = tail.find('}') else {
                return Err("has a `{` without its `}` (write `{{` for a brace)".to_owned());
            };
            let name = &tail[1..end];
            let piece = match name {
                "tool" => Piece::Tool,
                "resource" => Piece::Resource,
                "arguments" => Piece::Arguments,
                _ => match name.strip_prefix("arg.") {
                    Some(arg) if !arg.is_empty() => Piece::Argument(arg.to_owned()),
                    _ => {
                        return Err(format!(
                            "names an unknown placeholder `{{{name}}}` (expected {{tool}}, \
                             {{resource}}, {{arguments}} or {{arg.NAME}})"
                        ));
                    }
                },
            };
            if !literal.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut literal)));
            }
            pieces.push(piece);
            rest = &tail[end + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(MessageTemplate(pieces))
    }

    /// The message for a call to `tool` on `resource` with `arguments`: argument values are
    /// redacted, each capped at [`MAX_VALUE_LEN`], the whole at [`MAX_MESSAGE_LEN`].
    pub(crate) fn render(
        &self,
        tool: &str,
        resource: Option<&str>,
        arguments: Option<&Value>,
        shown: &[String],
    ) -> String {
        let mut redacted = arguments.cloned().unwrap_or(Value::Null);
        Redactor::default().redact_value(&mut redacted);
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Tool => out.push_str(tool),
                Piece::Resource => out.push_str(resource.unwrap_or("(no resource id)")),
                Piece::Argument(name) => match redacted.get(name) {
                    Some(v) => out.push_str(&capped(v)),
                    None => out.push_str("(absent)"),
                },
                Piece::Arguments => {
                    let Some(map) = redacted.as_object() else {
                        out.push_str("(no arguments)");
                        continue;
                    };
                    let lines: Vec<String> = map
                        .iter()
                        .filter(|(k, _)| shown.is_empty() || shown.contains(k))
                        .map(|(k, v)| format!("{k}: {}", capped(v)))
                        .collect();
                    out.push_str(&lines.join("\n"));
                }
            }
        }
        cap(out, MAX_MESSAGE_LEN)
    }
}

fn capped(v: &Value) -> String {
    let text = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    cap(text, MAX_VALUE_LEN)
}

fn cap(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s.push('…');
    s
}

/// The validated `[confirm]` table.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ConfirmPolicy {
    /// Tool-name globs.
    pub(crate) tools: Vec<String>,
    /// Operation types whose calls are gated.
    pub(crate) operations: Vec<OperationType>,
    /// Gate tools annotated `destructiveHint: true`.
    pub(crate) destructive: bool,
    pub(crate) message: MessageTemplate,
    /// The arguments `{arguments}` shows; empty means all.
    pub(crate) arguments: Vec<String>,
    pub(crate) timeout: Duration,
    pub(crate) unsupported: Unsupported,
    /// The file whose contents key the 2026-07-28 request states.
    pub(crate) state_key_file: Option<std::path::PathBuf>,
    /// The directory where the replicas sharing the key spend approvals.
    pub(crate) replay_dir: Option<std::path::PathBuf>,
}

impl Default for ConfirmPolicy {
    fn default() -> Self {
        ConfirmPolicy {
            tools: Vec::new(),
            operations: Vec::new(),
            destructive: false,
            message: MessageTemplate::parse(DEFAULT_MESSAGE).expect("the default parses"),
            arguments: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            unsupported: Unsupported::Deny,
            state_key_file: None,
            replay_dir: None,
        }
    }
}

/// What the gate knows about a call before it runs.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CallFacts<'a> {
    pub(crate) tool: &'a str,
    /// The tool's `confirm = true|false` in `[tools.NAME]`.
    pub(crate) tool_override: Option<bool>,
    /// The tool's configured classification.
    pub(crate) configured: Option<Classification>,
    pub(crate) read_only_hint: Option<bool>,
    pub(crate) destructive_hint: Option<bool>,
}

impl ConfirmPolicy {
    /// True when no rule can gate anything (then per-tool `confirm = true` still can).
    pub(crate) fn is_empty(&self) -> bool {
        self.tools.is_empty() && self.operations.is_empty() && !self.destructive
    }

    /// Whether a call with these facts must be confirmed before it runs.
    pub(crate) fn requires(&self, facts: CallFacts<'_>) -> bool {
        if let Some(decided) = facts.tool_override {
            return decided;
        }
        if self.tools.iter().any(|g| glob_match(g, facts.tool)) {
            return true;
        }
        if self.destructive && facts.destructive_hint == Some(true) {
            return true;
        }
        if self.operations.is_empty() {
            return false;
        }
        let op = match facts.configured {
            Some(Classification::Read) => None,
            Some(Classification::Write(op)) => Some(op),
            None if facts.read_only_hint == Some(true) => None,
            None => verb_of(facts.tool).unwrap_or(Some(OperationType::Write)),
        };
        op.is_some_and(|op| self.operations.contains(&op))
    }
}

/// `*` matches any run of characters, `?` one character; everything else itself.
pub(crate) fn glob_match(glob: &str, name: &str) -> bool {
    let (g, n): (Vec<char>, Vec<char>) = (glob.chars().collect(), name.chars().collect());
    let (mut gi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match g.get(gi) {
            Some('*') => {
                star = Some((gi, ni));
                gi += 1;
            }
            Some(c) if *c == '?' || *c == n[ni] => {
                gi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sg, sn)) => {
                    gi = sg + 1;
                    ni = sn + 1;
                    star = Some((sg, sn + 1));
                }
                None => return false,
            },
        }
    }
    g[gi..].iter().all(|c| *c == '*')
}

/// Validates the `[confirm]` table, naming every problem under `confirm.`.
pub(crate) fn validate(value: &toml::Value, problems: &mut Vec<String>) -> ConfirmPolicy {
    let mut policy = ConfirmPolicy::default();
    let Some(table) = value.as_table() else {
        problems.push("`confirm` must be a table".to_owned());
        return policy;
    };
    for (key, v) in table {
        let at = format!("confirm.{key}");
        match key.as_str() {
            "tools" => policy.tools = strings(&at, v, problems),
            "arguments" => policy.arguments = strings(&at, v, problems),
            "operations" => {
                for s in strings(&at, v, problems) {
                    match s.as_str() {
                        "writes" => policy.operations.extend([
                            OperationType::Create,
                            OperationType::Update,
                            OperationType::Delete,
                            OperationType::Write,
                        ]),
                        _ => match s.parse::<OperationType>() {
                            Ok(op) => policy.operations.push(op),
                            Err(_) => problems.push(format!(
                                "`{at}` entries must be create, update, delete, write or writes; \
                                 got {s:?}"
                            )),
                        },
                    }
                }
                policy.operations.sort_by_key(|o| o.as_str());
                policy.operations.dedup();
            }
            "destructive" => match v.as_bool() {
                Some(b) => policy.destructive = b,
                None => problems.push(format!("`{at}` must be true or false")),
            },
            "message" => match v.as_str().map(MessageTemplate::parse) {
                Some(Ok(t)) => policy.message = t,
                Some(Err(e)) => problems.push(format!("`{at}` {e}")),
                None => problems.push(format!("`{at}` must be a string")),
            },
            "timeout" => match v.as_str().map(crate::duration::parse_positive_duration) {
                Some(Ok(d)) => policy.timeout = d,
                Some(Err(e)) => problems.push(format!("`{at}`: {e}")),
                None => problems.push(format!("`{at}` must be a string such as \"60s\"")),
            },
            "unsupported_client" => match v.as_str() {
                Some("deny") => policy.unsupported = Unsupported::Deny,
                Some("allow") => policy.unsupported = Unsupported::Allow,
                Some(s) => problems.push(format!("`{at}` must be deny or allow, got {s:?}")),
                None => problems.push(format!("`{at}` must be a string (deny or allow)")),
            },
            "state_key_file" => match v.as_str() {
                Some(p) => match super::mrtr::StateKey::load(std::path::Path::new(p)) {
                    Ok(_) => policy.state_key_file = Some(p.into()),
                    Err(e) => problems.push(format!("`{at}`: {e}")),
                },
                None => problems.push(format!("`{at}` must be a path")),
            },
            "replay_dir" => match v.as_str() {
                Some(p) => match super::mrtr::check_replay_dir(std::path::Path::new(p)) {
                    Ok(()) => policy.replay_dir = Some(p.into()),
                    Err(e) => problems.push(format!("`{at}`: {e}")),
                },
                None => problems.push(format!("`{at}` must be a path")),
            },
            other => problems.push(format!(
                "unknown key `confirm.{other}` (expected tools, operations, destructive, \
                 message, arguments, timeout, unsupported_client, state_key_file, replay_dir)"
            )),
        }
    }
    if table.contains_key("state_key_file") && !table.contains_key("replay_dir") {
        problems.push(
            "`confirm.state_key_file` is set but `confirm.replay_dir` is not: a shared key lets \
             every replica (and a restarted proxy) verify an approval, so they must also share \
             where approvals are marked as used, or one approval could run a call twice"
                .to_owned(),
        );
    }
    policy
}

fn strings(at: &str, v: &toml::Value, problems: &mut Vec<String>) -> Vec<String> {
    let Some(items) = v.as_array() else {
        problems.push(format!("`{at}` must be a list of strings"));
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item.as_str() {
            Some(s) if !s.is_empty() => out.push(s.to_owned()),
            _ => problems.push(format!("`{at}[{i}]` must be a non-empty string")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(text: &str) -> Result<ConfirmPolicy, Vec<String>> {
        let v: toml::Table = text.parse().unwrap();
        let mut problems = Vec::new();
        let p = validate(&toml::Value::Table(v), &mut problems);
        if problems.is_empty() {
            Ok(p)
        } else {
            Err(problems)
        }
    }

    fn facts(tool: &str) -> CallFacts<'_> {
        CallFacts {
            tool,
            ..CallFacts::default()
        }
    }

    #[test]
    fn globs_classes_and_annotations_gate() {
        let p = policy(
            r#"tools = ["drop_*", "wipe?"]
               operations = ["delete"]
               destructive = true"#,
        )
        .unwrap();
        assert!(p.requires(facts("drop_table")));
        assert!(p.requires(facts("wipe1")));
        assert!(!p.requires(facts("wipe12")));
        assert!(p.requires(facts("delete_entities")), "the verb says delete");
        assert!(!p.requires(facts("create_entities")));
        assert!(p.requires(CallFacts {
            destructive_hint: Some(true),
            ..facts("frob")
        }));
        assert!(!p.requires(CallFacts {
            configured: Some(Classification::Read),
            ..facts("delete_cache_entry_view")
        }));
        assert!(!p.requires(CallFacts {
            tool_override: Some(false),
            ..facts("drop_table")
        }));
        assert!(ConfirmPolicy::default().requires(CallFacts {
            tool_override: Some(true),
            ..facts("anything")
        }));
        let writes = policy(r#"operations = ["writes"]"#).unwrap();
        assert!(
            writes.requires(facts("frobnicate")),
            "unclassified is `write`"
        );
        assert!(!writes.requires(CallFacts {
            read_only_hint: Some(true),
            ..facts("frobnicate")
        }));
    }

    #[test]
    fn the_message_names_the_tool_resource_and_redacted_capped_arguments() {
        let p = policy(
            r#"message = "Run {tool} on {resource}? names={arg.entityNames} {{ok}}\n{arguments}"
               arguments = ["entityNames", "password"]"#,
        )
        .unwrap();
        let args =
            json!({"entityNames": ["Alice"], "password": "hunter2", "note": "x".repeat(500)});
        let text = p
            .message
            .render("delete_entities", Some("Alice"), Some(&args), &p.arguments);
        assert!(text.starts_with("Run delete_entities on Alice? names=[\"Alice\"] {ok}\n"));
        assert!(!text.contains("hunter2"), "{text}");
        assert!(
            !text.contains("note"),
            "only the selected arguments: {text}"
        );
        let all = ConfirmPolicy::default()
            .message
            .render("t", None, Some(&args), &[]);
        assert!(all.contains("(no resource id)"));
        assert!(all.contains(&format!("note: {}…", "x".repeat(MAX_VALUE_LEN))));
    }

    #[test]
    fn every_problem_is_named() {
        let problems = policy(
            r#"tools = "delete_*"
               operations = ["delete", "upsert"]
               destructive = "yes"
               message = "Run {tool} {frob}"
               timeout = "soon"
               unsupported_client = "maybe"
               colour = 1"#,
        )
        .unwrap_err();
        crate::testing::assert_problems(
            &problems,
            7,
            &[
                "`confirm.tools` must be a list of strings",
                "\"upsert\"",
                "`confirm.destructive` must be true or false",
                "unknown placeholder `{frob}`",
                "`confirm.timeout`",
                "`confirm.unsupported_client` must be deny or allow",
                "unknown key `confirm.colour`",
            ],
        );
        assert!(MessageTemplate::parse("a { b").is_err());
        assert!(MessageTemplate::parse("a } b").is_err());
    }
}
