//! The HTTP API: creating, changing and deleting rooms, removing a user
//! from a room, reading a room's metadata and history, listing the caller's
//! rooms, the dev token endpoint, the API's own description
//! (`/v1/openapi.json`), and the operational endpoints (health, readiness,
//! metrics). With a metrics listener of its
//! own (`metrics_listen`), `/metrics` is served only there, by
//! [`metrics_router`]. Every request is counted by route and status. The
//! admin endpoints are in [`crate::admin`], a backend's publishing in
//! [`crate::publish`]; both share the steps here.
//!
//! At most `max_concurrent_requests` requests are served at once; more are
//! refused with 503 `unavailable` ([`limit_concurrency`]), except the
//! probes and the metrics.
//!
//! Every route is added through [`Routes`], which keeps the list of paths
//! the router serves: a test checks it against `docs/openapi.json`, the
//! document served at `/v1/openapi.json`, both ways.
//!
//! Every error is answered as `{"error": {"code", "message"}}` with the
//! status of its code and counted in the `errors` metric. That includes the
//! cases axum would otherwise answer in plain text (a malformed body, path
//! or query, an unknown path, a wrong method), which is why handlers take
//! extractor results instead of letting extractors reject.
//!
//! Checks run in the protocol's precedence: authentication, then anything
//! malformed (`bad_request`), then the token's claim (`forbidden`, whether
//! the room exists or not, so a claim never reveals which rooms exist), then
//! the room's existence (`not_found`), then its membership (`forbidden`).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::num::IntErrorKind;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, ExtensionRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use axum::{Json, Router};
use collab_protocol::envelope::{RoomReply, RoomRequest};
use collab_protocol::http::{
    CreateRoomRequest, DEV_TOKEN_MAX_TTL_SECS, DevTokenRequest, DevTokenResponse,
    HISTORY_DEFAULT_LIMIT, HISTORY_MAX_LIMIT, KickRequest, MAX_ROOM_TTL_SECS, ROOMS_DEFAULT_LIMIT,
    ROOMS_MAX_LIMIT, RoomCreated, RoomInfo, RoomSummary, RoomsPageBody, UpdateRoomRequest,
};
use collab_protocol::ops::parse_kinds;
use collab_protocol::{
    Access, Claims, Epoch, ErrorCode, OpKind, RoomId, RoomKind, Scope, Seq, ServerFrame, UserId,
};
use collab_store::{RoomRecord, RoomsPage};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::Shared;
use crate::auth::{now_secs, request_token};
use crate::error::{ApiError, room_reply_error};

/// How long a dev token is valid.
/// Length of a generated room id.
const GENERATED_ID_LEN: usize = 8;
const GENERATED_ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
/// Generated ids that may collide with existing rooms before giving up. With
/// 36^8 ids a single collision is already unlikely; several in a row mean
/// something else is wrong.
const GENERATED_ID_ATTEMPTS: usize = 8;

pub(crate) type ApiResult = Result<Response, ApiError>;

/// Routes, and the paths they serve. Every route of the gateway is added
/// through [`Routes::add`], so [`Routes::paths`] is exactly what the
/// router serves (the OpenAPI test relies on it).
pub(crate) struct Routes {
    router: Router<Arc<Shared>>,
    paths: Vec<&'static str>,
}

impl Routes {
    pub(crate) fn new() -> Routes {
        Routes {
            router: Router::new(),
            paths: Vec::new(),
        }
    }

    pub(crate) fn add(mut self, path: &'static str, methods: MethodRouter<Arc<Shared>>) -> Routes {
        self.router = self.router.route(path, methods);
        self.paths.push(path);
        self
    }

    pub(crate) fn merge(mut self, other: Routes) -> Routes {
        self.router = self.router.merge(other.router);
        self.paths.extend(other.paths);
        self
    }

    /// Applies `f` to the routes added so far (a middleware layer).
    fn map(mut self, f: impl FnOnce(Router<Arc<Shared>>) -> Router<Arc<Shared>>) -> Routes {
        self.router = f(self.router);
        self
    }

