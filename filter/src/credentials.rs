//! Who is calling: an IAM JWT (`Authorization: Bearer <JWT>`) or an API key
//! (`x-api-key: <key>` or an opaque `Authorization: Bearer <key>`). API keys
//! are stored as SHA-256 hashes in the configuration, never in plaintext.
//! Verified JWTs are cached by the hash of the token until they expire or
//! their signing key leaves the JWKS, so repeat callers cost no signature check.

use std::collections::HashMap;
use std::rc::Rc;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::jwt::{bearer_token, is_safe_identity, AuthError, Identity, JwtVerifier, KeyFingerprint, KeySet};
use crate::limits::CallerOverride;

/// An API key as the admin writes it.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ApiKeySpec {
    /// Public id of the key (logged, sent upstream as `x-mcp-key-id`).
    pub id: String,
    /// Hex SHA-256 of the key.
    pub sha256: String,
    /// Organisation the key belongs to.
    pub org: String,
    /// User recorded for the key's calls; defaults to `key:{id}`.
    #[serde(default)]
    pub user: Option<String>,
    /// Scopes the key grants (as a token's `scope` would).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// This key's own caller bucket rate (requests per second), instead of
    /// `rate_limits.per_caller`'s.
    #[serde(default)]
    pub requests_per_second: Option<f64>,
    /// This key's own caller bucket burst.
    #[serde(default)]
    pub burst: Option<u32>,
}

/// Why the API key table was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApiKeyError {
    #[error("`api_keys[{0}].sha256` must be 64 hex characters")]
    BadHash(usize),
    #[error("`api_keys[{0}]`: `id`, `org` and `user` must be plain identifiers")]
    BadIdentity(usize),
    #[error("`api_keys[{0}]`: the same key hash appears twice")]
    Duplicate(usize),
    #[error("`api_keys[{0}].org`: the name is reserved for the gateway's own storage (one of {reserved})", reserved = crate::org_names::RESERVED.join(", "))]
    ReservedOrg(usize),
}

/// A loaded API key.
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub id: String,
    pub org: String,
    pub user: String,
    pub scopes: Vec<String>,
    pub requests_per_second: Option<f64>,
    pub burst: Option<u32>,
}

/// API keys by the SHA-256 of the key.
#[derive(Debug, Default, Clone)]
pub struct ApiKeys {
    by_hash: HashMap<[u8; 32], ApiKey>,
}

impl ApiKeys {
    pub fn from_specs(specs: &[ApiKeySpec]) -> Result<Self, ApiKeyError> {
        let mut by_hash = HashMap::with_capacity(specs.len());
        for (index, spec) in specs.iter().enumerate() {
            let hash: [u8; 32] = hex::decode(spec.sha256.trim())
                .ok()
                .and_then(|bytes| bytes.try_into().ok())
                .ok_or(ApiKeyError::BadHash(index))?;
            let user = spec.user.clone().unwrap_or_else(|| format!("key:{}", spec.id));
            if ![&spec.id, &spec.org, &user].iter().all(|v| is_safe_identity(v)) {
                return Err(ApiKeyError::BadIdentity(index));
            }
            if crate::org_names::is_reserved(&spec.org) {
                return Err(ApiKeyError::ReservedOrg(index));
            }
            let key = ApiKey {
                id: spec.id.clone(),
                org: spec.org.clone(),
                user,
                scopes: spec.scopes.clone(),
                requests_per_second: spec.requests_per_second,
                burst: spec.burst,
            };
            if by_hash.insert(hash, key).is_some() {
                return Err(ApiKeyError::Duplicate(index));
            }
        }
        Ok(Self { by_hash })
    }

    pub fn lookup(&self, key: &str) -> Option<&ApiKey> {
        self.by_hash.get(&sha256(key))
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

/// The last segment of a compact JWS (its signature).
fn signature_of(token: &str) -> &str {
    token.rsplit('.').next().unwrap_or(token)
}

fn sha256(value: &str) -> [u8; 32] {
    Sha256::digest(value.as_bytes()).into()
}

/// Whether a verified identity came from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    Hit,
    Miss,
    /// No JWT involved (API key).
    NotApplicable,
}

/// Verified JWTs, bounded in size. Keyed by the token's signature segment
/// (already a MAC or signature over the rest, so unique per token and no
/// need to hash the whole token cryptographically); a hit still compares the
/// full token, so a forged token sharing a signature never matches.
#[derive(Debug)]
pub struct TokenCache {
    entries: HashMap<Box<str>, CachedToken>,
    capacity: usize,
}

#[derive(Debug)]
struct CachedToken {
    token: Box<str>,
    identity: Rc<Identity>,
    /// The key that verified it: the entry lasts as long as the key is loaded.
    key: KeyFingerprint,
    /// The trust rules it was verified under (`JwtVerifier::rules`): a
    /// filter configuration that trusts otherwise never reuses it.
    rules: u64,
}

impl TokenCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn get(&mut self, token: &str, now: u64, leeway: u64, rules: u64) -> Option<Rc<Identity>> {
        let cached = self.entries.get(signature_of(token))?;
        if &*cached.token != token || cached.rules != rules {
            return None;
        }
        if now > cached.identity.expires_at.saturating_add(leeway) {
            self.entries.remove(signature_of(token));
            return None;
        }
        Some(cached.identity.clone())
    }

