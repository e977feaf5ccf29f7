//! The SPIFFE domain, shared by every Lanyard binary, so no SPIFFE rule is written twice.
//!
//! Module map:
//! - [`id`]: `SpiffeId` and `TrustDomain`, parsed and generated per the SPIFFE-ID standard.
//! - [`reserved`]: the IDs Lanyard keeps for itself (`/lanyard/server`, `/lanyard/agent/...`).
//! - [`bundle`]: trust bundles (X.509 and JWT authorities of one trust domain) and bundle sets;
//!   X.509 authorities as concatenated DER (the Workload API's form) and PEM.
//! - [`der`]: the little DER handled by hand (splitting concatenated certificates, SPKI).
//! - [`jwks`]: the SPIFFE bundle document (JWK Set) and the Workload API's JWT-only JWK Set.
//! - [`jwt`]: JWT-SVIDs: minting (ES256) and validation against a bundle set.
//! - [`selector`]: workload selectors (`unix:uid:1001`, `k8s:ns:default`) and selector sets.
//! - [`pem`]: PEM encoding, the one writer of PEM blocks (key buffers wiped).
//! - [`keys`]: ECDSA key generation and CA keys loaded from PEM, wiped on drop.
//! - [`csr`]: PKCS#10 CSRs: made by agents ([`KeyAndCsr`]), verified by the server ([`VerifiedCsr`]).
//! - [`ca`]: the root CA, the issuing intermediate, and X.509-SVID signing.
//! - [`x509`]: `X509Svid` (chain + optional key) and the X.509-SVID leaf rules.
//! - [`verify`]: validating a peer's chain against its own trust domain's bundle.
//! - [`tls`]: rustls mTLS configs over a live, swappable SVID and bundle store; authorizers.
//! - `test_support` (tests, or feature `test-support`): rcgen-made good and bad certificates.

#![forbid(unsafe_code)]

pub mod bundle;
pub mod ca;
pub mod csr;
pub mod der;
pub mod id;
pub mod jwks;
pub mod jwt;
pub mod keys;
pub mod pem;
pub mod reserved;
pub mod selector;
#[cfg(any(test, feature = "test-support"))]
pub mod test_support;
pub mod tls;
pub mod verify;
pub mod x509;

pub use bundle::{BundleSet, JwtAuthority, TrustBundle};
pub use ca::{CLOCK_SKEW_BACKDATE, CaError, Issuer, RootCa, SignedSvid};
pub use csr::{CsrError, KeyAndCsr, VerifiedCsr};
pub use id::{IdError, SpiffeId, TrustDomain};
pub use keys::{KeyAlgorithm, KeyError};
pub use tls::{Authorizer, AuthzError, SvidStore, TlsRefusal};
pub use verify::{PeerRole, VerifyError, verify_peer};
pub use x509::{SvidError, X509Svid, peek_spiffe_id};
