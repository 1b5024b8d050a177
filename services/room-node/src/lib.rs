//! The room node: hosts the room actors of this node under one supervisor,
//! serves the requests the bus brings for them (a live room's go straight
//! into its mailbox, the others through the supervisor, which starts the
//! room), and publishes their events on the bus. In `collab serve` it shares the process (and the in-process
//! bus) with the gateway; in a cluster it runs alone as `collab room-node`.
//!
//! In a cluster it follows the membership the bus reports: whenever the
//! members change it tells the supervisor which rooms are still its own
//! (the rest are handed off: finish the batch, snapshot, stop), and the
//! connections of every gateway that left go out of their rooms. A node
//! that is not in the member list itself — its record expired while it was
//! stopped or cut off — owns nothing and commits nothing.
//!
//! Rooms with a time to live that go unused for that long are deleted by
//! the node that owns them ([`expiry`]).
//!
//! With `[[webhooks]]` configured, it sends the events of the rooms it
//! owns to their endpoints ([`webhooks`]).
//!
//! Its HTTP (probes and metrics) is [`http`].

pub mod expiry;
pub mod http;
mod webhooks;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use collab_actors::room::{
    EventSink, RoomConfig, RoomContext, RoomMetrics, RoomRouter, RoomSupervisor, RoomUse,
    SupervisorMsg, Unobserved,
};
use collab_bus::{Bus, BusError, Members, ReplyFuture, RequestHandler};
use collab_protocol::envelope::{RoomEvent, RoomReply, RoomRequest};
use collab_protocol::{ErrorCode, NodeId};
use collab_store::Store;
use ractor::ActorRef;
use tokio::sync::watch;
use tracing::info;

pub use collab_actors::room::{RoomConfig as RoomNodeConfig, RoomMetrics as RoomNodeMetrics};
pub use collab_webhooks::Webhooks;
pub use expiry::ExpiryOptions;

