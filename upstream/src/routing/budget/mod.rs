//! Per-organisation monthly budgets in USD (`GATEWAY_BUDGETS_FILE`:
//! `{"default_usd": 50, "orgs": {"acme": 500}}`). Before a provider call the
//! call's estimated cost (`routing::cost`, the dearest model of the chain that
//! could serve it) is reserved against the organisation's month in a store
//! every replica shares (Redis; one replica may keep it in memory); after the
//! call the reservation is settled to what its provider attempts may have
//! cost (`tab`: the one that served at its usage, each whose answer was lost
//! after the request went out at its estimate; nothing for a call no
//! provider worked on). A reservation is a guard: a call dropped mid-way
//! (its client gone) settles all the same, never left reserved for the
//! month. A call that would pass the budget is refused before anything is
//! generated, saying when it resets. Amounts are kept in integer
//! micro-dollars so that concurrent additions are exact.

pub mod memory;
pub mod redis;
pub mod tab;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Datelike, TimeZone, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::telemetry::metrics::Metrics;

/// What the budgets file says: monthly budgets in USD per organisation
/// (calendar months, UTC).
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetSettings {
    /// The budget of every organisation not listed (none when absent).
    #[serde(default)]
    pub default_usd: Option<f64>,
    /// The budget of each listed organisation.
    #[serde(default)]
    pub orgs: BTreeMap<String, f64>,
}

impl BudgetSettings {
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read the budgets file {}: {e}", path.display()))?;
        let settings: BudgetSettings = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("the budgets file {} is not valid: {e}", path.display()))?;
        let bad = settings
            .default_usd
            .iter()
            .chain(settings.orgs.values())
            .any(|usd| !usd.is_finite() || *usd < 0.0);
        anyhow::ensure!(
            !bad,
            "the budgets file {}: budgets must be USD amounts ≥ 0",
            path.display()
        );
        Ok(settings)
    }

    fn limit_for(&self, org: &str) -> Option<f64> {
        self.orgs.get(org).copied().or(self.default_usd)
    }
}

/// Where month totals live; amounts in micro-dollars.
#[async_trait]
pub trait BudgetStore: Send + Sync {
    /// Adds `amount` to `key` unless the total would pass `limit`: `Ok(new
    /// total)`, or `Err(current total)` when refused. `ttl_secs` keeps the
    /// key a little beyond its month.
    async fn reserve(&self, key: &str, amount: i64, limit: i64, ttl_secs: u64) -> Result<Result<i64, i64>, String>;
    /// Adds `delta` (negative to give back) and returns the new total.
    async fn adjust(&self, key: &str, delta: i64, ttl_secs: u64) -> Result<i64, String>;
    /// The current total.
    async fn total(&self, key: &str) -> Result<i64, String>;
}

/// A reservation, settled to its tab by `settle`, or when dropped unsettled.
pub struct Reservation {
    budgets: Budgets,
    org: String,
    key: String,
    amount: i64,
    limit: i64,
    tab: Arc<tab::Tab>,
    settled: bool,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("org", &self.org)
            .field("key", &self.key)
            .field("amount", &self.amount)
            .finish_non_exhaustive()
    }
}

impl Reservation {
    /// Replaces the reservation by what the call's attempts may have cost
    /// (its tab): all of it given back when no provider worked on the call.
    pub async fn settle(mut self) -> f64 {
        self.settled = true;
        let spent = self.tab.spent_usd();
        let delta = micros(spent) - self.amount;
        self.budgets.adjust(&self.org, &self.key, self.limit, delta).await;
        spent
    }
}

impl Drop for Reservation {
    /// A call dropped before it settled (its client gone, its future
    /// dropped): settled in the background to what it may have cost so far,
    /// an attempt under way included.
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let delta = micros(self.tab.spent_usd()) - self.amount;
        let (budgets, org, key, limit) = (self.budgets.clone(), self.org.clone(), self.key.clone(), self.limit);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move { budgets.adjust(&org, &key, limit, delta).await });
            }
            Err(_) => tracing::warn!(
                org,
                "a budget reservation was dropped outside the runtime; it stays reserved"
            ),
        }
    }
}

/// A refused call: the budget, what is spent, and when it resets.
#[derive(Debug, Clone, PartialEq)]
pub struct Exceeded {
    pub limit_usd: f64,
    pub spent_usd: f64,
    pub needed_usd: f64,
    pub resets_at: DateTime<Utc>,
}

impl std::fmt::Display for Exceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Your organisation's monthly image budget of ${:.2} would be exceeded: ${:.4} is spent or reserved this month and this call needs about ${:.4}. Nothing was generated. The budget resets at {} (ask an operator to raise it).",
            self.limit_usd,
            self.spent_usd,
            self.needed_usd,
            self.resets_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    }
}

/// An organisation's budget as `list_models` shows it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct BudgetStatus {
    pub limit_usd: f64,
    /// Spent or reserved this month.
    pub spent_usd: f64,
    /// `YYYY-MM` (UTC).
    pub month: String,
    pub resets_at: String,
}

