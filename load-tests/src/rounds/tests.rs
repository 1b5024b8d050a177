use super::*;
use crate::run::{Latencies, RunResult};
use crate::scenario::Scenario;
use crate::stats::{Counters, Latency};
use crate::sysstat::ProcStats;

/// One round of `target` at `boards`, as a one-step capacity result.
fn round(target: TargetKind, boards: u32, op_p99_ms: f64, cpu: f64) -> CapacityResult {
    let bound = 50.0;
    let result = RunResult {
        scenario: Scenario::Boards {
            boards,
            users: 10,
            ops_per_sec: 10.0,
            cursor_hz: 20.0,
        },
        target,
        ws_urls: Vec::new(),
        started_at: 0,
        duration_s: 10.0,
        warmup_s: 0.0,
        workers: 1,
        rooms: boards,
        offered_ops_per_sec: 0.0,
        sent_ops_per_sec: 0.0,
        delivered_ops_per_sec: 0.0,
        delivered_cursors_per_sec: 0.0,
        counters: Counters::default(),
        latency: Latencies {
            op: Latency {
                count: 1,
                p99_ms: op_p99_ms,
                ..Latency::default()
            },
            ..Latencies::default()
        },
        timeline: Vec::new(),
        server: Some(ProcStats {
            pid: None,
            cpu_pct_mean: cpu,
            cpu_pct_max: cpu,
            rss_start_bytes: 0,
            rss_end_bytes: 0,
            rss_max_bytes: 0,
            timeline: Vec::new(),
        }),
        server_rss_before_bytes: None,
        server_rss_per_client_bytes: None,
        watched: Vec::new(),
        generator_cpu_pct: 0.0,
        clean: true,
    };
    CapacityResult {
        step_by: StepBy::Rooms,
        p99_bound_ms: bound,
        capacity: None,
        steps: vec![Step {
            rooms: boards,
            passed: crate::capacity::passes(&result, bound),
            generator_late: false,
            result,
        }],
    }
}

fn sizes(t: &TargetRounds) -> Vec<(u32, u32, u32)> {
    t.sizes
        .iter()
        .map(|s| (s.rooms, s.passed, s.runs))
        .collect()
}

#[test]
fn a_size_passes_when_most_rounds_pass_and_capacity_stops_at_the_first_that_does_not() {
    use TargetKind::{Centrifugo, Collab};
    // Three rounds, interleaved as the script runs them.
    let mut runs = Vec::new();
    for (c100, c200, c300, t100, t200, t300) in [
        (5.0, 30.0, 90.0, 8.0, 60.0, 20.0),
        (6.0, 70.0, 40.0, 9.0, 70.0, 30.0),
        (5.0, 20.0, 80.0, 7.0, 20.0, 99.0),
    ] {
        runs.push(round(Collab, 100, c100, 40.0));
        runs.push(round(Centrifugo, 100, t100, 50.0));
        runs.push(round(Collab, 200, c200, 60.0));
        runs.push(round(Centrifugo, 200, t200, 80.0));
        runs.push(round(Collab, 300, c300, 80.0));
        runs.push(round(Centrifugo, 300, t300, 95.0));
    }
    let summary = summarize(&runs);
    assert_eq!(summary.scenario, "boards");
    let [collab, centrifugo] = &summary.targets[..] else {
        panic!("two targets, in the order they ran: {:?}", summary.targets);
    };
    assert_eq!(collab.target, Collab);
    assert_eq!(
        sizes(collab),
        [(100, 3, 3), (200, 2, 3), (300, 1, 3)],
        "rounds passed per size"
    );
    assert_eq!(collab.capacity, Some(200));
    assert!(!collab.passed_every_size);
    assert_eq!(collab.sizes[1].op_p99_ms, [30.0, 70.0, 20.0]);
    assert_eq!(collab.sizes[1].median_op_p99_ms, 30.0);
    assert_eq!(collab.sizes[1].median_server_cpu_pct, Some(60.0));
    // 200 failed in two rounds of three: 300 passing twice does not count.
    assert_eq!(sizes(centrifugo), [(100, 3, 3), (200, 1, 3), (300, 2, 3)]);
    assert_eq!(centrifugo.capacity, Some(100));

    let md = summary.markdown();
    assert!(
        md.contains("| 200 | collab | 2 of 3 | 30.0, 70.0, 20.0 | 30.0 | 60% | 0 |"),
        "{md}"
    );
    assert!(md.contains("- collab: capacity **200**"), "{md}");
    assert!(md.contains("- collab against centrifugo: 2.00×"), "{md}");

    let curves = summary.median_curves();
    assert_eq!(curves[0].0, "collab");
    let medians: Vec<f64> = curves[0]
        .1
        .steps
        .iter()
        .map(|s| s.result.latency.op.p99_ms)
        .collect();
    assert_eq!(medians, [5.0, 30.0, 80.0]);
}

#[test]
fn a_target_that_passed_every_size_has_only_a_lower_bound() {
    use TargetKind::{Collab, Relay};
    let runs = vec![
        round(Collab, 100, 10.0, 50.0),
        round(Relay, 100, 2.0, 30.0),
        round(Collab, 200, 80.0, 90.0),
        round(Relay, 200, 3.0, 40.0),
    ];
    let summary = summarize(&runs);
    let relay = &summary.targets[1];
    assert_eq!(relay.capacity, Some(200));
    assert!(relay.passed_every_size);
    let md = summary.markdown();
    assert!(
        md.contains("- relay: capacity **≥ 200 (passed every size)**"),
        "{md}"
    );
    assert!(md.contains("- collab against relay: ≤ 0.50×"), "{md}");
}

#[test]
fn a_lost_op_fails_the_round_whatever_its_latency() {
    let mut lossy = round(TargetKind::Collab, 100, 1.0, 10.0);
    lossy.steps[0].result.counters.ops_lost = 1;
    lossy.steps[0].result.clean = false;
    lossy.steps[0].passed = crate::capacity::passes(&lossy.steps[0].result, 50.0);
    let summary = summarize(&[lossy, round(TargetKind::Collab, 100, 1.0, 10.0)]);
    let size = &summary.targets[0].sizes[0];
    assert_eq!((size.passed, size.runs, size.ops_lost), (1, 2, 1));
    assert!(!size.passes(), "one of two is not most");
    assert_eq!(summary.targets[0].capacity, None);
}
