//! Who is in the cluster: every room node and gateway heartbeats a
//! [`MemberRecord`] into a JetStream KV bucket under its node id, each put
//! with a per-key TTL (`Nats-TTL`, nats-server 2.11 or newer), and everyone
//! watches the bucket. A member that stops heartbeating drops out when its
//! key expires: the server then writes a delete marker, which every watcher
//! sees. Each watcher also drops a record itself once the record's own TTL
//! has passed since it was last seen, so a lost marker or a broken watch
//! never keeps a dead node in placement for longer than that.
//!
//! The live set is published on a tokio `watch` channel ([`Members`]), so
//! a room node can tell when it stops owning a room and a gateway when a
//! room moves.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::header::NATS_MESSAGE_TTL;
use async_nats::jetstream::{self, kv};
use collab_protocol::subjects::{self, MemberRecord, WIRE_VERSION};
use collab_protocol::{NodeId, RoomId};
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, trace, warn};

use crate::load::Load;
use crate::{BusMetrics, placement};

/// The live members of the cluster as one process sees them.
///
/// The watch channel that carries it (`Bus::members`) wakes its receivers
/// when a member comes, goes or changes role, not when only its load
/// figures change; the value it holds is always the latest, figures
/// included.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    members: BTreeMap<NodeId, MemberRecord>,
}

impl Members {
    /// The live room nodes, in id order.
    pub fn room_nodes(&self) -> impl Iterator<Item = &NodeId> {
        self.members
            .iter()
            .filter(|(_, record)| record.room_node)
            .map(|(node, _)| node)
    }

    /// The live gateways, in id order.
    pub fn gateways(&self) -> impl Iterator<Item = &NodeId> {
        self.members
            .iter()
            .filter(|(_, record)| record.gateway)
            .map(|(node, _)| node)
    }

    /// The instances of the live gateways: what they name their
    /// connections' gateway after (the node id for a member that does not
    /// say).
    pub fn gateway_instances(&self) -> impl Iterator<Item = &str> {
        self.members
            .iter()
            .filter(|(_, record)| record.gateway)
            .map(|(node, record)| {
                if record.instance.is_empty() {
                    node.as_str()
                } else {
                    record.instance.as_str()
                }
            })
    }

    /// Every live member with its record, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, &MemberRecord)> {
        self.members.iter()
    }

    /// Whether `other` has the same members with the same records, load
    /// figures aside ([`MemberRecord::same_member`]).
    pub fn same_members(&self, other: &Members) -> bool {
        self.members.len() == other.members.len()
            && self
                .members
                .iter()
                .zip(&other.members)
                .all(|((a, ra), (b, rb))| a == b && ra.same_member(rb))
    }

    pub fn get(&self, node: &NodeId) -> Option<&MemberRecord> {
        self.members.get(node)
    }

    pub fn contains(&self, node: &NodeId) -> bool {
        self.members.contains_key(node)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The owner of `room` among the live room nodes ([`placement::owner`]).
    pub fn owner(&self, room: &RoomId) -> Option<&NodeId> {
        placement::owner(room, self.room_nodes())
    }

    /// A member list made of `records` (how the registry builds it; tests
    /// build their own).
    pub fn from_records(records: impl IntoIterator<Item = (NodeId, MemberRecord)>) -> Self {
        Members {
            members: records.into_iter().collect(),
        }
    }
}

/// What this process announces about itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Roles {
    pub room_node: bool,
    pub gateway: bool,
}

impl Roles {
    fn any(self) -> bool {
        self.room_node || self.gateway
    }
}

/// How the registry is set up.
#[derive(Debug, Clone)]
pub(crate) struct RegistryConfig {
    pub bucket: String,
    pub node: NodeId,
    pub instance: String,
    pub heartbeat_interval: Duration,
    pub ttl: Duration,
    pub replicas: usize,
}

/// The KV bucket, created on first use with per-key TTLs and delete
/// markers enabled.
pub(crate) async fn bucket(
    js: &jetstream::Context,
    config: &RegistryConfig,
) -> Result<kv::Store, async_nats::Error> {
    if let Ok(store) = js.get_key_value(config.bucket.as_str()).await {
        return Ok(store);
    }
    let created = js
        .create_key_value(kv::Config {
            bucket: config.bucket.clone(),
            description: "collab cluster members: one key per node, expiring without heartbeats"
                .into(),
            history: 1,
            storage: jetstream::stream::StorageType::File,
            num_replicas: config.replicas.max(1),
            // Enables per-key TTLs, and makes the server write a delete
            // marker (kept this long) when a key expires, so watchers see it.
            limit_markers: Some(config.ttl.max(Duration::from_secs(1))),
            ..Default::default()
        })
        .await;
    match created {
        Ok(store) => Ok(store),
        // Another member created it meanwhile.
        Err(err) => match js.get_key_value(config.bucket.as_str()).await {
            Ok(store) => Ok(store),
            Err(_) => Err(err.into()),
        },
    }
}

