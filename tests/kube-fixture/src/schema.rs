//! Structural OpenAPI v3 schemas of CustomResourceDefinitions: pruning, defaulting and
//! validation of custom objects, as the API server does them.
//!
//! Reference: "Validation", "Pruning versus preserving unknown fields" and "Defaulting" in
//! "Extend the Kubernetes API with CustomResourceDefinitions"
//! (<https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#validation>).
//!
//! - Understood: `type` (`object`, `array`, `string`, `integer`, `number`, `boolean`),
//!   `properties`, `required`, `items`, `additionalProperties` (schema form; `true` keeps
//!   unknown keys), `enum`, `pattern` (an unanchored search, as in the API server; Rust's
//!   `regex` is RE2-like, as Go's `regexp` is), `minLength`/`maxLength` (in characters),
//!   `minItems`/`maxItems`, `minProperties`/`maxProperties`, `minimum`/`maximum` with `exclusiveMinimum`/`exclusiveMaximum`,
//!   `nullable`, `default`, `x-kubernetes-preserve-unknown-fields`,
//!   `x-kubernetes-int-or-string` and `x-kubernetes-embedded-resource` (keeps `apiVersion`,
//!   `kind`, `metadata`).
//! - Unknown fields are **pruned**, not refused, as for every structural schema: a field not
//!   in `properties` (and not under `additionalProperties` or
//!   `x-kubernetes-preserve-unknown-fields`) is dropped before validation. Defaults apply to
//!   absent fields (and to `null` in a non-nullable field) of objects that are present.
//! - A schema must be structural: every node names a `type` (except
//!   `x-kubernetes-int-or-string` and `x-kubernetes-preserve-unknown-fields` nodes),
//!   `properties` and `additionalProperties` exclude each other, `additionalProperties: false`
//!   is refused. (Not checked: that value validations such as `allOf` only restrict.)
//! - Violations are `field.Error`s worded like the API server's (`spec.x: Invalid value: ...`,
//!   `spec.items: Too many: 17: must have at most 16 items`), every one reported.
//! - **Not evaluated**: `x-kubernetes-validations` (CEL rules), `format`, `multipleOf`,
//!   `uniqueItems`, `allOf`/`anyOf`/`oneOf`/`not`,
//!   `x-kubernetes-list-type` (set/map uniqueness). A rule the API server would refuse on
//!   those grounds is accepted here; a test of them needs a real cluster.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use regex::Regex;
use serde_json::Value;

use crate::status::{FieldError, FieldErrorKind};

/// Deepest schema nesting compiled (CRD schemas are far shallower).
const MAX_DEPTH: usize = 64;
/// Largest compiled `pattern` (bounds the regex engine's memory).
const MAX_REGEX_SIZE: usize = 1 << 20;

/// A JSON type a schema node may require.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsonType {
    /// `object`.
    Object,
    /// `array`.
    Array,
    /// `string`.
    String,
    /// `integer`.
    Integer,
    /// `number` (an integer is a number).
    Number,
    /// `boolean`.
    Boolean,
}

impl JsonType {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "object" => JsonType::Object,
            "array" => JsonType::Array,
            "string" => JsonType::String,
            "integer" => JsonType::Integer,
            "number" => JsonType::Number,
            "boolean" => JsonType::Boolean,
            _ => return None,
        })
    }

    fn accepts(self, value: &Value) -> bool {
        match self {
            JsonType::Object => value.is_object(),
            JsonType::Array => value.is_array(),
            JsonType::String => value.is_string(),
            JsonType::Integer => value.is_i64() || value.is_u64(),
            JsonType::Number => value.is_number(),
            JsonType::Boolean => value.is_boolean(),
        }
    }
}

impl std::fmt::Display for JsonType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JsonType::Object => "object",
            JsonType::Array => "array",
            JsonType::String => "string",
            JsonType::Integer => "integer",
            JsonType::Number => "number",
            JsonType::Boolean => "boolean",
        })
    }
}

