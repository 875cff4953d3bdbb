use std::cell::Cell;

use super::*;
use crate::test_support::MemStore;

/// Another worker takes a token between our read and our write, `races` times.
struct RacingStore {
    inner: MemStore,
    races: Cell<u32>,
    bucket: Bucket,
    now_ms: u64,
    rival_allowed: Cell<u32>,
}

impl SharedStore for RacingStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.inner.get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch> {
        if self.races.get() > 0 {
            self.races.set(self.races.get() - 1);
            let rival = update(&self.inner, key, |v| {
                let (take, state) = self.bucket.take(v.and_then(BucketState::decode), self.now_ms, 1);
                (take, state.map(|s| s.encode()))
            });
            if let Ok(Take::Allowed { .. }) = rival {
                self.rival_allowed.set(self.rival_allowed.get() + 1);
            }
        }
        self.inner.set(key, value, cas)
    }
}

fn identity(key_id: Option<&str>) -> Identity {
    Identity {
        user: "alice".into(),
        org: "acme".into(),
        scopes: vec![],
        expires_at: u64::MAX,
        key_id: key_id.map(str::to_string),
    }
}

fn limits(spec: serde_json::Value) -> RateLimits {
    RateLimits::from_spec(&serde_json::from_value(spec).unwrap()).unwrap()
}

#[test]
fn bucket_refills_at_its_rate() {
    let bucket = Bucket {
        rate_per_sec: 2.0,
        burst: 3,
    };
    let (mut state, mut allowed) = (None, 0);
    for _ in 0..5 {
        let (take, next) = bucket.take(state, 1_000, 1);
        if let Take::Allowed { .. } = take {
            allowed += 1;
            state = next;
        }
    }
    assert_eq!(allowed, 3, "burst");
    assert_eq!(bucket.take(state, 1_000, 1).0, Take::Limited { retry_after_ms: 500 });
    assert!(matches!(bucket.take(state, 1_500, 1).0, Take::Allowed { remaining: 0 }));
    // Refill never exceeds the burst.
    assert!(matches!(
        bucket.take(state, 100_000, 1).0,
        Take::Allowed { remaining: 2 }
    ));
    // A clock that goes backwards does not mint tokens.
    let (_, s) = bucket.take(None, 5_000, 3);
    assert!(matches!(bucket.take(s, 4_000, 1).0, Take::Limited { .. }));
}

#[test]
fn state_round_trips_and_rejects_garbage() {
    let state = BucketState {
        tokens_milli: 12_345,
        updated_ms: 987_654_321,
    };
    assert_eq!(BucketState::decode(&state.encode()), Some(state));
    assert_eq!(BucketState::decode(b"short"), None);
}

#[test]
fn caller_and_org_buckets_with_429_headers() {
    let store = MemStore::default();
    let l = limits(serde_json::json!({
        "per_caller": {"requests_per_second": 1, "burst": 2},
        "per_org": {"requests_per_second": 1, "burst": 3}
    }));
    let alice = identity(None);
    let bot = identity(Some("ci-bot"));
    assert!(l
        .check_request(&store, &mut Leases::default(), &alice, CallerOverride::default(), 0)
        .is_ok());
    assert!(l
        .check_request(&store, &mut Leases::default(), &alice, CallerOverride::default(), 0)
        .is_ok());
    let caller = l
        .check_request(&store, &mut Leases::default(), &alice, CallerOverride::default(), 0)
        .unwrap_err();
    assert_eq!(
        (caller.status, caller.code, caller.reason),
        (429, RATE_LIMITED, "rate_limited_caller")
    );
    let header = |r: &Reject, n: &str| r.headers.iter().find(|(k, _)| *k == n).map(|(_, v)| v.clone()).unwrap();
    assert_eq!(header(&caller, "retry-after"), "1");
    assert_eq!(header(&caller, "ratelimit-policy"), "\"caller\";q=2;w=2");
    assert_eq!(header(&caller, "ratelimit"), "\"caller\";r=0;t=1");
    // Another caller of the same org has its own bucket, but the org bucket (3) is now spent.
    assert!(l
        .check_request(&store, &mut Leases::default(), &bot, CallerOverride::default(), 0)
        .is_ok());
    let org = l
        .check_request(&store, &mut Leases::default(), &bot, CallerOverride::default(), 0)
        .unwrap_err();
    assert_eq!(org.reason, "rate_limited_org");
    assert!(l
        .check_request(&store, &mut Leases::default(), &bot, CallerOverride::default(), 1_000)
        .is_ok());
}

