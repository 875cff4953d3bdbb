//! The filter's per-request decisions, independent of the host: the glues
//! (`envoy_wasm`, `envoy_native`) feed it headers and body and carry out the
//! verdict.

use std::rc::Rc;

use crate::assertion::ToolRights;
use crate::config::FilterConfig;
use crate::credentials::{self, CacheUse, TokenCache};
use crate::jsonrpc::{self, code};
use crate::jwt::{AuthError, Identity};
use crate::leases::Leases;
use crate::limits::{CallerOverride, QuotaUse, SharedStore};
use crate::org_names;
use crate::phases::Phase;
use crate::policy::ToolCall;
use crate::reply::Reject;
use crate::tool_access;
use crate::transport::{self, McpHeaders};

/// Identity headers: the signed assertion, and the bare headers older
/// upstreams read. Any client-supplied copy is removed; only the assertion is set.
pub const IDENTITY_HEADERS: [&str; 5] = [
    crate::assertion::HEADER,
    "x-mcp-user",
    "x-mcp-org",
    "x-mcp-key-id",
    "x-mcp-scopes",
];

/// What the filter needs from the request head.
#[derive(Debug, Default)]
pub struct RequestHead<'a> {
    pub method: &'a str,
    /// `:path`, query included.
    pub path: &'a str,
    pub content_length: Option<&'a str>,
    pub authorization: Option<&'a str>,
    pub x_api_key: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub accept: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub protocol_version: Option<&'a str>,
    pub mcp_method: Option<&'a str>,
    pub mcp_name: Option<&'a str>,
    /// True when the request has no body.
    pub end_of_stream: bool,
}

impl<'a> RequestHead<'a> {
    /// The head from a host's header lookup (`header(name)`, lower-case names).
    pub fn from_headers(header: impl Fn(&str) -> Option<&'a str>, end_of_stream: bool) -> Self {
        Self {
            method: header(":method").unwrap_or_default(),
            path: header(":path").unwrap_or_default(),
            content_length: header("content-length"),
            authorization: header("authorization"),
            x_api_key: header("x-api-key"),
            content_type: header("content-type"),
            accept: header("accept"),
            origin: header("origin"),
            protocol_version: header("mcp-protocol-version"),
            mcp_method: header("mcp-method"),
            mcp_name: header("mcp-name"),
            end_of_stream,
        }
    }
}

/// The credential and identity headers a request carries (`has(name)`):
/// never passed on, so the glue removes them before it adds the assertion.
pub fn headers_to_remove(has: impl Fn(&str) -> bool) -> Vec<&'static str> {
    ["authorization", "x-api-key"]
        .into_iter()
        .chain(IDENTITY_HEADERS)
        .filter(|name| has(name))
        .collect()
}

/// What the host lends the decisions: the per-worker token cache, the
/// cross-worker shared store, and the clock.
pub struct Host<'a> {
    pub cache: &'a mut TokenCache,
    /// The per-worker leases of bucket tokens.
    pub leases: &'a mut Leases,
    pub store: &'a dyn SharedStore,
    pub now_ms: u64,
}

/// What the body check still needs from the head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldRequest {
    pub identity: Rc<Identity>,
    pub protocol_version: Option<String>,
    pub mcp_method: Option<String>,
    pub mcp_name: Option<String>,
}

/// An admitted caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// Shared with the token cache and the held request, never copied.
    pub identity: Rc<Identity>,
    pub cache: CacheUse,
}

/// The decision taken on the request head.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadVerdict {
    /// Forward now.
    Forward(Admitted),
    /// Hold the request until its body has been checked.
    InspectBody(Admitted, HeldRequest),
    /// Answer locally with this JSON document (protected-resource metadata).
    Serve(String),
    Reject(Reject),
    /// Refused on its headers, but answered once the (small) body has been
    /// read, so the JSON-RPC error carries the request's id.
    RejectAfterBody(Reject),
}

/// Decides on a request from its head.
pub fn check_head(config: &FilterConfig, head: &RequestHead<'_>, host: &mut Host<'_>) -> HeadVerdict {
    match check_head_inner(config, head, host) {
        Ok(verdict) => verdict,
        Err(reject) if answers_after_body(config, head, &reject) => HeadVerdict::RejectAfterBody(reject),
        Err(reject) => HeadVerdict::Reject(reject),
    }
}

