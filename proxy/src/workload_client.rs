//! The proxy's Workload API client: streams `FetchX509SVID` from the agent's Unix socket and
//! applies every message to the [`SvidStore`] at once (bundles first, so a new root is
//! trusted before an SVID issued under it is served). Rotations reach the next handshake;
//! open connections keep the keys they negotiated.
//!
//! A lost stream is reopened with exponential backoff; the current SVID is kept meanwhile
//! (an agent restart must not take the proxy down). A message that cannot be used is logged
//! and counted, and the current SVID stays.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use lanyard_proto::WORKLOAD_API_HEADER;
use lanyard_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use lanyard_proto::workload::{X509svidRequest, X509svidResponse};
use lanyard_svid::bundle::{BundleSet, TrustBundle};
use lanyard_svid::tls::SvidStore;
use lanyard_svid::{SpiffeId, TrustDomain, X509Svid};
use tokio::net::UnixStream;
use tonic::transport::{Endpoint, Uri};
use zeroize::Zeroizing;

use crate::metrics::ProxyMetrics;

/// First retry delay after a failed session.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Longest delay between attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Federated bundles accepted from one message.
const MAX_FEDERATED_BUNDLES: usize = 256;

/// Why a session ended or a message was not applied. `Display` is the metric label.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadApiError {
    #[error("connect")]
    Connect(#[source] tonic::transport::Error),
    #[error("status")]
    Status(#[source] tonic::Status),
    #[error("stream_ended")]
    StreamEnded,
    #[error("no_svid_in_message")]
    NoSvidInMessage,
    #[error("bad_svid")]
    BadSvid(String),
    #[error("bad_bundle")]
    BadBundle(String),
}

impl WorkloadApiError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect",
            Self::Status(_) => "status",
            Self::StreamEnded => "stream_ended",
            Self::NoSvidInMessage => "no_svid_in_message",
            Self::BadSvid(_) => "bad_svid",
            Self::BadBundle(_) => "bad_bundle",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Self::Connect(e) => format!("cannot connect to the Workload API socket: {e}"),
            Self::Status(s) => format!("the Workload API answered {:?}: {}", s.code(), s.message()),
            Self::StreamEnded => "the Workload API closed the X.509-SVID stream".into(),
            Self::NoSvidInMessage => "a Workload API message carried no X.509-SVID".into(),
            Self::BadSvid(why) => {
                format!("the X.509-SVID from the Workload API is unusable: {why}")
            }
            Self::BadBundle(why) => {
                format!("a trust bundle from the Workload API is unusable: {why}")
            }
        }
    }
}

/// Exponential backoff between sessions, reset once a session delivered something.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            next: initial,
        }
    }

    /// The delay before the next attempt; doubles up to the maximum.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(INITIAL_BACKOFF, MAX_BACKOFF)
    }
}

/// How a session went: whether it applied anything (then the backoff resets), and why it
/// ended.
#[derive(Debug)]
pub struct SessionEnd {
    pub applied_any: bool,
    pub error: WorkloadApiError,
}

