//! The bus inside one process: requests are direct calls to the one room
//! node's handler; each room's events go to its subscribers' queues, and a
//! subscriber that falls behind by more than the capacity gets
//! [`Delivery::Lagged`] instead of stalling the publisher.
//!
//! A queue holds only what is waiting, unlike a broadcast channel's ring,
//! which allocates all of its capacity up front: 4,096 slots were 128 KiB
//! per live room, most of an idle connection's memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use collab_protocol::RoomId;
use collab_protocol::envelope::{RoomEvent, RoomReply, RoomRequest};
use tokio::sync::mpsc;

use crate::{
    Bus, BusError, Delivery, EventStream, Load, ReplyFuture, RequestHandler, Subscription,
};

/// Events a room subscriber may fall behind by before it lags.
pub const DEFAULT_ROOM_CAPACITY: usize = 4096;

pub struct InProcessBus {
    handler: RwLock<Option<Arc<dyn RequestHandler>>>,
    rooms: Mutex<HashMap<RoomId, Vec<Subscriber>>>,
    capacity: usize,
    load: Load,
}

/// The publishing side of one subscription.
struct Subscriber {
    queue: mpsc::UnboundedSender<Delivery>,
    state: Arc<QueueState>,
}

/// What a subscription's two ends share.
#[derive(Default)]
struct QueueState {
    /// Events in the queue.
    queued: AtomicUsize,
    /// A `Lagged` is in the queue: events are dropped until the subscriber
    /// has read it (it will catch up from the room anyway).
    lagged: AtomicBool,
}

impl Subscriber {
    /// Queues `event`, or the one `Lagged` that stands for it and what
    /// follows while the subscriber is `capacity` behind. `false` once the
    /// subscription is gone.
    fn offer(&self, event: &Arc<RoomEvent>, capacity: usize) -> bool {
        // Publishes are serialized by the rooms lock, so this
        // check-then-act cannot race another publisher.
        if self.state.lagged.load(Ordering::Acquire) {
            return !self.queue.is_closed();
        }
        let delivery = if self.state.queued.load(Ordering::Acquire) >= capacity {
            self.state.lagged.store(true, Ordering::Release);
            Delivery::Lagged
        } else {
            self.state.queued.fetch_add(1, Ordering::AcqRel);
            Delivery::Event(event.clone())
        };
        self.queue.send(delivery).is_ok()
    }
}

impl InProcessBus {
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_ROOM_CAPACITY)
    }

    pub fn with_capacity(capacity: usize) -> Self {
        InProcessBus {
            handler: RwLock::new(None),
            rooms: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            load: Load::default(),
        }
    }

    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<RoomId, Vec<Subscriber>>> {
        // The map holds no invariant a panic could break mid-update.
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Rooms with at least one subscriber.
    pub fn subscribed_rooms(&self) -> usize {
        self.rooms()
            .values()
            .filter(|subscribers| subscribers.iter().any(|s| !s.queue.is_closed()))
            .count()
    }
}

impl Default for InProcessBus {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Bus for InProcessBus {
    fn request(
        &self,
        request: RoomRequest,
        timeout: Duration,
    ) -> ReplyFuture<Result<RoomReply, BusError>> {
        let handler = self
            .handler
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(handler) = handler else {
            return Box::pin(async { Err(BusError::NoOwner) });
        };
        let reply = handler.handle(request);
        Box::pin(async move {
            tokio::time::timeout(timeout, reply)
                .await
                .map_err(|_| BusError::Timeout)
        })
    }

    fn publish(&self, event: RoomEvent) {
        let room = event.room().clone();
        let mut rooms = self.rooms();
        let Some(subscribers) = rooms.get_mut(&room) else {
            return;
        };
        let event = Arc::new(event);
        subscribers.retain(|subscriber| subscriber.offer(&event, self.capacity));
        if subscribers.is_empty() {
            // Nobody listens any more: forget the room.
            rooms.remove(&room);
        }
    }

    async fn subscribe(&self, room: &RoomId) -> Result<Subscription, BusError> {
        let (queue, rx) = mpsc::unbounded_channel();
        let state = Arc::new(QueueState::default());
        self.rooms()
            .entry(room.clone())
            .or_default()
            .push(Subscriber {
                queue,
                state: state.clone(),
            });
        Ok(Subscription::new(Box::new(QueueStream { rx, state })))
    }

    async fn serve(&self, handler: Arc<dyn RequestHandler>) -> Result<(), BusError> {
        *self.handler.write().unwrap_or_else(|p| p.into_inner()) = Some(handler);
        Ok(())
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn load(&self) -> Option<&Load> {
        Some(&self.load)
    }
}

struct QueueStream {
    rx: mpsc::UnboundedReceiver<Delivery>,
    state: Arc<QueueState>,
}

#[async_trait]
impl EventStream for QueueStream {
    async fn next(&mut self) -> Option<Delivery> {
        let delivery = self.rx.recv().await?;
        match &delivery {
            Delivery::Event(_) => {
                self.state.queued.fetch_sub(1, Ordering::AcqRel);
            }
            // Every event before it was read: the publisher may queue
            // again.
            Delivery::Lagged => self.state.lagged.store(false, Ordering::Release),
        }
        Some(delivery)
    }
}

#[cfg(test)]
mod tests {
    use collab_protocol::envelope::ConnRef;
    use collab_protocol::{ConnId, Seq, UserId};
    use futures_util::FutureExt;

