//! The writer thread: group commit across rooms, and checkpoints.
//!
//! Every durable write costs an fsync, so committing every room's batch on
//! its own would cap the node at one batch per fsync. Instead one dedicated
//! thread owns every write: it takes a request, yields the CPU once (so
//! the threads about to queue more can), drains whatever else is
//! already queued (bounded by [`MAX_GROUP_REQUESTS`] and
//! [`MAX_GROUP_BYTES`]), applies them all together, makes them durable
//! once, and only then answers every caller. Under load the group grows by
//! itself (requests queue while the previous fsync runs), so 1,000 busy
//! rooms cost one fsync per group, not 1,000.
//!
//! Appends go to the journal (see [`super::pending`] for why, and
//! [`super::journal`] for the file): a group's accepted batches become one
//! journal record, keyed by a counter, written and `fdatasync`ed; then
//! their ops join the in-memory [`Pending`] index that readers merge. A
//! group of appends only (the common case) opens no redb write transaction
//! at all; the fence reads the log table through a read transaction, and
//! only when a room's cached log head is missing. A group that also
//! creates rooms or writes snapshots commits those in one redb transaction
//! with `Durability::Immediate` first, then writes its journal record. When
//! the index grows past a threshold, the writer checkpoints: it moves the
//! journaled ops into the log and kind-index tables and deletes the journal
//! segments they came from.
//!
//! A checkpoint runs as a *cycle* of small *slices*, interleaved with group
//! commits. Moving an op costs about 11 µs (two B-tree inserts), so one
//! transaction for a full journal (32,768 ops) held every room's appends,
//! and so every client's ack, for about 350 ms. Instead:
//!
//! - A cycle starts by sealing the journal's segment (later groups append
//!   to a fresh one, named by their key `J`) and fixing its extent: the
//!   records below `J`, that is the sealed segments, and per room the
//!   highest journaled seq: everything made durable before the cycle
//!   started.
//! - Each slice moves the next at most `checkpoint_slice_ops` of those ops,
//!   rooms in id order, in one transaction; after its commit the writer
//!   removes exactly the moved ops from [`Pending`], then serves whatever
//!   groups queued meanwhile before it does the next slice. A group waits
//!   for at most one slice (10-20 ms at the default size).
//! - After a slice the writer rests, serving groups only, for
//!   [`SLICE_REST`] times as long as the slice took, so a cycle takes at
//!   most a quarter of the writer's time. A cycle of 32,768 ops is about
//!   400 ms of CPU: run back to back on a core the server's runtime shares,
//!   it took half of that core for as long, and every connection's frames,
//!   cursors included, waited (a 230 ms p99 second at 200 boards).
//!   Explicit checkpoints do not rest.
//! - Once the last slice's transaction committed, the sealed segments are
//!   deleted (and the directory synced). Until then they stay: a crash
//!   mid-cycle, or before the deletion, replays them at open, and the ops
//!   that were already moved are inserted again with the same keys and
//!   values (see `init`), which changes nothing.
//! - Ops appended during a cycle stay journaled for the next one (or, if a
//!   room writes into a gap inside the extent, may be moved early; their
//!   record stays until a later cycle, which is as harmless as a replay).
//! - If appends outpace the slices (the journal twice over a threshold),
//!   the writer runs slices back to back until it is not: groups then wait
//!   for about as many slices as they brought ops, which bounds the journal.
//!
//! Since rooms are moved in id order and a room's ops are contiguous in the
//! log tables, slicing costs little: each leaf is still dirtied about once
//! per cycle, and a slice adds one fsync and the walk from the root.
//!
//! Each request is checked against everything already written, including
//! earlier requests of its own group, before it writes anything, so a
//! rejected request (a fencing conflict, a duplicate room) leaves no trace
//! and does not affect the others. A storage error while applying, in the
//! redb commit, or in the journal's write or fsync fails the whole group:
//! every request of it gets `Unavailable` (its outcome unknown; the
//! journal cuts a failed record off before it takes another, see
//! [`super::journal`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use redb::{
    Database, Durability, ReadOnlyTable, ReadableDatabase, ReadableTable, Table, WriteTransaction,
};
use tokio::sync::oneshot;

use super::EmbeddedStoreOptions;
use super::codec;
use super::journal::Journal;
use super::pending::{Pending, PendingOp};
use super::tables::{
    DELETED, KINDS, MEMBERSHIPS, OPS, ROOMS, SNAPSHOT_CHUNKS, SNAPSHOTS, WEBHOOK_CURSORS,
    WEBHOOK_MARKS,
};
use crate::memory::members_to_index;
use crate::{RoomRecord, StoreError, StoreResult};

/// After each checkpoint slice the writer serves only groups for this many
/// times the slice's duration (see the module docs).
const SLICE_REST: u32 = 3;

/// At most this many requests share one transaction, so that one group's
/// latency stays bounded even when the queue is long.
pub(crate) const MAX_GROUP_REQUESTS: usize = 4096;
/// A group stops growing once it carries this many bytes (a few large
/// snapshots must not hold thousands of small appends behind one huge
/// commit).
pub(crate) const MAX_GROUP_BYTES: usize = 64 << 20;
/// The writer forgets its cached log heads past this many rooms (they are
/// a cache: a forgotten one costs one lookup).
const MAX_CACHED_HEADS: usize = 100_000;

/// What the writer thread and the readers share.
pub(crate) struct Shared {
    pub(crate) db: Database,
    /// Journaled ops not yet in the log tables. The writer changes it only
    /// right after a commit (a group's adds its ops, a checkpoint slice's
    /// removes the ops it moved); readers take the read lock while they open
    /// their read transaction, which makes the pair consistent (see
    /// `EmbeddedStore::read_room`).
    pub(crate) pending: RwLock<Pending>,
    pub(crate) counters: Counters,
    pub(crate) options: EmbeddedStoreOptions,
}

impl Shared {
    pub(crate) fn pending(&self) -> RwLockReadGuard<'_, Pending> {
        // The writer's changes to `Pending` are plain map and vector
        // inserts and drains, which leave it whole even if a panic
        // interrupts them.
        self.pending.read().unwrap_or_else(|p| p.into_inner())
    }

    fn pending_mut(&self) -> RwLockWriteGuard<'_, Pending> {
        self.pending.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// A write for the writer thread, with where its outcome goes.
pub(crate) struct Request {
    pub(crate) write: Write,
    pub(crate) reply: Reply,
}

/// Where a write's outcome goes: a channel its caller awaits, or a
/// callback the writer thread runs (see `Store::append_then`), which
/// spares the caller's runtime the task that would await the channel.
pub(crate) struct Reply(Option<ReplyTo>);

