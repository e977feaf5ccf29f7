//! The node view (from the server's `WatchNode` feed) and which identities a caller gets.
//!
//! A caller in a pod the view knows gets the pod's own identity first (when the server's
//! template names one), then every static entry whose selectors all match: its attested
//! `unix:` selectors, its `k8s:pod-uid` and `k8s:container-id`, and the `k8s:` selectors the
//! view adds for that pod (namespace, service account, pod name, node name, labels). Any other
//! caller is matched on its attested selectors alone. The server re-checks everything when
//! minting; this only decides what to ask for.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use lanyard_proto::identity::v1 as wire;
use lanyard_svid::reserved::is_reserved;
use lanyard_svid::selector::{Selector, SelectorKey, SelectorSet, canonical_pod_uid};
use lanyard_svid::{SpiffeId, TrustDomain};

use crate::attest::Attested;
use crate::identities::Entitlement;

/// Most static entries and pods taken from one view; the rest are ignored (and logged).
pub const MAX_ENTRIES: usize = 10_000;
pub const MAX_PODS: usize = 5_000;
/// Most selectors of one entry.
pub const MAX_ENTRY_SELECTORS: usize = 64;

/// A static entry this node may serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewEntry {
    pub spiffe_id: SpiffeId,
    pub selectors: Vec<Selector>,
    pub x509_ttl: Option<Duration>,
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
    /// The pod's own identity; `None` when the server's template names none.
    pub spiffe_id: Option<SpiffeId>,
}

impl ViewPod {
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
                        spiffe_id,
                        selectors,
                        x509_ttl: (e.x509_ttl_seconds > 0)
                            .then(|| Duration::from_secs(e.x509_ttl_seconds as u64)),
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
            let spiffe_id = if p.spiffe_id.is_empty() {
                None
            } else {
                id_ok(&p.spiffe_id)
            };
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
                    container_ids: p.container_ids.clone(),
                    spiffe_id,
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
                if let Some(id) = &pod.spiffe_id {
                    push(Entitlement {
                        spiffe_id: id.clone(),
                        workload: wire::Workload {
                            kind: Some(wire::workload::Kind::Pod(pod.wire())),
                            entry_pod: None,
                        },
                        x509_ttl: None,
                    });
                }
                let mut all = attested.selectors.clone();
                for s in self.pod_selectors(pod) {
                    // A full set only means an entry needing more selectors will not match.
                    let _ = all.insert(s);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attest::PodContainer;

    const UID: &str = "2f1a7c3e-1b2d-4e5f-8a9b-0c1d2e3f4a5b";
    const CID: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

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
                pods: vec![wire::PodInfo {
                    namespace: "web".into(),
                    name: "api-0".into(),
                    uid: UID.to_uppercase(),
                    service_account: "api".into(),
                    labels: [("app".to_string(), "db".to_string())].into(),
                    container_ids: vec![CID.into()],
                    spiffe_id: "spiffe://example.org/ns/web/sa/api".into(),
                    ..Default::default()
                }],
            },
            &td(),
        )
    }

    fn attested(uid: u32, pod: Option<&str>) -> Attested {
        let pod = pod.map(|u| PodContainer::new(u, CID).unwrap());
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
}
