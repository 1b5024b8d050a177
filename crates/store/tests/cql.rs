//! The CQL store against a real CQL server (Cassandra or ScyllaDB) named by
//! `COLLAB_TEST_CQL`; `scripts/test.sh` starts one for the whole run. Every
//! test uses its own random room ids, so the keyspace is shared.

use std::collections::HashMap;
use std::sync::Arc;

use collab_protocol::{OpEvent, OpKind, Seq};
use collab_store::testsuite::{cql_test_store, event, message, points_batch, unique_room, writer};
use collab_store::{CqlOptions, CqlStore, RoomCatalog, Store, StoreError, StoreReader, Writer};

mod conformance {
    collab_store::store_conformance_tests!(collab_store::testsuite::cql_test_store());
}

/// Ops per op-log partition (the store's layout constant).
const BUCKET: u64 = 4096;

/// Two writers race for one room's next seqs, round after round, each
/// appending at the head it read. Exactly one wins each seq; the loser gets
/// `Conflict`; the log has no gap and no fork: every seq holds exactly what
/// its winner wrote, tagged with the winner.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_writers_racing_for_the_next_seqs_never_fork_the_log() {
    let store = cql_test_store().await;
    let room = unique_room("fence-race");
    let rounds = 150u64;
    let racers: Vec<_> = (0..2u64)
        .map(|i| {
            let store = Arc::clone(&store);
            let room = room.clone();
            tokio::spawn(async move {
                let me = writer(&format!("node-{i}"), 10 + i);
                let mut won: HashMap<u64, String> = HashMap::new();
                let mut conflicts = 0u64;
                let mut unknown = 0u64;
                let mut seq = 0u64;
                while seq < rounds * 2 {
                    seq = store.head(&room).await.expect("head").get();
                    let first = seq + 1;
                    // 1 to 3 ops, so batches overlap partially too.
                    let len = 1 + (first + i) % 3;
                    let batch: Vec<OpEvent> = (first..first + len)
                        .map(|s| event(&room, s, message(&format!("{s} by {i}"))))
                        .collect();
                    match store.append(&room, Seq(first), &batch, &me).await {
                        Ok(()) => {
                            for s in first..first + len {
                                won.insert(s, format!("{s} by {i}"));
                            }
                        }
                        Err(StoreError::Conflict(_)) => conflicts += 1,
                        // Paxos contention can outlast the server's timeout;
                        // the outcome was settled as "not written" or left
                        // unknown, and the next round re-reads the head.
                        Err(StoreError::Unavailable(_)) => unknown += 1,
                        Err(e) => {
                            panic!("racer {i}: expected Ok, Conflict or Unavailable, got {e:?}")
                        }
                    }
                }
                (me, won, conflicts, unknown)
            })
        })
        .collect();
    let mut results = Vec::new();
    for racer in racers {
        results.push(racer.await.expect("racer task"));
    }
    let log = store
        .read_log(&room, Seq::ZERO, 10_000)
        .await
        .expect("read_log");
    let head = store.head(&room).await.expect("head").get();
    assert_eq!(log.len() as u64, head, "the log and its head disagree");
    for (i, logged) in log.iter().enumerate() {
        assert_eq!(logged.event.seq.get(), i as u64 + 1, "gap in the log");
    }
    let mut claimed = 0;
    for (me, won, _, _) in &results {
        for (seq, text) in won {
            let logged = &log[*seq as usize - 1];
            assert_eq!(
                &logged.writer, me,
                "seq {seq} acked to {me:?} but stored for another"
            );
            assert_eq!(
                logged.event.op,
                message(text),
                "seq {seq} holds another writer's op"
            );
            claimed += 1;
        }
    }
    // Every stored seq was acked to its writer, except those whose append
    // answered `unavailable` (stored or not: the caller may not assume).
    let unknown: u64 = results.iter().map(|r| r.3).sum();
    if unknown == 0 {
        assert_eq!(
            claimed,
            log.len(),
            "a stored seq that no writer was told it won"
        );
    }
    assert!(
        log.iter().all(|l| results.iter().any(|r| r.0 == l.writer)),
        "a row by a writer that never wrote"
    );
    let conflicts: u64 = results.iter().map(|r| r.2).sum();
    assert!(conflicts > 0, "the writers never actually raced");
}

