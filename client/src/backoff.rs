//! The one retry backoff of Lanyard's clients: exponential with jitter, capped.
//!
//! The base delay doubles after every failure up to a cap; each delay is drawn from
//! `[base * (1 - SPREAD), base]`, so clients that lost the agent together (an agent restart)
//! do not come back together, and no delay ever exceeds the cap. A success resets it.

use std::time::Duration;

/// Fraction of the base delay that jitter may take away.
pub const SPREAD: f64 = 0.2;

/// A uniformly random number in `[0, 1)` from the system's CSPRNG (only used for timing, but
/// the good one costs nothing).
pub fn random_unit() -> f64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// Retry state: failures in a row, and the policy.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
    draw: fn() -> f64,
}

impl Backoff {
    /// `initial` is the base delay after the first failure; no delay exceeds `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            failures: 0,
            draw: random_unit,
        }
    }

    /// The same policy with the random draw replaced (`[0, 1)`; 0 is no jitter), for tests.
    pub fn with_draw(mut self, draw: fn() -> f64) -> Self {
        self.draw = draw;
        self
    }

    /// Records a failure and returns how long to wait before the next attempt.
    pub fn fail(&mut self) -> Duration {
        let base = self.base();
        self.failures = self.failures.saturating_add(1);
        base.mul_f64(1.0 - SPREAD * (self.draw)().clamp(0.0, 1.0))
    }

    /// Records a failure and sleeps for its delay (on tokio's clock); returns the delay.
    pub async fn wait(&mut self) -> Duration {
        let delay = self.fail();
        tokio::time::sleep(delay).await;
        delay
    }

    /// The un-jittered delay the next failure will get.
    pub fn base(&self) -> Duration {
        // 2^20 times any sane initial delay is far past any cap; stop doubling there.
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
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn without_jitter_it_doubles_up_to_the_cap_then_resets() {
        let mut b =
            Backoff::new(Duration::from_millis(100), Duration::from_millis(500)).with_draw(|| 0.0);
        let start = Instant::now();
        let mut at = Vec::new();
        for _ in 0..5 {
            b.wait().await;
            at.push(start.elapsed().as_millis());
        }
        assert_eq!(at, [100, 300, 700, 1200, 1700]);
        assert_eq!(b.failures(), 5);
        b.reset();
        assert_eq!(b.fail(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_shortens_within_the_spread_and_never_passes_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        let mut draws = Vec::new();
        for _ in 0..64 {
            let base = b.base();
            let start = Instant::now();
            let d = b.wait().await;
            // Slept the delay (tokio's timer rounds up to its millisecond tick).
            let slept = start.elapsed();
            assert!(
                slept >= d && slept <= d + Duration::from_millis(1),
                "{slept:?} for {d:?}"
            );
            assert!(
                d <= base && d <= Duration::from_secs(10),
                "{d:?} > {base:?}"
            );
            assert!(
                d >= base.mul_f64(1.0 - SPREAD),
                "{d:?} too short for {base:?}"
            );
            draws.push(d);
        }
        assert!(
            draws.iter().any(|d| *d != Duration::from_secs(10)),
            "jittered"
        );
        for _ in 0..100 {
            b.fail();
        }
        assert_eq!(b.base(), Duration::from_secs(10), "no overflow");
        let mut top =
            Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).with_draw(|| 0.999_999);
        assert!(top.fail() >= Duration::from_millis(800));
    }

    #[test]
    fn random_unit_is_in_range_and_varies() {
        let draws: Vec<f64> = (0..64).map(|_| random_unit()).collect();
        assert!(draws.iter().all(|u| (0.0..1.0).contains(u)));
        assert!(draws.iter().any(|u| *u != draws[0]));
    }
}
