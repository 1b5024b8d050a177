//! Presence in Redis: each gateway's users, and its connections by source
//! address, as keys that expire unless the gateway renews them.
//!
//! Keys (after the key prefix), all with the presence TTL:
//! - `online:users:{user}`: a set of the gateways where `user` has
//!   connections;
//! - `online:conns:{len}:{user}:{gateway}`: `"{connections} {room},{room}…"`,
//!   the user's connections on that gateway (the user id's length first
//!   keeps the key unambiguous whatever the ids hold);
//! - `online:addresses:{address}` and
//!   `online:address-conns:{len}:{address}:{gateway}`: the same for the
//!   connections from one source IP address (`"{connections} "`, no
//!   rooms), for the per-address socket limit (written only when the
//!   gateway gives addresses).
//!
//! A gateway writes the users and addresses that changed every 100 ms, and
//! all of them every third of the TTL and after each reconnect (Redis may
//! have restarted empty). A killed gateway stops renewing, and its
//! connections are gone from every query once their keys expire. While
//! Redis is away nothing is written: presence is stale, for at most the
//! TTL.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use collab_protocol::{RoomId, UserId};
use tokio::time::{Instant, MissedTickBehavior};

use super::{Change, ConnectionsOf, LocalPresence, Presence, UserPresence};
use crate::client::RedisClient;
use crate::error::EphemeralError;
use crate::metrics::Op;
use crate::task::TaskGuard;

/// How often changes are written.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Users and addresses written in one pipeline.
const CHANGES_PER_PIPELINE: usize = 500;

pub struct RedisPresence {
    shared: Arc<Shared>,
    _heartbeat: TaskGuard,
}

struct Shared {
    client: RedisClient,
    gateway: String,
    ttl: Duration,
    local: LocalPresence,
    /// Held while changes are taken and written, so that a flush returns
    /// only once the heartbeat's write in flight has landed too.
    writing: tokio::sync::Mutex<()>,
}

impl RedisPresence {
    /// `gateway` names this gateway's entries; `ttl` is how long they live
    /// without a renewal.
    pub fn new(client: RedisClient, gateway: &str, ttl: Duration) -> Self {
        let shared = Arc::new(Shared {
            client,
            gateway: gateway.to_owned(),
            ttl,
            local: LocalPresence::new(true),
            writing: tokio::sync::Mutex::new(()),
        });
        let heartbeat = TaskGuard::spawn(heartbeat(shared.clone()));
        RedisPresence {
            shared,
            _heartbeat: heartbeat,
        }
    }
}

#[async_trait]
impl Presence for RedisPresence {
    fn connected(&self, user: &UserId, address: Option<IpAddr>) {
        self.shared.local.connected(user, address);
    }

    fn disconnected(&self, user: &UserId, address: Option<IpAddr>) {
        self.shared.local.disconnected(user, address);
    }

    fn joined(&self, user: &UserId, room: &RoomId) {
        self.shared.local.joined(user, room);
    }

    fn left(&self, user: &UserId, room: &RoomId) {
        self.shared.local.left(user, room);
    }

    async fn user(&self, user: &UserId) -> Result<UserPresence, EphemeralError> {
        let mut presence = UserPresence::default();
        for (gateway, connections, rooms) in self.shared.entries(ConnectionsOf::User(user)).await? {
            presence.connections += connections;
            presence.gateways.push(gateway);
            presence.rooms.extend(rooms);
        }
        presence.gateways.sort();
        presence.rooms.sort();
        presence.rooms.dedup();
        Ok(presence)
    }

    async fn connections_elsewhere(&self, of: ConnectionsOf<'_>) -> Result<u32, EphemeralError> {
        let entries = self.shared.entries(of).await?;
        Ok(entries
            .into_iter()
            .filter(|(gateway, _, _)| *gateway != self.shared.gateway)
            .map(|(_, connections, _)| connections)
            .sum())
    }

    async fn flush(&self) -> Result<(), EphemeralError> {
        let shared = &*self.shared;
        let _writing = shared.writing.lock().await;
        shared.write(shared.local.take_changed()).await
    }
}

impl Shared {
    /// Every gateway's entry for a user or address: the gateway, its
    /// connections and their rooms (none for an address). An entry that
    /// expired is left out.
    async fn entries(
        &self,
        of: ConnectionsOf<'_>,
    ) -> Result<Vec<(String, u32, Vec<RoomId>)>, EphemeralError> {
        let shared = self;
        let index = shared.index_key(of);
        let gateways: Vec<String> = shared
            .client
            .call(Op::PresenceQuery, |mut c| async move {
                redis::cmd("SMEMBERS").arg(index).query_async(&mut c).await
            })
            .await?;
        if gateways.is_empty() {
            return Ok(Vec::new());
        }
        let mut get = redis::cmd("MGET");
        for gateway in &gateways {
            get.arg(shared.detail_key(of, gateway));
        }
        let details: Vec<Option<String>> = shared
            .client
            .call(Op::PresenceQuery, |mut c| async move {
                get.query_async(&mut c).await
            })
            .await?;

        Ok(gateways
            .into_iter()
            .zip(details)
            // No detail: that gateway's entry expired (or was just removed).
            .filter_map(|(gateway, detail)| {
                let (connections, rooms) = detail.as_deref().and_then(parse_detail)?;
                Some((gateway, connections, rooms))
            })
            .collect())
    }
}

