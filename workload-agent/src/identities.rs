//! The seam between the Workload API (which serves callers) and the certificate manager
//! (which obtains and renews SVIDs from the server).
//!
//! The Workload API attests a caller, then asks [`WorkloadIdentities`] which identities that
//! caller is entitled to, waits for their SVIDs, and re-reads everything whenever
//! [`WorkloadIdentities::changes`] fires (a rotation, a bundle change, a new node view).
//! The certificate manager implements the trait.

use std::sync::Arc;
use std::time::Duration;

use lanyard_proto::identity::v1 as wire;
use lanyard_svid::x509::X509Svid;
use lanyard_svid::{BundleSet, SpiffeId, TrustDomain};
use tokio::sync::watch;

use crate::attest::Attested;

/// One identity a workload may hold, and how to ask the server for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entitlement {
    /// The ID the server will issue (it decides; this is what the node view says it will be).
    pub spiffe_id: SpiffeId,
    /// The workload as named in mint requests (a pod, or a static entry and its pod).
    pub workload: wire::Workload,
    /// Per-entry TTLs are applied by the server; these are informational.
    pub x509_ttl: Option<Duration>,
    /// The Workload API `hint` of this identity's SVIDs (the operator's name for it, e.g.
    /// `internal`), from the pod's registration; empty: none. Part of the entitlement's
    /// equality, so a changed hint is a changed response.
    pub hint: String,
    /// Federated trust domains whose bundles a caller holding this identity receives beside
    /// its own (the registration's `federates_with`), in a stable order.
    pub federates_with: Vec<TrustDomain>,
}

/// The bundles a caller entitled to `entitlements` is served: every trust domain of its own
/// identities, plus the federated domains any of them `federates_with` (those `all` holds).
/// Nothing else: a workload never sees a federated bundle its registration did not name.
pub fn bundles_for(all: &BundleSet, entitlements: &[Entitlement]) -> BundleSet {
    let mut out = BundleSet::new();
    for trust_domain in federation_key(entitlements) {
        if let Some(bundle) = all.get(&trust_domain) {
            out.insert(bundle.clone());
        }
    }
    out
}

/// The trust domains whose bundles [`bundles_for`] picks for `entitlements`, sorted and
/// without duplicates: callers with the same key are served the same bundles, so the
/// Workload API builds a bundle response once per key (in the common case, no federation,
/// every caller of the node has the same one).
pub fn federation_key(entitlements: &[Entitlement]) -> Vec<TrustDomain> {
    let mut key: Vec<TrustDomain> = entitlements
        .iter()
        .flat_map(|e| std::iter::once(e.spiffe_id.trust_domain()).chain(e.federates_with.iter()))
        .cloned()
        .collect();
    key.sort();
    key.dedup();
    key
}

/// What a caller is served: the agent's `own` bundles (its trust domain's, which every caller
/// gets, as the Workload API asks), plus [`bundles_for`] its entitlements out of `all`. For a
/// caller with no identity, `own` alone.
pub fn served_bundles(own: &BundleSet, all: &BundleSet, entitlements: &[Entitlement]) -> BundleSet {
    let mut out = own.clone();
    for bundle in bundles_for(all, entitlements).iter() {
        out.insert(bundle.clone());
    }
    out
}

/// Why identities could not be served. `Display` is a metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The caller is entitled to nothing (the Workload API answers `PermissionDenied`
    /// "no identity issued").
    #[error("no_identity")]
    NoIdentity,
    /// Entitled, but the SVID is not (yet) available: the server is unreachable or refused,
    /// or the first mint has not finished within the wait. Clients retry (`Unavailable`).
    #[error("not_ready")]
    NotReady(String),
    /// The server refused this workload (for a JWT mint).
    #[error("refused")]
    Refused(String),
    /// The agent itself has not attested to the server yet.
    #[error("agent_not_attested")]
    AgentNotAttested,
}

impl IdentityError {
    pub fn message(&self) -> String {
        match self {
            Self::NoIdentity => "no identity issued".to_owned(),
            Self::NotReady(why) => format!("identity not available yet: {why}"),
            Self::Refused(why) => format!("the server refused: {why}"),
            Self::AgentNotAttested => "the agent has not attested to the server yet".to_owned(),
        }
    }
}

