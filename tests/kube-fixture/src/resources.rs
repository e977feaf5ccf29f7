//! The resource types the fixture serves, and how a JSON body becomes a stored object.
//!
//! Every body is decoded into its `k8s-openapi` type and re-encoded before it is stored, so an
//! object the fixture holds is exactly what the typed client would produce: unknown fields are
//! dropped and a wrongly typed field is refused with `400 BadRequest`, much like the API
//! server's strict decoding drops unknown fields with a warning. List bodies are built as
//! `k8s_openapi::List<K>`.

use std::any::TypeId;

use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, Node, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ListMeta, ObjectMeta};
use k8s_openapi::{
    ClusterResourceScope, ListableResource, Metadata, NamespaceResourceScope, Resource,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::selectors::SelectableField;
use crate::status::ApiError;

/// A `k8s-openapi` type the fixture can store: a listable resource with standard metadata.
///
/// Implemented for every such type; [`ResourceType::lookup`] says whether the fixture serves it.
pub trait FixtureResource:
    Resource<Scope: Scope>
    + ListableResource
    + Metadata<Ty = ObjectMeta>
    + Serialize
    + DeserializeOwned
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<K> FixtureResource for K where
    K: Resource<Scope: Scope>
        + ListableResource
        + Metadata<Ty = ObjectMeta>
        + Serialize
        + DeserializeOwned
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// One served resource type: its REST coordinates and its typed codec.
#[derive(Debug)]
pub struct ResourceType {
    /// API group, "" for the core group.
    pub group: &'static str,
    /// API version within the group.
    pub version: &'static str,
    /// `apiVersion` as written in bodies (`v1`, `discovery.k8s.io/v1`).
    pub api_version: &'static str,
    /// `kind`.
    pub kind: &'static str,
    /// The plural path segment (`pods`).
    pub plural: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// Whether the type has a `status` subresource (the main resource then ignores status
    /// changes, and `/status` changes only status).
    pub has_status: bool,
    /// Field selectors supported beyond `metadata.name` / `metadata.namespace`.
    pub fields: &'static [SelectableField],
    type_id: fn() -> TypeId,
    normalize: fn(Value) -> Result<Value, String>,
    encode_list: fn(Vec<Value>, ListMeta) -> Result<Value, String>,
}

/// Pod fields the API server accepts in field selectors (pod `GetAttrs` in
/// `pkg/registry/core/pod/strategy.go`).
const POD_FIELDS: &[SelectableField] = &[
    field("spec.nodeName", "/spec/nodeName", ""),
    field("spec.restartPolicy", "/spec/restartPolicy", ""),
    field("spec.schedulerName", "/spec/schedulerName", ""),
    field("spec.serviceAccountName", "/spec/serviceAccountName", ""),
    field("spec.hostNetwork", "/spec/hostNetwork", "false"),
    field("status.phase", "/status/phase", ""),
    field("status.podIP", "/status/podIP", ""),
    field("status.nominatedNodeName", "/status/nominatedNodeName", ""),
];
const SECRET_FIELDS: &[SelectableField] = &[field("type", "/type", "")];
const NAMESPACE_FIELDS: &[SelectableField] = &[field("status.phase", "/status/phase", "")];
const NODE_FIELDS: &[SelectableField] =
    &[field("spec.unschedulable", "/spec/unschedulable", "false")];

const fn field(
    name: &'static str,
    pointer: &'static str,
    default: &'static str,
) -> SelectableField {
    SelectableField {
        name,
        pointer,
        default,
    }
}

/// Every resource type the fixture serves.
pub static SERVED: &[ResourceType] = &[
    ResourceType::of::<Pod>(true, POD_FIELDS),
    ResourceType::of::<Service>(true, &[]),
    ResourceType::of::<Secret>(false, SECRET_FIELDS),
    ResourceType::of::<ConfigMap>(false, &[]),
    ResourceType::of::<ServiceAccount>(false, &[]),
    ResourceType::of::<Namespace>(true, NAMESPACE_FIELDS),
    ResourceType::of::<Node>(true, NODE_FIELDS),
    ResourceType::of::<EndpointSlice>(false, &[]),
    ResourceType::of::<Role>(false, &[]),
    ResourceType::of::<ClusterRole>(false, &[]),
    ResourceType::of::<RoleBinding>(false, &[]),
    ResourceType::of::<ClusterRoleBinding>(false, &[]),
];

impl ResourceType {
    const fn of<K: FixtureResource>(has_status: bool, fields: &'static [SelectableField]) -> Self {
        Self {
            group: K::GROUP,
            version: K::VERSION,
            api_version: K::API_VERSION,
            kind: K::KIND,
            plural: K::URL_PATH_SEGMENT,
            namespaced: <K::Scope as Scope>::NAMESPACED,
            has_status,
            fields,
            type_id: TypeId::of::<K>,
            normalize: normalize::<K>,
            encode_list: encode_list::<K>,
        }
    }

    /// The served type with this group, version and plural.
    pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
        SERVED
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
    }

    /// The served type for `K`, or `404 NotFound` if the fixture does not serve it.
    pub fn lookup<K: FixtureResource>() -> Result<&'static ResourceType, ApiError> {
        SERVED
            .iter()
            .find(|t| (t.type_id)() == TypeId::of::<K>())
            .ok_or_else(|| {
                ApiError::new(
                    crate::status::Reason::NotFound,
                    format!("the fixture does not serve {}", K::KIND),
                )
            })
    }

    /// Index of this type in [`SERVED`], used as the storage key prefix.
    pub(crate) fn index(&'static self) -> usize {
        SERVED
            .iter()
            .position(|t| std::ptr::eq(t, self))
            .unwrap_or(usize::MAX)
    }

    /// Decodes a body as this type, filling in `apiVersion`/`kind` when absent and refusing a
    /// body of another kind; returns the canonical JSON.
    pub fn normalize(&self, mut body: Value) -> Result<Value, ApiError> {
        let Some(map) = body.as_object_mut() else {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        };
        for (key, expected) in [("apiVersion", self.api_version), ("kind", self.kind)] {
            match map.get(key) {
                None | Some(Value::Null) => {
                    map.insert(key.to_string(), Value::String(expected.to_string()));
                }
                Some(Value::String(s)) if s == expected => {}
                Some(other) => {
                    return Err(ApiError::bad_request(format!(
                        "{key} {other} does not match the requested resource ({expected})"
                    )));
                }
            }
        }
        if self.kind == "Secret" {
            fold_string_data(map);
        }
        (self.normalize)(body)
            .map_err(|e| ApiError::bad_request(format!("unable to decode {} body: {e}", self.kind)))
    }

    /// Builds the `XxxList` body for these (already canonical) items.
    pub fn encode_list(&self, items: Vec<Value>, meta: ListMeta) -> Result<Value, ApiError> {
        (self.encode_list)(items, meta).map_err(ApiError::internal)
    }
}

