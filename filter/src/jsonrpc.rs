//! JSON-RPC 2.0 message shape, as MCP Streamable HTTP requires it: one
//! message per POST body (batches were removed from MCP in 2025-06-18).

use serde_json::{Map, Value};

use crate::reply::Reject;

/// JSON-RPC error codes used at the edge.
pub mod code {
    pub const PARSE_ERROR: i32 = -32700;
    pub const INVALID_REQUEST: i32 = -32600;
    pub const METHOD_NOT_FOUND: i32 = -32601;
    pub const INVALID_PARAMS: i32 = -32602;
    /// Server-defined: authentication or authorization failed.
    pub const UNAUTHORIZED: i32 = -32001;
    /// Server-defined: the request is larger than allowed.
    pub const TOO_LARGE: i32 = -32003;
}

/// The kind of a well-formed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Request {
        id: Value,
        method: String,
    },
    Notification {
        method: String,
    },
    /// A client's answer to a server-initiated request.
    Response {
        id: Value,
    },
}

/// A well-formed message and its `params`.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub message: Message,
    pub params: Option<Value>,
}

impl Envelope {
    /// The request id to echo in an error, `null` for notifications and responses.
    pub fn reply_id(&self) -> Value {
        match &self.message {
            Message::Request { id, .. } => id.clone(),
            _ => Value::Null,
        }
    }
}

/// Checks that `body` is exactly one JSON-RPC 2.0 message.
pub fn parse_envelope(body: &[u8]) -> Result<Envelope, Reject> {
    if let Some(envelope) = fast::request(body) {
        return Ok(envelope);
    }
    parse_tree(body)
}

/// The general parse: the body as a `Value` tree, every rule checked with
/// its own error. `fast::request` must agree with it on what it accepts.
fn parse_tree(body: &[u8]) -> Result<Envelope, Reject> {
    let text = std::str::from_utf8(body).map_err(|e| {
        Reject::bad_request(
            code::PARSE_ERROR,
            format!("Parse error: the body is not valid UTF-8 (at byte {})", e.valid_up_to()),
        )
    })?;
    let value: Value =
        serde_json::from_str(text).map_err(|e| Reject::bad_request(code::PARSE_ERROR, format!("Parse error: {e}")))?;
    let mut object = match value {
        Value::Object(object) => object,
        Value::Array(_) => {
            return Err(Reject::bad_request(
                code::INVALID_REQUEST,
                "Invalid Request: JSON-RPC batches are not supported by MCP; send one message per POST",
            ))
        }
        _ => {
            return Err(Reject::bad_request(
                code::INVALID_REQUEST,
                "Invalid Request: the body must be a JSON-RPC 2.0 object",
            ))
        }
    };
    let message = classify(&object)?;
    Ok(Envelope {
        message,
        params: object.remove("params"),
    })
}

/// Checks that `body` is exactly one JSON-RPC 2.0 message.
pub fn parse_message(body: &[u8]) -> Result<Message, Reject> {
    parse_envelope(body).map(|envelope| envelope.message)
}

fn classify(object: &Map<String, Value>) -> Result<Message, Reject> {
    let id = object.get("id");
    let echo_id = id.filter(|id| is_valid_id(id)).cloned().unwrap_or(Value::Null);
    let invalid = |message: &str| {
        Reject::bad_request(code::INVALID_REQUEST, format!("Invalid Request: {message}")).with_id(echo_id.clone())
    };
    if object.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(invalid("`jsonrpc` must be the string \"2.0\""));
    }
    if let Some(id) = id {
        if !is_valid_id(id) {
            return Err(invalid("`id` must be a string or an integer (null is not allowed)"));
        }
    }
    match object.get("method") {
        Some(Value::String(method)) => {
            if method.is_empty() {
                return Err(invalid("`method` must not be empty"));
            }
            if let Some(params) = object.get("params") {
                if !params.is_object() {
                    return Err(invalid("`params` must be an object"));
                }
            }
            if object.contains_key("result") || object.contains_key("error") {
                return Err(invalid("a request must not carry `result` or `error`"));
            }
            match id {
                Some(id) => Ok(Message::Request {
                    id: id.clone(),
                    method: method.clone(),
                }),
                None => Ok(Message::Notification { method: method.clone() }),
            }
        }
        Some(_) => Err(invalid("`method` must be a string")),
        None => {
            let id = id.ok_or_else(|| {
                invalid("a message needs `method` (request) or `id` with `result`/`error` (response)")
            })?;
            match (object.get("result"), object.get("error")) {
                (Some(_), None) => Ok(Message::Response { id: id.clone() }),
                (None, Some(Value::Object(_))) => Ok(Message::Response { id: id.clone() }),
                _ => Err(invalid(
                    "a response needs exactly one of `result` or `error` (an object)",
                )),
            }
        }
    }
}

