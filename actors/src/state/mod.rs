//! The room state machine.
//!
//! A room's durable state is its strokes (with owners and points), each
//! user's undo and redo stacks and `cid` window, and its last messages.
//! [`RoomState::apply`] validates a request in the protocol's precedence
//! order and, if it is allowed, assigns the next seq and applies it;
//! [`RoomState::replay`] applies an already committed event, the path
//! recovery takes. `apply` is validation followed by `replay`, so the live
//! state and a state rebuilt from the log cannot drift apart.
//!
//! Presence (who is connected) is kept here too, keyed by connection, but it
//! is not durable and takes no part in snapshots.

#[cfg(test)]
mod model_tests;
mod presence;
mod snapshot;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, VecDeque};

use collab_protocol::frames::{RoomView, StrokeView};
use collab_protocol::limits::STATE_MESSAGES;
use collab_protocol::validate::validate_op;
use collab_protocol::{
    Access, Cid, Epoch, Limits, Op, OpEvent, Point, ProtocolError, RoomId, RoomKind, Seq, StrokeId,
    UserId,
};

pub use presence::{Presence, PresenceChange};
pub use snapshot::{SNAPSHOT_FORMAT, SnapshotError};

/// Undo steps kept per user and room. The oldest step beyond this can no
/// longer be undone; its stroke stays visible.
pub const UNDO_DEPTH: usize = 100;
/// Recent `cid`s remembered per user and room for de-duplication.
pub const CID_WINDOW: usize = 1024;

/// What a room is: fixed at creation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomMeta {
    pub id: RoomId,
    pub kind: RoomKind,
    pub epoch: Epoch,
}

/// An op a user asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct OpRequest {
    pub user: UserId,
    /// `None` for ops the server makes itself.
    pub cid: Option<Cid>,
    pub op: Op,
    /// What the user's token allows in this room.
    pub access: Access,
    /// The time to stamp on the op, ms since the Unix epoch.
    pub ts: i64,
}

/// The outcome of an allowed request.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// A new op: commit it, then broadcast and ack it.
    New(OpEvent),
    /// The `cid` already produced the op with this seq: re-ack, apply nothing.
    Duplicate(Seq),
}

/// A committed event that does not fit the state: the log or snapshot is
/// damaged, or events were skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot replay seq {seq}: {reason}")]
pub struct ReplayError {
    pub seq: Seq,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
struct Stroke {
    user: UserId,
    color: String,
    width: f64,
    points: Vec<Point>,
    done: bool,
    visible: bool,
    /// Seq of its `stroke_begin`: the stroke's place in the drawing order.
    begun: Seq,
}

/// One user's undo/redo stacks and cid window in one room.
#[derive(Debug, Clone, Default, PartialEq)]
struct UserLog {
    /// Ended, visible strokes, most recently ended last.
    undo: VecDeque<StrokeId>,
    /// Undone strokes, most recently undone last.
    redo: Vec<StrokeId>,
    cids: CidWindow,
}

/// The last [`CID_WINDOW`] cids of one user, with the seq each produced.
type CidWindow = crate::recent::Recent<Cid, Seq, CID_WINDOW>;

/// The state of one room.
#[derive(Debug, Clone)]
pub struct RoomState {
    meta: RoomMeta,
    head: Seq,
    /// Every stroke whose data is still needed: visible ones, open ones and
    /// undone ones that a redo could bring back.
    strokes: HashMap<StrokeId, Stroke>,
    /// Visible strokes by the seq of their `stroke_begin`.
    drawing_order: BTreeMap<Seq, StrokeId>,
    /// Strokes hidden for good (undone, then their redo was cleared): the id
    /// stays taken and its owner known, the points are dropped.
    retired: HashMap<StrokeId, UserId>,
    users: HashMap<UserId, UserLog>,
    messages: VecDeque<OpEvent>,
    presence: Presence,
}

impl RoomState {
    /// An empty room: nothing committed yet.
    pub fn new(meta: RoomMeta) -> Self {
        RoomState {
            meta,
            head: Seq::ZERO,
            strokes: HashMap::new(),
            drawing_order: BTreeMap::new(),
            retired: HashMap::new(),
            users: HashMap::new(),
            messages: VecDeque::new(),
            presence: Presence::default(),
        }
    }

    /// An empty room whose log starts after `floor`: a room created under
    /// the id of a deleted one, whose first op follows the deleted room's
    /// tombstone.
    pub fn starting_after(meta: RoomMeta, floor: Seq) -> Self {
        RoomState {
            head: floor,
            ..RoomState::new(meta)
        }
    }

    pub fn meta(&self) -> &RoomMeta {
        &self.meta
    }

    /// The seq of the last applied op.
    pub fn head(&self) -> Seq {
        self.head
    }

    pub fn presence(&self) -> &Presence {
        &self.presence
    }

    pub fn presence_mut(&mut self) -> &mut Presence {
        &mut self.presence
    }

    // === impl RoomState: the write path ===

