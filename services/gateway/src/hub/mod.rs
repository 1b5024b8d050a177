//! Room fan-out: one bus subscription per room per gateway, shared by the
//! room's members on this gateway.
//!
//! Three parts: the registry here ([`Hub`]: which rooms have members on
//! this gateway, and the control channel of each room's task), the
//! per-room task ([`fanout`]: members, delivery rules), and gap repair
//! ([`repair`]: fetching what the stream missed from the room's owner).
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
//!   `leave`, and the room's task ends (a later join starts afresh);
//! - when users are taken out of the room (`Removed`: kicked, or no longer
//!   members), each of their connections is sent an `error` with code
//!   `forbidden` for the room and leaves it the same way; the task goes on
//!   for the other members.

mod fanout;
mod repair;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use collab_bus::Bus;
use collab_protocol::envelope::ConnRef;
use collab_protocol::frames::{JoinedBody, UserInfo};
use collab_protocol::{ConnId, RoomId};
use tokio::sync::{Mutex, mpsc};

use crate::metrics::GatewayMetrics;
use crate::ws::outbound::Outbound;
use fanout::Fanout;

/// What a member's connection tells its room's task.
enum Control {
    Attach {
        conn: ConnRef,
        user: UserInfo,
        resume_strokes: bool,
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
    /// Tells this room's task from a later one of the same room.
    task: u64,
}

type Rooms = Arc<Mutex<HashMap<RoomId, RoomHandle>>>;

pub(crate) struct Hub {
    bus: Arc<dyn Bus>,
    /// How long a room's task waits for its owner's answers.
    timeout: Duration,
    metrics: GatewayMetrics,
    rooms: Rooms,
    next_task: std::sync::atomic::AtomicU64,
}

impl Hub {
    pub fn new(bus: Arc<dyn Bus>, timeout: Duration, metrics: GatewayMetrics) -> Self {
        Hub {
            bus,
            timeout,
            metrics,
            rooms: Arc::new(Mutex::new(HashMap::new())),
            next_task: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Adds a member, subscribing to the room first if it is the room's
    /// first member here. Returns once events are being received, so the
    /// caller can send its `join` next. `resume_strokes` is what the join
    /// asked for, repeated when the member is put back into a moved room.
    pub async fn attach(
        &self,
        room: &RoomId,
        conn: ConnRef,
        user: UserInfo,
        resume_strokes: bool,
        outbound: Arc<Outbound>,
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
            let (ended, task_ended) = tokio::sync::oneshot::channel();
            let task = self
                .next_task
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Fanout::start(
                room.clone(),
                self.bus.clone(),
                self.metrics.clone(),
                self.timeout,
                subscription,
                rx,
                ended,
            );
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
                resume_strokes,
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
