//! Durable storage for collab rooms.
//!
//! One [`Store`] trait holds everything that must survive a crash: room
//! records and memberships, each room's op log, and room snapshots. The op
//! log is append-only and fenced: [`Store::append`] writes a batch only if
//! none of its sequence numbers exist yet and otherwise fails with
//! [`StoreError::Conflict`], which is how two would-be owners of one room are
//! kept from forking its history. Implementations: [`EmbeddedStore`] (one
//! redb file, group commit across rooms), [`CqlStore`] (ScyllaDB or
//! Cassandra, shared by a cluster) and [`MemoryStore`] (tests). Every
//! implementation runs the same conformance suite, exported under the
//! `testsuite` feature.

pub mod cql;
mod embedded;
mod memory;
#[cfg(feature = "testsuite")]
pub mod testsuite;

use std::sync::Arc;

use async_trait::async_trait;
use collab_protocol::{Epoch, NodeId, OpEvent, OpKind, RoomId, RoomKind, Seq, UserId};
use serde::{Deserialize, Serialize};

pub use cql::{CqlOptions, CqlStore};
pub use embedded::{EmbeddedStore, EmbeddedStoreOptions, EmbeddedStoreStats};
pub use memory::MemoryStore;

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

/// Who wrote a batch: the node and its ownership term for the room.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Writer {
    pub node: NodeId,
    pub term: u64,
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
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Gets the batch handed to [`Store::append_then`] back, with the append's
/// outcome.
pub type AppendDone = Box<dyn FnOnce(Vec<OpEvent>, StoreResult<()>) + Send>;

/// Everything collab keeps durably. All methods are cancel-safe to drop, but
/// a dropped `append` may still complete: resolve by reading the log.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates a room and its memberships; `Conflict` if the id is taken.
    async fn create_room(&self, room: &RoomRecord) -> StoreResult<()>;

    async fn room(&self, id: &RoomId) -> StoreResult<Option<RoomRecord>>;

    /// The private rooms `user` is a member of and the rooms `user` created,
    /// ordered by id.
    async fn rooms_of_user(&self, user: &UserId) -> StoreResult<Vec<RoomRecord>>;

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

    /// Stores a snapshot, chunked as the backend needs. A snapshot older
    /// than the latest stored one is ignored.
    async fn put_snapshot(&self, room: &RoomId, snapshot: &Snapshot) -> StoreResult<()>;

    /// The snapshot with the highest seq, whole.
    async fn latest_snapshot(&self, room: &RoomId) -> StoreResult<Option<Snapshot>>;
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
