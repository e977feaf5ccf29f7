//! X.509-SVIDs: a certificate chain (leaf first) whose leaf follows the SPIFFE X.509-SVID
//! profile, plus the private key when the SVID is our own.
//!
//! This module checks the *shape* of a leaf (one `spiffe://` URI SAN with a path, `cA=false`,
//! KeyUsage with `digitalSignature` and without `keyCertSign`/`cRLSign`). Whether a chain is
//! *trusted* is [`crate::verify`]'s job; [`peek_spiffe_id`] reads an ID without trusting it,
//! only so the verifier can pick the bundle of the right trust domain.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;
use zeroize::Zeroizing;

use crate::id::{IdError, SpiffeId};

/// Most certificates in one chain (leaf + intermediates). Our own chains have two.
pub const MAX_CHAIN_CERTS: usize = 8;
/// Largest single certificate we parse, in DER bytes.
pub const MAX_CERT_BYTES: usize = 16 * 1024;
/// Largest chain we accept, in DER bytes summed over its certificates.
pub const MAX_CHAIN_BYTES: usize = 64 * 1024;
/// Largest private key (PKCS#8 DER) we accept.
pub const MAX_KEY_BYTES: usize = 8 * 1024;

/// What is wrong with the SAN of a leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SanProblem {
    /// No SubjectAlternativeName extension, or one without a URI.
    NoUri,
    /// More than one URI SAN: the SPIFFE ID would be ambiguous.
    MultipleUris,
    /// The URI is not a `spiffe://` URI.
    NotSpiffe,
    /// The URI is `spiffe://...` but not a valid SPIFFE ID.
    InvalidId(IdError),
    /// The ID is a trust domain ID (no path), which only signing certificates may carry.
    NoPath,
}

/// Why a leaf is not an end-entity certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafProblem {
    /// No BasicConstraints extension (the Rust `spiffe` client refuses these, so do we).
    MissingBasicConstraints,
    /// BasicConstraints `cA=true`.
    IsCa,
    /// KeyUsage `keyCertSign`.
    KeyCertSign,
    /// KeyUsage `cRLSign`.
    CrlSign,
}

/// Why a certificate chain or key is not a usable X.509-SVID.
///
/// `Display` is a short snake_case label (for metrics and logs); [`SvidError::message`] is
/// the human explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SvidError {
    EmptyChain,
    TooManyCerts {
        count: usize,
    },
    TooLarge {
        bytes: usize,
    },
    /// Certificate `index` (0 = leaf) is not parseable DER X.509.
    Malformed {
        index: usize,
        reason: String,
    },
    BadSan(SanProblem),
    NotALeaf(LeafProblem),
    /// KeyUsage missing, or without `digitalSignature`.
    BadKeyUsage,
    /// The private key is not a PKCS#8 key the ring provider can use.
    BadPrivateKey,
    /// The private key does not belong to the leaf's public key.
    KeyMismatch,
}

impl SvidError {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::EmptyChain => "empty_chain",
            Self::TooManyCerts { .. } => "chain_too_long",
            Self::TooLarge { .. } => "chain_too_large",
            Self::Malformed { .. } => "malformed_cert",
            Self::BadSan(_) => "bad_san",
            Self::NotALeaf(_) => "not_a_leaf",
            Self::BadKeyUsage => "bad_key_usage",
            Self::BadPrivateKey => "bad_private_key",
            Self::KeyMismatch => "key_mismatch",
        }
    }

    /// A human explanation of the refusal.
    pub fn message(&self) -> String {
        match self {
            Self::EmptyChain => "the certificate chain is empty".into(),
            Self::TooManyCerts { count } => {
                format!("the chain has {count} certificates; at most {MAX_CHAIN_CERTS} are accepted")
            }
            Self::TooLarge { bytes } => format!(
                "the chain or a certificate is too large ({bytes} bytes; limits {MAX_CERT_BYTES} per certificate, {MAX_CHAIN_BYTES} per chain)"
            ),
            Self::Malformed { index, reason } => {
                format!("certificate {index} of the chain is not valid X.509 DER: {reason}")
            }
            Self::BadSan(SanProblem::NoUri) => "the leaf has no URI SAN (the SPIFFE ID)".into(),
            Self::BadSan(SanProblem::MultipleUris) => {
                "the leaf has more than one URI SAN; an X.509-SVID has exactly one".into()
            }
            Self::BadSan(SanProblem::NotSpiffe) => {
                "the leaf's URI SAN is not a spiffe:// URI".into()
            }
            Self::BadSan(SanProblem::InvalidId(e)) => {
                format!("the leaf's URI SAN is not a valid SPIFFE ID: {e}")
            }
            Self::BadSan(SanProblem::NoPath) => {
                "the leaf's SPIFFE ID has no path; only signing certificates carry a trust domain ID"
                    .into()
            }
            Self::NotALeaf(LeafProblem::MissingBasicConstraints) => {
                "the leaf has no BasicConstraints extension; it must state cA=false".into()
            }
            Self::NotALeaf(LeafProblem::IsCa) => "the leaf is a CA certificate (cA=true)".into(),
            Self::NotALeaf(LeafProblem::KeyCertSign) => {
                "the leaf's KeyUsage allows keyCertSign".into()
            }
            Self::NotALeaf(LeafProblem::CrlSign) => "the leaf's KeyUsage allows cRLSign".into(),
            Self::BadKeyUsage => {
                "the leaf's KeyUsage is missing or lacks digitalSignature".into()
            }
            Self::BadPrivateKey => {
                "the private key is not a PKCS#8 key of a supported type (ECDSA, Ed25519, RSA)"
                    .into()
            }
            Self::KeyMismatch => "the private key does not match the leaf certificate".into(),
        }
    }
}

