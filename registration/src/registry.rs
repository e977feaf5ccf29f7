//! One pod's identity, decided over every resource of our class and the default template.
//!
//! CONTRACT (lead) - the rules, which docs/ARCHITECTURE.md will state:
//! 1. Resources of another class are ignored (another installation owns them); a resource
//!    without `className` is ours when `ClassPolicy::watch_classless`.
//! 2. A resource selects a pod when its namespace selector matches the namespace's labels and
//!    its pod selector the pod's labels. Non-fallback resources are considered first; fallback
//!    resources only when no non-fallback resource selects the pod; the default template only
//!    when no resource at all selects it (and it is enabled).
//! 3. Each selecting resource renders an identity (ID, DNS names, TTLs, workload selectors,
//!    hint, federated trust domains). A render that fails, or yields an invalid, reserved or foreign ID, an invalid DNS
//!    name or selector, refuses the pod *for that resource*.
//! 4. One pod, one identity: when the selecting resources render different identities (in
//!    anything), the pod is refused with `Conflict` and gets none of them - and not the default
//!    either (a silent fallback would issue an ID no one asked for). Identical renders agree.
//! 5. A pod some resource selects but whose every render failed is refused (no default).

use std::collections::BTreeMap;
use std::time::Duration;

use lanyard_svid::reserved::is_reserved;
use lanyard_svid::selector::Selector;
use lanyard_svid::{SpiffeId, TrustDomain};

use crate::compiled::{CompiledIdentity, SpecError, compile_id_template, is_dns_name};
use crate::resource::{KIND, LanyardIdentity};
use crate::template::{RenderError, Template};

/// What a pod is, as the server's informers see it.
#[derive(Debug, Clone, Copy)]
pub struct PodFacts<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
    pub service_account: &'a str,
    pub node_name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    /// `None`: the namespace is not (yet) known; a resource with a namespace selector then
    /// does not select the pod.
    pub namespace_labels: Option<&'a BTreeMap<String, String>>,
}

/// Which resources this installation serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassPolicy {
    pub class_name: String,
    pub watch_classless: bool,
}

impl Default for ClassPolicy {
    fn default() -> Self {
        Self {
            class_name: crate::resource::DEFAULT_CLASS.to_owned(),
            watch_classless: true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RegistryConfig {
    pub trust_domain: TrustDomain,
    pub class: ClassPolicy,
    /// `--pod-id-template`; `None` when turned off (`--no-default-pod-identity`).
    pub default_template: Option<String>,
}

/// What a pod is issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    pub spiffe_id: SpiffeId,
    pub dns_names: Vec<String>,
    pub x509_ttl: Option<Duration>,
    pub jwt_ttl: Option<Duration>,
    pub workload_selectors: Vec<Selector>,
    pub hint: String,
    /// Federated trust domains whose bundles the pod receives (sorted, each once).
    pub federates_with: Vec<TrustDomain>,
    pub source: IdentitySource,
}

/// What named the identity. `Display`: `LanyardIdentity/<name>` or `default-template`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySource {
    Resource(String),
    DefaultTemplate,
}

impl std::fmt::Display for IdentitySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Resource(name) => write!(f, "{}/{name}", crate::resource::KIND),
            Self::DefaultTemplate => f.write_str("default-template"),
        }
    }
}

/// Why a pod gets no identity. `Display` is the metric and status label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefusalReason {
    /// A placeholder's value is missing (a label the pod does not have).
    MissingValue,
    /// The rendered text is not a valid SPIFFE ID.
    InvalidId,
    /// The rendered ID is under `/lanyard/`.
    ReservedId,
    /// The rendered ID is in another trust domain.
    ForeignId,
    /// A rendered DNS name is not a valid DNS name.
    InvalidDnsName,
    /// A rendered workload selector does not parse.
    InvalidSelector,
    /// Two or more resources render different identities for the pod.
    Conflict,
}

impl std::fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::MissingValue => "missing_value",
            Self::InvalidId => "invalid_id",
            Self::ReservedId => "reserved_id",
            Self::ForeignId => "foreign_id",
            Self::InvalidDnsName => "invalid_dns_name",
            Self::InvalidSelector => "invalid_selector",
            Self::Conflict => "conflict",
        })
    }
}

/// A refusal: why, a sentence, and which resources were involved (empty: the default
/// template).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRefusal {
    pub reason: RefusalReason,
    pub message: String,
    pub resources: Vec<String>,
}

/// The decision for one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    Issued(PodIdentity),
    Refused(PodRefusal),
    /// Nothing selects the pod and the default template is off.
    Unregistered,
}

