//! The bus of a cluster, over NATS.
//!
//! - **Requests** go to the room's owner, chosen by [`placement`] over the
//!   live room nodes of the [`membership`] registry, on the owner's node
//!   subject. Every request and publish of one bus leaves through a single
//!   queue drained by one task onto one connection, so requests reach the
//!   owner in the order of the calls. Replies come back on one wildcard
//!   inbox subscription and are matched by a token in the reply subject.
//! - **Room events** go to `{prefix}.room.{room}`; a subscription is one
//!   NATS subscription, dropped with it. A subscriber hears
//!   [`Delivery::Lagged`] when NATS dropped messages for it (slow
//!   consumer) and after every reconnect, since messages published while
//!   it was away are gone; events stamped with an owner term lower than one
//!   it has seen are dropped.
//! - **Serving** subscribes this node's subject, takes requests in (calls
//!   the handler) in arrival order and replies as each reply is ready.
//!
//! The subjects, headers and payloads are [`collab_protocol::subjects`].
//!
//! [`placement`]: crate::placement
//! [`membership`]: crate::membership

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::{Client, HeaderMap, Subscriber};
use async_trait::async_trait;
use collab_protocol::envelope::{RoomEvent, RoomReply, RoomRequest};
use collab_protocol::subjects::{self, SubjectError, Subjects, header};
use collab_protocol::{ErrorCode, NodeId, RoomId};
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::membership::{self, Members, RegistryConfig, Roles};
use crate::{
    Bus, BusError, BusMetrics, Delivery, EventStream, Load, ReplyFuture, RequestHandler,
    Subscription,
};

/// How a [`NatsBus`] connects and announces itself.
#[derive(Debug, Clone)]
pub struct NatsBusConfig {
    /// Server URLs, comma-separated (`nats://host:4222,nats://other:4222`).
    pub url: String,
    /// This process's id in the cluster: a subject token and a KV key.
    pub node: NodeId,
    /// This run of the process, announced in its membership record;
    /// defaults to the node id and the time the config was made.
    pub instance: String,
    /// Subject prefix of the cluster.
    pub subjects: Subjects,
    /// Announce this process as a gateway. It is announced as a room node
    /// once it [serves](Bus::serve).
    pub gateway: bool,
    /// How often this process renews its membership record.
    pub heartbeat_interval: Duration,
    /// How long a membership record stands without renewal. At least one
    /// second (the server's resolution) and longer than the interval.
    pub member_ttl: Duration,
    /// Messages a subscription may fall behind by before NATS drops them
    /// (and the room's subscriber is told it lagged).
    pub subscription_capacity: usize,
    /// Requests and events waiting to go out; past it, events are dropped
    /// and requests fail with [`BusError::NoOwner`].
    pub outbound_capacity: usize,
    /// Replicas of the members bucket when this process creates it.
    pub bucket_replicas: usize,
    /// The longest wait between two reconnect attempts.
    pub max_reconnect_delay: Duration,
    /// Where the connection's and the membership's figures go (by default
    /// nowhere: `BusMetrics::register` exports them).
    pub metrics: BusMetrics,
}

impl NatsBusConfig {
    pub fn new(url: impl Into<String>, node: NodeId) -> Self {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        NatsBusConfig {
            url: url.into(),
            instance: format!("{node}-{started:x}"),
            node,
            subjects: Subjects::default(),
            gateway: false,
            heartbeat_interval: Duration::from_secs(1),
            member_ttl: Duration::from_secs(5),
            subscription_capacity: 8192,
            outbound_capacity: 65_536,
            bucket_replicas: 1,
            max_reconnect_delay: Duration::from_secs(2),
            metrics: BusMetrics::default(),
        }
    }

