//! CustomResourceDefinitions: what the API server checks in a CRD, the status it reports,
//! and the resource types a CRD defines while it exists.
//!
//! Reference: "Extend the Kubernetes API with CustomResourceDefinitions"
//! (<https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/>)
//! and `ValidateCustomResourceDefinition` in `k8s.io/apiextensions-apiserver`.
//!
//! - A CRD is refused with `422 Invalid` unless `metadata.name` is `PLURAL.GROUP`, the group
//!   has a dot, `names.plural` and `names.kind` are set, `scope` is `Cluster` or
//!   `Namespaced`, version names are unique, exactly one version is the storage version, at
//!   least one is served, and every version has a structural `openAPIV3Schema` of
//!   `type: object` that compiles (see [`crate::schema`]). `scope` cannot change. A CRD
//!   for a built-in resource (`leases.coordination.k8s.io`) is refused (the API server
//!   protects `*.k8s.io` groups).
//! - On every write the fixture sets `status.acceptedNames` (with `singular` and `listKind`
//!   defaulted), `storedVersions`, and the conditions `NamesAccepted=True` and
//!   `Established=True` at once (a real API server takes a moment; clients that wait for
//!   `Established` see it immediately). Names are not checked for conflicts with other CRDs.
//! - While the CRD exists, each served version is served at
//!   `/apis/GROUP/VERSION[/namespaces/NS]/PLURAL`, with the `status` subresource when the
//!   version declares `subresources.status`. `metadata.generation` is the server's (see
//!   [`crate::store`]). Deleting the CRD deletes its objects (DELETED events), ends the open
//!   watches on them, and its paths answer 404.
//! - Simplified: no conversion webhooks (versions share objects by rewriting `apiVersion`),
//!   no `scale` subresource, no `selectableFields` or `additionalPrinterColumns`, no
//!   deletion finalizer (`Terminating` is never seen), `x-kubernetes-validations` (CEL) not
//!   evaluated.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionCondition, CustomResourceDefinitionNames,
    CustomResourceDefinitionStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde_json::Value;

use crate::resources::{ResourceType, TypeRef};
use crate::schema::{JsonType, Schema};
use crate::status::{ApiError, FieldError, FieldErrorKind};

/// The codec of one served version of a custom resource.
#[derive(Debug)]
pub struct CustomType {
    schema: Schema,
    storage_api_version: String,
    list_kind: String,
}

impl CustomType {
    /// Decodes `metadata` as ObjectMeta (400 if it is malformed), prunes and defaults the rest
    /// by the schema, and stores the object in the storage version.
    pub(crate) fn normalize(&self, mut body: Value) -> Result<Value, String> {
        let map = body
            .as_object_mut()
            .ok_or_else(|| "the body must be a JSON object".to_string())?;
        if let Some(meta) = map.get_mut("metadata") {
            let typed: ObjectMeta =
                serde_json::from_value(meta.take()).map_err(|e| format!("metadata: {e}"))?;
            *meta = serde_json::to_value(typed).map_err(|e| e.to_string())?;
        }
        self.schema.prune_root(map);
        map.insert(
            "apiVersion".into(),
            Value::String(self.storage_api_version.clone()),
        );
        Ok(body)
    }

    /// Every schema violation of a complete object.
    pub(crate) fn validate(&self, object: &Value) -> Vec<FieldError> {
        self.schema.validate_root(object)
    }

    /// `kind` of list bodies.
    pub(crate) fn list_kind(&self) -> &str {
        &self.list_kind
    }
}

/// The custom types currently served, by the CRD that defines them.
#[derive(Debug, Default)]
pub(crate) struct CustomTypes {
    by_crd: BTreeMap<String, Vec<TypeRef>>,
}

impl CustomTypes {
    /// The served version `group/version` of `plural`.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<TypeRef> {
        self.by_crd
            .get(&format!("{plural}.{group}"))?
            .iter()
            .find(|t| t.version == version)
            .cloned()
    }

    /// The served type with this `apiVersion` and `kind`.
    pub fn find_kind(&self, api_version: &str, kind: &str) -> Option<TypeRef> {
        self.by_crd
            .values()
            .flatten()
            .find(|t| t.api_version == api_version && t.kind == kind)
            .cloned()
    }

    /// Whether `rt` is still served (its CRD was not deleted, nor the version dropped).
    pub fn serves(&self, rt: &ResourceType) -> bool {
        self.find(&rt.group, &rt.version, &rt.plural).is_some()
    }

    /// Starts (or, after an update, keeps) serving a CRD's types.
    pub fn install(&mut self, crd_name: &str, types: Vec<TypeRef>) {
        self.by_crd.insert(crd_name.to_string(), types);
    }

    /// Stops serving a CRD's types; returns them.
    pub fn remove(&mut self, crd_name: &str) -> Option<Vec<TypeRef>> {
        self.by_crd.remove(crd_name)
    }
}

