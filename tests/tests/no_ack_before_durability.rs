//! Neither `ack` nor `op` leaves the server before the store has made the
//! op durable.
//!
//! The server here is `collab serve`'s (`collab::serve::Server`), run in
//! this process over real sockets, with a store in front of the real one
//! that holds every append until the test releases it.

use std::sync::Arc;
use std::time::Duration;

use collab::config::{CollabConfig, Secret};
use collab::serve::{Server, ServerStore};
use collab_bus::InProcessBus;
use collab_gateway::Auth;
use collab_protocol::{Claims, Epoch, RoomId, RoomKind, UserId};
use collab_store::testsuite::GatedStore;
use collab_store::{RoomCatalog, RoomRecord};
use collab_tests::harness::WsClient;
use serde_json::json;

const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
const SECRET: &str = "test-secret";

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

/// `collab serve`'s server in this process over the held store, serving
/// one board `held`; returns the store and the WebSocket URL and a token
/// maker.
async fn start() -> (Arc<GatedStore>, String, Auth) {
    let store = Arc::new(GatedStore::new());
    store.hold(true);
    store
        .create_room(&RoomRecord {
            id: RoomId::parse("held").expect("id"),
            kind: RoomKind::Board,
            name: "held".into(),
            epoch: Epoch::parse("e1").expect("epoch"),
            created_by: UserId::parse("ann").expect("id"),
            members: None,
            created_at: 0,
            ttl_secs: None,
            floor: collab_protocol::Seq::ZERO,
        })
        .await
        .expect("room");
    let config = CollabConfig {
        jwt_secret: Some(Secret::new(SECRET)),
        ..CollabConfig::default()
    };
    let server = Server::build(
        &config,
        ServerStore::new(store.clone(), "held"),
        Arc::new(InProcessBus::new()),
    )
    .await
    .expect("server");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(server.run(listener, std::future::pending()));
    (
        store,
        format!("ws://{addr}/v1/ws"),
        Auth::new(SECRET.as_bytes(), false),
    )
}

fn token(auth: &Auth, user: &str) -> String {
    auth.mint(&Claims {
        sub: user.into(),
        exp: collab_gateway::now_secs() + 600,
        name: None,
        rooms: None,
        scope: None,
        jti: None,
        iat: None,
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
    eventually("the op to reach the store", || store.waiting() == 1).await;
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
    assert_eq!(store.appended(), 0);

    store.release(1);
    let ack = ann.recv_type("ack", FRAME_TIMEOUT).await.expect("ack");
    assert_eq!(ack["seq"], 1);
    assert_eq!(store.appended(), 1, "acked before the append returned");
    let op = bob.recv_type("op", FRAME_TIMEOUT).await.expect("op");
    assert_eq!(op["seq"], 1);
    assert_eq!(op["cid"], "c1");
    store.release(1000);
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
    store.release(1000);
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
