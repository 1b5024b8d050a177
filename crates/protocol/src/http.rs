//! Bodies of the HTTP API.

use serde::{Deserialize, Serialize};

use crate::error::ErrorCode;
use crate::frames::OpEvent;
use crate::ids::{Cid, ConnId, Epoch, NodeId, RoomId, Seq, UserId};
use crate::ops::{Op, RoomKind};

/// `POST /v1/rooms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateRoomRequest {
    pub kind: RoomKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Present: the room is private to these users and its creator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<String>>,
    /// Seconds the room may go unused before it is deleted with its
    /// history; 0: never. Absent: the server's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
}

/// The longest `ttl_secs` a room may have: ten years.
pub const MAX_ROOM_TTL_SECS: u64 = 10 * 366 * 24 * 3600;

/// `201` answer to `POST /v1/rooms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomCreated {
    pub id: RoomId,
    pub kind: RoomKind,
    pub name: String,
    pub epoch: Epoch,
}

/// `GET /v1/rooms/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomInfo {
    pub id: RoomId,
    pub kind: RoomKind,
    pub name: String,
    pub epoch: Epoch,
    pub head: Seq,
    /// Seconds the room may go unused before it is deleted; `null`: never.
    pub ttl_secs: Option<u64>,
}

/// `GET /v1/rooms/{id}/history`: newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryPage {
    pub ops: Vec<OpEvent>,
    pub next_before: Option<Seq>,
}

/// One room of a room listing (`GET /v1/rooms?member=me`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomSummary {
    pub id: RoomId,
    pub kind: RoomKind,
    pub name: String,
}

/// One page of `GET /v1/rooms?member=me` (and `GET /v1/me/rooms`): the
/// caller's rooms ordered by id; `next`, when set, is the `after` of the
/// next page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomsPageBody {
    pub rooms: Vec<RoomSummary>,
    #[serde(default)]
    pub next: Option<String>,
}

/// Room listing page size bounds.
pub const ROOMS_DEFAULT_LIMIT: u32 = 100;
pub const ROOMS_MAX_LIMIT: u32 = 500;

/// `PATCH /v1/rooms/{id}`: what to change; absent fields stay.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateRoomRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<MembersChange>,
}

/// The members a `PATCH` adds to and removes from a private room.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MembersChange {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// `POST /v1/rooms/{id}/kick`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KickRequest {
    pub user: String,
}

/// The answer to `PATCH /v1/rooms/{id}`: the room as it is now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomUpdated {
    pub id: RoomId,
    pub kind: RoomKind,
    pub name: String,
    pub epoch: Epoch,
    pub created_by: UserId,
    /// The members of a private room, its creator included; `null` for a
    /// public room.
    pub members: Option<Vec<UserId>>,
}

/// `POST /v1/dev/token`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevTokenRequest {
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The token's `scope` claim (`"admin"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Seconds the token lives, 1 to [`DEV_TOKEN_MAX_TTL_SECS`] (the
    /// default): a short one tries out token refresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
}

/// The longest, and default, lifetime of a dev token: a day.
pub const DEV_TOKEN_MAX_TTL_SECS: u64 = 24 * 60 * 60;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevTokenResponse {
    pub token: String,
}

/// `GET /v1/admin/rooms/{id}`: a room as its owner sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminRoom {
    pub id: RoomId,
    pub kind: RoomKind,
    pub name: String,
    pub epoch: Epoch,
    pub head: Seq,
    /// Loaded by a room actor now.
    pub live: bool,
    /// The node serving the room (or, when it is not live, the node that
    /// would load it on its next request); `None` when no node owns it.
    pub owner: Option<RoomOwner>,
    /// Every connection in the room.
    pub members: Vec<RoomMember>,
    /// Requests waiting in the room's mailbox.
    pub mailbox_depth: u64,
    /// The room's newest op.
    pub last_commit: Option<LastCommit>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomOwner {
    pub node: NodeId,
    /// The owning actor's term; `None` while the room is not live.
    pub term: Option<u64>,
}

/// One connection in a room, and the gateway that holds it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RoomMember {
    pub user: UserId,
    pub name: String,
    pub conn: ConnId,
    pub gateway: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastCommit {
    pub seq: Seq,
    /// When it was committed: its `ts`, milliseconds since the Unix epoch.
    pub at: i64,
}

/// `GET /v1/admin/cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminCluster {
    pub mode: ClusterMode,
    /// One entry per member and role, by node id.
    pub members: Vec<ClusterMember>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterMode {
    /// `collab serve`: one process, one node.
    Serve,
    /// Gateways and room nodes over NATS.
    Cluster,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMember {
    pub node: NodeId,
    pub role: MemberRole,
    /// This run of the member.
    pub instance: String,
    /// Rooms live on a room node; `None` for a gateway, or a member that
    /// does not report it.
    pub rooms: Option<u64>,
    /// Open WebSocket connections of a gateway; `None` for a room node, or
    /// a member that does not report it.
    pub connections: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    Gateway,
    RoomNode,
}

/// `POST /v1/admin/revocations`: either `jti` (one token), or `user` with
/// an optional `issued_before` (every token of the user issued before it;
/// default: now).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RevocationRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_before: Option<u64>,
}

/// The answer to `POST /v1/admin/revocations`: what is now refused, and
/// until when the revocation is kept (seconds since the Unix epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Revoked {
    /// The token whose `jti` this is.
    Token { jti: String, expires_at: u64 },
    /// Every token of `user` issued before `issued_before`, and every token
    /// of `user` without `iat`.
    User {
        user: UserId,
        issued_before: u64,
        expires_at: u64,
    },
}

/// `GET /v1/users/{id}/presence`: where a user is online, across the
/// gateways.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserPresence {
    pub user: UserId,
    pub online: bool,
    /// Open WebSocket connections, on every gateway.
    pub connections: u32,
    /// The gateways that hold them, sorted.
    pub gateways: Vec<String>,
    /// The rooms they have joined, sorted.
    pub rooms: Vec<RoomId>,
}

/// `GET /v1/rooms/{id}/presence`: who is in a room now, as the room sees
/// it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomPresence {
    pub room: RoomId,
    /// One entry per user, sorted by id.
    pub users: Vec<PresentUser>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresentUser {
    pub id: UserId,
    pub name: String,
    /// `#rrggbb`, as in `welcome`.
    pub color: String,
    /// The user's connections in the room.
    pub connections: u32,
}

/// One op of `POST /v1/rooms/{id}/ops`: the `cid` and `op` of the
/// WebSocket `op` frame (the room is in the path).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishOp {
    pub cid: Cid,
    pub op: Op,
}

/// The most ops one `POST /v1/rooms/{id}/ops` may carry.
pub const PUBLISH_MAX_OPS: usize = 100;

/// A committed op of `POST /v1/rooms/{id}/ops`: its `cid` and the `seq` the
/// room gave it (the first time, for a retried `cid`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub cid: Cid,
    pub seq: Seq,
}

/// The answer to a list: the ops committed, in order. On an error it goes
/// beside `error` and lists the ops before the one that failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedList {
    pub ops: Vec<Published>,
}

/// Every HTTP error: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpError {
    pub error: HttpErrorBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

/// History page size bounds.
pub const HISTORY_DEFAULT_LIMIT: u32 = 100;
pub const HISTORY_MAX_LIMIT: u32 = 500;
