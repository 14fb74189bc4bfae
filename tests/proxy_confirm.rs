//! The confirmation gate between real peers: the official Python SDK client answering
//! elicitations (accept, decline, cancel, an unticked box, too slow, no capability at all)
//! through the stdio proxy in front of `@modelcontextprotocol/server-memory`, whose graph shows
//! whether the gated `delete_entities` ran.

mod support;

use serde_json::Value;
use std::time::Duration;
use support::proxy::*;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/confirm-memory.toml");

/// What one session showed: the client's lines (questions, the delete's result, the graph) and
/// the proxy's JSON lines.
struct Session {
    client: Vec<Value>,
    log: Vec<Value>,
}

impl Session {
    /// The session of a client that printed `stdout` (a JSON line each) and a proxy that logged
    /// `log`.
    fn new(stdout: &str, log: Vec<Value>) -> Session {
        Session {
            client: stdout
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect(),
            log,
        }
    }

    fn of(&self, kind: &str) -> Vec<&Value> {
        self.client.iter().filter(|l| l["type"] == kind).collect()
    }

    fn delete(&self) -> &Value {
        self.of("delete")[0]
    }

    fn entities(&self) -> Vec<String> {
        let graph = self.of("graph")[0];
        graph["entities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap().to_owned())
            .collect()
    }

    fn logged(&self, tool: &str) -> &Value {
        self.log
            .iter()
            .find(|l| l["tool_name"] == tool)
            .unwrap_or_else(|| panic!("no {tool} line in {:#?}", self.log))
    }
}

/// Runs `mcp_confirm.py --answer ANSWER` through `mcp-otel proxy --config CONFIG` in front of
/// server-memory.
async fn session(answer: &str, config: &str) -> Session {
    let dir = support::tempdir();
    let server = memory_server(dir.path());
    session_with(
        &dir,
        &["--answer", answer, "--slow-secs", "2"],
        &server,
        config,
    )
    .await
}

/// Runs `mcp_confirm.py CLIENT_ARGS` through `mcp-otel proxy --config CONFIG -- SERVER`.
async fn session_with(
    dir: &tempfile::TempDir,
    client_args: &[&str],
    server: &[String],
    config: &str,
) -> Session {
    let (args, log) = gate_args(dir, config);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut client = python_client(client_args);
    client
        .arg("--")
        .args(proxied(&args, server))
        .env("OTEL_TRACES_EXPORTER", "none")
        // The notes server exports its own spans; nothing listens here.
        .env("OTEL_SDK_DISABLED", "true");
    let stdout = run_client(&mut client, "stdio").await;
    // The proxy writes its lines as it records; it has exited once the client has.
    Session::new(&stdout, support::read_json_lines(&log))
}

/// Writes `config` to `dir/confirm.toml`; returns the proxy's `--config … --log …` options and
/// the log file they name.
fn gate_args(dir: &tempfile::TempDir, config: &str) -> (Vec<String>, std::path::PathBuf) {
    let config_path = dir.path().join("confirm.toml");
    std::fs::write(&config_path, config).unwrap();
    let log = dir.path().join("calls.jsonl");
    let args = [
        "--config",
        config_path.to_str().unwrap(),
        "--log",
        log.to_str().unwrap(),
    ];
    (args.map(str::to_owned).to_vec(), log)
}

/// `python tests/peers/mcp_confirm.py CLIENT_ARGS`: the official Python SDK client that answers
/// the gate's questions as told.
fn python_client(client_args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(python());
    cmd.arg(support::peer_script("mcp_confirm.py"))
        .args(client_args);
    cmd
}

/// Runs a confirmation client to its end (60 s at most) and returns its stdout; fails the test,
/// naming `what` and showing both outputs, when the client exits non-zero.
async fn run_client(cmd: &mut tokio::process::Command, what: &str) -> String {
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.kill_on_drop(true).output())
        .await
        .expect("the client finishes in time")
        .expect("the client runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what}: client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn example() -> String {
    std::fs::read_to_string(EXAMPLE).unwrap()
}

fn with_timeout(config: &str, timeout: &str) -> String {
    config.replace("timeout = \"60s\"", &format!("timeout = \"{timeout}\""))
}

#[tokio::test]
async fn an_accepted_delete_runs() {
    let s = session("accept", &example()).await;
    let questions = s.of("elicitation");
    assert_eq!(questions.len(), 1, "{:#?}", s.client);
    let q = questions[0];
    assert!(
        q["message"].as_str().unwrap().contains("delete_entities")
            && q["message"].as_str().unwrap().contains("Alice"),
        "{q}"
    );
    assert_eq!(q["schema"]["properties"]["confirm"]["type"], "boolean");
    assert_eq!(s.delete()["is_error"], false, "{:#?}", s.client);
    assert!(
        s.entities().is_empty(),
        "the delete ran: {:?}",
        s.entities()
    );
    let line = s.logged("delete_entities");
    assert_eq!(line["status"], "success");
    assert_eq!(line["user_confirmation"], true);
    assert_eq!(line["confirmation_outcome"], "accepted");
    assert_eq!(line["confirmation_source"], "elicitation");
    assert_eq!(
        line["confirmation_arguments_digest"],
        mcp_otel::record::arguments_digest(Some(&serde_json::json!({"entityNames": ["Alice"]})))
    );
    assert!(line["confirmation_wait_ms"].as_f64().unwrap() >= 0.0);
    // Nothing else is gated; under a policy, other writes say so.
    let create = s.logged("create_entities");
    assert!(create["user_confirmation"].is_null());
    assert_eq!(create["confirmation_outcome"], "not_required");
}

#[tokio::test]
async fn a_declined_delete_never_reaches_the_server() {
    for answer in ["decline", "untick"] {
        let s = session(answer, &example()).await;
        let d = s.delete();
        assert_eq!(d["is_error"], true, "{answer}: {d}");
        assert!(d["text"].as_str().unwrap().contains("declined"), "{d}");
        assert_eq!(
            s.entities(),
            ["Alice"],
            "{answer}: the entity is still there"
        );
        let line = s.logged("delete_entities");
        assert_eq!(line["user_confirmation"], false, "{answer}: {line}");
        assert_eq!(line["operation_type"], "delete");
        assert_eq!(line["confirmation_outcome"], "declined");
        assert_eq!(line["confirmation_source"], "elicitation");
    }
}

#[tokio::test]
async fn a_cancelled_delete_never_reaches_the_server() {
    let s = session("cancel", &example()).await;
    assert!(s.delete()["text"].as_str().unwrap().contains("cancelled"));
    assert_eq!(s.entities(), ["Alice"]);
    assert_eq!(s.logged("delete_entities")["user_confirmation"], false);
    assert_eq!(
        s.logged("delete_entities")["confirmation_outcome"],
        "cancelled"
    );
}

#[tokio::test]
async fn a_slow_answer_times_out_and_the_late_approval_is_ignored() {
    // The client answers after 2 s; the gate waits 500 ms.
    let s = session("slow", &with_timeout(&example(), "500ms")).await;
    let d = s.delete();
    assert_eq!(d["is_error"], true);
    assert!(
        d["text"].as_str().unwrap().contains("did not confirm"),
        "{d}"
    );
    assert_eq!(
        s.entities(),
        ["Alice"],
        "the late accept did not run the call"
    );
    let line = s.logged("delete_entities");
    assert_eq!(line["user_confirmation"], false);
    assert_eq!(line["confirmation_outcome"], "timeout");
    assert!(
        line["confirmation_wait_ms"].as_f64().unwrap() >= 500.0,
        "{line}"
    );
}

#[tokio::test]
async fn a_client_without_elicitation_is_denied_or_allowed_per_policy() {
    let denied = session("none", &example()).await;
    assert!(denied.of("elicitation").is_empty());
    let d = denied.delete();
    assert_eq!(d["is_error"], true);
    assert!(
        d["text"].as_str().unwrap().contains("cannot ask"),
        "a clear message: {d}"
    );
    assert_eq!(denied.entities(), ["Alice"]);
    assert_eq!(denied.logged("delete_entities")["user_confirmation"], false);

    let allow = example().replace(
        "unsupported_client = \"deny\"",
        "unsupported_client = \"allow\"",
    );
    let allowed = session("none", &allow).await;
    assert_eq!(allowed.delete()["is_error"], false);
    assert!(allowed.entities().is_empty(), "allowed: the delete ran");
    assert_eq!(
        allowed.logged("delete_entities")["user_confirmation"],
        false,
        "ran, recorded as unconfirmed"
    );
}

/// The Streamable HTTP proxy in-process in front of the rmcp tasks server (sessions on),
/// gating `delete_task`; returns the proxy URL, the server's store and the proxy's JSON lines.
async fn http_gate(
    config: &str,
    stateless: bool,
) -> (
    String,
    mcp_otel::demo::tasks::TaskServer,
    mcp_otel::emit::log::MemoryLog,
) {
    use mcp_otel::capture::proxy::ProxyConfig;
    use mcp_otel::emit::{EmitConfig, Emitter, SpanTarget};

    let store = mcp_otel::demo::tasks::TaskServer::with_sample_tasks();
    let server = store.clone();
    let upstream = support::http::serve_mcp(move || Ok(server.clone()), !stateless).await;
    let log = mcp_otel::emit::log::MemoryLog::default();
    let emitter = Emitter::new(&EmitConfig {
        spans: SpanTarget::None,
        ..EmitConfig::default()
    })
    .unwrap()
    .with_log(Box::new(log.clone()));
    let tools = ProxyConfig::parse(config).unwrap();
    let addr = start_http_proxy(format!("http://{upstream}/mcp"), None, tools, emitter).await;
    let url = format!("http://{addr}/mcp");
    (url, store, log)
}

const TASKS_POLICY: &str = r#"
[confirm]
tools = ["delete_*"]
timeout = "TIMEOUT"
"#;

const TASKS_POLICY_30S: &str = "[confirm]\ntools = [\"delete_*\"]\ntimeout = \"30s\"\n";

async fn http_session(answer: &str, timeout: &str) -> Session {
    let policy = TASKS_POLICY.replace("TIMEOUT", timeout);
    http_session_with(&["--answer", answer, "--slow-secs", "2"], &policy).await
}

/// [`http_session`] with the client's `--answer …` options and the policy given.
async fn http_session_with(client_args: &[&str], policy: &str) -> Session {
    let (url, _store, log) = http_gate(policy, false).await;
    let mut client = python_client(client_args);
    client.args(["--flavor", "tasks", "--entity", "t1", "--http", &url]);
    let stdout = run_client(&mut client, "http").await;
    // The observer runs on its own thread: give it a moment to write the last lines.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !log.text().contains("list_tasks") && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Session::new(&stdout, log.json())
}

#[tokio::test]
async fn over_http_an_accepted_delete_runs_and_a_declined_one_does_not() {
    let accepted = http_session("accept", "30s").await;
    assert_eq!(
        accepted.of("elicitation").len(),
        1,
        "{:#?}",
        accepted.client
    );
    assert_eq!(
        accepted.delete()["is_error"],
        false,
        "{:#?}",
        accepted.client
    );
    assert!(!accepted.entities().contains(&"t1".to_owned()));
    let line = accepted.logged("delete_task");
    assert_eq!(line["confirmation_outcome"], "accepted", "{line}");
    assert_eq!(line["user_confirmation"], true);

    for (answer, outcome) in [("decline", "declined"), ("cancel", "cancelled")] {
        let s = http_session(answer, "30s").await;
        assert_eq!(s.delete()["is_error"], true, "{answer}: {:#?}", s.client);
        assert!(
            s.entities().contains(&"t1".to_owned()),
            "{answer}: t1 is still there"
        );
        let line = s.logged("delete_task");
        assert_eq!(line["confirmation_outcome"], outcome, "{line}");
        assert_eq!(line["user_confirmation"], false);
    }
}

#[tokio::test]
async fn over_http_a_slow_answer_times_out_and_a_client_without_elicitation_is_denied() {
    // (answer, gate timeout, questions the client saw, what the refusal says, the outcome)
    for (answer, timeout, asked, says, outcome) in [
        ("slow", "500ms", 1, "did not confirm", "timeout"),
        ("none", "30s", 0, "cannot ask", "unsupported_client"),
    ] {
        let s = http_session(answer, timeout).await;
        assert_eq!(
            s.of("elicitation").len(),
            asked,
            "{answer}: {:#?}",
            s.client
        );
        let refusal = s.delete()["text"].as_str().unwrap();
        assert!(refusal.contains(says), "{answer}: {refusal}");
        assert!(
            s.entities().contains(&"t1".to_owned()),
            "{answer}: t1 is still there"
        );
        assert_eq!(
            s.logged("delete_task")["confirmation_outcome"],
            outcome,
            "{answer}"
        );
    }
}

/// The address in the proxy's `http://ADDR/mcp`.
fn proxy_addr(url: &str) -> std::net::SocketAddr {
    url.trim_start_matches("http://")
        .trim_end_matches("/mcp")
        .parse()
        .unwrap()
}

/// One 2026-07-28 `tools/call` POSTed straight to the proxy: the status and the JSON answer.
async fn modern_call(url: &str, id: u64, tool: &str, params: Value) -> Value {
    let addr = proxy_addr(url);
    let mut params = params;
    params["name"] = tool.into();
    params["_meta"] = serde_json::json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "raw-2026", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"form": {}}}
    });
    let body =
        serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params});
    let (status, head, body, _) = support::http::raw_post(
        addr,
        &[
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "tools/call"),
            ("Mcp-Name", tool),
        ],
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{head}\n{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

const KEY: &str = "io.mcp-otel/confirm";

fn approve(confirm: bool) -> Value {
    serde_json::json!({KEY: {"action": "accept", "content": {"confirm": confirm}}})
}

async fn ask(url: &str, id: u64, task: &str) -> String {
    let first = modern_call(
        url,
        id,
        "delete_task",
        serde_json::json!({"arguments": {"id": task}}),
    )
    .await;
    let r = &first["result"];
    assert_eq!(r["resultType"], "input_required", "{first}");
    assert_eq!(r["inputRequests"][KEY]["method"], "elicitation/create");
    assert_eq!(r["inputRequests"][KEY]["params"]["mode"], "form");
    assert!(
        r["inputRequests"][KEY]["params"]["message"]
            .as_str()
            .unwrap()
            .contains(task)
    );
    r["requestState"].as_str().unwrap().to_owned()
}

async fn retry(url: &str, id: u64, task: &str, answer: Value, state: &str) -> Value {
    modern_call(
        url,
        id,
        "delete_task",
        serde_json::json!({"arguments": {"id": task}, "inputResponses": answer, "requestState": state}),
    )
    .await
}

fn refused_with(v: &Value, needle: &str) {
    assert_eq!(v["error"]["code"], -32602, "{v}");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(m.contains(needle), "{needle:?} not in {m:?}");
}

#[tokio::test]
async fn mrtr_an_approval_runs_the_call_once_and_forged_approvals_are_refused() {
    let (url, store, log) = http_gate(&TASKS_POLICY.replace("TIMEOUT", "30s"), true).await;
    let tasks = |store: &mcp_otel::demo::tasks::TaskServer| store.task_ids();

    // Approved: forwarded without the proxy's key and state; the task is gone.
    let state = ask(&url, 1, "t1").await;
    assert!(
        tasks(&store).contains(&"t1".to_owned()),
        "asking did not run it"
    );
    let done = retry(&url, 2, "t1", approve(true), &state).await;
    assert_eq!(
        done["result"]["structuredContent"]["deleted"], "t1",
        "{done}"
    );
    assert!(!tasks(&store).contains(&"t1".to_owned()));

    // The same approval again: refused.
    refused_with(
        &retry(&url, 3, "t1", approve(true), &state).await,
        "already used",
    );

    // Tampered: one character of the signature changed.
    let state = ask(&url, 4, "t2").await;
    let mut forged = state.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == '0' { '1' } else { '0' });
    refused_with(
        &retry(&url, 5, "t2", approve(true), &forged).await,
        "signature",
    );

    // Argument swap: approved for t2, retried for t3.
    refused_with(
        &retry(&url, 6, "t3", approve(true), &state).await,
        "arguments differ",
    );
    // An answer under the proxy's key without its state.
    refused_with(
        &modern_call(
            &url,
            7,
            "delete_task",
            serde_json::json!({"arguments": {"id": "t2"}, "inputResponses": approve(true)}),
        )
        .await,
        "without the proxy's requestState",
    );

    // Declined (the box unticked): a tool error, the task stays.
    let state = ask(&url, 8, "t2").await;
    let no = retry(&url, 9, "t2", approve(false), &state).await;
    assert_eq!(no["result"]["isError"], true, "{no}");
    assert!(tasks(&store).contains(&"t2".to_owned()));
    assert!(tasks(&store).contains(&"t3".to_owned()));

    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while log.json().len() < 6 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lines = log.json();
    let outcomes: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["status"].as_str().unwrap(),
                l["confirmation_outcome"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    // The input_required rounds are not calls; each retry is one.
    assert_eq!(
        outcomes,
        [
            ("success", "accepted"),
            ("error", "declined"),
            ("error", "declined"),
            ("error", "declined"),
            ("error", "declined"),
            ("error", "declined"),
        ],
        "{lines:#?}"
    );
    assert_eq!(lines[0]["confirmation_source"], "elicitation");
    assert_eq!(lines[0]["user_confirmation"], true);
    assert!(
        lines[1]["confirmation_source"].is_null(),
        "a forged approval is no elicitation"
    );
}

#[tokio::test]
async fn mrtr_an_expired_approval_is_refused() {
    let (url, store, _log) = http_gate(&TASKS_POLICY.replace("TIMEOUT", "300ms"), true).await;
    let state = ask(&url, 1, "t1").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    refused_with(
        &retry(&url, 2, "t1", approve(true), &state).await,
        "expired",
    );
    assert!(store.task_ids().contains(&"t1".to_owned()));
}

/// The first line the in-process proxy recorded for `tool`, waiting for its observer thread
/// (at most 5 s).
async fn logged_soon(log: &mcp_otel::emit::log::MemoryLog, tool: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !log.text().contains(tool) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lines = log.json();
    lines
        .into_iter()
        .find(|l| l["tool_name"] == tool)
        .unwrap_or_else(|| panic!("no {tool} line"))
}

/// The official Python SDK's high-level client at 2026-07-28 resolves the proxy's
/// `input_required` through its elicitation callback.
#[tokio::test]
async fn mrtr_with_the_python_sdk_client() {
    for (answer, ran, outcome) in [
        ("accept", true, "accepted"),
        ("decline", false, "declined"),
        ("cancel", false, "cancelled"),
    ] {
        let (url, store, log) = http_gate(&TASKS_POLICY.replace("TIMEOUT", "30s"), true).await;
        let mut client = python_client(&[
            "--modern", "--answer", answer, "--entity", "t1", "--http", &url,
        ]);
        let stdout = run_client(&mut client, answer).await;
        assert!(
            stdout.contains("\"type\": \"elicitation\""),
            "{answer}: {stdout}"
        );
        assert_eq!(
            !store.task_ids().contains(&"t1".to_owned()),
            ran,
            "{answer}"
        );
        let line = logged_soon(&log, "delete_task").await;
        assert_eq!(line["confirmation_outcome"], outcome, "{line}");
        assert_eq!(line["confirmation_source"], "elicitation");
    }
}

/// The official Python SDK client at 2026-07-28 through the stdio proxy, in front of a real
/// 2026-07-28 server (the SDK's own `MCPServer`, tests/peers/otel_server.py): the proxy's
/// `input_required` is resolved by the SDK through its elicitation callback, and the note shows
/// whether the gated `delete_note` ran.
#[tokio::test]
async fn mrtr_over_stdio_with_the_python_sdk_client() {
    let server = vec![
        python().to_string_lossy().into_owned(),
        support::peer_script("otel_server.py")
            .to_string_lossy()
            .into_owned(),
    ];
    for (answer, ran, outcome) in [
        ("accept", true, "accepted"),
        ("decline", false, "declined"),
        ("cancel", false, "cancelled"),
    ] {
        let dir = support::tempdir();
        let client = [
            "--modern", "--flavor", "notes", "--entity", "n1", "--answer", answer,
        ];
        let s = session_with(&dir, &client, &server, TASKS_POLICY_30S).await;
        let questions = s.of("elicitation");
        assert_eq!(questions.len(), 1, "{answer}: {:#?}", s.client);
        assert!(
            questions[0]["message"].as_str().unwrap().contains("n1"),
            "{answer}: {}",
            questions[0]
        );
        assert_eq!(s.delete()["is_error"], !ran, "{answer}: {:#?}", s.client);
        assert_eq!(s.entities().is_empty(), ran, "{answer}: the note shows it");
        let line = s.logged("delete_note");
        assert_eq!(line["confirmation_outcome"], outcome, "{answer}: {line}");
        assert_eq!(line["confirmation_source"], "elicitation");
        assert_eq!(line["user_confirmation"], ran);
        assert_eq!(line["status"], if ran { "success" } else { "error" });
        assert_eq!(
            line["confirmation_arguments_digest"],
            mcp_otel::record::arguments_digest(Some(&serde_json::json!({"id": "n1"})))
        );
        // The input_required round is no call: one line for the delete.
        let deletes = s.log.iter().filter(|l| l["tool_name"] == "delete_note");
        assert_eq!(deletes.count(), 1, "{answer}: {:#?}", s.log);
    }
}

/// The official TypeScript SDK client with an elicitation handler, through the stdio proxy in
/// front of server-memory: an accepted delete runs, a declined one leaves the entity.
#[tokio::test]
async fn the_typescript_sdk_client_answers_the_gate() {
    for (answer, left) in [("accept", 0), ("decline", 1)] {
        let dir = support::tempdir();
        // The script resolves the SDK next to itself: give it the peers' node_modules.
        let script = dir.path().join("mcp_confirm_ts.mjs");
        std::fs::copy(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/peers/mcp_confirm_ts.mjs"
            ),
            &script,
        )
        .unwrap();
        std::os::unix::fs::symlink(
            peers().join("node_modules"),
            dir.path().join("node_modules"),
        )
        .unwrap();
        let log = dir.path().join("calls.jsonl");
        let server = memory_server(dir.path());
        let proxy = proxied(
            &["--config", EXAMPLE, "--log", log.to_str().unwrap()],
            &server,
        );
        let mut client = tokio::process::Command::new("node");
        client
            .arg(&script)
            .args(["--answer", answer, "--"])
            .args(&proxy)
            .env("OTEL_TRACES_EXPORTER", "none");
        let stdout = run_client(&mut client, answer).await;
        let s = Session::new(&stdout, support::read_json_lines(&log));
        assert_eq!(s.of("elicitation").len(), 1, "{answer}");
        assert_eq!(s.entities().len(), left, "{answer}: {:?}", s.entities());
        let expected = if answer == "accept" {
            "accepted"
        } else {
            "declined"
        };
        assert_eq!(
            s.logged("delete_entities")["confirmation_outcome"],
            expected
        );
    }
}

