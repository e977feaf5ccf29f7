//! The certificate authority: a self-signed root ([`RootCa`]) that issues the signing
//! intermediate ([`Issuer`]), which signs verified CSRs into X.509-SVIDs ([`SignedSvid`]).
//!
//! Every certificate follows `spec/svid.md`; the profiles live in `ca/profile.rs`, the checks
//! on CA material read from PEM (a data dir or a `kubernetes.io/tls` Secret) in `ca/load.rs`.
//! The issuer's rcgen signer (its name, key identifier and key) is built once, so signing an
//! SVID costs one ECDSA signature plus DER encoding.
//!
//! Times are whole seconds (X.509 has no finer resolution) and are always passed in, so the
//! caller's clock (real or a test's) is the only clock.

mod load;
pub(crate) mod profile;
#[cfg(test)]
mod tests;

use std::fmt;
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use zeroize::Zeroizing;

use crate::csr::VerifiedCsr;
use crate::id::{SpiffeId, TrustDomain};
use crate::keys::{KeyAlgorithm, KeyError, SecretKey};
use crate::pem::{self, CERTIFICATE};

/// How far NotBefore is set in the past, so a verifier whose clock is slightly behind ours
/// still accepts a fresh certificate (SPIRE uses the same 10 s).
pub const CLOCK_SKEW_BACKDATE: Duration = Duration::from_secs(10);

/// The most DNS SANs one SVID may carry.
pub const MAX_DNS_SANS: usize = 32;

/// The largest certificate-chain PEM read (a Secret's `tls.crt`).
pub const MAX_CHAIN_PEM_LEN: usize = 64 * 1024;

/// The most certificates in a CA chain read from PEM.
pub const MAX_CHAIN_CERTS: usize = 8;

/// Why the CA refused to load material or to sign. `Display` is a snake_case label, usable as
/// a metric label; [`CaError::message`] is the human explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaError {
    /// Input PEM larger than its bound, or too many certificates in it.
    TooLarge { what: &'static str, limit: usize },
    /// The certificate PEM holds no readable `CERTIFICATE` block.
    BadPem(&'static str),
    /// A certificate that is not valid X.509 DER (or has duplicate/broken extensions).
    BadCertificate(String),
    /// The private key could not be read, or is not ECDSA P-256/P-384.
    Key(KeyError),
    /// The private key does not belong to the certificate.
    KeyMismatch,
    /// A certificate that must be a CA is not (cA=false, or no keyCertSign).
    NotCa(String),
    /// A certificate has expired.
    Expired {
        subject: String,
        not_after: SystemTime,
    },
    /// A certificate is not valid yet.
    NotYetValid {
        subject: String,
        not_before: SystemTime,
    },
    /// A SPIFFE ID (of a CA certificate, or asked for) is in another trust domain.
    WrongTrustDomain { expected: String, found: String },
    /// A CA certificate's SPIFFE ID has a path (signing certificates carry `spiffe://<td>`).
    BadCaId(String),
    /// The certificates after the first do not certify the one before.
    BrokenChain(String),
    /// The CA's subject name cannot be re-encoded byte for byte, so leaves would not chain.
    UnsupportedCaSubject,
    /// An SVID was asked for a trust domain ID (no path).
    IdWithoutPath(String),
    /// A zero (under one second) TTL.
    InvalidTtl,
    /// The signing CA is no longer (or not yet) valid at the requested time.
    IssuerExpired { not_after: SystemTime },
    /// A DNS SAN that is not a valid DNS name, or too many of them.
    BadDnsName(String),
    /// Encoding or signing failed inside rcgen or ring.
    Signing(String),
}

impl CaError {
    /// The snake_case label (same as `Display`).
    pub fn label(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::BadPem(_) => "bad_pem",
            Self::BadCertificate(_) => "bad_certificate",
            Self::Key(KeyError::TooLarge { .. }) => "too_large",
            Self::Key(KeyError::Malformed(_)) => "bad_key",
            Self::Key(KeyError::Unsupported) => "unsupported_key",
            Self::Key(KeyError::Generation) => "key_generation_failed",
            Self::KeyMismatch => "key_mismatch",
            Self::NotCa(_) => "not_ca",
            Self::Expired { .. } => "expired",
            Self::NotYetValid { .. } => "not_yet_valid",
            Self::WrongTrustDomain { .. } => "wrong_trust_domain",
            Self::BadCaId(_) => "bad_ca_id",
            Self::BrokenChain(_) => "broken_chain",
            Self::UnsupportedCaSubject => "unsupported_ca_subject",
            Self::IdWithoutPath(_) => "id_without_path",
            Self::InvalidTtl => "invalid_ttl",
            Self::IssuerExpired { .. } => "issuer_expired",
            Self::BadDnsName(_) => "bad_dns_name",
            Self::Signing(_) => "signing_failed",
        }
    }

    /// A human explanation (never contains key material).
    pub fn message(&self) -> String {
        match self {
            Self::TooLarge { what, limit } => format!("{what} is over its limit of {limit}"),
            Self::BadPem(why) => format!("certificate PEM unreadable: {why}"),
            Self::BadCertificate(why) => format!("certificate is not valid X.509: {why}"),
            Self::Key(e) => e.message(),
            Self::KeyMismatch => {
                "the private key does not match the certificate's public key".to_owned()
            }
            Self::NotCa(why) => format!("certificate is not a CA: {why}"),
            Self::Expired { subject, not_after } => {
                format!("certificate {subject} expired at {}", unix(*not_after))
            }
            Self::NotYetValid {
                subject,
                not_before,
            } => format!(
                "certificate {subject} is not valid before {}",
                unix(*not_before)
            ),
            Self::WrongTrustDomain { expected, found } => {
                format!("{found} is not in trust domain {expected}")
            }
            Self::BadCaId(id) => {
                format!(
                    "CA certificate's SPIFFE ID {id} has a path; signing certificates carry only spiffe://<trust domain>"
                )
            }
            Self::BrokenChain(why) => format!("certificate chain is broken: {why}"),
            Self::UnsupportedCaSubject => "the CA's subject name uses an encoding that cannot be \
                                           reproduced in issued certificates' issuer field"
                .to_owned(),
            Self::IdWithoutPath(id) => {
                format!("{id} is a trust domain ID; an X.509-SVID needs an ID with a path")
            }
            Self::InvalidTtl => "TTL must be at least one second".to_owned(),
            Self::IssuerExpired { not_after } => format!(
                "the signing CA is not valid at this time (NotAfter {})",
                unix(*not_after)
            ),
            Self::BadDnsName(why) => format!("DNS SAN refused: {why}"),
            Self::Signing(why) => format!("signing failed: {why}"),
        }
    }
}

