//! The writer thread: group commit across rooms, and checkpoints.
//!
//! redb admits one write transaction at a time and each durable commit costs
//! an fsync, so committing every room's batch on its own would cap the node
//! at one batch per fsync. Instead one dedicated thread owns every write:
//! it takes a request, drains whatever else is already queued (bounded by
//! [`MAX_GROUP_REQUESTS`] and [`MAX_GROUP_BYTES`]), applies them all in one
//! transaction with `Durability::Immediate`, commits once, and only then
//! answers every caller. Under load the group grows by itself (requests
//! queue while the previous fsync runs), so 1,000 busy rooms cost one fsync
//! per group, not 1,000.
//!
//! Appends go to the journal (see [`super::pending`] for why): a group's
//! accepted batches become one journal row, keyed by a counter; once the
//! transaction committed, their ops join the in-memory [`Pending`] index
//! that readers merge. When that index grows past a threshold, the writer
//! checkpoints: one transaction moves every journaled op into the log and
//! kind-index tables, room by room, and empties the journal.
//!
//! Each request is checked against everything already written, including
//! earlier requests of its own group, before it writes anything, so a
//! rejected request (a fencing conflict, a duplicate room) leaves no trace
//! and does not affect the others. A storage error while applying or
//! committing aborts the whole transaction, and every request of the group
//! gets `Unavailable`: none of them is durable.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use redb::{Database, Durability, ReadableTable, Table, WriteTransaction};
use tokio::sync::oneshot;

use super::EmbeddedStoreOptions;
use super::pending::{Pending, PendingOp};
use super::tables::{JOURNAL, KINDS, MEMBERSHIPS, OPS, ROOMS, SNAPSHOT_CHUNKS, SNAPSHOTS};
use crate::{StoreError, StoreResult};

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
    /// right after a commit; readers take the read lock while they open
    /// their read transaction, which makes the pair consistent (see
    /// `EmbeddedStore::read_room`).
    pub(crate) pending: RwLock<Pending>,
    pub(crate) counters: Counters,
    pub(crate) options: EmbeddedStoreOptions,
}

impl Shared {
    pub(crate) fn pending(&self) -> RwLockReadGuard<'_, Pending> {
        // The writer's changes to `Pending` are plain map inserts and a
        // clear, which leave it whole even if a panic interrupts them.
        self.pending.read().unwrap_or_else(|p| p.into_inner())
    }

    fn pending_mut(&self) -> RwLockWriteGuard<'_, Pending> {
        self.pending.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// A write for the writer thread, with the channel its caller waits on.
pub(crate) struct Request {
    pub(crate) write: Write,
    pub(crate) reply: oneshot::Sender<StoreResult<()>>,
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
    CreateRoom {
        id: String,
        record: Vec<u8>,
        /// Users whose `rooms_of_user` lists the room.
        users: Vec<String>,
    },
    PutSnapshot {
        room: String,
        seq: u64,
        total_len: u64,
        /// `chunks.len()`, checked to fit the header by the caller.
        count: u32,
        chunks: Vec<Vec<u8>>,
    },
    /// Checkpoint now, whatever the thresholds; answered once it is done.
    Checkpoint,
}

impl Write {
    fn size(&self) -> usize {
        match self {
            Write::Append { record, .. } => record.len(),
            Write::CreateRoom { record, .. } => record.len(),
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
    pub(crate) snapshots: AtomicU64,
    pub(crate) largest_group: AtomicU64,
    pub(crate) apply_nanos: AtomicU64,
    pub(crate) commit_nanos: AtomicU64,
    pub(crate) checkpoints: AtomicU64,
    pub(crate) checkpointed_ops: AtomicU64,
    pub(crate) checkpoint_nanos: AtomicU64,
}

/// What one applied request changed, counted once its group committed.
#[derive(Default)]
struct Tally {
    appends: u64,
    ops: u64,
    conflicts: u64,
    rooms_created: u64,
    snapshots: u64,
}

/// The writer thread's body: runs until every sender is gone and the queue
/// is drained, so dropping the store finishes the writes already queued.
pub(crate) fn run(shared: &Shared, queue: Receiver<Request>) {
    let mut writer = Writer::new(shared);
    let mut group: Vec<Request> = Vec::new();
    let mut checkpoint_requests = Vec::new();
    while let Ok(first) = queue.recv() {
        let mut bytes = 0usize;
        let mut next = Some(first);
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
        let pending = shared.pending();
        let due = pending.ops() >= shared.options.checkpoint_ops
            || pending.bytes() >= shared.options.checkpoint_bytes;
        drop(pending);
        if due || !checkpoint_requests.is_empty() {
            let result = writer.checkpoint();
            for reply in checkpoint_requests.drain(..) {
                let _ = reply.send(result.clone());
            }
        }
    }
    tracing::debug!("store writer thread stopped");
}

struct Writer<'a> {
    shared: &'a Shared,
    /// The journal key of the next group. The journal is emptied by every
    /// checkpoint (and at open), so this restarts at 0 then.
    journal_next: u64,
    /// The group's journal row being built.
    journal_row: Vec<u8>,
    /// room → the highest seq in the log table, for the rooms seen since
    /// open. Only checkpoints change the log table, so a batch starting
    /// above this cannot clash there and the fence needs no B-tree probe
    /// (the common case: rooms append at their head).
    logged_heads: HashMap<String, u64>,
}

impl<'a> Writer<'a> {
    fn new(shared: &'a Shared) -> Self {
        Writer {
            shared,
            journal_next: 0,
            journal_row: Vec::new(),
            logged_heads: HashMap::new(),
        }
    }

