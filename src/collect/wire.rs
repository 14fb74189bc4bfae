//! OTLP/gRPC trace exports read straight from their protobuf bytes (issue 13).
//!
//! The gRPC receiver takes each export as bytes ([`RawCodec`]); when `collect` forwards
//! nothing (with or without an audit trail), [`read_request`] walks them once: it checks the whole
//! message as prost would (wire types, lengths, varints, UTF-8 of every string field, nesting),
//! and keeps, per span, only what the decoder reads (ids, times, kind, name, status code and the
//! top-level attributes as borrowed [`ValueRef`]s) in two vectors per export. The spans then go
//! through the one decoder ([`super::decode`]) as [`WireSpan`]s, so a call decodes to what it
//! decodes to from prost's types; without an audit trail a call of ours leaves its JSON
//! attributes unparsed ([`Use::Count`]). Anything the walk does not accept (a group, nesting deeper than
//! [`MAX_DEPTH`], a malformed field) goes to prost instead, which decides as before: the walk
//! accepts no export that prost rejects (`tests::walk_accepts_only_what_prost_accepts`).

use super::decode::{DecodedRequest, SpanView, Use, ValueRef};
use super::ingest::Collector;
use crate::record::ToolCall;
use bytes::{Buf, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::codec::{DecodeBuf, Decoder, EncodeBuf, Encoder};

/// The walk does not read these bytes: prost decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NotRead;

type Walk<T> = Result<T, NotRead>;

/// Nested messages the walk follows (prost's own limit is 100); deeper goes to prost.
pub(crate) const MAX_DEPTH: u32 = 32;

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

#[derive(Clone, Copy)]
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn more(&self) -> bool {
        !self.buf.is_empty()
    }

    /// A varint as prost reads one: at most 10 bytes, the 10th at most 1.
    fn varint(&mut self) -> Walk<u64> {
        // Most varints on this path (keys, lengths) are one byte.
        if let Some(&b) = self.buf.first()
            && b < 0x80
        {
            self.buf = &self.buf[1..];
            return Ok(u64::from(b));
        }
        let mut v = 0u64;
        for i in 0..10 {
            let b = *self.buf.get(i).ok_or(NotRead)?;
            if i == 9 && b > 1 {
                return Err(NotRead);
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                self.buf = &self.buf[i + 1..];
                return Ok(v);
            }
        }
        Err(NotRead)
    }

    /// `(field number, wire type)`; groups and invalid keys are not read.
    fn key(&mut self) -> Walk<(u32, u8)> {
        let k = self.varint()?;
        let (tag, wire) = (k >> 3, (k & 7) as u8);
        if k > u64::from(u32::MAX) || tag == 0 || !matches!(wire, VARINT | FIXED64 | LEN | FIXED32)
        {
            return Err(NotRead);
        }
        Ok((tag as u32, wire))
    }

    fn take(&mut self, n: usize) -> Walk<&'a [u8]> {
        if n > self.buf.len() {
            return Err(NotRead);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn bytes(&mut self) -> Walk<&'a [u8]> {
        let n = self.varint()?;
        self.take(usize::try_from(n).map_err(|_| NotRead)?)
    }

    fn string(&mut self) -> Walk<&'a str> {
        std::str::from_utf8(self.bytes()?).map_err(|_| NotRead)
    }

    fn fixed64(&mut self) -> Walk<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn fixed32(&mut self) -> Walk<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn skip(&mut self, wire: u8) -> Walk<()> {
        match wire {
            VARINT => self.varint().map(drop),
            FIXED64 => self.take(8).map(drop),
            LEN => self.bytes().map(drop),
            _ => self.take(4).map(drop),
        }
    }
}

/// A known field sent with another wire type: prost rejects it.
fn expect(wire: u8, want: u8) -> Walk<()> {
    if wire == want { Ok(()) } else { Err(NotRead) }
}

fn nested(depth: u32) -> Walk<u32> {
    if depth >= MAX_DEPTH {
        Err(NotRead)
    } else {
        Ok(depth + 1)
    }
}

