//! Validating a peer's X.509-SVID chain: RFC 5280 path validation (rustls-webpki) against the
//! bundle of the peer's *own* trust domain only, then the X.509-SVID leaf rules.
//!
//! The leaf's ID is read before trust is established, only to pick the bundle; a chain that
//! names trust domain A is never checked against B's roots.

use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, UnixTime};
use webpki::{EndEntityCert, KeyUsage};

use crate::bundle::BundleSet;
use crate::id::{SpiffeId, TrustDomain};
use crate::x509::{self, SvidError};

/// The one crypto provider of every Lanyard binary (ring), built once. Used for TLS configs
/// and for the signature algorithms of path validation, so both accept the same set.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: LazyLock<Arc<CryptoProvider>> =
        LazyLock::new(|| Arc::new(rustls::crypto::ring::default_provider()));
    PROVIDER.clone()
}

/// Which side of a TLS connection the peer is: selects the required ExtendedKeyUsage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRole {
    /// The peer is a TLS client: `clientAuth` (if the leaf has an EKU extension).
    Client,
    /// The peer is a TLS server: `serverAuth` (if the leaf has an EKU extension).
    Server,
}

/// What is wrong with a signing certificate (an intermediate) of the peer's chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignerProblem {
    /// BasicConstraints absent or `cA=false`.
    NotCa,
    /// KeyUsage absent or without `keyCertSign`.
    NoKeyCertSign,
    /// Unparseable (webpki accepted it, x509-parser did not).
    Malformed,
}

/// Why a peer chain is refused. `Display` is the metric label; [`VerifyError::message`] the
/// human explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// The chain's shape or the leaf profile (`bad_san`, `not_a_leaf`, `malformed_cert`, ...).
    Svid(SvidError),
    /// We hold no bundle for the peer's trust domain.
    UnknownTrustDomain(TrustDomain),
    /// The trust domain's bundle has no X.509 authorities (all removed): it trusts nothing.
    NoAuthorities(TrustDomain),
    /// No path to one of the bundle's authorities, or a bad signature.
    UntrustedChain(String),
    /// A certificate of the chain is past its NotAfter.
    Expired,
    /// A certificate of the chain is before its NotBefore.
    NotYetValid,
    /// The leaf's ExtendedKeyUsage does not allow this role.
    WrongExtendedKeyUsage(PeerRole),
    /// An intermediate is not a proper signing certificate.
    BadSigner {
        index: usize,
        problem: SignerProblem,
    },
}

impl VerifyError {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Svid(e) => e.label(),
            Self::UnknownTrustDomain(_) => "unknown_trust_domain",
            Self::NoAuthorities(_) => "no_authorities",
            Self::UntrustedChain(_) => "untrusted_chain",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongExtendedKeyUsage(_) => "wrong_extended_key_usage",
            Self::BadSigner { .. } => "bad_signing_cert",
        }
    }

    /// A human explanation of the refusal.
    pub fn message(&self) -> String {
        match self {
            Self::Svid(e) => e.message(),
            Self::UnknownTrustDomain(td) => {
                format!("no trust bundle for the peer's trust domain {td}")
            }
            Self::NoAuthorities(td) => {
                format!("the trust bundle of {td} has no X.509 authorities; it trusts nothing")
            }
            Self::UntrustedChain(why) => {
                format!("the chain does not lead to an authority of the peer's bundle: {why}")
            }
            Self::Expired => "a certificate of the chain has expired".into(),
            Self::NotYetValid => "a certificate of the chain is not valid yet".into(),
            Self::WrongExtendedKeyUsage(PeerRole::Client) => {
                "the leaf's ExtendedKeyUsage does not allow clientAuth".into()
            }
            Self::WrongExtendedKeyUsage(PeerRole::Server) => {
                "the leaf's ExtendedKeyUsage does not allow serverAuth".into()
            }
            Self::BadSigner { index, problem } => {
                let what = match problem {
                    SignerProblem::NotCa => "is not a CA (cA=false or no BasicConstraints)",
                    SignerProblem::NoKeyCertSign => "lacks KeyUsage keyCertSign",
                    SignerProblem::Malformed => "is malformed",
                };
                format!("signing certificate {index} of the chain {what}")
            }
        }
    }
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl std::error::Error for VerifyError {}

