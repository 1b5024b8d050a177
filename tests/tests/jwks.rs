//! RS256 and EdDSA tokens on a real `collab serve` that checks them against
//! a JWKS, and key rotation without a restart. The token minter holds the
//! private key (`collab token --key KID=FILE`), the server only the public
//! JWKS (`collab token jwks`). Rotating the file (a new kid in, the old
//! one out) is picked up by the first token naming the new kid, which is
//! accepted, at the upgrade and on HTTP; a URL is reloaded on its
//! schedule, and a reload that fails keeps the keys loaded before. A URL
//! is https, checked against the roots `SSL_CERT_FILE` names (here a CA
//! made by the test), or plain http only where explicitly allowed. The
//! keys are the test-only ones of the gateway's `testdata/keys`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use collab_tests::harness::{
    CollabServer, HarnessError, ServerOptions, WsClient, collab_binary, upgrade_status,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::PrivatePkcs8KeyDer;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

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
    let page = server.metrics_page().await;
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
    // No scheduled reload within the test: only unknown kids cause one,
    // each of them (no gap between such reloads).
    let server = CollabServer::start(
        ServerOptions::new()
            .jwt_secret("the shared secret of HS256 tokens")
            .env("COLLAB_AUTH__JWKS", format!("file:{}", path.display()))
            .env("COLLAB_AUTH__JWKS_REFRESH_SECS", "3600")
            .env("COLLAB_AUTH__JWKS_RELOAD_GAP_SECS", "0"),
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

    // A key the server does not have (the reload it causes does not bring
    // it); and a known kid signed by another key.
    let stranger = signed(&server, "ann", &key_arg("r3", "rsa-2.pem"));
    assert_eq!(upgrade(&server, &stranger).await, 401);
    let forged = signed(&server, "ann", &key_arg("r1", "rsa-2.pem"));
    assert_eq!(upgrade(&server, &forged).await, 401);

    // The rotation: r2 in, r1 out; e1 stays. The first token naming r2,
    // never seen before, is accepted: its check waits for the reload.
    write(
        &path,
        &jwks(&[("r2", "rsa-2.pem"), ("e1", "ed25519-1.pem")]),
    );
    let next = signed(&server, "ann", &key_arg("r2", "rsa-2.pem"));
    assert_eq!(
        upgrade(&server, &next).await,
        101,
        "the first use of the new key is refused"
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
    // Another key rotated in, first used on an HTTP request.
    write(
        &path,
        &jwks(&[
            ("r2", "rsa-2.pem"),
            ("e1", "ed25519-1.pem"),
            ("e2", "ed25519-2.pem"),
        ]),
    );
    let (status, body) = me(
        &server,
        &signed(&server, "dan", &key_arg("e2", "ed25519-2.pem")),
    )
    .await;
    assert_eq!(
        status, 200,
        "the first use of the new key is refused: {body}"
    );
    assert!(
        metric(
            &server,
            "collab_gateway_jwks_refreshes_total{result=\"ok\"}"
        )
        .await
            >= 4.0
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

/// Serves `body` at any path over HTTP/1.1, one request per connection,
/// in TLS when `tls` is given; `None` answers 503.
async fn serve_jwks(
    listener: TcpListener,
    body: Arc<Mutex<Option<String>>>,
    tls: Option<TlsAcceptor>,
) {
    while let Ok((stream, _)) = listener.accept().await {
        let body = body.lock().expect("not poisoned").clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                Some(tls) => {
                    if let Ok(stream) = tls.accept(stream).await {
                        answer(stream, body).await;
                    }
                }
                None => answer(stream, body).await,
            }
        });
    }
}

/// Reads one request's head from `stream` and answers it with `body`.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, body: Option<String>) {
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
        None => {
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                .to_owned()
        }
    };
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// A certificate authority made for one test, and a certificate it signed
/// for 127.0.0.1.
struct TestTls {
    /// The authority's certificate, in PEM: what a client trusts.
    ca_pem: String,
    acceptor: TlsAcceptor,
}