// === impl Shared ===

impl Shared {
    /// The set of the gateways where a user or address has connections.
    fn index_key(&self, of: ConnectionsOf<'_>) -> String {
        match of {
            ConnectionsOf::User(user) => self.client.key(&format!("online:users:{user}")),
            ConnectionsOf::Address(address) => {
                self.client.key(&format!("online:addresses:{address}"))
            }
        }
    }

    /// A user's or address's connections on `gateway`.
    fn detail_key(&self, of: ConnectionsOf<'_>, gateway: &str) -> String {
        let (kind, id) = match of {
            ConnectionsOf::User(user) => ("conns", user.as_str().to_owned()),
            ConnectionsOf::Address(address) => ("address-conns", address.to_string()),
        };
        self.client
            .key(&format!("online:{kind}:{}:{id}:{gateway}", id.len()))
    }

    /// Writes `changes`, the state of users and addresses on this gateway.
    /// What could not be written is marked changed again.
    async fn write(&self, changes: Vec<Change>) -> Result<(), EphemeralError> {
        let ttl_ms = self.ttl.as_millis().max(1) as u64;
        for (i, chunk) in changes.chunks(CHANGES_PER_PIPELINE).enumerate() {
            let mut pipe = redis::pipe();
            for change in chunk {
                let (of, value) = match change {
                    Change::User(user, state) => (
                        ConnectionsOf::User(user),
                        state.as_ref().map(|state| {
                            let rooms: Vec<String> =
                                state.sorted_rooms().into_iter().map(String::from).collect();
                            format!("{} {}", state.connections, rooms.join(","))
                        }),
                    ),
                    Change::Address(address, connections) => (
                        ConnectionsOf::Address(*address),
                        (*connections > 0).then(|| format!("{connections} ")),
                    ),
                };
                let index = self.index_key(of);
                let detail = self.detail_key(of, &self.gateway);
                match value {
                    Some(value) => {
                        pipe.cmd("SET")
                            .arg(detail)
                            .arg(value)
                            .arg("PX")
                            .arg(ttl_ms)
                            .ignore()
                            .cmd("SADD")
                            .arg(&index)
                            .arg(&self.gateway)
                            .ignore()
                            .cmd("PEXPIRE")
                            .arg(&index)
                            .arg(ttl_ms)
                            .ignore();
                    }
                    None => {
                        pipe.cmd("DEL")
                            .arg(detail)
                            .ignore()
                            .cmd("SREM")
                            .arg(&index)
                            .arg(&self.gateway)
                            .ignore();
                    }
                }
            }
            let written = self
                .client
                .call(Op::PresenceRenew, |mut c| async move {
                    pipe.query_async::<()>(&mut c).await
                })
                .await;
            if let Err(e) = written {
                self.local
                    .mark_changed(&changes[i * CHANGES_PER_PIPELINE..]);
                return Err(e);
            }
        }
        Ok(())
    }
}

/// `"{connections} {room},{room}…"`.
fn parse_detail(detail: &str) -> Option<(u32, Vec<RoomId>)> {
    let (connections, rooms) = detail.split_once(' ')?;
    let rooms = rooms
        .split(',')
        .filter(|room| !room.is_empty())
        .filter_map(|room| RoomId::parse(room).ok())
        .collect();
    Some((connections.parse().ok()?, rooms))
}

/// Writes changes every [`FLUSH_EVERY`], everything every third of the TTL
/// and after each reconnect.
async fn heartbeat(shared: Arc<Shared>) {
    let mut connected = shared.client.connected();
    let renew_every = shared.ttl / 3;
    let mut next_renewal = Instant::now();
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Instant::now();
        if connected.has_changed().unwrap_or(false) {
            connected.borrow_and_update();
            next_renewal = now;
        }
        if !shared.client.is_up() {
            continue;
        }
        let _writing = shared.writing.lock().await;
        let changes = if now >= next_renewal {
            next_renewal = now + renew_every;
            shared.local.take_all()
        } else {
            shared.local.take_changed()
        };
        if !changes.is_empty() {
            // A failure is logged by the client and retried next tick.
            let _ = shared.write(changes).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_parse() {
        let room = |id: &str| RoomId::parse(id).expect("room");
        assert_eq!(
            parse_detail("2 a,b-c"),
            Some((2, vec![room("a"), room("b-c")]))
        );
        assert_eq!(parse_detail("1 "), Some((1, vec![])));
        assert_eq!(parse_detail("x a"), None);
        assert_eq!(parse_detail(""), None);
    }
}
