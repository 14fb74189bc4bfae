//! `mcp-otel collect`: flags and environment over an optional TOML file, then run until Ctrl-C.

use crate::collect::{self, CollectConfig};
use clap::Args;
use std::path::PathBuf;

/// Receive OTLP, derive the spike metrics, evaluate the alerts, forward traces.
#[derive(Args, Debug)]
pub struct CollectArgs {
    /// TOML file with any of the settings below, plus `[alerts.*]` thresholds and windows.
    #[arg(long, env = "MCP_OTEL_CONFIG")]
    config: Option<PathBuf>,
    /// OTLP/gRPC listen address [default: 127.0.0.1:4317].
    #[arg(long, env = "MCP_OTEL_GRPC_LISTEN")]
    grpc_listen: Option<String>,
    /// OTLP/HTTP listen address, `POST /v1/traces` [default: 127.0.0.1:4318].
    #[arg(long, env = "MCP_OTEL_HTTP_LISTEN")]
    http_listen: Option<String>,
    /// `/metrics`, `/healthz`, `/api/alerts` listen address [default: 127.0.0.1:9464].
    #[arg(long, env = "MCP_OTEL_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Next OTLP/gRPC hop for the received spans, e.g. http://jaeger:4317.
    #[arg(long, env = "MCP_OTEL_FORWARD")]
    forward: Option<String>,
    /// Alertmanager base URL (or full `/api/v2/alerts` URL) for the built-in alerts.
    #[arg(long, env = "MCP_OTEL_ALERT_WEBHOOK")]
    alert_webhook: Option<String>,
    /// Jaeger UI base URL (e.g. http://jaeger:16686): the console's call detail links each
    /// call to `<url>/trace/<trace id>`.
    #[arg(long, env = "MCP_OTEL_JAEGER_URL")]
    jaeger_url: Option<String>,
    /// Bearer token every OTLP request must carry (prefer the environment variable).
    #[arg(long, env = "MCP_OTEL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The audit trail: a SQLite file, or a PostgreSQL URL (`postgres://user@host/db`, with
    /// `sslmode` and `sslrootcert`); `none` disables it [default: ./mcp-audit.db].
    #[arg(long, env = "MCP_OTEL_AUDIT_DB")]
    audit: Option<PathBuf>,
    /// With a PostgreSQL audit trail: this replica's chain id, unique per replica [default:
    /// `<hostname>/<grpc listen address>`].
    #[arg(long, env = "MCP_OTEL_AUDIT_CHAIN_ID")]
    chain_id: Option<String>,
    /// With a PostgreSQL audit trail: the key file that signs this replica's checkpoints
    /// [default: ./mcp-audit-<chain id>.key].
    #[arg(long, env = "MCP_OTEL_AUDIT_KEY")]
    audit_key: Option<PathBuf>,
    /// Prune audit rows older than this (`90d`, `12h`) [default: 90d].
    #[arg(long, env = "MCP_OTEL_RETENTION", value_parser = parse_retention)]
    retention: Option<std::time::Duration>,
    /// How long another instrumentation's span of a call waits for ours before it counts on
    /// its own (`10s`, `500ms`, `0s`) [default: 10s].
    #[arg(long, env = "MCP_OTEL_HOLD_WINDOW", value_parser = parse_retention)]
    hold_window: Option<std::time::Duration>,
    /// PEM certificate chain: TLS on every listener (needs a build with `--features tls`).
    #[arg(long, env = "MCP_OTEL_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for `--tls-cert`.
    #[arg(long, env = "MCP_OTEL_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Distinct values kept per label per metric before folding into `__overflow__`.
    #[arg(long, env = "MCP_OTEL_MAX_LABEL_VALUES")]
    max_label_values: Option<usize>,
}

impl CollectArgs {
    /// Defaults, then the file, then flags and environment.
    pub(crate) fn config(&self) -> Result<CollectConfig, collect::config::ConfigError> {
        let mut c = match &self.config {
            Some(path) => CollectConfig::from_file(path)?,
            None => CollectConfig::default(),
        };
        set(&mut c.grpc_listen, &self.grpc_listen);
        set(&mut c.http_listen, &self.http_listen);
        set(&mut c.metrics_listen, &self.metrics_listen);
        set_given(&mut c.forward, &self.forward);
        set_given(&mut c.alert_webhook, &self.alert_webhook);
        set_given(&mut c.token, &self.token);
        set_given(&mut c.jaeger_url, &self.jaeger_url);
        set_given(&mut c.audit, &self.audit);
        set_given(&mut c.audit_chain_id, &self.chain_id);
        set_given(&mut c.audit_key, &self.audit_key);
        set(&mut c.retention, &self.retention);
        set(&mut c.hold_window, &self.hold_window);
        if self.tls_cert.is_some() {
            c.tls_cert.clone_from(&self.tls_cert);
            c.tls_key.clone_from(&self.tls_key);
        }
        set(&mut c.max_label_values, &self.max_label_values);
        Ok(c)
    }
}

