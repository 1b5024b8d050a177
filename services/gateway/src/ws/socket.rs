//! The writing side of a connection's socket, as its loop drives it: a
//! batch of messages fed to the socket and flushed once, polled by the
//! loop (never awaited on its own), so that reading, replies and timers go
//! on while a slow peer holds a write.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures_util::Sink;

use super::close::Close;

/// Messages on their way into the socket.
#[derive(Default)]
pub(super) struct SocketWriter {
    /// Not yet handed to the socket, in order.
    waiting: VecDeque<Message>,
    /// Handed to the socket and not flushed yet.
    unflushed: bool,
    /// Counted frames of the batch being written (see `Queue::sent`).
    counted: usize,
}

impl SocketWriter {
    /// Whether a write is under way.
    pub fn is_busy(&self) -> bool {
        self.unflushed || !self.waiting.is_empty()
    }

    /// Starts writing `batch` (emptied), `counted` of whose frames count
    /// against the outbound bound until written.
    pub fn start(&mut self, batch: &mut Vec<Utf8Bytes>, counted: usize) {
        self.waiting.extend(batch.drain(..).map(Message::Text));
        self.counted += counted;
    }

    /// Adds a ping after whatever is being written.
    pub fn ping(&mut self) {
        self.waiting.push_back(Message::Ping(Default::default()));
    }

    /// Drops what the socket has not taken yet and writes `close` next.
    pub fn close(&mut self, close: Close) {
        self.waiting.clear();
        self.waiting.push_back(Message::Close(Some(CloseFrame {
            code: close.code,
            reason: Utf8Bytes::from_static(close.reason),
        })));
    }

    /// Moves the write on; ready once everything was handed to the socket
    /// and flushed, with the number of counted frames written.
    pub fn poll_write<S>(
        &mut self,
        socket: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<Result<usize, S::Error>>
    where
        S: Sink<Message> + Unpin,
    {
        while !self.waiting.is_empty() {
            ready!(Pin::new(&mut *socket).poll_ready(cx))?;
            if let Some(message) = self.waiting.pop_front() {
                Pin::new(&mut *socket).start_send(message)?;
                self.unflushed = true;
            }
        }
        if self.unflushed {
            ready!(Pin::new(&mut *socket).poll_flush(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(std::mem::take(&mut self.counted)))
    }
}
