//! lanyard-agent: the per-node agent that serves the SPIFFE Workload API on a Unix socket.
//!
//! Module map:
//! - [`attest`]: workload attestation: a Unix-socket caller's peer credentials to selectors
//!   (`unix:*`, pod UID and container ID from its cgroup).
//! - [`identities`]: the seam between the Workload API and the certificate manager.
//! - [`workload_api`]: the SPIFFE Workload API served on the agent's Unix socket.
//! - [`api_cli`]: `lanyard-agent api ...`, a Workload API client for humans and scripts.

pub mod api_cli;
pub mod attest;
pub mod identities;
pub mod workload_api;