/// `mcp-otel proxy --config CONFIG -- cat`: what the proxy forwards comes back as it was sent,
/// so a test reads both the proxy's own answers and what reached the "server".
struct CatProxy {
    proxy: std::process::Child,
    to: Option<std::process::ChildStdin>,
    from: std::io::BufReader<std::process::ChildStdout>,
}

impl CatProxy {
    fn start(config: &std::path::Path) -> CatProxy {
        let mut proxy = std::process::Command::new(PROXY)
            .args(["proxy", "--no-inject", "--log", "none", "--config"])
            .arg(config)
            .args(["--", "cat"])
            .env("OTEL_TRACES_EXPORTER", "none")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        CatProxy {
            to: proxy.stdin.take(),
            from: std::io::BufReader::new(proxy.stdout.take().unwrap()),
            proxy,
        }
    }

    /// Sends `msg`, returns the next line that comes back.
    fn exchange(&mut self, msg: Value) -> Value {
        use std::io::{BufRead, Write};
        let to = self.to.as_mut().unwrap();
        writeln!(to, "{msg}").unwrap();
        to.flush().unwrap();
        let mut line = String::new();
        self.from.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    }
}

impl Drop for CatProxy {
    fn drop(&mut self) {
        drop(self.to.take());
        let _ = self.proxy.wait();
    }
}

