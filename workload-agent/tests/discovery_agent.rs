//! `lanyard.discovery.v1.Discovery` on the agent's Unix socket, end to end: a real
//! lanyard-server in cluster mode on the Kubernetes API fixture, a real agent attested by
//! k8s_psat following the server's `DiscoveryFeed`, and real gRPC over the socket.
//!
//! Who may call is decided through [`WorkloadIdentities::resolve`]; this test process runs in
//! no pod, so the tests that need an allowed caller grant it an identity through a stand-in
//! `WorkloadIdentities` (the refusal test uses the agent's real one).

#[path = "../../identity-server/tests/discovery_support/mod.rs"]
mod discovery_support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use discovery_support::*;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use lanyard_agent::attest::{Attested, WorkloadAttestor};
use lanyard_agent::config::RunArgs;
use lanyard_agent::identities::{Entitlement, IdentityError, WorkloadIdentities};
use lanyard_agent::metrics::AgentMetrics;
use lanyard_agent::run::{Agent, Readiness};
use lanyard_agent::server_client::discovery_cache::{CacheSettings, DiscoveryCache};
use lanyard_agent::server_client::discovery_feed::{self as feed, FeedTarget};
use lanyard_agent::socket::{self, ConnectionLimits, Services};
use lanyard_agent::workload_api::{Limits, WorkloadApiMetrics};
use lanyard_proto::discovery::v1 as wire;
use lanyard_proto::discovery::v1::discovery_client::DiscoveryClient;
use lanyard_proto::identity::v1 as id_wire;
use lanyard_proto::workload::X509svidRequest;
use lanyard_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use lanyard_svid::x509::X509Svid;
use lanyard_svid::{BundleSet, SpiffeId};
use tokio::net::UnixStream;
use tokio::sync::watch;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use wire::resolution::Kind;

const WEB_ID: &str = "spiffe://example.org/ns/default/sa/web";

/// Grants every caller one identity (discovery only asks whether there is one).
struct Granted;

#[tonic::async_trait]
impl WorkloadIdentities for Granted {
    fn resolve(&self, _: &Attested) -> Vec<Entitlement> {
        vec![Entitlement {
            spiffe_id: SpiffeId::parse("spiffe://example.org/test").unwrap(),
            workload: id_wire::Workload {
                kind: Some(id_wire::workload::Kind::EntrySpiffeId(
                    "spiffe://example.org/test".into(),
                )),
                entry_pod: None,
            },
            x509_ttl: None,
            hint: String::new(),
            federates_with: Vec::new(),
        }]
    }
    async fn x509_svids(&self, _: &[Entitlement]) -> Result<Vec<Arc<X509Svid>>, IdentityError> {
        Err(IdentityError::NotReady("stand-in".into()))
    }
    async fn jwt_svid(&self, _: &Entitlement, _: &[String]) -> Result<String, IdentityError> {
        Err(IdentityError::NotReady("stand-in".into()))
    }
    fn bundles(&self) -> Arc<BundleSet> {
        Arc::new(BundleSet::new())
    }
    fn changes(&self) -> watch::Receiver<u64> {
        watch::channel(0).1
    }
}

/// The test world: fixture, server, attested agent, and the discovery socket.
struct World {
    c: Cluster,
    server: Option<Server>,
    server_addr: std::net::SocketAddr,
    agent: Agent,
    cache: Arc<DiscoveryCache>,
    socket: PathBuf,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
    _stop: watch::Sender<bool>,
}

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
            &[("10.1.0.1", true), ("10.1.0.2", false)],
        ))
        .unwrap();
}

