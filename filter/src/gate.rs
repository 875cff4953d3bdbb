//! The filter's per-request decisions, independent of the proxy-wasm host:
//! the glue in `lib.rs` feeds it headers and body and carries out the verdict.

use crate::config::FilterConfig;
use crate::jsonrpc::{self, code, Message};
use crate::jwt::{AuthError, Identity};
use crate::reply::Reject;

/// Identity headers the upstream trusts; any client-supplied copy is removed.
pub const IDENTITY_HEADERS: [&str; 4] = ["x-mcp-user", "x-mcp-org", "x-mcp-key-id", "x-mcp-scopes"];

/// What the filter needs from the request head.
#[derive(Debug, Default)]
pub struct RequestHead<'a> {
    pub method: &'a str,
    /// `:path`, query included.
    pub path: &'a str,
    pub content_length: Option<&'a str>,
    pub authorization: Option<&'a str>,
    /// True when the request has no body.
    pub end_of_stream: bool,
}

/// The decision taken on the request head.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadVerdict {
    /// Forward now.
    Forward(Identity),
    /// Hold the request until its body has been checked.
    InspectBody(Identity),
    Reject(Reject),
}

/// Decides on a request from its head, at time `now` (Unix seconds).
pub fn check_head(config: &FilterConfig, head: &RequestHead<'_>, now: u64) -> HeadVerdict {
    let path = head.path.split_once('?').map_or(head.path, |(path, _)| path);
    let is_mcp = path == config.mcp_path;
    if is_mcp && !matches!(head.method, "POST" | "GET" | "DELETE") {
        return HeadVerdict::Reject(
            Reject::new(
                405,
                code::INVALID_REQUEST,
                "method_not_allowed",
                format!(
                    "HTTP method {} is not allowed on the MCP endpoint; use POST",
                    head.method
                ),
            )
            .with_header("allow", "GET, POST, DELETE"),
        );
    }
    if let Some(length) = head.content_length {
        match length.trim().parse::<u64>() {
            Ok(length) if length > config.max_body_bytes as u64 => {
                return HeadVerdict::Reject(too_large(config));
            }
            Ok(_) => {}
            Err(_) => {
                return HeadVerdict::Reject(Reject::bad_request(
                    code::INVALID_REQUEST,
                    "Invalid Request: Content-Length is not a number",
                ))
            }
        }
    }
    let identity = match config.jwt.verify_header(head.authorization, now) {
        Ok(identity) => identity,
        Err(error) => return HeadVerdict::Reject(unauthorized(config, error)),
    };
    if is_mcp && head.method == "POST" {
        if head.end_of_stream {
            return HeadVerdict::Reject(Reject::bad_request(
                code::PARSE_ERROR,
                "Parse error: the request body is empty; send one JSON-RPC 2.0 message",
            ));
        }
        return HeadVerdict::InspectBody(identity);
    }
    HeadVerdict::Forward(identity)
}

/// Checks the size of the body received so far.
pub fn check_body_size(config: &FilterConfig, received: usize) -> Result<(), Reject> {
    if received > config.max_body_bytes {
        return Err(too_large(config));
    }
    Ok(())
}

/// Checks a complete MCP POST body.
pub fn check_body(config: &FilterConfig, body: &[u8]) -> Result<Message, Reject> {
    check_body_size(config, body.len())?;
    jsonrpc::parse_message(body)
}

