//! One connection's loop: the only owner of its socket.
//!
//! A single `select!` reads the client's frames and handles each
//! ([`super::handlers`]), holds the room replies they wait for (no task per
//! request), writes what the connection's [`Outbound`] queue holds, pings,
//! and watches the idle timeout and the token's expiry. Nothing else
//! touches the socket: the rooms' fan-out, revocations and the drain only
//! push to the queue or close it, which wakes the loop.
//!
//! Generic over the socket (any `Sink` + `Stream` of messages), so its
//! rules are tested with channels ([`super::tests`]).
//!
//! Writes are paced: a quiet connection's frame is written at once, and so
//! is the next one, but after two writes within [`QUIET`] the connection
//! counts as busy and what comes for it leaves together, one write per
//! [`QUIET`] at most. A classroom member is sent about 1,000 cursors a
//! second; one `send` each took the whole core at 4 rooms (p99 over 2 s).

use std::collections::HashMap;
use std::fmt::Display;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes};
use collab_bus::{BusError, ReplyFuture};
use collab_protocol::envelope::{ConnRef, RoomReply};
use collab_protocol::{Access, Cid, Claims, RoomId, UserInfo};
use futures_util::stream::FuturesUnordered;
use futures_util::{Sink, Stream, StreamExt};
use tokio::time::{Instant, Sleep};
use tracing::{debug, info};

use super::Connections;
use super::close::Close;
use super::idle::IdleTimer;
use super::outbound::{Batch, Outbound};
use super::socket::SocketWriter;

/// A connection given nothing for this long is quiet again: its next frame
/// is written at once (see the module docs).
pub(crate) const QUIET: Duration = Duration::from_millis(5);

/// How long a closing connection may take to deliver its close frame to a
/// peer that is not reading.
const CLOSE_GRACE: Duration = Duration::from_secs(30);

/// A room of a connection.
#[derive(Debug, Clone, Copy)]
pub(super) struct Membership {
    /// What the token grants there.
    pub access: Access,
    /// The room answered `joined`, and presence counts the connection in
    /// the room (until it leaves).
    pub present: bool,
}

/// What a reply the loop waits for answers.
pub(super) enum Awaited {
    Join {
        room: RoomId,
    },
    Op {
        room: RoomId,
        cid: Cid,
        started: Instant,
    },
    /// A request nobody waits for (leave, attach): sent now, so that it is
    /// ordered before what the connection sends later.
    Told,
}

/// A request's reply, and what it answers.
pub(super) struct Awaiting {
    what: Option<Awaited>,
    reply: ReplyFuture<Result<RoomReply, BusError>>,
}

impl Awaiting {
    pub fn new(what: Awaited, reply: ReplyFuture<Result<RoomReply, BusError>>) -> Awaiting {
        Awaiting {
            what: Some(what),
            reply,
        }
    }
}

impl Future for Awaiting {
    type Output = Option<(Awaited, Result<RoomReply, BusError>)>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let reply = std::task::ready!(self.reply.as_mut().poll(cx));
        // `None` only if polled again after it finished, which the set of
        // pending replies never does.
        Poll::Ready(self.what.take().map(|what| (what, reply)))
    }
}

/// A connection's state; its loop is [`Connection::run`].
pub(super) struct Connection {
    pub cx: Arc<Connections>,
    pub conn: ConnRef,
    pub user: UserInfo,
    pub claims: Arc<Claims>,
    pub outbound: Arc<Outbound>,
    /// Rooms joined (or joining).
    pub rooms: HashMap<RoomId, Membership>,
    /// Ops sent and not yet answered.
    pub unacked: usize,
    /// Replies the connection waits for, taken in the order they come:
    /// each room answers its requests in the order it got them, which is
    /// the order they were sent in.
    pub pending: FuturesUnordered<Awaiting>,
    writer: SocketWriter,
    /// Reused for every batch: its buffer is allocated once.
    batch: Vec<Utf8Bytes>,
    pace: Pacing,
}

/// What woke the loop.
enum Wake<E> {
    Read(Option<Result<Message, E>>),
    Wrote(Result<usize, E>),
    Outbound,
    Reply(Awaited, Result<RoomReply, BusError>),
    Paced,
    Ping,
    Idle,
    Expired,
}