async fn start_agent(c: &Cluster, server: &Server) -> Agent {
    let dir = c.dir.path();
    let token = dir.join("agent-token");
    std::fs::write(&token, c.agent_token()).unwrap();
    let bundle = dir.join("bundle.pem");
    std::fs::write(&bundle, c.root_pem()).unwrap();
    // Built from the flags' struct, so options added later keep their defaults here.
    let config = RunArgs {
        server: Some(server.addr.to_string()),
        trust_bundle: Some(bundle),
        k8s_token_path: Some(token),
        socket: Some(dir.join("unused.sock")),
        ..Default::default()
    }
    .resolve()
    .unwrap();
    tokio::time::timeout(
        DEADLINE,
        Agent::start(
            &config,
            AgentMetrics::unregistered(),
            Arc::new(Readiness::default()),
        ),
    )
    .await
    .expect("agent starts in time")
    .expect("agent attests")
}

/// Serves only `Discovery` on `socket` (with `watches_per_caller`) for `identities`; returns
/// once the socket is bound.
async fn serve_discovery(
    socket_path: &Path,
    cache: Arc<DiscoveryCache>,
    identities: Arc<dyn WorkloadIdentities>,
    watches_per_caller: usize,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let path = socket_path.to_owned();
    let services = Services::new().discovery_with_watches(cache, identities, watches_per_caller);
    let shutdown = async move {
        let mut stop = stop;
        if stop.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let served = tokio::spawn(async move {
        socket::serve(
            &path,
            Arc::new(WorkloadAttestor::default()),
            ConnectionLimits::default(),
            services,
            shutdown,
        )
        .await
        .unwrap();
    });
    let bound = socket_path.to_owned();
    eventually("the socket to be bound", || {
        let exists = bound.exists();
        async move { exists.then_some(()) }
    })
    .await;
    served
}

async fn world(settings: CacheSettings, watches_per_caller: usize) -> World {
    let c = cluster().await;
    seed(&c);
    let server = c.server("s").await;
    let agent = start_agent(&c, &server).await;
    let cache = Arc::new(DiscoveryCache::new(settings));
    let feed = feed::spawn(
        cache.clone(),
        FeedTarget {
            address: server.addr.to_string(),
            store: agent.store.clone(),
            trust_domain: agent.trust_domain.clone(),
        },
    );
    let socket = c.dir.path().join("agent.sock");
    let (stop, stopping) = watch::channel(false);
    let serving = serve_discovery(
        &socket,
        cache.clone(),
        Arc::new(Granted),
        watches_per_caller,
        stopping,
    )
    .await;
    World {
        server_addr: server.addr,
        server: Some(server),
        c,
        agent,
        cache,
        socket,
        _tasks: vec![feed, serving],
        _stop: stop,
    }
}

async fn connect(socket: &Path) -> DiscoveryClient<Channel> {
    let path = socket.to_owned();
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .unwrap();
    DiscoveryClient::new(channel)
}

fn request(address: &str, port: u32) -> wire::ResolveRequest {
    wire::ResolveRequest {
        destination: Some(wire::Destination {
            address: address.into(),
            port,
        }),
    }
}

async fn resolve(
    client: &mut DiscoveryClient<Channel>,
    address: &str,
    port: u32,
) -> Result<Kind, tonic::Status> {
    let response = client.resolve(request(address, port)).await?.into_inner();
    assert_eq!(response.destination, request(address, port).destination);
    Ok(response.resolution.unwrap().kind.unwrap())
}

/// Resolves until the server has listed the cluster (the first lookups may time out).
async fn resolve_when_ready(client: &DiscoveryClient<Channel>, address: &str, port: u32) -> Kind {
    eventually("a first answer", || {
        let mut client = client.clone();
        async move {
            match resolve(&mut client, address, port).await {
                Ok(kind) => Some(kind),
                Err(s) if s.code() == Code::Unavailable => None,
                Err(s) => panic!("{s:?}"),
            }
        }
    })
    .await
}

fn endpoints(kind: &Kind) -> Vec<(String, u32, bool, String)> {
    match kind {
        Kind::Service(s) => s
            .endpoints
            .iter()
            .map(|e| (e.address.clone(), e.port, e.meshed, e.spiffe_id.clone()))
            .collect(),
        other => panic!("not a service: {other:?}"),
    }
}

fn fast_settings() -> CacheSettings {
    CacheSettings {
        first_answer_timeout: Duration::from_secs(2),
        ..CacheSettings::default()
    }
}

#[tokio::test]
async fn resolve_and_watch_follow_the_cluster() {
    let w = world(fast_settings(), 8).await;
    let mut client = connect(&w.socket).await;

    let meshed = resolve_when_ready(&client, "10.1.0.1", 443).await;
    assert!(
        matches!(&meshed, Kind::MeshedPod(m) if m.spiffe_id == WEB_ID && m.name == "web-1"),
        "{meshed:?}"
    );
    let legacy = resolve(&mut client, "10.1.0.9", 80).await.unwrap();
    assert!(
        matches!(&legacy, Kind::UnmeshedPod(p) if p.name == "legacy"),
        "{legacy:?}"
    );
    let unknown = resolve(&mut client, "192.0.2.1", 80).await.unwrap();
    assert!(matches!(unknown, Kind::Unknown(_)), "{unknown:?}");
    let svc = resolve(&mut client, "10.96.0.10", 80).await.unwrap();
    assert_eq!(
        endpoints(&svc),
        [("10.1.0.1".to_owned(), 8080, true, WEB_ID.to_owned())]
    );
    // Served from the cache: the agent holds exactly the four destinations asked about.
    assert_eq!(w.cache.len(), 4);
    let again = resolve(&mut client, "10.96.0.10", 80).await.unwrap();
    assert_eq!(again, svc);
    assert_eq!(w.cache.len(), 4);

    // A Watch on the Service sees scaling without another lookup.
    let mut svc_watch = client
        .watch(request("10.96.0.10", 80))
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut svc_watch).await;
    assert_eq!(endpoints(&first).len(), 1);
    let store = w.c.fixture.store();
    store
        .modify::<EndpointSlice>("default", "web-a", |s| {
            for e in &mut s.endpoints {
                e.conditions.as_mut().unwrap().ready = Some(true);
            }
        })
        .unwrap();
    let up = next(&mut svc_watch).await;
    assert_eq!(
        endpoints(&up),
        [
            ("10.1.0.1".to_owned(), 8080, true, WEB_ID.to_owned()),
            ("10.1.0.2".to_owned(), 8080, true, WEB_ID.to_owned()),
        ]
    );
    store
        .modify::<EndpointSlice>("default", "web-a", |s| {
            s.endpoints.remove(0);
        })
        .unwrap();
    let down = next(&mut svc_watch).await;
    assert_eq!(
        endpoints(&down),
        [("10.1.0.2".to_owned(), 8080, true, WEB_ID.to_owned())]
    );

    // Deleting a pod: a Watch on its IP turns Unknown.
    let mut pod_watch = client
        .watch(request("10.1.0.1", 443))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(next(&mut pod_watch).await, Kind::MeshedPod(_)));
    store.delete::<Pod>("default", "web-1").unwrap();
    assert!(matches!(next(&mut pod_watch).await, Kind::Unknown(_)));
}

