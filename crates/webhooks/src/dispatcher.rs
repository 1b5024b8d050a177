//! The dispatcher: reads each room's log after every endpoint's durable
//! cursor and POSTs what it finds, per endpoint and room in seq order.
//!
//! It runs on the node that owns the rooms (see [`Placement`]), beside
//! their actors. A room is taken up when its actors' store reports a
//! commit (see [`crate::marking`]) or when a periodic scan of the durable
//! marks finds it (after a crash or a hand-off nothing else would); it is
//! let go after `idle_after` with nothing new, and its marks are then
//! cleared if every endpoint's cursor reached the head. Each (endpoint,
//! room) pair has one loop and at most one request in flight, so an
//! endpoint gets a room's events in order, and a slow endpoint or room
//! holds up no other.
//!
//! Presence (`member.joined`, `member.left`) is best-effort: it comes from
//! the room's events as they are emitted, waits in a bounded queue per
//! endpoint, and is lost if the process dies first or the queue is full.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use collab_protocol::envelope::RoomEvent;
use collab_protocol::frames::PresenceEvent;
use collab_protocol::webhooks::{RoomCreated, WebhookData, WebhookEvent};
use collab_protocol::{RoomId, RoomKind, Seq};
use collab_store::{RoomRecord, Store, StoreError, WebhookLog};
use hyper::body::Bytes;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

use crate::config::{EventKind, WebhookConfig};
use crate::marking::{Committed, MarkId, MarkingStore, Marks};
use crate::metrics::{Outcome, WebhookMetrics};
use crate::sender::Sender;

/// Which rooms this node dispatches, and which nodes live.
pub trait Placement: Send + Sync + 'static {
    /// Whether this node owns `room` now (and so sends its events).
    fn owns(&self, room: &RoomId) -> bool;
    /// Whether `node` is a live room node other than this one.
    fn other_node_alive(&self, node: &str) -> bool;
}

/// One process owns every room: `collab serve`.
pub struct Solo;

impl Placement for Solo {
    fn owns(&self, _room: &RoomId) -> bool {
        true
    }
    fn other_node_alive(&self, _node: &str) -> bool {
        false
    }
}

/// Timings of the dispatcher.
#[derive(Debug, Clone)]
pub struct DispatchOptions {
    /// How often the marks are listed for rooms to take up.
    pub scan_every: Duration,
    /// A room with nothing new for this long is let go (and its marks
    /// cleared when it is caught up).
    pub idle_after: Duration,
    /// Ops read from the log at a time.
    pub read_batch: usize,
    /// A cursor is written at most this often while events flow (and
    /// always when a room goes quiet): a crash repeats at most this much.
    pub cursor_every: Duration,
    /// Best-effort events waiting per endpoint, past which they are dropped.
    pub presence_queue: usize,
}

impl Default for DispatchOptions {
    fn default() -> Self {
        DispatchOptions {
            scan_every: Duration::from_secs(5),
            idle_after: Duration::from_secs(5),
            read_batch: 256,
            cursor_every: Duration::from_millis(200),
            presence_queue: 1024,
        }
    }
}

/// The webhook endpoints of a process and their metrics: what the binary
/// builds from its configuration and hands the room node.
#[derive(Clone)]
pub struct Webhooks {
    pub endpoints: Vec<WebhookConfig>,
    pub metrics: WebhookMetrics,
    pub options: DispatchOptions,
}

impl Webhooks {
    /// Webhooks with their metrics on `registry`.
    pub fn register(
        endpoints: Vec<WebhookConfig>,
        registry: &mut prometheus_client::registry::Registry,
    ) -> Webhooks {
        let ids: Vec<String> = endpoints.iter().map(|e| e.id.clone()).collect();
        Webhooks {
            metrics: WebhookMetrics::register(registry, &ids),
            endpoints,
            options: DispatchOptions::default(),
        }
    }

