//! `publish`: an app's backend posting ops over HTTP
//! (`POST /v1/rooms/{id}/ops`) as fast as the server takes them, into one
//! room or spread over many. collab only.
//!
//! Closed loop: each sender waits for its answer before the next request,
//! so the figure is what the server sustains, and the latency is what one
//! request waits at that rate. Every sender is its own service user. At the
//! end, each room's head must equal the ops acked into it: nothing acked
//! was lost, nothing stored twice.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::setup::Setup;
use crate::stats::{Hist, Latency};
use crate::target::{Auth, Target, TargetKind};

/// How long a sender pauses after a 429 before sending again.
const THROTTLED_PAUSE: Duration = Duration::from_millis(20);

#[derive(Debug, Clone)]
pub struct PublishOptions {
    pub target: Target,
    /// Rooms the ops go to, round robin per sender.
    pub rooms: u32,
    /// Requests in flight at once (one per sender).
    pub senders: u32,
    /// Ops per request (1: the single-op body; more: a list).
    pub batch: u32,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishResult {
    pub rooms: u32,
    pub senders: u32,
    pub batch: u32,
    pub seconds: f64,
    /// Ops acked (committed) per second.
    pub ops_per_sec: f64,
    pub requests: u64,
    /// Time from sending a request to its answer.
    pub latency: Latency,
    /// Answers that were neither 200 nor 429.
    pub failed: u64,
    /// 429 answers (over a per-user limit): the request was sent again,
    /// with the same cids, after a short pause, as a backend would.
    pub throttled: u64,
    /// Every room's head equals the ops acked into it.
    pub clean: bool,
}

#[derive(Serialize)]
struct ServiceClaims<'a> {
    sub: &'a str,
    exp: u64,
    scope: &'static str,
}

fn service_token(secret: &str, user: &str) -> Result<String> {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 3600;
    let claims = ServiceClaims {
        sub: user,
        exp,
        scope: "service",
    };
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// One sender's share of the results.
#[derive(Default)]
struct Sent {
    hist: Hist,
    requests: u64,
    failed: u64,
    throttled: u64,
    /// Ops acked, per room index.
    acked: Vec<u64>,
}

pub async fn run(opts: &PublishOptions) -> Result<PublishResult> {
    ensure!(
        opts.target.kind == TargetKind::Collab,
        "publish needs a collab target"
    );
    let Auth::Secret(secret) = &opts.target.auth else {
        bail!("publish needs --secret: it mints service tokens");
    };
    let base = opts
        .target
        .http_url
        .clone()
        .context("publish needs an HTTP URL")?;
    let setup = Setup::new(&opts.target)?;
    let run = format!(
        "pub{}",
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() % 1_000_000_000
    );
    let rooms: Vec<String> = (0..opts.rooms.max(1))
        .map(|r| format!("{run}-{r}"))
        .collect();
    // Each room by its own user: room creation is rate-limited per user.
    for (r, room) in (1..).zip(&rooms) {
        let creator = setup.token(r).await?.unwrap_or_default();
        setup.create_room(&creator, room, "channel").await?;
    }
    let owner = setup.token(1).await?.unwrap_or_default();

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(opts.senders as usize)
        .build()?;
    let deadline = Instant::now() + Duration::from_secs_f64(opts.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..opts.senders.max(1) {
        let user = format!("svc{s}");
        let token = service_token(secret, &user)?;
        let (http, base, rooms, batch) = (http.clone(), base.clone(), rooms.clone(), opts.batch);
        tasks.push(tokio::spawn(async move {
            send(
                &http, &base, &token, &user, &rooms, s as usize, batch, deadline,
            )
            .await
        }));
    }
    let mut total = Sent {
        acked: vec![0; rooms.len()],
        ..Sent::default()
    };
    for task in tasks {
        let sent = task.await??;
        total.hist.add(&sent.hist);
        total.requests += sent.requests;
        total.failed += sent.failed;
        total.throttled += sent.throttled;
        for (sum, n) in total.acked.iter_mut().zip(&sent.acked) {
            *sum += n;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();

    let mut clean = total.failed == 0;
    for (room, acked) in rooms.iter().zip(&total.acked) {
        let info: serde_json::Value = http
            .get(format!("{base}/v1/rooms/{room}"))
            .bearer_auth(&owner)
            .send()
            .await?
            .json()
            .await?;
        if info["head"].as_u64() != Some(*acked) {
            eprintln!("room {room}: head {} but {acked} ops acked", info["head"]);
            clean = false;
        }
    }
    let acked: u64 = total.acked.iter().sum();
    Ok(PublishResult {
        rooms: opts.rooms.max(1),
        senders: opts.senders.max(1),
        batch: opts.batch,
        seconds: elapsed,
        ops_per_sec: acked as f64 / elapsed,
        requests: total.requests,
        latency: total.hist.summary(),
        failed: total.failed,
        throttled: total.throttled,
        clean,
    })
}

/// One sender: requests one after the other until `deadline`, to room
/// `first`, then the next, and so on.
#[allow(clippy::too_many_arguments)]
async fn send(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    user: &str,
    rooms: &[String],
    first: usize,
    batch: u32,
    deadline: Instant,
) -> Result<Sent> {
    let mut sent = Sent {
        acked: vec![0; rooms.len()],
        ..Sent::default()
    };
    let mut n: u64 = 0;
    let mut r = first % rooms.len();
    while Instant::now() < deadline {
        let ops: Vec<serde_json::Value> = (0..batch.max(1))
            .map(|i| {
                json!({
                    "cid": format!("{user}-{n}-{i}"),
                    "op": {"kind": "message", "text": format!("published {n}.{i}")},
                })
            })
            .collect();
        let body = if ops.len() == 1 {
            ops.into_iter().next().unwrap_or_default()
        } else {
            serde_json::Value::Array(ops)
        };
        let at = Instant::now();
        let response = http
            .post(format!("{base}/v1/rooms/{}/ops", rooms[r]))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await?;
        let status = response.status();
        let answer: serde_json::Value = response.json().await.unwrap_or_default();
        sent.hist.record(at.elapsed().as_micros() as u64);
        sent.requests += 1;
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            // The same ops again (same cids) after a pause.
            sent.throttled += 1;
            tokio::time::sleep(THROTTLED_PAUSE).await;
            continue;
        }
        if status.is_success() {
            sent.acked[r] += answer["ops"].as_array().map_or(1, |ops| ops.len() as u64);
        } else {
            sent.failed += 1;
            if sent.failed <= 3 {
                eprintln!("publish: {status} {answer}");
            }
        }
        n += 1;
        r = (r + 1) % rooms.len();
    }
    Ok(sent)
}

/// The result as Markdown.
pub fn markdown(r: &PublishResult) -> String {
    format!(
        "| rooms | senders | ops per request | ops/s | requests | p50 ms | p99 ms | max ms | 429 | failed | clean |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n\
         | {} | {} | {} | {:.0} | {} | {:.2} | {:.2} | {:.2} | {} | {} | {} |\n",
        r.rooms,
        r.senders,
        r.batch,
        r.ops_per_sec,
        r.requests,
        r.latency.p50_ms,
        r.latency.p99_ms,
        r.latency.max_ms,
        r.throttled,
        r.failed,
        if r.clean { "yes" } else { "NO" },
    )
}
