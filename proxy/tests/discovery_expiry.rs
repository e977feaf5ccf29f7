//! How the discovery client reads the end of a `Watch`, against a fake agent `Discovery`
//! service on a Unix socket: the agent's `lanyard-discovery-refusal: expired` trailer drops
//! the cached answer (refused if it was meshed), while a bare `Unavailable` (whatever its
//! message says) is a lost stream whose answer stays in use; and the lookup metrics.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{wait_until, within};
use lanyard_proto::discovery::v1 as wire;
use lanyard_proto::discovery::v1::discovery_server::{Discovery, DiscoveryServer};
use lanyard_proxy::discovery::{Answer, DiscoveryClient, DiscoveryError, DiscoverySettings};
use lanyard_proxy::metrics::ProxyMetrics;
use lanyard_svid::SpiffeId;
use prometheus_client::registry::Registry;
use tokio::net::UnixListener;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::{Code, Request, Response, Status};
use wire::resolution::Kind;

/// The documented key (`Discovery` in discovery.proto), spelled out: the agent and the proxy
/// must agree on it.
const TRAILER: &str = "lanyard-discovery-refusal";
const ID: &str = "spiffe://example.org/server";
const NEW_ID: &str = "spiffe://example.org/new";

fn expired_status() -> Status {
    let mut status = Status::unavailable("expired: the cached answer expired");
    status
        .metadata_mut()
        .insert(TRAILER, "expired".parse().unwrap());
    status
}

/// The same words, no trailer: not the agent's typed signal.
fn bare_status() -> Status {
    Status::unavailable("expired: the cached answer expired")
}

