//! The gateway's abuse limits on a real `collab serve`: each is exceeded,
//! the refusal carries the protocol's status and error body, and another
//! user (or address) is not affected. The socket limits are also tried on
//! two servers sharing a real redis-server (found through
//! `COLLAB_REDIS_SERVER`, as `scripts/test.sh` sets it), where a user's
//! and an address's sockets on both count.

use std::net::IpAddr;
use std::time::Duration;

use collab_ephemeral::testsuite::RedisServer;
use collab_tests::harness::{CollabServer, ServerOptions, WsClient, upgrade_refusal};
use collab_tests::metrics::sample;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
const HERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
/// Another source address of this machine: Linux routes all of 127/8 to
/// the loopback interface.
const ELSEWHERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

async fn connect_from(server: &CollabServer, token: &str, source: IpAddr) -> WsClient {
    let mut client = WsClient::connect_from(&server.ws_url(), token, None, Some(source))
        .await
        .expect("connects");
    client
        .recv_type("welcome", FRAME_TIMEOUT)
        .await
        .expect("welcome");
    client
}

#[track_caller]
fn assert_refusal(answer: &(u16, serde_json::Value), status: u16, code: &str, words: &str) {
    let (got, body) = answer;
    assert_eq!(*got, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(words), "{body}");
}

