//! What one Envoy worker keeps between requests, across settings changes.
//!
//! Settings arrive live (ECDS): Envoy compiles a new configuration while
//! the old one finishes its requests. Buckets and quotas live in the shared
//! store and never notice; this is the per-worker part — verified tokens,
//! leased bucket tokens, assertion prefixes — kept by both glues in one
//! place per worker and carried over to the new settings, dropping only
//! what the change invalidates (`SettingsIdentity`'s groups).

use crate::assertion::{self, Prefixes};
use crate::config::{FilterConfig, SettingsIdentity};
use crate::credentials::TokenCache;
use crate::jwt::KeySet;
use crate::leases::Leases;

/// Per-worker state (one per Wasm VM, one per native worker thread).
pub struct WorkerState {
    pub cache: TokenCache,
    pub leases: Leases,
    pub assertions: Prefixes,
    pub assertion_ids: assertion::Ids,
    /// The settings the state was last fitted to.
    fitted_to: SettingsIdentity,
    cache_entries: usize,
}

/// What `adopt` dropped, for the log line of a settings change.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    pub tokens: bool,
    pub leases: bool,
    pub assertion_prefixes: bool,
}

impl WorkerState {
    pub fn new(config: &FilterConfig) -> Self {
        Self {
            cache: TokenCache::new(config.token_cache_entries),
            leases: Leases::default(),
            assertions: Prefixes::default(),
            assertion_ids: assertion::Ids::default(),
            fitted_to: config.identity.clone(),
            cache_entries: config.token_cache_entries,
        }
    }

    /// Fits the state to newly applied settings: verified tokens stay unless
    /// the credential settings changed, leased bucket tokens unless the
    /// limits did (a tightened limit then binds the next request), and
    /// assertion prefixes unless what they say did.
    pub fn adopt(&mut self, config: &FilterConfig) -> Dropped {
        let (old, new) = (&self.fitted_to, &config.identity);
        let dropped = Dropped {
            tokens: old.credentials != new.credentials || self.cache_entries != config.token_cache_entries,
            leases: old.limits != new.limits,
            assertion_prefixes: old.assertion != new.assertion,
        };
        if dropped.tokens {
            self.cache = TokenCache::new(config.token_cache_entries);
            self.cache_entries = config.token_cache_entries;
        }
        if dropped.leases {
            self.leases = Leases::default();
        }
        if dropped.assertion_prefixes {
            self.assertions = Prefixes::default();
        }
        self.fitted_to = new.clone();
        dropped
    }

