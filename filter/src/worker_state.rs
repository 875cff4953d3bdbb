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

    /// After keys fetched from a JWKS URL changed: tokens verified with
    /// keys that may be gone must be checked again.
    pub fn keys_changed(&mut self) {
        self.cache = TokenCache::new(self.cache_entries);
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
}