    /// The paths served, in axum's syntax (`/v1/rooms/{id}`).
    #[cfg(test)]
    pub(crate) fn paths(&self) -> &[&'static str] {
        &self.paths
    }
}

/// The API's routes, the probes, and `/metrics` unless it has a listener
/// of its own.
pub(crate) fn routes(shared: &Arc<Shared>) -> Routes {
    let api = Routes::new()
        .add("/v1/ws", get(crate::ws::upgrade))
        .add("/v1/rooms", get(list_rooms).post(create_room))
        .add(
            "/v1/rooms/{id}",
            get(room_info).patch(update_room).delete(delete_room),
        )
        .add("/v1/rooms/{id}/kick", post(kick))
        .add("/v1/rooms/{id}/history", get(history))
        .add("/v1/rooms/{id}/snapshot", crate::snapshot::route())
        .add("/v1/rooms/{id}/ops", post(crate::publish::publish))
        .add("/v1/rooms/{id}/presence", get(crate::presence::room))
        .add("/v1/users/{id}/presence", get(crate::presence::user))
        .add("/v1/me/rooms", get(my_rooms))
        .add("/v1/dev/token", post(dev_token))
        .add("/v1/openapi.json", get(openapi))
        .merge(crate::admin::routes())
        .merge(crate::web::routes())
        // The probes and the metrics, below, are never refused: a busy
        // gateway is still alive, and still watched.
        .map(|router| {
            router.layer(axum::middleware::from_fn_with_state(
                shared.clone(),
                limit_concurrency,
            ))
        });
    let mut routes = Routes::new()
        .add("/healthz", get(healthz))
        .add("/readyz", get(readyz));
    if !shared.config.metrics_elsewhere {
        routes = routes.add("/metrics", get(metrics));
    }
    routes.merge(api)
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let router = routes(&shared)
        .router
        // Applies to the routes above, so it must come after them.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .with_state(shared.clone());
    shared.exporter.instrument(router)
}

/// The metrics listener's routes: `/metrics` and the probes.
pub(crate) fn metrics_router(shared: Arc<Shared>) -> Router {
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .with_state(shared.clone());
    shared.exporter.instrument(router)
}

/// Serves a request only while fewer than `max_concurrent_requests` are in
/// progress; past it, answers 503 `unavailable` at once rather than
/// queueing (load shedding): a client retries, and the requests in
/// progress keep their memory and their time.
async fn limit_concurrency(
    State(shared): State<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(slots) = &shared.http_slots else {
        return next.run(request).await;
    };
    match slots.clone().try_acquire_owned() {
        Ok(_permit) => next.run(request).await,
        Err(_) => {
            shared.metrics.refusal("overloaded");
            failure(
                &shared,
                "overloaded",
                ApiError::new(
                    ErrorCode::Unavailable,
                    "too many requests in progress; retry shortly",
                ),
            )
        }
    }
}

// === handlers ===

/// `POST /v1/rooms`.
async fn create_room(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = create_room_inner(&shared, &headers, body).await;
    reply(&shared, "create_room", result)
}

