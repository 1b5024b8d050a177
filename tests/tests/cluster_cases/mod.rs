//! What the cluster tests check once their clients have stopped: the
//! invariants of `DESIGN.md` read off the stored log (with the writer of
//! every batch) and off every client's own stream of ops.

use std::collections::HashSet;
use std::time::Duration;

use tokio::time::Instant;

use collab_actors::state::{Applied, OpRequest, RoomState};
use collab_protocol::{Access, Limits, OpEvent};
use collab_store::{LoggedOp, Writer};
use collab_tests::harness::cluster::{
    Answer, Cluster, ClusterOptions, DrawClient, RoomInfo, RunningClient, total_acked, wait_for,
};
use serde_json::Value;

/// How long a test waits for the cluster to get somewhere (a room to move,
/// clients to make progress) before it fails. Generous on purpose: the
/// tests prove what happens, not how fast.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Starts the processes of a test's cluster, or fails the test saying why.
pub async fn start(options: ClusterOptions) -> Cluster {
    Cluster::start(options)
        .await
        .expect("the cluster starts (nats-server, CQL keyspace, gateways, room nodes)")
}

/// Stops every client (each waits for its ops to be answered) and hands
/// them back, in order.
pub async fn stop_all(clients: Vec<RunningClient>) -> Vec<DrawClient> {
    let mut stopped = Vec::new();
    for client in clients {
        stopped.push(client.stop().await);
    }
    stopped
}

/// Waits until `clients` have had at least `at_least` ops acked in all.
pub async fn wait_total_acked(clients: &[RunningClient], at_least: usize, what: &str) {
    wait_for(what, DEADLINE, || {
        let done = total_acked(clients) >= at_least;
        async move { done.then_some(()) }
    })
    .await;
}

/// One writer's consecutive ops in a room's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub writer: Writer,
    pub first: u64,
    pub last: u64,
}

/// The log as runs of one writer each, in seq order.
pub fn writer_runs(log: &[LoggedOp]) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for op in log {
        let seq = op.event.seq.get();
        match runs.last_mut() {
            Some(run) if run.writer == op.writer => run.last = seq,
            _ => runs.push(Run {
                writer: op.writer.clone(),
                first: seq,
                last: seq,
            }),
        }
    }
    runs
}

