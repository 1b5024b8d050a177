//! [`EmbeddedStore`]: the [`Store`] of `collab serve`, one redb file in the
//! data dir.
//!
//! Writes go to one writer thread that commits the queued writes of all
//! rooms together, one fsync per group (see [`writer`]); appends go to a
//! journal, an append-only log in segment files beside the redb file (see
//! [`journal`]), which the writer periodically checkpoints into the log
//! tables (see [`pending`]), in small slices between groups. Reads run on tokio's blocking pool, each in its own
//! redb read transaction merged with the journaled ops of its room: redb's
//! MVCC readers never wait for the writer, and a read sees one consistent
//! committed state (a snapshot's header and chunks, a page of history). No
//! method blocks a tokio worker, except [`EmbeddedStore::open`] (start-up)
//! and dropping the store, which waits for the writes already queued.
//!
//! A room's deletion is one transaction of the writer: the tombstone into
//! the log table, the room's record, memberships, snapshots and logged ops
//! out, and the id's tombstone seq into `deleted_rooms`; its journaled ops
//! leave the in-memory index once that commits, and a replay at open skips
//! them (they are below the tombstone), so there is no half-deleted state.

mod codec;
mod journal;
mod pending;
mod spare;
mod tables;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use collab_protocol::{OpEvent, OpKind, RoomId, Seq, UserId};
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable};

use crate::{
    AppendDone, Deletion, LoggedOp, RoomCatalog, RoomRecord, RoomsPage, Snapshot, Store,
    StoreError, StoreReader, StoreResult, WebhookLog, Writer, check_batch,
};
use pending::{Pending, PendingOp, RoomLog, merge_by_seq};
pub use tables::SNAPSHOT_CHUNK_SIZE;
use tables::{
    DELETED, FORMAT_VERSION, FORMAT_VERSION_1, JOURNAL, KINDS, MEMBERSHIPS, META, OPS, ROOMS,
    SNAPSHOT_CHUNKS, SNAPSHOTS, WEBHOOK_CURSORS, WEBHOOK_MARKS,
};
use writer::{Counters, Reply, Request, Shared, WebhookWrite, Write};

/// A [`Store`] in one redb file, with group commit across rooms.
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    path: PathBuf,
    /// `Option` so that `Drop` can close the queue before joining the
    /// writer thread.
    queue: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
}

/// Tuning of an [`EmbeddedStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddedStoreOptions {
    /// Checkpoint once this many journaled ops wait. Larger: fewer, longer
    /// checkpoints that each dirty a room's log page for more ops (cheaper
    /// per op), more memory, a longer replay at open.
    pub checkpoint_ops: usize,
    /// Checkpoint once the journaled ops take this many bytes.
    pub checkpoint_bytes: usize,
    /// A checkpoint moves at most this many ops per transaction (a slice),
    /// and serves the queued writes between slices: appends wait for at
    /// most one slice. Smaller: shorter waits, but each slice costs an
    /// fsync and a walk from the B-trees' roots (about 1 ms), so more of
    /// them cost throughput. The default, 1,024, takes 10–20 ms on the
    /// reference machine (see `docs/BENCHMARKS.md`).
    pub checkpoint_slice_ops: usize,
    /// Journal segments are files of this many bytes, zero-filled ahead of
    /// time by a helper thread, so that a group's sync writes its record
    /// and nothing else (a file that grows must have its size written
    /// too). 0: segments are empty files that grow. Disk use: about twice
    /// this, the current segment and the next one.
    pub journal_segment_bytes: u64,
}

impl Default for EmbeddedStoreOptions {
    fn default() -> Self {
        EmbeddedStoreOptions {
            checkpoint_ops: 32_768,
            checkpoint_bytes: 32 << 20,
            checkpoint_slice_ops: 1024,
            journal_segment_bytes: 32 << 20,
        }
    }
}

