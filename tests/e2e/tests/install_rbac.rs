//! `lanyard install` under RBAC (moved from lanyard-cli, which depends on no daemon crate):
//! the real lanyard-server and lanyard-agent, in-process, against the wire-compatible
//! Kubernetes API fixture loaded with exactly what `lanyard install` renders (namespace,
//! ServiceAccounts, RBAC, generated CA Secret and bundle ConfigMap), the server started with
//! the very argument list of its rendered Deployment (only the listen/health addresses and
//! the data dir moved to the test's), authenticating as its ServiceAccount so RBAC applies:
//! - the server becomes ready, attests an agent by TokenReview and mints a pod SVID;
//! - it writes its CA report (`lanyard-ca-report-<replica>`, created then patched) with what
//!   an agent acknowledged on `SyncBundle`, and deletes it when it stops;
//! - the real agent, with the rendered agent arguments and no Kubernetes client at all,
//!   attests with its projected token and becomes ready;
//! - what they do not need is refused: other Secrets, reading other ConfigMaps, writes but
//!   the report's, listing every Secret for the server; everything for the agent's ServiceAccount; the same with
//!   `--cni`, whose objects change nothing for them;
//! - the CNI plugin's ServiceAccount (`lanyard install --cni`) may get any pod and nothing
//!   else (no list or watch, no writes, no other resource); without `--cni` it may do nothing.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Args, FromArgMatches};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ListParams, PostParams};
use kube_fixture::{FixtureOptions, KubeFixture, TokenBinding};
use lanyard_cli::images::Images;
use lanyard_cli::install::ca::GeneratedCa;
use lanyard_cli::install::render::{agent_args, server_args};
use lanyard_cli::install::{InstallOptions, Parts, RedirectMode, render};
use lanyard_cli::yaml::write_stream;
use lanyard_e2e::cluster::pod;
use lanyard_e2e::wait::eventually;
use lanyard_proto::identity::v1 as wire;
use lanyard_proto::identity::v1::node_identity_client::NodeIdentityClient;
use lanyard_svid::csr::KeyAndCsr;
use lanyard_svid::keys::KeyAlgorithm;
use lanyard_svid::reserved::server_id;
use lanyard_svid::tls::{ExactId, SvidStore, client_config_optional_svid, unused_server_name};
use lanyard_svid::x509::X509Svid;
use lanyard_svid::{BundleSet, TrustBundle, TrustDomain};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

const TD: &str = "example.org";
const NS: &str = "lanyard";
/// Every wait is bounded by this.
const DEADLINE: Duration = Duration::from_secs(20);

struct Cluster {
    fixture: KubeFixture,
    options: InstallOptions,
    ca: GeneratedCa,
    agent_pod_uid: String,
    dir: tempfile::TempDir,
}

async fn cluster(redirect: RedirectMode) -> Cluster {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fixture = KubeFixture::start(FixtureOptions::default()).await.unwrap();
    let mut options = InstallOptions::new(TD, NS, 2, Images::default()).unwrap();
    if redirect == RedirectMode::Cni {
        options = options.with_cni();
    }
    let ca = GeneratedCa::generate(
        &options,
        Duration::from_secs(30 * 86400),
        Duration::from_secs(86400),
        std::time::SystemTime::now(),
    )
    .unwrap();
    // Exactly what `lanyard install` prints.
    let manifests = write_stream(&render(&options, Parts::All, Some(&ca)));
    let applied = fixture.apply_yaml(&manifests).unwrap();
    let mut applied_kinds: Vec<_> = applied
        .applied
        .iter()
        .map(|a| a.split(' ').next().unwrap().to_owned())
        .collect();
    applied_kinds.sort();
    let mut expected = vec![
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "ConfigMap",
        // The kube fixture serves CRDs: the LanyardIdentity and LanyardFederation CRDs are
        // applied.
        "CustomResourceDefinition",
        "CustomResourceDefinition",
        "Namespace",
        "Role",
        "RoleBinding",
        "Secret",
        "Service",
        "ServiceAccount",
        "ServiceAccount",
    ];
    // The fixture serves neither workloads nor CSIDrivers: Deployment, PodDisruptionBudget,
    // CSIDriver, the agent's DaemonSet (and the CNI installer's).
    let mut skipped = 4;
    if redirect == RedirectMode::Cni {
        expected.extend(["ClusterRole", "ClusterRoleBinding", "ServiceAccount"]);
        expected.sort();
        skipped += 1;
    }
    assert_eq!(applied_kinds, expected);
    assert_eq!(applied.skipped.len(), skipped, "{:?}", applied.skipped);
    let store = fixture.store();
    let agent = store
        .create(&pod(NS, "lanyard-agent-x", "lanyard-agent", "node-1", None))
        .unwrap();
    store
        .create(&pod("default", "web-1", "web", "node-1", None))
        .unwrap();
    Cluster {
        agent_pod_uid: agent.metadata.uid.unwrap(),
        fixture,
        options,
        ca,
        dir: tempfile::tempdir().unwrap(),
    }
}

