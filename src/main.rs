//! `mcp-otel`: the command line. Parses flags, builds the pipeline, runs it.

use clap::{Parser, Subcommand};

mod cli_proxy;

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
    /// Instrument any MCP server without code changes: `proxy [OPTIONS] -- COMMAND [ARGS...]`
    /// (stdio) or `proxy --listen ADDR --upstream URL [OPTIONS]` (Streamable HTTP).
    Proxy(Box<cli_proxy::ProxyArgs>),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Proxy(args) => return cli_proxy::run(*args).await,
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
