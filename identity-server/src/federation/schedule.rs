//! When each federated trust domain's bundle is fetched again, and the task that does it.
//!
//! After a good fetch the next one comes after the bundle's `spiffe_refresh_hint`, clamped to
//! [`FetchTiming::min_refresh`, `FetchTiming::max_refresh`] (the default without a hint); after
//! a failed one, after a backoff doubling from [`FetchTiming::backoff_initial`] up to
//! [`FetchTiming::backoff_max`]. A failure never drops the bundle held: it stays until a fetch
//! brings a valid one, or the federation is removed.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lanyard_svid::{TrustBundle, TrustDomain};

use super::FederatedBundles;
use super::fetch::{FetchError, FetchOutcome};
use super::persist;
use crate::metrics::ServerMetrics;

/// The refresh and backoff bounds. [`FetchTiming::default`] is what `lanyard-server run` uses;
/// tests shorten it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchTiming {
    /// Shortest wait after a good fetch, whatever the hint says. Low enough that an operator
    /// can ask for quick propagation (a hint of seconds during a root rotation), high enough
    /// that an endpoint cannot make us poll it in a loop.
    pub min_refresh: Duration,
    /// Longest wait after a good fetch, whatever the hint says.
    pub max_refresh: Duration,
    /// The wait after a good fetch of a bundle without `spiffe_refresh_hint`.
    pub default_refresh: Duration,
    /// The wait after a first failure; it doubles with each further one.
    pub backoff_initial: Duration,
    /// The longest wait after failures.
    pub backoff_max: Duration,
}

impl Default for FetchTiming {
    fn default() -> Self {
        Self {
            min_refresh: Duration::from_secs(5),
            max_refresh: Duration::from_secs(3600),
            default_refresh: Duration::from_secs(300),
            backoff_initial: Duration::from_secs(5),
            backoff_max: Duration::from_secs(300),
        }
    }
}

impl FetchTiming {
    /// The wait after a good fetch of a bundle with `hint`.
    pub fn after_success(&self, hint: Option<Duration>) -> Duration {
        hint.unwrap_or(self.default_refresh)
            .clamp(self.min_refresh, self.max_refresh.max(self.min_refresh))
    }
}

/// Consecutive failures' waits: `backoff_initial`, doubled each time, capped at `backoff_max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    timing: FetchTiming,
    next: Duration,
}

impl Backoff {
    pub fn new(timing: FetchTiming) -> Self {
        Self {
            timing,
            next: timing.backoff_initial,
        }
    }

    /// The wait after one more failure.
    pub fn after_failure(&mut self) -> Duration {
        let wait = self.next.min(self.timing.backoff_max);
        self.next = (wait * 2).min(self.timing.backoff_max);
        wait
    }

    /// A good fetch: the next failure starts over.
    pub fn reset(&mut self) {
        self.next = self.timing.backoff_initial;
    }
}

/// One fetch of a trust domain's bundle, given the bundle held for it (which authenticates an
/// `https_spiffe` endpoint). [`super::fetch::Fetcher`] is the real one.
pub trait Fetch: Send + Sync + 'static {
    fn fetch(
        &self,
        held: Option<&TrustBundle>,
    ) -> impl Future<Output = Result<TrustBundle, FetchError>> + Send;
}

/// Where a fetched bundle goes: the bundles agents receive, the metrics, and in data-dir mode
/// `<data-dir>/federation/<td>.json`.
#[derive(Clone)]
pub struct Sink {
    pub federated: FederatedBundles,
    pub metrics: Option<Arc<ServerMetrics>>,
    /// Data-dir mode: the directory fetched bundles are kept in across restarts.
    pub persist_dir: Option<PathBuf>,
}

impl Sink {
    fn record(&self, trust_domain: &TrustDomain, outcome: FetchOutcome) {
        if let Some(metrics) = &self.metrics {
            metrics.federation_fetched(trust_domain, outcome);
        }
    }

    fn accept(&self, bundle: &TrustBundle) {
        let trust_domain = bundle.trust_domain();
        if let Some(dir) = &self.persist_dir
            && let Err(e) = persist::save(dir, bundle)
        {
            // Still served: only a restart before the next good fetch loses it.
            tracing::warn!(trust_domain = %trust_domain, error = %e, "cannot keep the fetched federated bundle in the data dir");
        }
        if let Some(metrics) = &self.metrics {
            metrics.set_federated_bundle(trust_domain, bundle.sequence(), SystemTime::now());
        }
        self.federated.insert(bundle.clone());
    }
}

