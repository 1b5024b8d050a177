//! The writer thread: group commit across rooms.
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
//! Each request is checked against the transaction's current contents
//! before it writes anything, so a rejected request (a fencing conflict,
//! including one with an earlier request of the same group, or a duplicate
//! room) leaves no trace and does not affect the others. A storage error
//! while applying or committing aborts the whole transaction, and every
//! request of the group gets `Unavailable`: none of them is durable.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Instant;

use redb::{Database, Durability, ReadableTable, Table, WriteTransaction};
use tokio::sync::oneshot;

use super::tables::{KINDS, MEMBERSHIPS, OPS, ROOMS, SNAPSHOT_CHUNKS, SNAPSHOTS};
use crate::{StoreError, StoreResult};

/// At most this many requests share one transaction, so that one group's
/// latency stays bounded even when the queue is long.
pub(crate) const MAX_GROUP_REQUESTS: usize = 4096;
/// A group stops growing once it carries this many bytes (a few large
/// snapshots must not hold thousands of small appends behind one huge
/// commit).
pub(crate) const MAX_GROUP_BYTES: usize = 64 << 20;

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
        /// `(seq, kind code, encoded logged op)`, contiguous from `first`.
        rows: Vec<(u64, u8, Vec<u8>)>,
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
}

impl Write {
    fn size(&self) -> usize {
        match self {
            Write::Append { rows, .. } => rows.iter().map(|(_, _, v)| v.len() + 16).sum(),
            Write::CreateRoom { record, .. } => record.len(),
            Write::PutSnapshot { total_len, .. } => {
                usize::try_from(*total_len).unwrap_or(usize::MAX)
            }
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
pub(crate) fn run(db: Arc<Database>, queue: Receiver<Request>, counters: Arc<Counters>) {
    let mut group: Vec<Request> = Vec::new();
    while let Ok(first) = queue.recv() {
        let mut bytes = first.write.size();
        group.push(first);
        while group.len() < MAX_GROUP_REQUESTS && bytes < MAX_GROUP_BYTES {
            match queue.try_recv() {
                Ok(next) => {
                    bytes = bytes.saturating_add(next.write.size());
                    group.push(next);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        commit_group(&db, &mut group, &counters);
        group.clear();
    }
    tracing::debug!("store writer thread stopped");
}

fn commit_group(db: &Database, group: &mut Vec<Request>, counters: &Counters) {
    let started = Instant::now();
    let mut tally = Tally::default();
    let applied = begin(db).and_then(|txn| {
        let outcomes = apply_all(&txn, group, &mut tally)?;
        Ok((txn, outcomes))
    });
    let applied_at = Instant::now();
    // The commit is the fsync: only after it returned may anyone hear that
    // their write is durable.
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
        .fetch_add(nanos(applied_at.duration_since(started)), Ordering::Relaxed);
    counters.commit_nanos.fetch_add(
        nanos(committed_at.duration_since(applied_at)),
        Ordering::Relaxed,
    );
    match result {
        Ok(outcomes) => {
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
    ops: Table<'txn, (&'static str, u64), &'static [u8]>,
    kinds: Table<'txn, (&'static str, u8, u64), ()>,
    snapshots: Table<'txn, &'static str, (u64, u32, u64)>,
    chunks: Table<'txn, (&'static str, u64, u32), &'static [u8]>,
}

/// Applies every request of the group; `Err` only for storage errors,
/// which doom the whole transaction. Per-request rejections are `Ok(Err)`.
fn apply_all(
    txn: &WriteTransaction,
    group: &[Request],
    tally: &mut Tally,
) -> Result<Vec<StoreResult<()>>, redb::Error> {
    let mut tables = Tables {
        rooms: txn.open_table(ROOMS)?,
        memberships: txn.open_table(MEMBERSHIPS)?,
        ops: txn.open_table(OPS)?,
        kinds: txn.open_table(KINDS)?,
        snapshots: txn.open_table(SNAPSHOTS)?,
        chunks: txn.open_table(SNAPSHOT_CHUNKS)?,
    };
    group
        .iter()
        .map(|request| apply(&mut tables, &request.write, tally))
        .collect()
}

fn apply(
    t: &mut Tables<'_>,
    write: &Write,
    tally: &mut Tally,
) -> Result<StoreResult<()>, redb::Error> {
    match write {
        Write::Append { room, first, rows } => {
            let last = first + rows.len() as u64 - 1;
            // The fence: one range probe covers the whole batch and sees
            // the rows of earlier requests in this same transaction.
            let existing = t
                .ops
                .range((room.as_str(), *first)..=(room.as_str(), last))?
                .next()
                .transpose()?
                .map(|(key, _)| key.value().1);
            if let Some(seq) = existing {
                tally.conflicts += 1;
                return Ok(Err(StoreError::Conflict(format!(
                    "room {room}: seq {seq} exists"
                ))));
            }
            for (seq, kind, value) in rows {
                t.ops.insert((room.as_str(), *seq), value.as_slice())?;
                t.kinds.insert((room.as_str(), *kind, *seq), ())?;
            }
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
            // Drop the previous snapshot's chunks (any seq of this room),
            // then write the new chunks and last the header row that makes
            // them visible. The transaction makes all of it atomic anyway;
            // the order keeps the layout valid even read row by row.
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
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use redb::{ReadableDatabase, ReadableTableMetadata};

    use super::*;

    fn append(room: &str, first: u64, len: u64) -> Write {
        Write::Append {
            room: room.into(),
            first,
            rows: (first..first + len)
                .map(|seq| (seq, 0, format!("{room}/{seq}").into_bytes()))
                .collect(),
        }
    }

    fn create(id: &str) -> Write {
        Write::CreateRoom {
            id: id.into(),
            record: b"{}".to_vec(),
            users: vec!["u".into()],
        }
    }

    /// Requests of one group see each other: a later request conflicting
    /// with an earlier one of the same transaction is rejected, writes
    /// nothing, and leaves the rest of the group alone.
    #[test]
    fn one_group_checks_each_request_against_the_earlier_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::create(dir.path().join("t.redb")).expect("create");
        {
            let txn = db.begin_write().expect("begin");
            txn.open_table(ROOMS).expect("rooms");
            txn.open_table(MEMBERSHIPS).expect("memberships");
            txn.open_table(OPS).expect("ops");
            txn.open_table(KINDS).expect("kinds");
            txn.open_table(SNAPSHOTS).expect("snapshots");
            txn.open_table(SNAPSHOT_CHUNKS).expect("chunks");
            txn.commit().expect("commit");
        }
        let writes = vec![
            append("a", 1, 2),
            append("a", 2, 2), // overlaps the first on seq 2
            append("b", 1, 1),
            create("x"),
            create("x"), // duplicate of the previous
            append("a", 3, 1),
            append("a", 1, 1), // overlaps the first on seq 1
        ];
        let mut answers = Vec::new();
        let mut group: Vec<Request> = writes
            .into_iter()
            .map(|write| {
                let (reply, answer) = oneshot::channel();
                answers.push(answer);
                Request { write, reply }
            })
            .collect();
        let counters = Arc::new(Counters::default());
        commit_group(&db, &mut group, &counters);
        let outcomes: Vec<_> = answers
            .into_iter()
            .map(|a| a.blocking_recv().expect("an answer"))
            .collect();
        let ok: Vec<bool> = outcomes.iter().map(Result::is_ok).collect();
        assert_eq!(ok, [true, false, true, true, false, true, false]);
        for i in [1, 4, 6] {
            assert!(matches!(outcomes[i], Err(StoreError::Conflict(_))));
        }
        assert_eq!(counters.transactions.load(Ordering::Relaxed), 1);
        assert_eq!(counters.appends.load(Ordering::Relaxed), 3);
        assert_eq!(counters.ops.load(Ordering::Relaxed), 4);
        assert_eq!(counters.conflicts.load(Ordering::Relaxed), 3);

        let txn = db.begin_read().expect("read");
        let ops = txn.open_table(OPS).expect("ops");
        let rows: Vec<(String, u64, Vec<u8>)> = ops
            .iter()
            .expect("iter")
            .map(|e| {
                let (k, v) = e.expect("row");
                let (room, seq) = k.value();
                (room.to_owned(), seq, v.value().to_vec())
            })
            .collect();
        let expected: Vec<(String, u64, Vec<u8>)> = [("a", 1), ("a", 2), ("a", 3), ("b", 1)]
            .into_iter()
            .map(|(r, s)| (r.to_owned(), s, format!("{r}/{s}").into_bytes()))
            .collect();
        assert_eq!(rows, expected, "only the accepted appends were written");
        assert_eq!(txn.open_table(KINDS).expect("kinds").len().expect("len"), 4);
        assert_eq!(txn.open_table(ROOMS).expect("rooms").len().expect("len"), 1);
    }
}
