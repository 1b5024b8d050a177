//! One connection's outbound queue, and the socket's sending half.
//!
//! A frame for a quiet connection with nothing queued goes straight into
//! the socket from whoever produced it (the hub, an ack), when the socket
//! takes it at once: no task is woken for it. Otherwise (the writer is
//! writing, a ping is out, the kernel's buffer is full) frames queue for
//! the connection's writer task. At 200 boards that is about
//! 58,000 deliveries a second which would otherwise each wake a task and
//! wait for the runtime to poll it, behind everybody else's.
//!
//! A busy connection gets its frames in batches instead: a frame that
//! comes within [`QUIET`] of the connection's previous one queues, and
//! the writer takes everything queued into one `send`, at most once per
//! [`QUIET`]. A classroom member is sent about 1,000 cursors a second;
//! one `send` each took the whole core at 4 rooms (p99 over 2 s).
//!
//! Bounded, so a client that does not read cannot hold the server's memory
//! or anybody's time: when the queue is full the connection is marked too
//! slow, everything queued is dropped, and the writer sends close 4008 as
//! soon as the socket takes a frame again. Cursors do not queue: the latest
//! position per (room, user) replaces the previous one. A `joined` frame,
//! which can be large, is queued without counting against the bound.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, Utf8Bytes};
use futures_util::Sink;
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

/// A connection sent nothing for this long is quiet: its next frame may
/// go straight into the socket (see the module docs).
pub(crate) const QUIET: Duration = Duration::from_millis(5);

/// The socket's sending half, as the writer and direct sends share it.
/// A failed write may be followed by more (the writer still tries its
/// close frame), so the sink must keep answering errors, not panic.
pub(crate) type SocketSink = Pin<Box<dyn Sink<Message, Error = axum::Error> + Send>>;

/// Where [`Outbound::route`] put a frame.
enum Route<'a> {
    /// Nowhere more to go: sent (`true`), or the connection is closing
    /// (`false`).
    Done(bool),
    /// It must queue, in this state.
    Queue(MutexGuard<'a, State>, Utf8Bytes),
}

pub(crate) struct Outbound {
    state: Mutex<State>,
    /// The sending half, while the writer task does not hold it. Locked
    /// only inside `state`'s lock, or alone by the writer.
    sink: Mutex<Option<SocketSink>>,
    ready: Notify,
    closed: watch::Sender<bool>,
    capacity: usize,
    /// [`QUIET`], but for tests.
    quiet: Duration,
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
    /// The writer took a batch and has not written it yet: frames queue
    /// behind it.
    writing: bool,
    /// A direct send left bytes the socket did not take yet: frames queue
    /// until the writer has flushed them.
    unflushed: bool,
    /// When the connection was last given a frame, sent or queued.
    last_frame: Option<Instant>,
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
                writing: false,
                unflushed: false,
                last_frame: None,
            }),
            sink: Mutex::new(None),
            ready: Notify::new(),
            closed: watch::channel(false).0,
            capacity: capacity.max(1),
            quiet: QUIET,
        }
    }

    /// An outbound whose connection counts as quiet after `quiet`.
    #[cfg(test)]
    pub fn with_quiet(capacity: usize, quiet: Duration) -> Self {
        Outbound {
            quiet,
            ..Outbound::new(capacity)
        }
    }

    /// How long a connection must be given nothing to count as quiet;
    /// also the writer's pace for a busy one.
    pub fn quiet(&self) -> Duration {
        self.quiet
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every update below leaves the state consistent at each step.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sink(&self) -> MutexGuard<'_, Option<SocketSink>> {
        // Either a whole sink or none.
        self.sink.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives the outbound the socket's sending half, for direct sends.
    pub fn attach(&self, sink: SocketSink) {
        *self.sink() = Some(sink);
    }

    /// Whether the sending half is here (tests only).
    #[cfg(test)]
    pub fn has_sink(&self) -> bool {
        self.sink().is_some()
    }

    /// The writer borrows the sending half (`None` once it is gone).
    pub fn borrow_sink(&self) -> Option<SocketSink> {
        self.sink().take()
    }

    /// The writer is done with the sending half for now.
    pub fn return_sink(&self, sink: SocketSink) {
        *self.sink() = Some(sink);
    }

    /// Drops the sending half, which closes the socket's writing side.
    pub fn detach(&self) {
        drop(self.borrow_sink());
    }

    /// Sends `frame` straight into the socket if the connection is quiet
    /// and nothing is ahead of it; otherwise hands back the locked state to
    /// queue it in. A failed send closes the connection.
    fn route(&self, frame: Utf8Bytes) -> Route<'_> {
        let mut state = self.state();
        if state.close.is_some() {
            return Route::Done(false);
        }
        match self.send_direct(&mut state, frame) {
            Ok(None) => Route::Done(true),
            Ok(Some(frame)) => Route::Queue(state, frame),
            Err(_) => {
                drop(state);
                self.close(CLOSE_GOING_AWAY, "write failed");
                Route::Done(false)
            }
        }
    }

    /// The direct send of [`route`](Self::route): `Some(frame)` if the
    /// frame must queue after all.
    fn send_direct(
        &self,
        state: &mut State,
        frame: Utf8Bytes,
    ) -> Result<Option<Utf8Bytes>, axum::Error> {
        let nothing_ahead = !state.writing
            && !state.unflushed
            && state.queue.is_empty()
            && state.cursor_frames.is_empty();
        let now = Instant::now();
        let quiet = state
            .last_frame
            .is_none_or(|last| now.saturating_duration_since(last) >= self.quiet);
        state.last_frame = Some(now);
        if !nothing_ahead || !quiet {
            return Ok(Some(frame));
        }
        let mut sink = self.sink();
        let Some(sink) = sink.as_mut() else {
            return Ok(Some(frame));
        };
        // Nobody waits on this waker: a send that cannot finish now is
        // finished by the writer task, which polls with its own.
        let mut cx = Context::from_waker(Waker::noop());
        if sink.as_mut().poll_ready(&mut cx)?.is_pending() {
            return Ok(Some(frame));
        }
        sink.as_mut().start_send(Message::Text(frame))?;
        if sink.as_mut().poll_flush(&mut cx)?.is_pending() {
            // The socket has not taken all of it yet: the writer flushes
            // it before anything else goes.
            state.unflushed = true;
            self.ready.notify_one();
        }
        Ok(None)
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
        let (mut state, frame) = match self.route(frame) {
            Route::Queue(state, frame) => (state, frame),
            Route::Done(open) => return open,
        };
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
        let Route::Queue(mut state, frame) = self.route(frame) else {
            return;
        };
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
        if state.queue.is_empty() && state.cursor_frames.is_empty() && !state.unflushed {
            return None;
        }
        // Until `sent`, frames queue behind this batch. An empty batch
        // flushes what a direct send left behind.
        state.writing = true;
        state.unflushed = false;
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

    /// The writer handed its batch, with `counted` counted frames, to the
    /// socket: they stop counting against the bound, and frames may go
    /// straight to the socket again.
    pub fn sent(&self, counted: usize) {
        let mut state = self.state();
        // A close in between already reset the count.
        state.counted = state.counted.saturating_sub(counted);
        state.writing = false;
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
