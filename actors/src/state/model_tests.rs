//! Model-based property tests: random interleavings of several users' ops,
//! valid and invalid, checked against the rules that must always hold.

use std::collections::{BTreeSet, HashMap};

use collab_protocol::{Access, Op};
use proptest::prelude::*;

use super::*;

const USERS: [&str; 3] = ["ann", "bob", "cat"];

#[derive(Debug, Clone)]
enum Action {
    Begin(u8),
    Points(u8, u8, bool),
    End(u8),
    Undo,
    Redo,
    Message(bool),
    /// Send again an earlier request's cid (a client retry).
    Retry(usize),
}

#[derive(Debug, Clone)]
struct Step {
    user: usize,
    read_only: bool,
    action: Action,
}

fn arb_step() -> impl Strategy<Value = Step> {
    let action = prop_oneof![
        3 => (0u8..8).prop_map(Action::Begin),
        4 => (0u8..8, 0u8..4, prop::bool::weighted(0.05)).prop_map(|(s, n, nan)| Action::Points(s, n, nan)),
        3 => (0u8..8).prop_map(Action::End),
        2 => Just(Action::Undo),
        2 => Just(Action::Redo),
        1 => prop::bool::weighted(0.9).prop_map(Action::Message),
        1 => any::<usize>().prop_map(Action::Retry),
    ];
    (0..USERS.len(), prop::bool::weighted(0.05), action).prop_map(|(user, read_only, action)| {
        Step {
            user,
            read_only,
            action,
        }
    })
}

fn stroke_id(user: usize, n: u8) -> StrokeId {
    // Ids collide across users on purpose some of the time.
    let owner = if n.is_multiple_of(4) { 0 } else { user };
    StrokeId::parse(format!("s{owner}-{n}")).expect("valid id")
}

fn op_for(step: &Step) -> Op {
    match step.action {
        Action::Begin(n) => Op::StrokeBegin {
            stroke: stroke_id(step.user, n),
            color: "#336699".into(),
            width: 2.0,
            points: vec![[1.0, 1.0]],
        },
        Action::Points(n, count, nan) => {
            let mut points: Vec<Point> = (0..count).map(|i| [f64::from(i), 2.0]).collect();
            if nan && !points.is_empty() {
                points[0][1] = f64::NAN;
            }
            Op::StrokePoints {
                stroke: stroke_id(step.user, n),
                points,
            }
        }
        Action::End(n) => Op::StrokeEnd {
            stroke: stroke_id(step.user, n),
        },
        Action::Undo => Op::Undo { stroke: None },
        Action::Redo => Op::Redo { stroke: None },
        Action::Message(non_empty) => Op::Message {
            text: if non_empty {
                "hello".into()
            } else {
                String::new()
            },
        },
        Action::Retry(_) => Op::Message {
            text: "retry".into(),
        },
    }
}

fn visible(state: &RoomState) -> BTreeSet<StrokeId> {
    state.view().strokes.into_iter().map(|s| s.id).collect()
}

