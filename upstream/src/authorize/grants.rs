//! The rules of the authorization code flow, as pure functions: what an
//! authorization request must carry (PKCE S256, this server's resource,
//! known scopes), the records kept between the steps, and how a code or a
//! refresh token is redeemed.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::clients::Client;

/// An OAuth error (RFC 6749 §4.1.2.1 and §5.2, RFC 8707 `invalid_target`):
/// the code and a message a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub code: &'static str,
    pub message: String,
}

impl OAuthError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// The query of `GET /oauth/authorize`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AuthorizeQuery {
    pub response_type: Option<String>,
    pub client_id: Option<String>,
    pub redirect_uri: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub state: Option<String>,
    pub scope: Option<String>,
    pub resource: Option<String>,
}

/// What this server grants: its resource (the MCP URL) and scopes.
#[derive(Debug, Clone)]
pub struct Grantable {
    pub resource: String,
    pub scopes: Vec<String>,
}

/// A sign-in in progress: what the client asked for, bound to the browser
/// that asked (the hash of a cookie only that browser holds).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pending {
    pub client_id: String,
    pub client_name: String,
    pub redirect_uri: String,
    /// Whether the request named its redirect URI (then the token request must too).
    #[serde(default = "yes")]
    pub redirect_uri_sent: bool,
    pub code_challenge: String,
    pub state: Option<String>,
    pub scope: String,
    pub resource: String,
    pub browser: String,
    /// Who signed in, once known.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub org: Option<String>,
    /// The upstream IdP leg: our PKCE verifier and nonce there.
    #[serde(default)]
    pub idp_verifier: Option<String>,
    #[serde(default)]
    pub idp_nonce: Option<String>,
}

/// What a code or a refresh token stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub client_id: String,
    pub user: String,
    pub org: String,
    pub scope: String,
    pub resource: String,
    /// Who vouched for the user: `dev` or the IdP's issuer.
    pub idp: String,
    /// Codes only: where the code went (when the request named it) and the
    /// PKCE challenge.
    #[serde(default)]
    pub redirect_uri: Option<String>,
    #[serde(default)]
    pub code_challenge: Option<String>,
    /// The sign-in this grant descends from: refresh tokens rotate within
    /// it, a replayed one revokes all of it, and none outlives its end.
    #[serde(default)]
    pub family: String,
    /// Unix seconds after which no refresh is granted (a new sign-in is).
    #[serde(default)]
    pub family_expires_at: u64,
}

fn yes() -> bool {
    true
}

/// Checks an authorization request from a known client whose redirect URI
/// matched; returns the scope to grant and the resource.
pub fn check_request(query: &AuthorizeQuery, grantable: &Grantable) -> Result<(String, String), OAuthError> {
    if query.response_type.as_deref() != Some("code") {
        return Err(OAuthError::new(
            "unsupported_response_type",
            "only response_type=code (the authorization code flow) is supported",
        ));
    }
    match (query.code_challenge.as_deref(), query.code_challenge_method.as_deref()) {
        (Some(challenge), Some("S256")) if is_pkce_value(challenge) => {}
        (Some(_), Some("S256")) => {
            return Err(OAuthError::new(
                "invalid_request",
                "code_challenge is not a base64url SHA-256",
            ))
        }
        (None, _) => {
            return Err(OAuthError::new(
                "invalid_request",
                "PKCE is required: send code_challenge and code_challenge_method=S256",
            ))
        }
        (Some(_), _) => {
            return Err(OAuthError::new(
                "invalid_request",
                "code_challenge_method must be S256 (plain is not accepted)",
            ))
        }
    }
    let resource = check_resource(query.resource.as_deref(), grantable)?;
    let scope = check_scope(query.scope.as_deref(), grantable)?;
    Ok((scope, resource))
}

/// RFC 8707: the resource, when named, must be this MCP server.
pub fn check_resource(resource: Option<&str>, grantable: &Grantable) -> Result<String, OAuthError> {
    match resource {
        None => Ok(grantable.resource.clone()),
        Some(resource) if same_resource(resource, &grantable.resource) => Ok(grantable.resource.clone()),
        Some(resource) => Err(OAuthError::new(
            "invalid_target",
            format!(
                "this authorization server issues tokens for {} only, not {resource}",
                grantable.resource
            ),
        )),
    }
}

