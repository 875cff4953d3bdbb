//! IAM JWT verification: keys from a JWKS, selected by `kid` and `alg`,
//! signature and registered claims checked by `jwt-simple`, identity taken
//! from `sub` and the configured organisation claim.

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;

use jwt_simple::algorithms::{
    ECDSAP256PublicKeyLike, ES256PublicKey, Ed25519PublicKey, EdDSAPublicKeyLike, RS256PublicKey, RSAPublicKeyLike,
};
use jwt_simple::common::VerificationOptions;
use jwt_simple::prelude::{Duration, JWTClaims, UnixTimeStamp};
use jwt_simple::token::Token;
use jwt_simple::JWTError;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8192;

/// A caller whose token verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub org: String,
    pub scopes: Vec<String>,
    /// Unix seconds after which the token is no longer valid (`u64::MAX` for API keys).
    pub expires_at: u64,
    /// The API key's id, for API-key callers.
    pub key_id: Option<String>,
}

/// Why a bearer token was refused. Each variant is one cause, reported to the
/// client in `WWW-Authenticate` and counted by cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token: send `Authorization: Bearer <JWT>`")]
    MissingToken,
    #[error("the Authorization header is not of the form `Bearer <token>`")]
    MalformedHeader,
    #[error("the bearer token is not a well-formed JWT")]
    MalformedToken,
    #[error("the token's `alg` is not accepted (allowed: RS256, ES256, EdDSA)")]
    UnsupportedAlgorithm,
    #[error("the token's `kid` does not match any configured key")]
    UnknownKey,
    #[error("the token signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token has no `exp` claim")]
    MissingExpiry,
    #[error("the token's issuer is not trusted")]
    WrongIssuer,
    #[error("the token's audience is not this server")]
    WrongAudience,
    #[error("the token has no `sub` claim")]
    MissingSubject,
    #[error("the token has no organisation claim")]
    MissingOrg,
    #[error("the token's subject or organisation contains characters that are not allowed")]
    InvalidIdentity,
    #[error("the API key is not valid")]
    UnknownApiKey,
    #[error("the identity provider's keys are not loaded yet; retry shortly")]
    KeysNotLoaded,
}

impl AuthError {
    /// A stable label for metrics and logs.
    pub fn cause(self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::MalformedHeader => "malformed_header",
            AuthError::MalformedToken => "malformed_token",
            AuthError::UnsupportedAlgorithm => "unsupported_alg",
            AuthError::UnknownKey => "unknown_kid",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::MissingExpiry => "missing_exp",
            AuthError::WrongIssuer => "wrong_issuer",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::MissingSubject => "missing_sub",
            AuthError::MissingOrg => "missing_org",
            AuthError::InvalidIdentity => "invalid_identity",
            AuthError::UnknownApiKey => "unknown_api_key",
            AuthError::KeysNotLoaded => "jwks_not_loaded",
        }
    }
}

/// Why a JWKS could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum JwtVerifierError {
    #[error("`jwks` must be an object with a `keys` array")]
    NotAJwks,
    #[error("`jwks.keys[{index}]`: {reason}")]
    BadKey { index: usize, reason: String },
    #[error("`jwks` has no usable keys")]
    NoKeys,
    #[error("`issuer` must not be empty")]
    EmptyIssuer,
    #[error("`audiences` must list at least one audience")]
    NoAudience,
    #[error("set exactly one of `jwks` and `jwks_uri`")]
    KeySource,
    #[error("`jwks_uri`: `cluster`, `path` (starting with '/') and `authority` are required, and periods must be at least 1")]
    BadUri,
}

enum PublicKey {
    Rs256(Box<RS256PublicKey>),
    Es256(ES256PublicKey),
    EdDsa(Ed25519PublicKey),
}

impl PublicKey {
    fn alg(&self) -> &'static str {
        match self {
            PublicKey::Rs256(_) => "RS256",
            PublicKey::Es256(_) => "ES256",
            PublicKey::EdDsa(_) => "EdDSA",
        }
    }
}

struct KeyEntry {
    kid: Option<String>,
    key: PublicKey,
    fingerprint: KeyFingerprint,
}

/// Names one signing key by what verification rests on: its `kid` and its
/// public material. A verified token remembers it, so a JWKS refresh drops
/// only the tokens whose key left. (64 bits of SHA-256: the keys compared
/// are a handful from one trusted JWKS.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyFingerprint(pub(crate) u64);

