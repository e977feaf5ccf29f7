//! A `LanyardIdentity` checked once: templates parsed, selectors checked, TTLs parsed with
//! the daemons' bounds, and IDs that could only ever be reserved or foreign refused.
//!
//! "Could only ever" is decided by rendering each template with sample facts (plain
//! lowercase names, a UUID, every label the template names set to `sample`): a failure then
//! comes from the template's own text (a literal `/lanyard/` prefix, a literal foreign trust
//! domain, `//`, uppercase in a DNS name, an unknown selector kind), not from a pod, so it
//! refuses the resource as a whole. What depends on a pod's values is checked per pod.

use std::collections::BTreeMap;
use std::time::Duration;

use lanyard_svid::TrustDomain;
use lanyard_svid::selector::{Selector, SelectorError};

use crate::label_selector::CompiledSelector;
use crate::registry::{PodFacts, render_id};
use crate::resource::LanyardIdentity;
use crate::template::{Placeholder, Template};

/// Most `dnsNameTemplates` (the CRD's `maxItems`).
pub const MAX_DNS_NAMES: usize = 16;
/// Most `workloadSelectorTemplates` (the CRD's `maxItems`).
pub const MAX_WORKLOAD_SELECTORS: usize = 16;
/// Longest `hint`, in bytes (the CRD's `maxLength`, which counts characters, is the same
/// number, so a multi-byte hint the API server lets through may still be refused here).
pub const MAX_HINT_LEN: usize = 256;
/// Longest rendered DNS name (RFC 1035).
pub const MAX_DNS_NAME_LEN: usize = 253;

const SCHEME: &str = "spiffe://";

/// Why a whole resource is refused (shown as `status.specError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("{field}: {message}")]
    Field {
        field: &'static str,
        message: String,
    },
}

fn spec_error(field: &'static str, message: impl Into<String>) -> SpecError {
    SpecError::Field {
        field,
        message: message.into(),
    }
}

/// A valid resource, ready to render for pods.
#[derive(Debug, Clone)]
pub struct CompiledIdentity {
    pub name: String,
    pub generation: Option<i64>,
    pub spiffe_id: Template,
    pub pod_selector: CompiledSelector,
    pub namespace_selector: CompiledSelector,
    pub dns_names: Vec<Template>,
    pub workload_selectors: Vec<Template>,
    pub x509_ttl: Option<Duration>,
    pub jwt_ttl: Option<Duration>,
    pub fallback: bool,
    pub hint: String,
    /// `federatesWith`, checked: a set, sorted.
    pub federates_with: Vec<TrustDomain>,
    /// Whether the spec had a `namespaceSelector` at all: a resource with one does not select
    /// a pod whose namespace is not known yet (even `{}`).
    has_namespace_selector: bool,
}

