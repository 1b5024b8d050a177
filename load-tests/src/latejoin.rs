//! `late-join`: fill one board with many ops, then time how long a newcomer
//! waits for `joined` and for the full state decoded at the client. collab
//! only: the relay and Centrifugo's memory engine keep no state to join.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Message;

use crate::scenario::points_json;
use crate::setup::{Setup, user_id};
use crate::stats::{Hist, Latency};
use crate::target::{Codec, OpKind, OpOut, Target, TargetKind};
use crate::worker::{connect, now_us, source_ip};

/// Ops per stroke: `stroke_begin`, 8 `stroke_points`, `stroke_end`.
const STROKE_OPS: u64 = 10;
/// Points per op that carries points.
const POINTS: u64 = 16;
/// Ops a filler keeps un-acked (the server allows 64).
const WINDOW: usize = 32;

#[derive(Debug, Clone)]
pub struct LateJoinOptions {
    pub target: Target,
    /// Ops in the board before anyone joins late.
    pub ops: u64,
    /// Users filling the board at once (each is rate-limited by the server).
    pub writers: u32,
    /// Ops per second per writer (under the server's per-user limit).
    pub writer_rate: f64,
    /// Newcomers, one after the other.
    pub joiners: u32,
    pub source_ips: u32,
}

/// One newcomer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinSample {
    /// `join` sent → the whole `joined` message received.
    pub joined_ms: f64,
    /// `join` sent → its state decoded into strokes and points.
    pub state_ms: f64,
    pub bytes: usize,
    pub strokes: usize,
    pub points: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LateJoinResult {
    pub room: String,
    pub ops: u64,
    pub head: u64,
    pub fill_secs: f64,
    pub joins: Vec<JoinSample>,
    pub joined: Latency,
    pub state: Latency,
    /// Every newcomer got the whole board.
    pub clean: bool,
}

#[derive(Deserialize)]
struct Joined {
    head: u64,
    state: Option<State>,
}

#[derive(Deserialize)]
struct State {
    strokes: Vec<Stroke>,
}

#[derive(Deserialize)]
struct Stroke {
    points: Vec<[f64; 2]>,
}

pub async fn run(opts: &LateJoinOptions) -> Result<LateJoinResult> {
    ensure!(
        opts.target.kind == TargetKind::Collab,
        "late-join needs a collab target"
    );
    let setup = Setup::new(&opts.target)?;
    let run = crate::run::run_id(&crate::scenario::Scenario::Idle {
        connections: 0,
        users: 1,
    });
    let room = format!("late{run}");
    let writers = opts.writers.max(1);
    let per_writer = opts.ops.div_ceil(u64::from(writers)).div_ceil(STROKE_OPS) * STROKE_OPS;
    // Writers are users 1..=writers; newcomers follow.
    let owner = setup.token(1).await?.unwrap_or_default();
    setup.create_room(&owner, &room, "board").await?;

    let fill_started = Instant::now();
    let mut tasks = Vec::new();
    for w in 1..=writers {
        let (setup, target, room) = (setup.clone(), opts.target.clone(), room.clone());
        let period = Duration::from_secs_f64(1.0 / opts.writer_rate.max(1.0));
        let source_ips = opts.source_ips;
        tasks.push(tokio::spawn(async move {
            fill(&setup, &target, &room, w, per_writer, period, source_ips).await
        }));
    }
    for task in tasks {
        task.await??;
    }
    let fill_secs = fill_started.elapsed().as_secs_f64();
    let total = per_writer * u64::from(writers);
    let strokes = (total / STROKE_OPS) as usize;
    let points = strokes * ((STROKE_OPS - 1) * POINTS) as usize;

    let (mut joined_h, mut state_h) = (Hist::new(), Hist::new());
    let mut joins = Vec::new();
    let mut head = 0;
    let mut clean = true;
    for j in 0..opts.joiners {
        let me = writers + 1 + j;
        let token = setup.token(me).await?;
        let url = opts.target.ws_url(me as usize, &room, token.as_deref());
        let mut ws = connect(&url, source_ip(me, opts.source_ips)).await?;
        let t0 = Instant::now();
        ws.send(Message::text(format!(
            r#"{{"type":"join","room":"{room}"}}"#
        )))
        .await?;
        let text = loop {
            match tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
                Ok(Some(Ok(Message::Text(text)))) if text.as_str().contains(r#""joined""#) => {
                    break text;
                }
                Ok(Some(Ok(_))) => {}
                Ok(other) => bail!("no joined: {other:?}"),
                Err(_) => bail!("no joined within 60 s"),
            }
        };
        let joined_at = t0.elapsed();
        let frame: Joined = serde_json::from_str(text.as_str()).context("decoding joined")?;
        let state = frame.state.context("joined without state")?;
        let got_points: usize = state.strokes.iter().map(|s| s.points.len()).sum();
        let state_at = t0.elapsed();
        head = frame.head;
        clean &= state.strokes.len() == strokes && got_points == points && frame.head == total;
        joined_h.record(joined_at.as_micros() as u64);
        state_h.record(state_at.as_micros() as u64);
        joins.push(JoinSample {
            joined_ms: joined_at.as_secs_f64() * 1000.0,
            state_ms: state_at.as_secs_f64() * 1000.0,
            bytes: text.len(),
            strokes: state.strokes.len(),
            points: got_points,
        });
        let _ = ws.close(None).await;
    }
    Ok(LateJoinResult {
        room,
        ops: total,
        head,
        fill_secs,
        joins,
        joined: joined_h.summary(),
        state: state_h.summary(),
        clean,
    })
}

