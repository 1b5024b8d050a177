//! The dispatcher against a real HTTP receiver (axum on a free port) and
//! the in-memory store: order, signatures, filters, retries, marks.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use collab_protocol::webhooks::WebhookEvent;
use collab_protocol::{Epoch, NodeId, OpKind, RoomId, RoomKind, Seq, UserId};
use collab_store::testsuite::{event, message, stroke_points};
use collab_store::{MemoryStore, RoomCatalog, RoomRecord, Store, Writer};
use collab_webhooks::signature::{SIGNATURE_HEADER, verify};
use collab_webhooks::{
    DispatchOptions, Dispatcher, EventKind, MarkingStore, Solo, WebhookConfig, WebhookSecret,
    Webhooks,
};

const SECRET: &str = "test-secret-0123456789";

/// What the receiver got, and how many requests it must still refuse.
#[derive(Default)]
struct Received {
    events: Vec<WebhookEvent>,
    refuse: usize,
    refused: usize,
}

type Shared = Arc<Mutex<Received>>;

async fn receive(State(state): State<Shared>, headers: HeaderMap, body: String) -> StatusCode {
    let mut received = state.lock().expect("lock");
    if received.refuse > 0 {
        received.refuse -= 1;
        received.refused += 1;
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if verify(SECRET.as_bytes(), signature, body.as_bytes()).is_err() {
        return StatusCode::UNAUTHORIZED;
    }
    match serde_json::from_str::<WebhookEvent>(&body) {
        Ok(event) => {
            received.events.push(event);
            StatusCode::NO_CONTENT
        }
        Err(_) => StatusCode::BAD_REQUEST,
    }
}

async fn receiver(refuse: usize) -> (String, Shared) {
    let state: Shared = Arc::new(Mutex::new(Received {
        refuse,
        ..Received::default()
    }));
    let app = axum::Router::new()
        .route("/hook", post(receive))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), state)
}

fn hook(id: &str, url: &str, events: Vec<EventKind>) -> WebhookConfig {
    WebhookConfig {
        id: id.into(),
        url: url.into(),
        secret: WebhookSecret::new(SECRET),
        events,
        op_kinds: None,
        room_kinds: None,
        timeout_ms: 2000,
        max_in_flight: 4,
        retry_base_ms: 20,
        retry_max_ms: 100,
        retry_horizon_secs: 60,
    }
}

fn fast(endpoints: Vec<WebhookConfig>) -> Webhooks {
    let mut webhooks = Webhooks::unregistered(endpoints);
    webhooks.options = DispatchOptions {
        scan_every: Duration::from_millis(100),
        idle_after: Duration::from_millis(200),
        ..DispatchOptions::default()
    };
    webhooks
}

async fn room(store: &MemoryStore, id: &str, kind: RoomKind) -> RoomId {
    let room = RoomId::parse(id).expect("id");
    store
        .create_room(&RoomRecord {
            id: room.clone(),
            kind,
            name: id.into(),
            epoch: Epoch::parse("e1").expect("epoch"),
            created_by: UserId::parse("ann").expect("user"),
            members: None,
            created_at: 1,
            ttl_secs: None,
            floor: Seq::ZERO,
        })
        .await
        .expect("create");
    room
}

fn writer() -> Writer {
    Writer {
        node: NodeId::parse("n1").expect("id"),
        term: 1,
    }
}

/// A dispatcher for `endpoints` over `store`, on node "n1", the only node.
fn start(
    endpoints: Vec<WebhookConfig>,
    store: &Arc<MemoryStore>,
) -> (Dispatcher, Arc<MarkingStore>) {
    Dispatcher::start(fast(endpoints), store.clone(), "n1", Arc::new(Solo)).expect("starts")
}

/// Commits a message op at each of `seqs` into `room`, one append each.
async fn append_messages(store: &dyn Store, room: &RoomId, seqs: std::ops::RangeInclusive<u64>) {
    for seq in seqs {
        store
            .append(
                room,
                Seq(seq),
                &[event(room, seq, message("hi"))],
                &writer(),
            )
            .await
            .expect("append");
    }
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await; // poll interval
    }
}

fn seqs_of(state: &Shared, kind: &str) -> Vec<u64> {
    state
        .lock()
        .expect("lock")
        .events
        .iter()
        .filter(|e| e.kind == kind)
        .filter_map(|e| e.seq.map(|s| s.get()))
        .collect()
}

#[tokio::test]
async fn ops_arrive_signed_in_order_with_the_filters_applied_and_marks_end_cleared() {
    let store = Arc::new(MemoryStore::new());
    let board = room(&store, "board1", RoomKind::Board).await;
    let (url_all, all) = receiver(0).await;
    let (url_messages, messages) = receiver(0).await;
    let mut only_messages = hook("messages", &url_messages, vec![EventKind::OpCommitted]);
    only_messages.op_kinds = Some(vec![OpKind::Message]);
    let endpoints = vec![
        hook(
            "all",
            &url_all,
            vec![EventKind::RoomCreated, EventKind::OpCommitted],
        ),
        only_messages,
    ];
    let (_dispatcher, marking) = start(endpoints, &store);

    for seq in 1..=20u64 {
        let op = if seq % 5 == 0 {
            message(&format!("m{seq}"))
        } else {
            stroke_points(2)
        };
        marking
            .append(&board, Seq(seq), &[event(&board, seq, op)], &writer())
            .await
            .expect("append");
    }
    eventually("every op at the first endpoint", || {
        seqs_of(&all, "op.committed").len() == 20
    })
    .await;
    assert_eq!(seqs_of(&all, "op.committed"), (1..=20).collect::<Vec<_>>());
    assert_eq!(seqs_of(&all, "room.created"), vec![0]);
    assert_eq!(
        all.lock().expect("lock").events[0].kind,
        "room.created",
        "room.created comes first"
    );
    eventually("the messages at the second endpoint", || {
        seqs_of(&messages, "op.committed").len() == 4
    })
    .await;
    assert_eq!(seqs_of(&messages, "op.committed"), vec![5, 10, 15, 20]);

    // Quiet and caught up: the room's marks go, and both cursors are at 20.
    let log = Arc::clone(&store).webhook_log().expect("log");
    let mut marks = log.webhook_marks().await.expect("marks");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !marks.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "marks left: {marks:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await; // poll interval
        marks = log.webhook_marks().await.expect("marks");
    }
    assert_eq!(
        log.webhook_cursors(&board).await.expect("cursors"),
        vec![
            ("all".to_owned(), Seq(20)),
            ("messages".to_owned(), Seq(20))
        ]
    );
}

