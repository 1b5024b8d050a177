//! `collab-load`, the load generator: it opens many WebSocket clients,
//! joins them to rooms and drives a scenario at a fixed offered rate (open
//! loop: it does not slow down when the server does), for a fixed time,
//! optionally after a warm-up whose traffic is checked but not timed.
//!
//! It measures what clients see: the end-to-end latency of every op and
//! cursor (the sender's due time travels in the payload; every process runs
//! on one host clock), ack latency, connect and join times, and whether each
//! op reached every member exactly once and in order. It samples the
//! server's CPU and memory from `/proc`, and its own.
//!
//! The same traffic runs against `collab serve` (or a cluster's gateways:
//! a target is a list of WebSocket URLs and a way to get tokens), a bare
//! relay ([`relay`]: the machine's limit for this traffic) and Centrifugo,
//! so their figures can be put side by side.
//!
//! - [`scenario`]: what each simulated user sends, on which schedule;
//! - [`target`]: each server's wire protocol for that traffic;
//! - [`worker`]: one single-threaded share of the clients;
//! - [`run`]: workers in threads or processes, started together, merged;
//! - [`capacity`]: steps the load up until p99 passes a bound;
//! - [`rounds`]: repeated, interleaved capacity runs summed up per size;
//! - [`latejoin`]: time to join a board with a long history;
//! - [`publish`]: ops posted over HTTP by an app's backend;
//! - [`report`]: JSON, Markdown and SVG plots.

pub mod capacity;
pub mod latejoin;
pub mod publish;
pub mod relay;
pub mod report;
pub mod rounds;
pub mod run;
pub mod scenario;
pub mod setup;
pub mod stats;
pub mod sysstat;
pub mod target;
pub mod worker;