    /// Validates `request` and, if allowed, applies it as op `head + 1`.
    ///
    /// Checks run in the protocol's order: a known `cid` first (re-ack,
    /// nothing else checked), then malformed or over a limit, then not
    /// allowed, then the room's state. An error changes nothing.
    pub fn apply(&mut self, request: OpRequest, limits: &Limits) -> Result<Applied, ProtocolError> {
        if let Some(seq) = self.duplicate_of(&request.user, request.cid.as_ref()) {
            return Ok(Applied::Duplicate(seq));
        }
        validate_op(&request.op, self.meta.kind, request.access, limits)?;
        let op = self.check_against_state(&request.user, request.op)?;
        let event = OpEvent {
            room: self.meta.id.clone(),
            seq: self.head.next(),
            user: request.user,
            ts: request.ts,
            cid: request.cid,
            op,
        };
        self.replay(&event)
            .map_err(|e| ProtocolError::new(collab_protocol::ErrorCode::Internal, e.to_string()))?;
        Ok(Applied::New(event))
    }

    /// The seq an earlier op of `user` with this `cid` got, if remembered.
    pub fn duplicate_of(&self, user: &UserId, cid: Option<&Cid>) -> Option<Seq> {
        let cid = cid?;
        self.users.get(user)?.cids.get(cid).copied()
    }

    /// The room-state tier: ownership (`forbidden`) and then the state
    /// itself. Returns the op to commit, with undo/redo resolved.
    fn check_against_state(&self, user: &UserId, op: Op) -> Result<Op, ProtocolError> {
        match op {
            Op::StrokeBegin { ref stroke, .. } => {
                if self.strokes.contains_key(stroke) || self.retired.contains_key(stroke) {
                    return Err(ProtocolError::bad_request(format!(
                        "stroke id {stroke} was used before in this room"
                    )));
                }
                Ok(op)
            }
            Op::StrokePoints { ref stroke, .. } | Op::StrokeEnd { ref stroke } => {
                let (owner, done) = match (self.strokes.get(stroke), self.retired.get(stroke)) {
                    (Some(s), _) => (&s.user, s.done),
                    (None, Some(owner)) => (owner, true),
                    (None, None) => {
                        return Err(ProtocolError::not_found(format!("no stroke {stroke}")));
                    }
                };
                if owner != user {
                    return Err(ProtocolError::forbidden(format!(
                        "stroke {stroke} belongs to another user"
                    )));
                }
                if done {
                    return Err(ProtocolError::bad_request(format!(
                        "stroke {stroke} has ended"
                    )));
                }
                Ok(op)
            }
            Op::Undo { .. } => {
                let stroke = self
                    .users
                    .get(user)
                    .and_then(|log| log.undo.back())
                    .cloned()
                    .ok_or_else(|| {
                        ProtocolError::new(
                            collab_protocol::ErrorCode::NothingToUndo,
                            "nothing to undo",
                        )
                    })?;
                Ok(Op::Undo {
                    stroke: Some(stroke),
                })
            }
            Op::Redo { .. } => {
                let stroke = self
                    .users
                    .get(user)
                    .and_then(|log| log.redo.last())
                    .cloned()
                    .ok_or_else(|| {
                        ProtocolError::new(
                            collab_protocol::ErrorCode::NothingToRedo,
                            "nothing to redo",
                        )
                    })?;
                Ok(Op::Redo {
                    stroke: Some(stroke),
                })
            }
            Op::Message { .. } => Ok(op),
        }
    }

    /// Applies a committed event: the one mutation path, shared by live
    /// ops and recovery. Only `seq = head + 1` is accepted.
    pub fn replay(&mut self, event: &OpEvent) -> Result<(), ReplayError> {
        let fail = |reason: String| ReplayError {
            seq: event.seq,
            reason,
        };
        if event.seq != self.head.next() {
            return Err(fail(format!("expected seq {}", self.head.next())));
        }
        let user = &event.user;
        match &event.op {
            Op::StrokeBegin {
                stroke,
                color,
                width,
                points,
            } => {
                if self.strokes.contains_key(stroke) || self.retired.contains_key(stroke) {
                    return Err(fail(format!("stroke {stroke} begun twice")));
                }
                self.strokes.insert(
                    stroke.clone(),
                    Stroke {
                        user: user.clone(),
                        color: color.clone(),
                        width: *width,
                        points: points.clone(),
                        done: false,
                        visible: true,
                        begun: event.seq,
                    },
                );
                self.drawing_order.insert(event.seq, stroke.clone());
            }
            Op::StrokePoints { stroke, points } => {
                let s = self
                    .open_stroke_mut(stroke, user)
                    .ok_or_else(|| fail(format!("stroke {stroke} is not open for {user}")))?;
                s.points.extend_from_slice(points);
            }
            Op::StrokeEnd { stroke } => {
                let s = self
                    .open_stroke_mut(stroke, user)
                    .ok_or_else(|| fail(format!("stroke {stroke} is not open for {user}")))?;
                s.done = true;
                let log = self.users.entry(user.clone()).or_default();
                log.undo.push_back(stroke.clone());
                if log.undo.len() > UNDO_DEPTH {
                    // Out of reach of undo: the stroke simply stays.
                    log.undo.pop_front();
                }
                let cleared = std::mem::take(&mut log.redo);
                for gone in cleared {
                    // Undone and no longer redoable: hidden for good.
                    if let Some(s) = self.strokes.remove(&gone) {
                        self.retired.insert(gone, s.user);
                    }
                }
            }
            Op::Undo { stroke } => {
                let stroke = stroke
                    .as_ref()
                    .ok_or_else(|| fail("undo without its stroke".into()))?;
                let log = self.users.entry(user.clone()).or_default();
                if log.undo.back() != Some(stroke) {
                    return Err(fail(format!("{stroke} is not {user}'s last undo step")));
                }
                log.undo.pop_back();
                log.redo.push(stroke.clone());
                self.set_visible(stroke, false);
            }
            Op::Redo { stroke } => {
                let stroke = stroke
                    .as_ref()
                    .ok_or_else(|| fail("redo without its stroke".into()))?;
                let log = self.users.entry(user.clone()).or_default();
                if log.redo.last() != Some(stroke) {
                    return Err(fail(format!("{stroke} is not {user}'s last redo step")));
                }
                log.redo.pop();
                log.undo.push_back(stroke.clone());
                if log.undo.len() > UNDO_DEPTH {
                    log.undo.pop_front();
                }
                self.set_visible(stroke, true);
            }
            Op::Message { .. } => {
                self.messages.push_back(event.clone());
                if self.messages.len() > STATE_MESSAGES {
                    self.messages.pop_front();
                }
            }
        }
        if let Some(cid) = &event.cid {
            self.users
                .entry(user.clone())
                .or_default()
                .cids
                .insert(cid.clone(), event.seq);
        }
        self.head = event.seq;
        Ok(())
    }