impl From<SvidError> for VerifyError {
    fn from(e: SvidError) -> Self {
        Self::Svid(e)
    }
}

/// Validates a peer's chain (leaf first, then intermediates) at `now` and returns its
/// SPIFFE ID. Authorisation of that ID is the caller's next step.
pub fn verify_peer(
    chain: &[CertificateDer<'_>],
    bundles: &BundleSet,
    now: SystemTime,
    role: PeerRole,
) -> Result<SpiffeId, VerifyError> {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err(SvidError::EmptyChain.into());
    };
    verify_peer_parts(leaf, intermediates, bundles, now, role)
}

/// [`verify_peer`] with the leaf and intermediates apart, as rustls hands them over.
pub fn verify_peer_parts(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    bundles: &BundleSet,
    now: SystemTime,
    role: PeerRole,
) -> Result<SpiffeId, VerifyError> {
    check_bounds(leaf, intermediates)?;

    // Untrusted read, only to choose the bundle.
    let claimed = x509::peek_spiffe_id(leaf)?;
    let trust_domain = claimed.trust_domain();
    let bundle = bundles
        .get(trust_domain)
        .ok_or_else(|| VerifyError::UnknownTrustDomain(trust_domain.clone()))?;
    let anchors: Vec<_> = bundle
        .x509_authorities()
        .iter()
        .filter_map(|cert| match webpki::anchor_from_trusted_cert(cert) {
            Ok(anchor) => Some(anchor),
            Err(e) => {
                tracing::warn!(trust_domain = %trust_domain, error = ?e, "skipping unparseable X.509 authority in bundle");
                None
            }
        })
        .collect();
    if anchors.is_empty() {
        return Err(VerifyError::NoAuthorities(trust_domain.clone()));
    }

    let end_entity =
        EndEntityCert::try_from(leaf).map_err(|e| VerifyError::Svid(malformed(0, &e)))?;
    let usage = match role {
        PeerRole::Client => KeyUsage::client_auth(),
        PeerRole::Server => KeyUsage::server_auth(),
    };
    let path = end_entity
        .verify_for_usage(
            crypto_provider().signature_verification_algorithms.all,
            &anchors,
            intermediates,
            to_unix_time(now),
            usage,
            None,
            None,
        )
        .map_err(|e| map_webpki_error(e, role))?;

    // webpki checks the signers' cA bit but not their KeyUsage; SPIFFE signing certificates
    // must carry keyCertSign.
    for (index, signer) in path.intermediate_certificates().enumerate() {
        check_signer(&signer.der(), index + 1)?;
    }

    let parsed = x509::parse_cert(leaf, 0)?;
    let id = x509::check_leaf(&parsed)?;
    Ok(id)
}

fn check_bounds(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Result<(), SvidError> {
    if intermediates.len() + 1 > x509::MAX_CHAIN_CERTS {
        return Err(SvidError::TooManyCerts {
            count: intermediates.len() + 1,
        });
    }
    let mut total = 0usize;
    for cert in std::iter::once(leaf).chain(intermediates) {
        if cert.len() > x509::MAX_CERT_BYTES {
            return Err(SvidError::TooLarge { bytes: cert.len() });
        }
        total += cert.len();
    }
    if total > x509::MAX_CHAIN_BYTES {
        return Err(SvidError::TooLarge { bytes: total });
    }
    Ok(())
}

fn check_signer(der: &CertificateDer<'_>, index: usize) -> Result<(), VerifyError> {
    let bad = |problem| VerifyError::BadSigner { index, problem };
    let cert = x509::parse_cert(der, index).map_err(|_| bad(SignerProblem::Malformed))?;
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {}
        Ok(_) => return Err(bad(SignerProblem::NotCa)),
        Err(_) => return Err(bad(SignerProblem::Malformed)),
    }
    match cert.key_usage() {
        Ok(Some(ku)) if ku.value.key_cert_sign() => Ok(()),
        Ok(_) => Err(bad(SignerProblem::NoKeyCertSign)),
        Err(_) => Err(bad(SignerProblem::Malformed)),
    }
}

