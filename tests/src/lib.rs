//! Cross-process integration and fault tests of collab: harnesses that
//! start real processes on free ports in temporary directories, and the
//! tests that kill them and check that nothing acknowledged was lost.
//!
//! [`harness`] runs the real `collab serve` binary and talks to it over
//! HTTP and WebSocket; [`metrics`] reads its `/metrics` page and checks it
//! against `docs/metrics.md`.
//!
//! [`SelfChild`] re-executes the current test binary to run one named test
//! as a separate process (the "child" side of a fault test), so a test can
//! SIGKILL real work without a separate binary to build.

pub mod harness;
pub mod metrics;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Instant;

/// A child process running one test of the current test binary, with its
/// stdout read line by line on a helper thread. Killed when dropped, so a
/// failing test leaves no process behind.
pub struct SelfChild {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl SelfChild {
    /// Runs the test named `test` (exactly) of the current test binary with
    /// the extra environment `envs`; its stderr goes to ours.
    pub fn spawn<K, V>(test: &str, envs: impl IntoIterator<Item = (K, V)>) -> std::io::Result<Self>
    where
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .envs(envs)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("child stdout was not piped"))?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            // Ends at EOF, that is when the child is gone (or the receiver
            // is dropped).
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(SelfChild { child, lines })
    }

    /// The next line the child printed; `None` at EOF or once `deadline`
    /// passed without one.
    pub fn next_line(&self, deadline: Instant) -> Option<String> {
        let wait = deadline.checked_duration_since(Instant::now())?;
        self.lines.recv_timeout(wait).ok()
    }

    /// SIGKILLs the child (`Child::kill` is SIGKILL on unix), reaps it,
    /// and returns every line it had printed that was not read yet: output
    /// written before the kill is still in the pipe.
    pub fn kill(mut self) -> std::io::Result<(ExitStatus, Vec<String>)> {
        self.child.kill()?;
        let status = self.child.wait()?;
        // The pipe closes with the child, so this iteration ends.
        let rest = std::mem::replace(&mut self.lines, mpsc::channel().1);
        Ok((status, rest.into_iter().collect()))
    }

    /// Waits for the child to exit by itself and returns its remaining
    /// lines.
    pub fn wait(mut self) -> std::io::Result<(ExitStatus, Vec<String>)> {
        let status = self.child.wait()?;
        let rest = std::mem::replace(&mut self.lines, mpsc::channel().1);
        Ok((status, rest.into_iter().collect()))
    }
}

impl Drop for SelfChild {
    fn drop(&mut self) {
        // Already reaped after kill()/wait(); otherwise a test failed
        // midway: do not leave the child running.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
