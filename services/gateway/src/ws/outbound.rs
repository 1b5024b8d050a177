//! One connection's outbound queue.
//!
//! Bounded, so a client that does not read cannot hold the server's memory
//! or anybody's time: when the queue is full the connection is marked too
//! slow, everything queued is dropped, and the writer sends close 4008 as
//! soon as the socket takes a frame again. Cursors do not queue: the latest
//! position per (room, user) replaces the previous one. A `joined` frame,
//! which can be large, is queued without counting against the bound.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{Notify, watch};

/// Close codes the gateway uses.
pub(crate) const CLOSE_GOING_AWAY: u16 = 1001;
pub(crate) const CLOSE_TOO_BIG: u16 = 1009;
pub(crate) const CLOSE_REVOKED: u16 = 4001;
pub(crate) const CLOSE_TOO_SLOW: u16 = 4008;

/// What the writer does next.
#[derive(Debug, PartialEq)]
pub(crate) enum Batch {
    /// Write the frames just taken, in order, then flush. `counted` of them
    /// still count against the bound until [`Outbound::sent`] says they
    /// reached the socket.
    Frames {
        counted: usize,
    },
    Close(u16, &'static str),
}

/// One frame at a time, for tests that read what a connection was sent.
#[cfg(test)]
#[derive(Debug)]
pub(crate) enum Next {
    Frame(Utf8Bytes),
    Close(u16),
}

pub(crate) struct Outbound {
    state: Mutex<State>,
    ready: Notify,
    closed: watch::Sender<bool>,
    capacity: usize,
}

struct State {
    /// Frames in order, each marked whether it counts against `capacity`.
    queue: VecDeque<(Utf8Bytes, bool)>,
    /// Counted frames queued or taken by the writer and not yet written:
    /// the bound covers everything the connection holds, so writing a batch
    /// at once does not let a slow reader hold more than `capacity` frames.
    counted: usize,
    /// Latest cursor frame per key, sent after the queued frames, in the
    /// order the keys first appeared. The key maps to its frame's slot in
    /// `cursor_frames`; it is shared by every member's queue.
    cursors: HashMap<Arc<str>, usize>,
    cursor_frames: Vec<Utf8Bytes>,
    close: Option<(u16, &'static str)>,
}

impl Outbound {
    pub fn new(capacity: usize) -> Self {
        Outbound {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                counted: 0,
                cursors: HashMap::new(),
                cursor_frames: Vec::new(),
                close: None,
            }),
            ready: Notify::new(),
            closed: watch::channel(false).0,
            capacity: capacity.max(1),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update below leaves the state consistent at each step.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a frame. Returns `false` if the connection is closing, or
    /// became too slow by this push.
    pub fn push(&self, frame: Utf8Bytes) -> bool {
        self.push_inner(frame, true)
    }

    /// Queues a frame that does not count against the bound (`joined`).
    pub fn push_uncounted(&self, frame: Utf8Bytes) -> bool {
        self.push_inner(frame, false)
    }

    fn push_inner(&self, frame: Utf8Bytes, counted: bool) -> bool {
        let mut state = self.state();
        if state.close.is_some() {
            return false;
        }
        if counted && state.counted >= self.capacity {
            drop(state);
            self.close(CLOSE_TOO_SLOW, "too slow");
            return false;
        }
        state.queue.push_back((frame, counted));
        if counted {
            state.counted += 1;
        }
        drop(state);
        self.ready.notify_one();
        true
    }

    /// Replaces the pending cursor frame for `key`.
    pub fn push_cursor(&self, key: Arc<str>, frame: Utf8Bytes) {
        let mut state = self.state();
        if state.close.is_some() {
            return;
        }
        let state = &mut *state;
        match state.cursors.get(&key) {
            Some(&slot) => state.cursor_frames[slot] = frame,
            None => {
                state.cursors.insert(key, state.cursor_frames.len());
                state.cursor_frames.push(frame);
            }
        }
        self.ready.notify_one();
    }

