//! Room state machine throughput, and the time to load a big room: from
//! bytes in memory (snapshot decode + replay), and end to end from the
//! embedded store (read snapshot + read ops + decode + replay).
//!
//! `cargo bench -p collab-actors --bench state`

use std::hint::black_box;
use std::time::Duration;

use collab_actors::room::load_room;
use collab_actors::state::{Applied, OpRequest, RoomMeta, RoomState};
use collab_protocol::{
    Access, Cid, Epoch, Limits, Op, OpEvent, RoomId, RoomKind, Seq, StrokeId, UserId,
};
use collab_store::{EmbeddedStore, RoomRecord, Snapshot, Store, Writer};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn meta() -> RoomMeta {
    RoomMeta {
        id: RoomId::parse("bench").expect("id"),
        kind: RoomKind::Board,
        epoch: Epoch::parse("e").expect("id"),
    }
}

fn points16(i: usize) -> Vec<[f64; 2]> {
    (0..16)
        .map(|k| [(i * 16 + k) as f64 * 0.5, (k as f64).sin() * 100.0])
        .collect()
}

fn request(user: &UserId, n: u64, op: Op) -> OpRequest {
    OpRequest {
        user: user.clone(),
        cid: Some(Cid::parse(format!("c{n}")).expect("id")),
        op,
        access: Access::Write,
        ts: 1_700_000_000_000,
    }
}

/// 10k strokes of 10 ops each (begin, 8 × 16 points, end) by 10 users.
fn history(strokes: usize) -> Vec<OpEvent> {
    let limits = Limits::default();
    let users: Vec<UserId> = (0..10)
        .map(|u| UserId::parse(format!("user{u}")).expect("id"))
        .collect();
    let mut state = RoomState::new(meta());
    let mut events = Vec::with_capacity(strokes * 10);
    let mut n = 0;
    for s in 0..strokes {
        let user = &users[s % users.len()];
        let stroke = StrokeId::parse(format!("s{s}")).expect("id");
        let mut ops = vec![Op::StrokeBegin {
            stroke: stroke.clone(),
            color: "#224466".into(),
            width: 3.0,
            points: vec![],
        }];
        ops.extend((0..8).map(|i| Op::StrokePoints {
            stroke: stroke.clone(),
            points: points16(i),
        }));
        ops.push(Op::StrokeEnd { stroke });
        for op in ops {
            n += 1;
            match state.apply(request(user, n, op), &limits) {
                Ok(Applied::New(event)) => events.push(event),
                other => panic!("{other:?}"),
            }
        }
    }
    events
}

fn apply_stroke_points(c: &mut Criterion) {
    let limits = Limits::default();
    let user = UserId::parse("drawer").expect("id");
    let mut group = c.benchmark_group("state");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(4));
    group.bench_function("apply stroke_points (16 points)", |b| {
        let mut state = RoomState::new(meta());
        let mut n = 0u64;
        let mut stroke = 0u64;
        b.iter(|| {
            // A new stroke every 64 ops keeps strokes realistically sized.
            if n.is_multiple_of(64) {
                stroke += 1;
                n += 1;
                let id = StrokeId::parse(format!("s{stroke}")).expect("id");
                let begin = Op::StrokeBegin {
                    stroke: id,
                    color: "#000000".into(),
                    width: 2.0,
                    points: vec![],
                };
                let _ = state.apply(request(&user, n, begin), &limits);
            }
            n += 1;
            let op = Op::StrokePoints {
                stroke: StrokeId::parse(format!("s{stroke}")).expect("id"),
                points: points16(n as usize),
            };
            black_box(
                state
                    .apply(request(&user, n, op), &limits)
                    .expect("applies"),
            )
        });
    });
    group.finish();
}

fn load_big_room(c: &mut Criterion) {
    let events = history(10_000);
    let room = meta().id;
    let (before, after) = events.split_at(90_000);
    let mut at_snapshot = RoomState::new(meta());
    for event in before {
        at_snapshot.replay(event).expect("replays");
    }
    let snapshot = at_snapshot.snapshot();
    let tail_json: Vec<String> = after
        .iter()
        .map(|e| serde_json::to_string(e).expect("encodes"))
        .collect();
    println!(
        "100k-op room: snapshot at seq {} is {} bytes; {} ops after it",
        at_snapshot.head(),
        snapshot.len(),
        tail_json.len()
    );
    let mut group = c.benchmark_group("load");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(6));
    group.bench_function(
        "restore snapshot@90k + replay 10k ops (decode included)",
        |b| {
            b.iter(|| {
                let mut state = RoomState::restore(&room, &snapshot).expect("restores");
                for json in &tail_json {
                    let event: OpEvent = serde_json::from_str(json).expect("decodes");
                    state.replay(&event).expect("replays");
                }
                assert_eq!(state.head(), Seq(100_000));
                black_box(state)
            });
        },
    );
    group.bench_function("snapshot encode at 90k", |b| {
        b.iter(|| black_box(at_snapshot.snapshot()));
    });

    // End to end: the same room in an embedded store on disk…
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let embedded = EmbeddedStore::open(dir.path().join("collab.redb")).expect("store opens");
    let snapshot = Snapshot {
        seq: at_snapshot.head(),
        data: snapshot,
    };
    runtime.block_on(fill(&embedded, &events, &snapshot));
    bench_load(
        &mut group,
        &runtime,
        &embedded,
        "load 100k-op room from the embedded store (snapshot@90k)",
    );
    // …and in a CQL server, when one is named (a fresh keyspace per run).
    if let Ok(target) = std::env::var("COLLAB_BENCH_CQL") {
        let url = format!(
            "cql://{target}/collab_bench_{:08x}",
            collab_store::testsuite::random_u64() as u32
        );
        let options = collab_store::CqlOptions::from_url(&url).expect("url");
        let cql = runtime
            .block_on(collab_store::CqlStore::connect(options))
            .expect("CQL server");
        runtime.block_on(fill(&cql, &events, &snapshot));
        bench_load(
            &mut group,
            &runtime,
            &cql,
            "load 100k-op room from the CQL store (snapshot@90k)",
        );
    }
    group.finish();
}

/// Creates the bench room in `store` with `events` and `snapshot`.
async fn fill(store: &dyn Store, events: &[OpEvent], snapshot: &Snapshot) {
    let meta = meta();
    store
        .create_room(&RoomRecord {
            id: meta.id.clone(),
            kind: meta.kind,
            name: "bench".into(),
            epoch: meta.epoch.clone(),
            created_by: UserId::parse("user0").expect("id"),
            members: None,
            created_at: 0,
            ttl_secs: None,
            floor: Seq::ZERO,
        })
        .await
        .expect("room created");
    let writer = Writer {
        node: collab_protocol::NodeId::parse("bench").expect("id"),
        term: 1,
    };
    for chunk in events.chunks(500) {
        store
            .append(&meta.id, chunk[0].seq, chunk, &writer)
            .await
            .expect("appends");
    }
    store
        .put_snapshot(&meta.id, snapshot)
        .await
        .expect("snapshot stored");
}

fn bench_load(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    runtime: &tokio::runtime::Runtime,
    store: &dyn Store,
    name: &str,
) {
    let room = meta().id;
    group.bench_function(name, |b| {
        b.iter(|| {
            let loaded = runtime
                .block_on(load_room(store, &room))
                .expect("loads")
                .expect("room exists");
            assert_eq!(loaded.1.head(), Seq(100_000));
            black_box(loaded)
        });
    });
}

criterion_group!(benches, apply_stroke_points, load_big_room);
criterion_main!(benches);
