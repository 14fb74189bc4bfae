//! Starting `mcp-otel collect`: bind every listener, open the store, then serve the receivers
//! (`super::receive`), the HTTP endpoints for Prometheus and people (`/metrics`, `/healthz`,
//! `/api/alerts`, the console at `/`: [`super::console`]), the alert clock and the retention
//! task, until stopped.

use super::config::{CollectConfig, ConfigError, Validated};
use super::ingest::{CallStore, Collector};
use super::receive;
use super::staging::Staging;
use crate::audit::{AuditOptions, AuditWriter};
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Why `collect` could not start.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// The configuration is invalid (every problem, each naming its field).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The TLS certificate or key could not be read or used.
    #[error("{0}")]
    Tls(String),
    /// The audit store could not be opened or migrated.
    #[error("cannot open the audit trail")]
    Audit(#[from] crate::audit::AuditError),
    /// The staging table (other instrumentations' calls held durably during the hold window) could
    /// not be opened.
    #[error("cannot hold calls beside the audit trail")]
    Staging(#[source] super::staging::StagingError),
    /// A listener could not bind its address.
    #[error("cannot listen on {addr} (`{field}`)")]
    Bind {
        /// The config field of the address (`grpc_listen`, `http_listen`, `metrics_listen`).
        field: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// Why binding failed.
        #[source]
        source: std::io::Error,
    },
}

/// A running `collect`: its bound addresses and its processor.
pub struct RunningCollector {
    /// Where the OTLP/gRPC receiver listens (the real port when the config said `:0`).
    pub grpc_addr: SocketAddr,
    /// Where the OTLP/HTTP receiver listens.
    pub http_addr: SocketAddr,
    /// Where `/metrics`, `/healthz`, `/api/alerts` and the console are served.
    pub metrics_addr: SocketAddr,
    pub(crate) collector: Arc<Collector>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningCollector {
    /// Stops the listeners and background tasks.
    pub async fn shutdown(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

async fn bind(field: &'static str, addr: SocketAddr) -> Result<TcpListener, CollectError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| CollectError::Bind {
            field,
            addr,
            source,
        })
}

/// The three bound listeners.
struct Listeners {
    grpc: TcpListener,
    http: TcpListener,
    metrics: TcpListener,
}

/// Binds every listener first, so that a port in use fails the start before anything runs.
async fn bind_all(v: &Validated) -> Result<Listeners, CollectError> {
    Ok(Listeners {
        grpc: bind("grpc_listen", v.grpc_listen).await?,
        http: bind("http_listen", v.http_listen).await?,
        metrics: bind("metrics_listen", v.metrics_listen).await?,
    })
}

/// Where acknowledged calls go: the store, and the audit writer behind it when `collect`
/// opened the configured file itself (the retention task prunes through it).
struct Store {
    store: Option<Arc<dyn CallStore>>,
    /// Where other instrumentations' calls wait out the hold window: beside the trail.
    staging: Option<Staging>,
    writer: Option<AuditWriter>,
    /// What the console reads: the PostgreSQL store, else the store's SQLite file.
    console: Option<super::console::store::Trail>,
}

/// The audit trail: the store given by the caller, else the configured file.
fn open_store(
    config: &CollectConfig,
    given: Option<Arc<dyn CallStore>>,
) -> Result<Store, CollectError> {
    if given.is_none()
        && let Some(url) = config.audit_postgres()
    {
        let options = config.audit_postgres_options();
        let staging = Staging::postgres(url, &options.chain_id).map_err(CollectError::Staging)?;
        let pg = crate::audit::pg::PgWriter::open(url, options)?;
        return Ok(Store {
            store: Some(Arc::new(pg)),
            staging: Some(staging),
            writer: None,
            console: Some(super::console::store::Trail::postgres(url)?),
        });
    }
    let writer = match (&given, config.audit_path()) {
        (None, Some(path)) => Some(AuditWriter::open(path, AuditOptions::default())?),
        _ => None,
    };
    let store = given.or_else(|| writer.clone().map(|w| Arc::new(w) as Arc<dyn CallStore>));
    let path = store.as_ref().and_then(|s| s.staging_path());
    let console = path.map(|p| super::console::store::Trail::sqlite(p.to_path_buf()));
    let staging = path
        .map(Staging::sqlite)
        .transpose()
        .map_err(CollectError::Staging)?;
    Ok(Store {
        store,
        staging,
        writer,
        console,
    })
}

/// Validates the configuration, binds every listener, and starts serving.
pub async fn start(
    config: &CollectConfig,
    store: Option<Arc<dyn CallStore>>,
) -> Result<RunningCollector, CollectError> {
    let v: Validated = config.validate()?;
    let listeners = bind_all(&v).await?;
    let addrs = (
        listeners.grpc.local_addr().expect("bound"),
        listeners.http.local_addr().expect("bound"),
        listeners.metrics.local_addr().expect("bound"),
    );
    let generator = format!("http://{}/api/alerts", addrs.2);
    let Store {
        store,
        staging,
        writer,
        console: console_audit,
    } = open_store(config, store)?;
    let collector = Arc::new(Collector::new(
        config,
        v.forward.clone(),
        v.alert_webhook.clone(),
        generator,
        store,
        staging,
    ));
    // The calls held when the last run stopped. A database that cannot be reached now is not
    // an error: exports are refused (retryably) until they are restored.
    match collector.restore().await {
        Err(e) if !e.retryable => return Err(CollectError::Staging(e)),
        Err(e) => eprintln!("mcp-otel collect: restoring held calls: {e} (retrying)"),
        Ok(()) => {}
    }
    let stop = CancellationToken::new();
    let token: Option<Arc<str>> = config.token.as_deref().map(Arc::from);
    let tls = load_tls(config)?;
    let acceptor = http_tls(tls.as_ref())?;
    let audit_service = match config.audit_postgres() {
        Some(url) => Some(crate::audit::grpc::postgres_service(url)),
        None => config
            .audit_path()
            .filter(|_| writer.is_some())
            .map(crate::audit::grpc::service),
    };
    // One share of the descriptors per listener, so that `/healthz` keeps its own.
    let cap = crate::serve::connection_cap(3);
    let limits = config.limits.clone();
    let budget = crate::serve::BodyBudget::new(limits.body_bytes_in_flight);
    let mut tasks = vec![serve_grpc(
        listeners.grpc,
        &collector,
        token.clone(),
        audit_service,
        tls.as_ref(),
        (limits.clone(), cap),
        stop.clone(),
    )?];
    // Without the `tls` feature the acceptor is an `Option<Infallible>`, which is `Copy`.
    #[allow(clippy::clone_on_copy)]
    let http_acceptor = acceptor.clone();
    tasks.push(tokio::spawn(serve_http(
        listeners.http,
        receive::http::router(collector.clone(), token, budget, limits.body_timeout),
        http_acceptor,
        (limits.clone(), cap),
        stop.clone(),
    )));
    let console = super::console::Console::new(
        collector.clone(),
        console_audit,
        config.token.as_deref(),
        tls.is_some(),
        config.jaeger_url.as_deref(),
        stop.clone(),
    );
    tasks.push(tokio::spawn(serve_http(
        listeners.metrics,
        ops_router(collector.clone()).merge(super::console::router(console)),
        acceptor,
        (limits, cap),
        stop.clone(),
    )));
    tasks.push(tokio::spawn(clock(
        collector.clone(),
        config.alerts.resolution,
        stop.clone(),
    )));
    if let Some(w) = writer {
        tasks.push(tokio::spawn(retention_task(
            w,
            config.retention,
            stop.clone(),
        )));
    }
    Ok(RunningCollector {
        grpc_addr: addrs.0,
        http_addr: addrs.1,
        metrics_addr: addrs.2,
        collector,
        stop,
        tasks,
    })
}

/// OTLP/gRPC, and the remote review of the audit trail, behind the same token.
fn serve_grpc(
    listener: TcpListener,
    collector: &Arc<Collector>,
    token: Option<Arc<str>>,
    audit_service: Option<crate::audit::grpc::AuditServiceServer<crate::audit::grpc::AuditService>>,
    #[cfg_attr(not(feature = "tls"), allow(unused_variables))] tls: Option<&Pem>,
    (limits, cap): (crate::serve::Limits, usize),
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, CollectError> {
    let check = receive::grpc::token_check(token);
    let traces = receive::oversize::OversizeIsPermanent(
        tonic::service::interceptor::InterceptedService::new(
            receive::grpc::trace_service(collector.clone()),
            check.clone(),
        ),
    );
    let audit_service = audit_service
        .map(|service| tonic::service::interceptor::InterceptedService::new(service, check));
    #[cfg_attr(not(feature = "tls"), allow(unused_mut))]
    let mut builder = tonic::transport::Server::builder();
    #[cfg(feature = "tls")]
    if let Some(pem) = tls {
        let identity = tonic::transport::Identity::from_pem(&pem.cert, &pem.key);
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| CollectError::Tls(format!("TLS: {e}")))?;
    }
    let incoming = crate::serve::incoming(listener, limits.clone(), cap);
    Ok(tokio::spawn(async move {
        let _ = builder
            .concurrency_limit_per_connection(CONCURRENT_REQUESTS_PER_CONNECTION)
            .http2_keepalive_interval(Some(crate::serve::H2_KEEPALIVE.0))
            .http2_keepalive_timeout(Some(crate::serve::H2_KEEPALIVE.1))
            .timeout(limits.body_timeout)
            .add_service(traces)
            .add_optional_service(audit_service)
            .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
            .await;
    }))
}

/// `/metrics`, `/healthz`, `/api/alerts`.
fn ops_router(collector: Arc<Collector>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/api/alerts", get(active_alerts))
        .with_state(collector)
}

/// The collector's clock: alert resolutions and the promotion of held calls whose hold window
/// ended, every tick; a re-send of firing alerts every minute.
async fn clock(c: Arc<Collector>, resolution: Duration, stop: CancellationToken) {
    let tick = resolution
        .max(Duration::from_millis(100))
        .min(Duration::from_secs(1));
    let mut interval = tokio::time::interval(tick);
    let mut last_resend = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        c.tick();
        c.promote_due().await;
        if last_resend.elapsed() >= Duration::from_secs(60) {
            c.resend_firing();
            last_resend = tokio::time::Instant::now();
        }
    }
}

/// Retention: prunes the audit trail hourly through a signed retention checkpoint.
async fn retention_task(w: AuditWriter, retention: Duration, stop: CancellationToken) {
    let keep = chrono::TimeDelta::from_std(retention).unwrap_or(chrono::TimeDelta::MAX);
    let mut interval = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        if let Err(e) = w.prune(chrono::Utc::now() - keep).await {
            eprintln!("mcp-otel collect: audit retention: {e}");
        }
    }
}

