//! The official MCP Python SDK client drives `examples/tasks_server` (mcp-otel's rmcp wrapper
//! around a real rmcp server) over stdio while an independent OTLP/gRPC receiver (grpcio + the
//! official opentelemetry-proto types) collects the spans it exports.
//!
//! What a user relies on: each tool call arrives as one span with the official MCP attribute
//! names, writes carry their true before/after state, the client's trace context is the parent,
//! a failing call is an error, no secret argument leaves the process, the JSON log has the
//! seed's flat fields, and the client sees exactly what the server returned.
//!
//! Peers: `bash scripts/setup-peers.sh` (a missing peer fails these tests).

mod support;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::{McpDrive, SpanReceiver, closed_port, example_bin, read_json_lines, tempdir};

const SECRET: &str = "sk-live-123456";
const PARENT_TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT_SPAN_ID: &str = "b7ad6b7169203331";
/// The protocol revision `mcp_drive.py` negotiates.
const PROTOCOL_VERSION: &str = "2025-11-25";
/// OTLP `Span.flags`: the parent-is-remote bit is known (0x100) and set (0x200).
const FLAGS_PARENT_IS_REMOTE: u64 = 0x300;

fn t1() -> Value {
    json!({"id": "t1", "project_id": "p1", "title": "Draft the Q4 report", "status": "open",
           "due_date": "2026-12-01"})
}

fn t2() -> Value {
    json!({"id": "t2", "project_id": "p1", "title": "Review the budget", "status": "in_progress",
           "due_date": null})
}

fn t3() -> Value {
    json!({"id": "t3", "project_id": "p2", "title": "Plan the offsite", "status": "open",
           "due_date": "2027-01-15"})
}

fn with(mut task: Value, key: &str, value: &str) -> Value {
    task[key] = json!(value);
    task
}

/// One scripted session against the instrumented tasks server, and everything it left behind.
struct Session {
    steps: Vec<Value>,
    spans: Vec<Value>,
    log_lines: Vec<Value>,
    log_text: String,
    started: DateTime<Utc>,
    ended: DateTime<Utc>,
}

/// Runs `script` with `--client-name client`, the server exporting to a fresh receiver and
/// logging to a fresh file, and waits for the spans of `calls` tool calls.
fn run_session(script: &Value, client: &str, extra_env: &[(&str, &str)], calls: usize) -> Session {
    let server = example_bin("tasks_server");
    let dir = tempdir();
    let log = dir.path().join("calls.jsonl");
    let mut receiver = SpanReceiver::start(calls, Duration::from_secs(60));
    let mut drive = McpDrive::new([&server])
        .client_name(client)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("MCP_OTEL_LOG", log.to_str().expect("a UTF-8 temp path"))
        .timeout(Duration::from_secs(30));
    for (k, v) in extra_env {
        drive = drive.env(*k, *v);
    }
    let started = Utc::now();
    let steps = drive.run(script);
    let ended = Utc::now();
    let spans = receiver.collect(calls, Duration::from_secs(30));
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    let log_lines = read_json_lines(&log);
    Session {
        steps,
        spans,
        log_lines,
        log_text,
        started,
        ended,
    }
}

fn attrs(span: &Value) -> &serde_json::Map<String, Value> {
    span["attributes"]
        .as_object()
        .unwrap_or_else(|| panic!("span without attributes: {span}"))
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    attrs(span)
        .get(key)
        .unwrap_or_else(|| panic!("span {} has no {key}: {span:#}", span["name"]))
}

fn attr_str<'a>(span: &'a Value, key: &str) -> &'a str {
    attr(span, key)
        .as_str()
        .unwrap_or_else(|| panic!("{key} of {} is not a string: {span:#}", span["name"]))
}

/// A `mcp_otel.*_state` attribute: a JSON document in a string.
fn state(span: &Value, key: &str) -> Value {
    serde_json::from_str(attr_str(span, key))
        .unwrap_or_else(|e| panic!("{key} of {} is not JSON ({e}): {span:#}", span["name"]))
}

