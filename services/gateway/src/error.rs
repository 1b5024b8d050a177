//! HTTP error responses: `{"error": {"code", "message"}}` with the status
//! that matches the code. Each response carries its error ([`Failed`]), so
//! that one layer counts and logs every error the API answers
//! ([`crate::http::error::count_errors`]).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use collab_bus::BusError;
use collab_protocol::envelope::RoomReply;
use collab_protocol::http::{HttpError, HttpErrorBody};
use collab_protocol::{ErrorCode, ProtocolError};
use collab_store::StoreError;

/// An error an HTTP handler answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError(pub ProtocolError);

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError(ProtocolError::new(code, message))
    }
}

/// What a room's answer that is not the one asked for means to the
/// client: the room's own refusal as it is, or `unavailable` when the room
/// did not answer. `retry` says how to try again (e.g. "retry with the
/// same cid": the room remembers the cids it committed).
pub(crate) fn room_reply_error(reply: Result<RoomReply, BusError>, retry: &str) -> ProtocolError {
    match reply {
        Ok(RoomReply::Error { code, message }) => ProtocolError::new(code, message),
        Ok(RoomReply::NotJoined) => ProtocolError::bad_request("join the room before sending ops"),
        Ok(other) => ProtocolError::new(ErrorCode::Internal, format!("unexpected reply {other:?}")),
        Err(BusError::Timeout) => ProtocolError::new(
            ErrorCode::Unavailable,
            format!("the room did not answer in time; {retry}"),
        ),
        Err(e) => ProtocolError::new(
            ErrorCode::Unavailable,
            format!("the room did not answer: {e}; {retry}"),
        ),
    }
}

impl From<ProtocolError> for ApiError {
    fn from(e: ProtocolError) -> Self {
        ApiError(e)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => ApiError::new(ErrorCode::Conflict, m),
            StoreError::Unavailable(m) => ApiError::new(ErrorCode::Unavailable, m),
            StoreError::NotFound(m) => ApiError::new(ErrorCode::NotFound, m),
            e @ StoreError::RoomDeleted(_) => ApiError::new(ErrorCode::NotFound, e.to_string()),
            other => ApiError::new(ErrorCode::Internal, other.to_string()),
        }
    }
}

/// The error an error response answers, in the response's extensions:
/// what the counting layer counts and logs.
#[derive(Debug, Clone)]
pub(crate) struct Failed(pub ProtocolError);

impl ApiError {
    /// The response's status: the code's.
    pub(crate) fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.0.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// `body` with the status of this error, marked as its failure (to be
    /// counted once, by the layer).
    pub(crate) fn respond_with(self, body: impl IntoResponse) -> Response {
        let mut response = (self.status(), body).into_response();
        response.extensions_mut().insert(Failed(self.0));
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = HttpError {
            error: HttpErrorBody {
                code: self.0.code,
                message: self.0.message.clone(),
            },
        };
        self.respond_with(Json(body))
    }
}
