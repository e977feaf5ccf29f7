//! The `LanyardFederation` informer (cluster scoped, `lanyard.dev/v1alpha1`): the federated
//! trust domains whose bundles this server fetches, checked into [`FederatedDomain`]s and
//! published on a watch channel that the bundle fetcher follows.
//!
//! As with `LanyardIdentity` ([`super::identities`]): resources of another installation's class
//! are ignored; a cluster without the CRD (404) or RBAC that forbids the list (403) is a WARN,
//! once, and counts as no resources, and the watcher keeps retrying, so installing the CRD or
//! granting the RBAC later takes effect by itself. A resource that does not check (a bundle
//! that does not parse, our own trust domain, ...) is skipped with a WARN naming it and why,
//! logged again only when its spec changes. Two resources naming one trust domain: the first
//! by name is used, the other skipped with a WARN.

use std::collections::BTreeMap;

use kube::{Api, Client};
use lanyard_registration::ClassPolicy;
use lanyard_registration::federation::{
    FederatedDomain, FederationError, LanyardFederation, LanyardFederationSpec,
};
use lanyard_svid::TrustDomain;
use tokio::sync::watch;

use super::identities::{Step, watch_kind};

/// What the API calls the kind, in logs and the RBAC advice.
pub(crate) const WHAT: &str = "lanyardfederations";

/// Watches every `LanyardFederation` served by the default class policy (class `lanyard`,
/// classless resources included); see [`spawn_for_class`]. The receiver starts empty; the task
/// runs until aborted.
pub fn spawn(
    client: Client,
    own: TrustDomain,
) -> (
    watch::Receiver<Vec<FederatedDomain>>,
    tokio::task::JoinHandle<()>,
) {
    spawn_for_class(client, own, ClassPolicy::default())
}

/// Watches every `LanyardFederation` that `class` serves (the server's `--identity-class` and
/// `--watch-classless`, as for `LanyardIdentity`); publishes the valid ones, sorted by trust
/// domain, whenever that list changes.
pub fn spawn_for_class(
    client: Client,
    own: TrustDomain,
    class: ClassPolicy,
) -> (
    watch::Receiver<Vec<FederatedDomain>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = watch::channel(Vec::new());
    let mut set = FederationSet::new(own, class);
    let api: Api<LanyardFederation> = Api::all(client);
    let task = tokio::spawn(watch_kind(api, WHAT, move |step| {
        match step {
            Step::Listed(list) => set.listed(list),
            Step::Unavailable => set.listed(Vec::new()),
            Step::Applied(r) => set.applied(r),
            Step::Deleted(r) => set.deleted(r.name()),
        }
        let domains = set.domains();
        tx.send_if_modified(|current| {
            let changed = *current != domains;
            if changed {
                *current = domains;
            }
            changed
        });
    }));
    (rx, task)
}

/// One resource as last seen and what its spec checked into.
struct Checked {
    spec: LanyardFederationSpec,
    /// `None`: another installation's class.
    outcome: Option<Result<FederatedDomain, FederationError>>,
}

/// Every resource of the kind, by name, each checked once per spec.
pub struct FederationSet {
    own: TrustDomain,
    class: ClassPolicy,
    resources: BTreeMap<String, Checked>,
    /// Resources skipped because an earlier one names their trust domain (WARNed once).
    duplicates: std::collections::BTreeSet<String>,
}

impl FederationSet {
    pub fn new(own: TrustDomain, class: ClassPolicy) -> Self {
        Self {
            own,
            class,
            resources: BTreeMap::new(),
            duplicates: std::collections::BTreeSet::new(),
        }
    }

    /// A full listing: resources not in it are gone.
    pub fn listed(&mut self, list: Vec<LanyardFederation>) {
        let names: std::collections::BTreeSet<String> =
            list.iter().map(|r| r.name().to_owned()).collect();
        self.resources.retain(|name, _| names.contains(name));
        for r in list {
            self.applied(r);
        }
    }

