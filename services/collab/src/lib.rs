//! The `collab` binary's library: everything `main.rs` calls, so that
//! the binary stays a thin shell of argument parsing and exit codes.
//!
//! - [`config`] — the one typed configuration and its layered loader;
//! - [`serve`] — `collab serve`, gateway and room node in one process
//!   (the room node on a thread of its own: `rooms_thread`);
//! - [`cluster`] — `collab gateway` and `collab room-node`, the same two
//!   over NATS and a CQL store;
//! - [`token`] — `collab token`, minting JWTs;
//! - [`secret`] — the configured or generated (dev mode) signing secret;
//! - [`keys`] — `[auth]`: accepted algorithms and the JWKS of public keys;
//! - [`store_metrics`] — the embedded store's figures on `/metrics`;
//! - [`signals`] — SIGTERM/SIGINT handling (drain, then exit at once);
//! - [`telemetry`] — logging.

pub mod cluster;
pub mod config;
pub mod keys;
mod rooms_thread;
pub mod secret;
pub mod serve;
pub mod signals;
pub mod store_metrics;
pub mod telemetry;
pub mod token;

/// This build's version, as `collab --version` and `collab_build_info`
/// say it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Exit code for bad usage or configuration (`EX_USAGE` of sysexits.h).
pub const EXIT_USAGE: u8 = 64;
