//! A room's task on this gateway: it owns the room's local members and
//! handles, strictly in order, the room's event stream and the members'
//! control messages, so the delivery rules (see [`super`]) hold without
//! locks. Each event is turned into its client frame once, and the same
//! bytes go to every member.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use collab_bus::{Bus, Delivery, Subscription};
use collab_protocol::envelope::{ConnRef, RoomEvent, RoomReply, RoomRequest};
use collab_protocol::frames::{JoinedBody, PresenceEvent, UserInfo};
use collab_protocol::{ConnId, ErrorCode, ProtocolError, RoomId, Seq, ServerFrame, UserId};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::debug;

use super::Control;
use crate::metrics::GatewayMetrics;
use crate::ws::outbound::{Dropped, Outbound};

/// How long after a failed re-attach the next try starts. The owner this
/// gateway asked may be the one that just died: the room nodes and each
/// gateway notice a node leaving at slightly different moments, so a new
/// owner can announce itself here before this gateway routes to it.
pub(super) const REATTACH_RETRY: Duration = Duration::from_millis(250);

pub(super) enum Phase {
    /// Attached, `joined` not yet queued: events wait here, each with its
    /// frame.
    Pending(Vec<(Arc<RoomEvent>, Utf8Bytes)>),
    /// Receiving ops after `head`.
    Live { head: Seq },
}

pub(super) struct Member {
    conn: ConnRef,
    user: UserInfo,
    resume_strokes: bool,
    pub outbound: Arc<Outbound>,
    pub phase: Phase,
}

pub(super) struct Fanout {
    pub room: RoomId,
    pub bus: Arc<dyn Bus>,
    pub metrics: GatewayMetrics,
    pub timeout: Duration,
    pub members: HashMap<ConnId, Member>,
    /// The newest op seen on the stream (after gap filling).
    pub last_seq: Option<Seq>,
    /// When to try again to catch up, after a fetch failed.
    pub retry_at: Option<Instant>,
    /// Where a re-attach that did not reach the owner reports its member.
    reattach_failed: mpsc::UnboundedSender<ConnId>,
    /// Members whose re-attach failed, and when to try them again.
    reattach_later: HashSet<ConnId>,
    reattach_at: Option<Instant>,
    /// The room was deleted: the task ends.
    deleted: bool,
    /// Dropped when the task ends, which the hub awaits.
    _ended: oneshot::Sender<()>,
}

impl Fanout {
    /// Starts a room's task on its subscription; it ends when `control`
    /// closes (the room's last member left) or the room is deleted, and
    /// then drops `ended`.
    pub fn start(
        room: RoomId,
        bus: Arc<dyn Bus>,
        metrics: GatewayMetrics,
        timeout: Duration,
        subscription: Subscription,
        control: mpsc::UnboundedReceiver<Control>,
        ended: oneshot::Sender<()>,
    ) {
        let (reattach_failed, failed) = mpsc::unbounded_channel();
        let fanout = Fanout {
            room,
            bus,
            metrics,
            timeout,
            members: HashMap::new(),
            last_seq: None,
            retry_at: None,
            reattach_failed,
            reattach_later: HashSet::new(),
            reattach_at: None,
            deleted: false,
            _ended: ended,
        };
        tokio::spawn(fanout.run(subscription, control, failed));
    }

    async fn run(
        mut self,
        mut subscription: Subscription,
        mut control: mpsc::UnboundedReceiver<Control>,
        mut reattach_failed: mpsc::UnboundedReceiver<ConnId>,
    ) {
        loop {
            let retry_at = self.retry_at;
            let reattach_at = self.reattach_at;
            tokio::select! {
                // Control first: an attach must take effect before events
                // that follow it.
                biased;
                message = control.recv() => match message {
                    Some(message) => {
                        // The room published what happened before it
                        // answered this join (a user arriving, say) ahead
                        // of the answer: those events must reach the
                        // joining member while it is still pending, where
                        // they are checked against its snapshot, not after.
                        if matches!(message, Control::Joined { .. }) {
                            while let Some(delivery) =
                                futures_util::FutureExt::now_or_never(subscription.next())
                            {
                                if !self.on_delivery(delivery).await || self.deleted {
                                    return;
                                }
                            }
                        }
                        self.on_control(message).await;
                    }
                    None => break,
                },
                delivery = subscription.next() => {
                    if !self.on_delivery(delivery).await || self.deleted {
                        break;
                    }
                }
                Some(conn) = reattach_failed.recv() => {
                    self.reattach_later.insert(conn);
                    self.reattach_at
                        .get_or_insert_with(|| Instant::now() + REATTACH_RETRY);
                }
                () = sleep_until(reattach_at) => {
                    self.reattach_at = None;
                    for conn in std::mem::take(&mut self.reattach_later) {
                        // Gone or joining again since: nothing to put back.
                        if let Some(member) = self.members.get(&conn)
                            && matches!(member.phase, Phase::Live { .. })
                        {
                            self.reattach(member);
                        }
                    }
                }
                () = sleep_until(retry_at) => {
                    self.retry_at = None;
                    self.catch_up(None).await;
                    self.fill_members().await;
                }
            }
        }
    }