/// What an object node does with keys not in `properties`.
#[derive(Debug, Default)]
enum Unknown {
    /// Pruned.
    #[default]
    Prune,
    /// Kept as they are (`x-kubernetes-preserve-unknown-fields`, `additionalProperties: true`).
    Preserve,
    /// Kept and checked against this schema (`additionalProperties: {...}`).
    Schema(Box<Schema>),
}

/// A bound with its exclusivity.
#[derive(Clone, Copy, Debug)]
struct Bound {
    value: f64,
    exclusive: bool,
}

/// One compiled schema node.
#[derive(Debug, Default)]
pub struct Schema {
    ty: Option<JsonType>,
    nullable: bool,
    int_or_string: bool,
    embedded_resource: bool,
    properties: BTreeMap<String, Schema>,
    required: Vec<String>,
    unknown: Unknown,
    items: Option<Box<Schema>>,
    enum_values: Option<Vec<Value>>,
    pattern: Option<(String, Regex)>,
    min_length: Option<u64>,
    max_length: Option<u64>,
    min_items: Option<u64>,
    max_items: Option<u64>,
    min_properties: Option<u64>,
    max_properties: Option<u64>,
    minimum: Option<Bound>,
    maximum: Option<Bound>,
    default: Option<Value>,
}

impl Schema {
    /// Compiles `props`; `path` names it in errors
    /// (`spec.versions[0].schema.openAPIV3Schema`).
    pub fn compile(props: &JSONSchemaProps, path: &str) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let schema = compile_node(props, path, 0, &mut errors);
        if errors.is_empty() {
            Ok(schema)
        } else {
            Err(errors)
        }
    }

    /// The node's `type`, if it names one.
    pub fn json_type(&self) -> Option<JsonType> {
        self.ty
    }

    /// Prunes unknown fields of an object and applies defaults. `apiVersion`, `kind` and
    /// `metadata` at the root are left to the caller.
    pub fn prune_root(&self, object: &mut serde_json::Map<String, Value>) {
        let kept: Vec<(String, Value)> = ["apiVersion", "kind", "metadata"]
            .into_iter()
            .filter_map(|k| object.remove(k).map(|v| (k.to_string(), v)))
            .collect();
        self.prune_map(object);
        object.extend(kept);
    }

    fn prune(&self, value: &mut Value) {
        match value {
            Value::Object(map) => self.prune_map(map),
            Value::Array(items) => {
                if let Some(item) = &self.items {
                    items.iter_mut().for_each(|v| item.prune(v));
                }
            }
            _ => {}
        }
    }

    fn prune_map(&self, map: &mut serde_json::Map<String, Value>) {
        map.retain(|key, value| {
            if let Some(schema) = self.properties.get(key) {
                schema.prune(value);
                return true;
            }
            if self.embedded_resource && matches!(key.as_str(), "apiVersion" | "kind" | "metadata")
            {
                return true;
            }
            match &self.unknown {
                Unknown::Prune => false,
                Unknown::Preserve => true,
                Unknown::Schema(schema) => {
                    schema.prune(value);
                    true
                }
            }
        });
        for (key, schema) in &self.properties {
            let Some(default) = &schema.default else {
                continue;
            };
            match map.get(key) {
                None => {
                    map.insert(key.clone(), default.clone());
                }
                Some(Value::Null) if !schema.nullable => {
                    map.insert(key.clone(), default.clone());
                }
                Some(_) => {}
            }
        }
    }

    /// Validates an object (the root: `apiVersion`, `kind` and `metadata` are not checked
    /// against the schema) and returns every violation.
    pub fn validate_root(&self, object: &Value) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let Some(map) = object.as_object() else {
            errors.push(type_error("", JsonType::Object, object));
            return errors;
        };
        for name in &self.required {
            if !map.contains_key(name) && !matches!(name.as_str(), "apiVersion" | "kind") {
                errors.push(required(name));
            }
        }
        for (key, value) in map {
            if matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            let path = key.clone();
            if let Some(schema) = self.properties.get(key) {
                schema.validate(value, &path, &mut errors);
            } else if let Unknown::Schema(schema) = &self.unknown {
                schema.validate(value, &path, &mut errors);
            }
        }
        errors
    }

    fn validate(&self, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
        if value.is_null() {
            if !self.nullable && (self.ty.is_some() || self.int_or_string) {
                errors.push(FieldError {
                    field: path.to_string(),
                    kind: FieldErrorKind::TypeInvalid,
                    detail: format!(
                        "Invalid value: \"null\": {path} in body must be of type {}: \"null\"",
                        self.expected_type()
                    ),
                });
            }
            return;
        }
        if self.int_or_string {
            if !(value.is_string() || value.is_i64() || value.is_u64()) {
                errors.push(FieldError {
                    field: path.to_string(),
                    kind: FieldErrorKind::TypeInvalid,
                    detail: format!(
                        "Invalid value: \"{}\": {path} in body must be of type integer or string: \"{}\"",
                        type_name(value),
                        type_name(value)
                    ),
                });
                return;
            }
        } else if let Some(ty) = self.ty
            && !ty.accepts(value)
        {
            errors.push(type_error(path, ty, value));
            return;
        }
        if let Some(allowed) = &self.enum_values
            && !allowed.contains(value)
        {
            let listed: Vec<String> = allowed.iter().map(render).collect();
            errors.push(FieldError {
                field: path.to_string(),
                kind: FieldErrorKind::NotSupported,
                detail: format!(
                    "Unsupported value: {}: supported values: {}",
                    render(value),
                    listed.join(", ")
                ),
            });
        }
        match value {
            Value::String(s) => self.validate_string(s, path, errors),
            Value::Number(n) => self.validate_number(n, value, path, errors),
            Value::Array(items) => {
                let count = items.len() as u64;
                if let Some(min) = self.min_items
                    && count < min
                {
                    errors.push(invalid(
                        path,
                        value,
                        format!("{path} in body should have at least {min} items"),
                    ));
                }
                if let Some(max) = self.max_items
                    && count > max
                {
                    errors.push(FieldError {
                        field: path.to_string(),
                        kind: FieldErrorKind::TooMany,
                        detail: format!("Too many: {count}: must have at most {max} items"),
                    });
                }
                if let Some(item) = &self.items {
                    for (i, v) in items.iter().enumerate() {
                        item.validate(v, &format!("{path}[{i}]"), errors);
                    }
                }
            }
            Value::Object(map) => {
                let count = map.len() as u64;
                if let Some(min) = self.min_properties
                    && count < min
                {
                    errors.push(invalid(
                        path,
                        &Value::from(count),
                        format!("{path} in body should have at least {min} properties"),
                    ));
                }
                if let Some(max) = self.max_properties
                    && count > max
                {
                    errors.push(FieldError {
                        field: path.to_string(),
                        kind: FieldErrorKind::TooMany,
                        detail: format!("Too many: {count}: must have at most {max} items"),
                    });
                }
                for name in &self.required {
                    if !map.contains_key(name) {
                        errors.push(required(&format!("{path}.{name}")));
                    }
                }
                for (key, v) in map {
                    if let Some(schema) = self.properties.get(key) {
                        schema.validate(v, &format!("{path}.{key}"), errors);
                    } else if let Unknown::Schema(schema) = &self.unknown {
                        schema.validate(v, &format!("{path}.{key}"), errors);
                    }
                }
            }
            Value::Bool(_) | Value::Null => {}
        }
    }

    fn validate_string(&self, s: &str, path: &str, errors: &mut Vec<FieldError>) {
        let chars = s.chars().count() as u64;
        if let Some(min) = self.min_length
            && chars < min
        {
            errors.push(invalid(
                path,
                &Value::String(s.to_string()),
                format!("{path} in body should be at least {min} chars long"),
            ));
        }
        if let Some(max) = self.max_length
            && chars > max
        {
            errors.push(FieldError {
                field: path.to_string(),
                kind: FieldErrorKind::TooLong,
                detail: format!("Too long: may not be longer than {max}"),
            });
        }
        if let Some((source, regex)) = &self.pattern
            && !regex.is_match(s)
        {
            errors.push(invalid(
                path,
                &Value::String(s.to_string()),
                format!("{path} in body should match '{source}'"),
            ));
        }
    }

    fn validate_number(
        &self,
        n: &serde_json::Number,
        value: &Value,
        path: &str,
        errors: &mut Vec<FieldError>,
    ) {
        let Some(x) = n.as_f64() else {
            return;
        };
        if let Some(min) = self.minimum {
            let (ok, words) = if min.exclusive {
                (x > min.value, "greater than")
            } else {
                (x >= min.value, "greater than or equal to")
            };
            if !ok {
                errors.push(invalid(
                    path,
                    value,
                    format!("{path} in body should be {words} {}", min.value),
                ));
            }
        }
        if let Some(max) = self.maximum {
            let (ok, words) = if max.exclusive {
                (x < max.value, "less than")
            } else {
                (x <= max.value, "less than or equal to")
            };
            if !ok {
                errors.push(invalid(
                    path,
                    value,
                    format!("{path} in body should be {words} {}", max.value),
                ));
            }
        }
    }

    fn expected_type(&self) -> String {
        match (self.int_or_string, self.ty) {
            (true, _) => "integer or string".to_string(),
            (false, Some(ty)) => ty.to_string(),
            (false, None) => "any".to_string(),
        }
    }
}

