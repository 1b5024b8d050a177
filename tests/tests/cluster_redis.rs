//! What the processes of a cluster share through Redis, on real processes:
//! a private redis-server, nats-server and CQL keyspace per test, two
//! `collab gateway` and one or two `collab room-node` processes.
//!
//! - a user spread over both gateways gets one rate budget, not two;
//! - a revocation made through one gateway (or `collab token revoke`)
//!   closes the user's sockets on both with 4001 within a second, and the
//!   token is refused everywhere from then on, at the upgrade and on HTTP,
//!   while other users go on;
//! - a user's presence spans both gateways, and a SIGKILLed gateway's
//!   connections drop out of it within the presence TTL;
//! - a room with a time to live expires: the gateways and room nodes keep
//!   its deadline in the shared Redis;
//! - Redis SIGKILLed under load, then started again (empty): no acked op
//!   is lost, gateways stay ready and keep taking ops, limits fall back to
//!   each gateway's own buckets and a revocation made meanwhile is refused
//!   by the gateway that took it; once Redis is back, the shared limits
//!   and that revocation reach every gateway within seconds.
//!
//! Needs `COLLAB_REDIS_SERVER`, `COLLAB_NATS_SERVER` and `COLLAB_TEST_CQL`;
//! `scripts/test.sh` provides them.

// The checks of the cluster tests; this file uses a few of them.
#[allow(dead_code)]
#[path = "cluster_cases/mod.rs"]
mod cases;

use std::time::Duration;

use cases::{DEADLINE, acked_counts, verify_room, wait_acked_more};
use collab_tests::harness::cluster::{
    ClientOptions, Cluster, ClusterOptions, RunningClient, wait_for,
};
use collab_tests::harness::{WsClient, upgrade_refusal, upgrade_status};
use collab_tests::metrics::sample;
use serde_json::{Value, json};
use tokio::time::Instant;

/// How soon a revoked token's sockets must close (DESIGN.md, invariant 9).
const REVOCATION_DEADLINE: Duration = Duration::from_secs(1);
/// Presence TTL of the presence test's gateways: short, so the test is.
const PRESENCE_TTL_SECS: u64 = 3;
/// How soon after Redis answers again the shared state must work again.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(15);

async fn start(options: ClusterOptions) -> Cluster {
    Cluster::start(options.redis())
        .await
        .expect("the cluster starts (redis-server, nats-server, CQL keyspace, processes)")
}

/// The claims of `token`, unverified (the test only reads them).
fn claims(token: &str) -> Value {
    jsonwebtoken::dangerous::insecure_decode::<Value>(token)
        .expect("a JWT")
        .claims
}

/// Connects with `token` to the gateway `gateway` and joins `room`.
async fn join_with(cluster: &Cluster, token: &str, gateway: &str, room: &str) -> WsClient {
    let url = ws_url(cluster, gateway);
    let mut ws = WsClient::connect(&url, token)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {gateway}: {e}"));
    ws.recv_type("welcome", DEADLINE).await.expect("welcome");
    ws.send_json(&json!({"type": "join", "room": room}))
        .await
        .expect("join");
    ws.recv_type("joined", DEADLINE).await.expect("joined");
    ws
}

fn ws_url(cluster: &Cluster, gateway: &str) -> String {
    format!("ws://{}/v1/ws", cluster.addr(gateway))
}

fn message(room: &str, cid: &str) -> Value {
    json!({"type": "op", "room": room, "cid": cid, "op": {"kind": "message", "text": cid}})
}

/// Sends a chat message and waits for its ack.
async fn send_acked(ws: &mut WsClient, room: &str, cid: &str) {
    ws.send_json(&message(room, cid)).await.expect("sent");
    ws.recv_until(DEADLINE, |f| f["type"] == "ack" && f["cid"] == cid)
        .await
        .unwrap_or_else(|e| panic!("no ack for {cid}: {e}"));
}

