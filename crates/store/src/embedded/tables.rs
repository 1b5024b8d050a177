//! The redb tables of the embedded store and the file format version.
//!
//! Keys are tuples so that redb's ordered B-trees give every read a single
//! range scan: a room's log is contiguous under `(room, seq)`, a room's ops
//! of one kind under `(room, kind, seq)`, a user's rooms under
//! `(user, room)` (ordered by room id, as `rooms_of_user` promises).

use redb::TableDefinition;

/// Bumped on any incompatible change of a table or value layout. Version 2
/// added tombstones to the log and the `deleted_rooms` table (a version 1
/// file is upgraded at open: it has neither); a binary that reads only
/// version 1 must not open a file with deleted rooms, whose journaled ops
/// it would bring back.
pub(crate) const FORMAT_VERSION: u64 = 2;
/// The version this build upgrades from.
pub(crate) const FORMAT_VERSION_1: u64 = 1;

/// `"format"` → [`FORMAT_VERSION`].
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// room id → room record (JSON).
pub(crate) const ROOMS: TableDefinition<&str, &[u8]> = TableDefinition::new("rooms");
/// (user, room id) → (): the index behind `rooms_of_user`.
pub(crate) const MEMBERSHIPS: TableDefinition<(&str, &str), ()> =
    TableDefinition::new("rooms_by_user");
/// journal position → one group's append batches (see `codec`). The
/// journal of earlier versions; appends now go to segment files (see
/// `journal`). Open still replays and empties it, so their data dirs open.
pub(crate) const JOURNAL: TableDefinition<u64, &[u8]> = TableDefinition::new("journal");
/// room id → the seq of the tombstone of the last room deleted under this
/// id: the floor of the next room created with it, and, when the journal
/// is replayed at open, the seq below which that id's journaled ops
/// belong to a deleted room and are skipped.
pub(crate) const DELETED: TableDefinition<&str, u64> = TableDefinition::new("deleted_rooms");
/// (room id, seq) → logged op, or a deleted room's tombstone (see `codec`).
pub(crate) const OPS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("ops");
/// (room id, op kind code, seq) → (): lets a `kinds`-filtered history page
/// read only the ops it returns instead of scanning the log.
pub(crate) const KINDS: TableDefinition<(&str, u8, u64), ()> = TableDefinition::new("ops_by_kind");
/// room id → (seq, chunk count, total length) of its latest snapshot.
pub(crate) const SNAPSHOTS: TableDefinition<&str, (u64, u32, u64)> =
    TableDefinition::new("snapshots");
/// (room id, snapshot seq, chunk index) → chunk bytes.
pub(crate) const SNAPSHOT_CHUNKS: TableDefinition<(&str, u64, u32), &[u8]> =
    TableDefinition::new("snapshot_chunks");

/// (room id, endpoint id) → the endpoint's webhook cursor in the room
/// (see `WebhookLog`).
pub(crate) const WEBHOOK_CURSORS: TableDefinition<(&str, &str), u64> =
    TableDefinition::new("webhook_cursors");
/// (room id, mark id) → (): the webhook marks (see `WebhookLog`).
pub(crate) const WEBHOOK_MARKS: TableDefinition<(&str, &str), ()> =
    TableDefinition::new("webhook_marks");

/// Snapshots are cut into chunks of this size: large enough that a
/// snapshot is a handful of rows, small enough that no single value is
/// unwieldy for the B-tree's overflow pages or the CQL backend's cells.
pub const SNAPSHOT_CHUNK_SIZE: usize = 1 << 20;
