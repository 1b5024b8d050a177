//! Tests of the embedded store beyond the conformance suite: that group
//! commit really shares transactions between rooms, and that everything
//! survives closing and reopening the file.

use std::sync::Arc;

use collab_protocol::{OpKind, RoomKind, Seq};
use collab_store::testsuite::{
    event, message, points_batch, room_record, unique_room, unique_user, writer,
};
use collab_store::{EmbeddedStore, Snapshot, Store, StoreError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_shares_transactions_across_rooms() {
    const ROOMS: usize = 1000;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(EmbeddedStore::open_in_dir(dir.path()).expect("open"));
    let before = store.stats();
    let tasks: Vec<_> = (0..ROOMS)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let room = unique_room(&format!("group-{i}"));
                let batch = points_batch(&room, 1, 1);
                store
                    .append(&room, Seq(1), &batch, &writer("node-a", 1))
                    .await
                    .expect("append");
                room
            })
        })
        .collect();
    let mut rooms = Vec::new();
    for task in tasks {
        rooms.push(task.await.expect("task"));
    }
    let stats = store.stats().since(&before);
    println!("{ROOMS} concurrent appends: {stats:?}");
    assert_eq!(stats.appends, ROOMS as u64);
    assert_eq!(stats.ops, ROOMS as u64);
    assert_eq!(stats.failed_transactions, 0);
    // Each transaction is one fsync; while one runs, the next group queues.
    // Grouping must cut the fsyncs by at least 10x (in practice far more).
    assert!(
        stats.transactions * 10 <= stats.appends,
        "{} appends took {} transactions",
        stats.appends,
        stats.transactions
    );
    assert!(stats.largest_group > 1);
    for room in rooms {
        assert_eq!(store.head(&room).await.expect("head"), Seq(1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_survives_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.redb");
    let alice = unique_user("alice");
    let bob = unique_user("bob");
    let board = unique_room("board");
    let dm = unique_room("dm");
    let board_record = room_record(&board, RoomKind::Board, &alice, None);
    let dm_record = room_record(
        &dm,
        RoomKind::Channel,
        &alice,
        Some(vec![alice.clone(), bob.clone()]),
    );
    let w1 = writer("node-a", 1);
    let w2 = writer("node-b", 2);
    let ops = points_batch(&board, 1, 3);
    let more = vec![
        event(&board, 4, message("hi")),
        event(&board, 5, message("there")),
    ];
    let snapshot = Snapshot {
        seq: Seq(3),
        data: (0..3_000_000u32).map(|i| (i % 251) as u8).collect(),
    };
    {
        let store = EmbeddedStore::open(&path).expect("open");
        store.create_room(&board_record).await.expect("create");
        store.create_room(&dm_record).await.expect("create");
        store
            .append(&board, Seq(1), &ops, &w1)
            .await
            .expect("append");
        store
            .append(&board, Seq(4), &more, &w2)
            .await
            .expect("append");
        store
            .put_snapshot(&board, &snapshot)
            .await
            .expect("snapshot");
        // Dropping joins the writer thread and releases the file.
    }
    let store = EmbeddedStore::open(&path).expect("reopen");
    assert_eq!(
        store.room(&board).await.expect("room"),
        Some(board_record.clone())
    );
    assert_eq!(
        store.rooms_of_user(&bob).await.expect("rooms_of_user"),
        vec![dm_record.clone()]
    );
    let mut alices = vec![board_record, dm_record];
    alices.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(
        store.rooms_of_user(&alice).await.expect("rooms_of_user"),
        alices
    );
    assert_eq!(store.head(&board).await.expect("head"), Seq(5));
    let log = store
        .read_log(&board, Seq::ZERO, 10)
        .await
        .expect("read_log");
    let events: Vec<_> = log.iter().map(|l| l.event.clone()).collect();
    assert_eq!(events, [ops.clone(), more.clone()].concat());
    let writers: Vec<_> = log.iter().map(|l| l.writer.clone()).collect();
    assert_eq!(writers, vec![w1.clone(), w1.clone(), w1, w2.clone(), w2]);
    assert_eq!(
        store
            .history(&board, Seq(u64::MAX), 10, Some(&[OpKind::Message]))
            .await
            .expect("history"),
        vec![more[1].clone(), more[0].clone()]
    );
    assert_eq!(
        store.latest_snapshot(&board).await.expect("snapshot"),
        Some(snapshot)
    );
    // The fence holds across the reopen, and the log continues.
    match store
        .append(
            &board,
            Seq(5),
            &points_batch(&board, 5, 1),
            &writer("node-c", 3),
        )
        .await
    {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("expected Conflict after reopen, got {other:?}"),
    }
    store
        .append(
            &board,
            Seq(6),
            &points_batch(&board, 6, 1),
            &writer("node-c", 3),
        )
        .await
        .expect("append after reopen");
    assert_eq!(store.head(&board).await.expect("head"), Seq(6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_open_of_the_same_file_is_refused_while_the_first_lives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = EmbeddedStore::open_in_dir(dir.path()).expect("open");
    match EmbeddedStore::open_in_dir(dir.path()) {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("expected Unavailable for a second open, got {other:?}"),
    }
    drop(first);
    EmbeddedStore::open_in_dir(dir.path()).expect("open after the first closed");
}
