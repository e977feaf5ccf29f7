//! Everything the server learns from the Kubernetes API. Only the server talks to it; agents
//! get what they need through `WatchNode`.
//!
//! - [`pods`]: an index of every pod, kept current by a watch: by UID, by node, by name.
//! - [`services`], [`endpoint_slices`]: what discovery needs of Services and EndpointSlices,
//!   each an [`object_index::ObjectIndex`] kept current by a watch.
//! - [`token_review`]: TokenReview of an agent's projected ServiceAccount token.

pub mod ca_source;
pub mod endpoint_slices;
pub mod object_index;
pub mod pods;
pub mod services;
pub mod token_review;
