//! Room fan-out: one bus subscription per room per gateway, shared by the
//! room's members on this gateway.
//!
//! Each room has one task that owns its members and processes, strictly in
//! order, both the room's event stream and the members' control messages
//! (attach, joined, detach). That makes the delivery rules simple to keep:
//! - a member is attached (subscribed) before its `join` is sent, and its
//!   events are buffered until its `joined` has been queued; then only ops
//!   with `seq > head` follow;
//! - op events are delivered in seq order with no gap and no duplicate: a
//!   duplicate (`seq ≤` the last one) is dropped, and a gap — the stream
//!   lagged, or NATS dropped a message — is filled by fetching the missing
//!   ops from the room's owner before anything newer is delivered;
//! - cursors and presence never go back to the connection that caused them;
//! - when the room's owner changed — it loaded the room afresh (it says so
//!   with `Loaded`), or the stream lagged, which includes a new owner's
//!   first event and every reconnect to the cluster — the members that have
//!   joined are re-attached to the owner, so the room's presence lists them
//!   again without their clients doing anything.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use collab_bus::{Bus, Delivery, Subscription};
use collab_protocol::envelope::{ConnRef, RoomEvent, RoomReply, RoomRequest};
use collab_protocol::frames::{JoinedBody, UserInfo};
use collab_protocol::{ConnId, OpEvent, RoomId, Seq, ServerFrame};
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

