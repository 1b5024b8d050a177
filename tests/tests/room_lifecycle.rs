//! A room's lifecycle over HTTP, as a backend drives it, in `collab serve`
//! and in a cluster of two gateways and two room nodes: the caller's rooms
//! listed a page at a time (`GET /v1/rooms?member=me`), a room renamed and
//! its members changed by its creator and by nobody else
//! (`PATCH /v1/rooms/{id}`), and a member kicked
//! (`POST /v1/rooms/{id}/kick`): every socket of theirs in the room, on
//! every gateway, hears `forbidden` for it and leaves it, a re-join is
//! refused, and once added back they join again.
//!
//! The cluster test needs `COLLAB_NATS_SERVER` and `COLLAB_TEST_CQL`, as
//! `tests/cluster.rs` does; `scripts/test.sh` provides both.

use std::time::Duration;

use collab_tests::harness::cluster::{Cluster, ClusterOptions};
use collab_tests::harness::{CollabServer, ServerOptions, WsClient};
use serde_json::{Value, json};

/// Frames and answers arrive in milliseconds; this only bounds a failure.
const FRAME_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the scenario runs: the HTTP base and WebSocket URL of each of two
/// gateways (the same one twice in `collab serve`), and a token per user.
struct Deployment {
    http: reqwest::Client,
    http_urls: [String; 2],
    ws_urls: [String; 2],
    ann: String,
    bob: String,
    cat: String,
}

