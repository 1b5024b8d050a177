//! Neither `ack` nor `op` leaves the server before the store has made the
//! op durable.
//!
//! The server here is the same gateway and room node `collab serve` runs,
//! composed in this process over real sockets, with a store in front of
//! the real one that holds every append until the test releases it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use collab_bus::{Bus, InProcessBus};
use collab_gateway::{Auth, Gateway, GatewayConfig, GatewayMetrics, Readiness};
use collab_protocol::{Claims, Epoch, NodeId, OpEvent, OpKind, RoomId, RoomKind, Seq, UserId};
use collab_room_node::{RoomNode, RoomNodeConfig};
use collab_store::{LoggedOp, MemoryStore, RoomRecord, Snapshot, Store, StoreResult, Writer};
use collab_tests::harness::WsClient;
use serde_json::json;
use tokio::sync::Semaphore;

const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// Holds each append until a permit is released.
struct HeldStore {
    inner: MemoryStore,
    gate: Semaphore,
    waiting: AtomicUsize,
    done: AtomicUsize,
}

#[async_trait]
impl Store for HeldStore {
    async fn create_room(&self, room: &RoomRecord) -> StoreResult<()> {
        self.inner.create_room(room).await
    }
    async fn room(&self, id: &RoomId) -> StoreResult<Option<RoomRecord>> {
        self.inner.room(id).await
    }
    async fn rooms_of_user(&self, user: &UserId) -> StoreResult<Vec<RoomRecord>> {
        self.inner.rooms_of_user(user).await
    }
    async fn append(
        &self,
        room: &RoomId,
        first: Seq,
        batch: &[OpEvent],
        writer: &Writer,
    ) -> StoreResult<()> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let permit = self.gate.acquire().await;
        drop(permit.map(|p| p.forget()));
        let result = self.inner.append(room, first, batch, writer).await;
        self.done.fetch_add(1, Ordering::SeqCst);
        result
    }
    async fn head(&self, room: &RoomId) -> StoreResult<Seq> {
        self.inner.head(room).await
    }
    async fn read_log(
        &self,
        room: &RoomId,
        after: Seq,
        limit: usize,
    ) -> StoreResult<Vec<LoggedOp>> {
        self.inner.read_log(room, after, limit).await
    }
    async fn history(
        &self,
        room: &RoomId,
        before: Seq,
        limit: usize,
        kinds: Option<&[OpKind]>,
    ) -> StoreResult<Vec<OpEvent>> {
        self.inner.history(room, before, limit, kinds).await
    }
    async fn put_snapshot(&self, room: &RoomId, snapshot: &Snapshot) -> StoreResult<()> {
        self.inner.put_snapshot(room, snapshot).await
    }
    async fn latest_snapshot(&self, room: &RoomId) -> StoreResult<Option<Snapshot>> {
        self.inner.latest_snapshot(room).await
    }
}

struct AlwaysReady;

#[async_trait]
impl Readiness for AlwaysReady {
    async fn ready(&self) -> bool {
        true
    }
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await; // poll interval
    }
}

