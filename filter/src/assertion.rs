//! The signed identity assertion the filter attaches to every request it
//! admits, so the upstream never has to believe bare headers.
//!
//! It is a short-lived HS256 JWT in `x-mcp-identity`: `sub` the user, `org`,
//! `key_id` (API-key callers), `scope`, `rid` (Envoy's request id, for logs),
//! a random `jti` (the upstream refuses a second use), `iat`/`exp`
//! (`ttl_seconds`, default 30), `iss` `mcp-edge` and `aud` `mcp-upstream`.
//! The key is shared with the upstream (a Kubernetes Secret); its `kid` lets
//! the upstream accept the old and the new key while one rotates.
//!
//! It runs on every admitted request, so it is built by hand rather than
//! through a JWT library: the header and each caller's fixed claims are
//! encoded and MACed once per worker (`Prefixes`), so a request encodes and
//! MACs only its own few claims; the MAC is `hmac` over SHA-256. The result is a
//! standard HS256 JWT (the upstream verifies it with jwt-simple; a test here
//! does too).

use std::collections::HashMap;
use std::fmt::Write;
use std::hash::{Hash, Hasher};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::jwt::Identity;

/// Header carrying the assertion.
pub const HEADER: &str = "x-mcp-identity";
/// `iss` of every assertion.
pub const ISSUER: &str = "mcp-edge";
/// `aud` of every assertion.
pub const AUDIENCE: &str = "mcp-upstream";
/// Shortest key accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 32;

/// What the admin writes under `identity_assertion`.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Id of the signing key (the upstream looks the key up by it).
    pub key_id: String,
    /// The HMAC key, hex of at least 32 bytes, inline...
    #[serde(default)]
    pub key: Option<String>,
    /// ...or the name of an environment variable of Envoy's holding it
    /// (exposed to the VM with `vm_config.environment_variables.host_env_keys`;
    /// the template lists `MCP_IDENTITY_ASSERTION_KEY`). Exactly one of the two.
    #[serde(default)]
    pub key_env: Option<String>,
    /// Lifetime of an assertion, in seconds (1 to 300).
    #[serde(default = "default_ttl_seconds")]
    pub ttl_seconds: u64,
}

fn default_ttl_seconds() -> u64 {
    30
}

/// Why the assertion settings were refused.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("`identity_assertion`: give exactly one of `key` or `key_env`")]
    KeySource,
    #[error("`identity_assertion`: environment variable {0:?} is not set in Envoy's Wasm VM (list it in vm_config.environment_variables.host_env_keys)")]
    MissingEnv(String),
    #[error("`identity_assertion`: the key must be hex of at least {MIN_KEY_BYTES} bytes")]
    Key,
    #[error("`identity_assertion`: `key_id` must be 1-64 characters of A-Z a-z 0-9 . _ -")]
    KeyId,
    #[error("`identity_assertion`: `ttl_seconds` must be from 1 to 300")]
    Ttl,
}

/// Claims beyond the registered ones.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AssertionClaims {
    pub org: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Space-separated scopes.
    pub scope: String,
    /// Envoy's `x-request-id`.
    pub rid: String,
    /// The tools the caller may call, when per-tool access hides some.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<String>>,
    /// True when the caller may call no tool (it lacks `tools_call_scope`):
    /// the upstream refuses its calls too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_calls: bool,
}

/// What a caller may do with the tools, as the edge decided it: carried in
/// the assertion so that the upstream holds every call to the same rules.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ToolRights {
    /// The tools the caller may see and call, when per-tool access hides
    /// some (`None`: every tool).
    pub tools: Option<Vec<String>>,
    /// The caller lacks the scope every `tools/call` needs (it may still list).
    pub no_calls: bool,
}

/// The claims fixed for one caller, written first; `rid`, `jti`, `iat` and
/// `exp` follow per request.
#[derive(Serialize)]
struct FixedClaims<'a> {
    iss: &'static str,
    aud: &'static str,
    sub: &'a str,
    org: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<&'a str>,
    scope: &'a str,
    /// The tools this caller may call, when per-tool access hides some
    /// (the upstream's `tools/list` shows only these).
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<&'a [String]>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    no_calls: bool,
}

/// The compiled signer.
pub struct AssertionSigner {
    key_id: String,
    mac: Hmac<Sha256>,
    /// `base64url({"alg":"HS256","typ":"JWT","kid":…})`, encoded once (padded
    /// to end on a whole base64 group with the `.` after it).
    header: String,
    ttl_seconds: u64,
}

