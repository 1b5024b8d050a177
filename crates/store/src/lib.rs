//! Durable storage for collab rooms.
//!
//! One [`Store`] trait holds everything that must survive a crash: room
//! records and memberships, each room's op log, and room snapshots. It is
//! three traits deep, so that each part of collab sees what it may use:
//! [`StoreReader`] (reads), [`RoomCatalog`] (reads, and creating rooms: the
//! gateway's view) and [`Store`] (the writes of a room's owner). The op
//! log is append-only and fenced: [`Store::append`] writes a batch only if
//! none of its sequence numbers exist yet and otherwise fails with
//! [`StoreError::Conflict`], which is how two would-be owners of one room are
//! kept from forking its history. [`Store::delete_room`] ends a room
//! through the same fence: its owner writes a tombstone where its next op
//! would go, then the room and its history are removed (see the method for
//! what a deleted room leaves behind, and why). Implementations:
//! [`EmbeddedStore`] (one
//! redb file, group commit across rooms), [`CqlStore`] (ScyllaDB or
//! Cassandra, shared by a cluster) and [`MemoryStore`] (tests). Every
//! implementation runs the same conformance suite, exported under the
//! `testsuite` feature. Beside the rooms, each keeps the webhook
//! dispatcher's cursors and marks ([`WebhookLog`]).

pub mod cql;
mod embedded;
mod memory;
#[cfg(feature = "testsuite")]
pub mod testsuite;
mod webhooks;

use std::sync::Arc;

use async_trait::async_trait;
use collab_protocol::{Epoch, NodeId, OpEvent, OpKind, RoomId, RoomKind, Seq, UserId};
use serde::{Deserialize, Serialize};

pub use cql::{CqlOptions, CqlStore};
pub use embedded::{EmbeddedStore, EmbeddedStoreOptions, EmbeddedStoreStats};
pub use memory::MemoryStore;
pub use webhooks::WebhookLog;

/// A room as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomRecord {
    pub id: RoomId,
    pub kind: RoomKind,
    pub name: String,
    pub epoch: Epoch,
    pub created_by: UserId,
    /// `Some`: a private room, joinable only by these users. The creator is
    /// always one of them.
    pub members: Option<Vec<UserId>>,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    /// How long the room may go unused before it is deleted with its
    /// history; `None`: until someone deletes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    /// The seq this room's log starts after: 0, unless the id belonged to
    /// a deleted room, whose tombstone's seq it then is (so the first op is
    /// `floor + 1`). Set by [`RoomCatalog::create_room`], whatever the caller
    /// put here.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub floor: Seq,
}

fn is_zero(seq: &Seq) -> bool {
    *seq == Seq::ZERO
}

impl RoomRecord {
    /// May `user` join, read metadata and read history (membership only;
    /// the token's `rooms` claim is checked separately)?
    pub fn admits(&self, user: &UserId) -> bool {
        match &self.members {
            None => true,
            Some(members) => members.contains(user) || &self.created_by == user,
        }
    }
}

/// Which rooms of a user one [`StoreReader::rooms_of_user_page`] call
/// reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomsPage {
    /// Only rooms with an id greater than this one (the last id of the
    /// previous page).
    pub after: Option<RoomId>,
    /// The most rooms returned; 0 returns none.
    pub limit: usize,
    /// Only rooms of this kind.
    pub kind: Option<RoomKind>,
}

impl RoomsPage {
    /// Whether `record` belongs on this page, its position aside.
    pub fn wants(&self, record: &RoomRecord) -> bool {
        self.kind.is_none_or(|kind| record.kind == kind)
            && self.after.as_ref().is_none_or(|after| &record.id > after)
    }
}

/// Who wrote a batch: the node and its ownership term for the room.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Writer {
    pub node: NodeId,
    pub term: u64,
}

/// A room's deletion, as its owner asks for it (see [`Store::delete_room`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    /// The room deleted is the one with this epoch: a room created since
    /// under the same id is another room, and is left alone.
    pub epoch: Epoch,
    /// Where the tombstone goes: the seq after the head of the log.
    pub at: Seq,
    /// The owner that deletes, as on its appends.
    pub writer: Writer,
}

/// An op as stored in the log, with the writer of its batch.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedOp {
    pub event: OpEvent,
    pub writer: Writer,
}

