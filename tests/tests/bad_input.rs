//! The bad input catalogue, over real sockets against a `collab serve`
//! process: one test per kind of bad input, each proving that the server
//! answers exactly the protocol's `error` code (naming the `room` and `cid`
//! the frame concerned), or refuses the upgrade with 401, or closes with
//! 1009 for an oversized frame; that nothing was stored (the room's `head`
//! is unchanged, the next op takes the next `seq`, a refused op's `cid` is
//! not used up); and that the room goes on working: the offender's
//! connection still answers a `ping` (except after 1009) and another
//! member's op reaches everybody.
//!
//! Every test reads frames strictly in order: after a bad frame the
//! offender's next frame must be the error, and nobody receives anything
//! else, so a stray broadcast of refused input would fail the test.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use collab_tests::harness::{CollabServer, ServerOptions, WsClient, WsError, upgrade_status};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// Frames arrive in milliseconds; this only bounds a failure.
const T: Duration = Duration::from_secs(10);
/// The server's HS256 secret: tokens are minted here, in process.
const SECRET: &str = "bad-input-catalogue-secret-0123456789";
/// The room every test misbehaves in.
const ROOM: &str = "board-1";

// === tokens ===

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// Signs `claims` (any JSON) with HS256 and `secret`.
fn sign(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("a token")
}

/// A valid token for `user`, an hour long, with this `rooms` claim (none:
/// write access everywhere).
fn token(user: &str, rooms: Option<Value>) -> String {
    let mut claims = json!({"sub": user, "exp": now_secs() + 3600});
    if let Some(rooms) = rooms {
        claims["rooms"] = rooms;
    }
    sign(&claims, SECRET)
}

fn admin() -> String {
    token("admin", None)
}

// === frames ===

fn op_frame(room: &str, cid: &str, op: Value) -> Value {
    json!({"type": "op", "room": room, "cid": cid, "op": op})
}

fn message(text: &str) -> Value {
    json!({"kind": "message", "text": text})
}

fn begin(stroke: &str) -> Value {
    json!({"kind": "stroke_begin", "stroke": stroke, "color": "#336699", "width": 3, "points": [[0, 0]]})
}

fn points(stroke: &str, n: usize) -> Value {
    let points: Vec<Value> = (0..n).map(|i| json!([i as f64, 0.5])).collect();
    json!({"kind": "stroke_points", "stroke": stroke, "points": points})
}

fn end(stroke: &str) -> Value {
    json!({"kind": "stroke_end", "stroke": stroke})
}

fn start() -> CollabServer {
    CollabServer::start(ServerOptions::new().jwt_secret(SECRET)).expect("collab serve starts")
}

async fn connect(server: &CollabServer, token: &str) -> WsClient {
    let mut client = WsClient::connect(&server.ws_url(), token)
        .await
        .expect("connects");
    let welcome = client.recv_json(T).await.expect("welcome");
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    client
}

/// Joins `room`; the next frame must be its `joined`.
async fn join(client: &mut WsClient, room: &str) -> Value {
    client
        .send_json(&json!({"type": "join", "room": room}))
        .await
        .expect("sent");
    let joined = client.recv_json(T).await.expect("joined");
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(joined["room"], room, "{joined}");
    joined
}

/// The next frame other than a `cursor_leave`. A connection that closes
/// has its pointer's `cursor_leave` sent to the others, and cursor frames
/// are coalesced and may come after frames queued later, so commits skip
/// them.
async fn recv_skipping_cursor_leave(client: &mut WsClient) -> Value {
    client
        .recv_until(T, |frame| frame["type"] != "cursor_leave")
        .await
        .expect("a frame")
}

/// The next frame must be an `error` with `code`, naming `room` and `cid`
/// when they are given.
async fn expect_error(
    client: &mut WsClient,
    code: &str,
    room: Option<&str>,
    cid: Option<&str>,
) -> Value {
    let frame = client.recv_json(T).await.expect("an error frame");
    assert_eq!(frame["type"], "error", "{frame}");
    assert_eq!(frame["code"], code, "{frame}");
    assert!(frame["message"].is_string(), "{frame}");
    if let Some(room) = room {
        assert_eq!(frame["room"], room, "the error names the room: {frame}");
    }
    if let Some(cid) = cid {
        assert_eq!(frame["cid"], cid, "the error names the cid: {frame}");
    }
    frame
}

/// Sends `text` as one text frame and expects `error` `code`.
async fn refused_text(
    client: &mut WsClient,
    text: &str,
    code: &str,
    room: Option<&str>,
    cid: Option<&str>,
) {
    client.send_text(text).await.expect("sent");
    expect_error(client, code, room, cid).await;
}

/// Sends an op in `room` and expects `error` `code` naming the room and cid.
async fn refused_op(client: &mut WsClient, room: &str, cid: &str, op: Value, code: &str) {
    client
        .send_json(&op_frame(room, cid, op))
        .await
        .expect("sent");
    expect_error(client, code, Some(room), Some(cid)).await;
}

/// The next frame must be a `pong` for `id`.
async fn ping(client: &mut WsClient, id: &str) {
    client
        .send_json(&json!({"type": "ping", "id": id}))
        .await
        .expect("sent");
    let pong = client.recv_json(T).await.expect("pong");
    assert_eq!(pong["type"], "pong", "{pong}");
    assert_eq!(pong["id"], id, "{pong}");
}

