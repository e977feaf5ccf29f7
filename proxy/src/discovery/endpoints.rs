//! Choosing a Service endpoint: round robin over the answer's endpoints, skipping those whose
//! connect failed within the cooldown (unless all did).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::ServiceEndpoint;

/// Recently failed endpoints remembered.
const MAX_FAILED: usize = 4096;

/// Endpoints whose connect failed recently, and when.
pub(super) struct FailedEndpoints {
    cooldown: Duration,
    failed: Mutex<HashMap<SocketAddr, Instant>>,
}

impl FailedEndpoints {
    pub(super) fn new(cooldown: Duration) -> Self {
        Self {
            cooldown,
            failed: Mutex::new(HashMap::new()),
        }
    }

    /// The next of `endpoints` (not in `skip`) from the round-robin position `next`,
    /// preferring one that did not fail within the cooldown.
    pub(super) fn pick(
        &self,
        endpoints: &[ServiceEndpoint],
        next: &AtomicUsize,
        skip: &[SocketAddr],
    ) -> Option<ServiceEndpoint> {
        let candidates: Vec<&ServiceEndpoint> = endpoints
            .iter()
            .filter(|e| !skip.contains(&e.addr))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let now = Instant::now();
        let failed = self.failed.lock().expect("discovery failures");
        let start = next.fetch_add(1, Ordering::Relaxed);
        let healthy = (0..candidates.len())
            .map(|i| candidates[(start + i) % candidates.len()])
            .find(|e| {
                failed
                    .get(&e.addr)
                    .is_none_or(|at| *at + self.cooldown <= now)
            });
        Some(
            healthy
                .unwrap_or(candidates[start % candidates.len()])
                .clone(),
        )
    }

    pub(super) fn failed(&self, addr: SocketAddr) {
        let now = Instant::now();
        let mut failed = self.failed.lock().expect("discovery failures");
        if failed.len() >= MAX_FAILED {
            failed.retain(|_, at| *at + self.cooldown > now);
        }
        if failed.len() < MAX_FAILED {
            failed.insert(addr, now);
        }
    }

    pub(super) fn succeeded(&self, addr: SocketAddr) {
        self.failed
            .lock()
            .expect("discovery failures")
            .remove(&addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(addr: &str) -> ServiceEndpoint {
        ServiceEndpoint {
            addr: addr.parse().unwrap(),
            id: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn round_robin_skips_recent_failures_until_the_cooldown() {
        let endpoints = [endpoint("10.0.0.1:80"), endpoint("10.0.0.2:80")];
        let failures = FailedEndpoints::new(Duration::from_secs(10));
        let next = AtomicUsize::new(0);
        let pick = |skip: &[SocketAddr]| failures.pick(&endpoints, &next, skip).unwrap().addr;
        assert_eq!(pick(&[]), endpoints[0].addr);
        assert_eq!(pick(&[]), endpoints[1].addr);
        failures.failed(endpoints[0].addr);
        assert_eq!(pick(&[]), endpoints[1].addr, "the failed one is skipped");
        assert_eq!(pick(&[]), endpoints[1].addr);
        // Only a recently failed endpoint is left: it is still used.
        assert_eq!(pick(&[endpoints[1].addr]), endpoints[0].addr);
        tokio::time::advance(Duration::from_secs(10)).await;
        let mut both = [pick(&[]), pick(&[])];
        both.sort();
        assert_eq!(
            both,
            [endpoints[0].addr, endpoints[1].addr],
            "cooldown over"
        );
        failures.failed(endpoints[1].addr);
        failures.succeeded(endpoints[1].addr);
        let mut both = [pick(&[]), pick(&[])];
        both.sort();
        assert_eq!(
            both,
            [endpoints[0].addr, endpoints[1].addr],
            "success clears it"
        );
        assert!(
            failures
                .pick(&endpoints, &next, &[endpoints[0].addr, endpoints[1].addr])
                .is_none()
        );
    }
}
