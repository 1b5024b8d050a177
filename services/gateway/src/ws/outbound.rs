//! One connection's outbound queue.
//!
//! Bounded, so a client that does not read cannot hold the server's memory
//! or anybody's time: when the queue is full the connection is marked too
//! slow, everything queued is dropped, and the writer sends close 4008 as
//! soon as the socket takes a frame again. Cursors do not queue: the latest
//! position per (room, user) replaces the previous one. A `joined` frame,
//! which can be large, is queued without counting against the bound.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{Notify, watch};

/// Close codes the gateway uses.
pub(crate) const CLOSE_GOING_AWAY: u16 = 1001;
pub(crate) const CLOSE_TOO_BIG: u16 = 1009;
pub(crate) const CLOSE_REVOKED: u16 = 4001;
pub(crate) const CLOSE_TOO_SLOW: u16 = 4008;

/// What the writer sends next.
pub(crate) enum Next {
    Frame(Utf8Bytes),
    Close(u16, &'static str),
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
    counted: usize,
    /// Latest cursor frame per key, sent after the queued frames.
    cursors: HashMap<String, Utf8Bytes>,
    cursor_order: VecDeque<String>,
    close: Option<(u16, &'static str)>,
}

impl Outbound {
    pub fn new(capacity: usize) -> Self {
        Outbound {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                counted: 0,
                cursors: HashMap::new(),
                cursor_order: VecDeque::new(),
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
    pub fn push_cursor(&self, key: String, frame: Utf8Bytes) {
        let mut state = self.state();
        if state.close.is_some() {
            return;
        }
        if state.cursors.insert(key.clone(), frame).is_none() {
            state.cursor_order.push_back(key);
        }
        drop(state);
        self.ready.notify_one();
    }

    /// Asks the writer to close with `code` after nothing else: whatever is
    /// still queued is dropped. The first close wins.
    pub fn close(&self, code: u16, reason: &'static str) {
        let mut state = self.state();
        if state.close.is_none() {
            state.close = Some((code, reason));
            state.queue.clear();
            state.counted = 0;
            state.cursors.clear();
            state.cursor_order.clear();
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

    /// The next thing to write, waiting for one.
    pub async fn next(&self) -> Next {
        loop {
            if let Some(next) = self.try_next() {
                return next;
            }
            self.ready.notified().await;
        }
    }

    fn try_next(&self) -> Option<Next> {
        let mut state = self.state();
        if let Some((code, reason)) = state.close {
            return Some(Next::Close(code, reason));
        }
        if let Some((frame, counted)) = state.queue.pop_front() {
            if counted {
                state.counted -= 1;
            }
            return Some(Next::Frame(frame));
        }
        let key = state.cursor_order.pop_front()?;
        state.cursors.remove(&key).map(Next::Frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(n: usize) -> Utf8Bytes {
        Utf8Bytes::from(format!("f{n}"))
    }

    fn frame(next: Next) -> String {
        match next {
            Next::Frame(f) => f.as_str().to_owned(),
            Next::Close(code, _) => format!("close {code}"),
        }
    }

    #[tokio::test]
    async fn frames_in_order_then_coalesced_cursors() {
        let out = Outbound::new(10);
        out.push(text(1));
        out.push_cursor("a".into(), Utf8Bytes::from("cursor-a1"));
        out.push_cursor("b".into(), Utf8Bytes::from("cursor-b1"));
        out.push_cursor("a".into(), Utf8Bytes::from("cursor-a2"));
        out.push(text(2));
        let got: Vec<String> = [(); 4]
            .iter()
            .map(|_| out.try_next().map(frame).unwrap_or_default())
            .collect();
        assert_eq!(got, ["f1", "f2", "cursor-a2", "cursor-b1"]);
        assert!(out.try_next().is_none());
    }

    #[tokio::test]
    async fn overflow_closes_with_4008_and_drops_the_queue() {
        let out = Outbound::new(3);
        assert!(out.push_uncounted(Utf8Bytes::from("joined")));
        for n in 0..3 {
            assert!(out.push(text(n)));
        }
        assert!(!out.is_closing());
        assert!(!out.push(text(3)));
        assert!(out.is_closing());
        assert_eq!(out.close_code(), Some(CLOSE_TOO_SLOW));
        assert_eq!(frame(out.next().await), "close 4008");
        assert!(!out.push(text(4)));
    }

    #[tokio::test]
    async fn uncounted_frames_do_not_fill_the_queue() {
        let out = Outbound::new(1);
        for _ in 0..5 {
            assert!(out.push_uncounted(Utf8Bytes::from("big")));
        }
        assert!(out.push(text(0)));
        assert!(!out.is_closing());
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