/// What the writer thread has done since the store was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmbeddedStoreStats {
    /// Committed groups, each one journal fsync (appends only), or one
    /// redb commit (room creations, snapshots) plus the journal's fsync if
    /// it also had appends.
    pub transactions: u64,
    /// Group transactions and checkpoints that failed (all requests of a
    /// failed group got `Unavailable`).
    pub failed_transactions: u64,
    /// Write requests handled (appends, room creations, snapshots), whether
    /// they succeeded or not.
    pub requests: u64,
    /// Append batches committed.
    pub appends: u64,
    /// Ops committed (the sum of the committed batches' lengths).
    pub ops: u64,
    /// Appends, room creations and deletions rejected with `Conflict`.
    pub conflicts: u64,
    pub rooms_created: u64,
    pub rooms_deleted: u64,
    /// Snapshots written (older ones that were ignored are not counted).
    pub snapshots: u64,
    /// The most requests one transaction carried.
    pub largest_group: u64,
    /// Time the writer spent applying requests to its transactions.
    pub apply_time: Duration,
    /// Time the writer spent making the groups durable: the redb commit if
    /// any, and the journal's write and fsync.
    pub commit_time: Duration,
    /// Checkpoint cycles completed (each one or more slices).
    pub checkpoints: u64,
    /// Checkpoint slices committed, each one fsync.
    pub checkpoint_slices: u64,
    /// Ops moved from the journal into the log tables.
    pub checkpointed_ops: u64,
    /// Time the writer spent checkpointing.
    pub checkpoint_time: Duration,
    /// The longest checkpoint slice.
    pub longest_checkpoint_slice: Duration,
    /// The longest the writer checkpointed between two groups: the longest
    /// a write waited for a checkpoint (beyond its own group's commit). One
    /// slice, unless the journal was twice over its thresholds.
    pub longest_checkpoint_pause: Duration,
    /// Ops replayed from the journal at open (appended by the previous
    /// process but not yet checkpointed when it stopped).
    pub replayed_ops: u64,
    /// Of those, the ones the log tables already held, identical (the
    /// previous process stopped in the middle of a checkpoint cycle).
    pub replayed_logged_ops: u64,
}

impl EmbeddedStoreStats {
    /// Durable commits of any kind: groups and checkpoint slices.
    pub fn fsyncs(&self) -> u64 {
        self.transactions + self.checkpoint_slices
    }

    /// The change from `earlier` to `self` (for measuring one phase);
    /// `largest_group`, the longest slice and pause, and the replay counts
    /// stay as they are.
    pub fn since(&self, earlier: &EmbeddedStoreStats) -> EmbeddedStoreStats {
        EmbeddedStoreStats {
            transactions: self.transactions - earlier.transactions,
            failed_transactions: self.failed_transactions - earlier.failed_transactions,
            requests: self.requests - earlier.requests,
            appends: self.appends - earlier.appends,
            ops: self.ops - earlier.ops,
            conflicts: self.conflicts - earlier.conflicts,
            rooms_created: self.rooms_created - earlier.rooms_created,
            rooms_deleted: self.rooms_deleted - earlier.rooms_deleted,
            snapshots: self.snapshots - earlier.snapshots,
            largest_group: self.largest_group,
            apply_time: self.apply_time.saturating_sub(earlier.apply_time),
            commit_time: self.commit_time.saturating_sub(earlier.commit_time),
            checkpoints: self.checkpoints - earlier.checkpoints,
            checkpoint_slices: self.checkpoint_slices - earlier.checkpoint_slices,
            checkpointed_ops: self.checkpointed_ops - earlier.checkpointed_ops,
            checkpoint_time: self.checkpoint_time.saturating_sub(earlier.checkpoint_time),
            longest_checkpoint_slice: self.longest_checkpoint_slice,
            longest_checkpoint_pause: self.longest_checkpoint_pause,
            replayed_ops: self.replayed_ops,
            replayed_logged_ops: self.replayed_logged_ops,
        }
    }
}

impl EmbeddedStore {
    /// The file name [`EmbeddedStore::open_in_dir`] uses.
    pub const FILE_NAME: &'static str = "collab.redb";

    /// Opens (or creates) the store in the redb file at `path`, creating
    /// missing parent directories. Blocking: call it at start-up (after a
    /// crash redb repairs the file here, which reads all of it, and the
    /// journal is checkpointed).
    pub fn open(path: impl AsRef<Path>) -> StoreResult<Self> {
        Self::open_with(path, EmbeddedStoreOptions::default())
    }

    /// [`open`](Self::open) with explicit tuning.
    pub fn open_with(path: impl AsRef<Path>, options: EmbeddedStoreOptions) -> StoreResult<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let db = Database::create(&path)
            .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
        let (replayed, journal) = init(&db, &path, options.journal_segment_bytes)?;
        let counters = Counters::default();
        counters.replayed_ops.store(replayed.ops, Ordering::Relaxed);
        counters
            .replayed_logged_ops
            .store(replayed.logged, Ordering::Relaxed);
        let shared = Arc::new(Shared {
            db,
            pending: RwLock::new(Pending::default()),
            counters,
            options,
        });
        let (queue, requests) = mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("collab-store-writer".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || writer::run(&shared, journal, requests)
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start writer thread: {e}")))?;
        tracing::info!(
            path = %path.display(),
            replayed = replayed.ops,
            already_logged = replayed.logged,
            "embedded store open"
        );
        Ok(EmbeddedStore {
            shared,
            path,
            queue: Some(queue),
            writer: Some(writer),
        })
    }

