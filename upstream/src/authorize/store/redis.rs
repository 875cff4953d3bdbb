//! Grants in Redis, shared by every replica: `GETDEL` makes a redemption
//! atomic, so a code replayed against two replicas at once works once.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;

use super::{GrantStore, Kind};

pub struct RedisGrants {
    connection: ConnectionManager,
}

impl RedisGrants {
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        Ok(Self {
            connection: crate::routing::redis_connection(url, "GATEWAY_AUTHZ_REDIS_URL").await?,
        })
    }
}

#[async_trait]
impl GrantStore for RedisGrants {
    async fn put(&self, kind: Kind, key: &str, value: String, ttl: Duration) -> Result<(), String> {
        let mut connection = self.connection.clone();
        redis::cmd("SET")
            .arg(format!("{}{key}", kind.prefix()))
            .arg(value)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async::<()>(&mut connection)
            .await
            .map_err(|e| e.to_string())
    }

    async fn put_new(&self, kind: Kind, key: &str, value: String, ttl: Duration) -> Result<bool, String> {
        let mut connection = self.connection.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(format!("{}{key}", kind.prefix()))
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut connection)
            .await
            .map_err(|e| e.to_string())?;
        Ok(set.is_some())
    }

    async fn take(&self, kind: Kind, key: &str) -> Result<Option<String>, String> {
        let mut connection = self.connection.clone();
        redis::cmd("GETDEL")
            .arg(format!("{}{key}", kind.prefix()))
            .query_async(&mut connection)
            .await
            .map_err(|e| e.to_string())
    }

    async fn get(&self, kind: Kind, key: &str) -> Result<Option<String>, String> {
        let mut connection = self.connection.clone();
        redis::cmd("GET")
            .arg(format!("{}{key}", kind.prefix()))
            .query_async(&mut connection)
            .await
            .map_err(|e| e.to_string())
    }
}
