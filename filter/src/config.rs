//! Plugin configuration: the JSON an admin writes into Envoy's `configuration`
//! field (`FilterConfigSpec`), and the compiled form the filter runs on
//! (`FilterConfig`). A bad configuration is refused at `on_configure` with a
//! message naming the field, never discovered per request.

use serde::Deserialize;

use crate::assertion::{self, AssertionSigner};
use crate::credentials::{ApiKeyError, ApiKeySpec, ApiKeys};
use crate::global_limit::{GlobalRateLimit, GlobalRateLimitError, GlobalRateLimitSpec};
use crate::jwt::{JwtSettingsError, JwtSpec, JwtVerifier};
use crate::limits::{LimitsError, RateLimits, RateLimitsSpec};
use crate::phases::Skips;
use crate::policy::{self, CallPolicy};
use crate::span_tags::TracingSpec;
use crate::tool_access::{ToolAccess, ToolAccessError, ToolAccessSpec};
use crate::transport::{self, TransportPolicy};

/// Default cap on a request body, from the PRD (2 KiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 2048;

/// Default cap on an upstream response, sized with the upstream's image cap
/// (`GATEWAY_MAX_IMAGE_BYTES`, 4 MiB): such an image read as an MCP resource
/// travels as base64 in a JSON-RPC reply, a third larger, plus 64 KiB for
/// the envelope. A 4 MiB cap here would cut off every image over 3 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = (4 * 1024 * 1024usize).div_ceil(3) * 4 + 64 * 1024;

/// What the admin writes, as JSON: the edge filter's settings.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct FilterConfigSpec {
    /// Largest accepted request body in bytes (1 to 1048576): larger bodies get
    /// 413, checked on `Content-Length` and while the body streams.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Larger body limits for calls of named tools (`{"edit_image": 4096}`):
    /// the edge reads bodies up to the largest, then holds each call to its
    /// tool's; every other request keeps `max_body_bytes`.
    #[serde(default)]
    pub max_body_bytes_per_tool: std::collections::BTreeMap<String, usize>,
    /// The MCP endpoint: POSTs there must be one JSON-RPC 2.0 message.
    #[serde(default = "default_mcp_path")]
    pub mcp_path: String,
    /// Accepted `MCP-Protocol-Version` values; others get 400 with `-32022`
    /// and the supported list.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(default = "schema_defaults::protocol_versions"))]
    pub protocol_versions: Option<Vec<String>>,
    /// Accepted `Origin`s: a bare host (any port) or `scheme://host[:port|:*]`;
    /// other origins get 403. Requests without `Origin` are not browsers' and pass.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(default = "schema_defaults::allowed_origins"))]
    pub allowed_origins: Option<Vec<String>>,
    /// JSON-RPC methods let through to the upstream (by default, what the
    /// upstream serves); others get 404 with `-32601`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(default = "schema_defaults::allowed_methods"))]
    pub allowed_methods: Option<Vec<String>>,
    /// Tools `tools/call` may name; others get `-32602`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(default = "schema_defaults::allowed_tools"))]
    pub allowed_tools: Option<Vec<String>>,
    /// Longest `generate_image` / `edit_image` prompt, in characters: a cheap
    /// check at the edge (the upstream checks again).
    #[serde(default = "default_max_prompt_chars")]
    pub max_prompt_chars: usize,
    /// Largest `n` of one `generate_image` / `edit_image` call (the edge also
    /// checks that `images` holds 1 to 16 strings).
    #[serde(default = "default_max_images_per_call")]
    pub max_images_per_call: u64,
    /// IAM JWT verification: the trusted issuers (`issuers`, or one with the
    /// shorthand), their audiences, claims and keys, inline or fetched.
    /// Tokens with `alg: none`, HMAC algorithms, unknown `kid`s, a bad
    /// signature, wrong issuer or audience, expired or not-yet-valid times, or
    /// no `sub`/org claim get 401 with `WWW-Authenticate: Bearer …`.
    pub jwt: JwtSpec,
    /// API keys, sent as `x-api-key` or an opaque bearer; only their SHA-256 is
    /// configured, each mapped to an id, organisation, scopes and limits.
    #[serde(default)]
    pub api_keys: Vec<ApiKeySpec>,
    /// Token buckets per caller and per organisation, and daily image quotas,
    /// kept in Envoy's shared data (one limit across worker threads, per Envoy).
    #[serde(default)]
    pub rate_limits: RateLimitsSpec,
    /// Image counts shared by every Envoy replica, through a service speaking
    /// Envoy's `envoy.service.ratelimit.v3` API (`mcp-ratelimit`); none by default.
    #[serde(default)]
    pub global_rate_limit: Option<GlobalRateLimitSpec>,
    /// Scope a caller needs for `tools/call` (403 `insufficient_scope` without it).
    #[serde(default)]
    pub tools_call_scope: Option<String>,
    /// Per-tool access: a scope per tool and the tools each organisation may
    /// call. A caller without a tool's scope gets 403 `insufficient_scope`
    /// naming it; a tool not on its organisation's list gets 403 with `-32602`.
    /// `tools/list` shows each caller only the tools it may call (the identity
    /// assertion carries the list, so this needs `identity_assertion`).
    #[serde(default)]
    pub tool_access: ToolAccessSpec,
    /// RFC 9728 protected-resource metadata: served at
    /// `/.well-known/oauth-protected-resource[/mcp]` and named in every 401.
    #[serde(default)]
    pub protected_resource: Option<ProtectedResourceSpec>,
    /// Largest upstream response passed to the client (the output cap): a larger
    /// one is replaced by a JSON-RPC `-32603` error (502), a stream is cut off
    /// with an SSE error event. The default fits a `resources/read` of the
    /// largest image (the upstream's `GATEWAY_MAX_IMAGE_BYTES`, 4 MiB, as base64,
    /// plus 64 KiB); lower it only with the upstream's
    /// `GATEWAY_MAX_RESOURCE_REPLY_BYTES`.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
    /// Verified JWTs cached per worker until they expire (0 disables the cache).
    #[serde(default = "default_token_cache_entries")]
    pub token_cache_entries: usize,
    /// The key the filter signs the identity assertion (`x-mcp-identity`) with.
    /// Without it the upstream refuses every request. `make run` fills it from
    /// `.state/identity.keys`.
    #[serde(default)]
    pub identity_assertion: Option<assertion::Settings>,
    /// The filter's decision as tags on Envoy's trace span (`{"span_tags": true,
    /// "user_id": false}`); none by default.
    #[serde(default)]
    pub tracing: Option<TracingSpec>,
    /// Phases switched off for the benchmark's breakdown (`phases.rs`; only
    /// in a build with the `phase-switches` feature).
    #[cfg(feature = "phase-switches")]
    #[serde(default)]
    pub bench_skip: Vec<String>,
}

