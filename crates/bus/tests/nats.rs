//! `NatsBus` against a real nats-server (see `collab_bus::testsuite`).
//! Every test starts its own server; waits poll a condition with a deadline.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use collab_bus::testsuite::NatsServer;
use collab_bus::{
    Bus, BusError, BusMetrics, Delivery, Members, NatsBus, NatsBusConfig, ReplyFuture,
    RequestHandler, Subscription,
};
use collab_protocol::envelope::{ConnRef, RoomEvent, RoomReply, RoomRequest};
use collab_protocol::subjects::{MemberRecord, Subjects, WIRE_VERSION};
use collab_protocol::{ConnId, NodeId, RoomId, Seq, UserId};
use tokio::sync::watch;

const DEADLINE: Duration = Duration::from_secs(10);
const TTL: Duration = Duration::from_secs(1);

fn node(s: &str) -> NodeId {
    NodeId::parse(s).expect("id")
}

fn room(s: &str) -> RoomId {
    RoomId::parse(s).expect("id")
}

fn config(server: &NatsServer, id: &str) -> NatsBusConfig {
    let mut config = NatsBusConfig::new(server.url(), node(id));
    config.heartbeat_interval = Duration::from_millis(100);
    config.member_ttl = TTL;
    config.max_reconnect_delay = Duration::from_millis(100);
    config
}

async fn bus(server: &NatsServer, id: &str) -> NatsBus {
    NatsBus::connect(config(server, id))
        .await
        .expect("connects")
}

fn fetch(room_id: &str, after: u64) -> RoomRequest {
    RoomRequest::Fetch {
        room: room(room_id),
        after: Seq(after),
        limit: 1,
    }
}

fn cursor_leave(room_id: &str, n: u32) -> RoomEvent {
    RoomEvent::CursorLeave {
        room: room(room_id),
        user: UserId::parse(format!("u{n}")).expect("id"),
        origin: ConnRef {
            gateway: "gw".into(),
            conn: ConnId::parse("c").expect("id"),
        },
    }
}

fn user_of(event: &RoomEvent) -> String {
    match event {
        RoomEvent::CursorLeave { user, .. } => user.to_string(),
        other => panic!("unexpected {other:?}"),
    }
}

/// Answers `Fetch { after }` with `Ack { seq: after + offset }`, recording
/// the order requests were taken in.
struct Recorder {
    offset: u64,
    seen: Mutex<Vec<u64>>,
}

impl Recorder {
    fn new(offset: u64) -> Arc<Recorder> {
        Arc::new(Recorder {
            offset,
            seen: Mutex::new(Vec::new()),
        })
    }

    fn seen(&self) -> Vec<u64> {
        self.seen.lock().expect("lock").clone()
    }
}

impl RequestHandler for Recorder {
    fn handle(&self, request: RoomRequest) -> ReplyFuture<RoomReply> {
        let reply = match request {
            RoomRequest::Fetch { after, .. } => {
                self.seen.lock().expect("lock").push(after.get());
                RoomReply::Ack {
                    seq: Seq(after.get() + self.offset),
                }
            }
            _ => RoomReply::Done,
        };
        Box::pin(async move { reply })
    }
}

async fn until_members(
    bus: &NatsBus,
    what: &str,
    condition: impl FnMut(&Members) -> bool,
) -> Members {
    let mut members: watch::Receiver<Members> = bus.members().expect("a cluster bus");
    let found = tokio::time::timeout(DEADLINE, members.wait_for(condition))
        .await
        .ok()
        .and_then(Result::ok)
        .map(|m| m.clone());
    found.unwrap_or_else(|| {
        panic!(
            "{what}: not within {DEADLINE:?}; members {:?}",
            *members.borrow()
        )
    })
}

fn room_nodes(members: &Members) -> Vec<String> {
    members.room_nodes().map(ToString::to_string).collect()
}

async fn next(sub: &mut Subscription) -> Delivery {
    match tokio::time::timeout(DEADLINE, sub.next()).await {
        Ok(Some(delivery)) => delivery,
        Ok(None) => panic!("subscription ended"),
        Err(_) => panic!("no delivery within {DEADLINE:?}"),
    }
}

