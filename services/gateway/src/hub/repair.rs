//! Gap repair: a room's stream is at-most-once, so a room task that sees
//! a seq jump (or a lag) fetches the missing ops from the room's owner
//! before it delivers anything newer, and brings members that joined
//! behind the stream up to it. A fetch that fails is retried after
//! [`CATCH_UP_RETRY`] even if the room stays quiet.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use collab_protocol::envelope::{RoomEvent, RoomReply, RoomRequest};
use collab_protocol::{ConnId, OpEvent, Seq};
use tokio::time::Instant;
use tracing::warn;

use super::fanout::{Fanout, Phase};

/// Ops fetched per request when filling a gap.
const FETCH_PAGE: u32 = 1000;
/// How long after a failed gap fetch (the owner moving or unreachable) the
/// next try starts, when no newer event triggers one first.
const CATCH_UP_RETRY: Duration = Duration::from_millis(500);
impl Fanout {
    /// Fetches the ops after `last_seq` (up to `until`, or as far as the
    /// owner has) and delivers them.
    pub(super) async fn catch_up(&mut self, until: Option<Seq>) {
        let Some(mut after) = self.last_seq else {
            return;
        };
        self.metrics.gaps_fetched.inc();
        loop {
            if until.is_some_and(|u| after >= u) {
                break;
            }
            let ops = match self.fetch(after).await {
                Some(ops) if !ops.is_empty() => ops,
                Some(_) => break,
                None => {
                    // Members may be missing ops: try again soon even if
                    // the room stays quiet.
                    self.schedule_retry();
                    break;
                }
            };
            for op in ops {
                if until.is_some_and(|u| op.seq > u) || op.seq <= after {
                    continue;
                }
                after = op.seq;
                self.last_seq = Some(op.seq);
                self.deliver_all(&Arc::new(RoomEvent::Op(op))).await;
            }
        }
    }

    async fn fetch(&self, after: Seq) -> Option<Vec<OpEvent>> {
        let request = RoomRequest::Fetch {
            room: self.room.clone(),
            after,
            limit: FETCH_PAGE,
        };
        match self.bus.request(request, self.timeout).await {
            Ok(RoomReply::Ops { ops }) => Some(ops),
            other => {
                warn!(room = %self.room, reply = ?other, "gap fetch failed");
                None
            }
        }
    }

    pub(super) fn schedule_retry(&mut self) {
        self.retry_at
            .get_or_insert_with(|| Instant::now() + CATCH_UP_RETRY);
    }

    /// Brings every member that is behind the stream up to it.
    pub(super) async fn fill_members(&mut self) {
        let Some(last) = self.last_seq else {
            return;
        };
        let behind: Vec<(ConnId, Seq)> = self
            .members
            .iter()
            .filter_map(|(conn, member)| match member.phase {
                Phase::Live { head } if head < last => Some((conn.clone(), head)),
                _ => None,
            })
            .collect();
        for (conn, head) in behind {
            self.fill_member(&conn, head, last).await;
        }
    }

    /// Brings one member from `head` up to `last`.
    pub(super) async fn fill_member(&mut self, conn: &ConnId, head: Seq, last: Seq) {
        let mut after = head;
        while after < last {
            let Some(ops) = self.fetch(after).await else {
                self.schedule_retry();
                return;
            };
            let Some(end) = ops.last().map(|op| op.seq) else {
                return;
            };
            for op in ops.into_iter().filter(|op| op.seq <= last) {
                self.deliver_to(conn, &Arc::new(RoomEvent::Op(op))).await;
            }
            after = end;
        }
    }

    /// A live member at `head` was offered the op `event` past a gap: fills
    /// the gap, then delivers the op, or leaves both to the retry when the
    /// owner cannot be reached (never delivering past a gap).
    pub(super) async fn fill_then_deliver(
        &mut self,
        conn: &ConnId,
        head: Seq,
        event: &Arc<RoomEvent>,
        frame: &Utf8Bytes,
    ) {
        let RoomEvent::Op(op) = event.as_ref() else {
            return;
        };
        let seq = op.seq;
        Box::pin(self.fill_member(conn, head, Seq(seq.get() - 1))).await;
        let Some(member) = self.members.get_mut(conn) else {
            return;
        };
        let filled = matches!(member.phase,
            Phase::Live { head } if head.get() + 1 >= seq.get());
        if !filled {
            self.schedule_retry();
            return;
        }
        member.outbound.push(frame.clone());
        member.phase = Phase::Live { head: seq };
    }
}
