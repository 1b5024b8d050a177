//! Decoding client frames: `decode_client_frame` (the fast path) against
//! `decode_client_frame_via_value` (every frame through a
//! `serde_json::Value`, as before the fast path), for the two frames a
//! drawing client sends most: a `stroke_points` op of 16 points and a
//! `cursor`.
//!
//! Run: `cargo bench -p collab-protocol --bench decode`. Criterion's time
//! per iteration is the time per frame.

use std::hint::black_box;

use collab_protocol::frames::{decode_client_frame, decode_client_frame_via_value};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// A `stroke_points` op frame of 16 points, as a drawing client sends it.
fn stroke_points_frame() -> String {
    let points: Vec<String> = (0..16)
        .map(|i| {
            let i = f64::from(i);
            format!("[{},{}]", 100.5 + i * 1.25, 200.25 - i * 0.75)
        })
        .collect();
    format!(
        r#"{{"type":"op","room":"r1","cid":"c-17","op":{{"kind":"stroke_points","stroke":"s-3","points":[{}]}}}}"#,
        points.join(",")
    )
}

const CURSOR_FRAME: &str = r#"{"type":"cursor","room":"r1","x":512.5,"y":384.25}"#;

fn decode(c: &mut Criterion) {
    let stroke_points = stroke_points_frame();
    for (name, frame) in [
        ("stroke_points_16", stroke_points.as_str()),
        ("cursor", CURSOR_FRAME),
    ] {
        // Both paths must agree, or the comparison means nothing.
        assert_eq!(
            decode_client_frame(frame),
            decode_client_frame_via_value(frame)
        );
        let mut group = c.benchmark_group(format!("decode/{name}"));
        group.throughput(Throughput::Elements(1));
        group.bench_function("fast", |b| b.iter(|| decode_client_frame(black_box(frame))));
        group.bench_function("via_value", |b| {
            b.iter(|| decode_client_frame_via_value(black_box(frame)))
        });
        group.finish();
    }
}

criterion_group!(benches, decode);
criterion_main!(benches);
