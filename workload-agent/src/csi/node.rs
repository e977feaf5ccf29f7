//! The CSI `Node` service: `NodePublishVolume` gives a pod its own agent socket at the
//! target path, `NodeUnpublishVolume` takes it away; both idempotent. `NodeGetInfo` names the
//! node; no optional capability is offered, and staging, stats and expansion answer
//! `UNIMPLEMENTED`.
//!
//! Publishing volume V at target T for pod P, in this order (so a crash at any point leaves
//! nothing that [`CsiNode::restore`] cannot clean up or resume):
//! 1. the request and T are checked ([`super::request`], [`super::target`]): nothing else on
//!    the node is touched for a refused request;
//! 2. V's record is saved (0600, [`super::state`]);
//! 3. V's directory is created and P's socket in it is handed to the agent's socket server
//!    ([`PodSockets`]), which binds it while it serves;
//! 4. T is created and V's directory bind-mounted on it, read-only.
//!
//! A second publish of V at T for P finds each step done and changes nothing; V at another
//! target, or another volume at T, is `ALREADY_EXISTS`. Unpublishing V at T undoes the steps
//! in reverse: unmount, remove T, stop P's socket and remove V's directory, forget V. An absent
//! T is success.
//!
//! Requests are served one at a time (the kubelet sends a few per pod start and stop).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lanyard_proto::csi::v1 as csi;
use tokio::sync::Mutex;
use tonic::{Request, Response, Status};

use super::CsiMetrics;
use super::mount::{self, MountError};
use super::request::{PublishRequest, Refusal, check_volume_id};
use super::state::{Record, RecordPod, StateDir, StateError};
use super::target::{self, Resolved, Target};
use crate::socket::{PodSockets, SocketError};

/// Why a request that passed its checks failed on the node (`INTERNAL`), or why the plugin
/// could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    State(#[from] StateError),
    #[error("{0}")]
    Mount(#[from] MountError),
    #[error("pod socket: {0}")]
    Socket(#[from] SocketError),
    #[error(
        "removing {path}: {error} (is something else mounted there, or did the pod write to it?)"
    )]
    RemoveTarget {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("the kubelet's pods directory {path} (--csi-pods-dir): {error}")]
    PodsDir {
        path: PathBuf,
        error: std::io::Error,
    },
}

impl NodeError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::State(_) => "state_error",
            Self::Mount(_) => "mount_error",
            Self::Socket(_) => "socket_error",
            Self::RemoveTarget { .. } => "target_busy",
            Self::PodsDir { .. } => "pods_dir_error",
        }
    }
}

/// What a publish or unpublish did; `Display` is the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The volume is now published (or unpublished).
    Done,
    /// It already was; nothing changed.
    Unchanged,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Done => "done",
            Self::Unchanged => "unchanged",
        })
    }
}

/// The `Node` service; see the module docs.
pub struct CsiNode {
    node_id: String,
    /// Canonical.
    pods_dir: PathBuf,
    state: StateDir,
    pods: PodSockets,
    metrics: CsiMetrics,
    /// Published volumes by ID; the lock also serialises requests.
    volumes: Mutex<BTreeMap<String, Record>>,
}

