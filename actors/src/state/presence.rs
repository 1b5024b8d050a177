//! Who is in the room, keyed by connection: a user with several tabs is
//! present once and leaves with the last of them.

use std::collections::{BTreeMap, HashMap};

use collab_protocol::envelope::ConnRef;
use collab_protocol::{UserId, UserInfo};

/// A change others must hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceChange {
    Joined(UserInfo),
    Left(UserInfo),
}

#[derive(Debug, Clone, Default)]
pub struct Presence {
    conns: HashMap<ConnRef, UserInfo>,
    /// Present users with their connection count, ordered by id so the
    /// presence list is deterministic.
    users: BTreeMap<UserId, (UserInfo, usize)>,
}

impl Presence {
    /// Adds a connection. A user's first connection is a `Joined`; a
    /// connection already present changes nothing.
    pub fn join(&mut self, conn: ConnRef, user: UserInfo) -> Option<PresenceChange> {
        if self.conns.contains_key(&conn) {
            return None;
        }
        self.conns.insert(conn, user.clone());
        let entry = self
            .users
            .entry(user.id.clone())
            .or_insert_with(|| (user.clone(), 0));
        entry.1 += 1;
        (entry.1 == 1).then_some(PresenceChange::Joined(user))
    }

    /// Removes a connection. A user's last connection is a `Left`.
    pub fn leave(&mut self, conn: &ConnRef) -> Option<PresenceChange> {
        let user = self.conns.remove(conn)?;
        let entry = self.users.get_mut(&user.id)?;
        entry.1 -= 1;
        if entry.1 == 0 {
            self.users.remove(&user.id);
            Some(PresenceChange::Left(user))
        } else {
            None
        }
    }

    /// Removes every connection of a gateway (declared dead).
    pub fn leave_gateway(&mut self, gateway: &str) -> Vec<PresenceChange> {
        let mut gone: Vec<ConnRef> = self
            .conns
            .keys()
            .filter(|k| k.gateway == gateway)
            .cloned()
            .collect();
        gone.sort();
        gone.iter().filter_map(|k| self.leave(k)).collect()
    }

    pub fn contains(&self, conn: &ConnRef) -> bool {
        self.conns.contains_key(conn)
    }

    /// The user of a present connection.
    pub fn user_of(&self, conn: &ConnRef) -> Option<&UserId> {
        self.conns.get(conn).map(|info| &info.id)
    }

    pub fn is_present(&self, user: &UserId) -> bool {
        self.users.contains_key(user)
    }

    /// Every present user once, by id.
    pub fn list(&self) -> Vec<UserInfo> {
        self.users.values().map(|(info, _)| info.clone()).collect()
    }

    /// Every connection with its user, in no particular order.
    pub fn connections(&self) -> impl Iterator<Item = (&ConnRef, &UserInfo)> {
        self.conns.iter()
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }
}
