//! The operators' endpoints, for tokens with the `admin` scope: a room as
//! its owner sees it (`GET /v1/admin/rooms/{id}`), the members of the
//! cluster with what each holds (`GET /v1/admin/cluster`), and token
//! revocation (`POST /v1/admin/revocations`).
//!
//! A room's view is asked of its owner over the bus, like any request for
//! the room; the owner answers from the live actor, or, for a room that is
//! not live, without loading it. What only the store knows (the room's
//! kind and epoch, and the head and newest op of a room that is not live)
//! is read from the store here. The cluster view is the membership as this
//! gateway sees it, with the figures each member announced in its last
//! heartbeat; `collab serve` shows its one process, counted on the spot.
//!
//! A revocation is kept in the gateway's [`Revocations`]: it is refused
//! here at once, and (through Redis) by every other gateway within a
//! second; each closes the sockets it covers (see [`crate::revoke`]).
//!
//! Checks run in this order: authentication (401), the admin scope (403,
//! whatever the rest of the request), the room id or the body (400), the
//! room's existence (404).
//!
//! [`Revocations`]: collab_ephemeral::Revocations

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use collab_bus::{BusError, Members};
use collab_protocol::envelope::{RoomInspection, RoomReply, RoomRequest};
use collab_protocol::http::{
    AdminCluster, AdminRoom, ClusterMember, ClusterMode, LastCommit, MemberRole, RevocationRequest,
    Revoked, RoomOwner,
};
use collab_protocol::{ErrorCode, NodeId, RoomId, Seq, UserId};

use crate::auth::now_secs;
use crate::error::ApiError;
use crate::http::{Admin, ApiResult, JsonBody, Ops, RoomPath, Rooms, Routes, Tokens, bad_request};

/// The longest `jti` a revocation takes.
const MAX_JTI_LEN: usize = 256;
/// How far in the future `issued_before` may be: clocks differ a little.
const ISSUED_BEFORE_SKEW_SECS: u64 = 60;

#[cfg(test)]
mod tests;

/// The inspection routes; merged into the API's router.
pub(crate) fn routes() -> Routes {
    Routes::new()
        .add("/v1/admin/rooms/{id}", get(room))
        .add("/v1/admin/cluster", get(cluster))
        .add("/v1/admin/revocations", post(revoke))
}

// === GET /v1/admin/rooms/{id} ===

async fn room(State(rooms): State<Arc<Rooms>>, _: Admin, RoomPath(room): RoomPath) -> ApiResult {
    let record = rooms
        .store
        .room(&room)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no room {room}")))?;
    let inspection = ask_owner(&rooms, &room).await?;
    let head = match inspection.head {
        Some(head) => head,
        None => rooms.store.head(&room).await?,
    };
    let last_commit = match inspection.last_commit {
        Some(last) => Some(last),
        None => newest_op(&rooms, &room, head).await?,
    };
    let body = AdminRoom {
        id: record.id,
        kind: record.kind,
        name: record.name,
        epoch: record.epoch,
        head,
        live: inspection.live,
        owner: inspection.node.map(|node| RoomOwner {
            node,
            term: inspection.term,
        }),
        members: inspection.members,
        mailbox_depth: inspection.mailbox_depth,
        last_commit,
    };
    Ok(Json(body).into_response())
}

/// The owner's view of `room`, asked over the bus like any request.
pub(crate) async fn ask_owner(rooms: &Rooms, room: &RoomId) -> Result<RoomInspection, ApiError> {
    let timeout = Duration::from_secs(rooms.request_timeout_secs);
    let request = RoomRequest::Inspect { room: room.clone() };
    match rooms.bus.request(request, timeout).await {
        Ok(RoomReply::Inspected(inspection)) => Ok(inspection),
        // No room node is up: nobody holds the room.
        Err(BusError::NoOwner) => Ok(RoomInspection::not_live(None)),
        // The owner read the room and found none (deleted meanwhile).
        Ok(RoomReply::Error {
            code: ErrorCode::NotFound,
            message,
        }) => Err(ApiError::new(ErrorCode::NotFound, message)),
        // What a room node answers to a request it cannot decode.
        Ok(RoomReply::Error {
            code: ErrorCode::BadRequest,
            message,
        }) => Err(unavailable(format!(
            "the room's owner cannot be inspected (an older version?): {message}"
        ))),
        Ok(RoomReply::Error { message, .. }) => Err(unavailable(format!(
            "the room's owner could not say: {message}"
        ))),
        Ok(other) => Err(ApiError::new(
            ErrorCode::Internal,
            format!("the room's owner answered an inspection with {other:?}"),
        )),
        Err(error) => Err(unavailable(format!(
            "the room's owner did not answer: {error}"
        ))),
    }
}

/// The room's newest op up to `head`, from the store.
async fn newest_op(
    rooms: &Rooms,
    room: &RoomId,
    head: Seq,
) -> Result<Option<LastCommit>, ApiError> {
    if head == Seq::ZERO {
        return Ok(None);
    }
    let ops = rooms.store.read_ops(room, Seq(head.get() - 1), 1).await?;
    Ok(ops.first().map(|op| LastCommit {
        seq: op.seq,
        at: op.ts,
    }))
}

