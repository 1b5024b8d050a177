//! The Redis implementations against a real redis-server: the behaviour
//! suite, then what only a shared store can do — two gateways (two clients,
//! each with its own connection) sharing one budget, one revocation, one
//! view of who is online — and an outage: Redis killed under use and
//! started again.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use collab_ephemeral::testsuite::{self, RedisServer, eventually, redis_client, unique_prefix};
use collab_ephemeral::{
    ConnectionsOf, Ephemeral, EphemeralMetrics, EphemeralOptions, Presence, Rate, RateLimiter,
    RedisClient, RedisOptions, RedisPresence, RedisRateLimiter, RedisRevocations, RedisRoomExpiry,
    Revocation, Revocations, TokenRef, unix_now_secs,
};
use collab_protocol::{RoomId, UserId};

const HOUR: Duration = Duration::from_secs(3600);

fn user(id: &str) -> UserId {
    UserId::parse(id).expect("user id")
}

fn token<'a>(user: &'a str, jti: &'a str) -> TokenRef<'a> {
    TokenRef {
        user,
        jti: Some(jti),
        issued_at: Some(unix_now_secs()),
    }
}

// === the behaviour suite ===

#[tokio::test]
async fn rate_limits() {
    let server = RedisServer::start();
    let client = redis_client(&server, &unique_prefix("limits")).await;
    testsuite::rate_limits(|rate| Arc::new(RedisRateLimiter::new(client.clone(), "test", rate)))
        .await;
}

#[tokio::test]
async fn revocations() {
    let server = RedisServer::start();
    let client = redis_client(&server, &unique_prefix("revocations")).await;
    testsuite::revocations(|| Arc::new(RedisRevocations::new(client.clone(), HOUR))).await;
}

#[tokio::test]
async fn presence() {
    let server = RedisServer::start();
    let client = redis_client(&server, &unique_prefix("presence")).await;
    testsuite::presence(|gateway| {
        Arc::new(RedisPresence::new(
            client.clone(),
            gateway,
            Duration::from_secs(10),
        ))
    })
    .await;
}

#[tokio::test]
async fn room_expiry() {
    let server = RedisServer::start();
    let client = redis_client(&server, &unique_prefix("expiry")).await;
    testsuite::room_expiry(|| Arc::new(RedisRoomExpiry::new(client.clone()))).await;
}

// === two gateways, one Redis ===

