//! The deterministic manifests: the `LanyardIdentity` and `LanyardFederation` CRDs, namespace, ServiceAccounts and RBAC ([`super::rbac`]), the
//! `lanyard-config` ConfigMap, the server's Service, Deployment and PodDisruptionBudget, the
//! `CSIDriver`, the agent's DaemonSet (the agent, which also serves the CSI node plugin, and
//! the upstream node-driver-registrar), and with `--cni` the CNI plugin's installer DaemonSet.
//! Every flag given to a Lanyard binary here is one of its real flags (a test parses these
//! argument lists with the binaries' own clap definitions).

use lanyard_ca_lifecycle::names::CONFIGMAP_BUNDLE_KEY;
use lanyard_client::endpoint::DEFAULT_SOCKET;
use lanyard_registration::crd::ALL_CRD_YAML;
use serde_json::{Value, json};

use super::{
    AGENT_NAME, AGENT_TOKEN_AUDIENCE, BUNDLE_CONFIGMAP_NAME, CA_SECRET_NAME, CNI_NAME,
    CONFIG_MAP_NAME, CONFIG_REDIRECT_KEY, CSI_DRIVER_NAME, HEALTH_PORT, InstallOptions,
    RedirectMode, SERVER_GRPC_PORT, SERVER_NAME, SOCKET_DIR,
};
use crate::install::{labels, rbac};
use crate::yaml::{Yaml, read_stream};

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

/// The kubelet's directory for the agent's CSI socket, on the node
/// (`/var/lib/kubelet/plugins/<driver>`), mounted at [`CSI_MOUNT`] in the agent and the
/// registrar.
pub const CSI_PLUGIN_DIR: &str = "/var/lib/kubelet/plugins/csi.lanyard.dev";
pub const CSI_MOUNT: &str = "/csi";
/// The agent's `--csi-socket`, in its container; on the node it is
/// `CSI_PLUGIN_DIR/csi.sock`, the path the registrar gives the kubelet.
pub const CSI_SOCKET: &str = "/csi/csi.sock";
/// The kubelet's pod directories: every NodePublishVolume target path is under it. Mounted at
/// the same path in the agent (the kubelet names host paths) with Bidirectional propagation,
/// so what the agent mounts there reaches the node and the pod.
pub const KUBELET_PODS_DIR: &str = "/var/lib/kubelet/pods";
/// Where the kubelet finds plugin registration sockets (the registrar's `/registration`).
pub const KUBELET_REGISTRY_DIR: &str = "/var/lib/kubelet/plugins_registry";
pub const REGISTRAR_NAME: &str = "node-driver-registrar";
/// The registrar's `/healthz` (`--http-endpoint`), its liveness probe.
pub const REGISTRAR_HEALTH_PORT: u16 = 9809;

/// The node's CNI directories, and where the installer sees them.
pub const CNI_HOST_BIN_DIR: &str = "/opt/cni/bin";
pub const CNI_HOST_CONF_DIR: &str = "/etc/cni/net.d";
pub const CNI_BIN_MOUNT: &str = "/host/opt/cni/bin";
pub const CNI_CONF_MOUNT: &str = "/host/etc/cni/net.d";
/// Time the installer has after SIGTERM to take its entry out of the node's conflist and its
/// files out of the CNI directories (a few file operations; the kubelet's default, written
/// out so the budget is visible).
pub const CNI_TERMINATION_GRACE_SECONDS: u32 = 30;

fn selector(component: &str) -> Value {
    json!({"app.kubernetes.io/name": component})
}

/// Everything `lanyard install` prints (without `--include-ca`), in apply order: the CRDs
/// first, so `kubectl apply` has created it before anything refers to it.
pub fn base_manifests(options: &InstallOptions) -> Vec<Yaml> {
    let mut docs = crd();
    docs.push(Yaml::from_json(&namespace(options)));
    docs.extend(rbac::service_accounts(options));
    docs.extend(rbac::server_rbac(options));
    docs.extend(rbac::cni_rbac(options));
    docs.push(Yaml::from_json(&config_map(options)));
    docs.extend(
        [
            server_service(options),
            server_deployment(options),
            server_disruption_budget(options),
            csi_driver(),
            agent_daemonset(options),
        ]
        .iter()
        .map(Yaml::from_json),
    );
    if options.redirect == RedirectMode::Cni {
        docs.push(Yaml::from_json(&cni_daemonset(options)));
    }
    docs
}

/// The `LanyardIdentity` and `LanyardFederation` CustomResourceDefinitions, in that order: the
/// registration crate's manifests, the same data (re-emitted like every document here; not
/// options-dependent: the resources are cluster scoped and their `className` tells
/// installations apart).
pub fn crd() -> Vec<Yaml> {
    ALL_CRD_YAML
        .iter()
        .flat_map(|text| {
            read_stream(text).expect("lanyard-registration's CRDs are YAML (its tests parse them)")
        })
        .filter_map(|doc| doc.value)
        .collect()
}