/// One writer: `count` ops in strokes of ten, at most [`WINDOW`] un-acked,
/// paced at `period`.
async fn fill(
    setup: &Setup,
    target: &Target,
    room: &str,
    me: u32,
    count: u64,
    period: Duration,
    source_ips: u32,
) -> Result<()> {
    let token = setup.token(me).await?;
    let url = target.ws_url(me as usize, room, token.as_deref());
    let mut ws = connect(&url, source_ip(me, source_ips)).await?;
    let mut codec = Codec::new(TargetKind::Collab, room.to_owned(), me);
    ws.send(Message::text(format!(
        r#"{{"type":"join","room":"{room}"}}"#
    )))
    .await?;
    let points = points_json(me);
    let mut unacked: VecDeque<u64> = VecDeque::new();
    let mut events = Vec::new();
    let mut sent = 0;
    let mut joined = false;
    let mut tick = tokio::time::interval(period);
    let deadline = Instant::now() + Duration::from_secs(600);
    while sent < count || !unacked.is_empty() {
        ensure!(Instant::now() < deadline, "filling took over 600 s");
        let can_send = joined && sent < count && unacked.len() < WINDOW;
        tokio::select! {
            _ = tick.tick(), if can_send => {
                let i = sent % STROKE_OPS;
                let kind = match i {
                    0 => OpKind::StrokeBegin,
                    i if i == STROKE_OPS - 1 => OpKind::StrokeEnd,
                    _ => OpKind::StrokePoints,
                };
                let stroke = format!("{}s{}", user_id(me), sent / STROKE_OPS);
                sent += 1;
                let op = OpOut { kind, stroke: &stroke, points: &points, text: "" };
                ws.send(Message::text(codec.op(sent, now_us(), &op))).await?;
                unacked.push_back(sent);
            }
            message = ws.next() => {
                let Some(message) = message else { bail!("closed while filling") };
                let text = match message? {
                    Message::Text(text) => text,
                    Message::Close(frame) => {
                        let (code, reason) = frame
                            .map(|f| (u16::from(f.code), f.reason.to_string()))
                            .unwrap_or_default();
                        bail!("closed while filling: {code} {reason}")
                    }
                    _ => continue,
                };
                events.clear();
                codec.decode(text.as_str(), &mut events);
                for event in events.drain(..) {
                    match event {
                        crate::target::Event::Joined { .. } => joined = true,
                        crate::target::Event::Ack { n, .. } => unacked.retain(|m| *m != n),
                        crate::target::Event::Error { code } => bail!("filling: {code}: {text}"),
                        _ => {}
                    }
                }
            }
        }
    }
    codec.room.clear();
    let _ = ws.close(None).await;
    Ok(())
}
