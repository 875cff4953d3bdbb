//! The access tokens this authorization server issues: short-lived JWTs
//! (ES256) for the MCP resource, carrying the user, the organisation and the
//! scope the way the edge reads them (`sub`, `org`, `scope`), plus the
//! client id and the IdP that vouched for the user. The edge verifies them
//! with the public key this server publishes (`/oauth/jwks`).

use std::path::Path;

use anyhow::Context;
use jwt_simple::prelude::*;
use serde_json::{json, Value};

use super::grants::Grant;

/// Signs access tokens.
pub struct TokenSigner {
    key: ES256KeyPair,
    issuer: String,
}

impl TokenSigner {
    /// Reads a private ES256 JWK (with its `kid`) from `path`.
    pub fn from_file(path: &Path, issuer: &str) -> anyhow::Result<Self> {
        let jwk =
            std::fs::read_to_string(path).with_context(|| format!("reading the signing key {}", path.display()))?;
        let key =
            ES256KeyPair::from_jwk(&jwk).map_err(|e| anyhow::anyhow!("{}: not an ES256 JWK ({e})", path.display()))?;
        Ok(Self {
            key,
            issuer: issuer.to_string(),
        })
    }

    /// The public keys, as a JWKS document.
    pub fn jwks(&self) -> Value {
        let public: Value = serde_json::from_str(&self.key.public_key().to_jwk()).unwrap_or(Value::Null);
        json!({"keys": [public]})
    }

    /// An access token for `grant`, valid `ttl_secs`.
    pub fn access_token(&self, grant: &Grant, scope: &str, ttl_secs: u64) -> anyhow::Result<String> {
        let claims = Claims::with_custom_claims(
            json!({
                "org": grant.org,
                "scope": scope,
                "client_id": grant.client_id,
                "idp": grant.idp,
            }),
            Duration::from_secs(ttl_secs),
        )
        .with_issuer(&self.issuer)
        .with_audience(&grant.resource)
        .with_subject(&grant.user)
        .with_jwt_id(super::grants::random_token());
        self.key
            .sign(claims)
            .map_err(|e| anyhow::anyhow!("signing an access token: {e}"))
    }
}
