//! Which MCP methods and tools the edge lets through, and cheap checks of
//! `generate_image` arguments so abusive calls die before the upstream.

use std::collections::HashSet;

use serde_json::Value;

use crate::jsonrpc::{code, Envelope, Message};
use crate::reply::{Reject, ToolErrorShape};

/// The first revision where argument errors are tool results (SEP-1303).
const TOOL_ERRORS_SINCE: &str = "2025-11-25";
/// The first revision whose results carry `resultType`.
const RESULT_TYPE_SINCE: &str = "2026-07-28";

/// How a client of `protocol_version` wants argument errors; `None`: as
/// JSON-RPC -32602 (2025-06-18 and older, or no version header).
pub fn tool_error_shape(protocol_version: Option<&str>) -> Option<ToolErrorShape> {
    // Versions are dates (YYYY-MM-DD): they order as strings.
    let version = protocol_version?.trim();
    if version >= RESULT_TYPE_SINCE {
        Some(ToolErrorShape::WithResultType)
    } else if version >= TOOL_ERRORS_SINCE {
        Some(ToolErrorShape::Plain)
    } else {
        None
    }
}

/// Methods the upstream serves, allowed unless the config says otherwise.
pub const DEFAULT_METHODS: [&str; 19] = [
    "initialize",
    "ping",
    "server/discover",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "tasks/get",
    "tasks/list",
    "tasks/result",
    "tasks/cancel",
    "tasks/update",
    "logging/setLevel",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/roots/list_changed",
    "notifications/tasks/status",
];
pub const DEFAULT_TOOLS: [&str; 4] = ["generate_image", "edit_image", "create_upload", "list_models"];
/// Most image references one `edit_image` takes (the upstream's limit too).
pub const MAX_EDIT_IMAGES: usize = 16;
pub const DEFAULT_MAX_PROMPT_CHARS: usize = 4000;
pub const DEFAULT_MAX_IMAGES_PER_CALL: u64 = 4;

/// Compiled method and tool policy.
#[derive(Debug, Clone)]
pub struct CallPolicy {
    pub allowed_methods: HashSet<String>,
    pub allowed_tools: HashSet<String>,
    pub max_prompt_chars: usize,
    pub max_images_per_call: u64,
}

impl Default for CallPolicy {
    fn default() -> Self {
        Self {
            allowed_methods: DEFAULT_METHODS.iter().map(|m| m.to_string()).collect(),
            allowed_tools: DEFAULT_TOOLS.iter().map(|t| t.to_string()).collect(),
            max_prompt_chars: DEFAULT_MAX_PROMPT_CHARS,
            max_images_per_call: DEFAULT_MAX_IMAGES_PER_CALL,
        }
    }
}

/// What a `tools/call` asks for, for limits and quotas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    pub tool: String,
    /// Images it makes (`n`, default 1, for `generate_image` and
    /// `edit_image`; 0 for other tools): what the daily quota counts.
    pub images: u64,
}

