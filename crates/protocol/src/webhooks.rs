//! The body of a webhook delivery: what an app's backend receives (see
//! docs/integrate.md, "Receive and verify webhooks").
//!
//! Every event has an `id` unique to it and stable across redeliveries (a
//! receiver dedupes on it), a `type`, the room, and the `data` of its type.
//! Events of the log (`room.created`, `op.committed`, `room.deleted`) carry
//! the `seq` they stand at, and reach each endpoint in seq order per room.

use serde::{Deserialize, Serialize};

use crate::{OpEvent, RoomId, RoomKind, Seq, UserId, UserInfo};

/// One webhook event, as POSTed (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookEvent {
    /// Unique per event; the same in every delivery of it.
    pub id: String,
    /// `room.created`, `room.deleted`, `op.committed`, `member.joined` or
    /// `member.left`.
    #[serde(rename = "type")]
    pub kind: String,
    /// When it happened, in milliseconds since the Unix epoch (for ops:
    /// the op's `ts`).
    pub created_at: i64,
    pub room: RoomId,
    /// `None` when the room is gone and its kind unknown.
    pub room_kind: Option<RoomKind>,
    /// The event's place in the room's log: the op's seq, the tombstone's
    /// for `room.deleted`, the seq the log starts after for
    /// `room.created`; `None` for presence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<Seq>,
    pub data: WebhookData,
}

/// The part of an event that depends on its type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WebhookData {
    /// `op.committed`: the op exactly as members receive it in an `op` frame.
    Op(OpEvent),
    /// `room.created`.
    Room(RoomCreated),
    /// `member.joined`, `member.left`.
    Member { user: UserInfo },
    /// `room.deleted`: nothing more.
    Empty {},
}

/// `room.created`'s data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomCreated {
    pub name: String,
    pub created_by: UserId,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    pub private: bool,
}
