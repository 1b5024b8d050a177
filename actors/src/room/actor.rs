//! The room actor: the one writer of a room's log.
//!
//! It owns the room's [`RoomState`] and follows the commit path: ops are
//! validated and given their seqs as they join a batch; one batch is in
//! flight at a time; only when the store confirms a batch are its ops
//! broadcast and acked. Ops arriving meanwhile wait for the next batch, and
//! so do joins, because a `joined` must show committed state only. A failed
//! commit, or one whose outcome is unknown, makes the actor answer
//! `unavailable` to the ops it held and rebuild from the store; a
//! `Conflict` means another owner has the room, and the actor stops at once
//! without a word more. Store I/O runs in spawned tasks that report back as
//! messages, so no handler waits on the store.
//!
//! A room is deleted by its actor, through the store's fence: the ops that
//! reached the room before the `Delete` are committed first, then the
//! store writes a tombstone at the next seq and removes the room (see
//! `Store::delete_room`); requests that came after it are answered
//! `not_found`, and the gateways are told (`RoomEvent::Deleted`). An actor
//! that loads a room and meets a tombstone finishes that deletion.
//!
//! A room's name and members change through its actor too
//! (`RoomRequest::Update`), one change at a time, in the order of the
//! room's requests: joins that arrive while a change is being written wait
//! for it, so a join is always checked against the durable member list.
//! Users a change removes leave the room's presence once it is durable, and
//! the gateways are told (`RoomEvent::Removed`) to drop their connections.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use collab_protocol::envelope::{ConnRef, RoomEvent, RoomInspection, RoomReply, RoomRequest};
use collab_protocol::frames::{JoinedBody, PresenceEvent, UserInfo};
use collab_protocol::http::{LastCommit, RoomMember, RoomUpdated};
use collab_protocol::{
    Access, Cid, ConnId, ErrorCode, NodeId, OpEvent, ProtocolError, RoomId, Seq, UserId,
};
use collab_store::{AppendDone, Deletion, RoomRecord, Store, StoreError, Writer};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::{debug, error, info, warn};

use super::config::RoomConfig;
use super::metrics::{RoomMetrics, Takeover};
use super::sink::EventSink;
use super::supervisor::SupervisorMsg;
use super::usage::{Expiry, RoomUse};
use crate::state::{Applied, JoinPlan, OpRequest, PresenceChange, RoomMeta, RoomState, plan_join};

/// What every room actor of a node shares.
pub struct RoomContext {
    pub store: Arc<dyn Store>,
    pub sink: Arc<dyn EventSink>,
    pub config: RoomConfig,
    pub metrics: RoomMetrics,
    /// Told when rooms stop being used and when they are deleted.
    pub usage: Arc<dyn RoomUse>,
}

pub type Reply = RpcReplyPort<RoomReply>;

pub enum RoomMsg {
    /// A request from a gateway, answered on the port.
    Request(RoomRequest, Reply),
    /// The room came back from the store.
    Loaded(Box<Result<Load, String>>),
    /// The store answered batch `.0` (see [`InFlight::batch`]).
    Committed(u64, Vec<OpEvent>, Result<(), StoreError>),
    SnapshotWritten(Seq, Result<(), StoreError>),
    Tick,
    /// Every connection of this gateway is gone.
    GatewayGone(String),
    /// Finish what is in flight, snapshot, stop; answer when done.
    Drain(Option<RpcReplyPort<()>>),
    /// Delete the room because it went unused for its time to live: sent by
    /// the supervisor as the first message of a new actor (a room in use
    /// is never asked).
    Expire(RpcReplyPort<Expiry>),
    /// The store answered the room's deletion.
    DeleteDone(Result<(), StoreError>),
    /// The store answered the change of the room's name and members.
    UpdateDone(Result<(), StoreError>),
}

pub struct RoomArgs {
    pub room: RoomId,
    pub ctx: Arc<RoomContext>,
    pub supervisor: Option<ActorRef<SupervisorMsg>>,
    /// Requests routed to this room and not yet handled.
    pub backlog: Arc<AtomicUsize>,
}

pub struct RoomActor;

pub struct RoomActorState {
    room: RoomId,
    ctx: Arc<RoomContext>,
    supervisor: Option<ActorRef<SupervisorMsg>>,
    backlog: Arc<AtomicUsize>,
    phase: Phase,
    /// The number of the next batch sent to the store, never reused by
    /// this actor, so that an answer to a batch given up on (timed out,
    /// then the room rebuilt) is never taken for a later batch's.
    next_batch: u64,
}

enum Phase {
    /// Reading the room from the store. Requests wait here; presence
    /// survives a rebuild.
    Loading {
        parked: Vec<(RoomRequest, Reply)>,
        presence: Option<crate::state::Presence>,
        /// The room is to be deleted once loaded, if it has a time to live.
        expire: Option<RpcReplyPort<Expiry>>,
    },
    Live(Box<Live>),
    /// The store is deleting the room. Requests wait here, for `not_found`
    /// (or a retry, if the deletion fails).
    Deleting(Box<Deleting>),
    /// The room will not be served by this actor (no such room, it failed
    /// to load, or another owner wrote it): every request gets this answer
    /// until the supervisor, told to take the actor out of its map, drains
    /// it. Stopping only through the supervisor means no request is ever
    /// dropped unanswered in a dying mailbox.
    Closed(RoomReply),
}

/// Whoever asked for a room's deletion, waiting for its outcome.
enum DeleteAsker {
    /// A `Delete` request (over the bus).
    Request(Reply),
    /// The room's expiry (its supervisor's sweep).
    Expiry(RpcReplyPort<Expiry>),
}

impl DeleteAsker {
    /// Tells the outcome: `Ok` deleted, else the reply for the failure
    /// (an `Expiry` asker hears it as `Failed`, `NoSuchRoom` for
    /// `not_found`).
    fn answer(self, outcome: &Result<(), RoomReply>) {
        match (self, outcome) {
            (DeleteAsker::Request(reply), Ok(())) => answer(reply, RoomReply::Done),
            (DeleteAsker::Request(reply), Err(error)) => answer(reply, error.clone()),
            (DeleteAsker::Expiry(port), outcome) => {
                let expiry = match outcome {
                    Ok(()) => Expiry::Deleted,
                    Err(RoomReply::Error {
                        code: ErrorCode::NotFound,
                        ..
                    }) => Expiry::NoSuchRoom,
                    Err(other) => Expiry::Failed(format!("{other:?}")),
                };
                let _ = port.send(expiry);
            }
        }
    }
}

/// A deletion asked for while the room is live: it starts once nothing is
/// in flight. Requests that come after it wait here.
struct DeleteWanted {
    askers: Vec<DeleteAsker>,
    parked: Vec<(RoomRequest, Reply)>,
}

/// A deletion the store is carrying out.
struct Deleting {
    askers: Vec<DeleteAsker>,
    parked: Vec<(RoomRequest, Reply)>,
    /// The term the room's events were stamped with.
    term: u64,
    /// A drain asked for meanwhile (`Some`: the supervisor has taken the
    /// actor out of its map, and it stops once the deletion is done).
    drains: Option<Vec<RpcReplyPort<()>>>,
}

/// An op waiting for the next batch; `conn` and `reply` are `None` for ops
/// the room makes itself.
struct PendingOp {
    request: OpRequest,
    conn: Option<ConnRef>,
    reply: Option<Reply>,
}

struct InFlight {
    /// Which batch this is (see `RoomActorState::next_batch`).
    batch: u64,
    /// When it went to the store; past the commit timeout the actor gives
    /// up on it (see `on_tick`).
    sent_at: Instant,
    /// The seq of each new op, with the reply waiting for its ack.
    acks: Vec<(Seq, Option<Reply>)>,
    /// Ops refused by the room's rules (`not_found`, a stroke that has
    /// ended, nothing to undo...), answered only once the store confirmed
    /// that this actor's state was current: with the batch's commit, or
    /// with a look at the log's head when there is nothing to commit. A
    /// node that loaded the room while its previous owner still committed
    /// would otherwise refuse for good an op that the true state accepts.
    refusals: Vec<(Reply, RoomReply)>,
}

