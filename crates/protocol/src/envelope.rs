//! What gateways and room nodes say to each other over the bus: requests to
//! a room's owner with their replies, and the events a room publishes to
//! every gateway that has members in it.
//!
//! These travel in-process in `collab serve` and as JSON over NATS in a
//! cluster, so they are plain serde types like the frames.

use serde::{Deserialize, Serialize};

use crate::claims::Access;
use crate::error::{ErrorCode, ProtocolError};
use crate::frames::{JoinedBody, OpEvent, PresenceEvent, UserInfo};
use crate::http::{LastCommit, RoomMember, RoomUpdated};
use crate::ids::{Cid, ConnId, Epoch, NodeId, RoomId, Seq, UserId};
use crate::ops::Op;

/// A client connection, named by its gateway and its id there.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConnRef {
    pub gateway: String,
    pub conn: ConnId,
}

/// A request for a room's owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RoomRequest {
    /// A connection joins (the gateway has checked the token's claim). The
    /// owner checks existence and membership and answers `Joined`.
    Join {
        room: RoomId,
        conn: ConnRef,
        user: UserInfo,
        since: Option<u64>,
        epoch: Option<Epoch>,
        /// The join asked for its open strokes to outlive a dropped
        /// connection for a grace period (`resume_strokes`).
        #[serde(default)]
        resume_strokes: bool,
    },
    /// A connection leaves; answered `Done`.
    Leave {
        room: RoomId,
        conn: ConnRef,
        /// The connection ended rather than sending `leave`: if it joined
        /// with `resume_strokes`, its user's open strokes wait for the grace.
        #[serde(default)]
        dropped: bool,
    },
    /// A joined connection has been silent too long: it leaves the room's
    /// presence (the others hear it left; its open strokes are treated as
    /// after a drop) but stays joined, and `Attach` puts it back when it is
    /// heard from again; answered `Done`.
    Away { room: RoomId, conn: ConnRef },
    /// Puts a connection that joined earlier back into the room's presence,
    /// after the room restarted or moved and so forgot it (the owner said
    /// `NotJoined`); answered `Done`, with no `joined` body: the gateway's
    /// stream of the room never stopped. A connection the room saw leave
    /// is not put back (a re-attach can arrive after its `Leave`); it
    /// joins again instead.
    Attach {
        room: RoomId,
        conn: ConnRef,
        user: UserInfo,
        /// As its `Join` asked.
        #[serde(default)]
        resume_strokes: bool,
    },
    /// A durable op from a joined connection; answered `Ack` once durable.
    Op {
        room: RoomId,
        conn: ConnRef,
        user: UserId,
        access: Access,
        cid: Cid,
        op: Op,
    },
    /// A durable op published over HTTP by a backend (a token with the
    /// `service` scope, checked by the gateway): like `Op`, but from no
    /// connection, so the room's presence is not asked. Answered `Ack`
    /// once durable; a `cid` the room already applied for `user` is
    /// re-acked with its seq. A node that does not know this request (an
    /// older version) answers `bad_request`, as any undecodable request.
    Publish {
        room: RoomId,
        user: UserId,
        cid: Cid,
        op: Op,
    },
    /// Committed ops with `seq > after`, oldest first, for a gateway that
    /// saw a gap; answered `Ops`.
    Fetch {
        room: RoomId,
        after: Seq,
        limit: u32,
    },
    /// Delete the room with its history (the gateway has checked that the
    /// caller may); answered `Done` once it is deleted, `not_found` when
    /// there is no such room (or, with `epoch`, not with that epoch: a
    /// room created since under the same id is not the one the caller
    /// meant). Ops that reached the owner before it are committed first;
    /// every member left is sent `Deleted`. A node that does not know this
    /// request (an older version) answers `bad_request`, as any
    /// undecodable request.
    Delete {
        room: RoomId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<Epoch>,
    },
    /// Change the room's name and members (the gateway has checked that
    /// the caller may): ordered with the room's ops and joins, durable
    /// before it is answered `Updated`. `remove` lists users to take out of
    /// the room now (a kick, or members removed): once durable, their
    /// connections leave the room's presence and every gateway is sent
    /// `Removed`, and they cannot join while not members. `add` and
    /// `remove` are for private rooms only (`bad_request` otherwise, as is
    /// removing the creator); a user in both ends up removed. `not_found`
    /// as for `Delete`. A node that does not know this request (an older
    /// version) answers `bad_request`, as any undecodable request.
    Update {
        room: RoomId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<Epoch>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        add: Vec<UserId>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        remove: Vec<UserId>,
    },
    /// What the owner knows of the room, for an operator; answered
    /// `Inspected`. It never loads a room that is not live. A node that
    /// does not know this request (an older version) answers it with a
    /// `bad_request` error, as any undecodable request.
    Inspect { room: RoomId },
}

