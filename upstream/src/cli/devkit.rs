//! Development kit: a local signing key standing in for the company IAM,
//! dev tokens, the URL-signing secret, and Envoy config rendering. Used by
//! `make run`, `make token` and the integration tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use jwt_simple::prelude::*;
use rand::RngCore;
use serde_json::{json, Value};

use crate::provenance::dev_ca::write_secret;

/// Issuer of development tokens: the gateway's own authorization server
/// (`mcp-image-gateway authorize`, the development sign-in of `make run`):
/// the gateway's public origin, with the `/` a root URL is rendered with
/// (clients compare issuers as strings).
pub fn dev_issuer(public_base_url: &str) -> String {
    format!("{}/", public_base_url.trim_end_matches('/'))
}
const SIGNING_KEY_FILE: &str = "dev-signing-key.jwk";
const URL_KEY_FILE: &str = "url-signing.key";
const IDENTITY_KEYS_FILE: &str = "identity.keys";
const AUDIT_KEYS_FILE: &str = "audit.keys";
const API_KEY_FILE: &str = "dev-api-key";
/// Seals the authorization server's registered client ids.
const AUTHZ_KEYS_FILE: &str = "authz.keys";
/// Scope dev tokens carry and `tools/call` requires.
pub const TOOLS_SCOPE: &str = "images:generate";

/// The MCP resource URL (token audience) for a public base URL.
pub fn audience(public_base_url: &str) -> String {
    format!("{}/mcp", public_base_url.trim_end_matches('/'))
}

/// Creates, once, the dev signing key, the URL-signing secret and the
/// Content Credentials CA and signing certificate under `state_dir`.
pub fn init(state_dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
    let key_path = state_dir.join(SIGNING_KEY_FILE);
    if !key_path.exists() {
        let key = ES256KeyPair::generate();
        let kid = format!("dev-{}", &key.jwk_thumbprint()[..12]);
        write_secret(&key_path, &key.with_key_id(&kid).to_jwk())?;
    }
    let api_key_path = state_dir.join(API_KEY_FILE);
    if !api_key_path.exists() {
        write_secret(&api_key_path, &new_api_key())?;
    }
    for (file, key_id) in [
        (URL_KEY_FILE, "url-1"),
        (IDENTITY_KEYS_FILE, "edge-1"),
        (AUDIT_KEYS_FILE, "audit-1"),
        (AUTHZ_KEYS_FILE, "authz-1"),
    ] {
        let path = state_dir.join(file);
        if !path.exists() {
            let mut secret = [0u8; 32];
            rand::rng().fill_bytes(&mut secret);
            write_secret(&path, &format!("{key_id} {}\n", hex::encode(secret)))?;
        }
    }
    crate::provenance::dev_ca::init(state_dir)?;
    Ok(())
}

/// The filter's `identity_assertion` settings: the newest key of the
/// upstream's identity key file, so both ends share it with no extra step.
pub fn identity_assertion_settings(state_dir: &Path) -> anyhow::Result<Value> {
    let ring = crate::storage::keyring::Keyring::from_file(
        &state_dir.join(IDENTITY_KEYS_FILE),
        crate::identity::MIN_KEY_BYTES,
    )?;
    let (key_id, secret) = ring.newest();
    Ok(json!({"key_id": key_id, "key": hex::encode(secret)}))
}

/// A fresh API key: a prefix that says what it is, then 32 random bytes.
pub fn new_api_key() -> String {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    format!("mig_{}", hex::encode(secret))
}

/// The value admins put in `api_keys[].sha256`.
pub fn api_key_hash(key: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(key.as_bytes()))
}

/// Every object of `value` with its keys in order, so rendered JSON is the
/// same whatever order serde_json's map keeps (c2pa turns on `preserve_order`).
pub fn sort_keys(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.sort_keys();
            map.values_mut().for_each(sort_keys);
        }
        Value::Array(items) => items.iter_mut().for_each(sort_keys),
        _ => {}
    }
}

