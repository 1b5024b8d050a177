//! The key set: what a JWKS document yields, loading errors, rotation of a
//! file (picked up by an unknown `kid`) and of a URL (picked up by the
//! periodic refresh), the early refresh's rate limit, and a failed refresh
//! keeping the last good keys. Keys are the test-only PEM files in
//! `testdata/keys`.

use std::path::Path;
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
async fn a_rotated_file_is_picked_up_when_a_token_names_the_new_kid() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("jwks.json");
    let (old, new) = (signer("rsa-1.pem", "r1"), signer("rsa-2.pem", "r2"));
    write(&path, &jwks(&[&old]));
    // No scheduled refresh within the test: only the unknown kid can
    // cause one.
    let (auth, metrics) = jwks_auth(JwksSource::File(path.clone()), HOUR, Duration::ZERO).await;
    let old_token = old.mint(&claims()).expect("mints");
    let new_token = new.mint(&claims()).expect("mints");
    assert!(auth.verify(&old_token).is_ok());
    assert_eq!(
        auth.verify(&new_token),
        Err(AuthError::UnknownKey("r2".into()))
    );

    write(&path, &jwks(&[&new]));
    assert!(
        eventually(|| auth.verify(&new_token).is_ok()).await,
        "the new key is never loaded"
    );
    assert_eq!(
        auth.verify(&old_token),
        Err(AuthError::UnknownKey("r1".into()))
    );
    assert!(refreshes(&metrics, "ok") >= 2);
    assert_eq!(metrics.keys.get(), 1);
}

#[tokio::test]
async fn an_unknown_kid_refreshes_early_at_most_once_per_gap() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("jwks.json");
    write(&path, &jwks(&[&signer("ed25519-1.pem", "e1")]));
    let source = JwksSource::File(path);
    let rate_limited = KeySet::load(
        JwksOptions {
            source: source.clone(),
            refresh: HOUR,
            early_refresh_gap: HOUR,
        },
        KeySetMetrics::default(),
    )
    .await
    .expect("loads");
    assert!(rate_limited.find("nope").is_none());
    assert!(
        !rate_limited.ask_early_refresh(),
        "an early refresh within the gap of the last load"
    );
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
    assert!(eager.ask_early_refresh());
    assert!(eventually(|| refreshes(&metrics, "ok") == 2).await);
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_last_good_keys() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("jwks.json");
    let key = signer("ed25519-1.pem", "e1");
    write(&path, &jwks(&[&key]));
    let (auth, metrics) = jwks_auth(JwksSource::File(path.clone()), HOUR, Duration::ZERO).await;
    write(&path, "{\"keys\": [");
    // An unknown kid asks for the refresh that fails.
    let stranger = signer("ed25519-2.pem", "e2")
        .mint(&claims())
        .expect("mints");
    assert!(matches!(
        auth.verify(&stranger),
        Err(AuthError::UnknownKey(_))
    ));
    assert!(
        eventually(|| refreshes(&metrics, "error") == 1).await,
        "no failed refresh counted"
    );
    assert!(auth.verify(&key.mint(&claims()).expect("mints")).is_ok());
    assert_eq!(metrics.keys.get(), 1);
}

#[tokio::test]
async fn a_url_is_refreshed_periodically() {
    let (old, new) = (signer("ed25519-1.pem", "e1"), signer("ed25519-2.pem", "e2"));
    let served = Arc::new(Mutex::new(jwks(&[&old])));
    let body = served.clone();
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let body = body.lock().expect("not poisoned").clone();
            async move { body }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    let url = format!("http://{addr}/jwks.json");
    // Early refreshes are off: only the schedule can pick the rotation up.
    let (auth, _) = jwks_auth(JwksSource::Url(url), Duration::from_millis(100), HOUR).await;
    let old_token = old.mint(&claims()).expect("mints");
    let new_token = new.mint(&claims()).expect("mints");
    assert!(auth.verify(&old_token).is_ok());

    *served.lock().expect("not poisoned") = jwks(&[&new]);
    assert!(
        eventually(|| auth.verify(&new_token).is_ok()).await,
        "the new key is never loaded"
    );
    assert_eq!(
        auth.verify(&old_token),
        Err(AuthError::UnknownKey("e1".into()))
    );
}
