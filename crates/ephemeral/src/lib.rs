//! The state the gateways of a cluster share.
//!
//! A gateway keeps no durable state, but four things mean something only if
//! every gateway of a cluster sees the same:
//! - **rate limits** ([`RateLimiter`]): a user spread over four gateways
//!   gets one budget, not four;
//! - **revoked tokens** ([`Revocations`]): a token revoked through one
//!   gateway is refused by all of them, and their sockets closed;
//! - **who is online** ([`Presence`]): which users are connected, to which
//!   gateways and rooms;
//! - **room expiry** ([`RoomExpiry`]): when each room was last used, and
//!   which rooms are due for deletion.
//!
//! Each concern is one trait with two implementations: in memory, for
//! `collab serve` (one process, no dependency) and unit tests, and in
//! Redis, for a cluster. [`Ephemeral`] builds the whole set for either, and
//! every implementation passes the same behaviour suite (the `testsuite`
//! feature, which also runs a real `redis-server` for tests).
//!
//! What the gateway calls on its hot paths never waits for Redis: a rate
//! check spends tokens that the gateway took from the shared bucket ahead
//! of time, in small leases (docs/adr/0005-shared-rate-limits-leases.md);
//! a revocation check reads a local copy that the Redis channel keeps
//! current; presence is counted locally and written in the background.
//!
//! Redis is never needed to serve. While it is unreachable (logged once per
//! outage, `collab_redis_up` at 0):
//! - rate limits fall back to each gateway's own buckets, of the same rates;
//! - revocations already known are still refused; new ones reach the other
//!   gateways once Redis is back (each gateway writes what it knows back);
//! - presence goes stale, for at most its TTL;
//! - room expiry answers errors: nothing is deleted while it cannot be read.
//!
//! Everything here must be created inside a tokio runtime: the Redis
//! implementations run background tasks, stopped when they are dropped.

mod client;
mod error;
mod expiry;
mod metrics;
mod presence;
mod ratelimit;
mod revocation;
mod task;
#[cfg(feature = "testsuite")]
pub mod testsuite;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use client::{RedisClient, RedisOptions};
pub use error::EphemeralError;
pub use expiry::{DueRoom, MemoryRoomExpiry, RedisRoomExpiry, RoomExpiry};
pub use metrics::EphemeralMetrics;
pub use presence::{ConnectionsOf, MemoryPresence, Presence, RedisPresence, UserPresence};
pub use ratelimit::{MemoryRateLimiter, Rate, RateLimiter, RedisRateLimiter};
pub use revocation::{MemoryRevocations, RedisRevocations, Revocation, Revocations, TokenRef};

/// What the shared state needs to know about the gateway that holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct EphemeralOptions {
    /// This gateway's id (its cluster node id): names its entries in the
    /// presence records.
    pub gateway_id: String,
    /// How long a gateway's presence record lives without being renewed:
    /// a killed gateway's users disappear from presence after this long.
    /// Renewed every third of it.
    pub presence_ttl: Duration,
    /// The longest lifetime of a token this cluster accepts: a revocation
    /// of every token of a user issued before a time is kept this long.
    pub max_token_lifetime: Duration,
}

impl EphemeralOptions {
    pub fn new(gateway_id: impl Into<String>) -> Self {
        EphemeralOptions {
            gateway_id: gateway_id.into(),
            presence_ttl: Duration::from_secs(15),
            max_token_lifetime: Duration::from_secs(24 * 3600),
        }
    }
}

/// The shared state of one gateway: one implementation of each concern,
/// all in memory or all in Redis. Cheap to clone.
#[derive(Clone)]
pub struct Ephemeral {
    redis: Option<RedisClient>,
    metrics: EphemeralMetrics,
    pub revocations: Arc<dyn Revocations>,
    pub presence: Arc<dyn Presence>,
    pub expiry: Arc<dyn RoomExpiry>,
}

impl Ephemeral {
    /// Everything in this process: `collab serve`, and tests.
    pub fn in_memory(options: &EphemeralOptions, metrics: EphemeralMetrics) -> Ephemeral {
        Ephemeral {
            redis: None,
            revocations: Arc::new(MemoryRevocations::new(
                options.max_token_lifetime,
                metrics.clone(),
            )),
            presence: Arc::new(MemoryPresence::new(&options.gateway_id)),
            expiry: Arc::new(MemoryRoomExpiry::new()),
            metrics,
        }
    }

    /// Everything in the Redis that `client` talks to: a cluster.
    pub fn redis(client: RedisClient, options: &EphemeralOptions) -> Ephemeral {
        Ephemeral {
            revocations: Arc::new(RedisRevocations::new(
                client.clone(),
                options.max_token_lifetime,
            )),
            presence: Arc::new(RedisPresence::new(
                client.clone(),
                &options.gateway_id,
                options.presence_ttl,
            )),
            expiry: Arc::new(RedisRoomExpiry::new(client.clone())),
            metrics: client.metrics().clone(),
            redis: Some(client),
        }
    }

    /// The limiter of one kind of request (`"ops"`, `"cursors"`, … — the
    /// `kind` label of `collab_rate_limited_total`): its buckets, one per
    /// key, are shared by every gateway on the same Redis.
    pub fn rate_limiter(&self, kind: &'static str, rate: Rate) -> Arc<dyn RateLimiter> {
        match &self.redis {
            Some(client) => Arc::new(RedisRateLimiter::new(client.clone(), kind, rate)),
            None => Arc::new(MemoryRateLimiter::new(kind, rate, self.metrics.clone())),
        }
    }

    /// The Redis client, in a cluster.
    pub fn redis_client(&self) -> Option<&RedisClient> {
        self.redis.as_ref()
    }
}

/// Seconds since the Unix epoch (the unit of JWT times).
pub fn unix_now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch.
fn unix_now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Locks `mutex`, carrying on with the data of a holder that panicked: the
/// maps kept here stay consistent at every await-free step.
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
