//! A whole collab cluster on loopback, for the cross-process failover tests.
//!
//! [`Cluster`] starts a private nats-server (JetStream, a free port, a
//! temporary store dir; `collab_bus::testsuite::NatsServer`), picks a fresh
//! keyspace on the run's shared CQL server ([`shared_cql_store_url`]), when
//! asked ([`ClusterOptions::redis`]) a private redis-server
//! (`collab_ephemeral::testsuite::RedisServer`) for the state the gateways
//! share, and runs `collab gateway` and `collab room-node` processes
//! against them, each
//! with its own node id, its log in a file of the cluster's temporary
//! directory and the last lines in memory. Tests kill (SIGKILL), freeze
//! (SIGSTOP / SIGCONT), drain (SIGTERM) and add processes, restart NATS,
//! kill and restart Redis, and read the stored log with the writer of every
//! batch. Every process is
//! killed when the cluster is dropped; if the test is failing, the tail of
//! every process's log is printed first.
//!
//! The harness watches the cluster's membership like any member would (a
//! `NatsBus` that announces no role), so a test can wait until the cluster
//! *sees* a change instead of guessing how long that takes.
//!
//! [`DrawClient`] is a client that survives all of that: it keeps an outbox
//! of ops with their cids and resends every op it has no answer for with
//! the same cid (after `unavailable`, after a time without an answer, after
//! a reconnect); it reconnects to any live gateway when its socket closes
//! and resumes with `since` and `epoch`; and it checks, as it goes, that
//! the ops it receives are gapless, in order and never duplicated, keeping
//! every one of them so a test can compare them with the stored log. It
//! accepts no refusal but the ones the protocol gives a correct client:
//! `nothing_to_undo` / `nothing_to_redo`, and `bad_request` for the rest of
//! a stroke the room ended because the client's connection left mid-stroke.
//! A drawing client has one op in flight, so its retried ops never overtake
//! one another and every op means what the user meant.
//!
//! Waiting is always polling with a deadline; a deadline that passes fails
//! the test with what it waited for.
//!
//! A process can also run in a network namespace of its own
//! ([`Cluster::add_isolated`], see [`super::netns`]), reaching NATS over
//! one link and the store over another: [`Cluster::cut`] partitions both,
//! [`Cluster::cut_bus`] only the first, [`Cluster::heal`] restores them; a
//! gateway there serves its clients over a third link that no cut touches.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use collab::serve::LISTENING_PREFIX;
use collab_actors::state::{RoomMeta, RoomState};
use collab_bus::testsuite::NatsServer;
use collab_bus::{Bus, Members, NatsBus, NatsBusConfig, placement};
use collab_ephemeral::testsuite::RedisServer;
use collab_protocol::{Epoch, NodeId, Op, OpEvent, RoomId, RoomKind, Seq};
use collab_store::{CqlOptions, CqlStore, LoggedOp, StoreReader};
use rustix::process::{Pid, Signal, kill_process};
use serde_json::{Value, json};
use tokio::sync::{OnceCell, mpsc, watch};
use tokio::time::Instant;

use super::netns::{InnerRelay, Link, NetNs, Relay};
use super::server::clear_collab_env;
use super::{HarnessError, WsClient, WsError, collab_binary, shared_cql_store_url};

/// Log lines of each process kept in memory.
const LOG_TAIL: usize = 400;
/// Log lines of each process printed when a test fails.
const LOG_TAIL_ON_FAILURE: usize = 60;
/// How long a process may take to start listening, become ready, or exit
/// after SIGTERM. Generous: a debug build on a busy two-core machine.
pub const PROCESS_DEADLINE: Duration = Duration::from_secs(60);
/// Heartbeat and membership TTL the tests use unless told otherwise: small,
/// so a dead node drops out in about 1.5 s instead of the default 3.
pub const TEST_HEARTBEAT: Duration = Duration::from_millis(250);
pub const TEST_MEMBER_TTL: Duration = Duration::from_millis(1500);
/// The id of the harness's own (role-less) membership watcher.
const OBSERVER_ID: &str = "test-observer";
/// The processes' log filter unless the test runs with `RUST_LOG`.
const CHILD_LOG_FILTER: &str = "info,scylla=warn,async_nats=warn";
/// Set (to anything) to keep the cluster's directory, with every process's
/// whole log, after the test.
pub const KEEP_LOGS_ENV: &str = "COLLAB_TEST_KEEP_CLUSTER_LOGS";

// === options ===

/// What to start. Defaults: 2 gateways, 3 room nodes, heartbeat 250 ms and
/// TTL 1.5 s, rate limits far above what a test sends, and a long grace for
/// users to come back to their open strokes (clients reconnect; an ended
/// stroke would refuse their retried points).
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    gateways: usize,
    room_nodes: usize,
    /// `None`: the product's defaults.
    membership: Option<(Duration, Duration)>,
    env: Vec<(String, String)>,
    redis: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        let env = [
            ("COLLAB_GATEWAY__RATE_LIMITS__OPS_PER_SEC", "100000"),
            ("COLLAB_GATEWAY__RATE_LIMITS__OPS_BURST", "100000"),
            ("COLLAB_GATEWAY__RATE_LIMITS__JOINS_PER_SEC", "100000"),
            ("COLLAB_GATEWAY__RATE_LIMITS__JOINS_BURST", "100000"),
            ("COLLAB_GATEWAY__RATE_LIMITS__ROOMS_PER_MIN", "1000000"),
            ("COLLAB_GATEWAY__RATE_LIMITS__ROOMS_BURST", "100000"),
            ("COLLAB_GATEWAY__RATE_LIMITS__HTTP_PER_SEC", "100000"),
            ("COLLAB_GATEWAY__RATE_LIMITS__HTTP_BURST", "100000"),
            ("COLLAB_ROOMS__ORPHAN_GRACE_SECS", "3600"),
        ];
        ClusterOptions {
            gateways: 2,
            room_nodes: 3,
            membership: Some((TEST_HEARTBEAT, TEST_MEMBER_TTL)),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            redis: false,
        }
    }
}

impl ClusterOptions {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn gateways(mut self, n: usize) -> Self {
        self.gateways = n;
        self
    }

    pub fn room_nodes(mut self, n: usize) -> Self {
        self.room_nodes = n;
        self
    }

    /// Heartbeat interval and membership TTL of every process.
    pub fn membership(mut self, heartbeat: Duration, ttl: Duration) -> Self {
        self.membership = Some((heartbeat, ttl));
        self
    }

    /// Leaves heartbeat and TTL at the product's defaults.
    pub fn default_membership(mut self) -> Self {
        self.membership = None;
        self
    }

    /// Runs a private redis-server and gives every process its URL
    /// (`COLLAB_REDIS`): shared rate limits, revocations and presence.
    pub fn redis(mut self) -> Self {
        self.redis = true;
        self
    }

    /// An environment variable of every process, e.g.
    /// `COLLAB_ROOMS__SNAPSHOT_EVERY_OPS`; a later one wins.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }
}

// === processes ===

/// What a process of the cluster is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Gateway,
    RoomNode,
}

impl Role {
    fn subcommand(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::RoomNode => "room-node",
        }
    }

    /// Node ids: `g1`, `g2`, … and `r1`, `r2`, …; a replacement gets the
    /// next number, never an old one.
    fn id_prefix(self) -> &'static str {
        match self {
            Role::Gateway => "g",
            Role::RoomNode => "r",
        }
    }
}

/// Whether a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Running,
    /// SIGSTOPped: alive, but it does nothing (no heartbeats either).
    Stopped,
    /// Running, but its link to NATS (and maybe the store) is cut: a
    /// partition.
    Cut,
    Exited,
}

type LogTail = Arc<Mutex<VecDeque<String>>>;

struct Node {
    id: String,
    role: Role,
    child: Option<Child>,
    addr: SocketAddr,
    state: NodeState,
    log: LogTail,
    /// Its namespace, for a process of [`Cluster::add_isolated`]; dropped
    /// (links and namespace removed) after the process is killed.
    isolation: Option<Isolation>,
}

/// Where an isolated process runs: its namespace, its links to NATS and to
/// the store (each relayed to the server's loopback port) and the address
/// it listens on.
struct Isolation {
    nats_link: Link,
    store_link: Link,
    listen: std::net::Ipv4Addr,
    nats_relay: Relay,
    /// The CQL server's own address inside the namespace, relayed over the
    /// store link to `store_relay`: the process uses the cluster's store URL.
    _store_inside: InnerRelay,
    _store_relay: Relay,
    // Last: removed after the relays stop.
    ns: NetNs,
}

