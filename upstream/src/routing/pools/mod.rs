//! Concurrency caps for self-hosted model pools: a model with
//! `concurrency` in the models file (`max_in_flight` = the pool's replicas ×
//! each replica's concurrency) gets at most that many calls at once across
//! every upstream replica (slots leased in Redis, renewed while a call
//! runs, so a crashed replica's slots come back; per replica without Redis).
//! A call that finds every slot taken waits in a bounded line fair across
//! organisations (`queue`), hearing its place through progress
//! notifications; one that cannot get a slot within `queue_timeout_secs`, or
//! finds the line full, goes to the next model of its chain.

pub mod memory;
pub mod queue;
pub mod redis;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, Notify};

use crate::providers::{ProgressSink, Report};
use crate::telemetry::metrics::Metrics;
use queue::FairQueue;

/// A pool's limits, from its row of the models file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolLimits {
    /// Calls in flight at once across all upstream replicas.
    pub max_in_flight: u32,
    /// Calls waiting on each upstream replica; more go to the next model.
    #[serde(default = "default_max_queue")]
    pub max_queue: u32,
    /// The longest a call waits for a slot before it goes to the next model.
    #[serde(default = "default_queue_timeout")]
    pub queue_timeout_secs: u64,
}

fn default_max_queue() -> u32 {
    1000
}

fn default_queue_timeout() -> u64 {
    30
}

impl PoolLimits {
    pub fn check(&self) -> Result<(), String> {
        if self.max_in_flight == 0 || self.queue_timeout_secs == 0 {
            return Err("concurrency needs max_in_flight and queue_timeout_secs of at least 1".into());
        }
        Ok(())
    }
}

/// Where slots are held: one trait, one module per store.
#[async_trait]
pub trait SlotStore: Send + Sync {
    /// One of `cap` slots of `model` for `holder` until `until_ms`; false when all are held.
    async fn try_take(&self, model: &str, holder: &str, cap: u32, until_ms: u64, now_ms: u64) -> Result<bool, String>;
    async fn renew(&self, model: &str, holder: &str, until_ms: u64) -> Result<(), String>;
    async fn release(&self, model: &str, holder: &str) -> Result<(), String>;
}

/// Why a call did not get a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// The line was full: refused at once.
    QueueFull,
    /// No slot came within the queue timeout.
    Timeout,
}

impl Busy {
    pub fn as_str(self) -> &'static str {
        match self {
            Busy::QueueFull => "queue_full",
            Busy::Timeout => "queue_timeout",
        }
    }
}

/// How long a slot's lease runs between renewals (a third of it).
const LEASE: Duration = Duration::from_secs(30);
/// How often a waiting line asks the store again for a slot another
/// replica may have freed (local frees wake it at once).
const POLL: Duration = Duration::from_millis(50);
/// How often a waiting caller hears its place.
const POSITION_EVERY: Duration = Duration::from_secs(1);

/// Every pool's line on this replica.
#[derive(Clone)]
pub struct Pools {
    store: Arc<dyn SlotStore>,
    metrics: Arc<Metrics>,
    gates: Arc<Mutex<HashMap<String, Arc<Gate>>>>,
}

struct Gate {
    model: String,
    store: Arc<dyn SlotStore>,
    metrics: Arc<Metrics>,
    limits: Mutex<PoolLimits>,
    line: Mutex<FairQueue<oneshot::Sender<Slot>>>,
    wake: Notify,
    next_id: AtomicU64,
}

/// A held slot; dropping it gives the slot back.
pub struct Slot {
    gate: Arc<Gate>,
    holder: String,
    /// The organisation whose call holds it (counted in flight).
    org: Option<String>,
    renewal: tokio::task::JoinHandle<()>,
}

impl Slot {
    fn assign(mut self, org: &str) -> Self {
        self.gate.metrics.pool_in_flight(&self.gate.model, org, 1);
        self.org = Some(org.to_string());
        self
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.renewal.abort();
        if let Some(org) = &self.org {
            self.gate.metrics.pool_in_flight(&self.gate.model, org, -1);
        }
        let gate = self.gate.clone();
        let holder = std::mem::take(&mut self.holder);
        tokio::spawn(async move {
            if let Err(error) = gate.store.release(&gate.model, &holder).await {
                tracing::warn!(%error, model = gate.model, "a pool slot could not be given back; its lease will lapse");
            }
            gate.wake.notify_one();
        });
    }
}

