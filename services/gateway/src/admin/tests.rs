//! The admin endpoints driven through the router, against the in-memory
//! store and an in-process bus whose room node is scripted: the tests say
//! what the owner answers and check what the gateway makes of it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use collab_bus::{
    Bus, BusError, InProcessBus, Load, Members, ReplyFuture, RequestHandler, Subscription,
};
use collab_metrics::{Exporter, Role};
use collab_protocol::envelope::{RoomEvent, RoomInspection, RoomReply, RoomRequest};
use collab_protocol::http::{LastCommit, RoomMember};
use collab_protocol::subjects::{MemberRecord, WIRE_VERSION};
use collab_protocol::{
    Access, Cid, Claims, ConnId, Epoch, ErrorCode, NodeId, Op, OpEvent, RoomId, RoomKind, Seq,
    UserId,
};
use collab_store::{MemoryStore, RoomCatalog, RoomRecord, Store, StoreReader, Writer};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::sync::watch;
use tower::ServiceExt;

use collab_ephemeral::{Ephemeral, EphemeralMetrics};

use crate::auth::test_claims;
use crate::{Auth, Gateway, GatewayConfig, GatewayMetrics, GatewayParts, Readiness, now_secs};

const SECRET: &[u8] = b"admin-test-secret";

struct Ready;

#[async_trait]
impl Readiness for Ready {
    async fn ready(&self) -> bool {
        true
    }
}

/// A room node that answers every request with what the test set, and
/// remembers what it was asked.
#[derive(Default)]
struct ScriptedOwner {
    answer: Mutex<Option<RoomReply>>,
    asked: Mutex<Vec<RoomRequest>>,
}

impl ScriptedOwner {
    fn answers(&self, reply: RoomReply) {
        *self.answer.lock().expect("lock") = Some(reply);
    }

    fn asked(&self) -> Vec<RoomRequest> {
        self.asked.lock().expect("lock").clone()
    }
}

impl RequestHandler for ScriptedOwner {
    fn handle(&self, request: RoomRequest) -> ReplyFuture<RoomReply> {
        self.asked.lock().expect("lock").push(request);
        let reply = self
            .answer
            .lock()
            .expect("lock")
            .clone()
            .unwrap_or(RoomReply::Done);
        Box::pin(async move { reply })
    }
}

/// The in-process bus with a member list, as a cluster gateway sees one.
struct ClusterBus {
    inner: InProcessBus,
    members: watch::Receiver<Members>,
}

#[async_trait]
impl Bus for ClusterBus {
    fn request(
        &self,
        request: RoomRequest,
        timeout: Duration,
    ) -> ReplyFuture<Result<RoomReply, BusError>> {
        self.inner.request(request, timeout)
    }
    fn publish(&self, event: RoomEvent) {
        self.inner.publish(event);
    }
    async fn subscribe(&self, room: &RoomId) -> Result<Subscription, BusError> {
        self.inner.subscribe(room).await
    }
    async fn serve(&self, handler: Arc<dyn RequestHandler>) -> Result<(), BusError> {
        self.inner.serve(handler).await
    }
    fn is_ready(&self) -> bool {
        true
    }
    fn members(&self) -> Option<watch::Receiver<Members>> {
        Some(self.members.clone())
    }
    fn load(&self) -> Option<&Load> {
        self.inner.load()
    }
}

struct Harness {
    app: Router,
    store: Arc<MemoryStore>,
    auth: Auth,
    owner: Arc<ScriptedOwner>,
    bus: Arc<dyn Bus>,
}

struct Answer {
    status: StatusCode,
    body: Value,
}

impl Answer {
    #[track_caller]
    fn assert_error(&self, status: StatusCode, code: &str) {
        assert_eq!(self.status, status, "body: {}", self.body);
        assert_eq!(self.body["error"]["code"], code, "body: {}", self.body);
        assert!(self.body["error"]["message"].is_string(), "{}", self.body);
    }
}

impl Harness {
    /// A `collab serve` gateway whose room node is scripted.
    async fn serve() -> Harness {
        Harness::with_bus(Arc::new(InProcessBus::new()), false, true).await
    }