enum ReplyTo {
    Channel(oneshot::Sender<StoreResult<()>>),
    Callback(Box<dyn FnOnce(StoreResult<()>) + Send>),
}

impl Reply {
    pub(crate) fn channel() -> (Reply, oneshot::Receiver<StoreResult<()>>) {
        let (tx, rx) = oneshot::channel();
        (Reply(Some(ReplyTo::Channel(tx))), rx)
    }

    pub(crate) fn callback(done: impl FnOnce(StoreResult<()>) + Send + 'static) -> Reply {
        Reply(Some(ReplyTo::Callback(Box::new(done))))
    }

    pub(crate) fn send(mut self, outcome: StoreResult<()>) {
        match self.0.take() {
            // The caller may have stopped waiting; the write stands.
            Some(ReplyTo::Channel(tx)) => {
                let _ = tx.send(outcome);
            }
            Some(ReplyTo::Callback(done)) => done(outcome),
            None => {}
        }
    }
}

impl Drop for Reply {
    /// A reply dropped unsent (the writer died mid-group, or the queue was
    /// closed) means the outcome is unknown. A channel says so by closing;
    /// a callback is told.
    fn drop(&mut self) {
        if let Some(ReplyTo::Callback(done)) = self.0.take() {
            done(Err(StoreError::Unavailable(
                "store writer thread stopped".into(),
            )));
        }
    }
}

/// The writes the writer thread applies. Values arrive encoded: callers
/// serialize on their own task so the single writer thread spends its time
/// on the B-trees only.
pub(crate) enum Write {
    Append {
        room: String,
        first: u64,
        /// The batch's ops, contiguous from `first`.
        rows: Vec<(u64, PendingOp)>,
        /// The same batch as one journal record.
        record: Vec<u8>,
    },
    /// Encoded by the writer, which sets its floor (see
    /// `RoomRecord::floor`).
    CreateRoom(Box<RoomRecord>),
    /// A room's new name and members (see `Store::update_room`), with its
    /// memberships, in one transaction.
    UpdateRoom(Box<RoomRecord>),
    /// A room's deletion (see `Store::delete_room`): the tombstone, then
    /// the removal of everything below it, in one transaction.
    DeleteRoom {
        room: String,
        epoch: String,
        at: u64,
        /// The encoded tombstone.
        tombstone: Vec<u8>,
    },
    PutSnapshot {
        room: String,
        seq: u64,
        total_len: u64,
        /// `chunks.len()`, checked to fit the header by the caller.
        count: u32,
        chunks: Vec<Vec<u8>>,
    },
    /// Checkpoint now, whatever the thresholds; answered once everything
    /// journaled before it is in the log tables.
    Checkpoint,
    /// A change of the webhook dispatcher's state (see `WebhookLog`).
    Webhook(WebhookWrite),
}

/// A change of the webhook dispatcher's cursors and marks.
#[derive(Debug)]
pub(crate) enum WebhookWrite {
    Cursor {
        room: String,
        endpoint: String,
        seq: u64,
    },
    AddMark {
        room: String,
        mark: String,
    },
    RemoveMark {
        room: String,
        mark: String,
    },
}

impl Write {
    fn size(&self) -> usize {
        match self {
            Write::Append { record, .. } => record.len(),
            Write::CreateRoom(_)
            | Write::UpdateRoom(_)
            | Write::DeleteRoom { .. }
            | Write::Webhook(_) => 256,
            Write::PutSnapshot { total_len, .. } => {
                usize::try_from(*total_len).unwrap_or(usize::MAX)
            }
            Write::Checkpoint => 0,
        }
    }
}

/// Counters the writer keeps; read through [`super::EmbeddedStore::stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) transactions: AtomicU64,
    pub(crate) failed_transactions: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) appends: AtomicU64,
    pub(crate) ops: AtomicU64,
    pub(crate) conflicts: AtomicU64,
    pub(crate) rooms_created: AtomicU64,
    pub(crate) rooms_deleted: AtomicU64,
    pub(crate) snapshots: AtomicU64,
    pub(crate) largest_group: AtomicU64,
    pub(crate) apply_nanos: AtomicU64,
    pub(crate) commit_nanos: AtomicU64,
    pub(crate) checkpoints: AtomicU64,
    pub(crate) checkpoint_slices: AtomicU64,
    pub(crate) checkpointed_ops: AtomicU64,
    pub(crate) checkpoint_nanos: AtomicU64,
    pub(crate) longest_slice_nanos: AtomicU64,
    pub(crate) longest_pause_nanos: AtomicU64,
    pub(crate) replayed_ops: AtomicU64,
    pub(crate) replayed_logged_ops: AtomicU64,
}

/// What one applied request changed, counted once its group committed.
#[derive(Default)]
struct Tally {
    appends: u64,
    ops: u64,
    conflicts: u64,
    rooms_created: u64,
    rooms_deleted: u64,
    snapshots: u64,
}

