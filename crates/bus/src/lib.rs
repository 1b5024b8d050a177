//! How gateways and room nodes talk.
//!
//! The [`Bus`] carries two things, shaped after NATS so the cluster can swap
//! in a NATS implementation without touching either side:
//! - requests to a room's owner with one reply each ([`Bus::request`],
//!   served by the owner's [`RequestHandler`]);
//! - a per-room event stream ([`Bus::publish`], [`Bus::subscribe`]) that a
//!   gateway subscribes to before it asks for `joined`. Delivery is
//!   at-most-once, so a subscriber that falls behind is told
//!   ([`Delivery::Lagged`]) and op events carry their `seq`: a gateway
//!   detects every gap and fetches what it missed from the owner.
//!
//! [`InProcessBus`] is the implementation `collab serve` uses; [`NatsBus`]
//! carries the same traffic between the processes of a cluster, routing
//! each request to its room's owner by [`placement`] over the live room
//! nodes of the [`membership`] registry. Its subjects, headers and payloads
//! are defined in `collab_protocol::subjects`. Each process also counts
//! what it holds ([`Load`]) for the operators' cluster view; a cluster
//! member announces the figures in its membership record.

mod in_process;
mod load;
pub mod membership;
pub mod metrics;
mod nats;
pub mod placement;
#[cfg(feature = "testsuite")]
pub mod testsuite;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use collab_protocol::RoomId;
use collab_protocol::envelope::{RoomEvent, RoomReply, RoomRequest};
use tokio::sync::watch;

pub use in_process::InProcessBus;
pub use load::{Count, Figure, Load};
pub use membership::Members;
pub use metrics::BusMetrics;
pub use nats::{NatsBus, NatsBusConfig, NatsBusError};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// No node serves the room right now (starting, moving, or down).
    #[error("no owner for the room")]
    NoOwner,
    /// The owner did not answer in time: the request may or may not have
    /// been carried out.
    #[error("the room's owner did not answer in time")]
    Timeout,
    #[error("bus closed")]
    Closed,
}

/// A reply on its way.
pub type ReplyFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Serves the requests sent to this node's rooms.
pub trait RequestHandler: Send + Sync + 'static {
    /// Takes `request` in (before returning, so requests are handled in the
    /// order they arrive) and returns the future of its reply.
    fn handle(&self, request: RoomRequest) -> ReplyFuture<RoomReply>;
}

/// What a room subscription yields.
#[derive(Debug, Clone)]
pub enum Delivery {
    Event(Arc<RoomEvent>),
    /// Events may have been dropped — this subscriber fell behind, the
    /// connection to the cluster was lost for a while, or the room got a
    /// new owner: treat it as a gap and fetch the missing ops.
    Lagged,
}

/// A stream of one room's events.
#[async_trait]
pub trait EventStream: Send {
    /// The next delivery; `None` once the bus is closed.
    async fn next(&mut self) -> Option<Delivery>;
}

/// A room subscription; dropping it unsubscribes.
pub struct Subscription {
    stream: Box<dyn EventStream>,
}

impl Subscription {
    pub fn new(stream: Box<dyn EventStream>) -> Self {
        Subscription { stream }
    }

    pub async fn next(&mut self) -> Option<Delivery> {
        self.stream.next().await
    }
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Sends `request` to the owner of its room now, and returns the future
    /// of its reply (waiting at most `timeout`). Requests one caller sends
    /// reach the owner in the order of the calls: a client's `join`, then
    /// its ops, arrive as sent.
    fn request(
        &self,
        request: RoomRequest,
        timeout: Duration,
    ) -> ReplyFuture<Result<RoomReply, BusError>>;

    /// Publishes an event to the subscribers of its room. Never blocks;
    /// events of one publisher reach each subscriber in order.
    fn publish(&self, event: RoomEvent);

    /// Publishes an event of a room this node owns, stamped with the
    /// owner's `term` for the room, so subscribers can drop events of an
    /// owner that has been replaced. A single-process bus has one owner per
    /// room and ignores the term.
    fn publish_owned(&self, event: RoomEvent, term: u64) {
        let _ = term;
        self.publish(event);
    }

    /// Subscribes to a room's events from now on.
    async fn subscribe(&self, room: &RoomId) -> Result<Subscription, BusError>;

    /// Serves the requests for this node's rooms with `handler`.
    async fn serve(&self, handler: Arc<dyn RequestHandler>) -> Result<(), BusError>;

    /// Whether the bus can carry traffic (for readiness).
    fn is_ready(&self) -> bool;

    /// The live members of the cluster, updated as they come and go: a room
    /// node uses it to notice it no longer owns a room, a gateway that a
    /// room moved or that a gateway died. `None` for a single-process bus,
    /// whose one node owns every room.
    fn members(&self) -> Option<watch::Receiver<Members>> {
        None
    }

    /// Where this process's room node and gateway say how to count what
    /// they hold (rooms live, connections open), and where the cluster
    /// view reads it. `None` for a bus that reports no load.
    fn load(&self) -> Option<&Load> {
        None
    }

    /// Since when this member has been cut off from the cluster — its
    /// membership heartbeats fail; the instant is the last one that
    /// landed — or `None` while they land. A gateway cut off for long
    /// closes its sockets so that its clients resume elsewhere. `None` for
    /// a single-process bus, which is never cut off.
    fn cut_off(&self) -> Option<watch::Receiver<Option<std::time::Instant>>> {
        None
    }

    /// Leaves the cluster at once (rather than when its membership record
    /// expires): stops announcing and serving this node. Nothing to do for
    /// a single-process bus.
    async fn leave(&self) {}
}
