//! A real Prometheus server for the monitoring tests.
//!
//! [`Prometheus`] runs the `prometheus` binary named by
//! `$COLLAB_PROMETHEUS` (Debian's package; `scripts/monitoring-check.sh
//! install` prints its path and `scripts/test.sh` sets the variable) on a
//! free loopback port, with its configuration, its storage and its log in a
//! temporary directory. It scrapes the given jobs and evaluates the given
//! rule files at the interval it is told, and is killed when dropped (the
//! tail of its log is printed first if the test is failing). Its HTTP API
//! answers through typed helpers: targets, rules, alerts and instant
//! queries.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::HarnessError;

/// The environment variable naming the `prometheus` binary.
pub const PROMETHEUS_ENV: &str = "COLLAB_PROMETHEUS";
/// How long Prometheus may take to answer ready.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// Attempts at a free port: another process may take the one picked
/// between its probe and Prometheus's bind.
const PORT_ATTEMPTS: usize = 3;
/// Log lines printed when a test fails.
const LOG_TAIL_ON_FAILURE: usize = 40;

/// A scrape job: its name (the `job` label) and its targets' `host:port`.
#[derive(Debug, Clone)]
pub struct ScrapeJob {
    pub name: String,
    pub targets: Vec<SocketAddr>,
}

/// What to scrape and evaluate, and how often.
#[derive(Debug, Clone)]
pub struct PrometheusOptions {
    interval: Duration,
    jobs: Vec<ScrapeJob>,
    rule_files: Vec<PathBuf>,
}

impl PrometheusOptions {
    /// Scrapes and evaluates rules every `interval`.
    pub fn new(interval: Duration) -> Self {
        PrometheusOptions {
            interval,
            jobs: Vec::new(),
            rule_files: Vec::new(),
        }
    }

    /// Scrapes `targets`' `/metrics` as job `name`.
    pub fn job(mut self, name: &str, targets: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.jobs.push(ScrapeJob {
            name: name.to_owned(),
            targets: targets.into_iter().collect(),
        });
        self
    }

    /// Evaluates the rules of `path` (a Prometheus rules file).
    pub fn rule_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.rule_files.push(path.into());
        self
    }

    /// `prometheus.yml`, written as JSON (which YAML reads).
    fn config(&self) -> Value {
        let interval = format!("{}ms", self.interval.as_millis());
        let jobs: Vec<Value> = self
            .jobs
            .iter()
            .map(|job| {
                let targets: Vec<String> = job.targets.iter().map(|a| a.to_string()).collect();
                json!({"job_name": job.name, "static_configs": [{"targets": targets}]})
            })
            .collect();
        json!({
            "global": {
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "evaluation_interval": interval,
            },
            "rule_files": self.rule_files,
            "scrape_configs": jobs,
        })
    }
}

/// A scrape target as `/api/v1/targets` reports it.
#[derive(Debug, Clone)]
pub struct Target {
    pub job: String,
    pub instance: String,
    /// `up`, `down` or `unknown` (not scraped yet).
    pub health: String,
    pub last_error: String,
}

/// A rule as `/api/v1/rules` reports it.
#[derive(Debug, Clone, Deserialize)]
pub struct Rule {
    pub name: String,
    /// `alerting` or `recording`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `ok`, `err` or `unknown` (not evaluated yet).
    pub health: String,
    #[serde(default, rename = "lastError")]
    pub last_error: String,
    /// An alerting rule's `for`, in seconds.
    #[serde(default)]
    pub duration: f64,
}

/// A rule group as `/api/v1/rules` reports it.
#[derive(Debug, Clone, Deserialize)]
pub struct RuleGroup {
    pub name: String,
    pub rules: Vec<Rule>,
    /// When the group was last evaluated (RFC 3339).
    #[serde(rename = "lastEvaluation")]
    pub last_evaluation: String,
}

/// A pending or firing alert as `/api/v1/alerts` reports it.
#[derive(Debug, Clone, Deserialize)]
pub struct Alert {
    pub labels: std::collections::BTreeMap<String, String>,
    /// `pending` or `firing`.
    pub state: String,
    #[serde(rename = "activeAt")]
    pub active_at: String,
    pub value: String,
}

impl Alert {
    pub fn name(&self) -> &str {
        self.labels.get("alertname").map_or("", String::as_str)
    }
}

