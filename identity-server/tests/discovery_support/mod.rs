//! A Kubernetes API fixture seeded for discovery, and a real lanyard-server in cluster mode on
//! it. Shared by the server's discovery tests, the agent's discovery tests and the discovery
//! benchmark (included by path from lanyard-agent, so it uses only lanyard-server's public
//! API, kube-fixture, k8s-openapi and lanyard-e2e). The objects themselves (RBAC as `lanyard
//! install` renders it, CA Secret, bundle ConfigMap, pods, Services, EndpointSlices) are the
//! end-to-end tests' own, from `lanyard_e2e::cluster`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube_fixture::{FixtureOptions, KubeFixture, TokenBinding};
use lanyard_e2e::cluster;
use lanyard_server::config::RunArgs;
use lanyard_svid::ca::RootCa;
use lanyard_svid::{BundleSet, TrustBundle, TrustDomain};
use tokio::sync::oneshot;

pub const TD: &str = "example.org";
pub const DEADLINE: Duration = Duration::from_secs(20);
const DAY: Duration = Duration::from_secs(86_400);

pub fn td() -> TrustDomain {
    TrustDomain::new(TD).unwrap()
}

/// A fixture with the CA Secret, the bundle ConfigMap and the agent's pod on `node-1`.
pub struct Cluster {
    pub fixture: KubeFixture,
    pub root: RootCa,
    pub agent_pod_uid: String,
    pub dir: tempfile::TempDir,
}

pub async fn cluster() -> Cluster {
    cluster_with(FixtureOptions::default()).await
}

/// [`cluster`] with fixture options (e.g. a larger object limit for benchmarks).
pub async fn cluster_with(options: FixtureOptions) -> Cluster {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fixture = KubeFixture::start(options).await.unwrap();
    fixture.apply_yaml(&cluster::server_rbac()).unwrap();
    let root = RootCa::generate(&td(), DAY * 30, SystemTime::now()).unwrap();
    let store = fixture.store();
    store.create(&cluster::ca_secret(&root)).unwrap();
    store
        .create(&cluster::bundle_configmap(&root.cert_pem()))
        .unwrap();
    let agent = store
        .create(&pod(PodSpecArgs {
            ns: "lanyard",
            name: "lanyard-agent-x",
            sa: "lanyard-agent",
            ip: None,
            meshed: false,
        }))
        .unwrap();
    Cluster {
        agent_pod_uid: agent.metadata.uid.unwrap(),
        fixture,
        root,
        dir: tempfile::tempdir().unwrap(),
    }
}

/// A running server; stops when dropped.
pub struct Server {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

impl Cluster {
    /// A server on 127.0.0.1:0 using the `lanyard-server` ServiceAccount (RBAC applies).
    pub async fn server(&self, name: &str) -> Server {
        self.server_on(name, "127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn server_on(&self, name: &str, listen: SocketAddr) -> Server {
        let client = self
            .fixture
            .client_for(&self.fixture.issue_api_token("lanyard", "lanyard-server"))
            .unwrap();
        // Spelled out (not tests/common's cluster_args): the agent's discovery bench includes
        // this module without tests/common.
        let args = RunArgs {
            trust_domain: Some(TD.into()),
            listen: Some(listen),
            data_dir: Some(self.dir.path().join(name)),
            kube: true,
            ca_secret: Some("lanyard/lanyard-ca".into()),
            bundle_configmap: Some("lanyard/lanyard-bundle".into()),
            agent_sa: vec!["lanyard:lanyard-agent".into()],
            ..Default::default()
        };
        let config = args.resolve().unwrap();
        let (addr_tx, addr_rx) = oneshot::channel();
        let addr_tx = std::sync::Mutex::new(Some(addr_tx));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let result = lanyard_server::run::run(
                config,
                Some(client),
                move |role, addr| {
                    if role == "grpc"
                        && let Some(tx) = addr_tx.lock().unwrap().take()
                    {
                        let _ = tx.send(addr);
                    }
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
        let addr = tokio::time::timeout(DEADLINE, addr_rx)
            .await
            .expect("server listens before the deadline")
            .expect("server started");
        Server {
            addr,
            stop: Some(stop),
            task,
        }
    }

    /// A projected ServiceAccount token of the agent's pod on node-1, for the server.
    pub fn agent_token(&self) -> String {
        self.fixture.issue_service_account_token(
            "lanyard",
            "lanyard-agent",
            Some(TokenBinding {
                pod_name: "lanyard-agent-x".into(),
                pod_uid: self.agent_pod_uid.clone(),
                node_name: Some("node-1".into()),
            }),
            &["lanyard-server"],
            Duration::from_secs(3600),
        )
    }

    pub fn bundle(&self) -> BundleSet {
        BundleSet::from(TrustBundle::from_x509_authorities(
            td(),
            [self.root.cert_der().clone()],
        ))
    }

    pub fn root_pem(&self) -> String {
        self.root.cert_pem()
    }
}

pub struct PodSpecArgs<'a> {
    pub ns: &'a str,
    pub name: &'a str,
    pub sa: &'a str,
    pub ip: Option<&'a str>,
    /// Annotated for injection, with a running and ready `lanyard-proxy` native sidecar.
    pub meshed: bool,
}

/// A running pod on node-1 as [`PodSpecArgs`] describes it.
pub fn pod(a: PodSpecArgs<'_>) -> Pod {
    let mut pod = cluster::pod(a.ns, a.name, a.sa, "node-1", None);
    if let Some(ip) = a.ip {
        pod = cluster::with_ip(pod, ip);
    }
    if a.meshed {
        // The proxy's container ID only matters to workload attestation, not to discovery.
        pod = cluster::injected(pod, &"0".repeat(64));
    }
    pod
}

/// A ClusterIP Service with one TCP port named `port_name`.
pub fn service(ns: &str, name: &str, cluster_ip: &str, port: i32, port_name: &str) -> Service {
    cluster::service(ns, name, cluster_ip, port, port_name)
}

/// An EndpointSlice of `service` whose port `port_name` is `target_port`, with endpoints
/// `(ip, ready)`.
pub fn slice(
    ns: &str,
    name: &str,
    service: &str,
    port_name: &str,
    target_port: i32,
    endpoints: &[(&str, bool)],
) -> EndpointSlice {
    cluster::endpoint_slice(ns, name, service, port_name, target_port, endpoints)
}

/// Polls `check` until it returns `Some` or [`DEADLINE`] passes (caches follow the API
/// asynchronously: wait for a condition, never for a fixed time).
pub async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    check: impl FnMut() -> F,
) -> T {
    lanyard_e2e::wait::eventually_within(what, DEADLINE, check).await
}