    async fn with_bus(bus: Arc<dyn Bus>, dev_mode: bool, room_node: bool) -> Harness {
        let store = Arc::new(MemoryStore::new());
        let auth = Auth::new(SECRET, dev_mode);
        let owner = Arc::new(ScriptedOwner::default());
        if room_node {
            bus.serve(owner.clone()).await.expect("serves");
        }
        let mut registry = Registry::default();
        let metrics = GatewayMetrics::register(&mut registry);
        let config = GatewayConfig::default();
        let gateway = Gateway::new(
            config.clone(),
            GatewayParts {
                auth: auth.clone(),
                bus: bus.clone(),
                store: store.clone(),
                readiness: Arc::new(Ready),
                metrics,
                exporter: Exporter::new(registry, Role::Gateway, "test"),
                ephemeral: Ephemeral::in_memory(
                    &config.ephemeral_options(),
                    EphemeralMetrics::default(),
                ),
                room_expiry: None,
            },
        );
        Harness {
            app: gateway.router(),
            store,
            auth,
            owner,
            bus,
        }
    }

    fn token(&self, scope: Option<&str>, rooms: Option<&[(&str, Access)]>) -> String {
        self.auth
            .mint(&Claims {
                rooms: rooms.map(|r| r.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()),
                scope: scope.map(str::to_owned),
                ..test_claims("operator")
            })
            .expect("mints")
    }

    fn admin(&self) -> String {
        self.token(Some("admin"), None)
    }

    async fn request(&self, method: &str, uri: &str, token: Option<&str>, body: &str) -> Answer {
        let mut builder = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = builder
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_owned()))
            .expect("request builds");
        let response = self
            .app
            .clone()
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body reads");
        Answer {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    async fn get(&self, uri: &str, token: Option<&str>) -> Answer {
        self.request("GET", uri, token, "").await
    }

    async fn create(&self, id: &str) {
        self.store
            .create_room(&RoomRecord {
                id: room(id),
                kind: RoomKind::Board,
                name: format!("Room {id}"),
                epoch: Epoch::parse("e1").expect("epoch"),
                created_by: UserId::parse("ann").expect("user"),
                members: None,
                created_at: 0,
                ttl_secs: None,
                floor: collab_protocol::Seq::ZERO,
            })
            .await
            .expect("created");
    }

    /// Appends message ops with timestamps 1000, 2000, …
    async fn append(&self, id: &str, n: u64) {
        let writer = Writer {
            node: NodeId::parse("local").expect("node"),
            term: 1,
        };
        for _ in 0..n {
            let seq = self.store.head(&room(id)).await.expect("head").next();
            let event = OpEvent {
                room: room(id),
                seq,
                user: UserId::parse("ann").expect("user"),
                ts: 1000 * i64::try_from(seq.get()).expect("small"),
                cid: Some(Cid::parse(format!("c{}", seq.get())).expect("cid")),
                op: Op::Message { text: "hi".into() },
            };
            self.store
                .append(&room(id), seq, &[event], &writer)
                .await
                .expect("append");
        }
    }
}

fn room(id: &str) -> RoomId {
    RoomId::parse(id).expect("room id")
}

fn node(id: &str) -> NodeId {
    NodeId::parse(id).expect("node id")
}