/// Runs `session` forever, sleeping per `backoff` between sessions.
pub async fn run_sessions<F, Fut>(mut session: F, mut backoff: Backoff)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = SessionEnd>,
{
    loop {
        let end = session().await;
        if end.applied_any {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        tracing::warn!(
            reason = %end.error,
            detail = %end.error.message(),
            retry_in = ?delay,
            "Workload API session ended; keeping the current SVID"
        );
        tokio::time::sleep(delay).await;
    }
}

/// Follows the Workload API at `socket` forever, keeping `store` current.
pub async fn follow(socket: PathBuf, store: Arc<SvidStore>, metrics: Arc<ProxyMetrics>) {
    run_sessions(
        || session(socket.clone(), store.clone(), metrics.clone()),
        Backoff::default(),
    )
    .await
}

/// One connection: open the stream and apply messages until it fails.
async fn session(socket: PathBuf, store: Arc<SvidStore>, metrics: Arc<ProxyMetrics>) -> SessionEnd {
    let mut applied_any = false;
    let error = match open_stream(socket).await {
        Err(error) => error,
        Ok(mut stream) => loop {
            match stream.message().await {
                Ok(Some(message)) => match apply(message, &store) {
                    Ok(id) => {
                        applied_any = true;
                        metrics.svid_updates.inc();
                        tracing::debug!(spiffe_id = %id, "applied a Workload API update");
                    }
                    Err(error) => {
                        metrics.workload_api_error(error.label());
                        tracing::warn!(reason = %error, detail = %error.message(), "ignoring a Workload API message");
                    }
                },
                Ok(None) => break WorkloadApiError::StreamEnded,
                Err(status) => break WorkloadApiError::Status(status),
            }
        },
    };
    metrics.workload_api_error(error.label());
    SessionEnd { applied_any, error }
}

async fn open_stream(
    socket: PathBuf,
) -> Result<tonic::Streaming<X509svidResponse>, WorkloadApiError> {
    let connector = tower::service_fn(move |_: Uri| {
        let socket = socket.clone();
        async move { UnixStream::connect(socket).await.map(TokioIo::new) }
    });
    // The URI is a placeholder: the connector above dials the socket.
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(connector)
        .await
        .map_err(WorkloadApiError::Connect)?;
    let mut client = SpiffeWorkloadApiClient::new(channel);
    let mut request = tonic::Request::new(X509svidRequest {});
    request.metadata_mut().insert(
        WORKLOAD_API_HEADER,
        tonic::metadata::MetadataValue::from_static("true"),
    );
    client
        .fetch_x509svid(request)
        .await
        .map(tonic::Response::into_inner)
        .map_err(WorkloadApiError::Status)
}

/// Applies one `X509SVIDResponse`: the first (default) SVID becomes ours; its bundle and the
/// federated bundles replace the trusted set.
pub fn apply(
    mut message: X509svidResponse,
    store: &SvidStore,
) -> Result<SpiffeId, WorkloadApiError> {
    if message.svids.is_empty() {
        return Err(WorkloadApiError::NoSvidInMessage);
    }
    let mut wire = message.svids.swap_remove(0);
    let key = Zeroizing::new(std::mem::take(&mut wire.x509_svid_key));
    let svid = X509Svid::from_concat_der(&wire.x509_svid, Some(key))
        .map_err(|e| WorkloadApiError::BadSvid(e.message()))?;
    if svid.spiffe_id().to_string() != wire.spiffe_id {
        return Err(WorkloadApiError::BadSvid(format!(
            "the message names {:?} but the certificate is {}",
            wire.spiffe_id,
            svid.spiffe_id()
        )));
    }
    let own_domain = svid.spiffe_id().trust_domain().clone();
    let own = TrustBundle::from_x509_der(own_domain.clone(), &wire.bundle)
        .map_err(|e| WorkloadApiError::BadBundle(format!("{own_domain}: {e}")))?;
    if own.x509_authorities().is_empty() {
        return Err(WorkloadApiError::BadBundle(format!(
            "{own_domain}: no X.509 authorities"
        )));
    }
    let mut bundles = BundleSet::new();
    bundles.insert(own);
    for (name, der) in message.federated_bundles.iter().take(MAX_FEDERATED_BUNDLES) {
        let federated = TrustDomain::parse(name)
            .map_err(|e| e.to_string())
            .and_then(|td| TrustBundle::from_x509_der(td, der).map_err(|e| e.to_string()));
        match federated {
            // Our own domain's bundle comes with the SVID; a federated entry may not replace it.
            Ok(bundle) if *bundle.trust_domain() == own_domain => {}
            Ok(bundle) => bundles.insert(bundle),
            Err(why) => tracing::warn!(trust_domain = %name, %why, "skipping a federated bundle"),
        }
    }
    let id = svid.spiffe_id().clone();
    store.update_bundles(bundles);
    store
        .update_svid(svid)
        .map_err(|e| WorkloadApiError::BadSvid(e.message().to_owned()))?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let delays: Vec<_> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn sessions_are_retried_on_the_backoff_schedule() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let start = Instant::now();
        let mut calls = 0u32;
        let task = tokio::spawn(run_sessions(
            move || {
                calls += 1;
                let _ = tx.send(start.elapsed());
                // The third session delivers an SVID before failing: the backoff resets.
                let applied_any = calls == 3;
                async move {
                    SessionEnd {
                        applied_any,
                        error: WorkloadApiError::StreamEnded,
                    }
                }
            },
            Backoff::new(Duration::from_millis(100), Duration::from_secs(1)),
        ));
        let mut at = Vec::new();
        for _ in 0..7 {
            at.push(rx.recv().await.unwrap().as_millis());
        }
        task.abort();
        // 0, +100, +200, (reset) +100, +200, +400, +800.
        assert_eq!(at, [0, 100, 300, 400, 600, 1000, 1800]);
    }
}
