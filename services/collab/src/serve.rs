//! `collab serve`: the whole server in one process. The gateway and one
//! room node share an in-process bus; rooms live in the embedded store in
//! the data dir, or in a CQL cluster (`--store cql://…`).
//!
//! With `metrics_listen`, a second listener serves `/metrics` (then only
//! there) and the probes. The state gateways share (rate limits,
//! revocations, presence) is in memory, or in Redis with `redis`.
//!
//! Room expiry keeps its deadlines with the rest of the shared state: the
//! gateway records a new room's, the room node the deadline of each room
//! that stops, and sweeps them. In memory they do not survive a restart: a
//! room's clock then starts again when it is next used; in Redis they do.
//!
//! [`run`] is the command: it opens the configured store, binds the
//! configured listeners and runs a [`Server`], which is the same server
//! built from a configuration, a store and a bus, and run on listeners
//! given to it — what tests use to run it in their own process.
//!
//! Shutdown order (on the future passed to [`Server::run`], normally
//! SIGTERM):
//! readiness fails and every WebSocket is closed with 1001, the listener
//! stops accepting, the room node finishes its batches and snapshots every
//! room, presence is written out, and the store is closed.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use collab_bus::{Bus, InProcessBus};
use collab_ephemeral::{Ephemeral, EphemeralError, EphemeralMetrics, RedisClient, RedisOptions};
use collab_gateway::{Gateway, GatewayMetrics, GatewayParts, Readiness};
use collab_metrics::{Exporter, Role};
use collab_protocol::NodeId;
use collab_room_node::{ExpiryOptions, RoomNode, RoomNodeMetrics, StartError};
use collab_store::{CqlStore, EmbeddedStore, Store, StoreError};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use crate::config::{CollabConfig, StoreLocation};
use crate::keys;
use crate::rooms_thread::RoomsThread;
use crate::secret::{self, DEV_SECRET_FILE, SecretError};
use crate::store_metrics;

/// The id of the one room node of `collab serve`.
pub const LOCAL_NODE: &str = "local";
/// Printed (to stdout) once the listener is bound, with the actual address;
/// scripts and tests wait for it to learn the port of `--listen …:0`.
pub const LISTENING_PREFIX: &str = "listening on http://";
/// Printed (to stdout) before [`LISTENING_PREFIX`]'s line when
/// `metrics_listen` is set, with its actual address; worded so that a
/// search for the other line never finds this one.
pub const METRICS_LISTENING_PREFIX: &str = "metrics on http://";

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "dev mode (no jwt_secret, no auth.jwks) listens on loopback only, and {0} is not: configure a secret (COLLAB_JWT_SECRET) or a JWKS (COLLAB_AUTH__JWKS), or listen on 127.0.0.1"
    )]
    DevModeNotLoopback(SocketAddr),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("cannot create the data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot start the room node: {0}")]
    RoomNode(#[from] StartError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the server failed: {0}")]
    Serve(std::io::Error),
    #[error(
        "a cluster has no dev mode: configure the secret every gateway shares (COLLAB_JWT_SECRET) or a JWKS (COLLAB_AUTH__JWKS)"
    )]
    ClusterWithoutSecret,
    #[error(
        "a cluster keeps its rooms in a store every node reaches: set store = cql://host:port/keyspace (COLLAB_STORE or --store)"
    )]
    ClusterWithoutSharedStore,
    #[error("cannot set up redis: {0}")]
    Redis(EphemeralError),
    #[error("cannot join the cluster: {0}")]
    Bus(#[from] collab_bus::NatsBusError),
    #[error("cannot load the token keys: {0}")]
    Keys(collab_gateway::JwksError),
    #[error("internal: {0}")]
    Internal(String),
}

impl ServeError {
    /// Whether the configuration itself is at fault (exit code 64), rather
    /// than the environment.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            ServeError::DevModeNotLoopback(_)
                | ServeError::Redis(EphemeralError::BadUrl(_))
                | ServeError::ClusterWithoutSecret
                | ServeError::ClusterWithoutSharedStore
        )
    }
}

/// Ready when the bus carries traffic and the room node's store answers.
struct LocalReadiness {
    bus: Arc<dyn Bus>,
    room_node: Arc<RoomNode>,
}

#[async_trait]
impl Readiness for LocalReadiness {
    async fn ready(&self) -> bool {
        self.bus.is_ready() && self.room_node.is_ready().await
    }
}

