//! Server-side publish on `collab serve`: a backend with a `service` token
//! (minted by `collab token --service`) posts ops into a room; a member on
//! a WebSocket sees them in seq order with the backend as author; a retry
//! with the same cid is answered with the first seq and stores nothing
//! twice, also after a SIGKILL and restart.
//!
//! The same in a cluster of two gateways and two room nodes: published on
//! one gateway, seen by a member on the other, retried after the room's
//! owner was SIGKILLed. That test needs `COLLAB_NATS_SERVER` and
//! `COLLAB_TEST_CQL`, as `tests/cluster.rs` does; `scripts/test.sh`
//! provides both.

use std::time::Duration;

use collab_tests::harness::cluster::{Cluster, ClusterOptions, wait_for};
use collab_tests::harness::{CollabServer, DEADLINE, ServerOptions, WsClient};
use serde_json::{Value, json};

const FRAME_TIMEOUT: Duration = Duration::from_secs(15);
const ROOM: &str = "news";

/// `POST /v1/rooms/{ROOM}/ops` with `body`: the status and the JSON answer.
async fn publish(server: &CollabServer, token: &str, body: &Value) -> (u16, Value) {
    let response = server
        .http()
        .post(format!("{}/v1/rooms/{ROOM}/ops", server.http_url()))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("publish request");
    let status = response.status().as_u16();
    let answer = response.json().await.expect("a JSON answer");
    (status, answer)
}

fn message(cid: &str, text: &str) -> Value {
    json!({"cid": cid, "op": {"kind": "message", "text": text}})
}

/// The room's history, oldest first: (seq, cid, user, text).
async fn history(server: &CollabServer, token: &str) -> Vec<(u64, String, String, String)> {
    let (status, page) = server
        .get_json(token, &format!("/v1/rooms/{ROOM}/history"))
        .await
        .expect("history");
    assert_eq!(status, 200, "{page}");
    let mut ops: Vec<_> = page["ops"]
        .as_array()
        .expect("ops")
        .iter()
        .map(|op| {
            (
                op["seq"].as_u64().expect("seq"),
                op["cid"].as_str().expect("cid").to_owned(),
                op["user"].as_str().expect("user").to_owned(),
                op["op"]["text"].as_str().expect("text").to_owned(),
            )
        })
        .collect();
    ops.reverse();
    ops
}

#[tokio::test]
async fn published_ops_are_ordered_broadcast_and_applied_once_across_restarts() {
    let mut server = CollabServer::start(ServerOptions::new()).expect("collab serve starts");
    let ann = server.dev_token("ann").await.expect("dev token");
    server
        .create_room(&ann, &json!({"kind": "channel", "id": ROOM}))
        .await
        .expect("room created");
    let bot = server
        .mint_token("bot", &["--service"])
        .expect("collab token --service");

    let mut ws = WsClient::connect(&server.ws_url(), &ann)
        .await
        .expect("connects");
    ws.recv_type("welcome", FRAME_TIMEOUT)
        .await
        .expect("welcome");
    ws.send_json(&json!({"type": "join", "room": ROOM}))
        .await
        .expect("join");
    ws.recv_type("joined", FRAME_TIMEOUT).await.expect("joined");

    // A user token without the service scope may not publish.
    let (status, refused) = publish(&server, &ann, &message("x", "no")).await;
    assert_eq!(status, 403, "{refused}");
    assert_eq!(refused["error"]["code"], "forbidden");

    let (status, one) = publish(&server, &bot, &message("n1", "first")).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one, json!({"cid": "n1", "seq": 1}));
    let list = json!([message("n2", "second"), message("n3", "third")]);
    let (status, many) = publish(&server, &bot, &list).await;
    assert_eq!(status, 200, "{many}");
    assert_eq!(
        many,
        json!({"ops": [{"cid": "n2", "seq": 2}, {"cid": "n3", "seq": 3}]})
    );

    // The member sees each op once, in seq order, by the service's user.
    for (seq, text) in [(1, "first"), (2, "second"), (3, "third")] {
        let op = ws.recv_type("op", FRAME_TIMEOUT).await.expect("op frame");
        assert_eq!(op["seq"], seq, "{op}");
        assert_eq!(op["user"], "bot", "{op}");
        assert_eq!(op["op"]["text"], text, "{op}");
    }

    // A retry of a committed cid: its seq again, nothing stored twice.
    let (status, again) = publish(&server, &bot, &message("n2", "second")).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again, json!({"cid": "n2", "seq": 2}));
    let expected = |n: u64| -> Vec<(u64, String, String, String)> {
        ["first", "second", "third", "fourth"]
            .iter()
            .zip(1..=n)
            .map(|(text, seq)| (seq, format!("n{seq}"), "bot".to_owned(), (*text).to_owned()))
            .collect()
    };
    assert_eq!(history(&server, &ann).await, expected(3));

    // A crash right after the answers: they were given after the commit,
    // and the room's window of cids is rebuilt from what was stored.
    drop(ws);
    server.kill().expect("SIGKILL");
    server.restart().expect("restarts on the same data dir");
    assert_eq!(history(&server, &ann).await, expected(3));
    let (status, again) = publish(&server, &bot, &list).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again, many, "a retried list is answered with its seqs");
    let (status, next) = publish(&server, &bot, &message("n4", "fourth")).await;
    assert_eq!(status, 200, "{next}");
    assert_eq!(next, json!({"cid": "n4", "seq": 4}));
    assert_eq!(history(&server, &ann).await, expected(4));
}