    /// Handles what the room stream delivered; `false` once it ended.
    async fn on_delivery(&mut self, delivery: Option<Delivery>) -> bool {
        match delivery {
            Some(Delivery::Event(event)) => self.on_event(event).await,
            Some(Delivery::Lagged) => {
                debug!(room = %self.room, "room stream lagged; catching up");
                self.reattach_members();
                self.catch_up(None).await;
            }
            None => return false,
        }
        true
    }

    async fn on_control(&mut self, message: Control) {
        match message {
            Control::Attach {
                conn,
                user,
                resume_strokes,
                outbound,
            } => {
                self.members.insert(
                    conn.conn.clone(),
                    Member {
                        conn,
                        user,
                        resume_strokes,
                        outbound,
                        phase: Phase::Pending(Vec::new()),
                    },
                );
            }
            Control::Detach { conn } => {
                self.members.remove(&conn);
            }
            Control::Joined { conn, body } => self.on_joined(conn, *body).await,
        }
    }

    async fn on_joined(&mut self, conn: ConnId, body: JoinedBody) {
        let head = body.head;
        // The stream is behind this join: ops up to `head` were committed
        // and not seen here. Live members need them too.
        if self.last_seq.is_some_and(|last| last < head) {
            self.catch_up(Some(head)).await;
        }
        if self.last_seq.is_none() {
            self.last_seq = Some(head);
        }
        let Some(member) = self.members.get_mut(&conn) else {
            return;
        };
        // Who the member now knows is here: the snapshot, then each
        // buffered presence event that changes it.
        let mut present: HashSet<UserId> = body.presence.iter().map(|u| u.id.clone()).collect();
        let frame = Utf8Bytes::from(ServerFrame::Joined(body).to_json());
        member.outbound.push_uncounted(frame);
        let buffered = match std::mem::replace(&mut member.phase, Phase::Live { head }) {
            Phase::Pending(buffered) => buffered,
            // A re-join: a fresh `joined`, then ops after its head.
            Phase::Live { .. } => Vec::new(),
        };
        let last = self.last_seq;
        for (event, frame) in buffered {
            // A presence event buffered while the join was on its way may
            // be older than the snapshot in `joined` (the room answered the
            // join after publishing it, and this task read the reply
            // first): one that does not change what the member knows is
            // already in the snapshot, and would show a user arriving twice.
            if let RoomEvent::Presence {
                event: change,
                user,
                ..
            } = event.as_ref()
            {
                let changes = match change {
                    PresenceEvent::Join => present.insert(user.id.clone()),
                    PresenceEvent::Leave => present.remove(&user.id),
                };
                if !changes {
                    continue;
                }
            }
            self.deliver_framed(&conn, &event, &frame).await;
        }
        // Ops the stream showed before this member was attached.
        let behind = match (last, self.members.get(&conn).map(|m| &m.phase)) {
            (Some(last), Some(Phase::Live { head })) if *head < last => Some((*head, last)),
            _ => None,
        };
        if let Some((head, last)) = behind {
            self.fill_member(&conn, head, last).await;
        }
    }

    /// Puts every member that has joined back into the owner's presence
    /// (a no-op for those it still lists). Members still joining are left
    /// to their `join`.
    fn reattach_members(&self) {
        for member in self.members.values() {
            if matches!(member.phase, Phase::Live { .. }) {
                self.reattach(member);
            }
        }
    }