/// A room snapshot: opaque bytes (the room actor owns the format) taken
/// after applying every op up to and including `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub seq: Seq,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// A row the write needed to create exists already: for `append`, one of
    /// the batch's seqs was written (by another owner); for `create_room`,
    /// the room exists.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The batch is not a contiguous run of ops of this room starting at
    /// the given seq.
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    /// The store could not be reached or did not answer in time: the write
    /// may or may not have happened.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Stored data could not be decoded.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The read reached the room's tombstone, at this seq: the room was
    /// deleted, or its deletion is under way (see [`Store::delete_room`]).
    #[error("room deleted (tombstone at seq {0})")]
    RoomDeleted(Seq),
    /// There is no such room (for `delete_room`: not with that epoch, and
    /// no tombstone at that seq).
    #[error("not found: {0}")]
    NotFound(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Gets the batch handed to [`Store::append_then`] back, with the append's
/// outcome.
pub type AppendDone = Box<dyn FnOnce(Vec<OpEvent>, StoreResult<()>) + Send>;

/// The read side of the store: rooms, their logs and snapshots, as any
/// part of collab may read them. The gateway sees only this and
/// [`RoomCatalog`]; writing a room's log is for its owner.
#[async_trait]
pub trait StoreReader: Send + Sync + 'static {
    /// The room, unless there is none or it was deleted (even if its
    /// deletion is not finished).
    async fn room(&self, id: &RoomId) -> StoreResult<Option<RoomRecord>>;

    /// The private rooms `user` is a member of and the rooms `user` created,
    /// ordered by id.
    async fn rooms_of_user(&self, user: &UserId) -> StoreResult<Vec<RoomRecord>>;

    /// One page of [`StoreReader::rooms_of_user`]: up to `page.limit` of
    /// those rooms with an id after `page.after`, of kind `page.kind` only
    /// if set, ordered by id. Read from the user's membership index, so
    /// its cost follows the user's rooms, never the number of rooms.
    async fn rooms_of_user_page(
        &self,
        user: &UserId,
        page: &RoomsPage,
    ) -> StoreResult<Vec<RoomRecord>>;

    /// The highest stored seq of `room` (`Seq::ZERO` when its log is empty).
    async fn head(&self, room: &RoomId) -> StoreResult<Seq>;

    /// Up to `limit` logged ops with `seq > after`, oldest first.
    async fn read_log(&self, room: &RoomId, after: Seq, limit: usize)
    -> StoreResult<Vec<LoggedOp>>;

    /// Up to `limit` ops with `seq > after`, oldest first.
    async fn read_ops(&self, room: &RoomId, after: Seq, limit: usize) -> StoreResult<Vec<OpEvent>> {
        Ok(self
            .read_log(room, after, limit)
            .await?
            .into_iter()
            .map(|logged| logged.event)
            .collect())
    }

    /// Up to `limit` ops with `seq < before`, newest first, of the given
    /// kinds only (all kinds when `kinds` is `None`). A page with a fixed
    /// `before` never changes once `before - 1` is stored.
    async fn history(
        &self,
        room: &RoomId,
        before: Seq,
        limit: usize,
        kinds: Option<&[OpKind]>,
    ) -> StoreResult<Vec<OpEvent>>;

    /// The snapshot with the highest seq, whole.
    async fn latest_snapshot(&self, room: &RoomId) -> StoreResult<Option<Snapshot>>;
}

/// Reading, and creating rooms: what a front end needs. Creating a room
/// writes its record and memberships only, guarded by its own conflict
/// check (`Conflict` when the id is taken); it does not touch the fenced
/// op log, so it needs no owner and is done where the request arrives.
#[async_trait]
pub trait RoomCatalog: StoreReader {
    /// Creates a room and its memberships; `Conflict` if the id is taken.
    /// An id whose room was deleted is free again: the new room's `floor`
    /// is the old one's tombstone (whatever `room.floor` says), so its ops
    /// never share a seq with the old room's.
    async fn create_room(&self, room: &RoomRecord) -> StoreResult<()>;
}