struct Live {
    record: RoomRecord,
    state: RoomState,
    /// This actor's ownership term for the room, stamped on its events and
    /// written with its batches.
    term: u64,
    /// The last durable seq. Equals `state.head()` whenever no batch is in
    /// flight.
    committed: Seq,
    /// The most recent committed ops, for resumes and gap fetches.
    tail: VecDeque<OpEvent>,
    in_flight: Option<InFlight>,
    next: VecDeque<PendingOp>,
    /// Joins that arrived while a batch was in flight.
    joins: Vec<(RoomRequest, Reply)>,
    /// Retries of ops still in flight: acked when their seq commits.
    duplicates: Vec<(Seq, Reply)>,
    /// Users the others were told had left while a connection of theirs
    /// may still be there (its gateway was declared dead, or it went
    /// silent): if it is put back, the others hear they are back.
    told_gone: HashSet<UserId>,
    /// Connections that left, so that a re-attach sent for one just before
    /// it left and arriving after its `Leave` does not put it back.
    left: LeftConns,
    snapshot_seq: Seq,
    snapshot_running: bool,
    snapshot_at: Instant,
    last_activity: Instant,
    /// Connections whose join asked for their user's open strokes to
    /// outlive a dropped connection (`resume_strokes`).
    resumers: HashSet<ConnRef>,
    /// Users gone from the room with strokes open, and when those strokes
    /// are ended for them unless they are back.
    orphan_deadlines: HashMap<UserId, Instant>,
    drain: Option<Vec<RpcReplyPort<()>>>,
    /// A deletion waiting for the batch in flight (and the ops that came
    /// before it) to commit.
    deletion: Option<DeleteWanted>,
    /// The change of name and members the store is writing; joins wait
    /// for it.
    updating: Option<Updating>,
    /// Changes that came while another was being written, in order.
    updates: VecDeque<(RoomRequest, Reply)>,
}

/// A change of the room's name and members on its way to the store.
struct Updating {
    /// The record once it is durable.
    record: RoomRecord,
    /// The users to take out of the room then.
    removed: Vec<UserId>,
    reply: Reply,
}

/// The 1,024 connections that left the room most recently: a
/// connection's id is never reused, and a late re-attach comes within a
/// request's round trip of the leave, so the recent ones are enough.
type LeftConns = crate::recent::Recent<ConnId, (), 1024>;

/// What loading a room found.
pub enum Load {
    Room(Box<LoadedRoom>),
    /// No such room (never created, or deleted).
    Missing,
    /// The room's log ends in the tombstone at `at`: its deletion began
    /// and did not finish (its owner died in between).
    Deleting {
        record: RoomRecord,
        at: Seq,
    },
}

/// A room as read from the store, with the writer of the last batch.
pub struct LoadedRoom {
    pub record: RoomRecord,
    pub state: RoomState,
    pub last_term: u64,
    /// The node that wrote the last op (`None` for an empty log).
    pub last_node: Option<NodeId>,
    /// Ops replayed on top of the latest snapshot.
    pub replayed: u64,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn answer(port: Reply, reply: RoomReply) {
    // The requester may have given up (timeout); nothing to do then.
    let _ = port.send(reply);
}

fn unavailable(reason: &str) -> RoomReply {
    RoomReply::Error {
        code: ErrorCode::Unavailable,
        message: reason.to_owned(),
    }
}

impl Actor for RoomActor {
    type Msg = RoomMsg;
    type State = RoomActorState;
    type Arguments = RoomArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RoomMsg>,
        args: RoomArgs,
    ) -> Result<RoomActorState, ActorProcessingErr> {
        let state = RoomActorState {
            room: args.room,
            ctx: args.ctx,
            supervisor: args.supervisor,
            backlog: args.backlog,
            next_batch: 0,
            phase: Phase::Loading {
                parked: Vec::new(),
                presence: None,
                expire: None,
            },
        };
        state.ctx.metrics.rooms_active.inc();
        state.start_load(&myself);
        myself.send_interval(state.ctx.config.tick, || RoomMsg::Tick);
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<RoomMsg>,
        state: &mut RoomActorState,
    ) -> Result<(), ActorProcessingErr> {
        state.ctx.metrics.rooms_active.dec();
        // Requests still in the mailbox die with it; keep the gauge honest.
        let left = state.backlog.swap(0, Ordering::Relaxed);
        state.ctx.metrics.mailbox_depth.dec_by(left as i64);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<RoomMsg>,
        message: RoomMsg,
        state: &mut RoomActorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RoomMsg::Request(request, reply) => {
                state.backlog.fetch_sub(1, Ordering::Relaxed);
                state.ctx.metrics.mailbox_depth.dec();
                state.on_request(&myself, request, reply);
            }
            RoomMsg::Loaded(result) => state.on_loaded(&myself, *result),
            RoomMsg::Committed(batch, events, result) => {
                state.on_committed(&myself, batch, events, result)
            }
            RoomMsg::SnapshotWritten(seq, result) => {
                state.on_snapshot_written(&myself, seq, result)
            }
            RoomMsg::Tick => state.on_tick(&myself),
            RoomMsg::GatewayGone(gateway) => state.on_gateway_gone(&myself, &gateway),
            RoomMsg::Drain(reply) => state.on_drain(&myself, reply),
            RoomMsg::Expire(port) => state.on_expire(port),
            RoomMsg::DeleteDone(result) => state.on_deleted(&myself, result),
            RoomMsg::UpdateDone(result) => state.on_updated(&myself, result),
        }
        Ok(())
    }
}

// === impl RoomActorState: loading ===

impl RoomActorState {
    fn start_load(&self, myself: &ActorRef<RoomMsg>) {
        let store = self.ctx.store.clone();
        let room = self.room.clone();
        let myself = myself.clone();
        tokio::spawn(async move {
            let result = match load_room_replaying(store.as_ref(), &room).await {
                Ok(Found::Room(record, state, replayed)) => {
                    let state = *state;
                    let floor = record.floor;
                    last_writer(store.as_ref(), &room, floor, state.head())
                        .await
                        .map(|writer| {
                            Load::Room(Box::new(LoadedRoom {
                                record,
                                state,
                                last_term: writer.as_ref().map_or(0, |w| w.term),
                                last_node: writer.map(|w| w.node),
                                replayed,
                            }))
                        })
                }
                Ok(Found::Missing) => Ok(Load::Missing),
                Ok(Found::Deleting(record, at)) => Ok(Load::Deleting { record, at }),
                Err(e) => Err(e),
            };
            let _ = myself.send_message(RoomMsg::Loaded(Box::new(result)));
        });
    }

