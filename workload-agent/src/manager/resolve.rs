//! The node view (from the server's `WatchNode` feed) and which identities a caller gets.
//!
//! A caller in a pod the view knows has a selector set made of its attested `unix:`
//! selectors, its `k8s:pod-uid` and `k8s:container-id`, its `k8s:container-name` (its
//! attested container ID looked up in the pod's container names from the view; none when the
//! view does not name that container) and the `k8s:` selectors the view adds for that pod
//! (namespace, service account, pod name, node name, labels). With that set it gets:
//! - first, the pod's own identity, when the server names one (a LanyardIdentity or the
//!   default template) and the set holds every one of the pod's workload selectors (an empty
//!   list: any caller in the pod). This is where a registration's `k8s:container-name:app`
//!   keeps the identity from a sidecar in the same pod: the server mints for a pod, not a
//!   container, so only the agent can tell them apart. The entitlement carries the pod's
//!   Workload API hint and X.509 TTL;
//! - then every static entry whose selectors all match (so entries may use
//!   `k8s:container-name` too).
//!
//! Any other caller is matched on its attested selectors alone. The server re-checks
//! everything it can when minting; this decides what to ask for.
//!
//! Unusable view items are dropped with a WARN, never fatal: an entry whose ID or selectors do
//! not parse; a pod's own identity whose ID is unusable, or whose workload selectors do not
//! parse or are more than [`MAX_WORKLOAD_SELECTORS`] (dropping it is the safe side: the
//! identity must not reach a container it was not meant for). A pod's hint, DNS names,
//! `registered_by` and container names over their bounds are dropped on their own (the
//! identity stays; a caller whose container is unnamed just has no `k8s:container-name`).
//!
//! An entry's or pod's `federates_with` (the registration's federated trust domains) rides on
//! its entitlements, parsed, without our own domain or duplicates, sorted; a name that does not
//! parse is dropped with a WARN (the identity stays: it just gets fewer bundles).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use lanyard_proto::identity::v1 as wire;
use lanyard_svid::reserved::is_reserved;
use lanyard_svid::selector::{
    Selector, SelectorError, SelectorKey, SelectorSet, canonical_pod_uid, is_container_id,
};
use lanyard_svid::{SpiffeId, TrustDomain};

use crate::attest::Attested;
use crate::identities::Entitlement;

/// Most static entries and pods taken from one view; the rest are ignored (and logged).
pub const MAX_ENTRIES: usize = 10_000;
pub const MAX_PODS: usize = 5_000;
/// Most selectors of one entry.
pub const MAX_ENTRY_SELECTORS: usize = 64;
/// Most workload selectors of one pod's identity.
pub const MAX_WORKLOAD_SELECTORS: usize = 16;
/// Most DNS names of one pod's identity, and the longest (a DNS name's limit).
pub const MAX_DNS_NAMES: usize = 16;
pub const MAX_DNS_NAME_LEN: usize = 253;
/// The longest hint kept, in bytes (the Workload API allows 1024; registrations 256).
pub const MAX_HINT_LEN: usize = 256;
/// Most federated trust domains one entry or pod names (the agent holds at most as many).
pub const MAX_FEDERATES_WITH: usize = crate::server_client::federated::MAX_FEDERATED_DOMAINS;
/// The longest `registered_by` kept, in bytes (`LanyardIdentity/<name>`: a name is at most
/// 253).
pub const MAX_REGISTERED_BY_LEN: usize = 300;

/// A static entry this node may serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewEntry {
    pub spiffe_id: SpiffeId,
    pub selectors: Vec<Selector>,
    pub x509_ttl: Option<Duration>,
    /// Federated trust domains whose bundles its callers get, sorted.
    pub federates_with: Vec<TrustDomain>,
}

