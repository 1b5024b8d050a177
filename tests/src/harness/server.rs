//! The `collab serve` child process.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use collab::serve::{LISTENING_PREFIX, METRICS_LISTENING_PREFIX};
use rustix::process::{Pid, Signal, kill_process};
use tempfile::TempDir;

use super::{DEADLINE, HarnessError};

/// Log lines kept for diagnostics and assertions.
const LOG_TAIL: usize = 500;
/// Prefix of the server's settings in the environment.
const ENV_PREFIX: &str = "COLLAB_";

/// How to start the server. Defaults: dev mode (no secret), a fresh
/// temporary data dir, `--listen 127.0.0.1:0`.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    jwt_secret: Option<String>,
    data_dir: Option<PathBuf>,
    env: Vec<(String, String)>,
    args: Vec<String>,
}

impl ServerOptions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs with this secret (dev mode off), given as `COLLAB_JWT_SECRET`.
    pub fn jwt_secret(mut self, secret: impl Into<String>) -> Self {
        self.jwt_secret = Some(secret.into());
        self
    }

    /// Uses `dir` as the data dir (it is not deleted afterwards) instead of
    /// a temporary one.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Sets an environment variable of the server, e.g.
    /// `COLLAB_ROOMS__SNAPSHOT_EVERY_OPS`.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Stores rooms in `url` (`--store`) instead of the embedded store.
    pub fn store(self, url: impl Into<String>) -> Self {
        self.arg("--store").arg(url)
    }

    /// Adds an argument after `collab serve`.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }
}

/// A running `collab serve`; killed (SIGKILL) when dropped.
pub struct CollabServer {
    options: ServerOptions,
    data_dir: PathBuf,
    // Dropped after `process` is killed (fields drop after `Drop::drop`).
    _temp_dir: Option<TempDir>,
    process: Option<Child>,
    addr: SocketAddr,
    logs: Arc<Mutex<VecDeque<String>>>,
    http: reqwest::Client,
}

impl CollabServer {
    /// Starts `collab serve` and waits (at most [`DEADLINE`]) until it
    /// listens.
    pub fn start(options: ServerOptions) -> Result<CollabServer, HarnessError> {
        let (temp_dir, data_dir) = match &options.data_dir {
            Some(dir) => (None, dir.clone()),
            None => {
                let temp = tempfile::Builder::new().prefix("collab-test-").tempdir()?;
                let dir = temp.path().join("data");
                (Some(temp), dir)
            }
        };
        let logs = Arc::new(Mutex::new(VecDeque::new()));
        let (process, addr) = spawn(&options, &data_dir, "127.0.0.1:0", &logs)?;
        Ok(CollabServer {
            options,
            data_dir,
            _temp_dir: temp_dir,
            process: Some(process),
            addr,
            logs,
            http: reqwest::Client::new(),
        })
    }

    /// The address it listens on (after a restart: the new one).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://ADDR` of the metrics listener (`--metrics-listen`), if it
    /// has one: the latest start's, which printed it before its address.
    pub fn metrics_url(&self) -> Option<String> {
        lock(&self.logs).iter().rev().find_map(|line| {
            let addr = line.strip_prefix(METRICS_LISTENING_PREFIX)?;
            Some(format!("http://{}", addr.trim()))
        })
    }