    /// Asks the writer to close with `code` after nothing else: whatever is
    /// still queued is dropped. The first close wins.
    pub fn close(&self, code: u16, reason: &'static str) {
        let mut state = self.state();
        if state.close.is_none() {
            state.close = Some((code, reason));
            state.queue = VecDeque::new();
            state.counted = 0;
            state.cursors = HashMap::new();
            state.cursor_frames = Vec::new();
        }
        drop(state);
        self.closed.send_replace(true);
        self.ready.notify_one();
    }

    pub fn is_closing(&self) -> bool {
        *self.closed.borrow()
    }

    /// Resolves once a close was asked for.
    pub async fn closing(&self) {
        let mut rx = self.closed.subscribe();
        let _ = rx.wait_for(|closed| *closed).await;
    }

    /// The code the connection is closing with, if it is.
    pub fn close_code(&self) -> Option<u16> {
        self.state().close.map(|(code, _)| code)
    }

    /// Waits for something to write, then takes everything there is:
    /// appends the queued frames and then the pending cursors to `batch`
    /// (which the writer reuses, so its buffer is allocated once), or says
    /// to close.
    pub async fn take(&self, batch: &mut Vec<Utf8Bytes>) -> Batch {
        loop {
            if let Some(next) = self.try_take(batch) {
                return next;
            }
            self.ready.notified().await;
        }
    }

    fn try_take(&self, batch: &mut Vec<Utf8Bytes>) -> Option<Batch> {
        let mut state = self.state();
        if let Some((code, reason)) = state.close {
            return Some(Batch::Close(code, reason));
        }
        if state.queue.is_empty() && state.cursor_frames.is_empty() {
            return None;
        }
        let mut counted = 0;
        batch.reserve(state.queue.len() + state.cursor_frames.len());
        for (frame, is_counted) in state.queue.drain(..) {
            counted += usize::from(is_counted);
            batch.push(frame);
        }
        batch.append(&mut state.cursor_frames);
        state.cursors.clear();
        Some(Batch::Frames { counted })
    }

    /// The next frame alone (tests only; the writer takes batches), in the
    /// order a batch would have it.
    #[cfg(test)]
    pub async fn next(&self) -> Next {
        loop {
            {
                let mut state = self.state();
                if let Some((code, _)) = state.close {
                    return Next::Close(code);
                }
                if let Some((frame, counted)) = state.queue.pop_front() {
                    state.counted -= usize::from(counted);
                    return Next::Frame(frame);
                }
                if !state.cursor_frames.is_empty() {
                    let frame = state.cursor_frames.remove(0);
                    state.cursors.retain(|_, slot| {
                        *slot = slot.wrapping_sub(1);
                        *slot != usize::MAX
                    });
                    return Next::Frame(frame);
                }
            }
            self.ready.notified().await;
        }
    }