/// A pod on this node, as the server sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewPod {
    pub namespace: String,
    pub name: String,
    /// As the server spells it (sent back verbatim in mint requests).
    pub uid: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    pub container_ids: Vec<String>,
    /// Container name by canonical (lowercase) container ID: only IDs in `container_ids`,
    /// only valid container names (so at most one per container ID).
    pub container_names: BTreeMap<String, String>,
    /// The pod's own identity; `None` when the server names none (or it is unusable here).
    pub spiffe_id: Option<SpiffeId>,
    /// Selectors a caller in the pod must also show to get `spiffe_id`; empty: any caller.
    pub workload_selectors: Vec<Selector>,
    /// DNS SANs the server adds to the pod's X.509-SVIDs (informational here).
    pub dns_names: Vec<String>,
    /// The Workload API hint of the pod's X.509-SVID; empty: none.
    pub hint: String,
    /// Applied by the server; informational here, like [`ViewEntry::x509_ttl`].
    pub x509_ttl: Option<Duration>,
    /// What named the pod's identity (`LanyardIdentity/<name>`, `default-template`), for logs.
    pub registered_by: String,
    /// Federated trust domains whose bundles callers holding the pod's identity get, sorted.
    pub federates_with: Vec<TrustDomain>,
}

impl ViewPod {
    /// `k8s:container-name:<name>` for the caller's attested container, when the view names
    /// that container in this pod.
    fn container_name_of(&self, attested: &Attested) -> Option<Selector> {
        let mut ids = attested
            .selectors
            .iter()
            .filter(|s| s.key() == SelectorKey::ContainerId);
        let id = ids.next()?;
        if ids.next().is_some() {
            // Attestation yields one; two would make the name ambiguous.
            return None;
        }
        let name = self.container_names.get(id.value())?;
        Selector::new(SelectorKey::ContainerName, name).ok()
    }

    /// True when `selectors` (the caller's full set) holds every workload selector.
    fn admits(&self, selectors: &SelectorSet) -> bool {
        self.workload_selectors
            .iter()
            .all(|s| selectors.contains(s))
    }

    fn wire(&self) -> wire::Pod {
        wire::Pod {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            service_account: self.service_account.clone(),
        }
    }
}

/// What this node may serve, per the latest `WatchNode` message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeView {
    pub node_name: String,
    pub entries: Vec<ViewEntry>,
    /// By canonical pod UID.
    pub pods: HashMap<String, ViewPod>,
}