/// Appends that cross partition boundaries, and a log spanning several
/// partitions: head, read_log, history with and without kinds agree with
/// what was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_spans_partitions_seamlessly() {
    let store = cql_test_store().await;
    let room = unique_room("buckets");
    let w = writer("node-a", 1);
    let total = 2 * BUCKET + 100;
    // Every 500th op is a message, the rest strokes; batches of 300 cross
    // both boundaries in the middle of a batch.
    let op = |s: u64| {
        if s.is_multiple_of(500) {
            message(&format!("m{s}"))
        } else {
            collab_store::testsuite::stroke_points(4)
        }
    };
    let mut next = 1;
    while next <= total {
        let len = 300.min(total - next + 1);
        let batch: Vec<OpEvent> = (next..next + len).map(|s| event(&room, s, op(s))).collect();
        store
            .append(&room, Seq(next), &batch, &w)
            .await
            .expect("append");
        next += len;
    }
    assert_eq!(store.head(&room).await.expect("head"), Seq(total));
    let all = store
        .read_log(&room, Seq(BUCKET - 1000), 5000)
        .await
        .expect("read_log");
    assert_eq!(all.len(), 5000);
    assert!(
        all.iter()
            .enumerate()
            .all(|(i, l)| l.event.seq.get() == BUCKET - 999 + i as u64)
    );
    let tail = store
        .read_log(&room, Seq(2 * BUCKET), 1000)
        .await
        .expect("read_log");
    assert_eq!(tail.len(), 100);
    let page = store
        .history(&room, Seq(BUCKET + 5), 20, None)
        .await
        .expect("history");
    let seqs: Vec<u64> = page.iter().map(|e| e.seq.get()).collect();
    assert_eq!(seqs, (BUCKET - 15..=BUCKET + 4).rev().collect::<Vec<_>>());
    let messages = store
        .history(&room, Seq(u64::MAX), 100, Some(&[OpKind::Message]))
        .await
        .expect("history");
    let seqs: Vec<u64> = messages.iter().map(|e| e.seq.get()).collect();
    assert_eq!(
        seqs,
        (1..=total / 500).rev().map(|k| k * 500).collect::<Vec<_>>()
    );
    // A page of 3 messages below 4,100: 4,000, 3,500, 3,000 (two partitions).
    let page = store
        .history(&room, Seq(BUCKET + 4), 3, Some(&[OpKind::Message]))
        .await
        .expect("history");
    let seqs: Vec<u64> = page.iter().map(|e| e.seq.get()).collect();
    assert_eq!(seqs, vec![4000, 3500, 3000]);
}

/// An append larger than the byte budget of one conditional write is cut
/// into several, and reads back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_append_is_cut_under_the_batch_budget() {
    let mut options = CqlOptions::from_url(&collab_store::testsuite::test_cql_url()).expect("url");
    options.max_batch_bytes = 4 * 1024;
    let store = CqlStore::connect(options).await.expect("connect");
    let room = unique_room("big-append");
    let w: Writer = writer("node-a", 1);
    let batch = points_batch(&room, 1, 200);
    store
        .append(&room, Seq(1), &batch, &w)
        .await
        .expect("append");
    let log = store.read_ops(&room, Seq::ZERO, 1000).await.expect("read");
    assert_eq!(log, batch);
    // A rival at seq 1 still conflicts and writes nothing.
    let rival = vec![event(&room, 1, message("rival"))];
    assert!(matches!(
        store
            .append(&room, Seq(1), &rival, &writer("node-b", 2))
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.head(&room).await.expect("head"), Seq(200));
}

/// Conditional writes whose outcome is unknown (the client gives up after
/// 1 ms, long before a Paxos round ends) are settled by a serial read
/// before `append` answers: an `Ok` is always stored with this writer, and
/// an `unavailable` never leaves a later append in conflict with itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_outcomes_are_resolved_before_answering() {
    let mut options = CqlOptions::from_url(&collab_store::testsuite::test_cql_url()).expect("url");
    options.request_timeout = std::time::Duration::from_millis(1);
    let hasty = CqlStore::connect(options).await.expect("connect");
    let store = cql_test_store().await;
    let room = unique_room("unknown-outcome");
    let w = writer("node-a", 7);
    let mut acked = Vec::new();
    for _ in 0..40 {
        let first = store.head(&room).await.expect("head").get() + 1;
        let batch = vec![event(&room, first, message(&format!("op {first}")))];
        match hasty.append(&room, Seq(first), &batch, &w).await {
            Ok(()) => acked.push(first),
            Err(StoreError::Unavailable(_)) => {}
            Err(e) => panic!("expected Ok or Unavailable, got {e:?}"),
        }
    }
    assert!(
        hasty.resolved_appends() > 0,
        "no append timed out: the resolution path was not exercised"
    );
    assert!(!acked.is_empty(), "no append was ever acknowledged");
    let log = store.read_log(&room, Seq::ZERO, 1000).await.expect("read");
    for seq in acked {
        let logged = &log[seq as usize - 1];
        assert_eq!(logged.event.seq.get(), seq);
        assert_eq!(logged.writer, w, "acked seq {seq} is not stored as ours");
    }
    for (i, logged) in log.iter().enumerate() {
        assert_eq!(logged.event.seq.get(), i as u64 + 1, "gap in the log");
    }
}