/// A running Prometheus; killed when dropped.
pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    http: reqwest::Client,
    log_path: PathBuf,
    // Last: removed once the process is gone.
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// The binary `$COLLAB_PROMETHEUS` names, if set.
    pub fn binary() -> Option<PathBuf> {
        std::env::var_os(PROMETHEUS_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    }

    /// Starts `binary` with `options` and waits until it answers ready.
    pub async fn start(binary: &Path, options: &PrometheusOptions) -> Result<Self, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix("collab-prometheus-")
            .tempdir()?;
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, options.config().to_string())?;
        let log_path = dir.path().join("prometheus.log");
        let http = reqwest::Client::new();
        let mut last_error = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let addr = free_port()?;
            let log = File::create(&log_path)?;
            let mut child = Command::new(binary)
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .map_err(|e| {
                    HarnessError::Start(format!("cannot run {}: {e}", binary.display()))
                })?;
            match wait_ready(&http, &mut child, addr).await {
                Ok(()) => {
                    return Ok(Prometheus {
                        child,
                        addr,
                        http,
                        log_path,
                        dir,
                    });
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_error = format!("{e}; log:\n{}", tail(&log_path, LOG_TAIL_ON_FAILURE));
                }
            }
        }
        Err(HarnessError::Start(format!(
            "prometheus did not start: {last_error}"
        )))
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log_path, n)
    }

    /// Its temporary directory: configuration, storage and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `GET /api/v1/PATH` with `query`: the `data` of a `success` answer.
    pub async fn api(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, HarnessError> {
        let url = reqwest::Url::parse_with_params(&format!("{}/api/v1/{path}", self.url()), query)
            .map_err(|e| HarnessError::Http(format!("api/v1/{path}: {e}")))?;
        let response = self
            .http
            .get(url.clone())
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| HarnessError::Http(format!("{url}: {e}")))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .map_err(|e| HarnessError::Http(format!("{url} ({status}): {e}")))?;
        if body["status"] != "success" {
            return Err(HarnessError::Http(format!("{url} ({status}): {body}")));
        }
        Ok(body["data"].clone())
    }

    /// Every scrape target.
    pub async fn targets(&self) -> Result<Vec<Target>, HarnessError> {
        let data = self.api("targets", &[("state", "active")]).await?;
        let targets = data["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        Ok(targets
            .iter()
            .map(|t| Target {
                job: text(&t["labels"]["job"]),
                instance: text(&t["labels"]["instance"]),
                health: text(&t["health"]),
                last_error: text(&t["lastError"]),
            })
            .collect())
    }

    /// Every rule group with the state of its rules.
    pub async fn rule_groups(&self) -> Result<Vec<RuleGroup>, HarnessError> {
        let data = self.api("rules", &[]).await?;
        serde_json::from_value(data["groups"].clone())
            .map_err(|e| HarnessError::Http(format!("rule groups: {e}: {data}")))
    }

    /// Every pending or firing alert.
    pub async fn alerts(&self) -> Result<Vec<Alert>, HarnessError> {
        let data = self.api("alerts", &[]).await?;
        serde_json::from_value(data["alerts"].clone())
            .map_err(|e| HarnessError::Http(format!("alerts: {e}: {data}")))
    }

    /// An instant query's result vector: each sample's labels and value.
    pub async fn query(&self, promql: &str) -> Result<Vec<(Value, f64)>, HarnessError> {
        let data = self.api("query", &[("query", promql)]).await?;
        if data["resultType"] != "vector" {
            return Err(HarnessError::Http(format!(
                "{promql}: not a vector: {data}"
            )));
        }
        let samples = data["result"].as_array().cloned().unwrap_or_default();
        Ok(samples
            .iter()
            .map(|s| {
                let value = s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN);
                (s["metric"].clone(), value)
            })
            .collect())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- last {LOG_TAIL_ON_FAILURE} lines of prometheus's log ---\n{}",
                self.log_tail(LOG_TAIL_ON_FAILURE)
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `/-/ready` until it answers 200; fails if the process exits.
async fn wait_ready(
    http: &reqwest::Client,
    child: &mut Child,
    addr: SocketAddr,
) -> Result<(), String> {
    let url = format!("http://{addr}/-/ready");
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("prometheus exited ({status})"));
        }
        let answer = http.get(&url).timeout(Duration::from_secs(2)).send().await;
        if matches!(&answer, Ok(r) if r.status().is_success()) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("{url} not ready after {START_DEADLINE:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await; // poll interval
    }
}

/// The last `n` lines of the file at `path`.
fn tail(path: &Path, n: usize) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A loopback address whose port was free a moment ago.
fn free_port() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}