impl fmt::Display for CaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl std::error::Error for CaError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Key(e) => Some(e),
            _ => None,
        }
    }
}

impl From<KeyError> for CaError {
    fn from(e: KeyError) -> Self {
        Self::Key(e)
    }
}

fn unix(t: SystemTime) -> String {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => format!("unix {}", d.as_secs()),
        Err(_) => "before 1970".to_owned(),
    }
}

/// A CA certificate (first in `chain`), the rest of its chain, and its key, ready to sign.
struct Authority {
    trust_domain: TrustDomain,
    chain: Vec<CertificateDer<'static>>,
    /// rcgen's view of the CA: subject name, key identifier, key. Built once.
    signer: rcgen::Issuer<'static, SecretKey>,
    /// Unix seconds.
    not_before: i64,
    not_after: i64,
    serial_hex: String,
}

impl Authority {
    fn cert_der(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    fn key(&self) -> &SecretKey {
        self.signer.key()
    }

    fn not_before(&self) -> SystemTime {
        profile::system_time(self.not_before)
    }

    fn not_after(&self) -> SystemTime {
        profile::system_time(self.not_after)
    }

    /// The validity of a certificate issued at `now` for `ttl`: NotBefore backdated (but not
    /// before ours), NotAfter never past ours.
    fn child_validity(&self, ttl: Duration, now: SystemTime) -> Result<(i64, i64), CaError> {
        let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        if ttl == 0 {
            return Err(CaError::InvalidTtl);
        }
        let now = profile::unix_seconds(now);
        if now >= self.not_after || now < self.not_before {
            return Err(CaError::IssuerExpired {
                not_after: self.not_after(),
            });
        }
        let backdate = CLOCK_SKEW_BACKDATE.as_secs() as i64;
        let not_before = now.saturating_sub(backdate).max(self.not_before);
        let not_after = now.saturating_add(ttl).min(self.not_after);
        Ok((not_before, not_after))
    }

    fn sign(
        &self,
        params: &rcgen::CertificateParams,
        public_key: &impl rcgen::PublicKeyData,
    ) -> Result<CertificateDer<'static>, CaError> {
        params
            .signed_by(public_key, &self.signer)
            .map(|cert| cert.der().clone())
            .map_err(|e| CaError::Signing(e.to_string()))
    }

