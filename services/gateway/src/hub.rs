//! Room fan-out: one bus subscription per room per gateway, shared by the
//! room's members on this gateway.
//!
//! Each room has one task that owns its members and processes, strictly in
//! order, both the room's event stream and the members' control messages
//! (attach, joined, detach). That makes the delivery rules simple to keep:
//! - a member is attached (subscribed) before its `join` is sent, and its
//!   events are buffered until its `joined` has been queued; then only ops
//!   with `seq > head` follow, and only presence events that change what
//!   its snapshot said (the stream's queued events are handled before a
//!   `joined`, so an event the room published before answering is among
//!   the buffered ones);
//! - op events are delivered in seq order with no gap and no duplicate: a
//!   duplicate (`seq ≤` the last one) is dropped, and a gap — the stream
//!   lagged, or NATS dropped a message — is filled by fetching the missing
//!   ops from the room's owner before anything newer is delivered;
//! - cursors and presence never go back to the connection that caused them;
//! - when the room's owner changed — it loaded the room afresh (it says so
//!   with `Loaded`), or the stream lagged, which includes a new owner's
//!   first event and every reconnect to the cluster — the members that have
//!   joined are re-attached to the owner, so the room's presence lists them
//!   again without their clients doing anything; a re-attach that reaches
//!   no owner (this gateway has not noticed the old one leave yet) is tried
//!   again until it lands or the member leaves;
//! - when the room is deleted (`Deleted`), every member is sent an `error`
//!   with code `not_found` for the room and leaves it, as if it had sent
//!   `leave`, and the room's task ends (a later join starts afresh).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use collab_bus::{Bus, Delivery, Subscription};
use collab_protocol::envelope::{ConnRef, RoomEvent, RoomReply, RoomRequest};
use collab_protocol::frames::{JoinedBody, PresenceEvent, UserInfo};
use collab_protocol::{
    ConnId, ErrorCode, OpEvent, ProtocolError, RoomId, Seq, ServerFrame, UserId,
};
use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::config::GatewayConfig;
use crate::metrics::GatewayMetrics;
use crate::ws::outbound::Outbound;

/// Ops fetched per request when filling a gap.
const FETCH_PAGE: u32 = 1000;
/// How long after a failed gap fetch (the owner moving or unreachable) the
/// next try starts, when no newer event triggers one first.
const CATCH_UP_RETRY: Duration = Duration::from_millis(500);
/// How long after a failed re-attach the next try starts. The owner this
/// gateway asked may be the one that just died: the room nodes and each
/// gateway notice a node leaving at slightly different moments, so a new
/// owner can announce itself here before this gateway routes to it.
const REATTACH_RETRY: Duration = Duration::from_millis(250);

/// What a member's connection does when the room drops it (it was
/// deleted): forget the room, as on `leave`, but without detaching (the
/// room's task has ended). Called from that task: it must not wait.
pub(crate) type OnRemoved = Box<dyn FnOnce() + Send + Sync>;

enum Control {
    Attach {
        conn: ConnRef,
        user: UserInfo,
        outbound: Arc<Outbound>,
        on_removed: OnRemoved,
    },
    Joined {
        conn: ConnId,
        body: Box<JoinedBody>,
    },
    Detach {
        conn: ConnId,
    },
}

struct RoomHandle {
    control: mpsc::UnboundedSender<Control>,
    members: usize,
    /// Tells this room's task from a later one of the same room.
    task: u64,
}

type Rooms = Arc<Mutex<HashMap<RoomId, RoomHandle>>>;

pub(crate) struct Hub {
    bus: Arc<dyn Bus>,
    config: GatewayConfig,
    metrics: GatewayMetrics,
    rooms: Rooms,
    next_task: std::sync::atomic::AtomicU64,
}

