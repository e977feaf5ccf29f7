//! The `LanyardIdentity` custom resource (`lanyard.dev/v1alpha1`, cluster scoped) as the API
//! server stores it. Field names follow SPIRE's ClusterSPIFFEID where the concept is the same.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "lanyard.dev";
pub const VERSION: &str = "v1alpha1";
pub const API_VERSION: &str = "lanyard.dev/v1alpha1";
pub const KIND: &str = "LanyardIdentity";
pub const PLURAL: &str = "lanyardidentities";
pub const SINGULAR: &str = "lanyardidentity";
/// The class a server serves unless `--identity-class` says otherwise.
pub const DEFAULT_CLASS: &str = "lanyard";
/// The ID of pods no resource selects, unless `--pod-id-template` says otherwise (the server
/// and `lanyard identities` share it).
pub const DEFAULT_POD_ID_TEMPLATE: &str = "/ns/{namespace}/sa/{service_account}";

/// One registration: which pods it selects and what they are issued.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LanyardIdentity {
    #[serde(rename = "apiVersion", default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: LanyardIdentitySpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<LanyardIdentityStatus>,
}

impl LanyardIdentity {
    /// A new resource named `name` (apiVersion and kind filled in).
    pub fn new(name: &str, spec: LanyardIdentitySpec) -> Self {
        Self {
            api_version: API_VERSION.to_owned(),
            kind: KIND.to_owned(),
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..Default::default()
            },
            spec,
            status: None,
        }
    }

    /// `metadata.name`, or "" when absent.
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LanyardIdentitySpec {
    /// A path (`/ns/{namespace}/sa/{service_account}`) in the server's trust domain, or a
    /// whole `spiffe://{trust_domain}/...` ID. See [`crate::template`] for placeholders.
    #[serde(rename = "spiffeIDTemplate")]
    pub spiffe_id_template: String,
    /// Pods whose labels match; absent: every pod (in the selected namespaces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Namespaces whose labels match; absent: every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// DNS SANs added to the pod's X.509-SVIDs (the SPIFFE ID stays the only URI SAN).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_name_templates: Vec<String>,
    /// X.509-SVID lifetime, e.g. `1h`; absent: the server's `--x509-ttl`.
    #[serde(rename = "x509TTL", default, skip_serializing_if = "Option::is_none")]
    pub x509_ttl: Option<String>,
    /// JWT-SVID lifetime; absent: the server's `--jwt-ttl`.
    #[serde(rename = "jwtTTL", default, skip_serializing_if = "Option::is_none")]
    pub jwt_ttl: Option<String>,
    /// Selectors a caller in the pod must also show to be served this identity, e.g.
    /// `k8s:container-name:app` (so a sidecar in the same pod is not).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workload_selector_templates: Vec<String>,
    /// Which installation serves this resource; absent: see `--watch-classless`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// Applies to a pod only when no non-fallback resource selects it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fallback: bool,
    /// The Workload API `hint` of the X.509-SVID (tells a workload holding several apart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// Federated trust domains (bare names, `partner.example`) whose bundles the pods receive
    /// beside their own, and whose peers they can thus authenticate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub federates_with: Vec<String>,
}

/// Written by one server replica at a time (the holder of the status Lease).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LanyardIdentityStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Why the resource as a whole is refused (nothing is issued from it); absent when valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_error: Option<String>,
    /// Pods its selectors select (before conflicts and rendering).
    #[serde(default)]
    pub pods_matched: i64,
    /// Pods issued the identity it renders.
    #[serde(default)]
    pub pods_issued: i64,
    /// Pods selected but refused (render failed, or a conflicting resource).
    #[serde(default)]
    pub pods_refused: i64,
    /// The first refusals, sorted by pod ([`crate::status::MAX_LISTED_REFUSALS`] at most).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refusals: Vec<RefusedPod>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefusedPod {
    /// `namespace/name`.
    pub pod: String,
    /// A [`crate::registry::RefusalReason`] label.
    pub reason: String,
    pub message: String,
}

/// Makes a cluster-scoped `lanyard.dev/v1alpha1` type with a `metadata: ObjectMeta` field a
/// Kubernetes resource: kube's `Resource` comes from these k8s-openapi traits (its blanket
/// impl), so `kube::Api<T>` works without kube's derive macro.
macro_rules! cluster_resource {
    ($ty:ty, kind: $kind:expr, plural: $plural:expr, list_kind: $list_kind:expr) => {
        impl k8s_openapi::Resource for $ty {
            const API_VERSION: &'static str = $crate::resource::API_VERSION;
            const GROUP: &'static str = $crate::resource::GROUP;
            const KIND: &'static str = $kind;
            const VERSION: &'static str = $crate::resource::VERSION;
            const URL_PATH_SEGMENT: &'static str = $plural;
            type Scope = k8s_openapi::ClusterResourceScope;
        }

        impl k8s_openapi::Metadata for $ty {
            type Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
            fn metadata(&self) -> &Self::Ty {
                &self.metadata
            }
            fn metadata_mut(&mut self) -> &mut Self::Ty {
                &mut self.metadata
            }
        }

        impl k8s_openapi::ListableResource for $ty {
            const LIST_KIND: &'static str = $list_kind;
        }
    };
}
pub(crate) use cluster_resource;

cluster_resource!(LanyardIdentity, kind: KIND, plural: PLURAL, list_kind: "LanyardIdentityList");
