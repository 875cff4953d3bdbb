//! The process-wide store the buckets and quotas live in: what Envoy's Wasm
//! shared data is for the Wasm build (a locked map of values with a version
//! each, written with compare-and-swap), shared here by every worker thread.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use crate::limits::{CasMismatch, SharedStore};

/// Values and their versions (a version is never 0).
type Entries = Mutex<HashMap<String, (Vec<u8>, u32)>>;

fn entries() -> &'static Entries {
    static ENTRIES: OnceLock<Entries> = OnceLock::new();
    ENTRIES.get_or_init(Mutex::default)
}

pub struct ProcessStore;

impl SharedStore for ProcessStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        // A poisoned lock still holds whole entries (each write is one insert):
        // read on rather than refuse every limit for good.
        let entries = entries().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match entries.get(key) {
            Some((value, version)) => (Some(value.clone()), Some(*version)),
            None => (None, None),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch> {
        let mut entries = entries().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = entries.get(key).map(|(_, version)| *version);
        // No version: the key must still be absent (a first write races too).
        if cas != current {
            return Err(CasMismatch);
        }
        let version = current.map_or(1, |v| v.wrapping_add(1).max(1));
        match entries.get_mut(key) {
            Some(entry) => {
                entry.0.clear();
                entry.0.extend_from_slice(value);
                entry.1 = version;
            }
            None => {
                entries.insert(key.to_string(), (value.to_vec(), version));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_and_swap_refuses_a_stale_version() {
        let store = ProcessStore;
        let key = "native-store-test";
        assert_eq!(store.get(key), (None, None));
        assert!(store.set(key, b"a", None).is_ok());
        assert!(
            store.set(key, b"x", None).is_err(),
            "a second first write must not overwrite"
        );
        let (value, version) = store.get(key);
        assert_eq!(value.as_deref(), Some(&b"a"[..]));
        assert!(store.set(key, b"b", version).is_ok());
        assert!(store.set(key, b"c", version).is_err(), "a stale version must not write");
        assert_eq!(store.get(key).0.as_deref(), Some(&b"b"[..]));
    }

    /// Widens the window between a read and its write, so threads collide.
    struct Yielding;

    impl SharedStore for Yielding {
        fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
            let read = ProcessStore.get(key);
            std::thread::yield_now();
            read
        }

        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch> {
            ProcessStore.set(key, value, cas)
        }
    }

    /// Many worker threads against one limit of 100 (a bucket, a daily
    /// quota) admit at most 100, however often they collide.
    #[test]
    fn worker_threads_never_admit_more_than_the_limit() {
        use crate::jwt::Identity;
        use crate::leases::Leases;
        use crate::limits::{CallerOverride, RateLimits};
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::Barrier;

        let limits = RateLimits::from_spec(
            &serde_json::from_value(serde_json::json!({
                "per_org": {"requests_per_second": 0.001, "burst": 100},
                "daily_images_per_org": 100
            }))
            .unwrap(),
        )
        .unwrap();
        let caller = Identity {
            user: "alice".into(),
            org: "native-store-threads".into(),
            scopes: vec![],
            expires_at: u64::MAX,
            key_id: None,
        };
        let (threads, tries) = (16, 60);
        let (requests, images) = (AtomicU64::new(0), AtomicU64::new(0));
        let start = Barrier::new(threads);
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    let mut leases = Leases::default();
                    start.wait();
                    for _ in 0..tries {
                        if limits
                            .check_request(&Yielding, &mut leases, &caller, CallerOverride::default(), 10)
                            .is_ok()
                        {
                            requests.fetch_add(1, Ordering::Relaxed);
                        }
                        if limits.check_images(&Yielding, &caller.org, 1, 10).is_ok() {
                            images.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        let (requests, images) = (requests.into_inner(), images.into_inner());
        assert!(requests <= 100, "bucket over-admitted: {requests}");
        assert!(images <= 100, "quota over-admitted: {images}");
        assert!(images >= 50, "contention refused most of the quota: {images}");
    }
}
