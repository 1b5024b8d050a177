//! The connection loop's rules, driven through channels instead of a
//! socket: what the client sends goes into a channel the loop reads as its
//! stream, and what the loop writes is recorded by a sink that can stop
//! taking frames, like a peer that does not read.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes};
use collab_bus::{Bus, InProcessBus, ReplyFuture, RequestHandler};
use collab_ephemeral::{Ephemeral, EphemeralMetrics, EphemeralOptions};
use collab_protocol::envelope::{RoomEvent, RoomReply, RoomRequest};
use collab_protocol::frames::JoinedBody;
use collab_protocol::{Access, Claims, Epoch, RoomId, RoomKind, Seq, UserId};
use futures_util::{Sink, Stream};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc, oneshot};

use super::close::{CLOSE_GOING_AWAY, CLOSE_REVOKED, CLOSE_TOO_BIG, CLOSE_TOO_SLOW, Close};
use super::{ConnectionLimiters, Connections};
use crate::auth::Auth;
use crate::config::GatewayConfig;
use crate::hub::Hub;
use crate::metrics::{Disconnect, GatewayMetrics};
use crate::revoke::Sockets;

/// Longer than the idle timeout, for the tests on paused time.
const WAIT: Duration = Duration::from_secs(120);

#[derive(Debug)]
struct TestError(String);

impl fmt::Display for TestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the peer was sent, in order.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Text(Value),
    Ping,
    Close(u16, String),
    Flush,
}

#[derive(Default)]
struct Peer {
    seen: Vec<Seen>,
    /// The peer does not read: the socket takes nothing.
    blocked: bool,
    waker: Option<Waker>,
}

/// The socket as the loop sees it: a stream of the client's frames and a
/// sink that records what it is sent.
struct TestSocket {
    incoming: mpsc::UnboundedReceiver<Result<Message, TestError>>,
    peer: Arc<Mutex<Peer>>,
    changed: Arc<Notify>,
}

impl TestSocket {
    fn peer(&self) -> std::sync::MutexGuard<'_, Peer> {
        self.peer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, seen: Seen) {
        self.peer().seen.push(seen);
        self.changed.notify_waiters();
    }
}

impl Stream for TestSocket {
    type Item = Result<Message, TestError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.incoming.poll_recv(cx)
    }
}

impl Sink<Message> for TestSocket {
    type Error = TestError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), TestError>> {
        let mut peer = self.peer();
        if peer.blocked {
            peer.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, message: Message) -> Result<(), TestError> {
        let seen = match message {
            Message::Text(text) => Seen::Text(serde_json::from_str(text.as_str()).expect("json")),
            Message::Ping(_) => Seen::Ping,
            Message::Close(frame) => {
                let frame = frame.expect("a close frame");
                Seen::Close(frame.code, frame.reason.as_str().to_owned())
            }
            other => panic!("unexpected {other:?}"),
        };
        self.record(seen);
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), TestError>> {
        self.record(Seen::Flush);
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), TestError>> {
        Poll::Ready(Ok(()))
    }
}

/// A room owner that acks ops with the next seq — at once, or when the
/// test releases them — and answers joins with an empty board. It keeps
/// the access each op came with and the rooms left.
#[derive(Default)]
struct Owner {
    /// The kind of every request, in the order they came.
    requests: Mutex<Vec<&'static str>>,
    accesses: Mutex<Vec<(RoomId, Access)>>,
    left: Mutex<Vec<RoomId>>,
    hold_acks: AtomicBool,
    held: Mutex<VecDeque<oneshot::Sender<RoomReply>>>,
    head: AtomicU64,
}

impl Owner {
    /// Acks the op held longest ago... or the newest, `newest_first`.
    fn release(&self, newest_first: bool) {
        let mut held = self.held.lock().expect("lock");
        let reply = if newest_first {
            held.pop_back()
        } else {
            held.pop_front()
        };
        let seq = self.head.fetch_add(1, Ordering::SeqCst) + 1;
        let _ = reply
            .expect("an op held")
            .send(RoomReply::Ack { seq: Seq(seq) });
    }

    fn held(&self) -> usize {
        self.held.lock().expect("lock").len()
    }

    fn requests(&self) -> Vec<&'static str> {
        self.requests.lock().expect("lock").clone()
    }
}

