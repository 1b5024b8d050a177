//! [`CqlStore`]: the [`Store`] on ScyllaDB or Apache Cassandra, shared by
//! every node of a cluster.
//!
//! - **Fencing.** An append is one conditional write per op-log partition:
//!   `INSERT … IF NOT EXISTS` for every op row, in one batch, so it writes
//!   nothing if any of its seqs exists and reports [`StoreError::Conflict`].
//!   A write whose outcome is unknown (a timeout, a lost connection) is
//!   resolved by a read at serial consistency, which completes or fences
//!   any Paxos round still in progress, before the append returns: `Ok`
//!   only if the rows are there with this writer's term and node.
//! - **Layout.** See [`schema`]: the op log is bucketed so partitions stay
//!   bounded; an append that crosses a bucket boundary, or is larger than
//!   [`CqlOptions::max_batch_bytes`], is cut into consecutive conditional
//!   writes. If one of them fails, a prefix of the batch may be stored;
//!   callers treat every failed append as "outcome unknown" and re-read the
//!   log, so a stored prefix is simply part of the history.
//! - **Deletion.** A tombstone at the seq after the head, written through
//!   the same conditional write as an append, then the room marked deleted,
//!   then its rows below the tombstone removed; each step idempotent, so a
//!   deletion cut short is finished by whoever meets it next (see
//!   [`Store::delete_room`] and docs/cql-store.md).
//! - **Statements.** Prepared once at start-up, with deliberate consistency,
//!   idempotence and timeouts: reads and unconditional writes are
//!   idempotent (the driver may retry them); the conditional append is not
//!   (it is resolved by the serial read instead).

mod options;
pub mod schema;
mod webhooks;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use collab_protocol::{Epoch, NodeId, OpEvent, OpKind, RoomId, RoomKind, Seq, UserId};
use futures_util::TryStreamExt;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::Consistency;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, Row};

pub use options::{CqlOptions, Replication};
use schema::OPS_PER_BUCKET;

use crate::memory::members_to_index;
use crate::memory::updated_record;
use crate::{
    Deletion, LoggedOp, RoomCatalog, RoomRecord, RoomsPage, Snapshot, Store, StoreError,
    StoreReader, StoreResult, Writer, check_batch,
};

/// Bytes of snapshot data per `room_snapshots` row: well under any
/// server's mutation size limit.
const SNAPSHOT_CHUNK: usize = 256 * 1024;
/// Most rows one log read asks for.
const READ_PAGE: usize = 1000;

/// The [`Store`] on a CQL cluster. Cheap to share behind an `Arc`; the
/// driver reconnects by itself after an outage.
pub struct CqlStore {
    session: Session,
    statements: Statements,
    webhooks: webhooks::WebhookStatements,
    options: CqlOptions,
    resolved_appends: AtomicU64,
    /// Bounds the conditional writes in flight (see
    /// [`CqlOptions::max_in_flight`]).
    in_flight: tokio::sync::Semaphore,
}

struct Statements {
    insert_op: PreparedStatement,
    insert_tombstone: PreparedStatement,
    select_log_row: PreparedStatement,
    insert_kind: PreparedStatement,
    resolve_ops: PreparedStatement,
    read_log: PreparedStatement,
    last_in_bucket: PreparedStatement,
    history_log: PreparedStatement,
    history_kind: PreparedStatement,
    ops_by_seq: PreparedStatement,
    insert_room: PreparedStatement,
    recreate_room: PreparedStatement,
    select_room: PreparedStatement,
    select_room_serial: PreparedStatement,
    select_floor: PreparedStatement,
    mark_deleted: PreparedStatement,
    mark_purged: PreparedStatement,
    insert_room_by_user: PreparedStatement,
    delete_room_by_user: PreparedStatement,
    delete_bucket: PreparedStatement,
    delete_lane_below: PreparedStatement,
    select_rooms_by_user: PreparedStatement,
    select_rooms_by_user_after: PreparedStatement,
    update_room: PreparedStatement,
    insert_snapshot_chunk: PreparedStatement,
    select_snapshot_index: PreparedStatement,
    select_snapshot_chunk: PreparedStatement,
    delete_older_snapshots: PreparedStatement,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{what}: {e}"))
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

/// Seqs and counts are `u64` in collab and `bigint` (`i64`) in CQL; no
/// real log gets near the sign bit, so saturating is only a guard.
fn to_cql(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn from_cql(n: i64) -> StoreResult<u64> {
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("negative number {n}")))
}

fn bucket_of(seq: u64) -> u64 {
    (seq.max(1) - 1) / OPS_PER_BUCKET
}

/// The last seq bucket `bucket` can hold.
fn bucket_end(bucket: u64) -> u64 {
    (bucket + 1) * OPS_PER_BUCKET
}

fn kind_lane(kind: OpKind) -> String {
    format!("kind:{}", kind.as_str())
}

fn limit_of(n: usize) -> i32 {
    i32::try_from(n.min(READ_PAGE)).unwrap_or(i32::MAX)
}

