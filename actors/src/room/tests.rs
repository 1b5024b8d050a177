//! The room actor's commit path, against an in-memory store that the tests
//! can hold, fail and fence at will.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use collab_protocol::envelope::{ConnRef, RoomEvent, RoomInspection, RoomReply, RoomRequest};
use collab_protocol::frames::PresenceEvent;
use collab_protocol::{
    Access, Cid, ConnId, Epoch, ErrorCode, NodeId, Op, OpEvent, RoomId, RoomKind, Seq, StrokeId,
    UserId, UserInfo,
};
use collab_store::testsuite::GatedStore;
use collab_store::{RoomCatalog, RoomRecord, Store, StoreReader, Writer};
use ractor::ActorRef;

use super::*;

// === test doubles ===

#[derive(Default)]
struct RecordingSink {
    events: Mutex<Vec<RoomEvent>>,
    terms: Mutex<Vec<u64>>,
}

impl EventSink for RecordingSink {
    fn emit(&self, event: RoomEvent, term: u64) {
        self.events.lock().expect("lock").push(event);
        self.terms.lock().expect("lock").push(term);
    }
}

impl RecordingSink {
    fn terms(&self) -> Vec<u64> {
        self.terms.lock().expect("lock").clone()
    }

    fn loaded(&self) -> usize {
        self.events
            .lock()
            .expect("lock")
            .iter()
            .filter(|e| matches!(e, RoomEvent::Loaded { .. }))
            .count()
    }

    fn ops(&self) -> Vec<OpEvent> {
        self.events
            .lock()
            .expect("lock")
            .iter()
            .filter_map(|e| match e {
                RoomEvent::Op(op) => Some(op.clone()),
                _ => None,
            })
            .collect()
    }

    fn presence(&self) -> Vec<(PresenceEvent, String)> {
        self.events
            .lock()
            .expect("lock")
            .iter()
            .filter_map(|e| match e {
                RoomEvent::Presence { event, user, .. } => Some((*event, user.id.to_string())),
                _ => None,
            })
            .collect()
    }
}

/// What the rooms said about their use.
#[derive(Default)]
struct RecordingUse {
    stopped: Mutex<Vec<(RoomId, Duration)>>,
    deleted: Mutex<Vec<RoomId>>,
}

impl RoomUse for RecordingUse {
    fn stopped(&self, room: &RoomId, ttl: Duration) {
        self.stopped.lock().expect("lock").push((room.clone(), ttl));
    }

    fn deleted(&self, room: &RoomId) {
        self.deleted.lock().expect("lock").push(room.clone());
    }
}

// === harness ===

struct Node {
    store: Arc<GatedStore>,
    sink: Arc<RecordingSink>,
    usage: Arc<RecordingUse>,
    supervisor: ActorRef<SupervisorMsg>,
    router: RoomRouter,
    metrics: RoomMetrics,
    /// (room, user) pairs whose connection has joined.
    joined: Mutex<std::collections::HashSet<(String, String)>>,
}

fn config() -> RoomConfig {
    let mut config = RoomConfig::new(NodeId::parse("n1").expect("id"));
    config.tick = Duration::from_millis(20);
    config
}

async fn node_with(store: Arc<GatedStore>, config: RoomConfig) -> Node {
    let sink = Arc::new(RecordingSink::default());
    let usage = Arc::new(RecordingUse::default());
    let metrics = RoomMetrics::default();
    let ctx = Arc::new(RoomContext {
        store: store.clone(),
        sink: sink.clone(),
        config,
        metrics: metrics.clone(),
        usage: usage.clone(),
    });
    let (supervisor, router) = RoomSupervisor::start(ctx).await.expect("supervisor starts");
    Node {
        store,
        sink,
        usage,
        supervisor,
        router,
        metrics,
        joined: Mutex::new(Default::default()),
    }
}

async fn node() -> Node {
    let store = Arc::new(GatedStore::new());
    let node = node_with(store, config()).await;
    node.create(ROOM, RoomKind::Board, None).await;
    node
}

const ROOM: &str = "room1";

fn room_id(id: &str) -> RoomId {
    RoomId::parse(id).expect("id")
}

fn user_info(id: &str) -> UserInfo {
    UserInfo {
        id: UserId::parse(id).expect("id"),
        name: id.into(),
        color: collab_protocol::color::user_color(id),
    }
}

fn conn(id: &str) -> ConnRef {
    ConnRef {
        gateway: "g1".into(),
        conn: ConnId::parse(id).expect("id"),
    }
}

fn message(text: &str) -> Op {
    Op::Message { text: text.into() }
}

fn sid(id: &str) -> StrokeId {
    StrokeId::parse(id).expect("id")
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await; // poll interval
    }
}

fn record(id: &str, kind: RoomKind, members: Option<Vec<&str>>) -> RoomRecord {
    RoomRecord {
        id: room_id(id),
        kind,
        name: id.into(),
        epoch: Epoch::parse("ep1").expect("id"),
        created_by: UserId::parse("ann").expect("id"),
        members: members.map(|m| {
            m.into_iter()
                .map(|u| UserId::parse(u).expect("id"))
                .collect()
        }),
        created_at: 0,
        ttl_secs: None,
        floor: Seq::ZERO,
    }
}

impl Node {
    async fn create(&self, id: &str, kind: RoomKind, members: Option<Vec<&str>>) {
        self.store
            .create_room(&record(id, kind, members))
            .await
            .expect("room created");
    }

    async fn expire(&self, room: &str) -> Expiry {
        match self
            .supervisor
            .call(
                |port| SupervisorMsg::Expire(room_id(room), port),
                Some(Duration::from_secs(10)),
            )
            .await
        {
            Ok(ractor::rpc::CallResult::Success(expiry)) => expiry,
            other => panic!("no answer to an expiry: {other:?}"),
        }
    }

    /// Sends a request now (so requests reach the room in the order they
    /// are sent) and returns a task that waits for its reply.
    fn send(&self, request: RoomRequest) -> tokio::task::JoinHandle<RoomReply> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        assert!(self.router.send(request, tx.into()), "supervisor is gone");
        tokio::spawn(async move {
            tokio::time::timeout(Duration::from_secs(10), rx)
                .await
                .expect("reply within 10 s")
                .expect("reply port dropped")
        })
    }

    async fn ask(&self, request: RoomRequest) -> RoomReply {
        self.send(request).await.expect("request task")
    }

    fn op_request(&self, room: &str, who: &str, cid: &str, op: Op) -> RoomRequest {
        RoomRequest::Op {
            room: room_id(room),
            conn: conn(who),
            user: UserId::parse(who).expect("id"),
            access: Access::Write,
            cid: Cid::parse(cid).expect("id"),
            op,
        }
    }

    /// Joins `who`'s connection (named after the user) once per room.
    async fn enter(&self, room: &str, who: &str) {
        let first = self
            .joined
            .lock()
            .expect("lock")
            .insert((room.to_owned(), who.to_owned()));
        if first {
            let reply = self
                .ask(RoomRequest::Join {
                    room: room_id(room),
                    conn: conn(who),
                    user: user_info(who),
                    since: None,
                    epoch: None,
                    resume_strokes: false,
                })
                .await;
            assert!(matches!(reply, RoomReply::Joined(_)), "{reply:?}");
        }
    }

    async fn op(&self, who: &str, cid: &str, op: Op) -> RoomReply {
        self.enter(ROOM, who).await;
        self.ask(self.op_request(ROOM, who, cid, op)).await
    }

    async fn join(&self, who: &str, conn_id: &str, since: Option<u64>) -> RoomReply {
        self.ask(RoomRequest::Join {
            room: room_id(ROOM),
            conn: conn(conn_id),
            user: user_info(who),
            since,
            epoch: None,
            resume_strokes: false,
        })
        .await
    }
}

fn ack_seq(reply: &RoomReply) -> u64 {
    match reply {
        RoomReply::Ack { seq } => seq.get(),
        other => panic!("expected an ack, got {other:?}"),
    }
}

