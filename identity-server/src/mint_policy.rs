//! Mint policy: which SPIFFE ID, if any, an agent may obtain for a workload it names.
//!
//! The agent only *names* a workload (a pod, or a static entry); the server decides the ID.
//! - A pod: it must exist in the pod index with the claimed UID, namespace, name and service
//!   account, be active, and run on the agent's own node; join-token agents serve no pods.
//!   Its ID, DNS names and TTLs are what the registration registry resolves for it
//!   ([`lanyard_registration::Registry::resolve`]: a `LanyardIdentity` or the default
//!   template); a pod refused or unregistered there gets nothing.
//! - A static entry: the agent's node must be listed in the entry's `nodes`. On a Kubernetes
//!   node the entry must carry a `k8s:` selector and the agent must name the pod, which is
//!   checked like a pod request, and whose facts must satisfy every `k8s:` selector.
//! - Nothing under `/lanyard/` is ever issued to a workload.

use std::time::Duration;

use lanyard_registration::{PodRefusal, Resolution};
use lanyard_svid::SpiffeId;
use lanyard_svid::reserved::{AgentIdentity, NodeAttestation, is_reserved};
use lanyard_svid::selector::{Selector, SelectorKey, SelectorKind, SelectorSet};

use crate::entries::StaticEntry;
use crate::k8s::pods::{PodInfo, PodLookup};
use crate::registry_view::RegistrationSnapshot;

/// A workload as an agent names it (decoded from the wire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkloadClaim {
    Pod(PodClaim),
    Entry {
        spiffe_id: String,
        /// Required on Kubernetes nodes.
        pod: Option<PodClaim>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodClaim {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub service_account: String,
}

/// Why a mint was refused. `Display` is the metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MintRefusal {
    #[error("no_workload")]
    NoWorkload,
    #[error("pods_need_k8s_node")]
    PodsNeedK8sNode,
    #[error("pod_cache_not_synced")]
    PodCacheNotSynced,
    #[error("pod_not_found")]
    PodNotFound,
    #[error("pod_mismatch")]
    PodMismatch(&'static str),
    #[error("pod_on_other_node")]
    PodOnOtherNode,
    #[error("pod_not_active")]
    PodNotActive,
    /// The `LanyardIdentity` resources (or the namespaces) have not been listed yet.
    #[error("registrations_not_synced")]
    RegistrationsNotSynced,
    /// The registry refuses the pod; the label is the registry's reason.
    #[error("{}", .0.reason)]
    PodRefused(PodRefusal),
    /// No resource selects the pod and the default pod identity is off.
    #[error("pod_unregistered")]
    PodUnregistered,
    #[error("entry_not_found")]
    EntryNotFound,
    #[error("entry_not_assigned_to_node")]
    EntryNotAssignedToNode,
    #[error("entry_needs_k8s_selector")]
    EntryNeedsK8sSelector,
    #[error("entry_needs_pod")]
    EntryNeedsPod,
    #[error("entry_selectors_mismatch")]
    EntrySelectorsMismatch,
    #[error("reserved_id")]
    ReservedId,
}

impl MintRefusal {
    /// The sentence the agent sees.
    pub fn message(&self) -> String {
        match self {
            Self::NoWorkload => "the request names no workload".into(),
            Self::PodsNeedK8sNode => {
                "join-token agents may serve static entries only, not pods".into()
            }
            Self::PodCacheNotSynced => "the server has not finished listing pods; retry".into(),
            Self::PodNotFound => "no pod with that UID exists".into(),
            Self::PodMismatch(field) => format!("the pod's {field} differs from the request"),
            Self::PodOnOtherNode => "the pod does not run on the calling agent's node".into(),
            Self::PodNotActive => "the pod has finished or is being deleted".into(),
            Self::RegistrationsNotSynced => {
                "the server has not finished listing LanyardIdentity resources; retry".into()
            }
            Self::PodRefused(refusal) if refusal.resources.is_empty() => format!(
                "the pod is refused an identity by the default pod ID template: {}",
                refusal.message
            ),
            Self::PodRefused(refusal) => format!(
                "the pod is refused an identity by {}: {}",
                refusal
                    .resources
                    .iter()
                    .map(|r| format!("{}/{r}", lanyard_registration::resource::KIND))
                    .collect::<Vec<_>>()
                    .join(", "),
                refusal.message
            ),
            Self::PodUnregistered => "no LanyardIdentity selects the pod and the default pod \
                                      identity is off (--no-default-pod-identity)"
                .into(),
            Self::EntryNotFound => "no static entry has that SPIFFE ID".into(),
            Self::EntryNotAssignedToNode => {
                "the static entry is not assigned to the calling agent's node".into()
            }
            Self::EntryNeedsK8sSelector => {
                "on a Kubernetes node an entry needs at least one k8s: selector".into()
            }
            Self::EntryNeedsPod => {
                "on a Kubernetes node a static entry request must name its pod".into()
            }
            Self::EntrySelectorsMismatch => {
                "the pod does not match the entry's k8s: selectors".into()
            }
            Self::ReservedId => "IDs under /lanyard/ are never issued to workloads".into(),
        }
    }

    /// True when a retry may succeed without anything else changing.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::PodCacheNotSynced | Self::RegistrationsNotSynced)
    }
}