/// Checks a CRD as the API server does, sets its status, and builds the types it serves.
/// `previous` is the stored CRD on an update.
pub(crate) fn accept(
    object: &mut Value,
    previous: Option<&Value>,
    now: Time,
) -> Result<Vec<TypeRef>, ApiError> {
    let mut crd: CustomResourceDefinition = serde_json::from_value(object.clone())
        .map_err(|e| ApiError::bad_request(format!("unable to decode the CRD: {e}")))?;
    let name = crd.metadata.name.clone().unwrap_or_default();
    let previous: Option<CustomResourceDefinition> =
        previous.and_then(|p| serde_json::from_value(p.clone()).ok());
    let mut errors = check_basics(&crd, previous.as_ref());
    let spec = &crd.spec;
    let mut types = Vec::new();
    if errors.is_empty() {
        let names = accepted_names(&spec.names);
        let storage = spec
            .versions
            .iter()
            .find(|v| v.storage)
            .map(|v| format!("{}/{}", spec.group, v.name))
            .unwrap_or_default();
        for (i, version) in spec.versions.iter().enumerate() {
            let path = format!("spec.versions[{i}].schema.openAPIV3Schema");
            let Some(props) = version
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
            else {
                errors.push(field_error(
                    &path,
                    FieldErrorKind::Required,
                    "Required value: schemas are required",
                ));
                continue;
            };
            let schema = match Schema::compile(props, &path) {
                Ok(schema) => schema,
                Err(mut e) => {
                    errors.append(&mut e);
                    continue;
                }
            };
            if schema.json_type() != Some(JsonType::Object) {
                errors.push(field_error(
                    &format!("{path}.type"),
                    FieldErrorKind::Required,
                    "Required value: must be object at the root",
                ));
                continue;
            }
            if !version.served {
                continue;
            }
            let has_status = version
                .subresources
                .as_ref()
                .is_some_and(|s| s.status.is_some());
            types.push(Arc::new(ResourceType::custom(
                &spec.group,
                &version.name,
                &names.kind,
                &names.plural,
                spec.scope == "Namespaced",
                has_status,
                CustomType {
                    schema,
                    storage_api_version: storage.clone(),
                    list_kind: names.list_kind.clone().unwrap_or_default(),
                },
            )));
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid_object(
            "apiextensions.k8s.io",
            "CustomResourceDefinition",
            &name,
            errors,
        ));
    }
    crd.status = Some(status(&crd, previous.as_ref(), now));
    *object = serde_json::to_value(&crd)
        .map_err(|e| ApiError::internal(format!("encoding the CRD: {e}")))?;
    Ok(types)
}

