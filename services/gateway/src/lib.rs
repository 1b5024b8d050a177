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
//! history from the store and creates rooms there (it sees only the
//! store's [`RoomCatalog`]); a room is deleted
//! by its owner, which the gateway asks over the bus.
//!
//! What every gateway of a cluster must agree on — rate limits, revoked
//! tokens, who is online — it keeps in an [`Ephemeral`]: in memory for
//! `collab serve`, in Redis for a cluster. A revocation it learns of closes
//! the sockets of the tokens it covers with 4001 ([`revoke`]).

mod admin;
mod admission;
mod auth;
mod config;
mod error;
mod http;
mod hub;
mod metrics;
mod origin;
mod presence;
mod publish;
mod revoke;
mod snapshot;
mod web;
mod ws;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::Request;
use collab_bus::Bus;
use collab_ephemeral::{Ephemeral, RoomExpiry};
use collab_metrics::Exporter;
use collab_store::RoomCatalog;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

pub use auth::{
    Auth, AuthError, AuthOptions, JWKS_ALGORITHMS, JwksError, JwksOptions, JwksSource,
    KeySetMetrics, Signer, SignerError, new_token_id, now_secs,
};
pub use config::{GatewayConfig, RateLimits};
pub use metrics::{Disconnect, GatewayMetrics};

use hub::Hub;
use revoke::Sockets;

/// A failed `accept`. A connection reset before it was accepted is its
/// client's business; anything else (out of file descriptors) would fail
/// again at once, so the next attempt waits a moment.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if !matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        tracing::error!(error = %e, "accepting a connection failed; retrying in a second");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Whatever the gateway depends on to serve (bus, store, room node).
#[async_trait]
pub trait Readiness: Send + Sync + 'static {
    async fn ready(&self) -> bool;
}

/// A running gateway; cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    /// The handles the HTTP API's handlers take.
    state: http::AppState,
    /// How long a connection may take to send a request's head.
    handshake_timeout: Duration,
    /// The shared state (kept for the gateway's life, as its handles
    /// use it), whose presence is flushed at the end of a drain.
    ephemeral: Ephemeral,
}

/// What a gateway runs on, besides its settings.
pub struct GatewayParts {
    pub auth: Auth,
    pub bus: Arc<dyn Bus>,
    /// The store's read side, and room creation: a gateway writes no op
    /// log (an `Arc<dyn Store>` coerces to it).
    pub store: Arc<dyn RoomCatalog>,
    pub readiness: Arc<dyn Readiness>,
    pub metrics: GatewayMetrics,
    /// The process's `/metrics` page and the HTTP request metrics.
    pub exporter: Exporter,
    /// Rate limits, revocations and presence: in this process, or shared
    /// with the other gateways in Redis.
    pub ephemeral: Ephemeral,
    /// Where a room created with a time to live gets its first deadline:
    /// the deadlines the room nodes sweep (`ephemeral.expiry`, where they
    /// sweep it). `None`: nowhere, so such a room expires only once it has
    /// been used.
    pub room_expiry: Option<Arc<dyn RoomExpiry>>,
}

