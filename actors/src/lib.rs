//! The room: the one place where a room's ops are ordered and applied.
//!
//! [`state::RoomState`] is the room's logic as a pure, synchronous state
//! machine: given a request from a user it returns the op event to commit or
//! the protocol error, and it replays committed events to rebuild itself from
//! a snapshot and the log. It does no I/O and reads no clock. The room actor
//! and its supervisor (which wrap it, own its commit path and talk to the
//! store) build on it.

pub mod state;
