//! `collab gateway` and `collab room-node`: the two halves of `collab
//! serve`, run as separate processes that find each other over NATS.
//!
//! Both run the same gateway and room-node code as `collab serve`; only the
//! bus (NATS instead of in-process) and the store (a CQL cluster every node
//! reaches, never the embedded file) differ. A cluster has no dev mode:
//! every gateway must verify the tokens of every other, so the secret or
//! a JWKS (or both) is configured.
//!
//! Each registers the bus's metrics (NATS connection, membership) beside
//! its own; a gateway keeps the state it shares with the others (rate
//! limits, revocations, presence) in the Redis that `redis` names, and a
//! room node room expiry's deadlines (without it, rooms do not expire); a room node serves its router ([`collab_room_node::http`]) on
//! `listen`. With `metrics_listen`, a second listener serves `/metrics`
//! (then only there) and the probes.
//!
//! Shutdown (SIGTERM):
//! - a gateway turns unready, closes every WebSocket with 1001 (clients
//!   resume through another gateway), waits for them up to the grace
//!   period, then leaves the cluster;
//! - a room node turns unready and hands its rooms off: requests get
//!   `unavailable`, every room
//!   finishes its batch and snapshots, then the node leaves the cluster and
//!   the next owners load the rooms from those snapshots.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use collab_bus::{Bus, BusMetrics, NatsBus, NatsBusConfig};
use collab_ephemeral::{EphemeralMetrics, RedisClient, RedisOptions, RedisRoomExpiry, RoomExpiry};
use collab_gateway::{Gateway, GatewayMetrics, GatewayParts, Readiness};
use collab_metrics::{Exporter, Role};
use collab_protocol::NodeId;
use collab_protocol::subjects::Subjects;
use collab_room_node::{ExpiryOptions, RoomNode, RoomNodeMetrics};
use collab_store::Store;
use prometheus_client::registry::Registry;
use tracing::{info, warn};

use crate::config::{CollabConfig, Secret, StoreLocation};
use crate::keys;
use crate::serve::{
    ServeError, announce, announce_metrics, bind, bind_metrics, local_addr, open_ephemeral,
    open_store, spawn_http, spawn_server,
};

