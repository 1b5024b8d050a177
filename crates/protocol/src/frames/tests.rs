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
        json!({"type":"refresh","token":"a.b.c"}),
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

/// `refresh` carries its token as a string; anything else is refused
/// like any malformed frame. Refresh is rare: it takes the Value path.
#[test]
fn refresh_frames() {
    assert_eq!(
        assert_value_path(r#"{"type":"refresh","token":"a.b.c"}"#).expect("decodes"),
        ClientFrame::Refresh {
            token: "a.b.c".into()
        }
    );
    for text in [
        r#"{"type":"refresh"}"#,
        r#"{"type":"refresh","token":null}"#,
        r#"{"type":"refresh","token":7}"#,
    ] {
        assert_eq!(code_of(text), ErrorCode::BadRequest, "{text}");
    }
    assert_eq!(
        decode(json!({"type":"refresh","token":"t"}))
            .expect("decodes")
            .room(),
        None
    );
}

#[test]
fn token_frames_shape() {
    let v: serde_json::Value =
        serde_json::from_str(&ServerFrame::TokenExpiring { exp: 1_800_000_000 }.to_json())
            .expect("json");
    assert_eq!(v, json!({"type":"token_expiring","exp":1_800_000_000u64}));
    let v: serde_json::Value =
        serde_json::from_str(&ServerFrame::Refreshed { exp: 1_800_000_060 }.to_json())
            .expect("json");
    assert_eq!(v, json!({"type":"refreshed","exp":1_800_000_060u64}));
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

// === the fast path of decode_client_frame ===

/// `decode_client_frame` must answer exactly as the Value path, and the
/// fast path, when it answers, must answer as the Value path too.
fn assert_fast_path_agrees(text: &str) {
    let reference = decode_client_frame_via_value(text);
    if let Some(frame) = fast::decode(text) {
        assert_eq!(Ok(frame), reference, "fast path on {text}");
    }
    assert_eq!(decode_client_frame(text), reference, "{text}");
}

/// Checks [`assert_fast_path_agrees`] and that the fast path answered.
fn assert_fast(text: &str) -> ClientFrame {
    assert_fast_path_agrees(text);
    fast::decode(text).unwrap_or_else(|| panic!("fast path refused {text}"))
}

/// Checks [`assert_fast_path_agrees`] and that the fast path left `text`
/// to the Value path; returns what that gave.
fn assert_value_path(text: &str) -> Result<ClientFrame, DecodeError> {
    assert_fast_path_agrees(text);
    assert_eq!(fast::decode(text), None, "fast path took {text}");
    decode_client_frame(text)
}

fn room(id: &str) -> RoomId {
    RoomId::parse(id).expect("room id")
}

fn stroke(id: &str) -> StrokeId {
    StrokeId::parse(id).expect("stroke id")
}

#[test]
fn fast_path_takes_every_valid_frame() {
    for text in [
        r#"{"type":"join","room":"r1"}"#,
        r#"{"type":"join","room":"r1","since":5,"epoch":"e1"}"#,
        r#"{"type":"leave","room":"r1"}"#,
        r##"{"type":"op","room":"r1","cid":"c1","op":{"kind":"stroke_begin","stroke":"s","color":"#ff0000","width":2,"points":[[1,2]]}}"##,
        r##"{"type":"op","room":"r1","cid":"c1","op":{"kind":"stroke_begin","stroke":"s","color":"#ff0000","width":2.5}}"##,
        r#"{"type":"op","room":"r1","cid":"c1","op":{"kind":"stroke_points","stroke":"s","points":[[1.5,-2],[1e300,-0],[18446744073709551616,0.1]]}}"#,
        r#"{"type":"op","room":"r1","cid":"c1","op":{"kind":"stroke_end","stroke":"s"}}"#,
        r#"{"type":"op","room":"r1","cid":"c1","op":{"kind":"undo"}}"#,
        r#"{"type":"op","room":"r1","cid":"c1","op":{"kind":"redo","stroke":"s"}}"#,
        r#"{"type":"op","room":"r1","cid":"c1","op":{"kind":"message","text":"hi"}}"#,
        r#"{"type":"cursor","room":"r1","x":1,"y":2.5}"#,
        r#"{"type":"cursor_leave","room":"r1"}"#,
        r#"{"type":"ping"}"#,
        r#"{"type":"ping","id":7}"#,
        r#"{"type":"ping","id":{"a":[1,"b",null,{"a":-0.5}],"a":2}}"#,
        " {\n\"room\" : \"r1\" ,\t\"type\":\"leave\" } ",
    ] {
        assert_fast(text);
    }
}

#[test]
fn duplicate_keys_take_the_value_path() {
    // `Value` keeps the last.
    assert_eq!(
        assert_value_path(r#"{"type":"leave","room":"a","room":"b"}"#),
        Ok(ClientFrame::Leave { room: room("b") })
    );
    assert_eq!(
        assert_value_path(r#"{"type":"ping","room":"r","type":"leave"}"#),
        Ok(ClientFrame::Leave { room: room("r") })
    );
    assert_eq!(
        assert_value_path(r#"{"type":"leave","room":"r","x":1,"x":"two"}"#),
        Ok(ClientFrame::Leave { room: room("r") })
    );
    assert_value_path(
        r#"{"type":"op","room":"r","cid":"c","op":{"kind":"undo","stroke":"a","stroke":"b"}}"#,
    )
    .expect("decodes");
    assert_value_path(r#"{"type":"leave","room":"a","room":5}"#).expect_err("refused");
    // A repeated key that no frame has is no concern of the fast path.
    assert_fast(r#"{"type":"leave","room":"r","z":1,"z":{"a":2}}"#);
}

#[test]
fn numeric_tags_take_the_value_path() {
    for text in [
        r#"{"type":1,"room":"r"}"#,
        r#"{"type":1.0,"room":"r"}"#,
        r#"{"type":true,"room":"r"}"#,
        r#"{"type":null,"room":"r"}"#,
        r#"{"type":"op","room":"r","cid":"c","op":{"kind":3,"stroke":"s"}}"#,
        r#"{"type":"op","room":"r","cid":"c","op":{"kind":5,"text":"x"}}"#,
        r#"{"type":"op","room":"r","cid":"c","op":{"stroke":"s"}}"#,
        r#"{"type":"dance","room":"r"}"#,
        r#"{"type":"op","room":"r","cid":"c","op":{"kind":"zap"}}"#,
    ] {
        assert_value_path(text).expect_err("refused");
    }
}

#[test]
fn fields_of_other_variants_are_not_parsed() {
    // The derived code ignores them, whatever their type.
    assert_eq!(
        assert_fast(r#"{"type":"leave","room":"r","x":"left","since":-1,"op":7,"id":[]}"#),
        ClientFrame::Leave { room: room("r") }
    );
    assert_fast(r#"{"type":"ping","room":5,"cid":"","epoch":""}"#);
    assert_fast(
        r#"{"type":"op","room":"r","cid":"c","op":{"kind":"message","text":"hi","points":"no","width":"w","stroke":""}}"#,
    );
    assert_fast(
        r#"{"type":"op","room":"r","cid":"c","op":{"kind":"stroke_end","stroke":"s","type":1,"kind2":[]}}"#,
    );
}

#[test]
fn ignored_values_must_still_be_what_value_accepts() {
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    for text in [
        // A number beyond f64, a lone surrogate: invalid for `Value`,
        // though a raw slice is only checked for syntax.
        r#"{"type":"leave","room":"r","x":1e999}"#.to_owned(),
        r#"{"type":"leave","room":"r","extra":-1e400}"#.to_owned(),
        r#"{"type":"leave","room":"r","junk":"\ud800"}"#.to_owned(),
        r#"{"type":"leave","room":"r","junk":{"\udc00":1}}"#.to_owned(),
        r#"{"type":"op","room":"r","cid":"c","op":{"kind":"undo","text":"\ud83d"}}"#.to_owned(),
        r#"{"type":"op","room":"r","cid":"c","op":{"kind":"undo","junk":[1e999]}}"#.to_owned(),
        // Nesting beyond serde_json's limit of the whole frame.
        format!(r#"{{"type":"leave","room":"r","x":{}}}"#, deep(127)),
        format!(r#"{{"type":"leave","room":"r","junk":{}}}"#, deep(127)),
        format!(r#"{{"type":"ping","id":{}}}"#, deep(127)),
        format!(
            r#"{{"type":"op","room":"r","cid":"c","op":{{"kind":"undo","text":{}}}}}"#,
            deep(126)
        ),
    ] {
        assert_value_path(&text).expect_err("refused");
    }
    // Just within the limit: accepted, by the Value path.
    assert_value_path(&format!(r#"{{"type":"ping","id":{}}}"#, deep(126))).expect("decodes");
    assert_value_path(&format!(
        r#"{{"type":"leave","room":"r","z":{}}}"#,
        deep(126)
    ))
    .expect("decodes");
    // A surrogate pair is fine.
    assert_fast(r#"{"type":"leave","room":"r","junk":"\ud83d\ude00"}"#);
}

#[test]
fn escapes_are_parsed() {
    assert_eq!(
        assert_fast(r#"{"type":"join","room":"r\u0031","epoch":"e\"\\\/\u00e9"}"#),
        ClientFrame::Join {
            room: room("r1"),
            since: None,
            epoch: Some(Epoch::parse("e\"\\/é").expect("epoch")),
            resume_strokes: false,
        }
    );
    match assert_fast(
        r#"{"type":"op","room":"r","cid":"c\n","op":{"kind":"message","text":"a\tb\u263a\ud83d\ude00"}}"#,
    ) {
        ClientFrame::Op { cid, op, .. } => {
            assert_eq!(cid.as_str(), "c\n");
            assert_eq!(
                op,
                Op::Message {
                    text: "a\tb\u{263a}\u{1f600}".into()
                }
            );
        }
        other => panic!("{other:?}"),
    }
    // Escaped tags and keys are left to the Value path, which reads them.
    assert_value_path(r#"{"type":"jo\u0069n","room":"r"}"#).expect("decodes");
    assert_value_path(r#"{"type":"leave","r\u006fom":"r"}"#).expect("decodes");
    assert_value_path(r#"{"type":"op","room":"r","cid":"c","op":{"kind":"und\u006f"}}"#)
        .expect("decodes");
    assert_value_path(r#"{"type":"leave","room":"r","\u0078":1}"#).expect("decodes");
    // An escaped room that the id rule refuses.
    assert_value_path(r#"{"type":"leave","room":"a\/b"}"#).expect_err("refused");
}

#[test]
fn absent_and_null_fields() {
    let join = |since, epoch| ClientFrame::Join {
        room: room("r"),
        since,
        epoch,
        resume_strokes: false,
    };
    assert_eq!(
        assert_fast(r#"{"type":"join","room":"r","since":null,"epoch":null}"#),
        join(None, None)
    );
    assert_eq!(
        assert_fast(r#"{"type":"join","room":"r","since":0}"#),
        join(Some(0), None)
    );
    assert_eq!(
        assert_fast(r#"{"type":"ping","id":null}"#),
        ClientFrame::Ping { id: None }
    );
    let undo =
        assert_fast(r#"{"type":"op","room":"r","cid":"c","op":{"kind":"undo","stroke":null}}"#);
    assert_eq!(undo.room(), Some(&room("r")));
    assert!(matches!(
        undo,
        ClientFrame::Op {
            op: Op::Undo { stroke: None },
            ..
        }
    ));
    match assert_fast(r#"{"type":"op","room":"r","cid":"c","op":{"kind":"redo","stroke":"s"}}"#) {
        ClientFrame::Op { op, .. } => assert_eq!(
            op,
            Op::Redo {
                stroke: Some(stroke("s"))
            }
        ),
        other => panic!("{other:?}"),
    }
    // `points` of `stroke_begin` defaults when absent, but `null` is no list.
    assert_value_path(
        r##"{"type":"op","room":"r","cid":"c","op":{"kind":"stroke_begin","stroke":"s","color":"#000000","width":1,"points":null}}"##,
    )
    .expect_err("refused");
    for text in [
        r#"{"type":"leave","room":null}"#,
        r#"{"type":"cursor","room":"r","x":null,"y":1}"#,
        r#"{"type":"op","room":"r","cid":null,"op":{"kind":"undo"}}"#,
        r#"{"type":"op","room":"r","cid":"c","op":null}"#,
        r#"{"type":"op","room":"r","cid":"c","op":{"kind":"message","text":null}}"#,
        r#"{"type":"op","room":"r","cid":"c","op":{"kind":"stroke_end"}}"#,
        r#"{"type":"op","room":"r","cid":"c","op":{"kind":"stroke_points","stroke":"s"}}"#,
        r#"{"type":"join","room":"r","since":1.0}"#,
        r#"{"type":"join","room":"r","since":-0}"#,
        r#"{"type":"cursor","room":"r","x":1,"y":[2]}"#,
        r#"{"type":"op","room":"r","cid":"c","op":{"kind":"stroke_points","stroke":"s","points":[[1,2],[3]]}}"#,
    ] {
        assert_value_path(text).expect_err("refused");
    }
}

#[test]
fn serde_json_private_keys_take_the_value_path() {
    // With serde_json's `raw_value` feature, `Value` reads an object keyed
    // by its private token as the JSON text of the token's value.
    for text in [
        r#"{"$serde_json::private::RawValue":"{\"type\":\"leave\",\"room\":\"r\"}"}"#,
        r#"{"$serde_json::private::RawValue":"{}","type":"leave","room":"r"}"#,
        r#"{"type":"leave","room":"r","$serde_json::private::RawValue":"1"}"#,
        r#"{"type":"leave","room":"r","z":{"$serde_json::private::RawValue":"["}}"#,
        r#"{"type":"ping","id":{"$serde_json::private::RawValue":"5"}}"#,
        r#"{"type":"op","room":"r","cid":"c","op":{"kind":"undo","$serde_json::private::RawValue":"x"}}"#,
        r#"{"type":"op","room":"r","cid":"c","op":{"$serde_json::private::Number":"1","kind":"undo"}}"#,
    ] {
        let _ = assert_value_path(text);
    }
}

/// A frame, and an op, are JSON objects: serde's derive alone would also
/// read an array as the fields in order.
#[test]
fn arrays_are_refused_as_frames_and_as_ops() {
    for (text, message) in [
        (r#"["leave","r1"]"#, "frame must be a JSON object"),
        (r#"["op","r","c",["undo"]]"#, "frame must be a JSON object"),
        (
            r#"{"type":"op","room":"r","cid":"c","op":["undo"]}"#,
            "invalid frame: expected a JSON object",
        ),
    ] {
        let error = decode_client_frame(text).expect_err(text);
        assert_eq!(error.error.code, ErrorCode::BadRequest, "{text}");
        assert_eq!(error.error.message, message, "{text}");
    }
}

#[test]
fn arrays_and_other_values_take_the_value_path() {
    for text in [
        r#"["leave","r1"]"#,
        r#"["op","r","c",["undo"]]"#,
        r#"{"type":"op","room":"r","cid":"c","op":["undo"]}"#,
        r#"{"type":"op","room":"r","cid":"c","op":"undo"}"#,
        "[]",
        "null",
        "\"leave\"",
        "",
        r#"{"type":"leave","room":"r"} x"#,
        r#"{"type":"leave","room":"r",}"#,
    ] {
        let _ = assert_value_path(text);
    }
}

/// A JSON object as text, entry by entry, so that it can hold what a
/// `serde_json::Value` cannot: repeated keys, escapes as written, numbers
/// out of range.
#[derive(Debug, Clone)]
struct Obj(Vec<(String, Val)>);

#[derive(Debug, Clone)]
enum Val {
    Text(String),
    Obj(Obj),
}

impl Obj {
    fn new(entries: &[(&str, Val)]) -> Obj {
        Obj(entries
            .iter()
            .map(|(key, value)| (json!(key).to_string(), value.clone()))
            .collect())
    }

    fn render(&self) -> String {
        let entries: Vec<String> = self
            .0
            .iter()
            .map(|(key, value)| format!("{key}:{}", value.render()))
            .collect();
        format!("{{{}}}", entries.join(","))
    }

    /// The `op` object of an op frame, if it is one.
    fn op_mut(&mut self) -> Option<&mut Obj> {
        self.0.iter_mut().find_map(|(key, value)| match value {
            Val::Obj(op) if key == "\"op\"" => Some(op),
            _ => None,
        })
    }

    fn apply(&mut self, mutation: &Mutation) {
        let Mutation { in_op, change } = mutation;
        let target = match self.op_mut() {
            Some(op) if *in_op => op,
            _ => self,
        };
        let entries = &mut target.0;
        match change {
            Change::Remove(i) if !entries.is_empty() => {
                entries.remove(i.index(entries.len()));
            }
            Change::Repeat(i, value) if !entries.is_empty() => {
                let (key, old) = entries[i.index(entries.len())].clone();
                entries.push((key, value.clone().unwrap_or(old)));
            }
            Change::Replace(i, value) if !entries.is_empty() => {
                let at = i.index(entries.len());
                entries[at].1 = value.clone();
            }
            Change::Add(at, key, value) => {
                let at = at.index(entries.len() + 1);
                entries.insert(at, (key.clone(), value.clone()));
            }
            Change::Swap(i, j) if !entries.is_empty() => {
                let n = entries.len();
                entries.swap(i.index(n), j.index(n));
            }
            _ => {}
        }
    }
}

impl Val {
    fn text(text: impl Into<String>) -> Val {
        Val::Text(text.into())
    }

    fn render(&self) -> String {
        match self {
            Val::Text(text) => text.clone(),
            Val::Obj(obj) => obj.render(),
        }
    }
}

#[derive(Debug, Clone)]
struct Mutation {
    /// Change the `op` object rather than the frame, if there is one.
    in_op: bool,
    change: Change,
}

#[derive(Debug, Clone)]
enum Change {
    Remove(prop::sample::Index),
    /// The key again, at the end, with its value or another.
    Repeat(prop::sample::Index, Option<Val>),
    Replace(prop::sample::Index, Val),
    /// A key (as JSON text) at a position.
    Add(prop::sample::Index, String, Val),
    Swap(prop::sample::Index, prop::sample::Index),
}

fn arb_string(choices: &[&'static str]) -> impl Strategy<Value = Val> + use<> {
    prop::sample::select(choices.to_vec()).prop_map(|s| Val::text(json!(s).to_string()))
}

fn arb_id() -> BoxedStrategy<Val> {
    prop_oneof![
        4 => arb_string(&["r1", "s-3", "c-17", "e", "A_z-9"]),
        1 => arb_string(&["", "a/b", "é", "a b"]),
        1 => Just(Val::text(json!("x".repeat(65)).to_string())),
        1 => Just(Val::text(r#""r\u0031""#)),
    ]
    .boxed()
}

/// A number as JSON text, among them some that `f64` or `u64` refuse.
fn arb_number() -> BoxedStrategy<Val> {
    prop_oneof![
        4 => any::<f64>().prop_map(|x| Val::text(json!(x).to_string())),
        2 => any::<i64>().prop_map(|x| Val::text(x.to_string())),
        2 => (0u64..1000).prop_map(|x| Val::text(x.to_string())),
        2 => prop::sample::select(vec![
            "0", "-0", "1.0", "1e2", "1E-2", "-1", "0.1", "1e308", "1e999", "-1e400", "1e-400",
            "18446744073709551615", "18446744073709551616", "-9223372036854775809",
            "123456789012345678901234567890",
        ])
        .prop_map(Val::text),
    ]
    .boxed()
}

fn arb_points() -> BoxedStrategy<Val> {
    prop_oneof![
        8 => prop::collection::vec((arb_number(), arb_number()), 0..8).prop_map(|points| {
            let points: Vec<String> = points
                .iter()
                .map(|(x, y)| format!("[{},{}]", x.render(), y.render()))
                .collect();
            Val::text(format!("[{}]", points.join(",")))
        }),
        1 => Just(Val::text("[[1,2,3]]")),
        1 => Just(Val::text("[[1]]")),
        1 => Just(Val::text(r#"[["1",2]]"#)),
        1 => Just(Val::text("null")),
    ]
    .boxed()
}

fn arb_op() -> BoxedStrategy<Obj> {
    let kind = |k: &str| Val::text(json!(k).to_string());
    prop_oneof![
        (
            arb_id(),
            arb_string(&["#ff0000", "#000000", "red", ""]),
            arb_number(),
            prop::option::of(arb_points())
        )
            .prop_map(move |(stroke, color, width, points)| {
                let mut op = Obj::new(&[
                    ("kind", kind("stroke_begin")),
                    ("stroke", stroke),
                    ("color", color),
                    ("width", width),
                ]);
                if let Some(points) = points {
                    op.0.push(("\"points\"".into(), points));
                }
                op
            }),
        (arb_id(), arb_points()).prop_map(move |(stroke, points)| Obj::new(&[
            ("kind", kind("stroke_points")),
            ("stroke", stroke),
            ("points", points),
        ])),
        arb_id()
            .prop_map(move |stroke| Obj::new(&[("kind", kind("stroke_end")), ("stroke", stroke)])),
        (
            prop::sample::select(vec!["undo", "redo"]),
            prop::option::of(arb_id())
        )
            .prop_map(move |(k, stroke)| {
                let mut op = Obj::new(&[("kind", kind(k))]);
                if let Some(stroke) = stroke {
                    op.0.push(("\"stroke\"".into(), stroke));
                }
                op
            }),
        "\\PC{0,12}".prop_map(move |text| Obj::new(&[
            ("kind", kind("message")),
            ("text", Val::text(json!(text).to_string())),
        ])),
    ]
    .boxed()
}

/// A valid frame of any type (give or take an id or number the protocol
/// refuses).
fn arb_frame() -> BoxedStrategy<Obj> {
    let tag = |t: &str| Val::text(json!(t).to_string());
    prop_oneof![
        1 => (arb_id(), prop::option::of(arb_number()), prop::option::of(arb_id())).prop_map(
            move |(room, since, epoch)| {
                let mut frame = Obj::new(&[("type", tag("join")), ("room", room)]);
                for (key, value) in [("\"since\"", since), ("\"epoch\"", epoch)] {
                    if let Some(value) = value {
                        frame.0.push((key.into(), value));
                    }
                }
                frame
            }
        ),
        1 => (prop::sample::select(vec!["leave", "cursor_leave"]), arb_id())
            .prop_map(move |(t, room)| Obj::new(&[("type", tag(t)), ("room", room)])),
        3 => (arb_id(), arb_id(), arb_op()).prop_map(move |(room, cid, op)| Obj::new(&[
            ("type", tag("op")),
            ("room", room),
            ("cid", cid),
            ("op", Val::Obj(op)),
        ])),
        1 => (arb_id(), arb_number(), arb_number()).prop_map(move |(room, x, y)| Obj::new(&[
            ("type", tag("cursor")),
            ("room", room),
            ("x", x),
            ("y", y),
        ])),
        1 => prop::option::of(arb_json()).prop_map(move |id| {
            let mut frame = Obj::new(&[("type", tag("ping"))]);
            if let Some(id) = id {
                frame.0.push(("\"id\"".into(), Val::text(id.to_string())));
            }
            frame
        }),
    ]
    .boxed()
}

/// Any value to put in a frame: anything JSON, the tags of other frames
/// and ops, numbers where tags go, text `Value` refuses, deep nesting.
fn arb_value() -> BoxedStrategy<Val> {
    let deep = |n: usize| Val::text(format!("{}{}", "[".repeat(n), "]".repeat(n)));
    prop_oneof![
        3 => arb_json().prop_map(|v| Val::text(v.to_string())),
        2 => arb_id(),
        2 => arb_number(),
        1 => arb_points(),
        2 => arb_string(&[
            "join", "leave", "op", "cursor", "cursor_leave", "ping", "stroke_begin",
            "stroke_points", "stroke_end", "undo", "redo", "message", "Join",
        ]),
        2 => prop::sample::select(vec![
            "0", "1", "2", "3", "4", "5", "6", "true", "null", "[]", "{}", r#""jo\u0069n""#,
            r#""\ud83d\ude00""#, r#"{"a":1,"a":"b"}"#, r#"["undo"]"#,
        ])
        .prop_map(Val::text),
        // Valid JSON syntax that `Value` refuses or reads specially.
        2 => prop::sample::select(vec![
            "1e999", "-1e400", r#""\ud800""#, r#"{"\udc00":1}"#, r#"[1e999]"#,
            r#"{"$serde_json::private::RawValue":"5"}"#,
            r#"{"$serde_json::private::RawValue":"["}"#,
        ])
        .prop_map(Val::text),
        2 => prop::sample::select(vec![40, 125, 126, 127, 128]).prop_map(deep),
        1 => arb_op().prop_map(Val::Obj),
    ]
    .boxed()
}

/// A key as JSON text: the keys of frames and ops, and a few others.
fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "type", "room", "cid", "op", "x", "y", "since", "epoch", "id", "kind", "stroke",
            "color", "width", "points", "text", "extra", "$serde_json::private::RawValue",
        ])
        .prop_map(|key| json!(key).to_string()),
        1 => prop::sample::select(vec![r#""r\u006fom""#, r#""ty\u0070e""#, r#""\ud800""#, r#""""#])
            .prop_map(str::to_owned),
    ]
}

fn arb_mutation() -> BoxedStrategy<Mutation> {
    let change = prop_oneof![
        1 => any::<prop::sample::Index>().prop_map(Change::Remove),
        1 => (any::<prop::sample::Index>(), prop::option::of(arb_value()))
            .prop_map(|(i, value)| Change::Repeat(i, value)),
        3 => (any::<prop::sample::Index>(), arb_value()).prop_map(|(i, value)| Change::Replace(i, value)),
        2 => (any::<prop::sample::Index>(), arb_key(), arb_value())
            .prop_map(|(at, key, value)| Change::Add(at, key, value)),
        1 => any::<(prop::sample::Index, prop::sample::Index)>().prop_map(|(i, j)| Change::Swap(i, j)),
    ];
    (any::<bool>(), change)
        .prop_map(|(in_op, change)| Mutation { in_op, change })
        .boxed()
}

/// A valid frame with up to four mutations.
fn arb_near_frame() -> impl Strategy<Value = String> {
    (arb_frame(), prop::collection::vec(arb_mutation(), 0..=4)).prop_map(
        |(mut frame, mutations)| {
            for mutation in &mutations {
                frame.apply(mutation);
            }
            frame.render()
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn fast_path_agrees_on_near_frames(text in arb_near_frame()) {
        let reference = decode_client_frame_via_value(&text);
        if let Some(frame) = fast::decode(&text) {
            prop_assert_eq!(Ok(frame), reference.clone(), "fast path on {}", text);
        }
        prop_assert_eq!(decode_client_frame(&text), reference, "{}", text);
    }
}

proptest! {
    #[test]
    fn fast_path_agrees_on_arbitrary_json(value in arb_json()) {
        assert_fast_path_agrees(&value.to_string());
    }

    #[test]
    fn fast_path_agrees_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        assert_fast_path_agrees(&String::from_utf8_lossy(&bytes));
    }
}
