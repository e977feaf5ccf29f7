//! The CSI node plugin `csi.lanyard.dev` (CSI spec v1, `lanyard_proto::csi::v1`), served by
//! the agent on its own Unix socket (`--csi-socket`) for the kubelet, through the standard
//! node-driver-registrar.
//!
//! An injected pod declares an inline ephemeral volume of this driver; when the kubelet
//! publishes it, the agent gives that pod a socket of its own (a pod socket, see
//! [`crate::socket::pods`]) in a per-volume directory, bind-mounted read-only on the target.
//! Every caller on a pod socket is in that pod by how it got there, so the pod comes from the
//! mount request, not from `/proc` (docs/ARCHITECTURE.md, "The socket in pods: CSI", says why
//! and what it costs).
//!
//! Module map:
//! - [`identity`]: the `Identity` service (name, version, probe).
//! - [`node`]: the `Node` service: publish and unpublish (idempotent), node info; restoring
//!   what an earlier run published.
//! - [`request`]: the checks of a publish request (inline ephemeral, read-only, the pod).
//! - [`target`]: target paths confined to a pod's directory under `--csi-pods-dir`.
//! - [`mount`]: read-only bind mounts through pinned descriptors, and unmounting.
//! - [`state`]: published volumes saved beside the plugin's socket (0600), their
//!   directories.
//! - [`serve()`]: the plugin's socket (0600) and gRPC server.

pub mod identity;
pub mod mount;
pub mod node;
pub mod request;
pub mod state;
pub mod target;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lanyard_proto::csi::v1 as csi;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_stream::wrappers::UnixListenerStream;

pub use node::{CsiNode, NodeError, NodeService};

use crate::socket::bind::RemoveOnDrop;
use crate::socket::{SocketError, bind_mode};

/// The driver's name (the `CSIDriver` object's, and what `GetPluginInfo` answers).
pub const DRIVER_NAME: &str = "csi.lanyard.dev";
/// Where the kubelet keeps pods' directories, and so where targets must be.
pub const DEFAULT_PODS_DIR: &str = "/var/lib/kubelet/pods";
/// The role in the plugin socket's announcement (`listening on unix:PATH (csi)`).
pub const LISTENER_ROLE: &str = "csi";

/// Why the plugin stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum CsiError {
    #[error("CSI socket: {0}")]
    Socket(#[from] SocketError),
    #[error("CSI server: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("CSI plugin: {0}")]
    Node(#[from] NodeError),
}

/// The plugin's metrics (`lanyard_agent_csi_*`). Cloning shares them.
#[derive(Clone, Default)]
pub struct CsiMetrics {
    /// Publish and unpublish calls, by `method` and `result` (`done`, `unchanged`, or the
    /// refusal's label).
    pub requests: Family<Vec<(&'static str, String)>, Counter>,
    /// Volumes published now (pod sockets).
    pub published: Gauge,
    /// Volumes found unpublished at start (no longer mounted at their target) and forgotten.
    pub stale_dropped: Counter,
}

impl CsiMetrics {
    /// Creates the metrics and registers them under `lanyard_agent_csi_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let sub = registry.sub_registry_with_prefix("lanyard_agent_csi");
        sub.register(
            "requests",
            "CSI NodePublishVolume and NodeUnpublishVolume calls, by method and result",
            m.requests.clone(),
        );
        sub.register(
            "published_volumes",
            "CSI volumes published (pod sockets)",
            m.published.clone(),
        );
        sub.register(
            "stale_volumes_dropped",
            "CSI volumes found no longer mounted at start and forgotten",
            m.stale_dropped.clone(),
        );
        m
    }

    fn request(&self, method: &'static str, result: &str) {
        self.requests
            .get_or_create(&vec![
                ("method", method.to_owned()),
                ("result", result.to_owned()),
            ])
            .inc();
    }
}

/// What the plugin needs (from `--csi-socket`, `--csi-pods-dir` and `--node-name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsiConfig {
    /// The plugin's socket, e.g. `/var/lib/kubelet/plugins/csi.lanyard.dev/csi.sock`.
    pub socket: PathBuf,
    /// Targets must resolve under it.
    pub pods_dir: PathBuf,
    /// `NodeGetInfo`'s node ID: the node's name.
    pub node_id: String,
    /// Published volumes' records and directories ([`state_dir_of`] the socket).
    pub state_dir: PathBuf,
}

/// Where the plugin keeps what it published: `volumes/` beside its socket. In a cluster that
/// is `/var/lib/kubelet/plugins/csi.lanyard.dev/volumes`, on the node's disk (the registrar
/// needs the socket there, so every deployment has it on the host): it outlives the agent's
/// container and pod, as published volumes do, unlike the agent's data dir (an emptyDir).
pub fn state_dir_of(socket: &Path) -> Option<PathBuf> {
    socket
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(|dir| dir.join("volumes"))
}

/// The announcement line for the plugin socket: `listening on unix:<path> (csi)`.
pub fn listener_line(socket: &Path) -> String {
    format!("listening on unix:{} ({LISTENER_ROLE})", socket.display())
}

/// Serves `node` (and the `Identity` service) on the Unix socket `socket` (0600: only the
/// kubelet's user calls it) until `shutdown` resolves; the socket file is removed then.
pub async fn serve(
    socket: &Path,
    node: Arc<CsiNode>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), CsiError> {
    let listener = bind_mode(socket, 0o600)?;
    let _remove = RemoveOnDrop(socket.to_owned());
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", listener_line(socket));
        let _ = out.flush();
    }
    tonic::transport::Server::builder()
        .concurrency_limit_per_connection(16)
        .add_service(csi::identity_server::IdentityServer::new(
            identity::IdentityService,
        ))
        .add_service(csi::node_server::NodeServer::new(NodeService(node)))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}