/// A 2026-07-28 `tools/call` of `delete_x` from a client that can elicit, with `extra` params.
fn modern_delete(id: u64, extra: Value) -> Value {
    let mut params = serde_json::json!({"name": "delete_x", "arguments": {"id": "a"}, "_meta": {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {"elicitation": {}}}});
    for (k, v) in extra.as_object().unwrap() {
        params[k] = v.clone();
    }
    serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params})
}

/// 2026-07-28 through the stdio proxy, with `cat` as the "server" so that the test reads back
/// exactly what the proxy forwarded: the first round is answered by the proxy, the approved
/// retry reaches the server without the proxy's answer and state but with the server's own.
#[test]
fn mrtr_over_stdio_forwards_only_the_approved_retry_stripped() {
    let dir = support::tempdir();
    let config = dir.path().join("confirm.toml");
    std::fs::write(&config, "[confirm]\ntools = [\"delete_*\"]\n").unwrap();
    let mut proxy = CatProxy::start(&config);
    let mut exchange = |msg: Value| proxy.exchange(msg);
    let call = modern_delete;
    // The client already holds a state from the server's own earlier input_required.
    let first = exchange(call(
        1,
        serde_json::json!({"requestState": "server-state-1"}),
    ));
    assert_eq!(first["result"]["resultType"], "input_required", "{first}");
    let state = first["result"]["requestState"].as_str().unwrap().to_owned();
    let forwarded = exchange(call(
        2,
        serde_json::json!({
            "inputResponses": {
                "io.mcp-otel/confirm": {"action": "accept", "content": {"confirm": true}},
                "server-question": {"action": "accept", "content": {"x": 1}}
            },
            "requestState": state
        }),
    ));
    // `cat` echoed what the proxy sent the server.
    assert_eq!(forwarded["method"], "tools/call", "{forwarded}");
    let p = &forwarded["params"];
    assert_eq!(
        p["requestState"], "server-state-1",
        "the server's state is restored"
    );
    assert!(
        p["inputResponses"].get("io.mcp-otel/confirm").is_none(),
        "{p}"
    );
    assert_eq!(p["inputResponses"]["server-question"]["content"]["x"], 1);
    // The same approval again is refused by the proxy, not forwarded.
    let replay = exchange(call(
        3,
        serde_json::json!({
            "inputResponses": {"io.mcp-otel/confirm": {"action": "accept", "content": {"confirm": true}}},
            "requestState": state
        }),
    ));
    assert_eq!(replay["id"], 3);
    refused_with(&replay, "already used");
}