impl KeyFingerprint {
    fn of(jwk: &Value) -> Self {
        let mut hash = Sha256::new();
        for member in ["kid", "kty", "crv", "n", "e", "x", "y"] {
            // Values as JSON text (strings quoted): no two key sets hash alike by shifting.
            let value = jwk.get(member).map(Value::to_string).unwrap_or_default();
            hash.update(member.as_bytes());
            hash.update(b"=");
            hash.update(value.as_bytes());
            hash.update(b";");
        }
        let digest: [u8; 32] = hash.finalize().into();
        Self(digest.first_chunk().map_or(0, |bytes| u64::from_le_bytes(*bytes)))
    }
}

/// The keys a fetched JWKS loaded, by fingerprint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySet(Vec<KeyFingerprint>);

impl KeySet {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn holds(&self, key: KeyFingerprint) -> bool {
        self.0.contains(&key)
    }
}

/// Verifies bearer tokens against a fixed key set and claim policy.
pub struct JwtVerifier {
    /// Replaced whole when a fetched JWKS arrives (the VM is single-threaded).
    keys: RefCell<Rc<Vec<KeyEntry>>>,
    /// Where the keys come from when they are fetched.
    pub remote: Option<JwksUriSpec>,
    issuer: String,
    audiences: HashSet<String>,
    org_claim: String,
    leeway_seconds: u64,
}

impl JwtVerifier {
    /// Builds a verifier from its configuration, loading every key of the JWKS.
    pub fn from_spec(spec: &JwtSpec) -> Result<Self, JwtVerifierError> {
        if spec.issuer.is_empty() {
            return Err(JwtVerifierError::EmptyIssuer);
        }
        if spec.audiences.is_empty() {
            return Err(JwtVerifierError::NoAudience);
        }
        let (keys, remote) = match (&spec.jwks, &spec.jwks_uri) {
            (Some(jwks), None) => (load_jwks(jwks)?, None),
            (None, Some(uri)) => {
                let valid = !uri.cluster.is_empty()
                    && uri.path.starts_with('/')
                    && !uri.authority.is_empty()
                    && uri.refresh_seconds >= 1
                    && uri.retry_seconds >= 1
                    && uri.timeout_ms >= 1;
                if !valid {
                    return Err(JwtVerifierError::BadUri);
                }
                (Vec::new(), Some(uri.clone()))
            }
            _ => return Err(JwtVerifierError::KeySource),
        };
        Ok(Self {
            keys: RefCell::new(Rc::new(keys)),
            remote,
            issuer: spec.issuer.clone(),
            audiences: spec.audiences.iter().cloned().collect(),
            org_claim: spec.org_claim.clone(),
            leeway_seconds: spec.leeway_seconds,
        })
    }

    /// How many keys a fetched JWKS holds, or why none of it can be used
    /// (checked once before a multi-threaded host hands it to every worker).
    pub fn check_keys(jwks: &Value) -> Result<usize, JwtVerifierError> {
        load_jwks(jwks).map(|keys| keys.len())
    }

    /// Replaces the key set with a fetched JWKS; on error the old keys stay.
    /// Returns the keys loaded (verified tokens of other keys are to be dropped).
    pub fn replace_keys(&self, jwks: &Value) -> Result<KeySet, JwtVerifierError> {
        let keys = load_jwks(jwks)?;
        let loaded = KeySet(keys.iter().map(|entry| entry.fingerprint).collect());
        *self.keys.borrow_mut() = Rc::new(keys);
        Ok(loaded)
    }

    /// Takes the keys `previous` fetched from the same JWKS URL, so new
    /// settings verify tokens at once instead of waiting for a fetch.
    /// Returns whether it took any.
    pub fn adopt_keys(&self, previous: &JwtVerifier) -> bool {
        let same_source = self.remote.is_some() && self.remote == previous.remote;
        if !same_source || !previous.has_keys() {
            return false;
        }
        *self.keys.borrow_mut() = previous.keys.borrow().clone();
        true
    }

    /// True once keys are available.
    pub fn has_keys(&self) -> bool {
        !self.keys.borrow().is_empty()
    }

    /// Allowed clock skew, in seconds.
    pub fn leeway_seconds(&self) -> u64 {
        self.leeway_seconds
    }

    /// Verifies an `Authorization` header value at time `now` (Unix seconds).
    pub fn verify_header(&self, header: Option<&str>, now: u64) -> Result<Identity, AuthError> {
        let header = header.ok_or(AuthError::MissingToken)?;
        let token = bearer_token(header)?;
        self.verify_token(token, now)
    }

    /// Verifies a compact JWS token at time `now` (Unix seconds).
    pub fn verify_token(&self, token: &str, now: u64) -> Result<Identity, AuthError> {
        self.verify_token_with_key(token, now).map(|(identity, _)| identity)
    }