#[derive(Clone, Default)]
struct Fake {
    answers: Arc<Mutex<HashMap<SocketAddr, Kind>>>,
    /// Every `Watch` call per destination, refused ones included.
    watch_calls: Arc<Mutex<HashMap<SocketAddr, usize>>>,
    /// While set, calls are refused with it.
    refuse: Arc<Mutex<Option<Status>>>,
    end: Arc<Mutex<Option<broadcast::Sender<Status>>>>,
    updates: Arc<Mutex<Option<broadcast::Sender<()>>>>,
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
            .lock()
            .unwrap()
            .get(&dst)
            .cloned()
            .ok_or_else(|| Status::unavailable("not_ready"))
    }

    fn watch_calls(&self, dst: SocketAddr) -> usize {
        self.watch_calls
            .lock()
            .unwrap()
            .get(&dst)
            .copied()
            .unwrap_or(0)
    }

    fn set(&self, dst: SocketAddr, kind: Kind) {
        self.answers.lock().unwrap().insert(dst, kind);
        if let Some(updates) = &*self.updates.lock().unwrap() {
            let _ = updates.send(());
        }
    }

    /// Ends every open watch with `status`.
    fn end_watches(&self, status: Status) {
        if let Some(end) = &*self.end.lock().unwrap() {
            let _ = end.send(status);
        }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<wire::ResolveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Discovery for Fake {
    async fn resolve(
        &self,
        request: Request<wire::ResolveRequest>,
    ) -> Result<Response<wire::ResolveResponse>, Status> {
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
        let mut end = self.end.lock().unwrap().as_ref().unwrap().subscribe();
        let mut updates = self.updates.lock().unwrap().as_ref().unwrap().subscribe();
        let fake = self.clone();
        let (tx, out) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut sent = first.clone();
            if tx.send(Ok(response(dst, first))).await.is_err() {
                return;
            }
            loop {
                tokio::select! {
                    _ = updates.recv() => {
                        let now = fake.answers.lock().unwrap().get(&dst).cloned();
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

struct Agent {
    fake: Fake,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

async fn agent() -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let fake = Fake::default();
    *fake.end.lock().unwrap() = Some(broadcast::channel(4).0);
    *fake.updates.lock().unwrap() = Some(broadcast::channel(16).0);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(DiscoveryServer::new(fake.clone()))
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
    Agent {
        fake,
        socket,
        _dir: dir,
    }
}

/// A client whose stale TTL (an hour) cannot run out during a test: only the agent's signal
/// can end an answer.
fn client(agent: &Agent) -> (DiscoveryClient, Registry) {
    let mut registry = Registry::default();
    let metrics = ProxyMetrics::register(&mut registry);
    let settings = DiscoverySettings {
        resolve_timeout: Duration::from_secs(5),
        stale_ttl: Duration::from_secs(3600),
        rewatch_delay: Duration::from_millis(20),
        ..DiscoverySettings::default()
    };
    let client = DiscoveryClient::with_metrics(agent.socket.clone(), settings, metrics);
    (client, registry)
}

fn lookups(registry: &Registry, outcome: &str) -> u64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    let prefix = format!("lanyard_proxy_discovery_lookups_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |n| n.parse().unwrap())
}

fn meshed(id: &str) -> Kind {
    Kind::MeshedPod(wire::MeshedPod {
        spiffe_id: id.into(),
        namespace: "ns".into(),
        name: "pod".into(),
    })
}

fn unmeshed() -> Kind {
    Kind::UnmeshedPod(wire::UnmeshedPod {
        namespace: "ns".into(),
        name: "pod".into(),
    })
}

fn id(text: &str) -> SpiffeId {
    SpiffeId::parse(text).unwrap()
}

async fn lookup_until(
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
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

const MESHED: &str = "10.0.0.5:80";
const PLAIN: &str = "10.0.0.7:80";

/// An agent answering both destinations, and a client that looked both up and watches them.
async fn watched() -> (Agent, DiscoveryClient, Registry, SocketAddr, SocketAddr) {
    let agent = agent().await;
    let (meshed_dst, plain_dst) = (MESHED.parse().unwrap(), PLAIN.parse().unwrap());
    agent.fake.set(meshed_dst, meshed(ID));
    agent.fake.set(plain_dst, unmeshed());
    let (client, registry) = client(&agent);
    client.lookup(meshed_dst).await.unwrap();
    client.lookup(plain_dst).await.unwrap();
    let fake = agent.fake.clone();
    wait_until("both watches open", || {
        fake.watch_calls(meshed_dst) == 1 && fake.watch_calls(plain_dst) == 1
    })
    .await;
    (agent, client, registry, meshed_dst, plain_dst)
}

#[tokio::test]
async fn the_expired_trailer_ends_the_cached_answers() {
    let (agent, client, registry, meshed_dst, plain_dst) = watched().await;
    assert_eq!(lookups(&registry, "resolved"), 2);
    *agent.fake.refuse.lock().unwrap() = Some(expired_status());
    agent.fake.end_watches(expired_status());
    lookup_until(&client, meshed_dst, "the meshed answer refused", |a| {
        *a == Err(DiscoveryError::MeshedGone)
    })
    .await;
    // Never meshed: forgotten, asked again, and the agent has no answer.
    lookup_until(
        &client,
        plain_dst,
        "the plain answer forgotten",
        |a| matches!(a, Err(DiscoveryError::Unavailable(why)) if why.contains("Unavailable")),
    )
    .await;
    assert!(lookups(&registry, "meshed_destination_gone") >= 1);
    assert!(lookups(&registry, "discovery_unavailable") >= 1);
}

#[tokio::test]
async fn a_bare_unavailable_is_a_lost_stream_and_the_answers_stay_in_use() {
    let (agent, client, registry, meshed_dst, plain_dst) = watched().await;
    *agent.fake.refuse.lock().unwrap() = Some(bare_status());
    agent.fake.end_watches(bare_status());
    // Each watch was reopened (and refused) at least once: the end was handled.
    let fake = agent.fake.clone();
    wait_until("both watches reopened", || {
        fake.watch_calls(meshed_dst) >= 3 && fake.watch_calls(plain_dst) >= 3
    })
    .await;
    let cached = lookups(&registry, "cached");
    assert_eq!(
        client.lookup(meshed_dst).await.unwrap().answer,
        Answer::MeshedPod(id(ID)),
        "a lost stream keeps the meshed answer for the stale TTL"
    );
    assert_eq!(
        client.lookup(plain_dst).await.unwrap().answer,
        Answer::UnmeshedPod
    );
    assert_eq!(lookups(&registry, "cached"), cached + 2);
    assert_eq!(lookups(&registry, "resolved"), 2, "no new Resolve");

    // The agent is back: the reopened watch brings changes again.
    *agent.fake.refuse.lock().unwrap() = None;
    agent.fake.set(meshed_dst, meshed(NEW_ID));
    lookup_until(&client, meshed_dst, "the new ID", |a| {
        *a == Ok(Answer::MeshedPod(id(NEW_ID)))
    })
    .await;
}

#[tokio::test]
async fn a_watch_reopen_refused_as_expired_ends_the_answer() {
    let (agent, client, _registry, meshed_dst, _) = watched().await;
    // The stream is lost first (no trailer), then the agent refuses the reopened watch
    // because its answer expired meanwhile.
    *agent.fake.refuse.lock().unwrap() = Some(expired_status());
    agent.fake.end_watches(bare_status());
    lookup_until(&client, meshed_dst, "the meshed answer refused", |a| {
        *a == Err(DiscoveryError::MeshedGone)
    })
    .await;
}

#[tokio::test]
async fn an_unanswered_destination_counts_as_unavailable() {
    let agent = agent().await;
    let (client, registry) = client(&agent);
    let err = client
        .lookup("10.0.0.9:80".parse().unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DiscoveryError::Unavailable(why) if why.contains(&format!("{:?}", Code::Unavailable))),
        "{err:?}"
    );
    assert_eq!(lookups(&registry, "discovery_unavailable"), 1);
    assert_eq!(lookups(&registry, "resolved"), 0);
}
