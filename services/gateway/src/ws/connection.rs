//! One connection's loop: the only owner of its socket.
//!
//! A single `select!` reads the client's frames and handles each
//! ([`super::handlers`]), holds the room replies they wait for (no task per
//! request), writes what the connection's [`Outbound`] queue holds, pings,
//! and watches the peer's silence (gone from presence after a while, closed
//! after longer) and the token's expiry (a warning a configured lead before
//! `exp`, the close with 4001 at `exp`; a `refresh` moves both). Nothing else
//! touches the socket: the rooms' fan-out, revocations and the drain only
//! push to the queue or close it, which wakes the loop.
//!
//! Generic over the socket (any `Sink` + `Stream` of messages), so its
//! rules are tested with channels (`ws/tests.rs`).
//!
//! Writes are paced: a quiet connection's frame is written at once, and so
//! is the next one, but after two writes within [`QUIET`] the connection
//! counts as busy and what comes for it leaves together, one write per
//! [`QUIET`] at most. A classroom member is sent about 1,000 cursors a
//! second; one `send` each took the whole core at 4 rooms (p99 over 2 s).

use std::collections::HashMap;
use std::fmt::Display;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes};
use collab_bus::{BusError, ReplyFuture};
use collab_protocol::envelope::{ConnRef, RoomReply};
use collab_protocol::{Access, Cid, Claims, RoomId, ServerFrame, UserInfo};
use futures_util::stream::FuturesUnordered;
use futures_util::task::{ArcWake, AtomicWaker};
use futures_util::{Sink, Stream, StreamExt};
use tokio::time::{Instant, Sleep};
use tracing::{debug, info};

use super::Connections;
use super::close::Close;
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
    /// The join asked for open strokes to outlive a dropped connection.
    pub resume_strokes: bool,
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
    /// Silent for `away_after_secs`: its rooms count it out of their
    /// presence until it is heard from again.
    pub away: bool,
    /// Replies the connection waits for, taken in the order they come:
    /// each room answers its requests in the order it got them, which is
    /// the order they were sent in.
    pub pending: FuturesUnordered<Awaiting>,
    /// A `refresh` put a new token in force: the loop moves its expiry
    /// deadlines to the new `exp`.
    pub token_renewed: bool,
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
    /// The connection's timer: something of [`Timers`] is due.
    Timer,
}

/// When the loop may write next (see the module docs).
struct Pacing {
    quiet: Duration,
    last_write: Option<Instant>,
    /// Two writes came within `quiet`: the next one waits for `quiet` to
    /// pass since the last.
    busy: bool,
    /// When the write the loop waits for may go.
    waiting: Option<Instant>,
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
            waiting: None,
            waited: false,
        }
    }

    /// Whether a write may start `now`; if not, arms the wait for it.
    fn may_write(&mut self, now: Instant) -> bool {
        if self.waiting.is_some() {
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
        self.waiting = Some(due);
        false
    }

    fn wrote(&mut self, now: Instant) {
        self.last_write = Some(now);
    }

    /// Ends the wait armed by [`Pacing::may_write`] if it is over.
    fn waited(&mut self, now: Instant) -> bool {
        if self.waiting.is_some_and(|due| due <= now) {
            self.waiting = None;
            self.waited = true;
            return true;
        }
        false
    }
}

/// Everything a connection waits for in time — the idle timeout, the next
/// ping, the token's expiry and its warning, and the pace of writes — on
/// one timer set for
/// the earliest. A frame read moves the idle deadline without touching the
/// timer: when it fires early, it is set again for what is due next.
/// (One timer polled per turn of the loop instead of four.)
struct Timers {
    sleep: Pin<Box<Sleep>>,
    idle: Duration,
    /// `None`: the peer is never counted away.
    away: Option<Duration>,
    /// The peer is not away yet: `away` is watched.
    watch_away: bool,
    last_read: Instant,
    ping_every: Duration,
    next_ping: Instant,
    /// The token in force expires (close 4001).
    expires_at: Instant,
    /// When to send `token_expiring`; `None` once sent for this token, or
    /// when warnings are off.
    warn_at: Option<Instant>,
    /// How long before `expires_at` the warning goes; zero: none.
    warn_lead: Duration,
}

