//! An export over the size limit is answered INVALID_ARGUMENT, not tonic's OUT_OF_RANGE.
//!
//! The OTLP specification lists OUT_OF_RANGE as retryable, so an SDK that gets it for a 70 MiB
//! export sends the same 70 MiB again with backoff for its whole export timeout, and the data
//! is lost anyway. INVALID_ARGUMENT is the code the specification recommends for data that will
//! never be accepted: the exporter drops it at once (and counts it). Over OTLP/HTTP the same
//! limit answers 413, which is not retryable either.

use http::{HeaderValue, Request, Response};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::codegen::Service;
use tonic::server::NamedService;

/// Wraps the OTLP trace service; every other answer passes unchanged.
#[derive(Clone)]
pub(crate) struct OversizeIsPermanent<S>(pub S);

impl<S: NamedService> NamedService for OversizeIsPermanent<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, RB> Service<Request<B>> for OversizeIsPermanent<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let answer = self.0.call(req);
        Box::pin(async move {
            let mut response = answer.await?;
            let h = response.headers_mut();
            // tonic refuses an oversize message before the service runs, with a trailers-only
            // answer: the status is in the headers. The service itself never says OUT_OF_RANGE.
            if h.get("grpc-status").is_some_and(|s| s == "11") {
                h.insert("grpc-status", HeaderValue::from_static("3"));
            }
            Ok(response)
        })
    }
}