    /// Verifies a token and says which key verified it.
    pub fn verify_token_with_key(&self, token: &str, now: u64) -> Result<(Identity, KeyFingerprint), AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::MalformedToken);
        }
        let metadata = Token::decode_metadata(token).map_err(|_| AuthError::MalformedToken)?;
        let alg = metadata.algorithm();
        // `none` and HMAC never match: only asymmetric keys are loaded.
        if !matches!(alg, "RS256" | "ES256" | "EdDSA") {
            return Err(AuthError::UnsupportedAlgorithm);
        }
        let kid = metadata.key_id();
        let keys = self.keys.borrow();
        if keys.is_empty() {
            return Err(AuthError::KeysNotLoaded);
        }
        let candidates =
            keys.iter()
                .filter(|entry| entry.key.alg() == alg)
                .filter(|entry| match (kid, entry.kid.as_deref()) {
                    (Some(kid), Some(entry_kid)) => kid == entry_kid,
                    // A token without `kid` may match any key of its algorithm.
                    (None, _) => true,
                    (Some(_), None) => false,
                });
        let options = VerificationOptions {
            allowed_issuers: Some(HashSet::from([self.issuer.clone()])),
            allowed_audiences: Some(self.audiences.clone()),
            time_tolerance: Some(Duration::from_secs(self.leeway_seconds)),
            artificial_time: Some(UnixTimeStamp::from_secs(now)),
            max_token_length: Some(MAX_TOKEN_BYTES),
            ..VerificationOptions::default()
        };
        let mut last_error = AuthError::UnknownKey;
        for entry in candidates {
            let verified = match &entry.key {
                PublicKey::Rs256(key) => key.verify_token::<Map<String, Value>>(token, Some(options.clone())),
                PublicKey::Es256(key) => key.verify_token::<Map<String, Value>>(token, Some(options.clone())),
                PublicKey::EdDsa(key) => key.verify_token::<Map<String, Value>>(token, Some(options.clone())),
            };
            match verified {
                Ok(claims) => return self.identity_from(claims).map(|identity| (identity, entry.fingerprint)),
                Err(error) => {
                    last_error = classify(&error);
                    // Only a bad signature means another key might still match.
                    if last_error != AuthError::BadSignature {
                        return Err(last_error);
                    }
                }
            }
        }
        Err(last_error)
    }

    fn identity_from(&self, claims: JWTClaims<Map<String, Value>>) -> Result<Identity, AuthError> {
        let expires_at = claims.expires_at.ok_or(AuthError::MissingExpiry)?.as_secs();
        let user = claims.subject.ok_or(AuthError::MissingSubject)?;
        let org = match claims.custom.get(&self.org_claim) {
            Some(Value::String(org)) => org.clone(),
            _ => return Err(AuthError::MissingOrg),
        };
        if !is_safe_identity(&user) || !is_safe_identity(&org) {
            return Err(AuthError::InvalidIdentity);
        }
        let scopes = match claims.custom.get("scope") {
            Some(Value::String(scope)) => scope.split_whitespace().map(str::to_string).collect(),
            _ => Vec::new(),
        };
        Ok(Identity {
            user,
            org,
            scopes,
            expires_at,
            key_id: None,
        })
    }
}

/// Extracts the token from `Bearer <token>` (scheme case-insensitive, RFC 6750).
pub fn bearer_token(header: &str) -> Result<&str, AuthError> {
    let (scheme, token) = header.split_once(' ').ok_or(AuthError::MalformedHeader)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::MalformedHeader);
    }
    let token = token.trim();
    if token.is_empty() || token.contains(' ') {
        return Err(AuthError::MalformedHeader);
    }
    Ok(token)
}

/// Identity values travel in headers and storage paths: keep them plain.
pub fn is_safe_identity(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@' | b'|' | b':'))
        && !value.starts_with('.')
}

fn classify(error: &jwt_simple::Error) -> AuthError {
    match error.downcast_ref::<JWTError>() {
        Some(JWTError::TokenHasExpired) => AuthError::Expired,
        Some(JWTError::TokenNotValidYet) | Some(JWTError::ClockDrift) => AuthError::NotYetValid,
        Some(JWTError::RequiredIssuerMismatch) | Some(JWTError::RequiredIssuerMissing) => AuthError::WrongIssuer,
        Some(JWTError::RequiredAudienceMismatch) | Some(JWTError::RequiredAudienceMissing) => AuthError::WrongAudience,
        Some(JWTError::InvalidSignature) => AuthError::BadSignature,
        Some(JWTError::AlgorithmMismatch) => AuthError::UnsupportedAlgorithm,
        Some(JWTError::KeyIdentifierMismatch) => AuthError::UnknownKey,
        _ => AuthError::MalformedToken,
    }
}

