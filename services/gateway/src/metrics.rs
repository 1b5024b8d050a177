//! The gateway's metrics. Labels are bounded: op kinds and error codes,
//! never a room or user id.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: String,
}

#[derive(Clone)]
pub struct GatewayMetrics {
    pub connections: Gauge,
    pub joins: Counter,
    pub ops: Family<KindLabel, Counter>,
    pub errors: Family<CodeLabel, Counter>,
    /// From an op arriving at the gateway to its ack leaving it: routing
    /// plus the room's durable commit.
    pub ack_latency: Histogram,
    pub slow_closes: Counter,
    pub gaps_fetched: Counter,
}

impl GatewayMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = GatewayMetrics {
            connections: Gauge::default(),
            joins: Counter::default(),
            ops: Family::default(),
            errors: Family::default(),
            ack_latency: Histogram::new(exponential_buckets(0.0002, 2.0, 16)),
            slow_closes: Counter::default(),
            gaps_fetched: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("collab_gateway");
        r.register(
            "connections",
            "Open WebSocket connections",
            metrics.connections.clone(),
        );
        r.register("joins", "Room joins answered", metrics.joins.clone());
        r.register("ops", "Ops received, by kind", metrics.ops.clone());
        r.register(
            "errors",
            "Error frames and responses sent, by code",
            metrics.errors.clone(),
        );
        r.register(
            "ack_latency_seconds",
            "Time from an op's arrival to its ack, including the durable commit",
            metrics.ack_latency.clone(),
        );
        r.register(
            "slow_closes",
            "Connections closed with 4008 because they did not read",
            metrics.slow_closes.clone(),
        );
        r.register(
            "gaps_fetched",
            "Times a room stream had a gap that was filled from the owner",
            metrics.gaps_fetched.clone(),
        );
        metrics
    }

    pub fn error(&self, code: collab_protocol::ErrorCode) {
        self.errors
            .get_or_create(&CodeLabel {
                code: code.as_str().to_owned(),
            })
            .inc();
    }

    pub fn op(&self, kind: collab_protocol::OpKind) {
        self.ops
            .get_or_create(&KindLabel {
                kind: kind.as_str().to_owned(),
            })
            .inc();
    }
}
