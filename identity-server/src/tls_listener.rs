//! The gRPC listener: TCP accepts (backing off when the process is out of descriptors), TLS
//! handshakes in their own tasks (each under a deadline, bounded in total and per source
//! address), and HTTP/2 served per connection with limits that depend on who the peer is.
//!
//! A peer is *authenticated* when its handshake presented a client certificate that verified
//! against our bundle and names an agent of our trust domain. Everyone else (no certificate, or
//! a workload's certificate) may only call `AttestNode`, and that is decided from the request
//! line, before a byte of the body is read. Such connections get few streams, small flow-control
//! windows, a small body limit, an idle timeout and a lifetime, and are bounded in number in
//! total and per source address, so a peer without a node SVID cannot make the server buffer
//! more than a few MiB.
//!
//! The TLS config comes from the live [`lanyard_svid::tls::SvidStore`], so a rotated server SVID
//! or a new bundle applies to the next handshake.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Limited;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use lanyard_svid::TrustDomain;
use lanyard_svid::reserved::parse_agent_id;
use lanyard_svid::x509::X509Svid;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tonic::Status;
use tonic::body::Body;
use tonic::service::Routes;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};
use tower::ServiceExt;

use crate::metrics::ServerMetrics;

/// The one RPC a peer without a node SVID may call.
pub const ATTEST_NODE_PATH: &str = "/lanyard.identity.v1.NodeIdentity/AttestNode";

/// What one listener allows. [`Limits::default`] is what `lanyard-server run` uses.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open connections in any state (handshaking, certless, authenticated). Past it, new
    /// connections wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Handshakes in flight at once; further connections wait in the accept queue.
    pub max_handshakes: usize,
    /// Handshakes in flight from one source address; past it, new ones are closed at once, so
    /// silent peers at one address cannot hold the handshake slots others need.
    pub handshakes_per_source: usize,
    /// A client must finish its handshake in this time.
    pub handshake_timeout: Duration,
    /// Connections without a node SVID, in total and per source address.
    pub max_certless: usize,
    pub certless_per_source: usize,
    /// A connection without a node SVID is closed after this long with no call in progress,
    /// and after `certless_lifetime` regardless.
    pub certless_idle: Duration,
    pub certless_lifetime: Duration,
    /// Concurrent streams and request-body bytes for a connection without a node SVID.
    pub certless_streams: u32,
    pub certless_body_bytes: usize,
    /// Concurrent streams for an agent's connection.
    pub streams: u32,
    pub max_header_list_bytes: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            // Agents hold one or two connections each; this is a fleet of several thousand.
            max_connections: 10_000,
            max_handshakes: 1024,
            // A NAT'ed fleet restarting at once fits (attestations are rate-limited per
            // address to 5/s with a burst of 20 anyway).
            handshakes_per_source: 64,
            handshake_timeout: Duration::from_secs(10),
            // 512 x (2 streams x 32 KiB + 64 KiB window + TLS buffers) stays near 100 MiB.
            max_certless: 512,
            certless_per_source: 32,
            certless_idle: Duration::from_secs(10),
            // Attestation is one unary call (a TokenReview at most); then the agent reconnects
            // with its SVID.
            certless_lifetime: Duration::from_secs(30),
            certless_streams: 2,
            // A projected ServiceAccount token (1-2 KiB) plus a CSR, with room to spare.
            certless_body_bytes: 32 * 1024,
            streams: 256,
            max_header_list_bytes: 16 * 1024,
        }
    }
}

/// Why a connection or a request was refused or closed. `Display` is the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnRefusal {
    #[error("source_handshakes_full")]
    SourceHandshakesFull,
    #[error("handshake_timeout")]
    HandshakeTimeout,
    #[error("certless_connections_full")]
    CertlessFull,
    #[error("source_certless_full")]
    SourceCertlessFull,
    #[error("certless_idle")]
    CertlessIdle,
    #[error("certless_lifetime")]
    CertlessLifetime,
    #[error("no_client_certificate")]
    NoClientCertificate,
    #[error("not_an_agent")]
    NotAnAgent,
}

