//! WebSocket frames in both directions: one JSON object per text frame,
//! tagged by `type`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{ErrorCode, ProtocolError};
use crate::ids::{Cid, ConnId, Epoch, RoomId, Seq, StrokeId, UserId};
use crate::ops::{Op, Point, RoomKind};

mod fast;

// === client → server ===

/// A frame a client sends.
// Like `Op`: the derived code stays inherent so a numeric `type` can be
// refused before serde takes it as a variant index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self", tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Subscribe to a room, optionally resuming after `since` in `epoch`.
    Join {
        room: RoomId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<Epoch>,
        /// If this connection drops, keep the sender's open strokes open
        /// for the room's grace period, so a reconnect can go on drawing
        /// them instead of starting new ones.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        resume_strokes: bool,
    },
    Leave {
        room: RoomId,
    },
    /// A durable op in a joined room.
    Op {
        room: RoomId,
        cid: Cid,
        op: Op,
    },
    Cursor {
        room: RoomId,
        x: f64,
        y: f64,
    },
    CursorLeave {
        room: RoomId,
    },
    Ping {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
    },
    /// A new token for the same user, presented on the open connection:
    /// from then on its expiry and its room permissions apply.
    Refresh {
        token: String,
    },
}

impl Serialize for ClientFrame {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        ClientFrame::serialize(self, serializer)
    }
}

impl<'de> Deserialize<'de> for ClientFrame {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        require_string_tag(&value, "type")?;
        ClientFrame::deserialize(value).map_err(serde::de::Error::custom)
    }
}

/// The protocol's tagged values are JSON objects whose tag is a string.
/// Serde's derive would also take a sequence (its fields in order) and read
/// a numeric tag as the index of a variant.
pub(crate) fn require_string_tag<E: serde::de::Error>(value: &Value, tag: &str) -> Result<(), E> {
    let Some(object) = value.as_object() else {
        return Err(E::custom("expected a JSON object"));
    };
    match object.get(tag) {
        Some(Value::String(_)) | None => Ok(()),
        Some(_) => Err(E::custom(format!("\"{tag}\" must be a string"))),
    }
}

impl ClientFrame {
    pub fn room(&self) -> Option<&RoomId> {
        match self {
            ClientFrame::Join { room, .. }
            | ClientFrame::Leave { room }
            | ClientFrame::Op { room, .. }
            | ClientFrame::Cursor { room, .. }
            | ClientFrame::CursorLeave { room } => Some(room),
            ClientFrame::Ping { .. } | ClientFrame::Refresh { .. } => None,
        }
    }
}

/// A frame that could not be decoded, with what is known of its context so
/// the `error` frame can name the room and `cid` it concerns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct DecodeError {
    pub error: ProtocolError,
    pub room: Option<String>,
    pub cid: Option<String>,
}

const CLIENT_TYPES: [&str; 7] = [
    "join",
    "leave",
    "op",
    "cursor",
    "cursor_leave",
    "ping",
    "refresh",
];

/// Decodes one text frame from a client. Anything that is not a JSON object
/// of a known `type` with fields of the right types is `bad_request`.
/// Never panics, whatever the input.
pub fn decode_client_frame(text: &str) -> Result<ClientFrame, DecodeError> {
    // The fast path skips the `Value` tree of the derived code for the
    // frames it is sure of, and returns exactly what the Value path would;
    // everything else, every bad frame included, takes the Value path, so
    // the errors stay its own.
    match fast::decode(text) {
        Some(frame) => Ok(frame),
        None => decode_client_frame_via_value(text),
    }
}

/// [`decode_client_frame`] without its fast path: every frame through a
/// `serde_json::Value` and the derived code. The fast path's fallback, and
/// its reference in the tests and the benchmark.
#[doc(hidden)]
pub fn decode_client_frame_via_value(text: &str) -> Result<ClientFrame, DecodeError> {
    match serde_json::from_str::<ClientFrame>(text) {
        Ok(frame) => Ok(frame),
        // The slow path only runs for bad input: parse loosely to explain
        // the error and to recover the room and cid it concerns.
        Err(typed) => Err(explain_decode_error(text, &typed)),
    }
}