fn error_code(reply: &RoomReply) -> ErrorCode {
    match reply {
        RoomReply::Error { code, .. } => *code,
        other => panic!("expected an error, got {other:?}"),
    }
}

// === tests ===

#[tokio::test]
async fn ops_are_acked_and_broadcast_in_seq_order() {
    let node = node().await;
    for i in 1..=5 {
        let reply = node.op("ann", &format!("c{i}"), message("hi")).await;
        assert_eq!(ack_seq(&reply), i);
    }
    let seqs: Vec<u64> = node.sink.ops().iter().map(|op| op.seq.get()).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    assert_eq!(node.store.head(&room_id(ROOM)).await, Ok(Seq(5)));
}

#[tokio::test]
async fn nothing_is_acked_or_broadcast_before_the_store_confirms() {
    let node = node().await;
    node.enter(ROOM, "ann").await;
    node.enter(ROOM, "bob").await;
    node.store.hold(true);
    let first = node.send(node.op_request(ROOM, "ann", "c1", message("one")));
    eventually("the first batch to reach the store", || {
        node.store.waiting() == 1
    })
    .await;
    // More ops while the batch is in flight: they wait for the next batch.
    let later: Vec<_> = (2..=4)
        .map(|i| node.send(node.op_request(ROOM, "bob", &format!("c{i}"), message("more"))))
        .collect();
    // A join must not see the uncommitted op either.
    let join = node.send(RoomRequest::Join {
        room: room_id(ROOM),
        conn: conn("watcher"),
        user: user_info("cat"),
        since: None,
        epoch: None,
        resume_strokes: false,
    });
    // A fetch is answered at once: once it is, the actor has handled
    // everything sent before it.
    let probe = node.send(RoomRequest::Fetch {
        room: room_id(ROOM),
        after: Seq::ZERO,
        limit: 10,
    });
    assert_eq!(probe.await.expect("probe"), RoomReply::Ops { ops: vec![] });
    assert!(!first.is_finished(), "acked before the store confirmed");
    assert!(!join.is_finished(), "joined while a batch was in flight");
    assert!(
        node.sink.ops().is_empty(),
        "broadcast before the store confirmed"
    );
    assert_eq!(node.store.batches(), [1]);

    node.store.hold(false);
    node.store.release(1);
    assert_eq!(ack_seq(&first.await.expect("reply")), 1);
    let mut seqs = Vec::new();
    for reply in later {
        seqs.push(ack_seq(&reply.await.expect("reply")));
    }
    assert_eq!(seqs, [2, 3, 4]);
    // The three waiting ops went out as one batch.
    assert_eq!(node.store.batches(), [1, 3]);
    match join.await.expect("join") {
        RoomReply::Joined(body) => {
            assert!(body.head.get() >= 1);
            let messages = body.state.expect("state").messages;
            assert_eq!(
                messages.len() as u64,
                body.head.get(),
                "joined shows committed ops only"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_failed_commit_answers_unavailable_and_rebuilds_from_the_store() {
    let node = node().await;
    assert_eq!(ack_seq(&node.op("ann", "c1", message("one")).await), 1);
    node.store.fail_next();
    let failed = node.op("ann", "c2", message("two")).await;
    assert_eq!(error_code(&failed), ErrorCode::Unavailable);
    // The retry with the same cid applies once, with the next seq: no gap.
    assert_eq!(ack_seq(&node.op("ann", "c2", message("two")).await), 2);
    assert_eq!(ack_seq(&node.op("ann", "c2", message("two")).await), 2);
    assert_eq!(ack_seq(&node.op("ann", "c3", message("three")).await), 3);
    let seqs: Vec<u64> = node.sink.ops().iter().map(|op| op.seq.get()).collect();
    assert_eq!(seqs, [1, 2, 3]);
}

#[tokio::test]
async fn a_commit_the_store_does_not_answer_in_time_fails_and_its_late_answer_is_ignored() {
    let mut config = config();
    config.commit_timeout = Duration::from_millis(300);
    let node = node_with(Arc::new(GatedStore::new()), config).await;
    node.create(ROOM, RoomKind::Board, None).await;
    assert_eq!(ack_seq(&node.op("ann", "c1", message("one")).await), 1);
    node.store.hold(true);
    let timed_out = node.op("ann", "c2", message("two")).await;
    assert_eq!(error_code(&timed_out), ErrorCode::Unavailable);
    // The room rebuilt from the store, where c2 has not landed yet; its
    // next batch takes seq 2 too and waits at the gate behind c2's.
    let next = node.send(node.op_request(ROOM, "ann", "c3", message("three")));
    eventually("both batches at the gate", || node.store.waiting() == 2).await;
    // c2's write lands now, late. Its answer must not be taken for c3's
    // batch, which the store then refuses: c3 is not acked.
    node.store.release(1);
    eventually("c2 to land", || node.store.appended() == 2).await;
    node.store.release(1);
    let next = next.await.expect("c3");
    assert_eq!(error_code(&next), ErrorCode::Unavailable, "{next:?}");
    let seqs: Vec<u64> = node.sink.ops().iter().map(|op| op.seq.get()).collect();
    assert_eq!(seqs, [1], "only what this actor saw committed is broadcast");
}

#[tokio::test]
async fn a_conflict_fences_the_actor() {
    let node = node().await;
    assert_eq!(ack_seq(&node.op("ann", "c1", message("one")).await), 1);
    node.store.conflict_next();
    let fenced = node.op("ann", "c2", message("two")).await;
    assert_eq!(error_code(&fenced), ErrorCode::Unavailable);
    assert_eq!(node.sink.ops().len(), 1, "a fenced actor broadcast");
    // The next request starts a fresh actor from the store; its members
    // join again, as gateways re-attach them after a move.
    node.joined.lock().expect("lock").clear();
    assert_eq!(ack_seq(&node.op("ann", "c2", message("two")).await), 2);
}

#[tokio::test]
async fn a_retry_of_an_op_in_flight_is_acked_when_it_commits() {
    let node = node().await;
    node.enter(ROOM, "ann").await;
    node.store.hold(true);
    let first = node.send(node.op_request(ROOM, "ann", "same", message("x")));
    eventually("the batch to reach the store", || node.store.waiting() == 1).await;
    let retry = node.send(node.op_request(ROOM, "ann", "same", message("x")));
    let probe = node.send(RoomRequest::Fetch {
        room: room_id(ROOM),
        after: Seq::ZERO,
        limit: 10,
    });
    assert_eq!(probe.await.expect("probe"), RoomReply::Ops { ops: vec![] });
    assert!(
        !retry.is_finished(),
        "a retry was acked before its op was durable"
    );
    node.store.hold(false);
    node.store.release(1);
    assert_eq!(ack_seq(&first.await.expect("reply")), 1);
    assert_eq!(ack_seq(&retry.await.expect("reply")), 1);
    assert_eq!(node.sink.ops().len(), 1);
}

#[tokio::test]
async fn join_replays_from_memory_and_from_the_store() {
    let node = node().await;
    for i in 1..=10 {
        node.op("ann", &format!("c{i}"), message("m")).await;
    }
    match node.join("bob", "b1", Some(7)).await {
        RoomReply::Joined(body) => {
            assert!(!body.reset);
            let seqs: Vec<u64> = body.ops.expect("ops").iter().map(|o| o.seq.get()).collect();
            assert_eq!(seqs, [8, 9, 10]);
        }
        other => panic!("{other:?}"),
    }
    // A new node on the same store has an empty tail: the ops come from the log.
    let again = node_with(node.store.clone(), config()).await;
    match again.join("bob", "b2", Some(2)).await {
        RoomReply::Joined(body) => {
            assert_eq!(body.head, Seq(10));
            let seqs: Vec<u64> = body.ops.expect("ops").iter().map(|o| o.seq.get()).collect();
            assert_eq!(seqs, (3..=10).collect::<Vec<_>>());
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn undo_and_cids_survive_a_restart() {
    let node = node().await;
    let begin = Op::StrokeBegin {
        stroke: sid("s1"),
        color: "#000000".into(),
        width: 2.0,
        points: vec![[1.0, 1.0]],
    };
    node.op("ann", "c1", begin).await;
    node.op("ann", "c2", Op::StrokeEnd { stroke: sid("s1") })
        .await;
    let mut small = config();
    small.snapshot_every_ops = 1;
    let restarted = node_with(node.store.clone(), small).await;
    // Same cid: re-acked, not applied again.
    assert_eq!(
        ack_seq(
            &restarted
                .op("ann", "c2", Op::StrokeEnd { stroke: sid("s1") })
                .await
        ),
        2
    );
    assert_eq!(
        ack_seq(&restarted.op("ann", "c3", Op::Undo { stroke: None }).await),
        3
    );
    let undo = restarted.sink.ops().pop().expect("undo broadcast");
    assert_eq!(
        undo.op,
        Op::Undo {
            stroke: Some(sid("s1"))
        }
    );
    // With a snapshot written, a third node loads from it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while restarted
        .store
        .latest_snapshot(&room_id(ROOM))
        .await
        .ok()
        .flatten()
        .is_none()
    {
        assert!(tokio::time::Instant::now() < deadline, "no snapshot");
        tokio::time::sleep(Duration::from_millis(5)).await; // poll interval
    }
    let third = node_with(node.store.clone(), config()).await;
    assert_eq!(
        ack_seq(&third.op("ann", "c4", Op::Redo { stroke: None }).await),
        4
    );
    assert_eq!(
        ack_seq(&third.op("ann", "c3", Op::Undo { stroke: None }).await),
        3
    );
}

#[tokio::test]
async fn presence_and_orphaned_strokes() {
    let node = node().await;
    node.join("ann", "a1", None).await;
    node.join("ann", "a2", None).await;
    match node.join("bob", "b1", None).await {
        RoomReply::Joined(body) => {
            let ids: Vec<String> = body.presence.iter().map(|u| u.id.to_string()).collect();
            assert_eq!(ids, ["ann", "bob"]);
        }
        other => panic!("{other:?}"),
    }
    let begin = Op::StrokeBegin {
        stroke: sid("open"),
        color: "#000000".into(),
        width: 2.0,
        points: vec![],
    };
    node.ask(RoomRequest::Op {
        room: room_id(ROOM),
        conn: conn("a1"),
        user: UserId::parse("ann").expect("id"),
        access: Access::Write,
        cid: Cid::parse("b").expect("id"),
        op: begin,
    })
    .await;
    for c in ["a1", "a2"] {
        node.ask(RoomRequest::Leave {
            room: room_id(ROOM),
            conn: conn(c),
            dropped: false,
        })
        .await;
    }
    eventually("the server to end the orphaned stroke", || {
        node.sink.ops().len() == 2
    })
    .await;
    let ending = node.sink.ops().pop().expect("op");
    assert_eq!(ending.cid, None);
    assert_eq!(
        ending.op,
        Op::StrokeEnd {
            stroke: sid("open")
        }
    );
    assert_eq!(
        node.sink.presence(),
        [
            (PresenceEvent::Join, "ann".to_owned()),
            (PresenceEvent::Join, "bob".to_owned()),
            (PresenceEvent::Leave, "ann".to_owned()),
        ]
    );
}

/// A connection that joined with `resume_strokes` and dropped: its user's
/// open stroke waits for the grace, and a new connection goes on with it.
#[tokio::test]
async fn a_resumable_stroke_outlives_a_dropped_connection_for_the_grace() {
    let store = Arc::new(GatedStore::new());
    let mut config = config();
    config.orphan_grace = Duration::from_millis(400);
    let node = node_with(store, config).await;
    node.create(ROOM, RoomKind::Board, None).await;
    let join = |conn_id: &str| RoomRequest::Join {
        room: room_id(ROOM),
        conn: conn(conn_id),
        user: user_info("ann"),
        since: None,
        epoch: None,
        resume_strokes: true,
    };
    let from = |conn_id: &str, cid: &str, op: Op| RoomRequest::Op {
        room: room_id(ROOM),
        conn: conn(conn_id),
        user: UserId::parse("ann").expect("id"),
        access: Access::Write,
        cid: Cid::parse(cid).expect("id"),
        op,
    };
    let points = |stroke: &str| Op::StrokePoints {
        stroke: sid(stroke),
        points: vec![[1.0, 1.0]],
    };
    let leave = |conn_id: &str| RoomRequest::Leave {
        room: room_id(ROOM),
        conn: conn(conn_id),
        dropped: true,
    };
    let begin = |stroke: &str| Op::StrokeBegin {
        stroke: sid(stroke),
        color: "#000000".into(),
        width: 2.0,
        points: vec![],
    };

    // Back within the grace: the same stroke goes on, and is ended once,
    // by its owner.
    assert!(matches!(node.ask(join("a1")).await, RoomReply::Joined(_)));
    ack_seq(&node.ask(from("a1", "c1", begin("kept"))).await);
    node.ask(leave("a1")).await;
    assert!(matches!(node.ask(join("a2")).await, RoomReply::Joined(_)));
    ack_seq(&node.ask(from("a2", "c2", points("kept"))).await);
    let end = Op::StrokeEnd {
        stroke: sid("kept"),
    };
    // Points after the drop were taken: the stroke was still open.
    ack_seq(&node.ask(from("a2", "c3", end)).await);
    let ops = node.sink.ops();
    assert_eq!(ops.len(), 3, "{ops:?}");
    assert!(ops.iter().all(|op| op.cid.is_some()), "{ops:?}");

    // Not back: the server ends it when the grace is over, not before.
    ack_seq(&node.ask(from("a2", "c4", begin("cut"))).await);
    let left_at = tokio::time::Instant::now();
    node.ask(leave("a2")).await;
    eventually("the server to end the abandoned stroke", || {
        node.sink.ops().len() == 5
    })
    .await;
    assert!(left_at.elapsed() >= Duration::from_millis(400));
    let ending = node.sink.ops().pop().expect("op");
    assert_eq!(ending.cid, None);
    assert_eq!(ending.op, Op::StrokeEnd { stroke: sid("cut") });

    // A `leave` sent on purpose ends the stroke at once, flag or not.
    assert!(matches!(node.ask(join("a3")).await, RoomReply::Joined(_)));
    ack_seq(&node.ask(from("a3", "c5", begin("left"))).await);
    let left_at = tokio::time::Instant::now();
    node.ask(RoomRequest::Leave {
        room: room_id(ROOM),
        conn: conn("a3"),
        dropped: false,
    })
    .await;
    eventually("the server to end the stroke left behind", || {
        node.sink.ops().len() == 7
    })
    .await;
    assert!(left_at.elapsed() < Duration::from_millis(400));
    let ending = node.sink.ops().pop().expect("op");
    assert_eq!(
        ending.op,
        Op::StrokeEnd {
            stroke: sid("left")
        }
    );
}

/// A silent connection leaves the presence but stays joined: putting it
/// back is announced, and its ops still count as a member's.
#[tokio::test]
async fn a_silent_connection_leaves_presence_and_is_announced_back() {
    let node = node().await;
    node.join("ann", "a1", None).await;
    node.join("bob", "b1", None).await;
    node.ask(RoomRequest::Away {
        room: room_id(ROOM),
        conn: conn("a1"),
    })
    .await;
    eventually("ann's leave", || node.sink.presence().len() == 3).await;
    match node.join("cy", "c1", None).await {
        RoomReply::Joined(body) => {
            let ids: Vec<String> = body.presence.iter().map(|u| u.id.to_string()).collect();
            assert_eq!(ids, ["bob", "cy"]);
        }
        other => panic!("{other:?}"),
    }
    let back = node
        .ask(RoomRequest::Attach {
            room: room_id(ROOM),
            conn: conn("a1"),
            user: user_info("ann"),
            resume_strokes: false,
        })
        .await;
    assert_eq!(back, RoomReply::Done);
    eventually("ann back", || node.sink.presence().len() == 5).await;
    assert_eq!(
        node.sink.presence(),
        [
            (PresenceEvent::Join, "ann".to_owned()),
            (PresenceEvent::Join, "bob".to_owned()),
            (PresenceEvent::Leave, "ann".to_owned()),
            (PresenceEvent::Join, "cy".to_owned()),
            (PresenceEvent::Join, "ann".to_owned()),
        ]
    );
}

#[tokio::test]
async fn unknown_and_private_rooms() {
    let node = node().await;
    let reply = node
        .ask(RoomRequest::Join {
            room: room_id("nope"),
            conn: conn("x"),
            user: user_info("ann"),
            since: None,
            epoch: None,
            resume_strokes: false,
        })
        .await;
    assert_eq!(error_code(&reply), ErrorCode::NotFound);
    node.create("secret", RoomKind::Channel, Some(vec!["bob"]))
        .await;
    let join = |who: &str| RoomRequest::Join {
        room: room_id("secret"),
        conn: conn(who),
        user: user_info(who),
        since: None,
        epoch: None,
        resume_strokes: false,
    };
    assert_eq!(
        error_code(&node.ask(join("eve")).await),
        ErrorCode::Forbidden
    );
    assert!(matches!(node.ask(join("bob")).await, RoomReply::Joined(_)));
    assert!(matches!(node.ask(join("ann")).await, RoomReply::Joined(_)));
}

#[tokio::test]
async fn idle_rooms_stop_after_a_snapshot_and_come_back() {
    let store = Arc::new(GatedStore::new());
    let mut cfg = config();
    cfg.idle_after = Duration::from_millis(50);
    let node = node_with(store, cfg).await;
    node.create(ROOM, RoomKind::Board, None).await;
    node.op("ann", "c1", message("hello")).await;
    node.ask(RoomRequest::Leave {
        room: room_id(ROOM),
        conn: conn("ann"),
        dropped: false,
    })
    .await;
    let active = || async {
        node.supervisor
            .call(SupervisorMsg::ActiveRooms, Some(Duration::from_secs(5)))
            .await
            .ok()
            .and_then(|r| match r {
                ractor::rpc::CallResult::Success(n) => Some(n),
                _ => None,
            })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while active().await != Some(0) {
        assert!(tokio::time::Instant::now() < deadline, "room never stopped");
        tokio::time::sleep(Duration::from_millis(10)).await; // poll interval
    }
    let snapshot = node
        .store
        .latest_snapshot(&room_id(ROOM))
        .await
        .expect("read");
    assert_eq!(snapshot.map(|s| s.seq), Some(Seq(1)));
    node.joined.lock().expect("lock").clear();
    assert_eq!(ack_seq(&node.op("ann", "c2", message("again")).await), 2);
}

#[tokio::test]
async fn only_members_send_ops_but_retries_are_re_acked() {
    let node = node().await;
    let stranger = node
        .ask(node.op_request(ROOM, "eve", "c1", message("hi")))
        .await;
    assert_eq!(stranger, RoomReply::NotJoined);
    assert_eq!(ack_seq(&node.op("ann", "c1", message("hi")).await), 1);
    node.ask(RoomRequest::Leave {
        room: room_id(ROOM),
        conn: conn("ann"),
        dropped: false,
    })
    .await;
    // After leaving, a retry of an applied cid is still re-acked…
    let retry = node
        .ask(node.op_request(ROOM, "ann", "c1", message("hi")))
        .await;
    assert_eq!(ack_seq(&retry), 1);
    // …but a new op is refused…
    let new = node
        .ask(node.op_request(ROOM, "ann", "c2", message("hi")))
        .await;
    assert_eq!(new, RoomReply::NotJoined);
    // …and a re-attach her gateway sent just before she left (the room
    // was moving), arriving after her leave, does not put her back…
    let attached = node
        .ask(RoomRequest::Attach {
            room: room_id(ROOM),
            conn: conn("ann"),
            user: user_info("ann"),
            resume_strokes: false,
        })
        .await;
    assert_eq!(attached, RoomReply::Done);
    let refused = node
        .ask(node.op_request(ROOM, "ann", "c2", message("hi")))
        .await;
    assert_eq!(refused, RoomReply::NotJoined);
    assert_eq!(
        node.sink.presence(),
        [
            (PresenceEvent::Join, "ann".into()),
            (PresenceEvent::Leave, "ann".into())
        ],
        "nobody heard she was back"
    );
    // …until she joins again, on the same connection.
    node.joined.lock().expect("lock").clear();
    node.enter(ROOM, "ann").await;
    let again = node
        .ask(node.op_request(ROOM, "ann", "c2", message("hi")))
        .await;
    assert_eq!(ack_seq(&again), 2);
}

#[tokio::test]
async fn a_busy_room_pushes_back() {
    let store = Arc::new(GatedStore::new());
    let mut cfg = config();
    cfg.mailbox_high_water = 0;
    let node = node_with(store, cfg).await;
    node.create(ROOM, RoomKind::Board, None).await;
    let reply = node.op("ann", "c1", message("x")).await;
    assert_eq!(error_code(&reply), ErrorCode::RateLimited);
    assert_eq!(node.store.head(&room_id(ROOM)).await, Ok(Seq::ZERO));
}

#[tokio::test]
async fn each_owner_of_a_room_writes_and_publishes_with_a_higher_term() {
    let node = node().await;
    let room = room_id(ROOM);
    // A previous owner wrote with a term far above this clock's
    // milliseconds.
    let previous = collab_store::Writer {
        node: NodeId::parse("n0").expect("id"),
        term: 1 << 60,
    };
    let first = OpEvent {
        room: room.clone(),
        seq: Seq(1),
        user: UserId::parse("ann").expect("id"),
        ts: 1,
        cid: Some(Cid::parse("c0").expect("id")),
        op: message("from the previous owner"),
    };
    node.store
        .append(&room, Seq(1), &[first], &previous)
        .await
        .expect("appended");
    assert_eq!(ack_seq(&node.op("ann", "c1", message("mine")).await), 2);
    let log = node.store.read_log(&room, Seq(1), 10).await.expect("log");
    let term = log[0].writer.term;
    assert_eq!(term, (1 << 60) + 1, "above the previous owner's term");
    assert_eq!(log[0].writer.node.as_str(), "n1");
    // Everything the actor published carries its term, and it announced
    // that it loaded the room, so gateways re-attach their members.
    assert!(node.sink.terms().iter().all(|t| *t == term));
    assert_eq!(node.sink.loaded(), 1);
}

#[tokio::test]
async fn a_room_placed_elsewhere_is_handed_off_and_refused() {
    let node = node().await;
    node.create("room2", RoomKind::Board, None).await;
    assert_eq!(ack_seq(&node.op("ann", "c1", message("one")).await), 1);
    node.enter("room2", "ann").await;
    // The cluster changed: room1 now belongs to another node.
    let owns: Ownership = Arc::new(|room: &RoomId| room.as_str() != ROOM);
    node.supervisor
        .send_message(SupervisorMsg::Placement(owns))
        .unwrap_or_else(|_| panic!("supervisor is gone"));
    // It snapshots before it stops, so the next owner loads little.
    let room = room_id(ROOM);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let snapshot = node.store.latest_snapshot(&room).await.expect("read");
        if snapshot.is_some_and(|s| s.seq == Seq(1)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no hand-off snapshot"
        );
        tokio::time::sleep(Duration::from_millis(5)).await; // poll interval
    }
    let refused = node.op("ann", "c2", message("two")).await;
    assert_eq!(error_code(&refused), ErrorCode::Unavailable);
    assert_eq!(node.store.head(&room).await, Ok(Seq(1)), "nothing written");
    // The room it still owns is served as before.
    let kept = node
        .ask(node.op_request("room2", "ann", "c3", message("kept")))
        .await;
    assert_eq!(ack_seq(&kept), 1);
}

/// Hand-offs and takeovers as a room node counts them (metrics), on two
/// nodes sharing one store.
#[tokio::test]
async fn hand_offs_and_takeovers_are_counted_by_kind() {
    let store = Arc::new(GatedStore::new());
    let mut old_config = config();
    old_config.node = NodeId::parse("n0").expect("id");
    let old = node_with(store.clone(), old_config).await;
    old.create(ROOM, RoomKind::Board, None).await;
    old.create("room2", RoomKind::Board, None).await;
    assert_eq!(ack_seq(&old.op("ann", "c1", message("one")).await), 1);
    old.enter("room2", "ann").await;
    let in_room2 = old.op_request("room2", "ann", "c2", message("two"));
    assert_eq!(ack_seq(&old.ask(in_room2).await), 1);
    let takeovers = |node: &Node, kind: Takeover| {
        node.metrics
            .takeovers
            .get_or_create(&super::metrics::TakeoverLabel {
                kind: kind.as_str(),
            })
            .get()
    };

    // room1 moves away: n0 hands it off with a snapshot covering its head.
    let owns: Ownership = Arc::new(|room: &RoomId| room.as_str() != ROOM);
    old.supervisor
        .send_message(SupervisorMsg::Placement(owns))
        .unwrap_or_else(|_| panic!("supervisor is gone"));
    let room = room_id(ROOM);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store
        .latest_snapshot(&room)
        .await
        .expect("read")
        .is_none_or(|s| s.seq != Seq(1))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no hand-off snapshot"
        );
        tokio::time::sleep(Duration::from_millis(5)).await; // poll interval
    }
    assert_eq!(old.metrics.handoffs.get(), 1);
    // n0 loaded rooms nobody had written: no takeover.
    assert_eq!(takeovers(&old, Takeover::Handoff), 0);
    assert_eq!(takeovers(&old, Takeover::Failover), 0);

    // n1 loads room1 from the hand-off snapshot, and room2 (n0 wrote an op
    // after its last snapshot, as if it had died) by replaying the log.
    let new = node_with(store.clone(), config()).await;
    assert_eq!(ack_seq(&new.op("bob", "c3", message("three")).await), 2);
    new.enter("room2", "bob").await;
    assert_eq!(takeovers(&new, Takeover::Handoff), 1);
    assert_eq!(takeovers(&new, Takeover::Failover), 1);

    // Draining hands off every live room.
    let drained = new
        .supervisor
        .call(
            |port| SupervisorMsg::DrainAll(Duration::from_secs(5), port),
            Some(Duration::from_secs(10)),
        )
        .await;
    assert!(matches!(drained, Ok(ractor::rpc::CallResult::Success(()))));
    assert_eq!(new.metrics.handoffs.get(), 2);

    // The same node id back (a restarted pod) loads the room it wrote
    // last: not a takeover.
    let again = node_with(store, config()).await;
    assert_eq!(ack_seq(&again.op("bob", "c4", message("four")).await), 3);
    assert_eq!(takeovers(&again, Takeover::Handoff), 0);
    assert_eq!(takeovers(&again, Takeover::Failover), 0);
}

/// A room handed off while its batch is in flight, whose batch then fails
/// (fenced, or an unknown outcome), must still stop: the supervisor holds
/// its requests until it does, and the node gets the room back later.
async fn handed_off_mid_batch_then(outcome: fn(&GatedStore)) {
    let node = node().await;
    assert_eq!(ack_seq(&node.op("ann", "c1", message("one")).await), 1);
    node.store.hold(true);
    let in_flight = node.send(node.op_request(ROOM, "ann", "c2", message("two")));
    eventually("the batch to reach the store", || node.store.waiting() == 1).await;
    let elsewhere: Ownership = Arc::new(|_: &RoomId| false);
    node.supervisor
        .send_message(SupervisorMsg::Placement(elsewhere))
        .unwrap_or_else(|_| panic!("supervisor is gone"));
    // The hand-off is under way once the supervisor refuses new requests.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let probe = node.send(RoomRequest::Fetch {
            room: room_id("elsewhere"),
            after: Seq::ZERO,
            limit: 1,
        });
        if error_code(&probe.await.expect("probe")) == ErrorCode::Unavailable {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never handed off");
    }
    outcome(&node.store);
    node.store.hold(false);
    node.store.release(1);
    let reply = in_flight.await.expect("reply");
    assert_eq!(error_code(&reply), ErrorCode::Unavailable);
    // The room comes back to this node: it must be served again, by a
    // fresh actor, rather than wait for one that never stops.
    let mine: Ownership = Arc::new(|_: &RoomId| true);
    node.supervisor
        .send_message(SupervisorMsg::Placement(mine))
        .unwrap_or_else(|_| panic!("supervisor is gone"));
    node.joined.lock().expect("lock").clear();
    let again = node.op("ann", "c3", message("three")).await;
    assert!(
        matches!(again, RoomReply::Ack { .. }),
        "the room was never served again: {again:?}"
    );
}

#[tokio::test]
async fn a_room_fenced_while_handing_off_stops() {
    handed_off_mid_batch_then(GatedStore::conflict_next).await;
}

#[tokio::test]
async fn a_room_whose_commit_fails_while_handing_off_stops() {
    handed_off_mid_batch_then(GatedStore::fail_next).await;
}

#[tokio::test]
async fn putting_a_member_back_is_silent_unless_it_was_announced_gone() {
    let node = node().await;
    node.enter(ROOM, "bob").await;
    let attach = |who: &str| RoomRequest::Attach {
        room: room_id(ROOM),
        conn: conn(who),
        user: user_info(who),
        resume_strokes: false,
    };
    // ann was in the room before it moved here: the others never heard
    // she left, so they hear nothing now.
    assert_eq!(node.ask(attach("ann")).await, RoomReply::Done);
    assert_eq!(node.sink.presence(), [(PresenceEvent::Join, "bob".into())]);
    // Her gateway is declared dead: the others hear she left. It was only
    // cut off, and puts her back: they hear she is back.
    node.supervisor
        .send_message(SupervisorMsg::GatewayGone("g1".into()))
        .unwrap_or_else(|_| panic!("supervisor is gone"));
    eventually("the leaves", || node.sink.presence().len() == 3).await;
    assert_eq!(node.ask(attach("ann")).await, RoomReply::Done);
    assert_eq!(
        node.sink.presence(),
        [
            (PresenceEvent::Join, "bob".into()),
            (PresenceEvent::Leave, "ann".into()),
            (PresenceEvent::Leave, "bob".into()),
            (PresenceEvent::Join, "ann".into()),
        ]
    );
}

#[tokio::test]
async fn a_refusal_is_final_only_once_the_store_confirms_the_room_was_current() {
    let node = node().await;
    assert_eq!(ack_seq(&node.op("ann", "c1", message("one")).await), 1);
    // A node that still took the room for its own commits seq 2: ann's
    // stroke begins there, and this actor's state does not know it.
    let begin = OpEvent {
        room: room_id(ROOM),
        seq: Seq(2),
        user: UserId::parse("ann").expect("id"),
        ts: 1,
        cid: Some(Cid::parse("c2").expect("cid")),
        op: Op::StrokeBegin {
            stroke: sid("s1"),
            color: "#000000".into(),
            width: 2.0,
            points: vec![[1.0, 1.0]],
        },
    };
    let other = Writer {
        node: NodeId::parse("n2").expect("id"),
        term: 1,
    };
    node.store
        .append(&room_id(ROOM), Seq(2), &[begin], &other)
        .await
        .expect("the other node commits");
    // Points for that stroke: this state would say `not_found`, which is
    // wrong; the look at the log's head shows the state is behind.
    let points = || Op::StrokePoints {
        stroke: sid("s1"),
        points: vec![[2.0, 2.0]],
    };
    let stale = node.op("ann", "c3", points()).await;
    assert_eq!(error_code(&stale), ErrorCode::Unavailable, "{stale:?}");
    // The retry reaches an actor loaded from the store, which has seq 2.
    node.joined.lock().expect("lock").clear();
    assert_eq!(ack_seq(&node.op("ann", "c3", points()).await), 3);
    // A refusal from a current state still comes, after the same look.
    let missing = node
        .op(
            "ann",
            "c4",
            Op::StrokePoints {
                stroke: sid("nope"),
                points: vec![[2.0, 2.0]],
            },
        )
        .await;
    assert_eq!(error_code(&missing), ErrorCode::NotFound, "{missing:?}");
}

// === deletion and expiry ===

fn delete(room: &str) -> RoomRequest {
    RoomRequest::Delete {
        room: room_id(room),
        epoch: None,
    }
}

/// Ops that reached the room before its `Delete` are committed, acked and
/// broadcast, then the room is deleted; whatever came after the `Delete`
/// gets `not_found`, and nothing is acked or broadcast after it.
#[tokio::test]
async fn a_delete_commits_what_came_before_and_refuses_what_came_after() {
    let node = node().await;
    node.enter(ROOM, "ann").await;
    node.enter(ROOM, "bob").await;
    assert_eq!(ack_seq(&node.op("ann", "c0", message("zero")).await), 1);
    node.store.hold(true);
    let first = node.send(node.op_request(ROOM, "ann", "c1", message("one")));
    eventually("the batch to reach the store", || node.store.waiting() == 1).await;
    let before: Vec<_> = (2..=3)
        .map(|i| node.send(node.op_request(ROOM, "bob", &format!("c{i}"), message("more"))))
        .collect();
    let deleted = node.send(delete(ROOM));
    let after = node.send(node.op_request(ROOM, "ann", "c4", message("too late")));
    let join = node.send(RoomRequest::Join {
        room: room_id(ROOM),
        conn: conn("late"),
        user: user_info("cat"),
        since: None,
        epoch: None,
        resume_strokes: false,
    });
    node.store.hold(false);
    node.store.release(10);

    assert_eq!(ack_seq(&first.await.expect("task")), 2);
    let acked: Vec<u64> = futures_join(before).await.iter().map(ack_seq).collect();
    assert_eq!(acked, [3, 4]);
    assert_eq!(deleted.await.expect("task"), RoomReply::Done);
    assert_eq!(error_code(&after.await.expect("task")), ErrorCode::NotFound);
    assert_eq!(error_code(&join.await.expect("task")), ErrorCode::NotFound);

    assert_eq!(node.store.room(&room_id(ROOM)).await, Ok(None));
    assert_eq!(
        node.store.head(&room_id(ROOM)).await,
        Ok(Seq(5)),
        "the tombstone follows the last op"
    );
    let events = node.sink.events.lock().expect("lock").clone();
    assert!(
        matches!(events.last(), Some(RoomEvent::Deleted { room }) if *room == room_id(ROOM)),
        "the deletion is the room's last event: {events:?}"
    );
    let seqs: Vec<u64> = node.sink.ops().iter().map(|op| op.seq.get()).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    assert_eq!(*node.usage.deleted.lock().expect("lock"), [room_id(ROOM)]);

    // The room stays gone for a fresh actor, and a second delete finds nothing.
    assert_eq!(
        error_code(&node.op("bob", "c5", message("?")).await),
        ErrorCode::NotFound
    );
    assert_eq!(
        error_code(&node.ask(delete(ROOM)).await),
        ErrorCode::NotFound
    );
}

async fn futures_join(tasks: Vec<tokio::task::JoinHandle<RoomReply>>) -> Vec<RoomReply> {
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.expect("task"));
    }
    replies
}

#[tokio::test]
async fn deleting_an_unknown_room_or_another_epoch_is_not_found() {
    let node = node().await;
    assert_eq!(
        error_code(&node.ask(delete("nowhere")).await),
        ErrorCode::NotFound
    );
    let other_epoch = RoomRequest::Delete {
        room: room_id(ROOM),
        epoch: Some(Epoch::parse("ep0").expect("epoch")),
    };
    assert_eq!(
        error_code(&node.ask(other_epoch).await),
        ErrorCode::NotFound
    );
    assert_eq!(
        ack_seq(&node.op("ann", "c1", message("still here")).await),
        1
    );
    let this_epoch = RoomRequest::Delete {
        room: room_id(ROOM),
        epoch: Some(Epoch::parse("ep1").expect("epoch")),
    };
    assert_eq!(node.ask(this_epoch).await, RoomReply::Done);
}

/// The id of a deleted room can be used again: the new room's log starts
/// after the old one's tombstone, and a client that remembers the old
/// epoch is reset.
#[tokio::test]
async fn a_room_created_again_is_new() {
    let node = node().await;
    for i in 1..=2 {
        node.op("ann", &format!("c{i}"), message("old")).await;
    }
    assert_eq!(node.ask(delete(ROOM)).await, RoomReply::Done);
    let mut again = record(ROOM, RoomKind::Channel, None);
    again.epoch = Epoch::parse("ep2").expect("epoch");
    node.store.create_room(&again).await.expect("created again");

    let reply = node
        .ask(RoomRequest::Join {
            room: room_id(ROOM),
            conn: conn("ann-2"),
            user: user_info("ann"),
            since: Some(2),
            epoch: Some(Epoch::parse("ep1").expect("epoch")),
            resume_strokes: false,
        })
        .await;
    let RoomReply::Joined(body) = reply else {
        panic!("expected joined, got {reply:?}");
    };
    assert!(body.reset, "the old epoch's seqs mean nothing here");
    assert_eq!(body.epoch.as_str(), "ep2");
    assert_eq!(body.head, Seq(3), "after the old room's tombstone");
    let state = body.state.expect("state");
    assert!(state.messages.is_empty() && state.strokes.is_empty());
    // Without the epoch, a seq of the old room is still recognised as one.
    let reply = node
        .ask(RoomRequest::Join {
            room: room_id(ROOM),
            conn: conn("bob-2"),
            user: user_info("bob"),
            since: Some(1),
            epoch: None,
            resume_strokes: false,
        })
        .await;
    assert!(
        matches!(&reply, RoomReply::Joined(body) if body.reset),
        "{reply:?}"
    );
    let ack = node
        .ask(node.op_request(ROOM, "ann-2", "c1", message("new")))
        .await;
    // `c1` was the old room's: the new room never heard of it.
    assert_eq!(ack_seq(&ack), 4);
}

/// A deletion whose owner died after the tombstone leaves the room
/// half-deleted; the next actor to load it finishes the deletion (a
/// retried `Delete` is then `Done`), and nothing is ever served from it.
#[tokio::test]
async fn a_deletion_cut_short_is_finished_by_the_next_load() {
    let node = node().await;
    node.op("ann", "c1", message("one")).await;
    node.store.cut_next_delete();
    assert_eq!(
        error_code(&node.ask(delete(ROOM)).await),
        ErrorCode::Unavailable
    );
    assert!(
        node.store
            .room(&room_id(ROOM))
            .await
            .expect("room")
            .is_some(),
        "half deleted: the record is still there"
    );
    let join = node.send(RoomRequest::Join {
        room: room_id(ROOM),
        conn: conn("bob"),
        user: user_info("bob"),
        since: None,
        epoch: None,
        resume_strokes: false,
    });
    let retry = node.send(delete(ROOM));
    assert_eq!(error_code(&join.await.expect("task")), ErrorCode::NotFound);
    assert_eq!(retry.await.expect("task"), RoomReply::Done);
    assert_eq!(node.store.room(&room_id(ROOM)).await, Ok(None));
    assert_eq!(node.sink.ops().len(), 1, "nothing more was committed");
}

/// Expiry deletes a room only if it has a time to live and is not live
/// here; a room that stops records its use.
#[tokio::test]
async fn expiry_deletes_only_unused_rooms_with_a_time_to_live() {
    let mut config = config();
    config.idle_after = Duration::from_millis(100);
    let node = node_with(Arc::new(GatedStore::new()), config).await;
    let with_ttl = |id: &str| RoomRecord {
        ttl_secs: Some(60),
        ..record(id, RoomKind::Board, None)
    };
    node.store
        .create_room(&with_ttl("short"))
        .await
        .expect("create");
    node.store
        .create_room(&with_ttl("busy"))
        .await
        .expect("create");
    node.create("forever", RoomKind::Board, None).await;

    assert_eq!(node.expire("nowhere").await, Expiry::NoSuchRoom);
    assert_eq!(node.expire("forever").await, Expiry::NoTtl);
    assert_eq!(node.expire("short").await, Expiry::Deleted);
    assert_eq!(node.store.room(&room_id("short")).await, Ok(None));
    assert_eq!(
        *node.usage.deleted.lock().expect("lock"),
        [room_id("short")]
    );

    node.enter("busy", "ann").await;
    assert_eq!(node.expire("busy").await, Expiry::InUse);
    // Once it is left and goes idle, its actor stops and says so.
    node.ask(RoomRequest::Leave {
        room: room_id("busy"),
        conn: conn("ann"),
        dropped: false,
    })
    .await;
    eventually("the idle room to stop", || {
        node.usage
            .stopped
            .lock()
            .expect("lock")
            .contains(&(room_id("busy"), Duration::from_secs(60)))
    })
    .await;
    assert!(
        !node
            .usage
            .stopped
            .lock()
            .expect("lock")
            .iter()
            .any(|(room, _)| *room == room_id("forever")),
        "a room without a time to live is not recorded"
    );
    assert_eq!(node.expire("busy").await, Expiry::Deleted);
    assert_eq!(
        error_code(&node.ask(delete("busy")).await),
        ErrorCode::NotFound
    );
}

async fn inspect(node: &Node, room: &str) -> RoomInspection {
    let request = RoomRequest::Inspect {
        room: room_id(room),
    };
    match node.ask(request).await {
        RoomReply::Inspected(inspection) => inspection,
        other => panic!("expected an inspection, got {other:?}"),
    }
}

async fn active_rooms(node: &Node) -> Option<usize> {
    node.supervisor
        .call(SupervisorMsg::ActiveRooms, Some(Duration::from_secs(5)))
        .await
        .ok()
        .and_then(|r| match r {
            ractor::rpc::CallResult::Success(n) => Some(n),
            _ => None,
        })
}

#[tokio::test]
async fn inspecting_never_loads_a_room_and_a_live_room_tells_its_owner_and_members() {
    let node = node().await;
    let n1 = NodeId::parse("n1").expect("id");
    // Not live: only who would serve it.
    let cold = inspect(&node, ROOM).await;
    assert_eq!(cold, RoomInspection::not_live(Some(n1.clone())));
    assert_eq!(active_rooms(&node).await, Some(0), "inspecting loaded it");

    assert_eq!(ack_seq(&node.op("ann", "c1", message("one")).await), 1);
    assert!(matches!(
        node.join("bob", "bob-tab", None).await,
        RoomReply::Joined(_)
    ));
    let live = inspect(&node, ROOM).await;
    assert!(live.live);
    assert_eq!(live.node, Some(n1));
    assert_eq!(live.head, Some(Seq(1)));
    assert_eq!(
        live.term,
        node.sink.terms().last().copied(),
        "the term it publishes with"
    );
    let members: Vec<(String, String, String)> = live
        .members
        .iter()
        .map(|m| (m.user.to_string(), m.conn.to_string(), m.gateway.clone()))
        .collect();
    assert_eq!(
        members,
        [
            ("ann".into(), "ann".into(), "g1".into()),
            ("bob".into(), "bob-tab".into(), "g1".into())
        ]
    );
    assert_eq!(live.members[0].name, "ann");
    let op = node.sink.ops().pop().expect("the op was broadcast");
    assert_eq!(
        live.last_commit,
        Some(collab_protocol::http::LastCommit {
            seq: Seq(1),
            at: op.ts
        })
    );
    assert_eq!(live.mailbox_depth, 0);

    // A room this node no longer owns: not live here, and not its own.
    node.create("room2", RoomKind::Board, None).await;
    let owns: Ownership = Arc::new(|room: &RoomId| room.as_str() != "room2");
    node.supervisor
        .send_message(SupervisorMsg::Placement(owns))
        .unwrap_or_else(|_| panic!("supervisor is gone"));
    assert_eq!(
        inspect(&node, "room2").await,
        RoomInspection::not_live(None)
    );
}

#[tokio::test]
async fn an_operator_watching_a_room_does_not_keep_it_from_going_idle() {
    let store = Arc::new(GatedStore::new());
    let mut cfg = config();
    cfg.idle_after = Duration::from_millis(100);
    let node = node_with(store, cfg).await;
    node.create(ROOM, RoomKind::Board, None).await;
    node.op("ann", "c1", message("hello")).await;
    node.ask(RoomRequest::Leave {
        room: room_id(ROOM),
        conn: conn("ann"),
        dropped: false,
    })
    .await;
    // Inspected far more often than its idle time, it still stops.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while active_rooms(&node).await != Some(0) {
        assert!(tokio::time::Instant::now() < deadline, "room never stopped");
        inspect(&node, ROOM).await;
        tokio::time::sleep(Duration::from_millis(10)).await; // poll interval
    }
    let after = inspect(&node, ROOM).await;
    assert!(!after.live);
    assert_eq!(active_rooms(&node).await, Some(0));
}

