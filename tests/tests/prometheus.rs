//! The alerts and the dashboard against a real Prometheus (Debian's
//! package) scraping real processes: a cluster of two gateways and three
//! room nodes sharing a Redis, and a `collab serve` for the embedded
//! store's metrics; the room nodes send webhooks to a receiver in the
//! test. With
//! the rules of `deploy/k8s/monitoring/alerts.yaml`, scraped and evaluated
//! every second, after some traffic:
//!
//! - every target is up;
//! - every rule evaluates without error;
//! - every metric name the alerts and the dashboard use
//!   (`deploy/k8s/monitoring/metrics-used.txt`) is exported: by a gateway
//!   or a room node, or, for the embedded store's `collab_store_*`, by
//!   `collab serve`;
//! - no alert is pending or firing while the cluster is healthy;
//! - a SIGKILLed room node makes `CollabRoomNodeGone` go pending, then
//!   firing once its `for` has passed, and not before.
//!
//! Needs `COLLAB_PROMETHEUS` (the `prometheus` binary; the test is skipped,
//! saying so, without it), `COLLAB_NATS_SERVER` and `COLLAB_TEST_CQL`;
//! `scripts/test.sh` provides all three.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use collab_tests::harness::cluster::{
    ClientOptions, Cluster, ClusterOptions, RunningClient, total_acked, wait_for,
};
use collab_tests::harness::prometheus::{
    Alert, PROMETHEUS_ENV, Prometheus, PrometheusOptions, RuleGroup,
};
use collab_tests::harness::webhooks::WebhookReceiver;
use collab_tests::harness::{CollabServer, ServerOptions, WsClient};
use serde_json::json;
use tokio::time::Instant;

/// Scrape and rule evaluation interval: short, so the test is too.
const INTERVAL: Duration = Duration::from_secs(1);
const GATEWAY_JOB: &str = "collab-gateway";
const ROOM_NODE_JOB: &str = "collab-room-node";
/// Not a job of the rules: only there for the embedded store's metrics.
const SERVE_JOB: &str = "collab-serve";
/// Metrics only the embedded store exports, so only `collab serve` has.
const EMBEDDED_STORE_PREFIX: &str = "collab_store_";
/// Prometheus's own series about each target.
const SCRAPE_SERIES: &str = "up";
const ROOM_NODE_GONE: &str = "CollabRoomNodeGone";
/// Bounds each wait; a healthy run takes a few seconds per step.
const DEADLINE: Duration = Duration::from_secs(60);
/// How long an alert that went pending on the first evaluations may take
/// to clear.
const QUIET_WITHIN: Duration = Duration::from_secs(10);
/// Ops the drawing clients get acked before the checks.
const OPS: usize = 40;
/// Between two looks at Prometheus's API.
const POLL: Duration = Duration::from_millis(200);

fn monitoring_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s/monitoring")
}

