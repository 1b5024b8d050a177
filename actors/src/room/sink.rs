//! Where a room's events go. The actor only knows this trait; the room node
//! wires it to the bus.

use collab_protocol::envelope::RoomEvent;

/// Receives every event a room emits, in order. Must not block.
pub trait EventSink: Send + Sync + 'static {
    /// `term` is the emitting actor's ownership term for the room: a later
    /// owner always has a higher one, so subscribers can tell a replaced
    /// owner's events from the current one's.
    fn emit(&self, event: RoomEvent, term: u64);
}
