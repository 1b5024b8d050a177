//! The conformance suite every [`Store`] implementation runs (feature
//! `testsuite`).
//!
//! Each case is a public async function taking the store under test as
//! `Arc<dyn Store>` (an `Arc` so that cases can spawn concurrent writers).
//! [`store_conformance_tests!`](crate::store_conformance_tests) expands to
//! one `#[tokio::test]` per case, so a backend crate runs the very same
//! suite with one macro call:
//!
//! ```ignore
//! mod memory {
//!     collab_store::store_conformance_tests!(async {
//!         std::sync::Arc::new(collab_store::MemoryStore::new())
//!     });
//! }
//! ```
//!
//! The factory expression is evaluated once per test. It yields anything
//! that implements [`TestStore`]: an `Arc` of the store, or a pair of it and
//! a guard kept alive for the test (a temporary directory, a container).
//! The calling crate needs `tokio` (with `macros` and `rt-multi-thread`).
//!
//! Every case creates its rooms and users with random ids, so one shared
//! backend (a CQL server) can serve many cases and many runs at once.

mod cases;
mod gated;

use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use collab_protocol::{
    Cid, Epoch, NodeId, Op, OpEvent, Point, RoomId, RoomKind, Seq, StrokeId, UserId,
};

pub use cases::*;
pub use gated::GatedStore;

use crate::{RoomRecord, Store, Writer};

/// What a conformance test's factory may return.
pub trait TestStore: Send + 'static {
    fn store(&self) -> Arc<dyn Store>;
}

impl<S: Store> TestStore for Arc<S> {
    fn store(&self) -> Arc<dyn Store> {
        Arc::clone(self) as Arc<dyn Store>
    }
}

impl TestStore for Arc<dyn Store> {
    fn store(&self) -> Arc<dyn Store> {
        Arc::clone(self)
    }
}

/// A store and a guard that must outlive the test (say, its `TempDir`).
impl<T: TestStore, G: Send + 'static> TestStore for (T, G) {
    fn store(&self) -> Arc<dyn Store> {
        self.0.store()
    }
}

/// Expands to one `#[tokio::test]` per conformance case, each calling
/// `$make.await` for a fresh store. See the [module docs](crate::testsuite).
#[macro_export]
macro_rules! store_conformance_tests {
    ($make:expr $(,)?) => {
        $crate::store_conformance_tests!(@cases $make;
            create_room_then_read,
            create_room_conflict_keeps_the_first,
            rooms_of_user_lists_created_and_private_memberships,
            rooms_of_user_page_pages_by_id_and_kind,
            update_room_changes_name_members_and_listing,
            append_then_read,
            append_then_answers_once_with_the_batch,
            append_conflict_full_overlap,
            append_conflict_partial_overlap_writes_nothing,
            append_races_have_one_winner,
            invalid_batches_write_nothing,
            writer_is_stored_per_op,
            many_appends_are_gapless,
            read_ops_pages_with_after_and_limit,
            history_is_newest_first_before_exclusive,
            history_filters_kinds,
            history_page_is_stable,
            latest_snapshot_wins,
            chunked_snapshot_round_trip,
            empty_room_reads,
            concurrent_appends_from_many_rooms,
            delete_room_removes_it_and_its_history,
            delete_then_create_again_starts_after_the_tombstone,
            delete_of_an_unknown_room_changes_nothing,
            stale_owner_is_fenced_by_the_tombstone,
            delete_room_is_fenced_like_an_append,
            webhook_cursors_and_marks,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fixture = $make.await;
                let store = $crate::testsuite::TestStore::store(&fixture);
                $crate::testsuite::$case(store).await;
                drop(fixture);
            }
        )*
    };
}

/// The environment variable naming the CQL server the tests use: `host:port`
/// (keyspace `collab_test`) or a full `cql://…` store URL.
pub const TEST_CQL_ENV: &str = "COLLAB_TEST_CQL";

