//! Every pod's decision and the resources refused as a whole, as a table for people or as
//! JSON for tools.
//!
//! The JSON (`--output json`) is one object, stable (fields are added, never renamed):
//! ```json
//! {
//!   "trust_domain": "cluster.local",
//!   "identity_class": "lanyard",
//!   "watch_classless": true,
//!   "default_template": "/ns/{namespace}/sa/{service_account}",
//!   "pods": [
//!     {"namespace": "shop", "name": "web-1", "node": "node-1", "service_account": "web",
//!      "outcome": "issued", "spiffe_id": "spiffe://cluster.local/shop/web",
//!      "dns_names": ["web.shop.svc"], "source": "LanyardIdentity/web",
//!      "x509_ttl_seconds": 3600, "jwt_ttl_seconds": null,
//!      "workload_selectors": ["k8s:container-name:web"], "hint": ""},
//!     {"namespace": "shop", "name": "db-0", "node": null, "service_account": "db",
//!      "outcome": "refused", "reason": "conflict", "message": "...",
//!      "resources": ["a", "b"]},
//!     {"namespace": "kube-system", "name": "dns", "node": "node-1",
//!      "service_account": "coredns", "outcome": "unregistered"}
//!   ],
//!   "refused_resources": [{"name": "bad", "error": "spiffeIDTemplate: ..."}]
//! }
//! ```
//! `pods` (finished and terminating pods left out, as the servers leave them out) is sorted
//! by namespace then name; `node` is null for an unscheduled pod;
//! `default_template` is null with `--no-default-pod-identity`; a refusal's `reason` is the
//! label of [`lanyard_registration::RefusalReason`] and its `resources` the resources involved
//! (empty: the default template); `source` is `LanyardIdentity/<name>` or `default-template`.
//! TTLs are null where the server's `--x509-ttl`/`--jwt-ttl` apply.

use std::fmt::Write as _;

use lanyard_registration::{
    PodFacts, PodIdentity, PodRefusal, Registry, RegistryConfig, Resolution,
};
use lanyard_svid::TrustDomain;
use serde::Serialize;

use super::cluster::{Objects, PodRecord};
use super::{IdentitiesError, Settings};

/// `--output`. `text` is accepted for `table`: `LANYARD_OUTPUT=text` is also `lanyard ca
/// status`'s setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    #[value(alias = "text")]
    Table,
    Json,
}

/// What `lanyard identities` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub trust_domain: String,
    pub identity_class: String,
    pub watch_classless: bool,
    pub default_template: Option<String>,
    pub pods: Vec<PodLine>,
    pub refused_resources: Vec<RefusedResource>,
}

/// One pod and its decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodLine {
    pub namespace: String,
    pub name: String,
    pub node: Option<String>,
    pub service_account: String,
    #[serde(flatten)]
    pub decision: Decision,
}

/// [`Resolution`] as printed. `outcome` is the tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Decision {
    Issued {
        spiffe_id: String,
        dns_names: Vec<String>,
        source: String,
        x509_ttl_seconds: Option<u64>,
        jwt_ttl_seconds: Option<u64>,
        workload_selectors: Vec<String>,
        hint: String,
    },
    Refused {
        reason: String,
        message: String,
        resources: Vec<String>,
    },
    Unregistered,
}

impl From<Resolution> for Decision {
    fn from(resolution: Resolution) -> Self {
        match resolution {
            Resolution::Issued(PodIdentity {
                spiffe_id,
                dns_names,
                x509_ttl,
                jwt_ttl,
                workload_selectors,
                hint,
                // Not shown by `lanyard identities` (yet): which bundles, not which identity.
                federates_with: _,
                source,
            }) => Self::Issued {
                spiffe_id: spiffe_id.to_string(),
                dns_names,
                source: source.to_string(),
                x509_ttl_seconds: x509_ttl.map(|d| d.as_secs()),
                jwt_ttl_seconds: jwt_ttl.map(|d| d.as_secs()),
                workload_selectors: workload_selectors.iter().map(|s| s.to_string()).collect(),
                hint,
            },
            Resolution::Refused(PodRefusal {
                reason,
                message,
                resources,
            }) => Self::Refused {
                reason: reason.to_string(),
                message,
                resources,
            },
            Resolution::Unregistered => Self::Unregistered,
        }
    }
}

