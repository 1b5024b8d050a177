//! Bodies of the HTTP API.

use serde::{Deserialize, Serialize};

use crate::error::ErrorCode;
use crate::frames::OpEvent;
use crate::ids::{Epoch, RoomId, Seq};
use crate::ops::RoomKind;

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

/// One room in `GET /v1/me/rooms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomSummary {
    pub id: RoomId,
    pub kind: RoomKind,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MyRooms {
    pub rooms: Vec<RoomSummary>,
}

/// `POST /v1/dev/token`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevTokenRequest {
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevTokenResponse {
    pub token: String,
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
