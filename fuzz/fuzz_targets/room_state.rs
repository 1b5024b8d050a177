//! The room state machine fed arbitrary interleavings of several users'
//! requests, valid and not: strokes (ids shared between users, so users
//! write to each other's), points and widths and colours that may be
//! anything, undo, redo, messages, retries of earlier cids, a user's last
//! connection leaving (the server ends its open strokes) and snapshots.
//!
//! After every request: an accepted op has the next seq (gapless) and
//! changes the visible strokes only as its kind says, undo and redo touch
//! only the sender's own strokes, a refused or duplicate request changes
//! nothing, a refusal is never `internal` (validation let through an op
//! that `replay` rejects), a retried cid still in the user's window is
//! re-acked with its seq and one that is not is never taken for one, and a
//! snapshot restores to an equal state. At the end: the log replayed from
//! an empty room (through JSON, as the store keeps it) equals the live
//! state, and so does every snapshot taken on the way plus the ops after it.
#![no_main]

use std::collections::{BTreeSet, HashMap, VecDeque};

use arbitrary::Arbitrary;
use collab_actors::state::{Applied, CID_WINDOW, OpRequest, RoomMeta, RoomState};
use collab_protocol::{
    Access, Cid, Epoch, ErrorCode, Limits, Op, OpEvent, Point, RoomId, RoomKind, Seq, StrokeId,
    UserId,
};
use libfuzzer_sys::fuzz_target;

const USERS: [&str; 3] = ["ann", "bob", "cat"];
/// Stroke ids are `s0` to `s15`, shared by every user.
const STROKES: u8 = 16;

#[derive(Debug, Arbitrary)]
struct Input {
    channel: bool,
    steps: Vec<Step>,
}

#[derive(Debug, Arbitrary)]
struct Step {
    user: u8,
    read_only: bool,
    action: Action,
}

#[derive(Debug, Arbitrary)]
enum Action {
    Begin {
        stroke: u8,
        color: Color,
        width: Number,
        points: Vec<(Number, Number)>,
    },
    Points {
        stroke: u8,
        points: Vec<(Number, Number)>,
    },
    End {
        stroke: u8,
    },
    Undo,
    Redo,
    Message(String),
    /// Sends again the cid of an earlier request (a client's retry; it may
    /// be another user's, which is a new cid for this one).
    Retry(u16),
    /// The user's last connection leaves: the room ends its open strokes.
    Leave,
    /// Takes a snapshot here.
    Snapshot,
}

#[derive(Debug, Arbitrary)]
enum Color {
    Palette(u8),
    Any(String),
}

#[derive(Debug, Arbitrary)]
enum Number {
    Small(i8),
    Any(f64),
}

impl Number {
    fn value(&self) -> f64 {
        match *self {
            Number::Small(n) => f64::from(n),
            Number::Any(x) => x,
        }
    }
}

fn points(raw: &[(Number, Number)]) -> Vec<Point> {
    raw.iter().map(|(x, y)| [x.value(), y.value()]).collect()
}

fn stroke_id(n: u8) -> StrokeId {
    StrokeId::parse(format!("s{}", n % STROKES)).expect("a valid stroke id")
}

fn visible(state: &RoomState) -> BTreeSet<StrokeId> {
    state.view().strokes.into_iter().map(|s| s.id).collect()
}

/// What the room must remember of each user's cids: the last
/// [`CID_WINDOW`] it accepted, with their seqs.
#[derive(Default)]
struct CidModel {
    windows: HashMap<usize, VecDeque<(Cid, Seq)>>,
}

impl CidModel {
    fn seq_of(&self, user: usize, cid: &Cid) -> Option<Seq> {
        self.windows
            .get(&user)?
            .iter()
            .find(|(c, _)| c == cid)
            .map(|(_, seq)| *seq)
    }

    fn accept(&mut self, user: usize, cid: Cid, seq: Seq) {
        let window = self.windows.entry(user).or_default();
        window.push_back((cid, seq));
        if window.len() > CID_WINDOW {
            window.pop_front();
        }
    }
}