/// Fetches `trust_domain`'s bundle forever, starting from `held` (the bundle kept from before,
/// else the bootstrap bundle, else none).
pub async fn run_domain<F: Fetch>(
    trust_domain: TrustDomain,
    fetcher: F,
    mut held: Option<TrustBundle>,
    timing: FetchTiming,
    sink: Sink,
) {
    let mut backoff = Backoff::new(timing);
    loop {
        let wait = match fetcher.fetch(held.as_ref()).await {
            Ok(bundle) => {
                sink.record(&trust_domain, FetchOutcome::Ok);
                let wait = timing.after_success(bundle.refresh_hint());
                if held.as_ref() != Some(&bundle) {
                    tracing::info!(
                        trust_domain = %trust_domain,
                        sequence = bundle.sequence(),
                        x509_authorities = bundle.x509_authorities().len(),
                        jwt_authorities = bundle.jwt_authorities().len(),
                        "federated bundle fetched"
                    );
                }
                sink.accept(&bundle);
                held = Some(bundle);
                backoff.reset();
                wait
            }
            Err(e) => {
                let outcome = e.outcome();
                sink.record(&trust_domain, outcome);
                let wait = backoff.after_failure();
                tracing::warn!(
                    trust_domain = %trust_domain,
                    reason = %outcome,
                    error = %e,
                    retry_in = ?wait,
                    keeping = held.as_ref().map(|b| b.sequence()),
                    "federated bundle fetch failed; the bundle held stays"
                );
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::time::Instant;

    fn td() -> TrustDomain {
        TrustDomain::new("partner.test").unwrap()
    }

    fn bundle(sequence: u64, hint: Option<Duration>) -> TrustBundle {
        let root =
            lanyard_svid::ca::RootCa::generate(&td(), Duration::from_secs(3600), SystemTime::now())
                .unwrap();
        let mut b = TrustBundle::from_x509_authorities(td(), [root.cert_der().clone()]);
        b.set_sequence(sequence);
        b.set_refresh_hint(hint);
        b
    }

    /// When each fetch happened, and the sequence of the bundle it held.
    type Calls = Arc<Mutex<Vec<(Instant, Option<u64>)>>>;

    /// Scripted results, and the calls made.
    struct Script {
        results: Mutex<Vec<Result<TrustBundle, FetchError>>>,
        calls: Calls,
    }

    impl Fetch for Script {
        async fn fetch(&self, held: Option<&TrustBundle>) -> Result<TrustBundle, FetchError> {
            self.calls
                .lock()
                .unwrap()
                .push((Instant::now(), held.map(|b| b.sequence())));
            let mut results = self.results.lock().unwrap();
            if results.is_empty() {
                return Err(FetchError::Unreachable("script over".into()));
            }
            results.remove(0)
        }
    }

    #[test]
    fn hint_is_clamped_and_defaults() {
        let t = FetchTiming::default();
        assert_eq!(t.after_success(None), Duration::from_secs(300));
        assert_eq!(
            t.after_success(Some(Duration::from_secs(1))),
            Duration::from_secs(5)
        );
        assert_eq!(
            t.after_success(Some(Duration::from_secs(600))),
            Duration::from_secs(600)
        );
        assert_eq!(
            t.after_success(Some(Duration::from_secs(86_400))),
            Duration::from_secs(3600)
        );
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new(FetchTiming::default());
        let waits: Vec<u64> = (0..9).map(|_| b.after_failure().as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        b.reset();
        assert_eq!(b.after_failure(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn fetches_follow_the_hint_and_back_off_keeping_the_bundle() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let script = Script {
            results: Mutex::new(vec![
                Ok(bundle(1, Some(Duration::from_secs(120)))),
                Err(FetchError::Malformed("garbage".into())),
                Err(FetchError::Status(500)),
                Err(FetchError::TooLarge),
                Ok(bundle(2, None)),
                Ok(bundle(3, Some(Duration::from_secs(1)))),
            ]),
            calls: calls.clone(),
        };
        let federated = FederatedBundles::new();
        let sink = Sink {
            federated: federated.clone(),
            metrics: None,
            persist_dir: None,
        };
        let start = Instant::now();
        let task = tokio::spawn(run_domain(td(), script, None, FetchTiming::default(), sink));
        // Seven fetches: the six scripted and one more (5 s after the last, its hint clamped).
        let deadline = start + Duration::from_secs(3600);
        while calls.lock().unwrap().len() < 7 {
            assert!(Instant::now() < deadline, "fetches stalled");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        task.abort();
        let calls = calls.lock().unwrap().clone();
        let at: Vec<u64> = calls.iter().map(|(t, _)| (*t - start).as_secs()).collect();
        // 0: ok (hint 120 s); 120: fail (5 s); 125: fail (10 s); 135: fail (20 s);
        // 155: ok, no hint (300 s); 455: ok, hint 1 s (clamped to 5 s); 460.
        assert_eq!(at, [0, 120, 125, 135, 155, 455, 460]);
        // Each fetch was authenticated with the bundle held: failures kept sequence 1.
        let held: Vec<Option<u64>> = calls.iter().map(|(_, h)| *h).collect();
        assert_eq!(
            held,
            [None, Some(1), Some(1), Some(1), Some(1), Some(2), Some(3)]
        );
        assert_eq!(federated.current().get(&td()).unwrap().sequence(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_keeps_the_bundle_served() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let script = Script {
            results: Mutex::new(vec![
                Ok(bundle(7, None)),
                Err(FetchError::WrongTrustDomain("other.test".into())),
            ]),
            calls: calls.clone(),
        };
        let federated = FederatedBundles::new();
        let mut changes = federated.subscribe();
        let sink = Sink {
            federated: federated.clone(),
            metrics: None,
            persist_dir: None,
        };
        let task = tokio::spawn(run_domain(td(), script, None, FetchTiming::default(), sink));
        changes.changed().await.unwrap();
        while calls.lock().unwrap().len() < 3 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        task.abort();
        assert!(
            !changes.has_changed().unwrap(),
            "failed fetches changed nothing"
        );
        assert_eq!(federated.current().get(&td()).unwrap().sequence(), 7);
    }
}
