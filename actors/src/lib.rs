//! The room: the one place where a room's ops are ordered and applied.
//!
//! [`state::RoomState`] is the room's logic as a pure, synchronous state
//! machine: given a request from a user it returns the op event to commit or
//! the protocol error, and it replays committed events to rebuild itself from
//! a snapshot and the log. It does no I/O and reads no clock.
//! [`room::RoomActor`] (ractor) wraps one room's state, owns its commit path
//! and talks to the store; [`room::RoomSupervisor`] starts, restarts and
//! stops room actors. Events leave through [`room::EventSink`], which the
//! room node wires to the bus.

mod recent;
pub mod room;
pub mod state;
