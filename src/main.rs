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
    Demo {
        /// Keep the demo's collector running afterwards and print its console's URL.
        #[arg(long)]
        serve: bool,
    },
    /// Receive OTLP spans, derive the spike metrics for Prometheus, evaluate the alerts,
    /// forward the traces.
    Collect(Box<mcp_otel::cli::collect::CollectArgs>),
    /// Instrument any MCP server without code changes: `proxy [OPTIONS] -- COMMAND [ARGS...]`
    /// (stdio) or `proxy --listen ADDR --upstream URL [OPTIONS]` (Streamable HTTP).
    Proxy(Box<mcp_otel::cli::proxy::ProxyArgs>),
    /// Inspect the audit trail: verify, review, query, sql, prune, pubkey.
    Audit(Box<mcp_otel::cli::audit::AuditArgs>),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Collect(_)) {
        // Before any thread allocates: each would get a malloc arena of its own.
        mcp_otel::cli::collect::few_malloc_arenas();
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the Tokio runtime starts")
        .block_on(run(cli))
}

async fn run(cli: Cli) -> std::process::ExitCode {
    let result: Result<(), Box<dyn std::error::Error>> = match cli.command {
        Command::Proxy(args) => return mcp_otel::cli::proxy::run(*args).await,
        Command::Audit(args) => return mcp_otel::cli::audit::run(*args).await,
        Command::Demo { serve } => {
            let mut out = std::io::stdout();
            mcp_otel::demo::run(&mut out, serve)
                .await
                .map_err(Into::into)
        }
        Command::Collect(args) => mcp_otel::cli::collect::run(*args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            mcp_otel::cli::print_error("mcp-otel", &*e);
            std::process::ExitCode::FAILURE
        }
    }
}