/// The checks of `ValidateCustomResourceDefinition` the fixture makes.
fn check_basics(
    crd: &CustomResourceDefinition,
    previous: Option<&CustomResourceDefinition>,
) -> Vec<FieldError> {
    let spec = &crd.spec;
    let mut errors = Vec::new();
    let name = crd.metadata.name.as_deref().unwrap_or_default();
    if name != format!("{}.{}", spec.names.plural, spec.group) {
        errors.push(field_error(
            "metadata.name",
            FieldErrorKind::Invalid,
            &format!("Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"),
        ));
    }
    if spec.group.is_empty() {
        errors.push(field_error(
            "spec.group",
            FieldErrorKind::Required,
            "Required value",
        ));
    } else if !spec.group.contains('.') {
        errors.push(field_error(
            "spec.group",
            FieldErrorKind::Invalid,
            &format!(
                "Invalid value: \"{}\": should be a domain with at least one dot",
                spec.group
            ),
        ));
    }
    for (field, value) in [
        ("spec.names.plural", &spec.names.plural),
        ("spec.names.kind", &spec.names.kind),
    ] {
        if value.is_empty() {
            errors.push(field_error(
                field,
                FieldErrorKind::Required,
                "Required value",
            ));
        }
    }
    if !spec.names.plural.is_empty() && !is_dns_label(&spec.names.plural) {
        errors.push(field_error(
            "spec.names.plural",
            FieldErrorKind::Invalid,
            &format!(
                "Invalid value: \"{}\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'",
                spec.names.plural
            ),
        ));
    }
    if crate::resources::builtin()
        .iter()
        .any(|t| t.group == spec.group.as_str() && t.plural == spec.names.plural.as_str())
    {
        errors.push(field_error(
            "spec.group",
            FieldErrorKind::Invalid,
            &format!(
                "Invalid value: \"{}\": {} are served by the fixture as a built-in type",
                spec.group, spec.names.plural
            ),
        ));
    }
    match spec.scope.as_str() {
        "Cluster" | "Namespaced" => {}
        other => errors.push(field_error(
            "spec.scope",
            FieldErrorKind::NotSupported,
            &format!(
                "Unsupported value: \"{other}\": supported values: \"Cluster\", \"Namespaced\""
            ),
        )),
    }
    if let Some(previous) = previous
        && previous.spec.scope != spec.scope
    {
        errors.push(field_error(
            "spec.scope",
            FieldErrorKind::Invalid,
            &format!("Invalid value: \"{}\": field is immutable", spec.scope),
        ));
    }
    if spec.versions.is_empty() {
        errors.push(field_error(
            "spec.versions",
            FieldErrorKind::Invalid,
            "Invalid value: \"null\": must have exactly one version marked as storage version",
        ));
    }
    let storage = spec.versions.iter().filter(|v| v.storage).count();
    if !spec.versions.is_empty() && storage != 1 {
        errors.push(field_error(
            "spec.versions",
            FieldErrorKind::Invalid,
            &format!(
                "Invalid value: {storage}: must have exactly one version marked as storage version"
            ),
        ));
    }
    if !spec.versions.is_empty() && !spec.versions.iter().any(|v| v.served) {
        errors.push(field_error(
            "spec.versions",
            FieldErrorKind::Invalid,
            "Invalid value: 0: must have at least one served version",
        ));
    }
    for (i, v) in spec.versions.iter().enumerate() {
        if !is_dns_label(&v.name) {
            errors.push(field_error(
                &format!("spec.versions[{i}].name"),
                FieldErrorKind::Invalid,
                &format!("Invalid value: \"{}\": must be a DNS-1035 label", v.name),
            ));
        }
        if spec.versions[..i].iter().any(|w| w.name == v.name) {
            errors.push(field_error(
                &format!("spec.versions[{i}].name"),
                FieldErrorKind::Invalid,
                &format!("Invalid value: \"{}\": must be unique", v.name),
            ));
        }
    }
    errors
}

/// `names` with the API server's defaults for `singular` and `listKind`.
fn accepted_names(names: &CustomResourceDefinitionNames) -> CustomResourceDefinitionNames {
    let mut accepted = names.clone();
    if accepted.singular.as_deref().unwrap_or_default().is_empty() {
        accepted.singular = Some(names.kind.to_lowercase());
    }
    if accepted.list_kind.as_deref().unwrap_or_default().is_empty() {
        accepted.list_kind = Some(format!("{}List", names.kind));
    }
    accepted
}

/// The status the API server's controllers settle on for an accepted CRD; transition times
/// survive updates so a rewrite with no change stays a no-op.
fn status(
    crd: &CustomResourceDefinition,
    previous: Option<&CustomResourceDefinition>,
    now: Time,
) -> CustomResourceDefinitionStatus {
    let previous_status = previous.and_then(|p| p.status.as_ref());
    let since = |type_: &str| {
        previous_status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == type_ && c.status == "True"))
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.clone())
    };
    let condition = |type_: &str, reason: &str, message: &str| CustomResourceDefinitionCondition {
        last_transition_time: Some(since(type_)),
        message: Some(message.to_string()),
        reason: Some(reason.to_string()),
        status: "True".to_string(),
        type_: type_.to_string(),
    };
    let mut stored: Vec<String> = previous_status
        .and_then(|s| s.stored_versions.clone())
        .unwrap_or_default();
    for v in crd.spec.versions.iter().filter(|v| v.storage) {
        if !stored.contains(&v.name) {
            stored.push(v.name.clone());
        }
    }
    CustomResourceDefinitionStatus {
        accepted_names: Some(accepted_names(&crd.spec.names)),
        conditions: Some(vec![
            condition("NamesAccepted", "NoConflicts", "no conflicts found"),
            condition(
                "Established",
                "InitialNamesAccepted",
                "the initial names have been accepted",
            ),
        ]),
        stored_versions: Some(stored),
    }
}