    fn on_loaded(&mut self, myself: &ActorRef<RoomMsg>, result: Result<Load, String>) {
        let placeholder = Phase::Closed(unavailable("the room is loading; retry"));
        let Phase::Loading {
            parked,
            presence,
            expire,
        } = std::mem::replace(&mut self.phase, placeholder)
        else {
            return;
        };
        match result {
            Ok(Load::Room(loaded)) => {
                let LoadedRoom {
                    record,
                    mut state,
                    last_term,
                    last_node,
                    replayed,
                } = *loaded;
                let config = &self.ctx.config;
                // Whoever had a stroke open under the last owner gets the
                // grace to come back and go on with it.
                let grace_ends = Instant::now() + config.orphan_grace;
                let orphan_deadlines = state
                    .users_with_open_strokes()
                    .into_iter()
                    .map(|user| (user, grace_ends))
                    .collect();
                let fresh = presence.is_none();
                if let Some(presence) = presence {
                    *state.presence_mut() = presence;
                }
                let head = state.head();
                let term = next_term(last_term);
                debug!(room = %self.room, head = %head, term, "room loaded");
                if fresh {
                    if let Some(kind) = takeover(last_node.as_ref(), &config.node, replayed) {
                        debug!(
                            room = %self.room, from = ?last_node, kind = kind.as_str(), replayed,
                            "room taken over from another node"
                        );
                        self.ctx.metrics.takeover(kind);
                    }
                    // Connections that were in the room under a previous
                    // owner come back (their gateways re-attach them).
                    let loaded = RoomEvent::Loaded {
                        room: self.room.clone(),
                    };
                    self.ctx.sink.emit(loaded, term);
                }
                self.phase = Phase::Live(Box::new(Live {
                    record,
                    state,
                    term,
                    committed: head,
                    tail: VecDeque::new(),
                    in_flight: None,
                    next: VecDeque::new(),
                    joins: Vec::new(),
                    duplicates: Vec::new(),
                    told_gone: HashSet::new(),
                    left: LeftConns::default(),
                    snapshot_seq: head,
                    snapshot_running: false,
                    snapshot_at: Instant::now(),
                    last_activity: Instant::now(),
                    resumers: HashSet::new(),
                    orphan_deadlines,
                    drain: None,
                    deletion: None,
                    updating: None,
                    updates: VecDeque::new(),
                }));
                // An expiry is the first request of its actor: it decides
                // before the ones that came while the room loaded.
                if let Some(port) = expire {
                    self.expire_live(myself, port);
                }
                for (request, reply) in parked {
                    self.on_request(myself, request, reply);
                }
            }
            Ok(Load::Missing) => {
                if let Some(port) = expire {
                    let _ = port.send(Expiry::NoSuchRoom);
                }
                let reply: RoomReply =
                    ProtocolError::not_found(format!("no room {}", self.room)).into();
                self.close(myself, reply, parked);
            }
            Ok(Load::Deleting { record, at }) => {
                info!(room = %self.room, at = %at, "finishing a deletion its owner did not finish");
                // A retried `Delete` is answered once the deletion is done.
                let (deletes, parked): (Vec<_>, Vec<_>) = parked
                    .into_iter()
                    .partition(|(request, _)| matches!(request, RoomRequest::Delete { .. }));
                let askers = expire
                    .map(DeleteAsker::Expiry)
                    .into_iter()
                    .chain(
                        deletes
                            .into_iter()
                            .map(|(_, reply)| DeleteAsker::Request(reply)),
                    )
                    .collect();
                let deleting = Deleting {
                    askers,
                    parked,
                    term: next_term(0),
                    drains: None,
                };
                self.start_deletion(myself, record.epoch, at, deleting);
            }
            Err(reason) => {
                warn!(room = %self.room, %reason, "room failed to load");
                if let Some(port) = expire {
                    let _ = port.send(Expiry::Failed(reason.clone()));
                }
                let reply = unavailable("the room could not be loaded; retry");
                self.close(myself, reply, parked);
            }
        }
    }
}

// === impl RoomActorState: deletion ===

impl RoomActorState {
    /// The supervisor asks to delete the room for its time to live.
    fn on_expire(&mut self, port: RpcReplyPort<Expiry>) {
        match &mut self.phase {
            Phase::Loading { expire, .. } => {
                if let Some(earlier) = expire.replace(port) {
                    let _ = earlier.send(Expiry::Failed("asked again".into()));
                }
            }
            // The supervisor asks only rooms that are not live; one that is
            // came back into use meanwhile.
            Phase::Live(_) => {
                let _ = port.send(Expiry::InUse);
            }
            Phase::Deleting(deleting) => deleting.askers.push(DeleteAsker::Expiry(port)),
            Phase::Closed(closed) => {
                let expiry = match closed {
                    RoomReply::Error {
                        code: ErrorCode::NotFound,
                        ..
                    } => Expiry::NoSuchRoom,
                    other => Expiry::Failed(format!("{other:?}")),
                };
                let _ = port.send(expiry);
            }
        }
    }

    /// Deletes the loaded room if it has a time to live (it may have been
    /// created again without one since it was due).
    fn expire_live(&mut self, myself: &ActorRef<RoomMsg>, port: RpcReplyPort<Expiry>) {
        let Phase::Live(live) = &mut self.phase else {
            let _ = port.send(Expiry::Failed("the room is not live".into()));
            return;
        };
        if live.record.ttl_secs.unwrap_or(0) == 0 {
            let _ = port.send(Expiry::NoTtl);
            return;
        }
        match &mut live.deletion {
            Some(wanted) => wanted.askers.push(DeleteAsker::Expiry(port)),
            None => {
                live.deletion = Some(DeleteWanted {
                    askers: vec![DeleteAsker::Expiry(port)],
                    parked: Vec::new(),
                });
            }
        }
        self.pump(myself);
    }

    /// Starts a wanted deletion once nothing is in flight: the ops that
    /// came before it are committed (and acked) by then, the ones after it
    /// wait. Returns whether it started.
    fn maybe_delete(&mut self, myself: &ActorRef<RoomMsg>) -> bool {
        let Phase::Live(live) = &self.phase else {
            return false;
        };
        if live.deletion.is_none()
            || live.in_flight.is_some()
            || !live.next.is_empty()
            || live.snapshot_running
            || live.updating.is_some()
            || !live.updates.is_empty()
        {
            return false;
        }
        let deleting = Phase::Closed(unavailable("the room is being deleted; retry"));
        let Phase::Live(mut live) = std::mem::replace(&mut self.phase, deleting) else {
            return false;
        };
        let Some(wanted) = live.deletion.take() else {
            return false;
        };
        let deleting = Deleting {
            askers: wanted.askers,
            parked: wanted.parked,
            term: live.term,
            drains: live.drain.take(),
        };
        self.start_deletion(
            myself,
            live.record.epoch.clone(),
            live.committed.next(),
            deleting,
        );
        true
    }

    /// Has the store delete the room, with its tombstone at `at` (see
    /// `Store::delete_room`); the answer comes back as `DeleteDone`.
    fn start_deletion(
        &mut self,
        myself: &ActorRef<RoomMsg>,
        epoch: collab_protocol::Epoch,
        at: Seq,
        deleting: Deleting,
    ) {
        let deletion = Deletion {
            epoch,
            at,
            writer: Writer {
                node: self.ctx.config.node.clone(),
                term: deleting.term,
            },
        };
        debug!(room = %self.room, at = %at, "deleting the room");
        let store = self.ctx.store.clone();
        let room = self.room.clone();
        let myself = myself.clone();
        tokio::spawn(async move {
            let result = store.delete_room(&room, &deletion).await;
            let _ = myself.send_message(RoomMsg::DeleteDone(result));
        });
        self.phase = Phase::Deleting(Box::new(deleting));
    }

    fn on_deleted(&mut self, myself: &ActorRef<RoomMsg>, result: Result<(), StoreError>) {
        let not_found = || -> RoomReply {
            ProtocolError::not_found(format!("room {} was deleted", self.room)).into()
        };
        let closing = Phase::Closed(not_found());
        let Phase::Deleting(deleting) = std::mem::replace(&mut self.phase, closing) else {
            return;
        };
        let Deleting {
            askers,
            parked,
            term,
            drains,
        } = *deleting;
        let (outcome, closed) = match result {
            Ok(()) => {
                info!(room = %self.room, "room deleted");
                // Every gateway with members here tells them and drops them.
                let deleted = RoomEvent::Deleted {
                    room: self.room.clone(),
                };
                self.ctx.sink.emit(deleted, term);
                self.ctx.usage.deleted(&self.room);
                (Ok(()), not_found())
            }
            Err(StoreError::Conflict(reason)) => {
                self.ctx.metrics.fenced.inc();
                error!(room = %self.room, %reason, "another owner wrote this room; not deleted here");
                let moved = unavailable("the room moved to another node; retry");
                (Err(moved.clone()), moved)
            }
            Err(StoreError::NotFound(_)) => (Err(not_found()), not_found()),
            Err(e) => {
                warn!(room = %self.room, error = %e, "room deletion failed");
                let failed = unavailable("the room could not be deleted; retry");
                (Err(failed.clone()), failed)
            }
        };
        for asker in askers {
            asker.answer(&outcome);
        }
        for (_, reply) in parked {
            answer(reply, closed.clone());
        }
        match drains {
            // Taken out of the supervisor's map already: stop now.
            Some(drains) => stop_drained(myself, drains, "deleted"),
            None => self.close(myself, closed, Vec::new()),
        }
    }
}

