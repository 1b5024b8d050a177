//! One connection's writer: writes what its [`Outbound`] queue holds when
//! the socket could not take it at once, pings, and sends the close frame.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures_util::{Sink, SinkExt};

use super::outbound::{Batch, CLOSE_GOING_AWAY, Outbound, SocketSink};

/// Hands the socket's sending half to `outbound` (for direct sends) and
/// writes whatever queues there, pings, and closes.
///
/// Each wake-up takes everything queued and writes it with one flush: the
/// frames go into the socket's write buffer and leave in as few `send`
/// calls as fit, instead of one syscall per frame. After a batch the
/// writer waits the outbound's quiet period before it takes the next, so
/// a busy connection is written to at most every 5 ms: a classroom
/// member is sent about 1,000 cursors a second, and taking them as they
/// came woke the writer, and made a `send`, for nearly each one (5
/// classrooms took 89-95% of the core; paced, 48-57%).
pub(super) async fn write_loop<S>(sink: S, outbound: Arc<Outbound>, ping_every: Duration)
where
    S: Sink<Message, Error = axum::Error> + Send + 'static,
{
    outbound.attach(Box::pin(sink));
    let mut ping = tokio::time::interval(ping_every);
    ping.tick().await;
    // Reused across wake-ups: its buffer is allocated once per connection.
    let mut batch = Vec::new();
    loop {
        // `take` fills `batch` and returns in the same poll, so a ping
        // winning the race never leaves frames half taken.
        let next = tokio::select! {
            next = outbound.take(&mut batch) => next,
            _ = ping.tick() => {
                let Some(mut sink) = outbound.borrow_sink() else { return };
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    outbound.close(CLOSE_GOING_AWAY, "write failed");
                    return;
                }
                outbound.return_sink(sink);
                continue;
            }
        };
        let Some(mut sink) = outbound.borrow_sink() else {
            return;
        };
        match next {
            Batch::Frames { counted } => {
                if write_batch(&mut sink, &outbound, &mut batch).await.is_err() {
                    outbound.close(CLOSE_GOING_AWAY, "write failed");
                    return;
                }
                // Back before `sent`, so that a direct send after it
                // finds the sink.
                outbound.return_sink(sink);
                outbound.sent(counted);
                // The writer runs only for a busy connection (a quiet one
                // is sent to directly): what comes for it next waits to
                // leave together, at most `quiet` later. A close does not
                // wait.
                tokio::select! {
                    () = tokio::time::sleep(outbound.quiet()) => {}
                    () = outbound.closing() => {}
                }
            }
            Batch::Close(code, reason) => {
                let _ = sink
                    .send(Message::Close(Some(CloseFrame {
                        code,
                        reason: Utf8Bytes::from_static(reason),
                    })))
                    .await;
                let _ = sink.close().await;
                return;
            }
        }
    }
}