/// A gateway and room node in this process over the held store, serving
/// one board `held`; returns the store and the WebSocket URL and a token
/// maker.
async fn start() -> (Arc<HeldStore>, String, Auth) {
    let store = Arc::new(HeldStore {
        inner: MemoryStore::new(),
        gate: Semaphore::new(0),
        waiting: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
    });
    store
        .create_room(&RoomRecord {
            id: RoomId::parse("held").expect("id"),
            kind: RoomKind::Board,
            name: "held".into(),
            epoch: Epoch::parse("e1").expect("epoch"),
            created_by: UserId::parse("ann").expect("id"),
            members: None,
            created_at: 0,
        })
        .await
        .expect("room");
    let bus: Arc<dyn Bus> = Arc::new(InProcessBus::new());
    let _node = RoomNode::start(
        RoomNodeConfig::new(NodeId::parse("n1").expect("id")),
        store.clone(),
        bus.clone(),
    )
    .await
    .expect("room node");
    let secret = b"test-secret";
    let auth = Auth::new(secret, false);
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = GatewayMetrics::register(&mut registry);
    let gateway = Gateway::new(
        GatewayConfig::default(),
        auth.clone(),
        bus,
        store.clone(),
        Arc::new(AlwaysReady),
        metrics,
        Arc::new(registry),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let serving = gateway.clone();
    tokio::spawn(async move { serving.serve(listener, std::future::pending()).await });
    (store, format!("ws://{addr}/v1/ws"), auth)
}

fn token(auth: &Auth, user: &str) -> String {
    auth.mint(&Claims {
        sub: user.into(),
        exp: collab_gateway::now_secs() + 600,
        name: None,
        rooms: None,
    })
    .expect("token")
}

async fn joined(url: &str, token: &str) -> WsClient {
    let mut client = WsClient::connect(url, token).await.expect("connects");
    client
        .recv_type("welcome", FRAME_TIMEOUT)
        .await
        .expect("welcome");
    client
        .send_json(&json!({"type": "join", "room": "held"}))
        .await
        .expect("join");
    client
        .recv_type("joined", FRAME_TIMEOUT)
        .await
        .expect("joined");
    client
}

#[tokio::test]
async fn no_ack_and_no_broadcast_before_the_store_confirms() {
    let (store, url, auth) = start().await;
    let mut ann = joined(&url, &token(&auth, "ann")).await;
    let mut bob = joined(&url, &token(&auth, "bob")).await;

    ann.send_json(&json!({"type": "op", "room": "held", "cid": "c1", "op": {"kind": "message", "text": "hi"}}))
        .await
        .expect("op");
    eventually("the op to reach the store", || {
        store.waiting.load(Ordering::SeqCst) == 1
    })
    .await;
    // The server answers pings while the append is held: whatever it sent
    // before the pong is all it has sent.
    for client in [&mut ann, &mut bob] {
        client
            .send_json(&json!({"type": "ping", "id": 1}))
            .await
            .expect("ping");
        let frame = client
            .recv_until(FRAME_TIMEOUT, |f| f["type"] != "presence")
            .await
            .expect("a frame");
        assert_eq!(
            frame["type"], "pong",
            "sent before the store confirmed: {frame}"
        );
    }
    assert_eq!(store.done.load(Ordering::SeqCst), 0);

    store.gate.add_permits(1);
    let ack = ann.recv_type("ack", FRAME_TIMEOUT).await.expect("ack");
    assert_eq!(ack["seq"], 1);
    assert_eq!(
        store.done.load(Ordering::SeqCst),
        1,
        "acked before the append returned"
    );
    let op = bob.recv_type("op", FRAME_TIMEOUT).await.expect("op");
    assert_eq!(op["seq"], 1);
    assert_eq!(op["cid"], "c1");
    store.gate.add_permits(1000);
}

#[tokio::test]
async fn at_most_64_ops_wait_for_their_ack() {
    let (store, url, auth) = start().await;
    let mut ann = joined(&url, &token(&auth, "ann")).await;
    for i in 0..70 {
        ann.send_json(&json!({"type": "op", "room": "held", "cid": format!("c{i}"), "op": {"kind": "message", "text": "x"}}))
            .await
            .expect("op");
    }
    // The first 64 are with the room (held by the store); the rest are
    // refused at once.
    let mut refused = Vec::new();
    while refused.len() < 6 {
        let frame = ann.recv_json(FRAME_TIMEOUT).await.expect("frame");
        if frame["type"] == "error" {
            assert_eq!(frame["code"], "rate_limited", "{frame}");
            refused.push(frame["cid"].as_str().unwrap_or_default().to_owned());
        } else {
            assert_ne!(
                frame["type"], "ack",
                "acked while the store held it: {frame}"
            );
        }
    }
    let expected: Vec<String> = (64..70).map(|i| format!("c{i}")).collect();
    assert_eq!(refused, expected);
    store.gate.add_permits(1000);
    let mut acked = 0;
    while acked < 64 {
        let frame = ann.recv_json(FRAME_TIMEOUT).await.expect("frame");
        if frame["type"] == "ack" {
            acked += 1;
        }
    }
    // With the acks back, ops are accepted again.
    ann.send_json(&json!({"type": "op", "room": "held", "cid": "again", "op": {"kind": "message", "text": "x"}}))
        .await
        .expect("op");
    let ack = ann.recv_type("ack", FRAME_TIMEOUT).await.expect("ack");
    assert_eq!(ack["cid"], "again");
    assert_eq!(ack["seq"], 65);
}
