//! Settings of the room actors of one node.

use std::time::Duration;

use collab_protocol::{Limits, NodeId};

/// How room actors batch, snapshot, idle and push back.
#[derive(Debug, Clone)]
pub struct RoomConfig {
    /// This node: written with every batch, with the actor's ownership
    /// term for the room, as the fence.
    pub node: NodeId,
    pub limits: Limits,
    /// Most ops in one commit batch.
    pub max_batch: usize,
    /// Take a snapshot after this many ops since the last one…
    pub snapshot_every_ops: u64,
    /// …or this long after a change, whichever comes first.
    pub snapshot_every: Duration,
    /// Stop a room nobody has used for this long (after a snapshot).
    pub idle_after: Duration,
    /// How often a room checks its timers.
    pub tick: Duration,
    /// Recent ops kept in memory for `join` with `since`; older ones are
    /// read from the store.
    pub tail_len: usize,
    /// Requests waiting for one room above which new ones get
    /// `rate_limited` (mailboxes are unbounded, so inputs are bounded).
    pub mailbox_high_water: usize,
    /// How long a commit may take before its outcome counts as unknown.
    pub commit_timeout: Duration,
    /// How long a user gets to come back to their open strokes before they
    /// are ended for them: after the room loads, and after a connection
    /// that joined with `resume_strokes` drops.
    pub orphan_grace: Duration,
}

impl RoomConfig {
    pub fn new(node: NodeId) -> Self {
        RoomConfig {
            node,
            limits: Limits::default(),
            max_batch: 512,
            snapshot_every_ops: 2000,
            snapshot_every: Duration::from_secs(30),
            idle_after: Duration::from_secs(60),
            tick: Duration::from_secs(1),
            tail_len: 1024,
            mailbox_high_water: 10_000,
            commit_timeout: Duration::from_secs(10),
            orphan_grace: Duration::from_secs(10),
        }
    }
}