enum Control {
    Attach {
        conn: ConnRef,
        user: UserInfo,
        outbound: Arc<Outbound>,
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
}

pub(crate) struct Hub {
    bus: Arc<dyn Bus>,
    config: GatewayConfig,
    metrics: GatewayMetrics,
    rooms: Mutex<HashMap<RoomId, RoomHandle>>,
}

impl Hub {
    pub fn new(bus: Arc<dyn Bus>, config: GatewayConfig, metrics: GatewayMetrics) -> Self {
        Hub {
            bus,
            config,
            metrics,
            rooms: Mutex::new(HashMap::new()),
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
    ) -> Result<(), collab_bus::BusError> {
        let mut rooms = self.rooms.lock().await;
        if !rooms.contains_key(room) {
            let subscription = self.bus.subscribe(room).await?;
            let (control, rx) = mpsc::unbounded_channel();
            let fanout = Fanout {
                room: room.clone(),
                bus: self.bus.clone(),
                metrics: self.metrics.clone(),
                timeout: Duration::from_secs(self.config.request_timeout_secs),
                members: HashMap::new(),
                last_seq: None,
                retry_at: None,
            };
            tokio::spawn(fanout.run(subscription, rx));
            rooms.insert(
                room.clone(),
                RoomHandle {
                    control,
                    members: 0,
                },
            );
        }
        if let Some(handle) = rooms.get_mut(room) {
            handle.members += 1;
            let _ = handle.control.send(Control::Attach {
                conn,
                user,
                outbound,
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
}

impl Fanout {
    async fn run(
        mut self,
        mut subscription: Subscription,
        mut control: mpsc::UnboundedReceiver<Control>,
    ) {
        loop {
            let retry_at = self.retry_at;
            tokio::select! {
                // Control first: an attach must take effect before events
                // that follow it.
                biased;
                message = control.recv() => match message {
                    Some(message) => self.on_control(message).await,
                    None => break,
                },
                delivery = subscription.next() => match delivery {
                    Some(Delivery::Event(event)) => self.on_event(event).await,
                    Some(Delivery::Lagged) => {
                        debug!(room = %self.room, "room stream lagged; catching up");
                        self.reattach_members();
                        self.catch_up(None).await;
                    }
                    None => break,
                },
                () = sleep_until(retry_at) => {
                    self.retry_at = None;
                    self.catch_up(None).await;
                }
            }
        }
    }

    async fn on_control(&mut self, message: Control) {
        match message {
            Control::Attach {
                conn,
                user,
                outbound,
            } => {
                self.members.insert(
                    conn.conn.clone(),
                    Member {
                        conn,
                        user,
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
        let frame = Utf8Bytes::from(ServerFrame::Joined(body).to_json());
        member.outbound.push_uncounted(frame);
        let buffered = match std::mem::replace(&mut member.phase, Phase::Live { head }) {
            Phase::Pending(buffered) => buffered,
            // A re-join: a fresh `joined`, then ops after its head.
            Phase::Live { .. } => Vec::new(),
        };
        let last = self.last_seq;
        for event in buffered {
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
                let request = RoomRequest::Attach {
                    room: self.room.clone(),
                    conn: member.conn.clone(),
                    user: member.user.clone(),
                };
                let reply = self.bus.request(request, self.timeout);
                tokio::spawn(async move {
                    let _ = reply.await;
                });
            }
        }
    }

    async fn on_event(&mut self, event: Arc<RoomEvent>) {
        if matches!(event.as_ref(), RoomEvent::Loaded { .. }) {
            self.reattach_members();
            return;
        }
        if let RoomEvent::Op(op) = event.as_ref() {
            match self.last_seq {
                Some(last) if op.seq <= last => return, // duplicate
                Some(last) if op.seq.get() > last.get() + 1 => {
                    self.catch_up(Some(Seq(op.seq.get() - 1))).await;
                    if self.last_seq.is_some_and(|l| op.seq <= l) {
                        return;
                    }
                }
                _ => {}
            }
            self.last_seq = Some(op.seq);
        }
        self.deliver_all(&event).await;
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
                    self.retry_at = Some(Instant::now() + CATCH_UP_RETRY);
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

    /// Brings one member from `head` up to `last`.
    async fn fill_member(&mut self, conn: &ConnId, head: Seq, last: Seq) {
        let mut after = head;
        while after < last {
            let Some(ops) = self.fetch(after).await else {
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
        let conns: Vec<ConnId> = self.members.keys().cloned().collect();
        for conn in conns {
            self.deliver_frame(&conn, event, &frame).await;
        }
    }

    async fn deliver_to(&mut self, conn: &ConnId, event: &Arc<RoomEvent>) {
        let Some(frame) = frame_of(event) else {
            return;
        };
        self.deliver_frame(conn, event, &frame).await;
    }

    async fn deliver_frame(&mut self, conn: &ConnId, event: &Arc<RoomEvent>, frame: &Utf8Bytes) {
        let Some(member) = self.members.get_mut(conn) else {
            return;
        };
        let head = match &mut member.phase {
            Phase::Pending(buffer) => {
                if !matches!(event.as_ref(), RoomEvent::Cursor { .. }) {
                    buffer.push(event.clone());
                }
                return;
            }
            Phase::Live { head } => *head,
        };
        match event.as_ref() {
            RoomEvent::Op(op) => {
                if op.seq <= head {
                    return;
                }
                if op.seq.get() > head.get() + 1 {
                    // Only possible for a member attached mid-stream.
                    let (conn, seq) = (conn.clone(), op.seq);
                    Box::pin(self.fill_member(&conn, head, Seq(seq.get() - 1))).await;
                    let Some(member) = self.members.get_mut(&conn) else {
                        return;
                    };
                    member.outbound.push(frame.clone());
                    member.phase = Phase::Live { head: seq };
                    return;
                }
                member.outbound.push(frame.clone());
                member.phase = Phase::Live { head: op.seq };
            }
            RoomEvent::Presence { origin, .. } => {
                if origin.as_ref() != Some(&member.conn) {
                    member.outbound.push(frame.clone());
                }
            }
            RoomEvent::Cursor { origin, user, .. } => {
                if origin != &member.conn {
                    member
                        .outbound
                        .push_cursor(format!("{}/{user}", self.room), frame.clone());
                }
            }
            RoomEvent::CursorLeave { origin, user, .. } => {
                if origin != &member.conn {
                    // Replaces a pending move: the pointer is gone.
                    member
                        .outbound
                        .push_cursor(format!("{}/{user}", self.room), frame.clone());
                }
            }
            RoomEvent::Loaded { .. } => {}
        }
    }
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
        RoomEvent::Loaded { .. } => return None,
    };
    Some(Utf8Bytes::from(frame.to_json()))
}
