//! HTTP routes (being written).

use std::sync::Arc;

use axum::Router;
use axum::routing::get;

use crate::Shared;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/ws", get(crate::ws::upgrade))
        .with_state(shared)
}
