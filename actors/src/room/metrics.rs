//! The room node's metrics. Labels are bounded: never a room or user id.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// How a room came to this node from the node that wrote it last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takeover {
    /// The previous owner's final snapshot covers the head: it handed the
    /// room off.
    Handoff,
    /// Ops after the latest snapshot had to be replayed: the previous
    /// owner stopped without handing off (killed, frozen, cut off).
    Failover,
}

impl Takeover {
    pub const ALL: [Takeover; 2] = [Takeover::Handoff, Takeover::Failover];

    pub fn as_str(self) -> &'static str {
        match self {
            Takeover::Handoff => "handoff",
            Takeover::Failover => "failover",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TakeoverLabel {
    pub kind: &'static str,
}

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
    /// Rooms this node handed off: placement moved them away, or it drained.
    pub handoffs: Counter,
    /// Rooms this node loaded that another node wrote last, by how.
    pub takeovers: Family<TakeoverLabel, Counter>,
}

impl Default for RoomMetrics {
    fn default() -> Self {
        let metrics = RoomMetrics {
            rooms_active: Gauge::default(),
            commit_latency: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            commits_failed: Counter::default(),
            fenced: Counter::default(),
            snapshots: Counter::default(),
            mailbox_depth: Gauge::default(),
            handoffs: Counter::default(),
            takeovers: Family::default(),
        };
        // Every kind is there from the start, at 0.
        for kind in Takeover::ALL {
            let _ = metrics.takeovers.get_or_create(&TakeoverLabel {
                kind: kind.as_str(),
            });
        }
        metrics
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
        r.register(
            "handoffs",
            "Rooms this node handed off (placement moved them away, or the node drained)",
            metrics.handoffs.clone(),
        );
        r.register(
            "takeovers",
            "Rooms this node loaded that another node wrote last: handoff (its final snapshot \
             covers the head) or failover (ops after the snapshot were replayed)",
            metrics.takeovers.clone(),
        );
        metrics
    }

    pub fn takeover(&self, kind: Takeover) {
        self.takeovers
            .get_or_create(&TakeoverLabel {
                kind: kind.as_str(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_offs_and_every_kind_of_takeover_are_there_at_zero_from_the_start() {
        let mut registry = Registry::default();
        RoomMetrics::register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        for line in [
            "collab_room_handoffs_total 0",
            r#"collab_room_takeovers_total{kind="handoff"} 0"#,
            r#"collab_room_takeovers_total{kind="failover"} 0"#,
            "collab_room_commits_failed_total 0",
            "collab_room_fenced_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }
}
