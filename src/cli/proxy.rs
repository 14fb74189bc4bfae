//! `mcp-otel proxy`: flags, then build the emitter and the observer, then run the stdio or the
//! Streamable HTTP proxy.

use crate::capture::proxy::config::parse_duration;
use crate::capture::proxy::keys::KeyRing;
use crate::capture::proxy::{ObserverConfig, ObserverHandle, ProxyConfig, ProxyError, http, stdio};
use crate::emit::{EmitConfig, Emitter, LogTarget, SpanTarget};
use crate::record::Transport;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Instrument any MCP server: stdio (`[--] COMMAND [ARGS...]`) or Streamable HTTP
/// (`--listen ADDR --upstream URL`). Spans go over OTLP as the standard `OTEL_*` variables say
/// (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_PROTOCOL` grpc (default), http/protobuf or
/// http/json, `OTEL_SERVICE_NAME`, …; `OTEL_TRACES_EXPORTER=none` turns export off).
#[derive(clap::Args, Debug)]
pub struct ProxyArgs {
    /// Streamable HTTP: the address to listen on, e.g. 127.0.0.1:8080.
    #[arg(long, requires = "upstream", conflicts_with = "command")]
    pub(crate) listen: Option<SocketAddr>,
    /// Streamable HTTP: the server's MCP endpoint, e.g. http://127.0.0.1:3001/mcp.
    #[arg(long, requires = "listen")]
    pub(crate) upstream: Option<String>,
    /// Streamable HTTP: API keys, TOML `name = "sha256:<hex of the key>"`. The key comes from
    /// `Authorization: Bearer` or `X-API-Key`; a missing or unknown key gets 401.
    #[arg(long, requires = "listen")]
    pub(crate) keys: Option<PathBuf>,
    /// Streamable HTTP: forward the key header upstream too (off by default with --keys).
    #[arg(long, requires = "keys")]
    pub(crate) forward_auth: bool,
    /// The user to record (stdio; over HTTP an API key's name wins). Else the client's
    /// `clientInfo.name`, else `unknown`.
    #[arg(long, env = "MCP_OTEL_USER")]
    pub(crate) user: Option<String>,
    /// Per-tool configuration (TOML): operation_type, resource_id pointer, before-state reads.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// JSON log lines: a file path, `-` for stdout (HTTP only), `none`. Default: stderr for
    /// stdio, stdout for HTTP.
    #[arg(long, value_name = "PATH|-")]
    pub(crate) log: Option<String>,
    /// A call with no response after this is recorded as `timeout` (a late response is still
    /// relayed). E.g. 30s, 500ms, 2m.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) call_timeout: Option<Duration>,
    /// Do not inject the proxy span's `traceparent` into forwarded calls that carry none.
    #[arg(long)]
    pub(crate) no_inject: bool,
    /// Also record the tool result (`gen_ai.tool.call.result`, redacted).
    #[arg(long)]
    pub(crate) record_result: bool,
    /// Refuse, with a JSON-RPC error (-32603), a `tools/call` that cannot be recorded (the
    /// observation queue is full, or a message past the 16 MiB observation limit does not show
    /// its method, id and tool name in its first 16 MiB) instead of relaying it unrecorded.
    /// Observations are then never dropped: the relay waits for room instead.
    #[arg(long)]
    pub(crate) strict: bool,
    /// Events (batches of messages read together) the observation queue holds before the
    /// default mode drops observations and `--strict` refuses calls. The default suits any
    /// client; a small queue makes the flood behaviour easy to see (the tests use 16).
    #[arg(long, env = "MCP_OTEL_OBSERVE_QUEUE", value_name = "EVENTS", default_value_t = 16_384,
        value_parser = clap::value_parser!(u32).range(16..))]
    pub(crate) observe_queue: u32,
    /// How long to wait at exit (or after a signal) for spans to be exported.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub(crate) flush_timeout: Duration,
    /// The stdio server to run, after the proxy's own options: `--user carol npx server` and
    /// `--user carol -- npx server` are the same. Everything from COMMAND on is the server's.
    #[arg(value_name = "COMMAND", trailing_var_arg = true)]
    pub(crate) command: Vec<OsString>,
}

/// Runs the proxy to its end; the exit code is the server's or 128 + the signal that stopped
/// the proxy (stdio), or 0 after a signal (HTTP).
pub async fn run(args: ProxyArgs) -> ExitCode {
    match run_inner(args).await {
        Ok(code) => code,
        Err(e) => {
            super::print_error("mcp-otel proxy", &*e);
            ExitCode::from(2)
        }
    }
}

