//! A plain OTLP/gRPC receiver for tests and tools: a tonic `TraceService` that decodes every
//! span and hands the tool calls to whoever listens on its channel. (The collector's own
//! receivers are in `super::receive`; this one has no metrics, alerts or store.)
//!
//! Calls can overlap (tonic serves requests concurrently); each export is decoded as a whole and
//! answered after its calls are handed on. A span that claims to be a tool call but cannot be
//! decoded is counted as rejected in the OTLP partial-success answer and does not stop the rest.

use super::decode::decode_request;
use super::receive::{MAX_MESSAGE_BYTES, partial_success};
use crate::record::ToolCall;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

/// One OTLP trace export holding `spans` (one resource, one scope, no attributes), as tests and
/// benches build them.
pub fn export_request(
    spans: Vec<opentelemetry_proto::tonic::trace::v1::Span>,
) -> ExportTraceServiceRequest {
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// The service itself; mount it with [`TraceReceiver::into_service`] or use [`serve`].
#[derive(Clone)]
pub(crate) struct TraceReceiver {
    tx: mpsc::Sender<ToolCall>,
}

impl TraceReceiver {
    pub(crate) fn new(tx: mpsc::Sender<ToolCall>) -> Self {
        TraceReceiver { tx }
    }

    pub(crate) fn into_service(self) -> TraceServiceServer<Self> {
        TraceServiceServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
    }
}

#[tonic::async_trait]
impl TraceService for TraceReceiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let decoded = decode_request(request.get_ref());
        for call in decoded.calls {
            if self.tx.send(call).await.is_err() {
                return Err(Status::unavailable("receiver is shutting down"));
            }
        }
        let partial_success = partial_success(decoded.invalid, decoded.first_error);
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success,
        }))
    }
}

/// A running receiver: its address and the calls it decoded.
pub struct RunningReceiver {
    /// The address it listens on (the real port when bound to `:0`).
    pub addr: SocketAddr,
    /// Every tool call decoded from the spans received, in arrival order.
    pub calls: mpsc::Receiver<ToolCall>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl RunningReceiver {
    /// `http://ADDR`, for an OTLP exporter's endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for RunningReceiver {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Binds `addr` (use `127.0.0.1:0` for any free port) and serves until the handle is dropped.
pub async fn serve(addr: SocketAddr, capacity: usize) -> std::io::Result<RunningReceiver> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let (tx, calls) = mpsc::channel(capacity.max(1));
    let receiver = TraceReceiver::new(tx);
    let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
    let incoming =
        crate::serve::incoming(listener, crate::serve::Limits::default(), usize::MAX >> 4);
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(receiver.into_service())
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop.await;
            })
            .await;
    });
    Ok(RunningReceiver {
        addr,
        calls,
        shutdown: Some(shutdown),
    })
}