/// Whether a `k8s-openapi` scope marker means "namespaced" (a constant, so the registry can be
/// a `static`).
pub trait Scope {
    /// True for namespaced resources.
    const NAMESPACED: bool;
}

impl Scope for NamespaceResourceScope {
    const NAMESPACED: bool = true;
}

impl Scope for ClusterResourceScope {
    const NAMESPACED: bool = false;
}

fn normalize<K: FixtureResource>(body: Value) -> Result<Value, String> {
    let typed: K = serde_json::from_value(body).map_err(|e| e.to_string())?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

fn encode_list<K: FixtureResource>(items: Vec<Value>, metadata: ListMeta) -> Result<Value, String> {
    let items = items
        .into_iter()
        .map(serde_json::from_value::<K>)
        .collect::<Result<Vec<K>, _>>()
        .map_err(|e| e.to_string())?;
    serde_json::to_value(k8s_openapi::List { items, metadata }).map_err(|e| e.to_string())
}

/// The API server folds a Secret's write-only `stringData` into `data` (base64) and never
/// returns `stringData`.
fn fold_string_data(map: &mut serde_json::Map<String, Value>) {
    use base64::Engine as _;
    let Some(Value::Object(string_data)) = map.remove("stringData") else {
        return;
    };
    let data = map
        .entry("data")
        .or_insert_with(|| Value::Object(Default::default()));
    if data.is_null() {
        *data = Value::Object(Default::default());
    }
    if let Value::Object(data) = data {
        for (k, v) in string_data {
            if let Value::String(s) = v {
                let encoded = base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
                data.insert(k, Value::String(encoded));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn registry_knows_scopes_and_paths() {
        let pods = ResourceType::lookup::<Pod>().unwrap();
        assert!(pods.namespaced);
        assert_eq!(pods.plural, "pods");
        let crb = ResourceType::lookup::<ClusterRoleBinding>().unwrap();
        assert!(!crb.namespaced);
        assert_eq!(crb.group, "rbac.authorization.k8s.io");
        let slices = ResourceType::find("discovery.k8s.io", "v1", "endpointslices").unwrap();
        assert_eq!(slices.kind, "EndpointSlice");
        assert!(ResourceType::find("", "v1", "deployments").is_none());
        assert!(ResourceType::lookup::<k8s_openapi::api::apps::v1::Deployment>().is_err());
    }

    #[test]
    fn normalize_fills_type_meta_and_refuses_other_kinds() {
        let pods = ResourceType::lookup::<Pod>().unwrap();
        let v = pods
            .normalize(json!({"metadata": {"name": "p"}, "bogus": 1}))
            .unwrap();
        assert_eq!(v["kind"], "Pod");
        assert_eq!(v["apiVersion"], "v1");
        assert!(v.get("bogus").is_none());
        let err = pods
            .normalize(json!({"kind": "Secret", "metadata": {"name": "p"}}))
            .unwrap_err();
        assert_eq!(err.code(), 400);
        let err = pods
            .normalize(json!({"metadata": {"name": 5}}))
            .unwrap_err();
        assert_eq!(err.code(), 400);
    }

    #[test]
    fn secret_string_data_is_folded_into_data() {
        let secrets = ResourceType::lookup::<Secret>().unwrap();
        let v = secrets
            .normalize(json!({"metadata": {"name": "s"}, "stringData": {"a": "hi"}}))
            .unwrap();
        assert_eq!(v["data"]["a"], "aGk=");
        assert!(v.get("stringData").is_none());
    }
}
