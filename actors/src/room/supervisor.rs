//! The room supervisor: one per room node. It holds a typed map of the
//! node's live rooms, starts a room's actor on first use, restarts a failed
//! one from the store (on its next request), and stops idle rooms after
//! they snapshot. Requests for a room that is stopping wait for it to stop
//! and then go to its successor, so two actors never hold one room.
//!
//! In a cluster the supervisor is told which rooms this node owns
//! ([`SupervisorMsg::Placement`]): it hands off every room it no longer owns
//! (the actor finishes its batch, snapshots and stops) and answers requests
//! for rooms it does not own with `unavailable`, so a gateway with an older
//! view of the cluster retries and reaches the new owner.
//!
//! Room expiry asks it to delete a room that went unused for its time to
//! live ([`SupervisorMsg::Expire`]): only a room that is not live here (a
//! live room is in use), and only through the room's own actor, which
//! deletes as it would for a `Delete` request.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use collab_protocol::envelope::{RoomInspection, RoomReply, RoomRequest};
use collab_protocol::{ErrorCode, RoomId};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tracing::{info, warn};

use super::actor::{Reply, RoomActor, RoomArgs, RoomContext, RoomMsg};
use super::usage::Expiry;

/// Which rooms this node owns.
pub type Ownership = Arc<dyn Fn(&RoomId) -> bool + Send + Sync>;

pub enum SupervisorMsg {
    /// Send a request to its room, starting the room if needed.
    Route(RoomRequest, Reply),
    /// A room actor asks to be stopped (idle, or it cannot serve its room):
    /// take it out of the map, drain it, and send later requests for the
    /// room to its successor once it has stopped.
    Retire(RoomId, ActorId),
    /// A gateway died: its connections leave every room.
    GatewayGone(String),
    /// Drain every room (snapshot and stop); answer when all have. Later
    /// requests get `unavailable`: the node is going away.
    DrainAll(Duration, RpcReplyPort<()>),
    /// The cluster changed: from now on this node serves only the rooms
    /// `owns` accepts, and hands off the others.
    Placement(Ownership),
    /// How many rooms are live.
    ActiveRooms(RpcReplyPort<usize>),
    /// Delete a room whose time to live passed unused, if this node owns
    /// it and it is not live here (a live room is in use; its actor records
    /// its use when it stops). Answered with how it ended.
    Expire(RoomId, RpcReplyPort<Expiry>),
}

struct LiveRoom {
    actor: ActorRef<RoomMsg>,
    backlog: Arc<AtomicUsize>,
}

pub struct RoomSupervisor;

pub struct SupervisorState {
    ctx: Arc<RoomContext>,
    rooms: HashMap<RoomId, LiveRoom>,
    /// Rooms whose actor is stopping, with the requests that wait for it.
    stopping: HashMap<RoomId, Vec<(RoomRequest, Reply)>>,
    names: HashMap<ActorId, RoomId>,
    /// `None`: every room is this node's (a single-process server).
    owns: Option<Ownership>,
    draining: bool,
}

impl Actor for RoomSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = Arc<RoomContext>;

    async fn pre_start(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        ctx: Arc<RoomContext>,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        Ok(SupervisorState {
            ctx,
            rooms: HashMap::new(),
            stopping: HashMap::new(),
            names: HashMap::new(),
            owns: None,
            draining: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        message: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Route(request, reply) => state.route(&myself, request, reply).await,
            SupervisorMsg::Retire(room, id) => {
                let current = state.rooms.get(&room).map(|r| r.actor.get_id());
                if current == Some(id) {
                    state.retire(room);
                }
            }
            SupervisorMsg::Placement(owns) => {
                let moved: Vec<RoomId> = state
                    .rooms
                    .keys()
                    .filter(|room| !owns(room))
                    .cloned()
                    .collect();
                if !moved.is_empty() {
                    info!(
                        rooms = moved.len(),
                        "handing off rooms this node no longer owns"
                    );
                    state.ctx.metrics.handoffs.inc_by(moved.len() as u64);
                }
                for room in moved {
                    state.retire(room);
                }
                state.owns = Some(owns);
            }
            SupervisorMsg::GatewayGone(gateway) => {
                for live in state.rooms.values() {
                    let _ = live
                        .actor
                        .send_message(RoomMsg::GatewayGone(gateway.clone()));
                }
            }
            SupervisorMsg::DrainAll(timeout, reply) => {
                let actors: Vec<ActorRef<RoomMsg>> =
                    state.rooms.values().map(|r| r.actor.clone()).collect();
                info!(rooms = actors.len(), "draining rooms");
                state.ctx.metrics.handoffs.inc_by(actors.len() as u64);
                state.draining = true;
                for (room, live) in state.rooms.drain() {
                    state.stopping.entry(room).or_default();
                    drop(live);
                }
                tokio::spawn(async move {
                    let drains = actors.into_iter().map(|actor| async move {
                        let _ = actor
                            .call(|port| RoomMsg::Drain(Some(port)), Some(timeout))
                            .await;
                    });
                    futures_join_all(drains).await;
                    let _ = reply.send(());
                });
            }
            SupervisorMsg::ActiveRooms(reply) => {
                let _ = reply.send(state.rooms.len());
            }
            SupervisorMsg::Expire(room, reply) => state.expire(&myself, room, reply).await,
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failure) = match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
            SupervisionEvent::ActorFailed(cell, error) => (cell, Some(error)),
            _ => return Ok(()),
        };
        let Some(room) = state.names.remove(&cell.get_id()) else {
            return Ok(());
        };
        if let Some(error) = failure {
            warn!(room = %room, error = %error, "room actor failed; it restarts from the store on its next request");
        }
        if state
            .rooms
            .get(&room)
            .is_some_and(|live| live.actor.get_id() == cell.get_id())
        {
            state.rooms.remove(&room);
        }
        if let Some(parked) = state.stopping.remove(&room) {
            for (request, reply) in parked {
                state.route(&myself, request, reply).await;
            }
        }
        Ok(())
    }
}

