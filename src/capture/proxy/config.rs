//! The proxy's per-tool configuration (`--config FILE`, TOML): parse, then validate (every
//! problem collected and named by its field), then build.
//!
//! ```toml
//! [tools.update_task]
//! operation_type = "update"          # create | update | delete | write | read
//! resource_id = "/id"                # JSON pointer into the call's arguments
//! before = { tool = "get_task", args = { id = "/id" } }
//! before_timeout = "2s"              # optional, default 5s
//! ```
//!
//! The `[confirm]` table and `tools.NAME.confirm` say which calls wait for the user's approval
//! ([`policy`](super::confirm::policy) documents them).
//!
//! In `before.args`, a string value is a JSON pointer into the intercepted call's arguments
//! (`""` is the whole arguments object); any other value is passed as it is.

use super::confirm::policy::{self, ConfirmPolicy};
use crate::record::OperationType;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a before-state read may take unless a tool says otherwise.
pub(crate) const DEFAULT_BEFORE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file's path.
        path: PathBuf,
        /// Why reading failed.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML (or does not fit the configuration's shape).
    #[error("{path} is not valid TOML: {message}")]
    Syntax {
        /// The file's path.
        path: PathBuf,
        /// The TOML parser's message.
        message: String,
    },
    /// The file parsed but some values cannot be used.
    #[error("{path} is invalid: {}", .problems.join("; "))]
    Invalid {
        /// The file's path.
        path: PathBuf,
        /// Every problem found, each naming its field.
        problems: Vec<String>,
    },
}

pub(crate) use crate::capture::classify::Classification;

/// The read call that fetches a resource's state before a write.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct BeforeCapture {
    pub(crate) tool: String,
    /// Argument name → JSON pointer (string) or literal value.
    pub(crate) args: Map<String, Value>,
    pub(crate) timeout: Duration,
}

impl BeforeCapture {
    /// The read call's arguments for a call with `arguments`; `Err` names the pointer that
    /// found nothing.
    pub(crate) fn arguments_for(&self, arguments: Option<&Value>) -> Result<Value, String> {
        let empty = Value::Object(Map::new());
        let arguments = arguments.unwrap_or(&empty);
        let mut out = Map::with_capacity(self.args.len());
        for (name, spec) in &self.args {
            let value = match spec {
                Value::String(pointer) => arguments
                    .pointer(pointer)
                    .cloned()
                    .ok_or_else(|| format!("argument pointer {pointer:?} matched nothing"))?,
                literal => literal.clone(),
            };
            out.insert(name.clone(), value);
        }
        Ok(Value::Object(out))
    }
}

/// One tool's settings.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct ToolConfig {
    pub(crate) classification: Option<Classification>,
    /// JSON pointer into the arguments.
    pub(crate) resource_id: Option<String>,
    pub(crate) before: Option<BeforeCapture>,
    /// `confirm = true|false`: always or never ask before this tool runs.
    pub(crate) confirm: Option<bool>,
}

/// The whole configuration: settings per tool name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProxyConfig {
    pub(crate) tools: HashMap<String, ToolConfig>,
    /// The `[confirm]` table: which calls wait for the user's approval.
    pub(crate) confirm: ConfirmPolicy,
}

impl ProxyConfig {
    pub(crate) fn tool(&self, name: &str) -> Option<&ToolConfig> {
        self.tools.get(name)
    }

    /// True when some tool asks for a before-state read.
    pub(crate) fn has_before_capture(&self) -> bool {
        self.tools.values().any(|t| t.before.is_some())
    }

    /// True when some call may need the user's confirmation.
    pub(crate) fn has_confirmation(&self) -> bool {
        !self.confirm.is_empty() || self.tools.values().any(|t| t.confirm == Some(true))
    }

    pub(crate) fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ParseProblem::Syntax(message) => ConfigError::Syntax {
                path: path.to_owned(),
                message,
            },
            ParseProblem::Invalid(problems) => ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            },
        })
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Self, ParseProblem> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ParseProblem::Syntax(e.message().to_owned()))?;
        validate(&table).map_err(ParseProblem::Invalid)
    }
}

