//! The model router: an ordered chain of backends (primary, then fallbacks),
//! each with retries (jittered exponential backoff that honours the
//! provider's `Retry-After`) and a circuit breaker. Content-policy refusals
//! and bad requests are never retried or re-routed: they are the caller's
//! answer. The whole chain (pool waits, attempts, backoff, fallbacks) runs
//! within one deadline that every attempt respects, so that a call ends
//! inside Envoy's route timeout. Every attempt is written on the call's
//! budget tab: an answer lost after its request went out is retried, and
//! counted as possibly billed.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use tokio::time::Instant;

use crate::providers::{BackendError, Generation, ImageBackend, ImageRequest};
use crate::routing::budget::tab::Tab;
use crate::routing::capacity::{Capacity, Verdict};
use crate::routing::catalog::ModelCatalog;
use crate::routing::pools::{Busy, Slot};

/// How one backend is retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts per backend, first one included.
    pub max_attempts: u32,
    pub base_delay: Duration,
    /// Longest wait between attempts, `Retry-After` included.
    pub max_delay: Duration,
    /// The most a call spends down the chain, all of it: an attempt is cut
    /// at it, and no retry or fallback starts past it.
    pub call_deadline: Duration,
}

/// `GATEWAY_CALL_DEADLINE_SECS`'s default: Envoy's `/mcp` route timeout
/// (600 s) less room to store and sign the images.
pub const DEFAULT_CALL_DEADLINE: Duration = Duration::from_secs(540);

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(20),
            call_deadline: DEFAULT_CALL_DEADLINE,
        }
    }
}

