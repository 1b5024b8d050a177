//! Token revocation and presence on a real `collab serve`, whose shared
//! state lives in its own memory: `POST /v1/admin/revocations` closes the
//! sockets of the revoked tokens with 4001 at once and refuses them from
//! then on, at the upgrade and on HTTP, while every other token goes on;
//! the tokens `collab token` and the dev endpoint mint carry a `jti` and
//! an `iat`; `GET /v1/users/{id}/presence` and `GET /v1/rooms/{id}/presence`
//! follow clients as they join and leave. The same across gateway
//! processes sharing a Redis is in `cluster_redis.rs`.

use std::time::{Duration, Instant};

use collab_tests::harness::{CollabServer, DEADLINE, ServerOptions, WsClient, upgrade_status};
use serde_json::{Value, json};

const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// How soon a revoked token's sockets must close (DESIGN.md, invariant 9).
const REVOCATION_DEADLINE: Duration = Duration::from_secs(1);

/// The claims of `token`, unverified (the test only reads them).
fn claims(token: &str) -> Value {
    jsonwebtoken::dangerous::insecure_decode::<Value>(token)
        .expect("a JWT")
        .claims
}

/// Connects with `token` and joins `room`.
async fn join(server: &CollabServer, token: &str, room: &str) -> WsClient {
    let mut ws = WsClient::connect(&server.ws_url(), token)
        .await
        .expect("connects");
    ws.recv_type("welcome", FRAME_TIMEOUT)
        .await
        .expect("welcome");
    ws.send_json(&json!({"type": "join", "room": room}))
        .await
        .expect("sent");
    ws.recv_type("joined", FRAME_TIMEOUT).await.expect("joined");
    ws
}

/// Sends a chat message and waits for its ack.
async fn send_acked(ws: &mut WsClient, room: &str, cid: &str) {
    ws.send_json(&json!({"type": "op", "room": room, "cid": cid,
                         "op": {"kind": "message", "text": "still here"}}))
        .await
        .expect("sent");
    ws.recv_until(FRAME_TIMEOUT, |f| f["type"] == "ack" && f["cid"] == cid)
        .await
        .unwrap_or_else(|e| panic!("no ack for {cid}: {e}"));
}

