//! The store a room node's actors write through when webhooks are on: the
//! node's store, with two additions on the way of every append and
//! deletion.
//!
//! - Before the first write of a room (and the first after its mark was
//!   cleared) it adds a durable mark for the room ([`WebhookLog`]), and
//!   only then writes. So every committed op of a room is covered by a
//!   mark until every endpoint's cursor is past it, and a dispatcher that
//!   starts after a crash finds the room by its mark even if nothing ever
//!   loads the room again.
//! - After a write is confirmed it tells the dispatcher the room's new head,
//!   which is how the dispatcher learns there is something to send.
//!
//! The marks this process wrote are tracked in [`Marks`]: which one is the
//! room's current one, and how many writes are in flight, so that a mark is
//! only cleared when no write it covers can still land.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use collab_protocol::{OpEvent, OpKind, RoomId, Seq, UserId};
use collab_store::{
    AppendDone, Deletion, LoggedOp, RoomCatalog, RoomRecord, RoomsPage, Snapshot, Store,
    StoreReader, StoreResult, WebhookLog, Writer,
};
use tokio::sync::mpsc::UnboundedSender;

/// A room's head moved to this seq (a commit or a deletion's tombstone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub room: RoomId,
    pub head: Seq,
}

/// Who wrote a mark: `node/instance/n`. A mark is its writer's alone to
/// clear while the writer lives; a dead writer's marks are cleared by
/// whoever finds the room caught up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkId<'a> {
    pub node: &'a str,
    pub instance: &'a str,
}