/// How one selecting resource fared for one pod (what its status counts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceOutcome {
    /// The pod was issued the identity this resource renders (alone or agreeing with others).
    Issued,
    /// The pod is refused for this resource: its own render failed, or it conflicts.
    Refused(PodRefusal),
    /// A fallback resource that a non-fallback resource took the pod from.
    Superseded,
}

/// One pod's decision with every selecting resource's part in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodDecision {
    pub resolution: Resolution,
    /// Each resource of our class that selects the pod, by name.
    pub resources: Vec<(String, ResourceOutcome)>,
}

/// Every resource of our class, compiled, plus the default template.
#[derive(Debug, Clone)]
pub struct Registry {
    config: RegistryConfig,
    identities: Vec<CompiledIdentity>,
    spec_errors: BTreeMap<String, SpecError>,
    /// `metadata.generation` of each resource in `spec_errors`.
    spec_error_generations: BTreeMap<String, Option<i64>>,
    /// The default template, parsed; an error (a template `check_default_template` would have
    /// refused) refuses every pod it would have named.
    default_template: Option<Result<Template, String>>,
}

/// The trust domain `check_default_template` renders with (it runs before any is known).
const SAMPLE_TRUST_DOMAIN: &str = "example.org";

/// Longest rendered text quoted in a refusal message.
const MAX_QUOTED: usize = 256;

impl Registry {
    /// Compiles `resources` (other classes dropped, invalid ones kept as spec errors).
    /// `default_template` must already be valid (checked at startup with [`Self::check_default_template`]).
    ///
    /// Names are unique in the API; were one given twice, the first in name order after a
    /// stable sort (so the first given) is kept.
    pub fn new(config: RegistryConfig, resources: &[LanyardIdentity]) -> Self {
        let mut ours: Vec<&LanyardIdentity> = resources
            .iter()
            .filter(|r| config.class.serves(r.spec.class_name.as_deref()))
            .collect();
        ours.sort_by(|a, b| a.name().cmp(b.name()));
        ours.dedup_by(|a, b| a.name() == b.name());

        let mut identities = Vec::with_capacity(ours.len());
        let mut spec_errors = BTreeMap::new();
        let mut spec_error_generations = BTreeMap::new();
        for r in ours {
            match CompiledIdentity::compile(r, &config.trust_domain) {
                Ok(c) => identities.push(c),
                Err(e) => {
                    spec_errors.insert(r.name().to_owned(), e);
                    spec_error_generations.insert(r.name().to_owned(), r.metadata.generation);
                }
            }
        }
        let default_template = config.default_template.as_deref().map(|t| {
            compile_id_template("--pod-id-template", t, &config.trust_domain)
                .map_err(|e| e.to_string())
        });
        Self {
            config,
            identities,
            spec_errors,
            spec_error_generations,
            default_template,
        }
    }

    /// Checks a `--pod-id-template` at startup.
    pub fn check_default_template(template: &str) -> Result<(), SpecError> {
        const FIELD: &str = "--pod-id-template";
        if !template.starts_with('/') {
            return Err(SpecError::Field {
                field: FIELD,
                message: "must be a path starting with '/' (the server's trust domain is \
                          prepended)"
                    .into(),
            });
        }
        let td = TrustDomain::new(SAMPLE_TRUST_DOMAIN).expect("a constant trust domain");
        compile_id_template(FIELD, template, &td).map(|_| ())
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.config.trust_domain
    }

    /// The resources of our class that are valid, by name.
    pub fn identities(&self) -> &[CompiledIdentity] {
        &self.identities
    }

    /// Resources of our class refused as a whole, by name.
    pub fn spec_errors(&self) -> &BTreeMap<String, SpecError> {
        &self.spec_errors
    }

