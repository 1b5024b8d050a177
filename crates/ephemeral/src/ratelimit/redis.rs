//! Buckets in Redis, shared by every gateway, spent locally in leases.
//!
//! A check never waits for Redis when the gateway holds tokens for its key:
//! it takes one from the key's lease, under a mutex, in well under a
//! microsecond. When a lease runs low (below half), one background worker
//! tops it up — every key that needs tokens goes in the same script call,
//! so a busy gateway makes one round trip per batch of keys, not per key.
//! The shared bucket only ever hands out the tokens it has; what a gateway
//! can let through beyond the bucket is the lease it took before the
//! window, at most [`Rate::lease_size`] tokens. The measurements behind
//! this are in docs/adr/0005-shared-rate-limits-leases.md.
//!
//! A key seen for the first time has no tokens yet: `acquire` waits for
//! them (one round trip), `try_acquire` lets the request through on credit
//! — at most one token per key owed at a time, paid back from the tokens
//! that arrive — so the first cursor of a user is not dropped.
//!
//! While Redis is unreachable every check is decided by a local bucket of
//! the same rate ([`MemoryRateLimiter`]) and counted in
//! `collab_rate_limit_fallbacks_total`; the shared buckets take over again
//! as soon as Redis answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::Script;
use tokio::sync::{Semaphore, mpsc, watch};

use super::gcra::Gcra;
use super::memory::MemoryRateLimiter;
use super::{Rate, RateLimiter};
use crate::client::RedisClient;
use crate::lock;
use crate::metrics::Op;
use crate::task::TaskGuard;

/// The most keys topped up in one script call.
const MAX_BATCH: usize = 256;
/// The most script calls on their way at once.
const MAX_IN_FLIGHT: usize = 4;
/// A key unused this long is forgotten, with the tokens of its lease.
const FORGET_AFTER: Duration = Duration::from_secs(60);
/// Leases kept before the unused ones are swept out.
const SWEEP_ABOVE: usize = 4096;

pub struct RedisRateLimiter {
    shared: Arc<Shared>,
    _worker: TaskGuard,
}

struct Shared {
    kind: &'static str,
    gcra: Gcra,
    lease_size: u32,
    client: RedisClient,
    /// `{prefix}rate:{kind}:`, before each key.
    key_prefix: String,
    leases: Mutex<Leases>,
    /// Keys whose lease needs topping up, to the worker.
    refills: mpsc::UnboundedSender<String>,
    /// Bumped after each batch, for `acquire`s waiting for their tokens.
    refilled: watch::Sender<u64>,
    fallback: MemoryRateLimiter,
}

struct Leases {
    map: HashMap<String, Lease>,
    sweep_above: usize,
}

/// One key's tokens on this gateway.
struct Lease {
    /// Taken from the shared bucket, not spent yet.
    tokens: u32,
    /// Let through on credit before any token was at hand (at most 1).
    debt: u32,
    /// A top-up is queued or in flight.
    refilling: bool,
    /// The shared bucket had nothing more to give until then.
    empty_until: Option<Instant>,
    used: Instant,
}

impl Lease {
    fn new(now: Instant) -> Lease {
        Lease {
            tokens: 0,
            debt: 0,
            refilling: false,
            empty_until: None,
            used: now,
        }
    }

    fn is_empty(&self, now: Instant) -> bool {
        self.empty_until.is_some_and(|until| now < until)
    }
}

impl RedisRateLimiter {
    pub fn new(client: RedisClient, kind: &'static str, rate: Rate) -> Self {
        let metrics = client.metrics().clone();
        let (refills, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            kind,
            gcra: Gcra::new(rate),
            lease_size: rate.lease_size(),
            key_prefix: client.key(&format!("rate:{kind}:")),
            client,
            leases: Mutex::new(Leases {
                map: HashMap::new(),
                sweep_above: SWEEP_ABOVE,
            }),
            refills,
            refilled: watch::channel(0).0,
            fallback: MemoryRateLimiter::new(kind, rate, metrics),
        });
        let worker = TaskGuard::spawn(refill_worker(shared.clone(), rx));
        RedisRateLimiter {
            shared,
            _worker: worker,
        }
    }

    /// Tokens this gateway holds for `key` (tests).
    #[doc(hidden)]
    pub fn lease_tokens(&self, key: &str) -> u32 {
        lock(&self.shared.leases)
            .map
            .get(key)
            .map_or(0, |lease| lease.tokens)
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    fn kind(&self) -> &'static str {
        self.shared.kind
    }

    fn try_acquire(&self, key: &str) -> bool {
        let shared = &*self.shared;
        if !shared.client.is_up() {
            return shared.fall_back(key);
        }
        let now = Instant::now();
        let mut leases = lock(&shared.leases);
        let lease = leases.get(key, now);
        match shared.take(key, lease, now, false) {
            Some(allowed) => allowed,
            None => {
                // Credit only when no top-up is on its way: the first use
                // of a key, or the first after its bucket had refilled.
                let credit = lease.debt == 0 && !lease.refilling;
                shared.start_refill(key, lease, now);
                if credit {
                    lease.debt = 1;
                } else {
                    shared.client.metrics().limited(shared.kind);
                }
                credit
            }
        }
    }

    async fn acquire(&self, key: &str) -> bool {
        let shared = &*self.shared;
        let mut refilled = shared.refilled.subscribe();
        // A top-up answers within the Redis timeout (or fails, and then
        // Redis is down); the margin covers a batch queued behind another.
        let deadline = tokio::time::Instant::now() + shared.client.options().timeout * 3;
        loop {
            if !shared.client.is_up() {
                return shared.fall_back(key);
            }
            {
                let now = Instant::now();
                let mut leases = lock(&shared.leases);
                let lease = leases.get(key, now);
                if let Some(allowed) = shared.take(key, lease, now, true) {
                    return allowed;
                }
                shared.start_refill(key, lease, now);
            }
            if tokio::time::timeout_at(deadline, refilled.changed())
                .await
                .is_err()
            {
                return shared.fall_back(key);
            }
        }
    }
}

