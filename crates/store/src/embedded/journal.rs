//! The journal: an append-only log in segment files beside the redb file.
//!
//! A group's accepted appends are one record, written with one `write_all`
//! and made durable with one `fdatasync` before anyone is answered. That is
//! the whole cost of a group of appends: no B-tree, no copy-on-write pages,
//! no checksummed redb commit (which cost about 8 page writes and most of
//! the writer thread's time when groups were small).
//!
//! A segment is named `<db file name>.journal-<key of its first record,
//! zero-padded>` so that names sort in key order. A record is
//! `[payload length u32 LE][key u64 LE][payload][xxh3-64 of key and
//! payload u64 LE]`; the payload is one group's journal row (see `codec`).
//!
//! With preallocation on (the default), segments are files zero-filled
//! and synced ahead of time by a helper thread (see [`super::spare`]), so
//! that a group's `fdatasync` writes only its record, not the file's new
//! size. The rest of such a file is zeros, which end its records the way
//! a file's end does. When a record would not fit, the journal continues
//! in the next spare (or grows the file while none is ready).
//!
//! Checkpoint cycles [`rotate`](Journal::rotate) to a fresh segment when
//! they start; their extent is every older (sealed) segment, which they
//! [`delete_below`](Journal::delete_below) only after their last slice
//! committed. At open, [`replay`] reads every segment in key order: a
//! torn or bad record at the tail of the last segment is where the log
//! ends (its group was never acknowledged: its fsync did not return), and
//! is cut off; a bad record anywhere else is corruption, unless nothing but
//! zeros follows it (the unused part of a preallocated segment).
//!
//! After a failed write or sync the file's tail is unknown (the record
//! may be partly or even wholly on disk while its callers were told
//! `Unavailable`). Leaving it would let a retried append reuse those seqs
//! and then disagree with the replay, so the journal truncates the segment
//! back to its last good length and syncs that before it accepts another
//! record; while that repair fails, every append fails.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use twox_hash::XxHash3_64;

use super::spare::Spares;
use crate::{StoreError, StoreResult};

/// The journal asks for the next spare once the current segment will hold
/// this much (or half a spare's length, if that is less), so that a store
/// that never journals much never writes a spare at all.
const SPARE_AFTER: u64 = 1 << 20;

/// `[payload length u32][key u64]`.
const HEADER_LEN: usize = 4 + 8;
/// `[xxh3-64 u64]`.
const TRAILER_LEN: usize = 8;

/// The segment files' name prefix for the redb file at `db`.
fn prefix(db: &Path) -> String {
    let name = db.file_name().map_or_else(
        || "collab.redb".into(),
        |name| name.to_string_lossy().into_owned(),
    );
    format!("{name}.journal-")
}

fn dir_of(db: &Path) -> PathBuf {
    match db.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The segment of the redb file at `db` whose first key is `first`.
pub(crate) fn segment_path(db: &Path, first: u64) -> PathBuf {
    dir_of(db).join(format!("{}{first:020}", prefix(db)))
}

/// Where the helper keeps the next segment's file until it is needed. Its
/// name does not parse as a segment's.
fn spare_path(db: &Path) -> PathBuf {
    dir_of(db).join(format!("{}spare", prefix(db)))
}

/// Every segment of the redb file at `db`, in key order.
pub(crate) fn segments(db: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let prefix = prefix(db);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir_of(db))? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(first) = name
            .to_str()
            .and_then(|name| name.strip_prefix(&prefix))
            .and_then(|key| key.parse::<u64>().ok())
        else {
            continue;
        };
        out.push((first, entry.path()));
    }
    out.sort();
    Ok(out)
}

fn checksum(key: u64, payload: &[u8]) -> u64 {
    let mut hasher = XxHash3_64::default();
    std::hash::Hasher::write(&mut hasher, &key.to_le_bytes());
    std::hash::Hasher::write(&mut hasher, payload);
    std::hash::Hasher::finish(&hasher)
}

/// Appends one record to `out`.
pub(crate) fn encode_record(out: &mut Vec<u8>, key: u64, payload: &[u8]) -> io::Result<()> {
    let len =
        u32::try_from(payload.len()).map_err(|_| io::Error::other("journal record over 4 GiB"))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&key.to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&checksum(key, payload).to_le_bytes());
    Ok(())
}

