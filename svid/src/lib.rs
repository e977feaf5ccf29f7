//! The SPIFFE domain, shared by every Lanyard binary, so no SPIFFE rule is written twice.
//!
//! Module map:
//! - [`id`]: `SpiffeId` and `TrustDomain`, parsed and generated per the SPIFFE-ID standard.
//! - [`reserved`]: the IDs Lanyard keeps for itself (`/lanyard/server`, `/lanyard/agent/...`).
//! - [`bundle`]: trust bundles (X.509 and JWT authorities of one trust domain) and bundle sets.

pub mod bundle;
pub mod id;
pub mod reserved;

pub use bundle::{BundleSet, JwtAuthority, TrustBundle};
pub use id::{IdError, SpiffeId, TrustDomain};