/// Requests sent one after another reach their room in that order, whether
/// they wait for the room to start, go straight into its mailbox, or wait
/// for its actor to stop and go to its successor: a join sent first is
/// always there before the ops that follow it, and the ops get their seqs
/// in the order they were sent.
#[tokio::test]
async fn requests_keep_their_order_while_a_room_starts_lives_and_moves() {
    let node = node().await;
    let burst = |cids: std::ops::RangeInclusive<u64>| {
        let mut tasks = vec![node.send(RoomRequest::Join {
            room: room_id(ROOM),
            conn: conn("ann"),
            user: user_info("ann"),
            since: None,
            epoch: None,
            resume_strokes: false,
        })];
        for i in cids {
            let op = node.op_request(ROOM, "ann", &format!("c{i}"), message("hi"));
            tasks.push(node.send(op));
        }
        tasks
    };
    let check = |replies: Vec<RoomReply>, seqs: std::ops::RangeInclusive<u64>| {
        assert!(
            matches!(replies[0], RoomReply::Joined(_)),
            "{:?}",
            replies[0]
        );
        let acked: Vec<u64> = replies[1..].iter().map(ack_seq).collect();
        assert_eq!(acked, seqs.collect::<Vec<_>>());
    };

    // The room is not live: the first request starts it, the others wait
    // for it or, once it is live, go straight in.
    check(futures_join(burst(1..=20)).await, 1..=20);

    // A batch in flight keeps the room's actor from stopping when it is
    // handed off (and placed here again at once): what comes meanwhile
    // waits for it to stop and goes to its successor.
    node.store.hold(true);
    let in_flight = node.send(node.op_request(ROOM, "ann", "c21", message("hi")));
    eventually("the batch to reach the store", || node.store.waiting() == 1).await;
    let elsewhere: Ownership = Arc::new(|_: &RoomId| false);
    let mine: Ownership = Arc::new(|_: &RoomId| true);
    for owns in [elsewhere, mine] {
        node.supervisor
            .send_message(SupervisorMsg::Placement(owns))
            .unwrap_or_else(|_| panic!("supervisor is gone"));
    }
    // Answered after both placements: the room is stopping now.
    assert_eq!(active_rooms(&node).await, Some(0));
    let waiting = burst(22..=41);
    node.store.hold(false);
    node.store.release(1);
    assert_eq!(ack_seq(&in_flight.await.expect("task")), 21);
    check(futures_join(waiting).await, 22..=41);
}

