//! `collab serve --store cql://…` through an outage of the CQL server
//! itself, on a private Cassandra node: ops acked before a SIGKILL of
//! Cassandra survive it; while it is down, ops are answered `unavailable`
//! and never acked, and `/readyz` is 503; once it is back, writes resume,
//! seqs are gapless, and retried `cid`s are applied once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use collab_tests::harness::{CollabServer, CqlNode, ServerOptions, WsClient};
use serde_json::{Value, json};

const FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// Cassandra restarts and the driver reconnects well within this.
const RECOVERY: Duration = Duration::from_secs(180);

async fn status(server: &CollabServer, path: &str) -> u16 {
    match server
        .http()
        .get(format!("{}{path}", server.http_url()))
        .send()
        .await
    {
        Ok(response) => response.status().as_u16(),
        Err(_) => 0,
    }
}

async fn wait_for_status(server: &CollabServer, path: &str, want: u16, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = status(server, path).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} still answers {got}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await; // poll interval
    }
}

async fn connect(server: &CollabServer, user: &str) -> WsClient {
    let token = server.dev_token(user).await.expect("dev token");
    let mut client = WsClient::connect(&server.ws_url(), &token)
        .await
        .expect("connects");
    let welcome = client.recv_json(FRAME_TIMEOUT).await.expect("welcome");
    assert_eq!(welcome["type"], "welcome");
    client
}

async fn join(client: &mut WsClient, room: &str) -> Value {
    client
        .send_json(&json!({"type": "join", "room": room}))
        .await
        .expect("sends");
    let joined = client
        .recv_until(FRAME_TIMEOUT, |f| {
            f["type"] == "joined" || f["type"] == "error"
        })
        .await
        .expect("joined");
    assert_eq!(joined["type"], "joined", "{joined}");
    joined
}

/// Sends one message op and returns the answer for its cid: `Ok(seq)` for
/// an ack, `Err(code)` for an error.
async fn send(client: &mut WsClient, room: &str, cid: &str) -> Result<u64, String> {
    client
        .send_json(&json!({
            "type": "op", "room": room, "cid": cid,
            "op": {"kind": "message", "text": format!("text of {cid}")},
        }))
        .await
        .expect("sends");
    let answer = client
        .recv_until(FRAME_TIMEOUT, |f| {
            (f["type"] == "ack" || f["type"] == "error") && f["cid"] == cid
        })
        .await
        .expect("an answer for the op");
    if answer["type"] == "ack" {
        Ok(answer["seq"].as_u64().expect("ack seq"))
    } else {
        Err(answer["code"].as_str().unwrap_or_default().to_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cql_outage_answers_unavailable_and_loses_nothing_acked() {
    let node = CqlNode::start().expect("a private CQL node");
    let server = CollabServer::start(
        ServerOptions::new().store(node.store_url("collab_outage", "timeout_ms=2000")),
    )
    .expect("collab serve --store cql://… starts");
    wait_for_status(&server, "/readyz", 200, RECOVERY).await;
    let token = server.dev_token("ann").await.expect("token");
    let room = server
        .create_room(&token, &json!({"kind": "channel", "id": "outage"}))
        .await
        .expect("room created");
    let room = room["id"].as_str().expect("room id").to_owned();
    let mut ann = connect(&server, "ann").await;
    join(&mut ann, &room).await;
    let mut bob = connect(&server, "bob").await;
    join(&mut bob, &room).await;

    // Acked before the crash.
    let mut acked: HashMap<String, u64> = HashMap::new();
    for i in 1..=10 {
        let cid = format!("c{i}");
        let seq = send(&mut ann, &room, &cid).await.expect("acked");
        acked.insert(cid, seq);
    }

    // SIGKILL of Cassandra itself.
    node.kill().expect("SIGKILL the CQL node");
    wait_for_status(&server, "/readyz", 503, RECOVERY).await;
    let mut attempted = Vec::new();
    for i in 11..=15 {
        let cid = format!("c{i}");
        match send(&mut ann, &room, &cid).await {
            Err(code) => assert_eq!(code, "unavailable", "op {cid} during the outage"),
            Ok(seq) => panic!("op {cid} acked with seq {seq} while the store is down"),
        }
        attempted.push(cid);
    }

    // Back: retries of the same cids apply once, and an old cid is re-acked.
    node.restart().expect("restart the CQL node");
    wait_for_status(&server, "/readyz", 200, RECOVERY).await;
    let deadline = Instant::now() + RECOVERY;
    for cid in &attempted {
        loop {
            match send(&mut ann, &room, cid).await {
                Ok(seq) => {
                    acked.insert(cid.clone(), seq);
                    break;
                }
                Err(code) => {
                    assert_eq!(code, "unavailable", "retry of {cid}");
                    assert!(
                        Instant::now() < deadline,
                        "{cid} never acked after the outage"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await; // retry interval
                }
            }
        }
    }
    assert_eq!(
        send(&mut ann, &room, "c5").await,
        Ok(acked["c5"]),
        "a retried cid gets its original seq"
    );

    // The log: seqs 1..=15, each cid once, every ack where it said.
    let (code, history) = server
        .get_json(&token, &format!("/v1/rooms/{room}/history?limit=100"))
        .await
        .expect("history");
    assert_eq!(code, 200, "{history}");
    let ops = history["ops"].as_array().expect("ops");
    let mut seqs: Vec<u64> = ops.iter().filter_map(|o| o["seq"].as_u64()).collect();
    seqs.reverse();
    assert_eq!(seqs, (1..=15).collect::<Vec<_>>(), "gapless, nothing extra");
    for (cid, seq) in &acked {
        let op = ops
            .iter()
            .find(|o| o["seq"] == *seq)
            .unwrap_or_else(|| panic!("acked {cid} (seq {seq}) is missing"));
        assert_eq!(op["op"]["text"], format!("text of {cid}"), "seq {seq}");
        assert_eq!(op["cid"], *cid);
    }
    assert_eq!(acked.len(), 15);

    // Bob, who only watched, saw the same 15 ops in order, each once.
    let mut seen = Vec::new();
    while seen.len() < 15 {
        let frame = bob
            .recv_until(FRAME_TIMEOUT, |f| f["type"] == "op")
            .await
            .expect("bob's op frames");
        seen.push(frame["seq"].as_u64().expect("seq"));
    }
    assert_eq!(seen, (1..=15).collect::<Vec<_>>());
}
