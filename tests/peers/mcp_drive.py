#!/usr/bin/env python3
"""Drive a stdio MCP server with the official MCP Python SDK, from a script.

Usage:
    .venv/bin/python tests/peers/mcp_drive.py [--script FILE|-] [--client-name NAME]
        [--client-version V] [--timeout SECS] [--env KEY=VALUE ...] [--cwd DIR]
        [--sdk-call-tool] -- COMMAND [ARG ...]
    .venv/bin/python tests/peers/mcp_drive.py --http URL [--header K=V ...] [options]

With --http URL the driver speaks Streamable HTTP to URL instead (the SDK's
`streamable_http_client`, with any --header added to every request) and no
COMMAND is started.

The server is started as COMMAND ARG... (everything after `--`) and spoken to over
stdio with `ClientSession` / `stdio_client` / `StdioServerParameters`. The child
inherits this process's whole environment (plus any --env), unlike the SDK's
default, which passes only a few "safe" variables.

The script (a JSON file, or stdin when --script is absent or `-`) is a JSON list
of steps, run in order after the initialize handshake:

    {"call": "TOOL", "args": {...}, "meta": {...}}   tools/call; args and meta optional
    {"list_tools": true}                             tools/list (all pages)
    {"ping": true}                                   ping

Wire traffic is exactly: initialize, notifications/initialized, then one request
per step. (`ClientSession.call_tool` would add a hidden tools/list before the first
call of a tool it has not listed, to validate structuredContent against the
outputSchema; the default here sends the CallToolRequest through
`ClientSession.send_request` instead. --sdk-call-tool uses `call_tool` itself.)
The handshake is the legacy `initialize` (protocol 2025-11-25), which the npm
servers speak. `meta` goes out verbatim as `params._meta` (e.g. a `traceparent`);
the SDK adds a traceparent of its own only when an OpenTelemetry span is active
in this process, which it never is here.

One JSON object is printed on stdout per step, in order, one per line:

    {"step": 0, "type": "call", "tool": "TOOL", "is_error": false,
     "structured_content": {...} | null, "text": "all text blocks joined by \\n",
     "content": [<content blocks as on the wire>]}
    {"step": 0, "type": "call", "tool": "TOOL",
     "jsonrpc_error": {"code": -32602, "message": "...", "data": ...}}
         (the server answered the tools/call with a JSON-RPC error response)
    {"step": 1, "type": "list_tools", "tools": [{"name": ..., "title": ...,
     "description": ..., "annotations": {"readOnlyHint": true, ...} | null,
     "input_schema": {...}, "output_schema": {...} | null}]}
    {"step": 2, "type": "ping", "ok": true}

Exit status: 0 when every step ran (tool errors and JSON-RPC error responses are
reported in the step's line, they are not failures); 2 on bad usage or a bad
script; 1 on a protocol failure (server cannot be started, handshake fails, the
connection drops, a request times out, a malformed message) with a message on
stderr prefixed `mcp_drive: error:`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, NoReturn

import anyio

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT
import mcp.types as types

PROG = "mcp_drive"


def fail(msg: str, code: int = 1) -> NoReturn:
    print(f"{PROG}: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(code)


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, sort_keys=False) + "\n")
    sys.stdout.flush()


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" not in argv and any(a == "--http" or a.startswith("--http=") for a in argv):
        argv = [*argv, "--", "(http)"]
    if "--" not in argv:
        fail("missing `-- COMMAND [ARG ...]` (the stdio MCP server to start)", 2)
    split = argv.index("--")
    ours, server_cmd = argv[:split], argv[split + 1 :]
    if not server_cmd:
        fail("no server command after `--`", 2)
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Run a scripted MCP session against a stdio server (see module docstring).",
        usage="%(prog)s [options] -- COMMAND [ARG ...]",
    )
    p.add_argument("--script", default="-", help="JSON script file; '-' (default) reads stdin")
    p.add_argument("--client-name", default="mcp-drive", help="clientInfo.name sent in initialize")
    p.add_argument("--client-version", default="0.1.0", help="clientInfo.version sent in initialize")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, seconds (default 30)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra env for the server")
    p.add_argument("--cwd", default=None, help="working directory for the server")
    p.add_argument(
        "--sdk-call-tool",
        action="store_true",
        help="call tools with ClientSession.call_tool (output-schema validation, plus an implicit "
        "tools/list before the first call of an unlisted tool) instead of one bare tools/call per step",
    )
    p.add_argument("--http", default=None, metavar="URL", help="speak Streamable HTTP to URL instead of stdio")
    p.add_argument("--header", action="append", default=[], metavar="K=V", help="HTTP header (with --http)")
    return p.parse_args(ours), server_cmd


def load_script(path: str) -> list[dict[str, Any]]:
    try:
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    except OSError as e:
        fail(f"cannot read script {path!r}: {e}", 2)
    try:
        steps = json.loads(text)
    except json.JSONDecodeError as e:
        fail(f"script is not valid JSON: {e}", 2)
    if not isinstance(steps, list):
        fail("script must be a JSON list of steps", 2)
    for i, step in enumerate(steps):
        if not isinstance(step, dict):
            fail(f"step {i} is not a JSON object: {step!r}", 2)
        if "call" in step:
            if not isinstance(step["call"], str):
                fail(f"step {i}: 'call' must be a tool name string", 2)
            for key in ("args", "meta"):
                if step.get(key) is not None and not isinstance(step[key], dict):
                    fail(f"step {i}: {key!r} must be a JSON object", 2)
        elif step.get("list_tools") is True or step.get("ping") is True:
            pass
        else:
            fail(f'step {i}: expected {{"call": ...}}, {{"list_tools": true}} or {{"ping": true}}, got {step!r}', 2)
    return steps


def dump(model: Any) -> Any:
    """A pydantic model as it appears on the wire (camelCase aliases, no nulls)."""
    return model.model_dump(by_alias=True, mode="json", exclude_none=True)


def call_result_line(i: int, tool: str, result: types.CallToolResult) -> dict[str, Any]:
    texts = [b.text for b in result.content if isinstance(b, types.TextContent)]
    return {
        "step": i,
        "type": "call",
        "tool": tool,
        "is_error": bool(result.is_error),
        "structured_content": result.structured_content,
        "text": "\n".join(texts),
        "content": [dump(b) for b in result.content],
    }


def tool_line(tool: types.Tool) -> dict[str, Any]:
    return {
        "name": tool.name,
        "title": tool.title,
        "description": tool.description,
        "annotations": dump(tool.annotations) if tool.annotations is not None else None,
        "input_schema": tool.input_schema,
        "output_schema": tool.output_schema,
    }


def is_transport_failure(e: MCPError) -> bool:
    """The SDK reports a dropped connection / a timeout as MCPError too; those are failures,
    not JSON-RPC error responses from the server."""
    return (e.code == CONNECTION_CLOSED and e.message == "Connection closed") or (
        e.code == REQUEST_TIMEOUT and e.message.startswith("Request ") and e.message.endswith(" timed out")
    )


async def call_tool(
    session: ClientSession, tool: str, arguments: dict[str, Any], meta: dict[str, Any] | None, args: argparse.Namespace
) -> types.CallToolResult:
    if args.sdk_call_tool:
        # The SDK's convenience method: validates structuredContent against the tool's
        # outputSchema, and sends an implicit tools/list before the first call of a tool
        # it has not seen listed yet.
        return await session.call_tool(tool, arguments, meta=meta)
    # Default: exactly one tools/call on the wire per step, no hidden tools/list.
    request = types.CallToolRequest(
        params=types.CallToolRequestParams(name=tool, arguments=arguments, _meta=meta),
    )
    return await session.send_request(request, types.CallToolResult)


async def run(args: argparse.Namespace, server_cmd: list[str], steps: list[dict[str, Any]]) -> None:
    env = dict(os.environ)
    for kv in args.env:
        if "=" not in kv:
            fail(f"--env expects KEY=VALUE, got {kv!r}", 2)
        k, v = kv.split("=", 1)
        env[k] = v
    params = StdioServerParameters(command=server_cmd[0], args=server_cmd[1:], env=env, cwd=args.cwd)
    client_info = types.Implementation(name=args.client_name, version=args.client_version)

    if args.http:
        headers = {}
        for kv in args.header:
            if "=" not in kv:
                fail(f"--header expects K=V, got {kv!r}", 2)
            k, v = kv.split("=", 1)
            headers[k] = v
        async with create_mcp_http_client(headers=headers) as http:
            async with streamable_http_client(args.http, http_client=http) as streams:
                await run_session(streams[0], streams[1], args, steps, client_info)
        return
    async with stdio_client(params) as (read, write):
        await run_session(read, write, args, steps, client_info)


async def run_session(read: Any, write: Any, args: argparse.Namespace, steps: list[dict[str, Any]], client_info: Any) -> None:
    async with ClientSession(read, write, read_timeout_seconds=args.timeout, client_info=client_info) as session:
        try:
            init = await session.initialize()
        except MCPError as e:
            if is_transport_failure(e):
                raise
            fail(f"initialize was rejected: JSON-RPC error {e.code}: {e.message}")
        print(
            f"{PROG}: connected to {init.server_info.name} {init.server_info.version} "
            f"(protocol {init.protocol_version})",
            file=sys.stderr,
            flush=True,
        )
        for i, step in enumerate(steps):
            if "call" in step:
                tool = step["call"]
                try:
                    result = await call_tool(session, tool, step.get("args") or {}, step.get("meta"), args)
                except MCPError as e:
                    if is_transport_failure(e):
                        raise
                    emit(
                        {
                            "step": i,
                            "type": "call",
                            "tool": tool,
                            "jsonrpc_error": {"code": e.code, "message": e.message, "data": e.data},
                        }
                    )
                    continue
                emit(call_result_line(i, tool, result))
            elif step.get("list_tools"):
                tools: list[dict[str, Any]] = []
                cursor = None
                while True:
                    page = await session.list_tools(
                        params=types.PaginatedRequestParams(cursor=cursor) if cursor else None
                    )
                    tools.extend(tool_line(t) for t in page.tools)
                    cursor = page.next_cursor
                    if not cursor:
                        break
                emit({"step": i, "type": "list_tools", "tools": tools})
            else:
                await session.send_ping()
                emit({"step": i, "type": "ping", "ok": True})


def describe(exc: BaseException) -> str:
    """Flatten (possibly nested) exception groups into one readable line."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(e) for e in exc.exceptions)
    if isinstance(exc, MCPError):
        return f"JSON-RPC error {exc.code}: {exc.message}"
    if isinstance(exc, TimeoutError):
        return "timed out waiting for the server (see --timeout)"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def find_system_exit(exc: BaseException) -> SystemExit | None:
    if isinstance(exc, SystemExit):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            found = find_system_exit(sub)
            if found is not None:
                return found
    return None


def main() -> None:
    args, server_cmd = parse_args(sys.argv[1:])
    steps = load_script(args.script)
    try:
        anyio.run(run, args, server_cmd, steps)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except BaseException as e:  # noqa: BLE001 - any escape here is a protocol/transport failure
        # fail() inside the task group surfaces as SystemExit wrapped in a group.
        exit_exc = find_system_exit(e)
        if exit_exc is not None:
            raise exit_exc from None
        fail(f"protocol failure talking to {' '.join(server_cmd)!r}: {describe(e)}")
    sys.exit(0)


if __name__ == "__main__":
    main()