impl CompiledIdentity {
    pub fn compile(
        resource: &LanyardIdentity,
        trust_domain: &TrustDomain,
    ) -> Result<Self, SpecError> {
        let spec = &resource.spec;
        if resource.name().is_empty() {
            return Err(spec_error("metadata.name", "the resource has no name"));
        }

        let spiffe_id = compile_id_template(
            "spec.spiffeIDTemplate",
            &spec.spiffe_id_template,
            trust_domain,
        )?;

        let pod_selector = match &spec.pod_selector {
            Some(s) => CompiledSelector::compile(s)
                .map_err(|e| spec_error("spec.podSelector", e.to_string()))?,
            None => CompiledSelector::default(),
        };
        let namespace_selector = match &spec.namespace_selector {
            Some(s) => CompiledSelector::compile(s)
                .map_err(|e| spec_error("spec.namespaceSelector", e.to_string()))?,
            None => CompiledSelector::default(),
        };

        const DNS: &str = "spec.dnsNameTemplates";
        if spec.dns_name_templates.len() > MAX_DNS_NAMES {
            return Err(spec_error(
                DNS,
                format!("at most {MAX_DNS_NAMES} templates"),
            ));
        }
        let mut dns_names = Vec::with_capacity(spec.dns_name_templates.len());
        for (i, text) in spec.dns_name_templates.iter().enumerate() {
            let t = Template::parse(text).map_err(|e| spec_error(DNS, format!("[{i}]: {e}")))?;
            let sample = render_sample(&t, trust_domain);
            if !is_dns_name(&sample) {
                return Err(spec_error(
                    DNS,
                    format!(
                        "[{i}]: {text:?} does not make a DNS name (lowercase letters, digits, \
                         '-' and '.', optionally starting with \"*.\"; for example it renders \
                         {sample:?})"
                    ),
                ));
            }
            dns_names.push(t);
        }

        const SELECTORS: &str = "spec.workloadSelectorTemplates";
        if spec.workload_selector_templates.len() > MAX_WORKLOAD_SELECTORS {
            return Err(spec_error(
                SELECTORS,
                format!("at most {MAX_WORKLOAD_SELECTORS} templates"),
            ));
        }
        let mut workload_selectors = Vec::with_capacity(spec.workload_selector_templates.len());
        for (i, text) in spec.workload_selector_templates.iter().enumerate() {
            let t =
                Template::parse(text).map_err(|e| spec_error(SELECTORS, format!("[{i}]: {e}")))?;
            match Selector::parse(&render_sample(&t, trust_domain)) {
                Ok(_) => {}
                // A value made of placeholders is checked per pod: the sample is not one.
                Err(
                    SelectorError::BadValue { .. }
                    | SelectorError::EmptyValue(_)
                    | SelectorError::ValueTooLong { .. },
                ) if !t.is_literal() => {}
                Err(e) => {
                    return Err(spec_error(
                        SELECTORS,
                        format!("[{i}]: {text:?}: {e} (kind and key must be written out)"),
                    ));
                }
            }
            workload_selectors.push(t);
        }

        let ttl = |field: &'static str, text: &Option<String>| {
            text.as_deref()
                .map(lanyard_daemon::duration::parse_duration)
                .transpose()
                .map_err(|e| spec_error(field, e))
        };
        let x509_ttl = ttl("spec.x509TTL", &spec.x509_ttl)?;
        let jwt_ttl = ttl("spec.jwtTTL", &spec.jwt_ttl)?;

        let hint = spec.hint.clone().unwrap_or_default();
        if hint.len() > MAX_HINT_LEN {
            return Err(spec_error(
                "spec.hint",
                format!("at most {MAX_HINT_LEN} bytes"),
            ));
        }

        let federates_with =
            crate::federation::check_federates_with(&spec.federates_with, trust_domain)
                .map_err(|e| spec_error("spec.federatesWith", e.to_string()))?;

        Ok(Self {
            name: resource.name().to_owned(),
            generation: resource.metadata.generation,
            spiffe_id,
            pod_selector,
            namespace_selector,
            dns_names,
            workload_selectors,
            x509_ttl,
            jwt_ttl,
            fallback: spec.fallback,
            hint,
            federates_with,
            has_namespace_selector: spec.namespace_selector.is_some(),
        })
    }

    /// Whether this resource selects `pod` (rule 2 of [`crate::registry`]).
    pub fn selects(&self, pod: &PodFacts<'_>) -> bool {
        let namespace_matches = match pod.namespace_labels {
            Some(labels) => self.namespace_selector.matches(labels),
            None => !self.has_namespace_selector,
        };
        namespace_matches && self.pod_selector.matches(pod.labels)
    }
}

/// Checks an ID template (`spiffeIDTemplate`, or the `--pod-id-template`) for `trust_domain`;
/// `field` names it in the error.
pub(crate) fn compile_id_template(
    field: &'static str,
    text: &str,
    trust_domain: &TrustDomain,
) -> Result<Template, SpecError> {
    let t = Template::parse(text).map_err(|e| spec_error(field, e.to_string()))?;
    // What the sample render checks: a trust domain made of placeholders is checked per pod,
    // so the sample puts ours in its place and checks the rest.
    let mut checked = t.clone();
    if let Some(rest) = text.strip_prefix(SCHEME) {
        let authority = authority_of(rest);
        if authority.contains('{') {
            checked = Template::parse(&format!(
                "{SCHEME}{{trust_domain}}{}",
                &rest[authority.len()..]
            ))
            .map_err(|e| spec_error(field, e.to_string()))?;
        } else {
            let td = TrustDomain::new(authority)
                .map_err(|e| spec_error(field, format!("trust domain {authority:?}: {e}")))?;
            if &td != trust_domain {
                return Err(spec_error(
                    field,
                    format!(
                        "the trust domain {td} is not this server's ({trust_domain}); write a \
                         path, or spiffe://{{trust_domain}}/..."
                    ),
                ));
            }
        }
    } else if !text.starts_with('/') {
        return Err(spec_error(
            field,
            "must be a path starting with '/' or a whole spiffe:// ID",
        ));
    }
    let sample = sample_facts(&checked);
    let pod = sample.facts();
    render_id(&checked, trust_domain, &pod).map_err(|(reason, message)| {
        spec_error(field, format!("{message} ({reason} for every pod)"))
    })?;
    Ok(t)
}