/// Runs `collab serve` as configured until `shutdown` resolves, then
/// drains and returns: opens the configured store, binds the configured
/// listeners, says where it listens (on stdout), and runs a [`Server`]
/// over the in-process bus.
pub async fn run(
    config: CollabConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    // Refused before anything is written to disk.
    if config.dev_mode() {
        let mut addresses = std::iter::once(config.listen).chain(config.metrics_listen);
        if let Some(addr) = addresses.find(|a| !a.ip().is_loopback()) {
            return Err(ServeError::DevModeNotLoopback(addr));
        }
    }
    std::fs::create_dir_all(&config.data_dir).map_err(|source| ServeError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let store = open_store(&config).await?;
    let bus: Arc<dyn Bus> = Arc::new(InProcessBus::new());
    let mut server = Server::build(&config, store, bus).await?;

    if let Some((listener, metrics_addr)) = bind_metrics(&config).await? {
        announce_metrics(metrics_addr);
        server = server.with_metrics_listener(listener);
    }
    let listener = bind(config.listen).await?;
    let addr = local_addr(&listener, config.listen)?;
    info!(%addr, store = %server.store_name, dev_mode = server.dev_mode, "listening");
    announce(addr);
    server.run(listener, shutdown).await
}

/// `collab serve` built and ready to run: the gateway and one room node
/// over `bus`, on a store, with the process's metrics and shared state as
/// the configuration says. The listeners are the caller's, so that tests
/// bind port 0 and hand in any store (or a store in front of the real
/// one) without copying this set-up.
pub struct Server {
    gateway: Gateway,
    room_node: Arc<RoomNode>,
    /// Where the room node's tasks run; stops when the server is done.
    rooms_thread: RoomsThread,
    drain_grace: Duration,
    dev_mode: bool,
    store_name: String,
    /// Serves `/metrics` (then only there) and the probes, when given.
    metrics_listener: Option<TcpListener>,
}

impl Server {
    /// Builds the server: the signing secret (in dev mode, the data dir's,
    /// made if missing), the metrics registry, the shared state, the room
    /// node (which starts serving `bus`'s requests now) and the gateway.
    pub async fn build(
        config: &CollabConfig,
        store: ServerStore,
        bus: Arc<dyn Bus>,
    ) -> Result<Server, ServeError> {
        let signing = secret::for_server(config)?;
        if signing.dev_mode {
            warn!(
                secret = %config.data_dir.join(DEV_SECRET_FILE).display(),
                "no jwt_secret configured: running in DEV MODE (generated secret, POST /v1/dev/token \
                 open to anyone who can connect, loopback only); do not use in production"
            );
        }
        let ServerStore {
            store,
            name: store_name,
            embedded,
        } = store;

        let mut registry = Registry::default();
        if let Some(embedded) = &embedded {
            store_metrics::register(&mut registry, embedded);
        }
        let room_metrics = RoomNodeMetrics::register(&mut registry);
        let webhooks = config.webhooks_of(&mut registry);
        let metrics = GatewayMetrics::register(&mut registry);
        let secret = (!signing.bytes.is_empty()).then_some(signing.bytes.as_slice());
        let auth = keys::gateway_auth(config, secret, signing.dev_mode, &mut registry).await?;
        let ephemeral = open_ephemeral(config, &config.gateway.gateway_id, &mut registry)?;
        let exporter = Exporter::new(registry, Role::Serve, crate::VERSION);

        let node = NodeId::parse(LOCAL_NODE).map_err(|e| ServeError::Internal(e.to_string()))?;
        let room_config = config.room_node_config(node);
        // One process: the gateway records new rooms' deadlines where the
        // room node sweeps them (in memory, or in Redis with `redis`).
        let deadlines = ephemeral.expiry.clone();
        let expiry = ExpiryOptions::new(deadlines.clone(), config.rooms.expiry_sweep());
        // The room node on a thread of its own (ADR 0017).
        let rooms_thread = RoomsThread::start()
            .map_err(|e| ServeError::Internal(format!("cannot start the rooms' thread: {e}")))?;
        let room_store = store.clone();
        let room_bus = bus.clone();
        let room_node = Arc::new(
            rooms_thread
                .spawn(async move {
                    RoomNode::start_with_webhooks(
                        room_config,
                        room_store,
                        room_bus,
                        room_metrics,
                        Some(expiry),
                        webhooks,
                    )
                    .await
                })
                .await
                .map_err(|e| ServeError::Internal(format!("the room node did not start: {e}")))??,
        );
        let readiness = Arc::new(LocalReadiness {
            bus: bus.clone(),
            room_node: room_node.clone(),
        });
        let gateway = Gateway::new(
            config.gateway_config(),
            GatewayParts {
                auth,
                bus,
                store,
                readiness,
                metrics,
                exporter,
                ephemeral,
                room_expiry: Some(deadlines),
            },
        );
        Ok(Server {
            gateway,
            room_node,
            rooms_thread,
            drain_grace: config.drain_grace(),
            dev_mode: signing.dev_mode,
            store_name,
            metrics_listener: None,
        })
    }

    /// Serves `/metrics` (with the probes) on `listener` too; with
    /// `metrics_listen` configured, the main listener no longer serves it.
    pub fn with_metrics_listener(mut self, listener: TcpListener) -> Server {
        self.metrics_listener = Some(listener);
        self
    }

    /// Serves on `listener` until `shutdown` resolves, then drains (see
    /// the module's docs) and returns. In dev mode, `listener` must be on
    /// loopback.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let Server {
            gateway,
            room_node,
            // Kept to the end: the drain runs on it.
            rooms_thread: _rooms_thread,
            drain_grace: grace,
            dev_mode,
            metrics_listener,
            ..
        } = self;
        if dev_mode {
            let listening = std::iter::once(&listener).chain(&metrics_listener);
            for listener in listening {
                let addr = listener.local_addr().map_err(ServeError::Serve)?;
                if !addr.ip().is_loopback() {
                    return Err(ServeError::DevModeNotLoopback(addr));
                }
            }
        }
        // Until it is dropped, at the very end of the drain.
        let _metrics_server =
            metrics_listener.map(|listener| spawn_http(listener, gateway.metrics_router()));
        let (mut server, stop_accepting) = spawn_server(&gateway, listener);

        tokio::select! {
            () = shutdown => {}
            ended = &mut server => {
                // The server never ends by itself; if it did, drain what we
                // can and report why.
                let cause = match ended {
                    Ok(Ok(())) => ServeError::Internal("the server stopped by itself".into()),
                    Ok(Err(e)) => ServeError::Serve(e),
                    Err(e) => ServeError::Internal(format!("server task failed: {e}")),
                };
                error!(error = %cause, "server stopped; draining rooms");
                room_node.drain(grace).await;
                return Err(cause);
            }
        }

        info!(grace_secs = grace.as_secs(), "draining");
        gateway.begin_shutdown();
        let _ = stop_accepting.send(());
        room_node.drain(grace).await;
        // Sockets were told to close when the drain began; a peer that does
        // not finish the close handshake is not waited for past the grace.
        match tokio::time::timeout(grace.max(Duration::from_secs(1)), server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => warn!(error = %e, "server ended with an error while draining"),
            Ok(Err(e)) => warn!(error = %e, "server task failed while draining"),
            Err(_) => warn!(
                connections = gateway.connections(),
                "connections still open after the grace period; closing anyway"
            ),
        }
        gateway.flush_presence().await;
        info!("drained; bye");
        Ok(())
    }
}