impl Deployment {
    /// `method path` on gateway `gateway` as the holder of `token`, with an
    /// optional JSON body: the status and the JSON answer (`Null` if none).
    async fn call(
        &self,
        gateway: usize,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.http_urls[gateway]))
            .bearer_auth(token)
            .timeout(FRAME_TIMEOUT);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("answered");
        let status = response.status().as_u16();
        let text = response.text().await.expect("a body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// The ids of one page of `token`'s rooms, and the cursor to the next.
    async fn page(&self, gateway: usize, token: &str, query: &str) -> (Vec<String>, Value) {
        let (status, page) = self
            .call(
                gateway,
                "GET",
                &format!("/v1/rooms?member=me{query}"),
                token,
                None,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        let ids = page["rooms"]
            .as_array()
            .expect("rooms")
            .iter()
            .map(|room| room["id"].as_str().expect("id").to_owned())
            .collect();
        (ids, page["next"].clone())
    }

    /// A socket of the holder of `token` on gateway `gateway`.
    async fn connect(&self, gateway: usize, token: &str) -> WsClient {
        let mut ws = WsClient::connect(&self.ws_urls[gateway], token)
            .await
            .expect("connects");
        ws.recv_type("welcome", FRAME_TIMEOUT)
            .await
            .expect("welcome");
        ws
    }
}

/// Sends `join` for `room` and returns the answer: `joined` or `error`.
async fn join(ws: &mut WsClient, room: &str) -> Value {
    ws.send_json(&json!({"type": "join", "room": room}))
        .await
        .expect("join sent");
    ws.recv_until(FRAME_TIMEOUT, |f| {
        (f["type"] == "joined" || f["type"] == "error") && f["room"] == room
    })
    .await
    .expect("an answer to join")
}

async fn run(d: &Deployment) {
    // Ann's rooms: three public boards, and a private channel with bob
    // and cat. Ids sort as created.
    for id in ["lc-a", "lc-b", "lc-c"] {
        let (status, body) = d
            .call(
                0,
                "POST",
                "/v1/rooms",
                &d.ann,
                Some(json!({"kind": "board", "id": id})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = d
        .call(
            0,
            "POST",
            "/v1/rooms",
            &d.ann,
            Some(json!({"kind": "channel", "id": "lc-club", "members": ["bob", "cat"]})),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    // Listed a page at a time, through either gateway.
    let (first, next) = d.page(1, &d.ann, "&limit=2").await;
    assert_eq!(first, ["lc-a", "lc-b"]);
    assert_eq!(next, "lc-b");
    let (second, next) = d.page(0, &d.ann, "&limit=2&after=lc-b").await;
    assert_eq!(second, ["lc-c", "lc-club"]);
    assert_eq!(next, Value::Null);
    let (channels, _) = d.page(1, &d.ann, "&kind=channel").await;
    assert_eq!(channels, ["lc-club"]);
    let (bobs, _) = d.page(1, &d.bob, "").await;
    assert_eq!(bobs, ["lc-club"]);

    // Changed by its creator only.
    let rename = json!({"name": "The Club"});
    let (status, body) = d
        .call(
            1,
            "PATCH",
            "/v1/rooms/lc-club",
            &d.bob,
            Some(rename.clone()),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    let (status, body) = d
        .call(
            1,
            "PATCH",
            "/v1/rooms/lc-club",
            &d.ann,
            Some(json!({"name": ""})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    let (status, body) = d
        .call(1, "PATCH", "/v1/rooms/lc-club", &d.ann, Some(rename))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["name"], "The Club");
    assert_eq!(body["members"], json!(["bob", "cat", "ann"]));
    let (status, info) = d.call(0, "GET", "/v1/rooms/lc-club", &d.cat, None).await;
    assert_eq!((status, info["name"].as_str()), (200, Some("The Club")));

    // Bob in the room on both gateways, cat on the first.
    let mut bob_sockets = [d.connect(0, &d.bob).await, d.connect(1, &d.bob).await];
    for ws in &mut bob_sockets {
        let joined = join(ws, "lc-club").await;
        assert_eq!(joined["type"], "joined", "{joined}");
    }
    let mut cat = d.connect(0, &d.cat).await;
    let joined = join(&mut cat, "lc-club").await;
    assert_eq!(joined["type"], "joined", "{joined}");

    // Kicked by a member who is not the creator: refused.
    let (status, body) = d
        .call(
            0,
            "POST",
            "/v1/rooms/lc-club/kick",
            &d.cat,
            Some(json!({"user": "bob"})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    // By the creator: every socket of bob's leaves with the error.
    let (status, body) = d
        .call(
            1,
            "POST",
            "/v1/rooms/lc-club/kick",
            &d.ann,
            Some(json!({"user": "bob"})),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    for (i, ws) in bob_sockets.iter_mut().enumerate() {
        let told = ws
            .recv_until(FRAME_TIMEOUT, |f| f["type"] == "error")
            .await
            .unwrap_or_else(|e| panic!("bob's socket {i} was not told: {e}"));
        assert_eq!(
            (told["code"].as_str(), told["room"].as_str()),
            (Some("forbidden"), Some("lc-club")),
            "socket {i}: {told}"
        );
    }
    let left = cat
        .recv_until(FRAME_TIMEOUT, |f| {
            f["type"] == "presence" && f["event"] == "leave" && f["user"]["id"] == "bob"
        })
        .await
        .expect("cat sees bob leave");
    assert_eq!(left["room"], "lc-club");
    // Out of the room: an op is refused as for a room never joined, and
    // a re-join is refused while bob is not a member.
    for (i, ws) in bob_sockets.iter_mut().enumerate() {
        let cid = format!("after-kick-{i}");
        ws.send_json(&json!({"type": "op", "room": "lc-club", "cid": cid,
            "op": {"kind": "message", "text": "still here?"}}))
            .await
            .expect("op sent");
        let refused = ws
            .recv_until(FRAME_TIMEOUT, |f| f["type"] == "error" && f["cid"] == cid)
            .await
            .expect("the op is refused");
        assert_eq!(refused["code"], "bad_request", "{refused}");
        let again = join(ws, "lc-club").await;
        assert_eq!(
            (again["type"].as_str(), again["code"].as_str()),
            (Some("error"), Some("forbidden")),
            "socket {i}: {again}"
        );
    }
    let (bobs, _) = d.page(0, &d.bob, "").await;
    assert!(bobs.is_empty(), "bob no longer lists the room: {bobs:?}");

    // Added back, bob joins again, on both gateways.
    let (status, body) = d
        .call(
            0,
            "PATCH",
            "/v1/rooms/lc-club",
            &d.ann,
            Some(json!({"members": {"add": ["bob"]}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for ws in &mut bob_sockets {
        let joined = join(ws, "lc-club").await;
        assert_eq!(joined["type"], "joined", "{joined}");
    }
    let (bobs, _) = d.page(1, &d.bob, "").await;
    assert_eq!(bobs, ["lc-club"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_are_listed_changed_and_members_kicked_in_collab_serve() {
    let server = CollabServer::start(ServerOptions::new()).expect("collab serve starts");
    let http = server.http_url();
    let ws = server.ws_url();
    let deployment = Deployment {
        http: reqwest::Client::new(),
        http_urls: [http.clone(), http],
        ws_urls: [ws.clone(), ws],
        ann: server.dev_token("ann").await.expect("token"),
        bob: server.dev_token("bob").await.expect("token"),
        cat: server.dev_token("cat").await.expect("token"),
    };
    run(&deployment).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rooms_are_listed_changed_and_members_kicked_across_a_cluster() {
    let mut cluster = Cluster::start(ClusterOptions::new().gateways(2).room_nodes(2))
        .await
        .expect("the cluster starts (nats-server, CQL keyspace, gateways, room nodes)");
    let gateways = cluster.gateway_ids();
    let deployment = Deployment {
        http: reqwest::Client::new(),
        http_urls: [
            cluster.http_url(&gateways[0]),
            cluster.http_url(&gateways[1]),
        ],
        ws_urls: [cluster.gateway_ws_url(0), cluster.gateway_ws_url(1)],
        ann: cluster.token("ann").await.expect("token"),
        bob: cluster.token("bob").await.expect("token"),
        cat: cluster.token("cat").await.expect("token"),
    };
    run(&deployment).await;
}
