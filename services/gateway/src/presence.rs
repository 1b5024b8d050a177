//! Who is online, over HTTP.
//!
//! - `GET /v1/rooms/{id}/presence`: the users in a room now, as the room's
//!   actor knows them — asked of the room's owner with the same `Inspect`
//!   request as the admin view (which never loads a room: a room that is
//!   not live has nobody in it). Anyone who may read the room may ask, the
//!   same people a `joined` tells who is there.
//! - `GET /v1/users/{id}/presence`: where a user is online across every
//!   gateway, from the gateways' presence records (in Redis in a cluster;
//!   a gateway that died drops out once its records expire). Only the user
//!   themself and admins may ask: the answer lists every room the user is
//!   in, private rooms and direct messages included, which nobody else may
//!   learn. Apps that show "online" next to a name use the room's
//!   presence, or ask from their backend with an admin token.
//!
//! Checks run in the protocol's order: authentication (401), the id
//! (400), the claim or the caller (403), the room's existence (404), its
//! membership (403).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use collab_protocol::color::user_color;
use collab_protocol::http::{PresentUser, RoomPresence, UserPresence};
use collab_protocol::{ErrorCode, Scope, UserId};

use crate::admin::ask_owner;
use crate::error::ApiError;
use crate::http::{ApiResult, Caller, RoomPath, Rooms, bad_request, forbidden};

/// `GET /v1/rooms/{id}/presence`.
pub(crate) async fn room(
    State(rooms): State<Arc<Rooms>>,
    caller: Caller,
    RoomPath(room): RoomPath,
) -> ApiResult {
    caller.readable_room(&*rooms.store, &room).await?;
    let inspection = ask_owner(&rooms, &room).await?;
    // One entry per user, however many connections (tabs) they have.
    let mut users: BTreeMap<UserId, PresentUser> = BTreeMap::new();
    for member in inspection.members {
        users
            .entry(member.user.clone())
            .or_insert_with(|| PresentUser {
                color: user_color(member.user.as_str()),
                id: member.user,
                name: member.name,
                connections: 0,
            })
            .connections += 1;
    }
    let body = RoomPresence {
        room,
        users: users.into_values().collect(),
    };
    Ok(Json(body).into_response())
}

/// `GET /v1/users/{id}/presence`.
pub(crate) async fn user(
    State(rooms): State<Arc<Rooms>>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let Path(raw) = id.map_err(|e| bad_request(format!("invalid user id: {}", e.body_text())))?;
    let user = UserId::parse(raw)?;
    if user != caller.user && !caller.claims.has_scope(Scope::Admin) {
        return Err(forbidden(
            "a user's presence is for the user and for admins; a room's presence is for its readers",
        ));
    }
    let presence = rooms.presence.user(&user).await.map_err(|e| {
        ApiError::new(
            ErrorCode::Unavailable,
            format!("the presence records cannot be read now: {e}"),
        )
    })?;
    let body = UserPresence {
        online: presence.is_online(),
        user,
        connections: presence.connections,
        gateways: presence.gateways,
        rooms: presence.rooms,
    };
    Ok(Json(body).into_response())
}
