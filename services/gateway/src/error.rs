//! HTTP error responses: `{"error": {"code", "message"}}` with the status
//! that matches the code.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = HttpError {
            error: HttpErrorBody {
                code: self.0.code,
                message: self.0.message,
            },
        };
        (status, Json(body)).into_response()
    }
}