/// A running room node.
pub struct RoomNode {
    supervisor: ActorRef<SupervisorMsg>,
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    node: NodeId,
    request_timeout: Duration,
    /// Set when the drain begins: from then on the node is not ready.
    draining: AtomicBool,
    /// The expiry sweeper, stopped when the node drains.
    sweeper: Option<tokio::task::JoinHandle<()>>,
    /// The webhook dispatcher, when webhooks are configured.
    dispatcher: Option<Arc<collab_webhooks::Dispatcher>>,
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

/// Routes the bus's requests to their rooms: a live room's straight into
/// its mailbox, the others through the supervisor.
struct Handler {
    router: RoomRouter,
    timeout: Duration,
}

impl RequestHandler for Handler {
    fn handle(&self, request: RoomRequest) -> ReplyFuture<RoomReply> {
        // Sent now, so each room gets its requests in arrival order.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = self.router.send(request, tx.into());
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
    /// come from `RoomMetrics::register` on the process's registry. Rooms
    /// do not expire.
    pub async fn start_with_metrics(
        config: RoomConfig,
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        metrics: RoomMetrics,
    ) -> Result<RoomNode, StartError> {
        Self::start_with(config, store, bus, metrics, None).await
    }

    /// [`RoomNode::start_with_metrics`], with room expiry when `expiry` is
    /// given: rooms with a time to live that go unused for that long are
    /// deleted (see [`expiry`]).
    pub async fn start_with(
        config: RoomConfig,
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        metrics: RoomMetrics,
        expiry: Option<ExpiryOptions>,
    ) -> Result<RoomNode, StartError> {
        Self::start_with_webhooks(config, store, bus, metrics, expiry, None).await
    }

    /// [`RoomNode::start_with`], sending the events of the rooms this node
    /// owns to `webhooks`' endpoints when given (see [`webhooks`]).
    pub async fn start_with_webhooks(
        config: RoomConfig,
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        metrics: RoomMetrics,
        expiry: Option<ExpiryOptions>,
        webhooks: Option<Webhooks>,
    ) -> Result<RoomNode, StartError> {
        let request_timeout = config.commit_timeout + Duration::from_secs(5);
        let node = config.node.clone();
        let usage: Arc<dyn RoomUse> = match &expiry {
            Some(options) => Arc::new(expiry::ExpiryUse {
                deadlines: options.deadlines.clone(),
            }),
            None => Arc::new(Unobserved),
        };
        if let Some(load) = bus.load() {
            // The cluster view shows how many rooms this node has live.
            let rooms = metrics.rooms_active.clone();
            load.count_rooms(node.to_string(), move || {
                u64::try_from(rooms.get()).unwrap_or(0)
            });
        }
        let bus_sink: Arc<dyn EventSink> = Arc::new(BusSink { bus: bus.clone() });
        let (actor_store, sink, dispatcher) = match webhooks {
            None => (store.clone(), bus_sink, None),
            Some(webhooks) => {
                let placement: Arc<dyn collab_webhooks::Placement> = match bus.members() {
                    Some(members) => Arc::new(webhooks::MembersPlacement {
                        members,
                        node: node.clone(),
                    }),
                    None => Arc::new(collab_webhooks::Solo),
                };
                let (dispatcher, marking) = collab_webhooks::Dispatcher::start(
                    webhooks,
                    store.clone(),
                    node.as_str(),
                    placement,
                )
                .map_err(|e| StartError::Webhooks(e.to_string()))?;
                let dispatcher = Arc::new(dispatcher);
                let sink: Arc<dyn EventSink> = Arc::new(webhooks::WebhookSink {
                    bus: bus_sink,
                    dispatcher: dispatcher.clone(),
                });
                (marking as Arc<dyn Store>, sink, Some(dispatcher))
            }
        };
        let ctx = Arc::new(RoomContext {
            store: actor_store,
            sink,
            config,
            metrics,
            usage,
        });
        let (supervisor, router) = RoomSupervisor::start(ctx)
            .await
            .map_err(|e| StartError::Supervisor(e.to_string()))?;
        bus.serve(Arc::new(Handler {
            router,
            timeout: request_timeout,
        }))
        .await
        .map_err(StartError::Bus)?;
        if let Some(members) = bus.members() {
            tokio::spawn(follow_members(members, node.clone(), supervisor.clone()));
        }
        let sweeper =
            expiry.map(|options| tokio::spawn(expiry::sweep(options, supervisor.clone())));
        Ok(RoomNode {
            supervisor,
            store,
            bus,
            node,
            request_timeout,
            draining: AtomicBool::new(false),
            sweeper,
            dispatcher,
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

    /// Whether the node can serve: it is not draining, the bus carries
    /// traffic, this node is a member of the cluster (when there is one),
    /// and its store answers.
    pub async fn is_ready(&self) -> bool {
        if self.draining.load(Ordering::SeqCst) || !self.bus.is_ready() {
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
    /// Readiness fails from the first moment, so that nothing is sent here
    /// that could go elsewhere.
    pub async fn drain(&self, grace: Duration) {
        self.draining.store(true, Ordering::SeqCst);
        if let Some(sweeper) = &self.sweeper {
            sweeper.abort();
        }
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
        // What it had not sent yet, the rooms' next owners send from the
        // durable cursors.
        if let Some(dispatcher) = &self.dispatcher {
            dispatcher.stop();
        }
    }
}

/// Keeps the supervisor in step with the cluster's members: which rooms are
/// this node's, and which gateways died.
async fn follow_members(
    mut members: watch::Receiver<Members>,
    node: NodeId,
    supervisor: ActorRef<SupervisorMsg>,
) {
    // Gateway instances: a gateway restarted under its old node id is a
    // new instance, and the old one's connections must go.
    let mut gateways: BTreeSet<String> = BTreeSet::new();
    loop {
        let current = members.borrow_and_update().clone();
        let live: BTreeSet<String> = current.gateway_instances().map(str::to_owned).collect();
        for gone in gateways.difference(&live) {
            info!(gateway = %gone, "gateway left the cluster; its connections leave their rooms");
            let _ = supervisor.send_message(SupervisorMsg::GatewayGone(gone.clone()));
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
    #[error("cannot start the webhooks: {0}")]
    Webhooks(String),
}

#[cfg(test)]
mod tests {
    use collab_bus::{Delivery, InProcessBus, Subscription};
    use collab_protocol::envelope::ConnRef;
    use collab_protocol::frames::PresenceEvent;
    use collab_protocol::subjects::{MemberRecord, WIRE_VERSION};
    use collab_protocol::{ConnId, Epoch, RoomId, RoomKind, UserId, UserInfo};
    use collab_store::{MemoryStore, RoomCatalog, RoomRecord};

    use super::*;

    /// The in-process bus with a member list the test controls.
    struct ClusterView {
        inner: InProcessBus,
        members: watch::Receiver<Members>,
    }

    #[async_trait::async_trait]
    impl Bus for ClusterView {
        fn request(
            &self,
            request: RoomRequest,
            timeout: Duration,
        ) -> ReplyFuture<Result<RoomReply, BusError>> {
            self.inner.request(request, timeout)
        }
        fn publish(&self, event: RoomEvent) {
            self.inner.publish(event);
        }
        async fn subscribe(
            &self,
            room: &collab_protocol::RoomId,
        ) -> Result<Subscription, BusError> {
            self.inner.subscribe(room).await
        }
        async fn serve(&self, handler: Arc<dyn RequestHandler>) -> Result<(), BusError> {
            self.inner.serve(handler).await
        }
        fn is_ready(&self) -> bool {
            true
        }
        fn members(&self) -> Option<watch::Receiver<Members>> {
            Some(self.members.clone())
        }
    }

    fn members(gateway_instance: &str) -> Members {
        let record = |room_node, gateway, instance: &str| MemberRecord {
            room_node,
            gateway,
            ttl_ms: 1000,
            wire: WIRE_VERSION,
            instance: instance.to_owned(),
            rooms: None,
            connections: None,
        };
        Members::from_records([
            (node("n1"), record(true, false, "n1-1")),
            (node("g1"), record(false, true, gateway_instance)),
        ])
    }

    fn node(id: &str) -> NodeId {
        NodeId::parse(id).expect("id")
    }

    async fn next_presence(subscription: &mut Subscription) -> (PresenceEvent, String) {
        loop {
            let delivery = tokio::time::timeout(Duration::from_secs(10), subscription.next())
                .await
                .expect("an event within 10 s");
            if let Some(Delivery::Event(event)) = delivery
                && let RoomEvent::Presence { event, user, .. } = event.as_ref()
            {
                return (*event, user.id.to_string());
            }
        }
    }

    #[tokio::test]
    async fn a_gateway_restarted_under_its_node_id_loses_its_old_connections() {
        let (view, members_rx) = watch::channel(members("g1-old"));
        let bus = Arc::new(ClusterView {
            inner: InProcessBus::new(),
            members: members_rx,
        });
        let store = Arc::new(MemoryStore::new());
        let room = RoomId::parse("room1").expect("id");
        store
            .create_room(&RoomRecord {
                id: room.clone(),
                kind: RoomKind::Board,
                name: "room1".into(),
                epoch: Epoch::parse("ep1").expect("id"),
                created_by: UserId::parse("ann").expect("id"),
                members: None,
                created_at: 0,
                ttl_secs: None,
                floor: collab_protocol::Seq::ZERO,
            })
            .await
            .expect("room created");
        let _node = RoomNode::start(RoomConfig::new(node("n1")), store, bus.clone())
            .await
            .expect("starts");
        let mut events = bus.subscribe(&room).await.expect("subscribes");
        let join = |gateway: &str, user: &str| RoomRequest::Join {
            room: room.clone(),
            conn: ConnRef {
                gateway: gateway.into(),
                conn: ConnId::parse(format!("{gateway}-1")).expect("id"),
            },
            user: UserInfo {
                id: UserId::parse(user).expect("id"),
                name: user.into(),
                color: "#123456".into(),
            },
            since: None,
            epoch: None,
            resume_strokes: false,
        };
        // The room is this node's once it sees itself in the members.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let reply = bus
                .request(join("g1-old", "ann"), Duration::from_secs(10))
                .await;
            if matches!(reply, Ok(RoomReply::Joined(_))) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never joined: {reply:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await; // poll interval
        }
        assert_eq!(
            next_presence(&mut events).await,
            (PresenceEvent::Join, "ann".into())
        );

        // g1 restarts: same node id, new instance. Its old connection is
        // gone for good; nobody else's is touched.
        view.send_replace(members("g1-new"));
        assert_eq!(
            next_presence(&mut events).await,
            (PresenceEvent::Leave, "ann".into())
        );
    }
}
