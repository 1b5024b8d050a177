use super::*;

fn decode(codec: &Codec, text: &str) -> Vec<Event> {
    let mut out = Vec::new();
    codec.decode(text, &mut out);
    out
}

fn stroke_points() -> OpOut<'static> {
    OpOut {
        kind: OpKind::StrokePoints,
        stroke: "u3s0",
        points: "[[1,2],[3.5,4]]",
        text: "",
    }
}

#[test]
fn collab_op_carries_counter_and_due_time_in_its_cid() {
    let mut codec = Codec::new(TargetKind::Collab, "r1".into(), 3);
    let frame = codec.op(7, 1_795_000_000_123_456, &stroke_points());
    let value: serde_json::Value = serde_json::from_str(&frame).expect("json");
    assert_eq!(value["cid"], "7.1795000000123456");
    assert_eq!(value["op"]["kind"], "stroke_points");
    // The broadcast as the server sends it, and the ack.
    let op = r#"{"type":"op","room":"r1","seq":12,"user":"u3","ts":1,"cid":"7.1795000000123456","op":{"kind":"stroke_points","stroke":"u3s0","points":[[1,2]]}}"#;
    assert_eq!(
        decode(&codec, op),
        vec![Event::Op {
            sender: 3,
            n: 7,
            t: 1_795_000_000_123_456,
            seq: Some(12)
        }]
    );
    let ack = r#"{"type":"ack","room":"r1","cid":"7.1795000000123456","seq":12}"#;
    assert_eq!(
        decode(&codec, ack),
        vec![Event::Ack {
            n: 7,
            t: 1_795_000_000_123_456
        }]
    );
    // A stroke the server ended: no cid.
    let ended = r#"{"type":"op","room":"r1","seq":13,"user":"u3","ts":1,"cid":null,"op":{"kind":"stroke_end","stroke":"u3s0"}}"#;
    assert_eq!(
        decode(&codec, ended),
        vec![Event::ForeignOp { seq: Some(13) }]
    );
}

#[test]
fn collab_cursor_carries_its_due_time_exactly() {
    let mut codec = Codec::new(TargetKind::Collab, "r1".into(), 3);
    let t = 1_795_000_000_123_457;
    let frame = codec.cursor(1, t);
    let value: serde_json::Value = serde_json::from_str(&frame).expect("json");
    let echoed = format!(
        r#"{{"type":"cursor","room":"r1","user":"u4","x":{},"y":1}}"#,
        value["x"]
    );
    assert_eq!(
        decode(&codec, &echoed),
        vec![Event::Cursor { sender: 4, t }]
    );
}

#[test]
fn relay_frames_round_trip() {
    let mut a = Codec::new(TargetKind::Relay, "r".into(), 1);
    let b = Codec::new(TargetKind::Relay, "r".into(), 2);
    let op = a.op(5, 99, &stroke_points());
    assert!(op.starts_with('o'));
    assert_eq!(
        decode(&b, &op),
        vec![Event::Op {
            sender: 1,
            n: 5,
            t: 99,
            seq: None
        }]
    );
    let cursor = a.cursor(2, 100);
    assert_eq!(
        decode(&b, &cursor),
        vec![Event::Cursor { sender: 1, t: 100 }]
    );
}

#[test]
fn centrifugo_replies_and_pushes() {
    let mut codec = Codec::new(TargetKind::Centrifugo, "ch".into(), 1);
    let join = codec.join_frames(Some("tok"));
    assert_eq!(join.len(), 2);
    let publish = codec.op(3, 42, &stroke_points());
    let value: serde_json::Value = serde_json::from_str(&publish).expect("json");
    assert_eq!(value["id"], 12);
    assert_eq!(value["publish"]["data"]["n"], 3);
    let frame = concat!(
        r#"{"id":1,"connect":{"client":"c","version":"0.0.0"}}"#,
        "\n",
        r#"{"id":2,"subscribe":{}}"#,
        "\n",
        r#"{"id":12,"publish":{}}"#,
        "\n",
        r#"{"push":{"channel":"ch","pub":{"data":{"k":"o","s":2,"n":9,"t":77,"op":{}}}}}"#,
        "\n",
        r#"{"push":{"channel":"ch","pub":{"data":{"k":"c","s":2,"n":1,"t":78}}}}"#,
        "\n",
        r#"{}"#,
        "\n",
        r#"{"id":13,"error":{"code":103,"message":"permission denied"}}"#,
    );
    let events = decode(&codec, frame);
    assert_eq!(events[0], Event::Connected);
    assert_eq!(events[1], Event::Joined { head: None });
    assert_eq!(events[2], Event::Ack { n: 3, t: 0 });
    assert_eq!(
        events[3],
        Event::Op {
            sender: 2,
            n: 9,
            t: 77,
            seq: None
        }
    );
    assert_eq!(events[4], Event::Cursor { sender: 2, t: 78 });
    assert_eq!(events[5], Event::Ping);
    assert!(matches!(events[6], Event::Error { .. }));
}
