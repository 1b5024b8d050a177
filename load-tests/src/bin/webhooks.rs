//! `collab-webhook-bench`: webhook delivery throughput and lag on
//! `collab serve`, to a receiver on the same machine.
//!
//! It starts a receiver (an HTTP server that verifies each signature and
//! notes when each event arrived), writes a config with one `[[webhooks]]`
//! entry for it, starts `collab serve` (dev mode, a fresh data dir), creates
//! `--rooms` channels and publishes `--ops` messages into each over the
//! HTTP publish endpoint, `--batch` ops a request, every room at once. It
//! waits until every op was delivered and prints, as JSON: the publish rate
//! (ops committed per second), the delivery throughput (events received
//! per second, first to last), the lag of each event from its commit (the
//! op's `ts`, set by the room) to its receipt (p50, p90, p99, max), and how
//! many events came twice or out of order (0 expected). With `--backlog`
//! the receiver refuses everything until the last op is published, so the
//! throughput is that of draining a backlog (after an endpoint's outage).
//!
//! ```sh
//! cargo build --release -p collab -p collab-load
//! target/release/collab-webhook-bench --collab target/release/collab --rooms 10 --ops 5000
//! target/release/collab-webhook-bench --collab target/release/collab --rooms 10 --ops 5000 --backlog
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use clap::Parser;
use collab_webhooks::signature::{SIGNATURE_HEADER, verify};
use hdrhistogram::Histogram;
use serde_json::{Value, json};

const SECRET: &str = "collab-webhook-bench-secret";

#[derive(Parser)]
#[command(about = "Webhook delivery throughput and lag of collab serve to a local receiver")]
struct Cli {
    /// The `collab` binary to run.
    #[arg(long, default_value = "target/release/collab")]
    collab: PathBuf,
    /// Channels published into at once.
    #[arg(long, default_value_t = 10)]
    rooms: u32,
    /// Messages per room.
    #[arg(long, default_value_t = 5000)]
    ops: u32,
    /// Ops per publish request (1 to 100).
    #[arg(long, default_value_t = 20)]
    batch: u32,
    /// Give up waiting for deliveries after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// The receiver refuses (503) until every op is published, then takes
    /// the backlog: measures how fast a backlog drains (the lag then says
    /// how long events waited, not how fast they go).
    #[arg(long)]
    backlog: bool,
}

/// What the receiver noted.
#[derive(Default)]
struct Received {
    /// Refuse every delivery (503) while set.
    refusing: bool,
    /// Lag of each event, in microseconds.
    lags_us: Vec<u64>,
    first: Option<Instant>,
    last: Option<Instant>,
    /// room → the highest seq received in order.
    next: HashMap<String, u64>,
    duplicates: u64,
    out_of_order: u64,
    bad_signatures: u64,
}

type Shared = Arc<Mutex<Received>>;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

