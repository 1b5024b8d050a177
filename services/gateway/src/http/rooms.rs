//! A room's metadata, its changes (name, members, a user kicked out), its
//! deletion, and the listing of the caller's rooms. Whatever changes a room
//! is done by the room's owner, over the bus, in the order of the room's
//! requests; creation is in [`super::create`].

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use collab_protocol::envelope::{RoomReply, RoomRequest};
use collab_protocol::http::{
    KickRequest, ROOMS_DEFAULT_LIMIT, ROOMS_MAX_LIMIT, RoomInfo, RoomSummary, RoomUpdated,
    RoomsPageBody, UpdateRoomRequest,
};
use collab_protocol::{Access, ErrorCode, RoomId, RoomKind, Scope, UserId};
use collab_store::{RoomRecord, RoomsPage};
use serde::Deserialize;

use super::error::not_found;
use super::extract::page_limit;
use super::{ApiResult, Caller, JsonBody, RoomPath, Rooms, bad_request, forbidden};
use crate::error::{ApiError, room_reply_error};

/// `GET /v1/rooms/{id}`.
pub(super) async fn info(
    State(rooms): State<Arc<Rooms>>,
    caller: Caller,
    RoomPath(room): RoomPath,
) -> ApiResult {
    let record = caller.readable_room(&*rooms.store, &room).await?;
    let head = rooms.store.head(&room).await?;
    let body = RoomInfo {
        id: record.id,
        kind: record.kind,
        name: record.name,
        epoch: record.epoch,
        head,
        ttl_secs: record.ttl_secs,
    };
    Ok(Json(body).into_response())
}

