//! Invariant 2 for the embedded store: an acknowledged append survives
//! SIGKILL of the process that made it.
//!
//! The test re-executes this binary as a child running
//! [`store_crash_child`]: it appends to several rooms concurrently (so the
//! writer thread groups them) and prints `ack <room> <seq>` after each
//! append returned. The parent SIGKILLs it after a random number of acks,
//! restarts it on the same file (it continues from the stored heads), and
//! repeats; finally it opens the file itself and checks that every
//! acknowledged op is there, intact, in a gapless log. The child
//! checkpoints its journal every 50 ops and preallocates journal segments
//! of 8 KiB, so kills hit all of the store's states: journal only,
//! mid-checkpoint, freshly checkpointed, in a preallocated segment or
//! moving to the next.
//!
//! A second pair ([`store_cycle_child`]) aims at checkpoint cycles: with
//! tiny slices the child's writer is nearly always in the middle of a cycle
//! (some of the journaled ops already moved, their journal rows not yet
//! deleted), and the parent reopens the store after every kill and checks
//! it there, until at least one open replayed ops that a cut-short cycle
//! had already moved.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use collab_protocol::{OpEvent, OpKind, RoomId, Seq};
use collab_store::testsuite::{event, message, points_batch, random_u64, writer};
use collab_store::{EmbeddedStore, EmbeddedStoreOptions, Store, StoreError, StoreReader};
use collab_tests::SelfChild;

/// Set for the child process: the store file to append to.
const CHILD_DB: &str = "COLLAB_STORE_CRASH_DB";
/// Set for the child process: its generation, recorded as the writer term.
const CHILD_TERM: &str = "COLLAB_STORE_CRASH_TERM";
const ROOMS: usize = 8;
const KILLS: usize = 6;

fn room(i: usize) -> RoomId {
    RoomId::parse(format!("crash-{i}")).expect("a valid room id")
}

/// The child side: appends until killed (or until a safety deadline, so an
/// orphan cannot run forever). Does nothing in a normal test run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_crash_child() {
    // Checkpoint often, so that kills land before, during and after
    // checkpoints, and every reopen replays a journal; and preallocate
    // small journal segments, so that they land in preallocated segments,
    // on the moves to the next one, and while a spare is being made.
    let options = EmbeddedStoreOptions {
        checkpoint_ops: 50,
        journal_segment_bytes: 8 << 10,
        ..Default::default()
    };
    append_until_killed([CHILD_DB, CHILD_TERM], options, room, points_batch).await;
}

/// The children's work: open the store named by the first variable of
/// `env` with `options`, as the writer term in the second (what
/// [`kill_after_acks`] sets; in a normal test run they are unset and this
/// does nothing), append batches of 1 to 3 ops made by `batch` to the
/// `ROOMS` rooms named by `room`, concurrently (so the writer groups them),
/// each from its stored head on, and print `ack <room> <seq>` after each
/// append returned; until killed, or until a safety deadline so an orphan
/// cannot run forever.
async fn append_until_killed(
    env: [&str; 2],
    options: EmbeddedStoreOptions,
    room: fn(usize) -> RoomId,
    batch: fn(&RoomId, u64, usize) -> Vec<OpEvent>,
) {
    let Some(path) = std::env::var_os(env[0]) else {
        return;
    };
    let term: u64 = std::env::var(env[1])
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(1);
    let store = Arc::new(EmbeddedStore::open_with(path, options).expect("open the store"));
    let deadline = Instant::now() + Duration::from_secs(120);
    let tasks: Vec<_> = (0..ROOMS)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let room = room(i);
                let w = writer("crash-child", term);
                let mut next = store.head(&room).await.expect("head").get() + 1;
                while Instant::now() < deadline {
                    let len = 1 + (next % 3) as usize;
                    store
                        .append(&room, Seq(next), &batch(&room, next, len), &w)
                        .await
                        .expect("append");
                    next += len as u64;
                    // Printed only after the append returned: an ack.
                    println!("ack {room} {}", next - 1);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("append task");
    }
}

fn parse_ack(line: &str) -> Option<(String, u64)> {
    let mut parts = line.strip_prefix("ack ")?.split(' ');
    let room = parts.next()?.to_owned();
    let seq = parts.next()?.parse().ok()?;
    Some((room, seq))
}

/// Folds `line` into `acked` (room → highest acknowledged seq); returns
/// whether it was an ack.
fn record(acked: &mut BTreeMap<String, u64>, line: &str) -> bool {
    let Some((room, seq)) = parse_ack(line) else {
        return false;
    };
    let highest = acked.entry(room).or_default();
    // A restarted child continues from the stored head, so a seq
    // acknowledged twice means the store lost an acknowledged write.
    assert!(
        seq > *highest,
        "{line}: already acknowledged up to {highest}, so an acknowledged append was lost"
    );
    *highest = seq;
    true
}

