#!/usr/bin/env node
// The official TypeScript SDK client with an elicitation handler, for the confirmation gate's
// tests: against @modelcontextprotocol/server-memory (behind the proxy) it creates the entity
// Alice, calls delete_entities on it, then reads the graph.
//
// Usage: node tests/peers/mcp_confirm_ts.mjs --answer accept|decline -- COMMAND [ARG ...]
//
// One JSON line per event on stdout, as mcp_confirm.py prints them:
//   {"type": "elicitation", "message": "...", "schema": {...}}
//   {"type": "delete", "is_error": bool, "text": "..."}
//   {"type": "graph", "entities": ["Alice", ...]}

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { ElicitRequestSchema } from "@modelcontextprotocol/sdk/types.js";

const argv = process.argv.slice(2);
const split = argv.indexOf("--");
const answerAt = argv.indexOf("--answer");
if (split < 0 || answerAt < 0) {
  process.stderr.write("usage: mcp_confirm_ts.mjs --answer accept|decline -- COMMAND [ARG ...]\n");
  process.exit(2);
}
const answer = argv[answerAt + 1];
const [command, ...args] = argv.slice(split + 1);
const emit = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const text = (r) => (r.content || []).filter((c) => c.type === "text").map((c) => c.text).join("\n");

const client = new Client(
  { name: "mcp-confirm-ts", version: "0.1.0" },
  { capabilities: { elicitation: {} } },
);
client.setRequestHandler(ElicitRequestSchema, async (request) => {
  emit({ type: "elicitation", message: request.params.message, schema: request.params.requestedSchema });
  return answer === "accept"
    ? { action: "accept", content: { confirm: true } }
    : { action: "decline" };
});
await client.connect(new StdioClientTransport({ command, args, env: process.env }));
await client.callTool({
  name: "create_entities",
  arguments: { entities: [{ name: "Alice", entityType: "person", observations: ["x"] }] },
});
const deleted = await client.callTool({ name: "delete_entities", arguments: { entityNames: ["Alice"] } });
emit({ type: "delete", is_error: deleted.isError === true, text: text(deleted) });
const graph = await client.callTool({ name: "read_graph", arguments: {} });
const data = graph.structuredContent || JSON.parse(text(graph));
emit({ type: "graph", entities: (data.entities || []).map((e) => e.name) });
await client.close();