/// `AnyValue`, merged into `v` as prost merges a message sent more than once: the last field of
/// the oneof wins.
fn any_value<'a>(buf: &'a [u8], mut v: ValueRef<'a>, depth: u32) -> Walk<ValueRef<'a>> {
    let depth = nested(depth)?;
    let mut r = Reader::new(buf);
    while r.more() {
        let (tag, wire) = r.key()?;
        v = match tag {
            1 => ValueRef::Str(expect(wire, LEN).and_then(|_| r.string())?),
            2 => ValueRef::Bool(expect(wire, VARINT).and_then(|_| r.varint())? != 0),
            3 => ValueRef::Int(expect(wire, VARINT).and_then(|_| r.varint())? as i64),
            4 => ValueRef::Double(f64::from_bits(
                expect(wire, FIXED64).and_then(|_| r.fixed64())?,
            )),
            5 => {
                expect(wire, LEN)?;
                repeated(r.bytes()?, depth, |b, d| {
                    any_value(b, ValueRef::Empty, d).map(drop)
                })?;
                ValueRef::Array
            }
            6 => {
                expect(wire, LEN)?;
                repeated(r.bytes()?, depth, |b, d| key_value(b, d).map(drop))?;
                ValueRef::Kvlist
            }
            7 => {
                expect(wire, LEN)?;
                r.bytes()?;
                ValueRef::Bytes
            }
            8 => {
                expect(wire, VARINT)?;
                r.varint()?;
                ValueRef::Strindex
            }
            _ => {
                r.skip(wire)?;
                v
            }
        };
    }
    Ok(v)
}

/// `ArrayValue` or `KeyValueList`: field 1, each element read by `each`.
fn repeated<'a>(
    buf: &'a [u8],
    depth: u32,
    mut each: impl FnMut(&'a [u8], u32) -> Walk<()>,
) -> Walk<()> {
    let depth = nested(depth)?;
    let mut r = Reader::new(buf);
    while r.more() {
        match r.key()? {
            (1, wire) => {
                expect(wire, LEN)?;
                each(r.bytes()?, depth)?;
            }
            (_, wire) => r.skip(wire)?,
        }
    }
    Ok(())
}

/// `KeyValue`: `(key, value)`.
fn key_value(buf: &[u8], depth: u32) -> Walk<(&str, ValueRef<'_>)> {
    let depth = nested(depth)?;
    let mut r = Reader::new(buf);
    let (mut key, mut value) = ("", ValueRef::Empty);
    while r.more() {
        match r.key()? {
            (1, wire) => key = expect(wire, LEN).and_then(|_| r.string())?,
            (2, wire) => {
                value = any_value(expect(wire, LEN).and_then(|_| r.bytes())?, value, depth)?
            }
            (3, wire) => expect(wire, VARINT).and_then(|_| r.varint()).map(drop)?,
            (_, wire) => r.skip(wire)?,
        }
    }
    Ok((key, value))
}

/// A message whose fields are strings, varints, fixed32 and attributes (`KeyValue`) by field
/// number: checks it whole.
struct Shape {
    strings: &'static [u32],
    bytes: &'static [u32],
    varints: &'static [u32],
    fixed64: &'static [u32],
    fixed32: &'static [u32],
    attributes: u32,
}

const NONE: &[u32] = &[];

fn check(buf: &[u8], shape: &Shape, depth: u32) -> Walk<()> {
    let depth = nested(depth)?;
    let mut r = Reader::new(buf);
    while r.more() {
        let (tag, wire) = r.key()?;
        if shape.strings.contains(&tag) {
            expect(wire, LEN).and_then(|_| r.string()).map(drop)?;
        } else if shape.bytes.contains(&tag) {
            expect(wire, LEN).and_then(|_| r.bytes()).map(drop)?;
        } else if shape.varints.contains(&tag) {
            expect(wire, VARINT).and_then(|_| r.varint()).map(drop)?;
        } else if shape.fixed64.contains(&tag) {
            expect(wire, FIXED64).and_then(|_| r.fixed64()).map(drop)?;
        } else if shape.fixed32.contains(&tag) {
            expect(wire, FIXED32).and_then(|_| r.fixed32()).map(drop)?;
        } else if tag == shape.attributes {
            key_value(expect(wire, LEN).and_then(|_| r.bytes())?, depth)?;
        } else {
            r.skip(wire)?;
        }
    }
    Ok(())
}