#[tokio::test]
async fn published_ops_need_no_connection_and_are_applied_once() {
    let node = node().await;
    let publish = |cid: &str, text: &str| RoomRequest::Publish {
        room: room_id(ROOM),
        user: UserId::parse("bot").expect("id"),
        cid: Cid::parse(cid).expect("id"),
        op: Op::Message { text: text.into() },
    };
    // No join: a backend has no connection in the room.
    assert_eq!(ack_seq(&node.ask(publish("p1", "hello")).await), 1);
    assert_eq!(ack_seq(&node.ask(publish("p2", "again")).await), 2);
    // A retry is re-acked with its seq, whatever it carries, and not applied.
    assert_eq!(ack_seq(&node.ask(publish("p1", "other")).await), 1);
    let ops = node.sink.ops();
    assert_eq!(ops.len(), 2, "{ops:?}");
    assert_eq!(ops[0].user.as_str(), "bot");
    assert_eq!(ops[0].cid.as_ref().map(Cid::as_str), Some("p1"));
    // Validated like any op: an empty message is refused.
    let refused = node.ask(publish("p3", "")).await;
    assert_eq!(error_code(&refused), ErrorCode::BadRequest, "{refused:?}");
    // The window of cids is rebuilt by the next owner.
    let restarted = node_with(node.store.clone(), config()).await;
    assert_eq!(ack_seq(&restarted.ask(publish("p2", "again")).await), 2);
    assert_eq!(ack_seq(&restarted.ask(publish("p3", "new")).await), 3);
}