impl NodeView {
    /// Decodes a `WatchNode` message, keeping only what is valid for `trust_domain`: entries
    /// and pod IDs that parse, are in our trust domain and are not reserved. Dropped items are
    /// logged, never fatal (one bad entry must not take the others down).
    pub fn from_wire(msg: &wire::WatchNodeResponse, trust_domain: &TrustDomain) -> Self {
        let id_ok = |text: &str| -> Option<SpiffeId> {
            let id = SpiffeId::parse(text).ok()?;
            (id.trust_domain() == trust_domain && !is_reserved(&id)).then_some(id)
        };
        let mut entries = Vec::new();
        for e in msg.entries.iter().take(MAX_ENTRIES) {
            let Some(spiffe_id) = id_ok(&e.spiffe_id) else {
                tracing::warn!(spiffe_id = %e.spiffe_id, "node view: entry ID unusable here; ignored");
                continue;
            };
            let selectors: Result<Vec<Selector>, _> = e
                .selectors
                .iter()
                .take(MAX_ENTRY_SELECTORS + 1)
                .map(|s| Selector::parse(s))
                .collect();
            match selectors {
                Ok(selectors)
                    if !selectors.is_empty() && selectors.len() <= MAX_ENTRY_SELECTORS =>
                {
                    entries.push(ViewEntry {
                        federates_with: federates_with(&e.federates_with, trust_domain, || {
                            spiffe_id.to_string()
                        }),
                        spiffe_id,
                        selectors,
                        x509_ttl: ttl(e.x509_ttl_seconds),
                    })
                }
                _ => tracing::warn!(%spiffe_id, "node view: entry selectors unusable; ignored"),
            }
        }
        let mut pods = HashMap::new();
        for p in msg.pods.iter().take(MAX_PODS) {
            let Some(key) = canonical_pod_uid(&p.uid) else {
                tracing::warn!(uid = %p.uid, "node view: pod UID unusable; ignored");
                continue;
            };
            let mut spiffe_id = if p.spiffe_id.is_empty() {
                None
            } else {
                id_ok(&p.spiffe_id)
            };
            let (ns, name) = (&p.namespace, &p.name);
            let registered_by = bounded_text(&p.registered_by, MAX_REGISTERED_BY_LEN)
                .unwrap_or_else(|| {
                    tracing::warn!(%ns, pod = %name, "node view: pod registered_by unusable; ignored");
                    String::new()
                });
            let workload_selectors = match workload_selectors(&p.workload_selectors) {
                Ok(selectors) => selectors,
                Err(why) => {
                    if spiffe_id.is_some() {
                        tracing::warn!(
                            %ns, pod = %name, %registered_by, %why,
                            "node view: pod workload selectors unusable; its own identity ignored"
                        );
                    }
                    spiffe_id = None;
                    Vec::new()
                }
            };
            let hint = bounded_text(&p.hint, MAX_HINT_LEN).unwrap_or_else(|| {
                tracing::warn!(%ns, pod = %name, %registered_by, "node view: pod hint unusable; none served");
                String::new()
            });
            let dns_names = dns_names(&p.dns_names).unwrap_or_else(|| {
                tracing::warn!(%ns, pod = %name, %registered_by, "node view: pod DNS names unusable; ignored");
                Vec::new()
            });
            let federates_with = federates_with(&p.federates_with, trust_domain, || {
                format!("pod {ns}/{name} ({registered_by})")
            });
            pods.insert(
                key,
                ViewPod {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    uid: p.uid.clone(),
                    service_account: p.service_account.clone(),
                    labels: p
                        .labels
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    container_names: container_names(p),
                    container_ids: p.container_ids.clone(),
                    spiffe_id,
                    workload_selectors,
                    dns_names,
                    hint,
                    x509_ttl: ttl(p.x509_ttl_seconds),
                    registered_by,
                    federates_with,
                },
            );
        }
        if msg.entries.len() > MAX_ENTRIES || msg.pods.len() > MAX_PODS {
            tracing::warn!(
                entries = msg.entries.len(),
                pods = msg.pods.len(),
                "node view larger than the agent keeps; the excess is ignored"
            );
        }
        Self {
            node_name: msg.node_name.clone(),
            entries,
            pods,
        }
    }

    /// The `k8s:` selectors the view adds for `pod` (the caller's own pod UID and container ID
    /// come from attestation).
    pub fn pod_selectors(&self, pod: &ViewPod) -> Vec<Selector> {
        let mut out = Vec::new();
        let mut add = |key, value: &str| {
            if let Ok(s) = Selector::new(key, value) {
                out.push(s);
            }
        };
        add(SelectorKey::Namespace, &pod.namespace);
        add(SelectorKey::ServiceAccount, &pod.service_account);
        add(SelectorKey::PodName, &pod.name);
        add(SelectorKey::PodUid, &pod.uid);
        if !self.node_name.is_empty() {
            add(SelectorKey::NodeName, &self.node_name);
        }
        for (k, v) in &pod.labels {
            if let Ok(s) = Selector::pod_label(k, v) {
                out.push(s);
            }
        }
        out
    }

    /// The identities `attested` is entitled to, default first, without duplicate IDs.
    pub fn resolve(&self, attested: &Attested) -> Vec<Entitlement> {
        let pod = attested.pod_uid().and_then(|uid| self.pods.get(uid));
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut push = |e: Entitlement| {
            if seen.insert(e.spiffe_id.clone()) {
                out.push(e);
            }
        };
        let selectors = match pod {
            Some(pod) => {
                let mut all = attested.selectors.clone();
                // Before the labels, so a set filled by labels cannot crowd it out. A full set
                // only means selectors needing more will not match (the safe side).
                if let Some(name) = pod.container_name_of(attested) {
                    let _ = all.insert(name);
                }
                for s in self.pod_selectors(pod) {
                    let _ = all.insert(s);
                }
                if let Some(id) = &pod.spiffe_id
                    && pod.admits(&all)
                {
                    push(Entitlement {
                        spiffe_id: id.clone(),
                        workload: wire::Workload {
                            kind: Some(wire::workload::Kind::Pod(pod.wire())),
                            entry_pod: None,
                        },
                        x509_ttl: pod.x509_ttl,
                        hint: pod.hint.clone(),
                        federates_with: pod.federates_with.clone(),
                    });
                }
                all
            }
            None => attested.selectors.clone(),
        };
        for entry in self.matching(&selectors) {
            push(Entitlement {
                spiffe_id: entry.spiffe_id.clone(),
                workload: wire::Workload {
                    kind: Some(wire::workload::Kind::EntrySpiffeId(
                        entry.spiffe_id.to_string(),
                    )),
                    entry_pod: pod.map(ViewPod::wire),
                },
                x509_ttl: entry.x509_ttl,
                // Static entries name no hint; empty ones need not be unique.
                hint: String::new(),
                federates_with: entry.federates_with.clone(),
            });
        }
        out
    }