/// The same resource, ignoring one trailing slash (clients differ there).
fn same_resource(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// The scopes to grant: those asked for, each offered; all offered when
/// none are named. OpenID scopes are accepted and dropped (no ID tokens here).
pub fn check_scope(requested: Option<&str>, grantable: &Grantable) -> Result<String, OAuthError> {
    let requested: Vec<&str> = requested
        .unwrap_or_default()
        .split_whitespace()
        .filter(|s| !is_openid_scope(s))
        .collect();
    if requested.is_empty() {
        return Ok(grantable.scopes.join(" "));
    }
    if let Some(unknown) = requested.iter().find(|s| !grantable.scopes.iter().any(|o| o == *s)) {
        return Err(OAuthError::new(
            "invalid_scope",
            format!(
                "scope {unknown:?} is not offered; this server offers: {}",
                grantable.scopes.join(" ")
            ),
        ));
    }
    let mut granted: Vec<&str> = Vec::new();
    for scope in requested {
        if !granted.contains(&scope) {
            granted.push(scope);
        }
    }
    Ok(granted.join(" "))
}

/// OpenID scopes clients add out of habit: accepted, never granted (no ID tokens here).
fn is_openid_scope(scope: &str) -> bool {
    matches!(scope, "openid" | "profile" | "email" | "offline_access")
}

/// Whether a value has the shape of our random tokens (sign-in ids, states):
/// anything else is refused before the store is asked.
pub fn is_random_token(value: &str) -> bool {
    is_pkce_value(value)
}

/// RFC 7636: base64url of 32 bytes (43 characters).
fn is_pkce_value(value: &str) -> bool {
    value.len() == 43
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether `verifier` answers `challenge` (S256).
pub fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    let shape_ok = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    shape_ok && URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) == challenge
}

/// A PKCE challenge for a verifier (our own leg to the IdP).
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// Redeems a code: the client, the redirect URI and the verifier must be
/// those the code was issued for.
pub fn redeem_code(
    grant: &Grant,
    client: &Client,
    redirect_uri: Option<&str>,
    verifier: Option<&str>,
    resource: Option<&str>,
) -> Result<(), OAuthError> {
    if grant.client_id != client.id {
        return Err(OAuthError::new(
            "invalid_grant",
            "the code was issued to another client",
        ));
    }
    let named_then = grant.redirect_uri.is_some();
    if (named_then || redirect_uri.is_some()) && redirect_uri != grant.redirect_uri.as_deref() {
        return Err(OAuthError::new(
            "invalid_grant",
            "redirect_uri is not the one the code was issued for",
        ));
    }
    let Some(verifier) = verifier else {
        return Err(OAuthError::new("invalid_request", "code_verifier is required (PKCE)"));
    };
    if !pkce_matches(verifier, grant.code_challenge.as_deref().unwrap_or_default()) {
        return Err(OAuthError::new(
            "invalid_grant",
            "code_verifier does not match the code_challenge",
        ));
    }
    check_same_resource(grant, resource)
}

/// A refresh keeps the resource and may narrow, never widen, the scope.
pub fn refresh_scope(
    grant: &Grant,
    client: &Client,
    scope: Option<&str>,
    resource: Option<&str>,
) -> Result<String, OAuthError> {
    if grant.client_id != client.id {
        return Err(OAuthError::new(
            "invalid_grant",
            "the refresh token was issued to another client",
        ));
    }
    check_same_resource(grant, resource)?;
    let asked: Vec<&str> = scope
        .unwrap_or_default()
        .split_whitespace()
        .filter(|s| !is_openid_scope(s))
        .collect();
    if asked.is_empty() {
        return Ok(grant.scope.clone());
    }
    let held: Vec<&str> = grant.scope.split_whitespace().collect();
    if let Some(extra) = asked.iter().find(|s| !held.contains(s)) {
        return Err(OAuthError::new(
            "invalid_scope",
            format!("scope {extra:?} was not granted; sign in again to ask for it"),
        ));
    }
    Ok(asked.join(" "))
}

fn check_same_resource(grant: &Grant, resource: Option<&str>) -> Result<(), OAuthError> {
    match resource {
        Some(resource) if !same_resource(resource, &grant.resource) => Err(OAuthError::new(
            "invalid_target",
            format!("the grant is for {}, not {resource}", grant.resource),
        )),
        _ => Ok(()),
    }
}

