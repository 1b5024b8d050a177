//! The HTTP API: creating, changing and deleting rooms, removing a user
//! from a room, reading a room's metadata and history, listing the caller's
//! rooms, the dev token endpoint, the API's own description
//! (`/v1/openapi.json`), and the operational endpoints (health, readiness,
//! metrics). With a metrics listener of its
//! own (`metrics_listen`), `/metrics` is served only there, by
//! [`metrics_router`]. Every request is counted by route and status. The
//! admin endpoints are in [`crate::admin`], a backend's publishing in
//! [`crate::publish`]; both share the steps here.
//!
//! By role: [`rooms`] and [`create`] (the rooms), [`history`], [`dev`]
//! (the dev token), [`health`] (probes, metrics, the API's description),
//! [`caller`] (who is asking), [`extract`] (the request's parts, in our
//! error format), [`error`] (errors, and the layer that counts them), and
//! [`state`] (what each handler may touch).
//!
//! At most `max_concurrent_requests` requests are served at once; more are
//! refused with 503 `unavailable` ([`limit_concurrency`]), except the
//! probes and the metrics.
//!
//! Every route is added through [`Routes`], which keeps the list of paths
//! the router serves: a test checks it against `docs/openapi.json`, the
//! document served at `/v1/openapi.json`, both ways.
//!
//! Every error is answered as `{"error": {"code", "message"}}` with the
//! status of its code, and counted in the `errors` metric by one layer
//! ([`error::count_errors`]). That includes the cases axum would otherwise
//! answer in plain text (a malformed body, path or query, an unknown path,
//! a wrong method), which is why the extractors here reject with an
//! [`ApiError`] and handlers take axum's own extractors' results.
//!
//! Checks run in the protocol's precedence: authentication, then anything
//! malformed (`bad_request`), then the token's claim (`forbidden`, whether
//! the room exists or not, so a claim never reveals which rooms exist), then
//! the room's existence (`not_found`), then its membership (`forbidden`).
//! Extractors run in the order of a handler's arguments: the caller first.

pub(crate) mod caller;
mod create;
mod dev;
pub(crate) mod error;
pub(crate) mod extract;
mod health;
mod history;
mod rooms;
pub(crate) mod state;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use collab_protocol::ErrorCode;

use crate::error::ApiError;
pub(crate) use caller::{Admin, Caller};
pub(crate) use error::{bad_request, forbidden, rate_limited};
pub(crate) use extract::{JsonBody, RoomPath, json_body};
#[cfg(test)]
use health::OPENAPI;
pub(crate) use state::{AppState, Ops, Rooms, Tokens};

/// What a handler answers: its response, or an error in our format.
pub(crate) type ApiResult = Result<Response, ApiError>;

/// Routes, and the paths they serve. Every route of the gateway is added
/// through [`Routes::add`], so [`Routes::paths`] is exactly what the
/// router serves (the OpenAPI test relies on it).
pub(crate) struct Routes {
    router: Router<AppState>,
    paths: Vec<&'static str>,
}

impl Routes {
    pub(crate) fn new() -> Routes {
        Routes {
            router: Router::new(),
            paths: Vec::new(),
        }
    }

    pub(crate) fn add(mut self, path: &'static str, methods: MethodRouter<AppState>) -> Routes {
        self.router = self.router.route(path, methods);
        self.paths.push(path);
        self
    }

    pub(crate) fn merge(mut self, other: Routes) -> Routes {
        self.router = self.router.merge(other.router);
        self.paths.extend(other.paths);
        self
    }

    /// Applies `f` to the routes added so far (a middleware layer).
    fn map(mut self, f: impl FnOnce(Router<AppState>) -> Router<AppState>) -> Routes {
        self.router = f(self.router);
        self
    }

    /// The paths served, in axum's syntax (`/v1/rooms/{id}`).
    #[cfg(test)]
    pub(crate) fn paths(&self) -> &[&'static str] {
        &self.paths
    }
}

/// The API's routes, the probes, and `/metrics` unless it has a listener
/// of its own.
pub(crate) fn routes(state: &AppState) -> Routes {
    let api = Routes::new()
        .add("/v1/ws", get(crate::ws::upgrade))
        .add("/v1/rooms", get(rooms::list).post(create::create_room))
        .add(
            "/v1/rooms/{id}",
            get(rooms::info).patch(rooms::update).delete(rooms::delete),
        )
        .add("/v1/rooms/{id}/kick", post(rooms::kick))
        .add("/v1/rooms/{id}/history", get(history::history))
        .add("/v1/rooms/{id}/snapshot", crate::snapshot::route())
        .add("/v1/rooms/{id}/ops", post(crate::publish::publish))
        .add("/v1/rooms/{id}/presence", get(crate::presence::room))
        .add("/v1/users/{id}/presence", get(crate::presence::user))
        .add("/v1/me/rooms", get(rooms::mine))
        .add("/v1/dev/token", post(dev::dev_token))
        .add("/v1/openapi.json", get(health::openapi))
        .merge(crate::admin::routes())
        .merge(crate::web::routes())
        // The probes and the metrics, below, are never refused: a busy
        // gateway is still alive, and still watched.
        .map(|router| {
            router.layer(axum::middleware::from_fn_with_state(
                state.ops.clone(),
                limit_concurrency,
            ))
        });
    let mut routes = Routes::new()
        .add("/healthz", get(health::healthz))
        .add("/readyz", get(health::readyz));
    if !state.metrics_elsewhere {
        routes = routes.add("/metrics", get(health::metrics));
    }
    routes.merge(api)
}

pub(crate) fn router(state: AppState) -> Router {
    let router = finish(routes(&state).router, &state);
    state.ops.exporter.instrument(router)
}

/// The metrics listener's routes: `/metrics` and the probes.
pub(crate) fn metrics_router(state: AppState) -> Router {
    let router = Router::new()
        .route("/metrics", get(health::metrics))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz));
    let router = finish(router, &state);
    state.ops.exporter.instrument(router)
}

/// The fallbacks, and the layer that counts every error answered; they
/// apply to the routes already added, so this comes after them.
fn finish(router: Router<AppState>, state: &AppState) -> Router {
    router
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.ops.metrics.clone(),
            error::count_errors,
        ))
        .with_state(state.clone())
}

/// Serves a request only while fewer than `max_concurrent_requests` are in
/// progress; past it, answers 503 `unavailable` at once rather than
/// queueing (load shedding): a client retries, and the requests in
/// progress keep their memory and their time.
async fn limit_concurrency(
    State(ops): State<Arc<Ops>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(slots) = &ops.http_slots else {
        return next.run(request).await;
    };
    match slots.clone().try_acquire_owned() {
        Ok(_permit) => next.run(request).await,
        Err(_) => {
            ops.metrics.refusal("overloaded");
            ApiError::new(
                ErrorCode::Unavailable,
                "too many requests in progress; retry shortly",
            )
            .into_response()
        }
    }
}

/// Unknown paths.
async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("no such path: {}", uri.path()))
}

/// A known path with a method it does not serve. The protocol has no code
/// for it; `bad_request` with status 405 keeps the body in our format.
/// Axum adds the `Allow` header.
async fn method_not_allowed(method: Method) -> Response {
    let mut response = bad_request(format!("method {method} not allowed here")).into_response();
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
}

#[cfg(test)]
mod tests;
