#!/usr/bin/env python3
"""Send spans over OTLP/gRPC with the official OpenTelemetry Python SDK.

Usage:
    .venv/bin/python tests/peers/otlp_send.py --endpoint http://127.0.0.1:PORT
        [--count N] [--name NAME] [--kind server|client|internal|producer|consumer]
        [--attr KEY=VALUE ...] [--resource-attr KEY=VALUE ...] [--service-name NAME]
        [--error] [--error-message MSG] [--timeout SECS]

Sends --count spans (default 1), one after another, each a root span of its own
trace, named --name (default "otlp-send"), of kind --kind (default server), with
every --attr set on it. Values are typed: `true`/`false` -> bool, an integer
literal -> int, a float literal -> float, anything else -> str (prefix the value
with `str:` to force a string, e.g. `--attr code=str:200`). --error sets the span
status to ERROR (with --error-message as its description). The exporter is
`OTLPSpanExporter(endpoint=..., insecure=True)` behind a BatchSpanProcessor;
the script force-flushes, shuts down and exits.

Prints one line per span on stdout: `SPAN <trace_id hex> <span_id hex>`, then
`SENT <n>`. Exit status 0 when the exporter reported success, 1 when the export
failed (nothing listening, the receiver answered an error, timeout), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Sequence

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode

PROG = "otlp_send"

KINDS = {
    "server": SpanKind.SERVER,
    "client": SpanKind.CLIENT,
    "internal": SpanKind.INTERNAL,
    "producer": SpanKind.PRODUCER,
    "consumer": SpanKind.CONSUMER,
}


def parse_value(raw: str) -> Any:
    if raw.startswith("str:"):
        return raw[4:]
    if raw in ("true", "false"):
        return raw == "true"
    try:
        return int(raw, 10)
    except ValueError:
        pass
    try:
        return float(raw)
    except ValueError:
        return raw


def parse_kv(items: list[str], flag: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"{flag} expects KEY=VALUE, got {item!r}")
        out[key] = parse_value(value)
    return out


class RecordingExporter(SpanExporter):
    """Wraps the real exporter to remember whether every export succeeded."""

    def __init__(self, inner: OTLPSpanExporter) -> None:
        self.inner = inner
        self.failures = 0
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self.inner.export(spans)
        if result == SpanExportResult.SUCCESS:
            self.exported += len(spans)
        else:
            self.failures += 1
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def main() -> None:
    p = argparse.ArgumentParser(prog=PROG, description="Send spans over OTLP/gRPC (see module docstring).")
    p.add_argument("--endpoint", required=True, help="OTLP/gRPC endpoint, e.g. http://127.0.0.1:4317")
    p.add_argument("--count", type=int, default=1, help="number of spans (default 1)")
    p.add_argument("--name", default="otlp-send", help="span name (default otlp-send)")
    p.add_argument("--kind", choices=sorted(KINDS), default="server", help="span kind (default server)")
    p.add_argument("--attr", action="append", default=[], metavar="KEY=VALUE", help="span attribute (repeatable)")
    p.add_argument(
        "--resource-attr", action="append", default=[], metavar="KEY=VALUE", help="resource attribute (repeatable)"
    )
    p.add_argument("--service-name", default="otlp-send", help="resource service.name (default otlp-send)")
    p.add_argument("--error", action="store_true", help="set span status ERROR")
    p.add_argument("--error-message", default="otlp_send --error", help="status description with --error")
    p.add_argument("--timeout", type=float, default=10.0, help="exporter timeout, seconds (default 10)")
    args = p.parse_args()
    if args.count < 0:
        p.error("--count must be >= 0")

    attrs = parse_kv(args.attr, "--attr", p)
    resource_attrs = {"service.name": args.service_name}
    resource_attrs.update(parse_kv(args.resource_attr, "--resource-attr", p))

    # The exporter logs its retries and failures through `logging`; keep them on stderr.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format=f"{PROG}: %(name)s: %(message)s")

    exporter = RecordingExporter(OTLPSpanExporter(endpoint=args.endpoint, insecure=True, timeout=args.timeout))
    provider = TracerProvider(resource=Resource.create(resource_attrs))
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=max(2048, args.count)))
    tracer = provider.get_tracer("mcp-otel-tests.otlp_send")

    for _ in range(args.count):
        with tracer.start_as_current_span(
            args.name, kind=KINDS[args.kind], attributes=attrs, record_exception=False, set_status_on_exception=False
        ) as span:
            if args.error:
                span.set_status(Status(StatusCode.ERROR, args.error_message))
            ctx = span.get_span_context()
            print(f"SPAN {ctx.trace_id:032x} {ctx.span_id:016x}", flush=True)

    flushed = provider.force_flush(timeout_millis=int(args.timeout * 1000) + 5000)
    provider.shutdown()
    if not flushed or exporter.failures or exporter.exported != args.count:
        print(
            f"{PROG}: error: export to {args.endpoint} failed "
            f"({exporter.exported}/{args.count} spans acknowledged, {exporter.failures} failed batch(es)"
            f"{'' if flushed else ', flush timed out'})",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(1)
    print(f"SENT {exporter.exported}", flush=True)


if __name__ == "__main__":
    main()