/// A client that writes JSON-RPC lines to `mcp-otel proxy --config CONFIG --log LOG` in front of
/// server-memory and reads what comes back: for spellings and timings the SDK clients do not
/// produce (escaped member names, a cancellation while the question is open).
struct RawClient {
    proxy: std::process::Child,
    to: std::process::ChildStdin,
    from: std::sync::mpsc::Receiver<Value>,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl RawClient {
    fn start(config: &str) -> RawClient {
        use std::io::BufRead;
        let dir = support::tempdir();
        let (args, log) = gate_args(&dir, config);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut proxy = spawn_proxy(
            &args,
            &memory_server(dir.path()),
            &[("OTEL_TRACES_EXPORTER", "none")],
            std::process::Stdio::inherit(),
        );
        let to = proxy.stdin.take().unwrap();
        let out = std::io::BufReader::new(proxy.stdout.take().unwrap());
        let (tx, from) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines() {
                let Ok(line) = line else { break };
                if tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                    break;
                }
            }
        });
        let mut client = RawClient {
            proxy,
            to,
            from,
            log,
            _dir: dir,
        };
        client.send(r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{"elicitation":{"form":{}}},"clientInfo":{"name":"raw","version":"1"}}}"#);
        assert_eq!(client.recv()["id"], 0);
        client.send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        client
    }

    fn send(&mut self, line: &str) {
        use std::io::Write;
        writeln!(self.to, "{line}").unwrap();
        self.to.flush().unwrap();
    }

    fn recv(&self) -> Value {
        self.from
            .recv_timeout(Duration::from_secs(20))
            .expect("the proxy answers in time")
    }

    /// Nothing arrives within `wait`.
    fn silent(&self, wait: Duration) -> Option<Value> {
        self.from.recv_timeout(wait).ok()
    }

    fn create(&mut self, id: u64, name: &str) {
        self.send(&format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"create_entities","arguments":{{"entities":[{{"name":"{name}","entityType":"t","observations":[]}}]}}}}}}"#
        ));
        assert_eq!(self.recv()["id"], id);
    }

    /// The entity names in server-memory's graph.
    fn entities(&mut self, id: u64) -> Vec<String> {
        self.send(&format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"read_graph","arguments":{{}}}}}}"#
        ));
        let r = self.recv();
        assert_eq!(r["id"], id, "{r}");
        r["result"]["structuredContent"]["entities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Closes stdin, waits for the proxy to exit, and returns the session with the proxy's JSON
    /// lines (this client prints none of its own).
    fn finish(self) -> Session {
        let RawClient {
            mut proxy,
            to,
            log,
            _dir,
            ..
        } = self;
        drop(to);
        assert!(proxy.wait().unwrap().success());
        Session::new("", support::read_json_lines(&log))
    }
}

