//! Tests of the embedded store beyond the conformance suite: that group
//! commit really shares transactions between rooms, and that everything
//! survives closing and reopening the file.

use std::sync::Arc;
use std::time::{Duration, Instant};

use collab_protocol::{OpKind, RoomKind, Seq};
use collab_store::testsuite::{
    event, message, points_batch, room_record, unique_room, unique_user, writer,
};
use std::sync::atomic::{AtomicU64, Ordering};

use collab_store::{
    EmbeddedStore, EmbeddedStoreOptions, RoomCatalog, Snapshot, Store, StoreError, StoreReader,
};

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
        stats.fsyncs() * 10 <= stats.appends,
        "{} appends took {} transactions and {} checkpoints",
        stats.appends,
        stats.transactions,
        stats.checkpoints
    );
    assert!(stats.largest_group > 1);
    for room in rooms {
        assert_eq!(store.head(&room).await.expect("head"), Seq(1));
    }
}

/// Reopening finds everything whether it was still in the journal
/// (replayed at open) or already checkpointed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_survives_reopening_from_the_journal() {
    everything_survives_reopening(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_survives_reopening_after_a_checkpoint() {
    everything_survives_reopening(true).await;
}

async fn everything_survives_reopening(checkpoint_midway: bool) {
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
        if checkpoint_midway {
            store.checkpoint().await.expect("checkpoint");
            assert_eq!(store.stats().checkpointed_ops, 3);
        }
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

/// Readers racing the writer's checkpoints never miss an acknowledged op
/// and never see a gap or a duplicate: the journal index and the log
/// tables are read as one consistent state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_racing_checkpoints_see_every_acknowledged_op_once() {
    const OPS: u64 = 400;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(
        EmbeddedStore::open_with(
            dir.path().join("s.redb"),
            EmbeddedStoreOptions {
                checkpoint_ops: 3,
                ..Default::default()
            },
        )
        .expect("open"),
    );
    let room = unique_room("race-checkpoint");
    let acked = Arc::new(AtomicU64::new(0));
    let appender = {
        let (store, room, acked) = (Arc::clone(&store), room.clone(), Arc::clone(&acked));
        tokio::spawn(async move {
            for seq in 1..=OPS {
                let op = if seq % 4 == 0 {
                    message("m")
                } else {
                    points_batch(&room, seq, 1)[0].op.clone()
                };
                store
                    .append(
                        &room,
                        Seq(seq),
                        &[event(&room, seq, op)],
                        &writer("node-a", 1),
                    )
                    .await
                    .expect("append");
                acked.store(seq, Ordering::SeqCst);
            }
        })
    };
    let mut reads = 0u64;
    loop {
        let floor = acked.load(Ordering::SeqCst);
        let seqs: Vec<u64> = store
            .read_ops(&room, Seq::ZERO, usize::MAX)
            .await
            .expect("read_ops")
            .iter()
            .map(|e| e.seq.get())
            .collect();
        assert!(
            seqs.len() as u64 >= floor,
            "acked {floor}, read {}",
            seqs.len()
        );
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
        let head = store.head(&room).await.expect("head").get();
        assert!(head >= floor);
        let page: Vec<u64> = store
            .history(&room, Seq(u64::MAX), 8, Some(&[OpKind::Message]))
            .await
            .expect("history")
            .iter()
            .map(|e| e.seq.get())
            .collect();
        let newest = (floor / 4) * 4;
        let expected_floor: Vec<u64> = (1..=newest / 4).rev().map(|i| i * 4).take(8).collect();
        assert!(
            page.len() >= expected_floor.len().min(8),
            "messages page {page:?} misses acked ones {expected_floor:?}"
        );
        assert!(page.windows(2).all(|w| w[0] == w[1] + 4), "page {page:?}");
        reads += 1;
        if floor == OPS {
            break;
        }
    }
    appender.await.expect("appender");
    let stats = store.stats();
    println!("{reads} reads raced {} checkpoints", stats.checkpoints);
    assert!(stats.checkpoints > 10);
}

/// A checkpoint moves its ops in slices and serves the queued appends
/// between them: an append made while a long cycle runs is answered before
/// the cycle ends, and reads in the middle of the cycle (each room's ops
/// partly in the log tables, partly journaled) see every op once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_are_served_between_checkpoint_slices() {
    const ROOMS: usize = 30;
    const OPS_PER_ROOM: u64 = 20;
    const TOTAL: u64 = ROOMS as u64 * OPS_PER_ROOM;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(
        EmbeddedStore::open_with(
            dir.path().join("s.redb"),
            EmbeddedStoreOptions {
                // One op per slice: the cycle below takes 600 slices.
                checkpoint_slice_ops: 1,
                ..Default::default()
            },
        )
        .expect("open"),
    );
    let w = writer("node-a", 1);
    let rooms: Vec<_> = (0..ROOMS)
        .map(|i| unique_room(&format!("slices-{i}")))
        .collect();
    for room in &rooms {
        let batch = points_batch(room, 1, OPS_PER_ROOM as usize);
        store
            .append(room, Seq(1), &batch, &w)
            .await
            .expect("append");
    }
    assert_eq!(store.stats().checkpoint_slices, 0, "below the thresholds");

    let checkpoint = tokio::spawn({
        let store = Arc::clone(&store);
        async move { store.checkpoint().await }
    });
    // The cycle runs once its first slice committed.
    let deadline = Instant::now() + Duration::from_secs(60);
    while store.stats().checkpoint_slices == 0 {
        assert!(Instant::now() < deadline, "no checkpoint slice in 60 s");
        tokio::time::sleep(Duration::from_millis(1)).await; // poll interval
    }

    let late = unique_room("slices-late");
    store
        .append(&late, Seq(1), &points_batch(&late, 1, 1), &w)
        .await
        .expect("append during the cycle");
    let during = store.stats();
    assert_eq!(
        during.checkpoints, 0,
        "the append was answered only after the whole cycle: {during:?}"
    );
    assert!(during.checkpointed_ops < TOTAL, "{during:?}");
    assert!(!checkpoint.is_finished());
    assert_eq!(store.head(&late).await.expect("head"), Seq(1));
    for room in &rooms {
        let seqs: Vec<u64> = store
            .read_ops(room, Seq::ZERO, usize::MAX)
            .await
            .expect("read_ops")
            .iter()
            .map(|e| e.seq.get())
            .collect();
        assert_eq!(seqs, (1..=OPS_PER_ROOM).collect::<Vec<_>>());
    }

    checkpoint.await.expect("task").expect("checkpoint");
    let after = store.stats();
    println!("a cycle of {TOTAL} ops in single-op slices: {after:?}");
    assert_eq!(after.checkpoints, 1);
    // The late op was appended after the cycle started: not part of it.
    assert_eq!(after.checkpointed_ops, TOTAL);
    assert_eq!(after.checkpoint_slices, TOTAL);
    assert!(after.longest_checkpoint_slice > Duration::ZERO);
    store.checkpoint().await.expect("checkpoint");
    assert_eq!(store.stats().checkpointed_ops, TOTAL + 1);
    assert_eq!(store.head(&late).await.expect("head"), Seq(1));
}

