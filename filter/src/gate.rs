//! The filter's per-request decisions, independent of the proxy-wasm host:
//! the glue in `lib.rs` feeds it headers and body and carries out the verdict.

use crate::config::FilterConfig;
use crate::jsonrpc::{self, code};
use crate::jwt::{AuthError, Identity};
use crate::policy::ToolCall;
use crate::reply::Reject;
use crate::transport::{self, McpHeaders};

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
    pub content_type: Option<&'a str>,
    pub accept: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub protocol_version: Option<&'a str>,
    pub mcp_method: Option<&'a str>,
    pub mcp_name: Option<&'a str>,
    /// True when the request has no body.
    pub end_of_stream: bool,
}

/// Header values the body check still needs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HeldHeaders {
    pub protocol_version: Option<String>,
    pub mcp_method: Option<String>,
    pub mcp_name: Option<String>,
}

/// The decision taken on the request head.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadVerdict {
    /// Forward now.
    Forward(Identity),
    /// Hold the request until its body has been checked.
    InspectBody(Identity, HeldHeaders),
    Reject(Reject),
}

/// Decides on a request from its head, at time `now` (Unix seconds).
pub fn check_head(config: &FilterConfig, head: &RequestHead<'_>, now: u64) -> HeadVerdict {
    match check_head_inner(config, head, now) {
        Ok(verdict) => verdict,
        Err(reject) => HeadVerdict::Reject(reject),
    }
}

fn check_head_inner(config: &FilterConfig, head: &RequestHead<'_>, now: u64) -> Result<HeadVerdict, Reject> {
    let path = head.path.split_once('?').map_or(head.path, |(path, _)| path);
    let is_mcp = path == config.mcp_path;
    if is_mcp {
        if !matches!(head.method, "POST" | "GET" | "DELETE") {
            return Err(Reject::new(
                405,
                code::INVALID_REQUEST,
                "method_not_allowed",
                format!(
                    "HTTP method {} is not allowed on the MCP endpoint; use POST",
                    head.method
                ),
            )
            .with_header("allow", "GET, POST, DELETE"));
        }
        config.transport.check_origin(head.origin)?;
    }
    if let Some(length) = head.content_length {
        match length.trim().parse::<u64>() {
            Ok(length) if length > config.max_body_bytes as u64 => return Err(too_large(config)),
            Ok(_) => {}
            Err(_) => {
                return Err(Reject::bad_request(
                    code::INVALID_REQUEST,
                    "Invalid Request: Content-Length is not a number",
                ))
            }
        }
    }
    let identity = config
        .jwt
        .verify_header(head.authorization, now)
        .map_err(|e| unauthorized(config, e))?;
    if !(is_mcp && head.method == "POST") {
        return Ok(HeadVerdict::Forward(identity));
    }
    config.transport.check_post_headers(&McpHeaders {
        content_type: head.content_type,
        accept: head.accept,
        protocol_version: head.protocol_version,
        origin: head.origin,
    })?;
    if head.end_of_stream {
        return Err(Reject::bad_request(
            code::PARSE_ERROR,
            "Parse error: the request body is empty; send one JSON-RPC 2.0 message",
        ));
    }
    let held = HeldHeaders {
        protocol_version: head.protocol_version.map(str::to_string),
        mcp_method: head.mcp_method.map(str::to_string),
        mcp_name: head.mcp_name.map(str::to_string),
    };
    Ok(HeadVerdict::InspectBody(identity, held))
}

/// Checks the size of the body received so far.
pub fn check_body_size(config: &FilterConfig, received: usize) -> Result<(), Reject> {
    if received > config.max_body_bytes {
        return Err(too_large(config));
    }
    Ok(())
}