/// The whole, valid records at the start of `bytes` as `(key, payload)`,
/// and the length they take (shorter than `bytes` if a record is torn or
/// fails its checksum).
fn decode_records(bytes: &[u8]) -> (Vec<(u64, &[u8])>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + HEADER_LEN) {
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let key = u64::from_le_bytes(header[4..].try_into().expect("8 bytes"));
        let start = at + HEADER_LEN;
        let Some(payload) = bytes.get(start..start + len) else {
            break;
        };
        let Some(sum) = bytes.get(start + len..start + len + TRAILER_LEN) else {
            break;
        };
        if u64::from_le_bytes(sum.try_into().expect("8 bytes")) != checksum(key, payload) {
            break;
        }
        records.push((key, payload));
        at = start + len + TRAILER_LEN;
    }
    (records, at)
}

/// What [`replay`] found.
pub(crate) struct Replay {
    /// The segments read, to delete once their ops are checkpointed.
    pub(crate) segments: Vec<PathBuf>,
    /// The key after the highest one seen (0 if none).
    pub(crate) next_key: u64,
}

/// Reads every segment of the redb file at `db` in key order and hands
/// each record's payload to `apply`. Cuts a bad tail off the last segment
/// (and syncs that); refuses a bad record in any other segment.
pub(crate) fn replay(
    db: &Path,
    mut apply: impl FnMut(&[u8]) -> StoreResult<()>,
) -> StoreResult<Replay> {
    let io_error = |what: &Path, e: io::Error| {
        StoreError::Unavailable(format!("journal {}: {e}", what.display()))
    };
    let found = segments(db).map_err(|e| io_error(db, e))?;
    let mut next_key = 0u64;
    for (i, (first, path)) in found.iter().enumerate() {
        // An empty segment (rotated to, then nothing written) still names
        // a key that was handed out.
        next_key = next_key.max(*first);
        let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
        let (records, good) = decode_records(&bytes);
        // Zeros after the records: the unused part of a preallocated
        // segment.
        if bytes[good..].iter().any(|b| *b != 0) {
            if i + 1 < found.len() {
                return Err(StoreError::Corrupt(format!(
                    "journal segment {} has a bad record at byte {good} and is not the last one",
                    path.display()
                )));
            }
            // Never acknowledged: the fsync that would have made it durable
            // did not return before the process stopped.
            tracing::warn!(
                segment = %path.display(),
                at = good,
                "journal: cutting off a torn tail"
            );
            let file = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| io_error(path, e))?;
            file.set_len(good as u64).map_err(|e| io_error(path, e))?;
            file.sync_all().map_err(|e| io_error(path, e))?;
        }
        for (key, payload) in records {
            apply(payload)?;
            next_key = next_key.max(key.saturating_add(1));
        }
    }
    Ok(Replay {
        segments: found.into_iter().map(|(_, path)| path).collect(),
        next_key,
    })
}

