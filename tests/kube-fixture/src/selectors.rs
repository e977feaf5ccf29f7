//! Label and field selectors, parsed and matched as the API server does.
//!
//! Label selectors follow "Labels and Selectors"
//! (<https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors>):
//! equality (`=`, `==`, `!=`), set-based (`in`, `notin`), existence (`key`, `!key`), all
//! requirements ANDed. Field selectors follow "Field Selectors"
//! (<https://kubernetes.io/docs/concepts/overview/working-with-objects/field-selectors/>):
//! `=`, `==`, `!=` over a per-resource list of supported fields; any other field is refused with
//! `400 BadRequest` ("field label not supported"), as the real server refuses it.
//!
//! Simplified: the numeric `gt`/`lt` label operators are refused with 400 rather than supported.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::status::ApiError;

/// The longest selector string accepted (bounds parsing work).
const MAX_SELECTOR_LEN: usize = 4096;
/// The most requirements one selector may hold.
const MAX_REQUIREMENTS: usize = 64;

/// One label requirement.
#[derive(Clone, Debug, PartialEq, Eq)]
enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<LabelRequirement>,
}

impl LabelSelector {
    /// Parses the `labelSelector` query parameter.
    pub fn parse(input: &str) -> Result<Self, ApiError> {
        if input.len() > MAX_SELECTOR_LEN {
            return Err(ApiError::bad_request("label selector is too long"));
        }
        let mut requirements = Vec::new();
        for term in split_top_level(input) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            if requirements.len() == MAX_REQUIREMENTS {
                return Err(ApiError::bad_request(
                    "label selector has too many requirements",
                ));
            }
            requirements.push(parse_label_term(term)?);
        }
        Ok(Self { requirements })
    }

    /// Whether an object with these labels is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| match r {
            LabelRequirement::Equals(k, v) => labels.get(k) == Some(v),
            LabelRequirement::NotEquals(k, v) => labels.get(k) != Some(v),
            LabelRequirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            LabelRequirement::NotIn(k, vs) => !labels.get(k).is_some_and(|l| vs.contains(l)),
            LabelRequirement::Exists(k) => labels.contains_key(k),
            LabelRequirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }

    /// Whether the JSON object's `metadata.labels` are selected.
    pub fn matches_object(&self, object: &Value) -> bool {
        if self.requirements.is_empty() {
            return true;
        }
        let labels: BTreeMap<String, String> = object
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        self.matches(&labels)
    }
}

/// Splits on commas that are not inside `( ... )`.
fn split_top_level(input: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in input.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&input[start..]);
    parts
}

fn parse_label_term(term: &str) -> Result<LabelRequirement, ApiError> {
    let bad = || ApiError::bad_request(format!("unable to parse requirement: {term:?}"));
    if let Some(key) = term.strip_prefix('!') {
        return Ok(LabelRequirement::DoesNotExist(valid_key(key.trim(), term)?));
    }
    for (op, build) in [
        (
            "!=",
            LabelRequirement::NotEquals as fn(String, String) -> LabelRequirement,
        ),
        ("==", LabelRequirement::Equals),
        ("=", LabelRequirement::Equals),
    ] {
        if let Some((k, v)) = term.split_once(op) {
            return Ok(build(
                valid_key(k.trim(), term)?,
                valid_value(v.trim(), term)?,
            ));
        }
    }
    if term.contains('<') || term.contains('>') {
        return Err(ApiError::bad_request(format!(
            "label selector operators gt/lt are not supported by the fixture: {term:?}"
        )));
    }
    let mut words = term.splitn(2, char::is_whitespace);
    let key = words.next().ok_or_else(bad)?.trim();
    let Some(rest) = words.next().map(str::trim) else {
        return Ok(LabelRequirement::Exists(valid_key(key, term)?));
    };
    let (op, set) = if let Some(set) = rest.strip_prefix("notin") {
        ("notin", set)
    } else if let Some(set) = rest.strip_prefix("in") {
        ("in", set)
    } else {
        return Err(bad());
    };
    let set = set
        .trim()
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(bad)?;
    let values = set
        .split(',')
        .map(|v| valid_value(v.trim(), term))
        .collect::<Result<Vec<_>, _>>()?;
    let key = valid_key(key, term)?;
    Ok(if op == "in" {
        LabelRequirement::In(key, values)
    } else {
        LabelRequirement::NotIn(key, values)
    })
}

fn valid_key(key: &str, term: &str) -> Result<String, ApiError> {
    let ok = !key.is_empty()
        && key.len() <= 317
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if ok {
        Ok(key.to_string())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid label key {key:?} in selector {term:?}"
        )))
    }
}

fn valid_value(value: &str, term: &str) -> Result<String, ApiError> {
    let ok = value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(value.to_string())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid label value {value:?} in selector {term:?}"
        )))
    }
}

/// A field the API server lets a resource be selected by, and where it lives in the object.
#[derive(Clone, Copy, Debug)]
pub struct SelectableField {
    /// The selector name, e.g. `spec.nodeName`.
    pub name: &'static str,
    /// The JSON pointer to its value, e.g. `/spec/nodeName`.
    pub pointer: &'static str,
    /// The value the API server compares when the field is absent (e.g. `false` for
    /// `spec.hostNetwork`).
    pub default: &'static str,
}

/// Fields every resource supports.
pub const COMMON_FIELDS: &[SelectableField] = &[
    SelectableField {
        name: "metadata.name",
        pointer: "/metadata/name",
        default: "",
    },
    SelectableField {
        name: "metadata.namespace",
        pointer: "/metadata/namespace",
        default: "",
    },
];