async fn receive(State(state): State<Shared>, headers: HeaderMap, body: String) -> StatusCode {
    let arrived = now_us();
    let signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let signed = verify(SECRET.as_bytes(), signature, body.as_bytes()).is_ok();
    let event: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let mut received = state.lock().unwrap_or_else(|p| p.into_inner());
    if received.refusing {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    if !signed {
        received.bad_signatures += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let (Some(room), Some(seq), Some(ts)) = (
        event["room"].as_str(),
        event["seq"].as_u64(),
        event["created_at"].as_u64(),
    ) else {
        return StatusCode::BAD_REQUEST;
    };
    let now = Instant::now();
    received.first.get_or_insert(now);
    received.last = Some(now);
    received.lags_us.push(arrived.saturating_sub(ts * 1000));
    let done = received.next.entry(room.to_owned()).or_insert(0);
    if seq <= *done {
        received.duplicates += 1;
    } else if seq == *done + 1 {
        *done = seq;
    } else {
        received.out_of_order += 1;
    }
    StatusCode::NO_CONTENT
}

/// Kills `collab serve` when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    if !(1..=100).contains(&cli.batch) {
        bail!("--batch must be from 1 to 100");
    }
    let state: Shared = Arc::default();
    let app = axum::Router::new()
        .route("/hooks", post(receive))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hooks = format!("http://{}/hooks", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir()?;
    let config = dir.path().join("collab.toml");
    std::fs::write(
        &config,
        format!(
            "[[webhooks]]\nid = \"bench\"\nurl = {hooks:?}\nsecret = {SECRET:?}\nevents = [\"op.committed\"]\n"
        ),
    )?;
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    eprintln!(
        "starting {} serve on {base}, webhooks to {hooks}",
        cli.collab.display()
    );
    let _server = Server(
        Command::new(&cli.collab)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env("COLLAB_GATEWAY__RATE_LIMITS__OPS_PER_SEC", "1000000")
            .env("COLLAB_GATEWAY__RATE_LIMITS__OPS_BURST", "1000000")
            .env("COLLAB_GATEWAY__RATE_LIMITS__HTTP_PER_SEC", "1000000")
            .env("COLLAB_GATEWAY__RATE_LIMITS__HTTP_BURST", "1000000")
            .env("COLLAB_GATEWAY__RATE_LIMITS__ROOMS_PER_MIN", "1000000")
            .env("COLLAB_GATEWAY__RATE_LIMITS__ROOMS_BURST", "1000000")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot run {}", cli.collab.display()))?,
    );
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        if Instant::now() > deadline {
            bail!("collab serve did not get ready");
        }
        tokio::time::sleep(Duration::from_millis(50)).await; // poll interval
    }
    let token = |scope: &'static str| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let answer: Value = http
                .post(format!("{base}/v1/dev/token"))
                .json(&json!({"user": "bench", "scope": scope}))
                .send()
                .await?
                .json()
                .await?;
            answer["token"]
                .as_str()
                .map(str::to_owned)
                .context("no dev token")
        }
    };
    let user = token("").await?;
    let service = token("service").await?;
    for room in 0..cli.rooms {
        let status = http
            .post(format!("{base}/v1/rooms"))
            .bearer_auth(&user)
            .json(&json!({"kind": "channel", "id": format!("bench-{room}")}))
            .send()
            .await?
            .status();
        if !status.is_success() {
            bail!("creating room bench-{room}: {status}");
        }
    }

    state.lock().unwrap_or_else(|p| p.into_inner()).refusing = cli.backlog;
    let started = Instant::now();
    let mut publishers = Vec::new();
    for room in 0..cli.rooms {
        let (http, base, service) = (http.clone(), base.clone(), service.clone());
        let (ops, batch) = (cli.ops, cli.batch);
        publishers.push(tokio::spawn(async move {
            let mut n = 0;
            while n < ops {
                let body: Vec<Value> = (n..(n + batch).min(ops))
                    .map(|i| json!({"cid": format!("c{i}"), "op": {"kind": "message", "text": format!("message {i}")}}))
                    .collect();
                let response = http
                    .post(format!("{base}/v1/rooms/bench-{room}/ops"))
                    .bearer_auth(&service)
                    .json(&body)
                    .send()
                    .await?;
                if !response.status().is_success() {
                    // Retried with the same cids: applied once.
                    tokio::time::sleep(Duration::from_millis(10)).await; // retry backoff
                    continue;
                }
                n += batch;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for publisher in publishers {
        publisher.await??;
    }
    let published = started.elapsed();
    state.lock().unwrap_or_else(|p| p.into_inner()).refusing = false;
    let total = u64::from(cli.rooms) * u64::from(cli.ops);
    let deadline = Instant::now() + Duration::from_secs(cli.timeout_secs);
    loop {
        let got = state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .next
            .values()
            .sum::<u64>();
        if got >= total {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {got} of {total} events delivered in {}s",
                cli.timeout_secs
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await; // poll interval
    }
    let received = state.lock().unwrap_or_else(|p| p.into_inner());
    let mut lags = Histogram::<u64>::new(3)?;
    for lag in &received.lags_us {
        lags.record(*lag)?;
    }
    let window = match (received.first, received.last) {
        (Some(first), Some(last)) => (last - first).as_secs_f64(),
        _ => 0.0,
    };
    let ms = |us: u64| us as f64 / 1000.0;
    let report = json!({
        "rooms": cli.rooms,
        "ops_per_room": cli.ops,
        "batch": cli.batch,
        "backlog": cli.backlog,
        "events": total,
        "publish_ops_per_sec": (total as f64 / published.as_secs_f64()).round(),
        "delivered_per_sec": if window > 0.0 { (received.lags_us.len() as f64 / window).round() } else { 0.0 },
        "lag_ms": {
            "p50": ms(lags.value_at_quantile(0.5)),
            "p90": ms(lags.value_at_quantile(0.9)),
            "p99": ms(lags.value_at_quantile(0.99)),
            "max": ms(lags.max()),
        },
        "duplicates": received.duplicates,
        "out_of_order": received.out_of_order,
        "bad_signatures": received.bad_signatures,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
