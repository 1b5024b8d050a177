//! Nothing acked is lost when `collab serve` is SIGKILLed.
//!
//! Three clients draw strokes, undo, redo and chat, pipelining their ops.
//! The server is killed at random moments — with ops in flight — and
//! restarted on the same data dir, at least five times. Clients reconnect,
//! resume with `since` and `epoch`, and resend every op they were not sure
//! of with the same `cid`. At the end: every acked op is in the log with the
//! seq it was acked with; seqs are gapless; no `cid` was applied twice; the
//! undo stacks survived each crash (an undo right after a restart hides the
//! stroke that the log says it must); and every client's picture, built
//! only from what it received, equals the server's.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use collab_actors::state::{Applied, OpRequest, RoomMeta, RoomState};
use collab_protocol::{Access, Cid, Epoch, Limits, Op, OpEvent, RoomId, RoomKind, Seq, UserId};
use collab_tests::harness::{CollabServer, ServerOptions, WsClient, WsError};
use serde_json::{Value, json};

const FRAME_TIMEOUT: Duration = Duration::from_secs(15);
const ROOM: &str = "crashboard";
const CRASHES: usize = 6;

struct Client {
    name: String,
    token: String,
    ws: Option<WsClient>,
    next: u64,
    /// Ops sent and not yet acked, in send order: resent after a crash.
    in_doubt: Vec<(String, Value)>,
    acked: HashMap<String, u64>,
    /// This client's picture of the room, from `joined` and `op` frames.
    state: RoomState,
    epoch: String,
    stroke: u64,
}

fn meta(epoch: &str) -> RoomMeta {
    RoomMeta {
        id: RoomId::parse(ROOM).expect("id"),
        kind: RoomKind::Board,
        epoch: Epoch::parse(epoch).expect("epoch"),
    }
}

impl Client {
    async fn connect(&mut self, server: &CollabServer) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut ws = loop {
            match WsClient::connect(&server.ws_url(), &self.token).await {
                Ok(ws) => break ws,
                Err(e) => {
                    assert!(tokio::time::Instant::now() < deadline, "reconnect: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await; // retry backoff
                }
            }
        };
        let welcome = ws.recv_json(FRAME_TIMEOUT).await.expect("welcome");
        assert_eq!(welcome["type"], "welcome");
        let head = self.state.head().get();
        ws.send_json(&json!({"type": "join", "room": ROOM, "since": head, "epoch": self.epoch}))
            .await
            .expect("join");
        let joined = ws.recv_type("joined", FRAME_TIMEOUT).await.expect("joined");
        assert_eq!(
            joined["reset"], false,
            "a resume within the replay limit: {joined}"
        );
        assert_eq!(joined["epoch"], self.epoch.as_str());
        for op in joined["ops"].as_array().expect("ops") {
            self.apply(op);
        }
        assert_eq!(
            self.state.head().get(),
            joined["head"].as_u64().expect("head")
        );
        self.ws = Some(ws);
        // Everything not known to be acked goes again, same cids, same order.
        for (cid, op) in self.in_doubt.clone() {
            self.send_raw(&cid, &op).await;
        }
    }

    fn apply(&mut self, frame: &Value) {
        let event: OpEvent = serde_json::from_value(frame.clone()).expect("an op frame");
        if event.seq <= self.state.head() {
            panic!(
                "{}: duplicate or old op {} after {}",
                self.name,
                event.seq,
                self.state.head()
            );
        }
        self.state
            .replay(&event)
            .unwrap_or_else(|e| panic!("{}: gap or bad op: {e}", self.name));
    }

    async fn send_raw(&mut self, cid: &str, op: &Value) {
        let frame = json!({"type": "op", "room": ROOM, "cid": cid, "op": op});
        if let Some(ws) = self.ws.as_mut() {
            // A send into a dead socket is found out by the next receive.
            if ws.send_json(&frame).await.is_err() {
                self.ws = None;
            }
        }
    }

    async fn send(&mut self, op: Value) {
        self.next += 1;
        let cid = format!("{}-{}", self.name, self.next);
        self.in_doubt.push((cid.clone(), op.clone()));
        self.send_raw(&cid, &op).await;
    }

    /// The next few ops of this client's drawing session.
    async fn draw_some(&mut self) {
        self.stroke += 1;
        let stroke = format!("{}-s{}", self.name, self.stroke);
        let n = self.stroke as f64;
        self.send(json!({"kind": "stroke_begin", "stroke": stroke, "color": "#336699", "width": 2, "points": [[n, 0]]}))
            .await;
        for i in 0..3 {
            self.send(json!({"kind": "stroke_points", "stroke": stroke, "points": [[n, i], [n + 0.5, i]]}))
                .await;
        }
        self.send(json!({"kind": "stroke_end", "stroke": stroke}))
            .await;
        if self.stroke.is_multiple_of(3) {
            self.send(json!({"kind": "undo"})).await;
        }
        if self.stroke.is_multiple_of(5) {
            self.send(json!({"kind": "redo"})).await;
        }
        if self.stroke.is_multiple_of(4) {
            self.send(json!({"kind": "message", "text": format!("{stroke} done")}))
                .await;
        }
    }

