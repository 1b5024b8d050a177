//! Public keys from a JWK Set (RFC 7517): a file or a URL, loaded at
//! start-up and refreshed in the background, so keys rotate without a
//! restart.
//!
//! A refresh that fails keeps the last good set (and is logged and
//! counted): an identity provider that is down for a while does not lock
//! everyone out. A token whose `kid` is not in the set asks for an early
//! refresh and waits for it (at most [`RELOAD_WAIT`]), so a key rotated in
//! at the issuer works on its first use. Early refreshes happen at most
//! once per `early_refresh_gap`, so a stream of made-up `kid`s cannot
//! hammer the key server, and tokens that arrive while one is under way
//! wait for that one instead of asking for another.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

/// The most a JWKS document may weigh; a key set is a few KiB.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// How long one fetch of a JWKS URL may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a token with an unknown `kid` waits for the reload it asked
/// for (or the one under way) before it is refused: a fetch's time, and a
/// little for a reload that began just before.
const RELOAD_WAIT: Duration = Duration::from_secs(11);

/// The algorithms a JWKS key may be for.
pub const JWKS_ALGORITHMS: [Algorithm; 2] = [Algorithm::RS256, Algorithm::EdDSA];

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("jwks must be file:PATH, http://… or https://…, got {0:?}")]
    BadSource(String),
    #[error("cannot read the jwks {source_name}: {error}")]
    Read { source_name: String, error: String },
    #[error("the jwks {source_name} is not a JWK set: {error}")]
    Parse { source_name: String, error: String },
    #[error("the jwks {0} has no usable key (RS256 or EdDSA signing keys with a kid)")]
    NoKeys(String),
}

/// Where the key set is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    File(PathBuf),
    Url(String),
}

impl JwksSource {
    /// `file:PATH` (or `file://PATH`), `http://…` or `https://…`.
    pub fn parse(text: &str) -> Result<JwksSource, JwksError> {
        let text = text.trim();
        let bad = || JwksError::BadSource(text.to_owned());
        if let Some(path) = text
            .strip_prefix("file://")
            .or_else(|| text.strip_prefix("file:"))
        {
            if path.is_empty() {
                return Err(bad());
            }
            return Ok(JwksSource::File(PathBuf::from(path)));
        }
        if (text.starts_with("https://") || text.starts_with("http://"))
            && text
                .parse::<hyper::Uri>()
                .is_ok_and(|uri| uri.host().is_some_and(|h| !h.is_empty()))
        {
            return Ok(JwksSource::Url(text.to_owned()));
        }
        Err(bad())
    }
}

impl JwksSource {
    /// An `http://` URL: neither encrypted nor authenticated.
    pub fn is_plain_http(&self) -> bool {
        matches!(self, JwksSource::Url(url) if url.starts_with("http://"))
    }
}

impl std::fmt::Display for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksSource::File(path) => write!(f, "file:{}", path.display()),
            JwksSource::Url(url) => f.write_str(url),
        }
    }
}

/// How a key set is kept.
#[derive(Debug, Clone)]
pub struct JwksOptions {
    pub source: JwksSource,
    /// Time between scheduled refreshes.
    pub refresh: Duration,
    /// The least time between two refreshes asked for by unknown `kid`s.
    pub early_refresh_gap: Duration,
}