/// The writer thread's body: runs until every sender is gone and the queue
/// is drained, so dropping the store finishes the writes already queued (a
/// checkpoint cycle then running is left for the next open to finish).
///
/// Each turn commits the queued requests as one group, then does one
/// checkpoint slice if a cycle runs: groups wait for at most one slice
/// (unless the journal is twice over its thresholds, see below).
pub(crate) fn run(shared: &Shared, journal: Journal, queue: Receiver<Request>) {
    let mut writer = Writer::new(shared, journal);
    let mut group: Vec<Request> = Vec::new();
    let mut checkpoint_requests = Vec::new();
    // Explicit checkpoints, each with the journal key below which it needs
    // every row moved: answered by the first cycle covering that much.
    let mut waiting: Vec<(u64, Reply)> = Vec::new();
    // While a cycle runs: no slice before this (see `SLICE_REST`).
    let mut rest_until: Option<Instant> = None;
    loop {
        // Resting only while nothing presses: no explicit checkpoint
        // waits, and the journal is not backlogged.
        let resting = rest_until
            .filter(|until| waiting.is_empty() && !writer.backlogged() && *until > Instant::now());
        // With checkpoint work to do, look at the queue without blocking,
        // or block only until the rest is over.
        let first = if let Some(until) = resting {
            match queue.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(request) => Some(request),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        } else if writer.cycle.is_some() || !waiting.is_empty() {
            match queue.try_recv() {
                Ok(request) => Some(request),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => break,
            }
        } else {
            match queue.recv() {
                Ok(request) => Some(request),
                Err(_) => break,
            }
        };
        if first.is_some() {
            // Give way once before the group closes: on a core shared with
            // the runtime, its threads then queue the appends they are
            // about to send, and the group takes them. Groups grow without
            // a timer (a sleeping writer on a busy core wakes late), and
            // each fsync saved is a disk request saved: at 175 boards the
            // server's CPU fell from 72-77% to 67-69%. Where nothing else
            // waits for the core this returns at once.
            std::thread::yield_now();
        }
        let mut bytes = 0usize;
        let mut next = first;
        while let Some(request) = next.take() {
            if matches!(request.write, Write::Checkpoint) {
                checkpoint_requests.push(request.reply);
            } else {
                bytes = bytes.saturating_add(request.write.size());
                group.push(request);
            }
            if group.len() < MAX_GROUP_REQUESTS && bytes < MAX_GROUP_BYTES {
                match queue.try_recv() {
                    Ok(request) => next = Some(request),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => {}
                }
            }
        }
        if !group.is_empty() {
            writer.commit_group(&mut group);
            group.clear();
        }
        // After the group: a checkpoint asked for with appends queued
        // before it also covers them.
        waiting.extend(
            checkpoint_requests
                .drain(..)
                .map(|reply| (writer.journal_next, reply)),
        );
        if rest_until.is_some_and(|until| {
            waiting.is_empty() && !writer.backlogged() && until > Instant::now()
        }) {
            continue;
        }
        // One slice per turn; more, back to back, only while the journal
        // holds over twice its thresholds: appends outpace the slices, and
        // waiting for the log tables is the backpressure that bounds the
        // journal (and the memory of `Pending`, and the replay at open).
        let paused = Instant::now();
        loop {
            if writer.cycle.is_none()
                && (!waiting.is_empty() || writer.checkpoint_due())
                && let Err(e) = writer.start_cycle()
            {
                answer(std::mem::take(&mut waiting), &Err(e));
                break;
            }
            match writer.slice() {
                Ok(None) => {}
                Ok(Some(covered)) => {
                    let (done, left): (Vec<_>, Vec<_>) =
                        waiting.drain(..).partition(|(upto, _)| *upto <= covered);
                    answer(done, &Ok(()));
                    waiting = left;
                }
                Err(e) => {
                    answer(std::mem::take(&mut waiting), &Err(e));
                    break;
                }
            }
            if !writer.backlogged() {
                break;
            }
        }
        // What the groups queued meanwhile waited for.
        let slicing = paused.elapsed();
        shared
            .counters
            .longest_pause_nanos
            .fetch_max(nanos(slicing), Ordering::Relaxed);
        rest_until = writer
            .cycle
            .is_some()
            .then(|| Instant::now() + slicing * SLICE_REST);
        // Nothing journaled waits (`start_cycle` found nothing to move):
        // every explicit checkpoint is done.
        if writer.cycle.is_none() && shared.pending().is_empty() {
            answer(std::mem::take(&mut waiting), &Ok(()));
        }
    }
    tracing::debug!("store writer thread stopped");
}

fn answer(waiting: Vec<(u64, Reply)>, result: &StoreResult<()>) {
    for (_, reply) in waiting {
        reply.send(result.clone());
    }
}

/// A checkpoint in progress: its extent, fixed when it started, and how
/// far its slices got.
struct Cycle {
    /// The cycle moves the ops of the journal records below this key (the
    /// sealed segments), and deletes those segments after its last slice.
    journal_end: u64,
    /// Every room that had journaled ops when the cycle started, in id
    /// order, with its highest journaled seq then.
    rooms: Vec<(String, u64)>,
    /// The room of `rooms` the next slice starts in...
    room: usize,
    /// ...and the lowest seq of it not moved yet.
    from: u64,
    /// Ops moved and slices committed so far.
    moved: u64,
    slices: u64,
    started: Instant,
}

struct Writer<'a> {
    shared: &'a Shared,
    /// The segment file groups append to.
    journal: Journal,
    /// The journal key of the next group's record. Cycles delete the
    /// segments below their start's key; open continues after the highest
    /// key it replayed.
    journal_next: u64,
    /// The group's journal row being built.
    journal_row: Vec<u8>,
    /// room → the highest seq in the log table, for the rooms seen since
    /// open. Only checkpoint slices change the log table, and each slice
    /// raises the heads of the rooms it moved ops of right after its
    /// commit, so a batch starting above this cannot clash there and the
    /// fence needs no B-tree probe (the common case: rooms append at their
    /// head).
    logged_heads: HashMap<String, u64>,
    /// The checkpoint cycle in progress.
    cycle: Option<Cycle>,
    /// The rooms the group being applied deletes, with their tombstones:
    /// their journaled ops below it leave `Pending` once it commits.
    deleted: Vec<(String, u64)>,
}

impl<'a> Writer<'a> {
    fn new(shared: &'a Shared, journal: Journal) -> Self {
        Writer {
            shared,
            journal_next: journal.first(),
            journal,
            journal_row: Vec::new(),
            logged_heads: HashMap::new(),
            cycle: None,
            deleted: Vec::new(),
        }
    }

    /// Whether the log table holds any of `room`'s seqs `first..=last`
    /// (the lowest one found).
    fn logged_clash(
        &mut self,
        ops: &mut LogTable<'_>,
        room: &str,
        first: u64,
        last: u64,
    ) -> Result<Option<u64>, redb::Error> {
        let head = match self.logged_heads.get(room) {
            Some(head) => *head,
            None => {
                let head = ops.with(&self.shared.db, |ops| {
                    Ok(ops
                        .range((room, 0u64)..=(room, u64::MAX))?
                        .next_back()
                        .transpose()?
                        .map_or(0, |(key, _)| key.value().1))
                })?;
                if self.logged_heads.len() >= MAX_CACHED_HEADS {
                    self.logged_heads.clear();
                }
                self.logged_heads.insert(room.to_owned(), head);
                head
            }
        };
        if first > head {
            return Ok(None);
        }
        // Below the head: a re-append or a write into a gap. Rare; look.
        ops.with(&self.shared.db, |ops| {
            Ok(ops
                .range((room, first)..=(room, last))?
                .next()
                .transpose()?
                .map(|(key, _)| key.value().1))
        })
    }