    /// Reads until every op in doubt is answered, or the socket dies.
    async fn settle(&mut self) {
        while !self.in_doubt.is_empty() {
            let Some(ws) = self.ws.as_mut() else {
                return;
            };
            let frame = match ws.recv_json(FRAME_TIMEOUT).await {
                Ok(frame) => frame,
                Err(WsError::Closed { .. } | WsError::Ws(_)) => {
                    self.ws = None;
                    return;
                }
                Err(e) => panic!("{}: {e}", self.name),
            };
            self.handle(&frame);
        }
    }

    fn handle(&mut self, frame: &Value) {
        match frame["type"].as_str() {
            Some("op") => self.apply(frame),
            Some("ack") => {
                let cid = frame["cid"].as_str().expect("cid").to_owned();
                let seq = frame["seq"].as_u64().expect("seq");
                if let Some(old) = self.acked.insert(cid.clone(), seq) {
                    assert_eq!(old, seq, "{cid} acked with two seqs");
                }
                self.in_doubt.retain(|(c, _)| *c != cid);
            }
            Some("error") => {
                let code = frame["code"].as_str().unwrap_or_default();
                // A redo with nothing to redo is part of the workload;
                // anything else is a failure.
                assert_eq!(code, "nothing_to_redo", "{}: {frame}", self.name);
                let cid = frame["cid"].as_str().expect("cid").to_owned();
                self.in_doubt.retain(|(c, _)| *c != cid);
            }
            _ => {}
        }
    }

    /// Reads everything up to a `pong`: all ops broadcast so far.
    async fn catch_up(&mut self) {
        let mut ws = self.ws.take().expect("connected");
        ws.send_json(&json!({"type": "ping", "id": "fence"}))
            .await
            .expect("ping");
        loop {
            let frame = ws.recv_json(FRAME_TIMEOUT).await.expect("frame");
            if frame["type"] == "pong" {
                break;
            }
            self.handle(&frame);
        }
        self.ws = Some(ws);
    }
}

