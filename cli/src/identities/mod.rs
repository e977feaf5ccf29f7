//! `lanyard identities`: what every pod is issued, and why, decided by the same code the
//! servers run ([`lanyard_registration::Registry`]) over the same objects (LanyardIdentities,
//! Namespaces, Pods) with the same defaults, so what it prints is what a server would issue.
//!
//! Module map:
//! - [`cluster`]: the objects read through the kube client `lanyard ca` uses (KUBECONFIG,
//!   each call bounded), and the trust domain from the installation's bundle ConfigMap.
//! - [`report`]: the decision for every pod and the resources refused as a whole, printed as a
//!   table or as JSON (the stable shape tools read).

pub mod cluster;
pub mod report;

use lanyard_registration::ClassPolicy;

use crate::ca::kube::KubeError;

pub use self::report::{Output, Report};

/// The server's `--pod-id-template` default.
pub use lanyard_registration::resource::DEFAULT_POD_ID_TEMPLATE;

/// The registration settings, named as the server's flags are.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--trust-domain`; `None`: the installation's, read from its bundle ConfigMap.
    pub trust_domain: Option<String>,
    /// `--identity-class`, `--watch-classless`.
    pub class: ClassPolicy,
    /// `--pod-id-template`; `None` with `--no-default-pod-identity`.
    pub default_template: Option<String>,
    /// `--pod-namespace`: only this namespace's pods (all namespaces are still read, for the
    /// resources' namespace selectors).
    pub pod_namespace: Option<String>,
}

/// Why `lanyard identities` printed nothing.
#[derive(Debug, thiserror::Error)]
pub enum IdentitiesError {
    #[error(
        "LanyardIdentity CRD not installed (lanyard install prints it): the API server {server} does not serve lanyardidentities.lanyard.dev"
    )]
    CrdNotInstalled { server: String },
    #[error(
        "the trust domain: {reason}; give --trust-domain (or --namespace/--bundle-configmap of the installation)"
    )]
    NoTrustDomain { reason: String },
    #[error("--trust-domain {given:?}: {message}")]
    TrustDomain { given: String, message: String },
    #[error("--pod-id-template {given:?}: {message}")]
    DefaultTemplate { given: String, message: String },
    #[error("{0}")]
    Kube(#[from] KubeError),
}