    fn matching<'a>(&'a self, selectors: &'a SelectorSet) -> impl Iterator<Item = &'a ViewEntry> {
        self.entries
            .iter()
            .filter(move |e| selectors.matches_all(&e.selectors))
    }
}

fn ttl(seconds: i64) -> Option<Duration> {
    u64::try_from(seconds)
        .ok()
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
}

/// `text` if it is at most `max` bytes without control characters (which would forge log
/// lines); `None` otherwise.
fn bounded_text(text: &str, max: usize) -> Option<String> {
    (text.len() <= max && !text.chars().any(char::is_control)).then(|| text.to_owned())
}

/// The federated trust domains `list` names (names or `spiffe://` IDs), parsed, sorted and
/// deduplicated, without `own` (its bundle is served anyway) and at most
/// [`MAX_FEDERATES_WITH`]; a name that does not parse is dropped with a WARN naming `what`.
fn federates_with(
    list: &[String],
    own: &TrustDomain,
    what: impl Fn() -> String,
) -> Vec<TrustDomain> {
    let mut out = Vec::new();
    for name in list.iter().take(MAX_FEDERATES_WITH) {
        match TrustDomain::parse(name) {
            Ok(td) if &td == own => {}
            Ok(td) => out.push(td),
            Err(e) => {
                // Escaped: the name comes from a registration, and must not forge log lines.
                tracing::warn!(registration = %what(), name = ?name, "node view: a federates_with trust domain does not parse; ignored: {e}");
            }
        }
    }
    if list.len() > MAX_FEDERATES_WITH {
        tracing::warn!(registration = %what(), count = list.len(), "node view: more federates_with trust domains than the agent keeps ({MAX_FEDERATES_WITH}); the rest are ignored");
    }
    out.sort();
    out.dedup();
    out
}

/// Why a pod's workload selectors are unusable (and its own identity is not served).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkloadSelectorsError {
    #[error("{0} workload selectors, more than the {MAX_WORKLOAD_SELECTORS} the agent enforces")]
    TooMany(usize),
    #[error("a workload selector does not parse: {0}")]
    Unparsable(#[from] SelectorError),
}

/// The pod's workload selectors, all parsed, or why not.
fn workload_selectors(list: &[String]) -> Result<Vec<Selector>, WorkloadSelectorsError> {
    if list.len() > MAX_WORKLOAD_SELECTORS {
        return Err(WorkloadSelectorsError::TooMany(list.len()));
    }
    Ok(list
        .iter()
        .map(|s| Selector::parse(s))
        .collect::<Result<_, _>>()?)
}

/// The pod's DNS names, or `None` when there are too many or one is unusable.
fn dns_names(list: &[String]) -> Option<Vec<String>> {
    if list.len() > MAX_DNS_NAMES {
        return None;
    }
    list.iter()
        .map(|n| bounded_text(n, MAX_DNS_NAME_LEN).filter(|n| !n.is_empty()))
        .collect()
}

