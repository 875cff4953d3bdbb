//! Budget totals in this process's memory: one replica only (each replica
//! would otherwise keep its own month).

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::BudgetStore;

#[derive(Default)]
pub struct MemoryBudgets {
    totals: Mutex<HashMap<String, i64>>,
}

#[async_trait]
impl BudgetStore for MemoryBudgets {
    async fn reserve(&self, key: &str, amount: i64, limit: i64, _ttl_secs: u64) -> Result<Result<i64, i64>, String> {
        let mut totals = self.totals.lock().map_err(|_| "poisoned".to_string())?;
        let total = totals.entry(key.to_string()).or_default();
        if *total + amount > limit {
            return Ok(Err(*total));
        }
        *total += amount;
        Ok(Ok(*total))
    }

    async fn adjust(&self, key: &str, delta: i64, _ttl_secs: u64) -> Result<i64, String> {
        let mut totals = self.totals.lock().map_err(|_| "poisoned".to_string())?;
        let total = totals.entry(key.to_string()).or_default();
        *total += delta;
        Ok(*total)
    }

    async fn total(&self, key: &str) -> Result<i64, String> {
        let totals = self.totals.lock().map_err(|_| "poisoned".to_string())?;
        Ok(totals.get(key).copied().unwrap_or_default())
    }
}
