//! What a shared rate check costs: a Redis round trip per check against a
//! check spent from a local lease (docs/adr/0005-shared-rate-limits-leases.md).
//! `cargo bench -p collab-ephemeral --bench leases` starts its own
//! redis-server (as the tests do: COLLAB_REDIS_SERVER, or `redis-server`
//! on the PATH). Each case runs for `COLLAB_BENCH_SECS` seconds (default 3).
//!
//! - `memory`: the in-memory limiter of `collab serve`, for reference;
//! - `round trip`: the GCRA script called once per check, as a limiter
//!   without leases would: one task waiting for each answer, then 64 tasks
//!   at once (the multiplexed connection pipelines them);
//! - `lease`: `RedisRateLimiter`, whose checks spend tokens taken ahead:
//!   10,000 keys (users) checked round-robin by one task without waiting
//!   (`try_acquire`, the cursors' check), first at 600,000 checks a second
//!   (every user moving a cursor at the default limit, 60 a second: first
//!   with every user's first check in the first 17 ms, then again with
//!   leases held), then as fast as it can; then by 8 tasks that wait when they must
//!   (`acquire`), so the background top-ups batch many keys per script
//!   call; then one key checked as fast as one task can, which spends a
//!   lease faster than a round trip tops it up.
//!
//! Every case prints checks per second, the mean and p99 time of a check
//! (timed one by one when it may wait, else per batch of 64), how many
//! were refused (a lease spent before its top-up arrived) and how many
//! Redis calls the checks cost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use collab_ephemeral::testsuite::{RedisServer, unique_prefix};
use collab_ephemeral::{
    EphemeralMetrics, MemoryRateLimiter, Rate, RateLimiter, RedisClient, RedisOptions,
    RedisRateLimiter,
};
use hdrhistogram::Histogram;
use prometheus_client::registry::Registry;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let secs = std::env::var("COLLAB_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3u64);
    let run_for = Duration::from_secs(secs);
    let server = RedisServer::start();
    // A burst never spent: what is measured is the cost of asking, not of
    // being told no.
    let rate = Rate::per_sec(1e6, 1e12);
    let keys: Arc<Vec<String>> = Arc::new((0..10_000).map(|i| format!("user:{i}")).collect());
    println!(
        "{:<40} {:>10} {:>9} {:>9} {:>9} {:>22}",
        "case", "checks/s", "mean ns", "p99 ns", "refused", "redis calls"
    );

    let memory = MemoryRateLimiter::new("bench", rate, EphemeralMetrics::default());
    let stats = sync_case(run_for, |i| {
        memory.try_acquire(&keys[i as usize % keys.len()])
    })
    .await;
    row("memory, try_acquire, 10k keys", &stats, None);

    for tasks in [1, 64] {
        let stats = round_trip_case(&server, run_for, tasks).await;
        row(
            &format!("round trip per check, {tasks} task(s)"),
            &stats,
            Some(stats.checks),
        );
    }

    let mut registry = Registry::default();
    let metrics = EphemeralMetrics::register(&mut registry);
    let mut options = RedisOptions::new(server.url());
    options.key_prefix = unique_prefix("bench-lease");
    let client = RedisClient::connect(options, metrics).expect("url");
    assert!(client.wait_until_up(Duration::from_secs(10)).await);
    let lease: Arc<dyn RateLimiter> = Arc::new(RedisRateLimiter::new(client, "bench", rate));

    // 10,000 users moving their cursors at 60 a second, the default
    // limit: 600,000 checks a second.
    let before = script_calls(&registry);
    let stats = sync_case_paced(run_for, 600_000, |i| {
        lease.try_acquire(&keys[i as usize % keys.len()])
    })
    .await;
    let calls = script_calls(&registry) - before;
    row("lease, try_acquire, 10k keys, 600k/s", &stats, Some(calls));
    // The same again, every user now holding a lease: no first checks.
    let before = script_calls(&registry);
    let stats = sync_case_paced(run_for, 600_000, |i| {
        lease.try_acquire(&keys[i as usize % keys.len()])
    })
    .await;
    let calls = script_calls(&registry) - before;
    row("  again, leases held", &stats, Some(calls));

    let before = script_calls(&registry);
    let stats = sync_case(run_for, |i| {
        lease.try_acquire(&keys[i as usize % keys.len()])
    })
    .await;
    let calls = script_calls(&registry) - before;
    row(
        "lease, try_acquire, 10k keys, flat out",
        &stats,
        Some(calls),
    );

    let before = script_calls(&registry);
    let (many, all) = (lease.clone(), keys.clone());
    let stats = async_case(run_for, 8, move |task, i| {
        let (lease, keys) = (many.clone(), all.clone());
        async move {
            lease
                .acquire(&keys[(i as usize * 8 + task) % keys.len()])
                .await
        }
    })
    .await;
    row(
        "lease, acquire, 10k keys, 8 tasks",
        &stats,
        Some(script_calls(&registry) - before),
    );

    let before = script_calls(&registry);
    let stats = sync_case(run_for, |_| lease.try_acquire("hot")).await;
    row(
        "lease, try_acquire, 1 key",
        &stats,
        Some(script_calls(&registry) - before),
    );

    let before = script_calls(&registry);
    let one = lease.clone();
    let stats = async_case(run_for, 1, move |_, _| {
        let lease = one.clone();
        async move { lease.acquire("hot").await }
    })
    .await;
    row(
        "lease, acquire, 1 key",
        &stats,
        Some(script_calls(&registry) - before),
    );
}