#[tokio::test]
async fn sockets_over_the_limit_of_a_user_or_an_address_are_refused() {
    let server = CollabServer::start(
        ServerOptions::new()
            .env("COLLAB_GATEWAY__MAX_SOCKETS_PER_USER", "2")
            .env("COLLAB_GATEWAY__MAX_SOCKETS_PER_ADDRESS", "4"),
    )
    .expect("starts");
    let url = server.ws_url();
    let ann = server.dev_token("ann").await.expect("token");
    let bob = server.dev_token("bob").await.expect("token");
    let cat = server.dev_token("cat").await.expect("token");

    let ann1 = connect_from(&server, &ann, HERE).await;
    let _ann2 = connect_from(&server, &ann, HERE).await;
    let refused = upgrade_refusal(&url, &ann, None, Some(ELSEWHERE))
        .await
        .expect("answer");
    assert_refusal(&refused, 429, "rate_limited", "for this user (at most 2)");

    // Another user from the same address is not affected, up to the
    // address's limit.
    let mut bob1 = connect_from(&server, &bob, HERE).await;
    let _bob2 = connect_from(&server, &bob, HERE).await;
    let refused = upgrade_refusal(&url, &cat, None, Some(HERE))
        .await
        .expect("answer");
    assert_refusal(
        &refused,
        429,
        "rate_limited",
        "from this address (at most 4)",
    );
    // Another address is not affected either.
    let _cat = connect_from(&server, &cat, ELSEWHERE).await;
    // Nor are the sockets already open.
    bob1.send_json(&serde_json::json!({"type": "ping", "id": 7}))
        .await
        .expect("sends");
    let pong = bob1.recv_type("pong", FRAME_TIMEOUT).await.expect("pong");
    assert_eq!(pong["id"], 7);

    // A closed socket frees its place once the server has seen it close.
    ann1.close().await.expect("closes");
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    let _ann3 = loop {
        match WsClient::connect_from(&url, &ann, None, Some(ELSEWHERE)).await {
            Ok(client) => break client,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "the closed socket's place never came back: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await; // poll interval
    };

    let page = server.metrics_page().await;
    for reason in ["sockets_per_user", "sockets_per_address"] {
        let series = format!("collab_gateway_refusals_total{{reason=\"{reason}\"}}");
        assert!(
            sample(&page, &series).is_some_and(|n| n >= 1.0),
            "{series}:\n{page}"
        );
    }
}

/// Polls an upgrade of `token` from `source` at `url` until it is refused
/// (the other gateway's sockets reach the presence records within a
/// fraction of a second); returns the refusal. An accepted socket is closed
/// as it is dropped.
async fn until_refused(url: &str, token: &str, source: IpAddr) -> (u16, serde_json::Value) {
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    loop {
        match upgrade_refusal(url, token, None, Some(source)).await {
            Ok(refusal) => return refusal,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "never refused: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await; // poll interval
    }
}

#[tokio::test]
async fn sockets_on_every_gateway_sharing_a_redis_count_against_the_user_and_address_limits() {
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .expect("redis-server starts");
    // Two servers sharing the Redis, as the gateways of a cluster do.
    let start = |gateway: &str| {
        CollabServer::start(
            ServerOptions::new()
                .jwt_secret("the secret both gateways share")
                .env("COLLAB_REDIS", redis.url())
                .env("COLLAB_GATEWAY__GATEWAY_ID", gateway)
                .env("COLLAB_GATEWAY__MAX_SOCKETS_PER_USER", "2")
                .env("COLLAB_GATEWAY__MAX_SOCKETS_PER_ADDRESS", "3"),
        )
        .expect("starts")
    };
    let (first, second) = (start("g1"), start("g2"));
    let token = |user: &str| first.mint_token(user, &[]).expect("mints");
    let (ann, bob, cat, dan) = (token("ann"), token("bob"), token("cat"), token("dan"));

    // Three sockets from one address, spread over both gateways; two of
    // them are ann's.
    let ann1 = connect_from(&first, &ann, HERE).await;
    let _ann2 = connect_from(&first, &ann, HERE).await;
    let _bob1 = connect_from(&second, &bob, HERE).await;
    // Ann's third is refused on the other gateway, from any address.
    let refused = until_refused(&second.ws_url(), &ann, ELSEWHERE).await;
    assert_refusal(&refused, 429, "rate_limited", "for this user (at most 2)");
    // A fourth from the address is refused on either, for any user.
    for server in [&first, &second] {
        let refused = until_refused(&server.ws_url(), &cat, HERE).await;
        assert_refusal(
            &refused,
            429,
            "rate_limited",
            "from this address (at most 3)",
        );
        let page = server.metrics_page().await;
        let series = "collab_gateway_refusals_total{reason=\"sockets_per_address\"}";
        assert!(
            sample(&page, series).is_some_and(|n| n >= 1.0),
            "{series}:\n{page}"
        );
    }
    // Another address is not affected, on either.
    let _cat1 = connect_from(&first, &cat, ELSEWHERE).await;
    let _cat2 = connect_from(&second, &cat, ELSEWHERE).await;

    // A socket closed on the first gateway frees a place on the second.
    ann1.close().await.expect("closes");
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    let mut again = loop {
        match WsClient::connect_from(&second.ws_url(), &dan, None, Some(HERE)).await {
            Ok(client) => break client,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "the closed socket's place never came back: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await; // poll interval
    };
    again
        .recv_type("welcome", FRAME_TIMEOUT)
        .await
        .expect("welcome");
}

#[tokio::test]
async fn a_connection_that_sends_no_request_in_time_is_dropped_and_others_are_served() {
    let server = CollabServer::start(
        ServerOptions::new().env("COLLAB_GATEWAY__HANDSHAKE_TIMEOUT_SECS", "1"),
    )
    .expect("starts");
    let ann = server.dev_token("ann").await.expect("token");
    let mut served = connect_from(&server, &ann, HERE).await;
    let opened = tokio::time::Instant::now();
    // Slowloris: a request line and one header, and then nothing.
    let mut slow = TcpStream::connect(server.addr()).await.expect("connects");
    slow.write_all(b"GET /v1/ws HTTP/1.1\r\nHost: collab\r\n")
        .await
        .expect("writes");
    let mut silent = TcpStream::connect(server.addr()).await.expect("connects");
    for stream in [&mut slow, &mut silent] {
        let mut buf = [0u8; 256];
        let read = tokio::time::timeout(FRAME_TIMEOUT, stream.read(&mut buf))
            .await
            .expect("dropped within the bound");
        // Closed without an answer (or reset).
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    assert!(opened.elapsed() >= Duration::from_millis(900));
    // The upgraded socket, older than the bound, is not affected, and a
    // client that asks in time is served.
    served
        .send_json(&serde_json::json!({"type": "ping", "id": 1}))
        .await
        .expect("sends");
    served.recv_type("pong", FRAME_TIMEOUT).await.expect("pong");
    let (status, _) = server
        .get_json(&ann, "/v1/me/rooms")
        .await
        .expect("answers");
    assert_eq!(status, 200);
}

/// A request that holds a place as long as its connection stays open: its
/// body never finishes.
async fn hold_a_place(server: &CollabServer, token: &str) -> TcpStream {
    let mut stream = TcpStream::connect(server.addr()).await.expect("connects");
    let head = format!(
        "POST /v1/rooms HTTP/1.1\r\nHost: collab\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{"
    );
    stream.write_all(head.as_bytes()).await.expect("writes");
    stream
}

#[tokio::test]
async fn requests_past_the_concurrency_cap_are_refused_and_probes_still_answer() {
    let server = CollabServer::start(
        ServerOptions::new().env("COLLAB_GATEWAY__MAX_CONCURRENT_REQUESTS", "2"),
    )
    .expect("starts");
    let ann = server.dev_token("ann").await.expect("token");
    let bob = server.dev_token("bob").await.expect("token");
    // Two requests whose bodies never finish hold both places.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(hold_a_place(&server, &ann).await);
    }
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    loop {
        let (status, body) = server
            .get_json(&bob, "/v1/me/rooms")
            .await
            .expect("answers");
        if status == 503 {
            assert_eq!(body["error"]["code"], "unavailable", "{body}");
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains("too many requests in progress"), "{body}");
            break;
        }
        assert_eq!(status, 200, "{body}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "never refused; server log:\n{}",
            server.logs().join("\n")
        );
        // A held request that came while this one had a place was refused
        // (or answered): send it again.
        for stream in &mut held {
            let mut buf = [0u8; 512];
            if !matches!(stream.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            {
                *stream = hold_a_place(&server, &ann).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await; // poll interval
    }
    // The probes and the metrics are never refused.
    for probe in ["/healthz", "/readyz"] {
        let status = server
            .http()
            .get(format!("{}{probe}", server.http_url()))
            .send()
            .await
            .expect("answers")
            .status();
        assert_eq!(status, 200, "{probe}");
    }
    let page = server.metrics_page().await;
    let series = r#"collab_gateway_refusals_total{reason="overloaded"}"#;
    assert!(sample(&page, series).is_some_and(|n| n >= 1.0), "{page}");
    // Once the held requests end, their places serve others again.
    drop(held);
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    loop {
        let (status, body) = server
            .get_json(&bob, "/v1/me/rooms")
            .await
            .expect("answers");
        if status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still refused: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await; // poll interval
    }
}

#[tokio::test]
async fn browsers_from_origins_not_allowed_are_refused_and_others_connect() {
    let server = CollabServer::start(
        ServerOptions::new().env("COLLAB_GATEWAY__ALLOWED_ORIGINS", "https://app.example.com"),
    )
    .expect("starts");
    let url = server.ws_url();
    let ann = server.dev_token("ann").await.expect("token");
    let refused = upgrade_refusal(&url, &ann, Some("https://evil.example"), None)
        .await
        .expect("answer");
    assert_refusal(&refused, 403, "forbidden", "https://evil.example");
    let own = format!("http://{}", server.addr());
    // Listed, the server's own pages, a loopback page in dev mode, and no
    // browser at all.
    for origin in [
        Some("https://app.example.com"),
        Some(own.as_str()),
        Some("http://localhost:5173"),
        None,
    ] {
        let mut client = WsClient::connect_from(&url, &ann, origin, None)
            .await
            .unwrap_or_else(|e| panic!("{origin:?}: {e}"));
        client
            .recv_type("welcome", FRAME_TIMEOUT)
            .await
            .expect("welcome");
    }
    let page = server.metrics_page().await;
    let series = r#"collab_gateway_refusals_total{reason="origin"}"#;
    assert_eq!(sample(&page, series), Some(1.0), "{page}");
}

#[tokio::test]
async fn loopback_pages_are_foreign_outside_dev_mode() {
    let server =
        CollabServer::start(ServerOptions::new().jwt_secret("abuse-test-secret")).expect("starts");
    let url = server.ws_url();
    let ann = server.mint_token("ann", &[]).expect("token");
    let refused = upgrade_refusal(&url, &ann, Some("http://localhost:5173"), None)
        .await
        .expect("answer");
    assert_refusal(&refused, 403, "forbidden", "http://localhost:5173");
    let own = format!("http://{}", server.addr());
    let mut client = WsClient::connect_from(&url, &ann, Some(&own), None)
        .await
        .expect("its own pages connect");
    client
        .recv_type("welcome", FRAME_TIMEOUT)
        .await
        .expect("welcome");
}

#[tokio::test]
async fn rooms_past_a_users_count_are_refused_until_one_is_deleted() {
    let server = CollabServer::start(
        ServerOptions::new()
            .env("COLLAB_GATEWAY__MAX_ROOMS_PER_USER", "2")
            .env("COLLAB_GATEWAY__MAX_MEMBERS_PER_ROOM", "2"),
    )
    .expect("starts");
    let ann = server.dev_token("ann").await.expect("token");
    let bob = server.dev_token("bob").await.expect("token");
    let create = |token: &str, body: serde_json::Value| {
        let request = server
            .http()
            .post(format!("{}/v1/rooms", server.http_url()))
            .bearer_auth(token)
            .json(&body);
        async move {
            let response = request.send().await.expect("answers");
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.expect("json");
            (status, body)
        }
    };
    assert_eq!(
        create(&ann, serde_json::json!({"kind": "board", "id": "a1"}))
            .await
            .0,
        201
    );
    assert_eq!(
        create(&ann, serde_json::json!({"kind": "board", "id": "a2"}))
            .await
            .0,
        201
    );
    let refused = create(&ann, serde_json::json!({"kind": "board", "id": "a3"})).await;
    assert_refusal(&refused, 429, "rate_limited", "created 2 rooms");
    let refused = create(
        &bob,
        serde_json::json!({"kind": "channel", "id": "b1", "members": ["ann", "cat"]}),
    )
    .await;
    assert_refusal(&refused, 413, "too_large", "at most 2 members");
    // Another user is not affected.
    assert_eq!(
        create(
            &bob,
            serde_json::json!({"kind": "channel", "id": "b1", "members": ["ann"]})
        )
        .await
        .0,
        201
    );
    // A deleted room frees its place.
    let status = server
        .http()
        .delete(format!("{}/v1/rooms/a1", server.http_url()))
        .bearer_auth(&ann)
        .send()
        .await
        .expect("answers")
        .status();
    assert_eq!(status, 204);
    assert_eq!(
        create(&ann, serde_json::json!({"kind": "board", "id": "a3"}))
            .await
            .0,
        201
    );
}