fn update(room: &str, name: Option<&str>, add: &[&str], remove: &[&str]) -> RoomRequest {
    let users = |ids: &[&str]| ids.iter().map(|u| UserId::parse(*u).expect("id")).collect();
    RoomRequest::Update {
        room: room_id(room),
        epoch: None,
        name: name.map(str::to_owned),
        add: users(add),
        remove: users(remove),
    }
}

/// A change of members is durable before it is answered, and a join sent
/// right behind it is checked against it: a removed member is refused at
/// once, an added one let in. The removed member's connections leave the
/// room's presence and the gateways hear `Removed`.
#[tokio::test]
async fn a_change_of_members_orders_joins_and_removes_the_removed() {
    let node = node().await;
    node.create("club", RoomKind::Channel, Some(vec!["bob", "cat"]))
        .await;
    node.enter("club", "bob").await;
    node.enter("club", "cat").await;
    let join = |who: &str, conn_id: &str| RoomRequest::Join {
        room: room_id("club"),
        conn: conn(conn_id),
        user: user_info(who),
        since: None,
        epoch: None,
        resume_strokes: false,
    };
    let changed = node.send(update("club", Some("the club"), &["dan"], &["bob"]));
    let bob_again = node.send(join("bob", "bob2"));
    let dan = node.send(join("dan", "dan"));
    let RoomReply::Updated(room) = changed.await.expect("task") else {
        panic!("expected the room back");
    };
    assert_eq!(room.name, "the club");
    let members = |ids: &[&str]| {
        Some(
            ids.iter()
                .map(|u| UserId::parse(*u).expect("id"))
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(room.members, members(&["cat", "dan"]));
    assert_eq!(
        error_code(&bob_again.await.expect("task")),
        ErrorCode::Forbidden
    );
    assert!(matches!(dan.await.expect("task"), RoomReply::Joined(_)));
    let stored = node
        .store
        .room(&room_id("club"))
        .await
        .expect("read")
        .expect("room");
    assert_eq!(stored.members, members(&["cat", "dan"]));
    assert_eq!(stored.name, "the club");
    let events = node.sink.events.lock().expect("lock").clone();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, RoomEvent::Removed { room, users }
            if *room == room_id("club") && users == &[UserId::parse("bob").expect("id")])),
        "the gateways are told: {events:?}"
    );
    assert!(
        node.sink
            .presence()
            .contains(&(PresenceEvent::Leave, "bob".into())),
        "the others hear bob left"
    );
    // Bob's connection is out of the room: its op is not taken.
    let op = node
        .ask(node.op_request("club", "bob", "b1", message("hi")))
        .await;
    assert_eq!(op, RoomReply::NotJoined);
    // Added back, bob joins again.
    assert!(matches!(
        node.ask(update("club", None, &["bob"], &[])).await,
        RoomReply::Updated(_)
    ));
    assert!(matches!(
        node.ask(join("bob", "bob3")).await,
        RoomReply::Joined(_)
    ));
}

