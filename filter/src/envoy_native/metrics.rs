//! The filter's metrics in the dynamic-module build: the Wasm build's
//! counters and gauges with the same names and labels, tagged natively by
//! Envoy. Envoy keeps the namespace (`metrics_namespace: mcp_edge`) in their
//! Prometheus names, `envoy_mcp_edge_*`, where it drops the Wasm build's
//! `wasmcustom`; the Prometheus configuration renames them to `mcp_edge_*`.

use super::abi::{self, FilterConfigEnvoy, FilterEnvoy, ModuleBuffer};
use crate::credentials::CacheUse;
use crate::limits::QuotaUse;
use crate::reply::Reject;

/// Ids of the metrics, defined when Envoy loads the configuration.
pub struct Metrics {
    requests: usize,
    auth_failures: usize,
    rate_limited: usize,
    cache_lookups: usize,
    jwks_refreshes: usize,
    global_checks: usize,
    quota_images: usize,
    settings_info: usize,
    settings_changed: usize,
}

fn define(config: FilterConfigEnvoy, gauge: bool, name: &str, labels: &[&str]) -> Option<usize> {
    let labels: Vec<ModuleBuffer> = labels.iter().map(|l| ModuleBuffer::of(l.as_bytes())).collect();
    let mut id = 0usize;
    let name = ModuleBuffer::of(name.as_bytes());
    // SAFETY: name and labels outlive the call; Envoy writes `id`.
    let result = unsafe {
        if gauge {
            abi::envoy_dynamic_module_callback_http_filter_config_define_gauge(
                config,
                name,
                labels.as_ptr(),
                labels.len(),
                &mut id,
            )
        } else {
            abi::envoy_dynamic_module_callback_http_filter_config_define_counter(
                config,
                name,
                labels.as_ptr(),
                labels.len(),
                &mut id,
            )
        }
    };
    (result == abi::METRICS_SUCCESS).then_some(id)
}

fn values(labels: &[&str]) -> Vec<ModuleBuffer> {
    labels.iter().map(|l| ModuleBuffer::of(l.as_bytes())).collect()
}

impl Metrics {
    /// Defines every metric (Envoy allows it only while loading the configuration).
    pub fn define(config: FilterConfigEnvoy) -> Option<Self> {
        Some(Self {
            requests: define(config, false, "requests_total", &["decision", "reason"])?,
            auth_failures: define(config, false, "auth_failures_total", &["cause"])?,
            rate_limited: define(config, false, "rate_limited_total", &["reason", "org", "key"])?,
            cache_lookups: define(config, false, "token_cache_lookups_total", &["result"])?,
            jwks_refreshes: define(config, false, "jwks_refreshes_total", &["result"])?,
            global_checks: define(config, false, "global_limit_checks_total", &["result"])?,
            quota_images: define(config, true, "quota_images", &["kind", "org"])?,
            settings_info: define(config, true, "settings_info", &["sha256"])?,
            settings_changed: define(config, true, "settings_changed_at_seconds", &[])?,
        })
    }

    /// Ids that name nothing, for unit tests that never reach Envoy.
    #[cfg(test)]
    pub fn unregistered() -> Self {
        Self {
            requests: 0,
            auth_failures: 0,
            rate_limited: 0,
            cache_lookups: 0,
            jwks_refreshes: 0,
            global_checks: 0,
            quota_images: 0,
            settings_info: 0,
            settings_changed: 0,
        }
    }

    fn count(&self, filter: FilterEnvoy, id: usize, labels: &[&str]) {
        let labels = values(labels);
        // SAFETY: the labels outlive the call.
        unsafe {
            abi::envoy_dynamic_module_callback_http_filter_increment_counter(
                filter,
                id,
                labels.as_ptr(),
                labels.len(),
                1,
            );
        }
    }

    pub fn forwarded(&self, filter: FilterEnvoy) {
        self.count(filter, self.requests, &["forward", "ok"]);
    }

    pub fn rejected(&self, filter: FilterEnvoy, reject: &Reject) {
        self.count(filter, self.requests, &["reject", reject.reason]);
        if reject.status == 401 {
            self.count(filter, self.auth_failures, &[reject.reason]);
        }
        if reject.status == 429 {
            let org = reject.org.as_deref().unwrap_or("unknown");
            let key = reject.key.as_deref().unwrap_or("unknown");
            self.count(filter, self.rate_limited, &[reject.reason, org, key]);
        }
    }

    /// A response cut off at the output cap.
    pub fn cut_off(&self, filter: FilterEnvoy) {
        self.count(filter, self.requests, &["reject", "response_too_large"]);
    }

    pub fn cache(&self, filter: FilterEnvoy, cache: CacheUse) {
        match cache {
            CacheUse::Hit => self.count(filter, self.cache_lookups, &["hit"]),
            CacheUse::Miss => self.count(filter, self.cache_lookups, &["miss"]),
            CacheUse::NotApplicable => {}
        }
    }

    pub fn global_check(&self, filter: FilterEnvoy, result: &str) {
        self.count(filter, self.global_checks, &[result]);
    }

    pub fn quota(&self, filter: FilterEnvoy, org: &str, quota: QuotaUse) {
        for (kind, value) in [("used", quota.used), ("limit", quota.limit)] {
            let labels = values(&[kind, org]);
            // SAFETY: the labels outlive the call.
            unsafe {
                abi::envoy_dynamic_module_callback_http_filter_set_gauge(
                    filter,
                    self.quota_images,
                    labels.as_ptr(),
                    labels.len(),
                    value,
                );
            }
        }
    }

    /// Settings now running (`sha256`), replacing `previous`, applied at `now_s`.
    pub fn settings_applied(&self, config: FilterConfigEnvoy, sha256: &str, previous: Option<&str>, now_s: u64) {
        let set = |id: usize, labels: &[&str], value: u64| {
            let labels = values(labels);
            // SAFETY: the labels outlive the call.
            unsafe {
                abi::envoy_dynamic_module_callback_http_filter_config_set_gauge(
                    config,
                    id,
                    labels.as_ptr(),
                    labels.len(),
                    value,
                );
            }
        };
        if let Some(previous) = previous.filter(|p| *p != sha256) {
            set(self.settings_info, &[previous], 0);
        }
        set(self.settings_info, &[sha256], 1);
        set(self.settings_changed, &[], now_s);
    }

    /// A JWKS refresh's outcome (counted on the main thread, outside any stream).
    pub fn jwks_refresh(&self, config: FilterConfigEnvoy, result: &str) {
        let labels = values(&[result]);
        // SAFETY: the labels outlive the call.
        unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_increment_counter(
                config,
                self.jwks_refreshes,
                labels.as_ptr(),
                labels.len(),
                1,
            );
        }
    }
}
