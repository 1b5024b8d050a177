//! The behaviour every implementation of each concern passes, and a real
//! `redis-server` to run the Redis ones against.
//!
//! Each suite takes a factory, so the same assertions run on the in-memory
//! and the Redis implementation: `rate_limits`, `revocations`, `presence`,
//! `room_expiry`. Tests that span gateways or outages live in the crate's
//! `tests/redis.rs`; [`RedisServer`] and [`redis_client`] are here so the
//! cross-process tests can use them too.

mod redis_server;

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use collab_protocol::{RoomId, UserId};

pub use redis_server::{BINARY_ENV, RedisServer, binary};

use crate::{
    ConnectionsOf, EphemeralMetrics, Presence, Rate, RateLimiter, RedisClient, RedisOptions,
    Revocation, Revocations, RoomExpiry, TokenRef, UserPresence, unix_now_secs,
};

/// A key prefix no other test uses, so tests can share one server.
pub fn unique_prefix(name: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "test:{name}:{}:{}:",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A client of `server` with the key prefix `prefix`, once it answers.
pub async fn redis_client(server: &RedisServer, prefix: &str) -> RedisClient {
    let mut options = RedisOptions::new(server.url());
    options.key_prefix = prefix.to_owned();
    let client =
        RedisClient::connect(options, EphemeralMetrics::default()).expect("a valid redis url");
    assert!(
        client.wait_until_up(Duration::from_secs(10)).await,
        "redis at {} did not answer within 10 s",
        server.url()
    );
    client
}

/// Polls `check` until it holds; panics after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(10)).await; // poll interval
    }
}

fn user(id: &str) -> UserId {
    UserId::parse(id).expect("a valid user id")
}

fn room(id: &str) -> RoomId {
    RoomId::parse(id).expect("a valid room id")
}

// === rate limits ===

/// `make(rate)` returns a fresh limiter of that rate.
pub async fn rate_limits<F>(make: F)
where
    F: Fn(Rate) -> Arc<dyn RateLimiter>,
{
    // A burst, then nothing (the rate is one token a day); keys apart.
    let limiter = make(Rate::per_sec(0.0, 3.0));
    for i in 0..3 {
        assert!(limiter.acquire("a").await, "token {i} of the burst");
    }
    assert!(!limiter.acquire("a").await, "past the burst");
    assert!(!limiter.acquire("a").await, "still past the burst");
    assert!(limiter.acquire("b").await, "another key has its own bucket");

    // Refills at the rate: 5 a second, so the next token after 200 ms.
    let limiter = make(Rate::per_sec(5.0, 1.0));
    let started = Instant::now();
    assert!(limiter.acquire("r").await);
    assert!(!limiter.acquire("r").await, "the bucket holds one");
    eventually("a token after 200 ms", Duration::from_secs(2), || {
        limiter.acquire("r")
    })
    .await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(150),
        "refilled after {waited:?}, faster than 5/s"
    );

    // Without waiting: a burst of 4 goes through (perhaps a call or two
    // later, while tokens travel), and never a fifth.
    let limiter = make(Rate::per_sec(0.0, 4.0));
    let mut allowed = 0;
    let deadline = Instant::now() + Duration::from_secs(2);
    while allowed < 4 {
        assert!(
            Instant::now() < deadline,
            "only {allowed} of 4 allowed in 2 s"
        );
        if limiter.try_acquire("t") {
            allowed += 1;
        }
        tokio::time::sleep(Duration::from_millis(2)).await; // pace
    }
    for _ in 0..50 {
        assert!(!limiter.try_acquire("t"), "a fifth token from a burst of 4");
        tokio::time::sleep(Duration::from_millis(2)).await; // pace
    }
    assert!(!limiter.acquire("t").await);
}

// === revocations ===

/// `make()` returns a fresh `Revocations` that keeps user revocations for
/// `max_token_lifetime` = 1 hour.
pub async fn revocations<F>(make: F)
where
    F: Fn() -> Arc<dyn Revocations>,
{
    let revocations = make();
    let mut news = revocations.subscribe();
    let now = unix_now_secs();
    let token = |user, jti, issued_at| TokenRef {
        user,
        jti,
        issued_at,
    };

    // By id: refused at once, here.
    revocations
        .revoke_token("j1", now + 60)
        .await
        .expect("revoke j1");
    assert!(revocations.is_revoked(&token("u1", Some("j1"), Some(now))));
    assert!(!revocations.is_revoked(&token("u1", Some("j2"), Some(now))));
    assert!(!revocations.is_revoked(&token("u1", None, Some(now))));
    let announced = tokio::time::timeout(Duration::from_secs(1), news.recv())
        .await
        .expect("announced within 1 s")
        .expect("a revocation");
    assert_eq!(
        announced,
        Revocation::Token {
            jti: "j1".into(),
            expires_at: now + 60
        }
    );

    // By user and time: earlier tokens, and tokens without `iat`.
    revocations
        .revoke_user(&user("u2"), now)
        .await
        .expect("revoke u2");
    assert!(revocations.is_revoked(&token("u2", Some("x"), Some(now - 10))));
    assert!(revocations.is_revoked(&token("u2", None, None)));
    assert!(!revocations.is_revoked(&token("u2", None, Some(now))));
    assert!(!revocations.is_revoked(&token("u3", None, Some(now - 10))));
    let announced = tokio::time::timeout(Duration::from_secs(1), news.recv())
        .await
        .expect("announced within 1 s")
        .expect("a revocation");
    assert_eq!(
        announced,
        Revocation::User {
            user: user("u2"),
            issued_before: now,
            expires_at: now + 3600
        }
    );

    // What has expired already changes nothing and is not announced.
    revocations
        .revoke_token("old", now - 1)
        .await
        .expect("revoke an expired token");
    assert!(!revocations.is_revoked(&token("u1", Some("old"), None)));
    revocations
        .revoke_user(&user("u4"), now - 7200)
        .await
        .expect("revoke tokens long expired");
    assert!(!revocations.is_revoked(&token("u4", None, None)));
    // Nor is a revocation already known.
    revocations
        .revoke_token("j1", now + 60)
        .await
        .expect("revoke j1 again");
    revocations
        .revoke_token("j5", now + 60)
        .await
        .expect("revoke j5");
    let next = tokio::time::timeout(Duration::from_secs(1), news.recv())
        .await
        .expect("announced within 1 s")
        .expect("a revocation");
    assert_eq!(
        next,
        Revocation::Token {
            jti: "j5".into(),
            expires_at: now + 60
        },
        "only the new revocation is announced"
    );
}