/// The term of a new owner of a room whose last batch was written in
/// `last_term`: above it, and above every term handed out before on this
/// clock (milliseconds since the Unix epoch), so a later owner always has a
/// higher term even when the previous one never wrote.
fn next_term(last_term: u64) -> u64 {
    u64::try_from(now_ms()).unwrap_or(0).max(last_term + 1)
}

/// How this node came to hold a room whose last op `last_node` wrote, with
/// `replayed` ops on top of its latest snapshot: `None` when no other node
/// wrote it last (a new room, or this node's own).
fn takeover(last_node: Option<&NodeId>, this_node: &NodeId, replayed: u64) -> Option<Takeover> {
    match last_node {
        Some(last) if last != this_node => Some(if replayed == 0 {
            Takeover::Handoff
        } else {
            Takeover::Failover
        }),
        _ => None,
    }
}

/// The writer of the last op up to `head` (`None` for a room without ops:
/// at its floor, the row is a deleted room's tombstone).
async fn last_writer(
    store: &dyn Store,
    room: &RoomId,
    floor: Seq,
    head: Seq,
) -> Result<Option<Writer>, String> {
    if head <= floor {
        return Ok(None);
    }
    let last = store
        .read_log(room, Seq(head.get() - 1), 1)
        .await
        .map_err(|e| e.to_string())?;
    Ok(last.into_iter().next().map(|logged| logged.writer))
}

/// Reads a room: its record, its latest snapshot and every op after it,
/// replayed. `None` when there is no such room (or it is being deleted).
pub async fn load_room(
    store: &dyn Store,
    room: &RoomId,
) -> Result<Option<(RoomRecord, RoomState)>, String> {
    Ok(match load_room_replaying(store, room).await? {
        Found::Room(record, state, _) => Some((record, *state)),
        Found::Missing | Found::Deleting(..) => None,
    })
}

/// What [`load_room_replaying`] found.
enum Found {
    /// The room, and how many ops were replayed after its snapshot.
    Room(RoomRecord, Box<RoomState>, u64),
    Missing,
    /// The room, whose log ends in a tombstone at this seq.
    Deleting(RoomRecord, Seq),
}

/// [`load_room`], and how many ops were replayed after the snapshot.
async fn load_room_replaying(store: &dyn Store, room: &RoomId) -> Result<Found, String> {
    let Some(record) = store.room(room).await.map_err(|e| e.to_string())? else {
        // A deletion cut short after the room disappeared left rows
        // behind: whoever meets the room next removes them.
        if let Err(e) = store.finish_deletion(room).await {
            warn!(%room, error = %e, "could not finish a room's deletion");
        }
        return Ok(Found::Missing);
    };
    let mut state = match store
        .latest_snapshot(room)
        .await
        .map_err(|e| e.to_string())?
    {
        // One at or below the floor is a deleted room's, written by an
        // owner that did not know of the deletion.
        Some(snapshot) if snapshot.seq > record.floor => {
            RoomState::restore(room, &snapshot.data).map_err(|e| e.to_string())?
        }
        _ => RoomState::starting_after(
            RoomMeta {
                id: record.id.clone(),
                kind: record.kind,
                epoch: record.epoch.clone(),
            },
            record.floor,
        ),
    };
    let mut replayed = 0;
    loop {
        let ops = match store.read_ops(room, state.head(), 4096).await {
            Ok(ops) => ops,
            Err(StoreError::RoomDeleted(at)) => return Ok(Found::Deleting(record, at)),
            Err(e) => return Err(e.to_string()),
        };
        if ops.is_empty() {
            break;
        }
        for op in &ops {
            state.replay(op).map_err(|e| e.to_string())?;
        }
        replayed += ops.len() as u64;
    }
    // A deletion that went on while this read the log may have removed
    // rows under it (the reader then saw a log that ends early): the
    // record, gone by then, tells.
    match store.room(room).await.map_err(|e| e.to_string())? {
        Some(now) if now.epoch == record.epoch => {
            Ok(Found::Room(record, Box::new(state), replayed))
        }
        _ => Ok(Found::Missing),
    }
}

// === impl RoomActorState: requests ===

impl RoomActorState {
    fn on_request(&mut self, myself: &ActorRef<RoomMsg>, request: RoomRequest, reply: Reply) {
        let live = match &mut self.phase {
            Phase::Loading { parked, .. } => {
                parked.push((request, reply));
                return;
            }
            Phase::Closed(closed) => {
                answer(reply, closed.clone());
                return;
            }
            Phase::Deleting(deleting) => {
                match request {
                    RoomRequest::Delete { .. } => {
                        deleting.askers.push(DeleteAsker::Request(reply));
                    }
                    // Nothing to leave once it is gone.
                    RoomRequest::Leave { .. } | RoomRequest::Away { .. } => {
                        answer(reply, RoomReply::Done)
                    }
                    request => deleting.parked.push((request, reply)),
                }
                return;
            }
            Phase::Live(live) => live,
        };
        if let RoomRequest::Inspect { .. } = request {
            // Before the activity stamp: an operator watching a room does
            // not keep it from going idle.
            let waiting = self.backlog.load(Ordering::Relaxed);
            answer(
                reply,
                RoomReply::Inspected(live.inspection(&self.ctx, waiting)),
            );
            return;
        }
        live.last_activity = Instant::now();
        if live.drain.is_some() {
            answer(reply, unavailable("the room is moving; retry"));
            return;
        }
        if let Some(wanted) = &mut live.deletion {
            // Came after the `Delete`: not for this room any more.
            match request {
                RoomRequest::Delete { .. } => wanted.askers.push(DeleteAsker::Request(reply)),
                RoomRequest::Leave { .. } | RoomRequest::Away { .. } => {
                    answer(reply, RoomReply::Done)
                }
                RoomRequest::Fetch { after, limit, .. } => {
                    live.fetch(&self.ctx, after, limit as usize, reply);
                }
                request => wanted.parked.push((request, reply)),
            }
            return;
        }
        match request {
            RoomRequest::Delete { epoch, .. } => {
                if epoch.is_some_and(|epoch| epoch != live.record.epoch) {
                    let gone = ProtocolError::not_found(format!(
                        "room {} is not the one of that epoch any more",
                        self.room
                    ));
                    answer(reply, gone.into());
                    return;
                }
                live.deletion = Some(DeleteWanted {
                    askers: vec![DeleteAsker::Request(reply)],
                    parked: Vec::new(),
                });
                // Commits what came before it, then deletes.
                self.pump(myself);
            }
            RoomRequest::Join { .. } => {
                if live.in_flight.is_some() || live.updating.is_some() {
                    live.joins.push((request, reply));
                } else {
                    live.answer_join(&self.ctx, request, reply);
                }
            }
            RoomRequest::Attach {
                room,
                conn,
                user,
                resume_strokes,
            } => {
                live.attach(&self.ctx, room, conn, user, resume_strokes, reply);
            }
            RoomRequest::Leave { conn, dropped, .. } => {
                let ts = now_ms();
                live.leave(&self.ctx, &conn, dropped, ts);
                answer(reply, RoomReply::Done);
                self.pump(myself);
            }
            RoomRequest::Away { conn, .. } => {
                live.away(&self.ctx, &conn, now_ms());
                answer(reply, RoomReply::Done);
                self.pump(myself);
            }
            RoomRequest::Op {
                conn,
                user,
                access,
                cid,
                op,
                ..
            } => {
                live.next.push_back(PendingOp {
                    conn: Some(conn),
                    request: OpRequest {
                        user,
                        cid: Some(cid),
                        op,
                        access,
                        ts: now_ms(),
                    },
                    reply: Some(reply),
                });
                self.pump(myself);
            }
            // A backend's op: no connection, so no presence to ask; the
            // gateway checked the token's `service` scope.
            RoomRequest::Publish { user, cid, op, .. } => {
                live.next.push_back(PendingOp {
                    conn: None,
                    request: OpRequest {
                        user,
                        cid: Some(cid),
                        op,
                        access: Access::Write,
                        ts: now_ms(),
                    },
                    reply: Some(reply),
                });
                self.pump(myself);
            }
            RoomRequest::Fetch { after, limit, .. } => {
                live.fetch(&self.ctx, after, limit as usize, reply);
            }
            RoomRequest::Update { .. } => {
                live.updates.push_back((request, reply));
                self.start_update(myself);
            }
            // Answered above, before the activity stamp.
            RoomRequest::Inspect { .. } => {}
        }
    }

