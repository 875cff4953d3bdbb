// Drives the gateway with the official MCP TypeScript SDK.
// Usage: node ts_sdk_client.mjs URL TOKEN
// Prints one JSON object: the negotiated protocol, the tools, and a tool result.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url, token] = process.argv.slice(2);
const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { Authorization: `Bearer ${token}` } },
});
const client = new Client({ name: "gateway-tests-ts", version: "0.1.0" });
await client.connect(transport);
const tools = await client.listTools();
const result = await client.callTool({ name: "generate_image", arguments: { prompt: "a paper crane", n: 2 } });
let invalid;
try {
  const refused = await client.callTool({ name: "generate_image", arguments: { prompt: "x", size: "ten by ten" } });
  const text = (refused.content ?? []).map((c) => c.text ?? "").join(" ");
  invalid = { code: null, tool_error: refused.isError === true, message: text };
} catch (error) {
  invalid = { code: error.code ?? null, tool_error: false, message: String(error.message) };
}
console.log(JSON.stringify({
  protocol_version: transport.protocolVersion ?? null,
  tools: tools.tools.map((t) => t.name),
  is_error: result.isError ?? false,
  structured: result.structuredContent ?? null,
  invalid_arguments: invalid,
}));
await client.close();
