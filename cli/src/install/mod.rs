//! `lanyard install`: the cluster manifests for a Lanyard control plane.
//!
//! - [`render`]: the deterministic objects (the `LanyardIdentity` and `LanyardFederation`
//!   CustomResourceDefinitions,
//!   namespace, ServiceAccounts, RBAC, the
//!   `lanyard-config` ConfigMap, Service, server Deployment, PodDisruptionBudget, CSIDriver,
//!   agent DaemonSet with its CSI registrar, and with `--cni` the CNI installer DaemonSet);
//! - [`rbac`]: ServiceAccounts and the RBAC of the server and of the CNI plugin;
//! - [`ca`]: the CA Secret and bundle ConfigMap of a CA generated on the spot (`--include-ca`).
//!
//! [`to_text`] prints them, the CRDs as the registration crate wrote them (comments included).
//! [`render::base_manifests`] is deterministic: `deploy/kubernetes/lanyard.yaml` is exactly
//! what `lanyard install` prints with the defaults, `deploy/kubernetes/cni/lanyard-cni.yaml`
//! what `--cni` adds or changes, and a test keeps them identical to the rendering. The CA is
//! not part of it: `lanyard ca init` creates the CA Secret and bundle ConfigMap directly
//! through the API (or cert-manager writes the Secret), because `kubectl apply` would copy the
//! Secret's key into its last-applied annotation and a later apply of the ConfigMap would undo
//! a root rotation. `--include-ca` still adds a CA generated on the spot ([`ca`]), with a
//! warning; `--ca-only` prints just those two objects.

pub mod ca;
pub mod rbac;
pub mod render;

use lanyard_svid::TrustDomain;
use serde_json::{Value, json};

use crate::images::Images;
use crate::yaml::Yaml;

/// Object names shared by the manifests, the server's flags and the tests.
pub const DEFAULT_NAMESPACE: &str = "lanyard";
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
pub const DEFAULT_REPLICAS: u16 = 2;
pub const MAX_REPLICAS: u16 = 100;
pub const SERVER_NAME: &str = "lanyard-server";
pub const AGENT_NAME: &str = "lanyard-agent";
pub const CA_SECRET_NAME: &str = "lanyard-ca";
pub const BUNDLE_CONFIGMAP_NAME: &str = "lanyard-bundle";
/// The audience of the agents' projected tokens (the server's `--k8s-audience`).
pub const AGENT_TOKEN_AUDIENCE: &str = "lanyard-server";

/// The standard labels; `app.kubernetes.io/name` is also each workload's selector.
pub fn labels(component: &str) -> Value {
    json!({"app.kubernetes.io/name": component, "app.kubernetes.io/part-of": "lanyard"})
}
/// The server's gRPC port (agents connect to the Service on it).
pub const SERVER_GRPC_PORT: u16 = 8081;
/// `/healthz`, `/readyz`, `/metrics` of the server and of the agent.
pub const HEALTH_PORT: u16 = 9090;
/// Where the agent serves the Workload API, on the node (a hostPath shared with pods): the
/// directory of [`lanyard_client::endpoint::DEFAULT_SOCKET`], the socket itself.
pub const SOCKET_DIR: &str = "/run/lanyard/sockets";
/// The CSI driver the agent serves (DESIGN §5): the `CSIDriver` object's name, the `driver`
/// of injected pods' inline volumes, the kubelet's plugin directory name.
pub const CSI_DRIVER_NAME: &str = "csi.lanyard.dev";
/// The ConfigMap of install-time settings `lanyard inject` reads from the install namespace.
pub const CONFIG_MAP_NAME: &str = "lanyard-config";
/// Its key naming how injected pods get their redirect rules: `cni` or `init`
/// ([`lanyard_redirect::REDIRECT_CNI`], [`lanyard_redirect::REDIRECT_INIT`]).
pub const CONFIG_REDIRECT_KEY: &str = "redirect";
/// The CNI plugin's installer DaemonSet, its ServiceAccount and its binary.
pub const CNI_NAME: &str = "lanyard-cni";
/// The `coordination.k8s.io` Lease (in the install namespace) whose holder writes the
/// LanyardIdentity statuses.
pub const STATUS_LEASE_NAME: &str = "lanyard-identity-status";

