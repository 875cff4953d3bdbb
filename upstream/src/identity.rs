//! Who is calling: the edge filter's signed identity assertion, checked on
//! every MCP request before rmcp sees it (`server::assertion`). The upstream reads identity from
//! nothing else, so a pod that reaches this port directly cannot claim an
//! organisation (see `filter/src/assertion.rs` for the token's shape).
//!
//! Checks: HS256 under a key the ring lists (by `kid`; two during a
//! rotation), `iss`/`aud`, `exp` with 5 s of clock skew, an `iat` no older
//! than `MAX_AGE`, and a `jti` not seen before on this replica (a replayed
//! assertion is refused until it expires anyway).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use jwt_simple::prelude::{Duration, HS256Key, MACLike, Token, UnixTimeStamp, VerificationOptions};
use jwt_simple::JWTError;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::storage::keyring::Keyring;

/// Header carrying the assertion (the filter's `assertion::HEADER`).
pub const HEADER: &str = "x-mcp-identity";
pub const ISSUER: &str = "mcp-edge";
pub const AUDIENCE: &str = "mcp-upstream";
/// Shortest key accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 32;
/// Oldest `iat` accepted, whatever `exp` says.
const MAX_AGE_SECS: u64 = 300;
const CLOCK_SKEW_SECS: u64 = 5;

/// The verified caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: String,
    pub org: String,
    pub key_id: String,
    pub scopes: Vec<String>,
    pub request_id: String,
    /// The tools this caller may call, when the edge's per-tool access hides
    /// some (`tools/list` shows only these); `None`: every tool.
    pub tools: Option<Vec<String>>,
    /// The edge found the caller without the scope every `tools/call` needs.
    pub no_calls: bool,
    /// The trace and span of the request, when traces are exported.
    pub trace: Option<crate::telemetry::traces::TraceIds>,
}

impl Caller {
    /// Whether the edge's rules (carried in the assertion) let this caller
    /// call `tool`: the upstream holds every call to them again, so a request
    /// that slipped past the edge's body checks still runs nothing it may not.
    pub fn may_call(&self, tool: &str) -> Result<(), String> {
        if self.no_calls {
            return Err(format!(
                "Tool {tool:?} cannot be called with this token: it lacks the scope the gateway requires for tool calls; sign in again granting it"
            ));
        }
        match &self.tools {
            Some(tools) if !tools.iter().any(|t| t == tool) => Err(format!(
                "Tool {tool:?} is not available to this caller (organisation {:?}); ask your gateway admin for access",
                self.org
            )),
            _ => Ok(()),
        }
    }

    /// A stable opaque id for the provider's abuse monitoring (never the raw id).
    pub fn provider_user(&self) -> String {
        let digest = Sha256::new()
            .chain_update(self.org.as_bytes())
            .chain_update(b"/")
            .chain_update(self.user.as_bytes())
            .finalize();
        hex::encode(&digest[..16])
    }
}

/// The custom claims of an assertion.
#[derive(Debug, Deserialize)]
struct AssertionClaims {
    org: String,
    #[serde(default)]
    key_id: Option<String>,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    rid: String,
    #[serde(default)]
    tools: Option<Vec<String>>,
    #[serde(default)]
    no_calls: bool,
}

/// Why a request's assertion was refused (the metric's `result` label).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssertionError {
    #[error("no identity assertion: this service must be reached through the gateway")]
    Missing,
    #[error("the identity assertion is not a valid token")]
    Malformed,
    #[error("the identity assertion names a key this service does not hold")]
    UnknownKey,
    #[error("the identity assertion's signature or claims are invalid")]
    Invalid,
    #[error("the identity assertion has expired or is too old")]
    Stale,
    #[error("the identity assertion was already used")]
    Replayed,
    #[error("the identity assertion names an organisation whose name is reserved for the store's own prefixes ({0}); the edge should have refused it")]
    ReservedOrg(String),
}

impl AssertionError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::UnknownKey => "unknown_key",
            Self::Invalid => "invalid",
            Self::Stale => "stale",
            Self::Replayed => "replayed",
            Self::ReservedOrg(_) => "reserved_org",
        }
    }
}

/// Verifies assertions and remembers the `jti`s it accepted.
pub struct AssertionVerifier {
    keys: Vec<(String, HS256Key)>,
    /// Shared with the verifier a reloaded keyring makes: a reload must
    /// not forget which assertions were already used.
    seen: std::sync::Arc<Mutex<SeenIds>>,
}

