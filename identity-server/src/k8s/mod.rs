//! Everything the server learns from the Kubernetes API, and what it writes there (its CA
//! report; the LanyardIdentity statuses, on one replica at a time). Only the server talks to it; agents get what they need through `WatchNode`.
//!
//! - [`pods`]: an index of every pod, kept current by a watch: by UID, by node, by name.
//! - [`services`], [`endpoint_slices`]: what discovery needs of Services and EndpointSlices,
//!   each an [`object_index::ObjectIndex`] kept current by a watch.
//! - [`token_review`]: TokenReview of an agent's projected ServiceAccount token.
//! - [`ca_source`]: the CA from the CA Secret (and `--ca-jwt-secret`) and the bundle
//!   ConfigMap, watched and installed in the authority.
//! - [`ca_report`]: this replica's CA report ConfigMap, for `lanyard ca status`.
//! - [`identities`]: the LanyardIdentity and Namespace informers that rebuild the registry.
//! - [`federations`]: the LanyardFederation informer: the federated trust domains to fetch.
//! - [`identity_status`]: the `lanyard-identity-status` Lease, and the LanyardIdentity
//!   statuses its holder writes.
//! - [`write_schedule`]: when those periodic writes (report, statuses) are next due.

pub mod ca_report;
pub mod ca_source;
pub mod endpoint_slices;
pub mod federations;
pub mod identities;
pub mod identity_status;
pub mod object_index;
pub mod pods;
pub mod services;
pub mod token_review;
pub mod write_schedule;
