//! The collector's receivers: OTLP/gRPC ([`grpc`]) and OTLP/HTTP ([`http`]), both feeding
//! [`Collector::ingest`](super::ingest::Collector::ingest), plus what they share: the message
//! size limit, the bearer-token check, the partial-success answer and the accept loop.

pub mod grpc;
pub mod http;
pub mod oversize;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess;
use std::time::Duration;
use tokio::net::TcpListener;

/// The largest OTLP request accepted, in bytes (the 4 MiB tonic default is too small for OTLP).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// The OTLP partial-success answer for `rejected` undecodable spans (none when zero).
pub fn partial_success(rejected: u64, error: Option<String>) -> Option<ExportTracePartialSuccess> {
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

/// Accepted connections as the stream tonic's `serve_with_incoming` wants. An accept error
/// (out of file descriptors, most often) waits before the next try, doubling up to a second,
/// instead of spinning: the connections already open keep being served.
pub fn incoming(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold((listener, Duration::ZERO), |(l, mut backoff)| async move {
        loop {
            match l.accept().await {
                Ok((s, _)) => {
                    let _ = s.set_nodelay(true);
                    return Some((Ok(s), (l, Duration::ZERO)));
                }
                Err(e) if is_connection_error(&e) => continue,
                Err(_) => {
                    backoff =
                        (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    })
}

/// Errors about one connection (it was reset before we took it): the next accept is fine.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}