/// A resource of our class refused as a whole (its `status.specError`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefusedResource {
    pub name: String,
    pub error: String,
}

impl Report {
    /// Decides every pod of `objects` under `settings`, in the trust domain `trust_domain`.
    pub fn build(
        settings: &Settings,
        trust_domain: TrustDomain,
        objects: &Objects,
    ) -> Result<Self, IdentitiesError> {
        if let Some(template) = &settings.default_template {
            Registry::check_default_template(template).map_err(|e| {
                IdentitiesError::DefaultTemplate {
                    given: template.clone(),
                    message: e.to_string(),
                }
            })?;
        }
        let registry = Registry::new(
            RegistryConfig {
                trust_domain: trust_domain.clone(),
                class: settings.class.clone(),
                default_template: settings.default_template.clone(),
            },
            &objects.identities,
        );
        let mut pods: Vec<&PodRecord> = objects.pods.iter().collect();
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let pods = pods
            .into_iter()
            .map(|pod| {
                let facts = PodFacts {
                    namespace: &pod.namespace,
                    name: &pod.name,
                    uid: &pod.uid,
                    service_account: &pod.service_account,
                    node_name: &pod.node_name,
                    labels: &pod.labels,
                    namespace_labels: objects.namespaces.get(&pod.namespace),
                };
                PodLine {
                    namespace: pod.namespace.clone(),
                    name: pod.name.clone(),
                    node: (!pod.node_name.is_empty()).then(|| pod.node_name.clone()),
                    service_account: pod.service_account.clone(),
                    decision: registry.resolve(&facts).into(),
                }
            })
            .collect();
        let refused_resources = registry
            .spec_errors()
            .iter()
            .map(|(name, error)| RefusedResource {
                name: name.clone(),
                error: error.to_string(),
            })
            .collect();
        Ok(Self {
            trust_domain: trust_domain.to_string(),
            identity_class: settings.class.class_name.clone(),
            watch_classless: settings.class.watch_classless,
            default_template: settings.default_template.clone(),
            pods,
            refused_resources,
        })
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serialises") + "\n"
    }

    /// One line per pod (`POD  NODE  IDENTITY`), then the resources refused as a whole:
    /// - issued: `spiffe://...  dns=a,b  from LanyardIdentity/<name>|default-template`
    /// - refused: `refused (<reason>): <message>`
    /// - `unregistered`
    pub fn table(&self) -> String {
        let pod_names: Vec<String> = self
            .pods
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect();
        let width = |items: &mut dyn Iterator<Item = usize>, header: &str| {
            items.max().unwrap_or(0).max(header.len())
        };
        let pod_width = width(&mut pod_names.iter().map(String::len), "POD");
        let node_width = width(
            &mut self
                .pods
                .iter()
                .map(|p| p.node.as_deref().unwrap_or("-").len()),
            "NODE",
        );
        let mut out = format!(
            "{:pod_width$}  {:node_width$}  IDENTITY (trust domain {})\n",
            "POD", "NODE", self.trust_domain
        );
        for (pod, name) in self.pods.iter().zip(&pod_names) {
            let node = pod.node.as_deref().unwrap_or("-");
            let what = match &pod.decision {
                Decision::Issued {
                    spiffe_id,
                    dns_names,
                    source,
                    ..
                } => {
                    let dns = if dns_names.is_empty() {
                        String::new()
                    } else {
                        format!("  dns={}", dns_names.join(","))
                    };
                    format!("{spiffe_id}{dns}  from {source}")
                }
                Decision::Refused {
                    reason, message, ..
                } => format!("refused ({reason}): {message}"),
                Decision::Unregistered => "unregistered".to_owned(),
            };
            let _ = writeln!(out, "{name:pod_width$}  {node:node_width$}  {what}");
        }
        if self.pods.is_empty() {
            out.push_str("(no pods)\n");
        }
        if !self.refused_resources.is_empty() {
            out.push_str("\nrefused resources (nothing is issued from them):\n");
            for resource in &self.refused_resources {
                let _ = writeln!(
                    out,
                    "{}/{}: {}",
                    lanyard_registration::resource::KIND,
                    resource.name,
                    resource.error
                );
            }
        }
        out
    }