/// Changes the room cannot take are refused and change nothing.
#[tokio::test]
async fn a_change_the_room_cannot_take_changes_nothing() {
    let node = node().await;
    node.create("club", RoomKind::Channel, Some(vec!["bob"]))
        .await;
    let before = node.store.room(&room_id("club")).await.expect("read");
    for (request, code) in [
        // The creator is always a member.
        (update("club", None, &[], &["ann"]), ErrorCode::BadRequest),
        (update("club", Some("  "), &[], &[]), ErrorCode::BadRequest),
        // A public room has no members to change.
        (update(ROOM, None, &["bob"], &[]), ErrorCode::BadRequest),
        (update("nope", Some("x"), &[], &[]), ErrorCode::NotFound),
        (
            RoomRequest::Update {
                room: room_id("club"),
                epoch: Some(Epoch::parse("other").expect("epoch")),
                name: Some("x".into()),
                add: Vec::new(),
                remove: Vec::new(),
            },
            ErrorCode::NotFound,
        ),
    ] {
        assert_eq!(
            error_code(&node.ask(request.clone()).await),
            code,
            "{request:?}"
        );
    }
    assert_eq!(
        node.store.room(&room_id("club")).await.expect("read"),
        before
    );
    // A public room can be renamed.
    let RoomReply::Updated(room) = node.ask(update(ROOM, Some("lobby"), &[], &[])).await else {
        panic!("expected the room back");
    };
    assert_eq!((room.name.as_str(), room.members), ("lobby", None));
}

