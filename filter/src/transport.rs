//! MCP Streamable HTTP rules checked at the edge: media types, protocol
//! version, the 2026-07-28 routing headers, and `Origin` (DNS rebinding).

use serde_json::Value;

use crate::jsonrpc::{code, Message};
use crate::reply::Reject;

/// Protocol versions served when the config does not say otherwise.
pub const DEFAULT_PROTOCOL_VERSIONS: [&str; 3] = ["2025-06-18", "2025-11-25", "2026-07-28"];
/// The first stateless revision: it requires `Mcp-Method` / `Mcp-Name`.
pub const STATELESS_VERSION: &str = "2026-07-28";
/// Hosts whose `Origin` is accepted on any port by default.
pub const DEFAULT_ORIGIN_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

/// 2026-07-28: a routing header is missing or disagrees with the body.
pub const HEADER_MISMATCH: i32 = -32020;
/// 2026-07-28: the requested protocol version is not supported.
pub const UNSUPPORTED_VERSION: i32 = -32022;

/// Compiled transport policy.
#[derive(Debug, Clone)]
pub struct TransportPolicy {
    pub protocol_versions: Vec<String>,
    /// Entries are a bare host (any scheme and port) or a full origin
    /// `scheme://host[:port]` (exact match, default port implied).
    pub allowed_origins: Vec<String>,
}

impl Default for TransportPolicy {
    fn default() -> Self {
        Self {
            protocol_versions: DEFAULT_PROTOCOL_VERSIONS.map(str::to_string).to_vec(),
            allowed_origins: DEFAULT_ORIGIN_HOSTS.map(str::to_string).to_vec(),
        }
    }
}

/// The MCP-relevant request headers of a POST.
#[derive(Debug, Default, Clone)]
pub struct McpHeaders<'a> {
    pub content_type: Option<&'a str>,
    pub accept: Option<&'a str>,
    pub protocol_version: Option<&'a str>,
    pub origin: Option<&'a str>,
}

impl TransportPolicy {
    /// Checks `Origin` on any request to the MCP endpoint.
    pub fn check_origin(&self, origin: Option<&str>) -> Result<(), Reject> {
        let Some(origin) = origin else { return Ok(()) };
        if self.origin_allowed(origin) {
            return Ok(());
        }
        Err(Reject::new(
            403,
            code::INVALID_REQUEST,
            "origin_not_allowed",
            format!("Origin {origin:?} is not allowed to call this MCP server"),
        ))
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        let Some((scheme, authority)) = origin.split_once("://") else {
            return false;
        };
        let (host, port) = split_authority(authority);
        let port = port.or(default_port(scheme));
        self.allowed_origins
            .iter()
            .any(|allowed| match allowed.split_once("://") {
                None => allowed.eq_ignore_ascii_case(host),
                Some((allowed_scheme, allowed_authority)) => {
                    let (allowed_host, allowed_port) = split_authority(allowed_authority);
                    let allowed_port = allowed_port.or(default_port(allowed_scheme));
                    allowed_scheme.eq_ignore_ascii_case(scheme)
                        && allowed_host.eq_ignore_ascii_case(host)
                        && (allowed_port == Some("*") || allowed_port == port)
                }
            })
    }

    /// Checks the headers of an MCP POST before its body arrives.
    pub fn check_post_headers(&self, headers: &McpHeaders<'_>) -> Result<(), Reject> {
        let json = headers
            .content_type
            .and_then(|ct| ct.split(';').next())
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(Reject::new(
                415,
                code::INVALID_REQUEST,
                "unsupported_media_type",
                "POST bodies must be sent with Content-Type: application/json",
            ));
        }
        if !accepts(headers.accept, "application/json") || !accepts(headers.accept, "text/event-stream") {
            return Err(Reject::new(
                406,
                code::INVALID_REQUEST,
                "not_acceptable",
                "the Accept header must allow both application/json and text/event-stream",
            ));
        }
        if let Some(version) = headers.protocol_version {
            if !self.protocol_versions.iter().any(|v| v == version.trim()) {
                return Err(Reject::new(
                    400,
                    UNSUPPORTED_VERSION,
                    "unsupported_protocol_version",
                    format!(
                        "MCP-Protocol-Version {:?} is not supported; supported: {}",
                        version,
                        self.protocol_versions.join(", ")
                    ),
                )
                .with_data(serde_json::json!({"supported": self.protocol_versions, "requested": version})));
            }
        }
        Ok(())
    }
}

