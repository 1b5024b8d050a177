//! Append throughput and commit latency of the CQL store against a real
//! server: `COLLAB_BENCH_CQL=host:port cargo bench -p collab-store --bench
//! cql_append` (without the variable it says so and does nothing).
//!
//! - one room appending sequentially (one batch in flight, as the room
//!   actor does) with batches of 1, 16, 256 and 512 ops (the actor's
//!   largest): every append is one
//!   conditional write (a Paxos round) and one commit-log sync;
//! - 1,000 rooms, one task each, appending in a loop with batches of 1 and
//!   16: many conditional writes in flight, which the server's commit log
//!   groups into shared syncs.
//!
//! Ops are `stroke_points` with 16 points. Each case runs for
//! `COLLAB_BENCH_SECS` seconds (default 10) and prints ops/s, appends/s and
//! the p50/p99/max latency of one append.

use std::sync::Arc;
use std::time::{Duration, Instant};

use collab_protocol::Seq;
use collab_store::testsuite::{points_batch, unique_room, writer};
use collab_store::{CqlOptions, CqlStore, Store, StoreReader};
use hdrhistogram::Histogram;

const ROOMS: usize = 1000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Ok(target) = std::env::var("COLLAB_BENCH_CQL") else {
        eprintln!("cql_append: set COLLAB_BENCH_CQL=host:port to run against a CQL server");
        return;
    };
    let secs = std::env::var("COLLAB_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10u64);
    let options = CqlOptions::from_url(&format!("cql://{target}/collab_bench")).expect("url");
    let store = Arc::new(CqlStore::connect(options).await.expect("connect"));
    let run_for = Duration::from_secs(secs);
    for batch in [1usize, 16, 256, 512] {
        run(&store, 1, batch, run_for).await;
    }
    for batch in [1usize, 16] {
        run(&store, ROOMS, batch, run_for).await;
    }
}

/// `rooms` tasks, each appending `batch`-op batches to its own room until
/// `run_for` has passed.
async fn run(store: &Arc<CqlStore>, rooms: usize, batch: usize, run_for: Duration) {
    let started = Instant::now();
    let deadline = started + run_for;
    let tasks: Vec<_> = (0..rooms)
        .map(|_| {
            let store = Arc::clone(store);
            tokio::spawn(async move {
                let room = unique_room("bench");
                let w = writer("bench", 1);
                let mut latency = Histogram::<u64>::new(3).expect("histogram");
                let mut failed = 0u64;
                let mut next = 1u64;
                while Instant::now() < deadline {
                    let ops = points_batch(&room, next, batch);
                    let t = Instant::now();
                    match store.append(&room, Seq(next), &ops, &w).await {
                        Ok(()) => {
                            latency
                                .record(t.elapsed().as_micros() as u64)
                                .expect("auto-resizing histogram");
                            next += batch as u64;
                        }
                        // Timed out: carry on from what is stored.
                        Err(_) => {
                            failed += 1;
                            next = store.head(&room).await.map_or(next, |h| h.get() + 1);
                        }
                    }
                }
                (latency, failed)
            })
        })
        .collect();
    let mut latency = Histogram::<u64>::new(3).expect("histogram");
    let mut failed = 0;
    for task in tasks {
        let (histogram, errors) = task.await.expect("appender");
        latency.add(histogram).expect("same histogram bounds");
        failed += errors;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let appends = latency.len() as f64;
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{rooms} room(s), batch {batch}: {:.0} ops/s, {:.0} appends/s; append latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {failed} failed",
        appends * batch as f64 / elapsed,
        appends / elapsed,
        ms(0.5),
        ms(0.99),
        latency.max() as f64 / 1000.0,
    );
}
