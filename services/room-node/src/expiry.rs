//! Room expiry on a room node: a room with a time to live that nobody uses
//! for that long is deleted with its history.
//!
//! Deadlines live in a [`RoomExpiry`] (in memory in `collab serve`, in
//! Redis when every node shares one). A room is in use while its actor
//! runs; when the actor stops, the room's deadline is set to its time to
//! live from then ([`ExpiryUse`]), and a room created with a time to live
//! gets one at creation (the gateway sets it). A sweeper on each node asks
//! for the due rooms every `sweep_every` and has its supervisor delete the
//! ones it owns, through the rooms' own actors — the same fenced path as
//! `DELETE /v1/rooms/{id}` ([`SupervisorMsg::Expire`]).
//!
//! A room used after it was listed as due is not deleted: if it is live,
//! the supervisor refuses (it is in use), and if it was used and stopped
//! since, its deadline moved, which the sweeper checks just before asking
//! (the gap between the two is one message to the supervisor, far shorter
//! than any use of a room, which keeps its actor alive for `idle_after`).

use std::sync::Arc;
use std::time::Duration;

use collab_actors::room::{Expiry, RoomUse, SupervisorMsg};
use collab_ephemeral::{DueRoom, RoomExpiry};
use collab_protocol::RoomId;
use ractor::ActorRef;
use tracing::{debug, info, warn};

/// Due rooms taken per sweep; the rest wait for the next one.
const SWEEP_BATCH: usize = 500;

/// Room expiry for a room node: where the deadlines are, and how often to
/// look for due rooms.
#[derive(Clone)]
pub struct ExpiryOptions {
    pub deadlines: Arc<dyn RoomExpiry>,
    pub sweep_every: Duration,
}

impl ExpiryOptions {
    pub fn new(deadlines: Arc<dyn RoomExpiry>, sweep_every: Duration) -> Self {
        ExpiryOptions {
            deadlines,
            sweep_every,
        }
    }
}

/// Records the deadline of each room whose actor stops, and forgets the
/// deleted ones.
pub(crate) struct ExpiryUse {
    pub(crate) deadlines: Arc<dyn RoomExpiry>,
}

impl RoomUse for ExpiryUse {
    fn stopped(&self, room: &RoomId, ttl: Duration) {
        let deadlines = self.deadlines.clone();
        let room = room.clone();
        tokio::spawn(async move {
            if let Err(e) = deadlines.touch(&room, ttl).await {
                // The room then expires only once it is used and left again.
                warn!(%room, error = %e, "could not record when the room was last used");
            }
        });
    }

    fn deleted(&self, room: &RoomId) {
        let deadlines = self.deadlines.clone();
        let room = room.clone();
        tokio::spawn(async move {
            if let Err(e) = deadlines.forget(&room, None).await {
                debug!(%room, error = %e, "could not forget a deleted room's deadline");
            }
        });
    }
}

/// Looks for due rooms every `sweep_every`, until the task is aborted.
pub(crate) async fn sweep(options: ExpiryOptions, supervisor: ActorRef<SupervisorMsg>) {
    let mut every = tokio::time::interval(options.sweep_every.max(Duration::from_millis(100)));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let due = match options.deadlines.due(SWEEP_BATCH).await {
            Ok(due) => due,
            Err(e) => {
                // Nothing is deleted while the deadlines cannot be read.
                warn!(error = %e, "could not list the rooms due for expiry");
                continue;
            }
        };
        for room in due {
            expire(options.deadlines.as_ref(), &supervisor, room).await;
        }
    }
}

