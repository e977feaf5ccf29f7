//! What the agent acknowledges on `SyncBundle`: the version of the bundle it installed, and
//! which of that bundle's roots the SVIDs it holds (its node SVID and every workload SVID)
//! chain to. A root rotation's retire step waits until no agent reports the old root.
//!
//! Chaining is decided by path validation ([`lanyard_svid::verify_peer`]) against each root
//! of the bundle alone. Chains are grouped by their certificates above the leaf (the
//! intermediates), so thousands of workload SVIDs from one intermediate cost one validation
//! per root.

use std::collections::BTreeSet;
use std::time::SystemTime;

use lanyard_proto::identity::v1 as wire;
use lanyard_svid::bundle::certificate_fingerprint;
use lanyard_svid::{BundleSet, PeerRole, TrustBundle, verify_peer};
use rustls_pki_types::CertificateDer;

/// The ack for `bundle` (the one installed) and the held SVID `chains` (leaf first) at `now`.
pub fn bundle_ack<'a>(
    bundle: &TrustBundle,
    chains: impl IntoIterator<Item = &'a [CertificateDer<'static>]>,
    now: SystemTime,
) -> wire::BundleAck {
    wire::BundleAck {
        version: bundle.version(),
        svid_roots: svid_roots(bundle, chains, now).into_iter().collect(),
    }
}

/// The fingerprints ([`certificate_fingerprint`]) of the roots of `bundle` that at least one
/// of `chains` validates to at `now`. A chain that validates to no root of the bundle (its
/// root was removed, another trust domain, expired) adds nothing.
pub fn svid_roots<'a>(
    bundle: &TrustBundle,
    chains: impl IntoIterator<Item = &'a [CertificateDer<'static>]>,
    now: SystemTime,
) -> BTreeSet<String> {
    // One representative per distinct set of signing certificates; a chain without
    // intermediates (a leaf signed by a root) is its own group.
    let mut groups: Vec<&[CertificateDer<'static>]> = Vec::new();
    for chain in chains {
        if chain.is_empty() {
            continue;
        }
        let key = group_key(chain);
        if !groups.iter().any(|g| group_key(g) == key) {
            groups.push(chain);
        }
    }
    let mut found = BTreeSet::new();
    for root in bundle.x509_authorities() {
        let alone = BundleSet::from(TrustBundle::from_x509_authorities(
            bundle.trust_domain().clone(),
            [root.clone()],
        ));
        // The leaves carry both serverAuth and clientAuth; client is what the node SVID is
        // used as.
        let chains_here = groups
            .iter()
            .any(|chain| verify_peer(chain, &alone, now, PeerRole::Client).is_ok());
        if chains_here {
            found.insert(certificate_fingerprint(root));
        }
    }
    found
}

fn group_key<'c>(chain: &'c [CertificateDer<'static>]) -> &'c [CertificateDer<'static>] {
    if chain.len() > 1 { &chain[1..] } else { chain }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use lanyard_svid::ca::RootCa;
    use lanyard_svid::{KeyAlgorithm, KeyAndCsr, SpiffeId, TrustDomain, VerifiedCsr};

    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn root() -> RootCa {
        RootCa::generate(&td(), 10 * DAY, SystemTime::now()).unwrap()
    }

    /// A chain (leaf, intermediate) for `id` under a fresh intermediate of `root`.
    fn chain_under(root: &RootCa, id: &str) -> Vec<CertificateDer<'static>> {
        let now = SystemTime::now();
        let issuer = root.issue_intermediate(DAY, now).unwrap();
        let key = KeyAndCsr::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let csr = VerifiedCsr::from_der(&key.csr_der).unwrap();
        issuer
            .sign_x509_svid(&csr, &SpiffeId::parse(id).unwrap(), DAY, now)
            .unwrap()
            .cert_chain
    }

    fn bundle_of(roots: &[&RootCa]) -> TrustBundle {
        TrustBundle::from_x509_authorities(td(), roots.iter().map(|r| r.cert_der().clone()))
    }

    fn fp(root: &RootCa) -> String {
        certificate_fingerprint(root.cert_der())
    }

    #[test]
    fn reports_every_bundle_root_a_held_chain_leads_to() {
        let (a, b) = (root(), root());
        let node = chain_under(&a, "spiffe://example.org/lanyard/agent/k8s_psat/node-1");
        let web = chain_under(&b, "spiffe://example.org/web");
        let chains = [node.as_slice(), web.as_slice()];
        let both = bundle_of(&[&a, &b]);

        let ack = bundle_ack(&both, chains, SystemTime::now());
        assert_eq!(ack.version, both.version());
        let mut expected = vec![fp(&a), fp(&b)];
        expected.sort();
        assert_eq!(ack.svid_roots, expected);

        // Only the SVIDs under A held: B is in the bundle but nothing chains to it.
        let only_a = svid_roots(&both, [node.as_slice()], SystemTime::now());
        assert_eq!(only_a, BTreeSet::from([fp(&a)]));
    }

    #[test]
    fn a_root_removed_from_the_bundle_is_not_reported() {
        let (a, b) = (root(), root());
        let old = chain_under(&a, "spiffe://example.org/web");
        let new = chain_under(&b, "spiffe://example.org/api");
        let retired = bundle_of(&[&b]);
        let ack = bundle_ack(
            &retired,
            [old.as_slice(), new.as_slice()],
            SystemTime::now(),
        );
        assert_eq!(ack.svid_roots, vec![fp(&b)]);
        assert_eq!(ack.version, retired.version());
        assert!(svid_roots(&retired, [old.as_slice()], SystemTime::now()).is_empty());
    }

    #[test]
    fn chains_sharing_an_intermediate_count_once_and_the_rest_are_ignored() {
        let a = root();
        let now = SystemTime::now();
        let issuer = a.issue_intermediate(DAY, now).unwrap();
        let mint = |id: &str| {
            let key = KeyAndCsr::generate(KeyAlgorithm::EcdsaP256).unwrap();
            let csr = VerifiedCsr::from_der(&key.csr_der).unwrap();
            issuer
                .sign_x509_svid(&csr, &SpiffeId::parse(id).unwrap(), DAY, now)
                .unwrap()
                .cert_chain
        };
        let (one, two) = (
            mint("spiffe://example.org/one"),
            mint("spiffe://example.org/two"),
        );
        let other_domain = {
            let other = TrustDomain::new("other.org").unwrap();
            let root = RootCa::generate(&other, DAY, now).unwrap();
            chain_under(&root, "spiffe://other.org/web")
        };
        let chains = [one.as_slice(), two.as_slice(), &[], other_domain.as_slice()];
        assert_eq!(
            svid_roots(&bundle_of(&[&a]), chains, now),
            BTreeSet::from([fp(&a)])
        );
        // Nothing held yet: no root reported, the version still is.
        let none = bundle_ack(&bundle_of(&[&a]), [], now);
        assert!(none.svid_roots.is_empty());
        assert_eq!(none.version, bundle_of(&[&a]).version());
    }

    #[test]
    fn an_expired_chain_leads_nowhere() {
        let a = root();
        let web = chain_under(&a, "spiffe://example.org/web");
        let later = SystemTime::now() + 2 * DAY;
        assert!(svid_roots(&bundle_of(&[&a]), [web.as_slice()], later).is_empty());
    }
}
