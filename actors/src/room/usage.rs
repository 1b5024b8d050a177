//! What the room actors tell about their rooms' use, for room expiry, and
//! how an expiry ends. The actors know nothing of where deadlines are
//! kept: the room node wires [`RoomUse`] to its `RoomExpiry`.

use std::time::Duration;

use collab_protocol::RoomId;

/// Hears when rooms stop being used, and when they are deleted. Must not
/// block (spawn whatever I/O it needs).
pub trait RoomUse: Send + Sync + 'static {
    /// `room`, which expires after `ttl` unused, stopped being used here:
    /// its actor stopped (idle, handed off, or its node drained). While a
    /// room's actor runs, the room is in use.
    fn stopped(&self, room: &RoomId, ttl: Duration);
    /// `room` was deleted.
    fn deleted(&self, room: &RoomId);
}

/// Tells nobody: a node without room expiry.
pub struct Unobserved;

impl RoomUse for Unobserved {
    fn stopped(&self, _room: &RoomId, _ttl: Duration) {}
    fn deleted(&self, _room: &RoomId) {}
}

/// How a room's expiry ended (see `SupervisorMsg::Expire`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expiry {
    /// The room and its history are gone.
    Deleted,
    /// The room is live on this node (or stopping, and about to be
    /// recorded as unused again): in use, not deleted.
    InUse,
    /// There is no such room (any more).
    NoSuchRoom,
    /// The room has no time to live (it was created again without one).
    NoTtl,
    /// This node does not own the room (any more).
    NotOwner,
    /// The deletion did not happen or its outcome is unknown; try again.
    Failed(String),
}
