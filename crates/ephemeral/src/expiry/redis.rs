//! Room expiry in Redis: one sorted set, `rooms:expiry` (after the key
//! prefix), room → deadline, kept on Redis's clock by small scripts.

use std::time::Duration;

use async_trait::async_trait;
use collab_protocol::RoomId;
use redis::Script;

use super::{DueRoom, RoomExpiry};
use crate::client::RedisClient;
use crate::error::EphemeralError;
use crate::metrics::Op;

pub struct RedisRoomExpiry {
    client: RedisClient,
    key: String,
    touch: Script,
    due: Script,
    forget: Script,
}

impl RedisRoomExpiry {
    pub fn new(client: RedisClient) -> Self {
        RedisRoomExpiry {
            key: client.key("rooms:expiry"),
            client,
            touch: Script::new(include_str!("touch.lua")),
            due: Script::new(include_str!("due.lua")),
            forget: Script::new(include_str!("forget.lua")),
        }
    }
}

#[async_trait]
impl RoomExpiry for RedisRoomExpiry {
    async fn touch(&self, room: &RoomId, ttl: Duration) -> Result<u64, EphemeralError> {
        let mut invocation = self.touch.prepare_invoke();
        invocation
            .key(&self.key)
            .arg(room.as_str())
            .arg(ttl.as_millis() as u64);
        self.client
            .call(Op::ExpiryTouch, |mut c| async move {
                invocation.invoke_async(&mut c).await
            })
            .await
    }

    async fn deadline(&self, room: &RoomId) -> Result<Option<u64>, EphemeralError> {
        let mut score = redis::cmd("ZSCORE");
        score.arg(&self.key).arg(room.as_str());
        let deadline: Option<f64> = self
            .client
            .call(Op::ExpiryDue, |mut c| async move {
                score.query_async(&mut c).await
            })
            .await?;
        Ok(deadline.map(|d| d as u64))
    }

    async fn due(&self, limit: usize) -> Result<Vec<DueRoom>, EphemeralError> {
        let mut invocation = self.due.prepare_invoke();
        invocation.key(&self.key).arg(limit);
        let rooms: Vec<(String, u64)> = self
            .client
            .call(Op::ExpiryDue, |mut c| async move {
                invocation.invoke_async(&mut c).await
            })
            .await?;
        Ok(rooms
            .into_iter()
            .filter_map(|(room, deadline_ms)| {
                Some(DueRoom {
                    room: RoomId::parse(room).ok()?,
                    deadline_ms,
                })
            })
            .collect())
    }

    async fn forget(
        &self,
        room: &RoomId,
        if_deadline: Option<u64>,
    ) -> Result<bool, EphemeralError> {
        let mut invocation = self.forget.prepare_invoke();
        invocation
            .key(&self.key)
            .arg(room.as_str())
            .arg(if_deadline.map(|d| d.to_string()).unwrap_or_default());
        let forgotten: i64 = self
            .client
            .call(Op::ExpiryForget, |mut c| async move {
                invocation.invoke_async(&mut c).await
            })
            .await?;
        Ok(forgotten == 1)
    }
}
