//! A real nats-server for tests: JetStream on, bound to loopback on a free
//! port, its store in a temporary directory, killed when dropped.
//!
//! The binary is the one `scripts/nats-server.sh install` puts in the
//! cache, named by `COLLAB_NATS_SERVER` (`scripts/test.sh` sets it); else a
//! `nats-server` on `PATH`, if it is 2.11 or newer. Without either, starting
//! a server panics with a message that says how to install one: a test that
//! needs NATS never passes by skipping.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable naming the nats-server binary.
pub const BINARY_ENV: &str = "COLLAB_NATS_SERVER";

/// The oldest server with per-key TTLs in JetStream KV.
const MIN_VERSION: (u64, u64) = (2, 11);

/// A running nats-server, killed on drop.
pub struct NatsServer {
    binary: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server on a free port (the server picks it, so there is no
    /// race with other tests) and waits until it accepts clients.
    pub fn start() -> NatsServer {
        let binary = binary();
        let dir = tempfile::Builder::new()
            .prefix("collab-nats-")
            .tempdir()
            .expect("a temporary directory for nats-server");
        let mut server = NatsServer {
            binary,
            dir,
            port: 0,
            child: None,
        };
        server.spawn("-1");
        server.port = server.wait_for_ports_file();
        server.wait_until_ready();
        server
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's working directory (JetStream store, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts it again on the same port with the same
    /// JetStream store; returns once it accepts clients.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn(&self.port.to_string());
        self.wait_until_ready();
    }

    fn spawn(&mut self, port: &str) {
        let dir = self.dir.path();
        let child = Command::new(&self.binary)
            .args(["-a", "127.0.0.1", "-p", port, "-js", "-sd"])
            .arg(dir.join("jetstream"))
            .arg("-l")
            .arg(dir.join("nats-server.log"))
            .arg("--ports_file_dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.binary.display()));
        self.child = Some(child);
    }

    fn wait_for_ports_file(&mut self) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(port) = self.port_from_ports_file() {
                return port;
            }
            self.check_alive();
            assert!(
                Instant::now() < deadline,
                "nats-server wrote no ports file in 10 s{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(10)); // poll interval
        }
    }

    fn port_from_ports_file(&self) -> Option<u16> {
        let pid = self.child.as_ref()?.id();
        let entries = std::fs::read_dir(self.dir.path()).ok()?;
        let file = entries
            .flatten()
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with(&format!("_{pid}.ports")))?;
        let ports: serde_json::Value = serde_json::from_slice(&std::fs::read(file).ok()?).ok()?;
        let url = ports.get("nats")?.get(0)?.as_str()?;
        url.rsplit(':').next()?.parse().ok()
    }

    fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            if greets(addr) {
                return;
            }
            self.check_alive();
            assert!(
                Instant::now() < deadline,
                "nats-server not accepting clients on {addr} after 10 s{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(10)); // poll interval
        }
    }

    fn check_alive(&mut self) {
        let exited = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        if let Some(status) = exited {
            panic!("nats-server exited ({status}){}", self.log_tail());
        }
    }

    fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("nats-server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        format!("; its log ends:\n{tail}")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a NATS server answers on `addr` with its `INFO` greeting.
fn greets(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut greeting = [0u8; 5];
    stream.read_exact(&mut greeting).is_ok() && &greeting == b"INFO "
}

/// The nats-server binary to run, checked to be recent enough.
pub fn binary() -> PathBuf {
    let how = "run `bash scripts/nats-server.sh install` and set \
               COLLAB_NATS_SERVER to the path it prints (scripts/test.sh does both)";
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
        None => PathBuf::from("nats-server"),
    };
    let output = Command::new(&binary).arg("--version").output();
    let version = match output {
        Ok(out) => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        Err(_) => panic!("no nats-server found ({BINARY_ENV} is not set): {how}"),
    };
    match parse_version(&version) {
        Some(v) if v >= MIN_VERSION => binary,
        _ => panic!(
            "{} says {version:?}; the tests need nats-server {}.{} or newer: {how}",
            binary.display(),
            MIN_VERSION.0,
            MIN_VERSION.1
        ),
    }
}

/// `nats-server: v2.15.1` → `(2, 15)`.
fn parse_version(text: &str) -> Option<(u64, u64)> {
    let v = text.rsplit('v').next()?;
    let mut parts = v.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("nats-server: v2.15.1"), Some((2, 15)));
        assert_eq!(parse_version("nats-server: v2.9.11"), Some((2, 9)));
        assert_eq!(parse_version("garbage"), None);
        assert!(parse_version("nats-server: v2.9.11") < Some(MIN_VERSION));
    }
}
