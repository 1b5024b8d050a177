//! Smoke tests of `collab serve` as a real process on a free port: it
//! starts, reports healthy and ready, hands out dev tokens, greets
//! WebSocket clients, refuses bad tokens before the upgrade, refuses what
//! its configuration forbids, and drains on SIGTERM (sockets closed with
//! 1001, exit 0, the store on disk) so a restart carries on.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use collab_tests::harness::{
    CollabServer, DEADLINE, ServerOptions, WsClient, collab_binary, upgrade_status,
};
use serde_json::{Value, json};

/// Frames and answers arrive in milliseconds; this only bounds a failure.
const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

fn start() -> CollabServer {
    CollabServer::start(ServerOptions::new()).expect("collab serve starts")
}

async fn get(server: &CollabServer, path: &str) -> (u16, String) {
    let response = server
        .http()
        .get(format!("{}{path}", server.http_url()))
        .send()
        .await
        .expect("request answered");
    let status = response.status().as_u16();
    (status, response.text().await.expect("a body"))
}

/// Polls `path` until it answers `status` (readiness may follow listening
/// by a moment); fails after the deadline.
async fn wait_for_status(server: &CollabServer, path: &str, status: u16) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (got, body) = get(server, path).await;
        if got == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} still answers {got} ({body}), not {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await; // poll interval
    }
}

async fn welcome(client: &mut WsClient) -> Value {
    let frame = client
        .recv_json(FRAME_TIMEOUT)
        .await
        .expect("a first frame");
    assert_eq!(frame["type"], "welcome", "{frame}");
    frame
}

/// Creates a board as the token's user, connects and joins it: the room
/// id, the welcomed client and its `joined` frame.
async fn join_new_board(server: &CollabServer, token: &str) -> (String, WsClient, Value) {
    let created: Value = server
        .http()
        .post(format!("{}/v1/rooms", server.http_url()))
        .bearer_auth(token)
        .json(&json!({"kind": "board"}))
        .send()
        .await
        .expect("answered")
        .json()
        .await
        .expect("json");
    let room = created["id"].as_str().expect("a room id").to_owned();
    let (client, joined) =
        connect_and_join(server, token, json!({"type": "join", "room": room})).await;
    (room, client, joined)
}

/// Connects as the token's user, sends `join` once welcomed: the client
/// and its `joined` frame.
async fn connect_and_join(server: &CollabServer, token: &str, join: Value) -> (WsClient, Value) {
    let mut client = WsClient::connect(&server.ws_url(), token)
        .await
        .expect("connects");
    welcome(&mut client).await;
    client.send_json(&join).await.expect("sent");
    let joined = client
        .recv_type("joined", FRAME_TIMEOUT)
        .await
        .expect("joined");
    (client, joined)
}