/// The port an origin without one implies.
fn default_port(scheme: &str) -> Option<&'static str> {
    match scheme {
        "https" => Some("443"),
        "http" => Some("80"),
        _ => None,
    }
}

fn split_authority(authority: &str) -> (&str, Option<&str>) {
    let authority = authority.trim_end_matches('/');
    if let Some(rest) = authority.strip_prefix('[') {
        // IPv6 literal: keep the brackets as part of the host.
        if let Some(end) = rest.find(']') {
            let host_len = end + 2;
            let host = authority.get(..host_len).unwrap_or(authority);
            let port = authority.get(host_len..).and_then(|p| p.strip_prefix(':'));
            return (host, port);
        }
        return (authority, None);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    }
}

/// True if an `Accept` value allows `mime` (wildcards included).
fn accepts(accept: Option<&str>, mime: &str) -> bool {
    let Some(accept) = accept else { return false };
    let major = mime.split('/').next().unwrap_or_default();
    accept.split(',').any(|item| {
        let range = item.split(';').next().unwrap_or_default().trim();
        range == "*/*"
            || range.eq_ignore_ascii_case(mime)
            || range.strip_suffix("/*").is_some_and(|m| m.eq_ignore_ascii_case(major))
    })
}

/// 2026-07-28 requires `Mcp-Method` (and `Mcp-Name` for named calls) to
/// agree with the body, so nothing can route or rate-limit on a lying header.
pub fn check_routing_headers(
    protocol_version: Option<&str>,
    mcp_method: Option<&str>,
    mcp_name: Option<&str>,
    message: &Message,
    params: Option<&Value>,
) -> Result<(), Reject> {
    let stateless = protocol_version.map(str::trim) == Some(STATELESS_VERSION);
    let method = match message {
        Message::Request { method, .. } | Message::Notification { method } => Some(method.as_str()),
        Message::Response { .. } => None,
    };
    let mismatch = |what: String| {
        Reject::new(400, HEADER_MISMATCH, "header_mismatch", what).with_id(match message {
            Message::Request { id, .. } => id.clone(),
            _ => Value::Null,
        })
    };
    if let (Some(header), Some(method)) = (mcp_method, method) {
        if header.trim() != method {
            return Err(mismatch(format!(
                "Mcp-Method header {header:?} does not match the body's method {method:?}"
            )));
        }
    }
    if !stateless {
        return Ok(());
    }
    let Some(method) = method else { return Ok(()) };
    if mcp_method.is_none() {
        return Err(mismatch(format!(
            "the Mcp-Method header is required with protocol {STATELESS_VERSION}"
        )));
    }
    let name_field = match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" => Some("uri"),
        _ => None,
    };
    if let Some(field) = name_field {
        let body_name = params.and_then(|p| p.get(field)).and_then(Value::as_str);
        match (mcp_name.map(str::trim), body_name) {
            (None, _) => {
                return Err(mismatch(format!(
                    "the Mcp-Name header is required for {method} with protocol {STATELESS_VERSION}"
                )))
            }
            (Some(header), Some(body)) if header == body => {}
            (Some(header), body) => {
                return Err(mismatch(format!(
                    "Mcp-Name header {header:?} does not match the body's params.{field} {:?}",
                    body.unwrap_or_default()
                )))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn origins() {
        let mut policy = TransportPolicy::default();
        policy.allowed_origins.push("https://app.example.com".into());
        policy.allowed_origins.push("http://tools.example.com:*".into());
        let cases = [
            (None, true),
            (Some("http://localhost:6274"), true),
            (Some("http://127.0.0.1"), true),
            (Some("http://[::1]:3000"), true),
            (Some("https://app.example.com"), true),
            (Some("https://app.example.com:443"), true),
            (Some("https://app.example.com:8443"), false),
            (Some("http://app.example.com"), false),
            (Some("http://tools.example.com:9999"), true),
            (Some("http://evil.example.com"), false),
            (Some("http://localhost.evil.example.com"), false),
            (Some("null"), false),
            (Some(""), false),
        ];
        for (origin, allowed) in cases {
            assert_eq!(policy.check_origin(origin).is_ok(), allowed, "{origin:?}");
        }
        assert_eq!(
            policy.check_origin(Some("http://evil.example.com")).unwrap_err().status,
            403
        );
    }

    #[test]
    fn post_headers() {
        let policy = TransportPolicy::default();
        let good = McpHeaders {
            content_type: Some("application/json"),
            accept: Some("application/json, text/event-stream"),
            protocol_version: Some("2025-06-18"),
            origin: None,
        };
        type Case<'a> = (&'a str, McpHeaders<'a>, Option<(u32, i32)>);
        let cases: Vec<Case<'_>> = vec![
            ("canonical", good.clone(), None),
            (
                "charset param",
                McpHeaders {
                    content_type: Some("application/json; charset=utf-8"),
                    ..good.clone()
                },
                None,
            ),
            (
                "wildcard accept",
                McpHeaders {
                    accept: Some("*/*"),
                    ..good.clone()
                },
                None,
            ),
            (
                "no version header",
                McpHeaders {
                    protocol_version: None,
                    ..good.clone()
                },
                None,
            ),
            (
                "form body",
                McpHeaders {
                    content_type: Some("application/x-www-form-urlencoded"),
                    ..good.clone()
                },
                Some((415, -32600)),
            ),
            (
                "no content type",
                McpHeaders {
                    content_type: None,
                    ..good.clone()
                },
                Some((415, -32600)),
            ),
            (
                "json only",
                McpHeaders {
                    accept: Some("application/json"),
                    ..good.clone()
                },
                Some((406, -32600)),
            ),
            (
                "no accept",
                McpHeaders {
                    accept: None,
                    ..good.clone()
                },
                Some((406, -32600)),
            ),
            (
                "old version",
                McpHeaders {
                    protocol_version: Some("2024-11-05"),
                    ..good.clone()
                },
                Some((400, -32022)),
            ),
            (
                "garbage version",
                McpHeaders {
                    protocol_version: Some("latest"),
                    ..good.clone()
                },
                Some((400, -32022)),
            ),
        ];
        for (name, headers, expected) in cases {
            let got = policy.check_post_headers(&headers).err().map(|r| (r.status, r.code));
            assert_eq!(got, expected, "case: {name}");
        }
    }

    #[test]
    fn routing_headers() {
        let call = Message::Request {
            id: json!(1),
            method: "tools/call".into(),
        };
        let params = json!({"name": "generate_image"});
        let list = Message::Request {
            id: json!(2),
            method: "tools/list".into(),
        };
        let v26 = Some("2026-07-28");
        let v25 = Some("2025-06-18");
        let cases = [
            (
                "2026 agreeing",
                v26,
                Some("tools/call"),
                Some("generate_image"),
                &call,
                true,
            ),
            ("2026 missing method", v26, None, Some("generate_image"), &call, false),
            ("2026 missing name", v26, Some("tools/call"), None, &call, false),
            (
                "2026 lying name",
                v26,
                Some("tools/call"),
                Some("delete_everything"),
                &call,
                false,
            ),
            (
                "2026 lying method",
                v26,
                Some("tools/list"),
                Some("generate_image"),
                &call,
                false,
            ),
            ("2026 list needs no name", v26, Some("tools/list"), None, &list, true),
            ("2025 without headers", v25, None, None, &call, true),
            (
                "2025 lying method still refused",
                v25,
                Some("tools/list"),
                None,
                &call,
                false,
            ),
        ];
        for (name, version, method, tool, message, ok) in cases {
            let got = check_routing_headers(version, method, tool, message, Some(&params));
            assert_eq!(got.is_ok(), ok, "case: {name}");
            if let Err(reject) = got {
                assert_eq!((reject.status, reject.code), (400, HEADER_MISMATCH), "case: {name}");
            }
        }
    }
}
