use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::error::ErrorCode;
use crate::ops::OpKind;

fn decode(v: serde_json::Value) -> Result<ClientFrame, DecodeError> {
    decode_client_frame(&v.to_string())
}

fn code_of(text: &str) -> ErrorCode {
    match decode_client_frame(text) {
        Ok(frame) => panic!("decoded {frame:?} from {text}"),
        Err(e) => e.error.code,
    }
}

#[test]
fn decodes_every_client_frame() {
    let frames = [
        json!({"type":"join","room":"r1"}),
        json!({"type":"join","room":"r1","since":5,"epoch":"e1"}),
        json!({"type":"leave","room":"r1"}),
        json!({"type":"op","room":"r1","cid":"c1","op":{"kind":"stroke_begin","stroke":"s","color":"#ff0000","width":2,"points":[[1,2]]}}),
        json!({"type":"op","room":"r1","cid":"c1","op":{"kind":"stroke_points","stroke":"s","points":[[1.5,-2]]}}),
        json!({"type":"op","room":"r1","cid":"c1","op":{"kind":"stroke_end","stroke":"s"}}),
        json!({"type":"op","room":"r1","cid":"c1","op":{"kind":"undo"}}),
        json!({"type":"op","room":"r1","cid":"c1","op":{"kind":"redo"}}),
        json!({"type":"op","room":"r1","cid":"c1","op":{"kind":"message","text":"hi"}}),
        json!({"type":"cursor","room":"r1","x":1,"y":2.5}),
        json!({"type":"cursor_leave","room":"r1"}),
        json!({"type":"ping"}),
        json!({"type":"ping","id":7}),
        json!({"type":"ping","id":"abc"}),
    ];
    for frame in frames {
        let decoded = decode(frame.clone()).unwrap_or_else(|e| panic!("{frame}: {e}"));
        // Round trip: encode and decode again to the same value.
        let again = decode_client_frame(&serde_json::to_string(&decoded).expect("encodes"))
            .expect("decodes again");
        assert_eq!(decoded, again);
    }
}

#[test]
fn unknown_fields_are_ignored() {
    let frame = decode(json!({"type":"leave","room":"r","extra":{"deep":[1]}}));
    assert!(frame.is_ok());
    let frame = decode(
        json!({"type":"op","room":"r","cid":"c","op":{"kind":"message","text":"x","font":"big"}}),
    );
    assert!(frame.is_ok());
}