fn answer_line(question: &Value, confirm: bool) -> String {
    serde_json::json!({"jsonrpc": "2.0", "id": question["id"], "result": {
        "action": "accept", "content": {"confirm": confirm}}})
    .to_string()
}

/// A call spelled with escapes (`"tools\/call"`, `"n\u0061me"`), which the relay's scanner does
/// not plan, is still held, and its approval reaches the record.
#[test]
fn an_approved_call_with_escaped_member_names_keeps_its_confirmation() {
    let mut c = RawClient::start(&example());
    c.create(1, "Alice");
    c.send(r#"{"jsonrpc":"2.0","id":2,"method":"tools\/call","params":{"n\u0061me":"delete_entities","\u0061rguments":{"entityNames":["Alice"]}}}"#);
    let question = c.recv();
    assert_eq!(question["method"], "elicitation/create", "{question}");
    c.send(&answer_line(&question, true));
    let done = c.recv();
    assert_eq!(done["id"], 2, "{done}");
    assert_ne!(done["result"]["isError"], true, "{done}");
    assert!(c.entities(3).is_empty(), "the approved delete ran");
    let s = c.finish();
    let line = s.logged("delete_entities");
    assert_eq!(line["status"], "success", "{line}");
    assert_eq!(line["user_confirmation"], true, "{line}");
    assert_eq!(line["confirmation_outcome"], "accepted");
    assert_eq!(line["confirmation_source"], "elicitation");
    assert_eq!(
        line["confirmation_arguments_digest"],
        mcp_otel::record::arguments_digest(Some(&serde_json::json!({"entityNames": ["Alice"]})))
    );
}

/// Over HTTP, a refused call spelled with escapes keeps its confirmation on the record too.
#[tokio::test]
async fn over_http_a_refused_call_with_escaped_member_names_keeps_its_confirmation() {
    let (url, store, log) = http_gate(&TASKS_POLICY.replace("TIMEOUT", "30s"), true).await;
    let addr = proxy_addr(&url);
    // No session declared elicitation: the policy's default denies.
    let body = br#"{"jsonrpc":"2.0","id":5,"method":"tools\/call","params":{"n\u0061me":"delete_task","arguments":{"id":"t1"}}}"#;
    let (status, _, answer, _) = support::http::raw_post(addr, &[], body).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("cannot ask"), "{answer}");
    assert!(store.task_ids().contains(&"t1".to_owned()));
    let line = logged_soon(&log, "delete_task").await;
    assert_eq!(line["confirmation_outcome"], "unsupported_client", "{line}");
    assert_eq!(line["user_confirmation"], false, "{line}");
}

