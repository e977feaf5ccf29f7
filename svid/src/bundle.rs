//! Trust bundles: the CA certificates (X.509 authorities) and JWT signing keys (JWT
//! authorities) of one trust domain, and the set of bundles a workload trusts.
//!
//! The X.509 authorities travel in two encodings handled here: concatenated DER (the Workload
//! API's form) and PEM (files and humans). The SPIFFE bundle document (a JWK Set) lives in
//! [`crate::jwks`].

use std::collections::BTreeMap;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::der::{self, DerError, MAX_CERTIFICATES};
use crate::id::TrustDomain;

/// Largest PEM input accepted, in bytes (the DER bound plus base64 and armour overhead).
pub const MAX_PEM_LEN: usize = 2 * der::MAX_CONCATENATED_LEN;

/// Why X.509 authorities could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("X.509 authorities are not well-formed concatenated DER: {0}")]
    Der(#[from] DerError),
    #[error("PEM input is {len} bytes, more than the {MAX_PEM_LEN} allowed")]
    PemTooLarge { len: usize },
    #[error("PEM input is not valid: {0}")]
    Pem(String),
    #[error("PEM input has no CERTIFICATE block; an empty trust bundle would trust nothing")]
    NoCertificates,
    #[error("more than {MAX_CERTIFICATES} certificates")]
    TooManyCertificates,
    #[error("X.509 authority number {index} is not a valid X.509 certificate: {reason}")]
    NotACertificate { index: usize, reason: String },
}

/// A JWT signing key of a trust domain, as published in its bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtAuthority {
    /// The `kid` JWT-SVIDs name in their header.
    pub key_id: String,
    /// SubjectPublicKeyInfo DER.
    pub public_key: Vec<u8>,
    /// Unix seconds, if the key has an expiry.
    pub expires_at: Option<i64>,
}

/// The trust bundle of one trust domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustBundle {
    trust_domain: TrustDomain,
    x509_authorities: Vec<CertificateDer<'static>>,
    jwt_authorities: Vec<JwtAuthority>,
    /// `spiffe_sequence`: grows with every change.
    sequence: u64,
    /// `spiffe_refresh_hint`.
    refresh_hint: Option<Duration>,
}

impl TrustBundle {
    /// An empty bundle (trusts nothing) for `trust_domain`.
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            x509_authorities: Vec::new(),
            jwt_authorities: Vec::new(),
            sequence: 0,
            refresh_hint: None,
        }
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The CA certificates that anchor X.509-SVIDs of this trust domain.
    pub fn x509_authorities(&self) -> &[CertificateDer<'static>] {
        &self.x509_authorities
    }

    pub fn jwt_authorities(&self) -> &[JwtAuthority] {
        &self.jwt_authorities
    }

    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    pub fn refresh_hint(&self) -> Option<Duration> {
        self.refresh_hint
    }

    /// Adds an X.509 authority (ignored if already present).
    pub fn add_x509_authority(&mut self, cert: CertificateDer<'static>) {
        if !self.x509_authorities.contains(&cert) {
            self.x509_authorities.push(cert);
        }
    }

    /// Adds a JWT authority, replacing one with the same key ID.
    pub fn add_jwt_authority(&mut self, authority: JwtAuthority) {
        self.jwt_authorities
            .retain(|a| a.key_id != authority.key_id);
        self.jwt_authorities.push(authority);
    }

    /// The JWT authority with key ID `kid`.
    pub fn jwt_authority(&self, kid: &str) -> Option<&JwtAuthority> {
        self.jwt_authorities.iter().find(|a| a.key_id == kid)
    }

    pub fn set_sequence(&mut self, sequence: u64) {
        self.sequence = sequence;
    }

    pub fn set_refresh_hint(&mut self, hint: Option<Duration>) {
        self.refresh_hint = hint;
    }

    /// What this bundle trusts, as a short name that is the same on every replica that
    /// publishes the same roots and JWT keys: hex of the first 8 bytes of a SHA-256 over the
    /// roots' DER and the JWT keys (kid and SPKI), each sorted. The sequence and refresh hint
    /// are left out: replicas number their bundles independently. Agents acknowledge this
    /// version, and `lanyard ca` compares it across replicas and agents.
    pub fn version(&self) -> String {
        let mut roots: Vec<&[u8]> = self.x509_authorities.iter().map(|c| c.as_ref()).collect();
        roots.sort_unstable();
        let mut jwt: Vec<(&str, &[u8])> = self
            .jwt_authorities
            .iter()
            .map(|a| (a.key_id.as_str(), a.public_key.as_slice()))
            .collect();
        jwt.sort_unstable();
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        // Length-prefixed fields, so no two different bundles feed the same bytes.
        let mut field = |bytes: &[u8]| {
            ctx.update(&(bytes.len() as u64).to_be_bytes());
            ctx.update(bytes);
        };
        field(self.trust_domain.name().as_bytes());
        field(&(roots.len() as u64).to_be_bytes());
        for root in roots {
            field(root);
        }
        for (kid, key) in jwt {
            field(kid.as_bytes());
            field(key);
        }
        let digest = ctx.finish();
        crate::ca::profile::hex(&digest.as_ref()[..8])
    }
}

