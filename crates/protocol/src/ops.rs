//! Durable op kinds and room kinds.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::ProtocolError;
use crate::ids::StrokeId;

/// An `[x, y]` pair; both must be finite.
pub type Point = [f64; 2];

/// The kind of a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomKind {
    /// A whiteboard: strokes, undo/redo, and chat.
    Board,
    /// A chat channel (a direct message is a private channel of two).
    Channel,
}

impl RoomKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RoomKind::Board => "board",
            RoomKind::Channel => "channel",
        }
    }
}

impl fmt::Display for RoomKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A durable operation, the `op` field of an `op` frame.
///
/// For `undo` and `redo` the client sends no stroke; the server resolves it
/// and the broadcast carries it in `stroke`.
// `remote = "Self"` keeps the derived code as inherent functions, so the
// trait impls below can refuse a numeric `kind` (serde's derive would take
// it as a variant index).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self", tag = "kind", rename_all = "snake_case")]
pub enum Op {
    StrokeBegin {
        stroke: StrokeId,
        color: String,
        width: f64,
        #[serde(default)]
        points: Vec<Point>,
    },
    StrokePoints {
        stroke: StrokeId,
        points: Vec<Point>,
    },
    StrokeEnd {
        stroke: StrokeId,
    },
    Undo {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stroke: Option<StrokeId>,
    },
    Redo {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stroke: Option<StrokeId>,
    },
    Message {
        text: String,
    },
}

impl Serialize for Op {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Op::serialize(self, serializer)
    }
}

impl<'de> Deserialize<'de> for Op {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        crate::frames::require_string_tag(&value, "kind")?;
        Op::deserialize(value).map_err(serde::de::Error::custom)
    }
}

impl Op {
    pub fn kind(&self) -> OpKind {
        match self {
            Op::StrokeBegin { .. } => OpKind::StrokeBegin,
            Op::StrokePoints { .. } => OpKind::StrokePoints,
            Op::StrokeEnd { .. } => OpKind::StrokeEnd,
            Op::Undo { .. } => OpKind::Undo,
            Op::Redo { .. } => OpKind::Redo,
            Op::Message { .. } => OpKind::Message,
        }
    }

    /// The points the op carries, if any.
    pub fn points(&self) -> &[Point] {
        match self {
            Op::StrokeBegin { points, .. } | Op::StrokePoints { points, .. } => points,
            _ => &[],
        }
    }
}

/// The kind tag of an [`Op`], for filters and metrics labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    StrokeBegin,
    StrokePoints,
    StrokeEnd,
    Undo,
    Redo,
    Message,
}

impl OpKind {
    pub const ALL: [OpKind; 6] = [
        OpKind::StrokeBegin,
        OpKind::StrokePoints,
        OpKind::StrokeEnd,
        OpKind::Undo,
        OpKind::Redo,
        OpKind::Message,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::StrokeBegin => "stroke_begin",
            OpKind::StrokePoints => "stroke_points",
            OpKind::StrokeEnd => "stroke_end",
            OpKind::Undo => "undo",
            OpKind::Redo => "redo",
            OpKind::Message => "message",
        }
    }

    /// A stable one-byte code, for storage keys.
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<OpKind> {
        OpKind::ALL.get(usize::from(code)).copied()
    }

    /// Stroke ops, undo and redo only make sense on a board.
    pub fn is_board_only(self) -> bool {
        !matches!(self, OpKind::Message)
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OpKind {
    type Err = ProtocolError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OpKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| ProtocolError::bad_request(format!("unknown op kind {s:?}")))
    }
}

/// Parses the history endpoint's `kinds` parameter: a comma-separated list
/// of op kinds; an unknown kind is `bad_request`.
pub fn parse_kinds(list: &str) -> Result<Vec<OpKind>, ProtocolError> {
    let mut kinds = Vec::new();
    for part in list.split(',') {
        let kind: OpKind = part.trim().parse()?;
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    Ok(kinds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_codes_round_trip() {
        for kind in OpKind::ALL {
            assert_eq!(OpKind::from_code(kind.code()), Some(kind));
            assert_eq!(kind.as_str().parse::<OpKind>().ok(), Some(kind));
        }
        assert_eq!(OpKind::from_code(6), None);
    }

    #[test]
    fn kinds_list() {
        assert_eq!(
            parse_kinds("message,undo,message").ok(),
            Some(vec![OpKind::Message, OpKind::Undo])
        );
        assert!(parse_kinds("message,bogus").is_err());
        assert!(parse_kinds("").is_err());
    }
}
