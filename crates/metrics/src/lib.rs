//! What every collab process exports on `/metrics`, whatever its role
//! (`collab serve`, `collab gateway`, `collab room-node`): which build and
//! role it is (`collab_build_info`), the standard `process_*` figures read
//! from Linux's `/proc`, whether it is ready (`collab_ready`, what `/readyz`
//! would answer), and the HTTP requests its routers answered, by route
//! template and status.
//!
//! The process's [`Registry`] is filled by each part it runs (gateway, room
//! node, store, bus); [`Exporter::new`] adds these and keeps the registry.
//! The role's own router then serves [`Exporter::response`] on `/metrics`
//! and wraps itself in [`Exporter::instrument`]. Labels are bounded: a route
//! is a template of the router (`/v1/rooms/{id}`), never a path.

mod http;
mod process;

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use http::HttpMetrics;

/// The content type of the `/metrics` page.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What a collab process runs as: the `role` label of `collab_build_info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `collab serve`: gateway and room node in one process.
    Serve,
    Gateway,
    RoomNode,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Serve => "serve",
            Role::Gateway => "gateway",
            Role::RoomNode => "room-node",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    role: &'static str,
}

/// The process's complete registry and the metrics every role exports;
/// cheap to clone.
#[derive(Clone)]
pub struct Exporter {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    ready: Gauge,
    http: HttpMetrics,
}

impl Exporter {
    /// Adds build info, the process figures, `collab_ready` and the HTTP
    /// request metrics to `registry`, which the process's parts have filled
    /// with theirs, and keeps it for [`response`](Self::response).
    pub fn new(mut registry: Registry, role: Role, version: &str) -> Exporter {
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: version.to_owned(),
                role: role.as_str(),
            })
            .set(1);
        let collab = registry.sub_registry_with_prefix("collab");
        collab.register(
            "build_info",
            "Always 1; the labels say which version runs in which role",
            build,
        );
        let ready = Gauge::default();
        collab.register(
            "ready",
            "1 when /readyz answers 200 (measured at each scrape), else 0",
            ready.clone(),
        );
        let http = HttpMetrics::register(collab);
        process::register(&mut registry);
        Exporter {
            inner: Arc::new(Inner {
                registry,
                ready,
                http,
            }),
        }
    }

    /// `router` with every request it answers counted by route template
    /// and status, and timed by route (`other` for a path no route
    /// matched). Apply it to the finished router: it measures what is
    /// routed to it, fallbacks included.
    pub fn instrument<S>(&self, router: Router<S>) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        self.inner.http.instrument(router)
    }

    /// The `/metrics` page with `collab_ready` set to `ready`.
    ///
    /// The role's handler passes what its `/readyz` check answers right
    /// now: computing readiness at scrape time, with the very check the
    /// probe makes, keeps the gauge and the probe from ever disagreeing and
    /// needs no task refreshing it between scrapes.
    pub fn response(&self, ready: bool) -> Result<Response, std::fmt::Error> {
        Ok((
            [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
            self.render(ready)?,
        )
            .into_response())
    }

    /// The `/metrics` page as text (see [`response`](Self::response)).
    pub fn render(&self, ready: bool) -> Result<String, std::fmt::Error> {
        self.inner.ready.set(i64::from(ready));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.inner.registry)?;
        Ok(text)
    }
}

#[cfg(test)]
mod tests;

/// Writes one metric with its name and help, for collectors that read
/// their figures at each scrape.
pub fn emit(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}
