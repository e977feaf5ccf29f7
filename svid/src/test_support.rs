//! Test certificates made with rcgen directly: a root and an issuing intermediate per trust
//! domain, and leaves that follow the X.509-SVID profile or break exactly one of its rules.
//!
//! Compiled for this crate's tests and, behind the `test-support` feature, for other crates'
//! tests. It deliberately does not use the production CA: a test of the validator must be able
//! to craft certificates the CA would never issue.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::bundle::{BundleSet, TrustBundle};
use crate::id::TrustDomain;
use crate::x509::X509Svid;

/// How a test leaf is made; [`LeafSpec::new`] is a valid X.509-SVID, each builder method
/// changes one property.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    uris: Vec<String>,
    dns: Vec<String>,
    /// `None`: no BasicConstraints extension at all.
    basic_constraints_ca: Option<bool>,
    key_usages: Vec<KeyUsagePurpose>,
    extended_key_usages: Vec<ExtendedKeyUsagePurpose>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    signed_by_root: bool,
}

impl LeafSpec {
    /// A valid SVID for `id`, valid from a minute ago for an hour, issued by the intermediate.
    pub fn new(id: &str) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            uris: vec![id.to_owned()],
            dns: Vec::new(),
            basic_constraints_ca: Some(false),
            key_usages: vec![KeyUsagePurpose::DigitalSignature],
            extended_key_usages: vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            not_before: now - Duration::from_secs(60),
            not_after: now + Duration::from_secs(3600),
            signed_by_root: false,
        }
    }

    /// Replaces the URI SANs (none, several, non-spiffe...).
    pub fn uris(mut self, uris: &[&str]) -> Self {
        self.uris = uris.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn dns(mut self, names: &[&str]) -> Self {
        self.dns = names.iter().map(|s| s.to_string()).collect();
        self
    }

    /// BasicConstraints with this `cA` value.
    pub fn ca(mut self, ca: bool) -> Self {
        self.basic_constraints_ca = Some(ca);
        self
    }

    pub fn no_basic_constraints(mut self) -> Self {
        self.basic_constraints_ca = None;
        self
    }

    /// KeyUsage bits; empty means no KeyUsage extension.
    pub fn key_usages(mut self, usages: &[KeyUsagePurpose]) -> Self {
        self.key_usages = usages.to_vec();
        self
    }

    /// ExtendedKeyUsage values; empty means no EKU extension.
    pub fn extended_key_usages(mut self, usages: &[ExtendedKeyUsagePurpose]) -> Self {
        self.extended_key_usages = usages.to_vec();
        self
    }

    pub fn validity(mut self, not_before: OffsetDateTime, not_after: OffsetDateTime) -> Self {
        self.not_before = not_before;
        self.not_after = not_after;
        self
    }

    /// Expired a minute ago.
    pub fn expired(self) -> Self {
        let now = OffsetDateTime::now_utc();
        self.validity(
            now - Duration::from_secs(7200),
            now - Duration::from_secs(60),
        )
    }

    /// Valid from an hour from now.
    pub fn not_yet_valid(self) -> Self {
        let now = OffsetDateTime::now_utc();
        self.validity(
            now + Duration::from_secs(3600),
            now + Duration::from_secs(7200),
        )
    }

    /// Signed by the root directly (the chain is then the leaf alone).
    pub fn signed_by_root(mut self) -> Self {
        self.signed_by_root = true;
        self
    }
}

/// The profile of the intermediate a [`TestCa`] issues leaves with.
#[derive(Debug, Clone)]
pub struct SignerSpec {
    /// BasicConstraints `cA`.
    pub ca: bool,
    pub key_usages: Vec<KeyUsagePurpose>,
}

impl Default for SignerSpec {
    fn default() -> Self {
        Self {
            ca: true,
            key_usages: vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign],
        }
    }
}

/// A root and an issuing intermediate for one trust domain.
pub struct TestCa {
    trust_domain: TrustDomain,
    root_der: CertificateDer<'static>,
    root: Issuer<'static, KeyPair>,
    intermediate_der: CertificateDer<'static>,
    intermediate: Issuer<'static, KeyPair>,
}

impl TestCa {
    /// A fresh root (valid a day) and a well-formed intermediate for `trust_domain`.
    pub fn new(trust_domain: &str) -> Self {
        Self::with_signer(trust_domain, SignerSpec::default())
    }

