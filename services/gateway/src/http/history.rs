//! `GET /v1/rooms/{id}/history`: a room's ops, newest first, a page at a
//! time, optionally of some kinds only.

use std::num::IntErrorKind;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::IntoResponse;
use collab_protocol::http::{HISTORY_DEFAULT_LIMIT, HISTORY_MAX_LIMIT};
use collab_protocol::ops::parse_kinds;
use collab_protocol::{OpKind, Seq, ServerFrame};
use serde::{Deserialize, Serialize};

use super::extract::page_limit;
use super::{ApiResult, Caller, RoomPath, Rooms, bad_request};
use crate::error::ApiError;

/// The query of `GET /v1/rooms/{id}/history`, as text: the handler parses
/// each parameter itself to report which one is wrong.
#[derive(Debug, Default, Deserialize)]
pub(super) struct HistoryQuery {
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
pub(super) async fn history(
    State(rooms): State<Arc<Rooms>>,
    caller: Caller,
    RoomPath(room): RoomPath,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> ApiResult {
    let Query(query) =
        query.map_err(|e| bad_request(format!("invalid query: {}", e.body_text())))?;
    let before = parse_before(query.before.as_deref())?;
    let limit = page_limit(
        query.limit.as_deref(),
        HISTORY_DEFAULT_LIMIT,
        HISTORY_MAX_LIMIT,
    )?;
    let kinds = parse_kinds_param(query.kinds.as_deref())?;
    caller.readable_room(&*rooms.store, &room).await?;

    // `before` defaults to, and is clamped at, head + 1: a page asked for
    // beyond the head is the newest page.
    let head = rooms.store.head(&room).await?;
    let before = Seq(before.map_or(head.next().get(), |b| b.min(head.next().get())));
    // One more than the page: whether it exists tells if an older op of
    // these kinds does, without a second query.
    let mut ops = rooms
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

/// `kinds`: a comma list of op kinds. An empty value filters nothing, like
/// an absent one (a page of no kinds at all would be pointless).
fn parse_kinds_param(raw: Option<&str>) -> Result<Option<Vec<OpKind>>, ApiError> {
    match raw {
        None | Some("") => Ok(None),
        Some(list) => Ok(Some(parse_kinds(list)?)),
    }
}