/// RFC 9728 metadata for this MCP server.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ProtectedResourceSpec {
    /// The MCP server's resource URL, e.g. `https://gw.example.com/mcp`.
    pub resource: String,
    /// Issuers of the authorization servers clients get tokens from (at least one).
    pub authorization_servers: Vec<String>,
    /// Scopes this server understands.
    #[serde(default)]
    pub scopes_supported: Vec<String>,
    /// A name for people (default `MCP image gateway`).
    #[serde(default)]
    pub resource_name: Option<String>,
}

/// Where the metadata is served and how 401s point to it.
#[derive(Debug, Clone)]
pub struct ProtectedResource {
    /// Paths answering GET with the metadata document.
    pub paths: Vec<String>,
    /// Absolute URL for `WWW-Authenticate: Bearer resource_metadata=...`.
    pub metadata_url: String,
    /// The metadata document.
    pub document: String,
}

impl ProtectedResource {
    fn from_spec(spec: &ProtectedResourceSpec) -> Result<Self, ConfigError> {
        let bad = || ConfigError::ProtectedResource(spec.resource.clone());
        let (scheme, rest) = spec.resource.split_once("://").ok_or_else(bad)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (rest.get(..i).ok_or_else(bad)?, rest.get(i..).ok_or_else(bad)?),
            None => (rest, ""),
        };
        if authority.is_empty() || spec.authorization_servers.is_empty() {
            return Err(bad());
        }
        let root = "/.well-known/oauth-protected-resource".to_string();
        let mut paths = vec![root.clone()];
        let path = path.trim_end_matches('/');
        if !path.is_empty() {
            paths.push(format!("{root}{path}"));
        }
        let document = serde_json::json!({
            "resource": spec.resource,
            "authorization_servers": spec.authorization_servers,
            "scopes_supported": spec.scopes_supported,
            "bearer_methods_supported": ["header"],
            "resource_name": spec.resource_name.clone().unwrap_or_else(|| "MCP image gateway".into()),
        })
        .to_string();
        Ok(Self {
            metadata_url: format!("{scheme}://{authority}{root}"),
            paths,
            document,
        })
    }
}

