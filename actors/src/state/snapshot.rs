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
    /// Decodes, but no room's history could have made it (damaged bytes).
    #[error("snapshot is damaged: {0}")]
    Damaged(String),
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
        snap.check().map_err(SnapshotError::Damaged)?;
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

impl SnapshotV1 {
    /// What every snapshot of a real history satisfies and the state's
    /// code relies on: one stroke per id and per `begun` seq (the drawing
    /// order is keyed by it), no seq past the head and a head that has a
    /// next, finite numbers only. Bytes that decode but break one of these
    /// would restore to a state that renders strokes twice or loses them,
    /// and that differs from its own next snapshot.
    fn check(&self) -> Result<(), String> {
        if self.head.get() == u64::MAX {
            return Err("head has no next seq".into());
        }
        let mut ids = std::collections::HashSet::new();
        let mut begun = std::collections::HashSet::new();
        for stroke in &self.strokes {
            if !ids.insert(&stroke.id) {
                return Err(format!("stroke {} appears twice", stroke.id));
            }
            if !begun.insert(stroke.begun) || stroke.begun > self.head {
                return Err(format!(
                    "stroke {} begun at seq {}",
                    stroke.id, stroke.begun
                ));
            }
            let finite =
                stroke.width.is_finite() && stroke.points.iter().flatten().all(|c| c.is_finite());
            if !finite {
                return Err(format!("stroke {} has a non-finite number", stroke.id));
            }
        }
        let seqs = self.messages.iter().map(|m| m.seq).chain(
            self.users
                .iter()
                .flat_map(|u| u.cids.iter().map(|(_, seq)| *seq)),
        );
        if let Some(seq) = seqs.into_iter().find(|seq| *seq > self.head) {
            return Err(format!("seq {seq} is past the head {}", self.head));
        }
        Ok(())
    }
}

impl PartialEq for RoomState {
    /// Equal durable state; presence is not compared.
    fn eq(&self, other: &Self) -> bool {
        self.to_snapshot() == other.to_snapshot()
    }
}

#[cfg(test)]
mod tests {
    use collab_protocol::{Access, Limits};

    use super::*;
    use crate::state::OpRequest;

    fn drawn_room() -> RoomState {
        let mut state = RoomState::new(RoomMeta {
            id: RoomId::parse("r").expect("id"),
            kind: RoomKind::Board,
            epoch: Epoch::parse("e").expect("epoch"),
        });
        let ops = [
            ("s1", None),
            ("s2", None),
            ("s2", Some(Op::Message { text: "hi".into() })),
        ];
        for (i, (stroke, op)) in ops.into_iter().enumerate() {
            let op = op.unwrap_or_else(|| Op::StrokeBegin {
                stroke: StrokeId::parse(stroke).expect("stroke"),
                color: "#000000".into(),
                width: 1.0,
                points: vec![[0.0, 0.0]],
            });
            let request = OpRequest {
                user: UserId::parse("ann").expect("user"),
                cid: Some(Cid::parse(format!("c{i}")).expect("cid")),
                op,
                access: Access::Write,
                ts: 0,
            };
            state.apply(request, &Limits::default()).expect("applies");
        }
        state
    }

    fn restore_damaged(damage: impl FnOnce(&mut SnapshotV1)) -> Result<RoomState, SnapshotError> {
        let state = drawn_room();
        let mut snap = state.to_snapshot();
        damage(&mut snap);
        let bytes = postcard::to_allocvec(&snap).expect("encodes");
        RoomState::restore(&state.meta.id, &bytes)
    }

    /// Found by the `snapshot` fuzz target: bytes that gave two strokes the
    /// same `begun` seq restored to a state whose view dropped one of them
    /// and whose next snapshot restored to another view.
    #[test]
    fn damaged_snapshots_are_refused() {
        assert!(restore_damaged(|_| {}).is_ok());
        type Damage = fn(&mut SnapshotV1);
        let damages: [(&str, Damage); 6] = [
            ("same begun", |s| s.strokes[1].begun = s.strokes[0].begun),
            ("same id", |s| s.strokes[1].id = s.strokes[0].id.clone()),
            ("begun past head", |s| s.strokes[1].begun = Seq(99)),
            ("nan width", |s| s.strokes[0].width = f64::NAN),
            ("infinite point", |s| {
                s.strokes[0].points[0][1] = f64::INFINITY
            }),
            ("message past head", |s| s.messages[0].seq = Seq(99)),
        ];
        for (what, damage) in damages {
            assert!(
                matches!(restore_damaged(damage), Err(SnapshotError::Damaged(_))),
                "{what}"
            );
        }
        let last_seq = restore_damaged(|s| s.head = Seq(u64::MAX));
        assert!(matches!(last_seq, Err(SnapshotError::Damaged(_))));
    }
}