impl Node {
    fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn signal(&self, signal: Signal) -> Result<(), HarnessError> {
        let child = self
            .child
            .as_ref()
            .ok_or_else(|| HarnessError::Stop(format!("{} is not running", self.id)))?;
        kill_process(Pid::from_child(child), signal)
            .map_err(|e| HarnessError::Stop(format!("cannot signal {}: {e}", self.id)))
    }
}

/// A process that has been spawned and has not said where it listens yet.
struct Starting {
    id: String,
    role: Role,
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    log: LogTail,
    isolation: Option<Isolation>,
}

/// The live gateways' WebSocket URLs, shared with the clients: the cluster
/// removes a gateway before it kills or drains it and adds new ones once
/// they are ready, so a reconnecting client finds a live one.
#[derive(Debug, Clone, Default)]
pub struct Gateways(Arc<Mutex<Vec<(String, String)>>>);

impl Gateways {
    /// `(node id, ws://ADDR/v1/ws)` of every live gateway, oldest first.
    pub fn list(&self) -> Vec<(String, String)> {
        lock(&self.0).clone()
    }

    fn add(&self, id: &str, url: String) {
        lock(&self.0).push((id.to_owned(), url));
    }

    fn remove(&self, id: &str) {
        lock(&self.0).retain(|(g, _)| g != id);
    }
}

/// A room as created over HTTP.
#[derive(Debug, Clone)]
pub struct RoomInfo {
    pub id: String,
    pub kind: RoomKind,
    pub epoch: String,
}

impl RoomInfo {
    pub fn room_id(&self) -> RoomId {
        RoomId::parse(self.id.as_str()).expect("the server's room id is valid")
    }

    /// What a fresh model of the room needs.
    pub fn meta(&self) -> RoomMeta {
        RoomMeta {
            id: self.room_id(),
            kind: self.kind,
            epoch: Epoch::parse(self.epoch.as_str()).expect("the server's epoch is valid"),
        }
    }
}

// === the cluster ===

