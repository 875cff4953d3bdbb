//! The global rate limit: one call per image request to a service speaking
//! Envoy's `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`, so
//! every Envoy replica draws on one count (the workspace's `mcp-ratelimit`,
//! limitador over Redis, or any other server of that API).
//!
//! Why the filter calls it rather than Envoy's native ratelimit filter: the
//! number of images (`n`) is only known once the filter has read the body,
//! and it is the unit of the quota (`hits_addend` = images); the local
//! buckets stay the first line, so over-limit callers never cost a gRPC call;
//! and what a failure of the service means (fail open or closed) is decided
//! here, with a JSON-RPC answer a client can act on.
//!
//! The request carries one descriptor, `[("org", <org>), ("caller", "key:<id>" | "user:<sub>")]`;
//! limits in the service pick the entries they count by.

use std::time::Duration;

use serde::Deserialize;

use crate::jwt::Identity;
use crate::limits::{limited, RATE_LIMITED};
use crate::reply::Reject;

pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const METHOD: &str = "ShouldRateLimit";

/// JSON-RPC code for "the rate-limit service could not be asked" (fail closed).
pub const LIMITER_UNAVAILABLE: i32 = -32030;

/// What the admin writes under `global_rate_limit`.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct GlobalRateLimitSpec {
    /// The Envoy cluster (HTTP/2) of the rate-limit service.
    pub cluster: String,
    /// The rate-limit domain (the service's namespace for our limits).
    #[serde(default = "default_domain")]
    pub domain: String,
    /// How long to wait for an answer, in milliseconds (1 to 10000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// What a failed, late or nonsensical answer means.
    #[serde(default)]
    pub failure_mode: FailureMode,
}

/// What a failed or late answer of the rate-limit service means.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Let the request through on the local limits alone (Envoy's own default).
    #[default]
    Allow,
    /// Refuse with 503 (`-32030`) until the service answers again.
    Deny,
}

fn default_domain() -> String {
    "mcp-gateway".into()
}

fn default_timeout_ms() -> u64 {
    200
}

/// The compiled setting.
#[derive(Debug, Clone)]
pub struct GlobalRateLimit {
    pub cluster: String,
    pub domain: String,
    pub timeout: Duration,
    pub failure_mode: FailureMode,
}

#[derive(Debug, thiserror::Error)]
pub enum GlobalRateLimitError {
    #[error("`global_rate_limit.cluster` must name the Envoy cluster of the rate-limit service")]
    NoCluster,
    #[error("`global_rate_limit.domain` must not be empty")]
    NoDomain,
    #[error("`global_rate_limit.timeout_ms` must be between 1 and 10000, got {0}")]
    Timeout(u64),
}

impl GlobalRateLimit {
    pub fn from_spec(spec: &GlobalRateLimitSpec) -> Result<Self, GlobalRateLimitError> {
        if spec.cluster.trim().is_empty() {
            return Err(GlobalRateLimitError::NoCluster);
        }
        if spec.domain.trim().is_empty() {
            return Err(GlobalRateLimitError::NoDomain);
        }
        if !(1..=10_000).contains(&spec.timeout_ms) {
            return Err(GlobalRateLimitError::Timeout(spec.timeout_ms));
        }
        Ok(Self {
            cluster: spec.cluster.clone(),
            domain: spec.domain.clone(),
            timeout: Duration::from_millis(spec.timeout_ms),
            failure_mode: spec.failure_mode,
        })
    }

    /// The serialized `RateLimitRequest` for a call producing `images` images.
    pub fn request(&self, identity: &Identity, images: u64) -> Vec<u8> {
        let caller = match &identity.key_id {
            Some(id) => format!("key:{id}"),
            None => format!("user:{}", identity.user),
        };
        let request = wire::RateLimitRequest {
            domain: self.domain.clone(),
            descriptors: vec![wire::RateLimitDescriptor {
                entries: vec![
                    wire::Entry {
                        key: "org".into(),
                        value: identity.org.clone(),
                    },
                    wire::Entry {
                        key: "caller".into(),
                        value: caller,
                    },
                ],
            }],
            hits_addend: u32::try_from(images).unwrap_or(u32::MAX),
        };
        prost::Message::encode_to_vec(&request)
    }

    /// What to do with the service's answer. `grpc_status` 0 is OK; `body` is
    /// the serialized `RateLimitResponse`.
    pub fn decide(&self, grpc_status: u32, body: Option<&[u8]>, org: &str) -> GlobalVerdict {
        if grpc_status != 0 {
            return self.failed(format!("gRPC status {grpc_status}"), org);
        }
        let response: wire::RateLimitResponse = match prost::Message::decode(body.unwrap_or_default()) {
            Ok(response) => response,
            Err(e) => return self.failed(format!("unreadable answer: {e}"), org),
        };
        match response.overall_code {
            wire::CODE_OK => GlobalVerdict::Allow,
            wire::CODE_OVER_LIMIT => GlobalVerdict::Refuse(over_limit(&response, org)),
            other => self.failed(format!("unknown overall code {other}"), org),
        }
    }

