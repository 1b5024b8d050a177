//! The cluster on real processes: a private nats-server, a keyspace of its
//! own on the run's CQL server (`COLLAB_TEST_CQL`), two `collab gateway`
//! and three `collab room-node` processes per test. Clients keep drawing
//! while room nodes are SIGKILLed, SIGSTOPped past their membership TTL,
//! drained, added and removed, while a gateway is SIGKILLed and while NATS
//! restarts; then the stored log (with the writer of every batch) and every
//! client's stream are checked op by op (`cluster_cases::verify_room`).
//!
//! The cluster's metrics are checked the same way: every role exports what
//! `docs/metrics.md` lists for it, and the membership, hand-off, failover
//! and NATS figures follow what the test does.
//!
//! Needs `COLLAB_NATS_SERVER` (`scripts/nats-server.sh install`) and
//! `COLLAB_TEST_CQL`; `scripts/test.sh` provides both. Each test has its own
//! NATS and keyspace, so they run in parallel.

#[path = "cluster_cases/mod.rs"]
mod cases;

use std::time::Duration;

use cases::{
    DEADLINE, acked_counts, describe_runs, probe, start, stop_all, verify_room, wait_acked_more,
    wait_total_acked, wait_written_by, writer_runs,
};
use collab_store::StoreReader;
use collab_tests::harness::WsClient;
use collab_tests::harness::cluster::{
    Answer, ClientOptions, Cluster, ClusterOptions, DrawClient, RoomInfo, RunningClient,
    owner_among, wait_for,
};
use collab_tests::metrics::{check_against_doc, sample};
use serde_json::json;
use tokio::time::Instant;

/// Connects `user` through gateway `gateway` and joins `room`; returns the
/// socket and the `joined` frame.
async fn join_as(
    cluster: &mut Cluster,
    user: &str,
    gateway: usize,
    room: &RoomInfo,
) -> (WsClient, serde_json::Value) {
    let token = cluster.token(user).await.expect("token");
    let mut ws = WsClient::connect(&cluster.gateway_ws_url(gateway), &token)
        .await
        .unwrap_or_else(|e| panic!("{user} cannot connect: {e}"));
    ws.recv_type("welcome", DEADLINE).await.expect("welcome");
    ws.send_json(&json!({"type": "join", "room": room.id}))
        .await
        .expect("join");
    let joined = ws.recv_type("joined", DEADLINE).await.expect("joined");
    (ws, joined)
}