/// Whether a head-time refusal waits for the body to learn the request id:
/// MCP POSTs with a body, except 401/503 (no caller yet: nothing of theirs is
/// read) and 413 (the body is too large to read).
fn answers_after_body(config: &FilterConfig, head: &RequestHead<'_>, reject: &Reject) -> bool {
    let path = head.path.split_once('?').map_or(head.path, |(path, _)| path);
    head.method == "POST" && path == config.mcp_path && !head.end_of_stream && !matches!(reject.status, 401 | 413 | 503)
}

/// The id to answer a deferred refusal with: the request's when the body is
/// a readable JSON-RPC request, else `null`.
pub fn reply_id_of(config: &FilterConfig, body: &[u8]) -> serde_json::Value {
    if body.len() > config.body_read_limit {
        return serde_json::Value::Null;
    }
    jsonrpc::parse_envelope(body).map_or(serde_json::Value::Null, |envelope| envelope.reply_id())
}

fn check_head_inner(config: &FilterConfig, head: &RequestHead<'_>, host: &mut Host<'_>) -> Result<HeadVerdict, Reject> {
    let path = head.path.split_once('?').map_or(head.path, |(path, _)| path);
    if let Some(resource) = &config.protected_resource {
        if matches!(head.method, "GET" | "HEAD") && resource.paths.iter().any(|p| p == path) {
            return Ok(HeadVerdict::Serve(resource.document.clone()));
        }
    }
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
            Ok(length) if length > config.body_read_limit as u64 => return Err(too_large(config.body_read_limit)),
            Ok(_) => {}
            Err(_) => {
                return Err(Reject::bad_request(
                    code::INVALID_REQUEST,
                    "Invalid Request: Content-Length is not a number",
                ))
            }
        }
    }
    let (identity, cache, caller_limits) = if config.skip.skips(Phase::Credentials) {
        (Rc::new(bench_identity()), CacheUse::NotApplicable, Default::default())
    } else {
        credentials::authenticate(
            &config.jwt,
            &config.api_keys,
            host.cache,
            head.authorization,
            head.x_api_key,
            host.now_ms / 1000,
        )
        .map_err(|e| unauthorized(config, e))?
    };
    if org_names::is_reserved(&identity.org) {
        return Err(org_names::refusal(&identity.org));
    }
    let admitted = Admitted { identity, cache };
    if !is_mcp {
        return Ok(HeadVerdict::Forward(admitted));
    }
    if head.method != "POST" {
        // GET and DELETE carry no message: a body would reach the upstream unchecked.
        if !head.end_of_stream {
            return Err(Reject::bad_request(
                code::INVALID_REQUEST,
                format!("Invalid Request: {} on the MCP endpoint takes no body", head.method),
            ));
        }
        charge_request(config, host, &admitted, caller_limits)?;
        return Ok(HeadVerdict::Forward(admitted));
    }
    if !config.skip.skips(Phase::McpRules) {
        config.transport.check_post_headers(&McpHeaders {
            content_type: head.content_type,
            accept: head.accept,
            protocol_version: head.protocol_version,
            origin: head.origin,
        })?;
    }
    if head.end_of_stream {
        return Err(Reject::bad_request(
            code::PARSE_ERROR,
            "Parse error: the request body is empty; send one JSON-RPC 2.0 message",
        ));
    }
    charge_request(config, host, &admitted, caller_limits)?;
    if config.skip.skips(Phase::Body) {
        return Ok(HeadVerdict::Forward(admitted));
    }
    let held = HeldRequest {
        identity: admitted.identity.clone(),
        protocol_version: head.protocol_version.map(str::to_string),
        mcp_method: head.mcp_method.map(str::to_string),
        mcp_name: head.mcp_name.map(str::to_string),
    };
    Ok(HeadVerdict::InspectBody(admitted, held))
}

