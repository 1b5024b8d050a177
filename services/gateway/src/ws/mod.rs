//! WebSocket connections: `GET /v1/ws`.
//!
//! A connection authenticates before the upgrade, gets `welcome`, and then
//! has two halves: this module's reader, which decodes and checks each
//! frame and forwards it, and a writer that drains the connection's bounded
//! [`outbound::Outbound`] queue and sends pings. Ops are sent to the room in
//! the order they were read (the bus keeps call order), and their acks come
//! back whenever the room confirms them, so a client can pipeline.

mod idle;
pub(crate) mod outbound;
mod writer;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use axum::extract::{ConnectInfo, Query, State, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use collab_bus::BusError;
use collab_protocol::envelope::{ConnRef, RoomEvent, RoomReply, RoomRequest};
use collab_protocol::frames::decode_client_frame;
use collab_protocol::validate::check_cursor;
use collab_protocol::{
    Access, Claims, ConnId, ErrorCode, ProtocolError, RoomId, ServerFrame, UserId, UserInfo,
};
use futures_util::StreamExt;
use tracing::{debug, info};

use crate::Shared;
use crate::auth::request_token;
use crate::error::ApiError;
use crate::metrics::Disconnect;
use idle::IdleTimer;
use outbound::{CLOSE_GOING_AWAY, CLOSE_REVOKED, CLOSE_TOO_BIG, CLOSE_TOO_SLOW, Outbound};

/// Read buffer of a socket, allocated for its whole life: client frames
/// are a few hundred bytes (a larger one grows the buffer while it is
/// read, in reads of this size).
const READ_BUFFER: usize = 2 * 1024;
/// Frames are written once this much is buffered (and at every flush).
const WRITE_BUFFER: usize = 4 * 1024;

/// How long a closing connection's writer may take to deliver its close
/// frame to a peer that is not reading.
const CLOSE_GRACE: Duration = Duration::from_secs(30);

/// `GET /v1/ws`: authenticates before the upgrade (401 otherwise).
pub(crate) async fn upgrade(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> Response {
    let token = request_token(&headers, query.get("token").map(String::as_str));
    let claims = match token.map(|t| shared.check_token(t)) {
        Some(Ok(claims)) => claims,
        Some(Err(e)) => {
            shared.metrics.error(ErrorCode::Unauthorized);
            return ApiError::new(ErrorCode::Unauthorized, e.to_string()).into_response();
        }
        None => {
            shared.metrics.error(ErrorCode::Unauthorized);
            return ApiError::new(ErrorCode::Unauthorized, "missing token").into_response();
        }
    };
    if UserId::parse(claims.sub.clone()).is_err() {
        return ApiError::new(ErrorCode::Unauthorized, "token has an empty sub").into_response();
    }
    if !shared.accepting.load(Ordering::SeqCst) {
        return ApiError::new(ErrorCode::Unavailable, "shutting down").into_response();
    }
    let limit = shared.config.limits.max_message_bytes;
    ws.max_message_size(limit)
        .max_frame_size(limit)
        // The library's 128 KiB default read buffer per connection would
        // dominate the memory of many mostly idle connections; frames are
        // small and the buffer grows for a large one.
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .on_upgrade(move |socket| async move {
            Connection::run(shared, claims, peer, socket).await;
        })
}

/// What the reader and the tasks waiting for replies share.
struct Connection {
    shared: Arc<Shared>,
    conn: ConnRef,
    user: UserInfo,
    claims: Arc<Claims>,
    outbound: Arc<Outbound>,
    /// Rooms joined (or joining).
    rooms: Mutex<HashMap<RoomId, Membership>>,
    unacked: AtomicUsize,
}

/// A room of a connection.
#[derive(Debug, Clone, Copy)]
struct Membership {
    /// What the token grants there.
    access: Access,
    /// The room answered `joined`, and presence counts the connection in
    /// the room (until it leaves).
    present: bool,
}

impl Connection {
    async fn run(shared: Arc<Shared>, claims: Claims, peer: SocketAddr, socket: WebSocket) {
        let n = shared.next_conn.fetch_add(1, Ordering::Relaxed);
        let Ok(conn_id) = ConnId::parse(format!("{}-{n}", shared.config.gateway_id)) else {
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
        let outbound = Arc::new(Outbound::new(shared.config.outbound_queue));
        let conn = Arc::new(Connection {
            conn: ConnRef {
                gateway: shared.config.gateway_id.clone(),
                conn: conn_id.clone(),
            },
            user: user.clone(),
            claims: Arc::new(claims),
            outbound: outbound.clone(),
            rooms: Mutex::new(HashMap::new()),
            unacked: AtomicUsize::new(0),
            shared: shared.clone(),
        });
        shared.metrics.connections.inc();
        shared.open.send_modify(|n| *n += 1);
        shared.ephemeral.presence.connected(&user.id);
        shared
            .sockets
            .add(conn_id.clone(), conn.claims.clone(), outbound.clone());
        // A revocation announced between the check at the upgrade and the
        // line above found no socket to close: look again.
        let token = crate::auth::token_ref(&conn.claims);
        if shared.ephemeral.revocations.is_revoked(&token) {
            info!(conn = %conn_id, user = %user.id, "token revoked; closing");
            outbound.close(CLOSE_REVOKED, "token revoked");
            shared.metrics.revocation_closes.inc();
        }
        debug!(conn = %conn_id, user = %user.id, %peer, "connected");
        conn.send(&ServerFrame::Welcome {
            user,
            conn: conn_id.clone(),
        });

        let (sink, stream) = socket.split();
        let ping_every = Duration::from_secs(shared.config.ping_interval_secs.max(1));
        let writer = tokio::spawn(writer::write_loop(sink, outbound.clone(), ping_every));
        let ended = conn.clone().read_loop(stream).await;

        // The peer is gone or being closed: leave its rooms now, whatever
        // the writer still has to deliver.
        conn.leave_all().await;
        if !outbound.is_closing() {
            outbound.close(CLOSE_GOING_AWAY, "bye");
        }
        let mut writer = writer;
        if tokio::time::timeout(CLOSE_GRACE, &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
        // The writer dropped the sending half if it finished; after an
        // abort the outbound still holds it, and the hub may hold the
        // outbound a little longer: close the socket now.
        outbound.detach();
        // Too slow wins over whatever ended the reader: once the queue
        // overflowed, the connection was lost to it.
        let ended = if outbound.close_code() == Some(CLOSE_TOO_SLOW) {
            shared.metrics.slow_closes.inc();
            info!(conn = %conn_id, "closed: too slow to read what it was sent");
            Disconnect::Slow
        } else {
            ended
        };
        shared.metrics.disconnect(ended);
        shared.sockets.remove(&conn_id);
        shared.ephemeral.presence.disconnected(&conn.user.id);
        shared.metrics.connections.dec();
        shared.open.send_modify(|n| *n -= 1);
        debug!(conn = %conn_id, reason = ended.as_str(), "disconnected");
    }

    /// Reads and handles the client's frames until the connection ends;
    /// returns why it did.
    async fn read_loop(
        self: Arc<Self>,
        mut stream: futures_util::stream::SplitStream<WebSocket>,
    ) -> Disconnect {
        let idle = Duration::from_secs(self.shared.config.idle_timeout_secs.max(1));
        let mut closing = self.shared.closing.subscribe();
        if *closing.borrow() {
            self.outbound.close(CLOSE_GOING_AWAY, "server going away");
            return Disconnect::Shutdown;
        }
        // The token's expiry ends the connection (4001), like a revocation.
        let expires_in = self.claims.exp.saturating_sub(crate::auth::now_secs());
        let expiry = tokio::time::sleep(Duration::from_secs(expires_in));
        let mut idle = IdleTimer::new(idle);
        // Built once: each `closing()` call subscribes anew.
        let server_closing = closing.wait_for(|c| *c);
        let outbound_closing = self.outbound.closing();
        tokio::pin!(expiry, server_closing, outbound_closing);
        loop {
            let message = tokio::select! {
                _ = &mut expiry => {
                    self.outbound.close(CLOSE_REVOKED, "token expired");
                    return Disconnect::Expired;
                }
                message = stream.next() => message,
                () = idle.expired() => {
                    info!(conn = %self.conn.conn, "peer silent; closing");
                    self.outbound.close(CLOSE_GOING_AWAY, "idle");
                    return Disconnect::Idle;
                }
                _ = &mut server_closing => {
                    self.outbound.close(CLOSE_GOING_AWAY, "server going away");
                    return Disconnect::Shutdown;
                }
                _ = &mut outbound_closing => return self.closed_by_outbound(),
            };
            idle.touch();
            match message {
                None | Some(Ok(Message::Close(_))) => return Disconnect::Client,
                Some(Ok(Message::Text(text))) => self.on_text(text.as_str()).await,
                Some(Ok(Message::Binary(_))) => self.error(
                    &ProtocolError::bad_request("binary frames are not accepted; send JSON text"),
                    None,
                    None,
                ),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Err(e)) => {
                    let text = e.to_string();
                    debug!(conn = %self.conn.conn, error = %text, "read failed");
                    // The only read error worth a word to the peer: it sent
                    // a message over the limit.
                    if text.contains("Space limit exceeded") || text.contains("too long") {
                        self.outbound.close(CLOSE_TOO_BIG, "message too big");
                        return Disconnect::TooBig;
                    }
                    return Disconnect::Error;
                }
            }
        }
    }

    /// Why the connection ended when something other than the reader
    /// closed its outbound queue: the queue overflowed (4008), or a write
    /// to the socket failed (1001).
    fn closed_by_outbound(&self) -> Disconnect {
        match self.outbound.close_code() {
            Some(CLOSE_TOO_SLOW) => Disconnect::Slow,
            Some(CLOSE_REVOKED) => Disconnect::Expired,
            Some(CLOSE_TOO_BIG) => Disconnect::TooBig,
            _ => Disconnect::Error,
        }
    }

    fn send(&self, frame: &ServerFrame) {
        self.outbound.push(Utf8Bytes::from(frame.to_json()));
    }

    fn error(&self, error: &ProtocolError, room: Option<&str>, cid: Option<&str>) {
        self.shared.metrics.error(error.code);
        self.send(&ServerFrame::error(error, room, cid));
    }

    fn access_in(&self, room: &RoomId) -> Option<Access> {
        self.lock_rooms().get(room).map(|m| m.access)
    }

    fn lock_rooms(&self) -> std::sync::MutexGuard<'_, HashMap<RoomId, Membership>> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The room answered `joined`: presence counts this connection there,
    /// unless it left meanwhile.
    fn now_present(&self, room: &RoomId) {
        let mut rooms = self.lock_rooms();
        if let Some(membership) = rooms.get_mut(room)
            && !membership.present
        {
            membership.present = true;
            self.shared.ephemeral.presence.joined(&self.user.id, room);
        }
    }

    async fn on_text(self: &Arc<Self>, text: &str) {
        let frame = match decode_client_frame(text) {
            Ok(frame) => frame,
            Err(e) => {
                self.shared.metrics.error(e.error.code);
                self.send(&ServerFrame::from_decode_error(&e));
                return;
            }
        };
        use collab_protocol::ClientFrame as F;
        match frame {
            F::Ping { id } => self.send(&ServerFrame::Pong { id }),
            // Boxed: joins and leaves are rare, and their futures inline
            // would make every idle connection's task that much larger.
            F::Join { room, since, epoch } => Box::pin(self.join(room, since, epoch)).await,
            F::Leave { room } => Box::pin(self.leave(room)).await,
            F::Op { room, cid, op } => self.op(room, cid, op).await,
            F::Cursor { room, x, y } => self.cursor(room, x, y),
            F::CursorLeave { room } => {
                if self.access_in(&room).is_none() {
                    let e = ProtocolError::bad_request("join the room first");
                    self.error(&e, Some(room.as_str()), None);
                    return;
                }
                self.shared.bus.publish(RoomEvent::CursorLeave {
                    room,
                    user: self.user.id.clone(),
                    origin: self.conn.clone(),
                });
            }
        }
    }

    async fn join(
        self: &Arc<Self>,
        room: RoomId,
        since: Option<u64>,
        epoch: Option<collab_protocol::Epoch>,
    ) {
        let room_str = room.as_str().to_owned();
        if !self
            .shared
            .limiters
            .joins
            .acquire(self.user.id.as_str())
            .await
        {
            let e = ProtocolError::new(ErrorCode::RateLimited, "too many joins; slow down");
            self.error(&e, Some(&room_str), None);
            return;
        }
        let Some(access) = self.claims.access(&room) else {
            let e = ProtocolError::forbidden("your token does not cover this room");
            self.error(&e, Some(&room_str), None);
            return;
        };
        let already = {
            let mut rooms = self.lock_rooms();
            let present = rooms.get(&room).is_some_and(|m| m.present);
            rooms
                .insert(room.clone(), Membership { access, present })
                .is_some()
        };
        if !already {
            // Subscribe before asking for `joined`, so no op after its head
            // can slip by.
            let attached = self
                .shared
                .hub
                .attach(
                    &room,
                    self.conn.clone(),
                    self.user.clone(),
                    self.outbound.clone(),
                    self.on_removed(&room),
                )
                .await;
            if attached.is_err() {
                self.forget_room(&room).await;
                let e = ProtocolError::new(ErrorCode::Unavailable, "cannot subscribe; retry");
                self.error(&e, Some(&room_str), None);
                return;
            }
        }
        let request = RoomRequest::Join {
            room: room.clone(),
            conn: self.conn.clone(),
            user: self.user.clone(),
            since,
            epoch,
        };
        let reply = self.shared.bus.request(request, self.request_timeout());
        let conn = self.clone();
        tokio::spawn(async move {
            match reply.await {
                Ok(RoomReply::Joined(body)) => {
                    conn.shared.metrics.joins.inc();
                    conn.now_present(&room);
                    conn.shared.hub.joined(&room, &conn.conn.conn, body).await;
                }
                other => {
                    conn.forget_room(&room).await;
                    let e = reply_error(other);
                    conn.error(&e, Some(room.as_str()), None);
                }
            }
        });
    }

    /// What to do when `room` drops this connection (it was deleted):
    /// forget it, as on `leave` (presence included), so that a later
    /// `join` is a new one. The room needs no `Leave`, and the hub no
    /// detach (the room's task ended).
    fn on_removed(self: &Arc<Self>, room: &RoomId) -> crate::hub::OnRemoved {
        let conn = Arc::downgrade(self);
        let room = room.clone();
        Box::new(move || {
            if let Some(conn) = conn.upgrade() {
                let was = conn.lock_rooms().remove(&room);
                if was.is_some_and(|m| m.present) {
                    conn.shared.ephemeral.presence.left(&conn.user.id, &room);
                }
            }
        })
    }

    /// Forgets a room locally (after a failed join or on leave).
    async fn forget_room(&self, room: &RoomId) -> bool {
        let was = self.lock_rooms().remove(room);
        if was.is_some_and(|m| m.present) {
            self.shared.ephemeral.presence.left(&self.user.id, room);
        }
        let was = was.is_some();
        if was {
            self.shared.hub.detach(room, &self.conn.conn).await;
        }
        was
    }

    async fn leave(self: &Arc<Self>, room: RoomId) {
        if !self.forget_room(&room).await {
            let e = ProtocolError::bad_request("not joined to this room");
            self.error(&e, Some(room.as_str()), None);
            return;
        }
        self.tell_room_left(room);
    }

    /// Tells the room this connection left.
    fn tell_room_left(&self, room: RoomId) {
        self.tell(RoomRequest::Leave {
            room,
            conn: self.conn.clone(),
        });
    }

    /// Sends `request` now (so it is ordered before anything this
    /// connection sends later); nothing waits for the answer.
    fn tell(&self, request: RoomRequest) {
        let reply = self.shared.bus.request(request, self.request_timeout());
        tokio::spawn(async move {
            let _ = reply.await;
        });
    }

    async fn leave_all(self: &Arc<Self>) {
        let rooms: Vec<RoomId> = self.lock_rooms().keys().cloned().collect();
        for room in rooms {
            self.shared.bus.publish(RoomEvent::CursorLeave {
                room: room.clone(),
                user: self.user.id.clone(),
                origin: self.conn.clone(),
            });
            self.forget_room(&room).await;
            self.tell_room_left(room);
        }
    }

    async fn op(
        self: &Arc<Self>,
        room: RoomId,
        cid: collab_protocol::Cid,
        op: collab_protocol::Op,
    ) {
        let (room_str, cid_str) = (room.as_str().to_owned(), cid.as_str().to_owned());
        self.shared.metrics.op(op.kind());
        let Some(access) = self.access_in(&room) else {
            let e = ProtocolError::bad_request("join the room before sending ops");
            self.error(&e, Some(&room_str), Some(&cid_str));
            return;
        };
        let max = self.shared.config.max_unacked_ops;
        if self.unacked.load(Ordering::SeqCst) >= max {
            let e = ProtocolError::new(
                ErrorCode::RateLimited,
                format!("at most {max} ops may wait for their ack"),
            );
            self.error(&e, Some(&room_str), Some(&cid_str));
            return;
        }
        if !self
            .shared
            .limiters
            .ops
            .acquire(self.user.id.as_str())
            .await
        {
            let e = ProtocolError::new(ErrorCode::RateLimited, "too many ops; slow down");
            self.error(&e, Some(&room_str), Some(&cid_str));
            return;
        }
        self.unacked.fetch_add(1, Ordering::SeqCst);
        let started = Instant::now();
        let request = RoomRequest::Op {
            room: room.clone(),
            conn: self.conn.clone(),
            user: self.user.id.clone(),
            access,
            cid: cid.clone(),
            op,
        };
        // Sent now, in read order; the ack may come later.
        let reply = self.shared.bus.request(request, self.request_timeout());
        let conn = self.clone();
        tokio::spawn(async move {
            let reply = reply.await;
            conn.unacked.fetch_sub(1, Ordering::SeqCst);
            match reply {
                Ok(RoomReply::Ack { seq }) => {
                    conn.shared
                        .metrics
                        .ack_latency
                        .observe(started.elapsed().as_secs_f64());
                    conn.send(&ServerFrame::Ack { room, cid, seq });
                }
                Ok(RoomReply::NotJoined) if conn.access_in(&room).is_some() => {
                    // The room restarted or moved and forgot this
                    // connection: put it back first, so that the client's
                    // retry (sent after it reads this error) finds it there.
                    conn.reattach(room);
                    let e = ProtocolError::new(
                        ErrorCode::Unavailable,
                        "the room restarted; retry with the same cid",
                    );
                    conn.error(&e, Some(&room_str), Some(&cid_str));
                }
                other => {
                    let e = reply_error(other);
                    conn.error(&e, Some(&room_str), Some(&cid_str));
                }
            }
        });
    }

    /// Puts this connection back into a room's presence (see
    /// `RoomRequest::Attach`).
    fn reattach(&self, room: RoomId) {
        self.tell(RoomRequest::Attach {
            room,
            conn: self.conn.clone(),
            user: self.user.clone(),
        });
    }

    fn cursor(&self, room: RoomId, x: f64, y: f64) {
        if self.access_in(&room).is_none() {
            let e = ProtocolError::bad_request("join the room first");
            self.error(&e, Some(room.as_str()), None);
            return;
        }
        if let Err(e) = check_cursor(x, y) {
            self.error(&e, Some(room.as_str()), None);
            return;
        }
        // Over the rate a move is dropped: the next one carries a newer
        // position anyway.
        if !self
            .shared
            .limiters
            .cursors
            .try_acquire(self.user.id.as_str())
        {
            return;
        }
        self.shared.bus.publish(RoomEvent::Cursor {
            room,
            user: self.user.id.clone(),
            x,
            y,
            origin: self.conn.clone(),
        });
    }

    fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.shared.config.request_timeout_secs.max(1))
    }
}

/// The error to report for a reply that is not the expected one.
fn reply_error(reply: Result<RoomReply, BusError>) -> ProtocolError {
    match reply {
        Ok(RoomReply::Error { code, message }) => ProtocolError::new(code, message),
        Ok(RoomReply::NotJoined) => ProtocolError::bad_request("join the room before sending ops"),
        Ok(other) => ProtocolError::new(ErrorCode::Internal, format!("unexpected reply {other:?}")),
        Err(BusError::Timeout) => ProtocolError::new(
            ErrorCode::Unavailable,
            "the room did not answer in time; retry with the same cid",
        ),
        Err(e) => ProtocolError::new(ErrorCode::Unavailable, format!("{e}; retry")),
    }
}
