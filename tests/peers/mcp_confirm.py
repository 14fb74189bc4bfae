#!/usr/bin/env python3
"""A client that answers elicitations, for the confirmation gate's tests: the official MCP
Python SDK (`ClientSession` with an `elicitation_callback`) over stdio or Streamable HTTP.

Usage:
    .venv/bin/python tests/peers/mcp_confirm.py --answer accept|decline|cancel|untick|slow|none
        [--slow-secs S] [--entity NAME] [--http URL] [--header K=V ...] [-- COMMAND ARG ...]

In a legacy session (initialize, 2025-11-25) against @modelcontextprotocol/server-memory it
creates the entity NAME, calls delete_entities on it, then reads the graph (--flavor tasks:
delete_task on the task NAME of the rmcp tasks server, then list_tasks). The callback
answers every elicitation as --answer says (`untick`: accept with confirm false; `slow`: waits
--slow-secs, then accepts; `none`: no callback, so no elicitation capability is declared).

With --modern it speaks 2026-07-28 (no initialize; the proxy's question comes as an
`input_required` result the SDK resolves through the same callback), over --http or stdio;
--flavor notes drives tests/peers/otel_server.py: create_note NAME, delete_note NAME, get_note.

--call-timeout S makes the client give up on the delete after S seconds (the SDK then
sends `notifications/cancelled`); it prints {"type": "delete", "cancelled": true}, waits
--linger seconds (a slow callback may answer meanwhile), and reads the graph.

Prints one JSON object per line on stdout:
    {"type": "elicitation", "message": "...", "schema": {...}}   each question received
    {"type": "delete", "is_error": bool, "text": "..."}
    {"type": "graph", "entities": ["Alice", ...]}
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import anyio

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
import mcp.types as types


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def callback_for(args: argparse.Namespace):
    async def answer(context, params):
        emit(
            {
                "type": "elicitation",
                "message": params.message,
                "schema": getattr(params, "requested_schema", None),
            }
        )
        if args.answer == "decline":
            return types.ElicitResult(action="decline")
        if args.answer == "cancel":
            return types.ElicitResult(action="cancel")
        if args.answer == "untick":
            return types.ElicitResult(action="accept", content={"confirm": False})
        if args.answer == "slow":
            await anyio.sleep(args.slow_secs)
        return types.ElicitResult(action="accept", content={"confirm": True})

    return None if args.answer == "none" else answer


def text_of(result) -> str:
    return "\n".join(c.text for c in result.content if getattr(c, "type", None) == "text")


async def gated_delete(session, tool: str, arguments: dict, args) -> None:
    try:
        result = await session.call_tool(tool, arguments, read_timeout_seconds=args.call_timeout)
        emit({"type": "delete", "is_error": bool(result.is_error), "text": text_of(result)})
    except MCPError as e:
        if args.call_timeout is None:
            raise
        # The SDK gave up on the call and sent `notifications/cancelled` for it.
        emit({"type": "delete", "cancelled": True, "text": str(e)})
        await anyio.sleep(args.linger)


async def session_steps(read, write, args) -> None:
    async with ClientSession(
        read,
        write,
        read_timeout_seconds=args.timeout,
        elicitation_callback=callback_for(args),
        client_info=types.Implementation(name="mcp-confirm", version="0.1.0"),
    ) as session:
        await session.initialize()
        if not args.no_list:
            await session.list_tools()
        if args.flavor == "tasks":
            await gated_delete(session, "delete_task", {"id": args.entity}, args)
            listed = await session.call_tool("list_tasks", {})
            data = listed.structured_content or json.loads(text_of(listed))
            emit({"type": "graph", "entities": [t["id"] for t in data.get("tasks", [])]})
            return
        await session.call_tool(
            "create_entities",
            {"entities": [{"name": args.entity, "entityType": "person", "observations": ["x"]}]},
        )
        await gated_delete(session, "delete_entities", {"entityNames": [args.entity]}, args)
        graph = await session.call_tool("read_graph", {})
        data = graph.structured_content or json.loads(text_of(graph))
        emit({"type": "graph", "entities": [e["name"] for e in data.get("entities", [])]})


async def modern_steps(args, cmd) -> None:
    """2026-07-28 over Streamable HTTP (--http) or stdio (a command): the high-level `Client`
    resolves `input_required` results itself, through the same elicitation callback."""
    from mcp.client.client import Client

    server = args.http or StdioServerParameters(command=cmd[0], args=cmd[1:], env=dict(os.environ))
    async with Client(
        server,
        mode="2026-07-28",
        read_timeout_seconds=args.timeout,
        elicitation_callback=callback_for(args),
        client_info=types.Implementation(name="mcp-confirm-2026", version="0.1.0"),
    ) as client:
        if args.flavor == "notes":
            await client.call_tool("create_note", {"id": args.entity, "text": "x"})
        delete = "delete_note" if args.flavor == "notes" else "delete_task"
        try:
            result = await client.call_tool(delete, {"id": args.entity})
            emit({"type": "delete", "is_error": bool(result.is_error), "text": text_of(result)})
        except Exception as e:  # a JSON-RPC error from the proxy
            emit({"type": "delete", "is_error": True, "text": str(e)})
        if args.flavor == "notes":
            note = await client.call_tool("get_note", {"id": args.entity})
            emit({"type": "graph", "entities": [] if note.is_error else [args.entity]})
            return
        listed = await client.call_tool("list_tasks", {})
        data = listed.structured_content or json.loads(text_of(listed))
        emit({"type": "graph", "entities": [t["id"] for t in data.get("tasks", [])]})


async def main() -> None:
    p = argparse.ArgumentParser(prog="mcp_confirm")
    p.add_argument("--answer", required=True,
                   choices=["accept", "decline", "cancel", "untick", "slow", "none"])
    p.add_argument("--slow-secs", type=float, default=3.0)
    p.add_argument("--entity", default="Alice")
    p.add_argument("--flavor", choices=["memory", "tasks", "notes"], default="memory",
                   help="memory: server-memory's entities; tasks: the rmcp tasks server "
                        "(delete_task on --entity, then list_tasks); notes (with --modern): "
                        "tests/peers/otel_server.py (create_note, delete_note, get_note)")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--call-timeout", type=float,
                   help="give up on delete_entities after S seconds (the SDK then sends "
                        "notifications/cancelled for it), wait --linger S, then read the graph")
    p.add_argument("--linger", type=float, default=0.0)
    p.add_argument("--no-list", action="store_true",
                   help="call the tools without listing them first")
    p.add_argument("--http")
    p.add_argument("--header", action="append", default=[])
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.add_argument("--modern", action="store_true",
                   help="2026-07-28 (no initialize; MRTR) with the high-level Client, over --http "
                        "or stdio")
    args = p.parse_args()
    cmd = [c for c in args.command if c != "--"] if args.command else []
    if args.modern:
        if not args.http and not cmd:
            print("mcp_confirm: error: no server command", file=sys.stderr)
            sys.exit(2)
        await modern_steps(args, cmd)
        return
    if args.http:
        headers = dict(kv.split("=", 1) for kv in args.header)
        async with create_mcp_http_client(headers=headers) as http:
            async with streamable_http_client(args.http, http_client=http) as streams:
                await session_steps(streams[0], streams[1], args)
        return
    if not cmd:
        print("mcp_confirm: error: no server command", file=sys.stderr)
        sys.exit(2)
    params = StdioServerParameters(command=cmd[0], args=cmd[1:], env=dict(os.environ))
    async with stdio_client(params) as (read, write):
        await session_steps(read, write, args)


if __name__ == "__main__":
    anyio.run(main)
