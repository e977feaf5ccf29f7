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
//! [`crate::k8s::pods::proxy_ready`]), and the pod ID template yields an ID for it. These
//! names are the injection contract in [`lanyard_proto::inject`], shared with the CLI.

pub mod feed;
pub mod resolver;

pub use lanyard_proto::inject::{INJECT_ANNOTATION, INJECT_ENABLED, PROXY_CONTAINER};

pub use feed::{DiscoveryFeedService, FeedLimits};
pub use resolver::DiscoverySources;
