//! The parts of a request the handlers take — a room id in the path, a
//! JSON body — rejected in our error format with the messages of the
//! protocol (axum's own rejections answer in plain text).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use collab_protocol::{ErrorCode, RoomId};
use serde::de::DeserializeOwned;

use super::error::bad_request;
use crate::error::ApiError;

/// The room id of a `/v1/rooms/{id}/...` path, valid.
pub(crate) struct RoomPath(pub(crate) RoomId);

impl<S: Send + Sync> FromRequestParts<S> for RoomPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| bad_request(format!("invalid room id: {}", e.body_text())))?;
        Ok(RoomPath(RoomId::parse(raw)?))
    }
}

/// A JSON object body. Anything else is `bad_request` (or `too_large` over
/// the body limit) in our error format.
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        parse_json(Bytes::from_request(request, state).await).map(JsonBody)
    }
}

/// A JSON object body, read already (for a handler with checks to run
/// before the body's).
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

/// A page's `limit` query parameter: an integer from 1 to `max`;
/// `default` when absent.
pub(crate) fn page_limit(raw: Option<&str>, default: u32, max: u32) -> Result<usize, ApiError> {
    let limit = match raw {
        None => default,
        Some(raw) => match raw.parse::<u32>() {
            Ok(limit) if (1..=max).contains(&limit) => limit,
            _ => {
                return Err(bad_request(format!(
                    "limit must be an integer from 1 to {max}"
                )));
            }
        },
    };
    usize::try_from(limit).map_err(|_| bad_request("limit too large for this platform"))
}
