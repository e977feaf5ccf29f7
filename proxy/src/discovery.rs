//! The proxy's discovery client: asks the agent's `lanyard.discovery.v1.Discovery` service
//! (same Unix socket as the Workload API) what is behind a transparent destination, and keeps
//! the answers it used fresh.
//!
//! - The first lookup of a destination is a `Resolve` bounded by [`DiscoverySettings::resolve_timeout`];
//!   its answer is cached and a `Watch` task keeps it current.
//! - While the watch is down (agent unreachable) the cached answer is used for
//!   [`DiscoverySettings::stale_ttl`]; the agent itself ends a watch whose answer expired.
//! - Entries unused for [`DiscoverySettings::idle`] are dropped (their watch with them); at most
//!   [`DiscoverySettings::max_entries`] are cached, beyond that answers are used uncached.
//! - Never a silent downgrade: once a destination answered `MeshedPod`, a later `UnmeshedPod`
//!   is refused (logged; connections fail), and `Unknown` (the pod is gone) or an expired
//!   answer refuse connections rather than sending plaintext. A Service endpoint once listed
//!   meshed and then listed unmeshed is left out of the Service's endpoints.
//!
//! - Why a watch ended is read from the agent's `lanyard-discovery-refusal` trailer (see
//!   `Discovery` in `discovery.proto`) into a [`WatchEnd`]: `expired` means the agent's own
//!   answer outlived its TTL, so the cached answer is dropped (refused if it was meshed); any
//!   other end, including a bare `Unavailable`, is a lost stream: the answer stays usable for
//!   the stale TTL while the watch is reopened. The status message is never parsed.
//! - Lookups are counted by [`LookupOutcome`] in `lanyard_proxy_discovery_lookups_total`.
//!
//! The `workload.spiffe.io` header is not sent: the agent's Discovery service does not need it.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use lanyard_proto::discovery::v1 as wire;
use lanyard_proto::discovery::v1::discovery_client::DiscoveryClient as WireClient;
use lanyard_svid::SpiffeId;
use tokio::net::UnixStream;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::metrics::ProxyMetrics;

/// The agent's response metadata naming why it refused a call or ended a `Watch`, and its
/// value for an expired answer (the wire crate's, shared with the agent).
pub use lanyard_proto::discovery::{REFUSAL_EXPIRED, REFUSAL_TRAILER};

/// Largest answer accepted (the agent sends at most 4 MiB).
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;
/// Endpoints kept from one Service answer.
const MAX_ENDPOINTS: usize = 2048;
/// Endpoint addresses remembered as once meshed, per Service.
const MAX_REMEMBERED_MESHED: usize = 4096;
/// Recently failed endpoints remembered.
const MAX_FAILED: usize = 4096;

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

/// One ready endpoint of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEndpoint {
    pub addr: SocketAddr,
    /// The ID it must present; `None` for an unmeshed endpoint.
    pub id: Option<SpiffeId>,
}

/// What is behind a destination, as the proxy uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    MeshedPod(SpiffeId),
    Service(Vec<ServiceEndpoint>),
    UnmeshedPod,
    Unknown,
}

/// Why a lookup gave no usable answer. `Display` is the metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// The agent could not be asked or did not answer (no cached answer either).
    #[error("discovery_unavailable")]
    Unavailable(String),
    /// A destination known as meshed was answered unmeshed: refused, not downgraded.
    #[error("meshed_downgrade_refused")]
    DowngradeRefused,
    /// A destination known as meshed is gone (pod deleted) or its answer expired.
    #[error("meshed_destination_gone")]
    MeshedGone,
    /// The agent's answer cannot be used.
    #[error("bad_discovery_answer")]
    BadAnswer(String),
}

impl DiscoveryError {
    pub fn message(&self) -> String {
        match self {
            Self::Unavailable(why) => format!("discovery gave no answer: {why}"),
            Self::DowngradeRefused => {
                "the destination was meshed and is now answered unmeshed; refusing plaintext".into()
            }
            Self::MeshedGone => {
                "the destination was meshed and is gone or its answer expired; refusing plaintext"
                    .into()
            }
            Self::BadAnswer(why) => format!("unusable discovery answer: {why}"),
        }
    }
}

