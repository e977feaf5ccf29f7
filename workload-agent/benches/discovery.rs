//! Discovery distribution benchmark: pushing the whole map to every agent versus on-demand
//! lookups with watches (what Lanyard does), at 1,000 and 10,000 pods.
//!
//! Cluster shape: 30 pods per node, every pod meshed, one Service per 10 pods (one port, one
//! EndpointSlice of 10 ready endpoints). On-demand: each agent follows 150 Service
//! destinations (its 30 pods talking to 5 Services each), chosen by a fixed-seed generator.
//!
//! Measured:
//! - memory: live heap bytes (a counting global allocator) of the server's three indexes,
//!   and of an agent's answer map (`HashMap<Destination, Resolution>`, decoded from the wire)
//!   holding the whole map or only its followed destinations;
//! - traffic: protobuf bytes of a full sync, and of the updates one pod change causes
//!   (its pod-IP answer and its Service's answer), summed over the agents that receive them;
//! - resolve latency, through the real stack (kube fixture seeded with the cluster, cluster
//!   mode lanyard-server, k8s_psat agent, `Discovery.Resolve` over the Unix socket): cached
//!   (a destination already answered) and first (a destination never asked about: one
//!   `DiscoveryFeed` round trip). Full push has no "first": every lookup is local, i.e. the
//!   cached figure.
//!
//! Run: `cargo bench -p lanyard-agent --bench discovery`.

#[path = "../../identity-server/tests/discovery_support/mod.rs"]
mod discovery_support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use discovery_support::*;
use hyper_util::rt::TokioIo;
use lanyard_agent::attest::{Attested, WorkloadAttestor};
use lanyard_agent::config::RunArgs;
use lanyard_agent::identities::{Entitlement, IdentityError, WorkloadIdentities};
use lanyard_agent::metrics::AgentMetrics;
use lanyard_agent::run::{Agent, Readiness};
use lanyard_agent::server_client::discovery_cache::{CacheSettings, DiscoveryCache};
use lanyard_agent::server_client::discovery_feed::{self as feed, FeedTarget};
use lanyard_agent::socket::{self, ConnectionLimits, Services};
use lanyard_proto::discovery::v1 as wire;
use lanyard_proto::discovery::v1::discovery_client::DiscoveryClient;
use lanyard_proto::discovery_destination::Destination;
use lanyard_proto::identity::v1 as id_wire;
use lanyard_server::discovery::DiscoverySources;
use lanyard_server::k8s::endpoint_slices::{SliceEndpoint, SliceInfo};
use lanyard_server::k8s::pods::PodInfo;
use lanyard_server::k8s::services::{ServiceInfo, ServicePort};
use lanyard_svid::x509::X509Svid;
use lanyard_svid::{BundleSet, SpiffeId};
use prost::Message;
use tokio::net::UnixStream;
use tokio::sync::watch;
use tonic::transport::Endpoint;

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed unchanged to the system allocator, which upholds the
// GlobalAlloc contract; the counter only observes sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's `layout` contract is passed on as it is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `System` (every allocation here does) with this `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: as for `dealloc`; the caller guarantees `new_size` is valid for `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

const PODS_PER_NODE: usize = 30;
const PODS_PER_SERVICE: usize = 10;
const FOLLOWED_PER_AGENT: usize = 150;

fn pod_ip(i: usize) -> String {
    format!("10.{}.{}.{}", 1 + i / 65536, (i / 256) % 256, i % 256)
}

fn service_ip(s: usize) -> String {
    format!("10.96.{}.{}", s / 256, s % 256)
}

/// A small deterministic generator (no dependency, same numbers every run).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, below: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) as usize) % below
    }
}