    /// Starts the next batch if none is in flight: first the joins that
    /// waited (the state is exactly the committed one now), then every
    /// waiting op up to the batch limit.
    fn pump(&mut self, myself: &ActorRef<RoomMsg>) {
        let Phase::Live(live) = &mut self.phase else {
            return;
        };
        if live.in_flight.is_some() {
            return;
        }
        // Joins wait for a change of members being written, to be checked
        // against it.
        if live.updating.is_none() {
            for (request, reply) in std::mem::take(&mut live.joins) {
                live.answer_join(&self.ctx, request, reply);
            }
        }
        let config = &self.ctx.config;
        let mut events = Vec::new();
        let mut acks = Vec::new();
        let mut refusals = Vec::new();
        while events.len() < config.max_batch {
            let Some(pending) = live.next.pop_front() else {
                break;
            };
            let cid = pending.request.cid.clone();
            // Only members send ops; a retry of an op already applied is
            // re-acked before any other check, joined or not.
            let joined = pending
                .conn
                .as_ref()
                .is_none_or(|conn| live.state.presence().contains(conn));
            if !joined
                && live
                    .state
                    .duplicate_of(&pending.request.user, cid.as_ref())
                    .is_none()
            {
                if let Some(reply) = pending.reply {
                    answer(reply, RoomReply::NotJoined);
                }
                continue;
            }
            match live.state.apply(pending.request, &config.limits) {
                Ok(Applied::New(event)) => {
                    acks.push((event.seq, pending.reply));
                    events.push(event);
                }
                Ok(Applied::Duplicate(seq)) => match pending.reply {
                    Some(reply) if seq <= live.committed => answer(reply, RoomReply::Ack { seq }),
                    Some(reply) => live.duplicates.push((seq, reply)),
                    None => {}
                },
                Err(error) => {
                    debug!(room = %self.room, code = %error.code, cid = ?cid.as_ref().map(Cid::as_str), "op refused");
                    if let Some(reply) = pending.reply {
                        refusals.push((reply, error.into()));
                    }
                }
            }
        }
        if events.is_empty() && refusals.is_empty() {
            if self.maybe_delete(myself) {
                return;
            }
            if let Phase::Live(live) = &self.phase
                && live.drain.is_some()
            {
                self.finish_drain(myself);
            }
            return;
        }
        let batch = self.next_batch;
        self.next_batch += 1;
        live.in_flight = Some(InFlight {
            batch,
            sent_at: Instant::now(),
            acks,
            refusals,
        });
        if events.is_empty() {
            // Only refusals: confirm that nobody else has written the room
            // since this actor's last commit before answering them.
            let store = self.ctx.store.clone();
            let room = self.room.clone();
            let committed = live.committed;
            let myself = myself.clone();
            tokio::spawn(async move {
                let result = match store.head(&room).await {
                    Ok(head) if head == committed => Ok(()),
                    Ok(head) => Err(StoreError::Conflict(format!(
                        "the log's head is {head}, this owner's {committed}"
                    ))),
                    Err(e) => Err(e),
                };
                let _ = myself.send_message(RoomMsg::Committed(batch, Vec::new(), result));
            });
            return;
        }
        let writer = Writer {
            node: config.node.clone(),
            term: live.term,
        };
        let myself = myself.clone();
        let metrics = self.ctx.metrics.clone();
        metrics.batch_size.observe(events.len() as f64);
        let started = Instant::now();
        let first = events[0].seq;
        // The store answers straight into the mailbox: no task of ours
        // waits in between (see `Store::append_then`).
        let done: AppendDone = Box::new(move |events, result| {
            metrics
                .commit_latency
                .observe(started.elapsed().as_secs_f64());
            let _ = myself.send_message(RoomMsg::Committed(batch, events, result));
        });
        self.ctx
            .store
            .clone()
            .append_then(self.room.clone(), first, events, writer, done);
    }

    fn on_committed(
        &mut self,
        myself: &ActorRef<RoomMsg>,
        batch: u64,
        events: Vec<OpEvent>,
        result: Result<(), StoreError>,
    ) {
        let Phase::Live(live) = &mut self.phase else {
            return;
        };
        // An answer for a batch given up on is late news: the room was
        // rebuilt from the store since.
        if live.in_flight.as_ref().is_none_or(|f| f.batch != batch) {
            return;
        }
        let Some(in_flight) = live.in_flight.take() else {
            return;
        };
        match result {
            Ok(()) => {
                let config = &self.ctx.config;
                for event in events {
                    live.committed = event.seq;
                    live.tail.push_back(event.clone());
                    if live.tail.len() > config.tail_len {
                        live.tail.pop_front();
                    }
                    self.ctx.sink.emit(RoomEvent::Op(event), live.term);
                }
                for (seq, reply) in in_flight.acks {
                    if let Some(reply) = reply {
                        answer(reply, RoomReply::Ack { seq });
                    }
                }
                for (reply, refusal) in in_flight.refusals {
                    answer(reply, refusal);
                }
                let committed = live.committed;
                let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut live.duplicates)
                    .into_iter()
                    .partition(|(seq, _)| *seq <= committed);
                live.duplicates = waiting;
                for (seq, reply) in due {
                    answer(reply, RoomReply::Ack { seq });
                }
                if committed.get() - live.snapshot_seq.get() >= config.snapshot_every_ops {
                    self.start_snapshot(myself);
                }
                self.pump(myself);
            }
            Err(StoreError::Conflict(reason)) => {
                self.ctx.metrics.fenced.inc();
                error!(room = %self.room, %reason, "another owner wrote this room; stopping");
                let moved = unavailable("the room moved to another node; retry");
                let mut live =
                    match std::mem::replace(&mut self.phase, Phase::Closed(moved.clone())) {
                        Phase::Live(live) => live,
                        _ => return,
                    };
                let drains = live.drain.take();
                fail_all(*live, in_flight, "the room moved to another node; retry");
                match drains {
                    // The supervisor has taken this actor out of its map
                    // already and waits for it to stop: asking it to retire
                    // again would go unheard.
                    Some(drains) => stop_drained(myself, drains, "fenced"),
                    None => self.close(myself, moved, Vec::new()),
                }
            }
            Err(e) => {
                self.ctx.metrics.commits_failed.inc();
                warn!(room = %self.room, error = %e, "commit failed; rebuilding from the store");
                let rebuilding = Phase::Closed(unavailable("the room is rebuilding; retry"));
                let live = match std::mem::replace(&mut self.phase, rebuilding) {
                    Phase::Live(live) => live,
                    _ => return,
                };
                let mut live = *live;
                let presence = std::mem::take(live.state.presence_mut());
                let joins = std::mem::take(&mut live.joins);
                let drains = live.drain.take();
                fail_all(
                    live,
                    in_flight,
                    "the store did not confirm; retry with the same cid",
                );
                if let Some(drains) = drains {
                    // Stopping was asked for: the log holds whatever did
                    // commit, and the room's next actor loads it.
                    for (_, reply) in joins {
                        answer(reply, unavailable("the room is moving; retry"));
                    }
                    stop_drained(myself, drains, "drained after a failed commit");
                    return;
                }
                self.phase = Phase::Loading {
                    parked: joins,
                    presence: Some(presence),
                    expire: None,
                };
                self.start_load(myself);
            }
        }
    }
}