impl CsiNode {
    /// The plugin for node `node_id`, publishing under `pods_dir`, its state in `state_dir`;
    /// published volumes' sockets go into `pods`. Restores what an earlier run published:
    /// a volume whose target still has its directory mounted is served again; one whose target
    /// is gone or no longer mounted (the kubelet unpublished it while the agent was down, or
    /// the node rebooted) is forgotten and its directory removed.
    pub fn restore(
        node_id: String,
        pods_dir: &Path,
        state_dir: PathBuf,
        pods: PodSockets,
        metrics: CsiMetrics,
    ) -> Result<Self, NodeError> {
        let pods_dir = std::fs::canonicalize(pods_dir).map_err(|error| NodeError::PodsDir {
            path: pods_dir.to_owned(),
            error,
        })?;
        let state = StateDir::open(state_dir)?;
        let mut volumes = BTreeMap::new();
        for record in state.load()? {
            let pod = record.pod.socket_pod();
            let mounted = mount::is_mounted(&state.volume_dir(&record.volume_id), &record.target);
            match pod {
                Some(pod) if mounted => {
                    tracing::info!(volume_id = %record.volume_id, pod = %pod, "CSI volume published before the restart; serving its pod socket again");
                    pods.insert(state.socket(&record.volume_id), pod)?;
                    volumes.insert(record.volume_id.clone(), record);
                }
                _ => {
                    tracing::info!(volume_id = %record.volume_id, target = %record.target.display(), "CSI volume no longer mounted at its target (unpublished while the agent was down?); forgetting it");
                    state.remove_volume_dir(&record.volume_id)?;
                    state.forget(&record.volume_id)?;
                    metrics.stale_dropped.inc();
                }
            }
        }
        let orphans = state.remove_orphans()?;
        if orphans > 0 {
            tracing::info!(orphans, "removed CSI volume directories that had no record");
        }
        metrics.published.set(volumes.len() as i64);
        Ok(Self {
            node_id,
            pods_dir,
            state,
            pods,
            metrics,
            volumes: Mutex::new(volumes),
        })
    }

    /// The published volumes' IDs and targets.
    pub async fn published(&self) -> Vec<(String, PathBuf)> {
        self.volumes
            .lock()
            .await
            .values()
            .map(|r| (r.volume_id.clone(), r.target.clone()))
            .collect()
    }

    /// `NodePublishVolume`; see the module docs.
    pub async fn publish(
        &self,
        request: &csi::NodePublishVolumeRequest,
    ) -> Result<Outcome, PublishError> {
        let checked = PublishRequest::check(request)?;
        let target = target::for_publish(&self.pods_dir, &checked.target_path, checked.pod.uid())?;
        let mut volumes = self.volumes.lock().await;
        let record = Record {
            volume_id: checked.volume_id.clone(),
            target: target.path.clone(),
            pod: RecordPod::from(&checked.pod),
        };
        let known = match volumes.get(&record.volume_id) {
            Some(existing) if *existing == record => true,
            Some(existing) => {
                return Err(Refusal::AlreadyPublished {
                    what: format!(
                        "volume {} is already published at {} for pod {}",
                        existing.volume_id,
                        existing.target.display(),
                        existing.pod.uid
                    ),
                }
                .into());
            }
            None => false,
        };
        if let Some(other) = volumes
            .values()
            .find(|r| r.target == record.target && r.volume_id != record.volume_id)
        {
            return Err(Refusal::AlreadyPublished {
                what: format!(
                    "{} already has volume {} published",
                    other.target.display(),
                    other.volume_id
                ),
            }
            .into());
        }
        let done = self.publish_steps(&record, &checked, &target, known);
        match done {
            Ok(outcome) => {
                volumes.insert(record.volume_id.clone(), record);
                self.metrics.published.set(volumes.len() as i64);
                Ok(outcome)
            }
            Err(e) => {
                if !known {
                    self.roll_back(&record);
                }
                Err(e.into())
            }
        }
    }

    fn publish_steps(
        &self,
        record: &Record,
        checked: &PublishRequest,
        target: &Target,
        known: bool,
    ) -> Result<Outcome, NodeError> {
        let volume_id = &record.volume_id;
        let dir = self.state.volume_dir(volume_id);
        let socket = self.state.socket(volume_id);
        if known && mount::is_mounted(&dir, &target.path) && self.pods.get(&socket).is_some() {
            return Ok(Outcome::Unchanged);
        }
        if !known {
            self.state.save(record)?;
        }
        self.state.create_volume_dir(volume_id)?;
        self.pods.insert(socket, checked.pod.clone())?;
        if !mount::is_mounted(&dir, &target.path) {
            mount::create_dir(&target.path)?;
            mount::bind_read_only(&dir, &target.path)?;
        }
        tracing::info!(volume_id = %volume_id, pod = %checked.pod, target = %target.path.display(), "CSI volume published");
        Ok(Outcome::Done)
    }