async fn next_event(sub: &mut Subscription) -> Arc<RoomEvent> {
    match next(sub).await {
        Delivery::Event(event) => event,
        Delivery::Lagged => panic!("lagged where an event was expected"),
    }
}

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await; // poll interval
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_goes_to_the_owner_and_its_reply_comes_back() {
    let server = NatsServer::start();
    let gateway = bus(&server, "gw-1").await;
    assert_eq!(
        gateway.request(fetch("r", 1), DEADLINE).await,
        Err(BusError::NoOwner),
        "no room node yet"
    );

    let room_node = bus(&server, "rn-1").await;
    room_node.serve(Recorder::new(100)).await.expect("serves");
    until_members(&gateway, "the room node is seen", |m| {
        room_nodes(m) == ["rn-1"]
    })
    .await;
    assert!(gateway.is_ready() && room_node.is_ready());
    assert_eq!(gateway.owner(&room("r")), Some(node("rn-1")));
    assert_eq!(
        gateway.request(fetch("r", 7), DEADLINE).await,
        Ok(RoomReply::Ack { seq: Seq(107) })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_of_one_caller_reach_the_owner_in_call_order() {
    let server = NatsServer::start();
    let gateway = bus(&server, "gw-1").await;
    let room_node = bus(&server, "rn-1").await;
    let recorder = Recorder::new(0);
    room_node.serve(recorder.clone()).await.expect("serves");
    until_members(&gateway, "the room node is seen", |m| {
        m.room_nodes().count() == 1
    })
    .await;

    // All sent before any reply is awaited, as a gateway forwards a burst
    // of ops from one socket.
    let n = 2_000;
    let replies: Vec<_> = (0..n)
        .map(|i| gateway.request(fetch("r", i), DEADLINE))
        .collect();
    let replies = futures_util::future::join_all(replies).await;
    for (i, reply) in replies.into_iter().enumerate() {
        assert_eq!(reply, Ok(RoomReply::Ack { seq: Seq(i as u64) }));
    }
    assert_eq!(recorder.seen(), (0..n).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_to_an_owner_that_does_not_listen_has_no_owner() {
    let server = NatsServer::start();
    let gateway = bus(&server, "gw-1").await;
    // A member record of a room node that never serves.
    let client = async_nats::connect(server.url()).await.expect("connects");
    let js = async_nats::jetstream::new(client);
    let bucket = Subjects::default().members_bucket();
    let kv = js
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket,
            history: 1,
            limit_markers: Some(TTL),
            ..Default::default()
        })
        .await
        .expect("bucket");
    let record = MemberRecord {
        room_node: true,
        gateway: false,
        ttl_ms: 60_000,
        wire: WIRE_VERSION,
        instance: String::new(),
        rooms: None,
        connections: None,
    };
    kv.put("ghost", serde_json::to_vec(&record).expect("json").into())
        .await
        .expect("put");
    until_members(&gateway, "the ghost is seen", |m| {
        room_nodes(m) == ["ghost"]
    })
    .await;
    assert_eq!(
        gateway.request(fetch("r", 1), DEADLINE).await,
        Err(BusError::NoOwner)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_only_the_gateways_subscribed_to_their_room() {
    let server = NatsServer::start();
    let owner = bus(&server, "rn-1").await;
    let gw_a = bus(&server, "gw-a").await;
    let gw_b = bus(&server, "gw-b").await;
    let mut sub_a = gw_a.subscribe(&room("a")).await.expect("subscribes");
    let mut sub_b = gw_b.subscribe(&room("b")).await.expect("subscribes");
    // The subscriptions reached the server before anything published after
    // this flush.
    for bus in [&gw_a, &gw_b] {
        bus.flush().await;
    }
    eventually("both subscriptions are registered", || {
        gw_a.is_ready() && gw_b.is_ready() && owner.is_ready()
    })
    .await;

    let raw = async_nats::connect(server.url()).await.expect("connects");
    let room_a = Subjects::default().room(&room("a"));
    // Interest exists: a request to the room subject finds a responder
    // (which never answers), so it does not fail with "no responders".
    let probe = tokio::time::timeout(
        Duration::from_millis(300),
        raw.request(room_a.clone(), "probe".into()),
    )
    .await;
    assert!(
        probe.is_err(),
        "expected the probe to wait for an answer: {probe:?}"
    );

    for i in 0..3 {
        owner.publish(cursor_leave("a", i));
    }
    owner.publish(cursor_leave("b", 9));
    for i in 0..3 {
        assert_eq!(*next_event(&mut sub_a).await, cursor_leave("a", i));
    }
    assert_eq!(*next_event(&mut sub_b).await, cursor_leave("b", 9));
    // Nothing of room b went to gateway a, nor of a to b.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), sub_a.next())
            .await
            .is_err()
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(200), sub_b.next())
            .await
            .is_err()
    );

    // The last member left: the gateway's interest is gone from the server.
    drop(sub_a);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let probe = tokio::time::timeout(
            Duration::from_millis(200),
            raw.request(room_a.clone(), "probe".into()),
        )
        .await;
        if matches!(&probe, Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "interest in room a outlived its subscription"
        );
    }
    // Gateway b's room is untouched.
    owner.publish(cursor_leave("b", 10));
    assert_eq!(*next_event(&mut sub_b).await, cursor_leave("b", 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_a_replaced_owner_are_dropped() {
    let server = NatsServer::start();
    let old_owner = bus(&server, "rn-old").await;
    let new_owner = bus(&server, "rn-new").await;
    let gateway = bus(&server, "gw-1").await;
    let mut sub = gateway.subscribe(&room("a")).await.expect("subscribes");
    // Make sure the subscription is registered before publishing.
    gateway.flush().await;
    eventually("connected", || gateway.is_ready() && old_owner.is_ready()).await;

    old_owner.publish_owned(cursor_leave("a", 1), 4);
    assert_eq!(user_of(&*next_event(&mut sub).await), "u1");
    // A new owner (higher term): the gateway catches up before its events.
    new_owner.publish_owned(cursor_leave("a", 2), 5);
    assert!(matches!(next(&mut sub).await, Delivery::Lagged));
    assert_eq!(user_of(&*next_event(&mut sub).await), "u2");
    // The old owner, still talking, is ignored; term-less events pass.
    old_owner.publish_owned(cursor_leave("a", 3), 4);
    gateway.publish(cursor_leave("a", 4));
    new_owner.publish_owned(cursor_leave("a", 5), 5);
    let mut users = vec![
        user_of(&*next_event(&mut sub).await),
        user_of(&*next_event(&mut sub).await),
    ];
    users.sort();
    assert_eq!(users, ["u4", "u5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_server_restart_subscribers_lag_and_the_bus_recovers() {
    let mut server = NatsServer::start();
    let room_node = bus(&server, "rn-1").await;
    room_node.serve(Recorder::new(0)).await.expect("serves");
    let gateway = bus(&server, "gw-1").await;
    let mut sub = gateway.subscribe(&room("a")).await.expect("subscribes");
    until_members(&gateway, "the room node is seen", |m| {
        m.room_nodes().count() == 1
    })
    .await;
    room_node.publish(cursor_leave("a", 1));
    assert_eq!(user_of(&*next_event(&mut sub).await), "u1");

    server.kill();
    eventually("both buses notice", || {
        !gateway.is_ready() && !room_node.is_ready()
    })
    .await;
    // An outage longer than the TTL: with no heartbeats heard, the room
    // node drops out of the gateway's view.
    until_members(&gateway, "the unheard room node drops out", |m| {
        m.is_empty()
    })
    .await;
    server.restart();
    eventually("both buses reconnect by themselves", || {
        gateway.is_ready() && room_node.is_ready()
    })
    .await;

    // Whatever was published meanwhile is lost to the subscriber: it is
    // told to catch up.
    assert!(matches!(next(&mut sub).await, Delivery::Lagged));
    // The subscription itself came back; publish until one arrives (the
    // publisher's own resubscription and reconnect race with ours).
    let deadline = Instant::now() + DEADLINE;
    let mut n = 100;
    loop {
        room_node.publish(cursor_leave("a", n));
        match tokio::time::timeout(Duration::from_millis(100), sub.next()).await {
            Ok(Some(Delivery::Event(event))) => {
                assert!(user_of(&event).starts_with('u'));
                break;
            }
            Ok(Some(Delivery::Lagged)) | Err(_) => {}
            Ok(None) => panic!("subscription ended"),
        }
        assert!(Instant::now() < deadline, "no event after the restart");
        n += 1;
    }
    // The members watch and the heartbeats resumed by themselves (the
    // bucket is on disk), so requests reach the owner again.
    until_members(&gateway, "the room node is back", |m| {
        room_nodes(m) == ["rn-1"]
    })
    .await;
    let deadline = Instant::now() + DEADLINE;
    loop {
        match gateway
            .request(fetch("r", 3), Duration::from_millis(500))
            .await
        {
            Ok(reply) => {
                assert_eq!(reply, RoomReply::Ack { seq: Seq(3) });
                break;
            }
            Err(_) => assert!(Instant::now() < deadline, "requests fail after the restart"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_follow_the_connection_and_the_members() {
    let mut server = NatsServer::start();
    let metrics = BusMetrics::default();
    let mut watching = config(&server, "gw-1");
    watching.gateway = true;
    watching.metrics = metrics.clone();
    let gateway = NatsBus::connect(watching).await.expect("connects");
    let members_of = |role: &'static str| {
        metrics
            .members
            .get_or_create(&collab_bus::metrics::RoleLabel { role })
            .get()
    };
    eventually("connected", || metrics.nats_connected.get() == 1).await;
    let room_node = bus(&server, "rn-1").await;
    room_node.serve(Recorder::new(0)).await.expect("serves");
    until_members(&gateway, "both members are seen", |m| m.len() == 2).await;
    assert_eq!((members_of("gateway"), members_of("room_node")), (1, 1));
    let changes = metrics.membership_changes.get();
    assert!(changes >= 1, "{changes}");
    assert_eq!(metrics.nats_reconnects.get(), 0);

    server.kill();
    eventually("the disconnection shows", || {
        metrics.nats_connected.get() == 0
    })
    .await;
    server.restart();
    eventually("the reconnection shows", || {
        metrics.nats_connected.get() == 1 && metrics.nats_reconnects.get() == 1
    })
    .await;
    // The room node leaves: one more change, one room node fewer.
    let before = metrics.membership_changes.get();
    room_node.leave().await;
    until_members(&gateway, "the room node is gone", |m| {
        m.room_nodes().count() == 0
    })
    .await;
    assert_eq!(members_of("room_node"), 0);
    assert!(metrics.membership_changes.get() > before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_heartbeating_drops_out_after_its_ttl() {
    let server = NatsServer::start();
    let observer = bus(&server, "observer").await;
    let doomed = bus(&server, "rn-doomed").await;
    doomed.serve(Recorder::new(0)).await.expect("serves");
    let mut gateway_config = config(&server, "gw-1");
    gateway_config.gateway = true;
    let gateway = NatsBus::connect(gateway_config).await.expect("connects");
    let members = until_members(&observer, "both members are seen", |m| m.len() == 2).await;
    assert_eq!(room_nodes(&members), ["rn-doomed"]);
    assert_eq!(
        members
            .gateways()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["gw-1"]
    );
    assert_eq!(observer.owner(&room("any")), Some(node("rn-doomed")));

    // A crash: no goodbye, the record just stops being renewed.
    let stopped = Instant::now();
    drop(doomed);
    assert!(
        observer
            .members()
            .expect("members")
            .borrow()
            .contains(&node("rn-doomed"))
    );
    until_members(&observer, "the dead node drops out", |m| {
        m.room_nodes().count() == 0
    })
    .await;
    let after = stopped.elapsed();
    // Not at once (its last heartbeat still stood), and not long after its
    // TTL: the server's TTL is whole seconds. The bounds leave room for a
    // busy machine delaying heartbeats and timers.
    assert!(after >= TTL / 2, "dropped out after {after:?}");
    assert!(
        after < TTL + Duration::from_secs(3),
        "dropped out after {after:?}"
    );
    assert_eq!(observer.owner(&room("any")), None);
    assert_eq!(
        observer.request(fetch("any", 1), DEADLINE).await,
        Err(BusError::NoOwner)
    );

    // A graceful leave is seen at once, well before a TTL.
    let mut long_lived = config(&server, "rn-long");
    long_lived.member_ttl = Duration::from_secs(30);
    let long_lived = NatsBus::connect(long_lived).await.expect("connects");
    long_lived.serve(Recorder::new(0)).await.expect("serves");
    until_members(&observer, "the new node is seen", |m| {
        room_nodes(m) == ["rn-long"]
    })
    .await;
    let left = Instant::now();
    long_lived.leave().await;
    until_members(&observer, "the node that left drops out", |m| {
        m.room_nodes().count() == 0
    })
    .await;
    assert!(left.elapsed() < Duration::from_secs(5));
    assert!(
        observer
            .members()
            .expect("members")
            .borrow()
            .contains(&node("gw-1"))
    );
    drop(gateway);
}

/// Answers nothing, ever: an owner that froze after taking requests in.
#[derive(Default)]
struct Silent {
    taken: std::sync::atomic::AtomicUsize,
}

impl RequestHandler for Silent {
    fn handle(&self, _request: RoomRequest) -> ReplyFuture<RoomReply> {
        self.taken.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(std::future::pending())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_waiting_on_an_owner_that_leaves_fail_at_once() {
    let server = NatsServer::start();
    let gateway = bus(&server, "gw-1").await;
    let owner = bus(&server, "rn-silent").await;
    let silent = Arc::new(Silent::default());
    owner.serve(silent.clone()).await.expect("serves");
    until_members(&gateway, "the owner is seen", |m| {
        room_nodes(m) == ["rn-silent"]
    })
    .await;
    // Far longer than the test may take: only the owner's departure can
    // end the wait.
    let waiting = gateway.request(fetch("a", 1), Duration::from_secs(3600));
    let waiting = tokio::spawn(waiting);
    eventually("the owner takes the request in", || {
        silent.taken.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    owner.leave().await;
    let outcome = tokio::time::timeout(DEADLINE, waiting)
        .await
        .expect("the request ends once its owner is gone")
        .expect("the request task ends");
    // Taken in and never answered: its outcome is unknown.
    assert_eq!(outcome, Err(BusError::Timeout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_op_of_a_replaced_owner_still_goes_through() {
    let server = NatsServer::start();
    let old_owner = bus(&server, "rn-old").await;
    let new_owner = bus(&server, "rn-new").await;
    let gateway = bus(&server, "gw-1").await;
    let mut sub = gateway.subscribe(&room("a")).await.expect("subscribes");
    gateway.flush().await;
    eventually("connected", || gateway.is_ready() && old_owner.is_ready()).await;
    new_owner.publish_owned(cursor_leave("a", 1), 5);
    assert_eq!(user_of(&*next_event(&mut sub).await), "u1");
    // A committed op is true whoever publishes it (the store fences
    // writers); the gateway sorts duplicates out by seq.
    let op = RoomEvent::Op(collab_protocol::OpEvent {
        room: room("a"),
        seq: Seq(7),
        user: collab_protocol::UserId::parse("u1").expect("id"),
        ts: 1,
        cid: None,
        op: collab_protocol::Op::Undo { stroke: None },
    });
    old_owner.publish_owned(cursor_leave("a", 2), 4);
    old_owner.publish_owned(op.clone(), 4);
    assert_eq!(*next_event(&mut sub).await, op);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_expires_a_record_and_every_watcher_hears_of_it() {
    let server = NatsServer::start();
    let observer = bus(&server, "observer").await;
    let room_node = bus(&server, "rn-1").await;
    room_node.serve(Recorder::new(0)).await.expect("serves");
    until_members(&observer, "the bucket is in use", |m| m.len() == 1).await;

    // A record that claims to stand for an hour, put with a one-second
    // per-key TTL: only the server's expiry (its delete marker) removes it
    // that soon.
    let record = MemberRecord {
        room_node: true,
        gateway: false,
        ttl_ms: 3_600_000,
        wire: WIRE_VERSION,
        instance: String::new(),
        rooms: None,
        connections: None,
    };
    let client = async_nats::connect(server.url()).await.expect("connects");
    let js = async_nats::jetstream::new(client);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-TTL", "1s");
    let subject = format!("$KV.{}.ghost", Subjects::default().members_bucket());
    js.publish_with_headers(
        subject,
        headers,
        serde_json::to_vec(&record).expect("json").into(),
    )
    .await
    .expect("publishes")
    .await
    .expect("stored");
    until_members(&observer, "the record is seen", |m| {
        m.contains(&node("ghost"))
    })
    .await;
    until_members(&observer, "the server expired it", |m| {
        !m.contains(&node("ghost"))
    })
    .await;
    assert!(
        observer
            .members()
            .expect("members")
            .borrow()
            .contains(&node("rn-1"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_buses_agree_on_every_owner() {
    let server = NatsServer::start();
    let mut nodes = Vec::new();
    for i in 0..3u64 {
        let b = bus(&server, &format!("rn-{i}")).await;
        // Each node answers with its own index in the thousands.
        b.serve(Recorder::new(1000 * (i + 1)))
            .await
            .expect("serves");
        nodes.push(b);
    }
    let g1 = bus(&server, "gw-1").await;
    let g2 = bus(&server, "gw-2").await;
    for g in [&g1, &g2] {
        until_members(g, "all room nodes are seen", |m| {
            m.room_nodes().count() == 3
        })
        .await;
    }
    let mut owners = std::collections::HashSet::new();
    for r in 0..60 {
        let id = format!("room-{r}");
        let owner = g1.owner(&room(&id)).expect("an owner");
        assert_eq!(g2.owner(&room(&id)), Some(owner.clone()));
        let index: u64 = owner.as_str()["rn-".len()..].parse().expect("index");
        for g in [&g1, &g2] {
            assert_eq!(
                g.request(fetch(&id, 1), DEADLINE).await,
                Ok(RoomReply::Ack {
                    seq: Seq(1000 * (index + 1) + 1)
                }),
                "{id} is served by {owner}"
            );
        }
        owners.insert(owner);
    }
    assert_eq!(owners.len(), 3, "60 rooms land on every node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_carry_each_roles_load_without_waking_watchers() {
    let server = NatsServer::start();
    let observer = bus(&server, "observer").await;
    let mut gateway_config = config(&server, "gw-1");
    gateway_config.gateway = true;
    let gateway = NatsBus::connect(gateway_config).await.expect("connects");
    let room_node = bus(&server, "rn-1").await;
    let connections = Arc::new(std::sync::atomic::AtomicU64::new(4));
    let counted = connections.clone();
    fn load(b: &NatsBus) -> &collab_bus::Load {
        b.load().expect("a cluster bus reports load")
    }
    load(&gateway).count_connections("gw-1", move || {
        counted.load(std::sync::atomic::Ordering::Relaxed)
    });
    // Counted by a gateway-only process, a room figure is not announced.
    load(&gateway).count_rooms("gw-1", || 99);
    load(&room_node).count_rooms("rn-1", || 2);
    room_node.serve(Recorder::new(0)).await.expect("serves");

    let figures = |m: &Members| {
        let of = |id: &str| m.get(&node(id)).map(|r| (r.rooms, r.connections));
        (of("gw-1"), of("rn-1"))
    };
    until_members(&observer, "both members with their figures", |m| {
        figures(m) == (Some((None, Some(4))), Some((Some(2), None)))
    })
    .await;

    // A new figure is announced with the next heartbeat and is there to
    // read, but wakes nobody: nothing moved.
    let mut watching = observer.members().expect("members");
    watching.borrow_and_update();
    connections.store(9, std::sync::atomic::Ordering::Relaxed);
    eventually("the new connection count", || {
        figures(&observer.members().expect("members").borrow()).0 == Some((None, Some(9)))
    })
    .await;
    assert!(
        !watching.has_changed().expect("the bus is alive"),
        "a load figure alone must not look like a membership change"
    );
    drop(room_node);
    until_members(&observer, "the room node leaves", |m| {
        !m.contains(&node("rn-1"))
    })
    .await;
    assert!(watching.has_changed().expect("the bus is alive"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_of_an_unknown_type_is_answered_bad_request_and_serving_goes_on() {
    // What a room node of an older version does with a request type added
    // after it (such as `inspect` was): it answers, and does not crash.
    let server = NatsServer::start();
    let room_node = bus(&server, "rn-1").await;
    room_node.serve(Recorder::new(5)).await.expect("serves");
    let gateway = bus(&server, "gw-1").await;
    // Announced after its subscription, on the same connection: once the
    // record is seen, the server routes requests to it.
    until_members(&gateway, "the room node is seen", |m| {
        room_nodes(m) == ["rn-1"]
    })
    .await;
    let subject = Subjects::default().node(&node("rn-1")).expect("subject");
    let client = async_nats::connect(server.url()).await.expect("connects");
    let reply = tokio::time::timeout(
        DEADLINE,
        client.request(
            subject,
            br#"{"type":"from_the_future","room":"r"}"#.to_vec().into(),
        ),
    )
    .await
    .expect("answered in time")
    .expect("answered");
    match collab_protocol::subjects::decode::<RoomReply>(&reply.payload).expect("a reply") {
        RoomReply::Error { code, .. } => {
            assert_eq!(code, collab_protocol::ErrorCode::BadRequest);
        }
        other => panic!("expected bad_request, got {other:?}"),
    }
    assert_eq!(
        gateway.request(fetch("r", 1), DEADLINE).await,
        Ok(RoomReply::Ack { seq: Seq(6) })
    );
}