    pub fn render(&self, output: Output) -> String {
        match output {
            Output::Table => self.table(),
            Output::Json => self.json(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use lanyard_registration::{ClassPolicy, LanyardIdentity, LanyardIdentitySpec};
    use lanyard_svid::TrustDomain;

    use super::*;
    use crate::identities::DEFAULT_POD_ID_TEMPLATE;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn selector(pairs: &[(&str, &str)]) -> Option<LabelSelector> {
        Some(LabelSelector {
            match_labels: Some(labels(pairs)),
            ..Default::default()
        })
    }

    fn identity(name: &str, template: &str, pods: &[(&str, &str)]) -> LanyardIdentity {
        LanyardIdentity::new(
            name,
            LanyardIdentitySpec {
                spiffe_id_template: template.to_owned(),
                pod_selector: selector(pods),
                ..Default::default()
            },
        )
    }

    fn pod(ns: &str, name: &str, node: &str, pod_labels: &[(&str, &str)]) -> PodRecord {
        PodRecord {
            namespace: ns.to_owned(),
            name: name.to_owned(),
            uid: format!("uid-{name}"),
            service_account: format!("sa-{name}"),
            node_name: node.to_owned(),
            labels: labels(pod_labels),
        }
    }

    fn settings() -> Settings {
        Settings {
            trust_domain: None,
            class: ClassPolicy::default(),
            default_template: Some(DEFAULT_POD_ID_TEMPLATE.to_owned()),
            pod_namespace: None,
        }
    }

    fn objects(identities: Vec<LanyardIdentity>, pods: Vec<PodRecord>) -> Objects {
        Objects {
            identities,
            namespaces: [
                ("shop".to_owned(), labels(&[("team", "shop")])),
                ("ops".to_owned(), labels(&[])),
            ]
            .into_iter()
            .collect(),
            pods,
        }
    }

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn decision<'a>(report: &'a Report, name: &str) -> &'a Decision {
        &report
            .pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}: {report:?}"))
            .decision
    }

    /// The world the integration test also seeds: a resource with DNS names and a container
    /// selector, a fallback, two conflicting, one producing a reserved ID for one pod, one
    /// refused as a whole, and pods each of them decides.
    fn world() -> Objects {
        let mut web = identity("web", "/web/{namespace}", &[("app", "web")]);
        web.spec.dns_name_templates = vec!["web.{namespace}.svc".into()];
        web.spec.workload_selector_templates = vec!["k8s:container-name:web".into()];
        web.spec.namespace_selector = selector(&[("team", "shop")]);
        web.spec.x509_ttl = Some("2h".into());
        let mut fallback = identity("fallback", "/shop/other/{pod_name}", &[]);
        fallback.spec.fallback = true;
        fallback.spec.namespace_selector = selector(&[("team", "shop")]);
        let a = identity("a", "/db/a", &[("app", "db")]);
        let b = identity("b", "/db/b", &[("app", "db")]);
        let reserved = identity("by-kind", "/{label:kind}/x", &[("tier", "sys")]);
        let broken = identity("broken", "/{nonsense}", &[("app", "never")]);
        objects(
            vec![web, fallback, a, b, reserved, broken],
            vec![
                pod("shop", "web-1", "node-1", &[("app", "web")]),
                pod("shop", "cart-1", "node-2", &[("app", "cart")]),
                pod("shop", "db-0", "node-1", &[("app", "db")]),
                pod("ops", "sys-1", "", &[("tier", "sys"), ("kind", "lanyard")]),
                pod("ops", "tool", "node-2", &[]),
            ],
        )
    }

