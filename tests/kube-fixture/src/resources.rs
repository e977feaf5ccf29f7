//! The resource types the fixture serves, and how a JSON body becomes a stored object.
//!
//! Two kinds of type share one [`ResourceType`] description, handed around as a [`TypeRef`]:
//!
//! - **built-in** types (the [`builtin`] table): every body is decoded into its `k8s-openapi`
//!   type and re-encoded before it is stored, so an object the fixture holds is exactly what
//!   the typed client would produce: unknown fields are dropped and a wrongly typed field is
//!   refused with `400 BadRequest`, much like the API server's strict decoding drops unknown
//!   fields with a warning. List bodies are built as `k8s_openapi::List<K>`.
//! - **custom** types, one per served version of a CustomResourceDefinition (see
//!   [`crate::custom_resources`]): bodies are pruned, defaulted and validated against the
//!   version's schema ([`crate::schema`]) and stored in the CRD's storage version; every
//!   served version reads and writes the same objects, with `apiVersion` rewritten (the
//!   `None` conversion strategy).

use std::any::TypeId;
use std::borrow::Cow;
use std::sync::{Arc, LazyLock};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, Node, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ListMeta, ObjectMeta};
use k8s_openapi::{
    ClusterResourceScope, ListableResource, Metadata, NamespaceResourceScope, Resource,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::custom_resources::CustomType;
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

/// A served type, shared by the router, the store and open watches.
pub type TypeRef = Arc<ResourceType>;

/// Where a type's objects are kept: built-in types by their row in [`builtin`], custom types
/// by their CRD's name (shared by all its versions).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StorageKey {
    /// Row of the built-in table.
    Builtin(usize),
    /// `PLURAL.GROUP`, the CRD's name.
    Custom(String),
}

/// One served resource type: its REST coordinates and its codec.
#[derive(Debug)]
pub struct ResourceType {
    /// API group, "" for the core group.
    pub group: Cow<'static, str>,
    /// API version within the group.
    pub version: Cow<'static, str>,
    /// `apiVersion` as written in bodies (`v1`, `discovery.k8s.io/v1`).
    pub api_version: Cow<'static, str>,
    /// `kind`.
    pub kind: Cow<'static, str>,
    /// The plural path segment (`pods`).
    pub plural: Cow<'static, str>,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// Whether the type has a `status` subresource (the main resource then ignores status
    /// changes, and `/status` changes only status).
    pub has_status: bool,
    /// Whether the server owns `metadata.generation`: 1 on create, +1 when anything but
    /// `metadata` (and `status`, with a status subresource) changes.
    pub manages_generation: bool,
    /// Field selectors supported beyond `metadata.name` / `metadata.namespace`.
    pub fields: &'static [SelectableField],
    /// Where its objects are stored.
    pub storage: StorageKey,
    codec: Codec,
}

/// How bodies of a type are decoded, checked and listed.
enum Codec {
    /// A `k8s-openapi` type.
    Typed {
        type_id: fn() -> TypeId,
        normalize: fn(Value) -> Result<Value, String>,
        encode_list: fn(Vec<Value>, ListMeta) -> Result<Value, String>,
    },
    /// A version of a CustomResourceDefinition.
    Custom(Box<CustomType>),
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Codec::Typed { .. } => f.write_str("Typed"),
            Codec::Custom(c) => f.debug_tuple("Custom").field(c).finish(),
        }
    }
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

/// Whether a built-in type has a `status` subresource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Subresource,
    None,
}

static BUILTIN: LazyLock<Vec<TypeRef>> = LazyLock::new(|| {
    use Status::{None as NoStatus, Subresource};
    let rows = [
        ResourceType::of::<Pod>(Subresource, POD_FIELDS),
        ResourceType::of::<Service>(Subresource, &[]),
        ResourceType::of::<Secret>(NoStatus, SECRET_FIELDS),
        ResourceType::of::<ConfigMap>(NoStatus, &[]),
        ResourceType::of::<ServiceAccount>(NoStatus, &[]),
        ResourceType::of::<Namespace>(Subresource, NAMESPACE_FIELDS),
        ResourceType::of::<Node>(Subresource, NODE_FIELDS),
        ResourceType::of::<EndpointSlice>(NoStatus, &[]),
        ResourceType::of::<Role>(NoStatus, &[]),
        ResourceType::of::<ClusterRole>(NoStatus, &[]),
        ResourceType::of::<RoleBinding>(NoStatus, &[]),
        ResourceType::of::<ClusterRoleBinding>(NoStatus, &[]),
        ResourceType::of::<Lease>(NoStatus, &[]),
        ResourceType {
            // The API server maintains a CRD's generation.
            manages_generation: true,
            ..ResourceType::of::<CustomResourceDefinition>(Subresource, &[])
        },
    ];
    rows.into_iter()
        .enumerate()
        .map(|(i, rt)| {
            Arc::new(ResourceType {
                storage: StorageKey::Builtin(i),
                ..rt
            })
        })
        .collect()
});

/// Every built-in resource type the fixture serves (custom types come and go with their
/// CRDs; see [`crate::Store::resolve`]).
pub fn builtin() -> &'static [TypeRef] {
    &BUILTIN
}

