//! `collab gateway` and `collab room-node`: the two halves of `collab
//! serve`, run as separate processes that find each other over NATS.
//!
//! Both run the same gateway and room-node code as `collab serve`; only the
//! bus (NATS instead of in-process) and the store (a CQL cluster every node
//! reaches, never the embedded file) differ. A cluster has no dev mode:
//! every gateway must verify the tokens of every other, so the secret is
//! configured.
//!
//! Shutdown (SIGTERM):
//! - a gateway turns unready, closes every WebSocket with 1001 (clients
//!   resume through another gateway), waits for them up to the grace
//!   period, then leaves the cluster;
//! - a room node hands its rooms off: requests get `unavailable`, every room
//!   finishes its batch and snapshots, then the node leaves the cluster and
//!   the next owners load the rooms from those snapshots.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use collab_bus::{Bus, NatsBus, NatsBusConfig};
use collab_gateway::{Auth, Gateway, GatewayMetrics, Readiness};
use collab_protocol::NodeId;
use collab_protocol::subjects::Subjects;
use collab_room_node::{RoomNode, RoomNodeMetrics};
use collab_store::Store;
use prometheus_client::registry::Registry;
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::config::{CollabConfig, StoreLocation};
use crate::serve::{ServeError, announce, bind, local_addr, open_store, spawn_server};

/// Runs a gateway until `shutdown` resolves, then drains and returns.
pub async fn run_gateway(
    config: CollabConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let secret = config
        .jwt_secret
        .clone()
        .ok_or(ServeError::ClusterWithoutSecret)?;
    let store = open_shared_store(&config).await?;
    let node = node_id(&config, "gateway")?;
    let bus = Arc::new(connect(&config, node.clone(), true).await?);

    let mut registry = Registry::default();
    let metrics = GatewayMetrics::register(&mut registry);
    let mut gateway_config = config.gateway.clone();
    // Connections are named after this run of the gateway, so a room node
    // that sees it leave the cluster (or restart under the same node id)
    // drops exactly its connections.
    gateway_config.gateway_id = bus.instance().to_owned();
    let readiness = Arc::new(GatewayReadiness { bus: bus.clone() });
    let gateway = Gateway::new(
        gateway_config,
        Auth::new(secret.expose(), false),
        bus.clone(),
        store,
        readiness,
        metrics,
        Arc::new(registry),
    );

    let listener = bind(config.listen).await?;
    let addr = local_addr(&listener, config.listen)?;
    info!(%addr, %node, nats = %config.cluster.nats_url, "gateway listening");
    announce(addr);

    let (server, stop_accepting) = spawn_server(&gateway, listener);
    shutdown.await;

    let grace = config.drain_grace();
    info!(grace_secs = grace.as_secs(), "gateway draining");
    gateway.begin_shutdown();
    let _ = stop_accepting.send(());
    if tokio::time::timeout(grace.max(Duration::from_secs(1)), server)
        .await
        .is_err()
    {
        warn!(
            connections = gateway.connections(),
            "connections still open after the grace period; closing anyway"
        );
    }
    // The sockets' leaves went out over the bus; now say goodbye.
    bus.leave().await;
    info!("gateway drained; bye");
    Ok(())
}

/// Runs a room node until `shutdown` resolves, then hands its rooms off.
pub async fn run_room_node(
    config: CollabConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let store = open_shared_store(&config).await?;
    let node = node_id(&config, "room-node")?;
    let bus: Arc<dyn Bus> = Arc::new(connect(&config, node.clone(), false).await?);

    let mut registry = Registry::default();
    let metrics = RoomNodeMetrics::register(&mut registry);
    let room_node = Arc::new(
        RoomNode::start_with_metrics(config.room_node_config(node.clone()), store, bus, metrics)
            .await?,
    );

    let listener = bind(config.listen).await?;
    let addr = local_addr(&listener, config.listen)?;
    info!(%addr, %node, nats = %config.cluster.nats_url, "room node listening");
    announce(addr);
    let probes = Probes {
        room_node: room_node.clone(),
        registry: Arc::new(registry),
    };
    let (stop_http, http_stopped) = oneshot::channel::<()>();
    let http = tokio::spawn(async move {
        axum::serve(listener, probes.router())
            .with_graceful_shutdown(async move {
                let _ = http_stopped.await;
            })
            .await
    });
    shutdown.await;

    let grace = config.drain_grace();
    info!(
        grace_secs = grace.as_secs(),
        "room node handing its rooms off"
    );
    room_node.drain(grace).await;
    let _ = stop_http.send(());
    let _ = tokio::time::timeout(Duration::from_secs(1), http).await;
    info!("room node drained; bye");
    Ok(())
}

async fn open_shared_store(config: &CollabConfig) -> Result<Arc<dyn Store>, ServeError> {
    match config.store_location().map_err(ServeError::Internal)? {
        StoreLocation::Embedded => Err(ServeError::ClusterWithoutSharedStore),
        StoreLocation::Cql(_) => {
            let crate::serve::OpenedStore { store, name, .. } = open_store(config).await?;
            info!(store = %name, "store connected");
            Ok(store)
        }
    }
}

fn node_id(config: &CollabConfig, role: &str) -> Result<NodeId, ServeError> {
    config.cluster.node_id(role).map_err(ServeError::Internal)
}

async fn connect(
    config: &CollabConfig,
    node: NodeId,
    gateway: bool,
) -> Result<NatsBus, ServeError> {
    let cluster = &config.cluster;
    let mut bus = NatsBusConfig::new(cluster.nats_url.clone(), node);
    bus.subjects = Subjects::new(cluster.subject_prefix.clone())
        .map_err(|e| ServeError::Internal(e.to_string()))?;
    bus.gateway = gateway;
    bus.heartbeat_interval = cluster.heartbeat_interval();
    bus.member_ttl = cluster.member_ttl();
    Ok(NatsBus::connect(bus).await?)
}

/// A gateway can serve when it reaches NATS and some room node is alive.
struct GatewayReadiness {
    bus: Arc<NatsBus>,
}

#[async_trait]
impl Readiness for GatewayReadiness {
    async fn ready(&self) -> bool {
        self.bus.is_ready()
            && self
                .bus
                .members()
                .is_some_and(|members| members.borrow().room_nodes().next().is_some())
    }
}

/// A room node's only HTTP: health, readiness and metrics.
#[derive(Clone)]
struct Probes {
    room_node: Arc<RoomNode>,
    registry: Arc<Registry>,
}

impl Probes {
    fn router(self) -> Router {
        Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(self)
    }
}

async fn readyz(State(probes): State<Probes>) -> Response {
    if probes.room_node.is_ready().await {
        "ready".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

async fn metrics(State(probes): State<Probes>) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &probes.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
