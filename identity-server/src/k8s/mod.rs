//! Everything the server learns from the Kubernetes API. Only the server talks to it; agents
//! get what they need through `WatchNode`.
//!
//! - [`pods`]: an index of every pod, kept current by a watch: by UID, by node, by name.
//! - [`token_review`]: TokenReview of an agent's projected ServiceAccount token.

pub mod ca_source;
pub mod pods;
pub mod token_review;
