//! The gateway: the WebSocket and HTTP front end of collab.
//!
//! It authenticates clients (JWT), speaks the public protocol to them, and
//! forwards what they send to the rooms' owners over the [`Bus`]: ops and
//! joins by request/reply, cursors by publishing straight to the room's
//! event stream. Each room's stream is subscribed once per gateway and fanned
//! out to the room's local members, in seq order and without gaps (a gap is
//! filled from the owner). Each connection has a bounded outbound queue, so
//! a client that does not read is closed (4008) instead of slowing anyone
//! else. The gateway keeps no durable state: it reads room metadata and
//! history from the [`Store`] and creates rooms there; a room is deleted
//! by its owner, which the gateway asks over the bus.

mod admin;
mod auth;
mod config;
mod error;
mod http;
mod hub;
mod metrics;
mod ratelimit;
mod web;
mod ws;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use axum::Router;
use collab_bus::Bus;
use collab_ephemeral::RoomExpiry;
use collab_metrics::Exporter;
use collab_store::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use auth::{Auth, AuthError, now_secs};
pub use config::{GatewayConfig, RateLimits};
pub use metrics::{Disconnect, GatewayMetrics};

use hub::Hub;
use ratelimit::RateLimiter;

/// Whatever the gateway depends on to serve (bus, store, room node).
#[async_trait]
pub trait Readiness: Send + Sync + 'static {
    async fn ready(&self) -> bool;
}

/// A running gateway; cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
}

pub(crate) struct Limiters {
    pub ops: RateLimiter,
    pub cursors: RateLimiter,
    pub joins: RateLimiter,
    pub rooms: RateLimiter,
    pub http: RateLimiter,
}

pub(crate) struct Shared {
    pub config: GatewayConfig,
    pub auth: Auth,
    pub bus: Arc<dyn Bus>,
    pub store: Arc<dyn Store>,
    pub readiness: Arc<dyn Readiness>,
    pub metrics: GatewayMetrics,
    /// The process's `/metrics` page and the HTTP request metrics.
    pub exporter: Exporter,
    pub limiters: Limiters,
    pub hub: Hub,
    /// Flips to `true` when the gateway shuts down: every socket closes
    /// with 1001.
    pub closing: watch::Sender<bool>,
    pub accepting: AtomicBool,
    pub next_conn: AtomicU64,
    /// WebSocket connections whose task is still running (including one
    /// still delivering its close frame).
    pub open: watch::Sender<usize>,
    /// Where a room created with a time to live gets its first deadline
    /// (see the room node's expiry); `None`: nowhere, so such a room
    /// expires only once it has been used.
    pub room_expiry: Option<Arc<dyn RoomExpiry>>,
}

impl Gateway {
    pub fn new(
        config: GatewayConfig,
        auth: Auth,
        bus: Arc<dyn Bus>,
        store: Arc<dyn Store>,
        readiness: Arc<dyn Readiness>,
        metrics: GatewayMetrics,
        exporter: Exporter,
    ) -> Gateway {
        let r = &config.rate_limits;
        let limiters = Limiters {
            ops: RateLimiter::new(r.ops_per_sec, r.ops_burst),
            cursors: RateLimiter::new(r.cursors_per_sec, r.cursors_burst),
            joins: RateLimiter::new(r.joins_per_sec, r.joins_burst),
            rooms: RateLimiter::new(r.rooms_per_min / 60.0, r.rooms_burst),
            http: RateLimiter::new(r.http_per_sec, r.http_burst),
        };
        let hub = Hub::new(bus.clone(), config.clone(), metrics.clone());
        if let Some(load) = bus.load() {
            // The cluster view shows this gateway's open connections.
            let connections = metrics.connections.clone();
            load.count_connections(config.gateway_id.clone(), move || {
                u64::try_from(connections.get()).unwrap_or(0)
            });
        }
        Gateway {
            shared: Arc::new(Shared {
                config,
                auth,
                bus,
                store,
                readiness,
                metrics,
                exporter,
                limiters,
                hub,
                closing: watch::channel(false).0,
                accepting: AtomicBool::new(true),
                next_conn: AtomicU64::new(1),
                open: watch::channel(0).0,
                room_expiry: None,
            }),
        }
    }

    /// Gives a room created with a time to live its first deadline in
    /// `expiry`, the one the room nodes sweep. For a gateway that was not
    /// cloned yet (it is, once it serves).
    pub fn with_room_expiry(mut self, expiry: Arc<dyn RoomExpiry>) -> Gateway {
        match Arc::get_mut(&mut self.shared) {
            Some(shared) => shared.room_expiry = Some(expiry),
            None => tracing::error!("room expiry set on a gateway already in use; ignored"),
        }
        self
    }

    /// Every route of the public API (with `/metrics`, unless the config
    /// says it is served elsewhere).
    pub fn router(&self) -> Router {
        http::router(self.shared.clone())
    }

    /// What a listener for metrics serves (`metrics_listen`): `/metrics`,
    /// `/healthz` and `/readyz`.
    pub fn metrics_router(&self) -> Router {
        http::metrics_router(self.shared.clone())
    }

    /// Serves on `listener` until `shutdown` resolves, then stops accepting
    /// and returns once every connection has closed — WebSockets included,
    /// which the HTTP server stops tracking once upgraded: each has had the
    /// chance to send its close frame.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        use axum::serve::ListenerExt;
        let app = self
            .router()
            .into_make_service_with_connect_info::<SocketAddr>();
        // Frames are small and latency matters more than packet count:
        // without this, an ack right after an op frame waits on Nagle.
        let listener = listener.tap_io(|stream| {
            let _ = stream.set_nodelay(true);
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await?;
        let mut open = self.shared.open.subscribe();
        let _ = open.wait_for(|n| *n == 0).await;
        Ok(())
    }

    /// The first step of a graceful stop: readiness turns 503, and every
    /// WebSocket is closed with 1001 so its client resumes elsewhere.
    pub fn begin_shutdown(&self) {
        self.shared.accepting.store(false, Ordering::SeqCst);
        self.shared.closing.send_replace(true);
    }

    /// Open WebSocket connections.
    pub fn connections(&self) -> i64 {
        self.shared.metrics.connections.get()
    }
}
