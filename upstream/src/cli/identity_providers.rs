//! The edge's identity providers, seen from the command line: the Envoy
//! clusters their JWKS URLs need (`render-envoy` adds one per
//! `jwks_uri.url` of the edge settings, named by the filter's own
//! `JwksEndpoint`, so the cluster the filter asks is the one rendered), and
//! trusting an IdP by its issuer (`trust-issuer`, behind `make run
//! IDP_ISSUER=…`): its metadata read (RFC 8414, else OpenID Connect
//! discovery), its `jwks_uri` taken, and the issuer added to the settings.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};
use mcp_edge_filter::jwt::JwksEndpoint;
use serde_json::{json, Value};

/// The CA bundle an https JWKS cluster verifies the IdP's certificate with
/// (Debian, Ubuntu and the Envoy images).
pub const TRUSTED_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The `jwks_uri.url`s of the edge settings: the shorthand's and each issuer's.
pub fn jwks_urls(settings: &Value) -> Vec<&str> {
    let jwt = &settings["jwt"];
    let issuers = jwt["issuers"].as_array().map(Vec::as_slice).unwrap_or_default();
    std::iter::once(jwt)
        .chain(issuers)
        .filter_map(|issuer| issuer["jwks_uri"]["url"].as_str())
        .collect()
}

/// Envoy clusters (YAML list items, as `EXTRA_CLUSTERS` holds them) for
/// every JWKS URL of `settings` whose cluster `existing` does not already
/// define: one per host and port.
pub fn jwks_clusters(settings: &Value, existing: &str) -> anyhow::Result<String> {
    let mut clusters = BTreeMap::new();
    for url in jwks_urls(settings) {
        let endpoint = JwksEndpoint::parse(url).map_err(|reason| anyhow::anyhow!("jwks_uri.url {url:?}: {reason}"))?;
        if !existing.contains(&format!("name: {}\n", endpoint.cluster)) {
            clusters.insert(endpoint.cluster.clone(), cluster_yaml(&endpoint));
        }
    }
    Ok(clusters.into_values().collect())
}

/// Adds `jwks_clusters` of `settings` to `vars["EXTRA_CLUSTERS"]`.
pub fn add_jwks_clusters(vars: &mut BTreeMap<String, String>, settings: &Value) -> anyhow::Result<()> {
    let extra = vars.entry("EXTRA_CLUSTERS".into()).or_default();
    let clusters = jwks_clusters(settings, extra)?;
    if !clusters.is_empty() {
        if !extra.is_empty() && !extra.ends_with('\n') {
            extra.push('\n');
        }
        extra.push_str(&clusters);
    }
    Ok(())
}

/// One cluster: an address or a name resolved by DNS (LOGICAL_DNS: IdPs
/// sit behind many addresses); https with SNI and the IdP's certificate
/// checked against the system CAs and its host name, http (loopback only,
/// as the filter allows) plain.
fn cluster_yaml(endpoint: &JwksEndpoint) -> String {
    let JwksEndpoint {
        host, port, cluster, ..
    } = endpoint;
    let literal = host.parse::<std::net::IpAddr>().is_ok();
    let kind = if literal { "STATIC" } else { "LOGICAL_DNS" };
    let mut yaml = format!(
        "  - name: {cluster}\n    type: {kind}\n    connect_timeout: 5s\n    dns_lookup_family: V4_PREFERRED\n    load_assignment:\n      cluster_name: {cluster}\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{ address: {{ socket_address: {{ address: \"{host}\", port_value: {port} }} }} }}\n"
    );
    if endpoint.tls {
        let (sni, san_type) = if literal {
            (String::new(), "IP_ADDRESS")
        } else {
            (format!("        sni: {host}\n"), "DNS")
        };
        yaml.push_str(&format!(
            "    transport_socket:\n      name: envoy.transport_sockets.tls\n      typed_config:\n        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n{sni}        common_tls_context:\n          validation_context:\n            trusted_ca: {{ filename: {TRUSTED_CA_FILE} }}\n            match_typed_subject_alt_names:\n            - san_type: {san_type}\n              matcher: {{ exact: \"{host}\" }}\n"
        ));
    }
    yaml
}

/// Where an issuer's metadata may be, in the order MCP clients try them:
/// RFC 8414 (the well-known part before the issuer's path), then OpenID
/// Connect discovery (appended, then inserted).
pub fn metadata_urls(issuer: &str) -> Vec<String> {
    let issuer = issuer.trim_end_matches('/');
    let (origin, path) = match issuer.split_once("://") {
        Some((scheme, rest)) => {
            let split = rest.find('/').unwrap_or(rest.len());
            (format!("{scheme}://{}", &rest[..split]), &rest[split..])
        }
        None => (issuer.to_string(), ""),
    };
    let mut urls = vec![
        format!("{origin}/.well-known/oauth-authorization-server{path}"),
        format!("{issuer}/.well-known/openid-configuration"),
        format!("{origin}/.well-known/openid-configuration{path}"),
    ];
    urls.dedup();
    urls
}

