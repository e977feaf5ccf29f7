//! Exponential backoff with jitter, for anything the agent retries against the server
//! (mints, node attestation, feed reconnects).
//!
//! The base delay doubles after every failure up to a cap; each delay is then drawn from
//! `[base * (1 - spread), base]`, so agents that failed together (a server restart) do not
//! come back together, and no delay ever exceeds the cap.

use std::time::Duration;

/// Fraction of the base delay that jitter may take away.
const SPREAD: f64 = 0.2;

/// A uniformly random number in `[0, 1)`, from the system's CSPRNG (only used for timing,
/// but it costs nothing to use the good one).
pub fn random_unit() -> f64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// Per-task retry state: how many failures in a row, and the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// `initial` is the base delay after the first failure; no delay exceeds `max`.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            failures: 0,
        }
    }

    /// Records a failure and returns how long to wait before the next attempt.
    pub fn fail(&mut self) -> Duration {
        self.fail_with(random_unit())
    }

    /// [`Backoff::fail`] with the random draw given (`unit` in `[0, 1)`), for tests.
    pub fn fail_with(&mut self, unit: f64) -> Duration {
        let base = self.base();
        self.failures = self.failures.saturating_add(1);
        base.mul_f64(1.0 - SPREAD * unit.clamp(0.0, 1.0))
    }

    /// The un-jittered delay the next failure will get.
    pub fn base(&self) -> Duration {
        // 2^20 * any sane initial delay is far past any cap; stop doubling there.
        let factor = 1u32 << self.failures.min(20);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// Success: the next failure starts from the initial delay again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_then_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let bases: Vec<u64> = (0..8)
            .map(|_| {
                let base = b.base();
                let d = b.fail_with(0.0);
                assert_eq!(d, base, "no jitter at unit 0");
                base.as_secs()
            })
            .collect();
        assert_eq!(bases, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(b.failures(), 8);
        b.reset();
        assert_eq!(b.base(), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_within_bounds_and_never_passes_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        for _ in 0..200 {
            let base = b.base();
            let d = b.fail();
            assert!(
                d <= base && d <= Duration::from_secs(10),
                "{d:?} > {base:?}"
            );
            assert!(
                d >= base.mul_f64(1.0 - SPREAD),
                "{d:?} too short for {base:?}"
            );
        }
        // Many failures later the shift does not overflow.
        for _ in 0..100 {
            b.fail();
        }
        assert_eq!(b.base(), Duration::from_secs(10));
    }

    #[test]
    fn random_unit_is_in_range_and_varies() {
        let draws: Vec<f64> = (0..64).map(|_| random_unit()).collect();
        assert!(draws.iter().all(|u| (0.0..1.0).contains(u)));
        assert!(draws.iter().any(|u| *u != draws[0]));
    }
}
