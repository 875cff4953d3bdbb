//! `ShouldRateLimit`: one atomic limitador check-and-update per request.

use std::collections::HashMap;
use std::time::Duration;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    rate_limit::Unit, Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as ProtoDuration;
use limitador::counter::Counter;
use limitador::limit::{Context, Limit};
use limitador::storage::redis::AsyncRedisStorage;
use limitador::{AsyncRateLimiter, CheckResult, RateLimiter};
use tonic::{Request, Response, Status};

/// Where the counters live.
pub enum Counters {
    /// Shared by every replica (production).
    Redis(AsyncRateLimiter),
    /// This process only (development, unit tests).
    Memory(RateLimiter),
}

/// The rate-limit service.
pub struct GlobalRateLimiter {
    counters: Counters,
}

impl GlobalRateLimiter {
    /// Counts in Redis at `redis_url` (`redis://host:port`); fails if Redis cannot be reached.
    pub async fn with_redis(redis_url: &str, limits: Vec<Limit>) -> anyhow::Result<Self> {
        let storage = AsyncRedisStorage::new(redis_url)
            .await
            .map_err(|e| anyhow::anyhow!("cannot use Redis at {redis_url}: {e}"))?;
        let limiter = AsyncRateLimiter::new_with_storage(Box::new(storage));
        limiter
            .configure_with(limits)
            .await
            .map_err(|e| anyhow::anyhow!("cannot load the limits: {e}"))?;
        Ok(Self {
            counters: Counters::Redis(limiter),
        })
    }

    /// Counts in this process's memory.
    pub fn in_memory(limits: Vec<Limit>) -> anyhow::Result<Self> {
        let limiter = RateLimiter::new(10_000);
        limiter
            .configure_with(limits)
            .map_err(|e| anyhow::anyhow!("cannot load the limits: {e}"))?;
        Ok(Self {
            counters: Counters::Memory(limiter),
        })
    }

    /// Decides one request: every limit of the `domain` namespace whose
    /// conditions hold is checked and, only if none is exceeded, charged
    /// `hits_addend` (default 1) in one step.
    pub async fn decide(&self, request: &RateLimitRequest) -> Result<RateLimitResponse, Status> {
        if request.domain.is_empty() {
            return Err(Status::invalid_argument("the rate-limit domain is empty"));
        }
        if request.descriptors.is_empty() {
            return Err(Status::invalid_argument("the request has no descriptors"));
        }
        let descriptors: Vec<HashMap<String, String>> = request
            .descriptors
            .iter()
            .map(|d| d.entries.iter().map(|e| (e.key.clone(), e.value.clone())).collect())
            .collect();
        // limitador-server's convention: limits read `descriptors[i].<key>`.
        let mut ctx = Context::default();
        ctx.list_binding("descriptors".to_string(), descriptors);
        let namespace = request.domain.as_str().into();
        let hits = u64::from(request.hits_addend.max(1));
        let result = match &self.counters {
            Counters::Redis(limiter) => limiter.check_rate_limited_and_update(&namespace, &ctx, hits).await,
            Counters::Memory(limiter) => limiter.check_rate_limited_and_update(&namespace, &ctx, hits),
        }
        .map_err(|e| {
            tracing::warn!(error = %e, domain = %request.domain, "rate-limit check failed");
            Status::unavailable(format!("the rate-limit store is unavailable: {e}"))
        })?;
        Ok(response_for(&result, request.descriptors.len(), hits))
    }
}

/// The answer: the overall code, and for each descriptor the binding limit
/// (the one with the least left), so a caller can say when to retry.
fn response_for(result: &CheckResult, descriptor_count: usize, hits: u64) -> RateLimitResponse {
    let code = if result.limited { Code::OverLimit } else { Code::Ok };
    let binding = binding_counter(result, hits);
    let status = DescriptorStatus {
        code: code as i32,
        current_limit: binding.map(|c| RateLimit {
            name: c.limit().name().unwrap_or_default().to_string(),
            requests_per_unit: saturate(c.max_value()),
            unit: unit_of(c.window()) as i32,
        }),
        limit_remaining: binding.and_then(Counter::remaining).map(saturate).unwrap_or_default(),
        duration_until_reset: binding.and_then(Counter::expires_in).map(|d| ProtoDuration {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(d.subsec_nanos()).unwrap_or_default(),
        }),
        quota: None,
    };
    RateLimitResponse {
        overall_code: code as i32,
        statuses: vec![status; descriptor_count],
        ..Default::default()
    }
}

/// The counter that decided: when limited, the first with too little left
/// for this request; otherwise the one with the least left.
fn binding_counter(result: &CheckResult, hits: u64) -> Option<&Counter> {
    let left = |c: &Counter| c.remaining().unwrap_or(c.max_value());
    if result.limited {
        if let Some(counter) = result.counters.iter().find(|c| left(c) < hits) {
            return Some(counter);
        }
    }
    result.counters.iter().min_by_key(|c| left(c))
}