    /// `metadata.generation` of a resource in [`Self::spec_errors`].
    pub fn spec_error_generation(&self, name: &str) -> Option<i64> {
        self.spec_error_generations.get(name).copied().flatten()
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// One pod's identity per the rules above.
    pub fn resolve(&self, pod: &PodFacts<'_>) -> Resolution {
        self.decide(pod).resolution
    }

    /// One pod's identity per the rules above, and each selecting resource's outcome.
    pub fn decide(&self, pod: &PodFacts<'_>) -> PodDecision {
        let selecting: Vec<&CompiledIdentity> =
            self.identities.iter().filter(|c| c.selects(pod)).collect();
        if selecting.is_empty() {
            return PodDecision {
                resolution: self.resolve_default(pod),
                resources: Vec::new(),
            };
        }
        // Rule 2: fallback resources only when no non-fallback one selects the pod.
        let any_primary = selecting.iter().any(|c| !c.fallback);
        let mut resources = Vec::with_capacity(selecting.len());
        let mut renders = Vec::with_capacity(selecting.len());
        for c in &selecting {
            if any_primary && c.fallback {
                resources.push((c.name.clone(), ResourceOutcome::Superseded));
            } else {
                renders.push((*c, self.render(c, pod)));
            }
        }

        let successes: Vec<(&CompiledIdentity, &PodIdentity)> = renders
            .iter()
            .filter_map(|(c, r)| r.as_ref().ok().map(|id| (*c, id)))
            .collect();
        let own_refusal = |c: &CompiledIdentity, reason: RefusalReason, cause: &str| PodRefusal {
            reason,
            message: format!(
                "{KIND} {} selects this pod but cannot name its identity: {cause}",
                c.name
            ),
            resources: vec![c.name.clone()],
        };

        let resolution = if successes.is_empty() {
            // Rule 5: every render failed; no default either.
            let (first, (reason, _)) = renders
                .iter()
                .find_map(|(c, r)| r.as_ref().err().map(|e| (*c, e)))
                .expect("renders is not empty when nothing succeeded");
            let refusal = if renders.len() == 1 {
                own_refusal(first, *reason, &renders[0].1.as_ref().unwrap_err().1)
            } else {
                let causes: Vec<String> = renders
                    .iter()
                    .filter_map(|(c, r)| r.as_ref().err().map(|(_, m)| format!("{}: {m}", c.name)))
                    .collect();
                PodRefusal {
                    reason: *reason,
                    message: format!(
                        "no {KIND} selecting this pod can name its identity ({})",
                        causes.join("; ")
                    ),
                    resources: renders.iter().map(|(c, _)| c.name.clone()).collect(),
                }
            };
            Resolution::Refused(refusal)
        } else if let Some(conflict) = conflict(&successes) {
            Resolution::Refused(conflict)
        } else {
            // Rule 4: identical renders agree; the first by name is named as the source.
            Resolution::Issued(successes[0].1.clone())
        };

        for (c, render) in &renders {
            let outcome = match (render, &resolution) {
                (Err((reason, cause)), _) => {
                    ResourceOutcome::Refused(own_refusal(c, *reason, cause))
                }
                (Ok(_), Resolution::Refused(r)) => ResourceOutcome::Refused(r.clone()),
                (Ok(_), _) => ResourceOutcome::Issued,
            };
            resources.push((c.name.clone(), outcome));
        }
        resources.sort_by(|a, b| a.0.cmp(&b.0));
        PodDecision {
            resolution,
            resources,
        }
    }

    fn resolve_default(&self, pod: &PodFacts<'_>) -> Resolution {
        let refused = |reason, message| {
            Resolution::Refused(PodRefusal {
                reason,
                message,
                resources: Vec::new(),
            })
        };
        match &self.default_template {
            None => Resolution::Unregistered,
            Some(Err(e)) => refused(
                RefusalReason::InvalidId,
                format!("the default pod identity template is invalid: {e}"),
            ),
            Some(Ok(t)) => match render_id(t, &self.config.trust_domain, pod) {
                Ok(spiffe_id) => Resolution::Issued(PodIdentity {
                    spiffe_id,
                    dns_names: Vec::new(),
                    x509_ttl: None,
                    jwt_ttl: None,
                    workload_selectors: Vec::new(),
                    hint: String::new(),
                    federates_with: Vec::new(),
                    source: IdentitySource::DefaultTemplate,
                }),
                Err((reason, cause)) => refused(
                    reason,
                    format!(
                        "the default pod identity template {:?} cannot name this pod: {cause}",
                        t.as_str()
                    ),
                ),
            },
        }
    }

    /// What `c` renders for `pod` (rule 3), or why it cannot.
    fn render(
        &self,
        c: &CompiledIdentity,
        pod: &PodFacts<'_>,
    ) -> Result<PodIdentity, (RefusalReason, String)> {
        let td = &self.config.trust_domain;
        let spiffe_id = render_id(&c.spiffe_id, td, pod)?;
        let mut dns_names = Vec::with_capacity(c.dns_names.len());
        for t in &c.dns_names {
            let name = t.render(td.name(), pod).map_err(missing)?;
            if !is_dns_name(&name) {
                return Err((
                    RefusalReason::InvalidDnsName,
                    format!(
                        "DNS name template {:?} renders {}, which is not a lowercase DNS name",
                        t.as_str(),
                        quoted(&name)
                    ),
                ));
            }
            dns_names.push(name);
        }
        // DNS names and selectors are sets: order and repeats do not make a different identity.
        dns_names.sort();
        dns_names.dedup();
        let mut workload_selectors = Vec::with_capacity(c.workload_selectors.len());
        for t in &c.workload_selectors {
            let text = t.render(td.name(), pod).map_err(missing)?;
            let selector = Selector::parse(&text).map_err(|e| {
                (
                    RefusalReason::InvalidSelector,
                    format!(
                        "workload selector template {:?} renders {}: {e}",
                        t.as_str(),
                        quoted(&text)
                    ),
                )
            })?;
            workload_selectors.push(selector);
        }
        workload_selectors.sort();
        workload_selectors.dedup();
        Ok(PodIdentity {
            spiffe_id,
            dns_names,
            x509_ttl: c.x509_ttl,
            jwt_ttl: c.jwt_ttl,
            workload_selectors,
            hint: c.hint.clone(),
            federates_with: c.federates_with.clone(),
            source: IdentitySource::Resource(c.name.clone()),
        })
    }
}

impl ClassPolicy {
    /// Whether a resource with this `className` is ours (rule 1).
    pub fn serves(&self, class_name: Option<&str>) -> bool {
        match class_name {
            Some(name) => name == self.class_name,
            None => self.watch_classless,
        }
    }
}

/// Rule 4: the refusal when the successful renders differ in anything but their source.
fn conflict(successes: &[(&CompiledIdentity, &PodIdentity)]) -> Option<PodRefusal> {
    let (_, first) = successes[0];
    let (_, other) = successes
        .iter()
        .find(|(_, id)| differs_in(first, id).is_some())?;
    let what = differs_in(first, other).expect("found by differs_in");
    let names: Vec<String> = successes.iter().map(|(c, _)| c.name.clone()).collect();
    const MAX_NAMED: usize = 4;
    let mut ids: Vec<String> = successes
        .iter()
        .take(MAX_NAMED)
        .map(|(c, id)| format!("{}: {}", c.name, id.spiffe_id))
        .collect();
    if successes.len() > MAX_NAMED {
        ids.push(format!("and {} more", successes.len() - MAX_NAMED));
    }
    Some(PodRefusal {
        reason: RefusalReason::Conflict,
        message: format!(
            "{KIND} resources {} select this pod and render different identities (they differ in {what}: \
             {}); one pod gets one identity, so it gets none of them",
            names.join(", "),
            ids.join(", ")
        ),
        resources: names,
    })
}

/// The first part in which two identities differ (their source aside).
fn differs_in(a: &PodIdentity, b: &PodIdentity) -> Option<&'static str> {
    if a.spiffe_id != b.spiffe_id {
        Some("SPIFFE ID")
    } else if a.dns_names != b.dns_names {
        Some("DNS names")
    } else if a.x509_ttl != b.x509_ttl {
        Some("x509TTL")
    } else if a.jwt_ttl != b.jwt_ttl {
        Some("jwtTTL")
    } else if a.workload_selectors != b.workload_selectors {
        Some("workload selectors")
    } else if a.hint != b.hint {
        Some("hint")
    } else if a.federates_with != b.federates_with {
        Some("federatesWith")
    } else {
        None
    }
}

