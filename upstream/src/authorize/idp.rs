//! The company IdP behind the gateway's authorization server: found by its
//! issuer (RFC 8414 metadata, else OpenID discovery: Entra and Google serve
//! only the latter), signed in to through the gateway's one confidential
//! client there (authorization code + PKCE, nonce), and trusted for the
//! user's identity through its ID token, verified with the IdP's published
//! keys by the edge filter's own JWT code. The same keys verify identity
//! assertion grants (ID-JAG) the IdP issues for this server.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Map, Value};

use mcp_edge_filter::jwt::{Identity, JwtSpec, JwtVerifier};

/// How often the IdP's keys may be fetched again for an unknown key.
const KEYS_REFETCH: Duration = Duration::from_secs(60);
/// Keys older than this are fetched again before use.
const KEYS_MAX_AGE: Duration = Duration::from_secs(3600);
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// How the gateway reaches and reads its IdP.
#[derive(Debug, Clone)]
pub struct IdpSettings {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    /// Sent at the IdP's authorization endpoint (OpenID scopes).
    pub scopes: String,
    /// Where the organisation is: a claim name, or a JSON pointer (`/tid`).
    pub org_claim: String,
    /// Or one organisation for everyone this IdP signs in.
    pub org: Option<String>,
    /// The claim naming the user (`sub` by default; `oid`, `email`…).
    pub user_claim: Option<String>,
    /// `client_secret_basic` (default) or `client_secret_post`.
    pub token_auth: String,
}

/// The IdP's endpoints, from its metadata.
#[derive(Debug, Clone, Deserialize)]
pub struct IdpMetadata {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
}

pub struct Idp {
    pub settings: IdpSettings,
    metadata: tokio::sync::OnceCell<IdpMetadata>,
    keys: Mutex<Option<(Value, Instant)>>,
    http: reqwest::Client,
}

/// Why the IdP leg failed: said to the person on the error page and audited.
#[derive(Debug, thiserror::Error)]
pub enum IdpError {
    #[error("the identity provider could not be reached: {0}")]
    Unreachable(String),
    #[error("the identity provider refused the sign-in: {0}")]
    Refused(String),
    #[error("the identity provider's answer could not be trusted: {0}")]
    Untrusted(String),
}