#[test]
fn api_key_override_and_org_override() {
    let store = MemStore::default();
    let l = limits(serde_json::json!({
        "per_caller": {"requests_per_second": 1, "burst": 1},
        "orgs": {"acme": {"daily_images": 3}}
    }));
    let bot = identity(Some("bulk"));
    let generous = CallerOverride {
        requests_per_second: Some(100.0),
        burst: Some(5),
    };
    for _ in 0..5 {
        assert!(l
            .check_request(&store, &mut Leases::default(), &bot, generous, 0)
            .is_ok());
    }
    assert!(l
        .check_request(&store, &mut Leases::default(), &bot, generous, 0)
        .is_err());
    assert_eq!(
        l.check_images(&store, "acme", 2, 0).unwrap(),
        Some(QuotaUse { used: 2, limit: 3 })
    );
    let over = l.check_images(&store, "acme", 2, 0).unwrap_err();
    assert_eq!((over.status, over.reason), (429, "quota_exceeded"));
    assert!(over.message.contains("used 2 of its 3 images"), "{}", over.message);
    assert!(l.check_images(&store, "acme", 1, 0).is_ok());
    // A new UTC day starts a new count; other orgs have no quota here.
    assert!(l.check_images(&store, "acme", 3, 86_400_000).is_ok());
    assert!(l.check_images(&store, "globex", 100, 0).is_ok());
}

#[test]
fn compare_and_swap_never_over_admits() {
    let bucket = Bucket {
        rate_per_sec: 0.001,
        burst: 5,
    };
    let store = RacingStore {
        inner: MemStore::default(),
        races: Cell::new(3),
        bucket,
        now_ms: 0,
        rival_allowed: Cell::new(0),
    };
    let mut ours = 0;
    for _ in 0..10 {
        let outcome = update(&store, "k", |v| {
            let (take, state) = bucket.take(v.and_then(BucketState::decode), 0, 1);
            (take, state.map(|s| s.encode()))
        });
        if let Ok(Take::Allowed { .. }) = outcome {
            ours += 1;
        }
    }
    assert_eq!(
        ours + store.rival_allowed.get(),
        5,
        "ours {ours}, rival {}",
        store.rival_allowed.get()
    );
    assert!(store.rival_allowed.get() > 0, "the race was exercised");
}

#[test]
fn config_errors() {
    for spec in [
        serde_json::json!({"per_caller": {"requests_per_second": 0, "burst": 1}}),
        serde_json::json!({"per_org": {"requests_per_second": 1, "burst": 0}}),
        serde_json::json!({"orgs": {"acme": {"burst": 4}}}),
    ] {
        let parsed: RateLimitsSpec = serde_json::from_value(spec.clone()).unwrap();
        assert!(RateLimits::from_spec(&parsed).is_err(), "{spec}");
    }
    assert!(serde_json::from_value::<RateLimitsSpec>(serde_json::json!({"per_user": {}})).is_err());
}

#[test]
fn refunded_images_are_free_again_on_the_day_they_were_charged() {
    let store = MemStore::default();
    let l = limits(serde_json::json!({"daily_images_per_org": 4}));
    let late = 86_400_000 - 1;
    assert!(l.check_images(&store, "acme", 3, late).is_ok());
    assert!(l.check_images(&store, "acme", 2, late).is_err());
    // Refunded just after midnight: still yesterday's count.
    l.refund_images(&store, "acme", 3, late);
    assert_eq!(
        l.check_images(&store, "acme", 4, late).unwrap(),
        Some(QuotaUse { used: 4, limit: 4 })
    );
    // Nothing charged, nothing to give back; never below zero.
    l.refund_images(&store, "globex", 5, late);
    assert!(store.get("mcp_edge:quota:globex:0").0.is_none());
    l.refund_images(&store, "acme", 100, late);
    assert_eq!(
        l.check_images(&store, "acme", 4, late).unwrap(),
        Some(QuotaUse { used: 4, limit: 4 })
    );
}