    use super::*;

    fn room(id: &str) -> RoomId {
        RoomId::parse(id).expect("id")
    }

    fn cursor(room_id: &str, x: f64) -> RoomEvent {
        RoomEvent::CursorLeave {
            room: room(room_id),
            user: UserId::parse(format!("u{x}")).expect("id"),
            origin: ConnRef {
                gateway: "g".into(),
                conn: ConnId::parse("c").expect("id"),
            },
        }
    }

    struct Echo;

    impl RequestHandler for Echo {
        fn handle(&self, request: RoomRequest) -> ReplyFuture<RoomReply> {
            Box::pin(async move {
                match request {
                    RoomRequest::Fetch { after, .. } => RoomReply::Ack { seq: after },
                    _ => std::future::pending().await,
                }
            })
        }
    }

    #[tokio::test]
    async fn events_reach_subscribers_of_their_room_in_order() {
        let bus = InProcessBus::new();
        let mut a = bus.subscribe(&room("a")).await.expect("subscribes");
        let mut b = bus.subscribe(&room("b")).await.expect("subscribes");
        for i in 0..3 {
            bus.publish(cursor("a", f64::from(i)));
        }
        bus.publish(cursor("b", 9.0));
        for i in 0..3 {
            match a.next().await {
                Some(Delivery::Event(event)) => assert_eq!(*event, cursor("a", f64::from(i))),
                other => panic!("{other:?}"),
            }
        }
        match b.next().await {
            Some(Delivery::Event(event)) => assert_eq!(*event, cursor("b", 9.0)),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_told() {
        let bus = InProcessBus::with_capacity(2);
        let mut slow = bus.subscribe(&room("a")).await.expect("subscribes");
        for i in 0..5 {
            bus.publish(cursor("a", f64::from(i)));
        }
        // What fitted, then the lag standing for the rest.
        for i in 0..2 {
            match slow.next().await {
                Some(Delivery::Event(event)) => assert_eq!(*event, cursor("a", f64::from(i))),
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(slow.next().await, Some(Delivery::Lagged)));
        // Once it has read the lag it gets new events again.
        bus.publish(cursor("a", 7.0));
        match slow.next().await {
            Some(Delivery::Event(event)) => assert_eq!(*event, cursor("a", 7.0)),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_lagging_subscriber_does_not_hold_back_the_others() {
        let bus = InProcessBus::with_capacity(2);
        let mut slow = bus.subscribe(&room("a")).await.expect("subscribes");
        let mut fast = bus.subscribe(&room("a")).await.expect("subscribes");
        for i in 0..5 {
            bus.publish(cursor("a", f64::from(i)));
            match fast.next().await {
                Some(Delivery::Event(event)) => assert_eq!(*event, cursor("a", f64::from(i))),
                other => panic!("{other:?}"),
            }
        }
        // Publishing is synchronous: everything it queued is there now.
        let mut got = Vec::new();
        while let Some(Some(delivery)) = slow.next().now_or_never() {
            got.push(matches!(delivery, Delivery::Lagged));
        }
        assert_eq!(got, [false, false, true]);
    }

    #[tokio::test]
    async fn unsubscribed_rooms_are_forgotten() {
        let bus = InProcessBus::new();
        let sub = bus.subscribe(&room("a")).await.expect("subscribes");
        assert_eq!(bus.subscribed_rooms(), 1);
        drop(sub);
        bus.publish(cursor("a", 1.0));
        assert_eq!(bus.subscribed_rooms(), 0);
        assert!(bus.rooms().is_empty());
    }

    #[tokio::test]
    async fn requests_go_to_the_handler_and_time_out() {
        let bus = InProcessBus::new();
        let fetch = RoomRequest::Fetch {
            room: room("a"),
            after: Seq(7),
            limit: 1,
        };
        assert_eq!(
            bus.request(fetch.clone(), Duration::from_secs(1)).await,
            Err(BusError::NoOwner)
        );
        bus.serve(Arc::new(Echo)).await.expect("serves");
        assert_eq!(
            bus.request(fetch, Duration::from_secs(5)).await,
            Ok(RoomReply::Ack { seq: Seq(7) })
        );
        let leave = RoomRequest::Leave {
            room: room("a"),
            conn: ConnRef {
                gateway: "g".into(),
                conn: ConnId::parse("c").expect("id"),
            },
            dropped: false,
        };
        assert_eq!(
            bus.request(leave, Duration::from_millis(10)).await,
            Err(BusError::Timeout)
        );
    }
}
