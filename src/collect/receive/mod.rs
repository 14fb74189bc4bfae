//! The collector's receivers: OTLP/gRPC ([`grpc`]) and OTLP/HTTP ([`http`]), both feeding
//! [`Collector::ingest`](super::ingest::Collector::ingest), plus what they share: the message
//! size limit, the bearer-token check, and the partial-success answer. Connections, timeouts and
//! bytes in flight are bounded by [`crate::serve`].

pub(crate) mod grpc;
pub(crate) mod http;
pub(crate) mod oversize;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess;

/// The largest OTLP request accepted, in bytes (the 4 MiB tonic default is too small for OTLP).
pub(crate) const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// The OTLP partial-success answer for `rejected` undecodable spans (none when zero).
pub(crate) fn partial_success(
    rejected: u64,
    error: Option<String>,
) -> Option<ExportTracePartialSuccess> {
    (rejected > 0).then(|| ExportTracePartialSuccess {
        rejected_spans: rejected as i64,
        error_message: error.unwrap_or_default(),
    })
}

/// True when the request carries `authorization: Bearer <token>` (or no token is required).
pub(crate) fn authorized(token: Option<&str>, value: Option<&str>) -> bool {
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