/// The client gives up on a held call (the Python SDK's timeout sends `notifications/cancelled`
/// for it) while its user is still being asked: the call is dropped, and the approval that comes
/// after does not run it. Through the stdio proxy (server-memory) and the HTTP proxy.
#[tokio::test]
async fn a_call_the_client_cancels_while_held_never_runs() {
    // The callback approves after 2 s; the client gives up after 0.7 s and stays 3 s more.
    let client = [
        "--answer",
        "slow",
        "--slow-secs",
        "2",
        "--call-timeout",
        "0.7",
        "--linger",
        "3",
    ];
    let dir = support::tempdir();
    let server = memory_server(dir.path());
    let stdio = session_with(&dir, &client, &server, &example()).await;
    let http = http_session_with(&client, TASKS_POLICY_30S).await;
    for (s, tool, left) in [
        (&stdio, "delete_entities", "Alice"),
        (&http, "delete_task", "t1"),
    ] {
        assert_eq!(s.delete()["cancelled"], true, "{:#?}", s.client);
        assert!(
            s.entities().contains(&left.to_owned()),
            "{tool}: the late approval did not run it: {:?}",
            s.entities()
        );
        let line = s.logged(tool);
        assert_eq!(line["status"], "error", "{line}");
        assert_eq!(line["error_code"], "cancelled", "{line}");
        assert_eq!(line["confirmation_outcome"], "cancelled", "{line}");
        assert_eq!(line["user_confirmation"], false, "{line}");
        assert_eq!(s.log.iter().filter(|l| l["tool_name"] == tool).count(), 1);
    }
}