/// Container names by canonical container ID, for IDs the pod lists only (which bounds them by
/// its container count) and valid names only; the rest is logged and ignored.
fn container_names(p: &wire::PodInfo) -> BTreeMap<String, String> {
    let ids: HashSet<String> = p
        .container_ids
        .iter()
        .filter(|id| is_container_id(id))
        .map(|id| id.to_ascii_lowercase())
        .collect();
    let mut out = BTreeMap::new();
    let mut ignored = 0usize;
    for (id, name) in &p.container_names {
        let id = id.to_ascii_lowercase();
        if ids.contains(&id) && Selector::new(SelectorKey::ContainerName, name).is_ok() {
            out.insert(id, name.clone());
        } else {
            ignored += 1;
        }
    }
    if ignored > 0 {
        tracing::warn!(
            pod = %p.name, ns = %p.namespace, ignored,
            "node view: container names for containers the pod does not list, or invalid; ignored"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attest::PodContainer;

    const UID: &str = "2f1a7c3e-1b2d-4e5f-8a9b-0c1d2e3f4a5b";
    const CID: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    /// The pod's sidecar container.
    const SIDECAR: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    /// A container the view does not list in the pod.
    const STRANGER: &str = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn entry(id: &str, selectors: &[&str]) -> wire::StaticEntry {
        wire::StaticEntry {
            spiffe_id: id.into(),
            selectors: selectors.iter().map(|s| s.to_string()).collect(),
            x509_ttl_seconds: 0,
            jwt_ttl_seconds: 0,
            ..Default::default()
        }
    }

    /// web/api-0: containers `app` (CID) and `istio-proxy` (SIDECAR), no workload selectors.
    fn pod_info() -> wire::PodInfo {
        wire::PodInfo {
            namespace: "web".into(),
            name: "api-0".into(),
            uid: UID.to_uppercase(),
            service_account: "api".into(),
            labels: [("app".to_string(), "db".to_string())].into(),
            container_ids: vec![CID.into(), SIDECAR.into()],
            container_names: [
                (CID.to_string(), "app".to_string()),
                (SIDECAR.to_string(), "istio-proxy".to_string()),
            ]
            .into(),
            spiffe_id: "spiffe://example.org/ns/web/sa/api".into(),
            ..Default::default()
        }
    }

    /// A view with the one pod `pod` and, besides the entries of [`view`], `extra` entries.
    fn view_with(pod: wire::PodInfo, extra: Vec<wire::StaticEntry>) -> NodeView {
        NodeView::from_wire(
            &wire::WatchNodeResponse {
                node_name: "node-1".into(),
                entries: extra,
                pods: vec![pod],
            },
            &td(),
        )
    }

    fn view() -> NodeView {
        NodeView::from_wire(
            &wire::WatchNodeResponse {
                node_name: "node-1".into(),
                entries: vec![
                    entry("spiffe://example.org/unix-1001", &["unix:uid:1001"]),
                    entry(
                        "spiffe://example.org/web-db",
                        &["k8s:ns:web", "k8s:pod-label:app:db"],
                    ),
                    entry(
                        "spiffe://example.org/node-1",
                        &["k8s:node-name:node-1", "unix:uid:1001"],
                    ),
                    entry(
                        "spiffe://example.org/both",
                        &["unix:uid:1001", "unix:gid:5"],
                    ),
                    entry("spiffe://example.org/ns/web/sa/api", &["unix:uid:1001"]),
                    entry("spiffe://other.org/foreign", &["unix:uid:1001"]),
                    entry("spiffe://example.org/lanyard/server", &["unix:uid:1001"]),
                    entry("spiffe://example.org/bad-selector", &["nope:x:y"]),
                    entry("spiffe://example.org/no-selectors", &[]),
                ],
                pods: vec![pod_info()],
            },
            &td(),
        )
    }

    fn attested(uid: u32, pod: Option<&str>) -> Attested {
        attested_in(uid, pod, CID)
    }

    /// A caller with `uid` in container `cid` of pod `pod`.
    fn attested_in(uid: u32, pod: Option<&str>, cid: &str) -> Attested {
        let pod = pod.map(|u| PodContainer::new(u, cid).unwrap());
        let mut selectors = vec![Selector::uid(uid)];
        if let Some(p) = &pod {
            selectors.extend(p.selectors());
        }
        Attested {
            selectors: SelectorSet::try_from(selectors).unwrap(),
            pod,
            socket_pod: None,
        }
    }

    fn ids(list: &[Entitlement]) -> Vec<String> {
        list.iter().map(|e| e.spiffe_id.path().to_owned()).collect()
    }

    #[test]
    fn unusable_entries_are_dropped() {
        let v = view();
        let kept: Vec<_> = v.entries.iter().map(|e| e.spiffe_id.path()).collect();
        assert_eq!(
            kept,
            [
                "/unix-1001",
                "/web-db",
                "/node-1",
                "/both",
                "/ns/web/sa/api"
            ]
        );
        assert!(v.pods.contains_key(UID), "keyed by canonical UID");
    }

    #[test]
    fn host_process_gets_unix_entries_only() {
        let got = view().resolve(&attested(1001, None));
        assert_eq!(ids(&got), ["/unix-1001", "/ns/web/sa/api"]);
        assert!(got.iter().all(|e| e.workload.entry_pod.is_none()));
        assert!(view().resolve(&attested(1002, None)).is_empty());
    }

    #[test]
    fn pod_gets_its_identity_first_then_entries_deduplicated() {
        let got = view().resolve(&attested(1001, Some(UID)));
        assert_eq!(
            ids(&got),
            ["/ns/web/sa/api", "/unix-1001", "/web-db", "/node-1"]
        );
        match &got[0].workload.kind {
            Some(wire::workload::Kind::Pod(p)) => {
                assert_eq!((p.namespace.as_str(), p.name.as_str()), ("web", "api-0"));
                assert_eq!(
                    p.uid,
                    UID.to_uppercase(),
                    "the server's spelling is sent back"
                );
            }
            other => panic!("{other:?}"),
        }
        for e in &got[1..] {
            assert_eq!(e.workload.entry_pod.as_ref().unwrap().name, "api-0");
        }
    }

    #[test]
    fn unknown_pod_is_matched_on_attested_selectors_only() {
        let other = "11111111-2222-3333-4444-555555555555";
        let got = view().resolve(&attested(1001, Some(other)));
        assert_eq!(ids(&got), ["/unix-1001", "/ns/web/sa/api"]);
    }

    #[test]
    fn a_pod_socket_caller_is_its_pod_without_a_cgroup() {
        // Came in on web/api-0's own socket; its cgroup named no pod.
        let caller = Attested {
            selectors: SelectorSet::try_from(vec![
                Selector::uid(7),
                Selector::new(SelectorKey::PodUid, UID).unwrap(),
            ])
            .unwrap(),
            pod: None,
            socket_pod: Some(UID.to_owned()),
        };
        let got = view().resolve(&caller);
        assert_eq!(ids(&got), ["/ns/web/sa/api", "/web-db"]);
        assert!(
            matches!(&got[0].workload.kind, Some(wire::workload::Kind::Pod(p)) if p.name == "api-0")
        );
    }

    #[test]
    fn pod_without_template_id_gets_only_entries() {
        let mut v = view();
        v.pods.get_mut(UID).unwrap().spiffe_id = None;
        let got = v.resolve(&attested(7, Some(UID)));
        assert_eq!(ids(&got), ["/web-db"]);
    }

    fn gated(selectors: &[&str]) -> wire::PodInfo {
        wire::PodInfo {
            workload_selectors: selectors.iter().map(|s| s.to_string()).collect(),
            hint: "internal".into(),
            x509_ttl_seconds: 600,
            registered_by: "LanyardIdentity/api".into(),
            ..pod_info()
        }
    }

    #[test]
    fn workload_selectors_give_the_pod_identity_to_the_named_container_only() {
        let v = view_with(gated(&["k8s:container-name:app"]), Vec::new());
        let pod = &v.pods[UID];
        assert_eq!(
            pod.workload_selectors,
            [Selector::parse("k8s:container-name:app").unwrap()]
        );
        assert_eq!(pod.registered_by, "LanyardIdentity/api");

        let app = v.resolve(&attested_in(7, Some(UID), CID));
        assert_eq!(ids(&app), ["/ns/web/sa/api"]);
        assert!(matches!(
            &app[0].workload.kind,
            Some(wire::workload::Kind::Pod(_))
        ));

        // A sidecar in the same pod, a container the view does not list, and a caller on the
        // pod's socket whose cgroup named no container: not the identity.
        assert!(v.resolve(&attested_in(7, Some(UID), SIDECAR)).is_empty());
        assert!(v.resolve(&attested_in(7, Some(UID), STRANGER)).is_empty());
        let socket_caller = Attested {
            selectors: SelectorSet::try_from(vec![
                Selector::uid(7),
                Selector::new(SelectorKey::PodUid, UID).unwrap(),
            ])
            .unwrap(),
            pod: None,
            socket_pod: Some(UID.to_owned()),
        };
        assert!(v.resolve(&socket_caller).is_empty());
    }

    #[test]
    fn every_workload_selector_must_match_and_none_means_any_container() {
        // Selectors from attestation and from the view count too.
        let v = view_with(
            gated(&["k8s:container-name:app", "unix:uid:7", "k8s:sa:api"]),
            Vec::new(),
        );
        assert_eq!(
            ids(&v.resolve(&attested_in(7, Some(UID), CID))),
            ["/ns/web/sa/api"]
        );
        assert!(v.resolve(&attested_in(8, Some(UID), CID)).is_empty());
        let v = view_with(
            gated(&["k8s:container-name:app", "k8s:sa:other"]),
            Vec::new(),
        );
        assert!(v.resolve(&attested_in(7, Some(UID), CID)).is_empty());

        let open = view_with(gated(&[]), Vec::new());
        for cid in [CID, SIDECAR, STRANGER] {
            assert_eq!(
                ids(&open.resolve(&attested_in(7, Some(UID), cid))),
                ["/ns/web/sa/api"],
                "{cid}"
            );
        }
    }

    #[test]
    fn unusable_workload_selectors_drop_the_pod_identity_only() {
        let entries = vec![entry("spiffe://example.org/web", &["k8s:ns:web"])];
        let too_many: Vec<String> = (0..=MAX_WORKLOAD_SELECTORS)
            .map(|i| format!("unix:gid:{i}"))
            .collect();
        let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
        for bad in [
            vec!["k8s:container-name:app", "k8s:bogus:x"],
            vec!["k8s:container-name:App"],
            too_many,
        ] {
            let v = view_with(gated(&bad), entries.clone());
            let pod = &v.pods[UID];
            assert_eq!(pod.spiffe_id, None, "{bad:?}");
            // The pod stays known: its static entries still resolve.
            assert_eq!(ids(&v.resolve(&attested_in(7, Some(UID), CID))), ["/web"]);
        }
        let at_most: Vec<String> = (0..MAX_WORKLOAD_SELECTORS)
            .map(|i| format!("unix:gid:{i}"))
            .collect();
        let at_most: Vec<&str> = at_most.iter().map(String::as_str).collect();
        assert!(
            view_with(gated(&at_most), Vec::new()).pods[UID]
                .spiffe_id
                .is_some()
        );
    }

    #[test]
    fn static_entries_may_name_a_container() {
        let v = view_with(
            pod_info(),
            vec![
                entry(
                    "spiffe://example.org/mesh",
                    &["k8s:ns:web", "k8s:container-name:istio-proxy"],
                ),
                entry("spiffe://example.org/app-only", &["k8s:container-name:app"]),
            ],
        );
        assert_eq!(
            ids(&v.resolve(&attested_in(7, Some(UID), SIDECAR))),
            ["/ns/web/sa/api", "/mesh"]
        );
        assert_eq!(
            ids(&v.resolve(&attested_in(7, Some(UID), CID))),
            ["/ns/web/sa/api", "/app-only"]
        );
        assert_eq!(
            ids(&v.resolve(&attested_in(7, Some(UID), STRANGER))),
            ["/ns/web/sa/api"]
        );
        // Not in a pod the view knows: no container name.
        assert!(v.resolve(&attested_in(7, None, SIDECAR)).is_empty());
    }

    #[test]
    fn the_pod_identity_carries_its_hint_and_ttl_and_entries_none() {
        let v = view_with(
            gated(&[]),
            vec![entry("spiffe://example.org/web", &["k8s:ns:web"])],
        );
        let got = v.resolve(&attested_in(7, Some(UID), CID));
        assert_eq!(ids(&got), ["/ns/web/sa/api", "/web"]);
        assert_eq!(got[0].hint, "internal");
        assert_eq!(got[0].x509_ttl, Some(Duration::from_secs(600)));
        assert_eq!(got[1].hint, "");

        // Without a hint in the view, none.
        let plain = view_with(pod_info(), Vec::new());
        assert_eq!(plain.resolve(&attested_in(7, Some(UID), CID))[0].hint, "");
    }

    #[test]
    fn pod_items_over_their_bounds_are_dropped_alone() {
        let mut p = gated(&[]);
        p.hint = "h".repeat(MAX_HINT_LEN + 1);
        p.dns_names = (0..=MAX_DNS_NAMES)
            .map(|i| format!("n{i}.web.svc"))
            .collect();
        p.registered_by = "LanyardIdentity/a\nforged".into();
        let v = view_with(p, Vec::new());
        let pod = &v.pods[UID];
        assert_eq!(
            (
                pod.hint.as_str(),
                pod.dns_names.len(),
                pod.registered_by.as_str()
            ),
            ("", 0, "")
        );
        assert!(pod.spiffe_id.is_some(), "the identity stays");

        let mut p = gated(&[]);
        p.hint = "h".repeat(MAX_HINT_LEN);
        p.dns_names = vec!["api.web.svc".into()];
        let pod = &view_with(p, Vec::new()).pods[UID];
        assert_eq!(pod.hint.len(), MAX_HINT_LEN);
        assert_eq!(pod.dns_names, ["api.web.svc"]);

        let mut p = gated(&[]);
        p.hint = "a\u{7}b".into();
        assert_eq!(view_with(p, Vec::new()).pods[UID].hint, "");
    }

    #[test]
    fn container_names_only_for_listed_containers_and_valid_names() {
        let mut p = pod_info();
        p.container_names = [
            // The server's spelling of the ID is canonicalised.
            (CID.to_uppercase(), "app".to_string()),
            (SIDECAR.to_string(), "Not_A_Name".to_string()),
            (STRANGER.to_string(), "stranger".to_string()),
        ]
        .into();
        let v = view_with(p, Vec::new());
        assert_eq!(
            v.pods[UID].container_names,
            [(CID.to_string(), "app".to_string())].into()
        );
        // A claimed name for an unlisted container is not given to a caller in it.
        let v = view_with(
            pod_info(),
            vec![entry(
                "spiffe://example.org/s",
                &["k8s:container-name:stranger"],
            )],
        );
        assert_eq!(
            ids(&v.resolve(&attested_in(7, Some(UID), STRANGER))),
            ["/ns/web/sa/api"]
        );
    }

    #[test]
    fn federates_with_rides_on_entitlements_parsed_deduplicated_and_sorted() {
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut pod = gated(&[]);
        pod.federates_with = names(&["partner.test", "spiffe://Other.Test", "bad name", ""]);
        let mut web = entry("spiffe://example.org/web", &["k8s:ns:web"]);
        web.federates_with = names(&[
            "b.test",
            "spiffe://a.test",
            "example.org",
            "B.TEST",
            "spiffe://b.test/not-a-domain-id",
        ]);
        let plain = entry("spiffe://example.org/plain", &["k8s:ns:web"]);
        let v = view_with(pod, vec![web, plain]);
        let got = v.resolve(&attested_in(7, Some(UID), CID));
        assert_eq!(ids(&got), ["/ns/web/sa/api", "/web", "/plain"]);
        let domains = |e: &Entitlement| -> Vec<String> {
            e.federates_with.iter().map(|t| t.to_string()).collect()
        };
        assert_eq!(domains(&got[0]), ["other.test", "partner.test"]);
        // Our own domain and an ID with a path are not federated domains.
        assert_eq!(domains(&got[1]), ["a.test", "b.test"]);
        assert!(got[2].federates_with.is_empty());

        let too_many: Vec<String> = (0..MAX_FEDERATES_WITH + 5)
            .map(|i| format!("d{i}.test"))
            .collect();
        let mut pod = gated(&[]);
        pod.federates_with = too_many;
        let v = view_with(pod, Vec::new());
        assert_eq!(v.pods[UID].federates_with.len(), MAX_FEDERATES_WITH);
    }
}