fn now_ms() -> u64 {
    chrono::Utc::now().timestamp_millis().max(0) as u64
}

impl Pools {
    pub fn new(store: Arc<dyn SlotStore>, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            metrics,
            gates: Arc::default(),
        }
    }

    fn gate(&self, model: &str, limits: PoolLimits) -> Arc<Gate> {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(gate) = gates.get(model) {
            *gate.limits.lock().unwrap_or_else(|p| p.into_inner()) = limits;
            return gate.clone();
        }
        let gate = Arc::new(Gate {
            model: model.to_string(),
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            limits: Mutex::new(limits),
            line: Mutex::default(),
            wake: Notify::new(),
            next_id: AtomicU64::new(1),
        });
        tokio::spawn(dispatch(gate.clone()));
        gates.insert(model.to_string(), gate.clone());
        gate
    }

    /// A slot of `model`'s pool for a call of `org`, at once or after a fair
    /// wait (its place reported to `reports`).
    pub async fn acquire(
        &self,
        model: &str,
        limits: PoolLimits,
        org: &str,
        reports: Option<&ProgressSink>,
    ) -> Result<Slot, Busy> {
        let gate = self.gate(model, limits);
        let started = Instant::now();
        if gate.line_is_empty() {
            if let Some(slot) = gate.try_slot().await {
                self.metrics.pool_waited(model, org, started.elapsed());
                return Ok(slot.assign(org));
            }
        }
        let (place, mut granted) = {
            let mut line = gate.line.lock().unwrap_or_else(|p| p.into_inner());
            if line.len() >= limits.max_queue as usize {
                return Err(Busy::QueueFull);
            }
            let id = gate.next_id.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            line.push(org, id, tx);
            (Place::new(&gate, id, org, started), rx)
        };
        let id = place.id;
        gate.wake.notify_one();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(limits.queue_timeout_secs);
        loop {
            if let (Some(sink), Some(ahead)) = (reports, gate.ahead_of(id)) {
                let _ = sink.send(Report::Queued {
                    model: model.to_string(),
                    ahead,
                });
            }
            let tick = tokio::time::sleep(POSITION_EVERY);
            tokio::select! {
                slot = &mut granted => break slot.map_err(|_| Busy::Timeout),
                _ = tokio::time::sleep_until(deadline) => {
                    // Out of the line first, so that no slot is sent after this look.
                    drop(place);
                    break granted.try_recv().map_err(|_| Busy::Timeout);
                }
                _ = tick => {}
            }
        }
    }

    /// A call that got no slot goes on down its chain (counted).
    pub fn busy(&self, model: &str, busy: Busy) {
        self.metrics.capacity_spill(model, busy.as_str());
    }

    /// The pool did not answer (scaled to zero, warming): the call goes on
    /// down its chain, and the demand still shows for the autoscaler.
    pub fn unavailable(&self, model: &str) {
        self.metrics.capacity_spill(model, "unavailable");
    }
}

/// A call's place in a pool's line, counted in `pool_queued` while held.
/// However the wait ends (a slot, the queue timeout, or the call's future
/// dropped when it is cancelled) the place leaves the line and the gauge:
/// the autoscaler scales on that gauge, and a dead waiter would hold one of
/// `max_queue` places for ever. A slot sent to a waiter that is gone is
/// dropped with its channel, and so given back.
struct Place<'a> {
    gate: &'a Gate,
    id: u64,
    org: &'a str,
    started: Instant,
}

