//! Snapshots: the durable part of a room state as bytes.
//!
//! The format is postcard (compact, fast, serde-native) over plain structs
//! with a version number first. Presence is not part of it.

use std::collections::{BTreeMap, HashMap, VecDeque};

use collab_protocol::{Cid, Epoch, Op, OpEvent, Point, RoomId, RoomKind, Seq, StrokeId, UserId};
use serde::{Deserialize, Serialize};

use super::{CidWindow, RoomMeta, RoomState, Stroke, UserLog};

/// The version of the snapshot layout written today.
pub const SNAPSHOT_FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot does not decode: {0}")]
    Decode(String),
    #[error("snapshot format {0} is not supported")]
    Format(u32),
    #[error("snapshot is of room {found}, not {expected}")]
    WrongRoom { expected: RoomId, found: RoomId },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct SnapshotV1 {
    format: u32,
    room: RoomId,
    kind: RoomKind,
    epoch: Epoch,
    head: Seq,
    /// Sorted by `begun`.
    strokes: Vec<StoredStroke>,
    /// Sorted by id.
    retired: Vec<(StrokeId, UserId)>,
    /// Sorted by user id.
    users: Vec<StoredUser>,
    messages: Vec<StoredMessage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StoredStroke {
    id: StrokeId,
    user: UserId,
    color: String,
    width: f64,
    points: Vec<Point>,
    done: bool,
    visible: bool,
    begun: Seq,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StoredUser {
    id: UserId,
    undo: Vec<StrokeId>,
    redo: Vec<StrokeId>,
    /// Oldest first.
    cids: Vec<(Cid, Seq)>,
}

/// A `message` op, stored flat: postcard cannot carry the tagged `Op`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StoredMessage {
    seq: Seq,
    user: UserId,
    ts: i64,
    cid: Option<Cid>,
    text: String,
}

impl RoomState {
    /// The durable state, in a canonical order: two states with the same
    /// history give equal snapshots.
    pub(super) fn to_snapshot(&self) -> SnapshotV1 {
        let mut strokes: Vec<StoredStroke> = self
            .strokes
            .iter()
            .map(|(id, s)| StoredStroke {
                id: id.clone(),
                user: s.user.clone(),
                color: s.color.clone(),
                width: s.width,
                points: s.points.clone(),
                done: s.done,
                visible: s.visible,
                begun: s.begun,
            })
            .collect();
        strokes.sort_by_key(|s| s.begun);
        let mut retired: Vec<(StrokeId, UserId)> = self
            .retired
            .iter()
            .map(|(id, user)| (id.clone(), user.clone()))
            .collect();
        retired.sort();
        let mut users: Vec<StoredUser> = self
            .users
            .iter()
            .map(|(id, log)| StoredUser {
                id: id.clone(),
                undo: log.undo.iter().cloned().collect(),
                redo: log.redo.clone(),
                cids: log
                    .cids
                    .iter()
                    .map(|(cid, seq)| (cid.clone(), *seq))
                    .collect(),
            })
            .collect();
        users.sort_by(|a, b| a.id.cmp(&b.id));
        let messages = self
            .messages
            .iter()
            .filter_map(|event| match &event.op {
                Op::Message { text } => Some(StoredMessage {
                    seq: event.seq,
                    user: event.user.clone(),
                    ts: event.ts,
                    cid: event.cid.clone(),
                    text: text.clone(),
                }),
                _ => None,
            })
            .collect();
        SnapshotV1 {
            format: SNAPSHOT_FORMAT,
            room: self.meta.id.clone(),
            kind: self.meta.kind,
            epoch: self.meta.epoch.clone(),
            head: self.head,
            strokes,
            retired,
            users,
            messages,
        }
    }

    /// Encodes the durable state.
    pub fn snapshot(&self) -> Vec<u8> {
        // Encoding plain structs into a Vec cannot fail.
        postcard::to_allocvec(&self.to_snapshot()).unwrap_or_default()
    }

    /// Rebuilds a state from [`RoomState::snapshot`] bytes, checking that
    /// they are of `room`. Presence starts empty.
    pub fn restore(room: &RoomId, bytes: &[u8]) -> Result<RoomState, SnapshotError> {
        let snap: SnapshotV1 =
            postcard::from_bytes(bytes).map_err(|e| SnapshotError::Decode(e.to_string()))?;
        if snap.format != SNAPSHOT_FORMAT {
            return Err(SnapshotError::Format(snap.format));
        }
        if &snap.room != room {
            return Err(SnapshotError::WrongRoom {
                expected: room.clone(),
                found: snap.room,
            });
        }
        let mut state = RoomState::new(RoomMeta {
            id: snap.room,
            kind: snap.kind,
            epoch: snap.epoch,
        });
        state.head = snap.head;
        let mut drawing_order = BTreeMap::new();
        let mut strokes = HashMap::with_capacity(snap.strokes.len());
        for s in snap.strokes {
            if s.visible {
                drawing_order.insert(s.begun, s.id.clone());
            }
            strokes.insert(
                s.id,
                Stroke {
                    user: s.user,
                    color: s.color,
                    width: s.width,
                    points: s.points,
                    done: s.done,
                    visible: s.visible,
                    begun: s.begun,
                },
            );
        }
        state.strokes = strokes;
        state.drawing_order = drawing_order;
        state.retired = snap.retired.into_iter().collect();
        state.users = snap
            .users
            .into_iter()
            .map(|u| {
                let mut cids = CidWindow::default();
                for (cid, seq) in u.cids {
                    cids.insert(cid, seq);
                }
                let log = UserLog {
                    undo: VecDeque::from(u.undo),
                    redo: u.redo,
                    cids,
                };
                (u.id, log)
            })
            .collect();
        let room = state.meta.id.clone();
        state.messages = snap
            .messages
            .into_iter()
            .map(|m| OpEvent {
                room: room.clone(),
                seq: m.seq,
                user: m.user,
                ts: m.ts,
                cid: m.cid,
                op: Op::Message { text: m.text },
            })
            .collect();
        Ok(state)
    }
}

impl PartialEq for RoomState {
    /// Equal durable state; presence is not compared.
    fn eq(&self, other: &Self) -> bool {
        self.to_snapshot() == other.to_snapshot()
    }
}
