//! Provider capacity: what each model's provider quota looks like, from the
//! rate-limit headers of its answers (`providers::rate_limits`) and its 429s,
//! kept where every replica sees it (Redis, else this replica's memory),
//! and the decision made before each call: use the model, or spill to the
//! chain's next model before the provider has to refuse.
//!
//! A model's `reserve` (models file) keeps the last part of a window for the
//! organisations the routes file marks `priority_orgs`: below it everyone
//! else spills, and comes back once the window resets. Calls started since
//! the last answer are taken off what remains, so a burst does not all go
//! through on one stale reading; two replicas deciding at the same instant
//! may both take the last slot above the reserve (the reserve absorbs it).

pub mod memory;
pub mod redis;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::providers::rate_limits::{Kind, QuotaReading};
use crate::routing::pools::{Pools, SlotStore};
use crate::telemetry::metrics::Metrics;

/// How much of a model's quota window is kept for priority organisations:
/// per kind, a count (1 or more) or a fraction of the window's limit (below 1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Reserve {
    /// Requests kept back of the provider's request window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<f64>,
    /// Tokens kept back of the provider's token window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<f64>,
    /// Images kept back of the provider's image window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<f64>,
}

impl Reserve {
    /// Why the values cannot be used, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        let bad = [self.requests, self.tokens, self.images]
            .into_iter()
            .flatten()
            .any(|v| !v.is_finite() || v < 0.0);
        if bad {
            return Err("reserve values must be finite and not negative".into());
        }
        Ok(())
    }

    /// What is kept back of a window of `limit`.
    fn kept(&self, kind: Kind, limit: i64) -> i64 {
        let value = match kind {
            Kind::Requests => self.requests,
            Kind::Tokens => self.tokens,
            Kind::Images => self.images,
        };
        match value {
            Some(v) if v < 1.0 => (v * limit as f64).ceil() as i64,
            Some(v) => v.floor() as i64,
            None => 0,
        }
    }
}

/// One window as the store keeps it: absolute reset time, and what remains
/// less the calls sent since the provider last said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowAt {
    pub limit: i64,
    pub remaining: i64,
    pub reset_at_ms: u64,
}

/// What the gateway knows of one model's provider quota.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelQuota {
    pub windows: BTreeMap<Kind, WindowAt>,
    /// A 429 said: nothing before this (Unix ms).
    pub refused_until_ms: u64,
}

/// Where quota readings live: one trait, one module per store.
#[async_trait]
pub trait QuotaStore: Send + Sync {
    /// Replaces the windows a fresh answer described.
    async fn observe(&self, model: &str, windows: &[(Kind, WindowAt)]) -> Result<(), String>;
    /// The provider refused (429) until `until_ms`.
    async fn refuse(&self, model: &str, until_ms: u64) -> Result<(), String>;
    /// A call of `images` images is on its way to the model: taken off the
    /// `windows` the model's last reading described (none: nothing to do).
    async fn take(&self, model: &str, windows: &[Kind], images: i64) -> Result<(), String>;
    async fn get(&self, model: &str) -> Result<ModelQuota, String>;
}

/// Whether a model takes a call now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Use,
    /// Go to the next model; this one has room again in `retry_after_ms`.
    Spill {
        why: SpillReason,
        retry_after_ms: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpillReason {
    /// The provider refused with a 429 and its wait has not passed.
    Refused,
    /// Nothing remains in a window.
    Exhausted,
    /// What remains is the priority organisations' reserve.
    Reserved,
}

impl SpillReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SpillReason::Refused => "refused",
            SpillReason::Exhausted => "exhausted",
            SpillReason::Reserved => "reserved",
        }
    }
}

/// The decision for one model, from what the store knows at `now_ms`.
pub fn admit(quota: &ModelQuota, reserve: Option<&Reserve>, priority: bool, now_ms: u64) -> Verdict {
    if quota.refused_until_ms > now_ms {
        return Verdict::Spill {
            why: SpillReason::Refused,
            retry_after_ms: quota.refused_until_ms - now_ms,
        };
    }
    let mut verdict = Verdict::Use;
    for (&kind, window) in &quota.windows {
        // A window past its reset has refilled.
        if window.reset_at_ms <= now_ms {
            continue;
        }
        let kept = match (priority, reserve) {
            (false, Some(reserve)) => reserve.kept(kind, window.limit),
            _ => 0,
        };
        let why = if window.remaining <= 0 {
            SpillReason::Exhausted
        } else if window.remaining <= kept {
            SpillReason::Reserved
        } else {
            continue;
        };
        let wait = window.reset_at_ms - now_ms;
        // The longest wait decides when the model has room again.
        if !matches!(verdict, Verdict::Spill { retry_after_ms, .. } if retry_after_ms >= wait) {
            verdict = Verdict::Spill {
                why,
                retry_after_ms: wait,
            };
        }
    }
    verdict
}

/// The windows of a reading, made absolute at `now_ms`.
pub fn windows_at(reading: &QuotaReading, now_ms: u64) -> Vec<(Kind, WindowAt)> {
    reading
        .windows
        .iter()
        .map(|(kind, w)| {
            (
                *kind,
                WindowAt {
                    limit: w.limit.min(i64::MAX as u64) as i64,
                    remaining: w.remaining.min(i64::MAX as u64) as i64,
                    reset_at_ms: now_ms.saturating_add(w.reset_ms),
                },
            )
        })
        .collect()
}

/// The stores with the service's metrics: what the chain asks before and
/// tells after each provider call (quota readings), and the self-hosted
/// pools' slots. A store that fails never stops a call.
#[derive(Clone)]
pub struct Capacity {
    store: Arc<dyn QuotaStore>,
    metrics: Arc<Metrics>,
    pub pools: Pools,
}

