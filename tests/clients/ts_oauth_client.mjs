// Signs in to the gateway with the official MCP TypeScript SDK's OAuth
// support (an OAuthClientProvider on the Streamable HTTP transport), with no
// client id and no token: the SDK follows the 401, registers, and sends the
// person to sign in. The person is played by a headless form filler (the
// same rules as python_oauth_client.py).
// Usage: node ts_oauth_client.mjs MCP_URL LOGIN ORG [STEP_UP_TOOL]
// Prints one JSON object: tools, the generation's result, sign-ins, refresh,
// and (with STEP_UP_TOOL) the step-up after a 403 insufficient_scope.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { UnauthorizedError } from "@modelcontextprotocol/sdk/client/auth.js";

const [url, login, org, stepUpTool] = process.argv.slice(2);
const REDIRECT = "http://127.0.0.1:33419/callback";

class MemoryProvider {
  constructor() { this.authUrl = null; }
  get redirectUrl() { return REDIRECT; }
  get clientMetadata() {
    return {
      client_name: "gateway sign-in test (TypeScript SDK)",
      redirect_uris: [REDIRECT],
      grant_types: ["authorization_code", "refresh_token"],
      response_types: ["code"],
      token_endpoint_auth_method: "none",
    };
  }
  clientInformation() { return this.client; }
  saveClientInformation(client) { this.client = client; }
  tokens() { return this.saved; }
  saveTokens(tokens) { this.saved = tokens; }
  redirectToAuthorization(authUrl) { this.authUrl = authUrl; }
  saveCodeVerifier(verifier) { this.verifier = verifier; }
  codeVerifier() { return this.verifier; }
}

const pages = [];
let signIns = 0;

function firstForm(html) {
  const form = html.match(/<form[^>]*>([\s\S]*?)<\/form>/i);
  if (!form) return null;
  const attr = (tag, name) => (tag.match(new RegExp(`${name}="([^"]*)"`, "i")) ?? [])[1];
  const open = form[0].match(/<form[^>]*>/i)[0];
  const fields = {};
  for (const input of form[1].match(/<input[^>]*>/gi) ?? []) {
    const name = attr(input, "name");
    if (name) fields[name] = (attr(input, "value") ?? "").replaceAll("&quot;", "\"").replaceAll("&amp;", "&");
  }
  const button = (form[1].match(/<button[^>]*>/gi) ?? [])[0];
  if (button && attr(button, "name")) fields[attr(button, "name")] = attr(button, "value") ?? "";
  return { action: attr(open, "action") ?? "", method: (attr(open, "method") ?? "get").toUpperCase(), fields };
}

async function person(authUrl) {
  signIns += 1;
  let cookies = {};
  let target = authUrl.toString();
  let method = "GET";
  let body;
  for (let step = 0; step < 30; step += 1) {
    const headers = { cookie: Object.entries(cookies).map(([k, v]) => `${k}=${v}`).join("; ") };
    if (body) headers["content-type"] = "application/x-www-form-urlencoded";
    const response = await fetch(target, { method, body, headers, redirect: "manual" });
    pages.push(`${method} ${new URL(target).pathname} -> ${response.status}`);
    for (const line of response.headers.getSetCookie()) {
      const [pair] = line.split(";");
      const at = pair.indexOf("=");
      cookies[pair.slice(0, at).trim()] = pair.slice(at + 1);
    }
    if (response.status >= 300 && response.status < 400) {
      target = new URL(response.headers.get("location"), target).toString();
      method = "GET";
      body = undefined;
      if (target.startsWith(REDIRECT)) {
        const query = new URL(target).searchParams;
        if (query.get("error")) throw new Error(`authorization refused: ${query}`);
        return query.get("code");
      }
      continue;
    }
    const html = await response.text();
    const form = firstForm(html);
    if (response.status !== 200 || !form) throw new Error(`stuck at ${target}: ${response.status} ${html.slice(0, 300)}`);
    for (const name of ["login", "user"]) if (name in form.fields) form.fields[name] = login;
    if ("org" in form.fields) form.fields.org = org;
    if ("password" in form.fields) form.fields.password = "any";
    target = new URL(form.action || target, target).toString();
    method = form.method;
    body = new URLSearchParams(form.fields).toString();
  }
  throw new Error(`too many steps: ${pages}`);
}

const provider = new MemoryProvider();
const client = new Client({ name: "gateway-tests-ts-oauth", version: "0.1.0" });
let transport = new StreamableHTTPClientTransport(new URL(url), { authProvider: provider });
try {
  await client.connect(transport);
} catch (error) {
  if (!(error instanceof UnauthorizedError)) throw error;
  const code = await person(provider.authUrl);
  await transport.finishAuth(code);
  transport = new StreamableHTTPClientTransport(new URL(url), { authProvider: provider });
  await client.connect(transport);
}
const tools = await client.listTools();
const result = await client.callTool({ name: "generate_image", arguments: { prompt: "a paper crane" } });
const report = {
  tools: tools.tools.map((t) => t.name),
  generated: result.isError !== true,
  sign_ins_before_refresh: signIns,
  client_id: provider.client?.client_id ?? null,
  scope: provider.saved?.scope ?? null,
};
// The access token goes bad: the SDK must refresh it on the 401, no person involved.
const before = provider.saved.access_token;
provider.saved = { ...provider.saved, access_token: "expired" };
const again = await client.listTools();
report.after_refresh_tools = again.tools.length;
report.refreshed = provider.saved.access_token !== "expired" && provider.saved.access_token !== before;
report.sign_ins_after_refresh = signIns;
if (stepUpTool) {
  // The SDK answers the 403 by asking for the scope the challenge names; the
  // person signs in again, and the call is retried.
  const call = () => client.callTool({ name: stepUpTool, arguments: { content_type: "image/png" } });
  let stepped;
  try {
    stepped = await call();
  } catch (error) {
    if (!(error instanceof UnauthorizedError)) throw error;
    await transport.finishAuth(await person(provider.authUrl));
    stepped = await call();
  }
  report.step_up_ok = stepped.isError !== true;
  report.sign_ins_after_step_up = signIns;
  report.scope_after_step_up = provider.saved?.scope ?? null;
}
report.pages = pages;
console.log(JSON.stringify(report));
await client.close();