impl JwksOptions {
    /// Refreshed every `refresh`; an unknown `kid` refreshes early at most
    /// every 10 seconds.
    pub fn new(source: JwksSource, refresh: Duration) -> JwksOptions {
        JwksOptions {
            source,
            refresh,
            early_refresh_gap: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// `collab_gateway_jwks_refreshes_total{result}` and
/// `collab_gateway_jwks_keys`: registered by every gateway, with or
/// without a JWKS, so an alert on failed refreshes has its series from the
/// start.
#[derive(Clone, Debug, Default)]
pub struct KeySetMetrics {
    refreshes: Family<ResultLabel, Counter>,
    keys: Gauge,
}

impl KeySetMetrics {
    pub fn register(registry: &mut Registry) -> KeySetMetrics {
        let metrics = KeySetMetrics::default();
        for result in ["ok", "error"] {
            let _ = metrics.refreshes.get_or_create(&ResultLabel { result });
        }
        let r = registry.sub_registry_with_prefix("collab_gateway");
        r.register(
            "jwks_refreshes",
            "Loads of the JWKS (at start-up and each refresh) by result; a failed one keeps the last good keys",
            metrics.refreshes.clone(),
        );
        r.register(
            "jwks_keys",
            "Signing keys in the JWKS in use",
            metrics.keys.clone(),
        );
        metrics
    }

    fn loaded(&self, keys: usize) {
        self.refreshes
            .get_or_create(&ResultLabel { result: "ok" })
            .inc();
        self.keys.set(i64::try_from(keys).unwrap_or(i64::MAX));
    }

    fn failed(&self) {
        self.refreshes
            .get_or_create(&ResultLabel { result: "error" })
            .inc();
    }
}

/// One verification key of the set.
#[derive(Clone)]
pub(crate) struct PublicKey {
    pub key: DecodingKey,
    pub algorithm: Algorithm,
}

/// The keys by `kid`, as last loaded.
type Keys = HashMap<String, PublicKey>;

/// A JWK set kept fresh by a background task; cheap to clone. The task
/// ends when the last clone is dropped.
#[derive(Clone)]
pub(crate) struct KeySet {
    inner: Arc<Inner>,
}

struct Inner {
    options: JwksOptions,
    current: RwLock<Arc<Keys>>,
    loads: Mutex<Loads>,
    /// Loads finished (whether they succeeded or not), for the tokens
    /// waiting for one.
    finished: watch::Sender<u64>,
    early: Arc<Notify>,
    /// For a URL only: a file needs no root certificates.
    http: Option<HttpClient>,
    metrics: KeySetMetrics,
}

/// When the last load began, and whether one is under way or asked for.
struct Loads {
    last_start: Instant,
    busy: bool,
}

impl KeySet {
    /// Loads the set once (an error here is a start-up error) and starts
    /// refreshing it. Call it inside a tokio runtime.
    pub(crate) async fn load(
        options: JwksOptions,
        metrics: KeySetMetrics,
    ) -> Result<KeySet, JwksError> {
        let http = match options.source {
            JwksSource::Url(_) => Some(http_client().map_err(|error| JwksError::Read {
                source_name: options.source.to_string(),
                error,
            })?),
            JwksSource::File(_) => None,
        };
        let started = Instant::now();
        let keys = match fetch(&options.source, http.as_ref()).await {
            Ok(keys) => keys,
            Err(e) => {
                metrics.failed();
                return Err(e);
            }
        };
        metrics.loaded(keys.len());
        info!(jwks = %options.source, kids = ?sorted_kids(&keys), "jwks loaded");
        let early = Arc::new(Notify::new());
        let inner = Arc::new(Inner {
            options: options.clone(),
            current: RwLock::new(Arc::new(keys)),
            loads: Mutex::new(Loads {
                last_start: started,
                busy: false,
            }),
            finished: watch::channel(0).0,
            early: early.clone(),
            http,
            metrics,
        });
        tokio::spawn(refresh_loop(Arc::downgrade(&inner), early, options));
        Ok(KeySet { inner })
    }

    /// The key named `kid`. One not in the set waits for an early reload
    /// (see [`reload_for_unknown_kid`](Self::reload_for_unknown_kid)) and
    /// is looked up again; `None` if it is still unknown.
    pub(crate) async fn find(&self, kid: &str) -> Option<PublicKey> {
        let mut finished = self.inner.finished.subscribe();
        let seen = *finished.borrow_and_update();
        if let Some(found) = self.inner.lookup(kid) {
            return Some(found);
        }
        if self.reload_for_unknown_kid(seen, &mut finished).await {
            self.inner.lookup(kid)
        } else {
            None
        }
    }

    /// Waits (at most [`RELOAD_WAIT`]) for a load that finishes after the
    /// `seen`th one: the one under way, or one asked for now if the last
    /// began `early_refresh_gap` ago. Every token that finds its `kid`
    /// missing meanwhile waits for the same load. False if no load may
    /// start now or none finished in time.
    async fn reload_for_unknown_kid(&self, seen: u64, finished: &mut watch::Receiver<u64>) -> bool {
        {
            let mut loads = lock(&self.inner.loads);
            // Counted under the same lock as `busy` is cleared.
            let now_finished = *finished.borrow();
            if now_finished == seen && !loads.busy {
                if loads.last_start.elapsed() < self.inner.options.early_refresh_gap {
                    return false;
                }
                loads.busy = true;
                self.inner.early.notify_one();
            }
        }
        let done = finished.wait_for(|n| *n > seen);
        matches!(tokio::time::timeout(RELOAD_WAIT, done).await, Ok(Ok(_)))
    }
}

impl Inner {
    fn lookup(&self, kid: &str) -> Option<PublicKey> {
        let keys = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        keys.get(kid).cloned()
    }

    async fn refresh(&self) {
        {
            let mut loads = lock(&self.loads);
            loads.last_start = Instant::now();
            loads.busy = true;
        }
        match fetch(&self.options.source, self.http.as_ref()).await {
            Ok(keys) => {
                self.metrics.loaded(keys.len());
                let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
                if sorted_kids(&keys) != sorted_kids(&current) {
                    info!(jwks = %self.options.source, kids = ?sorted_kids(&keys), "jwks changed");
                }
                *current = Arc::new(keys);
            }
            Err(e) => {
                self.metrics.failed();
                warn!(jwks = %self.options.source, error = %e, "jwks refresh failed; keeping the keys loaded before");
            }
        }
        let mut loads = lock(&self.loads);
        loads.busy = false;
        self.finished.send_modify(|n| *n += 1);
    }

    /// Whether a token waits for an early load (a wake-up left over from
    /// one that a scheduled load answered is not).
    fn is_asked(&self) -> bool {
        lock(&self.loads).busy
    }
}

/// Refreshes every `refresh`, or at once when a token with an unknown
/// `kid` asks (it checked `early_refresh_gap`), until the set is dropped.
/// It holds the set only while refreshing, so dropping it ends the loop.
async fn refresh_loop(inner: Weak<Inner>, early: Arc<Notify>, options: JwksOptions) {
    loop {
        let asked_early = tokio::select! {
            () = tokio::time::sleep(options.refresh) => false,
            () = early.notified() => true,
        };
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if asked_early && !inner.is_asked() {
            continue;
        }
        inner.refresh().await;
    }
}

/// Locks `mutex`, carrying on after a holder that panicked: every update
/// under it is one step.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn sorted_kids(keys: &Keys) -> Vec<&str> {
    let mut kids: Vec<&str> = keys.keys().map(String::as_str).collect();
    kids.sort_unstable();
    kids
}

/// The client JWKS URLs are fetched with: http, or https checked against
/// the system's root certificates (or those in the files `SSL_CERT_FILE`
/// or `SSL_CERT_DIR` name, instead), read once at start-up.
type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

fn http_client() -> Result<HttpClient, String> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
        .map_err(|e| format!("no root certificates for https: {e}"))?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// `url`'s body, if it answers 200 within [`FETCH_TIMEOUT`] with at most
/// [`MAX_JWKS_BYTES`].
async fn get(http: &HttpClient, url: &str) -> Result<Vec<u8>, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("bad url: {e}"))?;
    let fetch = async {
        let response = http.get(uri).await.map_err(|e| with_causes(&e))?;
        if response.status() != hyper::StatusCode::OK {
            return Err(format!("answered {}", response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(body.to_bytes().to_vec())
    };
    tokio::time::timeout(FETCH_TIMEOUT, fetch)
        .await
        .map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))?
}

/// `error` and what caused it, outermost first: the client's own message
/// ("client error (Connect)") says nothing of a refused certificate.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

async fn fetch(source: &JwksSource, http: Option<&HttpClient>) -> Result<Keys, JwksError> {
    let source_name = source.to_string();
    let read_error = |error: String| JwksError::Read {
        source_name: source_name.clone(),
        error,
    };
    let bytes = match source {
        JwksSource::File(path) => tokio::fs::read(path)
            .await
            .map_err(|e| read_error(e.to_string()))?,
        JwksSource::Url(url) => match http {
            Some(http) => get(http, url).await.map_err(read_error)?,
            None => return Err(read_error("no http client".into())),
        },
    };
    if bytes.len() > MAX_JWKS_BYTES {
        return Err(read_error(format!("larger than {MAX_JWKS_BYTES} bytes")));
    }
    parse(&bytes).map_err(|error| match error {
        ParseError::NotASet(error) => JwksError::Parse {
            source_name: source_name.clone(),
            error,
        },
        ParseError::NoKeys => JwksError::NoKeys(source_name.clone()),
    })
}

enum ParseError {
    NotASet(String),
    NoKeys,
}

/// The usable keys of a JWKS document: signing keys with a `kid`, for
/// RS256 or EdDSA (Ed25519). Others (encryption keys, other algorithms)
/// are skipped, as RFC 7517 asks of keys a reader does not understand.
fn parse(bytes: &[u8]) -> Result<Keys, ParseError> {
    let set: JwkSet =
        serde_json::from_slice(bytes).map_err(|e| ParseError::NotASet(e.to_string()))?;
    let keys: Keys = set
        .keys
        .iter()
        .filter_map(|jwk| Some((jwk.common.key_id.clone()?, public_key(jwk)?)))
        .collect();
    if keys.is_empty() {
        return Err(ParseError::NoKeys);
    }
    Ok(keys)
}

fn public_key(jwk: &Jwk) -> Option<PublicKey> {
    if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
        return None;
    }
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    // A key that names its algorithm is used for that one only.
    let algorithm = match jwk.common.key_algorithm {
        Some(named) => Algorithm::try_from(named).ok()?,
        None => by_type,
    };
    if algorithm != by_type {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(PublicKey { key, algorithm })
}

#[cfg(test)]
mod tests;
