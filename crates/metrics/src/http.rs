//! HTTP requests by route and status: a middleware on a role's router.
//!
//! The route is the template the router matched (`MatchedPath`, set by
//! axum before the middleware runs when it is added with `Router::layer`),
//! so its values are as few as the router's routes; a request no route
//! matched counts as `other`, whatever its path.

use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The `route` of a request no route matched.
pub(crate) const OTHER_ROUTE: &str = "other";

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteStatus {
    route: String,
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

type DurationFamily = Family<RouteLabel, Histogram, fn() -> Histogram>;

#[derive(Clone)]
pub(crate) struct HttpMetrics {
    requests: Family<RouteStatus, Counter>,
    duration: DurationFamily,
}

/// From 0.5 ms to about 16 s: probes and metadata reads at the bottom, a
/// slow history page at the top.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl HttpMetrics {
    /// Registers `http_requests` and `http_request_duration_seconds` in
    /// `registry` (the `collab` prefix's).
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let metrics = HttpMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
        };
        registry.register(
            "http_requests",
            "HTTP requests answered, by route template and status",
            metrics.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request (until its response head), by route template",
            metrics.duration.clone(),
        );
        metrics
    }

    pub(crate) fn instrument<S>(&self, router: Router<S>) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        router.layer(axum::middleware::from_fn_with_state(self.clone(), record))
    }
}

async fn record(State(metrics): State<HttpMetrics>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(OTHER_ROUTE, MatchedPath::as_str)
        .to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    metrics
        .duration
        .get_or_create(&RouteLabel {
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&RouteStatus {
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}