/// Tells whoever asked for the drain that it is done, and stops.
fn stop_drained(myself: &ActorRef<RoomMsg>, drains: Vec<RpcReplyPort<()>>, reason: &str) {
    for port in drains {
        let _ = port.send(());
    }
    myself.stop(Some(reason.into()));
}

/// Answers `unavailable` to every op the room was holding (and to a
/// deletion waiting for them, and what waited behind it).
fn fail_all(mut live: Live, in_flight: InFlight, reason: &str) {
    if let Some(wanted) = live.deletion.take() {
        let failed = unavailable(reason);
        for asker in wanted.askers {
            asker.answer(&Err(failed.clone()));
        }
        for (_, reply) in wanted.parked {
            answer(reply, failed.clone());
        }
    }
    let replies = in_flight
        .acks
        .into_iter()
        .filter_map(|(_, reply)| reply)
        .chain(in_flight.refusals.into_iter().map(|(reply, _)| reply))
        .chain(live.next.into_iter().filter_map(|p| p.reply))
        .chain(live.duplicates.into_iter().map(|(_, reply)| reply))
        .chain(live.joins.into_iter().map(|(_, reply)| reply))
        .chain(live.updating.map(|updating| updating.reply))
        .chain(live.updates.into_iter().map(|(_, reply)| reply));
    for reply in replies {
        answer(reply, unavailable(reason));
    }
}

// === impl Live: joins, leaves, fetches ===

impl Live {
    /// The room as an operator sees it; `waiting` requests are in the
    /// mailbox behind this one.
    fn inspection(&self, ctx: &RoomContext, waiting: usize) -> RoomInspection {
        let mut members: Vec<RoomMember> = self
            .state
            .presence()
            .connections()
            .map(|(conn, user)| RoomMember {
                user: user.id.clone(),
                name: user.name.clone(),
                conn: conn.conn.clone(),
                gateway: conn.gateway.clone(),
            })
            .collect();
        members.sort();
        RoomInspection {
            node: Some(ctx.config.node.clone()),
            live: true,
            term: Some(self.term),
            head: Some(self.committed),
            members,
            mailbox_depth: waiting as u64,
            last_commit: self.tail.back().map(|op| LastCommit {
                seq: op.seq,
                at: op.ts,
            }),
        }
    }

    /// Re-adds a connection the room forgot (see `RoomRequest::Attach`).
    fn attach(
        &mut self,
        ctx: &RoomContext,
        room: RoomId,
        conn: ConnRef,
        user: UserInfo,
        resume_strokes: bool,
        reply: Reply,
    ) {
        // A gateway re-attaches a member when the room's owner changed;
        // if the member left at that moment, the re-attach may come second.
        if self.left.contains(&conn.conn) {
            answer(reply, RoomReply::Done);
            return;
        }
        // The connection was in the room before it moved or restarted, and
        // nobody was told it left: putting it back tells nobody either,
        // unless its gateway had been declared dead.
        let announce = self.told_gone.contains(&user.id);
        match self.admit(ctx, &room, conn, user, announce, resume_strokes) {
            Ok(()) => answer(reply, RoomReply::Done),
            Err(refusal) => answer(reply, refusal.into()),
        }
    }

    /// Puts `conn` into the presence if `user` may be in the room, telling
    /// the others (if `announce`) when the user was not there yet.
    fn admit(
        &mut self,
        ctx: &RoomContext,
        room: &RoomId,
        conn: ConnRef,
        user: UserInfo,
        announce: bool,
        resume_strokes: bool,
    ) -> Result<(), ProtocolError> {
        if !self.record.admits(&user.id) {
            return Err(ProtocolError::forbidden("this room is private"));
        }
        if resume_strokes {
            self.resumers.insert(conn.clone());
        } else {
            self.resumers.remove(&conn);
        }
        if let Some(PresenceChange::Joined(info)) =
            self.state.presence_mut().join(conn.clone(), user)
        {
            self.told_gone.remove(&info.id);
            if !announce {
                return Ok(());
            }
            let joined = RoomEvent::Presence {
                room: room.clone(),
                event: PresenceEvent::Join,
                user: info,
                origin: Some(conn),
            };
            ctx.sink.emit(joined, self.term);
        }
        Ok(())
    }

    fn answer_join(&mut self, ctx: &RoomContext, request: RoomRequest, reply: Reply) {
        let RoomRequest::Join {
            room,
            conn,
            user,
            since,
            epoch,
            resume_strokes,
        } = request
        else {
            return;
        };
        // Joining again after a leave.
        self.left.remove(&conn.conn);
        if let Err(refusal) = self.admit(ctx, &room, conn, user, true, resume_strokes) {
            answer(reply, refusal.into());
            return;
        }
        let head = self.committed;
        let mut body = JoinedBody {
            room,
            kind: self.record.kind,
            epoch: self.record.epoch.clone(),
            head,
            presence: self.state.presence().list(),
            reset: false,
            state: None,
            ops: None,
        };
        // Seqs up to the floor are a deleted room's, whose id this one
        // took: whoever remembers one of them starts over.
        let since = since.filter(|since| *since >= self.record.floor.get());
        match plan_join(
            since,
            epoch.as_ref(),
            &self.record.epoch,
            head,
            ctx.config.limits.replay_limit,
        ) {
            JoinPlan::Reset => {
                body.reset = true;
                body.state = Some(self.state.view());
                answer(reply, RoomReply::Joined(body));
            }
            JoinPlan::Replay { since } => match self.tail_after(since, head) {
                Some(ops) => {
                    body.ops = Some(ops);
                    answer(reply, RoomReply::Joined(body));
                }
                None => {
                    let store = ctx.store.clone();
                    tokio::spawn(async move {
                        let result = read_range(store.as_ref(), &body.room, since, head).await;
                        match result {
                            Ok(ops) => {
                                body.ops = Some(ops);
                                answer(reply, RoomReply::Joined(body));
                            }
                            Err(e) => answer(reply, unavailable(&e.to_string())),
                        }
                    });
                }
            },
        }
    }

    /// The committed ops in `(after, up_to]` if the tail holds all of them.
    fn tail_after(&self, after: Seq, up_to: Seq) -> Option<Vec<OpEvent>> {
        if after >= up_to {
            return Some(Vec::new());
        }
        let first = self.tail.front()?.seq;
        if first.get() > after.get() + 1 {
            return None;
        }
        Some(
            self.tail
                .iter()
                .filter(|op| op.seq > after && op.seq <= up_to)
                .cloned()
                .collect(),
        )
    }

    fn fetch(&self, ctx: &RoomContext, after: Seq, limit: usize, reply: Reply) {
        let limit = limit.clamp(1, 4096);
        let up_to = Seq(self.committed.get().min(after.get() + limit as u64));
        if let Some(ops) = self.tail_after(after, up_to) {
            answer(reply, RoomReply::Ops { ops });
            return;
        }
        let store = ctx.store.clone();
        let room = self.record.id.clone();
        tokio::spawn(async move {
            match read_range(store.as_ref(), &room, after, up_to).await {
                Ok(ops) => answer(reply, RoomReply::Ops { ops }),
                Err(e) => answer(reply, unavailable(&e.to_string())),
            }
        });
    }