/// `DELETE /v1/rooms/{id}`: for the room's creator or an admin; done by
/// the room's owner (over the bus), like everything that changes a room.
pub(super) async fn delete(
    State(rooms): State<Arc<Rooms>>,
    caller: Caller,
    RoomPath(room): RoomPath,
) -> ApiResult {
    let record = managed_room(&rooms, &caller, &room, "delete").await?;
    // The epoch read here: a room created since under this id is not the
    // one the caller was allowed to delete.
    let request = RoomRequest::Delete {
        room: room.clone(),
        epoch: Some(record.epoch),
    };
    match rooms.bus.request(request, rooms.request_timeout()).await {
        Ok(RoomReply::Done) => {
            let admin = caller.claims.has_scope(Scope::Admin);
            tracing::info!(%room, user = %caller.user, admin, "room deleted");
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        other => Err(room_reply_error(other, "retry").into()),
    }
}

/// The query of the room listings, as text: the handler parses each
/// parameter itself to report which one is wrong.
#[derive(Debug, Default, Deserialize)]
pub(super) struct RoomsQuery {
    member: Option<String>,
    kind: Option<String>,
    limit: Option<String>,
    after: Option<String>,
}

/// `GET /v1/rooms?member=me`: the caller's rooms, a page at a time.
pub(super) async fn list(
    State(rooms): State<Arc<Rooms>>,
    caller: Caller,
    query: Result<Query<RoomsQuery>, QueryRejection>,
) -> ApiResult {
    rooms_page(&rooms, &caller, query, true).await
}

/// `GET /v1/me/rooms`: the older name of `GET /v1/rooms?member=me`, with
/// the same parameters (`member` may be left out) and answer.
pub(super) async fn mine(
    State(rooms): State<Arc<Rooms>>,
    caller: Caller,
    query: Result<Query<RoomsQuery>, QueryRejection>,
) -> ApiResult {
    rooms_page(&rooms, &caller, query, false).await
}

/// One page of the caller's rooms (the rooms it created and the private
/// rooms it is a member of), ordered by id, read from the store's index
/// of the user's rooms. `member_required`: the query must say
/// `member=me` (the only listing there is, so far).
async fn rooms_page(
    rooms: &Rooms,
    caller: &Caller,
    query: Result<Query<RoomsQuery>, QueryRejection>,
    member_required: bool,
) -> ApiResult {
    let Query(query) =
        query.map_err(|e| bad_request(format!("invalid query: {}", e.body_text())))?;
    match query.member.as_deref() {
        Some("me") => {}
        None if !member_required => {}
        _ => {
            return Err(bad_request(
                "member must be \"me\": only the caller's rooms are listed",
            ));
        }
    }
    let kind = match query.kind.as_deref() {
        None | Some("") => None,
        Some("board") => Some(RoomKind::Board),
        Some("channel") => Some(RoomKind::Channel),
        Some(_) => return Err(bad_request("kind must be board or channel")),
    };
    let limit = page_limit(query.limit.as_deref(), ROOMS_DEFAULT_LIMIT, ROOMS_MAX_LIMIT)?;
    let after = match query.after {
        None => None,
        Some(after) => Some(
            RoomId::parse(after)
                .map_err(|e| bad_request(format!("after must be a room id: {}", e.message)))?,
        ),
    };
    // One more than the page: whether it exists tells if there is a next
    // page, without a second query.
    let page = RoomsPage {
        after,
        limit: limit + 1,
        kind,
    };
    let mut records = rooms.store.rooms_of_user_page(&caller.user, &page).await?;
    let next = if records.len() > limit {
        records.truncate(limit);
        records.last().map(|record| record.id.to_string())
    } else {
        None
    };
    let summaries = records
        .into_iter()
        .map(|record| RoomSummary {
            id: record.id,
            kind: record.kind,
            name: record.name,
        })
        .collect();
    Ok(Json(RoomsPageBody {
        rooms: summaries,
        next,
    })
    .into_response())
}

/// `PATCH /v1/rooms/{id}`: a new name, members added and removed; for the
/// room's creator or an admin, done by the room's owner (over the bus) in
/// the order of the room's requests.
pub(super) async fn update(
    State(rooms): State<Arc<Rooms>>,
    caller: Caller,
    RoomPath(room): RoomPath,
    JsonBody(request): JsonBody<UpdateRoomRequest>,
) -> ApiResult {
    if let Some(name) = &request.name
        && name.trim().is_empty()
    {
        return Err(bad_request("name must not be empty"));
    }
    let members = request.members.unwrap_or_default();
    let add = user_ids(members.add, "members.add")?;
    let remove = user_ids(members.remove, "members.remove")?;
    if request.name.is_none() && add.is_empty() && remove.is_empty() {
        return Err(bad_request(
            "nothing to change: give a name, or members to add or remove",
        ));
    }
    let body = change_room(&rooms, &caller, &room, "change", request.name, add, remove).await?;
    tracing::info!(%room, user = %caller.user, "room changed");
    Ok(Json(body).into_response())
}

/// `POST /v1/rooms/{id}/kick`: takes a user out of a private room now;
/// for its creator or an admin. A `PATCH` removing the member, by
/// another name.
pub(super) async fn kick(
    State(rooms): State<Arc<Rooms>>,
    caller: Caller,
    RoomPath(room): RoomPath,
    JsonBody(request): JsonBody<KickRequest>,
) -> ApiResult {
    let user = UserId::parse(request.user).map_err(|_| bad_request("user must not be empty"))?;
    let remove = vec![user.clone()];
    let what = "remove users from";
    change_room(&rooms, &caller, &room, what, None, Vec::new(), remove).await?;
    tracing::info!(%room, %user, by = %caller.user, "user removed from room");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Changes a room `caller` may manage (`what` it wants to do, for the
/// message), through its owner, in the order of the room's requests: the
/// one path of `PATCH` and kick.
async fn change_room(
    rooms: &Rooms,
    caller: &Caller,
    room: &RoomId,
    what: &str,
    name: Option<String>,
    add: Vec<UserId>,
    remove: Vec<UserId>,
) -> Result<RoomUpdated, ApiError> {
    let record = managed_room(rooms, caller, room, what).await?;
    check_members_change(rooms, &record, &add, &remove)?;
    let request = RoomRequest::Update {
        room: room.clone(),
        epoch: Some(record.epoch),
        name,
        add,
        remove,
    };
    match rooms.bus.request(request, rooms.request_timeout()).await {
        Ok(RoomReply::Updated(body)) => Ok(body),
        other => Err(room_reply_error(other, "retry").into()),
    }
}

/// User ids from a request body: each valid, each once.
fn user_ids(raw: Vec<String>, field: &str) -> Result<Vec<UserId>, ApiError> {
    let mut out: Vec<UserId> = Vec::with_capacity(raw.len());
    for id in raw {
        let id = UserId::parse(id)
            .map_err(|_| bad_request(format!("{field}: user ids must not be empty")))?;
        if !out.contains(&id) {
            out.push(id);
        }
    }
    Ok(out)
}

/// The room `caller` may change or delete (`what` it wants to do, for the
/// message): covered by the token with write access (or an admin token),
/// existing, and created by the caller (or the caller is an admin),
/// checked in that order.
async fn managed_room(
    rooms: &Rooms,
    caller: &Caller,
    room: &RoomId,
    what: &str,
) -> Result<RoomRecord, ApiError> {
    let admin = caller.claims.has_scope(Scope::Admin);
    // Checked before existence, so that a token never learns which rooms
    // it does not cover exist.
    if !admin && caller.claims.access(room) != Some(Access::Write) {
        return Err(forbidden(format!(
            "the token does not give write access to room {room}"
        )));
    }
    let record = rooms
        .store
        .room(room)
        .await?
        .ok_or_else(|| not_found(format!("no room {room}")))?;
    if !admin && record.created_by != caller.user {
        return Err(forbidden(format!(
            "only the creator of room {room} (or an admin) may {what} it"
        )));
    }
    Ok(record)
}

/// Whether `record` can take the members change: a private room, its
/// creator kept, and no more members than a room may have (counted on the
/// record read here; two changes at once may end a member or two over, as
/// with room creation). The room's owner checks the first two again.
fn check_members_change(
    rooms: &Rooms,
    record: &RoomRecord,
    add: &[UserId],
    remove: &[UserId],
) -> Result<(), ApiError> {
    if add.is_empty() && remove.is_empty() {
        return Ok(());
    }
    let Some(members) = &record.members else {
        return Err(bad_request(format!(
            "room {} is public: anyone may join it, so it has no members to change",
            record.id
        )));
    };
    if remove.contains(&record.created_by) {
        return Err(bad_request(format!(
            "{} created room {} and is always a member of it",
            record.created_by, record.id
        )));
    }
    let max_members = rooms.max_members_per_room;
    if max_members > 0 {
        let after = members
            .iter()
            .filter(|member| !remove.contains(member))
            .count()
            + add
                .iter()
                .filter(|user| !remove.contains(user) && !members.contains(user))
                .count();
        if after > max_members as usize {
            rooms.metrics.refusal("members_per_room");
            return Err(ApiError::new(
                ErrorCode::TooLarge,
                format!(
                    "a room has at most {max_members} members, its creator included (would have {after})"
                ),
            ));
        }
    }
    Ok(())
}