/// Budgets with their store and clock.
#[derive(Clone)]
pub struct Budgets {
    settings: Arc<BudgetSettings>,
    store: Arc<dyn BudgetStore>,
    clock: Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>,
    metrics: Arc<Metrics>,
}

const KEY_TTL_SECS: u64 = 40 * 24 * 3600;

fn micros(usd: f64) -> i64 {
    (usd * 1e6).round() as i64
}

fn usd(micros: i64) -> f64 {
    micros as f64 / 1e6
}

/// The first instant of the month after `now` (UTC).
pub fn next_month(now: DateTime<Utc>) -> DateTime<Utc> {
    let (year, month) = if now.month() == 12 {
        (now.year() + 1, 1)
    } else {
        (now.year(), now.month() + 1)
    };
    Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0).single().unwrap_or(now)
}

impl Budgets {
    pub fn new(
        settings: BudgetSettings,
        store: Arc<dyn BudgetStore>,
        clock: Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            settings: Arc::new(settings),
            store,
            clock,
            metrics,
        }
    }

    /// No budgets at all.
    /// These budgets under reloaded settings; totals spent so far stay.
    pub fn with_settings(&self, settings: BudgetSettings) -> Self {
        Self {
            settings: Arc::new(settings),
            ..self.clone()
        }
    }

    pub fn none(metrics: Arc<Metrics>) -> Self {
        Self::new(
            BudgetSettings::default(),
            Arc::new(memory::MemoryBudgets::default()),
            Arc::new(Utc::now),
            metrics,
        )
    }

    fn key(&self, org: &str, now: DateTime<Utc>) -> String {
        format!("mcp-budget:{org}:{}", now.format("%Y-%m"))
    }

    /// Whether `org` has a budget (so its calls need a cost estimate).
    pub fn applies_to(&self, org: &str) -> bool {
        self.settings.limit_for(org).is_some()
    }

    /// Reserves `estimate_usd` for `org`, to be settled to `tab`; `Ok(None)`
    /// when the organisation has no budget. A store that cannot be reached
    /// lets the call through (logged and counted): budgets are a cost
    /// control, not an outage.
    pub async fn reserve(
        &self,
        org: &str,
        estimate_usd: f64,
        tab: Arc<tab::Tab>,
    ) -> Result<Option<Reservation>, Exceeded> {
        let Some(limit_usd) = self.settings.limit_for(org) else {
            return Ok(None);
        };
        let now = (self.clock)();
        let key = self.key(org, now);
        let (amount, limit) = (micros(estimate_usd), micros(limit_usd));
        self.metrics.budget_limit(org, limit_usd);
        match self.store.reserve(&key, amount, limit, KEY_TTL_SECS).await {
            Ok(Ok(total)) => {
                self.metrics.budget_spent(org, usd(total));
                Ok(Some(Reservation {
                    budgets: self.clone(),
                    org: org.to_string(),
                    key,
                    amount,
                    limit,
                    tab,
                    settled: false,
                }))
            }
            Ok(Err(total)) => {
                self.metrics.budget_refused(org);
                self.metrics.budget_spent(org, usd(total));
                Err(Exceeded {
                    limit_usd,
                    spent_usd: usd(total),
                    needed_usd: estimate_usd,
                    resets_at: next_month(now),
                })
            }
            Err(error) => {
                tracing::warn!(%error, org, "the budget store is unavailable; the call goes ahead unchecked");
                self.metrics.budget_store_error();
                Ok(None)
            }
        }
    }

    async fn adjust(&self, org: &str, key: &str, limit: i64, delta: i64) {
        if delta == 0 {
            return;
        }
        match self.store.adjust(key, delta, KEY_TTL_SECS).await {
            Ok(total) => {
                self.metrics.budget_spent(org, usd(total));
                if total > limit {
                    tracing::info!(org, "the month's spend passed the budget after settling a call");
                }
            }
            Err(error) => {
                tracing::warn!(%error, org, "settling a budget reservation failed");
                self.metrics.budget_store_error();
            }
        }
    }

    /// `org`'s budget this month, when it has one.
    pub async fn status(&self, org: &str) -> Option<BudgetStatus> {
        let limit_usd = self.settings.limit_for(org)?;
        let now = (self.clock)();
        let spent = self.store.total(&self.key(org, now)).await.unwrap_or_default();
        Some(BudgetStatus {
            limit_usd,
            spent_usd: usd(spent),
            month: now.format("%Y-%m").to_string(),
            resets_at: next_month(now).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn budgets(now: Arc<Mutex<DateTime<Utc>>>) -> Budgets {
        let settings = BudgetSettings {
            default_usd: Some(1.0),
            orgs: BTreeMap::from([("big".to_string(), 100.0)]),
        };
        let clock = move || *now.lock().unwrap();
        Budgets::new(
            settings,
            Arc::new(memory::MemoryBudgets::default()),
            Arc::new(clock),
            Metrics::new(),
        )
    }

    /// A tab whose one attempt (on model `m`) may have cost `usd`; `open`:
    /// the attempt is still under way.
    fn spending(usd: f64, open: bool) -> Arc<tab::Tab> {
        let price = tab::ModelPrice {
            pricing: crate::routing::pricing::Pricing {
                input_per_million_tokens: 0.0,
                output_per_million_tokens: 0.0,
                per_image: usd,
            },
            estimate_usd: usd,
        };
        let tab = tab::Tab::new(std::collections::HashMap::from([("m".to_string(), price)]));
        tab.started("m");
        if !open {
            tab.ended("m", &Err(crate::providers::BackendError::AnswerLost("cut off".into())));
        }
        Arc::new(tab)
    }

    #[tokio::test]
    async fn reserve_settle_release_and_refuse_at_the_limit() {
        let now = Arc::new(Mutex::new(Utc.with_ymd_and_hms(2026, 11, 30, 23, 0, 0).unwrap()));
        let b = budgets(now.clone());
        let first = b.reserve("acme", 0.4, spending(0.3, false)).await.unwrap().unwrap();
        assert_eq!(first.settle().await, 0.3);
        let second = b.reserve("acme", 0.5, Arc::default()).await.unwrap().unwrap();
        assert_eq!(b.status("acme").await.unwrap().spent_usd, 0.8);
        // No provider worked on it: all given back.
        assert_eq!(second.settle().await, 0.0);
        assert_eq!(b.status("acme").await.unwrap().spent_usd, 0.3);
        let refused = b.reserve("acme", 0.71, Arc::default()).await.unwrap_err();
        assert_eq!(refused.limit_usd, 1.0);
        assert!((refused.spent_usd - 0.3).abs() < 1e-9);
        assert_eq!(refused.resets_at, Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap());
        assert!(
            refused.to_string().contains("resets at 2026-12-01T00:00:00Z"),
            "{refused}"
        );
        assert!(
            b.reserve("acme", 0.7, Arc::default()).await.unwrap().is_some(),
            "exactly the limit is allowed"
        );
        assert!(
            b.reserve("big", 50.0, Arc::default()).await.unwrap().is_some(),
            "per-org budgets"
        );
        // The month turns: a fresh budget.
        *now.lock().unwrap() = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 1).unwrap();
        assert_eq!(b.status("acme").await.unwrap().spent_usd, 0.0);
        assert!(b.reserve("acme", 0.9, Arc::default()).await.unwrap().is_some());
        assert_eq!(b.status("acme").await.unwrap().month, "2026-12");
    }

    #[tokio::test]
    async fn no_budget_no_reservation() {
        let b = Budgets::none(Metrics::new());
        assert!(b.reserve("acme", 1e9, Arc::default()).await.unwrap().is_none());
        assert!(b.status("acme").await.is_none());
    }

    /// What the store holds for `org` once the background settlement of a
    /// dropped reservation has run.
    async fn settled_spend(b: &Budgets, org: &str, expected: f64) -> f64 {
        for _ in 0..100 {
            let spent = b.status(org).await.unwrap().spent_usd;
            if (spent - expected).abs() < 1e-9 {
                return spent;
            }
            tokio::task::yield_now().await;
        }
        b.status(org).await.unwrap().spent_usd
    }

    #[tokio::test]
    async fn a_reservation_dropped_mid_call_settles_what_may_have_been_spent() {
        let b = budgets(Arc::new(Mutex::new(Utc::now())));
        // Dropped with its request out (the call's client gone): the
        // attempt may be billed, so its estimate stays spent.
        let sent = b.reserve("acme", 0.4, spending(0.25, true)).await.unwrap().unwrap();
        drop(sent);
        assert_eq!(settled_spend(&b, "acme", 0.25).await, 0.25);
        // Dropped before any provider was asked: all given back, not left
        // reserved until the month's key expires.
        let unsent = b.reserve("acme", 0.4, Arc::default()).await.unwrap().unwrap();
        assert!((b.status("acme").await.unwrap().spent_usd - 0.65).abs() < 1e-9);
        drop(unsent);
        assert_eq!(settled_spend(&b, "acme", 0.25).await, 0.25);
    }

    #[test]
    fn months_turn_over_at_midnight_utc_on_the_first() {
        let cases = [
            ((2026, 11, 30), (2026, 12, 1)),
            ((2026, 12, 31), (2027, 1, 1)),
            ((2028, 2, 29), (2028, 3, 1)),
        ];
        for ((y, m, d), (ny, nm, nd)) in cases {
            let now = Utc.with_ymd_and_hms(y, m, d, 12, 0, 0).unwrap();
            assert_eq!(next_month(now), Utc.with_ymd_and_hms(ny, nm, nd, 0, 0, 0).unwrap());
        }
    }
}
