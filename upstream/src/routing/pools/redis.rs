//! Pool slots in Redis, held across every upstream replica: a sorted set per
//! model (`mcp:slots:{model}`) of holders scored by their lease's end. A
//! take drops lapsed leases first (a crashed replica's slots come back once
//! its leases end) and adds the holder only under the cap, in one script.

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::Script;

use super::SlotStore;

const TAKE: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  redis.call('PEXPIREAT', KEYS[1], tonumber(ARGV[3]) + 60000)
  return 1
end
return 0
";

pub struct RedisSlots {
    connection: ConnectionManager,
    take: Script,
}

impl RedisSlots {
    pub fn new(connection: ConnectionManager) -> Self {
        Self {
            connection,
            take: Script::new(TAKE),
        }
    }
}

fn key(model: &str) -> String {
    format!("mcp:slots:{model}")
}

#[async_trait]
impl SlotStore for RedisSlots {
    async fn try_take(&self, model: &str, holder: &str, cap: u32, until_ms: u64, now_ms: u64) -> Result<bool, String> {
        let mut connection = self.connection.clone();
        let taken: i64 = self
            .take
            .key(key(model))
            .arg(holder)
            .arg(cap)
            .arg(until_ms)
            .arg(now_ms)
            .invoke_async(&mut connection)
            .await
            .map_err(|e| e.to_string())?;
        Ok(taken == 1)
    }

    async fn renew(&self, model: &str, holder: &str, until_ms: u64) -> Result<(), String> {
        let mut connection = self.connection.clone();
        redis::cmd("ZADD")
            .arg(key(model))
            .arg("XX")
            .arg(until_ms)
            .arg(holder)
            .query_async::<()>(&mut connection)
            .await
            .map_err(|e| e.to_string())
    }

    async fn release(&self, model: &str, holder: &str) -> Result<(), String> {
        let mut connection = self.connection.clone();
        redis::cmd("ZREM")
            .arg(key(model))
            .arg(holder)
            .query_async::<()>(&mut connection)
            .await
            .map_err(|e| e.to_string())
    }
}
