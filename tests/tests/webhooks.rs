//! Webhooks are sent at least once, in seq order per room, whatever
//! process is killed: a real receiver (an HTTP server in the test that
//! checks every signature) must see every acked op.
//!
//! - `collab serve`: backends publish into three rooms over HTTP while the
//!   receiver refuses deliveries for a while (so committed ops wait); the
//!   server is SIGKILLed mid-stream and restarted on the same data dir;
//!   then the receiver takes deliveries again and must get every acked op.
//! - Rooms that nobody uses after such a crash still get their events
//!   sent: the new process finds them by their durable marks.
//! - A receiver that fails at first gets every event later, in order.
//! - A cluster of two gateways and two room nodes: the room node that
//!   dispatches (the rooms' owner) is SIGKILLed mid-stream; the other one
//!   takes the rooms over and sends from the durable cursors. Needs
//!   `COLLAB_NATS_SERVER` and `COLLAB_TEST_CQL`, as `tests/cluster.rs` does;
//!   `scripts/test.sh` provides both.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use collab_tests::harness::cluster::{Cluster, ClusterOptions};
use collab_tests::harness::webhooks::{Delivery, WebhookReceiver};
use collab_tests::harness::{CollabServer, ServerOptions};
use serde_json::{Value, json};

const SECRET: &str = "webhook-test-secret-0123";
const ROOMS: [&str; 3] = ["hooks-a", "hooks-b", "hooks-c"];
const DEADLINE: Duration = Duration::from_secs(90);

/// Writes a config file with the receiver's `[[webhooks]]` entry.
fn config_file(dir: &tempfile::TempDir, receiver: &WebhookReceiver) -> std::path::PathBuf {
    let path = dir.path().join("webhooks.toml");
    let text = receiver.config_entry("test", &["room.created", "op.committed"]);
    std::fs::write(&path, text).expect("config written");
    path
}

/// The acked (room, seq) pairs, shared by the publishers.
type Acked = Arc<Mutex<BTreeSet<(String, u64)>>>;

/// Publishes `count` messages into `room`, one request each, at the base
/// URL `base` holds (it changes when the server restarts); a failed
/// request is retried with the same cid until it is answered.
async fn publish_all(
    base: Arc<Mutex<String>>,
    room: String,
    token: String,
    count: u64,
    acked: Acked,
) {
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    for n in 1..=count {
        let body = json!({"cid": format!("m{n}"), "op": {"kind": "message", "text": format!("{room} {n}")}});
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "publishing into {room} stalled"
            );
            let url = format!("{}/v1/rooms/{room}/ops", base.lock().expect("lock"));
            let answer = http
                .post(url)
                .bearer_auth(&token)
                .json(&body)
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            if let Ok(response) = answer
                && response.status().is_success()
                && let Ok(answer) = response.json::<Value>().await
                && let Some(seq) = answer["seq"].as_u64()
            {
                acked.lock().expect("lock").insert((room.clone(), seq));
                break;
            }
            // The server is down or restarting: the same cid again.
            tokio::time::sleep(Duration::from_millis(20)).await; // retry backoff
        }
    }
}

/// Starts publishing `count` messages into each of `rooms` (see
/// [`publish_all`]).
fn publish_into(
    rooms: &[String],
    base: &Arc<Mutex<String>>,
    token: &str,
    count: u64,
    acked: &Acked,
) -> Vec<tokio::task::JoinHandle<()>> {
    rooms
        .iter()
        .map(|room| {
            tokio::spawn(publish_all(
                base.clone(),
                room.clone(),
                token.to_owned(),
                count,
                acked.clone(),
            ))
        })
        .collect()
}

/// Waits for `delivered` deliveries, then has the receiver refuse
/// everything until `more` further ops are acked: committed ops pile up
/// undelivered.
async fn pile_up_undelivered(
    receiver: &WebhookReceiver,
    acked: &Acked,
    delivered: usize,
    more: usize,
) {
    wait_until("some deliveries", || {
        receiver.deliveries().len() >= delivered
    })
    .await;
    receiver.refuse_next(usize::MAX);
    let acked_before = acked.lock().expect("lock").len();
    wait_until("more acked ops while the endpoint is down", || {
        acked.lock().expect("lock").len() >= acked_before + more
    })
    .await;
}

/// Checks what the receiver got: every acked op at least once, and each
/// op only after every earlier op of its room (duplicates allowed); each
/// room announced before its first op. Returns how many deliveries were
/// duplicates.
fn check_deliveries(deliveries: &[Delivery], acked: &BTreeSet<(String, u64)>) -> usize {
    let mut contiguous: BTreeMap<String, u64> = BTreeMap::new();
    let mut announced: BTreeSet<String> = BTreeSet::new();
    let mut seen: BTreeSet<(String, u64)> = BTreeSet::new();
    let mut duplicates = 0;
    for delivery in deliveries {
        let event = &delivery.event;
        let room = event.room.to_string();
        match event.kind.as_str() {
            "room.created" => {
                announced.insert(room);
            }
            "op.committed" => {
                let seq = event.seq.expect("an op event has its seq").get();
                assert_eq!(event.id, format!("op.committed:{room}:{seq}"));
                assert!(
                    announced.contains(&room),
                    "an op of {room} before room.created"
                );
                let done = contiguous.entry(room.clone()).or_insert(0);
                assert!(
                    seq <= *done + 1,
                    "{room}: op {seq} delivered before op {} was",
                    *done + 1
                );
                if seq == *done + 1 {
                    *done = seq;
                }
                if !seen.insert((room, seq)) {
                    duplicates += 1;
                }
            }
            other => panic!("unexpected event type {other}"),
        }
    }
    let missing: Vec<_> = acked.difference(&seen).collect();
    assert!(missing.is_empty(), "acked ops never delivered: {missing:?}");
    duplicates
}

