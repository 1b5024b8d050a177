//! Versioned schema migrations, applied at start-up.
//!
//! Each migration is a list of idempotent statements (`IF NOT EXISTS`; an
//! `ALTER TABLE … ADD` that finds its columns there counts as done), so two
//! processes starting at once both succeed. The versions applied are
//! recorded in `schema_migrations`; a keyspace holding a version this
//! binary does not know (written by a newer release) is refused rather than
//! used with the wrong layout.
//!
//! The op log (`room_ops`) is partitioned by `(room, bucket)`: bucket `b`
//! holds seqs `b·N + 1 ..= (b + 1)·N` with N = [`OPS_PER_BUCKET`], so no
//! partition grows without bound. In each partition, clustering lane `log`
//! holds the ops (with the writer's term and node per row) and lane
//! `kind:<kind>` one empty row per op of that kind, which is what a
//! kind-filtered history page reads. Both lanes of a batch are written by
//! one conditional write, so the index can never disagree with the log.

use std::time::Duration;

use scylla::client::session::Session;
use scylla::statement::unprepared::Statement;

use super::options::Replication;
use crate::{StoreError, StoreResult};

/// Ops per `room_ops` partition. Part of the stored layout: changing it
/// needs a migration that moves the data.
pub(crate) const OPS_PER_BUCKET: u64 = 4096;

struct Migration {
    version: i32,
    description: &'static str,
    statements: &'static [&'static str],
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "rooms, memberships, bucketed op log with kind lanes, chunked snapshots",
        statements: &[
            "CREATE TABLE IF NOT EXISTS {ks}.rooms (
            id text PRIMARY KEY,
            kind text,
            name text,
            epoch text,
            created_by text,
            private boolean,
            members list<text>,
            created_at bigint)",
            "CREATE TABLE IF NOT EXISTS {ks}.rooms_by_user (
            user text,
            room text,
            PRIMARY KEY (user, room))",
            "CREATE TABLE IF NOT EXISTS {ks}.room_ops (
            room text,
            bucket bigint,
            lane text,
            seq bigint,
            term bigint,
            node text,
            op text,
            PRIMARY KEY ((room, bucket), lane, seq))",
            "CREATE TABLE IF NOT EXISTS {ks}.room_snapshots (
            room text,
            seq bigint,
            chunk int,
            chunks int,
            data blob,
            PRIMARY KEY (room, seq, chunk))
            WITH CLUSTERING ORDER BY (seq DESC, chunk ASC)",
        ],
    },
    Migration {
        version: 2,
        description: "room time to live, room deletion: the floor of a room created under a deleted room's id, the tombstone of a deleted room, whether its removal finished",
        statements: &["ALTER TABLE {ks}.rooms ADD (
            ttl_secs bigint,
            floor bigint,
            deleted bigint,
            purged boolean)"],
    },
    Migration {
        version: 3,
        description: "webhooks: each endpoint's cursor per room, and the marks of rooms with ops perhaps not sent yet",
        statements: &[
            "CREATE TABLE IF NOT EXISTS {ks}.webhook_cursors (
            room text,
            endpoint text,
            seq bigint,
            PRIMARY KEY (room, endpoint))",
            // One partition: a mark lives from a room's first append on a
            // node until its webhooks caught up, so the table holds about
            // the rooms in use, and listing them is one partition read.
            "CREATE TABLE IF NOT EXISTS {ks}.webhook_marks (
            shard int,
            room text,
            mark text,
            PRIMARY KEY (shard, room, mark))",
        ],
    },
];

/// The newest schema version this binary writes.
pub const SCHEMA_VERSION: i32 = 3;

/// Schema changes wait for every node to agree: slower than any data
/// request, so they get their own timeout.
const DDL_TIMEOUT: Duration = Duration::from_secs(60);

/// A schema statement (or a one-off start-up query) with [`DDL_TIMEOUT`],
/// its `{ks}` replaced by the keyspace.
fn ddl(cql: &str, keyspace: &str) -> Statement {
    let mut statement = Statement::new(cql.replace("{ks}", keyspace));
    statement.set_request_timeout(Some(DDL_TIMEOUT));
    statement
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{what}: {e}"))
}

/// Whether a failed `ALTER TABLE … ADD` says its column is there already
/// (Cassandra and ScyllaDB word it in one of these ways).
fn column_exists(error: &str) -> bool {
    error.contains("already exists") || error.contains("conflicts with an existing column")
}

/// Creates the keyspace if needed and applies every missing migration.
pub(crate) async fn migrate(
    session: &Session,
    keyspace: &str,
    replication: &Replication,
) -> StoreResult<()> {
    session
        .query_unpaged(
            ddl(
                &format!(
                    "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {}",
                    replication.cql()
                ),
                keyspace,
            ),
            (),
        )
        .await
        .map_err(|e| unavailable("create keyspace", e))?;
    session
        .query_unpaged(
            ddl(
                "CREATE TABLE IF NOT EXISTS {ks}.schema_migrations (
                version int PRIMARY KEY,
                description text,
                applied_at timestamp)",
                keyspace,
            ),
            (),
        )
        .await
        .map_err(|e| unavailable("create schema_migrations", e))?;
    let applied: Vec<i32> = session
        .query_unpaged(
            ddl("SELECT version FROM {ks}.schema_migrations", keyspace),
            (),
        )
        .await
        .map_err(|e| unavailable("read schema_migrations", e))?
        .into_rows_result()
        .map_err(|e| unavailable("read schema_migrations", e))?
        .rows::<(i32,)>()
        .map_err(|e| unavailable("read schema_migrations", e))?
        .map(|row| row.map(|(v,)| v))
        .collect::<Result<_, _>>()
        .map_err(|e| unavailable("read schema_migrations", e))?;
    if let Some(newer) = applied.iter().find(|v| **v > SCHEMA_VERSION) {
        return Err(StoreError::Corrupt(format!(
            "keyspace {keyspace} has schema version {newer}, newer than this release's {SCHEMA_VERSION}: upgrade collab"
        )));
    }
    for migration in MIGRATIONS {
        if applied.contains(&migration.version) {
            continue;
        }
        tracing::info!(
            keyspace,
            version = migration.version,
            description = migration.description,
            "applying schema migration"
        );
        for statement in migration.statements {
            match session.query_unpaged(ddl(statement, keyspace), ()).await {
                Ok(_) => {}
                // Added by a process that stopped before recording the
                // migration, or that runs it right now.
                Err(e) if statement.starts_with("ALTER TABLE") && column_exists(&e.to_string()) => {
                }
                Err(e) => return Err(unavailable("schema migration", e)),
            }
        }
        session
            .query_unpaged(
                ddl(
                    "INSERT INTO {ks}.schema_migrations (version, description, applied_at)
                 VALUES (?, ?, toTimestamp(now())) IF NOT EXISTS",
                    keyspace,
                ),
                (migration.version, migration.description),
            )
            .await
            .map_err(|e| unavailable("record schema migration", e))?;
    }
    Ok(())
}
