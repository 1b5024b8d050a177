//! The snapshot route through the router, against the in-memory store and a
//! stand-in for the room's owner, and the packed encoding on its own.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use collab_bus::{Bus, InProcessBus, ReplyFuture, RequestHandler};
use collab_ephemeral::{Ephemeral, EphemeralMetrics};
use collab_metrics::{Exporter, Role};
use collab_protocol::envelope::{RoomReply, RoomRequest};
use collab_protocol::frames::{RoomView, StrokeView};
use collab_protocol::{
    Access, Cid, Claims, Epoch, JoinedBody, Op, OpEvent, RoomId, RoomKind, Seq, StrokeId, UserId,
    UserInfo,
};
use collab_store::{MemoryStore, RoomRecord, Store};
use prometheus_client::registry::Registry;
use serde_json::Value;
use tower::ServiceExt;

use super::{PACKED_CONTENT_TYPE, Snapshot, pack, unpack};
use crate::auth::test_claims;
use crate::{Auth, Gateway, GatewayConfig, GatewayMetrics, GatewayParts, Readiness};

const SECRET: &[u8] = b"test-secret";
const HEAD: u64 = 41;

struct Ready;

#[async_trait]
impl Readiness for Ready {
    async fn ready(&self) -> bool {
        true
    }
}

/// Answers `Snapshot` as a room does, with [`view`] at [`HEAD`], and
/// remembers what it was asked.
struct Owner {
    store: Arc<dyn Store>,
    asked: std::sync::Mutex<Vec<RoomRequest>>,
}

impl RequestHandler for Owner {
    fn handle(&self, request: RoomRequest) -> ReplyFuture<RoomReply> {
        self.asked.lock().expect("lock").push(request.clone());
        let store = self.store.clone();
        Box::pin(async move {
            let RoomRequest::Snapshot { room, .. } = request else {
                return RoomReply::Done;
            };
            let record = store.room(&room).await.expect("room").expect("exists");
            RoomReply::Joined(JoinedBody {
                room,
                kind: record.kind,
                epoch: record.epoch,
                head: Seq(HEAD),
                presence: vec![UserInfo {
                    id: user("bob"),
                    name: "bob".into(),
                    color: "#2f7fb5".into(),
                }],
                reset: true,
                state: Some(view()),
                ops: None,
            })
        })
    }
}

struct Harness {
    app: Router,
    auth: Auth,
    store: Arc<dyn Store>,
    owner: Arc<Owner>,
}

