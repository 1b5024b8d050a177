//! [`EmbeddedStore`]: the [`Store`] of `collab serve`, one redb file in the
//! data dir.
//!
//! Writes go to one writer thread that commits the queued writes of all
//! rooms together, one fsync per group (see [`writer`]). Reads run on
//! tokio's blocking pool, each in its own redb read transaction: redb's
//! MVCC readers never wait for the writer, and a read sees one consistent
//! committed state (a snapshot's header and chunks, a page of history). No
//! method blocks a tokio worker, except [`EmbeddedStore::open`] (start-up)
//! and dropping the store, which waits for the writes already queued.

mod codec;
mod tables;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use collab_protocol::{OpEvent, OpKind, RoomId, Seq, UserId};
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable};
use tokio::sync::oneshot;

use crate::memory::members_to_index;
use crate::{LoggedOp, RoomRecord, Snapshot, Store, StoreError, StoreResult, Writer, check_batch};
pub use tables::SNAPSHOT_CHUNK_SIZE;
use tables::{FORMAT_VERSION, KINDS, MEMBERSHIPS, META, OPS, ROOMS, SNAPSHOT_CHUNKS, SNAPSHOTS};
use writer::{Counters, Request, Write};

/// A [`Store`] in one redb file, with group commit across rooms.
pub struct EmbeddedStore {
    db: Arc<Database>,
    path: PathBuf,
    /// `Option` so that `Drop` can close the queue before joining the
    /// writer thread.
    queue: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
}

/// What the writer thread has done since the store was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmbeddedStoreStats {
    /// Committed write transactions, each one fsync.
    pub transactions: u64,
    /// Transactions whose apply or commit failed (all their requests got
    /// `Unavailable`).
    pub failed_transactions: u64,
    /// Write requests handled (appends, room creations, snapshots), whether
    /// they succeeded or not.
    pub requests: u64,
    /// Append batches committed.
    pub appends: u64,
    /// Ops committed (the sum of the committed batches' lengths).
    pub ops: u64,
    /// Appends and room creations rejected with `Conflict`.
    pub conflicts: u64,
    pub rooms_created: u64,
    /// Snapshots written (older ones that were ignored are not counted).
    pub snapshots: u64,
    /// The most requests one transaction carried.
    pub largest_group: u64,
    /// Time the writer spent applying requests to its transactions.
    pub apply_time: Duration,
    /// Time the writer spent in `commit` (mostly fsync).
    pub commit_time: Duration,
}

impl EmbeddedStoreStats {
    /// The change from `earlier` to `self` (for measuring one phase);
    /// `largest_group` stays the overall maximum.
    pub fn since(&self, earlier: &EmbeddedStoreStats) -> EmbeddedStoreStats {
        EmbeddedStoreStats {
            transactions: self.transactions - earlier.transactions,
            failed_transactions: self.failed_transactions - earlier.failed_transactions,
            requests: self.requests - earlier.requests,
            appends: self.appends - earlier.appends,
            ops: self.ops - earlier.ops,
            conflicts: self.conflicts - earlier.conflicts,
            rooms_created: self.rooms_created - earlier.rooms_created,
            snapshots: self.snapshots - earlier.snapshots,
            largest_group: self.largest_group,
            apply_time: self.apply_time.saturating_sub(earlier.apply_time),
            commit_time: self.commit_time.saturating_sub(earlier.commit_time),
        }
    }
}

impl EmbeddedStore {
    /// The file name [`EmbeddedStore::open_in_dir`] uses.
    pub const FILE_NAME: &'static str = "collab.redb";

