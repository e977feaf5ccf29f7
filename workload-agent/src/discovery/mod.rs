//! `lanyard.discovery.v1` in the agent: which destinations are meshed and as which IDs, for
//! the proxy, served on the agent's Unix socket next to the Workload API.
//!
//! - [`service`]: the `Discovery` service (`Resolve`, `Watch`) and who may call it, a plain
//!   gRPC service mounted on the agent's socket by [`crate::socket::serve()`] next to the
//!   Workload API.
//!
//! What it answers from is server-facing and lives with the other server-facing code: the
//! cache of answers per destination ([`crate::server_client::discovery_cache`]) and the
//! `DiscoveryFeed` that keeps it current ([`crate::server_client::discovery_feed`]).
//!
//! Distribution: the agent asks the server only about destinations its callers look up, and
//! the server pushes changes for those only (on-demand lookups with watches, chosen over
//! pushing the whole map to every agent; measured in `docs/benchmarks.md`).

pub mod service;

use std::net::IpAddr;

use lanyard_proto::discovery::v1 as wire;

pub use service::{
    DiscoveryAdmission, DiscoveryRefusal, DiscoveryService, REFUSAL_TRAILER, ResolveResult,
};

/// Open `Watch` streams per caller (uid, pod).
pub const WATCHES_PER_CALLER: usize = 256;

/// A destination: an IP and a TCP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Destination {
    pub address: IpAddr,
    pub port: u16,
}

impl Destination {
    /// Checks a wire destination; the refusal text when it is unusable.
    pub fn from_wire(d: Option<&wire::Destination>) -> Result<Self, &'static str> {
        let d = d.ok_or("a destination is required")?;
        const BAD_ADDRESS: &str = "address must be an IPv4 or IPv6 literal (no brackets, no zone)";
        // Longer than any IP literal: refused before parsing.
        if d.address.len() > 45 {
            return Err(BAD_ADDRESS);
        }
        let address = d.address.parse().map_err(|_| BAD_ADDRESS)?;
        let port = u16::try_from(d.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or("port must be 1..65535")?;
        Ok(Self { address, port })
    }

    pub fn to_wire(self) -> wire::Destination {
        wire::Destination {
            address: self.address.to_string(),
            port: u32::from(self.port),
        }
    }
}
