use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use tower::ServiceExt;

use super::*;

/// The value of the sample `series` (name and labels, as printed) in a
/// metrics page.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.parse().ok()
    })
}

fn exporter() -> Exporter {
    Exporter::new(Registry::default(), Role::Gateway, "1.2.3")
}

#[test]
fn build_info_names_the_version_and_the_role() {
    let page = exporter().render(true).expect("renders");
    assert_eq!(
        sample(
            &page,
            r#"collab_build_info{version="1.2.3",role="gateway"}"#
        ),
        Some(1.0),
        "{page}"
    );
    let page = Exporter::new(Registry::default(), Role::RoomNode, "1.2.3")
        .render(true)
        .expect("renders");
    assert!(page.contains(r#"role="room-node""#), "{page}");
}

#[test]
fn ready_is_what_the_caller_measured_at_this_scrape() {
    let exporter = exporter();
    let page = exporter.render(true).expect("renders");
    assert_eq!(sample(&page, "collab_ready"), Some(1.0), "{page}");
    let page = exporter.render(false).expect("renders");
    assert_eq!(sample(&page, "collab_ready"), Some(0.0), "{page}");
}

#[cfg(target_os = "linux")]
#[test]
fn process_figures_are_read_from_proc() {
    let page = exporter().render(true).expect("renders");
    for name in [
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_threads",
        "process_start_time_seconds",
    ] {
        let value = sample(&page, name).unwrap_or_else(|| panic!("{name} missing:\n{page}"));
        assert!(value > 0.0, "{name} = {value}");
    }
    assert!(
        sample(&page, "process_cpu_seconds_total").is_some_and(|v| v >= 0.0),
        "{page}"
    );
    // Started after 2020 and not in the future.
    let started = sample(&page, "process_start_time_seconds").expect("start time");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch")
        .as_secs_f64();
    assert!(started > 1.6e9 && started <= now + 1.0, "{started}");
    assert!(
        page.contains("# TYPE process_cpu_seconds counter"),
        "{page}"
    );
}

async fn status_of(router: &Router, method: &str, uri: &str) -> StatusCode {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .expect("a request");
    router
        .clone()
        .oneshot(request)
        .await
        .expect("answered")
        .status()
}

#[tokio::test]
async fn requests_count_by_route_template_and_status() {
    let exporter = exporter();
    let router = exporter.instrument(
        Router::new()
            .route("/rooms/{id}", get(|| async { "room" }))
            .route(
                "/broken",
                get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "no") }),
            ),
    );
    assert_eq!(status_of(&router, "GET", "/rooms/a").await, StatusCode::OK);
    assert_eq!(status_of(&router, "GET", "/rooms/b").await, StatusCode::OK);
    assert_eq!(
        status_of(&router, "GET", "/broken").await,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        status_of(&router, "GET", "/nowhere/1").await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        status_of(&router, "POST", "/rooms/c").await,
        StatusCode::METHOD_NOT_ALLOWED
    );

    let page = exporter.render(true).expect("renders");
    let count = |series: &str| sample(&page, series);
    assert_eq!(
        count(r#"collab_http_requests_total{route="/rooms/{id}",status="200"}"#),
        Some(2.0),
        "{page}"
    );
    assert_eq!(
        count(r#"collab_http_requests_total{route="/broken",status="500"}"#),
        Some(1.0),
        "{page}"
    );
    // An unknown path is `other`: paths never become label values.
    assert_eq!(
        count(r#"collab_http_requests_total{route="other",status="404"}"#),
        Some(1.0),
        "{page}"
    );
    assert!(!page.contains("/nowhere"), "{page}");
    assert_eq!(
        count(r#"collab_http_requests_total{route="/rooms/{id}",status="405"}"#),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        count(r#"collab_http_request_duration_seconds_count{route="/rooms/{id}"}"#),
        Some(3.0),
        "{page}"
    );
    assert_eq!(
        count(r#"collab_http_request_duration_seconds_count{route="other"}"#),
        Some(1.0),
        "{page}"
    );
}

#[tokio::test]
async fn the_response_is_the_openmetrics_page() {
    let response = exporter().response(true).expect("renders");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.as_bytes()),
        Some(OPENMETRICS_CONTENT_TYPE.as_bytes())
    );
}