    /// Whether the log table holds any of `room`'s seqs `first..=last`
    /// (the lowest one found).
    fn logged_clash(
        &mut self,
        ops: &Table<'_, (&'static str, u64), &'static [u8]>,
        room: &str,
        first: u64,
        last: u64,
    ) -> Result<Option<u64>, redb::Error> {
        let head = match self.logged_heads.get(room) {
            Some(head) => *head,
            None => {
                let head = ops
                    .range((room, 0u64)..=(room, u64::MAX))?
                    .next_back()
                    .transpose()?
                    .map_or(0, |(key, _)| key.value().1);
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
        Ok(ops
            .range((room, first)..=(room, last))?
            .next()
            .transpose()?
            .map(|(key, _)| key.value().1))
    }

    fn commit_group(&mut self, group: &mut Vec<Request>) {
        let counters = &self.shared.counters;
        let started = Instant::now();
        let mut tally = Tally::default();
        let mut staged = Pending::default();
        let applied = begin(&self.shared.db).and_then(|txn| {
            let outcomes = self.apply_all(&txn, group, &mut tally, &mut staged)?;
            Ok((txn, outcomes))
        });
        let applied_at = Instant::now();
        // The commit is the fsync: only after it returned may anyone hear
        // that their write is durable.
        let result = applied.and_then(|(txn, outcomes)| {
            txn.commit()?;
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
                // is always readable.
                self.shared.pending_mut().absorb(staged);
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
                    .snapshots
                    .fetch_add(tally.snapshots, Ordering::Relaxed);
                for (request, outcome) in group.drain(..).zip(outcomes) {
                    // The caller may have stopped waiting; its write stands.
                    let _ = request.reply.send(outcome);
                }
            }
            Err(e) => {
                counters.failed_transactions.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, requests = n, "store write transaction failed");
                let message = format!("write transaction failed: {e}");
                for request in group.drain(..) {
                    let _ = request
                        .reply
                        .send(Err(StoreError::Unavailable(message.clone())));
                }
            }
        }
    }

    /// Applies every request of the group; `Err` only for storage errors,
    /// which doom the whole transaction. Per-request rejections are
    /// `Ok(Err)`.
    fn apply_all(
        &mut self,
        txn: &WriteTransaction,
        group: &[Request],
        tally: &mut Tally,
        staged: &mut Pending,
    ) -> Result<Vec<StoreResult<()>>, redb::Error> {
        let mut tables = Tables {
            rooms: txn.open_table(ROOMS)?,
            memberships: txn.open_table(MEMBERSHIPS)?,
            ops: txn.open_table(OPS)?,
            journal: txn.open_table(JOURNAL)?,
            snapshots: txn.open_table(SNAPSHOTS)?,
            chunks: txn.open_table(SNAPSHOT_CHUNKS)?,
        };
        let pending = self.shared.pending();
        self.journal_row.clear();
        let outcomes = group
            .iter()
            .map(|request| self.apply(&mut tables, &pending, staged, &request.write, tally))
            .collect::<Result<Vec<_>, _>>()?;
        // One journal row for the whole group: one insert at the tree's
        // right edge, however many rooms wrote.
        if !self.journal_row.is_empty() {
            tables
                .journal
                .insert(self.journal_next, self.journal_row.as_slice())?;
            self.journal_next += 1;
        }
        Ok(outcomes)
    }

    fn apply(
        &mut self,
        t: &mut Tables<'_>,
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
                    clash = self.logged_clash(&t.ops, room, *first, last)?;
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
            Write::CreateRoom { id, record, users } => {
                if t.rooms.get(id.as_str())?.is_some() {
                    tally.conflicts += 1;
                    return Ok(Err(StoreError::Conflict(format!("room {id} exists"))));
                }
                t.rooms.insert(id.as_str(), record.as_slice())?;
                for user in users {
                    t.memberships.insert((user.as_str(), id.as_str()), ())?;
                }
                tally.rooms_created += 1;
                Ok(Ok(()))
            }
            Write::PutSnapshot {
                room,
                seq,
                total_len,
                count,
                chunks,
            } => {
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
        }
    }

    /// Moves every journaled op into the log tables in one durable
    /// transaction and empties the journal.
    fn checkpoint(&mut self) -> StoreResult<()> {
        let shared = self.shared;
        if shared.pending().is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let mut new_heads = Vec::new();
        let result = (|| -> Result<usize, redb::Error> {
            let txn = begin(&shared.db)?;
            let moved = {
                let pending = shared.pending();
                let mut ops = txn.open_table(OPS)?;
                let mut kinds = txn.open_table(KINDS)?;
                for (room, log) in pending.sorted() {
                    for (seq, op) in log.all() {
                        ops.insert((room, *seq), &*op.value)?;
                        kinds.insert((room, op.kind, *seq), ())?;
                    }
                    if let Some(last) = log.last_seq()
                        && self.logged_heads.contains_key(room)
                    {
                        new_heads.push((room.to_owned(), last));
                    }
                }
                pending.ops()
            };
            // Dropping the whole tree is cheaper than deleting its rows.
            txn.delete_table(JOURNAL)?;
            txn.open_table(JOURNAL)?;
            txn.commit()?;
            Ok(moved)
        })();
        let counters = &shared.counters;
        match result {
            Ok(moved) => {
                // Only now: a reader that opened its transaction before the
                // commit still finds these ops in `Pending`.
                let moved_out = std::mem::take(&mut *shared.pending_mut());
                // Freeing tens of thousands of buffers is the writer's
                // time better spent committing: let another thread do it.
                if let Err(e) = std::thread::Builder::new()
                    .name("collab-store-free".into())
                    .spawn(move || drop(moved_out))
                {
                    tracing::debug!(error = %e, "freeing checkpointed ops inline");
                }
                self.journal_next = 0;
                for (room, last) in new_heads {
                    if let Some(head) = self.logged_heads.get_mut(&room) {
                        *head = (*head).max(last);
                    }
                }
                counters.checkpoints.fetch_add(1, Ordering::Relaxed);
                counters
                    .checkpointed_ops
                    .fetch_add(moved as u64, Ordering::Relaxed);
                counters
                    .checkpoint_nanos
                    .fetch_add(nanos(started.elapsed()), Ordering::Relaxed);
                tracing::debug!(ops = moved, elapsed = ?started.elapsed(), "store checkpoint");
                Ok(())
            }
            Err(e) => {
                // Nothing is lost: the journal and `Pending` still hold
                // every op, and the next checkpoint retries.
                counters.failed_transactions.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "store checkpoint failed");
                Err(StoreError::Unavailable(format!("checkpoint failed: {e}")))
            }
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

/// The tables one group writes, opened once per transaction.
struct Tables<'txn> {
    rooms: Table<'txn, &'static str, &'static [u8]>,
    memberships: Table<'txn, (&'static str, &'static str), ()>,
    /// Read only by a group, for the fence.
    ops: Table<'txn, (&'static str, u64), &'static [u8]>,
    journal: Table<'txn, u64, &'static [u8]>,
    snapshots: Table<'txn, &'static str, (u64, u32, u64)>,
    chunks: Table<'txn, (&'static str, u64, u32), &'static [u8]>,
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
        Write::CreateRoom {
            id: id.into(),
            record: b"{}".to_vec(),
            users: vec!["u".into()],
        }
    }

    fn shared() -> (tempfile::TempDir, Shared) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::create(dir.path().join("t.redb")).expect("create");
        crate::embedded::init(&db).expect("init");
        let shared = Shared {
            db,
            pending: RwLock::new(Pending::default()),
            counters: Counters::default(),
            options: EmbeddedStoreOptions::default(),
        };
        (dir, shared)
    }

    /// Runs `writes` as one group; returns each request's answer.
    fn one_group(writer: &mut Writer<'_>, writes: Vec<Write>) -> Vec<StoreResult<()>> {
        let mut answers = Vec::new();
        let mut group: Vec<Request> = writes
            .into_iter()
            .map(|write| {
                let (reply, answer) = oneshot::channel();
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

    /// Requests of one group see each other: a later request conflicting
    /// with an earlier one of the same transaction is rejected, writes
    /// nothing, and leaves the rest of the group alone. A checkpoint then
    /// moves exactly the accepted ops into the log tables.
    #[test]
    fn one_group_checks_each_request_against_the_earlier_ones() {
        let (_dir, shared) = shared();
        let mut writer = Writer::new(&shared);
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
            let txn = shared.db.begin_read().expect("read");
            let journal = txn.open_table(JOURNAL).expect("journal");
            assert_eq!(journal.len().expect("len"), 1, "one row per group");
            let row = journal.get(0).expect("get").expect("row 0");
            let batches = crate::embedded::codec::decode_journal(row.value()).expect("decode");
            let firsts: Vec<(&str, u64)> =
                batches.iter().map(|(r, rows)| (*r, rows[0].0)).collect();
            assert_eq!(
                firsts,
                [("a", 1), ("b", 1), ("a", 3)],
                "the accepted batches only"
            );
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
        assert_eq!(
            txn.open_table(JOURNAL)
                .expect("journal")
                .len()
                .expect("len"),
            0
        );
        assert!(shared.pending().is_empty());
        assert_eq!(c.checkpointed_ops.load(Ordering::Relaxed), 5);

        // And the log tables fence the next group.
        drop(txn);
        let outcomes = one_group(&mut writer, vec![append("b", 1, 1), append("b", 2, 1)]);
        assert!(matches!(outcomes[0], Err(StoreError::Conflict(_))));
        assert!(outcomes[1].is_ok());
    }
}