fn missing(e: RenderError) -> (RefusalReason, String) {
    (RefusalReason::MissingValue, e.to_string())
}

/// Renders an ID template for one pod and checks the result: a valid SPIFFE ID with a path, in
/// `trust_domain`, not reserved. A value that holds a `/` is refused rather than let add path
/// segments (Kubernetes names and label values never do).
pub(crate) fn render_id(
    t: &Template,
    trust_domain: &TrustDomain,
    pod: &PodFacts<'_>,
) -> Result<SpiffeId, (RefusalReason, String)> {
    let (text, values_ok) = t
        .render_checked(trust_domain.name(), pod, |_, value| !value.contains('/'))
        .map_err(missing)?;
    let invalid = |why: String| (RefusalReason::InvalidId, why);
    if !values_ok {
        return Err(invalid(format!(
            "a value inserted into {:?} contains '/'",
            t.as_str()
        )));
    }
    let id = if text.starts_with('/') {
        SpiffeId::new(trust_domain.clone(), &text)
    } else if let Some(rest) = text.strip_prefix("spiffe://") {
        // We generate this ID: uppercase in its trust domain is refused, not folded.
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(invalid(format!(
                "the ID {} has uppercase in its trust domain",
                quoted(&text)
            )));
        }
        SpiffeId::parse(&text)
    } else {
        return Err(invalid(format!(
            "{} is neither a path nor a spiffe:// ID",
            quoted(&text)
        )));
    }
    .map_err(|e| invalid(format!("{} is not a valid SPIFFE ID: {e}", quoted(&text))))?;
    if id.trust_domain() != trust_domain {
        return Err((
            RefusalReason::ForeignId,
            format!(
                "the ID {id} is in the trust domain {}, not this server's ({trust_domain})",
                id.trust_domain()
            ),
        ));
    }
    if id.is_trust_domain_id() {
        return Err(invalid(format!("the ID {id} has no path")));
    }
    if is_reserved(&id) {
        return Err((
            RefusalReason::ReservedId,
            format!("the ID {id} is reserved for Lanyard itself (everything under /lanyard/)"),
        ));
    }
    Ok(id)
}

