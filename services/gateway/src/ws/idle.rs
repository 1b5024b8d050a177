//! The read side's idle timeout.

use std::pin::Pin;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Fires once `idle` has passed without a [`touch`](IdleTimer::touch).
///
/// One timer per connection, moved on only when it fires early: arming a
/// fresh timer for every frame read would cost a timer-wheel insert and
/// removal per frame.
pub(super) struct IdleTimer {
    idle: Duration,
    last: Instant,
    sleep: Pin<Box<Sleep>>,
}

impl IdleTimer {
    pub fn new(idle: Duration) -> Self {
        IdleTimer {
            idle,
            last: Instant::now(),
            sleep: Box::pin(tokio::time::sleep(idle)),
        }
    }

    /// The peer was heard from just now.
    pub fn touch(&mut self) {
        self.last = Instant::now();
    }

    /// Resolves once the peer has been silent for `idle`. Cancel-safe: a
    /// dropped call leaves the timer as it was.
    pub async fn expired(&mut self) {
        loop {
            self.sleep.as_mut().await;
            let due = self.last + self.idle;
            if due <= Instant::now() {
                return;
            }
            self.sleep.as_mut().reset(due);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_expires_after_the_idle_time() {
        let start = Instant::now();
        let mut timer = IdleTimer::new(IDLE);
        timer.expired().await;
        assert_eq!(start.elapsed(), IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn each_touch_moves_the_deadline() {
        let start = Instant::now();
        let mut timer = IdleTimer::new(IDLE);
        for _ in 0..3 {
            tokio::time::advance(IDLE / 2).await;
            // Not yet due: a short wait for it times out.
            let early = tokio::time::timeout(Duration::from_secs(1), timer.expired()).await;
            assert!(early.is_err(), "expired {:?} after start", start.elapsed());
            timer.touch();
        }
        let touched = Instant::now();
        timer.expired().await;
        assert_eq!(touched.elapsed(), IDLE);
    }
}