fn assert_absent(span: &Value, keys: &[&str]) {
    for key in keys {
        assert!(
            !attrs(span).contains_key(*key),
            "span {} must not carry {key}: {span:#}",
            span["name"]
        );
    }
}

/// The spans keyed by tool name; each tool is called once per test script.
fn by_tool(spans: &[Value]) -> BTreeMap<String, Value> {
    let mut map = BTreeMap::new();
    for span in spans {
        let tool = attr_str(span, "gen_ai.tool.name").to_owned();
        let dup = map.insert(tool.clone(), span.clone());
        assert!(
            dup.is_none(),
            "two spans for {tool}: {:#?}",
            spans.iter().map(|s| &s["name"]).collect::<Vec<_>>()
        );
    }
    map
}

/// Fails if `text` contains the secret argument anywhere.
fn assert_no_secret(what: &str, text: &str) {
    assert!(
        !text.contains(SECRET),
        "the secret {SECRET:?} leaked into {what}: {text}"
    );
}

const WRITE_KEYS: &[&str] = &[
    "mcp_otel.operation_type",
    "mcp_otel.resource_id",
    "mcp_otel.before_state",
    "mcp_otel.after_state",
    "mcp_otel.user_confirmation",
];

#[test]
fn reads_writes_and_a_failing_call_become_spans_and_log_lines() {
    let t0 = Instant::now();
    let client = "alice-laptop";
    let calls = [
        "create_task",
        "update_task",
        "delete_task",
        "get_task",
        "list_tasks",
    ];
    let script = json!([
        {"call": "create_task",
         "args": {"project_id": "p1", "title": "Ship the release", "api_key": SECRET},
         "meta": {"traceparent": format!("00-{PARENT_TRACE_ID}-{PARENT_SPAN_ID}-01"),
                  "io.mcp-otel/user_confirmation": true}},
        {"call": "update_task", "args": {"id": "t1", "status": "done"}},
        {"call": "delete_task", "args": {"id": "t2"}},
        {"call": "get_task", "args": {"id": "t404"}},
        {"call": "list_tasks", "args": {"project_id": "p1"}},
    ]);
    let s = run_session(&script, client, &[], calls.len());

    // The client's view: the writes worked, the missing task is a tool error.
    for (step, tool) in s.steps.iter().zip(calls) {
        assert_eq!(step["tool"], tool);
        assert_eq!(step["is_error"], tool == "get_task", "{step}");
    }
    let created = s.steps[0]["structured_content"].clone();
    let new_id = created["id"]
        .as_str()
        .expect("create_task returns the new id");

    // One span per call, no more, with the official MCP names.
    assert_eq!(s.spans.len(), calls.len(), "{:#?}", s.spans);
    let spans = by_tool(&s.spans);
    let mut request_ids = Vec::new();
    for tool in calls {
        let span = &spans[tool];
        assert_eq!(span["name"], format!("tools/call {tool}"));
        assert_eq!(span["kind"], "server");
        assert_eq!(attr_str(span, "mcp.method.name"), "tools/call");
        assert_eq!(attr_str(span, "gen_ai.tool.name"), tool);
        assert_eq!(attr_str(span, "gen_ai.operation.name"), "execute_tool");
        assert_eq!(attr_str(span, "enduser.id"), client);
        assert_eq!(attr_str(span, "mcp.protocol.version"), PROTOCOL_VERSION);
        assert_eq!(attr_str(span, "network.transport"), "pipe");
        assert_eq!(
            span["resource_attributes"]["service.name"],
            "mcp-otel-tasks"
        );
        let id: i64 = attr_str(span, "jsonrpc.request.id")
            .parse()
            .unwrap_or_else(|_| panic!("jsonrpc.request.id is the request's integer id: {span}"));
        request_ids.push(id);
        assert_no_secret(&format!("the span of {tool}"), &span.to_string());
    }
    assert!(
        request_ids.windows(2).all(|w| w[0] < w[1]),
        "each span carries its own request's id, in call order: {request_ids:?}"
    );

    // create_task: child of the client's traceparent, confirmed, the new task as after state.
    let create = &spans["create_task"];
    assert_eq!(create["trace_id"], PARENT_TRACE_ID);
    assert_eq!(create["parent_span_id"], PARENT_SPAN_ID);
    let flags = create["flags"].as_u64().expect("flags");
    assert_eq!(
        flags & FLAGS_PARENT_IS_REMOTE,
        FLAGS_PARENT_IS_REMOTE,
        "parent is remote"
    );
    assert_eq!(attr_str(create, "mcp_otel.status"), "success");
    assert_ne!(create["status_code"], "error");
    assert_absent(
        create,
        &["error.type", "mcp_otel.error_code", "mcp_otel.before_state"],
    );
    assert_eq!(attr_str(create, "mcp_otel.operation_type"), "create");
    assert_eq!(attr_str(create, "mcp_otel.resource_id"), new_id);
    assert_eq!(state(create, "mcp_otel.after_state"), created);
    assert_eq!(
        created,
        json!({"id": new_id, "project_id": "p1", "title": "Ship the release", "status": "open",
               "due_date": null})
    );
    assert_eq!(attr(create, "mcp_otel.user_confirmation"), &json!(true));
    let context: Value = serde_json::from_str(attr_str(create, "mcp_otel.context")).unwrap();
    assert_eq!(
        context,
        json!({"project_id": "p1", "title": "Ship the release", "api_key": "[REDACTED]"})
    );

    // update_task: the true state before and after.
    let update = &spans["update_task"];
    assert_eq!(attr_str(update, "mcp_otel.operation_type"), "update");
    assert_eq!(attr_str(update, "mcp_otel.resource_id"), "t1");
    assert_eq!(state(update, "mcp_otel.before_state"), t1());
    assert_eq!(
        state(update, "mcp_otel.after_state"),
        with(t1(), "status", "done")
    );
    assert_eq!(
        state(update, "mcp_otel.after_state"),
        s.steps[1]["structured_content"]
    );

    // delete_task: what was deleted.
    let delete = &spans["delete_task"];
    assert_eq!(attr_str(delete, "mcp_otel.operation_type"), "delete");
    assert_eq!(attr_str(delete, "mcp_otel.resource_id"), "t2");
    assert_eq!(state(delete, "mcp_otel.before_state"), t2());
    assert_absent(delete, &["mcp_otel.after_state"]);

    // The confirmation was given for the create only; unknown is absent, not false.
    for tool in ["update_task", "delete_task", "get_task", "list_tasks"] {
        assert_absent(&spans[tool], &["mcp_otel.user_confirmation"]);
    }
    // Calls without a traceparent are roots of their own traces.
    for tool in ["update_task", "delete_task", "get_task", "list_tasks"] {
        assert_eq!(spans[tool]["parent_span_id"], Value::Null, "{tool}");
        assert_ne!(spans[tool]["trace_id"], PARENT_TRACE_ID, "{tool}");
    }
    for tool in ["create_task", "update_task", "delete_task", "list_tasks"] {
        assert_eq!(
            attr_str(&spans[tool], "mcp_otel.status"),
            "success",
            "{tool}"
        );
        assert_ne!(spans[tool]["status_code"], "error", "{tool}");
        assert_absent(&spans[tool], &["error.type", "mcp_otel.error_code"]);
    }

    // get_task of a missing id: a tool error, and a read.
    let get = &spans["get_task"];
    assert_eq!(get["status_code"], "error");
    assert_eq!(attr_str(get, "error.type"), "tool_error");
    assert_eq!(attr_str(get, "mcp_otel.status"), "error");
    assert_eq!(attr_str(get, "mcp_otel.error_code"), "tool_error");
    assert_absent(get, WRITE_KEYS);

    // list_tasks: a read has no write fields at all.
    assert_absent(&spans["list_tasks"], WRITE_KEYS);

    // The JSON log: one line per call, in call order, the seed's flat fields.
    assert_no_secret("the JSON log", &s.log_text);
    assert_eq!(s.log_lines.len(), calls.len(), "{}", s.log_text);
    for (line, tool) in s.log_lines.iter().zip(calls) {
        assert_eq!(line["tool_name"], tool, "{line}");
        assert_eq!(line["user"], client, "{line}");
        let ts = line["timestamp"].as_str().expect("timestamp is a string");
        let parsed = DateTime::parse_from_rfc3339(ts)
            .unwrap_or_else(|e| panic!("timestamp {ts:?} is not RFC 3339: {e}"))
            .with_timezone(&Utc);
        assert_eq!(
            ts,
            parsed.to_rfc3339_opts(SecondsFormat::Millis, true),
            "UTC with milliseconds and Z"
        );
        let slack = chrono::Duration::milliseconds(5);
        assert!(
            parsed >= s.started - slack && parsed <= s.ended,
            "{ts} is the call's start, within the session {} .. {}",
            s.started,
            s.ended
        );
        let ms = line["duration_ms"]
            .as_f64()
            .expect("duration_ms is a number");
        let session_ms = (s.ended - s.started).num_milliseconds() as f64;
        assert!(
            (0.0..=session_ms).contains(&ms),
            "duration_ms {ms} in {line}"
        );
        let span = &spans[tool];
        assert_eq!(
            line["trace_id"], span["trace_id"],
            "the line names its span"
        );
        assert_eq!(line["span_id"], span["span_id"], "the line names its span");
        let failed = tool == "get_task";
        assert_eq!(line["status"], if failed { "error" } else { "success" });
        assert_eq!(
            line["error_code"],
            if failed {
                json!("tool_error")
            } else {
                Value::Null
            }
        );
        let is_write = ["create_task", "update_task", "delete_task"].contains(&tool);
        assert_eq!(line.get("operation_type").is_some(), is_write, "{line}");
        if is_write {
            assert_eq!(
                &line["operation_type"],
                attr(span, "mcp_otel.operation_type")
            );
            assert_eq!(&line["resource_id"], attr(span, "mcp_otel.resource_id"));
        }
        if tool != "create_task" {
            assert!(
                line.get("user_confirmation").is_none_or(Value::is_null),
                "no confirmation was given for {tool}: {line}"
            );
        }
    }
    let [create_l, update_l, delete_l, get_l, list_l] = &s.log_lines[..] else {
        unreachable!("five lines, checked above")
    };
    // Context arguments sit at the top level, redacted.
    assert_eq!(create_l["project_id"], "p1");
    assert_eq!(create_l["title"], "Ship the release");
    assert_eq!(create_l["api_key"], "[REDACTED]");
    assert_eq!(create_l["user_confirmation"], true);
    assert_eq!(create_l["after_state"], created);
    assert_eq!(create_l["before_state"], Value::Null);
    assert_eq!(update_l["id"], "t1");
    assert_eq!(update_l["before_state"], t1());
    assert_eq!(update_l["after_state"], with(t1(), "status", "done"));
    assert_eq!(delete_l["id"], "t2");
    assert_eq!(delete_l["before_state"], t2());
    assert_eq!(delete_l["after_state"], Value::Null);
    assert_eq!(get_l["id"], "t404");
    assert_eq!(list_l["project_id"], "p1");

    eprintln!("reads_writes_and_a_failing_call: {:?}", t0.elapsed());
}