    /// The writer handed `counted` counted frames of its batch to the
    /// socket: they stop counting against the bound.
    pub fn sent(&self, counted: usize) {
        let mut state = self.state();
        // A close in between already reset the count.
        state.counted = state.counted.saturating_sub(counted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(n: usize) -> Utf8Bytes {
        Utf8Bytes::from(format!("f{n}"))
    }

    /// Takes what the writer would take now.
    fn take(out: &Outbound) -> (Option<Batch>, Vec<String>) {
        let mut batch = Vec::new();
        let next = out.try_take(&mut batch);
        (next, batch.iter().map(|f| f.as_str().to_owned()).collect())
    }

    #[tokio::test]
    async fn frames_in_order_then_coalesced_cursors_in_one_batch() {
        let out = Outbound::new(10);
        out.push(text(1));
        out.push_cursor("a".into(), Utf8Bytes::from("cursor-a1"));
        out.push_cursor("b".into(), Utf8Bytes::from("cursor-b1"));
        out.push_cursor("a".into(), Utf8Bytes::from("cursor-a2"));
        out.push_uncounted(Utf8Bytes::from("joined"));
        out.push(text(2));
        let (next, got) = take(&out);
        assert_eq!(next, Some(Batch::Frames { counted: 2 }));
        assert_eq!(got, ["f1", "joined", "f2", "cursor-a2", "cursor-b1"]);
        assert_eq!(take(&out), (None, vec![]));

        // Cursors coalesce afresh after a batch took them.
        out.push_cursor("b".into(), Utf8Bytes::from("cursor-b2"));
        out.push_cursor("a".into(), Utf8Bytes::from("cursor-a3"));
        out.push_cursor("b".into(), Utf8Bytes::from("cursor-b3"));
        let (next, got) = take(&out);
        assert_eq!(next, Some(Batch::Frames { counted: 0 }));
        assert_eq!(got, ["cursor-b3", "cursor-a3"]);
    }

    #[tokio::test]
    async fn next_waits_for_a_frame() {
        let out = std::sync::Arc::new(Outbound::new(10));
        let waiting = {
            let out = out.clone();
            tokio::spawn(async move {
                let mut batch = Vec::new();
                let next = out.take(&mut batch).await;
                (next, batch.len())
            })
        };
        out.push(text(1));
        let taken = tokio::time::timeout(std::time::Duration::from_secs(10), waiting).await;
        assert!(
            matches!(taken, Ok(Ok((Batch::Frames { counted: 1 }, 1)))),
            "{taken:?}"
        );
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
        assert_eq!(take(&out).1, ["cursor-b3"]);
    }

    #[tokio::test]
    async fn overflow_closes_with_4008_and_drops_the_queue() {
        let out = Outbound::new(3);
        assert!(out.push_uncounted(Utf8Bytes::from("joined")));
        for n in 0..3 {
            assert!(out.push(text(n)));
        }
        out.push_cursor("a".into(), Utf8Bytes::from("cursor-a"));
        assert!(!out.is_closing());
        assert!(!out.push(text(3)));
        assert!(out.is_closing());
        assert_eq!(out.close_code(), Some(CLOSE_TOO_SLOW));
        let mut batch = Vec::new();
        assert_eq!(
            out.take(&mut batch).await,
            Batch::Close(CLOSE_TOO_SLOW, "too slow")
        );
        assert!(batch.is_empty());
        assert!(!out.push(text(4)));
        out.push_cursor("a".into(), Utf8Bytes::from("cursor-a"));
        assert_eq!(
            take(&out),
            (Some(Batch::Close(CLOSE_TOO_SLOW, "too slow")), vec![])
        );
    }

    #[tokio::test]
    async fn taken_frames_count_until_sent() {
        let out = Outbound::new(2);
        assert!(out.push(text(1)));
        assert!(out.push(text(2)));
        assert_eq!(take(&out).0, Some(Batch::Frames { counted: 2 }));
        // Taken by the writer, not yet in the socket: the bound still holds.
        assert!(!out.push(text(3)));
        assert_eq!(out.close_code(), Some(CLOSE_TOO_SLOW));

        let out = Outbound::new(2);
        assert!(out.push(text(1)));
        assert!(out.push(text(2)));
        assert_eq!(take(&out).0, Some(Batch::Frames { counted: 2 }));
        out.sent(2);
        assert!(out.push(text(3)));
        assert!(out.push(text(4)));
        assert!(!out.is_closing());
    }

    #[tokio::test]
    async fn uncounted_frames_do_not_fill_the_queue() {
        let out = Outbound::new(1);
        for _ in 0..5 {
            assert!(out.push_uncounted(Utf8Bytes::from("big")));
        }
        assert!(out.push(text(0)));
        assert!(!out.is_closing());
        assert_eq!(take(&out).0, Some(Batch::Frames { counted: 1 }));
    }

    #[tokio::test]
    async fn first_close_wins() {
        let out = Outbound::new(4);
        out.close(CLOSE_GOING_AWAY, "bye");
        out.close(CLOSE_TOO_SLOW, "slow");
        assert_eq!(out.close_code(), Some(CLOSE_GOING_AWAY));
        out.closing().await;
    }
}
