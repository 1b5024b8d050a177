//! The gateway's limits on a real `collab serve`: per-user rate limits for
//! ops, joins and room creation; a token that expires mid-connection
//! (4001); a peer that goes silent (1001).

use std::time::Duration;

use collab_tests::harness::{CollabServer, ServerOptions, WsClient};
use serde_json::{Value, json};

const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

async fn connect(server: &CollabServer, token: &str) -> WsClient {
    let mut client = WsClient::connect(&server.ws_url(), token)
        .await
        .expect("connects");
    client
        .recv_type("welcome", FRAME_TIMEOUT)
        .await
        .expect("welcome");
    client
}

async fn join(client: &mut WsClient, room: &str) -> Value {
    client
        .send_json(&json!({"type": "join", "room": room}))
        .await
        .expect("sends");
    client
        .recv_until(FRAME_TIMEOUT, |f| {
            f["type"] == "joined" || f["type"] == "error"
        })
        .await
        .expect("answer")
}

#[tokio::test]
async fn ops_over_the_rate_are_refused_and_not_stored() {
    let server = CollabServer::start(
        ServerOptions::new()
            .env("COLLAB_GATEWAY__RATE_LIMITS__OPS_PER_SEC", "0.001")
            .env("COLLAB_GATEWAY__RATE_LIMITS__OPS_BURST", "5"),
    )
    .expect("starts");
    let token = server.dev_token("ann").await.expect("token");
    server
        .create_room(&token, &json!({"kind": "channel", "id": "rated"}))
        .await
        .expect("room");
    let mut ann = connect(&server, &token).await;
    assert_eq!(join(&mut ann, "rated").await["type"], "joined");
    for i in 0..8 {
        ann.send_json(&json!({"type": "op", "room": "rated", "cid": format!("c{i}"), "op": {"kind": "message", "text": "x"}}))
            .await
            .expect("sends");
    }
    let mut acked = 0;
    let mut limited = Vec::new();
    while acked + limited.len() < 8 {
        let frame = ann.recv_json(FRAME_TIMEOUT).await.expect("frame");
        match frame["type"].as_str() {
            Some("ack") => acked += 1,
            Some("error") => {
                assert_eq!(frame["code"], "rate_limited", "{frame}");
                limited.push(frame["cid"].as_str().unwrap_or_default().to_owned());
            }
            _ => {}
        }
    }
    assert_eq!(acked, 5);
    assert_eq!(limited, ["c5", "c6", "c7"]);
    let (_, info) = server
        .get_json(&token, "/v1/rooms/rated")
        .await
        .expect("info");
    assert_eq!(info["head"], 5);
}

#[tokio::test]
async fn joins_and_room_creation_over_the_rate_are_refused() {
    let server = CollabServer::start(
        ServerOptions::new()
            .env("COLLAB_GATEWAY__RATE_LIMITS__JOINS_PER_SEC", "0.001")
            .env("COLLAB_GATEWAY__RATE_LIMITS__JOINS_BURST", "2")
            .env("COLLAB_GATEWAY__RATE_LIMITS__ROOMS_PER_MIN", "0.001")
            .env("COLLAB_GATEWAY__RATE_LIMITS__ROOMS_BURST", "2"),
    )
    .expect("starts");
    let token = server.dev_token("ann").await.expect("token");
    for id in ["r1", "r2"] {
        server
            .create_room(&token, &json!({"kind": "board", "id": id}))
            .await
            .expect("room");
    }
    let third = server
        .http()
        .post(format!("{}/v1/rooms", server.http_url()))
        .bearer_auth(&token)
        .json(&json!({"kind": "board", "id": "r3"}))
        .send()
        .await
        .expect("answered");
    assert_eq!(third.status().as_u16(), 429);
    let body: Value = third.json().await.expect("json");
    assert_eq!(body["error"]["code"], "rate_limited");
    let (status, _) = server
        .get_json(&token, "/v1/rooms/r3")
        .await
        .expect("answer");
    assert_eq!(status, 404, "a refused creation created nothing");

    let mut ann = connect(&server, &token).await;
    assert_eq!(join(&mut ann, "r1").await["type"], "joined");
    assert_eq!(join(&mut ann, "r2").await["type"], "joined");
    let refused = join(&mut ann, "r1").await;
    assert_eq!(refused["code"], "rate_limited");
    assert_eq!(refused["room"], "r1");
}

#[tokio::test]
async fn an_expiring_token_closes_its_connection_with_4001() {
    let server =
        CollabServer::start(ServerOptions::new().jwt_secret("limits-secret")).expect("starts");
    let token = server
        .mint_token("ann", &["--ttl-secs", "2"])
        .expect("token");
    let mut ann = connect(&server, &token).await;
    let code = ann.recv_close(FRAME_TIMEOUT).await.expect("closed");
    assert_eq!(code, Some(4001));
}

#[tokio::test]
async fn a_silent_peer_is_closed_with_1001() {
    let server = CollabServer::start(
        ServerOptions::new()
            .env("COLLAB_GATEWAY__IDLE_TIMEOUT_SECS", "1")
            .env("COLLAB_GATEWAY__PING_INTERVAL_SECS", "30"),
    )
    .expect("starts");
    let token = server.dev_token("ann").await.expect("token");
    let mut quiet = connect(&server, &token).await;
    // Not reading means not answering pings either: the peer is silent.
    // Wait for the server to count the connection gone, then read.
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    loop {
        let text = server.metrics_page().await;
        if text.contains("collab_gateway_connections 0") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never closed");
        tokio::time::sleep(Duration::from_millis(50)).await; // poll interval
    }
    assert_eq!(
        quiet.recv_close(FRAME_TIMEOUT).await.expect("closed"),
        Some(1001)
    );
}