fn malformed(index: usize, e: &webpki::Error) -> SvidError {
    SvidError::Malformed {
        index,
        reason: format!("{e:?}"),
    }
}

#[allow(deprecated)] // RequiredEkuNotFound is deprecated but may still be returned.
fn map_webpki_error(e: webpki::Error, role: PeerRole) -> VerifyError {
    use webpki::Error as E;
    match e {
        E::CertExpired { .. } => VerifyError::Expired,
        E::CertNotValidYet { .. } => VerifyError::NotYetValid,
        E::CaUsedAsEndEntity => VerifyError::Svid(SvidError::NotALeaf(x509::LeafProblem::IsCa)),
        // webpki does not say which signer; the first intermediate is the usual culprit.
        E::EndEntityUsedAsCa => VerifyError::BadSigner {
            index: 1,
            problem: SignerProblem::NotCa,
        },
        E::RequiredEkuNotFound | E::RequiredEkuNotFoundContext(_) | E::EmptyEkuExtension => {
            VerifyError::WrongExtendedKeyUsage(role)
        }
        E::BadDer | E::BadDerTime | E::TrailingData(_) | E::UnsupportedCertVersion => {
            VerifyError::Svid(malformed(0, &e))
        }
        other => VerifyError::UntrustedChain(format!("{other:?}")),
    }
}

/// `SystemTime` to webpki's time (clamped at the epoch).
pub(crate) fn to_unix_time(now: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or_default())
}

