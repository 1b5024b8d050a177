//! The room node: hosts the room actors of this node under one supervisor,
//! serves the requests the bus brings for them, and publishes their events
//! on the bus. In `collab serve` it shares the process (and the in-process
//! bus) with the gateway; in a cluster it runs alone as `collab room-node`.
//!
//! In a cluster it follows the membership the bus reports: whenever the
//! members change it tells the supervisor which rooms are still its own
//! (the rest are handed off: finish the batch, snapshot, stop), and the
//! connections of every gateway that left go out of their rooms. A node
//! that is not in the member list itself — its record expired while it was
//! stopped or cut off — owns nothing and commits nothing.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use collab_actors::room::{
    EventSink, RoomConfig, RoomContext, RoomMetrics, RoomSupervisor, SupervisorMsg,
};
use collab_bus::{Bus, BusError, Members, ReplyFuture, RequestHandler};
use collab_protocol::envelope::{RoomEvent, RoomReply, RoomRequest};
use collab_protocol::{ErrorCode, NodeId};
use collab_store::Store;
use ractor::{Actor, ActorRef};
use tokio::sync::watch;
use tracing::info;

pub use collab_actors::room::{RoomConfig as RoomNodeConfig, RoomMetrics as RoomNodeMetrics};

/// A running room node.
pub struct RoomNode {
    supervisor: ActorRef<SupervisorMsg>,
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    node: NodeId,
    request_timeout: Duration,
}

/// Sends a room's events to the bus.
struct BusSink {
    bus: Arc<dyn Bus>,
}

impl EventSink for BusSink {
    fn emit(&self, event: RoomEvent, term: u64) {
        self.bus.publish_owned(event, term);
    }
}

/// Routes the bus's requests to the supervisor.
struct Handler {
    supervisor: ActorRef<SupervisorMsg>,
    timeout: Duration,
}

impl RequestHandler for Handler {
    fn handle(&self, request: RoomRequest) -> ReplyFuture<RoomReply> {
        // Sent now, so the supervisor sees requests in arrival order.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = self
            .supervisor
            .send_message(SupervisorMsg::Route(request, tx.into()))
            .is_ok();
        let timeout = self.timeout;
        Box::pin(async move {
            let reply = if sent {
                tokio::time::timeout(timeout, rx)
                    .await
                    .ok()
                    .and_then(Result::ok)
            } else {
                None
            };
            // Timed out or the room went away mid-request: the op may or may
            // not have been applied, which is exactly `unavailable`.
            reply.unwrap_or_else(|| RoomReply::Error {
                code: ErrorCode::Unavailable,
                message: "the room did not answer in time; retry".into(),
            })
        })
    }
}

impl RoomNode {
    /// Starts the supervisor and serves this node's rooms on `bus`, with
    /// metrics that are not exported anywhere.
    pub async fn start(
        config: RoomConfig,
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
    ) -> Result<RoomNode, StartError> {
        Self::start_with_metrics(config, store, bus, RoomMetrics::default()).await
    }

    /// Starts the supervisor and serves this node's rooms on `bus`; `metrics`
    /// come from `RoomMetrics::register` on the process's registry.
    pub async fn start_with_metrics(
        config: RoomConfig,
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        metrics: RoomMetrics,
    ) -> Result<RoomNode, StartError> {
        let request_timeout = config.commit_timeout + Duration::from_secs(5);
        let node = config.node.clone();
        let ctx = Arc::new(RoomContext {
            store: store.clone(),
            sink: Arc::new(BusSink { bus: bus.clone() }),
            config,
            metrics,
        });
        let (supervisor, _) = Actor::spawn(None, RoomSupervisor, ctx)
            .await
            .map_err(|e| StartError::Supervisor(e.to_string()))?;
        bus.serve(Arc::new(Handler {
            supervisor: supervisor.clone(),
            timeout: request_timeout,
        }))
        .await
        .map_err(StartError::Bus)?;
        if let Some(members) = bus.members() {
            tokio::spawn(follow_members(members, node.clone(), supervisor.clone()));
        }
        Ok(RoomNode {
            supervisor,
            store,
            bus,
            node,
            request_timeout,
        })
    }

    /// How many rooms are live on this node.
    pub async fn active_rooms(&self) -> usize {
        match self
            .supervisor
            .call(SupervisorMsg::ActiveRooms, Some(Duration::from_secs(5)))
            .await
        {
            Ok(ractor::rpc::CallResult::Success(n)) => n,
            _ => 0,
        }
    }

    /// A gateway is gone: its connections leave every room.
    pub fn gateway_gone(&self, gateway: &str) {
        let _ = self
            .supervisor
            .send_message(SupervisorMsg::GatewayGone(gateway.to_owned()));
    }

    /// Whether the node can serve: the bus carries traffic, this node is a
    /// member of the cluster (when there is one), and its store answers.
    pub async fn is_ready(&self) -> bool {
        if !self.bus.is_ready() {
            return false;
        }
        if let Some(members) = self.bus.members()
            && !members.borrow().contains(&self.node)
        {
            return false;
        }
        let probe = collab_protocol::RoomId::parse("readiness-probe").ok();
        match probe {
            Some(room) => tokio::time::timeout(Duration::from_secs(2), self.store.head(&room))
                .await
                .is_ok_and(|r| r.is_ok()),
            None => false,
        }
    }

    /// Hands every room off and leaves: new requests get `unavailable`
    /// (clients retry and reach the next owner once this node is gone),
    /// every room finishes its batch in flight, snapshots and stops, and
    /// then the node leaves the cluster, so the next owners load the
    /// snapshots just written.
    pub async fn drain(&self, grace: Duration) {
        let rooms = self.active_rooms().await;
        info!(rooms, "draining room node");
        let _ = self
            .supervisor
            .call(
                |port| SupervisorMsg::DrainAll(grace, port),
                Some(grace + self.request_timeout),
            )
            .await;
        self.bus.leave().await;
        self.supervisor.stop(Some("drained".into()));
    }
}

/// Keeps the supervisor in step with the cluster's members: which rooms are
/// this node's, and which gateways died.
async fn follow_members(
    mut members: watch::Receiver<Members>,
    node: NodeId,
    supervisor: ActorRef<SupervisorMsg>,
) {
    let mut gateways: BTreeSet<NodeId> = BTreeSet::new();
    loop {
        let current = members.borrow_and_update().clone();
        let live: BTreeSet<NodeId> = current.gateways().cloned().collect();
        for gone in gateways.difference(&live) {
            info!(gateway = %gone, "gateway left the cluster; its connections leave their rooms");
            let _ = supervisor.send_message(SupervisorMsg::GatewayGone(gone.to_string()));
        }
        gateways = live;
        let me = node.clone();
        let owns = move |room: &collab_protocol::RoomId| current.owner(room) == Some(&me);
        if supervisor
            .send_message(SupervisorMsg::Placement(Arc::new(owns)))
            .is_err()
            || members.changed().await.is_err()
        {
            return;
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("room supervisor did not start: {0}")]
    Supervisor(String),
    #[error("cannot serve on the bus: {0}")]
    Bus(BusError),
}
