//! A client that stops reading cannot hold up its room: over real sockets
//! against a `collab serve` process, three users join one board, one of
//! them (sam) stops reading, and a writer (wendy) sends a stream of large
//! valid ops and cursor moves. Once sam's socket buffers and his bounded
//! outbound queue are full, the server drops him: the others see him
//! leave, and when he reads again he finds the ops he was sent, in order
//! and without gaps, then a close frame with code 4008. Meanwhile the
//! writer and the other reader (rita) receive every op, in one gapless
//! order, and every op of the writer is acked with the seq its broadcast
//! carries.
//!
//! The only deliberate pause is sam not reading; everything else is
//! waited for with deadlines.

use std::collections::HashMap;
use std::time::Duration;

use collab_tests::harness::{CollabServer, ServerOptions, WsClient, WsError};
use serde_json::{Value, json};
use tokio::time::Instant;

/// One frame may take a while on a loaded machine with a busy server;
/// this only bounds a failure.
const FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// The outbound queue, lowered from the default 1024 frames so that the
/// slow reader is found out quickly.
const OUTBOUND_QUEUE: &str = "64";
/// Points per op: about 20 KB per frame, well under the 64 KiB limit.
const POINTS_PER_OP: usize = 1000;
/// Ops the writer keeps in flight (the server allows 64 unacked).
const WINDOW: usize = 32;
/// Enough to fill several MB of socket buffers many times over; reaching
/// it without sam being dropped fails the test.
const MAX_OPS: usize = 2000;
const ROOM: &str = "slow-board";

fn start() -> CollabServer {
    let options = ServerOptions::new()
        .env("COLLAB_GATEWAY__OUTBOUND_QUEUE", OUTBOUND_QUEUE)
        // The test is about the outbound queue, not the rate limits: let
        // the writer go as fast as the room commits.
        .env("COLLAB_GATEWAY__RATE_LIMITS__OPS_PER_SEC", "100000")
        .env("COLLAB_GATEWAY__RATE_LIMITS__OPS_BURST", "100000")
        .env("COLLAB_GATEWAY__RATE_LIMITS__CURSORS_PER_SEC", "100000")
        .env("COLLAB_GATEWAY__RATE_LIMITS__CURSORS_BURST", "100000");
    CollabServer::start(options).expect("collab serve starts")
}

async fn connect(server: &CollabServer, user: &str) -> WsClient {
    let token = server.dev_token(user).await.expect("a dev token");
    let mut client = WsClient::connect(&server.ws_url(), &token)
        .await
        .expect("connects");
    let welcome = client.recv_json(FRAME_TIMEOUT).await.expect("welcome");
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    client
}

async fn join(client: &mut WsClient) -> Value {
    client
        .send_json(&json!({"type": "join", "room": ROOM}))
        .await
        .expect("sent");
    let joined = client.recv_json(FRAME_TIMEOUT).await.expect("joined");
    assert_eq!(joined["type"], "joined", "{joined}");
    joined
}

/// Waits for the presence `event` of `user`, skipping other frames.
async fn presence(client: &mut WsClient, event: &str, user: &str) {
    client
        .recv_until(FRAME_TIMEOUT, |f| {
            f["type"] == "presence" && f["event"] == event && f["user"]["id"] == user
        })
        .await
        .unwrap_or_else(|e| panic!("no presence {event} of {user}: {e}"));
}

/// `stroke_points` with [`POINTS_PER_OP`] points that differ per op.
fn big_points(n: usize) -> Value {
    let base = 1000.0 + n as f64;
    let points: Vec<Value> = (0..POINTS_PER_OP)
        .map(|i| json!([base + i as f64 * 0.125, base - i as f64 * 0.375]))
        .collect();
    json!({"kind": "stroke_points", "stroke": "big", "points": points})
}

fn is_done(frame: &Value) -> bool {
    frame["type"] == "op" && frame["op"]["kind"] == "message" && frame["op"]["text"] == "done"
}

/// Checks that `seqs` are 1, 2, 3, … in order.
fn assert_gapless(who: &str, seqs: &[u64]) {
    for (i, seq) in seqs.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1, "{who}'s ops are gapless and in order");
    }
}

/// Reads until the `done` message: the seqs of every op received.
async fn read_until_done(mut client: WsClient) -> (WsClient, Vec<u64>) {
    let mut seqs = Vec::new();
    loop {
        let frame = client
            .recv_json(FRAME_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("rita after {} ops: {e}", seqs.len()));
        match frame["type"].as_str() {
            Some("op") => {
                seqs.push(frame["seq"].as_u64().expect("a seq"));
                if is_done(&frame) {
                    return (client, seqs);
                }
            }
            Some("error") => panic!("rita got {frame}"),
            _ => {}
        }
    }
}

/// Reads until the server closes the connection: its close code and the
/// seqs of the ops received before.
async fn read_until_closed(mut client: WsClient, timeout: Duration) -> (Option<u16>, Vec<u64>) {
    let deadline = Instant::now() + timeout;
    let mut seqs = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.recv_json(left).await {
            Ok(frame) => {
                if frame["type"] == "op" {
                    seqs.push(frame["seq"].as_u64().expect("a seq"));
                }
            }
            Err(WsError::Closed { code, .. }) => return (code, seqs),
            Err(e) => panic!("sam after {} ops: {e}", seqs.len()),
        }
    }
}

