//! Logging: `tracing` to stderr, filtered by `RUST_LOG` (default `info`),
//! as text or JSON. Stdout is kept for what the commands print (the
//! `listening on` line, a token), which scripts and tests read.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("bad RUST_LOG filter: {0}")]
    Filter(String),
    #[error("a global subscriber was already installed: {0}")]
    Install(String),
}

/// Installs the global subscriber; call once, first thing.
pub fn init(format: LogFormat) -> Result<(), TelemetryError> {
    let filter = match std::env::var(EnvFilter::DEFAULT_ENV) {
        Ok(directives) if !directives.trim().is_empty() => {
            EnvFilter::try_new(directives).map_err(|e| TelemetryError::Filter(e.to_string()))?
        }
        _ => EnvFilter::new("info"),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files.
        .with_ansi(std::io::stderr().is_terminal());
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    installed.map_err(|e| TelemetryError::Install(e.to_string()))
}