fn build_sources(pods: usize) -> DiscoverySources {
    let sources = DiscoverySources::empty(td(), "/ns/{namespace}/sa/{service_account}".into());
    let mut infos = Vec::with_capacity(pods);
    for i in 0..pods {
        let s = i / PODS_PER_SERVICE;
        infos.push(PodInfo {
            namespace: "default".into(),
            name: format!("app-{s}-{i}"),
            uid: format!("00000000-0000-0000-0000-{i:012}"),
            service_account: format!("app-{s}"),
            node_name: format!("node-{}", i / PODS_PER_NODE),
            labels: [("app".to_string(), format!("app-{s}"))].into(),
            annotations: [(
                lanyard_proto::inject::INJECT_ANNOTATION.to_string(),
                lanyard_proto::inject::INJECT_ENABLED.to_string(),
            )]
            .into(),
            container_ids: vec![format!("{i:064x}")],
            container_names: Default::default(),
            pod_ips: vec![pod_ip(i)],
            active: true,
            host_network: false,
            proxy_ready: true,
        });
    }
    sources.pods.replace_all(infos);
    let services = pods / PODS_PER_SERVICE;
    let mut svcs = Vec::new();
    let mut slices = Vec::new();
    for s in 0..services {
        svcs.push((
            ("default".to_string(), format!("app-{s}")),
            ServiceInfo {
                cluster_ips: vec![service_ip(s).parse().unwrap()],
                ports: vec![ServicePort {
                    name: "http".into(),
                    port: 80,
                }],
            },
        ));
        slices.push((
            ("default".to_string(), format!("app-{s}-abcde")),
            SliceInfo {
                namespace: "default".into(),
                service: format!("app-{s}"),
                ports: vec![("http".into(), 8080)],
                endpoints: (0..PODS_PER_SERVICE)
                    .map(|k| SliceEndpoint {
                        addresses: vec![pod_ip(s * PODS_PER_SERVICE + k).parse().unwrap()],
                        ready: true,
                    })
                    .collect(),
            },
        ));
    }
    sources.services.replace_all(svcs);
    sources.slices.replace_all(slices);
    sources
}

fn dest(address: &str, port: u16) -> Destination {
    Destination {
        address: address.parse().unwrap(),
        port,
    }
}

fn answer(sources: &DiscoverySources, d: Destination) -> wire::DestinationResolution {
    wire::DestinationResolution {
        destination: Some(d.to_wire()),
        resolution: Some(sources.resolve(d)),
    }
}

/// An agent's answer map, decoded from the wire as an agent would hold it.
fn agent_map(update: &wire::FollowUpdate) -> HashMap<Destination, wire::Resolution> {
    let bytes = update.encode_to_vec();
    let decoded = wire::FollowUpdate::decode(bytes.as_slice()).unwrap();
    decoded
        .updates
        .into_iter()
        .map(|u| {
            (
                Destination::from_wire(u.destination.as_ref()).unwrap(),
                u.resolution.unwrap(),
            )
        })
        .collect()
}

struct Sizes {
    server_index: isize,
    full_sync_bytes: usize,
    full_agent_map: isize,
    on_demand_sync_bytes: usize,
    on_demand_agent_map: isize,
    change_full: usize,
    change_on_demand: usize,
    followers_of_changed_service: usize,
    nodes: usize,
}