    fn check(&self) -> Result<(), NatsBusError> {
        subjects::check_node_id(&self.node)?;
        if self.member_ttl < Duration::from_secs(1) {
            return Err(NatsBusError::Config(
                "member ttl must be at least 1 s".into(),
            ));
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_interval >= self.member_ttl {
            return Err(NatsBusError::Config(
                "heartbeat interval must be above zero and below the member ttl".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NatsBusError {
    #[error("bad cluster bus config: {0}")]
    Config(String),
    #[error(transparent)]
    Subject(#[from] SubjectError),
    #[error("cannot connect to nats: {0}")]
    Connect(#[from] async_nats::ConnectError),
    #[error("cannot subscribe: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
}

/// The [`Bus`] of a cluster. Dropping it closes its connection without a
/// goodbye (its membership record expires); [`NatsBus::leave`] says one.
pub struct NatsBus {
    client: Client,
    config: NatsBusConfig,
    js: async_nats::jetstream::Context,
    registry: RegistryConfig,
    outbound: mpsc::Sender<Outbound>,
    pending: Pending,
    next_token: AtomicU64,
    inbox: String,
    members: watch::Receiver<Members>,
    lag: Arc<watch::Sender<u64>>,
    /// Since when the membership heartbeats have failed (see
    /// [`Bus::cut_off`]).
    cut_off: Arc<watch::Sender<Option<std::time::Instant>>>,
    roles: watch::Sender<Roles>,
    /// Read by the heartbeat: the figures this member announces.
    load: Arc<Load>,
    tasks: Mutex<Tasks>,
}

/// The bus's background tasks, all aborted when it is dropped.
#[derive(Default)]
struct Tasks {
    heartbeat: Option<JoinHandle<()>>,
    serving: Option<JoinHandle<()>>,
    others: Vec<JoinHandle<()>>,
}

impl Tasks {
    fn abort_all(&mut self) {
        let all = self.heartbeat.take().into_iter().chain(self.serving.take());
        for task in all.chain(self.others.drain(..)) {
            task.abort();
        }
    }
}

/// Requests waiting for their reply, by token, with the node each went to.
type Pending = Arc<Mutex<HashMap<u64, Waiting>>>;

struct Waiting {
    owner: NodeId,
    reply: oneshot::Sender<Result<RoomReply, BusError>>,
}

enum Outbound {
    Publish {
        subject: String,
        headers: Option<HeaderMap>,
        payload: Vec<u8>,
    },
    Request {
        subject: String,
        reply: String,
        payload: Vec<u8>,
    },
}

impl NatsBus {
    /// Connects (retrying in the background if the server is not there
    /// yet: [`Bus::is_ready`] says when it is), starts heartbeating if this
    /// is a gateway, and starts watching the cluster's members.
    pub async fn connect(config: NatsBusConfig) -> Result<NatsBus, NatsBusError> {
        config.check()?;
        let lag = Arc::new(watch::channel(0u64).0);
        let on_event = lag.clone();
        let node = config.node.clone();
        let max_delay = config.max_reconnect_delay;
        let was_connected = Arc::new(AtomicBool::new(false));
        let metrics = config.metrics.clone();
        let client = async_nats::ConnectOptions::new()
            .name(format!("collab {}", config.node))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .subscription_capacity(config.subscription_capacity.max(1))
            .reconnect_delay_callback(move |attempts| {
                let ms = 50u64.saturating_mul(1 << attempts.min(10));
                Duration::from_millis(ms).min(max_delay)
            })
            .event_callback(move |event| {
                let lag = on_event.clone();
                let node = node.clone();
                let was_connected = was_connected.clone();
                let metrics = metrics.clone();
                async move {
                    match event {
                        // Whatever was published while we were away is lost
                        // to our subscriptions: every room catches up.
                        async_nats::Event::Connected => {
                            info!(%node, "connected to nats");
                            metrics.nats_connected.set(1);
                            if was_connected.swap(true, Ordering::Relaxed) {
                                metrics.nats_reconnects.inc();
                                lag.send_modify(|n| *n += 1);
                            }
                        }
                        async_nats::Event::SlowConsumer(sid) => {
                            warn!(%node, sid, "nats dropped messages for a slow subscription");
                            lag.send_modify(|n| *n += 1);
                        }
                        async_nats::Event::Disconnected => {
                            metrics.nats_connected.set(0);
                            warn!(%node, "disconnected from nats");
                        }
                        other => debug!(%node, event = %other, "nats event"),
                    }
                }
            })
            .connect(config.url.as_str())
            .await?;

        let js = async_nats::jetstream::new(client.clone());
        let registry = RegistryConfig {
            bucket: config.subjects.members_bucket(),
            node: config.node.clone(),
            instance: config.instance.clone(),
            heartbeat_interval: config.heartbeat_interval,
            ttl: config.member_ttl,
            replicas: config.bucket_replicas,
        };
        let mut tasks = Tasks::default();

        let inbox = client.new_inbox();
        let replies = client.subscribe(format!("{inbox}.*")).await?;
        let pending: Pending = Arc::default();
        tasks
            .others
            .push(tokio::spawn(route_replies(replies, pending.clone())));

        let (outbound, queue) = mpsc::channel(config.outbound_capacity.max(1));
        tasks
            .others
            .push(tokio::spawn(send_outbound(client.clone(), queue)));

        let (members_tx, members) = watch::channel(Members::default());
        tasks.others.push(tokio::spawn(membership::watch_members(
            js.clone(),
            registry.clone(),
            members_tx,
            config.metrics.clone(),
        )));
        tasks.others.push(tokio::spawn(abandon_requests_to_departed(
            members.clone(),
            pending.clone(),
        )));

        let (roles, roles_rx) = watch::channel(Roles {
            room_node: false,
            gateway: config.gateway,
        });
        let load = Arc::new(Load::default());
        let cut_off = Arc::new(watch::channel(None).0);
        tasks.heartbeat = Some(tokio::spawn(membership::heartbeat(
            js.clone(),
            registry.clone(),
            roles_rx,
            load.clone(),
            cut_off.clone(),
        )));

        Ok(NatsBus {
            client,
            config,
            js,
            registry,
            outbound,
            pending,
            next_token: AtomicU64::new(1),
            inbox,
            members,
            lag,
            cut_off,
            roles,
            load,
            tasks: Mutex::new(tasks),
        })
    }

    pub fn node(&self) -> &NodeId {
        &self.config.node
    }

    /// Waits until the server has processed everything this bus sent it so
    /// far — subscriptions included — so that what anyone publishes from
    /// now on reaches them.
    pub async fn flush(&self) {
        // Not the client's own flush: that only writes its buffer to the
        // socket. A request nobody listens to is answered "no responders"
        // by the server, and only after it has processed everything this
        // connection sent before it.
        let _ = self
            .client
            .request(self.client.new_inbox(), Default::default())
            .await;
    }

    /// This run of the process, as its membership record announces it.
    pub fn instance(&self) -> &str {
        &self.config.instance
    }

    /// The owner of `room` as this process sees the cluster now.
    pub fn owner(&self, room: &RoomId) -> Option<NodeId> {
        self.members.borrow().owner(room).cloned()
    }

    /// Leaves the cluster: stops heartbeating and serving, removes this
    /// node's membership record at once (instead of letting it expire),
    /// and flushes what is queued.
    async fn leave_cluster(&self) {
        self.roles.send_replace(Roles::default());
        {
            let mut tasks = self.tasks();
            let stopping = tasks
                .heartbeat
                .take()
                .into_iter()
                .chain(tasks.serving.take());
            stopping.for_each(|task| task.abort());
        }
        if let Err(err) = membership::leave(&self.js, &self.registry).await {
            warn!(node = %self.config.node, error = %err, "could not remove membership record");
        }
        let _ = self.client.flush().await;
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, Tasks> {
        // Task handles hold no invariant a panic could break.
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, message: Outbound) -> Result<(), BusError> {
        self.outbound.try_send(message).map_err(|err| match err {
            mpsc::error::TrySendError::Full(_) => BusError::NoOwner,
            mpsc::error::TrySendError::Closed(_) => BusError::Closed,
        })
    }

    fn publish_with(&self, event: RoomEvent, headers: Option<HeaderMap>) {
        let subject = self.config.subjects.room(event.room());
        let payload = match subjects::encode(&event) {
            Ok(payload) => payload,
            Err(err) => {
                warn!(room = %event.room(), error = %err, "cannot encode event");
                return;
            }
        };
        if let Err(err) = self.push(Outbound::Publish {
            subject,
            headers,
            payload,
        }) {
            // At-most-once: subscribers detect the gap.
            debug!(room = %event.room(), error = %err, "event dropped");
        }
    }
}

impl Drop for NatsBus {
    fn drop(&mut self) {
        self.tasks().abort_all();
    }
}

/// Removes a request's reply slot when its future ends or is dropped.
struct PendingSlot {
    pending: Pending,
    token: u64,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.token);
    }
}

#[async_trait]
impl Bus for NatsBus {
    fn request(
        &self,
        request: RoomRequest,
        timeout: Duration,
    ) -> ReplyFuture<Result<RoomReply, BusError>> {
        let Some(owner) = self.owner(request.room()) else {
            return Box::pin(async { Err(BusError::NoOwner) });
        };
        let Ok(subject) = self.config.subjects.node(&owner) else {
            return Box::pin(async { Err(BusError::NoOwner) });
        };
        let payload = match subjects::encode(&request) {
            Ok(payload) => payload,
            Err(err) => {
                warn!(room = %request.room(), error = %err, "cannot encode request");
                return Box::pin(async { Err(BusError::Closed) });
            }
        };
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token, Waiting { owner, reply: tx });
        let slot = PendingSlot {
            pending: self.pending.clone(),
            token,
        };
        // Queued now, in call order; the one sender task keeps that order
        // onto the connection.
        let sent = self.push(Outbound::Request {
            subject,
            reply: format!("{}.{token}", self.inbox),
            payload,
        });
        Box::pin(async move {
            let _slot = slot;
            sent?;
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(reply)) => reply,
                Ok(Err(_)) => Err(BusError::Closed),
                Err(_) => Err(BusError::Timeout),
            }
        })
    }

    fn publish(&self, event: RoomEvent) {
        self.publish_with(event, None);
    }

    fn publish_owned(&self, event: RoomEvent, term: u64) {
        let mut headers = HeaderMap::new();
        headers.insert(header::NODE, self.config.node.as_str());
        headers.insert(header::TERM, term.to_string());
        self.publish_with(event, Some(headers));
    }

    async fn subscribe(&self, room: &RoomId) -> Result<Subscription, BusError> {
        let subscriber = self
            .client
            .subscribe(self.config.subjects.room(room))
            .await
            .map_err(|_| BusError::Closed)?;
        Ok(Subscription::new(Box::new(NatsEventStream {
            room: room.clone(),
            subscriber,
            lag: self.lag.subscribe(),
            term: None,
            held: None,
        })))
    }

    async fn serve(&self, handler: Arc<dyn RequestHandler>) -> Result<(), BusError> {
        let subject = self
            .config
            .subjects
            .node(&self.config.node)
            .map_err(|_| BusError::Closed)?;
        let requests = self
            .client
            .subscribe(subject)
            .await
            .map_err(|_| BusError::Closed)?;
        let serving = tokio::spawn(serve_requests(self.client.clone(), requests, handler));
        if let Some(previous) = self.tasks().serving.replace(serving) {
            previous.abort();
        }
        // Announced only once requests are received.
        self.roles.send_modify(|roles| roles.room_node = true);
        Ok(())
    }

    fn is_ready(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn members(&self) -> Option<watch::Receiver<Members>> {
        Some(self.members.clone())
    }

    fn load(&self) -> Option<&Load> {
        Some(&self.load)
    }

    fn cut_off(&self) -> Option<watch::Receiver<Option<std::time::Instant>>> {
        Some(self.cut_off.subscribe())
    }

    async fn leave(&self) {
        self.leave_cluster().await;
    }
}

// === tasks ===

/// Drains the outbound queue onto the connection, in order.
async fn send_outbound(client: Client, mut queue: mpsc::Receiver<Outbound>) {
    while let Some(message) = queue.recv().await {
        let sent = match message {
            Outbound::Publish {
                subject,
                headers: Some(headers),
                payload,
            } => {
                client
                    .publish_with_headers(subject, headers, payload.into())
                    .await
            }
            Outbound::Publish {
                subject,
                headers: None,
                payload,
            } => client.publish(subject, payload.into()).await,
            Outbound::Request {
                subject,
                reply,
                payload,
            } => {
                client
                    .publish_with_reply(subject, reply, payload.into())
                    .await
            }
        };
        if let Err(err) = sent {
            // The request times out; a lost event is a gap subscribers fill.
            debug!(error = %err, "publish failed");
        }
    }
}

/// Hands each reply to the request waiting for it.
async fn route_replies(mut replies: Subscriber, pending: Pending) {
    while let Some(message) = replies.next().await {
        let Some(token) = message
            .subject
            .rsplit('.')
            .next()
            .and_then(|t| t.parse::<u64>().ok())
        else {
            continue;
        };
        let Some(waiting) = pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&token)
        else {
            continue; // timed out already
        };
        let reply = if message.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            // The owner in our member list is not listening (it just died
            // or has not started serving): nobody took the request.
            Err(BusError::NoOwner)
        } else {
            subjects::decode::<RoomReply>(&message.payload).map_err(|err| {
                warn!(error = %err, "undecodable reply");
                // The owner did take the request; its outcome is unknown.
                BusError::Timeout
            })
        };
        let _ = waiting.reply.send(reply);
    }
}

/// Fails the requests waiting on a room node that left the cluster (it
/// crashed, froze past its TTL or left), instead of letting them run to
/// their timeout: their rooms have moved, and the callers can retry with
/// the new owner at once. Whether such a request was carried out is
/// unknown, hence [`BusError::Timeout`].
async fn abandon_requests_to_departed(mut members: watch::Receiver<Members>, pending: Pending) {
    while members.changed().await.is_ok() {
        let current = members.borrow_and_update().clone();
        let mut pending = pending.lock().unwrap_or_else(|p| p.into_inner());
        let departed: Vec<u64> = pending
            .iter()
            .filter(|(_, waiting)| !current.get(&waiting.owner).is_some_and(|r| r.room_node))
            .map(|(token, _)| *token)
            .collect();
        for token in departed {
            if let Some(waiting) = pending.remove(&token) {
                let _ = waiting.reply.send(Err(BusError::Timeout));
            }
        }
    }
}

/// Takes requests in, in arrival order, and replies to each when ready.
async fn serve_requests(
    client: Client,
    mut requests: Subscriber,
    handler: Arc<dyn RequestHandler>,
) {
    while let Some(message) = requests.next().await {
        let Some(reply_to) = message.reply else {
            continue;
        };
        let reply = match subjects::decode::<RoomRequest>(&message.payload) {
            Ok(request) => handler.handle(request),
            Err(err) => {
                let reply = RoomReply::Error {
                    code: ErrorCode::BadRequest,
                    message: err.to_string(),
                };
                Box::pin(async move { reply })
            }
        };
        let client = client.clone();
        tokio::spawn(async move {
            let reply = reply.await;
            match subjects::encode(&reply) {
                Ok(payload) => {
                    if let Err(err) = client.publish(reply_to, payload.into()).await {
                        debug!(error = %err, "reply not sent");
                    }
                }
                Err(err) => warn!(error = %err, "cannot encode reply"),
            }
        });
    }
}

// === impl NatsEventStream ===

struct NatsEventStream {
    room: RoomId,
    subscriber: Subscriber,
    /// Bumped on every reconnect and slow-consumer drop.
    lag: watch::Receiver<u64>,
    /// The highest owner term seen on this stream.
    term: Option<u64>,
    /// An event held back behind the `Lagged` its new term caused.
    held: Option<Arc<RoomEvent>>,
}

#[async_trait]
impl EventStream for NatsEventStream {
    async fn next(&mut self) -> Option<Delivery> {
        if let Some(event) = self.held.take() {
            return Some(Delivery::Event(event));
        }
        loop {
            let message = tokio::select! {
                biased;
                changed = self.lag.changed() => {
                    return changed.ok().map(|()| Delivery::Lagged);
                }
                message = self.subscriber.next() => message?,
            };
            let event = match subjects::decode::<RoomEvent>(&message.payload) {
                Ok(event) => Arc::new(event),
                Err(err) => {
                    warn!(room = %self.room, error = %err, "undecodable room event dropped");
                    continue;
                }
            };
            let term = message
                .headers
                .as_ref()
                .and_then(|h| h.get(header::TERM))
                .and_then(|v| subjects::parse_term(v.as_str()));
            match (term, self.term) {
                // An op is published only once committed, and the store
                // lets one writer commit each seq, so an op is true whoever
                // sends it: it goes on, and the gateway drops it if it is a
                // duplicate. Dropping it could leave a gap until the room's
                // next op.
                (Some(term), Some(seen))
                    if term < seen && !matches!(event.as_ref(), RoomEvent::Op(_)) =>
                {
                    debug!(room = %self.room, term, seen, "event from a replaced owner dropped");
                    continue;
                }
                (Some(term), Some(seen)) if term > seen => {
                    // A new owner: whatever the old one committed last may
                    // not have reached us. Catch up first.
                    self.term = Some(term);
                    self.held = Some(event);
                    return Some(Delivery::Lagged);
                }
                (Some(term), None) => self.term = Some(term),
                _ => {}
            }
            return Some(Delivery::Event(event));
        }
    }
}