async fn create_room_inner(
    shared: &Shared,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let caller = authenticate(shared, headers).await?;
    let request: CreateRoomRequest = parse_json(body)?;
    let id = request.id.map(RoomId::parse).transpose()?;
    let members = request
        .members
        .map(|members| private_members(members, &caller.user))
        .transpose()?;
    let max_members = shared.config.max_members_per_room;
    if let Some(members) = &members
        && max_members > 0
        && members.len() > max_members as usize
    {
        shared.metrics.refusal("members_per_room");
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            format!(
                "a room has at most {max_members} members, its creator included (got {})",
                members.len()
            ),
        ));
    }
    let ttl_secs = room_ttl(request.ttl_secs, shared.config.default_room_ttl_secs)?;
    if !caller.claims.can_create_rooms() {
        return Err(forbidden(
            "creating rooms needs write access to every room (\"*\")",
        ));
    }
    let max_rooms = shared.config.max_rooms_per_user;
    if max_rooms > 0 {
        // Counted before creating: two creations at the same moment may
        // both pass, so a user can end up a room or two over.
        let created = shared
            .store
            .rooms_of_user(&caller.user)
            .await?
            .iter()
            .filter(|room| room.created_by == caller.user)
            .count();
        if created >= max_rooms as usize {
            shared.metrics.refusal("rooms_per_user");
            return Err(rate_limited(format!(
                "you have created {created} rooms, the most one user may keep \
                 ({max_rooms}); delete one first"
            )));
        }
    }
    // Checked last among the caller's faults so a request that could never
    // succeed does not use up the caller's allowance.
    if !shared.limiters.rooms.acquire(&caller.claims.sub).await {
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
            shared.store.create_room(&record).await?;
            record
        }
        None => create_with_generated_id(shared, &draft).await?,
    };
    tracing::info!(
        room = %record.id,
        kind = %record.kind,
        user = %record.created_by,
        private = record.members.is_some(),
        ttl_secs = ?record.ttl_secs,
        "room created"
    );
    if let (Some(ttl), Some(expiry)) = (record.ttl_secs, &shared.room_expiry) {
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

/// `GET /v1/rooms/{id}`.
async fn room_info(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let result = room_info_inner(&shared, &headers, id).await;
    reply(&shared, "room_info", result)
}

async fn room_info_inner(
    shared: &Shared,
    headers: &HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let caller = authenticate(shared, headers).await?;
    let room = path_room_id(id)?;
    let record = readable_room(shared, &caller, &room).await?;
    let head = shared.store.head(&room).await?;
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
async fn delete_room(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let result = delete_room_inner(&shared, &headers, id).await;
    reply(&shared, "delete_room", result)
}

async fn delete_room_inner(
    shared: &Shared,
    headers: &HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let caller = authenticate(shared, headers).await?;
    let room = path_room_id(id)?;
    let admin = caller.claims.has_scope(Scope::Admin);
    // Checked before existence, so that a token never learns which rooms
    // it does not cover exist.
    if !admin && caller.claims.access(&room) != Some(Access::Write) {
        return Err(forbidden(format!(
            "the token does not give write access to room {room}"
        )));
    }
    let record = shared
        .store
        .room(&room)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no room {room}")))?;
    if !admin && record.created_by != caller.user {
        return Err(forbidden(format!(
            "only the creator of room {room} (or an admin) may delete it"
        )));
    }
    // The epoch read here: a room created since under this id is not the
    // one the caller was allowed to delete.
    let request = RoomRequest::Delete {
        room: room.clone(),
        epoch: Some(record.epoch),
    };
    let timeout = Duration::from_secs(shared.config.request_timeout_secs.max(1));
    match shared.bus.request(request, timeout).await {
        Ok(RoomReply::Done) => {
            tracing::info!(%room, user = %caller.user, admin, "room deleted");
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        other => Err(room_reply_error(other, "retry").into()),
    }
}

/// The query of `GET /v1/rooms/{id}/history`, as text: the handler parses
/// each parameter itself to report which one is wrong.
#[derive(Debug, Default, Deserialize)]
struct HistoryQuery {
    before: Option<String>,
    limit: Option<String>,
    kinds: Option<String>,
}

/// The history page as sent: each op exactly as its `op` frame (`type`
/// included), so a client can treat it like one it received live. It
/// decodes as [`collab_protocol::http::HistoryPage`], which ignores `type`.
#[derive(Debug, Serialize)]
struct HistoryPageFrames {
    ops: Vec<ServerFrame>,
    next_before: Option<Seq>,
}

/// `GET /v1/rooms/{id}/history`.
async fn history(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Response {
    let result = history_inner(&shared, &headers, id, query).await;
    reply(&shared, "history", result)
}

async fn history_inner(
    shared: &Shared,
    headers: &HeaderMap,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> ApiResult {
    let caller = authenticate(shared, headers).await?;
    let room = path_room_id(id)?;
    let Query(query) =
        query.map_err(|e| bad_request(format!("invalid query: {}", e.body_text())))?;
    let before = parse_before(query.before.as_deref())?;
    let limit = parse_limit(query.limit.as_deref())?;
    let kinds = parse_kinds_param(query.kinds.as_deref())?;
    readable_room(shared, &caller, &room).await?;

    // `before` defaults to, and is clamped at, head + 1: a page asked for
    // beyond the head is the newest page.
    let head = shared.store.head(&room).await?;
    let before = Seq(before.map_or(head.next().get(), |b| b.min(head.next().get())));
    // One more than the page: whether it exists tells if an older op of
    // these kinds does, without a second query.
    let mut ops = shared
        .store
        .history(&room, before, limit + 1, kinds.as_deref())
        .await?;
    let next_before = if ops.len() > limit {
        ops.truncate(limit);
        ops.last().map(|op| op.seq)
    } else {
        None
    };
    let body = HistoryPageFrames {
        ops: ops.into_iter().map(ServerFrame::Op).collect(),
        next_before,
    };
    Ok(Json(body).into_response())
}

/// The query of the room listings, as text: the handler parses each
/// parameter itself to report which one is wrong.
#[derive(Debug, Default, Deserialize)]
struct RoomsQuery {
    member: Option<String>,
    kind: Option<String>,
    limit: Option<String>,
    after: Option<String>,
}

/// `GET /v1/rooms?member=me`: the caller's rooms, a page at a time.
async fn list_rooms(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    query: Result<Query<RoomsQuery>, QueryRejection>,
) -> Response {
    let result = rooms_page(&shared, &headers, query, true).await;
    reply(&shared, "list_rooms", result)
}

/// `GET /v1/me/rooms`: the older name of `GET /v1/rooms?member=me`, with
/// the same parameters (`member` may be left out) and answer.
async fn my_rooms(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    query: Result<Query<RoomsQuery>, QueryRejection>,
) -> Response {
    let result = rooms_page(&shared, &headers, query, false).await;
    reply(&shared, "my_rooms", result)
}

/// One page of the caller's rooms (the rooms it created and the private
/// rooms it is a member of), ordered by id, read from the store's index
/// of the user's rooms. `member_required`: the query must say
/// `member=me` (the only listing there is, so far).
async fn rooms_page(
    shared: &Shared,
    headers: &HeaderMap,
    query: Result<Query<RoomsQuery>, QueryRejection>,
    member_required: bool,
) -> ApiResult {
    let caller = authenticate(shared, headers).await?;
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
    let limit = match query.limit.as_deref() {
        None => ROOMS_DEFAULT_LIMIT,
        Some(raw) => match raw.parse::<u32>() {
            Ok(limit) if (1..=ROOMS_MAX_LIMIT).contains(&limit) => limit,
            _ => {
                return Err(bad_request(format!(
                    "limit must be an integer from 1 to {ROOMS_MAX_LIMIT}"
                )));
            }
        },
    } as usize;
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
    let mut records = shared.store.rooms_of_user_page(&caller.user, &page).await?;
    let next = if records.len() > limit {
        records.truncate(limit);
        records.last().map(|record| record.id.to_string())
    } else {
        None
    };
    let rooms = records
        .into_iter()
        .map(|record| RoomSummary {
            id: record.id,
            kind: record.kind,
            name: record.name,
        })
        .collect();
    Ok(Json(RoomsPageBody { rooms, next }).into_response())
}

/// `PATCH /v1/rooms/{id}`: a new name, members added and removed; for the
/// room's creator or an admin, done by the room's owner (over the bus) in
/// the order of the room's requests.
async fn update_room(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = update_room_inner(&shared, &headers, id, body).await;
    reply(&shared, "update_room", result)
}

async fn update_room_inner(
    shared: &Shared,
    headers: &HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let caller = authenticate(shared, headers).await?;
    let room = path_room_id(id)?;
    let request: UpdateRoomRequest = parse_json(body)?;
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
    let body = change_room(shared, &caller, &room, "change", request.name, add, remove).await?;
    tracing::info!(%room, user = %caller.user, "room changed");
    Ok(Json(body).into_response())
}

/// `POST /v1/rooms/{id}/kick`: takes a user out of a private room now;
/// for its creator or an admin. A `PATCH` removing the member, by
/// another name.
async fn kick(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = kick_inner(&shared, &headers, id, body).await;
    reply(&shared, "kick", result)
}

async fn kick_inner(
    shared: &Shared,
    headers: &HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let caller = authenticate(shared, headers).await?;
    let room = path_room_id(id)?;
    let request: KickRequest = parse_json(body)?;
    let user = UserId::parse(request.user).map_err(|_| bad_request("user must not be empty"))?;
    let remove = vec![user.clone()];
    change_room(
        shared,
        &caller,
        &room,
        "remove users from",
        None,
        Vec::new(),
        remove,
    )
    .await?;
    tracing::info!(%room, %user, by = %caller.user, "user removed from room");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Changes a room `caller` may manage (`what` it wants to do, for the
/// message), through its owner, in the order of the room's requests: the
/// one path of `PATCH` and kick.
async fn change_room(
    shared: &Shared,
    caller: &Caller,
    room: &RoomId,
    what: &str,
    name: Option<String>,
    add: Vec<UserId>,
    remove: Vec<UserId>,
) -> Result<collab_protocol::http::RoomUpdated, ApiError> {
    let record = managed_room(shared, caller, room, what).await?;
    check_members_change(shared, &record, &add, &remove)?;
    let request = RoomRequest::Update {
        room: room.clone(),
        epoch: Some(record.epoch),
        name,
        add,
        remove,
    };
    match shared.bus.request(request, request_timeout(shared)).await {
        Ok(RoomReply::Updated(body)) => Ok(body),
        other => Err(room_reply_error(other, "retry").into()),
    }
}

fn request_timeout(shared: &Shared) -> Duration {
    Duration::from_secs(shared.config.request_timeout_secs.max(1))
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

/// The room `caller` may change (`what` it wants to do, for the message):
/// covered by the token with write access (or an admin token), existing,
/// and created by the caller (or the caller is an admin), checked in that
/// order, like a deletion.
async fn managed_room(
    shared: &Shared,
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
    let record = shared
        .store
        .room(room)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no room {room}")))?;
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
    shared: &Shared,
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
    let max_members = shared.config.max_members_per_room;
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
            shared.metrics.refusal("members_per_room");
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

/// `GET /v1/openapi.json`: the API's description, `docs/openapi.json`.
async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

/// The OpenAPI 3.1 document of the HTTP API, served as it is kept.
pub(crate) const OPENAPI: &str = include_str!("../../../docs/openapi.json");

/// `POST /v1/dev/token`.
async fn dev_token(
    State(shared): State<Arc<Shared>>,
    peer: Result<ConnectInfo<SocketAddr>, ExtensionRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // Served without connection info (a router driven directly), every
    // caller shares one bucket rather than escaping the limit.
    let peer = peer.ok().map(|ConnectInfo(addr)| addr);
    let result = dev_token_inner(&shared, peer, body).await;
    reply(&shared, "dev_token", result)
}

async fn dev_token_inner(
    shared: &Shared,
    peer: Option<SocketAddr>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    // Outside dev mode the endpoint does not exist.
    if !shared.auth.dev_mode() {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "the dev token endpoint is only served in dev mode",
        ));
    }
    let key = match peer {
        Some(addr) => format!("ip:{}", addr.ip()),
        None => "ip:unknown".to_owned(),
    };
    if !shared.limiters.http.acquire(&key).await {
        return Err(rate_limited("too many requests, slow down"));
    }
    let request: DevTokenRequest = parse_json(body)?;
    if request.user.is_empty() {
        return Err(bad_request("user must not be empty"));
    }
    let ttl = request.ttl_secs.unwrap_or(DEV_TOKEN_MAX_TTL_SECS);
    if !(1..=DEV_TOKEN_MAX_TTL_SECS).contains(&ttl) {
        return Err(bad_request(format!(
            "ttl_secs must be 1 to {DEV_TOKEN_MAX_TTL_SECS}"
        )));
    }
    let claims = Claims {
        sub: request.user,
        // Never longer than a revocation is kept.
        exp: now_secs() + ttl.min(shared.config.max_token_lifetime_secs.max(1)),
        name: request.name.filter(|name| !name.is_empty()),
        // No `rooms` claim: write access to every room.
        rooms: None,
        // Passed on as asked (`"admin"` opens the inspection endpoints);
        // anyone who reaches a dev server is its operator anyway.
        scope: request
            .scope
            .map(|scope| scope.split_ascii_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|scope| !scope.is_empty()),
        jti: Some(crate::auth::new_token_id()),
        iat: Some(now_secs()),
    };
    let token = shared
        .auth
        .mint(&claims)
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("minting failed: {e}")))?;
    tracing::info!(user = %claims.sub, scope = ?claims.scope, "dev token minted");
    Ok(Json(DevTokenResponse { token }).into_response())
}

/// `GET /healthz`: the process runs.
async fn healthz() -> &'static str {
    "ok"
}

/// Whether the gateway takes clients now: accepting, and every dependency
/// ready. `Err` says why not.
async fn readiness(shared: &Shared) -> Result<(), &'static str> {
    // While shutting down (or cut off from the cluster) the answer is no
    // whatever the dependencies say, so load balancers stop sending new
    // clients here.
    if let Some(why) = shared.admission.refusal() {
        return Err(why);
    }
    if !shared.readiness.ready().await {
        return Err("dependencies not ready");
    }
    Ok(())
}

/// `GET /readyz`: 200 only while accepting and every dependency is ready.
async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    match readiness(&shared).await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(why) => failure(
            &shared,
            "readyz",
            ApiError::new(ErrorCode::Unavailable, why),
        ),
    }
}

/// `GET /metrics`: the registry in the OpenMetrics text format, with
/// `collab_ready` as `/readyz` would answer now.
async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let ready = readiness(&shared).await.is_ok();
    match shared.exporter.response(ready) {
        Ok(response) => response,
        Err(e) => failure(
            &shared,
            "metrics",
            ApiError::new(ErrorCode::Internal, format!("encoding metrics: {e}")),
        ),
    }
}