/// When the loop may write next (see the module docs).
struct Pacing {
    quiet: Duration,
    last_write: Option<Instant>,
    /// Two writes came within `quiet`: the next one waits for `quiet` to
    /// pass since the last.
    busy: bool,
    /// Armed while the loop waits to write.
    sleep: Pin<Box<Sleep>>,
    waiting: bool,
    /// The wait is over: the write it held goes now, and the connection
    /// stays busy.
    waited: bool,
}

impl Pacing {
    fn new(quiet: Duration) -> Pacing {
        Pacing {
            quiet,
            last_write: None,
            busy: false,
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            waiting: false,
            waited: false,
        }
    }

    /// Whether a write may start `now`; if not, arms the wait for it.
    fn may_write(&mut self, now: Instant) -> bool {
        if self.waiting {
            return false;
        }
        if std::mem::take(&mut self.waited) {
            return true;
        }
        let Some(last) = self.last_write else {
            return true;
        };
        let due = last + self.quiet;
        if now >= due {
            self.busy = false;
            return true;
        }
        if !self.busy {
            // The second write in a row goes at once too: an ack right
            // after the op it follows does not wait.
            self.busy = true;
            return true;
        }
        self.sleep.as_mut().reset(due);
        self.waiting = true;
        false
    }

    fn wrote(&mut self, now: Instant) {
        self.last_write = Some(now);
    }

    /// The wait armed by [`Pacing::may_write`] is over.
    fn waited(&mut self) {
        self.waiting = false;
        self.waited = true;
    }
}

impl Connection {
    pub fn new(
        cx: Arc<Connections>,
        conn: ConnRef,
        user: UserInfo,
        claims: Arc<Claims>,
        outbound: Arc<Outbound>,
    ) -> Connection {
        let quiet = cx.quiet;
        Connection {
            cx,
            conn,
            user,
            claims,
            outbound,
            rooms: HashMap::new(),
            unacked: 0,
            pending: FuturesUnordered::new(),
            writer: SocketWriter::default(),
            batch: Vec::new(),
            pace: Pacing::new(quiet),
        }
    }

    /// Runs the connection until it ends; then leaves its rooms, delivers
    /// the close frame (within a grace period) and returns why it ended.
    pub async fn run<S, E>(&mut self, socket: &mut S) -> Close
    where
        S: Sink<Message, Error = E> + Stream<Item = Result<Message, E>> + Unpin,
        E: Display,
    {
        let close = self.serve(socket).await;
        // The peer is gone or being closed: leave its rooms now, whatever
        // is still to be delivered.
        self.leave_all().await;
        self.writer.close(close);
        let delivered = tokio::time::timeout(CLOSE_GRACE, async {
            poll_fn(|cx| self.writer.poll_write(socket, cx)).await?;
            poll_fn(|cx| Pin::new(&mut *socket).poll_close(cx)).await
        })
        .await;
        if !matches!(delivered, Ok(Ok(()))) {
            debug!(conn = %self.conn.conn, "close frame not delivered");
        }
        close
    }

    /// The loop: returns how the connection is to close.
    async fn serve<S, E>(&mut self, socket: &mut S) -> Close
    where
        S: Sink<Message, Error = E> + Stream<Item = Result<Message, E>> + Unpin,
        E: Display,
    {
        let config = &self.cx.config;
        let mut idle = IdleTimer::new(Duration::from_secs(config.idle_timeout_secs.max(1)));
        let ping_every = Duration::from_secs(config.ping_interval_secs.max(1));
        let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        // The token's expiry ends the connection (4001), like a revocation.
        let expires_in = self.claims.exp.saturating_sub(crate::auth::now_secs());
        let mut expiry = pin!(tokio::time::sleep(Duration::from_secs(expires_in)));
        loop {
            let wake = tokio::select! {
                // Timers first: a client that never stops sending must not
                // starve them.
                biased;
                () = &mut expiry => Wake::Expired,
                () = idle.expired() => Wake::Idle,
                _ = ping.tick() => Wake::Ping,
                () = &mut self.pace.sleep, if self.pace.waiting => Wake::Paced,
                wake = poll_fn(|cx| poll_io(
                    &mut self.writer,
                    &self.outbound,
                    &mut self.pending,
                    socket,
                    cx,
                )) => wake,
            };
            if let Some(close) = self.on_wake(wake, &mut idle).await {
                // The first close wins: one asked for meanwhile (too slow,
                // revoked) is the one that happens.
                self.outbound.close(close);
                return self.outbound.closing().unwrap_or(close);
            }
        }
    }

