//! A Kubernetes API fixture seeded for discovery, and a real lanyard-server in cluster mode on
//! it. Shared by the server's discovery tests, the agent's discovery tests and the discovery
//! benchmark (included by path from lanyard-agent, so it uses only lanyard-server's public
//! API, kube-fixture and k8s-openapi).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    ConfigMap, ContainerState, ContainerStateRunning, ContainerStatus, Pod, PodIP, PodSpec,
    PodStatus, Secret, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube_fixture::{FixtureOptions, KubeFixture, TokenBinding};
use lanyard_server::config::RunArgs;
use lanyard_svid::ca::RootCa;
use lanyard_svid::jwt::JwtSigner;
use lanyard_svid::{BundleSet, TrustBundle, TrustDomain};
use tokio::sync::oneshot;

pub const TD: &str = "example.org";
pub const DEADLINE: Duration = Duration::from_secs(20);
const DAY: Duration = Duration::from_secs(86_400);

/// The server's permissions with discovery: the base set plus list/watch on Services and
/// EndpointSlices (and nothing else).
pub const SERVER_RBAC: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: lanyard-server}
rules:
- apiGroups: ["authentication.k8s.io"]
  resources: ["tokenreviews"]
  verbs: ["create"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["list", "watch"]
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["list", "watch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: lanyard-server}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: lanyard-server}
subjects:
- {kind: ServiceAccount, name: lanyard-server, namespace: lanyard}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: lanyard-server, namespace: lanyard}
rules:
- apiGroups: [""]
  resources: ["secrets"]
  resourceNames: ["lanyard-ca"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["configmaps"]
  resourceNames: ["lanyard-bundle"]
  verbs: ["get", "list", "watch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: lanyard-server, namespace: lanyard}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: lanyard-server}
subjects:
- {kind: ServiceAccount, name: lanyard-server, namespace: lanyard}
"#;

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
    fixture.apply_yaml(SERVER_RBAC).unwrap();
    let root = RootCa::generate(&td(), DAY * 30, SystemTime::now()).unwrap();
    let (_, jwt_pkcs8) = JwtSigner::generate().unwrap();
    let store = fixture.store();
    store.create(&ca_secret(&root, &jwt_pkcs8)).unwrap();
    store.create(&bundle_configmap(&root)).unwrap();
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

pub fn pod(a: PodSpecArgs<'_>) -> Pod {
    let annotations = a.meshed.then(|| {
        [(
            lanyard_server::discovery::INJECT_ANNOTATION.to_string(),
            lanyard_server::discovery::INJECT_ENABLED.to_string(),
        )]
        .into()
    });
    let proxy = a.meshed.then(|| {
        vec![ContainerStatus {
            name: lanyard_server::discovery::PROXY_CONTAINER.into(),
            ready: true,
            started: Some(true),
            state: Some(ContainerState {
                running: Some(ContainerStateRunning::default()),
                ..Default::default()
            }),
            ..Default::default()
        }]
    });
    Pod {
        metadata: ObjectMeta {
            name: Some(a.name.into()),
            namespace: Some(a.ns.into()),
            annotations,
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some("node-1".into()),
            service_account_name: Some(a.sa.into()),
            containers: vec![],
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: a.ip.map(Into::into),
            pod_ips: a.ip.map(|ip| vec![PodIP { ip: ip.into() }]),
            init_container_statuses: proxy,
            ..Default::default()
        }),
    }
}

/// A ClusterIP Service with one TCP port named `port_name`.
pub fn service(ns: &str, name: &str, cluster_ip: &str, port: i32, port_name: &str) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(cluster_ip.into()),
            cluster_ips: Some(vec![cluster_ip.into()]),
            ports: Some(vec![ServicePort {
                name: Some(port_name.into()),
                port,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
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
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: Some(
                [(
                    "kubernetes.io/service-name".to_string(),
                    service.to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        ports: Some(vec![EndpointPort {
            name: Some(port_name.into()),
            port: Some(target_port),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        endpoints: endpoints
            .iter()
            .map(|(ip, ready)| Endpoint {
                addresses: vec![(*ip).into()],
                conditions: Some(EndpointConditions {
                    ready: Some(*ready),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
    }
}

fn ca_secret(root: &RootCa, jwt_pkcs8: &[u8]) -> Secret {
    let issuer = root.issue_intermediate(DAY, SystemTime::now()).unwrap();
    Secret {
        metadata: ObjectMeta {
            name: Some("lanyard-ca".into()),
            namespace: Some("lanyard".into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            [
                (
                    "tls.crt".to_string(),
                    ByteString(issuer.cert_chain_pem().into_bytes()),
                ),
                (
                    "tls.key".to_string(),
                    ByteString(issuer.key_pem().as_bytes().to_vec()),
                ),
                (
                    "jwt.key".to_string(),
                    ByteString(pem_private_key(jwt_pkcs8).into_bytes()),
                ),
            ]
            .into(),
        ),
        ..Default::default()
    }
}

fn pem_private_key(pkcs8: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(pkcs8);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    )
}

fn bundle_configmap(root: &RootCa) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some("lanyard-bundle".into()),
            namespace: Some("lanyard".into()),
            ..Default::default()
        },
        data: Some([("bundle.pem".to_string(), root.cert_pem())].into()),
        ..Default::default()
    }
}

/// Polls `check` until it returns `Some` or [`DEADLINE`] passes (caches follow the API
/// asynchronously: wait for a condition, never for a fixed time).
pub async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
