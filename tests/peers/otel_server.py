#!/usr/bin/env python3
"""A stdio MCP server that instruments itself with OpenTelemetry, as real servers do.

Usage:
    PYTHON tests/peers/otel_server.py [--openllmetry]

Runs on the official MCP Python SDK 2.x (`mcp.server.mcpserver.MCPServer`, which makes its
own SERVER span per request as soon as a TracerProvider exists) or 1.x
(`mcp.server.fastmcp.FastMCP`, which makes none; with --openllmetry the OpenLLMetry
instrumentation is installed, which on 1.x only adds `ResponseStreamWriter` spans on this side).

A TracerProvider with a BatchSpanProcessor exports over OTLP/gRPC to
OTEL_EXPORTER_OTLP_ENDPOINT (the SDK reads OTEL_BSP_SCHEDULE_DELAY and OTEL_SERVICE_NAME too);
it is shut down (flushed) when stdin closes or on SIGTERM.

Tools (a small notes store in memory):
    create_note(id, text)  -> "created <id>"
    get_note(id)           -> the text, or an error result when there is none
    delete_note(id)        -> "deleted <id>"
    fail_note(id)          -> always an error result (the tool raises)
"""

from __future__ import annotations

import argparse
import signal
import sys

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor


def main() -> None:
    p = argparse.ArgumentParser(prog="otel_server")
    p.add_argument("--openllmetry", action="store_true", help="install OpenLLMetry's McpInstrumentor")
    args = p.parse_args()

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(insecure=True)))
    trace.set_tracer_provider(provider)
    if args.openllmetry:
        from opentelemetry.instrumentation.mcp import McpInstrumentor

        McpInstrumentor().instrument(tracer_provider=provider)

    def stop(*_: object) -> None:
        provider.shutdown()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)

    try:
        from mcp.server.mcpserver import MCPServer as Server  # SDK 2.x
    except ImportError:
        from mcp.server.fastmcp import FastMCP as Server  # SDK 1.x

    server = Server("notes")
    notes: dict[str, str] = {}

    @server.tool()
    def create_note(id: str, text: str) -> str:
        """Creates a note."""
        notes[id] = text
        return f"created {id}"

    @server.tool()
    def get_note(id: str) -> str:
        """Reads a note."""
        if id not in notes:
            raise ValueError(f"no note {id}")
        return notes[id]

    @server.tool()
    def delete_note(id: str) -> str:
        """Deletes a note."""
        notes.pop(id, None)
        return f"deleted {id}"

    @server.tool()
    def fail_note(id: str) -> str:
        """Always fails."""
        raise ValueError(f"cannot touch {id}")

    try:
        server.run()
    finally:
        provider.shutdown()


if __name__ == "__main__":
    main()
