//! The federated bundles on the server's bundle feed (`WatchBundleResponse.federated_bundles`):
//! the bundles of foreign trust domains the server fetched from their bundle endpoints.
//!
//! Every message carries the whole federated set, so each one replaces the previous set (a
//! domain absent from it is dropped). They go only where the Workload API serves them from
//! ([`CertificateManager::set_federated_bundles`](crate::manager::CertificateManager::set_federated_bundles)),
//! to workloads whose identities federate with them; never into the TLS store the server
//! connection is verified with, nor the `--trust-bundle` logic ([`super::bundle_file`]): a
//! foreign domain must never be able to vouch for our server. Acknowledgements stay about our
//! own bundle.
//!
//! Checked one by one, each refusal logged and the rest kept: a bundle that does not convert
//! (or whose X.509 authorities do not parse),
//! one for our own trust domain (ours comes from `bundle`, not from here), a second one for the
//! same domain; and at most [`MAX_FEDERATED_DOMAINS`] domains (the rest ignored, said once per
//! message).

use std::collections::BTreeMap;

use lanyard_proto::identity::v1 as wire;
use lanyard_svid::bundle::certificates_from_der;
use lanyard_svid::{BundleSet, TrustBundle, TrustDomain};

/// Most federated trust domains taken from one message; the rest are ignored.
pub const MAX_FEDERATED_DOMAINS: usize = 256;

/// Why a federated bundle from the server was not taken. `Display` is its log label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FederatedSkip {
    /// It does not convert (bad trust domain, certificate or key).
    #[error("unusable")]
    Unusable(String),
    /// It claims our own trust domain: ours only ever comes from the feed's `bundle`.
    #[error("own_trust_domain")]
    OwnTrustDomain,
    /// A second bundle for a domain already in the message (the first is kept).
    #[error("duplicate_domain")]
    Duplicate,
    /// Beyond [`MAX_FEDERATED_DOMAINS`].
    #[error("over_limit")]
    OverLimit,
}

/// The federated set a message carries, and what was skipped (trust domain as sent, why).
#[derive(Debug, Default)]
pub struct FederatedSet {
    pub bundles: BundleSet,
    pub skipped: Vec<(String, FederatedSkip)>,
}

/// Checks `sent` (a message's `federated_bundles`) for an agent of `own`.
pub fn federated_set(own: &TrustDomain, sent: &[wire::Bundle]) -> FederatedSet {
    let mut kept: BTreeMap<TrustDomain, TrustBundle> = BTreeMap::new();
    let mut skipped = Vec::new();
    for (index, wire) in sent.iter().enumerate() {
        if index >= MAX_FEDERATED_DOMAINS {
            skipped.push((
                format!("{} more", sent.len() - index),
                FederatedSkip::OverLimit,
            ));
            break;
        }
        let bundle = match checked(wire) {
            Ok(bundle) => bundle,
            Err(e) => {
                skipped.push((wire.trust_domain.clone(), FederatedSkip::Unusable(e)));
                continue;
            }
        };
        let why = if bundle.trust_domain() == own {
            Some(FederatedSkip::OwnTrustDomain)
        } else if kept.contains_key(bundle.trust_domain()) {
            Some(FederatedSkip::Duplicate)
        } else {
            None
        };
        match why {
            Some(why) => skipped.push((bundle.trust_domain().to_string(), why)),
            None => {
                kept.insert(bundle.trust_domain().clone(), bundle);
            }
        }
    }
    let mut bundles = BundleSet::new();
    for bundle in kept.into_values() {
        bundles.insert(bundle);
    }
    FederatedSet { bundles, skipped }
}

/// `wire` as a bundle whose X.509 authorities all parse (bounded in number).
fn checked(wire: &wire::Bundle) -> Result<TrustBundle, String> {
    let bundle = TrustBundle::try_from(wire).map_err(|e| e.to_string())?;
    let der = bundle.x509_authorities_der();
    if !der.is_empty() {
        certificates_from_der(&der).map_err(|e| e.to_string())?;
    }
    Ok(bundle)
}

/// Where the bundle feed puts the federated bundles of each message.
pub struct FederatedFeed {
    own: TrustDomain,
    install: Box<dyn Fn(BundleSet) + Send + Sync>,
}

