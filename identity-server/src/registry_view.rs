//! The registration state every pod decision reads: the [`Registry`] built from the
//! `LanyardIdentity` resources, the namespaces' labels, and whether both have been listed.
//!
//! [`Registrations`] holds the latest [`RegistrationSnapshot`] in a `watch` channel: the
//! informers ([`crate::k8s::identities`]) replace it on every change, and the mint policy, the
//! node feeds, discovery and the status writer read (and wait on) it. In data-dir mode it is
//! fixed: no resources, synced, the default template only.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use lanyard_registration::{PodFacts, Registry, RegistryConfig, Resolution};
use tokio::sync::watch;

use crate::k8s::pods::PodInfo;

/// Namespace name -> its labels.
pub type NamespaceLabels = HashMap<String, BTreeMap<String, String>>;

/// One consistent view: a registry and the namespace labels it was resolved against.
#[derive(Debug, Clone)]
pub struct RegistrationSnapshot {
    pub registry: Arc<Registry>,
    pub namespaces: Arc<NamespaceLabels>,
    /// False until the first listing of both resources and namespaces completed (or was
    /// found impossible: no CRD, no RBAC); pod decisions before then could be wrong.
    pub synced: bool,
}

impl RegistrationSnapshot {
    /// What the registry needs of `pod`.
    pub fn facts<'a>(&'a self, pod: &'a PodInfo) -> PodFacts<'a> {
        PodFacts {
            namespace: &pod.namespace,
            name: &pod.name,
            uid: &pod.uid,
            service_account: &pod.service_account,
            node_name: &pod.node_name,
            labels: &pod.labels,
            namespace_labels: self.namespaces.get(&pod.namespace),
        }
    }

    /// `pod`'s identity now.
    pub fn resolve(&self, pod: &PodInfo) -> Resolution {
        self.registry.resolve(&self.facts(pod))
    }
}

/// The latest snapshot, shared. Cheap to clone.
#[derive(Clone)]
pub struct Registrations {
    tx: Arc<watch::Sender<RegistrationSnapshot>>,
}

impl Registrations {
    /// No resources, no namespaces, not synced yet (cluster mode, before the informers list).
    pub fn unsynced(config: RegistryConfig) -> Self {
        Self::with(config, &[], false)
    }

    /// Fixed: no resources, synced (data-dir mode, where no Kubernetes exists; and tests).
    pub fn fixed(config: RegistryConfig) -> Self {
        Self::with(config, &[], true)
    }

    fn with(
        config: RegistryConfig,
        resources: &[lanyard_registration::LanyardIdentity],
        synced: bool,
    ) -> Self {
        let snapshot = RegistrationSnapshot {
            registry: Arc::new(Registry::new(config, resources)),
            namespaces: Arc::default(),
            synced,
        };
        Self {
            tx: Arc::new(watch::channel(snapshot).0),
        }
    }

    /// The snapshot now.
    pub fn current(&self) -> RegistrationSnapshot {
        self.tx.borrow().clone()
    }

    /// Fires after every [`Self::publish`].
    pub fn subscribe(&self) -> watch::Receiver<RegistrationSnapshot> {
        self.tx.subscribe()
    }

    /// Puts a new snapshot in force.
    pub fn publish(&self, snapshot: RegistrationSnapshot) {
        self.tx.send_replace(snapshot);
    }
}

#[cfg(test)]
pub(crate) fn test_config(default_template: Option<&str>) -> RegistryConfig {
    RegistryConfig {
        trust_domain: lanyard_svid::TrustDomain::new("example.org").unwrap(),
        class: Default::default(),
        default_template: default_template.map(str::to_owned),
    }
}

/// A snapshot of `resources` and `namespaces`, synced (tests).
#[cfg(test)]
pub(crate) fn test_snapshot(
    default_template: Option<&str>,
    resources: &[lanyard_registration::LanyardIdentity],
    namespaces: &[(&str, &[(&str, &str)])],
) -> RegistrationSnapshot {
    RegistrationSnapshot {
        registry: Arc::new(Registry::new(test_config(default_template), resources)),
        namespaces: Arc::new(
            namespaces
                .iter()
                .map(|(ns, labels)| {
                    let labels = labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect();
                    (ns.to_string(), labels)
                })
                .collect(),
        ),
        synced: true,
    }
}