#[tokio::test]
async fn a_failing_endpoint_gets_every_event_later_in_order() {
    let store = Arc::new(MemoryStore::new());
    let chat = room(&store, "chat1", RoomKind::Channel).await;
    let (url, state) = receiver(5).await;
    let (_dispatcher, marking) = start(
        vec![hook("flaky", &url, vec![EventKind::OpCommitted])],
        &store,
    );
    append_messages(&*marking, &chat, 1..=10).await;
    eventually("every op after the refusals", || {
        seqs_of(&state, "op.committed").len() == 10
    })
    .await;
    assert_eq!(
        seqs_of(&state, "op.committed"),
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(state.lock().expect("lock").refused, 5);
}

#[tokio::test]
async fn a_new_dispatcher_finds_a_marked_room_and_sends_from_the_cursor() {
    let store = Arc::new(MemoryStore::new());
    let chat = room(&store, "chat2", RoomKind::Channel).await;
    // A process that marked the room and committed ops 1..=6, sent up to
    // 3, then died: its mark and cursor stay.
    let log = Arc::clone(&store).webhook_log().expect("log");
    log.add_webhook_mark(&chat, "n1/dead-process/1")
        .await
        .expect("mark");
    append_messages(&*store, &chat, 1..=6).await;
    log.set_webhook_cursor("crm", &chat, Seq(3))
        .await
        .expect("cursor");

    let (url, state) = receiver(0).await;
    let (_dispatcher, _marking) = start(
        vec![hook("crm", &url, vec![EventKind::OpCommitted])],
        &store,
    );
    eventually("ops 4 to 6", || seqs_of(&state, "op.committed").len() == 3).await;
    assert_eq!(seqs_of(&state, "op.committed"), vec![4, 5, 6]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !log.webhook_marks().await.expect("marks").is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dead process's mark stays"
        );
        tokio::time::sleep(Duration::from_millis(20)).await; // poll interval
    }
}

#[tokio::test]
async fn a_deletion_is_sent_after_the_rooms_last_op_and_presence_goes_best_effort() {
    let store = Arc::new(MemoryStore::new());
    let chat = room(&store, "chat3", RoomKind::Channel).await;
    let (url, state) = receiver(0).await;
    let (dispatcher, marking) = start(
        vec![hook(
            "crm",
            &url,
            vec![
                EventKind::OpCommitted,
                EventKind::RoomDeleted,
                EventKind::MemberJoined,
            ],
        )],
        &store,
    );
    append_messages(&*marking, &chat, 1..=3).await;
    // (Ops not sent yet when a room is deleted go with its history.)
    eventually("the ops", || seqs_of(&state, "op.committed").len() == 3).await;
    let epoch = Epoch::parse("e1").expect("epoch");
    marking
        .delete_room(
            &chat,
            &collab_store::Deletion {
                epoch,
                at: Seq(4),
                writer: writer(),
            },
        )
        .await
        .expect("deleted");
    eventually("the deletion", || {
        !seqs_of(&state, "room.deleted").is_empty()
    })
    .await;
    let kinds: Vec<(String, Option<u64>)> = state
        .lock()
        .expect("lock")
        .events
        .iter()
        .map(|e| (e.kind.clone(), e.seq.map(|s| s.get())))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("op.committed".to_owned(), Some(1)),
            ("op.committed".to_owned(), Some(2)),
            ("op.committed".to_owned(), Some(3)),
            ("room.deleted".to_owned(), Some(4)),
        ]
    );

    // Presence: from the room's events, to the endpoints that asked.
    let other = room(&store, "chat4", RoomKind::Channel).await;
    dispatcher.room_event(&collab_protocol::envelope::RoomEvent::Presence {
        room: other.clone(),
        event: collab_protocol::PresenceEvent::Join,
        user: collab_protocol::UserInfo {
            id: UserId::parse("bob").expect("user"),
            name: "Bob".into(),
            color: "#123456".into(),
        },
        origin: None,
    });
    dispatcher.room_event(&collab_protocol::envelope::RoomEvent::Presence {
        room: other.clone(),
        event: collab_protocol::PresenceEvent::Leave,
        user: collab_protocol::UserInfo {
            id: UserId::parse("bob").expect("user"),
            name: "Bob".into(),
            color: "#123456".into(),
        },
        origin: None,
    });
    eventually("the join", || {
        state
            .lock()
            .expect("lock")
            .events
            .iter()
            .any(|e| e.kind == "member.joined")
    })
    .await;
    let received = state.lock().expect("lock");
    let joined = received
        .events
        .iter()
        .find(|e| e.kind == "member.joined")
        .expect("joined");
    assert_eq!(joined.room, other);
    assert_eq!(joined.room_kind, Some(RoomKind::Channel));
    assert!(
        !received.events.iter().any(|e| e.kind == "member.left"),
        "member.left was not asked for"
    );
}
