//! The server's RBAC, the CNI plugin's (with `--cni`), and nothing for the agent: of the
//! control plane only the server talks to the Kubernetes API (DESIGN §1). Cluster-wide it may
//! create TokenReviews (node attestation) and read Pods, Services and EndpointSlices (pod
//! identities, node feeds, discovery), Namespaces and LanyardIdentities (registration: a
//! resource's namespace selector matches namespace labels), LanyardFederations (the federated
//! trust domains whose bundles it fetches), and write LanyardIdentity
//! statuses (`get`/`patch`/`update` on the `status` subresource only, never the spec); in its
//! own namespace it may read exactly its CA Secret
//! and bundle ConfigMap, by name. `list`/`watch` on a named object work because the server
//! watches it with a `metadata.name` field selector.
//!
//! Each replica also writes its CA report, ConfigMap `lanyard-ca-report-<pod name>`, for
//! `lanyard ca status` (a merge patch, a create when it does not exist yet, a delete at
//! shutdown), so the Role grants `create`, `patch` and `delete` on configmaps in the namespace,
//! and nothing more: no `get`, `list`, `update`, and nothing on Secrets. It cannot be narrowed
//! by name: `create` is never checked against `resourceNames` (the name is not part of the
//! request's authorization attributes), and the replicas are Deployment pods whose names are
//! unknown when this is rendered. So a server could also patch or delete other ConfigMaps of
//! its namespace (the bundle's among them); it already holds the signing intermediate, and a
//! changed bundle is visible in every replica's report and in `lanyard ca status`.
//!
//! One replica at a time writes the LanyardIdentity statuses: the holder of the Lease
//! [`STATUS_LEASE_NAME`] in the namespace. The Role lets the server `create` leases (again not
//! limitable by name: the first replica creates it) and `get`/`update`/`patch` only that one. The CNI plugin, run by the container
//! runtime with the kubeconfig its installer writes from the `lanyard-cni` ServiceAccount, may
//! `get` a pod (its annotations say whether and how to redirect) and nothing else.

use serde_json::json;

use lanyard_registration::federation::PLURAL as FEDERATION_PLURAL;
use lanyard_registration::resource::{GROUP, PLURAL};

use super::{
    AGENT_NAME, BUNDLE_CONFIGMAP_NAME, CA_SECRET_NAME, CNI_NAME, InstallOptions, RedirectMode,
    SERVER_NAME, STATUS_LEASE_NAME,
};
use crate::install::labels;
use crate::yaml::Yaml;

const READ: [&str; 3] = ["get", "list", "watch"];

/// ClusterRole, ClusterRoleBinding, Role, RoleBinding for the server's ServiceAccount.
pub fn server_rbac(options: &InstallOptions) -> Vec<Yaml> {
    let ns = &options.namespace;
    // Cluster-scoped names carry the namespace so two installs do not collide.
    let cluster_name = format!("{SERVER_NAME}-{ns}");
    let subject = json!([{"kind": "ServiceAccount", "name": SERVER_NAME, "namespace": ns}]);
    [
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": cluster_name, "labels": labels(SERVER_NAME)},
            "rules": [
                {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
                {"apiGroups": [""], "resources": ["pods", "services"], "verbs": READ},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": READ},
                // Registration: the LanyardIdentities, the namespaces their selectors match,
                // and each resource's status (written by the holder of the status Lease).
                {"apiGroups": [""], "resources": ["namespaces"], "verbs": READ},
                {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": READ},
                {"apiGroups": [GROUP], "resources": [format!("{PLURAL}/status")], "verbs": ["get", "patch", "update"]},
                // Federation: the trust domains whose bundles the servers fetch (read only).
                {"apiGroups": [GROUP], "resources": [FEDERATION_PLURAL], "verbs": READ},
            ],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": cluster_name, "labels": labels(SERVER_NAME)},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_name},
            "subjects": subject,
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": SERVER_NAME, "namespace": ns, "labels": labels(SERVER_NAME)},
            "rules": [
                {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [CA_SECRET_NAME], "verbs": READ},
                {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [BUNDLE_CONFIGMAP_NAME], "verbs": READ},
                // The replica's CA report (see the module docs for why not by name).
                {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "patch", "delete"]},
                // The Lease electing the replica that writes LanyardIdentity statuses: created
                // by the first replica (create cannot be limited by name), then read and
                // renewed by name only.
                {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
                {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [STATUS_LEASE_NAME], "verbs": ["get", "update", "patch"]},
            ],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": SERVER_NAME, "namespace": ns, "labels": labels(SERVER_NAME)},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": SERVER_NAME},
            "subjects": subject,
        }),
    ]
    .iter()
    .map(Yaml::from_json)
    .collect()
}

/// With `--cni`: the ClusterRole and ClusterRoleBinding of the `lanyard-cni` ServiceAccount,
/// `get` on pods cluster-wide (the plugin looks up the pod being created by namespace and
/// name); nothing otherwise.
pub fn cni_rbac(options: &InstallOptions) -> Vec<Yaml> {
    if options.redirect != RedirectMode::Cni {
        return Vec::new();
    }
    let ns = &options.namespace;
    let cluster_name = format!("{CNI_NAME}-{ns}");
    [
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": cluster_name, "labels": labels(CNI_NAME)},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": cluster_name, "labels": labels(CNI_NAME)},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_name},
            "subjects": [{"kind": "ServiceAccount", "name": CNI_NAME, "namespace": ns}],
        }),
    ]
    .iter()
    .map(Yaml::from_json)
    .collect()
}

/// The ServiceAccounts. The agent's gets no API token mounted and no binding: its projected
/// token (audience [`super::AGENT_TOKEN_AUDIENCE`]) is only for the server. With `--cni`,
/// `lanyard-cni`'s, whose token the installer hands to the plugin.
pub fn service_accounts(options: &InstallOptions) -> Vec<Yaml> {
    let ns = &options.namespace;
    let cni = (options.redirect == RedirectMode::Cni).then(|| {
        json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": CNI_NAME, "namespace": ns, "labels": labels(CNI_NAME)},
        })
    });
    [
        json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": SERVER_NAME, "namespace": ns, "labels": labels(SERVER_NAME)},
        }),
        json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": AGENT_NAME, "namespace": ns, "labels": labels(AGENT_NAME)},
            "automountServiceAccountToken": false,
        }),
    ]
    .into_iter()
    .chain(cni)
    .map(|v| Yaml::from_json(&v))
    .collect()
}
