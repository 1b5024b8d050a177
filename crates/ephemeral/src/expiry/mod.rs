//! Room expiry: when each room with a time to live was last used, and
//! which rooms are due for deletion.
//!
//! Whoever uses a room records it ([`RoomExpiry::touch`], with the room's
//! TTL); a sweeper asks which rooms are due ([`RoomExpiry::due`]), has each
//! deleted by its owner through the store, and then forgets it
//! ([`RoomExpiry::forget`], only if nobody touched it meanwhile). Deadlines
//! are milliseconds since the Unix epoch, on the clock of whoever keeps
//! them (Redis's own in a cluster, so gateways whose clocks differ agree).

mod memory;
mod redis;

use std::time::Duration;

use async_trait::async_trait;
use collab_protocol::RoomId;

pub use memory::MemoryRoomExpiry;
pub use redis::RedisRoomExpiry;

use crate::error::EphemeralError;

/// A room whose deadline has passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueRoom {
    pub room: RoomId,
    /// Milliseconds since the Unix epoch.
    pub deadline_ms: u64,
}

#[async_trait]
pub trait RoomExpiry: Send + Sync + 'static {
    /// `room` was used now: it is due `ttl` from now, unless used again.
    /// Returns the new deadline. Meant for a join or a room going idle,
    /// not for every op.
    async fn touch(&self, room: &RoomId, ttl: Duration) -> Result<u64, EphemeralError>;

    /// `room`'s deadline, if it has one.
    async fn deadline(&self, room: &RoomId) -> Result<Option<u64>, EphemeralError>;

    /// Rooms whose deadline has passed, earliest first, at most `limit`.
    async fn due(&self, limit: usize) -> Result<Vec<DueRoom>, EphemeralError>;

    /// Forgets `room` (deleted, or no longer expiring). With
    /// `if_deadline`, only if its deadline is still that one, so a room
    /// touched since it was listed stays. Returns whether it was forgotten.
    async fn forget(&self, room: &RoomId, if_deadline: Option<u64>)
    -> Result<bool, EphemeralError>;
}
