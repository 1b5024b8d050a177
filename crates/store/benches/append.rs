//! Append throughput of the embedded store with group commit.
//!
//! - `1_room/batch_1` and `1_room/batch_16`: one room appending sequentially
//!   (one batch in flight per room, as the room actor does), so every
//!   append is its own transaction and fsync: the latency floor.
//! - `1000_rooms/batch_1` (and `batch_16`): 1,000 tokio tasks, one per room,
//!   each appending in a loop; the writer thread groups whatever is queued
//!   into one transaction: the throughput of a busy node.
//!
//! Ops are `stroke_points` with 16 points, the bulk of a whiteboard's log.
//! Criterion reports appends (or ops) per second; after each benchmark a
//! line on stderr gives what the writer's counters saw over the whole run:
//! appends/s, fsyncs (transactions)/s, appends per fsync, the share of
//! the writer's time spent applying vs committing vs checkpointing, and the
//! longest checkpoint slice and the longest checkpoint pause (the longest
//! an append waited for a checkpoint: one slice, or several back to back
//! when the journal is twice over its thresholds).
//!
//! Run: `cargo bench -p collab-store --bench append`. To try other
//! checkpoint thresholds, set `COLLAB_STORE_CHECKPOINT_OPS`; other slice
//! sizes, `COLLAB_STORE_CHECKPOINT_SLICE_OPS`; other journal segment sizes
//! (0: no preallocation), `COLLAB_STORE_JOURNAL_SEGMENT_BYTES`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use collab_protocol::{RoomId, Seq};
use collab_store::testsuite::{points_batch, writer};
use collab_store::{EmbeddedStore, EmbeddedStoreOptions, EmbeddedStoreStats, Store};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio::runtime::Runtime;

const ROOMS: usize = 1000;

fn runtime() -> Runtime {
    // Two workers: the bench machine has two cores, as a small node would.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn open(dir: &tempfile::TempDir) -> EmbeddedStore {
    let mut options = EmbeddedStoreOptions::default();
    if let Some(ops) = std::env::var("COLLAB_STORE_CHECKPOINT_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        options.checkpoint_ops = ops;
        options.checkpoint_bytes = usize::MAX;
    }
    if let Some(ops) = std::env::var("COLLAB_STORE_CHECKPOINT_SLICE_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        options.checkpoint_slice_ops = ops;
    }
    if let Some(bytes) = std::env::var("COLLAB_STORE_JOURNAL_SEGMENT_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        options.journal_segment_bytes = bytes;
    }
    EmbeddedStore::open_with(dir.path().join(EmbeddedStore::FILE_NAME), options).expect("open")
}

fn room_id(prefix: &str, i: usize) -> RoomId {
    RoomId::parse(format!("{prefix}-{i}")).expect("a valid room id")
}

/// Prints what the writer did between `before` and now over `elapsed`.
fn report(name: &str, store: &EmbeddedStore, before: &EmbeddedStoreStats, elapsed: Duration) {
    let s = store.stats().since(before);
    let secs = elapsed.as_secs_f64();
    let pct = |d: Duration| 100.0 * d.as_secs_f64() / secs;
    eprintln!(
        "{name}: {} appends ({} ops) in {:.2}s = {:.0} appends/s, {:.0} ops/s; \
         {} fsyncs ({} groups + {} checkpoint slices in {} cycles) = {:.0} fsyncs/s, \
         {:.1} appends/group (largest {}); writer thread: apply {:.0}%, group commit {:.0}%, \
         checkpoint {:.0}% of wall time; longest checkpoint slice {:.1} ms, \
         longest checkpoint pause {:.1} ms",
        s.appends,
        s.ops,
        secs,
        s.appends as f64 / secs,
        s.ops as f64 / secs,
        s.fsyncs(),
        s.transactions,
        s.checkpoint_slices,
        s.checkpoints,
        s.fsyncs() as f64 / secs,
        s.appends as f64 / s.transactions.max(1) as f64,
        s.largest_group,
        pct(s.apply_time),
        pct(s.commit_time),
        pct(s.checkpoint_time),
        s.longest_checkpoint_slice.as_secs_f64() * 1e3,
        s.longest_checkpoint_pause.as_secs_f64() * 1e3,
    );
}

fn one_room(c: &mut Criterion, rt: &Runtime, batch: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let room = room_id("solo", batch);
    let w = writer("bench", 1);
    let mut next = 1u64;
    let before = store.stats();
    let mut measured = Duration::ZERO;
    let mut group = c.benchmark_group("1_room");
    group.throughput(Throughput::Elements(batch as u64));
    group.bench_function(format!("batch_{batch}"), |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let ops = points_batch(&room, next, batch);
                    store
                        .append(&room, Seq(next), &ops, &w)
                        .await
                        .expect("append");
                    next += batch as u64;
                }
                let elapsed = start.elapsed();
                measured += elapsed;
                elapsed
            })
        })
    });
    group.finish();
    report(&format!("1_room/batch_{batch}"), &store, &before, measured);
}

fn many_rooms(c: &mut Criterion, rt: &Runtime, batch: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(open(&dir));
    // Each room's next seq, carried from one measurement to the next.
    let mut rooms: Vec<(RoomId, u64)> = (0..ROOMS)
        .map(|i| (room_id(&format!("busy{batch}"), i), 1))
        .collect();
    let before = store.stats();
    let mut measured = Duration::ZERO;
    let mut group = c.benchmark_group("1000_rooms");
    group.throughput(Throughput::Elements(batch as u64));
    group.bench_function(format!("batch_{batch}"), |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                // `iters` appends in all, spread over the 1,000 rooms.
                let per_room = iters / ROOMS as u64;
                let extra = (iters % ROOMS as u64) as usize;
                let start = Instant::now();
                let tasks: Vec<_> = rooms
                    .drain(..)
                    .enumerate()
                    .map(|(i, (room, mut next))| {
                        let store = Arc::clone(&store);
                        let appends = per_room + u64::from(i < extra);
                        tokio::spawn(async move {
                            let w = writer("bench", 1);
                            for _ in 0..appends {
                                let ops = points_batch(&room, next, batch);
                                store
                                    .append(&room, Seq(next), &ops, &w)
                                    .await
                                    .expect("append");
                                next += batch as u64;
                            }
                            (room, next)
                        })
                    })
                    .collect();
                for task in tasks {
                    rooms.push(task.await.expect("append task"));
                }
                let elapsed = start.elapsed();
                measured += elapsed;
                elapsed
            })
        })
    });
    group.finish();
    report(
        &format!("1000_rooms/batch_{batch}"),
        &store,
        &before,
        measured,
    );
}

fn appends(c: &mut Criterion) {
    let rt = runtime();
    one_room(c, &rt, 1);
    one_room(c, &rt, 16);
    many_rooms(c, &rt, 1);
    many_rooms(c, &rt, 16);
}

criterion_group! {
    name = benches;
    // Short on purpose: the whole run stays well under two minutes.
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8));
    targets = appends
}
criterion_main!(benches);