/// Checks a complete MCP POST body; returns the tool call it makes, if any.
pub fn check_body(config: &FilterConfig, body: &[u8], held: &HeldHeaders) -> Result<Option<ToolCall>, Reject> {
    check_body_size(config, body.len())?;
    let envelope = jsonrpc::parse_envelope(body)?;
    transport::check_routing_headers(
        held.protocol_version.as_deref(),
        held.mcp_method.as_deref(),
        held.mcp_name.as_deref(),
        &envelope.message,
        envelope.params.as_ref(),
    )?;
    config.calls.check(&envelope)
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

    fn post<'a>(auth: Option<&'a str>, length: Option<&'a str>) -> RequestHead<'a> {
        RequestHead {
            method: "POST",
            path: "/mcp",
            content_length: length,
            authorization: auth,
            content_type: Some("application/json"),
            accept: Some("application/json, text/event-stream"),
            protocol_version: Some("2025-06-18"),
            ..Default::default()
        }
    }

    #[test]
    fn head_decisions() {
        let (config, auth) = setup();
        let a = Some(auth.as_str());
        let cases: Vec<(&str, RequestHead<'_>, &str)> = vec![
            ("post with body is held for inspection", post(a, Some("100")), "inspect"),
            (
                "query string does not change the endpoint",
                RequestHead {
                    path: "/mcp?x=1",
                    ..post(a, None)
                },
                "inspect",
            ),
            (
                "get stream is forwarded",
                RequestHead {
                    method: "GET",
                    end_of_stream: true,
                    ..post(a, None)
                },
                "forward",
            ),
            (
                "put is not allowed",
                RequestHead {
                    method: "PUT",
                    ..post(a, None)
                },
                "405",
            ),
            ("declared size over limit, before auth", post(None, Some("2049")), "413"),
            ("size at limit", post(a, Some("2048")), "inspect"),
            ("garbage content length", post(a, Some("12x")), "400"),
            ("no token", post(None, Some("10")), "401"),
            (
                "empty post",
                RequestHead {
                    end_of_stream: true,
                    ..post(a, Some("0"))
                },
                "400",
            ),
            (
                "foreign origin",
                RequestHead {
                    origin: Some("https://evil.example.com"),
                    ..post(a, None)
                },
                "403",
            ),
            (
                "local origin",
                RequestHead {
                    origin: Some("http://localhost:6274"),
                    ..post(a, None)
                },
                "inspect",
            ),
            (
                "form content type",
                RequestHead {
                    content_type: Some("text/plain"),
                    ..post(a, None)
                },
                "415",
            ),
            (
                "accept json only",
                RequestHead {
                    accept: Some("application/json"),
                    ..post(a, None)
                },
                "406",
            ),
            (
                "unsupported version",
                RequestHead {
                    protocol_version: Some("2024-11-05"),
                    ..post(a, None)
                },
                "400",
            ),
            (
                "other paths still need a token",
                RequestHead {
                    method: "GET",
                    path: "/other",
                    end_of_stream: true,
                    ..Default::default()
                },
                "401",
            ),
        ];
        for (name, head, expected) in cases {
            let got = match check_head(&config, &head, NOW) {
                HeadVerdict::Forward(_) => "forward".to_string(),
                HeadVerdict::InspectBody(..) => "inspect".to_string(),
                HeadVerdict::Reject(r) => r.status.to_string(),
            };
            assert_eq!(got, expected, "case: {name}");
        }
    }

    #[test]
    fn body_checks_use_the_held_headers() {
        let (config, _) = setup();
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"generate_image","arguments":{"prompt":"x","n":2}}}"#;
        let v26 = |method: &str, name: &str| HeldHeaders {
            protocol_version: Some("2026-07-28".into()),
            mcp_method: Some(method.into()),
            mcp_name: Some(name.into()),
        };
        let call = check_body(&config, body, &v26("tools/call", "generate_image"))
            .unwrap()
            .unwrap();
        assert_eq!(call.images, 2);
        let lie = check_body(&config, body, &v26("tools/call", "other")).unwrap_err();
        assert_eq!(
            (lie.status, lie.code, lie.id.clone()),
            (400, -32020, serde_json::json!(1))
        );
        let not_served = br#"{"jsonrpc":"2.0","id":1,"method":"sampling/createMessage"}"#;
        assert_eq!(
            check_body(&config, not_served, &HeldHeaders::default())
                .unwrap_err()
                .status,
            404
        );
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
        let head = post(Some(&auth), None);
        let HeadVerdict::InspectBody(identity, _) = check_head(&config, &head, NOW) else {
            panic!("valid token refused");
        };
        let headers = identity_headers(&identity);
        assert_eq!(headers[0], ("x-mcp-user", "alice".to_string()));
        assert_eq!(headers[1], ("x-mcp-org", "acme".to_string()));
    }

    #[test]
    fn body_limits() {
        let (config, _) = setup();
        let mut body =
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"generate_image","arguments":{"prompt":""#
                .to_vec();
        let tail = br#""}}}"#;
        body.resize(2048 - tail.len(), b'a');
        body.extend_from_slice(tail);
        assert_eq!(body.len(), 2048);
        assert!(check_body(&config, &body, &HeldHeaders::default()).is_ok());
        body.insert(100, b'a');
        assert_eq!(
            check_body(&config, &body, &HeldHeaders::default()).unwrap_err().status,
            413
        );
    }
}