impl fmt::Display for SvidError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl std::error::Error for SvidError {}

/// An X.509-SVID: the chain (leaf first, then intermediates, never the root) and, for our own
/// SVID, its private key.
#[derive(Clone)]
pub struct X509Svid {
    chain: Vec<CertificateDer<'static>>,
    /// PKCS#8 DER, wiped on drop; never printed.
    private_key: Option<Zeroizing<Vec<u8>>>,
    spiffe_id: SpiffeId,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl X509Svid {
    /// Checks `chain` (leaf first) against the X.509-SVID leaf profile and, when given, that
    /// `private_key` (PKCS#8 DER) belongs to the leaf. This does *not* establish trust: see
    /// [`crate::verify::verify_peer`].
    pub fn parse(
        chain: Vec<CertificateDer<'static>>,
        private_key: Option<Zeroizing<Vec<u8>>>,
    ) -> Result<Self, SvidError> {
        check_chain_bounds(&chain)?;
        for (index, cert) in chain.iter().enumerate().skip(1) {
            parse_cert(cert, index)?;
        }
        let leaf = parse_cert(&chain[0], 0)?;
        let spiffe_id = check_leaf(&leaf)?;
        let not_before = to_system_time(leaf.validity().not_before.timestamp());
        let not_after = to_system_time(leaf.validity().not_after.timestamp());
        if let Some(key) = &private_key {
            check_key_matches(key, leaf.public_key().raw)?;
        }
        Ok(Self {
            chain,
            private_key,
            spiffe_id,
            not_before,
            not_after,
        })
    }

    /// Parses the Workload API encoding: DER certificates concatenated, leaf first.
    pub fn from_concat_der(
        certs: &[u8],
        private_key: Option<Zeroizing<Vec<u8>>>,
    ) -> Result<Self, SvidError> {
        Self::parse(split_concat_der(certs)?, private_key)
    }

    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    /// The leaf's NotBefore.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// The leaf's NotAfter.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    /// Leaf first, then intermediates.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The chain's certificates concatenated (the Workload API's `x509_svid` field).
    pub fn concat_der(&self) -> Vec<u8> {
        crate::der::concat_certificates(&self.chain)
    }

    /// The private key as PKCS#8 DER, if this is our own SVID.
    pub fn private_key_pkcs8(&self) -> Option<&[u8]> {
        self.private_key.as_ref().map(|k| k.as_slice())
    }

    /// The private key borrowed as a rustls type (no copy is made).
    pub fn private_key_der(&self) -> Option<PrivateKeyDer<'_>> {
        self.private_key_pkcs8()
            .map(|k| PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(k)))
    }

    /// The same SVID without its private key (e.g. to hand out as a peer's view).
    pub fn without_private_key(&self) -> Self {
        Self {
            private_key: None,
            ..self.clone()
        }
    }
}