impl RoomRequest {
    pub fn room(&self) -> &RoomId {
        match self {
            RoomRequest::Join { room, .. }
            | RoomRequest::Leave { room, .. }
            | RoomRequest::Away { room, .. }
            | RoomRequest::Attach { room, .. }
            | RoomRequest::Op { room, .. }
            | RoomRequest::Publish { room, .. }
            | RoomRequest::Fetch { room, .. }
            | RoomRequest::Delete { room, .. }
            | RoomRequest::Update { room, .. }
            | RoomRequest::Inspect { room } => room,
        }
    }
}

/// The owner's answer to a [`RoomRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RoomReply {
    Joined(JoinedBody),
    Ack {
        seq: Seq,
    },
    Ops {
        ops: Vec<OpEvent>,
    },
    Done,
    Inspected(RoomInspection),
    /// The answer to `Update`: the room as it is now.
    Updated(RoomUpdated),
    /// The op's connection is not in the room's presence: the room
    /// restarted or moved since it joined. The gateway re-attaches it
    /// (`Attach`) and the client retries with the same `cid`.
    NotJoined,
    Error {
        code: ErrorCode,
        message: String,
    },
}

/// The owner's view of a room (the answer to `Inspect`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomInspection {
    /// The answering node; `None` when it does not own the room (it is
    /// moving, or the node is going away).
    pub node: Option<NodeId>,
    /// The room is loaded by an actor on the answering node. Everything
    /// below is only known then.
    pub live: bool,
    /// The actor's ownership term.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
    /// The last committed seq.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<Seq>,
    /// Every connection in the room's presence, sorted.
    #[serde(default)]
    pub members: Vec<RoomMember>,
    /// Requests routed to the room and not yet taken in.
    #[serde(default)]
    pub mailbox_depth: u64,
    /// The newest op the actor committed or holds in its tail; `None`
    /// right after a load (the log has it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_commit: Option<LastCommit>,
}

impl RoomInspection {
    /// The answer for a room that is not live on `node`.
    pub fn not_live(node: Option<NodeId>) -> Self {
        RoomInspection {
            node,
            live: false,
            term: None,
            head: None,
            members: Vec::new(),
            mailbox_depth: 0,
            last_commit: None,
        }
    }
}

impl From<ProtocolError> for RoomReply {
    fn from(e: ProtocolError) -> Self {
        RoomReply::Error {
            code: e.code,
            message: e.message,
        }
    }
}

/// Something that happened in a room, for every gateway with members there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RoomEvent {
    /// A committed op. Gateways deliver these in `seq` order, without gaps.
    Op(OpEvent),
    /// A user came or went. Not sent to `origin`, the connection whose join
    /// or leave caused it.
    Presence {
        room: RoomId,
        event: PresenceEvent,
        user: UserInfo,
        origin: Option<ConnRef>,
    },
    /// A pointer moved; never echoed to `origin`.
    Cursor {
        room: RoomId,
        user: UserId,
        x: f64,
        y: f64,
        origin: ConnRef,
    },
    CursorLeave {
        room: RoomId,
        user: UserId,
        origin: ConnRef,
    },
    /// An owner loaded the room afresh (it started, or the room moved to
    /// it) and knows none of its members: every gateway re-attaches its
    /// members of the room. Not shown to clients.
    Loaded { room: RoomId },
    /// The room was deleted: every gateway tells its members (an `error`
    /// frame with code `not_found` for the room) and drops them, and the
    /// room publishes nothing more. A gateway that does not know this event
    /// (an older version) drops it as undecodable; its members then hear
    /// `not_found` on their next op.
    Deleted { room: RoomId },
    /// These users were taken out of the room (`Update` with `remove`):
    /// every gateway sends each of their connections in the room an
    /// `error` frame with code `forbidden` for the room and drops it from
    /// the room, as if it had sent `leave`. A gateway that does not know
    /// this event (an older version) drops it as undecodable; the room has
    /// taken the connections out of its presence anyway, so their next op
    /// is refused.
    Removed { room: RoomId, users: Vec<UserId> },
}

impl RoomEvent {
    pub fn room(&self) -> &RoomId {
        match self {
            RoomEvent::Op(op) => &op.room,
            RoomEvent::Presence { room, .. }
            | RoomEvent::Cursor { room, .. }
            | RoomEvent::CursorLeave { room, .. }
            | RoomEvent::Loaded { room }
            | RoomEvent::Deleted { room }
            | RoomEvent::Removed { room, .. } => room,
        }
    }
}