/// `EntityRef`: schema_url, type, id_keys, description_keys.
const ENTITY_REF: Shape = Shape {
    strings: &[1, 2, 3, 4],
    bytes: NONE,
    varints: NONE,
    fixed64: NONE,
    fixed32: NONE,
    attributes: 0,
};
/// `InstrumentationScope`: name, version, attributes, dropped_attributes_count.
const SCOPE: Shape = Shape {
    strings: &[1, 2],
    bytes: NONE,
    varints: &[4],
    fixed64: NONE,
    fixed32: NONE,
    attributes: 3,
};
/// `Span.Event`: time_unix_nano, name, attributes, dropped_attributes_count.
const EVENT: Shape = Shape {
    strings: &[2],
    bytes: NONE,
    varints: &[4],
    fixed64: &[1],
    fixed32: NONE,
    attributes: 3,
};
/// `Span.Link`: trace_id, span_id, trace_state, attributes, dropped_attributes_count, flags.
const LINK: Shape = Shape {
    strings: &[3],
    bytes: &[1, 2],
    varints: &[5],
    fixed64: NONE,
    fixed32: &[6],
    attributes: 4,
};

/// What the keys of an exporter's loss counts start with
/// ([`crate::semconv::EXPORTER_SPANS_FAILED`]): a resource holding it is decoded for them.
const LOSS_KEY_PREFIX: &[u8] = b"mcp_otel.exporter.";

/// `Resource`: attributes, dropped_attributes_count, entity_refs.
fn resource(buf: &[u8], depth: u32) -> Walk<()> {
    let depth = nested(depth)?;
    let mut r = Reader::new(buf);
    while r.more() {
        match r.key()? {
            (1, wire) => key_value(expect(wire, LEN).and_then(|_| r.bytes())?, depth).map(drop)?,
            (2, wire) => expect(wire, VARINT).and_then(|_| r.varint()).map(drop)?,
            (3, wire) => check(
                expect(wire, LEN).and_then(|_| r.bytes())?,
                &ENTITY_REF,
                depth,
            )?,
            (_, wire) => r.skip(wire)?,
        }
    }
    Ok(())
}

/// What the decoder reads of one span, borrowed from the export's bytes.
#[derive(Clone, Debug, Default, PartialEq)]
struct SpanFields<'a> {
    trace_id: &'a [u8],
    span_id: &'a [u8],
    parent_span_id: &'a [u8],
    name: &'a str,
    kind: i32,
    start: u64,
    end: u64,
    status_code: i32,
    /// Its attributes in [`WireRequest::attributes`].
    attributes: std::ops::Range<usize>,
}

/// A walked export: its spans and, in one vector, their attributes.
#[derive(Debug, Default)]
pub(crate) struct WireRequest<'a> {
    spans: Vec<SpanFields<'a>>,
    attributes: Vec<(&'a str, ValueRef<'a>)>,
    /// Resources that carry an exporter's loss counts (rare: only after a sender lost spans),
    /// as their bytes, for prost to decode.
    loss_resources: Vec<&'a [u8]>,
}

/// One span of a [`WireRequest`], as the decoder reads it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WireSpan<'r, 'a> {
    fields: &'r SpanFields<'a>,
    attributes: &'r [(&'a str, ValueRef<'a>)],
}

impl SpanView for WireSpan<'_, '_> {
    fn kind(&self) -> i32 {
        self.fields.kind
    }
    fn name(&self) -> &str {
        self.fields.name
    }
    fn status_code(&self) -> i32 {
        self.fields.status_code
    }
    fn start_time_unix_nano(&self) -> u64 {
        self.fields.start
    }
    fn end_time_unix_nano(&self) -> u64 {
        self.fields.end
    }
    fn trace_id(&self) -> &[u8] {
        self.fields.trace_id
    }
    fn span_id(&self) -> &[u8] {
        self.fields.span_id
    }
    fn parent_span_id(&self) -> &[u8] {
        self.fields.parent_span_id
    }
    fn attributes(&self) -> impl Iterator<Item = (&str, ValueRef<'_>)> {
        self.attributes.iter().copied()
    }
}

impl<'a> WireRequest<'a> {
    /// The spans, in the order of the export.
    pub(crate) fn spans(&self) -> impl Iterator<Item = WireSpan<'_, 'a>> {
        self.spans.iter().map(|f| WireSpan {
            fields: f,
            attributes: &self.attributes[f.attributes.clone()],
        })
    }

