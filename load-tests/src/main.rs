//! `collab-load`: a small load generator for a running collab server.
//!
//! It speaks only the public protocol (dev tokens, `POST /v1/rooms`, the
//! WebSocket), so it measures what a client sees:
//! - **ack latency**: from sending an op to receiving its `ack` (the op is
//!   durable by then);
//! - **delivery latency**: from sending an op to another member receiving
//!   its `op` frame (the send time travels in the message text).
//!
//! Scenarios:
//! - `busy-room`: one room, `--writers` clients each sending `--rate` ops/s,
//!   `--readers` more clients watching;
//! - `quiet-rooms`: `--rooms` rooms of two clients each, one op per second
//!   per room.
//!
//! The offered load is open-loop: a writer sends on its schedule whether or
//! not earlier ops were acked (up to the server's un-acked limit).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
#[command(about = "Drive a collab server and measure what clients see")]
struct Cli {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// One room: writers send ops at a fixed rate, readers watch.
    BusyRoom {
        #[arg(long, default_value_t = 4)]
        writers: usize,
        #[arg(long, default_value_t = 8)]
        readers: usize,
        /// Ops per second per writer.
        #[arg(long, default_value_t = 250)]
        rate: u64,
    },
    /// Many rooms of two clients, one op per second per room.
    QuietRooms {
        #[arg(long, default_value_t = 1000)]
        rooms: usize,
    },
}

#[derive(Default)]
struct Stats {
    ack: Option<Histogram<u64>>,
    delivery: Option<Histogram<u64>>,
    sent: u64,
    acked: u64,
    delivered: u64,
    errors: u64,
}