fn sizes(pods: usize) -> Sizes {
    let before = live();
    let sources = build_sources(pods);
    let server_index = live() - before;
    let nodes = pods.div_ceil(PODS_PER_NODE);
    let services = pods / PODS_PER_SERVICE;

    // Full push: every pod IP and every Service port.
    let mut all: Vec<wire::DestinationResolution> = (0..pods)
        .map(|i| answer(&sources, dest(&pod_ip(i), 8080)))
        .collect();
    all.extend((0..services).map(|s| answer(&sources, dest(&service_ip(s), 80))));
    let full = wire::FollowUpdate { updates: all };
    let full_sync_bytes = full.encoded_len();
    let before = live();
    let map = agent_map(&full);
    let full_agent_map = live() - before;
    drop(map);

    // On demand: each agent follows FOLLOWED_PER_AGENT Services (fewer if there are fewer).
    let mut rng = Lcg(42);
    let per_agent = FOLLOWED_PER_AGENT.min(services);
    let followed: Vec<Vec<usize>> = (0..nodes)
        .map(|_| {
            let mut set = std::collections::BTreeSet::new();
            while set.len() < per_agent {
                set.insert(rng.next(services));
            }
            set.into_iter().collect()
        })
        .collect();
    let one = wire::FollowUpdate {
        updates: followed[0]
            .iter()
            .map(|s| answer(&sources, dest(&service_ip(*s), 80)))
            .collect(),
    };
    let on_demand_sync_bytes = one.encoded_len();
    let before = live();
    let map = agent_map(&one);
    let on_demand_agent_map = live() - before;
    drop(map);

    // One pod changes (say it restarts with its proxy not ready): its own answer and its
    // Service's answer change.
    let changed_service = 0;
    let delta = wire::FollowUpdate {
        updates: vec![
            answer(&sources, dest(&pod_ip(0), 8080)),
            answer(&sources, dest(&service_ip(changed_service), 80)),
        ],
    };
    let change_full = delta.encoded_len() * nodes;
    let service_update = wire::FollowUpdate {
        updates: vec![answer(&sources, dest(&service_ip(changed_service), 80))],
    };
    let followers = followed
        .iter()
        .filter(|f| f.contains(&changed_service))
        .count();
    Sizes {
        server_index,
        full_sync_bytes,
        full_agent_map,
        on_demand_sync_bytes,
        on_demand_agent_map,
        change_full,
        change_on_demand: service_update.encoded_len() * followers,
        followers_of_changed_service: followers,
        nodes,
    }
}

/// Grants every caller an identity (discovery only asks whether there is one).
struct Granted;