    /// After a JWKS refresh of one issuer: drops the tokens verified by that
    /// issuer's keys no longer loaded, keeps the rest (an unchanged or grown
    /// key set keeps them all; other issuers' tokens are untouched).
    /// Returns how many were dropped.
    pub fn retain_keys(&mut self, keys: &KeySet) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, cached| keys.keeps(cached.key));
        before - self.entries.len()
    }

    fn insert(&mut self, token: &str, identity: Rc<Identity>, key: KeyFingerprint, now: u64, leeway: u64, rules: u64) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() >= self.capacity {
            self.entries
                .retain(|_, cached| now <= cached.identity.expires_at.saturating_add(leeway));
        }
        if self.entries.len() >= self.capacity {
            // Still full of live tokens: start over rather than grow without bound.
            self.entries.clear();
        }
        let cached = CachedToken {
            token: token.into(),
            identity,
            key,
            rules,
        };
        self.entries.insert(signature_of(token).into(), cached);
    }
}

/// Establishes the caller's identity from the request's credentials.
pub fn authenticate(
    jwt: &JwtVerifier,
    api_keys: &ApiKeys,
    cache: &mut TokenCache,
    authorization: Option<&str>,
    x_api_key: Option<&str>,
    now: u64,
) -> Result<(Rc<Identity>, CacheUse, CallerOverride), AuthError> {
    if let Some(key) = x_api_key {
        return api_key_identity(api_keys, key.trim());
    }
    let header = authorization.ok_or(AuthError::MissingToken)?;
    let token = bearer_token(header)?;
    // A JWS has exactly two dots; anything else is an opaque API key.
    if token.bytes().filter(|b| *b == b'.').count() != 2 {
        return api_key_identity(api_keys, token);
    }
    let leeway = jwt.leeway_seconds();
    if let Some(identity) = cache.get(token, now, leeway, jwt.rules()) {
        return Ok((identity, CacheUse::Hit, CallerOverride::default()));
    }
    let (identity, key) = jwt.verify_token_with_key(token, now)?;
    let identity = Rc::new(identity);
    cache.insert(token, identity.clone(), key, now, leeway, jwt.rules());
    Ok((identity, CacheUse::Miss, CallerOverride::default()))
}

