use axum::body::to_bytes;
use axum::http::HeaderValue;

use super::*;

async fn body_text(response: Response) -> String {
    let bytes = to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    String::from_utf8(bytes.to_vec()).expect("utf-8")
}

#[tokio::test]
async fn the_page_is_served_at_the_root_with_its_policy() {
    let response = index(HeaderMap::new()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let h = response.headers();
    assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
    assert_eq!(h[header::CACHE_CONTROL], "no-cache");
    assert!(h.contains_key(header::ETAG));
    assert!(
        h[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .expect("ascii")
            .contains("script-src 'self'")
    );
    assert!(body_text(response).await.contains("/app/main.js"));
}

#[tokio::test]
async fn the_admin_page_is_served_at_admin_with_the_same_policy() {
    let response = admin(HeaderMap::new()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let h = response.headers();
    assert_eq!(h[header::CONTENT_TYPE], HTML);
    assert_eq!(h[header::CONTENT_SECURITY_POLICY], CONTENT_SECURITY_POLICY);
    assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
    assert!(body_text(response).await.contains("/app/admin.js"));
    // Every page is served at one URL only.
    let under_app = app_file(Path("admin.html".to_owned()), HeaderMap::new()).await;
    assert_eq!(under_app.status(), StatusCode::NOT_FOUND);
    for (url, file) in PAGES {
        assert!(
            ASSETS.iter().any(|a| a.path == *file),
            "{url} serves {file}"
        );
    }
}

#[tokio::test]
async fn assets_have_their_content_types() {
    for (path, content_type) in [
        ("main.js", JS),
        ("style.css", "text/css; charset=utf-8"),
        ("icon.svg", "image/svg+xml"),
    ] {
        let response = app_file(Path(path.to_owned()), HeaderMap::new()).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            content_type,
            "{path}"
        );
        assert_eq!(
            response.headers()[header::X_CONTENT_TYPE_OPTIONS],
            "nosniff"
        );
    }
}

#[tokio::test]
async fn a_matching_etag_gets_not_modified() {
    let first = app_file(Path("board.js".to_owned()), HeaderMap::new()).await;
    let etag = first.headers()[header::ETAG].clone();
    let mut headers = HeaderMap::new();
    headers.insert(header::IF_NONE_MATCH, etag.clone());
    let again = app_file(Path("board.js".to_owned()), headers).await;
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(again.headers()[header::ETAG], etag);
    assert!(body_text(again).await.is_empty());

    let mut stale = HeaderMap::new();
    stale.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"0\""));
    let fresh = app_file(Path("board.js".to_owned()), stale).await;
    assert_eq!(fresh.status(), StatusCode::OK);
}

#[tokio::test]
async fn unknown_files_are_not_found() {
    for path in ["nope.js", "../Cargo.toml", "index.html", ""] {
        let response = app_file(Path(path.to_owned()), HeaderMap::new()).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path:?}");
    }
}

/// Every module a module imports, and every file the page links, is
/// embedded: a file added under `web/` but not to `ASSETS` would 404 only in
/// a browser.
#[test]
fn everything_the_page_loads_is_embedded() {
    let embedded: Vec<&str> = ASSETS.iter().map(|a| a.path).collect();
    let mut wanted = Vec::new();
    for asset in ASSETS {
        let text = std::str::from_utf8(asset.body).expect("utf-8");
        // A module's `./x.js` is beside it: `sdk/index.js` imports `sdk/room.js`.
        let dir = asset.path.rsplit_once('/').map_or("", |(dir, _)| dir);
        for (marker, end, relative) in [("from './", '\'', true), ("\"/app/", '"', false)] {
            for (i, _) in text.match_indices(marker) {
                let rest = &text[i + marker.len()..];
                if let Some(stop) = rest.find(end) {
                    let file = &rest[..stop];
                    wanted.push(if relative && !dir.is_empty() {
                        format!("{dir}/{file}")
                    } else {
                        file.to_owned()
                    });
                }
            }
        }
    }
    assert!(wanted.iter().any(|w| w == "board.js"), "{wanted:?}");
    assert!(wanted.iter().any(|w| w == "sdk/room.js"), "{wanted:?}");
    for file in &wanted {
        assert!(
            embedded.contains(&file.as_str()),
            "{file} is used but not embedded"
        );
    }
    // And nothing is embedded that nothing uses.
    for path in embedded {
        let page = PAGES.iter().any(|(_, file)| *file == path);
        assert!(
            page || wanted.iter().any(|w| w == path),
            "{path} is embedded but unused"
        );
    }
}

#[test]
fn etags_differ_between_files() {
    let mut hashes: Vec<u64> = ASSETS.iter().map(|a| a.hash).collect();
    hashes.sort_unstable();
    hashes.dedup();
    assert_eq!(hashes.len(), ASSETS.len());
}
