//! Webhooks on a room node: the node dispatches the events of the rooms it
//! owns (see the `collab-webhooks` crate). Its actors write through the
//! dispatcher's marking store, and their events go to the dispatcher too
//! (for presence) besides the bus.
//!
//! The owner dispatches because it is the one process that commits the
//! room's ops: it hears of each commit without a round trip, and placement
//! already makes exactly one node the owner, moving rooms when nodes come
//! and go. In `collab serve` the one node owns every room.

use std::sync::Arc;

use collab_actors::room::EventSink;
use collab_bus::Members;
use collab_protocol::envelope::RoomEvent;
use collab_protocol::{NodeId, RoomId};
use collab_webhooks::{Dispatcher, Placement};
use tokio::sync::watch;

/// Placement as the cluster's member list says.
pub(crate) struct MembersPlacement {
    pub(crate) members: watch::Receiver<Members>,
    pub(crate) node: NodeId,
}

impl Placement for MembersPlacement {
    fn owns(&self, room: &RoomId) -> bool {
        self.members.borrow().owner(room) == Some(&self.node)
    }

    fn other_node_alive(&self, node: &str) -> bool {
        node != self.node.as_str()
            && self
                .members
                .borrow()
                .room_nodes()
                .any(|member| member.as_str() == node)
    }
}

/// Hands every event to the bus, and to the dispatcher.
pub(crate) struct WebhookSink {
    pub(crate) bus: Arc<dyn EventSink>,
    pub(crate) dispatcher: Arc<Dispatcher>,
}

impl EventSink for WebhookSink {
    fn emit(&self, event: RoomEvent, term: u64) {
        self.dispatcher.room_event(&event);
        self.bus.emit(event, term);
    }
}
