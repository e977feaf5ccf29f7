//! Kubernetes objects for cluster-mode end-to-end tests against the API fixture: the
//! server's least-privilege RBAC, the CA Secret (issuing intermediate and JWT key, the
//! `kubernetes.io/tls` layout), the bundle ConfigMap, running pods with a container ID (and,
//! for discovery, their IP and an injected proxy), Services and EndpointSlices.

use std::time::{Duration, SystemTime};

use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    ConfigMap, ContainerState, ContainerStateRunning, ContainerStatus, Pod, PodIP, PodSpec,
    PodStatus, Secret, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube_fixture::{KubeFixture, TokenBinding};
use lanyard_svid::TrustDomain;
use lanyard_svid::ca::RootCa;
use lanyard_svid::jwt::JwtSigner;

/// The server's permissions, exactly as `lanyard install` renders them (ClusterRole for
/// TokenReviews, pods, Services and EndpointSlices; a Role for its own Secret and ConfigMap by
/// name), so every cluster-mode test runs the server with the RBAC users deploy.
pub fn server_rbac() -> String {
    let options = lanyard_cli::install::InstallOptions::defaults();
    lanyard_cli::yaml::write_stream(&lanyard_cli::install::rbac::server_rbac(&options))
}

const DAY: Duration = Duration::from_secs(86_400);

/// A fixture seeded by [`seed`].
pub struct Seeded {
    /// The trust domain's root: the CA Secret's intermediate and the bundle are under it.
    pub root: RootCa,
    /// The UID of the agent's pod, `lanyard/lanyard-agent-x` on node-1.
    pub agent_pod_uid: String,
}

/// Seeds `fixture` as an installed cluster: the server's RBAC, a 30-day root of
/// [`crate::stack::TRUST_DOMAIN`] with its CA Secret and bundle ConfigMap, and the agent's pod
/// on node-1.
pub fn seed(fixture: &KubeFixture) -> Seeded {
    fixture.apply_yaml(&server_rbac()).expect("apply the RBAC");
    let td = TrustDomain::new(crate::stack::TRUST_DOMAIN).expect("a trust domain");
    let root = RootCa::generate(&td, 30 * DAY, SystemTime::now()).expect("a root");
    let store = fixture.store();
    store
        .create(&ca_secret(&root))
        .expect("create the CA Secret");
    store
        .create(&bundle_configmap(&root.cert_pem()))
        .expect("create the bundle ConfigMap");
    let agent_pod = store
        .create(&pod("lanyard", AGENT_POD, "lanyard-agent", "node-1", None))
        .expect("create the agent's pod");
    Seeded {
        root,
        agent_pod_uid: agent_pod.metadata.uid.expect("the fixture assigns UIDs"),
    }
}

/// The agent's pod that [`seed`] creates.
const AGENT_POD: &str = "lanyard-agent-x";

/// A projected ServiceAccount token of the agent's pod on node-1, for the server's audience.
pub fn agent_token(fixture: &KubeFixture, seeded: &Seeded) -> String {
    fixture.issue_service_account_token(
        "lanyard",
        "lanyard-agent",
        Some(TokenBinding {
            pod_name: AGENT_POD.into(),
            pod_uid: seeded.agent_pod_uid.clone(),
            node_name: Some("node-1".into()),
        }),
        &["lanyard-server"],
        Duration::from_secs(3600),
    )
}

/// A running pod on `node`, its one container's ID as the kubelet reports it.
pub fn pod(ns: &str, name: &str, sa: &str, node: &str, container_id: Option<&str>) -> Pod {
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

/// `pod` with `ip` as its pod IP (`status.podIP` and `status.podIPs`), as the kubelet reports
/// it once the pod's sandbox is up.
pub fn with_ip(mut pod: Pod, ip: &str) -> Pod {
    let status = pod.status.get_or_insert_with(Default::default);
    status.pod_ip = Some(ip.into());
    status.pod_ips = Some(vec![PodIP { ip: ip.into() }]);
    pod
}

/// `pod` as `lanyard inject` leaves it once running: the injection annotation `lanyard inject`
/// writes, and its proxy native sidecar (an init container status, under the name `lanyard
/// inject` gives it) running and ready in container `proxy_container_id`.
pub fn injected(mut pod: Pod, proxy_container_id: &str) -> Pod {
    pod.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(
            lanyard_proto::inject::INJECT_ANNOTATION.into(),
            lanyard_proto::inject::INJECT_ENABLED.into(),
        );
    let status = pod.status.get_or_insert_with(Default::default);
    status
        .init_container_statuses
        .get_or_insert_with(Vec::new)
        .push(ContainerStatus {
            name: lanyard_proto::inject::PROXY_CONTAINER.into(),
            container_id: Some(format!("containerd://{proxy_container_id}")),
            ready: true,
            started: Some(true),
            state: Some(ContainerState {
                running: Some(ContainerStateRunning::default()),
                ..Default::default()
            }),
            ..Default::default()
        });
    pod
}

/// A ClusterIP Service `ns/name` at `cluster_ip` with one TCP port `port` named `port_name`.
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

/// An IPv4 EndpointSlice `ns/name` of Service `service` (by the label the EndpointSlice
/// controller sets), mapping its port `port_name` to `target_port`, with `endpoints` as
/// `(ip, ready)`.
pub fn endpoint_slice(
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

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// `lanyard/lanyard-ca`: a day-long issuing intermediate under `root`, and a JWT key.
pub fn ca_secret(root: &RootCa) -> Secret {
    let issuer = root
        .issue_intermediate(DAY, SystemTime::now())
        .expect("issue an intermediate");
    let (_, jwt_pkcs8) = JwtSigner::generate().expect("a JWT key");
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

/// `lanyard/lanyard-bundle` holding the trust anchors `roots_pem` under `bundle.pem`.
pub fn bundle_configmap(roots_pem: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some("lanyard-bundle".into()),
            namespace: Some("lanyard".into()),
            ..Default::default()
        },
        data: Some([("bundle.pem".to_string(), roots_pem.to_owned())].into()),
        ..Default::default()
    }
}
