//! Our OTLP/gRPC client for the default case, gRPC to a plain `http://` endpoint: the export
//! request encoded straight from the calls ([`super::encode`]) and sent with tonic, instead of
//! opentelemetry-otlp's `SpanData` → opentelemetry-proto → prost (about 24 allocations per
//! span, and a deep copy of each batch for its retries).
//!
//! On the wire and to the user it is opentelemetry-otlp 0.33's tonic exporter: the same request
//! bytes, gRPC method, metadata (its `user-agent`, then `OTEL_EXPORTER_OTLP_(TRACES_)HEADERS`),
//! channel timeout (`OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT`), compression (gzip unless
//! `OTEL_EXPORTER_OTLP_(TRACES_)COMPRESSION` says otherwise or the endpoint is on this
//! machine), retries (its recommended policy:
//! 3, from 100 ms doubling to 1.6 s plus up to 100 ms of jitter, within the timeout; the codes
//! and `RetryInfo` delays the OTLP specification gives, the same bytes resent) and error text
//! (`TonicTracesClient export failed with gRPC code: …`). A partial success is a success, as
//! there (it only logs one, and this build has its internal logs off). Every other target
//! (HTTP, `https://`, no scheme) keeps opentelemetry-otlp's exporter.

use super::encode::RequestEncoder;
use super::otlp::{OtlpProtocol, OtlpTarget};
use super::pipeline::BatchExport;
use super::span::SpanOptions;
use crate::record::ToolCall;
use bytes::{Buf, BufMut, Bytes};
use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use prost::Message;
use std::str::FromStr;
use std::time::{Duration, Instant};
use tonic::codec::{CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{KeyAndValueRef, MetadataMap};
use tonic::transport::Channel;
use tonic_types::StatusExt;

const SERVICE: &str = "opentelemetry.proto.collector.trace.v1.TraceService";
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The `user-agent` opentelemetry-otlp puts in the metadata (a test compares it with what that
/// exporter sends).
const USER_AGENT: &str = "OTel-OTLP-Exporter-Rust/0.33.1";

/// opentelemetry-otlp's `OTEL_EXPORTER_OTLP_TIMEOUT` default.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// opentelemetry-otlp's `RetryPolicy::recommended()`, and its cap on a server's delay.
const MAX_RETRIES: u32 = 3;
const INITIAL_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_millis(1600);
const MAX_JITTER_MS: u64 = 100;
const MAX_THROTTLE: Duration = Duration::from_secs(30);

/// The settings opentelemetry-otlp reads from the environment for a trace exporter over gRPC.
#[derive(Debug, Clone)]
pub(crate) struct GrpcSettings {
    /// The metadata of every export.
    pub(crate) metadata: MetadataMap,
    /// The channel's timeout of each attempt, and the time all attempts share.
    pub(crate) timeout: Duration,
    pub(crate) gzip: bool,
}

impl GrpcSettings {
    /// What opentelemetry-otlp builds from the variables found through `get`, with our default
    /// when no compression variable is set at all (`compression_set`): gzip, unless the
    /// endpoint is a `loopback` one ([`super::otlp::is_loopback`]).
    pub(crate) fn resolve(
        get: impl Fn(&str) -> Option<String>,
        compression_set: bool,
        loopback: bool,
    ) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::USER_AGENT,
            HeaderValue::from_static(USER_AGENT),
        );
        let from_env: HeaderMap = get("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
            .or_else(|| get("OTEL_EXPORTER_OTLP_HEADERS"))
            .map(|input| {
                parse_header_string(&input)
                    .filter_map(|(key, value)| {
                        Some((
                            HeaderName::from_str(key).ok()?,
                            HeaderValue::from_str(&value).ok()?,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        headers.extend(from_env);
        // What its interceptor does with them: appended to each request's empty metadata.
        let mut metadata = MetadataMap::new();
        for entry in MetadataMap::from_headers(headers).iter() {
            match entry {
                KeyAndValueRef::Ascii(k, v) => metadata.append(k, v.to_owned()),
                KeyAndValueRef::Binary(k, v) => metadata.append_bin(k, v.to_owned()),
            };
        }
        let millis = |name: &str| get(name).and_then(|s| s.parse::<u64>().ok());
        let timeout = millis("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
            .or_else(|| millis("OTEL_EXPORTER_OTLP_TIMEOUT"))
            .map_or(DEFAULT_TIMEOUT, Duration::from_millis);
        let gzip = match compression_set {
            true => compression_from_env(&get),
            false => !loopback,
        };
        GrpcSettings {
            metadata,
            timeout,
            gzip,
        }
    }
}

/// opentelemetry-otlp's `resolve_compression_from_env` for tonic with only gzip compiled in:
/// the first variable naming gzip or `none` decides; unknown names (and zstd) are skipped.
fn compression_from_env(get: &impl Fn(&str) -> Option<String>) -> bool {
    for name in [
        "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
        "OTEL_EXPORTER_OTLP_COMPRESSION",
    ] {
        let Some(value) = get(name).filter(|v| !v.is_empty()) else {
            continue;
        };
        if value.eq_ignore_ascii_case("none") {
            return false;
        }
        if value.eq_ignore_ascii_case("gzip") {
            return true;
        }
    }
    false
}

/// opentelemetry-otlp's header list parsing (`k1=v1,k2=v2`, values URL-decoded).
fn parse_header_string(value: &str) -> impl Iterator<Item = (&str, String)> {
    value
        .split_terminator(',')
        .map(str::trim)
        .filter_map(parse_header_key_value_string)
}

fn parse_header_key_value_string(key_value_string: &str) -> Option<(&str, String)> {
    key_value_string
        .split_once('=')
        .map(|(key, value)| {
            (
                key.trim(),
                url_decode(value.trim()).unwrap_or(value.to_string()),
            )
        })
        .filter(|(key, value)| !key.is_empty() && !value.is_empty())
}

fn url_decode(value: &str) -> Option<String> {
    let mut result = String::with_capacity(value.len());
    let mut chars_to_decode = Vec::<u8>::new();
    let mut all_chars = value.chars();
    loop {
        let ch = all_chars.next();
        if ch == Some('%') {
            let hex = format!("{}{}", all_chars.next()?, all_chars.next()?);
            chars_to_decode.push(u8::from_str_radix(&hex, 16).ok()?);
            continue;
        }
        if !chars_to_decode.is_empty() {
            result.push_str(std::str::from_utf8(&chars_to_decode).ok()?);
            chars_to_decode.clear();
        }
        match ch {
            Some(c) => result.push(c),
            None => return Some(result),
        }
    }
}

/// The span exporter of the default target.
pub(crate) struct GrpcExport {
    client: tonic::client::Grpc<Precompressed>,
    metadata: MetadataMap,
    timeout: Duration,
    encoder: RequestEncoder,
    gzip: bool,
}

impl GrpcExport {
    /// The client for `target` when it is gRPC to an `http://` URL tonic accepts, `None` for
    /// any other (opentelemetry-otlp's exporter is used then, and says what is wrong with a
    /// bad one). Must run inside a Tokio runtime (the channel's connection task).
    pub(crate) fn for_target(target: &OtlpTarget, settings: GrpcSettings) -> Option<Self> {
        if target.protocol != OtlpProtocol::Grpc || !target.endpoint.starts_with("http://") {
            return None;
        }
        let endpoint = tonic::transport::Endpoint::from_shared(target.endpoint.clone()).ok()?;
        let channel = endpoint.timeout(settings.timeout).connect_lazy();
        let mut client = tonic::client::Grpc::new(Precompressed {
            inner: channel,
            gzip: settings.gzip,
        });
        if settings.gzip {
            client = client.accept_compressed(CompressionEncoding::Gzip);
        }
        Some(GrpcExport {
            client,
            metadata: settings.metadata,
            timeout: settings.timeout,
            encoder: RequestEncoder::default(),
            gzip: settings.gzip,
        })
    }

    /// One attempt, as the generated `TraceServiceClient::export`.
    async fn send(&mut self, body: Bytes) -> Result<(), tonic::Status> {
        self.client.ready().await.map_err(|e| {
            tonic::Status::unknown(format!(
                "Service was not ready: {}",
                tonic::codegen::StdError::from(e)
            ))
        })?;
        let mut request =
            tonic::Request::from_parts(self.metadata.clone(), tonic::Extensions::new(), body);
        request
            .extensions_mut()
            .insert(tonic::GrpcMethod::new(SERVICE, "Export"));
        let path = http::uri::PathAndQuery::from_static(EXPORT_PATH);
        self.client.unary(request, path, ExportCodec).await?;
        Ok(())
    }
}

impl BatchExport for GrpcExport {
    async fn export(&mut self, calls: &mut Vec<ToolCall>, options: &SpanOptions) -> OTelSdkResult {
        let encoded = self.encoder.encode(calls, options);
        // Compressed once for all attempts (tonic compresses again on each).
        let body = if self.gzip {
            gzip(encoded)
        } else {
            Bytes::copy_from_slice(encoded)
        };
        self.encoder.release_large();
        calls.clear();
        let deadline = self.timeout;
        let start = Instant::now();
        let mut attempt = 0;
        let mut delay = INITIAL_DELAY;
        let mut delay_cap = MAX_DELAY;
        let status = loop {
            let status = match self.send(body.clone()).await {
                Ok(()) => return Ok(()),
                Err(status) => status,
            };
            if start.elapsed() >= deadline || attempt >= MAX_RETRIES {
                break status;
            }
            match retry(&status) {
                Retry::No => break status,
                Retry::Backoff => {}
                Retry::After(server_delay) => {
                    let server_delay = server_delay.min(MAX_THROTTLE);
                    if server_delay > delay_cap {
                        delay_cap = MAX_THROTTLE;
                    }
                    delay = delay.max(server_delay);
                }
            }
            attempt += 1;
            let jitter = Duration::from_millis(rand::random_range(0..=MAX_JITTER_MS));
            let sleep = delay.saturating_add(jitter).min(delay_cap);
            if sleep >= deadline.saturating_sub(start.elapsed()) {
                break status;
            }
            tokio::time::sleep(sleep).await;
            delay = delay.saturating_mul(2).min(delay_cap);
        };
        Err(OTelSdkError::InternalFailure(export_error(&status)))
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.encoder.set_resource(resource);
    }

    fn shutdown(&mut self) {}
}

/// What to do after a failed attempt.
#[derive(Debug, PartialEq, Eq)]
enum Retry {
    No,
    /// Again, after the backoff.
    Backoff,
    /// Again, after at least the server's delay (gRPC `RetryInfo`).
    After(Duration),
}

/// opentelemetry-otlp's `classify_tonic_status`: the OTLP specification's retryable codes,
/// and `RESOURCE_EXHAUSTED` only with a `RetryInfo`.
fn retry(status: &tonic::Status) -> Retry {
    use tonic::Code;
    let delay = status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay);
    let capped = |d: Duration| d.min(Duration::from_secs(600));
    match status.code() {
        Code::ResourceExhausted => delay.map_or(Retry::No, |d| Retry::After(capped(d))),
        Code::Unavailable => match delay.filter(|d| !d.is_zero()) {
            Some(d) => Retry::After(capped(d)),
            None => Retry::Backoff,
        },
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::DataLoss => Retry::Backoff,
        _ => Retry::No,
    }
}

/// opentelemetry-otlp's error text: the code, and the cause when tonic's transport made the
/// status (never the server's message, which may echo a token).
fn export_error(status: &tonic::Status) -> String {
    let mut text = format!(
        "TonicTracesClient export failed with gRPC code: {:?}",
        status.code()
    );
    if let Some(source) = std::error::Error::source(status) {
        text.push_str(": ");
        text.push_str(&source.to_string());
        let mut next = source.source();
        while let Some(cause) = next {
            text.push_str(&format!(": {cause}"));
            next = cause.source();
        }
    }
    text
}

/// gzip at level 1 (flate2's `fast`). tonic 0.14 compresses at a fixed level 6, which was
/// 41 % of the proxy's export thread in its profile (docs/benchmarks.md, "Proxy").
///
/// The deflate state (window, hash chains: a few hundred KiB that a new encoder allocates and
/// zeroes) is kept per thread and reset between requests; the stream is what `GzEncoder` writes
/// at this level (header with `XFL` 4 and OS 255, raw deflate, CRC-32 and size).
fn gzip(message: &[u8]) -> Bytes {
    use flate2::{Compress, Compression, Crc, FlushCompress, Status};
    thread_local! {
        static DEFLATE: std::cell::RefCell<Compress> =
            std::cell::RefCell::new(Compress::new(Compression::fast(), false));
    }
    const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 4, 255];
    let mut out = Vec::with_capacity(message.len() / 4 + 64);
    out.extend_from_slice(&HEADER);
    DEFLATE.with_borrow_mut(|deflate| {
        deflate.reset();
        let mut input = message;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(4096));
            }
            let before = deflate.total_in();
            let status = deflate
                .compress_vec(input, &mut out, FlushCompress::Finish)
                .expect("deflating into a Vec cannot fail");
            input = &input[(deflate.total_in() - before) as usize..];
            if status == Status::StreamEnd {
                break;
            }
        }
    });
    let mut crc = Crc::new();
    crc.update(message);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&(message.len() as u32).to_le_bytes());
    Bytes::from(out)
}

/// The channel, sending messages [`GrpcExport`] gzipped itself: tonic frames them as
/// uncompressed (its own compression is off), so when `gzip` is on each request gets the
/// frame's compressed flag and `grpc-encoding: gzip`, as tonic would have set them. Answers
/// pass unchanged (tonic decompresses them, `accept_compressed`).
#[derive(Clone)]
struct Precompressed {
    inner: Channel,
    gzip: bool,
}

type BoxedCall = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<http::Response<tonic::body::Body>, tonic::codegen::StdError>,
            > + Send,
    >,
>;

impl tower::Service<http::Request<tonic::body::Body>> for Precompressed {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::codegen::StdError;
    type Future = BoxedCall;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> BoxedCall {
        // The channel that was made ready is the one that calls (tower's rule for clones).
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        if !self.gzip {
            return Box::pin(async move { inner.call(request).await.map_err(Into::into) });
        }
        Box::pin(async move {
            use http_body_util::BodyExt;
            let (mut parts, body) = request.into_parts();
            let frame = body.collect().await?.to_bytes();
            let frame = flag_compressed(frame).ok_or("the export is not one gRPC frame")?;
            parts
                .headers
                .insert("grpc-encoding", HeaderValue::from_static("gzip"));
            // A stream of one frame, not `Full`: its size is not exact, so hyper adds no
            // `content-length` (opentelemetry-otlp's requests carry none).
            let once = futures::stream::once(async move {
                Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(frame))
            });
            let body = tonic::body::Body::new(http_body_util::StreamBody::new(once));
            inner
                .call(http::Request::from_parts(parts, body))
                .await
                .map_err(Into::into)
        })
    }
}

/// One uncompressed gRPC frame (flag 0, big-endian length, message) with the flag set to
/// compressed; `None` for anything else.
fn flag_compressed(frame: Bytes) -> Option<Bytes> {
    let header: [u8; 5] = frame.get(..5)?.try_into().ok()?;
    let length = u32::from_be_bytes(header[1..].try_into().ok()?) as usize;
    if header[0] != 0 || frame.len() - 5 != length {
        return None;
    }
    let mut frame = frame
        .try_into_mut()
        .unwrap_or_else(|shared| bytes::BytesMut::from(&shared[..]));
    frame[0] = 1;
    Some(frame.freeze())
}

/// The request as its encoded bytes, the response as prost decodes it.
#[derive(Clone, Copy, Debug, Default)]
struct ExportCodec;

impl tonic::codec::Codec for ExportCodec {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = ExportCodec;
    type Decoder = ExportCodec;

    fn encoder(&mut self) -> ExportCodec {
        ExportCodec
    }

    fn decoder(&mut self) -> ExportCodec {
        ExportCodec
    }
}

impl Encoder for ExportCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, buf: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        buf.put(item);
        Ok(())
    }
}

