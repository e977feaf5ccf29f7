//! Envoy SDS v3 (`envoy.service.secret.v3.SecretDiscoveryService`) on the agent's socket, as
//! SPIRE's agent serves it: Envoy fetches its workload's X.509-SVID and trust bundles as
//! `Secret`s, and gets new ones pushed at every rotation. Mounted by
//! [`crate::socket::serve()`] beside the Workload API (one socket, one admission layer), the
//! caller attested exactly as for the Workload API, without the `workload.spiffe.io` header
//! (Envoy does not send it).
//!
//! - [`service`]: the gRPC service (`StreamSecrets`, `FetchSecrets`; `DeltaSecrets` answers
//!   `Unimplemented`) and how the admission layer treats it.
//! - [`stream`]: `StreamSecrets`: subscriptions, pushes on change, ACK/NACK, versions.
//! - [`names`]: the resource names (`default`, SPIFFE IDs, `ROOTCA`, `ALL`, trust domain
//!   IDs) and their bounds.
//! - [`node`]: the SPIFFE validator or `trusted_ca`, from the Envoy node (SPIRE's switches).
//! - [`secrets`]: the `Secret` messages, and what is wiped.
//! - [`refusal`]: why a call was refused ([`SdsRefusal`]).
//! - [`limits`]: the service's bounds ([`SdsLimits`]).
//!
//! Bindings: the `envoy-types` crate (Envoy's API protos, generated for tonic/prost).

pub mod limits;
pub mod names;
pub mod node;
pub mod refusal;
pub mod secrets;
pub mod service;
pub mod stream;

pub use limits::SdsLimits;
pub use refusal::SdsRefusal;
pub use service::{SdsAdmission, SdsService};
