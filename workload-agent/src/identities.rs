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
    let wanted = entitlements
        .iter()
        .flat_map(|e| std::iter::once(e.spiffe_id.trust_domain()).chain(e.federates_with.iter()));
    for trust_domain in wanted {
        if let Some(bundle) = all.get(trust_domain) {
            out.insert(bundle.clone());
        }
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

    /// The trust bundles to serve: our own trust domain's, plus any federated ones.
    fn bundles(&self) -> Arc<BundleSet>;

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