    /// Handles one wake-up; `Some` to end the connection.
    async fn on_wake<E: Display>(&mut self, wake: Wake<E>, idle: &mut IdleTimer) -> Option<Close> {
        match wake {
            Wake::Read(message) => {
                idle.touch();
                match message {
                    None | Some(Ok(Message::Close(_))) => return Some(Close::CLIENT),
                    Some(Ok(Message::Text(text))) => self.on_text(text.as_str()).await,
                    Some(Ok(Message::Binary(_))) => self.on_binary(),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Err(e)) => {
                        let text = e.to_string();
                        debug!(conn = %self.conn.conn, error = %text, "read failed");
                        // The only read error worth a word to the peer: it
                        // sent a message over the limit.
                        if text.contains("Space limit exceeded") || text.contains("too long") {
                            return Some(Close::TOO_BIG);
                        }
                        return Some(Close::FAILED);
                    }
                }
            }
            Wake::Wrote(Ok(counted)) => {
                self.outbound.sent(counted);
                return self.write_queued();
            }
            Wake::Wrote(Err(e)) => {
                debug!(conn = %self.conn.conn, error = %e, "write failed");
                return Some(Close::FAILED);
            }
            Wake::Outbound => {
                for room in self.outbound.take_removed() {
                    self.on_removed(room);
                }
                if self.writer.is_busy() {
                    // Frames wait for the write under way; a close does not.
                    return self.outbound.closing();
                }
                return self.write_queued();
            }
            Wake::Reply(what, reply) => self.on_reply(what, reply).await,
            Wake::Paced => {
                self.pace.waited();
                return self.write_queued();
            }
            Wake::Ping => self.writer.ping(),
            Wake::Idle => {
                info!(conn = %self.conn.conn, "peer silent; closing");
                return Some(Close::IDLE);
            }
            Wake::Expired => return Some(Close::EXPIRED),
        }
        None
    }

    /// Starts writing what is queued, if the pace allows; `Some` when the
    /// connection is to close instead.
    fn write_queued(&mut self) -> Option<Close> {
        if let Some(close) = self.outbound.closing() {
            return Some(close);
        }
        if self.writer.is_busy() || !self.outbound.has_frames() {
            return None;
        }
        let now = Instant::now();
        if !self.pace.may_write(now) {
            return None;
        }
        match self.outbound.take(&mut self.batch) {
            Some(Batch::Frames { counted }) => {
                self.writer.start(&mut self.batch, counted);
                self.pace.wrote(now);
                None
            }
            Some(Batch::Close(close)) => Some(close),
            None => None,
        }
    }
}

/// Polls what the loop waits for besides its timers: the write under way,
/// the outbound queue, the replies, and the client's next frame, in that
/// order.
fn poll_io<S, E>(
    writer: &mut SocketWriter,
    outbound: &Outbound,
    pending: &mut FuturesUnordered<Awaiting>,
    socket: &mut S,
    cx: &mut Context<'_>,
) -> Poll<Wake<E>>
where
    S: Sink<Message, Error = E> + Stream<Item = Result<Message, E>> + Unpin,
{
    if writer.is_busy()
        && let Poll::Ready(wrote) = writer.poll_write(socket, cx)
    {
        return Poll::Ready(Wake::Wrote(wrote));
    }
    if outbound.poll_news(cx).is_ready() {
        return Poll::Ready(Wake::Outbound);
    }
    if !pending.is_empty()
        && let Poll::Ready(Some(Some((what, reply)))) = pending.poll_next_unpin(cx)
    {
        return Poll::Ready(Wake::Reply(what, reply));
    }
    socket.poll_next_unpin(cx).map(Wake::Read)
}
