//! Rate limits and quotas: token buckets per caller (API key or JWT user)
//! and per organisation, and per-organisation daily image quotas.
//!
//! Envoy runs one Wasm VM per worker thread, so counters live in proxy-wasm
//! shared data and are updated with compare-and-swap: every worker enforces
//! the same limit. `SharedStore` abstracts that host API so the logic is
//! tested on the host, conflicts included.
//!
//! A key that stays contended for every attempt refuses the request (429
//! `limit_contended`, `Retry-After: 1`): admitting it uncharged would let the
//! hottest callers, the ones contention comes from, past their limit.

use std::cell::Cell;
use std::collections::HashMap;

use serde::Deserialize;

use crate::jwt::Identity;
use crate::leases::{lease_size, Leases};
use crate::reply::Reject;

/// JSON-RPC code for a refused-by-limit request (server-defined range).
pub const RATE_LIMITED: i32 = -32029;
/// Attempts at a compare-and-swap update before giving up.
pub const MAX_CAS_ATTEMPTS: usize = 32;
/// Bound of the pause after the first lost attempt, in spins; it doubles
/// with each loss up to `MAX_BACKOFF_SPINS`.
const FIRST_BACKOFF_SPINS: u64 = 8;
/// Largest pause bound, in spins (some ten microseconds at most natively).
const MAX_BACKOFF_SPINS: u64 = 256;

/// A token bucket as the admin writes it.
#[derive(Debug, Clone, Copy, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RateSpec {
    /// Tokens added per second (above 0).
    pub requests_per_second: f64,
    /// Tokens the bucket holds when full: the largest burst (at least 1).
    pub burst: u32,
}

/// Per-organisation overrides.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct OrgLimitsSpec {
    /// This organisation's bucket rate, instead of `per_org`'s.
    #[serde(default)]
    pub requests_per_second: Option<f64>,
    /// This organisation's bucket burst, instead of `per_org`'s.
    #[serde(default)]
    pub burst: Option<u32>,
    /// This organisation's daily image quota, instead of `daily_images_per_org`.
    #[serde(default)]
    pub daily_images: Option<u64>,
}

/// The `rate_limits` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RateLimitsSpec {
    /// A bucket per API key or JWT user; over it, 429 with `Retry-After`.
    #[serde(default)]
    pub per_caller: Option<RateSpec>,
    /// A bucket per organisation.
    #[serde(default)]
    pub per_org: Option<RateSpec>,
    /// Images per organisation per UTC day, charged when the edge admits a
    /// call (`n` images); over it, 429 until midnight UTC.
    #[serde(default)]
    pub daily_images_per_org: Option<u64>,
    /// Overrides by organisation name.
    #[serde(default)]
    pub orgs: HashMap<String, OrgLimitsSpec>,
}

/// A token bucket's parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub rate_per_sec: f64,
    pub burst: u32,
}

impl Bucket {
    pub fn new(rate_per_sec: f64, burst: u32, field: &str) -> Result<Self, LimitsError> {
        if !(rate_per_sec.is_finite() && rate_per_sec > 0.0) || burst == 0 {
            return Err(LimitsError(format!(
                "`{field}` needs requests_per_second > 0 and burst >= 1 (got {rate_per_sec}, {burst})"
            )));
        }
        Ok(Self { rate_per_sec, burst })
    }

    /// Seconds for an empty bucket to fill, the policy window.
    fn window_secs(&self) -> u64 {
        (f64::from(self.burst) / self.rate_per_sec).ceil().max(1.0) as u64
    }
}

/// Bucket state as stored: milli-tokens and the time they were counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketState {
    pub tokens_milli: u64,
    pub updated_ms: u64,
}

impl BucketState {
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = self.tokens_milli.to_le_bytes().to_vec();
        bytes.extend_from_slice(&self.updated_ms.to_le_bytes());
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let tokens = bytes.get(0..8)?.try_into().ok()?;
        let updated = bytes.get(8..16)?.try_into().ok()?;
        Some(Self {
            tokens_milli: u64::from_le_bytes(tokens),
            updated_ms: u64::from_le_bytes(updated),
        })
    }
}

/// Outcome of taking from a bucket or quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    Allowed { remaining: u64 },
    Limited { retry_after_ms: u64 },
}

impl Bucket {
    /// Takes `cost` tokens at `now_ms`; returns the outcome and the state to store.
    pub fn take(&self, state: Option<BucketState>, now_ms: u64, cost: u64) -> (Take, Option<BucketState>) {
        self.take_counted(state, now_ms, |_| cost).0
    }