/// Unknown paths.
async fn not_found(State(shared): State<Arc<Shared>>, uri: Uri) -> Response {
    failure(
        &shared,
        "fallback",
        ApiError::new(ErrorCode::NotFound, format!("no such path: {}", uri.path())),
    )
}

/// A known path with a method it does not serve. The protocol has no code
/// for it; `bad_request` with status 405 keeps the body in our format.
/// Axum adds the `Allow` header.
async fn method_not_allowed(State(shared): State<Arc<Shared>>, method: Method) -> Response {
    let mut response = failure(
        &shared,
        "fallback",
        bad_request(format!("method {method} not allowed here")),
    );
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
}

// === shared steps ===

/// An authenticated caller.
pub(crate) struct Caller {
    pub(crate) claims: Claims,
    pub(crate) user: UserId,
}

/// Verifies the bearer token and takes one token from the caller's HTTP
/// allowance.
pub(crate) async fn authenticate(shared: &Shared, headers: &HeaderMap) -> Result<Caller, ApiError> {
    // HTTP clients can always set headers: unlike the WebSocket endpoint,
    // no `?token=` here, which would land tokens in access logs.
    let token = request_token(headers, None)
        .ok_or_else(|| unauthorized("missing bearer token (Authorization: Bearer <JWT>)"))?;
    let claims = shared
        .check_token(token)
        .await
        .map_err(|e| unauthorized(e.to_string()))?;
    let user = UserId::parse(claims.sub.clone())
        .map_err(|_| unauthorized("the token's sub must not be empty"))?;
    // Users and addresses (the dev token) share the limiter: prefixes keep
    // a user id from colliding with an address.
    let key = format!("user:{}", claims.sub);
    if !shared.limiters.http.acquire(&key).await {
        return Err(rate_limited("too many requests, slow down"));
    }
    Ok(Caller { claims, user })
}

