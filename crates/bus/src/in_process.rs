//! The bus inside one process: requests are direct calls to the one room
//! node's handler; each room's events go through a bounded broadcast
//! channel, and a subscriber that falls behind by more than its capacity
//! gets [`Delivery::Lagged`] instead of stalling the publisher.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use collab_protocol::RoomId;
use collab_protocol::envelope::{RoomEvent, RoomReply, RoomRequest};
use tokio::sync::broadcast;

use crate::{Bus, BusError, Delivery, EventStream, ReplyFuture, RequestHandler, Subscription};

/// Events a room subscriber may fall behind by before it lags.
pub const DEFAULT_ROOM_CAPACITY: usize = 4096;

pub struct InProcessBus {
    handler: RwLock<Option<Arc<dyn RequestHandler>>>,
    rooms: Mutex<HashMap<RoomId, broadcast::Sender<Arc<RoomEvent>>>>,
    capacity: usize,
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
        }
    }

    fn rooms(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<RoomId, broadcast::Sender<Arc<RoomEvent>>>> {
        // The map holds no invariant a panic could break mid-update.
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Rooms with at least one subscriber.
    pub fn subscribed_rooms(&self) -> usize {
        self.rooms()
            .values()
            .filter(|tx| tx.receiver_count() > 0)
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
        let Some(tx) = rooms.get(&room) else {
            return;
        };
        if tx.send(Arc::new(event)).is_err() {
            // Nobody listens any more: forget the room.
            rooms.remove(&room);
        }
    }

    async fn subscribe(&self, room: &RoomId) -> Result<Subscription, BusError> {
        let rx = self
            .rooms()
            .entry(room.clone())
            .or_insert_with(|| broadcast::channel(self.capacity).0)
            .subscribe();
        Ok(Subscription::new(Box::new(BroadcastStream { rx })))
    }

    async fn serve(&self, handler: Arc<dyn RequestHandler>) -> Result<(), BusError> {
        *self.handler.write().unwrap_or_else(|p| p.into_inner()) = Some(handler);
        Ok(())
    }

    fn is_ready(&self) -> bool {
        true
    }
}

struct BroadcastStream {
    rx: broadcast::Receiver<Arc<RoomEvent>>,
}

#[async_trait]
impl EventStream for BroadcastStream {
    async fn next(&mut self) -> Option<Delivery> {
        match self.rx.recv().await {
            Ok(event) => Some(Delivery::Event(event)),
            Err(broadcast::error::RecvError::Lagged(_)) => Some(Delivery::Lagged),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use collab_protocol::envelope::ConnRef;
    use collab_protocol::{ConnId, Seq, UserId};

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
        assert!(matches!(slow.next().await, Some(Delivery::Lagged)));
        // After the lag it continues with what is still buffered.
        assert!(matches!(slow.next().await, Some(Delivery::Event(_))));
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
        };
        assert_eq!(
            bus.request(leave, Duration::from_millis(10)).await,
            Err(BusError::Timeout)
        );
    }
}