/// `args` with the value after `flag` replaced.
fn with_value(mut args: Vec<String>, flag: &str, value: &str) -> Vec<String> {
    let i = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("the manifest has no {flag}"));
    args[i + 1] = value.to_owned();
    args
}

fn parse<A: Args + FromArgMatches>(name: &'static str, args: &[String]) -> A {
    let command = A::augment_args(clap::Command::new(name));
    let matches = command
        .try_get_matches_from(std::iter::once(name.to_owned()).chain(args[1..].iter().cloned()))
        .unwrap();
    A::from_arg_matches(&matches).unwrap()
}

/// A running server: its gRPC and health addresses.
struct Server {
    grpc: SocketAddr,
    health: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), lanyard_server::run::RunError>>,
}

/// The replica name the test gives the server: the rendered Deployment sets
/// LANYARD_REPLICA_NAME to the pod's name (downward API); the flag here, as the process
/// environment is shared by the tests.
const REPLICA: &str = "lanyard-server-7c9d-x1";

impl Cluster {
    fn api_client(&self, sa: &str) -> kube::Client {
        self.fixture
            .client_for(&self.fixture.issue_api_token(NS, sa))
            .unwrap()
    }

    async fn server(&self) -> Server {
        let mut args = server_args(&self.options);
        args = with_value(args, "--listen", "127.0.0.1:0");
        args = with_value(args, "--health", "127.0.0.1:0");
        let data = self.dir.path().join("server");
        args = with_value(args, "--data-dir", data.to_str().unwrap());
        args.extend(["--replica-name".to_owned(), REPLICA.to_owned()]);
        let config = parse::<lanyard_server::config::RunArgs>("lanyard-server", &args)
            .resolve()
            .unwrap();
        let seen: Arc<Mutex<Vec<(&'static str, SocketAddr)>>> = Arc::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (grpc_tx, grpc_rx) = tokio::sync::oneshot::channel();
        let grpc_tx = Mutex::new(Some(grpc_tx));
        let seen_in = seen.clone();
        let task = tokio::spawn(lanyard_server::run::run(
            config,
            Some(self.api_client("lanyard-server")),
            move |role, addr| {
                seen_in.lock().unwrap().push((role, addr));
                if role == "grpc"
                    && let Some(tx) = grpc_tx.lock().unwrap().take()
                {
                    let _ = tx.send(addr);
                }
            },
            async move {
                let _ = rx.await;
            },
        ));
        let grpc = tokio::time::timeout(DEADLINE, grpc_rx)
            .await
            .expect("the server listens before the deadline")
            .expect("the server started (see its error)");
        let health = seen
            .lock()
            .unwrap()
            .iter()
            .find(|(role, _)| *role == "health")
            .map(|(_, a)| *a)
            .expect("a health listener");
        Server {
            grpc,
            health,
            stop: tx,
            task,
        }
    }

    fn agent_token(&self) -> String {
        self.fixture.issue_service_account_token(
            NS,
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

    fn bundle(&self) -> BundleSet {
        let roots = lanyard_svid::bundle::certificates_from_pem(self.ca.root_cert_pem().as_bytes())
            .unwrap();
        BundleSet::from(TrustBundle::from_x509_authorities(td(), roots))
    }
}

fn td() -> TrustDomain {
    TrustDomain::new(TD).unwrap()
}

/// A replica's report ConfigMap, by the names `lanyard ca status` reads (spelled out: they
/// are the contract between the server and the CLI).
fn report_configmap_name(replica: &str) -> String {
    format!("lanyard-ca-report-{replica}")
}
const REPORT_DATA_KEY: &str = "report.json";

/// The server's CA report as the admin reads it, if the ConfigMap exists (the label checked).
async fn read_report(fixture: &KubeFixture) -> Option<serde_json::Value> {
    let maps: kube::Api<ConfigMap> = kube::Api::namespaced(fixture.admin_client().unwrap(), NS);
    let map = maps
        .get_opt(&report_configmap_name(REPLICA))
        .await
        .unwrap()?;
    assert_eq!(
        map.metadata
            .labels
            .unwrap_or_default()
            .get("lanyard.dev/ca-report")
            .map(String::as_str),
        Some("true")
    );
    let json = map.data.unwrap_or_default().remove(REPORT_DATA_KEY)?;
    Some(serde_json::from_str(&json).unwrap())
}

/// GET `path`; the status code.
async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let out = http_get(addr, path).await?;
    out.split(' ').nth(1)?.parse().ok()
}

/// GET `path`; the whole response, status line, headers and body.
async fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    tokio::time::timeout(DEADLINE, s.read_to_string(&mut out))
        .await
        .ok()?
        .ok()?;
    Some(out)
}

/// What an agent holds: a TLS store that pins the server's ID.
struct Caller {
    store: Arc<SvidStore>,
}

impl Caller {
    fn client(&self, addr: SocketAddr) -> NodeIdentityClient<Channel> {
        let tls = Arc::new(client_config_optional_svid(
            self.store.clone(),
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
        NodeIdentityClient::new(
            Endpoint::from_static("http://lanyard.invalid")
                .connect_timeout(DEADLINE)
                .connect_with_connector_lazy(connector),
        )
    }

    async fn attest(&self, addr: SocketAddr, token: String) -> X509Svid {
        let key = KeyAndCsr::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let response = self
            .client(addr)
            .attest_node(wire::AttestNodeRequest {
                method: Some(wire::attest_node_request::Method::K8sPsatToken(token)),
                csr: key.csr_der.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let chain = response
            .svid
            .unwrap()
            .cert_chain
            .into_iter()
            .map(Into::into)
            .collect();
        let svid = X509Svid::parse(chain, Some(key.private_key_pkcs8)).unwrap();
        self.store.update_svid(svid.clone()).unwrap();
        svid
    }
}

#[tokio::test]
async fn server_and_agent_run_with_exactly_the_installed_rbac() {
    let c = cluster(RedirectMode::Init).await;
    let server = c.server().await;
    eventually("the server to be ready", || async {
        (http_status(server.health, "/readyz").await == Some(200)).then_some(())
    })
    .await;

    // Node attestation: a TokenReview, then the agent pod's lookup.
    let caller = Caller {
        store: Arc::new(SvidStore::new(c.bundle())),
    };
    let node = caller.attest(server.grpc, c.agent_token()).await;
    assert_eq!(
        node.spiffe_id().to_string(),
        "spiffe://example.org/lanyard/agent/k8s_psat/node-1"
    );
    // Minting for a pod, from the server's pod cache (list/watch pods).
    let web_uid = c
        .fixture
        .store()
        .get::<Pod>("default", "web-1")
        .unwrap()
        .metadata
        .uid
        .unwrap();
    let client = caller.client(server.grpc);
    let issued = eventually("a pod SVID", || {
        let mut client = client.clone();
        let request = wire::MintX509SvidRequest {
            workload: Some(wire::Workload {
                kind: Some(wire::workload::Kind::Pod(wire::Pod {
                    namespace: "default".into(),
                    name: "web-1".into(),
                    uid: web_uid.clone(),
                    service_account: "web".into(),
                })),
                entry_pod: None,
            }),
            csr: KeyAndCsr::generate(KeyAlgorithm::EcdsaP256)
                .unwrap()
                .csr_der,
        };
        async move {
            let response = client
                .mint_x509svi_ds(wire::MintX509SvidsRequest {
                    requests: vec![request],
                })
                .await
                .unwrap()
                .into_inner();
            match response.results[0].result.clone().unwrap() {
                wire::mint_x509_svid_result::Result::Svid(s) => Some(s),
                wire::mint_x509_svid_result::Result::Refusal(_) => None,
            }
        }
    })
    .await;
    assert_eq!(issued.spiffe_id, "spiffe://example.org/ns/default/sa/web");

    // The CA report, under the rendered RBAC: created at start...
    let root = lanyard_svid::bundle::certificate_fingerprint(
        c.bundle().iter().next().unwrap().x509_authorities()[0].as_ref(),
    );
    let report = eventually("the server's CA report", || async {
        read_report(&c.fixture).await
    })
    .await;
    assert_eq!(report["replica"], REPLICA);
    assert_eq!(report["signing"]["root"], root);
    assert_eq!(report["bundle"]["roots"][0]["fingerprint"], root);
    assert_eq!(report["longest_svid_ttl_secs"], 3600);
    // ...then patched with what an agent acknowledges on SyncBundle.
    let (mut acks, ack_rx) = futures::channel::mpsc::channel(4);
    let mut bundles = caller
        .client(server.grpc)
        .sync_bundle(ack_rx)
        .await
        .unwrap()
        .into_inner();
    let first = bundles.message().await.unwrap().unwrap().bundle.unwrap();
    let version = TrustBundle::try_from(&first).unwrap().version();
    assert_eq!(report["bundle"]["version"], version.as_str());
    futures::SinkExt::send(
        &mut acks,
        wire::BundleAck {
            version: version.clone(),
            svid_roots: vec![root.clone()],
        },
    )
    .await
    .unwrap();
    let report = eventually("the acknowledgement in the report", || async {
        read_report(&c.fixture)
            .await
            .filter(|r| r["agents"][0]["version"] == version.as_str())
    })
    .await;
    assert_eq!(report["agents"][0]["node"], "node-1");
    assert_eq!(report["agents"][0]["svid_roots"], serde_json::json!([root]));
    // The stream ends: the agent is no longer connected (the metrics count connected agents),
    // but its last acknowledgement stays in the report, for its node's workloads live on that
    // bundle until their SVIDs run out.
    drop(acks);
    drop(bundles);
    eventually("no connected agent on the served bundle", || async {
        http_get(server.health, "/metrics")
            .await
            .filter(|m| m.contains("lanyard_server_bundle_agents{state=\"current\"} 0"))
    })
    .await;
    let report = read_report(&c.fixture).await.expect("the report");
    assert_eq!(report["agents"][0]["node"], "node-1", "{report}");
    assert_eq!(report["agents"][0]["version"], version.as_str());

    // The real agent, with the rendered arguments: no kube client exists for it at all.
    let dir = c.dir.path();
    let token = dir.join("token");
    std::fs::write(&token, c.agent_token()).unwrap();
    let bundle = dir.join("bundle.pem");
    std::fs::write(&bundle, c.ca.root_cert_pem()).unwrap();
    // The kubelet's pods directory exists before the agent starts.
    let pods_dir = dir.join("kubelet/pods");
    std::fs::create_dir_all(&pods_dir).unwrap();
    let mut args = agent_args(&c.options);
    for (flag, value) in [
        ("--server", server.grpc.to_string()),
        ("--trust-bundle", path_text(&bundle)),
        ("--k8s-token-path", path_text(&token)),
        ("--socket", path_text(&dir.join("sockets/agent.sock"))),
        ("--csi-socket", path_text(&dir.join("csi/csi.sock"))),
        ("--csi-pods-dir", path_text(&pods_dir)),
        ("--data-dir", path_text(&dir.join("agent"))),
        ("--health", "127.0.0.1:0".into()),
    ] {
        args = with_value(args, flag, &value);
    }
    // The DaemonSet gives the node's name in LANYARD_NODE_NAME (downward API); the flag
    // here, as the process environment is shared by the tests.
    args.extend(["--node-name".to_owned(), "node-1".to_owned()]);
    let config = parse::<lanyard_agent::config::RunArgs>("lanyard-agent", &args)
        .resolve()
        .unwrap();
    let agent_health: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    let seen = agent_health.clone();
    let (_stop_agent, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(lanyard_agent::run::run(
        config,
        move |role, addr| {
            if role == "health" {
                *seen.lock().unwrap() = Some(addr);
            }
        },
        async move {
            let _ = stopped.await;
        },
    ));
    eventually("the agent to be ready", || {
        let health = *agent_health.lock().unwrap();
        let finished = agent.is_finished();
        async move {
            assert!(!finished, "the agent stopped");
            match health {
                Some(addr) => (http_status(addr, "/readyz").await == Some(200)).then_some(()),
                None => None,
            }
        }
    })
    .await;
    // And it serves the CSI plugin where the rendered --csi-socket (moved here) says.
    let csi_socket = dir.join("csi/csi.sock");
    eventually("the agent's CSI socket", || {
        let csi_socket = csi_socket.clone();
        async move {
            tokio::net::UnixStream::connect(&csi_socket)
                .await
                .ok()
                .map(|_| ())
        }
    })
    .await;

    // The server stops: its report is deleted.
    let _ = server.stop.send(());
    tokio::time::timeout(DEADLINE, server.task)
        .await
        .expect("the server stops")
        .unwrap()
        .unwrap();
    assert!(
        read_report(&c.fixture).await.is_none(),
        "the report is deleted"
    );
}

fn path_text(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

async fn status<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> u16 {
    match result {
        Ok(_) => 200,
        Err(kube::Error::Api(s)) => s.code,
        Err(other) => panic!("not an API answer: {other:?}"),
    }
}

#[tokio::test]
async fn what_they_do_not_need_is_refused() {
    for redirect in [RedirectMode::Init, RedirectMode::Cni] {
        server_and_agent_refusals(redirect).await;
    }
}

/// What the server and the agent may not do, with the objects of `lanyard install` (and
/// `--cni`).
async fn server_and_agent_refusals(redirect: RedirectMode) {
    let c = cluster(redirect).await;
    let store = c.fixture.store();
    for (ns, name) in [(NS, "someone-elses"), ("default", "db-password")] {
        store
            .create(&Secret {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    namespace: Some(ns.into()),
                    ..Default::default()
                },
                ..Default::default()
            })
            .unwrap();
    }
    store
        .create(&ConfigMap {
            metadata: ObjectMeta {
                name: Some("other-config".into()),
                namespace: Some(NS.into()),
                ..Default::default()
            },
            ..Default::default()
        })
        .unwrap();
    // The objects exist: the admin reads them, so a 403 below is RBAC's answer.
    let admin = c.fixture.admin_client().unwrap();
    let admin_secrets: kube::Api<Secret> = kube::Api::namespaced(admin, NS);
    assert_eq!(status(admin_secrets.get("someone-elses").await).await, 200);

    // The server: what it needs...
    let server = c.api_client("lanyard-server");
    let secrets: kube::Api<Secret> = kube::Api::namespaced(server.clone(), NS);
    let maps: kube::Api<ConfigMap> = kube::Api::namespaced(server.clone(), NS);
    let pods: kube::Api<Pod> = kube::Api::all(server.clone());
    assert_eq!(status(secrets.get("lanyard-ca").await).await, 200);
    assert_eq!(status(maps.get("lanyard-bundle").await).await, 200);
    assert_eq!(status(pods.list(&ListParams::default()).await).await, 200);
    let services: kube::Api<k8s_openapi::api::core::v1::Service> = kube::Api::all(server.clone());
    assert_eq!(
        status(services.list(&ListParams::default()).await).await,
        200
    );
    let slices: kube::Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        kube::Api::all(server.clone());
    assert_eq!(status(slices.list(&ListParams::default()).await).await, 200);
    // ...and nothing else.
    assert_eq!(status(secrets.get("someone-elses").await).await, 403);
    assert_eq!(
        status(secrets.list(&ListParams::default()).await).await,
        403
    );
    let default_secrets: kube::Api<Secret> = kube::Api::namespaced(server.clone(), "default");
    assert_eq!(status(default_secrets.get("db-password").await).await, 403);
    assert_eq!(status(maps.get("other-config").await).await, 403);
    assert_eq!(status(maps.list(&ListParams::default()).await).await, 403);
    // Its report: create, patch and delete, and not even `get` (it never reads it back).
    let report = ConfigMap {
        metadata: ObjectMeta {
            name: Some(report_configmap_name("x")),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    assert_eq!(
        status(maps.create(&PostParams::default(), &report).await).await,
        200
    );
    let patch = serde_json::json!({"data": {REPORT_DATA_KEY: "{}"}});
    assert_eq!(
        status(
            maps.patch(
                &report_configmap_name("x"),
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch)
            )
            .await
        )
        .await,
        200
    );
    assert_eq!(
        status(maps.get(&report_configmap_name("x")).await).await,
        403
    );
    assert_eq!(
        status(
            maps.replace(&report_configmap_name("x"), &PostParams::default(), &report)
                .await
        )
        .await,
        403,
        "no update"
    );
    assert_eq!(
        status(
            maps.delete(&report_configmap_name("x"), &Default::default())
                .await
        )
        .await,
        200
    );
    let mut ca = secrets.get("lanyard-ca").await.unwrap();
    ca.metadata.managed_fields = None;
    assert_eq!(
        status(
            secrets
                .replace("lanyard-ca", &PostParams::default(), &ca)
                .await
        )
        .await,
        403,
        "the server may not rewrite its CA"
    );
    let default_pods: kube::Api<Pod> = kube::Api::namespaced(server, "default");
    assert_eq!(
        status(
            default_pods
                .create(
                    &PostParams::default(),
                    &pod("default", "x", "web", "node-1", None)
                )
                .await
        )
        .await,
        403
    );

    // The agent's ServiceAccount may do nothing at all.
    let agent = c.api_client("lanyard-agent");
    let agent_pods: kube::Api<Pod> = kube::Api::all(agent.clone());
    assert_eq!(
        status(agent_pods.list(&ListParams::default()).await).await,
        403
    );
    let agent_default_pods: kube::Api<Pod> = kube::Api::namespaced(agent.clone(), "default");
    assert_eq!(status(agent_default_pods.get("web-1").await).await, 403);
    let agent_config: kube::Api<ConfigMap> = kube::Api::namespaced(agent.clone(), NS);
    assert_eq!(status(agent_config.get("lanyard-config").await).await, 403);
    let agent_secrets: kube::Api<Secret> = kube::Api::namespaced(agent.clone(), NS);
    assert_eq!(status(agent_secrets.get("lanyard-ca").await).await, 403);
    let agent_maps: kube::Api<ConfigMap> = kube::Api::namespaced(agent.clone(), NS);
    assert_eq!(status(agent_maps.get("lanyard-bundle").await).await, 403);
    let reviews: kube::Api<TokenReview> = kube::Api::all(agent);
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(c.agent_token()),
            audiences: Some(vec!["lanyard-server".into()]),
        },
        ..Default::default()
    };
    assert_eq!(
        status(reviews.create(&PostParams::default(), &review).await).await,
        403
    );
}

/// The CNI plugin reads the pod being created, by namespace and name, with the
/// `lanyard-cni` ServiceAccount's token (its installer writes it into the plugin's
/// kubeconfig): that `get` is allowed in every namespace; listing, watching, writing pods,
/// and every other resource are refused. Without `--cni` the account may do nothing.
#[tokio::test]
async fn the_cni_plugin_may_get_pods_and_nothing_else() {
    let c = cluster(RedirectMode::Cni).await;
    let cni = c.api_client("lanyard-cni");
    let pods = |ns: &str| -> kube::Api<Pod> { kube::Api::namespaced(cni.clone(), ns) };
    // What it needs: the pod, wherever it is; a missing pod is "not found", not "forbidden".
    assert_eq!(status(pods("default").get("web-1").await).await, 200);
    assert_eq!(status(pods(NS).get("lanyard-agent-x").await).await, 200);
    assert_eq!(status(pods("default").get("no-such-pod").await).await, 404);

    // Nothing else about pods.
    assert_eq!(
        status(pods("default").list(&ListParams::default()).await).await,
        403
    );
    let all_pods: kube::Api<Pod> = kube::Api::all(cni.clone());
    assert_eq!(
        status(all_pods.list(&ListParams::default()).await).await,
        403
    );
    let watch = pods("default")
        .watch(&kube::api::WatchParams::default(), "0")
        .await
        .map(|_| ());
    assert_eq!(status(watch).await, 403);
    assert_eq!(
        status(
            pods("default")
                .create(
                    &PostParams::default(),
                    &pod("default", "x", "web", "node-1", None)
                )
                .await
        )
        .await,
        403
    );
    let annotate = kube::api::Patch::Merge(k8s_openapi::serde_json::json!(
        {"metadata": {"annotations": {"lanyard.dev/redirect": "init"}}}
    ));
    assert_eq!(
        status(
            pods("default")
                .patch("web-1", &kube::api::PatchParams::default(), &annotate)
                .await
        )
        .await,
        403
    );
    assert_eq!(
        status(
            pods("default")
                .delete("web-1", &kube::api::DeleteParams::default())
                .await
        )
        .await,
        403
    );

    // Nor anything else.
    let secrets: kube::Api<Secret> = kube::Api::namespaced(cni.clone(), NS);
    assert_eq!(status(secrets.get("lanyard-ca").await).await, 403);
    let maps: kube::Api<ConfigMap> = kube::Api::namespaced(cni.clone(), NS);
    assert_eq!(status(maps.get("lanyard-config").await).await, 403);
    assert_eq!(status(maps.get("lanyard-bundle").await).await, 403);
    let services: kube::Api<k8s_openapi::api::core::v1::Service> = kube::Api::all(cni.clone());
    assert_eq!(
        status(services.list(&ListParams::default()).await).await,
        403
    );
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(cni.clone());
    assert_eq!(status(nodes.list(&ListParams::default()).await).await, 403);
    let reviews: kube::Api<TokenReview> = kube::Api::all(cni);
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(c.agent_token()),
            audiences: Some(vec!["lanyard-server".into()]),
        },
        ..Default::default()
    };
    assert_eq!(
        status(reviews.create(&PostParams::default(), &review).await).await,
        403
    );

    // Without --cni there is no binding: the same get is refused.
    let plain = cluster(RedirectMode::Init).await;
    let unbound: kube::Api<Pod> = kube::Api::namespaced(plain.api_client("lanyard-cni"), "default");
    assert_eq!(status(unbound.get("web-1").await).await, 403);
}
