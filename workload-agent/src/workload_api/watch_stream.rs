//! The watch-stream engine behind FetchX509SVID, FetchX509Bundles and FetchJWTBundles.
//!
//! A stream sends the full current state at once, then again after each
//! [`WorkloadIdentities::changes`](crate::identities::WorkloadIdentities::changes) tick whose
//! state differs from what was last sent. The caller is attested once, when its stream opens;
//! its entitlements are resolved again after a change (only after a node view change when the
//! source tells its view version). A stream is the response body itself (no task of its own):
//! it computes its next message only when the HTTP/2 connection polls it, so a slow reader
//! holds back nothing but itself, and it always gets the latest state. It holds its caller's
//! stream slot, which the server drops with it when the client goes away, so a disconnect
//! frees it. When the agent shuts down, every stream ends with `Unavailable`, so clients
//! reconnect to the next agent; a caller that loses its identity sees its stream end with
//! "no identity issued".

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::Status;

use super::metrics::{OpenStreamGauge, WorkloadApiMetrics};
use super::refusal::Refusal;
use super::shared_responses::{Purpose, SharedResponse, WipeSecrets};
use crate::attest::Attested;
use crate::identities::Entitlement;
use crate::socket::StreamSlot;

/// A streaming RPC's message stream.
pub type ResponseStream<M> = Pin<Box<dyn Stream<Item = Result<M, Status>> + Send + 'static>>;

/// The caller of one watch stream (attested when the stream opened), and the entitlements
/// it last resolved to, with the node view version they are valid for (`None`: unknown, so
/// resolved again at every change).
pub(super) struct StreamCaller {
    pub(super) attested: Attested,
    pub(super) resolved: Option<(Option<u64>, Vec<Entitlement>)>,
}

/// A message a watch stream sends: how to get the caller's current one from the state
/// source `Src`.
pub(super) trait Watched<Src>:
    WipeSecrets + PartialEq + Clone + Send + Sync + 'static
{
    fn current(
        source: &Src,
        caller: &mut StreamCaller,
        generation: u64,
        purpose: Purpose,
    ) -> impl Future<Output = Result<SharedResponse<Self>, Refusal>> + Send;
}

/// What a watch stream holds for its lifetime: its caller slot and its gauge.
pub(super) struct StreamGuards {
    pub(super) _slot: StreamSlot,
    pub(super) _gauge: OpenStreamGauge,
}

/// One open watch stream: sends its first state, then its state after every change that
/// alters it, until the client leaves (the server drops it), the caller loses its identity,
/// or the agent stops.
pub(super) struct WatchStream<M: Watched<Src>, Src> {
    source: Arc<Src>,
    metrics: WorkloadApiMetrics,
    method: &'static str,
    caller: StreamCaller,
    changes: watch::Receiver<u64>,
    stopping: watch::Receiver<bool>,
    /// The first state, until it is sent.
    unsent: Option<SharedResponse<M>>,
    /// What the client has (or is about to have).
    last: SharedResponse<M>,
    ended: bool,
    _guards: StreamGuards,
}

/// What woke an idle stream.
enum Wake {
    Changed,
    SourceStopped,
    Stopping,
}

/// Where a new stream stands: its source, method, caller, subscriptions and first state.
pub(super) struct Opened<M: Watched<Src>, Src> {
    pub(super) source: Arc<Src>,
    pub(super) metrics: WorkloadApiMetrics,
    pub(super) method: &'static str,
    pub(super) caller: StreamCaller,
    /// Subscribed before `first` was read, so no change between the two is missed.
    pub(super) changes: watch::Receiver<u64>,
    pub(super) stopping: watch::Receiver<bool>,
    pub(super) first: SharedResponse<M>,
    pub(super) guards: StreamGuards,
}

impl<M: Watched<Src>, Src: Send + Sync + 'static> WatchStream<M, Src> {
    pub(super) fn new(opened: Opened<M, Src>) -> Self {
        Self {
            source: opened.source,
            metrics: opened.metrics,
            method: opened.method,
            caller: opened.caller,
            changes: opened.changes,
            stopping: opened.stopping,
            unsent: Some(opened.first.clone()),
            last: opened.first,
            ended: false,
            _guards: opened.guards,
        }
    }

    pub(super) fn into_response_stream(self) -> ResponseStream<M> {
        Box::pin(futures::stream::unfold(self, |mut stream| async move {
            let item = stream.next_message().await?;
            Some((item, stream))
        }))
    }

    async fn next_message(&mut self) -> Option<Result<M, Status>> {
        if self.ended {
            return None;
        }
        if let Some(first) = self.unsent.take() {
            return Some(Ok(first.message().clone()));
        }
        let end = loop {
            let wake = tokio::select! {
                _ = stopped(&mut self.stopping) => Wake::Stopping,
                changed = self.changes.changed() => match changed {
                    Ok(()) => Wake::Changed,
                    Err(_) => Wake::SourceStopped,
                },
            };
            match wake {
                Wake::Stopping => break Refusal::ShuttingDown,
                Wake::SourceStopped => break Refusal::SourceStopped,
                Wake::Changed => {}
            }
            let generation = *self.changes.borrow_and_update();
            match M::current(&self.source, &mut self.caller, generation, Purpose::Update).await {
                Ok(state) if state.same_content(&self.last) => {}
                Ok(state) => {
                    let message = state.message().clone();
                    self.last = state;
                    return Some(Ok(message));
                }
                Err(refusal) if refusal.ends_stream() => break refusal,
                Err(refusal) => {
                    // Keep serving the last state (still valid); the manager ticks
                    // `changes` again when it has something new.
                    tracing::warn!(method = self.method, reason = %refusal, detail = %refusal.message(), "workload API stream update skipped");
                }
            }
        };
        self.ended = true;
        self.metrics.refused(self.method, &end.to_string());
        Some(Err(end.to_status()))
    }
}

/// Resolves when `stopping` turns `true`; never, if its sender is gone without saying so.
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    if stopping.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}