/// Accepted `jti`s with their expiry, pruned as the map grows.
#[derive(Default)]
struct SeenIds {
    expires: HashMap<String, u64>,
    prune_at: usize,
}

impl AssertionVerifier {
    pub fn new(keys: &Keyring) -> Self {
        Self {
            keys: keys
                .iter()
                .map(|(id, secret)| (id.to_string(), HS256Key::from_bytes(secret).with_key_id(id)))
                .collect(),
            seen: std::sync::Arc::new(Mutex::new(SeenIds {
                prune_at: 4096,
                ..SeenIds::default()
            })),
        }
    }

    /// A verifier with a reloaded keyring and this one's replay memory.
    pub fn with_keys(&self, keys: &Keyring) -> Self {
        Self {
            seen: self.seen.clone(),
            ..Self::new(keys)
        }
    }

    /// The caller an assertion vouches for, at `now` (Unix seconds).
    pub fn verify(&self, token: &str, now: u64) -> Result<Caller, AssertionError> {
        let metadata = Token::decode_metadata(token).map_err(|_| AssertionError::Malformed)?;
        let kid = metadata.key_id().ok_or(AssertionError::UnknownKey)?;
        let key = self
            .keys
            .iter()
            .find(|(id, _)| id == kid)
            .map(|(_, key)| key)
            .ok_or(AssertionError::UnknownKey)?;
        let options = VerificationOptions {
            allowed_issuers: Some(HashSet::from([ISSUER.to_string()])),
            allowed_audiences: Some(HashSet::from([AUDIENCE.to_string()])),
            time_tolerance: Some(Duration::from_secs(CLOCK_SKEW_SECS)),
            max_validity: Some(Duration::from_secs(MAX_AGE_SECS)),
            max_token_length: Some(4096),
            artificial_time: Some(UnixTimeStamp::from_secs(now)),
            ..VerificationOptions::default()
        };
        let claims = key
            .verify_token::<AssertionClaims>(token, Some(options))
            .map_err(|error| match error.downcast_ref::<JWTError>() {
                Some(
                    JWTError::TokenHasExpired
                    | JWTError::TokenIsTooOld
                    | JWTError::ClockDrift
                    | JWTError::OldTokenReused
                    | JWTError::TokenNotValidYet,
                ) => AssertionError::Stale,
                _ => AssertionError::Invalid,
            })?;
        let (Some(user), Some(jti), Some(expires)) = (claims.subject, claims.jwt_id, claims.expires_at) else {
            return Err(AssertionError::Invalid);
        };
        let custom = claims.custom;
        if user.is_empty() || !is_safe_org(&custom.org) {
            return Err(AssertionError::Invalid);
        }
        // Images are stored under `{org}/`: an org named like the store's
        // own prefixes would share their retention and erasure.
        if crate::storage::store::is_reserved_org(&custom.org) {
            return Err(AssertionError::ReservedOrg(
                crate::storage::store::RESERVED_PREFIXES.join(", "),
            ));
        }
        self.first_use(jti, expires.as_secs(), now)?;
        Ok(Caller {
            user,
            org: custom.org,
            key_id: custom.key_id.unwrap_or_default(),
            scopes: custom.scope.split_whitespace().map(str::to_string).collect(),
            request_id: custom.rid,
            tools: custom.tools,
            no_calls: custom.no_calls,
            trace: None,
        })
    }

    fn first_use(&self, jti: String, expires: u64, now: u64) -> Result<(), AssertionError> {
        let mut seen = self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if seen.expires.len() >= seen.prune_at {
            seen.expires.retain(|_, exp| *exp + CLOCK_SKEW_SECS >= now);
            seen.prune_at = (seen.expires.len() * 2).max(4096);
        }
        if seen.expires.insert(jti, expires).is_some() {
            return Err(AssertionError::Replayed);
        }
        Ok(())
    }
}