/// A random value for codes, tokens and states: 32 bytes, base64url.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// How secrets are stored and looked up: by their SHA-256.
pub fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grantable() -> Grantable {
        Grantable {
            resource: "http://127.0.0.1:8080/mcp".into(),
            scopes: vec!["images:generate".into(), "images:admin".into()],
        }
    }

    fn query() -> AuthorizeQuery {
        AuthorizeQuery {
            response_type: Some("code".into()),
            client_id: Some("c".into()),
            redirect_uri: Some("http://127.0.0.1:1/cb".into()),
            code_challenge: Some(pkce_challenge(&"v".repeat(43))),
            code_challenge_method: Some("S256".into()),
            state: Some("s".into()),
            scope: Some("images:generate".into()),
            resource: Some("http://127.0.0.1:8080/mcp".into()),
        }
    }

    #[test]
    fn authorization_requests_need_pkce_s256_our_resource_and_known_scopes() {
        assert_eq!(
            check_request(&query(), &grantable()),
            Ok(("images:generate".into(), "http://127.0.0.1:8080/mcp".into()))
        );
        type Change = Box<dyn Fn(&mut AuthorizeQuery)>;
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(|q| q.response_type = Some("token".into())),
                "unsupported_response_type",
            ),
            (Box::new(|q| q.code_challenge = None), "invalid_request"),
            (
                Box::new(|q| q.code_challenge_method = Some("plain".into())),
                "invalid_request",
            ),
            (Box::new(|q| q.code_challenge = Some("short".into())), "invalid_request"),
            (
                Box::new(|q| q.resource = Some("https://other.example/mcp".into())),
                "invalid_target",
            ),
            (
                Box::new(|q| q.scope = Some("images:generate root".into())),
                "invalid_scope",
            ),
        ];
        for (change, code) in cases {
            let mut q = query();
            change(&mut q);
            assert_eq!(check_request(&q, &grantable()).unwrap_err().code, code, "{q:?}");
        }
        let mut q = query();
        q.scope = Some("openid images:admin images:admin".into());
        q.resource = Some("http://127.0.0.1:8080/mcp/".into());
        assert_eq!(check_request(&q, &grantable()).unwrap().0, "images:admin");
        q.scope = None;
        assert_eq!(
            check_request(&q, &grantable()).unwrap().0,
            "images:generate images:admin"
        );
    }

    fn code_grant() -> Grant {
        Grant {
            client_id: "c".into(),
            user: "alice".into(),
            org: "acme".into(),
            scope: "images:generate".into(),
            resource: "http://127.0.0.1:8080/mcp".into(),
            idp: "dev".into(),
            redirect_uri: Some("http://127.0.0.1:1/cb".into()),
            code_challenge: Some(pkce_challenge(&"v".repeat(43))),
            family: "f".into(),
            family_expires_at: u64::MAX,
        }
    }

    fn client(id: &str) -> Client {
        Client {
            id: id.into(),
            name: "n".into(),
            redirect_uris: vec![],
            confidential: false,
        }
    }

    #[test]
    fn a_code_redeems_only_for_its_client_redirect_and_verifier() {
        let verifier = "v".repeat(43);
        let redirect = Some("http://127.0.0.1:1/cb");
        assert_eq!(
            redeem_code(&code_grant(), &client("c"), redirect, Some(&verifier), None),
            Ok(())
        );
        let wrong_client = redeem_code(&code_grant(), &client("d"), redirect, Some(&verifier), None);
        assert_eq!(wrong_client.unwrap_err().code, "invalid_grant");
        let wrong_redirect = redeem_code(
            &code_grant(),
            &client("c"),
            Some("http://127.0.0.1:2/cb"),
            Some(&verifier),
            None,
        );
        assert_eq!(wrong_redirect.unwrap_err().code, "invalid_grant");
        let wrong_verifier = redeem_code(&code_grant(), &client("c"), redirect, Some(&"w".repeat(43)), None);
        assert_eq!(wrong_verifier.unwrap_err().code, "invalid_grant");
        let no_verifier = redeem_code(&code_grant(), &client("c"), redirect, None, None);
        assert_eq!(no_verifier.unwrap_err().code, "invalid_request");
        let other_resource = redeem_code(
            &code_grant(),
            &client("c"),
            redirect,
            Some(&verifier),
            Some("https://x/mcp"),
        );
        assert_eq!(other_resource.unwrap_err().code, "invalid_target");
    }

    #[test]
    fn a_refresh_may_narrow_but_not_widen_the_scope() {
        let grant = code_grant();
        assert_eq!(
            refresh_scope(&grant, &client("c"), None, None).unwrap(),
            "images:generate"
        );
        assert_eq!(
            refresh_scope(&grant, &client("c"), Some("images:admin"), None)
                .unwrap_err()
                .code,
            "invalid_scope"
        );
        assert_eq!(
            refresh_scope(&grant, &client("d"), None, None).unwrap_err().code,
            "invalid_grant"
        );
    }
}