// === presence ===

/// `make(gateway)` returns a fresh `Presence` for the gateway `gateway`.
pub async fn presence<F>(make: F)
where
    F: Fn(&str) -> Arc<dyn Presence>,
{
    let presence = make("g1");
    let (u, other) = (user("u"), user("other"));
    assert_eq!(
        presence.user(&u).await.expect("query"),
        UserPresence::default()
    );

    let (here, there): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
    presence.connected(&u, Some(here));
    presence.connected(&u, Some(there));
    presence.joined(&u, &room("r1"));
    presence.joined(&u, &room("r2"));
    presence.joined(&u, &room("r2"));
    presence.flush().await.expect("flush");
    // Its own connections are not elsewhere.
    for of in [
        ConnectionsOf::User(&u),
        ConnectionsOf::Address(here),
        ConnectionsOf::Address(there),
    ] {
        assert_eq!(presence.connections_elsewhere(of).await.expect("query"), 0);
    }
    let now = presence.user(&u).await.expect("query");
    assert_eq!(
        now,
        UserPresence {
            connections: 2,
            gateways: vec!["g1".into()],
            rooms: vec![room("r1"), room("r2")],
        }
    );
    assert!(now.is_online());
    assert!(!presence.user(&other).await.expect("query").is_online());

    // A room stays while one connection of the user is in it.
    presence.left(&u, &room("r2"));
    presence.left(&u, &room("r1"));
    presence.flush().await.expect("flush");
    assert_eq!(
        presence.user(&u).await.expect("query").rooms,
        vec![room("r2")]
    );

    presence.disconnected(&u, Some(there));
    presence.flush().await.expect("flush");
    assert_eq!(presence.user(&u).await.expect("query").connections, 1);
    // The last connection takes its rooms with it.
    presence.disconnected(&u, Some(here));
    presence.flush().await.expect("flush");
    assert_eq!(
        presence.user(&u).await.expect("query"),
        UserPresence::default()
    );
    // Unbalanced calls change nothing.
    presence.disconnected(&u, Some(here));
    presence.disconnected(&u, None);
    presence.joined(&u, &room("r3"));
    presence.flush().await.expect("flush");
    assert!(!presence.user(&u).await.expect("query").is_online());
}

// === room expiry ===

/// `make()` returns a fresh `RoomExpiry`.
pub async fn room_expiry<F>(make: F)
where
    F: Fn() -> Arc<dyn RoomExpiry>,
{
    let expiry = make();
    let hour = Duration::from_secs(3600);
    let (r1, r2, r3) = (room("r1"), room("r2"), room("r3"));
    assert!(expiry.due(10).await.expect("due").is_empty());
    assert_eq!(expiry.deadline(&r1).await.expect("deadline"), None);

    let d1 = expiry.touch(&r1, Duration::ZERO).await.expect("touch r1");
    let d2 = expiry.touch(&r2, hour).await.expect("touch r2");
    assert!(d2 >= d1 + 3_600_000);
    assert_eq!(expiry.deadline(&r2).await.expect("deadline"), Some(d2));
    eventually("r1 due", Duration::from_secs(2), || async {
        !expiry.due(10).await.expect("due").is_empty()
    })
    .await;
    let due = expiry.due(10).await.expect("due");
    assert_eq!(due.len(), 1, "{due:?}");
    assert_eq!((&due[0].room, due[0].deadline_ms), (&r1, d1));

    // Earliest first, at most `limit`.
    let d3 = expiry.touch(&r3, Duration::ZERO).await.expect("touch r3");
    eventually("r3 due", Duration::from_secs(2), || async {
        expiry.due(10).await.expect("due").len() == 2
    })
    .await;
    let first = expiry.due(1).await.expect("due");
    assert_eq!(first.len(), 1);
    assert_eq!(
        first[0].room,
        if d1 <= d3 { r1.clone() } else { r3.clone() }
    );

    // Forgetting with a deadline that moved since does nothing.
    assert!(!expiry.forget(&r1, Some(d1 + 1)).await.expect("forget"));
    assert!(expiry.forget(&r1, Some(d1)).await.expect("forget"));
    assert!(!expiry.forget(&r1, None).await.expect("forget again"));
    // A touch moves the deadline later.
    let d3_later = expiry.touch(&r3, hour).await.expect("touch r3");
    assert!(d3_later > d3);
    assert!(expiry.due(10).await.expect("due").is_empty());
    assert!(!expiry.forget(&r3, Some(d3)).await.expect("forget"));
    assert!(expiry.forget(&r2, None).await.expect("forget r2"));
    assert_eq!(expiry.deadline(&r2).await.expect("deadline"), None);
}
