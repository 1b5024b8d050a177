//! Short runs of the generator (seconds, a few dozen clients) against a
//! real `collab serve` and the in-process bare relay: every op must reach
//! every member exactly once and in order, every op must be acked.

use std::time::Duration;

use collab_load::latejoin::{self, LateJoinOptions};
use collab_load::publish::{self, PublishOptions};
use collab_load::run::{RunOptions, RunResult, Spawn, run};
use collab_load::scenario::Scenario;
use collab_load::target::{Auth, Target, TargetKind};
use collab_tests::harness::{CollabServer, ServerOptions};

const SECRET: &str = "smoke-test-secret-of-enough-length";

fn collab_target(server: &CollabServer) -> Target {
    Target {
        kind: TargetKind::Collab,
        ws_urls: vec![server.ws_url()],
        http_url: Some(server.http_url()),
        auth: Auth::Secret(SECRET.to_owned()),
    }
}

fn options(target: Target, scenario: Scenario, server_pid: Option<u32>) -> RunOptions {
    RunOptions {
        target,
        scenario,
        duration: Duration::from_secs(2),
        warmup: Duration::ZERO,
        // An upper bound: the run ends as soon as everything arrived.
        drain: Duration::from_secs(10),
        workers: 2,
        spawn: Spawn::Threads,
        source_ips: 4,
        connect_concurrency: 16,
        server_pid,
        watch: Vec::new(),
        progress: false,
    }
}

fn assert_lossless(r: &RunResult) {
    let c = &r.counters;
    assert!(c.ops_sent > 0, "nothing sent: {c:?}");
    assert_eq!(c.ops_delivered, c.ops_expected, "deliveries: {c:?}");
    assert_eq!(c.ops_lost, 0, "{c:?}");
    assert_eq!(c.acked, c.ops_sent, "acks: {c:?}");
    assert!(r.clean, "not clean: {c:?}");
    assert_eq!(r.latency.op.count, c.ops_delivered);
    assert!(r.latency.op.p50_ms > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boards_classroom_and_chat_on_collab_serve_lose_nothing() {
    let server =
        CollabServer::start(ServerOptions::new().jwt_secret(SECRET)).expect("collab serve");
    let target = collab_target(&server);

    let boards = Scenario::Boards {
        boards: 4,
        users: 3,
        ops_per_sec: 20.0,
        cursor_hz: 10.0,
    };
    let r = run(&options(target.clone(), boards, server.pid()))
        .await
        .expect("boards run");
    assert_lossless(&r);
    // 4 boards × 1 drawer × 20 ops/s × 2 s, each to 3 members.
    assert_eq!(r.counters.ops_sent, 160);
    assert_eq!(r.counters.ops_expected, 480);
    assert!(r.counters.cursors_delivered > 0);
    assert!(r.server.as_ref().is_some_and(|s| s.rss_max_bytes > 0));

    let classroom = Scenario::Classroom {
        rooms: 2,
        users: 5,
        cursor_hz: 5.0,
        stroke_secs: 1.0,
    };
    let r = run(&options(target.clone(), classroom, None))
        .await
        .expect("classroom run");
    assert_lossless(&r);

    let chat = Scenario::Chat {
        channels: 3,
        users: 4,
        messages_per_sec: 4.0,
    };
    let r = run(&options(target, chat, None)).await.expect("chat run");
    assert_lossless(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_join_gets_the_whole_board() {
    let server =
        CollabServer::start(ServerOptions::new().jwt_secret(SECRET)).expect("collab serve");
    let r = latejoin::run(&LateJoinOptions {
        target: collab_target(&server),
        ops: 400,
        writers: 4,
        writer_rate: 150.0,
        joiners: 2,
        source_ips: 4,
    })
    .await
    .expect("late-join run");
    assert!(r.clean, "{r:?}");
    assert_eq!(r.head, 400);
    assert_eq!(r.joins.len(), 2);
    assert_eq!(r.joins[0].strokes, 40);
}

/// Within the default per-user limits: 4 service users, a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_ops_are_all_stored_once() {
    let server =
        CollabServer::start(ServerOptions::new().jwt_secret(SECRET)).expect("collab serve");
    for (rooms, batch) in [(1, 1), (3, 5)] {
        let r = publish::run(&PublishOptions {
            target: collab_target(&server),
            rooms,
            senders: 4,
            batch,
            seconds: 1.0,
        })
        .await
        .expect("publish run");
        assert!(r.clean, "{r:?}");
        assert!(r.requests > 0 && r.failed == 0, "{r:?}");
        assert!(r.ops_per_sec > 0.0, "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_relay_loses_nothing() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let relay = tokio::spawn(collab_load::relay::serve(listener));
    let target = Target {
        kind: TargetKind::Relay,
        ws_urls: vec![format!("ws://{addr}")],
        http_url: None,
        auth: Auth::None,
    };
    let boards = Scenario::Boards {
        boards: 4,
        users: 3,
        ops_per_sec: 20.0,
        cursor_hz: 10.0,
    };
    let r = run(&options(target.clone(), boards.clone(), None))
        .await
        .expect("relay run");
    assert_lossless(&r);
    assert_eq!(r.counters.ops_expected, 480);
    // The relay forwards every cursor: nothing coalesced.
    assert_eq!(r.counters.cursors_delivered, r.counters.cursors_expected);

    // With a second of warm-up: three seconds of traffic, all of it
    // checked, the last two measured.
    let mut warm = options(target, boards, None);
    warm.warmup = Duration::from_secs(1);
    let r = run(&warm).await.expect("relay run with warm-up");
    let c = &r.counters;
    assert_eq!(c.ops_sent, 240, "{c:?}");
    assert_eq!((c.ops_delivered, c.ops_lost), (720, 0), "{c:?}");
    assert!(r.clean, "{c:?}");
    // Each drawer's ops are due every 50 ms from a phase under 50 ms: 40
    // of its 60 are due from the end of the first second on.
    assert_eq!(r.latency.op.count, 4 * 40 * 3);
    assert_eq!((r.duration_s, r.warmup_s), (2.0, 1.0));
    assert_eq!(r.timeline.len(), 3);
    relay.abort();
}

/// Runs the `collab-load` binary to its end (at most `within`): its exit
/// status and what it wrote to stderr.
fn run_binary(args: &[&str], within: Duration) -> (std::process::ExitStatus, String) {
    use std::io::Read;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_collab-load"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start collab-load");
    let deadline = std::time::Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("collab-load {args:?} still ran after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50)); // poll interval
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    (status, stderr)
}

#[test]
fn a_run_against_nothing_stops_with_an_error() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    // Its workers are processes (the default): a worker whose setup failed
    // once hung, and its parent with it.
    let (status, stderr) = run_binary(
        &["boards", "--boards", "2", "--seconds", "1", "--url", &url],
        Duration::from_secs(60),
    );
    assert!(!status.success(), "exited 0; stderr: {stderr}");
    assert!(stderr.contains("creating rooms"), "stderr: {stderr}");

    let (status, stderr) = run_binary(
        &[
            "boards",
            "--boards",
            "2",
            "--url",
            "http://127.0.0.1:180231566",
        ],
        Duration::from_secs(60),
    );
    assert!(!status.success(), "exited 0; stderr: {stderr}");
    assert!(stderr.contains("invalid port"), "stderr: {stderr}");
}