    fn commit_group(&mut self, group: &mut Vec<Request>) {
        let counters = &self.shared.counters;
        let started = Instant::now();
        let mut tally = Tally::default();
        let mut staged = Pending::default();
        // Appends only (the hot path): no redb transaction at all, just
        // the journal record.
        let needs_txn = group
            .iter()
            .any(|request| !matches!(request.write, Write::Append { .. }));
        let applied = (|| {
            let txn = needs_txn.then(|| begin(&self.shared.db)).transpose()?;
            let outcomes = self.apply_all(txn.as_ref(), group, &mut tally, &mut staged)?;
            Ok::<_, redb::Error>((txn, outcomes))
        })()
        .map_err(|e| format!("write transaction failed: {e}"));
        let applied_at = Instant::now();
        // The redb commit and the journal's fsync: only after both returned
        // may anyone hear that their write is durable. Room creations and
        // snapshots commit first; if the journal then fails, every request
        // is told `Unavailable` (their outcome is unknown to them anyway).
        let result = applied.and_then(|(txn, outcomes)| {
            if let Some(txn) = txn {
                txn.commit()
                    .map_err(|e| format!("write transaction failed: {e}"))?;
            }
            if !self.journal_row.is_empty() {
                self.journal
                    .append(self.journal_next, &self.journal_row)
                    .map_err(|e| format!("journal write failed: {e}"))?;
                self.journal_next += 1;
            }
            Ok(outcomes)
        });
        let committed_at = Instant::now();
        let n = group.len() as u64;
        counters.requests.fetch_add(n, Ordering::Relaxed);
        counters.largest_group.fetch_max(n, Ordering::Relaxed);
        counters
            .apply_nanos
            .fetch_add(nanos(applied_at - started), Ordering::Relaxed);
        counters
            .commit_nanos
            .fetch_add(nanos(committed_at - applied_at), Ordering::Relaxed);
        match result {
            Ok(outcomes) => {
                // Visible to readers before anyone is answered: an acked op
                // is always readable. A deleted room's journaled ops go in
                // the same step as the deletion shows in the tables.
                {
                    let mut pending = self.shared.pending_mut();
                    pending.absorb(staged);
                    for (room, at) in self.deleted.drain(..) {
                        pending.remove(&room, 0, at - 1);
                    }
                }
                counters.transactions.fetch_add(1, Ordering::Relaxed);
                counters.appends.fetch_add(tally.appends, Ordering::Relaxed);
                counters.ops.fetch_add(tally.ops, Ordering::Relaxed);
                counters
                    .conflicts
                    .fetch_add(tally.conflicts, Ordering::Relaxed);
                counters
                    .rooms_created
                    .fetch_add(tally.rooms_created, Ordering::Relaxed);
                counters
                    .rooms_deleted
                    .fetch_add(tally.rooms_deleted, Ordering::Relaxed);
                counters
                    .snapshots
                    .fetch_add(tally.snapshots, Ordering::Relaxed);
                for (request, outcome) in group.drain(..).zip(outcomes) {
                    request.reply.send(outcome);
                }
            }
            Err(e) => {
                self.deleted.clear();
                counters.failed_transactions.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, requests = n, "store group commit failed");
                for request in group.drain(..) {
                    request.reply.send(Err(StoreError::Unavailable(e.clone())));
                }
            }
        }
    }

    /// Applies every request of the group; `Err` only for storage errors,
    /// which doom the whole transaction. Per-request rejections are
    /// `Ok(Err)`.
    /// `txn` is the group's write transaction if it has anything but
    /// appends (an append in a group without one cannot reach `Tables`).
    /// The group's accepted appends are left in `journal_row`.
    fn apply_all(
        &mut self,
        txn: Option<&WriteTransaction>,
        group: &[Request],
        tally: &mut Tally,
        staged: &mut Pending,
    ) -> Result<Vec<StoreResult<()>>, redb::Error> {
        let (mut tables, mut ops) = match txn {
            Some(txn) => (
                Some(Tables {
                    rooms: txn.open_table(ROOMS)?,
                    memberships: txn.open_table(MEMBERSHIPS)?,
                    snapshots: txn.open_table(SNAPSHOTS)?,
                    chunks: txn.open_table(SNAPSHOT_CHUNKS)?,
                    kinds: txn.open_table(KINDS)?,
                    deleted: txn.open_table(DELETED)?,
                    webhook_cursors: txn.open_table(WEBHOOK_CURSORS)?,
                    webhook_marks: txn.open_table(WEBHOOK_MARKS)?,
                }),
                LogTable::Write(txn.open_table(OPS)?),
            ),
            None => (None, LogTable::Read(None)),
        };
        let pending = self.shared.pending();
        self.journal_row.clear();
        self.deleted.clear();
        let outcomes = group
            .iter()
            .map(|request| {
                self.apply(
                    tables.as_mut(),
                    &mut ops,
                    &pending,
                    staged,
                    &request.write,
                    tally,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(outcomes)
    }

    fn apply(
        &mut self,
        t: Option<&mut Tables<'_>>,
        ops: &mut LogTable<'_>,
        pending: &Pending,
        staged: &mut Pending,
        write: &Write,
        tally: &mut Tally,
    ) -> Result<StoreResult<()>, redb::Error> {
        match write {
            Write::Append {
                room,
                first,
                rows,
                record,
            } => {
                let last = first + rows.len() as u64 - 1;
                // The fence: the batch's seqs must be free in this group,
                // in the journal and in the log.
                let mut clash = staged
                    .overlap(room, *first, last)
                    .or_else(|| pending.overlap(room, *first, last));
                if clash.is_none() {
                    clash = self.logged_clash(ops, room, *first, last)?;
                }
                if let Some(seq) = clash {
                    tally.conflicts += 1;
                    return Ok(Err(StoreError::Conflict(format!(
                        "room {room}: seq {seq} exists"
                    ))));
                }
                self.journal_row.extend_from_slice(record);
                staged.insert(room, rows.iter().cloned());
                tally.appends += 1;
                tally.ops += rows.len() as u64;
                Ok(Ok(()))
            }
            Write::CreateRoom(record) => {
                let t = t.expect("a group with a room creation has a transaction");
                let id = record.id.as_str();
                if t.rooms.get(id)?.is_some() {
                    tally.conflicts += 1;
                    return Ok(Err(StoreError::Conflict(format!("room {id} exists"))));
                }
                let mut record = (**record).clone();
                record.floor = collab_protocol::Seq(t.deleted.get(id)?.map_or(0, |v| v.value()));
                let encoded = match codec::encode_room(&record) {
                    Ok(encoded) => encoded,
                    Err(e) => return Ok(Err(e)),
                };
                t.rooms.insert(id, encoded.as_slice())?;
                for user in members_to_index(&record) {
                    t.memberships.insert((user.as_str(), id), ())?;
                }
                tally.rooms_created += 1;
                Ok(Ok(()))
            }
            Write::UpdateRoom(update) => {
                let t = t.expect("a group with a room update has a transaction");
                let id = update.id.as_str();
                let stored = match t.rooms.get(id)? {
                    Some(value) => match codec::decode_room(value.value()) {
                        Ok(stored) => Some(stored),
                        Err(e) => return Ok(Err(e)),
                    },
                    None => None,
                };
                let Some(stored) = stored.filter(|stored| stored.epoch == update.epoch) else {
                    return Ok(Err(StoreError::NotFound(format!(
                        "no room {id} with epoch {}",
                        update.epoch
                    ))));
                };
                let updated = match crate::memory::updated_record(&stored, update) {
                    Ok(updated) => updated,
                    Err(e) => return Ok(Err(e)),
                };
                let encoded = match codec::encode_room(&updated) {
                    Ok(encoded) => encoded,
                    Err(e) => return Ok(Err(e)),
                };
                for user in members_to_index(&stored) {
                    t.memberships.remove((user.as_str(), id))?;
                }
                for user in members_to_index(&updated) {
                    t.memberships.insert((user.as_str(), id), ())?;
                }
                t.rooms.insert(id, encoded.as_slice())?;
                Ok(Ok(()))
            }
            Write::DeleteRoom {
                room,
                epoch,
                at,
                tombstone,
            } => {
                let t = t.expect("a group with a deletion has a transaction");
                let LogTable::Write(log) = ops else {
                    unreachable!("a group with a transaction writes the log through it")
                };
                self.delete_room(t, log, pending, staged, room, epoch, *at, tombstone, tally)
            }
            Write::PutSnapshot {
                room,
                seq,
                total_len,
                count,
                chunks,
            } => {
                let t = t.expect("a group with a snapshot has a transaction");
                let stored = t.snapshots.get(room.as_str())?.map(|h| h.value().0);
                if stored.is_some_and(|stored| stored > *seq) {
                    tracing::debug!(%room, ?stored, offered = seq, "older snapshot ignored");
                    return Ok(Ok(()));
                }
                // Drop the previous snapshot's chunks (any seq of this
                // room), then write the new chunks and last the header row
                // that makes them visible. The transaction makes all of it
                // atomic anyway; the order keeps the layout valid even read
                // row by row.
                t.chunks.retain_in(
                    (room.as_str(), 0u64, 0u32)..=(room.as_str(), u64::MAX, u32::MAX),
                    |_, _| false,
                )?;
                for (i, chunk) in (0u32..).zip(chunks) {
                    t.chunks
                        .insert((room.as_str(), *seq, i), chunk.as_slice())?;
                }
                t.snapshots
                    .insert(room.as_str(), (*seq, *count, *total_len))?;
                tally.snapshots += 1;
                Ok(Ok(()))
            }
            // Split off by `run` before a group is applied.
            Write::Checkpoint => Ok(Ok(())),
            Write::Webhook(change) => {
                let t = t.expect("a group with a webhook change has a transaction");
                match change {
                    WebhookWrite::Cursor {
                        room,
                        endpoint,
                        seq,
                    } => {
                        t.webhook_cursors
                            .insert((room.as_str(), endpoint.as_str()), *seq)?;
                    }
                    WebhookWrite::AddMark { room, mark } => {
                        t.webhook_marks.insert((room.as_str(), mark.as_str()), ())?;
                    }
                    WebhookWrite::RemoveMark { room, mark } => {
                        t.webhook_marks.remove((room.as_str(), mark.as_str()))?;
                    }
                }
                Ok(Ok(()))
            }
        }
    }

    /// Applies one deletion (see `Write::DeleteRoom`).
    #[allow(clippy::too_many_arguments)]
    fn delete_room(
        &mut self,
        t: &mut Tables<'_>,
        log: &mut Table<'_, (&'static str, u64), &'static [u8]>,
        pending: &Pending,
        staged: &Pending,
        room: &str,
        epoch: &str,
        at: u64,
        tombstone: &[u8],
        tally: &mut Tally,
    ) -> Result<StoreResult<()>, redb::Error> {
        // The fence, as for an append: `at` must be free, or hold the
        // tombstone of an earlier attempt.
        let journaled = staged
            .overlap(room, at, at)
            .or_else(|| pending.overlap(room, at, at));
        let logged = log.get((room, at))?.map(|v| codec::is_tombstone(v.value()));
        let tombstoned = match (journaled, logged) {
            (Some(_), _) | (None, Some(false)) => {
                tally.conflicts += 1;
                return Ok(Err(StoreError::Conflict(format!(
                    "room {room}: seq {at} exists"
                ))));
            }
            (None, Some(true)) => true,
            (None, None) => false,
        };
        let record = match t.rooms.get(room)? {
            Some(value) => match codec::decode_room(value.value()) {
                Ok(record) => Some(record),
                Err(e) => return Ok(Err(e)),
            },
            None => None,
        };
        let record = record.filter(|r| r.epoch.as_str() == epoch);
        if record.is_none() && !tombstoned {
            return Ok(Err(StoreError::NotFound(format!(
                "no room {room} with epoch {epoch}"
            ))));
        }
        if let Some(record) = &record {
            t.rooms.remove(room)?;
            for user in members_to_index(record) {
                t.memberships.remove((user.as_str(), room))?;
            }
        }
        log.insert((room, at), tombstone)?;
        // Everything below the tombstone goes: the log tables' part here,
        // the journaled part from `Pending` once this commits (and from a
        // replay at open, through `DELETED`).
        log.retain_in((room, 0u64)..(room, at), |_, _| false)?;
        for kind in collab_protocol::OpKind::ALL {
            let code = kind.code();
            t.kinds
                .retain_in((room, code, 0u64)..(room, code, at), |_, _| false)?;
        }
        if t.snapshots.get(room)?.is_some_and(|h| h.value().0 < at) {
            t.snapshots.remove(room)?;
        }
        t.chunks
            .retain_in((room, 0u64, 0u32)..(room, at, 0u32), |_, _| false)?;
        let floor = t.deleted.get(room)?.map_or(0, |v| v.value()).max(at);
        t.deleted.insert(room, floor)?;
        let head = self.logged_heads.entry(room.to_owned()).or_insert(at);
        *head = (*head).max(at);
        self.deleted.push((room.to_owned(), at));
        tally.rooms_deleted += 1;
        Ok(Ok(()))
    }

    /// Whether the journaled ops passed a threshold: a checkpoint is due.
    fn checkpoint_due(&self) -> bool {
        self.journal_over(1)
    }

    /// Whether the journaled ops passed twice a threshold: appends outpace
    /// the slices.
    fn backlogged(&self) -> bool {
        self.journal_over(2)
    }

    /// Whether the journaled ops passed `factor` times a threshold.
    fn journal_over(&self, factor: usize) -> bool {
        let pending = self.shared.pending();
        let options = &self.shared.options;
        pending.ops() >= options.checkpoint_ops.saturating_mul(factor)
            || pending.bytes() >= options.checkpoint_bytes.saturating_mul(factor)
    }

    /// Starts a cycle over everything journaled so far; none if nothing is.
    /// Seals the current journal segment first, so that the cycle's extent
    /// is whole segment files (an error if that fails: no cycle starts).
    fn start_cycle(&mut self) -> StoreResult<()> {
        let pending = self.shared.pending();
        if pending.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.journal.rotate(self.journal_next) {
            self.shared
                .counters
                .failed_transactions
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "store journal rotation failed");
            return Err(StoreError::Unavailable(format!(
                "checkpoint failed: journal rotation: {e}"
            )));
        }
        let rooms = pending
            .sorted()
            .into_iter()
            .filter_map(|(room, log)| Some((room.to_owned(), log.last_seq()?)))
            .collect();
        self.cycle = Some(Cycle {
            journal_end: self.journal_next,
            rooms,
            room: 0,
            from: 0,
            moved: 0,
            slices: 0,
            started: Instant::now(),
        });
        Ok(())
    }

    /// Moves the running cycle's next slice into the log tables in one
    /// durable transaction. Returns the cycle's `journal_end` once its last
    /// slice committed (everything journaled below it is now in the log
    /// tables), `None` while there is more to do or no cycle runs. A
    /// failure ends the cycle: nothing of the failed slice is lost (it is
    /// still journaled and pending), and the next cycle starts over.
    fn slice(&mut self) -> StoreResult<Option<u64>> {
        let shared = self.shared;
        let Some(cycle) = self.cycle.as_mut() else {
            return Ok(None);
        };
        let started = Instant::now();
        let limit = shared.options.checkpoint_slice_ops.max(1);
        // (index in `cycle.rooms`, first seq, last seq) of each room's run.
        let mut runs: Vec<(usize, u64, u64)> = Vec::new();
        let result = (|| -> Result<(usize, bool), redb::Error> {
            let txn = begin(&shared.db)?;
            let mut moved = 0;
            {
                let pending = shared.pending();
                let mut ops = txn.open_table(OPS)?;
                let mut kinds = txn.open_table(KINDS)?;
                while moved < limit && cycle.room < cycle.rooms.len() {
                    let (room, last) = &cycle.rooms[cycle.room];
                    let run = pending
                        .room(room)
                        .map_or(&[][..], |log| log.range(cycle.from, *last));
                    let take = &run[..run.len().min(limit - moved)];
                    for (seq, op) in take {
                        ops.insert((room.as_str(), *seq), &*op.value)?;
                        kinds.insert((room.as_str(), op.kind, *seq), ())?;
                    }
                    moved += take.len();
                    if let (Some((first, _)), Some((last, _))) = (take.first(), take.last()) {
                        runs.push((cycle.room, *first, *last));
                        cycle.from = last.saturating_add(1);
                    }
                    if take.len() == run.len() {
                        // This room's part of the cycle is all moved.
                        cycle.room += 1;
                        cycle.from = 0;
                    }
                }
            }
            let done = cycle.room == cycle.rooms.len();
            txn.commit()?;
            Ok((moved, done))
        })();
        let counters = &shared.counters;
        let (moved, done) = match result {
            Ok(outcome) => outcome,
            Err(e) => {
                self.cycle = None;
                counters.failed_transactions.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "store checkpoint slice failed");
                return Err(StoreError::Unavailable(format!("checkpoint failed: {e}")));
            }
        };
        // Only now, and only the moved ops: a reader that opened its
        // transaction before the commit still finds them in `Pending`.
        // Nothing else changed `Pending` since the slice read it (only this
        // thread writes it), so the runs name exactly the moved ops.
        let removed: Vec<_> = {
            let mut pending = shared.pending_mut();
            runs.iter()
                .map(|(i, first, last)| pending.remove(&cycle.rooms[*i].0, *first, *last))
                .collect()
        };
        // Freed outside the lock.
        drop(removed);
        for (i, _, last) in &runs {
            if let Some(head) = self.logged_heads.get_mut(&cycle.rooms[*i].0) {
                *head = (*head).max(*last);
            }
        }
        let elapsed = started.elapsed();
        cycle.moved += moved as u64;
        cycle.slices += 1;
        counters.checkpoint_slices.fetch_add(1, Ordering::Relaxed);
        counters
            .checkpointed_ops
            .fetch_add(moved as u64, Ordering::Relaxed);
        counters
            .checkpoint_nanos
            .fetch_add(nanos(elapsed), Ordering::Relaxed);
        counters
            .longest_slice_nanos
            .fetch_max(nanos(elapsed), Ordering::Relaxed);
        if !done {
            return Ok(None);
        }
        let covered = cycle.journal_end;
        // Every op of the sealed segments is in the committed log tables
        // now (moved by this cycle or an earlier one): only now may they go.
        // A crash before this replays them at open, which changes nothing.
        self.journal.delete_below(covered);
        tracing::debug!(
            ops = cycle.moved,
            slices = cycle.slices,
            elapsed = ?cycle.started.elapsed(),
            "store checkpoint"
        );
        self.cycle = None;
        counters.checkpoints.fetch_add(1, Ordering::Relaxed);
        Ok(Some(covered))
    }

    /// Runs checkpoint cycles until nothing journaled is left outside the
    /// log tables, without serving groups in between (tests only).
    #[cfg(test)]
    fn checkpoint(&mut self) -> StoreResult<()> {
        loop {
            if self.cycle.is_none() {
                self.start_cycle()?;
                if self.cycle.is_none() {
                    return Ok(());
                }
            }
            self.slice()?;
        }
    }
}