// === the room ===

#[derive(Clone, Copy)]
enum Who {
    Ann,
    Bob,
}

/// A room with two members: `ann`, who sends the bad input, and `bob`.
struct Room {
    server: CollabServer,
    ann: WsClient,
    bob: WsClient,
    /// Ops committed so far: the room's expected `head`.
    head: u64,
    /// False once `ann` was closed by the server.
    ann_open: bool,
    cids: u32,
}

impl Room {
    /// A board `ROOM` where `ann` has write access everywhere.
    async fn board() -> Room {
        Room::new("board", None).await
    }

    /// A room of `kind`; `ann_rooms` is `ann`'s `rooms` claim.
    async fn new(kind: &str, ann_rooms: Option<Value>) -> Room {
        let server = start();
        server
            .create_room(&admin(), &json!({"kind": kind, "id": ROOM}))
            .await
            .expect("room created");
        let mut ann = connect(&server, &token("ann", ann_rooms)).await;
        let mut bob = connect(&server, &token("bob", None)).await;
        let joined = join(&mut ann, ROOM).await;
        assert_eq!(joined["head"], 0, "{joined}");
        join(&mut bob, ROOM).await;
        let presence = ann.recv_json(T).await.expect("bob's presence");
        assert_eq!(presence["type"], "presence", "{presence}");
        assert_eq!(presence["event"], "join", "{presence}");
        assert_eq!(presence["user"]["id"], "bob", "{presence}");
        Room {
            server,
            ann,
            bob,
            head: 0,
            ann_open: true,
            cids: 0,
        }
    }

    /// Creates another room of `kind` named `id`.
    async fn create(&self, kind: &str, id: &str) {
        self.server
            .create_room(&admin(), &json!({"kind": kind, "id": id}))
            .await
            .expect("room created");
    }

    fn fresh_cid(&mut self) -> String {
        self.cids += 1;
        format!("ok-{}", self.cids)
    }

    /// Sends a valid `op` from `who` with `cid` and checks that it commits
    /// with the next `seq`: the sender's next two frames are its `op` and
    /// `ack` (either order), the other member's next frame is the `op`
    /// (`cursor_leave` frames aside).
    /// Returns the `op` frame.
    async fn commit_as(&mut self, who: Who, cid: &str, op: Value) -> Value {
        let seq = self.head + 1;
        let (sender, other) = match who {
            Who::Ann => (&mut self.ann, Some(&mut self.bob)),
            Who::Bob => (&mut self.bob, self.ann_open.then_some(&mut self.ann)),
        };
        sender
            .send_json(&op_frame(ROOM, cid, op.clone()))
            .await
            .expect("sent");
        let (mut echoed, mut acked) = (None, false);
        while echoed.is_none() || !acked {
            let frame = recv_skipping_cursor_leave(sender).await;
            match frame["type"].as_str() {
                Some("op") if echoed.is_none() => echoed = Some(frame),
                Some("ack") if !acked => {
                    assert_eq!(frame["cid"], cid, "{frame}");
                    assert_eq!(frame["room"], ROOM, "{frame}");
                    assert_eq!(frame["seq"], seq, "the next seq: {frame}");
                    acked = true;
                }
                _ => panic!("expected the op and its ack, got {frame}"),
            }
        }
        let echoed = echoed.expect("the op");
        assert_eq!(echoed["seq"], seq, "the next seq: {echoed}");
        assert_eq!(echoed["cid"], cid, "{echoed}");
        assert_eq!(echoed["op"]["kind"], op["kind"], "{echoed}");
        if let Some(other) = other {
            let frame = recv_skipping_cursor_leave(other).await;
            assert_eq!(frame, echoed, "everybody gets the same op");
        }
        self.head = seq;
        echoed
    }

    /// [`commit_as`](Self::commit_as) with a fresh cid.
    async fn commit(&mut self, who: Who, op: Value) -> Value {
        let cid = self.fresh_cid();
        self.commit_as(who, &cid, op).await
    }

    /// The room's `head` as `GET /v1/rooms/{id}` reports it.
    async fn stored_head(&self) -> u64 {
        let (status, info) = self
            .server
            .get_json(&admin(), &format!("/v1/rooms/{ROOM}"))
            .await
            .expect("answered");
        assert_eq!(status, 200, "{info}");
        info["head"].as_u64().expect("a head")
    }

    /// The room's visible state, from a fresh `joined` (bob re-joins).
    async fn state(&mut self) -> Value {
        let joined = join(&mut self.bob, ROOM).await;
        assert_eq!(joined["head"], self.head, "{joined}");
        assert_eq!(joined["reset"], true, "{joined}");
        joined["state"].clone()
    }

    /// Nothing was stored (the head is where the valid ops left it), the
    /// offender's connection still answers, and the room still works: bob's
    /// op reaches both with the next seq.
    async fn assert_intact(&mut self) {
        assert_eq!(self.stored_head().await, self.head, "nothing was stored");
        if self.ann_open {
            ping(&mut self.ann, "still-there").await;
        }
        self.commit(Who::Bob, message("still working")).await;
    }

