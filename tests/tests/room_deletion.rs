//! Deleting rooms in `collab serve` as a real process: over HTTP by their
//! creator (the members in the room hear `not_found` and are let go, the
//! room and its history are gone, the id can be used again), and by
//! expiry (a room with a time to live is deleted once nobody has used it
//! for that long, and never while it is in use).

use std::time::{Duration, Instant};

use collab_tests::harness::{CollabServer, DEADLINE, ServerOptions, WsClient};
use serde_json::{Value, json};

/// Frames and answers arrive in milliseconds; this only bounds a failure.
const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

async fn connect(server: &CollabServer, token: &str) -> WsClient {
    let mut client = WsClient::connect(&server.ws_url(), token)
        .await
        .expect("connects");
    let welcome = client.recv_json(FRAME_TIMEOUT).await.expect("welcome");
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    client
}

/// Sends `join` and returns the answer: `joined` or an `error`.
async fn join(client: &mut WsClient, join: Value) -> Value {
    client.send_json(&join).await.expect("sent");
    client
        .recv_until(FRAME_TIMEOUT, |f| {
            f["type"] == "joined" || f["type"] == "error"
        })
        .await
        .expect("an answer to join")
}

/// Sends an op and returns the answer for its cid: `ack` or `error`.
async fn op(client: &mut WsClient, room: &str, cid: &str, text: &str) -> Value {
    let frame = json!({"type": "op", "room": room, "cid": cid,
        "op": {"kind": "message", "text": text}});
    client.send_json(&frame).await.expect("sent");
    client
        .recv_until(FRAME_TIMEOUT, |f| {
            (f["type"] == "ack" || f["type"] == "error") && f["cid"] == cid
        })
        .await
        .expect("an answer to the op")
}

async fn delete(server: &CollabServer, token: &str, room: &str) -> u16 {
    server
        .http()
        .delete(format!("{}/v1/rooms/{room}", server.http_url()))
        .bearer_auth(token)
        .send()
        .await
        .expect("answered")
        .status()
        .as_u16()
}

async fn status_of(server: &CollabServer, token: &str, path: &str) -> u16 {
    server.get_json(token, path).await.expect("answered").0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_deleted_by_its_creator_is_gone_and_its_members_are_told() {
    let server = CollabServer::start(ServerOptions::new()).expect("collab serve starts");
    let ann = server.dev_token("ann").await.expect("token");
    let bob = server.dev_token("bob").await.expect("token");
    let created = server
        .create_room(&ann, &json!({"kind": "channel", "id": "doomed"}))
        .await
        .expect("created");
    let old_epoch = created["epoch"].as_str().expect("epoch").to_owned();
    let mut ann_ws = connect(&server, &ann).await;
    let mut bob_ws = connect(&server, &bob).await;
    for client in [&mut ann_ws, &mut bob_ws] {
        let joined = join(client, json!({"type": "join", "room": "doomed"})).await;
        assert_eq!(joined["type"], "joined", "{joined}");
    }
    for i in 1..=3 {
        let ack = op(&mut bob_ws, "doomed", &format!("b{i}"), "hello").await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }

    assert_eq!(delete(&server, &bob, "doomed").await, 403, "not bob's room");
    assert_eq!(delete(&server, &ann, "nowhere").await, 404);
    assert_eq!(delete(&server, &ann, "doomed").await, 204);

    for client in [&mut ann_ws, &mut bob_ws] {
        let told = client
            .recv_until(FRAME_TIMEOUT, |f| f["type"] == "error")
            .await
            .expect("told");
        assert_eq!(
            (told["code"].as_str(), told["room"].as_str()),
            (Some("not_found"), Some("doomed")),
            "{told}"
        );
    }
    // Let go: an op is refused as for a room never joined, a join finds
    // nothing, and so does HTTP.
    let refused = op(&mut bob_ws, "doomed", "b4", "anyone?").await;
    assert_eq!(refused["code"], "bad_request", "{refused}");
    let again = join(&mut bob_ws, json!({"type": "join", "room": "doomed"})).await;
    assert_eq!(again["code"], "not_found", "{again}");
    for path in ["/v1/rooms/doomed", "/v1/rooms/doomed/history"] {
        assert_eq!(status_of(&server, &ann, path).await, 404, "{path}");
    }
    assert_eq!(delete(&server, &ann, "doomed").await, 404);

    // The id is free: a new room, and a client that remembers the old
    // epoch is reset to it.
    let again = server
        .create_room(&bob, &json!({"kind": "channel", "id": "doomed"}))
        .await
        .expect("created again");
    assert_ne!(again["epoch"].as_str(), Some(old_epoch.as_str()));
    let joined = join(
        &mut ann_ws,
        json!({"type": "join", "room": "doomed", "since": 3, "epoch": old_epoch}),
    )
    .await;
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(joined["reset"], true, "{joined}");
    assert_eq!(joined["state"]["messages"], json!([]), "{joined}");
    let ack = op(&mut ann_ws, "doomed", "a1", "fresh").await;
    assert_eq!(ack["seq"], 5, "after the old room's tombstone at 4: {ack}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_unused_for_its_time_to_live_is_deleted() {
    let server = CollabServer::start(
        ServerOptions::new()
            .env("COLLAB_ROOMS__IDLE_AFTER_SECS", "1")
            .env("COLLAB_ROOMS__EXPIRY_SWEEP_SECS", "1"),
    )
    .expect("collab serve starts");
    let ann = server.dev_token("ann").await.expect("token");
    for (id, ttl) in [("brief", json!(1)), ("forever", Value::Null)] {
        let mut body = json!({"kind": "channel", "id": id});
        if !ttl.is_null() {
            body["ttl_secs"] = ttl;
        }
        server.create_room(&ann, &body).await.expect("created");
    }
    let (status, info) = server
        .get_json(&ann, "/v1/rooms/brief")
        .await
        .expect("info");
    assert_eq!(
        (status, info["ttl_secs"].as_u64()),
        (200, Some(1)),
        "{info}"
    );

    // In use for several times its time to live: never deleted meanwhile.
    let mut client = connect(&server, &ann).await;
    let joined = join(&mut client, json!({"type": "join", "room": "brief"})).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    let busy_until = Instant::now() + Duration::from_secs(4);
    let mut sent = 0;
    while Instant::now() < busy_until {
        sent += 1;
        let ack = op(&mut client, "brief", &format!("c{sent}"), "still here").await;
        assert_eq!(ack["type"], "ack", "op {sent}: {ack}");
        // Pacing of the workload, not a wait for a state.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    client.close().await.expect("closed");

    // Left alone: deleted within its time to live, the idle time and a
    // sweep or two.
    let deadline = Instant::now() + DEADLINE;
    while status_of(&server, &ann, "/v1/rooms/brief").await != 404 {
        assert!(
            Instant::now() < deadline,
            "the unused room was never deleted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await; // poll interval
    }
    assert_eq!(
        status_of(&server, &ann, "/v1/rooms/brief/history").await,
        404
    );
    let mut client = connect(&server, &ann).await;
    let refused = join(&mut client, json!({"type": "join", "room": "brief"})).await;
    assert_eq!(refused["code"], "not_found", "{refused}");
    assert_eq!(status_of(&server, &ann, "/v1/rooms/forever").await, 200);
    assert!(
        server
            .logs()
            .iter()
            .any(|line| line.contains("room expired")),
        "the deletion is logged"
    );
}
