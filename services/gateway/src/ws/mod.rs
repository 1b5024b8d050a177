//! WebSocket connections: `GET /v1/ws`.
//!
//! A connection authenticates before the upgrade, gets `welcome`, and is
//! then served by one loop that owns its socket ([`connection`]): it reads
//! and handles the client's frames ([`handlers`]), waits for the rooms'
//! replies, and writes what its bounded [`outbound::Outbound`] queue holds.
//! Ops are sent to the room in the order they were read (the bus keeps call
//! order), and their acks come back whenever the room confirms them, so a
//! client can pipeline.

pub(crate) mod close;
mod connection;
mod handlers;
pub(crate) mod outbound;
mod socket;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt::Display;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ws::Message;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, Query, State, WebSocketUpgrade};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use collab_bus::Bus;
use collab_ephemeral::{ConnectionsOf, Presence, RateLimiter, Revocations};
use collab_protocol::envelope::ConnRef;
use collab_protocol::{Claims, ConnId, ErrorCode, ServerFrame, UserId, UserInfo};
use futures_util::{Sink, Stream};
use tokio::sync::watch;
use tracing::{debug, info};

use crate::admission::{Admission, Elsewhere, SocketLimits};
use crate::auth::request_token;
use crate::config::GatewayConfig;
use crate::error::ApiError;
use crate::http::Tokens;
use crate::hub::Hub;
use crate::metrics::{Disconnect, GatewayMetrics};
use crate::origin::AllowedOrigins;
use crate::revoke::Sockets;
use close::Close;
use connection::Connection;
use outbound::Outbound;

pub(crate) use connection::QUIET;

/// Read buffer of a socket, allocated for its whole life: client frames
/// are a few hundred bytes (a larger one grows the buffer while it is
/// read, in reads of this size).
const READ_BUFFER: usize = 2 * 1024;
/// Frames are written once this much is buffered (and at every flush).
const WRITE_BUFFER: usize = 4 * 1024;

/// What the WebSocket upgrade checks before it hands a socket to the
/// connections: the page's origin, whether the gateway admits clients, the
/// sockets each user and address may hold. (The token is checked by
/// [`Tokens`].)
pub(crate) struct Entrance {
    pub connections: Arc<Connections>,
    /// Whether WebSocket upgrades are taken (not while draining, nor while
    /// cut off from the cluster).
    pub admission: Arc<Admission>,
    /// The web pages that may open a WebSocket.
    pub origins: AllowedOrigins,
    /// The open WebSockets of each user and address, and their limits.
    pub socket_limits: Arc<SocketLimits>,
}

/// What the connections of a gateway share, and all they use of it.
pub(crate) struct Connections {
    pub config: GatewayConfig,
    pub bus: Arc<dyn Bus>,
    pub hub: Hub,
    pub limiters: ConnectionLimiters,
    pub metrics: GatewayMetrics,
    pub presence: Arc<dyn Presence>,
    pub revocations: Arc<dyn Revocations>,
    /// Every open WebSocket with its token, for closing revoked ones and
    /// for the drain.
    pub sockets: Arc<Sockets>,
    /// WebSocket connections whose loop is still running (including one
    /// still delivering its close frame).
    pub open: watch::Sender<usize>,
    next_conn: AtomicU64,
    /// Checks the tokens a connection presents to `refresh`, as the
    /// upgrade checks the first.
    pub auth: crate::auth::Auth,
    /// [`QUIET`], but for tests.
    pub quiet: Duration,
}

/// The per-user buckets a connection draws from.
pub(crate) struct ConnectionLimiters {
    pub ops: Arc<dyn RateLimiter>,
    pub cursors: Arc<dyn RateLimiter>,
    pub joins: Arc<dyn RateLimiter>,
}