impl<'a> MarkId<'a> {
    pub fn parse(mark: &'a str) -> Option<MarkId<'a>> {
        let mut parts = mark.splitn(3, '/');
        Some(MarkId {
            node: parts.next()?,
            instance: parts.next()?,
        })
    }
}

/// The marks this process wrote, by room.
pub struct Marks {
    log: Arc<dyn WebhookLog>,
    node: String,
    /// This process's incarnation: tells its marks from those of an
    /// earlier process with the same node id.
    instance: String,
    next: AtomicU64,
    rooms: Mutex<HashMap<RoomId, RoomMarks>>,
}

#[derive(Debug, Default)]
struct RoomMarks {
    /// The mark that covers the room's writes from now on, once durable.
    current: Option<String>,
    /// Writes in flight (each covered by `current`).
    writing: u32,
    /// Earlier marks of this process, to clear once the room caught up.
    retired: Vec<String>,
}

impl Marks {
    pub fn new(log: Arc<dyn WebhookLog>, node: impl Into<String>) -> Marks {
        Marks {
            log,
            node: node.into(),
            instance: format!("{:016x}", rand::random::<u64>()),
            next: AtomicU64::new(1),
            rooms: Mutex::new(HashMap::new()),
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<RoomId, RoomMarks>> {
        // Each update below is a single field change: a panic elsewhere
        // cannot leave one half done.
        self.rooms
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A write of `room` begins: whether a durable mark already covers it.
    fn begin(&self, room: &RoomId) -> bool {
        let mut rooms = self.lock();
        let marks = rooms.entry(room.clone()).or_default();
        marks.writing += 1;
        marks.current.is_some()
    }

    fn end(&self, room: &RoomId) {
        if let Some(marks) = self.lock().get_mut(room) {
            marks.writing = marks.writing.saturating_sub(1);
        }
    }

    /// Writes a new mark for `room` and makes it current (or retires it at
    /// once if another became current meanwhile).
    async fn mark(&self, room: &RoomId) -> StoreResult<()> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mark = format!("{}/{}/{n}", self.node, self.instance);
        self.log.add_webhook_mark(room, &mark).await?;
        let mut rooms = self.lock();
        let marks = rooms.entry(room.clone()).or_default();
        if marks.current.is_none() {
            marks.current = Some(mark);
        } else {
            marks.retired.push(mark);
        }
        Ok(())
    }

    /// Whether `mark` is one of this process's marks that still covers
    /// writes (it must not be cleared from outside).
    pub fn is_current(&self, room: &RoomId, mark: &str) -> bool {
        self.lock()
            .get(room)
            .is_some_and(|marks| marks.current.as_deref() == Some(mark))
    }

    /// Retires `room`'s current mark if no write is in flight: from now
    /// on a write marks the room afresh. Returns every retired mark of the
    /// room, to clear once the room is caught up, or `None` while writes
    /// are in flight.
    pub fn retire(&self, room: &RoomId) -> Option<Vec<String>> {
        let mut rooms = self.lock();
        let Some(marks) = rooms.get_mut(room) else {
            return Some(Vec::new());
        };
        if marks.writing > 0 {
            return None;
        }
        if let Some(current) = marks.current.take() {
            marks.retired.push(current);
        }
        Some(marks.retired.clone())
    }

    /// `cleared` are gone from the store: forget them.
    pub fn cleared(&self, room: &RoomId, cleared: &[String]) {
        let mut rooms = self.lock();
        if let Some(marks) = rooms.get_mut(room) {
            marks.retired.retain(|mark| !cleared.contains(mark));
            if marks.current.is_none() && marks.writing == 0 && marks.retired.is_empty() {
                rooms.remove(room);
            }
        }
    }
}

/// The store with marks added before writes and commits reported after
/// (see the module docs).
pub struct MarkingStore {
    inner: Arc<dyn Store>,
    marks: Arc<Marks>,
    committed: UnboundedSender<Committed>,
}

impl MarkingStore {
    pub fn new(
        inner: Arc<dyn Store>,
        marks: Arc<Marks>,
        committed: UnboundedSender<Committed>,
    ) -> MarkingStore {
        MarkingStore {
            inner,
            marks,
            committed,
        }
    }

    fn report(&self, room: &RoomId, head: Seq) {
        // The dispatcher is gone only when the node stops.
        let _ = self.committed.send(Committed {
            room: room.clone(),
            head,
        });
    }

    /// Runs `write` for `room` with the room marked (marking it first if
    /// no write in flight has), and reports `head` once it succeeded.
    async fn marked_write(
        &self,
        room: &RoomId,
        head: Seq,
        write: impl Future<Output = StoreResult<()>>,
    ) -> StoreResult<()> {
        if !self.marks.begin(room)
            && let Err(e) = self.marks.mark(room).await
        {
            self.marks.end(room);
            return Err(e);
        }
        let result = write.await;
        self.marks.end(room);
        if result.is_ok() {
            self.report(room, head);
        }
        result
    }
}

#[async_trait]
impl StoreReader for MarkingStore {
    async fn room(&self, id: &RoomId) -> StoreResult<Option<RoomRecord>> {
        self.inner.room(id).await
    }

    async fn rooms_of_user(&self, user: &UserId) -> StoreResult<Vec<RoomRecord>> {
        self.inner.rooms_of_user(user).await
    }

    async fn rooms_of_user_page(
        &self,
        user: &UserId,
        page: &RoomsPage,
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

    async fn read_ops(&self, room: &RoomId, after: Seq, limit: usize) -> StoreResult<Vec<OpEvent>> {
        self.inner.read_ops(room, after, limit).await
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
impl RoomCatalog for MarkingStore {
    async fn create_room(&self, room: &RoomRecord) -> StoreResult<()> {
        self.inner.create_room(room).await
    }
}

#[async_trait]
impl Store for MarkingStore {
    async fn delete_room(&self, room: &RoomId, deletion: &Deletion) -> StoreResult<()> {
        self.marked_write(room, deletion.at, self.inner.delete_room(room, deletion))
            .await
    }

    /// Not an op: no mark, nothing to send.
    async fn update_room(&self, room: &RoomRecord) -> StoreResult<()> {
        self.inner.update_room(room).await
    }

    async fn finish_deletion(&self, room: &RoomId) -> StoreResult<()> {
        self.inner.finish_deletion(room).await
    }

    async fn append(
        &self,
        room: &RoomId,
        first: Seq,
        batch: &[OpEvent],
        writer: &Writer,
    ) -> StoreResult<()> {
        let last = Seq(first.get() + batch.len() as u64 - 1);
        self.marked_write(room, last, self.inner.append(room, first, batch, writer))
            .await
    }

    fn append_then(
        self: Arc<Self>,
        room: RoomId,
        first: Seq,
        batch: Vec<OpEvent>,
        writer: Writer,
        done: AppendDone,
    ) {
        let marked = self.marks.begin(&room);
        let this = Arc::clone(&self);
        let reported_room = room.clone();
        // Runs wherever the store answers (its writer thread, for the
        // embedded one): a lock and a channel send, nothing slower.
        let finish: AppendDone = Box::new(move |batch, result| {
            this.marks.end(&reported_room);
            if result.is_ok()
                && let Some(last) = batch.last()
            {
                this.report(&reported_room, last.seq);
            }
            done(batch, result);
        });
        let inner = Arc::clone(&self.inner);
        if marked {
            inner.append_then(room, first, batch, writer, finish);
        } else {
            let marks = Arc::clone(&self.marks);
            tokio::spawn(async move {
                match marks.mark(&room).await {
                    Ok(()) => inner.append_then(room, first, batch, writer, finish),
                    // The actor treats it as any failed commit: nothing
                    // was written, the ops are answered `unavailable`.
                    Err(e) => finish(batch, Err(e)),
                }
            });
        }
    }

    async fn put_snapshot(&self, room: &RoomId, snapshot: &Snapshot) -> StoreResult<()> {
        self.inner.put_snapshot(room, snapshot).await
    }

    fn webhook_log(self: Arc<Self>) -> Option<Arc<dyn WebhookLog>> {
        Arc::clone(&self.inner).webhook_log()
    }
}