/// Feeds the batch to the sink and flushes once. Stops early when a close
/// was asked for meanwhile (the socket was slow and the queue overflowed):
/// the rest is dropped, as the queue's own frames were, and the close
/// frame goes next.
async fn write_batch(
    sink: &mut SocketSink,
    outbound: &Outbound,
    batch: &mut Vec<Utf8Bytes>,
) -> Result<(), axum::Error> {
    // Dropping the `Drain` empties the batch however the loop ends.
    for frame in batch.drain(..) {
        if outbound.is_closing() {
            break;
        }
        sink.feed(Message::Text(frame)).await?;
    }
    sink.flush().await
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::Mutex;
    use std::task::{Context, Poll, Waker};

    use tokio::sync::Notify;

    use super::super::outbound::{CLOSE_TOO_SLOW, Outbound};
    use super::*;

    /// What the socket saw, in order.
    #[derive(Debug, Clone, PartialEq)]
    enum Seen {
        Text(String),
        Ping,
        Close(u16),
        Flush,
        Closed,
    }

    #[derive(Default)]
    struct Socket {
        seen: Vec<Seen>,
        /// Frames the socket takes before it blocks (`None`: no limit).
        room: Option<usize>,
        blocked: Option<Waker>,
        /// Flushes do not finish (the kernel's buffer is full) until
        /// released.
        hold_flush: bool,
        flush_blocked: Option<Waker>,
    }

    /// A sink that records what it is given and can stop taking frames,
    /// like a socket whose peer does not read.
    #[derive(Clone, Default)]
    struct Recorder {
        socket: Arc<Mutex<Socket>>,
        changed: Arc<Notify>,
    }

    impl Recorder {
        fn lock(&self) -> std::sync::MutexGuard<'_, Socket> {
            self.socket.lock().unwrap_or_else(|p| p.into_inner())
        }

        fn seen(&self) -> Vec<Seen> {
            self.lock().seen.clone()
        }

        fn limit(&self, frames: Option<usize>) {
            let waker = {
                let mut socket = self.lock();
                socket.room = frames;
                socket.blocked.take()
            };
            if let Some(waker) = waker {
                waker.wake();
            }
        }

        /// Polls, with a deadline, until `done` holds of the socket.
        async fn wait_until(&self, what: &str, done: impl Fn(&Socket) -> bool) {
            let waited = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    if done(&self.lock()) {
                        return;
                    }
                    self.changed.notified().await;
                }
            })
            .await;
            assert!(
                waited.is_ok(),
                "timed out waiting for {what}: {:?}",
                self.seen()
            );
        }

        fn hold_flushes(&self, hold: bool) {
            let waker = {
                let mut socket = self.lock();
                socket.hold_flush = hold;
                socket.flush_blocked.take()
            };
            if let Some(waker) = waker {
                waker.wake();
            }
        }

        fn record(&self, seen: Seen) {
            self.lock().seen.push(seen);
            self.changed.notify_one();
        }
    }

    impl Sink<Message> for Recorder {
        type Error = axum::Error;

        fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            let mut socket = self.lock();
            if socket.room == Some(0) {
                socket.blocked = Some(cx.waker().clone());
                drop(socket);
                self.changed.notify_one();
                return Poll::Pending;
            }
            Poll::Ready(Ok(()))
        }

        fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
            if let Some(room) = self.lock().room.as_mut() {
                *room = room.saturating_sub(1);
            }
            self.record(match item {
                Message::Text(text) => Seen::Text(text.as_str().to_owned()),
                Message::Ping(_) => Seen::Ping,
                Message::Close(frame) => Seen::Close(frame.map_or(0, |f| f.code)),
                other => panic!("unexpected {other:?}"),
            });
            Ok(())
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            let mut socket = self.lock();
            if socket.hold_flush {
                socket.flush_blocked = Some(cx.waker().clone());
                drop(socket);
                self.changed.notify_one();
                return Poll::Pending;
            }
            drop(socket);
            self.record(Seen::Flush);
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            self.record(Seen::Closed);
            Poll::Ready(Ok(()))
        }
    }

    fn text(s: &str) -> Seen {
        Seen::Text(s.to_owned())
    }

    fn spawn_writer(out: &Arc<Outbound>, socket: &Recorder) -> tokio::task::JoinHandle<()> {
        let ping = Duration::from_secs(3600);
        tokio::spawn(write_loop(socket.clone(), out.clone(), ping))
    }

    /// Waits until the writer has put its socket into the outbound, so
    /// that frames can go to it directly.
    async fn attached(out: &Outbound) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !out.has_sink() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the writer never attached"
            );
            tokio::task::yield_now().await;
        }
    }

    async fn finished(writer: tokio::task::JoinHandle<()>) {
        let ended = tokio::time::timeout(Duration::from_secs(10), writer).await;
        assert!(matches!(ended, Ok(Ok(()))), "writer did not end: {ended:?}");
    }

    #[tokio::test]
    async fn a_frame_with_nothing_ahead_goes_straight_into_the_socket() {
        // Every connection counts as quiet: each frame may go directly.
        let out = Arc::new(Outbound::with_quiet(10, Duration::ZERO));
        let socket = Recorder::default();
        // No writer task: whatever reaches the socket was sent directly.
        out.attach(Box::pin(socket.clone()));
        assert!(out.push(Utf8Bytes::from("f1")));
        out.push_cursor("a".into(), Utf8Bytes::from("cursor-a"));
        assert!(out.push_uncounted(Utf8Bytes::from("joined")));
        assert_eq!(
            socket.seen(),
            [
                text("f1"),
                Seen::Flush,
                text("cursor-a"),
                Seen::Flush,
                text("joined"),
                Seen::Flush
            ]
        );
    }

    #[tokio::test]
    async fn a_busy_connection_gets_its_frames_in_batches() {
        // No connection is quiet again within the test: after the first
        // frame, every frame queues for the writer, which sends all that
        // queued with one flush.
        let out = Arc::new(Outbound::with_quiet(10, Duration::from_secs(3600)));
        let socket = Recorder::default();
        out.attach(Box::pin(socket.clone()));
        assert!(out.push(Utf8Bytes::from("f1")));
        assert!(out.push(Utf8Bytes::from("f2")));
        out.push_cursor("a".into(), Utf8Bytes::from("cursor-a1"));
        out.push_cursor("a".into(), Utf8Bytes::from("cursor-a2"));
        assert_eq!(socket.seen(), [text("f1"), Seen::Flush]);
        let writer = tokio::spawn(write_loop(
            socket.clone(),
            out.clone(),
            Duration::from_secs(3600),
        ));
        socket.wait_until("the batch", |s| s.seen.len() == 5).await;
        assert_eq!(
            socket.seen(),
            [
                text("f1"),
                Seen::Flush,
                text("f2"),
                text("cursor-a2"),
                Seen::Flush
            ]
        );
        out.close(CLOSE_GOING_AWAY, "bye");
        finished(writer).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_connection_is_written_to_at_most_once_per_quiet_period() {
        let quiet = Duration::from_millis(10);
        let out = Arc::new(Outbound::with_quiet(10, quiet));
        let socket = Recorder::default();
        let writer = spawn_writer(&out, &socket);
        attached(&out).await;
        // f1 goes directly; f2 comes too soon after it and is the writer's.
        assert!(out.push(Utf8Bytes::from("f1")));
        assert!(out.push(Utf8Bytes::from("f2")));
        socket
            .wait_until("f2", |s| s.seen.contains(&text("f2")))
            .await;
        let written = tokio::time::Instant::now();
        assert!(out.push(Utf8Bytes::from("f3")));
        socket
            .wait_until("f3", |s| s.seen.contains(&text("f3")))
            .await;
        assert!(
            written.elapsed() >= quiet,
            "f3 was written {:?} after the batch before it",
            written.elapsed()
        );
        // What came meanwhile left with it, in one flush.
        out.push_cursor("a".into(), Utf8Bytes::from("cursor-a"));
        assert!(out.push(Utf8Bytes::from("f4")));
        socket
            .wait_until("f4", |s| s.seen.contains(&text("f4")))
            .await;
        assert_eq!(
            socket.seen(),
            [
                text("f1"),
                Seen::Flush,
                text("f2"),
                Seen::Flush,
                text("f3"),
                Seen::Flush,
                text("f4"),
                text("cursor-a"),
                Seen::Flush
            ]
        );
        out.close(CLOSE_GOING_AWAY, "bye");
        finished(writer).await;
    }

    #[tokio::test]
    async fn frames_queue_behind_a_blocked_socket_and_keep_their_order() {
        let out = Arc::new(Outbound::new(10));
        let socket = Recorder::default();
        socket.limit(Some(0));
        let writer = spawn_writer(&out, &socket);
        assert!(out.push(Utf8Bytes::from("f1")));
        socket
            .wait_until("the writer to block", |s| s.blocked.is_some())
            .await;
        // The writer holds f1: f2 must not overtake it, even once the
        // socket takes frames again.
        assert!(out.push(Utf8Bytes::from("f2")));
        socket.limit(None);
        socket
            .wait_until("f2", |s| s.seen.contains(&text("f2")))
            .await;
        assert!(out.push(Utf8Bytes::from("f3")));
        socket
            .wait_until("f3", |s| s.seen.contains(&text("f3")))
            .await;
        let texts: Vec<Seen> = socket
            .seen()
            .into_iter()
            .filter(|e| matches!(e, Seen::Text(_)))
            .collect();
        assert_eq!(texts, [text("f1"), text("f2"), text("f3")]);
        out.close(CLOSE_GOING_AWAY, "bye");
        finished(writer).await;
    }

    #[tokio::test]
    async fn a_frame_the_socket_took_in_part_is_flushed_before_the_next() {
        let out = Arc::new(Outbound::new(10));
        let socket = Recorder::default();
        let writer = spawn_writer(&out, &socket);
        socket.hold_flushes(true);
        // Taken by the socket, not flushed: the next frame queues behind
        // it, and the writer flushes both.
        assert!(out.push(Utf8Bytes::from("f1")));
        assert!(out.push(Utf8Bytes::from("f2")));
        socket
            .wait_until("the writer to flush", |s| {
                s.flush_blocked.is_some() && s.seen.contains(&text("f2"))
            })
            .await;
        assert_eq!(socket.seen(), [text("f1"), text("f2")]);
        socket.hold_flushes(false);
        socket
            .wait_until("the flush", |s| s.seen.contains(&Seen::Flush))
            .await;
        assert_eq!(socket.seen(), [text("f1"), text("f2"), Seen::Flush]);
        out.close(CLOSE_GOING_AWAY, "bye");
        finished(writer).await;
    }

    #[tokio::test]
    async fn everything_queued_is_written_with_one_flush() {
        let out = Arc::new(Outbound::new(10));
        out.push(Utf8Bytes::from("f1"));
        out.push_cursor("a".into(), Utf8Bytes::from("cursor-a"));
        out.push_uncounted(Utf8Bytes::from("joined"));
        out.push(Utf8Bytes::from("f2"));
        let socket = Recorder::default();
        let writer = spawn_writer(&out, &socket);
        socket
            .wait_until("the first flush", |s| s.seen.contains(&Seen::Flush))
            .await;
        let first = [
            text("f1"),
            text("joined"),
            text("f2"),
            text("cursor-a"),
            Seen::Flush,
        ];
        assert_eq!(socket.seen(), first);

        out.push(Utf8Bytes::from("f3"));
        socket
            .wait_until("the second flush", |s| s.seen.len() == first.len() + 2)
            .await;
        assert_eq!(socket.seen()[first.len()..], [text("f3"), Seen::Flush]);

        out.close(CLOSE_GOING_AWAY, "bye");
        finished(writer).await;
        assert_eq!(
            socket.seen()[first.len() + 2..],
            [Seen::Close(CLOSE_GOING_AWAY), Seen::Flush, Seen::Closed]
        );
    }

    #[tokio::test]
    async fn overflow_while_the_socket_is_blocked_closes_4008_and_drops_the_rest() {
        let out = Arc::new(Outbound::new(3));
        for f in ["f1", "f2", "f3"] {
            assert!(out.push(Utf8Bytes::from(f)));
        }
        let socket = Recorder::default();
        // The socket takes one frame, then its peer stops reading.
        socket.limit(Some(1));
        let writer = spawn_writer(&out, &socket);
        socket
            .wait_until("the writer to block", |s| s.blocked.is_some())
            .await;
        // The three frames are taken but not written: they still count.
        assert!(!out.push(Utf8Bytes::from("f4")));
        assert_eq!(out.close_code(), Some(CLOSE_TOO_SLOW));

        socket.limit(None);
        finished(writer).await;
        // f2 was already on its way into the socket when the close came;
        // f3 and f4 never go out.
        assert_eq!(
            socket.seen(),
            [
                text("f1"),
                text("f2"),
                Seen::Flush,
                Seen::Close(CLOSE_TOO_SLOW),
                Seen::Flush,
                Seen::Closed
            ]
        );
    }

    #[tokio::test]
    async fn written_frames_stop_counting() {
        let out = Arc::new(Outbound::new(2));
        let socket = Recorder::default();
        let writer = spawn_writer(&out, &socket);
        for round in 0..3 {
            assert!(out.push(Utf8Bytes::from(format!("a{round}"))));
            assert!(out.push(Utf8Bytes::from(format!("b{round}"))));
            let written = 2 * (round + 1);
            socket
                .wait_until("the round's frames", |s| {
                    s.seen.iter().filter(|e| matches!(e, Seen::Text(_))).count() == written
                })
                .await;
        }
        assert!(!out.is_closing());
        out.close(CLOSE_GOING_AWAY, "bye");
        finished(writer).await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_pinged() {
        let out = Arc::new(Outbound::new(2));
        let socket = Recorder::default();
        let writer = tokio::spawn(write_loop(
            socket.clone(),
            out.clone(),
            Duration::from_secs(1),
        ));
        socket
            .wait_until("two pings", |s| {
                s.seen.iter().filter(|e| **e == Seen::Ping).count() == 2
            })
            .await;
        assert_eq!(
            socket.seen(),
            [Seen::Ping, Seen::Flush, Seen::Ping, Seen::Flush]
        );
        out.close(CLOSE_GOING_AWAY, "bye");
        finished(writer).await;
    }

    #[tokio::test]
    async fn a_failed_write_closes_the_connection() {
        fn reset() -> axum::Error {
            axum::Error::new(std::io::Error::other("reset"))
        }
        struct Broken;
        impl Sink<Message> for Broken {
            type Error = axum::Error;
            fn poll_ready(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Result<(), Self::Error>> {
                Poll::Ready(Err(reset()))
            }
            fn start_send(self: Pin<&mut Self>, _: Message) -> Result<(), Self::Error> {
                Err(reset())
            }
            fn poll_flush(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Result<(), Self::Error>> {
                Poll::Ready(Err(reset()))
            }
            fn poll_close(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Result<(), Self::Error>> {
                Poll::Ready(Ok(()))
            }
        }
        let out = Arc::new(Outbound::new(2));
        out.push(Utf8Bytes::from("f1"));
        let writer = tokio::spawn(write_loop(Broken, out.clone(), Duration::from_secs(3600)));
        finished(writer).await;
        assert_eq!(out.close_code(), Some(CLOSE_GOING_AWAY));

        // A direct send that fails closes the connection as well; the
        // writer then tries its close frame on the same broken socket,
        // which fails again and must end the writer, not crash it.
        let out = Arc::new(Outbound::new(2));
        let writer = tokio::spawn(write_loop(Broken, out.clone(), Duration::from_secs(3600)));
        attached(&out).await;
        assert!(!out.push(Utf8Bytes::from("f1")));
        assert_eq!(out.close_code(), Some(CLOSE_GOING_AWAY));
        finished(writer).await;
    }
}