/// [`ProxyConfig::parse`]'s error, before a path is attached.
#[derive(Debug, PartialEq)]
pub enum ParseProblem {
    Syntax(String),
    Invalid(Vec<String>),
}

pub(crate) use crate::duration::parse_positive_duration as parse_duration;

fn is_pointer(s: &str) -> bool {
    s.is_empty() || s.starts_with('/')
}

fn toml_to_json(v: &toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => Value::from(*f),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => Value::Object(
            t.iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}

fn validate(table: &toml::Table) -> Result<ProxyConfig, Vec<String>> {
    let mut problems = Vec::new();
    let mut config = ProxyConfig::default();
    for key in table
        .keys()
        .filter(|k| !matches!(k.as_str(), "tools" | "confirm"))
    {
        problems.push(format!("unknown key `{key}` (expected `tools`, `confirm`)"));
    }
    if let Some(confirm) = table.get("confirm") {
        config.confirm = policy::validate(confirm, &mut problems);
    }
    match table.get("tools") {
        None => {}
        Some(toml::Value::Table(tools)) => {
            for (name, value) in tools {
                if let Some(tool) = validate_tool(name, value, &mut problems) {
                    config.tools.insert(name.clone(), tool);
                }
            }
        }
        Some(_) => problems.push("`tools` must be a table of tool names".to_owned()),
    }
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(problems)
    }
}

fn validate_tool(
    name: &str,
    value: &toml::Value,
    problems: &mut Vec<String>,
) -> Option<ToolConfig> {
    let at = format!("tools.{name}");
    let Some(table) = value.as_table() else {
        problems.push(format!("`{at}` must be a table"));
        return None;
    };
    let mut tool = ToolConfig::default();
    let mut timeout = DEFAULT_BEFORE_TIMEOUT;
    for (key, v) in table {
        match key.as_str() {
            "operation_type" => match v.as_str() {
                Some("read") => tool.classification = Some(Classification::Read),
                Some(s) => match s.parse::<OperationType>() {
                    Ok(op) => tool.classification = Some(Classification::Write(op)),
                    Err(_) => problems.push(format!(
                        "`{at}.operation_type` must be one of create, update, delete, write, \
                         read; got {s:?}"
                    )),
                },
                None => problems.push(format!("`{at}.operation_type` must be a string")),
            },
            "resource_id" => match v.as_str() {
                Some(p) if is_pointer(p) => tool.resource_id = Some(p.to_owned()),
                Some(p) => problems.push(format!(
                    "`{at}.resource_id` must be a JSON pointer starting with `/`, got {p:?}"
                )),
                None => problems.push(format!("`{at}.resource_id` must be a string")),
            },
            "before_timeout" => match v.as_str().map(parse_duration) {
                Some(Ok(d)) => timeout = d,
                Some(Err(e)) => problems.push(format!("`{at}.before_timeout`: {e}")),
                None => problems.push(format!(
                    "`{at}.before_timeout` must be a string such as \"2s\""
                )),
            },
            "before" => tool.before = validate_before(&at, v, problems),
            "confirm" => match v.as_bool() {
                Some(b) => tool.confirm = Some(b),
                None => problems.push(format!("`{at}.confirm` must be true or false")),
            },
            other => problems.push(format!(
                "unknown key `{at}.{other}` (expected operation_type, resource_id, before, \
                 before_timeout, confirm)"
            )),
        }
    }
    if let Some(b) = &mut tool.before {
        b.timeout = timeout;
    }
    Some(tool)
}