/// Puts this node's record with its TTL until `roles` is dropped. Only
/// members with a role announce themselves; a change of roles is announced
/// at once. Each record carries the figures `load` counts for its roles.
///
/// `cut_off` says since when the heartbeats have been failing: the last
/// one that landed (or the first that failed, if none did), or `None`
/// while they land.
pub(crate) async fn heartbeat(
    js: jetstream::Context,
    config: RegistryConfig,
    mut roles: watch::Receiver<Roles>,
    load: std::sync::Arc<Load>,
    cut_off: std::sync::Arc<watch::Sender<Option<std::time::Instant>>>,
) {
    let mut landed: Option<std::time::Instant> = None;
    let subject = format!("$KV.{}.{}", config.bucket, config.node);
    let mut ticks = tokio::time::interval(config.heartbeat_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut bucket_checked = false;
    let mut failing = false;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            changed = roles.changed() => if changed.is_err() { return },
        }
        let current = *roles.borrow_and_update();
        if !current.any() {
            continue;
        }
        if !bucket_checked {
            match bucket(&js, &config).await {
                Ok(_) => bucket_checked = true,
                Err(err) => {
                    warn!(node = %config.node, error = %err, "members bucket unavailable");
                    continue;
                }
            }
        }
        let record = MemberRecord {
            room_node: current.room_node,
            gateway: current.gateway,
            ttl_ms: u64::try_from(config.ttl.as_millis()).unwrap_or(u64::MAX),
            wire: WIRE_VERSION,
            instance: config.instance.clone(),
            rooms: load.rooms().filter(|_| current.room_node).map(|f| f.value),
            connections: load
                .connections()
                .filter(|_| current.gateway)
                .map(|f| f.value),
        };
        let Ok(payload) = subjects::encode(&record) else {
            continue;
        };
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MESSAGE_TTL, ttl_header(config.ttl).as_str());
        let attempt = std::time::Instant::now();
        let put = async {
            js.publish_with_headers(subject.clone(), headers, payload.into())
                .await?
                .await?;
            Ok::<_, async_nats::Error>(())
        };
        match tokio::time::timeout(config.heartbeat_interval.max(Duration::from_secs(1)), put).await
        {
            Ok(Ok(())) => {
                if failing {
                    info!(node = %config.node, "heartbeats resumed");
                }
                failing = false;
                landed = Some(attempt);
                cut_off.send_if_modified(|since| since.take().is_some());
            }
            outcome => {
                if !failing {
                    let error = match outcome {
                        Ok(Err(err)) => err.to_string(),
                        _ => "timed out".into(),
                    };
                    warn!(node = %config.node, %error, "heartbeat failed");
                }
                failing = true;
                let since = landed.unwrap_or(attempt);
                cut_off.send_if_modified(|cut| {
                    let first = cut.is_none();
                    cut.get_or_insert(since);
                    first
                });
                // The bucket may be gone (a server without its store):
                // make sure it exists before the next beat.
                bucket_checked = false;
            }
        }
    }
}

/// The server's TTL resolution is a second; round up so a record never
/// expires sooner than configured.
fn ttl_header(ttl: Duration) -> String {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    format!("{}s", secs.max(1))
}

/// Removes this node's record at once (a graceful leave).
pub(crate) async fn leave(
    js: &jetstream::Context,
    config: &RegistryConfig,
) -> Result<(), async_nats::Error> {
    let store = bucket(js, config).await?;
    store.delete(config.node.as_str()).await?;
    Ok(())
}

struct Seen {
    record: MemberRecord,
    expires: Instant,
}