async fn next(stream: &mut tonic::Streaming<wire::ResolveResponse>) -> Kind {
    tokio::time::timeout(DEADLINE, stream.message())
        .await
        .expect("an update before the deadline")
        .expect("stream healthy")
        .expect("stream open")
        .resolution
        .unwrap()
        .kind
        .unwrap()
}

#[tokio::test]
async fn cached_answers_outlive_the_server_until_they_expire() {
    let ttl = Duration::from_secs(2);
    let mut w = world(
        CacheSettings {
            ttl,
            first_answer_timeout: Duration::from_millis(500),
            ..CacheSettings::default()
        },
        8,
    )
    .await;
    let mut client = connect(&w.socket).await;
    let meshed = resolve_when_ready(&client, "10.1.0.1", 443).await;
    assert!(matches!(meshed, Kind::MeshedPod(_)));
    let mut watch = client
        .watch(request("10.1.0.1", 443))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(next(&mut watch).await, Kind::MeshedPod(_)));

    // The server goes away.
    let stopped_at = tokio::time::Instant::now();
    drop(w.server.take());
    eventually("the agent to notice", || {
        let live = w.cache.is_live();
        async move { (!live).then_some(()) }
    })
    .await;
    // The known answer is still served; a destination never asked about cannot be.
    let cached = resolve(&mut client, "10.1.0.1", 443).await.unwrap();
    assert!(matches!(cached, Kind::MeshedPod(m) if m.spiffe_id == WEB_ID));
    let new = resolve(&mut client, "10.1.0.9", 80).await.unwrap_err();
    assert_eq!(new.code(), Code::Unavailable);
    assert!(new.message().starts_with("not_ready"), "{new:?}");

    // Until it expires: then Unavailable "expired", never a downgrade to Unknown; open
    // watches end the same way.
    let expired = eventually("the cached answer to expire", || {
        let mut client = client.clone();
        async move {
            match resolve(&mut client, "10.1.0.1", 443).await {
                Ok(Kind::MeshedPod(_)) => None,
                Ok(other) => panic!("downgraded to {other:?}"),
                Err(status) => Some(status),
            }
        }
    })
    .await;
    assert!(
        stopped_at.elapsed() >= ttl,
        "served for the whole TTL after the server stopped"
    );
    assert_eq!(expired.code(), Code::Unavailable);
    assert!(expired.message().starts_with("expired"), "{expired:?}");
    let ended = tokio::time::timeout(DEADLINE, watch.message())
        .await
        .unwrap()
        .unwrap_err();
    assert!(ended.message().starts_with("expired"), "{ended:?}");

    // A server back at the same address: the feed reopens and answers are current again.
    w.server = Some(w.c.server_on("s", w.server_addr).await);
    let back = resolve_when_ready(&client, "10.1.0.1", 443).await;
    assert!(matches!(back, Kind::MeshedPod(_)));
    drop(w.agent);
}

