//! Kubernetes label selectors: `matchLabels` and `matchExpressions` (In, NotIn, Exists,
//! DoesNotExist), all ANDed; an empty selector matches everything.
//!
//! The checks are the API server's own for a `metav1.LabelSelector` (keys are qualified
//! names, values label values, In/NotIn need values, Exists/DoesNotExist take none), plus the
//! bounds the CRD states, so a selector refused here is one the API server would refuse too.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Most `matchLabels` entries in one selector (the CRD's `maxProperties`).
pub const MAX_MATCH_LABELS: usize = 64;
/// Most `matchExpressions` in one selector (the CRD's `maxItems`).
pub const MAX_MATCH_EXPRESSIONS: usize = 32;
/// Most values in one expression (the CRD's `maxItems`).
pub const MAX_EXPRESSION_VALUES: usize = 64;

/// Why a selector is refused (an unknown operator, values where none belong...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("{0}")]
    Invalid(String),
}

/// A checked selector.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CompiledSelector {
    selector: LabelSelector,
}

/// The four operators; `Display` is the API spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl Operator {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "In" => Self::In,
            "NotIn" => Self::NotIn,
            "Exists" => Self::Exists,
            "DoesNotExist" => Self::DoesNotExist,
            _ => return None,
        })
    }
}

impl CompiledSelector {
    pub fn compile(selector: &LabelSelector) -> Result<Self, SelectorError> {
        let invalid = |m: String| Err(SelectorError::Invalid(m));
        let match_labels = selector.match_labels.as_ref();
        if match_labels.map_or(0, BTreeMap::len) > MAX_MATCH_LABELS {
            return invalid(format!("matchLabels: at most {MAX_MATCH_LABELS} labels"));
        }
        for (key, value) in match_labels.into_iter().flatten() {
            if !is_label_key(key) {
                return invalid(format!("matchLabels: {key:?} is not a valid label key"));
            }
            if !is_label_value(value) {
                return invalid(format!(
                    "matchLabels[{key}]: {value:?} is not a valid label value"
                ));
            }
        }
        let expressions = selector.match_expressions.as_deref().unwrap_or_default();
        if expressions.len() > MAX_MATCH_EXPRESSIONS {
            return invalid(format!(
                "matchExpressions: at most {MAX_MATCH_EXPRESSIONS} expressions"
            ));
        }
        for (i, e) in expressions.iter().enumerate() {
            if !is_label_key(&e.key) {
                return invalid(format!(
                    "matchExpressions[{i}].key: {:?} is not a valid label key",
                    e.key
                ));
            }
            let Some(op) = Operator::parse(&e.operator) else {
                return invalid(format!(
                    "matchExpressions[{i}].operator: {:?} is not one of In, NotIn, Exists, DoesNotExist",
                    e.operator
                ));
            };
            let values = e.values.as_deref().unwrap_or_default();
            match op {
                Operator::In | Operator::NotIn if values.is_empty() => {
                    return invalid(format!(
                        "matchExpressions[{i}].values: {} needs at least one value",
                        e.operator
                    ));
                }
                Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                    return invalid(format!(
                        "matchExpressions[{i}].values: {} takes no values",
                        e.operator
                    ));
                }
                _ => {}
            }
            if values.len() > MAX_EXPRESSION_VALUES {
                return invalid(format!(
                    "matchExpressions[{i}].values: at most {MAX_EXPRESSION_VALUES} values"
                ));
            }
            if let Some(v) = values.iter().find(|v| !is_label_value(v)) {
                return invalid(format!(
                    "matchExpressions[{i}].values: {v:?} is not a valid label value"
                ));
            }
        }
        Ok(Self {
            selector: selector.clone(),
        })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let labels_match = self
            .selector
            .match_labels
            .iter()
            .flatten()
            .all(|(k, v)| labels.get(k) == Some(v));
        labels_match
            && self.selector.match_expressions.iter().flatten().all(|e| {
                let values = e.values.as_deref().unwrap_or_default();
                let value = labels.get(&e.key);
                // compile() checked the operator; an unknown one matches nothing.
                match Operator::parse(&e.operator) {
                    Some(Operator::In) => value.is_some_and(|v| values.contains(v)),
                    // As in Kubernetes: a pod without the key is not in the set.
                    Some(Operator::NotIn) => value.is_none_or(|v| !values.contains(v)),
                    Some(Operator::Exists) => value.is_some(),
                    Some(Operator::DoesNotExist) => value.is_none(),
                    None => false,
                }
            })
    }

    /// The selector as written.
    pub fn selector(&self) -> &LabelSelector {
        &self.selector
    }

    /// True for a selector that matches every label set.
    pub fn is_empty(&self) -> bool {
        self.selector
            .match_labels
            .as_ref()
            .is_none_or(BTreeMap::is_empty)
            && self
                .selector
                .match_expressions
                .as_ref()
                .is_none_or(Vec::is_empty)
    }
}