/// A bounded quote of rendered text, cut on a character boundary.
fn quoted(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED) {
        Some((i, _)) => format!("{:?}...", &text[..i]),
        None => format!("{text:?}"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    use super::*;
    use crate::resource::LanyardIdentitySpec;
    use crate::template::tests::labels;

    pub(crate) fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    pub(crate) fn config(default_template: Option<&str>) -> RegistryConfig {
        RegistryConfig {
            trust_domain: td(),
            class: ClassPolicy::default(),
            default_template: default_template.map(str::to_owned),
        }
    }

    /// A resource selecting pods with `app=<app>` (every pod when `app` is empty).
    pub(crate) fn resource(name: &str, id: &str, app: &str) -> LanyardIdentity {
        LanyardIdentity::new(
            name,
            LanyardIdentitySpec {
                spiffe_id_template: id.into(),
                pod_selector: (!app.is_empty()).then(|| LabelSelector {
                    match_labels: Some(labels(&[("app", app)])),
                    match_expressions: None,
                }),
                ..Default::default()
            },
        )
    }

    pub(crate) struct Pod {
        pub namespace: String,
        pub name: String,
        pub labels: BTreeMap<String, String>,
        pub namespace_labels: Option<BTreeMap<String, String>>,
    }

    pub(crate) fn pod(namespace: &str, name: &str, pod_labels: &[(&str, &str)]) -> Pod {
        Pod {
            namespace: namespace.into(),
            name: name.into(),
            labels: labels(pod_labels),
            namespace_labels: Some(labels(&[("team", "blue")])),
        }
    }

    impl Pod {
        pub(crate) fn facts(&self) -> PodFacts<'_> {
            PodFacts {
                namespace: &self.namespace,
                name: &self.name,
                uid: "6f1e2a34-0000-4000-8000-00000000abcd",
                service_account: "web-sa",
                node_name: "node-1",
                labels: &self.labels,
                namespace_labels: self.namespace_labels.as_ref(),
            }
        }
    }

    fn issued(r: Resolution) -> PodIdentity {
        match r {
            Resolution::Issued(id) => id,
            other => panic!("not issued: {other:?}"),
        }
    }

    fn refused(r: Resolution) -> PodRefusal {
        match r {
            Resolution::Refused(r) => r,
            other => panic!("not refused: {other:?}"),
        }
    }

    const DEFAULT: &str = "/ns/{namespace}/sa/{service_account}";

    #[test]
    fn default_template_names_pods_nothing_selects() {
        let reg = Registry::new(config(Some(DEFAULT)), &[]);
        let p = pod("prod", "web-1", &[]);
        let id = issued(reg.resolve(&p.facts()));
        assert_eq!(
            id.spiffe_id.to_string(),
            "spiffe://example.org/ns/prod/sa/web-sa"
        );
        assert_eq!(id.source, IdentitySource::DefaultTemplate);
        assert_eq!(id.source.to_string(), "default-template");
        assert!(id.dns_names.is_empty() && id.workload_selectors.is_empty());
        assert_eq!((id.x509_ttl, id.jwt_ttl), (None, None));
        assert_eq!(id.hint, "");
        assert!(id.federates_with.is_empty());
        // Off: nothing names the pod.
        let reg = Registry::new(config(None), &[]);
        assert_eq!(reg.resolve(&p.facts()), Resolution::Unregistered);
    }

    #[test]
    fn default_template_refuses_values_that_break_the_path() {
        let reg = Registry::new(config(Some(DEFAULT)), &[]);
        for ns in ["a/b", "..", ""] {
            let p = pod(ns, "p", &[]);
            let r = refused(reg.resolve(&p.facts()));
            assert_eq!(r.reason, RefusalReason::InvalidId, "{ns}");
            assert!(r.resources.is_empty());
            assert!(
                r.message.contains("default pod identity template"),
                "{}",
                r.message
            );
        }
        // A template that was never checked refuses rather than panics.
        let reg = Registry::new(config(Some("/lanyard/{namespace}")), &[]);
        let r = refused(reg.resolve(&pod("a", "p", &[]).facts()));
        assert_eq!(r.reason, RefusalReason::InvalidId);
        assert!(r.message.contains("invalid"), "{}", r.message);
    }

    #[test]
    fn check_default_template() {
        Registry::check_default_template(DEFAULT).unwrap();
        Registry::check_default_template("/pod/{pod_name}/{label:app}").unwrap();
        for (t, want) in [
            ("ns/{namespace}", "starting with '/'"),
            ("spiffe://example.org/x", "starting with '/'"),
            ("/ns/{nam}", "unknown placeholder"),
            ("/lanyard/{namespace}", "reserved"),
            ("/lanyard", "reserved"),
            ("/ns//{namespace}", "empty segment"),
        ] {
            let e = Registry::check_default_template(t).unwrap_err().to_string();
            assert!(e.starts_with("--pod-id-template: "), "{t}: {e}");
            assert!(e.contains(want), "{t}: {e}");
        }
    }

    #[test]
    fn class_filtering() {
        let mut other = resource("other", "/other", "");
        other.spec.class_name = Some("someone-else".into());
        let mut ours = resource("ours", "/ours", "");
        ours.spec.class_name = Some("lanyard".into());
        let classless = resource("classless", "/classless", "");
        let mut broken_other = resource("broken-other", "/lanyard/x", "");
        broken_other.spec.class_name = Some("someone-else".into());
        let broken = resource("broken", "/lanyard/x", "");
        let all = [other, ours, classless, broken_other, broken];

        let reg = Registry::new(config(None), &all);
        let names: Vec<&str> = reg.identities().iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            ["classless", "ours"],
            "sorted by name, other class dropped"
        );
        assert_eq!(reg.spec_errors().keys().collect::<Vec<_>>(), ["broken"]);

        let mut cfg = config(None);
        cfg.class.watch_classless = false;
        let reg = Registry::new(cfg, &all);
        let names: Vec<&str> = reg.identities().iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["ours"]);
        assert!(reg.spec_errors().is_empty());

        let mut cfg = config(None);
        cfg.class.class_name = "someone-else".into();
        let reg = Registry::new(cfg, &all);
        let names: Vec<&str> = reg.identities().iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["classless", "other"]);
        assert_eq!(
            reg.spec_errors().keys().collect::<Vec<_>>(),
            ["broken", "broken-other"]
        );
    }

    #[test]
    fn a_resource_renders_everything() {
        let mut r = resource(
            "web",
            "spiffe://{trust_domain}/ns/{namespace}/app/{label:app}",
            "web",
        );
        r.spec.dns_name_templates = vec![
            "{pod_name}.{namespace}.svc".into(),
            "*.{namespace_label:team}.example.org".into(),
            "{pod_name}.{namespace}.svc".into(),
        ];
        r.spec.workload_selector_templates = vec![
            "unix:uid:{label:uid}".into(),
            "k8s:pod-label:app:{label:app}".into(),
        ];
        r.spec.x509_ttl = Some("10m".into());
        r.spec.jwt_ttl = Some("90s".into());
        r.spec.hint = Some("frontend".into());
        r.spec.federates_with = vec!["partner.example".into()];
        let reg = Registry::new(config(Some(DEFAULT)), &[r]);
        let p = pod("prod", "web-1", &[("app", "web"), ("uid", "01000")]);
        let id = issued(reg.resolve(&p.facts()));
        assert_eq!(
            id.spiffe_id.to_string(),
            "spiffe://example.org/ns/prod/app/web"
        );
        assert_eq!(id.dns_names, ["*.blue.example.org", "web-1.prod.svc"]);
        let selectors: Vec<String> = id
            .workload_selectors
            .iter()
            .map(ToString::to_string)
            .collect();
        // Sorted as selectors sort (by key, then value).
        assert_eq!(selectors, ["unix:uid:1000", "k8s:pod-label:app:web"]);
        assert_eq!(id.x509_ttl, Some(Duration::from_secs(600)));
        assert_eq!(id.jwt_ttl, Some(Duration::from_secs(90)));
        assert_eq!(id.hint, "frontend");
        assert_eq!(
            id.federates_with,
            [TrustDomain::new("partner.example").unwrap()]
        );
        assert_eq!(id.source, IdentitySource::Resource("web".into()));

        // The container-name selector (so a sidecar in the same pod is not served).
        let mut r = resource("c", "/c", "c");
        r.spec.workload_selector_templates = vec!["k8s:container-name:{label:container}".into()];
        let reg2 = Registry::new(config(None), &[r]);
        let p2 = pod("prod", "c-1", &[("app", "c"), ("container", "app")]);
        let selectors: Vec<String> = issued(reg2.resolve(&p2.facts()))
            .workload_selectors
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(selectors, ["k8s:container-name:app"]);
        assert_eq!(id.source.to_string(), "LanyardIdentity/web");
        // A pod it does not select gets the default.
        let p = pod("prod", "api-1", &[("app", "api")]);
        assert_eq!(
            issued(reg.resolve(&p.facts())).source,
            IdentitySource::DefaultTemplate
        );
    }

    #[test]
    fn every_refusal_reason() {
        let mut dns = resource("dns", "/dns", "dns");
        dns.spec.dns_name_templates = vec!["{label:host}.svc".into()];
        let mut sel = resource("sel", "/sel", "sel");
        sel.spec.workload_selector_templates = vec!["unix:uid:{label:uid}".into()];
        let resources = [
            resource("missing", "/m/{label:tier}", "missing"),
            resource("invalid", "/i/{label:v}", "invalid"),
            resource("reserved", "/{label:v}/x", "reserved"),
            resource("foreign", "spiffe://{label:v}/x", "foreign"),
            resource("upper", "spiffe://{label:v}/x", "upper"),
            dns,
            sel,
            resource("a", "/a", "conflict"),
            resource("b", "/b", "conflict"),
        ];
        let reg = Registry::new(config(Some(DEFAULT)), &resources);
        assert!(reg.spec_errors().is_empty(), "{:?}", reg.spec_errors());
        for (labels, reason, names, words) in [
            (
                vec![("app", "missing")],
                RefusalReason::MissingValue,
                vec!["missing"],
                "label tier is not set",
            ),
            (
                vec![("app", "invalid"), ("v", "")],
                RefusalReason::InvalidId,
                vec!["invalid"],
                "empty segment",
            ),
            (
                vec![("app", "invalid"), ("v", "..")],
                RefusalReason::InvalidId,
                vec!["invalid"],
                "not a valid SPIFFE ID",
            ),
            (
                vec![("app", "reserved"), ("v", "lanyard")],
                RefusalReason::ReservedId,
                vec!["reserved"],
                "reserved",
            ),
            (
                vec![("app", "foreign"), ("v", "other.org")],
                RefusalReason::ForeignId,
                vec!["foreign"],
                "other.org",
            ),
            (
                vec![("app", "upper"), ("v", "Example.org")],
                RefusalReason::InvalidId,
                vec!["upper"],
                "uppercase",
            ),
            (
                vec![("app", "dns"), ("host", "Web")],
                RefusalReason::InvalidDnsName,
                vec!["dns"],
                "\"Web.svc\"",
            ),
            (
                vec![("app", "sel"), ("uid", "root")],
                RefusalReason::InvalidSelector,
                vec!["sel"],
                "\"unix:uid:root\"",
            ),
            (
                vec![("app", "conflict")],
                RefusalReason::Conflict,
                vec!["a", "b"],
                "differ in SPIFFE ID",
            ),
        ] {
            let p = pod("ns", "p", &labels);
            let r = refused(reg.resolve(&p.facts()));
            assert_eq!(r.reason, reason, "{labels:?}: {r:?}");
            assert_eq!(r.resources, names, "{labels:?}");
            assert!(r.message.contains(words), "{labels:?}: {}", r.message);
            for name in names {
                assert!(r.message.contains(name), "{}", r.message);
            }
        }
        // The same resource with good values issues.
        let p = pod("ns", "p", &[("app", "foreign"), ("v", "example.org")]);
        assert_eq!(
            issued(reg.resolve(&p.facts())).spiffe_id.to_string(),
            "spiffe://example.org/x"
        );
        // Reason labels are the metric labels.
        assert_eq!(
            RefusalReason::InvalidDnsName.to_string(),
            "invalid_dns_name"
        );
    }

    #[test]
    fn fallback_ordering() {
        let mut fb = resource("fallback", "/fallback/{namespace}", "");
        fb.spec.fallback = true;
        let primary = resource("primary", "/web/{label:tier}", "web");
        let reg = Registry::new(config(Some(DEFAULT)), &[fb, primary]);

        // A non-fallback resource selects the pod: it wins, the fallback is superseded.
        let p = pod("prod", "w", &[("app", "web"), ("tier", "front")]);
        let d = reg.decide(&p.facts());
        assert_eq!(issued(d.resolution).spiffe_id.path(), "/web/front");
        assert_eq!(
            d.resources,
            [
                ("fallback".to_owned(), ResourceOutcome::Superseded),
                ("primary".to_owned(), ResourceOutcome::Issued)
            ]
        );
        // Only the fallback selects it.
        let p = pod("prod", "o", &[("app", "other")]);
        let id = issued(reg.resolve(&p.facts()));
        assert_eq!(id.spiffe_id.path(), "/fallback/prod");
        assert_eq!(id.source, IdentitySource::Resource("fallback".into()));
        // The non-fallback resource selects it but cannot render: refused, no fallback.
        let p = pod("prod", "w", &[("app", "web")]);
        let r = refused(reg.resolve(&p.facts()));
        assert_eq!(r.reason, RefusalReason::MissingValue);
        assert_eq!(r.resources, ["primary"]);
    }

    #[test]
    fn conflicts_and_agreement() {
        let mut ttl = resource("c-ttl", "/same", "ttl");
        ttl.spec.x509_ttl = Some("1h".into());
        let resources = [
            resource("a-same", "/same", ""),
            resource("b-same", "spiffe://example.org/same", ""),
            ttl,
        ];
        let reg = Registry::new(config(Some(DEFAULT)), &resources);
        // Identical renders agree; the first by name is the source.
        let p = pod("n", "p", &[]);
        let d = reg.decide(&p.facts());
        let id = issued(d.resolution);
        assert_eq!(id.spiffe_id.path(), "/same");
        assert_eq!(id.source, IdentitySource::Resource("a-same".into()));
        assert!(
            d.resources
                .iter()
                .all(|(_, o)| *o == ResourceOutcome::Issued)
        );
        assert_eq!(d.resources.len(), 2);
        // A difference in the TTL alone is a conflict, and the default is not used either.
        let p = pod("n", "p", &[("app", "ttl")]);
        let d = reg.decide(&p.facts());
        let r = refused(d.resolution);
        assert_eq!(r.reason, RefusalReason::Conflict);
        assert_eq!(r.resources, ["a-same", "b-same", "c-ttl"]);
        assert!(r.message.contains("x509TTL"), "{}", r.message);
        assert_eq!(d.resources.len(), 3);
        for (_, o) in &d.resources {
            assert_eq!(*o, ResourceOutcome::Refused(r.clone()));
        }
    }

    #[test]
    fn federates_with_is_part_of_the_identity() {
        let mut a = resource("a", "/same", "");
        a.spec.federates_with = vec!["p.example".into(), "q.example".into()];
        let mut b = resource("b", "/same", "");
        // The same set, written in another order and with a repeat: they agree.
        b.spec.federates_with = vec!["q.example".into(), "p.example".into(), "q.example".into()];
        let reg = Registry::new(config(None), &[a.clone(), b]);
        let id = issued(reg.resolve(&pod("n", "p", &[]).facts()));
        assert_eq!(id.federates_with.len(), 2);
        let mut c = resource("c", "/same", "");
        c.spec.federates_with = vec!["p.example".into()];
        let reg = Registry::new(config(None), &[a, c]);
        let r = refused(reg.resolve(&pod("n", "p", &[]).facts()));
        assert_eq!(r.reason, RefusalReason::Conflict);
        assert!(r.message.contains("federatesWith"), "{}", r.message);
    }

    #[test]
    fn a_failed_render_beside_a_good_one() {
        let reg = Registry::new(
            config(None),
            &[
                resource("a", "/a/{label:tier}", ""),
                resource("b", "/b", ""),
            ],
        );
        let p = pod("n", "p", &[]);
        let d = reg.decide(&p.facts());
        assert_eq!(issued(d.resolution).spiffe_id.path(), "/b");
        match &d.resources[..] {
            [
                (a, ResourceOutcome::Refused(r)),
                (b, ResourceOutcome::Issued),
            ] => {
                assert_eq!((a.as_str(), b.as_str()), ("a", "b"));
                assert_eq!(r.reason, RefusalReason::MissingValue);
                assert_eq!(r.resources, ["a"]);
            }
            other => panic!("{other:?}"),
        }
        // Both fail: refused, both named.
        let reg = Registry::new(
            config(Some(DEFAULT)),
            &[
                resource("a", "/a/{label:tier}", ""),
                resource("b", "/b/{label:x}", ""),
            ],
        );
        let r = refused(reg.resolve(&p.facts()));
        assert_eq!(r.reason, RefusalReason::MissingValue);
        assert_eq!(r.resources, ["a", "b"]);
        assert!(
            r.message.contains("a: label tier") && r.message.contains("b: label x"),
            "{}",
            r.message
        );
    }

    #[test]
    fn namespace_selector_with_an_unknown_namespace() {
        let mut r = resource("team", "/team/{namespace_label:team}", "");
        r.spec.namespace_selector = Some(LabelSelector {
            match_labels: Some(labels(&[("team", "blue")])),
            match_expressions: None,
        });
        let reg = Registry::new(config(Some(DEFAULT)), &[r]);
        let mut p = pod("prod", "p", &[]);
        assert_eq!(
            issued(reg.resolve(&p.facts())).spiffe_id.path(),
            "/team/blue"
        );
        p.namespace_labels = None;
        assert_eq!(
            issued(reg.resolve(&p.facts())).source,
            IdentitySource::DefaultTemplate
        );
        let reg = Registry::new(
            config(None),
            &[resource("x", "/x/{namespace_label:team}", "")],
        );
        let r = refused(reg.resolve(&p.facts()));
        assert_eq!(r.reason, RefusalReason::MissingValue);
        assert!(r.message.contains("not known"), "{}", r.message);
    }
}
