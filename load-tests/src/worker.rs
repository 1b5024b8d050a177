//! A worker drives a share of a scenario's rooms (whole rooms, so it can
//! check every delivery itself): it creates the rooms, connects and joins
//! the clients, waits for the start time, sends on schedule until the stop
//! time, drains, and reports.
//!
//! One worker is one single-threaded runtime (a `LocalSet`): its clients
//! share their bookkeeping without locks. More cores or more connections
//! than one process may open mean more workers, in threads or processes
//! (see [`crate::run`]).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::scenario::{Behaviour, Scenario, points_json};
use crate::setup::{Setup, room_name};
use crate::stats::{Counters, Hists, Tick};
use crate::sysstat;
use crate::target::{Codec, Event, OpOut, Target, TargetKind};

/// A worker's share of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub target: Target,
    pub scenario: Scenario,
    /// Prefix of room names, unique per run.
    pub run_id: String,
    /// Rooms `rooms.0 .. rooms.1` of the scenario.
    pub rooms: (u32, u32),
    /// Spread clients over this many loopback source addresses
    /// (127.1.0.1, 127.1.0.2, …); 0: let the system choose.
    pub source_ips: u32,
    /// Connections being opened at once.
    pub connect_concurrency: usize,
    /// How long to send, warm-up included.
    pub duration_ms: u64,
    /// The first part of `duration_ms`, not in the latency histograms.
    #[serde(default)]
    pub warmup_ms: u64,
    /// Longest wait for late deliveries after the stop.
    pub drain_ms: u64,
}

/// What a worker tells the coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerMsg {
    /// Every client connected and joined (or failed to): start me.
    Ready { counters: Counters, hists: Hists },
    /// One second of the run.
    Tick(Tick),
    /// The end: all counters and histograms, and this worker's CPU seconds
    /// from start to stop.
    Done {
        counters: Counters,
        hists: Hists,
        cpu_secs: f64,
    },
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Maps epoch microseconds onto the monotonic clock for timers.
#[derive(Clone, Copy)]
struct Clock {
    base: Instant,
    base_us: u64,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            base: Instant::now(),
            base_us: now_us(),
        }
    }

    fn instant(&self, us: u64) -> tokio::time::Instant {
        let at = if us >= self.base_us {
            self.base + Duration::from_micros(us - self.base_us)
        } else {
            self.base
                .checked_sub(Duration::from_micros(self.base_us - us))
                .unwrap_or(self.base)
        };
        at.into()
    }
}

/// Where the run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Setup,
    /// Sending, from this start (epoch µs).
    Running(u64),
    /// Everything received (or the drain time is up): close.
    Done,
}

/// The bookkeeping of one connection, shared by its reader and writer and
/// read by the worker at the end.
#[derive(Default)]
struct Conn {
    room: u32,
    me: u32,
    joined: bool,
    closed: bool,
    alive: bool,
    ops_sent: u64,
    cursors_sent: u64,
    /// Ops sent and not acked: `(n, due time)`.
    pending: VecDeque<(u64, u64)>,
    /// Per sender: the last `n` received and how many arrived in order.
    seen: HashMap<u32, (u64, u64)>,
    last_seq: Option<u64>,
}

/// What all clients of the worker record into.
#[derive(Default)]
struct Rec {
    counters: Counters,
    hists: Hists,
    tick: Tick,
    /// Ops, acks and cursors due before this time (the warm-up) go into
    /// the timeline only.
    measured_from: u64,
}

impl Rec {
    fn measured(&self, due: u64) -> bool {
        due >= self.measured_from
    }
}

