//! Snapshot decoding: `RoomState::restore` on arbitrary bytes, as if the
//! store handed back a damaged or foreign snapshot. It must never panic:
//! it refuses the bytes or gives a state. A state it gives must be usable
//! as a room's: it renders its view, snapshots again to bytes that restore
//! to an equal state, and answers every kind of request from each of its
//! users (with an op or a refusal) without panicking.
#![no_main]

use collab_actors::state::{OpRequest, RoomState};
use collab_protocol::{Access, Cid, Limits, Op, RoomId, StrokeId, UserId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let room = RoomId::parse("fuzz").expect("a valid room id");
    let Ok(state) = RoomState::restore(&room, data) else {
        return;
    };
    let view = state.view();
    let again = RoomState::restore(&room, &state.snapshot()).expect("a snapshot restores");
    assert!(again == state, "restore(snapshot(s)) differs from s");
    assert_eq!(again.view(), view);

    // Every user and stroke the snapshot names, and one of neither.
    let mut users: Vec<UserId> = view.strokes.iter().map(|s| s.user.clone()).collect();
    users.push(UserId::parse("newcomer").expect("a valid user id"));
    let mut strokes: Vec<StrokeId> = view.strokes.iter().map(|s| s.id.clone()).collect();
    strokes.push(StrokeId::parse("fresh").expect("a valid stroke id"));
    for user in &users {
        users_open_strokes_end(&state, user);
        let mut ops = vec![
            Op::Undo { stroke: None },
            Op::Redo { stroke: None },
            Op::Message { text: "hi".into() },
        ];
        for stroke in &strokes {
            ops.push(Op::StrokeBegin {
                stroke: stroke.clone(),
                color: "#000000".into(),
                width: 1.0,
                points: vec![[0.0, 0.0]],
            });
            ops.push(Op::StrokePoints {
                stroke: stroke.clone(),
                points: vec![[1.0, 1.0]],
            });
            ops.push(Op::StrokeEnd {
                stroke: stroke.clone(),
            });
        }
        for (i, op) in ops.into_iter().enumerate() {
            let mut room_state = state.clone();
            let _ = room_state.apply(
                OpRequest {
                    user: user.clone(),
                    cid: Some(Cid::parse(format!("fuzz-{i}")).expect("a valid cid")),
                    op,
                    access: Access::Write,
                    ts: 0,
                },
                &Limits::default(),
            );
            let _ = room_state.view();
        }
    }
});

/// The server's own requests when `user`'s last connection leaves.
fn users_open_strokes_end(state: &RoomState, user: &UserId) {
    let mut room_state = state.clone();
    for request in room_state.orphan_endings(user, 0) {
        let _ = room_state.apply(request, &Limits::default());
    }
}
