//! The metrics of the shared state. Labels are bounded: a Redis operation
//! from a fixed list, or a rate limit's kind as its caller names it (a
//! handful of constants) — never a key, user or room.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A Redis operation, the `op` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Op {
    Ping,
    RateLimit,
    Revoke,
    RevocationsLoad,
    Subscribe,
    PresenceRenew,
    PresenceQuery,
    ExpiryTouch,
    ExpiryDue,
    ExpiryForget,
}

impl Op {
    const ALL: [Op; 10] = [
        Op::Ping,
        Op::RateLimit,
        Op::Revoke,
        Op::RevocationsLoad,
        Op::Subscribe,
        Op::PresenceRenew,
        Op::PresenceQuery,
        Op::ExpiryTouch,
        Op::ExpiryDue,
        Op::ExpiryForget,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Op::Ping => "ping",
            Op::RateLimit => "rate_limit",
            Op::Revoke => "revoke",
            Op::RevocationsLoad => "revocations_load",
            Op::Subscribe => "subscribe",
            Op::PresenceRenew => "presence_renew",
            Op::PresenceQuery => "presence_query",
            Op::ExpiryTouch => "expiry_touch",
            Op::ExpiryDue => "expiry_due",
            Op::ExpiryForget => "expiry_forget",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OpLabel {
    pub op: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// The label set of a metric that exists only once something creates it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct NoLabels {}

type HistogramFamily = Family<OpLabel, Histogram, fn() -> Histogram>;

/// Cheap to clone: every clone counts into the same metrics.
#[derive(Clone)]
pub struct EphemeralMetrics {
    /// One Redis round trip (a command, a pipeline or a script), by op.
    pub(crate) redis_latency: HistogramFamily,
    pub(crate) redis_errors: Family<OpLabel, Counter>,
    /// 1 while Redis answers, 0 while it does not (and before it first
    /// has). Absent without Redis (`collab serve`), so that an alert on
    /// it does not fire where there is no Redis to reach.
    pub(crate) redis_up: Family<NoLabels, Gauge>,
    pub(crate) redis_outages: Counter,
    /// Requests refused by a rate limit, by kind.
    pub(crate) rate_limited: Family<KindLabel, Counter>,
    /// Rate checks decided by this gateway's own bucket because Redis was
    /// unreachable, by kind.
    pub(crate) rate_limit_fallbacks: Family<KindLabel, Counter>,
    /// Revocations this gateway learnt (its own, the channel's, a resync's).
    pub(crate) revocations_received: Counter,
    /// Revocations in this gateway's copy, not yet expired.
    pub(crate) revocations_known: Gauge,
}

impl Default for EphemeralMetrics {
    /// Metrics that are counted but not registered anywhere (tests).
    fn default() -> Self {
        fn latency() -> Histogram {
            // 50 µs to about 1.6 s.
            Histogram::new(exponential_buckets(0.00005, 2.0, 16))
        }
        let metrics = EphemeralMetrics {
            redis_latency: Family::new_with_constructor(latency),
            redis_errors: Family::default(),
            redis_up: Family::default(),
            redis_outages: Counter::default(),
            rate_limited: Family::default(),
            rate_limit_fallbacks: Family::default(),
            revocations_received: Counter::default(),
            revocations_known: Gauge::default(),
        };
        // Error counters exist at zero from the start, so an alert on their
        // rate sees them before the first error.
        for op in Op::ALL {
            let _ = metrics
                .redis_errors
                .get_or_create(&OpLabel { op: op.as_str() });
        }
        metrics
    }
}

impl EphemeralMetrics {
    /// Creates the metrics and registers them in `registry`: a gateway
    /// whose shared state is in Redis.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = EphemeralMetrics::register_without_redis(registry);
        metrics.register_redis(registry);
        registry.sub_registry_with_prefix("collab").register(
            "rate_limit_fallbacks",
            "Rate checks decided by this gateway's own bucket while Redis was unreachable, by kind",
            metrics.rate_limit_fallbacks.clone(),
        );
        metrics
    }

    /// Creates the metrics and registers in `registry` only those of the
    /// Redis connection (round trips, errors, whether it is up): a process
    /// that uses Redis for room expiry alone (a room node).
    pub fn register_redis_only(registry: &mut Registry) -> Self {
        let metrics = EphemeralMetrics::default();
        metrics.register_redis(registry);
        metrics
    }

    fn register_redis(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("collab");
        r.register(
            "redis_request_duration_seconds",
            "Round trips to Redis (a command, pipeline or script), by operation",
            self.redis_latency.clone(),
        );
        r.register(
            "redis_errors",
            "Redis operations that failed or timed out, by operation",
            self.redis_errors.clone(),
        );
        r.register(
            "redis_up",
            "1 while Redis answers, 0 while it is unreachable",
            self.redis_up.clone(),
        );
        r.register(
            "redis_outages",
            "Times Redis became unreachable",
            self.redis_outages.clone(),
        );
    }

    /// Creates the metrics and registers in `registry` only those that mean
    /// something without Redis (requests refused by kind, revocations):
    /// `collab serve` with its shared state in memory, which has no Redis
    /// to watch, and so no Redis metrics to alert on.
    pub fn register_without_redis(registry: &mut Registry) -> Self {
        let metrics = EphemeralMetrics::default();
        let r = registry.sub_registry_with_prefix("collab");
        r.register(
            "rate_limited",
            "Requests refused by a rate limit, by kind",
            metrics.rate_limited.clone(),
        );
        r.register(
            "revocations_received",
            "Token revocations this gateway learnt",
            metrics.revocations_received.clone(),
        );
        r.register(
            "revocations_known",
            "Token revocations in this gateway's copy, not yet expired",
            metrics.revocations_known.clone(),
        );
        metrics
    }

    /// Requests of `kind` refused so far.
    pub fn rate_limited_for(&self, kind: &'static str) -> u64 {
        self.rate_limited.get_or_create(&KindLabel { kind }).get()
    }

    /// Checks of `kind` decided by the local bucket so far.
    pub fn rate_limit_fallbacks_for(&self, kind: &'static str) -> u64 {
        self.rate_limit_fallbacks
            .get_or_create(&KindLabel { kind })
            .get()
    }

    pub(crate) fn set_redis_up(&self, up: bool) {
        self.redis_up.get_or_create(&NoLabels {}).set(i64::from(up));
    }

    /// Makes a kind's counters exist at zero.
    pub(crate) fn declare_kind(&self, kind: &'static str) {
        let _ = self.rate_limited.get_or_create(&KindLabel { kind });
        let _ = self.rate_limit_fallbacks.get_or_create(&KindLabel { kind });
    }

    pub(crate) fn limited(&self, kind: &'static str) {
        self.rate_limited.get_or_create(&KindLabel { kind }).inc();
    }

    pub(crate) fn fallback(&self, kind: &'static str) {
        self.rate_limit_fallbacks
            .get_or_create(&KindLabel { kind })
            .inc();
    }
}