impl TestTls {
    /// `authority`: the CA's name.
    fn new(authority: &str) -> TestTls {
        let ca_key = KeyPair::generate().expect("a CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, authority);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).expect("a CA certificate");
        let issuer = Issuer::new(ca, ca_key);

        let key = KeyPair::generate().expect("a server key");
        let mut server =
            CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("server params");
        server
            .distinguished_name
            .push(DnType::CommonName, "collab test key server");
        let cert = server
            .signed_by(&key, &issuer)
            .expect("a server certificate");

        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        )
        .expect("a server config");
        TestTls {
            ca_pem: ca_cert.pem(),
            acceptor: TlsAcceptor::from(Arc::new(config)),
        }
    }
}

/// Starts `collab serve` with `options` off the runtime's thread: it
/// waits for its key server, which runs on this runtime.
async fn start_off_runtime(options: ServerOptions) -> Result<CollabServer, HarnessError> {
    tokio::task::spawn_blocking(move || CollabServer::start(options))
        .await
        .expect("the start did not panic")
}

#[tokio::test]
async fn a_jwks_over_https_is_trusted_through_the_ca_roots_and_plain_http_must_be_allowed() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let tls = TestTls::new("collab test CA");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let port = listener.local_addr().expect("an address").port();
    let served = Arc::new(Mutex::new(Some(jwks(&[("e1", "ed25519-1.pem")]))));
    tokio::spawn(serve_jwks(
        listener,
        served.clone(),
        Some(tls.acceptor.clone()),
    ));
    let url = format!("https://127.0.0.1:{port}/.well-known/jwks.json");
    // The roots come from the system, or from SSL_CERT_FILE instead.
    let roots = |pem: &str, name: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).expect("writes");
        path.display().to_string()
    };

    // Roots that do not include the key server's authority: its
    // certificate is refused, the keys never load, and the server does
    // not start.
    let stranger = roots(&TestTls::new("another test CA").ca_pem, "another-ca.pem");
    let refused = start_off_runtime(
        ServerOptions::new()
            .env("COLLAB_AUTH__JWKS", &url)
            .env("SSL_CERT_FILE", stranger),
    )
    .await;
    let Err(why) = refused else {
        panic!("a key server with a certificate nobody trusts was used");
    };
    let why = why.to_string();
    assert!(
        why.contains("cannot read the jwks") && why.contains("invalid peer certificate"),
        "{why}"
    );

    // Trusting the authority: the keys load over https.
    let trusted = roots(&tls.ca_pem, "test-ca.pem");
    let server = start_off_runtime(
        ServerOptions::new()
            .env("COLLAB_AUTH__JWKS", &url)
            .env("SSL_CERT_FILE", trusted),
    )
    .await
    .expect("collab serve starts with the keys served over https");
    let token = signed(&server, "ann", &key_arg("e1", "ed25519-1.pem"));
    assert_eq!(welcome_user(&server, &token).await, "ann");
    let other = signed(&server, "bob", &key_arg("e1", "ed25519-2.pem"));
    assert_eq!(upgrade(&server, &other).await, 401);

    // The same keys over plain http: refused unless explicitly allowed
    // (the test below allows it).
    let plain = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let plain_url = format!(
        "http://{}/.well-known/jwks.json",
        plain.local_addr().expect("an address")
    );
    tokio::spawn(serve_jwks(plain, served, None));
    let Err(why) =
        start_off_runtime(ServerOptions::new().env("COLLAB_AUTH__JWKS", &plain_url)).await
    else {
        panic!("a JWKS over plain http was used without jwks_allow_http");
    };
    let why = why.to_string();
    assert!(
        why.contains("auth.jwks") && why.contains("jwks_allow_http"),
        "{why}"
    );
}

#[tokio::test]
async fn a_jwks_url_is_reloaded_and_an_outage_keeps_the_last_keys() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let url = format!(
        "http://{}/.well-known/jwks.json",
        listener.local_addr().expect("an address")
    );
    let served = Arc::new(Mutex::new(Some(jwks(&[("e1", "ed25519-1.pem")]))));
    tokio::spawn(serve_jwks(listener, served.clone(), None));
    // Public keys only: no secret, and so no HS256 (and no dev mode).
    // Plain http, which must be allowed explicitly.
    let options = ServerOptions::new()
        .env("COLLAB_AUTH__JWKS", url)
        .env("COLLAB_AUTH__JWKS_ALLOW_HTTP", "true")
        .env("COLLAB_AUTH__JWKS_REFRESH_SECS", "1");
    let server = start_off_runtime(options)
        .await
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
