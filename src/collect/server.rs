//! The listeners of `mcp-otel collect`: OTLP/gRPC, OTLP/HTTP (protobuf and JSON, `/v1/traces`),
//! and the HTTP endpoints for Prometheus and people (`/metrics`, `/healthz`, `/api/alerts`).

use super::config::{CollectConfig, ConfigError, Validated};
use super::ingest::{CallStore, Collector, IngestError};
use super::receive::MAX_MESSAGE_BYTES;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Why `collect` could not start.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Tls(String),
    #[error("cannot open the audit trail")]
    Audit(#[from] crate::audit::AuditError),
    #[error("cannot hold calls beside the audit trail")]
    Staging(#[source] super::staging::StagingError),
    #[error("cannot listen on {addr} (`{field}`)")]
    Bind {
        field: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl From<IngestError> for tonic::Status {
    fn from(e: IngestError) -> Self {
        match e {
            // UNAVAILABLE is retryable for OTLP exporters: the collector's retry fills the gap.
            IngestError::Store(ref s) if s.retryable => tonic::Status::unavailable(e.to_string()),
            IngestError::Store(_) => tonic::Status::internal(e.to_string()),
            IngestError::ShuttingDown => tonic::Status::unavailable(e.to_string()),
        }
    }
}

/// True when the request carries `authorization: Bearer <token>` (or no token is required).
fn authorized(token: Option<&str>, value: Option<&str>) -> bool {
    match token {
        None => true,
        Some(t) => value
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .is_some_and(|given| constant_time_eq(given.as_bytes(), t.as_bytes())),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Clone)]
struct GrpcTraces(Arc<Collector>);

#[tonic::async_trait]
impl TraceService for GrpcTraces {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        Ok(tonic::Response::new(
            self.0.ingest(request.into_inner()).await?,
        ))
    }
}

/// A running `collect`: its bound addresses and its processor.
pub struct RunningCollector {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub collector: Arc<Collector>,
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

/// Validates the configuration, binds every listener, and starts serving.
pub async fn start(
    config: &CollectConfig,
    store: Option<Arc<dyn CallStore>>,
) -> Result<RunningCollector, CollectError> {
    let v: Validated = config.validate()?;
    let grpc = bind("grpc_listen", v.grpc_listen).await?;
    let http = bind("http_listen", v.http_listen).await?;
    let metrics = bind("metrics_listen", v.metrics_listen).await?;
    let addrs = (
        grpc.local_addr().expect("bound"),
        http.local_addr().expect("bound"),
        metrics.local_addr().expect("bound"),
    );
    let generator = format!("http://{}/api/alerts", addrs.2);
    // The audit trail: a store given by the caller, else the configured file.
    let writer = match (&store, config.audit_path()) {
        (None, Some(path)) => Some(crate::audit::writer::AuditWriter::open(
            path,
            crate::audit::writer::AuditOptions::default(),
        )?),
        _ => None,
    };
    let store = store.or_else(|| writer.clone().map(|w| Arc::new(w) as Arc<dyn CallStore>));
    // Other instrumentations' calls wait out the hold window beside the audit trail.
    let staging = store
        .as_ref()
        .and_then(|s| s.staging_path())
        .map(super::staging::Staging::open)
        .transpose()
        .map_err(CollectError::Staging)?;
    let collector = Arc::new(
        Collector::new(
            config,
            v.forward.clone(),
            v.alert_webhook.clone(),
            generator,
            store,
            staging,
        )
        .map_err(CollectError::Staging)?,
    );
    let stop = CancellationToken::new();
    let token: Option<Arc<str>> = config.token.as_deref().map(Arc::from);
    let mut tasks = Vec::new();

    // OTLP/gRPC.
    let grpc_token = token.clone();
    let check = move |req: tonic::Request<()>| {
        let value = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if authorized(grpc_token.as_deref(), value) {
            Ok(req)
        } else {
            Err(tonic::Status::unauthenticated(
                "a valid bearer token is required",
            ))
        }
    };
    let traces = TraceServiceServer::new(GrpcTraces(collector.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    let traces = tonic::service::interceptor::InterceptedService::new(traces, check.clone());
    // Remote review of the audit trail, behind the same token.
    let audit_service = config
        .audit_path()
        .filter(|_| writer.is_some())
        .map(|path| {
            tonic::service::interceptor::InterceptedService::new(
                crate::audit::grpc::service(path.to_path_buf()),
                check,
            )
        });
    let s = stop.clone();
    let incoming = tokio_stream_incoming(grpc);
    let tls = load_tls(config)?;
    #[cfg_attr(not(feature = "tls"), allow(unused_mut))]
    let mut builder = tonic::transport::Server::builder();
    #[cfg(feature = "tls")]
    if let Some(pem) = &tls {
        let identity = tonic::transport::Identity::from_pem(&pem.cert, &pem.key);
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| CollectError::Tls(format!("TLS: {e}")))?;
    }
    let acceptor = http_tls(tls.as_ref())?;
    tasks.push(tokio::spawn(async move {
        let _ = builder
            .concurrency_limit_per_connection(config_limit())
            .add_service(traces)
            .add_optional_service(audit_service)
            .serve_with_incoming_shutdown(incoming, s.cancelled_owned())
            .await;
    }));

    // OTLP/HTTP.
    let otlp_http = Router::new()
        .route("/v1/traces", post(http_traces))
        .layer(DefaultBodyLimit::max(MAX_MESSAGE_BYTES))
        .with_state(HttpState {
            collector: collector.clone(),
            token,
        });
    // Without the `tls` feature the acceptor is an `Option<Infallible>`, which is `Copy`.
    #[allow(clippy::clone_on_copy)]
    let http_acceptor = acceptor.clone();
    tasks.push(tokio::spawn(serve_http(
        http,
        otlp_http,
        http_acceptor,
        stop.clone(),
    )));

    // /metrics, /healthz, /api/alerts.
    let ops = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/api/alerts", get(active_alerts))
        .with_state(collector.clone());
    tasks.push(tokio::spawn(serve_http(
        metrics,
        ops,
        acceptor,
        stop.clone(),
    )));

    // The alert clock: resolutions every tick, a re-send of firing alerts every minute.
    let c = collector.clone();
    let s = stop.clone();
    let tick = config
        .alerts
        .resolution
        .max(Duration::from_millis(100))
        .min(Duration::from_secs(1));
    tasks.push(tokio::spawn(async move {
        let mut interval = tokio::time::interval(tick);
        let mut last_resend = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = s.cancelled() => return,
                _ = interval.tick() => {}
            }
            c.tick();
            c.promote_due().await;
            if last_resend.elapsed() >= Duration::from_secs(60) {
                c.resend_firing();
                last_resend = tokio::time::Instant::now();
            }
        }
    }));

    // Retention: prune the audit trail hourly through a signed retention checkpoint.
    if let Some(w) = writer {
        let s = stop.clone();
        let keep = chrono::TimeDelta::from_std(config.retention).unwrap_or(chrono::TimeDelta::MAX);
        tasks.push(tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_secs(3600));
            loop {
                tokio::select! {
                    _ = s.cancelled() => return,
                    _ = interval.tick() => {}
                }
                if let Err(e) = w.prune(chrono::Utc::now() - keep).await {
                    eprintln!("mcp-otel collect: audit retention: {e}");
                }
            }
        }));
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

/// Serves `router` on `tcp`, over TLS when an acceptor is given, until `stop`.
async fn serve_http(tcp: TcpListener, router: Router, tls: Acceptor, stop: CancellationToken) {
    match tls {
        #[cfg(feature = "tls")]
        Some(acceptor) => {
            let listener = super::tls::TlsListener { tcp, acceptor };
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        }
        #[cfg(not(feature = "tls"))]
        Some(never) => match never {},
        None => {
            let _ = axum::serve(tcp, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        }
    }
}

fn config_limit() -> usize {
    64
}

fn tokio_stream_incoming(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |l| async move {
        let conn = l.accept().await.map(|(s, _)| {
            let _ = s.set_nodelay(true);
            s
        });
        Some((conn, l))
    })
}

#[derive(Clone)]
struct HttpState {
    collector: Arc<Collector>,
    token: Option<Arc<str>>,
}

fn http_error(status: StatusCode, message: String) -> Response {
    let body = serde_json::json!({"code": status.as_u16(), "message": message});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// `POST /v1/traces`: OTLP/HTTP, protobuf or JSON, optionally gzip.
async fn http_traces(State(st): State<HttpState>, headers: HeaderMap, body: Bytes) -> Response {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !authorized(st.token.as_deref(), auth) {
        return http_error(
            StatusCode::UNAUTHORIZED,
            "a valid bearer token is required".into(),
        );
    }
    let body = match headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
    {
        Some("gzip") => {
            let mut out = Vec::new();
            let limited =
                flate2::read::GzDecoder::new(&body[..]).take(MAX_MESSAGE_BYTES as u64 + 1);
            match std::io::BufReader::new(limited).read_to_end(&mut out) {
                Ok(n) if n > MAX_MESSAGE_BYTES => {
                    return http_error(StatusCode::PAYLOAD_TOO_LARGE, "request too large".into());
                }
                Ok(_) => Bytes::from(out),
                Err(e) => {
                    return http_error(StatusCode::BAD_REQUEST, format!("bad gzip body: {e}"));
                }
            }
        }
        None | Some("identity") => body,
        Some(other) => {
            return http_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("unsupported Content-Encoding {other:?} (use gzip or none)"),
            );
        }
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let json = content_type.starts_with("application/json");
    let req = if json {
        serde_json::from_slice::<ExportTraceServiceRequest>(&body)
            .map_err(|e| format!("invalid OTLP JSON: {e}"))
    } else if content_type.starts_with("application/x-protobuf") {
        ExportTraceServiceRequest::decode(&body[..])
            .map_err(|e| format!("invalid OTLP protobuf: {e}"))
    } else {
        return http_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Type must be application/x-protobuf or application/json, got {content_type:?}"
            ),
        );
    };
    let req = match req {
        Ok(r) => r,
        Err(m) => return http_error(StatusCode::BAD_REQUEST, m),
    };
    match st.collector.ingest(req).await {
        Ok(resp) if json => (
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_string(&resp).unwrap_or_else(|_| "{}".into()),
        )
            .into_response(),
        Ok(resp) => (
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            resp.encode_to_vec(),
        )
            .into_response(),
        Err(e @ IngestError::Store(_)) | Err(e @ IngestError::ShuttingDown) => {
            // 503 is retryable for OTLP/HTTP exporters.
            http_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
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
