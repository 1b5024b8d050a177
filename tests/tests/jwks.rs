//! RS256 and EdDSA tokens on a real `collab serve` that checks them against
//! a JWKS, and key rotation without a restart. The token minter holds the
//! private key (`collab token --key KID=FILE`), the server only the public
//! JWKS (`collab token jwks`). Rotating the file (a new kid in, the old
//! one out) is picked up by the first token naming the new kid, at most
//! one early reload per 10 seconds; a URL is reloaded on its schedule, and
//! a reload that fails keeps the keys loaded before. The keys are the
//! test-only ones of the gateway's `testdata/keys`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use collab_tests::harness::{CollabServer, ServerOptions, WsClient, collab_binary, upgrade_status};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// Long enough for the rate-limited early reload (one per 10 s) and a
/// slow machine.
const ROTATION_DEADLINE: Duration = Duration::from_secs(40);

fn key(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../services/gateway/testdata/keys")
        .join(file)
}

/// `--key` of `collab token`: `KID=FILE`.
fn key_arg(kid: &str, file: &str) -> String {
    format!("{kid}={}", key(file).display())
}

/// The public JWKS of `keys` (kid, file), as `collab token jwks` prints it.
fn jwks(keys: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(collab_binary().expect("the collab binary"));
    cmd.args(["token", "jwks"]);
    for (kid, file) in keys {
        cmd.arg("--key").arg(key_arg(kid, file));
    }
    let output = cmd.stdin(Stdio::null()).output().expect("runs");
    assert!(
        output.status.success(),
        "collab token jwks failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("utf-8");
    let set: Value = serde_json::from_str(&text).expect("a JSON JWK set");
    let kids: Vec<&str> = set["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["kid"].as_str().expect("a kid"))
        .collect();
    assert_eq!(kids, keys.iter().map(|(kid, _)| *kid).collect::<Vec<_>>());
    assert!(!text.contains("\"d\""), "a private key in the JWKS: {text}");
    text
}

/// Replaces `path` at once (write aside, rename), as a rotation should.
fn write(path: &Path, text: &str) {
    let aside = path.with_extension("new");
    std::fs::write(&aside, text).expect("writes");
    std::fs::rename(&aside, path).expect("renames");
}

/// A token for `user` signed by the key file named in `key` (`KID=FILE`).
fn signed(server: &CollabServer, user: &str, key: &str) -> String {
    server
        .mint_token(user, &["--key", key])
        .expect("collab token --key mints")
}

fn header(token: &str) -> (String, String) {
    let header = jsonwebtoken::decode_header(token).expect("a JWT");
    (format!("{:?}", header.alg), header.kid.unwrap_or_default())
}

async fn upgrade(server: &CollabServer, token: &str) -> u16 {
    upgrade_status(&server.ws_url(), Some(token))
        .await
        .expect("the upgrade is answered")
}

/// Polls the upgrade with `token` until it is answered `status`.
async fn until_upgrade(server: &CollabServer, token: &str, status: u16) -> bool {
    let start = Instant::now();
    while start.elapsed() < ROTATION_DEADLINE {
        if upgrade(server, token).await == status {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// Connects with `token` and returns the user the welcome names.
async fn welcome_user(server: &CollabServer, token: &str) -> String {
    let mut ws = WsClient::connect(&server.ws_url(), token)
        .await
        .expect("connects");
    let welcome = ws
        .recv_type("welcome", FRAME_TIMEOUT)
        .await
        .expect("welcome");
    let _ = ws.close().await;
    welcome["user"]["id"]
        .as_str()
        .expect("a user id")
        .to_owned()
}

/// `GET /v1/me/rooms` with `token`: the status and the body.
async fn me(server: &CollabServer, token: &str) -> (u16, Value) {
    server
        .get_json(token, "/v1/me/rooms")
        .await
        .expect("answered")
}

/// A sample of the server's `/metrics` page, 0 when it is not there.
async fn metric(server: &CollabServer, sample: &str) -> f64 {
    let page = server
        .http()
        .get(format!("{}/metrics", server.http_url()))
        .send()
        .await
        .expect("answered")
        .text()
        .await
        .expect("a page");
    page.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_rotated_jwks_file_takes_effect_without_a_restart() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("jwks.json");
    write(
        &path,
        &jwks(&[("r1", "rsa-1.pem"), ("e1", "ed25519-1.pem")]),
    );
    // No scheduled reload within the test: only the new kid causes one.
    let server = CollabServer::start(
        ServerOptions::new()
            .jwt_secret("the shared secret of HS256 tokens")
            .env("COLLAB_AUTH__JWKS", format!("file:{}", path.display()))
            .env("COLLAB_AUTH__JWKS_REFRESH_SECS", "3600"),
    )
    .expect("collab serve starts");

    let rs256 = signed(&server, "ann", &key_arg("r1", "rsa-1.pem"));
    let eddsa = signed(&server, "bob", &key_arg("e1", "ed25519-1.pem"));
    let hs256 = server.mint_token("cat", &[]).expect("mints");
    assert_eq!(header(&rs256), ("RS256".into(), "r1".into()));
    assert_eq!(header(&eddsa), ("EdDSA".into(), "e1".into()));
    assert_eq!(header(&hs256).0, "HS256");
    assert_eq!(welcome_user(&server, &rs256).await, "ann");
    assert_eq!(welcome_user(&server, &eddsa).await, "bob");
    assert_eq!(welcome_user(&server, &hs256).await, "cat");
    assert_eq!(me(&server, &eddsa).await.0, 200);
    assert_eq!(metric(&server, "collab_gateway_jwks_keys").await, 2.0);

    // A key the server does not know yet; and a known kid signed by
    // another key.
    let next = signed(&server, "ann", &key_arg("r2", "rsa-2.pem"));
    assert_eq!(upgrade(&server, &next).await, 401);
    let forged = signed(&server, "ann", &key_arg("r1", "rsa-2.pem"));
    assert_eq!(upgrade(&server, &forged).await, 401);

    // The rotation: r2 in, r1 out; e1 stays.
    write(
        &path,
        &jwks(&[("r2", "rsa-2.pem"), ("e1", "ed25519-1.pem")]),
    );
    assert!(
        until_upgrade(&server, &next, 101).await,
        "a token of the new key is still refused {ROTATION_DEADLINE:?} after the rotation"
    );
    assert_eq!(
        upgrade(&server, &rs256).await,
        401,
        "the removed key still works"
    );
    let (status, body) = me(&server, &rs256).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("r1"),
        "the refusal does not name the kid: {message}"
    );
    assert_eq!(welcome_user(&server, &next).await, "ann");
    assert_eq!(welcome_user(&server, &eddsa).await, "bob");
    assert_eq!(welcome_user(&server, &hs256).await, "cat");
    assert!(
        metric(
            &server,
            "collab_gateway_jwks_refreshes_total{result=\"ok\"}"
        )
        .await
            >= 2.0
    );
    assert_eq!(
        metric(
            &server,
            "collab_gateway_jwks_refreshes_total{result=\"error\"}"
        )
        .await,
        0.0
    );
}

/// Serves `body` at any path over plain HTTP/1.1, one request per
/// connection; `None` answers 503.
async fn serve_jwks(listener: TcpListener, body: Arc<Mutex<Option<String>>>) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let body = body.lock().expect("not poisoned").clone();
        tokio::spawn(async move {
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let response = match body {
                Some(text) => format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                    text.len()
                ),
                None => "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_owned(),
            };
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

#[tokio::test]
async fn a_jwks_url_is_reloaded_and_an_outage_keeps_the_last_keys() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let url = format!(
        "http://{}/.well-known/jwks.json",
        listener.local_addr().expect("an address")
    );
    let served = Arc::new(Mutex::new(Some(jwks(&[("e1", "ed25519-1.pem")]))));
    tokio::spawn(serve_jwks(listener, served.clone()));
    // Public keys only: no secret, and so no HS256 (and no dev mode).
    let options = ServerOptions::new()
        .env("COLLAB_AUTH__JWKS", url)
        .env("COLLAB_AUTH__JWKS_REFRESH_SECS", "1");
    // Starting waits for the server, which waits for the key server on
    // this runtime: off the runtime's thread.
    let server = tokio::task::spawn_blocking(move || CollabServer::start(options))
        .await
        .expect("the start did not panic")
        .expect("collab serve starts");
    let old = signed(&server, "ann", &key_arg("e1", "ed25519-1.pem"));
    let new = signed(&server, "bob", &key_arg("e2", "ed25519-2.pem"));
    assert_eq!(welcome_user(&server, &old).await, "ann");
    let hs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": "eve", "exp": 4_000_000_000u64}),
        &jsonwebtoken::EncodingKey::from_secret(b"any secret at all"),
    )
    .expect("encodes");
    assert_eq!(upgrade(&server, &hs256).await, 401);
    let dev_token = server
        .http()
        .post(format!("{}/v1/dev/token", server.http_url()))
        .body(r#"{"user":"eve"}"#)
        .send()
        .await
        .expect("answered");
    assert_eq!(
        dev_token.status().as_u16(),
        404,
        "a JWKS server is not in dev mode"
    );

    *served.lock().expect("not poisoned") = Some(jwks(&[("e2", "ed25519-2.pem")]));
    assert!(
        until_upgrade(&server, &new, 101).await,
        "the new key is never loaded from the URL"
    );
    assert!(
        until_upgrade(&server, &old, 401).await,
        "the removed key still works"
    );

    // The key server goes away: reloads fail, the keys stay.
    *served.lock().expect("not poisoned") = None;
    let errors = "collab_gateway_jwks_refreshes_total{result=\"error\"}";
    let start = Instant::now();
    while metric(&server, errors).await < 1.0 {
        assert!(
            start.elapsed() < ROTATION_DEADLINE,
            "no failed reload counted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(welcome_user(&server, &new).await, "bob");
    assert_eq!(metric(&server, "collab_gateway_jwks_keys").await, 1.0);
}
