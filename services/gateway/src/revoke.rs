//! Closing the sockets of revoked tokens.
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

use collab_ephemeral::{Revocation, TokenRef};
use collab_protocol::{Claims, ConnId};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tracing::{info, warn};

use crate::Shared;
use crate::auth::token_ref;
use crate::ws::outbound::{CLOSE_REVOKED, Outbound};

/// The open WebSockets, by connection id.
#[derive(Default)]
pub(crate) struct Sockets {
    open: Mutex<HashMap<ConnId, Socket>>,
}

struct Socket {
    claims: Arc<Claims>,
    outbound: Arc<Outbound>,
}

impl Sockets {
    pub(crate) fn add(&self, conn: ConnId, claims: Arc<Claims>, outbound: Arc<Outbound>) {
        self.lock().insert(conn, Socket { claims, outbound });
    }

    pub(crate) fn remove(&self, conn: &ConnId) {
        self.lock().remove(conn);
    }

    /// Closes with 4001 every socket whose token `revoked` says is
    /// revoked; returns how many it closed.
    fn close_where(&self, revoked: impl Fn(&TokenRef<'_>) -> bool) -> usize {
        let open = self.lock();
        let mut closed = 0;
        for (conn, socket) in open.iter() {
            if socket.outbound.is_closing() || !revoked(&token_ref(&socket.claims)) {
                continue;
            }
            info!(conn = %conn, user = %socket.claims.sub, "token revoked; closing");
            socket.outbound.close(CLOSE_REVOKED, "token revoked");
            closed += 1;
        }
        closed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ConnId, Socket>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Closes the sockets every new revocation covers, for as long as the
/// gateway lives. A lag (revocations announced faster than this task ran)
/// is made up by checking every socket against all revocations known.
pub(crate) async fn close_revoked_sockets(
    shared: Weak<Shared>,
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
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let closed = match &news {
            Some(revocation) => shared.sockets.close_where(|token| revocation.covers(token)),
            None => close_all_revoked(&shared),
        };
        shared.metrics.revocation_closes.inc_by(closed as u64);
    }
}

/// Closes every socket whose token is revoked by what this gateway knows.
fn close_all_revoked(shared: &Shared) -> usize {
    let revocations = &shared.ephemeral.revocations;
    shared
        .sockets
        .close_where(|token| revocations.is_revoked(token))
}
