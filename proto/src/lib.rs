//! Lanyard's wire types, generated at build time from `proto/` by protox and tonic-prost.
//!
//! - [`workload`]: the SPIFFE Workload API (`/SpiffeWorkloadAPI/*`), unchanged from the
//!   SPIFFE standards, served by lanyard-agent on its Unix socket.
//! - [`identity::v1`]: `lanyard.identity.v1`, what lanyard-agent asks of lanyard-server.
//! - [`discovery::v1`]: `lanyard.discovery.v1`, which destinations are meshed and as which
//!   IDs (agent socket service `Discovery`, server feed `DiscoveryFeed`).
//! - [`csi::v1`]: `csi.v1`, the Container Storage Interface (spec v1.12.0, vendored verbatim
//!   in `proto/csi/v1/`), whose `Identity` and `Node` services lanyard-agent serves as the
//!   `csi.lanyard.dev` node plugin.
//! - [`discovery_destination`]: a wire `Destination` checked into an IP and a TCP port, the
//!   one check the agent and the server share.
//! - [`inject`]: the injection contract (annotation, label, container and volume names)
//!   shared by `lanyard inject` and the server that reads pods.
//! - [`convert`]: wire messages to and from `lanyard-svid` domain types.

#![forbid(unsafe_code)]

pub mod convert;
pub mod discovery_destination;
pub mod inject;

/// The SPIFFE Workload API. The `.proto` has no package, so the generated module is `_`.
pub mod workload {
    tonic::include_proto!("_");
}

/// Lanyard's server API.
pub mod identity {
    pub mod v1 {
        tonic::include_proto!("lanyard.identity.v1");
    }
}

/// Lanyard discovery: the agent's `Discovery` socket service and the server's `DiscoveryFeed`.
pub mod discovery {
    pub mod v1 {
        tonic::include_proto!("lanyard.discovery.v1");
    }

    /// The response metadata key (a trailer, or a header of a trailers-only response) on every
    /// refusal of the agent's `Discovery` service, naming why a call was refused or a `Watch`
    /// ended; documented on `Discovery` in `discovery.proto`. Programs decide on it, never on
    /// the status message.
    pub const REFUSAL_TRAILER: &str = "lanyard-discovery-refusal";

    /// The [`REFUSAL_TRAILER`] value of an answer that expired at the agent (the server was
    /// unreachable for longer than the agent's TTL).
    pub const REFUSAL_EXPIRED: &str = "expired";
}

/// The Container Storage Interface, spec v1.12.0 (`proto/csi/v1/csi.proto`, unchanged).
pub mod csi {
    pub mod v1 {
        tonic::include_proto!("csi.v1");
    }
}

/// The metadata key every Workload API call must carry with the value `true`.
pub const WORKLOAD_API_HEADER: &str = "workload.spiffe.io";

/// The environment variable that tells SPIFFE clients where the Workload API is
/// (`unix:///path` or, for Lanyard's own clients, an absolute path).
pub const SPIFFE_ENDPOINT_SOCKET: &str = "SPIFFE_ENDPOINT_SOCKET";
