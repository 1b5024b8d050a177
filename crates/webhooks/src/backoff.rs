//! The waits between attempts to deliver one event: exponential, capped,
//! with jitter so that the retries of many rooms after an outage of their
//! endpoint do not all land at once.

use std::time::Duration;

/// `base · 2^(attempt-1)`, capped at `max`, then a random point of its
/// upper half ("equal jitter": never less than half the nominal wait, so
/// the backoff still backs off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The nominal wait after `failures` failed attempts (1 or more).
    pub fn nominal(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.base.saturating_mul(1u32 << doublings).min(self.max)
    }

    /// The wait after `failures` failed attempts, with `unit` (in `0..1`)
    /// choosing where in the upper half of the nominal wait it falls.
    pub fn wait(&self, failures: u32, unit: f64) -> Duration {
        let nominal = self.nominal(failures);
        nominal / 2 + nominal.mul_f64(unit.clamp(0.0, 1.0) / 2.0)
    }

    /// [`Backoff::wait`] with a random point.
    pub fn jittered(&self, failures: u32) -> Duration {
        self.wait(failures, rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let backoff = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let nominal: Vec<u128> = (1..=6).map(|n| backoff.nominal(n).as_millis()).collect();
        assert_eq!(nominal, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff.nominal(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_in_the_upper_half() {
        let backoff = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(60),
        };
        assert_eq!(backoff.wait(3, 0.0), Duration::from_millis(200));
        assert_eq!(backoff.wait(3, 1.0), Duration::from_millis(400));
        for _ in 0..1000 {
            let wait = backoff.jittered(3);
            assert!(
                (Duration::from_millis(200)..=Duration::from_millis(400)).contains(&wait),
                "{wait:?}"
            );
        }
    }
}
