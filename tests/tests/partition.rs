//! Real network partitions: a room node, and then a gateway, runs in a
//! network namespace of its own, reaching NATS and the CQL store over a
//! veth link that the test cuts (`harness::netns`). The process is not
//! stopped or killed: it runs on, talking to nobody, and comes back when
//! the link does. NATS, the CQL server and the other processes stay on the
//! host's loopback.
//!
//! Needs `COLLAB_NATS_SERVER` and `COLLAB_TEST_CQL` like the other cluster
//! tests, and the rights to create network namespaces (root, iproute2);
//! without them each test says why and passes without running.

// The cluster tests' checks; these tests need only some of them.
#[allow(dead_code)]
#[path = "cluster_cases/mod.rs"]
mod cases;

use std::time::Duration;

use cases::{
    DEADLINE, acked_counts, describe_runs, start, stop_all, verify_room, wait_acked_more,
    wait_total_acked, wait_written_by, writer_runs,
};
use collab_tests::harness::cluster::{
    ClientOptions, ClusterOptions, Role, owner_among, partitions_unsupported, wait_for,
};
use tokio::time::Instant;

/// `true` (after saying why) when this machine cannot make namespaces.
fn skip() -> bool {
    match partitions_unsupported() {
        Some(why) => {
            eprintln!("skipping the partition test: {why}");
            true
        }
        None => false,
    }
}