async fn futures_join_all<F: std::future::Future<Output = ()> + Send + 'static>(
    futures: impl IntoIterator<Item = F>,
) {
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    for handle in handles {
        let _ = handle.await;
    }
}

impl SupervisorState {
    /// Takes a room out of the map and drains it; requests for it wait
    /// until it has stopped.
    fn retire(&mut self, room: RoomId) {
        if self.stopping.contains_key(&room) {
            return;
        }
        if let Some(live) = self.rooms.remove(&room) {
            self.stopping.insert(room, Vec::new());
            let _ = live.actor.send_message(RoomMsg::Drain(None));
        }
    }

    async fn expire(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        room: RoomId,
        reply: RpcReplyPort<Expiry>,
    ) {
        if self.rooms.contains_key(&room) || self.stopping.contains_key(&room) {
            let _ = reply.send(Expiry::InUse);
            return;
        }
        if self.draining || self.owns.as_ref().is_some_and(|owns| !owns(&room)) {
            let _ = reply.send(Expiry::NotOwner);
            return;
        }
        match self.start(myself, &room).await {
            Some(live) => {
                if let Err(e) = live.actor.send_message(RoomMsg::Expire(reply))
                    && let ractor::MessagingErr::SendErr(RoomMsg::Expire(reply)) = e
                {
                    let _ = reply.send(Expiry::Failed("the room actor is gone".into()));
                }
            }
            None => {
                let _ = reply.send(Expiry::Failed("the room actor did not start".into()));
            }
        }
    }

    /// Starts `room`'s actor (which begins by loading the room).
    async fn start(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        room: &RoomId,
    ) -> Option<&LiveRoom> {
        let backlog = Arc::new(AtomicUsize::new(0));
        let args = RoomArgs {
            room: room.clone(),
            ctx: self.ctx.clone(),
            supervisor: Some(myself.clone()),
            backlog: backlog.clone(),
        };
        // pre_start only spawns the load, so this does not wait on I/O.
        match Actor::spawn_linked(None, RoomActor, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                self.names.insert(actor.get_id(), room.clone());
                self.rooms.insert(room.clone(), LiveRoom { actor, backlog });
                self.rooms.get(room)
            }
            Err(e) => {
                warn!(room = %room, error = %e, "room actor did not start");
                None
            }
        }
    }

    async fn route(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        request: RoomRequest,
        reply: Reply,
    ) {
        let room = request.room().clone();
        if let Some(parked) = self.stopping.get_mut(&room) {
            parked.push((request, reply));
            return;
        }
        // Placement is only asked for rooms not live here (a live room is
        // handed off as soon as the placement changes), so an op to a
        // live room costs no hashing.
        let elsewhere = || self.draining || self.owns.as_ref().is_some_and(|owns| !owns(&room));
        if matches!(request, RoomRequest::Inspect { .. }) && !self.rooms.contains_key(&room) {
            // Looking at a room never loads it: it is not live, and this
            // node would load it on its next request if it owns it.
            let node = (!elsewhere()).then(|| self.ctx.config.node.clone());
            let _ = reply.send(RoomReply::Inspected(RoomInspection::not_live(node)));
            return;
        }
        if !self.rooms.contains_key(&room) && elsewhere() {
            let _ = reply.send(RoomReply::Error {
                code: ErrorCode::Unavailable,
                message: "the room is moving to another node; retry".into(),
            });
            return;
        }
        if !self.rooms.contains_key(&room) && self.start(myself, &room).await.is_none() {
            let _ = reply.send(RoomReply::Error {
                code: ErrorCode::Unavailable,
                message: "the room could not start; retry".into(),
            });
            return;
        }
        let Some(live) = self.rooms.get(&room) else {
            return;
        };
        let high_water = self.ctx.config.mailbox_high_water;
        if matches!(request, RoomRequest::Op { .. })
            && live.backlog.load(Ordering::Relaxed) >= high_water
        {
            let _ = reply.send(RoomReply::Error {
                code: ErrorCode::RateLimited,
                message: "the room is busy; slow down".into(),
            });
            return;
        }
        live.backlog.fetch_add(1, Ordering::Relaxed);
        self.ctx.metrics.mailbox_depth.inc();
        if let Err(e) = live.actor.send_message(RoomMsg::Request(request, reply)) {
            live.backlog.fetch_sub(1, Ordering::Relaxed);
            self.ctx.metrics.mailbox_depth.dec();
            // The actor is gone; its termination event will clean up.
            if let ractor::MessagingErr::SendErr(RoomMsg::Request(_, reply)) = e {
                let _ = reply.send(RoomReply::Error {
                    code: ErrorCode::Unavailable,
                    message: "the room is restarting; retry".into(),
                });
            }
        }
    }
}