/// NATS, a keyspace, gateways and room nodes; every process is killed on
/// drop.
pub struct Cluster {
    options: ClusterOptions,
    nats: NatsServer,
    redis: Option<RedisServer>,
    store_url: String,
    secret: String,
    nodes: Vec<Node>,
    next_number: HashMap<&'static str, usize>,
    gateways: Gateways,
    observer: Option<NatsBus>,
    http: reqwest::Client,
    store: OnceCell<Arc<CqlStore>>,
    tokens: HashMap<String, String>,
    // Last: removed after every process is gone.
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts NATS and the processes, and waits until every process is
    /// ready and the membership shows all of them.
    ///
    /// The first room node starts alone: it creates the keyspace and the
    /// tables, which Cassandra takes a few seconds for, and concurrent
    /// schema changes from five processes would only slow that down.
    pub async fn start(options: ClusterOptions) -> Result<Cluster, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix("collab-cluster-")
            .tempdir()?;
        let nats = blocking(NatsServer::start);
        let redis = options.redis.then(|| blocking(RedisServer::start));
        let secret = format!(
            "cluster-test-secret-{:016x}",
            collab_store::testsuite::random_u64()
        );
        let mut cluster = Cluster {
            nats,
            redis,
            store_url: shared_cql_store_url(),
            secret,
            nodes: Vec::new(),
            next_number: HashMap::new(),
            gateways: Gateways::default(),
            observer: None,
            http: reqwest::Client::new(),
            store: OnceCell::new(),
            tokens: HashMap::new(),
            dir,
            options,
        };
        if cluster.options.room_nodes == 0 || cluster.options.gateways == 0 {
            return Err(HarnessError::Setup(
                "a cluster needs a gateway and a room node".into(),
            ));
        }
        let first = cluster.spawn(Role::RoomNode)?;
        cluster.listening(first).await?;
        let mut starting = Vec::new();
        for _ in 1..cluster.options.room_nodes {
            starting.push(cluster.spawn(Role::RoomNode)?);
        }
        for _ in 0..cluster.options.gateways {
            starting.push(cluster.spawn(Role::Gateway)?);
        }
        for process in starting {
            cluster.listening(process).await?;
        }
        cluster.observer = Some(cluster.connect_observer().await?);
        let ids: Vec<String> = cluster.nodes.iter().map(|n| n.id.clone()).collect();
        for id in &ids {
            cluster.wait_ready(id).await;
        }
        cluster.wait_membership().await;
        Ok(cluster)
    }

    // --- what runs ---

    /// The ids of the running (not stopped, not exited) gateways.
    pub fn gateway_ids(&self) -> Vec<String> {
        self.ids(Role::Gateway, NodeState::Running)
    }

    /// The ids of the running room nodes: the live set placement should
    /// see once the membership has caught up.
    pub fn room_node_ids(&self) -> Vec<String> {
        self.ids(Role::RoomNode, NodeState::Running)
    }

    fn ids(&self, role: Role, state: NodeState) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.role == role && n.state == state)
            .map(|n| n.id.clone())
            .collect()
    }

    /// The owner of `room` among the running room nodes.
    pub fn owner_of(&self, room: &str) -> String {
        owner_among(room, &self.room_node_ids())
    }

    /// The shared list of live gateways, for clients.
    pub fn gateways(&self) -> Gateways {
        self.gateways.clone()
    }

    /// `ws://ADDR/v1/ws` of the `i`-th running gateway.
    pub fn gateway_ws_url(&self, i: usize) -> String {
        let list = self.gateways.list();
        assert!(!list.is_empty(), "no live gateway");
        list[i % list.len()].1.clone()
    }

    /// `http://ADDR` of a process.
    pub fn http_url(&self, id: &str) -> String {
        self.node(id).http_url()
    }

    /// The address a process listens on (its HTTP, `/metrics` included).
    pub fn addr(&self, id: &str) -> SocketAddr {
        self.node(id).addr
    }

    pub fn state(&self, id: &str) -> NodeState {
        self.node(id).state
    }

    /// The last log lines of a process (stdout and stderr), oldest first.
    pub fn logs(&self, id: &str) -> Vec<String> {
        lock(&self.node(id).log).iter().cloned().collect()
    }

    /// The directory with every process's log file (`ID.log`) and the
    /// processes' working directories.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn nats_url(&self) -> String {
        self.nats.url()
    }

    /// `redis://127.0.0.1:PORT` of the cluster's Redis, if it has one.
    pub fn redis_url(&self) -> Option<String> {
        self.redis.as_ref().map(RedisServer::url)
    }

    pub fn store_url(&self) -> &str {
        &self.store_url
    }

    /// The signing secret of the cluster's tokens.
    pub fn jwt_secret(&self) -> &str {
        &self.secret
    }

    fn node(&self, id: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no process {id} in this cluster"))
    }

    fn node_mut(&mut self, id: &str) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no process {id} in this cluster"))
    }

    // --- faults and changes ---

    /// SIGKILL: a crash. Reaped at once.
    pub fn kill(&mut self, id: &str) -> Result<ExitStatus, HarnessError> {
        self.gateways.remove(id);
        let node = self.node_mut(id);
        let mut child = node
            .child
            .take()
            .ok_or_else(|| HarnessError::Stop(format!("{id} is not running")))?;
        node.state = NodeState::Exited;
        // `Child::kill` is SIGKILL on unix (it also ends a stopped process).
        child.kill()?;
        Ok(child.wait()?)
    }

    /// SIGSTOP: the process freezes (no heartbeats, no answers) but keeps
    /// its sockets and state, like a long GC pause or a paused VM.
    pub fn stop(&mut self, id: &str) -> Result<(), HarnessError> {
        let node = self.node_mut(id);
        node.signal(Signal::STOP)?;
        node.state = NodeState::Stopped;
        Ok(())
    }

    /// SIGCONT: a stopped process carries on where it was.
    pub fn cont(&mut self, id: &str) -> Result<(), HarnessError> {
        let node = self.node_mut(id);
        node.signal(Signal::CONT)?;
        node.state = NodeState::Running;
        Ok(())
    }

    /// SIGTERM (graceful drain), and waits for the exit.
    pub async fn terminate(&mut self, id: &str) -> Result<ExitStatus, HarnessError> {
        // Clients must not reconnect to a gateway that is draining.
        self.gateways.remove(id);
        self.node(id).signal(Signal::TERM)?;
        let deadline = Instant::now() + PROCESS_DEADLINE;
        loop {
            let node = self.node_mut(id);
            let child = node
                .child
                .as_mut()
                .ok_or_else(|| HarnessError::Stop(format!("{id} is not running")))?;
            if let Some(status) = child.try_wait()? {
                node.child = None;
                node.state = NodeState::Exited;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::Stop(format!(
                    "{id} still running {PROCESS_DEADLINE:?} after SIGTERM; log:\n{}",
                    tail(&node.log, 30)
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await; // poll interval
        }
    }

    /// Starts one more room node (the next id) and waits until it is ready
    /// and the membership shows it. Returns its id.
    pub async fn add_room_node(&mut self) -> Result<String, HarnessError> {
        self.add(Role::RoomNode).await
    }

    /// Starts one more gateway and waits until it is ready; clients can
    /// then reconnect to it. Returns its id.
    pub async fn add_gateway(&mut self) -> Result<String, HarnessError> {
        self.add(Role::Gateway).await
    }

    async fn add(&mut self, role: Role) -> Result<String, HarnessError> {
        let starting = self.spawn(role)?;
        let id = self.listening(starting).await?;
        self.wait_ready(&id).await;
        self.wait_membership().await;
        Ok(id)
    }

    /// SIGKILLs the cluster's redis-server: an outage. It keeps nothing
    /// on disk, so [`start_redis`](Self::start_redis) brings it back empty,
    /// as a cache restarted without persistence.
    pub fn kill_redis(&mut self) {
        let redis = self.redis.as_mut().expect("the cluster runs no redis");
        redis.kill();
    }

    /// Starts the killed redis-server again on the same port; returns once
    /// it answers.
    pub async fn start_redis(&mut self) {
        let redis = self.redis.as_mut().expect("the cluster runs no redis");
        blocking(|| redis.restart());
    }

    /// Kills nats-server and starts it again on the same port with the same
    /// JetStream store; returns once it accepts clients (the processes
    /// reconnect by themselves).
    pub async fn restart_nats(&mut self) {
        blocking(|| self.nats.restart());
    }

    /// Starts one more process of `role` in a network namespace of its
    /// own and waits until it is ready and the membership shows it. It
    /// reaches NATS over one veth link and the store over another (each
    /// relayed to the server's loopback port), which [`Cluster::cut`] and
    /// [`Cluster::cut_bus`] partition; a room node listens on the NATS
    /// link, a gateway on a third link for its clients, which stays up.
    /// Returns its id. Check [`partitions_unsupported`] first.
    pub async fn add_isolated(&mut self, role: Role) -> Result<String, HarnessError> {
        let mut ns = NetNs::create().map_err(HarnessError::Setup)?;
        let nats_link = ns.add_link()?;
        let store_link = ns.add_link()?;
        let listen = match role {
            Role::RoomNode => nats_link.ns_addr,
            Role::Gateway => ns.add_link()?.ns_addr,
        };
        let nats_target = SocketAddr::from(([127, 0, 0, 1], self.nats.port()));
        let store_target = store_addr(&self.store_url)?;
        let store_relay = Relay::start(store_link.host_addr, store_target).await?;
        let isolation = Isolation {
            nats_relay: Relay::start(nats_link.host_addr, nats_target).await?,
            _store_inside: ns.relay_inside(store_target.port(), store_relay.addr())?,
            _store_relay: store_relay,
            nats_link,
            store_link,
            listen,
            ns,
        };
        let starting = self.spawn_in(role, Some(isolation))?;
        let id = self.listening(starting).await?;
        self.wait_ready(&id).await;
        self.wait_membership().await;
        Ok(id)
    }

    /// Partitions an isolated process from NATS and the store: both links
    /// go down; the process runs on. A cut gateway leaves the clients'
    /// list of gateways (a load balancer stops sending new clients to a
    /// gateway that fails its readiness), but its clients stay connected.
    pub fn cut(&mut self, id: &str) -> Result<(), HarnessError> {
        self.cut_links(id, true)
    }

    /// Partitions an isolated process from NATS only: it still reaches the
    /// store, so whatever it commits meets the store's fencing.
    pub fn cut_bus(&mut self, id: &str) -> Result<(), HarnessError> {
        self.cut_links(id, false)
    }

    fn cut_links(&mut self, id: &str, store_too: bool) -> Result<(), HarnessError> {
        self.gateways.remove(id);
        let node = self.node_mut(id);
        let isolation = node
            .isolation
            .as_ref()
            .ok_or_else(|| HarnessError::Setup(format!("{id} is not isolated")))?;
        isolation.nats_link.cut()?;
        if store_too {
            isolation.store_link.cut()?;
        }
        node.state = NodeState::Cut;
        Ok(())
    }

    /// Ends a partition: every link of the process comes back up. A
    /// gateway returns to the clients' list once it is ready again.
    pub async fn heal(&mut self, id: &str) -> Result<(), HarnessError> {
        let node = self.node_mut(id);
        let isolation = node
            .isolation
            .as_ref()
            .ok_or_else(|| HarnessError::Setup(format!("{id} is not isolated")))?;
        isolation.nats_link.heal()?;
        isolation.store_link.heal()?;
        node.state = NodeState::Running;
        if node.role == Role::Gateway {
            let url = format!("ws://{}/v1/ws", node.addr);
            self.wait_ready(id).await;
            self.gateways.add(id, url);
        }
        Ok(())
    }

    /// Whether a process is still alive (not exited, whatever its state).
    pub fn is_alive(&mut self, id: &str) -> bool {
        let node = self.node_mut(id);
        node.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    // --- waiting ---

    /// Waits until `GET /readyz` of a process answers 200.
    pub async fn wait_ready(&self, id: &str) {
        let url = format!("{}/readyz", self.http_url(id));
        let (http, url) = (&self.http, url.as_str());
        wait_for(
            &format!("{id} to be ready ({url} 200)"),
            PROCESS_DEADLINE,
            || async move {
                let answer = http.get(url).timeout(Duration::from_secs(2)).send().await;
                matches!(answer, Ok(r) if r.status().as_u16() == 200).then_some(())
            },
        )
        .await;
    }

    /// Waits until every running process answers `/readyz` with 200.
    pub async fn wait_all_ready(&self) {
        let running: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.state == NodeState::Running)
            .map(|n| n.id.clone())
            .collect();
        for id in running {
            self.wait_ready(&id).await;
        }
    }

    /// The live members as the cluster's membership shows them (to any
    /// process that watches it, such as the harness).
    pub fn members(&self) -> Members {
        self.observer
            .as_ref()
            .and_then(|bus| bus.members())
            .map(|members| members.borrow().clone())
            .unwrap_or_default()
    }

    /// The live room nodes as the membership shows them.
    pub fn member_room_nodes(&self) -> Vec<String> {
        self.members()
            .room_nodes()
            .map(|n| n.as_str().to_owned())
            .collect()
    }

    /// Waits until the membership shows exactly the running room nodes and
    /// gateways: a killed or stopped one has expired, a new one has
    /// announced itself.
    pub async fn wait_membership(&self) {
        let mut room_nodes = self.room_node_ids();
        let mut gateways = self.gateway_ids();
        room_nodes.sort();
        gateways.sort();
        wait_for(
            &format!("the membership to be room nodes {room_nodes:?} and gateways {gateways:?}"),
            PROCESS_DEADLINE,
            || {
                let members = self.members();
                let seen_rooms: Vec<String> = members
                    .room_nodes()
                    .map(|n| n.as_str().to_owned())
                    .collect();
                let seen_gateways: Vec<String> =
                    members.gateways().map(|n| n.as_str().to_owned()).collect();
                let done = seen_rooms == room_nodes && seen_gateways == gateways;
                async move { done.then_some(()) }
            },
        )
        .await;
    }

    // --- users and rooms ---

    /// A token for `user` with write access everywhere, minted by
    /// `collab token` with the cluster's secret (cached per user).
    pub async fn token(&mut self, user: &str) -> Result<String, HarnessError> {
        self.mint(user, &[]).await
    }

    /// A token with the admin scope (`collab token --admin`), for the
    /// inspection endpoints.
    pub async fn admin_token(&mut self) -> Result<String, HarnessError> {
        self.mint("operator", &["--admin"]).await
    }

    /// `GET path` on process `id` as the holder of `token`: the status and
    /// the JSON body (`Null` when it is not JSON).
    pub async fn get_json(
        &self,
        id: &str,
        token: &str,
        path: &str,
    ) -> Result<(u16, Value), HarnessError> {
        answer(self.http.get(format!("{}{path}", self.http_url(id))), token).await
    }

    /// `POST path` with the JSON `body` on process `id` as the holder of
    /// `token`: the status and the JSON body (`Null` when it is not JSON).
    pub async fn post_json(
        &self,
        id: &str,
        token: &str,
        path: &str,
        body: &Value,
    ) -> Result<(u16, Value), HarnessError> {
        answer(
            self.http
                .post(format!("{}{path}", self.http_url(id)))
                .json(body),
            token,
        )
        .await
    }

    /// Mints with `collab token --user USER EXTRA…` (cached).
    async fn mint(&mut self, user: &str, extra: &[&str]) -> Result<String, HarnessError> {
        let key = format!("{user} {}", extra.join(" "));
        if let Some(token) = self.tokens.get(&key) {
            return Ok(token.clone());
        }
        let token = self.fresh_token(user, extra).await?;
        self.tokens.insert(key, token.clone());
        Ok(token)
    }

    /// A new token from `collab token --user USER EXTRA…`, never one
    /// minted before (its own `jti`).
    pub async fn fresh_token(&self, user: &str, extra: &[&str]) -> Result<String, HarnessError> {
        let mut args = vec!["token", "--user", user];
        args.extend_from_slice(extra);
        let output = self.run_collab(&args).await?;
        if !output.status.success() {
            return Err(HarnessError::Http(format!(
                "collab token failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// Runs `collab ARGS…` as an operator of this cluster would: with its
    /// secret and, if it has one, its Redis (`collab token revoke`).
    pub async fn run_collab(&self, args: &[&str]) -> Result<std::process::Output, HarnessError> {
        let mut cmd = tokio::process::Command::new(collab_binary()?);
        cmd.args(args);
        clear_collab_env(cmd.as_std_mut());
        cmd.env("COLLAB_JWT_SECRET", &self.secret);
        if let Some(redis) = &self.redis {
            cmd.env("COLLAB_REDIS", redis.url());
        }
        Ok(cmd
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .await?)
    }

    /// `POST /v1/rooms` with `body` on a live gateway as `user`.
    pub async fn create_room(
        &mut self,
        user: &str,
        body: &Value,
    ) -> Result<RoomInfo, HarnessError> {
        let token = self.token(user).await?;
        let (gateway, _) = self
            .gateways
            .list()
            .into_iter()
            .next()
            .ok_or_else(|| HarnessError::Setup("no live gateway".into()))?;
        let base = self.http_url(&gateway);
        let response = self
            .http
            .post(format!("{base}/v1/rooms"))
            .bearer_auth(&token)
            .json(body)
            .send()
            .await
            .map_err(|e| HarnessError::Http(e.to_string()))?;
        let status = response.status().as_u16();
        let answer: Value = response
            .json()
            .await
            .map_err(|e| HarnessError::Http(format!("create room answer ({status}): {e}")))?;
        if status != 201 {
            return Err(HarnessError::Http(format!(
                "create room {body}: {status} {answer}"
            )));
        }
        let kind = serde_json::from_value(answer["kind"].clone())
            .map_err(|e| HarnessError::Http(format!("room kind in {answer}: {e}")))?;
        Ok(RoomInfo {
            id: text(&answer["id"]),
            kind,
            epoch: text(&answer["epoch"]),
        })
    }

    /// `DELETE /v1/rooms/{room}` on process `id` as the holder of `token`:
    /// the status and the JSON body (`Null` when it is not JSON).
    pub async fn delete_room(
        &self,
        id: &str,
        token: &str,
        room: &str,
    ) -> Result<(u16, Value), HarnessError> {
        let response = self
            .http
            .delete(format!("{}/v1/rooms/{room}", self.http_url(id)))
            .bearer_auth(token)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| HarnessError::Http(e.to_string()))?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    /// Creates the board `id`.
    pub async fn create_board(&mut self, id: &str) -> Result<RoomInfo, HarnessError> {
        self.create_room("admin", &json!({"kind": "board", "id": id}))
            .await
    }

    /// Creates the channel `id`.
    pub async fn create_channel(&mut self, id: &str) -> Result<RoomInfo, HarnessError> {
        self.create_room("admin", &json!({"kind": "channel", "id": id}))
            .await
    }

    /// A client of `room` for `user`, first connecting to the `gateway`-th
    /// live gateway.
    pub async fn client(
        &mut self,
        user: &str,
        room: &RoomInfo,
        gateway: usize,
        options: ClientOptions,
    ) -> Result<DrawClient, HarnessError> {
        let token = self.token(user).await?;
        Ok(DrawClient::new(
            user,
            token,
            room,
            self.gateways(),
            gateway,
            options,
        ))
    }

    // --- the store ---

    /// A CQL store on the cluster's keyspace, to read what was committed.
    pub async fn store(&self) -> Arc<CqlStore> {
        self.store
            .get_or_init(|| async {
                let options =
                    CqlOptions::from_url(&self.store_url).expect("the cluster's store URL parses");
                Arc::new(
                    CqlStore::connect(options)
                        .await
                        .expect("the test connects to the cluster's store"),
                )
            })
            .await
            .clone()
    }

    /// The whole stored log of `room`, with the writer of every op.
    pub async fn read_log(&self, room: &str) -> Vec<LoggedOp> {
        let store = self.store().await;
        let room = RoomId::parse(room).expect("a room id");
        let mut log: Vec<LoggedOp> = Vec::new();
        loop {
            let after = log.last().map_or(Seq::ZERO, |op| op.event.seq);
            let page = store
                .read_log(&room, after, 1000)
                .await
                .unwrap_or_else(|e| panic!("reading the log of {room}: {e}"));
            if page.is_empty() {
                return log;
            }
            log.extend(page);
        }
    }

    /// The highest stored seq of `room`.
    pub async fn head(&self, room: &str) -> u64 {
        let store = self.store().await;
        let room = RoomId::parse(room).expect("a room id");
        store
            .head(&room)
            .await
            .unwrap_or_else(|e| panic!("reading the head of {room}: {e}"))
            .get()
    }

    // --- internals ---

    fn next_id(&mut self, role: Role) -> String {
        let n = self.next_number.entry(role.id_prefix()).or_insert(0);
        *n += 1;
        format!("{}{}", role.id_prefix(), n)
    }

    /// Spawns `collab gateway|room-node` with the next id; stdout and
    /// stderr go to `DIR/ID.log` and the in-memory tail.
    fn spawn(&mut self, role: Role) -> Result<Starting, HarnessError> {
        self.spawn_in(role, None)
    }

    /// [`Cluster::spawn`], inside `isolation`'s namespace when given: it
    /// listens on the namespace's address and reaches NATS and the store
    /// through the relays on its links.
    fn spawn_in(
        &mut self,
        role: Role,
        isolation: Option<Isolation>,
    ) -> Result<Starting, HarnessError> {
        let id = self.next_id(role);
        let work_dir = self.dir.path().join(&id);
        std::fs::create_dir_all(&work_dir)?;
        let log_file = Arc::new(Mutex::new(File::create(
            self.dir.path().join(format!("{id}.log")),
        )?));
        let (mut cmd, listen, nats, store) = match &isolation {
            None => (
                Command::new(collab_binary()?),
                "127.0.0.1:0".to_owned(),
                self.nats.url(),
                self.store_url.clone(),
            ),
            Some(isolation) => (
                isolation.ns.command(collab_binary()?),
                format!("{}:0", isolation.listen),
                format!("nats://{}", isolation.nats_relay.addr()),
                self.store_url.clone(),
            ),
        };
        cmd.arg(role.subcommand())
            .args(["--listen", &listen, "--nats", &nats])
            .args(["--node-id", &id, "--store", &store]);
        clear_collab_env(&mut cmd);
        cmd.env("COLLAB_JWT_SECRET", &self.secret);
        if let Some(redis) = &self.redis {
            cmd.env("COLLAB_REDIS", redis.url());
        }
        if std::env::var_os("RUST_LOG").is_none() {
            // The CQL and NATS drivers' connection chatter would fill the
            // log tail a failing test prints.
            cmd.env("RUST_LOG", CHILD_LOG_FILTER);
        }
        if let Some((heartbeat, ttl)) = self.options.membership {
            cmd.env(
                "COLLAB_CLUSTER__HEARTBEAT_INTERVAL_MS",
                heartbeat.as_millis().to_string(),
            )
            .env("COLLAB_CLUSTER__MEMBER_TTL_MS", ttl.as_millis().to_string());
        }
        // Whatever a process writes to its working directory stays in the
        // cluster's temporary directory, not in the source tree.
        cmd.envs(self.options.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&work_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        let log: LogTail = Arc::default();
        let (lines_tx, lines) = mpsc::unbounded_channel();
        if let Some(stdout) = child.stdout.take() {
            forward(stdout, log.clone(), log_file.clone(), Some(lines_tx));
        }
        if let Some(stderr) = child.stderr.take() {
            forward(stderr, log.clone(), log_file, None);
        }
        Ok(Starting {
            id,
            role,
            child,
            lines,
            log,
            isolation,
        })
    }

    /// Waits for the `listening on` line of a spawned process and adds it
    /// to the cluster (a gateway also to the clients' list, once ready).
    async fn listening(&mut self, mut starting: Starting) -> Result<String, HarnessError> {
        let deadline = Instant::now() + PROCESS_DEADLINE;
        let id = starting.id.clone();
        let addr = loop {
            match tokio::time::timeout_at(deadline, starting.lines.recv()).await {
                Ok(Some(line)) => {
                    if let Some(addr) = line.strip_prefix(LISTENING_PREFIX) {
                        break addr.trim().parse::<SocketAddr>().map_err(|e| {
                            HarnessError::Start(format!("{id}: bad address in {line:?}: {e}"))
                        })?;
                    }
                }
                outcome => {
                    let why = match outcome {
                        Ok(_) => "exited before listening",
                        Err(_) => "no `listening on` line in time",
                    };
                    let _ = starting.child.kill();
                    let status = starting.child.wait();
                    return Err(HarnessError::Start(format!(
                        "collab {} {id}: {why} ({status:?}); log:\n{}",
                        starting.role.subcommand(),
                        tail(&starting.log, 40)
                    )));
                }
            }
        };
        let node = Node {
            id: id.clone(),
            role: starting.role,
            child: Some(starting.child),
            addr,
            state: NodeState::Running,
            log: starting.log,
            isolation: starting.isolation,
        };
        self.nodes.push(node);
        if starting.role == Role::Gateway {
            self.wait_ready(&id).await;
            self.gateways.add(&id, format!("ws://{addr}/v1/ws"));
        }
        Ok(id)
    }

    async fn connect_observer(&self) -> Result<NatsBus, HarnessError> {
        let node = NodeId::parse(OBSERVER_ID).expect("a valid node id");
        let mut config = NatsBusConfig::new(self.nats.url(), node);
        if let Some((heartbeat, ttl)) = self.options.membership {
            config.heartbeat_interval = heartbeat;
            config.member_ttl = ttl;
        }
        NatsBus::connect(config)
            .await
            .map_err(|e| HarnessError::Setup(format!("membership watcher: {e}")))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let failing = std::thread::panicking();
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::env::var_os(KEEP_LOGS_ENV).is_some() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "cluster logs kept in {} ({KEEP_LOGS_ENV} is set)",
                self.dir.path().display()
            );
        }
        if failing {
            // What every process said last is usually what explains the
            // failure; the whole logs go with the temporary dir unless
            // KEEP_LOGS_ENV is set.
            for node in &self.nodes {
                eprintln!(
                    "--- last {LOG_TAIL_ON_FAILURE} log lines of {} ({:?}, {:?}) ---\n{}",
                    node.id,
                    node.role,
                    node.state,
                    tail(&node.log, LOG_TAIL_ON_FAILURE)
                );
            }
        }
    }
}

/// Why this machine cannot run partition tests (network namespaces need
/// `ip` from iproute2 and the rights to create them), or `None` if it can.
pub fn partitions_unsupported() -> Option<String> {
    match NetNs::create() {
        Ok(ns) => {
            drop(ns);
            None
        }
        Err(why) => Some(why),
    }
}

/// The CQL server's address in a `cql://HOST:PORT/KEYSPACE` URL.
fn store_addr(store_url: &str) -> Result<SocketAddr, HarnessError> {
    use std::net::ToSocketAddrs;
    let host_port = store_url
        .strip_prefix("cql://")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default();
    host_port
        .to_socket_addrs()?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| HarnessError::Setup(format!("no IPv4 address for {host_port}")))
}

/// The owner of `room` among `nodes` by the product's placement function.
pub fn owner_among(room: &str, nodes: &[String]) -> String {
    let room = RoomId::parse(room).expect("a room id");
    let nodes: Vec<NodeId> = nodes
        .iter()
        .map(|n| NodeId::parse(n.as_str()).expect("a node id"))
        .collect();
    placement::owner(&room, &nodes)
        .map(|n| n.as_str().to_owned())
        .unwrap_or_else(|| panic!("no room node to own {room}"))
}

/// Polls `check` until it yields a value; panics with `what` once
/// `timeout` has passed.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "gave up after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await; // poll interval
    }
}

/// Runs blocking work (nats-server start-up) without stalling the other
/// tasks of a multi-threaded runtime.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Reads `pipe` line by line on a thread into the log file, the tail and
/// `lines`. It reads to EOF even when nobody listens, so a process never
/// blocks on a full pipe.
fn forward(
    pipe: impl Read + Send + 'static,
    log: LogTail,
    file: Arc<Mutex<File>>,
    lines: Option<mpsc::UnboundedSender<String>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(lock(&file), "{line}");
            {
                let mut log = lock(&log);
                if log.len() == LOG_TAIL {
                    log.pop_front();
                }
                log.push_back(line.clone());
            }
            if let Some(lines) = &lines {
                let _ = lines.send(line);
            }
        }
    });
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Logs, lists and progress records stay usable after a panic elsewhere.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn tail(log: &Mutex<VecDeque<String>>, n: usize) -> String {
    let log = lock(log);
    let skip = log.len().saturating_sub(n);
    log.iter()
        .skip(skip)
        .cloned()
        .collect::<Vec<_>>()
        .join("\n")
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

// === the client ===

/// Resend an op that got no answer for this long (the first copy may be
/// stuck at a frozen owner; the gateway routes the copy by its current view).
const RESEND_AFTER: Duration = Duration::from_secs(3);
/// Wait before retrying after `unavailable` or `rate_limited`.
const RETRY_BACKOFF: Duration = Duration::from_millis(50);
/// Wait between two rounds of reconnect attempts.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);
/// How long a `joined` may take before the client drops the connection
/// and starts over.
const JOIN_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest a client keeps trying to reconnect, or to get its outbox
/// answered once it stops drawing, before it fails the test.
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(90);
/// How long one read waits, so resend timers run between frames.
const READ_SLICE: Duration = Duration::from_millis(50);

/// What a client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Strokes (begin, points, end), undo, redo and messages. Ops depend
    /// on each other, so use a window of 1: a retried op then always
    /// precedes the ops after it, as the user meant.
    Drawing,
    /// Chat messages only: independent, any window.
    Chat,
}

/// How a client behaves.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub workload: Workload,
    /// Ops sent and not yet answered for good.
    pub window: usize,
    /// At least this long between two new ops (`None`: as fast as the
    /// window allows).
    pub pace: Option<Duration>,
}

