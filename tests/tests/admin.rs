//! The operators' inspection endpoints of a real `collab serve`: a token
//! minted with `collab token --admin` (or a dev token asking for the admin
//! scope) sees a room's owner, term, head, members and newest op, and the
//! one local node with the rooms and connections it holds; the figures
//! follow clients as they join, send ops and leave. Without the scope the
//! endpoints answer 403.

use std::time::{Duration, Instant};

use collab_tests::harness::{CollabServer, DEADLINE, ServerOptions, WsClient};
use serde_json::{Value, json};

const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// `GET path` as the holder of `token`, expecting 200: the body.
async fn get_ok(server: &CollabServer, token: &str, path: &str) -> Value {
    let (status, body) = server.get_json(token, path).await.expect("answered");
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

/// Polls `GET path` until `check` accepts the body; fails with the last
/// body after the deadline.
async fn wait_for_body(
    server: &CollabServer,
    token: &str,
    path: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let body = get_ok(server, token, path).await;
        if check(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{what}: still {body}");
        tokio::time::sleep(Duration::from_millis(20)).await; // poll interval
    }
}

/// Connects as the token's user and joins `room`: the socket and its
/// connection id (from `welcome`).
async fn join(server: &CollabServer, token: &str, room: &str) -> (WsClient, String) {
    let mut ws = WsClient::connect(&server.ws_url(), token)
        .await
        .expect("connects");
    let welcome = ws
        .recv_type("welcome", FRAME_TIMEOUT)
        .await
        .expect("welcome");
    let conn = welcome["conn"].as_str().expect("a conn id").to_owned();
    ws.send_json(&json!({"type": "join", "room": room}))
        .await
        .expect("sent");
    ws.recv_type("joined", FRAME_TIMEOUT).await.expect("joined");
    (ws, conn)
}

/// The `(user, conn, gateway)` of each member in an inspection.
fn members(body: &Value) -> Vec<(String, String, String)> {
    body["members"]
        .as_array()
        .expect("a member list")
        .iter()
        .map(|m| {
            let field = |name: &str| m[name].as_str().unwrap_or_default().to_owned();
            (field("user"), field("conn"), field("gateway"))
        })
        .collect()
}

/// The local node's figures in the cluster view: (connections, rooms).
fn figures(body: &Value) -> (Value, Value) {
    let of = |role: &str, field: &str| {
        body["members"]
            .as_array()
            .and_then(|all| all.iter().find(|m| m["role"] == role))
            .map_or(Value::Null, |m| m[field].clone())
    };
    (of("gateway", "connections"), of("room_node", "rooms"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_token_sees_the_room_and_the_node_follow_its_clients() {
    let server = CollabServer::start(ServerOptions::new()).expect("collab serve starts");
    let admin = server
        .mint_token("operator", &["--admin"])
        .expect("collab token --admin");
    let ann = server.dev_token("ann").await.expect("token");
    let bob = server.dev_token("bob").await.expect("token");
    server
        .create_room(
            &ann,
            &json!({"kind": "board", "id": "demo", "name": "Demo"}),
        )
        .await
        .expect("room created");

    // Without the admin scope: 403 on both endpoints.
    for path in ["/v1/admin/rooms/demo", "/v1/admin/cluster"] {
        let (status, body) = server.get_json(&ann, path).await.expect("answered");
        assert_eq!(
            (status, &body["error"]["code"]),
            (403, &json!("forbidden")),
            "{body}"
        );
    }
    let (status, body) = server
        .get_json(&admin, "/v1/admin/rooms/nothing-here")
        .await
        .expect("answered");
    assert_eq!((status, &body["error"]["code"]), (404, &json!("not_found")));

    // Nobody has used the room: it is not live, and asking does not load it.
    let cold = get_ok(&server, &admin, "/v1/admin/rooms/demo").await;
    assert_eq!(
        cold,
        json!({
            "id": "demo", "kind": "board", "name": "Demo", "epoch": cold["epoch"], "head": 0,
            "live": false, "owner": {"node": "local", "term": null}, "members": [],
            "mailbox_depth": 0, "last_commit": null
        })
    );
    let cluster = get_ok(&server, &admin, "/v1/admin/cluster").await;
    assert_eq!(cluster["mode"], "serve");
    assert_eq!(figures(&cluster), (json!(0), json!(0)), "{cluster}");

    // Ann joins and draws; Bob joins.
    let (mut ann_ws, ann_conn) = join(&server, &ann, "demo").await;
    ann_ws
        .send_json(&json!({"type": "op", "room": "demo", "cid": "c1",
            "op": {"kind": "message", "text": "hello"}}))
        .await
        .expect("sent");
    // Its `op` frame comes once it is committed (its ack may come first).
    let op = ann_ws.recv_type("op", FRAME_TIMEOUT).await.expect("the op");
    let (bob_ws, bob_conn) = join(&server, &bob, "demo").await;

    let live = get_ok(&server, &admin, "/v1/admin/rooms/demo").await;
    assert_eq!(live["live"], true, "{live}");
    assert_eq!(live["owner"]["node"], "local");
    assert!(
        live["owner"]["term"].as_u64().is_some_and(|t| t > 0),
        "{live}"
    );
    assert_eq!(live["head"], 1);
    assert_eq!(live["last_commit"], json!({"seq": 1, "at": op["ts"]}));
    assert_eq!(
        members(&live),
        [
            ("ann".to_owned(), ann_conn.clone(), "local".to_owned()),
            ("bob".to_owned(), bob_conn, "local".to_owned())
        ]
    );
    assert!(live["mailbox_depth"].is_u64());
    let cluster = get_ok(&server, &admin, "/v1/admin/cluster").await;
    assert_eq!(figures(&cluster), (json!(2), json!(1)), "{cluster}");

    // Bob leaves: the room and the node say so.
    bob_ws.close().await.expect("closed");
    wait_for_body(
        &server,
        &admin,
        "/v1/admin/rooms/demo",
        "bob gone from the room",
        |b| members(b).len() == 1,
    )
    .await;
    wait_for_body(
        &server,
        &admin,
        "/v1/admin/cluster",
        "one connection left",
        |b| figures(b).0 == json!(1),
    )
    .await;

    // A dev token can ask for the scope too.
    let response = server
        .http()
        .post(format!("{}/v1/dev/token", server.http_url()))
        .json(&json!({"user": "operator2", "scope": "admin"}))
        .send()
        .await
        .expect("answered");
    let dev_admin: Value = response.json().await.expect("json");
    let dev_admin = dev_admin["token"].as_str().expect("a token");
    let again = get_ok(&server, dev_admin, "/v1/admin/rooms/demo").await;
    assert_eq!(
        members(&again),
        [("ann".to_owned(), ann_conn, "local".to_owned())]
    );
}