impl Gateway {
    /// Builds the gateway and starts following revocations. Call it
    /// inside a tokio runtime.
    pub fn new(config: GatewayConfig, parts: GatewayParts) -> Gateway {
        let GatewayParts {
            auth,
            bus,
            store,
            readiness,
            metrics,
            exporter,
            ephemeral,
            room_expiry,
        } = parts;
        let limits = &config.rate_limits;
        let sockets = Arc::new(Sockets::default());
        let connections = Arc::new(ws::Connections::new(
            config.clone(),
            bus.clone(),
            Hub::new(
                bus.clone(),
                Duration::from_secs(config.request_timeout_secs),
                metrics.clone(),
            ),
            ws::ConnectionLimiters {
                ops: ephemeral.rate_limiter("ops", limits.ops()),
                cursors: ephemeral.rate_limiter("cursors", limits.cursors()),
                joins: ephemeral.rate_limiter("joins", limits.joins()),
            },
            metrics.clone(),
            ephemeral.presence.clone(),
            ephemeral.revocations.clone(),
            sockets.clone(),
            auth.clone(),
        ));
        if let Some(load) = bus.load() {
            // The cluster view shows this gateway's open connections.
            let connections = metrics.connections.clone();
            load.count_connections(config.gateway_id.clone(), move || {
                u64::try_from(connections.get()).unwrap_or(0)
            });
        }
        let revocations = ephemeral.revocations.subscribe();
        let admission = Arc::new(admission::Admission::default());
        if let Some(cut_off) = bus.cut_off() {
            // Unset: two member TTLs of the default 3 s.
            let after = match config.bus_lost_close_ms {
                0 => Duration::from_secs(6),
                ms => Duration::from_millis(ms),
            };
            tokio::spawn(admission::close_when_cut_off(
                cut_off,
                after,
                admission.clone(),
                Arc::downgrade(&sockets),
            ));
        }
        let socket_limits = Arc::new(admission::SocketLimits::new(
            config.max_sockets_per_user,
            config.max_sockets_per_address,
        ));
        let http_slots = (config.max_concurrent_requests > 0)
            .then(|| Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_requests)));
        let origins = origin::AllowedOrigins::new(&config.allowed_origins, auth.dev_mode());
        tokio::spawn(revoke::close_revoked_sockets(
            Arc::downgrade(&sockets),
            ephemeral.revocations.clone(),
            metrics.clone(),
            revocations,
        ));
        let tokens = http::Tokens {
            auth,
            revocations: ephemeral.revocations.clone(),
            http_limiter: ephemeral.rate_limiter("http", limits.http()),
            max_token_lifetime_secs: config.max_token_lifetime_secs,
        };
        let rooms = http::Rooms {
            store,
            bus: bus.clone(),
            metrics: metrics.clone(),
            presence: ephemeral.presence.clone(),
            creations: ephemeral.rate_limiter("rooms", limits.rooms()),
            ops: connections.limiters.ops.clone(),
            room_expiry,
            request_timeout_secs: config.request_timeout_secs,
            max_members_per_room: config.max_members_per_room,
            max_rooms_per_user: config.max_rooms_per_user,
            default_room_ttl_secs: config.default_room_ttl_secs,
        };
        let ops = http::Ops {
            readiness,
            admission: admission.clone(),
            metrics,
            exporter,
            bus,
            gateway_id: config.gateway_id.clone(),
            http_slots,
        };
        let entrance = ws::Entrance {
            connections,
            admission,
            origins,
            socket_limits,
        };
        Gateway {
            state: http::AppState {
                tokens: Arc::new(tokens),
                rooms: Arc::new(rooms),
                ops: Arc::new(ops),
                entrance: Arc::new(entrance),
                metrics_elsewhere: config.metrics_elsewhere,
            },
            handshake_timeout: Duration::from_secs(config.handshake_timeout_secs.max(1)),
            ephemeral,
        }
    }

    /// Every route of the public API (with `/metrics`, unless the config
    /// says it is served elsewhere).
    pub fn router(&self) -> Router {
        http::router(self.state.clone())
    }

    /// What a listener for metrics serves (`metrics_listen`): `/metrics`,
    /// `/healthz` and `/readyz`.
    pub fn metrics_router(&self) -> Router {
        http::metrics_router(self.state.clone())
    }

    /// Serves on `listener` until `shutdown` resolves, then stops accepting
    /// and returns once every connection has closed — WebSockets included,
    /// which the HTTP server stops tracking once upgraded: each has had the
    /// chance to send its close frame.
    ///
    /// A connection must deliver each request's head (request line and
    /// headers, the WebSocket upgrade's included) within
    /// `handshake_timeout_secs` of being opened or of its previous
    /// response, or it is dropped: a client that opens sockets and sends
    /// nothing, or a byte at a time, holds nothing for long.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let router = self.router();
        let handshake = self.handshake_timeout;
        // `true` once the server stops accepting; each connection then
        // finishes its request in flight and closes.
        let (stopping_tx, stopping) = watch::channel(false);
        // Every connection task holds a receiver: all of them are gone
        // once `closed` resolves.
        let (all_closed, open) = watch::channel(());
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        accept_failed(e).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            // Frames are small and latency matters more than packet count:
            // without this, an ack right after an op frame waits on Nagle.
            let _ = stream.set_nodelay(true);
            let router = router.clone();
            let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                router.clone().oneshot(request)
            });
            let mut stopping = stopping.clone();
            let open = open.clone();
            tokio::spawn(async move {
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(handshake)
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades();
                let mut conn = std::pin::pin!(conn);
                let mut draining = false;
                loop {
                    tokio::select! {
                        result = conn.as_mut() => {
                            if let Err(e) = result {
                                tracing::debug!(%peer, error = %e, "http connection ended");
                            }
                            break;
                        }
                        changed = stopping.wait_for(|stop| *stop), if !draining => {
                            draining = true;
                            if changed.is_ok() {
                                conn.as_mut().graceful_shutdown();
                            }
                        }
                    }
                }
                drop(open);
            });
        }
        drop(listener);
        stopping_tx.send_replace(true);
        drop(open);
        all_closed.closed().await;
        let mut open = self.state.entrance.connections.open.subscribe();
        let _ = open.wait_for(|n| *n == 0).await;
        Ok(())
    }

    /// The first step of a graceful stop: readiness turns 503, and every
    /// WebSocket is closed with 1001 so its client resumes elsewhere.
    pub fn begin_shutdown(&self) {
        self.state.entrance.admission.drain();
        self.state
            .entrance
            .connections
            .sockets
            .close_all(ws::close::Close::SHUTDOWN);
    }

    /// Writes what presence has not written yet (at the end of a drain,
    /// once the sockets are closed, so that the others see this gateway's
    /// users gone now rather than when its records expire).
    pub async fn flush_presence(&self) {
        if let Err(e) = self.ephemeral.presence.flush().await {
            tracing::warn!(error = %e, "presence not flushed; this gateway's records expire by themselves");
        }
    }

    /// Open WebSocket connections.
    pub fn connections(&self) -> i64 {
        self.state.ops.metrics.connections.get()
    }
}
