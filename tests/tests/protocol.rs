//! The public protocol end to end, over real sockets against a `collab
//! serve` process on the embedded store: one gapless order for everyone,
//! acks, resume with `since` and `epoch`, idempotent re-join, presence per
//! user across tabs, cursor relay that never echoes, read-only tokens,
//! private rooms and history pages.

use collab_tests::harness::{CollabServer, ServerOptions};

#[path = "protocol_cases/mod.rs"]
mod cases;

fn start() -> CollabServer {
    CollabServer::start(ServerOptions::new()).expect("collab serve starts")
}