fn api_key_identity(api_keys: &ApiKeys, key: &str) -> Result<(Rc<Identity>, CacheUse, CallerOverride), AuthError> {
    let key = api_keys.lookup(key).ok_or(AuthError::UnknownApiKey)?;
    let identity = Identity {
        user: key.user.clone(),
        org: key.org.clone(),
        scopes: key.scopes.clone(),
        expires_at: u64::MAX,
        key_id: Some(key.id.clone()),
    };
    let limits = CallerOverride {
        requests_per_second: key.requests_per_second,
        burst: key.burst,
    };
    Ok((Rc::new(identity), CacheUse::NotApplicable, limits))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::JwtSpec;
    use jwt_simple::prelude::*;
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;

    fn setup() -> (JwtVerifier, ApiKeys, String) {
        let key = Ed25519KeyPair::generate().with_key_id("k");
        let jwk: serde_json::Value = serde_json::from_str(&key.public_key().to_jwk()).unwrap();
        let jwt = JwtVerifier::from_spec(&JwtSpec {
            issuer: Some("iss".into()),
            audiences: Some(vec!["aud".into()]),
            leeway_seconds: 30,
            jwks: Some(json!({"keys": [jwk]})),
            ..JwtSpec::default()
        })
        .unwrap();
        let mut claims = Claims::with_custom_claims(json!({"org": "acme"}), Duration::from_secs(600))
            .with_issuer("iss")
            .with_audience("aud")
            .with_subject("alice");
        claims.issued_at = Some(UnixTimeStamp::from_secs(NOW));
        claims.invalid_before = Some(UnixTimeStamp::from_secs(NOW));
        claims.expires_at = Some(UnixTimeStamp::from_secs(NOW + 600));
        let token = key.sign(claims).unwrap();
        let keys = ApiKeys::from_specs(&[ApiKeySpec {
            id: "ci-bot".into(),
            sha256: hex::encode(sha256("mig_secret_1")),
            org: "globex".into(),
            user: None,
            scopes: vec!["images:generate".into()],
            requests_per_second: None,
            burst: None,
        }])
        .unwrap();
        (jwt, keys, token)
    }

    #[test]
    fn api_keys_by_header_and_by_opaque_bearer() {
        let (jwt, keys, _) = setup();
        let mut cache = TokenCache::new(8);
        for (auth, x_api_key) in [(None, Some("mig_secret_1")), (Some("Bearer mig_secret_1"), None)] {
            let (id, use_, _) = authenticate(&jwt, &keys, &mut cache, auth, x_api_key, NOW).unwrap();
            assert_eq!(
                (id.org.as_str(), id.user.as_str(), id.key_id.as_deref()),
                ("globex", "key:ci-bot", Some("ci-bot"))
            );
            assert_eq!(use_, CacheUse::NotApplicable);
        }
        let wrong = authenticate(&jwt, &keys, &mut cache, None, Some("mig_secret_2"), NOW);
        assert_eq!(wrong.unwrap_err(), AuthError::UnknownApiKey);
        let wrong = authenticate(&jwt, &keys, &mut cache, Some("Bearer nope"), None, NOW);
        assert_eq!(wrong.unwrap_err(), AuthError::UnknownApiKey);
    }

    #[test]
    fn jwts_are_cached_until_expiry() {
        let (jwt, keys, token) = setup();
        let mut cache = TokenCache::new(8);
        let auth = format!("Bearer {token}");
        let first = authenticate(&jwt, &keys, &mut cache, Some(&auth), None, NOW).unwrap();
        let second = authenticate(&jwt, &keys, &mut cache, Some(&auth), None, NOW + 1).unwrap();
        assert_eq!((first.1, second.1), (CacheUse::Miss, CacheUse::Hit));
        assert_eq!(first.0, second.0);
        // Past expiry plus leeway, the cached entry is dropped and verification refuses.
        let late = authenticate(&jwt, &keys, &mut cache, Some(&auth), None, NOW + 600 + 31);
        assert_eq!(late.unwrap_err(), AuthError::Expired);
        assert!(cache.is_empty());
        // A tampered token is a different cache key and is verified (and refused).
        let mut tampered = token.clone();
        tampered.push('A');
        let refused = authenticate(&jwt, &keys, &mut cache, Some(&format!("Bearer {tampered}")), None, NOW);
        assert!(refused.is_err());
    }

    #[test]
    fn cache_stays_bounded() {
        let mut cache = TokenCache::new(3);
        let id = |exp| {
            Rc::new(Identity {
                user: "u".into(),
                org: "o".into(),
                scopes: vec![],
                expires_at: exp,
                key_id: None,
            })
        };
        for i in 0..10u8 {
            cache.insert(
                &format!("h.p.sig{i}"),
                id(NOW + 100),
                KeyFingerprint { issuer: 0, material: 1 },
                NOW,
                0,
                0,
            );
            assert!(cache.len() <= 3);
        }
        cache.insert(
            "h.p.sig50",
            id(NOW - 1),
            KeyFingerprint { issuer: 0, material: 1 },
            NOW,
            0,
            0,
        );
        assert!(cache.get("h.p.sig50", NOW, 0, 0).is_none(), "expired");
        cache.insert(
            "h.p.live",
            id(NOW + 100),
            KeyFingerprint { issuer: 0, material: 1 },
            NOW,
            0,
            0,
        );
        assert!(cache.get("h.p.live", NOW, 0, 0).is_some());
        assert!(
            cache.get("h.p.live", NOW, 0, 1).is_none(),
            "other trust rules never reuse it"
        );
        // Same signature, other token: never a hit.
        assert!(cache.get("h.forged.live", NOW, 0, 0).is_none());
    }

    #[test]
    fn api_key_config_errors() {
        let spec = |sha: &str, org: &str| ApiKeySpec {
            id: "k".into(),
            sha256: sha.into(),
            org: org.into(),
            user: None,
            scopes: vec![],
            requests_per_second: None,
            burst: None,
        };
        let good = hex::encode([1u8; 32]);
        assert!(matches!(
            ApiKeys::from_specs(&[spec("abc", "acme")]),
            Err(ApiKeyError::BadHash(0))
        ));
        assert!(matches!(
            ApiKeys::from_specs(&[spec(&good, "../x")]),
            Err(ApiKeyError::BadIdentity(0))
        ));
        assert!(matches!(
            ApiKeys::from_specs(&[spec(&good, "a"), spec(&good, "b")]),
            Err(ApiKeyError::Duplicate(1))
        ));
        assert!(matches!(
            ApiKeys::from_specs(&[spec(&good, "uploads")]),
            Err(ApiKeyError::ReservedOrg(0))
        ));
    }
}