    /// Undoes a new publish that failed part-way (best effort; logged).
    fn roll_back(&self, record: &Record) {
        let volume_id = &record.volume_id;
        if mount::is_mounted(&self.state.volume_dir(volume_id), &record.target) {
            let _ = mount::unmount(&record.target);
        }
        let _ = std::fs::remove_dir(&record.target);
        self.pods.remove(&self.state.socket(volume_id));
        if let Err(e) = self
            .state
            .remove_volume_dir(volume_id)
            .and_then(|()| self.state.forget(volume_id))
        {
            tracing::warn!(volume_id = %volume_id, error = %e, "could not roll back a failed CSI publish");
        }
    }

    /// `NodeUnpublishVolume`; see the module docs.
    pub async fn unpublish(
        &self,
        request: &csi::NodeUnpublishVolumeRequest,
    ) -> Result<Outcome, PublishError> {
        let volume_id = check_volume_id(&request.volume_id)?;
        let target = match target::resolve(&self.pods_dir, &request.target_path)? {
            Resolved::Inside(target) => Some(target),
            Resolved::ParentMissing => None,
        };
        let mut volumes = self.volumes.lock().await;
        let dir = self.state.volume_dir(&volume_id);
        let mut outcome = Outcome::Unchanged;
        if let Some(target) = target.as_ref().filter(|t| t.exists) {
            while mount::is_mounted(&dir, &target.path) {
                mount::unmount(&target.path).map_err(NodeError::from)?;
                outcome = Outcome::Done;
            }
            match std::fs::remove_dir(&target.path) {
                Ok(()) => outcome = Outcome::Done,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    return Err(NodeError::RemoveTarget {
                        path: target.path.clone(),
                        error,
                    }
                    .into());
                }
            }
        }
        // The volume itself goes only when this was its target (a request naming another
        // target leaves the volume where it is published).
        let ours = match volumes.get(&volume_id) {
            Some(record) => target.as_ref().map(|t| &t.path) == Some(&record.target),
            None => true,
        };
        if ours {
            if self.pods.remove(&self.state.socket(&volume_id)) {
                outcome = Outcome::Done;
            }
            self.state
                .remove_volume_dir(&volume_id)
                .map_err(NodeError::from)?;
            self.state.forget(&volume_id).map_err(NodeError::from)?;
            if volumes.remove(&volume_id).is_some() {
                outcome = Outcome::Done;
                tracing::info!(volume_id = %volume_id, "CSI volume unpublished");
            }
            self.metrics.published.set(volumes.len() as i64);
        }
        Ok(outcome)
    }
}

/// Why a publish or unpublish failed: refused (nothing touched), or failed on the node.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{0}")]
    Refused(#[from] Refusal),
    #[error("{0}")]
    Node(#[from] NodeError),
}

impl From<target::TargetRefusal> for PublishError {
    fn from(refusal: target::TargetRefusal) -> Self {
        Self::Refused(Refusal::Target(refusal))
    }
}

impl PublishError {
    /// The metric label.
    pub fn label(&self) -> String {
        match self {
            Self::Refused(r) => r.to_string(),
            Self::Node(e) => e.label().to_owned(),
        }
    }

    pub fn to_status(&self) -> Status {
        match self {
            Self::Refused(r) => r.to_status(),
            Self::Node(e) => Status::internal(e.to_string()),
        }
    }
}

/// The gRPC face of [`CsiNode`].
pub struct NodeService(pub Arc<CsiNode>);

impl NodeService {
    fn record<T>(
        &self,
        method: &'static str,
        result: Result<Outcome, PublishError>,
        response: T,
    ) -> Result<Response<T>, Status> {
        let label = match &result {
            Ok(outcome) => outcome.to_string(),
            Err(e) => e.label(),
        };
        self.0.metrics.request(method, &label);
        match result {
            Ok(_) => Ok(Response::new(response)),
            Err(e) => {
                tracing::warn!(method, reason = %label, "{}", e.to_status().message());
                Err(e.to_status())
            }
        }
    }
}

fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!(
        "csi.lanyard.dev does not implement {what} (it offers no optional node capability)"
    ))
}

