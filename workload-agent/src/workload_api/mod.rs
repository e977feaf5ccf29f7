//! The SPIFFE Workload API on the agent's Unix socket: the part third-party workloads touch.
//!
//! Wire contract: `spec/workload-api.md`, unchanged, so any SPIFFE client library works.
//!
//! - [`socket`]: binding the socket (0755 parent, stale socket replaced, 0777 socket) and
//!   admitting connections (peer pinned at accept, HTTP/2 preface within a timeout,
//!   connection budget).
//! - [`service`]: the `SpiffeWorkloadAPI` RPCs over [`WorkloadIdentities`].
//! - [`shared_responses`]: stream responses built once per change and shared by the streams
//!   that send the same one.
//! - [`convert`]: SVIDs, bundles and JWT claims to Workload API messages.
//! - [`limits`]: every bound ([`Limits`]) and the per-caller stream count.
//! - [`metrics`]: the Prometheus metrics, [`WorkloadApiMetrics`].
//!
//! [`serve`] puts them together; a daemon that wants more services on the same socket (e.g.
//! `lanyard.discovery.v1`) can build the same thing from [`socket::bind`],
//! [`socket::incoming`], [`server_builder`] and [`WorkloadApiService::into_server`].

pub mod convert;
pub mod limits;
pub mod metrics;
pub mod service;
pub mod shared_responses;
pub mod socket;
#[cfg(test)]
mod stream_sharing_tests;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;
use tonic::transport::Server;

pub use limits::Limits;
pub use metrics::WorkloadApiMetrics;
pub use service::{Refusal, WorkloadApiService};
pub use socket::SocketError;

use crate::attest::WorkloadAttestor;
use crate::identities::WorkloadIdentities;

/// The role printed in the listener announcement.
pub const LISTENER_ROLE: &str = "workload-api";

/// Why the Workload API endpoint stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadApiError {
    #[error("workload API socket: {0}")]
    Socket(#[from] SocketError),
    #[error("workload API server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// The announcement line for a Unix socket listener, worded as `lanyard_telemetry`'s:
/// `listening on unix:<path> (workload-api)`.
pub fn listener_line(socket: &Path) -> String {
    format!("listening on unix:{} ({LISTENER_ROLE})", socket.display())
}

/// A tonic server builder with the HTTP/2 bounds of `limits` (header list size, concurrent
/// streams per connection, keepalive to find dead peers).
pub fn server_builder(limits: &Limits) -> Server {
    Server::builder()
        .http2_max_header_list_size(limits.max_header_list_bytes)
        .max_concurrent_streams(limits.max_concurrent_streams_per_connection)
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
}

/// Serves the Workload API on the Unix socket `socket` until `shutdown` resolves.
///
/// Binds the socket (see [`socket::bind`]), prints `listening on unix:<path> (workload-api)`
/// on stdout once it accepts, and serves every caller with the identities `identities` gives
/// for its attestation by `attestor`, within `limits`. On `shutdown`, open streams end with
/// `Unavailable` (clients reconnect), the server drains, and the socket file is removed.
pub async fn serve(
    socket: &Path,
    identities: Arc<dyn WorkloadIdentities>,
    attestor: Arc<WorkloadAttestor>,
    limits: Limits,
    metrics: WorkloadApiMetrics,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), WorkloadApiError> {
    let listener = socket::bind(socket)?;
    let _remove = RemoveOnDrop(socket.to_owned());
    let (stop_tx, stop_rx) = watch::channel(false);
    let service = WorkloadApiService::new(identities, attestor.clone(), &limits, metrics, stop_rx);
    let incoming = socket::incoming(listener, attestor, &limits);
    announce(socket);
    let shutdown = async move {
        shutdown.await;
        // Streams never end on their own; tell them, so the graceful drain can finish.
        let _ = stop_tx.send(true);
    };
    server_builder(&limits)
        .add_service(service.into_server(&limits))
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

/// Removes the socket file when the server stops, so a stale socket does not linger.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