/// The SHA-256 fingerprint of a certificate's DER, lowercase hex: how roots and intermediates
/// are named in reports, metrics and `lanyard ca status`.
pub fn certificate_fingerprint(cert: &[u8]) -> String {
    crate::ca::profile::hex(ring::digest::digest(&ring::digest::SHA256, cert).as_ref())
}

/// The bundles a party trusts, at most one per trust domain: its own and federated ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BundleSet {
    bundles: BTreeMap<TrustDomain, TrustBundle>,
}

impl BundleSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts or replaces the bundle of its trust domain.
    pub fn insert(&mut self, bundle: TrustBundle) {
        self.bundles.insert(bundle.trust_domain().clone(), bundle);
    }

    /// Removes `trust_domain`'s bundle, returning it.
    pub fn remove(&mut self, trust_domain: &TrustDomain) -> Option<TrustBundle> {
        self.bundles.remove(trust_domain)
    }

    /// The bundle of `trust_domain`: the only one a peer of that domain is validated against.
    pub fn get(&self, trust_domain: &TrustDomain) -> Option<&TrustBundle> {
        self.bundles.get(trust_domain)
    }

    pub fn iter(&self) -> impl Iterator<Item = &TrustBundle> {
        self.bundles.values()
    }
}

impl From<TrustBundle> for BundleSet {
    fn from(bundle: TrustBundle) -> Self {
        let mut set = Self::new();
        set.insert(bundle);
        set
    }
}

impl TrustBundle {
    /// A bundle whose X.509 authorities are `certs` (duplicates dropped), with no JWT
    /// authorities. The certificates are taken as given; see [`Self::from_x509_der`] for
    /// untrusted input.
    pub fn from_x509_authorities<I>(trust_domain: TrustDomain, certs: I) -> Self
    where
        I: IntoIterator<Item = CertificateDer<'static>>,
    {
        let mut bundle = Self::new(trust_domain);
        for cert in certs {
            bundle.add_x509_authority(cert);
        }
        bundle
    }

    /// Reads X.509 authorities in the Workload API's form: DER certificates back to back.
    /// Empty input gives a bundle with no X.509 authorities.
    pub fn from_x509_der(trust_domain: TrustDomain, der: &[u8]) -> Result<Self, BundleError> {
        let certs = certificates_from_der(der)?;
        Ok(Self::from_x509_authorities(trust_domain, certs))
    }

    /// Reads X.509 authorities from PEM `CERTIFICATE` blocks (other blocks are skipped);
    /// at least one is required.
    pub fn from_pem(trust_domain: TrustDomain, pem: &[u8]) -> Result<Self, BundleError> {
        let certs = certificates_from_pem(pem)?;
        Ok(Self::from_x509_authorities(trust_domain, certs))
    }

    /// The X.509 authorities as concatenated DER (the Workload API's bundle form).
    pub fn x509_authorities_der(&self) -> Vec<u8> {
        der::concat_certificates(&self.x509_authorities)
    }

    /// The X.509 authorities as PEM `CERTIFICATE` blocks.
    pub fn x509_authorities_pem(&self) -> String {
        crate::pem::encode_certificates(&self.x509_authorities)
    }
}

/// Splits concatenated DER certificates and checks that each one parses as X.509.
pub fn certificates_from_der(der: &[u8]) -> Result<Vec<CertificateDer<'static>>, BundleError> {
    let certs = der::split_certificates(der)?;
    check_certificates(&certs)?;
    Ok(certs)
}

