//! Per-caller rate limiting: a token bucket per key (a node name, or a peer address before
//! attestation), so one misbehaving agent cannot starve the others of signing capacity.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Keys tracked at most; past this, idle buckets are dropped (a full bucket is the default).
const MAX_KEYS: usize = 100_000;

pub struct RateLimiter<K> {
    /// Tokens added per second.
    rate: f64,
    /// Bucket size: the burst a fresh caller may spend at once.
    burst: f64,
    buckets: Mutex<HashMap<K, (f64, Instant)>>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    pub fn new(rate_per_sec: f64, burst: u32) -> Self {
        Self {
            rate: rate_per_sec,
            burst: f64::from(burst),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes `cost` tokens from `key`'s bucket; false (and nothing taken) if it has too few.
    pub fn try_acquire(&self, key: &K, cost: u32) -> bool {
        let now = Instant::now();
        let cost = f64::from(cost);
        let mut buckets = self.buckets.lock().expect("rate limiter lock");
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            let full_after = Duration::from_secs_f64(self.burst / self.rate);
            buckets.retain(|_, (_, at)| now.duration_since(*at) < full_after);
        }
        let (tokens, last) = buckets.entry(key.clone()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.burst);
        *last = now;
        if *tokens >= cost {
            *tokens -= cost;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bursts_then_refills_at_the_rate() {
        let limiter = RateLimiter::new(10.0, 5);
        for _ in 0..5 {
            assert!(limiter.try_acquire(&"a", 1));
        }
        assert!(!limiter.try_acquire(&"a", 1));
        // Another caller is unaffected.
        assert!(limiter.try_acquire(&"b", 5));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(limiter.try_acquire(&"a", 1));
        assert!(!limiter.try_acquire(&"a", 1));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(limiter.try_acquire(&"a", 5), "refills up to the burst");
        assert!(!limiter.try_acquire(&"a", 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cost_above_the_burst_never_passes() {
        let limiter = RateLimiter::new(1.0, 3);
        assert!(!limiter.try_acquire(&"a", 4));
        assert!(limiter.try_acquire(&"a", 3));
    }
}
