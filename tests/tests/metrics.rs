//! The metrics of a real `collab serve` after traffic: every metric that
//! `docs/metrics.md` lists for `serve` is on `/metrics`, nothing there is
//! undocumented, the labelled families an alert watches are there at zero
//! before anything happened, and the traffic shows where it should (HTTP
//! requests by route and status, ops by kind, errors by code, connections
//! ended by reason). Then `metrics_listen`: `/metrics` moves to its own
//! port, the probes answer on both.
//!
//! The cluster-only metrics are checked on a real cluster in
//! `cluster.rs` (`the_cluster_metrics_follow_members_hand_offs_and_failovers`).

use std::time::{Duration, Instant};

use collab_gateway::Disconnect;
use collab_protocol::{ErrorCode, OpKind};
use collab_tests::harness::{CollabServer, DEADLINE, ServerOptions, WsClient};
use collab_tests::metrics::{check_against_doc, has_sample, sample};
use serde_json::{Value, json};

/// Frames and answers arrive in milliseconds; this only bounds a failure.
const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

async fn get(server: &CollabServer, url: &str) -> (u16, String) {
    let response = server
        .http()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    (status, response.text().await.expect("a body"))
}

/// Scrapes until every `(series, value)` holds; fails after the deadline
/// with the last page.
async fn wait_for_samples(server: &CollabServer, expected: &[(String, f64)]) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let page = server.metrics_page().await;
        let missing: Vec<&(String, f64)> = expected
            .iter()
            .filter(|(series, value)| sample(&page, series) != Some(*value))
            .collect();
        if missing.is_empty() {
            return page;
        }
        assert!(
            Instant::now() < deadline,
            "still not {missing:?} after {DEADLINE:?}:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await; // poll interval
    }
}

async fn connect(server: &CollabServer, token: &str) -> WsClient {
    let mut client = WsClient::connect(&server.ws_url(), token)
        .await
        .expect("connects");
    client
        .recv_type("welcome", FRAME_TIMEOUT)
        .await
        .expect("welcome");
    client
}

