//! `POST /v1/dev/token`: a token for anyone who asks, in dev mode only
//! (elsewhere the endpoint does not exist), metered by address.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, ExtensionRejection};
use axum::extract::{ConnectInfo, State};
use axum::response::IntoResponse;
use collab_protocol::http::{DEV_TOKEN_MAX_TTL_SECS, DevTokenRequest, DevTokenResponse};
use collab_protocol::{Claims, ErrorCode};

use super::error::not_found;
use super::extract::parse_json;
use super::{ApiResult, Tokens, bad_request, rate_limited};
use crate::auth::now_secs;
use crate::error::ApiError;

/// `POST /v1/dev/token`. The body is read only after the mode and the
/// caller's allowance are checked.
pub(super) async fn dev_token(
    State(tokens): State<Arc<Tokens>>,
    peer: Result<ConnectInfo<SocketAddr>, ExtensionRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    // Outside dev mode the endpoint does not exist.
    if !tokens.auth.dev_mode() {
        return Err(not_found(
            "the dev token endpoint is only served in dev mode",
        ));
    }
    // Served without connection info (a router driven directly), every
    // caller shares one bucket rather than escaping the limit.
    let key = match peer {
        Ok(ConnectInfo(addr)) => format!("ip:{}", addr.ip()),
        Err(_) => "ip:unknown".to_owned(),
    };
    if !tokens.http_limiter.acquire(&key).await {
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
        exp: now_secs() + ttl.min(tokens.max_token_lifetime_secs.max(1)),
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
    let token = tokens
        .auth
        .mint(&claims)
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("minting failed: {e}")))?;
    tracing::info!(user = %claims.sub, scope = ?claims.scope, "dev token minted");
    Ok(Json(DevTokenResponse { token }).into_response())
}