#[tonic::async_trait]
impl WorkloadIdentities for Granted {
    fn resolve(&self, _: &Attested) -> Vec<Entitlement> {
        vec![Entitlement {
            spiffe_id: SpiffeId::parse("spiffe://example.org/bench").unwrap(),
            workload: id_wire::Workload {
                kind: Some(id_wire::workload::Kind::EntrySpiffeId(
                    "spiffe://example.org/bench".into(),
                )),
                entry_pod: None,
            },
            x509_ttl: None,
            hint: String::new(),
            federates_with: Vec::new(),
        }]
    }
    async fn x509_svids(&self, _: &[Entitlement]) -> Result<Vec<Arc<X509Svid>>, IdentityError> {
        Err(IdentityError::NotReady("bench".into()))
    }
    async fn jwt_svid(&self, _: &Entitlement, _: &[String]) -> Result<String, IdentityError> {
        Err(IdentityError::NotReady("bench".into()))
    }
    fn bundles(&self) -> Arc<BundleSet> {
        Arc::new(BundleSet::new())
    }
    fn changes(&self) -> watch::Receiver<u64> {
        watch::channel(0).1
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Resolve latency through the real stack with `pods` pods in the fixture.
async fn latencies(pods: usize) -> ((Duration, Duration), (Duration, Duration)) {
    let mut options = kube_fixture::FixtureOptions::default();
    options.limits.max_objects = 4 * pods;
    let c = cluster_with(options).await;
    let store = c.fixture.store();
    for i in 0..pods {
        let s = i / PODS_PER_SERVICE;
        store
            .create(&pod(PodSpecArgs {
                ns: "default",
                name: &format!("app-{s}-{i}"),
                sa: &format!("app-{s}"),
                ip: Some(&pod_ip(i)),
                meshed: true,
            }))
            .unwrap();
    }
    for s in 0..pods / PODS_PER_SERVICE {
        store
            .create(&service(
                "default",
                &format!("app-{s}"),
                &service_ip(s),
                80,
                "http",
            ))
            .unwrap();
        let ips: Vec<String> = (0..PODS_PER_SERVICE)
            .map(|k| pod_ip(s * PODS_PER_SERVICE + k))
            .collect();
        let endpoints: Vec<(&str, bool)> = ips.iter().map(|ip| (ip.as_str(), true)).collect();
        store
            .create(&slice(
                "default",
                &format!("app-{s}-abcde"),
                &format!("app-{s}"),
                "http",
                8080,
                &endpoints,
            ))
            .unwrap();
    }
    let server = c.server("bench").await;
    let dir = c.dir.path();
    std::fs::write(dir.join("token"), c.agent_token()).unwrap();
    std::fs::write(dir.join("bundle.pem"), c.root_pem()).unwrap();
    let config = RunArgs {
        server: Some(server.addr.to_string()),
        trust_bundle: Some(dir.join("bundle.pem")),
        k8s_token_path: Some(dir.join("token")),
        socket: Some(dir.join("unused.sock")),
        ..Default::default()
    }
    .resolve()
    .unwrap();
    let agent = Agent::start(
        &config,
        AgentMetrics::unregistered(),
        Arc::new(Readiness::default()),
    )
    .await
    .unwrap();
    let cache = Arc::new(DiscoveryCache::new(CacheSettings::default()));
    let _feed = feed::spawn(
        cache.clone(),
        FeedTarget {
            address: server.addr.to_string(),
            store: agent.store.clone(),
            trust_domain: agent.trust_domain.clone(),
        },
    );
    let path = dir.join("agent.sock");
    let serve_path = path.clone();
    tokio::spawn(async move {
        socket::serve(
            &serve_path,
            Arc::new(WorkloadAttestor::default()),
            ConnectionLimits::default(),
            Services::new().discovery_with_watches(cache, Arc::new(Granted), 64),
            std::future::pending(),
        )
        .await
        .unwrap();
    });
    eventually("the socket to be bound", || {
        let exists = path.exists();
        async move { exists.then_some(()) }
    })
    .await;
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .unwrap();
    let mut client = DiscoveryClient::new(channel);
    let request = |address: String| wire::ResolveRequest {
        destination: Some(wire::Destination { address, port: 80 }),
    };
    // Wait for the server's caches to be listed.
    let warm = service_ip(0);
    eventually("the first answer", || {
        let mut client = client.clone();
        let r = request(warm.clone());
        async move { client.resolve(r).await.ok() }
    })
    .await;

    let services = pods / PODS_PER_SERVICE;
    let first_n = 200.min(services - 1);
    let mut first = Vec::new();
    for s in 1..=first_n {
        let start = Instant::now();
        client.resolve(request(service_ip(s))).await.unwrap();
        first.push(start.elapsed());
    }
    let mut cached = Vec::new();
    for k in 0..5000 {
        let start = Instant::now();
        client
            .resolve(request(service_ip(1 + k % first_n)))
            .await
            .unwrap();
        cached.push(start.elapsed());
    }
    first.sort();
    cached.sort();
    drop(agent);
    (
        (percentile(&cached, 0.5), percentile(&cached, 0.99)),
        (percentile(&first, 0.5), percentile(&first, 0.99)),
    )
}

fn kib(bytes: isize) -> String {
    format!("{:.1} KiB", bytes as f64 / 1024.0)
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    for pods in [1_000, 10_000] {
        let s = sizes(pods);
        println!(
            "== {pods} pods, {} nodes, {} services ==",
            s.nodes,
            pods / PODS_PER_SERVICE
        );
        println!(
            "server indexes (pods+services+slices): {}",
            kib(s.server_index)
        );
        println!(
            "full push:  sync {} per agent ({} for all agents); agent map {}; one pod change {} in total",
            kib(s.full_sync_bytes as isize),
            kib((s.full_sync_bytes * s.nodes) as isize),
            kib(s.full_agent_map),
            kib(s.change_full as isize)
        );
        println!(
            "on demand:  sync {} per agent ({FOLLOWED_PER_AGENT} followed max); agent map {}; one pod change {} in total ({} agents follow the Service)",
            kib(s.on_demand_sync_bytes as isize),
            kib(s.on_demand_agent_map),
            kib(s.change_on_demand as isize),
            s.followers_of_changed_service
        );
        let ((c50, c99), (f50, f99)) = runtime.block_on(latencies(pods));
        println!(
            "resolve over the socket: cached p50 {c50:?} p99 {c99:?}; first (one feed round trip) p50 {f50:?} p99 {f99:?}"
        );
    }
}
