//! Whether the gateway takes new WebSockets: not while it drains, not
//! while it is cut off from its cluster, and not past the open sockets
//! allowed to one user or one source address ([`SocketLimits`]).
//!
//! A gateway whose membership heartbeats fail reaches no room: its
//! clients' ops would get `unavailable` one by one for as long as the cut
//! lasts, and the cluster drops it from the membership after a member TTL.
//! Once it has been cut off for `bus_lost_close_ms`, it closes every socket
//! with 1001 (going away), so that its clients resume at another gateway,
//! and refuses upgrades (503, as its readiness says) until its heartbeats
//! land again.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
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

// === impl SocketLimits ===

/// The open WebSockets of each user and each source address on this
/// gateway, and how many each may have (0: no limit). Their sockets on the
/// other gateways of a cluster are added by the caller ([`Elsewhere`],
/// from the shared presence records).
pub(crate) struct SocketLimits {
    per_user: u32,
    per_address: u32,
    open: Mutex<OpenSockets>,
}

#[derive(Default)]
struct OpenSockets {
    users: HashMap<String, u32>,
    addresses: HashMap<IpAddr, u32>,
}

/// Why an upgrade was refused for the sockets already open; its
/// [`as_str`](SocketRefusal::as_str) is the `reason` label of
/// `collab_gateway_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SocketRefusal {
    PerUser(u32),
    PerAddress(u32),
}

impl SocketRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            SocketRefusal::PerUser(_) => "sockets_per_user",
            SocketRefusal::PerAddress(_) => "sockets_per_address",
        }
    }

    pub fn message(self) -> String {
        match self {
            SocketRefusal::PerUser(n) => {
                format!("too many open connections for this user (at most {n}); close one first")
            }
            SocketRefusal::PerAddress(n) => format!(
                "too many open connections from this address (at most {n}); close one first"
            ),
        }
    }
}

/// The sockets a user and an address have open on the other gateways.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Elsewhere {
    pub user: u32,
    pub address: u32,
}

/// One admitted socket: counted until it is dropped (when its connection
/// ends, or when its upgrade never happens).
pub(crate) struct SocketPermit {
    limits: Arc<SocketLimits>,
    user: String,
    address: IpAddr,
}

impl SocketLimits {
    pub fn new(per_user: u32, per_address: u32) -> Self {
        SocketLimits {
            per_user,
            per_address,
            open: Mutex::default(),
        }
    }

    /// Whether users' sockets are limited at all (if not, there is no
    /// need to ask the other gateways).
    pub fn limits_users(&self) -> bool {
        self.per_user > 0
    }

    /// Whether addresses' sockets are limited at all.
    pub fn limits_addresses(&self) -> bool {
        self.per_address > 0
    }

    /// Counts one more socket of `user` from `address`, unless either
    /// already has as many as it may, here and `elsewhere` together.
    pub fn admit(
        self: &Arc<Self>,
        user: &str,
        address: IpAddr,
        elsewhere: Elsewhere,
    ) -> Result<SocketPermit, SocketRefusal> {
        let mut open = lock(&self.open);
        let of_user = open.users.get(user).copied().unwrap_or(0);
        if self.per_user > 0 && of_user.saturating_add(elsewhere.user) >= self.per_user {
            return Err(SocketRefusal::PerUser(self.per_user));
        }
        let of_address = open.addresses.get(&address).copied().unwrap_or(0);
        if self.per_address > 0 && of_address.saturating_add(elsewhere.address) >= self.per_address
        {
            return Err(SocketRefusal::PerAddress(self.per_address));
        }
        open.users.insert(user.to_owned(), of_user + 1);
        open.addresses.insert(address, of_address + 1);
        Ok(SocketPermit {
            limits: self.clone(),
            user: user.to_owned(),
            address,
        })
    }

