//! [`serve`]: the one way the agent's socket is served, in production and in tests: bind,
//! accept, admit, and the services mounted on it.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;

use super::accept::Acceptor;
use super::admission::{AdmissionLayer, AdmissionPolicy};
use super::bind::{RemoveOnDrop, SocketError, bind};
use super::limits::{ConnectionLimits, server_builder};
use super::pods::{DetachOnDrop, PodSockets};
use crate::attest::WorkloadAttestor;
use crate::discovery::{DiscoveryService, WATCHES_PER_CALLER};
use crate::identities::WorkloadIdentities;
use crate::sds::{SdsLimits, SdsService};
use crate::server_client::discovery_cache::DiscoveryCache;
use crate::workload_api::{self, WorkloadApiMetrics, WorkloadApiService};

/// The role printed in the listener announcement.
pub const LISTENER_ROLE: &str = "workload-api";

/// Why the agent's socket stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("agent socket: {0}")]
    Socket(#[from] SocketError),
    #[error("agent socket server: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("nothing to serve on the agent socket: mount the Workload API, discovery or both")]
    NoServices,
}

/// The announcement line for the socket, worded as `lanyard_telemetry`'s:
/// `listening on unix:<path> (workload-api)`.
pub fn listener_line(socket: &Path) -> String {
    format!("listening on unix:{} ({LISTENER_ROLE})", socket.display())
}

/// What [`serve`] mounts on the socket: the Workload API (with Envoy SDS beside it, over the
/// same identities, as SPIRE's agent serves both on its socket), `lanyard.discovery.v1`, or
/// both; and the pod sockets served beside the node socket, if any.
#[derive(Default)]
pub struct Services {
    workload_api: Option<WorkloadApiMount>,
    /// `None` with a Workload API mounted: SDS with [`SdsLimits::default`].
    sds_limits: Option<SdsLimits>,
    /// SDS left out (see [`Services::without_sds`]).
    no_sds: bool,
    discovery: Option<DiscoveryMount>,
    pod_sockets: Option<PodSockets>,
}

struct WorkloadApiMount {
    identities: Arc<dyn WorkloadIdentities>,
    limits: workload_api::Limits,
    metrics: WorkloadApiMetrics,
}

struct DiscoveryMount {
    cache: Arc<DiscoveryCache>,
    identities: Arc<dyn WorkloadIdentities>,
    watches_per_caller: usize,
}

impl Services {
    pub fn new() -> Self {
        Self::default()
    }

    /// Mounts the SPIFFE Workload API over `identities`, within `limits`.
    pub fn workload_api(
        mut self,
        identities: Arc<dyn WorkloadIdentities>,
        limits: workload_api::Limits,
        metrics: WorkloadApiMetrics,
    ) -> Self {
        self.workload_api = Some(WorkloadApiMount {
            identities,
            limits,
            metrics,
        });
        self
    }

    /// SDS (mounted with the Workload API) within `limits` instead of the defaults.
    pub fn sds_limits(mut self, limits: SdsLimits) -> Self {
        self.sds_limits = Some(limits);
        self
    }

    /// The Workload API without Envoy SDS beside it.
    pub fn without_sds(mut self) -> Self {
        self.no_sds = true;
        self
    }

    /// Mounts `lanyard.discovery.v1.Discovery`, answering from `cache` to callers that hold
    /// an identity in `identities`, with [`WATCHES_PER_CALLER`] open watches per caller.
    pub fn discovery(
        self,
        cache: Arc<DiscoveryCache>,
        identities: Arc<dyn WorkloadIdentities>,
    ) -> Self {
        self.discovery_with_watches(cache, identities, WATCHES_PER_CALLER)
    }

    /// Serves the sockets of `pods` too, each a pod's own (see [`super::pods`]), with the same
    /// services, admission and connection budget as the node socket, while [`serve`] runs.
    pub fn pod_sockets(mut self, pods: PodSockets) -> Self {
        self.pod_sockets = Some(pods);
        self
    }

    /// [`Services::discovery`] with another bound on open watches per caller.
    pub fn discovery_with_watches(
        mut self,
        cache: Arc<DiscoveryCache>,
        identities: Arc<dyn WorkloadIdentities>,
        watches_per_caller: usize,
    ) -> Self {
        self.discovery = Some(DiscoveryMount {
            cache,
            identities,
            watches_per_caller,
        });
        self
    }
}

/// Serves `services` on the Unix socket `socket` until `shutdown` resolves.
///
/// Binds the socket ([`super::bind()`]), prints `listening on unix:<path> (workload-api)` on
/// stdout once it accepts, accepts within `limits` ([`super::accept`]), admits every call
/// ([`super::admission`], attesting callers with `attestor`) and hands it to its service. The
/// pod sockets of [`Services::pod_sockets`] are bound and served alike while it runs. On
/// `shutdown`, open streams end with `Unavailable` (clients reconnect), the server drains,
/// and the socket files are removed.
pub async fn serve(
    socket: &Path,
    attestor: Arc<WorkloadAttestor>,
    limits: ConnectionLimits,
    services: Services,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    if services.workload_api.is_none() && services.discovery.is_none() {
        return Err(ServeError::NoServices);
    }
    let listener = bind(socket)?;
    let _remove = RemoveOnDrop(socket.to_owned());
    let (stop_tx, stopping) = watch::channel(false);
    let mut policies: Vec<Arc<dyn AdmissionPolicy>> = Vec::new();
    // SDS rides with the Workload API: same identities, same socket, same admission (without
    // the `workload.spiffe.io` header, which Envoy does not send).
    let sds = match (&services.workload_api, services.no_sds) {
        (Some(m), false) => {
            let limits = services.sds_limits.unwrap_or_default();
            let service = SdsService::new(m.identities.clone(), limits, stopping.clone());
            policies.push(Arc::new(service.admission_policy()));
            Some(service.into_server())
        }
        _ => None,
    };
    let workload_api = services.workload_api.map(|m| {
        let service = WorkloadApiService::new(m.identities, &m.limits, m.metrics, stopping.clone());
        policies.push(Arc::new(service.admission_policy()));
        service.into_server(&m.limits)
    });
    let discovery = services.discovery.map(|m| {
        let service = DiscoveryService::new(
            m.cache,
            m.identities,
            m.watches_per_caller,
            stopping.clone(),
        );
        policies.push(Arc::new(service.admission_policy()));
        service.into_server()
    });
    let (acceptor, incoming) = Acceptor::new(attestor.clone(), &limits);
    acceptor.spawn(listener, None);
    // Bound before the announcement, so an announced agent serves its pods too; detached
    // (their files removed) when this function returns, however it returns.
    let _pod_sockets = services.pod_sockets.map(|pods| {
        pods.attach(acceptor.clone());
        DetachOnDrop(pods)
    });
    drop(acceptor);
    announce(socket);
    let shutdown = async move {
        shutdown.await;
        // Streams never end on their own; tell them, so the graceful drain can finish.
        let _ = stop_tx.send(true);
    };
    server_builder(&limits)
        .layer(AdmissionLayer::new(attestor, policies))
        .add_optional_service(workload_api)
        .add_optional_service(sds)
        .add_optional_service(discovery)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

fn announce(socket: &Path) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", listener_line(socket));
    let _ = out.flush();
}