#[test]
fn mcp_otel_user_overrides_the_client_name() {
    let t0 = Instant::now();
    let script = json!([
        {"call": "list_tasks", "args": {}},
        {"call": "create_task", "args": {"project_id": "p2", "title": "Book the venue"}},
    ]);
    let s = run_session(
        &script,
        "cursor",
        &[("MCP_OTEL_USER", "alice@example.com")],
        2,
    );
    assert_eq!(s.spans.len(), 2, "{:#?}", s.spans);
    for span in by_tool(&s.spans).values() {
        assert_eq!(attr_str(span, "enduser.id"), "alice@example.com");
        // The client is still known, as the client rather than as the user.
        assert_eq!(attr_str(span, "mcp_otel.client.name"), "cursor");
    }
    assert_eq!(s.log_lines.len(), 2, "{}", s.log_text);
    for line in &s.log_lines {
        assert_eq!(line["user"], "alice@example.com", "{line}");
    }
    eprintln!("mcp_otel_user_overrides: {:?}", t0.elapsed());
}

#[test]
fn the_client_sees_exactly_what_the_server_returns() {
    let t0 = Instant::now();
    let script = json!([
        {"list_tools": true},
        {"call": "list_tasks", "args": {"project_id": "p1"}},
        {"call": "get_task", "args": {"id": "t3"}},
        {"call": "create_task",
         "args": {"project_id": "p2", "title": "Book the venue", "due_date": "2027-01-10"}},
        {"call": "update_task", "args": {"id": "t1", "status": "done"}},
        {"call": "update_task", "args": {"id": "t3", "status": "archived"}},
        {"call": "delete_task", "args": {"id": "t2"}},
        {"call": "get_task", "args": {"id": "t2"}},
        {"call": "list_tasks", "args": {}},
    ]);
    let s = run_session(&script, "claude-desktop", &[], 8);
    assert_eq!(s.spans.len(), 8, "every call was traced: {:#?}", s.spans);

    // tools/list: the server's annotations pass through untouched.
    let tools: BTreeMap<&str, &Value> = s.steps[0]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .map(|t| (t["name"].as_str().expect("tool name"), t))
        .collect();
    assert_eq!(
        tools.keys().copied().collect::<Vec<_>>(),
        [
            "create_task",
            "delete_task",
            "get_task",
            "list_tasks",
            "update_task"
        ]
    );
    let hints = |tool: &str| {
        let a = &tools[tool]["annotations"];
        (a["readOnlyHint"].clone(), a["destructiveHint"].clone())
    };
    assert_eq!(hints("list_tasks"), (json!(true), json!(false)));
    assert_eq!(hints("get_task"), (json!(true), json!(false)));
    assert_eq!(hints("create_task"), (json!(false), json!(false)));
    assert_eq!(hints("update_task"), (json!(false), json!(true)));
    assert_eq!(hints("delete_task"), (json!(false), json!(true)));
    assert_eq!(tools["get_task"]["input_schema"]["required"], json!(["id"]));
    assert_eq!(
        tools["create_task"]["input_schema"]["required"],
        json!(["project_id", "title"])
    );

    // Results: the server's payloads, structured and as text, nothing added.
    let t4 = json!({"id": "t4", "project_id": "p2", "title": "Book the venue", "status": "open",
                    "due_date": "2027-01-10"});
    let t1_done = with(t1(), "status", "done");
    let expected_ok = [
        (1, json!({"tasks": [t1(), t2()]})),
        (2, t3()),
        (3, t4.clone()),
        (4, t1_done.clone()),
        (6, json!({"deleted": "t2"})),
        (8, json!({"tasks": [t1_done, t3(), t4]})),
    ];
    for (i, payload) in expected_ok {
        let step = &s.steps[i];
        assert_eq!(step["is_error"], false, "{step}");
        assert_eq!(step["structured_content"], payload, "step {i}");
        let text: Value = serde_json::from_str(step["text"].as_str().expect("text")).unwrap();
        assert_eq!(
            text, payload,
            "step {i}: the text block carries the same JSON"
        );
        assert_eq!(step["content"].as_array().map(Vec::len), Some(1), "{step}");
    }
    let expected_err = [
        (
            5,
            r#"status must be one of ["open", "in_progress", "done"], got "archived""#,
        ),
        (7, r#"task "t2" not found"#),
    ];
    for (i, text) in expected_err {
        let step = &s.steps[i];
        assert_eq!(step["is_error"], true, "{step}");
        assert_eq!(step["structured_content"], Value::Null, "{step}");
        assert_eq!(step["text"], text, "{step}");
    }

    // With the collector gone, the client sees the very same session.
    let server = example_bin("tasks_server");
    let dead = Instant::now();
    let steps = McpDrive::new([&server])
        .client_name("claude-desktop")
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", closed_port()),
        )
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("MCP_OTEL_LOG", "none")
        .timeout(Duration::from_secs(30))
        .run(&script);
    assert_eq!(
        steps, s.steps,
        "a dead collector changes nothing for the client"
    );
    eprintln!(
        "the_client_sees_exactly: {:?} (dead-collector session {:?})",
        t0.elapsed(),
        dead.elapsed()
    );
}
