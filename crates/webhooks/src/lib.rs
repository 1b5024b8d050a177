//! Webhooks: the events of rooms, POSTed to the endpoints an operator
//! configures (`[[webhooks]]`), signed, at least once, in seq order per
//! endpoint and room.
//!
//! The op log is the outbox. A room node writes its rooms through a
//! [`MarkingStore`], which marks a room durably before its first write and
//! reports every commit to the node's [`Dispatcher`]; the dispatcher reads
//! each room's log after every endpoint's durable cursor, sends what it
//! finds ([`sender`], signed as in [`signature`]), retries failures with
//! [`backoff`], and moves the cursor on a 2xx. A process killed at any
//! point loses nothing: the next owner of the room reads from the cursor,
//! and finds rooms nobody touches again by their marks. The reasons, and
//! what each event kind guarantees, are in
//! docs/adr/0016-webhooks-from-the-log.md.

pub mod backoff;
pub mod config;
mod dispatcher;
pub mod marking;
pub mod metrics;
pub mod sender;
pub mod signature;

pub use config::{EventKind, WebhookConfig, WebhookSecret};
pub use dispatcher::{DispatchError, DispatchOptions, Dispatcher, Placement, Solo, Webhooks};
pub use marking::MarkingStore;
pub use metrics::WebhookMetrics;