impl Harness {
    async fn new() -> Harness {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let auth = Auth::new(SECRET, false);
        let mut registry = Registry::default();
        let metrics = GatewayMetrics::register(&mut registry);
        let bus = Arc::new(InProcessBus::new());
        let owner = Arc::new(Owner {
            store: store.clone(),
            asked: Default::default(),
        });
        bus.serve(owner.clone()).await.expect("serves");
        let config = GatewayConfig::default();
        let gateway = Gateway::new(
            config.clone(),
            GatewayParts {
                auth: auth.clone(),
                bus,
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
            auth,
            store,
            owner,
        }
    }

    async fn room(&self, id: &str, members: Option<&[&str]>) {
        let record = RoomRecord {
            id: room(id),
            kind: RoomKind::Board,
            name: id.into(),
            epoch: Epoch::parse("e1").expect("epoch"),
            created_by: user("ann"),
            members: members.map(|m| m.iter().map(|u| user(u)).collect()),
            created_at: 0,
            ttl_secs: None,
            floor: Seq::ZERO,
        };
        self.store.create_room(&record).await.expect("created");
    }

    fn token(&self, sub: &str, rooms: Option<&[(&str, Access)]>) -> String {
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

    /// `GET uri` with these headers: the status, the headers and the body.
    async fn get(
        &self,
        uri: &str,
        headers: &[(header::HeaderName, &str)],
    ) -> (StatusCode, header::HeaderMap, Vec<u8>) {
        let mut request = Request::builder().uri(uri);
        for (name, value) in headers {
            request = request.header(name, *value);
        }
        let response = self
            .app
            .clone()
            .oneshot(request.body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        (status, headers, body.to_vec())
    }

    async fn get_as(&self, uri: &str, token: &str) -> (StatusCode, header::HeaderMap, Vec<u8>) {
        let bearer = format!("Bearer {token}");
        self.get(uri, &[(header::AUTHORIZATION, &bearer)]).await
    }
}

fn room(id: &str) -> RoomId {
    RoomId::parse(id).expect("room id")
}

fn user(id: &str) -> UserId {
    UserId::parse(id).expect("user id")
}

/// A state with what a packed snapshot must keep exactly: coordinates of
/// two decimals and others (a third of a unit, huge, negative zero), an
/// open stroke, a stroke without points, and messages.
fn view() -> RoomView {
    let stroke = |id: &str, points: Vec<[f64; 2]>, done: bool| StrokeView {
        id: StrokeId::parse(id).expect("stroke id"),
        // Two users and two colours, in another order than first seen.
        user: user(if id == "s2" { "bob" } else { "ann" }),
        color: if id == "s3" { "#2f7fb5" } else { "#d1242f" }.into(),
        width: 2.5,
        points,
        done,
    };
    let message = |seq: u64, text: &str| OpEvent {
        room: room("r1"),
        seq: Seq(seq),
        user: user("bob"),
        ts: 1_700_000_000_000,
        cid: Some(Cid::parse(format!("c{seq}")).expect("cid")),
        op: Op::Message { text: text.into() },
    };
    RoomView {
        strokes: vec![
            stroke(
                "s1",
                vec![[0.0, 0.0], [10.25, -3.5], [10.26, -3.49], [523.47, 311.08]],
                true,
            ),
            stroke(
                "s2",
                vec![
                    [1.0 / 3.0, -0.0],
                    [1e300, -1e-7],
                    [0.1 + 0.2, 2.0e13],
                    [-12_345.67, 99_999.99],
                ],
                false,
            ),
            stroke("s3", Vec::new(), true),
        ],
        messages: vec![message(7, "hello"), message(40, "é ✓")],
    }
}

fn same_bits(a: &RoomView, b: &RoomView) -> bool {
    a.strokes.len() == b.strokes.len()
        && a.strokes.iter().zip(&b.strokes).all(|(a, b)| {
            a.points.len() == b.points.len()
                && a.points.iter().zip(&b.points).all(|(p, q)| {
                    p[0].to_bits() == q[0].to_bits() && p[1].to_bits() == q[1].to_bits()
                })
        })
}

#[test]
fn packing_keeps_every_coordinate_bit_for_bit() {
    let snapshot = Snapshot {
        room: room("r1"),
        kind: RoomKind::Board,
        epoch: Epoch::parse("e1").expect("epoch"),
        head: Seq(HEAD),
        state: view(),
    };
    let packed = pack(&snapshot).expect("packs");
    let back = unpack(&packed).expect("unpacks");
    assert_eq!(back.state, snapshot.state);
    assert!(
        same_bits(&back.state, &snapshot.state),
        "-0.0 and the like kept"
    );
    assert_eq!(
        (back.room, back.kind, back.epoch, back.head),
        (snapshot.room, snapshot.kind, snapshot.epoch, snapshot.head)
    );
    // A truncated snapshot is refused, not read short.
    assert!(unpack(&packed[..packed.len() - 1]).is_err());
}

#[test]
fn two_decimal_coordinates_near_each_other_take_a_byte_or_two() {
    let points: Vec<[f64; 2]> = (0..1000)
        .map(|i| {
            let i = f64::from(i);
            [
                ((500.0 + i * 1.37) * 100.0).round() / 100.0,
                ((300.0 - i * 0.91) * 100.0).round() / 100.0,
            ]
        })
        .collect();
    let json_len = serde_json::to_vec(&points).expect("json").len();
    let mut packed = Vec::new();
    let (mut x, mut y) = (0, 0);
    for p in &points {
        super::put_coordinate(&mut packed, p[0], &mut x);
        super::put_coordinate(&mut packed, p[1], &mut y);
    }
    assert!(
        packed.len() * 4 < json_len,
        "{} packed bytes against {json_len} of JSON",
        packed.len()
    );
}

#[tokio::test]
async fn serves_the_rooms_state_as_json_and_packed() {
    let h = Harness::new().await;
    h.room("r1", None).await;
    let token = h.token("ann", None);

    let (status, headers, body) = h.get_as("/v1/rooms/r1/snapshot", &token).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    let json: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(json["room"], "r1");
    assert_eq!(json["kind"], "board");
    assert_eq!(json["epoch"], "e1");
    assert_eq!(json["head"], HEAD);
    // Exactly the `state` of a `joined`: the same serialization.
    assert_eq!(
        json["state"],
        serde_json::to_value(view()).expect("view as json")
    );
    assert_eq!(json["state"]["messages"][0]["type"], "op");
    assert!(json.get("presence").is_none(), "{json}");

    let (status, headers, body) = h
        .get_as("/v1/rooms/r1/snapshot?format=packed", &token)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], PACKED_CONTENT_TYPE);
    let snapshot = unpack(&body).expect("unpacks");
    assert_eq!(snapshot.state, view());
    assert_eq!(snapshot.head, Seq(HEAD));

    // The room was asked for its state, as ann, and joined by nobody.
    let asked = h.owner.asked.lock().expect("lock").clone();
    assert_eq!(
        asked,
        vec![
            RoomRequest::Snapshot {
                room: room("r1"),
                user: user("ann"),
            };
            2
        ]
    );
}

#[tokio::test]
async fn compression_follows_accept_encoding() {
    let h = Harness::new().await;
    h.room("r1", None).await;
    let bearer = format!("Bearer {}", h.token("ann", None));
    let auth = (header::AUTHORIZATION, bearer.as_str());
    let (_, headers, plain) = h
        .get("/v1/rooms/r1/snapshot", std::slice::from_ref(&auth))
        .await;
    assert!(headers.get(header::CONTENT_ENCODING).is_none());
    for encoding in ["gzip", "br", "zstd"] {
        let (status, headers, body) = h
            .get(
                "/v1/rooms/r1/snapshot",
                &[auth.clone(), (header::ACCEPT_ENCODING, encoding)],
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_ENCODING], encoding);
        assert_ne!(body, plain, "{encoding}");
    }
    // The client's preference, by q-value, decides.
    let (_, headers, _) = h
        .get(
            "/v1/rooms/r1/snapshot?format=packed",
            &[
                auth.clone(),
                (header::ACCEPT_ENCODING, "gzip;q=0.5, br;q=0.9"),
            ],
        )
        .await;
    assert_eq!(headers[header::CONTENT_ENCODING], "br");
    // Other routes are not compressed (their answers are small).
    let (_, headers, _) = h
        .get(
            "/v1/rooms/r1",
            &[auth.clone(), (header::ACCEPT_ENCODING, "gzip")],
        )
        .await;
    assert!(headers.get(header::CONTENT_ENCODING).is_none());
}