    /// Webhooks whose metrics are not exported (tests).
    pub fn unregistered(endpoints: Vec<WebhookConfig>) -> Webhooks {
        let ids: Vec<String> = endpoints.iter().map(|e| e.id.clone()).collect();
        Webhooks {
            metrics: WebhookMetrics::for_endpoints(&ids),
            endpoints,
            options: DispatchOptions::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("this store keeps no webhook cursors")]
    NoWebhookLog,
    #[error("webhook HTTP client: {0}")]
    Client(String),
}

/// A running dispatcher. Stops when dropped.
pub struct Dispatcher {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

struct Endpoint {
    config: WebhookConfig,
    /// Bounds the requests in flight to the endpoint.
    in_flight: tokio::sync::Semaphore,
    lag: Gauge,
    retrying: Gauge,
    presence: mpsc::Sender<WebhookEvent>,
}

struct Shared {
    endpoints: Vec<Arc<Endpoint>>,
    /// The node's own store (not the marking one: the dispatcher only reads
    /// the log, and writes cursors and marks).
    store: Arc<dyn Store>,
    log: Arc<dyn WebhookLog>,
    marks: Arc<Marks>,
    placement: Arc<dyn Placement>,
    sender: Sender,
    metrics: WebhookMetrics,
    options: DispatchOptions,
}

impl Dispatcher {
    /// Starts dispatching for node `node`. Returns the dispatcher and the
    /// store the node's room actors must write through.
    pub fn start(
        webhooks: Webhooks,
        store: Arc<dyn Store>,
        node: &str,
        placement: Arc<dyn Placement>,
    ) -> Result<(Dispatcher, Arc<MarkingStore>), DispatchError> {
        let log = Arc::clone(&store)
            .webhook_log()
            .ok_or(DispatchError::NoWebhookLog)?;
        let sender = Sender::new().map_err(DispatchError::Client)?;
        let marks = Arc::new(Marks::new(Arc::clone(&log), node));
        let (committed_tx, committed_rx) = mpsc::unbounded_channel();
        let marking = Arc::new(MarkingStore::new(
            Arc::clone(&store),
            Arc::clone(&marks),
            committed_tx,
        ));
        let mut queues = Vec::new();
        let endpoints = webhooks
            .endpoints
            .into_iter()
            .map(|config| {
                let (tx, rx) = mpsc::channel(webhooks.options.presence_queue.max(1));
                queues.push(rx);
                Arc::new(Endpoint {
                    in_flight: tokio::sync::Semaphore::new(config.max_in_flight.max(1)),
                    lag: webhooks.metrics.lag_of(&config.id),
                    retrying: webhooks.metrics.retrying_of(&config.id),
                    config,
                    presence: tx,
                })
            })
            .collect::<Vec<_>>();
        let shared = Arc::new(Shared {
            endpoints,
            store,
            log,
            marks,
            placement,
            sender,
            metrics: webhooks.metrics,
            options: webhooks.options,
        });
        info!(
            endpoints = shared.endpoints.len(),
            node,
            instance = shared.marks.instance(),
            "webhook dispatcher started"
        );
        let mut tasks = vec![tokio::spawn(run(Arc::clone(&shared), committed_rx))];
        for (endpoint, queue) in shared.endpoints.iter().zip(queues) {
            tasks.push(tokio::spawn(send_presence(
                Arc::clone(&shared),
                Arc::clone(endpoint),
                queue,
            )));
        }
        Ok((Dispatcher { shared, tasks }, marking))
    }

    /// A room event as the room emits it: presence becomes a best-effort
    /// `member.joined` or `member.left`. Never blocks.
    pub fn room_event(&self, event: &RoomEvent) {
        let RoomEvent::Presence {
            room, event, user, ..
        } = event
        else {
            return;
        };
        let kind = match event {
            PresenceEvent::Join => EventKind::MemberJoined,
            PresenceEvent::Leave => EventKind::MemberLeft,
        };
        for endpoint in &self.shared.endpoints {
            if !endpoint.config.wants(kind) {
                continue;
            }
            let event = WebhookEvent {
                id: format!("{kind}:{room}:{:016x}", rand::random::<u64>()),
                kind: kind.as_str().to_owned(),
                created_at: now_ms(),
                room: room.clone(),
                room_kind: None,
                seq: None,
                data: WebhookData::Member { user: user.clone() },
            };
            if endpoint.presence.try_send(event).is_err() {
                self.shared
                    .metrics
                    .count(&endpoint.config.id, Outcome::Dropped);
            }
        }
    }