    fn open_stroke_mut(&mut self, stroke: &StrokeId, user: &UserId) -> Option<&mut Stroke> {
        self.strokes
            .get_mut(stroke)
            .filter(|s| &s.user == user && !s.done)
    }

    fn set_visible(&mut self, id: &StrokeId, visible: bool) {
        if let Some(stroke) = self.strokes.get_mut(id) {
            stroke.visible = visible;
            if visible {
                self.drawing_order.insert(stroke.begun, id.clone());
            } else {
                self.drawing_order.remove(&stroke.begun);
            }
        }
    }

    // === impl RoomState: the read path ===

    /// The room as `joined` sends it: visible strokes in drawing order and
    /// the last messages.
    pub fn view(&self) -> RoomView {
        let strokes = self
            .drawing_order
            .values()
            .filter_map(|id| {
                self.strokes.get(id).map(|s| StrokeView {
                    id: id.clone(),
                    user: s.user.clone(),
                    color: s.color.clone(),
                    width: s.width,
                    points: s.points.clone(),
                    done: s.done,
                })
            })
            .collect();
        RoomView {
            strokes,
            messages: self.messages.iter().cloned().collect(),
        }
    }

    /// The ids of `user`'s strokes that are still open, in drawing order:
    /// what the server ends when the user's last connection leaves.
    pub fn open_strokes_of(&self, user: &UserId) -> Vec<StrokeId> {
        let mut open: Vec<(&Seq, &StrokeId)> = self
            .strokes
            .iter()
            .filter(|(_, s)| &s.user == user && !s.done)
            .map(|(id, s)| (&s.begun, id))
            .collect();
        open.sort();
        open.into_iter().map(|(_, id)| id.clone()).collect()
    }

    /// Users that own an open stroke.
    pub fn users_with_open_strokes(&self) -> Vec<UserId> {
        let mut users: Vec<UserId> = self
            .strokes
            .values()
            .filter(|s| !s.done)
            .map(|s| s.user.clone())
            .collect();
        users.sort();
        users.dedup();
        users
    }

    /// The `stroke_end` requests, with no `cid`, that close every open
    /// stroke of `user`.
    pub fn orphan_endings(&self, user: &UserId, ts: i64) -> Vec<OpRequest> {
        self.open_strokes_of(user)
            .into_iter()
            .map(|stroke| OpRequest {
                user: user.clone(),
                cid: None,
                op: Op::StrokeEnd { stroke },
                access: Access::Write,
                ts,
            })
            .collect()
    }
}

/// How to answer a `join`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinPlan {
    /// Send the full state (`reset: true`).
    Reset,
    /// Send the ops with `since < seq ≤ head` (`reset: false`).
    Replay { since: Seq },
}

/// Decides between replay and reset: reset when `since` is absent, ahead of
/// `head`, from another epoch, or further behind than `replay_limit`.
pub fn plan_join(
    since: Option<u64>,
    epoch: Option<&Epoch>,
    current_epoch: &Epoch,
    head: Seq,
    replay_limit: u64,
) -> JoinPlan {
    let Some(since) = since else {
        return JoinPlan::Reset;
    };
    if epoch.is_some_and(|e| e != current_epoch) || since > head.get() {
        return JoinPlan::Reset;
    }
    if head.get() - since > replay_limit {
        return JoinPlan::Reset;
    }
    JoinPlan::Replay { since: Seq(since) }
}