#[tokio::test]
async fn two_gateways_share_one_budget() {
    let server = RedisServer::start();
    let prefix = unique_prefix("shared-budget");
    let g1 = redis_client(&server, &prefix).await;
    let g2 = redis_client(&server, &prefix).await;
    let rate = Rate::per_sec(0.0, 10.0);
    let limiters: Vec<Arc<dyn RateLimiter>> = vec![
        Arc::new(RedisRateLimiter::new(g1, "ops", rate)),
        Arc::new(RedisRateLimiter::new(g2, "ops", rate)),
    ];

    // Five tasks per gateway, ten checks each, all for one user: a burst
    // of 10 lets exactly 10 through, not 10 per gateway.
    let allowed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for limiter in &limiters {
        for _ in 0..5 {
            let (limiter, allowed) = (limiter.clone(), allowed.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..10 {
                    if limiter.acquire("user:u").await {
                        allowed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    for task in tasks {
        task.await.expect("task");
    }
    assert_eq!(allowed.load(Ordering::Relaxed), 10);

    // Without waiting, the same: the burst eventually, and no more than
    // one request on credit per gateway.
    let mut allowed = 0;
    let deadline = Instant::now() + Duration::from_secs(2);
    while allowed < 10 {
        assert!(
            Instant::now() < deadline,
            "only {allowed} of 10 allowed in 2 s"
        );
        for limiter in &limiters {
            allowed += u64::from(limiter.try_acquire("user:v"));
        }
        tokio::time::sleep(Duration::from_millis(1)).await; // pace
    }
    for _ in 0..100 {
        for limiter in &limiters {
            allowed += u64::from(limiter.try_acquire("user:v"));
        }
        tokio::time::sleep(Duration::from_millis(1)).await; // pace
    }
    assert!(allowed <= 10 + 2, "{allowed} allowed from a burst of 10");
}

/// What leases may over-admit: in any one-second window, at most the burst,
/// plus what the rate adds in the window, plus one lease per gateway (the
/// tokens it took before the window).
#[tokio::test]
async fn leases_admit_at_most_one_lease_per_gateway_beyond_the_bucket() {
    let server = RedisServer::start();
    let prefix = unique_prefix("lease-bound");
    let rate = Rate::per_sec(50.0, 20.0);
    let lease = u64::from(rate.lease_size());
    let mut limiters: Vec<Arc<RedisRateLimiter>> = Vec::new();
    for _ in 0..2 {
        let client = redis_client(&server, &prefix).await;
        limiters.push(Arc::new(RedisRateLimiter::new(client, "cursors", rate)));
    }

    // Each gateway takes its first lease, then everyone hammers the key
    // for 3 s: four tasks per gateway, half of them waiting, half not.
    for limiter in &limiters {
        assert!(limiter.acquire("k").await);
    }
    let started = Instant::now();
    let run_for = Duration::from_secs(3);
    let admitted = Arc::new(std::sync::Mutex::new(Vec::<Duration>::new()));
    let mut tasks = Vec::new();
    for limiter in &limiters {
        for waits in [true, true, false, false] {
            let (limiter, admitted) = (limiter.clone(), admitted.clone());
            tasks.push(tokio::spawn(async move {
                while started.elapsed() < run_for {
                    let allowed = if waits {
                        limiter.acquire("k").await
                    } else {
                        limiter.try_acquire("k")
                    };
                    if allowed {
                        admitted.lock().expect("lock").push(started.elapsed());
                    }
                    tokio::task::yield_now().await;
                }
            }));
        }
    }
    for task in tasks {
        task.await.expect("task");
    }
    let mut admitted = admitted.lock().expect("lock").clone();
    admitted.sort();

    let window = Duration::from_secs(1);
    let bound = 20 + 50 + 2 * lease;
    let mut worst = 0;
    for (i, start) in admitted.iter().enumerate() {
        let in_window = admitted[i..]
            .iter()
            .take_while(|t| **t < *start + window)
            .count() as u64;
        worst = worst.max(in_window);
    }
    assert!(
        worst <= bound,
        "{worst} admitted in one second; burst 20 + rate 50 + 2 leases of {lease} = {bound}"
    );
    // And the limit is not starving anyone: over 3 s at 50/s, most of
    // the 150 tokens the bucket made were spent.
    let total = admitted.len() as u64;
    println!("worst one-second window {worst} (bound {bound}), {total} in 3 s");
    assert!(total >= 120, "only {total} admitted in 3 s at 50/s");
    assert!(total <= 20 + 150 + 2 * lease + 1, "{total} admitted in 3 s");
}

#[tokio::test]
async fn a_revocation_reaches_another_gateway_within_a_second() {
    let server = RedisServer::start();
    let prefix = unique_prefix("revoke-across");
    let g1 = RedisRevocations::new(redis_client(&server, &prefix).await, HOUR);
    let g2 = RedisRevocations::new(redis_client(&server, &prefix).await, HOUR);
    let mut news = g2.subscribe();
    // g2 follows the channel once it has loaded; a first revocation that
    // it sees says it does.
    g1.revoke_token("warm-up", unix_now_secs() + 60)
        .await
        .expect("revoke");
    eventually("g2 follows the channel", Duration::from_secs(5), || async {
        g2.is_revoked(&token("u", "warm-up"))
    })
    .await;
    let _ = news.recv().await;

    let started = Instant::now();
    g1.revoke_token("j1", unix_now_secs() + 60)
        .await
        .expect("revoke");
    let announced = tokio::time::timeout(Duration::from_secs(1), news.recv())
        .await
        .expect("g2 told within a second")
        .expect("a revocation");
    let took = started.elapsed();
    assert!(matches!(announced, Revocation::Token { ref jti, .. } if jti == "j1"));
    assert!(g2.is_revoked(&token("u", "j1")));
    assert!(!g2.is_revoked(&token("u", "j2")));
    println!("revocation reached the second gateway in {took:?}");

    // A user's revocation too, and a third gateway started later loads
    // both from Redis.
    g1.revoke_user(&user("bob"), unix_now_secs() + 1)
        .await
        .expect("revoke bob");
    let g3 = RedisRevocations::new(redis_client(&server, &prefix).await, HOUR);
    eventually(
        "g3 loads what was revoked",
        Duration::from_secs(5),
        || async { g3.is_revoked(&token("u", "j1")) && g3.is_revoked(&token("bob", "any")) },
    )
    .await;
    assert!(!g3.is_revoked(&token("alice", "any")));
}

/// What `presence` counts of `of` on the other gateways.
async fn elsewhere(presence: &RedisPresence, of: ConnectionsOf<'_>) -> u32 {
    presence.connections_elsewhere(of).await.expect("query")
}

#[tokio::test]
async fn presence_spans_gateways_and_a_dropped_gateway_leaves_within_its_ttl() {
    let server = RedisServer::start();
    let prefix = unique_prefix("presence-ttl");
    let ttl = Duration::from_secs(2);
    let g1 = RedisPresence::new(redis_client(&server, &prefix).await, "g1", ttl);
    let g2 = RedisPresence::new(redis_client(&server, &prefix).await, "g2", ttl);
    let (u, r1, r2) = (
        user("u"),
        RoomId::parse("r1").expect("room"),
        RoomId::parse("r2").expect("room"),
    );
    let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), "2001:db8::1".parse().expect("ip"));
    g1.connected(&u, Some(a));
    g1.joined(&u, &r1);
    g2.connected(&u, Some(b));
    g2.joined(&u, &r2);
    // No flush: the heartbeats write the changes.
    eventually("both gateways seen", Duration::from_secs(2), || async {
        g1.user(&u).await.expect("query").gateways.len() == 2
    })
    .await;
    let seen = g2.user(&u).await.expect("query");
    assert_eq!(seen.connections, 2);
    assert_eq!(seen.gateways, vec!["g1".to_owned(), "g2".to_owned()]);
    // Each gateway sees the other's connections, not its own, by user and
    // by address.
    g1.connected(&u, Some(b));
    g1.flush().await.expect("flush");
    assert_eq!(elsewhere(&g2, ConnectionsOf::User(&u)).await, 2);
    assert_eq!(elsewhere(&g1, ConnectionsOf::User(&u)).await, 1);
    assert_eq!(elsewhere(&g2, ConnectionsOf::Address(a)).await, 1);
    assert_eq!(elsewhere(&g2, ConnectionsOf::Address(b)).await, 1);
    assert_eq!(elsewhere(&g1, ConnectionsOf::Address(b)).await, 1);
    assert_eq!(elsewhere(&g1, ConnectionsOf::Address(a)).await, 0);
    g1.disconnected(&u, Some(b));
    g1.flush().await.expect("flush");
    assert_eq!(elsewhere(&g2, ConnectionsOf::Address(b)).await, 0);
    assert_eq!(seen.rooms, vec![r1.clone(), r2.clone()]);

    // Renewals keep g1's users past the TTL.
    let renewed_until = Instant::now() + ttl + ttl / 2;
    while Instant::now() < renewed_until {
        assert_eq!(g2.user(&u).await.expect("query").connections, 2);
        tokio::time::sleep(Duration::from_millis(100)).await; // pace
    }

    // g1 dies without a word: its entries go when they expire.
    let died = Instant::now();
    drop(g1);
    eventually("g1's users gone", ttl * 3, || async {
        g2.user(&u).await.expect("query").connections == 1
    })
    .await;
    let gone_after = died.elapsed();
    assert!(
        gone_after <= ttl + Duration::from_millis(500),
        "gone after {gone_after:?}, TTL {ttl:?}"
    );
    let seen = g2.user(&u).await.expect("query");
    assert_eq!(seen.gateways, vec!["g2".to_owned()]);
    assert_eq!(seen.rooms, vec![r2]);
    // Its addresses' connections went with it.
    assert_eq!(elsewhere(&g2, ConnectionsOf::Address(a)).await, 0);
}

#[tokio::test]
async fn the_redis_bundle_shares_every_concern() {
    let server = RedisServer::start();
    let prefix = unique_prefix("bundle");
    let g1 = Ephemeral::redis(
        redis_client(&server, &prefix).await,
        &EphemeralOptions::new("g1"),
    );
    let g2 = Ephemeral::redis(
        redis_client(&server, &prefix).await,
        &EphemeralOptions::new("g2"),
    );
    assert!(g1.redis_client().is_some_and(|c| c.is_up()));
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = EphemeralMetrics::register(&mut registry);
    let mut options = RedisOptions::new(server.url());
    options.key_prefix = prefix.clone();
    let client = RedisClient::connect(options, metrics).expect("url");
    assert!(client.wait_until_up(Duration::from_secs(10)).await);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    assert!(text.contains("collab_redis_up{} 1"), "{text}");

    let rate = Rate::per_sec(0.0, 2.0);
    let (l1, l2) = (
        g1.rate_limiter("joins", rate),
        g2.rate_limiter("joins", rate),
    );
    assert_eq!(l1.kind(), "joins");
    let (first, second) = (l1.acquire("u").await, l2.acquire("u").await);
    assert!(
        first && second,
        "one token on each gateway: {first}, {second}"
    );
    assert!(!l1.acquire("u").await && !l2.acquire("u").await);

    g1.revocations
        .revoke_token("j", unix_now_secs() + 60)
        .await
        .expect("revoke");
    eventually("g2 refuses the token", Duration::from_secs(5), || async {
        g2.revocations.is_revoked(&token("u", "j"))
    })
    .await;

    let u = user("u");
    g1.presence.connected(&u, None);
    g1.presence.flush().await.expect("flush");
    assert!(g2.presence.user(&u).await.expect("query").is_online());

    let room = RoomId::parse("r").expect("room");
    let deadline = g1.expiry.touch(&room, HOUR).await.expect("touch");
    assert_eq!(
        g2.expiry.deadline(&room).await.expect("deadline"),
        Some(deadline)
    );
}

// === an outage ===

#[tokio::test]
async fn redis_killed_under_use_and_started_again() {
    let mut server = RedisServer::start();
    let prefix = unique_prefix("outage");
    let c1 = redis_client(&server, &prefix).await;
    let c2 = redis_client(&server, &prefix).await;
    let rate = Rate::per_sec(0.0, 5.0);
    let l1 = RedisRateLimiter::new(c1.clone(), "ops", rate);
    let l2 = RedisRateLimiter::new(c2.clone(), "ops", rate);
    let r1 = RedisRevocations::new(c1.clone(), HOUR);
    let r2 = RedisRevocations::new(c2.clone(), HOUR);
    let p1 = RedisPresence::new(c1.clone(), "g1", Duration::from_secs(3));
    let p2 = RedisPresence::new(c2.clone(), "g2", Duration::from_secs(3));
    let u = user("u");
    p1.connected(&u, None);

    // Before: one budget, one revocation everywhere.
    let mut before = 0;
    for _ in 0..5 {
        before += u64::from(l1.acquire("a").await) + u64::from(l2.acquire("a").await);
    }
    assert_eq!(before, 5, "one shared burst of 5");
    r1.revoke_token("known", unix_now_secs() + 600)
        .await
        .expect("revoke");
    eventually(
        "g2 knows the revocation",
        Duration::from_secs(5),
        || async { r2.is_revoked(&token("u", "known")) },
    )
    .await;
    eventually("g2 sees g1's user", Duration::from_secs(5), || async {
        p2.user(&u).await.is_ok_and(|p| p.connections == 1)
    })
    .await;

    // Load throughout: checks on both gateways from a few tasks, which
    // must never stall for long nor panic.
    let stop = Arc::new(AtomicBool::new(false));
    let slowest = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = [(l1, "x"), (l2, "y")]
        .into_iter()
        .map(|(limiter, key)| {
            let (stop, slowest) = (stop.clone(), slowest.clone());
            tokio::spawn(async move {
                let mut checks = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    limiter.acquire(key).await;
                    limiter.try_acquire(key);
                    let took = started.elapsed().as_millis() as u64;
                    slowest.fetch_max(took, Ordering::Relaxed);
                    checks += 1;
                    tokio::time::sleep(Duration::from_millis(1)).await; // pace
                }
                (limiter, checks)
            })
        })
        .collect();

    // Redis dies.
    server.kill();
    eventually(
        "both gateways see Redis down",
        Duration::from_secs(5),
        || async { !c1.is_up() && !c2.is_up() },
    )
    .await;
    // Known revocations are still refused; a new one is refused here at
    // once, though Redis could not take it.
    assert!(r1.is_revoked(&token("u", "known")));
    assert!(r2.is_revoked(&token("u", "known")));
    assert!(
        r1.revoke_token("during", unix_now_secs() + 600)
            .await
            .is_err()
    );
    assert!(r1.is_revoked(&token("u", "during")));
    assert!(!r2.is_revoked(&token("u", "during")));
    // Presence cannot be read; nothing else stops.
    assert!(p2.user(&u).await.is_err());

    // Redis comes back, empty (no persistence).
    let restarted = Instant::now();
    server.restart();
    eventually(
        "both gateways reconnect",
        Duration::from_secs(5),
        || async { c1.is_up() && c2.is_up() },
    )
    .await;
    println!("reconnected {:?} after the restart", restarted.elapsed());
    // What g1 learnt while Redis was away reaches g2; what both knew is
    // written back into the empty Redis.
    eventually(
        "the revocation made during the outage reaches g2",
        Duration::from_secs(5),
        || async { r2.is_revoked(&token("u", "during")) },
    )
    .await;
    let r3 = RedisRevocations::new(redis_client(&server, &prefix).await, HOUR);
    eventually(
        "a new gateway loads the revocations written back",
        Duration::from_secs(5),
        || async { r3.is_revoked(&token("u", "known")) && r3.is_revoked(&token("u", "during")) },
    )
    .await;
    // Presence is renewed into the empty Redis.
    eventually(
        "g1's user is seen again",
        Duration::from_secs(5),
        || async { p2.user(&u).await.is_ok_and(|p| p.connections == 1) },
    )
    .await;

    stop.store(true, Ordering::Relaxed);
    let mut limiters = Vec::new();
    for task in load {
        let (limiter, checks) = task.await.expect("no panic under load");
        assert!(checks > 100, "only {checks} checks during the outage test");
        limiters.push(limiter);
    }
    let slowest = slowest.load(Ordering::Relaxed);
    assert!(
        slowest < 2_000,
        "a check took {slowest} ms while Redis was away"
    );
    // The limits are shared again: a fresh key's burst of 5 is one budget.
    let mut after = 0;
    for _ in 0..5 {
        for limiter in &limiters {
            after += u64::from(limiter.acquire("b").await);
        }
    }
    assert_eq!(after, 5, "one shared burst of 5 after the restart");
    // While Redis was away, each gateway had its own bucket: the
    // fallback decided and counted.
    let fallbacks =
        c1.metrics().rate_limit_fallbacks_for("ops") + c2.metrics().rate_limit_fallbacks_for("ops");
    assert!(fallbacks > 0, "no check fell back during the outage");
    drop((p1, r1, r2, r3));
}
