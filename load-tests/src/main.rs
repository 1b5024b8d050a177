//! `collab-load`: the command line of the load generator (see the library
//! for what it measures and how).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use clap::{Args, Parser, Subcommand};

use collab_load::capacity::{self, CapacityResult, StepBy};
use collab_load::latejoin::{self, LateJoinOptions};
use collab_load::publish::{self, PublishOptions};
use collab_load::report;
use collab_load::run::{self, RunOptions, RunResult, Spawn};
use collab_load::scenario::Scenario;
use collab_load::target::{Auth, Target, TargetKind};

#[derive(Parser)]
#[command(
    about = "Drive a collab server (or a bare relay, or Centrifugo) and measure what clients see"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Common {
    /// What the URLs point at.
    #[arg(long, value_enum, default_value = "collab")]
    target: TargetKind,
    /// Base URL of the server (http:// or ws://); repeat it for the
    /// gateways of a cluster (clients are spread over them, rooms are
    /// created through the first).
    #[arg(long = "url", default_value = "http://127.0.0.1:8080")]
    urls: Vec<String>,
    /// The server's HS256 token secret: the generator mints its own tokens.
    /// Without it, collab targets get dev tokens over HTTP (slow: rate
    /// limited per address).
    #[arg(long, env = "COLLAB_LOAD_SECRET")]
    secret: Option<String>,
    /// Seconds to send and measure.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Seconds of the same traffic before the measured part: checked for
    /// loss and order like the rest and shown in the timeline, but not in
    /// the latency histograms (a freshly started server is slower in its
    /// first second).
    #[arg(long, default_value_t = 0)]
    warmup_seconds: u64,
    /// Longest wait for late deliveries after sending stops, seconds.
    #[arg(long, default_value_t = 5.0)]
    drain_seconds: f64,
    /// Worker processes (at least; one per 18,000 connections anyway).
    #[arg(long, default_value_t = 1)]
    workers: u32,
    /// Run workers as threads of this process instead of processes.
    #[arg(long)]
    threads: bool,
    /// Loopback source addresses to spread connections over (0: the
    /// system's choice).
    #[arg(long, default_value_t = 64)]
    source_ips: u32,
    /// Connections a worker opens at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// The server's process id: its CPU and memory are sampled.
    #[arg(long)]
    server_pid: Option<u32>,
    /// NAME=PID: another process to sample (repeatable), e.g. each
    /// gateway, room node, NATS and CQL server of a cluster.
    #[arg(long = "watch", value_parser = run::parse_watch)]
    watch: Vec<(String, u32)>,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a Markdown summary here (also printed).
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Write SVG plots (latency over time, capacity curve) with this path
    /// prefix.
    #[arg(long)]
    plots: Option<PathBuf>,
    /// Step the size up through these room counts (ascending) until op p99
    /// passes --p99-bound-ms or anything is lost; report the capacity.
    #[arg(long, value_delimiter = ',')]
    steps: Vec<u32>,
    /// What --steps steps: the number of rooms, or every sending rate in %
    /// of the scenario's (for scenarios whose smallest room is already too
    /// much).
    #[arg(long, value_enum, default_value = "rooms")]
    step_by: StepBy,
    #[arg(long, default_value_t = 50.0)]
    p99_bound_ms: f64,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

#[derive(Subcommand)]
enum Command {
    /// N boards × users; one user per board draws, the others watch.
    Boards {
        #[arg(long, default_value_t = 100)]
        boards: u32,
        #[arg(long, default_value_t = 10)]
        users: u32,
        /// stroke ops per second of the drawer (16 points each).
        #[arg(long, default_value_t = 10.0)]
        ops_per_sec: f64,
        #[arg(long, default_value_t = 20.0)]
        cursor_hz: f64,
        #[command(flatten)]
        common: Common,
    },
    /// Rooms × users; everyone moves a cursor and ends a stroke now and then.
    Classroom {
        #[arg(long, default_value_t = 20)]
        rooms: u32,
        #[arg(long, default_value_t = 50)]
        users: u32,
        #[arg(long, default_value_t = 20.0)]
        cursor_hz: f64,
        #[arg(long, default_value_t = 5.0)]
        stroke_secs: f64,
        #[command(flatten)]
        common: Common,
    },
    /// Channels × users, messages per second per channel.
    Chat {
        #[arg(long, default_value_t = 1000)]
        channels: u32,
        #[arg(long, default_value_t = 20)]
        users: u32,
        #[arg(long, default_value_t = 1.0)]
        messages_per_sec: f64,
        #[command(flatten)]
        common: Common,
    },
    /// Idle connections in rooms of `users`, held for --seconds.
    Idle {
        #[arg(long, default_value_t = 1000)]
        connections: u32,
        #[arg(long, default_value_t = 10)]
        users: u32,
        #[command(flatten)]
        common: Common,
    },
    /// A board with many ops, then newcomers timed to `joined` and to full
    /// state (collab only).
    LateJoin {
        #[arg(long, default_value_t = 100_000)]
        ops: u64,
        /// Users filling the board at once. Every writer also receives
        /// every op of the board, all in this one process: with 50 writers
        /// and a server that commits 4,000+ ops/s, the generator read
        /// 200,000+ frames/s, fell behind, and the server closed a writer
        /// as too slow (4008). 10 writers at 180 ops/s fill 100,000 ops in
        /// about a minute.
        #[arg(long, default_value_t = 10)]
        writers: u32,
        /// Ops per second per filling user.
        #[arg(long, default_value_t = 180.0)]
        writer_rate: f64,
        #[arg(long, default_value_t = 5)]
        joiners: u32,
        #[command(flatten)]
        common: Common,
    },
    /// Ops posted over HTTP (`POST /v1/rooms/{id}/ops`) by service users,
    /// each waiting for its answer before the next, for --seconds; then
    /// every room's head is checked against the ops acked (collab only,
    /// needs --secret).
    Publish {
        /// Rooms the ops go to, round robin.
        #[arg(long, default_value_t = 1)]
        rooms: u32,
        /// Requests in flight at once, each from its own service user.
        #[arg(long, default_value_t = 32)]
        senders: u32,
        /// Ops per request (more than 1: a list).
        #[arg(long, default_value_t = 1)]
        batch: u32,
        #[command(flatten)]
        common: Common,
    },
    /// Run the bare relay: every text frame to every member of its room.
    Relay {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
        /// Runtime threads (default: the CPUs this process may use).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Draw the capacity curves of several `--steps` runs (their JSON
    /// results) into one SVG.
    Plot {
        #[arg(long)]
        title: String,
        #[arg(long)]
        out: PathBuf,
        /// JSON results of capacity runs, one curve each (named by target).
        results: Vec<PathBuf>,
    },
    /// Sum up repeated, interleaved capacity runs (their JSON results, as
    /// `scripts/bench-load.sh rounds` makes them): per target and size,
    /// how many rounds passed; a size passes when most rounds did, and the
    /// capacity is the largest size that passed with every size below it.
    Rounds {
        /// The summary as Markdown (default: standard output).
        #[arg(long)]
        markdown: Option<PathBuf>,
        #[arg(long)]
        json: Option<PathBuf>,
        /// Each target's median round per size as a capacity curve (SVG).
        #[arg(long)]
        plot: Option<PathBuf>,
        #[arg(long, default_value = "op delivery p99 by size, median round")]
        title: String,
        /// JSON results of capacity runs, any number of rounds each.
        #[arg(required = true)]
        results: Vec<PathBuf>,
    },
    /// (internal) one worker process: spec and start time on stdin.
    #[command(hide = true)]
    Worker,
}

fn target(c: &Common) -> Result<Target> {
    let bases: Vec<String> = c
        .urls
        .iter()
        .map(|u| {
            u.trim_end_matches('/')
                .replacen("https://", "wss://", 1)
                .replacen("http://", "ws://", 1)
        })
        .collect();
    for base in &bases {
        let url = reqwest::Url::parse(base).with_context(|| format!("--url {base}"))?;
        if !matches!(url.scheme(), "ws" | "wss") || url.host().is_none() {
            bail!("--url {base}: not an http(s) or ws(s) URL with a host");
        }
    }
    let ws_urls = bases
        .iter()
        .map(|b| match c.target {
            TargetKind::Collab if !b.ends_with("/v1/ws") => format!("{b}/v1/ws"),
            TargetKind::Centrifugo if !b.ends_with("/connection/websocket") => {
                format!("{b}/connection/websocket")
            }
            _ => b.clone(),
        })
        .collect();
    let http_url = bases.first().map(|b| {
        b.trim_end_matches("/v1/ws")
            .replacen("wss://", "https://", 1)
            .replacen("ws://", "http://", 1)
    });
    let auth = match (&c.secret, c.target) {
        (_, TargetKind::Relay) => Auth::None,
        (Some(secret), _) => Auth::Secret(secret.clone()),
        (None, TargetKind::Collab) => Auth::DevToken,
        (None, TargetKind::Centrifugo) => bail!("centrifugo needs --secret"),
    };
    Ok(Target {
        kind: c.target,
        ws_urls,
        http_url,
        auth,
    })
}

fn write(path: &Option<PathBuf>, suffix: &str, content: &str) -> Result<()> {
    if let Some(path) = path {
        let mut p = path.clone().into_os_string();
        p.push(suffix);
        std::fs::write(&p, content).with_context(|| format!("writing {p:?}"))?;
    }
    Ok(())
}

async fn scenario(scenario: Scenario, c: Common) -> Result<()> {
    let opts = RunOptions {
        target: target(&c)?,
        scenario,
        duration: Duration::from_secs_f64(c.seconds),
        warmup: Duration::from_secs(c.warmup_seconds),
        drain: Duration::from_secs_f64(c.drain_seconds),
        workers: c.workers,
        spawn: if c.threads {
            Spawn::Threads
        } else {
            Spawn::Processes(std::env::current_exe()?)
        },
        source_ips: c.source_ips,
        connect_concurrency: c.connect_concurrency,
        server_pid: c.server_pid,
        watch: c.watch.clone(),
        progress: !c.quiet,
    };
    if c.steps.is_empty() {
        let result: RunResult = run::run(&opts).await?;
        let md = report::run_markdown(&result);
        println!("{md}");
        write(&c.json, "", &serde_json::to_string_pretty(&result)?)?;
        write(&c.markdown, "", &md)?;
        write(&c.plots, "-timeline.svg", &report::timeline_svg(&result))?;
    } else {
        let result: CapacityResult =
            capacity::search(&opts, c.step_by, &c.steps, c.p99_bound_ms).await?;
        let mut md = report::capacity_markdown(&result);
        for step in &result.steps {
            md.push('\n');
            md.push_str(&report::run_markdown(&step.result));
        }
        println!("{md}");
        write(&c.json, "", &serde_json::to_string_pretty(&result)?)?;
        write(&c.markdown, "", &md)?;
        let title = format!(
            "{} on {}: p99 by size",
            opts.scenario.name(),
            opts.target.kind.name()
        );
        write(
            &c.plots,
            "-capacity.svg",
            &report::capacity_svg(&title, &[(opts.target.kind.name(), &result)]),
        )?;
        if let Some(last) = result.steps.iter().rev().find(|s| s.passed) {
            write(
                &c.plots,
                "-timeline.svg",
                &report::timeline_svg(&last.result),
            )?;
        }
    }
    Ok(())
}

fn read_capacity(path: &std::path::Path) -> Result<CapacityResult> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not a capacity result", path.display()))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Worker => run::worker_main(),
        Command::Plot {
            title,
            out,
            results,
        } => {
            let mut curves = Vec::new();
            for path in &results {
                let result = read_capacity(path)?;
                let name = result
                    .steps
                    .first()
                    .map_or("?", |s| s.result.target.name())
                    .to_owned();
                curves.push((name, result));
            }
            let refs: Vec<(&str, &CapacityResult)> =
                curves.iter().map(|(n, c)| (n.as_str(), c)).collect();
            std::fs::write(&out, report::capacity_svg(&title, &refs))?;
            Ok(())
        }
        Command::Rounds {
            markdown,
            json,
            plot,
            title,
            results,
        } => {
            let results = results
                .iter()
                .map(|p| read_capacity(p))
                .collect::<Result<Vec<_>>>()?;
            let summary = collab_load::rounds::summarize(&results);
            match markdown {
                Some(path) => std::fs::write(&path, summary.markdown())
                    .with_context(|| format!("writing {}", path.display()))?,
                None => print!("{}", summary.markdown()),
            }
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_vec_pretty(&summary)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if let Some(path) = plot {
                let curves = summary.median_curves();
                let refs: Vec<(&str, &CapacityResult)> =
                    curves.iter().map(|(n, c)| (*n, c)).collect();
                std::fs::write(&path, report::capacity_svg(&title, &refs))
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
        Command::Relay { listen, threads } => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            if let Some(threads) = threads {
                builder.worker_threads(threads.max(1));
            }
            builder
                .enable_all()
                .build()?
                .block_on(collab_load::relay::run(listen))
        }
        command => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                match command {
                    Command::Boards {
                        boards,
                        users,
                        ops_per_sec,
                        cursor_hz,
                        common,
                    } => {
                        let s = Scenario::Boards {
                            boards,
                            users,
                            ops_per_sec,
                            cursor_hz,
                        };
                        scenario(s, common).await
                    }
                    Command::Classroom {
                        rooms,
                        users,
                        cursor_hz,
                        stroke_secs,
                        common,
                    } => {
                        let s = Scenario::Classroom {
                            rooms,
                            users,
                            cursor_hz,
                            stroke_secs,
                        };
                        scenario(s, common).await
                    }
                    Command::Chat {
                        channels,
                        users,
                        messages_per_sec,
                        common,
                    } => {
                        let s = Scenario::Chat {
                            channels,
                            users,
                            messages_per_sec,
                        };
                        scenario(s, common).await
                    }
                    Command::Idle {
                        connections,
                        users,
                        common,
                    } => scenario(Scenario::Idle { connections, users }, common).await,
                    Command::LateJoin {
                        ops,
                        writers,
                        writer_rate,
                        joiners,
                        common,
                    } => {
                        let opts = LateJoinOptions {
                            target: target(&common)?,
                            ops,
                            writers,
                            writer_rate,
                            joiners,
                            source_ips: common.source_ips,
                        };
                        let result = latejoin::run(&opts).await?;
                        let md = report::latejoin_markdown(&result);
                        println!("{md}");
                        write(&common.json, "", &serde_json::to_string_pretty(&result)?)?;
                        write(&common.markdown, "", &md)?;
                        Ok(())
                    }
                    Command::Publish {
                        rooms,
                        senders,
                        batch,
                        common,
                    } => {
                        ensure!(
                            (1..=100).contains(&batch),
                            "--batch: 1 to 100 ops per request"
                        );
                        let opts = PublishOptions {
                            target: target(&common)?,
                            rooms,
                            senders,
                            batch,
                            seconds: common.seconds,
                        };
                        let result = publish::run(&opts).await?;
                        let md = publish::markdown(&result);
                        println!("{md}");
                        write(&common.json, "", &serde_json::to_string_pretty(&result)?)?;
                        write(&common.markdown, "", &md)?;
                        Ok(())
                    }
                    Command::Relay { .. }
                    | Command::Worker
                    | Command::Plot { .. }
                    | Command::Rounds { .. } => Ok(()),
                }
            })
        }
    }
}