async fn expire(deadlines: &dyn RoomExpiry, supervisor: &ActorRef<SupervisorMsg>, due: DueRoom) {
    let DueRoom { room, deadline_ms } = due;
    // Used and left again since it was listed: its deadline moved.
    match deadlines.deadline(&room).await {
        Ok(Some(deadline)) if deadline == deadline_ms => {}
        Ok(_) => return,
        Err(e) => {
            warn!(%room, error = %e, "could not check a due room's deadline");
            return;
        }
    }
    let asked = supervisor
        .call(
            |port| SupervisorMsg::Expire(room.clone(), port),
            Some(Duration::from_secs(60)),
        )
        .await;
    let outcome = match asked {
        Ok(ractor::rpc::CallResult::Success(outcome)) => outcome,
        Ok(_) | Err(_) => Expiry::Failed("the room supervisor did not answer".into()),
    };
    match outcome {
        Expiry::Deleted => {
            info!(%room, "room expired: deleted with its history");
        }
        Expiry::NoSuchRoom | Expiry::NoTtl => {
            debug!(%room, outcome = ?outcome, "nothing to expire");
        }
        // In use (it records its use when it stops), or another node's.
        Expiry::InUse | Expiry::NotOwner => return,
        Expiry::Failed(reason) => {
            warn!(%room, %reason, "room expiry failed; trying again at the next sweep");
            return;
        }
    }
    // Only if nobody used it meanwhile (a new deadline stays).
    if let Err(e) = deadlines.forget(&room, Some(deadline_ms)).await {
        debug!(%room, error = %e, "could not forget an expired room's deadline");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use async_trait::async_trait;
    use collab_bus::{Bus, InProcessBus};
    use collab_ephemeral::{DueRoom, EphemeralError, MemoryRoomExpiry, RoomExpiry};
    use collab_protocol::envelope::{ConnRef, RoomReply, RoomRequest};
    use collab_protocol::{ConnId, Epoch, NodeId, RoomId, RoomKind, Seq, UserId, UserInfo};
    use collab_store::{MemoryStore, RoomCatalog, RoomRecord, StoreReader};

    use crate::{ExpiryOptions, RoomNode, RoomNodeConfig, RoomNodeMetrics};

    fn room(id: &str) -> RoomId {
        RoomId::parse(id).expect("id")
    }

    async fn create(store: &MemoryStore, id: &str, ttl_secs: Option<u64>) {
        store
            .create_room(&RoomRecord {
                id: room(id),
                kind: RoomKind::Board,
                name: id.into(),
                epoch: Epoch::parse("e1").expect("epoch"),
                created_by: UserId::parse("ann").expect("user"),
                members: None,
                created_at: 0,
                ttl_secs,
                floor: Seq::ZERO,
            })
            .await
            .expect("create");
    }

    async fn start(
        store: Arc<MemoryStore>,
        bus: Arc<InProcessBus>,
        deadlines: Arc<dyn RoomExpiry>,
    ) -> RoomNode {
        RoomNode::start_with(
            RoomNodeConfig::new(NodeId::parse("n1").expect("id")),
            store,
            bus,
            RoomNodeMetrics::default(),
            Some(ExpiryOptions::new(deadlines, Duration::from_millis(100))),
        )
        .await
        .expect("starts")
    }

    /// Polls `check` every 20 ms for up to 10 s.
    async fn eventually<F: std::future::Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !check().await {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await; // poll interval
        }
    }

    #[tokio::test]
    async fn an_unused_room_expires_and_a_live_one_does_not() {
        let store = Arc::new(MemoryStore::new());
        let bus = Arc::new(InProcessBus::new());
        let deadlines = Arc::new(MemoryRoomExpiry::new());
        create(&store, "unused", Some(1)).await;
        create(&store, "live", Some(1)).await;
        let _node = start(store.clone(), bus.clone(), deadlines.clone()).await;
        // In use from now on: its actor runs.
        let join = RoomRequest::Join {
            room: room("live"),
            conn: ConnRef {
                gateway: "g1".into(),
                conn: ConnId::parse("c1").expect("id"),
            },
            user: UserInfo {
                id: UserId::parse("ann").expect("id"),
                name: "ann".into(),
                color: "#123456".into(),
            },
            since: None,
            epoch: None,
            resume_strokes: false,
        };
        let joined = bus.request(join, Duration::from_secs(10)).await;
        assert!(matches!(joined, Ok(RoomReply::Joined(_))), "{joined:?}");
        for id in ["unused", "live"] {
            deadlines
                .touch(&room(id), Duration::from_millis(300))
                .await
                .expect("touch");
        }
        eventually("the unused room to be deleted", || async {
            store.room(&room("unused")).await.expect("room").is_none()
        })
        .await;
        assert_eq!(
            deadlines.deadline(&room("unused")).await.expect("deadline"),
            None,
            "forgotten once deleted"
        );
        assert!(store.room(&room("live")).await.expect("room").is_some());
        assert!(
            deadlines
                .deadline(&room("live"))
                .await
                .expect("deadline")
                .is_some(),
            "a room in use stays due, for when it stops"
        );
    }

    /// Lists a room as due with a deadline that has moved since (the room
    /// was used and left again after the listing).
    struct MovedDeadline {
        inner: MemoryRoomExpiry,
        sweeps: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl RoomExpiry for MovedDeadline {
        async fn touch(&self, room: &RoomId, ttl: Duration) -> Result<u64, EphemeralError> {
            self.inner.touch(room, ttl).await
        }
        async fn deadline(&self, room: &RoomId) -> Result<Option<u64>, EphemeralError> {
            self.inner.deadline(room).await
        }
        async fn due(&self, _limit: usize) -> Result<Vec<DueRoom>, EphemeralError> {
            self.sweeps
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(vec![DueRoom {
                room: room("moved"),
                deadline_ms: 1,
            }])
        }
        async fn forget(
            &self,
            room: &RoomId,
            if_deadline: Option<u64>,
        ) -> Result<bool, EphemeralError> {
            self.inner.forget(room, if_deadline).await
        }
    }

    #[tokio::test]
    async fn a_room_used_after_it_was_listed_is_not_deleted() {
        let store = Arc::new(MemoryStore::new());
        let deadlines = Arc::new(MovedDeadline {
            inner: MemoryRoomExpiry::new(),
            sweeps: Default::default(),
        });
        create(&store, "moved", Some(1)).await;
        deadlines
            .touch(&room("moved"), Duration::from_secs(3600))
            .await
            .expect("touch");
        let _node = start(
            store.clone(),
            Arc::new(InProcessBus::new()),
            deadlines.clone(),
        )
        .await;
        // The room is looked at, sweep after sweep (each one finishes its
        // rooms before the next begins).
        eventually("five sweeps", || async {
            deadlines.sweeps.load(std::sync::atomic::Ordering::SeqCst) >= 5
        })
        .await;
        assert!(store.room(&room("moved")).await.expect("room").is_some());
        assert!(
            deadlines
                .deadline(&room("moved"))
                .await
                .expect("deadline")
                .is_some(),
            "its new deadline stays"
        );
    }
}