// === impl Shared ===

impl Shared {
    /// Spends a token of the lease (`Some(true)`), or refuses because the
    /// shared bucket is empty (`Some(false)`); `None` when the lease is out
    /// of tokens and the bucket may have more. `can_wait`: the caller can
    /// wait for a round trip when the lease is out.
    fn take(&self, key: &str, lease: &mut Lease, now: Instant, can_wait: bool) -> Option<bool> {
        lease.used = now;
        if lease.tokens > 0 {
            lease.tokens -= 1;
            // Below half a lease, top it up before it runs out. A lease of
            // one is topped up ahead only for callers that cannot wait: a
            // limit that small is for rare requests, which may wait for
            // their round trip rather than keep a token from the other
            // gateways.
            let ahead = self.lease_size > 1 || !can_wait;
            if ahead && lease.tokens * 2 < self.lease_size {
                self.start_refill(key, lease, now);
            }
            return Some(true);
        }
        if lease.is_empty(now) {
            self.client.metrics().limited(self.kind);
            return Some(false);
        }
        None
    }

    fn start_refill(&self, key: &str, lease: &mut Lease, now: Instant) {
        if lease.refilling || lease.is_empty(now) {
            return;
        }
        lease.refilling = true;
        // The worker lives as long as `self`: sending cannot fail.
        let _ = self.refills.send(key.to_owned());
    }

    /// The local bucket decides, while the shared one cannot.
    fn fall_back(&self, key: &str) -> bool {
        self.client.metrics().fallback(self.kind);
        self.fallback.take(key)
    }

    /// Tops up the leases of `keys` in one script call.
    async fn refill(&self, script: &Script, keys: &[String]) {
        let wants: Vec<(&String, u32)> = {
            let leases = lock(&self.leases);
            keys.iter()
                .filter_map(|key| {
                    let lease = leases.map.get(key)?;
                    let want = self.lease_size.saturating_sub(lease.tokens) + lease.debt;
                    Some((key, want.max(1)))
                })
                .collect()
        };
        let result = if wants.is_empty() {
            Ok(Vec::new())
        } else {
            let mut invocation = script.prepare_invoke();
            invocation
                .arg(self.gcra.interval_us)
                .arg(self.gcra.tolerance_us);
            for (key, want) in &wants {
                invocation
                    .key(format!("{}{key}", self.key_prefix))
                    .arg(*want);
            }
            self.client
                .call(Op::RateLimit, |mut c| async move {
                    invocation.invoke_async::<Vec<(u64, u64)>>(&mut c).await
                })
                .await
        };
        let now = Instant::now();
        let mut leases = lock(&self.leases);
        // On an error Redis is down now (or answered an error): the callers
        // fall back, and the next check after it is back asks again.
        let takes = result.unwrap_or_default();
        for ((key, want), (granted, wait_us)) in wants.iter().zip(takes) {
            let Some(lease) = leases.map.get_mut(*key) else {
                continue;
            };
            let granted = u32::try_from(granted).unwrap_or(u32::MAX);
            let repaid = granted.min(lease.debt);
            lease.debt -= repaid;
            lease.tokens += granted - repaid;
            lease.empty_until = (granted < *want).then(|| now + Duration::from_micros(wait_us));
        }
        for key in keys {
            if let Some(lease) = leases.map.get_mut(key) {
                lease.refilling = false;
            }
        }
        drop(leases);
        self.refilled.send_modify(|n| *n += 1);
    }
}

impl Leases {
    fn get(&mut self, key: &str, now: Instant) -> &mut Lease {
        if !self.map.contains_key(key) {
            if self.map.len() >= self.sweep_above {
                self.map
                    .retain(|_, l| l.refilling || now.duration_since(l.used) < FORGET_AFTER);
                self.sweep_above = (self.map.len() * 2).max(SWEEP_ABOVE);
            }
            self.map.insert(key.to_owned(), Lease::new(now));
        }
        self.map.get_mut(key).expect("inserted above")
    }
}

/// Tops up leases in batches: whatever queued up while the batches in
/// flight were on their way goes in the next script call. A few batches
/// travel at once, so a round trip's latency does not cap the rate of
/// top-ups; Redis runs them one after the other anyway.
async fn refill_worker(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<String>) {
    let script = Arc::new(Script::new(include_str!("gcra.lua")));
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(key) = rx.recv().await {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut batch = Vec::with_capacity(MAX_BATCH);
        batch.push(key);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(key) => batch.push(key),
                Err(_) => break,
            }
        }
        let (shared, script) = (shared.clone(), script.clone());
        tokio::spawn(async move {
            shared.refill(&script, &batch).await;
            drop(permit);
        });
    }
}