    /// The service could not be asked (no cluster, timeout, error, nonsense).
    pub fn failed(&self, why: String, org: &str) -> GlobalVerdict {
        match self.failure_mode {
            FailureMode::Allow => GlobalVerdict::AllowUnchecked(why),
            FailureMode::Deny => GlobalVerdict::Refuse(
                Reject::new(
                    503,
                    LIMITER_UNAVAILABLE,
                    "global_limit_unavailable",
                    "The gateway cannot check its shared rate limits right now, so it refuses new image requests. Retry in a few seconds.",
                )
                .with_org(org)
                .with_header("retry-after", "5")
                .with_data(serde_json::json!({ "cause": why })),
            ),
        }
    }
}

/// The outcome of the global check.
#[derive(Debug, Clone, PartialEq)]
// Made and matched once per request: boxing the refusal would only add an
// allocation to the refusal path.
#[allow(clippy::large_enum_variant)]
pub enum GlobalVerdict {
    Allow,
    /// The service failed and `failure_mode` is `allow`; the reason is logged.
    AllowUnchecked(String),
    Refuse(Reject),
}

fn over_limit(response: &wire::RateLimitResponse, org: &str) -> Reject {
    let status = response
        .statuses
        .iter()
        .find(|s| s.code == wire::CODE_OVER_LIMIT)
        .or(response.statuses.first());
    let limit = status.and_then(|s| s.current_limit.as_ref());
    let reset_secs = status
        .and_then(|s| s.duration_until_reset.as_ref())
        .map(|d| u64::try_from(d.seconds).unwrap_or_default() + u64::from(d.nanos > 0))
        .unwrap_or(1)
        .max(1);
    let quota = limit.map(|l| u64::from(l.requests_per_unit)).unwrap_or_default();
    let window = limit.map(|l| wire::unit_seconds(l.unit)).unwrap_or(reset_secs);
    let name = limit
        .map(|l| l.name.as_str())
        .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
        .unwrap_or("global");
    let mut reject = limited(
        org,
        "global_limited",
        format!(
            "Shared limit {name:?} reached for organisation {org:?} ({quota} per {window} s across all gateway replicas). Retry after {reset_secs} s."
        ),
        name,
        quota,
        window,
        status.map(|s| u64::from(s.limit_remaining)).unwrap_or_default(),
        reset_secs,
    );
    reject.code = RATE_LIMITED;
    reject
}

/// The messages of `envoy/service/ratelimit/v3/rls.proto` the filter uses,
/// with their field numbers (unused fields are skipped when decoding).
mod wire {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RateLimitRequest {
        #[prost(string, tag = "1")]
        pub domain: String,
        #[prost(message, repeated, tag = "2")]
        pub descriptors: Vec<RateLimitDescriptor>,
        #[prost(uint32, tag = "3")]
        pub hits_addend: u32,
    }

    /// `envoy.extensions.common.ratelimit.v3.RateLimitDescriptor`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RateLimitDescriptor {
        #[prost(message, repeated, tag = "1")]
        pub entries: Vec<Entry>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Entry {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RateLimitResponse {
        #[prost(int32, tag = "1")]
        pub overall_code: i32,
        #[prost(message, repeated, tag = "2")]
        pub statuses: Vec<DescriptorStatus>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct DescriptorStatus {
        #[prost(int32, tag = "1")]
        pub code: i32,
        #[prost(message, optional, tag = "2")]
        pub current_limit: Option<RateLimit>,
        #[prost(uint32, tag = "3")]
        pub limit_remaining: u32,
        #[prost(message, optional, tag = "4")]
        pub duration_until_reset: Option<Duration>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RateLimit {
        #[prost(uint32, tag = "1")]
        pub requests_per_unit: u32,
        #[prost(int32, tag = "2")]
        pub unit: i32,
        #[prost(string, tag = "3")]
        pub name: String,
    }

    /// `google.protobuf.Duration`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Duration {
        #[prost(int64, tag = "1")]
        pub seconds: i64,
        #[prost(int32, tag = "2")]
        pub nanos: i32,
    }

    pub const CODE_OK: i32 = 1;
    pub const CODE_OVER_LIMIT: i32 = 2;

    /// `RateLimit.Unit` in seconds (0 when unknown; a month counts 30 days).
    pub fn unit_seconds(unit: i32) -> u64 {
        match unit {
            1 => 1,
            2 => 60,
            3 => 3600,
            4 => 86_400,
            5 => 2_592_000,
            6 => 31_536_000,
            7 => 604_800,
            _ => 0,
        }
    }
}

#[cfg(test)]
#[path = "global_limit_tests.rs"]
mod tests;
