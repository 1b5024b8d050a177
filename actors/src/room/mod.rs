//! The room actor, its supervisor and what they need from outside.

mod actor;
mod config;
mod metrics;
mod sink;
mod supervisor;
#[cfg(test)]
mod tests;
mod usage;

pub use actor::{Load, LoadedRoom, RoomActor, RoomArgs, RoomContext, RoomMsg, load_room};
pub use config::RoomConfig;
pub use metrics::{RoomMetrics, Takeover};
pub use sink::EventSink;
pub use supervisor::{Ownership, RoomRouter, RoomSupervisor, Rooms, SupervisorMsg};
pub use usage::{Expiry, RoomUse, Unobserved};
