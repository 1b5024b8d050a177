//! Ops that are durable in the journal but not yet checkpointed into the
//! log tables, indexed in memory by room and seq.
//!
//! Why a journal at all: the log tables are ordered by (room, seq), so a
//! group of appends from G rooms dirties at least G leaf pages per table
//! (4 KiB each, copied on write) for G ops of ~0.5 KiB: measured, a group
//! commit of 1,000 rooms then spent most of its time writing and hashing
//! pages, and peaked near 14k appends/s on the reference machine. The
//! journal is keyed by a counter, so a whole group lands in a few adjacent
//! pages; the writer later moves many ops per room into the log tables in
//! one checkpoint, where each dirtied leaf takes dozens of ops instead of
//! one. Readers merge these in-memory ops with the log tables.
//!
//! The journal started as a redb table, but under a realistic load (100
//! rooms × 10 ops/s) groups are small, 1–2 appends, and each still paid a
//! whole durable redb commit: about 8 page writes, copy-on-write of the
//! B-tree's path, checksums and an fsync, most of the writer thread's
//! time. It is now an append-only file (see [`super::journal`]): a group
//! of appends costs one `write` and one `fdatasync`, and no redb
//! transaction at all.
//!
//! A checkpoint runs in slices (see [`super::writer`]): each slice's
//! transaction moves a run of ops per room, and only once it committed are
//! exactly those ops removed from here ([`Pending::remove`]). An op is
//! therefore always in this index, in the committed log tables, or (for a
//! moment) in both; never in neither.

use std::collections::HashMap;
use std::sync::Arc;

/// One journaled op: its kind code and its encoded logged op (the same
/// bytes the log table will hold).
#[derive(Debug, Clone)]
pub(crate) struct PendingOp {
    pub(crate) kind: u8,
    pub(crate) value: Arc<[u8]>,
}

/// One room's journaled ops, sorted by seq. A vector rather than a tree:
/// rooms append at their head, so nearly every insert is a push.
#[derive(Debug, Default)]
pub(crate) struct RoomLog {
    ops: Vec<(u64, PendingOp)>,
}

impl RoomLog {
    /// All ops, oldest first.
    #[cfg(test)]
    pub(crate) fn all(&self) -> &[(u64, PendingOp)] {
        &self.ops
    }

    /// The ops with `seq >= from`, oldest first.
    pub(crate) fn from(&self, from: u64) -> &[(u64, PendingOp)] {
        &self.ops[self.ops.partition_point(|(seq, _)| *seq < from)..]
    }

    /// The ops with `from <= seq <= to`, oldest first.
    pub(crate) fn range(&self, from: u64, to: u64) -> &[(u64, PendingOp)] {
        let start = self.ops.partition_point(|(seq, _)| *seq < from);
        let end = self.ops.partition_point(|(seq, _)| *seq <= to);
        &self.ops[start..end.max(start)]
    }

    /// The ops with `seq < before`, oldest first.
    pub(crate) fn below(&self, before: u64) -> &[(u64, PendingOp)] {
        &self.ops[..self.ops.partition_point(|(seq, _)| *seq < before)]
    }

    pub(crate) fn last_seq(&self) -> Option<u64> {
        self.ops.last().map(|(seq, _)| *seq)
    }

    fn overlap(&self, first: u64, last: u64) -> Option<u64> {
        self.from(first)
            .first()
            .map(|(seq, _)| *seq)
            .filter(|seq| *seq <= last)
    }

    /// Inserts one op; returns the op it replaced (the same seq), if any.
    fn insert(&mut self, seq: u64, op: PendingOp) -> Option<PendingOp> {
        if self.last_seq().is_none_or(|last| seq > last) {
            self.ops.push((seq, op));
            return None;
        }
        match self.ops.binary_search_by_key(&seq, |(s, _)| *s) {
            Ok(i) => Some(std::mem::replace(&mut self.ops[i].1, op)),
            Err(i) => {
                self.ops.insert(i, (seq, op));
                None
            }
        }
    }
}