/// What the timer found due.
#[derive(Debug, Default)]
struct Due {
    expired: bool,
    /// The token expires soon: tell the client.
    warn: bool,
    idle: bool,
    away: bool,
    ping: bool,
}

/// Farther than any deadline a connection could live to (a token's `exp`
/// may be any number; `Instant` cannot add just any duration).
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

impl Timers {
    fn new(
        idle: Duration,
        away: Option<Duration>,
        ping_every: Duration,
        exp: u64,
        warn_lead: Duration,
    ) -> Timers {
        let now = Instant::now();
        let mut timers = Timers {
            sleep: Box::pin(tokio::time::sleep_until(now)),
            idle,
            away,
            watch_away: true,
            last_read: now,
            ping_every,
            next_ping: now + ping_every,
            expires_at: now,
            warn_at: None,
            warn_lead,
        };
        timers.expire_at(exp, now);
        timers.set(None);
        timers
    }

    /// The token in force expires at `exp` (seconds since the Unix epoch):
    /// the close moves there, and the warning to its lead before it — or
    /// to now, for a token that lives less than the lead. The timer is
    /// not touched: [`Timers::set`] must follow.
    fn expire_at(&mut self, exp: u64, now: Instant) {
        let left = Duration::from_secs(exp)
            .saturating_sub(crate::auth::unix_now())
            .min(FOREVER);
        self.expires_at = now + left;
        self.warn_at =
            (!self.warn_lead.is_zero()).then(|| now + left.saturating_sub(self.warn_lead));
    }

    /// The peer was heard from just now.
    fn touch(&mut self, now: Instant) {
        self.last_read = now;
    }

    /// Sets the timer for the earliest deadline, `pace` included.
    fn set(&mut self, pace: Option<Instant>) {
        let mut due = (self.last_read + self.idle)
            .min(self.next_ping)
            .min(self.expires_at);
        if let Some(away) = self.away.filter(|_| self.watch_away) {
            due = due.min(self.last_read + away);
        }
        let due = self.warn_at.map_or(due, |warn| warn.min(due));
        let due = pace.map_or(due, |pace| pace.min(due));
        if self.sleep.deadline() != due {
            self.sleep.as_mut().reset(due);
        }
    }

    /// Sets the timer earlier if `pace` comes before it.
    fn set_pace(&mut self, pace: Instant) {
        if pace < self.sleep.deadline() {
            self.sleep.as_mut().reset(pace);
        }
    }

    /// What is due at `now` (the next ping then scheduled).
    fn due(&mut self, now: Instant) -> Due {
        let due = Due {
            expired: now >= self.expires_at,
            warn: self.warn_at.is_some_and(|warn| now >= warn),
            idle: now >= self.last_read + self.idle,
            away: self.watch_away && self.away.is_some_and(|away| now >= self.last_read + away),
            ping: now >= self.next_ping,
        };
        if due.ping {
            self.next_ping = now + self.ping_every;
        }
        if due.warn {
            // Once per token: a refresh arms it again.
            self.warn_at = None;
        }
        due
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
            away: false,
            pending: FuturesUnordered::new(),
            token_renewed: false,
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
        let reading = ReadSide::new();
        // A healthy peer is silent for up to a ping interval (plus its
        // round trip): counting it away sooner would make it come and go.
        let away_after = (config.away_after_secs > 0).then(|| {
            Duration::from_secs(config.away_after_secs.max(2 * config.ping_interval_secs))
        });
        // The token's expiry ends the connection (4001), like a revocation,
        // unless a `refresh` comes first; the client is warned before.
        let mut timers = Timers::new(
            Duration::from_secs(config.idle_timeout_secs.max(1)),
            away_after,
            Duration::from_secs(config.ping_interval_secs.max(1)),
            self.claims.exp,
            Duration::from_secs(config.token_expiry_warning_secs),
        );
        loop {
            let wake = tokio::select! {
                // The timer first: a client that never stops sending must
                // not starve it.
                biased;
                () = &mut timers.sleep => Wake::Timer,
                wake = poll_fn(|cx| poll_io(
                    &mut self.writer,
                    &self.outbound,
                    &mut self.pending,
                    &reading,
                    socket,
                    cx,
                )) => wake,
            };
            let mut next = self.on_wake(wake, &mut timers).await;
            // A write just started usually finishes at once: finish it now
            // rather than on another turn of the loop.
            while next.is_none() && self.writer.is_busy() {
                let wrote = poll_fn(|cx| Poll::Ready(self.writer.poll_write(socket, cx))).await;
                let Poll::Ready(wrote) = wrote else {
                    break;
                };
                next = self.on_wake(Wake::Wrote(wrote), &mut timers).await;
            }
            if let Some(close) = next {
                // The first close wins: one asked for meanwhile (too slow,
                // revoked) is the one that happens.
                self.outbound.close(close);
                return self.outbound.closing().unwrap_or(close);
            }
            if let Some(pace) = self.pace.waiting {
                timers.set_pace(pace);
            }
        }
    }