fn is_colour(value: &Value) -> bool {
    value.as_str().is_some_and(|s| {
        s.len() == 7 && s.starts_with('#') && s[1..].bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// Runs `collab ARGS` to completion with none of our `COLLAB_*` variables.
fn run_collab(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(collab_binary().expect("collab binary"));
    for (name, _) in std::env::vars() {
        if name.starts_with("COLLAB_") {
            cmd.env_remove(name);
        }
    }
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("collab runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_is_healthy_ready_and_exports_metrics() {
    let server = start();
    assert_eq!(get(&server, "/healthz").await.0, 200);
    wait_for_status(&server, "/readyz", 200).await;
    let (status, metrics) = get(&server, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("collab_gateway_connections"),
        "metrics:\n{metrics}"
    );
}

/// The value of the sample `name` (no labels) in a Prometheus text page.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == name).then(|| value.parse().ok()).flatten()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_reports_its_commits_on_metrics() {
    let server = start();
    let token = server.dev_token("ann").await.expect("a dev token");
    let (_, before) = get(&server, "/metrics").await;
    let commits_before =
        sample(&before, "collab_store_group_commits_total").expect("group commits exported");
    assert_eq!(
        sample(&before, "collab_store_ops_total"),
        Some(0.0),
        "{before}"
    );
    let (room, mut client, _) = join_new_board(&server, &token).await;
    for (cid, text) in [("c1", "one"), ("c2", "two")] {
        let op = json!({"kind": "message", "text": text});
        client
            .send_json(&json!({"type": "op", "room": room, "cid": cid, "op": op}))
            .await
            .expect("sent");
        client.recv_type("ack", FRAME_TIMEOUT).await.expect("acked");
    }
    // An ack follows the commit, so the counters already hold both ops.
    let (_, after) = get(&server, "/metrics").await;
    assert_eq!(
        sample(&after, "collab_store_ops_total"),
        Some(2.0),
        "{after}"
    );
    assert_eq!(
        sample(&after, "collab_store_journaled_ops"),
        Some(2.0),
        "{after}"
    );
    let commits = sample(&after, "collab_store_group_commits_total").expect("group commits");
    assert!(commits >= commits_before + 2.0, "{after}");
    assert!(
        sample(&after, "collab_store_commit_seconds_total").is_some_and(|s| s > 0.0),
        "{after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dev_token_opens_a_websocket_that_is_welcomed() {
    let server = start();
    let token = server
        .dev_token_named("ann", Some("Ann"))
        .await
        .expect("a dev token");

    let mut by_query = WsClient::connect(&server.ws_url(), &token)
        .await
        .expect("upgrade with ?token=");
    let frame = welcome(&mut by_query).await;
    assert_eq!(frame["user"]["id"], "ann", "{frame}");
    assert_eq!(frame["user"]["name"], "Ann", "{frame}");
    assert!(is_colour(&frame["user"]["color"]), "{frame}");
    assert!(
        frame["conn"].as_str().is_some_and(|c| !c.is_empty()),
        "{frame}"
    );

    let mut by_header = WsClient::connect_with_header(&server.ws_url(), &token)
        .await
        .expect("upgrade with a bearer header");
    let second = welcome(&mut by_header).await;
    assert_eq!(
        second["user"]["color"], frame["user"]["color"],
        "a user's colour is stable"
    );
    assert_ne!(
        second["conn"], frame["conn"],
        "connections have their own ids"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_401_before_the_upgrade() {
    let server = start();
    let url = server.ws_url();
    let good = server.dev_token("ann").await.expect("a dev token");
    let mut forged = good.clone();
    // Change the signature's last character: same claims, wrong signature.
    let last = forged.pop().expect("a non-empty token");
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let other_secret = run_collab(
        &[
            "token",
            "--user",
            "ann",
            "--jwt-secret",
            "not-the-server-secret",
        ],
        &[],
    );
    assert!(other_secret.status.success());
    let other_secret = String::from_utf8_lossy(&other_secret.stdout)
        .trim()
        .to_owned();

    assert_eq!(upgrade_status(&url, None).await.expect("answered"), 401);
    assert_eq!(
        upgrade_status(&url, Some("not-a-jwt"))
            .await
            .expect("answered"),
        401
    );
    assert_eq!(
        upgrade_status(&url, Some(&forged)).await.expect("answered"),
        401
    );
    assert_eq!(
        upgrade_status(&url, Some(&other_secret))
            .await
            .expect("answered"),
        401
    );
    assert_eq!(
        upgrade_status(&url, Some(&good)).await.expect("answered"),
        101,
        "the untouched token is fine"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collab_token_mints_with_the_dev_secret_of_the_data_dir() {
    let server = start();
    let token = server
        .mint_token("cli-user", &["--name", "From CLI", "--ttl-secs", "600"])
        .expect("collab token mints");
    let mut client = WsClient::connect(&server.ws_url(), &token)
        .await
        .expect("the minted token is accepted");
    let frame = welcome(&mut client).await;
    assert_eq!(frame["user"]["id"], "cli-user", "{frame}");
    assert_eq!(frame["user"]["name"], "From CLI", "{frame}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_secret_dev_mode_is_off() {
    let server =
        CollabServer::start(ServerOptions::new().jwt_secret("a-test-secret-of-some-length"))
            .expect("collab serve starts");
    let response = server
        .http()
        .post(format!("{}/v1/dev/token", server.http_url()))
        .json(&json!({"user": "ann"}))
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status().as_u16(), 404, "no dev tokens");
    assert!(
        !server.data_dir().join("dev-secret").exists(),
        "no secret generated"
    );
    let token = server.mint_token("ann", &[]).expect("collab token mints");
    let mut client = WsClient::connect(&server.ws_url(), &token)
        .await
        .expect("a token signed with the configured secret is accepted");
    welcome(&mut client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_exits_64_before_touching_the_data_dir() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let data_arg = data.to_str().expect("utf-8 temp path");

    // Dev mode on a non-loopback address.
    let out = run_collab(
        &["serve", "--listen", "0.0.0.0:0", "--data-dir", data_arg],
        &[],
    );
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("loopback"),
        "{out:?}"
    );
    assert!(!data.exists(), "nothing written");
    // The metrics listener too.
    let out = run_collab(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "0.0.0.0:0",
            "--data-dir",
            data_arg,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("0.0.0.0:0 is not"),
        "{out:?}"
    );
    assert!(!data.exists(), "nothing written");

    // Several bad settings are reported together.
    let out = run_collab(
        &["serve", "--listen", "nowhere", "--data-dir", data_arg],
        &[
            ("COLLAB_ROOMS__MAX_BATCH", "many"),
            ("COLLAB_DRAIN_GRACE_SECS", "soon"),
        ],
    );
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in ["`listen`", "`rooms.max_batch`", "`drain_grace_secs`"] {
        assert!(stderr.contains(key), "{key} not reported:\n{stderr}");
    }
    assert!(!data.exists(), "nothing written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_sockets_with_1001_exits_0_and_a_restart_carries_on() {
    let mut server = start();
    let token = server.dev_token("ann").await.expect("a dev token");
    let mut client = WsClient::connect(&server.ws_url(), &token)
        .await
        .expect("connects");
    welcome(&mut client).await;

    server.signal_terminate().expect("SIGTERM sent");
    assert_eq!(
        client.recv_close(FRAME_TIMEOUT).await.expect("closed"),
        Some(1001),
        "going away"
    );
    let status = server.wait_exit(DEADLINE).expect("exits");
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(
        server.data_dir().join("collab.redb").is_file(),
        "the store is in the data dir"
    );
    assert!(server.data_dir().join("dev-secret").is_file());

    // Same data dir, same dev secret: the old token still works.
    server.restart().expect("restarts");
    wait_for_status(&server, "/readyz", 200).await;
    let mut client = WsClient::connect(&server.ws_url(), &token)
        .await
        .expect("the token outlives the restart");
    welcome(&mut client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acked_op_survives_a_graceful_restart() {
    let mut server = start();
    let token = server.dev_token("ann").await.expect("a dev token");
    let (room, mut client, joined) = join_new_board(&server, &token).await;
    assert_eq!(joined["head"], 0, "{joined}");
    let epoch = joined["epoch"].clone();
    // A message, not a stroke: a stroke left open when the socket closes
    // is ended by the server, which would race with the shutdown.
    let op = json!({"kind": "message", "text": "hello"});
    client
        .send_json(&json!({"type": "op", "room": room, "cid": "c1", "op": op}))
        .await
        .expect("sent");
    let ack = client.recv_type("ack", FRAME_TIMEOUT).await.expect("acked");
    assert_eq!(ack["seq"], 1, "{ack}");
    assert_eq!(ack["cid"], "c1", "{ack}");

    let status = server.terminate().expect("drains and exits");
    assert_eq!(status.code(), Some(0), "{status:?}");
    server.restart().expect("restarts");

    let rejoin = json!({"type": "join", "room": room, "since": 0, "epoch": epoch});
    let (_client, joined) = connect_and_join(&server, &token, rejoin).await;
    assert_eq!(joined["head"], 1, "{joined}");
    assert_eq!(joined["epoch"], epoch, "{joined}");
    assert_eq!(joined["reset"], false, "{joined}");
    let ops = joined["ops"].as_array().expect("ops");
    assert_eq!(ops.len(), 1, "{joined}");
    assert_eq!(ops[0]["seq"], 1);
    assert_eq!(ops[0]["cid"], "c1");
    assert_eq!(ops[0]["op"]["text"], "hello");
}