/// The journal's segment files beside `path`, oldest first.
fn segments(path: &std::path::Path) -> Vec<std::path::PathBuf> {
    let prefix = format!(
        "{}.journal-",
        path.file_name().expect("a file name").to_string_lossy()
    );
    let mut out: Vec<_> = std::fs::read_dir(path.parent().expect("a dir"))
        .expect("read dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with(&prefix))
        })
        .collect();
    out.sort();
    out
}

/// Appends `seqs` one batch each to `room` in a fresh store at `path`,
/// and closes it without a checkpoint: they stay in the journal's one
/// segment.
async fn journal_only(path: &std::path::Path, room: &collab_protocol::RoomId, seqs: u64) {
    let store = EmbeddedStore::open(path).expect("open");
    for seq in 1..=seqs {
        store
            .append(
                room,
                Seq(seq),
                &points_batch(room, seq, 1),
                &writer("node-a", 1),
            )
            .await
            .expect("append");
    }
    assert_eq!(store.stats().checkpoints, 0);
}

/// A torn record at the end of the last segment (a group whose fsync never
/// returned, so nobody was answered) is where the log ends: open drops it
/// and appends continue after the good records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_journal_tail_is_dropped_at_open() {
    for torn in ["garbage", "truncated record"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store.redb");
        let room = unique_room("torn");
        journal_only(&path, &room, 3).await;
        let files = segments(&path);
        assert_eq!(files.len(), 1, "{torn}");
        let bytes = std::fs::read(&files[0]).expect("read");
        let tail = if torn == "garbage" {
            b"\x07garbage, not a record".to_vec()
        } else {
            // The first record (`[len u32][key u64][payload][sum u64]`)
            // less its last byte.
            let len = u32::from_le_bytes(bytes[..4].try_into().expect("4")) as usize;
            bytes[..4 + 8 + len + 8 - 1].to_vec()
        };
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&files[0])
            .expect("open segment");
        std::io::Write::write_all(&mut file, &tail).expect("tear");
        drop(file);

        let store = EmbeddedStore::open(&path).expect("open past a torn tail");
        assert_eq!(store.stats().replayed_ops, 3, "{torn}");
        assert_eq!(store.head(&room).await.expect("head"), Seq(3));
        let w = writer("node-a", 1);
        store
            .append(&room, Seq(4), &points_batch(&room, 4, 1), &w)
            .await
            .expect("append after the tail");
        drop(store);
        let store = EmbeddedStore::open(&path).expect("reopen");
        assert_eq!(store.stats().replayed_ops, 1, "{torn}");
        let log = store.read_log(&room, Seq(0), 10).await.expect("read");
        let seqs: Vec<u64> = log.iter().map(|op| op.event.seq.get()).collect();
        assert_eq!(seqs, [1, 2, 3, 4], "{torn}");
    }
}

