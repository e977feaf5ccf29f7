//! The deterministic manifests: namespace, ServiceAccounts and RBAC ([`super::rbac`]), the
//! server's Service, Deployment and PodDisruptionBudget, and the agent's DaemonSet. Every
//! flag given to a binary here is one of its real `run` flags (a test parses these argument
//! lists with the binaries' own clap definitions).

use lanyard_client::endpoint::DEFAULT_SOCKET;
use serde_json::{Value, json};

use super::{
    AGENT_NAME, AGENT_TOKEN_AUDIENCE, BUNDLE_CONFIGMAP_NAME, CA_SECRET_NAME, HEALTH_PORT,
    InstallOptions, SERVER_GRPC_PORT, SERVER_NAME, SOCKET_DIR,
};
use crate::install::{labels, rbac};
use crate::yaml::Yaml;

/// Where the agent finds its projected token and the trust bundle.
pub const AGENT_TOKEN_DIR: &str = "/var/run/secrets/lanyard";
pub const AGENT_TOKEN_PATH: &str = "/var/run/secrets/lanyard/token";
pub const AGENT_BUNDLE_DIR: &str = "/etc/lanyard/bundle";
pub const AGENT_BUNDLE_PATH: &str = "/etc/lanyard/bundle/bundle.pem";
/// Writable scratch (the server's admin socket; the agent's node SVID), an emptyDir.
pub const DATA_DIR: &str = "/var/lib/lanyard";
/// Lifetime the kubelet gives the agent's projected token (it rotates it at 80%).
pub const AGENT_TOKEN_SECONDS: u32 = 3600;
/// Non-root uid for the server (it needs no privilege at all).
pub const SERVER_UID: u32 = 65532;

fn selector(component: &str) -> Value {
    json!({"app.kubernetes.io/name": component})
}

/// Everything `lanyard install --without-ca` prints, in apply order.
pub fn base_manifests(options: &InstallOptions) -> Vec<Yaml> {
    let mut docs = vec![Yaml::from_json(&namespace(options))];
    docs.extend(rbac::service_accounts(options));
    docs.extend(rbac::server_rbac(options));
    docs.extend(
        [
            server_service(options),
            server_deployment(options),
            server_disruption_budget(options),
            agent_daemonset(options),
        ]
        .iter()
        .map(Yaml::from_json),
    );
    docs
}

fn namespace(options: &InstallOptions) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": options.namespace,
            "labels": {
                "app.kubernetes.io/part-of": "lanyard",
                // The agent needs hostPID and a hostPath: the privileged level.
                "pod-security.kubernetes.io/enforce": "privileged",
            },
        },
    })
}

fn server_service(options: &InstallOptions) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": SERVER_NAME, "namespace": options.namespace, "labels": labels(SERVER_NAME)},
        "spec": {
            "selector": selector(SERVER_NAME),
            "ports": [{"name": "grpc", "port": SERVER_GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"}],
        },
    })
}

/// `lanyard-server run` in cluster mode.
pub fn server_args(options: &InstallOptions) -> Vec<String> {
    let ns = &options.namespace;
    [
        "run".to_owned(),
        "--trust-domain".into(),
        options.trust_domain.name().to_owned(),
        "--listen".into(),
        format!("0.0.0.0:{SERVER_GRPC_PORT}"),
        "--data-dir".into(),
        DATA_DIR.into(),
        "--kube".into(),
        "--ca-secret".into(),
        format!("{ns}/{CA_SECRET_NAME}"),
        "--bundle-configmap".into(),
        format!("{ns}/{BUNDLE_CONFIGMAP_NAME}"),
        "--agent-sa".into(),
        format!("{ns}:{AGENT_NAME}"),
        "--k8s-audience".into(),
        AGENT_TOKEN_AUDIENCE.into(),
        "--health".into(),
        format!("0.0.0.0:{HEALTH_PORT}"),
    ]
    .to_vec()
}

/// `lanyard-agent run` with a projected ServiceAccount token.
pub fn agent_args(options: &InstallOptions) -> Vec<String> {
    [
        "run".to_owned(),
        "--server".into(),
        options.server_address(),
        "--trust-bundle".into(),
        AGENT_BUNDLE_PATH.into(),
        "--trust-domain".into(),
        options.trust_domain.name().to_owned(),
        "--k8s-token-path".into(),
        AGENT_TOKEN_PATH.into(),
        "--socket".into(),
        DEFAULT_SOCKET.into(),
        "--data-dir".into(),
        DATA_DIR.into(),
        "--health".into(),
        format!("0.0.0.0:{HEALTH_PORT}"),
    ]
    .to_vec()
}

fn probes() -> Value {
    json!({
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "health"}, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "health"}, "periodSeconds": 10, "failureThreshold": 6},
    })
}

