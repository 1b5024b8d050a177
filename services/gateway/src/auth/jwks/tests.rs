//! The key set: what a JWKS document yields, loading errors, rotation of a
//! file (picked up by the first token naming the new `kid`) and of a URL
//! (picked up by the periodic refresh), tokens sharing one early reload,
//! the early reload's rate limit, and a failed refresh keeping the last
//! good keys. Keys are the test-only PEM files in
//! `testdata/keys`.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use collab_protocol::Claims;
use serde_json::{Value, json};

use super::*;
use crate::auth::{Auth, AuthError, AuthOptions, Signer, now_secs};

const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/keys");
/// How long a refresh may take to show.
const DEADLINE: Duration = Duration::from_secs(10);
const HOUR: Duration = Duration::from_secs(3600);

fn signer(file: &str, kid: &str) -> Signer {
    let pem = std::fs::read(Path::new(KEYS).join(file)).expect("a test key");
    Signer::from_pem(&pem, kid).expect("an RSA or Ed25519 key")
}

fn jwks(signers: &[&Signer]) -> String {
    let set = JwkSet {
        keys: signers
            .iter()
            .map(|s| s.public_jwk().expect("a public key"))
            .collect(),
    };
    serde_json::to_string(&set).expect("serializes")
}

/// Replaces `path` at once (write aside, rename), as an operator should.
fn write(path: &Path, text: &str) {
    let aside = path.with_extension("new");
    std::fs::write(&aside, text).expect("writes");
    std::fs::rename(&aside, path).expect("renames");
}

fn claims() -> Claims {
    Claims {
        sub: "ann".into(),
        exp: now_secs() + 60,
        name: None,
        rooms: None,
        scope: None,
        jti: None,
        iat: None,
    }
}

async fn jwks_auth(source: JwksSource, refresh: Duration, gap: Duration) -> (Auth, KeySetMetrics) {
    let metrics = KeySetMetrics::default();
    let options = AuthOptions {
        secret: None,
        dev_mode: false,
        jwks: Some(JwksOptions {
            source,
            refresh,
            early_refresh_gap: gap,
        }),
        algorithms: JWKS_ALGORITHMS.to_vec(),
    };
    let auth = Auth::build(options, metrics.clone())
        .await
        .expect("the key set loads");
    (auth, metrics)
}

fn refreshes(metrics: &KeySetMetrics, result: &'static str) -> u64 {
    metrics
        .refreshes
        .get_or_create(&ResultLabel { result })
        .get()
}

