//! [`GatedStore`]: a store for tests of the layers above it, which can hold
//! appends until released, fail the next one, or answer it with a
//! conflict, and cut a deletion short. Everything else goes to a
//! [`MemoryStore`].

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;
use collab_protocol::{OpEvent, OpKind, RoomId, Seq, UserId};
use tokio::sync::Semaphore;

use crate::{
    Deletion, LoggedOp, MemoryStore, RoomCatalog, RoomRecord, Snapshot, Store, StoreError,
    StoreReader, StoreResult, Writer,
};

pub struct GatedStore {
    inner: MemoryStore,
    hold: AtomicBool,
    gate: Semaphore,
    waiting: AtomicUsize,
    appended: AtomicUsize,
    fail_next: AtomicBool,
    conflict_next: AtomicBool,
    batches: Mutex<Vec<usize>>,
    cut_next_delete: AtomicBool,
    /// Records of rooms whose deletion was cut short: still shown.
    half_deleted: Mutex<std::collections::HashMap<RoomId, RoomRecord>>,
}

impl Default for GatedStore {
    fn default() -> Self {
        GatedStore {
            inner: MemoryStore::new(),
            hold: AtomicBool::new(false),
            gate: Semaphore::new(0),
            waiting: AtomicUsize::new(0),
            appended: AtomicUsize::new(0),
            fail_next: AtomicBool::new(false),
            conflict_next: AtomicBool::new(false),
            batches: Mutex::new(Vec::new()),
            cut_next_delete: AtomicBool::new(false),
            half_deleted: Mutex::new(std::collections::HashMap::new()),
        }
    }
}

impl GatedStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on, appends wait for [`release`](Self::release) (or not).
    pub fn hold(&self, hold: bool) {
        self.hold.store(hold, Ordering::SeqCst);
    }

    /// Lets `n` held appends through.
    pub fn release(&self, n: usize) {
        self.gate.add_permits(n);
    }

    /// Appends waiting at the gate now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Appends that reached the inner store and returned.
    pub fn appended(&self) -> usize {
        self.appended.load(Ordering::SeqCst)
    }

    /// The next append fails with `Unavailable`, writing nothing.
    pub fn fail_next(&self) {
        self.fail_next.store(true, Ordering::SeqCst);
    }

    /// The next append fails with `Conflict`, writing nothing.
    pub fn conflict_next(&self) {
        self.conflict_next.store(true, Ordering::SeqCst);
    }

    /// The next deletion stops half way, as if its owner died right after
    /// the tombstone: it answers `Unavailable`, and the room's record is
    /// still there (its log ends in the tombstone) until a deletion of the
    /// room succeeds.
    pub fn cut_next_delete(&self) {
        self.cut_next_delete.store(true, Ordering::SeqCst);
    }

    /// The size of every batch appended so far, in order.
    pub fn batches(&self) -> Vec<usize> {
        self.batches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[async_trait]
impl StoreReader for GatedStore {
    async fn room(&self, id: &RoomId) -> StoreResult<Option<RoomRecord>> {
        if let Some(record) = self
            .half_deleted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
        {
            return Ok(Some(record.clone()));
        }
        self.inner.room(id).await
    }

    async fn rooms_of_user(&self, user: &UserId) -> StoreResult<Vec<RoomRecord>> {
        self.inner.rooms_of_user(user).await
    }

    async fn rooms_of_user_page(
        &self,
        user: &UserId,
        page: &crate::RoomsPage,
    ) -> StoreResult<Vec<RoomRecord>> {
        self.inner.rooms_of_user_page(user, page).await
    }

    async fn head(&self, room: &RoomId) -> StoreResult<Seq> {
        self.inner.head(room).await
    }

    async fn read_log(
        &self,
        room: &RoomId,
        after: Seq,
        limit: usize,
    ) -> StoreResult<Vec<LoggedOp>> {
        self.inner.read_log(room, after, limit).await
    }

    async fn history(
        &self,
        room: &RoomId,
        before: Seq,
        limit: usize,
        kinds: Option<&[OpKind]>,
    ) -> StoreResult<Vec<OpEvent>> {
        self.inner.history(room, before, limit, kinds).await
    }

    async fn latest_snapshot(&self, room: &RoomId) -> StoreResult<Option<Snapshot>> {
        self.inner.latest_snapshot(room).await
    }
}

#[async_trait]
impl RoomCatalog for GatedStore {
    async fn create_room(&self, room: &RoomRecord) -> StoreResult<()> {
        self.inner.create_room(room).await
    }
}

#[async_trait]
impl Store for GatedStore {
    async fn delete_room(&self, room: &RoomId, deletion: &Deletion) -> StoreResult<()> {
        let record = self.inner.room(room).await?;
        self.inner.delete_room(room, deletion).await?;
        let mut half_deleted = self.half_deleted.lock().unwrap_or_else(|p| p.into_inner());
        if self.cut_next_delete.swap(false, Ordering::SeqCst)
            && let Some(record) = record
        {
            half_deleted.insert(room.clone(), record);
            return Err(StoreError::Unavailable("the deleting node died".into()));
        }
        half_deleted.remove(room);
        Ok(())
    }

    async fn update_room(&self, room: &RoomRecord) -> StoreResult<()> {
        self.inner.update_room(room).await
    }

    async fn append(
        &self,
        room: &RoomId,
        first: Seq,
        batch: &[OpEvent],
        writer: &Writer,
    ) -> StoreResult<()> {
        self.batches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(batch.len());
        if self.hold.load(Ordering::SeqCst) {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            let permit = self.gate.acquire().await;
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            permit
                .map_err(|e| StoreError::Unavailable(e.to_string()))?
                .forget();
        }
        if self.conflict_next.swap(false, Ordering::SeqCst) {
            return Err(StoreError::Conflict("seq taken".into()));
        }
        if self.fail_next.swap(false, Ordering::SeqCst) {
            return Err(StoreError::Unavailable("disk on fire".into()));
        }
        let result = self.inner.append(room, first, batch, writer).await;
        self.appended.fetch_add(1, Ordering::SeqCst);
        result
    }

    async fn put_snapshot(&self, room: &RoomId, snapshot: &Snapshot) -> StoreResult<()> {
        self.inner.put_snapshot(room, snapshot).await
    }
}