fn namespace(options: &InstallOptions) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": options.namespace,
            "labels": {
                "app.kubernetes.io/part-of": "lanyard",
                // This namespace runs node agents: the agent is a privileged container
                // (Bidirectional mount propagation for its CSI volumes) with hostPID and
                // hostPath volumes, and the CNI installer writes to the node's CNI
                // directories. Only `privileged` admits them. Meshed workloads' namespaces
                // need no such label.
                "pod-security.kubernetes.io/enforce": "privileged",
            },
        },
    })
}

/// `lanyard-config`: the install's choices other tools read. `lanyard inject` takes its
/// default `--redirect` from `redirect` (`cni` only when the CNI plugin is installed).
fn config_map(options: &InstallOptions) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": CONFIG_MAP_NAME, "namespace": options.namespace, "labels": {"app.kubernetes.io/part-of": "lanyard"}},
        "data": {CONFIG_REDIRECT_KEY: options.redirect.to_string()},
    })
}

/// The CSI driver injected pods' inline volumes name: node-only (no controller, nothing to
/// attach), ephemeral inline volumes only, and the pod's namespace, name, UID and
/// ServiceAccount in every NodePublishVolume (`podInfoOnMount`), which is how the agent knows
/// whose volume it publishes. `fsGroupPolicy: None`: the kubelet leaves the published
/// directory's ownership and modes alone (a socket directory, mounted read-only, that the
/// pod's fsGroup has no business changing).
fn csi_driver() -> Value {
    json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "CSIDriver",
        "metadata": {"name": CSI_DRIVER_NAME, "labels": labels(AGENT_NAME)},
        "spec": {
            "attachRequired": false,
            "podInfoOnMount": true,
            "volumeLifecycleModes": ["Ephemeral"],
            "fsGroupPolicy": "None",
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

/// `lanyard-agent run` with a projected ServiceAccount token, serving the Workload API on the
/// node's socket directory and the CSI node plugin on the kubelet's plugin socket.
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
        "--csi-socket".into(),
        CSI_SOCKET.into(),
        "--csi-pods-dir".into(),
        KUBELET_PODS_DIR.into(),
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
            // The replica's name in its CA report (`lanyard-ca-report-<pod name>`, read by
            // `lanyard ca status` and the rotation's propagation checks).
            "env": [{"name": "LANYARD_REPLICA_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
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

/// The upstream node-driver-registrar: registers the agent's CSI socket with the kubelet
/// (through the kubelet's plugin registry), and serves `/healthz`, which fails while the
/// registration does not hold, as its liveness probe (as upstream recommends).
fn registrar_container(options: &InstallOptions) -> Value {
    json!({
        "name": REGISTRAR_NAME,
        "image": options.images.csi_registrar(),
        "args": [
            format!("--csi-address={CSI_SOCKET}"),
            format!("--kubelet-registration-path={CSI_PLUGIN_DIR}/csi.sock"),
            format!("--http-endpoint=:{REGISTRAR_HEALTH_PORT}"),
        ],
        "ports": [{"name": "registrar", "containerPort": REGISTRAR_HEALTH_PORT, "protocol": "TCP"}],
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "registrar"},
            "initialDelaySeconds": 5,
            "timeoutSeconds": 5,
            "periodSeconds": 10,
        },
        "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"cpu": "100m", "memory": "64Mi"},
        },
        // Root owns the kubelet's registry directory and the agent's CSI socket; it needs no
        // capability (owner permissions suffice) and writes nothing but its socket.
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": false,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "csi", "mountPath": CSI_MOUNT},
            {"name": "registration", "mountPath": "/registration"},
        ],
    })
}

