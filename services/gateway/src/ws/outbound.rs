//! One connection's outbound queue: what its room fan-outs, its replies
//! and the gateway want written to it, waiting for the connection's loop.
//!
//! No socket in here: [`Queue`] is plain data with the queue's rules, and
//! [`Outbound`] shares one between the producers (the rooms' fan-out tasks,
//! revocations, the drain) and the connection's loop, which it wakes.
//! A burst of pushes before the loop runs wakes it once, and the loop takes
//! everything queued in one go.
//!
//! Bounded, so a client that does not read cannot hold the server's memory
//! or anybody's time: when the queue is full the connection closes as too
//! slow (4008) and everything queued is dropped. Cursors do not queue: the
//! latest position per (room, user) replaces the previous one. A `joined`
//! frame, which can be large, is queued without counting against the bound.

use std::collections::VecDeque;
use std::collections::hash_map::{Entry, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use axum::extract::ws::Utf8Bytes;
use collab_protocol::RoomId;
use futures_util::task::AtomicWaker;

use super::close::Close;

/// What the connection's loop does next.
#[derive(Debug, PartialEq)]
pub(crate) enum Batch {
    /// Write the frames just taken, in order, then flush. `counted` of them
    /// still count against the bound until [`Queue::sent`] says they
    /// reached the socket.
    Frames { counted: usize },
    /// Close the connection; nothing else goes out.
    Close(Close),
}

/// The queue's rules, without any synchronisation.
pub(crate) struct Queue {
    /// Frames in order, each marked whether it counts against `capacity`.
    frames: VecDeque<(Utf8Bytes, bool)>,
    /// Counted frames queued or taken and not yet written: the bound covers
    /// everything the connection holds, so writing a batch at once does not
    /// let a slow reader hold more than `capacity` frames.
    counted: usize,
    capacity: usize,
    /// Latest cursor frame per key, sent after the queued frames, in the
    /// order the keys first appeared. The key maps to its frame's slot in
    /// `cursor_frames`; it is shared by every member's queue. Every cursor
    /// delivered is one look-up here: foldhash instead of SipHash, and one
    /// hash per look-up instead of two, cut the server's instructions per
    /// delivered event by 1.1% (`scripts/instructions.sh`).
    cursors: CursorSlots,
    cursor_frames: Vec<Utf8Bytes>,
    close: Option<Close>,
    /// Rooms that dropped the connection, and why, for the loop to forget.
    removed: Vec<(RoomId, Dropped)>,
}

/// A cursor key's slot in `cursor_frames`.
type CursorSlots = HashMap<Arc<str>, usize, foldhash::fast::RandomState>;

/// Why a room dropped a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// The room was deleted; its fan-out task has ended.
    RoomDeleted,
    /// The connection's user was taken out of the room (kicked, or no
    /// longer a member); the room's fan-out task goes on without it.
    UserRemoved,
}

impl Queue {
    pub fn new(capacity: usize) -> Queue {
        Queue {
            frames: VecDeque::new(),
            counted: 0,
            capacity: capacity.max(1),
            cursors: CursorSlots::default(),
            cursor_frames: Vec::new(),
            close: None,
            removed: Vec::new(),
        }
    }

    /// Queues a frame (`counted`: against the bound). Returns `false` if
    /// the connection is closing, or became too slow by this push.
    pub fn push(&mut self, frame: Utf8Bytes, counted: bool) -> bool {
        if self.close.is_some() {
            return false;
        }
        if counted && self.counted >= self.capacity {
            self.close(Close::SLOW);
            return false;
        }
        self.frames.push_back((frame, counted));
        self.counted += usize::from(counted);
        true
    }

    /// Replaces the pending cursor frame for `key`; `false` if the
    /// connection is closing.
    pub fn push_cursor(&mut self, key: Arc<str>, frame: Utf8Bytes) -> bool {
        if self.close.is_some() {
            return false;
        }
        match self.cursors.entry(key) {
            Entry::Occupied(slot) => self.cursor_frames[*slot.get()] = frame,
            Entry::Vacant(slot) => {
                slot.insert(self.cursor_frames.len());
                self.cursor_frames.push(frame);
            }
        }
        true
    }

