//! Forwarding: received spans go on, unchanged, to the next OTLP/gRPC hop (Jaeger, another
//! collector), batched, with retry and backoff, from a bounded buffer.
//!
//! [`Forwarder::push`] never waits. When the buffer holds `capacity` spans the oldest requests
//! are dropped and counted. Forwarding trouble never touches metrics, alerts or the audit trail.

use super::metrics::Metrics;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

fn span_count(req: &ExportTraceServiceRequest) -> usize {
    req.resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum()
}

#[derive(Default)]
struct Buffer {
    requests: VecDeque<(ExportTraceServiceRequest, usize)>,
    spans: usize,
}

/// The caller's end of the forwarding task.
#[derive(Clone)]
pub(crate) struct Forwarder {
    buffer: Arc<Mutex<Buffer>>,
    wake: Arc<Notify>,
    capacity: usize,
    metrics: Arc<Metrics>,
}

impl Forwarder {
    /// Starts forwarding to `endpoint`; `batch` spans at most per request.
    pub(crate) fn start(
        endpoint: http::Uri,
        capacity: usize,
        batch: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        let f = Forwarder {
            buffer: Arc::default(),
            wake: Arc::new(Notify::new()),
            capacity,
            metrics,
        };
        let worker = f.clone();
        tokio::spawn(async move { worker.run(endpoint, batch).await });
        f
    }

    /// Queues a request; drops the oldest when the buffer is full.
    pub(crate) fn push(&self, req: ExportTraceServiceRequest) {
        let n = span_count(&req);
        if n == 0 {
            return;
        }
        let mut b = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        b.requests.push_back((req, n));
        b.spans += n;
        while b.spans > self.capacity {
            let Some((_, dropped)) = b.requests.pop_front() else {
                break;
            };
            b.spans -= dropped;
            self.metrics.health.forward_dropped.inc_by(dropped as u64);
        }
        self.metrics.health.queue_depth.set(b.requests.len() as i64);
        drop(b);
        self.wake.notify_one();
    }

    fn take_batch(&self, max_spans: usize) -> Option<ExportTraceServiceRequest> {
        let mut b = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        let (mut merged, n) = b.requests.pop_front()?;
        let mut spans = n;
        while let Some((_, next)) = b.requests.front() {
            if spans + next > max_spans {
                break;
            }
            let (req, next) = b.requests.pop_front().expect("front exists");
            spans += next;
            merged.resource_spans.extend(req.resource_spans);
        }
        b.spans -= spans;
        self.metrics.health.queue_depth.set(b.requests.len() as i64);
        Some(merged)
    }

    fn put_back(&self, req: ExportTraceServiceRequest) {
        let n = span_count(&req);
        let mut b = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        if b.spans + n > self.capacity {
            // The buffer filled while this batch was failing: it is the oldest, drop it.
            self.metrics.health.forward_dropped.inc_by(n as u64);
            return;
        }
        b.requests.push_front((req, n));
        b.spans += n;
    }

    async fn run(self, endpoint: http::Uri, batch: usize) {
        let channel = tonic::transport::Endpoint::from(endpoint)
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect_lazy();
        let mut client = TraceServiceClient::new(channel)
            .max_encoding_message_size(super::receive::MAX_MESSAGE_BYTES);
        let mut backoff = Duration::from_millis(100);
        loop {
            let Some(req) = self.take_batch(batch) else {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
                continue;
            };
            match client.export(req.clone()).await {
                Ok(_) => backoff = Duration::from_millis(100),
                Err(status) => {
                    self.metrics.health.forward_failures.inc();
                    // Malformed for the next hop: retrying will not help.
                    if status.code() != tonic::Code::InvalidArgument {
                        self.put_back(req);
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