impl std::fmt::Debug for AssertionSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssertionSigner")
            .field("key_id", &self.key_id)
            .field("ttl_seconds", &self.ttl_seconds)
            .finish()
    }
}

impl AssertionSigner {
    pub fn from_settings(settings: &Settings) -> Result<Self, SettingsError> {
        let hex_key = match (&settings.key, &settings.key_env) {
            (Some(key), None) => key.clone(),
            (None, Some(name)) => std::env::var(name).map_err(|_| SettingsError::MissingEnv(name.clone()))?,
            _ => return Err(SettingsError::KeySource),
        };
        let key = hex::decode(hex_key.trim()).map_err(|_| SettingsError::Key)?;
        if key.len() < MIN_KEY_BYTES {
            return Err(SettingsError::Key);
        }
        let id_ok = (1..=64).contains(&settings.key_id.len())
            && settings
                .key_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !id_ok {
            return Err(SettingsError::KeyId);
        }
        if !(1..=300).contains(&settings.ttl_seconds) {
            return Err(SettingsError::Ttl);
        }
        let mut header = serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": settings.key_id}).to_string();
        // JSON whitespace before the closing brace, to 2 mod 3 bytes: its base64
        // then ends on 3 mod 4 characters, and `header.` on a whole group.
        while header.len() % 3 != 2 {
            header.insert(header.len() - 1, ' ');
        }
        Ok(Self {
            key_id: settings.key_id.clone(),
            mac: Hmac::<Sha256>::new_from_slice(&key).map_err(|_| SettingsError::Key)?,
            header: URL_SAFE_NO_PAD.encode(header),
            ttl_seconds: settings.ttl_seconds,
        })
    }

    /// The assertion for `identity` on request `request_id` at `now_ms`;
    /// `jti` must never repeat (the upstream refuses a second use).
    /// `rights` is asked once per caller (its answer is part of the
    /// caller's prefix).
    ///
    /// The claims fixed for a caller come first, padded with JSON whitespace
    /// so that `header.claims` ends on a whole 64-byte block: that text and
    /// the MAC state over it are kept per caller in `prefixes`, and a request
    /// encodes and MACs only its own claims, from a fresh SHA-256 block.
    pub fn sign(
        &self,
        prefixes: &mut Prefixes,
        identity: &Identity,
        rights: impl FnOnce() -> ToolRights,
        request_id: &str,
        jti: &str,
        now_ms: u64,
    ) -> Option<String> {
        let prefix = prefixes.get_or_make(identity, || self.prefix(identity, rights()))?;
        let now = now_ms / 1000;
        let mut tail = String::with_capacity(request_id.len() + jti.len() + 64);
        tail.push_str(",\"rid\":");
        push_json_string(&mut tail, request_id)?;
        tail.push_str(",\"jti\":");
        push_json_string(&mut tail, jti)?;
        write!(tail, ",\"iat\":{now},\"exp\":{}}}", now + self.ttl_seconds).ok()?;
        let mut token = String::with_capacity(prefix.text.len() + tail.len() * 4 / 3 + 48);
        token.push_str(&prefix.text);
        URL_SAFE_NO_PAD.encode_string(tail.as_bytes(), &mut token);
        let mut mac = prefix.mac.clone();
        mac.update(token.as_bytes().get(prefix.text.len()..)?);
        let signature = mac.finalize().into_bytes();
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);
        Some(token)
    }

    /// The encoded header and fixed claims of `identity`'s assertions, and
    /// the MAC state after them.
    fn prefix(&self, identity: &Identity, rights: ToolRights) -> Option<Prefix> {
        let scope = identity.scopes.join(" ");
        let fixed = FixedClaims {
            iss: ISSUER,
            aud: AUDIENCE,
            sub: &identity.user,
            org: &identity.org,
            key_id: identity.key_id.as_deref(),
            scope: &scope,
            tools: rights.tools.as_deref(),
            no_calls: rights.no_calls,
        };
        let mut json = serde_json::to_string(&fixed).ok()?;
        json.pop(); // the closing brace: the request's own claims follow
        while json.len() % 3 != 0 {
            json.push(' ');
        }
        // Whole 64-byte blocks (the header part ends on a base64 group, so 3
        // bytes more are 4 characters more): a request's MAC then starts on
        // a fresh SHA-256 block, one compression fewer for most callers.
        while !(self.header.len() + 1 + json.len() / 3 * 4).is_multiple_of(64) {
            json.push_str("   ");
        }
        let mut text = String::with_capacity(self.header.len() + 1 + json.len() * 4 / 3);
        text.push_str(&self.header);
        text.push('.');
        URL_SAFE_NO_PAD.encode_string(json.as_bytes(), &mut text);
        let mut mac = self.mac.clone();
        mac.update(text.as_bytes());
        Some(Prefix { text, mac })
    }
}