impl Decoder for ExportCodec {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        buf: &mut DecodeBuf<'_>,
    ) -> Result<Option<ExportTraceServiceResponse>, tonic::Status> {
        // As tonic-prost's decoder: a bad response is an internal error.
        let response = ExportTraceServiceResponse::decode(buf.copy_to_bytes(buf.remaining()))
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        Ok(Some(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    type Seen = Arc<Mutex<Vec<(MetadataMap, ExportTraceServiceRequest)>>>;

    /// Answers each export with the next scripted status (OK when none is left), and keeps
    /// what it got.
    struct Scripted {
        answers: Mutex<VecDeque<tonic::Status>>,
        seen: Seen,
    }

    #[tonic::async_trait]
    impl TraceService for Scripted {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let (metadata, _, request) = request.into_parts();
            self.seen.lock().unwrap().push((metadata, request));
            match self.answers.lock().unwrap().pop_front() {
                Some(status) => Err(status),
                None => Ok(tonic::Response::new(ExportTraceServiceResponse::default())),
            }
        }
    }

    async fn scripted(answers: Vec<tonic::Status>) -> (String, Seen) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Seen::default();
        let service = TraceServiceServer::new(Scripted {
            answers: Mutex::new(answers.into()),
            seen: seen.clone(),
        })
        .accept_compressed(CompressionEncoding::Gzip);
        let incoming = tokio_stream_of(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming),
        );
        (format!("http://{addr}"), seen)
    }

    fn tokio_stream_of(
        listener: tokio::net::TcpListener,
    ) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
        futures::stream::unfold(listener, |l| async move {
            Some((l.accept().await.map(|(s, _)| s), l))
        })
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        }
    }

    fn client(endpoint: &str, settings: GrpcSettings) -> GrpcExport {
        let target = OtlpTarget {
            protocol: OtlpProtocol::Grpc,
            endpoint: endpoint.to_owned(),
        };
        let mut export = GrpcExport::for_target(&target, settings).expect("gRPC to http://");
        export.set_resource(&Resource::builder_empty().with_service_name("svc").build());
        export
    }

    fn header<'a>(metadata: &'a MetadataMap, key: &str) -> Option<&'a str> {
        metadata.get(key).and_then(|v| v.to_str().ok())
    }

    #[test]
    fn settings_are_read_as_opentelemetry_otlp_reads_them() {
        let s = GrpcSettings::resolve(
            env(&[
                ("OTEL_EXPORTER_OTLP_HEADERS", "x-ignored=1"),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                    " x-tenant = acme ,x-note=a%20b,bad key=v,empty=, User-Agent=mine",
                ),
                ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "soon"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ]),
            false,
            false,
        );
        assert_eq!(header(&s.metadata, "x-tenant"), Some("acme"));
        assert_eq!(header(&s.metadata, "x-note"), Some("a b"), "URL-decoded");
        assert_eq!(header(&s.metadata, "x-ignored"), None, "traces-only wins");
        assert_eq!(header(&s.metadata, "empty"), None);
        assert_eq!(
            header(&s.metadata, "user-agent"),
            Some("mine"),
            "a header of the variable replaces the exporter's own"
        );
        assert_eq!(s.metadata.len(), 3);
        assert_eq!(
            s.timeout,
            Duration::from_millis(2500),
            "a bad value is skipped"
        );
        assert!(s.gzip, "gzip by default");
        assert!(
            !GrpcSettings::resolve(env(&[]), false, true).gzip,
            "not to a loopback endpoint"
        );

        let s = GrpcSettings::resolve(env(&[]), false, false);
        assert_eq!(header(&s.metadata, "user-agent"), Some(USER_AGENT));
        assert_eq!(s.timeout, DEFAULT_TIMEOUT);
        for (vars, gzip) in [
            (&[("OTEL_EXPORTER_OTLP_COMPRESSION", "none")][..], false),
            (&[("OTEL_EXPORTER_OTLP_COMPRESSION", "GZIP")][..], true),
            (
                &[
                    ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "zstd"),
                    ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
                ][..],
                true,
            ),
            (&[("OTEL_EXPORTER_OTLP_COMPRESSION", "brotli")][..], false),
            (&[("OTEL_EXPORTER_OTLP_COMPRESSION", "")][..], false),
        ] {
            // A variable decides, whatever the endpoint.
            for loopback in [false, true] {
                assert_eq!(
                    GrpcSettings::resolve(env(vars), true, loopback).gzip,
                    gzip,
                    "{vars:?}, loopback {loopback}"
                );
            }
        }
    }

    #[test]
    fn other_targets_keep_opentelemetry_otlp() {
        let settings = GrpcSettings::resolve(env(&[]), false, false);
        for (protocol, endpoint) in [
            (OtlpProtocol::Grpc, "https://collector:4317"),
            (OtlpProtocol::Grpc, "collector:4317"),
            (
                OtlpProtocol::HttpProtobuf,
                "http://collector:4318/v1/traces",
            ),
            (OtlpProtocol::Grpc, "http://bad host:4317"),
        ] {
            let target = OtlpTarget {
                protocol,
                endpoint: endpoint.to_owned(),
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let _guard = rt.enter();
            assert!(
                GrpcExport::for_target(&target, settings.clone()).is_none(),
                "{endpoint}"
            );
        }
    }

    #[tokio::test]
    async fn a_retry_resends_the_same_request_with_the_headers_gzipped() {
        let (endpoint, seen) = scripted(vec![tonic::Status::unavailable("busy")]).await;
        // The defaults as to a remote endpoint: gzip.
        let settings = GrpcSettings::resolve(
            env(&[("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=acme")]),
            false,
            false,
        );
        let mut export = client(&endpoint, settings);
        let mut calls = vec![ToolCall::new("a", "u"), ToolCall::new("b", "u")];
        let want = calls.clone();
        let started = Instant::now();
        export
            .export(&mut calls, &SpanOptions::default())
            .await
            .expect("the second attempt is taken");
        assert!(calls.is_empty());
        assert!(started.elapsed() >= INITIAL_DELAY, "after the backoff");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].1, seen[1].1, "the same request again");
        let names: Vec<&str> = seen[0].1.resource_spans[0].scope_spans[0]
            .spans
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names, ["tools/call a", "tools/call b"]);
        let mut encoder = RequestEncoder::default();
        encoder.set_resource(&Resource::builder_empty().with_service_name("svc").build());
        assert_eq!(
            seen[1].1,
            ExportTraceServiceRequest::decode(encoder.encode(&want, &SpanOptions::default()))
                .unwrap()
        );
        for (metadata, _) in seen.iter() {
            assert_eq!(header(metadata, "x-tenant"), Some("acme"));
            assert_eq!(header(metadata, "grpc-encoding"), Some("gzip"));
            assert!(
                header(metadata, "user-agent")
                    .unwrap()
                    .starts_with(USER_AGENT),
                "{metadata:?}"
            );
        }
    }

    #[tokio::test]
    async fn codes_that_are_not_retried_fail_at_once_with_the_exporters_text() {
        let (endpoint, seen) = scripted(vec![tonic::Status::permission_denied(
            "token abc is not allowed",
        )])
        .await;
        let settings = GrpcSettings::resolve(
            env(&[("OTEL_EXPORTER_OTLP_COMPRESSION", "none")]),
            true,
            false,
        );
        let mut export = client(&endpoint, settings);
        let error = export
            .export(&mut vec![ToolCall::new("a", "u")], &SpanOptions::default())
            .await
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "Operation failed: TonicTracesClient export failed with gRPC code: PermissionDenied"
        );
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(header(&seen[0].0, "grpc-encoding"), None, "compression off");
    }

    #[test]
    fn the_kept_deflate_state_writes_a_gzip_stream_each_time() {
        use std::io::{Read, Write};
        let fresh = |data: &[u8]| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        };
        // Small, empty, incompressible and large (past the first output reservation) inputs,
        // one after another on one thread: each request starts from a reset state.
        let mut noise = Vec::new();
        let mut x = 0x9e37_79b9_u32;
        for _ in 0..300_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            noise.push(x as u8);
        }
        let spans = "tools/call write_file ".repeat(20_000).into_bytes();
        let inputs = [&b"one span"[..], b"", &noise, &spans, b"one span"];
        let first: Vec<Bytes> = inputs.iter().map(|d| gzip(d)).collect();
        for (data, zipped) in inputs.iter().zip(&first) {
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&zipped[..])
                .read_to_end(&mut back)
                .unwrap();
            assert!(
                back == *data,
                "{} bytes: the stream decodes to its input",
                data.len()
            );
            assert_eq!(zipped[..10], fresh(data)[..10], "GzEncoder's header");
            assert!(gzip(data) == zipped, "the same bytes again after the reset");
        }
        // A one-shot deflate of a small message is GzEncoder's stream exactly.
        assert!(first[0] == fresh(b"one span") && first[4] == first[0]);
    }

    #[test]
    fn only_one_uncompressed_frame_is_flagged_compressed() {
        use std::io::Read;
        let text = "tools/call write_file ".repeat(40);
        let message = gzip(text.as_bytes());
        assert!(message.len() < text.len() / 4, "{} bytes", message.len());
        let mut frame = vec![0u8];
        frame.extend((message.len() as u32).to_be_bytes());
        frame.extend_from_slice(&message);
        let flagged = flag_compressed(Bytes::from(frame.clone())).expect("one frame");
        assert_eq!(flagged[0], 1);
        assert_eq!(flagged[1..], frame[1..], "the rest unchanged");
        let mut back = String::new();
        flate2::read::GzDecoder::new(&flagged[5..])
            .read_to_string(&mut back)
            .unwrap();
        assert_eq!(back, text);

        let mut longer = frame.clone();
        longer.push(0);
        for other in [
            &[][..],
            &[0, 0, 0, 0],
            &frame[..frame.len() - 1],
            &longer,
            &flagged,
        ] {
            assert_eq!(
                flag_compressed(Bytes::copy_from_slice(other)),
                None,
                "{other:?}"
            );
        }
        let empty = flag_compressed(Bytes::from_static(&[0, 0, 0, 0, 0])).expect("empty message");
        assert_eq!(&empty[..], &[1, 0, 0, 0, 0]);
    }

    #[test]
    fn the_specifications_codes_are_retried() {
        use tonic::Code;
        for code in [
            Code::Cancelled,
            Code::DeadlineExceeded,
            Code::Aborted,
            Code::OutOfRange,
            Code::DataLoss,
            Code::Unavailable,
        ] {
            assert_eq!(
                retry(&tonic::Status::new(code, "")),
                Retry::Backoff,
                "{code:?}"
            );
        }
        for code in [
            Code::Unknown,
            Code::InvalidArgument,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::Internal,
            Code::ResourceExhausted,
        ] {
            assert_eq!(retry(&tonic::Status::new(code, "")), Retry::No, "{code:?}");
        }
        let throttled = tonic::Status::with_error_details(
            Code::ResourceExhausted,
            "slow down",
            tonic_types::ErrorDetails::with_retry_info(Some(Duration::from_secs(2))),
        );
        assert_eq!(retry(&throttled), Retry::After(Duration::from_secs(2)));
    }
}