/// A Kubernetes label key: an optional DNS-subdomain prefix (at most 253 characters) and
/// `/`, then a name of at most 63 characters (`[A-Za-z0-9]` at both ends, `-`, `_`, `.` inside).
pub fn is_label_key(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    prefix.is_none_or(is_dns_subdomain) && !name.is_empty() && is_label_value(name)
}

/// A Kubernetes label value: empty, or at most 63 characters, `[A-Za-z0-9]` at both ends and
/// `-`, `_`, `.` inside.
pub fn is_label_value(value: &str) -> bool {
    let b = value.as_bytes();
    b.is_empty()
        || (b.len() <= 63
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')))
}

/// A lowercase RFC 1123 subdomain (a label key's prefix).
fn is_dns_subdomain(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;
    use crate::template::tests::labels;

    fn expr(key: &str, op: &str, values: Option<&[&str]>) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: values.map(|v| v.iter().map(|s| (*s).to_owned()).collect()),
        }
    }

    fn selector(
        match_labels: &[(&str, &str)],
        exprs: Vec<LabelSelectorRequirement>,
    ) -> LabelSelector {
        LabelSelector {
            match_labels: (!match_labels.is_empty()).then(|| labels(match_labels)),
            match_expressions: (!exprs.is_empty()).then_some(exprs),
        }
    }

    fn compiled(s: LabelSelector) -> CompiledSelector {
        CompiledSelector::compile(&s).unwrap()
    }

    #[test]
    fn empty_selector_matches_everything() {
        let s = compiled(LabelSelector::default());
        assert!(s.is_empty());
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("a", "b")])));
        let s = compiled(LabelSelector {
            match_labels: Some(BTreeMap::new()),
            match_expressions: Some(vec![]),
        });
        assert!(s.is_empty() && s.matches(&labels(&[])));
    }

    #[test]
    fn match_labels_and_expressions_are_anded() {
        let s = compiled(selector(
            &[("app", "web")],
            vec![
                expr("tier", "In", Some(&["front", "edge"])),
                expr("canary", "NotIn", Some(&["true"])),
                expr("team", "Exists", None),
                expr("legacy", "DoesNotExist", Some(&[])),
            ],
        ));
        assert!(!s.is_empty());
        let base = [("app", "web"), ("tier", "edge"), ("team", "x")];
        assert!(s.matches(&labels(&base)));
        // NotIn matches when the key is absent, and when the value is another.
        assert!(s.matches(&labels(&[
            ("app", "web"),
            ("tier", "front"),
            ("team", "x"),
            ("canary", "false")
        ])));
        for broken in [
            vec![("app", "api"), ("tier", "edge"), ("team", "x")],
            vec![("tier", "edge"), ("team", "x")],
            vec![("app", "web"), ("tier", "back"), ("team", "x")],
            vec![("app", "web"), ("team", "x")],
            vec![("app", "web"), ("tier", "edge")],
            vec![
                ("app", "web"),
                ("tier", "edge"),
                ("team", "x"),
                ("canary", "true"),
            ],
            vec![
                ("app", "web"),
                ("tier", "edge"),
                ("team", "x"),
                ("legacy", ""),
            ],
        ] {
            assert!(!s.matches(&labels(&broken)), "{broken:?}");
        }
    }

    #[test]
    fn in_with_empty_string_value() {
        let s = compiled(selector(&[], vec![expr("a", "In", Some(&[""]))]));
        assert!(s.matches(&labels(&[("a", "")])));
        assert!(!s.matches(&labels(&[])));
    }

    #[test]
    fn invalid_selectors_are_refused() {
        let many_values: Vec<String> = (0..=MAX_EXPRESSION_VALUES)
            .map(|i| format!("v{i}"))
            .collect();
        let many_values: Vec<&str> = many_values.iter().map(String::as_str).collect();
        for (s, want) in [
            (
                selector(&[], vec![expr("a", "in", Some(&["x"]))]),
                "operator",
            ),
            (
                selector(&[], vec![expr("a", "Gt", Some(&["1"]))]),
                "operator",
            ),
            (
                selector(&[], vec![expr("a", "In", None)]),
                "needs at least one value",
            ),
            (
                selector(&[], vec![expr("a", "NotIn", Some(&[]))]),
                "needs at least one value",
            ),
            (
                selector(&[], vec![expr("a", "Exists", Some(&["x"]))]),
                "takes no values",
            ),
            (
                selector(&[], vec![expr("a", "DoesNotExist", Some(&["x"]))]),
                "takes no values",
            ),
            (selector(&[], vec![expr("", "Exists", None)]), "key"),
            (selector(&[], vec![expr("a b", "Exists", None)]), "key"),
            (
                selector(&[], vec![expr("a", "In", Some(&["b c"]))]),
                "label value",
            ),
            (
                selector(&[], vec![expr("a", "In", Some(&many_values))]),
                "at most",
            ),
            (selector(&[("Bad.Prefix/a", "x")], vec![]), "label key"),
            (selector(&[("a", "-x")], vec![]), "label value"),
            (selector(&[("a", &"x".repeat(64))], vec![]), "label value"),
        ] {
            let err = CompiledSelector::compile(&s).unwrap_err().to_string();
            assert!(err.contains(want), "{s:?}: {err}");
        }
        let many: Vec<_> = (0..=MAX_MATCH_EXPRESSIONS)
            .map(|i| expr(&format!("k{i}"), "Exists", None))
            .collect();
        assert!(CompiledSelector::compile(&selector(&[], many)).is_err());
        let many: Vec<(String, String)> = (0..=MAX_MATCH_LABELS)
            .map(|i| (format!("k{i}"), "v".to_owned()))
            .collect();
        let s = LabelSelector {
            match_labels: Some(many.into_iter().collect()),
            match_expressions: None,
        };
        assert!(CompiledSelector::compile(&s).is_err());
    }

    #[test]
    fn label_keys_and_values() {
        for ok in ["a", "app.kubernetes.io/name", "example.com/x_y-z.1", "A1"] {
            assert!(is_label_key(ok), "{ok}");
        }
        for bad in [
            "",
            "/a",
            "a/",
            "a/b/c",
            "Example.com/a",
            "-a",
            "a-",
            "a b",
            "é",
        ] {
            assert!(!is_label_key(bad), "{bad}");
        }
        // A prefix of 253 characters (three 63-character labels and one of 61), and one more.
        let prefix = format!("{0}.{0}.{0}.{1}", "p".repeat(63), "p".repeat(61));
        assert!(is_label_key(&format!("{prefix}/a")));
        assert!(!is_label_key(&format!("{prefix}p/a")));
        assert!(!is_label_key(&"a".repeat(64)));
        for ok in ["", "a", "a.b_c-d", &"x".repeat(63)] {
            assert!(is_label_value(ok), "{ok}");
        }
        for bad in ["-", "a/b", "a:", &"x".repeat(64)] {
            assert!(!is_label_value(bad), "{bad}");
        }
    }
}