    /// Stops every task; the durable cursors and marks stay for the next
    /// process.
    pub fn stop(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        self.stop();
    }
}

// === the rooms ===

/// A room being dispatched.
struct Dispatching {
    /// The highest head reported for it.
    head: Arc<watch::Sender<Seq>>,
    /// Marks of dead writers the scan found, to clear once caught up.
    dead_marks: Vec<String>,
}

async fn run(shared: Arc<Shared>, mut committed: mpsc::UnboundedReceiver<Committed>) {
    let mut rooms: HashMap<RoomId, Dispatching> = HashMap::new();
    let mut tasks: JoinSet<Seq> = JoinSet::new();
    let mut task_rooms: HashMap<tokio::task::Id, RoomId> = HashMap::new();
    let mut scan = tokio::time::interval(shared.options.scan_every);
    scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let spawn_room = |tasks: &mut JoinSet<Seq>,
                      task_rooms: &mut HashMap<tokio::task::Id, RoomId>,
                      room: &RoomId,
                      head: &Arc<watch::Sender<Seq>>| {
        let handle = tasks.spawn(dispatch_room(
            Arc::clone(&shared),
            room.clone(),
            Arc::clone(head),
        ));
        task_rooms.insert(handle.id(), room.clone());
    };
    loop {
        tokio::select! {
            Some(Committed { room, head }) = committed.recv() => {
                if let Some(dispatching) = rooms.get(&room) {
                    dispatching.head.send_if_modified(|known| raise(known, head));
                } else if shared.placement.owns(&room) {
                    let head = Arc::new(watch::Sender::new(head));
                    spawn_room(&mut tasks, &mut task_rooms, &room, &head);
                    rooms.insert(room, Dispatching { head, dead_marks: Vec::new() });
                }
            }
            Some(done) = tasks.join_next_with_id() => {
                let (id, covered) = match done {
                    Ok((id, covered)) => (id, Some(covered)),
                    Err(e) => {
                        warn!(error = %e, "a webhook room task failed");
                        (e.id(), None)
                    }
                };
                let Some(room) = task_rooms.remove(&id) else { continue };
                let Some(dispatching) = rooms.get(&room) else { continue };
                let newer = covered.is_none_or(|covered| *dispatching.head.borrow() > covered);
                if newer && shared.placement.owns(&room) {
                    let head = Arc::clone(&dispatching.head);
                    spawn_room(&mut tasks, &mut task_rooms, &room, &head);
                } else if let Some(dispatching) = rooms.remove(&room) {
                    tokio::spawn(clear_marks(Arc::clone(&shared), room, dispatching.dead_marks));
                }
            }
            _ = scan.tick() => {
                let marks = match shared.log.webhook_marks().await {
                    Ok(marks) => marks,
                    Err(e) => {
                        warn!(error = %e, "could not list the webhook marks");
                        continue;
                    }
                };
                for (room, marks) in group_by_room(marks) {
                    if rooms.contains_key(&room) {
                        continue;
                    }
                    let dead: Vec<String> = marks
                        .iter()
                        .filter(|mark| shared.is_dead(mark))
                        .cloned()
                        .collect();
                    if shared.placement.owns(&room) {
                        let head = Arc::new(watch::Sender::new(Seq::ZERO));
                        spawn_room(&mut tasks, &mut task_rooms, &room, &head);
                        rooms.insert(room, Dispatching { head, dead_marks: dead });
                    } else {
                        // Another node sends it; clear what is ours or
                        // dead once that node caught the room up.
                        let ours = marks.iter().any(|mark| shared.is_ours(mark));
                        if ours || !dead.is_empty() {
                            tokio::spawn(clear_marks(Arc::clone(&shared), room, dead));
                        }
                    }
                }
            }
        }
    }
}

fn raise(known: &mut Seq, head: Seq) -> bool {
    if head > *known {
        *known = head;
        true
    } else {
        false
    }
}

fn group_by_room(marks: Vec<(RoomId, String)>) -> BTreeMap<RoomId, Vec<String>> {
    let mut rooms: BTreeMap<RoomId, Vec<String>> = BTreeMap::new();
    for (room, mark) in marks {
        rooms.entry(room).or_default().push(mark);
    }
    rooms
}

impl Shared {
    /// A mark of this process.
    fn is_ours(&self, mark: &str) -> bool {
        MarkId::parse(mark)
            .is_some_and(|id| id.node == self.marks.node() && id.instance == self.marks.instance())
    }

