//! Token refresh on an open connection, across processes: on `collab
//! serve`, and in a cluster of two gateways and two room nodes (the user
//! on one gateway, another member on the other).
//!
//! One scenario runs on both, with the expiry warning's lead shortened
//! (`COLLAB_GATEWAY__TOKEN_EXPIRY_WARNING_SECS`) and tokens minted by
//! `collab token --ttl-secs`: the warning comes its lead before `exp`; a
//! token for another user is refused with `unauthorized` and changes
//! nothing; a token that drops a room permission is accepted, leaves that
//! room with `forbidden` (the other member sees the user go) while the
//! other room keeps working; the connection outlives the first token; and
//! without a further refresh it is warned again and closed with 4001 at
//! the second token's `exp`.
//!
//! The cluster test needs `COLLAB_NATS_SERVER` and `COLLAB_TEST_CQL`, as
//! `tests/cluster.rs` does; `scripts/test.sh` provides both.

use std::time::Duration;

use collab_tests::harness::cluster::ClusterOptions;
use collab_tests::harness::{CollabServer, ServerOptions, WsClient};
use serde_json::{Value, json};

/// The warning's lead in these tests, in seconds.
const LEAD_SECS: u64 = 5;
/// The first token's lifetime: long enough to join two rooms first.
const FIRST_TTL_SECS: u64 = 14;
/// The second token's: its warning comes after the first token's `exp`.
const SECOND_TTL_SECS: u64 = 24;
const FRAME_TIMEOUT: Duration = Duration::from_secs(30);
const KEPT: &str = "kept";
const DROPPED: &str = "dropped";

/// The claims of `token`, unverified (the test only reads them).
fn claims(token: &str) -> Value {
    jsonwebtoken::dangerous::insecure_decode::<Value>(token)
        .expect("a JWT")
        .claims
}

fn exp_of(token: &str) -> u64 {
    claims(token)["exp"].as_u64().expect("exp")
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch")
        .as_secs()
}

/// The tokens of the scenario, minted by `collab token`.
struct Tokens {
    /// Ann's first: both rooms, short.
    first: String,
    /// Ann's second: the kept room only, a little longer.
    second: String,
    /// Bob's: both rooms, long; also the wrong user's token for Ann.
    bob: String,
}

fn token_args(ttl: u64, rooms: &[&str]) -> Vec<String> {
    let mut args = vec!["--ttl-secs".to_owned(), ttl.to_string()];
    for room in rooms {
        args.push("--room".to_owned());
        args.push(format!("{room}=write"));
    }
    args
}

async fn connect_and_join(ws_url: &str, token: &str, rooms: &[&str]) -> WsClient {
    let mut ws = WsClient::connect(ws_url, token).await.expect("connects");
    ws.recv_type("welcome", FRAME_TIMEOUT)
        .await
        .expect("welcome");
    for room in rooms {
        ws.send_json(&json!({"type": "join", "room": room}))
            .await
            .expect("join");
        let joined = ws.recv_type("joined", FRAME_TIMEOUT).await.expect("joined");
        assert_eq!(joined["room"], *room, "{joined}");
    }
    ws
}

/// Sends a chat message into `room` and returns the first answer about
/// it: its `ack` or an `error` naming its cid.
async fn say(ws: &mut WsClient, room: &str, cid: &str) -> Value {
    ws.send_json(&json!({
        "type": "op", "room": room, "cid": cid,
        "op": {"kind": "message", "text": cid}
    }))
    .await
    .expect("op sent");
    ws.recv_until(FRAME_TIMEOUT, |f| {
        (f["type"] == "ack" || f["type"] == "error") && f["cid"] == cid
    })
    .await
    .expect("an answer to the op")
}

