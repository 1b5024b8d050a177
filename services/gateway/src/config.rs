//! The gateway's settings.

use collab_protocol::Limits;
use serde::{Deserialize, Serialize};

/// Everything a gateway can be told. Defaults are the protocol's and this
/// project's recommendations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// This gateway's id; it names its connections. A cluster gateway uses
    /// its node id.
    pub gateway_id: String,
    pub limits: Limits,
    /// Ops a connection may have sent and not yet seen acked; past it the
    /// next op gets `rate_limited`.
    pub max_unacked_ops: usize,
    /// Frames queued for one connection before it counts as too slow and is
    /// closed with 4008. Cursors are coalesced and do not count; neither
    /// does a `joined`.
    pub outbound_queue: usize,
    /// Seconds between WebSocket pings.
    pub ping_interval_secs: u64,
    /// Seconds of silence after which a peer is closed with 1001.
    pub idle_timeout_secs: u64,
    /// Seconds to wait for a room's answer before `unavailable`.
    pub request_timeout_secs: u64,
    pub rate_limits: RateLimits,
    /// Not a setting of its own: the process sets it when `/metrics` is
    /// served on a listener apart (`metrics_listen`), and then the public
    /// router does not serve it.
    #[serde(skip)]
    pub metrics_elsewhere: bool,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            gateway_id: "local".into(),
            limits: Limits::default(),
            max_unacked_ops: 64,
            outbound_queue: 1024,
            ping_interval_secs: 20,
            idle_timeout_secs: 60,
            request_timeout_secs: 15,
            rate_limits: RateLimits::default(),
            metrics_elsewhere: false,
        }
    }
}

/// Token buckets per user: a sustained rate and a burst.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimits {
    pub ops_per_sec: f64,
    pub ops_burst: f64,
    /// Cursor moves over this rate are dropped silently: the next one
    /// carries the newer position anyway.
    pub cursors_per_sec: f64,
    pub cursors_burst: f64,
    pub joins_per_sec: f64,
    pub joins_burst: f64,
    pub rooms_per_min: f64,
    pub rooms_burst: f64,
    /// HTTP requests of one user (or one address, for the dev token).
    pub http_per_sec: f64,
    pub http_burst: f64,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            ops_per_sec: 200.0,
            ops_burst: 400.0,
            cursors_per_sec: 60.0,
            cursors_burst: 120.0,
            joins_per_sec: 20.0,
            joins_burst: 50.0,
            rooms_per_min: 30.0,
            rooms_burst: 10.0,
            http_per_sec: 50.0,
            http_burst: 100.0,
        }
    }
}