    /// Opens (or creates) the store in `dir`/[`Self::FILE_NAME`].
    pub fn open_in_dir(dir: impl AsRef<Path>) -> StoreResult<Self> {
        Self::open(dir.as_ref().join(Self::FILE_NAME))
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves every journaled op into the log tables now (normally the
    /// writer does it when the journal is full enough). For tests and
    /// orderly shutdown; never needed for durability.
    pub async fn checkpoint(&self) -> StoreResult<()> {
        self.write(Write::Checkpoint).await
    }

    /// The writer's counters so far.
    pub fn stats(&self) -> EmbeddedStoreStats {
        let c = &self.shared.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        EmbeddedStoreStats {
            transactions: get(&c.transactions),
            failed_transactions: get(&c.failed_transactions),
            requests: get(&c.requests),
            appends: get(&c.appends),
            ops: get(&c.ops),
            conflicts: get(&c.conflicts),
            rooms_created: get(&c.rooms_created),
            rooms_deleted: get(&c.rooms_deleted),
            snapshots: get(&c.snapshots),
            largest_group: get(&c.largest_group),
            apply_time: Duration::from_nanos(get(&c.apply_nanos)),
            commit_time: Duration::from_nanos(get(&c.commit_nanos)),
            checkpoints: get(&c.checkpoints),
            checkpoint_slices: get(&c.checkpoint_slices),
            checkpointed_ops: get(&c.checkpointed_ops),
            checkpoint_time: Duration::from_nanos(get(&c.checkpoint_nanos)),
            longest_checkpoint_slice: Duration::from_nanos(get(&c.longest_slice_nanos)),
            longest_checkpoint_pause: Duration::from_nanos(get(&c.longest_pause_nanos)),
            replayed_ops: get(&c.replayed_ops),
            replayed_logged_ops: get(&c.replayed_logged_ops),
        }
    }

    /// Ops made durable in the journal and not yet checkpointed into the
    /// log tables (what a restart would replay).
    pub fn journaled_ops(&self) -> usize {
        self.shared.pending().ops()
    }

    /// Hands `write` to the writer thread, which answers `reply`. If the
    /// thread is gone, the request is dropped, and so is `reply`, which
    /// answers `Unavailable` that way.
    fn submit(&self, write: Write, reply: Reply) {
        if let Some(queue) = &self.queue {
            let _ = queue.send(Request { write, reply });
        }
    }

    /// Hands `write` to the writer thread and waits for its commit.
    async fn write(&self, write: Write) -> StoreResult<()> {
        let (reply, answer) = Reply::channel();
        self.submit(write, reply);
        answer.await.map_err(|_| {
            // The writer drops a reply only if it is gone or died
            // mid-group: the write may or may not have been committed.
            StoreError::Unavailable("store writer thread stopped".into())
        })?
    }

    /// Runs `read` in a fresh read transaction on the blocking pool.
    async fn read<T, F>(&self, read: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&ReadTransaction) -> StoreResult<T> + Send + 'static,
    {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || {
            let txn = shared.db.begin_read().map_err(unavailable)?;
            read(&txn)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("store read task failed: {e}")))?
    }

    /// Runs `read` on one room's log: a fresh read transaction plus what
    /// `pick` took from the room's journaled ops (`None`: there are none).
    ///
    /// The read transaction is opened while the journal index is read
    /// locked, and the writer changes that index only under its write lock
    /// after a commit. So an op is never missed: an appended op enters the
    /// index before its caller is answered, and a checkpoint slice removes
    /// from the index only the ops it moved, only after its commit, which a
    /// transaction opened after the removal sees. Mid-cycle a room's ops
    /// are split: the older ones in the log tables, the rest in the index;
    /// each op is in one or the other (or both). An op may be seen twice
    /// (between a slice's commit and its removal); merging keeps it once.
    async fn read_room<P, T, F, R>(&self, room: &RoomId, pick: F, read: R) -> StoreResult<T>
    where
        P: Send + 'static,
        T: Send + 'static,
        F: FnOnce(&RoomLog) -> P + Send + 'static,
        R: FnOnce(&ReadTransaction, &str, Option<P>) -> StoreResult<T> + Send + 'static,
    {
        let shared = Arc::clone(&self.shared);
        let room = room.as_str().to_owned();
        tokio::task::spawn_blocking(move || {
            let (txn, picked) = {
                let pending = shared.pending();
                let txn = shared.db.begin_read().map_err(unavailable)?;
                (txn, pending.room(&room).map(pick))
            };
            read(&txn, &room, picked)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("store read task failed: {e}")))?
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what is queued and exit;
        // joining it means the file is released once `drop` returns (a
        // reopen of the same path then succeeds), unless a read task still
        // holds the database.
        drop(self.queue.take());
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!("store writer thread panicked");
        }
    }
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// What `init` replayed from the journal.
struct Replayed {
    ops: u64,
    /// Ops the log tables already held: moved by a checkpoint cycle that
    /// did not finish (its journal rows are deleted only at its end).
    logged: u64,
}

/// Creates every table (so that read transactions can always open them),
/// checks the file's format version, and checkpoints what the journal
/// holds (the ops a previous process made durable but did not checkpoint
/// before it stopped, some of them perhaps already moved by a cycle it did
/// not finish: inserting those again with the same key and value is a
/// no-op). The journal is the legacy `JOURNAL` table (written by earlier
/// versions; emptied here) and then every segment file in key order. Once
/// that transaction committed, the replayed segments are deleted and a
/// fresh one is started. Returns how many ops it replayed and the journal
/// to append to.
fn init(
    db: &Database,
    path: &Path,
    segment_bytes: u64,
) -> StoreResult<(Replayed, journal::Journal)> {
    let txn = db.begin_write().map_err(unavailable)?;
    let mut replayed = Replayed { ops: 0, logged: 0 };
    let segments = {
        let mut meta = txn.open_table(META).map_err(unavailable)?;
        let stored = meta.get("format").map_err(unavailable)?.map(|v| v.value());
        match stored {
            Some(FORMAT_VERSION) => {}
            // Version 2 only adds: tombstones and `DELETED`, created below.
            Some(FORMAT_VERSION_1) => {
                meta.insert("format", FORMAT_VERSION).map_err(unavailable)?;
            }
            Some(other) => {
                return Err(StoreError::Corrupt(format!(
                    "store format {other}, this build reads {FORMAT_VERSION}"
                )));
            }
            None => {
                meta.insert("format", FORMAT_VERSION).map_err(unavailable)?;
            }
        }
        txn.open_table(ROOMS).map_err(unavailable)?;
        txn.open_table(MEMBERSHIPS).map_err(unavailable)?;
        txn.open_table(SNAPSHOTS).map_err(unavailable)?;
        txn.open_table(SNAPSHOT_CHUNKS).map_err(unavailable)?;
        txn.open_table(WEBHOOK_CURSORS).map_err(unavailable)?;
        txn.open_table(WEBHOOK_MARKS).map_err(unavailable)?;
        let mut ops = txn.open_table(OPS).map_err(unavailable)?;
        let mut kinds = txn.open_table(KINDS).map_err(unavailable)?;
        let deleted = txn.open_table(DELETED).map_err(unavailable)?;
        let mut apply = |record: &[u8]| -> StoreResult<()> {
            for (room, rows) in codec::decode_journal(record)? {
                // Journaled before the room was deleted: gone with it.
                let floor = deleted
                    .get(room)
                    .map_err(unavailable)?
                    .map_or(0, |v| v.value());
                for (seq, kind, value) in rows {
                    if seq < floor {
                        continue;
                    }
                    let old = ops.insert((room, seq), value).map_err(unavailable)?;
                    if let Some(old) = old {
                        // The fence never lets two ops share a seq, so a
                        // logged op is the journaled one, moved already.
                        if old.value() != value {
                            return Err(StoreError::Corrupt(format!(
                                "room {room} seq {seq}: the journal and the log disagree"
                            )));
                        }
                        replayed.logged += 1;
                    }
                    kinds.insert((room, kind, seq), ()).map_err(unavailable)?;
                    replayed.ops += 1;
                }
            }
            Ok(())
        };
        // Written by versions that kept the journal in redb.
        let legacy = txn.open_table(JOURNAL).map_err(unavailable)?;
        for entry in legacy.iter().map_err(unavailable)? {
            let (_, record) = entry.map_err(unavailable)?;
            apply(record.value())?;
        }
        journal::replay(path, &mut apply)?
    };
    txn.delete_table(JOURNAL).map_err(unavailable)?;
    txn.open_table(JOURNAL).map_err(unavailable)?;
    txn.commit().map_err(unavailable)?;
    // Only now are the segments' ops durable elsewhere. A segment that
    // cannot be deleted is replayed again next time, which is harmless; but
    // the fresh segment must not share its name with an old one.
    journal::delete(path, &segments.segments);
    let journal = journal::Journal::start(path, segments.next_key, segment_bytes).map_err(|e| {
        StoreError::Unavailable(format!(
            "cannot start the journal of {}: {e}",
            path.display()
        ))
    })?;
    Ok((replayed, journal))
}

/// An append as the writer thread takes it. Encoded here, on the caller's
/// thread, so the one writer thread only writes.
fn encode_append(
    room: &RoomId,
    first: Seq,
    batch: &[OpEvent],
    writer: &Writer,
) -> StoreResult<Write> {
    check_batch(room, first, batch)?;
    let rows = batch
        .iter()
        .map(|event| {
            Ok((
                event.seq.get(),
                PendingOp {
                    kind: event.op.kind().code(),
                    value: codec::encode_op(event, writer)?.into(),
                },
            ))
        })
        .collect::<StoreResult<Vec<_>>>()?;
    let values: Vec<(u8, &[u8])> = rows.iter().map(|(_, op)| (op.kind, &*op.value)).collect();
    let record = codec::encode_journal(room.as_str(), first.get(), &values)?;
    Ok(Write::Append {
        room: room.as_str().to_owned(),
        first: first.get(),
        rows,
        record,
    })
}

/// A redb failure: the store could not do what was asked, and for writes
/// the outcome is unknown to the caller.
fn unavailable(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Unavailable(e.into().to_string())
}

#[async_trait]
impl StoreReader for EmbeddedStore {
    async fn room(&self, id: &RoomId) -> StoreResult<Option<RoomRecord>> {
        let id = id.as_str().to_owned();
        self.read(move |txn| {
            let rooms = txn.open_table(ROOMS).map_err(unavailable)?;
            let record = rooms.get(id.as_str()).map_err(unavailable)?;
            record.map(|r| codec::decode_room(r.value())).transpose()
        })
        .await
    }

