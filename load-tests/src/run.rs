//! The coordinator: splits a scenario's rooms over workers (threads of this
//! process, or child processes when one process cannot hold all the
//! connections or use more than one core), starts them at one instant,
//! shows progress, samples the server's and its own CPU and memory, and
//! merges what the workers counted into one [`RunResult`].

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

use crate::scenario::Scenario;
use crate::stats::{Counters, Hists, Latency, Tick};
use crate::sysstat::{ProcStats, ProcWatch};
use crate::target::{Target, TargetKind};
use crate::worker::{WorkerMsg, WorkerSpec, now_us, run_worker};

/// Connections one worker process opens at most: its open-file limit
/// (20,000 here) less room for everything else.
pub const MAX_CONNS_PER_WORKER: u32 = 18_000;

/// How workers run.
#[derive(Debug, Clone)]
pub enum Spawn {
    /// Threads of this process, one runtime each (tests, small runs).
    Threads,
    /// Child processes: this executable with the hidden `worker` command.
    Processes(PathBuf),
}

/// One run of one scenario against one target.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub target: Target,
    pub scenario: Scenario,
    /// The measured part.
    pub duration: Duration,
    /// Traffic before the measured part, not in the latency histograms.
    pub warmup: Duration,
    /// Longest wait for late deliveries after the stop.
    pub drain: Duration,
    /// At least this many workers (more if the connections need them).
    pub workers: u32,
    pub spawn: Spawn,
    pub source_ips: u32,
    pub connect_concurrency: usize,
    /// The server process to sample from `/proc`.
    pub server_pid: Option<u32>,
    /// More processes to sample, by name: a cluster's gateways, room
    /// nodes, NATS and CQL server, which together are the server.
    pub watch: Vec<(String, u32)>,
    /// Print a progress line (to stderr) every second.
    pub progress: bool,
}

/// Per second, all workers together.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TimelinePoint {
    pub second: u64,
    pub ops_sent: u64,
    pub ops_delivered: u64,
    pub cursors_delivered: u64,
    pub errors: u64,
    pub op_p50_ms: f64,
    pub op_p99_ms: f64,
    pub op_max_ms: f64,
    pub ack_p99_ms: f64,
    #[serde(default)]
    pub cursor_p99_ms: f64,
}

/// Latency distributions of a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latencies {
    pub connect: Latency,
    pub join: Latency,
    /// Op sent → delivered to a member (end to end).
    pub op: Latency,
    /// Op sent → acked to its sender.
    pub ack: Latency,
    pub cursor: Latency,
    /// How late the generator itself sent against its schedule.
    pub send_lag: Latency,
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    pub scenario: Scenario,
    pub target: TargetKind,
    pub ws_urls: Vec<String>,
    /// Start of the traffic (the warm-up's, if any), seconds since the
    /// Unix epoch.
    pub started_at: u64,
    /// The measured part; the traffic ran `warmup_s` longer.
    pub duration_s: f64,
    /// Traffic before the measured part: in the counters, the timeline
    /// (its first seconds) and the CPU figures, not in the latencies.
    #[serde(default)]
    pub warmup_s: f64,
    pub workers: u32,
    pub rooms: u32,
    pub offered_ops_per_sec: f64,
    pub sent_ops_per_sec: f64,
    pub delivered_ops_per_sec: f64,
    pub delivered_cursors_per_sec: f64,
    pub counters: Counters,
    pub latency: Latencies,
    pub timeline: Vec<TimelinePoint>,
    pub server: Option<ProcStats>,
    /// The server's RSS before the clients connected.
    pub server_rss_before_bytes: Option<u64>,
    /// (RSS at the end − RSS before) / clients connected.
    pub server_rss_per_client_bytes: Option<f64>,
    /// The processes of `--watch`, in the order given.
    #[serde(default)]
    pub watched: Vec<Watched>,
    /// The generator's CPU use, all its processes, % of one core.
    pub generator_cpu_pct: f64,
    /// Nothing lost, duplicated, reordered or refused; all connected.
    pub clean: bool,
}

/// One more process sampled over a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Watched {
    pub name: String,
    pub stats: ProcStats,
}

struct WorkerHandle {
    rx: mpsc::UnboundedReceiver<WorkerMsg>,
    start: oneshot::Sender<u64>,
    process: Option<tokio::process::Child>,
}