impl RequestHandler for Owner {
    fn handle(&self, request: RoomRequest) -> ReplyFuture<RoomReply> {
        let kind = match &request {
            RoomRequest::Join { .. } => "join",
            RoomRequest::Leave { .. } => "leave",
            RoomRequest::Away { .. } => "away",
            RoomRequest::Attach { .. } => "attach",
            RoomRequest::Op { .. } => "op",
            _ => "other",
        };
        self.requests.lock().expect("lock").push(kind);
        match &request {
            RoomRequest::Op { room, access, .. } => {
                self.accesses
                    .lock()
                    .expect("lock")
                    .push((room.clone(), *access));
            }
            RoomRequest::Leave { room, .. } => self.left.lock().expect("lock").push(room.clone()),
            _ => {}
        }
        let reply = match request {
            RoomRequest::Join { room, .. } => RoomReply::Joined(JoinedBody {
                room,
                kind: RoomKind::Board,
                epoch: Epoch::parse("ep1").expect("id"),
                head: Seq(self.head.load(Ordering::SeqCst)),
                presence: Vec::new(),
                reset: false,
                state: None,
                ops: Some(Vec::new()),
            }),
            RoomRequest::Op { .. } if self.hold_acks.load(Ordering::SeqCst) => {
                let (tx, rx) = oneshot::channel();
                self.held.lock().expect("lock").push_back(tx);
                return Box::pin(async move {
                    rx.await.unwrap_or(RoomReply::Error {
                        code: collab_protocol::ErrorCode::Internal,
                        message: "dropped".into(),
                    })
                });
            }
            RoomRequest::Op { .. } => RoomReply::Ack {
                seq: Seq(self.head.fetch_add(1, Ordering::SeqCst) + 1),
            },
            _ => RoomReply::Done,
        };
        Box::pin(async move { reply })
    }
}

/// A gateway's connections on an in-process bus whose rooms `owner` serves.
struct Setup {
    cx: Arc<Connections>,
    bus: Arc<InProcessBus>,
    owner: Arc<Owner>,
}

async fn setup(config: GatewayConfig, quiet: Duration) -> Setup {
    let bus = Arc::new(InProcessBus::new());
    let owner = Arc::new(Owner::default());
    bus.serve(owner.clone()).await.expect("serves");
    let metrics = GatewayMetrics::register(&mut Registry::default());
    let ephemeral = Ephemeral::in_memory(
        &EphemeralOptions::new(config.gateway_id.clone()),
        EphemeralMetrics::default(),
    );
    let limits = &config.rate_limits;
    let limiters = ConnectionLimiters {
        ops: ephemeral.rate_limiter("ops", limits.ops()),
        cursors: ephemeral.rate_limiter("cursors", limits.cursors()),
        joins: ephemeral.rate_limiter("joins", limits.joins()),
    };
    let bus_dyn: Arc<dyn Bus> = bus.clone();
    let mut cx = Connections::new(
        config.clone(),
        bus_dyn.clone(),
        Hub::new(
            bus_dyn,
            Duration::from_secs(config.request_timeout_secs),
            metrics.clone(),
        ),
        limiters,
        metrics,
        ephemeral.presence.clone(),
        ephemeral.revocations.clone(),
        Arc::new(Sockets::default()),
        Auth::new(SECRET, false),
    );
    cx.quiet = quiet;
    Setup {
        cx: Arc::new(cx),
        bus,
        owner,
    }
}

/// The secret the test gateway checks tokens with.
const SECRET: &[u8] = b"connection-loop-tests";

/// One client's side of a connection being served.
struct Client {
    send: mpsc::UnboundedSender<Result<Message, TestError>>,
    peer: Arc<Mutex<Peer>>,
    changed: Arc<Notify>,
    /// How many of `peer.seen` the test has read.
    read: usize,
    served: tokio::task::JoinHandle<()>,
}

fn claims(exp_in_secs: u64) -> Claims {
    Claims {
        sub: "ann".into(),
        exp: crate::auth::now_secs() + exp_in_secs,
        name: None,
        rooms: None,
        scope: None,
        jti: None,
        iat: None,
    }
}

fn connect(setup: &Setup, claims: Claims) -> Client {
    let (send, incoming) = mpsc::unbounded_channel();
    let peer = Arc::new(Mutex::new(Peer::default()));
    let changed = Arc::new(Notify::new());
    let socket = TestSocket {
        incoming,
        peer: peer.clone(),
        changed: changed.clone(),
    };
    let address = Some(std::net::IpAddr::from([127, 0, 0, 1]));
    let served = tokio::spawn(setup.cx.clone().serve(claims, address, socket));
    Client {
        send,
        peer,
        changed,
        read: 0,
        served,
    }
}