/// webpki's time back to `SystemTime`.
pub(crate) fn from_unix_time(now: UnixTime) -> SystemTime {
    UNIX_EPOCH + std::time::Duration::from_secs(now.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::TrustBundle;
    use crate::test_support::{LeafSpec, SignerSpec, TestCa};
    use rcgen::{ExtendedKeyUsagePurpose, KeyUsagePurpose};
    use std::time::Duration;

    const WEB: &str = "spiffe://example.org/web";

    fn verify(
        chain: &[CertificateDer<'static>],
        bundles: &BundleSet,
        role: PeerRole,
    ) -> Result<SpiffeId, VerifyError> {
        verify_peer(chain, bundles, SystemTime::now(), role)
    }

    #[test]
    fn accepts_a_valid_chain_for_both_roles() {
        let ca = TestCa::new("example.org");
        let svid = ca.svid(WEB);
        for role in [PeerRole::Client, PeerRole::Server] {
            let id = verify(svid.chain(), &ca.bundle_set(), role).unwrap();
            assert_eq!(id.to_string(), WEB);
        }
        // Leaf signed by the root directly: no intermediates.
        let (chain, _) = ca.issue(&LeafSpec::new(WEB).signed_by_root());
        assert_eq!(chain.len(), 1);
        verify(&chain, &ca.bundle_set(), PeerRole::Client).unwrap();
    }

    #[test]
    fn refuses_a_trust_domain_without_bundle() {
        let ca = TestCa::new("example.org");
        let other = TestCa::new("other.org");
        let svid = other.svid("spiffe://other.org/web");
        let err = verify(svid.chain(), &ca.bundle_set(), PeerRole::Client).unwrap_err();
        assert_eq!(
            err,
            VerifyError::UnknownTrustDomain(TrustDomain::new("other.org").unwrap())
        );
        assert_eq!(err.to_string(), "unknown_trust_domain");
    }

    #[test]
    fn validates_against_the_peers_own_domain_only() {
        // A chain from other.org's CA that *claims* an example.org ID must not be checked
        // against other.org's roots (which we also trust).
        let ours = TestCa::new("example.org");
        let theirs = TestCa::new("other.org");
        let mut bundles = ours.bundle_set();
        bundles.insert(theirs.bundle());
        let (forged, _) = theirs.issue(&LeafSpec::new(WEB));
        let err = verify(&forged, &bundles, PeerRole::Client).unwrap_err();
        assert_eq!(err.label(), "untrusted_chain", "{err:?}");
        // Their genuine IDs pass against their bundle.
        let theirs_ok = theirs.svid("spiffe://other.org/api");
        verify(theirs_ok.chain(), &bundles, PeerRole::Client).unwrap();
    }

    #[test]
    fn refuses_another_root_of_the_same_domain() {
        let trusted = TestCa::new("example.org");
        let rogue = TestCa::new("example.org");
        let svid = rogue.svid(WEB);
        let err = verify(svid.chain(), &trusted.bundle_set(), PeerRole::Server).unwrap_err();
        // Same subject names, so webpki finds the wrong key: a bad signature, not trusted.
        assert_eq!(err.label(), "untrusted_chain", "{err:?}");
    }

    #[test]
    fn an_empty_bundle_trusts_nothing() {
        let ca = TestCa::new("example.org");
        let svid = ca.svid(WEB);
        let empty = BundleSet::from(TrustBundle::new(ca.trust_domain().clone()));
        assert_eq!(
            verify(svid.chain(), &empty, PeerRole::Client).unwrap_err(),
            VerifyError::NoAuthorities(ca.trust_domain().clone())
        );
    }

    #[test]
    fn any_root_of_the_bundle_anchors() {
        let old = TestCa::new("example.org");
        let new = TestCa::new("example.org");
        let mut bundle = old.bundle();
        bundle.add_x509_authority(new.root().clone());
        let bundles = BundleSet::from(bundle);
        verify(old.svid(WEB).chain(), &bundles, PeerRole::Client).unwrap();
        verify(new.svid(WEB).chain(), &bundles, PeerRole::Client).unwrap();
    }

    #[test]
    fn refuses_expired_and_not_yet_valid() {
        let ca = TestCa::new("example.org");
        let (expired, _) = ca.issue(&LeafSpec::new(WEB).expired());
        assert_eq!(
            verify(&expired, &ca.bundle_set(), PeerRole::Client).unwrap_err(),
            VerifyError::Expired
        );
        let (future, _) = ca.issue(&LeafSpec::new(WEB).not_yet_valid());
        assert_eq!(
            verify(&future, &ca.bundle_set(), PeerRole::Client).unwrap_err(),
            VerifyError::NotYetValid
        );
        // The same valid chain is expired when checked two days later (root lives a day).
        let svid = ca.svid(WEB);
        let later = SystemTime::now() + Duration::from_secs(2 * 86_400);
        assert_eq!(
            verify_peer(svid.chain(), &ca.bundle_set(), later, PeerRole::Client).unwrap_err(),
            VerifyError::Expired
        );
    }

    #[test]
    fn refuses_leaf_rule_violations_after_path_validation() {
        let ca = TestCa::new("example.org");
        let good = LeafSpec::new(WEB);
        let cases: Vec<(LeafSpec, &str)> = vec![
            (good.clone().ca(true), "not_a_leaf"),
            (good.clone().no_basic_constraints(), "not_a_leaf"),
            (
                good.clone().key_usages(&[
                    KeyUsagePurpose::DigitalSignature,
                    KeyUsagePurpose::KeyCertSign,
                ]),
                "not_a_leaf",
            ),
            (
                good.clone()
                    .key_usages(&[KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign]),
                "not_a_leaf",
            ),
            (good.clone().key_usages(&[]), "bad_key_usage"),
            (
                good.clone().uris(&[WEB, "spiffe://example.org/other"]),
                "bad_san",
            ),
            (good.clone().uris(&[]), "bad_san"),
            (good.clone().uris(&["http://example.org/web"]), "bad_san"),
            (good.clone().uris(&["spiffe://example.org"]), "bad_san"),
            (good.clone().uris(&["spiffe://example.org//web"]), "bad_san"),
        ];
        for (spec, label) in cases {
            let (chain, _) = ca.issue(&spec);
            let err = verify(&chain, &ca.bundle_set(), PeerRole::Client).unwrap_err();
            assert_eq!(err.label(), label, "{spec:?}: {err:?}");
        }
    }

    #[test]
    fn extended_key_usage_follows_the_role() {
        let ca = TestCa::new("example.org");
        let (server_only, _) = ca
            .issue(&LeafSpec::new(WEB).extended_key_usages(&[ExtendedKeyUsagePurpose::ServerAuth]));
        verify(&server_only, &ca.bundle_set(), PeerRole::Server).unwrap();
        assert_eq!(
            verify(&server_only, &ca.bundle_set(), PeerRole::Client).unwrap_err(),
            VerifyError::WrongExtendedKeyUsage(PeerRole::Client)
        );
        let (client_only, _) = ca
            .issue(&LeafSpec::new(WEB).extended_key_usages(&[ExtendedKeyUsagePurpose::ClientAuth]));
        verify(&client_only, &ca.bundle_set(), PeerRole::Client).unwrap();
        assert_eq!(
            verify(&client_only, &ca.bundle_set(), PeerRole::Server).unwrap_err(),
            VerifyError::WrongExtendedKeyUsage(PeerRole::Server)
        );
        // No EKU extension at all: any use (RFC 5280).
        let (no_eku, _) = ca.issue(&LeafSpec::new(WEB).extended_key_usages(&[]));
        verify(&no_eku, &ca.bundle_set(), PeerRole::Client).unwrap();
    }

    #[test]
    fn refuses_bad_signing_certificates() {
        let not_ca = TestCa::with_signer(
            "example.org",
            SignerSpec {
                ca: false,
                key_usages: vec![KeyUsagePurpose::KeyCertSign],
            },
        );
        let err = verify(
            not_ca.svid(WEB).chain(),
            &not_ca.bundle_set(),
            PeerRole::Client,
        )
        .unwrap_err();
        assert_eq!(
            err,
            VerifyError::BadSigner {
                index: 1,
                problem: SignerProblem::NotCa
            }
        );
        let no_cert_sign = TestCa::with_signer(
            "example.org",
            SignerSpec {
                ca: true,
                key_usages: vec![KeyUsagePurpose::DigitalSignature],
            },
        );
        let err = verify(
            no_cert_sign.svid(WEB).chain(),
            &no_cert_sign.bundle_set(),
            PeerRole::Client,
        )
        .unwrap_err();
        assert_eq!(
            err,
            VerifyError::BadSigner {
                index: 1,
                problem: SignerProblem::NoKeyCertSign
            }
        );
        assert_eq!(err.to_string(), "bad_signing_cert");
    }

    #[test]
    fn refuses_a_chain_missing_its_intermediate_and_a_tampered_leaf() {
        let ca = TestCa::new("example.org");
        let svid = ca.svid(WEB);
        let err = verify(&svid.chain()[..1], &ca.bundle_set(), PeerRole::Client).unwrap_err();
        assert_eq!(err.label(), "untrusted_chain");

        // Flip a bit in the signature (the last byte of the DER).
        let mut leaf = svid.leaf().to_vec();
        *leaf.last_mut().unwrap() ^= 1;
        let chain = vec![CertificateDer::from(leaf), svid.chain()[1].clone()];
        let err = verify(&chain, &ca.bundle_set(), PeerRole::Client).unwrap_err();
        assert_eq!(err.label(), "untrusted_chain", "{err:?}");
    }

    #[test]
    fn bounds_the_presented_chain() {
        let ca = TestCa::new("example.org");
        let svid = ca.svid(WEB);
        let mut chain = svid.chain().to_vec();
        while chain.len() <= x509::MAX_CHAIN_CERTS {
            chain.push(svid.chain()[1].clone());
        }
        assert_eq!(
            verify(&chain, &ca.bundle_set(), PeerRole::Client)
                .unwrap_err()
                .label(),
            "chain_too_long"
        );
        assert_eq!(
            verify(&[], &ca.bundle_set(), PeerRole::Client).unwrap_err(),
            VerifyError::Svid(SvidError::EmptyChain)
        );
    }
}
