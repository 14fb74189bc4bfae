#!/usr/bin/env python3
"""An independent OTLP/gRPC trace receiver (grpcio + the official opentelemetry-proto types).

Usage:
    .venv/bin/python tests/peers/otlp_receive.py [--max-spans N] [--timeout SECS]
        [--host 127.0.0.1] [--port 0]

Binds host:port (default 127.0.0.1:0, i.e. a free port chosen by the kernel),
serves opentelemetry.proto.collector.trace.v1.TraceService/Export, and prints on
stdout, flushing after every line:

    LISTENING <port>                      first, once the server accepts connections
    {"name": ..., "kind": "server", ...}  then one JSON object per received span

A span line has:
    name, kind            kind: unspecified|internal|server|client|producer|consumer
    trace_id, span_id     lowercase hex (32 / 16 chars)
    parent_span_id        lowercase hex, or null for a root span
    trace_state, flags
    status_code           unset|ok|error
    status_message        "" when none
    start_time_unix_nano, end_time_unix_nano (ints)
    attributes            flat {key: value}; values typed: str, int, float, bool,
                          list (array_value), dict (kvlist_value), bytes -> hex str
    events                [{"name", "time_unix_nano", "attributes"}]
    links                 [{"trace_id", "span_id", "attributes"}]
    resource_attributes   flat {key: value}, typed as above
    scope                 {"name", "version"}

Every span of every Export request is printed (a batch can overshoot
--max-spans). Exits when --max-spans spans have arrived (exit 0), or when
--timeout seconds (default 30) have passed: exit 0 if no --max-spans was given,
exit 3 if fewer than --max-spans arrived. A summary goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1 import trace_pb2

PROG = "otlp_receive"

KIND_NAMES = {
    trace_pb2.Span.SPAN_KIND_UNSPECIFIED: "unspecified",
    trace_pb2.Span.SPAN_KIND_INTERNAL: "internal",
    trace_pb2.Span.SPAN_KIND_SERVER: "server",
    trace_pb2.Span.SPAN_KIND_CLIENT: "client",
    trace_pb2.Span.SPAN_KIND_PRODUCER: "producer",
    trace_pb2.Span.SPAN_KIND_CONSUMER: "consumer",
}
STATUS_NAMES = {
    trace_pb2.Status.STATUS_CODE_UNSET: "unset",
    trace_pb2.Status.STATUS_CODE_OK: "ok",
    trace_pb2.Status.STATUS_CODE_ERROR: "error",
}


def any_value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return attrs(v.kvlist_value.values)
    if which == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, which)  # string_value, bool_value, int_value, double_value


def attrs(kvs: "list[KeyValue] | Any") -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


def span_json(span: trace_pb2.Span, resource: dict[str, Any], scope: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": span.name,
        "kind": KIND_NAMES.get(span.kind, str(span.kind)),
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
        "parent_span_id": span.parent_span_id.hex() or None,
        "trace_state": span.trace_state,
        "flags": span.flags,
        "status_code": STATUS_NAMES.get(span.status.code, str(span.status.code)),
        "status_message": span.status.message,
        "start_time_unix_nano": span.start_time_unix_nano,
        "end_time_unix_nano": span.end_time_unix_nano,
        "attributes": attrs(span.attributes),
        "events": [
            {"name": e.name, "time_unix_nano": e.time_unix_nano, "attributes": attrs(e.attributes)}
            for e in span.events
        ],
        "links": [
            {"trace_id": link.trace_id.hex(), "span_id": link.span_id.hex(), "attributes": attrs(link.attributes)}
            for link in span.links
        ],
        "resource_attributes": resource,
        "scope": scope,
    }


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, max_spans: int | None) -> None:
        self.max_spans = max_spans
        self.count = 0
        self.lock = threading.Lock()
        self.done = threading.Event()

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext):  # noqa: N802
        lines = []
        for rs in request.resource_spans:
            resource = attrs(rs.resource.attributes)
            for ss in rs.scope_spans:
                scope = {"name": ss.scope.name, "version": ss.scope.version}
                for span in ss.spans:
                    lines.append(json.dumps(span_json(span, resource, scope), ensure_ascii=False))
        with self.lock:
            for line in lines:
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
            self.count += len(lines)
            if self.max_spans is not None and self.count >= self.max_spans:
                self.done.set()
        return trace_service_pb2.ExportTraceServiceResponse()


def main() -> None:
    p = argparse.ArgumentParser(prog=PROG, description="OTLP/gRPC trace receiver (see module docstring).")
    p.add_argument("--max-spans", type=int, default=None, help="exit once this many spans arrived")
    p.add_argument("--timeout", type=float, default=30.0, help="exit after this many seconds (default 30)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port to bind (default 0: any free port)")
    args = p.parse_args()
    if args.max_spans is not None and args.max_spans < 1:
        p.error("--max-spans must be >= 1")

    receiver = Receiver(args.max_spans)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
    )
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    try:
        port = server.add_insecure_port(f"{args.host}:{args.port}")
    except RuntimeError as e:
        print(f"{PROG}: error: cannot bind {args.host}:{args.port}: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    if port == 0:
        print(f"{PROG}: error: cannot bind {args.host}:{args.port}", file=sys.stderr, flush=True)
        sys.exit(1)
    server.start()
    print(f"LISTENING {port}", flush=True)

    started = time.monotonic()
    try:
        reached = receiver.done.wait(timeout=args.timeout)
    except KeyboardInterrupt:
        reached = False
    # Let in-flight Export calls answer before tearing down.
    server.stop(grace=1.0).wait()
    elapsed = time.monotonic() - started
    with receiver.lock:
        count = receiver.count
    if reached:
        print(f"{PROG}: received {count} span(s) in {elapsed:.2f}s", file=sys.stderr, flush=True)
        sys.exit(0)
    if args.max_spans is None:
        print(f"{PROG}: timeout after {elapsed:.2f}s, received {count} span(s)", file=sys.stderr, flush=True)
        sys.exit(0)
    print(
        f"{PROG}: timeout after {elapsed:.2f}s: received {count} of {args.max_spans} span(s)",
        file=sys.stderr,
        flush=True,
    )
    sys.exit(3)


if __name__ == "__main__":
    main()
