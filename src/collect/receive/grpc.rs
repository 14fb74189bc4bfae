//! OTLP/gRPC: the `TraceService` of `collect`, behind the bearer-token check.

use super::authorized;
use crate::collect::ingest::{Collector, IngestError};
use std::sync::Arc;

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

/// The interceptor every gRPC service of `collect` sits behind: `authorization: Bearer <token>`
/// when a token is configured.
pub(crate) fn token_check(
    token: Option<Arc<str>>,
) -> impl Fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
    move |req: tonic::Request<()>| {
        let value = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if authorized(token.as_deref(), value) {
            Ok(req)
        } else {
            Err(tonic::Status::unauthenticated(
                "a valid bearer token is required",
            ))
        }
    }
}

/// The OTLP trace service of `collector`, with the size limit and gzip both ways: the export
/// as bytes ([`crate::collect::wire`]), read straight from them when calls are only counted.
pub(crate) fn trace_service(collector: Arc<Collector>) -> crate::collect::wire::WireTraces {
    crate::collect::wire::WireTraces::new(collector, super::MAX_MESSAGE_BYTES)
}
