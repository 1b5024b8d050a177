//! The behaviour suite on the in-memory implementations.

use std::sync::Arc;
use std::time::Duration;

use collab_ephemeral::testsuite;
use collab_ephemeral::{
    EphemeralMetrics, MemoryPresence, MemoryRateLimiter, MemoryRevocations, MemoryRoomExpiry,
};

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
