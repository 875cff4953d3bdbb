//! Pool slots in this replica's memory (no Redis configured): each replica
//! holds the whole cap on its own, so N replicas may put N × the cap in
//! flight (documented; configure Redis for a shared pool).

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::SlotStore;

#[derive(Default)]
pub struct MemorySlots {
    /// Per model: holder → lease end (Unix ms).
    models: Mutex<HashMap<String, HashMap<String, u64>>>,
}

impl MemorySlots {
    fn with<T>(&self, model: &str, change: impl FnOnce(&mut HashMap<String, u64>) -> T) -> T {
        let mut models = self.models.lock().unwrap_or_else(|p| p.into_inner());
        change(models.entry(model.to_string()).or_default())
    }
}

#[async_trait]
impl SlotStore for MemorySlots {
    async fn try_take(&self, model: &str, holder: &str, cap: u32, until_ms: u64, now_ms: u64) -> Result<bool, String> {
        Ok(self.with(model, |held| {
            held.retain(|_, until| *until > now_ms);
            if held.len() >= cap as usize {
                return false;
            }
            held.insert(holder.to_string(), until_ms);
            true
        }))
    }

    async fn renew(&self, model: &str, holder: &str, until_ms: u64) -> Result<(), String> {
        self.with(model, |held| {
            if let Some(until) = held.get_mut(holder) {
                *until = until_ms;
            }
        });
        Ok(())
    }

    async fn release(&self, model: &str, holder: &str) -> Result<(), String> {
        self.with(model, |held| held.remove(holder));
        Ok(())
    }
}