#[derive(Clone, Debug, PartialEq, Eq)]
struct FieldRequirement {
    pointer: &'static str,
    default: &'static str,
    value: String,
    negated: bool,
}

/// A parsed field selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector {
    requirements: Vec<FieldRequirement>,
    /// The value of a `metadata.name=` requirement, which RBAC treats as the request's name.
    exact_name: Option<String>,
}

impl FieldSelector {
    /// Parses the `fieldSelector` query parameter against the fields `supported` by the resource
    /// (in addition to [`COMMON_FIELDS`]).
    pub fn parse(input: &str, supported: &[SelectableField]) -> Result<Self, ApiError> {
        if input.len() > MAX_SELECTOR_LEN {
            return Err(ApiError::bad_request("field selector is too long"));
        }
        let mut selector = FieldSelector::default();
        for term in split_unescaped(input, ',') {
            if term.trim().is_empty() {
                continue;
            }
            if selector.requirements.len() == MAX_REQUIREMENTS {
                return Err(ApiError::bad_request(
                    "field selector has too many requirements",
                ));
            }
            let (field, value, negated) = if let Some((f, v)) = split_op(&term, "!=") {
                (f, v, true)
            } else if let Some((f, v)) = split_op(&term, "==") {
                (f, v, false)
            } else if let Some((f, v)) = split_op(&term, "=") {
                (f, v, false)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{input}'; can't understand '{term}'"
                )));
            };
            let field = field.trim();
            let known = COMMON_FIELDS
                .iter()
                .chain(supported)
                .find(|f| f.name == field)
                .ok_or_else(|| {
                    ApiError::bad_request(format!("field label not supported: {}", unescape(field)))
                })?;
            let value = unescape(&value);
            if known.name == "metadata.name" && !negated {
                selector.exact_name = Some(value.clone());
            }
            selector.requirements.push(FieldRequirement {
                pointer: known.pointer,
                default: known.default,
                value,
                negated,
            });
        }
        Ok(selector)
    }

    /// Whether the JSON object is selected.
    pub fn matches_object(&self, object: &Value) -> bool {
        self.requirements.iter().all(|r| {
            let actual = match object.pointer(r.pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                _ => r.default.to_string(),
            };
            (actual == r.value) != r.negated
        })
    }

    /// The name pinned by `metadata.name=NAME`, which the API server uses as the request's
    /// name for authorization of list and watch.
    pub fn exact_name(&self) -> Option<&str> {
        self.exact_name.as_deref()
    }
}

/// Splits `input` on `sep` not preceded by a backslash, keeping escapes for [`unescape`].
fn split_unescaped(input: &str, sep: char) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut escaped = false;
    for c in input.chars() {
        if escaped {
            current.push('\\');
            current.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            parts.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    parts.push(current);
    parts
}

/// Splits at the first unescaped occurrence of `op`.
fn split_op(term: &str, op: &str) -> Option<(String, String)> {
    let bytes = term.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            i += 2;
            continue;
        }
        if term[i..].starts_with(op) {
            return Some((term[..i].to_string(), term[i + op.len()..].to_string()));
        }
        i += 1;
    }
    None
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut escaped = false;
    for c in s.chars() {
        if escaped || c != '\\' {
            out.push(c);
            escaped = false;
        } else {
            escaped = true;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const POD_FIELDS: &[SelectableField] = &[SelectableField {
        name: "spec.nodeName",
        pointer: "/spec/nodeName",
        default: "",
    }];

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selectors_match_like_the_api_server() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        let yes = [
            "",
            "app=web",
            "app==web",
            "app!=db",
            "app in (web, db)",
            "tier notin (back)",
            "app",
            "!missing",
            "app=web,tier=front",
            "missing!=x",
        ];
        for s in yes {
            assert!(LabelSelector::parse(s).unwrap().matches(&l), "{s}");
        }
        let no = [
            "app=db",
            "app notin (web)",
            "missing",
            "!app",
            "app=web,tier=back",
        ];
        for s in no {
            assert!(!LabelSelector::parse(s).unwrap().matches(&l), "{s}");
        }
    }

    #[test]
    fn malformed_label_selectors_are_bad_requests() {
        for s in ["app in web", "a b c", "app=we b", "x>1", "=v"] {
            let err = LabelSelector::parse(s).unwrap_err();
            assert_eq!(err.code(), 400, "{s}");
        }
    }

    #[test]
    fn field_selectors_use_supported_fields_only() {
        let pod = json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": {"nodeName": "n1"}});
        let s = FieldSelector::parse("spec.nodeName=n1,metadata.name=p", POD_FIELDS).unwrap();
        assert!(s.matches_object(&pod));
        assert_eq!(s.exact_name(), Some("p"));
        assert!(
            !FieldSelector::parse("spec.nodeName!=n1", POD_FIELDS)
                .unwrap()
                .matches_object(&pod)
        );
        assert!(
            !FieldSelector::parse("spec.nodeName=n2", POD_FIELDS)
                .unwrap()
                .matches_object(&pod)
        );
        let err = FieldSelector::parse("spec.hostname=x", POD_FIELDS).unwrap_err();
        assert_eq!(err.message, "field label not supported: spec.hostname");
        assert!(FieldSelector::parse("nonsense", POD_FIELDS).is_err());
    }

    #[test]
    fn field_selector_values_may_escape_commas() {
        let obj = json!({"metadata": {"name": "a,b"}});
        let s = FieldSelector::parse(r"metadata.name=a\,b", &[]).unwrap();
        assert!(s.matches_object(&obj));
    }
}
