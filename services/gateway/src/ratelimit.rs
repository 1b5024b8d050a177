//! Per-key token buckets, in memory (one gateway). The cluster puts the
//! same buckets in Redis behind the same interface.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Many token buckets with the same rate and burst, one per key.
pub struct RateLimiter {
    rate_per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets untouched this long are full again and can be forgotten.
const FORGET_AFTER_SECS: f64 = 300.0;

impl RateLimiter {
    pub fn new(rate_per_sec: f64, burst: f64) -> Self {
        RateLimiter {
            rate_per_sec: rate_per_sec.max(0.0),
            burst: burst.max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token from `key`'s bucket; `false` when it is empty.
    pub fn allow(&self, key: &str) -> bool {
        self.allow_at(key, Instant::now())
    }

    fn allow_at(&self, key: &str, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > 100_000 {
            let stale = FORGET_AFTER_SECS;
            buckets.retain(|_, b| now.duration_since(b.at).as_secs_f64() < stale);
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate_per_sec).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn burst_then_rate() {
        let limiter = RateLimiter::new(10.0, 3.0);
        let t0 = Instant::now();
        assert!(limiter.allow_at("a", t0));
        assert!(limiter.allow_at("a", t0));
        assert!(limiter.allow_at("a", t0));
        assert!(!limiter.allow_at("a", t0));
        // Another key has its own bucket.
        assert!(limiter.allow_at("b", t0));
        // 100 ms at 10/s refills one token.
        assert!(limiter.allow_at("a", t0 + Duration::from_millis(100)));
        assert!(!limiter.allow_at("a", t0 + Duration::from_millis(100)));
        // Refill never exceeds the burst.
        let later = t0 + Duration::from_secs(60);
        assert!(limiter.allow_at("a", later));
        assert!(limiter.allow_at("a", later));
        assert!(limiter.allow_at("a", later));
        assert!(!limiter.allow_at("a", later));
    }
}