/// The state this process's gateway shares with the others: in the Redis
/// that `redis` names, else in memory. Registers its metrics (the Redis
/// ones only with Redis). Does not wait for Redis: a gateway serves with
/// Redis down.
pub(crate) fn open_ephemeral(
    config: &CollabConfig,
    gateway_id: &str,
    registry: &mut Registry,
) -> Result<Ephemeral, ServeError> {
    let mut options = config.gateway.ephemeral_options();
    options.gateway_id = gateway_id.to_owned();
    match config.redis_url() {
        None => {
            info!("shared state (rate limits, revocations, presence) in this process");
            let metrics = EphemeralMetrics::register_without_redis(registry);
            Ok(Ephemeral::in_memory(&options, metrics))
        }
        Some(url) => {
            let metrics = EphemeralMetrics::register(registry);
            let client =
                RedisClient::connect(RedisOptions::new(url), metrics).map_err(ServeError::Redis)?;
            info!(redis = %redis_address(url), "shared state (rate limits, revocations, presence) in redis");
            Ok(Ephemeral::redis(client, &options))
        }
    }
}

/// `host:port` of a Redis URL, for the logs: the URL may hold a password.
fn redis_address(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest)
}

/// Serves the gateway on `listener` in a task, until the returned sender
/// is used (or dropped): then it stops accepting and the task ends once
/// every connection has closed.
pub(crate) fn spawn_server(
    gateway: &Gateway,
    listener: TcpListener,
) -> (
    tokio::task::JoinHandle<std::io::Result<()>>,
    oneshot::Sender<()>,
) {
    let (stop_accepting, stopped) = oneshot::channel::<()>();
    let gateway = gateway.clone();
    let server = tokio::spawn(async move {
        gateway
            .serve(listener, async move {
                let _ = stopped.await;
            })
            .await
    });
    (server, stop_accepting)
}