impl Client {
    fn peer(&self) -> std::sync::MutexGuard<'_, Peer> {
        self.peer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, frame: Value) {
        let text = Utf8Bytes::from(frame.to_string());
        self.send.send(Ok(Message::Text(text))).expect("loop reads");
    }

    fn send_raw(&self, message: Result<Message, TestError>) {
        self.send.send(message).expect("loop reads");
    }

    /// Stops or resumes reading.
    fn block(&self, blocked: bool) {
        let waker = {
            let mut peer = self.peer();
            peer.blocked = blocked;
            peer.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// The next thing written to the socket (flushes skipped), waiting for
    /// it with a deadline.
    async fn next(&mut self) -> Seen {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notify = self.changed.clone();
            let changed = notify.notified();
            {
                let shared = self.peer.clone();
                let peer = shared.lock().unwrap_or_else(|p| p.into_inner());
                while let Some(seen) = peer.seen.get(self.read) {
                    self.read += 1;
                    if *seen != Seen::Flush {
                        return seen.clone();
                    }
                }
            }
            let waited = tokio::time::timeout_at(deadline, changed).await;
            assert!(
                waited.is_ok(),
                "nothing more written: {:?}",
                self.peer().seen
            );
        }
    }

    async fn next_frame(&mut self) -> Value {
        match self.next().await {
            Seen::Text(frame) => frame,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// The next frame of type `kind`, skipping others and pings.
    async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            match self.next().await {
                Seen::Text(frame) if frame["type"] == kind => return frame,
                Seen::Text(_) | Seen::Ping => {}
                other => panic!("expected a frame, got {other:?}"),
            }
        }
    }

    async fn closed_with(&mut self) -> (u16, String) {
        loop {
            if let Seen::Close(code, reason) = self.next().await {
                return (code, reason);
            }
        }
    }

    async fn ended(self) {
        let ended = tokio::time::timeout(WAIT, self.served).await;
        assert!(
            matches!(ended, Ok(Ok(()))),
            "the loop did not end: {ended:?}"
        );
    }

    async fn join(&mut self, room: &str) {
        self.send(json!({"type": "join", "room": room}));
        let joined = self.next_of("joined").await;
        assert_eq!(joined["room"], room);
    }

    fn op(&self, room: &str, cid: &str) {
        self.send(json!({
            "type": "op", "room": room, "cid": cid,
            "op": {"kind": "message", "text": cid}
        }));
    }
}

fn disconnects(cx: &Connections, why: Disconnect) -> u64 {
    cx.metrics
        .disconnects
        .get_or_create(&crate::metrics::ReasonLabel {
            reason: why.as_str(),
        })
        .get()
}

#[tokio::test]
async fn welcome_then_every_frame_is_answered_in_the_loop() {
    let setup = setup(GatewayConfig::default(), Duration::ZERO).await;
    let mut client = connect(&setup, claims(3600));
    let welcome = client.next_frame().await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["user"]["id"], "ann");
    client.send(json!({"type": "ping", "id": 7}));
    assert_eq!(client.next_frame().await, json!({"type": "pong", "id": 7}));
    // Bad input gets an error, and the connection stays.
    client.send(
        json!({"type": "op", "room": "r1", "cid": "c1", "op": {"kind": "message", "text": "x"}}),
    );
    let error = client.next_frame().await;
    assert_eq!(
        (error["code"].as_str(), error["cid"].as_str()),
        (Some("bad_request"), Some("c1"))
    );
    client.send_raw(Ok(Message::Binary(Default::default())));
    assert_eq!(client.next_frame().await["code"], "bad_request");
    client.send_raw(Ok(Message::Text(Utf8Bytes::from("{nope"))));
    assert_eq!(client.next_frame().await["type"], "error");
    client.send(json!({"type": "ping", "id": 8}));
    assert_eq!(client.next_frame().await["id"], 8);

    client.send_raw(Ok(Message::Close(None)));
    assert_eq!(client.closed_with().await.0, CLOSE_GOING_AWAY);
    client.ended().await;
    assert_eq!(disconnects(&setup.cx, Disconnect::Client), 1);
    assert_eq!(setup.cx.metrics.connections.get(), 0);
}

