//! Registration the Kubernetes way: which SPIFFE ID, DNS names and TTLs a pod is issued.
//!
//! Every lanyard-server replica reads the cluster-scoped `LanyardIdentity` resources
//! (`lanyard.dev/v1alpha1`) through its own informer and decides each pod's identity with this
//! crate; `lanyard identities` runs the same code over the same objects, so what it prints is
//! what the servers issue.
//!
//! Module map:
//! - [`resource`]: the `LanyardIdentity` resource as stored (spec, status), its API names.
//! - [`template`]: `{placeholder}` templates for SPIFFE IDs, DNS names and workload selectors,
//!   parsed once and rendered per pod.
//! - [`label_selector`]: Kubernetes label selectors (`matchLabels`, `matchExpressions`).
//! - [`compiled`]: a resource checked once (templates parsed, TTLs bounded, reserved and
//!   foreign IDs refused) or the reason it is refused as a whole.
//! - [`registry`]: all resources of our class plus the default template: one pod's
//!   [`registry::Resolution`] (issued, refused and why, or unregistered), and with
//!   [`registry::Registry::decide`] each selecting resource's part in it.
//! - [`status`]: each resource's `status` (pods matched, issued, refused and why).
//! - [`crd`]: the CustomResourceDefinition manifests (OpenAPI schemas and CEL rules).
//! - [`federation`]: the `LanyardFederation` resource and `[[federation]]` configuration,
//!   checked into a [`federation::FederatedDomain`] (a trust domain and its bundle endpoint),
//!   and the `federatesWith` check shared with static entries.

#![forbid(unsafe_code)]

pub mod compiled;
pub mod crd;
pub mod federation;
pub mod label_selector;
pub mod registry;
pub mod resource;
pub mod status;
pub mod template;

pub use registry::{
    ClassPolicy, IdentitySource, PodDecision, PodFacts, PodIdentity, PodRefusal, RefusalReason,
    Registry, RegistryConfig, Resolution, ResourceOutcome,
};
pub use resource::{LanyardIdentity, LanyardIdentitySpec, LanyardIdentityStatus};