#[tokio::test]
async fn refusals_and_bounds() {
    let w = world(fast_settings(), 1).await;
    let mut client = connect(&w.socket).await;
    resolve_when_ready(&client, "10.1.0.1", 443).await;

    for (address, port) in [("web.default.svc", 80), ("[::1]", 80), ("10.0.0.1", 0)] {
        let err = resolve(&mut client, address, port).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{address}:{port}");
        assert!(err.message().starts_with("bad_destination"), "{err:?}");
    }
    let err = client
        .resolve(wire::ResolveRequest { destination: None })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // One watch per caller here: the second is refused until the first ends.
    let first = client
        .watch(request("10.1.0.1", 443))
        .await
        .unwrap()
        .into_inner();
    let err = client
        .watch(request("10.1.0.1", 443))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().starts_with("too_many_watches"), "{err:?}");
    drop(first);
    eventually("the watch slot to be released", || {
        let mut client = client.clone();
        async move { client.watch(request("10.1.0.1", 443)).await.ok() }
    })
    .await;

    // The agent's real identities: this process (in no pod, no static entry) holds none,
    // and both services on the real socket say so.
    let (_stop, stopping) = watch::channel(false);
    let real_socket = w.c.dir.path().join("real.sock");
    let identities = w.agent.identities();
    let path = real_socket.clone();
    let cache = w.cache.clone();
    let _serving = tokio::spawn(async move {
        let services = Services::new()
            .workload_api(
                identities.clone(),
                Limits::default(),
                WorkloadApiMetrics::default(),
            )
            .discovery(cache, identities);
        socket::serve(
            &path,
            Arc::new(WorkloadAttestor::default()),
            ConnectionLimits::default(),
            services,
            async move {
                let _ = stopping;
                std::future::pending::<()>().await
            },
        )
        .await
        .unwrap();
    });
    let mut stranger = eventually("the real socket", || {
        let path = real_socket.clone();
        async move {
            if path.exists() {
                Some(connect(&path).await)
            } else {
                None
            }
        }
    })
    .await;
    let err = resolve(&mut stranger, "10.1.0.1", 443).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().starts_with("no_identity"), "{err:?}");
    let err = stranger
        .watch(request("10.1.0.1", 443))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::PermissionDenied);
    // The Workload API is served on the same socket, as a separate service.
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = real_socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .unwrap();
    let mut workload = SpiffeWorkloadApiClient::new(channel);
    let mut fetch = tonic::Request::new(X509svidRequest {});
    fetch
        .metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    let err = match workload.fetch_x509svid(fetch).await {
        Err(status) => status,
        Ok(stream) => tokio::time::timeout(DEADLINE, stream.into_inner().message())
            .await
            .unwrap()
            .unwrap_err(),
    };
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(err.message(), "no identity issued");
}