#[tokio::test]
async fn the_admin_endpoints_refuse_in_the_protocols_order() {
    let h = Harness::serve().await;
    h.create("r1").await;
    h.owner
        .answers(RoomReply::Inspected(RoomInspection::not_live(Some(node(
            "local",
        )))));
    let endpoints = ["/v1/admin/rooms/r1", "/v1/admin/cluster"];

    // 401: no token, a bad one, one signed with another secret.
    let foreign = Auth::new(b"another-secret", false)
        .mint(&Claims {
            scope: Some("admin".into()),
            ..test_claims("operator")
        })
        .expect("mints");
    for uri in endpoints {
        for token in [None, Some("not-a-jwt"), Some(foreign.as_str())] {
            h.get(uri, token)
                .await
                .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
        }
    }

    // 403 without the admin scope, whatever else the request says: a bad
    // room id and an unknown room are not revealed.
    for scope in [None, Some("service"), Some("administrator"), Some("Admin")] {
        let token = h.token(scope, None);
        for uri in endpoints
            .into_iter()
            .chain(["/v1/admin/rooms/not.valid", "/v1/admin/rooms/nope"])
        {
            h.get(uri, Some(&token))
                .await
                .assert_error(StatusCode::FORBIDDEN, "forbidden");
        }
    }

    // With it: 400 for a bad room id, 404 for an unknown room; the owner is
    // not asked about either.
    let admin = h.admin();
    let bad = "x".repeat(65);
    for uri in [
        "/v1/admin/rooms/not.valid".to_owned(),
        format!("/v1/admin/rooms/{bad}"),
    ] {
        h.get(&uri, Some(&admin))
            .await
            .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    }
    h.get("/v1/admin/rooms/nope", Some(&admin))
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    assert!(h.owner.asked().is_empty(), "{:?}", h.owner.asked());

    // The admin scope among others, and whatever rooms the token covers.
    let scoped = h.token(Some("service admin"), Some(&[("elsewhere", Access::Read)]));
    for uri in endpoints {
        let answer = h.get(uri, Some(&scoped)).await;
        assert_eq!(answer.status, StatusCode::OK, "{uri}: {}", answer.body);
    }
    assert_eq!(h.owner.asked(), [RoomRequest::Inspect { room: room("r1") }]);
    // Only GET.
    let posted = h
        .request("POST", "/v1/admin/cluster", Some(&admin), "{}")
        .await;
    assert_eq!(posted.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(posted.body["error"]["code"], "bad_request");
}

#[tokio::test]
async fn a_live_room_is_described_by_its_owner() {
    let h = Harness::serve().await;
    h.create("r1").await;
    h.append("r1", 5).await;
    let member = |user: &str, conn: &str, gateway: &str| RoomMember {
        user: UserId::parse(user).expect("user"),
        name: user.to_uppercase(),
        conn: ConnId::parse(conn).expect("conn"),
        gateway: gateway.into(),
    };
    h.owner.answers(RoomReply::Inspected(RoomInspection {
        node: Some(node("r2")),
        live: true,
        term: Some(1_700_000_000_000),
        head: Some(Seq(5)),
        members: vec![member("ann", "g1-1", "g1-a"), member("bob", "g2-9", "g2-b")],
        mailbox_depth: 3,
        last_commit: Some(LastCommit {
            seq: Seq(5),
            at: 5_123,
        }),
    }));
    let answer = h.get("/v1/admin/rooms/r1", Some(&h.admin())).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(
        answer.body,
        json!({
            "id": "r1", "kind": "board", "name": "Room r1", "epoch": "e1", "head": 5,
            "live": true,
            "owner": {"node": "r2", "term": 1_700_000_000_000u64},
            "members": [
                {"user": "ann", "name": "ANN", "conn": "g1-1", "gateway": "g1-a"},
                {"user": "bob", "name": "BOB", "conn": "g2-9", "gateway": "g2-b"}
            ],
            "mailbox_depth": 3,
            "last_commit": {"seq": 5, "at": 5_123}
        })
    );
}

#[tokio::test]
async fn a_room_that_is_not_live_gets_its_head_and_newest_op_from_the_store() {
    let h = Harness::serve().await;
    h.create("r1").await;
    h.create("empty").await;
    h.append("r1", 2).await;
    h.owner
        .answers(RoomReply::Inspected(RoomInspection::not_live(Some(node(
            "local",
        )))));
    let answer = h.get("/v1/admin/rooms/r1", Some(&h.admin())).await;
    assert_eq!(
        answer.body,
        json!({
            "id": "r1", "kind": "board", "name": "Room r1", "epoch": "e1", "head": 2,
            "live": false,
            "owner": {"node": "local", "term": null},
            "members": [],
            "mailbox_depth": 0,
            "last_commit": {"seq": 2, "at": 2000}
        })
    );
    let empty = h.get("/v1/admin/rooms/empty", Some(&h.admin())).await;
    assert_eq!(empty.status, StatusCode::OK, "{}", empty.body);
    assert_eq!(
        (&empty.body["head"], &empty.body["last_commit"]),
        (&json!(0), &Value::Null)
    );

    // A node that does not own the room (it is moving) names no owner.
    h.owner
        .answers(RoomReply::Inspected(RoomInspection::not_live(None)));
    let moving = h.get("/v1/admin/rooms/r1", Some(&h.admin())).await;
    assert_eq!(moving.body["owner"], Value::Null);
    assert_eq!(moving.body["head"], 2);
}

#[tokio::test]
async fn without_a_room_node_a_room_has_no_owner() {
    let h = Harness::with_bus(Arc::new(InProcessBus::new()), false, false).await;
    h.create("r1").await;
    h.append("r1", 1).await;
    let answer = h.get("/v1/admin/rooms/r1", Some(&h.admin())).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["live"], false);
    assert_eq!(answer.body["owner"], Value::Null);
    assert_eq!(answer.body["last_commit"], json!({"seq": 1, "at": 1000}));
}