/// What was decided: the ID to sign, its DNS SANs and its own TTLs (`None`: the server's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MintDecision {
    pub spiffe_id: SpiffeId,
    pub dns_names: Vec<String>,
    pub x509_ttl: Option<Duration>,
    pub jwt_ttl: Option<Duration>,
}

/// Everything the policy consults.
pub struct MintPolicy<'a> {
    pub entries: &'a [StaticEntry],
    /// `None` in data-dir mode (no Kubernetes).
    pub pods: Option<&'a dyn PodLookup>,
    /// Names pods' identities.
    pub registrations: &'a RegistrationSnapshot,
}

/// The `k8s:` selectors a pod satisfies, from the server's own view of it.
pub fn pod_selectors(pod: &PodInfo) -> SelectorSet {
    let mut set = SelectorSet::new();
    let mut add = |key, value: &str| {
        if let Ok(s) = Selector::new(key, value) {
            let _ = set.insert(s);
        }
    };
    add(SelectorKey::Namespace, &pod.namespace);
    add(SelectorKey::ServiceAccount, &pod.service_account);
    add(SelectorKey::PodName, &pod.name);
    add(SelectorKey::PodUid, &pod.uid);
    add(SelectorKey::NodeName, &pod.node_name);
    for id in &pod.container_ids {
        add(SelectorKey::ContainerId, id);
    }
    // Every container's name: the server cannot tell which container calls (the agent
    // attests that), so it checks only that the pod has one of that name, as with IDs.
    for name in pod.container_names.values() {
        add(SelectorKey::ContainerName, name);
    }
    for (k, v) in &pod.labels {
        if let Ok(s) = Selector::pod_label(k, v) {
            let _ = set.insert(s);
        }
    }
    set
}