impl Hub {
    pub fn new(bus: Arc<dyn Bus>, config: GatewayConfig, metrics: GatewayMetrics) -> Self {
        Hub {
            bus,
            config,
            metrics,
            rooms: Arc::new(Mutex::new(HashMap::new())),
            next_task: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Adds a member, subscribing to the room first if it is the room's
    /// first member here. Returns once events are being received, so the
    /// caller can send its `join` next.
    pub async fn attach(
        &self,
        room: &RoomId,
        conn: ConnRef,
        user: UserInfo,
        outbound: Arc<Outbound>,
        on_removed: OnRemoved,
    ) -> Result<(), collab_bus::BusError> {
        let mut rooms = self.rooms.lock().await;
        // The room's task ended by itself: the room was deleted, and this
        // is a join of whatever has its id now.
        if rooms.get(room).is_some_and(|h| h.control.is_closed()) {
            rooms.remove(room);
        }
        if !rooms.contains_key(room) {
            let subscription = self.bus.subscribe(room).await?;
            let (control, rx) = mpsc::unbounded_channel();
            let (reattach_failed, failed) = mpsc::unbounded_channel();
            let (ended, task_ended) = tokio::sync::oneshot::channel();
            let task = self
                .next_task
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let fanout = Fanout {
                room: room.clone(),
                bus: self.bus.clone(),
                metrics: self.metrics.clone(),
                timeout: Duration::from_secs(self.config.request_timeout_secs),
                members: HashMap::new(),
                last_seq: None,
                retry_at: None,
                reattach_failed,
                reattach_later: HashSet::new(),
                reattach_at: None,
                deleted: false,
                _ended: ended,
            };
            tokio::spawn(fanout.run(subscription, rx, failed));
            tokio::spawn(forget_when_ended(
                self.rooms.clone(),
                room.clone(),
                task,
                task_ended,
            ));
            rooms.insert(
                room.clone(),
                RoomHandle {
                    control,
                    members: 0,
                    task,
                },
            );
        }
        if let Some(handle) = rooms.get_mut(room) {
            handle.members += 1;
            let _ = handle.control.send(Control::Attach {
                conn,
                user,
                outbound,
                on_removed,
            });
        }
        Ok(())
    }

    /// The member's `joined` arrived: queue it, then what was buffered.
    pub async fn joined(&self, room: &RoomId, conn: &ConnId, body: JoinedBody) {
        if let Some(handle) = self.rooms.lock().await.get(room) {
            let _ = handle.control.send(Control::Joined {
                conn: conn.clone(),
                body: Box::new(body),
            });
        }
    }

    /// Removes a member; the room's subscription ends with its last one.
    pub async fn detach(&self, room: &RoomId, conn: &ConnId) {
        let mut rooms = self.rooms.lock().await;
        let Some(handle) = rooms.get_mut(room) else {
            return;
        };
        let _ = handle.control.send(Control::Detach { conn: conn.clone() });
        handle.members = handle.members.saturating_sub(1);
        if handle.members == 0 {
            // Dropping the sender ends the task, which drops the subscription.
            rooms.remove(room);
        }
    }
}

/// Takes a room's task out of the map once it ended by itself (its room
/// was deleted), unless a later task of the room replaced it there.
async fn forget_when_ended(
    rooms: Rooms,
    room: RoomId,
    task: u64,
    ended: tokio::sync::oneshot::Receiver<()>,
) {
    let _ = ended.await;
    let mut rooms = rooms.lock().await;
    if rooms.get(&room).is_some_and(|h| h.task == task) {
        rooms.remove(&room);
    }
}

enum Phase {
    /// Attached, `joined` not yet queued: events wait here.
    Pending(Vec<Arc<RoomEvent>>),
    /// Receiving ops after `head`.
    Live { head: Seq },
}

struct Member {
    conn: ConnRef,
    user: UserInfo,
    outbound: Arc<Outbound>,
    phase: Phase,
    on_removed: OnRemoved,
}

struct Fanout {
    room: RoomId,
    bus: Arc<dyn Bus>,
    metrics: GatewayMetrics,
    timeout: Duration,
    members: HashMap<ConnId, Member>,
    /// The newest op seen on the stream (after gap filling).
    last_seq: Option<Seq>,
    /// When to try again to catch up, after a fetch failed.
    retry_at: Option<Instant>,
    /// Where a re-attach that did not reach the owner reports its member.
    reattach_failed: mpsc::UnboundedSender<ConnId>,
    /// Members whose re-attach failed, and when to try them again.
    reattach_later: HashSet<ConnId>,
    reattach_at: Option<Instant>,
    /// The room was deleted: the task ends.
    deleted: bool,
    /// Dropped when the task ends, which the hub awaits.
    _ended: tokio::sync::oneshot::Sender<()>,
}

impl Fanout {
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
                outbound,
                on_removed,
            } => {
                self.members.insert(
                    conn.conn.clone(),
                    Member {
                        conn,
                        user,
                        outbound,
                        phase: Phase::Pending(Vec::new()),
                        on_removed,
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
        for event in buffered {
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
            self.deliver_to(&conn, &event).await;
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
            (member.on_removed)();
        }
        self.reattach_later.clear();
        self.deleted = true;
    }

    /// Fetches the ops after `last_seq` (up to `until`, or as far as the
    /// owner has) and delivers them.
    async fn catch_up(&mut self, until: Option<Seq>) {
        let Some(mut after) = self.last_seq else {
            return;
        };
        self.metrics.gaps_fetched.inc();
        loop {
            if until.is_some_and(|u| after >= u) {
                break;
            }
            let ops = match self.fetch(after).await {
                Some(ops) if !ops.is_empty() => ops,
                Some(_) => break,
                None => {
                    // Members may be missing ops: try again soon even if
                    // the room stays quiet.
                    self.schedule_retry();
                    break;
                }
            };
            for op in ops {
                if until.is_some_and(|u| op.seq > u) || op.seq <= after {
                    continue;
                }
                after = op.seq;
                self.last_seq = Some(op.seq);
                self.deliver_all(&Arc::new(RoomEvent::Op(op))).await;
            }
        }
    }

    async fn fetch(&self, after: Seq) -> Option<Vec<OpEvent>> {
        let request = RoomRequest::Fetch {
            room: self.room.clone(),
            after,
            limit: FETCH_PAGE,
        };
        match self.bus.request(request, self.timeout).await {
            Ok(RoomReply::Ops { ops }) => Some(ops),
            other => {
                warn!(room = %self.room, reply = ?other, "gap fetch failed");
                None
            }
        }
    }

    fn schedule_retry(&mut self) {
        self.retry_at
            .get_or_insert_with(|| Instant::now() + CATCH_UP_RETRY);
    }

    /// Brings every member that is behind the stream up to it.
    async fn fill_members(&mut self) {
        let Some(last) = self.last_seq else {
            return;
        };
        let behind: Vec<(ConnId, Seq)> = self
            .members
            .iter()
            .filter_map(|(conn, member)| match member.phase {
                Phase::Live { head } if head < last => Some((conn.clone(), head)),
                _ => None,
            })
            .collect();
        for (conn, head) in behind {
            self.fill_member(&conn, head, last).await;
        }
    }

    /// Brings one member from `head` up to `last`.
    async fn fill_member(&mut self, conn: &ConnId, head: Seq, last: Seq) {
        let mut after = head;
        while after < last {
            let Some(ops) = self.fetch(after).await else {
                self.schedule_retry();
                return;
            };
            let Some(end) = ops.last().map(|op| op.seq) else {
                return;
            };
            for op in ops.into_iter().filter(|op| op.seq <= last) {
                self.deliver_to(conn, &Arc::new(RoomEvent::Op(op))).await;
            }
            after = end;
        }
    }

    async fn deliver_all(&mut self, event: &Arc<RoomEvent>) {
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

    async fn deliver_to(&mut self, conn: &ConnId, event: &Arc<RoomEvent>) {
        let Some(frame) = frame_of(event) else {
            return;
        };
        let cursor_key = self.cursor_key(event);
        let Some(member) = self.members.get_mut(conn) else {
            return;
        };
        if let Some(head) = offer(member, event, &frame, cursor_key.as_ref()) {
            self.fill_then_deliver(conn, head, event, &frame).await;
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

    /// A live member at `head` was offered the op `event` past a gap: fills
    /// the gap, then delivers the op, or leaves both to the retry when the
    /// owner cannot be reached (never delivering past a gap).
    async fn fill_then_deliver(
        &mut self,
        conn: &ConnId,
        head: Seq,
        event: &Arc<RoomEvent>,
        frame: &Utf8Bytes,
    ) {
        let RoomEvent::Op(op) = event.as_ref() else {
            return;
        };
        let seq = op.seq;
        Box::pin(self.fill_member(conn, head, Seq(seq.get() - 1))).await;
        let Some(member) = self.members.get_mut(conn) else {
            return;
        };
        let filled = matches!(member.phase,
            Phase::Live { head } if head.get() + 1 >= seq.get());
        if !filled {
            self.schedule_retry();
            return;
        }
        member.outbound.push(frame.clone());
        member.phase = Phase::Live { head: seq };
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
                buffer.push(event.clone());
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
        RoomEvent::Loaded { .. } | RoomEvent::Deleted { .. } => {}
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
        RoomEvent::Loaded { .. } | RoomEvent::Deleted { .. } => return None,
    };
    Some(Utf8Bytes::from(frame.to_json()))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use collab_bus::{BusError, EventStream, ReplyFuture, RequestHandler};
    use collab_protocol::{Epoch, Op, RoomKind, UserId};
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::ws::outbound::Next;

    fn room() -> RoomId {
        RoomId::parse("room1").expect("id")
    }

    fn op(seq: u64) -> OpEvent {
        OpEvent {
            room: room(),
            seq: Seq(seq),
            user: UserId::parse("ann").expect("id"),
            ts: 1,
            cid: None,
            op: Op::Message {
                text: format!("m{seq}"),
            },
        }
    }

    /// A room stream the test feeds, and an owner whose fetches fail while
    /// `failing_fetches` lasts and then answer from a log of ops 1..=10,
    /// and whose attaches fail while `failing_attaches` lasts.
    struct ScriptedBus {
        stream: StdMutex<Option<mpsc::UnboundedReceiver<Delivery>>>,
        failing_fetches: AtomicUsize,
        failing_attaches: AtomicUsize,
        /// Attach requests made, failed or not.
        attaches: AtomicUsize,
    }

    /// Counts one down unless it is zero: whether there was one to take.
    fn take_one(count: &AtomicUsize) -> bool {
        count
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    struct ChannelStream(mpsc::UnboundedReceiver<Delivery>);

    #[async_trait]
    impl EventStream for ChannelStream {
        async fn next(&mut self) -> Option<Delivery> {
            self.0.recv().await
        }
    }

    #[async_trait]
    impl Bus for ScriptedBus {
        fn request(
            &self,
            request: RoomRequest,
            _timeout: Duration,
        ) -> ReplyFuture<Result<RoomReply, BusError>> {
            let reply = match request {
                RoomRequest::Fetch { after, .. } => {
                    if take_one(&self.failing_fetches) {
                        Err(BusError::NoOwner)
                    } else {
                        let ops = (after.get() + 1..=10).map(op).collect();
                        Ok(RoomReply::Ops { ops })
                    }
                }
                RoomRequest::Attach { .. } => {
                    self.attaches.fetch_add(1, Ordering::SeqCst);
                    if take_one(&self.failing_attaches) {
                        Err(BusError::NoOwner)
                    } else {
                        Ok(RoomReply::Done)
                    }
                }
                _ => Ok(RoomReply::Done),
            };
            Box::pin(async move { reply })
        }
        fn publish(&self, _event: RoomEvent) {}
        async fn subscribe(&self, _room: &RoomId) -> Result<Subscription, BusError> {
            let stream = self
                .stream
                .lock()
                .expect("lock")
                .take()
                .ok_or(BusError::Closed)?;
            Ok(Subscription::new(Box::new(ChannelStream(stream))))
        }
        async fn serve(&self, _handler: Arc<dyn RequestHandler>) -> Result<(), BusError> {
            Ok(())
        }
        fn is_ready(&self) -> bool {
            true
        }
    }

    fn user(id: &str) -> UserInfo {
        UserInfo {
            id: UserId::parse(id).expect("id"),
            name: id.into(),
            color: "#123456".into(),
        }
    }

    /// A hub on a scripted bus with `user_id` attached (its join on its way)
    /// as connection `g1-1`: the room stream to feed, the bus, the hub, the
    /// member's queue and its connection.
    async fn attached(
        user_id: &str,
    ) -> (
        mpsc::UnboundedSender<Delivery>,
        Arc<ScriptedBus>,
        Hub,
        Arc<Outbound>,
        ConnRef,
    ) {
        let (events, stream) = mpsc::unbounded_channel();
        let bus = Arc::new(ScriptedBus {
            stream: StdMutex::new(Some(stream)),
            failing_fetches: AtomicUsize::new(0),
            failing_attaches: AtomicUsize::new(0),
            attaches: AtomicUsize::new(0),
        });
        let hub = Hub::new(
            bus.clone(),
            GatewayConfig::default(),
            GatewayMetrics::register(&mut Registry::default()),
        );
        let outbound = Arc::new(Outbound::new(100));
        let conn = ConnRef {
            gateway: "g1".into(),
            conn: ConnId::parse("g1-1").expect("id"),
        };
        hub.attach(
            &room(),
            conn.clone(),
            user(user_id),
            outbound.clone(),
            Box::new(|| {}),
        )
        .await
        .expect("attached");
        (events, bus, hub, outbound, conn)
    }

    async fn next_frame(outbound: &Outbound) -> serde_json::Value {
        let next = tokio::time::timeout(Duration::from_secs(30), outbound.next())
            .await
            .expect("a frame");
        let Next::Frame(frame) = next else {
            panic!("closed");
        };
        serde_json::from_str(frame.as_str()).expect("json")
    }

    async fn next_seq(outbound: &Outbound) -> Option<u64> {
        next_frame(outbound).await["seq"].as_u64()
    }

    #[tokio::test(start_paused = true)]
    async fn an_op_after_a_gap_that_cannot_be_filled_yet_waits_for_the_ops_before_it() {
        let (events, bus, hub, outbound, conn) = attached("ann").await;
        let body = JoinedBody {
            room: room(),
            kind: RoomKind::Channel,
            epoch: Epoch::parse("ep1").expect("id"),
            head: Seq(1),
            presence: Vec::new(),
            reset: false,
            state: None,
            ops: Some(Vec::new()),
        };
        hub.joined(&room(), &conn.conn, body).await;
        assert_eq!(next_seq(&outbound).await, None, "the joined frame");
        let send = |seq| {
            events
                .send(Delivery::Event(Arc::new(RoomEvent::Op(op(seq)))))
                .expect("stream open");
        };
        send(2);
        assert_eq!(next_seq(&outbound).await, Some(2));
        // 3 and 4 were lost, and the owner cannot be reached for a while
        // (the room is moving): 5 must not go out before them.
        bus.failing_fetches.store(3, Ordering::SeqCst);
        send(5);
        // Each retry comes half a second later; time is paused, so the
        // runtime skips ahead when nothing else is left to do.
        let got = [
            next_seq(&outbound).await,
            next_seq(&outbound).await,
            next_seq(&outbound).await,
        ];
        assert_eq!(got, [Some(3), Some(4), Some(5)]);
        assert_eq!(bus.failing_fetches.load(Ordering::SeqCst), 0);
    }

    /// Feeds the room stream a presence event of `id`.
    fn send_presence(events: &mpsc::UnboundedSender<Delivery>, event: PresenceEvent, id: &str) {
        let event = RoomEvent::Presence {
            room: room(),
            event,
            user: user(id),
            origin: None,
        };
        events
            .send(Delivery::Event(Arc::new(event)))
            .expect("stream open");
    }

    /// An empty board's `joined` whose snapshot lists `present`.
    fn board_joined(present: &[&str]) -> JoinedBody {
        JoinedBody {
            room: room(),
            kind: RoomKind::Board,
            epoch: Epoch::parse("ep1").expect("id"),
            head: Seq(0),
            presence: present.iter().map(|id| user(id)).collect(),
            reset: false,
            state: None,
            ops: Some(Vec::new()),
        }
    }

    /// The room published bob's arrival before it answered ann's join, but
    /// the answer reached the hub first: the event still meets ann's
    /// snapshot, which has bob, and is not shown as a second arrival.
    #[tokio::test(start_paused = true)]
    async fn presence_published_before_a_join_was_answered_is_not_repeated() {
        let (events, _bus, hub, outbound, conn) = attached("ann").await;
        let presence = |event, id| send_presence(&events, event, id);
        // Both queued before the hub runs again; it reads its control
        // messages first.
        presence(PresenceEvent::Join, "bob");
        let body = board_joined(&["ann", "bob"]);
        hub.joined(&room(), &conn.conn, body).await;
        presence(PresenceEvent::Join, "cat");
        assert_eq!(next_frame(&outbound).await["type"], "joined");
        let frame = next_frame(&outbound).await;
        assert_eq!(
            (frame["event"].as_str(), frame["user"]["id"].as_str()),
            (Some("join"), Some("cat")),
            "{frame}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn presence_buffered_during_a_join_is_not_repeated_after_the_snapshot() {
        let (events, _bus, hub, outbound, conn) = attached("ann").await;
        // While ann's join is on its way: bob arrives (the room answers the
        // join after that, so bob is in its snapshot), dan leaves (not in
        // the snapshot either way), then cat arrives after the snapshot.
        let presence = |event, id| send_presence(&events, event, id);
        presence(PresenceEvent::Join, "bob");
        presence(PresenceEvent::Leave, "dan");
        presence(PresenceEvent::Join, "cat");
        // Time is paused: this returns once every task is idle, that is
        // once the hub has buffered all three.
        tokio::time::sleep(Duration::from_millis(1)).await;
        let body = board_joined(&["ann", "bob"]);
        hub.joined(&room(), &conn.conn, body).await;
        assert_eq!(next_frame(&outbound).await["type"], "joined");
        let frame = next_frame(&outbound).await;
        assert_eq!(
            (
                frame["type"].as_str(),
                frame["event"].as_str(),
                frame["user"]["id"].as_str()
            ),
            (Some("presence"), Some("join"), Some("cat")),
            "only the change the snapshot lacks: {frame}"
        );
        assert!(
            futures_util::FutureExt::now_or_never(outbound.next()).is_none(),
            "nothing else"
        );
    }

    /// Joins `conn` with an empty board's snapshot and takes the `joined`.
    async fn join_live(hub: &Hub, outbound: &Outbound, conn: &ConnRef) {
        hub.joined(&room(), &conn.conn, board_joined(&["ann"]))
            .await;
        assert_eq!(next_frame(outbound).await["type"], "joined");
    }

    fn send_loaded(events: &mpsc::UnboundedSender<Delivery>) {
        let loaded = RoomEvent::Loaded { room: room() };
        events
            .send(Delivery::Event(Arc::new(loaded)))
            .expect("stream open");
    }

    /// Waits (on paused time) until `bus` has seen `n` attach requests.
    async fn attaches_reach(bus: &ScriptedBus, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while bus.attaches.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "{} attaches, expected {n}",
                bus.attaches.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A new owner announced itself before this gateway routes to it: the
    /// first re-attaches reach nobody, and the hub keeps trying until one
    /// lands, then stops.
    #[tokio::test(start_paused = true)]
    async fn a_reattach_that_reaches_no_owner_is_tried_again_until_it_lands() {
        let (events, bus, hub, outbound, conn) = attached("ann").await;
        join_live(&hub, &outbound, &conn).await;
        bus.failing_attaches.store(2, Ordering::SeqCst);
        send_loaded(&events);
        attaches_reach(&bus, 3).await;
        assert_eq!(bus.failing_attaches.load(Ordering::SeqCst), 0);
        // Landed: no more tries, however long the room stays quiet.
        tokio::time::sleep(REATTACH_RETRY * 20).await;
        assert_eq!(bus.attaches.load(Ordering::SeqCst), 3);
    }

    /// A member that left while its re-attach was failing is not put back.
    #[tokio::test(start_paused = true)]
    async fn a_member_that_left_is_not_reattached() {
        let (events, bus, hub, outbound, conn) = attached("ann").await;
        join_live(&hub, &outbound, &conn).await;
        // Someone else keeps the room's fan-out running here.
        let other = ConnRef {
            gateway: "g1".into(),
            conn: ConnId::parse("g1-2").expect("id"),
        };
        let other_outbound = Arc::new(Outbound::new(100));
        hub.attach(&room(), other, user("bob"), other_outbound, Box::new(|| {}))
            .await
            .expect("attached");
        bus.failing_attaches.store(usize::MAX, Ordering::SeqCst);
        send_loaded(&events);
        attaches_reach(&bus, 2).await;
        hub.detach(&room(), &conn.conn).await;
        // A retry may have been on its way as the member left.
        tokio::time::sleep(REATTACH_RETRY * 2).await;
        let after_leaving = bus.attaches.load(Ordering::SeqCst);
        tokio::time::sleep(REATTACH_RETRY * 20).await;
        assert_eq!(bus.attaches.load(Ordering::SeqCst), after_leaving);
    }

    /// A deleted room drops its members: each one, joined or still
    /// joining, hears `not_found` for the room and is let go.
    #[tokio::test(start_paused = true)]
    async fn a_deleted_room_tells_its_members_and_lets_them_go() {
        let (events, _bus, hub, outbound, conn) = attached("ann").await;
        join_live(&hub, &outbound, &conn).await;
        let removed = Arc::new(AtomicUsize::new(0));
        let joining = Arc::new(Outbound::new(100));
        let count = removed.clone();
        hub.attach(
            &room(),
            ConnRef {
                gateway: "g1".into(),
                conn: ConnId::parse("g1-2").expect("id"),
            },
            user("bob"),
            joining.clone(),
            Box::new(move || {
                count.fetch_add(1, Ordering::SeqCst);
            }),
        )
        .await
        .expect("attached");
        let deleted = RoomEvent::Deleted { room: room() };
        events
            .send(Delivery::Event(Arc::new(deleted)))
            .expect("stream open");
        for queue in [&outbound, &joining] {
            let frame = next_frame(queue).await;
            assert_eq!(
                (
                    frame["type"].as_str(),
                    frame["code"].as_str(),
                    frame["room"].as_str()
                ),
                (Some("error"), Some("not_found"), Some("room1")),
                "{frame}"
            );
        }
        assert_eq!(removed.load(Ordering::SeqCst), 1);
        // The room's task ended, and its place in the hub is free for
        // whatever room has the id next.
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(events.is_closed(), "the subscription was dropped");
        assert!(!hub.rooms.lock().await.contains_key(&room()));
        for queue in [&outbound, &joining] {
            assert!(futures_util::FutureExt::now_or_never(queue.next()).is_none());
        }
    }
}