impl ClientOptions {
    /// Strokes, undo, redo and chat, one op in flight, unpaced.
    pub fn drawing() -> Self {
        ClientOptions {
            workload: Workload::Drawing,
            window: 1,
            pace: None,
        }
    }

    /// Chat messages, `window` in flight, one every `pace`.
    pub fn chat(window: usize, pace: Duration) -> Self {
        ClientOptions {
            workload: Workload::Chat,
            window: window.max(1),
            pace: Some(pace),
        }
    }
}

/// An op of the outbox.
#[derive(Debug, Clone)]
struct Pending {
    cid: String,
    op: Value,
    /// When the copy now in flight was sent; `None`: not in flight.
    sent_at: Option<Instant>,
    /// Not before this (after a retryable error).
    retry_at: Option<Instant>,
}

/// One ack as received.
#[derive(Debug, Clone)]
pub struct AckRecord {
    pub cid: String,
    pub seq: u64,
    pub at: Instant,
}

/// A `presence` frame as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceRecord {
    pub user: String,
    /// `join` or `leave`.
    pub event: String,
    pub at: Instant,
}

/// What a running client has done so far, for a test to poll.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// The last seq received.
    pub head: u64,
    pub acked: usize,
    pub last_ack: Option<Instant>,
    /// Ops sent again (after `unavailable`, a timeout or a reconnect).
    pub resent: usize,
    pub reconnects: usize,
    /// Strokes of this client the room ended because its connection left
    /// with them open (a server-made `stroke_end`).
    pub strokes_ended_for_us: usize,
    /// Refusals taken back for a retry because an op sent before was
    /// still unanswered.
    pub deferred_refusals: usize,
    /// `unavailable` errors about the room rather than an op, while joined
    /// (the client then resumes on a new connection).
    pub room_errors: usize,
    /// The gateway it is connected to.
    pub gateway: Option<String>,
    /// Every close of its connection by a gateway: (gateway, close code
    /// if the close frame had one, when).
    pub closes: Vec<(String, Option<u16>, Instant)>,
    pub presence: Vec<PresenceRecord>,
    /// Why the client gave up: it saw something the protocol forbids, or
    /// could not get through within its deadline.
    pub failure: Option<String>,
}

