//! The room node's only HTTP, on its internal port: `/healthz` (the
//! process runs), `/readyz` (it can serve its rooms: see
//! [`RoomNode::is_ready`]; 503 from the moment it starts draining) and
//! `/metrics`. With a metrics listener of its own (`metrics_listen`),
//! `listen` serves the probes only ([`probes_router`]) and the metrics
//! listener everything ([`router`]). Every request is counted by route and
//! status.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use collab_metrics::Exporter;

use crate::RoomNode;

#[derive(Clone)]
struct Probes {
    node: Arc<RoomNode>,
    exporter: Exporter,
}

/// `/healthz`, `/readyz` and `/metrics`.
pub fn router(node: Arc<RoomNode>, exporter: Exporter) -> Router {
    routes(Probes { node, exporter }, true)
}

/// `/healthz` and `/readyz` only.
pub fn probes_router(node: Arc<RoomNode>, exporter: Exporter) -> Router {
    routes(Probes { node, exporter }, false)
}

fn routes(probes: Probes, with_metrics: bool) -> Router {
    let exporter = probes.exporter.clone();
    let mut router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz));
    if with_metrics {
        router = router.route("/metrics", get(metrics));
    }
    exporter.instrument(router.with_state(probes))
}

async fn readyz(State(probes): State<Probes>) -> Response {
    if probes.node.is_ready().await {
        "ready".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

/// The page, with `collab_ready` as `/readyz` would answer now.
async fn metrics(State(probes): State<Probes>) -> Response {
    let ready = probes.node.is_ready().await;
    match probes.exporter.response(ready) {
        Ok(response) => response,
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use collab_bus::InProcessBus;
    use collab_metrics::Role;
    use collab_protocol::NodeId;
    use collab_store::MemoryStore;
    use prometheus_client::registry::Registry;
    use tower::ServiceExt;

    use super::*;
    use crate::{RoomNodeConfig, RoomNodeMetrics};

    async fn get(router: &Router, path: &str) -> (StatusCode, String) {
        let request = Request::builder()
            .uri(path)
            .body(Body::empty())
            .expect("a request");
        let response = router.clone().oneshot(request).await.expect("answered");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("a body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    async fn node() -> (Arc<RoomNode>, Exporter) {
        let mut registry = Registry::default();
        let metrics = RoomNodeMetrics::register(&mut registry);
        let node = RoomNode::start_with_metrics(
            RoomNodeConfig::new(NodeId::parse("n1").expect("id")),
            Arc::new(MemoryStore::new()),
            Arc::new(InProcessBus::new()),
            metrics,
        )
        .await
        .expect("starts");
        let exporter = Exporter::new(registry, Role::RoomNode, "test");
        (Arc::new(node), exporter)
    }

    #[tokio::test]
    async fn probes_and_metrics_until_the_drain_begins() {
        let (node, exporter) = node().await;
        let router = router(node.clone(), exporter);
        assert_eq!(get(&router, "/healthz").await.0, StatusCode::OK);
        assert_eq!(get(&router, "/readyz").await.0, StatusCode::OK);
        let (status, page) = get(&router, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        for line in [
            "collab_ready 1",
            r#"collab_build_info{version="test",role="room-node"} 1"#,
            r#"collab_room_takeovers_total{kind="failover"} 0"#,
            r#"collab_http_requests_total{route="/readyz",status="200"} 1"#,
        ] {
            assert!(page.lines().any(|l| l == line), "{line} missing:\n{page}");
        }

        // SIGTERM: unready at once, while it hands its rooms off.
        node.drain(std::time::Duration::from_secs(1)).await;
        assert_eq!(
            get(&router, "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let (_, page) = get(&router, "/metrics").await;
        assert!(page.lines().any(|l| l == "collab_ready 0"), "{page}");
        assert_eq!(get(&router, "/healthz").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn the_probes_router_has_no_metrics() {
        let (node, exporter) = node().await;
        let probes = probes_router(node, exporter);
        assert_eq!(get(&probes, "/readyz").await.0, StatusCode::OK);
        assert_eq!(get(&probes, "/metrics").await.0, StatusCode::NOT_FOUND);
    }
}