#[tonic::async_trait]
impl csi::node_server::Node for NodeService {
    async fn node_stage_volume(
        &self,
        _request: Request<csi::NodeStageVolumeRequest>,
    ) -> Result<Response<csi::NodeStageVolumeResponse>, Status> {
        Err(unimplemented("NodeStageVolume"))
    }

    async fn node_unstage_volume(
        &self,
        _request: Request<csi::NodeUnstageVolumeRequest>,
    ) -> Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        Err(unimplemented("NodeUnstageVolume"))
    }

    async fn node_publish_volume(
        &self,
        request: Request<csi::NodePublishVolumeRequest>,
    ) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        let result = self.0.publish(request.get_ref()).await;
        self.record(
            "NodePublishVolume",
            result,
            csi::NodePublishVolumeResponse {},
        )
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        let result = self.0.unpublish(request.get_ref()).await;
        self.record(
            "NodeUnpublishVolume",
            result,
            csi::NodeUnpublishVolumeResponse {},
        )
    }

    async fn node_get_volume_stats(
        &self,
        _request: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        Err(unimplemented("NodeGetVolumeStats"))
    }

    async fn node_expand_volume(
        &self,
        _request: Request<csi::NodeExpandVolumeRequest>,
    ) -> Result<Response<csi::NodeExpandVolumeResponse>, Status> {
        Err(unimplemented("NodeExpandVolume"))
    }

    async fn node_get_capabilities(
        &self,
        _request: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(csi::NodeGetCapabilitiesResponse {
            capabilities: Vec::new(),
        }))
    }

    async fn node_get_info(
        &self,
        _request: Request<csi::NodeGetInfoRequest>,
    ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        Ok(Response::new(csi::NodeGetInfoResponse {
            node_id: self.0.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csi::request::tests::{POD, kubelet_request};

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    struct Node {
        _dir: tempfile::TempDir,
        base: PathBuf,
        pods: PodSockets,
        node: CsiNode,
    }

    impl Node {
        fn start() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let base = std::fs::canonicalize(dir.path()).unwrap();
            std::fs::create_dir_all(base.join("pods").join(POD).join("volumes/csi/s")).unwrap();
            let pods = PodSockets::new();
            let node = Self::restore_at(&base, &pods);
            Self {
                _dir: dir,
                base,
                pods,
                node,
            }
        }

        fn restore_at(base: &Path, pods: &PodSockets) -> CsiNode {
            CsiNode::restore(
                "node-1".into(),
                &base.join("pods"),
                base.join("agent/csi"),
                pods.clone(),
                CsiMetrics::default(),
            )
            .unwrap()
        }

        fn target(&self) -> PathBuf {
            self.base.join("pods").join(POD).join("volumes/csi/s/mount")
        }

        fn request(&self, volume_id: &str) -> csi::NodePublishVolumeRequest {
            kubelet_request(volume_id, self.target().to_str().unwrap())
        }

        fn unpublish_request(&self, volume_id: &str) -> csi::NodeUnpublishVolumeRequest {
            csi::NodeUnpublishVolumeRequest {
                volume_id: volume_id.into(),
                target_path: self.target().to_str().unwrap().into(),
            }
        }
    }

    impl Drop for Node {
        fn drop(&mut self) {
            let _ = mount::unmount(&self.target());
        }
    }

    #[tokio::test]
    async fn publish_twice_then_unpublish_twice() {
        if !is_root() {
            eprintln!("skipping: bind mounts need root");
            return;
        }
        let n = Node::start();
        assert_eq!(
            n.node.publish(&n.request("csi-1")).await.unwrap(),
            Outcome::Done
        );
        let dir = n.node.state.volume_dir("csi-1");
        assert!(mount::is_mounted(&dir, &n.target()));
        let socket = n.node.state.socket("csi-1");
        assert_eq!(n.pods.get(&socket).unwrap().uid(), POD);
        assert_eq!(n.node.metrics.published.get(), 1);

        assert_eq!(
            n.node.publish(&n.request("csi-1")).await.unwrap(),
            Outcome::Unchanged
        );
        // Another volume at the same target, or the same volume elsewhere: ALREADY_EXISTS.
        let err = n.node.publish(&n.request("csi-2")).await.unwrap_err();
        assert_eq!(err.to_status().code(), tonic::Code::AlreadyExists);
        let elsewhere = n.target().with_file_name("other");
        let err = n
            .node
            .publish(&kubelet_request("csi-1", elsewhere.to_str().unwrap()))
            .await
            .unwrap_err();
        assert_eq!(err.to_status().code(), tonic::Code::AlreadyExists);
        assert!(!elsewhere.exists(), "a refused publish touches nothing");

        let un = n.unpublish_request("csi-1");
        assert_eq!(n.node.unpublish(&un).await.unwrap(), Outcome::Done);
        assert!(!n.target().exists());
        assert!(!dir.exists());
        assert!(n.pods.get(&socket).is_none());
        assert!(n.node.published().await.is_empty());
        assert_eq!(n.node.unpublish(&un).await.unwrap(), Outcome::Unchanged);
        assert_eq!(n.node.metrics.published.get(), 0);
    }

    #[tokio::test]
    async fn a_restart_serves_mounted_volumes_again_and_forgets_unmounted_ones() {
        if !is_root() {
            eprintln!("skipping: bind mounts need root");
            return;
        }
        let n = Node::start();
        n.node.publish(&n.request("csi-1")).await.unwrap();

        // Restarted: the volume is still mounted, so its pod socket is wanted again.
        let pods = PodSockets::new();
        let again = Node::restore_at(&n.base, &pods);
        assert_eq!(again.published().await, [("csi-1".to_owned(), n.target())]);
        assert_eq!(pods.get(&again.state.socket("csi-1")).unwrap().uid(), POD);

        // Unmounted while the agent was down: forgotten at the next start.
        mount::unmount(&n.target()).unwrap();
        let pods = PodSockets::new();
        let after = Node::restore_at(&n.base, &pods);
        assert!(after.published().await.is_empty());
        assert_eq!(pods.counts(), (0, 0));
        assert!(!after.state.volume_dir("csi-1").exists());
        assert_eq!(after.metrics.stale_dropped.get(), 1);
        // The kubelet publishing it again works as a first publish.
        assert_eq!(
            after.publish(&n.request("csi-1")).await.unwrap(),
            Outcome::Done
        );
    }

    #[tokio::test]
    async fn node_info_names_the_node_and_offers_no_capability() {
        use csi::node_server::Node as _;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("pods")).unwrap();
        let node = CsiNode::restore(
            "node-7".into(),
            &dir.path().join("pods"),
            dir.path().join("csi"),
            PodSockets::new(),
            CsiMetrics::default(),
        )
        .unwrap();
        let service = NodeService(Arc::new(node));
        let info = service
            .node_get_info(Request::new(csi::NodeGetInfoRequest {}))
            .await
            .unwrap();
        assert_eq!(info.get_ref().node_id, "node-7");
        let caps = service
            .node_get_capabilities(Request::new(csi::NodeGetCapabilitiesRequest {}))
            .await
            .unwrap();
        assert!(caps.get_ref().capabilities.is_empty());
        let stage = service
            .node_stage_volume(Request::new(Default::default()))
            .await
            .unwrap_err();
        assert_eq!(stage.code(), tonic::Code::Unimplemented);
    }
}
