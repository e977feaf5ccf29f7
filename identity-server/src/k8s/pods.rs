//! An in-memory index of the cluster's pods, fed by a `kube` watcher, so that every attestation
//! and mint is checked against current pod state without a round trip to the API server.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::sync::watch;

/// What the server needs to know about one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub service_account: String,
    /// Empty until the pod is scheduled.
    pub node_name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Runtime container IDs without their `containerd://`-style prefix.
    pub container_ids: Vec<String>,
    /// Container name by runtime container ID (as in `container_ids`), from the regular and
    /// init containers' statuses: what `k8s:container-name` selectors are checked against.
    pub container_names: BTreeMap<String, String>,
    pub pod_ips: Vec<String>,
    /// False once the pod has finished (Succeeded/Failed) or is being deleted.
    pub active: bool,
    /// The pod shares its node's network namespace: its IPs are the node's, not its own.
    pub host_network: bool,
    /// The `lanyard-proxy` container ([`crate::discovery::PROXY_CONTAINER`]) is running and
    /// ready (see [`proxy_ready`]).
    pub proxy_ready: bool,
}

/// Whether the pod's `lanyard-proxy` container is running and ready, from the pod status:
/// a status of that name (a native sidecar reports under `initContainerStatuses`, a plain
/// container under `containerStatuses`) with `state.running` set and `ready: true`.
/// `started` alone is not enough: the proxy turns ready only once it holds its SVID, and
/// until then it could not terminate mTLS.
pub fn proxy_ready(status: &k8s_openapi::api::core::v1::PodStatus) -> bool {
    status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .filter(|c| c.name == crate::discovery::PROXY_CONTAINER)
        .any(|c| c.ready && c.state.as_ref().is_some_and(|s| s.running.is_some()))
}

impl PodInfo {
    /// Extracts the fields we use; `None` for a pod without the identifying metadata.
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let meta = &pod.metadata;
        let spec = pod.spec.as_ref()?;
        let status = pod.status.as_ref();
        let strip = |id: &str| id.split_once("://").map_or(id, |(_, id)| id).to_owned();
        let container_ids = status
            .into_iter()
            .flat_map(|s| {
                s.container_statuses
                    .iter()
                    .flatten()
                    .chain(s.init_container_statuses.iter().flatten())
                    .chain(s.ephemeral_container_statuses.iter().flatten())
            })
            .filter_map(|c| c.container_id.as_deref())
            .map(strip)
            .collect();
        let container_names = status
            .into_iter()
            .flat_map(|s| {
                s.container_statuses
                    .iter()
                    .flatten()
                    .chain(s.init_container_statuses.iter().flatten())
            })
            .filter_map(|c| Some((strip(c.container_id.as_deref()?), c.name.clone())))
            .collect();
        let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
        Some(Self {
            namespace: meta.namespace.clone()?,
            name: meta.name.clone()?,
            uid: meta.uid.clone()?,
            service_account: spec
                .service_account_name
                .clone()
                .unwrap_or_else(|| "default".to_owned()),
            node_name: spec.node_name.clone().unwrap_or_default(),
            labels: meta.labels.clone().unwrap_or_default(),
            annotations: meta.annotations.clone().unwrap_or_default(),
            container_ids,
            container_names,
            pod_ips: status
                .and_then(|s| s.pod_ips.as_ref())
                .map(|ips| ips.iter().map(|ip| ip.ip.clone()).collect())
                .unwrap_or_default(),
            active: meta.deletion_timestamp.is_none() && !matches!(phase, "Succeeded" | "Failed"),
            host_network: spec.host_network.unwrap_or(false),
            proxy_ready: status.is_some_and(proxy_ready),
        })
    }
}

/// Read access to pod state, so attestation and minting can be tested without a cluster.
pub trait PodLookup: Send + Sync {
    fn by_uid(&self, uid: &str) -> Option<PodInfo>;
    fn by_name(&self, namespace: &str, name: &str) -> Option<PodInfo>;
    fn on_node(&self, node: &str) -> Vec<PodInfo>;
    /// False until the first full listing has arrived: answers before then may be wrong.
    fn is_synced(&self) -> bool;
}

#[derive(Debug, Default)]
struct Index {
    by_uid: HashMap<String, PodInfo>,
    /// node -> uids
    by_node: HashMap<String, BTreeMap<String, ()>>,
    /// (namespace, name) -> uid
    by_name: HashMap<(String, String), String>,
    /// pod IP -> uids (host-network pods excluded: their IPs are their node's)
    by_ip: HashMap<IpAddr, BTreeSet<String>>,
    synced: bool,
}

/// The IPs a pod owns (none for a host-network pod).
fn own_ips(pod: &PodInfo) -> impl Iterator<Item = IpAddr> + '_ {
    pod.pod_ips
        .iter()
        .filter(|_| !pod.host_network)
        .filter_map(|ip| ip.parse().ok())
}

