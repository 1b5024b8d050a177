//! Where a room's events go. The actor only knows this trait; the room node
//! wires it to the bus.

use collab_protocol::envelope::RoomEvent;

/// Receives every event a room emits, in order. Must not block.
pub trait EventSink: Send + Sync + 'static {
    fn emit(&self, event: RoomEvent);
}
