//! `DiscoveryFeed.Follow` against a real lanyard-server in cluster mode on the Kubernetes API
//! fixture (real kube client, the server's RBAC with list/watch on Services and
//! EndpointSlices): pod and Service answers, changes reaching an open stream without a new
//! follow, deletion, unknown addresses, the refusals, and the cost of a new follow (lookups
//! and answers for the new destination only, counted in the server's /metrics).

mod common;
mod discovery_support;

use std::collections::HashMap;
use std::sync::Arc;

use common::Caller;
use discovery_support::*;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use lanyard_proto::discovery::v1 as wire;
use lanyard_proto::discovery::v1::discovery_feed_client::DiscoveryFeedClient;
use lanyard_proto::identity::v1::attest_node_request::Method;
use lanyard_server::config::RunArgs;
use lanyard_svid::reserved::server_id;
use lanyard_svid::tls::{ExactId, client_config_optional_svid, unused_server_name};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Streaming};
use wire::resolution::Kind;

fn feed_client(caller: &Caller, addr: std::net::SocketAddr) -> DiscoveryFeedClient<Channel> {
    let tls = Arc::new(client_config_optional_svid(
        caller.store.clone(),
        Arc::new(ExactId(server_id(&td()))),
        vec![b"h2".to_vec()],
    ));
    let connector = tower::service_fn(move |_| {
        let tls = tls.clone();
        async move {
            let tcp = TcpStream::connect(addr).await?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(unused_server_name(), tcp)
                .await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    DiscoveryFeedClient::new(
        Endpoint::from_static("http://lanyard.invalid").connect_with_connector_lazy(connector),
    )
}

fn dest(address: &str, port: u32) -> wire::Destination {
    wire::Destination {
        address: address.into(),
        port,
    }
}

/// An open `Follow` stream: requests go in through `tx`, answers are accumulated in `state`.
struct Follow {
    tx: mpsc::Sender<wire::FollowRequest>,
    updates: Streaming<wire::FollowUpdate>,
    state: HashMap<(String, u32), Kind>,
    /// Answers received in all.
    received: usize,
}

impl Follow {
    async fn open(client: &mut DiscoveryFeedClient<Channel>) -> Result<Self, tonic::Status> {
        let (tx, rx) = mpsc::channel(16);
        let updates = client.follow(ReceiverStream::new(rx)).await?.into_inner();
        Ok(Self {
            tx,
            updates,
            state: HashMap::new(),
            received: 0,
        })
    }

    async fn follow(&self, destinations: Vec<wire::Destination>) {
        self.tx
            .send(wire::FollowRequest {
                follow: destinations,
                unfollow: vec![],
            })
            .await
            .unwrap();
    }

    /// Reads updates until `done(state)` holds (bounded by the deadline).
    async fn until(&mut self, what: &str, done: impl Fn(&HashMap<(String, u32), Kind>) -> bool) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while !done(&self.state) {
            let message = tokio::time::timeout_at(deadline, self.updates.message())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}: {:?}", self.state))
                .expect("stream healthy")
                .expect("stream open");
            for u in message.updates {
                self.received += 1;
                let d = u.destination.unwrap();
                self.state
                    .insert((d.address, d.port), u.resolution.unwrap().kind.unwrap());
            }
        }
    }
}

fn is_meshed(kind: Option<&Kind>, id: &str) -> bool {
    matches!(kind, Some(Kind::MeshedPod(m)) if m.spiffe_id == id)
}

fn endpoints(kind: Option<&Kind>) -> Option<Vec<(String, u32, bool, String)>> {
    match kind {
        Some(Kind::Service(s)) => Some(
            s.endpoints
                .iter()
                .map(|e| (e.address.clone(), e.port, e.meshed, e.spiffe_id.clone()))
                .collect(),
        ),
        _ => None,
    }
}

async fn attested_agent(c: &Cluster, server: &Server) -> Caller {
    let caller = Caller::new(c.bundle());
    caller
        .attest(server.addr, Method::K8sPsatToken(c.agent_token()))
        .await
        .unwrap();
    caller
}

const WEB_ID: &str = "spiffe://example.org/ns/default/sa/web";

fn seed(c: &Cluster) {
    let store = c.fixture.store();
    let p = |name, sa, ip, meshed| {
        pod(PodSpecArgs {
            ns: "default",
            name,
            sa,
            ip: Some(ip),
            meshed,
        })
    };
    store.create(&p("web-1", "web", "10.1.0.1", true)).unwrap();
    store.create(&p("web-2", "web", "10.1.0.2", true)).unwrap();
    store
        .create(&p("legacy", "legacy", "10.1.0.9", false))
        .unwrap();
    store
        .create(&service("default", "web", "10.96.0.10", 80, "http"))
        .unwrap();
    store
        .create(&slice(
            "default",
            "web-a",
            "web",
            "http",
            8080,
            &[("10.1.0.1", true), ("10.1.0.9", true), ("10.1.0.2", false)],
        ))
        .unwrap();
}

#[tokio::test]
async fn follow_answers_and_follows_changes() {
    let c = cluster().await;
    seed(&c);
    let server = c.server("s").await;
    let agent = attested_agent(&c, &server).await;
    let mut client = feed_client(&agent, server.addr);
    let mut follow = Follow::open(&mut client).await.unwrap();
    follow
        .follow(vec![
            dest("10.1.0.1", 443),
            dest("10.1.0.9", 80),
            dest("10.96.0.10", 80),
            dest("10.96.0.10", 81),
            dest("192.0.2.7", 80),
        ])
        .await;
    follow
        .until("the five first answers", |s| s.len() == 5)
        .await;
    let s = &follow.state;
    assert!(is_meshed(s.get(&("10.1.0.1".into(), 443)), WEB_ID), "{s:?}");
    assert!(
        matches!(s.get(&("10.1.0.9".into(), 80)), Some(Kind::UnmeshedPod(p)) if p.name == "legacy")
    );
    assert_eq!(
        endpoints(s.get(&("10.96.0.10".into(), 80))).unwrap(),
        [
            ("10.1.0.1".to_owned(), 8080, true, WEB_ID.to_owned()),
            ("10.1.0.9".to_owned(), 8080, false, String::new()),
        ],
        "only ready endpoints, at the slice's target port"
    );
    assert!(matches!(
        s.get(&("10.96.0.10".into(), 81)),
        Some(Kind::Unknown(_))
    ));
    assert!(matches!(
        s.get(&("192.0.2.7".into(), 80)),
        Some(Kind::Unknown(_))
    ));

    // Scale up: web-2 turns ready. The open stream gets the new endpoints, no new follow.
    c.fixture
        .store()
        .modify::<EndpointSlice>("default", "web-a", |s| {
            for e in &mut s.endpoints {
                e.conditions.as_mut().unwrap().ready = Some(true);
            }
        })
        .unwrap();
    follow
        .until("web-2 among the endpoints", |s| {
            endpoints(s.get(&("10.96.0.10".into(), 80))).is_some_and(|e| e.len() == 3)
        })
        .await;
    // Scale down: the slice loses two endpoints.
    c.fixture
        .store()
        .modify::<EndpointSlice>("default", "web-a", |s| s.endpoints.truncate(1))
        .unwrap();
    follow
        .until("one endpoint left", |s| {
            endpoints(s.get(&("10.96.0.10".into(), 80))).is_some_and(|e| e.len() == 1)
        })
        .await;
    // Deleting the pod: its IP is unknown from then on.
    c.fixture.store().delete::<Pod>("default", "web-1").unwrap();
    follow
        .until("the deleted pod to be unknown", |s| {
            matches!(s.get(&("10.1.0.1".into(), 443)), Some(Kind::Unknown(_)))
        })
        .await;
    // The Service's remaining endpoint was web-1: still listed (the slice says so), but
    // no longer meshed, since no pod claims the IP.
    assert_eq!(
        endpoints(follow.state.get(&("10.96.0.10".into(), 80))).unwrap(),
        [("10.1.0.1".to_owned(), 8080, false, String::new())]
    );
}

#[tokio::test]
async fn refusals() {
    let c = cluster().await;
    let server = c.server("s").await;

    // No node SVID: refused before anything is followed.
    let stranger = Caller::new(c.bundle());
    let err = Follow::open(&mut feed_client(&stranger, server.addr))
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(
        err.message().starts_with("no_client_certificate"),
        "{err:?}"
    );

    let agent = attested_agent(&c, &server).await;
    let mut client = feed_client(&agent, server.addr);

    // A destination that is not an IP literal ends the stream.
    let mut bad = Follow::open(&mut client).await.unwrap();
    bad.follow(vec![dest("web.default.svc", 80)]).await;
    let status = tokio::time::timeout(DEADLINE, bad.updates.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("bad_destination"),
        "{status:?}"
    );

    // Too many destinations in one request.
    let mut big = Follow::open(&mut client).await.unwrap();
    let many = |n: u32, base: u32| -> Vec<_> {
        (0..n)
            .map(|i| {
                let ip = std::net::Ipv4Addr::from(0x0a00_0000 + base + i);
                dest(&ip.to_string(), 80)
            })
            .collect()
    };
    big.follow(many(4097, 0)).await;
    let status = tokio::time::timeout(DEADLINE, big.updates.message())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        status.message().starts_with("request_too_large"),
        "{status:?}"
    );

    // Past 16,384 followed destinations on one stream.
    let mut greedy = Follow::open(&mut client).await.unwrap();
    for chunk in 0..4 {
        greedy.follow(many(4096, chunk * 4096)).await;
    }
    greedy.follow(many(1, 4 * 4096)).await;
    let status = loop {
        match tokio::time::timeout(DEADLINE, greedy.updates.message())
            .await
            .unwrap()
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().starts_with("too_many_follows"),
        "{status:?}"
    );
}