impl Connections {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: GatewayConfig,
        bus: Arc<dyn Bus>,
        hub: Hub,
        limiters: ConnectionLimiters,
        metrics: GatewayMetrics,
        presence: Arc<dyn Presence>,
        revocations: Arc<dyn Revocations>,
        sockets: Arc<Sockets>,
        auth: crate::auth::Auth,
    ) -> Connections {
        Connections {
            config,
            bus,
            hub,
            limiters,
            metrics,
            presence,
            revocations,
            sockets,
            open: watch::channel(0).0,
            next_conn: AtomicU64::new(1),
            auth,
            quiet: QUIET,
        }
    }

    /// Serves one upgraded socket until it closes; `address`: where it
    /// comes from, if addresses' sockets are counted.
    pub async fn serve<S, E>(self: Arc<Self>, claims: Claims, address: Option<IpAddr>, socket: S)
    where
        S: Sink<Message, Error = E> + Stream<Item = Result<Message, E>> + Unpin,
        E: Display,
    {
        let mut socket = socket;
        let n = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let Ok(conn_id) = ConnId::parse(format!("{}-{n}", self.config.gateway_id)) else {
            return;
        };
        let Ok(user_id) = UserId::parse(claims.sub.clone()) else {
            return;
        };
        let user = UserInfo {
            name: claims.name.clone().unwrap_or_else(|| claims.sub.clone()),
            color: collab_protocol::color::user_color(&claims.sub),
            id: user_id,
        };
        let claims = Arc::new(claims);
        let outbound = Arc::new(Outbound::new(self.config.outbound_queue));
        self.metrics.connections.inc();
        self.open.send_modify(|n| *n += 1);
        self.presence.connected(&user.id, address);
        self.sockets
            .add(conn_id.clone(), claims.clone(), outbound.clone());
        // A revocation announced between the check at the upgrade and the
        // line above found no socket to close: look again.
        if self
            .revocations
            .is_revoked(&crate::auth::token_ref(&claims))
            && outbound.close(Close::REVOKED)
        {
            info!(conn = %conn_id, user = %user.id, "token revoked; closing");
            self.metrics.revocation_closes.inc();
        }
        debug!(conn = %conn_id, user = %user.id, "connected");
        outbound.push(axum::extract::ws::Utf8Bytes::from(
            ServerFrame::Welcome {
                user: user.clone(),
                conn: conn_id.clone(),
            }
            .to_json(),
        ));
        let conn = ConnRef {
            gateway: self.config.gateway_id.clone(),
            conn: conn_id.clone(),
        };
        let mut connection = Connection::new(self.clone(), conn, user.clone(), claims, outbound);
        let close = connection.run(&mut socket).await;
        drop(connection);
        if close.why == Disconnect::Slow {
            self.metrics.slow_closes.inc();
            info!(conn = %conn_id, "closed: too slow to read what it was sent");
        }
        self.metrics.disconnect(close.why);
        self.sockets.remove(&conn_id);
        self.presence.disconnected(&user.id, address);
        self.metrics.connections.dec();
        self.open.send_modify(|n| *n -= 1);
        debug!(conn = %conn_id, reason = close.why.as_str(), "disconnected");
    }
}

/// How long an upgrade waits for the other gateways' socket counts.
const ELSEWHERE_TIMEOUT: Duration = Duration::from_millis(500);

/// The sockets `user` and `address` have open on the other gateways of a
/// cluster, from the shared presence records (a fraction of a second old);
/// asked only of what is limited.
async fn sockets_elsewhere(entrance: &Entrance, user: &UserId, address: IpAddr) -> Elsewhere {
    let limits = &entrance.socket_limits;
    let presence = &*entrance.connections.presence;
    let (user, address) = tokio::join!(
        async {
            if limits.limits_users() {
                connections_elsewhere(presence, ConnectionsOf::User(user)).await
            } else {
                0
            }
        },
        async {
            if limits.limits_addresses() {
                connections_elsewhere(presence, ConnectionsOf::Address(address)).await
            } else {
                0
            }
        },
    );
    Elsewhere { user, address }
}