#[tokio::test]
async fn an_owner_that_cannot_say_is_unavailable_and_a_vanished_room_not_found() {
    let h = Harness::serve().await;
    h.create("r1").await;
    let admin = h.admin();
    // An older room node does not know the request.
    h.owner.answers(RoomReply::Error {
        code: ErrorCode::BadRequest,
        message: "bad bus payload: unknown variant `inspect`".into(),
    });
    h.get("/v1/admin/rooms/r1", Some(&admin))
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    h.owner.answers(RoomReply::Error {
        code: ErrorCode::Unavailable,
        message: "the room is loading; retry".into(),
    });
    h.get("/v1/admin/rooms/r1", Some(&admin))
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    h.owner.answers(RoomReply::Error {
        code: ErrorCode::NotFound,
        message: "no room r1".into(),
    });
    h.get("/v1/admin/rooms/r1", Some(&admin))
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn collab_serve_shows_its_one_node_with_what_it_holds() {
    let h = Harness::serve().await;
    h.bus
        .load()
        .expect("the in-process bus counts load")
        .count_rooms("local", || 3);
    let answer = h.get("/v1/admin/cluster", Some(&h.admin())).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(
        answer.body,
        json!({
            "mode": "serve",
            "members": [
                {"node": "local", "role": "gateway", "instance": "local", "rooms": null, "connections": 0},
                {"node": "local", "role": "room_node", "instance": "local", "rooms": 3, "connections": null}
            ]
        })
    );
}

#[tokio::test]
async fn a_cluster_gateway_lists_every_member_and_role_with_its_last_figures() {
    let record = |room_node, gateway, instance: &str, rooms, connections| MemberRecord {
        room_node,
        gateway,
        ttl_ms: 3000,
        wire: WIRE_VERSION,
        instance: instance.into(),
        rooms,
        connections,
    };
    let (members, members_rx) = watch::channel(Members::from_records([
        (node("g1"), record(false, true, "g1-a", None, Some(4))),
        (node("r1"), record(true, false, "r1-b", Some(2), None)),
        // A member of a version that reports no figures.
        (node("r2"), record(true, false, "", None, None)),
        (node("both"), record(true, true, "both-c", Some(1), Some(7))),
    ]));
    let bus = Arc::new(ClusterBus {
        inner: InProcessBus::new(),
        members: members_rx,
    });
    let h = Harness::with_bus(bus, false, true).await;
    let answer = h.get("/v1/admin/cluster", Some(&h.admin())).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(
        answer.body,
        json!({
            "mode": "cluster",
            "members": [
                {"node": "both", "role": "gateway", "instance": "both-c", "rooms": null, "connections": 7},
                {"node": "both", "role": "room_node", "instance": "both-c", "rooms": 1, "connections": null},
                {"node": "g1", "role": "gateway", "instance": "g1-a", "rooms": null, "connections": 4},
                {"node": "r1", "role": "room_node", "instance": "r1-b", "rooms": 2, "connections": null},
                {"node": "r2", "role": "room_node", "instance": "r2", "rooms": null, "connections": null}
            ]
        })
    );
    // The view follows the members as they change.
    members.send_replace(Members::from_records([(
        node("r1"),
        record(true, false, "r1-b", Some(5), None),
    )]));
    let answer = h.get("/v1/admin/cluster", Some(&h.admin())).await;
    assert_eq!(answer.body["members"][0]["rooms"], 5);
    assert_eq!(answer.body["members"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn a_dev_token_can_ask_for_the_admin_scope() {
    let h = Harness::with_bus(Arc::new(InProcessBus::new()), true, true).await;
    let mint = |body: Value| {
        let h = &h;
        async move {
            h.request("POST", "/v1/dev/token", None, &body.to_string())
                .await
        }
    };
    let admin = mint(json!({"user": "op", "scope": "admin"})).await;
    assert_eq!(admin.status, StatusCode::OK, "{}", admin.body);
    let admin = admin.body["token"].as_str().expect("a token").to_owned();
    let claims = h.auth.verify(&admin).await.expect("verifies");
    assert!(claims.has_scope(collab_protocol::Scope::Admin));
    let answer = h.get("/v1/admin/cluster", Some(&admin)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);

    let plain = mint(json!({"user": "op"})).await;
    let plain = plain.body["token"].as_str().expect("a token").to_owned();
    assert_eq!(h.auth.verify(&plain).await.expect("verifies").scope, None);
    h.get("/v1/admin/cluster", Some(&plain))
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    let blank = mint(json!({"user": "op", "scope": "  "})).await;
    let blank = blank.body["token"].as_str().expect("a token").to_owned();
    assert_eq!(h.auth.verify(&blank).await.expect("verifies").scope, None);

    mint(json!({"user": "op", "scope": 5}))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
}

// === revocations and presence ===

impl Harness {
    /// A token of `sub` with an id and an issue time, as `collab token`
    /// mints them.
    fn token_of(&self, sub: &str, scope: Option<&str>, jti: &str, iat: u64) -> String {
        self.auth
            .mint(&Claims {
                scope: scope.map(str::to_owned),
                jti: Some(jti.into()),
                iat: Some(iat),
                ..test_claims(sub)
            })
            .expect("mints")
    }

    async fn revoke(&self, token: Option<&str>, body: &str) -> Answer {
        self.request("POST", "/v1/admin/revocations", token, body)
            .await
    }
}

#[tokio::test]
async fn a_revoked_token_is_refused_at_once_and_others_are_not() {
    let h = Harness::serve().await;
    h.create("r1").await;
    let now = now_secs();
    let ann_old = h.token_of("ann", None, "ann-1", now - 100);
    let ann_other = h.token_of("ann", None, "ann-2", now - 100);
    let bob = h.token_of("bob", None, "bob-1", now - 100);
    for token in [&ann_old, &ann_other, &bob] {
        assert_eq!(
            h.get("/v1/rooms/r1", Some(token)).await.status,
            StatusCode::OK
        );
    }

    // One token by its id: that one is refused from now on, no other.
    let answer = h.revoke(Some(&h.admin()), r#"{"jti":"ann-1"}"#).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["kind"], "token");
    assert_eq!(answer.body["jti"], "ann-1");
    let kept_until = answer.body["expires_at"].as_u64().expect("expires_at");
    let lifetime = GatewayConfig::default().max_token_lifetime_secs;
    assert!(
        (now + lifetime..=now_secs() + lifetime).contains(&kept_until),
        "{kept_until}"
    );
    let refused = h.get("/v1/rooms/r1", Some(&ann_old)).await;
    refused.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(
        refused.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("revoked")),
        "{}",
        refused.body
    );
    for token in [&ann_other, &bob] {
        assert_eq!(
            h.get("/v1/rooms/r1", Some(token)).await.status,
            StatusCode::OK
        );
    }

    // Every token of a user issued before a time: ann's older ones go, a
    // token issued after the cut-off and bob's stay.
    let cut_off = now - 50;
    let ann_new = h.token_of("ann", None, "ann-3", now - 10);
    let body = format!(r#"{{"user":"ann","issued_before":{cut_off}}}"#);
    let answer = h.revoke(Some(&h.admin()), &body).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(
        answer.body,
        json!({"kind": "user", "user": "ann", "issued_before": cut_off,
               "expires_at": cut_off + lifetime})
    );
    h.get("/v1/rooms/r1", Some(&ann_other))
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    for token in [&ann_new, &bob] {
        assert_eq!(
            h.get("/v1/rooms/r1", Some(token)).await.status,
            StatusCode::OK
        );
    }
    // Without `issued_before`, the cut-off is now.
    let answer = h.revoke(Some(&h.admin()), r#"{"user":"bob"}"#).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let before = answer.body["issued_before"]
        .as_u64()
        .expect("issued_before");
    assert!((now..=now_secs()).contains(&before), "{}", answer.body);
    h.get("/v1/rooms/r1", Some(&bob))
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn revocations_need_the_admin_scope_and_a_well_formed_body() {
    let h = Harness::serve().await;
    let admin = h.admin();
    h.revoke(None, r#"{"jti":"x"}"#)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    // Not an admin: 403 whatever the body says, and nothing is revoked.
    let ann = h.token_of("ann", None, "ann-1", now_secs());
    for body in [r#"{"jti":"ann-1"}"#, "not json"] {
        h.revoke(Some(&ann), body)
            .await
            .assert_error(StatusCode::FORBIDDEN, "forbidden");
    }
    h.create("r1").await;
    assert_eq!(
        h.get("/v1/rooms/r1", Some(&ann)).await.status,
        StatusCode::OK
    );

    let future = now_secs() + 3600;
    let long_jti = "j".repeat(257);
    for body in [
        "not json".to_owned(),
        "[]".to_owned(),
        "{}".to_owned(),
        r#"{"jti":""}"#.to_owned(),
        format!(r#"{{"jti":"{long_jti}"}}"#),
        r#"{"jti":"a","user":"ann"}"#.to_owned(),
        r#"{"jti":"a","issued_before":5}"#.to_owned(),
        r#"{"user":""}"#.to_owned(),
        r#"{"user":"ann","issued_before":"yesterday"}"#.to_owned(),
        format!(r#"{{"user":"ann","issued_before":{future}}}"#),
        r#"{"jti":7}"#.to_owned(),
    ] {
        h.revoke(Some(&admin), &body)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    }
    // None of those changed anything.
    assert_eq!(
        h.get("/v1/rooms/r1", Some(&ann)).await.status,
        StatusCode::OK
    );
    // The route takes POST only.
    assert_eq!(
        h.get("/v1/admin/revocations", Some(&admin)).await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

#[tokio::test]
async fn room_presence_is_one_entry_per_user_for_whoever_may_read_the_room() {
    let h = Harness::serve().await;
    h.create("r1").await;
    h.store
        .create_room(&RoomRecord {
            id: room("secret"),
            kind: RoomKind::Channel,
            name: "secret".into(),
            epoch: Epoch::parse("e1").expect("epoch"),
            created_by: UserId::parse("ann").expect("user"),
            members: Some(vec![UserId::parse("ann").expect("user")]),
            created_at: 0,
            ttl_secs: None,
            floor: Seq::ZERO,
        })
        .await
        .expect("created");
    let member = |user: &str, conn: &str| RoomMember {
        user: UserId::parse(user).expect("user"),
        name: user.to_uppercase(),
        conn: ConnId::parse(conn).expect("conn"),
        gateway: "g1".into(),
    };
    h.owner.answers(RoomReply::Inspected(RoomInspection {
        node: Some(node("local")),
        live: true,
        term: Some(1),
        head: Some(Seq(0)),
        members: vec![
            member("ann", "g1-1"),
            member("ann", "g1-2"),
            member("bob", "g1-3"),
        ],
        mailbox_depth: 0,
        last_commit: None,
    }));
    let now = now_secs();
    let bob = h.token_of("bob", None, "bob-1", now);
    let answer = h.get("/v1/rooms/r1/presence", Some(&bob)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(
        answer.body,
        json!({"room": "r1", "users": [
            {"id": "ann", "name": "ANN", "color": collab_protocol::color::user_color("ann"), "connections": 2},
            {"id": "bob", "name": "BOB", "color": collab_protocol::color::user_color("bob"), "connections": 1},
        ]})
    );
    assert!(
        h.owner
            .asked()
            .iter()
            .all(|r| matches!(r, RoomRequest::Inspect { .. })),
        "presence asks the owner with Inspect only, which never loads a room"
    );

    // The room's checks, in order: id, claim, existence, membership.
    h.get("/v1/rooms/bad%20id/presence", Some(&bob))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    h.get("/v1/rooms/nope/presence", Some(&bob))
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    h.get("/v1/rooms/secret/presence", Some(&bob))
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    let other_rooms_only = h.token(None, Some(&[("r2", Access::Read)]));
    h.get("/v1/rooms/r1/presence", Some(&other_rooms_only))
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    h.get("/v1/rooms/r1/presence", None)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");

    // A room that is not live has nobody in it.
    h.owner
        .answers(RoomReply::Inspected(RoomInspection::not_live(Some(node(
            "local",
        )))));
    let answer = h.get("/v1/rooms/r1/presence", Some(&bob)).await;
    assert_eq!(answer.body, json!({"room": "r1", "users": []}));
}

#[tokio::test]
async fn a_users_presence_is_for_the_user_and_admins() {
    let h = Harness::serve().await;
    let now = now_secs();
    let ann = h.token_of("ann", None, "ann-1", now);
    let bob = h.token_of("bob", None, "bob-1", now);
    let offline = json!({"user": "ann", "online": false, "connections": 0,
                         "gateways": [], "rooms": []});
    for token in [&ann, &h.admin()] {
        let answer = h.get("/v1/users/ann/presence", Some(token)).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(answer.body, offline);
    }
    h.get("/v1/users/ann/presence", Some(&bob))
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    h.get("/v1/users/ann/presence", None)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
}