/// A server like [`Cluster::server`], with its health listener (for /metrics) on too.
struct MeteredServer {
    grpc: std::net::SocketAddr,
    health: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MeteredServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

async fn metered_server(c: &Cluster) -> MeteredServer {
    let client = c
        .fixture
        .client_for(&c.fixture.issue_api_token("lanyard", "lanyard-server"))
        .unwrap();
    let args = RunArgs {
        health: Some("127.0.0.1:0".parse().unwrap()),
        ..common::cluster_args(c.dir.path().join("metered"))
    };
    let config = args.resolve().unwrap();
    let (addr_tx, mut addr_rx) = mpsc::unbounded_channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let result = lanyard_server::run::run(
            config,
            Some(client),
            move |role, addr| {
                let _ = addr_tx.send((role, addr));
            },
            async move {
                let _ = stopped.await;
            },
        )
        .await;
        if let Err(e) = result {
            panic!("server failed: {e}");
        }
    });
    let (mut grpc, mut health) = (None, None);
    while grpc.is_none() || health.is_none() {
        let (role, addr) = tokio::time::timeout(DEADLINE, addr_rx.recv())
            .await
            .expect("server listens before the deadline")
            .expect("server started");
        match role {
            "grpc" => grpc = Some(addr),
            "health" => health = Some(addr),
            _ => {}
        }
    }
    MeteredServer {
        grpc: grpc.unwrap(),
        health: health.unwrap(),
        stop: Some(stop),
        task,
    }
}