/// Journaled ops per room.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    rooms: HashMap<String, RoomLog>,
    ops: usize,
    bytes: usize,
}

impl Pending {
    /// The lowest seq of `first..=last` this holds for `room`, if any.
    pub(crate) fn overlap(&self, room: &str, first: u64, last: u64) -> Option<u64> {
        self.rooms.get(room)?.overlap(first, last)
    }

    pub(crate) fn insert(&mut self, room: &str, rows: impl IntoIterator<Item = (u64, PendingOp)>) {
        let log = match self.rooms.get_mut(room) {
            Some(log) => log,
            None => self.rooms.entry(room.to_owned()).or_default(),
        };
        for (seq, op) in rows {
            self.bytes += op.value.len();
            match log.insert(seq, op) {
                // The fence keeps seqs unique, so this does not happen;
                // the counts stay right if it does.
                Some(old) => self.bytes -= old.value.len(),
                None => self.ops += 1,
            }
        }
    }

    /// Removes and returns `room`'s ops with `first <= seq <= last` (a
    /// checkpoint slice's run, once it is in the log tables). A room left
    /// without ops is forgotten.
    pub(crate) fn remove(&mut self, room: &str, first: u64, last: u64) -> Vec<(u64, PendingOp)> {
        let Some(log) = self.rooms.get_mut(room) else {
            return Vec::new();
        };
        let start = log.ops.partition_point(|(seq, _)| *seq < first);
        let end = log.ops.partition_point(|(seq, _)| *seq <= last).max(start);
        let removed: Vec<_> = log.ops.drain(start..end).collect();
        if log.ops.is_empty() {
            self.rooms.remove(room);
        }
        self.ops -= removed.len();
        self.bytes -= removed.iter().map(|(_, op)| op.value.len()).sum::<usize>();
        removed
    }

    /// Moves everything of `other` into `self`.
    pub(crate) fn absorb(&mut self, other: Pending) {
        for (room, log) in other.rooms {
            match self.rooms.get_mut(&room) {
                Some(_) => self.insert(&room, log.ops),
                None => {
                    // The common case for a busy node's group: a room's
                    // first batch since the last checkpoint moves whole.
                    self.ops += log.ops.len();
                    self.bytes += log.ops.iter().map(|(_, op)| op.value.len()).sum::<usize>();
                    self.rooms.insert(room, log);
                }
            }
        }
    }

    pub(crate) fn room(&self, room: &str) -> Option<&RoomLog> {
        self.rooms.get(room)
    }

    /// Every room's ops, rooms in id order (so that a checkpoint walks the
    /// log tables front to back, and a slice's rooms share leaf pages).
    pub(crate) fn sorted(&self) -> Vec<(&str, &RoomLog)> {
        let mut rooms: Vec<_> = self
            .rooms
            .iter()
            .map(|(room, log)| (room.as_str(), log))
            .collect();
        rooms.sort_unstable_by_key(|(room, _)| *room);
        rooms
    }

    pub(crate) fn ops(&self) -> usize {
        self.ops
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ops == 0
    }
}

