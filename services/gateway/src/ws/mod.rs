//! WebSocket connections (being written).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Query, State, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::Response;

use crate::Shared;

/// `GET /v1/ws`: authenticates before the upgrade (401 otherwise).
pub(crate) async fn upgrade(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<std::collections::HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> Response {
    let _ = (shared, peer, headers, query);
    ws.on_upgrade(|_socket| async {})
}
