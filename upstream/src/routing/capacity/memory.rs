//! Quota readings in this replica's memory (no Redis configured): each
//! replica learns from its own answers only.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{ModelQuota, QuotaStore, WindowAt};
use crate::providers::rate_limits::Kind;

#[derive(Default)]
pub struct MemoryQuotas {
    models: Mutex<HashMap<String, ModelQuota>>,
}

impl MemoryQuotas {
    fn with<T>(&self, model: &str, change: impl FnOnce(&mut ModelQuota) -> T) -> T {
        let mut models = self.models.lock().unwrap_or_else(|p| p.into_inner());
        change(models.entry(model.to_string()).or_default())
    }
}

#[async_trait]
impl QuotaStore for MemoryQuotas {
    async fn observe(&self, model: &str, windows: &[(Kind, WindowAt)]) -> Result<(), String> {
        self.with(model, |quota| {
            for (kind, window) in windows {
                quota.windows.insert(*kind, *window);
            }
        });
        Ok(())
    }

    async fn refuse(&self, model: &str, until_ms: u64) -> Result<(), String> {
        self.with(model, |quota| {
            quota.refused_until_ms = quota.refused_until_ms.max(until_ms)
        });
        Ok(())
    }

    async fn take(&self, model: &str, _windows: &[Kind], images: i64) -> Result<(), String> {
        self.with(model, |quota| {
            for (kind, window) in quota.windows.iter_mut() {
                window.remaining -= match kind {
                    Kind::Requests => 1,
                    Kind::Images => images,
                    // Tokens are known only once the provider answers.
                    Kind::Tokens => 0,
                };
            }
        });
        Ok(())
    }

    async fn get(&self, model: &str) -> Result<ModelQuota, String> {
        Ok(self.with(model, |quota| quota.clone()))
    }
}