/// Parses `NAME=PID` (`--watch`).
pub fn parse_watch(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s
        .split_once('=')
        .filter(|(name, _)| !name.is_empty())
        .ok_or_else(|| format!("{s:?}: expected NAME=PID"))?;
    let pid = pid
        .parse()
        .map_err(|_| format!("{pid:?} is not a process id"))?;
    Ok((name.to_owned(), pid))
}

/// Splits `rooms` into `workers` contiguous shares.
pub fn split(rooms: u32, workers: u32) -> Vec<(u32, u32)> {
    let workers = workers.clamp(1, rooms.max(1));
    (0..workers)
        .map(|w| {
            let a = (u64::from(rooms) * u64::from(w) / u64::from(workers)) as u32;
            let b = (u64::from(rooms) * u64::from(w + 1) / u64::from(workers)) as u32;
            (a, b)
        })
        .filter(|(a, b)| b > a)
        .collect()
}

/// A short id, unique enough to keep runs' rooms apart on one server.
pub fn run_id(scenario: &Scenario) -> String {
    format!("{}{:x}", &scenario.name()[..1], now_us() % 0xffff_ffff)
}

fn spawn_thread(spec: WorkerSpec) -> WorkerHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let (start, start_rx) = oneshot::channel();
    std::thread::spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("worker: no runtime: {e}");
                return;
            }
        };
        let local = tokio::task::LocalSet::new();
        if let Err(e) = local.block_on(&runtime, run_worker(spec, tx, start_rx)) {
            eprintln!("worker failed: {e:#}");
        }
    });
    WorkerHandle {
        rx,
        start,
        process: None,
    }
}

async fn spawn_process(exe: &PathBuf, spec: &WorkerSpec) -> Result<WorkerHandle> {
    let mut child = tokio::process::Command::new(exe)
        .arg("worker")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting worker {}", exe.display()))?;
    let mut stdin = child.stdin.take().context("worker stdin")?;
    let stdout = child.stdout.take().context("worker stdout")?;
    let mut line = serde_json::to_string(spec)?;
    line.push('\n');
    stdin.write_all(line.as_bytes()).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    let (start, start_rx) = oneshot::channel::<u64>();
    tokio::spawn(async move {
        if let Ok(at) = start_rx.await {
            let _ = stdin.write_all(format!("{at}\n").as_bytes()).await;
            let _ = stdin.flush().await;
        }
        // Keep stdin open until the worker is done.
        std::future::pending::<()>().await;
    });
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<WorkerMsg>(&line) {
                Ok(msg) => {
                    if tx.send(msg).is_err() {
                        break;
                    }
                }
                Err(e) => eprintln!("worker said something else ({e}): {line}"),
            }
        }
    });
    Ok(WorkerHandle {
        rx,
        start,
        process: Some(child),
    })
}

/// The `worker` command: a spec on the first line of stdin, the start time
/// on the second; messages out as JSON lines on stdout.
pub fn worker_main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let result = local.block_on(&runtime, async {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        let spec: WorkerSpec = serde_json::from_str(
            &lines
                .next_line()
                .await?
                .ok_or_else(|| anyhow!("no worker spec on stdin"))?,
        )?;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (start_tx, start_rx) = oneshot::channel();
        tokio::task::spawn_local(async move {
            if let Ok(Some(line)) = lines.next_line().await
                && let Ok(at) = line.trim().parse::<u64>()
            {
                let _ = start_tx.send(at);
            }
        });
        let printer = tokio::task::spawn_local(async move {
            let mut out = std::io::stdout().lock();
            while let Some(msg) = rx.recv().await {
                if let Ok(line) = serde_json::to_string(&msg) {
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                }
            }
        });
        let result = run_worker(spec, tx, start_rx).await;
        let _ = printer.await;
        result
    });
    // Stdin's reader is a blocking read the parent never ends (it keeps
    // stdin open until the worker is done): a runtime dropped the usual
    // way would wait for it, and a worker whose setup failed would hang
    // with its parent.
    drop(local);
    runtime.shutdown_background();
    result
}