    /// Asks for `close` after nothing else: whatever is still queued is
    /// dropped. The first close wins; `true` if this one did.
    pub fn close(&mut self, close: Close) -> bool {
        if self.close.is_some() {
            return false;
        }
        self.close = Some(close);
        self.frames = VecDeque::new();
        self.counted = 0;
        self.cursors = CursorSlots::default();
        self.cursor_frames = Vec::new();
        true
    }

    pub fn closing(&self) -> Option<Close> {
        self.close
    }

    /// Takes everything there is to write: appends the queued frames and
    /// then the pending cursors to `batch` (which the loop reuses, so its
    /// buffer is allocated once), or says to close; `None` when there is
    /// nothing.
    pub fn take(&mut self, batch: &mut Vec<Utf8Bytes>) -> Option<Batch> {
        if let Some(close) = self.close {
            return Some(Batch::Close(close));
        }
        if self.frames.is_empty() && self.cursor_frames.is_empty() {
            return None;
        }
        let mut counted = 0;
        batch.reserve(self.frames.len() + self.cursor_frames.len());
        for (frame, is_counted) in self.frames.drain(..) {
            counted += usize::from(is_counted);
            batch.push(frame);
        }
        batch.append(&mut self.cursor_frames);
        self.cursors.clear();
        Some(Batch::Frames { counted })
    }

    /// A batch with `counted` counted frames reached the socket: they stop
    /// counting against the bound.
    pub fn sent(&mut self, counted: usize) {
        // A close in between already reset the count.
        self.counted = self.counted.saturating_sub(counted);
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty() && self.cursor_frames.is_empty()
    }
}

/// A [`Queue`] shared between its producers and the connection's loop.
pub(crate) struct Outbound {
    queue: Mutex<Queue>,
    /// Something changed since the loop last looked.
    news: AtomicBool,
    /// The loop's task, while it waits.
    waker: AtomicWaker,
}