fn nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn begin(db: &Database) -> Result<WriteTransaction, redb::Error> {
    let mut txn = db.begin_write()?;
    // The default, but the whole design rests on it: stated, not assumed.
    txn.set_durability(Durability::Immediate)?;
    Ok(txn)
}

/// The tables a group with room creations or snapshots writes, opened
/// once per transaction.
struct Tables<'txn> {
    rooms: Table<'txn, &'static str, &'static [u8]>,
    memberships: Table<'txn, (&'static str, &'static str), ()>,
    snapshots: Table<'txn, &'static str, (u64, u32, u64)>,
    chunks: Table<'txn, (&'static str, u64, u32), &'static [u8]>,
    kinds: Table<'txn, (&'static str, u8, u64), ()>,
    deleted: Table<'txn, &'static str, u64>,
    webhook_cursors: Table<'txn, (&'static str, &'static str), u64>,
    webhook_marks: Table<'txn, (&'static str, &'static str), ()>,
}

/// The log table as the fence reads it: through the group's write
/// transaction if it has one, else through a read transaction opened on
/// the first cached-head miss (most groups of appends open none). Only
/// this thread changes `OPS`, and only in slices that committed before
/// the group began, so either view holds every logged op.
enum LogTable<'txn> {
    Write(Table<'txn, (&'static str, u64), &'static [u8]>),
    Read(Option<ReadOnlyTable<(&'static str, u64), &'static [u8]>>),
}

