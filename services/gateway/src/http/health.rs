//! The operational endpoints — `/healthz`, `/readyz`, `/metrics` — and
//! the API's own description, `/v1/openapi.json`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use collab_protocol::ErrorCode;

use super::{ApiResult, Ops};
use crate::error::ApiError;

/// The OpenAPI 3.1 document of the HTTP API, served as it is kept.
pub(crate) const OPENAPI: &str = include_str!("../../../../docs/openapi.json");

/// `GET /v1/openapi.json`: the API's description, `docs/openapi.json`.
pub(super) async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

/// `GET /healthz`: the process runs.
pub(super) async fn healthz() -> &'static str {
    "ok"
}

/// Whether the gateway takes clients now: accepting, and every dependency
/// ready. `Err` says why not.
async fn readiness(ops: &Ops) -> Result<(), &'static str> {
    // While shutting down (or cut off from the cluster) the answer is no
    // whatever the dependencies say, so load balancers stop sending new
    // clients here.
    if let Some(why) = ops.admission.refusal() {
        return Err(why);
    }
    if !ops.readiness.ready().await {
        return Err("dependencies not ready");
    }
    Ok(())
}

/// `GET /readyz`: 200 only while accepting and every dependency is ready.
pub(super) async fn readyz(State(ops): State<Arc<Ops>>) -> ApiResult {
    match readiness(&ops).await {
        Ok(()) => Ok((StatusCode::OK, "ready").into_response()),
        Err(why) => Err(ApiError::new(ErrorCode::Unavailable, why)),
    }
}

/// `GET /metrics`: the registry in the OpenMetrics text format, with
/// `collab_ready` as `/readyz` would answer now.
pub(super) async fn metrics(State(ops): State<Arc<Ops>>) -> ApiResult {
    let ready = readiness(&ops).await.is_ok();
    ops.exporter
        .response(ready)
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("encoding metrics: {e}")))
}
