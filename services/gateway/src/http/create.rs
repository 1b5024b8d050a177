//! `POST /v1/rooms`: a new room, public or private, under the caller's
//! id or a generated one, within the limits on rooms and members.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use collab_protocol::http::{CreateRoomRequest, MAX_ROOM_TTL_SECS, RoomCreated};
use collab_protocol::{Epoch, ErrorCode, RoomId, RoomKind, Seq, UserId};
use collab_store::RoomRecord;

use super::{ApiResult, Caller, JsonBody, Rooms, bad_request, forbidden, rate_limited};
use crate::error::ApiError;

/// Length of a generated room id.
const GENERATED_ID_LEN: usize = 8;
const GENERATED_ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
/// Generated ids that may collide with existing rooms before giving up. With
/// 36^8 ids a single collision is already unlikely; several in a row mean
/// something else is wrong.
const GENERATED_ID_ATTEMPTS: usize = 8;

/// `POST /v1/rooms`.
pub(super) async fn create_room(
    State(rooms): State<Arc<Rooms>>,
    caller: Caller,
    JsonBody(request): JsonBody<CreateRoomRequest>,
) -> ApiResult {
    let id = request.id.map(RoomId::parse).transpose()?;
    let members = request
        .members
        .map(|members| private_members(members, &caller.user))
        .transpose()?;
    let max_members = rooms.max_members_per_room;
    if let Some(members) = &members
        && max_members > 0
        && members.len() > max_members as usize
    {
        rooms.metrics.refusal("members_per_room");
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            format!(
                "a room has at most {max_members} members, its creator included (got {})",
                members.len()
            ),
        ));
    }
    let ttl_secs = room_ttl(request.ttl_secs, rooms.default_room_ttl_secs)?;
    if !caller.claims.can_create_rooms() {
        return Err(forbidden(
            "creating rooms needs write access to every room (\"*\")",
        ));
    }
    let max_rooms = rooms.max_rooms_per_user;
    if max_rooms > 0 {
        // Counted before creating: two creations at the same moment may
        // both pass, so a user can end up a room or two over.
        let created = rooms
            .store
            .rooms_of_user(&caller.user)
            .await?
            .iter()
            .filter(|room| room.created_by == caller.user)
            .count();
        if created >= max_rooms as usize {
            rooms.metrics.refusal("rooms_per_user");
            return Err(rate_limited(format!(
                "you have created {created} rooms, the most one user may keep \
                 ({max_rooms}); delete one first"
            )));
        }
    }
    // Checked last among the caller's faults so a request that could never
    // succeed does not use up the caller's allowance.
    if !rooms.creations.acquire(&caller.claims.sub).await {
        return Err(rate_limited("too many rooms created, slow down"));
    }

    let draft = RoomDraft {
        kind: request.kind,
        name: request.name,
        members,
        epoch: fresh_epoch()?,
        created_by: caller.user,
        created_at: now_millis(),
        ttl_secs,
    };
    let record = match id {
        // A caller-chosen id that exists is the caller's conflict (409).
        Some(id) => {
            let record = draft.record(id);
            rooms.store.create_room(&record).await?;
            record
        }
        None => create_with_generated_id(&rooms, &draft).await?,
    };
    tracing::info!(
        room = %record.id,
        kind = %record.kind,
        user = %record.created_by,
        private = record.members.is_some(),
        ttl_secs = ?record.ttl_secs,
        "room created"
    );
    if let (Some(ttl), Some(expiry)) = (record.ttl_secs, &rooms.room_expiry) {
        // Unused from its creation on: due `ttl` from now. Without this the
        // room expires only once it has been used.
        if let Err(e) = expiry.touch(&record.id, Duration::from_secs(ttl)).await {
            tracing::warn!(room = %record.id, error = %e, "could not record a new room's deadline");
        }
    }
    let body = RoomCreated {
        id: record.id,
        kind: record.kind,
        name: record.name,
        epoch: record.epoch,
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// The members of a private room: valid user ids, each once, the creator
/// always among them.
fn private_members(members: Vec<String>, creator: &UserId) -> Result<Vec<UserId>, ApiError> {
    let mut seen = HashSet::with_capacity(members.len() + 1);
    let mut out = Vec::with_capacity(members.len() + 1);
    for member in members {
        let member =
            UserId::parse(member).map_err(|_| bad_request("member ids must not be empty"))?;
        if seen.insert(member.clone()) {
            out.push(member);
        }
    }
    if !seen.contains(creator) {
        out.push(creator.clone());
    }
    Ok(out)
}

/// A new room's time to live: as asked (0: none), else the server's
/// default (0: none).
fn room_ttl(asked: Option<u64>, default: u64) -> Result<Option<u64>, ApiError> {
    match asked.unwrap_or(default) {
        0 => Ok(None),
        ttl if ttl <= MAX_ROOM_TTL_SECS => Ok(Some(ttl)),
        _ => Err(bad_request(format!(
            "ttl_secs must be from 0 (never expires) to {MAX_ROOM_TTL_SECS}"
        ))),
    }
}

/// Everything of a new room but its id.
struct RoomDraft {
    kind: RoomKind,
    name: Option<String>,
    members: Option<Vec<UserId>>,
    epoch: Epoch,
    created_by: UserId,
    created_at: i64,
    ttl_secs: Option<u64>,
}

impl RoomDraft {
    fn record(&self, id: RoomId) -> RoomRecord {
        RoomRecord {
            name: self.name.clone().unwrap_or_else(|| id.to_string()),
            id,
            kind: self.kind,
            epoch: self.epoch.clone(),
            created_by: self.created_by.clone(),
            members: self.members.clone(),
            created_at: self.created_at,
            ttl_secs: self.ttl_secs,
            floor: Seq::ZERO,
        }
    }
}

/// Creates the room under a fresh random id, drawing another when the id
/// is taken.
async fn create_with_generated_id(
    rooms: &Rooms,
    draft: &RoomDraft,
) -> Result<RoomRecord, ApiError> {
    for _ in 0..GENERATED_ID_ATTEMPTS {
        let record = draft.record(generated_room_id()?);
        match rooms.store.create_room(&record).await {
            Ok(()) => return Ok(record),
            Err(collab_store::StoreError::Conflict(_)) => {
                tracing::debug!(room = %record.id, "generated room id taken, drawing another");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::new(
        ErrorCode::Internal,
        "could not find a free room id",
    ))
}

fn generated_room_id() -> Result<RoomId, ApiError> {
    let id: String = (0..GENERATED_ID_LEN)
        .map(|_| {
            let i = rand::random_range(0..GENERATED_ID_ALPHABET.len());
            char::from(GENERATED_ID_ALPHABET[i])
        })
        .collect();
    RoomId::parse(id).map_err(ApiError::from)
}

/// A new room's epoch: random, so a room recreated after its history was
/// lost never repeats an epoch a client remembers.
fn fresh_epoch() -> Result<Epoch, ApiError> {
    Epoch::parse(format!("{:016x}", rand::random::<u64>())).map_err(ApiError::from)
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