/// The value of the sample `name` (labels included) on the server's /metrics; 0 when absent.
async fn metric(health: std::net::SocketAddr, name: &str) -> u64 {
    let mut stream = TcpStream::connect(health).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: lanyard\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    tokio::time::timeout(DEADLINE, stream.read_to_string(&mut body))
        .await
        .expect("metrics answered")
        .unwrap();
    let prefix = format!("{name} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

const RESOLVES: &str = "lanyard_server_discovery_resolves_total";
const FOLLOWED: &str = "lanyard_server_discovery_followed_destinations";
const SENT_MESHED: &str = "lanyard_server_discovery_answers_sent_total{kind=\"meshed_pod\"}";
const SENT_SERVICE: &str = "lanyard_server_discovery_answers_sent_total{kind=\"service\"}";
const SENT_UNKNOWN: &str = "lanyard_server_discovery_answers_sent_total{kind=\"unknown\"}";

#[tokio::test]
async fn a_new_follow_is_answered_alone_and_changes_still_arrive() {
    let c = cluster().await;
    seed(&c);
    let server = metered_server(&c).await;
    let agent = Caller::new(c.bundle());
    agent
        .attest(server.grpc, Method::K8sPsatToken(c.agent_token()))
        .await
        .unwrap();
    let mut client = feed_client(&agent, server.grpc);
    // A first stream answered means the indexes are listed: the stream measured below then
    // starts with no listing still to come (which would make it look everything up again).
    let mut probe = Follow::open(&mut client).await.unwrap();
    probe.follow(vec![dest("10.1.0.9", 80)]).await;
    probe.until("the indexes listed", |s| s.len() == 1).await;
    drop(probe);
    let base = metric(server.health, RESOLVES).await;
    let mut follow = Follow::open(&mut client).await.unwrap();

    // N = 20 destinations: the Service, two meshed pods, 17 unknown addresses.
    let mut first = vec![
        dest("10.96.0.10", 80),
        dest("10.1.0.1", 443),
        dest("10.1.0.2", 443),
    ];
    first.extend((0..17).map(|i| dest(&format!("192.0.2.{i}"), 80)));
    let n = first.len() as u64;
    follow.follow(first).await;
    follow
        .until("the first answers", |s| s.len() == n as usize)
        .await;
    let resolves = metric(server.health, RESOLVES).await;
    assert_eq!(resolves - base, n, "one lookup per destination");
    assert_eq!(follow.received, n as usize);
    assert_eq!(metric(server.health, SENT_SERVICE).await, 1);
    assert_eq!(metric(server.health, SENT_MESHED).await, 2);
    assert_eq!(metric(server.health, SENT_UNKNOWN).await, 17);

    // One more: exactly one lookup and one answer, not N + 1.
    follow.follow(vec![dest("10.1.0.9", 80)]).await;
    follow
        .until("the new answer", |s| s.len() == n as usize + 1)
        .await;
    assert_eq!(follow.received, n as usize + 1, "one answer back");
    assert_eq!(
        metric(server.health, RESOLVES).await,
        resolves + 1,
        "one lookup, for the new destination only"
    );

    // An index change still reaches the stream: web-2 turns ready in the Service's slice.
    c.fixture
        .store()
        .modify::<EndpointSlice>("default", "web-a", |s| {
            for e in &mut s.endpoints {
                e.conditions.as_mut().unwrap().ready = Some(true);
            }
        })
        .unwrap();
    follow
        .until("web-2 among the endpoints", |s| {
            endpoints(s.get(&("10.96.0.10".into(), 80))).is_some_and(|e| e.len() == 3)
        })
        .await;
    assert_eq!(metric(server.health, SENT_SERVICE).await, 2);
    // A pod change too: web-1 deleted, its address is unknown from then on.
    c.fixture.store().delete::<Pod>("default", "web-1").unwrap();
    follow
        .until("the deleted pod to be unknown", |s| {
            matches!(s.get(&("10.1.0.1".into(), 443)), Some(Kind::Unknown(_)))
        })
        .await;

    // The probe's destination is no longer counted once its stream is gone; this one's are.
    wait_for_metric(server.health, FOLLOWED, n + 1).await;
    // The stream gone, its destinations are no longer counted.
    drop(follow);
    wait_for_metric(server.health, FOLLOWED, 0).await;
}

/// Waits (bounded) until the sample `name` reads `value`.
async fn wait_for_metric(health: std::net::SocketAddr, name: &str, value: u64) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let now = metric(health, name).await;
        if now == value {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} is {now}, not {value}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
