//! PATCH bodies: which content types the fixture accepts and how each changes an object.
//!
//! Reference: "Patch operations" in API Concepts
//! (<https://kubernetes.io/docs/reference/using-api/api-concepts/#patch-and-apply>) and
//! "Server-Side Apply" (<https://kubernetes.io/docs/reference/using-api/server-side-apply/>).
//!
//! - `application/json-patch+json`: RFC 6902, exactly.
//! - `application/merge-patch+json`: RFC 7386, exactly.
//! - `application/strategic-merge-patch+json`: **simplified** to a JSON merge patch. Lists are
//!   replaced whole instead of merged by their patch keys; `$patch` directives are not
//!   understood. Our objects are patched through labels, annotations, `data` and `status`
//!   maps, where both agree.
//! - `application/apply-patch+yaml` (server-side apply): **simplified** to "create if absent,
//!   else merge patch". There is no `managedFields` bookkeeping and no field-manager conflict
//!   detection; `fieldManager` is required (as the API server requires it) but not recorded.

use serde_json::Value;

use crate::status::{ApiError, Reason};

/// How a PATCH body is to be applied, from its `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    /// RFC 6902 JSON patch.
    Json,
    /// RFC 7386 merge patch.
    Merge,
    /// Strategic merge patch, applied as a merge patch (see the module docs).
    Strategic,
    /// Server-side apply, applied as create-or-merge (see the module docs).
    Apply,
}

impl PatchKind {
    /// The patch kind for a `Content-Type` header value (parameters ignored).
    pub fn from_content_type(content_type: &str) -> Result<Self, ApiError> {
        let media = content_type.split(';').next().unwrap_or("").trim();
        match media {
            "application/json-patch+json" => Ok(PatchKind::Json),
            "application/merge-patch+json" => Ok(PatchKind::Merge),
            "application/strategic-merge-patch+json" => Ok(PatchKind::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(PatchKind::Apply),
            other => Err(ApiError::new(
                Reason::UnsupportedMediaType,
                format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {other:?})"
                ),
            )),
        }
    }

    /// Decodes the body: JSON for all kinds, YAML (a JSON superset) for apply.
    pub fn decode(self, body: &[u8]) -> Result<Value, ApiError> {
        let text = std::str::from_utf8(body)
            .map_err(|_| ApiError::bad_request("the patch body is not UTF-8"))?;
        let decoded = if self == PatchKind::Apply {
            serde_saphyr::from_str::<Value>(text).map_err(|e| e.to_string())
        } else {
            serde_json::from_str::<Value>(text).map_err(|e| e.to_string())
        };
        decoded.map_err(|e| ApiError::bad_request(format!("unable to decode the patch: {e}")))
    }

    /// Applies a decoded patch to `target` in place.
    pub fn apply(self, target: &mut Value, patch: &Value) -> Result<(), ApiError> {
        match self {
            PatchKind::Json => {
                let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                    .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
                json_patch::patch(target, &ops).map_err(|e| {
                    ApiError::invalid(format!("the JSON patch could not be applied: {e}"))
                })
            }
            PatchKind::Merge | PatchKind::Strategic | PatchKind::Apply => {
                if !patch.is_object() {
                    return Err(ApiError::bad_request("a merge patch must be a JSON object"));
                }
                json_patch::merge(target, patch);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn content_types_select_the_patch_kind() {
        assert_eq!(
            PatchKind::from_content_type("application/merge-patch+json; charset=utf-8").unwrap(),
            PatchKind::Merge
        );
        assert_eq!(
            PatchKind::from_content_type("application/apply-patch+yaml").unwrap(),
            PatchKind::Apply
        );
        let err = PatchKind::from_content_type("text/plain").unwrap_err();
        assert_eq!(err.code(), 415);
    }

    #[test]
    fn merge_and_json_patches_apply() {
        let mut obj = json!({"metadata": {"labels": {"a": "1", "b": "2"}}});
        PatchKind::Merge
            .apply(
                &mut obj,
                &json!({"metadata": {"labels": {"a": null, "c": "3"}}}),
            )
            .unwrap();
        assert_eq!(obj, json!({"metadata": {"labels": {"b": "2", "c": "3"}}}));
        PatchKind::Json
            .apply(
                &mut obj,
                &json!([{"op": "replace", "path": "/metadata/labels/b", "value": "9"}]),
            )
            .unwrap();
        assert_eq!(obj["metadata"]["labels"]["b"], "9");
        let err = PatchKind::Json
            .apply(&mut obj, &json!([{"op": "remove", "path": "/nope"}]))
            .unwrap_err();
        assert_eq!(err.code(), 422);
    }

    #[test]
    fn apply_bodies_may_be_yaml() {
        let v = PatchKind::Apply.decode(b"metadata:\n  name: x\n").unwrap();
        assert_eq!(v, json!({"metadata": {"name": "x"}}));
        assert!(PatchKind::Merge.decode(b"metadata: {").is_err());
    }
}