async fn full_log(server: &CollabServer, token: &str) -> Vec<OpEvent> {
    let mut log = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let mut url = format!("{}/v1/rooms/{ROOM}/history?limit=500", server.http_url());
        if let Some(b) = before {
            url.push_str(&format!("&before={b}"));
        }
        let page: Value = server
            .http()
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .expect("history")
            .json()
            .await
            .expect("json");
        for op in page["ops"].as_array().expect("ops") {
            log.push(serde_json::from_value::<OpEvent>(op.clone()).expect("op"));
        }
        match page["next_before"].as_u64() {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    log.reverse();
    log
}

/// The stroke an `undo` by `user` must hide, by the log alone.
fn expected_undo(log: &[OpEvent], epoch: &str, user: &str) -> Option<String> {
    let mut state = RoomState::new(meta(epoch));
    for event in log {
        state.replay(event).expect("the log replays");
    }
    let request = OpRequest {
        user: UserId::parse(user).expect("id"),
        cid: Some(Cid::parse("probe").expect("cid")),
        op: Op::Undo { stroke: None },
        access: Access::Write,
        ts: 0,
    };
    match state.apply(request, &Limits::default()) {
        Ok(Applied::New(event)) => match event.op {
            Op::Undo { stroke } => stroke.map(|s| s.to_string()),
            _ => None,
        },
        _ => None,
    }
}

#[tokio::test]
async fn acked_ops_survive_sigkill_and_clients_converge() {
    let mut server =
        CollabServer::start(ServerOptions::new().env("COLLAB_ROOMS__ORPHAN_GRACE_SECS", "3600"))
            .expect("collab serve starts");
    let admin = server.dev_token("admin").await.expect("token");
    let created: Value = server
        .http()
        .post(format!("{}/v1/rooms", server.http_url()))
        .bearer_auth(&admin)
        .json(&json!({"kind": "board", "id": ROOM}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let epoch = created["epoch"].as_str().expect("epoch").to_owned();

    let mut clients = Vec::new();
    for name in ["ann", "bob", "cat"] {
        let mut client = Client {
            name: name.to_owned(),
            token: server.dev_token(name).await.expect("token"),
            ws: None,
            next: 0,
            in_doubt: Vec::new(),
            acked: HashMap::new(),
            state: RoomState::new(meta(&epoch)),
            epoch: epoch.clone(),
            stroke: 0,
        };
        client.connect(&server).await;
        clients.push(client);
    }

    for crash in 0..CRASHES {
        // A random amount of settled work, then a burst left in flight.
        let rounds = 1 + collab_store::testsuite::random_u64() % 4;
        for _ in 0..rounds {
            for client in clients.iter_mut() {
                client.draw_some().await;
            }
            for client in clients.iter_mut() {
                client.settle().await;
            }
        }
        for client in clients.iter_mut() {
            client.draw_some().await;
        }
        // Read a random share of the answers before the kill.
        let peek = collab_store::testsuite::random_u64() % 3;
        for client in clients.iter_mut().take(peek as usize) {
            if let Some(mut ws) = client.ws.take() {
                if let Ok(frame) = ws.recv_json(FRAME_TIMEOUT).await {
                    client.handle(&frame);
                }
                client.ws = Some(ws);
            }
        }
        server.kill().expect("SIGKILL");
        // Whatever the dying server managed to send still counts.
        for client in clients.iter_mut() {
            if let Some(mut ws) = client.ws.take() {
                while let Ok(frame) = ws.recv_json(Duration::from_secs(2)).await {
                    client.handle(&frame);
                }
            }
        }
        server.restart().expect("restarts on the same data dir");
        for client in clients.iter_mut() {
            client.connect(&server).await;
        }
        for client in clients.iter_mut() {
            client.settle().await;
            assert!(
                client.in_doubt.is_empty(),
                "{} still has ops in doubt",
                client.name
            );
        }

        // The undo stacks survived the crash.
        for client in clients.iter_mut() {
            client.catch_up().await;
        }
        let log = full_log(&server, &admin).await;
        let who = &mut clients[crash % 3];
        let expected = expected_undo(&log, &epoch, &who.name);
        who.send(json!({"kind": "undo"})).await;
        let cid = who.in_doubt.last().map(|(c, _)| c.clone()).expect("sent");
        who.settle().await;
        who.catch_up().await;
        let seq = who.acked.get(&cid).copied();
        match expected {
            Some(stroke) => {
                let seq = seq.expect("the undo was acked");
                let log = full_log(&server, &admin).await;
                let undo = &log[(seq - 1) as usize];
                assert_eq!(
                    undo.op,
                    Op::Undo {
                        stroke: Some(collab_protocol::StrokeId::parse(stroke).expect("id"))
                    },
                    "after crash {crash}, undo hid another stroke than the log says"
                );
            }
            None => assert!(seq.is_none(), "undo with nothing to undo was applied"),
        }
    }

    for client in clients.iter_mut() {
        client.catch_up().await;
    }
    let log = full_log(&server, &admin).await;
    // Gapless, from 1.
    let seqs: Vec<u64> = log.iter().map(|e| e.seq.get()).collect();
    assert_eq!(seqs, (1..=log.len() as u64).collect::<Vec<_>>());
    // Every acked op is there, with the seq it was acked with.
    let by_seq: HashMap<u64, &OpEvent> = log.iter().map(|e| (e.seq.get(), e)).collect();
    let mut total_acked = 0;
    for client in &clients {
        for (cid, seq) in &client.acked {
            let event = by_seq
                .get(seq)
                .unwrap_or_else(|| panic!("acked seq {seq} lost"));
            assert_eq!(event.cid.as_ref().map(Cid::as_str), Some(cid.as_str()));
            assert_eq!(event.user.as_str(), client.name);
            total_acked += 1;
        }
    }
    assert!(
        total_acked > 100,
        "too little work to mean anything: {total_acked}"
    );
    // No cid applied twice.
    let mut cids = HashSet::new();
    for event in &log {
        if let Some(cid) = &event.cid {
            assert!(
                cids.insert((event.user.clone(), cid.clone())),
                "{cid} applied twice"
            );
        }
    }
    // Everyone's picture equals the log's and the server's.
    let mut replayed = RoomState::new(meta(&epoch));
    for event in &log {
        replayed.replay(event).expect("replays");
    }
    for client in &clients {
        assert_eq!(
            client.state.head(),
            Seq(log.len() as u64),
            "{} is behind",
            client.name
        );
        assert_eq!(
            client.state.view(),
            replayed.view(),
            "{} diverged",
            client.name
        );
    }
    let mut fresh = WsClient::connect(&server.ws_url(), &admin)
        .await
        .expect("connects");
    fresh.recv_json(FRAME_TIMEOUT).await.expect("welcome");
    fresh
        .send_json(&json!({"type": "join", "room": ROOM}))
        .await
        .expect("join");
    let joined = fresh
        .recv_type("joined", FRAME_TIMEOUT)
        .await
        .expect("joined");
    let server_view: collab_protocol::frames::RoomView =
        serde_json::from_value(joined["state"].clone()).expect("state");
    assert_eq!(server_view, replayed.view());
}