/// Takes one request from the caller's and the organisation's buckets.
fn charge_request(
    config: &FilterConfig,
    host: &mut Host<'_>,
    admitted: &Admitted,
    caller_limits: CallerOverride,
) -> Result<(), Reject> {
    config
        .rate_limits
        .check_request(host.store, host.leases, &admitted.identity, caller_limits, host.now_ms)
        .map_err(|reject| reject.with_key(admitted.identity.key_id.as_deref().unwrap_or("jwt")))
}

/// Checks the size of the body received so far (against the largest limit:
/// which tool it calls is not known yet).
pub fn check_body_size(config: &FilterConfig, received: usize) -> Result<(), Reject> {
    if received > config.body_read_limit {
        return Err(too_large(config.body_read_limit));
    }
    Ok(())
}

/// A body that passed: the tool call it makes and the id to answer with.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedBody {
    pub call: Option<ToolCall>,
    /// The request's id (`null` for notifications), for errors the edge sends later.
    pub reply_id: serde_json::Value,
    /// The organisation's daily image quota after this call, when it has one.
    pub quota: Option<QuotaUse>,
}

/// Checks a complete MCP POST body.
pub fn check_body(
    config: &FilterConfig,
    body: &[u8],
    held: &HeldRequest,
    host: &mut Host<'_>,
) -> Result<CheckedBody, Reject> {
    check_body_size(config, body.len())?;
    let envelope = jsonrpc::parse_envelope(body)?;
    if !config.skip.skips(Phase::McpRules) {
        transport::check_routing_headers(
            held.protocol_version.as_deref(),
            held.mcp_method.as_deref(),
            held.mcp_name.as_deref(),
            &envelope.message,
            envelope.params.as_ref(),
        )?;
    }
    let call = config.calls.check(&envelope, held.protocol_version.as_deref())?;
    // Now that the tool is known, hold the body to its own limit.
    let limit = call
        .as_ref()
        .and_then(|call| config.tool_body_limits.get(&call.tool))
        .copied()
        .unwrap_or(config.max_body_bytes);
    if body.len() > limit {
        return Err(too_large(limit).with_id(envelope.reply_id()));
    }
    let mut quota = None;
    if let Some(call) = &call {
        // The organisation first: re-authorizing with more scopes would not help.
        if !config.tool_access.org_allows(&held.identity.org, &call.tool) {
            let reject = tool_access::not_for_org(&call.tool, &held.identity.org);
            return Err(reject.with_id(envelope.reply_id()));
        }
        check_scopes(config, &held.identity, &call.tool).map_err(|reject| reject.with_id(envelope.reply_id()))?;
        if call.images > 0 {
            quota = config
                .rate_limits
                .check_images(host.store, &held.identity.org, call.images, host.now_ms)
                .map_err(|reject| {
                    reject
                        .with_key(held.identity.key_id.as_deref().unwrap_or("jwt"))
                        .with_id(envelope.reply_id())
                })?;
        }
    }
    Ok(CheckedBody {
        call,
        reply_id: envelope.reply_id(),
        quota,
    })
}

/// The tools `identity` may call, when per-tool access hides some from it
/// (carried in the identity assertion for the upstream's `tools/list`).
pub fn visible_tools(config: &FilterConfig, identity: &Identity) -> Option<Vec<String>> {
    config
        .tool_access
        .visible_tools(identity, config.calls.allowed_tools.iter())
}

/// What `identity` may do with the tools, for the identity assertion: the
/// upstream lists and refuses by it (defence in depth behind the edge).
pub fn tool_rights(config: &FilterConfig, identity: &Identity) -> ToolRights {
    let no_calls = config
        .tools_call_scope
        .as_ref()
        .is_some_and(|scope| !identity.scopes.iter().any(|s| s == scope));
    ToolRights {
        tools: visible_tools(config, identity),
        no_calls,
    }
}

/// The caller of every request when the benchmark switches credentials off.
#[cold]
fn bench_identity() -> Identity {
    Identity {
        user: "bench".into(),
        org: "bench".into(),
        scopes: vec!["mcp:tools".into()],
        expires_at: u64::MAX,
        key_id: None,
    }
}

fn too_large(limit: usize) -> Reject {
    Reject::new(
        413,
        code::TOO_LARGE,
        "body_too_large",
        format!("Request body exceeds the gateway limit of {limit} bytes; shorten the prompt or arguments"),
    )
}