impl<'a> Place<'a> {
    fn new(gate: &'a Gate, id: u64, org: &'a str, started: Instant) -> Self {
        gate.metrics.pool_queued(&gate.model, org, 1);
        Self { gate, id, org, started }
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        // Already out when the dispatcher popped it for a slot.
        self.gate.line.lock().unwrap_or_else(|p| p.into_inner()).remove(self.id);
        self.gate.metrics.pool_queued(&self.gate.model, self.org, -1);
        // Every wait counts, those that ended in a timeout or a cancellation too.
        self.gate
            .metrics
            .pool_waited(&self.gate.model, self.org, self.started.elapsed());
    }
}

impl Gate {
    fn line_is_empty(&self) -> bool {
        self.line.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
    }

    fn ahead_of(&self, id: u64) -> Option<usize> {
        self.line.lock().unwrap_or_else(|p| p.into_inner()).ahead_of(id)
    }

    /// A slot now, if one is free.
    async fn try_slot(self: &Arc<Self>) -> Option<Slot> {
        let cap = self.limits.lock().unwrap_or_else(|p| p.into_inner()).max_in_flight;
        let holder = uuid::Uuid::new_v4().to_string();
        let now = now_ms();
        match self
            .store
            .try_take(&self.model, &holder, cap, now + LEASE.as_millis() as u64, now)
            .await
        {
            Ok(true) => {}
            Ok(false) => return None,
            Err(error) => {
                // A store that cannot say never stops a call: run it unslotted.
                tracing::warn!(%error, model = self.model, "the slot store could not be asked; running the call");
            }
        }
        let renewal = tokio::spawn(renew(self.clone(), holder.clone()));
        Some(Slot {
            gate: self.clone(),
            holder,
            org: None,
            renewal,
        })
    }
}

/// Keeps a held slot's lease from lapsing while its call runs.
async fn renew(gate: Arc<Gate>, holder: String) {
    loop {
        tokio::time::sleep(LEASE / 3).await;
        let until = now_ms() + LEASE.as_millis() as u64;
        if let Err(error) = gate.store.renew(&gate.model, &holder, until).await {
            tracing::warn!(%error, model = gate.model, "a pool slot's lease could not be renewed");
        }
    }
}

/// Hands free slots to the line's waiters in fair order.
async fn dispatch(gate: Arc<Gate>) {
    loop {
        if gate.line_is_empty() {
            gate.wake.notified().await;
            continue;
        }
        let Some(slot) = gate.try_slot().await else {
            tokio::select! {
                _ = gate.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
            continue;
        };
        let next = gate.line.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match next {
            // A waiter gone meanwhile drops the slot, which gives it back.
            Some((org, _, waiter)) => {
                let _ = waiter.send(slot.assign(&org));
            }
            None => drop(slot),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(metrics: &Metrics, model: &str, org: &str) -> i64 {
        metrics
            .pool_queued
            .get_or_create(&crate::telemetry::metrics::PoolOrgLabels {
                model: model.into(),
                org: org.into(),
            })
            .get()
    }

    #[tokio::test]
    async fn a_waiter_dropped_while_it_waits_leaves_the_line_and_the_gauge() {
        let metrics = Metrics::new();
        let pools = Pools::new(Arc::new(memory::MemorySlots::default()), metrics.clone());
        let limits = PoolLimits {
            max_in_flight: 1,
            max_queue: 1,
            queue_timeout_secs: 30,
        };
        let held = pools.acquire("sdxl", limits, "acme", None).await.unwrap();
        // A call cancelled (its future dropped) while it waits for the slot.
        let waiting =
            tokio::time::timeout(Duration::from_millis(100), pools.acquire("sdxl", limits, "acme", None)).await;
        assert!(waiting.is_err(), "the slot is held: the waiter was still waiting");
        assert_eq!(queued(&metrics, "sdxl", "acme"), 0, "the autoscaler's gauge");
        let gate = pools.gates.lock().unwrap()["sdxl"].clone();
        assert!(gate.line_is_empty(), "a dead waiter holds no place of max_queue");
        // Its place is free again: the next waiter is queued, not refused.
        drop(held);
        let next = tokio::time::timeout(Duration::from_secs(5), pools.acquire("sdxl", limits, "acme", None)).await;
        assert!(matches!(next, Ok(Ok(_))), "the freed slot goes to the next caller");
    }
}