/// Everything collab keeps durably: the [`RoomCatalog`], and the writes of
/// a room's owner. All methods are cancel-safe to drop, but a dropped
/// `append` may still complete: resolve by reading the log.
#[async_trait]
pub trait Store: RoomCatalog {
    /// Deletes a room for its owner, through the fence its appends go
    /// through: first a tombstone at `deletion.at` (the seq after the log's
    /// head), written only if that seq is free — `Conflict` otherwise,
    /// which tells a stale owner, as an append would, that another owner
    /// wrote the room — then the room record, its memberships, its
    /// snapshots and every op below the tombstone are removed.
    ///
    /// The tombstone stays, with a record that the id was deleted: an
    /// owner that loaded the room before and appends at the tombstone's
    /// seq conflicts, and a room created later under the same id starts
    /// its log after it (see [`RoomRecord::floor`]), so nothing a stale
    /// owner of the deleted room writes can ever show in it. A read that
    /// reaches the tombstone fails with [`StoreError::RoomDeleted`].
    ///
    /// Idempotent, and safe to repeat after a failure: a tombstone already
    /// at `deletion.at` (written by any owner) counts as written, and the
    /// removal goes on from wherever it stopped. `NotFound` when there is
    /// no room with `deletion.epoch` and no tombstone at `deletion.at`.
    async fn delete_room(&self, room: &RoomId, deletion: &Deletion) -> StoreResult<()>;

    /// Changes a room's name and members to those of `room`, for its
    /// owner (which orders it with the room's ops and joins): the stored
    /// room with `room.id` and `room.epoch` takes `room.name` and
    /// `room.members`, everything else of it stays as stored, and the
    /// index behind [`StoreReader::rooms_of_user`] follows (members added
    /// are listed, members removed are not). `NotFound` when there is no
    /// room with that id and epoch (deleted, or created again since). A
    /// public room stays public and a private one private: `room.members`
    /// must be `None` exactly when the stored one is, else
    /// `InvalidBatch`.
    async fn update_room(&self, room: &RoomRecord) -> StoreResult<()>;

    /// Finishes the deletion of `room` if one was cut short after the room
    /// disappeared from [`StoreReader::room`] (by a crash): removes what is left
    /// of its snapshots and log. A no-op otherwise, and for the stores that
    /// delete in one atomic write (the default).
    async fn finish_deletion(&self, _room: &RoomId) -> StoreResult<()> {
        Ok(())
    }

    /// Appends `batch` (ops `first`, `first + 1`, … of `room`) as one atomic,
    /// durable write tagged with `writer`. Writes nothing and fails with
    /// `Conflict` if any of those seqs exists. Returns only once the batch is
    /// durable.
    async fn append(
        &self,
        room: &RoomId,
        first: Seq,
        batch: &[OpEvent],
        writer: &Writer,
    ) -> StoreResult<()>;

    /// [`Store::append`] for a caller that does not wait for it: `done` is
    /// called exactly once with the batch and the outcome, on whichever
    /// thread learns it (so it must be quick: send a message, no more). The
    /// default awaits `append` on a task of its own; a store with a writer
    /// thread answers from that thread instead, which spares the caller's
    /// runtime a task and two wake-ups per batch.
    fn append_then(
        self: Arc<Self>,
        room: RoomId,
        first: Seq,
        batch: Vec<OpEvent>,
        writer: Writer,
        done: AppendDone,
    ) {
        tokio::spawn(async move {
            let result = self.append(&room, first, &batch, &writer).await;
            done(batch, result);
        });
    }

    /// Stores a snapshot, chunked as the backend needs. A snapshot older
    /// than the latest stored one is ignored.
    async fn put_snapshot(&self, room: &RoomId, snapshot: &Snapshot) -> StoreResult<()>;

    /// Where the webhook dispatcher keeps its cursors and marks, in this
    /// same store; `None` for a store without them (a test's stand-in),
    /// on which webhooks cannot be configured.
    fn webhook_log(self: Arc<Self>) -> Option<Arc<dyn WebhookLog>> {
        None
    }
}

/// Checks that `batch` is a contiguous run of `room`'s ops from `first`.
pub fn check_batch(room: &RoomId, first: Seq, batch: &[OpEvent]) -> StoreResult<()> {
    if batch.is_empty() {
        return Err(StoreError::InvalidBatch("empty batch".into()));
    }
    if first == Seq::ZERO {
        return Err(StoreError::InvalidBatch("seqs start at 1".into()));
    }
    for (i, op) in batch.iter().enumerate() {
        if &op.room != room {
            return Err(StoreError::InvalidBatch(format!(
                "op {} belongs to room {}",
                op.seq, op.room
            )));
        }
        if op.seq.get() != first.get() + i as u64 {
            return Err(StoreError::InvalidBatch(format!(
                "expected seq {}, found {}",
                first.get() + i as u64,
                op.seq
            )));
        }
    }
    Ok(())
}
