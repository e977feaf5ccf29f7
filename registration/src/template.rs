//! `{placeholder}` templates, rendered with one pod's facts.
//!
//! Placeholders: `{trust_domain}`, `{namespace}`, `{service_account}`, `{pod_name}`,
//! `{pod_uid}`, `{node_name}`, `{label:KEY}` (a pod label), `{namespace_label:KEY}`.
//! The server's `--pod-id-template` uses the same syntax (it is the default registration).
//!
//! There is no escape: `{` always opens a placeholder and `}` always closes one, since no
//! SPIFFE ID, DNS name or selector the templates produce needs a brace. `KEY` is a Kubernetes
//! label key (`app`, `app.kubernetes.io/name`), checked when the template is parsed.
//!
//! CONTRACT (lead): the signatures below are shared with lanyard-server and the CLI.

use std::fmt;

use crate::label_selector::is_label_key;
use crate::registry::PodFacts;

/// The longest template, in characters (the CRD's `maxLength` says the same).
pub const MAX_TEMPLATE_LEN: usize = 512;

/// The longest placeholder text quoted back in an error.
const MAX_QUOTED: usize = 64;

/// Why a template text is refused (at compile time, for every pod).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unknown placeholder {0:?}")]
    UnknownPlaceholder(String),
    #[error("unbalanced '{{' or '}}'")]
    Unbalanced,
    #[error("template is longer than {0} characters")]
    TooLong(usize),
}

/// Why rendering for one pod failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// A `{label:KEY}` / `{namespace_label:KEY}` the pod or namespace does not have.
    #[error("{0} is not set")]
    MissingValue(String),
}

/// One `{...}` of a template.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Placeholder {
    TrustDomain,
    Namespace,
    ServiceAccount,
    PodName,
    PodUid,
    NodeName,
    /// `{label:KEY}`: the pod's label `KEY`.
    Label(String),
    /// `{namespace_label:KEY}`: the pod's namespace's label `KEY`.
    NamespaceLabel(String),
}

impl Placeholder {
    fn parse(text: &str) -> Option<Self> {
        let found = match text {
            "trust_domain" => Self::TrustDomain,
            "namespace" => Self::Namespace,
            "service_account" => Self::ServiceAccount,
            "pod_name" => Self::PodName,
            "pod_uid" => Self::PodUid,
            "node_name" => Self::NodeName,
            _ => {
                let (kind, key) = text.split_once(':')?;
                if !is_label_key(key) {
                    return None;
                }
                match kind {
                    "label" => Self::Label(key.to_owned()),
                    "namespace_label" => Self::NamespaceLabel(key.to_owned()),
                    _ => return None,
                }
            }
        };
        Some(found)
    }

    /// The value for one pod.
    fn value<'a>(
        &self,
        trust_domain: &'a str,
        pod: &'a PodFacts<'a>,
    ) -> Result<&'a str, RenderError> {
        Ok(match self {
            Self::TrustDomain => trust_domain,
            Self::Namespace => pod.namespace,
            Self::ServiceAccount => pod.service_account,
            Self::PodName => pod.name,
            Self::PodUid => pod.uid,
            Self::NodeName => pod.node_name,
            Self::Label(key) => pod
                .labels
                .get(key)
                .ok_or_else(|| RenderError::MissingValue(format!("label {key}")))?,
            Self::NamespaceLabel(key) => match pod.namespace_labels {
                Some(labels) => labels
                    .get(key)
                    .ok_or_else(|| RenderError::MissingValue(format!("namespace_label {key}")))?,
                None => {
                    return Err(RenderError::MissingValue(format!(
                        "namespace_label {key} (namespace {} not known yet)",
                        pod.namespace
                    )));
                }
            },
        })
    }
}