/// Deletes `paths` and syncs their directory. Failures are logged and
/// left: a segment still there is replayed at the next open, harmlessly.
pub(crate) fn delete(db: &Path, paths: &[PathBuf]) -> bool {
    let mut all = true;
    for path in paths {
        if let Err(e) = std::fs::remove_file(path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(segment = %path.display(), error = %e, "journal: cannot delete segment");
            all = false;
        }
    }
    if let Err(e) = sync_dir(&dir_of(db)) {
        tracing::warn!(error = %e, "journal: cannot sync the data dir");
        all = false;
    }
    all
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates an empty segment file at `path` (replacing an empty or stale
/// one) and syncs it and its directory.
fn create_file(db: &Path, path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)?;
    file.sync_all()?;
    sync_dir(&dir_of(db))?;
    Ok(file)
}

/// The writer's end of the journal: the segment it appends to, and the
/// sealed ones a checkpoint cycle has yet to delete.
pub(crate) struct Journal {
    db: PathBuf,
    file: File,
    /// The current segment's first key and path.
    first: u64,
    path: PathBuf,
    /// The current segment's length up to its last durable record.
    len: u64,
    /// How much of the current segment's file is zero-filled and synced
    /// (0 if none): records that end within it leave the file's size alone.
    capacity: u64,
    /// A write or sync failed and the tail is not yet cut back to `len`.
    torn: bool,
    /// Older segments, oldest first, with their first keys.
    sealed: Vec<(u64, PathBuf)>,
    /// The record being written (kept to reuse its allocation).
    buf: Vec<u8>,
    /// The helper that preallocates segments; `None`: segments grow.
    spares: Option<Spares>,
}

impl Journal {
    /// Starts the journal at a fresh, empty segment whose first key will
    /// be `first` (replacing an empty or stale file of that name). With
    /// `segment_bytes` above 0, later segments are preallocated to that
    /// length.
    pub(crate) fn start(db: &Path, first: u64, segment_bytes: u64) -> io::Result<Journal> {
        let path = segment_path(db, first);
        let file = create_file(db, &path)?;
        let spares = if segment_bytes > 0 {
            Some(Spares::start(spare_path(db), segment_bytes)?)
        } else {
            None
        };
        Ok(Journal {
            db: db.to_path_buf(),
            file,
            first,
            path,
            len: 0,
            capacity: 0,
            torn: false,
            sealed: Vec::new(),
            buf: Vec::new(),
            spares,
        })
    }

    /// The ready spare, renamed to be the segment whose first key is
    /// `first` (durably), with its path and preallocated length; `None` if
    /// none is ready or it cannot be used. A spare renamed but not durably
    /// named is left as an empty segment of zeros, which replays as nothing
    /// (and which a fresh segment of that name replaces).
    fn take_spare(&self, first: u64) -> Option<(File, PathBuf, u64)> {
        let spares = self.spares.as_ref()?;
        let path = segment_path(&self.db, first);
        let taken = (|| {
            let Some(capacity) = spares.take(&path)? else {
                return Ok(None);
            };
            let file = OpenOptions::new().write(true).open(&path)?;
            sync_dir(&dir_of(&self.db))?;
            io::Result::Ok(Some((file, capacity)))
        })();
        match taken {
            Ok(taken) => taken.map(|(file, capacity)| (file, path, capacity)),
            Err(e) => {
                tracing::warn!(error = %e, "journal: cannot use the spare segment");
                None
            }
        }
    }

    /// Seals the current segment and continues in `file`.
    fn seal_and_continue(&mut self, (file, path, capacity): (File, PathBuf, u64), first: u64) {
        let sealed = (
            std::mem::replace(&mut self.first, first),
            std::mem::replace(&mut self.path, path),
        );
        self.sealed.push(sealed);
        self.file = file;
        self.len = 0;
        self.capacity = capacity;
    }

    /// Before appending a record of `len` bytes whose key is `key`: moves
    /// to the spare if the record would grow the current segment's file
    /// and a spare is ready, and asks for the next spare once this segment
    /// is well on its way. Without a spare the file just grows.
    fn make_room(&mut self, key: u64, len: u64) {
        if self.len > 0
            && self.len + len > self.capacity
            && let Some(next) = self.take_spare(key)
        {
            self.seal_and_continue(next, key);
        }
        if let Some(spares) = &self.spares
            && self.len + len >= SPARE_AFTER.min(spares.bytes() / 2)
        {
            spares.want();
        }
    }

    /// Appends one record and syncs it: once this returns `Ok`, the record
    /// survives a crash.
    pub(crate) fn append(&mut self, key: u64, payload: &[u8]) -> io::Result<()> {
        self.repair()?;
        self.buf.clear();
        encode_record(&mut self.buf, key, payload)?;
        self.make_room(key, self.buf.len() as u64);
        let written = (|| {
            // Positioned writes: the offset is ours, whatever a failed
            // write left behind.
            use std::os::unix::fs::FileExt as _;
            self.file.write_all_at(&self.buf, self.len)?;
            self.file.sync_data()
        })();
        match written {
            Ok(()) => {
                self.len += self.buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.torn = true;
                // Best effort now; `append` and `rotate` retry it.
                let _ = self.repair();
                Err(e)
            }
        }
    }

    /// After a failed write: cuts the segment back to its last durable
    /// record, durably (its preallocated rest goes with it: this segment
    /// grows from here on).
    fn repair(&mut self) -> io::Result<()> {
        if self.torn {
            self.file.set_len(self.len)?;
            self.file.sync_all()?;
            self.capacity = 0;
            self.torn = false;
        }
        Ok(())
    }

    /// Seals the current segment and starts a new one at `next_key` (the
    /// key of the next record). A no-op while the current segment is
    /// empty: there is nothing to seal.
    pub(crate) fn rotate(&mut self, next_key: u64) -> io::Result<()> {
        self.repair()?;
        if self.len == 0 {
            return Ok(());
        }
        let next = match self.take_spare(next_key) {
            Some(spare) => spare,
            None => {
                let path = segment_path(&self.db, next_key);
                (create_file(&self.db, &path)?, path, 0)
            }
        };
        self.seal_and_continue(next, next_key);
        Ok(())
    }

    /// Deletes the sealed segments whose records all lie below `end` (the
    /// current segment is never deleted). Call only once their ops are
    /// committed to the log tables.
    pub(crate) fn delete_below(&mut self, end: u64) {
        // A sealed segment's records lie below the next segment's first key.
        let mut bounds: Vec<u64> = self
            .sealed
            .iter()
            .skip(1)
            .map(|(first, _)| *first)
            .collect();
        bounds.push(self.first);
        let (done, kept): (Vec<_>, Vec<_>) = self
            .sealed
            .drain(..)
            .zip(bounds)
            .partition(|(_, bound)| *bound <= end);
        self.sealed = kept.into_iter().map(|(segment, _)| segment).collect();
        let paths: Vec<PathBuf> = done.into_iter().map(|((_, path), _)| path).collect();
        if !paths.is_empty() {
            delete(&self.db, &paths);
        }
    }

    /// The current segment's first key.
    pub(crate) fn first(&self) -> u64 {
        self.first
    }
}

/// Every record of every segment of the redb file at `db`, as `(key,
/// payload)`, in key order (tests).
#[cfg(test)]
pub(crate) fn records(db: &Path) -> io::Result<Vec<(u64, Vec<u8>)>> {
    let mut out = Vec::new();
    for (_, path) in segments(db)? {
        let bytes = std::fs::read(path)?;
        let (records, _) = decode_records(&bytes);
        out.extend(records.into_iter().map(|(key, p)| (key, p.to_vec())));
    }
    Ok(out)
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("path", &self.path)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_bad_tail_ends_them() {
        let mut bytes = Vec::new();
        encode_record(&mut bytes, 7, b"seven").expect("encode");
        encode_record(&mut bytes, 8, b"").expect("encode");
        let whole = bytes.len();
        let (records, good) = decode_records(&bytes);
        assert_eq!(records, [(7, &b"seven"[..]), (8, &b""[..])]);
        assert_eq!(good, whole);
        // Torn: a partial record after the good ones.
        encode_record(&mut bytes, 9, b"nine").expect("encode");
        for cut in whole..bytes.len() {
            let (records, good) = decode_records(&bytes[..cut]);
            assert_eq!((records.len(), good), (2, whole), "cut at {cut}");
        }
        // A flipped payload byte fails the checksum.
        let mut bad = bytes.clone();
        bad[whole + HEADER_LEN] ^= 1;
        assert_eq!(decode_records(&bad).1, whole);
        assert_eq!(decode_records(&bytes).0.len(), 3);
    }

    #[test]
    fn zeros_after_the_records_end_them_like_the_end_of_the_file() {
        let mut bytes = Vec::new();
        encode_record(&mut bytes, 3, b"three").expect("encode");
        let whole = bytes.len();
        bytes.resize(whole + 4096, 0);
        assert_eq!(decode_records(&bytes), (vec![(3, &b"three"[..])], whole));
    }

    fn file_len(path: &Path) -> u64 {
        std::fs::metadata(path).expect("metadata").len()
    }

    /// With preallocation the journal moves to a zero-filled segment and
    /// writes into it without growing it; every record replays, in order,
    /// from the plain first segment, the sealed preallocated ones and the
    /// current one, and a spare (or one a crash left) is never replayed.
    #[test]
    fn preallocated_segments_are_filled_in_place_and_replay_whole() {
        const SEGMENT: u64 = 4096;
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("t.redb");
        std::fs::write(spare_path(&db), b"left by a crash").expect("write");
        let mut journal = Journal::start(&db, 0, SEGMENT).expect("start");
        let payload = |key: u64| format!("record {key} ").repeat(20).into_bytes();
        let mut key = 0;
        let mut preallocated = Vec::new();
        // Until the journal has filled three preallocated segments and
        // started a fourth. The helper makes spares in the background:
        // before a record that would not fit, wait for the spare the
        // journal asked for (or the segment would grow instead).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while preallocated.len() < 4 {
            let len = (HEADER_LEN + payload(key).len() + TRAILER_LEN) as u64;
            if journal.len >= SEGMENT / 2 && journal.len + len > journal.capacity {
                let spares = journal.spares.as_ref().expect("preallocating");
                while !spares.is_ready() {
                    assert!(std::time::Instant::now() < deadline, "no spare came");
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
            let before = journal.first();
            journal.append(key, &payload(key)).expect("append");
            key += 1;
            if journal.first() != before && journal.capacity == SEGMENT {
                preallocated.push(journal.path.clone());
            }
        }
        // Filled in place: the sealed preallocated segments kept their
        // length, and so does the current one.
        for path in &preallocated {
            assert_eq!(file_len(path), SEGMENT, "{}", path.display());
        }
        assert!(journal.len > 0 && journal.len <= SEGMENT);
        drop(journal);
        let mut replayed = Vec::new();
        let found = replay(&db, |record| {
            replayed.push(record.to_vec());
            Ok(())
        })
        .expect("replay");
        assert_eq!(replayed, (0..key).map(payload).collect::<Vec<_>>());
        assert_eq!(found.next_key, key);
        assert!(
            found
                .segments
                .iter()
                .all(|s| !s.ends_with("t.redb.journal-spare")),
            "{:?}",
            found.segments
        );
    }

    /// A torn record in a preallocated segment, zeros after it: replay
    /// ends the log before it, and the records before it are whole.
    #[test]
    fn a_torn_record_before_the_zeros_is_cut_off() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("t.redb");
        let path = segment_path(&db, 0);
        let mut bytes = Vec::new();
        encode_record(&mut bytes, 0, b"acked").expect("encode");
        let whole = bytes.len();
        encode_record(&mut bytes, 1, b"never acked").expect("encode");
        bytes.truncate(whole + 9);
        bytes.resize(8192, 0);
        std::fs::write(&path, &bytes).expect("write");
        let mut replayed = Vec::new();
        replay(&db, |record| {
            replayed.push(record.to_vec());
            Ok(())
        })
        .expect("replay");
        assert_eq!(replayed, [b"acked".to_vec()]);
        assert_eq!(file_len(&path), whole as u64);
    }

    /// A write that failed part-way leaves bytes past the last durable
    /// record; the next append cuts them off first, so the segment, once
    /// sealed, replays as exactly the records that were acknowledged.
    #[test]
    fn the_append_after_a_failed_write_cuts_its_bytes_off() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("t.redb");
        let mut journal = Journal::start(&db, 0, 0).expect("start");
        journal.append(0, b"acked").expect("append");
        // What a failed `write_all_at` or `sync_data` may leave: part of
        // a record, here whole enough to decode if it stayed.
        let mut lost = Vec::new();
        encode_record(&mut lost, 1, b"never acked").expect("encode");
        {
            use std::os::unix::fs::FileExt as _;
            journal
                .file
                .write_all_at(&lost, journal.len)
                .expect("write");
        }
        journal.torn = true;
        journal
            .append(1, b"retried")
            .expect("append after the failure");
        // Sealed, a segment with leftover bytes would refuse to open.
        journal.rotate(2).expect("rotate");
        journal.append(2, b"next").expect("append");
        let mut replayed = Vec::new();
        let found = replay(&db, |payload| {
            replayed.push(payload.to_vec());
            Ok(())
        })
        .expect("replay");
        assert_eq!(replayed, [&b"acked"[..], b"retried", b"next"]);
        assert_eq!(found.next_key, 3);
    }
}