fn compile_node(
    props: &JSONSchemaProps,
    path: &str,
    depth: usize,
    errors: &mut Vec<FieldError>,
) -> Schema {
    let mut schema = Schema::default();
    if depth > MAX_DEPTH {
        errors.push(FieldError {
            field: path.to_string(),
            kind: FieldErrorKind::Forbidden,
            detail: format!("Forbidden: the fixture compiles schemas at most {MAX_DEPTH} deep"),
        });
        return schema;
    }
    if let Some(ty) = props.type_.as_deref().filter(|t| !t.is_empty()) {
        match JsonType::parse(ty) {
            Some(t) => schema.ty = Some(t),
            None => errors.push(FieldError {
                field: format!("{path}.type"),
                kind: FieldErrorKind::NotSupported,
                detail: format!(
                    "Unsupported value: \"{ty}\": supported values: \"array\", \"boolean\", \"integer\", \"number\", \"object\", \"string\""
                ),
            }),
        }
    }
    schema.nullable = props.nullable.unwrap_or(false);
    schema.int_or_string = props.x_kubernetes_int_or_string.unwrap_or(false);
    schema.embedded_resource = props.x_kubernetes_embedded_resource.unwrap_or(false);
    let preserve = props.x_kubernetes_preserve_unknown_fields == Some(true);
    if preserve {
        schema.unknown = Unknown::Preserve;
    }
    // Structural schemas name a type everywhere, except for int-or-string and preserved
    // (free-form) nodes.
    if schema.ty.is_none() && !schema.int_or_string && !preserve && props.type_.is_none() {
        errors.push(FieldError {
            field: format!("{path}.type"),
            kind: FieldErrorKind::Required,
            detail: "Required value: must not be empty for specified object fields".to_string(),
        });
    }
    if props.properties.is_some() && props.additional_properties.is_some() {
        errors.push(FieldError {
            field: format!("{path}.additionalProperties"),
            kind: FieldErrorKind::Forbidden,
            detail: "Forbidden: additionalProperties and properties are mutual exclusive"
                .to_string(),
        });
    }
    for (name, child) in props.properties.iter().flatten() {
        let child = compile_node(
            child,
            &format!("{path}.properties[{name}]"),
            depth + 1,
            errors,
        );
        schema.properties.insert(name.clone(), child);
    }
    schema.required = props.required.clone().unwrap_or_default();
    match &props.additional_properties {
        Some(JSONSchemaPropsOrBool::Schema(child)) => {
            let child = compile_node(
                child,
                &format!("{path}.additionalProperties"),
                depth + 1,
                errors,
            );
            schema.unknown = Unknown::Schema(Box::new(child));
        }
        Some(JSONSchemaPropsOrBool::Bool(true)) => schema.unknown = Unknown::Preserve,
        Some(JSONSchemaPropsOrBool::Bool(false)) => errors.push(FieldError {
            field: format!("{path}.additionalProperties"),
            kind: FieldErrorKind::Forbidden,
            detail: "Forbidden: must not be false in a structural schema".to_string(),
        }),
        None => {}
    }
    match &props.items {
        Some(JSONSchemaPropsOrArray::Schema(child)) => {
            let child = compile_node(child, &format!("{path}.items"), depth + 1, errors);
            schema.items = Some(Box::new(child));
        }
        Some(JSONSchemaPropsOrArray::Schemas(_)) => errors.push(FieldError {
            field: format!("{path}.items"),
            kind: FieldErrorKind::Forbidden,
            detail: "Forbidden: items must be a schema object and not an array".to_string(),
        }),
        None => {}
    }
    schema.enum_values = props
        .enum_
        .as_ref()
        .map(|values| values.iter().map(|v| v.0.clone()).collect());
    if let Some(pattern) = &props.pattern {
        match regex::RegexBuilder::new(pattern)
            .size_limit(MAX_REGEX_SIZE)
            .build()
        {
            Ok(regex) => schema.pattern = Some((pattern.clone(), regex)),
            Err(e) => errors.push(FieldError {
                field: format!("{path}.pattern"),
                kind: FieldErrorKind::Invalid,
                detail: format!(
                    "Invalid value: {}: must be a valid regular expression, but isn't: {e}",
                    render(&Value::String(pattern.clone()))
                ),
            }),
        }
    }
    let non_negative = |v: Option<i64>| v.map(|n| n.max(0) as u64);
    schema.min_length = non_negative(props.min_length);
    schema.max_length = non_negative(props.max_length);
    schema.min_items = non_negative(props.min_items);
    schema.max_items = non_negative(props.max_items);
    schema.min_properties = non_negative(props.min_properties);
    schema.max_properties = non_negative(props.max_properties);
    schema.minimum = props.minimum.map(|value| Bound {
        value,
        exclusive: props.exclusive_minimum.unwrap_or(false),
    });
    schema.maximum = props.maximum.map(|value| Bound {
        value,
        exclusive: props.exclusive_maximum.unwrap_or(false),
    });
    schema.default = props.default.as_ref().map(|d| d.0.clone());
    schema
}