/// Runs the child test `child` on the store at `path` as writer term
/// `generation` (the two environment variables it reads are `env`) until
/// it printed `target` acks, SIGKILLs it, and records every ack it
/// printed, up to its death, into `acked`. Returns how many acks it
/// printed (at least `target`), and how it ended.
async fn kill_after_acks(
    child: &'static str,
    env: [&'static str; 2],
    path: &Path,
    generation: u64,
    target: usize,
    acked: &mut BTreeMap<String, u64>,
) -> (usize, ExitStatus) {
    let envs: [(&str, OsString); 2] = [
        (env[0], path.as_os_str().to_owned()),
        (env[1], generation.to_string().into()),
    ];
    let child = tokio::task::spawn_blocking(move || SelfChild::spawn(child, envs))
        .await
        .expect("spawn task")
        .expect("spawn the child");
    let (seen, child) = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut lines = Vec::new();
        let mut acks = 0;
        while acks < target {
            let Some(line) = child.next_line(deadline) else {
                break;
            };
            acks += usize::from(parse_ack(&line).is_some());
            lines.push(line);
        }
        (lines, child)
    })
    .await
    .expect("reader task");
    let (status, rest) = tokio::task::spawn_blocking(move || child.kill())
        .await
        .expect("kill task")
        .expect("kill the child");
    let mut acks = 0;
    for line in seen.iter().chain(&rest) {
        acks += usize::from(record(acked, line));
    }
    assert!(
        acks >= target,
        "generation {generation}: the child printed {acks} acks of {target} and exited with {status}"
    );
    (acks, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("crash.redb");
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    let mut total_acks = 0usize;
    for generation in 1..=KILLS as u64 {
        // A random moment: after 1 to 400 acks of this run.
        let target = 1 + (random_u64() % 400) as usize;
        let (acks, status) = kill_after_acks(
            "store_crash_child",
            [CHILD_DB, CHILD_TERM],
            &path,
            generation,
            target,
            &mut acked,
        )
        .await;
        total_acks += acks;
        println!("generation {generation}: killed after {acks} acks (target {target}): {status}");
    }
    assert_eq!(
        acked.len(),
        ROOMS,
        "every room was acknowledged at least once"
    );

    let store = EmbeddedStore::open(&path).expect("reopen after the last kill");
    for (name, &highest) in &acked {
        let room = RoomId::parse(name.as_str()).expect("room id");
        let head = store.head(&room).await.expect("head").get();
        assert!(
            head >= highest,
            "room {room}: acknowledged up to {highest}, stored head {head}"
        );
        let ops = store
            .read_ops(&room, Seq::ZERO, usize::MAX)
            .await
            .expect("read_ops");
        let seqs: Vec<u64> = ops.iter().map(|e| e.seq.get()).collect();
        assert_eq!(
            seqs,
            (1..=head).collect::<Vec<_>>(),
            "room {room}: the log has a gap"
        );
        // Each op is exactly what the child wrote for that seq.
        for op in &ops {
            assert_eq!(
                op,
                &points_batch(&room, op.seq.get(), 1)[0],
                "room {room} seq {}",
                op.seq
            );
        }
        // Terms only grow along the log: a later generation never wrote
        // below an earlier one.
        let log = store
            .read_log(&room, Seq::ZERO, usize::MAX)
            .await
            .expect("read_log");
        assert!(log.windows(2).all(|w| w[0].writer.term <= w[1].writer.term));
    }
    println!(
        "{total_acks} acknowledged appends over {KILLS} kills, all present: {:?}",
        acked
    );
}

/// Set for the child of the checkpoint-cycle test: the store file.
const CYCLE_CHILD_DB: &str = "COLLAB_STORE_CYCLE_DB";
/// Set for the child of the checkpoint-cycle test: the writer term.
const CYCLE_CHILD_TERM: &str = "COLLAB_STORE_CYCLE_TERM";
/// Kills at least, each followed by a reopen and checks; more (up to
/// [`CYCLE_KILLS`]) until one of them hit a cycle midway.
const CYCLE_MIN_KILLS: u64 = 3;
const CYCLE_KILLS: u64 = 8;

fn cycle_room(i: usize) -> RoomId {
    RoomId::parse(format!("cycle-{i}")).expect("a valid room id")
}