    #[test]
    fn every_pod_gets_its_decision_and_why() {
        let report = Report::build(&settings(), td(), &world()).unwrap();
        let names: Vec<_> = report
            .pods
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect();
        assert_eq!(
            names,
            [
                "ops/sys-1",
                "ops/tool",
                "shop/cart-1",
                "shop/db-0",
                "shop/web-1"
            ]
        );
        assert_eq!(
            decision(&report, "web-1"),
            &Decision::Issued {
                spiffe_id: "spiffe://example.org/web/shop".into(),
                dns_names: vec!["web.shop.svc".into()],
                source: "LanyardIdentity/web".into(),
                x509_ttl_seconds: Some(7200),
                jwt_ttl_seconds: None,
                workload_selectors: vec!["k8s:container-name:web".into()],
                hint: String::new(),
            }
        );
        let Decision::Issued {
            spiffe_id, source, ..
        } = decision(&report, "cart-1")
        else {
            panic!("{report:?}")
        };
        assert_eq!(
            (spiffe_id.as_str(), source.as_str()),
            (
                "spiffe://example.org/shop/other/cart-1",
                "LanyardIdentity/fallback"
            )
        );
        let Decision::Refused {
            reason, resources, ..
        } = decision(&report, "db-0")
        else {
            panic!("{report:?}")
        };
        assert_eq!(
            (reason.as_str(), resources.clone()),
            ("conflict", vec!["a".to_owned(), "b".to_owned()])
        );
        let Decision::Refused { reason, .. } = decision(&report, "sys-1") else {
            panic!("{report:?}")
        };
        assert_eq!(reason, "reserved_id");
        let Decision::Issued {
            spiffe_id, source, ..
        } = decision(&report, "tool")
        else {
            panic!("{report:?}")
        };
        assert_eq!(
            (spiffe_id.as_str(), source.as_str()),
            ("spiffe://example.org/ns/ops/sa/sa-tool", "default-template")
        );
        assert_eq!(report.refused_resources.len(), 1, "{report:?}");
        assert_eq!(report.refused_resources[0].name, "broken");
        assert_eq!(report.pods[0].node, None, "sys-1 is unscheduled");
    }

    #[test]
    fn without_the_default_template_unselected_pods_are_unregistered() {
        let mut s = settings();
        s.default_template = None;
        let report = Report::build(&s, td(), &world()).unwrap();
        assert_eq!(decision(&report, "tool"), &Decision::Unregistered);
        assert!(matches!(
            decision(&report, "web-1"),
            Decision::Issued { .. }
        ));
    }

    #[test]
    fn class_settings_choose_the_resources() {
        let mut other = identity("other", "/other", &[("app", "x")]);
        other.spec.class_name = Some("elsewhere".into());
        let mut ours = identity("ours", "/ours", &[("app", "y")]);
        ours.spec.class_name = Some("lanyard".into());
        let classless = identity("classless", "/classless", &[("app", "z")]);
        let objects = objects(
            vec![other, ours, classless],
            vec![
                pod("ops", "x", "n", &[("app", "x")]),
                pod("ops", "y", "n", &[("app", "y")]),
                pod("ops", "z", "n", &[("app", "z")]),
            ],
        );
        let source = |report: &Report, name: &str| match decision(report, name) {
            Decision::Issued { source, .. } => source.clone(),
            other => panic!("{other:?}"),
        };
        let report = Report::build(&settings(), td(), &objects).unwrap();
        assert_eq!(source(&report, "x"), "default-template");
        assert_eq!(source(&report, "y"), "LanyardIdentity/ours");
        assert_eq!(source(&report, "z"), "LanyardIdentity/classless");

        let mut s = settings();
        s.class = ClassPolicy {
            class_name: "elsewhere".into(),
            watch_classless: false,
        };
        let report = Report::build(&s, td(), &objects).unwrap();
        assert_eq!(source(&report, "x"), "LanyardIdentity/other");
        assert_eq!(source(&report, "y"), "default-template");
        assert_eq!(source(&report, "z"), "default-template");
        assert_eq!(report.identity_class, "elsewhere");
        assert!(!report.watch_classless);
    }