    async fn rooms_of_user(&self, user: &UserId) -> StoreResult<Vec<RoomRecord>> {
        let user = user.as_str().to_owned();
        self.read(move |txn| {
            let memberships = txn.open_table(MEMBERSHIPS).map_err(unavailable)?;
            let rooms = txn.open_table(ROOMS).map_err(unavailable)?;
            let mut out = Vec::new();
            // Every (user, room) key sorts at or after (user, ""); stop at
            // the first key of another user.
            for entry in memberships
                .range((user.as_str(), "")..)
                .map_err(unavailable)?
            {
                let (key, _) = entry.map_err(unavailable)?;
                let (member, room) = key.value();
                if member != user {
                    break;
                }
                match rooms.get(room).map_err(unavailable)? {
                    Some(record) => out.push(codec::decode_room(record.value())?),
                    None => {
                        return Err(StoreError::Corrupt(format!(
                            "membership of {member} in missing room {room}"
                        )));
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn rooms_of_user_page(
        &self,
        user: &UserId,
        page: &RoomsPage,
    ) -> StoreResult<Vec<RoomRecord>> {
        if page.limit == 0 {
            return Ok(Vec::new());
        }
        let user = user.as_str().to_owned();
        let page = page.clone();
        self.read(move |txn| {
            let memberships = txn.open_table(MEMBERSHIPS).map_err(unavailable)?;
            let rooms = txn.open_table(ROOMS).map_err(unavailable)?;
            let mut out = Vec::new();
            // The user's keys after (user, after), or from (user, ""):
            // one range scan of the index, ended at the first key of
            // another user or a full page. A kind filter skips the user's
            // other rooms, never anyone else's.
            let from = page.after.as_ref().map_or("", |after| after.as_str());
            for entry in memberships
                .range((user.as_str(), from)..)
                .map_err(unavailable)?
            {
                let (key, _) = entry.map_err(unavailable)?;
                let (member, room) = key.value();
                if member != user {
                    break;
                }
                let Some(record) = rooms.get(room).map_err(unavailable)? else {
                    return Err(StoreError::Corrupt(format!(
                        "membership of {member} in missing room {room}"
                    )));
                };
                let record = codec::decode_room(record.value())?;
                if page.wants(&record) {
                    out.push(record);
                    if out.len() == page.limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn head(&self, room: &RoomId) -> StoreResult<Seq> {
        self.read_room(
            room,
            |journaled| journaled.last_seq(),
            |txn, room, journaled| {
                let ops = txn.open_table(OPS).map_err(unavailable)?;
                let logged = ops
                    .range((room, 0u64)..=(room, u64::MAX))
                    .map_err(unavailable)?
                    .next_back()
                    .transpose()
                    .map_err(unavailable)?
                    .map(|(key, _)| key.value().1);
                Ok(Seq(logged.max(journaled.flatten()).unwrap_or(0)))
            },
        )
        .await
    }

    async fn read_log(
        &self,
        room: &RoomId,
        after: Seq,
        limit: usize,
    ) -> StoreResult<Vec<LoggedOp>> {
        let Some(from) = after.get().checked_add(1) else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.read_room(
            room,
            move |journaled| {
                journaled
                    .from(from)
                    .iter()
                    .take(limit)
                    .map(|(seq, op)| (*seq, Arc::clone(&op.value)))
                    .collect::<Vec<_>>()
            },
            move |txn, room, journaled| {
                let ops = txn.open_table(OPS).map_err(unavailable)?;
                let mut logged = Vec::with_capacity(limit.min(1024));
                for entry in ops
                    .range((room, from)..=(room, u64::MAX))
                    .map_err(unavailable)?
                    .take(limit)
                {
                    let (key, value) = entry.map_err(unavailable)?;
                    let seq = key.value().1;
                    // Journaled ops are all above a tombstone (a deletion
                    // takes those below it), so one inside the page ends it.
                    if codec::is_tombstone(value.value()) {
                        return Err(StoreError::RoomDeleted(Seq(seq)));
                    }
                    logged.push((seq, codec::decode_op(value.value())?));
                }
                let journaled = journaled
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(seq, value)| Ok((seq, codec::decode_op(&value)?)))
                    .collect::<StoreResult<Vec<_>>>()?;
                Ok(merge_by_seq(logged, journaled, false, limit))
            },
        )
        .await
    }

    async fn history(
        &self,
        room: &RoomId,
        before: Seq,
        limit: usize,
        kinds: Option<&[OpKind]>,
    ) -> StoreResult<Vec<OpEvent>> {
        // Seqs start at 1: nothing lies before 1.
        if limit == 0 || before.get() <= 1 {
            return Ok(Vec::new());
        }
        let before = before.get();
        let codes = match kinds {
            None => None,
            Some(kinds) => {
                let mut codes: Vec<u8> = kinds.iter().map(|k| k.code()).collect();
                codes.sort_unstable();
                codes.dedup();
                if codes.is_empty() {
                    return Ok(Vec::new());
                }
                // Every kind requested: the plain log scan is cheaper.
                (codes.len() < OpKind::ALL.len()).then_some(codes)
            }
        };
        let wanted = codes.clone();
        self.read_room(
            room,
            move |journaled| {
                journaled
                    .below(before)
                    .iter()
                    .rev()
                    .filter(|(_, op)| wanted.as_ref().is_none_or(|w| w.contains(&op.kind)))
                    .take(limit)
                    .map(|(seq, op)| (*seq, Arc::clone(&op.value)))
                    .collect::<Vec<_>>()
            },
            move |txn, room, journaled| {
                let logged = logged_history(txn, room, before, limit, codes.as_deref())?;
                let journaled = journaled
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(seq, value)| Ok((seq, codec::decode_event(&value)?)))
                    .collect::<StoreResult<Vec<_>>>()?;
                Ok(merge_by_seq(logged, journaled, true, limit))
            },
        )
        .await
    }

    async fn latest_snapshot(&self, room: &RoomId) -> StoreResult<Option<Snapshot>> {
        let room = room.as_str().to_owned();
        self.read(move |txn| {
            let headers = txn.open_table(SNAPSHOTS).map_err(unavailable)?;
            let Some(header) = headers.get(room.as_str()).map_err(unavailable)? else {
                return Ok(None);
            };
            let (seq, count, total_len) = header.value();
            let corrupt = |what: String| StoreError::Corrupt(format!("snapshot of {room}: {what}"));
            let total = usize::try_from(total_len).map_err(|_| corrupt("too large".into()))?;
            let chunks = txn.open_table(SNAPSHOT_CHUNKS).map_err(unavailable)?;
            let mut data = Vec::with_capacity(total);
            let mut read = 0u32;
            for entry in chunks
                .range((room.as_str(), seq, 0u32)..(room.as_str(), seq, count))
                .map_err(unavailable)?
            {
                let (key, chunk) = entry.map_err(unavailable)?;
                if key.value().2 != read {
                    return Err(corrupt(format!("chunk {read} missing")));
                }
                data.extend_from_slice(chunk.value());
                read += 1;
            }
            if read != count || data.len() != total {
                return Err(corrupt(format!(
                    "{read} of {count} chunks, {} of {total} bytes",
                    data.len()
                )));
            }
            Ok(Some(Snapshot {
                seq: Seq(seq),
                data,
            }))
        })
        .await
    }
}

#[async_trait]
impl RoomCatalog for EmbeddedStore {
    async fn create_room(&self, room: &RoomRecord) -> StoreResult<()> {
        self.write(Write::CreateRoom(Box::new(room.clone()))).await
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn delete_room(&self, room: &RoomId, deletion: &Deletion) -> StoreResult<()> {
        if deletion.at == Seq::ZERO {
            return Err(StoreError::InvalidBatch("seqs start at 1".into()));
        }
        self.write(Write::DeleteRoom {
            room: room.as_str().to_owned(),
            epoch: deletion.epoch.as_str().to_owned(),
            at: deletion.at.get(),
            tombstone: codec::encode_tombstone(&deletion.writer)?,
        })
        .await
    }

    async fn update_room(&self, room: &RoomRecord) -> StoreResult<()> {
        self.write(Write::UpdateRoom(Box::new(room.clone()))).await
    }

    async fn append(
        &self,
        room: &RoomId,
        first: Seq,
        batch: &[OpEvent],
        writer: &Writer,
    ) -> StoreResult<()> {
        let write = encode_append(room, first, batch, writer)?;
        self.write(write).await
    }

    fn append_then(
        self: Arc<Self>,
        room: RoomId,
        first: Seq,
        batch: Vec<OpEvent>,
        writer: Writer,
        done: AppendDone,
    ) {
        let write = match encode_append(&room, first, &batch, &writer) {
            Ok(write) => write,
            Err(e) => return done(batch, Err(e)),
        };
        self.submit(write, Reply::callback(move |result| done(batch, result)));
    }

    async fn put_snapshot(&self, room: &RoomId, snapshot: &Snapshot) -> StoreResult<()> {
        let chunks: Vec<Vec<u8>> = snapshot
            .data
            .chunks(SNAPSHOT_CHUNK_SIZE)
            .map(<[u8]>::to_vec)
            .collect();
        let count = u32::try_from(chunks.len())
            .map_err(|_| StoreError::InvalidBatch("snapshot too large".into()))?;
        self.write(Write::PutSnapshot {
            room: room.as_str().to_owned(),
            seq: snapshot.seq.get(),
            total_len: snapshot.data.len() as u64,
            count,
            chunks,
        })
        .await
    }

    fn webhook_log(self: Arc<Self>) -> Option<Arc<dyn WebhookLog>> {
        Some(self)
    }
}

#[async_trait]
impl WebhookLog for EmbeddedStore {
    async fn webhook_cursors(&self, room: &RoomId) -> StoreResult<Vec<(String, Seq)>> {
        let room = room.as_str().to_owned();
        self.read(move |txn| {
            let cursors = txn.open_table(WEBHOOK_CURSORS).map_err(unavailable)?;
            let mut out = Vec::new();
            for entry in cursors.range((room.as_str(), "")..).map_err(unavailable)? {
                let (key, seq) = entry.map_err(unavailable)?;
                let (of, endpoint) = key.value();
                if of != room {
                    break;
                }
                out.push((endpoint.to_owned(), Seq(seq.value())));
            }
            Ok(out)
        })
        .await
    }

    async fn set_webhook_cursor(&self, endpoint: &str, room: &RoomId, seq: Seq) -> StoreResult<()> {
        self.write(Write::Webhook(WebhookWrite::Cursor {
            room: room.as_str().to_owned(),
            endpoint: endpoint.to_owned(),
            seq: seq.get(),
        }))
        .await
    }

    async fn add_webhook_mark(&self, room: &RoomId, mark: &str) -> StoreResult<()> {
        self.write(Write::Webhook(WebhookWrite::AddMark {
            room: room.as_str().to_owned(),
            mark: mark.to_owned(),
        }))
        .await
    }

    async fn remove_webhook_mark(&self, room: &RoomId, mark: &str) -> StoreResult<()> {
        self.write(Write::Webhook(WebhookWrite::RemoveMark {
            room: room.as_str().to_owned(),
            mark: mark.to_owned(),
        }))
        .await
    }

    async fn webhook_marks(&self) -> StoreResult<Vec<(RoomId, String)>> {
        self.read(move |txn| {
            let marks = txn.open_table(WEBHOOK_MARKS).map_err(unavailable)?;
            let mut out = Vec::new();
            for entry in marks.iter().map_err(unavailable)? {
                let (key, _) = entry.map_err(unavailable)?;
                let (room, mark) = key.value();
                let room = RoomId::parse(room).map_err(|e| {
                    StoreError::Corrupt(format!("webhook mark of room {room}: {e}"))
                })?;
                out.push((room, mark.to_owned()));
            }
            Ok(out)
        })
        .await
    }
}

/// The log tables' part of a history page: up to `limit` ops below
/// `before` of the kinds `codes` (all when `None`), newest first.
fn logged_history(
    txn: &ReadTransaction,
    room: &str,
    before: u64,
    limit: usize,
    codes: Option<&[u8]>,
) -> StoreResult<Vec<(u64, OpEvent)>> {
    let ops = txn.open_table(OPS).map_err(unavailable)?;
    let mut out = Vec::with_capacity(limit.min(1024));
    match codes {
        None => {
            for entry in ops
                .range((room, 1u64)..(room, before))
                .map_err(unavailable)?
                .rev()
                .take(limit)
            {
                let (key, value) = entry.map_err(unavailable)?;
                // Below a tombstone lies nothing of the room above it.
                if codec::is_tombstone(value.value()) {
                    break;
                }
                out.push((key.value().1, codec::decode_event(value.value())?));
            }
        }
        Some(codes) => {
            let index = txn.open_table(KINDS).map_err(unavailable)?;
            for seq in newest_of_kinds(&index, room, codes, before, limit)? {
                let value = ops.get((room, seq)).map_err(unavailable)?.ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "kind index of room {room} names missing seq {seq}"
                    ))
                })?;
                out.push((seq, codec::decode_event(value.value())?));
            }
        }
    }
    Ok(out)
}

/// The up to `limit` highest seqs below `before` among `codes`, newest
/// first: a k-way merge of the kind index's per-kind runs, each read
/// backwards, so the page costs `limit` index entries per kind at most.
fn newest_of_kinds(
    index: &redb::ReadOnlyTable<(&'static str, u8, u64), ()>,
    room: &str,
    codes: &[u8],
    before: u64,
    limit: usize,
) -> StoreResult<Vec<u64>> {
    let mut runs = Vec::with_capacity(codes.len());
    for &code in codes {
        runs.push(
            index
                .range((room, code, 1u64)..(room, code, before))
                .map_err(unavailable)?
                .rev(),
        );
    }
    let next_seq = |run: &mut std::iter::Rev<redb::Range<'_, (&'static str, u8, u64), ()>>| {
        run.next()
            .transpose()
            .map(|entry| entry.map(|(key, _)| key.value().2))
            .map_err(unavailable)
    };
    let mut heads = Vec::with_capacity(runs.len());
    for run in &mut runs {
        heads.push(next_seq(run)?);
    }
    let mut out = Vec::with_capacity(limit.min(1024));
    while out.len() < limit {
        // A handful of kinds at most: a linear pick beats a heap.
        let Some((i, seq)) = heads
            .iter()
            .enumerate()
            .filter_map(|(i, head)| head.map(|seq| (i, seq)))
            .max_by_key(|&(_, seq)| seq)
        else {
            break;
        };
        out.push(seq);
        heads[i] = next_seq(&mut runs[i])?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use collab_protocol::Seq;
    use redb::ReadableTableMetadata;

    use super::*;
    use crate::testsuite::{points_batch, unique_room, writer};

    /// A file of format 1 (before deletions) opens, and is format 2 after.
    #[test]
    fn a_format_1_file_is_upgraded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("v1.redb");
        let room = unique_room("v1");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        {
            let store = EmbeddedStore::open(&path).expect("open");
            rt.block_on(store.append(&room, Seq(1), &points_batch(&room, 1, 2), &writer("n", 1)))
                .expect("append");
        }
        {
            // What version 1 left: its format number, no deleted rooms.
            let db = Database::create(&path).expect("open");
            let txn = db.begin_write().expect("write");
            txn.open_table(META)
                .expect("meta")
                .insert("format", FORMAT_VERSION_1)
                .expect("insert");
            txn.delete_table(DELETED).expect("delete table");
            txn.commit().expect("commit");
        }
        let store = EmbeddedStore::open(&path).expect("upgrade");
        assert_eq!(rt.block_on(store.head(&room)).expect("head"), Seq(2));
        let txn = store.shared.db.begin_read().expect("read");
        let format = txn
            .open_table(META)
            .expect("meta")
            .get("format")
            .expect("get");
        assert_eq!(format.map(|v| v.value()), Some(FORMAT_VERSION));
        assert!(txn.open_table(DELETED).is_ok());
    }

    /// A data dir written by the versions that kept the journal in the
    /// redb `JOURNAL` table still opens: its rows are replayed into the log
    /// tables and the table is emptied.
    #[test]
    fn a_table_journal_of_an_earlier_version_is_replayed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("old.redb");
        let room = unique_room("legacy");
        let w = writer("node-a", 3);
        {
            let db = Database::create(&path).expect("create");
            // What the table-journal version left: the tables, and two
            // group rows (keys from 0) never checkpointed.
            init(&db, &path, 0).expect("init");
            journal::delete(
                &path,
                &journal::segments(&path)
                    .expect("list")
                    .into_iter()
                    .map(|(_, p)| p)
                    .collect::<Vec<_>>(),
            );
            let txn = db.begin_write().expect("write");
            {
                let mut table = txn.open_table(JOURNAL).expect("journal");
                for (key, first) in [(0u64, 1u64), (1, 3)] {
                    let batch = points_batch(&room, first, 2);
                    let values: Vec<Vec<u8>> = batch
                        .iter()
                        .map(|event| codec::encode_op(event, &w).expect("op"))
                        .collect();
                    let rows: Vec<(u8, &[u8])> = batch
                        .iter()
                        .zip(&values)
                        .map(|(event, value)| (event.op.kind().code(), value.as_slice()))
                        .collect();
                    let record = codec::encode_journal(room.as_str(), first, &rows).expect("row");
                    table.insert(key, record.as_slice()).expect("insert");
                }
            }
            txn.commit().expect("commit");
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let store = EmbeddedStore::open(&path).expect("open");
        let stats = store.stats();
        assert_eq!((stats.replayed_ops, stats.replayed_logged_ops), (4, 0));
        let log = rt
            .block_on(store.read_log(&room, Seq(0), 10))
            .expect("read");
        let seqs: Vec<u64> = log.iter().map(|op| op.event.seq.get()).collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
        assert!(log.iter().all(|op| op.writer == w));
        {
            let txn = store.shared.db.begin_read().expect("read");
            let table = txn.open_table(JOURNAL).expect("journal");
            assert_eq!(table.len().expect("len"), 0, "the legacy journal emptied");
        }
        // Appends continue, into a segment file.
        rt.block_on(store.append(&room, Seq(5), &points_batch(&room, 5, 1), &w))
            .expect("append");
        drop(store);
        let store = EmbeddedStore::open(&path).expect("reopen");
        assert_eq!(store.stats().replayed_ops, 1);
        assert_eq!(rt.block_on(store.head(&room)).expect("head"), Seq(5));
    }
}
