//! lanyard-client: the client side of the agent's Unix socket, shared by lanyard-proxy,
//! `lanyard-agent api` and the `lanyard` CLI, so none of them depends on another daemon.
//!
//! Module map:
//! - [`endpoint`]: the one parser of socket addresses (`SPIFFE_ENDPOINT_SOCKET` rules:
//!   `unix:` URIs and absolute paths), and flag / environment / default precedence.
//! - [`channel`]: the tonic channel over the Unix socket and the Workload API request header.
//! - [`backoff`]: the one retry backoff: exponential, jittered, capped.
//! - [`x509_watcher`]: follows `FetchX509SVID` forever, keeping an `SvidStore` current.
//! - [`discovery`]: `lanyard.discovery.v1.Discovery` calls (`Resolve`, `Watch`) and answers.
//! - [`tap`]: following a proxy's tap (its `--admin` line stream).
//! - [`fetch`]: one-shot Workload API calls for tools (X.509-SVIDs, JWT-SVIDs, bundles,
//!   JWT validation), bounded by a timeout.
//! - [`files`]: writing `svid.pem`, `svid.key` (0600) and `bundle.pem` as new files, never
//!   through a file or symlink already there.
//! - [`struct_json`]: a protobuf `Struct` (JWT claims) as JSON.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod channel;
pub mod discovery;
pub mod endpoint;
pub mod fetch;
pub mod files;
pub mod struct_json;
pub mod tap;
pub mod x509_watcher;