/// One pass over a well-formed request or notification without building a
/// tree of the message (only `params`, when present, becomes a `Value`).
/// Anything unusual (another shape, a field of the wrong type, an escaped
/// `jsonrpc`, an error of any kind) returns `None`, and the general parse
/// decides, with its precise error. Duplicate keys keep the last value, as
/// in the general parse.
mod fast {
    use std::borrow::Cow;
    use std::fmt;

    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    use serde_json::Value;

    use super::{is_valid_id, Envelope, Message};

    #[derive(Default)]
    struct Fields<'a> {
        jsonrpc: Option<Cow<'a, str>>,
        id: Option<Value>,
        method: Option<String>,
        params: Option<Value>,
        /// `result` or `error` seen: a response, for the general parse.
        answer: bool,
    }

    struct FieldsVisitor;

    impl<'de> Visitor<'de> for FieldsVisitor {
        type Value = Fields<'de>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON-RPC object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
            let mut fields = Fields::default();
            while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                match key.as_ref() {
                    "jsonrpc" => fields.jsonrpc = Some(map.next_value()?),
                    "id" => fields.id = Some(map.next_value()?),
                    "method" => fields.method = Some(map.next_value()?),
                    "params" => fields.params = Some(map.next_value()?),
                    "result" | "error" => {
                        fields.answer = true;
                        map.next_value::<IgnoredAny>()?;
                    }
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(fields)
        }
    }

    pub(super) fn request(body: &[u8]) -> Option<Envelope> {
        let text = std::str::from_utf8(body).ok()?;
        let mut de = serde_json::Deserializer::from_str(text);
        let fields = (&mut de).deserialize_map(FieldsVisitor).ok()?;
        de.end().ok()?;
        // A field of another type failed the pass above; these are the rest.
        if fields.answer || fields.jsonrpc.as_deref() != Some("2.0") {
            return None;
        }
        let method = fields.method.filter(|m| !m.is_empty())?;
        if fields.params.as_ref().is_some_and(|p| !p.is_object()) {
            return None;
        }
        let message = match fields.id {
            Some(id) if is_valid_id(&id) => Message::Request { id, method },
            Some(_) => return None,
            None => Message::Notification { method },
        };
        Some(Envelope {
            message,
            params: fields.params,
        })
    }
}