/// When a failing backend is skipped.
#[derive(Debug, Clone, Copy)]
pub struct BreakerPolicy {
    /// Consecutive failed calls that open the breaker.
    pub failure_threshold: u32,
    /// How long an open breaker skips the backend before trying it again.
    pub open_for: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_for: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1`: full-jitter exponential
    /// backoff, at least the provider's `Retry-After`, at most `max_delay`.
    pub fn backoff(&self, attempt: u32, retry_after_secs: Option<u64>) -> Duration {
        let backoff = self
            .base_delay
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)));
        // Full jitter keeps replicas from retrying in lockstep.
        let jittered = Duration::from_millis(rand::rng().random_range(0..=backoff.as_millis().max(1) as u64));
        let wait = match retry_after_secs {
            Some(secs) => Duration::from_secs(secs).max(jittered),
            None => jittered,
        };
        wait.min(self.max_delay)
    }
}

#[derive(Debug, Default)]
struct BreakerState {
    consecutive_failures: u32,
    open_until: Option<Instant>,
}

/// One dependency's circuit breaker (an image model, the moderation model).
#[derive(Debug)]
pub struct Breaker {
    policy: BreakerPolicy,
    state: Mutex<BreakerState>,
}

impl Breaker {
    pub fn new(policy: BreakerPolicy) -> Self {
        Self {
            policy,
            state: Mutex::default(),
        }
    }

    /// Whether calls skip the dependency now.
    pub fn is_open(&self) -> bool {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.open_until.is_some_and(|until| Instant::now() < until)
    }

    /// Notes a call's result; `true` when this failure opened the breaker.
    pub fn record(&self, ok: bool) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if ok {
            *state = BreakerState::default();
            return false;
        }
        state.consecutive_failures += 1;
        if state.consecutive_failures >= self.policy.failure_threshold {
            state.open_until = Some(Instant::now() + self.policy.open_for);
            return true;
        }
        false
    }
}

struct Route {
    backend: Arc<dyn ImageBackend>,
    breaker: Breaker,
}

/// A generation and how it was obtained.
#[derive(Debug, Clone)]
pub struct Routed {
    pub generation: Generation,
    /// Backends given up on before the one that served (0: the primary served).
    pub fallbacks: u32,
}

/// Who a call is for, as far as capacity decisions go.
#[derive(Debug, Clone, Copy, Default)]
pub struct Claim<'a> {
    pub org: &'a str,
    /// May use models' reserved quota.
    pub priority: bool,
}

/// Backends in order of preference.
pub struct ModelRouter {
    routes: Vec<Route>,
    retry: RetryPolicy,
    /// Models listed here are skipped for requests they cannot serve.
    catalog: Option<Arc<ModelCatalog>>,
    /// Provider quotas: a model at its quota (or reserve) is passed over.
    capacity: Option<Capacity>,
}

/// Whether a failure may be retried, re-routed, or is final.
fn disposition(error: &BackendError) -> Disposition {
    match error {
        BackendError::ContentRefused(_) | BackendError::BadRequest(_) | BackendError::NoCapacity { .. } => {
            Disposition::Final
        }
        BackendError::ModelNotFound { .. } | BackendError::Unauthorized(_) => Disposition::NextBackend,
        // An answer lost after its request went out is retried too: the
        // caller still wants its image, and the lost attempt is on the tab.
        BackendError::RateLimited { .. }
        | BackendError::Provider { .. }
        | BackendError::Transport(_)
        | BackendError::AnswerLost(_)
        | BackendError::InvalidResponse(_) => Disposition::Retry,
    }
}

/// Whether the same request may be tried again after `error` (a
/// transient failure), as opposed to going on down the chain or stopping.
pub fn retryable(error: &BackendError) -> bool {
    disposition(error) == Disposition::Retry
}

#[derive(Debug, PartialEq, Eq)]
enum Disposition {
    Retry,
    NextBackend,
    Final,
}

impl ModelRouter {
    pub fn new(backends: Vec<Arc<dyn ImageBackend>>, retry: RetryPolicy, breaker: BreakerPolicy) -> Self {
        let routes = backends
            .into_iter()
            .map(|backend| Route {
                backend,
                breaker: Breaker::new(breaker),
            })
            .collect();
        Self {
            routes,
            retry,
            catalog: None,
            capacity: None,
        }
    }

    /// Reads provider quotas from every answer and passes over a model at
    /// its quota, or at its reserve for callers without priority.
    pub fn with_capacity(mut self, capacity: Capacity) -> Self {
        self.capacity = Some(capacity);
        self
    }

    /// Checks requests against each model's capabilities before calling it.
    pub fn with_catalog(mut self, catalog: Arc<ModelCatalog>) -> Self {
        self.catalog = Some(catalog);
        self
    }

    /// `Err` with every model's reason when no model of the chain can serve `request`.
    pub fn check(&self, request: &ImageRequest) -> Result<(), String> {
        let mut reasons = Vec::with_capacity(self.routes.len());
        for route in &self.routes {
            match self.unsupported(route.backend.model(), request) {
                Some(reason) => reasons.push(reason),
                None => return Ok(()),
            }
        }
        match reasons.len() {
            0 => Ok(()),
            1 => Err(reasons.remove(0)),
            _ => Err(format!(
                "No configured model can serve this request: {}",
                reasons.join("; ")
            )),
        }
    }

    /// Why `model` cannot serve `request`, if the capability table knows it and says so.
    pub fn unsupported(&self, model: &str, request: &ImageRequest) -> Option<String> {
        let capabilities = self.catalog.as_ref()?.get(model)?;
        capabilities.check(&request.options()).err()
    }

    /// Every backend in order of preference (primary first).
    pub fn backends(&self) -> impl Iterator<Item = &Arc<dyn ImageBackend>> {
        self.routes.iter().map(|r| &r.backend)
    }

    /// The primary backend.
    pub fn primary(&self) -> Option<&Arc<dyn ImageBackend>> {
        self.routes.first().map(|r| &r.backend)
    }

    fn delay(&self, attempt: u32, error: &BackendError) -> Duration {
        let retry_after = match error {
            BackendError::RateLimited { retry_after_secs } => *retry_after_secs,
            _ => None,
        };
        self.retry.backoff(attempt, retry_after)
    }

    /// An attempt cut at the call's deadline: its request had gone out.
    fn past_deadline(&self) -> BackendError {
        BackendError::AnswerLost(format!(
            "no answer within the call's deadline of {} s (GATEWAY_CALL_DEADLINE_SECS)",
            self.retry.call_deadline.as_secs()
        ))
    }

    fn breaker_open(&self, route: &Route) -> bool {
        route.breaker.is_open()
    }

    fn record(&self, route: &Route, ok: bool) {
        if route.breaker.record(ok) {
            tracing::warn!(
                backend = route.backend.kind(),
                model = route.backend.model(),
                "circuit breaker opened"
            );
        }
    }

    /// Runs the request down the chain.
    pub async fn generate(&self, request: &ImageRequest) -> Result<Routed, BackendError> {
        self.generate_in(request, None, Claim::default(), None).await
    }

    /// Whether `model` takes this call now (its provider's quota and reserve).
    async fn admit(&self, model: &str, request: &ImageRequest, claim: Claim<'_>) -> Verdict {
        let Some(capacity) = &self.capacity else {
            return Verdict::Use;
        };
        let reserve = self
            .catalog
            .as_ref()
            .and_then(|c| c.get(model))
            .and_then(|row| row.reserve.as_ref());
        capacity
            .admit(model, reserve, claim.priority, i64::from(request.n))
            .await
    }

    /// A slot of `model`'s pool when it is a capped self-hosted pool
    /// (`None`: no cap), waiting in its fair line; or why there is none.
    async fn slot(&self, model: &str, request: &ImageRequest, claim: Claim<'_>) -> Result<Option<Slot>, Busy> {
        let (Some(capacity), Some(limits)) = (&self.capacity, self.pool_limits(model)) else {
            return Ok(None);
        };
        let slot = capacity
            .pools
            .acquire(model, limits, claim.org, request.partials.as_ref())
            .await?;
        Ok(Some(slot))
    }

    fn pool_limits(&self, model: &str) -> Option<crate::routing::pools::PoolLimits> {
        self.catalog.as_ref()?.get(model)?.concurrency
    }

    /// What an answer said of the provider's quota.
    async fn learn(&self, model: &str, outcome: &Result<Generation, BackendError>) {
        let Some(capacity) = &self.capacity else { return };
        match outcome {
            Ok(Generation { quota: Some(quota), .. }) => capacity.observe(model, quota).await,
            Err(BackendError::RateLimited { retry_after_secs }) => capacity.refused(model, *retry_after_secs).await,
            _ => {}
        }
    }

    /// Runs the request down the chain in `order` (positions in the chain,
    /// e.g. cheapest first; `None` as configured), with the capacity the
    /// `claim` may use, writing each attempt on `tab`.
    pub async fn generate_in(
        &self,
        request: &ImageRequest,
        order: Option<&[usize]>,
        claim: Claim<'_>,
        tab: Option<&Tab>,
    ) -> Result<Routed, BackendError> {
        let deadline = Instant::now() + self.retry.call_deadline;
        let mut last_error = BackendError::Transport("no image backend is configured".into());
        // With every breaker open, still try the chain rather than fail without asking anyone.
        let all_open = self.routes.iter().all(|r| self.breaker_open(r));
        let configured: Vec<usize> = (0..self.routes.len()).collect();
        let order = order.unwrap_or(&configured);
        // The shortest wait of the models passed over for capacity, and whether any was asked.
        let mut spilled: Option<u64> = None;
        let mut asked = false;
        for (index, route) in order.iter().filter_map(|&i| self.routes.get(i)).enumerate() {
            if Instant::now() >= deadline {
                tracing::warn!(
                    model = route.backend.model(),
                    "the call's deadline passed: no further model is tried"
                );
                if !asked {
                    last_error = self.past_deadline();
                }
                break;
            }
            if !all_open && self.breaker_open(route) {
                tracing::info!(
                    model = route.backend.model(),
                    "circuit breaker open: skipping this model"
                );
                // A capped pool behind an open breaker is still wanted: the
                // spill keeps asking the autoscaler for it.
                if let (Some(capacity), Some(_)) = (&self.capacity, self.pool_limits(route.backend.model())) {
                    capacity.pools.unavailable(route.backend.model());
                }
                continue;
            }
            // Capability routing: a model that cannot draw what was asked is skipped.
            if let Some(why) = self.unsupported(route.backend.model(), request) {
                tracing::info!(model = route.backend.model(), %why, "skipping a model that cannot serve the request");
                continue;
            }
            let model = route.backend.model();
            if let Verdict::Spill { why, retry_after_ms } = self.admit(model, request, claim).await {
                tracing::info!(
                    model = route.backend.model(),
                    reason = why.as_str(),
                    retry_after_ms,
                    "passing a model at its provider quota over, before the provider refuses"
                );
                spilled = Some(spilled.map_or(retry_after_ms, |s| s.min(retry_after_ms)));
                continue;
            }
            // Held until this model's attempts end; the wait ends at the deadline.
            let slot = tokio::time::timeout_at(deadline, self.slot(model, request, claim))
                .await
                .unwrap_or(Err(Busy::Timeout));
            let _slot = match slot {
                Ok(slot) => slot,
                Err(busy) => {
                    tracing::info!(model, reason = busy.as_str(), "no slot of the model's pool: next model");
                    if let Some(capacity) = &self.capacity {
                        capacity.pools.busy(model, busy);
                    }
                    let wait = self.pool_limits(model).map_or(1, |l| l.queue_timeout_secs) * 1000;
                    spilled = Some(spilled.map_or(wait, |s| s.min(wait)));
                    continue;
                }
            };
            if index > 0 && asked {
                tracing::warn!(model = route.backend.model(), error = %last_error, "falling back to the next model");
            }
            asked = true;
            for attempt in 1..=self.retry.max_attempts {
                let span = crate::telemetry::traces::attempt_span(route.backend.kind(), route.backend.model(), attempt);
                if let Some(tab) = tab {
                    tab.started(model);
                }
                let outcome = {
                    use tracing::Instrument;
                    let attempt = route.backend.generate(request).instrument(span.clone());
                    tokio::time::timeout_at(deadline, attempt)
                        .await
                        .unwrap_or_else(|_| Err(self.past_deadline()))
                };
                if let Some(tab) = tab {
                    tab.ended(model, &outcome);
                }
                self.learn(route.backend.model(), &outcome).await;
                let usage = outcome
                    .as_ref()
                    .ok()
                    .and_then(|g| g.usage)
                    .map(|u| (u.input_tokens, u.output_tokens));
                let served_by = outcome.as_ref().ok().map(|g| g.model.as_str());
                crate::telemetry::traces::record_attempt(
                    &span,
                    served_by,
                    usage,
                    outcome.as_ref().err().map(|e| e.class()),
                );
                match outcome {
                    Ok(generation) => {
                        self.record(route, true);
                        // Fallbacks: how many preferred backends did not serve this request.
                        return Ok(Routed {
                            generation,
                            fallbacks: index as u32,
                        });
                    }
                    Err(error) => {
                        let disposition = disposition(&error);
                        if disposition == Disposition::Final {
                            return Err(error);
                        }
                        // Waiting less than the provider's Retry-After would only be refused again.
                        let too_long = matches!(error, BackendError::RateLimited { retry_after_secs: Some(secs) }
                            if Duration::from_secs(secs) > self.retry.max_delay);
                        // A capped pool that does not answer is scaled to zero or warming:
                        // on down the chain at once (the spill asks the autoscaler for it).
                        let pool_down = _slot.is_some()
                            && matches!(error, BackendError::Transport(_) | BackendError::AnswerLost(_));
                        if pool_down {
                            if let Some(capacity) = &self.capacity {
                                capacity.pools.unavailable(model);
                            }
                        }
                        let retry = disposition == Disposition::Retry
                            && attempt < self.retry.max_attempts
                            && !too_long
                            && !pool_down;
                        let delay = self.delay(attempt, &error);
                        // A retry that could not start before the deadline is not waited for.
                        let in_time = Instant::now() + delay < deadline;
                        last_error = error;
                        if !(retry && in_time) {
                            break;
                        }
                        tracing::info!(
                            parent: &span,
                            model = route.backend.model(),
                            delay_ms = delay.as_millis() as u64,
                            "retrying the same model"
                        );
                        tokio::time::sleep(delay).await;
                    }
                }
            }
            self.record(route, false);
        }
        match spilled {
            Some(wait_ms) if !asked => Err(BackendError::NoCapacity {
                retry_after_secs: wait_ms.div_ceil(1000).max(1),
            }),
            _ => Err(last_error),
        }
    }
}

#[async_trait]
impl ImageBackend for ModelRouter {
    fn kind(&self) -> &'static str {
        self.primary().map(|b| b.kind()).unwrap_or("none")
    }

    fn model(&self) -> &str {
        self.primary().map(|b| b.model()).unwrap_or("none")
    }

    async fn generate(&self, request: &ImageRequest) -> Result<Generation, BackendError> {
        ModelRouter::generate(self, request)
            .await
            .map(|routed| routed.generation)
    }
}

#[cfg(test)]
#[path = "chain_tests.rs"]
mod tests;
