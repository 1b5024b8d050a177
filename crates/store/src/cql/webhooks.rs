//! The webhook dispatcher's cursors and marks in CQL (see
//! [`WebhookLog`]): `webhook_cursors` is partitioned by room (a room's
//! cursors are one read), `webhook_marks` is one partition (listing every
//! mark is one read; see the schema for why it stays small).

use async_trait::async_trait;
use collab_protocol::{RoomId, Seq};
use futures_util::TryStreamExt;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use super::{CqlStore, corrupt, from_cql, to_cql, unavailable};
use crate::{StoreError, StoreResult, WebhookLog};

/// The one partition of `webhook_marks`.
const MARKS_SHARD: i32 = 0;

pub(super) struct WebhookStatements {
    select_cursors: PreparedStatement,
    upsert_cursor: PreparedStatement,
    insert_mark: PreparedStatement,
    delete_mark: PreparedStatement,
    select_marks: PreparedStatement,
}

impl WebhookStatements {
    pub(super) async fn prepare(session: &Session, keyspace: &str) -> StoreResult<Self> {
        let prepare = |cql: &'static str| async move {
            let mut statement = session
                .prepare(cql.replace("{ks}", keyspace))
                .await
                .map_err(|e| unavailable("prepare statement", e))?;
            // Every one of them may be repeated: they set or remove a row.
            statement.set_is_idempotent(true);
            Ok::<_, StoreError>(statement)
        };
        Ok(WebhookStatements {
            select_cursors: prepare(
                "SELECT endpoint, seq FROM {ks}.webhook_cursors WHERE room = ?",
            )
            .await?,
            upsert_cursor: prepare(
                "INSERT INTO {ks}.webhook_cursors (room, endpoint, seq) VALUES (?, ?, ?)",
            )
            .await?,
            insert_mark: prepare(
                "INSERT INTO {ks}.webhook_marks (shard, room, mark) VALUES (?, ?, ?)",
            )
            .await?,
            delete_mark: prepare(
                "DELETE FROM {ks}.webhook_marks WHERE shard = ? AND room = ? AND mark = ?",
            )
            .await?,
            select_marks: prepare("SELECT room, mark FROM {ks}.webhook_marks WHERE shard = ?")
                .await?,
        })
    }
}

#[async_trait]
impl WebhookLog for CqlStore {
    async fn webhook_cursors(&self, room: &RoomId) -> StoreResult<Vec<(String, Seq)>> {
        let rows: Vec<(String, i64)> = self
            .session
            .execute_iter(self.webhooks.select_cursors.clone(), (room.as_str(),))
            .await
            .map_err(|e| unavailable("read webhook cursors", e))?
            .rows_stream::<(String, i64)>()
            .map_err(|e| corrupt("webhook cursors", e))?
            .try_collect()
            .await
            .map_err(|e| unavailable("read webhook cursors", e))?;
        rows.into_iter()
            .map(|(endpoint, seq)| Ok((endpoint, Seq(from_cql(seq)?))))
            .collect()
    }

    async fn set_webhook_cursor(&self, endpoint: &str, room: &RoomId, seq: Seq) -> StoreResult<()> {
        self.session
            .execute_unpaged(
                &self.webhooks.upsert_cursor,
                (room.as_str(), endpoint, to_cql(seq.get())),
            )
            .await
            .map_err(|e| unavailable("write webhook cursor", e))?;
        Ok(())
    }

    async fn add_webhook_mark(&self, room: &RoomId, mark: &str) -> StoreResult<()> {
        self.session
            .execute_unpaged(
                &self.webhooks.insert_mark,
                (MARKS_SHARD, room.as_str(), mark),
            )
            .await
            .map_err(|e| unavailable("write webhook mark", e))?;
        Ok(())
    }

    async fn remove_webhook_mark(&self, room: &RoomId, mark: &str) -> StoreResult<()> {
        self.session
            .execute_unpaged(
                &self.webhooks.delete_mark,
                (MARKS_SHARD, room.as_str(), mark),
            )
            .await
            .map_err(|e| unavailable("remove webhook mark", e))?;
        Ok(())
    }

    async fn webhook_marks(&self) -> StoreResult<Vec<(RoomId, String)>> {
        let rows: Vec<(String, String)> = self
            .session
            .execute_iter(self.webhooks.select_marks.clone(), (MARKS_SHARD,))
            .await
            .map_err(|e| unavailable("list webhook marks", e))?
            .rows_stream::<(String, String)>()
            .map_err(|e| corrupt("webhook marks", e))?
            .try_collect()
            .await
            .map_err(|e| unavailable("list webhook marks", e))?;
        rows.into_iter()
            .map(|(room, mark)| {
                let room = RoomId::parse(room).map_err(|e| corrupt("webhook mark's room", e))?;
                Ok((room, mark))
            })
            .collect()
    }
}