    fn span(&mut self, buf: &'a [u8], depth: u32) -> Walk<()> {
        let depth = nested(depth)?;
        let mut f = SpanFields {
            attributes: self.attributes.len()..self.attributes.len(),
            ..SpanFields::default()
        };
        let mut r = Reader::new(buf);
        while r.more() {
            let (tag, wire) = r.key()?;
            match tag {
                1 => f.trace_id = expect(wire, LEN).and_then(|_| r.bytes())?,
                2 => f.span_id = expect(wire, LEN).and_then(|_| r.bytes())?,
                3 => expect(wire, LEN).and_then(|_| r.string()).map(drop)?,
                4 => f.parent_span_id = expect(wire, LEN).and_then(|_| r.bytes())?,
                5 => f.name = expect(wire, LEN).and_then(|_| r.string())?,
                6 => f.kind = expect(wire, VARINT).and_then(|_| r.varint())? as i32,
                7 => f.start = expect(wire, FIXED64).and_then(|_| r.fixed64())?,
                8 => f.end = expect(wire, FIXED64).and_then(|_| r.fixed64())?,
                9 => {
                    let kv = key_value(expect(wire, LEN).and_then(|_| r.bytes())?, depth)?;
                    self.attributes.push(kv);
                }
                10 | 12 | 14 => expect(wire, VARINT).and_then(|_| r.varint()).map(drop)?,
                11 => check(expect(wire, LEN).and_then(|_| r.bytes())?, &EVENT, depth)?,
                13 => check(expect(wire, LEN).and_then(|_| r.bytes())?, &LINK, depth)?,
                15 => {
                    // `Status`, merged like prost merges it: the last code wins.
                    let status = expect(wire, LEN).and_then(|_| r.bytes())?;
                    nested(depth)?;
                    let mut s = Reader::new(status);
                    while s.more() {
                        match s.key()? {
                            (2, w) => expect(w, LEN).and_then(|_| s.string()).map(drop)?,
                            (3, w) => {
                                f.status_code = expect(w, VARINT).and_then(|_| s.varint())? as i32
                            }
                            (_, w) => s.skip(w)?,
                        }
                    }
                }
                16 => expect(wire, FIXED32).and_then(|_| r.fixed32()).map(drop)?,
                _ => r.skip(wire)?,
            }
        }
        f.attributes.end = self.attributes.len();
        self.spans.push(f);
        Ok(())
    }

    fn scope_spans(&mut self, buf: &'a [u8], depth: u32) -> Walk<()> {
        let depth = nested(depth)?;
        each_field(buf, |r, field, wire| match field {
            1 => check(expect(wire, LEN).and_then(|_| r.bytes())?, &SCOPE, depth),
            2 => self.span(expect(wire, LEN).and_then(|_| r.bytes())?, depth),
            3 => expect(wire, LEN).and_then(|_| r.string()).map(drop),
            _ => r.skip(wire),
        })
    }

    fn resource_spans(&mut self, buf: &'a [u8], depth: u32) -> Walk<()> {
        let depth = nested(depth)?;
        each_field(buf, |r, field, wire| match field {
            1 => {
                let bytes = expect(wire, LEN).and_then(|_| r.bytes())?;
                resource(bytes, depth)?;
                if memchr::memmem::find(bytes, LOSS_KEY_PREFIX).is_some() {
                    self.loss_resources.push(bytes);
                }
                Ok(())
            }
            2 => self.scope_spans(expect(wire, LEN).and_then(|_| r.bytes())?, depth),
            3 => expect(wire, LEN).and_then(|_| r.string()).map(drop),
            _ => r.skip(wire),
        })
    }
}

/// Hands each field of the message in `buf` to `field` (the reader, positioned at the value,
/// the field number and the wire type), in order.
fn each_field<'a>(
    buf: &'a [u8],
    mut field: impl FnMut(&mut Reader<'a>, u32, u8) -> Walk<()>,
) -> Walk<()> {
    let mut r = Reader::new(buf);
    while r.more() {
        let (number, wire) = r.key()?;
        field(&mut r, number, wire)?;
    }
    Ok(())
}

/// The vectors of walked exports, emptied, for the next walks: an export's attributes take a
/// few hundred kilobytes, otherwise allocated, faulted in and freed for every export. At most
/// [`KEPT_WALKS`], each within [`MAX_KEPT_SPANS`] and [`MAX_KEPT_ATTRIBUTES`]; dropped by
/// [`drop_kept_walks`] when the collector is quiet.
type KeptWalk = (
    Vec<SpanFields<'static>>,
    Vec<(&'static str, ValueRef<'static>)>,
);
static KEPT: std::sync::Mutex<Vec<KeptWalk>> = std::sync::Mutex::new(Vec::new());
const KEPT_WALKS: usize = 2;
const MAX_KEPT_SPANS: usize = 4096;
const MAX_KEPT_ATTRIBUTES: usize = 32_768;