/// What the cycle child writes at `seq` of `room`: every fourth op a
/// message (so that a kind-filtered history has something to find), the
/// rest `stroke_points`.
fn cycle_op(room: &RoomId, seq: u64) -> OpEvent {
    if seq.is_multiple_of(4) {
        event(room, seq, message(&format!("{room} {seq}")))
    } else {
        points_batch(room, seq, 1).remove(0)
    }
}

fn cycle_batch(room: &RoomId, first: u64, len: usize) -> Vec<OpEvent> {
    (first..first + len as u64)
        .map(|seq| cycle_op(room, seq))
        .collect()
}

/// The child side of the checkpoint-cycle test: like [`store_crash_child`],
/// with a cycle due every 64 ops and 4 ops per slice, so that a cycle
/// spans many slices while the appends go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_cycle_child() {
    let options = EmbeddedStoreOptions {
        checkpoint_ops: 64,
        checkpoint_slice_ops: 4,
        ..Default::default()
    };
    append_until_killed(
        [CYCLE_CHILD_DB, CYCLE_CHILD_TERM],
        options,
        cycle_room,
        cycle_batch,
    )
    .await;
}

/// Checks `room` in `store` after a kill: every acknowledged op is there
/// once, at its seq, as written (in the log and in both kinds of history
/// page), and the log continues at the head. Returns the new head.
async fn check_cycle_room(store: &EmbeddedStore, room: &RoomId, acked: u64, term: u64) -> u64 {
    let head = store.head(room).await.expect("head").get();
    // The child may have had one batch committed but not yet printed.
    assert!(
        (acked..=acked + 3).contains(&head),
        "room {room}: acknowledged up to {acked}, stored head {head}"
    );
    let seqs = |ops: &[OpEvent]| ops.iter().map(|e| e.seq.get()).collect::<Vec<_>>();
    let ops = store
        .read_ops(room, Seq::ZERO, usize::MAX)
        .await
        .expect("read_ops");
    assert_eq!(
        seqs(&ops),
        (1..=head).collect::<Vec<_>>(),
        "room {room}: the log lost or repeated ops"
    );
    for op in &ops {
        assert_eq!(
            op,
            &cycle_op(room, op.seq.get()),
            "room {room}: an op changed"
        );
    }
    let history = store
        .history(room, Seq(u64::MAX), usize::MAX, None)
        .await
        .expect("history");
    assert_eq!(
        seqs(&history),
        (1..=head).rev().collect::<Vec<_>>(),
        "room {room}: history"
    );
    let messages = store
        .history(room, Seq(u64::MAX), usize::MAX, Some(&[OpKind::Message]))
        .await
        .expect("history of messages");
    assert_eq!(
        seqs(&messages),
        (1..=head)
            .rev()
            .filter(|s| s.is_multiple_of(4))
            .collect::<Vec<_>>(),
        "room {room}: kind-filtered history"
    );
    assert!(messages.iter().all(|m| m == &cycle_op(room, m.seq.get())));
    // The fence holds at the head, and the log continues right above it.
    let w = writer("cycle-parent", term);
    match store
        .append(room, Seq(head), &cycle_batch(room, head, 1), &w)
        .await
    {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("room {room}: expected Conflict at the head {head}, got {other:?}"),
    }
    store
        .append(room, Seq(head + 1), &cycle_batch(room, head + 1, 1), &w)
        .await
        .expect("append after reopening");
    head + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_sigkill_mid_checkpoint_cycle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cycle.redb");
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    let mut cut_cycles = 0;
    let mut generation = 0;
    while generation < CYCLE_MIN_KILLS || cut_cycles == 0 {
        generation += 1;
        assert!(
            generation <= CYCLE_KILLS,
            "no kill of {CYCLE_KILLS} hit a checkpoint cycle midway"
        );
        // After 100 to 400 acks: a few cycles in.
        let target = 100 + (random_u64() % 300) as usize;
        let (acks, status) = kill_after_acks(
            "store_cycle_child",
            [CYCLE_CHILD_DB, CYCLE_CHILD_TERM],
            &path,
            generation,
            target,
            &mut acked,
        )
        .await;

        let store = EmbeddedStore::open(&path).expect("reopen after the kill");
        let stats = store.stats();
        println!(
            "generation {generation}: killed after {acks} acks ({status}); the open replayed {} \
             ops, {} of them already moved by the cut-short cycle",
            stats.replayed_ops, stats.replayed_logged_ops
        );
        if stats.replayed_logged_ops > 0 {
            cut_cycles += 1;
        }
        assert_eq!(acked.len(), ROOMS, "every room was acknowledged");
        for (name, highest) in &mut acked {
            let room = RoomId::parse(name.as_str()).expect("room id");
            *highest = check_cycle_room(&store, &room, *highest, generation).await;
        }
    }
}