/// The store URL of the shared test CQL server, from [`TEST_CQL_ENV`].
/// Panics with directions when it is not set: `scripts/test.sh` starts a
/// server and sets it.
pub fn test_cql_url() -> String {
    match std::env::var(TEST_CQL_ENV) {
        Ok(target) if target.starts_with("cql://") => target,
        Ok(target) if !target.is_empty() => format!("cql://{target}/collab_test"),
        _ => panic!(
            "{TEST_CQL_ENV} is not set: run the tests with `bash scripts/test.sh` (it starts a \
             CQL server), or start one with `bash scripts/cql-server.sh start DIR` and set \
             {TEST_CQL_ENV}=127.0.0.1:PORT"
        ),
    }
}

/// A [`CqlStore`](crate::CqlStore) on the shared test server (one session
/// per call: a session belongs to the runtime that created it, and every
/// `#[tokio::test]` has its own).
pub async fn cql_test_store() -> Arc<crate::CqlStore> {
    let url = test_cql_url();
    let options = crate::CqlOptions::from_url(&url).expect("a valid test CQL URL");
    Arc::new(
        crate::CqlStore::connect(options)
            .await
            .unwrap_or_else(|e| panic!("test CQL server at {url}: {e}")),
    )
}

/// A random 64-bit value, different in every call and every process (the
/// std hasher is keyed randomly per process; a counter and the clock make
/// calls within it differ). Enough for unique ids without a `rand` dependency.
pub fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u128(nanos);
    hasher.finish()
}

/// A room id unique to this call: `prefix` and a random suffix.
pub fn unique_room(prefix: &str) -> RoomId {
    RoomId::parse(format!("{prefix}-{:016x}", random_u64())).expect("a valid room id")
}

/// A user id unique to this call.
pub fn unique_user(prefix: &str) -> UserId {
    UserId::parse(format!("{prefix}-{:016x}", random_u64())).expect("a valid user id")
}

pub fn writer(node: &str, term: u64) -> Writer {
    Writer {
        node: NodeId::parse(node).expect("a valid node id"),
        term,
    }
}

/// A room record created now by `creator`; `members: Some` makes it private.
pub fn room_record(
    id: &RoomId,
    kind: RoomKind,
    creator: &UserId,
    members: Option<Vec<UserId>>,
) -> RoomRecord {
    RoomRecord {
        id: id.clone(),
        kind,
        name: format!("room {id}"),
        epoch: Epoch::parse("e1").expect("a valid epoch"),
        created_by: creator.clone(),
        members,
        created_at: 1_700_000_000_000,
        ttl_secs: None,
        floor: Seq::ZERO,
    }
}

/// An op event of `room` at `seq` by user `u1`, with a cid derived from the
/// seq.
pub fn event(room: &RoomId, seq: u64, op: Op) -> OpEvent {
    OpEvent {
        room: room.clone(),
        seq: Seq(seq),
        user: UserId::parse("u1").expect("a valid user id"),
        ts: 1_700_000_000_000 + seq as i64,
        cid: Some(Cid::parse(format!("c{seq}")).expect("a valid cid")),
        op,
    }
}

/// A `stroke_points` op with `n` points, the bulk of a whiteboard's log.
pub fn stroke_points(n: usize) -> Op {
    let points: Vec<Point> = (0..n)
        .map(|i| [100.5 + i as f64 * 1.25, 200.25 - i as f64 * 0.5])
        .collect();
    Op::StrokePoints {
        stroke: StrokeId::parse("s1").expect("a valid stroke id"),
        points,
    }
}

pub fn message(text: &str) -> Op {
    Op::Message { text: text.into() }
}

/// A contiguous batch of `room`'s ops `first..first + len`, all
/// `stroke_points` of 16 points.
pub fn points_batch(room: &RoomId, first: u64, len: usize) -> Vec<OpEvent> {
    (0..len as u64)
        .map(|i| event(room, first + i, stroke_points(16)))
        .collect()
}
