//! Writes the seed corpus of the `snapshot` target: snapshots of rooms in
//! the states the protocol tests build (empty; strokes open, ended, undone
//! and retired; several users; messages; a channel). Run it again when
//! the snapshot format changes:
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example write_seeds -- fuzz/corpus/snapshot
//! ```

use std::path::PathBuf;

use collab_actors::state::{OpRequest, RoomMeta, RoomState};
use collab_protocol::{Access, Cid, Epoch, Limits, Op, RoomId, RoomKind, StrokeId, UserId};

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/corpus/snapshot".into()),
    );
    std::fs::create_dir_all(&dir)?;
    let mut written = 0;
    for (name, state) in rooms() {
        std::fs::write(dir.join(format!("seed-{name}")), state.snapshot())?;
        written += 1;
    }
    println!("wrote {written} snapshots into {}", dir.display());
    Ok(())
}

fn rooms() -> Vec<(&'static str, RoomState)> {
    let mut rooms = Vec::new();
    rooms.push(("empty", room(RoomKind::Board)));

    let mut drawn = room(RoomKind::Board);
    let mut n = 0;
    for user in ["ann", "bob"] {
        for s in 0..3 {
            let stroke = format!("{user}-{s}");
            apply(&mut drawn, &mut n, user, begin(&stroke));
            apply(&mut drawn, &mut n, user, points(&stroke));
            if s < 2 {
                apply(
                    &mut drawn,
                    &mut n,
                    user,
                    Op::StrokeEnd {
                        stroke: id(&stroke),
                    },
                );
            }
        }
        apply(
            &mut drawn,
            &mut n,
            user,
            Op::Message {
                text: format!("{user} was here"),
            },
        );
    }
    rooms.push(("strokes", drawn.clone()));

    // Undone (redoable), redone, and undone then retired by a new stroke.
    apply(&mut drawn, &mut n, "ann", Op::Undo { stroke: None });
    apply(&mut drawn, &mut n, "ann", Op::Undo { stroke: None });
    apply(&mut drawn, &mut n, "ann", Op::Redo { stroke: None });
    rooms.push(("undone", drawn.clone()));
    apply(
        &mut drawn,
        &mut n,
        "ann",
        Op::StrokeEnd {
            stroke: id("ann-2"),
        },
    );
    rooms.push(("retired", drawn));

    let mut channel = room(RoomKind::Channel);
    let mut n = 0;
    for i in 0..60 {
        let user = ["ann", "bob", "cat"][i % 3];
        apply(
            &mut channel,
            &mut n,
            user,
            Op::Message {
                text: format!("message {i} ✓"),
            },
        );
    }
    rooms.push(("channel", channel));
    rooms
}

fn room(kind: RoomKind) -> RoomState {
    RoomState::new(RoomMeta {
        id: RoomId::parse("fuzz").expect("a valid room id"),
        kind,
        epoch: Epoch::parse("e").expect("a valid epoch"),
    })
}

fn apply(state: &mut RoomState, n: &mut u64, user: &str, op: Op) {
    *n += 1;
    let request = OpRequest {
        user: UserId::parse(user).expect("a valid user id"),
        cid: Some(Cid::parse(format!("c{n}")).expect("a valid cid")),
        op,
        access: Access::Write,
        ts: 1_700_000_000_000 + i64::try_from(*n).unwrap_or(0),
    };
    if let Err(e) = state.apply(request, &Limits::default()) {
        panic!("a seed op was refused: {e}");
    }
}

fn id(stroke: &str) -> StrokeId {
    StrokeId::parse(stroke).expect("a valid stroke id")
}

fn begin(stroke: &str) -> Op {
    Op::StrokeBegin {
        stroke: id(stroke),
        color: "#336699".into(),
        width: 2.5,
        points: vec![[1.0, 2.0]],
    }
}

fn points(stroke: &str) -> Op {
    Op::StrokePoints {
        stroke: id(stroke),
        points: vec![[3.0, 4.5], [-1.0, 1e9]],
    }
}