/// Everything the Workload API needs from the rest of the agent.
#[tonic::async_trait]
pub trait WorkloadIdentities: Send + Sync + 'static {
    /// The identities `attested` is entitled to, per the server's current node view, in a
    /// stable order: the first is the workload's default identity. Empty: no identity.
    fn resolve(&self, attested: &Attested) -> Vec<Entitlement>;

    /// The current X.509-SVIDs (with keys) for `entitlements`, in the same order. Identities
    /// not yet held are requested from the server; this waits (bounded, a few seconds) for
    /// them, so a first call for a new identity costs one mint round trip. An identity the
    /// agent already holds returns at once. Subscribers keep the identities renewed for as long
    /// as they keep calling; the manager may drop identities nobody asked for in a while.
    /// Once nothing is pending, the identities held are returned even if others were refused
    /// or timed out (in order, so the default may be a later one); an error only when none is.
    async fn x509_svids(
        &self,
        entitlements: &[Entitlement],
    ) -> Result<Vec<Arc<X509Svid>>, IdentityError>;

    /// A JWT-SVID for `entitlement` and `audience` (non-empty), minted by the server.
    async fn jwt_svid(
        &self,
        entitlement: &Entitlement,
        audience: &[String],
    ) -> Result<String, IdentityError>;

    /// Every trust bundle held: our own trust domain's, plus every federated one. Which of
    /// them a caller is served is [`served_bundles`] of its entitlements.
    fn bundles(&self) -> Arc<BundleSet>;

    /// The agent's own bundles only (its trust domain's, never a federated one): what a
    /// caller without an identity may validate JWT-SVIDs against. The default, for a source
    /// that holds no federated bundle, is [`WorkloadIdentities::bundles`].
    fn own_bundles(&self) -> Arc<BundleSet> {
        self.bundles()
    }

    /// Changes every time anything above may answer differently.
    fn changes(&self) -> watch::Receiver<u64>;

    /// A number that moves (before [`WorkloadIdentities::changes`] ticks) whenever
    /// [`WorkloadIdentities::resolve`] may answer differently for the same caller, so an open
    /// stream can keep its resolution across changes that leave the node view alone (a
    /// rotation, a bundle change). `None` (the default): not tracked; resolve after every
    /// change.
    fn view_version(&self) -> Option<u64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use lanyard_svid::{RootCa, TrustBundle};

    use super::*;

    fn td(name: &str) -> TrustDomain {
        TrustDomain::new(name).unwrap()
    }

    fn bundle(name: &str) -> TrustBundle {
        let root =
            RootCa::generate(&td(name), Duration::from_secs(3600), SystemTime::now()).unwrap();
        TrustBundle::from_x509_authorities(td(name), [root.cert_der().clone()])
    }

    fn entitled(path: &str, federates_with: &[&str]) -> Entitlement {
        Entitlement {
            spiffe_id: td("example.org").id(path).unwrap(),
            workload: Default::default(),
            x509_ttl: None,
            hint: String::new(),
            federates_with: federates_with.iter().map(|d| td(d)).collect(),
        }
    }

    fn domains(set: &BundleSet) -> Vec<String> {
        set.iter().map(|b| b.trust_domain().to_string()).collect()
    }

    #[test]
    fn a_caller_is_served_its_own_domain_and_the_federated_ones_it_names() {
        let mut all = BundleSet::new();
        for name in ["example.org", "a.test", "b.test", "c.test"] {
            all.insert(bundle(name));
        }
        let own = BundleSet::from(all.get(&td("example.org")).unwrap().clone());
        let web = entitled("/web", &["b.test", "missing.test"]);
        let db = entitled("/db", &["a.test", "b.test"]);
        assert_eq!(
            domains(&bundles_for(&all, &[web.clone(), db.clone()])),
            ["a.test", "b.test", "example.org"]
        );
        assert_eq!(
            domains(&served_bundles(&own, &all, std::slice::from_ref(&web))),
            ["b.test", "example.org"]
        );
        // No identity: our own domain only.
        assert_eq!(domains(&served_bundles(&own, &all, &[])), ["example.org"]);
        // The key: sorted, deduplicated, names a domain even when none is held for it.
        let key: Vec<String> = federation_key(&[db, web])
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(key, ["a.test", "b.test", "example.org", "missing.test"]);
        assert_eq!(
            federation_key(&[entitled("/x", &[])]),
            federation_key(&[entitled("/y", &[])]),
            "callers without federation share one key"
        );
    }
}