/// `v` emptied, its allocation kept for another lifetime of the same type (std collects an
/// emptied `vec::IntoIter` in place when the layouts agree).
fn emptied<T, U>(mut v: Vec<T>) -> Vec<U> {
    v.clear();
    v.into_iter()
        .map(|_| -> U { unreachable!("emptied") })
        .collect()
}

/// Forgets the kept walk vectors (a quiet collector keeps none).
pub(crate) fn drop_kept_walks() {
    let kept = std::mem::take(&mut *KEPT.lock().unwrap_or_else(|e| e.into_inner()));
    drop(kept);
}

impl WireRequest<'_> {
    /// Hands the walk's vectors back for the next walk.
    fn give_back(self) {
        if self.spans.capacity() > MAX_KEPT_SPANS
            || self.attributes.capacity() > MAX_KEPT_ATTRIBUTES
        {
            return;
        }
        let walk = (emptied(self.spans), emptied(self.attributes));
        let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() < KEPT_WALKS {
            kept.push(walk);
        }
    }
}

/// Walks an `ExportTraceServiceRequest`; `Err` for what prost must decide.
pub(crate) fn read_request(buf: &[u8]) -> Walk<WireRequest<'_>> {
    let (spans, attributes) = KEPT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pop()
        .unwrap_or_default();
    let mut req = WireRequest {
        spans: emptied(spans),
        attributes: emptied(attributes),
        loss_resources: Vec::new(),
    };
    // Room for what a usual export holds (a span is a few hundred bytes, an attribute a few
    // dozen), so the vectors rarely grow; bounded whatever the size of the export.
    req.spans.reserve((buf.len() / 256).min(MAX_KEPT_SPANS));
    req.attributes
        .reserve((buf.len() / 32).min(MAX_KEPT_ATTRIBUTES));
    let mut r = Reader::new(buf);
    while r.more() {
        match r.key()? {
            (1, wire) => req.resource_spans(expect(wire, LEN).and_then(|_| r.bytes())?, 0)?,
            (_, wire) => r.skip(wire)?,
        }
    }
    Ok(req)
}

/// Decodes every span of an export's bytes for `usage`, as
/// [`decode_request`](super::decode::decode_request) decodes prost's types, into the `spent`
/// records of an earlier export (their text buffers reused) while they last.
pub(crate) fn decode_request_bytes(
    buf: &[u8],
    usage: Use,
    spent: Vec<ToolCall>,
) -> Walk<DecodedRequest> {
    let req = read_request(buf)?;
    let mut out = DecodedRequest {
        losses: req
            .loss_resources
            .iter()
            .filter_map(|bytes| {
                let r =
                    <opentelemetry_proto::tonic::resource::v1::Resource as prost::Message>::decode(
                        *bytes,
                    )
                    .ok()?;
                super::decode::exporter_losses(&r)
            })
            .collect(),
        calls: spent,
        origins: Vec::with_capacity(req.spans.len()),
        ..DecodedRequest::default()
    };
    out.calls
        .reserve(req.spans.len().saturating_sub(out.calls.len()));
    let mut kept = 0;
    for span in req.spans() {
        out.add_at(&span, usage, &mut kept);
    }
    out.calls.truncate(kept);
    req.give_back();
    Ok(out)
}

/// The gRPC codec of the trace service: the request as its bytes, the response as prost
/// encodes it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RawCodec;

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ResponseEncoder;

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct BytesDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = Bytes;
    type Encoder = ResponseEncoder;
    type Decoder = BytesDecoder;

    fn encoder(&mut self) -> ResponseEncoder {
        ResponseEncoder
    }

    fn decoder(&mut self) -> BytesDecoder {
        BytesDecoder
    }
}

impl Encoder for ResponseEncoder {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;