/// The answer to one op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Acked(u64),
    /// Refused for good with this code (e.g. `nothing_to_undo`).
    Refused(String),
}

/// A resilient client of one room: see the module doc.
pub struct DrawClient {
    user: String,
    token: String,
    room: RoomInfo,
    gateways: Gateways,
    /// Index of the gateway to try first on the first connection.
    first_gateway: usize,
    gateway: Option<String>,
    ws: Option<WsClient>,
    joined: bool,
    /// When the pending `join` was sent; a join to send again at `rejoin_at`.
    join_sent_at: Option<Instant>,
    rejoin_at: Option<Instant>,
    options: ClientOptions,
    /// This client's picture of the room, built only from what it received.
    state: RoomState,
    /// Every op frame received, in seq order: `received[i]` has seq `i + 1`.
    received: Vec<Value>,
    outbox: VecDeque<Pending>,
    /// Ops of the workload not sent yet.
    planned: VecDeque<Value>,
    /// Every op this client ever sent, by cid.
    sent: HashMap<String, Value>,
    acked: HashMap<String, u64>,
    acks: Vec<AckRecord>,
    refused: Vec<(String, String)>,
    /// Strokes of this client that the room ended for it (its connection
    /// left with the stroke open).
    ended_for_us: HashSet<String>,
    /// Strokes of this client whose ops were refused as "ended" before the
    /// room's `stroke_end` for them arrived. The protocol does not order an
    /// `error` against op events, so the end may still be on its way; the
    /// client waits for it (`settle`) and fails if it never comes.
    end_expected: HashSet<String>,
    next_cid: u64,
    strokes: u64,
    last_new_op: Option<Instant>,
    progress: Arc<Mutex<Progress>>,
}