/// Watches the bucket and keeps `members` (and `metrics`) up to date, until
/// every receiver of `members` is gone.
pub(crate) async fn watch_members(
    js: jetstream::Context,
    config: RegistryConfig,
    members: watch::Sender<Members>,
    metrics: BusMetrics,
) {
    let sweep_every = (config.ttl / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut sweep = tokio::time::interval(sweep_every);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen: HashMap<NodeId, Seen> = HashMap::new();
    let mut watcher: Option<kv::Watch> = None;
    let mut retry_at = Instant::now();
    let mut warned_versions: Vec<NodeId> = Vec::new();
    loop {
        if watcher.is_none() && Instant::now() >= retry_at {
            match open_watch(&js, &config).await {
                Ok(w) => {
                    debug!(node = %config.node, "watching members");
                    watcher = Some(w);
                }
                Err(err) => {
                    debug!(node = %config.node, error = %err, "cannot watch members yet");
                    retry_at = Instant::now() + Duration::from_millis(250);
                }
            }
        }
        tokio::select! {
            entry = next_entry(&mut watcher) => match entry {
                Some(Ok(entry)) => {
                    trace!(key = %entry.key, op = ?entry.operation, "member entry");
                    let Ok(node) = NodeId::parse(entry.key.as_str()) else {
                        continue;
                    };
                    match entry.operation {
                        kv::Operation::Put => match subjects::decode::<MemberRecord>(&entry.value) {
                            Ok(record) => {
                                if record.wire != WIRE_VERSION && !warned_versions.contains(&node) {
                                    warn!(member = %node, wire = record.wire, ours = WIRE_VERSION,
                                        "member speaks another wire version");
                                    warned_versions.push(node.clone());
                                }
                                let expires = Instant::now() + Duration::from_millis(record.ttl_ms);
                                seen.insert(node, Seen { record, expires });
                            }
                            Err(err) => warn!(member = %node, error = %err, "bad member record"),
                        },
                        kv::Operation::Delete | kv::Operation::Purge => {
                            seen.remove(&node);
                        }
                    }
                }
                Some(Err(err)) => {
                    debug!(node = %config.node, error = %err, "members watch broke; watching again");
                    watcher = None;
                }
                None => {
                    watcher = None;
                }
            },
            _ = sweep.tick() => {
                let now = Instant::now();
                seen.retain(|_, s| s.expires > now);
            }
            _ = members.closed() => return,
        }
        let live = Members::from_records(seen.iter().map(|(n, s)| (n.clone(), s.record.clone())));
        members.send_if_modified(|current| {
            if *current == live {
                return false;
            }
            // New load figures are kept, but wake nobody: receivers act on
            // members coming and going, which figures do not change.
            let changed = !current.same_members(&live);
            if changed {
                debug!(node = %config.node, members = live.len(), "membership changed");
                metrics.membership_changes.inc();
                metrics.record_members(&live);
            }
            *current = live;
            changed
        });
    }
}

async fn open_watch(
    js: &jetstream::Context,
    config: &RegistryConfig,
) -> Result<kv::Watch, async_nats::Error> {
    let store = bucket(js, config).await?;
    // The last record of every key first, then every change.
    Ok(store.watch_with_history(">").await?)
}

async fn next_entry(
    watcher: &mut Option<kv::Watch>,
) -> Option<Result<kv::Entry, kv::WatcherError>> {
    match watcher {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(s: &str) -> NodeId {
        NodeId::parse(s).expect("id")
    }

    fn record(room_node: bool, gateway: bool) -> MemberRecord {
        MemberRecord {
            room_node,
            gateway,
            ttl_ms: 1000,
            wire: WIRE_VERSION,
            instance: String::new(),
            rooms: None,
            connections: None,
        }
    }

    #[test]
    fn members_by_role() {
        let members = Members::from_records([
            (node("g1"), record(false, true)),
            (node("r2"), record(true, false)),
            (node("both"), record(true, true)),
            (node("r1"), record(true, false)),
        ]);
        let rooms: Vec<_> = members.room_nodes().map(NodeId::as_str).collect();
        assert_eq!(rooms, ["both", "r1", "r2"]);
        let gateways: Vec<_> = members.gateways().map(NodeId::as_str).collect();
        assert_eq!(gateways, ["both", "g1"]);
        let room = RoomId::parse("x").expect("id");
        let owner = members.owner(&room).expect("an owner");
        assert!(members.get(owner).is_some_and(|r| r.room_node));
        assert_eq!(Members::default().owner(&room), None);
    }

    #[test]
    fn load_figures_alone_are_not_a_membership_change() {
        let before = Members::from_records([
            (node("g1"), record(false, true)),
            (node("r1"), record(true, false)),
        ]);
        let busier = Members::from_records([
            (
                node("g1"),
                MemberRecord {
                    connections: Some(40),
                    ..record(false, true)
                },
            ),
            (
                node("r1"),
                MemberRecord {
                    rooms: Some(3),
                    ..record(true, false)
                },
            ),
        ]);
        assert!(before.same_members(&busier));
        assert_ne!(before, busier);
        let (node_id, r1) = busier.iter().nth(1).expect("two members");
        assert_eq!((node_id.as_str(), r1.rooms), ("r1", Some(3)));
        let more = Members::from_records([
            (node("g1"), record(false, true)),
            (node("r1"), record(true, false)),
            (node("r2"), record(true, false)),
        ]);
        assert!(!before.same_members(&more));
        let fewer = Members::from_records([(node("r1"), record(true, false))]);
        assert!(!before.same_members(&fewer));
    }

    #[test]
    fn ttl_headers_round_up_to_seconds() {
        assert_eq!(ttl_header(Duration::from_millis(200)), "1s");
        assert_eq!(ttl_header(Duration::from_secs(2)), "2s");
        assert_eq!(ttl_header(Duration::from_millis(2500)), "3s");
    }
}
