use super::*;

#[test]
fn boards_have_one_drawer_and_watchers() {
    let s = Scenario::Boards {
        boards: 3,
        users: 10,
        ops_per_sec: 10.0,
        cursor_hz: 20.0,
    };
    let drawer = s.behaviour(2, 0);
    let ops = drawer.ops.expect("the first member draws");
    assert_eq!(ops.period_us, 100_000);
    assert!(ops.phase_us < ops.period_us);
    assert_eq!(
        drawer.cursor.expect("and moves the cursor").period_us,
        50_000
    );
    for member in 1..10 {
        assert_eq!(s.behaviour(2, member), Behaviour::default());
    }
    assert_eq!(s.offered_ops_per_sec(), 30.0);
}

#[test]
fn chat_members_take_turns() {
    let s = Scenario::Chat {
        channels: 2,
        users: 4,
        messages_per_sec: 2.0,
    };
    let mut phases: Vec<u64> = (0..4)
        .map(|m| {
            let ops = s.behaviour(1, m).ops.expect("every member sends");
            assert_eq!(ops.period_us, 4 * 500_000);
            ops.phase_us
        })
        .collect();
    phases.sort_unstable();
    phases.dedup();
    assert_eq!(phases.len(), 4, "one member per turn");
}

#[test]
fn idle_rooms_hold_exactly_the_connections() {
    let s = Scenario::Idle {
        connections: 25,
        users: 10,
    };
    assert_eq!(s.shape(), (3, 10));
    let total: u32 = (0..3).map(|r| s.users_in(r)).sum();
    assert_eq!(total, 25);
}

#[test]
fn draw_pattern_begins_points_and_ends_strokes() {
    let p = Pattern::Draw { stroke_ops: 3 };
    let kinds: Vec<(OpKind, u64)> = (0..6).map(|t| (p.ops(t).0[0], p.ops(t).1)).collect();
    assert_eq!(
        kinds,
        vec![
            (OpKind::StrokeBegin, 0),
            (OpKind::StrokePoints, 0),
            (OpKind::StrokeEnd, 0),
            (OpKind::StrokeBegin, 1),
            (OpKind::StrokePoints, 1),
            (OpKind::StrokeEnd, 1),
        ]
    );
    assert_eq!(Pattern::StrokePair.ops(7).0.len(), 2);
}

#[test]
fn points_are_valid_json_pairs() {
    let points: Vec<[f64; 2]> = serde_json::from_str(&points_json(12)).expect("json");
    assert_eq!(points.len(), POINTS_PER_OP);
}

#[test]
fn split_covers_every_room_once() {
    use crate::run::split;
    for (rooms, workers) in [(10, 3), (1, 4), (1000, 2), (7, 7)] {
        let shares = split(rooms, workers);
        assert_eq!(shares.first().map(|s| s.0), Some(0));
        assert_eq!(shares.last().map(|s| s.1), Some(rooms));
        for pair in shares.windows(2) {
            assert_eq!(pair[0].1, pair[1].0);
        }
    }
}

#[test]
fn rate_percent_scales_every_rate() {
    let s = Scenario::Classroom {
        rooms: 1,
        users: 50,
        cursor_hz: 20.0,
        stroke_secs: 5.0,
    };
    match s.with_rate_percent(25) {
        Scenario::Classroom {
            cursor_hz,
            stroke_secs,
            ..
        } => {
            assert_eq!(cursor_hz, 5.0);
            assert_eq!(stroke_secs, 20.0);
        }
        other => panic!("not a classroom: {other:?}"),
    }
}

#[test]
fn watch_takes_name_equals_pid() {
    use crate::run::parse_watch;
    assert_eq!(parse_watch("g1=4242"), Ok(("g1".to_owned(), 4242)));
    assert_eq!(parse_watch("cql=1"), Ok(("cql".to_owned(), 1)));
    for bad in ["g1", "=42", "g1=", "g1=x", "g1=-3"] {
        assert!(parse_watch(bad).is_err(), "{bad} parsed");
    }
}
