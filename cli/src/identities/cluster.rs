//! The objects `lanyard identities` decides over, read through the kube client `lanyard ca`
//! configures ([`Cluster`]: KUBECONFIG, `~/.kube/config` or in-cluster, every call bounded),
//! and the installation's trust domain, from the roots of its bundle ConfigMap as `lanyard ca`
//! reads them (only the ConfigMap: no Secret is read).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::api::ListParams;
use lanyard_ca_lifecycle::names::CONFIGMAP_BUNDLE_KEY;
use lanyard_registration::LanyardIdentity;
use lanyard_svid::TrustDomain;

use super::IdentitiesError;
use crate::ca::kube::{Cluster, KubeError};
use crate::ca::material;

/// A pod as the registry needs it (owned; [`lanyard_registration::PodFacts`] borrows it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRecord {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub service_account: String,
    /// "" while unscheduled.
    pub node_name: String,
    pub labels: BTreeMap<String, String>,
}

impl PodRecord {
    /// As the server reads a pod: a missing service account is `default`, a missing node "".
    /// `None` for a pod without namespace, name or UID (the API server always sets them), and
    /// for one that is finished (`Succeeded`, `Failed`) or being deleted: the servers issue
    /// nothing to those and leave them out of the resources' status counts.
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let meta = &pod.metadata;
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if meta.deletion_timestamp.is_some() || matches!(phase, Some("Succeeded" | "Failed")) {
            return None;
        }
        let spec = pod.spec.as_ref();
        Some(Self {
            namespace: meta.namespace.clone()?,
            name: meta.name.clone()?,
            uid: meta.uid.clone()?,
            service_account: spec
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".to_owned()),
            node_name: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
            labels: meta.labels.clone().unwrap_or_default(),
        })
    }
}

/// Everything read from the cluster.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    pub identities: Vec<LanyardIdentity>,
    /// Every namespace's labels, by name.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pub pods: Vec<PodRecord>,
}

/// Reads the LanyardIdentities, every Namespace, and the pods (of `pod_namespace` only, when
/// given). The CRD not being served is [`IdentitiesError::CrdNotInstalled`].
pub async fn read(
    cluster: &Cluster,
    pod_namespace: Option<&str>,
) -> Result<Objects, IdentitiesError> {
    let client = cluster.client();
    let identities = match cluster
        .call(
            "listing LanyardIdentities".to_owned(),
            Api::<LanyardIdentity>::all(client.clone()).list(&ListParams::default()),
        )
        .await
    {
        Ok(list) => list.items,
        // A resource type the API server does not serve is a 404 on the list itself.
        Err(KubeError::NotFound { server, .. }) => {
            return Err(IdentitiesError::CrdNotInstalled { server });
        }
        Err(e) => return Err(e.into()),
    };
    let namespaces = cluster
        .call(
            "listing Namespaces".to_owned(),
            Api::<Namespace>::all(client.clone()).list(&ListParams::default()),
        )
        .await?
        .items
        .into_iter()
        .filter_map(|ns| {
            let name = ns.metadata.name?;
            Some((name, ns.metadata.labels.unwrap_or_default()))
        })
        .collect();
    let (pods_api, what) = match pod_namespace {
        Some(ns) => (
            Api::<Pod>::namespaced(client, ns),
            format!("listing Pods in namespace {ns}"),
        ),
        None => (Api::<Pod>::all(client), "listing Pods".to_owned()),
    };
    let pods = cluster
        .call(what, pods_api.list(&ListParams::default()))
        .await?
        .items
        .iter()
        .filter_map(PodRecord::from_pod)
        .collect();
    Ok(Objects {
        identities,
        namespaces,
        pods,
    })
}

/// The installation's trust domain: that of the roots in its bundle ConfigMap
/// (`cluster.objects`), as `lanyard ca` checks them. Any failure says to give `--trust-domain`.
pub async fn trust_domain(cluster: &Cluster) -> Result<TrustDomain, IdentitiesError> {
    let what = cluster.objects.configmap_ref();
    let no = |reason: String| IdentitiesError::NoTrustDomain { reason };
    let configmap = cluster
        .get_configmap()
        .await
        .map_err(|e| no(e.to_string()))?
        .ok_or_else(|| no(format!("{what} not found")))?;
    let pem = configmap
        .data
        .as_ref()
        .and_then(|d| d.get(CONFIGMAP_BUNDLE_KEY))
        .ok_or_else(|| no(format!("{what} has no `{CONFIGMAP_BUNDLE_KEY}`")))?;
    let (_, trust_domain) = material::bundle_roots(&format!("{what} {CONFIGMAP_BUNDLE_KEY}"), pem)
        .map_err(|e| no(e.to_string()))?;
    Ok(trust_domain)
}