impl MintPolicy<'_> {
    pub fn decide(
        &self,
        agent: &AgentIdentity,
        claim: &WorkloadClaim,
    ) -> Result<MintDecision, MintRefusal> {
        let decision = match claim {
            WorkloadClaim::Pod(pod) => {
                let pod = self.check_pod(agent, pod)?;
                if !self.registrations.synced {
                    return Err(MintRefusal::RegistrationsNotSynced);
                }
                match self.registrations.resolve(&pod) {
                    Resolution::Issued(identity) => MintDecision {
                        spiffe_id: identity.spiffe_id,
                        dns_names: identity.dns_names,
                        x509_ttl: identity.x509_ttl,
                        jwt_ttl: identity.jwt_ttl,
                    },
                    Resolution::Refused(refusal) => return Err(MintRefusal::PodRefused(refusal)),
                    Resolution::Unregistered => return Err(MintRefusal::PodUnregistered),
                }
            }
            WorkloadClaim::Entry { spiffe_id, pod } => {
                self.decide_entry(agent, spiffe_id, pod.as_ref())?
            }
        };
        // Belt and braces: templates and entries are validated at startup too.
        if is_reserved(&decision.spiffe_id) {
            return Err(MintRefusal::ReservedId);
        }
        Ok(decision)
    }

    fn decide_entry(
        &self,
        agent: &AgentIdentity,
        spiffe_id: &str,
        pod: Option<&PodClaim>,
    ) -> Result<MintDecision, MintRefusal> {
        let id = SpiffeId::parse(spiffe_id).map_err(|_| MintRefusal::EntryNotFound)?;
        if is_reserved(&id) {
            return Err(MintRefusal::ReservedId);
        }
        let candidates: Vec<&StaticEntry> =
            self.entries.iter().filter(|e| e.spiffe_id == id).collect();
        if candidates.is_empty() {
            return Err(MintRefusal::EntryNotFound);
        }
        let assigned: Vec<&StaticEntry> = candidates
            .into_iter()
            .filter(|e| e.assigned_to(&agent.node))
            .collect();
        if assigned.is_empty() {
            return Err(MintRefusal::EntryNotAssignedToNode);
        }
        let entry = match agent.method {
            NodeAttestation::JoinToken => assigned[0],
            NodeAttestation::K8sPsat => {
                let with_k8s: Vec<&StaticEntry> = assigned
                    .into_iter()
                    .filter(|e| e.has_k8s_selector())
                    .collect();
                if with_k8s.is_empty() {
                    return Err(MintRefusal::EntryNeedsK8sSelector);
                }
                let pod = self.check_pod(agent, pod.ok_or(MintRefusal::EntryNeedsPod)?)?;
                let facts = pod_selectors(&pod);
                let k8s_only = |e: &StaticEntry| -> Vec<Selector> {
                    e.selectors
                        .iter()
                        .filter(|s| s.kind() == SelectorKind::K8s)
                        .cloned()
                        .collect()
                };
                *with_k8s
                    .iter()
                    .find(|e| facts.matches_all(&k8s_only(e)))
                    .ok_or(MintRefusal::EntrySelectorsMismatch)?
            }
        };
        Ok(MintDecision {
            spiffe_id: entry.spiffe_id.clone(),
            dns_names: entry.dns_names.clone(),
            x509_ttl: entry.x509_ttl,
            jwt_ttl: entry.jwt_ttl,
        })
    }

    /// Checks a pod claim against the index; returns the server's own view of the pod.
    fn check_pod(&self, agent: &AgentIdentity, claim: &PodClaim) -> Result<PodInfo, MintRefusal> {
        if agent.method != NodeAttestation::K8sPsat {
            return Err(MintRefusal::PodsNeedK8sNode);
        }
        let pods = self.pods.ok_or(MintRefusal::PodsNeedK8sNode)?;
        if !pods.is_synced() {
            return Err(MintRefusal::PodCacheNotSynced);
        }
        let pod = pods.by_uid(&claim.uid).ok_or(MintRefusal::PodNotFound)?;
        if pod.namespace != claim.namespace {
            return Err(MintRefusal::PodMismatch("namespace"));
        }
        if pod.name != claim.name {
            return Err(MintRefusal::PodMismatch("name"));
        }
        if pod.service_account != claim.service_account {
            return Err(MintRefusal::PodMismatch("service account"));
        }
        if pod.node_name != agent.node {
            return Err(MintRefusal::PodOnOtherNode);
        }
        if !pod.active {
            return Err(MintRefusal::PodNotActive);
        }
        Ok(pod)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entries::EntryConfig;
    use crate::k8s::pods::{PodIndex, test_pod};
    use crate::registry_view::test_snapshot;
    use lanyard_registration::{LanyardIdentity, LanyardIdentitySpec, RefusalReason};
    use lanyard_svid::TrustDomain;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn entry(id: &str, selectors: &[&str], nodes: &[&str]) -> StaticEntry {
        EntryConfig {
            spiffe_id: id.into(),
            selectors: selectors.iter().map(|s| s.to_string()).collect(),
            nodes: Some(nodes.iter().map(|s| s.to_string()).collect()),
            x509_ttl: None,
            jwt_ttl: None,
            dns_names: None,
            federates_with: None,
        }
        .validate(&td())
        .unwrap()
    }

    fn default_registrations() -> RegistrationSnapshot {
        test_snapshot(Some(crate::config::DEFAULT_POD_ID_TEMPLATE), &[], &[])
    }

    fn psat_agent(node: &str) -> AgentIdentity {
        AgentIdentity {
            method: NodeAttestation::K8sPsat,
            node: node.into(),
        }
    }

    fn join_agent(node: &str) -> AgentIdentity {
        AgentIdentity {
            method: NodeAttestation::JoinToken,
            node: node.into(),
        }
    }

    fn claim(uid: &str) -> PodClaim {
        PodClaim {
            namespace: "default".into(),
            name: "web-1".into(),
            uid: uid.into(),
            service_account: "web".into(),
        }
    }

    fn pods() -> PodIndex {
        let index = PodIndex::new();
        let mut web = test_pod("default", "web-1", "u1", "web", "node-1");
        web.labels.insert("app".into(), "web".into());
        index.replace_all(vec![web]);
        index
    }

    #[test]
    fn pod_on_own_node_gets_template_id() {
        let pods = pods();
        let registrations = default_registrations();
        let policy = MintPolicy {
            entries: &[],
            pods: Some(&pods),
            registrations: &registrations,
        };
        let d = policy
            .decide(&psat_agent("node-1"), &WorkloadClaim::Pod(claim("u1")))
            .unwrap();
        assert_eq!(
            d.spiffe_id.to_string(),
            "spiffe://example.org/ns/default/sa/web"
        );
    }

    #[test]
    fn pod_refusals() {
        let pods = pods();
        let registrations = default_registrations();
        let policy = MintPolicy {
            entries: &[],
            pods: Some(&pods),
            registrations: &registrations,
        };
        let decide =
            |agent: AgentIdentity, c: PodClaim| policy.decide(&agent, &WorkloadClaim::Pod(c));
        assert_eq!(
            decide(psat_agent("node-2"), claim("u1")),
            Err(MintRefusal::PodOnOtherNode)
        );
        assert_eq!(
            decide(psat_agent("node-1"), claim("u2")),
            Err(MintRefusal::PodNotFound)
        );
        let other_sa = PodClaim {
            service_account: "admin".into(),
            ..claim("u1")
        };
        assert_eq!(
            decide(psat_agent("node-1"), other_sa),
            Err(MintRefusal::PodMismatch("service account"))
        );
        let other_ns = PodClaim {
            namespace: "kube-system".into(),
            ..claim("u1")
        };
        assert_eq!(
            decide(psat_agent("node-1"), other_ns),
            Err(MintRefusal::PodMismatch("namespace"))
        );
        assert_eq!(
            decide(join_agent("node-1"), claim("u1")),
            Err(MintRefusal::PodsNeedK8sNode)
        );
        let mut done = test_pod("default", "web-1", "u1", "web", "node-1");
        done.active = false;
        pods.apply(done);
        assert_eq!(
            decide(psat_agent("node-1"), claim("u1")),
            Err(MintRefusal::PodNotActive)
        );
        let unsynced = PodIndex::new();
        let policy = MintPolicy {
            pods: Some(&unsynced),
            ..policy
        };
        assert_eq!(
            policy.decide(&psat_agent("node-1"), &WorkloadClaim::Pod(claim("u1"))),
            Err(MintRefusal::PodCacheNotSynced)
        );
    }

    #[test]
    fn entries_on_join_token_nodes() {
        let entries = [entry(
            "spiffe://example.org/web",
            &["unix:uid:1001"],
            &["node-1"],
        )];
        let registrations = default_registrations();
        let policy = MintPolicy {
            entries: &entries,
            pods: None,
            registrations: &registrations,
        };
        let want = |id: &str| WorkloadClaim::Entry {
            spiffe_id: id.into(),
            pod: None,
        };
        assert_eq!(
            policy
                .decide(&join_agent("node-1"), &want("spiffe://example.org/web"))
                .unwrap()
                .spiffe_id
                .to_string(),
            "spiffe://example.org/web"
        );
        assert_eq!(
            policy.decide(&join_agent("node-2"), &want("spiffe://example.org/web")),
            Err(MintRefusal::EntryNotAssignedToNode)
        );
        assert_eq!(
            policy.decide(&join_agent("node-1"), &want("spiffe://example.org/db")),
            Err(MintRefusal::EntryNotFound)
        );
        assert_eq!(
            policy.decide(
                &join_agent("node-1"),
                &want("spiffe://example.org/lanyard/server")
            ),
            Err(MintRefusal::ReservedId)
        );
        assert_eq!(
            policy.decide(&join_agent("node-1"), &want("not an id")),
            Err(MintRefusal::EntryNotFound)
        );
    }

    #[test]
    fn entries_on_k8s_nodes_are_rechecked_against_the_pod() {
        let entries = [
            entry("spiffe://example.org/unix-only", &["unix:uid:1001"], &["*"]),
            entry(
                "spiffe://example.org/web",
                &["k8s:ns:default", "k8s:pod-label:app:web", "unix:uid:1001"],
                &["*"],
            ),
            entry("spiffe://example.org/db", &["k8s:ns:db"], &["*"]),
        ];
        let pods = pods();
        let registrations = default_registrations();
        let policy = MintPolicy {
            entries: &entries,
            pods: Some(&pods),
            registrations: &registrations,
        };
        let want = |id: &str, pod: Option<PodClaim>| WorkloadClaim::Entry {
            spiffe_id: id.into(),
            pod,
        };
        let agent = psat_agent("node-1");
        assert_eq!(
            policy
                .decide(&agent, &want("spiffe://example.org/web", Some(claim("u1"))))
                .unwrap()
                .spiffe_id
                .to_string(),
            "spiffe://example.org/web"
        );
        assert_eq!(
            policy.decide(&agent, &want("spiffe://example.org/web", None)),
            Err(MintRefusal::EntryNeedsPod)
        );
        assert_eq!(
            policy.decide(
                &agent,
                &want("spiffe://example.org/unix-only", Some(claim("u1")))
            ),
            Err(MintRefusal::EntryNeedsK8sSelector)
        );
        assert_eq!(
            policy.decide(&agent, &want("spiffe://example.org/db", Some(claim("u1")))),
            Err(MintRefusal::EntrySelectorsMismatch)
        );
        assert_eq!(
            policy.decide(
                &psat_agent("node-2"),
                &want("spiffe://example.org/web", Some(claim("u1")))
            ),
            Err(MintRefusal::PodOnOtherNode)
        );
    }

    #[test]
    fn entries_may_name_a_container_of_the_pod() {
        let entries = [
            entry(
                "spiffe://example.org/app",
                &["k8s:ns:default", "k8s:container-name:app"],
                &["*"],
            ),
            entry(
                "spiffe://example.org/other",
                &["k8s:ns:default", "k8s:container-name:other"],
                &["*"],
            ),
        ];
        let pods = PodIndex::new();
        let mut web = test_pod("default", "web-1", "u1", "web", "node-1");
        web.container_ids = vec!["c1".into()];
        web.container_names = [("c1".to_owned(), "app".to_owned())].into();
        pods.replace_all(vec![web]);
        let registrations = default_registrations();
        let policy = MintPolicy {
            entries: &entries,
            pods: Some(&pods),
            registrations: &registrations,
        };
        let want = |id: &str| WorkloadClaim::Entry {
            spiffe_id: id.into(),
            pod: Some(claim("u1")),
        };
        let agent = psat_agent("node-1");
        assert_eq!(
            policy
                .decide(&agent, &want("spiffe://example.org/app"))
                .map(|d| d.spiffe_id.to_string()),
            Ok("spiffe://example.org/app".to_owned())
        );
        assert_eq!(
            policy.decide(&agent, &want("spiffe://example.org/other")),
            Err(MintRefusal::EntrySelectorsMismatch)
        );
    }

    fn identity(name: &str, template: &str, app: &str) -> LanyardIdentity {
        LanyardIdentity::new(
            name,
            LanyardIdentitySpec {
                spiffe_id_template: template.into(),
                pod_selector: Some(
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                        match_labels: Some([("app".to_owned(), app.to_owned())].into()),
                        ..Default::default()
                    },
                ),
                dns_name_templates: vec!["{pod_name}.web.svc".into()],
                x509_ttl: Some("10m".into()),
                ..Default::default()
            },
        )
    }

    #[test]
    fn pods_get_what_the_registry_resolves() {
        let pods = pods();
        let decide = |registrations: &RegistrationSnapshot| {
            MintPolicy {
                entries: &[],
                pods: Some(&pods),
                registrations,
            }
            .decide(&psat_agent("node-1"), &WorkloadClaim::Pod(claim("u1")))
        };
        // A LanyardIdentity selecting the pod: its ID, DNS names and TTL.
        let one = test_snapshot(
            Some(crate::config::DEFAULT_POD_ID_TEMPLATE),
            &[identity("web", "/web/{pod_name}", "web")],
            &[("default", &[])],
        );
        let d = decide(&one).unwrap();
        assert_eq!(d.spiffe_id.to_string(), "spiffe://example.org/web/web-1");
        assert_eq!(d.dns_names, ["web-1.web.svc"]);
        assert_eq!(d.x509_ttl, Some(Duration::from_secs(600)));
        assert_eq!(d.jwt_ttl, None);
        // Two resources naming different IDs: refused, labelled by the registry's reason,
        // the message naming both.
        let two = test_snapshot(
            Some(crate::config::DEFAULT_POD_ID_TEMPLATE),
            &[
                identity("web", "/web/{pod_name}", "web"),
                identity("other", "/other", "web"),
            ],
            &[("default", &[])],
        );
        let refusal = decide(&two).unwrap_err();
        assert!(
            matches!(&refusal, MintRefusal::PodRefused(r) if r.reason == RefusalReason::Conflict),
            "{refusal:?}"
        );
        assert_eq!(refusal.to_string(), "conflict");
        assert!(
            refusal.message().contains("LanyardIdentity/web"),
            "{}",
            refusal.message()
        );
        assert!(
            refusal.message().contains("LanyardIdentity/other"),
            "{}",
            refusal.message()
        );
        assert!(!refusal.is_transient());
        // Nothing selects it and the default is off.
        let none = test_snapshot(None, &[identity("db", "/db", "db")], &[("default", &[])]);
        assert_eq!(decide(&none), Err(MintRefusal::PodUnregistered));
        // Not listed yet: transient.
        let unsynced = RegistrationSnapshot {
            synced: false,
            ..one
        };
        let refusal = decide(&unsynced).unwrap_err();
        assert_eq!(refusal, MintRefusal::RegistrationsNotSynced);
        assert!(refusal.is_transient());
    }
}