impl FederatedFeed {
    /// For an agent of `own`; `install` replaces the federated set the Workload API serves.
    pub fn new(own: TrustDomain, install: impl Fn(BundleSet) + Send + Sync + 'static) -> Self {
        Self {
            own,
            install: Box::new(install),
        }
    }

    /// Checks a message's federated bundles, logs what is skipped, installs the rest.
    pub fn apply(&self, sent: &[wire::Bundle]) {
        let set = federated_set(&self.own, sent);
        for (trust_domain, why) in &set.skipped {
            match why {
                FederatedSkip::Unusable(detail) => tracing::warn!(
                    %trust_domain, reason = %why,
                    "ignoring a federated bundle from the server: {detail}"
                ),
                FederatedSkip::OwnTrustDomain => tracing::warn!(
                    %trust_domain, reason = %why,
                    "ignoring a federated bundle for our own trust domain (ours comes only from the server's own bundle)"
                ),
                FederatedSkip::Duplicate => tracing::warn!(
                    %trust_domain, reason = %why,
                    "ignoring a second federated bundle for the same trust domain"
                ),
                FederatedSkip::OverLimit => tracing::warn!(
                    ignored = %trust_domain, reason = %why,
                    "more federated trust domains than the agent keeps ({MAX_FEDERATED_DOMAINS}); the rest are ignored"
                ),
            }
        }
        (self.install)(set.bundles);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, SystemTime};

    use lanyard_svid::ca::RootCa;

    use super::*;

    fn td(name: &str) -> TrustDomain {
        TrustDomain::new(name).unwrap()
    }

    fn wire_bundle(name: &str) -> wire::Bundle {
        let root =
            RootCa::generate(&td(name), Duration::from_secs(3600), SystemTime::now()).unwrap();
        let bundle = TrustBundle::from_x509_authorities(td(name), [root.cert_der().clone()]);
        wire::Bundle::from(&bundle)
    }

    fn domains(set: &BundleSet) -> Vec<String> {
        set.iter().map(|b| b.trust_domain().to_string()).collect()
    }

    #[test]
    fn own_domain_duplicates_and_garbage_are_skipped_the_rest_kept() {
        let own = td("example.org");
        let b = wire_bundle("b.test");
        let mut garbage = wire_bundle("c.test");
        garbage.x509_authorities = vec![b"not a certificate".to_vec()];
        let mut second_b = wire_bundle("b.test");
        second_b.sequence = 9;
        let sent = vec![
            wire_bundle("example.org"),
            b.clone(),
            garbage,
            second_b,
            wire_bundle("a.test"),
        ];
        let set = federated_set(&own, &sent);
        assert_eq!(domains(&set.bundles), ["a.test", "b.test"]);
        assert_eq!(
            set.bundles.get(&td("b.test")),
            Some(&TrustBundle::try_from(&b).unwrap()),
            "the first of two is kept"
        );
        let labels: Vec<_> = set
            .skipped
            .iter()
            .map(|(d, why)| format!("{d}:{why}"))
            .collect();
        assert_eq!(
            labels,
            [
                "example.org:own_trust_domain",
                "c.test:unusable",
                "b.test:duplicate_domain"
            ]
        );
    }

    #[test]
    fn at_most_the_bound_is_kept() {
        let one = wire_bundle("x.test");
        let sent: Vec<wire::Bundle> = (0..MAX_FEDERATED_DOMAINS + 3)
            .map(|i| wire::Bundle {
                trust_domain: format!("d{i}.test"),
                ..one.clone()
            })
            .collect();
        let set = federated_set(&td("example.org"), &sent);
        assert_eq!(set.bundles.iter().count(), MAX_FEDERATED_DOMAINS);
        assert_eq!(set.skipped.len(), 1);
        assert_eq!(set.skipped[0].1, FederatedSkip::OverLimit);
        assert_eq!(set.skipped[0].0, "3 more");
    }

    #[test]
    fn every_message_replaces_the_set() {
        let installed = Arc::new(Mutex::new(Vec::new()));
        let feed = FederatedFeed::new(td("example.org"), {
            let installed = installed.clone();
            move |set: BundleSet| installed.lock().unwrap().push(domains(&set))
        });
        feed.apply(&[wire_bundle("a.test"), wire_bundle("b.test")]);
        feed.apply(&[wire_bundle("b.test")]);
        feed.apply(&[]);
        assert_eq!(
            *installed.lock().unwrap(),
            vec![vec!["a.test", "b.test"], vec!["b.test"], vec![]]
        );
    }
}