/// Replies wait in the loop, not in tasks: the loop goes on reading while
/// ops wait for their acks, and each ack goes out when its reply comes.
#[tokio::test]
async fn acks_go_out_as_replies_come_while_the_loop_keeps_reading() {
    let setup = setup(GatewayConfig::default(), Duration::ZERO).await;
    setup.owner.hold_acks.store(true, Ordering::SeqCst);
    let mut client = connect(&setup, claims(3600));
    client.next_of("welcome").await;
    client.join("r1").await;
    client.op("r1", "a");
    client.op("r1", "b");
    client.send(json!({"type": "ping", "id": 1}));
    // Both ops are with the room, and the ping was answered meanwhile.
    assert_eq!(client.next_frame().await["type"], "pong");
    assert_eq!(setup.owner.held(), 2);
    setup.owner.release(true);
    let ack = client.next_of("ack").await;
    assert_eq!(
        (ack["cid"].as_str(), ack["seq"].as_u64()),
        (Some("b"), Some(1))
    );
    setup.owner.release(false);
    let ack = client.next_of("ack").await;
    assert_eq!(
        (ack["cid"].as_str(), ack["seq"].as_u64()),
        (Some("a"), Some(2))
    );
}

#[tokio::test]
async fn ops_past_the_unacked_limit_or_the_rate_are_refused() {
    let config = GatewayConfig {
        max_unacked_ops: 2,
        ..GatewayConfig::default()
    };
    let setup = setup(config, Duration::ZERO).await;
    setup.owner.hold_acks.store(true, Ordering::SeqCst);
    let mut client = connect(&setup, claims(3600));
    client.join("r1").await;
    client.op("r1", "a");
    client.op("r1", "b");
    client.op("r1", "c");
    let refused = client.next_of("error").await;
    assert_eq!(
        (refused["code"].as_str(), refused["cid"].as_str()),
        (Some("rate_limited"), Some("c"))
    );
    // An ack frees a place.
    setup.owner.release(false);
    assert_eq!(client.next_of("ack").await["cid"], "a");
    client.op("r1", "d");
    client.send(json!({"type": "ping", "id": 1}));
    client.next_of("pong").await;
    assert_eq!(setup.owner.held(), 2, "d went to the room");

    let mut config = GatewayConfig::default();
    config.rate_limits.ops_per_sec = 0.001;
    config.rate_limits.ops_burst = 1.0;
    let setup = self::setup(config, Duration::ZERO).await;
    let mut client = connect(&setup, claims(3600));
    client.join("r1").await;
    client.op("r1", "a");
    client.op("r1", "b");
    assert_eq!(client.next_of("ack").await["cid"], "a");
    let refused = client.next_of("error").await;
    assert_eq!(
        (refused["code"].as_str(), refused["cid"].as_str()),
        (Some("rate_limited"), Some("b"))
    );
}