fn default_max_body_bytes() -> usize {
    DEFAULT_MAX_BODY_BYTES
}
fn default_mcp_path() -> String {
    "/mcp".to_string()
}
fn default_max_prompt_chars() -> usize {
    policy::DEFAULT_MAX_PROMPT_CHARS
}
fn default_max_images_per_call() -> u64 {
    policy::DEFAULT_MAX_IMAGES_PER_CALL
}
fn default_max_response_bytes() -> usize {
    DEFAULT_MAX_RESPONSE_BYTES
}
fn default_token_cache_entries() -> usize {
    10_000
}

/// The defaults of the optional lists, as the settings reference shows them
/// (the settings themselves fall back to the same constants when compiled).
#[cfg(feature = "schema")]
mod schema_defaults {
    fn strings(list: &[&str]) -> Option<Vec<String>> {
        Some(list.iter().map(|s| s.to_string()).collect())
    }
    pub fn protocol_versions() -> Option<Vec<String>> {
        strings(&crate::transport::DEFAULT_PROTOCOL_VERSIONS)
    }
    pub fn allowed_origins() -> Option<Vec<String>> {
        strings(&crate::transport::DEFAULT_ORIGIN_HOSTS)
    }
    pub fn allowed_methods() -> Option<Vec<String>> {
        strings(&crate::policy::DEFAULT_METHODS)
    }
    pub fn allowed_tools() -> Option<Vec<String>> {
        strings(&crate::policy::DEFAULT_TOOLS)
    }
}

/// The compiled configuration the filter runs on.
pub struct FilterConfig {
    /// The body limit of every request but the tools listed below.
    pub max_body_bytes: usize,
    /// Per-tool limits of `tools/call` bodies.
    pub tool_body_limits: std::collections::BTreeMap<String, usize>,
    /// The largest of all limits: what is read before the tool is known.
    pub body_read_limit: usize,
    pub mcp_path: String,
    pub transport: TransportPolicy,
    pub calls: CallPolicy,
    pub jwt: JwtVerifier,
    pub realm: String,
    pub api_keys: ApiKeys,
    /// Per-key overrides of the caller bucket, by key id.
    pub rate_limits: RateLimits,
    pub global_rate_limit: Option<GlobalRateLimit>,
    pub tools_call_scope: Option<String>,
    pub tool_access: ToolAccess,
    pub protected_resource: Option<ProtectedResource>,
    pub token_cache_entries: usize,
    pub max_response_bytes: usize,
    pub assertion: Option<AssertionSigner>,
    /// Span tags to write, when tracing asks for them.
    pub tracing: Option<TracingSpec>,
    /// Phases switched off (none outside the benchmark's build).
    pub skip: Skips,
    /// Which settings these are: what a worker may keep when they change.
    pub identity: SettingsIdentity,
}

/// Which settings a compiled configuration came from: the SHA-256 of the
/// bytes (reported as `mcp_edge_settings_info`) and a hash of each group of
/// fields that per-worker state depends on, so a settings change drops only
/// the state it invalidates (`worker_state.rs`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettingsIdentity {
    /// Hex SHA-256 of the settings bytes exactly as Envoy delivered them.
    pub sha256: String,
    /// `jwt`, `api_keys`, `token_cache_entries`: what verified tokens rest on.
    pub credentials: u64,
    /// `rate_limits`, `api_keys`: what leased bucket tokens were taken under.
    pub limits: u64,
    /// `identity_assertion`, `tool_access`, `allowed_tools`: what a caller's
    /// assertion prefix says.
    pub assertion: u64,
}