    /// A connection leaves. When it was its user's last one, everyone hears
    /// of it and the user's open strokes are ended for them: now, or after
    /// the grace if the connection dropped and had asked to resume its
    /// strokes.
    fn leave(&mut self, ctx: &RoomContext, conn: &ConnRef, dropped: bool, ts: i64) {
        // Even if not present (a re-attach may be on its way).
        self.left.insert(conn.conn.clone(), ());
        let resumes = self.resumers.remove(conn) && dropped;
        if let Some(PresenceChange::Left(info)) = self.state.presence_mut().leave(conn) {
            self.orphaned(ctx, &info.id, resumes, ts);
            let left = RoomEvent::Presence {
                room: self.record.id.clone(),
                event: PresenceEvent::Leave,
                user: info,
                origin: Some(conn.clone()),
            };
            ctx.sink.emit(left, self.term);
        }
    }

    /// A connection went silent: out of the presence as if it had dropped,
    /// but not counted as left, so that `Attach` puts it back (announced)
    /// when it is heard from again.
    fn away(&mut self, ctx: &RoomContext, conn: &ConnRef, ts: i64) {
        let resumes = self.resumers.contains(conn);
        if let Some(PresenceChange::Left(info)) = self.state.presence_mut().leave(conn) {
            self.told_gone.insert(info.id.clone());
            self.orphaned(ctx, &info.id, resumes, ts);
            let left = RoomEvent::Presence {
                room: self.record.id.clone(),
                event: PresenceEvent::Leave,
                user: info,
                origin: Some(conn.clone()),
            };
            ctx.sink.emit(left, self.term);
        }
    }

    /// `user`'s last connection is gone: their open strokes end now, or
    /// when the grace is over if they have not come back by then.
    fn orphaned(&mut self, ctx: &RoomContext, user: &UserId, resumes: bool, ts: i64) {
        if resumes {
            if !self.state.open_strokes_of(user).is_empty() {
                let ends = Instant::now() + ctx.config.orphan_grace;
                self.orphan_deadlines.insert(user.clone(), ends);
            }
        } else {
            self.end_orphans_of(user, ts);
        }
    }

    /// Ends the open strokes of users whose grace is over and who are not
    /// back; true if any were.
    fn end_overdue_orphans(&mut self) -> bool {
        let now = Instant::now();
        if !self.orphan_deadlines.values().any(|at| *at <= now) {
            return false;
        }
        let ts = now_ms();
        let mut overdue: Vec<UserId> = Vec::new();
        self.orphan_deadlines.retain(|user, at| {
            let due = *at <= now;
            if due {
                overdue.push(user.clone());
            }
            !due
        });
        overdue.sort();
        for user in overdue {
            if !self.state.presence().is_present(&user) {
                self.end_orphans_of(&user, ts);
            }
        }
        true
    }

    /// Takes every connection of `users` out of the room's presence (the
    /// others hear they left) and tells the gateways to drop them
    /// (`RoomEvent::Removed`).
    fn remove_users(&mut self, ctx: &RoomContext, users: &[UserId]) {
        if users.is_empty() {
            return;
        }
        let ts = now_ms();
        let conns: Vec<ConnRef> = self
            .state
            .presence()
            .connections()
            .filter(|(_, user)| users.contains(&user.id))
            .map(|(conn, _)| conn.clone())
            .collect();
        for conn in &conns {
            self.leave(ctx, conn, false, ts);
        }
        let removed = RoomEvent::Removed {
            room: self.record.id.clone(),
            users: users.to_vec(),
        };
        ctx.sink.emit(removed, self.term);
    }

    /// The room as `PATCH` answers it.
    fn updated(&self) -> RoomUpdated {
        RoomUpdated {
            id: self.record.id.clone(),
            kind: self.record.kind,
            name: self.record.name.clone(),
            epoch: self.record.epoch.clone(),
            created_by: self.record.created_by.clone(),
            members: self.record.members.clone(),
        }
    }

    fn end_orphans_of(&mut self, user: &UserId, ts: i64) {
        // Strokes already ending in a waiting op are left to it.
        for request in self.state.orphan_endings(user, ts) {
            self.next.push_back(PendingOp {
                request,
                conn: None,
                reply: None,
            });
        }
    }
}

/// Committed ops in `(after, up_to]`, read from the store in pages.
async fn read_range(
    store: &dyn Store,
    room: &RoomId,
    after: Seq,
    up_to: Seq,
) -> Result<Vec<OpEvent>, StoreError> {
    let mut ops = Vec::new();
    let mut cursor = after;
    while cursor < up_to {
        let want = (up_to.get() - cursor.get()).min(4096) as usize;
        let page = store.read_ops(room, cursor, want).await?;
        let Some(last) = page.last() else {
            break;
        };
        cursor = last.seq;
        ops.extend(page.into_iter().filter(|op| op.seq <= up_to));
    }
    Ok(ops)
}

// === impl RoomActorState: timers, snapshots, draining ===

impl RoomActorState {
    fn on_tick(&mut self, myself: &ActorRef<RoomMsg>) {
        let config = &self.ctx.config;
        let Phase::Live(live) = &mut self.phase else {
            return;
        };
        if let Some(in_flight) = &live.in_flight {
            if in_flight.sent_at.elapsed() >= config.commit_timeout {
                // Its outcome is unknown: like a failed commit, answer
                // `unavailable` and rebuild from what the store holds.
                let batch = in_flight.batch;
                let timed_out = Err(StoreError::Unavailable("commit timed out".into()));
                self.on_committed(myself, batch, Vec::new(), timed_out);
            }
            return;
        }
        if live.end_overdue_orphans() {
            self.pump(myself);
            return;
        }
        if live.committed > live.snapshot_seq && live.snapshot_at.elapsed() >= config.snapshot_every
        {
            self.start_snapshot(myself);
            return;
        }
        let idle = live.state.presence().is_empty()
            && live.next.is_empty()
            && live.joins.is_empty()
            && live.last_activity.elapsed() >= config.idle_after;
        if idle {
            self.retire(myself);
        }
    }

    /// Asks the supervisor to take this actor out of its map and drain it
    /// (without a supervisor, it stops now).
    fn retire(&self, myself: &ActorRef<RoomMsg>) {
        match &self.supervisor {
            Some(supervisor) => {
                let _ = supervisor
                    .send_message(SupervisorMsg::Retire(self.room.clone(), myself.get_id()));
            }
            None => myself.stop(Some("retired".into())),
        }
    }

    /// Stops serving: answers `reply` to `parked` and to every request
    /// until the drain, and asks to be retired.
    fn close(
        &mut self,
        myself: &ActorRef<RoomMsg>,
        reply: RoomReply,
        parked: Vec<(RoomRequest, Reply)>,
    ) {
        for (_, port) in parked {
            answer(port, reply.clone());
        }
        self.phase = Phase::Closed(reply);
        self.retire(myself);
    }

    /// Writes a snapshot of the committed state. Only called with no batch
    /// in flight, when the state holds nothing uncommitted.
    fn start_snapshot(&mut self, myself: &ActorRef<RoomMsg>) {
        let Phase::Live(live) = &mut self.phase else {
            return;
        };
        if live.snapshot_running || live.in_flight.is_some() || live.committed <= live.snapshot_seq
        {
            return;
        }
        live.snapshot_running = true;
        live.snapshot_at = Instant::now();
        let snapshot = collab_store::Snapshot {
            seq: live.committed,
            data: live.state.snapshot(),
        };
        let store = self.ctx.store.clone();
        let room = self.room.clone();
        let myself = myself.clone();
        tokio::spawn(async move {
            let seq = snapshot.seq;
            let result = store.put_snapshot(&room, &snapshot).await;
            let _ = myself.send_message(RoomMsg::SnapshotWritten(seq, result));
        });
    }