#[tokio::test]
async fn checks_run_in_the_protocols_order_and_ask_the_room_nothing() {
    let h = Harness::new().await;
    h.room("r1", None).await;
    h.room("secret", Some(&["ann"])).await;
    let ann = h.token("ann", None);
    let bob = h.token("bob", None);
    let only_r2 = h.token("ann", Some(&[("r2", Access::Read)]));
    let code = |body: &[u8]| -> String {
        let json: Value = serde_json::from_slice(body).expect("a JSON error");
        json["error"]["code"].as_str().expect("code").to_owned()
    };

    let (status, _, body) = h.get("/v1/rooms/r1/snapshot", &[]).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let (status, _, body) = h.get_as("/v1/rooms/r1/snapshot", "not-a-token").await;
    assert_eq!(
        (status, code(&body).as_str()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let (status, _, body) = h.get_as("/v1/rooms/bad%20id/snapshot", &ann).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
    let (status, _, body) = h.get_as("/v1/rooms/r1/snapshot?format=xml", &ann).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
    // The claim before existence: a token learns nothing of rooms it does
    // not cover.
    let (status, _, body) = h.get_as("/v1/rooms/nosuch/snapshot", &only_r2).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    let (status, _, body) = h.get_as("/v1/rooms/nosuch/snapshot", &ann).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let (status, _, body) = h.get_as("/v1/rooms/secret/snapshot", &bob).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    assert!(
        h.owner.asked.lock().expect("lock").is_empty(),
        "no refused request reaches the room"
    );

    let (status, _, _) = h.get_as("/v1/rooms/secret/snapshot", &ann).await;
    assert_eq!(status, StatusCode::OK, "a member of a private room may");
}