impl SettingsIdentity {
    fn of(bytes: &[u8], json: &serde_json::Value) -> Self {
        use sha2::Digest;
        let group = |fields: &[&str]| {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            for field in fields {
                json.get(*field).map(|v| v.to_string()).hash(&mut hasher);
            }
            hasher.finish()
        };
        Self {
            sha256: hex::encode(sha2::Sha256::digest(bytes)),
            credentials: group(&["jwt", "api_keys", "token_cache_entries"]),
            limits: group(&["rate_limits", "api_keys"]),
            assertion: group(&["identity_assertion", "tool_access", "allowed_tools", "tools_call_scope"]),
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("plugin configuration is empty; expected a JSON object with at least `jwt`")]
    Empty,
    #[error("plugin configuration is not valid JSON for this filter: {0}")]
    Json(#[from] serde_json::Error),
    #[error("`max_body_bytes` must be between 1 and 1048576, got {0}")]
    MaxBodyBytes(usize),
    #[error("`mcp_path` must start with '/', got {0:?}")]
    McpPath(String),
    #[error("`protocol_versions` must list versions like \"2025-06-18\", got {0:?}")]
    ProtocolVersions(Vec<String>),
    #[error("`{0}` must not be empty or contain empty entries")]
    EmptyList(&'static str),
    #[error("`max_prompt_chars`, `max_images_per_call` and `max_response_bytes` must be at least 1")]
    ZeroLimit,
    #[error("`protected_resource`: `resource` must be an absolute URL and `authorization_servers` non-empty (resource {0:?})")]
    ProtectedResource(String),
    #[error("`api_keys[{0}]`: requests_per_second must be > 0 and burst >= 1")]
    ApiKeyRate(usize),
    #[error("{0}")]
    ApiKeys(#[from] ApiKeyError),
    #[error("{0}")]
    Limits(#[from] LimitsError),
    #[error("{0}")]
    GlobalRateLimit(#[from] GlobalRateLimitError),
    #[error("{0}")]
    Jwt(#[from] JwtSettingsError),
    #[error("{0}")]
    Assertion(#[from] assertion::SettingsError),
    #[error("{0}")]
    ToolAccess(#[from] ToolAccessError),
    #[error("{0}")]
    BenchSkip(String),
}

impl FilterConfig {
    /// Parses and compiles the plugin configuration bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ConfigError::Empty);
        }
        let json: serde_json::Value = serde_json::from_slice(bytes)?;
        let identity = SettingsIdentity::of(bytes, &json);
        let spec = FilterConfigSpec::deserialize(json)?;
        let mut config = Self::try_from(spec)?;
        config.identity = identity;
        Ok(config)
    }
}

impl TryFrom<FilterConfigSpec> for FilterConfig {
    type Error = ConfigError;

    fn try_from(spec: FilterConfigSpec) -> Result<Self, Self::Error> {
        if spec.max_body_bytes == 0 || spec.max_body_bytes > 1024 * 1024 {
            return Err(ConfigError::MaxBodyBytes(spec.max_body_bytes));
        }
        if let Some((_, &bad)) = spec
            .max_body_bytes_per_tool
            .iter()
            .find(|(_, &limit)| limit == 0 || limit > 1024 * 1024)
        {
            return Err(ConfigError::MaxBodyBytes(bad));
        }
        let body_read_limit = spec
            .max_body_bytes_per_tool
            .values()
            .copied()
            .fold(spec.max_body_bytes, usize::max);
        if !spec.mcp_path.starts_with('/') {
            return Err(ConfigError::McpPath(spec.mcp_path));
        }
        let protocol_versions = spec
            .protocol_versions
            .unwrap_or_else(|| transport::DEFAULT_PROTOCOL_VERSIONS.map(str::to_string).to_vec());
        if protocol_versions.is_empty() || !protocol_versions.iter().all(|v| is_version(v)) {
            return Err(ConfigError::ProtocolVersions(protocol_versions));
        }
        let list = |value: Option<Vec<String>>, default: &[&str], field: &'static str| {
            let list = value.unwrap_or_else(|| default.iter().map(|s| s.to_string()).collect());
            if list.is_empty() || list.iter().any(|s| s.trim().is_empty()) {
                return Err(ConfigError::EmptyList(field));
            }
            Ok(list)
        };
        let allowed_origins = list(
            spec.allowed_origins,
            &transport::DEFAULT_ORIGIN_HOSTS,
            "allowed_origins",
        )?;
        let allowed_methods = list(spec.allowed_methods, &policy::DEFAULT_METHODS, "allowed_methods")?;
        let allowed_tools = list(spec.allowed_tools, &policy::DEFAULT_TOOLS, "allowed_tools")?;
        let tool_access =
            ToolAccess::from_spec(&spec.tool_access, &allowed_tools.iter().map(String::as_str).collect())?;
        if spec.max_prompt_chars == 0 || spec.max_images_per_call == 0 || spec.max_response_bytes == 0 {
            return Err(ConfigError::ZeroLimit);
        }
        let realm = spec.jwt.realm.clone();
        let jwt = JwtVerifier::from_spec(&spec.jwt)?;
        for (index, key) in spec.api_keys.iter().enumerate() {
            let rate_ok = key.requests_per_second.is_none_or(|r| r.is_finite() && r > 0.0);
            if !rate_ok || key.burst == Some(0) {
                return Err(ConfigError::ApiKeyRate(index));
            }
        }
        let api_keys = ApiKeys::from_specs(&spec.api_keys)?;
        let rate_limits = RateLimits::from_spec(&spec.rate_limits)?;
        let global_rate_limit = spec
            .global_rate_limit
            .as_ref()
            .map(GlobalRateLimit::from_spec)
            .transpose()?;
        let protected_resource = spec
            .protected_resource
            .as_ref()
            .map(ProtectedResource::from_spec)
            .transpose()?;
        Ok(Self {
            max_body_bytes: spec.max_body_bytes,
            tool_body_limits: spec.max_body_bytes_per_tool,
            body_read_limit,
            mcp_path: spec.mcp_path,
            transport: TransportPolicy {
                protocol_versions,
                allowed_origins,
            },
            calls: CallPolicy {
                allowed_methods: allowed_methods.into_iter().collect(),
                allowed_tools: allowed_tools.into_iter().collect(),
                max_prompt_chars: spec.max_prompt_chars,
                max_images_per_call: spec.max_images_per_call,
            },
            jwt,
            realm,
            api_keys,
            rate_limits,
            global_rate_limit,
            tools_call_scope: spec.tools_call_scope.filter(|s| !s.is_empty()),
            tool_access,
            protected_resource,
            token_cache_entries: spec.token_cache_entries,
            max_response_bytes: spec.max_response_bytes,
            assertion: spec
                .identity_assertion
                .as_ref()
                .map(AssertionSigner::from_settings)
                .transpose()?,
            tracing: spec.tracing.filter(|t| t.span_tags),
            #[cfg(feature = "phase-switches")]
            skip: Skips::from_names(&spec.bench_skip).map_err(ConfigError::BenchSkip)?,
            #[cfg(not(feature = "phase-switches"))]
            skip: Skips::default(),
            identity: SettingsIdentity::default(),
        })
    }
}

/// `YYYY-MM-DD`, the shape of every MCP protocol version.
fn is_version(value: &str) -> bool {
    let bytes = value.as_bytes();
    bytes.len() == 10
        && bytes.iter().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                *b == b'-'
            } else {
                b.is_ascii_digit()
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwks() -> serde_json::Value {
        serde_json::json!({"keys": [{
            "kty": "OKP", "crv": "Ed25519", "kid": "k1",
            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
        }]})
    }

    #[test]
    fn defaults_apply() {
        let json = serde_json::json!({"jwt": {"issuer": "i", "audiences": ["a"], "jwks": jwks()}});
        let config = FilterConfig::from_json(json.to_string().as_bytes()).expect("valid config");
        assert_eq!(config.max_body_bytes, 2048);
        assert_eq!(config.mcp_path, "/mcp");
    }

    #[test]
    fn refusals_name_the_field() {
        let cases: &[(&str, serde_json::Value, &str)] = &[
            ("empty", serde_json::Value::Null, "plugin configuration"),
            (
                "neither jwks nor jwks_uri",
                serde_json::json!({"jwt": {"issuer": "i", "audiences": ["a"]}}),
                "exactly one of `jwks` and `jwks_uri`",
            ),
            (
                "unknown field",
                serde_json::json!({"jwt": {"issuer": "i", "audiences": ["a"], "jwks": jwks()}, "max_body": 1}),
                "unknown field `max_body`",
            ),
            (
                "zero body limit",
                serde_json::json!({"max_body_bytes": 0, "jwt": {"issuer": "i", "audiences": ["a"], "jwks": jwks()}}),
                "`max_body_bytes`",
            ),
            (
                "no keys",
                serde_json::json!({"jwt": {"issuer": "i", "audiences": ["a"], "jwks": {"keys": []}}}),
                "`jwt`: `jwks` has no usable keys",
            ),
            (
                "no audience",
                serde_json::json!({"jwt": {"issuer": "i", "audiences": [], "jwks": jwks()}}),
                "`audiences`",
            ),
            (
                "bad protocol version",
                serde_json::json!({"protocol_versions": ["latest"], "jwt": {"issuer": "i", "audiences": ["a"], "jwks": jwks()}}),
                "`protocol_versions`",
            ),
            (
                "empty tool list",
                serde_json::json!({"allowed_tools": [], "jwt": {"issuer": "i", "audiences": ["a"], "jwks": jwks()}}),
                "`allowed_tools`",
            ),
            (
                "bad path",
                serde_json::json!({"mcp_path": "mcp", "jwt": {"issuer": "i", "audiences": ["a"], "jwks": jwks()}}),
                "`mcp_path`",
            ),
        ];
        for (name, json, expected) in cases {
            let bytes = if json.is_null() {
                Vec::new()
            } else {
                json.to_string().into_bytes()
            };
            match FilterConfig::from_json(&bytes) {
                Ok(_) => panic!("{name}: accepted"),
                Err(e) => assert!(e.to_string().contains(expected), "{name}: {e}"),
            }
        }
    }
}