fn explain_decode_error(text: &str, typed: &serde_json::Error) -> DecodeError {
    let value = match serde_json::from_str::<Value>(text) {
        Ok(value) => value,
        Err(_) => return bare(ProtocolError::bad_request("frame is not valid JSON")),
    };
    let Some(object) = value.as_object() else {
        return bare(ProtocolError::bad_request("frame must be a JSON object"));
    };
    let text_field = |name: &str| object.get(name).and_then(Value::as_str).map(str::to_owned);
    let (room, cid) = (text_field("room"), text_field("cid"));
    let message = match object.get("type") {
        None => "frame has no \"type\"".to_owned(),
        Some(Value::String(t)) if !CLIENT_TYPES.contains(&t.as_str()) => {
            format!("unknown frame type {t:?}")
        }
        Some(Value::String(_)) => match object.get("op").and_then(|op| op.get("kind")) {
            Some(Value::String(kind))
                if object.get("type") == Some(&Value::from("op"))
                    && kind.parse::<crate::ops::OpKind>().is_err() =>
            {
                format!("unknown op kind {kind:?}")
            }
            _ => format!("invalid frame: {}", strip_position(typed)),
        },
        Some(_) => "\"type\" must be a string".to_owned(),
    };
    DecodeError {
        error: ProtocolError::new(ErrorCode::BadRequest, message),
        room,
        cid,
    }
}

/// serde_json appends "at line 1 column 42"; the position means nothing to
/// a client that sent one frame.
fn strip_position(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

fn bare(error: ProtocolError) -> DecodeError {
    DecodeError {
        error,
        room: None,
        cid: None,
    }
}

// === server → client ===

/// A user as others see it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UserInfo {
    pub id: UserId,
    pub name: String,
    /// `#rrggbb`, derived from the user id.
    pub color: String,
}

/// A committed op as every member receives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpEvent {
    pub room: RoomId,
    pub seq: Seq,
    pub user: UserId,
    /// Milliseconds since the Unix epoch, assigned by the room.
    pub ts: i64,
    /// `None` for ops the server made itself (ending an orphaned stroke).
    pub cid: Option<Cid>,
    pub op: Op,
}

/// A stroke in the room state sent with `joined`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StrokeView {
    pub id: StrokeId,
    pub user: UserId,
    pub color: String,
    pub width: f64,
    pub points: Vec<Point>,
    pub done: bool,
}

/// The full visible state of a room.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RoomView {
    /// Visible strokes in the order of their `stroke_begin`.
    pub strokes: Vec<StrokeView>,
    /// The last messages, oldest first, each exactly as its `op` frame
    /// (with `"type": "op"`).
    #[serde(serialize_with = "as_op_frames")]
    pub messages: Vec<OpEvent>,
}

fn as_op_frames<S: serde::Serializer>(ops: &[OpEvent], serializer: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;

    /// An op event with the `type` tag of its frame.
    #[derive(Serialize)]
    struct Tagged<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(flatten)]
        event: &'a OpEvent,
    }
    let mut seq = serializer.serialize_seq(Some(ops.len()))?;
    for event in ops {
        seq.serialize_element(&Tagged { kind: "op", event })?;
    }
    seq.end()
}

/// The body of a `joined` frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinedBody {
    pub room: RoomId,
    pub kind: RoomKind,
    pub epoch: Epoch,
    pub head: Seq,
    pub presence: Vec<UserInfo>,
    /// `true`: `state` replaces everything; `false`: apply `ops`.
    pub reset: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<RoomView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<Vec<OpEvent>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceEvent {
    Join,
    Leave,
}

/// A frame the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Welcome {
        user: UserInfo,
        conn: ConnId,
    },
    Joined(JoinedBody),
    Op(OpEvent),
    Ack {
        room: RoomId,
        cid: Cid,
        seq: Seq,
    },
    Cursor {
        room: RoomId,
        user: UserId,
        x: f64,
        y: f64,
    },
    CursorLeave {
        room: RoomId,
        user: UserId,
    },
    Presence {
        room: RoomId,
        event: PresenceEvent,
        user: UserInfo,
    },
    Error {
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cid: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<String>,
    },
    Pong {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
    },
    /// The token in force expires at `exp` (seconds since the Unix epoch):
    /// send `refresh` before then, or the connection closes with 4001.
    /// Sent once per token, a configured lead before `exp` (at once when
    /// the token lives less than that).
    TokenExpiring {
        exp: u64,
    },
    /// The answer to an accepted `refresh`: the new token is in force and
    /// expires at `exp`.
    Refreshed {
        exp: u64,
    },
}

impl ServerFrame {
    /// An `error` frame for a broken rule, naming the room and cid.
    pub fn error(error: &ProtocolError, room: Option<&str>, cid: Option<&str>) -> ServerFrame {
        ServerFrame::Error {
            code: error.code,
            message: error.message.clone(),
            cid: cid.map(str::to_owned),
            room: room.map(str::to_owned),
        }
    }

    pub fn from_decode_error(error: &DecodeError) -> ServerFrame {
        Self::error(&error.error, error.room.as_deref(), error.cid.as_deref())
    }

    /// The JSON text of the frame.
    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: all map keys are strings and
        // every float was checked finite on the way in.
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(r#"{{"type":"error","code":"internal","message":"encode: {e}"}}"#)
        })
    }
}

#[cfg(test)]
mod tests;
