//! The room fan-out's delivery rules, on a scripted bus.

use std::sync::Arc;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use collab_bus::{Bus, BusError, Delivery, EventStream, ReplyFuture, RequestHandler, Subscription};
use collab_protocol::envelope::{ConnRef, RoomEvent, RoomReply, RoomRequest};
use collab_protocol::frames::{JoinedBody, PresenceEvent, UserInfo};
use collab_protocol::{ConnId, Epoch, Op, OpEvent, RoomId, RoomKind, Seq, UserId};
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Hub;
use super::fanout::REATTACH_RETRY;
use crate::config::GatewayConfig;
use crate::metrics::GatewayMetrics;
use crate::ws::outbound::{Dropped, Next, Outbound};

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
        Duration::from_secs(GatewayConfig::default().request_timeout_secs),
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
        false,
        outbound.clone(),
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
    hub.attach(&room(), other, user("bob"), false, other_outbound)
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
    let joining = Arc::new(Outbound::new(100));
    hub.attach(
        &room(),
        ConnRef {
            gateway: "g1".into(),
            conn: ConnId::parse("g1-2").expect("id"),
        },
        user("bob"),
        false,
        joining.clone(),
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
    // Each connection is told to forget the room.
    for queue in [&outbound, &joining] {
        assert_eq!(queue.take_removed(), [(room(), Dropped::RoomDeleted)]);
    }
    // The room's task ended, and its place in the hub is free for
    // whatever room has the id next.
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(events.is_closed(), "the subscription was dropped");
    assert!(!hub.rooms.lock().await.contains_key(&room()));
    for queue in [&outbound, &joining] {
        assert!(futures_util::FutureExt::now_or_never(queue.next()).is_none());
    }
}

/// A removed user's connections hear `forbidden` for the room and are let
/// go; the other members stay and keep receiving the room's events.
#[tokio::test(start_paused = true)]
async fn a_removed_user_is_told_and_let_go_while_the_others_stay() {
    let (events, _bus, hub, outbound, conn) = attached("ann").await;
    join_live(&hub, &outbound, &conn).await;
    let bob = Arc::new(Outbound::new(100));
    let bob_conn = ConnRef {
        gateway: "g1".into(),
        conn: ConnId::parse("g1-2").expect("id"),
    };
    hub.attach(&room(), bob_conn.clone(), user("bob"), false, bob.clone())
        .await
        .expect("attached");
    join_live(&hub, &bob, &bob_conn).await;
    let removed = RoomEvent::Removed {
        room: room(),
        users: vec![UserId::parse("bob").expect("id")],
    };
    events
        .send(Delivery::Event(Arc::new(removed)))
        .expect("stream open");
    let frame = next_frame(&bob).await;
    assert_eq!(
        (
            frame["type"].as_str(),
            frame["code"].as_str(),
            frame["room"].as_str()
        ),
        (Some("error"), Some("forbidden"), Some("room1")),
        "{frame}"
    );
    assert_eq!(bob.take_removed(), [(room(), Dropped::UserRemoved)]);
    // The room goes on for ann, and bob no longer hears it.
    events
        .send(Delivery::Event(Arc::new(RoomEvent::Op(op(1)))))
        .expect("stream open");
    assert_eq!(next_seq(&outbound).await, Some(1));
    assert!(outbound.take_removed().is_empty());
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(futures_util::FutureExt::now_or_never(bob.next()).is_none());
    assert!(!events.is_closed(), "the room's stream goes on");
}