/// How a lookup was answered. `Display` is the metric label: `cached`, `resolved`, or the
/// [`DiscoveryError`] label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupOutcome<'a> {
    /// From the cache (kept current by a watch).
    Cached,
    /// By a `Resolve` call to the agent.
    Resolved,
    Failed(&'a DiscoveryError),
}

impl std::fmt::Display for LookupOutcome<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cached => f.write_str("cached"),
            Self::Resolved => f.write_str("resolved"),
            Self::Failed(e) => e.fmt(f),
        }
    }
}

/// Why the agent ended a `Watch` or refused to open one, as the proxy acts on it. `Display`
/// is a short label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WatchEnd {
    /// The agent's answer expired (its server unreachable past the agent's TTL): the cached
    /// answer must not be used any longer.
    #[error("expired")]
    Expired,
    /// The stream was lost or refused for any other reason (the agent restarting, the
    /// socket gone, a refusal without the trailer): the cached answer stays usable for the
    /// stale TTL while the watch is reopened.
    #[error("lost")]
    Lost,
}

impl WatchEnd {
    /// Reads the agent's [`REFUSAL_TRAILER`]; never the status message.
    pub fn from_status(status: &tonic::Status) -> Self {
        let label = status
            .metadata()
            .get(REFUSAL_TRAILER)
            .and_then(|v| v.to_str().ok());
        if label == Some(REFUSAL_EXPIRED) {
            Self::Expired
        } else {
            Self::Lost
        }
    }
}

/// A cached destination.
struct Entry {
    /// The answer in force, or why none is usable.
    state: Result<Answer, DiscoveryError>,
    /// Once `MeshedPod`: stays true for the entry's life.
    was_meshed: bool,
    /// Service endpoint addresses once listed meshed.
    meshed_endpoints: HashSet<SocketAddr>,
    last_used: Instant,
    /// Set while the watch is down: the answer is usable until then.
    stale_at: Option<Instant>,
    /// Round-robin position for Services.
    next: Arc<AtomicUsize>,
}