/// The scenario of the module docs: Ann on `ann_url`, Bob on `bob_url`.
async fn refresh_scenario(ann_url: &str, bob_url: &str, tokens: Tokens) {
    let first_exp = exp_of(&tokens.first);
    let second_exp = exp_of(&tokens.second);
    let mut bob = connect_and_join(bob_url, &tokens.bob, &[KEPT, DROPPED]).await;
    let mut ann = connect_and_join(ann_url, &tokens.first, &[KEPT, DROPPED]).await;

    // The warning, its lead before the first token's exp.
    let warning = ann
        .recv_type("token_expiring", FRAME_TIMEOUT)
        .await
        .expect("token_expiring before the first exp");
    assert_eq!(warning, json!({"type": "token_expiring", "exp": first_exp}));
    let now = now_secs();
    assert!(
        now + LEAD_SECS + 1 >= first_exp && now < first_exp,
        "warned at {now}, exp {first_exp}"
    );

    // Another user's token: refused, and nothing changes.
    ann.send_json(&json!({"type": "refresh", "token": tokens.bob}))
        .await
        .expect("refresh sent");
    let refused = ann
        .recv_type("error", FRAME_TIMEOUT)
        .await
        .expect("refusal");
    assert_eq!(refused["code"], "unauthorized", "{refused}");
    assert!(refused.get("room").is_none(), "{refused}");
    assert_eq!(say(&mut ann, DROPPED, "still-in").await["type"], "ack");

    // The second token drops a room: accepted, the room is left with
    // `forbidden`, Bob sees Ann go from it, the other room keeps working.
    ann.send_json(&json!({"type": "refresh", "token": tokens.second}))
        .await
        .expect("refresh sent");
    let refreshed = ann
        .recv_type("refreshed", FRAME_TIMEOUT)
        .await
        .expect("refreshed");
    assert_eq!(refreshed, json!({"type": "refreshed", "exp": second_exp}));
    let left = ann
        .recv_type("error", FRAME_TIMEOUT)
        .await
        .expect("the dropped room's error");
    assert_eq!(
        (left["code"].as_str(), left["room"].as_str()),
        (Some("forbidden"), Some(DROPPED)),
        "{left}"
    );
    let gone = bob
        .recv_until(FRAME_TIMEOUT, |f| {
            f["type"] == "presence" && f["event"] == "leave" && f["room"] == DROPPED
        })
        .await
        .expect("Bob sees Ann leave the dropped room");
    assert_eq!(gone["user"]["id"], "ann", "{gone}");
    assert_eq!(
        say(&mut ann, DROPPED, "after-drop").await["code"],
        "bad_request"
    );
    assert_eq!(say(&mut ann, KEPT, "kept-1").await["type"], "ack");

    // Past the first token's exp the connection is open and working.
    while now_secs() <= first_exp {
        ann.send_json(&json!({"type": "ping", "id": "wait"}))
            .await
            .expect("ping");
        ann.recv_type("pong", FRAME_TIMEOUT).await.expect("pong");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(say(&mut ann, KEPT, "kept-2").await["type"], "ack");
    let op = bob
        .recv_until(FRAME_TIMEOUT, |f| f["type"] == "op" && f["cid"] == "kept-2")
        .await
        .expect("Bob gets the op sent after the first exp");
    assert_eq!(op["user"], "ann");

    // No further refresh: warned again, then 4001 at the second exp.
    let warning = ann
        .recv_type("token_expiring", FRAME_TIMEOUT)
        .await
        .expect("token_expiring before the second exp");
    assert_eq!(warning["exp"], second_exp);
    let code = ann
        .recv_close(FRAME_TIMEOUT)
        .await
        .expect("closed by the server");
    assert_eq!(code, Some(4001));
    let closed = now_secs();
    assert!(
        closed + 1 >= second_exp,
        "closed at {closed}, before the second exp {second_exp}"
    );
    // Bob, whose token lives on, is still served.
    bob.send_json(&json!({"type": "ping", "id": "bob"}))
        .await
        .expect("ping");
    bob.recv_type("pong", FRAME_TIMEOUT).await.expect("pong");
}

const LEAD_ENV: &str = "COLLAB_GATEWAY__TOKEN_EXPIRY_WARNING_SECS";

#[tokio::test]
async fn a_refresh_on_collab_serve_extends_the_session_and_applies_the_new_rooms() {
    let server = CollabServer::start(ServerOptions::new().env(LEAD_ENV, LEAD_SECS.to_string()))
        .expect("collab serve starts");
    let admin = server.dev_token("admin").await.expect("dev token");
    for room in [KEPT, DROPPED] {
        server
            .create_room(&admin, &json!({"kind": "channel", "id": room}))
            .await
            .expect("room created");
    }
    let mint = |user: &str, ttl: u64, rooms: &[&str]| {
        let args = token_args(ttl, rooms);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        server.mint_token(user, &args).expect("collab token")
    };
    let tokens = Tokens {
        first: mint("ann", FIRST_TTL_SECS, &[KEPT, DROPPED]),
        second: mint("ann", SECOND_TTL_SECS, &[KEPT]),
        bob: mint("bob", 3600, &[KEPT, DROPPED]),
    };
    refresh_scenario(&server.ws_url(), &server.ws_url(), tokens).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refresh_in_a_cluster_extends_the_session_and_applies_the_new_rooms() {
    let mut cluster = collab_tests::harness::cluster::Cluster::start(
        ClusterOptions::new()
            .room_nodes(2)
            .env(LEAD_ENV, LEAD_SECS.to_string()),
    )
    .await
    .expect("the cluster starts (nats-server, CQL keyspace, gateways, room nodes)");
    cluster.create_channel(KEPT).await.expect("room");
    cluster.create_channel(DROPPED).await.expect("room");
    let mut tokens = Vec::new();
    for (user, ttl, rooms) in [
        ("ann", FIRST_TTL_SECS, &[KEPT, DROPPED][..]),
        ("ann", SECOND_TTL_SECS, &[KEPT][..]),
        ("bob", 3600, &[KEPT, DROPPED][..]),
    ] {
        let args = token_args(ttl, rooms);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        tokens.push(
            cluster
                .fresh_token(user, &args)
                .await
                .expect("collab token"),
        );
    }
    let [first, second, bob] = <[String; 3]>::try_from(tokens).expect("three tokens");
    refresh_scenario(
        &cluster.gateway_ws_url(0),
        &cluster.gateway_ws_url(1),
        Tokens { first, second, bob },
    )
    .await;
}
