//! Errors: the constructors the handlers use, and the one layer that
//! counts and logs every error the API answers.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use collab_protocol::ErrorCode;

use crate::error::{ApiError, Failed};
use crate::metrics::GatewayMetrics;

/// Counts each error response (an [`ApiError`]'s, marked [`Failed`]) in
/// the `errors` metric by code, and logs it: a warning for a 5xx (the
/// gateway's fault or its dependencies'), at debug level otherwise (the
/// caller's). `route` is the route template that matched (`fallback`
/// when none did).
pub(crate) async fn count_errors(
    State(metrics): State<GatewayMetrics>,
    request: Request,
    next: Next,
) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    let response = next.run(request).await;
    if let Some(Failed(error)) = response.extensions().get::<Failed>() {
        let route = route.as_ref().map_or("fallback", MatchedPath::as_str);
        let code = error.code;
        metrics.error(code);
        if code.http_status() >= 500 {
            tracing::warn!(route, %method, code = code.as_str(), message = %error.message, "http request failed");
        } else {
            tracing::debug!(route, %method, code = code.as_str(), message = %error.message, "http request refused");
        }
    }
    response
}

pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, message)
}

pub(crate) fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::Unauthorized, message)
}

pub(crate) fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::Forbidden, message)
}

pub(crate) fn rate_limited(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::RateLimited, message)
}

pub(crate) fn not_found(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::NotFound, message)
}
