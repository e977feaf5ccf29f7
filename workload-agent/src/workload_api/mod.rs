//! The SPIFFE Workload API: the part third-party workloads touch, as a plain gRPC service
//! mounted on the agent's socket by [`crate::socket::serve()`] (which binds, accepts, bounds
//! connections and admits every call: header check and attestation).
//!
//! Wire contract: `spec/workload-api.md`, unchanged, so any SPIFFE client library works.
//!
//! - [`service`]: the `SpiffeWorkloadAPI` RPCs over [`WorkloadIdentities`], and how the
//!   socket's admission layer is to treat them.
//! - [`refusal`]: why a call was refused ([`Refusal`]; `Display` is the metric label).
//! - [`watch_stream`]: the engine of the streaming RPCs: first state at once, then every
//!   change, one slot per stream in the caller's budget.
//! - [`shared_responses`]: stream responses built once per change and shared by the streams
//!   that send the same one.
//! - [`convert`]: SVIDs, bundles and JWT claims to Workload API messages.
//! - [`limits`]: the service's own bounds ([`Limits`]: streams per caller, message sizes).
//! - [`metrics`]: the Prometheus metrics, [`WorkloadApiMetrics`].
//!
//! [`WorkloadIdentities`]: crate::identities::WorkloadIdentities

pub mod convert;
pub mod jwt_cache;
pub mod limits;
pub mod metrics;
pub mod refusal;
pub mod service;
pub mod shared_responses;
#[cfg(test)]
mod stream_sharing_tests;
pub mod watch_stream;

pub use jwt_cache::JwtLimits;
pub use limits::Limits;
pub use metrics::WorkloadApiMetrics;
pub use refusal::Refusal;
pub use service::{WorkloadApiAdmission, WorkloadApiService};
pub use watch_stream::ResponseStream;
