//! What a connection does with each client frame, and with each reply it
//! waited for. A new kind of frame is an arm of [`Connection::on_text`] and
//! a method here; a request whose answer matters is an [`Awaited`] variant
//! and an arm of [`Connection::on_reply`].

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use collab_bus::BusError;
use collab_protocol::envelope::{RoomEvent, RoomReply, RoomRequest};
use collab_protocol::frames::decode_client_frame;
use collab_protocol::validate::check_cursor;
use collab_protocol::{Cid, ClientFrame, Epoch, ErrorCode, Op, ProtocolError, RoomId, ServerFrame};
use tokio::time::Instant;
use tracing::debug;

use crate::error::room_reply_error;

use super::close::Close;
use super::connection::{Awaited, Awaiting, Connection, Membership};
use super::outbound::Dropped;

impl Connection {
    pub(super) async fn on_text(&mut self, text: &str) {
        let frame = match decode_client_frame(text) {
            Ok(frame) => frame,
            Err(e) => {
                self.cx.metrics.error(e.error.code);
                self.send(&ServerFrame::from_decode_error(&e));
                return;
            }
        };
        match frame {
            ClientFrame::Ping { id } => self.send(&ServerFrame::Pong { id }),
            // Boxed: joins and leaves are rare, and their futures inline
            // would make every idle connection's future that much larger.
            ClientFrame::Join {
                room,
                since,
                epoch,
                resume_strokes,
            } => Box::pin(self.join(room, since, epoch, resume_strokes)).await,
            ClientFrame::Leave { room } => Box::pin(self.leave(room)).await,
            ClientFrame::Op { room, cid, op } => self.op(room, cid, op).await,
            ClientFrame::Cursor { room, x, y } => self.cursor(room, x, y),
            ClientFrame::CursorLeave { room } => self.cursor_leave(room),
            ClientFrame::Refresh { token } => Box::pin(self.refresh(&token)).await,
        }
    }

    pub(super) fn on_binary(&mut self) {
        let e = ProtocolError::bad_request("binary frames are not accepted; send JSON text");
        self.error(&e, None, None);
    }

    /// Handles the reply to a request the connection sent.
    pub(super) async fn on_reply(&mut self, what: Awaited, reply: Result<RoomReply, BusError>) {
        match what {
            Awaited::Join { room } => Box::pin(self.on_joined(room, reply)).await,
            Awaited::Op { room, cid, started } => self.on_ack(room, cid, started, reply),
            Awaited::Told => {}
        }
    }

    // === frames ===

    async fn join(
        &mut self,
        room: RoomId,
        since: Option<u64>,
        epoch: Option<Epoch>,
        resume_strokes: bool,
    ) {
        if !self.cx.limiters.joins.acquire(self.user.id.as_str()).await {
            let e = ProtocolError::new(ErrorCode::RateLimited, "too many joins; slow down");
            self.error(&e, Some(room.as_str()), None);
            return;
        }
        let Some(access) = self.claims.access(&room) else {
            let e = ProtocolError::forbidden("your token does not cover this room");
            self.error(&e, Some(room.as_str()), None);
            return;
        };
        let present = self.rooms.get(&room).is_some_and(|m| m.present);
        let already = self
            .rooms
            .insert(
                room.clone(),
                Membership {
                    access,
                    present,
                    resume_strokes,
                },
            )
            .is_some();
        if !already {
            // Subscribe before asking for `joined`, so no op after its head
            // can slip by.
            let attached = self
                .cx
                .hub
                .attach(
                    &room,
                    self.conn.clone(),
                    self.user.clone(),
                    resume_strokes,
                    self.outbound.clone(),
                )
                .await;
            if attached.is_err() {
                self.forget_room(&room).await;
                let e = ProtocolError::new(ErrorCode::Unavailable, "cannot subscribe; retry");
                self.error(&e, Some(room.as_str()), None);
                return;
            }
        }
        let request = RoomRequest::Join {
            room: room.clone(),
            conn: self.conn.clone(),
            user: self.user.clone(),
            since,
            epoch,
            resume_strokes,
        };
        self.request(request, Awaited::Join { room });
    }

    async fn leave(&mut self, room: RoomId) {
        if !self.forget_room(&room).await {
            let e = ProtocolError::bad_request("not joined to this room");
            self.error(&e, Some(room.as_str()), None);
            return;
        }
        self.tell_room_left(room);
    }

    async fn op(&mut self, room: RoomId, cid: Cid, op: Op) {
        self.cx.metrics.op(op.kind());
        let Some(access) = self.access_in(&room) else {
            let e = ProtocolError::bad_request("join the room before sending ops");
            self.error(&e, Some(room.as_str()), Some(cid.as_str()));
            return;
        };
        let max = self.cx.config.max_unacked_ops;
        if self.unacked >= max {
            let e = ProtocolError::new(
                ErrorCode::RateLimited,
                format!("at most {max} ops may wait for their ack"),
            );
            self.error(&e, Some(room.as_str()), Some(cid.as_str()));
            return;
        }
        if !self.cx.limiters.ops.acquire(self.user.id.as_str()).await {
            let e = ProtocolError::new(ErrorCode::RateLimited, "too many ops; slow down");
            self.error(&e, Some(room.as_str()), Some(cid.as_str()));
            return;
        }
        self.unacked += 1;
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
        self.request(request, Awaited::Op { room, cid, started });
    }