    fn encode(&mut self, item: Self::Item, buf: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        item.encode(buf)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl Decoder for BytesDecoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Self::Error> {
        Ok(Some(buf.copy_to_bytes(buf.remaining())))
    }
}

/// The OTLP `TraceService` of `collect` on [`RawCodec`]: what the generated server does, with
/// the export handed to [`Collector::ingest_wire`] as bytes.
#[derive(Clone)]
pub(crate) struct WireTraces {
    collector: Arc<Collector>,
    max_decoding_message_size: usize,
}

impl WireTraces {
    /// The service, accepting and sending gzip, with `max_decoding_message_size`.
    pub(crate) fn new(collector: Arc<Collector>, max_decoding_message_size: usize) -> Self {
        WireTraces {
            collector,
            max_decoding_message_size,
        }
    }
}

impl tonic::server::NamedService for WireTraces {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

struct Export(Arc<Collector>);

impl tonic::server::UnaryService<Bytes> for Export {
    type Response = ExportTraceServiceResponse;
    type Future = tonic::codegen::BoxFuture<tonic::Response<Self::Response>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let collector = self.0.clone();
        Box::pin(async move {
            let response = collector.ingest_wire(request.into_inner()).await?;
            Ok(tonic::Response::new(response))
        })
    }
}

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

impl<B> tonic::codegen::Service<http::Request<B>> for WireTraces
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != EXPORT_PATH {
            return Box::pin(async move {
                let mut response = http::Response::new(tonic::body::Body::default());
                let headers = response.headers_mut();
                headers.insert(
                    tonic::Status::GRPC_STATUS,
                    (tonic::Code::Unimplemented as i32).into(),
                );
                headers.insert(
                    http::header::CONTENT_TYPE,
                    tonic::metadata::GRPC_CONTENT_TYPE,
                );
                Ok(response)
            });
        }
        let export = Export(self.collector.clone());
        let max = self.max_decoding_message_size;
        Box::pin(async move {
            let gzip = tonic::codec::EnabledCompressionEncodings::default();
            let mut gzip = gzip;
            gzip.enable(tonic::codec::CompressionEncoding::Gzip);
            let mut grpc = tonic::server::Grpc::new(RawCodec)
                .apply_compression_config(gzip, gzip)
                .apply_max_message_size_config(Some(max), None);
            Ok(grpc.unary(export, req).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::decode::decode_request;
    use crate::emit::{SpanOptions, to_span};
    use crate::record::tests_support::arb_tool_call;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{
        AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span, status};
    use proptest::prelude::*;

    /// Everything a [`SpanView`] shows, comparable (a NaN double compares by its text).
    fn view(s: &impl SpanView) -> (Vec<String>, Vec<(String, String)>) {
        (
            vec![
                s.kind().to_string(),
                s.name().to_owned(),
                s.status_code().to_string(),
                s.start_time_unix_nano().to_string(),
                s.end_time_unix_nano().to_string(),
                format!("{:?}", s.trace_id()),
                format!("{:?}", s.span_id()),
                format!("{:?}", s.parent_span_id()),
            ],
            s.attributes()
                .map(|(k, v)| (k.to_owned(), format!("{v:?}")))
                .collect(),
        )
    }

    fn leaf() -> impl Strategy<Value = any_value::Value> {
        prop_oneof![
            "[a-z0-9_./ -]{0,12}".prop_map(any_value::Value::StringValue),
            any::<bool>().prop_map(any_value::Value::BoolValue),
            any::<i64>().prop_map(any_value::Value::IntValue),
            any::<f64>().prop_map(any_value::Value::DoubleValue),
            proptest::collection::vec(any::<u8>(), 0..4).prop_map(any_value::Value::BytesValue),
            any::<i32>().prop_map(any_value::Value::StringValueStrindex),
        ]
    }

    fn any_value() -> impl Strategy<Value = Option<AnyValue>> {
        let value = leaf().prop_recursive(3, 12, 3, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..3).prop_map(|v| {
                    any_value::Value::ArrayValue(ArrayValue {
                        values: v.into_iter().map(|v| AnyValue { value: Some(v) }).collect(),
                    })
                }),
                proptest::collection::vec(("[a-z]{1,4}", inner), 0..3).prop_map(|v| {
                    any_value::Value::KvlistValue(KeyValueList {
                        values: v
                            .into_iter()
                            .map(|(key, v)| KeyValue {
                                key,
                                value: Some(AnyValue { value: Some(v) }),
                                ..Default::default()
                            })
                            .collect(),
                    })
                }),
            ]
        });
        proptest::option::weighted(0.9, proptest::option::weighted(0.95, value))
            .prop_map(|v| v.map(|value| AnyValue { value }))
    }

