//! The room supervisor: one per room node. It starts a room's actor on
//! first use, restarts a failed one from the store (on its next request),
//! and stops idle rooms after they snapshot. Requests for a room that is
//! stopping wait for it to stop and then go to its successor, so two actors
//! never hold one room.
//!
//! Requests enter through a [`RoomRouter`], not through the supervisor's
//! mailbox: the router and the supervisor share the node's table of rooms
//! ([`Rooms`]), and a request for a live room goes from the router
//! straight into the room's mailbox. Only a request for a room that is not
//! live waits for the supervisor: it is kept in the table, in order, the
//! supervisor is told once (`Wake`), and it starts the room (or answers,
//! when the room is not this node's) and hands the room everything that
//! waited before it marks the room live, all under the table's lock, so a
//! room gets its requests in the order the router was given them. A room
//! whose actor is stopping keeps its requests in the table the same way
//! until the actor has stopped.
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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
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
    /// Requests wait in the table for a room that is not live: start it,
    /// or answer them (sent by the router, once per room until the
    /// supervisor has served them).
    Wake(RoomId),
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

/// A room whose actor runs.
struct LiveRoom {
    actor: ActorRef<RoomMsg>,
    /// Requests put into its mailbox and not yet handled.
    backlog: Arc<AtomicUsize>,
}

impl LiveRoom {
    /// Puts a request into the room's mailbox, or answers an op
    /// `rate_limited` when the room is that far behind. Gives the request
    /// back (`Some`) if the actor is gone.
    fn offer(
        &self,
        ctx: &RoomContext,
        request: RoomRequest,
        reply: Reply,
    ) -> Option<(RoomRequest, Reply)> {
        if matches!(
            request,
            RoomRequest::Op { .. } | RoomRequest::Publish { .. }
        ) && self.backlog.load(Ordering::Relaxed) >= ctx.config.mailbox_high_water
        {
            let _ = reply.send(RoomReply::Error {
                code: ErrorCode::RateLimited,
                message: "the room is busy; slow down".into(),
            });
            return None;
        }
        self.backlog.fetch_add(1, Ordering::Relaxed);
        ctx.metrics.mailbox_depth.inc();
        match self.actor.send_message(RoomMsg::Request(request, reply)) {
            Ok(()) => None,
            Err(e) => {
                self.backlog.fetch_sub(1, Ordering::Relaxed);
                ctx.metrics.mailbox_depth.dec();
                match e {
                    ractor::MessagingErr::SendErr(RoomMsg::Request(request, reply)) => {
                        Some((request, reply))
                    }
                    // `send_message` gives back what it was given.
                    _ => None,
                }
            }
        }
    }
}

type Waiting = Vec<(RoomRequest, Reply)>;

/// A room of the node's table.
enum Entry {
    /// Its actor runs: requests go straight into its mailbox.
    Live(LiveRoom),
    /// Not live: requests wait here for the supervisor, which has been
    /// sent a `Wake` for the room (or is serving it already).
    Starting(Waiting),
    /// Its actor `.0` is stopping: requests wait here until it has stopped;
    /// then the supervisor serves them as for a room that is not live.
    Stopping(ActorId, Waiting),
}

/// The node's rooms: every live room, and the requests waiting for a room
/// that is not live. Shared by the router, which reads it and adds
/// waiting requests, and the supervisor, which makes every other change.
#[derive(Clone, Default)]
pub struct Rooms(Arc<Mutex<HashMap<RoomId, Entry>>>);

