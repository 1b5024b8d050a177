//! The configurable limits of the protocol, with the documented defaults.

use serde::{Deserialize, Serialize};

/// Size limits enforced on client input. Every field is configurable; the
/// defaults are the protocol's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// One WebSocket message after reassembly; over it the connection is
    /// closed with 1009.
    pub max_message_bytes: usize,
    /// Points in one op; over it `too_large`.
    pub max_points: usize,
    /// Unicode code points in one chat message; over it `too_large`.
    pub max_text_chars: usize,
    /// `head - since` above which `joined` sends the state instead of ops.
    pub replay_limit: u64,
}

impl Limits {
    pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;
    pub const DEFAULT_MAX_POINTS: usize = 1024;
    pub const DEFAULT_MAX_TEXT_CHARS: usize = 4000;
    pub const DEFAULT_REPLAY_LIMIT: u64 = 10_000;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: Self::DEFAULT_MAX_MESSAGE_BYTES,
            max_points: Self::DEFAULT_MAX_POINTS,
            max_text_chars: Self::DEFAULT_MAX_TEXT_CHARS,
            replay_limit: Self::DEFAULT_REPLAY_LIMIT,
        }
    }
}

/// Longest room id, `cid` or stroke id, in characters.
pub const MAX_ID_LEN: usize = 64;
/// How many recent `message` ops the room state carries.
pub const STATE_MESSAGES: usize = 50;
/// Widest stroke accepted.
pub const MAX_STROKE_WIDTH: f64 = 100.0;
