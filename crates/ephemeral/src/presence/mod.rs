//! Who is online: which users have connections, on which gateways, in which
//! rooms.
//!
//! A gateway counts its own connections locally ([`Presence::connected`],
//! [`Presence::joined`], … are synchronous and cheap). [`MemoryPresence`]
//! answers queries from that count alone; [`RedisPresence`] writes it to
//! Redis as keys that expire unless the gateway renews them, so a query on
//! any gateway sees every gateway's users, and a gateway that dies takes
//! its users with it once its keys expire.

mod memory;
mod redis;

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;
use collab_protocol::{RoomId, UserId};

pub use memory::MemoryPresence;
pub use redis::RedisPresence;

use crate::error::EphemeralError;
use crate::lock;

/// Where a user is online.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserPresence {
    /// Open connections, on every gateway.
    pub connections: u32,
    /// The gateways that hold them, sorted.
    pub gateways: Vec<String>,
    /// The rooms joined on any of them, sorted.
    pub rooms: Vec<RoomId>,
}

impl UserPresence {
    pub fn is_online(&self) -> bool {
        self.connections > 0
    }
}

/// This gateway's connections, and what every gateway reports.
#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// A connection of `user` opened on this gateway.
    fn connected(&self, user: &UserId);
    /// A connection of `user` closed (after `left` for the rooms it had
    /// joined; its last connection's close forgets its rooms anyway).
    fn disconnected(&self, user: &UserId);
    /// A connection of `user` joined `room`.
    fn joined(&self, user: &UserId, room: &RoomId);
    /// A connection of `user` left `room`.
    fn left(&self, user: &UserId, room: &RoomId);

    /// Where `user` is online, across the cluster.
    async fn user(&self, user: &UserId) -> Result<UserPresence, EphemeralError>;

    /// Open connections of `user` on the other gateways, as they last wrote
    /// them (a fraction of a second ago, or a TTL for a gateway that died):
    /// with this gateway's own count, the user's connections across the
    /// cluster. 0 in one process.
    async fn connections_elsewhere(&self, user: &UserId) -> Result<u32, EphemeralError>;

    /// Writes every change now instead of at the next heartbeat (at
    /// shutdown, once the sockets are closed).
    async fn flush(&self) -> Result<(), EphemeralError>;
}

/// One user's connections on this gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LocalUser {
    pub connections: u32,
    /// Room → this user's connections in it.
    pub rooms: HashMap<RoomId, u32>,
}

impl LocalUser {
    pub(crate) fn sorted_rooms(&self) -> Vec<RoomId> {
        let mut rooms: Vec<RoomId> = self.rooms.keys().cloned().collect();
        rooms.sort();
        rooms
    }
}

/// The count of this gateway's connections, and (when they are written out
/// somewhere) which users changed since they last were.
pub(crate) struct LocalPresence {
    inner: Mutex<Local>,
}

struct Local {
    users: HashMap<UserId, LocalUser>,
    track_changes: bool,
    changed: HashSet<UserId>,
}

impl Local {
    fn note_change(&mut self, user: &UserId) {
        if self.track_changes {
            self.changed.insert(user.clone());
        }
    }
}

impl LocalPresence {
    pub(crate) fn new(track_changes: bool) -> Self {
        LocalPresence {
            inner: Mutex::new(Local {
                users: HashMap::new(),
                track_changes,
                changed: HashSet::new(),
            }),
        }
    }

    pub(crate) fn connected(&self, user: &UserId) {
        let mut local = lock(&self.inner);
        local.users.entry(user.clone()).or_default().connections += 1;
        local.note_change(user);
    }

    pub(crate) fn disconnected(&self, user: &UserId) {
        let mut local = lock(&self.inner);
        let Some(entry) = local.users.get_mut(user) else {
            return;
        };
        entry.connections = entry.connections.saturating_sub(1);
        if entry.connections == 0 {
            local.users.remove(user);
        }
        local.note_change(user);
    }

    pub(crate) fn joined(&self, user: &UserId, room: &RoomId) {
        let mut local = lock(&self.inner);
        let Some(entry) = local.users.get_mut(user) else {
            return;
        };
        *entry.rooms.entry(room.clone()).or_default() += 1;
        local.note_change(user);
    }

    pub(crate) fn left(&self, user: &UserId, room: &RoomId) {
        let mut local = lock(&self.inner);
        let Some(entry) = local.users.get_mut(user) else {
            return;
        };
        if let Some(count) = entry.rooms.get_mut(room) {
            *count -= 1;
            if *count == 0 {
                entry.rooms.remove(room);
            }
        }
        local.note_change(user);
    }

    pub(crate) fn get(&self, user: &UserId) -> Option<LocalUser> {
        lock(&self.inner).users.get(user).cloned()
    }

    /// The users changed since the last call, with their state now (`None`:
    /// no connection left).
    pub(crate) fn take_changed(&self) -> Vec<(UserId, Option<LocalUser>)> {
        let mut local = lock(&self.inner);
        let changed = std::mem::take(&mut local.changed);
        changed
            .into_iter()
            .map(|user| {
                let state = local.users.get(&user).cloned();
                (user, state)
            })
            .collect()
    }

    /// Puts users back among the changed ones (their write failed).
    pub(crate) fn mark_changed(&self, users: impl IntoIterator<Item = UserId>) {
        lock(&self.inner).changed.extend(users);
    }

    /// Every user with a connection here, and the changed set emptied: a
    /// full write covers every change (the users that left included, which
    /// are returned with `None`).
    pub(crate) fn take_all(&self) -> Vec<(UserId, Option<LocalUser>)> {
        let mut local = lock(&self.inner);
        let changed = std::mem::take(&mut local.changed);
        let gone = changed
            .into_iter()
            .filter(|user| !local.users.contains_key(user))
            .map(|user| (user, None));
        let present = local
            .users
            .iter()
            .map(|(user, state)| (user.clone(), Some(state.clone())));
        present.chain(gone).collect()
    }
}