impl Index {
    fn insert(&mut self, pod: PodInfo) {
        self.remove(&pod.uid);
        self.by_node
            .entry(pod.node_name.clone())
            .or_default()
            .insert(pod.uid.clone(), ());
        self.by_name
            .insert((pod.namespace.clone(), pod.name.clone()), pod.uid.clone());
        for ip in own_ips(&pod) {
            self.by_ip.entry(ip).or_default().insert(pod.uid.clone());
        }
        self.by_uid.insert(pod.uid.clone(), pod);
    }

    fn remove(&mut self, uid: &str) {
        if let Some(old) = self.by_uid.remove(uid) {
            if let Some(uids) = self.by_node.get_mut(&old.node_name) {
                uids.remove(uid);
                if uids.is_empty() {
                    self.by_node.remove(&old.node_name);
                }
            }
            for ip in own_ips(&old) {
                if let Some(uids) = self.by_ip.get_mut(&ip) {
                    uids.remove(uid);
                    if uids.is_empty() {
                        self.by_ip.remove(&ip);
                    }
                }
            }
            let key = (old.namespace, old.name);
            if self.by_name.get(&key).is_some_and(|u| u == uid) {
                self.by_name.remove(&key);
            }
        }
    }
}

/// The pod index. Cheap to clone; every clone sees the same state.
#[derive(Clone)]
pub struct PodIndex {
    index: Arc<RwLock<Index>>,
    /// Bumped on every change, so `WatchNode` streams know to recompute.
    changes: watch::Sender<u64>,
}

impl Default for PodIndex {
    fn default() -> Self {
        Self {
            index: Arc::default(),
            changes: watch::channel(0).0,
        }
    }
}

impl PodIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// A receiver that changes whenever any pod does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// Inserts or replaces a pod (tests and the watcher).
    pub fn apply(&self, pod: PodInfo) {
        self.index.write().expect("pod index").insert(pod);
        self.changed();
    }

    pub fn delete(&self, uid: &str) {
        self.index.write().expect("pod index").remove(uid);
        self.changed();
    }

    /// Replaces the whole index after a full listing.
    pub fn replace_all(&self, pods: Vec<PodInfo>) {
        let mut fresh = Index::default();
        for pod in pods {
            fresh.insert(pod);
        }
        fresh.synced = true;
        *self.index.write().expect("pod index") = fresh;
        self.changed();
    }

    /// Keeps the index in step with the cluster until the task is dropped. The watcher
    /// re-lists after errors (with backoff), and a re-list replaces the index atomically, so
    /// no stale pod survives a missed delete.
    pub fn spawn_watcher(&self, client: Client) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let api: Api<Pod> = Api::all(client);
            let mut stream =
                std::pin::pin!(watcher::watcher(api, watcher::Config::default()).default_backoff());
            let mut buffer = Vec::new();
            loop {
                match stream.try_next().await {
                    Ok(Some(Event::Init)) => buffer.clear(),
                    Ok(Some(Event::InitApply(pod))) => buffer.extend(PodInfo::from_pod(&pod)),
                    Ok(Some(Event::InitDone)) => this.replace_all(std::mem::take(&mut buffer)),
                    Ok(Some(Event::Apply(pod))) => {
                        if let Some(info) = PodInfo::from_pod(&pod) {
                            this.apply(info);
                        }
                    }
                    Ok(Some(Event::Delete(pod))) => {
                        if let Some(uid) = pod.metadata.uid.as_deref() {
                            this.delete(uid);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => tracing::warn!(error = %e, "pod watch failed; retrying"),
                }
            }
        })
    }
}

impl PodIndex {
    /// The pods that have `ip` as one of their own pod IPs (several while an IP is reused).
    pub fn by_ip(&self, ip: &IpAddr) -> Vec<PodInfo> {
        let index = self.index.read().expect("pod index");
        index
            .by_ip
            .get(ip)
            .into_iter()
            .flatten()
            .filter_map(|uid| index.by_uid.get(uid).cloned())
            .collect()
    }

    /// Every pod in the index (the status writer counts them all).
    pub fn all(&self) -> Vec<PodInfo> {
        let index = self.index.read().expect("pod index");
        index.by_uid.values().cloned().collect()
    }

