//! Whether the gateway takes new WebSockets: not while it drains, and not
//! while it is cut off from its cluster.
//!
//! A gateway whose membership heartbeats fail reaches no room: its
//! clients' ops would get `unavailable` one by one for as long as the cut
//! lasts, and the cluster drops it from the membership after a member TTL.
//! Once it has been cut off for `bus_lost_close_ms`, it closes every socket
//! with 1001 (going away), so that its clients resume at another gateway,
//! and refuses upgrades (503, as its readiness says) until its heartbeats
//! land again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{info, warn};

use crate::revoke::Sockets;
use crate::ws::close::Close;

#[derive(Default)]
pub(crate) struct Admission {
    draining: AtomicBool,
    cut_off: AtomicBool,
}

impl Admission {
    /// Why a new WebSocket (and readiness) is refused now, if it is.
    pub fn refusal(&self) -> Option<&'static str> {
        if self.draining.load(Ordering::SeqCst) {
            Some("shutting down")
        } else if self.cut_off.load(Ordering::SeqCst) {
            Some("cut off from the cluster")
        } else {
            None
        }
    }

    /// The gateway drains: nothing new, for good.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    fn is_cut_off(&self) -> bool {
        self.cut_off.load(Ordering::SeqCst)
    }
}

/// Follows since when the bus has been cut off (`since`, see
/// `Bus::cut_off`): `after` that long, closes every socket and refuses new
/// ones; accepts again once the bus is back. Ends with the bus or the
/// gateway.
pub(crate) async fn close_when_cut_off(
    mut since: watch::Receiver<Option<Instant>>,
    after: Duration,
    admission: Arc<Admission>,
    sockets: Weak<Sockets>,
) {
    loop {
        let cut = *since.borrow_and_update();
        match cut {
            Some(at) if !admission.is_cut_off() => {
                let due = tokio::time::Instant::from_std(at + after);
                tokio::select! {
                    () = tokio::time::sleep_until(due) => {
                        let Some(sockets) = sockets.upgrade() else { return };
                        warn!(
                            cut_off_for = ?at.elapsed(),
                            "cut off from the cluster; closing every socket so that clients resume elsewhere"
                        );
                        admission.cut_off.store(true, Ordering::SeqCst);
                        sockets.close_all(Close::BUS_LOST);
                        continue;
                    }
                    changed = since.changed() => if changed.is_err() { return },
                }
            }
            None if admission.is_cut_off() => {
                let Some(sockets) = sockets.upgrade() else {
                    return;
                };
                info!("back in the cluster; taking clients again");
                sockets.reopen_after(Close::BUS_LOST);
                admission.cut_off.store(false, Ordering::SeqCst);
                continue;
            }
            _ => {}
        }
        if since.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn cut_off_long_enough_closes_and_refuses_until_the_bus_is_back() {
        let (tx, rx) = watch::channel(None);
        let admission = Arc::new(Admission::default());
        let sockets = Arc::new(Sockets::default());
        let task = tokio::spawn(close_when_cut_off(
            rx,
            Duration::from_secs(6),
            admission.clone(),
            Arc::downgrade(&sockets),
        ));
        let wait_for = |refused: bool| {
            let admission = admission.clone();
            async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                while admission.refusal().is_some() != refused {
                    assert!(tokio::time::Instant::now() < deadline, "refused: {refused}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        // A short cut that heals before the bound changes nothing.
        tx.send_replace(Some(tokio::time::Instant::now().into_std()));
        tokio::time::sleep(Duration::from_secs(3)).await;
        tx.send_replace(None);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(admission.refusal(), None);

        let cut_at = tokio::time::Instant::now();
        tx.send_replace(Some(tokio::time::Instant::now().into_std()));
        wait_for(true).await;
        assert!(cut_at.elapsed() >= Duration::from_secs(6));
        assert_eq!(admission.refusal(), Some("cut off from the cluster"));
        assert_eq!(sockets.closes(), Vec::<Option<Close>>::new());

        tx.send_replace(None);
        wait_for(false).await;
        // Draining wins, and stays.
        admission.drain();
        assert_eq!(admission.refusal(), Some("shutting down"));
        drop(tx);
        let ended = tokio::time::timeout(Duration::from_secs(1), task).await;
        assert!(matches!(ended, Ok(Ok(()))), "{ended:?}");
    }
}
