//! `POST /v1/rooms/{id}/ops`: a backend publishes ops into a room, with a
//! token that has the `service` scope.
//!
//! Each op goes to the room's owner as a [`RoomRequest::Publish`] and is
//! handled there like a WebSocket op: ordered with the others, validated,
//! committed, then broadcast to the members; the answer carries its `seq`.
//! The op's author is the token's `sub`. A `cid` the room already applied
//! for that user is answered with its first `seq` and stored nothing
//! twice, so a backend retries with the same `cid` until it has an answer.
//!
//! A list is sent one op at a time, each after the previous one committed,
//! so that the first failure stops it with nothing after it applied: the
//! error then lists the ops committed before it (`ops`), and sending the
//! whole list again with the same cids is safe.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use collab_protocol::envelope::{RoomReply, RoomRequest};
use collab_protocol::http::{HttpErrorBody, PUBLISH_MAX_OPS, PublishOp, Published, PublishedList};
use collab_protocol::{Access, RoomId, Scope, Seq};
use serde::Serialize;
use serde_json::Value;

use crate::error::{ApiError, room_reply_error};
use crate::http::{Caller, RoomPath, Rooms, bad_request, forbidden, json_body, rate_limited};

/// The body as sent: one op, or a list of them.
#[derive(Debug, PartialEq)]
enum PublishBody {
    One(PublishOp),
    List(Vec<PublishOp>),
}

/// A list that stopped at an op: the error, and the ops committed before.
#[derive(Debug, Serialize)]
struct PartialPublish {
    error: HttpErrorBody,
    ops: Vec<Published>,
}

/// `POST /v1/rooms/{id}/ops`. A list that stopped part of the way answers
/// the error with the ops committed before it; like every error answered,
/// it is counted once, by the layer.
pub(crate) async fn publish(
    State(rooms): State<Arc<Rooms>>,
    caller: Caller,
    RoomPath(room): RoomPath,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match publish_ops(&rooms, &caller, &room, body).await {
        Ok(response) => response,
        Err(Stopped { error, committed }) if !committed.is_empty() => {
            tracing::debug!(committed = committed.len(), "publish stopped");
            let body = PartialPublish {
                error: HttpErrorBody {
                    code: error.0.code,
                    message: error.0.message.clone(),
                },
                ops: committed,
            };
            error.respond_with(Json(body))
        }
        Err(Stopped { error, .. }) => error.into_response(),
    }
}

/// Why a request failed, with the ops of a list committed before.
struct Stopped {
    error: ApiError,
    committed: Vec<Published>,
}

impl From<ApiError> for Stopped {
    fn from(error: ApiError) -> Self {
        Stopped {
            error,
            committed: Vec::new(),
        }
    }
}

async fn publish_ops(
    rooms: &Rooms,
    caller: &Caller,
    room: &RoomId,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Stopped> {
    let body = publish_body(json_body(body)?)?;
    check_may_publish(caller, room)?;
    let ops = match &body {
        PublishBody::One(op) => std::slice::from_ref(op),
        PublishBody::List(ops) => ops.as_slice(),
    };
    let mut committed = Vec::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        match publish_one(rooms, caller, room, op).await {
            Ok(seq) => committed.push(Published {
                cid: op.cid.clone(),
                seq,
            }),
            Err(error) => {
                let error = match body {
                    PublishBody::One(_) => error,
                    PublishBody::List(_) => ApiError::new(
                        error.0.code,
                        format!("op {i} (cid {}): {}", op.cid, error.0.message),
                    ),
                };
                return Err(Stopped { error, committed });
            }
        }
    }
    tracing::debug!(%room, user = %caller.user, ops = committed.len(), "published");
    let response = match body {
        PublishBody::One(_) => Json(committed.remove(0)).into_response(),
        PublishBody::List(_) => Json(PublishedList { ops: committed }).into_response(),
    };
    Ok(response)
}

/// One op or a list of 1 to [`PUBLISH_MAX_OPS`] ops, each `{"cid", "op"}`.
fn publish_body(value: Value) -> Result<PublishBody, ApiError> {
    let decode = |value: Value| {
        if !value.is_object() {
            return Err("must be a JSON object {\"cid\", \"op\"}".to_owned());
        }
        serde_json::from_value::<PublishOp>(value).map_err(|e| e.to_string())
    };
    match value {
        Value::Array(list) => {
            if list.is_empty() || list.len() > PUBLISH_MAX_OPS {
                return Err(bad_request(format!(
                    "a list carries 1 to {PUBLISH_MAX_OPS} ops, not {}",
                    list.len()
                )));
            }
            let ops = list
                .into_iter()
                .enumerate()
                .map(|(i, value)| {
                    decode(value).map_err(|e| bad_request(format!("invalid op {i}: {e}")))
                })
                .collect::<Result<_, _>>()?;
            Ok(PublishBody::List(ops))
        }
        value => decode(value)
            .map(PublishBody::One)
            .map_err(|e| bad_request(format!("invalid body: {e}"))),
    }
}

/// Publishing takes the `service` scope (`admin` alone does not give it),
/// and write access to the room in the `rooms` claim if the token has one.
fn check_may_publish(caller: &Caller, room: &RoomId) -> Result<(), ApiError> {
    if !caller.claims.has_scope(Scope::Service) {
        return Err(forbidden("publishing needs a token with the service scope"));
    }
    if caller.claims.access(room) != Some(Access::Write) {
        return Err(forbidden(format!(
            "the token does not give write access to room {room}"
        )));
    }
    Ok(())
}

/// Sends one op to the room's owner and waits for its commit.
async fn publish_one(
    rooms: &Rooms,
    caller: &Caller,
    room: &RoomId,
    op: &PublishOp,
) -> Result<Seq, ApiError> {
    rooms.metrics.op(op.op.kind());
    // The bucket of the user's WebSocket ops: a service user publishes at
    // the rate any user sends ops.
    if !rooms.ops.acquire(caller.user.as_str()).await {
        return Err(rate_limited("too many ops; slow down"));
    }
    let request = RoomRequest::Publish {
        room: room.clone(),
        user: caller.user.clone(),
        cid: op.cid.clone(),
        op: op.op.clone(),
    };
    match rooms.bus.request(request, rooms.request_timeout()).await {
        Ok(RoomReply::Ack { seq }) => Ok(seq),
        other => Err(room_reply_error(other, "retry with the same cid").into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use collab_protocol::ErrorCode;

    #[test]
    fn bodies_are_one_op_or_a_bounded_list() {
        let op = serde_json::json!({"cid": "a", "op": {"kind": "message", "text": "hi"}});
        assert!(matches!(publish_body(op.clone()), Ok(PublishBody::One(_))));
        let list = Value::Array(vec![op.clone(); PUBLISH_MAX_OPS]);
        assert!(
            matches!(publish_body(list), Ok(PublishBody::List(ops)) if ops.len() == PUBLISH_MAX_OPS)
        );
        for bad in [
            Value::Array(vec![]),
            Value::Array(vec![op.clone(); PUBLISH_MAX_OPS + 1]),
            serde_json::json!([op.clone(), 5]),
            serde_json::json!("text"),
            serde_json::json!({"cid": "", "op": {"kind": "message", "text": "hi"}}),
            serde_json::json!({"cid": "a"}),
            serde_json::json!({"cid": "a", "op": {"kind": "nope"}}),
            serde_json::json!({"cid": "a", "op": {"kind": "message", "text": "hi"}, "user": "x"}),
        ] {
            let error = publish_body(bad.clone()).expect_err("refused");
            assert_eq!(error.0.code, ErrorCode::BadRequest, "{bad}");
        }
    }
}
