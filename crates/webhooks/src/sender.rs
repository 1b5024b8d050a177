//! Sends one event to one endpoint: a signed `POST`, judged by its status.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::signature::{EVENT_ID_HEADER, SIGNATURE_HEADER, header};

/// The HTTP client of every endpoint: http, or https checked against the
/// system's root certificates; connections are kept and reused.
#[derive(Clone)]
pub struct Sender {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Sender {
    pub fn new() -> Result<Sender, String> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| format!("no root certificates for https: {e}"))?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Sender {
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// POSTs `body` to `url`, signed with `secret` now. `Ok` on a 2xx;
    /// otherwise why not, for the log.
    pub async fn send(
        &self,
        url: &str,
        secret: &[u8],
        event_id: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<(), String> {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let request = hyper::Request::post(url)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, "collab-webhooks")
            .header(EVENT_ID_HEADER, event_id)
            .header(SIGNATURE_HEADER, header(secret, timestamp, &body))
            .body(Full::new(body))
            .map_err(|e| format!("bad request: {e}"))?;
        let attempt = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("request failed: {e}"))?;
            let status = response.status();
            // Read (and drop) the body, so the connection can be reused.
            let _ = response.into_body().collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("answered {status}"))
            }
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| format!("no answer within {} ms", timeout.as_millis()))?
    }
}