/// The assertion ids (`jti`) one worker hands out: a random 64-bit seed
/// drawn once, then a counter, so no two requests of any worker share one
/// without a random draw per request.
#[derive(Default)]
pub struct Ids {
    seed: u64,
    counter: u64,
}

impl Ids {
    /// The next id; `seed` is asked once, for the first.
    pub fn next(&mut self, seed: impl FnOnce() -> u64) -> String {
        if self.seed == 0 {
            self.seed = seed() | 1;
        }
        let id = format!("{:016x}{:016x}", self.seed, self.counter);
        self.counter += 1;
        id
    }
}

/// A random seed for `Ids`; the clock's nanoseconds when the platform has
/// no randomness (logged).
pub fn random_seed(clock_nanos: impl FnOnce() -> u64) -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        log::warn!("no randomness for identity assertion ids; using the clock");
        return clock_nanos();
    }
    u64::from_be_bytes(bytes)
}

/// Appends `text` as a JSON string: as is when nothing needs escaping (request
/// ids and assertion ids are plain), else through serde_json.
fn push_json_string(out: &mut String, text: &str) -> Option<()> {
    if text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(text);
        out.push('"');
        return Some(());
    }
    out.push_str(&serde_json::to_string(text).ok()?);
    Some(())
}

/// What one caller's assertions start with.
#[derive(Clone)]
pub struct Prefix {
    /// `header.` and the base64 of the fixed claims (whole groups).
    text: String,
    /// The MAC state after `text`.
    mac: Hmac<Sha256>,
}

/// One worker's assertion prefixes, by caller.
#[derive(Default)]
pub struct Prefixes {
    by_caller: HashMap<u64, Vec<(Caller, Prefix)>>,
    len: usize,
}

/// The fields of an identity that its fixed claims are made of.
struct Caller {
    user: String,
    org: String,
    key_id: Option<String>,
    scopes: Vec<String>,
}

impl Caller {
    fn of(identity: &Identity) -> Self {
        Self {
            user: identity.user.clone(),
            org: identity.org.clone(),
            key_id: identity.key_id.clone(),
            scopes: identity.scopes.clone(),
        }
    }

    fn is(&self, identity: &Identity) -> bool {
        self.user == identity.user
            && self.org == identity.org
            && self.key_id == identity.key_id
            && self.scopes == identity.scopes
    }
}

/// Callers a worker keeps prefixes for (all are dropped past it).
const MAX_PREFIXES: usize = 4_096;

impl Prefixes {
    /// `identity`'s prefix, made on first use: one map lookup per request.
    fn get_or_make(&mut self, identity: &Identity, make: impl FnOnce() -> Option<Prefix>) -> Option<&Prefix> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (&identity.user, &identity.org, &identity.key_id, &identity.scopes).hash(&mut hasher);
        if self.len >= MAX_PREFIXES {
            self.by_caller.clear();
            self.len = 0;
        }
        let entries = self.by_caller.entry(hasher.finish()).or_default();
        let index = match entries.iter().position(|(caller, _)| caller.is(identity)) {
            Some(index) => index,
            None => {
                entries.push((Caller::of(identity), make()?));
                self.len += 1;
                entries.len() - 1
            }
        };
        entries.get(index).map(|(_, prefix)| prefix)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jwt_simple::prelude::{HS256Key, MACLike, NoCustomClaims, VerificationOptions};

    fn settings(key: &str) -> Settings {
        Settings {
            key_id: "k1".into(),
            key: Some(key.into()),
            key_env: None,
            ttl_seconds: 30,
        }
    }

