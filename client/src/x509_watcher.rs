//! Following the Workload API's `FetchX509SVID` stream and applying every message to an
//! [`SvidStore`] at once (bundles first, so a new root is trusted before an SVID issued under
//! it is served). Rotations reach the next handshake; open connections keep their keys.
//!
//! A lost stream is reopened with the jittered [`Backoff`]; the current SVID is kept meanwhile
//! (an agent restart must not take the caller down). A message that cannot be used is
//! reported to the [`WatchObserver`] and logged, and the current SVID stays.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lanyard_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use lanyard_proto::workload::{X509svidRequest, X509svidResponse};
use lanyard_svid::bundle::{BundleSet, TrustBundle};
use lanyard_svid::tls::SvidStore;
use lanyard_svid::{SpiffeId, TrustDomain, X509Svid};
use zeroize::Zeroizing;

use crate::backoff::Backoff;
use crate::channel::{self, ChannelError};

/// First retry delay after a failed session.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Longest delay between attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Federated bundles accepted from one message.
const MAX_FEDERATED_BUNDLES: usize = 256;

/// Why a session ended or a message was not applied. [`WatchError::label`] is a short
/// metric label; `Display` says what happened.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("{0}")]
    Connect(#[source] ChannelError),
    #[error("the Workload API answered {:?}: {}", .0.code(), .0.message())]
    Status(#[source] tonic::Status),
    #[error("the Workload API closed the X.509-SVID stream")]
    StreamEnded,
    #[error("a Workload API message carried no X.509-SVID")]
    NoSvidInMessage,
    #[error("the X.509-SVID from the Workload API is unusable: {0}")]
    BadSvid(String),
    #[error("a trust bundle from the Workload API is unusable: {0}")]
    BadBundle(String),
}

impl WatchError {
    /// A short label, for metrics.
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
}

/// Told what the watcher did, e.g. to count it.
pub trait WatchObserver: Send + Sync + 'static {
    /// An update was applied; `id` is now the store's SVID.
    fn applied(&self, _id: &SpiffeId) {}
    /// A message was not applied, or a session ended.
    fn failed(&self, _error: &WatchError) {}
}

/// An observer that does nothing.
pub struct NoObserver;
impl WatchObserver for NoObserver {}

/// How a session went: whether it applied anything (then the backoff resets), and why it
/// ended.
#[derive(Debug)]
pub struct SessionEnd {
    pub applied_any: bool,
    pub error: WatchError,
}

/// Runs `session` forever, waiting per `backoff` between sessions.
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
        let delay = backoff.fail();
        tracing::warn!(
            reason = end.error.label(),
            detail = %end.error,
            retry_in = ?delay,
            "Workload API session ended; keeping the current SVID"
        );
        tokio::time::sleep(delay).await;
    }
}

/// Follows the Workload API at `socket` forever, keeping `store` current.
pub async fn watch(socket: PathBuf, store: Arc<SvidStore>, observer: Arc<dyn WatchObserver>) {
    run_sessions(
        || session(socket.clone(), store.clone(), observer.clone()),
        Backoff::new(INITIAL_BACKOFF, MAX_BACKOFF),
    )
    .await
}

/// One connection: open the stream and apply messages until it fails.
async fn session(
    socket: PathBuf,
    store: Arc<SvidStore>,
    observer: Arc<dyn WatchObserver>,
) -> SessionEnd {
    let mut applied_any = false;
    let error = match open_stream(socket).await {
        Err(error) => error,
        Ok(mut stream) => loop {
            match stream.message().await {
                Ok(Some(message)) => match apply(message, &store) {
                    Ok(id) => {
                        applied_any = true;
                        observer.applied(&id);
                        tracing::debug!(spiffe_id = %id, "applied a Workload API update");
                    }
                    Err(error) => {
                        observer.failed(&error);
                        tracing::warn!(reason = error.label(), detail = %error, "ignoring a Workload API message");
                    }
                },
                Ok(None) => break WatchError::StreamEnded,
                Err(status) => break WatchError::Status(status),
            }
        },
    };
    observer.failed(&error);
    SessionEnd { applied_any, error }
}

async fn open_stream(socket: PathBuf) -> Result<tonic::Streaming<X509svidResponse>, WatchError> {
    let channel = channel::connect(&socket)
        .await
        .map_err(WatchError::Connect)?;
    SpiffeWorkloadApiClient::new(channel)
        .fetch_x509svid(channel::workload_request(X509svidRequest {}))
        .await
        .map(tonic::Response::into_inner)
        .map_err(WatchError::Status)
}

/// Applies one `X509SVIDResponse`: the first (default) SVID becomes the store's; its bundle
/// and the federated bundles replace the trusted set.
pub fn apply(mut message: X509svidResponse, store: &SvidStore) -> Result<SpiffeId, WatchError> {
    if message.svids.is_empty() {
        return Err(WatchError::NoSvidInMessage);
    }
    let mut wire = message.svids.swap_remove(0);
    let key = Zeroizing::new(std::mem::take(&mut wire.x509_svid_key));
    let svid = X509Svid::from_concat_der(&wire.x509_svid, Some(key))
        .map_err(|e| WatchError::BadSvid(e.message()))?;
    if svid.spiffe_id().to_string() != wire.spiffe_id {
        return Err(WatchError::BadSvid(format!(
            "the message names {:?} but the certificate is {}",
            wire.spiffe_id,
            svid.spiffe_id()
        )));
    }
    let own_domain = svid.spiffe_id().trust_domain().clone();
    let own = TrustBundle::from_x509_der(own_domain.clone(), &wire.bundle)
        .map_err(|e| WatchError::BadBundle(format!("{own_domain}: {e}")))?;
    if own.x509_authorities().is_empty() {
        return Err(WatchError::BadBundle(format!(
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
        .map_err(|e| WatchError::BadSvid(e.message().to_owned()))?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

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
                        error: WatchError::StreamEnded,
                    }
                }
            },
            Backoff::new(Duration::from_millis(100), Duration::from_secs(1)).with_draw(|| 0.0),
        ));
        let mut at = Vec::new();
        for _ in 0..7 {
            at.push(rx.recv().await.unwrap().as_millis());
        }
        task.abort();
        // 0, +100, +200, (reset) +100, +200, +400, +800.
        assert_eq!(at, [0, 100, 300, 400, 600, 1000, 1800]);
    }

    #[test]
    fn a_message_without_an_svid_is_refused_and_labelled() {
        let store = SvidStore::new(BundleSet::new());
        let err = apply(X509svidResponse::default(), &store).unwrap_err();
        assert_eq!(err.label(), "no_svid_in_message");
        assert!(!store.has_svid());
    }
}
