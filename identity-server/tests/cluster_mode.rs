//! lanyard-server in cluster mode against the wire-compatible Kubernetes API fixture, through
//! the real `kube` client and only the RBAC the server is granted: k8s_psat attestation and its
//! refusals, pod minting, the pod feed, replicas sharing one Secret, live CA/bundle reloads, and
//! a missing Secret. The server runs with the RBAC `lanyard install` renders.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube_fixture::{FixtureOptions, KubeFixture, TokenBinding};
use lanyard_e2e::cluster::{self, ca_secret};
use lanyard_proto::identity::v1 as wire;
use lanyard_proto::identity::v1::attest_node_request::Method;
use lanyard_server::config::RunArgs;
use lanyard_svid::ca::RootCa;
use lanyard_svid::{BundleSet, TrustBundle};
use tonic::Code;

const DAY: Duration = Duration::from_secs(86_400);

struct Cluster {
    fixture: KubeFixture,
    root: RootCa,
    agent_pod_uid: String,
    _dir: tempfile::TempDir,
}

fn pod(ns: &str, name: &str, sa: &str, node: &str) -> Pod {
    cluster::pod(ns, name, sa, node, None)
}

fn bundle_configmap(roots: &[&RootCa]) -> ConfigMap {
    cluster::bundle_configmap(&roots.iter().map(|r| r.cert_pem()).collect::<String>())
}

async fn cluster(options: FixtureOptions) -> Cluster {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fixture = KubeFixture::start(options).await.unwrap();
    fixture.apply_yaml(&cluster::server_rbac()).unwrap();
    let root = RootCa::generate(&td(), DAY * 30, std::time::SystemTime::now()).unwrap();
    let store = fixture.store();
    store.create(&ca_secret(&root)).unwrap();
    store.create(&bundle_configmap(&[&root])).unwrap();
    let agent = store
        .create(&pod(
            "lanyard",
            "lanyard-agent-x",
            "lanyard-agent",
            "node-1",
        ))
        .unwrap();
    store
        .create(&pod("default", "web-1", "web", "node-1"))
        .unwrap();
    store
        .create(&pod("default", "web-2", "web", "node-2"))
        .unwrap();
    Cluster {
        agent_pod_uid: agent.metadata.uid.unwrap(),
        fixture,
        root,
        _dir: tempfile::tempdir().unwrap(),
    }
}

impl Cluster {
    fn args(&self, name: &str) -> RunArgs {
        cluster_args(self._dir.path().join(name))
    }

    /// A server using the `lanyard-server` ServiceAccount's API token (so RBAC applies).
    async fn server(&self, name: &str) -> TestServer {
        let client = self
            .fixture
            .client_for(&self.fixture.issue_api_token("lanyard", "lanyard-server"))
            .unwrap();
        start(self.args(name), Some(client)).await
    }

    fn agent_token(&self, audience: &str) -> String {
        self.fixture.issue_service_account_token(
            "lanyard",
            "lanyard-agent",
            Some(TokenBinding {
                pod_name: "lanyard-agent-x".into(),
                pod_uid: self.agent_pod_uid.clone(),
                node_name: Some("node-1".into()),
            }),
            &[audience],
            Duration::from_secs(3600),
        )
    }

    fn bundle(&self) -> BundleSet {
        BundleSet::from(TrustBundle::from_x509_authorities(
            td(),
            [self.root.cert_der().clone()],
        ))
    }

    async fn agent(&self, server: &TestServer) -> Caller {
        let caller = Caller::new(self.bundle());
        caller
            .attest(
                server.addr,
                Method::K8sPsatToken(self.agent_token("lanyard-server")),
            )
            .await
            .unwrap();
        caller
    }
}

fn pod_request(ns: &str, name: &str, uid: &str, sa: &str) -> wire::MintX509SvidRequest {
    wire::MintX509SvidRequest {
        workload: Some(wire::Workload {
            kind: Some(wire::workload::Kind::Pod(wire::Pod {
                namespace: ns.into(),
                name: name.into(),
                uid: uid.into(),
                service_account: sa.into(),
            })),
            entry_pod: None,
        }),
        csr: new_csr(),
    }
}

fn uid_of(fixture: &KubeFixture, ns: &str, name: &str) -> String {
    fixture
        .store()
        .get::<Pod>(ns, name)
        .unwrap()
        .metadata
        .uid
        .unwrap()
}