fn histogram() -> Histogram<u64> {
    // Microseconds, 3 significant digits, growing as needed.
    let mut h = Histogram::new(3).unwrap_or_else(|e| panic!("histogram: {e}"));
    h.auto(true);
    h
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Server {
    url: String,
    http: reqwest::Client,
}

impl Server {
    async fn token(&self, user: &str) -> Result<String> {
        let body: Value = self
            .http
            .post(format!("{}/v1/dev/token", self.url))
            .json(&json!({"user": user}))
            .send()
            .await?
            .error_for_status()
            .context("dev token (is the server in dev mode?)")?
            .json()
            .await?;
        body["token"]
            .as_str()
            .map(str::to_owned)
            .context("no token in the answer")
    }

    async fn create_room(&self, token: &str, id: &str) -> Result<()> {
        let response = self
            .http
            .post(format!("{}/v1/rooms", self.url))
            .bearer_auth(token)
            .json(&json!({"kind": "channel", "id": id}))
            .send()
            .await?;
        match response.status().as_u16() {
            201 | 409 => Ok(()),
            other => bail!("creating room {id}: HTTP {other}"),
        }
    }

    async fn join(&self, token: &str, room: &str) -> Result<Ws> {
        let ws_url = format!("{}/v1/ws?token={token}", self.url.replacen("http", "ws", 1));
        // No Nagle on the client either: it sends many small frames.
        let (mut ws, _) = tokio_tungstenite::connect_async_with_config(ws_url, None, true).await?;
        ws.send(Message::text(
            json!({"type": "join", "room": room}).to_string(),
        ))
        .await?;
        loop {
            let Some(message) = ws.next().await else {
                bail!("closed before joined");
            };
            if let Message::Text(text) = message? {
                let frame: Value = serde_json::from_str(text.as_str())?;
                if frame["type"] == "joined" {
                    return Ok(ws);
                }
                if frame["type"] == "error" {
                    bail!("join refused: {frame}");
                }
            }
        }
    }
}

/// Reads frames until `until`, recording acks and deliveries.
async fn read_frames(
    mut ws: futures_util::stream::SplitStream<Ws>,
    sent_at: Arc<Mutex<HashMap<String, u64>>>,
    stats: Arc<Mutex<Stats>>,
    until: Instant,
) {
    let mut ack = histogram();
    let mut delivery = histogram();
    let (mut acked, mut delivered, mut errors) = (0, 0, 0);
    while let Ok(Some(Ok(message))) = tokio::time::timeout_at(until.into(), ws.next()).await {
        let Message::Text(text) = message else {
            continue;
        };
        let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else {
            continue;
        };
        let now = now_micros();
        match frame["type"].as_str() {
            Some("ack") => {
                let cid = frame["cid"].as_str().unwrap_or_default();
                if let Some(at) = sent_at.lock().await.remove(cid) {
                    let _ = ack.record(now.saturating_sub(at).max(1));
                    acked += 1;
                }
            }
            Some("op") => {
                let sent = frame["op"]["text"]
                    .as_str()
                    .and_then(|t| t.strip_prefix("t="))
                    .and_then(|t| t.parse::<u64>().ok());
                if let Some(at) = sent {
                    let _ = delivery.record(now.saturating_sub(at).max(1));
                    delivered += 1;
                }
            }
            Some("error") => errors += 1,
            _ => {}
        }
    }
    let mut stats = stats.lock().await;
    stats.acked += acked;
    stats.delivered += delivered;
    stats.errors += errors;
    match &mut stats.ack {
        Some(h) => {
            let _ = h.add(&ack);
        }
        None => stats.ack = Some(ack),
    }
    match &mut stats.delivery {
        Some(h) => {
            let _ = h.add(&delivery);
        }
        None => stats.delivery = Some(delivery),
    }
}

/// A member that only watches: records the deliveries it sees until `until`.
fn watch(ws: Ws, stats: Arc<Mutex<Stats>>, until: Instant) -> tokio::task::JoinHandle<Result<()>> {
    tokio::spawn(async move {
        // The write half stays open (and the socket with it) while reading.
        let (_sink, stream) = ws.split();
        read_frames(stream, Arc::new(Mutex::new(HashMap::new())), stats, until).await;
        Ok(())
    })
}

/// Sends a message op every `period` until `stop`; reads in the background.
async fn writer(
    ws: Ws,
    name: String,
    room: String,
    period: Duration,
    stop: Instant,
    drain: Instant,
    stats: Arc<Mutex<Stats>>,
) -> Result<()> {
    let (mut sink, stream) = ws.split();
    let sent_at = Arc::new(Mutex::new(HashMap::new()));
    let reader = tokio::spawn(read_frames(stream, sent_at.clone(), stats.clone(), drain));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut n = 0u64;
    while Instant::now() < stop {
        tick.tick().await;
        n += 1;
        let cid = format!("{name}-{n}");
        let at = now_micros();
        sent_at.lock().await.insert(cid.clone(), at);
        let frame = json!({"type": "op", "room": room, "cid": cid, "op": {"kind": "message", "text": format!("t={at}")}});
        sink.send(Message::text(frame.to_string())).await?;
    }
    stats.lock().await.sent += n;
    let _ = reader.await;
    let _ = sink.close().await;
    Ok(())
}

fn report(title: &str, stats: &Stats, seconds: u64) {
    println!("## {title}");
    println!(
        "sent {} ops ({:.0}/s), acked {}, delivered {} op frames, errors {}",
        stats.sent,
        stats.sent as f64 / seconds as f64,
        stats.acked,
        stats.delivered,
        stats.errors
    );
    for (name, h) in [("ack", &stats.ack), ("delivery", &stats.delivery)] {
        if let Some(h) = h.as_ref().filter(|h| !h.is_empty()) {
            let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            println!(
                "{name:>8} latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
                ms(0.5),
                ms(0.9),
                ms(0.99),
                ms(0.999),
                h.max() as f64 / 1000.0
            );
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let server = Server {
        url: cli.url.trim_end_matches('/').to_owned(),
        http: reqwest::Client::new(),
    };
    let stats = Arc::new(Mutex::new(Stats::default()));
    let start = Instant::now() + Duration::from_millis(500);
    let stop = start + Duration::from_secs(cli.seconds);
    // Give late acks and deliveries time to arrive before counting.
    let drain = stop + Duration::from_secs(3);
    let run = format!("{:x}", now_micros());
    match cli.scenario {
        Scenario::BusyRoom {
            writers,
            readers,
            rate,
        } => {
            let room = format!("busy-{run}");
            let owner = server.token("load-owner").await?;
            server.create_room(&owner, &room).await?;
            let mut tasks = Vec::new();
            for r in 0..readers {
                let token = server.token(&format!("reader{r}")).await?;
                let ws = server.join(&token, &room).await?;
                tasks.push(watch(ws, stats.clone(), drain));
            }
            let period = Duration::from_micros(1_000_000 / rate.max(1));
            for w in 0..writers {
                let name = format!("writer{w}");
                let token = server.token(&name).await?;
                let ws = server.join(&token, &room).await?;
                tasks.push(tokio::spawn(writer(
                    ws,
                    name,
                    room.clone(),
                    period,
                    stop,
                    drain,
                    stats.clone(),
                )));
            }
            for task in tasks {
                task.await??;
            }
            report(
                &format!(
                    "busy-room: {writers} writers × {rate} ops/s, {readers} readers, {} s",
                    cli.seconds
                ),
                &*stats.lock().await,
                cli.seconds,
            );
        }
        Scenario::QuietRooms { rooms } => {
            let owner = server.token("load-owner").await?;
            let mut tasks = Vec::new();
            for i in 0..rooms {
                let room = format!("quiet-{run}-{i}");
                server.create_room(&owner, &room).await?;
                let writer_name = format!("w{i}");
                let token = server.token(&writer_name).await?;
                let ws = server.join(&token, &room).await?;
                let watcher = server.token(&format!("r{i}")).await?;
                let watcher = server.join(&watcher, &room).await?;
                tasks.push(watch(watcher, stats.clone(), drain));
                tasks.push(tokio::spawn(writer(
                    ws,
                    writer_name,
                    room,
                    Duration::from_secs(1),
                    stop,
                    drain,
                    stats.clone(),
                )));
            }
            for task in tasks {
                task.await??;
            }
            report(
                &format!(
                    "quiet-rooms: {rooms} rooms × 1 op/s, 2 clients each, {} s",
                    cli.seconds
                ),
                &*stats.lock().await,
                cli.seconds,
            );
        }
    }
    Ok(())
}