/// The room `caller` may read: covered by the claim, existing, and admitting
/// the caller, checked in that order.
pub(crate) async fn readable_room(
    shared: &Shared,
    caller: &Caller,
    room: &RoomId,
) -> Result<RoomRecord, ApiError> {
    // Read access suffices for metadata and history.
    if caller.claims.access(room).is_none() {
        return Err(forbidden(format!("the token does not cover room {room}")));
    }
    let record = shared
        .store
        .room(room)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no room {room}")))?;
    if !record.admits(&caller.user) {
        return Err(forbidden(format!("room {room} is private")));
    }
    Ok(record)
}

pub(crate) fn path_room_id(path: Result<Path<String>, PathRejection>) -> Result<RoomId, ApiError> {
    let Path(raw) = path.map_err(|e| bad_request(format!("invalid room id: {}", e.body_text())))?;
    Ok(RoomId::parse(raw)?)
}

/// A JSON object body. Anything else is `bad_request` (or `too_large` over
/// the body limit) in our error format.
pub(crate) fn parse_json<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let value = json_body(body)?;
    // serde would also accept a struct written as an array; the API takes
    // objects only.
    if !value.is_object() {
        return Err(bad_request("body must be a JSON object"));
    }
    T::deserialize(value).map_err(|e| bad_request(format!("invalid body: {e}")))
}