#[tokio::test]
async fn a_snapshot_is_the_committed_state_and_joins_nobody() {
    let node = node().await;
    node.enter(ROOM, "ann").await;
    assert_eq!(ack_seq(&node.op("ann", "c1", message("one")).await), 1);
    node.store.hold(true);
    let second = node.send(node.op_request(ROOM, "ann", "c2", message("two")));
    eventually("the second batch to reach the store", || {
        node.store.waiting() == 1
    })
    .await;
    let snapshot = |who: &str| RoomRequest::Snapshot {
        room: room_id(ROOM),
        user: UserId::parse(who).expect("id"),
    };
    // Like a join, it waits for the batch in flight.
    let during = node.send(snapshot("bob"));
    let probe = node.send(RoomRequest::Fetch {
        room: room_id(ROOM),
        after: Seq::ZERO,
        limit: 10,
    });
    assert!(matches!(probe.await.expect("probe"), RoomReply::Ops { .. }));
    assert!(
        !during.is_finished(),
        "a snapshot while a batch was in flight"
    );
    node.store.hold(false);
    node.store.release(1);
    assert_eq!(ack_seq(&second.await.expect("reply")), 2);
    match during.await.expect("snapshot") {
        RoomReply::Joined(body) => {
            assert!(body.reset);
            assert_eq!(body.head, Seq(2));
            let texts: Vec<_> = body
                .state
                .expect("state")
                .messages
                .iter()
                .map(|m| m.seq.get())
                .collect();
            assert_eq!(texts, [1, 2], "exactly the committed ops");
        }
        other => panic!("{other:?}"),
    }
    // Asking joined nobody: bob is not in the presence, nobody heard of him.
    assert!(
        !node.sink.presence().iter().any(|(_, who)| who == "bob"),
        "{:?}",
        node.sink.presence()
    );
    match node.join("cat", "c-1", None).await {
        RoomReply::Joined(body) => {
            let present: Vec<_> = body
                .presence
                .iter()
                .map(|u| u.id.as_str().to_owned())
                .collect();
            assert_eq!(present, ["ann", "cat"]);
        }
        other => panic!("{other:?}"),
    }

    // A private room: only its members may have its state.
    node.create("secret", RoomKind::Channel, Some(vec!["bob"]))
        .await;
    let private = |who: &str| RoomRequest::Snapshot {
        room: room_id("secret"),
        user: UserId::parse(who).expect("id"),
    };
    assert_eq!(
        error_code(&node.ask(private("eve")).await),
        ErrorCode::Forbidden
    );
    assert!(matches!(
        node.ask(private("bob")).await,
        RoomReply::Joined(_)
    ));
    let nowhere = RoomRequest::Snapshot {
        room: room_id("nope"),
        user: UserId::parse("ann").expect("id"),
    };
    assert_eq!(error_code(&node.ask(nowhere).await), ErrorCode::NotFound);
}