async fn post(server: &CollabServer, token: &str, path: &str, body: &Value) -> (u16, Value) {
    let response = server
        .http()
        .post(format!("{}{path}", server.http_url()))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("answered");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Polls `GET path` until `check` accepts the 200 body.
async fn wait_for_body(
    server: &CollabServer,
    token: &str,
    path: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (status, body) = server.get_json(token, path).await.expect("answered");
        if status == 200 && check(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{what}: still {status} {body}");
        tokio::time::sleep(Duration::from_millis(20)).await; // poll interval
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_closed_with_4001_and_refused_from_then_on() {
    let server = CollabServer::start(ServerOptions::new()).expect("server starts");
    let admin = server.mint_token("operator", &["--admin"]).expect("admin");
    let ann = server.mint_token("ann", &[]).expect("token");
    let ann_other = server.mint_token("ann", &[]).expect("token");
    let bob = server.dev_token("bob").await.expect("dev token");
    // Both kinds of token carry an id of their own and their issue time.
    let (ann_jti, bob_jti) = (claims(&ann)["jti"].clone(), claims(&bob)["jti"].clone());
    for c in [claims(&ann), claims(&ann_other), claims(&bob)] {
        assert!(c["jti"].as_str().is_some_and(|j| j.len() == 32), "{c}");
        assert!(c["iat"].as_u64().is_some(), "{c}");
    }
    assert_ne!(ann_jti, claims(&ann_other)["jti"]);
    assert_ne!(ann_jti, bob_jti);

    server
        .create_room(&admin, &json!({"kind": "channel", "id": "talk"}))
        .await
        .expect("room");
    let mut ann_tab1 = join(&server, &ann, "talk").await;
    let mut ann_tab2 = join(&server, &ann, "talk").await;
    let mut ann_phone = join(&server, &ann_other, "talk").await;
    let mut bob_ws = join(&server, &bob, "talk").await;

    let started = Instant::now();
    let (status, body) = post(
        &server,
        &admin,
        "/v1/admin/revocations",
        &json!({"jti": ann_jti}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["kind"], "token");
    assert_eq!(body["jti"], ann_jti);
    for tab in [&mut ann_tab1, &mut ann_tab2] {
        let code = tab.recv_close(DEADLINE).await.expect("a close frame");
        assert_eq!(code, Some(4001));
    }
    let took = started.elapsed();
    assert!(took < REVOCATION_DEADLINE, "closed after {took:?}");

    // Refused from now on, at the upgrade and over HTTP.
    assert_eq!(
        upgrade_status(&server.ws_url(), Some(&ann))
            .await
            .expect("answered"),
        401
    );
    let (status, body) = server
        .get_json(&ann, "/v1/rooms/talk")
        .await
        .expect("answered");
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");
    // The user's other token, and other users, go on.
    send_acked(&mut ann_phone, "talk", "p1").await;
    send_acked(&mut bob_ws, "talk", "b1").await;
    let (status, _) = server
        .get_json(&bob, "/v1/rooms/talk")
        .await
        .expect("answered");
    assert_eq!(status, 200);

    // Every token of a user issued before a time: the cut-off is in whole
    // seconds, so it comes once the clock is past bob's token's second.
    let bob_iat = claims(&bob)["iat"].as_u64().expect("iat");
    let (status, body) = post(
        &server,
        &admin,
        "/v1/admin/revocations",
        &json!({"user": "bob", "issued_before": bob_iat + 1}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["kind"], "user");
    assert_eq!(
        bob_ws.recv_close(DEADLINE).await.expect("a close frame"),
        Some(4001)
    );
    assert_eq!(
        upgrade_status(&server.ws_url(), Some(&bob))
            .await
            .expect("answered"),
        401
    );
    send_acked(&mut ann_phone, "talk", "p2").await;

    // Counted as revocation closes, and as disconnects of a 4001.
    let metrics = server.metrics_page().await;
    let sample = collab_tests::metrics::sample(&metrics, "collab_gateway_revocation_closes_total")
        .expect("the revocation closes");
    assert_eq!(sample, 3.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_follows_users_across_rooms_and_rooms_show_who_is_there() {
    let server = CollabServer::start(ServerOptions::new()).expect("server starts");
    let admin = server.mint_token("operator", &["--admin"]).expect("admin");
    let ann = server
        .dev_token_named("ann", Some("Ann"))
        .await
        .expect("token");
    let bob = server.dev_token("bob").await.expect("token");
    for id in ["a", "b"] {
        server
            .create_room(&admin, &json!({"kind": "board", "id": id}))
            .await
            .expect("room");
    }
    let offline = json!({"user": "ann", "online": false, "connections": 0,
                         "gateways": [], "rooms": []});
    let (status, body) = server
        .get_json(&ann, "/v1/users/ann/presence")
        .await
        .expect("answered");
    assert_eq!((status, &body), (200, &offline));

    let ann_a = join(&server, &ann, "a").await;
    let mut ann_b = join(&server, &ann, "b").await;
    let bob_a = join(&server, &bob, "a").await;
    let online = wait_for_body(
        &server,
        &ann,
        "/v1/users/ann/presence",
        "ann in a and b",
        |b| b["connections"] == 2 && b["rooms"] == json!(["a", "b"]),
    )
    .await;
    assert_eq!(online["online"], true);
    assert_eq!(online["gateways"], json!(["local"]));
    // An admin may look too; another user may not.
    let (status, _) = server
        .get_json(&admin, "/v1/users/ann/presence")
        .await
        .expect("answered");
    assert_eq!(status, 200);
    let (status, body) = server
        .get_json(&bob, "/v1/users/ann/presence")
        .await
        .expect("answered");
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (403, json!("forbidden"))
    );

    // A room's presence is for its readers: one entry per user.
    let room_a = wait_for_body(
        &server,
        &bob,
        "/v1/rooms/a/presence",
        "ann and bob in a",
        |b| b["users"].as_array().is_some_and(|u| u.len() == 2),
    )
    .await;
    assert_eq!(room_a["users"][0]["id"], "ann");
    assert_eq!(room_a["users"][0]["name"], "Ann");
    assert_eq!(room_a["users"][0]["connections"], 1);
    assert_eq!(room_a["users"][1]["id"], "bob");

    // Leaving a room and closing sockets show.
    ann_b
        .send_json(&json!({"type": "leave", "room": "b"}))
        .await
        .expect("sent");
    wait_for_body(
        &server,
        &ann,
        "/v1/users/ann/presence",
        "ann in a only",
        |b| b["rooms"] == json!(["a"]) && b["connections"] == 2,
    )
    .await;
    ann_a.close().await.expect("closes");
    ann_b.close().await.expect("closes");
    wait_for_body(
        &server,
        &ann,
        "/v1/users/ann/presence",
        "ann offline",
        |b| *b == offline,
    )
    .await;
    wait_for_body(
        &server,
        &bob,
        "/v1/rooms/a/presence",
        "bob alone in a",
        |b| b["users"].as_array().is_some_and(|u| u.len() == 1) && b["users"][0]["id"] == "bob",
    )
    .await;
    drop(bob_a);
}
