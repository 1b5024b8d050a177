//! The open WebSockets, and closing them: those of revoked tokens, or all
//! of them (the drain).
//!
//! Every open WebSocket is listed here with the token it presented. The
//! gateway follows the revocations it learns of ([`Revocations::subscribe`]:
//! its own, and in a cluster every other gateway's, through Redis) and
//! closes each socket a new one covers with 4001, as an expired token's.
//! A socket registered after a revocation was announced is checked on its
//! own when it registers, so none slips between the two.
//!
//! [`Revocations::subscribe`]: collab_ephemeral::Revocations::subscribe

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use collab_ephemeral::{Revocation, Revocations, TokenRef};
use collab_protocol::{Claims, ConnId};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tracing::{info, warn};

use crate::auth::token_ref;
use crate::metrics::GatewayMetrics;
use crate::ws::close::Close;
use crate::ws::outbound::Outbound;

/// The open WebSockets, by connection id.
#[derive(Default)]
pub(crate) struct Sockets {
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    sockets: HashMap<ConnId, Socket>,
    /// Every socket closes this way, those registered later included
    /// (the gateway drains).
    closing_all: Option<Close>,
}

struct Socket {
    claims: Arc<Claims>,
    outbound: Arc<Outbound>,
}

impl Sockets {
    /// Lists a socket; closes it at once if every socket is being closed.
    pub(crate) fn add(&self, conn: ConnId, claims: Arc<Claims>, outbound: Arc<Outbound>) {
        let mut open = self.lock();
        if let Some(close) = open.closing_all {
            outbound.close(close);
        }
        open.sockets.insert(conn, Socket { claims, outbound });
    }

    /// The socket presented a new token (`refresh`): revocations are
    /// checked against it from now on.
    pub(crate) fn replace_claims(&self, conn: &ConnId, claims: Arc<Claims>) {
        if let Some(socket) = self.lock().sockets.get_mut(conn) {
            socket.claims = claims;
        }
    }

    pub(crate) fn remove(&self, conn: &ConnId) {
        self.lock().sockets.remove(conn);
    }

    /// Closes every socket with `close`, and every one listed from now on
    /// until [`Sockets::reopen_after`].
    pub(crate) fn close_all(&self, close: Close) {
        let mut open = self.lock();
        open.closing_all = Some(close);
        for socket in open.sockets.values() {
            socket.outbound.close(close);
        }
    }

    /// How each listed socket is closing (tests only).
    #[cfg(test)]
    pub(crate) fn closes(&self) -> Vec<Option<Close>> {
        let open = self.lock();
        open.sockets
            .values()
            .map(|s| s.outbound.closing())
            .collect()
    }

    /// The token each listed socket is checked with (tests only).
    #[cfg(test)]
    pub(crate) fn claims_for_tests(&self) -> Vec<Arc<Claims>> {
        let open = self.lock();
        open.sockets.values().map(|s| s.claims.clone()).collect()
    }

    /// Sockets listed from now on stay open, unless they are being
    /// closed for another reason than `close` (the drain outlasts a cut).
    pub(crate) fn reopen_after(&self, close: Close) {
        let mut open = self.lock();
        if open.closing_all == Some(close) {
            open.closing_all = None;
        }
    }

    /// Closes with 4001 every socket whose token `revoked` says is
    /// revoked; returns how many it closed.
    fn close_where(&self, revoked: impl Fn(&TokenRef<'_>) -> bool) -> usize {
        let open = self.lock();
        let mut closed = 0;
        for (conn, socket) in &open.sockets {
            if socket.outbound.closing().is_some() || !revoked(&token_ref(&socket.claims)) {
                continue;
            }
            info!(conn = %conn, user = %socket.claims.sub, "token revoked; closing");
            socket.outbound.close(Close::REVOKED);
            closed += 1;
        }
        closed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Closes the sockets every new revocation covers, for as long as the
/// gateway lives. A lag (revocations announced faster than this task ran)
/// is made up by checking every socket against all revocations known.
pub(crate) async fn close_revoked_sockets(
    sockets: Weak<Sockets>,
    known: Arc<dyn Revocations>,
    metrics: GatewayMetrics,
    mut revocations: broadcast::Receiver<Revocation>,
) {
    loop {
        let news = match revocations.recv().await {
            Ok(revocation) => Some(revocation),
            Err(RecvError::Lagged(missed)) => {
                warn!(
                    missed,
                    "revocations came faster than sockets were checked; checking every socket"
                );
                None
            }
            Err(RecvError::Closed) => return,
        };
        let Some(sockets) = sockets.upgrade() else {
            return;
        };
        let closed = match &news {
            Some(revocation) => sockets.close_where(|token| revocation.covers(token)),
            // Every socket against everything this gateway knows.
            None => sockets.close_where(|token| known.is_revoked(token)),
        };
        metrics.revocation_closes.inc_by(closed as u64);
    }
}