fn field_error(field: &str, kind: FieldErrorKind, detail: &str) -> FieldError {
    FieldError {
        field: field.to_string(),
        kind,
        detail: detail.to_string(),
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::StorageKey;
    use serde_json::json;

    fn crd(name: &str, scope: &str, versions: Value) -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": name},
            "spec": {
                "group": "example.dev",
                "scope": scope,
                "names": {"plural": "widgets", "kind": "Widget"},
                "versions": versions
            }
        })
    }

    fn version(name: &str, served: bool, storage: bool) -> Value {
        json!({
            "name": name, "served": served, "storage": storage,
            "schema": {"openAPIV3Schema": {"type": "object"}},
            "subresources": {"status": {}}
        })
    }

    fn now() -> Time {
        Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
    }

    #[test]
    fn an_accepted_crd_is_established_and_defines_its_served_versions() {
        let mut obj = crd(
            "widgets.example.dev",
            "Namespaced",
            json!([
                version("v1", true, true),
                version("v2", true, false),
                version("v0", false, false)
            ]),
        );
        let types = accept(&mut obj, None, now()).unwrap();
        let versions: Vec<&str> = types.iter().map(|t| &*t.version).collect();
        assert_eq!(versions, ["v1", "v2"]);
        assert!(types.iter().all(|t| t.namespaced && t.has_status));
        assert_eq!(
            types[0].storage,
            StorageKey::Custom("widgets.example.dev".into())
        );
        assert_eq!(obj["status"]["acceptedNames"]["listKind"], "WidgetList");
        assert_eq!(obj["status"]["acceptedNames"]["singular"], "widget");
        assert_eq!(obj["status"]["storedVersions"], json!(["v1"]));
        let conditions = obj["status"]["conditions"].as_array().unwrap();
        assert!(
            conditions
                .iter()
                .any(|c| c["type"] == "Established" && c["status"] == "True")
        );
        // Accepting it again changes nothing (no-op updates stay no-ops).
        let before = obj.clone();
        accept(
            &mut obj,
            Some(&before),
            Time(k8s_openapi::jiff::Timestamp::MAX),
        )
        .unwrap();
        assert_eq!(obj, before);
    }

    #[test]
    fn malformed_crds_are_invalid_with_every_cause() {
        let mut obj = crd(
            "widgets.wrong.dev",
            "Global",
            json!([version("v1", true, false), version("v2", false, false)]),
        );
        let err = accept(&mut obj, None, now()).unwrap_err();
        assert_eq!(err.code(), 422);
        let fields: Vec<&str> = err
            .details
            .as_ref()
            .unwrap()
            .causes
            .iter()
            .map(|c| c.field.as_str())
            .collect();
        assert_eq!(fields, ["metadata.name", "spec.scope", "spec.versions"]);
        assert!(err.message.starts_with(
            "CustomResourceDefinition.apiextensions.k8s.io \"widgets.wrong.dev\" is invalid: [metadata.name: Invalid value"
        ), "{}", err.message);
    }

    #[test]
    fn schemas_are_required_and_must_be_objects() {
        let mut obj = crd(
            "widgets.example.dev",
            "Cluster",
            json!([{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "string"}}}]),
        );
        let err = accept(&mut obj, None, now()).unwrap_err();
        assert!(
            err.message
                .contains("spec.versions[0].schema.openAPIV3Schema.type"),
            "{}",
            err.message
        );
        let mut obj = crd(
            "widgets.example.dev",
            "Cluster",
            json!([{"name": "v1", "served": true, "storage": true}]),
        );
        let err = accept(&mut obj, None, now()).unwrap_err();
        assert!(
            err.message.contains("schemas are required"),
            "{}",
            err.message
        );
    }

    #[test]
    fn built_in_resources_cannot_be_redefined() {
        let mut obj = crd(
            "leases.coordination.k8s.io",
            "Namespaced",
            json!([version("v1", true, true)]),
        );
        obj["spec"]["group"] = json!("coordination.k8s.io");
        obj["spec"]["names"] = json!({"plural": "leases", "kind": "Lease"});
        let err = accept(&mut obj, None, now()).unwrap_err();
        let causes = &err.details.as_ref().unwrap().causes;
        assert_eq!(causes.len(), 1, "{}", err.message);
        assert_eq!(causes[0].field, "spec.group");
    }

    #[test]
    fn scope_is_immutable() {
        let mut obj = crd(
            "widgets.example.dev",
            "Cluster",
            json!([version("v1", true, true)]),
        );
        accept(&mut obj, None, now()).unwrap();
        let previous = obj.clone();
        obj["spec"]["scope"] = json!("Namespaced");
        let err = accept(&mut obj, Some(&previous), now()).unwrap_err();
        assert!(
            err.message.contains("field is immutable"),
            "{}",
            err.message
        );
    }
}
