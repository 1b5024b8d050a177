//! The HTTP API driven through the router, against the in-memory store and
//! bus.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{HeaderMap, Request, StatusCode, header};
use collab_bus::{Bus, InProcessBus, ReplyFuture, RequestHandler};
use collab_ephemeral::{Ephemeral, EphemeralMetrics, MemoryRoomExpiry, RoomExpiry};
use collab_metrics::{Exporter, Role};
use collab_protocol::envelope::{RoomReply, RoomRequest};
use collab_protocol::http::HistoryPage;
use collab_protocol::{Access, Cid, Claims, NodeId, Op, OpEvent, RoomId, Seq, StrokeId, UserId};
use collab_store::{
    Deletion, MemoryStore, RoomCatalog, Store, StoreError, StoreReader, StoreResult, Writer,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::auth::test_claims;
use crate::{Auth, Gateway, GatewayConfig, GatewayMetrics, GatewayParts, Readiness, now_secs};

const SECRET: &[u8] = b"test-secret";

struct Ready(AtomicBool);

#[async_trait]
impl Readiness for Ready {
    async fn ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

struct Harness {
    app: Router,
    gateway: Gateway,
    store: Arc<dyn Store>,
    auth: Auth,
    ready: Arc<Ready>,
    expiry: Arc<MemoryRoomExpiry>,
    owner: Arc<Owner>,
}

/// Stands in for the rooms' owner on the bus: deletes a room as asked,
/// acks published ops (see [`Owner::publish`]), and remembers what it was
/// asked.
struct Owner {
    store: Arc<dyn Store>,
    requests: std::sync::Mutex<Vec<RoomRequest>>,
    /// Published ops by room, user and cid → their seq.
    published: std::sync::Mutex<HashMap<(RoomId, UserId, Cid), Seq>>,
}

impl Owner {
    /// Acks an op in an existing room with the next seq, or a known cid
    /// with its first; a message `"refuse"` is refused as the room refuses
    /// a bad op, and one `"hang"` is never answered.
    fn publish(&self, room: RoomId, user: UserId, cid: Cid, op: Op) -> ReplyFuture<RoomReply> {
        let text = match &op {
            Op::Message { text } => text.clone(),
            _ => String::new(),
        };
        let mut published = self.published.lock().expect("lock");
        let next = Seq(published.len() as u64 + 1);
        let key = (room.clone(), user, cid);
        let known = published.get(&key).copied();
        if known.is_none() && text != "refuse" && text != "hang" {
            published.insert(key, next);
        }
        let store = self.store.clone();
        Box::pin(async move {
            if store.room(&room).await.expect("room").is_none() {
                return room_not_found();
            }
            if let Some(seq) = known {
                return RoomReply::Ack { seq };
            }
            match text.as_str() {
                "refuse" => RoomReply::Error {
                    code: collab_protocol::ErrorCode::BadRequest,
                    message: "refused".into(),
                },
                "hang" => std::future::pending().await,
                _ => RoomReply::Ack { seq: next },
            }
        })
    }
}

impl RequestHandler for Owner {
    fn handle(&self, request: RoomRequest) -> ReplyFuture<RoomReply> {
        self.requests.lock().expect("lock").push(request.clone());
        if let RoomRequest::Publish {
            room,
            user,
            cid,
            op,
        } = request
        {
            return self.publish(room, user, cid, op);
        }
        let store = self.store.clone();
        Box::pin(async move {
            if let RoomRequest::Update {
                room,
                epoch,
                name,
                add,
                remove,
            } = request
            {
                return update_as_the_owner(store.as_ref(), room, epoch, name, add, remove).await;
            }
            let RoomRequest::Delete { room, epoch } = request else {
                return RoomReply::Done;
            };
            let Some(record) = store.room(&room).await.expect("room") else {
                return room_not_found();
            };
            if epoch.is_some_and(|e| e != record.epoch) {
                return room_not_found();
            }
            let head = store.head(&room).await.expect("head");
            let deletion = Deletion {
                epoch: record.epoch,
                at: head.next(),
                writer: Writer {
                    node: NodeId::parse("owner").expect("node id"),
                    term: 1,
                },
            };
            store.delete_room(&room, &deletion).await.expect("deleted");
            RoomReply::Done
        })
    }
}

/// What the room's owner does with an `Update` (its refusals are the
/// actor's, tested beside it).
async fn update_as_the_owner(
    store: &dyn Store,
    room: RoomId,
    epoch: Option<collab_protocol::Epoch>,
    name: Option<String>,
    add: Vec<UserId>,
    remove: Vec<UserId>,
) -> RoomReply {
    let Some(mut record) = store.room(&room).await.expect("room") else {
        return room_not_found();
    };
    if epoch.is_some_and(|e| e != record.epoch) {
        return room_not_found();
    }
    if let Some(name) = name {
        record.name = name;
    }
    if let Some(members) = &mut record.members {
        members.retain(|m| !remove.contains(m));
        members.extend(add.into_iter().filter(|u| !remove.contains(u)));
    }
    store.update_room(&record).await.expect("updated");
    RoomReply::Updated(collab_protocol::http::RoomUpdated {
        id: record.id,
        kind: record.kind,
        name: record.name,
        epoch: record.epoch,
        created_by: record.created_by,
        members: record.members,
    })
}

fn room_not_found() -> RoomReply {
    RoomReply::Error {
        code: collab_protocol::ErrorCode::NotFound,
        message: "no such room".into(),
    }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
    text: String,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["error"]["code"]
            .as_str()
            .unwrap_or("<no error code>")
    }

    /// Asserts an error answer: the status and the JSON body's code.
    #[track_caller]
    fn assert_error(&self, status: StatusCode, code: &str) {
        assert_eq!(self.status, status, "body: {}", self.text);
        assert_eq!(self.code(), code, "body: {}", self.text);
        assert!(
            self.body["error"]["message"].is_string(),
            "body: {}",
            self.text
        );
    }
}

impl Harness {
    fn new() -> Harness {
        Harness::with(GatewayConfig::default(), false)
    }

    fn with(config: GatewayConfig, dev_mode: bool) -> Harness {
        Harness::with_store(config, dev_mode, Arc::new(MemoryStore::new()))
    }

    fn with_store(config: GatewayConfig, dev_mode: bool, store: Arc<dyn Store>) -> Harness {
        let auth = Auth::new(SECRET, dev_mode);
        let ready = Arc::new(Ready(AtomicBool::new(true)));
        let mut registry = Registry::default();
        let metrics = GatewayMetrics::register(&mut registry);
        let bus = Arc::new(InProcessBus::new());
        let owner = Arc::new(Owner {
            store: store.clone(),
            requests: Default::default(),
            published: Default::default(),
        });
        futures_util::FutureExt::now_or_never(bus.serve(owner.clone()))
            .expect("the in-process bus serves at once")
            .expect("serves");
        let expiry = Arc::new(MemoryRoomExpiry::new());
        let gateway = Gateway::new(
            config.clone(),
            GatewayParts {
                auth: auth.clone(),
                bus,
                store: store.clone(),
                readiness: ready.clone(),
                metrics,
                exporter: Exporter::new(registry, Role::Gateway, "test"),
                ephemeral: Ephemeral::in_memory(
                    &config.ephemeral_options(),
                    EphemeralMetrics::default(),
                ),
                room_expiry: Some(expiry.clone()),
            },
        );
        let app = gateway
            .router()
            .layer(MockConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
        Harness {
            app,
            gateway,
            store,
            auth,
            ready,
            expiry,
            owner,
        }
    }

    fn token(&self, sub: &str) -> String {
        self.token_with(sub, None)
    }

    fn token_with(&self, sub: &str, rooms: Option<&[(&str, Access)]>) -> String {
        let claims = Claims {
            rooms: rooms.map(|r| {
                r.iter()
                    .map(|(k, v)| ((*k).to_owned(), *v))
                    .collect::<HashMap<_, _>>()
            }),
            ..test_claims(sub)
        };
        self.auth.mint(&claims).expect("mints")
    }

    async fn send(&self, request: Request<Body>) -> Answer {
        Harness::send_to(&self.app, request).await
    }

    /// `GET uri` on the router of a metrics listener.
    async fn metrics_listener_get(&self, uri: &str) -> Answer {
        let request = Request::builder()
            .uri(uri)
            .body(Body::empty())
            .expect("request builds");
        Harness::send_to(&self.gateway.metrics_router(), request).await
    }

    async fn send_to(app: &Router, request: Request<Body>) -> Answer {
        let response = app
            .clone()
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body reads");
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
            text,
        }
    }

    async fn request(&self, method: &str, uri: &str, token: Option<&str>, body: &str) -> Answer {
        let mut builder = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if !body.is_empty() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        self.send(
            builder
                .body(Body::from(body.to_owned()))
                .expect("request builds"),
        )
        .await
    }

    async fn get(&self, uri: &str, token: &str) -> Answer {
        self.request("GET", uri, Some(token), "").await
    }

    async fn post(&self, uri: &str, token: &str, body: Value) -> Answer {
        self.request("POST", uri, Some(token), &body.to_string())
            .await
    }

    /// Creates a room and asserts it worked.
    async fn create(&self, token: &str, body: Value) -> Value {
        let answer = self.post("/v1/rooms", token, body).await;
        assert_eq!(answer.status, StatusCode::CREATED, "body: {}", answer.text);
        answer.body
    }

    async fn append(&self, room: &str, ops: &[Op]) {
        let room = RoomId::parse(room).expect("room id");
        let writer = Writer {
            node: NodeId::parse("test-node").expect("node id"),
            term: 1,
        };
        for op in ops {
            let seq = self.store.head(&room).await.expect("head").next();
            let event = OpEvent {
                room: room.clone(),
                seq,
                user: UserId::parse("ann").expect("user id"),
                ts: 1_700_000_000_000 + i64::try_from(seq.get()).expect("small seq"),
                cid: Some(Cid::parse(format!("c{}", seq.get())).expect("cid")),
                op: op.clone(),
            };
            self.store
                .append(&room, seq, &[event], &writer)
                .await
                .expect("append");
        }
    }

    async fn metrics_text(&self) -> String {
        self.request("GET", "/metrics", None, "").await.text
    }
}

fn message(text: &str) -> Op {
    Op::Message { text: text.into() }
}

fn stroke_begin(id: &str) -> Op {
    Op::StrokeBegin {
        stroke: StrokeId::parse(id).expect("stroke id"),
        color: "#112233".into(),
        width: 2.0,
        points: vec![[1.0, 2.0]],
    }
}

fn stroke_end(id: &str) -> Op {
    Op::StrokeEnd {
        stroke: StrokeId::parse(id).expect("stroke id"),
    }
}

fn seqs(page: &Value) -> Vec<u64> {
    page["ops"]
        .as_array()
        .expect("ops is an array")
        .iter()
        .map(|op| op["seq"].as_u64().expect("seq"))
        .collect()
}

fn raw_token(claims: Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("encodes")
}

// === authentication ===

#[tokio::test]
async fn every_authenticated_endpoint_refuses_bad_tokens() {
    let h = Harness::new();
    h.create(&h.token("ann"), json!({"kind":"board","id":"r1"}))
        .await;
    let wrong_key = Auth::new(b"another-secret", false)
        .mint(&test_claims("ann"))
        .expect("mints");
    let expired = h
        .auth
        .mint(&Claims {
            sub: "ann".into(),
            exp: now_secs() - 10,
            name: None,
            rooms: None,
            scope: None,
            jti: None,
            iat: None,
        })
        .expect("mints");
    let no_exp = raw_token(json!({"sub":"ann"}), SECRET);
    let no_sub = raw_token(json!({"exp": now_secs() + 600}), SECRET);
    let empty_sub = raw_token(json!({"sub":"", "exp": now_secs() + 600}), SECRET);
    let authorizations = [
        None,
        Some("Bearer".to_owned()),
        Some("Bearer ".to_owned()),
        Some(format!("Basic {}", h.token("ann"))),
        Some("Bearer not.a.jwt".to_owned()),
        Some("Bearer garbage".to_owned()),
        Some(format!("Bearer {wrong_key}")),
        Some(format!("Bearer {expired}")),
        Some(format!("Bearer {no_exp}")),
        Some(format!("Bearer {no_sub}")),
        Some(format!("Bearer {empty_sub}")),
    ];
    let endpoints = [
        ("POST", "/v1/rooms", r#"{"kind":"board"}"#),
        ("GET", "/v1/rooms/r1", ""),
        ("DELETE", "/v1/rooms/r1", ""),
        ("GET", "/v1/rooms/r1/history", ""),
        ("GET", "/v1/me/rooms", ""),
    ];
    for authorization in &authorizations {
        for (method, uri, body) in endpoints {
            let mut builder = Request::builder().method(method).uri(uri);
            if let Some(value) = authorization {
                builder = builder.header(header::AUTHORIZATION, value);
            }
            let answer = h
                .send(builder.body(Body::from(body)).expect("request builds"))
                .await;
            assert_eq!(
                answer.status,
                StatusCode::UNAUTHORIZED,
                "{method} {uri} with {authorization:?}: {}",
                answer.text
            );
            answer.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
        }
    }
}

#[tokio::test]
async fn no_query_token_over_http() {
    let h = Harness::new();
    let token = h.token("ann");
    let answer = h
        .request("GET", &format!("/v1/me/rooms?token={token}"), None, "")
        .await;
    answer.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    // A lowercase scheme is accepted, as by the WebSocket endpoint.
    let request = Request::builder()
        .uri("/v1/me/rooms")
        .header(header::AUTHORIZATION, format!("bearer {token}"))
        .body(Body::empty())
        .expect("request builds");
    assert_eq!(h.send(request).await.status, StatusCode::OK);
}

// === creating rooms ===

#[tokio::test]
async fn creates_rooms_with_generated_ids() {
    let h = Harness::new();
    let token = h.token("ann");
    let mut ids = std::collections::HashSet::new();
    for _ in 0..5 {
        let body = h.create(&token, json!({"kind":"board"})).await;
        let id = body["id"].as_str().expect("id").to_owned();
        assert_eq!(id.len(), 8, "{id}");
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
            "{id}"
        );
        // The name defaults to the id.
        assert_eq!(body["name"], id.as_str());
        assert_eq!(body["kind"], "board");
        let epoch = body["epoch"].as_str().expect("epoch");
        assert_eq!(epoch.len(), 16);
        assert!(epoch.bytes().all(|b| b.is_ascii_hexdigit()), "{epoch}");
        ids.insert(id);
    }
    assert_eq!(ids.len(), 5);
}

#[tokio::test]
async fn creates_rooms_with_given_ids_and_refuses_duplicates() {
    let h = Harness::new();
    let ann = h.token("ann");
    let body = h
        .create(
            &ann,
            json!({"kind":"channel","id":"Lobby_1-x","name":"The lobby"}),
        )
        .await;
    assert_eq!(body["id"], "Lobby_1-x");
    assert_eq!(body["kind"], "channel");
    assert_eq!(body["name"], "The lobby");
    let epoch = body["epoch"].clone();

    let again = h
        .post(
            "/v1/rooms",
            &h.token("bob"),
            json!({"kind":"board","id":"Lobby_1-x"}),
        )
        .await;
    again.assert_error(StatusCode::CONFLICT, "conflict");
    // The first room is untouched.
    let info = h.get("/v1/rooms/Lobby_1-x", &ann).await;
    assert_eq!(info.status, StatusCode::OK);
    assert_eq!(info.body["kind"], "channel");
    assert_eq!(info.body["epoch"], epoch);

    // Epochs are fresh per room.
    let other = h.create(&ann, json!({"kind":"board","id":"other"})).await;
    assert_ne!(other["epoch"], epoch);
}

#[tokio::test]
async fn create_room_refuses_bad_bodies_as_json_errors() {
    let h = Harness::new();
    let token = h.token("ann");
    let bodies = [
        "",
        "not json",
        "{\"kind\":",
        "[\"board\"]",
        "\"board\"",
        "{}",
        r#"{"kind":"sofa"}"#,
        r#"{"kind":5}"#,
        r#"{"kind":"board","id":7}"#,
        r#"{"kind":"board","id":""}"#,
        r#"{"kind":"board","id":"has space"}"#,
        r#"{"kind":"board","id":"a/b"}"#,
        r#"{"kind":"board","id":"é"}"#,
        r#"{"kind":"board","name":3}"#,
        r#"{"kind":"board","members":"bob"}"#,
        r#"{"kind":"board","members":[1]}"#,
        r#"{"kind":"board","members":[""]}"#,
    ];
    for body in bodies {
        let answer = h.request("POST", "/v1/rooms", Some(&token), body).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            answer.text
        );
        answer.assert_error(StatusCode::BAD_REQUEST, "bad_request");
    }
    let long_id = json!({"kind":"board","id":"x".repeat(65)});
    h.post("/v1/rooms", &token, long_id)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    // Unknown fields are ignored; a 64-character id is fine.
    let ok = json!({"kind":"board","id":"x".repeat(64),"colour":"red"});
    assert_eq!(
        h.post("/v1/rooms", &token, ok).await.status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn creating_rooms_needs_write_access_to_star() {
    let h = Harness::new();
    let body = json!({"kind":"board","id":"r"});
    for rooms in [
        &[("*", Access::Read)][..],
        &[("r", Access::Write)][..],
        &[][..],
    ] {
        let token = h.token_with("ann", Some(rooms));
        h.post("/v1/rooms", &token, body.clone())
            .await
            .assert_error(StatusCode::FORBIDDEN, "forbidden");
    }
    let token = h.token_with("ann", Some(&[("*", Access::Write), ("x", Access::Read)]));
    assert_eq!(
        h.post("/v1/rooms", &token, body).await.status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn room_creation_is_rate_limited_per_user() {
    let mut config = GatewayConfig::default();
    config.rate_limits.rooms_burst = 2.0;
    // No refill: the test must not depend on the clock.
    config.rate_limits.rooms_per_min = 0.0;
    let h = Harness::with(config, false);
    let ann = h.token("ann");
    h.create(&ann, json!({"kind":"board"})).await;
    h.create(&ann, json!({"kind":"board"})).await;
    h.post("/v1/rooms", &ann, json!({"kind":"board"}))
        .await
        .assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    // Another user has their own allowance.
    h.create(&h.token("bob"), json!({"kind":"board"})).await;
}

#[tokio::test]
async fn http_requests_are_rate_limited_per_user() {
    let mut config = GatewayConfig::default();
    config.rate_limits.http_burst = 3.0;
    config.rate_limits.http_per_sec = 0.0;
    let h = Harness::with(config, false);
    let ann = h.token("ann");
    for _ in 0..3 {
        assert_eq!(h.get("/v1/me/rooms", &ann).await.status, StatusCode::OK);
    }
    h.get("/v1/me/rooms", &ann)
        .await
        .assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    h.get("/v1/rooms/anything", &ann)
        .await
        .assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert_eq!(
        h.get("/v1/me/rooms", &h.token("bob")).await.status,
        StatusCode::OK
    );
    // Health, readiness and metrics are not limited.
    for _ in 0..5 {
        assert_eq!(
            h.request("GET", "/healthz", None, "").await.status,
            StatusCode::OK
        );
    }
}

// === room metadata ===

#[tokio::test]
async fn room_info_checks_in_protocol_order() {
    let h = Harness::new();
    let ann = h.token("ann");
    h.create(&ann, json!({"kind":"board","id":"exists"})).await;
    let only_other = h.token_with("ann", Some(&[("other", Access::Write)]));

    // Id format first, even for a token that covers nothing.
    for token in [&ann, &only_other] {
        h.get("/v1/rooms/bad%20id", token)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "bad_request");
        h.get(&format!("/v1/rooms/{}", "x".repeat(65)), token)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    }
    // Then the claim, whether the room exists or not.
    h.get("/v1/rooms/exists", &only_other)
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    h.get("/v1/rooms/missing", &only_other)
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    // Then existence.
    h.get("/v1/rooms/missing", &ann)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    // Read access is enough.
    let reader = h.token_with("carl", Some(&[("exists", Access::Read)]));
    let info = h.get("/v1/rooms/exists", &reader).await;
    assert_eq!(info.status, StatusCode::OK, "{}", info.text);
    assert_eq!(info.body["id"], "exists");
    assert_eq!(info.body["kind"], "board");
    assert_eq!(info.body["name"], "exists");
    assert!(info.body["epoch"].is_string());
    assert_eq!(info.body["head"], 0);

    h.append("exists", &[message("a"), message("b")]).await;
    assert_eq!(h.get("/v1/rooms/exists", &ann).await.body["head"], 2);
}

#[tokio::test]
async fn private_rooms_admit_members_and_creator_only() {
    let h = Harness::new();
    let ann = h.token("ann");
    let body = h
        .create(
            &ann,
            json!({"kind":"channel","id":"dm","members":["bob","bob"]}),
        )
        .await;
    assert_eq!(body["id"], "dm");
    h.append("dm", &[message("hi")]).await;
    for user in ["ann", "bob"] {
        let token = h.token(user);
        assert_eq!(h.get("/v1/rooms/dm", &token).await.status, StatusCode::OK);
        let page = h.get("/v1/rooms/dm/history", &token).await;
        assert_eq!(page.status, StatusCode::OK);
        assert_eq!(seqs(&page.body), vec![1]);
    }
    let carl = h.token("carl");
    h.get("/v1/rooms/dm", &carl)
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    h.get("/v1/rooms/dm/history", &carl)
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    // Membership and the claim must both allow.
    let bob_elsewhere = h.token_with("bob", Some(&[("elsewhere", Access::Write)]));
    h.get("/v1/rooms/dm", &bob_elsewhere)
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");

    // The creator is a member even when not listed, and an empty list is a
    // private room of one.
    h.create(&ann, json!({"kind":"board","id":"solo","members":[]}))
        .await;
    assert_eq!(h.get("/v1/rooms/solo", &ann).await.status, StatusCode::OK);
    h.get("/v1/rooms/solo", &h.token("bob"))
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
}

#[tokio::test]
async fn my_rooms_lists_created_and_private_member_rooms() {
    let h = Harness::new();
    let ann = h.token("ann");
    let bob = h.token("bob");
    h.create(&ann, json!({"kind":"board","id":"b-public","name":"Board"}))
        .await;
    h.create(
        &ann,
        json!({"kind":"channel","id":"a-dm","members":["bob"]}),
    )
    .await;
    h.create(&bob, json!({"kind":"board","id":"c-bobs"})).await;

    let rooms = |answer: Answer| {
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        answer.body["rooms"].clone()
    };
    assert_eq!(
        rooms(h.get("/v1/me/rooms", &ann).await),
        json!([
            {"id":"a-dm","kind":"channel","name":"a-dm"},
            {"id":"b-public","kind":"board","name":"Board"},
        ])
    );
    assert_eq!(
        rooms(h.get("/v1/me/rooms", &bob).await),
        json!([
            {"id":"a-dm","kind":"channel","name":"a-dm"},
            {"id":"c-bobs","kind":"board","name":"c-bobs"},
        ])
    );
    assert_eq!(
        rooms(h.get("/v1/me/rooms", &h.token("carl")).await),
        json!([])
    );
}

// === history ===

#[tokio::test]
async fn history_pages_newest_first() {
    let h = Harness::new();
    let ann = h.token("ann");
    h.create(&ann, json!({"kind":"channel","id":"r"})).await;

    // An empty room: an empty page and nothing older.
    let empty = h.get("/v1/rooms/r/history", &ann).await;
    assert_eq!(empty.status, StatusCode::OK);
    assert_eq!(empty.body, json!({"ops": [], "next_before": null}));

    let texts: Vec<String> = (1..=10).map(|i| format!("m{i}")).collect();
    let ops: Vec<Op> = texts.iter().map(|t| message(t)).collect();
    h.append("r", &ops).await;

    // Default: everything, newest first, nothing older.
    let all = h.get("/v1/rooms/r/history", &ann).await;
    assert_eq!(seqs(&all.body), (1..=10).rev().collect::<Vec<_>>());
    assert_eq!(all.body["next_before"], Value::Null);

    // Each op exactly as its op frame, and the page decodes as the
    // protocol's type.
    let newest = &all.body["ops"][0];
    assert_eq!(
        newest,
        &json!({"type":"op","room":"r","seq":10,"user":"ann","ts":1_700_000_000_010_i64,
                "cid":"c10","op":{"kind":"message","text":"m10"}})
    );
    let decoded: HistoryPage = serde_json::from_value(all.body.clone()).expect("decodes");
    assert_eq!(decoded.ops.len(), 10);
    assert_eq!(decoded.ops[9].seq, Seq(1));

    // Walking back with next_before visits every op once.
    let mut walked = Vec::new();
    let mut uri = "/v1/rooms/r/history?limit=3".to_owned();
    let mut pages = 0;
    loop {
        let page = h.get(&uri, &ann).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        let page_seqs = seqs(&page.body);
        assert!(page_seqs.len() <= 3);
        walked.extend(page_seqs.iter().copied());
        pages += 1;
        match page.body["next_before"].as_u64() {
            Some(next) => {
                assert_eq!(Some(&next), page_seqs.last());
                uri = format!("/v1/rooms/r/history?limit=3&before={next}");
            }
            None => break,
        }
    }
    assert_eq!(walked, (1..=10).rev().collect::<Vec<_>>());
    assert_eq!(pages, 4);

    // A page that ends exactly at seq 1 reports nothing older.
    let exact = h.get("/v1/rooms/r/history?before=4&limit=3", &ann).await;
    assert_eq!(seqs(&exact.body), vec![3, 2, 1]);
    assert_eq!(exact.body["next_before"], Value::Null);
    let first = h.get("/v1/rooms/r/history?before=2", &ann).await;
    assert_eq!(seqs(&first.body), vec![1]);
    assert_eq!(first.body["next_before"], Value::Null);
    let none = h.get("/v1/rooms/r/history?before=1", &ann).await;
    assert_eq!(none.body, json!({"ops": [], "next_before": null}));
}

#[tokio::test]
async fn history_before_is_exclusive_and_clamped() {
    let h = Harness::new();
    let ann = h.token("ann");
    h.create(&ann, json!({"kind":"channel","id":"r"})).await;
    h.append(
        "r",
        &[message("1"), message("2"), message("3"), message("4")],
    )
    .await;

    let page = h.get("/v1/rooms/r/history?before=3", &ann).await;
    assert_eq!(seqs(&page.body), vec![2, 1]);

    let newest = h.get("/v1/rooms/r/history?limit=2", &ann).await.body;
    for before in [
        "5",
        "6",
        "1000",
        "18446744073709551615",
        "99999999999999999999999",
    ] {
        let page = h
            .get(
                &format!("/v1/rooms/r/history?limit=2&before={before}"),
                &ann,
            )
            .await;
        assert_eq!(page.status, StatusCode::OK, "{before}: {}", page.text);
        assert_eq!(page.body, newest, "before={before}");
    }
    assert_eq!(seqs(&newest), vec![4, 3]);
    assert_eq!(newest["next_before"], 3);
}

#[tokio::test]
async fn history_refuses_bad_parameters() {
    let h = Harness::new();
    let ann = h.token("ann");
    h.create(&ann, json!({"kind":"channel","id":"r"})).await;
    h.append("r", &[message("1")]).await;
    for query in [
        "before=0",
        "before=-1",
        "before=abc",
        "before=1.5",
        "before=",
        "limit=0",
        "limit=501",
        "limit=-1",
        "limit=abc",
        "limit=2.0",
        "limit=99999999999",
        "limit=",
        "kinds=bogus",
        "kinds=message,bogus",
        "kinds=message,",
        "limit=1&limit=2",
    ] {
        let answer = h.get(&format!("/v1/rooms/r/history?{query}"), &ann).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{query}: {}",
            answer.text
        );
        answer.assert_error(StatusCode::BAD_REQUEST, "bad_request");
    }
    for query in ["limit=1", "limit=500", "before=1", "kinds=", "unknown=1"] {
        let answer = h.get(&format!("/v1/rooms/r/history?{query}"), &ann).await;
        assert_eq!(answer.status, StatusCode::OK, "{query}: {}", answer.text);
    }
}

#[tokio::test]
async fn history_checks_room_access() {
    let h = Harness::new();
    let ann = h.token("ann");
    h.create(&ann, json!({"kind":"board","id":"r"})).await;
    let only_other = h.token_with("ann", Some(&[("other", Access::Write)]));
    h.get("/v1/rooms/bad%20id/history", &ann)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    h.get("/v1/rooms/r/history", &only_other)
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    h.get("/v1/rooms/missing/history", &only_other)
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    h.get("/v1/rooms/missing/history", &ann)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    let reader = h.token_with("bob", Some(&[("*", Access::Read)]));
    assert_eq!(
        h.get("/v1/rooms/r/history", &reader).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn history_filters_kinds() {
    let h = Harness::new();
    let ann = h.token("ann");
    h.create(&ann, json!({"kind":"board","id":"r"})).await;
    h.append(
        "r",
        &[
            message("1"),      // 1
            stroke_begin("a"), // 2
            stroke_end("a"),   // 3
            message("4"),      // 4
            stroke_begin("b"), // 5
            message("6"),      // 6
            stroke_end("b"),   // 7
            stroke_begin("c"), // 8
        ],
    )
    .await;

    let page = h
        .get("/v1/rooms/r/history?kinds=message&limit=2", &ann)
        .await;
    assert_eq!(seqs(&page.body), vec![6, 4]);
    assert_eq!(page.body["next_before"], 4);
    let page = h
        .get("/v1/rooms/r/history?kinds=message&limit=2&before=4", &ann)
        .await;
    assert_eq!(seqs(&page.body), vec![1]);
    assert_eq!(page.body["next_before"], Value::Null);
    // Exactly `limit` messages remain: still nothing older of that kind,
    // although older ops of other kinds exist.
    let page = h
        .get("/v1/rooms/r/history?kinds=message&limit=3", &ann)
        .await;
    assert_eq!(seqs(&page.body), vec![6, 4, 1]);
    assert_eq!(page.body["next_before"], Value::Null);
    let page = h
        .get("/v1/rooms/r/history?kinds=message&limit=2&before=2", &ann)
        .await;
    assert_eq!(seqs(&page.body), vec![1]);
    assert_eq!(page.body["next_before"], Value::Null);

    let page = h
        .get("/v1/rooms/r/history?kinds=stroke_end,%20stroke_begin", &ann)
        .await;
    assert_eq!(seqs(&page.body), vec![8, 7, 5, 3, 2]);
    assert_eq!(page.body["next_before"], Value::Null);
    let page = h.get("/v1/rooms/r/history?kinds=undo", &ann).await;
    assert_eq!(page.body, json!({"ops": [], "next_before": null}));
}

#[tokio::test]
async fn a_page_with_a_fixed_before_never_changes() {
    let h = Harness::new();
    let ann = h.token("ann");
    h.create(&ann, json!({"kind":"channel","id":"r"})).await;
    let ops: Vec<Op> = (1..=6).map(|i| message(&i.to_string())).collect();
    h.append("r", &ops).await;
    let uri = "/v1/rooms/r/history?before=6&limit=3";
    let page = h.get(uri, &ann).await;
    assert_eq!(seqs(&page.body), vec![5, 4, 3]);
    assert_eq!(page.body["next_before"], 3);

    let more: Vec<Op> = (7..=12).map(|i| message(&i.to_string())).collect();
    h.append("r", &more).await;
    assert_eq!(h.get(uri, &ann).await.body, page.body);
    // The newest page moved on.
    let newest = h.get("/v1/rooms/r/history?limit=3", &ann).await;
    assert_eq!(seqs(&newest.body), vec![12, 11, 10]);
}

// === dev tokens ===

#[tokio::test]
async fn dev_tokens_only_in_dev_mode() {
    let h = Harness::new();
    let answer = h
        .request("POST", "/v1/dev/token", None, r#"{"user":"ann"}"#)
        .await;
    answer.assert_error(StatusCode::NOT_FOUND, "not_found");

    let h = Harness::with(GatewayConfig::default(), true);
    let answer = h
        .request(
            "POST",
            "/v1/dev/token",
            None,
            r#"{"user":"ann","name":"Ann"}"#,
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    let token = answer.body["token"].as_str().expect("token");
    let claims = h.auth.verify(token).await.expect("the dev token verifies");
    assert_eq!(claims.sub, "ann");
    assert_eq!(claims.name.as_deref(), Some("Ann"));
    assert_eq!(claims.rooms, None);
    let lifetime = claims.exp - now_secs();
    assert!(
        (24 * 3600 - 60..=24 * 3600).contains(&lifetime),
        "{lifetime}"
    );
    // It works on the API, with write access everywhere.
    assert_eq!(
        h.post("/v1/rooms", token, json!({"kind":"board"}))
            .await
            .status,
        StatusCode::CREATED
    );

    let anonymous = h
        .request("POST", "/v1/dev/token", None, r#"{"user":"bob"}"#)
        .await;
    assert_eq!(anonymous.status, StatusCode::OK);
    let claims = h
        .auth
        .verify(anonymous.body["token"].as_str().expect("token"))
        .await
        .expect("verifies");
    assert_eq!(claims.name, None);

    // A short one, to try out token refresh.
    let short = h
        .request(
            "POST",
            "/v1/dev/token",
            None,
            r#"{"user":"cy","ttl_secs":20}"#,
        )
        .await;
    assert_eq!(short.status, StatusCode::OK, "{}", short.text);
    let claims = h
        .auth
        .verify(short.body["token"].as_str().expect("token"))
        .await
        .expect("verifies");
    assert!((19..=20).contains(&(claims.exp - now_secs())), "{claims:?}");

    for body in [
        "",
        "{}",
        r#"{"user":""}"#,
        r#"{"user":5}"#,
        "nope",
        "[]",
        r#"{"user":"cy","ttl_secs":0}"#,
        r#"{"user":"cy","ttl_secs":86401}"#,
        r#"{"user":"cy","ttl_secs":-1}"#,
    ] {
        let answer = h.request("POST", "/v1/dev/token", None, body).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            answer.text
        );
        answer.assert_error(StatusCode::BAD_REQUEST, "bad_request");
    }
}

#[tokio::test]
async fn dev_tokens_are_rate_limited_per_address() {
    let mut config = GatewayConfig::default();
    config.rate_limits.http_burst = 2.0;
    config.rate_limits.http_per_sec = 0.0;
    let h = Harness::with(config, true);
    for _ in 0..2 {
        let answer = h
            .request("POST", "/v1/dev/token", None, r#"{"user":"ann"}"#)
            .await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    h.request("POST", "/v1/dev/token", None, r#"{"user":"bob"}"#)
        .await
        .assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
}

// === operations ===

#[tokio::test]
async fn health_and_readiness() {
    let h = Harness::new();
    assert_eq!(
        h.request("GET", "/healthz", None, "").await.status,
        StatusCode::OK
    );
    assert_eq!(
        h.request("GET", "/readyz", None, "").await.status,
        StatusCode::OK
    );
    h.ready.0.store(false, Ordering::SeqCst);
    h.request("GET", "/readyz", None, "")
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    h.ready.0.store(true, Ordering::SeqCst);
    assert_eq!(
        h.request("GET", "/readyz", None, "").await.status,
        StatusCode::OK
    );
    h.gateway.begin_shutdown();
    h.request("GET", "/readyz", None, "")
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    // Still alive while draining.
    assert_eq!(
        h.request("GET", "/healthz", None, "").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn metrics_are_served_and_count_errors() {
    let h = Harness::new();
    let answer = h.request("GET", "/metrics", None, "").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.headers[header::CONTENT_TYPE],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(answer.text.contains("collab_gateway"), "{}", answer.text);

    h.request("GET", "/v1/me/rooms", None, "").await;
    h.request("GET", "/v1/me/rooms", None, "").await;
    h.get("/v1/rooms/missing", &h.token("ann")).await;
    h.request("GET", "/nowhere", None, "").await;
    let text = h.metrics_text().await;
    assert!(
        text.contains(r#"collab_gateway_errors_total{code="unauthorized"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"collab_gateway_errors_total{code="not_found"} 2"#),
        "{text}"
    );
}

/// Every error answered is counted once, by the one layer: a wrong
/// method's, the WebSocket upgrade's and the web app's as well as the
/// handlers'.
#[tokio::test]
async fn each_error_answered_is_counted_once() {
    let h = Harness::new();
    h.request("DELETE", "/healthz", None, "")
        .await
        .assert_error(StatusCode::METHOD_NOT_ALLOWED, "bad_request");
    h.request("GET", "/v1/ws", None, "")
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    h.request("GET", "/app/missing.js", None, "")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    let text = h.metrics_text().await;
    for code in ["bad_request", "unauthorized", "not_found"] {
        let line = format!(r#"collab_gateway_errors_total{{code="{code}"}} 1"#);
        assert!(text.contains(&line), "{line} in {text}");
    }
}

#[tokio::test]
async fn metrics_count_http_requests_by_route_and_tell_readiness() {
    let h = Harness::new();
    h.get("/v1/rooms/missing", &h.token("ann")).await;
    h.request("GET", "/nowhere/at/all", None, "").await;
    let text = h.metrics_text().await;
    for line in [
        r#"collab_http_requests_total{route="/v1/rooms/{id}",status="404"} 1"#,
        r#"collab_http_requests_total{route="other",status="404"} 1"#,
        r#"collab_http_request_duration_seconds_count{route="/v1/rooms/{id}"} 1"#,
        r#"collab_build_info{version="test",role="gateway"} 1"#,
        "collab_ready 1",
        // At zero before any connection ever ended.
        r#"collab_gateway_disconnects_total{reason="slow"} 0"#,
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    // A path is never a label value.
    assert!(!text.contains("nowhere"), "{text}");

    // What /readyz would answer at the scrape.
    h.ready.0.store(false, Ordering::SeqCst);
    assert!(
        h.metrics_text()
            .await
            .lines()
            .any(|l| l == "collab_ready 0")
    );
    h.ready.0.store(true, Ordering::SeqCst);
    assert!(
        h.metrics_text()
            .await
            .lines()
            .any(|l| l == "collab_ready 1")
    );
    h.gateway.begin_shutdown();
    assert!(
        h.metrics_text()
            .await
            .lines()
            .any(|l| l == "collab_ready 0")
    );
}

#[tokio::test]
async fn with_a_metrics_listener_metrics_are_served_only_there() {
    let config = GatewayConfig {
        metrics_elsewhere: true,
        ..GatewayConfig::default()
    };
    let h = Harness::with(config, false);
    h.request("GET", "/metrics", None, "")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    // The probes stay on the public router too.
    for path in ["/healthz", "/readyz"] {
        let answer = h.request("GET", path, None, "").await;
        assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.text);
    }

    let answer = h.metrics_listener_get("/metrics").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.headers[header::CONTENT_TYPE],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    // It counted the public router's requests too.
    assert!(
        answer
            .text
            .contains(r#"collab_http_requests_total{route="other",status="404"} 1"#),
        "{}",
        answer.text
    );
    for path in ["/healthz", "/readyz"] {
        let answer = h.metrics_listener_get(path).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.text);
    }
    // Nothing else.
    h.metrics_listener_get("/v1/me/rooms")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    h.gateway.begin_shutdown();
    h.metrics_listener_get("/readyz")
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
}

#[tokio::test]
async fn unknown_paths_and_methods_get_json_errors() {
    let h = Harness::new();
    h.request("GET", "/nowhere", None, "")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    h.request("GET", "/v1/rooms/a/b/c", None, "")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    for (method, uri) in [
        ("DELETE", "/v1/rooms"),
        ("PUT", "/v1/rooms/r"),
        ("GET", "/v1/rooms/r/kick"),
        ("POST", "/v1/me/rooms"),
        ("GET", "/v1/dev/token"),
        ("POST", "/healthz"),
    ] {
        let answer = h.request(method, uri, None, "").await;
        assert_eq!(
            answer.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {uri}: {}",
            answer.text
        );
        assert_eq!(answer.code(), "bad_request", "{method} {uri}");
        assert!(answer.headers.contains_key(header::ALLOW), "{method} {uri}");
    }
}

/// A store that cannot be reached.
struct DownStore;

fn down<T>() -> StoreResult<T> {
    Err(StoreError::Unavailable("store is down".into()))
}

#[async_trait]
impl StoreReader for DownStore {
    async fn room(&self, _: &RoomId) -> StoreResult<Option<collab_store::RoomRecord>> {
        down()
    }

    async fn rooms_of_user(&self, _: &UserId) -> StoreResult<Vec<collab_store::RoomRecord>> {
        down()
    }

    async fn rooms_of_user_page(
        &self,
        _: &UserId,
        _: &collab_store::RoomsPage,
    ) -> StoreResult<Vec<collab_store::RoomRecord>> {
        down()
    }

    async fn head(&self, _: &RoomId) -> StoreResult<Seq> {
        down()
    }

    async fn read_log(
        &self,
        _: &RoomId,
        _: Seq,
        _: usize,
    ) -> StoreResult<Vec<collab_store::LoggedOp>> {
        down()
    }

    async fn history(
        &self,
        _: &RoomId,
        _: Seq,
        _: usize,
        _: Option<&[collab_protocol::OpKind]>,
    ) -> StoreResult<Vec<OpEvent>> {
        down()
    }

    async fn latest_snapshot(&self, _: &RoomId) -> StoreResult<Option<collab_store::Snapshot>> {
        down()
    }
}

#[async_trait]
impl RoomCatalog for DownStore {
    async fn create_room(&self, _: &collab_store::RoomRecord) -> StoreResult<()> {
        down()
    }
}

#[async_trait]
impl Store for DownStore {
    async fn append(&self, _: &RoomId, _: Seq, _: &[OpEvent], _: &Writer) -> StoreResult<()> {
        down()
    }

    async fn put_snapshot(&self, _: &RoomId, _: &collab_store::Snapshot) -> StoreResult<()> {
        down()
    }

    async fn delete_room(&self, _: &RoomId, _: &Deletion) -> StoreResult<()> {
        down()
    }

    async fn update_room(&self, _: &collab_store::RoomRecord) -> StoreResult<()> {
        down()
    }
}

#[tokio::test]
async fn an_unreachable_store_is_unavailable() {
    let h = Harness::with_store(GatewayConfig::default(), false, Arc::new(DownStore));
    let ann = h.token("ann");
    h.post("/v1/rooms", &ann, json!({"kind":"board"}))
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    h.post("/v1/rooms", &ann, json!({"kind":"board","id":"r"}))
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    h.get("/v1/rooms/r", &ann)
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    h.get("/v1/rooms/r/history", &ann)
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    h.get("/v1/me/rooms", &ann)
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    h.get("/v1/rooms?member=me", &ann)
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    h.request("PATCH", "/v1/rooms/r", Some(&ann), r#"{"name":"x"}"#)
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    h.request("POST", "/v1/rooms/r/kick", Some(&ann), r#"{"user":"bob"}"#)
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    h.request("DELETE", "/v1/rooms/r", Some(&ann), "")
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
}

// === deletion and time to live ===

/// `DELETE /v1/rooms/{id}`: 204 for the room's creator, then the room is
/// gone (404 for everything about it); 403 for anyone else, or a token
/// without write access to it (whether it exists or not); 404 for a room
/// that does not exist. The owner is asked with the epoch the gateway
/// checked.
#[tokio::test]
async fn rooms_are_deleted_by_their_creator() {
    let h = Harness::new();
    let (ann, bob) = (h.token("ann"), h.token("bob"));
    let created = h.create(&ann, json!({"kind":"board","id":"r1"})).await;
    h.append("r1", &[message("one"), message("two")]).await;

    h.request("DELETE", "/v1/rooms/r1", Some(&bob), "")
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    let reader = h.token_with("ann", Some(&[("r1", Access::Read)]));
    for room in ["r1", "nowhere"] {
        h.request("DELETE", &format!("/v1/rooms/{room}"), Some(&reader), "")
            .await
            .assert_error(StatusCode::FORBIDDEN, "forbidden");
    }
    h.request("DELETE", "/v1/rooms/nowhere", Some(&ann), "")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    h.request("DELETE", "/v1/rooms/bad%20id", Some(&ann), "")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    assert!(
        h.owner.requests.lock().expect("lock").is_empty(),
        "nothing refused reaches the owner"
    );

    let answer = h.request("DELETE", "/v1/rooms/r1", Some(&ann), "").await;
    assert_eq!(
        answer.status,
        StatusCode::NO_CONTENT,
        "body: {}",
        answer.text
    );
    assert!(answer.text.is_empty());
    let epoch = created["epoch"].as_str().expect("epoch");
    assert_eq!(
        *h.owner.requests.lock().expect("lock"),
        [RoomRequest::Delete {
            room: RoomId::parse("r1").expect("id"),
            epoch: Some(collab_protocol::Epoch::parse(epoch).expect("epoch")),
        }]
    );
    h.get("/v1/rooms/r1", &ann)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    h.get("/v1/rooms/r1/history", &ann)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    h.request("DELETE", "/v1/rooms/r1", Some(&ann), "")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    let mine = h.get("/v1/me/rooms", &ann).await;
    assert_eq!(mine.body["rooms"], json!([]));

    // The id is free again: a new room, with a new epoch, after the old
    // room's tombstone.
    let again = h.create(&bob, json!({"kind":"channel","id":"r1"})).await;
    assert_ne!(again["epoch"], created["epoch"]);
    let info = h.get("/v1/rooms/r1", &bob).await;
    assert_eq!(info.status, StatusCode::OK, "body: {}", info.text);
    assert_eq!(info.body["head"], 3);
    assert_eq!(info.body["kind"], "channel");
    let page = h.get("/v1/rooms/r1/history", &bob).await;
    assert!(seqs(&page.body).is_empty());
}

/// `ttl_secs`: stored with the room and shown by `GET`; the server's
/// default applies when it is absent, 0 means never; a room created with
/// one is due that long after its creation.
#[tokio::test]
async fn rooms_have_a_time_to_live() {
    let config = GatewayConfig {
        default_room_ttl_secs: 86_400,
        ..GatewayConfig::default()
    };
    let h = Harness::with(config, false);
    let ann = h.token("ann");
    let room = |id: &str| RoomId::parse(id).expect("id");
    for (id, asked, stored) in [
        ("hour", json!(3600), json!(3600)),
        ("forever", json!(0), Value::Null),
        ("default", Value::Null, json!(86_400)),
    ] {
        let mut body = json!({"kind":"board","id":id});
        if !asked.is_null() {
            body["ttl_secs"] = asked;
        }
        h.create(&ann, body).await;
        let info = h.get(&format!("/v1/rooms/{id}"), &ann).await;
        assert_eq!(info.body["ttl_secs"], stored, "{id}: {}", info.text);
        let deadline = h.expiry.deadline(&room(id)).await.expect("deadline");
        assert_eq!(deadline.is_some(), !stored.is_null(), "{id}");
    }
    let now_ms = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms");
    let due = h
        .expiry
        .deadline(&room("hour"))
        .await
        .expect("deadline")
        .expect("one");
    assert!(
        due > now_ms + 3_590_000 && due <= now_ms + 3_600_000,
        "due an hour after its creation: {due} vs {now_ms}"
    );
    for bad in [json!(-1), json!("60"), json!(1.5), json!(u64::MAX)] {
        h.post("/v1/rooms", &ann, json!({"kind":"board","ttl_secs":bad}))
            .await
            .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    }
    let none = Harness::new();
    let ann = none.token("ann");
    none.create(&ann, json!({"kind":"board","id":"plain"}))
        .await;
    let info = none.get("/v1/rooms/plain", &ann).await;
    assert_eq!(info.body["ttl_secs"], Value::Null, "{}", info.text);
}

/// An admin may delete anyone's room, whatever its `rooms` claim; a scope
/// that only looks like `admin` is no admin.
#[tokio::test]
async fn admins_delete_any_room() {
    let h = Harness::new();
    let ann = h.token("ann");
    h.create(&ann, json!({"kind":"board","id":"r1"})).await;
    let scoped = |scope: &str| {
        h.auth
            .mint(&Claims {
                rooms: Some(HashMap::from([("elsewhere".to_owned(), Access::Read)])),
                scope: Some(scope.into()),
                ..test_claims("op")
            })
            .expect("mints")
    };
    h.request("DELETE", "/v1/rooms/r1", Some(&scoped("administrator")), "")
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    let admin = scoped("ops admin");
    h.request("DELETE", "/v1/rooms/nowhere", Some(&admin), "")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    let answer = h.request("DELETE", "/v1/rooms/r1", Some(&admin), "").await;
    assert_eq!(
        answer.status,
        StatusCode::NO_CONTENT,
        "body: {}",
        answer.text
    );
    h.get("/v1/rooms/r1", &ann)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
}

// === server-side publish ===

impl Harness {
    fn token_scoped(&self, sub: &str, scope: &str, rooms: Option<&[(&str, Access)]>) -> String {
        let claims = Claims {
            rooms: rooms.map(|r| {
                r.iter()
                    .map(|(k, v)| ((*k).to_owned(), *v))
                    .collect::<HashMap<_, _>>()
            }),
            scope: Some(scope.into()),
            ..test_claims(sub)
        };
        self.auth.mint(&claims).expect("mints")
    }

    /// The `Publish` requests the owner was sent.
    fn publishes(&self) -> Vec<RoomRequest> {
        self.owner
            .requests
            .lock()
            .expect("lock")
            .iter()
            .filter(|r| matches!(r, RoomRequest::Publish { .. }))
            .cloned()
            .collect()
    }
}

fn publish_op(cid: &str, text: &str) -> Value {
    json!({"cid": cid, "op": {"kind": "message", "text": text}})
}

#[tokio::test]
async fn publish_acks_each_op_with_its_seq_and_the_token_as_author() {
    let h = Harness::new();
    h.create(&h.token("ann"), json!({"kind": "channel", "id": "lobby"}))
        .await;
    let bot = h.token_scoped("bot", "service", None);
    let one = h
        .post("/v1/rooms/lobby/ops", &bot, publish_op("a", "hi"))
        .await;
    assert_eq!(one.status, StatusCode::OK, "body: {}", one.text);
    assert_eq!(one.body, json!({"cid": "a", "seq": 1}));
    let list = h
        .post(
            "/v1/rooms/lobby/ops",
            &bot,
            json!([publish_op("b", "one"), publish_op("c", "two")]),
        )
        .await;
    assert_eq!(list.status, StatusCode::OK, "body: {}", list.text);
    assert_eq!(
        list.body,
        json!({"ops": [{"cid": "b", "seq": 2}, {"cid": "c", "seq": 3}]})
    );
    // A retry is answered with the first seq.
    let again = h
        .post("/v1/rooms/lobby/ops", &bot, publish_op("a", "hi"))
        .await;
    assert_eq!(again.body, json!({"cid": "a", "seq": 1}));
    let sent = h.publishes();
    assert_eq!(sent.len(), 4);
    for request in sent {
        let RoomRequest::Publish { room, user, .. } = request else {
            unreachable!("filtered");
        };
        assert_eq!(room.as_str(), "lobby");
        assert_eq!(user.as_str(), "bot");
    }
}

#[tokio::test]
async fn publish_checks_token_scope_body_and_room_in_protocol_order() {
    let h = Harness::new();
    h.create(&h.token("ann"), json!({"kind": "channel", "id": "lobby"}))
        .await;
    let uri = "/v1/rooms/lobby/ops";
    let body = publish_op("a", "hi").to_string();
    h.request("POST", uri, None, &body)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    h.request("POST", uri, Some("not-a-jwt"), &body)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    // No service scope: a user token, and an admin one (admin does not
    // include publishing).
    for token in [h.token("ann"), h.token_scoped("op", "admin", None)] {
        h.post(uri, &token, publish_op("a", "hi"))
            .await
            .assert_error(StatusCode::FORBIDDEN, "forbidden");
    }
    // A rooms claim still limits where a service token writes.
    let narrow = h.token_scoped("bot", "service", Some(&[("*", Access::Read)]));
    h.post(uri, &narrow, publish_op("a", "hi"))
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    let bot = h.token_scoped("bot", "admin service", None);
    // Malformed before forbidden: a user token with a bad body is told so.
    h.request("POST", uri, Some(&h.token("ann")), "{")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    let too_many: Vec<Value> = (0..=collab_protocol::http::PUBLISH_MAX_OPS)
        .map(|i| publish_op(&format!("c{i}"), "x"))
        .collect();
    for bad in [
        "{".to_owned(),
        "[]".to_owned(),
        "42".to_owned(),
        json!({"cid": "a"}).to_string(),
        json!({"cid": "a", "op": {"kind": "wave"}}).to_string(),
        json!({"cid": "a", "op": {"kind": "message", "text": "hi"}, "user": "eve"}).to_string(),
        Value::Array(too_many).to_string(),
    ] {
        h.request("POST", uri, Some(&bot), &bad)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    }
    h.post("/v1/rooms/no%2Fpe/ops", &bot, publish_op("a", "hi"))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    h.post("/v1/rooms/nowhere/ops", &bot, publish_op("a", "hi"))
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    // What the room refuses comes back with its code.
    h.post(uri, &bot, publish_op("a", "refuse"))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    // Only the last two reached the owner.
    assert_eq!(h.publishes().len(), 2);
    let wrong_method = h.get(uri, &bot).await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn a_list_stops_at_the_first_failure_and_says_what_committed() {
    let h = Harness::new();
    h.create(&h.token("ann"), json!({"kind": "channel", "id": "lobby"}))
        .await;
    let bot = h.token_scoped("bot", "service", None);
    let answer = h
        .post(
            "/v1/rooms/lobby/ops",
            &bot,
            json!([
                publish_op("a", "one"),
                publish_op("b", "refuse"),
                publish_op("c", "never sent")
            ]),
        )
        .await;
    answer.assert_error(StatusCode::BAD_REQUEST, "bad_request");
    assert_eq!(answer.body["ops"], json!([{"cid": "a", "seq": 1}]));
    let message = answer.body["error"]["message"].as_str().expect("message");
    assert!(message.contains("op 1 (cid b)"), "{message}");
    assert_eq!(h.publishes().len(), 2, "nothing after the failure is sent");
}

#[tokio::test]
async fn publish_is_rate_limited_by_the_ops_bucket() {
    let mut config = GatewayConfig::default();
    config.rate_limits.ops_burst = 2.0;
    config.rate_limits.ops_per_sec = 0.0;
    let h = Harness::with(config, false);
    h.create(&h.token("ann"), json!({"kind": "channel", "id": "lobby"}))
        .await;
    let bot = h.token_scoped("bot", "service", None);
    let answer = h
        .post(
            "/v1/rooms/lobby/ops",
            &bot,
            json!([
                publish_op("a", "one"),
                publish_op("b", "two"),
                publish_op("c", "three")
            ]),
        )
        .await;
    answer.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert_eq!(
        answer.body["ops"],
        json!([{"cid": "a", "seq": 1}, {"cid": "b", "seq": 2}])
    );
    h.post("/v1/rooms/lobby/ops", &bot, publish_op("d", "four"))
        .await
        .assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    // Another service user has its own bucket.
    let other = h.token_scoped("importer", "service", None);
    let ok = h
        .post("/v1/rooms/lobby/ops", &other, publish_op("a", "one"))
        .await;
    assert_eq!(ok.status, StatusCode::OK, "body: {}", ok.text);
}

#[tokio::test]
async fn publish_is_unavailable_when_the_owner_does_not_answer() {
    let config = GatewayConfig {
        request_timeout_secs: 1,
        ..GatewayConfig::default()
    };
    let h = Harness::with(config, false);
    h.create(&h.token("ann"), json!({"kind": "channel", "id": "lobby"}))
        .await;
    let bot = h.token_scoped("bot", "service", None);
    h.post("/v1/rooms/lobby/ops", &bot, publish_op("a", "hang"))
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
}

#[tokio::test]
async fn a_connection_that_sends_no_request_head_in_time_is_dropped_and_others_are_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    let config = GatewayConfig {
        handshake_timeout_secs: 1,
        ..GatewayConfig::default()
    };
    let harness = Harness::with(config, false);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let gateway = harness.gateway.clone();
    let server = tokio::spawn(async move {
        gateway
            .serve(listener, async move {
                let _ = stopped.await;
            })
            .await
    });
    let opened = std::time::Instant::now();
    let mut slow = TcpStream::connect(addr).await.expect("connects");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: collab\r\n")
        .await
        .expect("writes");
    // Meanwhile another client is served.
    let mut other = TcpStream::connect(addr).await.expect("connects");
    other
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: collab\r\nConnection: close\r\n\r\n")
        .await
        .expect("writes");
    let mut answer = String::new();
    other.read_to_string(&mut answer).await.expect("reads");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), slow.read(&mut buf))
        .await
        .expect("dropped within the bound");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(opened.elapsed() >= std::time::Duration::from_millis(900));
    let _ = stop.send(());
    let served = tokio::time::timeout(std::time::Duration::from_secs(10), server)
        .await
        .expect("stops");
    assert!(matches!(served, Ok(Ok(()))), "{served:?}");
}

#[tokio::test]
async fn requests_past_the_concurrency_cap_get_503_but_probes_do_not() {
    let config = GatewayConfig {
        max_concurrent_requests: 2,
        ..GatewayConfig::default()
    };
    let harness = Harness::with(config, false);
    let ann = harness.token("ann");
    // Two requests in progress, as far as the cap knows.
    let slots = harness.gateway.state.ops.http_slots.clone().expect("a cap");
    let busy = slots.clone().acquire_many_owned(2).await.expect("permits");
    let answer = harness.get("/v1/me/rooms", &ann).await;
    answer.assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert!(
        answer.text.contains("too many requests in progress"),
        "{}",
        answer.text
    );
    for probe in ["/healthz", "/readyz", "/metrics"] {
        let answer = harness.get(probe, &ann).await;
        assert_eq!(answer.status, StatusCode::OK, "{probe}: {}", answer.text);
    }
    let page = harness.get("/metrics", &ann).await.text;
    assert!(
        page.contains(r#"collab_gateway_refusals_total{reason="overloaded"} 1"#),
        "{page}"
    );
    drop(busy);
    let answer = harness.get("/v1/me/rooms", &ann).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_eq!(slots.available_permits(), 2);
}

#[tokio::test]
async fn an_upgrade_from_a_page_of_a_foreign_origin_is_refused_before_the_token() {
    let config = GatewayConfig {
        allowed_origins: "https://app.example.com".into(),
        ..GatewayConfig::default()
    };
    let harness = Harness::with(config, false);
    let upgrade = |origin: Option<&str>| {
        let mut builder = Request::builder()
            .uri("/v1/ws")
            .header(header::HOST, "collab.example.com");
        if let Some(origin) = origin {
            builder = builder.header(header::ORIGIN, origin);
        }
        builder.body(Body::empty()).expect("request builds")
    };
    let refused = harness.send(upgrade(Some("https://evil.example"))).await;
    refused.assert_error(StatusCode::FORBIDDEN, "forbidden");
    assert!(
        refused.text.contains("https://evil.example"),
        "{}",
        refused.text
    );
    // Allowed, and no origin at all: on to the token (none here: 401).
    for origin in [
        Some("https://app.example.com"),
        Some("https://collab.example.com"),
        None,
    ] {
        let answer = harness.send(upgrade(origin)).await;
        answer.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    // Not in dev mode: a loopback page is foreign like any other.
    let answer = harness.send(upgrade(Some("http://localhost:5173"))).await;
    answer.assert_error(StatusCode::FORBIDDEN, "forbidden");
    let page = harness.get("/metrics", &harness.token("ann")).await.text;
    assert!(
        page.contains(r#"collab_gateway_refusals_total{reason="origin"} 2"#),
        "{page}"
    );
}

#[tokio::test]
async fn rooms_past_a_users_count_and_members_past_a_rooms_are_refused() {
    let config = GatewayConfig {
        max_rooms_per_user: 2,
        max_members_per_room: 3,
        ..GatewayConfig::default()
    };
    let harness = Harness::with(config, false);
    let ann = harness.token("ann");
    let bob = harness.token("bob");
    harness
        .create(&ann, json!({"kind": "board", "id": "a1"}))
        .await;
    // The creator counts among the members: ann, bob, cat.
    harness
        .create(
            &ann,
            json!({"kind": "channel", "id": "a2", "members": ["bob", "cat"]}),
        )
        .await;
    let answer = harness
        .post("/v1/rooms", &ann, json!({"kind": "board", "id": "a3"}))
        .await;
    answer.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(answer.text.contains("created 2 rooms"), "{}", answer.text);
    // Another user is not affected; a list over the members' limit is
    // refused whoever asks, and creates nothing.
    harness
        .create(&bob, json!({"kind": "board", "id": "b1"}))
        .await;
    let answer = harness
        .post(
            "/v1/rooms",
            &bob,
            json!({"kind": "channel", "id": "b2", "members": ["ann", "cat", "dan"]}),
        )
        .await;
    answer.assert_error(StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    assert!(answer.text.contains("at most 3 members"), "{}", answer.text);
    assert_eq!(
        harness
            .store
            .room(&RoomId::parse("b2").expect("id"))
            .await
            .expect("reads"),
        None
    );
    // A deleted room frees its place.
    let answer = harness
        .request("DELETE", "/v1/rooms/a1", Some(&ann), "")
        .await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT, "{}", answer.text);
    harness
        .create(&ann, json!({"kind": "board", "id": "a3"}))
        .await;
    let page = harness.get("/metrics", &ann).await.text;
    for reason in ["rooms_per_user", "members_per_room"] {
        let line = format!("collab_gateway_refusals_total{{reason=\"{reason}\"}} 1");
        assert!(page.contains(&line), "{line}:\n{page}");
    }
}

// === room lifecycle: listing, changing, kicking ===

fn ids(page: &Value) -> Vec<&str> {
    page["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .map(|room| room["id"].as_str().expect("id"))
        .collect()
}

/// The caller's rooms come a page at a time, by id, with a cursor to the
/// next page; filtered by kind; the same under the older `/v1/me/rooms`.
#[tokio::test]
async fn the_callers_rooms_are_listed_a_page_at_a_time() {
    let h = Harness::new();
    let (ann, bob) = (h.token("ann"), h.token("bob"));
    for (id, kind) in [
        ("r1", "board"),
        ("r2", "channel"),
        ("r3", "board"),
        ("r4", "channel"),
    ] {
        h.create(&ann, json!({"kind": kind, "id": id})).await;
    }
    // Bob's private room with ann; bob's public room is not ann's.
    h.create(&bob, json!({"kind":"channel","id":"r5","members":["ann"]}))
        .await;
    h.create(&bob, json!({"kind":"board","id":"r6"})).await;

    let first = h.get("/v1/rooms?member=me&limit=2", &ann).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    assert_eq!(ids(&first.body), ["r1", "r2"]);
    assert_eq!(first.body["next"], "r2");
    assert_eq!(
        first.body["rooms"][1],
        json!({"id":"r2","kind":"channel","name":"r2"})
    );
    let second = h.get("/v1/rooms?member=me&limit=2&after=r2", &ann).await;
    assert_eq!(ids(&second.body), ["r3", "r4"]);
    let third = h.get("/v1/rooms?member=me&limit=2&after=r4", &ann).await;
    assert_eq!(ids(&third.body), ["r5"]);
    assert_eq!(third.body["next"], Value::Null);
    let channels = h.get("/v1/rooms?member=me&kind=channel", &ann).await;
    assert_eq!(ids(&channels.body), ["r2", "r4", "r5"]);
    assert_eq!(channels.body["next"], Value::Null);
    // The older route is the same listing.
    let all = h.get("/v1/rooms?member=me", &ann).await;
    assert_eq!(ids(&all.body), ["r1", "r2", "r3", "r4", "r5"]);
    assert_eq!(h.get("/v1/me/rooms", &ann).await.body, all.body);
    assert_eq!(h.get("/v1/me/rooms?limit=2", &ann).await.body, first.body);
    assert_eq!(
        ids(&h.get("/v1/rooms?member=me", &bob).await.body),
        ["r5", "r6"]
    );

    for query in [
        "",
        "?member=bob",
        "?member=me&limit=0",
        "?member=me&limit=501",
        "?member=me&limit=x",
        "?member=me&kind=dm",
        "?member=me&after=bad%20id",
    ] {
        h.get(&format!("/v1/rooms{query}"), &ann)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    }
    h.request("GET", "/v1/rooms?member=me", None, "")
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
}

async fn patch(h: &Harness, room: &str, token: &str, body: &str) -> Answer {
    h.request("PATCH", &format!("/v1/rooms/{room}"), Some(token), body)
        .await
}

fn admin_token(h: &Harness) -> String {
    h.auth
        .mint(&Claims {
            rooms: Some(HashMap::from([("elsewhere".to_owned(), Access::Read)])),
            scope: Some("admin".into()),
            ..test_claims("op")
        })
        .expect("mint")
}

/// The creator (or an admin) renames a room and changes its members
/// through its owner; anyone else is refused, and so is every bad body,
/// none of which reaches the owner or changes the room.
#[tokio::test]
async fn rooms_are_changed_by_their_creator_or_an_admin() {
    let h = Harness::new();
    let (ann, bob) = (h.token("ann"), h.token("bob"));
    let created = h
        .create(&ann, json!({"kind":"channel","id":"r1","members":["bob"]}))
        .await;
    h.create(&ann, json!({"kind":"board","id":"open"})).await;
    let reader = h.token_with("ann", Some(&[("r1", Access::Read)]));
    let refusals: &[(&str, &str, &str, StatusCode, &str)] = &[
        (
            "r1",
            &bob,
            r#"{"name":"mine"}"#,
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            "r1",
            &reader,
            r#"{"name":"mine"}"#,
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            "nowhere",
            &ann,
            r#"{"name":"x"}"#,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        ("r1", &ann, r#"{}"#, StatusCode::BAD_REQUEST, "bad_request"),
        (
            "r1",
            &ann,
            r#"{"name":""}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "r1",
            &ann,
            r#"{"name":7}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "r1",
            &ann,
            r#"{"title":"x"}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "r1",
            &ann,
            r#"["name"]"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "r1",
            &ann,
            "not json",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "r1",
            &ann,
            r#"{"members":{"add":[""]}}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "r1",
            &ann,
            r#"{"members":{"remove":["ann"]}}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "r1",
            &ann,
            r#"{"members":["cat"]}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "open",
            &ann,
            r#"{"members":{"add":["cat"]}}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "bad%20id",
            &ann,
            r#"{"name":"x"}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
    ];
    for (room, token, body, status, code) in refusals {
        let answer = patch(&h, room, token, body).await;
        assert_eq!(answer.status, *status, "{room} {body}: {}", answer.text);
        answer.assert_error(*status, code);
    }
    assert!(
        h.owner.requests.lock().expect("lock").is_empty(),
        "nothing refused reaches the owner"
    );

    let answer = patch(
        &h,
        "r1",
        &ann,
        r#"{"name":"Team","members":{"add":["cat","dan"],"remove":["bob"]}}"#,
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_eq!(
        answer.body,
        json!({"id":"r1","kind":"channel","name":"Team","epoch":created["epoch"],
               "created_by":"ann","members":["ann","cat","dan"]})
    );
    let record = h
        .store
        .room(&RoomId::parse("r1").expect("id"))
        .await
        .expect("read")
        .expect("room");
    assert_eq!(record.name, "Team");
    assert!(!record.admits(&UserId::parse("bob").expect("id")));
    // Bob no longer lists it; cat does.
    assert!(ids(&h.get("/v1/rooms?member=me", &bob).await.body).is_empty());
    assert_eq!(
        ids(&h.get("/v1/rooms?member=me", &h.token("cat")).await.body),
        ["r1"]
    );
    // An admin may change any room; a public room may be renamed.
    let admin = admin_token(&h);
    let answer = patch(&h, "open", &admin, r#"{"name":"Lobby"}"#).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_eq!(answer.body["members"], Value::Null);
    assert_eq!(answer.body["name"], "Lobby");
}

/// A room has at most `max_members_per_room` members after a change too.
#[tokio::test]
async fn a_change_past_the_member_limit_is_refused() {
    let config = GatewayConfig {
        max_members_per_room: 3,
        ..GatewayConfig::default()
    };
    let h = Harness::with(config, false);
    let ann = h.token("ann");
    h.create(
        &ann,
        json!({"kind":"channel","id":"r1","members":["bob","cat"]}),
    )
    .await;
    patch(&h, "r1", &ann, r#"{"members":{"add":["dan"]}}"#)
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    // Swapping one member for another keeps it at three.
    let answer = patch(
        &h,
        "r1",
        &ann,
        r#"{"members":{"add":["dan"],"remove":["cat"]}}"#,
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
}

/// A kick goes to the room's owner as an `Update` removing the user; only
/// the creator or an admin may, only in a private room, never the creator.
#[tokio::test]
async fn users_are_kicked_by_the_creator_or_an_admin() {
    let h = Harness::new();
    let (ann, bob) = (h.token("ann"), h.token("bob"));
    let created = h
        .create(
            &ann,
            json!({"kind":"channel","id":"r1","members":["bob","cat"]}),
        )
        .await;
    h.create(&ann, json!({"kind":"board","id":"open"})).await;
    let kick = |room: &'static str, token: String, body: &'static str| {
        let h = &h;
        async move {
            h.request(
                "POST",
                &format!("/v1/rooms/{room}/kick"),
                Some(&token),
                body,
            )
            .await
        }
    };
    kick("r1", bob.clone(), r#"{"user":"cat"}"#)
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    kick("nowhere", ann.clone(), r#"{"user":"cat"}"#)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    for body in [
        r#"{}"#,
        r#"{"user":""}"#,
        r#"{"user":"ann"}"#,
        r#"{"user":"cat","x":1}"#,
        "[]",
    ] {
        kick("r1", ann.clone(), body)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    }
    kick("open", ann.clone(), r#"{"user":"cat"}"#)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    assert!(h.owner.requests.lock().expect("lock").is_empty());

    let answer = kick("r1", ann.clone(), r#"{"user":"bob"}"#).await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT, "{}", answer.text);
    let epoch = created["epoch"].as_str().expect("epoch");
    assert_eq!(
        *h.owner.requests.lock().expect("lock"),
        [RoomRequest::Update {
            room: RoomId::parse("r1").expect("id"),
            epoch: Some(collab_protocol::Epoch::parse(epoch).expect("epoch")),
            name: None,
            add: Vec::new(),
            remove: vec![UserId::parse("bob").expect("id")],
        }]
    );
    let answer = kick("r1", admin_token(&h), r#"{"user":"cat"}"#).await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT, "{}", answer.text);
    let record = h
        .store
        .room(&RoomId::parse("r1").expect("id"))
        .await
        .expect("read")
        .expect("room");
    assert_eq!(
        record.members,
        Some(vec![UserId::parse("ann").expect("id")])
    );
}

// === the OpenAPI document ===

/// A path of the document with each `{param}` filled in, as a request
/// would have it.
fn concrete(path: &str) -> String {
    path.replace("{id}", "r1").replace("{path}", "app.js")
}

/// `docs/openapi.json`, served at `/v1/openapi.json`, describes exactly
/// the routes the router serves: the same paths (read off
/// [`super::Routes`], which every route is added through), and on each
/// the same methods (each documented one is served — no 404 of the
/// fallback, no 405 — and each other one is 405).
#[tokio::test]
async fn the_openapi_document_describes_every_route_and_only_those() {
    let h = Harness::new();
    let served = h.get("/v1/openapi.json", "").await;
    assert_eq!(served.status, StatusCode::OK);
    assert_eq!(served.text, super::OPENAPI, "served as kept");
    let doc: Value = serde_json::from_str(super::OPENAPI).expect("the document is JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];
    let documented: std::collections::BTreeMap<String, Vec<&str>> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .map(|(path, item)| {
            let methods = METHODS
                .into_iter()
                .filter(|m| item.get(*m).is_some())
                .collect();
            (path.clone(), methods)
        })
        .collect();
    let routes: std::collections::BTreeSet<String> = super::routes(&h.gateway.state)
        .paths()
        .iter()
        // axum's catch-all `{*path}` is OpenAPI's `{path}`.
        .map(|path| path.replace("{*", "{"))
        .collect();
    let paths: std::collections::BTreeSet<String> = documented.keys().cloned().collect();
    assert_eq!(routes, paths, "the router's paths and the document's");
    for (path, methods) in &documented {
        assert!(!methods.is_empty(), "{path} has no operation");
        for method in METHODS {
            let answer = h
                .request(&method.to_uppercase(), &concrete(path), None, "")
                .await;
            let unknown_path = answer.status == StatusCode::NOT_FOUND
                && answer.body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("no such path"));
            if methods.contains(&method) {
                assert!(
                    answer.status != StatusCode::METHOD_NOT_ALLOWED && !unknown_path,
                    "{method} {path} is documented but not served: {} {}",
                    answer.status,
                    answer.text
                );
            } else {
                assert_eq!(
                    answer.status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is served but not documented: {}",
                    answer.text
                );
            }
        }
    }
}

/// Found by schemathesis against `docs/openapi.json`: the WebSocket
/// endpoint answered a request that is no upgrade in axum's plain text,
/// and the web app a missing file in plain text. Every error is the protocol's JSON now.
#[tokio::test]
async fn the_websocket_endpoint_and_the_web_app_answer_errors_in_json() {
    let h = Harness::new();
    let ann = h.token("ann");
    h.get("/v1/ws", &ann)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    let answer = h.request("GET", "/app/no-such-file.js", None, "").await;
    answer.assert_error(StatusCode::NOT_FOUND, "not_found");
}