impl DrawClient {
    pub fn new(
        user: &str,
        token: String,
        room: &RoomInfo,
        gateways: Gateways,
        first_gateway: usize,
        options: ClientOptions,
    ) -> DrawClient {
        DrawClient {
            user: user.to_owned(),
            token,
            state: RoomState::new(room.meta()),
            room: room.clone(),
            gateways,
            first_gateway,
            gateway: None,
            ws: None,
            joined: false,
            join_sent_at: None,
            rejoin_at: None,
            options,
            received: Vec::new(),
            outbox: VecDeque::new(),
            planned: VecDeque::new(),
            sent: HashMap::new(),
            acked: HashMap::new(),
            acks: Vec::new(),
            refused: Vec::new(),
            ended_for_us: HashSet::new(),
            end_expected: HashSet::new(),
            next_cid: 0,
            strokes: 0,
            last_new_op: None,
            progress: Arc::default(),
        }
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn room(&self) -> &RoomInfo {
        &self.room
    }

    /// Every op frame received, in seq order (`[i]` has seq `i + 1`).
    pub fn received(&self) -> &[Value] {
        &self.received
    }

    /// This client's picture of the room.
    pub fn state(&self) -> &RoomState {
        &self.state
    }

    pub fn head(&self) -> u64 {
        self.state.head().get()
    }

    /// cid → seq of every op of this client that was acked.
    pub fn acked(&self) -> &HashMap<String, u64> {
        &self.acked
    }

    /// Every ack, in the order received (a re-ack of a retried cid too).
    pub fn acks(&self) -> &[AckRecord] {
        &self.acks
    }

    /// `(cid, code)` of the ops refused for good.
    pub fn refused(&self) -> &[(String, String)] {
        &self.refused
    }

    /// The op sent with `cid`.
    pub fn sent_op(&self, cid: &str) -> Option<&Value> {
        self.sent.get(cid)
    }

    /// Ops not yet answered for good.
    pub fn unanswered(&self) -> usize {
        self.outbox.len()
    }

    pub fn progress(&self) -> Progress {
        lock(&self.progress).clone()
    }

    /// Runs the workload in a task until [`RunningClient::stop`].
    pub fn spawn(mut self) -> RunningClient {
        let (stop, mut stopped) = watch::channel(false);
        let progress = self.progress.clone();
        let user = self.user.clone();
        let room = self.room.id.clone();
        let handle = tokio::spawn(async move {
            while !*stopped.borrow_and_update() {
                self.step(true).await;
            }
            self.settle().await;
            self
        });
        RunningClient {
            user,
            room,
            stop,
            handle,
            progress,
        }
    }

    /// Sends one op (a new cid) and waits for its final answer, resending
    /// as needed.
    pub async fn send_and_wait(&mut self, op: Value) -> Answer {
        let cid = self.enqueue(op);
        self.wait_answer(&cid).await
    }

    /// Sends an op that was sent before, with its old cid, and waits for
    /// its final answer: a de-duplicated retry.
    pub async fn resend_and_wait(&mut self, cid: &str) -> Answer {
        let op = self
            .sent
            .get(cid)
            .unwrap_or_else(|| panic!("{}: never sent {cid}", self.user))
            .clone();
        self.outbox.push_back(Pending {
            cid: cid.to_owned(),
            op,
            sent_at: None,
            retry_at: None,
        });
        self.wait_answer(cid).await
    }

    async fn wait_answer(&mut self, cid: &str) -> Answer {
        let deadline = Instant::now() + CLIENT_DEADLINE;
        let answers_before = self.answers_for(cid);
        loop {
            self.step(false).await;
            if !self.outbox.iter().any(|p| p.cid == cid)
                && let Some(answer) = self.last_answer_since(cid, answers_before)
            {
                return answer;
            }
            if Instant::now() >= deadline {
                self.fail(format!("no final answer for {cid} in {CLIENT_DEADLINE:?}"));
            }
        }
    }

    fn answers_for(&self, cid: &str) -> usize {
        self.acks.iter().filter(|a| a.cid == cid).count()
            + self.refused.iter().filter(|(c, _)| c == cid).count()
    }

    fn last_answer_since(&self, cid: &str, before: usize) -> Option<Answer> {
        if self.answers_for(cid) <= before {
            return None;
        }
        if let Some((_, code)) = self.refused.iter().rev().find(|(c, _)| c == cid)
            && !self.acks.iter().any(|a| a.cid == cid)
        {
            return Some(Answer::Refused(code.clone()));
        }
        self.acked.get(cid).map(|seq| Answer::Acked(*seq))
    }

    /// Reads until every op of the outbox has its final answer.
    pub async fn settle(&mut self) {
        let deadline = Instant::now() + CLIENT_DEADLINE;
        while !self.outbox.is_empty() || !self.end_expected.is_empty() {
            self.step(false).await;
            if Instant::now() >= deadline {
                let left: Vec<&str> = self.outbox.iter().map(|p| p.cid.as_str()).collect();
                self.fail(format!(
                    "after {CLIENT_DEADLINE:?}, ops still unanswered: {left:?}; \
                     strokes refused as ended whose end never came: {:?}",
                    self.end_expected
                ));
            }
        }
    }

    /// Reads until it has received every op up to `head`.
    pub async fn sync_to(&mut self, head: u64) {
        let deadline = Instant::now() + CLIENT_DEADLINE;
        while self.head() < head {
            self.step(false).await;
            if Instant::now() >= deadline {
                self.fail(format!(
                    "received up to seq {} only, {head} expected, after {CLIENT_DEADLINE:?}",
                    self.head()
                ));
            }
        }
    }

    /// Closes the connection (the client reconnects on its next step).
    pub async fn disconnect(&mut self) {
        if let Some(ws) = self.ws.take() {
            let _ = ws.close().await;
        }
        self.joined = false;
    }

    // --- one step: connect, send, read ---

    /// Connects and joins if needed, sends what the window allows (new
    /// ops of the workload if `produce`), and handles at most one frame.
    pub async fn step(&mut self, produce: bool) {
        if self.ws.is_none() {
            self.connect().await;
        }
        let now = Instant::now();
        if self.joined {
            if produce {
                self.produce(now);
            }
            self.send_due(now).await;
        } else {
            self.join_if_due(now).await;
        }
        self.read_one().await;
    }

    fn produce(&mut self, now: Instant) {
        if self.outbox.len() >= self.options.window {
            return;
        }
        if let (Some(pace), Some(last)) = (self.options.pace, self.last_new_op)
            && now < last + pace
        {
            return;
        }
        if self.planned.is_empty() {
            self.plan_more();
        }
        if let Some(op) = self.planned.pop_front() {
            self.enqueue(op);
            self.last_new_op = Some(now);
        }
    }

    fn enqueue(&mut self, op: Value) -> String {
        self.next_cid += 1;
        let cid = format!("{}-{}", self.user, self.next_cid);
        self.sent.insert(cid.clone(), op.clone());
        self.outbox.push_back(Pending {
            cid: cid.clone(),
            op,
            sent_at: None,
            retry_at: None,
        });
        cid
    }

    fn plan_more(&mut self) {
        match self.options.workload {
            Workload::Chat => {
                let text = format!("{} says {}", self.user, self.next_cid + 1);
                self.planned
                    .push_back(json!({"kind": "message", "text": text}));
            }
            Workload::Drawing => {
                self.strokes += 1;
                let stroke = format!("{}-s{}", self.user, self.strokes);
                let n = self.strokes as f64;
                self.planned.push_back(json!({
                    "kind": "stroke_begin", "stroke": stroke, "color": "#336699",
                    "width": 2, "points": [[n, 0]],
                }));
                for i in 1..=3 {
                    self.planned.push_back(json!({
                        "kind": "stroke_points", "stroke": stroke,
                        "points": [[n, i], [n + 0.5, i]],
                    }));
                }
                self.planned
                    .push_back(json!({"kind": "stroke_end", "stroke": stroke}));
                if self.strokes.is_multiple_of(3) {
                    self.planned.push_back(json!({"kind": "undo"}));
                }
                if self.strokes.is_multiple_of(5) {
                    self.planned.push_back(json!({"kind": "redo"}));
                }
                if self.strokes.is_multiple_of(4) {
                    self.planned.push_back(json!({
                        "kind": "message", "text": format!("{stroke} done"),
                    }));
                }
            }
        }
    }

    /// Sends every op of the window that is not in flight and due, and
    /// again every op in flight for longer than [`RESEND_AFTER`].
    async fn send_due(&mut self, now: Instant) {
        let window = self.options.window.min(self.outbox.len());
        let mut frames = Vec::new();
        let mut resent = 0;
        for pending in self.outbox.iter_mut().take(window) {
            let due = match pending.sent_at {
                Some(sent) => now >= sent + RESEND_AFTER,
                None => pending.retry_at.is_none_or(|at| now >= at),
            };
            if !due {
                continue;
            }
            if pending.sent_at.is_some() || pending.retry_at.is_some() {
                resent += 1;
            }
            pending.sent_at = Some(now);
            pending.retry_at = None;
            frames.push(json!({
                "type": "op", "room": self.room.id, "cid": pending.cid, "op": pending.op,
            }));
        }
        if resent > 0 {
            lock(&self.progress).resent += resent;
        }
        for frame in frames {
            self.send_frame(&frame).await;
        }
    }

    async fn send_frame(&mut self, frame: &Value) {
        if let Some(ws) = self.ws.as_mut()
            && ws.send_json(frame).await.is_err()
        {
            // The next read finds out why; everything in flight goes again
            // after the reconnect.
            self.lost_connection();
        }
    }

    async fn join_if_due(&mut self, now: Instant) {
        let due = match (self.join_sent_at, self.rejoin_at) {
            (Some(sent), _) if now >= sent + JOIN_TIMEOUT => {
                // No `joined` in time: start over on a new connection.
                self.lost_connection();
                return;
            }
            (Some(_), _) => false,
            (None, Some(at)) => now >= at,
            (None, None) => true,
        };
        if due {
            self.join_sent_at = Some(now);
            self.rejoin_at = None;
            let frame = json!({
                "type": "join", "room": self.room.id,
                "since": self.head(), "epoch": self.room.epoch,
            });
            self.send_frame(&frame).await;
        }
    }

    async fn connect(&mut self) {
        let deadline = Instant::now() + CLIENT_DEADLINE;
        let mut last_error = String::from("no live gateway");
        loop {
            let list = self.gateways.list();
            let start = match &self.gateway {
                // After the one it was on, so a dead gateway is tried last.
                Some(current) => list
                    .iter()
                    .position(|(id, _)| id == current)
                    .map_or(0, |i| i + 1),
                None => self.first_gateway,
            };
            for k in 0..list.len() {
                let (id, url) = &list[(start + k) % list.len()];
                match self.open(url).await {
                    Ok(ws) => {
                        self.ws = Some(ws);
                        self.joined = false;
                        self.join_sent_at = None;
                        self.rejoin_at = None;
                        let reconnect = self.gateway.is_some();
                        self.gateway = Some(id.clone());
                        let mut progress = lock(&self.progress);
                        progress.gateway = Some(id.clone());
                        if reconnect {
                            progress.reconnects += 1;
                        }
                        return;
                    }
                    Err(e) => last_error = format!("{id} ({url}): {e}"),
                }
            }
            if Instant::now() >= deadline {
                self.fail(format!(
                    "cannot connect to any gateway in {CLIENT_DEADLINE:?}; last error: {last_error}"
                ));
            }
            tokio::time::sleep(RECONNECT_BACKOFF).await;
        }
    }

    async fn open(&self, url: &str) -> Result<WsClient, WsError> {
        let mut ws = WsClient::connect(url, &self.token).await?;
        let welcome = ws.recv_json(Duration::from_secs(10)).await?;
        if welcome["type"] != "welcome" {
            return Err(WsError::NotJson(format!("not a welcome: {welcome}")));
        }
        Ok(ws)
    }

    fn lost_connection(&mut self) {
        self.ws = None;
        self.joined = false;
        self.join_sent_at = None;
        self.rejoin_at = None;
        // Whatever was in flight is in doubt: it goes again after the join.
        for pending in &mut self.outbox {
            pending.sent_at = None;
            pending.retry_at = None;
        }
    }

    async fn read_one(&mut self) {
        let Some(ws) = self.ws.as_mut() else {
            return;
        };
        match ws.recv_json(READ_SLICE).await {
            Ok(frame) => self.handle(&frame),
            Err(WsError::Timeout(_)) => {}
            Err(WsError::Closed { code, .. }) => {
                let gateway = self.gateway.clone().unwrap_or_default();
                lock(&self.progress)
                    .closes
                    .push((gateway, code, Instant::now()));
                self.lost_connection();
            }
            Err(WsError::Ws(_)) => self.lost_connection(),
            Err(e) => self.fail(format!("bad frame: {e}")),
        }
    }

    fn handle(&mut self, frame: &Value) {
        if frame["room"].is_string() && frame["room"] != self.room.id.as_str() {
            self.fail(format!("a frame of another room: {frame}"));
        }
        match frame["type"].as_str() {
            Some("joined") => self.on_joined(frame),
            Some("op") => self.on_op(frame),
            Some("ack") => self.on_ack(frame),
            Some("error") => self.on_error(frame),
            Some("presence") => {
                let record = PresenceRecord {
                    user: text(&frame["user"]["id"]),
                    event: text(&frame["event"]),
                    at: Instant::now(),
                };
                lock(&self.progress).presence.push(record);
            }
            Some("welcome" | "pong" | "cursor" | "cursor_leave") => {}
            _ => self.fail(format!("unexpected frame {frame}")),
        }
    }

    fn on_joined(&mut self, frame: &Value) {
        if frame["reset"] != false {
            self.fail(format!(
                "a resume from seq {} of epoch {} got a reset: {frame}",
                self.head(),
                self.room.epoch
            ));
        }
        if frame["epoch"] != self.room.epoch.as_str() {
            self.fail(format!("the room's epoch changed: {frame}"));
        }
        let ops = frame["ops"].as_array().cloned().unwrap_or_default();
        for op in &ops {
            self.on_op(op);
        }
        if frame["head"].as_u64() != Some(self.head()) {
            self.fail(format!(
                "joined says head {} but its ops end at {}",
                frame["head"],
                self.head()
            ));
        }
        self.joined = true;
        self.join_sent_at = None;
        // Everything not answered for good goes again, same cids, in order.
        for pending in &mut self.outbox {
            pending.sent_at = None;
            pending.retry_at = None;
        }
    }

    fn on_op(&mut self, frame: &Value) {
        let seq = frame["seq"].as_u64().unwrap_or(0);
        let expected = self.head() + 1;
        if seq != expected {
            let what = if seq <= self.head() {
                "a duplicate or an old op"
            } else {
                "a gap"
            };
            self.fail(format!("{what}: seq {seq} after {}: {frame}", self.head()));
        }
        let mut op = frame.clone();
        if let Some(fields) = op.as_object_mut() {
            // `joined` lists ops as op frames too; keep one form.
            fields.insert("type".into(), json!("op"));
        }
        let event: OpEvent = match serde_json::from_value(op.clone()) {
            Ok(event) => event,
            Err(e) => self.fail(format!("not an op event ({e}): {frame}")),
        };
        if let Err(e) = self.state.replay(&event) {
            self.fail(format!("the op does not apply: {e}: {frame}"));
        }
        if let (None, Op::StrokeEnd { stroke }) = (&event.cid, &event.op)
            && event.user.as_str() == self.user
        {
            self.ended_for_us.insert(stroke.as_str().to_owned());
            self.end_expected.remove(stroke.as_str());
            lock(&self.progress).strokes_ended_for_us += 1;
        }
        self.received.push(op);
        lock(&self.progress).head = seq;
    }

    fn on_ack(&mut self, frame: &Value) {
        let cid = text(&frame["cid"]);
        let Some(seq) = frame["seq"].as_u64() else {
            self.fail(format!("an ack without seq: {frame}"));
        };
        if !self.sent.contains_key(&cid) {
            self.fail(format!("an ack for a cid it never sent: {frame}"));
        }
        if let Some(old) = self.acked.insert(cid.clone(), seq)
            && old != seq
        {
            self.fail(format!("{cid} acked with seq {old}, then with {seq}"));
        }
        let now = Instant::now();
        self.acks.push(AckRecord {
            cid: cid.clone(),
            seq,
            at: now,
        });
        self.outbox.retain(|p| p.cid != cid);
        let mut progress = lock(&self.progress);
        progress.acked = self.acked.len();
        progress.last_ack = Some(now);
    }

    fn on_error(&mut self, frame: &Value) {
        let code = text(&frame["code"]);
        let Some(cid) = frame["cid"].as_str().map(str::to_owned) else {
            match code.as_str() {
                // An error about the join (the room is moving): join again.
                "unavailable" | "rate_limited" if self.join_sent_at.is_some() => {
                    self.join_sent_at = None;
                    self.rejoin_at = Some(Instant::now() + RETRY_BACKOFF);
                }
                // The room dropped this member without closing the socket:
                // resume on a fresh connection, where `since` is exact (a
                // second join on this one could race the ops still coming).
                "unavailable" => {
                    lock(&self.progress).room_errors += 1;
                    self.lost_connection();
                }
                _ => self.fail(format!("unexpected error: {frame}")),
            }
            return;
        };
        let in_outbox = self.outbox.iter().position(|p| p.cid == cid);
        // Refused while an op sent before it is still unanswered: the
        // refusal may only follow from that op not being applied yet (the
        // points of a stroke whose begin got `unavailable` from a room's
        // old owner, while they reached the new one). Retry it after the
        // ops before it, as the web client's outbox does; it is final only
        // once nothing before it is pending.
        if !matches!(code.as_str(), "unavailable" | "rate_limited")
            && let Some(i) = in_outbox.filter(|i| *i > 0)
        {
            if self.acked.contains_key(&cid) {
                self.fail(format!("{cid} was acked, and now refused: {frame}"));
            }
            lock(&self.progress).deferred_refusals += 1;
            let pending = &mut self.outbox[i];
            pending.sent_at = None;
            pending.retry_at = Some(Instant::now() + RETRY_BACKOFF);
            return;
        }
        match code.as_str() {
            // The outcome is unknown (or the op was not taken): retry with
            // the same cid.
            "unavailable" | "rate_limited" => {
                if let Some(i) = in_outbox {
                    let pending = &mut self.outbox[i];
                    pending.sent_at = None;
                    pending.retry_at = Some(Instant::now() + RETRY_BACKOFF);
                }
                // Otherwise it was acked meanwhile (an answer to an
                // earlier copy): nothing to do.
            }
            // Part of the drawing workload: a redo with nothing undone, an
            // undo after the user's strokes are all hidden.
            "nothing_to_undo" | "nothing_to_redo" => {
                if self.acked.contains_key(&cid) {
                    self.fail(format!("{cid} was acked, and now refused: {frame}"));
                }
                self.refused.push((cid.clone(), code));
                self.outbox.retain(|p| p.cid != cid);
            }
            // The connection this client drew on left the room with the
            // stroke open, so the room ended the stroke (an op without
            // cid, received before the retry); its remaining ops are
            // refused, as the protocol says.
            "bad_request" if self.stroke_ended_for_us(&cid) => {
                self.refused.push((cid.clone(), code));
                self.outbox.retain(|p| p.cid != cid);
            }
            // The same, with the room's end of the stroke not received
            // yet: an error may overtake op events (they travel apart).
            "bad_request"
                if frame["message"]
                    .as_str()
                    .is_some_and(|m| m.ends_with("has ended")) =>
            {
                let Some(stroke) = self.own_open_stroke_of(&cid) else {
                    self.fail(format!("op {cid} refused: {frame}"));
                };
                self.end_expected.insert(stroke);
                self.refused.push((cid.clone(), code));
                self.outbox.retain(|p| p.cid != cid);
            }
            _ => {
                let history = self.history_of(&cid);
                self.fail(format!("op {cid} refused: {frame}; {history}"))
            }
        }
    }

    /// What this client knows of the stroke of `cid`'s op: each of its ops
    /// sent, and what became of it (for a refusal's failure message).
    fn history_of(&self, cid: &str) -> String {
        let Some(stroke) = self.sent.get(cid).and_then(|op| op["stroke"].as_str()) else {
            return format!("head {}", self.head());
        };
        let mut ops: Vec<(u64, String)> = self
            .sent
            .iter()
            .filter(|(_, op)| op["stroke"].as_str() == Some(stroke))
            .map(|(c, op)| {
                let n = c
                    .rsplit('-')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let fate = match (
                    self.acked.get(c),
                    self.outbox.iter().position(|p| &p.cid == c),
                ) {
                    (Some(seq), _) => format!("acked at {seq}"),
                    (None, Some(i)) => format!("pending at {i} of the outbox"),
                    (None, None) => {
                        format!("refused {:?}", self.refused.iter().find(|(r, _)| r == c))
                    }
                };
                (n, format!("{c} {} {fate}", op["kind"]))
            })
            .collect();
        ops.sort();
        let ops: Vec<String> = ops.into_iter().map(|(_, o)| o).collect();
        format!("head {}, stroke {stroke}: {}", self.head(), ops.join("; "))
    }

    /// The stroke of `cid` when it is a `stroke_points` or `stroke_end`
    /// this client sent and no `stroke_end` of its own was acked for.
    fn own_open_stroke_of(&self, cid: &str) -> Option<String> {
        let op = self.sent.get(cid)?;
        if !matches!(op["kind"].as_str(), Some("stroke_points" | "stroke_end")) {
            return None;
        }
        let stroke = op["stroke"].as_str()?;
        let ended_by_us = self.sent.iter().any(|(c, o)| {
            o["kind"] == "stroke_end" && o["stroke"] == stroke && self.acked.contains_key(c)
        });
        (!ended_by_us).then(|| stroke.to_owned())
    }

    /// Whether `cid` is a `stroke_points` or `stroke_end` of a stroke of
    /// this client that the room ended for it.
    fn stroke_ended_for_us(&self, cid: &str) -> bool {
        let Some(op) = self.sent.get(cid) else {
            return false;
        };
        matches!(op["kind"].as_str(), Some("stroke_points" | "stroke_end"))
            && op["stroke"]
                .as_str()
                .is_some_and(|s| self.ended_for_us.contains(s))
    }

    /// Records why the client gives up, then panics (failing its task, and
    /// the test through [`RunningClient`]).
    fn fail(&self, why: String) -> ! {
        let message = format!(
            "client {} in room {} (on gateway {:?}): {why}",
            self.user, self.room.id, self.gateway
        );
        lock(&self.progress).failure = Some(message.clone());
        panic!("{message}");
    }
}

/// Sends `request` as the holder of `token`: the status and the JSON body
/// (`Null` when it is not JSON).
async fn answer(
    request: reqwest::RequestBuilder,
    token: &str,
) -> Result<(u16, Value), HarnessError> {
    let response = request
        .bearer_auth(token)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| HarnessError::Http(e.to_string()))?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

/// A client drawing in a task of its own.
pub struct RunningClient {
    user: String,
    room: String,
    stop: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<DrawClient>,
    progress: Arc<Mutex<Progress>>,
}

impl RunningClient {
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The id of its room.
    pub fn room(&self) -> &str {
        &self.room
    }

    /// What it has done so far. Panics if the client failed, so a test
    /// that polls its clients fails as soon as one of them does.
    pub fn progress(&self) -> Progress {
        let progress = lock(&self.progress).clone();
        if let Some(failure) = &progress.failure {
            panic!("{failure}");
        }
        progress
    }

    /// Stops drawing, waits until every op it sent is answered for good,
    /// and hands the client back.
    pub async fn stop(self) -> DrawClient {
        let _ = self.stop.send(true);
        match self.handle.await {
            Ok(client) => client,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("client {} task: {e}", self.user),
        }
    }
}

/// The ops acked in total by `clients` so far.
pub fn total_acked(clients: &[RunningClient]) -> usize {
    clients.iter().map(|c| c.progress().acked).sum()
}