fn type_error(path: &str, expected: JsonType, value: &Value) -> FieldError {
    let actual = type_name(value);
    FieldError {
        field: path.to_string(),
        kind: FieldErrorKind::TypeInvalid,
        detail: format!(
            "Invalid value: \"{actual}\": {path} in body must be of type {expected}: \"{actual}\""
        ),
    }
}

fn required(path: &str) -> FieldError {
    FieldError {
        field: path.to_string(),
        kind: FieldErrorKind::Required,
        detail: "Required value".to_string(),
    }
}

fn invalid(path: &str, value: &Value, why: String) -> FieldError {
    FieldError {
        field: path.to_string(),
        kind: FieldErrorKind::Invalid,
        detail: format!("Invalid value: {}: {why}", render(value)),
    }
}

/// The JSON type name the API server prints for a value of the wrong type.
fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A value as Go's `%#v`-ish rendering in field errors shows it: strings quoted, the rest as
/// JSON; long values shortened.
fn render(value: &Value) -> String {
    let text = match value {
        Value::Array(items) => format!("{}", items.len()),
        other => other.to_string(),
    };
    if text.len() > 128 {
        let cut = text
            .char_indices()
            .take_while(|(i, _)| *i < 128)
            .last()
            .map_or(0, |(i, c)| i + c.len_utf8());
        format!("{}...", &text[..cut])
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compile(schema: Value) -> Schema {
        let props: JSONSchemaProps = serde_json::from_value(schema).unwrap();
        Schema::compile(&props, "openAPIV3Schema").unwrap()
    }

    fn spec_schema() -> Schema {
        compile(json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 8},
                        "mode": {"type": "string", "enum": ["a", "b"], "default": "a"},
                        "count": {"type": "integer", "minimum": 1, "maximum": 3},
                        "tags": {"type": "array", "maxItems": 2, "items": {"type": "string", "minLength": 1}},
                        "labels": {"type": "object", "maxProperties": 1, "additionalProperties": {"type": "string"}},
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "port": {"x-kubernetes-int-or-string": true},
                        "note": {"type": "string", "nullable": true}
                    }
                },
                "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}}
            }
        }))
    }

    #[test]
    fn unknown_fields_are_pruned_and_defaults_applied() {
        let schema = spec_schema();
        let mut obj = json!({
            "apiVersion": "x/v1", "kind": "X", "metadata": {"name": "n"},
            "bogus": 1,
            "spec": {"name": "a", "extra": true, "labels": {"k": "v"}, "free": {"any": {"x": 1}}}
        });
        schema.prune_root(obj.as_object_mut().unwrap());
        assert_eq!(
            obj,
            json!({
                "apiVersion": "x/v1", "kind": "X", "metadata": {"name": "n"},
                "spec": {"name": "a", "mode": "a", "labels": {"k": "v"}, "free": {"any": {"x": 1}}}
            })
        );
        assert!(schema.validate_root(&obj).is_empty());
    }

    #[test]
    fn violations_name_the_field_like_the_api_server() {
        let schema = spec_schema();
        let obj = json!({
            "spec": {
                "name": "ABC",
                "mode": "c",
                "count": 7,
                "tags": ["x", "", "z"],
                "labels": {"k": 1, "j": "ok"},
                "port": true,
                "note": null
            },
            "status": {"ready": "yes"}
        });
        let errors = schema.validate_root(&obj);
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let expect = [
            "spec.name: Invalid value: \"ABC\": spec.name in body should match '^[a-z]+$'",
            "spec.mode: Unsupported value: \"c\": supported values: \"a\", \"b\"",
            "spec.count: Invalid value: 7: spec.count in body should be less than or equal to 3",
            "spec.tags: Too many: 3: must have at most 2 items",
            "spec.labels: Too many: 2: must have at most 1 items",
            "spec.tags[1]: Invalid value: \"\": spec.tags[1] in body should be at least 1 chars long",
            "spec.labels.k: Invalid value: \"integer\": spec.labels.k in body must be of type string: \"integer\"",
            "spec.port: Invalid value: \"boolean\": spec.port in body must be of type integer or string: \"boolean\"",
            "status.ready: Invalid value: \"string\": status.ready in body must be of type boolean: \"string\"",
        ];
        for e in expect {
            assert!(text.iter().any(|t| t == e), "missing {e:?} in {text:#?}");
        }
        assert_eq!(text.len(), expect.len(), "{text:#?}");
        let tags = errors.iter().find(|e| e.field == "spec.tags").unwrap();
        assert_eq!(tags.kind, FieldErrorKind::TooMany);
    }

    #[test]
    fn required_and_type_errors() {
        let schema = spec_schema();
        let errors = schema.validate_root(&json!({"spec": {"count": 1.5}}));
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            text.contains(&"spec.name: Required value".to_string()),
            "{text:?}"
        );
        assert!(
            text.contains(&"spec.count: Invalid value: \"number\": spec.count in body must be of type integer: \"number\"".to_string()),
            "{text:?}"
        );
        let errors = schema.validate_root(&json!({"spec": {"name": "toolongname"}}));
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].kind, FieldErrorKind::TooLong);
        // apiextensions reports maxLength with field.TooLongMaxLength.
        assert_eq!(
            errors[0].to_string(),
            "spec.name: Too long: may not be longer than 8"
        );
    }

    #[test]
    fn bad_schemas_are_refused_with_their_path() {
        let props: JSONSchemaProps = serde_json::from_value(json!({
            "type": "object",
            "properties": {
                "a": {"type": "strin"},
                "b": {"type": "string", "pattern": "("},
                "c": {"description": "no type"},
                "d": {"type": "object", "properties": {}, "additionalProperties": {"type": "string"}},
                "e": {"type": "object", "additionalProperties": false},
                "f": {"x-kubernetes-preserve-unknown-fields": true}
            }
        }))
        .unwrap();
        let errors = Schema::compile(&props, "root").unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "root.properties[a].type",
                "root.properties[b].pattern",
                "root.properties[c].type",
                "root.properties[d].additionalProperties",
                "root.properties[e].additionalProperties"
            ]
        );
    }
}
