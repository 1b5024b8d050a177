//! The same protocol cases as `protocol.rs`, against `collab serve --store
//! cql://…`: each server gets a keyspace of its own on the run's shared CQL
//! server (`COLLAB_TEST_CQL`).

use collab_tests::harness::{CollabServer, ServerOptions, shared_cql_store_url};

#[path = "protocol_cases/mod.rs"]
mod cases;

fn start() -> CollabServer {
    CollabServer::start(ServerOptions::new().store(shared_cql_store_url()))
        .expect("collab serve --store cql://… starts")
}
