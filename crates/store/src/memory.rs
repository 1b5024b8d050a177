//! [`MemoryStore`]: the [`Store`] kept in process memory, for unit tests of
//! the crates above the store. It has the exact semantics of the durable
//! implementations (fencing conflicts, batch checks, history order, the
//! "older snapshot is ignored" rule) and passes the same conformance suite,
//! so a test written against it means the same thing against redb or CQL.
//! Nothing survives the process. A deletion is one step under the lock,
//! like the embedded store's one transaction.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use collab_protocol::{OpEvent, OpKind, RoomId, Seq, UserId};

use crate::{
    Deletion, LoggedOp, RoomCatalog, RoomRecord, RoomsPage, Snapshot, Store, StoreError,
    StoreReader, StoreResult, WebhookLog, Writer, check_batch,
};

/// An in-memory [`Store`]. Cheap to create; share it behind an `Arc`.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    rooms: BTreeMap<RoomId, RoomRecord>,
    /// user → the rooms listed by `rooms_of_user` (a `BTreeSet` so the
    /// listing comes out ordered by id, as the trait promises).
    rooms_by_user: HashMap<UserId, BTreeSet<RoomId>>,
    logs: HashMap<RoomId, BTreeMap<Seq, Entry>>,
    snapshots: HashMap<RoomId, Snapshot>,
    /// id → the tombstone of the last room deleted under it: the floor of
    /// the next room created with that id.
    deleted: HashMap<RoomId, Seq>,
    /// (room, endpoint) → the endpoint's webhook cursor in the room.
    webhook_cursors: BTreeMap<(RoomId, String), Seq>,
    /// (room, mark id): the webhook marks (see `WebhookLog`).
    webhook_marks: BTreeSet<(RoomId, String)>,
}

/// One seq of a room's log.
#[derive(Debug, Clone)]
enum Entry {
    Op(LoggedOp),
    /// The end of a deleted room (see `Store::delete_room`).
    Tombstone,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every mutation below is validated before it changes anything, so
        // a panic elsewhere while the lock was held cannot have left a
        // half-applied write behind: recovering the guard is safe.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl StoreReader for MemoryStore {
    async fn room(&self, id: &RoomId) -> StoreResult<Option<RoomRecord>> {
        Ok(self.lock().rooms.get(id).cloned())
    }

    async fn rooms_of_user(&self, user: &UserId) -> StoreResult<Vec<RoomRecord>> {
        let inner = self.lock();
        let Some(ids) = inner.rooms_by_user.get(user) else {
            return Ok(Vec::new());
        };
        Ok(ids
            .iter()
            .filter_map(|id| inner.rooms.get(id).cloned())
            .collect())
    }

    async fn rooms_of_user_page(
        &self,
        user: &UserId,
        page: &RoomsPage,
    ) -> StoreResult<Vec<RoomRecord>> {
        let inner = self.lock();
        let Some(ids) = inner.rooms_by_user.get(user) else {
            return Ok(Vec::new());
        };
        let start = match &page.after {
            Some(after) => std::ops::Bound::Excluded(after.clone()),
            None => std::ops::Bound::Unbounded,
        };
        Ok(ids
            .range((start, std::ops::Bound::Unbounded))
            .filter_map(|id| inner.rooms.get(id))
            .filter(|record| page.wants(record))
            .take(page.limit)
            .cloned()
            .collect())
    }

    async fn head(&self, room: &RoomId) -> StoreResult<Seq> {
        Ok(self
            .lock()
            .logs
            .get(room)
            .and_then(|log| log.keys().next_back().copied())
            .unwrap_or(Seq::ZERO))
    }

    async fn read_log(
        &self,
        room: &RoomId,
        after: Seq,
        limit: usize,
    ) -> StoreResult<Vec<LoggedOp>> {
        let inner = self.lock();
        let Some(log) = inner.logs.get(room) else {
            return Ok(Vec::new());
        };
        log.range(after.next()..)
            .take(limit)
            .map(|(seq, entry)| match entry {
                Entry::Op(logged) => Ok(logged.clone()),
                Entry::Tombstone => Err(StoreError::RoomDeleted(*seq)),
            })
            .collect()
    }