/// Reads the metadata of `issuer`: the first document found whose `issuer`
/// is exactly `issuer` (RFC 8414 §3.3) and that names a `jwks_uri`.
pub async fn discover(http: &reqwest::Client, issuer: &str) -> anyhow::Result<Value> {
    let mut tried = Vec::new();
    for url in metadata_urls(issuer) {
        let response = match http.get(&url).send().await {
            Ok(response) if response.status().is_success() => response,
            Ok(response) => {
                tried.push(format!("{url}: HTTP {}", response.status()));
                continue;
            }
            Err(error) => {
                tried.push(format!("{url}: {error}"));
                continue;
            }
        };
        let metadata: Value = response.json().await.with_context(|| format!("{url} is not JSON"))?;
        if metadata["issuer"].as_str() != Some(issuer) {
            bail!(
                "{url} names the issuer {}, not {issuer:?}: a client would refuse it too",
                metadata["issuer"]
            );
        }
        if metadata["jwks_uri"].as_str().is_none() {
            bail!("{url} names no jwks_uri");
        }
        return Ok(metadata);
    }
    bail!("no metadata for {issuer}: {}", tried.join("; "))
}

/// What `trust` adds.
#[derive(Debug, Clone)]
pub struct TrustedIssuer {
    pub issuer: String,
    pub jwks_url: String,
    pub audience: String,
    pub org_claim: String,
    pub scope_claim: String,
}

/// The issuer fields of the single-issuer shorthand (moved into `issuers`).
const SHORTHAND_FIELDS: [&str; 8] = [
    "issuer",
    "audiences",
    "org_claim",
    "org",
    "user_claim",
    "scope_claim",
    "jwks",
    "jwks_uri",
];

/// Adds (or updates) `trusted` in the edge settings: into `jwt.issuers`
/// (a shorthand issuer moves into the list beside it), and first among the
/// protected resource metadata's `authorization_servers`, where clients
/// look for a server to sign in with.
pub fn trust(settings: &mut Value, trusted: &TrustedIssuer) -> anyhow::Result<()> {
    let jwt = settings
        .get_mut("jwt")
        .and_then(Value::as_object_mut)
        .context("the settings have no `jwt` object")?;
    if !jwt.contains_key("issuers") {
        let shorthand: serde_json::Map<String, Value> = SHORTHAND_FIELDS
            .iter()
            .filter_map(|field| jwt.remove(*field).map(|value| (field.to_string(), value)))
            .collect();
        let issuers = if shorthand.is_empty() {
            vec![]
        } else {
            vec![Value::Object(shorthand)]
        };
        jwt.insert("issuers".into(), Value::Array(issuers));
    }
    let issuers = jwt
        .get_mut("issuers")
        .and_then(Value::as_array_mut)
        .context("`jwt.issuers` is not a list")?;
    let entry = json!({
        "issuer": trusted.issuer,
        "audiences": [trusted.audience],
        "org_claim": trusted.org_claim,
        "scope_claim": trusted.scope_claim,
        "jwks_uri": {"url": trusted.jwks_url},
    });
    match issuers.iter_mut().find(|i| i["issuer"] == trusted.issuer.as_str()) {
        Some(existing) => *existing = entry,
        None => issuers.push(entry),
    }
    if let Some(servers) = settings
        .pointer_mut("/protected_resource/authorization_servers")
        .and_then(Value::as_array_mut)
    {
        servers.retain(|server| server != trusted.issuer.as_str());
        servers.insert(0, Value::String(trusted.issuer.clone()));
    }
    Ok(())
}