    /// `ws://ADDR/v1/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A client for the HTTP API.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The `/metrics` page of the main listener (it must answer 200).
    pub async fn metrics_page(&self) -> String {
        let url = format!("{}/metrics", self.http_url());
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert_eq!(response.status().as_u16(), 200, "GET {url}");
        response.text().await.expect("the metrics page")
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Child::id)
    }

    /// The last log lines the server wrote (stderr), oldest first, across
    /// restarts.
    pub fn logs(&self) -> Vec<String> {
        lock(&self.logs).iter().cloned().collect()
    }

    /// A token from the dev token endpoint (`POST /v1/dev/token`): write
    /// access to every room. Dev mode only.
    pub async fn dev_token(&self, user: &str) -> Result<String, HarnessError> {
        self.dev_token_named(user, None).await
    }

    /// [`dev_token`](Self::dev_token) with a display name.
    pub async fn dev_token_named(
        &self,
        user: &str,
        name: Option<&str>,
    ) -> Result<String, HarnessError> {
        let mut body = serde_json::json!({ "user": user });
        if let Some(name) = name {
            body["name"] = name.into();
        }
        let response = self
            .http
            .post(format!("{}/v1/dev/token", self.http_url()))
            .json(&body)
            .send()
            .await
            .map_err(|e| HarnessError::Http(e.to_string()))?;
        let status = response.status();
        let body: serde_json::Value = response
            .json()
            .await
            .map_err(|e| HarnessError::Http(format!("dev token answer ({status}): {e}")))?;
        match body.get("token").and_then(|t| t.as_str()) {
            Some(token) if status.is_success() => Ok(token.to_owned()),
            _ => Err(HarnessError::Http(format!("dev token: {status} {body}"))),
        }
    }

    /// `POST /v1/rooms` with `body` (e.g. `{"kind": "board", "id": "r1"}`)
    /// as the holder of `token`: the answer of a `201 Created`, an error
    /// with the status and body otherwise.
    pub async fn create_room(
        &self,
        token: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, HarnessError> {
        let response = self
            .http
            .post(format!("{}/v1/rooms", self.http_url()))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .map_err(|e| HarnessError::Http(e.to_string()))?;
        let status = response.status();
        let answer: serde_json::Value = response
            .json()
            .await
            .map_err(|e| HarnessError::Http(format!("create room answer ({status}): {e}")))?;
        if status.as_u16() == 201 {
            Ok(answer)
        } else {
            Err(HarnessError::Http(format!(
                "create room {body}: {status} {answer}"
            )))
        }
    }

    /// `GET PATH` (e.g. `/v1/rooms/r1`) as the holder of `token`: the
    /// status and the JSON body (`Null` when the body is not JSON).
    pub async fn get_json(
        &self,
        token: &str,
        path: &str,
    ) -> Result<(u16, serde_json::Value), HarnessError> {
        let response = self
            .http
            .get(format!("{}{path}", self.http_url()))
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| HarnessError::Http(e.to_string()))?;
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(serde_json::Value::Null);
        Ok((status, body))
    }

    /// A token minted by `collab token` with the server's secret (the
    /// configured one, or the dev secret in its data dir). `extra` are
    /// more arguments, e.g. `["--room", "r1=read", "--ttl-secs", "5"]`.
    pub fn mint_token(&self, user: &str, extra: &[&str]) -> Result<String, HarnessError> {
        let mut cmd = Command::new(collab_binary()?);
        cmd.arg("token").arg("--user").arg(user);
        clear_collab_env(&mut cmd);
        match &self.options.jwt_secret {
            Some(secret) => cmd.env("COLLAB_JWT_SECRET", secret),
            None => cmd.arg("--data-dir").arg(&self.data_dir),
        };
        let output = cmd.args(extra).stdin(Stdio::null()).output()?;
        if !output.status.success() {
            return Err(HarnessError::Http(format!(
                "collab token failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.process
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Sends SIGTERM (graceful drain) without waiting; see
    /// [`wait_exit`](Self::wait_exit).
    pub fn signal_terminate(&self) -> Result<(), HarnessError> {
        let child = self
            .process
            .as_ref()
            .ok_or_else(|| HarnessError::Stop("not running".into()))?;
        kill_process(Pid::from_child(child), Signal::TERM)
            .map_err(|e| HarnessError::Stop(format!("cannot send SIGTERM: {e}")))
    }

    /// Waits at most `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, HarnessError> {
        let child = self
            .process
            .as_mut()
            .ok_or_else(|| HarnessError::Stop("not running".into()))?;
        let status = wait_until(child, Instant::now() + timeout)?
            .ok_or_else(|| HarnessError::Stop(format!("still running after {timeout:?}")))?;
        self.process = None;
        Ok(status)
    }

    /// SIGTERM, then waits (at most [`DEADLINE`]) for the graceful exit.
    pub fn terminate(&mut self) -> Result<ExitStatus, HarnessError> {
        self.signal_terminate()?;
        self.wait_exit(DEADLINE)
    }

    /// SIGKILL (no drain, no snapshot: a crash), and reaps it.
    pub fn kill(&mut self) -> Result<ExitStatus, HarnessError> {
        let mut child = self
            .process
            .take()
            .ok_or_else(|| HarnessError::Stop("not running".into()))?;
        // `Child::kill` is SIGKILL on unix.
        child.kill()?;
        Ok(child.wait()?)
    }

    /// Starts the server again on the same data dir (terminating it first
    /// if it still runs). It tries to keep its address, so clients can
    /// reconnect to the same URL; if that port was taken meanwhile it takes
    /// a new one: read [`addr`](Self::addr) again.
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        if self.is_running() {
            self.terminate()?;
        }
        self.process = None;
        let same = spawn(
            &self.options,
            &self.data_dir,
            &self.addr.to_string(),
            &self.logs,
        );
        let (process, addr) = match same {
            Ok(started) => started,
            Err(_) => spawn(&self.options, &self.data_dir, "127.0.0.1:0", &self.logs)?,
        };
        self.process = Some(process);
        self.addr = addr;
        // The pooled connections were to the old process: a request sent
        // on one of them would fail.
        self.http = reqwest::Client::new();
        Ok(())
    }
}

impl Drop for CollabServer {
    fn drop(&mut self) {
        // A test that failed midway must not leave a server running.
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `collab serve --listen LISTEN` and reads its stdout until the
/// `listening on` line.
fn spawn(
    options: &ServerOptions,
    data_dir: &Path,
    listen: &str,
    logs: &Arc<Mutex<VecDeque<String>>>,
) -> Result<(Child, SocketAddr), HarnessError> {
    let mut cmd = Command::new(collab_binary()?);
    cmd.arg("serve")
        .arg("--listen")
        .arg(listen)
        .arg("--data-dir")
        .arg(data_dir)
        .args(&options.args);
    clear_collab_env(&mut cmd);
    if let Some(secret) = &options.jwt_secret {
        cmd.env("COLLAB_JWT_SECRET", secret);
    }
    cmd.envs(options.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let pid = child.id();

    let (lines_tx, lines) = mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        forward(stdout, pid, "stdout", logs.clone(), Some(lines_tx));
    }
    if let Some(stderr) = child.stderr.take() {
        forward(stderr, pid, "log", logs.clone(), None);
    }

    let deadline = Instant::now() + DEADLINE;
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(wait) {
            Ok(line) => {
                if let Some(addr) = line.strip_prefix(LISTENING_PREFIX) {
                    let addr = addr.trim().parse::<SocketAddr>().map_err(|e| {
                        HarnessError::Start(format!("bad address in {line:?}: {e}"))
                    })?;
                    return Ok((child, addr));
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HarnessError::Start(format!(
                    "no `listening on` line within {DEADLINE:?}; log:\n{}",
                    tail(logs, 30)
                )));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // Stdout closed: the process is exiting.
                let status = wait_until(&mut child, Instant::now() + DEADLINE)?;
                if status.is_none() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                return Err(HarnessError::Start(format!(
                    "exited ({status:?}) before listening; log:\n{}",
                    tail(logs, 30)
                )));
            }
        }
    }
}

/// A developer's or CI's own `COLLAB_*` settings must not change a test's
/// server (the server refuses unknown ones, too).
pub(super) fn clear_collab_env(cmd: &mut Command) {
    let ours: Vec<OsString> = std::env::vars_os()
        .map(|(name, _)| name)
        .filter(|name| name.to_str().is_some_and(|n| n.starts_with(ENV_PREFIX)))
        .collect();
    for name in ours {
        cmd.env_remove(name);
    }
}

/// Reads `pipe` line by line on a thread: each line goes to the test's
/// output (captured by the test runner, shown when a test fails), to the
/// log tail, and to `lines` if given. Reading goes on to EOF even when
/// nobody listens any more, so the server never blocks on a full pipe.
fn forward(
    pipe: impl Read + Send + 'static,
    pid: u32,
    what: &'static str,
    logs: Arc<Mutex<VecDeque<String>>>,
    lines: Option<mpsc::Sender<String>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            eprintln!("[collab {pid} {what}] {line}");
            {
                let mut logs = lock(&logs);
                if logs.len() == LOG_TAIL {
                    logs.pop_front();
                }
                logs.push_back(line.clone());
            }
            if let Some(lines) = &lines {
                let _ = lines.send(line);
            }
        }
    });
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding it cannot leave a log tail inconsistent.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn tail(logs: &Mutex<VecDeque<String>>, n: usize) -> String {
    let logs = lock(logs);
    let skip = logs.len().saturating_sub(n);
    logs.iter()
        .skip(skip)
        .cloned()
        .collect::<Vec<_>>()
        .join("\n")
}

/// Polls for the child's exit until `deadline`; `None` if it still runs.
fn wait_until(child: &mut Child, deadline: Instant) -> Result<Option<ExitStatus>, HarnessError> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10)); // poll interval
    }
}