fn is_valid_id(id: &Value) -> bool {
    match id {
        Value::String(_) => true,
        Value::Number(n) => n.is_i64() || n.is_u64(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accepted_messages() {
        let cases: &[(&str, &[u8], Message)] = &[
            (
                "request with integer id",
                br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
                Message::Request {
                    id: json!(1),
                    method: "tools/list".into(),
                },
            ),
            (
                "request with string id and params",
                br#"{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"x"}}"#,
                Message::Request {
                    id: json!("a"),
                    method: "tools/call".into(),
                },
            ),
            (
                "notification",
                br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
                Message::Notification {
                    method: "notifications/initialized".into(),
                },
            ),
            (
                "response to server request",
                br#"{"jsonrpc":"2.0","id":5,"result":{}}"#,
                Message::Response { id: json!(5) },
            ),
            (
                "error response",
                br#"{"jsonrpc":"2.0","id":5,"error":{"code":-1,"message":"no"}}"#,
                Message::Response { id: json!(5) },
            ),
            (
                "string with NUL escape",
                br#"{"jsonrpc":"2.0","id":"\u0000","method":"ping"}"#,
                Message::Request {
                    id: json!("\u{0}"),
                    method: "ping".into(),
                },
            ),
        ];
        for (name, body, expected) in cases {
            assert_eq!(parse_message(body).as_ref(), Ok(expected), "case: {name}");
        }
    }

    #[test]
    fn rejected_messages() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let cases: Vec<(&str, Vec<u8>, i32, Value)> = vec![
            ("empty body", b"".to_vec(), code::PARSE_ERROR, Value::Null),
            ("not json", b"hello".to_vec(), code::PARSE_ERROR, Value::Null),
            (
                "truncated",
                br#"{"jsonrpc":"2.0","#.to_vec(),
                code::PARSE_ERROR,
                Value::Null,
            ),
            (
                "invalid utf-8",
                b"{\"jsonrpc\":\"2.0\",\"method\":\"\xff\"}".to_vec(),
                code::PARSE_ERROR,
                Value::Null,
            ),
            ("deep nesting", deep.into_bytes(), code::PARSE_ERROR, Value::Null),
            (
                "batch",
                br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#.to_vec(),
                code::INVALID_REQUEST,
                Value::Null,
            ),
            ("scalar", b"42".to_vec(), code::INVALID_REQUEST, Value::Null),
            (
                "wrong version",
                br#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#.to_vec(),
                code::INVALID_REQUEST,
                json!(1),
            ),
            (
                "version as number",
                br#"{"jsonrpc":2.0,"id":1,"method":"ping"}"#.to_vec(),
                code::INVALID_REQUEST,
                json!(1),
            ),
            (
                "null id",
                br#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#.to_vec(),
                code::INVALID_REQUEST,
                Value::Null,
            ),
            (
                "float id",
                br#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#.to_vec(),
                code::INVALID_REQUEST,
                Value::Null,
            ),
            (
                "huge number id",
                br#"{"jsonrpc":"2.0","id":1e400,"method":"ping"}"#.to_vec(),
                code::PARSE_ERROR,
                Value::Null,
            ),
            (
                "object id",
                br#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#.to_vec(),
                code::INVALID_REQUEST,
                Value::Null,
            ),
            (
                "method not string",
                br#"{"jsonrpc":"2.0","id":1,"method":7}"#.to_vec(),
                code::INVALID_REQUEST,
                json!(1),
            ),
            (
                "empty method",
                br#"{"jsonrpc":"2.0","id":1,"method":""}"#.to_vec(),
                code::INVALID_REQUEST,
                json!(1),
            ),
            (
                "params array",
                br#"{"jsonrpc":"2.0","id":1,"method":"x","params":[1]}"#.to_vec(),
                code::INVALID_REQUEST,
                json!(1),
            ),
            (
                "no method no id",
                br#"{"jsonrpc":"2.0"}"#.to_vec(),
                code::INVALID_REQUEST,
                Value::Null,
            ),
            (
                "response with both",
                br#"{"jsonrpc":"2.0","id":1,"result":{},"error":{}}"#.to_vec(),
                code::INVALID_REQUEST,
                json!(1),
            ),
            (
                "response with neither",
                br#"{"jsonrpc":"2.0","id":1}"#.to_vec(),
                code::INVALID_REQUEST,
                json!(1),
            ),
        ];
        for (name, body, code, id) in cases {
            let reject = parse_message(&body).expect_err(name);
            assert_eq!(reject.status, 400, "case: {name}");
            assert_eq!(reject.code, code, "case: {name}: {}", reject.message);
            assert_eq!(reject.id, id, "case: {name}");
        }
    }

    /// The fast path accepts only what the general parse accepts, with the
    /// same result; everything else falls through to the general parse.
    #[test]
    fn fast_path_agrees_with_the_general_parse() {
        let bodies: &[&[u8]] = &[
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
            br#"{"method":"tools/call","params":{"name":"x","arguments":{"n":2}},"id":"a","jsonrpc":"2.0"}"#,
            br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            br#" {"jsonrpc":"2.0","id":-7,"method":"ping","extra":[1,{"a":null}]} "#,
            br#"{"jsonrpc":"2.0","id":1,"method":"ping","id":2}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"a","method":"b"}"#,
            br#"{"jsonrpc":"2.0","id":1,"\u006dethod":"ping"}"#,
            br#"{"jsonrpc":"2\u002e0","id":1,"method":"ping"}"#,
            br#"{"jsonrpc":"1.0","jsonrpc":"2.0","id":1,"method":"ping"}"#,
            br#"{"jsonrpc":"2.0","jsonrpc":"1.0","id":1,"method":"ping"}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"ping","params":[]}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"ping","params":null}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"ping","result":{}}"#,
            br#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#,
            br#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#,
            br#"{"jsonrpc":"2.0","id":1e400,"method":"ping"}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":""}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":7}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"ping"} x"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"ping""#,
            br#"{"jsonrpc":"2.0","id":"\ud800","method":"ping"}"#,
            br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
            br#"{"jsonrpc":"2.0","id":18446744073709551615,"method":"ping"}"#,
        ];
        for body in bodies {
            let general = parse_tree(body);
            if let Some(fast) = fast::request(body) {
                assert_eq!(Ok(&fast), general.as_ref(), "{}", String::from_utf8_lossy(body));
            }
            assert_eq!(parse_envelope(body), general, "{}", String::from_utf8_lossy(body));
        }
        assert!(fast::request(bodies[0]).is_some() && fast::request(bodies[1]).is_some());
    }

    #[test]
    fn duplicate_keys_take_the_last_value() {
        // serde_json keeps the last duplicate, as the upstream's parser does, so
        // the edge and the upstream agree on what a message says.
        let body = br#"{"jsonrpc":"1.0","jsonrpc":"2.0","id":1,"method":"ping"}"#;
        assert!(parse_message(body).is_ok());
        let body = br#"{"jsonrpc":"2.0","jsonrpc":"1.0","id":1,"method":"ping"}"#;
        assert!(parse_message(body).is_err());
    }
}
