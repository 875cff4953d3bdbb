//! The official Rust MCP client (rmcp), pointed at the gateway through Envoy.

use rmcp::model::{CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, Implementation};
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{RoleClient, ServiceError, ServiceExt};
use serde_json::{json, Value};

use crate::stack::http_client;

pub type McpClient = RunningService<RoleClient, ClientConfig>;

/// Connects and initializes with a bearer token.
pub async fn connect(mcp_url: &str, token: &str) -> anyhow::Result<McpClient> {
    let config = StreamableHttpClientTransportConfig::with_uri(mcp_url.to_string()).auth_header(token.to_string());
    let transport = StreamableHttpClientTransport::with_client(http_client(), config);
    let info = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("gateway-tests", "0.1.0"),
    );
    Ok(info.serve(transport).await?)
}

/// Connects declaring the Tasks extension (SEP-2663): long calls may come
/// back as tasks to poll.
pub async fn connect_with_tasks(mcp_url: &str, token: &str) -> anyhow::Result<McpClient> {
    let config = StreamableHttpClientTransportConfig::with_uri(mcp_url.to_string()).auth_header(token.to_string());
    let transport = StreamableHttpClientTransport::with_client(http_client(), config);
    // Stateless 2026-07-28 (`server/discover`): capabilities travel in every
    // request's `_meta`, so whichever replica gets `tools/call` knows the
    // client handles tasks.
    let info = ClientConfig::new(
        ClientCapabilities::builder().enable_tasks().build(),
        Implementation::new("gateway-tests", "0.1.0"),
    );
    let lifecycle = rmcp::service::ClientLifecycleMode::Discover {
        preferred_versions: vec![rmcp::model::ProtocolVersion::V_2026_07_28],
    };
    Ok(rmcp::service::ClientServiceExt::serve_with_lifecycle(info, transport, lifecycle).await?)
}

/// Calls `generate_image` with JSON arguments.
pub async fn generate(client: &McpClient, arguments: Value) -> Result<CallToolResult, ServiceError> {
    let arguments = arguments.as_object().cloned().unwrap_or_default();
    client
        .call_tool(CallToolRequestParams::new("generate_image").with_arguments(arguments))
        .await
}

/// The text blocks of a tool result, joined.
pub fn text_of(result: &CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Calls `list_models` and returns its structured content.
pub async fn list_models(client: &McpClient) -> Result<Value, ServiceError> {
    let result = client.call_tool(CallToolRequestParams::new("list_models")).await?;
    Ok(result.structured_content.unwrap_or(Value::Null))
}

/// One `tools/call` as a plain HTTP POST through the gateway in protocol
/// revision `version` (of the initialize era); returns the JSON-RPC reply.
pub async fn call_http(mcp_url: &str, token: &str, version: &str, tool: &str, arguments: Value) -> Value {
    rpc(
        mcp_url,
        token,
        version,
        "tools/call",
        json!({"name": tool, "arguments": arguments}),
    )
    .await
}

/// One JSON-RPC request over plain HTTP (bearer token, `MCP-Protocol-Version`): the reply's JSON.
pub async fn rpc(mcp_url: &str, token: &str, version: &str, method: &str, params: Value) -> Value {
    crate::stack::http_client()
        .post(mcp_url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", version)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The structured content of a successful tool result (asserting it is one).
pub fn structured(reply: &Value) -> &Value {
    assert_eq!(reply["result"]["isError"], false, "{reply}");
    &reply["result"]["structuredContent"]
}

/// The text of a tool error (asserting it is one).
pub fn tool_error(reply: &Value) -> String {
    assert_eq!(reply["result"]["isError"], true, "{reply}");
    reply["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}
