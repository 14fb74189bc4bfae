//! `mcp-otel demo`: the tasks server, an OTLP/gRPC receiver and a scripted MCP client session,
//! in one process over real transports (MCP over a Unix socket pair, OTLP over gRPC on
//! 127.0.0.1). Prints the seed-format JSON lines as calls happen, then what arrived over gRPC.

use super::tasks::TaskServer;
use crate::capture::Instrumentation;
use crate::capture::rmcp::Traced;
use crate::collect::{CollectConfig, testing};
use crate::emit::{BatchConfig, EmitConfig, Emitter, LogTarget, OtlpProtocol, SpanTarget};
use crate::record::ToolCall;
use rmcp::ServiceExt;
use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation, RequestMetaObject,
};
use serde_json::{Value, json};
use std::io::Write;
use std::time::Duration;

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The demo's in-process OTLP receiver could not bind.
    #[error("could not start the OTLP receiver on 127.0.0.1")]
    Receiver(#[source] std::io::Error),
    /// The emitter that sends the demo's spans could not be built.
    #[error("could not start the exporter: {0}")]
    Emit(#[from] crate::emit::EmitError),
    /// The in-process pipe between the demo client and server could not be opened (or the
    /// demo's audit directory could not be created).
    #[error("could not open the in-process MCP transport")]
    Transport(#[source] std::io::Error),
    /// The MCP session between the demo client and server failed (the rmcp error's message).
    #[error("MCP session failed: {0}")]
    Mcp(String),
    /// The in-process `collect` could not start (its error's message).
    #[error("could not start collect: {0}")]
    Collect(String),
}

/// One scripted step: the tool, its arguments, and whether the user confirmed it.
struct Step {
    tool: &'static str,
    args: Value,
    confirmed: Option<bool>,
}

fn script() -> Vec<Step> {
    let step = |tool, args, confirmed| Step {
        tool,
        args,
        confirmed,
    };
    vec![
        step(
            "list_tasks",
            json!({"project_id": "p1", "status": "open"}),
            None,
        ),
        step("get_task", json!({"id": "t1"}), None),
        step(
            "create_task",
            json!({"project_id": "p1", "title": "Prepare the demo", "due_date": "2026-12-05"}),
            Some(true),
        ),
        step(
            "update_task",
            json!({"id": "t1", "status": "done"}),
            Some(true),
        ),
        step("delete_task", json!({"id": "t3"}), None),
        // Fails: no such task (a tool error the model can act on).
        step("get_task", json!({"id": "t99"}), None),
        // Fails: a password in the arguments is redacted; the status is invalid.
        step(
            "update_task",
            json!({"id": "t2", "status": "archived", "password": "hunter2"}),
            None,
        ),
    ]
}

/// A traced tasks server on one end of a Unix socket pair, an rmcp client on the other.
async fn session(
    server: Traced<TaskServer>,
    client_name: &str,
) -> Result<
    (
        rmcp::service::RunningService<rmcp::RoleClient, ClientConfig>,
        tokio::task::JoinHandle<()>,
    ),
    DemoError,
> {
    let (server_io, client_io) = tokio::net::UnixStream::pair().map_err(DemoError::Transport)?;
    let server_task = tokio::spawn(async move {
        if let Ok(running) = server.serve(server_io.into_split()).await {
            let _ = running.waiting().await;
        }
    });
    let client_config = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new(client_name, env!("CARGO_PKG_VERSION")),
    );
    let client = client_config
        .serve(client_io.into_split())
        .await
        .map_err(|e| DemoError::Mcp(e.to_string()))?;
    Ok((client, server_task))
}

async fn call(
    client: &rmcp::service::RunningService<rmcp::RoleClient, ClientConfig>,
    tool: &str,
    args: Value,
    confirmed: Option<bool>,
) -> Result<(), DemoError> {
    let Value::Object(args) = args else {
        unreachable!("args are objects")
    };
    let mut params = CallToolRequestParams::new(tool.to_owned()).with_arguments(args);
    if let Some(c) = confirmed {
        let mut meta = RequestMetaObject::new();
        meta.insert(crate::semconv::META_USER_CONFIRMATION.into(), json!(c));
        params.meta = Some(meta);
    }
    client
        .call_tool(params)
        .await
        .map_err(|e| DemoError::Mcp(e.to_string()))?;
    Ok(())
}

fn emitter_config(endpoint: String, log: LogTarget) -> EmitConfig {
    EmitConfig {
        spans: SpanTarget::Otlp {
            endpoint: Some(endpoint),
        },
        log,
        batch: Some(BatchConfig {
            scheduled_delay: Duration::from_millis(50),
            ..BatchConfig::default()
        }),
        default_service_name: Some("mcp-otel-demo".into()),
        // The demo's collector is reached over gRPC, whatever OTEL_EXPORTER_OTLP_PROTOCOL says.
        otlp_protocol: Some(OtlpProtocol::Grpc),
        ..EmitConfig::default()
    }
}

/// Where a served demo's console listens when the port is free (else any free port).
const SERVE_METRICS: &str = "127.0.0.1:9464";

/// Runs the demo, writing to `out`. With `serve`, the collector keeps running after the
/// scripted session, with its console, until Ctrl-C.
pub async fn run(out: &mut (dyn Write + Send), serve: bool) -> Result<(), DemoError> {
    // The hop after collect, standing in for Jaeger: shows what arrived over gRPC.
    let mut receiver = testing::serve("127.0.0.1:0".parse().expect("literal address"), 4096)
        .await
        .map_err(DemoError::Receiver)?;
    // The audit trail lives in a fresh temporary folder, removed at the end.
    let audit_dir = std::env::temp_dir().join(format!("mcp-otel-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&audit_dir);
    std::fs::create_dir_all(&audit_dir).map_err(DemoError::Transport)?;
    let audit_db = audit_dir.join("mcp-audit.db");
    let collect_config = CollectConfig {
        forward: Some(receiver.endpoint()),
        audit: Some(audit_db.clone()),
        ..CollectConfig::ephemeral()
    };
    let served = CollectConfig {
        metrics_listen: SERVE_METRICS.into(),
        ..collect_config.clone()
    };
    let collector = match serve {
        true => match crate::collect::start(&served, None).await {
            Ok(c) => Ok(c),
            Err(_) => crate::collect::start(&collect_config, None).await,
        },
        false => crate::collect::start(&collect_config, None).await,
    }
    .map_err(|e| DemoError::Collect(e.to_string()))?;
    let endpoint = format!("http://{}", collector.grpc_addr);
    let _ = writeln!(
        out,
        "mcp-otel collect: OTLP/gRPC {endpoint}, metrics http://{}/metrics, forwarding to {}",
        collector.metrics_addr,
        receiver.endpoint()
    );

    // 1. A scripted session: one JSON line per call.
    let inst = Instrumentation::new(Emitter::new(&emitter_config(
        endpoint.clone(),
        LogTarget::Stdout,
    ))?);
    let tasks = TaskServer::with_sample_tasks();
    let (client, server_task) = session(
        Traced::new(tasks.clone(), inst.clone()).with_user("alice"),
        "demo-agent",
    )
    .await?;
    let _ = writeln!(out, "\nMCP session (tools/call → one JSON line each):");
    let _ = out.flush();
    let steps = script();
    for step in &steps {
        call(&client, step.tool, step.args.clone(), step.confirmed).await?;
    }
    let _ = client.cancel().await;
    let _ = server_task.await;
    inst.flush(Duration::from_secs(10)).await;

    let mut arrived: Vec<ToolCall> = Vec::new();
    while arrived.len() < steps.len() {
        match tokio::time::timeout(Duration::from_secs(10), receiver.calls.recv()).await {
            Ok(Some(call)) => arrived.push(call),
            _ => break,
        }
    }
    summarize(out, &arrived, steps.len(), &inst);

    // 2. A spike: an agent stuck in a loop, and a burst of writes by a second key.
    let spike = Instrumentation::new(Emitter::new(&emitter_config(
        endpoint.clone(),
        LogTarget::None,
    ))?);
    let (looper, t1) = session(
        Traced::new(tasks.clone(), spike.clone()).with_user("agent-7"),
        "loop-agent",
    )
    .await?;
    let (writer, t2) = session(
        Traced::new(tasks.clone(), spike.clone()).with_user("importer"),
        "bulk-importer",
    )
    .await?;
    for _ in 0..120 {
        call(&looper, "list_tasks", json!({"project_id": "p1"}), None).await?;
    }
    for i in 0..25 {
        let args = json!({"project_id": "p9", "title": format!("Imported task {i}")});
        call(&writer, "create_task", args, None).await?;
    }
    for c in [looper, writer] {
        let _ = c.cancel().await;
    }
    let _ = (t1.await, t2.await);
    spike.flush(Duration::from_secs(10)).await;
    // Let collect count the last export.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while collector.collector.active_alerts().len() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = writeln!(
        out,
        "\nSpike: agent-7 called list_tasks 120 times, importer created 25 tasks."
    );
    let _ = writeln!(
        out,
        "\nMetrics (http://{}/metrics, selected):",
        collector.metrics_addr
    );
    let text = collector.collector.metrics.encode();
    for line in text.lines().filter(|l| {
        !l.starts_with('#')
            && (l.starts_with("mcp_tool_calls_total")
                || l.starts_with("mcp_write_operations_total")
                || (l.starts_with("mcp_alerts_firing") && !l.ends_with(" 0")))
    }) {
        let _ = writeln!(out, "  {line}");
    }
    let _ = writeln!(out, "\nAlerts firing (built-in evaluator, /api/alerts):");
    for a in collector.collector.active_alerts() {
        let _ = writeln!(out, "  {:<16} {}", a.name(), a.summary);
    }
    // 2b. Confirmation: delete_task asks the user first (the rmcp helper); the user says
    // yes to one delete and no to the other.
    let gated = Instrumentation::new(Emitter::new(&emitter_config(endpoint, LogTarget::None))?);
    let user = super::confirm::ScriptedUser {
        answers: std::sync::Arc::new(std::sync::Mutex::new([true, false].into())),
        name: "desktop-client".into(),
    };
    let (server_io, client_io) = tokio::net::UnixStream::pair().map_err(DemoError::Transport)?;
    let server = Traced::new(
        super::confirm::GatedTasks {
            inner: tasks.clone(),
        },
        gated.clone(),
    )
    .with_user("carol");
    let server_task = tokio::spawn(async move {
        if let Ok(running) = server.serve(server_io.into_split()).await {
            let _ = running.waiting().await;
        }
    });
    let client = user
        .serve(client_io.into_split())
        .await
        .map_err(|e| DemoError::Mcp(e.to_string()))?;
    let _ = writeln!(
        out,
        "
Confirmation: carol's client is asked before each delete_task (elicitation); it \
         answers yes for t2, no for t1."
    );
    for id in ["t2", "t1"] {
        let Value::Object(args) = json!({ "id": id }) else {
            unreachable!("an object")
        };
        let result = client
            .call_tool(CallToolRequestParams::new("delete_task").with_arguments(args))
            .await
            .map_err(|e| DemoError::Mcp(e.to_string()))?;
        let _ = writeln!(
            out,
            "  delete_task {id}: {}",
            if result.is_error == Some(true) {
                "refused (the task is kept)"
            } else {
                "ran"
            }
        );
    }
    let _ = writeln!(out, "  tasks left: {}", tasks.task_ids().join(", "));
    let _ = client.cancel().await;
    let _ = server_task.await;
    gated.flush(Duration::from_secs(10)).await;
    // Let collect commit the last export to the audit trail.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let running = if serve {
        Some(collector)
    } else {
        collector.shutdown().await;
        None
    };

    // 3. The daily write review and a verify of the audit trail.
    let _ = writeln!(
        out,
        "\nDaily write review (mcp-otel audit review --since 24h):"
    );
    let now = chrono::Utc::now();
    let filter = crate::audit::review::ReviewFilter {
        since: now - chrono::TimeDelta::hours(24),
        until: now,
        user: None,
        tool: None,
    };
    let review = crate::audit::store::open_ro(&audit_db)
        .and_then(|conn| crate::audit::review::review(&conn, &audit_db, &filter));
    match review {
        Ok(r) => {
            let _ = r.render(out, false);
            let _ = writeln!(
                out,
                "\nThe review line of each delete the user was asked about:"
            );
            let asked = |w: &&crate::audit::review::WriteRow| {
                w.confirmation_source.as_deref() == Some("elicitation")
            };
            for w in r.writes.iter().filter(asked) {
                let _ = writeln!(
                    out,
                    "  {} {} {} {} confirmed={} outcome={} source={}{}",
                    w.timestamp,
                    w.user,
                    w.tool_name,
                    w.resource_id.as_deref().unwrap_or("-"),
                    w.user_confirmation
                        .map_or("unknown", |c| if c { "yes" } else { "NO" }),
                    w.confirmation_outcome.as_deref().unwrap_or("-"),
                    w.confirmation_source.as_deref().unwrap_or("-"),
                    if w.is_refused() {
                        "  (declined: never ran)"
                    } else {
                        ""
                    },
                );
            }
        }
        Err(e) => {
            let _ = writeln!(out, "  review failed: {e}");
        }
    }
    let options = crate::audit::verify::VerifyOptions::default();
    match crate::audit::verify::verify_path(&audit_db, &options) {
        Ok(report) => {
            let _ = writeln!(out, "\nmcp-otel audit verify: {}", report.summary());
        }
        Err(e) => {
            let _ = writeln!(out, "\nmcp-otel audit verify failed: {e}");
        }
    }
    if let Some(c) = running {
        let _ = writeln!(
            out,
            "\nConsole: http://{}/  (the demo's collector keeps running with its calls, alerts \
             and audit trail; Ctrl-C stops it)",
            c.metrics_addr
        );
        let _ = out.flush();
        let _ = tokio::signal::ctrl_c().await;
        c.shutdown().await;
    }
    let _ = std::fs::remove_dir_all(&audit_dir);
    Ok(())
}

fn summarize(
    out: &mut (dyn Write + Send),
    calls: &[ToolCall],
    expected: usize,
    inst: &Instrumentation,
) {
    let _ = writeln!(
        out,
        "\nSpans received over OTLP/gRPC: {} of {} (export stats: {:?})",
        calls.len(),
        expected,
        inst.stats()
    );
    let _ = writeln!(
        out,
        "{:<12} {:<7} {:<8} {:<11} {:<7} {:<5} {:<9} {:>9}",
        "tool", "user", "status", "error_code", "op", "id", "confirmed", "ms"
    );
    for c in calls {
        let w = c.write.as_ref();
        let _ = writeln!(
            out,
            "{:<12} {:<7} {:<8} {:<11} {:<7} {:<5} {:<9} {:>9.3}",
            c.tool_name,
            c.user,
            c.status,
            c.error_code.as_deref().unwrap_or("-"),
            c.operation_type().map(|o| o.as_str()).unwrap_or("read"),
            w.and_then(|w| w.resource_id.as_deref()).unwrap_or("-"),
            match w.and_then(|w| w.user_confirmation) {
                Some(true) => "yes",
                Some(false) => "no",
                None if c.is_write() => "unknown",
                None => "-",
            },
            c.duration_ms,
        );
    }
}
