//! Rate limits: many buckets of one rate and burst, one per key (a user
//! id, or an address).
//!
//! Both implementations run the same algorithm, GCRA (the generic cell
//! rate algorithm: a token bucket kept as one number per key, the
//! "theoretical arrival time" of the next request, so a bucket that has
//! refilled needs no entry at all). [`MemoryRateLimiter`] keeps the buckets
//! in this process; [`RedisRateLimiter`] keeps them in Redis, where every
//! gateway takes from the same ones, and spends them locally in small
//! leases so that a check does not cost a round trip.

mod gcra;
mod memory;
mod redis;

use async_trait::async_trait;

pub use memory::MemoryRateLimiter;
pub use redis::RedisRateLimiter;

/// A bucket's settings: a sustained rate and a burst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens added per second. Zero (or less) is the slowest rate there
    /// is: one token a day.
    pub per_sec: f64,
    /// The most tokens a bucket holds; below one counts as one.
    pub burst: f64,
}

impl Rate {
    pub fn per_sec(per_sec: f64, burst: f64) -> Rate {
        Rate { per_sec, burst }
    }

    pub fn per_min(per_min: f64, burst: f64) -> Rate {
        Rate {
            per_sec: per_min / 60.0,
            burst,
        }
    }

    /// How many tokens a gateway takes from a shared bucket at once: a
    /// tenth of the burst, from 1 to 32. Each gateway may spend up to one
    /// lease more than the shared bucket would have allowed in a window
    /// (the tokens it took before the window), so the lease is small next
    /// to the burst; and it is large enough that a user at full speed
    /// costs a few round trips a second, not one per request. See
    /// docs/adr/0005-shared-rate-limits-leases.md.
    pub fn lease_size(&self) -> u32 {
        (self.burst / 10.0).floor().clamp(1.0, 32.0) as u32
    }
}

/// Many buckets of one [`Rate`], one per key, for one kind of request.
/// Every refusal counts in `collab_rate_limited_total{kind}`.
#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// The kind of request this limits (`"ops"`, `"cursors"`, …).
    fn kind(&self) -> &'static str;

    /// Takes one token from `key`'s bucket without waiting for anything:
    /// the check for cursors, which may be dropped. It may refuse a request
    /// while a key's first tokens are on their way from a shared bucket
    /// (the next request finds them).
    fn try_acquire(&self, key: &str) -> bool;

    /// Takes one token from `key`'s bucket, waiting (at most the Redis
    /// timeout) for the shared bucket when no token is at hand: the check
    /// for ops, joins, room creation and HTTP. Nearly always answered
    /// without waiting.
    async fn acquire(&self, key: &str) -> bool;
}
