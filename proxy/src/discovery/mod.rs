//! The proxy's use of discovery: what is behind a transparent destination, asked of the
//! agent's `lanyard.discovery.v1.Discovery` service through [`lanyard_client::discovery`],
//! cached and kept fresh under the proxy's rules.
//!
//! - The first lookup of a destination is a `Resolve` bounded by [`DiscoverySettings::resolve_timeout`];
//!   its answer is cached and a `Watch` task ([`watch`]) keeps it current.
//! - While the watch is down (agent unreachable) the cached answer is used for
//!   [`DiscoverySettings::stale_ttl`]; the agent itself ends a watch whose answer expired.
//! - Entries unused for [`DiscoverySettings::idle`] are dropped (their watch with them); at most
//!   [`DiscoverySettings::max_entries`] are cached, beyond that answers are used uncached.
//! - Never a silent downgrade ([`entry`]): once a destination answered `MeshedPod`, a later
//!   `UnmeshedPod` is refused (logged; connections fail), and `Unknown` (the pod is gone) or an
//!   expired answer refuse connections rather than sending plaintext. A Service endpoint once
//!   listed meshed and then listed unmeshed is left out of the Service's endpoints.
//! - Why a watch ended is the agent's `lanyard-discovery-refusal` trailer, read by
//!   [`WatchEnd::from_status`]: `expired` drops the cached answer (refused if it was meshed);
//!   any other end is a lost stream: the answer stays usable for the stale TTL while the watch
//!   is reopened. The status message is never parsed.
//! - No answer is never taken for "not meshed": a failed lookup (the agent unreachable or
//!   timed out: [`DiscoveryError::Unavailable`]; a refusal carrying the agent's trailer, e.g.
//!   `too_many_destinations`: [`DiscoveryError::Refused`]) makes the outbound path close the
//!   connection (`discovery_refused`). Only an authoritative `UnmeshedPod` or `Unknown` answer
//!   gives plaintext.
//! - Service endpoints are picked round robin, skipping recent connect failures ([`endpoints`]).
//! - Lookups are counted by [`LookupOutcome`] in `lanyard_proxy_discovery_lookups_total`.

mod endpoints;
mod entry;
mod error;
mod watch;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lanyard_client::discovery::Discovery;
use tokio::time::Instant;

use crate::metrics::ProxyMetrics;
use endpoints::FailedEndpoints;
use entry::Entry;

pub use error::{DiscoveryError, LookupOutcome};
pub use lanyard_client::discovery::{
    Answer, REFUSAL_EXPIRED, REFUSAL_TRAILER, ServiceEndpoint, WatchEnd,
};

/// Timings and bounds.
#[derive(Debug, Clone)]
pub struct DiscoverySettings {
    /// A first lookup waits at most this long (the agent waits up to 3 s for the server).
    pub resolve_timeout: Duration,
    /// How long a cached answer is used while its watch is down.
    pub stale_ttl: Duration,
    /// An entry not looked up for this long is dropped.
    pub idle: Duration,
    /// Cached destinations.
    pub max_entries: usize,
    /// An endpoint whose connect failed is skipped for this long.
    pub failure_cooldown: Duration,
    /// Delay before reopening a lost watch.
    pub rewatch_delay: Duration,
}

impl Default for DiscoverySettings {
    fn default() -> Self {
        Self {
            resolve_timeout: Duration::from_secs(4),
            stale_ttl: Duration::from_secs(300),
            idle: Duration::from_secs(600),
            max_entries: 1024,
            failure_cooldown: Duration::from_secs(10),
            rewatch_delay: Duration::from_secs(1),
        }
    }
}

/// A Service answer plus where its round robin stands.
#[derive(Debug, Clone)]
pub struct Lookup {
    pub answer: Answer,
    next: Arc<AtomicUsize>,
}

struct Shared {
    settings: DiscoverySettings,
    metrics: Arc<ProxyMetrics>,
    agent: Discovery,
    entries: Mutex<HashMap<SocketAddr, Entry>>,
    failed: FailedEndpoints,
}

/// The discovery client; cheap to clone.
#[derive(Clone)]
pub struct DiscoveryClient {
    shared: Arc<Shared>,
}