/// The writer's view: what it sent, saw and had acked.
#[derive(Default)]
struct Writer {
    /// Seqs of the ops it received, in order.
    seqs: Vec<u64>,
    /// cid → seq, from the broadcasts of its own ops.
    echoed: HashMap<String, u64>,
    /// cid → seq, from its acks.
    acked: HashMap<String, u64>,
    sam_left: bool,
}

impl Writer {
    fn on_frame(&mut self, frame: Value) {
        match frame["type"].as_str() {
            Some("op") => {
                let seq = frame["seq"].as_u64().expect("a seq");
                self.seqs.push(seq);
                if let Some(cid) = frame["cid"].as_str() {
                    self.echoed.insert(cid.to_owned(), seq);
                }
            }
            Some("ack") => {
                let cid = frame["cid"].as_str().expect("a cid").to_owned();
                let seq = frame["seq"].as_u64().expect("a seq");
                assert!(self.acked.insert(cid, seq).is_none(), "one ack per op");
            }
            Some("presence") if frame["event"] == "leave" => {
                assert_eq!(frame["user"]["id"], "sam", "only sam leaves: {frame}");
                self.sam_left = true;
            }
            Some("error") => panic!("the writer got {frame}"),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_is_closed_with_4008_and_the_others_miss_nothing() {
    let server = start();
    let mut wendy = connect(&server, "wendy").await;
    let token = server.dev_token("wendy").await.expect("a dev token");
    server
        .create_room(&token, &json!({"kind": "board", "id": ROOM}))
        .await
        .expect("room created");
    let mut rita = connect(&server, "rita").await;
    let mut sam = connect(&server, "sam").await;
    join(&mut wendy).await;
    join(&mut rita).await;
    join(&mut sam).await;
    presence(&mut wendy, "join", "rita").await;
    presence(&mut wendy, "join", "sam").await;
    presence(&mut rita, "join", "sam").await;

    // From here on sam does not read: his socket stays open, untouched.
    let rita = tokio::spawn(read_until_done(rita));

    let mut writer = Writer::default();
    let begin = json!({"kind": "stroke_begin", "stroke": "big", "color": "#884422", "width": 2});
    wendy
        .send_json(&json!({"type": "op", "room": ROOM, "cid": "begin", "op": begin}))
        .await
        .expect("sent");
    let mut sent = 1;
    let mut sam = Some(sam);
    let mut sam_reading = None;
    loop {
        while !writer.sam_left && sent - writer.acked.len() < WINDOW && sent < MAX_OPS {
            let cid = format!("p{sent}");
            let op = json!({"type": "op", "room": ROOM, "cid": cid, "op": big_points(sent)});
            wendy.send_json(&op).await.expect("sent");
            let (x, y) = (sent as f64, -(sent as f64));
            wendy
                .send_json(&json!({"type": "cursor", "room": ROOM, "x": x, "y": y}))
                .await
                .expect("sent");
            sent += 1;
        }
        if writer.sam_left
            && let Some(sam) = sam.take()
        {
            // The server dropped sam: he reads again, alongside the rest.
            sam_reading = Some(tokio::spawn(read_until_closed(sam, 2 * FRAME_TIMEOUT)));
        }
        if writer.acked.len() == sent {
            assert!(
                writer.sam_left,
                "{sent} ops of {POINTS_PER_OP} points sent and sam still not dropped"
            );
            break;
        }
        let frame = wendy
            .recv_json(FRAME_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("wendy after {sent} ops sent: {e}"));
        writer.on_frame(frame);
    }

    // One last op, which everybody still there must get.
    let done = json!({"kind": "message", "text": "done"});
    wendy
        .send_json(&json!({"type": "op", "room": ROOM, "cid": "done", "op": done}))
        .await
        .expect("sent");
    sent += 1;
    while !(writer.acked.contains_key("done") && writer.echoed.contains_key("done")) {
        let frame = wendy
            .recv_json(FRAME_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("wendy waiting for done: {e}"));
        writer.on_frame(frame);
    }
    let last = writer.acked["done"];
    assert_gapless("wendy", &writer.seqs);
    assert_eq!(writer.seqs.last(), Some(&last), "wendy got every op");
    assert_eq!(writer.acked.len(), sent, "every op of wendy was acked");
    assert_eq!(last, sent as u64, "her ops are all the room's ops");
    for (cid, seq) in &writer.acked {
        assert_eq!(writer.echoed.get(cid), Some(seq), "{cid}: ack and op agree");
    }

    let (_rita, rita_seqs) = rita.await.expect("rita read to the end");
    assert_gapless("rita", &rita_seqs);
    assert_eq!(rita_seqs.last(), Some(&last), "rita got every op");

    let (code, sam_seqs) = sam_reading
        .expect("sam was dropped")
        .await
        .expect("sam read to the close");
    eprintln!(
        "{last} ops; sam had {} of them when he was closed with {code:?}",
        sam_seqs.len()
    );
    assert_eq!(code, Some(4008), "too slow");
    assert_gapless("sam", &sam_seqs);
    assert!(
        (sam_seqs.len() as u64) < last,
        "sam was dropped before the end ({} of {last} ops)",
        sam_seqs.len()
    );

    let (status, info) = server
        .get_json(&token, &format!("/v1/rooms/{ROOM}"))
        .await
        .expect("answered");
    assert_eq!((status, &info["head"]), (200, &json!(last)), "{info}");
}