fn merge(mut base: Value, extra: Value) -> Value {
    if let (Value::Object(b), Value::Object(e)) = (&mut base, extra) {
        b.extend(e);
    }
    base
}

fn server_deployment(options: &InstallOptions) -> Value {
    let container = merge(
        json!({
            "name": SERVER_NAME,
            "image": options.images.server(),
            "args": server_args(options),
            "ports": [
                {"name": "grpc", "containerPort": SERVER_GRPC_PORT, "protocol": "TCP"},
                {"name": "health", "containerPort": HEALTH_PORT, "protocol": "TCP"},
            ],
            "resources": {
                "requests": {"cpu": "50m", "memory": "64Mi"},
                "limits": {"cpu": "1", "memory": "256Mi"},
            },
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": SERVER_UID,
                "runAsGroup": SERVER_UID,
                "readOnlyRootFilesystem": true,
                "allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"]},
            },
            "volumeMounts": [{"name": "data", "mountPath": DATA_DIR}],
        }),
        probes(),
    );
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": SERVER_NAME, "namespace": options.namespace, "labels": labels(SERVER_NAME)},
        "spec": {
            "replicas": options.replicas,
            "selector": {"matchLabels": selector(SERVER_NAME)},
            "template": {
                "metadata": {"labels": labels(SERVER_NAME)},
                "spec": {
                    "serviceAccountName": SERVER_NAME,
                    "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [container],
                    "volumes": [{"name": "data", "emptyDir": {"sizeLimit": "16Mi"}}],
                    // Replicas on different nodes where possible.
                    "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                        "weight": 100,
                        "podAffinityTerm": {
                            "labelSelector": {"matchLabels": selector(SERVER_NAME)},
                            "topologyKey": "kubernetes.io/hostname",
                        },
                    }]}},
                },
            },
        },
    })
}

fn server_disruption_budget(options: &InstallOptions) -> Value {
    json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": SERVER_NAME, "namespace": options.namespace, "labels": labels(SERVER_NAME)},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(SERVER_NAME)}},
    })
}

fn agent_daemonset(options: &InstallOptions) -> Value {
    let container = merge(
        json!({
            "name": AGENT_NAME,
            "image": options.images.agent(),
            "args": agent_args(options),
            // The agent checks that the server attested it as this very node.
            "env": [{"name": "LANYARD_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
            "ports": [{"name": "health", "containerPort": HEALTH_PORT, "protocol": "TCP"}],
            "resources": {
                "requests": {"cpu": "50m", "memory": "64Mi"},
                "limits": {"cpu": "1", "memory": "256Mi"},
            },
            // Root owns the node's socket directory; SYS_PTRACE lets the agent read
            // /proc/<pid>/exe of workloads running as other users (unix selectors). No other
            // capability, no privilege escalation, read-only root.
            "securityContext": {
                "runAsUser": 0,
                "runAsNonRoot": false,
                "readOnlyRootFilesystem": true,
                "allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"], "add": ["SYS_PTRACE"]},
            },
            "volumeMounts": [
                {"name": "sockets", "mountPath": SOCKET_DIR},
                {"name": "token", "mountPath": AGENT_TOKEN_DIR, "readOnly": true},
                {"name": "bundle", "mountPath": AGENT_BUNDLE_DIR, "readOnly": true},
                {"name": "data", "mountPath": DATA_DIR},
            ],
        }),
        probes(),
    );
    json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": AGENT_NAME, "namespace": options.namespace, "labels": labels(AGENT_NAME)},
        "spec": {
            "selector": {"matchLabels": selector(AGENT_NAME)},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": labels(AGENT_NAME)},
                "spec": {
                    "serviceAccountName": AGENT_NAME,
                    // No API credentials: the agent never talks to the Kubernetes API.
                    "automountServiceAccountToken": false,
                    // Workload attestation reads /proc/<pid> of the callers on the node.
                    "hostPID": true,
                    "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                    // Every node, tainted or not, needs its agent.
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [container],
                    "volumes": [
                        {"name": "sockets", "hostPath": {"path": SOCKET_DIR, "type": "DirectoryOrCreate"}},
                        {"name": "token", "projected": {"sources": [{"serviceAccountToken": {
                            "path": "token",
                            "audience": AGENT_TOKEN_AUDIENCE,
                            "expirationSeconds": AGENT_TOKEN_SECONDS,
                        }}]}},
                        {"name": "bundle", "configMap": {"name": BUNDLE_CONFIGMAP_NAME, "items": [{"key": "bundle.pem", "path": "bundle.pem"}]}},
                        {"name": "data", "emptyDir": {"sizeLimit": "16Mi"}},
                    ],
                },
            },
        },
    })
}
