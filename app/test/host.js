// A minimal MCP Apps host for the browser tests, built on the SDK's
// AppBridge: an MCP client to the gateway through Envoy (bearer token),
// the app's ui:// page in a sandboxed iframe under the CSP its `_meta.ui.csp`
// asks for, and every app request relayed to the gateway.
import { Client, StreamableHTTPClientTransport } from "@modelcontextprotocol/client";
import { AppBridge, PostMessageTransport, getToolUiResourceUri } from "@modelcontextprotocol/ext-apps/app-bridge";

window.host = { opened: [], downloads: [], sizes: [], bridge: null };

/** The policy a host derives from `_meta.ui.csp` (the MCP Apps spec's default, widened only by it). */
function policyFor(csp = {}) {
  const join = (list) => (list ?? []).join(" ");
  return [
    "default-src 'none'",
    "script-src 'unsafe-inline'",
    "style-src 'unsafe-inline'",
    `img-src data: blob: ${join(csp.resourceDomains)}`,
    `media-src data: ${join(csp.resourceDomains)}`,
    `font-src ${join(csp.resourceDomains)}`,
    `connect-src ${join(csp.connectDomains)}`,
    `frame-src ${join(csp.frameDomains) || "'none'"}`,
    `base-uri ${join(csp.baseUriDomains) || "'none'"}`,
  ].join("; ");
}

window.startHost = async ({ mcpUrl, token, args, theme }) => {
  const client = new Client({ name: "studio-test-host", version: "1.0.0" });
  await client.connect(
    new StreamableHTTPClientTransport(new URL(mcpUrl), { requestInit: { headers: { Authorization: `Bearer ${token}` } } }),
  );
  const { tools } = await client.listTools();
  const tool = tools.find((t) => t.name === "generate_image");
  const uri = getToolUiResourceUri(tool);
  const { contents } = await client.readResource({ uri });
  const page = contents[0];
  const policy = policyFor(page._meta?.ui?.csp);
  const iframe = document.createElement("iframe");
  iframe.id = "app";
  iframe.title = "Image studio";
  iframe.sandbox = "allow-scripts";
  iframe.style.cssText = "width: 900px; height: 700px; border: 1px solid #ccc";
  iframe.srcdoc = page.text.replace("<head>", `<head><meta http-equiv="Content-Security-Policy" content="${policy}">`);
  document.body.append(iframe);

  const bridge = new AppBridge(
    client,
    { name: "studio-test-host", version: "1.0.0" },
    { openLinks: {}, downloadFile: {}, serverTools: {}, serverResources: {}, logging: {}, updateModelContext: { text: {} } },
    { hostContext: { theme, displayMode: "inline", availableDisplayModes: ["inline"] } },
  );
  window.host.bridge = bridge;
  bridge.onopenlink = async ({ url }) => (window.host.opened.push(url), {});
  bridge.ondownloadfile = async (params) => (window.host.downloads.push(params), {});
  bridge.onupdatemodelcontext = async () => ({});
  bridge.onsizechange = (size) => {
    window.host.sizes.push(size);
    if (size.height) iframe.style.height = `${Math.min(size.height + 4, 1400)}px`;
  };
  const ready = new Promise((resolve) => (bridge.oninitialized = resolve));
  await bridge.connect(new PostMessageTransport(iframe.contentWindow, iframe.contentWindow));
  await ready;
  await bridge.sendToolInput({ arguments: args });
  const result = await client.callTool({ name: "generate_image", arguments: args });
  await bridge.sendToolResult(result);
  return {
    uri,
    mimeType: page.mimeType,
    csp: page._meta?.ui?.csp,
    policy,
    toolMeta: tool._meta,
    generated: result.structuredContent,
  };
};

window.setTheme = (theme) => window.host.bridge.sendHostContextChange({ theme });