impl CallPolicy {
    /// Checks a well-formed message from a client speaking `protocol_version`;
    /// returns the tool call it makes, if any.
    pub fn check(&self, envelope: &Envelope, protocol_version: Option<&str>) -> Result<Option<ToolCall>, Reject> {
        let method = match &envelope.message {
            Message::Request { method, .. } | Message::Notification { method } => method,
            Message::Response { .. } => return Ok(None),
        };
        if !self.allowed_methods.contains(method) {
            // 2026-07-28: an unknown method is 404 with -32601.
            return Err(Reject::new(
                404,
                code::METHOD_NOT_FOUND,
                "method_not_allowed",
                format!("Method not found: {method:?} is not served by this gateway"),
            )
            .with_id(envelope.reply_id()));
        }
        if method != "tools/call" {
            return Ok(None);
        }
        // Argument errors are ordinary JSON-RPC errors (HTTP 200), as the
        // upstream would answer them, so clients treat both alike.
        let invalid = |message: String| {
            Reject::new(200, code::INVALID_PARAMS, "invalid_params", message).with_id(envelope.reply_id())
        };
        let params = envelope.params.as_ref();
        let Some(tool) = params.and_then(|p| p.get("name")).and_then(Value::as_str) else {
            return Err(invalid("tools/call needs params.name (a string)".into()));
        };
        if !self.allowed_tools.contains(tool) {
            return Err(invalid(format!("Unknown tool: {tool:?}")).with_reason("tool_not_allowed"));
        }
        let arguments = params.and_then(|p| p.get("arguments"));
        if arguments.is_some_and(|a| !a.is_object()) {
            return Err(invalid("params.arguments must be an object".into()));
        }
        // Bad argument values: a tool error the model can read and correct
        // (SEP-1303), or -32602 for clients before 2025-11-25.
        let bad_argument = |message: String| match tool_error_shape(protocol_version) {
            Some(shape) => invalid(message).with_reason("invalid_arguments").as_tool_error(shape),
            None => invalid(message),
        };
        let images = match tool {
            "generate_image" => self.check_generate_image(arguments).map_err(bad_argument)?,
            "edit_image" => self.check_edit_image(arguments).map_err(bad_argument)?,
            _ => 0,
        };
        Ok(Some(ToolCall {
            tool: tool.to_string(),
            images,
        }))
    }

    /// An edit is checked like a generation (prompt, `n`) plus the shape of
    /// `images`; the references themselves are the upstream's to resolve.
    fn check_edit_image(&self, arguments: Option<&Value>) -> Result<u64, String> {
        match arguments.and_then(|a| a.get("images")) {
            Some(Value::Array(images))
                if (1..=MAX_EDIT_IMAGES).contains(&images.len()) && images.iter().all(Value::is_string) => {}
            _ => {
                return Err(format!(
                "`images` must list 1 to {MAX_EDIT_IMAGES} image references (strings); the first is the image to edit"
            ))
            }
        }
        self.check_generate_image(arguments)
    }

