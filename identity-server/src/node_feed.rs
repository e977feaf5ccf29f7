//! `WatchNode`: what one node's agent may serve (its static entries, and the pods on its node
//! with their metadata), recomputed whenever a pod changes and sent only when that node's view
//! actually changed. Agents thus need no Kubernetes API access of their own.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use lanyard_proto::identity::v1 as wire;
use lanyard_svid::TrustDomain;
use lanyard_svid::reserved::AgentIdentity;
use tonic::Status;

use crate::entries::StaticEntry;
use crate::k8s::pods::{PodIndex, PodLookup};
use crate::pod_id;

/// Everything needed to compute any node's view. Cheap to clone.
#[derive(Clone)]
pub struct NodeFeed {
    pub trust_domain: TrustDomain,
    pub pod_id_template: Arc<str>,
    pub entries: Arc<[StaticEntry]>,
    /// `None` in data-dir mode.
    pub pods: Option<PodIndex>,
}

pub type NodeStream = Pin<Box<dyn Stream<Item = Result<wire::WatchNodeResponse, Status>> + Send>>;

impl NodeFeed {
    /// The current view of `agent`'s node.
    pub fn view(&self, agent: &AgentIdentity) -> wire::WatchNodeResponse {
        let entries = self
            .entries
            .iter()
            .filter(|e| e.assigned_to(&agent.node))
            .map(|e| wire::StaticEntry {
                spiffe_id: e.spiffe_id.to_string(),
                selectors: e.selectors.iter().map(ToString::to_string).collect(),
                x509_ttl_seconds: e.x509_ttl.map_or(0, |d| d.as_secs() as i64),
                jwt_ttl_seconds: e.jwt_ttl.map_or(0, |d| d.as_secs() as i64),
                ..Default::default()
            })
            .collect();
        let pods = self
            .pods
            .as_ref()
            .map(|index| index.on_node(&agent.node))
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.active)
            .map(|p| {
                // A pod the template cannot name gets no ID; the agent then serves it nothing.
                let spiffe_id = pod_id::expand(
                    &self.pod_id_template,
                    &self.trust_domain,
                    &p.namespace,
                    &p.service_account,
                    &p.name,
                )
                .map(|id| id.to_string())
                .unwrap_or_default();
                wire::PodInfo {
                    namespace: p.namespace,
                    name: p.name,
                    uid: p.uid,
                    service_account: p.service_account,
                    labels: p.labels.into_iter().collect(),
                    container_ids: p.container_ids,
                    spiffe_id,
                    ..Default::default()
                }
            })
            .collect();
        wire::WatchNodeResponse {
            node_name: agent.node.clone(),
            entries,
            pods,
        }
    }

    /// The view now, then again after every pod change that alters it.
    pub fn stream(&self, agent: AgentIdentity) -> NodeStream {
        let changes = match &self.pods {
            Some(pods) => pods.subscribe(),
            // No pods in data-dir mode: the view never changes; keep the sender alive forever
            // so the stream stays open (it ends when the client goes away).
            None => {
                let (tx, rx) = tokio::sync::watch::channel(0);
                std::mem::forget(tx);
                rx
            }
        };
        let first = self.view(&agent);
        let state = (self.clone(), agent, changes, first.clone());
        let rest =
            futures::stream::unfold(state, |(feed, agent, mut changes, mut last)| async move {
                loop {
                    changes.changed().await.ok()?;
                    let view = feed.view(&agent);
                    if view != last {
                        last = view.clone();
                        return Some((Ok(view), (feed, agent, changes, last)));
                    }
                }
            });
        Box::pin(futures::stream::once(async move { Ok(first) }).chain(rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entries::EntryConfig;
    use crate::k8s::pods::test_pod;
    use lanyard_svid::reserved::NodeAttestation;

    #[tokio::test]
    async fn view_follows_pod_changes_for_its_node_only() {
        let td = TrustDomain::new("example.org").unwrap();
        let entry = EntryConfig {
            spiffe_id: "spiffe://example.org/db".into(),
            selectors: vec!["k8s:ns:db".into()],
            nodes: Some(vec!["node-1".into()]),
            x509_ttl: None,
            jwt_ttl: None,
            dns_names: None,
        }
        .validate(&td)
        .unwrap();
        let pods = PodIndex::new();
        pods.replace_all(vec![test_pod("default", "web", "u1", "web", "node-1")]);
        let feed = NodeFeed {
            trust_domain: td,
            pod_id_template: "/ns/{namespace}/sa/{service_account}".into(),
            entries: vec![entry].into(),
            pods: Some(pods.clone()),
        };
        let agent = AgentIdentity {
            method: NodeAttestation::K8sPsat,
            node: "node-1".into(),
        };
        let mut stream = feed.stream(agent);
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first.entries.len(), 1);
        assert_eq!(first.pods.len(), 1);
        assert_eq!(
            first.pods[0].spiffe_id,
            "spiffe://example.org/ns/default/sa/web"
        );
        // A pod on another node changes nothing for this stream; a pod here does.
        pods.apply(test_pod("default", "other", "u2", "web", "node-2"));
        pods.apply(test_pod("default", "web-2", "u3", "web", "node-1"));
        let second = stream.next().await.unwrap().unwrap();
        assert_eq!(second.pods.len(), 2);
        assert!(second.pods.iter().all(|p| p.uid != "u2"));
        let other = AgentIdentity {
            method: NodeAttestation::K8sPsat,
            node: "node-2".into(),
        };
        assert!(
            feed.view(&other).entries.is_empty(),
            "entry not assigned to node-2"
        );
    }
}
