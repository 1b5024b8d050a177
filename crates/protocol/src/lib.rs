//! The wire contract of collab, as typed Rust.
//!
//! Everything that crosses a process boundary lives here: the WebSocket
//! frames in both directions, the durable op kinds, the id newtypes, the
//! limits, the error codes with their HTTP statuses, the JWT claims and the
//! HTTP bodies. Validation is one function per rule, each returning the
//! error code the protocol prescribes; [`validate::validate_op`] applies them
//! in the protocol's precedence order. This crate depends on nothing else of
//! ours, so every other crate can share its vocabulary.

pub mod claims;
pub mod color;
pub mod envelope;
pub mod error;
pub mod frames;
pub mod http;
pub mod ids;
pub mod limits;
pub mod ops;
pub mod subjects;
pub mod validate;
pub mod webhooks;

pub use claims::{Access, Claims, Scope};
pub use error::{ErrorCode, ProtocolError};
pub use frames::{ClientFrame, JoinedBody, OpEvent, PresenceEvent, ServerFrame, UserInfo};
pub use ids::{Cid, ConnId, Epoch, NodeId, RoomId, Seq, StrokeId, UserId};
pub use limits::Limits;
pub use ops::{Op, OpKind, Point, RoomKind};
