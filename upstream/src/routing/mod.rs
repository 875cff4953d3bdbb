//! Which model serves a call and what it may cost: the capability table
//! and prices (`catalog`, `pricing`), cost estimates (`cost`), routing rules
//! with A/B arms (`rules`), the chain that runs a call with retries,
//! breakers and fallbacks (`chain`), monthly budgets (`budget`), provider
//! quotas (`capacity`) and self-hosted pools' concurrency caps (`pools`).

pub mod budget;
pub mod capacity;
pub mod catalog;
pub mod chain;
pub mod cost;
pub mod pools;
pub mod pricing;
pub mod rules;

/// A Redis connection shared by the stores of every replica (budgets,
/// quota readings, pool slots); it reconnects by itself later. `setting`
/// names the variable the URL came from, for the error.
pub async fn redis_connection(url: &str, setting: &str) -> anyhow::Result<redis::aio::ConnectionManager> {
    let client = redis::Client::open(url).map_err(|e| anyhow::anyhow!("{setting} {url:?}: {e}"))?;
    redis::aio::ConnectionManager::new(client)
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach Redis at {url} ({setting}): {e}"))
}
