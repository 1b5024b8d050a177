//! Presence in one process: the local count is the whole truth.

use std::net::IpAddr;

use async_trait::async_trait;
use collab_protocol::{RoomId, UserId};

use super::{ConnectionsOf, LocalPresence, Presence, UserPresence};
use crate::error::EphemeralError;

pub struct MemoryPresence {
    gateway: String,
    local: LocalPresence,
}

impl MemoryPresence {
    pub fn new(gateway: &str) -> Self {
        MemoryPresence {
            gateway: gateway.to_owned(),
            local: LocalPresence::new(false),
        }
    }
}

#[async_trait]
impl Presence for MemoryPresence {
    fn connected(&self, user: &UserId, address: Option<IpAddr>) {
        self.local.connected(user, address);
    }

    fn disconnected(&self, user: &UserId, address: Option<IpAddr>) {
        self.local.disconnected(user, address);
    }

    fn joined(&self, user: &UserId, room: &RoomId) {
        self.local.joined(user, room);
    }

    fn left(&self, user: &UserId, room: &RoomId) {
        self.local.left(user, room);
    }

    async fn user(&self, user: &UserId) -> Result<UserPresence, EphemeralError> {
        Ok(match self.local.get(user) {
            Some(state) => UserPresence {
                connections: state.connections,
                gateways: vec![self.gateway.clone()],
                rooms: state.sorted_rooms(),
            },
            None => UserPresence::default(),
        })
    }

    async fn connections_elsewhere(&self, _of: ConnectionsOf<'_>) -> Result<u32, EphemeralError> {
        Ok(0)
    }

    async fn flush(&self) -> Result<(), EphemeralError> {
        Ok(())
    }
}