impl Entry {
    fn new(now: Instant) -> Self {
        Self {
            state: Err(DiscoveryError::Unavailable("not answered yet".into())),
            was_meshed: false,
            meshed_endpoints: HashSet::new(),
            last_used: now,
            stale_at: None,
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Applies a new answer under the no-downgrade rules.
    fn apply(&mut self, dst: SocketAddr, answer: Answer) {
        self.stale_at = None;
        self.state = match answer {
            Answer::MeshedPod(id) => {
                self.was_meshed = true;
                Ok(Answer::MeshedPod(id))
            }
            Answer::UnmeshedPod if self.was_meshed => {
                tracing::warn!(%dst, "discovery answered a meshed destination unmeshed; refusing connections to it");
                Err(DiscoveryError::DowngradeRefused)
            }
            Answer::Unknown if self.was_meshed => {
                tracing::info!(%dst, "a meshed destination is gone; refusing connections to it");
                Err(DiscoveryError::MeshedGone)
            }
            Answer::Service(endpoints) => {
                let mut kept = Vec::with_capacity(endpoints.len());
                for endpoint in endpoints {
                    if endpoint.id.is_some() {
                        if self.meshed_endpoints.len() < MAX_REMEMBERED_MESHED {
                            self.meshed_endpoints.insert(endpoint.addr);
                        }
                    } else if self.meshed_endpoints.contains(&endpoint.addr) {
                        tracing::warn!(%dst, endpoint = %endpoint.addr, "a meshed Service endpoint is now listed unmeshed; leaving it out");
                        continue;
                    }
                    kept.push(endpoint);
                }
                Ok(Answer::Service(kept))
            }
            other => Ok(other),
        };
    }

    fn expire(&mut self) {
        if self.was_meshed {
            self.state = Err(DiscoveryError::MeshedGone);
        }
    }

    fn current(&self, now: Instant) -> Option<Result<Answer, DiscoveryError>> {
        if self.stale_at.is_some_and(|at| at <= now) {
            return self.was_meshed.then_some(Err(DiscoveryError::MeshedGone));
        }
        Some(self.state.clone())
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
    channel: Channel,
    entries: Mutex<HashMap<SocketAddr, Entry>>,
    failed: Mutex<HashMap<SocketAddr, Instant>>,
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
        let connector = tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { UnixStream::connect(socket).await.map(TokioIo::new) }
        });
        // The URI is a placeholder: the connector dials the socket.
        let channel =
            Endpoint::from_static("http://localhost").connect_with_connector_lazy(connector);
        Self {
            shared: Arc::new(Shared {
                settings,
                metrics,
                channel,
                entries: Mutex::new(HashMap::new()),
                failed: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn wire(&self) -> WireClient<Channel> {
        WireClient::new(self.shared.channel.clone()).max_decoding_message_size(MAX_ANSWER_BYTES)
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
        let answer = match self.resolve(dst).await {
            Ok(answer) => answer,
            Err(e) => return (Err(e), true),
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
        tokio::spawn(watch_entry(self.shared.clone(), self.wire(), dst));
        (state.map(|answer| Lookup { answer, next }), true)
    }

    async fn resolve(&self, dst: SocketAddr) -> Result<Answer, DiscoveryError> {
        let mut client = self.wire();
        let call = client.resolve(request(dst));
        match tokio::time::timeout(self.shared.settings.resolve_timeout, call).await {
            Err(_) => Err(DiscoveryError::Unavailable("resolve timed out".into())),
            Ok(Err(status)) => Err(DiscoveryError::Unavailable(format!(
                "{:?}: {}",
                status.code(),
                status.message()
            ))),
            Ok(Ok(response)) => answer_from_wire(response.into_inner()),
        }
    }

    /// Picks the next endpoint of a Service lookup in round-robin order, skipping endpoints
    /// whose connect failed within the cooldown (unless all did).
    pub fn pick(&self, lookup: &Lookup, skip: &[SocketAddr]) -> Option<ServiceEndpoint> {
        let Answer::Service(endpoints) = &lookup.answer else {
            return None;
        };
        let candidates: Vec<&ServiceEndpoint> = endpoints
            .iter()
            .filter(|e| !skip.contains(&e.addr))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let now = Instant::now();
        let cooldown = self.shared.settings.failure_cooldown;
        let failed = self.shared.failed.lock().expect("discovery failures");
        let start = lookup.next.fetch_add(1, Ordering::Relaxed);
        let healthy = (0..candidates.len())
            .map(|i| candidates[(start + i) % candidates.len()])
            .find(|e| failed.get(&e.addr).is_none_or(|at| *at + cooldown <= now));
        Some(
            healthy
                .unwrap_or(candidates[start % candidates.len()])
                .clone(),
        )
    }

    /// Records a failed connect to `addr` (skipped by [`Self::pick`] for the cooldown).
    pub fn connect_failed(&self, addr: SocketAddr) {
        let now = Instant::now();
        let cooldown = self.shared.settings.failure_cooldown;
        let mut failed = self.shared.failed.lock().expect("discovery failures");
        if failed.len() >= MAX_FAILED {
            failed.retain(|_, at| *at + cooldown > now);
        }
        if failed.len() < MAX_FAILED {
            failed.insert(addr, now);
        }
    }

    /// Records a successful connect to `addr`.
    pub fn connect_succeeded(&self, addr: SocketAddr) {
        self.shared
            .failed
            .lock()
            .expect("discovery failures")
            .remove(&addr);
    }
}

fn request(dst: SocketAddr) -> wire::ResolveRequest {
    wire::ResolveRequest {
        destination: Some(wire::Destination {
            address: dst.ip().to_string(),
            port: u32::from(dst.port()),
        }),
    }
}

/// The proxy's view of a wire answer.
pub fn answer_from_wire(response: wire::ResolveResponse) -> Result<Answer, DiscoveryError> {
    use wire::resolution::Kind;
    let bad = |why: String| DiscoveryError::BadAnswer(why);
    let kind = response
        .resolution
        .and_then(|r| r.kind)
        .ok_or_else(|| bad("no resolution".into()))?;
    Ok(match kind {
        Kind::MeshedPod(pod) => Answer::MeshedPod(
            SpiffeId::parse(&pod.spiffe_id)
                .map_err(|e| bad(format!("meshed pod ID {:?}: {e}", pod.spiffe_id)))?,
        ),
        Kind::UnmeshedPod(_) => Answer::UnmeshedPod,
        Kind::Unknown(_) => Answer::Unknown,
        Kind::Service(service) => {
            let mut endpoints = Vec::new();
            for e in service.endpoints.into_iter().take(MAX_ENDPOINTS) {
                let ip: IpAddr = e
                    .address
                    .parse()
                    .map_err(|_| bad(format!("endpoint address {:?}", e.address)))?;
                let port = u16::try_from(e.port)
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| bad(format!("endpoint port {}", e.port)))?;
                let id = if e.meshed {
                    Some(
                        SpiffeId::parse(&e.spiffe_id)
                            .map_err(|err| bad(format!("endpoint ID {:?}: {err}", e.spiffe_id)))?,
                    )
                } else {
                    None
                };
                endpoints.push(ServiceEndpoint {
                    addr: SocketAddr::new(ip, port),
                    id,
                });
            }
            Answer::Service(endpoints)
        }
    })
}

/// Why a watch session ended.
enum SessionEnd {
    /// The entry went idle or was removed: stop watching.
    Done,
    /// The agent ended or refused the stream.
    Ended(WatchEnd),
}

/// Keeps `dst`'s entry current until it goes idle.
async fn watch_entry(shared: Arc<Shared>, mut client: WireClient<Channel>, dst: SocketAddr) {
    loop {
        let end = watch_session(&shared, &mut client, dst).await;
        let now = Instant::now();
        {
            let mut entries = shared.entries.lock().expect("discovery cache");
            let Some(entry) = entries.get_mut(&dst) else {
                return;
            };
            match end {
                SessionEnd::Done => {
                    entries.remove(&dst);
                    return;
                }
                SessionEnd::Ended(WatchEnd::Expired) => {
                    if entry.was_meshed {
                        entry.expire();
                    } else {
                        entries.remove(&dst);
                        return;
                    }
                }
                SessionEnd::Ended(WatchEnd::Lost) => {
                    entry
                        .stale_at
                        .get_or_insert(now + shared.settings.stale_ttl);
                }
            }
        }
        tokio::time::sleep(shared.settings.rewatch_delay).await;
        if idle(&shared, dst) {
            shared.entries.lock().expect("discovery cache").remove(&dst);
            return;
        }
    }
}

/// True when `dst` is not cached or has not been used for the idle time.
fn idle(shared: &Shared, dst: SocketAddr) -> bool {
    let entries = shared.entries.lock().expect("discovery cache");
    entries
        .get(&dst)
        .is_none_or(|e| e.last_used + shared.settings.idle <= Instant::now())
}

async fn watch_session(
    shared: &Shared,
    client: &mut WireClient<Channel>,
    dst: SocketAddr,
) -> SessionEnd {
    let mut stream = match client.watch(request(dst)).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            let end = WatchEnd::from_status(&status);
            tracing::debug!(%dst, %end, code = ?status.code(), message = status.message(), "discovery watch refused");
            return SessionEnd::Ended(end);
        }
    };
    loop {
        let check = tokio::time::sleep(shared.settings.idle);
        tokio::select! {
            message = stream.message() => match message {
                Ok(Some(response)) => match answer_from_wire(response) {
                    Ok(answer) => {
                        let mut entries = shared.entries.lock().expect("discovery cache");
                        let Some(entry) = entries.get_mut(&dst) else { return SessionEnd::Done };
                        entry.apply(dst, answer);
                    }
                    Err(e) => tracing::warn!(%dst, reason = %e, detail = %e.message(), "ignoring a discovery update"),
                },
                Ok(None) => return SessionEnd::Ended(WatchEnd::Lost),
                Err(status) => {
                    let end = WatchEnd::from_status(&status);
                    tracing::debug!(%dst, %end, code = ?status.code(), message = status.message(), "discovery watch ended");
                    return SessionEnd::Ended(end);
                }
            },
            () = check => {
                if idle(shared, dst) {
                    return SessionEnd::Done;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> SpiffeId {
        SpiffeId::parse(text).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_answer_is_used_until_the_ttl_then_refused_if_it_was_meshed() {
        let dst: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let ttl = Duration::from_secs(60);
        let mut meshed = Entry::new(Instant::now());
        meshed.apply(dst, Answer::MeshedPod(id("spiffe://td/a")));
        let mut plain = Entry::new(Instant::now());
        plain.apply(dst, Answer::UnmeshedPod);
        for entry in [&mut meshed, &mut plain] {
            entry.stale_at = Some(Instant::now() + ttl);
        }
        tokio::time::advance(ttl - Duration::from_secs(1)).await;
        let now = Instant::now();
        assert_eq!(
            meshed.current(now),
            Some(Ok(Answer::MeshedPod(id("spiffe://td/a"))))
        );
        assert_eq!(plain.current(now), Some(Ok(Answer::UnmeshedPod)));
        tokio::time::advance(Duration::from_secs(1)).await;
        let now = Instant::now();
        assert_eq!(meshed.current(now), Some(Err(DiscoveryError::MeshedGone)));
        assert_eq!(plain.current(now), None, "forgotten: asked again");
        // A fresh answer clears the staleness.
        meshed.apply(dst, Answer::MeshedPod(id("spiffe://td/b")));
        assert_eq!(
            meshed.current(now),
            Some(Ok(Answer::MeshedPod(id("spiffe://td/b"))))
        );
    }

    #[test]
    fn only_the_expired_trailer_means_expired() {
        let with_trailer = |code, message: &str, label: &str| {
            let mut status = tonic::Status::new(code, message);
            status
                .metadata_mut()
                .insert(REFUSAL_TRAILER, label.parse().unwrap());
            status
        };
        assert_eq!(
            REFUSAL_TRAILER, "lanyard-discovery-refusal",
            "the documented key"
        );
        let expired = with_trailer(tonic::Code::Unavailable, "whatever", "expired");
        assert_eq!(WatchEnd::from_status(&expired), WatchEnd::Expired);
        // The message is for people: a bare Unavailable is a lost stream, whatever it says.
        for status in [
            tonic::Status::unavailable("expired: the cached answer expired"),
            tonic::Status::unavailable("connection reset"),
            with_trailer(tonic::Code::Unavailable, "expired", "shutting_down"),
            with_trailer(tonic::Code::Unavailable, "", "expired_or_not"),
        ] {
            assert_eq!(WatchEnd::from_status(&status), WatchEnd::Lost, "{status:?}");
        }
    }

    #[test]
    fn lookup_outcomes_are_labelled() {
        assert_eq!(LookupOutcome::Cached.to_string(), "cached");
        assert_eq!(LookupOutcome::Resolved.to_string(), "resolved");
        assert_eq!(
            LookupOutcome::Failed(&DiscoveryError::MeshedGone).to_string(),
            "meshed_destination_gone"
        );
        assert_eq!(
            LookupOutcome::Failed(&DiscoveryError::Unavailable("x".into())).to_string(),
            "discovery_unavailable"
        );
    }

    #[test]
    fn bad_answers_are_refused() {
        let wire_answer = |kind| wire::ResolveResponse {
            destination: None,
            resolution: Some(wire::Resolution { kind: Some(kind) }),
        };
        use wire::resolution::Kind;
        let bad_id = Kind::MeshedPod(wire::MeshedPod {
            spiffe_id: "not an id".into(),
            ..Default::default()
        });
        let bad_port = Kind::Service(wire::Service {
            endpoints: vec![wire::Endpoint {
                address: "10.0.0.1".into(),
                port: 70000,
                ..Default::default()
            }],
            ..Default::default()
        });
        for kind in [bad_id, bad_port] {
            let err = answer_from_wire(wire_answer(kind)).unwrap_err();
            assert_eq!(err.to_string(), "bad_discovery_answer");
        }
        let empty = wire::ResolveResponse::default();
        assert!(answer_from_wire(empty).is_err());
    }
}