/// A peer that stops reading while frames keep coming for it is closed
/// with 4008 once its queue is full; what was queued is dropped.
#[tokio::test]
async fn a_slow_reader_is_closed_with_4008() {
    let config = GatewayConfig {
        outbound_queue: 4,
        ..GatewayConfig::default()
    };
    let setup = setup(config, Duration::ZERO).await;
    let mut client = connect(&setup, claims(3600));
    client.next_of("welcome").await;
    client.block(true);
    // Each pong is a counted frame: the first is taken for the blocked
    // socket, the rest fill the queue and overflow it.
    for id in 0..10 {
        client.send(json!({"type": "ping", "id": id}));
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while setup.cx.sockets.closes() != [Some(Close::SLOW)] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never closed as slow"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The close frame goes out once the peer reads again.
    client.block(false);
    let (code, reason) = client.closed_with().await;
    assert_eq!((code, reason.as_str()), (CLOSE_TOO_SLOW, "too slow"));
    let pongs = client
        .peer()
        .seen
        .iter()
        .filter(|s| matches!(s, Seen::Text(f) if f["type"] == "pong"))
        .count();
    assert!(
        pongs <= 4,
        "only what fit before the overflow went out: {pongs}"
    );
    client.ended().await;
    assert_eq!(disconnects(&setup.cx, Disconnect::Slow), 1);
    assert_eq!(setup.cx.metrics.slow_closes.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn close_codes_idle_expiry_too_big_and_shutdown() {
    let setup = setup(GatewayConfig::default(), Duration::ZERO).await;

    // Silent past the idle timeout.
    let mut client = connect(&setup, claims(3600));
    assert_eq!(
        client.closed_with().await,
        (CLOSE_GOING_AWAY, "idle".into())
    );
    client.ended().await;
    assert_eq!(disconnects(&setup.cx, Disconnect::Idle), 1);

    // The token expires.
    let mut client = connect(&setup, claims(5));
    assert_eq!(
        client.closed_with().await,
        (CLOSE_REVOKED, "token expired".into())
    );
    client.ended().await;
    assert_eq!(disconnects(&setup.cx, Disconnect::Expired), 1);

    // A message over the limit.
    let mut client = connect(&setup, claims(3600));
    client.send_raw(Err(TestError(
        "Space limit exceeded: Message too long".into(),
    )));
    assert_eq!(
        client.closed_with().await,
        (CLOSE_TOO_BIG, "message too big".into())
    );
    client.ended().await;
    assert_eq!(disconnects(&setup.cx, Disconnect::TooBig), 1);

    // Any other read error.
    let mut client = connect(&setup, claims(3600));
    client.send_raw(Err(TestError("connection reset".into())));
    assert_eq!(client.closed_with().await.0, CLOSE_GOING_AWAY);
    client.ended().await;
    assert_eq!(disconnects(&setup.cx, Disconnect::Error), 1);

    // The gateway drains: open sockets close, and so does one that
    // registers afterwards.
    let mut client = connect(&setup, claims(3600));
    client.next_of("welcome").await;
    setup.cx.sockets.close_all(Close::SHUTDOWN);
    assert_eq!(
        client.closed_with().await,
        (CLOSE_GOING_AWAY, "server going away".into())
    );
    client.ended().await;
    let mut late = connect(&setup, claims(3600));
    assert_eq!(late.closed_with().await.0, CLOSE_GOING_AWAY);
    late.ended().await;
    assert_eq!(disconnects(&setup.cx, Disconnect::Shutdown), 2);
}

/// A peer that answers nothing, not even pings, leaves its rooms' presence
/// after `away_after_secs` but stays joined; its next frame puts it back.
#[tokio::test(start_paused = true)]
async fn a_silent_peer_leaves_presence_and_comes_back_when_heard() {
    let config = GatewayConfig {
        ping_interval_secs: 1,
        away_after_secs: 3,
        ..GatewayConfig::default()
    };
    let setup = setup(config, Duration::ZERO).await;
    let mut client = connect(&setup, claims(3600));
    client.next_of("welcome").await;
    client.send(json!({"type": "join", "room": "r"}));
    client.next_of("joined").await;
    let joined_at = tokio::time::Instant::now();
    // Pinged, and silent: out of presence once, and only once.
    let deadline = joined_at + WAIT;
    while !setup.owner.requests().contains(&"away") {
        assert!(tokio::time::Instant::now() < deadline, "never away");
        tokio::time::sleep(Duration::from_millis(100)).await; // poll interval
    }
    assert!(joined_at.elapsed() >= Duration::from_secs(3));
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(setup.owner.requests(), ["join", "away"]);
    // Still joined: it speaks, is put back, and its op goes through.
    client.send(
        json!({"type": "op", "room": "r", "cid": "c1", "op": {"kind": "message", "text": "back"}}),
    );
    client.next_of("ack").await;
    assert_eq!(setup.owner.requests(), ["join", "away", "attach", "op"]);
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_is_pinged() {
    let config = GatewayConfig {
        ping_interval_secs: 1,
        ..GatewayConfig::default()
    };
    let setup = setup(config, Duration::ZERO).await;
    let mut client = connect(&setup, claims(3600));
    client.next_of("welcome").await;
    assert_eq!(client.next().await, Seen::Ping);
    assert_eq!(client.next().await, Seen::Ping);
}

/// Cursors queued for a peer that does not read are coalesced: the latest
/// position of each user replaces the one before.
#[tokio::test]
async fn cursors_for_a_blocked_peer_keep_only_the_latest_per_user() {
    let setup = setup(GatewayConfig::default(), Duration::ZERO).await;
    let mut client = connect(&setup, claims(3600));
    client.join("r1").await;
    client.send(json!({"type": "ping", "id": 1}));
    client.next_of("pong").await;
    client.block(true);
    let room = RoomId::parse("r1").expect("id");
    let cursor = |user: &str, x: f64| RoomEvent::Cursor {
        room: room.clone(),
        user: UserId::parse(user).expect("id"),
        x,
        y: 0.0,
        origin: collab_protocol::envelope::ConnRef {
            gateway: "g9".into(),
            conn: collab_protocol::ConnId::parse("g9-1").expect("id"),
        },
    };
    // The first is taken for the blocked socket; the rest wait.
    setup.bus.publish(cursor("bob", 1.0));
    tokio::time::sleep(Duration::from_millis(20)).await;
    for x in 2..=5 {
        setup.bus.publish(cursor("bob", f64::from(x)));
        setup.bus.publish(cursor("cat", f64::from(x)));
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    client.block(false);
    let mut got = Vec::new();
    while got.len() < 3 {
        let frame = client.next_of("cursor").await;
        got.push((
            frame["user"].as_str().map(str::to_owned),
            frame["x"].as_f64(),
        ));
    }
    assert_eq!(
        got,
        [
            (Some("bob".into()), Some(1.0)),
            (Some("bob".into()), Some(5.0)),
            (Some("cat".into()), Some(5.0)),
        ]
    );
}

/// A busy connection is written to at most once per quiet period: what
/// comes meanwhile leaves together.
#[tokio::test(start_paused = true)]
async fn a_busy_connection_gets_its_frames_in_batches() {
    let quiet = Duration::from_millis(10);
    let setup = setup(GatewayConfig::default(), quiet).await;
    let mut client = connect(&setup, claims(3600));
    client.next_of("welcome").await;
    // The welcome was one write; a second right after it is allowed, then
    // the connection is busy.
    client.send(json!({"type": "ping", "id": 1}));
    client.next_of("pong").await;
    for id in 2..5 {
        client.send(json!({"type": "ping", "id": id}));
    }
    let sent = tokio::time::Instant::now();
    for id in 2..5 {
        assert_eq!(client.next_of("pong").await["id"], id);
    }
    assert!(sent.elapsed() >= quiet / 2, "paced: {:?}", sent.elapsed());
    let seen = client.peer().seen.clone();
    let last_three: Vec<&Seen> = seen.iter().rev().take(4).collect();
    assert_eq!(last_three[0], &Seen::Flush, "{seen:?}");
    assert!(
        last_three[1..].iter().all(|s| matches!(s, Seen::Text(_))),
        "the three pongs went in one write: {seen:?}"
    );
}

/// A deleted room tells its members `not_found` and the connection forgets
/// it: an op there is refused as from a connection that never joined.
#[tokio::test]
async fn a_deleted_room_is_forgotten() {
    let setup = setup(GatewayConfig::default(), Duration::ZERO).await;
    let mut client = connect(&setup, claims(3600));
    client.join("r1").await;
    setup.bus.publish(RoomEvent::Deleted {
        room: RoomId::parse("r1").expect("id"),
    });
    let gone = client.next_of("error").await;
    assert_eq!(
        (gone["code"].as_str(), gone["room"].as_str()),
        (Some("not_found"), Some("r1"))
    );
    client.op("r1", "a");
    let refused = client.next_of("error").await;
    assert_eq!(
        (refused["code"].as_str(), refused["cid"].as_str()),
        (Some("bad_request"), Some("a"))
    );
    // And a join is a new one.
    client.join("r1").await;
}

// === token expiry and refresh ===

/// A token for `sub`, minted with the test gateway's secret.
fn token(sub: &str, exp_in_secs: i64, rooms: Option<&[(&str, Access)]>) -> String {
    let exp = i64::try_from(crate::auth::now_secs()).expect("now") + exp_in_secs;
    let claims = Claims {
        sub: sub.into(),
        exp: u64::try_from(exp).expect("after the epoch"),
        name: None,
        rooms: rooms.map(|r| r.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()),
        scope: None,
        jti: Some(crate::auth::new_token_id()),
        iat: Some(crate::auth::now_secs()),
    };
    Auth::new(SECRET, false).mint(&claims).expect("mints")
}

fn refresh(client: &Client, token: &str) {
    client.send(json!({"type": "refresh", "token": token}));
}

/// With no refresh: `token_expiring` the configured lead before `exp`,
/// with that `exp`, then the close with 4001 at `exp`.
#[tokio::test(start_paused = true)]
async fn without_a_refresh_the_client_is_warned_then_closed_at_exp() {
    let setup = setup(GatewayConfig::default(), Duration::ZERO).await;
    let claims = claims(50);
    let exp = claims.exp;
    let mut client = connect(&setup, claims);
    let started = tokio::time::Instant::now();
    client.next_of("welcome").await;
    client.send(json!({"type": "ping", "id": 1}));
    client.next_of("pong").await;
    let warning = client.next_of("token_expiring").await;
    assert_eq!(warning, json!({"type": "token_expiring", "exp": exp}));
    // 30 s (the default lead) before exp, to the second of `exp`.
    let warned = started.elapsed();
    assert!(
        (Duration::from_secs(19)..=Duration::from_secs(20)).contains(&warned),
        "warned after {warned:?}"
    );
    // Kept alive until exp; then 4001.
    client.send(json!({"type": "ping", "id": 2}));
    client.next_of("pong").await;
    assert_eq!(
        client.closed_with().await,
        (CLOSE_REVOKED, "token expired".into())
    );
    let closed = started.elapsed();
    assert!(
        (Duration::from_secs(49)..=Duration::from_secs(50)).contains(&closed),
        "closed after {closed:?}"
    );
    client.ended().await;
    assert_eq!(disconnects(&setup.cx, Disconnect::Expired), 1);
}

/// A token that lives less than the lead is warned about at once, and
/// a lead of 0 turns the warning off.
#[tokio::test(start_paused = true)]
async fn a_short_token_is_warned_about_at_once_and_a_zero_lead_never() {
    let setup = setup(GatewayConfig::default(), Duration::ZERO).await;
    let claims = claims(5);
    let exp = claims.exp;
    let mut client = connect(&setup, claims);
    client.next_of("welcome").await;
    assert_eq!(
        client.next_frame().await,
        json!({"type": "token_expiring", "exp": exp})
    );

    let config = GatewayConfig {
        token_expiry_warning_secs: 0,
        ..GatewayConfig::default()
    };
    let setup = self::setup(config, Duration::ZERO).await;
    let mut client = connect(&setup, self::claims(5));
    client.next_of("welcome").await;
    assert_eq!(
        client.next().await,
        Seen::Close(CLOSE_REVOKED, "token expired".into())
    );
}

/// An accepted refresh is answered with the new `exp` and moves both the
/// warning and the close there: the connection outlives the first token.
#[tokio::test(start_paused = true)]
async fn a_refresh_moves_the_warning_and_the_close_to_the_new_exp() {
    // No WebSocket pings in the way of the frames this test reads.
    let config = GatewayConfig {
        ping_interval_secs: 1000,
        ..GatewayConfig::default()
    };
    let setup = setup(config, Duration::ZERO).await;
    let mut client = connect(&setup, claims(40));
    let started = tokio::time::Instant::now();
    client.join("r1").await;
    client.next_of("token_expiring").await;
    let fresh = token("ann", 100, None);
    // The wall clock stands still while the test's time jumps: the new
    // token's 100 s count from here.
    let refreshed_at = started.elapsed();
    refresh(&client, &fresh);
    let refreshed = client.next_of("refreshed").await;
    let exp = refreshed["exp"].as_u64().expect("exp");
    assert!(exp >= crate::auth::now_secs() + 99, "{refreshed}");
    assert_eq!(setup.cx.metrics.token_refreshes.get(), 1);
    // Past the first token's exp: still open, still in the room.
    tokio::time::sleep_until(started + Duration::from_secs(45)).await;
    client.op("r1", "after-first-exp");
    assert_eq!(client.next_of("ack").await["cid"], "after-first-exp");
    // The new token's own warning, 30 s before its exp, then its close.
    tokio::time::sleep_until(started + Duration::from_secs(60)).await;
    client.send(json!({"type": "ping", "id": 3}));
    client.next_of("pong").await;
    assert_eq!(
        client.next_frame().await,
        json!({"type": "token_expiring", "exp": exp})
    );
    let warned = started.elapsed() - refreshed_at;
    assert!(
        (Duration::from_secs(69)..=Duration::from_secs(70)).contains(&warned),
        "second warning {warned:?} after the refresh"
    );
    assert_eq!(client.closed_with().await.0, CLOSE_REVOKED);
    let closed = started.elapsed() - refreshed_at;
    assert!(
        (Duration::from_secs(99)..=Duration::from_secs(100)).contains(&closed),
        "closed {closed:?} after the refresh"
    );
}

/// Refusals are `unauthorized`, name no room, and change nothing: the
/// old token's expiry and rooms stay in force.
#[tokio::test(start_paused = true)]
async fn a_refused_refresh_changes_nothing() {
    let setup = setup(GatewayConfig::default(), Duration::ZERO).await;
    let mut client = connect(&setup, claims(40));
    let started = tokio::time::Instant::now();
    client.join("r1").await;
    let other_key = Auth::new(b"another-secret", false)
        .mint(&self::claims(3600))
        .expect("mints");
    let revoked_claims = Claims {
        jti: Some("revoked-one".into()),
        ..self::claims(3600)
    };
    setup
        .cx
        .revocations
        .revoke_token("revoked-one", revoked_claims.exp)
        .await
        .expect("revokes");
    let revoked = Auth::new(SECRET, false)
        .mint(&revoked_claims)
        .expect("mints");
    for (bad, why) in [
        (token("bob", 3600, None), "another user"),
        (token("ann", -3600, None), "expired"),
        (other_key, "signature"),
        (revoked, "revoked"),
        ("not-a-jwt".to_owned(), "invalid"),
    ] {
        refresh(&client, &bad);
        let error = client.next_of("error").await;
        assert_eq!(error["code"], "unauthorized", "{why}: {error}");
        assert!(error.get("room").is_none(), "{why}: {error}");
        assert!(
            error["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("refresh refused")),
            "{why}: {error}"
        );
    }
    assert_eq!(setup.cx.metrics.token_refreshes.get(), 0);
    client.op("r1", "still-joined");
    assert_eq!(client.next_of("ack").await["cid"], "still-joined");
    // The first token still decides: the warning, then 4001 at its exp.
    client.next_of("token_expiring").await;
    assert_eq!(client.closed_with().await.0, CLOSE_REVOKED);
    assert!(started.elapsed() <= Duration::from_secs(41));
}

/// A refresh applies the new token's rooms: a room it no longer covers
/// is left (the room is told, the client gets `forbidden` for it); a
/// room it covers with less access keeps going with that access.
#[tokio::test]
async fn a_refresh_that_drops_a_room_leaves_it_and_keeps_the_others() {
    let setup = setup(GatewayConfig::default(), Duration::ZERO).await;
    let mut client = connect(&setup, claims(3600));
    client.join("r1").await;
    client.join("r2").await;
    client.join("r3").await;
    let narrower = token(
        "ann",
        3600,
        Some(&[("r1", Access::Write), ("r3", Access::Read)]),
    );
    refresh(&client, &narrower);
    client.next_of("refreshed").await;
    let gone = client.next_of("error").await;
    assert_eq!(
        (gone["code"].as_str(), gone["room"].as_str()),
        (Some("forbidden"), Some("r2"))
    );
    let r2 = RoomId::parse("r2").expect("id");
    let deadline = tokio::time::Instant::now() + WAIT;
    while !setup.owner.left.lock().expect("lock").contains(&r2) {
        assert!(tokio::time::Instant::now() < deadline, "r2 never told");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // r2 is no longer joined; r1 still is, with write access; r3 with read.
    client.op("r2", "x");
    let refused = client.next_of("error").await;
    assert_eq!(
        (refused["code"].as_str(), refused["cid"].as_str()),
        (Some("bad_request"), Some("x"))
    );
    client.op("r1", "a");
    assert_eq!(client.next_of("ack").await["cid"], "a");
    client.op("r3", "b");
    assert_eq!(client.next_of("ack").await["cid"], "b");
    let accesses = setup.owner.accesses.lock().expect("lock").clone();
    assert_eq!(
        accesses,
        [
            (RoomId::parse("r1").expect("id"), Access::Write),
            (RoomId::parse("r3").expect("id"), Access::Read),
        ]
    );
    // A join the new token does not cover is refused as any other.
    client.send(json!({"type": "join", "room": "r2"}));
    let refused = client.next_of("error").await;
    assert_eq!(
        (refused["code"].as_str(), refused["room"].as_str()),
        (Some("forbidden"), Some("r2"))
    );
}

/// The socket registry holds the new token: revoking it closes the
/// connection, revoking the old one no longer does.
#[tokio::test]
async fn revocations_follow_the_refreshed_token() {
    let setup = setup(GatewayConfig::default(), Duration::ZERO).await;
    let first = Claims {
        jti: Some("first".into()),
        ..claims(3600)
    };
    let mut client = connect(&setup, first);
    client.next_of("welcome").await;
    let second = Claims {
        jti: Some("second".into()),
        ..claims(3600)
    };
    let second = Auth::new(SECRET, false).mint(&second).expect("mints");
    refresh(&client, &second);
    client.next_of("refreshed").await;
    let listed: Vec<Option<String>> = setup
        .cx
        .sockets
        .claims_for_tests()
        .iter()
        .map(|c| c.jti.clone())
        .collect();
    assert_eq!(listed, [Some("second".to_owned())]);
    // And a revocation of it closes the connection.
    tokio::spawn(crate::revoke::close_revoked_sockets(
        Arc::downgrade(&setup.cx.sockets),
        setup.cx.revocations.clone(),
        setup.cx.metrics.clone(),
        setup.cx.revocations.subscribe(),
    ));
    setup
        .cx
        .revocations
        .revoke_token("second", crate::auth::now_secs() + 3600)
        .await
        .expect("revokes");
    assert_eq!(
        client.closed_with().await,
        (CLOSE_REVOKED, "token revoked".into())
    );
}
