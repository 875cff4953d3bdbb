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