async fn run_inner(args: ProxyArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let http_mode = args.listen.is_some();
    if !http_mode && args.command.is_empty() {
        return Err(ProxyError::Usage(
            "give either `[--] COMMAND [ARGS...]` (stdio) or `--listen ADDR --upstream URL` \
             (Streamable HTTP)"
                .into(),
        )
        .into());
    }
    let log: LogTarget = match args.log.as_deref() {
        Some(s) => s.parse().expect("infallible"),
        None if http_mode => LogTarget::Stdout,
        None => LogTarget::Stderr,
    };
    if !http_mode && log == LogTarget::Stdout {
        return Err(ProxyError::Usage(
            "`--log -` would write into the MCP stream: stdout belongs to the stdio client; \
             use a file or stderr"
                .into(),
        )
        .into());
    }
    let tools = match &args.config {
        Some(path) => ProxyConfig::load(path)?,
        None => ProxyConfig::default(),
    };
    let keys = match &args.keys {
        Some(path) => Some(KeyRing::load(path)?),
        None => None,
    };
    let export_off = std::env::var("OTEL_TRACES_EXPORTER")
        .is_ok_and(|v| v.split(',').all(|e| e.trim().eq_ignore_ascii_case("none")));
    let emit_config = EmitConfig {
        spans: if export_off {
            SpanTarget::None
        } else {
            SpanTarget::Otlp { endpoint: None }
        },
        log,
        default_service_name: Some("mcp-otel-proxy".to_owned()),
        span_options: crate::emit::SpanOptions {
            record_result: args.record_result,
            ..Default::default()
        },
        ..EmitConfig::default()
    };
    crate::memory::keep_freed_memory_while_busy();
    // Built on a background-priority thread, so the export worker it starts inherits that.
    let emitter = std::thread::spawn(move || {
        crate::capture::proxy::sys::background_priority();
        Emitter::new(&emit_config)
    })
    .join()
    .map_err(|_| ProxyError::Usage("the exporter could not be built".into()))??;
    let tools = Arc::new(tools);
    let observer = ObserverHandle::spawn(
        ObserverConfig {
            tools: tools.clone(),
            transport: if http_mode {
                Transport::Http
            } else {
                Transport::Stdio
            },
            default_user: args.user.clone(),
            call_timeout: args.call_timeout,
            record_result: args.record_result,
            strict: args.strict,
            queue_capacity: args.observe_queue as usize,
        },
        emitter.clone(),
    )?;

    let code = if let (Some(listen), Some(upstream)) = (args.listen, args.upstream.clone()) {
        let options = http::HttpOptions {
            listen,
            upstream,
            keys,
            forward_auth: args.forward_auth,
            inject: !args.no_inject,
            tools,
        };
        let server = http::HttpProxy::bind(options, observer.clone()).await?;
        eprintln!(
            "mcp-otel proxy: listening on http://{}",
            server.local_addr()
        );
        server.run_until(shutdown_signal()).await?;
        ExitCode::SUCCESS
    } else {
        let options = stdio::StdioOptions {
            command: args.command.clone(),
            inject: !args.no_inject,
            tools,
            max_line: stdio::DEFAULT_MAX_LINE,
        };
        // Export what is recorded as soon as the client has gone: a client that quits closes
        // stdin, then kills the proxy if the server is slow to exit (the SDKs: after 2 s).
        let early = (observer.clone(), emitter.clone(), args.flush_timeout);
        let control = stdio::Control::default().on_client_closed(move || {
            let (observer, emitter, timeout) = early;
            let _ = std::thread::Builder::new()
                .name("mcp-otel-flush".into())
                .spawn(move || {
                    observer.sync(timeout);
                    emitter.flush_blocking(timeout);
                });
        });
        // Listening before the server starts: no signal can kill the proxy unrecorded.
        let signals = pass_signals(control.stopper())?;
        let relay_observer = observer.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            use std::os::fd::AsFd;
            let dup = |fd: std::os::fd::BorrowedFd<'_>, what: &str| {
                fd.try_clone_to_owned()
                    .map(std::fs::File::from)
                    .map_err(|source| ProxyError::Io {
                        what: format!("duplicating {what}"),
                        source,
                    })
            };
            // Unbuffered handles on fds 0 and 1: bytes leave as soon as they are read.
            let stdin = dup(std::io::stdin().as_fd(), "stdin")?;
            let stdout = dup(std::io::stdout().as_fd(), "stdout")?;
            stdio::run(options, relay_observer, stdin, stdout, control)
        })
        .await??;
        signals.abort();
        if let stdio::Outcome::Signalled { signal, .. } = outcome {
            eprintln!(
                "mcp-otel proxy: stopped by {} (passed on to the server); calls still in \
                 flight are recorded as `{}`",
                signal_name(signal),
                crate::record::error_code::PROXY_TERMINATED
            );
        }
        ExitCode::from(outcome.exit_code())
    };
    // One budget for both steps: after a signal, the client's kill is not far off.
    let deadline = tokio::time::Instant::now() + args.flush_timeout;
    let observer_done = {
        let observer = observer.clone();
        let timeout = args.flush_timeout;
        tokio::task::spawn_blocking(move || observer.sync(timeout)).await?
    };
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    let exported = emitter.flush(left).await;
    eprintln!(
        "mcp-otel proxy: {}; {}{}",
        observer.stats().summary(),
        emitter.export_summary(),
        if observer_done && exported {
            ""
        } else {
            "; some spans may not have been exported"
        }
    );
    Ok(code)
}

/// Forwards SIGTERM, SIGINT and SIGHUP to the stdio proxy until the returned task is aborted.
fn pass_signals(stopper: stdio::Stopper) -> std::io::Result<tokio::task::JoinHandle<()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        Ok(tokio::spawn(async move {
            loop {
                let sig = tokio::select! {
                    _ = term.recv() => libc::SIGTERM,
                    _ = int.recv() => libc::SIGINT,
                    _ = hup.recv() => libc::SIGHUP,
                };
                stopper.signal(sig);
            }
        }))
    }
    #[cfg(not(unix))]
    {
        Ok(tokio::spawn(async move {
            while tokio::signal::ctrl_c().await.is_ok() {
                stopper.signal(libc::SIGINT);
            }
        }))
    }
}

fn signal_name(signal: i32) -> String {
    match signal {
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGINT => "SIGINT".into(),
        libc::SIGHUP => "SIGHUP".into(),
        other => format!("signal {other}"),
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
