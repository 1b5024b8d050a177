//! Every way the gateway ends a WebSocket: the close frame it sends and the
//! reason it counts (`collab_gateway_disconnects_total`).

use crate::metrics::Disconnect;

/// A close the gateway asks for: the code and reason of the close frame,
/// and why the connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Close {
    pub code: u16,
    pub reason: &'static str,
    pub why: Disconnect,
}

pub(crate) const CLOSE_GOING_AWAY: u16 = 1001;
pub(crate) const CLOSE_TOO_BIG: u16 = 1009;
pub(crate) const CLOSE_REVOKED: u16 = 4001;
pub(crate) const CLOSE_TOO_SLOW: u16 = 4008;

impl Close {
    const fn new(code: u16, reason: &'static str, why: Disconnect) -> Close {
        Close { code, reason, why }
    }

    /// The client closed, or its stream ended.
    pub const CLIENT: Close = Close::new(CLOSE_GOING_AWAY, "bye", Disconnect::Client);
    /// The gateway drains: the client resumes elsewhere.
    pub const SHUTDOWN: Close =
        Close::new(CLOSE_GOING_AWAY, "server going away", Disconnect::Shutdown);
    /// The gateway was cut off from the cluster: nothing the client sends
    /// reaches a room, so it resumes at another gateway.
    pub const BUS_LOST: Close = Close::new(
        CLOSE_GOING_AWAY,
        "server cut off from its cluster",
        Disconnect::BusLost,
    );
    /// The outbound queue overflowed: the client does not read.
    pub const SLOW: Close = Close::new(CLOSE_TOO_SLOW, "too slow", Disconnect::Slow);
    pub const EXPIRED: Close = Close::new(CLOSE_REVOKED, "token expired", Disconnect::Expired);
    /// A revocation covers the token (counted with the expired ones).
    pub const REVOKED: Close = Close::new(CLOSE_REVOKED, "token revoked", Disconnect::Expired);
    pub const IDLE: Close = Close::new(CLOSE_GOING_AWAY, "idle", Disconnect::Idle);
    pub const TOO_BIG: Close = Close::new(CLOSE_TOO_BIG, "message too big", Disconnect::TooBig);
    /// A read or a write failed, or the peer broke the protocol.
    pub const FAILED: Close = Close::new(CLOSE_GOING_AWAY, "bye", Disconnect::Error);
}