impl DiscoveryClient {
    /// A client of the agent at `socket` (connects lazily, reconnects as needed), counting
    /// in metrics registered nowhere.
    pub fn new(socket: PathBuf, settings: DiscoverySettings) -> Self {
        Self::with_metrics(socket, settings, Arc::new(ProxyMetrics::default()))
    }

    /// [`Self::new`], counting lookups in `metrics`.
    pub fn with_metrics(
        socket: PathBuf,
        settings: DiscoverySettings,
        metrics: Arc<ProxyMetrics>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                failed: FailedEndpoints::new(settings.failure_cooldown),
                settings,
                metrics,
                agent: Discovery::lazy(&socket),
                entries: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Destinations cached now.
    pub fn cached(&self) -> usize {
        self.shared.entries.lock().expect("discovery cache").len()
    }

    /// What is behind `dst`: from the cache, else a bounded `Resolve` (cached and then
    /// watched). Counted by [`LookupOutcome`].
    pub async fn lookup(&self, dst: SocketAddr) -> Result<Lookup, DiscoveryError> {
        let (result, resolved) = self.lookup_uncounted(dst).await;
        let outcome = match &result {
            Err(e) => LookupOutcome::Failed(e),
            Ok(_) if resolved => LookupOutcome::Resolved,
            Ok(_) => LookupOutcome::Cached,
        };
        self.shared.metrics.discovery_lookup(outcome);
        result
    }

    /// [`Self::lookup`], and whether a `Resolve` call was made.
    async fn lookup_uncounted(&self, dst: SocketAddr) -> (Result<Lookup, DiscoveryError>, bool) {
        let now = Instant::now();
        {
            let mut entries = self.shared.entries.lock().expect("discovery cache");
            if let Some(entry) = entries.get_mut(&dst) {
                match entry.current(now) {
                    Some(state) => {
                        entry.last_used = now;
                        let next = entry.next.clone();
                        return (state.map(|answer| Lookup { answer, next }), false);
                    }
                    // Expired and never meshed: forget it and ask again.
                    None => {
                        entries.remove(&dst);
                    }
                }
            }
        }
        let answer = match self
            .shared
            .agent
            .resolve(dst, self.shared.settings.resolve_timeout)
            .await
        {
            Ok(answer) => answer,
            Err(e) => return (Err(e.into()), true),
        };
        let mut entries = self.shared.entries.lock().expect("discovery cache");
        if let Some(entry) = entries.get_mut(&dst) {
            // Another connection cached it meanwhile; its watch keeps it current.
            entry.last_used = now;
            let next = entry.next.clone();
            return (
                entry.state.clone().map(|answer| Lookup { answer, next }),
                true,
            );
        }
        let next = Arc::new(AtomicUsize::new(0));
        if entries.len() >= self.shared.settings.max_entries {
            tracing::debug!(%dst, "discovery cache full; using the answer uncached");
            return (Ok(Lookup { answer, next }), true);
        }
        let mut entry = Entry::new(now);
        entry.apply(dst, answer);
        let state = entry.state.clone();
        let next = entry.next.clone();
        entries.insert(dst, entry);
        drop(entries);
        tokio::spawn(watch::watch_entry(self.shared.clone(), dst));
        (state.map(|answer| Lookup { answer, next }), true)
    }

    /// Picks the next endpoint of a Service lookup in round-robin order, skipping endpoints
    /// whose connect failed within the cooldown (unless all did).
    pub fn pick(&self, lookup: &Lookup, skip: &[SocketAddr]) -> Option<ServiceEndpoint> {
        let Answer::Service(endpoints) = &lookup.answer else {
            return None;
        };
        self.shared.failed.pick(endpoints, &lookup.next, skip)
    }

    /// Records a failed connect to `addr` (skipped by [`Self::pick`] for the cooldown).
    pub fn connect_failed(&self, addr: SocketAddr) {
        self.shared.failed.failed(addr);
    }

    /// Records a successful connect to `addr`.
    pub fn connect_succeeded(&self, addr: SocketAddr) {
        self.shared.failed.succeeded(addr);
    }
}