async fn scrape(cluster: &Cluster, id: &str) -> String {
    let url = format!("{}/metrics", cluster.http_url(id));
    reqwest::get(&url)
        .await
        .and_then(reqwest::Response::error_for_status)
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .text()
        .await
        .expect("a page")
}

async fn is_ready(cluster: &Cluster, id: &str) -> bool {
    let url = format!("{}/readyz", cluster.http_url(id));
    matches!(reqwest::get(&url).await, Ok(r) if r.status().as_u16() == 200)
}

// === rate limits ===

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_user_on_two_gateways_gets_one_budget() {
    const RATE: f64 = 5.0;
    const BURST: usize = 20;
    // A tenth of the burst (docs/adr/0005): what each gateway may hold
    // beyond the shared bucket.
    const LEASE: usize = 2;
    const PER_SOCKET: usize = 40;
    let mut cluster = start(
        ClusterOptions::new()
            .gateways(2)
            .room_nodes(1)
            .env("COLLAB_GATEWAY__RATE_LIMITS__OPS_PER_SEC", RATE.to_string())
            .env("COLLAB_GATEWAY__RATE_LIMITS__OPS_BURST", BURST.to_string()),
    )
    .await;
    let room = cluster.create_channel("budget").await.expect("room");
    let token = cluster.token("ann").await.expect("token");
    let gateways = cluster.gateway_ids();
    let mut sockets = Vec::new();
    for gateway in &gateways {
        sockets.push(join_with(&cluster, &token, gateway, &room.id).await);
    }

    // Both sockets send all their ops at once, interleaved; each op is
    // answered with an ack or `rate_limited`.
    let started = Instant::now();
    for i in 0..PER_SOCKET {
        for (s, ws) in sockets.iter_mut().enumerate() {
            ws.send_json(&message(&room.id, &format!("s{s}-{i}")))
                .await
                .expect("sent");
        }
    }
    let mut acked = vec![0usize; sockets.len()];
    let mut limited = vec![0usize; sockets.len()];
    for (s, ws) in sockets.iter_mut().enumerate() {
        while acked[s] + limited[s] < PER_SOCKET {
            let frame = ws
                .recv_until(DEADLINE, |f| {
                    f["type"] == "ack" || (f["type"] == "error" && f["cid"].is_string())
                })
                .await
                .expect("an answer to every op");
            if frame["type"] == "ack" {
                acked[s] += 1;
            } else {
                assert_eq!(frame["code"], "rate_limited", "{frame}");
                limited[s] += 1;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total: usize = acked.iter().sum();
    // One bucket: its burst, what it refilled meanwhile, and at most one
    // lease per gateway. Two buckets would have let about twice the burst
    // through.
    let bound = BURST + gateways.len() * LEASE + (RATE * elapsed).ceil() as usize + 1;
    println!("acked {acked:?}, refused {limited:?} in {elapsed:.2}s (bound {bound})");
    assert!(
        total <= bound,
        "{total} ops acked ({acked:?}) in {elapsed:.2}s: more than one budget ({bound})"
    );
    assert!(
        acked.iter().all(|n| *n > 0),
        "both gateways let some through: {acked:?}"
    );
    assert!(
        total >= BURST - gateways.len() * LEASE,
        "the burst was available: only {total} acked"
    );

    // Each refusal is counted by kind on the gateway that refused it.
    for (s, gateway) in gateways.iter().enumerate() {
        let page = scrape(&cluster, gateway).await;
        assert_eq!(
            sample(&page, r#"collab_rate_limited_total{kind="ops"}"#),
            Some(limited[s] as f64),
            "{gateway}"
        );
        assert_eq!(
            sample(&page, r#"collab_rate_limit_fallbacks_total{kind="ops"}"#),
            Some(0.0),
            "{gateway} decided with the shared bucket"
        );
    }
}

// === revocation ===

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revocation_closes_the_users_sockets_on_every_gateway_within_a_second() {
    let mut cluster = start(ClusterOptions::new().gateways(2).room_nodes(1)).await;
    let room = cluster.create_channel("revoke").await.expect("room");
    let gateways = cluster.gateway_ids();
    let admin = cluster.admin_token().await.expect("admin token");
    let ann = cluster.token("ann").await.expect("token");
    let bob = cluster.token("bob").await.expect("token");
    let mut ann_sockets = Vec::new();
    let mut bob_sockets = Vec::new();
    for gateway in &gateways {
        ann_sockets.push(join_with(&cluster, &ann, gateway, &room.id).await);
        bob_sockets.push(join_with(&cluster, &bob, gateway, &room.id).await);
    }

    // Revoke ann's token by its id, through the second gateway.
    let jti = claims(&ann)["jti"].clone();
    let started = Instant::now();
    let (status, body) = cluster
        .post_json(
            &gateways[1],
            &admin,
            "/v1/admin/revocations",
            &json!({"jti": jti}),
        )
        .await
        .expect("answered");
    assert_eq!(status, 200, "{body}");
    for (gateway, ws) in gateways.iter().zip(&mut ann_sockets) {
        let code = ws.recv_close(DEADLINE).await.expect("a close frame");
        assert_eq!(code, Some(4001), "ann's socket on {gateway}");
    }
    let took = started.elapsed();
    println!("both of ann's sockets closed {took:?} after the revocation was asked for");
    assert!(took < REVOCATION_DEADLINE, "closed only after {took:?}");
    assert_refused_everywhere(&cluster, &ann, &room.id).await;

    // bob goes on, on both gateways; ann with another token too.
    for (i, ws) in bob_sockets.iter_mut().enumerate() {
        send_acked(ws, &room.id, &format!("bob-{i}")).await;
    }
    let ann_again = cluster.fresh_token("ann", &[]).await.expect("a new token");
    let mut ann_new = join_with(&cluster, &ann_again, &gateways[0], &room.id).await;
    send_acked(&mut ann_new, &room.id, "ann-again").await;

    // Every token of bob issued before now, with the command line. The
    // cut-off is in whole seconds: wait until the clock is past bob's
    // token's second.
    let iat = claims(&bob)["iat"].as_u64().expect("iat");
    wait_for(
        "the clock to pass bob's token's second",
        DEADLINE,
        || async move { (collab_gateway::now_secs() > iat).then_some(()) },
    )
    .await;
    let output = cluster
        .run_collab(&["token", "revoke", "--user", "bob"])
        .await
        .expect("collab token revoke runs");
    let revoked_at = Instant::now();
    assert!(
        output.status.success(),
        "collab token revoke: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: Value = serde_json::from_slice(&output.stdout).expect("it prints the revocation");
    assert_eq!(printed["kind"], "user");
    assert_eq!(printed["user"], "bob");
    for (gateway, ws) in gateways.iter().zip(&mut bob_sockets) {
        let code = ws.recv_close(DEADLINE).await.expect("a close frame");
        assert_eq!(code, Some(4001), "bob's socket on {gateway}");
    }
    let took = revoked_at.elapsed();
    assert!(
        took < REVOCATION_DEADLINE,
        "closed only {took:?} after the command"
    );
    assert_refused_everywhere(&cluster, &bob, &room.id).await;
    send_acked(&mut ann_new, &room.id, "ann-still").await;

    for gateway in &gateways {
        let page = scrape(&cluster, gateway).await;
        assert_eq!(
            sample(&page, "collab_gateway_revocation_closes_total"),
            Some(2.0),
            "{gateway}: one of ann's sockets and one of bob's"
        );
        assert_eq!(sample(&page, "collab_revocations_known"), Some(2.0));
    }
}

/// `token` is refused by every gateway: the upgrade and HTTP answer 401.
async fn assert_refused_everywhere(cluster: &Cluster, token: &str, room: &str) {
    for gateway in cluster.gateway_ids() {
        let upgrade = upgrade_status(&ws_url(cluster, &gateway), Some(token))
            .await
            .expect("answered");
        assert_eq!(upgrade, 401, "upgrade on {gateway}");
        let (status, body) = cluster
            .get_json(&gateway, token, &format!("/v1/rooms/{room}"))
            .await
            .expect("answered");
        assert_eq!(status, 401, "HTTP on {gateway}: {body}");
    }
}

// === presence ===

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn presence_spans_the_gateways_and_a_killed_gateways_users_leave_it_within_the_ttl() {
    let mut cluster = start(ClusterOptions::new().gateways(2).room_nodes(1).env(
        "COLLAB_GATEWAY__PRESENCE_TTL_SECS",
        PRESENCE_TTL_SECS.to_string(),
    ))
    .await;
    let (one, two) = (
        cluster.create_board("one").await.expect("room"),
        cluster.create_board("two").await.expect("room"),
    );
    let gateways = cluster.gateway_ids();
    let (doomed, survivor) = (gateways[0].clone(), gateways[1].clone());
    let ann = cluster.token("ann").await.expect("token");
    let _on_doomed = join_with(&cluster, &ann, &doomed, &one.id).await;
    let mut on_survivor = join_with(&cluster, &ann, &survivor, &two.id).await;

    let path = "/v1/users/ann/presence";
    let both = wait_presence(
        &cluster,
        &survivor,
        &ann,
        path,
        "ann on both gateways",
        |b| b["connections"] == 2 && b["rooms"] == json!(["one", "two"]),
    )
    .await;
    assert_eq!(both["online"], true);
    let instances = both["gateways"].as_array().expect("gateways").len();
    assert_eq!(instances, 2, "{both}");
    // Any gateway answers the same.
    wait_presence(
        &cluster,
        &doomed,
        &ann,
        path,
        "the same on the other",
        |b| *b == both,
    )
    .await;

    cluster.kill(&doomed).expect("SIGKILL a gateway");
    let killed = Instant::now();
    let one_left = wait_presence(&cluster, &survivor, &ann, path, "ann on one gateway", |b| {
        b["connections"] == 1 && b["rooms"] == json!(["two"])
    })
    .await;
    let took = killed.elapsed();
    println!("the killed gateway's connection left presence {took:?} after the SIGKILL");
    assert!(
        took < Duration::from_secs(PRESENCE_TTL_SECS + 2),
        "gone only after {took:?} (TTL {PRESENCE_TTL_SECS} s)"
    );
    assert_eq!(one_left["gateways"].as_array().map(Vec::len), Some(1));
    // The room the killed gateway's connection was in is empty once the
    // room node sees the gateway gone.
    wait_presence(
        &cluster,
        &survivor,
        &ann,
        "/v1/rooms/one/presence",
        "room one empty",
        |b| b["users"] == json!([]),
    )
    .await;

    // A socket that closes leaves at once (the next flush), not at expiry.
    on_survivor
        .send_json(&json!({"type": "leave", "room": "two"}))
        .await
        .expect("leave");
    on_survivor.close().await.expect("closes");
    let closed = Instant::now();
    wait_presence(&cluster, &survivor, &ann, path, "ann offline", |b| {
        b["online"] == false && b["connections"] == 0 && b["rooms"] == json!([])
    })
    .await;
    assert!(
        closed.elapsed() < Duration::from_secs(PRESENCE_TTL_SECS),
        "a clean close took {:?} to show",
        closed.elapsed()
    );
}

/// Polls `GET path` on `gateway` until `check` accepts the 200 body.
async fn wait_presence(
    cluster: &Cluster,
    gateway: &str,
    token: &str,
    path: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let check = &check;
    wait_for(what, DEADLINE, || async move {
        let (status, body) = cluster.get_json(gateway, token, path).await.ok()?;
        (status == 200 && check(&body)).then_some(body)
    })
    .await
}

// === room expiry ===

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rooms_expire_in_a_cluster_that_shares_a_redis() {
    let mut cluster = start(
        ClusterOptions::new()
            .gateways(2)
            .room_nodes(2)
            .env("COLLAB_ROOMS__IDLE_AFTER_SECS", "1")
            .env("COLLAB_ROOMS__EXPIRY_SWEEP_SECS", "1"),
    )
    .await;
    let gateways = cluster.gateway_ids();
    let ann = cluster.token("ann").await.expect("token");
    for (id, ttl) in [("brief", Some(2)), ("forever", None)] {
        let mut body = json!({"kind": "channel", "id": id});
        if let Some(ttl) = ttl {
            body["ttl_secs"] = ttl.into();
        }
        let (status, answer) = cluster
            .post_json(&gateways[0], &ann, "/v1/rooms", &body)
            .await
            .expect("answered");
        assert_eq!(status, 201, "{answer}");
    }
    // Used through the other gateway, then left alone: its owner (either
    // room node) records its deadline in Redis when the room goes idle,
    // and a sweep deletes it.
    let mut ws = join_with(&cluster, &ann, &gateways[1], "brief").await;
    send_acked(&mut ws, "brief", "last-words").await;
    ws.close().await.expect("closes");
    let (cluster_ref, token) = (&cluster, ann.as_str());
    wait_for("the unused room to be deleted", DEADLINE, || async move {
        let mut gone = true;
        for gateway in cluster_ref.gateway_ids() {
            let (status, _) = cluster_ref
                .get_json(&gateway, token, "/v1/rooms/brief")
                .await
                .ok()?;
            gone &= status == 404;
        }
        gone.then_some(())
    })
    .await;
    let (status, _) = cluster
        .get_json(&gateways[1], &ann, "/v1/rooms/forever")
        .await
        .expect("answered");
    assert_eq!(status, 200, "a room without a time to live stays");
}

// === Redis down ===

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_redis_under_load_loses_nothing_and_the_shared_state_comes_back() {
    let mut cluster = start(
        ClusterOptions::new()
            .gateways(2)
            .room_nodes(1)
            .env("COLLAB_GATEWAY__RATE_LIMITS__ROOMS_PER_MIN", "60")
            .env(
                "COLLAB_GATEWAY__RATE_LIMITS__ROOMS_BURST",
                ROOMS_BURST.to_string(),
            ),
    )
    .await;
    let gateways = cluster.gateway_ids();
    let admin = cluster.admin_token().await.expect("admin token");

    // Ops through both gateways: two chat channels with a member on each,
    // and a board with two drawers.
    let mut rooms = Vec::new();
    let mut clients: Vec<RunningClient> = Vec::new();
    for i in 0..2 {
        let room = cluster
            .create_channel(&format!("outage-{i}"))
            .await
            .expect("room");
        for (user, gateway) in [("ann", 0), ("bob", 1)] {
            let chat = ClientOptions::chat(4, Duration::from_millis(50));
            let client = cluster
                .client(user, &room, gateway, chat)
                .await
                .expect("client");
            clients.push(client.spawn());
        }
        rooms.push(room);
    }
    let board = cluster.create_board("outage-board").await.expect("board");
    for (i, user) in ["cat", "dan"].iter().enumerate() {
        let client = cluster
            .client(user, &board, i, ClientOptions::drawing())
            .await
            .expect("client");
        clients.push(client.spawn());
    }
    rooms.push(board);
    wait_acked_more(
        &clients,
        &vec![0; clients.len()],
        10,
        "10 acked ops per client",
    )
    .await;
    let (created, bound) = creations_through_both(&mut cluster, "before").await;
    assert!(
        created <= bound,
        "shared bucket before the outage: {created} created"
    );

    cluster.kill_redis();
    // Every gateway notices (its next ping fails), and none turns unready.
    for gateway in &gateways {
        let cluster = &cluster;
        wait_for(
            &format!("{gateway} to see redis down"),
            DEADLINE,
            || async move {
                let page = scrape(cluster, gateway).await;
                (sample(&page, "collab_redis_up{}") == Some(0.0)).then_some(())
            },
        )
        .await;
        assert!(
            is_ready(cluster, gateway).await,
            "{gateway} unready with redis down"
        );
    }
    let before = acked_counts(&clients);
    wait_acked_more(
        &clients,
        &before,
        10,
        "10 more acked ops per client with redis down",
    )
    .await;
    for gateway in &gateways {
        assert!(
            is_ready(&cluster, gateway).await,
            "{gateway} unready with redis down"
        );
    }
    // Limits fall back to each gateway's own bucket: each lets its burst
    // through.
    let (local, _) = creations_through_both(&mut cluster, "during").await;
    assert!(
        local >= 2 * ROOMS_BURST - 1,
        "each gateway's own bucket during the outage: only {local} created"
    );
    // A revocation while Redis is away: the gateway that takes it refuses
    // the token at once and says it could not share it.
    let eve = cluster.token("eve").await.expect("token");
    let (status, body) = cluster
        .post_json(
            &gateways[0],
            &admin,
            "/v1/admin/revocations",
            &json!({"jti": claims(&eve)["jti"]}),
        )
        .await
        .expect("answered");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    let (status, _) = cluster
        .get_json(&gateways[0], &eve, "/v1/me/rooms")
        .await
        .expect("answered");
    assert_eq!(status, 401, "refused where it was revoked");
    let mut eve_ws = join_with(&cluster, &eve, &gateways[1], &rooms[0].id).await;

    cluster.start_redis().await;
    let back = Instant::now();
    // The gateway that took the revocation hands it to the new (empty)
    // Redis; the other learns it, refuses the token and closes its socket.
    let code = eve_ws
        .recv_close(RECOVERY_DEADLINE)
        .await
        .expect("eve's socket on the other gateway closes");
    assert_eq!(code, Some(4001));
    println!(
        "the revocation reached the other gateway {:?} after redis came back",
        back.elapsed()
    );
    for gateway in &gateways {
        let (status, _) = cluster
            .get_json(gateway, &eve, "/v1/me/rooms")
            .await
            .expect("answered");
        assert_eq!(status, 401, "{gateway} refuses the revoked token");
    }
    // The shared buckets take over again.
    let cluster_ref = &mut cluster;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (created, bound) =
            creations_through_both(cluster_ref, &format!("after-{attempt}")).await;
        if created <= bound {
            println!(
                "shared limits again {:?} after redis came back",
                back.elapsed()
            );
            break;
        }
        assert!(
            back.elapsed() < RECOVERY_DEADLINE,
            "still {created} rooms created through both gateways {:?} after redis came back",
            back.elapsed()
        );
    }

    let before = acked_counts(&clients);
    wait_acked_more(
        &clients,
        &before,
        10,
        "10 more acked ops per client after redis returned",
    )
    .await;
    let mut stopped = Vec::new();
    for client in clients {
        stopped.push(client.stop().await);
    }
    for room in &rooms {
        let (mut mine, rest): (Vec<_>, Vec<_>) =
            stopped.into_iter().partition(|c| c.room().id == room.id);
        verify_room(&cluster, room, &mut mine).await;
        stopped = rest;
    }
    for gateway in &gateways {
        let page = scrape(&cluster, gateway).await;
        assert_eq!(sample(&page, "collab_redis_up{}"), Some(1.0), "{gateway}");
        assert!(
            sample(&page, "collab_redis_outages_total").is_some_and(|n| n >= 1.0),
            "{gateway}"
        );
        assert!(
            sample(&page, r#"collab_rate_limit_fallbacks_total{kind="rooms"}"#)
                .is_some_and(|n| n >= 1.0),
            "{gateway} decided room creations alone while redis was down"
        );
    }
}

/// Room creation is the limit the outage test watches (1 a second, a burst
/// of 6, so a lease is one token); ops and joins stay far above the load.
const ROOMS_BURST: usize = 6;

/// One new user creates rooms as fast as it can, alternating between the
/// two gateways, `4 × burst` attempts; returns how many were created, and
/// the most one shared bucket would have allowed in that time. A bucket
/// per gateway allows about twice the burst.
async fn creations_through_both(cluster: &mut Cluster, label: &str) -> (usize, usize) {
    let gateways = cluster.gateway_ids();
    let user = format!("maker-{label}");
    let token = cluster.fresh_token(&user, &[]).await.expect("token");
    let mut created = 0;
    let started = Instant::now();
    for i in 0..24 {
        let gateway = &gateways[i % gateways.len()];
        let body = json!({"kind": "board", "id": format!("{user}-{i}")});
        let (status, answer) = cluster
            .post_json(gateway, &token, "/v1/rooms", &body)
            .await
            .expect("answered");
        match status {
            201 => created += 1,
            429 => assert_eq!(answer["error"]["code"], "rate_limited"),
            other => panic!("creating a room on {gateway}: {other} {answer}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // The shared bucket: its burst, one lease (a token) per gateway, and a
    // token a second of refill.
    let shared_bound = ROOMS_BURST + gateways.len() + elapsed.ceil() as usize;
    println!(
        "{label}: {created} of 24 rooms created in {elapsed:.2}s (one bucket: at most {shared_bound})"
    );
    (created, shared_bound)
}

#[tokio::test]
async fn a_users_sockets_on_every_gateway_count_against_its_limit() {
    let mut cluster = start(
        ClusterOptions::new()
            .gateways(2)
            .room_nodes(1)
            .env("COLLAB_GATEWAY__MAX_SOCKETS_PER_USER", "2"),
    )
    .await;
    let gateways = cluster.gateway_ids();
    let (first, second) = (
        ws_url(&cluster, &gateways[0]),
        ws_url(&cluster, &gateways[1]),
    );
    let ann = cluster.token("ann").await.expect("token");
    let bob = cluster.token("bob").await.expect("token");
    let mut on_first = Vec::new();
    for _ in 0..2 {
        let mut ws = WsClient::connect(&first, &ann).await.expect("connects");
        ws.recv_type("welcome", DEADLINE).await.expect("welcome");
        on_first.push(ws);
    }
    // The second gateway learns of them from the presence records, which
    // the first writes every 100 ms.
    let deadline = Instant::now() + DEADLINE;
    loop {
        match upgrade_refusal(&second, &ann, None, None).await {
            Ok((status, body)) => {
                assert_eq!(status, 429, "{body}");
                assert_eq!(body["error"]["code"], "rate_limited", "{body}");
                break;
            }
            // Accepted: not counted yet (the socket closes as it is dropped).
            Err(e) => assert!(Instant::now() < deadline, "never refused: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await; // poll interval
    }
    // Another user is not affected.
    let mut bob_ws = WsClient::connect(&second, &bob)
        .await
        .expect("bob connects");
    bob_ws
        .recv_type("welcome", DEADLINE)
        .await
        .expect("welcome");
    // A socket closed on the first gateway frees a place on the second.
    on_first
        .pop()
        .expect("a socket")
        .close()
        .await
        .expect("closes");
    let deadline = Instant::now() + DEADLINE;
    let mut again = loop {
        match WsClient::connect(&second, &ann).await {
            Ok(ws) => break ws,
            Err(e) => assert!(Instant::now() < deadline, "no place came back: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await; // poll interval
    };
    again.recv_type("welcome", DEADLINE).await.expect("welcome");
}
