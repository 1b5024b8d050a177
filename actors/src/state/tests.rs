use collab_protocol::{Access, ConnId, ErrorCode, Op, UserInfo};

use super::*;

fn room() -> RoomState {
    room_of(RoomKind::Board)
}

fn room_of(kind: RoomKind) -> RoomState {
    RoomState::new(RoomMeta {
        id: RoomId::parse("r1").expect("id"),
        kind,
        epoch: Epoch::parse("e1").expect("id"),
    })
}

fn user(id: &str) -> UserId {
    UserId::parse(id).expect("id")
}

fn sid(id: &str) -> StrokeId {
    StrokeId::parse(id).expect("id")
}

fn begin(stroke: &str) -> Op {
    Op::StrokeBegin {
        stroke: sid(stroke),
        color: "#112233".into(),
        width: 4.0,
        points: vec![[0.0, 0.0]],
    }
}

fn points(stroke: &str, n: usize) -> Op {
    Op::StrokePoints {
        stroke: sid(stroke),
        points: (0..n).map(|i| [i as f64, 1.0]).collect(),
    }
}

fn end(stroke: &str) -> Op {
    Op::StrokeEnd {
        stroke: sid(stroke),
    }
}

fn undo() -> Op {
    Op::Undo { stroke: None }
}

fn redo() -> Op {
    Op::Redo { stroke: None }
}

fn message(text: &str) -> Op {
    Op::Message { text: text.into() }
}

struct Room {
    state: RoomState,
    next_cid: u64,
}

impl Room {
    fn new(state: RoomState) -> Self {
        Room { state, next_cid: 0 }
    }

    fn request(&mut self, who: &str, op: Op, access: Access) -> Result<Applied, ProtocolError> {
        self.next_cid += 1;
        let cid = Cid::parse(format!("c{}", self.next_cid)).expect("id");
        self.request_with_cid(who, Some(cid), op, access)
    }

    fn request_with_cid(
        &mut self,
        who: &str,
        cid: Option<Cid>,
        op: Op,
        access: Access,
    ) -> Result<Applied, ProtocolError> {
        let request = OpRequest {
            user: user(who),
            cid,
            op,
            access,
            ts: 1000,
        };
        let before = self.state.clone();
        let outcome = self.state.apply(request, &Limits::default());
        if !matches!(outcome, Ok(Applied::New(_))) {
            assert_eq!(
                self.state, before,
                "a refused or duplicate op changed the state"
            );
        }
        outcome
    }

    fn ok(&mut self, who: &str, op: Op) -> OpEvent {
        match self.request(who, op, Access::Write) {
            Ok(Applied::New(event)) => event,
            other => panic!("expected a new op, got {other:?}"),
        }
    }

    fn err(&mut self, who: &str, op: Op) -> ErrorCode {
        self.err_with(who, op, Access::Write)
    }

