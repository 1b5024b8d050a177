//! What the handlers may touch, in a few handles named by role. The
//! router's state, [`AppState`], holds one of each; a handler takes only
//! the handles it uses (`State<Arc<Rooms>>`, …, through axum's
//! [`FromRef`]), so its signature says which parts of the gateway it reads.

use std::sync::Arc;

use axum::extract::FromRef;
use collab_bus::Bus;
use collab_ephemeral::{Presence, RateLimiter, Revocations, RoomExpiry};
use collab_metrics::Exporter;
use collab_store::RoomCatalog;
use tokio::sync::Semaphore;

use crate::admission::Admission;
use crate::auth::{self, Auth, AuthError};
use crate::metrics::GatewayMetrics;
use crate::{Readiness, ws};

/// The router's state: every handle, each cheap to clone.
#[derive(Clone)]
pub(crate) struct AppState {
    pub tokens: Arc<Tokens>,
    pub rooms: Arc<Rooms>,
    pub ops: Arc<Ops>,
    pub entrance: Arc<ws::Entrance>,
    /// `/metrics` has a listener of its own (`metrics_listen`).
    pub metrics_elsewhere: bool,
}

/// The auth check: verifies tokens, refuses revoked ones, and meters each
/// caller's HTTP requests; it also mints dev tokens and takes revocations.
pub(crate) struct Tokens {
    pub auth: Auth,
    pub revocations: Arc<dyn Revocations>,
    /// The HTTP requests of each user (and, for the dev token, address):
    /// the `http` kind of `collab_rate_limited_total`.
    pub http_limiter: Arc<dyn RateLimiter>,
    /// The longest a token may live: how long a revocation is kept, and
    /// the most a dev token gets.
    pub max_token_lifetime_secs: u64,
}

impl Tokens {
    /// Verifies a token (signature, expiry, claims) and refuses a revoked
    /// one: the check at the WebSocket upgrade and on every HTTP request.
    pub(crate) async fn check(&self, token: &str) -> Result<collab_protocol::Claims, AuthError> {
        auth::check_token(&self.auth, &*self.revocations, token).await
    }
}

/// The rooms side: their records in the store, their owners over the bus,
/// who is online, and the limits on creating and changing rooms.
pub(crate) struct Rooms {
    pub store: Arc<dyn RoomCatalog>,
    pub bus: Arc<dyn Bus>,
    pub metrics: GatewayMetrics,
    pub presence: Arc<dyn Presence>,
    /// Rooms created, per user: the `rooms` kind of
    /// `collab_rate_limited_total`.
    pub creations: Arc<dyn RateLimiter>,
    /// Ops, per user: the bucket of the WebSocket connections', which a
    /// backend's publishing shares.
    pub ops: Arc<dyn RateLimiter>,
    /// Where a room created with a time to live gets its first deadline
    /// (see the room node's expiry); `None`: nowhere, so such a room
    /// expires only once it has been used.
    pub room_expiry: Option<Arc<dyn RoomExpiry>>,
    pub request_timeout_secs: u64,
    pub max_members_per_room: u32,
    pub max_rooms_per_user: u32,
    pub default_room_ttl_secs: u64,
}

impl Rooms {
    /// How long a request to a room's owner may take (at least a second).
    pub(crate) fn request_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.request_timeout_secs.max(1))
    }
}

/// The operational side: readiness, the metrics page, the cluster view,
/// and the bound on requests in progress.
pub(crate) struct Ops {
    pub readiness: Arc<dyn Readiness>,
    /// Whether WebSocket upgrades are taken (not while draining, nor while
    /// cut off from the cluster): readiness says no meanwhile.
    pub admission: Arc<Admission>,
    pub metrics: GatewayMetrics,
    /// The process's `/metrics` page and the HTTP request metrics.
    pub exporter: Exporter,
    /// The cluster's members (`None` for `collab serve`) and the room node
    /// beside this gateway, for the admin view.
    pub bus: Arc<dyn Bus>,
    pub gateway_id: String,
    /// A permit per HTTP request in progress (`max_concurrent_requests`;
    /// `None`: no limit).
    pub http_slots: Option<Arc<Semaphore>>,
}

impl FromRef<AppState> for Arc<Tokens> {
    fn from_ref(state: &AppState) -> Self {
        state.tokens.clone()
    }
}

impl FromRef<AppState> for Arc<Rooms> {
    fn from_ref(state: &AppState) -> Self {
        state.rooms.clone()
    }
}

impl FromRef<AppState> for Arc<Ops> {
    fn from_ref(state: &AppState) -> Self {
        state.ops.clone()
    }
}

impl FromRef<AppState> for Arc<ws::Entrance> {
    fn from_ref(state: &AppState) -> Self {
        state.entrance.clone()
    }
}