    async fn history(
        &self,
        room: &RoomId,
        before: Seq,
        limit: usize,
        kinds: Option<&[OpKind]>,
    ) -> StoreResult<Vec<OpEvent>> {
        let inner = self.lock();
        let Some(log) = inner.logs.get(room) else {
            return Ok(Vec::new());
        };
        // Nothing below a tombstone belongs to the room that follows it.
        Ok(log
            .range(..before)
            .rev()
            .map_while(|(_, entry)| match entry {
                Entry::Op(logged) => Some(&logged.event),
                Entry::Tombstone => None,
            })
            .filter(|event| kinds.is_none_or(|kinds| kinds.contains(&event.op.kind())))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn latest_snapshot(&self, room: &RoomId) -> StoreResult<Option<Snapshot>> {
        Ok(self.lock().snapshots.get(room).cloned())
    }
}

#[async_trait]
impl RoomCatalog for MemoryStore {
    async fn create_room(&self, room: &RoomRecord) -> StoreResult<()> {
        let mut inner = self.lock();
        if inner.rooms.contains_key(&room.id) {
            return Err(StoreError::Conflict(format!("room {} exists", room.id)));
        }
        for user in members_to_index(room) {
            inner
                .rooms_by_user
                .entry(user.clone())
                .or_default()
                .insert(room.id.clone());
        }
        let mut record = room.clone();
        record.floor = inner.deleted.get(&room.id).copied().unwrap_or(Seq::ZERO);
        inner.rooms.insert(room.id.clone(), record);
        Ok(())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn delete_room(&self, room: &RoomId, deletion: &Deletion) -> StoreResult<()> {
        let at = deletion.at;
        if at == Seq::ZERO {
            return Err(StoreError::InvalidBatch("seqs start at 1".into()));
        }
        let mut inner = self.lock();
        let tombstoned = match inner.logs.get(room).and_then(|log| log.get(&at)) {
            Some(Entry::Op(_)) => {
                return Err(StoreError::Conflict(format!(
                    "room {room}: seq {at} exists"
                )));
            }
            Some(Entry::Tombstone) => true,
            None => false,
        };
        let ours = inner
            .rooms
            .get(room)
            .is_some_and(|record| record.epoch == deletion.epoch);
        if !ours && !tombstoned {
            return Err(StoreError::NotFound(format!(
                "no room {room} with epoch {}",
                deletion.epoch
            )));
        }
        let log = inner.logs.entry(room.clone()).or_default();
        log.insert(at, Entry::Tombstone);
        // Everything below the tombstone goes; a later room's log is above.
        *log = log.split_off(&at);
        if inner.snapshots.get(room).is_some_and(|s| s.seq < at) {
            inner.snapshots.remove(room);
        }
        if ours && let Some(record) = inner.rooms.remove(room) {
            for user in members_to_index(&record) {
                if let Some(rooms) = inner.rooms_by_user.get_mut(user) {
                    rooms.remove(room);
                }
            }
        }
        let floor = inner.deleted.entry(room.clone()).or_insert(at);
        *floor = (*floor).max(at);
        Ok(())
    }

    async fn update_room(&self, room: &RoomRecord) -> StoreResult<()> {
        let mut inner = self.lock();
        let Some(stored) = inner
            .rooms
            .get(&room.id)
            .filter(|stored| stored.epoch == room.epoch)
        else {
            return Err(StoreError::NotFound(format!(
                "no room {} with epoch {}",
                room.id, room.epoch
            )));
        };
        let updated = updated_record(stored, room)?;
        let old: Vec<UserId> = members_to_index(stored).cloned().collect();
        for user in &old {
            if let Some(rooms) = inner.rooms_by_user.get_mut(user) {
                rooms.remove(&room.id);
            }
        }
        for user in members_to_index(&updated) {
            inner
                .rooms_by_user
                .entry(user.clone())
                .or_default()
                .insert(room.id.clone());
        }
        inner.rooms.insert(room.id.clone(), updated);
        Ok(())
    }

    async fn append(
        &self,
        room: &RoomId,
        first: Seq,
        batch: &[OpEvent],
        writer: &Writer,
    ) -> StoreResult<()> {
        check_batch(room, first, batch)?;
        let mut inner = self.lock();
        let log = inner.logs.entry(room.clone()).or_default();
        let last = Seq(first.get() + batch.len() as u64 - 1);
        // Check the whole batch before inserting anything: a loser of a
        // fencing race must write nothing.
        if let Some((seq, _)) = log.range(first..=last).next() {
            return Err(StoreError::Conflict(format!(
                "room {room}: seq {seq} exists"
            )));
        }
        for event in batch {
            log.insert(
                event.seq,
                Entry::Op(LoggedOp {
                    event: event.clone(),
                    writer: writer.clone(),
                }),
            );
        }
        Ok(())
    }

    async fn put_snapshot(&self, room: &RoomId, snapshot: &Snapshot) -> StoreResult<()> {
        let mut inner = self.lock();
        match inner.snapshots.get(room) {
            Some(stored) if stored.seq > snapshot.seq => {
                tracing::debug!(%room, stored = %stored.seq, offered = %snapshot.seq, "older snapshot ignored");
            }
            _ => {
                inner.snapshots.insert(room.clone(), snapshot.clone());
            }
        }
        Ok(())
    }

    fn webhook_log(self: Arc<Self>) -> Option<Arc<dyn WebhookLog>> {
        Some(self)
    }
}

#[async_trait]
impl WebhookLog for MemoryStore {
    async fn webhook_cursors(&self, room: &RoomId) -> StoreResult<Vec<(String, Seq)>> {
        Ok(self
            .lock()
            .webhook_cursors
            .iter()
            .filter(|((r, _), _)| r == room)
            .map(|((_, endpoint), seq)| (endpoint.clone(), *seq))
            .collect())
    }

    async fn set_webhook_cursor(&self, endpoint: &str, room: &RoomId, seq: Seq) -> StoreResult<()> {
        self.lock()
            .webhook_cursors
            .insert((room.clone(), endpoint.to_owned()), seq);
        Ok(())
    }

    async fn add_webhook_mark(&self, room: &RoomId, mark: &str) -> StoreResult<()> {
        self.lock()
            .webhook_marks
            .insert((room.clone(), mark.to_owned()));
        Ok(())
    }

    async fn remove_webhook_mark(&self, room: &RoomId, mark: &str) -> StoreResult<()> {
        self.lock()
            .webhook_marks
            .remove(&(room.clone(), mark.to_owned()));
        Ok(())
    }

    async fn webhook_marks(&self) -> StoreResult<Vec<(RoomId, String)>> {
        Ok(self.lock().webhook_marks.iter().cloned().collect())
    }
}

/// The users whose `rooms_of_user` lists `room`: its creator, and every
/// member of a private room.
pub(crate) fn members_to_index(room: &RoomRecord) -> impl Iterator<Item = &UserId> {
    std::iter::once(&room.created_by).chain(room.members.iter().flatten())
}

/// `stored` with the name and members of `update` (see
/// [`Store::update_room`]); `InvalidBatch` if the update would make a
/// public room private or the other way round.
pub(crate) fn updated_record(stored: &RoomRecord, update: &RoomRecord) -> StoreResult<RoomRecord> {
    if stored.members.is_some() != update.members.is_some() {
        return Err(StoreError::InvalidBatch(format!(
            "room {} is {}: its members cannot be {}",
            stored.id,
            if stored.members.is_some() {
                "private"
            } else {
                "public"
            },
            if update.members.is_some() {
                "set"
            } else {
                "removed"
            },
        )));
    }
    Ok(RoomRecord {
        name: update.name.clone(),
        members: update.members.clone(),
        ..stored.clone()
    })
}
