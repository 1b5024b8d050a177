//! Public keys from a JWK Set (RFC 7517): a file or a URL, loaded at
//! start-up and refreshed in the background, so keys rotate without a
//! restart.
//!
//! A refresh that fails keeps the last good set (and is logged and
//! counted): an identity provider that is down for a while does not lock
//! everyone out. A token whose `kid` is not in the set asks for an early
//! refresh — at most one per `early_refresh_gap`, so a stream of made-up
//! `kid`s cannot hammer the key server — and is refused meanwhile; a
//! retry after the refresh finds the new key.

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
use tokio::sync::Notify;
use tracing::{info, warn};

/// The most a JWKS document may weigh; a key set is a few KiB.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// How long one fetch of a JWKS URL may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// When the last load began.
    last_load: Mutex<Instant>,
    early: Arc<Notify>,
    /// For a URL only: a file needs no root certificates.
    http: Option<HttpClient>,
    metrics: KeySetMetrics,
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
            last_load: Mutex::new(started),
            early: early.clone(),
            http,
            metrics,
        });
        tokio::spawn(refresh_loop(Arc::downgrade(&inner), early, options));
        Ok(KeySet { inner })
    }

    /// The key named `kid`; `None` asks for an early refresh.
    pub(crate) fn find(&self, kid: &str) -> Option<PublicKey> {
        let keys = self
            .inner
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let found = keys.get(kid).cloned();
        if found.is_none() {
            self.ask_early_refresh();
        }
        found
    }

    /// Wakes the refresh task unless the last load is more recent than
    /// `early_refresh_gap`; says whether it did.
    fn ask_early_refresh(&self) -> bool {
        let due = self.inner.since_last_load() >= self.inner.options.early_refresh_gap;
        if due {
            self.inner.early.notify_one();
        }
        due
    }
}

impl Inner {
    fn since_last_load(&self) -> Duration {
        self.last_load
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }

    async fn refresh(&self) {
        *self.last_load.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
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
    }
}

/// Refreshes every `refresh`, or sooner when an unknown `kid` asks (and
/// the last load is `early_refresh_gap` old), until the set is dropped.
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
        if asked_early && inner.since_last_load() < options.early_refresh_gap {
            continue;
        }
        inner.refresh().await;
    }
}

fn sorted_kids(keys: &Keys) -> Vec<&str> {
    let mut kids: Vec<&str> = keys.keys().map(String::as_str).collect();
    kids.sort_unstable();
    kids
}

/// The client JWKS URLs are fetched with: http, or https checked against
/// the system's root certificates.
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
        let response = http.get(uri).await.map_err(|e| e.to_string())?;
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