fuzz_target!(|input: Input| {
    let limits = Limits::default();
    let room = RoomId::parse("fuzz").expect("a valid room id");
    let meta = RoomMeta {
        id: room.clone(),
        kind: if input.channel {
            RoomKind::Channel
        } else {
            RoomKind::Board
        },
        epoch: Epoch::parse("e").expect("a valid epoch"),
    };
    let mut state = RoomState::new(meta.clone());
    let mut events: Vec<OpEvent> = Vec::new();
    let mut owners: HashMap<StrokeId, UserId> = HashMap::new();
    let mut sent: Vec<Cid> = Vec::new();
    let mut cids = CidModel::default();
    // (ops committed before it, its bytes)
    let mut snapshots: Vec<(usize, Vec<u8>)> = Vec::new();

    for (i, step) in input.steps.iter().enumerate() {
        let u = usize::from(step.user) % USERS.len();
        let user = UserId::parse(USERS[u]).expect("a valid user id");
        let ts = i64::try_from(i).unwrap_or(i64::MAX);
        let (cid, op) = match &step.action {
            Action::Snapshot => {
                let bytes = state.snapshot();
                let restored = RoomState::restore(&room, &bytes).expect("a snapshot restores");
                assert!(restored == state, "a snapshot restores to another state");
                assert_eq!(restored.view(), state.view());
                snapshots.push((events.len(), bytes));
                continue;
            }
            Action::Leave => {
                for request in state.orphan_endings(&user, ts) {
                    let before = state.head();
                    match state.apply(request, &limits) {
                        Ok(Applied::New(event)) => {
                            assert_eq!(event.seq, before.next(), "seq not gapless");
                            assert!(matches!(event.op, Op::StrokeEnd { .. }));
                            events.push(event);
                        }
                        other => panic!("ending an orphaned stroke gave {other:?}"),
                    }
                }
                assert!(state.open_strokes_of(&user).is_empty());
                continue;
            }
            Action::Retry(k) if !sent.is_empty() => {
                let cid = sent[usize::from(*k) % sent.len()].clone();
                (
                    cid,
                    Op::Message {
                        text: "retry".into(),
                    },
                )
            }
            action => (
                Cid::parse(format!("c{i}")).expect("a valid cid"),
                op_for(action),
            ),
        };
        sent.push(cid.clone());
        let before = state.clone();
        let before_visible = visible(&state);
        let request = OpRequest {
            user: user.clone(),
            cid: Some(cid.clone()),
            op,
            access: if step.read_only {
                Access::Read
            } else {
                Access::Write
            },
            ts,
        };
        match state.apply(request, &limits) {
            Ok(Applied::New(event)) => {
                assert_eq!(event.seq, before.head().next(), "seq not gapless");
                assert_eq!(state.head(), event.seq);
                assert_eq!(event.user, user);
                assert_eq!(event.cid.as_ref(), Some(&cid));
                assert!(!step.read_only, "a read-only user wrote");
                assert_eq!(
                    cids.seq_of(u, &cid),
                    None,
                    "a cid still in the window was applied twice"
                );
                cids.accept(u, cid, event.seq);
                check_visible_change(&event, &owners, &before_visible, &visible(&state));
                if let Op::StrokeBegin { stroke, .. } = &event.op {
                    owners.insert(stroke.clone(), user.clone());
                }
                events.push(event);
            }
            Ok(Applied::Duplicate(seq)) => {
                assert_eq!(cids.seq_of(u, &cid), Some(seq), "re-acked with another seq");
                assert!(state == before, "a duplicate changed the state");
            }
            Err(error) => {
                assert_ne!(error.code, ErrorCode::Internal, "{error}");
                assert_eq!(cids.seq_of(u, &cid), None, "a known cid was refused");
                assert!(state == before, "a refused request changed the state");
                assert_eq!(state.head(), before.head());
            }
        }
    }

    // Recovery: the log alone rebuilds the live state, and so does every
    // snapshot plus the ops after it. Events go through JSON as the store
    // keeps them.
    let logged: Vec<OpEvent> = events
        .iter()
        .map(|e| {
            let json = serde_json::to_string(e).expect("an event encodes");
            serde_json::from_str(&json).expect("an event decodes")
        })
        .collect();
    assert_eq!(logged, events, "an event does not survive JSON");
    let mut replayed = RoomState::new(meta);
    for event in &logged {
        replayed.replay(event).expect("the log replays");
    }
    assert!(
        replayed == state,
        "replay of the log differs from the live state"
    );
    for (k, bytes) in &snapshots {
        let mut restored = RoomState::restore(&room, bytes).expect("a snapshot restores");
        for event in &logged[*k..] {
            restored
                .replay(event)
                .expect("the log replays after a snapshot");
        }
        assert!(
            restored == state,
            "snapshot + replay differs from the live state"
        );
        assert_eq!(restored.view(), state.view());
    }
});

fn op_for(action: &Action) -> Op {
    match action {
        Action::Begin {
            stroke,
            color,
            width,
            points: raw,
        } => Op::StrokeBegin {
            stroke: stroke_id(*stroke),
            color: match color {
                Color::Palette(n) => format!("#{:06x}", u32::from(*n) * 0x010203),
                Color::Any(text) => text.clone(),
            },
            width: width.value(),
            points: points(raw),
        },
        Action::Points {
            stroke,
            points: raw,
        } => Op::StrokePoints {
            stroke: stroke_id(*stroke),
            points: points(raw),
        },
        Action::End { stroke } => Op::StrokeEnd {
            stroke: stroke_id(*stroke),
        },
        Action::Undo => Op::Undo { stroke: None },
        Action::Redo => Op::Redo { stroke: None },
        Action::Message(text) => Op::Message { text: text.clone() },
        Action::Retry(_) => Op::Message {
            text: "first".into(),
        },
        Action::Leave | Action::Snapshot => unreachable!("handled by the caller"),
    }
}

/// An accepted op changes the visible strokes only as its kind says, and
/// only the sender's own strokes (undo and redo name the stroke they
/// resolved to).
fn check_visible_change(
    event: &OpEvent,
    owners: &HashMap<StrokeId, UserId>,
    before: &BTreeSet<StrokeId>,
    after: &BTreeSet<StrokeId>,
) {
    let mut expected = before.clone();
    match &event.op {
        Op::StrokeBegin { stroke, .. } => {
            assert!(!owners.contains_key(stroke), "stroke {stroke} begun twice");
            expected.insert(stroke.clone());
        }
        Op::Undo { stroke } => {
            let stroke = stroke.as_ref().expect("undo names its stroke");
            assert_eq!(
                owners.get(stroke),
                Some(&event.user),
                "undid another's stroke"
            );
            assert!(expected.remove(stroke), "undid a hidden stroke");
        }
        Op::Redo { stroke } => {
            let stroke = stroke.as_ref().expect("redo names its stroke");
            assert_eq!(
                owners.get(stroke),
                Some(&event.user),
                "redid another's stroke"
            );
            assert!(expected.insert(stroke.clone()), "redid a visible stroke");
        }
        Op::StrokePoints { stroke, .. } | Op::StrokeEnd { stroke } => {
            assert_eq!(
                owners.get(stroke),
                Some(&event.user),
                "wrote to another's stroke"
            );
        }
        Op::Message { .. } => {}
    }
    assert_eq!(
        after, &expected,
        "{:?} changed the visible strokes",
        event.op
    );
}