#[test]
fn stroke_begin_points_may_be_absent() {
    let frame = decode(
        json!({"type":"op","room":"r","cid":"c","op":{"kind":"stroke_begin","stroke":"s","color":"#000000","width":1}}),
    );
    match frame {
        Ok(ClientFrame::Op { op, .. }) => assert!(op.points().is_empty()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_frames_are_bad_requests() {
    for text in [
        "",
        "not json",
        "[1,2]",
        "\"join\"",
        "42",
        "null",
        "{}",
        r#"{"type":"dance","room":"r"}"#,
        r#"{"type":7}"#,
        r#"{"type":"join"}"#,
        r#"{"type":"join","room":5}"#,
        r#"{"type":"join","room":"r","since":-1}"#,
        r#"{"type":"join","room":"r","since":1.5}"#,
        r#"{"type":"join","room":"r","since":"3"}"#,
        r#"{"type":"join","room":"a/b"}"#,
        r#"{"type":"op","room":"r","cid":"c","op":{"kind":"teleport"}}"#,
        r#"{"type":"op","room":"r","cid":"c","op":{"kind":"stroke_points","stroke":"s","points":[["1",2]]}}"#,
        r#"{"type":"op","room":"r","cid":"c","op":{"kind":"stroke_points","stroke":"s","points":[[1,2,3]]}}"#,
        r#"{"type":"op","room":"r","cid":"c","op":{"kind":"stroke_points","stroke":"s","points":[[NaN,2]]}}"#,
        r#"{"type":"op","room":"r","cid":"c","op":{"kind":"stroke_points","stroke":"s","points":[[1e999,2]]}}"#,
        r#"{"type":"op","room":"r","cid":"","op":{"kind":"undo"}}"#,
        r#"{"type":"op","room":"r","op":{"kind":"undo"}}"#,
        r#"{"type":"op","room":"r","cid":"c"}"#,
        r#"{"type":"cursor","room":"r","x":"1","y":2}"#,
        r#"{"type":"cursor","room":"r","x":1}"#,
        // Tags are strings, never variant indexes.
        r#"{"type":1,"room":"r"}"#,
        r#"{"type":"op","room":"r","cid":"c","op":{"kind":5,"text":"x"}}"#,
        r#"{"type":"op","room":"r","cid":"c","op":{"kind":3}}"#,
    ] {
        assert_eq!(code_of(text), ErrorCode::BadRequest, "{text}");
    }
}

#[test]
fn errors_name_the_room_and_cid() {
    let err = decode_client_frame(
        r#"{"type":"op","room":"r9","cid":"c9","op":{"kind":"message","text":7}}"#,
    )
    .expect_err("wrong type");
    assert_eq!(err.room.as_deref(), Some("r9"));
    assert_eq!(err.cid.as_deref(), Some("c9"));
    let err = decode_client_frame(r#"{"type":"op","room":"r","cid":"c","op":{"kind":"zap"}}"#)
        .expect_err("unknown kind");
    assert!(err.error.message.contains("unknown op kind"), "{err}");
    let err = decode_client_frame(r#"{"type":"zap"}"#).expect_err("unknown type");
    assert!(err.error.message.contains("unknown frame type"), "{err}");
}

#[test]
fn error_frame_shape() {
    let frame = ServerFrame::error(
        &ProtocolError::new(ErrorCode::TooLarge, "too many points"),
        Some("r"),
        Some("c"),
    );
    let v: serde_json::Value = serde_json::from_str(&frame.to_json()).expect("json");
    assert_eq!(
        v,
        json!({"type":"error","code":"too_large","message":"too many points","cid":"c","room":"r"})
    );
    let frame = ServerFrame::error(&ProtocolError::bad_request("x"), None, None);
    let v: serde_json::Value = serde_json::from_str(&frame.to_json()).expect("json");
    assert_eq!(
        v,
        json!({"type":"error","code":"bad_request","message":"x"})
    );
}

#[test]
fn op_frame_shape() {
    let event = OpEvent {
        room: RoomId::parse("r").expect("id"),
        seq: Seq(3),
        user: UserId::parse("ann").expect("id"),
        ts: 1_700_000_000_000,
        cid: None,
        op: Op::Undo {
            stroke: Some(StrokeId::parse("s1").expect("id")),
        },
    };
    let v: serde_json::Value =
        serde_json::from_str(&ServerFrame::Op(event.clone()).to_json()).expect("json");
    assert_eq!(
        v,
        json!({"type":"op","room":"r","seq":3,"user":"ann","ts":1_700_000_000_000_i64,"cid":null,
               "op":{"kind":"undo","stroke":"s1"}})
    );
    let back: ServerFrame = serde_json::from_value(v).expect("decodes");
    assert_eq!(back, ServerFrame::Op(event));
}

#[test]
fn joined_frame_shapes() {
    let body = JoinedBody {
        room: RoomId::parse("r").expect("id"),
        kind: RoomKind::Board,
        epoch: Epoch::parse("e").expect("id"),
        head: Seq(0),
        presence: vec![],
        reset: true,
        state: Some(RoomView::default()),
        ops: None,
    };
    let v: serde_json::Value =
        serde_json::from_str(&ServerFrame::Joined(body).to_json()).expect("json");
    assert_eq!(
        v,
        json!({"type":"joined","room":"r","kind":"board","epoch":"e","head":0,"presence":[],
               "reset":true,"state":{"strokes":[],"messages":[]}})
    );
}

#[test]
fn op_kinds_cover_the_protocol() {
    let names: Vec<&str> = OpKind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "stroke_begin",
            "stroke_points",
            "stroke_end",
            "undo",
            "redo",
            "message"
        ]
    );
}

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        prop::sample::select(vec![
            "join",
            "op",
            "leave",
            "cursor",
            "ping",
            "room",
            "r",
            "stroke_begin",
            "#ff00ff",
            "message",
            "undo",
            "",
        ])
        .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "type", "room", "cid", "op", "kind", "stroke", "points", "x", "y", "since",
                    "epoch", "text", "color", "width", "id",
                ])
                .prop_map(str::to_owned),
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = decode_client_frame(&text);
    }

    #[test]
    fn arbitrary_json_never_panics(value in arb_json()) {
        match decode_client_frame(&value.to_string()) {
            Ok(frame) => {
                let again = decode_client_frame(&serde_json::to_string(&frame).expect("encodes"));
                prop_assert_eq!(again.ok(), Some(frame));
            }
            Err(e) => prop_assert_eq!(e.error.code, ErrorCode::BadRequest),
        }
    }

    #[test]
    fn op_events_round_trip(
        seq in 1u64..u64::MAX / 2,
        ts in any::<i64>(),
        pts in prop::collection::vec((-1e9f64..1e9, -1e9f64..1e9), 0..20),
        text in "\\PC{1,40}",
    ) {
        let points: Vec<Point> = pts.into_iter().map(|(x, y)| [x, y]).collect();
        for op in [
            Op::StrokeBegin { stroke: StrokeId::parse("s").expect("id"), color: "#abcdef".into(), width: 2.5, points: points.clone() },
            Op::Message { text: text.clone() },
        ] {
            let frame = ServerFrame::Op(OpEvent {
                room: RoomId::parse("room").expect("id"),
                seq: Seq(seq),
                user: UserId::parse("u").expect("id"),
                ts,
                cid: Some(Cid::parse("c").expect("id")),
                op,
            });
            let back: ServerFrame = serde_json::from_str(&frame.to_json()).expect("decodes");
            prop_assert_eq!(back, frame);
        }
    }
}

#[test]
fn state_messages_are_op_frames() {
    let event = OpEvent {
        room: RoomId::parse("r").expect("id"),
        seq: Seq(1),
        user: UserId::parse("ann").expect("id"),
        ts: 5,
        cid: Some(Cid::parse("c").expect("id")),
        op: Op::Message { text: "hi".into() },
    };
    let view = RoomView {
        strokes: vec![],
        messages: vec![event.clone()],
    };
    let v = serde_json::to_value(&view).expect("json");
    let frame: serde_json::Value =
        serde_json::from_str(&ServerFrame::Op(event).to_json()).expect("json");
    assert_eq!(v["messages"][0], frame);
    let back: RoomView = serde_json::from_value(v).expect("decodes");
    assert_eq!(back, view);
}