    /// [`assert_intact`](Self::assert_intact), and `cid`, refused before,
    /// was not used up: ann's valid op with it is applied, not re-acked.
    async fn assert_intact_reusing(&mut self, cid: &str) {
        self.assert_intact().await;
        self.commit_as(Who::Ann, cid, message("the cid is still free"))
            .await;
    }
}

// === transport ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_that_is_not_json_is_a_bad_request() {
    let mut room = Room::board().await;
    for text in [
        "hello",
        "",
        "{",
        r#"{"type": "op", "room": "board-1", "cid": "c1", "op": {"kind": "message", "text": "cut"#,
        "{'type': 'ping'}",
    ] {
        refused_text(&mut room.ann, text, "bad_request", None, None).await;
    }
    room.assert_intact().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_frame_is_a_bad_request_even_with_a_valid_op_inside() {
    let mut room = Room::board().await;
    let valid = op_frame(ROOM, "c1", message("sent as binary"));
    room.ann
        .send_binary(valid.to_string().into_bytes())
        .await
        .expect("sent");
    expect_error(&mut room.ann, "bad_request", None, None).await;
    room.ann
        .send_binary(vec![0, 159, 146, 150, 255])
        .await
        .expect("sent");
    expect_error(&mut room.ann, "bad_request", None, None).await;
    room.assert_intact_reusing("c1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_that_is_not_an_object_is_a_bad_request() {
    let mut room = Room::board().await;
    for text in [
        r#"[{"type": "ping"}]"#,
        "[]",
        r#""ping""#,
        "42",
        "-1.5",
        "null",
        "true",
    ] {
        refused_text(&mut room.ann, text, "bad_request", None, None).await;
    }
    room.assert_intact().await;
}

// === wrong shapes ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_fields_are_bad_requests() {
    let mut room = Room::board().await;
    // No `type`.
    refused_text(
        &mut room.ann,
        r#"{"room": "board-1"}"#,
        "bad_request",
        None,
        None,
    )
    .await;
    refused_text(&mut room.ann, "{}", "bad_request", None, None).await;
    // No `room`.
    for frame in [
        json!({"type": "join"}),
        json!({"type": "op", "cid": "c1", "op": message("no room")}),
        json!({"type": "cursor", "x": 1, "y": 2}),
    ] {
        refused_text(&mut room.ann, &frame.to_string(), "bad_request", None, None).await;
    }
    // No `cid`, no `op`, no op `kind`.
    let no_cid = json!({"type": "op", "room": ROOM, "op": message("no cid")});
    refused_text(
        &mut room.ann,
        &no_cid.to_string(),
        "bad_request",
        Some(ROOM),
        None,
    )
    .await;
    let no_op = json!({"type": "op", "room": ROOM, "cid": "c1"});
    refused_text(
        &mut room.ann,
        &no_op.to_string(),
        "bad_request",
        Some(ROOM),
        Some("c1"),
    )
    .await;
    refused_op(
        &mut room.ann,
        ROOM,
        "c1",
        json!({"text": "no kind"}),
        "bad_request",
    )
    .await;
    // Op fields: a stroke_begin without a colour, a message without text,
    // stroke_points without a stroke, a cursor without y.
    let mut no_color = begin("s1");
    no_color.as_object_mut().expect("object").remove("color");
    refused_op(&mut room.ann, ROOM, "c1", no_color, "bad_request").await;
    refused_op(
        &mut room.ann,
        ROOM,
        "c1",
        json!({"kind": "message"}),
        "bad_request",
    )
    .await;
    refused_op(
        &mut room.ann,
        ROOM,
        "c1",
        json!({"kind": "stroke_points", "points": [[1, 2]]}),
        "bad_request",
    )
    .await;
    let no_y = json!({"type": "cursor", "room": ROOM, "x": 1});
    refused_text(
        &mut room.ann,
        &no_y.to_string(),
        "bad_request",
        Some(ROOM),
        None,
    )
    .await;
    room.assert_intact_reusing("c1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_of_the_wrong_type_are_bad_requests() {
    let mut room = Room::board().await;
    for frame in [
        json!({"type": "join", "room": 7}),
        json!({"type": "op", "room": 7, "cid": "c1", "op": message("room is a number")}),
        json!({"type": "op", "room": ["board-1"], "cid": "c1", "op": message("room is a list")}),
        json!({"type": 1, "room": ROOM}),
        json!({"type": null}),
    ] {
        refused_text(&mut room.ann, &frame.to_string(), "bad_request", None, None).await;
    }
    let frames = [
        json!({"type": "op", "room": ROOM, "cid": 12, "op": message("cid is a number")}),
        json!({"type": "op", "room": ROOM, "cid": "c1", "op": "message"}),
        json!({"type": "op", "room": ROOM, "cid": "c1", "op": {"kind": "message", "text": 5}}),
        json!({"type": "op", "room": ROOM, "cid": "c1",
               "op": {"kind": "stroke_begin", "stroke": "s1", "color": "#000000", "width": "3"}}),
        json!({"type": "op", "room": ROOM, "cid": "c1",
               "op": {"kind": "stroke_begin", "stroke": 1, "color": "#000000", "width": 3}}),
        json!({"type": "op", "room": ROOM, "cid": "c1",
               "op": {"kind": "stroke_points", "stroke": "s1", "points": [1, 2]}}),
        json!({"type": "op", "room": ROOM, "cid": "c1",
               "op": {"kind": "stroke_points", "stroke": "s1", "points": [[1, 2, 3]]}}),
        json!({"type": "op", "room": ROOM, "cid": "c1",
               "op": {"kind": "stroke_points", "stroke": "s1", "points": "1,2"}}),
        json!({"type": "ping", "id": "p", "room": ROOM, "extra": 1}),
    ];
    let (last, refused) = frames.split_last().expect("frames");
    for frame in refused {
        refused_text(
            &mut room.ann,
            &frame.to_string(),
            "bad_request",
            Some(ROOM),
            None,
        )
        .await;
    }
    // Unknown fields are ignored: the last one is a valid ping.
    room.ann.send_json(last).await.expect("sent");
    let pong = room.ann.recv_json(T).await.expect("pong");
    assert_eq!(pong["type"], "pong", "{pong}");
    room.assert_intact_reusing("c1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_op_kind_that_is_a_number_is_a_bad_request() {
    let mut room = Room::board().await;
    room.commit(Who::Ann, begin("s1")).await;
    room.commit(Who::Ann, end("s1")).await;
    // Numbers are not op kinds, not even the index of one (5 is where
    // `message` is in the protocol's table, 3 is `undo`, 0 `stroke_begin`).
    for op in [
        json!({"kind": 5, "text": "kind is a number"}),
        json!({"kind": 3}),
        json!({"kind": 0, "stroke": "s2", "color": "#000000", "width": 3}),
        json!({"kind": 5.0, "text": "kind is a float"}),
    ] {
        refused_op(&mut room.ann, ROOM, "c1", op, "bad_request").await;
    }
    room.assert_intact_reusing("c1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_as_a_string_is_a_bad_request_and_joins_nothing() {
    let mut room = Room::board().await;
    room.create("board", "board-2").await;
    for since in [json!("0"), json!(1.5), json!(true), json!({})] {
        let frame = json!({"type": "join", "room": "board-2", "since": since});
        refused_text(
            &mut room.ann,
            &frame.to_string(),
            "bad_request",
            Some("board-2"),
            None,
        )
        .await;
    }
    // Not joined: an op there is refused as an op in a room not joined.
    refused_op(
        &mut room.ann,
        "board-2",
        "c1",
        message("not joined"),
        "bad_request",
    )
    .await;
    room.assert_intact_reusing("c1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_negative_since_is_a_bad_request_and_joins_nothing() {
    let mut room = Room::board().await;
    room.create("board", "board-2").await;
    for since in [-1, -1000] {
        let frame = json!({"type": "join", "room": "board-2", "since": since});
        refused_text(
            &mut room.ann,
            &frame.to_string(),
            "bad_request",
            Some("board-2"),
            None,
        )
        .await;
    }
    refused_op(
        &mut room.ann,
        "board-2",
        "c1",
        message("not joined"),
        "bad_request",
    )
    .await;
    // A re-join of the joined room with a negative since changes nothing.
    let frame = json!({"type": "join", "room": ROOM, "since": -1});
    refused_text(
        &mut room.ann,
        &frame.to_string(),
        "bad_request",
        Some(ROOM),
        None,
    )
    .await;
    room.assert_intact_reusing("c1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_type_is_a_bad_request() {
    let mut room = Room::board().await;
    for kind in ["subscribe", "JOIN", "Op", "", "welcome", "ack"] {
        let frame = json!({"type": kind, "room": ROOM, "cid": "c1"});
        refused_text(
            &mut room.ann,
            &frame.to_string(),
            "bad_request",
            Some(ROOM),
            Some("c1"),
        )
        .await;
    }
    room.assert_intact_reusing("c1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_op_kind_is_a_bad_request() {
    let mut room = Room::board().await;
    for kind in ["erase", "Message", "stroke", ""] {
        let op = json!({"kind": kind, "text": "hi", "stroke": "s1"});
        refused_op(&mut room.ann, ROOM, "c1", op, "bad_request").await;
    }
    room.assert_intact_reusing("c1").await;
}

// === limits ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_1024_points_are_too_large_and_1024_are_fine() {
    let mut room = Room::board().await;
    room.commit(Who::Ann, begin("s1")).await;
    refused_op(&mut room.ann, ROOM, "c1", points("s1", 1025), "too_large").await;
    let mut big_begin = points("s2", 1025);
    big_begin["kind"] = "stroke_begin".into();
    big_begin["color"] = "#000000".into();
    big_begin["width"] = 2.into();
    refused_op(&mut room.ann, ROOM, "c2", big_begin, "too_large").await;
    room.assert_intact_reusing("c1").await;

    let committed = room.commit_as(Who::Ann, "c2", points("s1", 1024)).await;
    assert_eq!(
        committed["op"]["points"].as_array().map(Vec::len),
        Some(1024)
    );
    let state = room.state().await;
    let strokes = state["strokes"].as_array().expect("strokes");
    assert_eq!(strokes.len(), 1, "only s1: {state}");
    assert_eq!(strokes[0]["id"], "s1");
    assert_eq!(
        strokes[0]["points"].as_array().map(Vec::len),
        Some(1 + 1024),
        "the begin's point and the 1024 accepted ones"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_4000_code_points_of_text_are_too_large_and_4000_are_fine() {
    let mut room = Room::board().await;
    // Two bytes each in UTF-8; four bytes (two UTF-16 units) each.
    let (e, smile) = ("\u{e9}", "\u{1f600}");
    refused_op(
        &mut room.ann,
        ROOM,
        "c1",
        message(&e.repeat(4001)),
        "too_large",
    )
    .await;
    refused_op(
        &mut room.ann,
        ROOM,
        "c2",
        message(&smile.repeat(4001)),
        "too_large",
    )
    .await;
    let mut mixed = "a".repeat(4000);
    mixed.push_str(e);
    refused_op(&mut room.ann, ROOM, "c3", message(&mixed), "too_large").await;
    room.assert_intact_reusing("c1").await;

    let text = smile.repeat(4000);
    let committed = room.commit_as(Who::Ann, "c2", message(&text)).await;
    assert_eq!(committed["op"]["text"], text.as_str());
    let committed = room
        .commit_as(Who::Ann, "c3", message(&e.repeat(4000)))
        .await;
    assert_eq!(
        committed["op"]["text"].as_str().map(|t| t.chars().count()),
        Some(4000)
    );
}

// === numbers ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nan_and_infinite_coordinates_are_bad_requests() {
    let mut room = Room::board().await;
    room.commit(Who::Ann, begin("s1")).await;
    // JSON has no NaN or Infinity: such a frame is not valid JSON, so the
    // error cannot name its room or cid.
    for bad in ["NaN", "-NaN", "Infinity", "-Infinity", "nan"] {
        let text = format!(
            r#"{{"type":"op","room":"{ROOM}","cid":"c1","op":{{"kind":"stroke_points","stroke":"s1","points":[[1,2],[{bad},3]]}}}}"#
        );
        refused_text(&mut room.ann, &text, "bad_request", None, None).await;
    }
    // A number too big for a double.
    let text = format!(
        r#"{{"type":"op","room":"{ROOM}","cid":"c1","op":{{"kind":"stroke_points","stroke":"s1","points":[[1e999,3]]}}}}"#
    );
    refused_text(&mut room.ann, &text, "bad_request", None, None).await;
    let text = format!(
        r##"{{"type":"op","room":"{ROOM}","cid":"c1","op":{{"kind":"stroke_begin","stroke":"s2","color":"#000000","width":NaN}}}}"##
    );
    refused_text(&mut room.ann, &text, "bad_request", None, None).await;
    let text = format!(r#"{{"type":"cursor","room":"{ROOM}","x":NaN,"y":1}}"#);
    refused_text(&mut room.ann, &text, "bad_request", None, None).await;
    room.assert_intact_reusing("c1").await;
    let state = room.state().await;
    assert_eq!(
        state["strokes"][0]["points"],
        json!([[0.0, 0.0]]),
        "no point was added: {state}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn string_coordinates_are_bad_requests() {
    let mut room = Room::board().await;
    room.commit(Who::Ann, begin("s1")).await;
    for pts in [
        json!([["1", 2]]),
        json!([[1, "2"]]),
        json!([[1, 2], ["NaN", 3]]),
        json!([[null, 2]]),
    ] {
        let op = json!({"kind": "stroke_points", "stroke": "s1", "points": pts});
        refused_op(&mut room.ann, ROOM, "c1", op, "bad_request").await;
    }
    let op = json!({"kind": "stroke_begin", "stroke": "s2", "color": "#000000", "width": 3, "points": [["0", "0"]]});
    refused_op(&mut room.ann, ROOM, "c1", op, "bad_request").await;
    room.assert_intact_reusing("c1").await;
    let state = room.state().await;
    assert_eq!(
        state["strokes"].as_array().map(Vec::len),
        Some(1),
        "{state}"
    );
    assert_eq!(
        state["strokes"][0]["points"],
        json!([[0.0, 0.0]]),
        "{state}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_with_a_string_coordinate_is_a_bad_request_and_not_relayed() {
    let mut room = Room::board().await;
    for frame in [
        json!({"type": "cursor", "room": ROOM, "x": "10", "y": 20}),
        json!({"type": "cursor", "room": ROOM, "x": 10, "y": "20"}),
        json!({"type": "cursor", "room": ROOM, "x": null, "y": 20}),
    ] {
        refused_text(
            &mut room.ann,
            &frame.to_string(),
            "bad_request",
            Some(ROOM),
            None,
        )
        .await;
    }
    // A valid move afterwards is the only one bob sees.
    room.ann
        .send_json(&json!({"type": "cursor", "room": ROOM, "x": 10.5, "y": 20}))
        .await
        .expect("sent");
    let cursor = room.bob.recv_json(T).await.expect("the cursor");
    assert_eq!(cursor["type"], "cursor", "{cursor}");
    assert_eq!(cursor["user"], "ann", "{cursor}");
    assert_eq!(
        (cursor["x"].as_f64(), cursor["y"].as_f64()),
        (Some(10.5), Some(20.0))
    );
    room.assert_intact().await;
}

// === op rules ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_colour_is_a_bad_request() {
    let mut room = Room::board().await;
    for color in [
        json!("red"),
        json!("#12345"),
        json!("#1234567"),
        json!("#12345g"),
        json!("123456"),
        json!(""),
        json!(0x123456),
    ] {
        let op = json!({"kind": "stroke_begin", "stroke": "s1", "color": color, "width": 3});
        refused_op(&mut room.ann, ROOM, "c1", op, "bad_request").await;
    }
    room.assert_intact_reusing("c1").await;
    // The stroke id was not taken by the refused begins.
    room.commit(Who::Ann, begin("s1")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_width_of_0_or_1e9_is_a_bad_request() {
    let mut room = Room::board().await;
    for width in [json!(0), json!(0.0), json!(1e9), json!(-1), json!(100.5)] {
        let op =
            json!({"kind": "stroke_begin", "stroke": "s1", "color": "#000000", "width": width});
        refused_op(&mut room.ann, ROOM, "c1", op, "bad_request").await;
    }
    room.assert_intact_reusing("c1").await;
    // The bounds themselves: 0 < w ≤ 100.
    let mut op = begin("s1");
    op["width"] = json!(100);
    room.commit(Who::Ann, op).await;
    let mut op = begin("s2");
    op["width"] = json!(0.01);
    room.commit(Who::Ann, op).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_stroke_id_is_a_bad_request() {
    let mut room = Room::board().await;
    room.commit(Who::Ann, begin("s1")).await;
    // By another user while it is open, by its owner while open and after
    // it ended.
    refused_op(&mut room.bob, ROOM, "b1", begin("s1"), "bad_request").await;
    refused_op(&mut room.ann, ROOM, "c1", begin("s1"), "bad_request").await;
    room.commit(Who::Ann, end("s1")).await;
    refused_op(&mut room.ann, ROOM, "c2", begin("s1"), "bad_request").await;
    // Even once the stroke is undone.
    room.commit(Who::Ann, json!({"kind": "undo"})).await;
    refused_op(&mut room.ann, ROOM, "c3", begin("s1"), "bad_request").await;
    room.assert_intact_reusing("c1").await;
    room.commit_as(Who::Bob, "b1", message("b1 was not used up"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_on_another_users_open_stroke_are_forbidden() {
    let mut room = Room::board().await;
    room.commit(Who::Ann, begin("s1")).await;
    refused_op(&mut room.bob, ROOM, "b1", points("s1", 3), "forbidden").await;
    room.assert_intact().await;
    room.commit_as(Who::Bob, "b1", message("b1 was not used up"))
        .await;
    // The owner still can.
    room.commit(Who::Ann, points("s1", 3)).await;
    let state = room.state().await;
    assert_eq!(
        state["strokes"][0]["points"].as_array().map(Vec::len),
        Some(1 + 3),
        "{state}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_after_stroke_end_are_a_bad_request() {
    let mut room = Room::board().await;
    room.commit(Who::Ann, begin("s1")).await;
    room.commit(Who::Ann, end("s1")).await;
    refused_op(&mut room.ann, ROOM, "c1", points("s1", 2), "bad_request").await;
    // Ending it twice, too.
    refused_op(&mut room.ann, ROOM, "c2", end("s1"), "bad_request").await;
    room.assert_intact_reusing("c1").await;
    let state = room.state().await;
    assert_eq!(
        state["strokes"][0]["points"],
        json!([[0.0, 0.0]]),
        "{state}"
    );
    assert_eq!(state["strokes"][0]["done"], true, "{state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_on_an_unknown_stroke_are_not_found() {
    let mut room = Room::board().await;
    refused_op(&mut room.ann, ROOM, "c1", points("nope", 2), "not_found").await;
    refused_op(&mut room.ann, ROOM, "c2", end("nope"), "not_found").await;
    room.assert_intact_reusing("c1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_op_in_a_room_not_joined_is_a_bad_request() {
    let mut room = Room::board().await;
    room.create("board", "board-2").await;
    refused_op(
        &mut room.ann,
        "board-2",
        "c1",
        message("not joined"),
        "bad_request",
    )
    .await;
    refused_op(
        &mut room.ann,
        "no-such-room",
        "c1",
        message("no room"),
        "bad_request",
    )
    .await;
    // A room left is a room not joined.
    join(&mut room.ann, "board-2").await;
    room.ann
        .send_json(&json!({"type": "leave", "room": "board-2"}))
        .await
        .expect("sent");
    refused_op(
        &mut room.ann,
        "board-2",
        "c1",
        message("left"),
        "bad_request",
    )
    .await;
    let (status, info) = room
        .server
        .get_json(&admin(), "/v1/rooms/board-2")
        .await
        .expect("answered");
    assert_eq!((status, &info["head"]), (200, &json!(0)), "{info}");
    room.assert_intact_reusing("c1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undo_with_nothing_to_undo_is_nothing_to_undo() {
    let mut room = Room::board().await;
    refused_op(
        &mut room.ann,
        ROOM,
        "c1",
        json!({"kind": "undo"}),
        "nothing_to_undo",
    )
    .await;
    // Never another user's stroke, nor an open one.
    room.commit(Who::Bob, begin("b-s1")).await;
    room.commit(Who::Bob, end("b-s1")).await;
    room.commit(Who::Ann, begin("s1")).await;
    refused_op(
        &mut room.ann,
        ROOM,
        "c2",
        json!({"kind": "undo"}),
        "nothing_to_undo",
    )
    .await;
    // Once its one stroke is undone, there is nothing left.
    room.commit(Who::Ann, end("s1")).await;
    let undone = room.commit(Who::Ann, json!({"kind": "undo"})).await;
    assert_eq!(undone["op"]["stroke"], "s1", "{undone}");
    refused_op(
        &mut room.ann,
        ROOM,
        "c3",
        json!({"kind": "undo"}),
        "nothing_to_undo",
    )
    .await;
    room.assert_intact_reusing("c1").await;
    let state = room.state().await;
    let ids: Vec<&Value> = state["strokes"]
        .as_array()
        .expect("strokes")
        .iter()
        .map(|s| &s["id"])
        .collect();
    assert_eq!(ids, [&json!("b-s1")], "bob's stroke stays: {state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redo_with_nothing_to_redo_is_nothing_to_redo() {
    let mut room = Room::board().await;
    refused_op(
        &mut room.ann,
        ROOM,
        "c1",
        json!({"kind": "redo"}),
        "nothing_to_redo",
    )
    .await;
    // Bob's undone stroke is not ann's to redo.
    room.commit(Who::Bob, begin("b-s1")).await;
    room.commit(Who::Bob, end("b-s1")).await;
    room.commit(Who::Bob, json!({"kind": "undo"})).await;
    refused_op(
        &mut room.ann,
        ROOM,
        "c2",
        json!({"kind": "redo"}),
        "nothing_to_redo",
    )
    .await;
    // A new stroke_end clears the owner's redo stack.
    room.commit(Who::Ann, begin("s1")).await;
    room.commit(Who::Ann, end("s1")).await;
    room.commit(Who::Ann, json!({"kind": "undo"})).await;
    room.commit(Who::Ann, begin("s2")).await;
    room.commit(Who::Ann, end("s2")).await;
    refused_op(
        &mut room.ann,
        ROOM,
        "c3",
        json!({"kind": "redo"}),
        "nothing_to_redo",
    )
    .await;
    room.assert_intact_reusing("c1").await;
    let state = room.state().await;
    let ids: Vec<&Value> = state["strokes"]
        .as_array()
        .expect("strokes")
        .iter()
        .map(|s| &s["id"])
        .collect();
    assert_eq!(ids, [&json!("s2")], "{state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stroke_ops_undo_and_redo_in_a_channel_are_bad_requests() {
    let mut room = Room::new("channel", None).await;
    let ops = [
        begin("s1"),
        json!({"kind": "stroke_begin", "stroke": "s2", "color": "#000000", "width": 2, "points": []}),
        points("s1", 2),
        end("s1"),
        json!({"kind": "undo"}),
        json!({"kind": "redo"}),
    ];
    for (n, op) in ops.into_iter().enumerate() {
        refused_op(&mut room.ann, ROOM, &format!("c{n}"), op, "bad_request").await;
    }
    room.assert_intact_reusing("c0").await;
    let state = room.state().await;
    assert_eq!(state["strokes"], json!([]), "{state}");
}

// === rooms and tokens ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_id_too_long_or_with_a_slash_is_a_bad_request() {
    let mut room = Room::board().await;
    let too_long = "r".repeat(65);
    for id in [
        too_long.as_str(),
        "a/b",
        "board-1/",
        "../board-1",
        "",
        "a b",
        "r\u{e9}",
    ] {
        let frame = json!({"type": "join", "room": id});
        refused_text(
            &mut room.ann,
            &frame.to_string(),
            "bad_request",
            Some(id),
            None,
        )
        .await;
    }
    // 64 characters is a well-formed id.
    let longest = "r".repeat(64);
    room.create("board", &longest).await;
    let joined = join(&mut room.ann, &longest).await;
    assert_eq!(joined["head"], 0, "{joined}");
    // Ops and cursors with such ids are bad requests too.
    for id in [too_long.as_str(), "board-1/x"] {
        let frame = op_frame(id, "c1", message("bad room id"));
        refused_text(
            &mut room.ann,
            &frame.to_string(),
            "bad_request",
            Some(id),
            Some("c1"),
        )
        .await;
        let cursor = json!({"type": "cursor", "room": id, "x": 1, "y": 2});
        refused_text(
            &mut room.ann,
            &cursor.to_string(),
            "bad_request",
            Some(id),
            None,
        )
        .await;
    }
    room.assert_intact_reusing("c1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_token_may_not_send_ops_but_its_cursor_relays() {
    let mut room = Room::new("board", Some(json!({ROOM: "read"}))).await;
    room.commit(Who::Bob, begin("b-s1")).await;
    refused_op(&mut room.ann, ROOM, "c1", message("read only"), "forbidden").await;
    refused_op(&mut room.ann, ROOM, "c2", begin("s1"), "forbidden").await;
    refused_op(
        &mut room.ann,
        ROOM,
        "c3",
        json!({"kind": "undo"}),
        "forbidden",
    )
    .await;
    room.ann
        .send_json(&json!({"type": "cursor", "room": ROOM, "x": 3, "y": 4}))
        .await
        .expect("sent");
    let cursor = room.bob.recv_json(T).await.expect("the cursor");
    assert_eq!(cursor["type"], "cursor", "{cursor}");
    assert_eq!(cursor["user"], "ann", "{cursor}");
    assert_eq!(
        (cursor["x"].as_f64(), cursor["y"].as_f64()),
        (Some(3.0), Some(4.0))
    );
    room.ann
        .send_json(&json!({"type": "cursor_leave", "room": ROOM}))
        .await
        .expect("sent");
    let left = room.bob.recv_json(T).await.expect("cursor_leave");
    assert_eq!(left["type"], "cursor_leave", "{left}");
    assert_eq!(left["user"], "ann", "{left}");
    room.assert_intact().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_the_claim_does_not_cover_is_forbidden_whether_it_exists_or_not() {
    let mut room = Room::new("board", Some(json!({ROOM: "write"}))).await;
    room.create("board", "board-2").await;
    for id in ["board-2", "no-such-room"] {
        let frame = json!({"type": "join", "room": id});
        refused_text(
            &mut room.ann,
            &frame.to_string(),
            "forbidden",
            Some(id),
            None,
        )
        .await;
    }
    // The refused join joined nothing.
    refused_op(
        &mut room.ann,
        "board-2",
        "c1",
        message("not joined"),
        "bad_request",
    )
    .await;
    room.assert_intact_reusing("c1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_that_does_not_exist_is_not_found() {
    let mut room = Room::board().await;
    // Every time: several rooms, each joined twice in a row (a join starts
    // the room's actor, which finds no room and stops; whatever the timing,
    // the answer is not_found).
    for n in 0..15 {
        let id = format!("no-such-room-{n}");
        for _ in 0..2 {
            let frame = json!({"type": "join", "room": id});
            refused_text(
                &mut room.ann,
                &frame.to_string(),
                "not_found",
                Some(&id),
                None,
            )
            .await;
        }
    }
    // The refused joins joined nothing.
    refused_op(
        &mut room.ann,
        "no-such-room-0",
        "c1",
        message("not joined"),
        "bad_request",
    )
    .await;
    room.assert_intact_reusing("c1").await;
}

/// A server, a token it accepts, and the 401s for the tokens given.
async fn assert_upgrade_refused(tokens: &[(&str, Option<String>)]) {
    let server = start();
    let url = server.ws_url();
    for (what, token) in tokens {
        let status = upgrade_status(&url, token.as_deref())
            .await
            .expect("answered");
        assert_eq!(status, 401, "{what}");
        if let Some(token) = token {
            let refused = WsClient::connect_with_header(&url, token).await.err();
            assert!(
                matches!(refused, Some(WsError::Rejected(401))),
                "{what} as a header: {refused:?}"
            );
        }
    }
    // Against the same server a good token is welcome.
    connect(&server, &token("ann", None)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_gets_401_at_the_upgrade() {
    let expired = sign(&json!({"sub": "ann", "exp": now_secs() - 5}), SECRET);
    let long_ago = sign(&json!({"sub": "ann", "exp": 1}), SECRET);
    assert_upgrade_refused(&[("expired", Some(expired)), ("long expired", Some(long_ago))]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_signed_with_another_key_gets_401_at_the_upgrade() {
    let claims = json!({"sub": "ann", "exp": now_secs() + 3600});
    let other_key = sign(&claims, "some-other-secret-of-the-same-length!");
    let empty_key = sign(&claims, "");
    // Same claims, unsigned (`alg: none`).
    let good = sign(&claims, SECRET);
    let mut parts = good.split('.');
    let (_, payload) = (parts.next(), parts.next().expect("a payload"));
    let unsigned = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
    assert_upgrade_refused(&[
        ("another key", Some(other_key)),
        ("an empty key", Some(empty_key)),
        ("alg none", Some(unsigned)),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_exp_or_sub_gets_401_at_the_upgrade() {
    let no_exp = sign(&json!({"sub": "ann"}), SECRET);
    let null_exp = sign(&json!({"sub": "ann", "exp": null}), SECRET);
    let no_sub = sign(&json!({"exp": now_secs() + 3600}), SECRET);
    assert_upgrade_refused(&[
        ("no exp", Some(no_exp)),
        ("null exp", Some(null_exp)),
        ("no sub", Some(no_sub)),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_malformed_token_gets_401_at_the_upgrade() {
    assert_upgrade_refused(&[
        ("no token", None),
        ("empty token", Some(String::new())),
        ("not a jwt", Some("not-a-jwt".to_owned())),
        ("three dots", Some("a.b.c".to_owned())),
    ])
    .await;
}

// === frame size ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_kib_frame_closes_the_connection_with_1009() {
    let mut room = Room::board().await;
    // A well-formed op: the frame limit comes before any other check.
    let frame = op_frame(ROOM, "c1", message(&"a".repeat(200 * 1024)));
    room.ann.send_json(&frame).await.expect("sent");
    let code = room.ann.recv_close(T).await.expect("closed");
    assert_eq!(code, Some(1009), "frame too big");
    room.ann_open = false;
    let left = recv_skipping_cursor_leave(&mut room.bob).await;
    assert_eq!(left["type"], "presence", "{left}");
    assert_eq!(left["event"], "leave", "{left}");
    assert_eq!(left["user"]["id"], "ann", "{left}");
    room.assert_intact().await;
    // A new connection of the same user carries on, and c1 is free.
    let mut ann = connect(&room.server, &token("ann", None)).await;
    let joined = join(&mut ann, ROOM).await;
    assert_eq!(joined["head"], room.head, "{joined}");
    room.ann = ann;
    room.ann_open = true;
    let presence = recv_skipping_cursor_leave(&mut room.bob).await;
    assert_eq!(presence["event"], "join", "{presence}");
    room.commit_as(Who::Ann, "c1", message("back")).await;
}
