//! The buckets of one process: `collab serve`'s limiter, and a Redis
//! limiter's fallback while Redis is unreachable.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use async_trait::async_trait;

use super::gcra::Gcra;
use super::{Rate, RateLimiter};
use crate::lock;
use crate::metrics::EphemeralMetrics;

/// Buckets kept before the full ones are swept out.
const SWEEP_ABOVE: usize = 4096;

pub struct MemoryRateLimiter {
    kind: &'static str,
    gcra: Gcra,
    /// Times are microseconds since this instant.
    epoch: Instant,
    buckets: Mutex<Buckets>,
    metrics: EphemeralMetrics,
}

struct Buckets {
    /// Key → TAT. A key without an entry has a full bucket.
    tats: HashMap<String, u64>,
    /// The size past which full buckets are swept out; doubles with the
    /// live ones, so sweeping costs O(1) per check on average.
    sweep_above: usize,
}

impl MemoryRateLimiter {
    pub fn new(kind: &'static str, rate: Rate, metrics: EphemeralMetrics) -> Self {
        metrics.declare_kind(kind);
        MemoryRateLimiter {
            kind,
            gcra: Gcra::new(rate),
            epoch: Instant::now(),
            buckets: Mutex::new(Buckets {
                tats: HashMap::new(),
                sweep_above: SWEEP_ABOVE,
            }),
            metrics,
        }
    }

    /// Takes one token; counts a refusal.
    pub(crate) fn take(&self, key: &str) -> bool {
        let now = self.epoch.elapsed().as_micros() as u64;
        let allowed = self.take_at(key, now);
        if !allowed {
            self.metrics.limited(self.kind);
        }
        allowed
    }

    fn take_at(&self, key: &str, now: u64) -> bool {
        let mut buckets = lock(&self.buckets);
        let tat = buckets.tats.get(key).copied().unwrap_or(now);
        let take = self.gcra.take(tat, now, 1);
        if take.granted == 0 {
            return false;
        }
        match buckets.tats.get_mut(key) {
            Some(tat) => *tat = take.tat,
            None => {
                buckets.tats.insert(key.to_owned(), take.tat);
                if buckets.tats.len() > buckets.sweep_above {
                    buckets.tats.retain(|_, tat| *tat > now);
                    buckets.sweep_above = (buckets.tats.len() * 2).max(SWEEP_ABOVE);
                }
            }
        }
        true
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.buckets).tats.len()
    }
}

#[async_trait]
impl RateLimiter for MemoryRateLimiter {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn try_acquire(&self, key: &str) -> bool {
        self.take(key)
    }

    async fn acquire(&self, key: &str) -> bool {
        self.take(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate_per_key() {
        let limiter = MemoryRateLimiter::new("test", Rate::per_sec(10.0, 3.0), Default::default());
        let t0 = 1_000_000;
        assert!(limiter.take_at("a", t0));
        assert!(limiter.take_at("a", t0));
        assert!(limiter.take_at("a", t0));
        assert!(!limiter.take_at("a", t0));
        // Another key has its own bucket.
        assert!(limiter.take_at("b", t0));
        // 100 ms at 10/s refills one token.
        assert!(limiter.take_at("a", t0 + 100_000));
        assert!(!limiter.take_at("a", t0 + 100_000));
    }

    #[test]
    fn full_buckets_are_swept_out() {
        let limiter =
            MemoryRateLimiter::new("test", Rate::per_sec(1000.0, 1.0), Default::default());
        for i in 0..SWEEP_ABOVE {
            assert!(limiter.take_at(&format!("k{i}"), 0));
        }
        assert_eq!(limiter.len(), SWEEP_ABOVE);
        // One more key, 1 ms later: every earlier bucket is full again.
        assert!(limiter.take_at("late", 1_000));
        assert_eq!(limiter.len(), 1);
    }
}