    #[test]
    fn signs_a_token_the_shared_key_verifies() {
        let hex_key = "ab".repeat(32);
        let signer = AssertionSigner::from_settings(&settings(&hex_key)).unwrap();
        let identity = Identity {
            user: "alice".into(),
            org: "acme".into(),
            scopes: vec!["images:generate".into(), "x".into()],
            expires_at: u64::MAX,
            key_id: Some("dev-key".into()),
        };
        let now = jwt_simple::prelude::Clock::now_since_epoch().as_secs();
        let mut prefixes = Prefixes::default();
        let token = signer
            .sign(
                &mut prefixes,
                &identity,
                ToolRights::default,
                "rid-1",
                "0707",
                now * 1000,
            )
            .unwrap();
        // The second request of the caller reuses the prefix and still verifies.
        let again = signer
            .sign(
                &mut prefixes,
                &identity,
                ToolRights::default,
                "rid-\"2\"",
                "0708",
                now * 1000,
            )
            .unwrap();
        assert_eq!(prefixes.len(), 1);
        let prefix = prefixes.get_or_make(&identity, || None).unwrap();
        assert_eq!(
            prefix.text.len() % 64,
            0,
            "the MAC of a request starts on a fresh block"
        );
        let other_caller = Identity {
            scopes: vec![],
            ..identity.clone()
        };
        let other = signer
            .sign(
                &mut prefixes,
                &other_caller,
                || ToolRights {
                    tools: Some(vec!["list_models".into()]),
                    no_calls: true,
                },
                "rid-3",
                "0709",
                now * 1000,
            )
            .unwrap();
        assert_eq!(prefixes.len(), 2);
        let key = HS256Key::from_bytes(&hex::decode(&hex_key).unwrap()).with_key_id("k1");
        let claims = key
            .verify_token::<AssertionClaims>(&token, Some(VerificationOptions::default()))
            .unwrap();
        assert_eq!(claims.subject.as_deref(), Some("alice"));
        assert_eq!(claims.jwt_id.as_deref(), Some("0707"));
        assert_eq!(claims.issuer.as_deref(), Some(ISSUER));
        assert!(claims
            .audiences
            .unwrap()
            .contains(&std::collections::HashSet::from([AUDIENCE.to_string()])));
        assert_eq!(
            jwt_simple::token::Token::decode_metadata(&token).unwrap().key_id(),
            Some("k1")
        );
        assert_eq!(
            claims.custom,
            AssertionClaims {
                org: "acme".into(),
                key_id: Some("dev-key".into()),
                scope: "images:generate x".into(),
                rid: "rid-1".into(),
                tools: None,
                no_calls: false,
            }
        );
        let again = key
            .verify_token::<AssertionClaims>(&again, Some(VerificationOptions::default()))
            .unwrap();
        assert_eq!(
            (again.custom.rid.as_str(), again.jwt_id.as_deref()),
            ("rid-\"2\"", Some("0708"))
        );
        let other = key
            .verify_token::<AssertionClaims>(&other, Some(VerificationOptions::default()))
            .unwrap();
        assert_eq!(
            (other.custom.scope.as_str(), other.subject.as_deref()),
            ("", Some("alice"))
        );
        assert_eq!(other.custom.tools, Some(vec!["list_models".to_string()]));
        assert!(other.custom.no_calls, "a caller without the call scope is marked");
        let foreign = HS256Key::from_bytes(&[1; 32]);
        assert!(foreign.verify_token::<NoCustomClaims>(&token, None).is_err());
    }

    #[test]
    fn ids_draw_the_seed_once_and_never_repeat() {
        let mut ids = Ids::default();
        let mut draws = 0;
        let taken: Vec<String> = (0..3)
            .map(|_| {
                ids.next(|| {
                    draws += 1;
                    0xabc0
                })
            })
            .collect();
        assert_eq!(draws, 1);
        // An even seed is made odd, so a zero draw still marks the seed as drawn.
        assert_eq!(taken[0], "000000000000abc10000000000000000");
        assert_eq!(taken[2], "000000000000abc10000000000000002");
        let mut other = Ids::default();
        assert_ne!(other.next(|| random_seed(|| 1)), taken[0]);
    }

    #[test]
    fn refuses_bad_settings() {
        let cases = [
            ("short key", settings(&"ab".repeat(16))),
            ("not hex", settings(&"zz".repeat(32))),
            (
                "both sources",
                Settings {
                    key_env: Some("X".into()),
                    ..settings(&"ab".repeat(32))
                },
            ),
            (
                "bad id",
                Settings {
                    key_id: "a b".into(),
                    ..settings(&"ab".repeat(32))
                },
            ),
            (
                "long ttl",
                Settings {
                    ttl_seconds: 3600,
                    ..settings(&"ab".repeat(32))
                },
            ),
            (
                "unset env",
                Settings {
                    key: None,
                    key_env: Some("MCP_TEST_SURELY_UNSET".into()),
                    ..settings("")
                },
            ),
        ];
        for (name, case) in cases {
            assert!(AssertionSigner::from_settings(&case).is_err(), "case: {name}");
        }
    }
}