impl Rooms {
    fn lock(&self) -> MutexGuard<'_, HashMap<RoomId, Entry>> {
        // Nothing under the lock panics halfway through a change.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Where a node's requests go in (see the module's docs).
#[derive(Clone)]
pub struct RoomRouter {
    supervisor: ActorRef<SupervisorMsg>,
    rooms: Rooms,
    ctx: Arc<RoomContext>,
}

impl RoomRouter {
    /// Sends a request to its room now: requests sent one after another
    /// reach the room in that order. False if the supervisor is gone (the
    /// node is stopping).
    pub fn send(&self, request: RoomRequest, reply: Reply) -> bool {
        let mut rooms = self.rooms.lock();
        let Some(entry) = rooms.get_mut(request.room()) else {
            let room = request.room().clone();
            if self
                .supervisor
                .send_message(SupervisorMsg::Wake(room.clone()))
                .is_err()
            {
                return false;
            }
            rooms.insert(room, Entry::Starting(vec![(request, reply)]));
            return true;
        };
        match entry {
            Entry::Live(live) => {
                if let Some(back) = live.offer(&self.ctx, request, reply) {
                    // The actor is gone, and the supervisor is about to
                    // hear of it: the request waits for that.
                    *entry = Entry::Stopping(live.actor.get_id(), vec![back]);
                }
            }
            Entry::Starting(waiting) | Entry::Stopping(_, waiting) => {
                waiting.push((request, reply));
            }
        }
        true
    }
}

pub struct RoomSupervisor;

impl RoomSupervisor {
    /// Starts a node's supervisor, and the router its requests go in by.
    pub async fn start(
        ctx: Arc<RoomContext>,
    ) -> Result<(ActorRef<SupervisorMsg>, RoomRouter), ractor::SpawnErr> {
        let rooms = Rooms::default();
        let (supervisor, _) =
            Actor::spawn(None, RoomSupervisor, (ctx.clone(), rooms.clone())).await?;
        let router = RoomRouter {
            supervisor: supervisor.clone(),
            rooms,
            ctx,
        };
        Ok((supervisor, router))
    }
}

pub struct SupervisorState {
    ctx: Arc<RoomContext>,
    rooms: Rooms,
    /// The room of every actor this supervisor started and has not seen
    /// stop.
    names: HashMap<ActorId, RoomId>,
    /// `None`: every room is this node's (a single-process server).
    owns: Option<Ownership>,
    draining: bool,
}

impl Actor for RoomSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = (Arc<RoomContext>, Rooms);