/// What the presence records say of `of` on the other gateways; 0 when
/// they cannot be read in time: Redis down never refuses a socket, and
/// each gateway then counts its own.
async fn connections_elsewhere(presence: &dyn Presence, of: ConnectionsOf<'_>) -> u32 {
    let query = presence.connections_elsewhere(of);
    match tokio::time::timeout(ELSEWHERE_TIMEOUT, query).await {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => {
            debug!(error = %e, "other gateways' sockets unknown; counting this gateway's");
            0
        }
        Err(_) => {
            debug!("other gateways' sockets not read in time; counting this gateway's");
            0
        }
    }
}

/// `GET /v1/ws`: checks the page's origin, for a browser (403 otherwise),
/// authenticates before the upgrade (401 otherwise), and takes the socket
/// only while the gateway admits clients (503 otherwise)
/// and the user and address have room for one more (429 otherwise). Each
/// refusal is counted, like every HTTP error, by the API's layer.
pub(crate) async fn upgrade(
    State(entrance): State<Arc<Entrance>>,
    State(tokens): State<Arc<Tokens>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("(not text)");
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        if !entrance.origins.allows(origin, host) {
            entrance.connections.metrics.refusal("origin");
            info!(%peer, origin, "upgrade refused: origin not allowed");
            return ApiError::new(
                ErrorCode::Forbidden,
                format!("pages from {origin} may not connect here (gateway.allowed_origins)"),
            )
            .into_response();
        }
    }
    let Some(token) = request_token(&headers, query.get("token").map(String::as_str)) else {
        return ApiError::new(ErrorCode::Unauthorized, "missing token").into_response();
    };
    let claims = match tokens.check(token).await {
        Ok(claims) => claims,
        Err(e) => {
            return ApiError::new(ErrorCode::Unauthorized, e.to_string()).into_response();
        }
    };
    let Ok(user) = UserId::parse(claims.sub.clone()) else {
        return ApiError::new(ErrorCode::Unauthorized, "token has an empty sub").into_response();
    };
    if let Some(why) = entrance.admission.refusal() {
        return ApiError::new(ErrorCode::Unavailable, why).into_response();
    }
    // An IPv4 client of a dual-stack listener is the same address as over
    // IPv4.
    let address = peer.ip().to_canonical();
    let elsewhere = sockets_elsewhere(&entrance, &user, address).await;
    // Held by the connection until it ends; dropped at once if the
    // upgrade never completes.
    let permit = match entrance
        .socket_limits
        .admit(&claims.sub, address, elsewhere)
    {
        Ok(permit) => permit,
        Err(refusal) => {
            entrance.connections.metrics.refusal(refusal.as_str());
            info!(%peer, user = %claims.sub, reason = refusal.as_str(), "upgrade refused");
            return ApiError::new(ErrorCode::RateLimited, refusal.message()).into_response();
        }
    };
    // Only now: a request that is no upgrade at all still gets the answers
    // above in the protocol's format.
    // Not an upgrade (a plain GET, a missing header): `bad_request` in
    // our format, with the status axum chose (426 Upgrade Required, 400,
    // 405), as for a wrong method anywhere.
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            let mut response = ApiError::new(
                ErrorCode::BadRequest,
                format!(
                    "this endpoint takes a WebSocket upgrade: {}",
                    rejection.body_text()
                ),
            )
            .into_response();
            *response.status_mut() = rejection.status();
            return response;
        }
    };
    // The presence records hold addresses only for the limit.
    let counted_address = entrance.socket_limits.limits_addresses().then_some(address);
    let connections = entrance.connections.clone();
    let limit = connections.config.limits.max_message_bytes;
    debug!(%peer, user = %claims.sub, "upgrading");
    ws.max_message_size(limit)
        .max_frame_size(limit)
        // The library's 128 KiB default read buffer per connection would
        // dominate the memory of many mostly idle connections; frames are
        // small and the buffer grows for a large one.
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .on_upgrade(move |socket| async move {
            connections.serve(claims, counted_address, socket).await;
            drop(permit);
        })
}