    fn check_generate_image(&self, arguments: Option<&Value>) -> Result<u64, String> {
        if let Some(prompt) = arguments.and_then(|a| a.get("prompt")).and_then(Value::as_str) {
            let chars = prompt.chars().count();
            if chars > self.max_prompt_chars {
                return Err(format!(
                    "`prompt` is too long: {chars} characters, at most {} allowed",
                    self.max_prompt_chars
                ));
            }
        }
        match arguments.and_then(|a| a.get("n")) {
            None => Ok(1),
            Some(n) => match n.as_u64() {
                Some(n) if (1..=self.max_images_per_call).contains(&n) => Ok(n),
                _ => Err(format!(
                    "`n` must be an integer from 1 to {} (got {n})",
                    self.max_images_per_call
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonrpc::parse_envelope;
    use serde_json::json;

    fn check(body: Value) -> Result<Option<ToolCall>, (u32, i32, String)> {
        let envelope = parse_envelope(body.to_string().as_bytes()).unwrap();
        CallPolicy::default()
            .check(&envelope, None)
            .map_err(|r| (r.status, r.code, r.message))
    }

    fn call(arguments: Value) -> Value {
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "generate_image", "arguments": arguments}})
    }

    fn edit(arguments: Value) -> Value {
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "edit_image", "arguments": arguments}})
    }

    #[test]
    fn edits_are_checked_like_generations_plus_their_references() {
        let refs = |n: usize| Value::Array((0..n).map(|i| json!(format!("upload://{i}"))).collect());
        let cases = [
            (json!({"prompt": "x"}), "`images`"),
            (json!({"prompt": "x", "images": []}), "`images`"),
            (json!({"prompt": "x", "images": refs(17)}), "`images`"),
            (json!({"prompt": "x", "images": [1]}), "`images`"),
            (json!({"prompt": "x", "images": refs(16), "n": 9}), "`n`"),
        ];
        for (arguments, field) in cases {
            let (status, code, message) = check(edit(arguments.clone())).unwrap_err();
            assert_eq!((status, code), (200, -32602), "{arguments}");
            assert!(message.contains(field), "{arguments}: {message}");
        }
        assert_eq!(
            check(edit(json!({"prompt": "x", "images": refs(16)})))
                .unwrap()
                .unwrap()
                .images,
            1
        );
    }

    #[test]
    fn allowed_calls() {
        let ok = [
            (json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}), None),
            (json!({"jsonrpc": "2.0", "method": "notifications/initialized"}), None),
            (json!({"jsonrpc": "2.0", "id": 1, "result": {}}), None),
            (call(json!({"prompt": "x"})), Some(1)),
            (call(json!({"prompt": "x", "n": 4})), Some(4)),
            (call(json!({"prompt": "é".repeat(4000)})), Some(1)),
            (edit(json!({"prompt": "x", "images": ["image://a"], "n": 2})), Some(2)),
            (
                json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "create_upload", "arguments": {"content_type": "image/png"}}}),
                Some(0),
            ),
        ];
        for (body, images) in ok {
            let got = check(body.clone()).unwrap_or_else(|e| panic!("{body}: {e:?}"));
            assert_eq!(got.map(|c| c.images), images, "{body}");
        }
    }

    #[test]
    fn refused_calls() {
        let cases = [
            (
                json!({"jsonrpc": "2.0", "id": 1, "method": "sampling/createMessage"}),
                404,
                -32601,
                "not served",
            ),
            (
                json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {}}),
                200,
                -32602,
                "params.name",
            ),
            (
                json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "rm_rf"}}),
                200,
                -32602,
                "Unknown tool",
            ),
            (
                json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "generate_image", "arguments": [1]}}),
                200,
                -32602,
                "must be an object",
            ),
            (
                call(json!({"prompt": "é".repeat(4001)})),
                200,
                -32602,
                "`prompt` is too long",
            ),
            (call(json!({"prompt": "x", "n": 5})), 200, -32602, "`n`"),
            (call(json!({"prompt": "x", "n": 0})), 200, -32602, "`n`"),
            (call(json!({"prompt": "x", "n": -1})), 200, -32602, "`n`"),
            (call(json!({"prompt": "x", "n": 1e300})), 200, -32602, "`n`"),
            (call(json!({"prompt": "x", "n": "2"})), 200, -32602, "`n`"),
        ];
        for (body, status, code, text) in cases {
            let (got_status, got_code, message) = check(body.clone()).expect_err(&body.to_string());
            assert_eq!((got_status, got_code), (status, code), "{body}");
            assert!(message.contains(text), "{body}: {message}");
        }
    }

    #[test]
    fn argument_errors_follow_the_clients_revision() {
        let body = call(json!({"prompt": "x", "n": 99}));
        let envelope = parse_envelope(body.to_string().as_bytes()).unwrap();
        let policy = CallPolicy::default();
        let cases = [
            (None, None),
            (Some("2025-06-18"), None),
            (Some("2025-11-25"), Some(ToolErrorShape::Plain)),
            (Some("2026-07-28"), Some(ToolErrorShape::WithResultType)),
        ];
        for (version, shape) in cases {
            let reject = policy.check(&envelope, version).unwrap_err();
            assert_eq!(reject.tool_error, shape, "version {version:?}");
            let reply: Value = serde_json::from_str(&reject.body()).unwrap();
            assert_eq!(reply["id"], 3);
            match shape {
                None => assert_eq!(reply["error"]["code"], -32602),
                Some(shape) => {
                    assert_eq!(reply["result"]["isError"], true);
                    assert!(reply["result"]["content"][0]["text"].as_str().unwrap().contains("`n`"));
                    let result_type = reply["result"].get("resultType").cloned();
                    assert_eq!(result_type.is_some(), shape == ToolErrorShape::WithResultType);
                }
            }
        }
        // Unknown tools stay protocol errors in every revision.
        let unknown = json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "rm_rf"}});
        let envelope = parse_envelope(unknown.to_string().as_bytes()).unwrap();
        let reject = policy.check(&envelope, Some("2026-07-28")).unwrap_err();
        assert_eq!((reject.code, reject.tool_error), (-32602, None));
    }
}