/// Requests served at once on one gRPC connection.
const CONCURRENT_REQUESTS_PER_CONNECTION: usize = 64;

#[cfg(feature = "tls")]
type Pem = super::tls::Pem;
#[cfg(not(feature = "tls"))]
type Pem = std::convert::Infallible;

#[cfg(feature = "tls")]
type Acceptor = Option<tokio_rustls::TlsAcceptor>;
#[cfg(not(feature = "tls"))]
type Acceptor = Option<std::convert::Infallible>;

/// The certificate and key, when TLS is configured (validation already checked the build).
fn load_tls(config: &CollectConfig) -> Result<Option<Pem>, CollectError> {
    match (&config.tls_cert, &config.tls_key) {
        #[cfg(feature = "tls")]
        (Some(cert), Some(key)) => super::tls::read_pem(cert, key)
            .map(Some)
            .map_err(|e| CollectError::Tls(e.to_string())),
        _ => Ok(None),
    }
}

fn http_tls(pem: Option<&Pem>) -> Result<Acceptor, CollectError> {
    #[cfg(feature = "tls")]
    return pem
        .map(super::tls::acceptor)
        .transpose()
        .map_err(|e| CollectError::Tls(e.to_string()));
    #[cfg(not(feature = "tls"))]
    Ok(pem.map(|never| match *never {}))
}

/// Serves `router` on `tcp`, over TLS when an acceptor is given, under `limits` with at most
/// `cap` connections, until `stop`.
async fn serve_http(
    tcp: TcpListener,
    router: Router,
    tls: Acceptor,
    (limits, cap): (crate::serve::Limits, usize),
    stop: CancellationToken,
) {
    match tls {
        #[cfg(feature = "tls")]
        Some(acceptor) => {
            // Handshakes count against the descriptors too: half the connection cap, each
            // within the time a request head gets.
            let listener =
                super::tls::TlsListener::new(tcp, acceptor, limits.header_timeout, cap / 2);
            crate::serve::serve_http(listener, router, limits, cap, stop).await;
        }
        #[cfg(not(feature = "tls"))]
        Some(never) => match never {},
        None => crate::serve::serve_http(tcp, router, limits, cap, stop).await,
    }
}

async fn metrics_text(State(c): State<Arc<Collector>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        c.metrics.encode(),
    )
        .into_response()
}

async fn active_alerts(State(c): State<Arc<Collector>>) -> Response {
    let alerts = c.active_alerts();
    axum::Json(serde_json::json!({ "alerts": alerts })).into_response()
}
