//! The gateway's settings.

use std::time::Duration;

use collab_ephemeral::{EphemeralOptions, Rate};
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
    /// Seconds of silence (not even a pong) after which a peer counts as
    /// gone from its rooms' presence, until it is heard from again; at
    /// least twice `ping_interval_secs` is used. 0: never.
    pub away_after_secs: u64,
    /// Seconds of silence after which a peer is closed with 1001.
    pub idle_timeout_secs: u64,
    /// Seconds to wait for a room's answer before `unavailable`.
    pub request_timeout_secs: u64,
    /// Seconds before a connection's token expires that the server sends
    /// it `token_expiring`, so that it can present a new one (`refresh`);
    /// at once when the token lives less than that. 0: no warning. Without
    /// a refresh the connection is closed with 4001 at the token's `exp`.
    pub token_expiry_warning_secs: u64,
    pub rate_limits: RateLimits,
    /// How long a revocation is kept: a revoked token id for this long
    /// after its revocation, a user's cut-off for this long after it. A
    /// token that lives longer than this outlives its revocation, so
    /// `collab token` mints none that does.
    pub max_token_lifetime_secs: u64,
    /// How long this gateway's entries in the shared presence records live
    /// without a renewal (renewed every third of it): the users of a
    /// gateway that died disappear from presence after this long.
    pub presence_ttl_secs: u64,
    /// Milliseconds a gateway cut off from the cluster (its membership
    /// heartbeats failing) keeps its clients: then it closes every socket
    /// with 1001, so that they resume at another gateway, and refuses new
    /// ones (503) until the heartbeats land again. 0: two member TTLs
    /// (`cluster.member_ttl_ms`), by which time the cluster has dropped
    /// this gateway anyway.
    pub bus_lost_close_ms: u64,
    /// Open WebSockets one user may have; past it the upgrade is refused
    /// with 429 `rate_limited`. 0: no limit. The user's sockets on the
    /// other gateways of a cluster count too, as the shared presence
    /// records have them (each gateway's own count when they cannot be
    /// read).
    pub max_sockets_per_user: u32,
    /// Open WebSockets from one source IP address on this gateway; past it
    /// the upgrade is refused with 429 `rate_limited`. 0: no limit (the
    /// default: behind a proxy or load balancer every client has the
    /// proxy's address). Counted per gateway.
    pub max_sockets_per_address: u32,
    /// Seconds a client has to send a request's line and headers (the
    /// WebSocket upgrade's included), from opening the connection or from
    /// the previous response; then the connection is dropped. Bounds what
    /// a client that opens connections and sends nothing, or a byte at a
    /// time (slowloris), can hold.
    pub handshake_timeout_secs: u64,
    /// HTTP requests served at once (WebSocket upgrades included, until
    /// their 101; the sockets they open do not count). One more is refused
    /// at once with 503 `unavailable`. Health, readiness and metrics are
    /// never refused. 0: no limit.
    pub max_concurrent_requests: usize,
    /// The web origins (`scheme://host[:port]`, comma-separated; `*`:
    /// every one) whose pages may open a WebSocket, besides the pages this
    /// server serves itself and, in dev mode, pages on loopback hosts. A
    /// browser from any other origin is refused with 403 `forbidden`; a
    /// client that sends no `Origin` (not a browser) is not checked.
    pub allowed_origins: String,
    /// Rooms one user may have created and not deleted; past it,
    /// `POST /v1/rooms` is refused with 429 `rate_limited`. 0: no limit.
    pub max_rooms_per_user: u32,
    /// Members of a private room, its creator included; a longer
    /// `members` list is refused with 413 `too_large`. 0: no limit.
    pub max_members_per_room: u32,
    /// Not a setting of its own: the process sets it when `/metrics` is
    /// served on a listener apart (`metrics_listen`), and then the public
    /// router does not serve it.
    #[serde(skip)]
    pub metrics_elsewhere: bool,
    /// Not a setting of the gateway's: the process copies `[rooms]
    /// default_ttl_secs` here. The time to live of a room created without
    /// `ttl_secs`; 0: such rooms never expire.
    #[serde(skip)]
    pub default_room_ttl_secs: u64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            gateway_id: "local".into(),
            limits: Limits::default(),
            max_unacked_ops: 64,
            outbound_queue: 1024,
            ping_interval_secs: 5,
            away_after_secs: 15,
            idle_timeout_secs: 60,
            request_timeout_secs: 15,
            token_expiry_warning_secs: 30,
            rate_limits: RateLimits::default(),
            max_token_lifetime_secs: 7 * 24 * 60 * 60,
            presence_ttl_secs: 15,
            bus_lost_close_ms: 0,
            max_sockets_per_user: 64,
            max_sockets_per_address: 0,
            handshake_timeout_secs: 10,
            max_concurrent_requests: 1024,
            allowed_origins: String::new(),
            max_rooms_per_user: 0,
            max_members_per_room: 1000,
            metrics_elsewhere: false,
            default_room_ttl_secs: 0,
        }
    }
}

impl GatewayConfig {
    /// What the shared state needs to know of this gateway.
    pub fn ephemeral_options(&self) -> EphemeralOptions {
        EphemeralOptions {
            gateway_id: self.gateway_id.clone(),
            presence_ttl: Duration::from_secs(self.presence_ttl_secs.max(1)),
            max_token_lifetime: Duration::from_secs(self.max_token_lifetime_secs),
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

impl RateLimits {
    pub fn ops(&self) -> Rate {
        Rate::per_sec(self.ops_per_sec, self.ops_burst)
    }

    pub fn cursors(&self) -> Rate {
        Rate::per_sec(self.cursors_per_sec, self.cursors_burst)
    }

    pub fn joins(&self) -> Rate {
        Rate::per_sec(self.joins_per_sec, self.joins_burst)
    }

    pub fn rooms(&self) -> Rate {
        Rate::per_min(self.rooms_per_min, self.rooms_burst)
    }

    pub fn http(&self) -> Rate {
        Rate::per_sec(self.http_per_sec, self.http_burst)
    }
}