    /// A mark whose writer is gone: an earlier process of this node, or a
    /// node no longer in the cluster.
    fn is_dead(&self, mark: &str) -> bool {
        match MarkId::parse(mark) {
            None => true,
            Some(id) if id.node == self.marks.node() => id.instance != self.marks.instance(),
            Some(id) => !self.placement.other_node_alive(id.node),
        }
    }
}

/// Clears `room`'s retired marks of this process and the `dead` ones, if
/// every endpoint's cursor reached the room's head.
async fn clear_marks(shared: Arc<Shared>, room: RoomId, dead: Vec<String>) {
    let Some(ours) = shared.marks.retire(&room) else {
        // A write is in flight: its commit takes the room up again.
        return;
    };
    if ours.is_empty() && dead.is_empty() {
        return;
    }
    let caught_up = async {
        let head = match shared.store.head(&room).await {
            Ok(head) => head,
            Err(StoreError::RoomDeleted(at)) => at,
            Err(e) => return Err(e),
        };
        let cursors: HashMap<String, Seq> = shared
            .log
            .webhook_cursors(&room)
            .await?
            .into_iter()
            .collect();
        Ok(shared
            .endpoints
            .iter()
            .all(|e| cursors.get(&e.config.id).is_some_and(|c| *c >= head)))
    };
    match caught_up.await {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            debug!(%room, error = %e, "could not check whether the room's webhooks caught up");
            return;
        }
    }
    let mut cleared = Vec::new();
    for mark in ours.iter().chain(&dead) {
        match shared.log.remove_webhook_mark(&room, mark).await {
            Ok(()) => cleared.push(mark.clone()),
            Err(e) => debug!(%room, %mark, error = %e, "could not clear a webhook mark"),
        }
    }
    shared.marks.cleared(&room, &cleared);
    debug!(%room, cleared = cleared.len(), "webhook marks cleared");
}

/// Sends `room`'s events to every endpoint until each is caught up and
/// nothing new came for `idle_after`. Returns the head it covered.
async fn dispatch_room(shared: Arc<Shared>, room: RoomId, head: Arc<watch::Sender<Seq>>) -> Seq {
    let record = match shared.store.room(&room).await {
        Ok(record) => record,
        Err(e) => {
            warn!(%room, error = %e, "could not read the room for its webhooks");
            return Seq::ZERO;
        }
    };
    match shared.store.head(&room).await {
        Ok(stored) => {
            head.send_if_modified(|known| raise(known, stored));
        }
        Err(StoreError::RoomDeleted(at)) => {
            head.send_if_modified(|known| raise(known, at));
        }
        Err(e) => {
            warn!(%room, error = %e, "could not read the room's head for its webhooks");
            return Seq::ZERO;
        }
    }
    let cursors: HashMap<String, Seq> = match shared.log.webhook_cursors(&room).await {
        Ok(cursors) => cursors.into_iter().collect(),
        Err(e) => {
            warn!(%room, error = %e, "could not read the room's webhook cursors");
            return Seq::ZERO;
        }
    };
    let loops = shared.endpoints.iter().map(|endpoint| {
        let cursor = cursors.get(&endpoint.config.id).copied();
        EndpointRoom {
            shared: Arc::clone(&shared),
            endpoint: Arc::clone(endpoint),
            room: room.clone(),
            record: record.clone(),
            head: head.subscribe(),
            cursor: cursor.unwrap_or(record.as_ref().map_or(Seq::ZERO, |r| r.floor)),
            announce: cursor.is_none(),
            lag: 0,
        }
        .run()
    });
    // The lowest head any endpoint's loop covered.
    futures_util::future::join_all(loops)
        .await
        .into_iter()
        .min()
        .unwrap_or(Seq::ZERO)
}

/// One endpoint's loop over one room.
struct EndpointRoom {
    shared: Arc<Shared>,
    endpoint: Arc<Endpoint>,
    room: RoomId,
    record: Option<RoomRecord>,
    head: watch::Receiver<Seq>,
    /// Everything up to here was sent (or skipped by the filters).
    cursor: Seq,
    /// The endpoint has no cursor in this room yet: `room.created` first.
    announce: bool,
    /// This loop's part of the endpoint's lag gauge.
    lag: i64,
}

/// Why a loop stopped sending.
enum Stop {
    /// This node does not own the room any more.
    NotOwner,
}

impl EndpointRoom {
    async fn run(mut self) -> Seq {
        let covered = self.send_all().await;
        self.set_lag(0);
        covered
    }