impl Capacity {
    pub fn new(store: Arc<dyn QuotaStore>, slots: Arc<dyn SlotStore>, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            pools: Pools::new(slots, metrics.clone()),
            metrics,
        }
    }

    /// Use `model` for a call of `images` images, or spill (counted).
    pub async fn admit(&self, model: &str, reserve: Option<&Reserve>, priority: bool, images: i64) -> Verdict {
        let quota = match self.store.get(model).await {
            Ok(quota) => quota,
            Err(error) => {
                tracing::warn!(%error, model, "the quota store could not be read; calling the model");
                return Verdict::Use;
            }
        };
        let verdict = admit(&quota, reserve, priority, now_ms());
        match verdict {
            Verdict::Use if !quota.windows.is_empty() => {
                let windows: Vec<Kind> = quota.windows.keys().copied().collect();
                if let Err(error) = self.store.take(model, &windows, images).await {
                    tracing::warn!(%error, model, "the quota store could not count a call");
                }
            }
            Verdict::Use => {}
            Verdict::Spill { why, .. } => self.metrics.capacity_spill(model, why.as_str()),
        }
        verdict
    }

    /// A provider answer described its quota.
    pub async fn observe(&self, model: &str, reading: &QuotaReading) {
        let windows = windows_at(reading, now_ms());
        for (kind, window) in &reading.windows {
            self.metrics
                .provider_quota(model, kind.as_str(), window.limit, window.remaining, window.reset_ms);
        }
        if let Err(error) = self.store.observe(model, &windows).await {
            tracing::warn!(%error, model, "the quota store could not keep a reading");
        }
    }

    /// The provider refused with a 429: nothing goes to it for `retry_after_secs`.
    pub async fn refused(&self, model: &str, retry_after_secs: Option<u64>) {
        self.metrics.provider_rate_limited(model);
        let until = now_ms().saturating_add(retry_after_secs.unwrap_or(DEFAULT_REFUSAL_SECS) * 1000);
        if let Err(error) = self.store.refuse(model, until).await {
            tracing::warn!(%error, model, "the quota store could not keep a refusal");
        }
    }
}

/// How long a 429 without `Retry-After` keeps a model out.
const DEFAULT_REFUSAL_SECS: u64 = 10;

fn now_ms() -> u64 {
    chrono::Utc::now().timestamp_millis().max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(remaining: i64, limit: i64, reset_at_ms: u64) -> ModelQuota {
        ModelQuota {
            windows: BTreeMap::from([(
                Kind::Requests,
                WindowAt {
                    limit,
                    remaining,
                    reset_at_ms,
                },
            )]),
            refused_until_ms: 0,
        }
    }

    #[test]
    fn reserve_keeps_the_last_part_for_priority_orgs() {
        let count = Reserve {
            requests: Some(3.0),
            ..Reserve::default()
        };
        let fraction = Reserve {
            requests: Some(0.25),
            ..Reserve::default()
        };
        let now = 1_000;
        let spill = |why, ms| Verdict::Spill {
            why,
            retry_after_ms: ms,
        };
        let cases = [
            ("plenty", quota(10, 8, 5_000), Some(count), false, Verdict::Use),
            (
                "at the reserve",
                quota(3, 8, 5_000),
                Some(count),
                false,
                spill(SpillReason::Reserved, 4_000),
            ),
            (
                "priority uses the reserve",
                quota(3, 8, 5_000),
                Some(count),
                true,
                Verdict::Use,
            ),
            (
                "empty for everyone",
                quota(0, 8, 5_000),
                Some(count),
                true,
                spill(SpillReason::Exhausted, 4_000),
            ),
            (
                "a quarter of 8 is 2",
                quota(2, 8, 5_000),
                Some(fraction),
                false,
                spill(SpillReason::Reserved, 4_000),
            ),
            (
                "above a quarter",
                quota(3, 8, 5_000),
                Some(fraction),
                false,
                Verdict::Use,
            ),
            ("no reserve", quota(1, 8, 5_000), None, false, Verdict::Use),
            ("the window reset", quota(0, 8, 1_000), Some(count), false, Verdict::Use),
            ("never told", ModelQuota::default(), Some(count), false, Verdict::Use),
        ];
        for (name, quota, reserve, priority, expected) in cases {
            assert_eq!(admit(&quota, reserve.as_ref(), priority, now), expected, "{name}");
        }
    }

    #[test]
    fn a_429_keeps_everyone_out_until_its_wait_passed() {
        let mut refused = quota(50, 60, 9_000);
        refused.refused_until_ms = 4_000;
        let expected = Verdict::Spill {
            why: SpillReason::Refused,
            retry_after_ms: 3_000,
        };
        assert_eq!(admit(&refused, None, true, 1_000), expected);
        assert_eq!(admit(&refused, None, true, 4_000), Verdict::Use);
    }

    #[test]
    fn the_longest_wait_of_the_empty_windows_decides() {
        let mut both = quota(0, 60, 2_000);
        both.windows.insert(
            Kind::Tokens,
            WindowAt {
                limit: 1_000,
                remaining: 0,
                reset_at_ms: 61_000,
            },
        );
        assert_eq!(
            admit(&both, None, false, 1_000),
            Verdict::Spill {
                why: SpillReason::Exhausted,
                retry_after_ms: 60_000
            }
        );
    }

    #[test]
    fn reserve_values_are_checked() {
        assert!(Reserve {
            tokens: Some(-1.0),
            ..Reserve::default()
        }
        .check()
        .is_err());
        assert!(Reserve {
            images: Some(f64::NAN),
            ..Reserve::default()
        }
        .check()
        .is_err());
        assert!(Reserve {
            requests: Some(0.2),
            tokens: Some(5000.0),
            images: None
        }
        .check()
        .is_ok());
    }
}