fn unavailable(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::Unavailable, message)
}

// === GET /v1/admin/cluster ===

async fn cluster(State(ops): State<Arc<Ops>>, _: Admin) -> ApiResult {
    let body = match ops.bus.members() {
        Some(members) => AdminCluster {
            mode: ClusterMode::Cluster,
            members: cluster_members(&members.borrow()),
        },
        None => AdminCluster {
            mode: ClusterMode::Serve,
            members: local_members(&ops),
        },
    };
    Ok(Json(body).into_response())
}

/// One entry per live member and role, by node id; the figures are those
/// of the member's last heartbeat.
fn cluster_members(members: &Members) -> Vec<ClusterMember> {
    members
        .iter()
        .flat_map(|(node, record)| {
            let instance = if record.instance.is_empty() {
                node.to_string()
            } else {
                record.instance.clone()
            };
            let gateway = record.gateway.then(|| ClusterMember {
                node: node.clone(),
                role: MemberRole::Gateway,
                instance: instance.clone(),
                rooms: None,
                connections: record.connections,
            });
            let room_node = record.room_node.then(|| ClusterMember {
                node: node.clone(),
                role: MemberRole::RoomNode,
                instance,
                rooms: record.rooms,
                connections: None,
            });
            gateway.into_iter().chain(room_node)
        })
        .collect()
}

/// `collab serve`: this gateway and the room node beside it, counted now.
fn local_members(ops: &Ops) -> Vec<ClusterMember> {
    let gateway = NodeId::parse(ops.gateway_id.as_str())
        .ok()
        .map(|node| ClusterMember {
            instance: node.to_string(),
            node,
            role: MemberRole::Gateway,
            rooms: None,
            connections: Some(u64::try_from(ops.metrics.connections.get()).unwrap_or(0)),
        });
    let room_node = ops
        .bus
        .load()
        .and_then(|load| load.rooms())
        .and_then(|rooms| {
            let node = NodeId::parse(rooms.holder).ok()?;
            Some(ClusterMember {
                instance: node.to_string(),
                node,
                role: MemberRole::RoomNode,
                rooms: Some(rooms.value),
                connections: None,
            })
        });
    let mut members: Vec<ClusterMember> = gateway.into_iter().chain(room_node).collect();
    members.sort_by(|a, b| (&a.node, a.role).cmp(&(&b.node, b.role)));
    members
}

// === POST /v1/admin/revocations ===

async fn revoke(
    State(tokens): State<Arc<Tokens>>,
    Admin(caller): Admin,
    JsonBody(request): JsonBody<RevocationRequest>,
) -> ApiResult {
    let now = now_secs();
    let revocations = &tokens.revocations;
    let (revoked, stored) = match checked_revocation(request, now)? {
        Revocation::Token(jti) => {
            let expires_at = now.saturating_add(tokens.max_token_lifetime_secs);
            let stored = revocations.revoke_token(&jti, expires_at).await;
            (Revoked::Token { jti, expires_at }, stored)
        }
        Revocation::User {
            user,
            issued_before,
        } => {
            let stored = revocations.revoke_user(&user, issued_before).await;
            let expires_at = issued_before.saturating_add(tokens.max_token_lifetime_secs);
            let revoked = Revoked::User {
                user,
                issued_before,
                expires_at,
            };
            (revoked, stored)
        }
    };
    tracing::info!(by = %caller.user, revoked = ?revoked, shared = stored.is_ok(), "token revocation");
    if let Err(e) = stored {
        // This gateway refuses it already and hands it to Redis when it is
        // back; the others learn it then. The same request again is safe.
        return Err(unavailable(format!(
            "revoked on this gateway only, the shared store did not take it ({e}); \
             it reaches the other gateways once it does: retry to be sure"
        )));
    }
    Ok(Json(revoked).into_response())
}

/// A revocation request, checked.
#[derive(Debug, PartialEq, Eq)]
enum Revocation {
    Token(String),
    User { user: UserId, issued_before: u64 },
}

fn checked_revocation(request: RevocationRequest, now: u64) -> Result<Revocation, ApiError> {
    match (request.jti, request.user) {
        (Some(jti), None) => {
            if request.issued_before.is_some() {
                return Err(bad_request(
                    "issued_before goes with user, not with jti (a token id names one token)",
                ));
            }
            if jti.is_empty() || jti.chars().count() > MAX_JTI_LEN {
                return Err(bad_request(format!(
                    "jti must be 1 to {MAX_JTI_LEN} characters"
                )));
            }
            Ok(Revocation::Token(jti))
        }
        (None, Some(user)) => {
            let user = UserId::parse(user)?;
            let issued_before = request.issued_before.unwrap_or(now);
            if issued_before > now.saturating_add(ISSUED_BEFORE_SKEW_SECS) {
                return Err(bad_request(
                    "issued_before must not be in the future (seconds since the Unix epoch)",
                ));
            }
            Ok(Revocation::User {
                user,
                issued_before,
            })
        }
        (Some(_), Some(_)) => Err(bad_request("give either jti or user, not both")),
        (None, None) => Err(bad_request(
            "give jti (one token) or user (every token of the user issued before issued_before)",
        )),
    }
}
