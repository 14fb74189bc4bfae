#!/usr/bin/env node
// Drive a stdio MCP server with the official TypeScript SDK client, from a script.
//
// Usage:
//   node tests/peers/mcp_drive_ts.mjs [--script FILE] [--client-name NAME] [--timeout SECS]
//       -- COMMAND [ARG ...]
//
// The server is started as COMMAND ARG... with `Client` + `StdioClientTransport` (the SDK's
// own spawn: it inherits this process's whole environment here, and its stderr passes through
// to ours). The script is a JSON list of steps, as for mcp_drive.py:
//
//   {"call": "TOOL", "args": {...}}   tools/call (one request; no hidden tools/list)
//   {"list_tools": true}              tools/list
//
// One JSON line per step on stdout:
//   {"step": 0, "type": "call", "tool": "TOOL", "is_error": false, "text": "..."}
//   {"step": 1, "type": "list_tools", "tools": ["name", ...]}
// then, after `client.close()` (which closes the server's stdin, waits up to 2 s for it to
// exit, then sends SIGTERM, then SIGKILL after 2 s more):
//   {"type": "closed", "ms": <how long close took>, "exit_code": N|null, "signal": "SIGTERM"|null}
//
// Exit status: 0 when every step ran (tool errors are data), 1 on a protocol failure, 2 on
// bad usage.

import { readFileSync } from "node:fs";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { CallToolResultSchema } from "@modelcontextprotocol/sdk/types.js";

const PROG = "mcp_drive_ts";

function fail(msg, code = 1) {
  process.stderr.write(`${PROG}: error: ${msg}\n`);
  process.exit(code);
}

const argv = process.argv.slice(2);
const split = argv.indexOf("--");
if (split < 0 || split === argv.length - 1) {
  fail("missing `-- COMMAND [ARG ...]` (the stdio MCP server to start)", 2);
}
const ours = argv.slice(0, split);
const [command, ...args] = argv.slice(split + 1);
const opts = { script: null, clientName: "mcp-drive-ts", timeout: 30 };
for (let i = 0; i < ours.length; i += 2) {
  const value = ours[i + 1];
  if (value === undefined) fail(`${ours[i]} needs a value`, 2);
  switch (ours[i]) {
    case "--script": opts.script = value; break;
    case "--client-name": opts.clientName = value; break;
    case "--timeout": opts.timeout = Number(value); break;
    default: fail(`unknown option ${ours[i]}`, 2);
  }
}
let steps;
try {
  steps = JSON.parse(opts.script ? readFileSync(opts.script, "utf8") : readFileSync(0, "utf8"));
  if (!Array.isArray(steps)) throw new Error("the script must be a JSON list");
} catch (e) {
  fail(`bad script: ${e.message}`, 2);
}

const emit = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

const transport = new StdioClientTransport({
  command,
  args,
  env: { ...process.env },
  stderr: "inherit",
});
// The transport forgets its child on close: keep our own handle to report how it ended.
let child = null;
const start = transport.start.bind(transport);
transport.start = async () => {
  await start();
  child = transport._process;
};
const client = new Client({ name: opts.clientName, version: "0.1.0" });
const requestOptions = { timeout: opts.timeout * 1000 };

try {
  await client.connect(transport, requestOptions);
  for (const [step, s] of steps.entries()) {
    if (s.call !== undefined) {
      const result = await client.request(
        { method: "tools/call", params: { name: s.call, arguments: s.args ?? {} } },
        CallToolResultSchema,
        requestOptions,
      );
      const text = (result.content ?? [])
        .filter((b) => b.type === "text")
        .map((b) => b.text)
        .join("\n");
      emit({ step, type: "call", tool: s.call, is_error: result.isError === true, text });
    } else if (s.list_tools) {
      const result = await client.listTools(undefined, requestOptions);
      emit({ step, type: "list_tools", tools: result.tools.map((t) => t.name) });
    } else {
      fail(`step ${step}: unknown step ${JSON.stringify(s)}`, 2);
    }
  }
} catch (e) {
  fail(`${e?.message ?? e}`);
}
const closing = Date.now();
await client.close();
const exit = child
  ? await new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) {
        resolve([child.exitCode, child.signalCode]);
      } else {
        child.once("exit", (code, signal) => resolve([code, signal]));
      }
    })
  : [null, null];
emit({ type: "closed", ms: Date.now() - closing, exit_code: exit[0], signal: exit[1] });