/// A bad record anywhere but at the end of the last segment is not a torn
/// write but corruption: open refuses, and leaves the files alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_record_in_an_older_segment_refuses_to_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.redb");
    let room = unique_room("corrupt");
    journal_only(&path, &room, 3).await;
    let files = segments(&path);
    assert_eq!(files.len(), 1);
    let mut bytes = std::fs::read(&files[0]).expect("read");
    // A later segment (here the same records again, harmless to replay).
    let later = files[0].with_file_name(format!("store.redb.journal-{:020}", 1_000_000u64));
    std::fs::write(&later, &bytes).expect("write later segment");
    // Flip a byte inside the first record's payload.
    bytes[4 + 8 + 3] ^= 0x55;
    std::fs::write(&files[0], &bytes).expect("corrupt");

    match EmbeddedStore::open(&path) {
        Err(StoreError::Corrupt(message)) => {
            assert!(message.contains("not the last"), "{message}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(
        segments(&path),
        [files[0].clone(), later],
        "nothing deleted"
    );
}

/// A checkpoint cycle deletes the segments it covered once it is done;
/// until then they stay (a crash mid-cycle replays them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_deletes_the_segments_it_covered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.redb");
    let room = unique_room("cycle");
    let store = EmbeddedStore::open(&path).expect("open");
    let w = writer("node-a", 1);
    store
        .append(&room, Seq(1), &points_batch(&room, 1, 5), &w)
        .await
        .expect("append");
    let before = segments(&path);
    assert_eq!(before.len(), 1);
    store.checkpoint().await.expect("checkpoint");
    let after = segments(&path);
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(after, before, "rotated, and the old segment deleted");
    assert_eq!(store.stats().checkpointed_ops, 5);
    // Nothing left to replay.
    drop(store);
    let store = EmbeddedStore::open(&path).expect("reopen");
    assert_eq!(store.stats().replayed_ops, 0);
    assert_eq!(store.head(&room).await.expect("head"), Seq(5));
}

/// A deletion takes the room's journaled ops too: reopening (which replays
/// the journal) does not bring them back, and a room created under the id
/// afterwards keeps its own ops across a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_room_stays_deleted_after_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.redb");
    let alice = unique_user("alice");
    let room = unique_room("deleted");
    let w = writer("node-a", 1);
    let deletion = collab_store::Deletion {
        epoch: collab_protocol::Epoch::parse("e1").expect("epoch"),
        at: Seq(7),
        writer: w.clone(),
    };
    {
        let store = EmbeddedStore::open(&path).expect("open");
        store
            .create_room(&room_record(&room, RoomKind::Board, &alice, None))
            .await
            .expect("create");
        store
            .append(&room, Seq(1), &points_batch(&room, 1, 4), &w)
            .await
            .expect("append");
        store.checkpoint().await.expect("checkpoint");
        store
            .append(&room, Seq(5), &points_batch(&room, 5, 2), &w)
            .await
            .expect("append");
        assert_eq!(store.journaled_ops(), 2);
        store.delete_room(&room, &deletion).await.expect("delete");
        assert_eq!(store.journaled_ops(), 0, "the journaled ops went with it");
        assert_eq!(store.stats().rooms_deleted, 1);
    }
    let mut again = room_record(&room, RoomKind::Board, &alice, None);
    again.epoch = collab_protocol::Epoch::parse("e2").expect("epoch");
    {
        let store = EmbeddedStore::open(&path).expect("reopen");
        assert_eq!(store.stats().replayed_ops, 0, "nothing of it replayed");
        assert_eq!(store.room(&room).await.expect("room"), None);
        assert_eq!(store.head(&room).await.expect("head"), Seq(7));
        assert!(matches!(
            store.read_log(&room, Seq(0), 10).await,
            Err(StoreError::RoomDeleted(Seq(7)))
        ));
        store.create_room(&again).await.expect("create again");
        store
            .append(&room, Seq(8), &[event(&room, 8, message("hi"))], &w)
            .await
            .expect("append");
    }
    let store = EmbeddedStore::open(&path).expect("reopen");
    assert_eq!(store.stats().replayed_ops, 1);
    assert_eq!(
        store.room(&room).await.expect("room").map(|r| r.floor),
        Some(Seq(7))
    );
    let log = store.read_log(&room, Seq(7), 10).await.expect("read");
    assert_eq!(
        log.iter().map(|op| op.event.seq.get()).collect::<Vec<_>>(),
        [8]
    );
}