    /// Pods in the index.
    pub fn len(&self) -> usize {
        self.index.read().expect("pod index").by_uid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl PodLookup for PodIndex {
    fn by_uid(&self, uid: &str) -> Option<PodInfo> {
        self.index
            .read()
            .expect("pod index")
            .by_uid
            .get(uid)
            .cloned()
    }

    fn by_name(&self, namespace: &str, name: &str) -> Option<PodInfo> {
        let index = self.index.read().expect("pod index");
        let uid = index
            .by_name
            .get(&(namespace.to_owned(), name.to_owned()))?;
        index.by_uid.get(uid).cloned()
    }

    fn on_node(&self, node: &str) -> Vec<PodInfo> {
        let index = self.index.read().expect("pod index");
        index
            .by_node
            .get(node)
            .into_iter()
            .flat_map(|uids| uids.keys())
            .filter_map(|uid| index.by_uid.get(uid).cloned())
            .collect()
    }

    fn is_synced(&self) -> bool {
        self.index.read().expect("pod index").synced
    }
}

#[cfg(test)]
pub(crate) fn test_pod(ns: &str, name: &str, uid: &str, sa: &str, node: &str) -> PodInfo {
    PodInfo {
        namespace: ns.into(),
        name: name.into(),
        uid: uid.into(),
        service_account: sa.into(),
        node_name: node.into(),
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
        container_ids: vec![],
        container_names: BTreeMap::new(),
        pod_ips: vec![],
        active: true,
        host_network: false,
        proxy_ready: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_follows_moves_and_deletes() {
        let index = PodIndex::new();
        let mut rx = index.subscribe();
        index.apply(test_pod("ns", "a", "u1", "sa", "n1"));
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        assert_eq!(index.on_node("n1").len(), 1);
        // Same UID now on another node (a re-list could show this).
        index.apply(test_pod("ns", "a", "u1", "sa", "n2"));
        assert!(index.on_node("n1").is_empty());
        assert_eq!(index.by_name("ns", "a").unwrap().node_name, "n2");
        index.delete("u1");
        assert!(index.by_uid("u1").is_none());
        assert!(index.by_name("ns", "a").is_none());
        assert!(rx.has_changed().unwrap());
    }

    #[test]
    fn replace_all_marks_synced_and_drops_stale() {
        let index = PodIndex::new();
        index.apply(test_pod("ns", "old", "u0", "sa", "n1"));
        assert!(!index.is_synced());
        index.replace_all(vec![test_pod("ns", "new", "u1", "sa", "n1")]);
        assert!(index.is_synced());
        assert!(index.by_uid("u0").is_none());
        assert_eq!(index.on_node("n1").len(), 1);
    }

    #[test]
    fn proxy_ready_needs_the_proxy_running_and_ready() {
        let status = |name: &str, ready: bool, running: bool, init: bool| -> PodInfo {
            let state = if running {
                serde_json::json!({"running": {}})
            } else {
                serde_json::json!({"waiting": {"reason": "ContainerCreating"}})
            };
            let c = serde_json::json!([{
                "name": name, "image": "i", "imageID": "", "ready": ready,
                "restartCount": 0, "state": state, "started": running
            }]);
            let key = if init {
                "initContainerStatuses"
            } else {
                "containerStatuses"
            };
            let pod: Pod = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p", "namespace": "default", "uid": "u"},
                "spec": {"containers": [], "hostNetwork": !init},
                "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.1"}], key: c}
            }))
            .unwrap();
            PodInfo::from_pod(&pod).unwrap()
        };
        assert!(status("lanyard-proxy", true, true, true).proxy_ready);
        assert!(status("lanyard-proxy", true, true, false).proxy_ready);
        assert!(!status("lanyard-proxy", false, true, true).proxy_ready);
        assert!(!status("lanyard-proxy", true, false, true).proxy_ready);
        assert!(!status("other", true, true, true).proxy_ready);
        assert!(status("x", true, true, false).host_network);
    }

    #[test]
    fn by_ip_follows_changes_and_skips_host_network() {
        let index = PodIndex::new();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let mut a = test_pod("ns", "a", "u1", "sa", "n1");
        a.pod_ips = vec!["10.0.0.1".into()];
        index.apply(a.clone());
        assert_eq!(index.by_ip(&ip).len(), 1);
        a.pod_ips = vec!["10.0.0.2".into()];
        index.apply(a.clone());
        assert!(index.by_ip(&ip).is_empty());
        let mut h = test_pod("ns", "h", "u2", "sa", "n1");
        h.pod_ips = vec!["10.0.0.1".into()];
        h.host_network = true;
        index.apply(h);
        assert!(index.by_ip(&ip).is_empty());
        index.delete("u1");
        assert!(index.by_ip(&"10.0.0.2".parse().unwrap()).is_empty());
    }

    #[test]
    fn from_pod_strips_runtime_prefix_and_tracks_phase() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "default", "uid": "u-1", "labels": {"app": "web"}},
            "spec": {"nodeName": "node-1", "serviceAccountName": "web", "containers": []},
            "status": {"phase": "Succeeded", "containerStatuses": [{
                "name": "c", "image": "i", "imageID": "", "ready": true, "restartCount": 0,
                "containerID": "containerd://abc123"
            }], "initContainerStatuses": [{
                "name": "proxy", "image": "i", "imageID": "", "ready": true, "restartCount": 0,
                "containerID": "cri-o://def456"
            }, {
                "name": "not-started", "image": "i", "imageID": "", "ready": false,
                "restartCount": 0
            }]}
        }))
        .unwrap();
        let info = PodInfo::from_pod(&pod).unwrap();
        assert_eq!(info.container_ids, ["abc123", "def456"]);
        assert_eq!(
            info.container_names,
            BTreeMap::from([
                ("abc123".to_owned(), "c".to_owned()),
                ("def456".to_owned(), "proxy".to_owned())
            ])
        );
        assert_eq!(info.service_account, "web");
        assert!(!info.active);
    }
}