fn resource_metadata_param(config: &FilterConfig) -> String {
    config
        .protected_resource
        .as_ref()
        .map(|r| format!(", resource_metadata=\"{}\"", r.metadata_url))
        .unwrap_or_default()
}

fn unauthorized(config: &FilterConfig, error: AuthError) -> Reject {
    if error == AuthError::KeysNotLoaded {
        return Reject::new(
            503,
            code::UNAUTHORIZED,
            error.cause(),
            format!("Service unavailable: {error}"),
        )
        .with_header("retry-after", "1");
    }
    let metadata = resource_metadata_param(config);
    // RFC 6750 §3: no error code when the client sent no credentials.
    let challenge = match error {
        AuthError::MissingToken => format!("Bearer realm=\"{}\"{metadata}", config.realm),
        _ => format!(
            "Bearer realm=\"{}\", error=\"invalid_token\", error_description=\"{}\"{metadata}",
            config.realm,
            error.to_string().replace('"', "'")
        ),
    };
    Reject::new(401, code::UNAUTHORIZED, error.cause(), format!("Unauthorized: {error}"))
        .with_header("www-authenticate", challenge)
}

/// The scopes a call of `tool` needs: `tools_call_scope`, then the tool's
/// own (`tool_access.scopes`), each once.
pub fn needed_scopes<'a>(config: &'a FilterConfig, tool: &str) -> Vec<&'a str> {
    let mut needed: Vec<&str> = config.tools_call_scope.as_deref().into_iter().collect();
    if let Some(scope) = config.tool_access.scope_of(tool) {
        if !needed.contains(&scope) {
            needed.push(scope);
        }
    }
    needed
}

