//! A harness for tests against a real `collab serve` process.
//!
//! [`CollabServer`] runs the built `collab` binary on a free loopback port
//! with a temporary data dir, learns its address from the `listening on`
//! line it prints, and kills it when dropped. [`WsClient`] speaks the JSON
//! WebSocket protocol to it with a deadline on every read, so a test that
//! waits for a frame fails instead of hanging.
//!
//! Which binary: `$COLLAB_BIN` when set; otherwise `target/<profile>/collab`
//! beside the test executable, after running `cargo build -p collab` once
//! per test process (a no-op when it is fresh). The `collab` package's
//! binary is not built for another package's tests (`CARGO_BIN_EXE_collab`
//! only exists inside `collab`), and building it here means a test never
//! runs a stale binary after a change to the server.
//!
//! [`cluster`] runs a whole cluster of gateways and room nodes;
//! [`prometheus`] a real Prometheus that scrapes them; [`netns`] puts a
//! process of a cluster behind a link a test can cut; [`webhooks`] a
//! webhook receiver that checks signatures and records deliveries.

pub mod cluster;
mod cql;
pub mod netns;
pub mod prometheus;
mod server;
pub mod webhooks;
mod ws;

use std::time::Duration;

pub use cql::{CqlNode, shared_cql_store_url};
pub use server::{CollabServer, ServerOptions, collab_binary};
pub use ws::{WsClient, WsError, upgrade_refusal, upgrade_status};

/// How long a test waits for the server to start or stop, or for a
/// frame, before it fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Something the harness could not do.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("cannot build or find the collab binary: {0}")]
    Binary(String),
    #[error("collab did not start: {0}")]
    Start(String),
    #[error("collab did not stop: {0}")]
    Stop(String),
    #[error("http: {0}")]
    Http(String),
    #[error("test setup: {0}")]
    Setup(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}
