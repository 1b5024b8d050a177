//! A real redis-server for tests: bound to loopback on a free port, its
//! files in a temporary directory, no persistence unless asked, killed when
//! dropped; it can be killed and started again on the same port, as an
//! outage would.
//!
//! The binary is the one `scripts/redis-server.sh install` reports, named
//! by `COLLAB_REDIS_SERVER` (`scripts/test.sh` sets it); else a
//! `redis-server` on `PATH`. Without either, starting a server panics with
//! a message that says how to install one: a test that needs Redis never
//! passes by skipping.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable naming the redis-server binary.
pub const BINARY_ENV: &str = "COLLAB_REDIS_SERVER";

/// The oldest Redis whose scripts may read the clock and then write.
const MIN_MAJOR: u64 = 5;

/// A running redis-server, killed on drop.
pub struct RedisServer {
    binary: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    persistent: bool,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server that keeps nothing on disk: a restart comes back
    /// empty, as a cache restarted without persistence does.
    pub fn start() -> RedisServer {
        RedisServer::start_with(false)
    }

    /// Starts a server with an append-only file in its directory, fsynced
    /// on every write: a restart comes back with everything.
    pub fn start_persistent() -> RedisServer {
        RedisServer::start_with(true)
    }

    fn start_with(persistent: bool) -> RedisServer {
        let binary = binary();
        let dir = tempfile::Builder::new()
            .prefix("collab-redis-")
            .tempdir()
            .expect("a temporary directory for redis-server");
        let mut server = RedisServer {
            binary,
            dir,
            port: 0,
            persistent,
            child: None,
        };
        // A free port may be taken by someone else before the server binds
        // it: try a few.
        for _ in 0..5 {
            server.port = free_port();
            if server.try_spawn() {
                return server;
            }
        }
        panic!(
            "redis-server did not start on any of 5 ports{}",
            server.log_tail()
        );
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's working directory (log, append-only file).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the server process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (killing it first if it
    /// runs); returns once it answers.
    pub fn restart(&mut self) {
        self.kill();
        // The port was ours a moment ago; give a client's lingering
        // connection attempt a few tries to let go of it.
        for _ in 0..20 {
            if self.try_spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100)); // retry interval
        }
        panic!(
            "redis-server did not start again on port {}{}",
            self.port,
            self.log_tail()
        );
    }

    /// Spawns the server on `self.port`; whether it answered PING within
    /// 10 s (false: it exited, e.g. because the port was taken).
    fn try_spawn(&mut self) -> bool {
        let dir = self.dir.path();
        let mut command = Command::new(&self.binary);
        command
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(dir.join("redis-server.log"))
            .args(["--daemonize", "no", "--save", ""]);
        if self.persistent {
            command.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.binary.display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            if pongs(addr) {
                return true;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() {
                self.child = None;
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server not answering on {addr} after 10 s{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(10)); // poll interval
        }
    }

    fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("redis-server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        format!("; its log ends:\n{tail}")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Whether a Redis server on `addr` answers PING.
fn pongs(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}

/// The redis-server binary to run, checked to be recent enough.
pub fn binary() -> PathBuf {
    let how = "run `bash scripts/redis-server.sh install` and set \
               COLLAB_REDIS_SERVER to the path it prints (scripts/test.sh does both)";
    let binary = match std::env::var_os(BINARY_ENV) {
        Some(path) => {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "{BINARY_ENV}={} is not a file: {how}",
                path.display()
            );
            path
        }
        None => PathBuf::from("redis-server"),
    };
    let output = Command::new(&binary).arg("--version").output();
    let version = match output {
        Ok(out) => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        Err(_) => panic!("no redis-server found ({BINARY_ENV} is not set): {how}"),
    };
    match parse_major(&version) {
        Some(major) if major >= MIN_MAJOR => binary,
        _ => panic!(
            "{} says {version:?}; the tests need Redis {MIN_MAJOR} or newer: {how}",
            binary.display()
        ),
    }
}

/// `Redis server v=7.0.15 sha=…` → `7`.
fn parse_major(text: &str) -> Option<u64> {
    let version = text.split("v=").nth(1)?;
    version.split('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(
            parse_major("Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0"),
            Some(7)
        );
        assert_eq!(parse_major("garbage"), None);
    }
}