/// Drawing clients of `room`, `users[i]` first on gateway `i % 2`.
async fn drawers(cluster: &mut Cluster, room: &RoomInfo, users: &[&str]) -> Vec<RunningClient> {
    let mut running = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let client = cluster
            .client(user, room, i, ClientOptions::drawing())
            .await
            .expect("a client");
        running.push(client.spawn());
    }
    running
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn users_on_different_gateways_see_one_gapless_order() {
    let mut cluster = start(ClusterOptions::new()).await;
    let room = cluster.create_board("order").await.expect("room");
    let clients = drawers(&mut cluster, &room, &["ann", "bob", "cat", "dan"]).await;
    wait_total_acked(&clients, 200, "200 acked ops").await;
    let mut on: Vec<String> = clients
        .iter()
        .filter_map(|c| c.progress().gateway)
        .collect();
    on.sort();
    on.dedup();
    assert_eq!(on, cluster.gateway_ids(), "clients on both gateways");
    let mut clients = stop_all(clients).await;
    let log = verify_room(&cluster, &room, &mut clients).await;
    // Each client's stream is the log, so all four saw the same ops in the
    // same order.
    for pair in clients.windows(2) {
        assert_eq!(pair[0].received(), pair[1].received());
    }
    assert!(log.len() >= 200, "only {} ops stored", log.len());

    // Every gateway serves the room's metadata and history from the store.
    let token = cluster.token("ann").await.expect("token");
    let http = reqwest::Client::new();
    for gateway in cluster.gateway_ids() {
        let base = cluster.http_url(&gateway);
        let mut answers = Vec::new();
        for path in [
            format!("/v1/rooms/{}", room.id),
            format!("/v1/rooms/{}/history?limit=50", room.id),
        ] {
            let response = http
                .get(format!("{base}{path}"))
                .bearer_auth(&token)
                .send()
                .await
                .expect("answered");
            assert_eq!(response.status().as_u16(), 200, "{path} on {gateway}");
            answers.push(response.json::<serde_json::Value>().await.expect("json"));
        }
        let (info, page) = (&answers[0], &answers[1]);
        assert_eq!(info["head"].as_u64(), Some(log.len() as u64), "{info}");
        let seqs: Vec<u64> = page["ops"]
            .as_array()
            .expect("ops")
            .iter()
            .filter_map(|op| op["seq"].as_u64())
            .collect();
        let newest: Vec<u64> = log
            .iter()
            .rev()
            .take(50)
            .map(|op| op.event.seq.get())
            .collect();
        assert_eq!(seqs, newest, "history on {gateway}, newest first");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_a_busy_rooms_owner_loses_nothing_acked() {
    // Snapshots every 25 ops: the next owner loads a snapshot plus a tail,
    // so undo stacks and cid windows must come through the snapshot.
    let mut cluster =
        start(ClusterOptions::new().env("COLLAB_ROOMS__SNAPSHOT_EVERY_OPS", "25")).await;
    let room = cluster.create_board("busy").await.expect("room");
    // wat only watches: no op of hers will tell the new owner she is there,
    // so her gateway must re-attach her.
    let (wat, _) = join_as(&mut cluster, "wat", 1, &room).await;
    let clients = drawers(&mut cluster, &room, &["ann", "bob", "cat"]).await;
    wait_total_acked(&clients, 120, "120 acked ops before the kill").await;

    let owner = cluster.owner_of(&room.id);
    let log = cluster.read_log(&room.id).await;
    let last_writer = log.last().map(|op| op.writer.node.to_string());
    assert_eq!(
        last_writer.as_deref(),
        Some(owner.as_str()),
        "placement picks the writer"
    );
    let before = acked_counts(&clients);
    let killed_at = Instant::now();
    cluster.kill(&owner).expect("SIGKILL the owner");
    let head_at_kill = cluster.head(&room.id).await;

    let moved_at = wait_written_by(&cluster, &room.id, head_at_kill, None, &owner).await;
    wait_acked_more(
        &clients,
        &before,
        40,
        "every client to get 40 more ops acked",
    )
    .await;
    let mut clients = stop_all(clients).await;

    // Retries of ops acked before the crash are re-acked with their seqs
    // and apply nothing.
    let head = cluster.head(&room.id).await;
    for client in clients.iter_mut() {
        // The oldest come from a snapshot's cid window, the newest from
        // the log's tail after it.
        let before_kill: Vec<(String, u64)> = client
            .acks()
            .iter()
            .filter(|a| a.at < killed_at)
            .map(|a| (a.cid.clone(), a.seq))
            .collect();
        let mut old = before_kill.iter().take(2).cloned().collect::<Vec<_>>();
        old.extend(before_kill.iter().rev().take(2).cloned());
        assert!(
            !old.is_empty(),
            "{} had nothing acked before the kill",
            client.user()
        );
        for (cid, seq) in old {
            assert_eq!(
                client.resend_and_wait(&cid).await,
                Answer::Acked(seq),
                "{}: retry of {cid}",
                client.user()
            );
        }
    }
    assert_eq!(
        cluster.head(&room.id).await,
        head,
        "a retry applied something"
    );

    // Undo and redo on the new owner resolve as the log says.
    for client in clients.iter_mut() {
        for op in [
            json!({"kind": "undo"}),
            json!({"kind": "undo"}),
            json!({"kind": "redo"}),
        ] {
            probe(&cluster, client, op).await;
        }
    }

    let log = verify_room(&cluster, &room, &mut clients).await;
    let runs = writer_runs(&log);
    // A batch the owner sent before it died may still land (the store got
    // the write); nothing of it may come after the new owner's first op.
    assert!(
        log.iter()
            .filter(|op| op.event.seq.get() >= moved_at)
            .all(|op| op.writer.node.as_str() != owner),
        "the killed {owner} has ops after seq {moved_at}, the new owner's first: {}",
        describe_runs(&runs)
    );
    println!(
        "sigkill of {owner}: {} ops stored, writers {}",
        log.len(),
        describe_runs(&runs)
    );

    // The new owner knows the watcher, who never sent anything.
    let (_eve, joined) = join_as(&mut cluster, "eve", 0, &room).await;
    let present: Vec<&str> = joined["presence"]
        .as_array()
        .expect("presence")
        .iter()
        .filter_map(|u| u["id"].as_str())
        .collect();
    assert!(
        present.contains(&"wat"),
        "the watcher is gone: {:?}",
        joined["presence"]
    );
    drop(wat);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_owner_commits_and_publishes_nothing_after_its_room_moved() {
    let mut cluster = start(ClusterOptions::new()).await;
    let room = cluster.create_board("frozen").await.expect("room");
    let clients = drawers(&mut cluster, &room, &["ann", "bob", "cat"]).await;
    wait_total_acked(&clients, 90, "90 acked ops before the freeze").await;

    let owner = cluster.owner_of(&room.id);
    cluster.stop(&owner).expect("SIGSTOP the owner");
    let head_at_stop = cluster.head(&room.id).await;
    let old_writer = cluster
        .read_log(&room.id)
        .await
        .last()
        .map(|op| op.writer.clone())
        .expect("ops before the freeze");
    assert_eq!(
        old_writer.node.as_str(),
        owner,
        "placement picks the writer"
    );

    // The owner drops out of the membership and the room moves.
    cluster.wait_membership().await;
    let moved_at = wait_written_by(&cluster, &room.id, head_at_stop, None, &owner).await;
    let before = acked_counts(&clients);
    wait_acked_more(
        &clients,
        &before,
        30,
        "30 more acked ops per client after the move",
    )
    .await;

    // The old owner wakes up, with whatever it had in flight.
    cluster.cont(&owner).expect("SIGCONT");
    cluster.wait_membership().await;
    let before = acked_counts(&clients);
    wait_acked_more(
        &clients,
        &before,
        30,
        "30 more acked ops per client after SIGCONT",
    )
    .await;
    let mut clients = stop_all(clients).await;

    let log = verify_room(&cluster, &room, &mut clients).await;
    let runs = writer_runs(&log);
    let late: Vec<u64> = log
        .iter()
        .filter(|op| op.writer == old_writer && op.event.seq.get() > moved_at)
        .map(|op| op.event.seq.get())
        .collect();
    assert!(
        late.is_empty(),
        "{}/{} committed seqs {late:?} after the room moved at seq {moved_at}: {}",
        old_writer.node,
        old_writer.term,
        describe_runs(&runs)
    );
    // (verify_room has checked that every op each client received is the
    // stored op of that seq: nothing the frozen owner published reached a
    // client unless it is in the log before the move.)
    println!(
        "sigstop of {owner} at seq {head_at_stop}, moved at seq {moved_at}; writers {}",
        describe_runs(&runs)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_a_gateway_moves_its_clients_and_their_presence_leaves() {
    let mut cluster = start(ClusterOptions::new()).await;
    let room = cluster.create_board("gatewaykill").await.expect("room");
    let (doomed, survivor) = {
        let ids = cluster.gateway_ids();
        (ids[0].clone(), ids[1].clone())
    };
    // dan only watches, through the gateway that dies, and never comes
    // back: everyone else must hear that he left.
    let (dan, _) = join_as(&mut cluster, "dan", 0, &room).await;

    // ann and cat on the doomed gateway, bob on the other.
    let mut clients = Vec::new();
    for (user, gateway) in [("ann", 0), ("bob", 1), ("cat", 0)] {
        let client = cluster
            .client(user, &room, gateway, ClientOptions::drawing())
            .await
            .expect("client");
        clients.push(client.spawn());
    }
    wait_total_acked(&clients, 60, "60 acked ops").await;
    assert_eq!(
        clients[0].progress().gateway.as_deref(),
        Some(doomed.as_str())
    );
    assert_eq!(
        clients[1].progress().gateway.as_deref(),
        Some(survivor.as_str())
    );

    let before = acked_counts(&clients);
    let killed_at = Instant::now();
    cluster.kill(&doomed).expect("SIGKILL the gateway");
    wait_acked_more(&clients, &before, 30, "30 more acked ops per client").await;
    for client in [&clients[0], &clients[2]] {
        let progress = client.progress();
        assert_eq!(progress.gateway.as_deref(), Some(survivor.as_str()));
        assert!(progress.reconnects >= 1);
    }
    wait_for("bob to hear that dan left", DEADLINE, || {
        let left = clients[1]
            .progress()
            .presence
            .iter()
            .any(|p| p.user == "dan" && p.event == "leave" && p.at > killed_at);
        async move { left.then_some(()) }
    })
    .await;
    let mut stopped = stop_all(clients).await;

    // A newcomer sees ann, bob and cat (connected through the survivor) and
    // not dan.
    let (_eve, joined) = join_as(&mut cluster, "eve", 0, &room).await;
    let mut present: Vec<String> = joined["presence"]
        .as_array()
        .expect("presence")
        .iter()
        .filter_map(|u| u["id"].as_str().map(str::to_owned))
        .collect();
    present.sort();
    assert_eq!(present, ["ann", "bob", "cat", "eve"], "{joined}");

    verify_room(&cluster, &room, &mut stopped).await;
    drop(dan);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scaling_three_four_three_moves_the_placed_rooms_and_loses_nothing() {
    const ROOMS: usize = 40;
    let mut cluster = start(ClusterOptions::new()).await;
    let mut rooms = Vec::new();
    let mut clients = Vec::new();
    for i in 0..ROOMS {
        let room = cluster
            .create_channel(&format!("scale-{i:02}"))
            .await
            .expect("room");
        // Four users, each in ten rooms (cids are per user and room).
        let user = format!("u{}", i % 4);
        let client = cluster
            .client(
                &user,
                &room,
                i,
                ClientOptions::chat(2, Duration::from_millis(250)),
            )
            .await
            .expect("client");
        clients.push(client.spawn());
        rooms.push(room);
    }
    let ids: Vec<String> = rooms.iter().map(|r| r.id.clone()).collect();
    wait_acked_more(&clients, &vec![0; ROOMS], 5, "5 acked ops in every room").await;

    // 3 → 4: a new node takes the rooms it now wins, only those.
    let three = cluster.room_node_ids();
    let owners_3 = owners(&ids, &three);
    let heads_1 = heads(&cluster, &ids).await;
    let added = cluster.add_room_node().await.expect("a fourth room node");
    let four = cluster.room_node_ids();
    let owners_4 = owners(&ids, &four);
    let moved_1 = moved(&owners_3, &owners_4);
    assert!(!moved_1.is_empty(), "placement moves no room to {added}");
    assert!(moved_1.iter().all(|&i| owners_4[i] == added));
    println!(
        "scale 3 → 4: {} of {ROOMS} rooms move to {added}",
        moved_1.len()
    );
    wait_moved(&cluster, &ids, &moved_1, &heads_1, &owners_4, &clients).await;

    // 4 → 3: a drained node's rooms go to their runners-up.
    let leaving = three[0].clone();
    let heads_2 = heads(&cluster, &ids).await;
    let status = cluster.terminate(&leaving).await.expect("SIGTERM");
    assert!(status.success(), "{leaving} exited with {status}");
    cluster.wait_membership().await;
    let rest = cluster.room_node_ids();
    let owners_5 = owners(&ids, &rest);
    let moved_2 = moved(&owners_4, &owners_5);
    assert!(!moved_2.is_empty(), "{leaving} owned no room");
    assert!(moved_2.iter().all(|&i| owners_4[i] == leaving));
    println!(
        "scale 4 → 3: {} of {ROOMS} rooms move off {leaving}",
        moved_2.len()
    );
    wait_moved(&cluster, &ids, &moved_2, &heads_2, &owners_5, &clients).await;

    let stopped = stop_all(clients).await;
    for (i, client) in stopped.into_iter().enumerate() {
        let log = verify_room(&cluster, &rooms[i], &mut [client]).await;
        // Who wrote what, phase by phase: a room that placement did not
        // move kept its writer; a moved one went from its old owner to its
        // new one and never back.
        let phase = |from: u64, to: u64| -> Vec<String> {
            log.iter()
                .filter(|op| op.event.seq.get() > from && op.event.seq.get() <= to)
                .map(|op| op.writer.node.to_string())
                .collect()
        };
        let phase_1 = phase(heads_1[i], heads_2[i]);
        let phase_2 = phase(heads_2[i], u64::MAX);
        check_phase(&ids[i], &phase_1, &owners_3[i], &owners_4[i]);
        check_phase(&ids[i], &phase_2, &owners_4[i], &owners_5[i]);
    }
}

/// The owner of each room among `nodes`.
fn owners(rooms: &[String], nodes: &[String]) -> Vec<String> {
    rooms.iter().map(|r| owner_among(r, nodes)).collect()
}

/// The indices of the rooms whose owner differs.
fn moved(before: &[String], after: &[String]) -> Vec<usize> {
    (0..before.len())
        .filter(|&i| before[i] != after[i])
        .collect()
}

/// Waits until each moved room has an op after its head at the change
/// written by its new owner, then until every room got 3 more ops acked.
async fn wait_moved(
    cluster: &Cluster,
    rooms: &[String],
    moved: &[usize],
    heads: &[u64],
    owners: &[String],
    clients: &[RunningClient],
) {
    for &i in moved {
        wait_written_by(cluster, &rooms[i], heads[i], Some(&owners[i]), "").await;
    }
    let before = acked_counts(clients);
    wait_acked_more(clients, &before, 3, "3 more acked ops in every room").await;
}

async fn heads(cluster: &Cluster, rooms: &[String]) -> Vec<u64> {
    let mut heads = Vec::new();
    for room in rooms {
        heads.push(cluster.head(room).await);
    }
    heads
}

/// The writers of one phase: `old` then `new` (the same node if the room
/// did not move), never back.
fn check_phase(room: &str, writers: &[String], old: &str, new: &str) {
    let switch = writers
        .iter()
        .position(|w| w != old)
        .unwrap_or(writers.len());
    assert!(
        writers[switch..].iter().all(|w| w == new),
        "room {room}: writers {writers:?}, expected {old} then {new}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarting_nats_under_load_loses_nothing() {
    let mut cluster = start(ClusterOptions::new()).await;
    let (rooms, clients) = mixed_load(&mut cluster, "natsrestart", 6, 1).await;

    let before = acked_counts(&clients);
    cluster.restart_nats().await;
    cluster.wait_all_ready().await;
    cluster.wait_membership().await;
    wait_acked_more(
        &clients,
        &before,
        20,
        "20 more acked ops per client after the restart",
    )
    .await;
    let stopped = stop_all(clients).await;
    verify_rooms(&cluster, &rooms, stopped).await;
}

/// `channels` channels with one chatting member on each gateway (so every
/// op crosses NATS to reach the other) and `boards` boards with two
/// drawers; returns once every client has 10 ops acked.
async fn mixed_load(
    cluster: &mut Cluster,
    prefix: &str,
    channels: usize,
    boards: usize,
) -> (Vec<RoomInfo>, Vec<RunningClient>) {
    let mut rooms = Vec::new();
    let mut clients = Vec::new();
    for i in 0..channels {
        let room = cluster
            .create_channel(&format!("{prefix}-{i}"))
            .await
            .expect("room");
        for (user, gateway) in [("ann", 0), ("bob", 1)] {
            let chat = ClientOptions::chat(4, Duration::from_millis(100));
            let client = cluster
                .client(user, &room, gateway, chat)
                .await
                .expect("client");
            clients.push(client.spawn());
        }
        rooms.push(room);
    }
    for i in 0..boards {
        let board = cluster
            .create_board(&format!("{prefix}-board-{i}"))
            .await
            .expect("board");
        clients.extend(drawers(cluster, &board, &["cat", "dan"]).await);
        rooms.push(board);
    }
    let zero = vec![0; clients.len()];
    wait_acked_more(&clients, &zero, 10, "10 acked ops per client").await;
    (rooms, clients)
}

/// [`verify_room`] for every room, with the clients of each.
async fn verify_rooms(cluster: &Cluster, rooms: &[RoomInfo], clients: Vec<DrawClient>) {
    let mut clients = clients;
    for room in rooms {
        let (mut mine, rest): (Vec<DrawClient>, Vec<DrawClient>) =
            clients.into_iter().partition(|c| c.room().id == room.id);
        assert!(!mine.is_empty(), "no client in {}", room.id);
        let log = verify_room(cluster, room, &mut mine).await;
        assert!(
            mine.iter().all(|c| !c.acked().is_empty()),
            "room {}: a client got nothing acked",
            room.id
        );
        println!(
            "room {}: {} ops, writers {}",
            room.id,
            log.len(),
            describe_runs(&writer_runs(&log))
        );
        clients = rest;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_of_every_process_loses_nothing() {
    let mut cluster = start(ClusterOptions::new()).await;
    let (rooms, clients) = mixed_load(&mut cluster, "rolling", 4, 2).await;

    let originals: Vec<String> = cluster
        .gateway_ids()
        .into_iter()
        .chain(cluster.room_node_ids())
        .collect();
    for old in originals {
        let status = cluster.terminate(&old).await.expect("SIGTERM");
        assert!(status.success(), "{old} exited with {status}");
        let new = if old.starts_with('g') {
            cluster.add_gateway().await
        } else {
            cluster.add_room_node().await
        }
        .expect("a replacement");
        println!("rolling restart: {old} → {new}");
        let before = acked_counts(&clients);
        wait_acked_more(
            &clients,
            &before,
            5,
            &format!("5 more acked ops per client after {old} → {new}"),
        )
        .await;
    }
    let stopped = stop_all(clients).await;
    verify_rooms(&cluster, &rooms, stopped).await;
}

/// SIGKILLs the owner of a room and measures how long until the room
/// serves an op again: the first ack of an op sent after the kill. A fresh
/// op goes out every 50 ms, so the measure is within that of the truth.
async fn measure_failover(cluster: &mut Cluster, label: &str) -> Duration {
    let room = cluster.create_channel("failover").await.expect("room");
    let (mut ws, _) = join_as(cluster, "ann", 0, &room).await;
    // The room is loaded on its owner and serving.
    let mut sent = 1;
    send_probe(&mut ws, &room.id, sent).await;
    ws.recv_until(DEADLINE, |f| f["type"] == "ack" && f["cid"] == "probe-1")
        .await
        .expect("an ack before the kill");

    let owner = cluster.owner_of(&room.id);
    let killed_at = Instant::now();
    cluster.kill(&owner).expect("SIGKILL the owner");
    let first_after = sent + 1;
    let mut next_send = Instant::now();
    let failover = loop {
        if Instant::now() >= next_send {
            sent += 1;
            send_probe(&mut ws, &room.id, sent).await;
            next_send += Duration::from_millis(50);
        }
        assert!(
            killed_at.elapsed() < DEADLINE,
            "{label}: no ack {DEADLINE:?} after the kill"
        );
        let frame = match ws.recv_json(Duration::from_millis(10)).await {
            Ok(frame) => frame,
            Err(collab_tests::harness::WsError::Timeout(_)) => continue,
            Err(e) => panic!("{label}: {e}"),
        };
        if frame["type"] == "ack" {
            let k: u64 = frame["cid"]
                .as_str()
                .and_then(|c| c.strip_prefix("probe-"))
                .and_then(|k| k.parse().ok())
                .expect("a probe cid");
            if k >= first_after {
                break killed_at.elapsed();
            }
        } else if frame["type"] == "error" {
            let code = frame["code"].as_str().unwrap_or_default();
            assert!(
                matches!(code, "unavailable" | "rate_limited"),
                "{label}: {frame}"
            );
        }
    };
    println!(
        "failover: {:.2} s ({label}; SIGKILL of {owner} → first ack of an op sent after it)",
        failover.as_secs_f64()
    );
    failover
}

async fn send_probe(ws: &mut WsClient, room: &str, n: u64) {
    let cid = format!("probe-{n}");
    ws.send_json(&json!({"type": "op", "room": room, "cid": cid,
        "op": {"kind": "message", "text": cid}}))
        .await
        .expect("send a probe");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_time_with_the_test_membership_ttl() {
    let mut cluster = start(ClusterOptions::new()).await;
    measure_failover(&mut cluster, "heartbeat 250 ms, member TTL 1500 ms").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_time_with_the_default_membership_ttl() {
    let mut cluster = start(ClusterOptions::new().default_membership()).await;
    measure_failover(
        &mut cluster,
        "the product's default heartbeat and member TTL",
    )
    .await;
}

// === metrics ===

async fn scrape(cluster: &Cluster, id: &str) -> String {
    let url = format!("{}/metrics", cluster.http_url(id));
    let response = reqwest::get(&url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(response.status().as_u16(), 200, "{url}");
    response.text().await.expect("a page")
}

/// Scrapes `id` until `series` has a value `accept` takes; returns the
/// page.
async fn wait_for_sample(
    cluster: &Cluster,
    id: &str,
    series: &str,
    accept: impl Fn(f64) -> bool,
) -> String {
    let what = format!("{series} on {id}");
    let accept = &accept;
    wait_for(&what, DEADLINE, || async move {
        let page = scrape(cluster, id).await;
        sample(&page, series).is_some_and(accept).then_some(page)
    })
    .await
}

/// A room id, among `m-0`, `m-1`, …, whose owner is `before` among
/// `nodes` and `after` among `more` nodes.
fn room_placed(nodes: &[String], before: &str, more: &[String], after: &str) -> String {
    (0..1000)
        .map(|i| format!("m-{i}"))
        .find(|room| owner_among(room, nodes) == before && owner_among(room, more) == after)
        .expect("some room is placed so")
}

/// Sends a message op with `cid` until it is acked (an `unavailable`
/// while the room moves, or no answer, sends it again with the same cid).
async fn send_until_acked(ws: &mut WsClient, room: &str, cid: &str) {
    let frame = json!({"type": "op", "room": room, "cid": cid,
        "op": {"kind": "message", "text": cid}});
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert!(Instant::now() < deadline, "{cid} in {room} never acked");
        ws.send_json(&frame).await.expect("sent");
        let answer = ws
            .recv_until(Duration::from_secs(2), |f| {
                f["cid"] == cid && (f["type"] == "ack" || f["type"] == "error")
            })
            .await;
        match answer {
            Ok(f) if f["type"] == "ack" => return,
            Ok(f) => assert_eq!(f["code"], "unavailable", "{f}"),
            Err(collab_tests::harness::WsError::Timeout(_)) => {}
            Err(e) => panic!("{cid}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await; // before a retry
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cluster_metrics_follow_members_hand_offs_and_failovers() {
    // With Redis, as a production cluster runs: the gateway's Redis
    // metrics are documented for it.
    let mut cluster = start(ClusterOptions::new().gateways(1).room_nodes(2).redis()).await;
    let gateway = cluster.gateway_ids()[0].clone();
    let nodes = cluster.room_node_ids();

    // Every role exports what docs/metrics.md lists for it, and only that.
    let page = scrape(&cluster, &gateway).await;
    let problems = check_against_doc(&page, "gateway");
    assert!(problems.is_empty(), "{problems:#?}\n{page}");
    for (series, value) in [
        (r#"collab_cluster_members{role="gateway"}"#, 1.0),
        (r#"collab_cluster_members{role="room_node"}"#, 2.0),
        ("collab_nats_connected", 1.0),
        ("collab_nats_reconnects_total", 0.0),
        ("collab_ready", 1.0),
        ("collab_redis_up{}", 1.0),
        ("collab_redis_outages_total", 0.0),
    ] {
        assert_eq!(sample(&page, series), Some(value), "{series}:\n{page}");
    }
    assert!(page.contains(r#"role="gateway"} 1"#), "{page}");
    let changes = sample(&page, "collab_cluster_membership_changes_total").expect("changes");
    assert!(changes >= 1.0, "{page}");
    for node in &nodes {
        let page = scrape(&cluster, node).await;
        let problems = check_against_doc(&page, "room-node");
        assert!(problems.is_empty(), "{node}: {problems:#?}\n{page}");
        assert!(page.contains(r#"role="room-node"} 1"#), "{page}");
        assert_eq!(sample(&page, "collab_nats_connected"), Some(1.0));
        assert_eq!(
            sample(
                &page,
                r#"collab_http_requests_total{route="/readyz",status="200"}"#
            )
            .map(|n| n >= 1.0),
            Some(true),
            "the harness's readiness polls:\n{page}"
        );
    }

    // Two rooms on the first node: one that a third node will win, one
    // that stays until the first node is killed.
    let first = nodes[0].clone();
    let third = "r3".to_owned();
    let with_third: Vec<String> = nodes.iter().cloned().chain([third.clone()]).collect();
    let moving = room_placed(&nodes, &first, &with_third, &third);
    let staying = room_placed(&nodes, &first, &with_third, &first);
    let moving = cluster.create_channel(&moving).await.expect("room");
    let staying = cluster.create_channel(&staying).await.expect("room");
    let (mut ws, _) = join_as(&mut cluster, "ann", 0, &moving).await;
    ws.send_json(&json!({"type": "join", "room": staying.id}))
        .await
        .expect("join");
    ws.recv_type("joined", DEADLINE).await.expect("joined");
    send_until_acked(&mut ws, &moving.id, "a1").await;
    send_until_acked(&mut ws, &staying.id, "s1").await;

    // A third node: the first hands `moving` off, with a snapshot of its
    // head, and the third takes it over from that snapshot.
    let added = cluster.add_room_node().await.expect("a third room node");
    assert_eq!(added, third);
    wait_for_sample(&cluster, &first, "collab_room_handoffs_total", |n| n == 1.0).await;
    let store = cluster.store().await;
    let moving_id = moving.room_id();
    let head = cluster.head(&moving.id).await;
    wait_for("the hand-off snapshot", DEADLINE, || {
        let store = store.clone();
        let room = moving_id.clone();
        async move {
            let snapshot = store.latest_snapshot(&room).await.ok().flatten();
            snapshot.is_some_and(|s| s.seq.get() == head).then_some(())
        }
    })
    .await;
    send_until_acked(&mut ws, &moving.id, "a2").await;
    let page = scrape(&cluster, &third).await;
    assert_eq!(
        sample(&page, r#"collab_room_takeovers_total{kind="handoff"}"#),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        sample(&page, r#"collab_room_takeovers_total{kind="failover"}"#),
        Some(0.0),
        "{page}"
    );
    wait_for_sample(
        &cluster,
        &gateway,
        r#"collab_cluster_members{role="room_node"}"#,
        |n| n == 3.0,
    )
    .await;

    // SIGKILL the first node: `staying` has an op after its last snapshot
    // (it never took one), so its next owner replays it: a failover.
    cluster.kill(&first).expect("SIGKILL");
    let next = owner_among(&staying.id, &cluster.room_node_ids());
    send_until_acked(&mut ws, &staying.id, "s2").await;
    let page = scrape(&cluster, &next).await;
    assert_eq!(
        sample(&page, r#"collab_room_takeovers_total{kind="failover"}"#),
        Some(1.0),
        "{next}:\n{page}"
    );
    let page = wait_for_sample(
        &cluster,
        &gateway,
        r#"collab_cluster_members{role="room_node"}"#,
        |n| n == 2.0,
    )
    .await;
    let later = sample(&page, "collab_cluster_membership_changes_total").expect("changes");
    assert!(later >= changes + 2.0, "{changes} then {later}:\n{page}");

    // NATS restarts: every process reconnects, and says so.
    cluster.restart_nats().await;
    for id in [gateway.clone(), next.clone()] {
        wait_for_sample(&cluster, &id, "collab_nats_reconnects_total", |n| n >= 1.0).await;
        wait_for_sample(&cluster, &id, "collab_nats_connected", |n| n == 1.0).await;
    }
}

// === deleting rooms ===

/// Joins `room` through an open socket until the answer is final (not
/// `unavailable`, which a room that is moving gives): that answer.
async fn join_answer(ws: &mut WsClient, room: &str) -> serde_json::Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        ws.send_json(&json!({"type": "join", "room": room}))
            .await
            .expect("join sent");
        let answer = ws
            .recv_until(DEADLINE, |f| {
                (f["type"] == "joined" || f["type"] == "error") && f["room"] == room
            })
            .await
            .expect("an answer to join");
        if answer["code"] != "unavailable" {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "{room} stays unavailable: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await; // retry pace
    }
}

/// `DELETE /v1/rooms/{room}` as `user` through the `gateway`-th gateway.
async fn delete(cluster: &mut Cluster, user: &str, room: &str, gateway: usize) -> u16 {
    let token = cluster.token(user).await.expect("token");
    let id = cluster.gateway_ids()[gateway].clone();
    let (status, body) = cluster
        .delete_room(&id, &token, room)
        .await
        .expect("answered");
    assert!(
        status == 204 || body["error"]["code"].is_string(),
        "{status}: {body}"
    );
    status
}

/// What a deleted room must look like from everywhere: no join, no
/// metadata or history on any gateway, nothing in the store but the
/// tombstone at `tombstone`.
async fn assert_gone(cluster: &mut Cluster, room: &str, user: &str, tombstone: u64) {
    let token = cluster.token(user).await.expect("token");
    let mut ws = WsClient::connect(&cluster.gateway_ws_url(0), &token)
        .await
        .expect("connects");
    ws.recv_type("welcome", DEADLINE).await.expect("welcome");
    let answer = join_answer(&mut ws, room).await;
    assert_eq!(answer["code"], "not_found", "{answer}");
    for gateway in cluster.gateway_ids() {
        for path in [
            format!("/v1/rooms/{room}"),
            format!("/v1/rooms/{room}/history"),
        ] {
            let (status, body) = cluster
                .get_json(&gateway, &token, &path)
                .await
                .expect("answered");
            assert_eq!(status, 404, "{path} on {gateway}: {body}");
        }
    }
    let store = cluster.store().await;
    let id = collab_protocol::RoomId::parse(room).expect("room id");
    assert_eq!(store.room(&id).await.expect("room"), None);
    assert_eq!(store.head(&id).await.expect("head").get(), tombstone);
    assert!(
        matches!(
            store.read_log(&id, collab_protocol::Seq::ZERO, 100).await,
            Err(collab_store::StoreError::RoomDeleted(seq)) if seq.get() == tombstone
        ),
        "nothing below the tombstone"
    );
    assert_eq!(store.latest_snapshot(&id).await.expect("snapshot"), None);
    let listed = store
        .rooms_of_user(&collab_protocol::UserId::parse(user).expect("user"))
        .await
        .expect("rooms of user");
    assert!(
        listed.iter().all(|r| r.id != id),
        "{user} still lists {room}"
    );
}

/// A room's creator deletes it through a gateway; the room lives on a room
/// node, which deletes it through its fence. The members on both gateways
/// hear `not_found` for it and are let go, and it is gone everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_room_is_deleted_through_any_gateway_by_its_owner_node() {
    let mut cluster = start(ClusterOptions::new()).await;
    let room = cluster
        .create_room("ann", &json!({"kind": "channel", "id": "to-delete"}))
        .await
        .expect("room");
    let (mut bob, _) = join_as(&mut cluster, "bob", 0, &room).await;
    let (mut cat, _) = join_as(&mut cluster, "cat", 1, &room).await;
    for i in 1..=5 {
        let op = json!({"type": "op", "room": room.id, "cid": format!("b{i}"),
            "op": {"kind": "message", "text": "hi"}});
        bob.send_json(&op).await.expect("op sent");
        let ack = bob.recv_type("ack", DEADLINE).await.expect("acked");
        assert_eq!(ack["seq"], i, "{ack}");
    }
    assert_eq!(
        delete(&mut cluster, "bob", &room.id, 1).await,
        403,
        "not bob's"
    );
    let owner = cluster.owner_of(&room.id);
    assert_eq!(delete(&mut cluster, "ann", &room.id, 1).await, 204);
    for (who, ws) in [("bob", &mut bob), ("cat", &mut cat)] {
        let told = ws
            .recv_until(DEADLINE, |f| f["type"] == "error")
            .await
            .unwrap_or_else(|e| panic!("{who} was not told: {e}"));
        assert_eq!(
            (told["code"].as_str(), told["room"].as_str()),
            (Some("not_found"), Some(room.id.as_str())),
            "{who}: {told}"
        );
    }
    assert!(
        cluster
            .logs(&owner)
            .iter()
            .any(|line| line.contains("room deleted")),
        "the owner {owner} deleted it"
    );
    assert_gone(&mut cluster, &room.id, "ann", 6).await;
    assert_eq!(delete(&mut cluster, "ann", &room.id, 0).await, 404);
}

/// The owner of a room is SIGKILLed in the middle of deleting it: after
/// its tombstone, before the room record goes (a private room with many
/// members, whose memberships go one by one, keeps it there a while). The
/// room is never half alive: the next node to load it finishes the
/// deletion, and from then on it is gone everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deletion_cut_short_by_a_sigkill_is_finished_by_the_next_owner() {
    // More members than a room may have by default, so that removing
    // their memberships takes long enough to be cut short.
    let mut cluster =
        start(ClusterOptions::new().env("COLLAB_GATEWAY__MAX_MEMBERS_PER_ROOM", "5000")).await;
    let members: Vec<String> = (0..3000).map(|i| format!("member-{i}")).collect();
    let room = cluster
        .create_room(
            "ann",
            &json!({"kind": "channel", "id": "half-gone", "members": members}),
        )
        .await
        .expect("room");
    let (mut ann, _) = join_as(&mut cluster, "ann", 0, &room).await;
    for i in 1..=3 {
        let op = json!({"type": "op", "room": room.id, "cid": format!("a{i}"),
            "op": {"kind": "message", "text": "hi"}});
        ann.send_json(&op).await.expect("op sent");
        ann.recv_type("ack", DEADLINE).await.expect("acked");
    }
    let owner = cluster.owner_of(&room.id);
    let store = cluster.store().await;
    let id = room.room_id();

    // The deletion, through the other gateway; the answer comes from a
    // dead node, or not at all.
    let token = cluster.token("ann").await.expect("token");
    let url = format!(
        "{}/v1/rooms/{}",
        cluster.http_url(&cluster.gateway_ids()[1]),
        room.id
    );
    let deleting = tokio::spawn(async move {
        reqwest::Client::new()
            .delete(url)
            .bearer_auth(token)
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    wait_for("the tombstone", DEADLINE, || {
        let store = store.clone();
        let id = id.clone();
        async move { (store.head(&id).await.ok()?.get() == 4).then_some(()) }
    })
    .await;
    cluster.kill(&owner).expect("SIGKILL the owner");
    assert!(
        store.room(&id).await.expect("room").is_some(),
        "killed in the middle: the record is still there"
    );
    let answered = deleting.await.expect("task");
    assert!(
        !matches!(answered, Ok(204)),
        "a node killed before it finished cannot have said it did: {answered:?}"
    );

    // Any request finishes it: here a join, through the gateway of the
    // member still in the room, who hears `not_found` too.
    assert_gone(&mut cluster, &room.id, "ann", 4).await;
    let told = ann
        .recv_until(DEADLINE, |f| {
            f["type"] == "error" && f["code"] == "not_found"
        })
        .await
        .expect("the member is told");
    assert_eq!(told["room"], room.id.as_str(), "{told}");
    let member = collab_protocol::UserId::parse("member-2999").expect("user");
    assert!(
        store
            .rooms_of_user(&member)
            .await
            .expect("rooms of user")
            .is_empty()
    );
    assert_eq!(delete(&mut cluster, "ann", &room.id, 1).await, 404);
}

/// The admin view of the cluster on `gateway`, polled until `check`
/// accepts it.
async fn wait_admin_view(
    cluster: &Cluster,
    gateway: &str,
    token: &str,
    path: &str,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (status, body) = cluster
            .get_json(gateway, token, path)
            .await
            .expect("answered");
        if status == 200 && check(&body) {
            return body;
        }
        if status != 200 || body != last {
            last = body;
        }
        assert!(
            Instant::now() < deadline,
            "{what} on {gateway}: still {status} {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await; // poll interval
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_admin_view_shows_who_serves_each_room_and_what_every_member_holds() {
    let mut cluster = start(ClusterOptions::new()).await;
    let admin = cluster.admin_token().await.expect("admin token");
    let rooms = [
        cluster.create_board("adm-a").await.expect("room"),
        cluster.create_board("adm-b").await.expect("room"),
        cluster.create_channel("adm-c").await.expect("room"),
        cluster.create_board("adm-idle").await.expect("room"),
    ];
    let gateways: Vec<String> = cluster
        .gateways()
        .list()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(gateways.len(), 2);

    // Without the scope: 403 on every gateway.
    let plain = cluster.token("ann").await.expect("token");
    for gateway in &gateways {
        for path in ["/v1/admin/cluster", "/v1/admin/rooms/adm-a"] {
            let (status, body) = cluster
                .get_json(gateway, &plain, path)
                .await
                .expect("answered");
            assert_eq!(status, 403, "{path} on {gateway}: {body}");
        }
    }

    // Ann (gateway 0) and Bob (gateway 1) in room a, Cat (gateway 1) in b,
    // Dan (gateway 0) in c; nobody in the last room.
    let (mut ann, _) = join_as(&mut cluster, "ann", 0, &rooms[0]).await;
    let (bob, _) = join_as(&mut cluster, "bob", 1, &rooms[0]).await;
    let (cat, _) = join_as(&mut cluster, "cat", 1, &rooms[1]).await;
    let (dan, _) = join_as(&mut cluster, "dan", 0, &rooms[2]).await;
    send_probe(&mut ann, "adm-a", 1).await;
    ann.recv_type("op", DEADLINE)
        .await
        .expect("the op committed");

    // The cluster view on each gateway: every member, each gateway with
    // its connections and each room node with the rooms it serves.
    let room_nodes = cluster.room_node_ids();
    let live_rooms = ["adm-a", "adm-b", "adm-c"];
    let expected_rooms = |node: &str| {
        live_rooms
            .iter()
            .filter(|room| cluster.owner_of(room) == node)
            .count() as u64
    };
    let mut expected: Vec<(String, String, Option<u64>, Option<u64>)> = Vec::new();
    expected.push((gateways[0].clone(), "gateway".into(), None, Some(2)));
    expected.push((gateways[1].clone(), "gateway".into(), None, Some(2)));
    for node in &room_nodes {
        expected.push((
            node.clone(),
            "room_node".into(),
            Some(expected_rooms(node)),
            None,
        ));
    }
    expected.sort();
    let entries = |body: &serde_json::Value| {
        let mut entries: Vec<(String, String, Option<u64>, Option<u64>)> = body["members"]
            .as_array()
            .map(|all| {
                all.iter()
                    .map(|m| {
                        (
                            m["node"].as_str().unwrap_or_default().to_owned(),
                            m["role"].as_str().unwrap_or_default().to_owned(),
                            m["rooms"].as_u64(),
                            m["connections"].as_u64(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        entries.sort();
        entries
    };
    let mut instances = std::collections::HashMap::new();
    for gateway in &gateways {
        let view = wait_admin_view(
            &cluster,
            gateway,
            &admin,
            "/v1/admin/cluster",
            &format!("the cluster view {expected:?}"),
            |body| body["mode"] == "cluster" && entries(body) == expected,
        )
        .await;
        for member in view["members"].as_array().expect("members") {
            if member["role"] == "gateway" {
                instances.insert(
                    member["node"].as_str().expect("node").to_owned(),
                    member["instance"].as_str().expect("instance").to_owned(),
                );
            }
        }
    }

    // A room's view, from either gateway: its owner is the node placement
    // gives it, which is the node that wrote its op; its members are the
    // connected users, each with the gateway it is connected to.
    let writer = cluster.read_log("adm-a").await[0].writer.node.to_string();
    assert_eq!(writer, cluster.owner_of("adm-a"));
    let member =
        |user: &str, gateway: usize| (user.to_owned(), instances[&gateways[gateway]].clone());
    let cases = [
        ("adm-a", vec![member("ann", 0), member("bob", 1)], 1),
        ("adm-b", vec![member("cat", 1)], 0),
        ("adm-c", vec![member("dan", 0)], 0),
    ];
    for gateway in &gateways {
        for (room, members, head) in &cases {
            let (status, body) = cluster
                .get_json(gateway, &admin, &format!("/v1/admin/rooms/{room}"))
                .await
                .expect("answered");
            assert_eq!(status, 200, "{room} on {gateway}: {body}");
            assert_eq!(body["live"], true, "{body}");
            assert_eq!(
                body["owner"]["node"],
                cluster.owner_of(room).as_str(),
                "{body}"
            );
            assert!(body["owner"]["term"].is_u64(), "{body}");
            assert_eq!(body["head"], *head, "{body}");
            let seen: Vec<(String, String)> = body["members"]
                .as_array()
                .expect("members")
                .iter()
                .map(|m| {
                    let conn = m["conn"].as_str().expect("conn");
                    let gateway = m["gateway"].as_str().expect("gateway").to_owned();
                    // A connection is named after its gateway's instance.
                    assert!(conn.starts_with(&format!("{gateway}-")), "{m}");
                    (m["user"].as_str().expect("user").to_owned(), gateway)
                })
                .collect();
            assert_eq!(&seen, members, "{room} on {gateway}");
        }
        let (_, busy) = cluster
            .get_json(gateway, &admin, "/v1/admin/rooms/adm-a")
            .await
            .expect("answered");
        assert_eq!(busy["last_commit"]["seq"], 1, "{busy}");
        // Nobody used the last room: not live anywhere, and asking does
        // not load it; the node that would is named.
        let (_, idle) = cluster
            .get_json(gateway, &admin, "/v1/admin/rooms/adm-idle")
            .await
            .expect("answered");
        assert_eq!(idle["live"], false, "{idle}");
        assert_eq!(
            idle["owner"],
            serde_json::json!({"node": cluster.owner_of("adm-idle"), "term": null})
        );
        assert_eq!(idle["members"], serde_json::json!([]));
    }
    assert_eq!(rooms[3].id, "adm-idle");

    // Clients leave: the figures follow.
    for ws in [bob, cat, dan] {
        ws.close().await.expect("closed");
    }
    let mut expected: Vec<(String, String, Option<u64>, Option<u64>)> = expected
        .into_iter()
        .map(|(node, role, rooms, connections)| {
            let connections = connections.map(|_| if node == gateways[0] { 1 } else { 0 });
            (node, role, rooms, connections)
        })
        .collect();
    expected.sort();
    wait_admin_view(
        &cluster,
        &gateways[1],
        &admin,
        "/v1/admin/cluster",
        &format!("the cluster view after three left {expected:?}"),
        |body| entries(body) == expected,
    )
    .await;
    wait_admin_view(
        &cluster,
        &gateways[0],
        &admin,
        "/v1/admin/rooms/adm-a",
        "bob gone from room a",
        |body| body["members"].as_array().is_some_and(|m| m.len() == 1),
    )
    .await;
}