impl CqlStore {
    /// Connects, creates the keyspace if missing, applies migrations and
    /// prepares every statement. Retries the first connection until
    /// `options.connect_timeout`.
    pub async fn connect(options: CqlOptions) -> StoreResult<CqlStore> {
        let profile = ExecutionProfile::builder()
            .consistency(options.consistency)
            .serial_consistency(Some(options.serial_consistency))
            .request_timeout(Some(options.request_timeout))
            .build();
        let deadline = Instant::now() + options.connect_timeout;
        let session = loop {
            let attempt = SessionBuilder::new()
                .known_nodes(&options.nodes)
                .connection_timeout(options.request_timeout)
                .default_execution_profile_handle(profile.clone().into_handle())
                .build()
                .await;
            match attempt {
                Ok(session) => break session,
                Err(e) if Instant::now() >= deadline => {
                    return Err(unavailable(&format!("connect to {options}"), e));
                }
                Err(e) => {
                    tracing::warn!(store = %options, error = %e, "CQL cluster not reachable yet; retrying");
                    // Poll interval of the start-up retry loop.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        schema::migrate(&session, &options.keyspace, &options.replication).await?;
        let statements = Statements::prepare(&session, &options).await?;
        let webhooks = webhooks::WebhookStatements::prepare(&session, &options.keyspace).await?;
        tracing::info!(store = %options, "CQL store ready");
        Ok(CqlStore {
            session,
            statements,
            webhooks,
            resolved_appends: AtomicU64::new(0),
            in_flight: tokio::sync::Semaphore::new(options.max_in_flight.max(1)),
            options,
        })
    }

    pub fn options(&self) -> &CqlOptions {
        &self.options
    }

    /// How many conditional writes were not plainly applied (a conflict,
    /// or an unknown outcome) and were settled by a serial read.
    pub fn resolved_appends(&self) -> u64 {
        self.resolved_appends.load(Ordering::Relaxed)
    }

    /// The newest op's seq in `bucket`, if the bucket has any.
    async fn last_in_bucket(&self, room: &RoomId, bucket: u64) -> StoreResult<Option<u64>> {
        let rows = self
            .session
            .execute_unpaged(
                &self.statements.last_in_bucket,
                (room.as_str(), to_cql(bucket)),
            )
            .await
            .map_err(|e| unavailable("read head", e))?
            .into_rows_result()
            .map_err(|e| unavailable("read head", e))?;
        match rows
            .maybe_first_row::<(i64,)>()
            .map_err(|e| corrupt("head row", e))?
        {
            Some((seq,)) => Ok(Some(from_cql(seq)?)),
            None => Ok(None),
        }
    }

    /// Writes one slice of an append (all in bucket `bucket`) as one
    /// conditional batch, resolving an unknown outcome.
    async fn append_slice(
        &self,
        room: &RoomId,
        bucket: u64,
        slice: &[(OpEvent, String)],
        writer: &Writer,
    ) -> StoreResult<()> {
        let mut batch = Batch::new(BatchType::Logged);
        let mut values: Vec<Vec<CqlValue>> = Vec::with_capacity(slice.len() * 2);
        let room_value = CqlValue::Text(room.as_str().to_string());
        let bucket_value = CqlValue::BigInt(to_cql(bucket));
        for (event, json) in slice {
            let seq = CqlValue::BigInt(to_cql(event.seq.get()));
            batch.append_statement(self.statements.insert_op.clone());
            values.push(vec![
                room_value.clone(),
                bucket_value.clone(),
                seq.clone(),
                CqlValue::BigInt(to_cql(writer.term)),
                CqlValue::Text(writer.node.as_str().to_string()),
                CqlValue::Text(json.clone()),
            ]);
            batch.append_statement(self.statements.insert_kind.clone());
            values.push(vec![
                room_value.clone(),
                bucket_value.clone(),
                CqlValue::Text(kind_lane(event.op.kind())),
                seq,
            ]);
        }
        // The conditional write is not idempotent for the driver (a blind
        // retry would report our own rows as a conflict); an unknown
        // outcome is resolved below instead.
        batch.set_is_idempotent(false);
        batch.set_serial_consistency(Some(self.options.serial_consistency));
        let first = slice[0].0.seq.get();
        let last = slice[slice.len() - 1].0.seq.get();
        let permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| StoreError::Unavailable("store closed".into()))?;
        let result = self.session.batch(&batch, &values).await;
        drop(permit);
        let outcome = match result {
            Ok(result) => match applied(result) {
                Ok(true) => return Ok(()),
                Ok(false) => None,
                Err(e) => Some(e),
            },
            Err(e) => Some(unavailable("conditional append", e)),
        };
        // Not applied, or outcome unknown: look at what is there now.
        self.resolved_appends.fetch_add(1, Ordering::Relaxed);
        match self.resolve(room, bucket, first, last, writer).await {
            Ok(Resolution::Ours) => Ok(()),
            Ok(Resolution::Taken(by)) => Err(StoreError::Conflict(format!(
                "room {room}: seqs {first}..={last} already written ({by})"
            ))),
            Ok(Resolution::Absent) => Err(outcome.unwrap_or_else(|| {
                StoreError::Unavailable(format!(
                    "room {room}: conditional append of {first}..={last} not applied, yet nothing is stored"
                ))
            })),
            Err(e) => {
                tracing::warn!(%room, first, last, error = %e, "could not resolve an append with an unknown outcome");
                Err(outcome.unwrap_or(e))
            }
        }
    }

    /// Reads `first..=last` at serial consistency: after it, no Paxos round
    /// that could still write those rows is pending.
    async fn resolve(
        &self,
        room: &RoomId,
        bucket: u64,
        first: u64,
        last: u64,
        writer: &Writer,
    ) -> StoreResult<Resolution> {
        let rows = self
            .session
            .execute_unpaged(
                &self.statements.resolve_ops,
                (room.as_str(), to_cql(bucket), to_cql(first), to_cql(last)),
            )
            .await
            .map_err(|e| unavailable("serial read", e))?
            .into_rows_result()
            .map_err(|e| unavailable("serial read", e))?;
        let mut ours = 0u64;
        let mut theirs = None;
        for row in rows
            .rows::<(i64, i64, String)>()
            .map_err(|e| corrupt("serial read", e))?
        {
            let (_, term, node) = row.map_err(|e| corrupt("serial read row", e))?;
            if from_cql(term)? == writer.term && node == writer.node.as_str() {
                ours += 1;
            } else {
                theirs = Some(format!("node {node}, term {term}"));
            }
        }
        Ok(match theirs {
            Some(by) => Resolution::Taken(by),
            None if ours == last - first + 1 => Resolution::Ours,
            None if ours == 0 => Resolution::Absent,
            // Some of our rows and not others cannot come from one batch.
            None => Resolution::Taken("a partial write of this writer".into()),
        })
    }

    /// Up to `page` ops of `bucket` with `seq < below`, newest first, and
    /// whether the page stopped at a tombstone (nothing below it is this
    /// room's).
    async fn history_page(
        &self,
        room: &RoomId,
        bucket: u64,
        below: u64,
        page: usize,
    ) -> StoreResult<(Vec<OpEvent>, bool)> {
        let rows = self
            .session
            .execute_unpaged(
                &self.statements.history_log,
                (room.as_str(), to_cql(bucket), to_cql(below), limit_of(page)),
            )
            .await
            .map_err(|e| unavailable("read history", e))?
            .into_rows_result()
            .map_err(|e| unavailable("read history", e))?;
        let mut out = Vec::new();
        for row in rows
            .rows::<(i64, Option<String>)>()
            .map_err(|e| corrupt("history rows", e))?
        {
            let (seq, json) = row.map_err(|e| corrupt("history row", e))?;
            let Some(json) = json else {
                return Ok((out, true));
            };
            out.push(decode_event(from_cql(seq)?, &json)?);
        }
        Ok((out, false))
    }

    /// Up to `page` seqs of `kind` in `bucket` below `below`, newest first.
    async fn kind_page(
        &self,
        room: &RoomId,
        bucket: u64,
        kind: OpKind,
        below: u64,
        page: usize,
    ) -> StoreResult<Vec<u64>> {
        let rows = self
            .session
            .execute_unpaged(
                &self.statements.history_kind,
                (
                    room.as_str(),
                    to_cql(bucket),
                    kind_lane(kind),
                    to_cql(below),
                    limit_of(page),
                ),
            )
            .await
            .map_err(|e| unavailable("read history", e))?
            .into_rows_result()
            .map_err(|e| unavailable("read history", e))?;
        let mut seqs = Vec::new();
        for row in rows
            .rows::<(i64,)>()
            .map_err(|e| corrupt("history rows", e))?
        {
            seqs.push(from_cql(row.map_err(|e| corrupt("history row", e))?.0)?);
        }
        Ok(seqs)
    }

    async fn fetch_ops(
        &self,
        room: &RoomId,
        bucket: u64,
        seqs: &[u64],
    ) -> StoreResult<Vec<OpEvent>> {
        let seq_values: Vec<i64> = seqs.iter().map(|s| to_cql(*s)).collect();
        let rows = self
            .session
            .execute_unpaged(
                &self.statements.ops_by_seq,
                (room.as_str(), to_cql(bucket), seq_values),
            )
            .await
            .map_err(|e| unavailable("read ops", e))?
            .into_rows_result()
            .map_err(|e| unavailable("read ops", e))?;
        let mut by_seq = BTreeMap::new();
        for row in rows
            .rows::<(i64, Option<String>)>()
            .map_err(|e| corrupt("op rows", e))?
        {
            let (seq, json) = row.map_err(|e| corrupt("op row", e))?;
            let seq = from_cql(seq)?;
            // Kind lanes never name a tombstone; skip one all the same.
            if let Some(json) = json {
                by_seq.insert(seq, decode_event(seq, &json)?);
            }
        }
        // Newest first, as history pages are.
        Ok(by_seq.into_values().rev().collect())
    }
}

/// What a log row at one seq holds.
#[derive(Debug, PartialEq, Eq)]
enum LogRow {
    Op,
    /// A deleted room's tombstone: a row without an op.
    Tombstone,
}

impl CqlStore {
    /// The `rooms` row of `id`, deleted or not; read at serial consistency
    /// when it is about to decide a conditional write.
    async fn stored_room(&self, id: &RoomId, serial: bool) -> StoreResult<Option<StoredRoom>> {
        let statement = if serial {
            &self.statements.select_room_serial
        } else {
            &self.statements.select_room
        };
        let rows = self
            .session
            .execute_unpaged(statement, (id.as_str(),))
            .await
            .map_err(|e| unavailable("read room", e))?
            .into_rows_result()
            .map_err(|e| unavailable("read room", e))?;
        rows.maybe_first_row::<RoomRow>()
            .map_err(|e| corrupt("room row", e))?
            .map(room_from_row)
            .transpose()
    }

    /// The seq at or below which nothing is the room's any more (see
    /// `StoredRoom::base`); 0 for an id never deleted.
    async fn base(&self, room: &RoomId) -> StoreResult<u64> {
        let rows = self
            .session
            .execute_unpaged(&self.statements.select_floor, (room.as_str(),))
            .await
            .map_err(|e| unavailable("read room", e))?
            .into_rows_result()
            .map_err(|e| unavailable("read room", e))?;
        let Some((floor, deleted)) = rows
            .maybe_first_row::<(Option<i64>, Option<i64>)>()
            .map_err(|e| corrupt("room row", e))?
        else {
            return Ok(0);
        };
        Ok(from_cql(floor.unwrap_or(0))?.max(from_cql(deleted.unwrap_or(0))?))
    }

    /// The log row at `seq`, read at serial consistency (so no conditional
    /// write that could still create it is pending).
    async fn log_row(&self, room: &RoomId, seq: u64) -> StoreResult<Option<LogRow>> {
        let rows = self
            .session
            .execute_unpaged(
                &self.statements.select_log_row,
                (room.as_str(), to_cql(bucket_of(seq)), to_cql(seq)),
            )
            .await
            .map_err(|e| unavailable("serial read", e))?
            .into_rows_result()
            .map_err(|e| unavailable("serial read", e))?;
        Ok(rows
            .maybe_first_row::<(Option<String>,)>()
            .map_err(|e| corrupt("log row", e))?
            .map(|(op,)| {
                if op.is_some() {
                    LogRow::Op
                } else {
                    LogRow::Tombstone
                }
            }))
    }

    /// Writes `room`'s tombstone at `at`: a conditional insert, like an
    /// append's, settled by a serial read when it was not applied or its
    /// outcome is unknown. `Ok` also when a tombstone is there already.
    async fn write_tombstone(&self, room: &RoomId, at: u64, writer: &Writer) -> StoreResult<()> {
        let result = self
            .session
            .execute_unpaged(
                &self.statements.insert_tombstone,
                (
                    room.as_str(),
                    to_cql(bucket_of(at)),
                    to_cql(at),
                    to_cql(writer.term),
                    writer.node.as_str(),
                ),
            )
            .await;
        let outcome = match result {
            Ok(result) => match applied(result) {
                Ok(true) => return Ok(()),
                Ok(false) => None,
                Err(e) => Some(e),
            },
            Err(e) => Some(unavailable("write tombstone", e)),
        };
        match self.log_row(room, at).await? {
            Some(LogRow::Tombstone) => Ok(()),
            Some(LogRow::Op) => Err(StoreError::Conflict(format!(
                "room {room}: seq {at} exists"
            ))),
            None => Err(outcome.unwrap_or_else(|| {
                StoreError::Unavailable(format!(
                    "room {room}: the tombstone at {at} was not written, yet nothing is there"
                ))
            })),
        }
    }

    /// Removes what a deleted room left below its tombstone at `at`: its
    /// snapshots and its log, then notes that this is done. Idempotent,
    /// and it touches nothing of a room created under the id since (whose
    /// rows are all above `at`).
    async fn purge(&self, room: &RoomId, at: u64) -> StoreResult<()> {
        let failed = |e| unavailable("remove a deleted room", e);
        self.session
            .execute_unpaged(
                &self.statements.delete_older_snapshots,
                (room.as_str(), to_cql(at)),
            )
            .await
            .map_err(failed)?;
        let top = bucket_of(at);
        for bucket in 0..top {
            self.session
                .execute_unpaged(
                    &self.statements.delete_bucket,
                    (room.as_str(), to_cql(bucket)),
                )
                .await
                .map_err(failed)?;
        }
        let lanes = std::iter::once("log".to_owned()).chain(OpKind::ALL.into_iter().map(kind_lane));
        for lane in lanes {
            self.session
                .execute_unpaged(
                    &self.statements.delete_lane_below,
                    (room.as_str(), to_cql(top), lane, to_cql(at)),
                )
                .await
                .map_err(failed)?;
        }
        // Only if the row still tells of this deletion (not of a room
        // created since).
        self.session
            .execute_unpaged(&self.statements.mark_purged, (room.as_str(), to_cql(at)))
            .await
            .map_err(failed)?;
        Ok(())
    }
}

enum Resolution {
    /// Every row of the slice is there, written by this writer.
    Ours,
    /// Rows of the slice exist, written by someone else.
    Taken(String),
    /// None of the rows exist (and now never will from that attempt).
    Absent,
}

/// Reads `[applied]` from a conditional write's result.
fn applied(result: scylla::response::query_result::QueryResult) -> StoreResult<bool> {
    let rows = result
        .into_rows_result()
        .map_err(|e| corrupt("conditional write result", e))?;
    let row = rows
        .maybe_first_row::<Row>()
        .map_err(|e| corrupt("conditional write result", e))?
        .ok_or_else(|| corrupt("conditional write result", "no [applied] row"))?;
    match row.columns.first() {
        Some(Some(CqlValue::Boolean(applied))) => Ok(*applied),
        other => Err(corrupt(
            "conditional write result",
            format!("first column is {other:?}, not [applied]"),
        )),
    }
}

fn decode_event(seq: u64, json: &str) -> StoreResult<OpEvent> {
    let event: OpEvent = serde_json::from_str(json).map_err(|e| corrupt("op", e))?;
    if event.seq.get() != seq {
        return Err(StoreError::Corrupt(format!(
            "row {seq} holds op {}",
            event.seq
        )));
    }
    Ok(event)
}

fn parse_room_kind(kind: &str) -> StoreResult<RoomKind> {
    match kind {
        "board" => Ok(RoomKind::Board),
        "channel" => Ok(RoomKind::Channel),
        other => Err(StoreError::Corrupt(format!("room kind `{other}`"))),
    }
}

type RoomRow = (
    String,
    String,
    String,
    String,
    String,
    Option<bool>,
    Option<Vec<String>>,
    i64,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<bool>,
);

/// A `rooms` row: a room, or what a deleted one left.
struct StoredRoom {
    record: RoomRecord,
    /// The tombstone's seq, once the room is deleted.
    deleted: Option<u64>,
    /// Whether the deletion removed everything below its tombstone.
    purged: bool,
}

impl StoredRoom {
    /// The room, unless it was deleted.
    fn live(self) -> Option<RoomRecord> {
        self.deleted.is_none().then_some(self.record)
    }
}

fn room_from_row(row: RoomRow) -> StoreResult<StoredRoom> {
    let (
        id,
        kind,
        name,
        epoch,
        created_by,
        private,
        members,
        created_at,
        ttl_secs,
        floor,
        deleted,
        purged,
    ) = row;
    let user = |u: String| UserId::parse(u).map_err(|e| corrupt("room member", e));
    let record = RoomRecord {
        id: RoomId::parse(id).map_err(|e| corrupt("room id", e))?,
        kind: parse_room_kind(&kind)?,
        name,
        epoch: Epoch::parse(epoch).map_err(|e| corrupt("room epoch", e))?,
        created_by: user(created_by)?,
        members: if private.unwrap_or(false) {
            Some(
                members
                    .unwrap_or_default()
                    .into_iter()
                    .map(user)
                    .collect::<StoreResult<_>>()?,
            )
        } else {
            None
        },
        created_at,
        ttl_secs: ttl_secs.map(from_cql).transpose()?,
        floor: Seq(floor.map(from_cql).transpose()?.unwrap_or(0)),
    };
    Ok(StoredRoom {
        record,
        deleted: deleted.map(from_cql).transpose()?,
        purged: purged.unwrap_or(false),
    })
}

#[async_trait]
impl StoreReader for CqlStore {
    async fn room(&self, id: &RoomId) -> StoreResult<Option<RoomRecord>> {
        Ok(self
            .stored_room(id, false)
            .await?
            .and_then(StoredRoom::live))
    }

    async fn rooms_of_user(&self, user: &UserId) -> StoreResult<Vec<RoomRecord>> {
        let ids: Vec<(String,)> = self
            .session
            .execute_iter(
                self.statements.select_rooms_by_user.clone(),
                (user.as_str(),),
            )
            .await
            .map_err(|e| unavailable("list rooms", e))?
            .rows_stream::<(String,)>()
            .map_err(|e| corrupt("room listing", e))?
            .try_collect()
            .await
            .map_err(|e| unavailable("list rooms", e))?;
        let records = futures_util::future::try_join_all(ids.into_iter().map(|(id,)| async move {
            let id = RoomId::parse(id).map_err(|e| corrupt("room id", e))?;
            self.room(&id).await
        }))
        .await?;
        // Clustering order is id order; drop listings of rooms whose
        // creation lost a race (see `create_room`).
        Ok(records
            .into_iter()
            .flatten()
            .filter(|room| members_to_index(room).any(|u| u == user))
            .collect())
    }

    async fn rooms_of_user_page(
        &self,
        user: &UserId,
        page: &RoomsPage,
    ) -> StoreResult<Vec<RoomRecord>> {
        let mut out = Vec::new();
        // A slice of the user's partition of `rooms_by_user` at a time,
        // after the last id seen: a kind filter or a stale listing row
        // (see `create_room`) can leave a slice short of a page.
        let slice = page.limit.clamp(1, READ_PAGE);
        let mut after = page
            .after
            .as_ref()
            .map_or_else(String::new, |after| after.as_str().to_owned());
        while out.len() < page.limit {
            let ids: Vec<(String,)> = self
                .session
                .execute_unpaged(
                    &self.statements.select_rooms_by_user_after,
                    (user.as_str(), after.as_str(), limit_of(slice)),
                )
                .await
                .map_err(|e| unavailable("list rooms", e))?
                .into_rows_result()
                .map_err(|e| corrupt("room listing", e))?
                .rows::<(String,)>()
                .map_err(|e| corrupt("room listing", e))?
                .collect::<Result<_, _>>()
                .map_err(|e| corrupt("room listing", e))?;
            let Some((last,)) = ids.last() else { break };
            let exhausted = ids.len() < slice;
            after = last.clone();
            let records =
                futures_util::future::try_join_all(ids.into_iter().map(|(id,)| async move {
                    let id = RoomId::parse(id).map_err(|e| corrupt("room id", e))?;
                    self.room(&id).await
                }))
                .await?;
            out.extend(
                records
                    .into_iter()
                    .flatten()
                    .filter(|room| members_to_index(room).any(|u| u == user) && page.wants(room)),
            );
            if exhausted {
                break;
            }
        }
        out.truncate(page.limit);
        Ok(out)
    }

    async fn head(&self, room: &RoomId) -> StoreResult<Seq> {
        // Buckets fill in order from the one of the room's base (its
        // floor's or its tombstone's: the rows below are gone), so the
        // head is in the last non-empty one, and every bucket from the
        // base's to it is full. Most rooms fit in bucket 0.
        let base = self.base(room).await?;
        let first = bucket_of(base);
        let mut full = match self.last_in_bucket(room, first).await? {
            None => return Ok(Seq(base)),
            Some(seq) if seq < bucket_end(first) => return Ok(Seq(seq.max(base))),
            Some(_) => first,
        };
        // Gallop up to an empty bucket, then bisect between.
        let mut empty = first + 1;
        loop {
            match self.last_in_bucket(room, empty).await? {
                None => break,
                Some(seq) if seq < bucket_end(empty) => return Ok(Seq(seq)),
                Some(_) => {
                    full = empty;
                    empty = first + (empty - first).saturating_mul(2);
                }
            }
        }
        while empty - full > 1 {
            let mid = full + (empty - full) / 2;
            match self.last_in_bucket(room, mid).await? {
                None => empty = mid,
                Some(seq) if seq < bucket_end(mid) => return Ok(Seq(seq)),
                Some(_) => full = mid,
            }
        }
        Ok(Seq(bucket_end(full)))
    }

    async fn read_log(
        &self,
        room: &RoomId,
        after: Seq,
        limit: usize,
    ) -> StoreResult<Vec<LoggedOp>> {
        let mut out = Vec::new();
        let mut after = after.get();
        let mut base_checked = false;
        while out.len() < limit {
            let bucket = bucket_of(after + 1);
            let asked = (limit - out.len()).min(READ_PAGE);
            let rows = self
                .session
                .execute_unpaged(
                    &self.statements.read_log,
                    (
                        room.as_str(),
                        to_cql(bucket),
                        to_cql(after),
                        limit_of(asked),
                    ),
                )
                .await
                .map_err(|e| unavailable("read log", e))?
                .into_rows_result()
                .map_err(|e| unavailable("read log", e))?;
            let before = out.len();
            for row in rows
                .rows::<(i64, i64, String, Option<String>)>()
                .map_err(|e| corrupt("log rows", e))?
            {
                let (seq, term, node, json) = row.map_err(|e| corrupt("log row", e))?;
                let seq = from_cql(seq)?;
                let Some(json) = json else {
                    return Err(StoreError::RoomDeleted(Seq(seq)));
                };
                out.push(LoggedOp {
                    event: decode_event(seq, &json)?,
                    writer: Writer {
                        node: NodeId::parse(node).map_err(|e| corrupt("writer node", e))?,
                        term: from_cql(term)?,
                    },
                });
                after = seq;
            }
            // The log is gapless: a short page ends it, unless the page
            // stopped at the end of its bucket.
            let got = out.len() - before;
            if got == 0 && out.is_empty() && !base_checked {
                // Nothing at all: the log may start higher up, above the
                // rows a deletion removed (the reader is then below the
                // room's base, and meets the tombstone there).
                base_checked = true;
                let base = self.base(room).await?;
                if base > after + 1 {
                    after = base - 1;
                    continue;
                }
            }
            if got == 0 || (got < asked && after < bucket_end(bucket)) {
                break;
            }
        }
        Ok(out)
    }

    async fn history(
        &self,
        room: &RoomId,
        before: Seq,
        limit: usize,
        kinds: Option<&[OpKind]>,
    ) -> StoreResult<Vec<OpEvent>> {
        // The room's ops are above its base: a room created under a
        // deleted room's id never shows what lies below (rows a stale owner
        // of the deleted room may have written after its removal).
        let base = self.base(room).await?;
        if limit == 0 || before.get() <= base + 1 {
            return Ok(Vec::new());
        }
        let lowest = bucket_of(base + 1);
        let mut out: Vec<OpEvent> = Vec::new();
        // Start in the bucket of `before - 1`: a page inside the log needs
        // no head lookup (callers usually know the head already).
        let mut bucket = bucket_of(before.get() - 1);
        // Exclusive upper bound of the next page within `bucket`.
        let mut below = before.get();
        let mut head_checked = false;
        while out.len() < limit {
            let page = (limit - out.len()).min(READ_PAGE);
            let (mut found, tombstone) = match kinds {
                None => self.history_page(room, bucket, below, page).await?,
                Some(kinds) => {
                    // The newest `page` seqs of these kinds, then their ops.
                    let mut seqs = Vec::new();
                    for kind in kinds {
                        seqs.extend(self.kind_page(room, bucket, *kind, below, page).await?);
                    }
                    seqs.sort_unstable_by(|a, b| b.cmp(a));
                    seqs.dedup();
                    seqs.truncate(page);
                    if seqs.is_empty() {
                        (Vec::new(), false)
                    } else {
                        (self.fetch_ops(room, bucket, &seqs).await?, false)
                    }
                }
            };
            let full = found.len() == page;
            let at_base = found.last().is_some_and(|op| op.seq.get() <= base);
            found.retain(|op| op.seq.get() > base);
            if found.is_empty() && !head_checked && !tombstone && !at_base {
                // Nothing below `below` here: either `before` lies past the
                // end of the log (go to the head's bucket) or this bucket
                // has none of these kinds (carry on down).
                head_checked = true;
                let head = self.head(room).await?.get();
                if head == 0 {
                    break;
                }
                if bucket_of(head) < bucket {
                    bucket = bucket_of(head);
                    below = head + 1;
                    continue;
                }
            }
            if let Some(oldest) = found.last() {
                below = oldest.seq.get();
            }
            out.extend(found);
            if tombstone || at_base {
                break;
            }
            if full {
                // This bucket may hold more below `below`.
                continue;
            }
            if bucket <= lowest {
                break;
            }
            bucket -= 1;
            below = bucket_end(bucket) + 1;
        }
        Ok(out)
    }

    async fn latest_snapshot(&self, room: &RoomId) -> StoreResult<Option<Snapshot>> {
        let Some(seq) = self.latest_complete_snapshot(room).await? else {
            return Ok(None);
        };
        let chunks: Vec<(i32, Option<Vec<u8>>)> = self
            .session
            .execute_iter(
                self.statements.select_snapshot_chunk.clone(),
                (room.as_str(), to_cql(seq)),
            )
            .await
            .map_err(|e| unavailable("read snapshot", e))?
            .rows_stream::<(i32, Option<Vec<u8>>)>()
            .map_err(|e| corrupt("snapshot rows", e))?
            .try_collect()
            .await
            .map_err(|e| unavailable("read snapshot", e))?;
        let mut data = Vec::new();
        for (i, (chunk, bytes)) in chunks.into_iter().enumerate() {
            if usize::try_from(chunk).ok() != Some(i) {
                return Err(StoreError::Corrupt(format!(
                    "snapshot {seq} of room {room}: chunk {chunk} where {i} was expected"
                )));
            }
            data.extend_from_slice(&bytes.unwrap_or_default());
        }
        Ok(Some(Snapshot {
            seq: Seq(seq),
            data,
        }))
    }
}

#[async_trait]
impl RoomCatalog for CqlStore {
    async fn create_room(&self, room: &RoomRecord) -> StoreResult<()> {
        // The listing rows first: they are harmless if the room turns out
        // to be taken (`rooms_of_user` only lists a room whose record names
        // the user), while a crash between the two writes in the other
        // order would leave a room its members cannot list.
        for user in members_to_index(room) {
            self.session
                .execute_unpaged(
                    &self.statements.insert_room_by_user,
                    (user.as_str(), room.id.as_str()),
                )
                .await
                .map_err(|e| unavailable("create room", e))?;
        }
        let members: Option<Vec<&str>> = room
            .members
            .as_ref()
            .map(|m| m.iter().map(|u| u.as_str()).collect());
        let ttl_secs = room.ttl_secs.map(to_cql);
        let result = self
            .session
            .execute_unpaged(
                &self.statements.insert_room,
                (
                    room.id.as_str(),
                    room.kind.as_str(),
                    room.name.as_str(),
                    room.epoch.as_str(),
                    room.created_by.as_str(),
                    room.members.is_some(),
                    &members,
                    room.created_at,
                    ttl_secs,
                ),
            )
            .await;
        let created = match result {
            Ok(result) => applied(result)?,
            // Unknown outcome: the record decides (ours, or someone's).
            Err(e) => match self.stored_room(&room.id, true).await? {
                Some(stored) if stored.deleted.is_none() => stored.record.epoch == room.epoch,
                Some(_) => false,
                None => return Err(unavailable("create room", e)),
            },
        };
        if created {
            return Ok(());
        }
        // Taken, unless by a deleted room: then this one follows it.
        let Some(stored) = self.stored_room(&room.id, true).await? else {
            return Err(unavailable(
                "create room",
                "the id is taken, yet no room is stored",
            ));
        };
        let Some(tombstone) = stored.deleted else {
            return Err(StoreError::Conflict(format!("room {} exists", room.id)));
        };
        if !stored.purged {
            // The deletion was cut short: finish it before the id is
            // reused, or nobody would.
            self.purge(&room.id, tombstone).await?;
        }
        let result = self
            .session
            .execute_unpaged(
                &self.statements.recreate_room,
                (
                    room.kind.as_str(),
                    room.name.as_str(),
                    room.epoch.as_str(),
                    room.created_by.as_str(),
                    room.members.is_some(),
                    &members,
                    room.created_at,
                    ttl_secs,
                    to_cql(tombstone),
                    room.id.as_str(),
                    to_cql(tombstone),
                ),
            )
            .await;
        let recreated = match result {
            Ok(result) => applied(result)?,
            Err(e) => match self.stored_room(&room.id, true).await? {
                Some(stored) if stored.deleted.is_none() => stored.record.epoch == room.epoch,
                Some(_) => return Err(unavailable("create room", e)),
                None => false,
            },
        };
        if recreated {
            Ok(())
        } else {
            Err(StoreError::Conflict(format!("room {} exists", room.id)))
        }
    }
}

#[async_trait]
impl Store for CqlStore {
    async fn delete_room(&self, room: &RoomId, deletion: &Deletion) -> StoreResult<()> {
        let at = deletion.at.get();
        if at == 0 {
            return Err(StoreError::InvalidBatch("seqs start at 1".into()));
        }
        let stored = self.stored_room(room, true).await?;
        let live = stored
            .as_ref()
            .filter(|s| s.deleted.is_none() && s.record.epoch == deletion.epoch)
            .map(|s| s.record.clone());
        // 1. The tombstone: the fence. Not for a room that is not there,
        // unless an earlier attempt put it there.
        if live.is_none() {
            match self.log_row(room, at).await? {
                Some(LogRow::Tombstone) => {}
                _ => {
                    return Err(StoreError::NotFound(format!(
                        "no room {room} with epoch {}",
                        deletion.epoch
                    )));
                }
            }
        } else {
            self.write_tombstone(room, at, &deletion.writer).await?;
        }
        if let Some(record) = live {
            // 2. Its memberships, while nobody can create the id again.
            for user in members_to_index(&record) {
                self.session
                    .execute_unpaged(
                        &self.statements.delete_room_by_user,
                        (user.as_str(), room.as_str()),
                    )
                    .await
                    .map_err(|e| unavailable("delete room", e))?;
            }
            // 3. The room is gone for every reader from here on.
            let result = self
                .session
                .execute_unpaged(
                    &self.statements.mark_deleted,
                    (to_cql(at), room.as_str(), deletion.epoch.as_str()),
                )
                .await;
            let marked = match result {
                Ok(result) => applied(result)?,
                Err(e) => {
                    // Unknown outcome: what is stored decides.
                    match self.stored_room(room, true).await? {
                        Some(s) if s.deleted.is_some() => true,
                        _ => return Err(unavailable("delete room", e)),
                    }
                }
            };
            if !marked {
                tracing::debug!(%room, at, "room already marked deleted (or created again)");
            }
        }
        // 4. Everything below the tombstone.
        self.purge(room, at).await
    }

    async fn update_room(&self, room: &RoomRecord) -> StoreResult<()> {
        let not_found =
            || StoreError::NotFound(format!("no room {} with epoch {}", room.id, room.epoch));
        let stored = self
            .stored_room(&room.id, true)
            .await?
            .filter(|s| s.deleted.is_none() && s.record.epoch == room.epoch)
            .ok_or_else(not_found)?
            .record;
        let updated = updated_record(&stored, room)?;
        let listed =
            |record: &RoomRecord, user: &UserId| members_to_index(record).any(|u| u == user);
        // Listing rows of new members first, as in `create_room`: one the
        // record does not back yet is not listed.
        for user in members_to_index(&updated).filter(|u| !listed(&stored, u)) {
            self.session
                .execute_unpaged(
                    &self.statements.insert_room_by_user,
                    (user.as_str(), room.id.as_str()),
                )
                .await
                .map_err(|e| unavailable("update room", e))?;
        }
        let members: Option<Vec<&str>> = updated
            .members
            .as_ref()
            .map(|m| m.iter().map(|u| u.as_str()).collect());
        let result = self
            .session
            .execute_unpaged(
                &self.statements.update_room,
                (
                    updated.name.as_str(),
                    &members,
                    room.id.as_str(),
                    room.epoch.as_str(),
                ),
            )
            .await;
        let written = match result {
            Ok(result) => applied(result)?,
            // Unknown outcome: what is stored decides.
            Err(e) => match self.stored_room(&room.id, true).await? {
                Some(now) if now.deleted.is_none() && now.record == updated => true,
                _ => return Err(unavailable("update room", e)),
            },
        };
        if !written {
            return Err(not_found());
        }
        // Then the rows of members removed; one left by a crash here is
        // not listed either (its record no longer names the user).
        for user in members_to_index(&stored).filter(|u| !listed(&updated, u)) {
            self.session
                .execute_unpaged(
                    &self.statements.delete_room_by_user,
                    (user.as_str(), room.id.as_str()),
                )
                .await
                .map_err(|e| unavailable("update room", e))?;
        }
        Ok(())
    }

    async fn finish_deletion(&self, room: &RoomId) -> StoreResult<()> {
        match self.stored_room(room, false).await? {
            Some(StoredRoom {
                deleted: Some(at),
                purged: false,
                ..
            }) => {
                tracing::info!(%room, at, "finishing a deletion that was cut short");
                self.purge(room, at).await
            }
            _ => Ok(()),
        }
    }

    async fn append(
        &self,
        room: &RoomId,
        first: Seq,
        batch: &[OpEvent],
        writer: &Writer,
    ) -> StoreResult<()> {
        check_batch(room, first, batch)?;
        let mut encoded = Vec::with_capacity(batch.len());
        for event in batch {
            let json = serde_json::to_string(event).map_err(|e| {
                StoreError::InvalidBatch(format!("op {} does not encode: {e}", event.seq))
            })?;
            encoded.push((event.clone(), json));
        }
        // Cut at bucket boundaries and at the byte budget; write in order.
        let mut start = 0;
        while start < encoded.len() {
            let bucket = bucket_of(encoded[start].0.seq.get());
            let mut end = start;
            let mut bytes = 0;
            while end < encoded.len()
                && bucket_of(encoded[end].0.seq.get()) == bucket
                && (end == start || bytes + encoded[end].1.len() <= self.options.max_batch_bytes)
            {
                bytes += encoded[end].1.len();
                end += 1;
            }
            self.append_slice(room, bucket, &encoded[start..end], writer)
                .await?;
            start = end;
        }
        Ok(())
    }

    async fn put_snapshot(&self, room: &RoomId, snapshot: &Snapshot) -> StoreResult<()> {
        if let Some(stored) = self.latest_complete_snapshot(room).await?
            && stored > snapshot.seq.get()
        {
            tracing::debug!(%room, stored, offered = %snapshot.seq, "older snapshot ignored");
            return Ok(());
        }
        let chunks: Vec<&[u8]> = if snapshot.data.is_empty() {
            vec![&[]]
        } else {
            snapshot.data.chunks(SNAPSHOT_CHUNK).collect()
        };
        let count = i32::try_from(chunks.len())
            .map_err(|_| StoreError::InvalidBatch("snapshot too large".into()))?;
        let seq = to_cql(snapshot.seq.get());
        for (i, chunk) in chunks.into_iter().enumerate() {
            self.session
                .execute_unpaged(
                    &self.statements.insert_snapshot_chunk,
                    (room.as_str(), seq, i as i32, count, chunk),
                )
                .await
                .map_err(|e| unavailable("write snapshot", e))?;
        }
        // Older snapshots are no longer needed; a failure here only leaves
        // them for the next snapshot to remove.
        if let Err(e) = self
            .session
            .execute_unpaged(
                &self.statements.delete_older_snapshots,
                (room.as_str(), seq),
            )
            .await
        {
            tracing::warn!(%room, error = %e, "could not delete older snapshots");
        }
        Ok(())
    }

    fn webhook_log(self: std::sync::Arc<Self>) -> Option<std::sync::Arc<dyn crate::WebhookLog>> {
        Some(self)
    }
}

impl CqlStore {
    /// The newest snapshot seq whose chunks are all stored (a writer that
    /// died mid-way leaves an incomplete one, which is skipped).
    async fn latest_complete_snapshot(&self, room: &RoomId) -> StoreResult<Option<u64>> {
        let mut rows = self
            .session
            .execute_iter(
                self.statements.select_snapshot_index.clone(),
                (room.as_str(),),
            )
            .await
            .map_err(|e| unavailable("read snapshots", e))?
            .rows_stream::<(i64, i32, i32)>()
            .map_err(|e| corrupt("snapshot index", e))?;
        let mut current: Option<(i64, i32)> = None;
        while let Some((seq, chunk, chunks)) = rows
            .try_next()
            .await
            .map_err(|e| unavailable("read snapshots", e))?
        {
            let seen = match current {
                Some((s, seen)) if s == seq => seen,
                _ => 0,
            };
            // Rows come newest seq first, chunks in order.
            let seen = if chunk == seen { seen + 1 } else { seen };
            if seen == chunks {
                return Ok(Some(from_cql(seq)?));
            }
            current = Some((seq, seen));
        }
        Ok(None)
    }
}

impl Statements {
    async fn prepare(session: &Session, options: &CqlOptions) -> StoreResult<Statements> {
        // Table names are qualified with the keyspace: the session has no
        // current keyspace (`USE` and prepared statements do not mix well).
        let keyspace = options.keyspace.as_str();
        let prepare = |cql: &'static str, idempotent: bool| async move {
            let mut statement = session
                .prepare(cql.replace("{ks}", keyspace))
                .await
                .map_err(|e| unavailable("prepare statement", e))?;
            statement.set_is_idempotent(idempotent);
            Ok::<_, StoreError>(statement)
        };
        let mut resolve_ops = prepare(
            "SELECT seq, term, node FROM {ks}.room_ops
             WHERE room = ? AND bucket = ? AND lane = 'log' AND seq >= ? AND seq <= ?",
            true,
        )
        .await?;
        // The read that settles an unknown outcome gets at least 5 s: giving
        // up on it turns a write that may have succeeded into `unavailable`.
        resolve_ops.set_request_timeout(Some(options.request_timeout.max(Duration::from_secs(5))));
        resolve_ops.set_consistency(match options.serial_consistency {
            scylla::statement::SerialConsistency::LocalSerial => Consistency::LocalSerial,
            _ => Consistency::Serial,
        });
        let serial = match options.serial_consistency {
            scylla::statement::SerialConsistency::LocalSerial => Consistency::LocalSerial,
            _ => Consistency::Serial,
        };
        let mut select_log_row = prepare(
            "SELECT op FROM {ks}.room_ops
             WHERE room = ? AND bucket = ? AND lane = 'log' AND seq = ?",
            true,
        )
        .await?;
        select_log_row.set_consistency(serial);
        select_log_row
            .set_request_timeout(Some(options.request_timeout.max(Duration::from_secs(5))));
        const SELECT_ROOM: &str = "SELECT id, kind, name, epoch, created_by, private, members,
                created_at, ttl_secs, floor, deleted, purged
             FROM {ks}.rooms WHERE id = ?";
        let mut select_room_serial = prepare(SELECT_ROOM, true).await?;
        select_room_serial.set_consistency(serial);
        let mut select_snapshot_index = prepare(
            "SELECT seq, chunk, chunks FROM {ks}.room_snapshots WHERE room = ?",
            true,
        )
        .await?;
        select_snapshot_index.set_page_size(256);
        let mut select_snapshot_chunk = prepare(
            "SELECT chunk, data FROM {ks}.room_snapshots WHERE room = ? AND seq = ?",
            true,
        )
        .await?;
        // Four 256 KiB chunks per page.
        select_snapshot_chunk.set_page_size(4);
        Ok(Statements {
            insert_op: prepare(
                "INSERT INTO {ks}.room_ops (room, bucket, lane, seq, term, node, op)
                 VALUES (?, ?, 'log', ?, ?, ?, ?) IF NOT EXISTS",
                false,
            )
            .await?,
            insert_tombstone: prepare(
                "INSERT INTO {ks}.room_ops (room, bucket, lane, seq, term, node)
                 VALUES (?, ?, 'log', ?, ?, ?) IF NOT EXISTS",
                false,
            )
            .await?,
            select_log_row,
            insert_kind: prepare(
                "INSERT INTO {ks}.room_ops (room, bucket, lane, seq) VALUES (?, ?, ?, ?)",
                false,
            )
            .await?,
            resolve_ops,
            read_log: prepare(
                "SELECT seq, term, node, op FROM {ks}.room_ops
                 WHERE room = ? AND bucket = ? AND lane = 'log' AND seq > ? LIMIT ?",
                true,
            )
            .await?,
            last_in_bucket: prepare(
                "SELECT seq FROM {ks}.room_ops WHERE room = ? AND bucket = ? AND lane = 'log'
                 ORDER BY lane DESC, seq DESC LIMIT 1",
                true,
            )
            .await?,
            history_log: prepare(
                "SELECT seq, op FROM {ks}.room_ops
                 WHERE room = ? AND bucket = ? AND lane = 'log' AND seq < ?
                 ORDER BY lane DESC, seq DESC LIMIT ?",
                true,
            )
            .await?,
            history_kind: prepare(
                "SELECT seq FROM {ks}.room_ops
                 WHERE room = ? AND bucket = ? AND lane = ? AND seq < ?
                 ORDER BY lane DESC, seq DESC LIMIT ?",
                true,
            )
            .await?,
            ops_by_seq: prepare(
                "SELECT seq, op FROM {ks}.room_ops
                 WHERE room = ? AND bucket = ? AND lane = 'log' AND seq IN ?",
                true,
            )
            .await?,
            insert_room: prepare(
                "INSERT INTO {ks}.rooms (id, kind, name, epoch, created_by, private, members,
                    created_at, ttl_secs, floor)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0) IF NOT EXISTS",
                false,
            )
            .await?,
            recreate_room: prepare(
                "UPDATE {ks}.rooms SET kind = ?, name = ?, epoch = ?, created_by = ?, private = ?,
                    members = ?, created_at = ?, ttl_secs = ?, floor = ?, deleted = null,
                    purged = null
                 WHERE id = ? IF deleted = ?",
                false,
            )
            .await?,
            select_room: prepare(SELECT_ROOM, true).await?,
            select_room_serial,
            select_floor: prepare("SELECT floor, deleted FROM {ks}.rooms WHERE id = ?", true)
                .await?,
            mark_deleted: prepare(
                "UPDATE {ks}.rooms SET deleted = ?, purged = false
                 WHERE id = ? IF epoch = ? AND deleted = null",
                false,
            )
            .await?,
            mark_purged: prepare(
                "UPDATE {ks}.rooms SET purged = true WHERE id = ? IF deleted = ?",
                false,
            )
            .await?,
            delete_room_by_user: prepare(
                "DELETE FROM {ks}.rooms_by_user WHERE user = ? AND room = ?",
                true,
            )
            .await?,
            delete_bucket: prepare(
                "DELETE FROM {ks}.room_ops WHERE room = ? AND bucket = ?",
                true,
            )
            .await?,
            delete_lane_below: prepare(
                "DELETE FROM {ks}.room_ops WHERE room = ? AND bucket = ? AND lane = ? AND seq < ?",
                true,
            )
            .await?,
            insert_room_by_user: prepare(
                "INSERT INTO {ks}.rooms_by_user (user, room) VALUES (?, ?)",
                true,
            )
            .await?,
            select_rooms_by_user: prepare("SELECT room FROM {ks}.rooms_by_user WHERE user = ?", true)
                .await?,
            select_rooms_by_user_after: prepare(
                "SELECT room FROM {ks}.rooms_by_user WHERE user = ? AND room > ? LIMIT ?",
                true,
            )
            .await?,
            update_room: prepare(
                "UPDATE {ks}.rooms SET name = ?, members = ?
                 WHERE id = ? IF epoch = ? AND deleted = null",
                false,
            )
            .await?,
            insert_snapshot_chunk: prepare(
                "INSERT INTO {ks}.room_snapshots (room, seq, chunk, chunks, data) VALUES (?, ?, ?, ?, ?)",
                true,
            )
            .await?,
            select_snapshot_index,
            select_snapshot_chunk,
            delete_older_snapshots: prepare(
                "DELETE FROM {ks}.room_snapshots WHERE room = ? AND seq < ?",
                true,
            )
            .await?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_consecutive_seqs() {
        assert_eq!(bucket_of(1), 0);
        assert_eq!(bucket_of(OPS_PER_BUCKET), 0);
        assert_eq!(bucket_of(OPS_PER_BUCKET + 1), 1);
        assert_eq!(bucket_end(0), OPS_PER_BUCKET);
        assert_eq!(bucket_end(2), 3 * OPS_PER_BUCKET);
        for seq in [1, 2, 4095, 4096, 4097, 100_000] {
            let b = bucket_of(seq);
            assert!(seq <= bucket_end(b) && (b == 0 || seq > bucket_end(b - 1)));
        }
    }
}