impl fmt::Debug for X509Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X509Svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("chain_len", &self.chain.len())
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field(
                "private_key",
                &self.private_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Reads the SPIFFE ID out of a leaf certificate *without trusting it*: only the SAN rules
/// are applied. Use it to choose the bundle to validate against, or to name an already
/// verified peer.
pub fn peek_spiffe_id(leaf: &CertificateDer<'_>) -> Result<SpiffeId, SvidError> {
    let cert = parse_cert(leaf, 0)?;
    spiffe_id_from_san(&cert)
}

/// Splits concatenated DER certificates (the Workload API encoding) into a chain bounded by
/// [`MAX_CHAIN_CERTS`] and [`MAX_CHAIN_BYTES`]; each element is then parsed as X.509.
pub fn split_concat_der(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, SvidError> {
    if bytes.len() > MAX_CHAIN_BYTES {
        return Err(SvidError::TooLarge { bytes: bytes.len() });
    }
    let certs = crate::der::split_certificates(bytes).map_err(|e| SvidError::Malformed {
        index: 0,
        reason: e.to_string(),
    })?;
    check_chain_bounds(&certs)?;
    for (index, cert) in certs.iter().enumerate() {
        parse_cert(cert, index)?;
    }
    Ok(certs)
}

/// Count and size limits on a chain, checked before any parsing.
pub(crate) fn check_chain_bounds(chain: &[CertificateDer<'_>]) -> Result<(), SvidError> {
    if chain.is_empty() {
        return Err(SvidError::EmptyChain);
    }
    if chain.len() > MAX_CHAIN_CERTS {
        return Err(SvidError::TooManyCerts { count: chain.len() });
    }
    let mut total = 0usize;
    for cert in chain {
        if cert.len() > MAX_CERT_BYTES {
            return Err(SvidError::TooLarge { bytes: cert.len() });
        }
        total += cert.len();
    }
    if total > MAX_CHAIN_BYTES {
        return Err(SvidError::TooLarge { bytes: total });
    }
    Ok(())
}

/// Parses one DER certificate, refusing trailing bytes and oversized input.
pub(crate) fn parse_cert<'a>(
    der: &'a CertificateDer<'_>,
    index: usize,
) -> Result<X509Certificate<'a>, SvidError> {
    if der.len() > MAX_CERT_BYTES {
        return Err(SvidError::TooLarge { bytes: der.len() });
    }
    match X509Certificate::from_der(der.as_ref()) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(SvidError::Malformed {
            index,
            reason: "trailing bytes after the certificate".into(),
        }),
        Err(e) => Err(SvidError::Malformed {
            index,
            reason: e.to_string(),
        }),
    }
}

/// The X.509-SVID leaf rules; returns the leaf's SPIFFE ID.
pub(crate) fn check_leaf(cert: &X509Certificate<'_>) -> Result<SpiffeId, SvidError> {
    let malformed = |e: x509_parser::error::X509Error| SvidError::Malformed {
        index: 0,
        reason: e.to_string(),
    };
    match cert.basic_constraints().map_err(malformed)? {
        None => return Err(SvidError::NotALeaf(LeafProblem::MissingBasicConstraints)),
        Some(bc) if bc.value.ca => return Err(SvidError::NotALeaf(LeafProblem::IsCa)),
        Some(_) => {}
    }
    let Some(usage) = cert.key_usage().map_err(malformed)? else {
        return Err(SvidError::BadKeyUsage);
    };
    if usage.value.key_cert_sign() {
        return Err(SvidError::NotALeaf(LeafProblem::KeyCertSign));
    }
    if usage.value.crl_sign() {
        return Err(SvidError::NotALeaf(LeafProblem::CrlSign));
    }
    if !usage.value.digital_signature() {
        return Err(SvidError::BadKeyUsage);
    }
    spiffe_id_from_san(cert)
}

/// Exactly one URI SAN, a `spiffe://` ID with a non-empty path. DNS SANs are allowed.
fn spiffe_id_from_san(cert: &X509Certificate<'_>) -> Result<SpiffeId, SvidError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| SvidError::Malformed {
            index: 0,
            reason: e.to_string(),
        })?
        .ok_or(SvidError::BadSan(SanProblem::NoUri))?;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(uri) => Some(*uri),
        _ => None,
    });
    let uri = uris.next().ok_or(SvidError::BadSan(SanProblem::NoUri))?;
    if uris.next().is_some() {
        return Err(SvidError::BadSan(SanProblem::MultipleUris));
    }
    let id = SpiffeId::parse(uri).map_err(|e| match e {
        IdError::WrongScheme => SvidError::BadSan(SanProblem::NotSpiffe),
        e => SvidError::BadSan(SanProblem::InvalidId(e)),
    })?;
    if id.is_trust_domain_id() {
        return Err(SvidError::BadSan(SanProblem::NoPath));
    }
    Ok(id)
}