/// Refuses a call whose caller lacks any scope it needs. The challenge's
/// `scope=` names every scope the call needs, held or not (the 2026-07-28
/// step-up rule): a client that re-authorizes once with them gets them all.
fn check_scopes(config: &FilterConfig, identity: &Identity, tool: &str) -> Result<(), Reject> {
    let needed = needed_scopes(config, tool);
    let missing: Vec<&str> = needed
        .iter()
        .copied()
        .filter(|scope| !identity.scopes.iter().any(|held| held == scope))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let challenge = format!(
        "Bearer realm=\"{}\", error=\"insufficient_scope\", scope=\"{}\"{}",
        config.realm,
        needed.join(" "),
        resource_metadata_param(config)
    );
    let lacking: Vec<String> = missing.iter().map(|scope| format!("{scope:?}")).collect();
    let plural = if missing.len() > 1 { "s" } else { "" };
    let all = if needed.len() > missing.len() {
        format!(
            " (re-authorize with every scope the call needs: {:?})",
            needed.join(" ")
        )
    } else {
        String::new()
    };
    let message = format!(
        "Forbidden: calling {tool} needs the {} scope{plural}, which this token or key does not grant{all}",
        lacking.join(", ")
    );
    Err(Reject::new(403, code::UNAUTHORIZED, "insufficient_scope", message).with_header("www-authenticate", challenge))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::MemStore;
    use jwt_simple::prelude::*;
    use serde_json::json;

    fn run(config: &FilterConfig, head: &RequestHead<'_>) -> HeadVerdict {
        let mut cache = TokenCache::new(16);
        let store = MemStore::default();
        check_head(
            config,
            head,
            &mut Host {
                cache: &mut cache,
                leases: &mut Leases::default(),
                store: &store,
                now_ms: NOW * 1000,
            },
        )
    }

    fn body(config: &FilterConfig, bytes: &[u8], held: &HeldRequest) -> Result<Option<ToolCall>, Reject> {
        body_checked(config, bytes, held).map(|checked| checked.call)
    }

    fn body_checked(config: &FilterConfig, bytes: &[u8], held: &HeldRequest) -> Result<CheckedBody, Reject> {
        let mut cache = TokenCache::new(16);
        let store = MemStore::default();
        check_body(
            config,
            bytes,
            held,
            &mut Host {
                cache: &mut cache,
                leases: &mut Leases::default(),
                store: &store,
                now_ms: NOW * 1000,
            },
        )
    }

    fn held(scopes: &[&str]) -> HeldRequest {
        HeldRequest {
            identity: Rc::new(Identity {
                user: "alice".into(),
                org: "acme".into(),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                expires_at: u64::MAX,
                key_id: None,
            }),
            protocol_version: None,
            mcp_method: None,
            mcp_name: None,
        }
    }

    const NOW: u64 = 1_800_000_000;

    fn setup() -> (FilterConfig, String) {
        setup_for("acme")
    }

    /// The filter's settings and a bearer token of a caller of `org`.
    fn setup_for(org: &str) -> (FilterConfig, String) {
        let key = Ed25519KeyPair::generate().with_key_id("dev");
        let jwk: serde_json::Value = serde_json::from_str(&key.public_key().to_jwk()).unwrap();
        let config = json!({
            "jwt": {"issuer": "iss", "audiences": ["aud"], "jwks": {"keys": [jwk]}}
        });
        let config = FilterConfig::from_json(config.to_string().as_bytes()).unwrap();
        let mut claims = Claims::with_custom_claims(json!({"org": org}), Duration::from_secs(600))
            .with_issuer("iss")
            .with_audience("aud")
            .with_subject("alice");
        claims.issued_at = Some(UnixTimeStamp::from_secs(NOW));
        claims.invalid_before = Some(UnixTimeStamp::from_secs(NOW));
        claims.expires_at = Some(UnixTimeStamp::from_secs(NOW + 600));
        let token = key.sign(claims).unwrap();
        (config, format!("Bearer {token}"))
    }

    /// A valid token of an organisation named like a store prefix: 403,
    /// answered once the body gives the request's id; any request, not
    /// only tool calls (nothing of such an organisation can be served).
    #[test]
    fn organisations_named_like_store_prefixes_are_refused() {
        let (config, auth) = setup_for("uploads");
        match run(&config, &post(Some(&auth), Some("10"))) {
            HeadVerdict::RejectAfterBody(reject) => {
                assert_eq!((reject.status, reject.reason), (403, "reserved_org"));
                assert!(reject.message.contains("\"uploads\" is reserved"), "{}", reject.message);
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        let get = RequestHead {
            method: "GET",
            path: "/mcp",
            authorization: Some(&auth),
            ..Default::default()
        };
        assert!(matches!(run(&config, &get), HeadVerdict::Reject(r) if r.status == 403));
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
            ("garbage content length", post(a, Some("12x")), "400 after body"),
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
                "403 after body",
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
                "415 after body",
            ),
            (
                "accept json only",
                RequestHead {
                    accept: Some("application/json"),
                    ..post(a, None)
                },
                "406 after body",
            ),
            (
                "unsupported version",
                RequestHead {
                    protocol_version: Some("2024-11-05"),
                    ..post(a, None)
                },
                "400 after body",
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
            let got = match run(&config, &head) {
                HeadVerdict::Forward(_) => "forward".to_string(),
                HeadVerdict::InspectBody(..) => "inspect".to_string(),
                HeadVerdict::Serve(_) => "serve".to_string(),
                HeadVerdict::Reject(r) => r.status.to_string(),
                HeadVerdict::RejectAfterBody(r) => format!("{} after body", r.status),
            };
            assert_eq!(got, expected, "case: {name}");
        }
    }

    #[test]
    fn body_checks_use_the_held_headers() {
        let (config, _) = setup();
        let call = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"generate_image","arguments":{"prompt":"x","n":2}}}"#;
        let v26 = |method: &str, name: &str| HeldRequest {
            protocol_version: Some("2026-07-28".into()),
            mcp_method: Some(method.into()),
            mcp_name: Some(name.into()),
            ..held(&[])
        };
        let tool_call = body(&config, call, &v26("tools/call", "generate_image"))
            .unwrap()
            .unwrap();
        assert_eq!(tool_call.images, 2);
        let lie = body(&config, call, &v26("tools/call", "other")).unwrap_err();
        assert_eq!((lie.status, lie.code, lie.id.clone()), (400, -32020, json!(1)));
        let not_served = br#"{"jsonrpc":"2.0","id":1,"method":"sampling/createMessage"}"#;
        assert_eq!(body(&config, not_served, &held(&[])).unwrap_err().status, 404);
    }

    #[test]
    fn per_tool_access_by_scope_and_org() {
        let key = Ed25519KeyPair::generate();
        let jwk: serde_json::Value = serde_json::from_str(&key.public_key().to_jwk()).unwrap();
        let config = FilterConfig::from_json(
            json!({
                "jwt": {"issuer": "iss", "audiences": ["aud"], "jwks": {"keys": [jwk]}},
                "rate_limits": {"daily_images_per_org": 1},
                "tool_access": {"scopes": {"edit_image": "images:edit"}, "orgs": {"acme": ["generate_image", "edit_image"]}}
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let edit = br#"{"jsonrpc":"2.0","id":"e","method":"tools/call","params":{"name":"edit_image","arguments":{"prompt":"x","images":["image://a"]}}}"#;
        let refused = body(&config, edit, &held(&["images:generate"])).unwrap_err();
        assert_eq!(
            (refused.status, refused.reason, refused.id.clone()),
            (403, "insufficient_scope", json!("e"))
        );
        assert!(
            refused
                .message
                .contains("calling edit_image needs the \"images:edit\" scope"),
            "{}",
            refused.message
        );
        assert!(refused.headers[0].1.contains("scope=\"images:edit\""));
        let models =
            br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"list_models","arguments":{}}}"#;
        let refused = body(&config, models, &held(&["images:edit"])).unwrap_err();
        assert_eq!(
            (refused.status, refused.code, refused.id.clone()),
            (403, -32602, json!(7))
        );
        assert!(refused
            .message
            .contains("\"list_models\" is not available to organisation \"acme\""));
        assert!(body(&config, edit, &held(&["images:edit"])).is_ok());
        let two = br#"{"jsonrpc":"2.0","id":"q","method":"tools/call","params":{"name":"generate_image","arguments":{"prompt":"x","n":2}}}"#;
        let over = body(&config, two, &held(&[])).unwrap_err();
        assert_eq!(
            (over.status, over.reason, over.id),
            (429, "quota_exceeded", json!("q")),
            "a quota refusal answers the request's id"
        );
        assert_eq!(
            visible_tools(&config, &held(&["images:generate"]).identity),
            Some(vec!["generate_image".to_string()])
        );
        assert!(!tool_rights(&config, &held(&[]).identity).no_calls, "no call scope set");
    }

    /// Step-up (2026-07-28): a 403 names every scope the call needs, so one
    /// re-authorization with them is enough.
    #[test]
    fn insufficient_scope_names_the_union_of_what_the_call_needs() {
        let key = Ed25519KeyPair::generate();
        let jwk: serde_json::Value = serde_json::from_str(&key.public_key().to_jwk()).unwrap();
        let config = FilterConfig::from_json(
            json!({
                "jwt": {"issuer": "iss", "audiences": ["aud"], "jwks": {"keys": [jwk]}},
                "tools_call_scope": "images:generate",
                "tool_access": {"scopes": {"edit_image": "images:edit", "generate_image": "images:generate"},
                                "orgs": {"globex": ["generate_image"]}}
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let edit = br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"edit_image","arguments":{"prompt":"x","images":["image://a"]}}}"#;
        let generate = br#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"generate_image","arguments":{"prompt":"x"}}}"#;
        let both = "images:generate images:edit";
        /// Name, call, scopes held, the `scope=` expected (`None`: admitted).
        type Case<'a> = (&'a str, &'a [u8], &'a [&'a str], Option<&'a str>);
        let cases: &[Case] = &[
            ("edit, no scope", edit, &[], Some(both)),
            ("edit, only the call scope", edit, &["images:generate"], Some(both)),
            ("edit, only the tool scope", edit, &["images:edit"], Some(both)),
            ("edit, both", edit, &["images:edit", "images:generate"], None),
            (
                "generate: the same scope twice is named once",
                generate,
                &["images:edit"],
                Some("images:generate"),
            ),
            ("generate, held", generate, &["images:generate"], None),
        ];
        for (name, call, scopes, expected) in cases {
            let got = body(&config, call, &held(scopes));
            match (got, expected) {
                (Ok(_), None) => {}
                (Err(reject), Some(scope)) => {
                    assert_eq!((reject.status, reject.reason), (403, "insufficient_scope"), "{name}");
                    let challenge = &reject.headers[0].1;
                    assert!(challenge.contains(&format!("scope=\"{scope}\"")), "{name}: {challenge}");
                }
                (got, _) => panic!("{name}: {got:?}"),
            }
        }
        let refused = body(&config, edit, &held(&["images:generate"])).unwrap_err();
        assert!(
            refused
                .message
                .contains("calling edit_image needs the \"images:edit\" scope, which")
                && refused
                    .message
                    .contains("every scope the call needs: \"images:generate images:edit\""),
            "{}",
            refused.message
        );
        let other_org = HeldRequest {
            identity: Rc::new(Identity {
                org: "globex".into(),
                ..(*held(&[]).identity).clone()
            }),
            ..held(&[])
        };
        assert_eq!(
            body(&config, edit, &other_org).unwrap_err().reason,
            "tool_not_permitted",
            "a tool the organisation may not call is refused as such, not as a scope to step up to"
        );
    }

    #[test]
    fn scopes_and_protected_resource_metadata() {
        let key = Ed25519KeyPair::generate();
        let jwk: serde_json::Value = serde_json::from_str(&key.public_key().to_jwk()).unwrap();
        let config = FilterConfig::from_json(
            json!({
                "jwt": {"issuer": "iss", "audiences": ["aud"], "jwks": {"keys": [jwk]}},
                "tools_call_scope": "images:generate",
                "protected_resource": {"resource": "https://gw.example.com/mcp", "authorization_servers": ["https://iam.example.com"]}
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let call = br#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"generate_image","arguments":{"prompt":"x"}}}"#;
        let forbidden = body(&config, call, &held(&["images:read"])).unwrap_err();
        assert_eq!(
            (forbidden.status, forbidden.reason, forbidden.id.clone()),
            (403, "insufficient_scope", json!(9))
        );
        let challenge = &forbidden.headers[0].1;
        assert!(
            challenge.contains("error=\"insufficient_scope\", scope=\"images:generate\""),
            "{challenge}"
        );
        assert!(challenge.contains("resource_metadata=\"https://gw.example.com/.well-known/oauth-protected-resource\""));
        assert!(body(&config, call, &held(&["images:generate"])).is_ok());
        let list = br#"{"jsonrpc":"2.0","id":9,"method":"tools/list"}"#;
        assert!(body(&config, list, &held(&[])).is_ok(), "listing needs no scope");
        assert!(tool_rights(&config, &held(&["images:read"]).identity).no_calls);
        assert!(!tool_rights(&config, &held(&["images:generate"]).identity).no_calls);

        for path in [
            "/.well-known/oauth-protected-resource",
            "/.well-known/oauth-protected-resource/mcp",
        ] {
            let head = RequestHead {
                method: "GET",
                path,
                end_of_stream: true,
                ..Default::default()
            };
            let HeadVerdict::Serve(document) = run(&config, &head) else {
                panic!("{path} not served")
            };
            let document: serde_json::Value = serde_json::from_str(&document).unwrap();
            assert_eq!(document["resource"], "https://gw.example.com/mcp");
            assert_eq!(document["authorization_servers"], json!(["https://iam.example.com"]));
        }
        let HeadVerdict::Reject(unauthorized) = run(&config, &post(None, None)) else {
            panic!()
        };
        assert_eq!(
            unauthorized.headers[0].1,
            "Bearer realm=\"mcp-image-gateway\", resource_metadata=\"https://gw.example.com/.well-known/oauth-protected-resource\""
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
        let HeadVerdict::Reject(reject) = run(&config, &head) else {
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
        let HeadVerdict::InspectBody(Admitted { identity, .. }, _) = run(&config, &head) else {
            panic!("valid token refused");
        };
        assert_eq!((identity.user.as_str(), identity.org.as_str()), ("alice", "acme"));
        assert!(config.assertion.is_none(), "no key configured: nothing is signed");
    }

    #[test]
    fn a_tool_can_have_a_larger_body_limit() {
        let (config, _) = setup();
        let key = Ed25519KeyPair::generate();
        let jwk: serde_json::Value = serde_json::from_str(&key.public_key().to_jwk()).unwrap();
        let spec = json!({
            "max_body_bytes_per_tool": {"edit_image": 4096},
            "jwt": {"issuer": "iss", "audiences": ["aud"], "jwks": {"keys": [jwk]}}
        });
        let config_per_tool = FilterConfig::from_json(spec.to_string().as_bytes()).unwrap();
        assert_eq!(
            (config_per_tool.max_body_bytes, config_per_tool.body_read_limit),
            (2048, 4096)
        );
        let body_of = |tool: &str, len: usize| {
            let head = format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{tool}","arguments":{{"prompt":""#
            );
            let tail = r#"","images":["upload://x"]}}}"#;
            let mut body = head.into_bytes();
            body.resize(len - tail.len(), b'a');
            body.extend_from_slice(tail.as_bytes());
            body
        };
        let edit = body_of("edit_image", 3000);
        assert!(
            body(&config_per_tool, &edit, &held(&[])).is_ok(),
            "edit_image may use 4 KiB"
        );
        let generate = body_of("generate_image", 3000);
        let refused = body(&config_per_tool, &generate, &held(&[])).unwrap_err();
        assert_eq!(
            (refused.status, refused.id.clone()),
            (413, json!(1)),
            "others keep 2 KiB"
        );
        assert!(refused.message.contains("2048"));
        assert_eq!(
            body(&config, &edit, &held(&[])).unwrap_err().status,
            413,
            "the default is 2 KiB for all"
        );
    }

    #[test]
    fn body_limits() {
        let (config, _) = setup();
        let mut bytes =
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"generate_image","arguments":{"prompt":""#
                .to_vec();
        let tail = br#""}}}"#;
        bytes.resize(2048 - tail.len(), b'a');
        bytes.extend_from_slice(tail);
        assert_eq!(bytes.len(), 2048);
        assert!(body(&config, &bytes, &held(&[])).is_ok());
        bytes.insert(100, b'a');
        assert_eq!(body(&config, &bytes, &held(&[])).unwrap_err().status, 413);
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;
    use crate::test_support::MemStore;
    use jwt_simple::prelude::*;
    use serde_json::json;

    #[test]
    fn head_charges_the_caller_bucket() {
        let key = Ed25519KeyPair::generate();
        let jwk: serde_json::Value = serde_json::from_str(&key.public_key().to_jwk()).unwrap();
        let config = FilterConfig::from_json(
            json!({
                "jwt": {"issuer": "iss", "audiences": ["aud"], "jwks": {"keys": [jwk]}},
                "rate_limits": {"per_caller": {"requests_per_second": 0.01, "burst": 2}}
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let now = 1_800_000_000u64;
        let mut claims = Claims::with_custom_claims(json!({"org": "acme"}), Duration::from_secs(600))
            .with_issuer("iss")
            .with_audience("aud")
            .with_subject("alice");
        claims.issued_at = Some(UnixTimeStamp::from_secs(now));
        claims.invalid_before = Some(UnixTimeStamp::from_secs(now));
        claims.expires_at = Some(UnixTimeStamp::from_secs(now + 600));
        let auth = format!("Bearer {}", key.sign(claims).unwrap());
        let head = RequestHead {
            method: "POST",
            path: "/mcp",
            authorization: Some(&auth),
            content_type: Some("application/json"),
            accept: Some("application/json, text/event-stream"),
            ..Default::default()
        };
        let store = MemStore::default();
        let mut cache = TokenCache::new(4);
        let mut leases = Leases::default();
        let mut statuses = Vec::new();
        for i in 0..3 {
            let mut host = Host {
                cache: &mut cache,
                leases: &mut leases,
                store: &store,
                now_ms: now * 1000 + i,
            };
            statuses.push(match check_head(&config, &head, &mut host) {
                HeadVerdict::Reject(r) | HeadVerdict::RejectAfterBody(r) => r.status,
                _ => 200,
            });
        }
        assert_eq!(statuses, vec![200, 200, 429]);
    }
}