/// Waits until the receiver has every acked op, then checks what it got:
/// every signature good, and the order [`check_deliveries`] asks for.
/// Returns how many deliveries were duplicates.
async fn all_delivered(receiver: &WebhookReceiver, acked: &BTreeSet<(String, u64)>) -> usize {
    wait_for_all(receiver, acked).await;
    assert!(receiver.bad().is_empty(), "{:?}", receiver.bad());
    check_deliveries(&receiver.deliveries(), acked)
}

/// Waits until the receiver has every acked op.
async fn wait_for_all(receiver: &WebhookReceiver, acked: &BTreeSet<(String, u64)>) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let got: BTreeSet<(String, u64)> = receiver
            .deliveries()
            .iter()
            .filter(|d| d.event.kind == "op.committed")
            .filter_map(|d| Some((d.event.room.to_string(), d.event.seq?.get())))
            .collect();
        if acked.is_subset(&got) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} acked ops not delivered within {DEADLINE:?}",
            acked.difference(&got).count()
        );
        tokio::time::sleep(Duration::from_millis(50)).await; // poll interval
    }
}

async fn wait_until(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await; // poll interval
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_killed_mid_stream_loses_no_webhook() {
    let receiver = WebhookReceiver::start(SECRET).await.expect("receiver");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_file(&dir, &receiver);
    let mut server = CollabServer::start(
        ServerOptions::new()
            .arg("--config")
            .arg(config.display().to_string()),
    )
    .expect("collab serve starts");
    let ann = server.dev_token("ann").await.expect("dev token");
    for room in ROOMS {
        server
            .create_room(&ann, &json!({"kind": "channel", "id": room}))
            .await
            .expect("room created");
    }
    let bot = server
        .mint_token("bot", &["--service"])
        .expect("collab token --service");

    let base = Arc::new(Mutex::new(server.http_url()));
    let acked: Acked = Arc::default();
    let publishers = publish_into(&ROOMS.map(str::to_owned), &base, &bot, 300, &acked);

    // Deliveries flow; then the endpoint goes down and committed ops pile
    // up undelivered; then the server dies with them.
    pile_up_undelivered(&receiver, &acked, 60, 90).await;
    server.kill().expect("SIGKILL");
    let acked_at_kill = acked.lock().expect("lock").clone();
    let delivered_at_kill = receiver.deliveries().len();
    assert!(
        delivered_at_kill < acked_at_kill.len(),
        "the kill must leave acked ops undelivered ({delivered_at_kill} delivered, {} acked)",
        acked_at_kill.len()
    );
    server.restart().expect("restarts on the same data dir");
    *base.lock().expect("lock") = server.http_url();
    receiver.refuse_next(0);

    for publisher in publishers {
        publisher.await.expect("publisher");
    }
    let acked = acked.lock().expect("lock").clone();
    assert_eq!(acked.len(), 900, "every publish was acked once");
    let duplicates = all_delivered(&receiver, &acked).await;
    eprintln!(
        "{} deliveries, {duplicates} duplicates, {} refused",
        receiver.deliveries().len(),
        receiver.refused()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rooms_nobody_uses_after_a_crash_still_get_their_webhooks_sent() {
    // The endpoint is down while two rooms get their ops; the server dies;
    // after the restart nobody touches the rooms again, so only the
    // marks can lead the new process to them.
    let receiver = WebhookReceiver::start(SECRET).await.expect("receiver");
    receiver.refuse_next(usize::MAX);
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_file(&dir, &receiver);
    let mut server = CollabServer::start(
        ServerOptions::new()
            .arg("--config")
            .arg(config.display().to_string()),
    )
    .expect("collab serve starts");
    let ann = server.dev_token("ann").await.expect("dev token");
    let bot = server
        .mint_token("bot", &["--service"])
        .expect("collab token --service");
    let acked: Acked = Arc::default();
    for room in &ROOMS[..2] {
        server
            .create_room(&ann, &json!({"kind": "channel", "id": room}))
            .await
            .expect("room created");
        publish_all(
            Arc::new(Mutex::new(server.http_url())),
            (*room).to_owned(),
            bot.clone(),
            30,
            acked.clone(),
        )
        .await;
    }
    server.kill().expect("SIGKILL");
    assert!(
        receiver.deliveries().is_empty(),
        "nothing was delivered before the crash"
    );
    server.restart().expect("restarts on the same data dir");
    receiver.refuse_next(0);
    let acked = acked.lock().expect("lock").clone();
    assert_eq!(acked.len(), 60);
    all_delivered(&receiver, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receiver_that_fails_at_first_gets_every_event_later_in_order() {
    let receiver = WebhookReceiver::start(SECRET).await.expect("receiver");
    receiver.refuse_next(25);
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_file(&dir, &receiver);
    let server = CollabServer::start(
        ServerOptions::new()
            .arg("--config")
            .arg(config.display().to_string()),
    )
    .expect("collab serve starts");
    let ann = server.dev_token("ann").await.expect("dev token");
    server
        .create_room(&ann, &json!({"kind": "channel", "id": ROOMS[0]}))
        .await
        .expect("room created");
    let bot = server
        .mint_token("bot", &["--service"])
        .expect("collab token --service");
    let acked: Acked = Arc::default();
    publish_all(
        Arc::new(Mutex::new(server.http_url())),
        ROOMS[0].to_owned(),
        bot,
        40,
        acked.clone(),
    )
    .await;
    let acked = acked.lock().expect("lock").clone();
    all_delivered(&receiver, &acked).await;
    assert_eq!(receiver.refused(), 25, "the first deliveries were refused");

    // The metrics tell: deliveries by outcome, and nothing left behind.
    let metrics = server.metrics_page().await;
    for line in [
        "collab_webhook_deliveries_total{endpoint=\"test\",outcome=\"failed\"} 25",
        "collab_webhook_deliveries_total{endpoint=\"test\",outcome=\"expired\"} 0",
        "collab_webhook_retry_queue{endpoint=\"test\"} 0",
    ] {
        assert!(metrics.contains(line), "{line:?} not in /metrics");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_loses_no_webhook_when_the_dispatching_room_node_dies() {
    let receiver = WebhookReceiver::start(SECRET).await.expect("receiver");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_file(&dir, &receiver);
    let mut cluster = Cluster::start(
        ClusterOptions::new()
            .room_nodes(2)
            .env("COLLAB_CONFIG", config.display().to_string()),
    )
    .await
    .expect("the cluster starts (nats-server, CQL keyspace, gateways, room nodes)");
    // Room ids unique to this run: the CQL keyspace is shared.
    let suffix = format!("{:08x}", rand_suffix());
    let rooms: Vec<String> = ROOMS.iter().map(|r| format!("{r}-{suffix}")).collect();
    for room in &rooms {
        cluster.create_channel(room).await.expect("room");
    }
    let bot = cluster
        .fresh_token("bot", &["--service"])
        .await
        .expect("collab token --service");
    let gateways = cluster.gateway_ids();
    let base = Arc::new(Mutex::new(cluster.http_url(&gateways[0])));
    let acked: Acked = Arc::default();
    let publishers = publish_into(&rooms, &base, &bot, 150, &acked);

    // The owner of the first room dispatches it; stop the endpoint so
    // that ops pile up there, then kill that node.
    pile_up_undelivered(&receiver, &acked, 30, 60).await;
    let owner = cluster.owner_of(&rooms[0]);
    cluster
        .kill(&owner)
        .expect("SIGKILL the dispatching room node");
    let acked_at_kill = acked.lock().expect("lock").clone();
    let delivered_at_kill: BTreeSet<(String, u64)> = receiver
        .deliveries()
        .iter()
        .filter_map(|d| Some((d.event.room.to_string(), d.event.seq?.get())))
        .collect();
    let undelivered_of_the_dead = acked_at_kill
        .iter()
        .filter(|(room, _)| *room == rooms[0])
        .filter(|op| !delivered_at_kill.contains(*op))
        .count();
    assert!(
        undelivered_of_the_dead > 0,
        "the kill must leave acked ops of the dead node's room undelivered"
    );
    receiver.refuse_next(0);

    for publisher in publishers {
        publisher.await.expect("publisher");
    }
    let acked = acked.lock().expect("lock").clone();
    assert_eq!(acked.len(), 450, "every publish was acked once");
    let duplicates = all_delivered(&receiver, &acked).await;
    eprintln!(
        "{} deliveries, {duplicates} duplicates, {} refused",
        receiver.deliveries().len(),
        receiver.refused()
    );

    // Once the rooms are quiet and caught up, their marks go, the dead
    // node's included: nothing is left for a later scan.
    let options = collab_store::CqlOptions::from_url(cluster.store_url()).expect("store url");
    let store = std::sync::Arc::new(
        collab_store::CqlStore::connect(options)
            .await
            .expect("the cluster's store"),
    );
    let log = collab_store::Store::webhook_log(store).expect("webhook state");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let left: Vec<_> = log
            .webhook_marks()
            .await
            .expect("marks")
            .into_iter()
            .filter(|(room, _)| rooms.contains(&room.to_string()))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "marks never cleared: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await; // poll interval
    }
}

/// A value unique to this run, without a `rand` dependency.
fn rand_suffix() -> u64 {
    collab_store::testsuite::random_u64() & 0xffff_ffff
}
