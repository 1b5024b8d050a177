//! The room supervisor: one per room node. It holds a typed map of the
//! node's live rooms, starts a room's actor on first use, restarts a failed
//! one from the store (on its next request), and stops idle rooms after
//! they snapshot. Requests for a room that is stopping wait for it to stop
//! and then go to its successor, so two actors never hold one room.
//!
//! Requests enter through a [`RoomRouter`]. While nothing for a room waits
//! at the supervisor (no request queued or parked there), the router puts
//! a request for a live room straight into the room's mailbox: the hop
//! through the supervisor's task is one more wait in the runtime's queue,
//! which near a full core is a good part of an op's latency. Anything for a
//! room that is not live, or behind a request the supervisor still holds,
//! goes through the supervisor, so every room gets its requests in the
//! order they were sent.
//!
//! In a cluster the supervisor is told which rooms this node owns
//! ([`SupervisorMsg::Placement`]): it hands off every room it no longer owns
//! (the actor finishes its batch, snapshots and stops) and answers requests
//! for rooms it does not own with `unavailable`, so a gateway with an older
//! view of the cluster retries and reaches the new owner.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use collab_protocol::envelope::{RoomReply, RoomRequest};
use collab_protocol::{ErrorCode, RoomId};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tracing::{info, warn};

use super::actor::{Reply, RoomActor, RoomArgs, RoomContext, RoomMsg};

/// Which rooms this node owns.
pub type Ownership = Arc<dyn Fn(&RoomId) -> bool + Send + Sync>;

pub enum SupervisorMsg {
    /// Send a request to its room, starting the room if needed. Sent by
    /// [`RoomRouter::send`], which counts it until the supervisor has
    /// passed it on.
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
}

struct LiveRoom {
    actor: ActorRef<RoomMsg>,
    backlog: Arc<AtomicUsize>,
}

impl LiveRoom {
    /// Puts a request into the room's mailbox, or answers an op `rate_limited`
    /// when the room is that far behind. Gives the request back (`Some`) if
    /// the actor is gone.
    fn offer(
        &self,
        ctx: &RoomContext,
        request: RoomRequest,
        reply: Reply,
    ) -> Option<(RoomRequest, Reply)> {
        if matches!(request, RoomRequest::Op { .. })
            && self.backlog.load(Ordering::Relaxed) >= ctx.config.mailbox_high_water
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
                    _ => None,
                }
            }
        }
    }
}

/// The node's live rooms, shared by the supervisor (the only writer of
/// `live`) and the router, and how many requests for each room the
/// supervisor holds: sent to it and not yet passed on or answered.
#[derive(Default)]
struct Routes {
    live: HashMap<RoomId, LiveRoom>,
    held: HashMap<RoomId, usize>,
}

/// The routing table the supervisor keeps and the router reads.
#[derive(Clone, Default)]
pub struct Directory(Arc<Mutex<Routes>>);

impl Directory {
    fn lock(&self) -> MutexGuard<'_, Routes> {
        // Every change is a single map operation: a panic cannot leave the
        // table half-changed.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The supervisor is done with one request for `room`.
    fn release(&self, room: &RoomId) {
        let mut routes = self.lock();
        if let Some(held) = routes.held.get_mut(room) {
            *held -= 1;
            if *held == 0 {
                routes.held.remove(room);
            }
        }
    }
}

/// Where a node's requests go in: see the module's docs.
#[derive(Clone)]
pub struct RoomRouter {
    supervisor: ActorRef<SupervisorMsg>,
    directory: Directory,
    ctx: Arc<RoomContext>,
}

impl RoomRouter {
    /// Sends a request to its room now: requests sent one after another
    /// reach the room in that order. False if the supervisor is gone.
    pub fn send(&self, request: RoomRequest, reply: Reply) -> bool {
        let room = request.room().clone();
        // Held across the send, so the supervisor cannot pass on what it
        // holds for the room between this check and the send.
        let mut routes = self.directory.lock();
        let (request, reply) = match routes.live.get(&room) {
            Some(live) if !routes.held.contains_key(&room) => {
                match live.offer(&self.ctx, request, reply) {
                    None => return true,
                    // The actor stopped: the supervisor hears of it and
                    // starts the room again.
                    Some(back) => back,
                }
            }
            _ => (request, reply),
        };
        if self
            .supervisor
            .send_message(SupervisorMsg::Route(request, reply))
            .is_err()
        {
            return false;
        }
        *routes.held.entry(room).or_default() += 1;
        true
    }
}

pub struct RoomSupervisor;

