//! The cluster bus's metrics: the NATS connection and the membership as
//! this process sees them. Only cluster processes (`collab gateway`,
//! `collab room-node`) register them; labels are bounded (a member's role,
//! never its id).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::Members;

/// The `role` label of `collab_cluster_members`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RoleLabel {
    pub role: &'static str,
}

const GATEWAY: RoleLabel = RoleLabel { role: "gateway" };
const ROOM_NODE: RoleLabel = RoleLabel { role: "room_node" };

/// Metrics of one [`NatsBus`](crate::NatsBus). The default is a set that
/// is not exported anywhere.
#[derive(Debug, Clone)]
pub struct BusMetrics {
    /// 1 while connected to NATS.
    pub nats_connected: Gauge,
    /// Connections to NATS made again after one was lost.
    pub nats_reconnects: Counter,
    /// Live members by role (a member with both roles counts in both).
    pub members: Family<RoleLabel, Gauge>,
    /// Times the member list changed.
    pub membership_changes: Counter,
}

impl Default for BusMetrics {
    fn default() -> Self {
        let metrics = BusMetrics {
            nats_connected: Gauge::default(),
            nats_reconnects: Counter::default(),
            members: Family::default(),
            membership_changes: Counter::default(),
        };
        // Every role is there from the start, at 0.
        metrics.record_members(&Members::default());
        metrics
    }
}

impl BusMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = BusMetrics::default();
        let r = registry.sub_registry_with_prefix("collab");
        r.register(
            "nats_connected",
            "1 while this process is connected to NATS, else 0",
            metrics.nats_connected.clone(),
        );
        r.register(
            "nats_reconnects",
            "Times this process connected to NATS again after losing the connection",
            metrics.nats_reconnects.clone(),
        );
        r.register(
            "cluster_members",
            "Live members of the cluster this process sees, by role",
            metrics.members.clone(),
        );
        r.register(
            "cluster_membership_changes",
            "Times this process saw the cluster's member list change",
            metrics.membership_changes.clone(),
        );
        metrics
    }

    /// Sets the member gauges to `members`.
    pub(crate) fn record_members(&self, members: &Members) {
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.members
            .get_or_create(&GATEWAY)
            .set(count(members.gateways().count()));
        self.members
            .get_or_create(&ROOM_NODE)
            .set(count(members.room_nodes().count()));
    }
}

#[cfg(test)]
mod tests {
    use collab_protocol::NodeId;
    use collab_protocol::subjects::{MemberRecord, WIRE_VERSION};

    use super::*;

    fn page(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).expect("encodes");
        text
    }

    #[test]
    fn every_family_is_there_at_zero_from_the_start() {
        let mut registry = Registry::default();
        BusMetrics::register(&mut registry);
        let text = page(&registry);
        for line in [
            "collab_nats_connected 0",
            "collab_nats_reconnects_total 0",
            r#"collab_cluster_members{role="gateway"} 0"#,
            r#"collab_cluster_members{role="room_node"} 0"#,
            "collab_cluster_membership_changes_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }

    #[test]
    fn members_are_counted_by_role() {
        let mut registry = Registry::default();
        let metrics = BusMetrics::register(&mut registry);
        let record = |room_node, gateway| MemberRecord {
            room_node,
            gateway,
            ttl_ms: 1000,
            wire: WIRE_VERSION,
            instance: String::new(),
            rooms: None,
            connections: None,
        };
        let node = |id: &str| NodeId::parse(id).expect("id");
        metrics.record_members(&Members::from_records([
            (node("g1"), record(false, true)),
            (node("r1"), record(true, false)),
            (node("r2"), record(true, false)),
        ]));
        let text = page(&registry);
        assert!(
            text.contains(r#"collab_cluster_members{role="gateway"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"collab_cluster_members{role="room_node"} 2"#),
            "{text}"
        );
    }
}