    /// Opens (or creates) the store in the redb file at `path`, creating
    /// missing parent directories. Blocking: call it at start-up (after a
    /// crash redb repairs the file here, which reads all of it).
    pub fn open(path: impl AsRef<Path>) -> StoreResult<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let db = Database::create(&path)
            .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
        init(&db)?;
        let db = Arc::new(db);
        let counters = Arc::new(Counters::default());
        let (queue, requests) = mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("collab-store-writer".into())
            .spawn({
                let db = Arc::clone(&db);
                let counters = Arc::clone(&counters);
                move || writer::run(db, requests, counters)
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start writer thread: {e}")))?;
        tracing::info!(path = %path.display(), "embedded store open");
        Ok(EmbeddedStore {
            db,
            path,
            queue: Some(queue),
            writer: Some(writer),
            counters,
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

    /// The writer's counters so far.
    pub fn stats(&self) -> EmbeddedStoreStats {
        let c = &self.counters;
        let get = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        EmbeddedStoreStats {
            transactions: get(&c.transactions),
            failed_transactions: get(&c.failed_transactions),
            requests: get(&c.requests),
            appends: get(&c.appends),
            ops: get(&c.ops),
            conflicts: get(&c.conflicts),
            rooms_created: get(&c.rooms_created),
            snapshots: get(&c.snapshots),
            largest_group: get(&c.largest_group),
            apply_time: Duration::from_nanos(get(&c.apply_nanos)),
            commit_time: Duration::from_nanos(get(&c.commit_nanos)),
        }
    }

    /// Hands `write` to the writer thread and waits for its commit.
    async fn write(&self, write: Write) -> StoreResult<()> {
        let (reply, answer) = oneshot::channel();
        let queue = self
            .queue
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable("store is closed".into()))?;
        queue
            .send(Request { write, reply })
            .map_err(|_| StoreError::Unavailable("store writer thread stopped".into()))?;
        answer.await.map_err(|_| {
            // The writer drops a reply only if it died mid-group: the write
            // may or may not have been committed.
            StoreError::Unavailable("store writer thread stopped".into())
        })?
    }

    /// Runs `read` in a fresh read transaction on the blocking pool.
    async fn read<T, F>(&self, read: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&ReadTransaction) -> StoreResult<T> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(unavailable)?;
            read(&txn)
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

/// Creates every table (so that read transactions can always open them)
/// and checks the file's format version.
fn init(db: &Database) -> StoreResult<()> {
    let txn = db.begin_write().map_err(unavailable)?;
    {
        let mut meta = txn.open_table(META).map_err(unavailable)?;
        let stored = meta.get("format").map_err(unavailable)?.map(|v| v.value());
        match stored {
            Some(FORMAT_VERSION) => {}
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
        txn.open_table(OPS).map_err(unavailable)?;
        txn.open_table(KINDS).map_err(unavailable)?;
        txn.open_table(SNAPSHOTS).map_err(unavailable)?;
        txn.open_table(SNAPSHOT_CHUNKS).map_err(unavailable)?;
    }
    txn.commit().map_err(unavailable)
}

/// A redb failure: the store could not do what was asked, and for writes
/// the outcome is unknown to the caller.
fn unavailable(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Unavailable(e.into().to_string())
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn create_room(&self, room: &RoomRecord) -> StoreResult<()> {
        let write = Write::CreateRoom {
            id: room.id.as_str().to_owned(),
            record: codec::encode_room(room)?,
            users: members_to_index(room)
                .map(|user| user.as_str().to_owned())
                .collect(),
        };
        self.write(write).await
    }

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

    async fn append(
        &self,
        room: &RoomId,
        first: Seq,
        batch: &[OpEvent],
        writer: &Writer,
    ) -> StoreResult<()> {
        check_batch(room, first, batch)?;
        // Encode here, on the caller's task, so the one writer thread only
        // touches the B-trees.
        let rows = batch
            .iter()
            .map(|event| {
                Ok((
                    event.seq.get(),
                    event.op.kind().code(),
                    codec::encode_op(event, writer)?,
                ))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        self.write(Write::Append {
            room: room.as_str().to_owned(),
            first: first.get(),
            rows,
        })
        .await
    }

    async fn head(&self, room: &RoomId) -> StoreResult<Seq> {
        let room = room.as_str().to_owned();
        self.read(move |txn| {
            let ops = txn.open_table(OPS).map_err(unavailable)?;
            let last = ops
                .range((room.as_str(), 0u64)..=(room.as_str(), u64::MAX))
                .map_err(unavailable)?
                .next_back()
                .transpose()
                .map_err(unavailable)?
                .map(|(key, _)| key.value().1);
            Ok(Seq(last.unwrap_or(0)))
        })
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
        let room = room.as_str().to_owned();
        self.read(move |txn| {
            let ops = txn.open_table(OPS).map_err(unavailable)?;
            let mut out = Vec::with_capacity(limit.min(1024));
            for entry in ops
                .range((room.as_str(), from)..=(room.as_str(), u64::MAX))
                .map_err(unavailable)?
                .take(limit)
            {
                let (_, value) = entry.map_err(unavailable)?;
                out.push(codec::decode_op(value.value())?);
            }
            Ok(out)
        })
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
        let room = room.as_str().to_owned();
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
        self.read(move |txn| {
            let ops = txn.open_table(OPS).map_err(unavailable)?;
            match codes {
                None => {
                    let mut out = Vec::with_capacity(limit.min(1024));
                    for entry in ops
                        .range((room.as_str(), 1u64)..(room.as_str(), before))
                        .map_err(unavailable)?
                        .rev()
                        .take(limit)
                    {
                        let (_, value) = entry.map_err(unavailable)?;
                        out.push(codec::decode_event(value.value())?);
                    }
                    Ok(out)
                }
                Some(codes) => {
                    let index = txn.open_table(KINDS).map_err(unavailable)?;
                    let seqs = newest_of_kinds(&index, &room, &codes, before, limit)?;
                    let mut out = Vec::with_capacity(seqs.len());
                    for seq in seqs {
                        let value = ops
                            .get((room.as_str(), seq))
                            .map_err(unavailable)?
                            .ok_or_else(|| {
                                StoreError::Corrupt(format!(
                                    "kind index of room {room} names missing seq {seq}"
                                ))
                            })?;
                        out.push(codec::decode_event(value.value())?);
                    }
                    Ok(out)
                }
            }
        })
        .await
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
