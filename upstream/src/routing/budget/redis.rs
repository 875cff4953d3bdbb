//! Budget totals in Redis, shared by every replica: the check and the
//! addition are one Lua script, so concurrent reservations on several
//! replicas can never together pass the limit.

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::Script;

use super::BudgetStore;

const RESERVE: &str = r"
local total = tonumber(redis.call('GET', KEYS[1]) or '0')
local amount = tonumber(ARGV[1])
if total + amount > tonumber(ARGV[2]) then
  return {0, total}
end
total = redis.call('INCRBY', KEYS[1], amount)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {1, total}
";

pub struct RedisBudgets {
    connection: ConnectionManager,
    reserve: Script,
}

impl RedisBudgets {
    /// Connects (and reconnects by itself later) to `url`, e.g. `redis://127.0.0.1:6379`.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        Ok(Self {
            connection: crate::routing::redis_connection(url, "GATEWAY_BUDGET_REDIS_URL").await?,
            reserve: Script::new(RESERVE),
        })
    }
}

#[async_trait]
impl BudgetStore for RedisBudgets {
    async fn reserve(&self, key: &str, amount: i64, limit: i64, ttl_secs: u64) -> Result<Result<i64, i64>, String> {
        let mut connection = self.connection.clone();
        let (ok, total): (i64, i64) = self
            .reserve
            .key(key)
            .arg(amount)
            .arg(limit)
            .arg(ttl_secs)
            .invoke_async(&mut connection)
            .await
            .map_err(|e| e.to_string())?;
        Ok(if ok == 1 { Ok(total) } else { Err(total) })
    }

    async fn adjust(&self, key: &str, delta: i64, ttl_secs: u64) -> Result<i64, String> {
        let mut connection = self.connection.clone();
        let (total, _): (i64, i64) = redis::pipe()
            .atomic()
            .incr(key, delta)
            .expire(key, ttl_secs as i64)
            .query_async(&mut connection)
            .await
            .map_err(|e| e.to_string())?;
        Ok(total)
    }

    async fn total(&self, key: &str) -> Result<i64, String> {
        let mut connection = self.connection.clone();
        let total: Option<i64> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut connection)
            .await
            .map_err(|e| e.to_string())?;
        Ok(total.unwrap_or_default())
    }
}
