//! Kubernetes objects for cluster-mode end-to-end tests against the API fixture: the
//! server's least-privilege RBAC, the CA Secret (issuing intermediate and JWT key, the
//! `kubernetes.io/tls` layout), the bundle ConfigMap, and running pods with a container ID.

use std::time::{Duration, SystemTime};

use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, ContainerStatus, Pod, PodSpec, PodStatus, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
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