type Shared = Rc<RefCell<Rec>>;
type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Runs one worker; must be called inside a `LocalSet`. Sends `Ready`, then
/// waits for the start time on `start`, then sends a `Tick` a second and
/// `Done`.
pub async fn run_worker(
    spec: WorkerSpec,
    tx: mpsc::UnboundedSender<WorkerMsg>,
    start: oneshot::Receiver<u64>,
) -> Result<()> {
    let clock = Clock::new();
    let setup = Setup::new(&spec.target)?;
    let (first, last) = spec.rooms;
    let users = |room: u32| spec.scenario.users_in(room);

    // Rooms (collab only), then one token per user.
    if spec.target.kind == TargetKind::Collab {
        setup
            .create_rooms(&spec.run_id, first..last, &spec.scenario)
            .await
            .context("creating rooms")?;
    }

    let rec: Shared = Rc::default();
    let (phase_tx, phase_rx) = watch::channel(Phase::Setup);
    let sem = Rc::new(tokio::sync::Semaphore::new(spec.connect_concurrency.max(1)));
    let mut conns: Vec<(Rc<RefCell<Conn>>, u32)> = Vec::new();
    let mut tasks = Vec::new();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<()>();
    for room in first..last {
        for member in 0..users(room) {
            let (_, per_room) = spec.scenario.shape();
            let me = room * per_room + member;
            let conn = Rc::new(RefCell::new(Conn {
                room,
                me,
                ..Conn::default()
            }));
            conns.push((conn.clone(), users(room)));
            let client = Client {
                spec: spec.clone(),
                setup: setup.clone(),
                behaviour: spec.scenario.behaviour(room, member),
                room_name: room_name(&spec.run_id, room),
                conn,
                rec: rec.clone(),
                phase: phase_rx.clone(),
                clock,
            };
            let sem = sem.clone();
            let ready = ready_tx.clone();
            tasks.push(tokio::task::spawn_local(async move {
                client.run(sem, ready).await;
            }));
        }
    }
    drop(ready_tx);
    // Every client reports once, ready or failed.
    for _ in 0..conns.len() {
        if ready_rx.recv().await.is_none() {
            break;
        }
    }
    {
        let mut r = rec.borrow_mut();
        r.counters.clients = conns.len() as u64;
        let _ = tx.send(WorkerMsg::Ready {
            counters: r.counters.clone(),
            hists: r.hists.clone(),
        });
    }

    let start_us = start.await.map_err(|_| anyhow!("no start time"))?;
    // CPU of the measured part only, not of connecting.
    let cpu_start = sysstat::sample(None).map(|s| s.cpu_secs).unwrap_or(0.0);
    let stop_us = start_us + spec.duration_ms * 1000;
    let drain_end = stop_us + spec.drain_ms * 1000;
    rec.borrow_mut().measured_from = start_us + spec.warmup_ms * 1000;
    let _ = phase_tx.send(Phase::Running(start_us));
    tokio::time::sleep_until(clock.instant(start_us)).await;

    // A tick a second while sending; then wait for everything to arrive,
    // checking often, until the drain deadline.
    let mut second = 0;
    loop {
        second += 1;
        let at = start_us + second * 1_000_000;
        if at > stop_us {
            break;
        }
        tokio::time::sleep_until(clock.instant(at)).await;
        let mut tick = std::mem::take(&mut rec.borrow_mut().tick);
        tick.second = second;
        let _ = tx.send(WorkerMsg::Tick(tick));
    }
    tokio::time::sleep_until(clock.instant(stop_us)).await;
    let cpu_secs = sysstat::sample(None).map(|s| s.cpu_secs).unwrap_or(0.0) - cpu_start;
    loop {
        if complete(&conns) || now_us() >= drain_end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = phase_tx.send(Phase::Done);
    for task in tasks {
        let _ = task.await;
    }

    let mut r = rec.borrow_mut();
    let (counters, hists) = {
        let Rec {
            counters, hists, ..
        } = &mut *r;
        account(&conns, counters);
        (counters.clone(), hists.clone())
    };
    let _ = tx.send(WorkerMsg::Done {
        counters,
        hists,
        cpu_secs,
    });
    Ok(())
}

/// Ops sent per sender, by room.
fn sent_by_room(conns: &[(Rc<RefCell<Conn>>, u32)]) -> HashMap<u32, Vec<(u32, u64)>> {
    let mut rooms: HashMap<u32, Vec<(u32, u64)>> = HashMap::new();
    for (conn, _) in conns {
        let c = conn.borrow();
        if c.ops_sent > 0 {
            rooms.entry(c.room).or_default().push((c.me, c.ops_sent));
        }
    }
    rooms
}

/// Whether every joined connection has all ops of its room, all its acks
/// and its end-of-run pong.
fn complete(conns: &[(Rc<RefCell<Conn>>, u32)]) -> bool {
    let sent = sent_by_room(conns);
    conns.iter().all(|(conn, _)| {
        let c = conn.borrow();
        if !c.joined || c.closed {
            return true;
        }
        c.alive
            && c.pending.is_empty()
            && sent.get(&c.room).is_none_or(|senders| {
                senders
                    .iter()
                    .all(|(s, n)| c.seen.get(s).is_some_and(|(_, got)| got >= n))
            })
    })
}

/// Expected and lost deliveries, missing acks, live connections.
fn account(conns: &[(Rc<RefCell<Conn>>, u32)], counters: &mut Counters) {
    let sent = sent_by_room(conns);
    let mut cursors: HashMap<u32, u64> = HashMap::new();
    for (conn, _) in conns {
        let c = conn.borrow();
        *cursors.entry(c.room).or_default() += c.cursors_sent;
    }
    for (conn, members) in conns {
        let c = conn.borrow();
        counters.ack_missing += c.pending.len() as u64;
        if c.alive {
            counters.alive_at_end += 1;
        }
        if !c.joined {
            continue;
        }
        counters.cursors_expected += cursors.get(&c.room).copied().unwrap_or(0) - c.cursors_sent;
        for (s, n) in sent.get(&c.room).into_iter().flatten() {
            counters.ops_expected += n;
            let got = c.seen.get(s).map_or(0, |(_, got)| *got);
            counters.ops_lost += n.saturating_sub(got);
        }
        let _ = members;
    }
}

/// One simulated user.
struct Client {
    spec: WorkerSpec,
    setup: Setup,
    behaviour: Behaviour,
    room_name: String,
    conn: Rc<RefCell<Conn>>,
    rec: Shared,
    phase: watch::Receiver<Phase>,
    clock: Clock,
}

impl Client {
    async fn run(self, sem: Rc<tokio::sync::Semaphore>, ready: mpsc::UnboundedSender<()>) {
        let me = self.conn.borrow().me;
        let mut codec = Codec::new(self.spec.target.kind, self.room_name.clone(), me);
        let opened = {
            let _permit = sem.acquire().await;
            self.open(&mut codec).await
        };
        let _ = ready.send(());
        let ws = match opened {
            Ok(ws) => ws,
            Err(_) => return,
        };
        let (sink, stream) = ws.split();
        // Frames the reader needs sent (answers to Centrifugo's pings).
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let writer = self.write(sink, codec.clone(), ctl_rx);
        let reader = self.read(stream, codec, ctl_tx);
        let (sink, ()) = tokio::join!(writer, reader);
        if let Some(mut sink) = sink {
            let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;
        }
    }

    /// Connects and joins; records both times.
    async fn open(&self, codec: &mut Codec) -> Result<Ws> {
        let me = self.conn.borrow().me;
        let token = match self.setup.token(me).await {
            Ok(token) => token,
            Err(e) => {
                let mut r = self.rec.borrow_mut();
                r.counters.connect_failed += 1;
                r.counters.error(format!("token: {e}"));
                return Err(e);
            }
        };
        let url = self
            .spec
            .target
            .ws_url(me as usize, &self.room_name, token.as_deref());
        let t0 = Instant::now();
        let source = source_ip(me, self.spec.source_ips);
        // A server out of file descriptors leaves the handshake hanging.
        let connected = tokio::time::timeout(Duration::from_secs(30), connect(&url, source))
            .await
            .unwrap_or_else(|_| Err(anyhow!("no handshake within 30 s")));
        let mut ws = match connected {
            Ok(ws) => ws,
            Err(e) => {
                let mut r = self.rec.borrow_mut();
                r.counters.connect_failed += 1;
                r.counters.error(format!("connect: {}", short(&e)));
                return Err(e);
            }
        };
        let connected = t0.elapsed();
        self.rec
            .borrow_mut()
            .hists
            .connect
            .record(connected.as_micros() as u64);
        if let Err(e) = self.join(&mut ws, codec, token.as_deref()).await {
            let mut r = self.rec.borrow_mut();
            r.counters.join_failed += 1;
            r.counters.error(format!("join: {}", short(&e)));
            return Err(e);
        }
        self.rec
            .borrow_mut()
            .hists
            .join
            .record((t0.elapsed() - connected).as_micros() as u64);
        self.conn.borrow_mut().joined = true;
        Ok(ws)
    }

    async fn join(&self, ws: &mut Ws, codec: &mut Codec, token: Option<&str>) -> Result<()> {
        let frames = codec.join_frames(token);
        if frames.is_empty() {
            return Ok(());
        }
        for frame in frames {
            ws.send(Message::text(frame)).await?;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut events = Vec::new();
        loop {
            let message = tokio::time::timeout_at(deadline, ws.next())
                .await
                .map_err(|_| anyhow!("no answer to join"))?
                .ok_or_else(|| anyhow!("closed while joining"))??;
            let Message::Text(text) = message else {
                continue;
            };
            events.clear();
            codec.decode(text.as_str(), &mut events);
            for event in events.drain(..) {
                match event {
                    Event::Joined { head } => {
                        self.conn.borrow_mut().last_seq = head;
                        return Ok(());
                    }
                    Event::Error { code } => bail!("refused: {code}"),
                    Event::Ping => ws.send(Message::text(codec.pong())).await?,
                    _ => {}
                }
            }
        }
    }

    /// Sends on schedule from the start until the stop, then a ping;
    /// returns the sink to close once the run is done.
    async fn write(
        &self,
        mut sink: futures_util::stream::SplitSink<Ws, Message>,
        mut codec: Codec,
        mut ctl: mpsc::UnboundedReceiver<Message>,
    ) -> Option<futures_util::stream::SplitSink<Ws, Message>> {
        let mut phase = self.phase.clone();
        let start = loop {
            match *phase.borrow_and_update() {
                Phase::Running(start) => break start,
                Phase::Done => return Some(sink),
                Phase::Setup => {}
            }
            if phase.changed().await.is_err() {
                return Some(sink);
            }
        };
        let stop = start + self.spec.duration_ms * 1000;
        let me = codec.me;
        let points = points_json(me);
        let text = format!("message from u{me}: hello, this is the load generator speaking");
        let ops = self.behaviour.ops.clone();
        let cursor = self.behaviour.cursor.clone();
        let mut next_op = ops.as_ref().map(|o| start + o.phase_us);
        let mut next_cursor = cursor.as_ref().map(|c| start + c.phase_us);
        let (mut op_tick, mut op_n, mut cursor_n) = (0u64, 0u64, 0u64);
        loop {
            let due = match (next_op, next_cursor) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => stop,
            };
            tokio::select! {
                () = tokio::time::sleep_until(self.clock.instant(due.min(stop))) => {}
                Some(frame) = ctl.recv() => {
                    if sink.send(frame).await.is_err() {
                        self.fail("send: pong");
                        return None;
                    }
                    continue;
                }
            }
            if due >= stop {
                break;
            }
            let lag = now_us().saturating_sub(due);
            let mut frames = Vec::with_capacity(2);
            if let (Some(at), Some(stream)) = (next_op, &ops)
                && at == due
            {
                let (kinds, stroke) = stream.pattern.ops(op_tick);
                let stroke = format!("u{me}s{stroke}");
                for &kind in kinds {
                    op_n += 1;
                    let op = OpOut {
                        kind,
                        stroke: &stroke,
                        points: &points,
                        text: &text,
                    };
                    frames.push(codec.op(op_n, due, &op));
                    let mut c = self.conn.borrow_mut();
                    c.pending.push_back((op_n, due));
                    c.ops_sent += 1;
                }
                op_tick += 1;
                next_op = Some(at + stream.period_us);
                let mut r = self.rec.borrow_mut();
                r.counters.ops_sent += kinds.len() as u64;
                r.tick.ops_sent += kinds.len() as u64;
            }
            if let (Some(at), Some(stream)) = (next_cursor, &cursor)
                && at == due
            {
                cursor_n += 1;
                frames.push(codec.cursor(cursor_n, due));
                self.conn.borrow_mut().cursors_sent += 1;
                self.rec.borrow_mut().counters.cursors_sent += 1;
                next_cursor = Some(at + stream.period_us);
            }
            self.rec.borrow_mut().hists.send_lag.record(lag);
            for frame in frames {
                if let Err(e) = sink.feed(Message::text(frame)).await {
                    self.fail(&format!("send: {}", short(&e.into())));
                    return None;
                }
            }
            if let Err(e) = sink.flush().await {
                self.fail(&format!("send: {}", short(&e.into())));
                return None;
            }
        }
        // Still connected? The pong arrives at the reader.
        if sink
            .send(Message::Ping(b"end".to_vec().into()))
            .await
            .is_err()
        {
            self.fail("send: ping");
            return None;
        }
        loop {
            tokio::select! {
                Some(frame) = ctl.recv() => {
                    if sink.send(frame).await.is_err() {
                        return None;
                    }
                }
                changed = phase.changed() => {
                    if changed.is_err() || *phase.borrow() == Phase::Done {
                        return Some(sink);
                    }
                }
            }
        }
    }

    fn fail(&self, why: &str) {
        let mut c = self.conn.borrow_mut();
        if !c.closed {
            c.closed = true;
            let mut r = self.rec.borrow_mut();
            r.counters.disconnected += 1;
            r.counters.error(why.to_owned());
        }
    }

    /// Reads and records until the run is done.
    async fn read(
        &self,
        mut stream: futures_util::stream::SplitStream<Ws>,
        codec: Codec,
        ctl: mpsc::UnboundedSender<Message>,
    ) {
        let mut phase = self.phase.clone();
        let mut events = Vec::new();
        let relay = codec.kind == TargetKind::Relay;
        loop {
            let message = tokio::select! {
                m = stream.next() => m,
                changed = phase.changed() => {
                    if changed.is_err() || *phase.borrow() == Phase::Done {
                        return;
                    }
                    continue;
                }
            };
            let text = match message {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Pong(_))) => {
                    self.conn.borrow_mut().alive = true;
                    continue;
                }
                Some(Ok(Message::Close(frame))) => {
                    let why = frame.map_or("closed".to_owned(), |f| format!("closed {}", f.code));
                    self.fail(&why);
                    return;
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    self.fail(&format!("read: {}", short(&e.into())));
                    return;
                }
                None => {
                    self.fail("closed");
                    return;
                }
            };
            let now = now_us();
            events.clear();
            codec.decode(text.as_str(), &mut events);
            let mut c = self.conn.borrow_mut();
            let mut r = self.rec.borrow_mut();
            for event in events.drain(..) {
                match event {
                    Event::Op { sender, n, t, seq } => {
                        check_seq(&mut c, &mut r, seq);
                        let lat = now.saturating_sub(t);
                        let entry = c.seen.entry(sender).or_insert((0, 0));
                        if n <= entry.0 {
                            r.counters.ops_duplicated_or_reordered += 1;
                            continue;
                        }
                        *entry = (n, entry.1 + 1);
                        r.counters.ops_delivered += 1;
                        r.tick.ops_delivered += 1;
                        if r.measured(t) {
                            r.hists.op.record(lat);
                        }
                        r.tick.op.record(lat);
                        if relay && sender == c.me {
                            ack(&mut c, &mut r, n, now);
                        }
                    }
                    Event::ForeignOp { seq } => check_seq(&mut c, &mut r, seq),
                    Event::Cursor { sender, t } => {
                        if sender != c.me {
                            r.counters.cursors_delivered += 1;
                            r.tick.cursors_delivered += 1;
                            let lat = now.saturating_sub(t);
                            if r.measured(t) {
                                r.hists.cursor.record(lat);
                            }
                            r.tick.cursor.record(lat);
                        }
                    }
                    Event::Ack { n, .. } => ack(&mut c, &mut r, n, now),
                    Event::Error { code } => {
                        r.counters.error(code);
                        r.tick.errors += 1;
                    }
                    Event::Ping => {
                        let _ = ctl.send(Message::text(codec.pong()));
                    }
                    Event::Joined { .. } | Event::Connected | Event::Other => {}
                }
            }
        }
    }
}

