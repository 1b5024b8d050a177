//! The one error of the shared state: Redis could not be asked.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EphemeralError {
    /// The Redis URL does not parse (a configuration error).
    #[error("bad redis url: {0}")]
    BadUrl(String),
    /// Redis did not answer `op`: unreachable, or it answered an error.
    #[error("redis {op} failed: {reason}")]
    Unavailable { op: &'static str, reason: String },
    /// Redis did not answer `op` in time; it may or may not have done it.
    #[error("redis {op} did not answer within {timeout:?}")]
    Timeout { op: &'static str, timeout: Duration },
}