    fn set_lag(&mut self, lag: i64) {
        self.endpoint.lag.inc_by(lag - self.lag);
        self.lag = lag;
    }

    fn room_kind(&self) -> Option<RoomKind> {
        self.record.as_ref().map(|r| r.kind)
    }

    async fn send_all(&mut self) -> Seq {
        let config = &self.endpoint.config;
        let options = self.shared.options.clone();
        let mut saved = self.cursor;
        let mut saved_at = Instant::now();
        if self.announce {
            if let Some(record) = self.record.clone()
                && config.wants(EventKind::RoomCreated)
                && config.wants_room(Some(record.kind))
            {
                let event = room_created(&record);
                if let Err(Stop::NotOwner) = self.deliver(&event).await {
                    return Seq::ZERO;
                }
            }
            // Written now, so that `room.created` goes out once.
            self.save_cursor().await;
        }
        loop {
            let target = *self.head.borrow_and_update();
            let lag = i64::try_from(target.get().saturating_sub(self.cursor.get())).unwrap_or(0);
            self.set_lag(lag);
            if !self.shared.placement.owns(&self.room) {
                self.save_cursor_if(saved).await;
                return Seq::ZERO;
            }
            let batch = match self
                .shared
                .store
                .read_log(&self.room, self.cursor, options.read_batch)
                .await
            {
                Ok(batch) => batch,
                Err(StoreError::RoomDeleted(at)) if at > self.cursor => {
                    if self.endpoint.config.wants(EventKind::RoomDeleted)
                        && self.endpoint.config.wants_room(self.room_kind())
                    {
                        let event = room_deleted(&self.room, self.room_kind(), at);
                        if let Err(Stop::NotOwner) = self.deliver(&event).await {
                            self.save_cursor_if(saved).await;
                            return Seq::ZERO;
                        }
                    }
                    self.cursor = at;
                    self.save_cursor().await;
                    saved = self.cursor;
                    continue;
                }
                Err(StoreError::RoomDeleted(_)) => Vec::new(),
                Err(e) => {
                    warn!(room = %self.room, error = %e, "could not read the log for webhooks; retrying");
                    // Back off from a store in trouble.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if batch.is_empty() {
                self.set_lag(0);
                if self.cursor > saved {
                    self.save_cursor().await;
                    saved = self.cursor;
                    saved_at = Instant::now();
                }
                let quiet = tokio::time::timeout(options.idle_after, self.head.changed()).await;
                if !matches!(quiet, Ok(Ok(()))) {
                    return target.max(self.cursor);
                }
                continue;
            }
            for logged in batch {
                let op = logged.event;
                let seq = op.seq;
                let config = &self.endpoint.config;
                if config.wants_op(op.op.kind()) && config.wants_room(self.room_kind()) {
                    let event = op_committed(self.room_kind(), op);
                    if let Err(Stop::NotOwner) = self.deliver(&event).await {
                        self.save_cursor_if(saved).await;
                        return Seq::ZERO;
                    }
                }
                self.cursor = seq;
                let target = *self.head.borrow();
                let lag = i64::try_from(target.get().saturating_sub(seq.get())).unwrap_or(0);
                self.set_lag(lag);
            }
            if saved_at.elapsed() >= options.cursor_every {
                self.save_cursor().await;
                saved = self.cursor;
                saved_at = Instant::now();
            }
        }
    }

    async fn save_cursor_if(&self, saved: Seq) {
        if self.cursor > saved {
            self.save_cursor().await;
        }
    }

    async fn save_cursor(&self) {
        let id = &self.endpoint.config.id;
        if let Err(e) = self
            .shared
            .log
            .set_webhook_cursor(id, &self.room, self.cursor)
            .await
        {
            // Not fatal: the next save covers it, and a crash before that
            // only repeats events.
            warn!(room = %self.room, endpoint = %id, error = %e, "could not save a webhook cursor");
        }
    }

    /// Sends `event` until it is delivered or expires; stops early if the
    /// room moves to another node.
    async fn deliver(&self, event: &WebhookEvent) -> Result<(), Stop> {
        let room = self.room.clone();
        let placement = Arc::clone(&self.shared.placement);
        send_with_retries(&self.shared, &self.endpoint, event, move || {
            placement.owns(&room)
        })
        .await
    }
}

/// Sends `event` to `endpoint`, retrying with backoff until a 2xx or the
/// retry horizon; `still_ours` is asked before each retry.
async fn send_with_retries(
    shared: &Shared,
    endpoint: &Endpoint,
    event: &WebhookEvent,
    still_ours: impl Fn() -> bool,
) -> Result<(), Stop> {
    let config = &endpoint.config;
    let body = match serde_json::to_vec(event) {
        Ok(body) => Bytes::from(body),
        Err(e) => {
            // Plain data always encodes; skip rather than block the room.
            warn!(event = %event.id, error = %e, "could not encode a webhook event; skipped");
            return Ok(());
        }
    };
    let first = Instant::now();
    let mut failures = 0u32;
    let outcome = loop {
        let sent = {
            // Never closed: the semaphore lives as long as the endpoint.
            let _permit = endpoint.in_flight.acquire().await;
            shared
                .sender
                .send(
                    &config.url,
                    config.secret.expose(),
                    &event.id,
                    body.clone(),
                    config.timeout(),
                )
                .await
        };
        match sent {
            Ok(()) => {
                shared.metrics.count(&config.id, Outcome::Delivered);
                break Ok(());
            }
            Err(why) => {
                shared.metrics.count(&config.id, Outcome::Failed);
                failures += 1;
                if failures == 1 {
                    endpoint.retrying.inc();
                }
                let elapsed = first.elapsed();
                if elapsed >= config.horizon() {
                    shared.metrics.count(&config.id, Outcome::Expired);
                    warn!(
                        endpoint = %config.id, event = %event.id, attempts = failures, reason = %why,
                        "webhook event given up at the retry horizon; skipped"
                    );
                    break Ok(());
                }
                let wait = config
                    .retry()
                    .jittered(failures)
                    .min(config.horizon() - elapsed);
                debug!(
                    endpoint = %config.id, event = %event.id, attempts = failures, reason = %why,
                    wait_ms = wait.as_millis() as u64, "webhook delivery failed; retrying"
                );
                tokio::time::sleep(wait).await;
                if !still_ours() {
                    break Err(Stop::NotOwner);
                }
            }
        }
    };
    if failures > 0 {
        endpoint.retrying.dec();
    }
    outcome
}

/// Sends an endpoint's best-effort events, in the order they came.
async fn send_presence(
    shared: Arc<Shared>,
    endpoint: Arc<Endpoint>,
    mut queue: mpsc::Receiver<WebhookEvent>,
) {
    while let Some(mut event) = queue.recv().await {
        event.room_kind = match shared.store.room(&event.room).await {
            Ok(record) => record.map(|r| r.kind),
            Err(_) => None,
        };
        if !endpoint.config.wants_room(event.room_kind) {
            continue;
        }
        let _ = send_with_retries(&shared, &endpoint, &event, || true).await;
    }
}

// === payloads ===

fn op_committed(room_kind: Option<RoomKind>, op: collab_protocol::OpEvent) -> WebhookEvent {
    WebhookEvent {
        id: format!("op.committed:{}:{}", op.room, op.seq),
        kind: EventKind::OpCommitted.as_str().to_owned(),
        created_at: op.ts,
        room: op.room.clone(),
        room_kind,
        seq: Some(op.seq),
        data: WebhookData::Op(op),
    }
}

fn room_created(record: &RoomRecord) -> WebhookEvent {
    WebhookEvent {
        id: format!("room.created:{}:{}", record.id, record.floor),
        kind: EventKind::RoomCreated.as_str().to_owned(),
        created_at: record.created_at,
        room: record.id.clone(),
        room_kind: Some(record.kind),
        seq: Some(record.floor),
        data: WebhookData::Room(RoomCreated {
            name: record.name.clone(),
            created_by: record.created_by.clone(),
            created_at: record.created_at,
            private: record.members.is_some(),
        }),
    }
}

fn room_deleted(room: &RoomId, room_kind: Option<RoomKind>, at: Seq) -> WebhookEvent {
    WebhookEvent {
        id: format!("room.deleted:{room}:{at}"),
        kind: EventKind::RoomDeleted.as_str().to_owned(),
        created_at: now_ms(),
        room: room.clone(),
        room_kind,
        seq: Some(at),
        data: WebhookData::Empty {},
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