/// Loads the key with the ring provider and compares its public half with the leaf's SPKI.
fn check_key_matches(pkcs8: &[u8], leaf_spki: &[u8]) -> Result<(), SvidError> {
    if pkcs8.len() > MAX_KEY_BYTES {
        return Err(SvidError::BadPrivateKey);
    }
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8));
    let key = rustls::crypto::ring::sign::any_supported_type(&der)
        .map_err(|_| SvidError::BadPrivateKey)?;
    // Every ring key type can name its public key; one that cannot is not one we issue.
    let spki = key.public_key().ok_or(SvidError::BadPrivateKey)?;
    if spki.as_ref() == leaf_spki {
        Ok(())
    } else {
        Err(SvidError::KeyMismatch)
    }
}

pub(crate) fn to_system_time(unix_seconds: i64) -> SystemTime {
    if unix_seconds >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix_seconds as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(unix_seconds.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{LeafSpec, TestCa};
    use rcgen::KeyUsagePurpose;

    fn ca() -> TestCa {
        TestCa::new("example.org")
    }

    #[test]
    fn parses_a_good_svid_with_its_key() {
        let ca = ca();
        let (chain, key) = ca.issue(&LeafSpec::new("spiffe://example.org/web"));
        let svid = X509Svid::parse(chain.clone(), Some(key)).unwrap();
        assert_eq!(svid.spiffe_id().to_string(), "spiffe://example.org/web");
        assert_eq!(svid.chain().len(), 2);
        assert_eq!(svid.leaf(), &chain[0]);
        assert!(svid.not_before() < svid.not_after());
        assert!(svid.private_key_pkcs8().is_some());
        let debug = format!("{svid:?}");
        assert!(debug.contains("<redacted>"), "{debug}");
        assert!(svid.without_private_key().private_key_pkcs8().is_none());
    }

    #[test]
    fn concat_der_round_trips() {
        let ca = ca();
        let svid = ca.svid("spiffe://example.org/web");
        let bytes = svid.concat_der();
        assert_eq!(
            bytes.len(),
            svid.chain().iter().map(|c| c.len()).sum::<usize>()
        );
        let again = X509Svid::from_concat_der(&bytes, None).unwrap();
        assert_eq!(again.chain(), svid.chain());
        assert_eq!(again.spiffe_id(), svid.spiffe_id());
    }

    #[test]
    fn split_concat_der_refuses_garbage_and_bounds() {
        assert_eq!(split_concat_der(&[]), Err(SvidError::EmptyChain));
        assert!(matches!(
            split_concat_der(&[0x30, 0x03, 0x01]),
            Err(SvidError::Malformed { index: 0, .. })
        ));
        let ca = ca();
        let leaf = ca.svid("spiffe://example.org/web").leaf().to_vec();
        let mut many = Vec::new();
        for _ in 0..=MAX_CHAIN_CERTS {
            many.extend_from_slice(&leaf);
        }
        assert!(matches!(
            split_concat_der(&many),
            Err(SvidError::TooManyCerts { .. })
        ));
        let mut trailing = leaf.clone();
        trailing.push(0);
        assert!(matches!(
            split_concat_der(&trailing),
            Err(SvidError::Malformed { .. })
        ));
        // A DER SEQUENCE that is not a certificate.
        assert!(matches!(
            split_concat_der(&[0x30, 0x03, 0x02, 0x01, 0x00]),
            Err(SvidError::Malformed { index: 0, .. })
        ));
    }

    #[test]
    fn bounds_the_chain() {
        assert_eq!(
            X509Svid::parse(vec![], None).unwrap_err(),
            SvidError::EmptyChain
        );
        let ca = ca();
        let leaf = ca.svid("spiffe://example.org/web").leaf().clone();
        let long = vec![leaf; MAX_CHAIN_CERTS + 1];
        assert_eq!(
            X509Svid::parse(long, None).unwrap_err().label(),
            "chain_too_long"
        );
        let huge = CertificateDer::from(vec![0u8; MAX_CERT_BYTES + 1]);
        assert_eq!(
            X509Svid::parse(vec![huge], None).unwrap_err().label(),
            "chain_too_large"
        );
        let trailing = {
            let mut v = ca.svid("spiffe://example.org/web").leaf().to_vec();
            v.push(0);
            CertificateDer::from(v)
        };
        assert_eq!(
            X509Svid::parse(vec![trailing], None).unwrap_err().label(),
            "malformed_cert"
        );
    }

    #[test]
    fn refuses_leaf_profile_violations() {
        let ca = ca();
        let good = LeafSpec::new("spiffe://example.org/web");
        let cases: Vec<(LeafSpec, SvidError)> = vec![
            (
                good.clone()
                    .uris(&["spiffe://example.org/a", "spiffe://example.org/b"]),
                SvidError::BadSan(SanProblem::MultipleUris),
            ),
            (good.clone().uris(&[]), SvidError::BadSan(SanProblem::NoUri)),
            (
                good.clone().uris(&[]).dns(&["web.example.org"]),
                SvidError::BadSan(SanProblem::NoUri),
            ),
            (
                good.clone().uris(&["http://example.org/web"]),
                SvidError::BadSan(SanProblem::NotSpiffe),
            ),
            (
                good.clone().uris(&["spiffe://example.org"]),
                SvidError::BadSan(SanProblem::NoPath),
            ),
            (
                good.clone().uris(&["spiffe://example.org/a/../b"]),
                SvidError::BadSan(SanProblem::InvalidId(IdError::DotSegment)),
            ),
            (
                good.clone().ca(true),
                SvidError::NotALeaf(LeafProblem::IsCa),
            ),
            (
                good.clone().no_basic_constraints(),
                SvidError::NotALeaf(LeafProblem::MissingBasicConstraints),
            ),
            (
                good.clone().key_usages(&[
                    KeyUsagePurpose::DigitalSignature,
                    KeyUsagePurpose::KeyCertSign,
                ]),
                SvidError::NotALeaf(LeafProblem::KeyCertSign),
            ),
            (
                good.clone()
                    .key_usages(&[KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign]),
                SvidError::NotALeaf(LeafProblem::CrlSign),
            ),
            (good.clone().key_usages(&[]), SvidError::BadKeyUsage),
            (
                good.clone().key_usages(&[KeyUsagePurpose::KeyEncipherment]),
                SvidError::BadKeyUsage,
            ),
        ];
        for (spec, want) in cases {
            let (chain, key) = ca.issue(&spec);
            let got = X509Svid::parse(chain, Some(key)).unwrap_err();
            assert_eq!(got, want, "{spec:?}");
            assert!(!got.message().is_empty());
        }
        // DNS SANs besides the one URI are fine, and so are extra key usages.
        let ok = good.dns(&["web.example.org"]).key_usages(&[
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyAgreement,
        ]);
        let (chain, key) = ca.issue(&ok);
        X509Svid::parse(chain, Some(key)).unwrap();
    }

    #[test]
    fn refuses_a_key_of_another_leaf_and_garbage_keys() {
        let ca = ca();
        let (chain, _) = ca.issue(&LeafSpec::new("spiffe://example.org/web"));
        let (_, other_key) = ca.issue(&LeafSpec::new("spiffe://example.org/web"));
        assert_eq!(
            X509Svid::parse(chain.clone(), Some(other_key)).unwrap_err(),
            SvidError::KeyMismatch
        );
        assert_eq!(
            X509Svid::parse(chain, Some(Zeroizing::new(vec![1, 2, 3]))).unwrap_err(),
            SvidError::BadPrivateKey
        );
    }

    #[test]
    fn peek_reads_the_id_without_trust() {
        let other = TestCa::new("other.org");
        let svid = other.svid("spiffe://other.org/x");
        assert_eq!(
            peek_spiffe_id(svid.leaf()).unwrap().to_string(),
            "spiffe://other.org/x"
        );
        let (chain, _) = other.issue(&LeafSpec::new("spiffe://other.org/x").uris(&[]));
        assert_eq!(
            peek_spiffe_id(&chain[0]).unwrap_err(),
            SvidError::BadSan(SanProblem::NoUri)
        );
    }

    #[test]
    fn labels_are_snake_case() {
        for e in [
            SvidError::EmptyChain,
            SvidError::BadSan(SanProblem::NoUri),
            SvidError::NotALeaf(LeafProblem::IsCa),
            SvidError::KeyMismatch,
        ] {
            let label = e.to_string();
            assert!(
                label.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{label}"
            );
        }
    }
}
