//! Grants in this process's memory: one replica only (`make run`, tests).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{GrantStore, Kind};

/// Expired records are swept on writes once the map holds this many…
const SWEEP_AT: usize = 4096;
/// …and no more live ones than this are kept (a flood of sign-ins that are
/// never finished must not take the process down).
const MAX_RECORDS: usize = 200_000;

#[derive(Default)]
pub struct MemoryGrants {
    records: Mutex<HashMap<(Kind, String), (String, Instant)>>,
}

#[async_trait]
impl GrantStore for MemoryGrants {
    async fn put(&self, kind: Kind, key: &str, value: String, ttl: Duration) -> Result<(), String> {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if records.len() >= SWEEP_AT && records.len().is_multiple_of(SWEEP_AT) {
            records.retain(|_, (_, until)| *until > now);
        }
        if records.len() >= MAX_RECORDS {
            return Err("the in-memory grant store is full".into());
        }
        records.insert((kind, key.to_string()), (value, now + ttl));
        Ok(())
    }

    async fn put_new(&self, kind: Kind, key: &str, value: String, ttl: Duration) -> Result<bool, String> {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let slot = records.entry((kind, key.to_string())).or_insert((String::new(), now));
        if slot.1 > now {
            return Ok(false);
        }
        *slot = (value, now + ttl);
        Ok(true)
    }

    async fn take(&self, kind: Kind, key: &str) -> Result<Option<String>, String> {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        Ok(records
            .remove(&(kind, key.to_string()))
            .filter(|(_, until)| *until > Instant::now())
            .map(|(value, _)| value))
    }

    async fn get(&self, kind: Kind, key: &str) -> Result<Option<String>, String> {
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        Ok(records
            .get(&(kind, key.to_string()))
            .filter(|(_, until)| *until > Instant::now())
            .map(|(value, _)| value.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_record_is_taken_once_and_expires() {
        let store = MemoryGrants::default();
        store
            .put(Kind::Code, "c", "v".into(), Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(store.get(Kind::Code, "c").await.unwrap().as_deref(), Some("v"));
        assert_eq!(store.get(Kind::Refresh, "c").await.unwrap(), None, "kinds are apart");
        assert_eq!(store.take(Kind::Code, "c").await.unwrap().as_deref(), Some("v"));
        assert_eq!(store.take(Kind::Code, "c").await.unwrap(), None, "single use");
        assert!(store
            .put_new(Kind::Pending, "j", "1".into(), Duration::from_secs(60))
            .await
            .unwrap());
        assert!(!store
            .put_new(Kind::Pending, "j", "1".into(), Duration::from_secs(60))
            .await
            .unwrap());
        store.put(Kind::Code, "d", "v".into(), Duration::ZERO).await.unwrap();
        assert_eq!(store.take(Kind::Code, "d").await.unwrap(), None, "expired");
    }
}
