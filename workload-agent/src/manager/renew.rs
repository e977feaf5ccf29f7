//! When to renew an SVID and when it stops being servable, on tokio's clock.
//!
//! Certificates carry wall-clock times; the manager's timers run on `tokio::time::Instant`
//! (monotonic, and pausable in tests). The conversion happens once, when an SVID arrives:
//! "expires in X" and "renew in Y" become instants. Renewal is due at half of the lifetime
//! the SVID has left on arrival, with ±10% jitter so identities minted together do not renew
//! together. Half of the *remaining* lifetime rather than half of NotBefore..NotAfter: the
//! server backdates NotBefore for clock skew, which for very short TTLs would put the half-life
//! point in the past and renew in a loop.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// Jitter around the half-life point, as a fraction of the delay.
pub const RENEWAL_JITTER: f64 = 0.1;

/// The timers of one SVID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SvidTimes {
    /// When it arrived.
    pub received: Instant,
    /// When to start renewing it.
    pub renew_at: Instant,
    /// When it must no longer be served.
    pub expires: Instant,
}

impl SvidTimes {
    /// The timers of an SVID valid until `not_after`, received at `now` (wall clock `now_wall`),
    /// with `unit` a random draw in `[0, 1)`.
    pub fn schedule(now: Instant, now_wall: SystemTime, not_after: SystemTime, unit: f64) -> Self {
        let remaining = not_after.duration_since(now_wall).unwrap_or_default();
        let jitter = 1.0 + RENEWAL_JITTER * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        Self {
            received: now,
            renew_at: now + (remaining / 2).mul_f64(jitter),
            expires: now + remaining,
        }
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        now >= self.expires
    }

    pub fn renewal_due(&self, now: Instant) -> bool {
        now >= self.renew_at
    }
}

/// The renewal delay bounds for an SVID with `remaining` lifetime: `[min, max]`.
pub fn renewal_window(remaining: Duration) -> (Duration, Duration) {
    let half = remaining / 2;
    (
        half.mul_f64(1.0 - RENEWAL_JITTER),
        half.mul_f64(1.0 + RENEWAL_JITTER),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn renews_at_half_of_the_remaining_life_within_jitter() {
        let now = Instant::now();
        let wall = SystemTime::now();
        let hour = Duration::from_secs(3600);
        let (lo, hi) = renewal_window(hour);
        for unit in [0.0, 0.25, 0.5, 0.75, 0.999_999] {
            let t = SvidTimes::schedule(now, wall, wall + hour, unit);
            assert_eq!(t.expires, now + hour);
            assert!(t.renew_at >= now + lo && t.renew_at <= now + hi, "{unit}");
        }
        let mid = SvidTimes::schedule(now, wall, wall + hour, 0.5);
        assert_eq!(mid.renew_at, now + hour / 2);
        assert_eq!(
            SvidTimes::schedule(now, wall, wall + hour, 0.0).renew_at,
            now + Duration::from_secs(1620)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_already_expired_svid_is_expired_and_due() {
        let now = Instant::now();
        let wall = SystemTime::now();
        let t = SvidTimes::schedule(now, wall, wall - Duration::from_secs(5), 0.5);
        assert!(t.is_expired(now));
        assert!(t.renewal_due(now));
        let fresh = SvidTimes::schedule(now, wall, wall + Duration::from_secs(10), 0.5);
        assert!(!fresh.is_expired(now) && !fresh.renewal_due(now));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(fresh.renewal_due(Instant::now()) && !fresh.is_expired(Instant::now()));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(fresh.is_expired(Instant::now()));
    }
}
