//! Who is asking: the [`Caller`] extractor verifies the bearer token and
//! meters the caller's requests, the [`Admin`] one also wants the admin
//! scope. Either rejects in our error format, and as the first argument of
//! a handler runs before anything else is looked at.

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use collab_protocol::{Claims, RoomId, Scope, UserId};
use collab_store::{RoomCatalog, RoomRecord};

use super::error::{forbidden, not_found, rate_limited, unauthorized};
use super::state::Tokens;
use crate::auth::request_token;
use crate::error::ApiError;

/// An authenticated caller.
pub(crate) struct Caller {
    pub(crate) claims: Claims,
    pub(crate) user: UserId,
}

impl<S> FromRequestParts<S> for Caller
where
    Arc<Tokens>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        authenticate(&Arc::<Tokens>::from_ref(state), &parts.headers).await
    }
}

/// Verifies the bearer token and takes one token from the caller's HTTP
/// allowance.
async fn authenticate(tokens: &Tokens, headers: &HeaderMap) -> Result<Caller, ApiError> {
    // HTTP clients can always set headers: unlike the WebSocket endpoint,
    // no `?token=` here, which would land tokens in access logs.
    let token = request_token(headers, None)
        .ok_or_else(|| unauthorized("missing bearer token (Authorization: Bearer <JWT>)"))?;
    let claims = tokens
        .check(token)
        .await
        .map_err(|e| unauthorized(e.to_string()))?;
    let user = UserId::parse(claims.sub.clone())
        .map_err(|_| unauthorized("the token's sub must not be empty"))?;
    // Users and addresses (the dev token) share the limiter: prefixes keep
    // a user id from colliding with an address.
    let key = format!("user:{}", claims.sub);
    if !tokens.http_limiter.acquire(&key).await {
        return Err(rate_limited("too many requests, slow down"));
    }
    Ok(Caller { claims, user })
}

/// An authenticated caller whose token has the admin scope.
pub(crate) struct Admin(pub(crate) Caller);

impl<S: Send + Sync> FromRequestParts<S> for Admin
where
    Caller: FromRequestParts<S, Rejection = ApiError>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        if !caller.claims.has_scope(Scope::Admin) {
            return Err(forbidden(
                "the admin endpoints need a token with the admin scope",
            ));
        }
        Ok(Admin(caller))
    }
}

impl Caller {
    /// The room this caller may read: covered by the claim, existing, and
    /// admitting the caller, checked in that order.
    pub(crate) async fn readable_room(
        &self,
        store: &dyn RoomCatalog,
        room: &RoomId,
    ) -> Result<RoomRecord, ApiError> {
        // Read access suffices for metadata and history.
        if self.claims.access(room).is_none() {
            return Err(forbidden(format!("the token does not cover room {room}")));
        }
        let record = store
            .room(room)
            .await?
            .ok_or_else(|| not_found(format!("no room {room}")))?;
        if !record.admits(&self.user) {
            return Err(forbidden(format!("room {room} is private")));
        }
        Ok(record)
    }
}
