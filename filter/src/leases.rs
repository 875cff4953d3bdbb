//! Per-worker leases of bucket tokens.
//!
//! Every Envoy worker runs its own VM; the buckets live in shared data and
//! are updated with a read and a compare-and-swap, two host calls each. When
//! a bucket is far from empty, a worker takes a few tokens in that one update
//! and spends them from this local lease, so most requests of a busy caller
//! make no host call for their buckets.
//!
//! Bounds (tested in `limits_tests.rs` and through Envoy with four workers):
//! - a lease is at most `1/LEASE_SHARE` of the tokens left and at most
//!   `MAX_LEASE`, so near an empty bucket, where a limit bites, every request
//!   takes exactly one token from shared data, as without leases;
//! - nothing is admitted that the bucket did not grant: leased tokens were
//!   taken from it. They are spent within `LEASE_TTL_MS` of being taken or
//!   dropped, so a caller can run ahead of the bucket's refill by at most one
//!   unspent lease per worker (≤ `MAX_LEASE - 1` tokens each) for that long;
//! - a worker's unspent lease is not visible to the others: they may refuse
//!   while it holds tokens, again at most `MAX_LEASE - 1` per worker, for at
//!   most `LEASE_TTL_MS`.

use std::collections::HashMap;

/// Most tokens one shared update takes.
pub const MAX_LEASE: u64 = 16;
/// A lease is at most this fraction of the tokens the bucket holds.
pub const LEASE_SHARE: u64 = 8;
/// Leased tokens not spent within this long are dropped.
pub const LEASE_TTL_MS: u64 = 1_000;
/// Keys a worker keeps leases for; past it, lapsed leases are dropped first.
const MAX_KEYS: usize = 4_096;

/// How many tokens to take from a bucket holding `whole_tokens`: one, and
/// more only when the bucket is far from empty.
pub fn lease_size(whole_tokens: u64) -> u64 {
    (whole_tokens / LEASE_SHARE).clamp(1, MAX_LEASE)
}

#[derive(Debug, Clone, Copy)]
struct Lease {
    tokens: u64,
    taken_ms: u64,
}

/// One worker's leases, by bucket key.
#[derive(Debug, Default)]
pub struct Leases {
    by_key: HashMap<String, Lease>,
}

impl Leases {
    /// Spends one leased token of `key`, if a live lease has one.
    pub fn spend(&mut self, key: &str, now_ms: u64) -> bool {
        let Some(lease) = self.by_key.get_mut(key) else {
            return false;
        };
        if lease.tokens == 0 || now_ms.saturating_sub(lease.taken_ms) > LEASE_TTL_MS {
            return false;
        }
        lease.tokens -= 1;
        true
    }

    /// Keeps `tokens` taken from `key`'s bucket at `now_ms` for later requests
    /// (replacing any lapsed lease).
    pub fn keep(&mut self, key: &str, tokens: u64, now_ms: u64) {
        if tokens == 0 {
            if let Some(lease) = self.by_key.get_mut(key) {
                lease.tokens = 0;
            }
            return;
        }
        if self.by_key.len() >= MAX_KEYS && !self.by_key.contains_key(key) {
            self.by_key
                .retain(|_, lease| lease.tokens > 0 && now_ms.saturating_sub(lease.taken_ms) <= LEASE_TTL_MS);
            if self.by_key.len() >= MAX_KEYS {
                self.by_key.clear();
            }
        }
        let lease = Lease {
            tokens,
            taken_ms: now_ms,
        };
        match self.by_key.get_mut(key) {
            Some(held) => *held = lease,
            None => {
                self.by_key.insert(key.to_string(), lease);
            }
        }
    }

    #[cfg(test)]
    pub fn held(&self, key: &str) -> u64 {
        self.by_key.get(key).map_or(0, |l| l.tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_is_one_near_empty_and_capped_when_full() {
        assert_eq!(lease_size(0), 1);
        assert_eq!(lease_size(LEASE_SHARE * 2 - 1), 1);
        assert_eq!(lease_size(LEASE_SHARE * 2), 2);
        assert_eq!(lease_size(1_000_000), MAX_LEASE);
    }

    #[test]
    fn spends_until_empty_or_lapsed() {
        let mut leases = Leases::default();
        assert!(!leases.spend("k", 0));
        leases.keep("k", 2, 1_000);
        assert!(leases.spend("k", 1_100) && leases.spend("k", 1_200));
        assert!(!leases.spend("k", 1_300), "spent");
        leases.keep("k", 5, 2_000);
        assert!(!leases.spend("k", 2_000 + LEASE_TTL_MS + 1), "lapsed");
        assert!(!leases.spend("other", 2_000));
    }

    #[test]
    fn key_count_stays_bounded() {
        let mut leases = Leases::default();
        for i in 0..(MAX_KEYS * 3) {
            leases.keep(&format!("k{i}"), 1, i as u64 * 10);
        }
        assert!(leases.by_key.len() <= MAX_KEYS);
        assert_eq!(
            leases.held(&format!("k{}", MAX_KEYS * 3 - 1)),
            1,
            "the newest lease is kept"
        );
    }
}