/// `trust-issuer`: discovers `trusted.issuer`'s JWKS URL, adds the issuer
/// to the settings file, checks the result with the filter's own code and
/// replaces the file whole.
pub async fn trust_file(path: &Path, issuer: &str, shape: impl FnOnce(String) -> TrustedIssuer) -> anyhow::Result<()> {
    // The metadata names the keys every token is checked with: https only
    // (loopback excepted, as for the keys themselves), no redirects.
    mcp_edge_filter::jwt::JwksEndpoint::parse(issuer)
        .map_err(|reason| anyhow::anyhow!("the issuer {issuer:?}: {reason}"))?;
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let metadata = discover(&http, issuer).await?;
    let trusted = shape(metadata["jwks_uri"].as_str().unwrap_or_default().to_string());
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut settings: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    trust(&mut settings, &trusted)?;
    let text = format!("{}\n", serde_json::to_string_pretty(&settings)?);
    crate::cli::edge_settings::check(text.as_bytes())
        .map_err(|reason| anyhow::anyhow!("trusting {issuer} would make the settings invalid: {reason}"))?;
    let staging = path.with_extension("json.saving");
    std::fs::write(&staging, &text)?;
    std::fs::rename(&staging, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted() -> TrustedIssuer {
        TrustedIssuer {
            issuer: "https://idp.example.com/realms/acme".into(),
            jwks_url: "https://idp.example.com/realms/acme/protocol/openid-connect/certs".into(),
            audience: "http://127.0.0.1:8080/mcp".into(),
            org_claim: "org".into(),
            scope_claim: "scope".into(),
        }
    }

    #[test]
    fn trusting_moves_the_shorthand_into_a_list_and_is_idempotent() {
        let dir = std::env::temp_dir().join(format!("idp-trust-{}", uuid::Uuid::new_v4()));
        crate::cli::devkit::init(&dir).unwrap();
        let mut settings = crate::cli::devkit::filter_config(&dir, "http://127.0.0.1:8080").unwrap();
        let dev = settings["jwt"]["issuer"].clone();
        trust(&mut settings, &trusted()).unwrap();
        trust(&mut settings, &trusted()).unwrap();
        let issuers = settings["jwt"]["issuers"].as_array().unwrap();
        assert_eq!(issuers.len(), 2, "{settings:#}");
        assert_eq!(issuers[0]["issuer"], dev, "the development issuer stays trusted");
        assert_eq!(issuers[1]["jwks_uri"]["url"], trusted().jwks_url);
        assert!(settings["jwt"].get("issuer").is_none());
        let servers = &settings["protected_resource"]["authorization_servers"];
        assert_eq!(servers[0], trusted().issuer.as_str());
        assert_eq!(servers.as_array().unwrap().len(), 2);
        let bytes = settings.to_string();
        assert!(
            crate::cli::edge_settings::check(bytes.as_bytes()).is_ok(),
            "{:?}",
            crate::cli::edge_settings::check(bytes.as_bytes())
        );
        let clusters = jwks_clusters(&settings, "").unwrap();
        assert!(clusters.contains("name: jwks_idp_example_com_443_"), "{clusters}");
        assert!(clusters.contains("sni: idp.example.com"));
        assert!(clusters.contains("type: LOGICAL_DNS"));
        assert_eq!(
            jwks_clusters(&settings, &clusters).unwrap(),
            "",
            "an existing cluster is not rendered twice"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn loopback_clusters_are_plain_and_static() {
        let settings = json!({"jwt": {"issuers": [
            {"issuer": "a", "jwks_uri": {"url": "http://127.0.0.1:4000/jwks"}},
            {"issuer": "b", "jwks_uri": {"url": "http://127.0.0.1:4000/other"}},
            {"issuer": "c", "jwks": {}}
        ]}});
        let clusters = jwks_clusters(&settings, "").unwrap();
        assert_eq!(
            clusters.matches("- name:").count(),
            1,
            "one per host and port: {clusters}"
        );
        assert!(clusters.contains("type: STATIC") && !clusters.contains("transport_socket"));
        let bad = json!({"jwt": {"jwks_uri": {"url": "http://idp.example.com/jwks"}}});
        assert!(jwks_clusters(&bad, "").unwrap_err().to_string().contains("https"));
    }

    #[test]
    fn metadata_is_looked_for_where_clients_look() {
        assert_eq!(
            metadata_urls("https://idp.example.com/realms/acme"),
            vec![
                "https://idp.example.com/.well-known/oauth-authorization-server/realms/acme",
                "https://idp.example.com/realms/acme/.well-known/openid-configuration",
                "https://idp.example.com/.well-known/openid-configuration/realms/acme",
            ]
        );
        assert_eq!(
            metadata_urls("https://idp.example.com/"),
            vec![
                "https://idp.example.com/.well-known/oauth-authorization-server",
                "https://idp.example.com/.well-known/openid-configuration",
            ]
        );
    }

    /// An IdP with OIDC discovery only (as Entra ID): found on the second try.
    #[tokio::test]
    async fn discovery_falls_back_to_openid_configuration() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}/tenant", listener.local_addr().unwrap());
        let document = json!({"issuer": issuer, "jwks_uri": format!("{issuer}/keys")});
        let app = axum::Router::new().route(
            "/tenant/.well-known/openid-configuration",
            axum::routing::get(move || async move { axum::Json(document) }),
        );
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let metadata = discover(&http, &issuer).await.unwrap();
        assert_eq!(metadata["jwks_uri"], format!("{issuer}/keys"));
        let wrong = discover(&http, &format!("{issuer}/other")).await.unwrap_err();
        assert!(wrong.to_string().contains("no metadata"), "{wrong}");
        server.abort();
    }
}