/// Merges two runs sorted by seq in the same direction (`descending` or
/// not) into one of at most `limit` items; a seq present in both (an op
/// caught between a checkpoint slice's commit and its removal from
/// [`Pending`]) is kept once.
pub(crate) fn merge_by_seq<T>(
    a: Vec<(u64, T)>,
    b: Vec<(u64, T)>,
    descending: bool,
    limit: usize,
) -> Vec<T> {
    if b.is_empty() {
        return a.into_iter().take(limit).map(|(_, t)| t).collect();
    }
    if a.is_empty() {
        return b.into_iter().take(limit).map(|(_, t)| t).collect();
    }
    let mut out = Vec::with_capacity(limit.min(a.len() + b.len()));
    let mut a = a.into_iter().peekable();
    let mut b = b.into_iter().peekable();
    while out.len() < limit {
        let take_a = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some((sa, _)), Some((sb, _))) => {
                if sa == sb {
                    b.next();
                    true
                } else {
                    (sa < sb) != descending
                }
            }
        };
        let next = if take_a { a.next() } else { b.next() };
        if let Some((_, item)) = next {
            out.push(item);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_order_drops_duplicates_and_limits() {
        let a = vec![(1, "a1"), (3, "a3"), (5, "a5")];
        let b = vec![(2, "b2"), (3, "b3"), (6, "b6")];
        assert_eq!(
            merge_by_seq(a.clone(), b.clone(), false, 10),
            ["a1", "b2", "a3", "a5", "b6"]
        );
        assert_eq!(merge_by_seq(a, b, false, 3), ["a1", "b2", "a3"]);
        let a = vec![(5, 'a'), (3, 'a')];
        let b = vec![(6, 'b'), (4, 'b'), (3, 'b'), (1, 'b')];
        assert_eq!(merge_by_seq(a, b, true, 4), ['b', 'a', 'b', 'a']);
        assert!(merge_by_seq(Vec::<(u64, u8)>::new(), vec![(1, 1)], true, 0).is_empty());
    }

    #[test]
    fn overlap_and_counts() {
        let op = |n: u8| PendingOp {
            kind: 0,
            value: Arc::from(vec![n; 10]),
        };
        let mut p = Pending::default();
        p.insert("r", [(1, op(1)), (2, op(2))]);
        p.insert("s", [(7, op(7))]);
        assert_eq!(p.overlap("r", 2, 5), Some(2));
        assert_eq!(p.overlap("r", 3, 5), None);
        assert_eq!(p.overlap("s", 1, 6), None);
        assert_eq!(p.overlap("t", 1, 9), None);
        assert_eq!((p.ops(), p.bytes()), (3, 30));
        let mut q = Pending::default();
        q.insert("r", [(3, op(3))]);
        q.insert("t", [(1, op(1)), (2, op(2))]);
        p.absorb(q);
        assert_eq!(p.overlap("r", 3, 3), Some(3));
        assert_eq!((p.ops(), p.bytes()), (6, 60));
        assert_eq!(
            p.sorted().iter().map(|(r, _)| *r).collect::<Vec<_>>(),
            ["r", "s", "t"]
        );
        // Out of order and duplicate inserts keep the log sorted.
        p.insert("s", [(3, op(3)), (9, op(9)), (7, op(8))]);
        let seqs = |log: &[(u64, PendingOp)]| log.iter().map(|(s, _)| *s).collect::<Vec<_>>();
        let s = p.room("s").expect("room s");
        assert_eq!(seqs(s.all()), [3, 7, 9]);
        assert_eq!(s.all()[1].1.value[0], 8, "a duplicate seq replaces");
        assert_eq!(seqs(s.from(4)), [7, 9]);
        assert_eq!(seqs(s.below(9)), [3, 7]);
        assert_eq!(s.last_seq(), Some(9));
        assert_eq!(p.ops(), 8);
        assert_eq!(
            (p.ops(), p.bytes()),
            (8, 80),
            "a replaced op is counted once"
        );
        assert!(!p.is_empty());
        assert_eq!(seqs(p.room("s").expect("room s").range(4, 9)), [7, 9]);
        assert!(p.room("s").expect("room s").range(10, 20).is_empty());

        // A slice's run leaves, and only it; an emptied room is forgotten.
        assert_eq!(seqs(&p.remove("s", 3, 7)), [3, 7]);
        assert_eq!(seqs(p.room("s").expect("room s").all()), [9]);
        assert_eq!((p.ops(), p.bytes()), (6, 60));
        assert!(p.remove("s", 10, 12).is_empty());
        assert!(p.remove("nowhere", 1, 9).is_empty());
        assert_eq!(seqs(&p.remove("s", 0, u64::MAX)), [9]);
        assert!(p.room("s").is_none());
        for (room, first, last) in [("r", 1, 3), ("t", 1, 2)] {
            p.remove(room, first, last);
        }
        assert!(p.is_empty());
        assert_eq!((p.ops(), p.bytes()), (0, 0));
    }
}
