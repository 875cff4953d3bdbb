//! Quota readings in Redis, shared by every replica: one hash per model
//! (`mcp:quota:{model}`, fields `{kind}:limit|remaining|reset_at` and
//! `refused_until`), expiring a minute after its last window resets. A call
//! on its way is taken off `remaining` with `HINCRBY`, so replicas see each
//! other's calls before the provider's next answer.

use std::collections::HashMap;

use async_trait::async_trait;
use redis::aio::ConnectionManager;

use super::{ModelQuota, QuotaStore, WindowAt};
use crate::providers::rate_limits::Kind;

/// Kept past the last reset, so a quiet model's reading lapses by itself.
const LINGER_MS: u64 = 60_000;

pub struct RedisQuotas {
    connection: ConnectionManager,
}

impl RedisQuotas {
    pub fn new(connection: ConnectionManager) -> Self {
        Self { connection }
    }
}

fn key(model: &str) -> String {
    format!("mcp:quota:{model}")
}

impl RedisQuotas {
    async fn run(&self, pipe: redis::Pipeline) -> Result<(), String> {
        let mut connection = self.connection.clone();
        pipe.query_async::<()>(&mut connection).await.map_err(|e| e.to_string())
    }
}

/// Makes `key` expire a while after `until_ms`, never sooner than it was set to.
fn linger(pipe: &mut redis::Pipeline, key: &str, until_ms: u64) {
    let at = until_ms.saturating_add(LINGER_MS);
    for option in ["GT", "NX"] {
        pipe.cmd("PEXPIREAT").arg(key).arg(at).arg(option).ignore();
    }
}

#[async_trait]
impl QuotaStore for RedisQuotas {
    async fn observe(&self, model: &str, windows: &[(Kind, WindowAt)]) -> Result<(), String> {
        let Some(last_reset) = windows.iter().map(|(_, w)| w.reset_at_ms).max() else {
            return Ok(());
        };
        let mut fields: Vec<(String, String)> = Vec::with_capacity(windows.len() * 3);
        for (kind, window) in windows {
            let kind = kind.as_str();
            fields.push((format!("{kind}:limit"), window.limit.to_string()));
            fields.push((format!("{kind}:remaining"), window.remaining.to_string()));
            fields.push((format!("{kind}:reset_at"), window.reset_at_ms.to_string()));
        }
        let key = key(model);
        let mut pipe = redis::pipe();
        pipe.atomic().hset_multiple(&key, &fields).ignore();
        linger(&mut pipe, &key, last_reset);
        self.run(pipe).await
    }

    async fn refuse(&self, model: &str, until_ms: u64) -> Result<(), String> {
        let key = key(model);
        let mut pipe = redis::pipe();
        pipe.atomic().hset(&key, "refused_until", until_ms).ignore();
        linger(&mut pipe, &key, until_ms);
        self.run(pipe).await
    }

    async fn take(&self, model: &str, windows: &[Kind], images: i64) -> Result<(), String> {
        let key = key(model);
        // Only windows the provider described (the caller just read them):
        // HINCRBY on a missing field would make one up.
        let mut pipe = redis::pipe();
        for (kind, by) in [(Kind::Requests, 1), (Kind::Images, images)] {
            if windows.contains(&kind) {
                pipe.hincr(&key, format!("{}:remaining", kind.as_str()), -by).ignore();
            }
        }
        self.run(pipe).await
    }

    async fn get(&self, model: &str) -> Result<ModelQuota, String> {
        let mut connection = self.connection.clone();
        let fields: HashMap<String, i64> = redis::cmd("HGETALL")
            .arg(key(model))
            .query_async(&mut connection)
            .await
            .map_err(|e| e.to_string())?;
        let mut quota = ModelQuota {
            refused_until_ms: fields.get("refused_until").copied().unwrap_or(0).max(0) as u64,
            ..ModelQuota::default()
        };
        for kind in Kind::ALL {
            let field = |name: &str| fields.get(&format!("{}:{name}", kind.as_str())).copied();
            if let (Some(limit), Some(remaining), Some(reset_at)) =
                (field("limit"), field("remaining"), field("reset_at"))
            {
                quota.windows.insert(
                    kind,
                    WindowAt {
                        limit,
                        remaining,
                        reset_at_ms: reset_at.max(0) as u64,
                    },
                );
            }
        }
        Ok(quota)
    }
}