    /// After keys were fetched from a JWKS URL (every refresh, changed or
    /// not): tokens verified with keys now gone must be checked again; the
    /// others stay, so a refresh does not re-verify every caller at once.
    pub fn keys_changed(&mut self, keys: &KeySet) {
        self.cache.retain_keys(keys);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(patch: serde_json::Value) -> FilterConfig {
        let mut settings = json!({"jwt": {"issuer": "i", "audiences": ["a"], "jwks": {"keys": [{
            "kty": "OKP", "crv": "Ed25519", "kid": "k1",
            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}}});
        for (k, v) in patch.as_object().unwrap() {
            settings[k] = v.clone();
        }
        FilterConfig::from_json(settings.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn a_change_drops_only_what_it_invalidates() {
        let base = config(json!({"rate_limits": {"per_caller": {"requests_per_second": 5, "burst": 10}}}));
        let cases = [
            (
                "body limit only",
                json!({"max_body_bytes": 1000, "rate_limits": {"per_caller": {"requests_per_second": 5, "burst": 10}}}),
                Dropped::default(),
            ),
            (
                "tightened limit",
                json!({"rate_limits": {"per_caller": {"requests_per_second": 1, "burst": 2}}}),
                Dropped {
                    leases: true,
                    ..Dropped::default()
                },
            ),
            (
                "new audience",
                json!({"jwt": {"issuer": "i", "audiences": ["b"], "jwks": {"keys": [{
                "kty": "OKP", "crv": "Ed25519", "kid": "k1",
                "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}}, "rate_limits": {"per_caller": {"requests_per_second": 5, "burst": 10}}}),
                Dropped {
                    tokens: true,
                    ..Dropped::default()
                },
            ),
            (
                "tool access",
                json!({"tool_access": {"orgs": {"acme": ["generate_image"]}}, "rate_limits": {"per_caller": {"requests_per_second": 5, "burst": 10}}}),
                Dropped {
                    assertion_prefixes: true,
                    ..Dropped::default()
                },
            ),
        ];
        for (name, patch, expected) in cases {
            let mut state = WorkerState::new(&base);
            assert_eq!(state.adopt(&config(patch)), expected, "{name}");
            assert_eq!(state.adopt(&base), expected, "{name}, back again");
        }
    }

    /// A JWKS refresh drops exactly the verified tokens whose key left: an
    /// identical document or an added key keeps every one, a rotated-out key
    /// drops its own and no other.
    #[test]
    fn a_jwks_refresh_drops_only_the_tokens_of_keys_that_left() {
        use crate::credentials::{authenticate, CacheUse};
        use jwt_simple::prelude::*;

        const NOW: u64 = 1_800_000_000;
        let config = config(json!({"jwt": {"issuer": "i", "audiences": ["a"],
            "jwks_uri": {"cluster": "iam", "path": "/jwks", "authority": "iam"}}}));
        let (old, new) = (
            Ed25519KeyPair::generate().with_key_id("old"),
            Ed25519KeyPair::generate().with_key_id("new"),
        );
        let jwks = |keys: &[&Ed25519KeyPair]| {
            let keys: Vec<serde_json::Value> = keys
                .iter()
                .map(|k| serde_json::from_str(&k.public_key().to_jwk()).unwrap())
                .collect();
            json!({ "keys": keys })
        };
        let token = |key: &Ed25519KeyPair, user: &str| {
            let mut claims = Claims::with_custom_claims(json!({"org": "acme"}), Duration::from_secs(600))
                .with_issuer("i")
                .with_audience("a")
                .with_subject(user);
            claims.issued_at = Some(UnixTimeStamp::from_secs(NOW));
            claims.invalid_before = Some(UnixTimeStamp::from_secs(NOW));
            claims.expires_at = Some(UnixTimeStamp::from_secs(NOW + 600));
            format!("Bearer {}", key.sign(claims).unwrap())
        };
        let old_tokens: Vec<String> = ["u1", "u2", "u3"].iter().map(|u| token(&old, u)).collect();
        let new_tokens: Vec<String> = ["u4", "u5"].iter().map(|u| token(&new, u)).collect();
        let mut state = WorkerState::new(&config);
        let call = |state: &mut WorkerState, auth: &str| {
            authenticate(&config.jwt, &config.api_keys, &mut state.cache, Some(auth), None, NOW)
                .map(|(_, cache, _)| cache)
        };
        let refresh = |state: &mut WorkerState, keys: &[&Ed25519KeyPair]| {
            let change = config.jwt.replace_keys(0, &jwks(keys)).unwrap();
            state.keys_changed(&change);
        };

        refresh(&mut state, &[&old]);
        for auth in &old_tokens {
            assert_eq!(call(&mut state, auth), Ok(CacheUse::Miss));
        }
        refresh(&mut state, &[&old]);
        assert_eq!(state.cache.len(), 3, "an identical JWKS keeps every verified token");
        refresh(&mut state, &[&old, &new]);
        assert_eq!(state.cache.len(), 3, "an added key keeps every verified token");
        for auth in &new_tokens {
            assert_eq!(call(&mut state, auth), Ok(CacheUse::Miss));
        }
        refresh(&mut state, &[&new]);
        assert_eq!(
            state.cache.len(),
            2,
            "the rotated-out key's tokens, and only they, are dropped"
        );
        for auth in &new_tokens {
            assert_eq!(call(&mut state, auth), Ok(CacheUse::Hit));
        }
        assert!(
            call(&mut state, &old_tokens[0]).is_err(),
            "a token of the removed key is checked again"
        );
    }
}