    /// Like [`TestCa::new`], with an intermediate of the given profile (to test bad signers).
    pub fn with_signer(trust_domain: &str, signer: SignerSpec) -> Self {
        let trust_domain = TrustDomain::new(trust_domain).expect("valid test trust domain");
        let now = OffsetDateTime::now_utc();

        let root_key = KeyPair::generate().expect("generate P-256 key");
        let mut root_params = signing_params(&trust_domain, "root");
        root_params.not_before = now - Duration::from_secs(3600);
        root_params.not_after = now + Duration::from_secs(86_400);
        let root_der = root_params
            .self_signed(&root_key)
            .expect("self-sign root")
            .der()
            .clone();
        let root = Issuer::new(root_params, root_key);

        let intermediate_key = KeyPair::generate().expect("generate P-256 key");
        let mut params = signing_params(&trust_domain, "intermediate");
        params.not_before = now - Duration::from_secs(3600);
        params.not_after = now + Duration::from_secs(43_200);
        params.is_ca = if signer.ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::ExplicitNoCa
        };
        params.key_usages = signer.key_usages;
        params.use_authority_key_identifier_extension = true;
        let intermediate_der = params
            .signed_by(&intermediate_key, &root)
            .expect("sign intermediate")
            .der()
            .clone();
        let intermediate = Issuer::new(params, intermediate_key);

        Self {
            trust_domain,
            root_der,
            root,
            intermediate_der,
            intermediate,
        }
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn root(&self) -> &CertificateDer<'static> {
        &self.root_der
    }

    pub fn intermediate(&self) -> &CertificateDer<'static> {
        &self.intermediate_der
    }

    /// A bundle with this CA's root as its only X.509 authority.
    pub fn bundle(&self) -> TrustBundle {
        let mut bundle = TrustBundle::new(self.trust_domain.clone());
        bundle.add_x509_authority(self.root_der.clone());
        bundle
    }

    /// A bundle set holding only [`TestCa::bundle`].
    pub fn bundle_set(&self) -> BundleSet {
        BundleSet::from(self.bundle())
    }

    /// Issues a leaf per `spec`; returns the chain (leaf, then the intermediate unless
    /// signed by the root) and the leaf's PKCS#8 key.
    pub fn issue(&self, spec: &LeafSpec) -> (Vec<CertificateDer<'static>>, Zeroizing<Vec<u8>>) {
        let key = KeyPair::generate().expect("generate P-256 key");
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for uri in &spec.uris {
            params
                .subject_alt_names
                .push(SanType::URI(uri.as_str().try_into().expect("IA5 test URI")));
        }
        for dns in &spec.dns {
            params.subject_alt_names.push(SanType::DnsName(
                dns.as_str().try_into().expect("IA5 test DNS name"),
            ));
        }
        params.is_ca = match spec.basic_constraints_ca {
            None => IsCa::NoCa,
            Some(false) => IsCa::ExplicitNoCa,
            Some(true) => IsCa::Ca(BasicConstraints::Unconstrained),
        };
        params.key_usages = spec.key_usages.clone();
        params.extended_key_usages = spec.extended_key_usages.clone();
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        params.use_authority_key_identifier_extension = true;
        let issuer = if spec.signed_by_root {
            &self.root
        } else {
            &self.intermediate
        };
        let leaf = params.signed_by(&key, issuer).expect("sign leaf");
        let mut chain = vec![leaf.der().clone()];
        if !spec.signed_by_root {
            chain.push(self.intermediate_der.clone());
        }
        (chain, Zeroizing::new(key.serialize_der()))
    }

    /// A valid X.509-SVID for `id`, with its private key.
    pub fn svid(&self, id: &str) -> X509Svid {
        let (chain, key) = self.issue(&LeafSpec::new(id));
        X509Svid::parse(chain, Some(key)).expect("valid test SVID")
    }
}

/// Params shared by roots and intermediates: cA, keyCertSign, the trust domain ID as URI SAN.
fn signing_params(trust_domain: &TrustDomain, role: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = rcgen::DistinguishedName::new();
    name.push(
        rcgen::DnType::CommonName,
        format!("{} test {role}", trust_domain.name()),
    );
    params.distinguished_name = name;
    params.subject_alt_names = vec![SanType::URI(
        trust_domain
            .id_string()
            .as_str()
            .try_into()
            .expect("IA5 trust domain ID"),
    )];
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}