/// `r1/1763…:1-57, r2/1763…:58-140` — for messages and reports.
pub fn describe_runs(runs: &[Run]) -> String {
    runs.iter()
        .map(|r| format!("{}/{}:{}-{}", r.writer.node, r.writer.term, r.first, r.last))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks everything about one room whose clients have all stopped (their
/// outboxes are answered): returns the stored log.
///
/// - the stored seqs are 1, 2, … with no gap;
/// - fencing: a writer (node, term) is one contiguous run, and terms never
///   decrease along the log, so no owner wrote after its successor;
/// - every acked op is stored at the seq it was acked with, under its
///   sender and cid, and no (user, cid) is stored twice;
/// - the log is what the room's rules make of its requests: replaying it,
///   each op is exactly what the state machine produces for that request at
///   that point (an undo hides the stroke it must; undo stacks and cid
///   windows survived every move);
/// - every client received exactly the stored ops, in order, and its
///   picture equals the log's.
pub async fn verify_room(
    cluster: &Cluster,
    room: &RoomInfo,
    clients: &mut [DrawClient],
) -> Vec<LoggedOp> {
    let log = cluster.read_log(&room.id).await;
    let seqs: Vec<u64> = log.iter().map(|op| op.event.seq.get()).collect();
    let gapless: Vec<u64> = (1..=log.len() as u64).collect();
    assert_eq!(seqs, gapless, "room {}: stored seqs are not 1..=n", room.id);

    let runs = writer_runs(&log);
    let mut writers = HashSet::new();
    for pair in runs.windows(2) {
        assert!(
            pair[1].writer.term >= pair[0].writer.term,
            "room {}: term went down from {:?} to {:?}: {}",
            room.id,
            pair[0],
            pair[1],
            describe_runs(&runs)
        );
    }
    for run in &runs {
        assert!(
            writers.insert(run.writer.clone()),
            "room {}: writer {}/{} wrote again after another writer: {}",
            room.id,
            run.writer.node,
            run.writer.term,
            describe_runs(&runs)
        );
    }

    for client in clients.iter() {
        for (cid, seq) in client.acked() {
            let stored = log.get((*seq as usize).wrapping_sub(1)).unwrap_or_else(|| {
                panic!("room {}: acked seq {seq} ({cid}) is not stored", room.id)
            });
            assert_eq!(
                stored.event.cid.as_ref().map(|c| c.as_str()),
                Some(cid.as_str()),
                "room {}: seq {seq} was acked to {} as {cid}",
                room.id,
                client.user()
            );
            assert_eq!(
                stored.event.user.as_str(),
                client.user(),
                "room {}: seq {seq}",
                room.id
            );
        }
    }
    let mut cids = HashSet::new();
    for op in &log {
        if let Some(cid) = &op.event.cid {
            assert!(
                cids.insert((op.event.user.clone(), cid.clone())),
                "room {}: {} {cid} stored twice",
                room.id,
                op.event.user
            );
        }
    }

    let model = check_against_the_rules(room, &log);
    for client in clients.iter_mut() {
        client.sync_to(log.len() as u64).await;
        assert_eq!(
            client.received().len(),
            log.len(),
            "room {}: {} received more ops than were stored",
            room.id,
            client.user()
        );
        for (frame, stored) in client.received().iter().zip(&log) {
            let event: OpEvent = serde_json::from_value(frame.clone()).expect("an op frame");
            assert_eq!(
                event,
                stored.event,
                "room {}: {} received another op than stored at seq {}",
                room.id,
                client.user(),
                stored.event.seq
            );
        }
        assert_eq!(
            client.state().view(),
            model.view(),
            "room {}: {}'s picture differs from the log's",
            room.id,
            client.user()
        );
    }
    log
}

/// Replays `log` into a fresh model of the room, checking each op made by
/// a user against what the model's `apply` makes of the same request.
fn check_against_the_rules(room: &RoomInfo, log: &[LoggedOp]) -> RoomState {
    let mut model = RoomState::new(room.meta());
    for stored in log {
        let event = &stored.event;
        if event.cid.is_some() {
            let request = OpRequest {
                user: event.user.clone(),
                cid: event.cid.clone(),
                op: request_of(&event.op),
                access: Access::Write,
                ts: event.ts,
            };
            let mut probe = model.clone();
            match probe.apply(request, &Limits::default()) {
                Ok(Applied::New(expected)) => assert_eq!(
                    expected.op, event.op,
                    "room {}: seq {} is not what the room's rules make of it",
                    room.id, event.seq
                ),
                other => panic!(
                    "room {}: seq {} ({:?}) should not have been accepted: {other:?}",
                    room.id, event.seq, event.op
                ),
            }
        }
        model
            .replay(event)
            .unwrap_or_else(|e| panic!("room {}: the log does not replay: {e}", room.id));
    }
    model
}

/// The op as a client asks for it: undo and redo name no stroke.
fn request_of(op: &collab_protocol::Op) -> collab_protocol::Op {
    use collab_protocol::Op;
    match op {
        Op::Undo { .. } => Op::Undo { stroke: None },
        Op::Redo { .. } => Op::Redo { stroke: None },
        other => other.clone(),
    }
}

/// Sends `op` as `client` now that the room is quiet, and checks the
/// answer against the model of the stored log: an undo or redo must
/// resolve to the stroke the log says, or be refused with the same code.
pub async fn probe(cluster: &Cluster, client: &mut DrawClient, op: Value) {
    let room = client.room().clone();
    let log = cluster.read_log(&room.id).await;
    let mut model = RoomState::new(room.meta());
    for stored in &log {
        model.replay(&stored.event).expect("the log replays");
    }
    let parsed: collab_protocol::Op = serde_json::from_value(op.clone()).expect("an op");
    let request = OpRequest {
        user: collab_protocol::UserId::parse(client.user()).expect("a user id"),
        cid: Some(collab_protocol::Cid::parse("probe").expect("a cid")),
        op: parsed,
        access: Access::Write,
        ts: 0,
    };
    let expected = model.apply(request, &Limits::default());
    let answer = client.send_and_wait(op.clone()).await;
    match (answer, expected) {
        (Answer::Acked(seq), Ok(Applied::New(expected))) => {
            client.sync_to(seq).await;
            let got: OpEvent =
                serde_json::from_value(client.received()[seq as usize - 1].clone()).expect("op");
            assert_eq!(seq, expected.seq.get(), "{} {op}: seq", client.user());
            assert_eq!(
                got.op,
                expected.op,
                "{} {op}: resolved to another stroke",
                client.user()
            );
        }
        (Answer::Refused(code), Err(expected)) => {
            assert_eq!(code, expected.code.as_str(), "{} {op}", client.user())
        }
        (answer, expected) => panic!(
            "{} {op}: the room answered {answer:?}, its log says {expected:?}",
            client.user()
        ),
    }
}

/// Waits until every client has acked `more` ops beyond `from` (its count
/// when `from` was taken; see [`acked_counts`]). On a timeout, the message
/// has every client's progress.
pub async fn wait_acked_more(clients: &[RunningClient], from: &[usize], more: usize, what: &str) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let progress: Vec<_> = clients.iter().map(RunningClient::progress).collect();
        if progress
            .iter()
            .zip(from)
            .all(|(p, before)| p.acked >= before + more)
        {
            return;
        }
        if Instant::now() >= deadline {
            let report: Vec<String> = clients
                .iter()
                .zip(&progress)
                .zip(from)
                .map(|((c, p), before)| {
                    format!(
                        "{} in {}: acked {} (from {before}), head {}, resent {}, reconnects {}, \
                         room errors {}, on {:?}, last ack {:?} ago",
                        c.user(),
                        c.room(),
                        p.acked,
                        p.head,
                        p.resent,
                        p.reconnects,
                        p.room_errors,
                        p.gateway,
                        p.last_ack.map(|t| t.elapsed())
                    )
                })
                .collect();
            panic!(
                "gave up after {DEADLINE:?} waiting for {what}:\n{}",
                report.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await; // poll interval
    }
}

/// Every client's acked count now.
pub fn acked_counts(clients: &[RunningClient]) -> Vec<usize> {
    clients.iter().map(|c| c.progress().acked).collect()
}

/// Waits until the stored log of `room` has an op after `after` written by
/// `node` (or, with `None`, by any node but `not`): the room has moved.
/// Returns the first such seq.
pub async fn wait_written_by(
    cluster: &Cluster,
    room: &str,
    after: u64,
    node: Option<&str>,
    not: &str,
) -> u64 {
    let what = match node {
        Some(node) => format!("room {room} to get an op after seq {after} written by {node}"),
        None => {
            format!("room {room} to get an op after seq {after} written by another node than {not}")
        }
    };
    wait_for(&what, DEADLINE, || async move {
        cluster
            .read_log(room)
            .await
            .iter()
            .filter(|op| op.event.seq.get() > after)
            .find(|op| {
                let writer = op.writer.node.as_str();
                match node {
                    Some(node) => writer == node,
                    None => writer != not,
                }
            })
            .map(|op| op.event.seq.get())
    })
    .await
}