impl Idp {
    pub fn new(settings: IdpSettings) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            settings,
            metadata: tokio::sync::OnceCell::new(),
            keys: Mutex::new(None),
            http,
        })
    }

    /// The IdP's metadata: RFC 8414 first, then OpenID discovery; its
    /// `issuer` must be the configured one (no mix-up with another IdP).
    pub async fn metadata(&self) -> Result<&IdpMetadata, IdpError> {
        self.metadata.get_or_try_init(|| self.discover()).await
    }

    async fn discover(&self) -> Result<IdpMetadata, IdpError> {
        let issuer = self.settings.issuer.trim_end_matches('/');
        let mut failures = Vec::new();
        for path in [
            "/.well-known/oauth-authorization-server",
            "/.well-known/openid-configuration",
        ] {
            let url = format!("{issuer}{path}");
            match self.get_json(&url).await {
                Ok(document) => {
                    let metadata: IdpMetadata = serde_json::from_value(document)
                        .map_err(|e| IdpError::Untrusted(format!("{url} lacks an endpoint ({e})")))?;
                    if metadata.issuer != self.settings.issuer {
                        return Err(IdpError::Untrusted(format!(
                            "{url} names the issuer {:?}, not {:?}",
                            metadata.issuer, self.settings.issuer
                        )));
                    }
                    return Ok(metadata);
                }
                Err(error) => failures.push(format!("{url}: {error}")),
            }
        }
        Err(IdpError::Unreachable(failures.join("; ")))
    }

    async fn get_json(&self, url: &str) -> Result<Value, String> {
        let response = self.http.get(url).send().await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status().as_u16()));
        }
        response.json().await.map_err(|e| format!("not JSON ({e})"))
    }

    /// Where to send the browser: the IdP's authorization endpoint.
    pub async fn authorization_url(
        &self,
        redirect_uri: &str,
        state: &str,
        nonce: &str,
        challenge: &str,
    ) -> Result<String, IdpError> {
        let metadata = self.metadata().await?;
        let mut url = reqwest::Url::parse(&metadata.authorization_endpoint)
            .map_err(|e| IdpError::Untrusted(format!("authorization_endpoint is not a URL ({e})")))?;
        // No `resource` here: the IdP's tokens never leave the gateway (Entra
        // refuses `resource` beside OpenID scopes; others ignore it).
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.settings.client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", &self.settings.scopes)
            .append_pair("state", state)
            .append_pair("nonce", nonce)
            .append_pair("code_challenge", challenge)
            .append_pair("code_challenge_method", "S256");
        Ok(url.into())
    }

    /// Exchanges the IdP's code and returns the verified user: the ID token's
    /// signature, issuer, audience (our client id), expiry and nonce.
    pub async fn sign_in(
        &self,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
        nonce: &str,
    ) -> Result<Identity, IdpError> {
        let metadata = self.metadata().await?;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ];
        let mut request = self.http.post(&metadata.token_endpoint);
        if self.settings.token_auth == "client_secret_post" {
            form.push(("client_id", &self.settings.client_id));
            form.push(("client_secret", &self.settings.client_secret));
        } else {
            request = request.basic_auth(
                form_encode(&self.settings.client_id),
                Some(form_encode(&self.settings.client_secret)),
            );
        }
        let body = serde_urlencoded::to_string(&form).map_err(|e| IdpError::Untrusted(e.to_string()))?;
        let response = request
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| IdpError::Unreachable(e.to_string()))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .map_err(|e| IdpError::Untrusted(format!("the token answer is not JSON ({e})")))?;
        if !status.is_success() {
            let error = body.get("error").and_then(Value::as_str).unwrap_or("error");
            return Err(IdpError::Refused(format!(
                "token endpoint HTTP {}: {error}",
                status.as_u16()
            )));
        }
        let id_token = body.get("id_token").and_then(Value::as_str).ok_or_else(|| {
            IdpError::Untrusted("no id_token in the token answer (is `openid` in the scopes?)".into())
        })?;
        let (identity, claims) = self.verify(id_token, &self.settings.client_id).await?;
        if claims.get("nonce").and_then(Value::as_str) != Some(nonce) {
            return Err(IdpError::Untrusted("the ID token's nonce is not this sign-in's".into()));
        }
        Ok(identity)
    }

    /// Verifies a JWT from the IdP for `audience`; returns the identity the
    /// mapping reads and the token's claims.
    pub async fn verify(&self, token: &str, audience: &str) -> Result<(Identity, Map<String, Value>), IdpError> {
        let now = unix_now();
        let keys = self.keys(false).await?;
        let result = self.verifier(keys, audience)?.verify_token(token, now);
        let identity = match result {
            Ok(identity) => identity,
            // A key the IdP added since: fetch once more (bounded by KEYS_REFETCH).
            Err(mcp_edge_filter::jwt::AuthError::UnknownKey) => {
                let keys = self.keys(true).await?;
                self.verifier(keys, audience)?
                    .verify_token(token, now)
                    .map_err(|e| IdpError::Untrusted(e.to_string()))?
            }
            Err(error) => return Err(IdpError::Untrusted(error.to_string())),
        };
        // The signature held: the payload can be read as it is.
        let claims = payload(token).ok_or_else(|| IdpError::Untrusted("unreadable claims".into()))?;
        Ok((identity, claims))
    }

    fn verifier(&self, jwks: Value, audience: &str) -> Result<JwtVerifier, IdpError> {
        let mut spec = json!({
            "issuer": self.settings.issuer,
            "audiences": [audience],
            "org_claim": self.settings.org_claim,
            "jwks": jwks,
        });
        if let Some(org) = &self.settings.org {
            spec["org"] = json!(org);
            spec.as_object_mut().map(|s| s.remove("org_claim"));
        }
        if let Some(user) = &self.settings.user_claim {
            spec["user_claim"] = json!(user);
        }
        let spec: JwtSpec =
            serde_json::from_value(spec).map_err(|e| IdpError::Untrusted(format!("the IdP settings: {e}")))?;
        JwtVerifier::from_spec(&spec).map_err(|e| IdpError::Untrusted(format!("the IdP's keys: {e}")))
    }

    async fn keys(&self, refetch: bool) -> Result<Value, IdpError> {
        let cached = self.keys.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some((keys, at)) = &cached {
            let fresh = at.elapsed() < KEYS_MAX_AGE && !(refetch && at.elapsed() >= KEYS_REFETCH);
            if fresh {
                return Ok(keys.clone());
            }
        }
        let metadata = self.metadata().await?;
        match self.get_json(&metadata.jwks_uri).await {
            Ok(keys) => {
                *self.keys.lock().unwrap_or_else(|e| e.into_inner()) = Some((keys.clone(), Instant::now()));
                Ok(keys)
            }
            // The last good keys stay in use while the IdP is unreachable.
            Err(error) => cached
                .map(|(keys, _)| keys)
                .ok_or_else(|| IdpError::Unreachable(format!("{}: {error}", metadata.jwks_uri))),
        }
    }
}

/// RFC 6749 §2.3.1: client credentials are form-encoded before Basic auth.
fn form_encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// A JWT's payload, decoded without verification (callers verified it).
pub fn payload(token: &str) -> Option<Map<String, Value>> {
    use base64::Engine;
    let part = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// A JWT's header, decoded without verification.
pub fn header(token: &str) -> Option<Map<String, Value>> {
    use base64::Engine;
    let part = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).ok()?;
    serde_json::from_slice(&bytes).ok()
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