    fn chain_pem(&self) -> String {
        pem::encode_certificates(&self.chain)
    }

    /// Generates a key and a CA certificate signed by `parent` (or self-signed without one).
    fn generate(
        trust_domain: &TrustDomain,
        parent: Option<&Authority>,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Self, CaError> {
        let key = SecretKey::generate(KeyAlgorithm::EcdsaP256)?;
        let (not_before, not_after) = match parent {
            Some(parent) => parent.child_validity(ttl, now)?,
            None => {
                let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
                if ttl == 0 {
                    return Err(CaError::InvalidTtl);
                }
                let now = profile::unix_seconds(now);
                let backdate = CLOCK_SKEW_BACKDATE.as_secs() as i64;
                (now.saturating_sub(backdate), now.saturating_add(ttl))
            }
        };
        let serial = profile::random_serial()?;
        let params = profile::ca_params(
            trust_domain,
            parent.is_some(),
            &serial,
            not_before,
            not_after,
        )?;
        let cert = match parent {
            Some(parent) => parent.sign(&params, &key)?,
            None => params
                .self_signed(&key)
                .map(|c| c.der().clone())
                .map_err(|e| CaError::Signing(e.to_string()))?,
        };
        let mut chain = vec![cert];
        if let Some(parent) = parent {
            // Only further *intermediates* travel with leaves; a root stays in the bundle.
            if parent.not_self_signed() {
                chain.extend(parent.chain.iter().cloned());
            }
        }
        Ok(Self {
            trust_domain: trust_domain.clone(),
            chain,
            signer: rcgen::Issuer::new(params, key),
            not_before,
            not_after,
            serial_hex: profile::hex(&serial),
        })
    }

    /// A root's chain is just itself; used to keep the root out of leaf chains.
    fn not_self_signed(&self) -> bool {
        !load::is_self_signed(self.cert_der())
    }
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .field("serial", &self.serial_hex)
            .field("not_after", &self.not_after)
            .field("chain_len", &self.chain.len())
            .field("key", &self.key())
            .finish()
    }
}

/// The self-signed root of a trust domain (data-dir mode and `lanyard install`). Its key is
/// wiped on drop and never printed by `Debug`.
#[derive(Debug)]
pub struct RootCa {
    authority: Authority,
}

impl RootCa {
    /// Generates a P-256 root for `td`, valid from `now` (backdated) for `ttl`.
    pub fn generate(td: &TrustDomain, ttl: Duration, now: SystemTime) -> Result<Self, CaError> {
        let authority = Authority::generate(td, None, ttl, now)?;
        tracing::debug!(trust_domain = %td, serial = %authority.serial_hex, "generated root CA");
        Ok(Self { authority })
    }

    /// Loads a root written by [`RootCa::cert_pem`] and [`RootCa::key_pem`] (or any CA
    /// certificate with its key). Refuses a key that does not match, a non-CA certificate,
    /// or one of another trust domain. An expired root loads (so the caller can see it and
    /// rotate); it just cannot issue.
    pub fn from_pem(td: &TrustDomain, cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let authority = load::authority(td, cert_pem, key_pem, None)?;
        if authority.chain.len() != 1 {
            return Err(CaError::TooLarge {
                what: "root certificate PEM (one certificate expected)",
                limit: 1,
            });
        }
        Ok(Self { authority })
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.authority.trust_domain
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        self.authority.cert_der()
    }

    pub fn cert_pem(&self) -> String {
        self.authority.chain_pem()
    }

    /// The root's key, PKCS#8 PEM, in a buffer wiped on drop. Write it 0600.
    pub fn key_pem(&self) -> Zeroizing<String> {
        self.authority.key().to_pem()
    }

    pub fn not_after(&self) -> SystemTime {
        self.authority.not_after()
    }

    /// Generates a P-256 signing intermediate (path length 0), valid from `now` for `ttl` but
    /// never past the root.
    pub fn issue_intermediate(&self, ttl: Duration, now: SystemTime) -> Result<Issuer, CaError> {
        let td = &self.authority.trust_domain;
        let authority = Authority::generate(td, Some(&self.authority), ttl, now)?;
        tracing::debug!(trust_domain = %td, serial = %authority.serial_hex, "issued intermediate CA");
        Ok(Issuer { authority })
    }
}

/// The issuing intermediate: signs every SVID. Its key is wiped on drop and never printed.
#[derive(Debug)]
pub struct Issuer {
    authority: Authority,
}