impl Outbound {
    pub fn new(capacity: usize) -> Outbound {
        Outbound {
            queue: Mutex::new(Queue::new(capacity)),
            news: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        }
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        // Every update of the queue leaves it consistent at each step.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the loop, unless it was already told and has not looked yet.
    fn wake(&self) {
        if !self.news.swap(true, Ordering::AcqRel) {
            self.waker.wake();
        }
    }

    /// Resolves once something was pushed, closed or removed since the last
    /// time it resolved. One waiter only: the connection's loop.
    pub fn poll_news(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.news.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // A push between the check and the registration found no waker.
        if self.news.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Queues a frame. Returns `false` if the connection is closing, or
    /// became too slow by this push.
    pub fn push(&self, frame: Utf8Bytes) -> bool {
        let queued = self.queue().push(frame, true);
        self.wake();
        queued
    }

    /// Queues a frame that does not count against the bound (`joined`).
    pub fn push_uncounted(&self, frame: Utf8Bytes) -> bool {
        let queued = self.queue().push(frame, false);
        self.wake();
        queued
    }

    /// Replaces the pending cursor frame for `key`.
    pub fn push_cursor(&self, key: Arc<str>, frame: Utf8Bytes) {
        if self.queue().push_cursor(key, frame) {
            self.wake();
        }
    }

    /// Closes the connection with `close` after nothing else, unless it is
    /// closing already (the first close wins); `true` if this one did.
    pub fn close(&self, close: Close) -> bool {
        let first = self.queue().close(close);
        self.wake();
        first
    }

    /// The close the connection is ending with, if it is.
    pub fn closing(&self) -> Option<Close> {
        self.queue().closing()
    }

    /// `room` dropped this connection (see [`Dropped`]): the loop forgets
    /// it.
    pub fn removed_from(&self, room: RoomId, why: Dropped) {
        self.queue().removed.push((room, why));
        self.wake();
    }

    /// The rooms that dropped this connection since the last call.
    pub fn take_removed(&self) -> Vec<(RoomId, Dropped)> {
        std::mem::take(&mut self.queue().removed)
    }

    /// See [`Queue::take`].
    pub fn take(&self, batch: &mut Vec<Utf8Bytes>) -> Option<Batch> {
        self.queue().take(batch)
    }

    /// See [`Queue::sent`].
    pub fn sent(&self, counted: usize) {
        self.queue().sent(counted);
    }

    /// Whether frames wait to be taken.
    pub fn has_frames(&self) -> bool {
        !self.queue().is_empty()
    }

    /// The next frame alone, in the order a batch would have it (tests
    /// only; the loop takes batches).
    #[cfg(test)]
    pub async fn next(&self) -> Next {
        loop {
            {
                let mut queue = self.queue();
                if let Some(close) = queue.close {
                    return Next::Close(close.code);
                }
                if let Some((frame, counted)) = queue.frames.pop_front() {
                    queue.counted -= usize::from(counted);
                    return Next::Frame(frame);
                }
                if !queue.cursor_frames.is_empty() {
                    let frame = queue.cursor_frames.remove(0);
                    queue.cursors.retain(|_, slot| {
                        *slot = slot.wrapping_sub(1);
                        *slot != usize::MAX
                    });
                    return Next::Frame(frame);
                }
            }
            std::future::poll_fn(|cx| self.poll_news(cx)).await;
        }
    }
}

/// One frame at a time, for tests that read what a connection was sent.
#[cfg(test)]
#[derive(Debug)]
pub(crate) enum Next {
    Frame(Utf8Bytes),
    Close(u16),
}

#[cfg(test)]
mod tests {
    use super::super::close::{CLOSE_GOING_AWAY, CLOSE_TOO_SLOW};
    use super::*;

    fn text(n: usize) -> Utf8Bytes {
        Utf8Bytes::from(format!("f{n}"))
    }

    fn take(queue: &mut Queue) -> (Option<Batch>, Vec<String>) {
        let mut batch = Vec::new();
        let next = queue.take(&mut batch);
        (next, batch.iter().map(|f| f.as_str().to_owned()).collect())
    }

    #[test]
    fn frames_in_order_then_coalesced_cursors_in_one_batch() {
        let mut queue = Queue::new(10);
        queue.push(text(1), true);
        queue.push_cursor("a".into(), Utf8Bytes::from("cursor-a1"));
        queue.push_cursor("b".into(), Utf8Bytes::from("cursor-b1"));
        queue.push_cursor("a".into(), Utf8Bytes::from("cursor-a2"));
        queue.push(Utf8Bytes::from("joined"), false);
        queue.push(text(2), true);
        let (next, got) = take(&mut queue);
        assert_eq!(next, Some(Batch::Frames { counted: 2 }));
        assert_eq!(got, ["f1", "joined", "f2", "cursor-a2", "cursor-b1"]);
        assert_eq!(take(&mut queue), (None, vec![]));

        // Cursors coalesce afresh after a batch took them.
        queue.push_cursor("b".into(), Utf8Bytes::from("cursor-b2"));
        queue.push_cursor("a".into(), Utf8Bytes::from("cursor-a3"));
        queue.push_cursor("b".into(), Utf8Bytes::from("cursor-b3"));
        let (next, got) = take(&mut queue);
        assert_eq!(next, Some(Batch::Frames { counted: 0 }));
        assert_eq!(got, ["cursor-b3", "cursor-a3"]);
    }

    #[test]
    fn overflow_closes_with_4008_and_drops_the_queue() {
        let mut queue = Queue::new(3);
        assert!(queue.push(Utf8Bytes::from("joined"), false));
        for n in 0..3 {
            assert!(queue.push(text(n), true));
        }
        assert!(queue.push_cursor("a".into(), Utf8Bytes::from("cursor-a")));
        assert_eq!(queue.closing(), None);
        assert!(!queue.push(text(3), true));
        assert_eq!(queue.closing(), Some(Close::SLOW));
        assert_eq!(queue.closing().map(|c| c.code), Some(CLOSE_TOO_SLOW));
        assert_eq!(take(&mut queue), (Some(Batch::Close(Close::SLOW)), vec![]));
        assert!(!queue.push(text(4), true));
        assert!(!queue.push_cursor("a".into(), Utf8Bytes::from("cursor-a")));
        assert_eq!(take(&mut queue), (Some(Batch::Close(Close::SLOW)), vec![]));
    }

    #[test]
    fn taken_frames_count_until_sent() {
        let mut queue = Queue::new(2);
        assert!(queue.push(text(1), true));
        assert!(queue.push(text(2), true));
        assert_eq!(take(&mut queue).0, Some(Batch::Frames { counted: 2 }));
        // Taken by the loop, not yet in the socket: the bound still holds.
        assert!(!queue.push(text(3), true));
        assert_eq!(queue.closing(), Some(Close::SLOW));

        let mut queue = Queue::new(2);
        assert!(queue.push(text(1), true));
        assert!(queue.push(text(2), true));
        assert_eq!(take(&mut queue).0, Some(Batch::Frames { counted: 2 }));
        queue.sent(2);
        assert!(queue.push(text(3), true));
        assert!(queue.push(text(4), true));
        assert_eq!(queue.closing(), None);
    }

    #[test]
    fn uncounted_frames_do_not_fill_the_queue() {
        let mut queue = Queue::new(1);
        for _ in 0..5 {
            assert!(queue.push(Utf8Bytes::from("big"), false));
        }
        assert!(queue.push(text(0), true));
        assert_eq!(queue.closing(), None);
        assert_eq!(take(&mut queue).0, Some(Batch::Frames { counted: 1 }));
    }

    #[test]
    fn first_close_wins() {
        let mut queue = Queue::new(4);
        assert!(queue.close(Close::CLIENT));
        assert!(!queue.close(Close::SLOW));
        assert_eq!(queue.closing().map(|c| c.code), Some(CLOSE_GOING_AWAY));
    }

    #[tokio::test]
    async fn pushes_before_the_loop_looks_wake_it_once() {
        let out = Arc::new(Outbound::new(10));
        let waiting = {
            let out = out.clone();
            tokio::spawn(async move {
                std::future::poll_fn(|cx| out.poll_news(cx)).await;
                let mut batch = Vec::new();
                let next = out.take(&mut batch);
                (next, batch.len())
            })
        };
        out.push(text(1));
        out.push(text(2));
        let taken = tokio::time::timeout(std::time::Duration::from_secs(10), waiting).await;
        assert!(
            matches!(taken, Ok(Ok((Some(Batch::Frames { counted: 2 }), 2)))),
            "{taken:?}"
        );
        // Both pushes were news once: nothing more is pending.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(out.poll_news(&mut cx).is_pending());
    }

    #[tokio::test]
    async fn frames_one_at_a_time_come_in_batch_order() {
        let out = Outbound::new(10);
        out.push_cursor("a".into(), Utf8Bytes::from("cursor-a1"));
        out.push_cursor("b".into(), Utf8Bytes::from("cursor-b1"));
        out.push(text(1));
        let mut got = Vec::new();
        for _ in 0..3 {
            match out.next().await {
                Next::Frame(f) => got.push(f.as_str().to_owned()),
                Next::Close(code) => panic!("closed {code}"),
            }
        }
        assert_eq!(got, ["f1", "cursor-a1", "cursor-b1"]);
        // The slots moved down with the frames taken: b still coalesces.
        out.push_cursor("b".into(), Utf8Bytes::from("cursor-b2"));
        out.push_cursor("b".into(), Utf8Bytes::from("cursor-b3"));
        let mut batch = Vec::new();
        out.take(&mut batch);
        assert_eq!(batch, [Utf8Bytes::from("cursor-b3")]);
    }
}