    /// Takes one token for this request and, when the bucket is far from
    /// empty, a few more for this worker's lease (`leases.rs`); also returns
    /// how many were taken.
    pub fn take_leasing(&self, state: Option<BucketState>, now_ms: u64) -> ((Take, Option<BucketState>), u64) {
        self.take_counted(state, now_ms, |tokens_milli| lease_size(tokens_milli / 1000))
    }

    /// Takes `cost(tokens held, in milli-tokens)` tokens.
    fn take_counted(
        &self,
        state: Option<BucketState>,
        now_ms: u64,
        cost: impl FnOnce(u64) -> u64,
    ) -> ((Take, Option<BucketState>), u64) {
        let capacity = u64::from(self.burst) * 1000;
        let state = state.unwrap_or(BucketState {
            tokens_milli: capacity,
            updated_ms: now_ms,
        });
        let elapsed = now_ms.saturating_sub(state.updated_ms);
        let refill = (elapsed as f64 * self.rate_per_sec) as u64; // milli-tokens per ms == tokens per s
        let tokens = state.tokens_milli.saturating_add(refill).min(capacity);
        let updated_ms = now_ms.max(state.updated_ms);
        let cost = cost(tokens);
        let needed = cost.saturating_mul(1000);
        if tokens >= needed {
            let left = tokens - needed;
            let next = BucketState {
                tokens_milli: left,
                updated_ms,
            };
            ((Take::Allowed { remaining: left / 1000 }, Some(next)), cost)
        } else {
            let missing = (needed - tokens) as f64;
            let retry_after_ms = (missing / self.rate_per_sec).ceil() as u64;
            ((Take::Limited { retry_after_ms }, None), 0)
        }
    }
}

/// Another writer changed the value since it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CasMismatch;

/// A key stayed contended for every compare-and-swap attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Contended;

/// The host's shared key-value store with compare-and-swap.
pub trait SharedStore {
    /// The value and its CAS token.
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Writes if the CAS token still matches (`None`: the key must be new or unconditional).
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch>;
}

/// Reads, computes and writes back with CAS, retrying on conflicts after a
/// short jittered pause. `Err(Contended)` when the key stayed contended for
/// every attempt.
pub fn update<T>(
    store: &dyn SharedStore,
    key: &str,
    mut compute: impl FnMut(Option<&[u8]>) -> (T, Option<Vec<u8>>),
) -> Result<T, Contended> {
    for attempt in 0..MAX_CAS_ATTEMPTS {
        if attempt > 0 {
            backoff(attempt);
        }
        let (value, cas) = store.get(key);
        let (outcome, new_value) = compute(value.as_deref());
        match new_value {
            None => return Ok(outcome),
            Some(bytes) => {
                if store.set(key, &bytes, cas).is_ok() {
                    return Ok(outcome);
                }
            }
        }
    }
    Err(Contended)
}

/// Pauses before attempt `attempt`: a random number of spins below a bound
/// that doubles with each loss, so writers that collided do not collide
/// again in step. A bounded spin, not a sleep: Wasm has no sleep, a worker
/// that sleeps stalls every stream it serves, and the window to get out of
/// is one rival's read and write, microseconds. (`spin_loop` is the CPU's
/// pause hint natively and nothing in Wasm, where the loop is plain work.)
fn backoff(attempt: usize) {
    let bound = u32::try_from(attempt)
        .ok()
        .and_then(|shift| FIRST_BACKOFF_SPINS.checked_shl(shift))
        .map_or(MAX_BACKOFF_SPINS, |b| b.min(MAX_BACKOFF_SPINS));
    for spin in 0..jitter() % (bound + 1) {
        std::hint::black_box(spin);
        std::hint::spin_loop();
    }
}

thread_local! {
    /// This worker's xorshift state (0: not seeded yet).
    static JITTER: Cell<u64> = const { Cell::new(0) };
}

/// A random number, from a per-worker generator seeded once from the
/// platform's randomness (WASI `random_get` in Envoy), so workers differ.
fn jitter() -> u64 {
    JITTER.with(|state| {
        let mut x = state.get();
        if x == 0 {
            let mut seed = [0u8; 8];
            x = match getrandom::fill(&mut seed) {
                Ok(()) => u64::from_le_bytes(seed),
                // Threads differ by address natively; good enough for a pause.
                Err(_) => state as *const Cell<u64> as u64,
            } | 1;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        x
    })
}

/// Why the `rate_limits` section was refused.
#[derive(Debug, thiserror::Error)]
#[error("`rate_limits`: {0}")]
pub struct LimitsError(String);

#[derive(Debug, Clone, Default)]
struct OrgLimits {
    bucket: Option<Bucket>,
    daily_images: Option<u64>,
}

/// Compiled limits.
#[derive(Debug, Clone, Default)]
pub struct RateLimits {
    per_caller: Option<Bucket>,
    per_org: Option<Bucket>,
    daily_images_per_org: Option<u64>,
    orgs: HashMap<String, OrgLimits>,
}

/// An organisation's daily image quota after a call was charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaUse {
    pub used: u64,
    pub limit: u64,
}