    /// Handles one wake-up; `Some` to end the connection.
    async fn on_wake<E: Display>(&mut self, wake: Wake<E>, timers: &mut Timers) -> Option<Close> {
        match wake {
            Wake::Read(message) => {
                timers.touch(Instant::now());
                if self.away {
                    self.away = false;
                    timers.watch_away = true;
                    self.come_back();
                }
                match message {
                    None | Some(Ok(Message::Close(_))) => return Some(Close::CLIENT),
                    Some(Ok(Message::Text(text))) => {
                        self.on_text(text.as_str()).await;
                        if std::mem::take(&mut self.token_renewed) {
                            timers.expire_at(self.claims.exp, Instant::now());
                            timers.set(self.pace.waiting);
                        }
                    }
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
                for (room, why) in self.outbound.take_removed() {
                    self.on_removed(room, why).await;
                }
                if self.writer.is_busy() {
                    // Frames wait for the write under way; a close does not.
                    return self.outbound.closing();
                }
                return self.write_queued();
            }
            Wake::Reply(what, reply) => self.on_reply(what, reply).await,
            Wake::Timer => {
                let now = Instant::now();
                let due = timers.due(now);
                if due.expired {
                    info!(conn = %self.conn.conn, "token expired; closing");
                    return Some(Close::EXPIRED);
                }
                if due.warn {
                    self.send(&ServerFrame::TokenExpiring {
                        exp: self.claims.exp,
                    });
                }
                if due.idle {
                    info!(conn = %self.conn.conn, "peer silent; closing");
                    return Some(Close::IDLE);
                }
                if due.away {
                    // Until it is heard from again.
                    timers.watch_away = false;
                    self.away = true;
                    self.go_away();
                }
                if due.ping {
                    self.writer.ping();
                }
                let paced = self.pace.waited(now);
                timers.set(self.pace.waiting);
                if paced || due.ping || due.warn {
                    return self.write_queued();
                }
            }
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
    reading: &ReadSide,
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
    reading.poll_next(socket, cx).map(Wake::Read)
}

/// The socket's read side is polled only when it woke the loop (or may
/// have more buffered): most turns of a busy connection's loop are for
/// writing, and a read attempt costs the WebSocket library a buffer
/// resize even when nothing is there.
pub(super) struct ReadSide {
    signal: Arc<ReadSignal>,
    waker: Waker,
}

struct ReadSignal {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl ArcWake for ReadSignal {
    fn wake_by_ref(signal: &Arc<Self>) {
        signal.woken.store(true, Ordering::Release);
        signal.task.wake();
    }
}

impl ReadSide {
    pub fn new() -> ReadSide {
        let signal = Arc::new(ReadSignal {
            // The first turn reads.
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        ReadSide {
            waker: futures_util::task::waker(signal.clone()),
            signal,
        }
    }

    fn poll_next<S, E>(
        &self,
        socket: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Message, E>>>
    where
        S: Stream<Item = Result<Message, E>> + Unpin,
    {
        self.signal.task.register(cx.waker());
        if !self.signal.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let mut read_cx = Context::from_waker(&self.waker);
        let next = socket.poll_next_unpin(&mut read_cx);
        if next.is_ready() {
            // More frames may be buffered already: read again next turn.
            self.signal.woken.store(true, Ordering::Release);
        }
        next
    }
}
