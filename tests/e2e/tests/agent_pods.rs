//! Kubernetes workload identity for real processes: a `lanyard-server` process in cluster
//! mode against the Kubernetes API fixture (least-privilege RBAC, CA Secret, bundle
//! ConfigMap), a `lanyard-agent` process attested by `k8s_psat` with a projected token bound
//! to its pod on node-1, and client processes (`lanyard-agent api fetch x509`) placed in
//! pod-shaped cgroups as the kubelet would place a container:
//!
//! - in the cgroup of a pod on node-1: that pod's ID, `spiffe://example.org/ns/default/sa/web`;
//! - in the cgroup of a pod on node-2 (which this agent does not serve): no identity;
//! - in no pod at all (and no static entry): no identity.
//!
//! Needs root and the cgroup v1 `pids` hierarchy; without them the test fails saying so,
//! unless `LANYARD_SKIP_CGROUP_TESTS=1`.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime};

use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, ContainerStatus, Pod, PodSpec, PodStatus, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube_fixture::{FixtureOptions, KubeFixture, TokenBinding};
use lanyard_e2e::cgroup::{CgroupDirs, fresh_container_id, pids_root_or_skip};
use lanyard_e2e::client::{RunAs, api, api_until};
use lanyard_e2e::stack::{Agent, Attestation, Server, TRUST_DOMAIN};
use lanyard_svid::TrustDomain;
use lanyard_svid::ca::RootCa;
use lanyard_svid::jwt::JwtSigner;

/// The server's permissions: exactly what DESIGN §1 says it needs (as the server's own
/// cluster-mode tests grant them).
const SERVER_RBAC: &str = r#"
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

const DAY: Duration = Duration::from_secs(86_400);

/// A running pod on `node`, its one container's ID as the kubelet reports it.
fn pod(ns: &str, name: &str, sa: &str, node: &str, container_id: Option<&str>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: Some([("app".to_string(), name.to_string())].into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            service_account_name: Some(sa.into()),
            containers: vec![],
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            container_statuses: container_id.map(|id| {
                vec![ContainerStatus {
                    name: "app".into(),
                    container_id: Some(format!("containerd://{id}")),
                    ready: true,
                    ..Default::default()
                }]
            }),
            ..Default::default()
        }),
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// The issuing intermediate (and JWT key) in the `kubernetes.io/tls` Secret the server reads.
fn ca_secret(root: &RootCa) -> Secret {
    let issuer = root.issue_intermediate(DAY, SystemTime::now()).unwrap();
    let (_, jwt_pkcs8) = JwtSigner::generate().unwrap();
    let data = [
        ("tls.crt", issuer.cert_chain_pem().into_bytes()),
        ("tls.key", issuer.key_pem().as_bytes().to_vec()),
        ("jwt.key", pem("PRIVATE KEY", &jwt_pkcs8).into_bytes()),
    ];
    Secret {
        metadata: ObjectMeta {
            name: Some("lanyard-ca".into()),
            namespace: Some("lanyard".into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k.to_string(), ByteString(v)))
                .collect(),
        ),
        ..Default::default()
    }
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

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_in_a_pod_cgroup_gets_its_pods_identity() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(pids) = pids_root_or_skip() else {
        return;
    };
    // Declared first, dropped last: the cgroups go after every process in them has exited.
    let mut cgroups = CgroupDirs::default();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tmp.path();

    // The cluster: RBAC, CA material, the agent's pod and two workload pods.
    let fixture = KubeFixture::start(FixtureOptions::default()).await.unwrap();
    fixture.apply_yaml(SERVER_RBAC).unwrap();
    let root = RootCa::generate(
        &TrustDomain::new(TRUST_DOMAIN).unwrap(),
        DAY * 30,
        SystemTime::now(),
    )
    .unwrap();
    let store = fixture.store();
    store.create(&ca_secret(&root)).unwrap();
    store.create(&bundle_configmap(&root)).unwrap();
    let agent_pod = store
        .create(&pod(
            "lanyard",
            "lanyard-agent-x",
            "lanyard-agent",
            "node-1",
            None,
        ))
        .unwrap();
    let (cid_here, cid_there) = (fresh_container_id(), fresh_container_id());
    let here = store
        .create(&pod("default", "web-1", "web", "node-1", Some(&cid_here)))
        .unwrap();
    let there = store
        .create(&pod("default", "web-2", "web", "node-2", Some(&cid_there)))
        .unwrap();
    let uid = |p: &Pod| p.metadata.uid.clone().expect("the fixture assigns UIDs");

    // The server, with its ServiceAccount's API token (so RBAC applies).
    let kubeconfig = fixture
        .write_kubeconfig(
            "lanyard-server",
            &fixture.issue_api_token("lanyard", "lanyard-server"),
        )
        .unwrap();
    let server = blocking(|| Server::start_cluster(dir, &kubeconfig));

    // The agent: a projected token for the server's audience, bound to its pod on node-1.
    let token = fixture.issue_service_account_token(
        "lanyard",
        "lanyard-agent",
        Some(TokenBinding {
            pod_name: "lanyard-agent-x".into(),
            pod_uid: uid(&agent_pod),
            node_name: Some("node-1".into()),
        }),
        &["lanyard-server"],
        Duration::from_secs(3600),
    );
    let token_path = dir.join("token");
    std::fs::write(&token_path, token).unwrap();
    std::fs::set_permissions(&token_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let bundle_path = dir.join("root.pem");
    std::fs::write(&bundle_path, root.cert_pem()).unwrap();
    let agent = blocking(|| {
        Agent::launch(
            dir,
            server.addr,
            &bundle_path,
            Attestation::K8sTokenFile(&token_path),
        )
    });
    let socket = agent.socket.clone();

    // In web-1's container cgroup: web-1's identity (retried until the node view is in).
    let in_here = cgroups.container(&pids, &uid(&here), &cid_here);
    let got = blocking(|| {
        api_until(
            &socket,
            &["fetch", "x509"],
            RunAs::InCgroup(&in_here),
            |o| o.success,
        )
    });
    let ids: Vec<&str> = got
        .stdout
        .lines()
        .filter_map(|l| l.split(' ').next())
        .collect();
    assert_eq!(ids, ["spiffe://example.org/ns/default/sa/web"], "{got:?}");

    // In web-2's cgroup (a pod of node-2): nothing, the node view does not have it.
    let in_there = cgroups.container(&pids, &uid(&there), &cid_there);
    let refused = blocking(|| api(&socket, &["fetch", "x509"], RunAs::InCgroup(&in_there)));
    assert!(
        !refused.success && refused.stderr.contains("no identity issued"),
        "{refused:?}"
    );

    // In no pod (this test's own cgroups): nothing either; no static entry names it.
    let outside = blocking(|| api(&socket, &["fetch", "x509"], RunAs::Me));
    assert!(
        !outside.success && outside.stderr.contains("no identity issued"),
        "{outside:?}"
    );

    drop(agent);
    drop(server);
    drop(fixture);
}