impl fmt::Display for Placeholder {
    /// As written in a template, braces included.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TrustDomain => f.write_str("{trust_domain}"),
            Self::Namespace => f.write_str("{namespace}"),
            Self::ServiceAccount => f.write_str("{service_account}"),
            Self::PodName => f.write_str("{pod_name}"),
            Self::PodUid => f.write_str("{pod_uid}"),
            Self::NodeName => f.write_str("{node_name}"),
            Self::Label(key) => write!(f, "{{label:{key}}}"),
            Self::NamespaceLabel(key) => write!(f, "{{namespace_label:{key}}}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Value(Placeholder),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    text: String,
    parts: Vec<Part>,
}

impl Template {
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        // Counted in characters, as the CRD's maxLength is; the byte check first bounds the
        // work on absurd input.
        if text.len() > 4 * MAX_TEMPLATE_LEN || text.chars().count() > MAX_TEMPLATE_LEN {
            return Err(TemplateError::TooLong(MAX_TEMPLATE_LEN));
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let open = rest.find('{');
            let close = rest.find('}');
            match (open, close) {
                (None, None) => {
                    parts.push(Part::Literal(rest.to_owned()));
                    break;
                }
                // A `}` before any `{`.
                (None, Some(_)) => return Err(TemplateError::Unbalanced),
                (Some(o), Some(c)) if c < o => return Err(TemplateError::Unbalanced),
                (Some(_), None) => return Err(TemplateError::Unbalanced),
                (Some(o), Some(c)) => {
                    let inner = &rest[o + 1..c];
                    // A second `{` before the `}`.
                    if inner.contains('{') {
                        return Err(TemplateError::Unbalanced);
                    }
                    if o > 0 {
                        parts.push(Part::Literal(rest[..o].to_owned()));
                    }
                    let placeholder = Placeholder::parse(inner)
                        .ok_or_else(|| TemplateError::UnknownPlaceholder(quoted(inner)))?;
                    parts.push(Part::Value(placeholder));
                    rest = &rest[c + 1..];
                }
            }
        }
        Ok(Self {
            text: text.to_owned(),
            parts,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The placeholders it uses, in order (repeats included).
    pub fn placeholders(&self) -> impl Iterator<Item = &Placeholder> {
        self.parts.iter().filter_map(|p| match p {
            Part::Value(v) => Some(v),
            Part::Literal(_) => None,
        })
    }

    /// The literal text before the first placeholder (all of it when there is none).
    pub fn literal_prefix(&self) -> &str {
        match self.parts.first() {
            Some(Part::Literal(text)) => text,
            _ => "",
        }
    }

    /// True when the template has no placeholder.
    pub fn is_literal(&self) -> bool {
        self.placeholders().next().is_none()
    }

    /// The text with every placeholder replaced (values inserted verbatim; the caller checks
    /// what the result must be: an ID, a DNS name, a selector).
    pub fn render(&self, trust_domain: &str, pod: &PodFacts<'_>) -> Result<String, RenderError> {
        self.render_checked(trust_domain, pod, |_, _| true)
            .map(|(text, _)| text)
    }

    /// Renders like [`Self::render`] and also says whether every inserted value passed `ok`
    /// (the registry refuses an ID whose values would add path segments).
    pub(crate) fn render_checked(
        &self,
        trust_domain: &str,
        pod: &PodFacts<'_>,
        ok: impl Fn(&Placeholder, &str) -> bool,
    ) -> Result<(String, bool), RenderError> {
        let mut out = String::with_capacity(self.text.len() + 32);
        let mut all_ok = true;
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Value(placeholder) => {
                    let value = placeholder.value(trust_domain, pod)?;
                    all_ok &= ok(placeholder, value);
                    out.push_str(value);
                }
            }
        }
        Ok((out, all_ok))
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A bounded quote of refused input, cut on a character boundary.
fn quoted(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use super::*;

    pub(crate) fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn render(template: &str, pod: &PodFacts<'_>) -> Result<String, RenderError> {
        Template::parse(template)
            .unwrap()
            .render("example.org", pod)
    }

    #[test]
    fn every_placeholder_renders() {
        let pod_labels = labels(&[("app", "web"), ("app.kubernetes.io/name", "shop")]);
        let ns_labels = labels(&[("team", "blue")]);
        let pod = PodFacts {
            namespace: "prod",
            name: "web-1",
            uid: "0f0e",
            service_account: "web-sa",
            node_name: "node-1",
            labels: &pod_labels,
            namespace_labels: Some(&ns_labels),
        };
        assert_eq!(
            render(
                "spiffe://{trust_domain}/{namespace}/{service_account}/{pod_name}/{pod_uid}/{node_name}",
                &pod
            )
            .unwrap(),
            "spiffe://example.org/prod/web-sa/web-1/0f0e/node-1"
        );
        assert_eq!(
            render(
                "/a/{label:app}-{label:app.kubernetes.io/name}/{namespace_label:team}",
                &pod
            )
            .unwrap(),
            "/a/web-shop/blue"
        );
        assert_eq!(render("no placeholders", &pod).unwrap(), "no placeholders");
        assert_eq!(render("", &pod).unwrap(), "");
    }

    #[test]
    fn the_server_template_syntax_is_unchanged() {
        let none = BTreeMap::new();
        let pod = PodFacts {
            namespace: "default",
            name: "p",
            uid: "u",
            service_account: "web",
            node_name: "n",
            labels: &none,
            namespace_labels: None,
        };
        let t = Template::parse("/ns/{namespace}/sa/{service_account}").unwrap();
        assert_eq!(t.render("example.org", &pod).unwrap(), "/ns/default/sa/web");
        assert_eq!(t.as_str(), "/ns/{namespace}/sa/{service_account}");
        assert_eq!(t.literal_prefix(), "/ns/");
        assert_eq!(
            Template::parse("/pod/{pod_name}")
                .unwrap()
                .render("example.org", &pod)
                .unwrap(),
            "/pod/p"
        );
        // pod_id.rs refused an unknown placeholder; so does this parser.
        assert_eq!(
            Template::parse("/ns/{nam}"),
            Err(TemplateError::UnknownPlaceholder("nam".into()))
        );
    }

    #[test]
    fn missing_labels_are_named() {
        let pod_labels = labels(&[("app", "web")]);
        let ns_labels = labels(&[]);
        let mut pod = PodFacts {
            namespace: "prod",
            name: "web-1",
            uid: "u",
            service_account: "sa",
            node_name: "n",
            labels: &pod_labels,
            namespace_labels: Some(&ns_labels),
        };
        assert_eq!(
            render("/{label:tier}", &pod),
            Err(RenderError::MissingValue("label tier".into()))
        );
        assert_eq!(
            render("/{namespace_label:team}", &pod),
            Err(RenderError::MissingValue("namespace_label team".into()))
        );
        pod.namespace_labels = None;
        let err = render("/{namespace_label:team}", &pod).unwrap_err();
        assert!(
            err.to_string().contains("namespace prod not known"),
            "{err}"
        );
    }

    #[test]
    fn refusals() {
        for (text, want) in [
            ("/{", TemplateError::Unbalanced),
            ("/}", TemplateError::Unbalanced),
            ("/}{namespace}", TemplateError::Unbalanced),
            ("/{namespace", TemplateError::Unbalanced),
            ("/{{namespace}}", TemplateError::Unbalanced),
            ("/{namespace}}", TemplateError::Unbalanced),
            ("/{}", TemplateError::UnknownPlaceholder(String::new())),
            (
                "/{Namespace}",
                TemplateError::UnknownPlaceholder("Namespace".into()),
            ),
            (
                "/{label:}",
                TemplateError::UnknownPlaceholder("label:".into()),
            ),
            (
                "/{label:a b}",
                TemplateError::UnknownPlaceholder("label:a b".into()),
            ),
            (
                "/{label:-a}",
                TemplateError::UnknownPlaceholder("label:-a".into()),
            ),
            (
                "/{label:a/b/c}",
                TemplateError::UnknownPlaceholder("label:a/b/c".into()),
            ),
            (
                "/{annotation:a}",
                TemplateError::UnknownPlaceholder("annotation:a".into()),
            ),
            (
                "/{ namespace }",
                TemplateError::UnknownPlaceholder(" namespace ".into()),
            ),
        ] {
            assert_eq!(Template::parse(text), Err(want), "{text}");
        }
        let long = format!("/{}", "a".repeat(MAX_TEMPLATE_LEN));
        assert_eq!(
            Template::parse(&long),
            Err(TemplateError::TooLong(MAX_TEMPLATE_LEN))
        );
        assert!(Template::parse(&long[1..]).is_ok());
        // Quoted placeholders are bounded.
        let odd = format!(
            "{{{}}}",
            "x".repeat(1000).chars().take(400).collect::<String>()
        );
        match Template::parse(&odd) {
            Err(TemplateError::UnknownPlaceholder(q)) => assert!(q.len() < 80, "{q}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn placeholders_are_listed_and_displayed_as_written() {
        let t = Template::parse("{trust_domain}{label:a.b/c}x{namespace_label:t}").unwrap();
        let shown: Vec<String> = t.placeholders().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            ["{trust_domain}", "{label:a.b/c}", "{namespace_label:t}"]
        );
        assert!(!t.is_literal());
        assert_eq!(t.literal_prefix(), "");
        assert!(Template::parse("/x").unwrap().is_literal());
    }
}