/// The names of `metrics-used.txt`.
fn metrics_used() -> Vec<String> {
    let path = monitoring_dir().join("metrics-used.txt");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_scrapes_the_cluster_evaluates_every_alert_and_fires_on_a_dead_room_node() {
    let Some(binary) = Prometheus::binary() else {
        eprintln!(
            "skipped: {PROMETHEUS_ENV} is not set (the prometheus binary; \
             `bash scripts/monitoring-check.sh install` prints its path)"
        );
        return;
    };
    let started = Instant::now();
    // With Redis, as a production cluster runs, so the Redis panels and
    // alert have their series; and with a webhook endpoint, for the
    // webhook alert's.
    let receiver = WebhookReceiver::start("prometheus-test-secret")
        .await
        .expect("webhook receiver");
    let config_dir = tempfile::tempdir().expect("temp dir");
    let config = config_dir.path().join("webhooks.toml");
    std::fs::write(&config, receiver.config_entry("test", &["op.committed"]))
        .expect("config written");
    let mut cluster = Cluster::start(
        ClusterOptions::new()
            .gateways(2)
            .room_nodes(3)
            .redis()
            .env("COLLAB_CONFIG", config.display().to_string()),
    )
    .await
    .expect("the cluster starts (nats-server, CQL keyspace, gateways, room nodes)");
    let serve = CollabServer::start(ServerOptions::new()).expect("collab serve starts");
    let room_nodes = cluster.room_node_ids();
    let options = PrometheusOptions::new(INTERVAL)
        .job(
            GATEWAY_JOB,
            cluster.gateway_ids().iter().map(|id| cluster.addr(id)),
        )
        .job(ROOM_NODE_JOB, room_nodes.iter().map(|id| cluster.addr(id)))
        .job(SERVE_JOB, [serve.addr()])
        .rule_file(monitoring_dir().join("alerts.yaml"));
    let prometheus = Prometheus::start(&binary, &options)
        .await
        .expect("prometheus starts");

    traffic(&mut cluster, &serve).await;
    every_target_up(
        &prometheus,
        cluster.gateway_ids().len() + room_nodes.len() + 1,
    )
    .await;
    let groups = every_rule_evaluated(&prometheus).await;
    every_used_metric_exported(&prometheus).await;
    no_alert_while_healthy(&prometheus).await;

    let for_secs = groups
        .iter()
        .flat_map(|g| &g.rules)
        .find(|r| r.name == ROOM_NODE_GONE)
        .map(|r| r.duration)
        .unwrap_or_else(|| panic!("no rule {ROOM_NODE_GONE} in {groups:?}"));
    let hold = Duration::from_secs_f64(for_secs);
    let victim = room_nodes.last().expect("a room node").clone();
    cluster.kill(&victim).expect("SIGKILL a room node");
    let killed = Instant::now();
    let (pending, firing) = room_node_gone_fires(&prometheus, hold).await;
    eprintln!(
        "{ROOM_NODE_GONE} (for {hold:?}): pending {:?} and firing {:?} after the SIGKILL of {victim}",
        pending.duration_since(killed),
        firing.duration_since(killed)
    );
    // Membership TTL, a scrape and an evaluation, with room to spare on a
    // busy machine.
    assert!(
        pending.duration_since(killed) < Duration::from_secs(20),
        "pending only {:?} after the kill",
        pending.duration_since(killed)
    );
    // Pending is seen within a poll of the evaluation that started it, and
    // firing within a poll of the first evaluation past `for`: so firing
    // follows pending by `for`, give or take an interval.
    let held = firing.duration_since(pending);
    assert!(
        held + INTERVAL >= hold,
        "fired {held:?} after going pending, before its `for` of {hold:?}"
    );
    assert!(
        held <= hold + 3 * INTERVAL,
        "fired only {held:?} after going pending, its `for` is {hold:?}"
    );
    eprintln!("prometheus end to end: {:?} in all", started.elapsed());
}

/// Drawing clients on four boards (placement spreads them over the room
/// nodes) through both gateways until `OPS` ops are acked; then a join and
/// an op on `collab serve`, so its store commits.
async fn traffic(cluster: &mut Cluster, serve: &CollabServer) {
    let mut clients: Vec<RunningClient> = Vec::new();
    for (i, board) in ["watched-a", "watched-b", "watched-c", "watched-d"]
        .iter()
        .enumerate()
    {
        let room = cluster.create_board(board).await.expect("a board");
        let client = cluster
            .client(&format!("user-{i}"), &room, i, ClientOptions::drawing())
            .await
            .expect("a client");
        clients.push(client.spawn());
    }
    wait_for(&format!("{OPS} ops acked"), DEADLINE, || {
        let done = total_acked(&clients) >= OPS;
        async move { done.then_some(()) }
    })
    .await;
    for client in clients {
        client.stop().await;
    }

    let token = serve.dev_token("ann").await.expect("a dev token");
    serve
        .create_room(&token, &json!({"kind": "board", "id": "watched"}))
        .await
        .expect("a board on collab serve");
    let mut ws = WsClient::connect(&serve.ws_url(), &token)
        .await
        .expect("a socket to collab serve");
    ws.recv_type("welcome", DEADLINE).await.expect("welcome");
    ws.send_json(&json!({"type": "join", "room": "watched"}))
        .await
        .expect("join");
    ws.recv_type("joined", DEADLINE).await.expect("joined");
    ws.send_json(&json!({"type": "op", "room": "watched", "cid": "c1",
        "op": {"kind": "message", "text": "watched"}}))
        .await
        .expect("an op");
    ws.recv_type("ack", DEADLINE).await.expect("its ack");
}

/// Waits until all `expected` targets have been scraped and are up.
async fn every_target_up(prometheus: &Prometheus, expected: usize) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let targets = prometheus.targets().await.expect("targets");
        if targets.len() == expected && targets.iter().all(|t| t.health == "up") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not every one of {expected} targets is up: {targets:#?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until every rule has been evaluated (health not `unknown`); fails
/// at once on any that evaluated with an error.
async fn every_rule_evaluated(prometheus: &Prometheus) -> Vec<RuleGroup> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let groups = prometheus.rule_groups().await.expect("rules");
        let rules: Vec<_> = groups.iter().flat_map(|g| &g.rules).collect();
        let errors: Vec<String> = rules
            .iter()
            .filter(|r| r.health == "err")
            .map(|r| format!("{}: {}", r.name, r.last_error))
            .collect();
        assert!(errors.is_empty(), "rules evaluate with errors: {errors:#?}");
        if !rules.is_empty()
            && rules
                .iter()
                .all(|r| r.kind == "alerting" && r.health == "ok")
        {
            return groups;
        }
        assert!(
            Instant::now() < deadline,
            "not every rule was evaluated: {groups:#?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until every name of `metrics-used.txt` has a series in a job
/// where it belongs; fails listing the ones that never showed up.
async fn every_used_metric_exported(prometheus: &Prometheus) {
    let used = metrics_used();
    assert!(!used.is_empty(), "metrics-used.txt lists no metric");
    let query = format!(
        "count by (__name__, job) ({{__name__=~\"{}\"}})",
        used.join("|")
    );
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut jobs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (labels, _) in prometheus.query(&query).await.expect("a query") {
            let name = labels["__name__"].as_str().unwrap_or_default().to_owned();
            let job = labels["job"].as_str().unwrap_or_default().to_owned();
            jobs.entry(name).or_default().insert(job);
        }
        let missing: Vec<String> = used
            .iter()
            .filter(|name| {
                let found_in = |job: &str| jobs.get(*name).is_some_and(|jobs| jobs.contains(job));
                let present = if name.starts_with(EMBEDDED_STORE_PREFIX) {
                    found_in(SERVE_JOB)
                } else if name.as_str() == SCRAPE_SERIES {
                    found_in(GATEWAY_JOB) && found_in(ROOM_NODE_JOB)
                } else {
                    found_in(GATEWAY_JOB) || found_in(ROOM_NODE_JOB)
                };
                !present
            })
            .map(|name| format!("{name} (found in jobs {:?})", jobs.get(name)))
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "metrics the alerts or the dashboard use and no process exports \
             (collab_store_* from {SERVE_JOB}, the rest from {GATEWAY_JOB} or {ROOM_NODE_JOB}): \
             {missing:#?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// No alert stays pending or firing while the cluster is healthy. Scrapes
/// are spread over the interval, so the first evaluations may have seen
/// some targets not scraped yet and put an alert in pending; the next ones
/// clear it.
async fn no_alert_while_healthy(prometheus: &Prometheus) {
    let deadline = Instant::now() + QUIET_WITHIN;
    loop {
        let alerts = prometheus.alerts().await.expect("alerts");
        if alerts.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "alerts on a healthy cluster: {:#?}",
            describe(&alerts)
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Polls the alerts until `CollabRoomNodeGone` fires; returns when it was
/// first seen pending and when firing. Fails if it fires without having
/// been pending, or does not fire within its `for` and a margin.
async fn room_node_gone_fires(prometheus: &Prometheus, hold: Duration) -> (Instant, Instant) {
    let deadline = Instant::now() + hold + DEADLINE;
    let mut pending = None;
    loop {
        let alerts = prometheus.alerts().await.expect("alerts");
        let now = Instant::now();
        if let Some(alert) = alerts.iter().find(|a| a.name() == ROOM_NODE_GONE) {
            match alert.state.as_str() {
                "pending" => {
                    pending.get_or_insert(now);
                }
                "firing" => {
                    let pending = pending.unwrap_or_else(|| {
                        panic!("{ROOM_NODE_GONE} fired without being seen pending: {alert:?}")
                    });
                    assert_eq!(
                        alert.labels.get("severity").map(String::as_str),
                        Some("warning"),
                        "{alert:?}"
                    );
                    assert_eq!(
                        alert.value.parse::<f64>().ok(),
                        Some(1.0),
                        "one room node gone: {alert:?}"
                    );
                    return (pending, now);
                }
                other => panic!("{ROOM_NODE_GONE} in state {other}: {alert:?}"),
            }
        }
        assert!(
            now < deadline,
            "{ROOM_NODE_GONE} did not fire within {:?} (seen pending: {}); alerts: {:#?}",
            hold + DEADLINE,
            pending.is_some(),
            describe(&alerts)
        );
        tokio::time::sleep(POLL).await;
    }
}

fn describe(alerts: &[Alert]) -> Vec<String> {
    alerts
        .iter()
        .map(|a| format!("{} {} {:?} value {}", a.name(), a.state, a.labels, a.value))
        .collect()
}