    fn cursor(&mut self, room: RoomId, x: f64, y: f64) {
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
        if !self.cx.limiters.cursors.try_acquire(self.user.id.as_str()) {
            return;
        }
        self.cx.bus.publish(RoomEvent::Cursor {
            room,
            user: self.user.id.clone(),
            x,
            y,
            origin: self.conn.clone(),
        });
    }

    fn cursor_leave(&mut self, room: RoomId) {
        if self.access_in(&room).is_none() {
            let e = ProtocolError::bad_request("join the room first");
            self.error(&e, Some(room.as_str()), None);
            return;
        }
        self.cx.bus.publish(RoomEvent::CursorLeave {
            room,
            user: self.user.id.clone(),
            origin: self.conn.clone(),
        });
    }

    /// A new token for this connection's user. Checked as at the upgrade;
    /// refused (`unauthorized`) it changes nothing. Accepted, it is in
    /// force at once: its expiry (the loop moves its deadlines, see
    /// `token_renewed`), its access in each joined room, and the rooms it
    /// no longer covers are left with `forbidden`.
    async fn refresh(&mut self, token: &str) {
        let claims =
            match crate::auth::check_token(&self.cx.auth, &*self.cx.revocations, token).await {
                Ok(claims) => claims,
                Err(e) => {
                    let e = ProtocolError::new(
                        ErrorCode::Unauthorized,
                        format!("refresh refused: {e}; the token in force stays"),
                    );
                    self.error(&e, None, None);
                    return;
                }
            };
        if claims.sub != self.claims.sub {
            let e = ProtocolError::new(
                ErrorCode::Unauthorized,
                "refresh refused: the token is for another user; the token in force stays",
            );
            self.error(&e, None, None);
            return;
        }
        let claims = Arc::new(claims);
        self.cx
            .sockets
            .replace_claims(&self.conn.conn, claims.clone());
        self.claims = claims;
        self.token_renewed = true;
        self.cx.metrics.token_refreshes.inc();
        debug!(conn = %self.conn.conn, exp = self.claims.exp, "token refreshed");
        self.send(&ServerFrame::Refreshed {
            exp: self.claims.exp,
        });
        // A revocation announced while the token was being checked found
        // the old one listed: look again, as a new socket does.
        if self
            .cx
            .revocations
            .is_revoked(&crate::auth::token_ref(&self.claims))
            && self.outbound.close(Close::REVOKED)
        {
            self.cx.metrics.revocation_closes.inc();
        }
        let mut lost = Vec::new();
        for (room, membership) in &mut self.rooms {
            match self.claims.access(room) {
                Some(access) => membership.access = access,
                None => lost.push(room.clone()),
            }
        }
        lost.sort();
        for room in lost {
            self.forget_room(&room).await;
            self.tell_room_left(room.clone());
            let e = ProtocolError::forbidden("your new token does not cover this room; left it");
            self.error(&e, Some(room.as_str()), None);
        }
    }

    // === replies ===

    async fn on_joined(&mut self, room: RoomId, reply: Result<RoomReply, BusError>) {
        match reply {
            Ok(RoomReply::Joined(body)) => {
                self.cx.metrics.joins.inc();
                self.now_present(&room);
                self.cx.hub.joined(&room, &self.conn.conn, body).await;
            }
            other => {
                self.forget_room(&room).await;
                let e = reply_error(other);
                self.error(&e, Some(room.as_str()), None);
            }
        }
    }

    fn on_ack(
        &mut self,
        room: RoomId,
        cid: Cid,
        started: Instant,
        reply: Result<RoomReply, BusError>,
    ) {
        self.unacked = self.unacked.saturating_sub(1);
        match reply {
            Ok(RoomReply::Ack { seq }) => {
                self.cx
                    .metrics
                    .ack_latency
                    .observe(started.elapsed().as_secs_f64());
                self.send(&ServerFrame::Ack { room, cid, seq });
            }
            Ok(RoomReply::NotJoined) if self.access_in(&room).is_some() => {
                // The room restarted or moved and forgot this connection:
                // put it back first, so that the client's retry (sent
                // after it reads this error) finds it there.
                self.reattach(room.clone());
                let e = ProtocolError::new(
                    ErrorCode::Unavailable,
                    "the room restarted; retry with the same cid",
                );
                self.error(&e, Some(room.as_str()), Some(cid.as_str()));
            }
            other => {
                let e = reply_error(other);
                self.error(&e, Some(room.as_str()), Some(cid.as_str()));
            }
        }
    }

    // === rooms ===

    fn access_in(&self, room: &RoomId) -> Option<collab_protocol::Access> {
        self.rooms.get(room).map(|m| m.access)
    }

    /// The room answered `joined`: presence counts this connection there,
    /// unless it left meanwhile.
    fn now_present(&mut self, room: &RoomId) {
        if let Some(membership) = self.rooms.get_mut(room)
            && !membership.present
        {
            membership.present = true;
            self.cx.presence.joined(&self.user.id, room);
        }
    }

