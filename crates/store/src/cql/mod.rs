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
//! - **Statements.** Prepared once at start-up, with deliberate consistency,
//!   idempotence and timeouts: reads and unconditional writes are
//!   idempotent (the driver may retry them); the conditional append is not
//!   (it is resolved by the serial read instead).

mod options;
pub mod schema;

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
use crate::{LoggedOp, RoomRecord, Snapshot, Store, StoreError, StoreResult, Writer, check_batch};

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
    options: CqlOptions,
    resolved_appends: AtomicU64,
    /// Bounds the conditional writes in flight (see
    /// [`CqlOptions::max_in_flight`]).
    in_flight: tokio::sync::Semaphore,
}

struct Statements {
    insert_op: PreparedStatement,
    insert_kind: PreparedStatement,
    resolve_ops: PreparedStatement,
    read_log: PreparedStatement,
    last_in_bucket: PreparedStatement,
    history_log: PreparedStatement,
    history_kind: PreparedStatement,
    ops_by_seq: PreparedStatement,
    insert_room: PreparedStatement,
    select_room: PreparedStatement,
    insert_room_by_user: PreparedStatement,
    select_rooms_by_user: PreparedStatement,
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
        tracing::info!(store = %options, "CQL store ready");
        Ok(CqlStore {
            session,
            statements,
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

    /// Up to `page` ops of `bucket` with `seq < below`, newest first.
    async fn history_page(
        &self,
        room: &RoomId,
        bucket: u64,
        below: u64,
        page: usize,
    ) -> StoreResult<Vec<OpEvent>> {
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
            .rows::<(i64, String)>()
            .map_err(|e| corrupt("history rows", e))?
        {
            let (seq, json) = row.map_err(|e| corrupt("history row", e))?;
            out.push(decode_event(from_cql(seq)?, &json)?);
        }
        Ok(out)
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
            .rows::<(i64, String)>()
            .map_err(|e| corrupt("op rows", e))?
        {
            let (seq, json) = row.map_err(|e| corrupt("op row", e))?;
            let seq = from_cql(seq)?;
            by_seq.insert(seq, decode_event(seq, &json)?);
        }
        // Newest first, as history pages are.
        Ok(by_seq.into_values().rev().collect())
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
);

fn room_from_row(row: RoomRow) -> StoreResult<RoomRecord> {
    let (id, kind, name, epoch, created_by, private, members, created_at) = row;
    let user = |u: String| UserId::parse(u).map_err(|e| corrupt("room member", e));
    Ok(RoomRecord {
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
    })
}

#[async_trait]
impl Store for CqlStore {
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
                    members,
                    room.created_at,
                ),
            )
            .await;
        let applied = match result {
            Ok(result) => applied(result)?,
            // Unknown outcome: the record decides (ours, or someone's).
            Err(e) => match self.room(&room.id).await? {
                Some(stored) => stored == *room,
                None => return Err(unavailable("create room", e)),
            },
        };
        if applied {
            Ok(())
        } else {
            Err(StoreError::Conflict(format!("room {} exists", room.id)))
        }
    }

    async fn room(&self, id: &RoomId) -> StoreResult<Option<RoomRecord>> {
        let rows = self
            .session
            .execute_unpaged(&self.statements.select_room, (id.as_str(),))
            .await
            .map_err(|e| unavailable("read room", e))?
            .into_rows_result()
            .map_err(|e| unavailable("read room", e))?;
        match rows
            .maybe_first_row::<RoomRow>()
            .map_err(|e| corrupt("room row", e))?
        {
            Some(row) => Ok(Some(room_from_row(row)?)),
            None => Ok(None),
        }
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

    async fn head(&self, room: &RoomId) -> StoreResult<Seq> {
        // Buckets fill in order, so the head is in the last non-empty one,
        // and every bucket before it is full. Most rooms fit in bucket 0.
        let mut full = match self.last_in_bucket(room, 0).await? {
            None => return Ok(Seq::ZERO),
            Some(seq) if seq < bucket_end(0) => return Ok(Seq(seq)),
            Some(_) => 0u64,
        };
        // Gallop up to an empty bucket, then bisect between.
        let mut empty = 1u64;
        loop {
            match self.last_in_bucket(room, empty).await? {
                None => break,
                Some(seq) if seq < bucket_end(empty) => return Ok(Seq(seq)),
                Some(_) => {
                    full = empty;
                    empty = empty.saturating_mul(2);
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
                .rows::<(i64, i64, String, String)>()
                .map_err(|e| corrupt("log rows", e))?
            {
                let (seq, term, node, json) = row.map_err(|e| corrupt("log row", e))?;
                let seq = from_cql(seq)?;
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
        if limit == 0 || before.get() <= 1 {
            return Ok(Vec::new());
        }
        let mut out: Vec<OpEvent> = Vec::new();
        // Start in the bucket of `before - 1`: a page inside the log needs
        // no head lookup (callers usually know the head already).
        let mut bucket = bucket_of(before.get() - 1);
        // Exclusive upper bound of the next page within `bucket`.
        let mut below = before.get();
        let mut head_checked = false;
        while out.len() < limit {
            let page = (limit - out.len()).min(READ_PAGE);
            let found = match kinds {
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
                        Vec::new()
                    } else {
                        self.fetch_ops(room, bucket, &seqs).await?
                    }
                }
            };
            if found.is_empty() && !head_checked {
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
            let full = found.len() == page;
            if let Some(oldest) = found.last() {
                below = oldest.seq.get();
            }
            out.extend(found);
            if full {
                // This bucket may hold more below `below`.
                continue;
            }
            if bucket == 0 {
                break;
            }
            bucket -= 1;
            below = bucket_end(bucket) + 1;
        }
        Ok(out)
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
                "INSERT INTO {ks}.rooms (id, kind, name, epoch, created_by, private, members, created_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS",
                false,
            )
            .await?,
            select_room: prepare(
                "SELECT id, kind, name, epoch, created_by, private, members, created_at
                 FROM {ks}.rooms WHERE id = ?",
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
