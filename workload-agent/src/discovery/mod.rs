//! `lanyard.discovery.v1` in the agent: which destinations are meshed and as which IDs, for
//! the proxy, served on the agent's Unix socket next to the Workload API.
//!
//! - [`cache`]: answers per destination, their freshness (TTL once the server is lost) and
//!   bounds.
//! - [`feed`]: following the cached destinations on the server's `DiscoveryFeed`.
//! - [`service`]: the `Discovery` service (`Resolve`, `Watch`) and who may call it.
//!
//! [`serve`] serves the Workload API and `Discovery` on one socket, as two gRPC services.
//!
//! Distribution: the agent asks the server only about destinations its callers look up, and
//! the server pushes changes for those only (on-demand lookups with watches, chosen over
//! pushing the whole map to every agent; measured in `docs/benchmarks.md`).

pub mod cache;
pub mod feed;
pub mod service;

use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lanyard_proto::discovery::v1 as wire;
use tokio::sync::watch;

pub use cache::{CacheSettings, DiscoveryCache};
pub use service::{DiscoveryRefusal, DiscoveryService, REFUSAL_TRAILER, ResolveResult};

use crate::attest::WorkloadAttestor;
use crate::identities::WorkloadIdentities;
use crate::workload_api::{
    self, Limits, WorkloadApiError, WorkloadApiMetrics, WorkloadApiService, server_builder, socket,
};

/// Open `Watch` streams per caller (uid, pod).
pub const WATCHES_PER_CALLER: usize = 256;

/// A destination: an IP and a TCP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Destination {
    pub address: IpAddr,
    pub port: u16,
}

impl Destination {
    /// Checks a wire destination; the refusal text when it is unusable.
    pub fn from_wire(d: Option<&wire::Destination>) -> Result<Self, &'static str> {
        let d = d.ok_or("a destination is required")?;
        const BAD_ADDRESS: &str = "address must be an IPv4 or IPv6 literal (no brackets, no zone)";
        // Longer than any IP literal: refused before parsing.
        if d.address.len() > 45 {
            return Err(BAD_ADDRESS);
        }
        let address = d.address.parse().map_err(|_| BAD_ADDRESS)?;
        let port = u16::try_from(d.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or("port must be 1..65535")?;
        Ok(Self { address, port })
    }

    pub fn to_wire(self) -> wire::Destination {
        wire::Destination {
            address: self.address.to_string(),
            port: u32::from(self.port),
        }
    }
}

/// Serves the Workload API and `lanyard.discovery.v1.Discovery` on the Unix socket `socket`
/// until `shutdown` resolves: the same socket setup, admission and bounds as
/// [`workload_api::serve`], with discovery added as a second gRPC service.
pub async fn serve(
    socket_path: &Path,
    identities: Arc<dyn WorkloadIdentities>,
    attestor: Arc<WorkloadAttestor>,
    limits: Limits,
    metrics: WorkloadApiMetrics,
    cache: Arc<DiscoveryCache>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), WorkloadApiError> {
    let listener = socket::bind(socket_path)?;
    let _remove = RemoveOnDrop(socket_path.to_owned());
    let (stop_tx, stop_rx) = watch::channel(false);
    let workload = WorkloadApiService::new(
        identities.clone(),
        attestor.clone(),
        &limits,
        metrics,
        stop_rx.clone(),
    );
    let discovery = DiscoveryService::new(
        cache,
        attestor.clone(),
        identities,
        WATCHES_PER_CALLER,
        stop_rx,
    );
    let incoming = socket::incoming(listener, attestor, &limits);
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", workload_api::listener_line(socket_path));
        let _ = out.flush();
    }
    let shutdown = async move {
        shutdown.await;
        // Streams never end on their own; tell them, so the graceful drain can finish.
        let _ = stop_tx.send(true);
    };
    server_builder(&limits)
        .add_service(workload.into_server(&limits))
        .add_service(discovery.into_server())
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// Removes the socket file when the server stops.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
