//! lanyard-agent: the per-node agent that serves the SPIFFE Workload API on a Unix socket.
//!
//! Module map:
//! - [`attest`]: workload attestation: a Unix-socket caller's peer credentials to selectors
//!   (`unix:*`, pod UID and container ID from its cgroup).
//! - [`identities`]: the seam between the Workload API and the certificate manager.
//! - [`socket`]: the agent's Unix socket, its one owner: bind, accept (caller pinned,
//!   preface timeout, connection budget, the [`h2_authority`] layer), the one admission
//!   layer (header check, caller attested once per call and handed down as a typed
//!   [`socket::Caller`]) and the one [`socket::serve()`] that mounts the services below.
//! - [`workload_api`]: the SPIFFE Workload API, a plain service on that socket.
//! - [`sds`]: Envoy SDS v3 (`SecretDiscoveryService`), a plain service on that socket too:
//!   the caller's X.509-SVIDs and bundles as Envoy `Secret`s, pushed at every rotation.
//! - [`csi`]: the CSI node plugin `csi.lanyard.dev` on its own socket for the kubelet:
//!   publishing a pod's inline volume gives that pod a socket of its own (a pod socket,
//!   served by [`socket`]), its caller's pod known from the mount.
//! - [`discovery`]: `lanyard.discovery.v1`, a plain service on the same socket: which
//!   destinations are meshed, answered from the server-facing discovery cache.
//! - [`api_cli`]: `lanyard-agent api ...`, a Workload API client for humans and scripts.
//! - [`server_client`]: everything facing lanyard-server: the mTLS gRPC connection (server ID
//!   pinned; the `--trust-bundle` file read again when the server's certificate does not
//!   verify), its `SyncBundle` feed (bundles in; acknowledgements out: the installed bundle's
//!   version and the roots the held SVIDs chain to; `WatchBundle` with an older server; the
//!   federated bundles it carries, for the Workload API only, never trusted for the
//!   connection) and `WatchNode` feed, and the discovery cache with the `DiscoveryFeed` that
//!   keeps it current.
//! - [`manager`]: the certificate manager: resolves callers to identities from the node view
//!   (a pod's own identity only for callers showing its registration's workload selectors,
//!   e.g. `k8s:container-name`, with its Workload API hint and the federated trust domains
//!   its registration names), holds our own and the federated bundles, mints and renews their
//!   X.509-SVIDs, implements [`identities::WorkloadIdentities`].
//! - [`metrics`]: the agent's Prometheus metrics (server-facing half).
//! - [`h2_authority`]: a frame layer (applied by [`socket`] only) that rewrites the
//!   `:authority` h2 would refuse from grpc-core clients (py-spiffe), keeping HPACK tables in
//!   step.
//! - [`node_svid`]: node attestation (join token, k8s_psat), the node SVID saved in the data
//!   dir, and its renewal.
//! - [`config`]: `lanyard-agent run` flags, `LANYARD_*` env and `--config` TOML.
//! - [`run`]: wiring it all together for `lanyard-agent run`.

pub mod api_cli;
pub mod attest;
pub mod config;
pub mod csi;
pub mod discovery;
pub mod h2_authority;
pub mod identities;
pub mod manager;
pub mod metrics;
pub mod node_svid;
pub mod run;
pub mod sds;
pub mod server_client;
pub mod socket;
pub mod workload_api;