    async fn pre_start(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        (ctx, rooms): (Arc<RoomContext>, Rooms),
    ) -> Result<SupervisorState, ActorProcessingErr> {
        Ok(SupervisorState {
            ctx,
            rooms,
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
            SupervisorMsg::Wake(room) => state.serve_waiting(&myself, room, None).await,
            SupervisorMsg::Retire(room, id) => state.retire(&room, Some(id)),
            SupervisorMsg::Placement(owns) => {
                let moved: Vec<RoomId> = live_rooms(&state.rooms.lock())
                    .filter(|(room, _)| !owns(room))
                    .map(|(room, _)| room.clone())
                    .collect();
                if !moved.is_empty() {
                    info!(
                        rooms = moved.len(),
                        "handing off rooms this node no longer owns"
                    );
                    state.ctx.metrics.handoffs.inc_by(moved.len() as u64);
                }
                for room in moved {
                    state.retire(&room, None);
                }
                state.owns = Some(owns);
            }
            SupervisorMsg::GatewayGone(gateway) => {
                for (_, live) in live_rooms(&state.rooms.lock()) {
                    let _ = live
                        .actor
                        .send_message(RoomMsg::GatewayGone(gateway.clone()));
                }
            }
            SupervisorMsg::DrainAll(timeout, reply) => {
                state.draining = true;
                let rooms: Vec<RoomId> = live_rooms(&state.rooms.lock())
                    .map(|(room, _)| room.clone())
                    .collect();
                info!(rooms = rooms.len(), "draining rooms");
                state.ctx.metrics.handoffs.inc_by(rooms.len() as u64);
                let mut actors = Vec::with_capacity(rooms.len());
                {
                    let mut table = state.rooms.lock();
                    for room in rooms {
                        if let Some(Entry::Live(live)) = table.remove(&room) {
                            table.insert(room, Entry::Stopping(live.actor.get_id(), Vec::new()));
                            actors.push(live.actor);
                        }
                    }
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
                let _ = reply.send(live_rooms(&state.rooms.lock()).count());
            }
            SupervisorMsg::Expire(room, reply) => state.expire(&myself, room, reply).await,
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        // Nobody is left to serve what waits, and the router keeps the
        // table: answer it now rather than let it time out.
        for (_, entry) in state.rooms.lock().drain() {
            if let Entry::Starting(waiting) | Entry::Stopping(_, waiting) = entry {
                for (_, reply) in waiting {
                    let _ = reply.send(RoomReply::Error {
                        code: ErrorCode::Unavailable,
                        message: "the room node is stopping; retry".into(),
                    });
                }
            }
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
        let id = cell.get_id();
        let Some(room) = state.names.remove(&id) else {
            return Ok(());
        };
        if let Some(error) = failure {
            warn!(room = %room, error = %error, "room actor failed; it restarts from the store on its next request");
        }
        let waiting = {
            let mut table = state.rooms.lock();
            match table.get_mut(&room) {
                Some(Entry::Live(live)) if live.actor.get_id() == id => {
                    table.remove(&room);
                    false
                }
                Some(Entry::Stopping(actor, waiting)) if *actor == id => {
                    let waiting = std::mem::take(waiting);
                    table.insert(room.clone(), Entry::Starting(waiting));
                    true
                }
                _ => false,
            }
        };
        if waiting {
            state.serve_waiting(&myself, room, None).await;
        }
        Ok(())
    }
}

/// The live rooms of a table.
fn live_rooms(table: &HashMap<RoomId, Entry>) -> impl Iterator<Item = (&RoomId, &LiveRoom)> + '_ {
    table.iter().filter_map(|(room, entry)| match entry {
        Entry::Live(live) => Some((room, live)),
        _ => None,
    })
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
    /// Takes a live room out of service and drains it (only if its actor
    /// is `actor`, when given); requests for it wait until it has stopped.
    fn retire(&mut self, room: &RoomId, actor: Option<ActorId>) {
        let mut table = self.rooms.lock();
        let Some(entry) = table.get_mut(room) else {
            return;
        };
        let Entry::Live(live) = entry else {
            return;
        };
        if actor.is_some_and(|actor| actor != live.actor.get_id()) {
            return;
        }
        let _ = live.actor.send_message(RoomMsg::Drain(None));
        *entry = Entry::Stopping(live.actor.get_id(), Vec::new());
    }

    /// Whether requests for `room`, not live here, are another node's to
    /// serve (or nobody's: this node is draining).
    fn elsewhere(&self, room: &RoomId) -> bool {
        self.draining || self.owns.as_ref().is_some_and(|owns| !owns(room))
    }

    /// Serves the requests waiting for `room`, which is not live (`started`:
    /// unless its actor was just started for it), in order: starts the room
    /// for the first that needs it and hands that and every later one to
    /// it, or answers them when the room is not this node's. Once nothing
    /// waits, the room is marked live (or forgotten), under the same lock
    /// as the last look, so nothing overtakes what waited.
    async fn serve_waiting(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        room: RoomId,
        mut started: Option<LiveRoom>,
    ) {
        loop {
            let waiting = {
                let mut table = self.rooms.lock();
                let Some(Entry::Starting(waiting)) = table.get_mut(&room) else {
                    return;
                };
                if waiting.is_empty() {
                    match started {
                        Some(live) => table.insert(room, Entry::Live(live)),
                        None => table.remove(&room),
                    };
                    return;
                }
                std::mem::take(waiting)
            };
            for (request, reply) in waiting {
                if started.is_none() {
                    if let RoomRequest::Inspect { .. } = request {
                        // Looking at a room never loads it: it is not live,
                        // and this node would load it on its next request
                        // if it owns it.
                        let node = (!self.elsewhere(&room)).then(|| self.ctx.config.node.clone());
                        let _ = reply.send(RoomReply::Inspected(RoomInspection::not_live(node)));
                        continue;
                    }
                    if self.elsewhere(&room) {
                        let _ = reply.send(RoomReply::Error {
                            code: ErrorCode::Unavailable,
                            message: "the room is moving to another node; retry".into(),
                        });
                        continue;
                    }
                    started = self.start(myself, &room).await;
                }
                let Some(live) = &started else {
                    let _ = reply.send(RoomReply::Error {
                        code: ErrorCode::Unavailable,
                        message: "the room could not start; retry".into(),
                    });
                    continue;
                };
                if let Some((_, reply)) = live.offer(&self.ctx, request, reply) {
                    // The actor is gone already; its end will clean up.
                    let _ = reply.send(RoomReply::Error {
                        code: ErrorCode::Unavailable,
                        message: "the room is restarting; retry".into(),
                    });
                }
            }
        }
    }

    async fn expire(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        room: RoomId,
        reply: RpcReplyPort<Expiry>,
    ) {
        {
            let mut table = self.rooms.lock();
            if table.contains_key(&room) {
                let _ = reply.send(Expiry::InUse);
                return;
            }
            if self.elsewhere(&room) {
                let _ = reply.send(Expiry::NotOwner);
                return;
            }
            // Requests that come while the room starts wait for it.
            table.insert(room.clone(), Entry::Starting(Vec::new()));
        }
        let started = self.start(myself, &room).await;
        match &started {
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
        self.serve_waiting(myself, room, started).await;
    }

    /// Starts `room`'s actor (which begins by loading the room).
    async fn start(&mut self, myself: &ActorRef<SupervisorMsg>, room: &RoomId) -> Option<LiveRoom> {
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
                Some(LiveRoom { actor, backlog })
            }
            Err(e) => {
                warn!(room = %room, error = %e, "room actor did not start");
                None
            }
        }
    }
}