fn op(room: &str, cid: &str, op: Value) -> Value {
    json!({"type": "op", "room": room, "cid": cid, "op": op})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_exports_every_documented_metric_and_counts_its_traffic() {
    let server = CollabServer::start(ServerOptions::new()).expect("collab serve starts");

    // Before any traffic, every series an alert watches is there at 0.
    let page = server.metrics_page().await;
    let mut at_zero: Vec<String> = Vec::new();
    at_zero.extend(
        OpKind::ALL
            .iter()
            .map(|k| format!(r#"collab_gateway_ops_total{{kind="{}"}}"#, k.as_str())),
    );
    at_zero.extend(
        ErrorCode::ALL
            .iter()
            .map(|c| format!(r#"collab_gateway_errors_total{{code="{}"}}"#, c.as_str())),
    );
    at_zero.extend(Disconnect::ALL.iter().map(|r| {
        format!(
            r#"collab_gateway_disconnects_total{{reason="{}"}}"#,
            r.as_str()
        )
    }));
    at_zero.extend(
        ["handoff", "failover"].map(|k| format!(r#"collab_room_takeovers_total{{kind="{k}"}}"#)),
    );
    at_zero.push("collab_room_handoffs_total".into());
    for series in &at_zero {
        assert_eq!(sample(&page, series), Some(0.0), "{series}:\n{page}");
    }

    // HTTP: a token, a room.
    let token = server.dev_token("ann").await.expect("a dev token");
    let room = server
        .create_room(&token, &json!({"kind": "board", "id": "metrics-room"}))
        .await
        .expect("room created");
    let room = room["id"].as_str().expect("an id").to_owned();

    // Ops, and an error: an op to a room not joined.
    let mut ann = connect(&server, &token).await;
    ann.send_json(&json!({"type": "join", "room": room}))
        .await
        .expect("sent");
    ann.recv_type("joined", FRAME_TIMEOUT)
        .await
        .expect("joined");
    for (cid, text) in [("c1", "one"), ("c2", "two")] {
        ann.send_json(&op(&room, cid, json!({"kind": "message", "text": text})))
            .await
            .expect("sent");
        ann.recv_type("ack", FRAME_TIMEOUT).await.expect("acked");
    }
    ann.send_json(&op(
        "elsewhere",
        "c3",
        json!({"kind": "message", "text": "x"}),
    ))
    .await
    .expect("sent");
    let error = ann.recv_type("error", FRAME_TIMEOUT).await.expect("error");
    assert_eq!(error["code"], "bad_request", "{error}");
    // The client leaves.
    ann.close().await.expect("closed");

    // A frame over the limit: 1009.
    let mut big = connect(&server, &token).await;
    big.send_json(&op(
        &room,
        "c4",
        json!({"kind": "message", "text": "a".repeat(200 * 1024)}),
    ))
    .await
    .expect("sent");
    assert_eq!(
        big.recv_close(FRAME_TIMEOUT).await.expect("closed"),
        Some(1009)
    );

    // A token that expires while connected: 4001.
    let short = server
        .mint_token("cat", &["--ttl-secs", "2"])
        .expect("a short token");
    let mut expiring = connect(&server, &short).await;
    assert_eq!(
        expiring.recv_close(FRAME_TIMEOUT).await.expect("closed"),
        Some(4001)
    );

    let expected: Vec<(String, f64)> = [
        (r#"collab_gateway_disconnects_total{reason="client"}"#, 1.0),
        (r#"collab_gateway_disconnects_total{reason="too_big"}"#, 1.0),
        (r#"collab_gateway_disconnects_total{reason="expired"}"#, 1.0),
        (r#"collab_gateway_disconnects_total{reason="slow"}"#, 0.0),
        ("collab_gateway_connections", 0.0),
        (r#"collab_gateway_ops_total{kind="message"}"#, 3.0),
        (r#"collab_gateway_ops_total{kind="undo"}"#, 0.0),
        (r#"collab_gateway_errors_total{code="bad_request"}"#, 1.0),
        (r#"collab_gateway_errors_total{code="internal"}"#, 0.0),
        ("collab_gateway_joins_total", 1.0),
        (
            r#"collab_http_requests_total{route="/v1/dev/token",status="200"}"#,
            1.0,
        ),
        (
            r#"collab_http_requests_total{route="/v1/rooms",status="201"}"#,
            1.0,
        ),
        (
            r#"collab_http_requests_total{route="/v1/ws",status="101"}"#,
            3.0,
        ),
        (
            r#"collab_http_request_duration_seconds_count{route="/v1/rooms"}"#,
            1.0,
        ),
        ("collab_ready", 1.0),
        (
            &format!(
                r#"collab_build_info{{version="{}",role="serve"}}"#,
                env!("CARGO_PKG_VERSION")
            ),
            1.0,
        ),
        ("collab_room_rooms_active", 1.0),
        // One node writes every room: nothing is ever taken over.
        (r#"collab_room_takeovers_total{kind="handoff"}"#, 0.0),
        (r#"collab_room_takeovers_total{kind="failover"}"#, 0.0),
    ]
    .into_iter()
    .map(|(series, value)| (series.to_owned(), value))
    .collect();
    let page = wait_for_samples(&server, &expected).await;

    // An unknown path is counted as `other`, never by its path.
    let (status, _) = get(&server, &format!("{}/no/such/path", server.http_url())).await;
    assert_eq!(status, 404);
    let page_after = server.metrics_page().await;
    assert_eq!(
        sample(
            &page_after,
            r#"collab_http_requests_total{route="other",status="404"}"#
        ),
        Some(1.0),
        "{page_after}"
    );
    assert!(!page_after.contains("no/such"), "{page_after}");

    // The page matches the doc both ways, and the cluster's own metrics
    // are not there.
    let problems = check_against_doc(&page, "serve");
    assert!(problems.is_empty(), "{problems:#?}\n{page}");
    for name in ["collab_cluster_members", "collab_nats_connected"] {
        assert!(!has_sample(&page, name), "{name} in serve:\n{page}");
    }
    let cpu = sample(&page, "process_cpu_seconds_total").expect("cpu");
    let rss = sample(&page, "process_resident_memory_bytes").expect("rss");
    assert!(cpu > 0.0 && rss > 1_000_000.0, "cpu {cpu}, rss {rss}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_metrics_listen_metrics_are_served_only_on_their_own_port() {
    let server = CollabServer::start(
        ServerOptions::new()
            .arg("--metrics-listen")
            .arg("127.0.0.1:0"),
    )
    .expect("collab serve starts");
    let public = server.http_url();
    let metrics = server
        .metrics_url()
        .expect("the metrics address is announced");
    assert_ne!(public, metrics);

    let (status, body) = get(&server, &format!("{public}/metrics")).await;
    assert_eq!(status, 404, "{body}");
    let body: Value = serde_json::from_str(&body).expect("a JSON error");
    assert_eq!(body["error"]["code"], "not_found", "{body}");

    let (status, page) = get(&server, &format!("{metrics}/metrics")).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        sample(
            &page,
            r#"collab_http_requests_total{route="other",status="404"}"#
        ),
        Some(1.0),
        "the public 404 was counted:\n{page}"
    );
    assert!(has_sample(&page, "collab_build_info"), "{page}");

    for base in [&public, &metrics] {
        assert_eq!(get(&server, &format!("{base}/healthz")).await.0, 200);
        let deadline = Instant::now() + DEADLINE;
        while get(&server, &format!("{base}/readyz")).await.0 != 200 {
            assert!(Instant::now() < deadline, "{base}/readyz never 200");
            tokio::time::sleep(Duration::from_millis(20)).await; // poll interval
        }
    }
    // The metrics port serves nothing of the API.
    assert_eq!(get(&server, &format!("{metrics}/v1/me/rooms")).await.0, 404);
}
