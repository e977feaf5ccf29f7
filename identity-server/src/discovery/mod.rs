//! Discovery: for any destination `address:port`, whether a meshed workload is behind it and
//! which SPIFFE ID it must present, derived from Pods, Services and EndpointSlices, and served
//! to agents by `lanyard.discovery.v1.DiscoveryFeed`.
//!
//! - [`resolver`]: the answer for one destination, from the three Kubernetes indexes.
//! - [`feed`]: the `DiscoveryFeed.Follow` stream: agents say which destinations they follow;
//!   each is answered once the indexes are listed, then again whenever its answer changes.
//!
//! A pod is *meshed* when it is active (not finished, not being deleted), carries the
//! annotation [`INJECT_ANNOTATION`]`: `[`INJECT_ENABLED`] that `lanyard inject` adds, and its
//! [`PROXY_CONTAINER`] container is running and ready per the pod status (see
//! [`crate::k8s::pods::proxy_ready`]), and the pod ID template yields an ID for it.

pub mod feed;
pub mod resolver;

/// The annotation `lanyard inject` puts on a pod template (the CLI's `ANNOTATION_INJECT` in
/// `cli/src/inject.rs`; the server does not depend on the CLI crate, so the name is repeated
/// here, once).
pub const INJECT_ANNOTATION: &str = "lanyard.dev/inject";
/// The annotation's value that means "the proxy is injected".
pub const INJECT_ENABLED: &str = "enabled";
/// The name of the injected proxy container (a native sidecar: an init container with
/// `restartPolicy: Always`); the CLI's `PROXY_CONTAINER`.
pub const PROXY_CONTAINER: &str = "lanyard-proxy";

pub use feed::{DiscoveryFeedService, FeedLimits};
pub use resolver::{Destination, DiscoverySources};