/// A caller's own bucket override (from its API key).
#[derive(Debug, Clone, Copy, Default)]
pub struct CallerOverride {
    pub requests_per_second: Option<f64>,
    pub burst: Option<u32>,
}

impl RateLimits {
    pub fn from_spec(spec: &RateLimitsSpec) -> Result<Self, LimitsError> {
        let per_caller = spec
            .per_caller
            .map(|r| Bucket::new(r.requests_per_second, r.burst, "per_caller"))
            .transpose()?;
        let per_org = spec
            .per_org
            .map(|r| Bucket::new(r.requests_per_second, r.burst, "per_org"))
            .transpose()?;
        let mut orgs = HashMap::new();
        for (org, o) in &spec.orgs {
            let bucket = match (
                o.requests_per_second.or(per_org.map(|b| b.rate_per_sec)),
                o.burst.or(per_org.map(|b| b.burst)),
            ) {
                (Some(rate), Some(burst)) => Some(Bucket::new(rate, burst, &format!("orgs.{org}"))?),
                (None, None) => None,
                _ => {
                    return Err(LimitsError(format!(
                        "`orgs.{org}` needs both requests_per_second and burst"
                    )))
                }
            };
            orgs.insert(
                org.clone(),
                OrgLimits {
                    bucket,
                    daily_images: o.daily_images.or(spec.daily_images_per_org),
                },
            );
        }
        Ok(Self {
            per_caller,
            per_org,
            daily_images_per_org: spec.daily_images_per_org,
            orgs,
        })
    }

    fn org(&self, org: &str) -> OrgLimits {
        self.orgs.get(org).cloned().unwrap_or(OrgLimits {
            bucket: self.per_org,
            daily_images: self.daily_images_per_org,
        })
    }

    /// Charges one request to the caller's and the organisation's buckets.
    pub fn check_request(
        &self,
        store: &dyn SharedStore,
        leases: &mut Leases,
        identity: &Identity,
        caller_override: CallerOverride,
        now_ms: u64,
    ) -> Result<(), Reject> {
        let caller_bucket = self
            .per_caller
            .map(|base| Bucket {
                rate_per_sec: caller_override.requests_per_second.unwrap_or(base.rate_per_sec),
                burst: caller_override.burst.unwrap_or(base.burst),
            })
            .or(match (caller_override.requests_per_second, caller_override.burst) {
                (Some(rate_per_sec), Some(burst)) => Some(Bucket { rate_per_sec, burst }),
                _ => None,
            });
        if let Some(bucket) = caller_bucket {
            let key = match &identity.key_id {
                Some(id) => format!("mcp_edge:rl:key:{id}"),
                None => format!("mcp_edge:rl:user:{}/{}", identity.org, identity.user),
            };
            take_bucket(store, leases, &key, &bucket, now_ms, "caller", &identity.org)?;
        }
        if let Some(bucket) = self.org(&identity.org).bucket {
            take_bucket(
                store,
                leases,
                &format!("mcp_edge:rl:org:{}", identity.org),
                &bucket,
                now_ms,
                "org",
                &identity.org,
            )?;
        }
        Ok(())
    }

    /// Charges `images` to the organisation's daily quota.
    /// On success, returns the organisation's quota use after this call (for metrics).
    pub fn check_images(
        &self,
        store: &dyn SharedStore,
        org: &str,
        images: u64,
        now_ms: u64,
    ) -> Result<Option<QuotaUse>, Reject> {
        let Some(limit) = self.org(org).daily_images else {
            return Ok(None);
        };
        let day = now_ms / 86_400_000;
        let key = format!("mcp_edge:quota:{org}:{day}");
        let outcome = update(store, &key, |value| {
            let used = value
                .and_then(|v| v.get(0..8))
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
                .unwrap_or(0);
            if used.saturating_add(images) > limit {
                (Err(used), None)
            } else {
                (Ok(limit - used - images), Some((used + images).to_le_bytes().to_vec()))
            }
        })
        .map_err(|Contended| contended(org, &format!("the daily image quota of organisation {org:?}")))?;
        let reset_secs = ((day + 1) * 86_400_000 - now_ms).div_ceil(1000);
        match outcome {
            Ok(remaining) => Ok(Some(QuotaUse { used: limit - remaining, limit })),
            Err(used) => Err(limited(
                org,
                "quota_exceeded",
                format!(
                    "Organisation {org:?} has used {used} of its {limit} images for today (UTC); {images} more would exceed the quota. It resets in {} min.",
                    reset_secs.div_ceil(60)
                ),
                "org-daily-images",
                limit,
                86_400,
                limit.saturating_sub(used),
                reset_secs,
            )),
        }
    }
}