/// Why the options are refused.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("--trust-domain {0:?}: {1}")]
    TrustDomain(String, String),
    #[error(
        "--namespace {0:?}: not a Kubernetes namespace name (lowercase letters, digits, '-', at most 63)"
    )]
    Namespace(String),
    #[error("--replicas {0}: give 1 to {MAX_REPLICAS}")]
    Replicas(u16),
    #[error("{0}")]
    Images(#[from] crate::images::ImageError),
    #[error("{0}")]
    Ca(#[from] ca::MaterialError),
}

/// How injected pods get their redirect rules, cluster-wide: what `lanyard-config` says.
pub use lanyard_redirect::RedirectMode;

/// What the rendering depends on, validated.
#[derive(Clone, Debug)]
pub struct InstallOptions {
    pub trust_domain: TrustDomain,
    pub namespace: String,
    pub replicas: u16,
    pub images: Images,
    /// [`RedirectMode::Cni`] adds the CNI installer DaemonSet and its RBAC.
    pub redirect: RedirectMode,
}

impl InstallOptions {
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        replicas: u16,
        images: Images,
    ) -> Result<Self, InstallError> {
        let trust_domain = TrustDomain::new(trust_domain)
            .map_err(|e| InstallError::TrustDomain(trust_domain.to_owned(), e.to_string()))?;
        if !is_dns_label(namespace) {
            return Err(InstallError::Namespace(namespace.to_owned()));
        }
        if !(1..=MAX_REPLICAS).contains(&replicas) {
            return Err(InstallError::Replicas(replicas));
        }
        Ok(Self {
            trust_domain,
            namespace: namespace.to_owned(),
            replicas,
            images,
            redirect: RedirectMode::Init,
        })
    }

    /// These options with the CNI plugin installed (`--cni`): the installer DaemonSet, its
    /// ServiceAccount and RBAC, and `redirect: cni` in `lanyard-config`. The images should
    /// then include [`crate::images::INSTALL_CNI_COMPONENTS`] when pinned.
    pub fn with_cni(mut self) -> Self {
        self.redirect = RedirectMode::Cni;
        self
    }

    /// The defaults: what `deploy/kubernetes/` holds.
    pub fn defaults() -> Self {
        Self::new(
            DEFAULT_TRUST_DOMAIN,
            DEFAULT_NAMESPACE,
            DEFAULT_REPLICAS,
            Images::default(),
        )
        .expect("the defaults are valid")
    }

    /// `HOST:PORT` agents dial: the server Service's cluster DNS name.
    pub fn server_address(&self) -> String {
        format!("{SERVER_NAME}.{}.svc:{SERVER_GRPC_PORT}", self.namespace)
    }
}

/// Which parts `lanyard install` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parts {
    /// The base manifests with a generated CA's objects (`--include-ca`).
    All,
    /// The deterministic manifests only (`deploy/kubernetes/`): the default.
    WithoutCa,
    /// The generated CA Secret and bundle ConfigMap only.
    CaOnly,
}

/// The documents to print, in apply order: the CA objects come before the workloads that
/// need them.
pub fn render(options: &InstallOptions, parts: Parts, ca: Option<&ca::GeneratedCa>) -> Vec<Yaml> {
    let ca_docs: Vec<Yaml> = ca
        .map(|ca| vec![ca.secret(options), ca.configmap(options)])
        .unwrap_or_default();
    match parts {
        Parts::CaOnly => ca_docs,
        Parts::WithoutCa => render::base_manifests(options),
        Parts::All => {
            let base = render::base_manifests(options);
            let split = base
                .iter()
                .position(|d| d.get("kind").and_then(Yaml::as_str) == Some("Service"))
                .unwrap_or(base.len());
            let mut out = base[..split].to_vec();
            out.extend(ca_docs);
            out.extend_from_slice(&base[split..]);
            out
        }
    }
}

/// The text `lanyard install` prints for `docs` (from [`render`]): the CRDs, when they lead,
/// exactly as the registration crate writes them (their comments explain the schemas), then
/// the other documents re-emitted.
pub fn to_text(docs: &[Yaml]) -> String {
    let crds = render::crd();
    if docs.len() < crds.len() || docs[..crds.len()] != crds[..] {
        return crate::yaml::write_stream(docs);
    }
    let texts: Vec<&str> = lanyard_registration::crd::ALL_CRD_YAML
        .iter()
        .map(|text| text.strip_prefix("---\n").unwrap_or(text).trim_end())
        .collect();
    let mut out = format!("{}\n", texts.join("\n---\n"));
    let rest = &docs[crds.len()..];
    if !rest.is_empty() {
        out.push_str("---\n");
        out.push_str(&crate::yaml::write_stream(rest));
    }
    out
}

/// RFC 1123 label: what Kubernetes allows for namespace names.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}
