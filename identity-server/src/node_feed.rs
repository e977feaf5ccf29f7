//! `WatchNode`: what one node's agent may serve (its static entries, and the pods on its node
//! with their metadata and the identity registration gives each), recomputed whenever a pod,
//! a namespace, a `LanyardIdentity` or the static entries change, and sent only when that
//! node's view actually changed. Agents thus need no Kubernetes API access of their own.
//!
//! The first view waits until the registrations are listed: a view computed before would
//! tell agents that pods have no identity, or the wrong one.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use lanyard_proto::identity::v1 as wire;
use lanyard_registration::Resolution;
use lanyard_svid::reserved::AgentIdentity;
use tokio::sync::watch;
use tonic::Status;

use crate::entries::StaticEntry;
use crate::entry_store::EntryStore;
use crate::k8s::pods::{PodIndex, PodInfo, PodLookup};
use crate::registry_view::{RegistrationSnapshot, Registrations};

/// Everything needed to compute any node's view. Cheap to clone.
#[derive(Clone)]
pub struct NodeFeed {
    pub entries: EntryStore,
    /// `None` in data-dir mode.
    pub pods: Option<PodIndex>,
    pub registrations: Registrations,
}

pub type NodeStream = Pin<Box<dyn Stream<Item = Result<wire::WatchNodeResponse, Status>> + Send>>;