/// Accept-loop pause after an error that retrying at once cannot fix (out of descriptors,
/// buffers or memory): 100 ms doubling to 1 s, reset by the next successful accept.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    next: Option<Duration>,
    /// Errors since the last one logged.
    suppressed: u64,
    last_log: Option<Instant>,
}

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one accept-error log line per this interval.
const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl AcceptBackoff {
    /// True for errors where the process or system is out of a resource: retrying at once
    /// spins, since the pending connection stays in the queue and the socket stays readable.
    pub fn is_resource_error(e: &std::io::Error) -> bool {
        matches!(
            e.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        )
    }

    /// The pause before the next accept after `e` (zero for errors about one connection).
    pub fn on_error(&mut self, e: &std::io::Error) -> Duration {
        let delay = if Self::is_resource_error(e) {
            let delay = self.next.unwrap_or(BACKOFF_FIRST);
            self.next = Some((delay * 2).min(BACKOFF_MAX));
            delay
        } else {
            Duration::ZERO
        };
        let now = Instant::now();
        if self
            .last_log
            .is_none_or(|at| now.duration_since(at) >= ACCEPT_LOG_INTERVAL)
        {
            tracing::warn!(error = %e, suppressed = self.suppressed, pause_ms = delay.as_millis() as u64, "accept failed");
            self.last_log = Some(now);
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
        delay
    }

    pub fn on_success(&mut self) {
        self.next = None;
    }
}

/// Accepts once, pausing per `backoff` on errors.
pub async fn accept_with_backoff<T, F, Fut>(mut accept: F, backoff: &mut AcceptBackoff) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::io::Result<T>>,
{
    loop {
        match accept().await {
            Ok(accepted) => {
                backoff.on_success();
                return accepted;
            }
            Err(e) => {
                let delay = backoff.on_error(&e);
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// The "source" a peer counts against: its IPv4 address, or its IPv6 /64 (one host usually
/// holds a whole /64, so per-address bounds would not bound it).
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
        v4 => v4,
    }
}

/// Counts per source (see [`source_key`]), bounded by `limit` each.
struct PerSource {
    limit: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

struct SourceSlot {
    owner: Arc<PerSource>,
    ip: IpAddr,
}

impl PerSource {
    fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            counts: Mutex::new(HashMap::new()),
        })
    }

    fn try_take(self: &Arc<Self>, ip: IpAddr) -> Option<SourceSlot> {
        let ip = source_key(ip);
        let mut counts = self.counts.lock().expect("per-source lock");
        let count = counts.entry(ip).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(SourceSlot {
            owner: self.clone(),
            ip,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock().expect("per-source lock");
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

struct Shared {
    limits: Limits,
    acceptor: TlsAcceptor,
    routes: Routes,
    trust_domain: TrustDomain,
    metrics: Arc<ServerMetrics>,
    handshakes: Arc<Semaphore>,
    source_handshakes: Arc<PerSource>,
    certless: Arc<Semaphore>,
    source_certless: Arc<PerSource>,
}

impl Shared {
    fn refuse(&self, peer: SocketAddr, refusal: ConnRefusal) {
        self.metrics.refused("connection", refusal);
        tracing::debug!(%peer, reason = %refusal, "connection closed");
    }
}

/// Serves `routes` on `listener` until `shutdown` resolves, then asks every connection to
/// finish its calls and returns once all have closed.
pub async fn serve(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    routes: Routes,
    trust_domain: TrustDomain,
    limits: Limits,
    metrics: Arc<ServerMetrics>,
    shutdown: impl Future<Output = ()>,
) {
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let shared = Arc::new(Shared {
        acceptor: TlsAcceptor::from(config),
        routes,
        trust_domain,
        metrics,
        handshakes: Arc::new(Semaphore::new(limits.max_handshakes)),
        source_handshakes: PerSource::new(limits.handshakes_per_source),
        certless: Arc::new(Semaphore::new(limits.max_certless)),
        source_certless: PerSource::new(limits.certless_per_source),
        limits,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut backoff = AcceptBackoff::default();
    tokio::pin!(shutdown);
    loop {
        let next = async {
            let connection = connections.clone().acquire_owned().await.ok()?;
            let handshake = shared.handshakes.clone().acquire_owned().await.ok()?;
            let (tcp, peer) = accept_with_backoff(|| listener.accept(), &mut backoff).await;
            Some((connection, handshake, tcp, peer))
        };
        let (connection, handshake, tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            next = next => match next {
                Some(next) => next,
                None => break,
            },
        };
        let Some(source) = shared.source_handshakes.try_take(peer.ip()) else {
            shared.refuse(peer, ConnRefusal::SourceHandshakesFull);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(connection_task(
            shared.clone(),
            tcp,
            peer,
            (connection, handshake, source),
            stop_rx.clone(),
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection task holds a permit until it ends.
    let max = u32::try_from(shared.limits.max_connections).unwrap_or(u32::MAX);
    let _ = connections.acquire_many(max).await;
}

async fn connection_task(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    (_connection, handshake, source): (OwnedSemaphorePermit, OwnedSemaphorePermit, SourceSlot),
    mut stop: watch::Receiver<bool>,
) {
    let limits = &shared.limits;
    let accept = tokio::time::timeout(limits.handshake_timeout, shared.acceptor.accept(tcp));
    let accepted = tokio::select! {
        result = accept => result,
        // Shutting down: a half-done handshake is not worth waiting for.
        _ = stop.wait_for(|stop| *stop) => return,
    };
    let tls = match accepted {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let reason = lanyard_svid::tls::refusal_from_io(&e).map_or("tls_error", |r| r.label());
            shared.metrics.refused("connection", reason);
            tracing::info!(%peer, reason, error = %e, "TLS handshake refused");
            return;
        }
        Err(_) => {
            shared.refuse(peer, ConnRefusal::HandshakeTimeout);
            return;
        }
    };
    drop((handshake, source));
    let info: TlsConnectInfo<TcpConnectInfo> = tls.connect_info();
    // `Some(id)`: a verified certificate, but not an agent's (a workload SVID).
    let mut not_an_agent = None;
    let authenticated = match info
        .peer_certs()
        .and_then(|certs| X509Svid::parse(certs.to_vec(), None).ok())
    {
        Some(svid)
            if svid.spiffe_id().trust_domain() == &shared.trust_domain
                && parse_agent_id(svid.spiffe_id()).is_some() =>
        {
            true
        }
        Some(svid) => {
            not_an_agent = Some(Arc::<str>::from(svid.spiffe_id().to_string()));
            false
        }
        None => false,
    };
    let mut certless_slots = None;
    if !authenticated {
        let Ok(total) = shared.certless.clone().try_acquire_owned() else {
            shared.refuse(peer, ConnRefusal::CertlessFull);
            return;
        };
        let Some(per_source) = shared.source_certless.try_take(peer.ip()) else {
            shared.refuse(peer, ConnRefusal::SourceCertlessFull);
            return;
        };
        certless_slots = Some((total, per_source));
    }

    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_list_bytes)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    if authenticated {
        http2.max_concurrent_streams(limits.streams);
    } else {
        let window = u32::try_from(limits.certless_body_bytes).unwrap_or(u32::MAX);
        http2
            .max_concurrent_streams(limits.certless_streams)
            .initial_stream_window_size(window)
            .initial_connection_window_size(window.saturating_mul(2))
            .max_send_buf_size(64 * 1024);
    }
    let (in_flight, mut in_flight_rx) = watch::channel(0usize);
    let gate = Gate {
        routes: shared.routes.clone(),
        info,
        authenticated,
        not_an_agent,
        body_limit: limits.certless_body_bytes,
        in_flight: Arc::new(in_flight),
        metrics: shared.metrics.clone(),
    };
    let conn = http2.serve_connection(TokioIo::new(tls), TowerToHyperService::new(gate));
    tokio::pin!(conn);

    let far = Duration::from_secs(365 * 24 * 3600);
    let start = Instant::now();
    let lifetime = start
        + if authenticated {
            far
        } else {
            limits.certless_lifetime
        };
    let mut idle_since = Some(start);
    let mut draining = false;
    loop {
        let idle_deadline = match (authenticated, idle_since) {
            (false, Some(since)) => since + limits.certless_idle,
            _ => start + far,
        };
        tokio::select! {
            _ = conn.as_mut() => break,
            Ok(()) = stop.changed(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            Ok(()) = in_flight_rx.changed() => {
                idle_since = (*in_flight_rx.borrow_and_update() == 0).then(Instant::now);
            }
            () = tokio::time::sleep_until(idle_deadline) => {
                shared.refuse(peer, ConnRefusal::CertlessIdle);
                break;
            }
            () = tokio::time::sleep_until(lifetime) => {
                shared.refuse(peer, ConnRefusal::CertlessLifetime);
                break;
            }
        }
    }
    drop(certless_slots);
}

/// In front of tonic's routes: gives the handlers the TLS peer (as tonic's own server would),
/// and turns away a caller without a node SVID before its body is read.
#[derive(Clone)]
struct Gate {
    routes: Routes,
    info: TlsConnectInfo<TcpConnectInfo>,
    authenticated: bool,
    /// The SPIFFE ID of a certificate that is not an agent's.
    not_an_agent: Option<Arc<str>>,
    body_limit: usize,
    in_flight: Arc<watch::Sender<usize>>,
    metrics: Arc<ServerMetrics>,
}

/// Counts a call in progress on a certless connection (for its idle timeout).
struct InFlight(Arc<watch::Sender<usize>>);

impl InFlight {
    fn enter(counter: &Arc<watch::Sender<usize>>) -> Self {
        counter.send_modify(|n| *n += 1);
        Self(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

type GateFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send + 'static>>;

impl tower::Service<http::Request<Incoming>> for Gate {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = GateFuture;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<Incoming>) -> GateFuture {
        request.extensions_mut().insert(self.info.clone());
        let routes = self.routes.clone();
        if self.authenticated {
            return Box::pin(routes.oneshot(request.map(Body::new)));
        }
        if request.uri().path() != ATTEST_NODE_PATH {
            // The body is dropped unread: hyper resets the stream and frees its window.
            self.metrics.refused(
                "request",
                match self.not_an_agent {
                    Some(_) => ConnRefusal::NotAnAgent,
                    None => ConnRefusal::NoClientCertificate,
                },
            );
            let status = match &self.not_an_agent {
                Some(id) => Status::permission_denied(format!(
                    "not_an_agent: only node agents may call {}; {id} is not one",
                    request.uri().path()
                )),
                None => Status::unauthenticated(
                    "no_client_certificate: only AttestNode may be called without a node SVID",
                ),
            };
            let (parts, ()) = status.into_http::<()>().into_parts();
            return Box::pin(std::future::ready(Ok(http::Response::from_parts(
                parts,
                Body::empty(),
            ))));
        }
        let in_flight = InFlight::enter(&self.in_flight);
        let limit = self.body_limit;
        let request = request.map(|body| Body::new(Limited::new(body, limit)));
        Box::pin(async move {
            let response = routes.oneshot(request).await;
            drop(in_flight);
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emfile() -> std::io::Error {
        std::io::Error::from_raw_os_error(libc::EMFILE)
    }

    #[tokio::test(start_paused = true)]
    async fn resource_errors_back_off_doubling_to_a_second_and_reset_on_success() {
        let mut backoff = AcceptBackoff::default();
        let mut calls = 0u32;
        let start = Instant::now();
        // Seven EMFILEs, then a connection.
        let got = accept_with_backoff(
            || {
                calls += 1;
                let result = if calls <= 7 { Err(emfile()) } else { Ok(calls) };
                std::future::ready(result)
            },
            &mut backoff,
        )
        .await;
        assert_eq!(got, 8);
        // 100 + 200 + 400 + 800 + 1000 + 1000 + 1000 ms of paused time, no more, no less.
        assert_eq!(start.elapsed(), Duration::from_millis(4500));
        // Reset: the next error pauses 100 ms again.
        assert_eq!(backoff.on_error(&emfile()), BACKOFF_FIRST);
    }

    #[tokio::test(start_paused = true)]
    async fn per_connection_errors_retry_at_once_and_logs_are_rate_limited() {
        let mut backoff = AcceptBackoff::default();
        let aborted = std::io::Error::from_raw_os_error(libc::ECONNABORTED);
        assert_eq!(backoff.on_error(&aborted), Duration::ZERO);
        for _ in 0..1000 {
            backoff.on_error(&emfile());
        }
        // The first error was logged; the next thousand inside the interval were counted.
        assert_eq!(backoff.suppressed, 1000);
        tokio::time::advance(ACCEPT_LOG_INTERVAL).await;
        backoff.on_error(&emfile());
        assert_eq!(backoff.suppressed, 0);
    }

    #[test]
    fn per_source_slots_are_bounded_and_returned() {
        let ps = PerSource::new(2);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let a = ps.try_take(ip).unwrap();
        let _b = ps.try_take(ip).unwrap();
        assert!(ps.try_take(ip).is_none());
        assert!(ps.try_take(other).is_some());
        drop(a);
        assert!(ps.try_take(ip).is_some());
        // IPv6: one /64 is one source.
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        let _c = ps.try_take(v6("2001:db8::1")).unwrap();
        let _d = ps.try_take(v6("2001:db8::ffff:1")).unwrap();
        assert!(ps.try_take(v6("2001:db8::2")).is_none());
        assert!(ps.try_take(v6("2001:db8:0:1::1")).is_some());
    }
}
