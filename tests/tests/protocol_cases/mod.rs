//! The protocol cases, shared by `protocol.rs` (embedded store) and
//! `protocol_cql.rs` (CQL store): each test starts its server with
//! `super::start()`.

use std::time::Duration;

use collab_tests::harness::{CollabServer, WsClient};
use serde_json::{Value, json};

const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

use super::start;

async fn create_room(server: &CollabServer, token: &str, body: Value) -> Value {
    let response = server
        .http()
        .post(format!("{}/v1/rooms", server.http_url()))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status().as_u16(), 201, "create {body}");
    response.json().await.expect("json")
}

async fn get_json(server: &CollabServer, token: &str, path: &str) -> (u16, Value) {
    let response = server
        .http()
        .get(format!("{}{path}", server.http_url()))
        .bearer_auth(token)
        .send()
        .await
        .expect("answered");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn connect(server: &CollabServer, token: &str) -> WsClient {
    let mut client = WsClient::connect(&server.ws_url(), token)
        .await
        .expect("connects");
    let welcome = client.recv_json(FRAME_TIMEOUT).await.expect("welcome");
    assert_eq!(welcome["type"], "welcome");
    client
}

async fn user(server: &CollabServer, name: &str) -> (String, WsClient) {
    let token = server.dev_token(name).await.expect("dev token");
    let client = connect(server, &token).await;
    (token, client)
}

async fn join(client: &mut WsClient, room: &str, since: Option<u64>, epoch: Option<&str>) -> Value {
    let mut frame = json!({"type": "join", "room": room});
    if let Some(since) = since {
        frame["since"] = json!(since);
    }
    if let Some(epoch) = epoch {
        frame["epoch"] = json!(epoch);
    }
    client.send_json(&frame).await.expect("sends");
    let joined = client
        .recv_until(FRAME_TIMEOUT, |f| {
            (f["type"] == "joined" && f["room"] == room) || f["type"] == "error"
        })
        .await
        .expect("joined");
    assert_eq!(joined["type"], "joined", "{joined}");
    joined
}

async fn send_op(client: &mut WsClient, room: &str, cid: &str, op: Value) {
    client
        .send_json(&json!({"type": "op", "room": room, "cid": cid, "op": op}))
        .await
        .expect("sends");
}

fn message(text: &str) -> Value {
    json!({"kind": "message", "text": text})
}

/// Every frame up to the `pong` answering a ping sent now: what the server
/// had queued for this client before it handled the ping.
async fn drain(client: &mut WsClient) -> Vec<Value> {
    let id = format!("fence-{}", rand_id());
    client
        .send_json(&json!({"type": "ping", "id": id}))
        .await
        .expect("sends");
    let mut frames = Vec::new();
    loop {
        let frame = client.recv_json(FRAME_TIMEOUT).await.expect("a frame");
        if frame["type"] == "pong" && frame["id"] == id {
            return frames;
        }
        frames.push(frame);
    }
}

fn rand_id() -> u64 {
    collab_store::testsuite::random_u64()
}

/// Receives op frames until `count` of them arrived; returns them.
async fn ops(client: &mut WsClient, room: &str, count: usize) -> Vec<Value> {
    let mut got = Vec::new();
    while got.len() < count {
        let frame = client
            .recv_until(FRAME_TIMEOUT, |f| f["type"] == "op" && f["room"] == room)
            .await
            .expect("op frame");
        got.push(frame);
    }
    got
}

fn seqs(frames: &[Value]) -> Vec<u64> {
    frames.iter().filter_map(|f| f["seq"].as_u64()).collect()
}

#[tokio::test]
async fn two_users_see_one_gapless_order_and_the_sender_is_acked() {
    let server = start();
    let (ann_token, mut ann) = user(&server, "ann").await;
    let (_, mut bob) = user(&server, "bob").await;
    let room = create_room(&server, &ann_token, json!({"kind": "board"})).await;
    let room = room["id"].as_str().expect("id").to_owned();
    join(&mut ann, &room, None, None).await;
    join(&mut bob, &room, None, None).await;

    // Both write at once, pipelining without waiting for acks.
    for i in 0..20 {
        send_op(
            &mut ann,
            &room,
            &format!("a{i}"),
            message(&format!("ann {i}")),
        )
        .await;
        send_op(
            &mut bob,
            &room,
            &format!("b{i}"),
            message(&format!("bob {i}")),
        )
        .await;
    }
    let mut seen = Vec::new();
    for client in [&mut ann, &mut bob] {
        let mut op_frames = Vec::new();
        let mut acks = Vec::new();
        while op_frames.len() < 40 || acks.len() < 20 {
            let frame = client.recv_json(FRAME_TIMEOUT).await.expect("frame");
            match frame["type"].as_str() {
                Some("op") => op_frames.push(frame),
                Some("ack") => acks.push(frame),
                Some("presence") => {}
                other => panic!("unexpected {other:?}: {frame}"),
            }
        }
        assert_eq!(seqs(&op_frames), (1..=40).collect::<Vec<u64>>());
        // Each ack names the seq its op got.
        for ack in &acks {
            let op = op_frames
                .iter()
                .find(|op| op["cid"] == ack["cid"])
                .expect("the acked op was broadcast");
            assert_eq!(op["seq"], ack["seq"]);
            assert_eq!(ack["room"], room.as_str());
        }
        seen.push(op_frames);
    }
    assert_eq!(seen[0], seen[1], "both saw the same ops in the same order");
    // Each user's own ops keep the order they were sent in.
    let ann_texts: Vec<&str> = seen[0]
        .iter()
        .filter(|f| f["user"] == "ann")
        .filter_map(|f| f["op"]["text"].as_str())
        .collect();
    let expected: Vec<String> = (0..20).map(|i| format!("ann {i}")).collect();
    assert_eq!(ann_texts, expected);
    assert!(
        seen[0]
            .iter()
            .all(|f| f["ts"].as_i64().is_some_and(|ts| ts > 1_600_000_000_000))
    );
}

#[tokio::test]
async fn resume_returns_exactly_the_missed_ops_or_a_reset() {
    let server = start();
    let (token, mut ann) = user(&server, "ann").await;
    let room = create_room(&server, &token, json!({"kind": "channel", "id": "resume"})).await;
    let epoch = room["epoch"].as_str().expect("epoch").to_owned();
    join(&mut ann, "resume", None, None).await;
    for i in 1..=5 {
        send_op(
            &mut ann,
            "resume",
            &format!("c{i}"),
            message(&format!("m{i}")),
        )
        .await;
    }
    ops(&mut ann, "resume", 5).await;

    let (_, mut bob) = user(&server, "bob").await;
    let joined = join(&mut bob, "resume", Some(2), Some(&epoch)).await;
    assert_eq!(joined["reset"], false);
    assert_eq!(joined["head"], 5);
    assert_eq!(joined["epoch"], epoch.as_str());
    assert_eq!(joined["kind"], "channel");
    let replayed: Vec<Value> = joined["ops"].as_array().expect("ops").clone();
    assert_eq!(seqs(&replayed), [3, 4, 5]);
    assert_eq!(replayed[0]["op"]["text"], "m3");

    // `since` without an epoch is taken as valid.
    let (_, mut cat) = user(&server, "cat").await;
    let joined = join(&mut cat, "resume", Some(0), None).await;
    assert_eq!(
        seqs(joined["ops"].as_array().expect("ops")),
        [1, 2, 3, 4, 5]
    );
    let joined = join(&mut cat, "resume", Some(5), None).await;
    assert_eq!(joined["reset"], false);
    assert_eq!(joined["ops"], json!([]));

    // Ahead of head, another epoch, or no since: the full state.
    for (since, epoch) in [
        (Some(9), None),
        (Some(2), Some("other-epoch")),
        (None, None),
    ] {
        let joined = join(&mut cat, "resume", since, epoch).await;
        assert_eq!(joined["reset"], true, "{since:?} {epoch:?}");
        let messages = joined["state"]["messages"].as_array().expect("messages");
        assert_eq!(seqs(messages), [1, 2, 3, 4, 5]);
        assert_eq!(joined["state"]["strokes"], json!([]));
    }

    // After joined, the next op arrives once, with no duplicate of the replay.
    send_op(&mut ann, "resume", "c6", message("m6")).await;
    let next = ops(&mut bob, "resume", 1).await;
    assert_eq!(seqs(&next), [6]);
}

#[tokio::test]
async fn rejoin_is_idempotent_and_presence_is_per_user() {
    let server = start();
    let (ann_token, mut ann1) = user(&server, "ann").await;
    let mut ann2 = connect(&server, &ann_token).await;
    let (_, mut bob) = user(&server, "bob").await;
    create_room(&server, &ann_token, json!({"kind": "board", "id": "lobby"})).await;

    let joined = join(&mut bob, "lobby", None, None).await;
    let presence: Vec<&str> = joined["presence"]
        .as_array()
        .expect("presence")
        .iter()
        .filter_map(|u| u["id"].as_str())
        .collect();
    assert_eq!(presence, ["bob"], "the joiner is listed");

    join(&mut ann1, "lobby", None, None).await;
    join(&mut ann2, "lobby", None, None).await; // a second tab: no event
    join(&mut ann1, "lobby", None, None).await; // a re-join: no event
    let frames = drain(&mut bob).await;
    let events: Vec<(&str, &str)> = frames
        .iter()
        .filter(|f| f["type"] == "presence")
        .map(|f| {
            (
                f["event"].as_str().unwrap_or(""),
                f["user"]["id"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(events, [("join", "ann")]);
    let ann_presence = frames
        .iter()
        .find(|f| f["type"] == "presence")
        .expect("presence frame");
    assert!(
        ann_presence["user"]["color"]
            .as_str()
            .is_some_and(|c| c.starts_with('#'))
    );
    // The joiner hears nothing about itself.
    assert!(
        drain(&mut ann1)
            .await
            .iter()
            .all(|f| f["type"] != "presence")
    );

    let joined = join(&mut ann2, "lobby", None, None).await;
    let ids: Vec<&str> = joined["presence"]
        .as_array()
        .expect("presence")
        .iter()
        .filter_map(|u| u["id"].as_str())
        .collect();
    assert_eq!(ids, ["ann", "bob"], "each user once");

    // One tab leaves: ann is still there.
    ann1.send_json(&json!({"type": "leave", "room": "lobby"}))
        .await
        .expect("sends");
    drain(&mut ann1).await;
    assert!(
        drain(&mut bob)
            .await
            .iter()
            .all(|f| f["type"] != "presence")
    );
    // The last tab goes: everyone hears it.
    ann2.close().await.expect("closes");
    let left = bob
        .recv_type("presence", FRAME_TIMEOUT)
        .await
        .expect("presence leave");
    assert_eq!(left["event"], "leave");
    assert_eq!(left["user"]["id"], "ann");
}

#[tokio::test]
async fn cursors_are_relayed_but_never_echoed() {
    let server = start();
    let (ann_token, mut ann) = user(&server, "ann").await;
    let mut ann_tab = connect(&server, &ann_token).await;
    let (_, mut bob) = user(&server, "bob").await;
    create_room(
        &server,
        &ann_token,
        json!({"kind": "board", "id": "pointer"}),
    )
    .await;
    for client in [&mut ann, &mut ann_tab, &mut bob] {
        join(client, "pointer", None, None).await;
    }
    ann.send_json(&json!({"type": "cursor", "room": "pointer", "x": 10.5, "y": -3}))
        .await
        .expect("sends");
    let cursor = bob
        .recv_type("cursor", FRAME_TIMEOUT)
        .await
        .expect("cursor");
    assert_eq!(
        cursor,
        json!({"type": "cursor", "room": "pointer", "user": "ann", "x": 10.5, "y": -3.0})
    );
    let other_tab = ann_tab
        .recv_type("cursor", FRAME_TIMEOUT)
        .await
        .expect("cursor");
    assert_eq!(other_tab["user"], "ann");
    assert!(
        drain(&mut ann).await.iter().all(|f| f["type"] != "cursor"),
        "the sender got its own cursor back"
    );
    ann.send_json(&json!({"type": "cursor_leave", "room": "pointer"}))
        .await
        .expect("sends");
    let gone = bob
        .recv_type("cursor_leave", FRAME_TIMEOUT)
        .await
        .expect("cursor_leave");
    assert_eq!(
        gone,
        json!({"type": "cursor_leave", "room": "pointer", "user": "ann"})
    );
}

#[tokio::test]
async fn read_only_tokens_read_but_do_not_write() {
    let server = start();
    let (ann_token, mut ann) = user(&server, "ann").await;
    create_room(
        &server,
        &ann_token,
        json!({"kind": "board", "id": "gallery"}),
    )
    .await;
    join(&mut ann, "gallery", None, None).await;
    send_op(&mut ann, "gallery", "c1", message("welcome")).await;
    ops(&mut ann, "gallery", 1).await;

    let viewer_token = server
        .mint_token("viewer", &["--room", "gallery=read"])
        .expect("token");
    let mut viewer = connect(&server, &viewer_token).await;
    let joined = join(&mut viewer, "gallery", None, None).await;
    assert_eq!(joined["state"]["messages"][0]["op"]["text"], "welcome");
    send_op(&mut viewer, "gallery", "v1", message("let me in")).await;
    let error = viewer
        .recv_type("error", FRAME_TIMEOUT)
        .await
        .expect("error");
    assert_eq!(error["code"], "forbidden");
    assert_eq!(error["cid"], "v1");
    assert_eq!(error["room"], "gallery");
    // Cursors only need read access.
    viewer
        .send_json(&json!({"type": "cursor", "room": "gallery", "x": 1, "y": 2}))
        .await
        .expect("sends");
    let cursor = ann
        .recv_type("cursor", FRAME_TIMEOUT)
        .await
        .expect("cursor");
    assert_eq!(cursor["user"], "viewer");
    // History is readable; other rooms are not.
    let (status, page) = get_json(&server, &viewer_token, "/v1/rooms/gallery/history").await;
    assert_eq!(status, 200);
    assert_eq!(page["ops"].as_array().map(Vec::len), Some(1));
    let (status, _) = get_json(&server, &viewer_token, "/v1/rooms/elsewhere").await;
    assert_eq!(status, 403);
    viewer
        .send_json(&json!({"type": "join", "room": "elsewhere"}))
        .await
        .expect("sends");
    let error = viewer
        .recv_type("error", FRAME_TIMEOUT)
        .await
        .expect("error");
    assert_eq!(error["code"], "forbidden");
    assert_eq!(error["room"], "elsewhere");
    // Nothing the viewer sent was stored.
    let (_, info) = get_json(&server, &ann_token, "/v1/rooms/gallery").await;
    assert_eq!(info["head"], 1);
}

#[tokio::test]
async fn private_rooms_admit_members_only() {
    let server = start();
    let (ann_token, mut ann) = user(&server, "ann").await;
    let (bob_token, mut bob) = user(&server, "bob").await;
    let (eve_token, mut eve) = user(&server, "eve").await;
    let dm = create_room(
        &server,
        &ann_token,
        json!({"kind": "channel", "members": ["bob"]}),
    )
    .await;
    let dm = dm["id"].as_str().expect("id").to_owned();
    join(&mut ann, &dm, None, None).await;
    join(&mut bob, &dm, None, None).await;
    eve.send_json(&json!({"type": "join", "room": dm}))
        .await
        .expect("sends");
    let error = eve.recv_type("error", FRAME_TIMEOUT).await.expect("error");
    assert_eq!(error["code"], "forbidden");
    for (token, status) in [(&ann_token, 200), (&bob_token, 200), (&eve_token, 403)] {
        let (got, _) = get_json(&server, token, &format!("/v1/rooms/{dm}")).await;
        assert_eq!(got, status);
        let (got, _) = get_json(&server, token, &format!("/v1/rooms/{dm}/history")).await;
        assert_eq!(got, status);
    }
    let (_, mine) = get_json(&server, &bob_token, "/v1/me/rooms").await;
    let ids: Vec<&str> = mine["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(ids, [dm.as_str()]);
    let (_, theirs) = get_json(&server, &eve_token, "/v1/me/rooms").await;
    assert_eq!(theirs["rooms"], json!([]));
    // A room that does not exist is not_found for anyone the claim covers.
    eve.send_json(&json!({"type": "join", "room": "nowhere"}))
        .await
        .expect("sends");
    let error = eve.recv_type("error", FRAME_TIMEOUT).await.expect("error");
    assert_eq!(error["code"], "not_found");
}

#[tokio::test]
async fn history_pages_are_complete_and_stable() {
    let server = start();
    let (token, mut ann) = user(&server, "ann").await;
    create_room(&server, &token, json!({"kind": "board", "id": "pages"})).await;
    join(&mut ann, "pages", None, None).await;
    // 25 ops: a message every fifth, strokes in between.
    let mut n = 0;
    for i in 0..5 {
        let stroke = format!("s{i}");
        for op in [
            json!({"kind": "stroke_begin", "stroke": stroke, "color": "#000000", "width": 2, "points": [[0, 0]]}),
            json!({"kind": "stroke_points", "stroke": stroke, "points": [[1, 1]]}),
            json!({"kind": "stroke_points", "stroke": stroke, "points": [[2, 2]]}),
            json!({"kind": "stroke_end", "stroke": stroke}),
            message(&format!("note {i}")),
        ] {
            n += 1;
            send_op(&mut ann, "pages", &format!("c{n}"), op).await;
        }
    }
    let all = ops(&mut ann, "pages", 25).await;

    // Walk every page of 10, newest first.
    let mut walked = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let path = match before {
            Some(b) => format!("/v1/rooms/pages/history?limit=10&before={b}"),
            None => "/v1/rooms/pages/history?limit=10".to_owned(),
        };
        let (status, page) = get_json(&server, &token, &path).await;
        assert_eq!(status, 200, "{page}");
        let page_ops = page["ops"].as_array().expect("ops").clone();
        walked.extend(page_ops);
        match page["next_before"].as_u64() {
            Some(next) => before = Some(next),
            None => break,
        }
    }
    let mut expected = all.clone();
    expected.reverse();
    assert_eq!(
        walked, expected,
        "every op once, newest first, as broadcast"
    );

    // Only messages.
    let (_, page) = get_json(
        &server,
        &token,
        "/v1/rooms/pages/history?kinds=message&limit=3",
    )
    .await;
    assert_eq!(seqs(page["ops"].as_array().expect("ops")), [25, 20, 15]);
    let next = page["next_before"].as_u64().expect("more");
    let (_, page) = get_json(
        &server,
        &token,
        &format!("/v1/rooms/pages/history?kinds=message&limit=3&before={next}"),
    )
    .await;
    assert_eq!(seqs(page["ops"].as_array().expect("ops")), [10, 5]);
    assert_eq!(page["next_before"], Value::Null);

    // A page with an explicit before never changes.
    let (_, first) = get_json(&server, &token, "/v1/rooms/pages/history?before=20&limit=5").await;
    send_op(&mut ann, "pages", "later", message("later")).await;
    ops(&mut ann, "pages", 1).await;
    let (_, again) = get_json(&server, &token, "/v1/rooms/pages/history?before=20&limit=5").await;
    assert_eq!(first, again);
    assert_eq!(
        seqs(first["ops"].as_array().expect("ops")),
        [19, 18, 17, 16, 15]
    );
}

#[tokio::test]
async fn undo_and_redo_travel_with_their_stroke() {
    let server = start();
    let (token, mut ann) = user(&server, "ann").await;
    let (_, mut bob) = user(&server, "bob").await;
    create_room(&server, &token, json!({"kind": "board", "id": "undo"})).await;
    join(&mut ann, "undo", None, None).await;
    join(&mut bob, "undo", None, None).await;
    send_op(&mut ann, "undo", "c1", json!({"kind": "stroke_begin", "stroke": "s1", "color": "#ff0000", "width": 3, "points": [[1, 2]]})).await;
    send_op(
        &mut ann,
        "undo",
        "c2",
        json!({"kind": "stroke_end", "stroke": "s1"}),
    )
    .await;
    send_op(&mut ann, "undo", "c3", json!({"kind": "undo"})).await;
    let seen = ops(&mut bob, "undo", 3).await;
    assert_eq!(seen[2]["op"], json!({"kind": "undo", "stroke": "s1"}));
    // A late joiner sees the stroke gone, then back after a redo.
    let (_, mut cat) = user(&server, "cat").await;
    let joined = join(&mut cat, "undo", None, None).await;
    assert_eq!(joined["state"]["strokes"], json!([]));
    send_op(&mut ann, "undo", "c4", json!({"kind": "redo"})).await;
    let redo = ops(&mut cat, "undo", 1).await;
    assert_eq!(redo[0]["op"], json!({"kind": "redo", "stroke": "s1"}));
    let joined = join(&mut cat, "undo", None, None).await;
    assert_eq!(
        joined["state"]["strokes"],
        json!([{"id": "s1", "user": "ann", "color": "#ff0000", "width": 3.0, "points": [[1.0, 2.0]], "done": true}])
    );
    // Bob cannot undo ann's stroke.
    send_op(&mut bob, "undo", "b1", json!({"kind": "undo"})).await;
    let error = bob.recv_type("error", FRAME_TIMEOUT).await.expect("error");
    assert_eq!(error["code"], "nothing_to_undo");
    assert_eq!(error["cid"], "b1");
}

#[tokio::test]
async fn metrics_count_connections_ops_errors_and_commits() {
    let server = start();
    let (token, mut ann) = user(&server, "ann").await;
    create_room(&server, &token, json!({"kind": "board", "id": "metered"})).await;
    join(&mut ann, "metered", None, None).await;
    send_op(&mut ann, "metered", "c1", message("one")).await;
    send_op(&mut ann, "metered", "c2", json!({"kind": "undo"})).await;
    ann.recv_type("error", FRAME_TIMEOUT)
        .await
        .expect("nothing to undo");
    let text = server.metrics_page().await;
    for needle in [
        "collab_gateway_connections 1",
        "collab_gateway_joins_total 1",
        "collab_gateway_ops_total{kind=\"message\"} 1",
        "collab_gateway_errors_total{code=\"nothing_to_undo\"} 1",
        "collab_room_rooms_active 1",
        "collab_room_commit_latency_seconds_count 1",
        "collab_gateway_ack_latency_seconds_count 1",
    ] {
        assert!(text.contains(needle), "no {needle:?} in:\n{text}");
    }
}
