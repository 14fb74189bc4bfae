#!/usr/bin/env python3
"""An MCP client that instruments itself with OpenTelemetry, as real clients do.

Usage:
    PYTHON tests/peers/otel_client.py --calls FILE [--openllmetry] [--no-otel] [--linger SECS]
        -- COMMAND [ARG ...]

Starts the stdio server COMMAND (the child inherits this environment) with the official MCP
Python SDK's `ClientSession` / `stdio_client`, runs `initialize`, then one
`ClientSession.call_tool(tool, args)` per entry of the JSON list in FILE
(`[{"tool": "create_note", "args": {"id": "n1", "text": "hi"}}, ...]`).

Unless --no-otel, a TracerProvider exports this process's spans over OTLP/gRPC to
OTEL_EXPORTER_OTLP_ENDPOINT: on SDK 2.x the SDK's own CLIENT spans (`MCP send tools/call X`,
whose context it injects as `params._meta.traceparent`); with --openllmetry (SDK 1.x +
opentelemetry-instrumentation-mcp) OpenLLMetry's INTERNAL `X.tool` spans. The provider is shut
down (flushed) before exit. --linger keeps the session (and so the server and its exporter,
which gives up retrying once it is shut down) open that long after the last call.

Prints one JSON line per call: {"tool", "is_error", "text"}. Exit 0 when every call got an
answer (tool errors included), 1 on a protocol failure, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys


def main() -> None:
    argv = sys.argv[1:]
    if "--" not in argv:
        print("otel_client: error: missing `-- COMMAND [ARG ...]`", file=sys.stderr)
        sys.exit(2)
    split = argv.index("--")
    p = argparse.ArgumentParser(prog="otel_client")
    p.add_argument("--calls", required=True)
    p.add_argument("--openllmetry", action="store_true")
    p.add_argument("--no-otel", action="store_true")
    p.add_argument("--linger", type=float, default=0.0)
    args = p.parse_args(argv[:split])
    command = argv[split + 1 :]
    calls = json.load(open(args.calls, encoding="utf-8"))

    provider = None
    if not args.no_otel:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(insecure=True)))
        trace.set_tracer_provider(provider)
    if args.openllmetry:
        # Before mcp is imported: it wraps BaseSession.send_request at instrument time.
        from opentelemetry.instrumentation.mcp import McpInstrumentor

        McpInstrumentor().instrument(tracer_provider=provider)

    import os

    import anyio
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    async def run() -> None:
        params = StdioServerParameters(command=command[0], args=command[1:], env=dict(os.environ))
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                for c in calls:
                    result = await session.call_tool(c["tool"], c.get("args") or {})
                    is_error = getattr(result, "is_error", None)
                    if is_error is None:
                        is_error = getattr(result, "isError", False)
                    text = "\n".join(getattr(b, "text", "") for b in result.content)
                    print(json.dumps({"tool": c["tool"], "is_error": bool(is_error), "text": text}), flush=True)
                await anyio.sleep(args.linger)

    try:
        anyio.run(run)
    except Exception as e:  # a protocol failure
        print(f"otel_client: error: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        if provider is not None:
            provider.shutdown()


if __name__ == "__main__":
    main()
