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

mod delete;
mod load;
mod presence;
mod requests;
mod timers;
mod update;

pub use load::load_room;
// Shared by the submodules (each takes `super::*`).
use requests::stop_drained;

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
