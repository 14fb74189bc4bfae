//! The decode floor for `collect`: a minimal OTLP/gRPC trace receiver that does what any Rust
//! OTLP receiver must at least do, and nothing more. tonic + prost decode each
//! `ExportTraceServiceRequest` fully into the opentelemetry-proto types (gzip accepted, as the
//! OTel Collector's exporter sends it by default), the spans are counted and the export is
//! acknowledged; nothing is kept.
//!
//! `otlp_floor [ADDR]` (default `127.0.0.1:0`) prints `otlp_floor: OTLP/gRPC on ADDR` once
//! listening; `benches/ingest_floor.rs` runs it side by side with `mcp-otel collect`.

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
struct Floor {
    spans: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Floor {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let n: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum();
        self.spans.fetch_add(n as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

// The same runtime as `mcp-otel collect` (`#[tokio::main]`: one worker per core).
#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .expect("bind the OTLP/gRPC address");
    let local = listener.local_addr().expect("bound");
    println!("otlp_floor: OTLP/gRPC on {local}");
    let _ = std::io::stdout().flush();
    let incoming = futures::stream::unfold(listener, |l| async move {
        let accepted = l.accept().await.map(|(s, _)| {
            let _ = s.set_nodelay(true);
            s
        });
        Some((accepted, l))
    });
    // The same message size limit and compression as collect's receiver.
    let service = TraceServiceServer::new(Floor::default())
        .max_decoding_message_size(64 * 1024 * 1024)
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    tonic::transport::Server::builder()
        .concurrency_limit_per_connection(64)
        .add_service(service)
        .serve_with_incoming(incoming)
        .await
        .expect("serve OTLP/gRPC");
}