/// The proxy withdraws its question when the client cancels the held call, and an answer that
/// still comes is dropped: neither reaches the server.
#[test]
fn a_cancelled_held_call_withdraws_its_question() {
    let mut c = RawClient::start(&example());
    c.create(1, "Alice");
    c.send(r#"{"jsonrpc":"2.0","id":"d-2","method":"tools/call","params":{"name":"delete_entities","arguments":{"entityNames":["Alice"]}}}"#);
    let question = c.recv();
    assert_eq!(question["method"], "elicitation/create", "{question}");
    c.send(r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"d-2","reason":"user stopped"}}"#);
    let withdrawn = c.recv();
    assert_eq!(
        withdrawn["method"], "notifications/cancelled",
        "{withdrawn}"
    );
    assert_eq!(withdrawn["params"]["requestId"], question["id"]);
    c.send(&answer_line(&question, true));
    assert_eq!(
        c.silent(Duration::from_millis(500)),
        None,
        "no answer to a cancelled call"
    );
    assert_eq!(c.entities(3), ["Alice"]);
    let s = c.finish();
    let line = s.logged("delete_entities");
    assert_eq!(line["error_code"], "cancelled", "{line}");
    assert_eq!(line["confirmation_outcome"], "cancelled", "{line}");
}

/// `destructive = true` gates the tools the server annotated `destructiveHint: true`, also for a
/// client that calls them without listing the tools first: the proxy lists them itself before it
/// decides. server-memory over stdio, the rmcp tasks server over HTTP.
#[tokio::test]
async fn destructive_tools_are_gated_for_a_client_that_never_listed_them() {
    const POLICY: &str = "[confirm]\ndestructive = true\ntimeout = \"30s\"\n";
    for (answer, ran) in [("accept", true), ("decline", false)] {
        let dir = support::tempdir();
        let server = memory_server(dir.path());
        let client = ["--answer", answer, "--no-list"];
        let stdio = session_with(&dir, &client, &server, POLICY).await;
        let http = http_session_with(&client, POLICY).await;
        for (s, tool, entity) in [
            (&stdio, "delete_entities", "Alice"),
            (&http, "delete_task", "t1"),
        ] {
            // Asked once: for the delete, not for the create (`destructiveHint: false`).
            let questions = s.of("elicitation");
            assert_eq!(questions.len(), 1, "{tool} {answer}: {:#?}", s.client);
            assert!(questions[0]["message"].as_str().unwrap().contains(tool));
            assert_eq!(
                !s.entities().contains(&entity.to_owned()),
                ran,
                "{tool} {answer}: {:?}",
                s.entities()
            );
            let line = s.logged(tool);
            let outcome = if ran { "accepted" } else { "declined" };
            assert_eq!(line["confirmation_outcome"], outcome, "{line}");
        }
    }
}

