//! A fake agent `Discovery` service on a Unix socket: answers set per destination, watches
//! that follow them, refusals and stream ends on demand, and call counts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use lanyard_proto::discovery::v1 as wire;
use lanyard_proto::discovery::v1::discovery_server::{Discovery, DiscoveryServer};
use lanyard_proxy::discovery::{Answer, DiscoveryClient, DiscoveryError, DiscoverySettings};
use tokio::net::UnixListener;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::{Request, Response, Status};
pub use wire::resolution::Kind;

use lanyard_proxy::context::{ConnContext, ConnLimits};
use lanyard_proxy::metrics::ProxyMetrics;
use lanyard_proxy::outbound::{OutboundDestination, serve_outbound};
use lanyard_proxy::tap::{TAP_QUEUE_LINES, Tap};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use super::{Ca, client_store, wait_until, within};

type Answers = HashMap<SocketAddr, Kind>;

/// The fake agent; dropped with its socket directory.
pub struct FakeDiscovery {
    pub socket: PathBuf,
    fake: Fake,
    _dir: tempfile::TempDir,
}

#[derive(Clone)]
struct Fake {
    answers: watch::Sender<Answers>,
    resolves: Arc<AtomicUsize>,
    /// Every `Watch` call per destination, refused ones included.
    watch_calls: Arc<Mutex<HashMap<SocketAddr, usize>>>,
    /// Watches opened (not refused), all destinations.
    watches_opened: Arc<AtomicUsize>,
    /// While set, every call is refused with it (e.g. the agent unreachable).
    refuse: Arc<Mutex<Option<Status>>>,
    end: broadcast::Sender<Status>,
}

fn key(request: &wire::ResolveRequest) -> SocketAddr {
    let d = request.destination.as_ref().unwrap();
    SocketAddr::new(d.address.parse().unwrap(), d.port as u16)
}

fn response(dst: SocketAddr, kind: Kind) -> wire::ResolveResponse {
    wire::ResolveResponse {
        destination: Some(wire::Destination {
            address: dst.ip().to_string(),
            port: u32::from(dst.port()),
        }),
        resolution: Some(wire::Resolution { kind: Some(kind) }),
    }
}