    fn err_with(&mut self, who: &str, op: Op, access: Access) -> ErrorCode {
        match self.request(who, op, access) {
            Err(e) => e.code,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    fn stroke(&mut self, who: &str, id: &str) {
        self.ok(who, begin(id));
        self.ok(who, points(id, 3));
        self.ok(who, end(id));
    }

    fn visible(&self) -> Vec<String> {
        self.state
            .view()
            .strokes
            .iter()
            .map(|s| s.id.to_string())
            .collect()
    }
}

fn board() -> Room {
    Room::new(room())
}

#[test]
fn seqs_start_at_one_and_are_gapless() {
    let mut r = board();
    let seqs: Vec<u64> = (0..5)
        .map(|i| r.ok("ann", message(&format!("m{i}"))).seq.get())
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    assert_eq!(r.state.head(), Seq(5));
    // A refused op does not use up a seq.
    r.err("ann", undo());
    assert_eq!(r.ok("ann", message("next")).seq, Seq(6));
}

#[test]
fn a_stroke_is_drawn_live_and_owned() {
    let mut r = board();
    r.ok("ann", begin("s1"));
    let view = r.state.view();
    assert_eq!(view.strokes.len(), 1);
    assert!(!view.strokes[0].done);
    assert_eq!(view.strokes[0].user, user("ann"));
    r.ok("ann", points("s1", 2));
    r.ok("ann", end("s1"));
    let view = r.state.view();
    assert!(view.strokes[0].done);
    assert_eq!(view.strokes[0].points.len(), 3);
    assert_eq!(view.strokes[0].color, "#112233");
}

#[test]
fn stroke_rules() {
    let mut r = board();
    r.ok("ann", begin("s1"));
    assert_eq!(r.err("bob", points("s1", 1)), ErrorCode::Forbidden);
    assert_eq!(r.err("bob", end("s1")), ErrorCode::Forbidden);
    assert_eq!(r.err("ann", points("nope", 1)), ErrorCode::NotFound);
    assert_eq!(r.err("ann", end("nope")), ErrorCode::NotFound);
    r.ok("ann", end("s1"));
    assert_eq!(r.err("ann", points("s1", 1)), ErrorCode::BadRequest);
    assert_eq!(r.err("ann", end("s1")), ErrorCode::BadRequest);
    // Forbidden outranks the ended-stroke state error.
    assert_eq!(r.err("bob", points("s1", 1)), ErrorCode::Forbidden);
}

#[test]
fn stroke_ids_are_never_reused() {
    let mut r = board();
    r.ok("ann", begin("s1"));
    assert_eq!(r.err("ann", begin("s1")), ErrorCode::BadRequest);
    assert_eq!(r.err("bob", begin("s1")), ErrorCode::BadRequest);
    r.ok("ann", end("s1"));
    r.ok("ann", undo());
    // s1 is undone; a new stroke clears the redo stack and retires it.
    r.stroke("ann", "s2");
    assert_eq!(r.visible(), ["s2"]);
    assert_eq!(r.err("ann", begin("s1")), ErrorCode::BadRequest);
    assert_eq!(r.err("bob", points("s1", 1)), ErrorCode::Forbidden);
    assert_eq!(r.err("ann", points("s1", 1)), ErrorCode::BadRequest);
}

#[test]
fn undo_hides_own_most_recently_ended_stroke() {
    let mut r = board();
    r.stroke("ann", "a1");
    r.stroke("bob", "b1");
    r.stroke("ann", "a2");
    let event = r.ok("bob", undo());
    assert_eq!(
        event.op,
        Op::Undo {
            stroke: Some(sid("b1"))
        }
    );
    assert_eq!(r.visible(), ["a1", "a2"]);
    assert_eq!(r.err("bob", undo()), ErrorCode::NothingToUndo);
    let event = r.ok("ann", undo());
    assert_eq!(
        event.op,
        Op::Undo {
            stroke: Some(sid("a2"))
        }
    );
    r.ok("ann", undo());
    assert_eq!(r.visible(), Vec::<String>::new());
    assert_eq!(r.err("ann", undo()), ErrorCode::NothingToUndo);
}

#[test]
fn undo_follows_end_order_not_begin_order() {
    let mut r = board();
    r.ok("ann", begin("first"));
    r.ok("ann", begin("second"));
    r.ok("ann", end("second"));
    r.ok("ann", end("first"));
    let event = r.ok("ann", undo());
    assert_eq!(
        event.op,
        Op::Undo {
            stroke: Some(sid("first"))
        }
    );
    assert_eq!(r.visible(), ["second"]);
}

#[test]
fn open_strokes_cannot_be_undone() {
    let mut r = board();
    r.ok("ann", begin("s1"));
    assert_eq!(r.err("ann", undo()), ErrorCode::NothingToUndo);
}

#[test]
fn redo_shows_again_and_is_cleared_by_a_new_stroke_end() {
    let mut r = board();
    r.stroke("ann", "a1");
    r.stroke("ann", "a2");
    assert_eq!(r.err("ann", redo()), ErrorCode::NothingToRedo);
    r.ok("ann", undo());
    r.ok("ann", undo());
    assert_eq!(r.visible(), Vec::<String>::new());
    let event = r.ok("ann", redo());
    assert_eq!(
        event.op,
        Op::Redo {
            stroke: Some(sid("a1"))
        }
    );
    assert_eq!(r.visible(), ["a1"]);
    // Beginning a stroke does not clear redo; ending one does.
    r.ok("ann", begin("a3"));
    assert_eq!(r.visible(), ["a1", "a3"]);
    r.ok("bob", begin("b1"));
    r.ok("bob", end("b1"));
    r.ok("ann", redo()); // bob's stroke_end leaves ann's redo alone
    assert_eq!(r.visible(), ["a1", "a2", "a3", "b1"]);
    r.ok("ann", undo());
    r.ok("ann", end("a3"));
    assert_eq!(r.err("ann", redo()), ErrorCode::NothingToRedo);
    assert_eq!(r.visible(), ["a1", "a3", "b1"]);
    // The redone stroke is again the most recent undo step.
    r.ok("ann", undo());
    r.ok("ann", undo());
    assert_eq!(r.visible(), ["b1"]);
}

#[test]
fn undo_keeps_at_least_a_hundred_steps() {
    let mut r = board();
    for i in 0..150 {
        r.stroke("ann", &format!("s{i}"));
    }
    for _ in 0..100 {
        r.ok("ann", undo());
    }
    assert_eq!(r.visible().len(), 50);
    for _ in 0..100 {
        r.ok("ann", redo());
    }
    assert_eq!(r.visible().len(), 150);
}

#[test]
fn a_known_cid_is_re_acked_before_any_other_check() {
    let mut r = board();
    let cid = Cid::parse("once").expect("id");
    let first = r.request_with_cid("ann", Some(cid.clone()), message("hi"), Access::Write);
    let Ok(Applied::New(event)) = first else {
        panic!("{first:?}")
    };
    r.ok("ann", message("later"));
    // Same cid, same user: re-acked with the original seq, even though the
    // op would now be refused (read-only, wrong kind).
    for (op, access) in [
        (message("hi"), Access::Write),
        (undo(), Access::Write),
        (message("hi"), Access::Read),
    ] {
        let again = r.request_with_cid("ann", Some(cid.clone()), op, access);
        assert_eq!(again, Ok(Applied::Duplicate(event.seq)));
    }
    // The same cid from another user is a new op.
    let other = r.request_with_cid("bob", Some(cid), message("hi"), Access::Write);
    assert!(matches!(other, Ok(Applied::New(_))), "{other:?}");
}

#[test]
fn errors_never_use_up_a_cid() {
    let mut r = board();
    let cid = Cid::parse("c").expect("id");
    let refused = r.request_with_cid("ann", Some(cid.clone()), undo(), Access::Write);
    assert_eq!(
        refused.err().map(|e| e.code),
        Some(ErrorCode::NothingToUndo)
    );
    let ok = r.request_with_cid("ann", Some(cid), message("x"), Access::Write);
    assert!(matches!(ok, Ok(Applied::New(_))), "{ok:?}");
}

#[test]
fn cid_window_holds_the_last_1024() {
    let mut r = board();
    for i in 0..1100 {
        let cid = Cid::parse(format!("k{i}")).expect("id");
        r.request_with_cid("ann", Some(cid), message("m"), Access::Write)
            .expect("applies");
    }
    for i in 1100 - CID_WINDOW..1100 {
        let cid = Cid::parse(format!("k{i}")).expect("id");
        assert_eq!(
            r.state.duplicate_of(&user("ann"), Some(&cid)),
            Some(Seq(i as u64 + 1))
        );
    }
    let evicted = Cid::parse("k0").expect("id");
    assert_eq!(r.state.duplicate_of(&user("ann"), Some(&evicted)), None);
}

#[test]
fn read_only_users_cannot_write() {
    let mut r = board();
    r.stroke("ann", "a1");
    assert_eq!(
        r.err_with("ro", message("x"), Access::Read),
        ErrorCode::Forbidden
    );
    assert_eq!(
        r.err_with("ro", begin("z"), Access::Read),
        ErrorCode::Forbidden
    );
    // Forbidden outranks the room state (nothing to undo).
    assert_eq!(r.err_with("ro", undo(), Access::Read), ErrorCode::Forbidden);
    // Malformed outranks forbidden.
    assert_eq!(
        r.err_with("ro", message(""), Access::Read),
        ErrorCode::BadRequest
    );
}

#[test]
fn channels_take_messages_only() {
    let mut r = Room::new(room_of(RoomKind::Channel));
    for op in [begin("s"), points("s", 1), end("s"), undo(), redo()] {
        assert_eq!(r.err("ann", op), ErrorCode::BadRequest);
    }
    // Stroke ops in a channel are bad_request even for a read-only user.
    assert_eq!(
        r.err_with("ro", undo(), Access::Read),
        ErrorCode::BadRequest
    );
    r.ok("ann", message("hello"));
    assert_eq!(r.state.view().messages.len(), 1);
}

#[test]
fn limits_apply() {
    let mut r = board();
    r.ok("ann", begin("s"));
    r.ok("ann", points("s", 1024));
    assert_eq!(r.err("ann", points("s", 1025)), ErrorCode::TooLarge);
    assert_eq!(
        r.err("ann", message(&"x".repeat(4001))),
        ErrorCode::TooLarge
    );
    r.ok("ann", message(&"x".repeat(4000)));
    let nan = Op::StrokePoints {
        stroke: sid("s"),
        points: vec![[f64::NAN, 0.0]],
    };
    assert_eq!(r.err("ann", nan), ErrorCode::BadRequest);
    let wide = Op::StrokeBegin {
        stroke: sid("w"),
        color: "#000000".into(),
        width: 1e9,
        points: vec![],
    };
    assert_eq!(r.err("ann", wide), ErrorCode::BadRequest);
    let thin = Op::StrokeBegin {
        stroke: sid("w"),
        color: "#000000".into(),
        width: 0.0,
        points: vec![],
    };
    assert_eq!(r.err("ann", thin), ErrorCode::BadRequest);
    let colour = Op::StrokeBegin {
        stroke: sid("w"),
        color: "blue".into(),
        width: 1.0,
        points: vec![],
    };
    assert_eq!(r.err("ann", colour), ErrorCode::BadRequest);
}

#[test]
fn the_state_keeps_the_last_fifty_messages() {
    let mut r = board();
    for i in 0..60 {
        r.ok("ann", message(&format!("m{i}")));
    }
    let messages = r.state.view().messages;
    assert_eq!(messages.len(), 50);
    assert_eq!(messages[0].seq, Seq(11));
    assert_eq!(messages[49].seq, Seq(60));
    assert_eq!(messages[0].op, message("m10"));
}

#[test]
fn view_lists_visible_strokes_in_begin_order() {
    let mut r = board();
    r.ok("ann", begin("a"));
    r.ok("bob", begin("b"));
    r.ok("bob", end("b"));
    r.ok("ann", end("a"));
    r.ok("cat", begin("c"));
    assert_eq!(r.visible(), ["a", "b", "c"]);
    r.ok("bob", undo());
    r.ok("bob", redo());
    assert_eq!(r.visible(), ["a", "b", "c"]);
}

fn info(id: &str) -> UserInfo {
    UserInfo {
        id: user(id),
        name: id.to_uppercase(),
        color: collab_protocol::color::user_color(id),
    }
}

fn conn(gateway: &str, id: &str) -> collab_protocol::envelope::ConnRef {
    collab_protocol::envelope::ConnRef {
        gateway: gateway.into(),
        conn: ConnId::parse(id).expect("id"),
    }
}

#[test]
fn presence_is_per_user_across_tabs() {
    let mut p = Presence::default();
    assert_eq!(
        p.join(conn("g1", "1"), info("ann")),
        Some(PresenceChange::Joined(info("ann")))
    );
    assert_eq!(p.join(conn("g2", "9"), info("ann")), None);
    assert_eq!(p.join(conn("g1", "1"), info("ann")), None);
    assert_eq!(
        p.join(conn("g1", "2"), info("bob")),
        Some(PresenceChange::Joined(info("bob")))
    );
    assert_eq!(p.list(), [info("ann"), info("bob")]);
    assert_eq!(p.leave(&conn("g1", "1")), None);
    assert!(p.is_present(&user("ann")));
    assert_eq!(
        p.leave(&conn("g2", "9")),
        Some(PresenceChange::Left(info("ann")))
    );
    assert_eq!(p.leave(&conn("g2", "9")), None);
    assert_eq!(p.list(), [info("bob")]);
}

#[test]
fn a_dead_gateway_takes_its_connections_along() {
    let mut p = Presence::default();
    p.join(conn("g1", "1"), info("ann"));
    p.join(conn("g2", "1"), info("ann"));
    p.join(conn("g1", "2"), info("bob"));
    let changes = p.leave_gateway("g1");
    assert_eq!(changes, [PresenceChange::Left(info("bob"))]);
    assert_eq!(p.list(), [info("ann")]);
    assert_eq!(p.connection_count(), 1);
}

#[test]
fn orphaned_strokes_are_ended_by_the_server() {
    let mut r = board();
    r.ok("ann", begin("a1"));
    r.ok("ann", begin("a2"));
    r.ok("bob", begin("b1"));
    let endings = r.state.orphan_endings(&user("ann"), 5);
    assert_eq!(endings.len(), 2);
    for ending in endings {
        assert_eq!(ending.cid, None);
        let Ok(Applied::New(event)) = r.state.apply(ending, &Limits::default()) else {
            panic!("orphan ending refused")
        };
        assert_eq!(event.cid, None);
        assert_eq!(event.user, user("ann"));
    }
    assert!(r.state.open_strokes_of(&user("ann")).is_empty());
    assert_eq!(r.state.users_with_open_strokes(), [user("bob")]);
    // Server-ended strokes count like any other stroke_end.
    let event = r.ok("ann", undo());
    assert_eq!(
        event.op,
        Op::Undo {
            stroke: Some(sid("a2"))
        }
    );
}

#[test]
fn join_plans() {
    let epoch = Epoch::parse("e1").expect("id");
    let other = Epoch::parse("e0").expect("id");
    let plan = |since, ep: Option<&Epoch>, head| plan_join(since, ep, &epoch, Seq(head), 100);
    assert_eq!(plan(None, None, 10), JoinPlan::Reset);
    assert_eq!(plan(Some(4), None, 10), JoinPlan::Replay { since: Seq(4) });
    assert_eq!(
        plan(Some(4), Some(&epoch), 10),
        JoinPlan::Replay { since: Seq(4) }
    );
    assert_eq!(plan(Some(4), Some(&other), 10), JoinPlan::Reset);
    assert_eq!(plan(Some(11), None, 10), JoinPlan::Reset);
    assert_eq!(
        plan(Some(10), None, 10),
        JoinPlan::Replay { since: Seq(10) }
    );
    assert_eq!(plan(Some(0), None, 100), JoinPlan::Replay { since: Seq(0) });
    assert_eq!(plan(Some(0), None, 101), JoinPlan::Reset);
}

#[test]
fn snapshots_round_trip() {
    let mut r = board();
    r.stroke("ann", "a1");
    r.stroke("bob", "b1");
    r.ok("ann", undo());
    r.ok("ann", begin("open"));
    r.ok("bob", message("hi"));
    r.ok("bob", undo());
    r.stroke("bob", "b2"); // retires b1
    let bytes = r.state.snapshot();
    let restored = RoomState::restore(&RoomId::parse("r1").expect("id"), &bytes).expect("restores");
    assert_eq!(restored, r.state);
    assert_eq!(restored.view(), r.state.view());
    assert_eq!(restored.head(), r.state.head());
    assert!(matches!(
        RoomState::restore(&RoomId::parse("other").expect("id"), &bytes),
        Err(SnapshotError::WrongRoom { .. })
    ));
    assert!(RoomState::restore(&RoomId::parse("r1").expect("id"), b"garbage").is_err());
}

#[test]
fn replay_refuses_gaps_and_foreign_events() {
    let mut r = board();
    let e1 = r.ok("ann", message("one"));
    let mut fresh = room();
    let mut skipped = e1.clone();
    skipped.seq = Seq(2);
    assert!(fresh.replay(&skipped).is_err());
    fresh.replay(&e1).expect("replays");
    assert!(fresh.replay(&e1).is_err());
    let bogus = OpEvent {
        seq: Seq(2),
        op: end("nope"),
        ..e1
    };
    assert!(fresh.replay(&bogus).is_err());
    assert_eq!(fresh, r.state);
}