fn validate_before(at: &str, v: &toml::Value, problems: &mut Vec<String>) -> Option<BeforeCapture> {
    let Some(table) = v.as_table() else {
        problems.push(format!(
            "`{at}.before` must be a table like {{ tool = \"get_task\", args = {{ id = \"/id\" }} }}"
        ));
        return None;
    };
    let mut ok = true;
    for key in table
        .keys()
        .filter(|k| !matches!(k.as_str(), "tool" | "args"))
    {
        problems.push(format!(
            "unknown key `{at}.before.{key}` (expected tool, args)"
        ));
        ok = false;
    }
    let tool = match table.get("tool") {
        Some(toml::Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(_) => {
            problems.push(format!("`{at}.before.tool` must be a non-empty string"));
            None
        }
        None => {
            problems.push(format!("`{at}.before.tool` is missing"));
            None
        }
    };
    let mut args = Map::new();
    match table.get("args") {
        None => {}
        Some(toml::Value::Table(t)) => {
            for (k, v) in t {
                if let toml::Value::String(p) = v
                    && !is_pointer(p)
                {
                    problems.push(format!(
                        "`{at}.before.args.{k}` must be a JSON pointer starting with `/`, got {p:?}"
                    ));
                    ok = false;
                }
                args.insert(k.clone(), toml_to_json(v));
            }
        }
        Some(_) => {
            problems.push(format!("`{at}.before.args` must be a table"));
            ok = false;
        }
    }
    Some(BeforeCapture {
        tool: tool?,
        args,
        timeout: DEFAULT_BEFORE_TIMEOUT,
    })
    .filter(|_| ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_full_tool_entry_parses() {
        let c = ProxyConfig::parse(
            r#"
            [tools.update_task]
            operation_type = "update"
            resource_id = "/id"
            before = { tool = "get_task", args = { id = "/id", verbose = true } }
            before_timeout = "250ms"
            [tools.search_index]
            operation_type = "read"
            "#,
        )
        .unwrap();
        let t = c.tool("update_task").unwrap();
        assert_eq!(
            t.classification,
            Some(Classification::Write(OperationType::Update))
        );
        let b = t.before.as_ref().unwrap();
        assert_eq!(b.tool, "get_task");
        assert_eq!(b.timeout, Duration::from_millis(250));
        assert_eq!(
            b.arguments_for(Some(&json!({"id": "t1", "title": "x"}))),
            Ok(json!({"id": "t1", "verbose": true}))
        );
        assert!(
            b.arguments_for(Some(&json!({})))
                .unwrap_err()
                .contains("/id")
        );
        assert_eq!(
            c.tool("search_index").unwrap().classification,
            Some(Classification::Read)
        );
        assert!(c.has_before_capture());
    }

    #[test]
    fn every_problem_is_named() {
        let err = ProxyConfig::parse(
            r#"
            color = "blue"
            [tools.a]
            operation_type = "upsert"
            resource_id = "id"
            frobnicate = 1
            before = { args = { id = "id" } }
            before_timeout = "soon"
            "#,
        )
        .unwrap_err();
        let ParseProblem::Invalid(problems) = err else {
            panic!("{err:?}")
        };
        crate::testing::assert_problems(
            &problems,
            7,
            &[
                "unknown key `color`",
                "`tools.a.operation_type` must be one of",
                "\"upsert\"",
                "`tools.a.resource_id` must be a JSON pointer",
                "unknown key `tools.a.frobnicate`",
                "`tools.a.before.tool` is missing",
                "`tools.a.before.args.id` must be a JSON pointer",
                "`tools.a.before_timeout`",
            ],
        );
    }

    #[test]
    fn the_shipped_memory_policy_gates_its_deletes() {
        let c = ProxyConfig::parse(include_str!("../../../examples/confirm-memory.toml")).unwrap();
        let gate = crate::capture::proxy::confirm::Gate::new(std::sync::Arc::new(c)).unwrap();
        for tool in ["delete_entities", "delete_observations", "delete_relations"] {
            assert!(gate.requires(tool), "{tool}");
        }
        for tool in ["create_entities", "read_graph", "add_observations"] {
            assert!(!gate.requires(tool), "{tool}");
        }
    }

    #[test]
    fn a_tool_can_opt_in_or_out_of_confirmation() {
        let c = ProxyConfig::parse(
            r#"
            [confirm]
            operations = ["delete"]
            [tools.delete_cache]
            confirm = false
            [tools.publish]
            confirm = true
            [tools.x]
            confirm = "yes"
            "#,
        );
        let Err(ParseProblem::Invalid(p)) = c else {
            panic!("{c:?}")
        };
        assert_eq!(p, ["`tools.x.confirm` must be true or false"]);
    }

    #[test]
    fn syntax_errors_are_reported() {
        assert!(matches!(
            ProxyConfig::parse("[tools"),
            Err(ParseProblem::Syntax(_))
        ));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("3 fortnights").is_err());
    }
}