impl LogTable<'_> {
    fn with<T>(
        &mut self,
        db: &Database,
        read: impl FnOnce(&dyn LogRead) -> Result<T, redb::Error>,
    ) -> Result<T, redb::Error> {
        match self {
            LogTable::Write(table) => read(table),
            LogTable::Read(Some(table)) => read(table),
            LogTable::Read(slot) => {
                let table = db.begin_read()?.open_table(OPS)?;
                read(slot.insert(table))
            }
        }
    }
}

/// The one query the fence makes, over either kind of table.
trait LogRead {
    fn range(
        &self,
        range: std::ops::RangeInclusive<(&str, u64)>,
    ) -> Result<redb::Range<'_, (&'static str, u64), &'static [u8]>, redb::StorageError>;
}

impl<T: ReadableTable<(&'static str, u64), &'static [u8]>> LogRead for T {
    fn range(
        &self,
        range: std::ops::RangeInclusive<(&str, u64)>,
    ) -> Result<redb::Range<'_, (&'static str, u64), &'static [u8]>, redb::StorageError> {
        ReadableTable::range(self, range)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use redb::{ReadableDatabase, ReadableTableMetadata};

    use super::*;

    fn append(room: &str, first: u64, len: u64) -> Write {
        let rows: Vec<(u64, PendingOp)> = (first..first + len)
            .map(|seq| {
                let value: Arc<[u8]> = format!("{room}/{seq}").into_bytes().into();
                (seq, PendingOp { kind: 2, value })
            })
            .collect();
        let values: Vec<(u8, &[u8])> = rows.iter().map(|(_, op)| (op.kind, &*op.value)).collect();
        let record = crate::embedded::codec::encode_journal(room, first, &values).expect("encode");
        Write::Append {
            room: room.into(),
            first,
            rows,
            record,
        }
    }

    fn create(id: &str) -> Write {
        let id = collab_protocol::RoomId::parse(id).expect("room id");
        let user = collab_protocol::UserId::parse("u").expect("user id");
        Write::CreateRoom(Box::new(crate::testsuite::room_record(
            &id,
            collab_protocol::RoomKind::Board,
            &user,
            None,
        )))
    }

    fn shared() -> (tempfile::TempDir, Shared, Journal) {
        shared_with(EmbeddedStoreOptions::default())
    }

    fn db_path(dir: &tempfile::TempDir) -> std::path::PathBuf {
        dir.path().join("t.redb")
    }

    fn shared_with(options: EmbeddedStoreOptions) -> (tempfile::TempDir, Shared, Journal) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::create(db_path(&dir)).expect("create");
        let (_, journal) =
            crate::embedded::init(&db, &db_path(&dir), options.journal_segment_bytes)
                .expect("init");
        let shared = Shared {
            db,
            pending: RwLock::new(Pending::default()),
            counters: Counters::default(),
            options,
        };
        (dir, shared, journal)
    }

    /// Runs `writes` as one group; returns each request's answer.
    fn one_group(writer: &mut Writer<'_>, writes: Vec<Write>) -> Vec<StoreResult<()>> {
        let mut answers = Vec::new();
        let mut group: Vec<Request> = writes
            .into_iter()
            .map(|write| {
                let (reply, answer) = Reply::channel();
                answers.push(answer);
                Request { write, reply }
            })
            .collect();
        writer.commit_group(&mut group);
        answers
            .into_iter()
            .map(|a| a.blocking_recv().expect("an answer"))
            .collect()
    }

    /// Every journal record's key, over all segments.
    fn journal_keys(dir: &tempfile::TempDir) -> Vec<u64> {
        journal_records(dir)
            .into_iter()
            .map(|(key, _)| key)
            .collect()
    }

    fn segment_firsts(dir: &tempfile::TempDir) -> Vec<u64> {
        crate::embedded::journal::segments(&db_path(dir))
            .expect("segments")
            .into_iter()
            .map(|(first, _)| first)
            .collect()
    }

    fn journal_records(dir: &tempfile::TempDir) -> Vec<(u64, Vec<u8>)> {
        crate::embedded::journal::records(&db_path(dir)).expect("journal")
    }

    fn pending_seqs(shared: &Shared, room: &str) -> Vec<u64> {
        shared.pending().room(room).map_or(Vec::new(), |log| {
            log.all().iter().map(|(seq, _)| *seq).collect()
        })
    }

    fn log_rows(shared: &Shared) -> Vec<(String, u64, Vec<u8>)> {
        let txn = shared.db.begin_read().expect("read");
        let ops = txn.open_table(OPS).expect("ops");
        ops.iter()
            .expect("iter")
            .map(|e| {
                let (k, v) = e.expect("row");
                let (room, seq) = k.value();
                (room.to_owned(), seq, v.value().to_vec())
            })
            .collect()
    }

    #[test]
    fn a_callback_reply_dropped_unsent_is_told_the_outcome_is_unknown() {
        let (tx, rx) = std::sync::mpsc::channel();
        let reply = Reply::callback(move |result| tx.send(result).expect("send"));
        drop(reply);
        assert!(matches!(rx.try_recv(), Ok(Err(StoreError::Unavailable(_)))));
        // Sent, it is called once, with what was sent.
        let (tx, rx) = std::sync::mpsc::channel();
        Reply::callback(move |result| tx.send(result).expect("send")).send(Ok(()));
        assert!(matches!(rx.try_recv(), Ok(Ok(()))));
        assert!(rx.try_recv().is_err(), "called twice");
    }

    /// Requests of one group see each other: a later request conflicting
    /// with an earlier one of the same transaction is rejected, writes
    /// nothing, and leaves the rest of the group alone. A checkpoint then
    /// moves exactly the accepted ops into the log tables.
    #[test]
    fn one_group_checks_each_request_against_the_earlier_ones() {
        let (dir, shared, journal) = shared();
        let mut writer = Writer::new(&shared, journal);
        let outcomes = one_group(
            &mut writer,
            vec![
                append("a", 1, 2),
                append("a", 2, 2), // overlaps the first on seq 2
                append("b", 1, 1),
                create("x"),
                create("x"), // duplicate of the previous
                append("a", 3, 1),
                append("a", 1, 1), // overlaps the first on seq 1
            ],
        );
        let ok: Vec<bool> = outcomes.iter().map(Result::is_ok).collect();
        assert_eq!(ok, [true, false, true, true, false, true, false]);
        for i in [1, 4, 6] {
            assert!(matches!(outcomes[i], Err(StoreError::Conflict(_))));
        }
        let c = &shared.counters;
        assert_eq!(c.transactions.load(Ordering::Relaxed), 1);
        assert_eq!(c.appends.load(Ordering::Relaxed), 3);
        assert_eq!(c.ops.load(Ordering::Relaxed), 4);
        assert_eq!(c.conflicts.load(Ordering::Relaxed), 3);
        {
            let records = journal_records(&dir);
            assert_eq!(records.len(), 1, "one record per group");
            assert_eq!(records[0].0, 0);
            let batches = crate::embedded::codec::decode_journal(&records[0].1).expect("decode");
            let firsts: Vec<(&str, u64)> =
                batches.iter().map(|(r, rows)| (*r, rows[0].0)).collect();
            assert_eq!(
                firsts,
                [("a", 1), ("b", 1), ("a", 3)],
                "the accepted batches only"
            );
            let txn = shared.db.begin_read().expect("read");
            assert_eq!(txn.open_table(ROOMS).expect("rooms").len().expect("len"), 1);
        }
        assert_eq!(shared.pending().ops(), 4);
        assert!(log_rows(&shared).is_empty(), "nothing checkpointed yet");

        // A later group is fenced by the journaled ops too.
        let outcomes = one_group(&mut writer, vec![append("a", 3, 2), append("a", 4, 1)]);
        assert!(matches!(outcomes[0], Err(StoreError::Conflict(_))));
        assert!(outcomes[1].is_ok());

        writer.checkpoint().expect("checkpoint");
        let expected: Vec<(String, u64, Vec<u8>)> =
            [("a", 1), ("a", 2), ("a", 3), ("a", 4), ("b", 1)]
                .into_iter()
                .map(|(r, s)| (r.to_owned(), s, format!("{r}/{s}").into_bytes()))
                .collect();
        assert_eq!(log_rows(&shared), expected, "only the accepted appends");
        let txn = shared.db.begin_read().expect("read");
        assert_eq!(txn.open_table(KINDS).expect("kinds").len().expect("len"), 5);
        assert!(journal_keys(&dir).is_empty(), "the sealed segment deleted");
        assert!(shared.pending().is_empty());
        assert_eq!(c.checkpointed_ops.load(Ordering::Relaxed), 5);

        // And the log tables fence the next group.
        drop(txn);
        let outcomes = one_group(&mut writer, vec![append("b", 1, 1), append("b", 2, 1)]);
        assert!(matches!(outcomes[0], Err(StoreError::Conflict(_))));
        assert!(outcomes[1].is_ok());
    }

    fn logged(shared: &Shared) -> Vec<(String, u64)> {
        log_rows(shared)
            .into_iter()
            .map(|(room, seq, _)| (room, seq))
            .collect()
    }

    fn keys(rows: &[(&str, u64)]) -> Vec<(String, u64)> {
        rows.iter().map(|(r, s)| ((*r).to_owned(), *s)).collect()
    }

    /// A cycle moves exactly the ops journaled before it started, a slice
    /// at a time, with groups in between: the fence finds the moved ops in
    /// the log table (the cached log heads follow each slice), ops appended
    /// meanwhile stay journaled, and only the cycle's journal rows go, at
    /// its end. Replaying what is left is idempotent.
    #[test]
    fn a_cycle_moves_its_extent_slice_by_slice_between_groups() {
        let (dir, shared, journal) = shared_with(EmbeddedStoreOptions {
            checkpoint_slice_ops: 2,
            ..Default::default()
        });
        let mut writer = Writer::new(&shared, journal);
        // Journal rows 0 and 1; room b has a gap at seq 2.
        let outcomes = one_group(&mut writer, vec![append("a", 1, 4), append("b", 1, 1)]);
        assert!(outcomes.iter().all(Result::is_ok));
        assert!(one_group(&mut writer, vec![append("b", 3, 1)])[0].is_ok());

        writer.start_cycle().expect("start");
        assert_eq!(writer.slice().expect("slice 1"), None);
        assert_eq!(logged(&shared), keys(&[("a", 1), ("a", 2)]));
        assert_eq!(
            pending_seqs(&shared, "a"),
            [3, 4],
            "exactly the moved ops left"
        );

        // A group between slices (journal row 2): seq 2 of a is only in the
        // log table now, and the fence still sees it.
        let outcomes = one_group(
            &mut writer,
            vec![append("a", 2, 1), append("a", 5, 1), append("b", 2, 1)],
        );
        assert!(matches!(outcomes[0], Err(StoreError::Conflict(_))));
        assert!(outcomes[1].is_ok() && outcomes[2].is_ok());

        assert_eq!(writer.slice().expect("slice 2"), None);
        // b's run: 1, then the gap write 2 (inside the extent, so moved
        // early), then 3 in the last slice, which also ends the cycle.
        assert_eq!(writer.slice().expect("slice 3"), None);
        assert_eq!(journal_keys(&dir), [0, 1, 2], "rows stay until the end");
        assert_eq!(
            segment_firsts(&dir),
            [0, 2],
            "the sealed segment stays until the cycle's last slice committed"
        );
        assert_eq!(writer.slice().expect("slice 4"), Some(2));
        assert!(writer.cycle.is_none());
        assert_eq!(
            logged(&shared),
            keys(&[
                ("a", 1),
                ("a", 2),
                ("a", 3),
                ("a", 4),
                ("b", 1),
                ("b", 2),
                ("b", 3)
            ])
        );
        assert_eq!(pending_seqs(&shared, "a"), [5], "appended during the cycle");
        assert!(shared.pending().room("b").is_none());
        assert_eq!(journal_keys(&dir), [2], "only the cycle's rows deleted");
        assert_eq!(segment_firsts(&dir), [2], "the sealed segment deleted");
        let c = &shared.counters;
        assert_eq!(c.checkpoints.load(Ordering::Relaxed), 1);
        assert_eq!(c.checkpoint_slices.load(Ordering::Relaxed), 4);
        assert_eq!(c.checkpointed_ops.load(Ordering::Relaxed), 7);
        assert!(c.longest_slice_nanos.load(Ordering::Relaxed) > 0);

        // The log table fences what left `Pending` in any slice.
        let outcomes = one_group(&mut writer, vec![append("b", 3, 1), append("a", 4, 2)]);
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, Err(StoreError::Conflict(_))))
        );

        // As if the process died now: the replay inserts b's 2 again (the
        // same bytes) and a's 5, and empties the journal.
        drop(writer);
        let replayed = crate::embedded::init(&shared.db, &db_path(&dir), 0)
            .expect("replay")
            .0;
        assert_eq!((replayed.ops, replayed.logged), (2, 1));
        assert!(journal_keys(&dir).is_empty());
        let rows = log_rows(&shared);
        assert_eq!(rows.len(), 8);
        assert!(
            rows.iter()
                .all(|(room, seq, value)| *value == format!("{room}/{seq}").into_bytes())
        );
        let txn = shared.db.begin_read().expect("read");
        assert_eq!(txn.open_table(KINDS).expect("kinds").len().expect("len"), 8);
    }
}