/// A room id that placement gives to `owner` among `nodes`.
fn room_owned_by(owner: &str, nodes: &[String], prefix: &str) -> String {
    (0..10_000)
        .map(|i| format!("{prefix}{i}"))
        .find(|room| owner_among(room, nodes) == owner)
        .unwrap_or_else(|| panic!("no room id of {owner} among {nodes:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_room_node_loses_its_room_commits_nothing_and_rejoins() {
    if skip() {
        return;
    }
    room_node_partition(Cut::NatsAndStore).await;
}

/// The split brain that the store's fencing is for: the node still reaches
/// the store, so anything it still commits for the room meets the new
/// owner's rows. Once NATS is back the room returns to it; if an actor of
/// its outlived the partition, its head is stale and its first append
/// conflicts (the test prints how many were fenced).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_room_node_cut_from_nats_only_is_fenced_by_the_store() {
    if skip() {
        return;
    }
    room_node_partition(Cut::NatsOnly).await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    NatsAndStore,
    NatsOnly,
}

/// Cuts the owner of a busy room (see the tests), heals it, and checks
/// the room moved away and back with nothing acked lost and no op of the
/// cut owner after the move.
async fn room_node_partition(how: Cut) {
    let started = Instant::now();
    let mut cluster = start(ClusterOptions::new().room_nodes(2)).await;
    let cut = cluster
        .add_isolated(Role::RoomNode)
        .await
        .expect("a room node in a network namespace");
    let room_id = room_owned_by(&cut, &cluster.room_node_ids(), "cut");
    let room = cluster.create_board(&room_id).await.expect("room");
    let mut clients = Vec::new();
    for (i, user) in ["ann", "bob", "cat"].into_iter().enumerate() {
        let client = cluster
            .client(user, &room, i, ClientOptions::drawing())
            .await
            .expect("a client");
        clients.push(client.spawn());
    }
    wait_total_acked(&clients, 90, "90 acked ops before the partition").await;
    let old_writer = cluster
        .read_log(&room.id)
        .await
        .last()
        .map(|op| op.writer.clone())
        .expect("ops before the partition");
    assert_eq!(old_writer.node.as_str(), cut, "placement picks the writer");

    // The partition: the node runs on, but nothing reaches it or leaves it.
    let head_at_cut = cluster.head(&room.id).await;
    let cut_at = Instant::now();
    match how {
        Cut::NatsAndStore => cluster.cut(&cut).expect("cut the room node's links"),
        Cut::NatsOnly => cluster
            .cut_bus(&cut)
            .expect("cut the room node's NATS link"),
    }
    cluster.wait_membership().await;
    let gone_after = cut_at.elapsed();
    let moved_at = wait_written_by(&cluster, &room.id, head_at_cut, None, &cut).await;
    let moved_after = cut_at.elapsed();
    let before = acked_counts(&clients);
    wait_acked_more(
        &clients,
        &before,
        30,
        "30 more acked ops per client while cut",
    )
    .await;
    assert!(cluster.is_alive(&cut), "the cut room node exited");
    let log = cluster.read_log(&room.id).await;
    let during: Vec<u64> = log
        .iter()
        .filter(|op| op.writer.node.as_str() == cut && op.event.seq.get() >= moved_at)
        .map(|op| op.event.seq.get())
        .collect();
    assert!(
        during.is_empty(),
        "the cut {cut} committed seqs {during:?} after the room moved at {moved_at}: {}",
        describe_runs(&writer_runs(&log))
    );

    // The link comes back: the node rejoins, and placement gives it the
    // room again, which it loads from the store with a new term.
    let healed_at = Instant::now();
    cluster.heal(&cut).await.expect("heal the link");
    cluster.wait_membership().await;
    let rejoined_after = healed_at.elapsed();
    let head_at_heal = cluster.head(&room.id).await;
    let back_at = wait_written_by(&cluster, &room.id, head_at_heal, Some(&cut), "").await;
    let serving_after = healed_at.elapsed();
    let before = acked_counts(&clients);
    wait_acked_more(
        &clients,
        &before,
        30,
        "30 more acked ops per client after healing",
    )
    .await;
    let mut clients = stop_all(clients).await;

    // Nothing acked is lost, every client saw exactly the stored log, and
    // each writer is one contiguous run with rising terms.
    let log = verify_room(&cluster, &room, &mut clients).await;
    let runs = writer_runs(&log);
    let stale: Vec<u64> = log
        .iter()
        .filter(|op| op.writer == old_writer && op.event.seq.get() >= moved_at)
        .map(|op| op.event.seq.get())
        .collect();
    assert!(
        stale.is_empty(),
        "{}/{} (cut) committed seqs {stale:?} after the room moved at {moved_at}: {}",
        old_writer.node,
        old_writer.term,
        describe_runs(&runs)
    );
    let middle = &log[moved_at as usize - 1].writer;
    let back = &log[back_at as usize - 1].writer;
    assert_ne!(middle.node.as_str(), cut);
    assert_eq!(back.node.as_str(), cut);
    assert!(
        old_writer.term < middle.term && middle.term < back.term,
        "terms {} < {} < {}: {}",
        old_writer.term,
        middle.term,
        back.term,
        describe_runs(&runs)
    );
    let fenced = cluster
        .logs(&cut)
        .iter()
        .filter(|line| line.contains("another owner wrote this room"))
        .count();
    println!(
        "partition ({how:?}) of {cut}: {fenced} actor(s) fenced by the store; out of the membership {gone_after:?} after the cut, room moved \
         {moved_after:?} after it (seq {moved_at}); back in the membership {rejoined_after:?} \
         after healing, serving the room again {serving_after:?} after it (seq {back_at}); \
         {} ops, writers {}; test {:?}",
        log.len(),
        describe_runs(&runs),
        started.elapsed()
    );
}

/// How long a gateway that cannot reach NATS may keep its clients before
/// it closes their sockets (1001) so they resume through another gateway.
/// The membership TTL of the test cluster is 1.5 s; the bound leaves room
/// for the gateway to notice (its heartbeats fail, its requests time out).
const GATEWAY_CUT_BOUND: Duration = Duration::from_secs(15);

/// A gateway cut from NATS tells its clients (the socket closes with 1001,
/// going away) within a bound and they resume through another gateway,
/// losing no acked op; when NATS is back it serves again. The gateway
/// closes its sockets once its membership heartbeats have failed for
/// `gateway.bus_lost_close_ms` (two member TTLs by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_cut_from_nats_tells_its_clients_and_they_resume_elsewhere() {
    if skip() {
        return;
    }
    let started = Instant::now();
    let mut cluster = start(ClusterOptions::new().gateways(1).room_nodes(2)).await;
    let cut = cluster
        .add_isolated(Role::Gateway)
        .await
        .expect("a gateway in a network namespace");
    let survivor = cluster.gateway_ids()[0].clone();
    let room = cluster.create_board("gatewaycut").await.expect("room");
    // ann and bob through the isolated gateway, cat through the other.
    let list: Vec<String> = cluster
        .gateways()
        .list()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let on_cut = list.iter().position(|g| *g == cut).expect("listed");
    let on_survivor = list.iter().position(|g| *g == survivor).expect("listed");
    let mut clients = Vec::new();
    for (user, gateway) in [("ann", on_cut), ("bob", on_cut), ("cat", on_survivor)] {
        let client = cluster
            .client(user, &room, gateway, ClientOptions::drawing())
            .await
            .expect("a client");
        clients.push(client.spawn());
    }
    wait_total_acked(&clients, 60, "60 acked ops before the partition").await;
    for client in &clients[..2] {
        assert_eq!(client.progress().gateway.as_deref(), Some(cut.as_str()));
    }

    let cut_at = Instant::now();
    cluster
        .cut(&cut)
        .expect("cut the gateway's link to NATS and the store");
    for client in &clients[..2] {
        let user = client.user().to_owned();
        wait_for(
            &format!("{user} to be told by {cut} (a close) and to resume on {survivor}"),
            GATEWAY_CUT_BOUND,
            || {
                let progress = client.progress();
                let told = progress
                    .closes
                    .iter()
                    .any(|(g, code, at)| *g == cut && *code == Some(1001) && *at > cut_at);
                let moved = progress.gateway.as_deref() == Some(survivor.as_str());
                async move { (told && moved).then_some(()) }
            },
        )
        .await;
    }
    let told_after = cut_at.elapsed();
    let before = acked_counts(&clients);
    wait_acked_more(
        &clients,
        &before,
        30,
        "30 more acked ops per client on the survivor",
    )
    .await;
    assert!(cluster.is_alive(&cut), "the cut gateway exited");

    // NATS is back: the gateway is ready again and serves a new client.
    let healed_at = Instant::now();
    cluster.heal(&cut).await.expect("heal the link");
    cluster.wait_membership().await;
    let list: Vec<String> = cluster
        .gateways()
        .list()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let on_cut = list.iter().position(|g| *g == cut).expect("listed again");
    let newcomer = cluster
        .client("dan", &room, on_cut, ClientOptions::drawing())
        .await
        .expect("a client")
        .spawn();
    wait_for(&format!("dan to draw through {cut}"), DEADLINE, || {
        let progress = newcomer.progress();
        let ok = progress.acked >= 10 && progress.gateway.as_deref() == Some(cut.as_str());
        async move { ok.then_some(()) }
    })
    .await;
    let serving_after = healed_at.elapsed();
    clients.push(newcomer);
    let mut clients = stop_all(clients).await;
    let log = verify_room(&cluster, &room, &mut clients).await;
    println!(
        "partition of gateway {cut}: clients told and moved {told_after:?} after the cut; \
         serving again {serving_after:?} after healing; {} ops; test {:?}",
        log.len(),
        started.elapsed()
    );
}
