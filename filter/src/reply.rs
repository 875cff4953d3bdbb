//! Local replies the filter sends instead of forwarding a request.

use serde_json::{json, Value};

/// A refused request: HTTP status, JSON-RPC error and extra headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub status: u32,
    pub code: i32,
    pub message: String,
    /// The request's id when it could be read, else `null`.
    pub id: Value,
    /// Extra response headers (`WWW-Authenticate`, `Allow`, ...).
    pub headers: Vec<(&'static str, String)>,
    /// Short label for logs and metrics.
    pub reason: &'static str,
    /// Optional JSON-RPC `error.data`.
    pub data: Option<Value>,
    /// The caller's organisation, when known (for per-org metrics).
    pub org: Option<String>,
    /// The caller's API key id (`jwt` for token callers), for per-key metrics.
    pub key: Option<String>,
    /// Written as a tool result with `isError: true` instead of a JSON-RPC
    /// error (SEP-1303: argument errors the model can correct).
    pub tool_error: Option<ToolErrorShape>,
}

/// How a tool error result is written for the client's protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolErrorShape {
    /// 2025-11-25.
    Plain,
    /// 2026-07-28 and later: every result carries `resultType`.
    WithResultType,
}

impl Reject {
    pub fn new(status: u32, code: i32, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            id: Value::Null,
            headers: Vec::new(),
            reason,
            data: None,
            org: None,
            key: None,
            tool_error: None,
        }
    }

    /// 400 with the given JSON-RPC code.
    pub fn bad_request(code: i32, message: impl Into<String>) -> Self {
        let reason = match code {
            crate::jsonrpc::code::PARSE_ERROR => "parse_error",
            _ => "invalid_request",
        };
        Self::new(400, code, reason, message)
    }

    pub fn with_id(mut self, id: Value) -> Self {
        self.id = id;
        self
    }

    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    pub fn with_org(mut self, org: &str) -> Self {
        self.org = Some(org.to_string());
        self
    }

    pub fn with_key(mut self, key: &str) -> Self {
        self.key = Some(key.to_string());
        self
    }

    pub fn with_reason(mut self, reason: &'static str) -> Self {
        self.reason = reason;
        self
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// Answers with a tool error result of this shape instead of an error.
    pub fn as_tool_error(mut self, shape: ToolErrorShape) -> Self {
        self.tool_error = Some(shape);
        self
    }

    /// The JSON-RPC body: an error, or a tool error result.
    pub fn body(&self) -> String {
        if let Some(shape) = self.tool_error {
            let mut result = json!({"content": [{"type": "text", "text": self.message}], "isError": true});
            if let (ToolErrorShape::WithResultType, Some(result)) = (shape, result.as_object_mut()) {
                result.insert("resultType".into(), "complete".into());
            }
            return json!({"jsonrpc": "2.0", "id": self.id, "result": result}).to_string();
        }
        let mut error = json!({"code": self.code, "message": self.message});
        if let (Some(data), Some(error)) = (&self.data, error.as_object_mut()) {
            error.insert("data".into(), data.clone());
        }
        json!({"jsonrpc": "2.0", "id": self.id, "error": error}).to_string()
    }
}