fn new_room() -> RoomState {
    RoomState::new(RoomMeta {
        id: RoomId::parse("model").expect("id"),
        kind: RoomKind::Board,
        epoch: Epoch::parse("e").expect("id"),
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_interleavings_keep_the_invariants(
        steps in prop::collection::vec(arb_step(), 1..160),
        cut in any::<prop::sample::Index>(),
    ) {
        let limits = Limits::default();
        let mut state = new_room();
        let mut events: Vec<OpEvent> = Vec::new();
        let mut owners: HashMap<StrokeId, UserId> = HashMap::new();
        // (user, cid) of every request sent, and the seq of accepted ones.
        let mut sent: Vec<(usize, Cid)> = Vec::new();
        let mut acked: HashMap<(usize, Cid), Seq> = HashMap::new();

        for (i, step) in steps.iter().enumerate() {
            let user = UserId::parse(USERS[step.user]).expect("id");
            let cid = match step.action {
                Action::Retry(k) if !sent.is_empty() => {
                    let (u, cid) = sent[k % sent.len()].clone();
                    if u == step.user { cid } else { Cid::parse(format!("c{i}")).expect("id") }
                }
                _ => Cid::parse(format!("c{i}")).expect("id"),
            };
            sent.push((step.user, cid.clone()));
            let before_visible = visible(&state);
            let before = state.clone();
            let request = OpRequest {
                user: user.clone(),
                cid: Some(cid.clone()),
                op: op_for(step),
                access: if step.read_only { Access::Read } else { Access::Write },
                ts: i as i64,
            };
            match state.apply(request, &limits) {
                Ok(Applied::New(event)) => {
                    prop_assert_eq!(event.seq, before.head().next(), "seq not gapless");
                    prop_assert_eq!(state.head(), event.seq);
                    prop_assert!(!step.read_only, "a read-only user wrote");
                    prop_assert!(acked.insert((step.user, cid), event.seq).is_none(), "cid applied twice");
                    let after_visible = visible(&state);
                    match &event.op {
                        Op::StrokeBegin { stroke, .. } => {
                            owners.insert(stroke.clone(), user.clone());
                            let mut expected = before_visible.clone();
                            expected.insert(stroke.clone());
                            prop_assert_eq!(after_visible, expected);
                        }
                        Op::Undo { stroke } => {
                            let stroke = stroke.clone().expect("resolved");
                            prop_assert_eq!(owners.get(&stroke), Some(&user), "undid another user's stroke");
                            let mut expected = before_visible.clone();
                            prop_assert!(expected.remove(&stroke));
                            prop_assert_eq!(after_visible, expected);
                        }
                        Op::Redo { stroke } => {
                            let stroke = stroke.clone().expect("resolved");
                            prop_assert_eq!(owners.get(&stroke), Some(&user), "redid another user's stroke");
                            let mut expected = before_visible.clone();
                            prop_assert!(expected.insert(stroke));
                            prop_assert_eq!(after_visible, expected);
                        }
                        Op::StrokePoints { stroke, .. } | Op::StrokeEnd { stroke } => {
                            prop_assert_eq!(owners.get(stroke), Some(&user), "wrote to another user's stroke");
                            prop_assert_eq!(after_visible, before_visible);
                        }
                        Op::Message { .. } => prop_assert_eq!(after_visible, before_visible),
                    }
                    events.push(event);
                }
                Ok(Applied::Duplicate(seq)) => {
                    prop_assert_eq!(acked.get(&(step.user, cid)), Some(&seq));
                    prop_assert!(state == before, "a duplicate changed the state");
                }
                Err(_) => {
                    prop_assert!(state == before, "a refused op changed the state");
                    prop_assert_eq!(state.head(), before.head());
                }
            }
        }

        // Recovery: the log alone rebuilds the same state, and so does a
        // snapshot taken at any point plus the ops after it. Events go
        // through JSON as the store keeps them.
        let logged: Vec<OpEvent> = events
            .iter()
            .map(|e| serde_json::from_str(&serde_json::to_string(e).expect("encodes")).expect("decodes"))
            .collect();
        let mut replayed = new_room();
        for event in &logged {
            replayed.replay(event).expect("replays");
        }
        prop_assert!(replayed == state, "replay of the log differs from the live state");

        let k = cut.index(logged.len() + 1);
        let mut prefix = new_room();
        for event in &logged[..k] {
            prefix.replay(event).expect("replays");
        }
        let mut restored = RoomState::restore(&prefix.meta().id, &prefix.snapshot()).expect("restores");
        for event in &logged[k..] {
            restored.replay(event).expect("replays after snapshot");
        }
        prop_assert!(restored == state, "snapshot + replay differs from the live state");
        prop_assert_eq!(restored.view(), state.view());
    }
}
