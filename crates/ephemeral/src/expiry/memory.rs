//! Room expiry in one process.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use collab_protocol::RoomId;

use super::{DueRoom, RoomExpiry};
use crate::error::EphemeralError;
use crate::{lock, unix_now_millis};

#[derive(Default)]
pub struct MemoryRoomExpiry {
    inner: Mutex<Deadlines>,
}

#[derive(Default)]
struct Deadlines {
    by_room: HashMap<RoomId, u64>,
    /// (deadline, room), earliest first.
    by_time: BTreeSet<(u64, RoomId)>,
}

impl MemoryRoomExpiry {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Deadlines {
    fn remove(&mut self, room: &RoomId) -> Option<u64> {
        let deadline = self.by_room.remove(room)?;
        self.by_time.remove(&(deadline, room.clone()));
        Some(deadline)
    }
}

#[async_trait]
impl RoomExpiry for MemoryRoomExpiry {
    async fn touch(&self, room: &RoomId, ttl: Duration) -> Result<u64, EphemeralError> {
        let deadline = unix_now_millis().saturating_add(ttl.as_millis() as u64);
        let mut deadlines = lock(&self.inner);
        deadlines.remove(room);
        deadlines.by_room.insert(room.clone(), deadline);
        deadlines.by_time.insert((deadline, room.clone()));
        Ok(deadline)
    }

    async fn deadline(&self, room: &RoomId) -> Result<Option<u64>, EphemeralError> {
        Ok(lock(&self.inner).by_room.get(room).copied())
    }

    async fn due(&self, limit: usize) -> Result<Vec<DueRoom>, EphemeralError> {
        let now = unix_now_millis();
        let deadlines = lock(&self.inner);
        Ok(deadlines
            .by_time
            .iter()
            .take_while(|(deadline, _)| *deadline <= now)
            .take(limit)
            .map(|(deadline, room)| DueRoom {
                room: room.clone(),
                deadline_ms: *deadline,
            })
            .collect())
    }

    async fn forget(
        &self,
        room: &RoomId,
        if_deadline: Option<u64>,
    ) -> Result<bool, EphemeralError> {
        let mut deadlines = lock(&self.inner);
        match (deadlines.by_room.get(room), if_deadline) {
            (None, _) => Ok(false),
            (Some(current), Some(expected)) if *current != expected => Ok(false),
            _ => Ok(deadlines.remove(room).is_some()),
        }
    }
}