/// Polls `check` until it holds or [`DEADLINE`] passes.
async fn eventually(mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < DEADLINE {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

#[test]
fn sources() {
    assert_eq!(
        JwksSource::parse("file:/etc/collab/jwks.json").ok(),
        Some(JwksSource::File("/etc/collab/jwks.json".into()))
    );
    assert_eq!(
        JwksSource::parse("file:///etc/collab/jwks.json").ok(),
        Some(JwksSource::File("/etc/collab/jwks.json".into()))
    );
    assert_eq!(
        JwksSource::parse("file:keys.json").ok(),
        Some(JwksSource::File("keys.json".into()))
    );
    assert_eq!(
        JwksSource::parse(" https://id.example.com/.well-known/jwks.json ").ok(),
        Some(JwksSource::Url(
            "https://id.example.com/.well-known/jwks.json".into()
        ))
    );
    for bad in [
        "",
        "file:",
        "/etc/jwks.json",
        "ftp://x/jwks",
        "https://",
        "jwks",
    ] {
        assert!(
            matches!(JwksSource::parse(bad), Err(JwksError::BadSource(_))),
            "{bad:?} is accepted"
        );
    }
}

#[test]
fn only_signing_keys_with_a_kid_for_rs256_or_eddsa_are_kept() {
    let rsa = signer("rsa-1.pem", "r1");
    let ed = signer("ed25519-1.pem", "e1");
    let rsa_jwk = serde_json::to_value(rsa.public_jwk().expect("jwk")).expect("json");
    let ed_jwk = serde_json::to_value(ed.public_jwk().expect("jwk")).expect("json");
    let with = |mut jwk: Value, key: &str, value: Value| {
        jwk[key] = value;
        jwk
    };
    let mut no_kid = ed_jwk.clone();
    no_kid.as_object_mut().expect("object").remove("kid");
    let doc = json!({"keys": [
        rsa_jwk.clone(),
        ed_jwk.clone(),
        no_kid,
        with(with(rsa_jwk.clone(), "kid", json!("enc")), "use", json!("enc")),
        // An Ed25519 key that claims to be for RS256.
        with(with(ed_jwk.clone(), "kid", json!("liar")), "alg", json!("RS256")),
        // RS384 is not accepted.
        with(with(rsa_jwk.clone(), "kid", json!("r384")), "alg", json!("RS384")),
        {"kty": "EC", "crv": "P-256", "kid": "ec", "x": "AA", "y": "AA"},
    ]});
    let Ok(keys) = parse(doc.to_string().as_bytes()) else {
        panic!("parses");
    };
    assert_eq!(sorted_kids(&keys), ["e1", "r1"]);
    assert_eq!(keys["r1"].algorithm, Algorithm::RS256);
    assert_eq!(keys["e1"].algorithm, Algorithm::EdDSA);
}

#[tokio::test]
async fn a_set_that_cannot_be_loaded_fails_at_start_up() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let empty = dir.path().join("empty.json");
    std::fs::write(&empty, r#"{"keys": []}"#).expect("writes");
    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, "not json").expect("writes");
    let metrics = KeySetMetrics::default();
    let load = |path: &Path| {
        KeySet::load(
            JwksOptions::new(JwksSource::File(path.to_owned()), HOUR),
            metrics.clone(),
        )
    };
    assert!(matches!(load(&empty).await, Err(JwksError::NoKeys(_))));
    assert!(matches!(load(&garbage).await, Err(JwksError::Parse { .. })));
    let missing = load(&dir.path().join("missing.json")).await;
    let Err(JwksError::Read { source_name, .. }) = missing else {
        panic!("a missing file is loaded");
    };
    assert!(source_name.ends_with("missing.json"), "{source_name}");
    assert_eq!(refreshes(&metrics, "error"), 3);
    assert_eq!(refreshes(&metrics, "ok"), 0);
}

#[tokio::test]
async fn a_rotated_file_is_picked_up_by_the_first_token_naming_the_new_kid() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("jwks.json");
    let (old, new) = (signer("rsa-1.pem", "r1"), signer("rsa-2.pem", "r2"));
    write(&path, &jwks(&[&old]));
    // No scheduled refresh within the test: only the unknown kid can
    // cause one.
    let (auth, metrics) = jwks_auth(JwksSource::File(path.clone()), HOUR, Duration::ZERO).await;
    let old_token = old.mint(&claims()).expect("mints");
    let new_token = new.mint(&claims()).expect("mints");
    assert!(auth.verify(&old_token).await.is_ok());
    // Not published yet: refused after the reload it caused.
    assert_eq!(
        auth.verify(&new_token).await,
        Err(AuthError::UnknownKey("r2".into()))
    );
    assert_eq!(refreshes(&metrics, "ok"), 2);

    write(&path, &jwks(&[&new]));
    // The first use of the new key, not a retry, is accepted.
    assert_eq!(auth.verify(&new_token).await, Ok(claims_of(&new_token)));
    assert_eq!(refreshes(&metrics, "ok"), 3);
    assert_eq!(
        auth.verify(&old_token).await,
        Err(AuthError::UnknownKey("r1".into()))
    );
    assert_eq!(metrics.keys.get(), 1);
}

/// The claims `token` carries, unverified.
fn claims_of(token: &str) -> Claims {
    jsonwebtoken::dangerous::insecure_decode::<Claims>(token)
        .expect("a JWT")
        .claims
}