impl Fake {
    fn current(&self, dst: SocketAddr) -> Result<Kind, Status> {
        if let Some(status) = self.refuse.lock().unwrap().clone() {
            return Err(status);
        }
        self.answers
            .borrow()
            .get(&dst)
            .cloned()
            .ok_or_else(|| Status::unavailable("not_ready: no answer"))
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<wire::ResolveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Discovery for Fake {
    async fn resolve(
        &self,
        request: Request<wire::ResolveRequest>,
    ) -> Result<Response<wire::ResolveResponse>, Status> {
        self.resolves.fetch_add(1, Ordering::SeqCst);
        let dst = key(request.get_ref());
        Ok(Response::new(response(dst, self.current(dst)?)))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<wire::ResolveRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let dst = key(request.get_ref());
        *self.watch_calls.lock().unwrap().entry(dst).or_default() += 1;
        let first = self.current(dst)?;
        let mut rx = self.answers.subscribe();
        let mut end = self.end.subscribe();
        self.watches_opened.fetch_add(1, Ordering::SeqCst);
        let (tx, out) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut sent = first.clone();
            if tx.send(Ok(response(dst, first))).await.is_err() {
                return;
            }
            loop {
                tokio::select! {
                    changed = rx.changed() => {
                        if changed.is_err() { return }
                        let now = rx.borrow_and_update().get(&dst).cloned();
                        if let Some(now) = now && now != sent {
                            sent = now.clone();
                            if tx.send(Ok(response(dst, now))).await.is_err() { return }
                        }
                    }
                    status = end.recv() => {
                        if let Ok(status) = status { let _ = tx.send(Err(status)).await; }
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }
}

impl FakeDiscovery {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let fake = Fake {
            answers: watch::Sender::new(HashMap::new()),
            resolves: Arc::default(),
            watch_calls: Arc::default(),
            watches_opened: Arc::default(),
            refuse: Arc::default(),
            end: broadcast::channel(4).0,
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(DiscoveryServer::new(fake.clone()))
                .serve_with_incoming(UnixListenerStream::new(listener)),
        );
        Self {
            socket,
            fake,
            _dir: dir,
        }
    }

    /// Sets the answer for `dst`; open watches of it send it on.
    pub fn set(&self, dst: SocketAddr, kind: Kind) {
        self.fake.answers.send_modify(|a| {
            a.insert(dst, kind);
        });
    }

    /// While `Some`, every call is refused with that status.
    pub fn refuse(&self, status: Option<Status>) {
        *self.fake.refuse.lock().unwrap() = status;
    }

    /// Ends every open watch with `status`.
    pub fn end_watches(&self, status: Status) {
        let _ = self.fake.end.send(status);
    }

    pub fn resolves(&self) -> usize {
        self.fake.resolves.load(Ordering::SeqCst)
    }

    /// `Watch` calls for `dst`, refused ones included.
    pub fn watch_calls(&self, dst: SocketAddr) -> usize {
        self.fake
            .watch_calls
            .lock()
            .unwrap()
            .get(&dst)
            .copied()
            .unwrap_or(0)
    }

    /// Watches opened in all (refused calls not counted).
    pub fn watches_opened(&self) -> usize {
        self.fake.watches_opened.load(Ordering::SeqCst)
    }

    /// Waits until `n` watches were opened in all.
    pub async fn wait_watches(&self, n: usize) {
        let opened = self.fake.watches_opened.clone();
        wait_until("discovery watches", || opened.load(Ordering::SeqCst) >= n).await
    }

    pub fn client(&self, settings: DiscoverySettings) -> DiscoveryClient {
        DiscoveryClient::new(self.socket.clone(), settings)
    }
}

pub fn meshed(id: &str) -> Kind {
    Kind::MeshedPod(wire::MeshedPod {
        spiffe_id: id.into(),
        namespace: "ns".into(),
        name: "pod".into(),
    })
}

pub fn unmeshed() -> Kind {
    Kind::UnmeshedPod(wire::UnmeshedPod {
        namespace: "ns".into(),
        name: "pod".into(),
    })
}

pub fn unknown() -> Kind {
    Kind::Unknown(wire::Unknown {})
}

/// A Service with these endpoints (`Some(id)`: meshed).
pub fn service(endpoints: &[(SocketAddr, Option<&str>)]) -> Kind {
    Kind::Service(wire::Service {
        namespace: "ns".into(),
        name: "svc".into(),
        endpoints: endpoints
            .iter()
            .map(|(addr, id)| wire::Endpoint {
                address: addr.ip().to_string(),
                port: u32::from(addr.port()),
                meshed: id.is_some(),
                spiffe_id: id.unwrap_or_default().into(),
            })
            .collect(),
        truncated: false,
    })
}

/// Looks `dst` up until `check` accepts the result (e.g. a watch update to arrive).
pub async fn lookup_until(
    client: &DiscoveryClient,
    dst: SocketAddr,
    what: &str,
    check: impl Fn(&Result<Answer, DiscoveryError>) -> bool,
) {
    within(what, async {
        loop {
            if check(&client.lookup(dst).await.map(|l| l.answer)) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
}

/// A discovered outbound listener and what its tests look at.
pub struct DiscoveredOutbound {
    /// Where the workload connects.
    pub listen: SocketAddr,
    pub tap: Tap,
    pub ctx: Arc<ConnContext>,
    /// The listener's metrics, lookups included.
    pub registry: Registry,
}

/// An outbound listener holding `client`'s SVID (issued by `ca`) whose connections go to
/// `destination` as discovery answers for it. `discovery` builds the discovery client from
/// the listener's metrics, so its lookups are counted in [`DiscoveredOutbound::registry`].
pub async fn discovered_outbound(
    ca: &Ca,
    client: &str,
    destination: SocketAddr,
    discovery: impl FnOnce(Arc<ProxyMetrics>) -> DiscoveryClient,
) -> DiscoveredOutbound {
    let mut registry = Registry::default();
    let metrics: Arc<ProxyMetrics> = ProxyMetrics::register(&mut registry);
    let tap = Tap::new(TAP_QUEUE_LINES, metrics.tap_dropped.clone());
    let discovery = discovery(metrics.clone());
    let td = lanyard_svid::TrustDomain::parse("example.org").unwrap();
    let ctx = Arc::new(ConnContext::new(
        client_store(&ca.issue(client), &[(&td, ca.root_der())]),
        tap.clone(),
        metrics,
        ConnLimits {
            max_connections: 64,
            handshake_timeout: std::time::Duration::from_secs(5),
            idle_timeout: std::time::Duration::from_secs(3600),
        },
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listen = listener.local_addr().unwrap();
    tokio::spawn(serve_outbound(
        listener,
        OutboundDestination::Discovered {
            destination,
            discovery,
        },
        ctx.clone(),
    ));
    DiscoveredOutbound {
        listen,
        tap,
        ctx,
        registry,
    }
}
