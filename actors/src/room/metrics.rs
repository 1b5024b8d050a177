//! The room node's metrics. Labels are bounded: never a room or user id.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone)]
pub struct RoomMetrics {
    /// Room actors alive on this node.
    pub rooms_active: Gauge,
    /// Time for the store to make one batch durable.
    pub commit_latency: Histogram,
    /// Ops per committed batch.
    pub batch_size: Histogram,
    pub commits_failed: Counter,
    pub fenced: Counter,
    pub snapshots: Counter,
    /// Requests waiting in room mailboxes, summed over the node's rooms.
    pub mailbox_depth: Gauge,
}

impl Default for RoomMetrics {
    fn default() -> Self {
        RoomMetrics {
            rooms_active: Gauge::default(),
            commit_latency: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            commits_failed: Counter::default(),
            fenced: Counter::default(),
            snapshots: Counter::default(),
            mailbox_depth: Gauge::default(),
        }
    }
}

impl RoomMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = RoomMetrics::default();
        let r = registry.sub_registry_with_prefix("collab_room");
        r.register(
            "rooms_active",
            "Room actors alive on this node",
            metrics.rooms_active.clone(),
        );
        r.register(
            "commit_latency_seconds",
            "Time for the store to make one batch of ops durable",
            metrics.commit_latency.clone(),
        );
        r.register(
            "batch_ops",
            "Ops per committed batch",
            metrics.batch_size.clone(),
        );
        r.register(
            "commits_failed",
            "Batches the store failed or timed out on",
            metrics.commits_failed.clone(),
        );
        r.register(
            "fenced",
            "Room actors stopped because another owner wrote their room",
            metrics.fenced.clone(),
        );
        r.register("snapshots", "Snapshots written", metrics.snapshots.clone());
        r.register(
            "mailbox_depth",
            "Requests waiting in room actor mailboxes",
            metrics.mailbox_depth.clone(),
        );
        metrics
    }
}