fn check_seq(c: &mut Conn, r: &mut Rec, seq: Option<u64>) {
    if let Some(seq) = seq {
        if let Some(last) = c.last_seq
            && seq != last + 1
        {
            r.counters.seq_errors += 1;
        }
        c.last_seq = Some(seq);
    }
}

fn ack(c: &mut Conn, r: &mut Rec, n: u64, now: u64) {
    if let Some(i) = c.pending.iter().position(|(m, _)| *m == n) {
        let (_, due) = c.pending.remove(i).unwrap_or_default();
        let lat = now.saturating_sub(due);
        r.counters.acked += 1;
        if r.measured(due) {
            r.hists.ack.record(lat);
        }
        r.tick.ack.record(lat);
    }
}

/// The first line of an error, for counting errors by kind.
fn short(e: &anyhow::Error) -> String {
    let s = e.to_string();
    let s = s.lines().next().unwrap_or_default();
    // Drop numbers (ports, ids) so that errors group.
    s.chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .take(80)
        .collect()
}

/// The source address of client `i`: 127.1.0.1 + i mod `count`.
pub fn source_ip(i: u32, count: u32) -> Option<IpAddr> {
    (count > 0).then(|| {
        let base = u32::from(Ipv4Addr::new(127, 1, 0, 1));
        IpAddr::V4(Ipv4Addr::from(base + i % count))
    })
}

/// Small socket buffers: tens of thousands of clients share one process.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(256 << 20))
        .max_frame_size(Some(256 << 20))
}

/// Opens a WebSocket to `url` from `source`, without Nagle.
pub async fn connect(url: &str, source: Option<IpAddr>) -> Result<Ws> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| anyhow!("only ws:// URLs: {url}"))?;
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let addr: SocketAddr = match authority.parse() {
        Ok(addr) => addr,
        Err(_) => tokio::net::lookup_host(authority)
            .await?
            .next()
            .ok_or_else(|| anyhow!("cannot resolve {authority}"))?,
    };
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    if let (Some(ip), SocketAddr::V4(_)) = (source, addr) {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config())).await?;
    Ok(ws)
}