    /// The keys the decoder reads, and others.
    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("mcp.method.name".to_owned()),
            Just("gen_ai.tool.name".to_owned()),
            Just("gen_ai.operation.name".to_owned()),
            Just("enduser.id".to_owned()),
            Just("user.id".to_owned()),
            Just("mcp_otel.status".to_owned()),
            Just("mcp_otel.error_code".to_owned()),
            Just("mcp_otel.duration_ms".to_owned()),
            Just("mcp_otel.context".to_owned()),
            Just("mcp_otel.operation_type".to_owned()),
            Just("mcp_otel.user_confirmation".to_owned()),
            Just("error.type".to_owned()),
            Just("traceloop.span.kind".to_owned()),
            Just("traceloop.entity.name".to_owned()),
            "[a-z.]{1,10}",
        ]
    }

    /// A span of ours (any record), or one with arbitrary attributes, kind and status.
    fn arb_span() -> impl Strategy<Value = Span> {
        let ours = arb_tool_call().prop_map(|c| -> Span {
            to_span(
                &c,
                &SpanOptions {
                    record_result: true,
                    ..SpanOptions::default()
                },
            )
            .into()
        });
        let odd = (
            proptest::collection::vec((key(), any_value()), 0..8),
            0i32..6,
            proptest::option::of(0i32..3),
            proptest::collection::vec(any::<u8>(), 0..17),
            "[a-z/ ]{0,16}",
        )
            .prop_map(|(attrs, kind, code, id, name)| Span {
                trace_id: id.clone(),
                span_id: id.iter().take(8).copied().collect(),
                name,
                kind,
                start_time_unix_nano: 1_800_000_000_000_000_000,
                end_time_unix_nano: 1_800_000_000_100_000_000,
                attributes: crate::collect::decode::key_values(attrs),
                events: vec![span::Event {
                    name: "e".into(),
                    ..Default::default()
                }],
                links: vec![span::Link {
                    trace_id: vec![1; 16],
                    ..Default::default()
                }],
                status: code.map(|code| opentelemetry_proto::tonic::trace::v1::Status {
                    code,
                    message: "m".into(),
                }),
                ..Default::default()
            });
        prop_oneof![ours, odd]
    }

    fn arb_export() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(arb_span(), 0..5).prop_map(|spans| {
            ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(Resource {
                        attributes: vec![KeyValue {
                            key: "service.name".into(),
                            value: Some(AnyValue {
                                value: Some(any_value::Value::StringValue("svc".into())),
                            }),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: "mcp-otel".into(),
                            ..Default::default()
                        }),
                        spans,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            }
            .encode_to_vec()
        })
    }

    /// A valid export with some bytes changed, cut or inserted.
    fn mutated() -> impl Strategy<Value = Vec<u8>> {
        (
            arb_export(),
            proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4),
        )
            .prop_map(|(mut bytes, edits)| {
                for (at, b, how) in edits {
                    if bytes.is_empty() {
                        bytes.push(b);
                        continue;
                    }
                    let i = at.index(bytes.len());
                    match how {
                        0 => bytes[i] = b,
                        1 => bytes.truncate(i),
                        _ => bytes.insert(i, b),
                    }
                }
                bytes
            })
    }

    /// Whenever the walk reads an export, prost decodes it too, to the same spans, and the
    /// calls decoded from the walk are the calls decoded from prost's types.
    fn agrees(bytes: &[u8]) -> Result<(), TestCaseError> {
        let Ok(walked) = read_request(bytes) else {
            return Ok(());
        };
        let req = ExportTraceServiceRequest::decode(bytes);
        prop_assert!(req.is_ok(), "the walk read what prost rejects: {req:?}");
        let req = req.unwrap();
        let spans: Vec<&Span> = req
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
            .collect();
        let wire: Vec<_> = walked.spans().collect();
        prop_assert_eq!(spans.len(), wire.len());
        for (p, w) in spans.iter().zip(&wire) {
            prop_assert_eq!(view(*p), view(w));
        }
        let full = decode_request(&req);
        let stored = decode_request_bytes(bytes, Use::Store, Vec::new()).unwrap();
        prop_assert_eq!(&stored.calls, &full.calls);
        prop_assert_eq!(&stored.origins, &full.origins);
        let counted = decode_request_bytes(bytes, Use::Count, Vec::new()).unwrap();
        prop_assert_eq!(
            (counted.received, counted.ignored, counted.invalid),
            (full.received, full.ignored, full.invalid)
        );
        prop_assert_eq!(&counted.first_error, &full.first_error);
        prop_assert_eq!(&counted.origins, &full.origins);
        for (c, f) in counted.calls.iter().zip(&full.calls) {
            // Every field metrics, alerts and the exactly-once ledger read.
            prop_assert_eq!(&c.tool_name, &f.tool_name);
            prop_assert_eq!(&c.user, &f.user);
            prop_assert_eq!(c.status, f.status);
            prop_assert_eq!(&c.error_code, &f.error_code);
            prop_assert_eq!(c.timestamp, f.timestamp);
            prop_assert_eq!(c.duration_ms.to_bits(), f.duration_ms.to_bits());
            prop_assert_eq!(c.operation_type(), f.operation_type());
            prop_assert_eq!(
                c.write.as_ref().and_then(|w| w.user_confirmation),
                f.write.as_ref().and_then(|w| w.user_confirmation)
            );
            prop_assert_eq!(
                c.confirmation.as_ref().map(|x| x.outcome),
                f.confirmation.as_ref().map(|x| x.outcome)
            );
            prop_assert_eq!(&c.mcp.method, &f.mcp.method);
            prop_assert_eq!(&c.mcp.request_id, &f.mcp.request_id);
            prop_assert_eq!(c.ids, f.ids);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn valid_exports_read_as_prost_reads_them(bytes in arb_export()) {
            prop_assert!(read_request(&bytes).is_ok(), "a valid export is read");
            agrees(&bytes)?;
        }

        #[test]
        fn walk_accepts_only_what_prost_accepts(bytes in mutated()) {
            agrees(&bytes)?;
        }

        #[test]
        fn no_bytes_make_the_walk_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            agrees(&bytes)?;
        }

        /// An export decoded into the records of an earlier one decodes to what it decodes to
        /// afresh: nothing of the earlier calls stays in the later ones.
        #[test]
        fn a_reused_record_keeps_nothing_of_its_last_call(
            earlier in arb_export(),
            later in arb_export(),
        ) {
            let spent = decode_request_bytes(&earlier, Use::Store, Vec::new()).unwrap().calls;
            for usage in [Use::Store, Use::Count] {
                let fresh = decode_request_bytes(&later, usage, Vec::new()).unwrap();
                let reused = decode_request_bytes(&later, usage, spent.clone()).unwrap();
                prop_assert_eq!(&reused.calls, &fresh.calls);
                prop_assert_eq!(&reused.origins, &fresh.origins);
                prop_assert_eq!(&reused.first_error, &fresh.first_error);
            }
        }
    }

    #[test]
    fn groups_deep_nesting_and_bad_utf8_go_to_prost() {
        // A start-group field, unknown to the schema.
        assert_eq!(read_request(&[0x0b, 0x0c]).err(), Some(NotRead));
        // A resource_spans whose schema_url is not UTF-8.
        let bad = [0x0a, 0x03, 0x1a, 0x01, 0xff];
        assert_eq!(read_request(&bad).err(), Some(NotRead));
        assert!(ExportTraceServiceRequest::decode(&bad[..]).is_err());
        // An attribute nested deeper than the walk follows: prost decides.
        let mut v = AnyValue {
            value: Some(any_value::Value::IntValue(1)),
        };
        for _ in 0..MAX_DEPTH {
            v = AnyValue {
                value: Some(any_value::Value::ArrayValue(ArrayValue { values: vec![v] })),
            };
        }
        let span = Span {
            attributes: vec![KeyValue {
                key: "deep".into(),
                value: Some(v),
                ..Default::default()
            }],
            ..Default::default()
        };
        let bytes = export(vec![span]).encode_to_vec();
        assert_eq!(read_request(&bytes).err(), Some(NotRead));
        assert!(ExportTraceServiceRequest::decode(&bytes[..]).is_ok());
    }

    #[test]
    fn status_messages_merge_as_prost_merges_them() {
        // Two `status` fields: the second has no code, the first's stands.
        let mut bytes = Span {
            trace_id: vec![1; 16],
            status: Some(opentelemetry_proto::tonic::trace::v1::Status {
                code: status::StatusCode::Error as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec();
        bytes.extend_from_slice(&[0x7a, 0x03, 0x12, 0x01, b'x']);
        let mut req = vec![0x0a];
        let scope = [&[0x12][..], &prost_len(bytes.len()), &bytes].concat();
        let rs = [&[0x12][..], &prost_len(scope.len()), &scope].concat();
        req.extend_from_slice(&prost_len(rs.len()));
        req.extend_from_slice(&rs);
        agrees(&req).unwrap();
        let walked = read_request(&req).unwrap();
        assert_eq!(walked.spans().next().unwrap().status_code(), 2);
    }

    use crate::collect::testing::export_request as export;

    fn prost_len(n: usize) -> Vec<u8> {
        let mut v = Vec::new();
        prost::encoding::encode_varint(n as u64, &mut v);
        v
    }
}