/// Serves `body` at `/jwks.json` over http, counting the requests; while
/// `open` is false, requests wait for it. Returns the URL.
async fn serve_jwks(
    body: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
    open: watch::Receiver<bool>,
) -> String {
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let body = body.clone();
            let mut open = open.clone();
            hits.fetch_add(1, Ordering::SeqCst);
            async move {
                let _ = open.wait_for(|open| *open).await;
                body.lock().expect("not poisoned").clone()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/jwks.json")
}

#[tokio::test]
async fn tokens_with_the_same_unknown_kid_share_one_reload() {
    let (old, new) = (signer("ed25519-1.pem", "e1"), signer("ed25519-2.pem", "e2"));
    let served = Arc::new(Mutex::new(jwks(&[&old])));
    let hits = Arc::new(AtomicUsize::new(0));
    let (open, gate) = watch::channel(true);
    let url = serve_jwks(served.clone(), hits.clone(), gate).await;
    // No gap between early reloads: only the sharing keeps them to one.
    let set = KeySet::load(
        JwksOptions {
            source: JwksSource::Url(url),
            refresh: HOUR,
            early_refresh_gap: Duration::ZERO,
        },
        KeySetMetrics::default(),
    )
    .await
    .expect("loads");
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // The key server is slow to answer the reload: the tokens pile up.
    open.send_replace(false);
    *served.lock().expect("not poisoned") = jwks(&[&old, &new]);
    const TOKENS: usize = 20;
    let lookups: Vec<_> = (0..TOKENS)
        .map(|_| {
            let set = set.clone();
            tokio::spawn(async move { set.find("e2").await.is_some() })
        })
        .collect();
    // Every token waits for the one reload under way.
    assert!(
        eventually(|| {
            hits.load(Ordering::SeqCst) == 2 && set.inner.finished.receiver_count() == TOKENS
        })
        .await,
        "the tokens do not all wait for one reload: {} requests, {} waiting",
        hits.load(Ordering::SeqCst),
        set.inner.finished.receiver_count()
    );
    open.send_replace(true);
    for lookup in lookups {
        assert!(lookup.await.expect("no panic"), "the new key was not found");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 2, "more than one reload");
}

#[tokio::test]
async fn an_unknown_kid_reloads_early_at_most_once_per_gap() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("jwks.json");
    write(&path, &jwks(&[&signer("ed25519-1.pem", "e1")]));
    let source = JwksSource::File(path);
    let metrics = KeySetMetrics::default();
    let rate_limited = KeySet::load(
        JwksOptions {
            source: source.clone(),
            refresh: HOUR,
            early_refresh_gap: HOUR,
        },
        metrics.clone(),
    )
    .await
    .expect("loads");
    // Within the gap of the start-up load: refused at once, no reload.
    assert!(rate_limited.find("nope").await.is_none());
    assert!(rate_limited.find("nope").await.is_none());
    assert_eq!(refreshes(&metrics, "ok"), 1);

    let metrics = KeySetMetrics::default();
    let eager = KeySet::load(
        JwksOptions {
            source,
            refresh: HOUR,
            early_refresh_gap: Duration::ZERO,
        },
        metrics.clone(),
    )
    .await
    .expect("loads");
    assert!(eager.find("nope").await.is_none());
    assert_eq!(
        refreshes(&metrics, "ok"),
        2,
        "the lookup waited for its reload"
    );
    assert!(eager.find("e1").await.is_some());
    assert_eq!(refreshes(&metrics, "ok"), 2, "a known kid reloads nothing");
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_last_good_keys() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("jwks.json");
    let key = signer("ed25519-1.pem", "e1");
    write(&path, &jwks(&[&key]));
    let (auth, metrics) = jwks_auth(JwksSource::File(path.clone()), HOUR, Duration::ZERO).await;
    write(&path, "{\"keys\": [");
    // An unknown kid waits for the reload it asks for, which fails.
    let stranger = signer("ed25519-2.pem", "e2")
        .mint(&claims())
        .expect("mints");
    assert_eq!(
        auth.verify(&stranger).await,
        Err(AuthError::UnknownKey("e2".into()))
    );
    assert_eq!(refreshes(&metrics, "error"), 1);
    assert!(
        auth.verify(&key.mint(&claims()).expect("mints"))
            .await
            .is_ok()
    );
    assert_eq!(metrics.keys.get(), 1);
}

#[tokio::test]
async fn a_url_is_refreshed_periodically() {
    let (old, new) = (signer("ed25519-1.pem", "e1"), signer("ed25519-2.pem", "e2"));
    let served = Arc::new(Mutex::new(jwks(&[&old])));
    let (_open, gate) = watch::channel(true);
    let url = serve_jwks(served.clone(), Arc::default(), gate).await;
    // Early refreshes are off: only the schedule can pick the rotation up.
    let (auth, _) = jwks_auth(JwksSource::Url(url), Duration::from_millis(100), HOUR).await;
    let old_token = old.mint(&claims()).expect("mints");
    let new_token = new.mint(&claims()).expect("mints");
    assert!(auth.verify(&old_token).await.is_ok());

    *served.lock().expect("not poisoned") = jwks(&[&new]);
    let start = Instant::now();
    while auth.verify(&new_token).await.is_err() {
        assert!(start.elapsed() < DEADLINE, "the new key is never loaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        auth.verify(&old_token).await,
        Err(AuthError::UnknownKey("e1".into()))
    );
}