impl RoomSupervisor {
    /// Starts a node's supervisor and the router its requests go in by.
    pub async fn start(
        ctx: Arc<RoomContext>,
    ) -> Result<(ActorRef<SupervisorMsg>, RoomRouter), ractor::SpawnErr> {
        let directory = Directory::default();
        let (supervisor, _) =
            Actor::spawn(None, RoomSupervisor, (ctx.clone(), directory.clone())).await?;
        let router = RoomRouter {
            supervisor: supervisor.clone(),
            directory,
            ctx,
        };
        Ok((supervisor, router))
    }
}

pub struct SupervisorState {
    ctx: Arc<RoomContext>,
    rooms: Directory,
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
    type Arguments = (Arc<RoomContext>, Directory);

    async fn pre_start(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        (ctx, rooms): (Arc<RoomContext>, Directory),
    ) -> Result<SupervisorState, ActorProcessingErr> {
        Ok(SupervisorState {
            ctx,
            rooms,
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
                let current = state.rooms.lock().live.get(&room).map(|r| r.actor.get_id());
                if current == Some(id) {
                    state.retire(room);
                }
            }
            SupervisorMsg::Placement(owns) => {
                let moved: Vec<RoomId> = state
                    .rooms
                    .lock()
                    .live
                    .keys()
                    .filter(|room| !owns(room))
                    .cloned()
                    .collect();
                if !moved.is_empty() {
                    info!(
                        rooms = moved.len(),
                        "handing off rooms this node no longer owns"
                    );
                }
                for room in moved {
                    state.retire(room);
                }
                state.owns = Some(owns);
            }
            SupervisorMsg::GatewayGone(gateway) => {
                for live in state.rooms.lock().live.values() {
                    let _ = live
                        .actor
                        .send_message(RoomMsg::GatewayGone(gateway.clone()));
                }
            }
            SupervisorMsg::DrainAll(timeout, reply) => {
                let drained: Vec<(RoomId, LiveRoom)> = state.rooms.lock().live.drain().collect();
                let actors: Vec<ActorRef<RoomMsg>> =
                    drained.iter().map(|(_, r)| r.actor.clone()).collect();
                info!(rooms = actors.len(), "draining rooms");
                state.draining = true;
                for (room, _) in drained {
                    state.stopping.entry(room).or_default();
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
                let _ = reply.send(state.rooms.lock().live.len());
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
        let Some(room) = state.names.remove(&cell.get_id()) else {
            return Ok(());
        };
        if let Some(error) = failure {
            warn!(room = %room, error = %error, "room actor failed; it restarts from the store on its next request");
        }
        {
            let mut routes = state.rooms.lock();
            if routes
                .live
                .get(&room)
                .is_some_and(|live| live.actor.get_id() == cell.get_id())
            {
                routes.live.remove(&room);
            }
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
        let retired = self.rooms.lock().live.remove(&room);
        if let Some(live) = retired {
            self.stopping.insert(room, Vec::new());
            let _ = live.actor.send_message(RoomMsg::Drain(None));
        }
    }

    /// Sends a request to its room, starting the room if needed, or parks
    /// it while the room's actor is stopping. Once the request is in a
    /// room's mailbox or answered, the supervisor no longer holds it.
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
        self.place(myself, request, reply).await;
        self.rooms.release(&room);
    }

    async fn place(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        request: RoomRequest,
        reply: Reply,
    ) {
        let room = request.room().clone();
        let live = self.rooms.lock().live.contains_key(&room);
        // Placement is only asked for rooms not live here (a live room is
        // handed off as soon as the placement changes), so an op to a
        // live room costs no hashing.
        let elsewhere = || self.draining || self.owns.as_ref().is_some_and(|owns| !owns(&room));
        if !live && elsewhere() {
            let _ = reply.send(RoomReply::Error {
                code: ErrorCode::Unavailable,
                message: "the room is moving to another node; retry".into(),
            });
            return;
        }
        if !live {
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
                    self.rooms
                        .lock()
                        .live
                        .insert(room.clone(), LiveRoom { actor, backlog });
                }
                Err(e) => {
                    warn!(room = %room, error = %e, "room actor did not start");
                    let _ = reply.send(RoomReply::Error {
                        code: ErrorCode::Unavailable,
                        message: "the room could not start; retry".into(),
                    });
                    return;
                }
            }
        }
        let offered = match self.rooms.lock().live.get(&room) {
            Some(live) => live.offer(&self.ctx, request, reply),
            None => return,
        };
        // The actor is gone; its termination event will clean up.
        if let Some((_, reply)) = offered {
            let _ = reply.send(RoomReply::Error {
                code: ErrorCode::Unavailable,
                message: "the room is restarting; retry".into(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::marker::PhantomData;

    use collab_protocol::envelope::ConnRef;
    use collab_protocol::{Access, Cid, ConnId, NodeId, Op, UserId};
    use collab_store::testsuite::GatedStore;
    use tokio::sync::mpsc;

    use super::*;
    use crate::room::{EventSink, RoomConfig, RoomMetrics};

    /// An actor that hands every message it gets to the test.
    struct Recorder<M>(PhantomData<fn() -> M>);

    impl<M: ractor::Message> Actor for Recorder<M> {
        type Msg = M;
        type State = mpsc::UnboundedSender<M>;
        type Arguments = mpsc::UnboundedSender<M>;

        async fn pre_start(
            &self,
            _myself: ActorRef<M>,
            to_test: Self::Arguments,
        ) -> Result<Self::State, ActorProcessingErr> {
            Ok(to_test)
        }

        async fn handle(
            &self,
            _myself: ActorRef<M>,
            message: M,
            to_test: &mut Self::State,
        ) -> Result<(), ActorProcessingErr> {
            let _ = to_test.send(message);
            Ok(())
        }
    }

    async fn recorder<M: ractor::Message>() -> (ActorRef<M>, mpsc::UnboundedReceiver<M>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (actor, _) = Actor::spawn(None, Recorder(PhantomData), tx)
            .await
            .expect("recorder starts");
        (actor, rx)
    }

    struct NoSink;
    impl EventSink for NoSink {
        fn emit(&self, _: collab_protocol::envelope::RoomEvent, _: u64) {}
    }

    fn room() -> RoomId {
        RoomId::parse("r1").expect("id")
    }

    fn op(cid: &str) -> (RoomRequest, Reply) {
        let request = RoomRequest::Op {
            room: room(),
            conn: ConnRef {
                gateway: "g1".into(),
                conn: ConnId::parse("c1").expect("id"),
            },
            user: UserId::parse("ann").expect("id"),
            access: Access::Write,
            cid: Cid::parse(cid).expect("id"),
            op: Op::Message { text: cid.into() },
        };
        (request, tokio::sync::oneshot::channel().0.into())
    }

    /// The next message an actor got, within a deadline.
    async fn next<M>(rx: &mut mpsc::UnboundedReceiver<M>) -> M {
        tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
            .await
            .expect("a message within 5 s")
            .expect("recorder alive")
    }

    fn cid_of_room_msg(message: RoomMsg) -> String {
        match message {
            RoomMsg::Request(RoomRequest::Op { cid, .. }, _) => cid.as_str().to_owned(),
            _ => panic!("not an op request"),
        }
    }

    fn cid_of_route(message: SupervisorMsg) -> String {
        match message {
            SupervisorMsg::Route(RoomRequest::Op { cid, .. }, _) => cid.as_str().to_owned(),
            _ => panic!("not a routed op"),
        }
    }

    #[tokio::test]
    async fn requests_go_straight_to_a_live_room_unless_the_supervisor_holds_one_for_it() {
        let (supervisor, mut routed) = recorder::<SupervisorMsg>().await;
        let (actor, mut delivered) = recorder::<RoomMsg>().await;
        let directory = Directory::default();
        let router = RoomRouter {
            supervisor,
            directory: directory.clone(),
            ctx: Arc::new(RoomContext {
                store: Arc::new(GatedStore::new()),
                sink: Arc::new(NoSink),
                config: RoomConfig::new(NodeId::parse("n1").expect("id")),
                metrics: RoomMetrics::default(),
            }),
        };
        let live = || LiveRoom {
            actor: actor.clone(),
            backlog: Arc::new(AtomicUsize::new(0)),
        };
        let send = |cid: &str| {
            let (request, reply) = op(cid);
            assert!(router.send(request, reply));
        };

        // Live, nothing held: straight into the room's mailbox.
        directory.lock().live.insert(room(), live());
        send("1");
        assert_eq!(cid_of_room_msg(next(&mut delivered).await), "1");

        // Not live (stopping, say): through the supervisor, which holds it.
        directory.lock().live.remove(&room());
        send("2");
        assert_eq!(cid_of_route(next(&mut routed).await), "2");

        // Live again while op 2 is still held: op 3 queues behind it.
        directory.lock().live.insert(room(), live());
        send("3");
        assert_eq!(cid_of_route(next(&mut routed).await), "3");

        // The supervisor passed both on: the next goes straight in, and it
        // is the first the room gets since op 1.
        directory.release(&room());
        directory.release(&room());
        send("4");
        assert_eq!(cid_of_room_msg(next(&mut delivered).await), "4");
        assert!(directory.lock().held.is_empty());
    }
}