/// The org becomes a storage path segment: the store's rule, and a length bound.
fn is_safe_org(value: &str) -> bool {
    value.len() <= 128 && crate::storage::store::is_safe_segment(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jwt_simple::prelude::{Audiences, JWTClaims};
    use serde::Serialize;

    #[derive(Serialize, Deserialize)]
    struct Custom {
        org: String,
        scope: String,
        rid: String,
    }

    const NOW: u64 = 1_800_000_000;

    fn token(kid: &str, secret: &[u8], org: &str, jti: &str, iat: u64) -> String {
        let claims = JWTClaims {
            issued_at: Some(UnixTimeStamp::from_secs(iat)),
            expires_at: Some(UnixTimeStamp::from_secs(iat + 30)),
            invalid_before: None,
            issuer: Some(ISSUER.into()),
            subject: Some("alice".into()),
            audiences: Some(Audiences::AsString(AUDIENCE.into())),
            jwt_id: Some(jti.into()),
            nonce: None,
            custom: Custom {
                org: org.into(),
                scope: "images:generate".into(),
                rid: "r1".into(),
            },
        };
        HS256Key::from_bytes(secret)
            .with_key_id(kid)
            .authenticate(claims)
            .unwrap()
    }

    fn verifier() -> AssertionVerifier {
        let ring = Keyring::parse(&format!("old {}\nnew {}", "aa".repeat(32), "bb".repeat(32)), 32).unwrap();
        AssertionVerifier::new(&ring)
    }

    #[test]
    fn accepts_either_key_of_a_rotation_once() {
        let v = verifier();
        let caller = v.verify(&token("new", &[0xbb; 32], "acme", "j1", NOW), NOW).unwrap();
        assert_eq!((caller.user.as_str(), caller.org.as_str()), ("alice", "acme"));
        assert_eq!(caller.scopes, vec!["images:generate"]);
        assert_eq!(caller.request_id, "r1");
        assert!(v.verify(&token("old", &[0xaa; 32], "acme", "j2", NOW), NOW).is_ok());
        assert_eq!(
            v.verify(&token("new", &[0xbb; 32], "acme", "j1", NOW), NOW)
                .unwrap_err(),
            AssertionError::Replayed
        );
    }

    #[test]
    fn calls_are_held_to_the_rights_the_edge_asserted() {
        let v = verifier();
        let mut caller = v.verify(&token("new", &[0xbb; 32], "acme", "r9", NOW), NOW).unwrap();
        assert!(caller.may_call("generate_image").is_ok(), "no restriction asserted");
        caller.tools = Some(vec!["list_models".into()]);
        assert!(caller.may_call("list_models").is_ok());
        let refused = caller.may_call("generate_image").unwrap_err();
        assert!(refused.contains("\"generate_image\" is not available"), "{refused}");
        caller.no_calls = true;
        let refused = caller.may_call("list_models").unwrap_err();
        assert!(refused.contains("lacks the scope"), "{refused}");
    }

    #[test]
    fn refusals() {
        let v = verifier();
        let cases = [
            ("garbage", "abc".to_string(), AssertionError::Malformed),
            (
                "retired key",
                token("gone", &[0xcc; 32], "acme", "a", NOW),
                AssertionError::UnknownKey,
            ),
            (
                "forged",
                token("new", &[0xcc; 32], "acme", "b", NOW),
                AssertionError::Invalid,
            ),
            (
                "expired",
                token("new", &[0xbb; 32], "acme", "c", NOW - 60),
                AssertionError::Stale,
            ),
            (
                "from the future",
                token("new", &[0xbb; 32], "acme", "d", NOW + 60),
                AssertionError::Stale,
            ),
            (
                "unsafe org",
                token("new", &[0xbb; 32], "../x", "e", NOW),
                AssertionError::Invalid,
            ),
            (
                "org named like a store prefix",
                token("new", &[0xbb; 32], "uploads", "f", NOW),
                AssertionError::ReservedOrg(crate::storage::store::RESERVED_PREFIXES.join(", ")),
            ),
        ];
        for (name, token, expected) in cases {
            assert_eq!(v.verify(&token, NOW).unwrap_err(), expected, "case: {name}");
        }
    }

    #[test]
    fn the_replay_memory_forgets_only_expired_ids() {
        let v = verifier();
        for i in 0..5000 {
            v.first_use(format!("old{i}"), NOW - 100, NOW).unwrap();
        }
        v.first_use("live".into(), NOW + 30, NOW).unwrap();
        for i in 0..5000 {
            v.first_use(format!("new{i}"), NOW + 30, NOW).unwrap();
        }
        assert_eq!(v.first_use("live".into(), NOW + 30, NOW), Err(AssertionError::Replayed));
        assert!(v.seen.lock().unwrap().expires.len() < 10_002, "expired ids were pruned");
    }
}