/// A JSON body of any shape. Anything else is `bad_request` (or
/// `too_large` over the body limit) in our error format.
pub(crate) fn json_body(
    body: Result<Bytes, BytesRejection>,
) -> Result<serde_json::Value, ApiError> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(ErrorCode::TooLarge, "request body too large")
        } else {
            bad_request(format!("unreadable body: {}", rejection.body_text()))
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| bad_request(format!("body is not valid JSON: {e}")))
}

/// `before`: an integer ≥ 1. A number too big for a seq is as good as the
/// largest one, since it is clamped to head + 1 anyway.
fn parse_before(raw: Option<&str>) -> Result<Option<u64>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    match raw.parse::<u64>() {
        Ok(0) => Err(bad_request("before must be at least 1")),
        Ok(before) => Ok(Some(before)),
        Err(e) if *e.kind() == IntErrorKind::PosOverflow => Ok(Some(u64::MAX)),
        Err(_) => Err(bad_request("before must be an integer of at least 1")),
    }
}

/// `limit`: an integer from 1 to [`HISTORY_MAX_LIMIT`].
fn parse_limit(raw: Option<&str>) -> Result<usize, ApiError> {
    let limit = match raw {
        None => HISTORY_DEFAULT_LIMIT,
        Some(raw) => match raw.parse::<u32>() {
            Ok(limit) if (1..=HISTORY_MAX_LIMIT).contains(&limit) => limit,
            _ => {
                return Err(bad_request(format!(
                    "limit must be an integer from 1 to {HISTORY_MAX_LIMIT}"
                )));
            }
        },
    };
    usize::try_from(limit).map_err(|_| bad_request("limit too large for this platform"))
}