    /// A resource created or changed; checked again only when its spec changed.
    pub fn applied(&mut self, resource: LanyardFederation) {
        let name = resource.name().to_owned();
        if self
            .resources
            .get(&name)
            .is_some_and(|c| c.spec == resource.spec)
        {
            return;
        }
        let outcome = resource.served_by(&self.class).then(|| {
            let checked = FederatedDomain::from_resource(&resource, &self.own);
            if let Err(e) = &checked {
                tracing::warn!(
                    resource = %format!("{}/{name}", lanyard_registration::federation::KIND),
                    error = %e,
                    "invalid LanyardFederation skipped"
                );
            }
            checked
        });
        self.resources.insert(
            name,
            Checked {
                spec: resource.spec,
                outcome,
            },
        );
    }

    pub fn deleted(&mut self, name: &str) {
        self.resources.remove(name);
    }

    /// The valid domains of our class, sorted by trust domain; for a trust domain named by
    /// several resources, the first by name (the others are WARNed about).
    pub fn domains(&mut self) -> Vec<FederatedDomain> {
        let mut by_domain: BTreeMap<TrustDomain, FederatedDomain> = BTreeMap::new();
        let mut duplicates = std::collections::BTreeSet::new();
        for (name, checked) in &self.resources {
            let Some(Ok(domain)) = &checked.outcome else {
                continue;
            };
            match by_domain.get(&domain.trust_domain) {
                Some(first) => {
                    if !self.duplicates.contains(name) {
                        tracing::warn!(
                            resource = %format!("{}/{name}", lanyard_registration::federation::KIND),
                            trust_domain = %domain.trust_domain,
                            federated_by = %first.source,
                            "LanyardFederation skipped: its trust domain is already federated"
                        );
                    }
                    duplicates.insert(name.clone());
                }
                None => {
                    by_domain.insert(domain.trust_domain.clone(), domain.clone());
                }
            }
        }
        self.duplicates = duplicates;
        by_domain.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use lanyard_registration::federation::{BundleEndpointProfile, PROFILE_HTTPS_WEB};

    use super::*;

    fn own() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn resource(name: &str, td: &str) -> LanyardFederation {
        LanyardFederation::new(
            name,
            LanyardFederationSpec {
                trust_domain: td.into(),
                bundle_endpoint_url: format!("https://{td}/bundle"),
                bundle_endpoint_profile: BundleEndpointProfile {
                    type_: PROFILE_HTTPS_WEB.into(),
                    endpoint_spiffe_id: None,
                },
                ..Default::default()
            },
        )
    }

    fn names(set: &mut FederationSet) -> Vec<String> {
        set.domains()
            .iter()
            .map(|d| format!("{} {}", d.trust_domain, d.source))
            .collect()
    }

    #[test]
    fn valid_resources_of_our_class_sorted_by_trust_domain() {
        let mut set = FederationSet::new(own(), ClassPolicy::default());
        let mut other_class = resource("c", "c.example");
        other_class.spec.class_name = Some("someone-else".into());
        set.listed(vec![
            resource("b", "b.example"),
            resource("a", "z.example"),
            resource("own", "example.org"),
            other_class,
        ]);
        assert_eq!(
            names(&mut set),
            [
                "b.example LanyardFederation/b",
                "z.example LanyardFederation/a"
            ]
        );
        // An edit that makes one invalid drops it; fixing it brings it back.
        let mut broken = resource("b", "b.example");
        broken.spec.bundle_endpoint_url = "http://b.example".into();
        set.applied(broken);
        assert_eq!(names(&mut set), ["z.example LanyardFederation/a"]);
        set.applied(resource("b", "b.example"));
        assert_eq!(names(&mut set).len(), 2);
        set.deleted("a");
        assert_eq!(names(&mut set), ["b.example LanyardFederation/b"]);
        // A new listing replaces everything.
        set.listed(vec![resource("x", "x.example")]);
        assert_eq!(names(&mut set), ["x.example LanyardFederation/x"]);
        set.listed(Vec::new());
        assert!(set.domains().is_empty());
    }

    #[test]
    fn one_trust_domain_twice_keeps_the_first_by_name() {
        let mut set = FederationSet::new(own(), ClassPolicy::default());
        set.applied(resource("second", "p.example"));
        set.applied(resource("first", "p.example"));
        assert_eq!(names(&mut set), ["p.example LanyardFederation/first"]);
        set.deleted("first");
        assert_eq!(names(&mut set), ["p.example LanyardFederation/second"]);
    }
}