fn agent_daemonset(options: &InstallOptions) -> Value {
    let container = merge(
        json!({
            "name": AGENT_NAME,
            "image": options.images.agent(),
            "args": agent_args(options),
            // The agent checks that the server attested it as this very node; it is also the
            // CSI node ID.
            "env": [{"name": "LANYARD_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
            "ports": [{"name": "health", "containerPort": HEALTH_PORT, "protocol": "TCP"}],
            "resources": {
                "requests": {"cpu": "50m", "memory": "64Mi"},
                "limits": {"cpu": "1", "memory": "256Mi"},
            },
            // Privileged because the kubelet's pods directory is mounted with Bidirectional
            // propagation, which Kubernetes allows only in privileged containers: the agent
            // publishes each pod's CSI volume by mounting it under that directory, and only
            // Bidirectional propagation carries that mount back to the node, where the
            // kubelet hands it to the pod. Privileged implies every capability (SYS_PTRACE,
            // which reading /proc/<pid>/exe of other users' workloads needs, among them), so
            // none are listed. Root owns the node's socket directories; the root file system
            // stays read-only.
            "securityContext": {
                "privileged": true,
                "runAsUser": 0,
                "runAsNonRoot": false,
                "readOnlyRootFilesystem": true,
            },
            "volumeMounts": [
                {"name": "sockets", "mountPath": SOCKET_DIR},
                {"name": "csi", "mountPath": CSI_MOUNT},
                {"name": "kubelet-pods", "mountPath": KUBELET_PODS_DIR, "mountPropagation": "Bidirectional"},
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
                    // No API credentials: the agent never talks to the Kubernetes API (the
                    // kubelet tells it whose CSI volume it publishes).
                    "automountServiceAccountToken": false,
                    // Workload attestation reads /proc/<pid> of the callers on the node.
                    "hostPID": true,
                    "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                    // Every node, tainted or not, needs its agent.
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [container, registrar_container(options)],
                    "volumes": [
                        // The node-wide Workload API socket (`lanyard inject --socket-volume
                        // hostpath`, and workloads outside pods).
                        {"name": "sockets", "hostPath": {"path": SOCKET_DIR, "type": "DirectoryOrCreate"}},
                        {"name": "csi", "hostPath": {"path": CSI_PLUGIN_DIR, "type": "DirectoryOrCreate"}},
                        // The kubelet's own directories: Directory, so a node whose kubelet
                        // keeps them elsewhere fails to start the pod, saying which path,
                        // instead of a CSI driver the kubelet never finds.
                        {"name": "kubelet-pods", "hostPath": {"path": KUBELET_PODS_DIR, "type": "Directory"}},
                        {"name": "registration", "hostPath": {"path": KUBELET_REGISTRY_DIR, "type": "Directory"}},
                        {"name": "token", "projected": {"sources": [{"serviceAccountToken": {
                            "path": "token",
                            "audience": AGENT_TOKEN_AUDIENCE,
                            "expirationSeconds": AGENT_TOKEN_SECONDS,
                        }}]}},
                        {"name": "bundle", "configMap": {"name": BUNDLE_CONFIGMAP_NAME, "items": [{"key": CONFIGMAP_BUNDLE_KEY, "path": CONFIGMAP_BUNDLE_KEY}]}},
                        {"name": "data", "emptyDir": {"sizeLimit": "16Mi"}},
                    ],
                },
            },
        },
    })
}

/// `lanyard-cni install`: place the plugin binary and its kubeconfig in the node's CNI
/// directories, add the plugin to the conflist, keep it there, remove both on SIGTERM.
pub fn cni_args() -> Vec<String> {
    [
        "install",
        "--host-bin-dir",
        CNI_BIN_MOUNT,
        "--host-conf-dir",
        CNI_CONF_MOUNT,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The CNI plugin's installer, on every node (`--cni`).
fn cni_daemonset(options: &InstallOptions) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": CNI_NAME, "namespace": options.namespace, "labels": labels(CNI_NAME)},
        "spec": {
            "selector": {"matchLabels": selector(CNI_NAME)},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": labels(CNI_NAME)},
                "spec": {
                    // Its token (automounted, rotated by the kubelet) is what the installer
                    // writes into the plugin's kubeconfig: get on pods, nothing else.
                    "serviceAccountName": CNI_NAME,
                    // On the node's network: its own sandbox needs no CNI ADD, so a plugin
                    // that cannot reach the API never keeps out the pod that repairs it.
                    "hostNetwork": true,
                    "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                    // Every node that runs meshed pods needs the plugin: the agent's
                    // tolerations.
                    "tolerations": [{"operator": "Exists"}],
                    "terminationGracePeriodSeconds": CNI_TERMINATION_GRACE_SECONDS,
                    "containers": [{
                        "name": CNI_NAME,
                        "image": options.images.cni(),
                        "args": cni_args(),
                        "resources": {
                            "requests": {"cpu": "10m", "memory": "16Mi"},
                            "limits": {"cpu": "100m", "memory": "64Mi"},
                        },
                        // Root owns the node's CNI directories; owner permissions suffice to
                        // write there, so no capability. No iptables here: the plugin itself
                        // runs on the node, started by the container runtime.
                        "securityContext": {
                            "runAsUser": 0,
                            "runAsNonRoot": false,
                            "readOnlyRootFilesystem": true,
                            "allowPrivilegeEscalation": false,
                            "capabilities": {"drop": ["ALL"]},
                        },
                        "volumeMounts": [
                            {"name": "cni-bin", "mountPath": CNI_BIN_MOUNT},
                            {"name": "cni-conf", "mountPath": CNI_CONF_MOUNT},
                        ],
                    }],
                    // Directory: a node whose runtime keeps its CNI files elsewhere fails to
                    // start the installer, naming the path, rather than getting a plugin its
                    // runtime never calls.
                    "volumes": [
                        {"name": "cni-bin", "hostPath": {"path": CNI_HOST_BIN_DIR, "type": "Directory"}},
                        {"name": "cni-conf", "hostPath": {"path": CNI_HOST_CONF_DIR, "type": "Directory"}},
                    ],
                },
            },
        },
    })
}
