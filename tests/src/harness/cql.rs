//! CQL servers for the tests.
//!
//! Most tests share the run's server (`COLLAB_TEST_CQL`, started by
//! `scripts/test.sh`), each in a keyspace of its own
//! ([`shared_cql_store_url`]). A test that stops or kills the server starts a
//! private one instead ([`CqlNode`]), so it never disturbs the others.

use std::path::PathBuf;
use std::process::Command;

use tempfile::TempDir;

use super::HarnessError;

/// The store URL of a new keyspace on the run's shared CQL server: a
/// server started with it has a store of its own (its tables are created at
/// start-up, a few seconds).
pub fn shared_cql_store_url() -> String {
    let server = collab_store::testsuite::test_cql_url();
    let base = server
        .strip_prefix("cql://")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default()
        .to_owned();
    format!(
        "cql://{base}/collab_t_{:016x}",
        collab_store::testsuite::random_u64()
    )
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/cql-server.sh")
}

/// A private Cassandra node started by `scripts/cql-server.sh` in a
/// temporary directory; killed when dropped.
pub struct CqlNode {
    dir: TempDir,
    port: u16,
}

impl CqlNode {
    /// Starts a node and waits until it answers (the script's deadline).
    pub fn start() -> Result<CqlNode, HarnessError> {
        let dir = tempfile::Builder::new().prefix("collab-cql-").tempdir()?;
        run_script(&["start", &dir.path().display().to_string()])?;
        let port = std::fs::read_to_string(dir.path().join("port"))?
            .trim()
            .parse()
            .map_err(|e| HarnessError::Setup(format!("cql node port: {e}")))?;
        Ok(CqlNode { dir, port })
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A store URL on this node (`keyspace` is created at start-up).
    pub fn store_url(&self, keyspace: &str, options: &str) -> String {
        let query = if options.is_empty() {
            String::new()
        } else {
            format!("?{options}")
        };
        format!("cql://{}/{keyspace}{query}", self.addr())
    }

    /// SIGKILL: no shutdown, no flush beyond what was already synced.
    pub fn kill(&self) -> Result<(), HarnessError> {
        run_script(&["kill", &self.dir_arg()])
    }

    /// Starts it again on the same data and port.
    pub fn restart(&self) -> Result<(), HarnessError> {
        run_script(&["start", &self.dir_arg(), &self.port.to_string()])
    }

    fn dir_arg(&self) -> String {
        self.dir.path().display().to_string()
    }
}

impl Drop for CqlNode {
    fn drop(&mut self) {
        let _ = run_script(&["kill", &self.dir_arg()]);
    }
}

fn run_script(args: &[&str]) -> Result<(), HarnessError> {
    let output = Command::new("bash").arg(script()).args(args).output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(HarnessError::Setup(format!(
            "scripts/cql-server.sh {}: {}\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )))
    }
}