// === the binary ===

/// The `collab` binary: `$COLLAB_BIN`, or `target/<profile>/collab` beside
/// this test executable (`target/<profile>/deps/<test>`), built first with
/// `cargo build -p collab` in the same profile and target dir, once per
/// test process.
pub fn collab_binary() -> Result<PathBuf, HarnessError> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            if let Some(path) = std::env::var_os("COLLAB_BIN") {
                return Ok(PathBuf::from(path));
            }
            build_collab()
        })
        .clone()
        .map_err(HarnessError::Binary)
}

fn build_collab() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("no current exe: {e}"))?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("{} is not in target/<profile>/deps", exe.display()))?;
    let target_dir = profile_dir
        .parent()
        .ok_or_else(|| format!("no target dir above {}", profile_dir.display()))?;
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("bad profile dir {}", profile_dir.display()))?;
    let binary = profile_dir.join("collab");

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "-p", "collab", "--bin", "collab"])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir);
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    // Cargo describes this test's own package in the environment; build
    // scripts that watch those variables (ring's does) would rebuild their
    // crates, and everything above them, for no reason.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let package_var = name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_EXE_")
            || matches!(
                name.as_ref(),
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
            );
        if package_var {
            cmd.env_remove(name.as_ref());
        }
    }
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "cargo build -p collab failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    if binary.is_file() {
        Ok(binary)
    } else {
        Err(format!("built, but {} does not exist", binary.display()))
    }
}