/// Serves `router` on `listener` in a task until the returned sender is
/// used or dropped.
pub(crate) fn spawn_http(listener: TcpListener, router: Router) -> oneshot::Sender<()> {
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await;
        if let Err(e) = served {
            warn!(error = %e, "an HTTP listener failed");
        }
    });
    stop
}

/// The metrics listener, when `metrics_listen` is set, with its actual
/// address.
pub(crate) async fn bind_metrics(
    config: &CollabConfig,
) -> Result<Option<(TcpListener, SocketAddr)>, ServeError> {
    let Some(configured) = config.metrics_listen else {
        return Ok(None);
    };
    let listener = bind(configured).await?;
    let addr = local_addr(&listener, configured)?;
    info!(%addr, "metrics listening");
    Ok(Some((listener, addr)))
}

pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

pub(crate) fn local_addr(
    listener: &TcpListener,
    configured: SocketAddr,
) -> Result<SocketAddr, ServeError> {
    listener.local_addr().map_err(|source| ServeError::Bind {
        addr: configured,
        source,
    })
}

/// Tells scripts and tests where the server listens.
pub(crate) fn announce(addr: SocketAddr) {
    // Stdout is line-buffered: the line is out as soon as this returns.
    println!("{LISTENING_PREFIX}{addr}");
}

/// Tells scripts and tests where the metrics listener is; before
/// [`announce`], so whoever waits for that line has seen this one.
pub(crate) fn announce_metrics(addr: SocketAddr) {
    println!("{METRICS_LISTENING_PREFIX}{addr}");
}

/// The store a server runs on.
pub struct ServerStore {
    store: Arc<dyn Store>,
    /// Where it is, for the logs.
    name: String,
    /// The same store when it is the embedded one, for its metrics.
    embedded: Option<Arc<EmbeddedStore>>,
}

impl ServerStore {
    /// Any store; `name` says where it is, in the logs.
    pub fn new(store: Arc<dyn Store>, name: impl Into<String>) -> ServerStore {
        ServerStore {
            store,
            name: name.into(),
            embedded: None,
        }
    }

    /// The embedded store, whose figures go on `/metrics` too.
    pub fn embedded(store: Arc<EmbeddedStore>) -> ServerStore {
        ServerStore {
            name: store.path().display().to_string(),
            store: store.clone(),
            embedded: Some(store),
        }
    }

    /// The store itself.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Where it is, for the logs.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Opens the store the configuration names.
pub async fn open_store(config: &CollabConfig) -> Result<ServerStore, ServeError> {
    let location = config.store_location().map_err(ServeError::Internal)?;
    match location {
        StoreLocation::Embedded => {
            // Opening repairs the file after a crash, which reads all of it.
            let data_dir = config.data_dir.clone();
            let embedded =
                tokio::task::spawn_blocking(move || EmbeddedStore::open_in_dir(data_dir))
                    .await
                    .map_err(|e| {
                        ServeError::Internal(format!("store opening task failed: {e}"))
                    })??;
            Ok(ServerStore::embedded(Arc::new(embedded)))
        }
        StoreLocation::Cql(options) => {
            let name = options.to_string();
            let store = CqlStore::connect(options).await?;
            Ok(ServerStore::new(Arc::new(store), name))
        }
    }
}

#[cfg(test)]
mod tests {
    use collab_store::MemoryStore;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn dev_config(data_dir: &std::path::Path) -> CollabConfig {
        CollabConfig {
            data_dir: data_dir.to_owned(),
            ..CollabConfig::default()
        }
    }

    async fn server(config: &CollabConfig) -> Server {
        let store = ServerStore::new(Arc::new(MemoryStore::new()), "memory");
        Server::build(config, store, Arc::new(InProcessBus::new()))
            .await
            .expect("builds")
    }

    #[tokio::test]
    async fn a_dev_mode_server_refuses_a_listener_off_loopback() {
        let dir = tempfile::tempdir().expect("temp dir");
        let server = server(&dev_config(dir.path())).await;
        let listener = TcpListener::bind("0.0.0.0:0").await.expect("binds");
        let refused = server.run(listener, std::future::pending()).await;
        assert!(
            matches!(refused, Err(ServeError::DevModeNotLoopback(addr)) if addr.ip().is_unspecified()),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn a_server_serves_the_listener_it_is_given_until_shutdown() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = dev_config(dir.path());
        config.drain_grace_secs = 1;
        let server = server(&config).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("address");
        let (stop, stopped) = oneshot::channel::<()>();
        let running = tokio::spawn(server.run(listener, async move {
            let _ = stopped.await;
        }));
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connects");
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .expect("writes");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.expect("reads");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let _ = stop.send(());
        let ended = tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .expect("drains within 10 s")
            .expect("task");
        assert!(ended.is_ok(), "{ended:?}");
    }
}
