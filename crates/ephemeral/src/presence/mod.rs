//! Who is online: which users have connections, on which gateways, in which
//! rooms; and how many connections each source address has open, for the
//! gateways' per-address limit.
//!
//! A gateway counts its own connections locally ([`Presence::connected`],
//! [`Presence::joined`], … are synchronous and cheap), by user and by
//! address. [`MemoryPresence`] answers queries from that count alone;
//! [`RedisPresence`] writes it to Redis as keys that expire unless the
//! gateway renews them, so a query on any gateway sees every gateway's
//! connections, and a gateway that dies takes its own with it once its
//! keys expire.

mod memory;
mod redis;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
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

/// Whose open connections are counted: a user's, or those from one
/// source address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionsOf<'a> {
    User(&'a UserId),
    Address(IpAddr),
}

/// This gateway's connections, and what every gateway reports.
#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// A connection of `user` opened on this gateway; from `address`, if
    /// addresses are counted (`None`: they are not, and none is written
    /// anywhere).
    fn connected(&self, user: &UserId, address: Option<IpAddr>);
    /// A connection of `user` (from `address`, as it was given to
    /// `connected`) closed (after `left` for the rooms it had joined; its
    /// last connection's close forgets its rooms anyway).
    fn disconnected(&self, user: &UserId, address: Option<IpAddr>);
    /// A connection of `user` joined `room`.
    fn joined(&self, user: &UserId, room: &RoomId);
    /// A connection of `user` left `room`.
    fn left(&self, user: &UserId, room: &RoomId);

    /// Where `user` is online, across the cluster.
    async fn user(&self, user: &UserId) -> Result<UserPresence, EphemeralError>;

    /// Open connections of a user or an address on the other gateways, as
    /// they last wrote them (a fraction of a second ago, or a TTL for a
    /// gateway that died): with this gateway's own count, its connections
    /// across the cluster. 0 in one process.
    async fn connections_elsewhere(&self, of: ConnectionsOf<'_>) -> Result<u32, EphemeralError>;

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

/// What changed of one user or address on this gateway, with its state
/// now, to be written out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// `None`: no connection left.
    User(UserId, Option<LocalUser>),
    /// Its connections here (0: none left).
    Address(IpAddr, u32),
}

/// The count of this gateway's connections, and (when they are written out
/// somewhere) which users and addresses changed since they last were.
pub(crate) struct LocalPresence {
    inner: Mutex<Local>,
}

struct Local {
    users: HashMap<UserId, LocalUser>,
    addresses: HashMap<IpAddr, u32>,
    track_changes: bool,
    changed: HashSet<UserId>,
    changed_addresses: HashSet<IpAddr>,
}

impl Local {
    fn note_change(&mut self, user: &UserId) {
        if self.track_changes {
            self.changed.insert(user.clone());
        }
    }

    fn note_address_change(&mut self, address: IpAddr) {
        if self.track_changes {
            self.changed_addresses.insert(address);
        }
    }

    fn user_change(&self, user: UserId) -> Change {
        let state = self.users.get(&user).cloned();
        Change::User(user, state)
    }

    fn address_change(&self, address: IpAddr) -> Change {
        let connections = self.addresses.get(&address).copied().unwrap_or(0);
        Change::Address(address, connections)
    }
}

impl LocalPresence {
    pub(crate) fn new(track_changes: bool) -> Self {
        LocalPresence {
            inner: Mutex::new(Local {
                users: HashMap::new(),
                addresses: HashMap::new(),
                track_changes,
                changed: HashSet::new(),
                changed_addresses: HashSet::new(),
            }),
        }
    }

    pub(crate) fn connected(&self, user: &UserId, address: Option<IpAddr>) {
        let mut local = lock(&self.inner);
        local.users.entry(user.clone()).or_default().connections += 1;
        local.note_change(user);
        if let Some(address) = address {
            *local.addresses.entry(address).or_default() += 1;
            local.note_address_change(address);
        }
    }

    pub(crate) fn disconnected(&self, user: &UserId, address: Option<IpAddr>) {
        let mut local = lock(&self.inner);
        if let Some(entry) = local.users.get_mut(user) {
            entry.connections = entry.connections.saturating_sub(1);
            if entry.connections == 0 {
                local.users.remove(user);
            }
            local.note_change(user);
        }
        let Some(address) = address else {
            return;
        };
        if let Some(count) = local.addresses.get_mut(&address) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                local.addresses.remove(&address);
            }
            local.note_address_change(address);
        }
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

    /// The users and addresses changed since the last call, with their
    /// state now.
    pub(crate) fn take_changed(&self) -> Vec<Change> {
        let mut local = lock(&self.inner);
        let users = std::mem::take(&mut local.changed);
        let addresses = std::mem::take(&mut local.changed_addresses);
        let mut changes: Vec<Change> = users
            .into_iter()
            .map(|user| local.user_change(user))
            .collect();
        changes.extend(addresses.into_iter().map(|a| local.address_change(a)));
        changes
    }

    /// Puts users and addresses back among the changed ones (their write
    /// failed).
    pub(crate) fn mark_changed<'a>(&self, changes: impl IntoIterator<Item = &'a Change>) {
        let mut local = lock(&self.inner);
        for change in changes {
            match change {
                Change::User(user, _) => {
                    local.changed.insert(user.clone());
                }
                Change::Address(address, _) => {
                    local.changed_addresses.insert(*address);
                }
            }
        }
    }

    /// Every user and address with a connection here, and the changed sets
    /// emptied: a full write covers every change (those that left
    /// included, which are returned with no connection).
    pub(crate) fn take_all(&self) -> Vec<Change> {
        let mut local = lock(&self.inner);
        let mut everyone: HashSet<UserId> = std::mem::take(&mut local.changed);
        everyone.extend(local.users.keys().cloned());
        let mut addresses: HashSet<IpAddr> = std::mem::take(&mut local.changed_addresses);
        addresses.extend(local.addresses.keys().copied());
        let mut changes: Vec<Change> = everyone
            .into_iter()
            .map(|user| local.user_change(user))
            .collect();
        changes.extend(addresses.into_iter().map(|a| local.address_change(a)));
        changes
    }
}