    /// Open sockets of `user` (for tests).
    #[cfg(test)]
    pub fn of_user(&self, user: &str) -> u32 {
        lock(&self.open).users.get(user).copied().unwrap_or(0)
    }
}

impl Drop for SocketPermit {
    fn drop(&mut self) {
        let mut open = lock(&self.limits.open);
        decrement(&mut open.users, &self.user);
        decrement(&mut open.addresses, &self.address);
    }
}

fn decrement<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, u32>, key: &K) {
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}

/// Locks `mutex`, carrying on after a holder that panicked: every update
/// of the counts is one step.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// === close when cut off ===

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

    /// No socket on another gateway.
    const NONE: Elsewhere = Elsewhere {
        user: 0,
        address: 0,
    };

    #[test]
    fn a_user_or_address_at_its_limit_is_refused_and_others_are_not() {
        let limits = Arc::new(SocketLimits::new(2, 3));
        let here: IpAddr = [10, 0, 0, 1].into();
        let there: IpAddr = [10, 0, 0, 2].into();
        let ann1 = limits.admit("ann", here, NONE).expect("first");
        let _ann2 = limits.admit("ann", here, NONE).expect("second");
        assert_eq!(
            limits.admit("ann", there, NONE).err(),
            Some(SocketRefusal::PerUser(2))
        );
        // Another user from the same address, up to the address's limit.
        let _bob = limits.admit("bob", here, NONE).expect("bob");
        assert_eq!(
            limits.admit("cat", here, NONE).err(),
            Some(SocketRefusal::PerAddress(3))
        );
        // Another address is not affected.
        let _cat = limits.admit("cat", there, NONE).expect("cat elsewhere");
        // A closed socket frees its place, for its user and its address.
        drop(ann1);
        assert_eq!(limits.of_user("ann"), 1);
        let _ann3 = limits.admit("ann", here, NONE).expect("a place again");
        assert_eq!(
            limits.admit("dan", here, NONE).err(),
            Some(SocketRefusal::PerAddress(3))
        );
    }

    #[test]
    fn sockets_on_other_gateways_count_against_the_limits() {
        let elsewhere = |user, address| Elsewhere { user, address };
        let limits = Arc::new(SocketLimits::new(3, 0));
        let here: IpAddr = [10, 0, 0, 1].into();
        let _ann = limits
            .admit("ann", here, elsewhere(1, 0))
            .expect("1 here + 1 elsewhere");
        assert_eq!(
            limits.admit("ann", here, elsewhere(2, 0)).err(),
            Some(SocketRefusal::PerUser(3))
        );
        let _ann2 = limits
            .admit("ann", here, elsewhere(1, 0))
            .expect("2 here + 1 elsewhere");
        let _bob = limits.admit("bob", here, NONE).expect("others unaffected");

        let limits = Arc::new(SocketLimits::new(0, 3));
        let there: IpAddr = [10, 0, 0, 2].into();
        let _one = limits
            .admit("ann", here, elsewhere(0, 1))
            .expect("1 here + 1 elsewhere");
        assert_eq!(
            limits.admit("bob", here, elsewhere(0, 2)).err(),
            Some(SocketRefusal::PerAddress(3))
        );
        let _two = limits
            .admit("bob", here, elsewhere(0, 1))
            .expect("2 here + 1 elsewhere");
        let _other = limits
            .admit("bob", there, NONE)
            .expect("another address unaffected");
    }

    #[test]
    fn zero_means_no_limit_and_counts_are_forgotten_at_zero() {
        let limits = Arc::new(SocketLimits::new(0, 0));
        let here: IpAddr = [127, 0, 0, 1].into();
        let permits: Vec<_> = (0..1000)
            .map(|_| limits.admit("ann", here, NONE).expect("no limit"))
            .collect();
        assert_eq!(limits.of_user("ann"), 1000);
        drop(permits);
        let open = lock(&limits.open);
        assert!(open.users.is_empty() && open.addresses.is_empty());
    }

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
