//! The behaviour suite on the in-memory implementations.

use std::sync::Arc;
use std::time::Duration;

use collab_ephemeral::testsuite;
use collab_ephemeral::{
    Ephemeral, EphemeralMetrics, EphemeralOptions, MemoryPresence, MemoryRateLimiter,
    MemoryRevocations, MemoryRoomExpiry, Rate, TokenRef, unix_now_secs,
};
use collab_protocol::UserId;
use prometheus_client::registry::Registry;

#[tokio::test]
async fn rate_limits() {
    testsuite::rate_limits(|rate| {
        Arc::new(MemoryRateLimiter::new(
            "test",
            rate,
            EphemeralMetrics::default(),
        ))
    })
    .await;
}

#[tokio::test]
async fn revocations() {
    testsuite::revocations(|| {
        Arc::new(MemoryRevocations::new(
            Duration::from_secs(3600),
            EphemeralMetrics::default(),
        ))
    })
    .await;
}

#[tokio::test]
async fn presence() {
    testsuite::presence(|gateway| Arc::new(MemoryPresence::new(gateway))).await;
}

#[tokio::test]
async fn room_expiry() {
    testsuite::room_expiry(|| Arc::new(MemoryRoomExpiry::new())).await;
}

#[tokio::test]
async fn the_memory_bundle_counts_into_registered_metrics() {
    let mut registry = Registry::default();
    let metrics = EphemeralMetrics::register_without_redis(&mut registry);
    let ephemeral = Ephemeral::in_memory(&EphemeralOptions::new("local"), metrics);
    assert!(ephemeral.redis_client().is_none());

    let cursors = ephemeral.rate_limiter("cursors", Rate::per_sec(0.0, 1.0));
    assert!(cursors.try_acquire("u"));
    assert!(!cursors.try_acquire("u"));
    ephemeral
        .revocations
        .revoke_token("j", unix_now_secs() + 60)
        .await
        .expect("revoke");
    assert!(ephemeral.revocations.is_revoked(&TokenRef {
        user: "u",
        jti: Some("j"),
        issued_at: None,
    }));
    let u = UserId::parse("u").expect("user");
    ephemeral.presence.connected(&u, None);
    let online = ephemeral.presence.user(&u).await.expect("query");
    assert_eq!(online.gateways, vec!["local".to_owned()]);

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    for line in [
        "collab_rate_limited_total{kind=\"cursors\"} 1",
        "collab_revocations_received_total 1",
        "collab_revocations_known 1",
    ] {
        assert!(text.contains(line), "no `{line}` in\n{text}");
    }
    // Without Redis there is no Redis to be down, nor fallbacks from it.
    for absent in ["collab_redis_", "collab_rate_limit_fallbacks"] {
        assert!(!text.contains(absent), "{absent} in\n{text}");
    }
}
