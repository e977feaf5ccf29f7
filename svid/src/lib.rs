//! The SPIFFE domain, shared by every Lanyard binary, so no SPIFFE rule is written twice.
//!
//! Module map:
//! - [`id`]: `SpiffeId` and `TrustDomain`, parsed and generated per the SPIFFE-ID standard.
//! - [`bundle`]: trust bundles (X.509 and JWT authorities of one trust domain) and bundle sets.

pub mod bundle;
pub mod id;

pub use bundle::{BundleSet, JwtAuthority, TrustBundle};
pub use id::{IdError, SpiffeId, TrustDomain};