#[tokio::test]
async fn psat_attestation_and_pod_minting() {
    let c = cluster(FixtureOptions::default()).await;
    let server = c.server("s1").await;
    let agent = c.agent(&server).await;
    assert_eq!(
        agent.store.svid().unwrap().spiffe_id().to_string(),
        "spiffe://example.org/lanyard/agent/k8s_psat/node-1"
    );
    let web1 = uid_of(&c.fixture, "default", "web-1");
    let web2 = uid_of(&c.fixture, "default", "web-2");
    let requests = vec![
        pod_request("default", "web-1", &web1, "web"),
        pod_request("default", "web-2", &web2, "web"),
        pod_request("default", "web-1", "0000-not-a-uid", "web"),
        pod_request("default", "web-1", &web1, "admin"),
    ];
    // The pod index fills asynchronously after startup: wait until the first answer is final.
    let client = agent.client(server.addr).await;
    let outcomes = eventually("the pod index", || {
        let mut client = client.clone();
        let requests = requests.clone();
        async move {
            let response = client
                .mint_x509svi_ds(wire::MintX509SvidsRequest { requests })
                .await
                .unwrap()
                .into_inner();
            let out: Vec<_> = response.results.iter().map(outcome).collect();
            (out[0] != Err("pod_cache_not_synced".to_owned())).then_some(out)
        }
    })
    .await;
    assert_eq!(
        outcomes,
        [
            Ok("spiffe://example.org/ns/default/sa/web".to_owned()),
            Err("pod_on_other_node".to_owned()),
            Err("pod_not_found".to_owned()),
            Err("pod_mismatch".to_owned()),
        ]
    );
    // The node feed carries the pods on node-1 with their IDs.
    let mut nodes = client
        .clone()
        .watch_node(wire::WatchNodeRequest {})
        .await
        .unwrap()
        .into_inner();
    let view = tokio::time::timeout(DEADLINE, nodes.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let mut names: Vec<_> = view
        .pods
        .iter()
        .map(|p| (p.name.as_str(), p.spiffe_id.as_str()))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            (
                "lanyard-agent-x",
                "spiffe://example.org/ns/lanyard/sa/lanyard-agent"
            ),
            ("web-1", "spiffe://example.org/ns/default/sa/web")
        ]
    );
    // Deleting the agent's pod ends what its node SVID may do.
    c.fixture
        .store()
        .delete::<Pod>("lanyard", "lanyard-agent-x")
        .unwrap();
    eventually("the agent pod to be gone", || {
        let mut client = client.clone();
        async move {
            let r = client
                .mint_x509svi_ds(wire::MintX509SvidsRequest { requests: vec![] })
                .await;
            matches!(r, Err(s) if s.message().starts_with("agent_pod_gone")).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn psat_refusals() {
    let c = cluster(FixtureOptions::default()).await;
    let server = c.server("s1").await;
    let attest = |token: String| {
        let caller = Caller::new(c.bundle());
        async move {
            caller
                .attest(server.addr, Method::K8sPsatToken(token))
                .await
                .unwrap_err()
        }
    };
    let wrong_audience = attest(c.agent_token("someone-else")).await;
    assert_eq!(wrong_audience.code(), Code::PermissionDenied);
    assert!(
        wrong_audience
            .message()
            .starts_with("token_not_authenticated"),
        "{}",
        wrong_audience.message()
    );

    let forged = attest("eyJhbGciOiJSUzI1NiJ9.e30.c2ln".into()).await;
    assert!(
        forged.message().starts_with("token_not_authenticated"),
        "{}",
        forged.message()
    );

    let expiring = c.fixture.issue_service_account_token(
        "lanyard",
        "lanyard-agent",
        Some(TokenBinding {
            pod_name: "lanyard-agent-x".into(),
            pod_uid: c.agent_pod_uid.clone(),
            node_name: Some("node-1".into()),
        }),
        &["lanyard-server"],
        Duration::from_secs(60),
    );
    c.fixture.advance_clock(Duration::from_secs(120));
    let expired = attest(expiring).await;
    assert!(
        expired.message().starts_with("token_not_authenticated"),
        "{}",
        expired.message()
    );

    let web_uid = uid_of(&c.fixture, "default", "web-1");
    let other_sa = c.fixture.issue_service_account_token(
        "default",
        "web",
        Some(TokenBinding {
            pod_name: "web-1".into(),
            pod_uid: web_uid,
            node_name: Some("node-1".into()),
        }),
        &["lanyard-server"],
        Duration::from_secs(3600),
    );
    let not_allowed = attest(other_sa).await;
    assert!(
        not_allowed
            .message()
            .starts_with("service_account_not_allowed"),
        "{}",
        not_allowed.message()
    );

    let unbound = c.fixture.issue_service_account_token(
        "lanyard",
        "lanyard-agent",
        None,
        &["lanyard-server"],
        Duration::from_secs(3600),
    );
    let no_extras = attest(unbound).await;
    assert!(
        no_extras.message().starts_with("missing_pod_extras"),
        "{}",
        no_extras.message()
    );

    // Join tokens do not exist in cluster mode.
    let join = attest_join(&c, &server).await;
    assert!(
        join.message().starts_with("method_not_enabled"),
        "{}",
        join.message()
    );
}

async fn attest_join(c: &Cluster, server: &TestServer) -> tonic::Status {
    Caller::new(c.bundle())
        .attest(server.addr, Method::JoinToken("x".into()))
        .await
        .unwrap_err()
}

#[tokio::test]
async fn pod_uid_mismatch_without_the_node_name_extra() {
    // Before Kubernetes 1.30 the node comes from the pod, whose UID must match the token's.
    let c = cluster(FixtureOptions {
        node_name_extra: false,
        check_bound_pods: false,
        ..Default::default()
    })
    .await;
    let server = c.server("s1").await;
    let agent = c.agent(&server).await;
    assert_eq!(
        agent.store.svid().unwrap().spiffe_id().to_string(),
        "spiffe://example.org/lanyard/agent/k8s_psat/node-1"
    );
    // The pod is replaced by another of the same name: the old token's UID no longer matches.
    let token = c.agent_token("lanyard-server");
    c.fixture
        .store()
        .delete::<Pod>("lanyard", "lanyard-agent-x")
        .unwrap();
    c.fixture
        .store()
        .create(&pod(
            "lanyard",
            "lanyard-agent-x",
            "lanyard-agent",
            "node-1",
        ))
        .unwrap();
    let caller = Caller::new(c.bundle());
    eventually("the replaced pod to be seen", || {
        let caller = &caller;
        let token = token.clone();
        async move {
            // Until the index sees the replacement, the old pod still matches.
            match caller
                .attest(server.addr, Method::K8sPsatToken(token))
                .await
            {
                Err(err) => err.message().starts_with("pod_uid_mismatch").then_some(()),
                Ok(_) => None,
            }
        }
    })
    .await;
}

#[tokio::test]
async fn replicas_share_the_intermediate_and_reload_live() {
    let c = cluster(FixtureOptions::default()).await;
    let a = c.server("a").await;
    let b = c.server("b").await;
    let web1 = uid_of(&c.fixture, "default", "web-1");
    let mut issuers = Vec::new();
    for server in [&a, &b] {
        let agent = c.agent(server).await;
        let client = agent.client(server.addr).await;
        let issued = eventually("a pod SVID", || {
            let mut client = client.clone();
            let request = pod_request("default", "web-1", &web1, "web");
            async move {
                let r = client
                    .mint_x509svi_ds(wire::MintX509SvidsRequest {
                        requests: vec![request],
                    })
                    .await
                    .unwrap()
                    .into_inner();
                match r.results[0].result.clone().unwrap() {
                    wire::mint_x509_svid_result::Result::Svid(s) => Some(s),
                    _ => None,
                }
            }
        })
        .await;
        issuers.push(issued.cert_chain[1].clone());
    }
    assert_eq!(
        issuers[0], issuers[1],
        "both replicas sign under the Secret's intermediate"
    );

    // A watching agent sees a new root published in the ConfigMap.
    let agent = c.agent(&a).await;
    let client = agent.client(a.addr).await;
    let mut bundles = client
        .clone()
        .watch_bundle(wire::WatchBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(DEADLINE, bundles.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .bundle
        .unwrap();
    assert_eq!(first.x509_authorities.len(), 1);
    let new_root = RootCa::generate(&td(), DAY * 30, std::time::SystemTime::now()).unwrap();
    c.fixture
        .store()
        .replace(&bundle_configmap(&[&c.root, &new_root]))
        .unwrap();
    let second = tokio::time::timeout(DEADLINE, bundles.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .bundle
        .unwrap();
    assert_eq!(second.x509_authorities.len(), 2);
    assert!(second.sequence > first.sequence);

    // Then a new intermediate under the new root: new SVIDs are signed by it.
    let mut secret = ca_secret(&new_root);
    secret.metadata.resource_version = None;
    c.fixture.store().replace(&secret).unwrap();
    let new_intermediate = secret.data.unwrap()["tls.crt"].0.clone();
    let new_der = lanyard_svid::bundle::certificates_from_pem(&new_intermediate).unwrap()[0]
        .as_ref()
        .to_vec();
    eventually("SVIDs under the new intermediate", || {
        let mut client = client.clone();
        let request = pod_request("default", "web-1", &web1, "web");
        let want = new_der.clone();
        async move {
            let r = client.mint_x509svi_ds(wire::MintX509SvidsRequest { requests: vec![request] }).await.unwrap().into_inner();
            matches!(r.results[0].result.clone().unwrap(), wire::mint_x509_svid_result::Result::Svid(s) if s.cert_chain[1] == want).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn a_missing_secret_is_a_clear_startup_error() {
    let c = cluster(FixtureOptions::default()).await;
    c.fixture
        .store()
        .delete::<Secret>("lanyard", "lanyard-ca")
        .unwrap();
    let client = c
        .fixture
        .client_for(&c.fixture.issue_api_token("lanyard", "lanyard-server"))
        .unwrap();
    let config = c.args("s").resolve().unwrap();
    let err = lanyard_server::run::run(config, Some(client), |_, _| {}, async {})
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("Secret lanyard/lanyard-ca not found"),
        "{text}"
    );
}

#[tokio::test]
async fn the_server_rbac_forbids_other_secrets() {
    let c = cluster(FixtureOptions::default()).await;
    let client = c
        .fixture
        .client_for(&c.fixture.issue_api_token("lanyard", "lanyard-server"))
        .unwrap();
    let secrets: kube::Api<Secret> = kube::Api::namespaced(client, "lanyard");
    assert!(secrets.get("lanyard-ca").await.is_ok());
    match secrets.get("someone-elses").await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403),
        other => panic!("expected 403, got {other:?}"),
    }
}
