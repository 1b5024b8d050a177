//! What the webhook dispatcher keeps durably ([`WebhookLog`]).
//!
//! The op log is the webhooks' outbox: nothing is copied out of it. What
//! the dispatcher adds is small:
//!
//! - a **cursor** per (endpoint, room): the highest seq of the room that the
//!   endpoint has been sent (or that its filters skipped). The dispatcher
//!   reads the log after it, so a process that dies between a commit and
//!   its webhook loses nothing: the next dispatcher starts from the cursor.
//! - **marks**: a room with a mark may have ops no endpoint has been sent
//!   yet. A room node marks a room durably before it first appends to it
//!   (and again after it cleared its mark), and clears its mark once every
//!   endpoint's cursor reached the head. A dispatcher that starts lists the
//!   marks to find rooms whose actors nothing will start again. A mark is
//!   a row per (room, mark id), so clearing one writer's mark never clears
//!   another's (see docs/adr/0016-webhooks-from-the-log.md).

use async_trait::async_trait;
use collab_protocol::{RoomId, Seq};

use crate::StoreResult;

/// The webhook dispatcher's durable state. Every [`Store`](crate::Store)
/// implementation of this crate has one ([`Store::webhook_log`](crate::Store::webhook_log)).
#[async_trait]
pub trait WebhookLog: Send + Sync + 'static {
    /// Every endpoint's cursor in `room`: (endpoint id, seq), ordered by
    /// endpoint id. An endpoint with no cursor was sent nothing of it yet.
    async fn webhook_cursors(&self, room: &RoomId) -> StoreResult<Vec<(String, Seq)>>;

    /// Sets `endpoint`'s cursor in `room` to `seq` (durably, before it
    /// returns).
    async fn set_webhook_cursor(&self, endpoint: &str, room: &RoomId, seq: Seq) -> StoreResult<()>;

    /// Adds the mark `mark` to `room` (durably, before it returns).
    async fn add_webhook_mark(&self, room: &RoomId, mark: &str) -> StoreResult<()>;

    /// Removes the mark `mark` of `room`, and that one only; a no-op if it
    /// is not there.
    async fn remove_webhook_mark(&self, room: &RoomId, mark: &str) -> StoreResult<()>;

    /// Every mark of every room: (room, mark id), ordered by room.
    async fn webhook_marks(&self) -> StoreResult<Vec<(RoomId, String)>>;
}