impl ResourceType {
    fn of<K: FixtureResource>(status: Status, fields: &'static [SelectableField]) -> Self {
        Self {
            group: Cow::Borrowed(K::GROUP),
            version: Cow::Borrowed(K::VERSION),
            api_version: Cow::Borrowed(K::API_VERSION),
            kind: Cow::Borrowed(K::KIND),
            plural: Cow::Borrowed(K::URL_PATH_SEGMENT),
            namespaced: <K::Scope as Scope>::NAMESPACED,
            has_status: status == Status::Subresource,
            manages_generation: false,
            fields,
            storage: StorageKey::Builtin(usize::MAX),
            codec: Codec::Typed {
                type_id: TypeId::of::<K>,
                normalize: normalize::<K>,
                encode_list: encode_list::<K>,
            },
        }
    }

    /// A served version of a custom resource.
    pub(crate) fn custom(
        group: &str,
        version: &str,
        kind: &str,
        plural: &str,
        namespaced: bool,
        has_status: bool,
        codec: CustomType,
    ) -> Self {
        Self {
            group: Cow::Owned(group.to_string()),
            version: Cow::Owned(version.to_string()),
            api_version: Cow::Owned(format!("{group}/{version}")),
            kind: Cow::Owned(kind.to_string()),
            plural: Cow::Owned(plural.to_string()),
            namespaced,
            has_status,
            manages_generation: true,
            fields: &[],
            storage: StorageKey::Custom(format!("{plural}.{group}")),
            codec: Codec::Custom(Box::new(codec)),
        }
    }

    /// The built-in type with this group, version and plural.
    pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static TypeRef> {
        BUILTIN
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
    }

    /// The built-in type with this `apiVersion` and `kind`.
    pub fn find_kind(api_version: &str, kind: &str) -> Option<&'static TypeRef> {
        BUILTIN
            .iter()
            .find(|t| t.api_version == api_version && t.kind == kind)
    }

    /// The served type for `K`, or `404 NotFound` if the fixture does not serve it.
    pub fn lookup<K: FixtureResource>() -> Result<&'static TypeRef, ApiError> {
        BUILTIN
            .iter()
            .find(|t| matches!(t.codec, Codec::Typed { type_id, .. } if type_id() == TypeId::of::<K>()))
            .ok_or_else(|| {
                ApiError::new(
                    crate::status::Reason::NotFound,
                    format!("the fixture does not serve {}", K::KIND),
                )
            })
    }

    /// Whether this is a version of a custom resource.
    pub fn is_custom(&self) -> bool {
        matches!(self.codec, Codec::Custom(_))
    }

    /// Whether this is the CustomResourceDefinition type itself.
    pub(crate) fn is_crd(&self) -> bool {
        matches!(self.codec, Codec::Typed { type_id, .. } if type_id() == TypeId::of::<CustomResourceDefinition>())
    }

    /// Decodes a body as this type, filling in `apiVersion`/`kind` when absent and refusing a
    /// body of another kind; returns the canonical JSON (for a custom type: pruned, defaulted
    /// and in the storage version).
    pub fn normalize(&self, mut body: Value) -> Result<Value, ApiError> {
        let Some(map) = body.as_object_mut() else {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        };
        for (key, expected) in [("apiVersion", &self.api_version), ("kind", &self.kind)] {
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
        let result = match &self.codec {
            Codec::Typed { normalize, .. } => normalize(body),
            Codec::Custom(custom) => custom.normalize(body),
        };
        result
            .map_err(|e| ApiError::bad_request(format!("unable to decode {} body: {e}", self.kind)))
    }

    /// Checks a complete object (after the server's own changes) as the API server's
    /// validation would: the schema of a custom type; nothing more for built-in types.
    pub(crate) fn validate(&self, object: &Value) -> Result<(), ApiError> {
        let Codec::Custom(custom) = &self.codec else {
            return Ok(());
        };
        let errors = custom.validate(object);
        if errors.is_empty() {
            return Ok(());
        }
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        Err(ApiError::invalid_object(
            &self.group,
            &self.kind,
            name,
            errors,
        ))
    }

    /// The stored object as this type's version shows it (custom types rewrite `apiVersion`).
    pub(crate) fn present(&self, mut object: Value) -> Value {
        if self.is_custom()
            && let Some(map) = object.as_object_mut()
        {
            map.insert(
                "apiVersion".into(),
                Value::String(self.api_version.to_string()),
            );
        }
        object
    }

    /// Builds the `XxxList` body for these (already canonical) items.
    pub fn encode_list(&self, items: Vec<Value>, meta: ListMeta) -> Result<Value, ApiError> {
        match &self.codec {
            Codec::Typed { encode_list, .. } => {
                encode_list(items, meta).map_err(ApiError::internal)
            }
            Codec::Custom(custom) => Ok(serde_json::json!({
                "apiVersion": self.api_version,
                "kind": custom.list_kind(),
                "metadata": meta,
                "items": items.into_iter().map(|o| self.present(o)).collect::<Vec<_>>(),
            })),
        }
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
