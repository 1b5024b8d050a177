//! The web client: the page at `/`, the admin page at `/admin` and their
//! assets, compiled into the binary.
//!
//! The page is plain ES modules (see `docs/adr/0003-web-client-plain-es-modules.md`)
//! on top of the client SDK's compiled modules (`web/app/sdk/`, built from
//! `sdk/js` and committed: `docs/adr/0006-client-sdk-typescript.md`): each
//! file under `services/gateway/web/` is embedded with `include_bytes!` and
//! served as it is, so running the server needs no Node and no files beside
//! the binary, and the page works offline (no CDN, no web fonts).
//!
//! Caching: the file names carry no content hash, so every response says
//! `Cache-Control: no-cache` with a strong `ETag` (a hash of the embedded
//! bytes, fixed at compile time). A browser revalidates on each load and
//! gets a `304` while the binary is the same; a new binary with a changed
//! file changes its ETag, so no one runs a stale mix of modules.

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

#[cfg(test)]
mod tests;

/// One embedded file.
struct Asset {
    /// Its path under `/app/`; the pages (`index.html`, `admin.html`) are
    /// served at their own URLs instead (see [`PAGES`]).
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    /// FNV-1a of `body`, computed by the compiler.
    hash: u64,
}

macro_rules! asset {
    ($path:literal, $file:literal, $type:expr) => {
        Asset {
            path: $path,
            content_type: $type,
            body: include_bytes!(concat!("../../web/", $file)),
            hash: fnv1a(include_bytes!(concat!("../../web/", $file))),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

const HTML: &str = "text/html; charset=utf-8";

/// The pages, then every module, stylesheet and image they load.
static ASSETS: &[Asset] = &[
    asset!("index.html", "index.html", HTML),
    asset!("admin.html", "admin.html", HTML),
    asset!("main.js", "app/main.js", JS),
    asset!("api.js", "app/api.js", JS),
    asset!("words.js", "app/words.js", JS),
    asset!("ui.js", "app/ui.js", JS),
    asset!("names.js", "app/names.js", JS),
    asset!("board.js", "app/board.js", JS),
    asset!("render.js", "app/render.js", JS),
    asset!("chat.js", "app/chat.js", JS),
    asset!("admin.js", "app/admin.js", JS),
    // The client SDK (`sdk/js`), as its TypeScript compiler emits it.
    asset!("sdk/index.js", "app/sdk/index.js", JS),
    asset!("sdk/client.js", "app/sdk/client.js", JS),
    asset!("sdk/room.js", "app/sdk/room.js", JS),
    asset!("sdk/state.js", "app/sdk/state.js", JS),
    asset!("sdk/outbox.js", "app/sdk/outbox.js", JS),
    asset!("sdk/storage.js", "app/sdk/storage.js", JS),
    asset!("sdk/errors.js", "app/sdk/errors.js", JS),
    asset!("sdk/emitter.js", "app/sdk/emitter.js", JS),
    asset!("sdk/protocol.js", "app/sdk/protocol.js", JS),
    asset!("style.css", "app/style.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "app/icon.svg", "image/svg+xml"),
];

/// Each page's URL and its file.
const PAGES: &[(&str, &str)] = &[("/", "index.html"), ("/admin", "admin.html")];

/// What a page may load and connect to: only this origin (its own
/// WebSocket included), no inline script, no plugins, no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; \
     object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// FNV-1a, 64 bits: enough to tell versions of a file apart, and simple
/// enough for a `const fn`.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

/// `GET /` (the page), `GET /admin` (the admin page) and `GET /app/{file}`
/// (their assets). Stateless, so it merges into a router of any state.
pub(crate) fn routes() -> crate::http::Routes {
    crate::http::Routes::new()
        .add("/", get(index))
        .add("/admin", get(admin))
        .add("/app/{*path}", get(app_file))
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

async fn admin(headers: HeaderMap) -> Response {
    serve("admin.html", &headers)
}

async fn app_file(Path(path): Path<String>, headers: HeaderMap) -> Response {
    // A page is only served at its own URL: one URL per file keeps caching
    // simple.
    if PAGES.iter().any(|(_, page)| *page == path) {
        return not_found();
    }
    serve(&path, &headers)
}

fn serve(path: &str, request: &HeaderMap) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.path == path) else {
        return not_found();
    };
    let etag = format!("\"{:016x}\"", asset.hash);
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = asset.body.into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        r
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if asset.content_type == HTML {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        );
        // A token may sit in the page's URL fragment; fragments are never
        // sent in a Referer, and this keeps even the path and query private.
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    response
}

/// A file the app does not have: `not_found` in the API's error format,
/// like every other error of the gateway.
fn not_found() -> Response {
    crate::error::ApiError::new(
        collab_protocol::ErrorCode::NotFound,
        "no such file of the web app",
    )
    .into_response()
}