#[tokio::test]
async fn publishing_into_an_unknown_room_is_not_found() {
    let server = CollabServer::start(ServerOptions::new()).expect("collab serve starts");
    let bot = server
        .mint_token("bot", &["--service"])
        .expect("collab token --service");
    let response = server
        .http()
        .post(format!("{}/v1/rooms/nowhere/ops", server.http_url()))
        .bearer_auth(&bot)
        .json(&message("a", "hello"))
        .send()
        .await
        .expect("publish request");
    assert_eq!(response.status().as_u16(), 404);
    let body: Value = response.json().await.expect("JSON error");
    assert_eq!(body["error"]["code"], "not_found", "{body}");
}

/// `POST /v1/rooms/{room}/ops` on gateway `base`: the status and answer.
async fn publish_at(
    http: &reqwest::Client,
    base: &str,
    room: &str,
    token: &str,
    body: &Value,
) -> (u16, Value) {
    let response = http
        .post(format!("{base}/v1/rooms/{room}/ops"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("publish request");
    let status = response.status().as_u16();
    let answer = response.json().await.unwrap_or(Value::Null);
    (status, answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn published_ops_cross_the_cluster_and_survive_their_owners_crash() {
    let mut cluster = Cluster::start(ClusterOptions::new().room_nodes(2))
        .await
        .expect("the cluster starts (nats-server, CQL keyspace, gateways, room nodes)");
    let room = cluster.create_channel("pubroom").await.expect("room");
    let bot = cluster
        .fresh_token("bot", &["--service"])
        .await
        .expect("collab token --service");
    let ann = cluster.token("ann").await.expect("token");
    let gateways = cluster.gateway_ids();
    let (first, second) = (
        cluster.http_url(&gateways[0]),
        cluster.http_url(&gateways[1]),
    );
    let http = reqwest::Client::new();

    // A member on the second gateway.
    let mut ws = WsClient::connect(&cluster.gateway_ws_url(1), &ann)
        .await
        .expect("connects");
    ws.recv_type("welcome", DEADLINE).await.expect("welcome");
    ws.send_json(&json!({"type": "join", "room": room.id}))
        .await
        .expect("join");
    ws.recv_type("joined", DEADLINE).await.expect("joined");

    // Published on the first.
    let list = json!([
        message("n1", "first"),
        message("n2", "second"),
        message("n3", "third")
    ]);
    let (status, answer) = publish_at(&http, &first, &room.id, &bot, &list).await;
    assert_eq!(status, 200, "{answer}");
    let committed = json!({"ops": [
        {"cid": "n1", "seq": 1}, {"cid": "n2", "seq": 2}, {"cid": "n3", "seq": 3}
    ]});
    assert_eq!(answer, committed);
    for (seq, text) in [(1, "first"), (2, "second"), (3, "third")] {
        let op = ws.recv_type("op", DEADLINE).await.expect("op frame");
        assert_eq!(op["seq"], seq, "{op}");
        assert_eq!(op["user"], "bot", "{op}");
        assert_eq!(op["op"]["text"], text, "{op}");
    }
    // A retry through the other gateway reaches the same owner.
    let (status, again) =
        publish_at(&http, &second, &room.id, &bot, &message("n2", "second")).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again, json!({"cid": "n2", "seq": 2}));

    // The owner crashes; the retry is answered by the next one, from the
    // cids it rebuilt from the store (503 while the room moves).
    let owner = cluster.owner_of(&room.id);
    cluster.kill(&owner).expect("SIGKILL the owner");
    let again = wait_for("the retried list to be answered", DEADLINE * 2, || {
        let (http, first, room, bot, list) = (&http, &first, &room.id, &bot, &list);
        async move {
            let (status, answer) = publish_at(http, first, room, bot, list).await;
            match status {
                200 => Some(answer),
                503 => None,
                other => panic!("retry answered {other}: {answer}"),
            }
        }
    })
    .await;
    assert_eq!(again, committed, "the same seqs from the next owner");
    let (status, next) = publish_at(&http, &first, &room.id, &bot, &message("n4", "fourth")).await;
    assert_eq!(status, 200, "{next}");
    assert_eq!(next, json!({"cid": "n4", "seq": 4}));

    let log = cluster.read_log(&room.id).await;
    let stored: Vec<(u64, String, String)> = log
        .iter()
        .map(|op| {
            (
                op.event.seq.get(),
                op.event
                    .cid
                    .as_ref()
                    .map(|c| c.as_str().to_owned())
                    .unwrap_or_default(),
                op.event.user.as_str().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(u64, String, String)> = (1..=4)
        .map(|seq| (seq, format!("n{seq}"), "bot".to_owned()))
        .collect();
    assert_eq!(stored, expected, "each op stored once, by the service user");
    let writers: Vec<String> = log.iter().map(|op| op.writer.node.to_string()).collect();
    assert_eq!(writers[..3], [owner.clone(), owner.clone(), owner.clone()]);
    assert_ne!(
        writers[3], owner,
        "the fourth op was written by the next owner"
    );
}