/// The authority part of a template after `spiffe://`: up to the first `/` outside braces
/// (a label key in a placeholder may hold a `/`).
fn authority_of(rest: &str) -> &str {
    let mut depth = 0usize;
    for (i, c) in rest.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            '/' if depth == 0 => return &rest[..i],
            _ => {}
        }
    }
    rest
}

/// A lowercase RFC 1123 host name of at most 253 characters, labels of 1 to 63 characters
/// (`a-z`, `0-9`, `-` inside), optionally a leading `*.` wildcard label.
pub fn is_dns_name(name: &str) -> bool {
    if name.len() > MAX_DNS_NAME_LEN {
        return false;
    }
    let host = name.strip_prefix("*.").unwrap_or(name);
    !host.is_empty()
        && host.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
                && b.iter()
                    .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        })
}

/// Sample facts for rendering a template at compile time: every label it names is set.
pub(crate) struct SampleFacts {
    labels: BTreeMap<String, String>,
    namespace_labels: BTreeMap<String, String>,
}

const SAMPLE: &str = "sample";

pub(crate) fn sample_facts(template: &Template) -> SampleFacts {
    let mut labels = BTreeMap::new();
    let mut namespace_labels = BTreeMap::new();
    for p in template.placeholders() {
        match p {
            Placeholder::Label(k) => {
                labels.insert(k.clone(), SAMPLE.to_owned());
            }
            Placeholder::NamespaceLabel(k) => {
                namespace_labels.insert(k.clone(), SAMPLE.to_owned());
            }
            _ => {}
        }
    }
    SampleFacts {
        labels,
        namespace_labels,
    }
}

impl SampleFacts {
    pub(crate) fn facts(&self) -> PodFacts<'_> {
        PodFacts {
            namespace: "sample-ns",
            name: "sample-pod",
            uid: "00000000-0000-4000-8000-000000000000",
            service_account: "sample-sa",
            node_name: "sample-node",
            labels: &self.labels,
            namespace_labels: Some(&self.namespace_labels),
        }
    }
}