/// At most two glibc malloc arenas for `collect`, set before its threads start. Otherwise every
/// runtime thread that allocates gets an arena of its own (up to eight per core), and each keeps
/// the pages of the exports (hundreds of kB each) it last buffered: megabytes held for nothing
/// once the load stops. One arena per core (two on this project's 2-core test machine) cost no
/// measurable throughput (see docs/benchmarks.md, issue 13).
pub fn few_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets the allocator's own parameters; called before other threads.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, malloc_arenas());
    }
}

/// One arena per core (at least two): glibc's default is eight per core, each keeping the
/// pages of the buffers freed in it; fewer than the runtime's workers would make them contend.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn malloc_arenas() -> i32 {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 64) as i32)
}

/// Every [`TRIM_EVERY`], the allocator's free pages go back to the system: the buffers of the
/// exports of a burst are freed when it ends, but glibc keeps their pages in its arenas.
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Hands the allocator's free pages back, every [`TRIM_EVERY`] (a walk of its free lists: tens
/// of microseconds for a heap of a few MiB).
async fn trim_free_memory() {
    let mut every = tokio::time::interval(TRIM_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        // Off the runtime's workers: the walk takes the arenas' locks.
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        let _ = tokio::task::spawn_blocking(crate::memory::release_free_memory).await;
    }
}

/// A value given on the command line (or in the environment) replaces the file's.
fn set<T: Clone>(slot: &mut T, given: &Option<T>) {
    if let Some(v) = given {
        slot.clone_from(v);
    }
}

/// An optional setting given on the command line (or in the environment) replaces the file's.
fn set_given<T: Clone>(slot: &mut Option<T>, given: &Option<T>) {
    if given.is_some() {
        slot.clone_from(given);
    }
}

fn parse_retention(s: &str) -> Result<std::time::Duration, String> {
    crate::duration::parse_duration(s)
}

/// Runs `mcp-otel collect` until SIGINT, SIGTERM or SIGHUP (Ctrl-C off Unix), then shuts down
/// (draining exports, signing
/// the audit head).
pub async fn run(args: CollectArgs) -> Result<(), Box<dyn std::error::Error>> {
    let config = args.config()?;
    let running = collect::start(&config, None).await?;
    eprintln!(
        "mcp-otel collect: OTLP/gRPC on {}, OTLP/HTTP on {}, metrics on http://{}/metrics{}{}",
        running.grpc_addr,
        running.http_addr,
        running.metrics_addr,
        config
            .forward
            .as_deref()
            .map(|f| format!(", forwarding to {f}"))
            .unwrap_or_default(),
        config
            .alert_webhook
            .as_deref()
            .map(|w| format!(", alerts to {w}"))
            .unwrap_or_default(),
    );
    eprintln!(
        "mcp-otel collect: console on http://{}/{}",
        running.metrics_addr,
        if config.token.is_some() {
            " (asks for the token)"
        } else {
            ""
        }
    );
    if let Some(path) = config.audit_path() {
        let p = path.display();
        eprintln!("mcp-otel collect: audit trail {p} (review: mcp-otel audit review --db {p})");
    }
    if config.audit_postgres().is_some() {
        let options = config.audit_postgres_options();
        eprintln!(
            "mcp-otel collect: audit trail in PostgreSQL, chain {:?}, key {}",
            options.chain_id,
            options.key_path.display()
        );
    }
    let trim = tokio::spawn(trim_free_memory());
    let signal = stop_signal().await?;
    trim.abort();
    eprintln!(
        "mcp-otel collect: {signal}: shutting down (draining exports, signing the audit head)"
    );
    running.shutdown().await;
    Ok(())
}

/// Waits for SIGINT (Ctrl-C), SIGTERM (what `docker stop`, Kubernetes and systemd send) or
/// SIGHUP: each stops the collector the same graceful way, with the shutdown checkpoint.
async fn stop_signal() -> std::io::Result<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut hup = signal(SignalKind::hangup())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.map(|()| "SIGINT"),
            _ = term.recv() => Ok("SIGTERM"),
            _ = hup.recv() => Ok("SIGHUP"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.map(|()| "Ctrl-C")
    }
}