fn saturate(value: u64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

fn unit_of(window: Duration) -> Unit {
    match window.as_secs() {
        1 => Unit::Second,
        60 => Unit::Minute,
        3600 => Unit::Hour,
        86_400 => Unit::Day,
        31_536_000 => Unit::Year,
        _ => Unit::Unknown,
    }
}

#[tonic::async_trait]
impl RateLimitService for GlobalRateLimiter {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let request = request.into_inner();
        let response = self.decide(&request).await?;
        tracing::debug!(
            domain = %request.domain,
            hits = request.hits_addend,
            over_limit = response.overall_code == Code::OverLimit as i32,
            "rate-limit decision"
        );
        Ok(Response::new(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
        rate_limit_descriptor::Entry, RateLimitDescriptor,
    };

    fn limits() -> Vec<Limit> {
        crate::limits_file::parse(
            r#"[
              {"namespace": "mcp-gateway", "max_value": 5, "seconds": 86400, "name": "org-daily-images",
               "conditions": [], "variables": ["descriptors[0].org"]},
              {"namespace": "mcp-gateway", "max_value": 3, "seconds": 60, "name": "beta-per-minute",
               "conditions": ["descriptors[0].org == 'beta'"], "variables": ["descriptors[0].org"]}
            ]"#,
            "test",
        )
        .unwrap()
    }

    fn request(org: &str, hits: u32) -> RateLimitRequest {
        RateLimitRequest {
            domain: "mcp-gateway".into(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![
                    Entry {
                        key: "org".into(),
                        value: org.into(),
                    },
                    Entry {
                        key: "caller".into(),
                        value: "key:k1".into(),
                    },
                ],
                ..Default::default()
            }],
            hits_addend: hits,
        }
    }

    #[tokio::test]
    async fn charges_hits_until_the_limit_then_refuses_without_charging() {
        let limiter = GlobalRateLimiter::in_memory(limits()).unwrap();
        let first = limiter.decide(&request("acme", 2)).await.unwrap();
        assert_eq!(first.overall_code, Code::Ok as i32);
        assert_eq!(first.statuses.len(), 1);
        assert_eq!(first.statuses[0].limit_remaining, 3);
        // 2 + 4 > 5: refused, and the refused images are not counted...
        let over = limiter.decide(&request("acme", 4)).await.unwrap();
        assert_eq!(over.overall_code, Code::OverLimit as i32);
        let status = &over.statuses[0];
        let limit = status.current_limit.as_ref().unwrap();
        assert_eq!(
            (limit.requests_per_unit, limit.unit, limit.name.as_str()),
            (5, Unit::Day as i32, "org-daily-images")
        );
        let reset = status.duration_until_reset.as_ref().unwrap().seconds;
        assert!((86_000..=86_400).contains(&reset), "{reset}");
        // ...so three more still fit.
        assert_eq!(
            limiter.decide(&request("acme", 3)).await.unwrap().overall_code,
            Code::Ok as i32
        );
        assert_eq!(
            limiter.decide(&request("acme", 1)).await.unwrap().overall_code,
            Code::OverLimit as i32
        );
        // Another org has its own count.
        assert_eq!(
            limiter.decide(&request("other", 5)).await.unwrap().overall_code,
            Code::Ok as i32
        );
    }

    #[tokio::test]
    async fn conditions_select_limits_and_the_tighter_one_binds() {
        let limiter = GlobalRateLimiter::in_memory(limits()).unwrap();
        assert_eq!(
            limiter.decide(&request("beta", 3)).await.unwrap().overall_code,
            Code::Ok as i32
        );
        let over = limiter.decide(&request("beta", 1)).await.unwrap();
        assert_eq!(over.overall_code, Code::OverLimit as i32);
        let limit = over.statuses[0].current_limit.as_ref().unwrap();
        assert_eq!(
            (limit.name.as_str(), limit.unit),
            ("beta-per-minute", Unit::Minute as i32)
        );
    }

    #[tokio::test]
    async fn malformed_requests_are_invalid_arguments() {
        let limiter = GlobalRateLimiter::in_memory(limits()).unwrap();
        let mut no_domain = request("acme", 1);
        no_domain.domain.clear();
        assert_eq!(
            limiter.decide(&no_domain).await.unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let mut empty = request("acme", 1);
        empty.descriptors.clear();
        assert_eq!(
            limiter.decide(&empty).await.unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        // A domain without limits is never limited (Envoy's convention).
        let mut unknown = request("acme", 100);
        unknown.domain = "elsewhere".into();
        assert_eq!(limiter.decide(&unknown).await.unwrap().overall_code, Code::Ok as i32);
    }
}