    #[test]
    fn a_bad_default_template_is_refused_naming_the_flag() {
        let mut s = settings();
        s.default_template = Some("ns/{nope}".into());
        let err = Report::build(&s, td(), &world()).unwrap_err();
        assert!(
            matches!(err, IdentitiesError::DefaultTemplate { .. }),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .starts_with("--pod-id-template \"ns/{nope}\""),
            "{err}"
        );
    }

    #[test]
    fn the_table_has_a_line_per_pod_then_the_refused_resources() {
        let report = Report::build(&settings(), td(), &world()).unwrap();
        let table = report.table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "POD          NODE    IDENTITY (trust domain example.org)"
        );
        assert_eq!(
            lines[5],
            "shop/web-1   node-1  spiffe://example.org/web/shop  dns=web.shop.svc  from LanyardIdentity/web"
        );
        assert!(
            lines[1].starts_with("ops/sys-1    -       refused (reserved_id): "),
            "{table}"
        );
        assert!(
            lines[4].starts_with("shop/db-0    node-1  refused (conflict): "),
            "{table}"
        );
        assert_eq!(
            lines[2],
            "ops/tool     node-2  spiffe://example.org/ns/ops/sa/sa-tool  from default-template"
        );
        assert_eq!(lines[6], "");
        assert_eq!(lines[7], "refused resources (nothing is issued from them):");
        assert!(lines[8].starts_with("LanyardIdentity/broken: "), "{table}");
        assert_eq!(lines.len(), 9, "{table}");
    }

    /// The documented JSON shape: field names and the `outcome` tag.
    #[test]
    fn the_json_has_the_documented_fields() {
        let mut s = settings();
        s.default_template = None;
        let report = Report::build(&s, td(), &world()).unwrap();
        let json: serde_json::Value = serde_json::from_str(&report.json()).unwrap();
        let keys = |v: &serde_json::Value| {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(
            keys(&json),
            [
                "default_template",
                "identity_class",
                "pods",
                "refused_resources",
                "trust_domain",
                "watch_classless"
            ]
        );
        assert_eq!(json["default_template"], serde_json::Value::Null);
        let pod = |name: &str| {
            json["pods"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .unwrap()
                .clone()
        };
        assert_eq!(
            pod("web-1"),
            serde_json::json!({
                "namespace": "shop", "name": "web-1", "node": "node-1",
                "service_account": "sa-web-1", "outcome": "issued",
                "spiffe_id": "spiffe://example.org/web/shop", "dns_names": ["web.shop.svc"],
                "source": "LanyardIdentity/web", "x509_ttl_seconds": 7200,
                "jwt_ttl_seconds": null, "workload_selectors": ["k8s:container-name:web"],
                "hint": "",
            })
        );
        assert_eq!(
            keys(&pod("db-0")),
            [
                "message",
                "name",
                "namespace",
                "node",
                "outcome",
                "reason",
                "resources",
                "service_account"
            ]
        );
        assert_eq!(
            pod("tool"),
            serde_json::json!({
                "namespace": "ops", "name": "tool", "node": "node-2",
                "service_account": "sa-tool", "outcome": "unregistered",
            })
        );
        assert_eq!(pod("sys-1")["node"], serde_json::Value::Null);
        assert_eq!(json["refused_resources"][0]["name"], "broken");
        assert!(json["refused_resources"][0]["error"].is_string());
    }
}
