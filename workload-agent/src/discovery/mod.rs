//! `lanyard.discovery.v1` in the agent: which destinations are meshed and as which IDs, for
//! the proxy, served on the agent's Unix socket next to the Workload API.
//!
//! - [`service`]: the `Discovery` service (`Resolve`, `Watch`) and who may call it, a plain
//!   gRPC service mounted on the agent's socket by [`crate::socket::serve()`] next to the
//!   Workload API.
//!
//! Destinations are checked by [`lanyard_proto::discovery_destination`], the same check the
//! server's `DiscoveryFeed` makes.
//!
//! What it answers from is server-facing and lives with the other server-facing code: the
//! cache of answers per destination ([`crate::server_client::discovery_cache`]) and the
//! `DiscoveryFeed` that keeps it current ([`crate::server_client::discovery_feed`]).
//!
//! Distribution: the agent asks the server only about destinations its callers look up, and
//! the server pushes changes for those only (on-demand lookups with watches, chosen over
//! pushing the whole map to every agent; measured in `docs/benchmarks.md`).

pub mod service;

pub use service::{
    DiscoveryAdmission, DiscoveryRefusal, DiscoveryService, REFUSAL_TRAILER, ResolveResult,
};

/// Open `Watch` streams per caller (uid, pod).
pub const WATCHES_PER_CALLER: usize = 256;
