//! `mcp-otel demo`: the tasks server, an OTLP/gRPC receiver and a scripted MCP client session,
//! in one process over real transports (MCP over a Unix socket pair, OTLP over gRPC on
//! 127.0.0.1). Prints the seed-format JSON lines as calls happen, then what arrived over gRPC.

use super::tasks::TaskServer;
use crate::capture::Instrumentation;
use crate::capture::rmcp::Traced;
use crate::collect::receive;
use crate::emit::{BatchConfig, EmitConfig, Emitter, LogTarget, SpanTarget};
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
    #[error("could not start the OTLP receiver on 127.0.0.1")]
    Receiver(#[source] std::io::Error),
    #[error("could not start the exporter: {0}")]
    Emit(#[from] crate::emit::EmitError),
    #[error("could not open the in-process MCP transport")]
    Transport(#[source] std::io::Error),
    #[error("MCP session failed: {0}")]
    Mcp(String),
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

/// Runs the demo, writing to `out`.
pub async fn run(out: &mut (dyn Write + Send)) -> Result<(), DemoError> {
    let mut receiver = receive::serve("127.0.0.1:0".parse().expect("literal address"), 1024)
        .await
        .map_err(DemoError::Receiver)?;
    let _ = writeln!(
        out,
        "OTLP/gRPC receiver listening on {}",
        receiver.endpoint()
    );
    let config = EmitConfig {
        spans: SpanTarget::Otlp {
            endpoint: Some(receiver.endpoint()),
        },
        log: LogTarget::Stdout,
        batch: Some(BatchConfig {
            scheduled_delay: Duration::from_millis(100),
            ..BatchConfig::default()
        }),
        default_service_name: Some("mcp-otel-demo".into()),
        ..EmitConfig::default()
    };
    let inst = Instrumentation::new(Emitter::new(&config)?);
    let server = Traced::new(TaskServer::with_sample_tasks(), inst.clone()).with_user("alice");

    let (server_io, client_io) = tokio::net::UnixStream::pair().map_err(DemoError::Transport)?;
    let server_task = tokio::spawn(async move {
        let running = server.serve(server_io.into_split()).await?;
        running.waiting().await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    });
    let client_config = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("demo-agent", env!("CARGO_PKG_VERSION")),
    );
    let client = client_config
        .serve(client_io.into_split())
        .await
        .map_err(|e| DemoError::Mcp(e.to_string()))?;

    let _ = writeln!(out, "\nMCP session (tools/call → one JSON line each):");
    let _ = out.flush();
    let steps = script();
    for step in &steps {
        let Value::Object(args) = step.args.clone() else {
            unreachable!("args are objects")
        };
        let mut params = CallToolRequestParams::new(step.tool).with_arguments(args);
        if let Some(c) = step.confirmed {
            let mut meta = RequestMetaObject::new();
            meta.insert(crate::semconv::META_USER_CONFIRMATION.into(), json!(c));
            params.meta = Some(meta);
        }
        client
            .call_tool(params)
            .await
            .map_err(|e| DemoError::Mcp(e.to_string()))?;
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