/// Two proxy processes sharing `state_key_file` (replicas, or one proxy before and after a
/// restart) also share `replay_dir`: an approval the one accepted is refused by the other. `cat`
/// as the server shows what each forwarded.
#[test]
fn replicas_sharing_a_key_accept_an_approval_once() {
    let dir = support::tempdir();
    let key = dir.path().join("confirm.key");
    std::fs::write(&key, [7u8; 32]).unwrap();
    let spent = dir.path().join("spent");
    std::fs::create_dir(&spent).unwrap();
    let config = dir.path().join("confirm.toml");
    std::fs::write(
        &config,
        format!(
            "[confirm]\ntools = [\"delete_*\"]\nstate_key_file = {:?}\nreplay_dir = {:?}\n",
            key.display().to_string(),
            spent.display().to_string()
        ),
    )
    .unwrap();
    let (mut a, mut b) = (CatProxy::start(&config), CatProxy::start(&config));
    let first = a.exchange(modern_delete(1, serde_json::json!({})));
    let state = first["result"]["requestState"].as_str().unwrap().to_owned();
    let approved = serde_json::json!({
        "inputResponses": {"io.mcp-otel/confirm": {"action": "accept", "content": {"confirm": true}}},
        "requestState": state
    });
    // Replica B verifies A's state (same key) and forwards the call: `cat` echoes it.
    let forwarded = b.exchange(modern_delete(2, approved.clone()));
    assert_eq!(forwarded["method"], "tools/call", "{forwarded}");
    // The same approval at replica A: already spent.
    let replay = a.exchange(modern_delete(3, approved));
    assert_eq!(replay["id"], 3);
    refused_with(&replay, "already used");
    drop((a, b));

    // A key file without a replay directory is refused at start-up, naming both keys.
    std::fs::write(
        &config,
        format!(
            "[confirm]\ntools = [\"delete_*\"]\nstate_key_file = {:?}\n",
            key.display().to_string()
        ),
    )
    .unwrap();
    let stderr = support::start_up_error(
        std::process::Command::new(PROXY)
            .args(["proxy", "--config"])
            .arg(&config)
            .args(["--", "cat"]),
    );
    assert!(
        stderr.contains("confirm.replay_dir") && stderr.contains("confirm.state_key_file"),
        "{stderr}"
    );
}