/// The development API key (created by `init`).
pub fn dev_api_key(state_dir: &Path) -> anyhow::Result<String> {
    let path = state_dir.join(API_KEY_FILE);
    Ok(std::fs::read_to_string(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_string())
}

fn signing_key(state_dir: &Path) -> anyhow::Result<ES256KeyPair> {
    let path = state_dir.join(SIGNING_KEY_FILE);
    let jwk = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {} (run `mcp-image-gateway dev-init` first)", path.display()))?;
    ES256KeyPair::from_jwk(&jwk).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// The public JWKS of the dev signing key.
pub fn jwks(state_dir: &Path) -> anyhow::Result<Value> {
    let public: Value = serde_json::from_str(&signing_key(state_dir)?.public_key().to_jwk())?;
    Ok(json!({"keys": [public]}))
}

/// The edge filter configuration for the dev stack.
pub fn filter_config(state_dir: &Path, public_base_url: &str) -> anyhow::Result<Value> {
    Ok(json!({
        "max_body_bytes": 2048,
        "mcp_path": "/mcp",
        "jwt": {
            "issuer": dev_issuer(public_base_url),
            "audiences": [audience(public_base_url)],
            "org_claim": "org",
            "jwks": jwks(state_dir)?,
        },
        "api_keys": [{
            "id": "dev-key",
            "sha256": api_key_hash(&dev_api_key(state_dir)?),
            "org": "acme",
            "scopes": [TOOLS_SCOPE],
        }],
        "tools_call_scope": TOOLS_SCOPE,
        "identity_assertion": identity_assertion_settings(state_dir)?,
        "protected_resource": {
            "resource": audience(public_base_url),
            "authorization_servers": [dev_issuer(public_base_url)],
            "scopes_supported": [TOOLS_SCOPE],
        },
        "rate_limits": {
            "per_caller": {"requests_per_second": 10, "burst": 40},
            "per_org": {"requests_per_second": 50, "burst": 200},
            "daily_images_per_org": 2000,
        },
    }))
    .map(|mut config| {
        // The decision on Envoy's span when traces are exported.
        if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some_and(|e| !e.is_empty()) {
            config["tracing"] = json!({});
        }
        config
    })
}

/// What a dev token says.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// The issuer: `dev_issuer(public base URL)`.
    pub issuer: String,
    pub subject: String,
    pub org: String,
    pub audience: String,
    pub scope: String,
    pub valid_for_secs: u64,
    /// Unix time the token claims to be issued at; `None` means now.
    pub issued_at: Option<u64>,
}

/// Signs a dev token with the dev key.
pub fn mint_token(state_dir: &Path, request: &TokenRequest) -> anyhow::Result<String> {
    let claims = Claims::with_custom_claims(
        json!({"org": request.org, "scope": request.scope}),
        Duration::from_secs(request.valid_for_secs),
    )
    .with_issuer(&request.issuer)
    .with_audience(&request.audience)
    .with_subject(&request.subject);
    let mut claims = claims;
    if let Some(issued_at) = request.issued_at {
        claims.issued_at = Some(UnixTimeStamp::from_secs(issued_at));
        claims.invalid_before = Some(UnixTimeStamp::from_secs(issued_at));
        claims.expires_at = Some(UnixTimeStamp::from_secs(issued_at + request.valid_for_secs));
    }
    signing_key(state_dir)?
        .sign(claims)
        .map_err(|e| anyhow::anyhow!("signing the token: {e}"))
}

/// Browser hosts allowed to call /mcp (Envoy's CORS policy) in development:
/// loopback on any port, like the filter's default `allowed_origins`.
pub const DEV_CORS_ORIGIN_REGEX: &str = r"^https?://(localhost|127\.0\.0\.1|\[::1\])(:[0-9]+)?$";

/// Replaces every `${NAME}` in `template`; fails on a name without a value.
pub fn render(template: &str, vars: &BTreeMap<String, String>) -> anyhow::Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').context("unterminated ${ in template")?;
        let name = &after[..end];
        let value = vars
            .get(name)
            .with_context(|| format!("template needs a value for ${{{name}}}"))?;
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Where the `mcp_edge` filter's block sits in the Envoy template: from its
/// `- name: mcp_edge` line to the router's.
pub fn edge_filter_block(template: &str) -> anyhow::Result<std::ops::Range<usize>> {
    let start = template
        .find("          - name: mcp_edge\n")
        .context("the Envoy template has no mcp_edge filter")?;
    let end = template[start..]
        .find("          - name: envoy.filters.http.router")
        .map(|end| start + end)
        .context("the Envoy template has no router after mcp_edge")?;
    Ok(start..end)
}

/// The Envoy template with its `mcp_edge` Wasm filter block replaced by
/// `module_filter` (envoy/dynamic-module-filter.yaml.tmpl): the edge filter
/// built as a dynamic module at `module_path`, same name and settings.
pub fn with_dynamic_module(template: &str, module_filter: &str, module_path: &Path) -> anyhow::Result<String> {
    let block = edge_filter_block(template)?;
    let module = module_filter.replace("${MODULE_PATH}", &module_path.display().to_string());
    Ok(format!(
        "{}{}{}",
        &template[..block.start],
        module,
        &template[block.end..]
    ))
}

/// Envoy's part of OpenTelemetry tracing, from the standard variables: the
/// connection manager's `tracing` block (`envoy/tracing.yaml.tmpl`) and
/// the collector's cluster. `None` unless `OTEL_EXPORTER_OTLP_ENDPOINT` is
/// set (OTLP/gRPC, `http://host:port`).
pub struct EnvoyTracing {
    pub hcm: String,
    pub cluster: String,
}

pub fn envoy_tracing(
    block_template: &str,
    env: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<Option<EnvoyTracing>> {
    let Some(endpoint) = env("OTEL_EXPORTER_OTLP_ENDPOINT").filter(|e| !e.is_empty()) else {
        return Ok(None);
    };
    let authority = endpoint
        .split_once("://")
        .map_or(endpoint.as_str(), |(_, rest)| rest)
        .trim_end_matches('/');
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (
            host,
            port.parse::<u16>().context("OTEL_EXPORTER_OTLP_ENDPOINT: bad port")?,
        ),
        None => (authority, 4317),
    };
    anyhow::ensure!(
        !host.is_empty(),
        "OTEL_EXPORTER_OTLP_ENDPOINT has no host: {endpoint:?}"
    );
    // The OpenTelemetry sampler variables, as far as Envoy's percentage goes.
    let ratio = env("OTEL_TRACES_SAMPLER_ARG")
        .and_then(|a| a.parse::<f64>().ok())
        .unwrap_or(1.0);
    let percent = match env("OTEL_TRACES_SAMPLER").as_deref() {
        None | Some("always_on" | "parentbased_always_on") => 100.0,
        Some("always_off" | "parentbased_always_off") => 0.0,
        Some("traceidratio" | "parentbased_traceidratio") => (ratio * 100.0).clamp(0.0, 100.0),
        Some(other) => anyhow::bail!("OTEL_TRACES_SAMPLER={other:?} is not a sampler Envoy can follow"),
    };
    let service = env("OTEL_SERVICE_NAME").map_or_else(|| "mcp-gateway-edge".to_string(), |s| format!("{s}-edge"));
    let hcm = render(
        block_template,
        &BTreeMap::from([
            ("SAMPLING_PERCENT".to_string(), percent.to_string()),
            ("SERVICE_NAME".to_string(), service),
        ]),
    )?;
    let cluster = format!(
        "  - name: otel_collector\n    type: STRICT_DNS\n    connect_timeout: 1s\n    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: {{ http2_protocol_options: {{}} }}\n    load_assignment:\n      cluster_name: otel_collector\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{ address: {{ socket_address: {{ address: {host}, port_value: {port} }} }} }}\n"
    );
    Ok(Some(EnvoyTracing { hcm, cluster }))
}

/// Creates, once, a self-signed development certificate for `localhost` and
/// `127.0.0.1` (P-256, via the `openssl` command). Returns (certificate, key) paths.
pub fn ensure_dev_certificate(state_dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (cert, key) = (state_dir.join("tls.crt"), state_dir.join("tls.key"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .args([
            "-days",
            "365",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ])
        // A leaf, not a CA: TLS clients (rustls, browsers) refuse a CA certificate as the server's own.
        .args([
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-addext",
            "extendedKeyUsage=serverAuth",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .context("running openssl to create the development certificate")?;
    anyhow::ensure!(status.success(), "openssl could not create the development certificate");
    Ok((cert, key))
}

/// An extra Envoy listener on `port` terminating TLS 1.3 only (TLS 1.2 and
/// older handshakes fail) in front of the same HTTP stack as the plain one.
/// Local only, so without SO_REUSEPORT: a port taken fails to bind.
pub fn tls_listener_yaml(cert: &Path, key: &Path, port: u16) -> String {
    format!(
        r#"  - name: mcp_public_tls
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {port} }}
    enable_reuse_port: false
    per_connection_buffer_limit_bytes: 32768
    filter_chains:
    - filters:
      - *mcp_http
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_params:
              tls_minimum_protocol_version: TLSv1_3
              tls_maximum_protocol_version: TLSv1_3
            alpn_protocols: ["h2", "http/1.1"]
            tls_certificates:
            - certificate_chain: {{ filename: "{}" }}
              private_key: {{ filename: "{}" }}
"#,
        cert.display(),
        key.display()
    )
}

/// Default location of the state folder relative to the repository.
pub fn default_state_dir() -> PathBuf {
    PathBuf::from(".state")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_fills_and_refuses_unknown() {
        let vars = BTreeMap::from([("A".to_string(), "1".to_string()), ("B".to_string(), "two".to_string())]);
        assert_eq!(render("x ${A} y ${B}${A}", &vars).unwrap(), "x 1 y two1");
        assert!(render("${C}", &vars).unwrap_err().to_string().contains("${C}"));
        assert!(render("${A", &vars).is_err());
    }

    #[test]
    fn init_is_idempotent_and_tokens_verify() {
        let dir = std::env::temp_dir().join(format!("devkit-{}", uuid::Uuid::new_v4()));
        init(&dir).unwrap();
        let first = std::fs::read_to_string(dir.join(SIGNING_KEY_FILE)).unwrap();
        init(&dir).unwrap();
        assert_eq!(first, std::fs::read_to_string(dir.join(SIGNING_KEY_FILE)).unwrap());
        let token = mint_token(
            &dir,
            &TokenRequest {
                issuer: dev_issuer("http://127.0.0.1:8080/"),
                subject: "alice".into(),
                org: "acme".into(),
                audience: audience("http://127.0.0.1:8080/"),
                scope: "images:generate".into(),
                valid_for_secs: 60,
                issued_at: None,
            },
        )
        .unwrap();
        let public = signing_key(&dir).unwrap().public_key();
        let claims = public.verify_token::<Value>(&token, None).unwrap();
        assert_eq!(claims.subject.as_deref(), Some("alice"));
        assert_eq!(claims.custom["org"], "acme");
        let config = filter_config(&dir, "http://127.0.0.1:8080").unwrap();
        assert_eq!(config["jwt"]["audiences"][0], "http://127.0.0.1:8080/mcp");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