/// The identity headers to set for the upstream.
pub fn identity_headers(identity: &Identity) -> [(&'static str, String); 3] {
    [
        ("x-mcp-user", identity.user.clone()),
        ("x-mcp-org", identity.org.clone()),
        ("x-mcp-scopes", identity.scopes.join(" ")),
    ]
}

fn too_large(config: &FilterConfig) -> Reject {
    Reject::new(
        413,
        code::TOO_LARGE,
        "body_too_large",
        format!(
            "Request body exceeds the gateway limit of {} bytes; shorten the prompt or arguments",
            config.max_body_bytes
        ),
    )
}

fn unauthorized(config: &FilterConfig, error: AuthError) -> Reject {
    // RFC 6750 §3: no error code when the client sent no credentials.
    let challenge = match error {
        AuthError::MissingToken => format!("Bearer realm=\"{}\"", config.realm),
        _ => format!(
            "Bearer realm=\"{}\", error=\"invalid_token\", error_description=\"{}\"",
            config.realm,
            error.to_string().replace('"', "'")
        ),
    };
    Reject::new(401, code::UNAUTHORIZED, error.cause(), format!("Unauthorized: {error}"))
        .with_header("www-authenticate", challenge)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jwt_simple::prelude::*;
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;

    fn setup() -> (FilterConfig, String) {
        let key = Ed25519KeyPair::generate().with_key_id("dev");
        let jwk: serde_json::Value = serde_json::from_str(&key.public_key().to_jwk()).unwrap();
        let config = json!({
            "jwt": {"issuer": "iss", "audiences": ["aud"], "jwks": {"keys": [jwk]}}
        });
        let config = FilterConfig::from_json(config.to_string().as_bytes()).unwrap();
        let mut claims = Claims::with_custom_claims(json!({"org": "acme"}), Duration::from_secs(600))
            .with_issuer("iss")
            .with_audience("aud")
            .with_subject("alice");
        claims.issued_at = Some(UnixTimeStamp::from_secs(NOW));
        claims.invalid_before = Some(UnixTimeStamp::from_secs(NOW));
        claims.expires_at = Some(UnixTimeStamp::from_secs(NOW + 600));
        let token = key.sign(claims).unwrap();
        (config, format!("Bearer {token}"))
    }

    #[test]
    fn head_decisions() {
        let (config, auth) = setup();
        let cases: Vec<(&str, RequestHead<'_>, &str)> = vec![
            (
                "post with body is held for inspection",
                RequestHead {
                    method: "POST",
                    path: "/mcp",
                    content_length: Some("100"),
                    authorization: Some(&auth),
                    end_of_stream: false,
                },
                "inspect",
            ),
            (
                "query string does not change the endpoint",
                RequestHead {
                    method: "POST",
                    path: "/mcp?x=1",
                    content_length: None,
                    authorization: Some(&auth),
                    end_of_stream: false,
                },
                "inspect",
            ),
            (
                "get stream is forwarded",
                RequestHead {
                    method: "GET",
                    path: "/mcp",
                    authorization: Some(&auth),
                    end_of_stream: true,
                    ..Default::default()
                },
                "forward",
            ),
            (
                "put is not allowed",
                RequestHead {
                    method: "PUT",
                    path: "/mcp",
                    authorization: Some(&auth),
                    ..Default::default()
                },
                "405",
            ),
            (
                "declared size over limit, before auth",
                RequestHead {
                    method: "POST",
                    path: "/mcp",
                    content_length: Some("2049"),
                    authorization: None,
                    end_of_stream: false,
                },
                "413",
            ),
            (
                "size at limit",
                RequestHead {
                    method: "POST",
                    path: "/mcp",
                    content_length: Some("2048"),
                    authorization: Some(&auth),
                    end_of_stream: false,
                },
                "inspect",
            ),
            (
                "garbage content length",
                RequestHead {
                    method: "POST",
                    path: "/mcp",
                    content_length: Some("12x"),
                    authorization: Some(&auth),
                    end_of_stream: false,
                },
                "400",
            ),
            (
                "no token",
                RequestHead {
                    method: "POST",
                    path: "/mcp",
                    content_length: Some("10"),
                    authorization: None,
                    end_of_stream: false,
                },
                "401",
            ),
            (
                "empty post",
                RequestHead {
                    method: "POST",
                    path: "/mcp",
                    content_length: Some("0"),
                    authorization: Some(&auth),
                    end_of_stream: true,
                },
                "400",
            ),
            (
                "other paths still need a token",
                RequestHead {
                    method: "GET",
                    path: "/other",
                    authorization: None,
                    end_of_stream: true,
                    ..Default::default()
                },
                "401",
            ),
        ];
        for (name, head, expected) in cases {
            let got = match check_head(&config, &head, NOW) {
                HeadVerdict::Forward(_) => "forward".to_string(),
                HeadVerdict::InspectBody(_) => "inspect".to_string(),
                HeadVerdict::Reject(r) => r.status.to_string(),
            };
            assert_eq!(got, expected, "case: {name}");
        }
    }

    #[test]
    fn unauthorized_carries_a_bearer_challenge() {
        let (config, _) = setup();
        let head = RequestHead {
            method: "POST",
            path: "/mcp",
            authorization: Some("Bearer abc"),
            ..Default::default()
        };
        let HeadVerdict::Reject(reject) = check_head(&config, &head, NOW) else {
            panic!("accepted a garbage token");
        };
        let (_, challenge) = reject.headers.iter().find(|(n, _)| *n == "www-authenticate").unwrap();
        assert!(
            challenge.starts_with("Bearer realm=\"mcp-image-gateway\", error=\"invalid_token\""),
            "{challenge}"
        );
        let body: serde_json::Value = serde_json::from_str(&reject.body()).unwrap();
        assert_eq!(body["error"]["code"], -32001);
        assert_eq!(body["id"], serde_json::Value::Null);
    }

    #[test]
    fn identity_comes_from_the_token() {
        let (config, auth) = setup();
        let head = RequestHead {
            method: "POST",
            path: "/mcp",
            authorization: Some(&auth),
            ..Default::default()
        };
        let HeadVerdict::InspectBody(identity) = check_head(&config, &head, NOW) else {
            panic!("valid token refused");
        };
        let headers = identity_headers(&identity);
        assert_eq!(headers[0], ("x-mcp-user", "alice".to_string()));
        assert_eq!(headers[1], ("x-mcp-org", "acme".to_string()));
    }

    #[test]
    fn body_limits() {
        let (config, _) = setup();
        let mut body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"p":""#.to_vec();
        let tail = br#""}}"#;
        body.resize(2048 - tail.len(), b'a');
        body.extend_from_slice(tail);
        assert_eq!(body.len(), 2048);
        assert!(check_body(&config, &body).is_ok());
        body.insert(60, b'a');
        assert_eq!(check_body(&config, &body).unwrap_err().status, 413);
    }
}