    /// Puts one member back into the owner's presence, and tries again
    /// later while the owner cannot be reached: a watcher sends nothing
    /// that would tell a new owner it is there.
    fn reattach(&self, member: &Member) {
        let request = RoomRequest::Attach {
            room: self.room.clone(),
            conn: member.conn.clone(),
            user: member.user.clone(),
            resume_strokes: member.resume_strokes,
        };
        let reply = self.bus.request(request, self.timeout);
        let failed = self.reattach_failed.clone();
        let conn = member.conn.conn.clone();
        tokio::spawn(async move {
            let unreached = match reply.await {
                Err(_) => true,
                Ok(RoomReply::Error { code, .. }) => code == ErrorCode::Unavailable,
                Ok(_) => false,
            };
            if unreached {
                debug!(%conn, "re-attach reached no owner; trying again");
                let _ = failed.send(conn);
            }
        });
    }

    async fn on_event(&mut self, event: Arc<RoomEvent>) {
        match event.as_ref() {
            RoomEvent::Loaded { .. } => {
                self.reattach_members();
                return;
            }
            RoomEvent::Deleted { .. } => {
                self.drop_members();
                return;
            }
            RoomEvent::Removed { users, .. } => {
                self.remove_users(users);
                return;
            }
            _ => {}
        }
        if let RoomEvent::Op(op) = event.as_ref() {
            match self.last_seq {
                Some(last) if op.seq <= last => return, // duplicate
                Some(last) if op.seq.get() > last.get() + 1 => {
                    self.catch_up(Some(Seq(op.seq.get() - 1))).await;
                    match self.last_seq {
                        Some(l) if op.seq <= l => return, // the fetch brought it
                        Some(l) if l.get() + 1 < op.seq.get() => {
                            // Still a gap (the owner could not be reached):
                            // delivering this op would skip seqs. The retry
                            // fetches it with the ones before it.
                            self.schedule_retry();
                            return;
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
            self.last_seq = Some(op.seq);
        }
        self.deliver_all(&event).await;
    }

    /// The room was deleted: every member hears `not_found` for it and
    /// leaves (its connection forgets the room), and this task ends.
    fn drop_members(&mut self) {
        let gone = ProtocolError::not_found(format!("room {} was deleted", self.room));
        let frame =
            Utf8Bytes::from(ServerFrame::error(&gone, Some(self.room.as_str()), None).to_json());
        for (_, member) in self.members.drain() {
            self.metrics.error(ErrorCode::NotFound);
            member.outbound.push(frame.clone());
            // Its connection forgets the room, as on `leave`, but without
            // detaching (this task ends).
            member
                .outbound
                .removed_from(self.room.clone(), Dropped::RoomDeleted);
        }
        self.reattach_later.clear();
        self.deleted = true;
    }

    /// Users were taken out of the room (kicked, or no longer members):
    /// each of their connections here hears `forbidden` for the room and
    /// leaves it, as on deletion; the task goes on for the others. The
    /// same event, from the room, reaches every gateway, so this is how a
    /// kick reaches the user's connections everywhere.
    fn remove_users(&mut self, users: &[UserId]) {
        let removed: Vec<ConnId> = self
            .members
            .iter()
            .filter(|(_, member)| users.contains(&member.user.id))
            .map(|(conn, _)| conn.clone())
            .collect();
        if removed.is_empty() {
            return;
        }
        let refused = ProtocolError::forbidden(format!(
            "you were removed from room {}; you may join it again only once you are a member",
            self.room
        ));
        let frame =
            Utf8Bytes::from(ServerFrame::error(&refused, Some(self.room.as_str()), None).to_json());
        for conn in removed {
            if let Some(member) = self.members.remove(&conn) {
                self.metrics.error(ErrorCode::Forbidden);
                member.outbound.push(frame.clone());
                member
                    .outbound
                    .removed_from(self.room.clone(), Dropped::UserRemoved);
            }
            self.reattach_later.remove(&conn);
        }
    }

    /// Delivers an event to every member: the one encoding of the event for
    /// this gateway, whose bytes every member's queue shares.
    pub async fn deliver_all(&mut self, event: &Arc<RoomEvent>) {
        let Some(frame) = frame_of(event) else {
            return;
        };
        let cursor_key = self.cursor_key(event);
        // The hot path: every member takes the frame in one pass, with no
        // copy of its id and no future per member. Only a member that
        // missed ops before this one waits for them (`fill_then_deliver`).
        let mut behind = Vec::new();
        for (conn, member) in &mut self.members {
            if let Some(head) = offer(member, event, &frame, cursor_key.as_ref()) {
                behind.push((conn.clone(), head));
            }
        }
        for (conn, head) in behind {
            self.fill_then_deliver(&conn, head, event, &frame).await;
        }
    }

    /// Delivers an event to one member (gap repair).
    pub async fn deliver_to(&mut self, conn: &ConnId, event: &Arc<RoomEvent>) {
        if let Some(frame) = frame_of(event) {
            self.deliver_framed(conn, event, &frame).await;
        }
    }

    /// Delivers an event already encoded as `frame` to one member.
    async fn deliver_framed(&mut self, conn: &ConnId, event: &Arc<RoomEvent>, frame: &Utf8Bytes) {
        let cursor_key = self.cursor_key(event);
        let Some(member) = self.members.get_mut(conn) else {
            return;
        };
        if let Some(head) = offer(member, event, frame, cursor_key.as_ref()) {
            self.fill_then_deliver(conn, head, event, frame).await;
        }
    }

    /// The key under which a cursor event replaces the pending one of its
    /// user in each member's queue; made once per event, not per member.
    fn cursor_key(&self, event: &RoomEvent) -> Option<Arc<str>> {
        match event {
            RoomEvent::Cursor { user, .. } | RoomEvent::CursorLeave { user, .. } => {
                Some(format!("{}/{user}", self.room).into())
            }
            _ => None,
        }
    }
}

/// Hands `event` to one member: buffered while it joins (cursors are not),
/// queued once it is live. Returns the member's head if `event` is an op
/// past a gap after it, which must wait for the ops before it
/// ([`Fanout::fill_then_deliver`]; only possible for a member attached
/// mid-stream).
fn offer(
    member: &mut Member,
    event: &Arc<RoomEvent>,
    frame: &Utf8Bytes,
    cursor_key: Option<&Arc<str>>,
) -> Option<Seq> {
    let head = match &mut member.phase {
        Phase::Pending(buffer) => {
            if !matches!(event.as_ref(), RoomEvent::Cursor { .. }) {
                buffer.push((event.clone(), frame.clone()));
            }
            return None;
        }
        Phase::Live { head } => *head,
    };
    match event.as_ref() {
        RoomEvent::Op(op) => {
            if op.seq <= head {
                return None;
            }
            if op.seq.get() > head.get() + 1 {
                return Some(head);
            }
            member.outbound.push(frame.clone());
            member.phase = Phase::Live { head: op.seq };
        }
        RoomEvent::Presence { origin, .. } => {
            if origin.as_ref() != Some(&member.conn) {
                member.outbound.push(frame.clone());
            }
        }
        // A leave replaces a pending move: the pointer is gone.
        RoomEvent::Cursor { origin, .. } | RoomEvent::CursorLeave { origin, .. } => {
            if origin != &member.conn
                && let Some(key) = cursor_key
            {
                member.outbound.push_cursor(key.clone(), frame.clone());
            }
        }
        RoomEvent::Loaded { .. } | RoomEvent::Deleted { .. } | RoomEvent::Removed { .. } => {}
    }
    None
}

/// Waits until `at`, or forever when there is nothing to wait for.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The client frame for a room event, serialized once for every member;
/// `None` for events clients never see.
fn frame_of(event: &RoomEvent) -> Option<Utf8Bytes> {
    let frame = match event {
        RoomEvent::Op(op) => ServerFrame::Op(op.clone()),
        RoomEvent::Presence {
            room, event, user, ..
        } => ServerFrame::Presence {
            room: room.clone(),
            event: *event,
            user: user.clone(),
        },
        RoomEvent::Cursor {
            room, user, x, y, ..
        } => ServerFrame::Cursor {
            room: room.clone(),
            user: user.clone(),
            x: *x,
            y: *y,
        },
        RoomEvent::CursorLeave { room, user, .. } => ServerFrame::CursorLeave {
            room: room.clone(),
            user: user.clone(),
        },
        RoomEvent::Loaded { .. } | RoomEvent::Deleted { .. } | RoomEvent::Removed { .. } => {
            return None;
        }
    };
    Some(Utf8Bytes::from(frame.to_json()))
}