/// Runs one scenario once.
pub async fn run(opts: &RunOptions) -> Result<RunResult> {
    let (rooms, users) = opts.scenario.shape();
    let conns = rooms * users;
    let needed = conns.div_ceil(MAX_CONNS_PER_WORKER);
    let workers = opts.workers.max(needed).max(1);
    let id = run_id(&opts.scenario);
    let rss_before = opts
        .server_pid
        .and_then(|pid| crate::sysstat::sample(Some(pid)))
        .map(|s| s.rss_bytes);
    let mut handles = Vec::new();
    for share in split(rooms, workers) {
        let spec = WorkerSpec {
            target: opts.target.clone(),
            scenario: opts.scenario.clone(),
            run_id: id.clone(),
            rooms: share,
            source_ips: opts.source_ips,
            connect_concurrency: opts.connect_concurrency,
            duration_ms: (opts.warmup + opts.duration).as_millis() as u64,
            warmup_ms: opts.warmup.as_millis() as u64,
            drain_ms: opts.drain.as_millis() as u64,
        };
        handles.push(match &opts.spawn {
            Spawn::Threads => spawn_thread(spec),
            Spawn::Processes(exe) => spawn_process(exe, &spec).await?,
        });
    }
    let workers = handles.len() as u32;

    // Setup: every worker connected and joined its clients.
    let mut counters = Counters::default();
    let mut hists = Hists::default();
    let setup_started = Instant::now();
    for handle in &mut handles {
        match handle.rx.recv().await {
            Some(WorkerMsg::Ready {
                counters: c,
                hists: h,
            }) => {
                counters.add(&c);
                hists.add(&h);
            }
            Some(other) => bail!("worker sent {other:?} before ready"),
            None => bail!("a worker failed during setup"),
        }
    }
    if opts.progress {
        eprintln!(
            "{} × {} on {}: {} clients connected and joined in {:.1} s ({} failed)",
            opts.scenario.name(),
            rooms,
            opts.target.kind.name(),
            counters.clients - counters.connect_failed - counters.join_failed,
            setup_started.elapsed().as_secs_f64(),
            counters.connect_failed + counters.join_failed,
        );
    }

    let start_us = now_us() + 300_000;
    let mut handles: Vec<WorkerHandle> = handles
        .into_iter()
        .map(|mut h| {
            let start = std::mem::replace(&mut h.start, oneshot::channel().0);
            let _ = start.send(start_us);
            h
        })
        .collect();

    let mut server = ProcWatch::new(opts.server_pid);
    let mut own = ProcWatch::new(None);
    let mut watched: Vec<(String, ProcWatch)> = opts
        .watch
        .iter()
        .map(|(name, pid)| (name.clone(), ProcWatch::new(Some(*pid))))
        .collect();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_micros(start_us.saturating_sub(now_us()))).await;
    server.sample(0.0);
    own.sample(0.0);
    for (_, w) in &mut watched {
        w.sample(0.0);
    }
    let (merged_tx, mut merged) = mpsc::unbounded_channel::<(usize, WorkerMsg)>();
    let mut processes = Vec::new();
    for (i, mut h) in handles.drain(..).enumerate() {
        let tx = merged_tx.clone();
        processes.extend(h.process.take());
        tokio::spawn(async move {
            while let Some(msg) = h.rx.recv().await {
                let _ = tx.send((i, msg));
            }
        });
    }
    drop(merged_tx);

    let mut ticks: BTreeMap<u64, (u32, Tick)> = BTreeMap::new();
    let mut timeline = Vec::new();
    let mut done = 0;
    let mut worker_cpu = 0.0;
    let duration_s = opts.duration.as_secs_f64();
    let warmup_s = opts.warmup.as_secs_f64();
    // Counters, rates and CPU cover all the traffic, warm-up included.
    let sending_s = warmup_s + duration_s;
    let mut sample_every = tokio::time::interval(Duration::from_secs(1));
    sample_every.tick().await;
    while done < workers {
        tokio::select! {
            msg = merged.recv() => {
                let Some((_, msg)) = msg else { break };
                match msg {
                    WorkerMsg::Tick(tick) => {
                        let entry = ticks.entry(tick.second).or_insert((0, Tick::default()));
                        entry.0 += 1;
                        entry.1.add(&tick);
                        entry.1.second = tick.second;
                        if entry.0 == workers {
                            let (_, tick) = ticks.remove(&tick.second).unwrap_or_default();
                            let point = TimelinePoint {
                                second: tick.second,
                                ops_sent: tick.ops_sent,
                                ops_delivered: tick.ops_delivered,
                                cursors_delivered: tick.cursors_delivered,
                                errors: tick.errors,
                                op_p50_ms: tick.op.ms(0.5),
                                op_p99_ms: tick.op.ms(0.99),
                                op_max_ms: tick.op.ms(1.0),
                                ack_p99_ms: tick.ack.ms(0.99),
                                cursor_p99_ms: tick.cursor.ms(0.99),
                            };
                            if opts.progress {
                                progress(&point, sending_s);
                            }
                            timeline.push(point);
                        }
                    }
                    WorkerMsg::Done { counters: c, hists: h, cpu_secs } => {
                        counters.add(&c);
                        // Setup counted these already.
                        counters.clients -= c.clients;
                        counters.connect_failed -= c.connect_failed;
                        counters.join_failed -= c.join_failed;
                        hists.op.add(&h.op);
                        hists.ack.add(&h.ack);
                        hists.cursor.add(&h.cursor);
                        hists.send_lag.add(&h.send_lag);
                        worker_cpu += cpu_secs;
                        done += 1;
                    }
                    WorkerMsg::Ready { .. } => {}
                }
            }
            _ = sample_every.tick() => {
                let at = t0.elapsed().as_secs_f64();
                if at <= sending_s + 0.5 {
                    server.sample(at);
                    own.sample(at);
                    for (_, w) in &mut watched {
                        w.sample(at);
                    }
                }
            }
        }
    }
    if opts.progress && std::io::stderr().is_terminal() {
        eprintln!();
    }
    if done < workers {
        bail!("{} of {workers} workers did not finish", workers - done);
    }
    for mut p in processes {
        let _ = p.wait().await;
    }
    let own = own.finish();
    let generator_cpu_pct = match opts.spawn {
        Spawn::Threads => own.cpu_pct_mean,
        Spawn::Processes(_) => own.cpu_pct_mean + worker_cpu / sending_s.max(1e-3) * 100.0,
    };
    let server = opts.server_pid.map(|_| server.finish());
    let c = &counters;
    let joined = c.clients - c.connect_failed - c.join_failed;
    Ok(RunResult {
        scenario: opts.scenario.clone(),
        target: opts.target.kind,
        ws_urls: opts.target.ws_urls.clone(),
        started_at: start_us / 1_000_000,
        duration_s,
        warmup_s,
        workers,
        rooms,
        offered_ops_per_sec: opts.scenario.offered_ops_per_sec(),
        sent_ops_per_sec: c.ops_sent as f64 / sending_s,
        delivered_ops_per_sec: c.ops_delivered as f64 / sending_s,
        delivered_cursors_per_sec: c.cursors_delivered as f64 / sending_s,
        clean: c.clean(),
        counters,
        latency: Latencies {
            connect: hists.connect.summary(),
            join: hists.join.summary(),
            op: hists.op.summary(),
            ack: hists.ack.summary(),
            cursor: hists.cursor.summary(),
            send_lag: hists.send_lag.summary(),
        },
        timeline,
        server_rss_per_client_bytes: match (rss_before, &server) {
            (Some(before), Some(s)) if joined > 0 => {
                Some((s.rss_end_bytes as f64 - before as f64) / joined as f64)
            }
            _ => None,
        },
        server_rss_before_bytes: rss_before,
        server,
        watched: watched
            .into_iter()
            .map(|(name, w)| Watched {
                name,
                stats: w.finish(),
            })
            .collect(),
        generator_cpu_pct,
    })
}

fn progress(p: &TimelinePoint, duration_s: f64) {
    let total = duration_s.ceil().max(1.0) as u64;
    let width = 30;
    let filled = (p.second.min(total) * width / total) as usize;
    // A bar redrawn in place on a terminal; one line a second in a log.
    let (start, end) = if std::io::stderr().is_terminal() {
        ("\r", "   ")
    } else {
        ("", "\n")
    };
    eprint!(
        "{start}[{}{}] {:>3}/{} s  ops {:>7}/s  delivered {:>8}/s  cursors {:>8}/s  p99 {:>7.1} ms  errors {}{end}",
        "#".repeat(filled),
        " ".repeat(width as usize - filled),
        p.second,
        total,
        p.ops_sent,
        p.ops_delivered,
        p.cursors_delivered,
        p.op_p99_ms,
        p.errors
    );
}