fn seconds(d: Option<std::time::Duration>) -> i64 {
    d.map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A static entry as agents receive it.
pub fn entry_to_wire(e: &StaticEntry) -> wire::StaticEntry {
    wire::StaticEntry {
        spiffe_id: e.spiffe_id.to_string(),
        selectors: e.selectors.iter().map(ToString::to_string).collect(),
        x509_ttl_seconds: seconds(e.x509_ttl),
        jwt_ttl_seconds: seconds(e.jwt_ttl),
        dns_names: e.dns_names.clone(),
        federates_with: e.federates_with.iter().map(ToString::to_string).collect(),
    }
}

/// A pod as agents receive it, with the identity `registrations` give it (none: an empty
/// `spiffe_id`, and the agent serves the pod nothing).
pub fn pod_to_wire(pod: PodInfo, registrations: &RegistrationSnapshot) -> wire::PodInfo {
    let mut info = wire::PodInfo::default();
    if let Resolution::Issued(identity) = registrations.resolve(&pod) {
        info.spiffe_id = identity.spiffe_id.to_string();
        info.dns_names = identity.dns_names;
        info.workload_selectors = identity
            .workload_selectors
            .iter()
            .map(ToString::to_string)
            .collect();
        info.hint = identity.hint;
        info.x509_ttl_seconds = seconds(identity.x509_ttl);
        info.jwt_ttl_seconds = seconds(identity.jwt_ttl);
        info.registered_by = identity.source.to_string();
        info.federates_with = identity
            .federates_with
            .iter()
            .map(ToString::to_string)
            .collect();
    }
    wire::PodInfo {
        namespace: pod.namespace,
        name: pod.name,
        uid: pod.uid,
        service_account: pod.service_account,
        labels: pod.labels.into_iter().collect(),
        container_ids: pod.container_ids,
        container_names: pod.container_names.into_iter().collect(),
        ..info
    }
}

/// What a node stream waits on: any of them changing may change the view.
struct Changes {
    pods: Option<watch::Receiver<u64>>,
    registrations: watch::Receiver<RegistrationSnapshot>,
    entries: watch::Receiver<std::sync::Arc<[StaticEntry]>>,
}

impl Changes {
    /// The next change; `None` once a source is gone (the server is stopping).
    async fn changed(&mut self) -> Option<()> {
        let pods = async {
            match &mut self.pods {
                Some(rx) => rx.changed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = pods => r.ok(),
            r = self.registrations.changed() => r.ok(),
            r = self.entries.changed() => r.ok(),
        }
    }
}

impl NodeFeed {
    /// The current view of `agent`'s node.
    pub fn view(&self, agent: &AgentIdentity) -> wire::WatchNodeResponse {
        let registrations = self.registrations.current();
        let entries = self
            .entries
            .current()
            .iter()
            .filter(|e| e.assigned_to(&agent.node))
            .map(entry_to_wire)
            .collect();
        let pods = self
            .pods
            .as_ref()
            .map(|index| index.on_node(&agent.node))
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.active)
            .map(|p| pod_to_wire(p, &registrations))
            .collect();
        wire::WatchNodeResponse {
            node_name: agent.node.clone(),
            entries,
            pods,
        }
    }

    /// The view once the registrations are listed, then again after every change that
    /// alters it.
    pub fn stream(&self, agent: AgentIdentity) -> NodeStream {
        let mut changes = Changes {
            pods: self.pods.as_ref().map(PodIndex::subscribe),
            registrations: self.registrations.subscribe(),
            entries: self.entries.subscribe(),
        };
        let feed = self.clone();
        let first = async move {
            changes.registrations.wait_for(|s| s.synced).await.ok()?;
            let view = feed.view(&agent);
            Some((view, (feed, agent, changes)))
        };
        let stream = futures::stream::once(first)
            .filter_map(std::future::ready)
            .flat_map(|(first, (feed, agent, changes))| {
                let state = (feed, agent, changes, first.clone());
                let rest = futures::stream::unfold(
                    state,
                    |(feed, agent, mut changes, mut last)| async move {
                        loop {
                            changes.changed().await?;
                            let view = feed.view(&agent);
                            if view != last {
                                last = view.clone();
                                return Some((Ok(view), (feed, agent, changes, last)));
                            }
                        }
                    },
                );
                futures::stream::once(async move { Ok(first) }).chain(rest)
            });
        Box::pin(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entries::EntryConfig;
    use crate::k8s::pods::test_pod;
    use crate::registry_view::{test_config, test_snapshot};
    use lanyard_registration::{LanyardIdentity, LanyardIdentitySpec};
    use lanyard_svid::TrustDomain;
    use lanyard_svid::reserved::NodeAttestation;
    use std::time::Duration;

    const DEADLINE: Duration = Duration::from_secs(5);

    fn entry(id: &str, dns: Option<Vec<String>>) -> StaticEntry {
        federated_entry(id, dns, None)
    }

    fn federated_entry(
        id: &str,
        dns: Option<Vec<String>>,
        federates_with: Option<Vec<String>>,
    ) -> StaticEntry {
        EntryConfig {
            spiffe_id: id.into(),
            selectors: vec!["k8s:ns:db".into()],
            nodes: Some(vec!["node-1".into()]),
            x509_ttl: None,
            jwt_ttl: None,
            dns_names: dns,
            federates_with,
        }
        .validate(&TrustDomain::new("example.org").unwrap())
        .unwrap()
    }

    fn agent(node: &str) -> AgentIdentity {
        AgentIdentity {
            method: NodeAttestation::K8sPsat,
            node: node.into(),
        }
    }

    fn feed(pods: &PodIndex, entries: &EntryStore) -> NodeFeed {
        NodeFeed {
            entries: entries.clone(),
            pods: Some(pods.clone()),
            registrations: Registrations::fixed(test_config(Some(
                crate::config::DEFAULT_POD_ID_TEMPLATE,
            ))),
        }
    }

    async fn next(stream: &mut NodeStream) -> wire::WatchNodeResponse {
        tokio::time::timeout(DEADLINE, stream.next())
            .await
            .expect("a view within the deadline")
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn view_follows_pod_changes_for_its_node_only() {
        let entries = EntryStore::new(vec![entry("spiffe://example.org/db", None)]);
        let pods = PodIndex::new();
        pods.replace_all(vec![test_pod("default", "web", "u1", "web", "node-1")]);
        let feed = feed(&pods, &entries);
        let mut stream = feed.stream(agent("node-1"));
        let first = next(&mut stream).await;
        assert_eq!(first.entries.len(), 1);
        assert_eq!(first.pods.len(), 1);
        assert_eq!(
            first.pods[0].spiffe_id,
            "spiffe://example.org/ns/default/sa/web"
        );
        assert_eq!(first.pods[0].registered_by, "default-template");
        // A pod on another node changes nothing for this stream; a pod here does.
        pods.apply(test_pod("default", "other", "u2", "web", "node-2"));
        pods.apply(test_pod("default", "web-2", "u3", "web", "node-1"));
        let second = next(&mut stream).await;
        assert_eq!(second.pods.len(), 2);
        assert!(second.pods.iter().all(|p| p.uid != "u2"));
        assert!(
            feed.view(&agent("node-2")).entries.is_empty(),
            "entry not assigned to node-2"
        );
    }

    #[tokio::test]
    async fn view_follows_entries_and_registrations() {
        let entries = EntryStore::new(vec![entry("spiffe://example.org/db", None)]);
        let pods = PodIndex::new();
        let mut web = test_pod("default", "web-1", "u1", "web", "node-1");
        web.labels.insert("app".into(), "web".into());
        web.container_ids = vec!["c1".into()];
        web.container_names = [("c1".to_owned(), "app".to_owned())].into();
        pods.replace_all(vec![web]);
        let registrations = Registrations::unsynced(test_config(None));
        let feed = NodeFeed {
            registrations: registrations.clone(),
            ..feed(&pods, &entries)
        };
        let mut stream = feed.stream(agent("node-1"));
        // Nothing before the registrations are listed.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), stream.next())
                .await
                .is_err()
        );
        let resource = LanyardIdentity::new(
            "web",
            LanyardIdentitySpec {
                spiffe_id_template: "/web/{pod_name}".into(),
                dns_name_templates: vec!["{pod_name}.web".into()],
                workload_selector_templates: vec!["k8s:container-name:app".into()],
                hint: Some("web".into()),
                x509_ttl: Some("10m".into()),
                federates_with: vec!["partner.example".into()],
                ..Default::default()
            },
        );
        registrations.publish(test_snapshot(None, &[resource], &[("default", &[])]));
        let first = next(&mut stream).await;
        let pod = &first.pods[0];
        assert_eq!(pod.spiffe_id, "spiffe://example.org/web/web-1");
        assert_eq!(pod.dns_names, ["web-1.web"]);
        assert_eq!(pod.workload_selectors, ["k8s:container-name:app"]);
        assert_eq!(pod.hint, "web");
        assert_eq!(pod.x509_ttl_seconds, 600);
        assert_eq!(pod.jwt_ttl_seconds, 0);
        assert_eq!(pod.registered_by, "LanyardIdentity/web");
        assert_eq!(pod.federates_with, ["partner.example"]);
        assert_eq!(
            pod.container_names.get("c1").map(String::as_str),
            Some("app")
        );
        // The resource goes and the default is off: the pod is listed without an identity.
        registrations.publish(test_snapshot(None, &[], &[("default", &[])]));
        let second = next(&mut stream).await;
        assert_eq!(second.pods[0].spiffe_id, "");
        assert_eq!(second.pods[0].registered_by, "");
        assert!(second.pods[0].federates_with.is_empty());
        // A reload of the entries is sent too, with the DNS names.
        entries.replace(vec![federated_entry(
            "spiffe://example.org/db",
            Some(vec!["db.example.org".into()]),
            Some(vec!["partner.example".into()]),
        )]);
        let third = next(&mut stream).await;
        assert_eq!(third.entries[0].dns_names, ["db.example.org"]);
        assert_eq!(third.entries[0].federates_with, ["partner.example"]);
        // A publish that changes nothing for this node sends nothing.
        registrations.publish(test_snapshot(None, &[], &[("default", &[])]));
        assert!(
            tokio::time::timeout(Duration::from_millis(50), stream.next())
                .await
                .is_err()
        );
    }
}