/// Four workers, each with its own leases, share one bucket: leases cut the
/// shared-data reads, never admit more than the bucket granted, and strand at
/// most one partial lease per other worker.
#[test]
fn leases_never_admit_more_than_the_bucket_grants() {
    use crate::leases::{Leases, MAX_LEASE};
    let l = limits(serde_json::json!({"per_org": {"requests_per_second": 0.001, "burst": 400}}));
    let store = MemStore::default();
    let mut workers: Vec<Leases> = (0..4).map(|_| Leases::default()).collect();
    let alice = identity(None);
    let mut admitted = 0u64;
    for i in 0..2_000 {
        let worker = &mut workers[i % 4];
        if l.check_request(&store, worker, &alice, CallerOverride::default(), 10)
            .is_ok()
        {
            admitted += 1;
        }
    }
    assert!(admitted <= 400, "over-admitted: {admitted}");
    assert!(admitted >= 400 - 3 * (MAX_LEASE - 1), "stranded too much: {admitted}");
    // Without leases every admitted request reads the bucket once.
    let reads_while_admitting = store.reads.get() - (2_000 - admitted as usize);
    assert!(
        reads_while_admitting * 4 < admitted as usize,
        "{reads_while_admitting} reads for {admitted}"
    );
}

/// Near an empty bucket every request takes exactly one token from shared
/// data: a small burst behaves exactly as without leases, on any worker.
#[test]
fn small_buckets_are_exact() {
    let l = limits(serde_json::json!({"per_org": {"requests_per_second": 0.001, "burst": 7}}));
    let store = MemStore::default();
    let mut workers: Vec<Leases> = (0..3).map(|_| Leases::default()).collect();
    let alice = identity(None);
    let admitted = (0..30)
        .filter(|i| {
            l.check_request(&store, &mut workers[i % 3], &alice, CallerOverride::default(), 10)
                .is_ok()
        })
        .count();
    assert_eq!(admitted, 7);
}

/// Leased tokens lapse: a caller cannot bank them past the lease lifetime.
#[test]
fn leased_tokens_lapse() {
    use crate::leases::{Leases, LEASE_TTL_MS};
    let l = limits(serde_json::json!({"per_org": {"requests_per_second": 0.001, "burst": 400}}));
    let store = MemStore::default();
    let mut leases = Leases::default();
    let alice = identity(None);
    assert!(l
        .check_request(&store, &mut leases, &alice, CallerOverride::default(), 0)
        .is_ok());
    let reads = store.reads.get();
    assert!(l
        .check_request(&store, &mut leases, &alice, CallerOverride::default(), 5)
        .is_ok());
    assert_eq!(store.reads.get(), reads, "served from the lease");
    assert!(l
        .check_request(
            &store,
            &mut leases,
            &alice,
            CallerOverride::default(),
            LEASE_TTL_MS + 10
        )
        .is_ok());
    assert!(store.reads.get() > reads, "a lapsed lease goes back to the bucket");
}

/// Every write loses its compare-and-swap, as when other workers always win.
#[derive(Default)]
struct ConflictingStore {
    inner: MemStore,
}

impl SharedStore for ConflictingStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.inner.get(key)
    }

    fn set(&self, _key: &str, _value: &[u8], _cas: Option<u32>) -> Result<(), CasMismatch> {
        Err(CasMismatch)
    }
}

/// A bucket or quota that stays contended for every attempt refuses (429,
/// `Retry-After`, its own reason for the metrics) instead of admitting
/// uncharged, after a bounded number of reads.
#[test]
fn contention_refuses_rather_than_admitting_uncharged() {
    let l = limits(serde_json::json!({
        "per_caller": {"requests_per_second": 1, "burst": 100},
        "daily_images_per_org": 100
    }));
    let store = ConflictingStore::default();
    let request = l.check_request(
        &store,
        &mut Leases::default(),
        &identity(None),
        CallerOverride::default(),
        0,
    );
    let refused = request.expect_err("a contended bucket must not admit");
    assert_eq!(
        (refused.status, refused.code, refused.reason),
        (429, RATE_LIMITED, "limit_contended")
    );
    assert!(
        refused.headers.iter().any(|(k, v)| *k == "retry-after" && v == "1"),
        "{:?}",
        refused.headers
    );
    assert!(refused.message.contains("Retry after 1 s"), "{}", refused.message);
    assert_eq!(store.inner.reads.get(), MAX_CAS_ATTEMPTS, "bounded retries");
    let images = l.check_images(&store, "acme", 1, 0);
    let refused = images.expect_err("a contended quota must not admit");
    assert_eq!((refused.status, refused.reason), (429, "limit_contended"));
}