/// Reads every PEM `CERTIFICATE` block (skipping other blocks) and checks each parses as X.509.
/// At least one is required, and at most [`MAX_CERTIFICATES`].
pub fn certificates_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, BundleError> {
    if pem.len() > MAX_PEM_LEN {
        return Err(BundleError::PemTooLarge { len: pem.len() });
    }
    let mut certs = Vec::new();
    for cert in CertificateDer::pem_slice_iter(pem) {
        if certs.len() == MAX_CERTIFICATES {
            return Err(BundleError::TooManyCertificates);
        }
        certs.push(cert.map_err(|e| BundleError::Pem(e.to_string()))?);
    }
    if certs.is_empty() {
        return Err(BundleError::NoCertificates);
    }
    check_certificates(&certs)?;
    Ok(certs)
}

/// The one trust domain the roots name in a `spiffe://<td>` URI SAN (Lanyard's CAs carry
/// one), for tools given only a bundle file. Roots naming two trust domains, or none, are an
/// error telling the user to pass `--trust-domain`.
pub fn trust_domain_of(roots: &[CertificateDer<'_>]) -> Result<TrustDomain, String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let mut found: Option<TrustDomain> = None;
    for root in roots {
        let (_, cert) = X509Certificate::from_der(root).map_err(|e| e.to_string())?;
        let Ok(Some(san)) = cert.subject_alternative_name() else {
            continue;
        };
        for name in &san.value.general_names {
            let GeneralName::URI(uri) = name else {
                continue;
            };
            let Ok(id) = crate::id::SpiffeId::parse(uri) else {
                continue;
            };
            match &found {
                Some(td) if td != id.trust_domain() => {
                    return Err(format!(
                        "the roots name two trust domains ({td}, {}); pass --trust-domain",
                        id.trust_domain()
                    ));
                }
                _ => found = Some(id.trust_domain().clone()),
            }
        }
    }
    found.ok_or_else(|| {
        "no root names its trust domain (a spiffe:// URI SAN); pass --trust-domain".to_owned()
    })
}

/// Checks that each element is exactly one parsable X.509 certificate.
fn check_certificates(certs: &[CertificateDer<'_>]) -> Result<(), BundleError> {
    for (index, cert) in certs.iter().enumerate() {
        match x509_parser::parse_x509_certificate(cert.as_ref()) {
            Ok(([], _)) => {}
            Ok(_) => {
                return Err(BundleError::NotACertificate {
                    index,
                    reason: "trailing bytes after the certificate".into(),
                });
            }
            Err(e) => {
                return Err(BundleError::NotACertificate {
                    index,
                    reason: e.to_string(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RootCa;
    use std::time::SystemTime;

    #[test]
    fn trust_domain_comes_from_the_root_uri_san() {
        let td = TrustDomain::new("example.org").unwrap();
        let root = RootCa::generate(&td, Duration::from_secs(3600), SystemTime::now()).unwrap();
        assert_eq!(trust_domain_of(&[root.cert_der().clone()]).unwrap(), td);
        let other = TrustDomain::new("other.org").unwrap();
        let root2 = RootCa::generate(&other, Duration::from_secs(3600), SystemTime::now()).unwrap();
        let err =
            trust_domain_of(&[root.cert_der().clone(), root2.cert_der().clone()]).unwrap_err();
        assert!(err.contains("two trust domains"), "{err}");
        assert!(trust_domain_of(&[]).unwrap_err().contains("--trust-domain"));
    }

    #[test]
    fn version_names_the_roots_and_jwt_keys_not_the_order_or_sequence() {
        let td = TrustDomain::new("example.org").unwrap();
        let now = SystemTime::now();
        let a = RootCa::generate(&td, Duration::from_secs(3600), now).unwrap();
        let b = RootCa::generate(&td, Duration::from_secs(3600), now).unwrap();
        let jwt = crate::jwt::JwtSigner::generate().unwrap().0.authority();
        let mut ab = TrustBundle::new(td.clone());
        ab.add_x509_authority(a.cert_der().clone());
        ab.add_x509_authority(b.cert_der().clone());
        ab.add_jwt_authority(jwt.clone());
        let mut ba = TrustBundle::new(td.clone());
        ba.add_x509_authority(b.cert_der().clone());
        ba.add_x509_authority(a.cert_der().clone());
        ba.add_jwt_authority(jwt);
        ba.set_sequence(7);
        assert_eq!(ab.version(), ba.version());
        assert_eq!(ab.version().len(), 16);
        let mut only_a = TrustBundle::new(td);
        only_a.add_x509_authority(a.cert_der().clone());
        assert_ne!(only_a.version(), ab.version());
        assert_eq!(certificate_fingerprint(a.cert_der()).len(), 64);
    }
}
