//! The tasks MCP server over stdio, instrumented with mcp-otel's rmcp wrapper.
//!
//! ```text
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 cargo run --example tasks_server
//! ```
//!
//! Spans go over OTLP/gRPC as the standard `OTEL_*` variables say; JSON lines go to stderr, or
//! to the file `MCP_OTEL_LOG` names. The user is `MCP_OTEL_USER`, else the client's name.

use mcp_otel::capture::Instrumentation;
use mcp_otel::capture::rmcp::Traced;
use mcp_otel::demo::tasks::TaskServer;
use mcp_otel::emit::{EmitConfig, Emitter, LogTarget, SpanTarget};
use rmcp::ServiceExt;
use std::time::Duration;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match serve().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Display, not Debug: the message names the variable and the bad value.
            eprintln!("tasks_server: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve() -> Result<(), Box<dyn std::error::Error>> {
    let log = match std::env::var("MCP_OTEL_LOG") {
        Ok(path) => path.parse()?,
        Err(_) => LogTarget::Stderr,
    };
    let config = EmitConfig {
        spans: SpanTarget::Otlp { endpoint: None },
        log,
        default_service_name: Some("mcp-otel-tasks".into()),
        ..EmitConfig::default()
    };
    let inst = Instrumentation::new(Emitter::new(&config)?);
    let mut server = Traced::new(TaskServer::with_sample_tasks(), inst.clone());
    if let Ok(user) = std::env::var("MCP_OTEL_USER") {
        server = server.with_user(user);
    }
    let running = server.serve(rmcp::transport::stdio()).await?;
    running.waiting().await?;
    // The client has gone: send what is still queued before exiting.
    inst.flush(Duration::from_secs(5)).await;
    Ok(())
}
