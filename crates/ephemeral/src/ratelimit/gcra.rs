//! GCRA, the arithmetic both implementations share (the Redis script,
//! `gcra.lua`, is the same steps in Lua).
//!
//! Times are in microseconds. A bucket is one number, its TAT (theoretical
//! arrival time): the time at which it would be full again. Taking `n`
//! tokens moves it `n` emission intervals later; a request is allowed while
//! the TAT stays within the tolerance (burst × interval) of now. A TAT in
//! the past is a full bucket, so a bucket that has refilled can be
//! forgotten.

use super::Rate;

/// The emission interval of the slowest rate: one token a day.
const SLOWEST_INTERVAL_US: u64 = 86_400_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gcra {
    /// Microseconds between two tokens.
    pub interval_us: u64,
    /// How far the TAT may run ahead of now: burst × interval.
    pub tolerance_us: u64,
}

/// What a take did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Take {
    pub granted: u64,
    /// The bucket's new TAT.
    pub tat: u64,
    /// When fewer tokens were granted than wanted: how long until the
    /// bucket holds one more. Zero otherwise.
    pub wait_us: u64,
}

impl Gcra {
    pub fn new(rate: Rate) -> Gcra {
        let interval_us = if rate.per_sec > 0.0 {
            ((1e6 / rate.per_sec).round() as u64).clamp(1, SLOWEST_INTERVAL_US)
        } else {
            SLOWEST_INTERVAL_US
        };
        let burst = rate.burst.max(1.0);
        Gcra {
            interval_us,
            tolerance_us: (burst * interval_us as f64) as u64,
        }
    }

    /// Takes up to `want` tokens at `now` from a bucket whose TAT is `tat`
    /// (`now` for a bucket never used).
    pub fn take(&self, tat: u64, now: u64, want: u64) -> Take {
        let tat = tat.max(now);
        let used = tat - now;
        let available = self.tolerance_us.saturating_sub(used) / self.interval_us;
        let granted = want.min(available);
        let tat = tat + granted * self.interval_us;
        let wait_us = if granted < want {
            (tat + self.interval_us).saturating_sub(now + self.tolerance_us)
        } else {
            0
        };
        Take {
            granted,
            tat,
            wait_us,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let g = Gcra::new(Rate::per_sec(10.0, 3.0));
        assert_eq!(g.interval_us, 100_000);
        let t0 = 1_000_000;
        let first = g.take(t0, t0, 5);
        assert_eq!(first.granted, 3);
        // The fourth token is one interval away.
        assert_eq!(first.wait_us, 100_000);
        assert_eq!(g.take(first.tat, t0 + 99_999, 1).granted, 0);
        let later = g.take(first.tat, t0 + 100_000, 1);
        assert_eq!((later.granted, later.wait_us), (1, 0));
        // A long pause refills to the burst, never beyond.
        assert_eq!(g.take(later.tat, t0 + 60_000_000, 10).granted, 3);
    }

    #[test]
    fn fractional_burst_refills_in_fractions() {
        // As a token bucket of 2.5: two now, the third after half a token.
        let g = Gcra::new(Rate::per_sec(10.0, 2.5));
        let t0 = 0;
        let first = g.take(t0, t0, 3);
        assert_eq!((first.granted, first.wait_us), (2, 50_000));
        assert_eq!(g.take(first.tat, t0 + 50_000, 1).granted, 1);
    }

    #[test]
    fn zero_rate_is_one_token_a_day() {
        let g = Gcra::new(Rate::per_sec(0.0, 2.0));
        let first = g.take(0, 0, 3);
        assert_eq!(first.granted, 2);
        assert_eq!(first.wait_us, SLOWEST_INTERVAL_US);
        assert_eq!(g.take(first.tat, 3_600_000_000, 1).granted, 0);
    }

    #[test]
    fn a_burst_below_one_is_one() {
        let g = Gcra::new(Rate::per_sec(1.0, 0.0));
        assert_eq!(g.take(0, 0, 2).granted, 1);
    }
}
