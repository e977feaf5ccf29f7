//! Trust bundles: the CA certificates (X.509 authorities) and JWT signing keys (JWT
//! authorities) of one trust domain, and the set of bundles a workload trusts.

use std::collections::BTreeMap;
use std::time::Duration;

use rustls_pki_types::CertificateDer;

use crate::id::TrustDomain;

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