    /// `room` dropped this connection: forget it, as on `leave` (presence
    /// included), so that a later `join` is a new one. The room needs no
    /// `Leave` (it sent the drop). The hub needs a detach only when the
    /// user was removed: a deleted room's task has ended, and the room's
    /// next task (of a room created since under its id) must not lose a
    /// member count to this connection.
    pub(super) async fn on_removed(&mut self, room: RoomId, why: Dropped) {
        let Some(was) = self.rooms.remove(&room) else {
            return;
        };
        if was.present {
            self.cx.presence.left(&self.user.id, &room);
        }
        if why == Dropped::UserRemoved {
            self.cx.hub.detach(&room, &self.conn.conn).await;
        }
    }

    /// Forgets a room locally (after a failed join or on leave).
    async fn forget_room(&mut self, room: &RoomId) -> bool {
        let Some(was) = self.rooms.remove(room) else {
            return false;
        };
        if was.present {
            self.cx.presence.left(&self.user.id, room);
        }
        self.cx.hub.detach(room, &self.conn.conn).await;
        true
    }

    /// The peer has been silent too long (its network may be gone without a
    /// word): its rooms count it out of their presence, and its cursor goes,
    /// while it stays joined until it speaks again or the idle timeout
    /// closes it.
    pub(super) fn go_away(&mut self) {
        debug!(conn = %self.conn.conn, "peer silent; out of presence");
        let rooms: Vec<RoomId> = self.present_rooms().collect();
        for room in rooms {
            self.cx.bus.publish(RoomEvent::CursorLeave {
                room: room.clone(),
                user: self.user.id.clone(),
                origin: self.conn.clone(),
            });
            self.cx.presence.left(&self.user.id, &room);
            let request = RoomRequest::Away {
                room,
                conn: self.conn.clone(),
            };
            self.request(request, Awaited::Told);
        }
    }

    /// The peer spoke again after [`Self::go_away`]: back into its rooms'
    /// presence (the others hear it is back).
    pub(super) fn come_back(&mut self) {
        debug!(conn = %self.conn.conn, "peer heard again; back in presence");
        let rooms: Vec<RoomId> = self.present_rooms().collect();
        for room in rooms {
            self.cx.presence.joined(&self.user.id, &room);
            self.reattach(room);
        }
    }

    fn present_rooms(&self) -> impl Iterator<Item = RoomId> + '_ {
        self.rooms
            .iter()
            .filter(|(_, m)| m.present)
            .map(|(room, _)| room.clone())
    }

    /// Leaves every room, as the connection ends. One task takes the
    /// rooms' answers, which nobody waits for.
    pub(super) async fn leave_all(&mut self) {
        let rooms: Vec<RoomId> = self.rooms.keys().cloned().collect();
        let mut told = Vec::with_capacity(rooms.len());
        for room in rooms {
            self.cx.bus.publish(RoomEvent::CursorLeave {
                room: room.clone(),
                user: self.user.id.clone(),
                origin: self.conn.clone(),
            });
            self.forget_room(&room).await;
            let reply = self.cx.bus.request(
                RoomRequest::Leave {
                    room,
                    conn: self.conn.clone(),
                    dropped: true,
                },
                self.request_timeout(),
            );
            told.push(reply);
        }
        if !told.is_empty() {
            drop(tokio::spawn(futures_util::future::join_all(told)));
        }
    }

    /// Tells the room this connection left.
    fn tell_room_left(&mut self, room: RoomId) {
        let request = RoomRequest::Leave {
            room,
            conn: self.conn.clone(),
            dropped: false,
        };
        self.request(request, Awaited::Told);
    }

    /// Puts this connection back into a room's presence (see
    /// `RoomRequest::Attach`).
    fn reattach(&mut self, room: RoomId) {
        let resume_strokes = self.rooms.get(&room).is_some_and(|m| m.resume_strokes);
        let request = RoomRequest::Attach {
            room,
            conn: self.conn.clone(),
            user: self.user.clone(),
            resume_strokes,
        };
        self.request(request, Awaited::Told);
    }

    /// Sends `request` now (so it is ordered before anything this
    /// connection sends later); its reply comes back to the loop.
    fn request(&mut self, request: RoomRequest, what: Awaited) {
        let reply = self.cx.bus.request(request, self.request_timeout());
        self.pending.push(Awaiting::new(what, reply));
    }

    fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.cx.config.request_timeout_secs.max(1))
    }

    // === frames out ===

    pub(super) fn send(&self, frame: &ServerFrame) {
        self.outbound.push(Utf8Bytes::from(frame.to_json()));
    }

    fn error(&self, error: &ProtocolError, room: Option<&str>, cid: Option<&str>) {
        self.cx.metrics.error(error.code);
        self.send(&ServerFrame::error(error, room, cid));
    }
}

/// The error to report for a reply that is not the expected one.
fn reply_error(reply: Result<RoomReply, BusError>) -> ProtocolError {
    room_reply_error(reply, "retry with the same cid")
}