impl RateLimits {
    /// Gives back `images` charged by `check_images` at `charged_at_ms` for a
    /// call that was then refused (by the global limit), so refused images
    /// never count against the day's quota.
    pub fn refund_images(&self, store: &dyn SharedStore, org: &str, images: u64, charged_at_ms: u64) {
        if self.org(org).daily_images.is_none() {
            return;
        }
        let key = format!("mcp_edge:quota:{org}:{}", charged_at_ms / 86_400_000);
        // Contention for every attempt leaves the charge in place: the safe side.
        let _ = update(store, &key, |value| {
            let used = value
                .and_then(|v| v.get(0..8))
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes);
            match used {
                Some(used) => ((), Some(used.saturating_sub(images).to_le_bytes().to_vec())),
                None => ((), None),
            }
        });
    }
}

fn take_bucket(
    store: &dyn SharedStore,
    leases: &mut Leases,
    key: &str,
    bucket: &Bucket,
    now_ms: u64,
    scope: &'static str,
    org: &str,
) -> Result<(), Reject> {
    if leases.spend(key, now_ms) {
        return Ok(());
    }
    let outcome = update(store, key, |value| {
        let ((take, new_state), taken) = bucket.take_leasing(value.and_then(BucketState::decode), now_ms);
        ((take, taken), new_state.map(|s| s.encode()))
    });
    // Refusals only: the admitted path allocates nothing here.
    let reason_and_who = || match scope {
        "caller" => ("rate_limited_caller", "this API key or user".to_string()),
        _ => ("rate_limited_org", format!("organisation {org:?}")),
    };
    match outcome {
        Ok((Take::Allowed { .. }, taken)) => {
            // One token is this request's; the rest serve this worker's next ones.
            leases.keep(key, taken.saturating_sub(1), now_ms);
            Ok(())
        }
        Err(Contended) => Err(contended(org, &format!("the rate limit of {}", reason_and_who().1))),
        Ok((Take::Limited { retry_after_ms }, _)) => {
            let retry = retry_after_ms.div_ceil(1000).max(1);
            let (reason, who) = reason_and_who();
            Err(limited(
                org,
                reason,
                format!(
                    "Rate limit exceeded for {who}: {} requests per second, burst {}. Retry after {retry} s.",
                    bucket.rate_per_sec, bucket.burst
                ),
                scope,
                u64::from(bucket.burst),
                bucket.window_secs(),
                0,
                retry,
            ))
        }
    }
}

/// A 429 for a count that stayed contended for every attempt: `Retry-After`
/// only, as what is left is not known. Counted apart (`limit_contended`) so a
/// hot key shows in the metrics and can be alerted on.
fn contended(org: &str, what: &str) -> Reject {
    Reject::new(
        429,
        RATE_LIMITED,
        "limit_contended",
        format!(
            "Too many concurrent requests for {what}: the gateway could not update its count in time. Retry after 1 s."
        ),
    )
    .with_org(org)
    .with_header("retry-after", "1")
}

/// A 429 with `Retry-After` and the IETF `RateLimit-Policy` / `RateLimit` fields.
#[allow(clippy::too_many_arguments)]
pub(crate) fn limited(
    org: &str,
    reason: &'static str,
    message: String,
    policy: &str,
    quota: u64,
    window_secs: u64,
    remaining: u64,
    reset_secs: u64,
) -> Reject {
    Reject::new(429, RATE_LIMITED, reason, message)
        .with_org(org)
        .with_header("retry-after", reset_secs.to_string())
        .with_header("ratelimit-policy", format!("\"{policy}\";q={quota};w={window_secs}"))
        .with_header("ratelimit", format!("\"{policy}\";r={remaining};t={reset_secs}"))
}

#[cfg(test)]
#[path = "limits_tests.rs"]
mod tests;