impl Issuer {
    /// Cluster mode: a `kubernetes.io/tls` Secret (`tls.crt` may hold the intermediate
    /// followed by more of its chain; `tls.key` the intermediate's key, PKCS#8 or SEC1).
    /// Refuses a key that does not match the certificate, a certificate that is not a CA
    /// (cA=true, keyCertSign), an expired or not yet valid one, one of another trust domain
    /// (if it carries a SPIFFE URI SAN), and a chain whose links do not verify.
    pub fn from_pem(
        td: &TrustDomain,
        cert_chain_pem: &str,
        key_pem: &str,
    ) -> Result<Self, CaError> {
        Self::from_pem_at(td, cert_chain_pem, key_pem, SystemTime::now())
    }

    /// [`Issuer::from_pem`], checking validity at `now`.
    pub fn from_pem_at(
        td: &TrustDomain,
        cert_chain_pem: &str,
        key_pem: &str,
        now: SystemTime,
    ) -> Result<Self, CaError> {
        let authority = load::authority(td, cert_chain_pem, key_pem, Some(now))?;
        tracing::debug!(trust_domain = %td, serial = %authority.serial_hex, "loaded issuing CA");
        Ok(Self { authority })
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.authority.trust_domain
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        self.authority.cert_der()
    }

    /// The chain to append after a leaf: the intermediate (and any further intermediates
    /// from the Secret).
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.authority.chain
    }

    pub fn cert_chain_pem(&self) -> String {
        self.authority.chain_pem()
    }

    /// The intermediate's key, PKCS#8 PEM, in a buffer wiped on drop. Write it 0600.
    pub fn key_pem(&self) -> Zeroizing<String> {
        self.authority.key().to_pem()
    }

    pub fn not_before(&self) -> SystemTime {
        self.authority.not_before()
    }

    pub fn not_after(&self) -> SystemTime {
        self.authority.not_after()
    }

    /// The intermediate's serial number, lowercase hex.
    pub fn serial_hex(&self) -> &str {
        &self.authority.serial_hex
    }

    /// Signs an X.509-SVID for `id` over the key of `csr` (already verified).
    pub fn sign_x509_svid(
        &self,
        csr: &VerifiedCsr,
        id: &SpiffeId,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<SignedSvid, CaError> {
        self.sign_x509_svid_with_dns(csr, id, &[], ttl, now)
    }

    /// Same, with extra DNS SANs (for the server's own SVID).
    pub fn sign_x509_svid_with_dns(
        &self,
        csr: &VerifiedCsr,
        id: &SpiffeId,
        dns: &[String],
        ttl: Duration,
        now: SystemTime,
    ) -> Result<SignedSvid, CaError> {
        if id.trust_domain() != &self.authority.trust_domain {
            return Err(CaError::WrongTrustDomain {
                expected: self.authority.trust_domain.to_string(),
                found: id.to_string(),
            });
        }
        if id.is_trust_domain_id() {
            return Err(CaError::IdWithoutPath(id.to_string()));
        }
        let (not_before, not_after) = self.authority.child_validity(ttl, now)?;
        let serial = profile::random_serial()?;
        let params = profile::leaf_params(id, dns, &serial, not_before, not_after)?;
        let leaf = self.authority.sign(&params, &csr.as_rcgen_key())?;
        let mut cert_chain = Vec::with_capacity(1 + self.authority.chain.len());
        cert_chain.push(leaf);
        cert_chain.extend(self.authority.chain.iter().cloned());
        Ok(SignedSvid {
            spiffe_id: id.clone(),
            cert_chain,
            not_after: profile::system_time(not_after),
            serial_hex: profile::hex(&serial),
        })
    }
}

/// An issued X.509-SVID (the key stays with whoever made the CSR).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedSvid {
    pub spiffe_id: SpiffeId,
    /// The leaf first, then [`Issuer::chain`].
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub not_after: SystemTime,
    /// The leaf's serial number, lowercase hex (for the audit log).
    pub serial_hex: String,
}

impl SignedSvid {
    /// The leaf certificate.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.cert_chain[0]
    }

    /// The leaf alone as PEM.
    pub fn leaf_pem(&self) -> String {
        pem::encode(CERTIFICATE, self.leaf())
    }

    /// The whole chain as PEM, leaf first.
    pub fn cert_chain_pem(&self) -> String {
        pem::encode_certificates(&self.cert_chain)
    }
}
