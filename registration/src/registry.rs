//! One pod's identity, decided over every resource of our class and the default template.
//!
//! CONTRACT (lead) - the rules, which docs/ARCHITECTURE.md will state:
//! 1. Resources of another class are ignored (another installation owns them); a resource
//!    without `className` is ours when `ClassPolicy::watch_classless`.
//! 2. A resource selects a pod when its namespace selector matches the namespace's labels and
//!    its pod selector the pod's labels. Non-fallback resources are considered first; fallback
//!    resources only when no non-fallback resource selects the pod; the default template only
//!    when no resource at all selects it (and it is enabled).
//! 3. Each selecting resource renders an identity (ID, DNS names, TTLs, workload selectors,
//!    hint). A render that fails, or yields an invalid, reserved or foreign ID, an invalid DNS
//!    name or selector, refuses the pod *for that resource*.
//! 4. One pod, one identity: when the selecting resources render different identities (in
//!    anything), the pod is refused with `Conflict` and gets none of them - and not the default
//!    either (a silent fallback would issue an ID no one asked for). Identical renders agree.
//! 5. A pod some resource selects but whose every render failed is refused (no default).

use std::collections::BTreeMap;
use std::time::Duration;

use lanyard_svid::selector::Selector;
use lanyard_svid::{SpiffeId, TrustDomain};

use crate::compiled::{CompiledIdentity, SpecError};
use crate::resource::LanyardIdentity;

/// What a pod is, as the server's informers see it.
#[derive(Debug, Clone, Copy)]
pub struct PodFacts<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
    pub service_account: &'a str,
    pub node_name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    /// `None`: the namespace is not (yet) known; a resource with a namespace selector then
    /// does not select the pod.
    pub namespace_labels: Option<&'a BTreeMap<String, String>>,
}

/// Which resources this installation serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassPolicy {
    pub class_name: String,
    pub watch_classless: bool,
}

impl Default for ClassPolicy {
    fn default() -> Self {
        Self {
            class_name: crate::resource::DEFAULT_CLASS.to_owned(),
            watch_classless: true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RegistryConfig {
    pub trust_domain: TrustDomain,
    pub class: ClassPolicy,
    /// `--pod-id-template`; `None` when turned off (`--no-default-pod-identity`).
    pub default_template: Option<String>,
}

/// What a pod is issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    pub spiffe_id: SpiffeId,
    pub dns_names: Vec<String>,
    pub x509_ttl: Option<Duration>,
    pub jwt_ttl: Option<Duration>,
    pub workload_selectors: Vec<Selector>,
    pub hint: String,
    pub source: IdentitySource,
}

/// What named the identity. `Display`: `LanyardIdentity/<name>` or `default-template`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySource {
    Resource(String),
    DefaultTemplate,
}

impl std::fmt::Display for IdentitySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Resource(name) => write!(f, "{}/{name}", crate::resource::KIND),
            Self::DefaultTemplate => f.write_str("default-template"),
        }
    }
}

/// Why a pod gets no identity. `Display` is the metric and status label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefusalReason {
    /// A placeholder's value is missing (a label the pod does not have).
    MissingValue,
    /// The rendered text is not a valid SPIFFE ID.
    InvalidId,
    /// The rendered ID is under `/lanyard/`.
    ReservedId,
    /// The rendered ID is in another trust domain.
    ForeignId,
    /// A rendered DNS name is not a valid DNS name.
    InvalidDnsName,
    /// A rendered workload selector does not parse.
    InvalidSelector,
    /// Two or more resources render different identities for the pod.
    Conflict,
}

impl std::fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::MissingValue => "missing_value",
            Self::InvalidId => "invalid_id",
            Self::ReservedId => "reserved_id",
            Self::ForeignId => "foreign_id",
            Self::InvalidDnsName => "invalid_dns_name",
            Self::InvalidSelector => "invalid_selector",
            Self::Conflict => "conflict",
        })
    }
}

/// A refusal: why, a sentence, and which resources were involved (empty: the default
/// template).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRefusal {
    pub reason: RefusalReason,
    pub message: String,
    pub resources: Vec<String>,
}

/// The decision for one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    Issued(PodIdentity),
    Refused(PodRefusal),
    /// Nothing selects the pod and the default template is off.
    Unregistered,
}

/// Every resource of our class, compiled, plus the default template.
#[derive(Debug, Clone)]
pub struct Registry {
    config: RegistryConfig,
    identities: Vec<CompiledIdentity>,
    spec_errors: BTreeMap<String, SpecError>,
}

impl Registry {
    /// Compiles `resources` (other classes dropped, invalid ones kept as spec errors).
    /// `default_template` must already be valid (checked at startup with [`Self::check_default_template`]).
    pub fn new(config: RegistryConfig, resources: &[LanyardIdentity]) -> Self {
        let _ = (config, resources);
        todo!("H1")
    }

    /// Checks a `--pod-id-template` at startup.
    pub fn check_default_template(template: &str) -> Result<(), SpecError> {
        let _ = template;
        todo!("H1")
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.config.trust_domain
    }

    /// The resources of our class that are valid, by name.
    pub fn identities(&self) -> &[CompiledIdentity] {
        &self.identities
    }

    /// Resources of our class refused as a whole, by name.
    pub fn spec_errors(&self) -> &BTreeMap<String, SpecError> {
        &self.spec_errors
    }

    /// One pod's identity per the rules above.
    pub fn resolve(&self, pod: &PodFacts<'_>) -> Resolution {
        let _ = pod;
        todo!("H1")
    }
}