/// Issue 14, finding 8: one workload resolving ever new destinations as fast as it can used
/// to fill the agent's whole cache, and every other workload's `Resolve` then failed
/// `too_many_destinations`. Now the flooding caller (this process, uid 0) is refused at its
/// share, and another caller (another uid, the `lanyard-agent api` CLI run by `setpriv`)
/// still resolves a destination nobody asked about before, over the same real socket.
#[tokio::test]
async fn a_caller_flooding_destinations_is_held_to_its_share_and_others_still_resolve() {
    const SHARE: usize = 24;
    const FLOOD: usize = 8 * SHARE;
    let w = world(
        CacheSettings {
            max_entries: 4 * SHARE,
            max_per_caller: SHARE,
            ..fast_settings()
        },
        8,
    )
    .await;
    let mut client = connect(&w.socket).await;
    resolve_when_ready(&client, "10.1.0.9", 80).await;

    // The flood: FLOOD distinct destinations (the first one above counts too).
    let (mut admitted, mut over_share) = (1, 0);
    for i in 0..FLOOD {
        match resolve(&mut client, "192.0.2.7", 1000 + i as u32).await {
            Err(s) if s.code() == Code::ResourceExhausted => {
                let label = s
                    .metadata()
                    .get(lanyard_proto::discovery::REFUSAL_TRAILER)
                    .and_then(|v| v.to_str().ok());
                assert_eq!(label, Some("caller_destination_budget"), "{s:?}");
                over_share += 1;
            }
            // Admitted: answered, or (a slow first answer) not_ready; both are followed.
            Ok(_) => admitted += 1,
            Err(s) if s.code() == Code::Unavailable => admitted += 1,
            Err(s) => panic!("{s:?}"),
        }
    }
    assert_eq!(admitted, SHARE, "admitted up to its share");
    assert_eq!(over_share, FLOOD + 1 - SHARE, "refused beyond it");
    assert_eq!(
        w.cache.len(),
        SHARE,
        "the flood holds its share, not the cache"
    );
    // What it holds stays served.
    let held = resolve(&mut client, "10.1.0.9", 80).await.unwrap();
    assert!(matches!(held, Kind::UnmeshedPod(_)), "{held:?}");

    // Another workload (uid 4242) on the same socket: a new destination resolves.
    let dir = w.c.dir.path();
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let socket = w.socket.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("setpriv")
            .args(["--reuid=4242", "--regid=4242", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_lanyard-agent"))
            .args([
                "api",
                "resolve",
                "10.1.0.1:443",
                "--timeout",
                "10s",
                "--socket",
            ])
            .arg(&socket)
            .env_remove("SPIFFE_ENDPOINT_SOCKET")
            .env_remove("LANYARD_SOCKET")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert_eq!(
        stdout.trim(),
        format!("meshed_pod default/web-1 {WEB_ID}"),
        "{stderr}"
    );
    assert_eq!(w.cache.len(), SHARE + 1);
}
