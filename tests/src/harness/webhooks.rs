//! A webhook receiver for tests: a real HTTP server (axum) on a free
//! loopback port that checks each delivery's signature and records what
//! it got, and can be told to refuse deliveries (503) for a while.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use collab_protocol::webhooks::WebhookEvent;
use collab_webhooks::signature::{SIGNATURE_HEADER, verify};

/// One delivery as received.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub event: WebhookEvent,
    pub at: Instant,
}

#[derive(Default)]
struct Inner {
    deliveries: Vec<Delivery>,
    /// Requests still to refuse with 503.
    refuse: usize,
    refused: usize,
    /// Requests whose signature did not verify, or whose body was not an
    /// event: each a bug.
    bad: Vec<String>,
}

/// Receives webhooks at [`WebhookReceiver::url`] until dropped.
pub struct WebhookReceiver {
    url: String,
    inner: Arc<Mutex<Inner>>,
    secret: String,
    server: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    secret: String,
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn receive(State(shared): State<Shared>, headers: HeaderMap, body: String) -> StatusCode {
    let mut inner = lock(&shared.inner);
    if inner.refuse > 0 {
        inner.refuse -= 1;
        inner.refused += 1;
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if let Err(e) = verify(shared.secret.as_bytes(), signature, body.as_bytes()) {
        inner.bad.push(format!("signature: {e}: {body}"));
        return StatusCode::UNAUTHORIZED;
    }
    match serde_json::from_str::<WebhookEvent>(&body) {
        Ok(event) => {
            inner.deliveries.push(Delivery {
                event,
                at: Instant::now(),
            });
            StatusCode::NO_CONTENT
        }
        Err(e) => {
            inner.bad.push(format!("body: {e}: {body}"));
            StatusCode::BAD_REQUEST
        }
    }
}

impl WebhookReceiver {
    /// Listens on a free loopback port; deliveries must be signed with
    /// `secret`.
    pub async fn start(secret: &str) -> std::io::Result<WebhookReceiver> {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let shared = Shared {
            inner: inner.clone(),
            secret: secret.to_owned(),
        };
        let app = axum::Router::new()
            .route("/hooks", post(receive))
            .with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(WebhookReceiver {
            url: format!("http://{addr}/hooks"),
            inner,
            secret: secret.to_owned(),
            server,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// Refuses the next `n` requests with 503.
    pub fn refuse_next(&self, n: usize) {
        lock(&self.inner).refuse = n;
    }

    /// How many requests were refused.
    pub fn refused(&self) -> usize {
        lock(&self.inner).refused
    }

    /// Every delivery accepted so far, in arrival order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        lock(&self.inner).deliveries.clone()
    }

    /// The requests that were not signed events (should be none).
    pub fn bad(&self) -> Vec<String> {
        lock(&self.inner).bad.clone()
    }

    /// A `[[webhooks]]` entry for this receiver (TOML), with fast retries.
    pub fn config_entry(&self, id: &str, events: &[&str]) -> String {
        let events: Vec<String> = events.iter().map(|e| format!("{e:?}")).collect();
        format!(
            "[[webhooks]]\nid = {id:?}\nurl = {:?}\nsecret = {:?}\nevents = [{}]\n\
             retry_base_ms = 50\nretry_max_ms = 500\nretry_horizon_secs = 600\n",
            self.url,
            self.secret,
            events.join(", ")
        )
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}
