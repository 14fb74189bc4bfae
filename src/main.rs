//! `mcp-otel`: the command line. Parses flags, builds the pipeline, runs it.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "mcp-otel",
    version,
    about = "OpenTelemetry observability for MCP tool calls"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the tasks MCP server, an OTLP/gRPC receiver and a scripted client session in one
    /// process; print the JSON log lines and the spans that arrived.
    Demo,
    /// Inspect the audit trail: verify, review, query, sql, prune, pubkey.
    Audit(mcp_otel::cli_audit::AuditArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Audit(args) => return mcp_otel::cli_audit::run(args).await,
        Command::Demo => {
            let mut out = std::io::stdout();
            mcp_otel::demo::run(&mut out)
                .await
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error>)
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mcp-otel: {e}");
            let mut source = e.source();
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            std::process::ExitCode::FAILURE
        }
    }
}