    fn on_snapshot_written(
        &mut self,
        myself: &ActorRef<RoomMsg>,
        seq: Seq,
        result: Result<(), StoreError>,
    ) {
        let Phase::Live(live) = &mut self.phase else {
            return;
        };
        live.snapshot_running = false;
        match result {
            Ok(()) => {
                self.ctx.metrics.snapshots.inc();
                live.snapshot_seq = live.snapshot_seq.max(seq);
                debug!(room = %self.room, seq = %seq, "snapshot written");
            }
            Err(e) => {
                // The log still has every op; the next snapshot will try
                // again. A draining room stops without one.
                warn!(room = %self.room, error = %e, "snapshot failed");
                if live.drain.is_some() {
                    live.snapshot_seq = live.committed;
                }
            }
        }
        if self.maybe_delete(myself) {
            return;
        }
        if let Phase::Live(live) = &self.phase
            && live.drain.is_some()
        {
            self.finish_drain(myself);
        }
    }

    fn on_gateway_gone(&mut self, myself: &ActorRef<RoomMsg>, gateway: &str) {
        let Phase::Live(live) = &mut self.phase else {
            return;
        };
        let ts = now_ms();
        // Users with a connection there that asked to resume its strokes.
        let mut resuming = HashSet::new();
        live.resumers.retain(|conn| {
            let gone = conn.gateway == gateway;
            if gone && let Some(user) = live.state.presence().user_of(conn) {
                resuming.insert(user.clone());
            }
            !gone
        });
        for change in live.state.presence_mut().leave_gateway(gateway) {
            if let PresenceChange::Left(info) = change {
                let resumes = resuming.contains(&info.id);
                live.orphaned(&self.ctx, &info.id, resumes, ts);
                live.told_gone.insert(info.id.clone());
                let left = RoomEvent::Presence {
                    room: self.room.clone(),
                    event: PresenceEvent::Leave,
                    user: info,
                    origin: None,
                };
                self.ctx.sink.emit(left, live.term);
            }
        }
        self.pump(myself);
    }

    fn on_drain(&mut self, myself: &ActorRef<RoomMsg>, reply: Option<RpcReplyPort<()>>) {
        match &mut self.phase {
            Phase::Live(live) => {
                live.drain.get_or_insert_with(Vec::new).extend(reply);
                if live.in_flight.is_none() {
                    self.finish_drain(myself);
                }
            }
            Phase::Loading { parked, expire, .. } => {
                for (_, port) in parked.drain(..) {
                    answer(port, unavailable("the room is moving; retry"));
                }
                if let Some(port) = expire.take() {
                    let _ = port.send(Expiry::NotOwner);
                }
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
                myself.stop(Some("drained".into()));
            }
            // The deletion finishes first (it cannot be handed to another
            // node half done; if this node dies, the next loader finishes
            // it), then the actor stops.
            Phase::Deleting(deleting) => {
                deleting.drains.get_or_insert_with(Vec::new).extend(reply);
            }
            Phase::Closed(_) => {
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
                myself.stop(Some("closed".into()));
            }
        }
    }

    /// Drain, once nothing is in flight: snapshot if anything changed, then
    /// stop. Ops still waiting are committed first by `pump`.
    fn finish_drain(&mut self, myself: &ActorRef<RoomMsg>) {
        let Phase::Live(live) = &mut self.phase else {
            return;
        };
        if live.in_flight.is_some()
            || live.snapshot_running
            || live.deletion.is_some()
            || live.updating.is_some()
            || !live.updates.is_empty()
        {
            return;
        }
        if !live.next.is_empty() {
            self.pump(myself);
            return;
        }
        if live.committed > live.snapshot_seq {
            self.start_snapshot(myself);
            return;
        }
        for port in live.drain.take().unwrap_or_default() {
            let _ = port.send(());
        }
        info!(room = %self.room, head = %live.committed, "room stopped");
        // Unused from now on, as far as this node knows.
        if let Some(ttl) = live.record.ttl_secs.filter(|ttl| *ttl > 0) {
            self.ctx
                .usage
                .stopped(&self.room, std::time::Duration::from_secs(ttl));
        }
        myself.stop(Some("drained".into()));
    }
}

// === impl RoomActorState: name and members ===

impl RoomActorState {
    /// Starts the next waiting change of name and members unless one is
    /// being written. A change that writes nothing (the same name, members
    /// removed who were not members) is answered at once, its removals
    /// done all the same: a kick is idempotent.
    fn start_update(&mut self, myself: &ActorRef<RoomMsg>) {
        let Phase::Live(live) = &mut self.phase else {
            return;
        };
        while live.updating.is_none() {
            let Some((request, reply)) = live.updates.pop_front() else {
                return;
            };
            let RoomRequest::Update {
                epoch,
                name,
                add,
                remove,
                ..
            } = request
            else {
                continue;
            };
            if epoch.is_some_and(|epoch| epoch != live.record.epoch) {
                let gone = ProtocolError::not_found(format!(
                    "room {} is not the one of that epoch any more",
                    self.room
                ));
                answer(reply, gone.into());
                continue;
            }
            let (record, removed) = match planned_update(&live.record, name, add, remove) {
                Ok(planned) => planned,
                Err(refusal) => {
                    answer(reply, refusal.into());
                    continue;
                }
            };
            if record == live.record {
                live.remove_users(&self.ctx, &removed);
                answer(reply, RoomReply::Updated(live.updated()));
                continue;
            }
            debug!(room = %self.room, removed = removed.len(), "changing the room's name or members");
            let store = self.ctx.store.clone();
            let update = record.clone();
            let me = myself.clone();
            tokio::spawn(async move {
                let result = store.update_room(&update).await;
                let _ = me.send_message(RoomMsg::UpdateDone(result));
            });
            live.updating = Some(Updating {
                record,
                removed,
                reply,
            });
        }
    }

    fn on_updated(&mut self, myself: &ActorRef<RoomMsg>, result: Result<(), StoreError>) {
        let Phase::Live(live) = &mut self.phase else {
            return;
        };
        let Some(updating) = live.updating.take() else {
            return;
        };
        match result {
            Ok(()) => {
                info!(room = %self.room, removed = updating.removed.len(), "room's name or members changed");
                live.record = updating.record;
                live.remove_users(&self.ctx, &updating.removed);
                answer(updating.reply, RoomReply::Updated(live.updated()));
            }
            Err(StoreError::NotFound(_)) => {
                let gone = ProtocolError::not_found(format!("no room {}", self.room));
                answer(updating.reply, gone.into());
            }
            Err(StoreError::InvalidBatch(reason)) => {
                answer(updating.reply, ProtocolError::bad_request(reason).into());
            }
            Err(e) => {
                warn!(room = %self.room, error = %e, "changing the room's name or members failed");
                answer(
                    updating.reply,
                    unavailable("the room could not be changed; retry"),
                );
            }
        }
        self.start_update(myself);
        self.pump(myself);
    }
}

/// The record `record` becomes with `name`, `add` and `remove`, and the
/// users to take out of the room (each of `remove` once). Refused: an
/// empty name, members changed in a public room, the creator removed.
fn planned_update(
    record: &RoomRecord,
    name: Option<String>,
    add: Vec<UserId>,
    remove: Vec<UserId>,
) -> Result<(RoomRecord, Vec<UserId>), ProtocolError> {
    let mut updated = record.clone();
    if let Some(name) = name {
        if name.trim().is_empty() {
            return Err(ProtocolError::bad_request("name must not be empty"));
        }
        updated.name = name;
    }
    let mut removed: Vec<UserId> = Vec::with_capacity(remove.len());
    for user in remove {
        if !removed.contains(&user) {
            removed.push(user);
        }
    }
    if add.is_empty() && removed.is_empty() {
        return Ok((updated, removed));
    }
    let Some(members) = &mut updated.members else {
        return Err(ProtocolError::bad_request(format!(
            "room {} is public: anyone may join it, so it has no members to change",
            record.id
        )));
    };
    if removed.contains(&record.created_by) {
        return Err(ProtocolError::bad_request(format!(
            "{} created room {} and is always a member of it",
            record.created_by, record.id
        )));
    }
    members.retain(|member| !removed.contains(member));
    for user in add {
        if !removed.contains(&user) && !members.contains(&user) {
            members.push(user);
        }
    }
    Ok((updated, removed))
}