/// Runs a gateway until `shutdown` resolves, then drains and returns.
pub async fn run_gateway(
    config: CollabConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    if config.dev_mode() {
        return Err(ServeError::ClusterWithoutSecret);
    }
    let store = open_shared_store(&config).await?;
    let node = node_id(&config, "gateway")?;
    let mut registry = Registry::default();
    let bus_metrics = BusMetrics::register(&mut registry);
    let bus = Arc::new(connect(&config, node.clone(), true, bus_metrics).await?);

    let metrics = GatewayMetrics::register(&mut registry);
    let secret = config.jwt_secret.as_ref().map(Secret::expose);
    let auth = keys::gateway_auth(&config, secret, false, &mut registry).await?;
    let mut gateway_config = config.gateway_config();
    // Connections are named after this run of the gateway, so a room node
    // that sees it leave the cluster (or restart under the same node id)
    // drops exactly its connections; so are its presence records.
    gateway_config.gateway_id = bus.instance().to_owned();
    if config.redis_url().is_none() {
        warn!(
            "no redis configured: this gateway's rate limits, revocations and presence are its \
             own, not the cluster's (set COLLAB_REDIS on every gateway)"
        );
    }
    let ephemeral = open_ephemeral(&config, &gateway_config.gateway_id, &mut registry)?;
    // New rooms' first deadlines go where the room nodes sweep them: the
    // shared Redis, or nowhere without one (the room nodes' expiry is off).
    let room_expiry = config.redis_url().map(|_| ephemeral.expiry.clone());
    let exporter = Exporter::new(registry, Role::Gateway, crate::VERSION);
    let readiness = Arc::new(GatewayReadiness { bus: bus.clone() });
    let gateway = Gateway::new(
        gateway_config,
        GatewayParts {
            auth,
            bus: bus.clone(),
            store,
            readiness,
            metrics,
            exporter,
            ephemeral,
            room_expiry,
        },
    );

    let metrics_listener = bind_metrics(&config).await?;
    let listener = bind(config.listen).await?;
    let addr = local_addr(&listener, config.listen)?;
    // Until it is dropped, at the very end of the drain.
    let _metrics_server = metrics_listener.map(|(listener, metrics_addr)| {
        announce_metrics(metrics_addr);
        spawn_http(listener, gateway.metrics_router())
    });
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
    // The others see this gateway's users gone now, not when its presence
    // records expire.
    gateway.flush_presence().await;
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
    let mut registry = Registry::default();
    let bus_metrics = BusMetrics::register(&mut registry);
    let bus: Arc<dyn Bus> = Arc::new(connect(&config, node.clone(), false, bus_metrics).await?);

    let metrics = RoomNodeMetrics::register(&mut registry);
    let expiry = room_expiry(&config, &mut registry)?;
    let webhooks = config.webhooks_of(&mut registry);
    let room_node = Arc::new(
        RoomNode::start_with_webhooks(
            config.room_node_config(node.clone()),
            store,
            bus,
            metrics,
            expiry,
            webhooks,
        )
        .await?,
    );
    let exporter = Exporter::new(registry, Role::RoomNode, crate::VERSION);

    let metrics_listener = bind_metrics(&config).await?;
    let listener = bind(config.listen).await?;
    let addr = local_addr(&listener, config.listen)?;
    // Both serve until they are dropped, after the drain: readiness says
    // 503 all along it.
    let (_metrics_server, _http_server) = match metrics_listener {
        Some((metrics_listener, metrics_addr)) => {
            announce_metrics(metrics_addr);
            let everything = collab_room_node::http::router(room_node.clone(), exporter.clone());
            let probes = collab_room_node::http::probes_router(room_node.clone(), exporter);
            (
                Some(spawn_http(metrics_listener, everything)),
                spawn_http(listener, probes),
            )
        }
        None => {
            let everything = collab_room_node::http::router(room_node.clone(), exporter);
            (None, spawn_http(listener, everything))
        }
    };
    info!(%addr, %node, nats = %config.cluster.nats_url, "room node listening");
    announce(addr);
    shutdown.await;

    let grace = config.drain_grace();
    info!(
        grace_secs = grace.as_secs(),
        "room node handing its rooms off"
    );
    room_node.drain(grace).await;
    info!("room node drained; bye");
    Ok(())
}

/// Room expiry needs deadlines every node shares (a room moves between
/// nodes): the cluster's Redis, where the gateways record new rooms'
/// deadlines too. Without one it is off.
fn room_expiry(
    config: &CollabConfig,
    registry: &mut Registry,
) -> Result<Option<ExpiryOptions>, ServeError> {
    let Some(url) = config.redis_url() else {
        info!(
            "room expiry is off in a cluster without redis (shared deadlines); rooms are deleted \
             only by DELETE"
        );
        return Ok(None);
    };
    let metrics = EphemeralMetrics::register_redis_only(registry);
    let client =
        RedisClient::connect(RedisOptions::new(url), metrics).map_err(ServeError::Redis)?;
    let deadlines: Arc<dyn RoomExpiry> = Arc::new(RedisRoomExpiry::new(client));
    Ok(Some(ExpiryOptions::new(
        deadlines,
        config.rooms.expiry_sweep(),
    )))
}

async fn open_shared_store(config: &CollabConfig) -> Result<Arc<dyn Store>, ServeError> {
    match config.store_location().map_err(ServeError::Internal)? {
        StoreLocation::Embedded => Err(ServeError::ClusterWithoutSharedStore),
        StoreLocation::Cql(_) => {
            let opened = open_store(config).await?;
            info!(store = %opened.name(), "store connected");
            Ok(opened.store().clone())
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
    metrics: BusMetrics,
) -> Result<NatsBus, ServeError> {
    let cluster = &config.cluster;
    let mut bus = NatsBusConfig::new(cluster.nats_url.clone(), node);
    bus.subjects = Subjects::new(cluster.subject_prefix.clone())
        .map_err(|e| ServeError::Internal(e.to_string()))?;
    bus.gateway = gateway;
    bus.heartbeat_interval = cluster.heartbeat_interval();
    bus.member_ttl = cluster.member_ttl();
    bus.metrics = metrics;
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
