//! lanyard-agent: the per-node agent that serves the SPIFFE Workload API on a Unix socket.
//!
//! Module map:
//! - [`attest`]: workload attestation: a Unix-socket caller's peer credentials to selectors
//!   (`unix:*`, pod UID and container ID from its cgroup).
//! - [`identities`]: the seam between the Workload API and the certificate manager.

pub mod attest;
pub mod identities;