struct Stats {
    checks: u64,
    refused: u64,
    took: Duration,
    /// Nanoseconds per check.
    latency: Histogram<u64>,
}

/// One task calling `check(i)` in a loop.
async fn sync_case(run_for: Duration, check: impl Fn(u64) -> bool) -> Stats {
    let mut latency = Histogram::<u64>::new(3).expect("histogram");
    let started = Instant::now();
    let (mut checks, mut refused) = (0u64, 0u64);
    while started.elapsed() < run_for {
        // Time batches of 64 checks: one clock read per check would cost
        // as much as the check itself.
        let batch = Instant::now();
        for _ in 0..64 {
            refused += u64::from(!check(checks));
            checks += 1;
        }
        let _ = latency.record(batch.elapsed().as_nanos() as u64 / 64);
        // Let the background top-ups run, as a gateway's other tasks would.
        tokio::task::yield_now().await;
    }
    Stats {
        checks,
        refused,
        took: started.elapsed(),
        latency,
    }
}

/// One task calling `check(i)` `per_sec` times a second (in steps of a
/// millisecond), or as close to it as it can.
async fn sync_case_paced(run_for: Duration, per_sec: u64, check: impl Fn(u64) -> bool) -> Stats {
    let mut latency = Histogram::<u64>::new(3).expect("histogram");
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let (mut checks, mut refused) = (0u64, 0u64);
    while started.elapsed() < run_for {
        tick.tick().await;
        let due = started.elapsed().as_micros() as u64 * per_sec / 1_000_000;
        while checks < due {
            let batch = Instant::now();
            for _ in 0..64 {
                refused += u64::from(!check(checks));
                checks += 1;
            }
            let _ = latency.record(batch.elapsed().as_nanos() as u64 / 64);
        }
    }
    Stats {
        checks,
        refused,
        took: started.elapsed(),
        latency,
    }
}

/// `tasks` tasks awaiting `check(task, i)` in a loop.
async fn async_case<F, Fut>(run_for: Duration, tasks: usize, check: F) -> Stats
where
    F: Fn(usize, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let check = check.clone();
            tokio::spawn(async move {
                let mut latency = Histogram::<u64>::new(3).expect("histogram");
                let (mut checks, mut refused) = (0u64, 0u64);
                while started.elapsed() < run_for {
                    let one = Instant::now();
                    refused += u64::from(!check(task, checks).await);
                    let _ = latency.record(one.elapsed().as_nanos() as u64);
                    checks += 1;
                    if checks % 64 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                (checks, refused, latency)
            })
        })
        .collect();
    let mut stats = Stats {
        checks: 0,
        refused: 0,
        took: Duration::ZERO,
        latency: Histogram::<u64>::new(3).expect("histogram"),
    };
    for handle in handles {
        let (checks, refused, latency) = handle.await.expect("bench task");
        stats.checks += checks;
        stats.refused += refused;
        stats.latency.add(latency).expect("histograms of one shape");
    }
    stats.took = started.elapsed();
    stats
}

/// The GCRA script once per check, as a limiter without leases would.
async fn round_trip_case(server: &RedisServer, run_for: Duration, tasks: usize) -> Stats {
    let client = redis::Client::open(server.url()).expect("url");
    let connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let script = Arc::new(redis::Script::new(include_str!(
        "../src/ratelimit/gcra.lua"
    )));
    let prefix = unique_prefix("bench-round-trip");
    async_case(run_for, tasks, move |task, _| {
        let (mut connection, script, key) = (
            connection.clone(),
            script.clone(),
            format!("{prefix}{task}"),
        );
        async move {
            let taken: Vec<(u64, u64)> = script
                .key(key)
                .arg(1u64) // interval: 1 µs
                .arg(1_000_000_000_000u64) // tolerance: a burst never spent
                .arg(1u64)
                .invoke_async(&mut connection)
                .await
                .expect("script");
            taken.first().is_some_and(|(granted, _)| *granted == 1)
        }
    })
    .await
}

fn row(name: &str, stats: &Stats, calls: Option<u64>) {
    let per_sec = stats.checks as f64 / stats.took.as_secs_f64();
    let calls = calls.map_or(String::new(), |calls| {
        format!(
            "{calls} ({:.4}/check)",
            calls as f64 / stats.checks.max(1) as f64
        )
    });
    println!(
        "{name:<40} {per_sec:>10.0} {:>9.0} {:>9} {:>9} {calls:>22}",
        stats.latency.mean(),
        stats.latency.value_at_quantile(0.99),
        stats.refused,
    );
}

/// Script calls the limiters made so far (their round trips), from the
/// exposition text: `collab_redis_request_duration_seconds_count{op="rate_limit"} N`.
fn script_calls(registry: &Registry) -> u64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).expect("encode");
    text.lines()
        .find(|line| {
            line.starts_with("collab_redis_request_duration_seconds_count")
                && line.contains("op=\"rate_limit\"")
        })
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}