/// `kinds`: a comma list of op kinds. An empty value filters nothing, like
/// an absent one (a page of no kinds at all would be pointless).
fn parse_kinds_param(raw: Option<&str>) -> Result<Option<Vec<OpKind>>, ApiError> {
    match raw {
        None | Some("") => Ok(None),
        Some(list) => Ok(Some(parse_kinds(list)?)),
    }
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
    shared: &Shared,
    draft: &RoomDraft,
) -> Result<RoomRecord, ApiError> {
    for _ in 0..GENERATED_ID_ATTEMPTS {
        let record = draft.record(generated_room_id()?);
        match shared.store.create_room(&record).await {
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

// === responses ===

/// A handler's outcome as a response; errors are counted and logged.
pub(crate) fn reply(shared: &Shared, route: &'static str, result: ApiResult) -> Response {
    match result {
        Ok(response) => response,
        Err(error) => failure(shared, route, error),
    }
}

fn failure(shared: &Shared, route: &'static str, error: ApiError) -> Response {
    let code = error.0.code;
    shared.metrics.error(code);
    if code.http_status() >= 500 {
        tracing::warn!(route, code = code.as_str(), message = %error.0.message, "http request failed");
    } else {
        tracing::debug!(route, code = code.as_str(), message = %error.0.message, "http request refused");
    }
    error.into_response()
}

pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, message)
}

fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::Unauthorized, message)
}

pub(crate) fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::Forbidden, message)
}

pub(crate) fn rate_limited(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::RateLimited, message)
}

#[cfg(test)]
mod tests;