/// Rows below a deleted room's tombstone are removed, which leaves holes an
/// owner that went stale before the deletion could still write into (its
/// append is conditional on its own seqs only). Nothing it writes there is
/// ever part of a room created under the id again: that room's log, head
/// and history start above the tombstone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_a_stale_owner_writes_below_a_tombstone_never_show() {
    let store = cql_test_store().await;
    let room = unique_room("holes");
    let alice = collab_store::testsuite::unique_user("alice");
    let mut record = collab_store::testsuite::room_record(
        &room,
        collab_protocol::RoomKind::Channel,
        &alice,
        None,
    );
    store.create_room(&record).await.expect("create");
    let owner = writer("node-a", 1);
    let batch: Vec<OpEvent> = (1..=5).map(|s| event(&room, s, message("old"))).collect();
    store
        .append(&room, Seq(1), &batch, &owner)
        .await
        .expect("append");
    store
        .delete_room(
            &room,
            &collab_store::Deletion {
                epoch: record.epoch.clone(),
                at: Seq(6),
                writer: owner.clone(),
            },
        )
        .await
        .expect("delete");
    // A node that loaded the room at head 2 and never heard of the rest.
    let stale = writer("node-stale", 2);
    store
        .append(&room, Seq(3), &[event(&room, 3, message("orphan"))], &stale)
        .await
        .expect("a write into a hole is not refused");

    record.epoch = collab_protocol::Epoch::parse("e2").expect("epoch");
    store.create_room(&record).await.expect("create again");
    assert_eq!(store.head(&room).await.expect("head"), Seq(6));
    for kinds in [None, Some(&[OpKind::Message][..])] {
        assert!(
            store
                .history(&room, Seq(7), 100, kinds)
                .await
                .expect("history")
                .is_empty(),
            "{kinds:?}"
        );
    }
    store
        .append(&room, Seq(7), &[event(&room, 7, message("new"))], &owner)
        .await
        .expect("the new room's first op");
    assert_eq!(store.head(&room).await.expect("head"), Seq(7));
    for kinds in [None, Some(&[OpKind::Message][..])] {
        let seqs: Vec<u64> = store
            .history(&room, Seq(8), 100, kinds)
            .await
            .expect("history")
            .iter()
            .map(|op| op.seq.get())
            .collect();
        assert_eq!(seqs, [7], "{kinds:?}");
    }
    let log = store.read_log(&room, Seq(6), 10).await.expect("read");
    assert_eq!(log.len(), 1);
}

/// A room large enough to span partitions is deleted whole: every
/// partition below the tombstone's goes, and the next room's head is found
/// from the tombstone's partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_room_across_partitions_removes_every_partition() {
    let store = cql_test_store().await;
    let room = unique_room("big-delete");
    let alice = collab_store::testsuite::unique_user("alice");
    let mut record =
        collab_store::testsuite::room_record(&room, collab_protocol::RoomKind::Board, &alice, None);
    store.create_room(&record).await.expect("create");
    let w = writer("node-a", 1);
    let total = 2 * BUCKET + 10;
    let mut next = 1;
    while next <= total {
        let len = (total - next + 1).min(500) as usize;
        store
            .append(&room, Seq(next), &points_batch(&room, next, len), &w)
            .await
            .expect("append");
        next += len as u64;
    }
    store
        .delete_room(
            &room,
            &collab_store::Deletion {
                epoch: record.epoch.clone(),
                at: Seq(total + 1),
                writer: w.clone(),
            },
        )
        .await
        .expect("delete");
    assert_eq!(store.head(&room).await.expect("head"), Seq(total + 1));
    for after in [0, BUCKET, 2 * BUCKET] {
        assert!(
            matches!(
                store.read_log(&room, Seq(after), 5000).await,
                Err(StoreError::RoomDeleted(seq)) if seq == Seq(total + 1)
            ),
            "read after {after}"
        );
    }
    record.epoch = collab_protocol::Epoch::parse("e2").expect("epoch");
    store.create_room(&record).await.expect("create again");
    assert_eq!(store.head(&room).await.expect("head"), Seq(total + 1));
    assert!(
        store
            .history(&room, Seq(total + 2), 100, None)
            .await
            .expect("history")
            .is_empty()
    );
}