fn render_sample(t: &Template, trust_domain: &TrustDomain) -> String {
    let sample = sample_facts(t);
    t.render(trust_domain.name(), &sample.facts())
        .expect("the sample sets every label the template names")
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

    use super::*;
    use crate::resource::LanyardIdentitySpec;
    use crate::template::tests::labels;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn spec(id: &str) -> LanyardIdentitySpec {
        LanyardIdentitySpec {
            spiffe_id_template: id.into(),
            ..Default::default()
        }
    }

    fn compile(spec: LanyardIdentitySpec) -> Result<CompiledIdentity, SpecError> {
        CompiledIdentity::compile(&LanyardIdentity::new("r", spec), &td())
    }

    fn field_of(err: SpecError) -> &'static str {
        let SpecError::Field { field, .. } = err;
        field
    }

    #[test]
    fn a_full_spec_compiles() {
        let mut r = LanyardIdentity::new(
            "web",
            LanyardIdentitySpec {
                spiffe_id_template: "spiffe://{trust_domain}/ns/{namespace}/app/{label:app}".into(),
                pod_selector: Some(LabelSelector {
                    match_labels: Some(labels(&[("app", "web")])),
                    match_expressions: None,
                }),
                namespace_selector: Some(LabelSelector::default()),
                dns_name_templates: vec![
                    "{pod_name}.{namespace}.svc".into(),
                    "*.web.example.org".into(),
                ],
                x509_ttl: Some("1h".into()),
                jwt_ttl: Some("5m".into()),
                workload_selector_templates: vec![
                    "unix:uid:{label:uid}".into(),
                    "k8s:pod-label:app:web".into(),
                ],
                class_name: Some("lanyard".into()),
                fallback: true,
                hint: Some("web".into()),
                federates_with: vec!["partner.example".into(), "a.example".into()],
            },
        );
        r.metadata.generation = Some(7);
        let c = CompiledIdentity::compile(&r, &td()).unwrap();
        assert_eq!(c.name, "web");
        assert_eq!(c.generation, Some(7));
        assert_eq!(c.x509_ttl, Some(Duration::from_secs(3600)));
        assert_eq!(c.jwt_ttl, Some(Duration::from_secs(300)));
        assert_eq!(c.dns_names.len(), 2);
        assert_eq!(c.workload_selectors.len(), 2);
        assert!(c.fallback);
        assert_eq!(c.hint, "web");
        assert_eq!(
            c.federates_with,
            [
                TrustDomain::new("a.example").unwrap(),
                TrustDomain::new("partner.example").unwrap()
            ]
        );
        // Literal own trust domain, any case of path.
        compile(spec("spiffe://example.org/Web")).unwrap();
        compile(spec("/ns/{namespace}/sa/{service_account}")).unwrap();
        // Anything not literal in the trust domain is checked per pod.
        compile(spec("spiffe://{label:td}/x")).unwrap();
        // A path that only may be reserved (for a pod whose label is "lanyard").
        compile(spec("/{label:a}/x")).unwrap();
        compile(spec("/lanyardx/{namespace}")).unwrap();
    }

    #[test]
    fn id_templates_refused_as_a_whole() {
        for (id, want) in [
            ("ns/{namespace}", "starting with '/'"),
            ("SPIFFE://example.org/x", "starting with '/'"),
            ("spiffe://other.org/x", "not this server's"),
            ("spiffe://Example.org/x", "lowercase"),
            ("spiffe://example.org:80/x", "trust domain"),
            ("/lanyard/{namespace}", "reserved"),
            ("/lanyard", "reserved"),
            ("spiffe://{trust_domain}/lanyard/x", "reserved"),
            ("spiffe://{label:td}/lanyard/x", "reserved"),
            ("spiffe://{label:td}//x", "empty segment"),
            ("/ns//{namespace}", "empty segment"),
            ("/ns/{namespace}/", "empty segment"),
            ("/a b", "character"),
            ("/{nope}", "unknown placeholder"),
            ("/{namespace", "unbalanced"),
            ("spiffe://example.org", "no path"),
            ("spiffe://{trust_domain}", "no path"),
        ] {
            let err = compile(spec(id)).unwrap_err();
            let text = err.to_string();
            assert!(text.starts_with("spec.spiffeIDTemplate: "), "{id}: {text}");
            assert!(text.contains(want), "{id}: {text}");
        }
    }

    #[test]
    fn other_fields_refused_by_name() {
        let base = || spec("/x");
        let mut s = base();
        s.dns_name_templates = vec!["a".into(); MAX_DNS_NAMES + 1];
        assert_eq!(field_of(compile(s).unwrap_err()), "spec.dnsNameTemplates");
        let mut s = base();
        s.dns_name_templates = vec!["A.example.org".into()];
        assert_eq!(field_of(compile(s).unwrap_err()), "spec.dnsNameTemplates");
        let mut s = base();
        s.dns_name_templates = vec!["web/x".into()];
        assert_eq!(field_of(compile(s).unwrap_err()), "spec.dnsNameTemplates");
        let mut s = base();
        s.dns_name_templates = vec!["{pod_nam}.svc".into()];
        assert_eq!(field_of(compile(s).unwrap_err()), "spec.dnsNameTemplates");
        let mut s = base();
        s.workload_selector_templates = vec!["unix:uid:1".into(); MAX_WORKLOAD_SELECTORS + 1];
        assert_eq!(
            field_of(compile(s).unwrap_err()),
            "spec.workloadSelectorTemplates"
        );
        for bad in [
            "k9s:x:1",
            "unix:nope:1",
            "unix:uid:x",
            "{label:a}",
            "unix:uid:{bad}",
        ] {
            let mut s = base();
            s.workload_selector_templates = vec![bad.into()];
            assert_eq!(
                field_of(compile(s).unwrap_err()),
                "spec.workloadSelectorTemplates",
                "{bad}"
            );
        }
        for (ttl, ok) in [
            ("1h", true),
            ("90s", true),
            ("2d", true),
            ("0s", false),
            ("soon", false),
            ("2years", false),
        ] {
            let mut s = base();
            s.x509_ttl = Some(ttl.into());
            assert_eq!(compile(s).is_ok(), ok, "{ttl}");
            let mut s = base();
            s.jwt_ttl = Some(ttl.into());
            match compile(s) {
                Ok(_) => assert!(ok),
                Err(e) => assert_eq!(field_of(e), "spec.jwtTTL"),
            }
        }
        let mut s = base();
        s.x509_ttl = Some("0s".into());
        assert_eq!(field_of(compile(s).unwrap_err()), "spec.x509TTL");
        let mut s = base();
        s.hint = Some("h".repeat(MAX_HINT_LEN + 1));
        assert_eq!(field_of(compile(s).unwrap_err()), "spec.hint");
        let mut s = base();
        s.hint = Some("h".repeat(MAX_HINT_LEN));
        compile(s).unwrap();
        for bad in [
            vec!["example.org".to_owned()],
            vec!["Partner.example".to_owned()],
            vec!["spiffe://partner.example".to_owned()],
            (0..=crate::federation::MAX_FEDERATES_WITH)
                .map(|i| format!("d{i}.example"))
                .collect(),
        ] {
            let mut s = base();
            s.federates_with = bad.clone();
            assert_eq!(
                field_of(compile(s).unwrap_err()),
                "spec.federatesWith",
                "{bad:?}"
            );
        }
        let bad_selector = LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "a".into(),
                operator: "Exists".into(),
                values: Some(vec!["x".into()]),
            }]),
        };
        let mut s = base();
        s.pod_selector = Some(bad_selector.clone());
        assert_eq!(field_of(compile(s).unwrap_err()), "spec.podSelector");
        let mut s = base();
        s.namespace_selector = Some(bad_selector);
        assert_eq!(field_of(compile(s).unwrap_err()), "spec.namespaceSelector");
        let unnamed = LanyardIdentity {
            spec: base(),
            ..Default::default()
        };
        assert_eq!(
            field_of(CompiledIdentity::compile(&unnamed, &td()).unwrap_err()),
            "metadata.name"
        );
    }

    #[test]
    fn dns_names() {
        for ok in [
            "web",
            "web.prod.svc",
            "*.example.org",
            "a-1.b2",
            "0.example",
            &format!(
                "{}.{}.{}.{}",
                "a".repeat(63),
                "b".repeat(63),
                "c".repeat(63),
                "d".repeat(61)
            ),
        ] {
            assert!(is_dns_name(ok), "{ok}");
        }
        for bad in [
            "",
            "*",
            "*.",
            "a.*.b",
            "**.a",
            "Web.example",
            "-a.b",
            "a-.b",
            "a..b",
            "a.",
            ".a",
            "a_b",
            "a b",
            "a/b",
            &"a".repeat(64),
            &format!(
                "{}.{}.{}.{}",
                "a".repeat(63),
                "b".repeat(63),
                "c".repeat(63),
                "d".repeat(62)
            ),
        ] {
            assert!(!is_dns_name(bad), "{bad}");
        }
    }

    #[test]
    fn namespace_selector_needs_a_known_namespace() {
        let none = labels(&[]);
        let ns = labels(&[("team", "a")]);
        let pod = |namespace_labels| PodFacts {
            namespace: "n",
            name: "p",
            uid: "u",
            service_account: "s",
            node_name: "x",
            labels: &none,
            namespace_labels,
        };
        let without = compile(spec("/x")).unwrap();
        assert!(without.selects(&pod(None)));
        assert!(without.selects(&pod(Some(&ns))));
        let mut s = spec("/x");
        s.namespace_selector = Some(LabelSelector::default());
        let with_empty = compile(s).unwrap();
        assert!(!with_empty.selects(&pod(None)));
        assert!(with_empty.selects(&pod(Some(&ns))));
        let mut s = spec("/x");
        s.namespace_selector = Some(LabelSelector {
            match_labels: Some(labels(&[("team", "b")])),
            match_expressions: None,
        });
        assert!(!compile(s).unwrap().selects(&pod(Some(&ns))));
    }
}