fn load_jwks(jwks: &Value) -> Result<Vec<KeyEntry>, JwtVerifierError> {
    let keys = jwks
        .get("keys")
        .and_then(Value::as_array)
        .ok_or(JwtVerifierError::NotAJwks)?;
    let mut entries = Vec::with_capacity(keys.len());
    for (index, jwk) in keys.iter().enumerate() {
        let bad = |reason: String| JwtVerifierError::BadKey { index, reason };
        let kty = jwk.get("kty").and_then(Value::as_str).unwrap_or_default();
        let crv = jwk.get("crv").and_then(Value::as_str).unwrap_or_default();
        let kid = jwk.get("kid").and_then(Value::as_str).map(str::to_string);
        // `use: enc` keys are not for signatures.
        if jwk.get("use").and_then(Value::as_str) == Some("enc") {
            continue;
        }
        let text = jwk.to_string();
        let key = match (kty, crv) {
            ("RSA", _) => RS256PublicKey::from_jwk(&text).map(|k| PublicKey::Rs256(Box::new(k))),
            ("EC", "P-256") => ES256PublicKey::from_jwk(&text).map(PublicKey::Es256),
            ("OKP", "Ed25519") => Ed25519PublicKey::from_jwk(&text).map(PublicKey::EdDsa),
            _ => {
                return Err(bad(format!(
                    "unsupported key type kty={kty:?} crv={crv:?} (supported: RSA, EC P-256, OKP Ed25519)"
                )))
            }
        }
        .map_err(|e| bad(e.to_string()))?;
        // A JWK may pin its algorithm; it must agree with the key type.
        if let Some(alg) = jwk.get("alg").and_then(Value::as_str) {
            if alg != key.alg() {
                return Err(bad(format!("`alg` {alg:?} does not fit a {} key", key.alg())));
            }
        }
        entries.push(KeyEntry {
            kid,
            key,
            fingerprint: KeyFingerprint::of(jwk),
        });
    }
    if entries.is_empty() {
        return Err(JwtVerifierError::NoKeys);
    }
    Ok(entries)
}

/// Default allowance for clock skew between the IAM and Envoy.
pub const DEFAULT_LEEWAY_SECONDS: u64 = 30;

/// IAM JWT verification settings.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct JwtSpec {
    /// The required `iss` claim.
    pub issuer: String,
    /// Accepted `aud` values (the MCP server's resource URL, RFC 8707).
    pub audiences: Vec<String>,
    /// The claim carrying the caller's organisation.
    #[serde(default = "default_org_claim")]
    pub org_claim: String,
    /// Allowed clock skew for `exp` / `nbf`, in seconds.
    #[serde(default = "default_leeway_seconds")]
    pub leeway_seconds: u64,
    /// Public keys as a JWKS document (`{"keys": [...]}`), inline: `RSA` keys
    /// verify RS256, `EC` P-256 ES256, `OKP` Ed25519 EdDSA.
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
    /// Or: where to fetch the JWKS, through an Envoy cluster, refreshed on a
    /// timer. The last good keys stay if a refresh fails; JWT callers get 503
    /// with `Retry-After` until the first load.
    #[serde(default)]
    pub jwks_uri: Option<JwksUriSpec>,
    /// The realm named in `WWW-Authenticate`.
    #[serde(default = "default_realm")]
    pub realm: String,
}

/// A JWKS fetched from the IAM through an Envoy cluster.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct JwksUriSpec {
    /// Envoy cluster that reaches the IAM.
    pub cluster: String,
    /// Path of the JWKS, e.g. `/.well-known/jwks.json`.
    pub path: String,
    /// `Host`/`:authority` to send.
    pub authority: String,
    /// Seconds between refreshes after a successful fetch.
    #[serde(default = "default_jwks_refresh_seconds")]
    pub refresh_seconds: u64,
    /// Seconds between retries while fetches fail.
    #[serde(default = "default_jwks_retry_seconds")]
    pub retry_seconds: u64,
    /// How long one fetch may take, in milliseconds.
    #[serde(default = "default_jwks_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_jwks_refresh_seconds() -> u64 {
    300
}
fn default_jwks_retry_seconds() -> u64 {
    5
}
fn default_jwks_timeout_ms() -> u64 {
    5000
}

fn default_org_claim() -> String {
    "org".to_string()
}
fn default_leeway_seconds() -> u64 {
    DEFAULT_LEEWAY_SECONDS
}
fn default_realm() -> String {
    "mcp-image-gateway".to_string()
}

#[cfg(test)]
#[path = "jwt_tests.rs"]
mod tests;
