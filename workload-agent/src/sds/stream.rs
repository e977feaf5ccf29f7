//! `StreamSecrets`: Envoy's state-of-the-world SDS stream, as SPIRE's agent serves it.
//!
//! - Each request names the resources wanted; the first one (and any that changes the set of
//!   names, or the `Node`) is answered with the current Secrets at once.
//! - Afterwards a new answer goes out whenever the caller's identities or bundles change
//!   ([`WorkloadIdentities::changes`](crate::identities::WorkloadIdentities::changes)) and
//!   the answer differs from the last one sent. `version_info` moves exactly when the content
//!   does (a counter per stream, from `1`); every response has a fresh `nonce`.
//! - ACK/NACK: a request carrying the last nonce with the version sent is an ACK; one with
//!   `error_detail` is a NACK: logged (Envoy's message, bounded) and not answered; the same
//!   content is not sent again, the next change is. A request with a stale nonce is ignored
//!   (as SPIRE and the xDS protocol do).
//! - A temporary failure (identity not issued yet, bundle not received) leaves the stream
//!   waiting for the next change; one that cannot heal by waiting (no identity any more,
//!   names not the caller's, a bad request) ends it with its status, as in SPIRE.
//! - The stream is the response body itself (no task of its own), holding the caller's
//!   stream slot; it ends with `Unavailable` when the agent stops, and quietly when Envoy
//!   closes its side.
//!
//! Nothing here logs a response: see [`super::secrets`] on key material.

use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use futures::StreamExt as _;
use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Status, Streaming};

use super::names::Requested;
use super::node::ValidationMode;
use super::refusal::SdsRefusal;
use super::secrets::{Resources, secret_type_url};
use super::service::{Shared, node_of, requested_of};
use crate::attest::Attested;
use crate::socket::StreamSlot;

/// A streaming RPC's message stream.
pub type ResponseStream<M> = Pin<Box<dyn Stream<Item = Result<M, Status>> + Send + 'static>>;

/// Longest part of Envoy's NACK message that is logged, in bytes.
const LOGGED_DETAIL_LEN: usize = 1024;

/// One open `StreamSecrets` stream.
pub(super) struct SecretStream {
    shared: Arc<Shared>,
    attested: Attested,
    requests: Streaming<DiscoveryRequest>,
    changes: watch::Receiver<u64>,
    stopping: watch::Receiver<bool>,
    /// From the last request that carried a `Node`.
    mode: ValidationMode,
    /// The names of the last (non-stale) request; `None` before the first.
    subscribed: Option<Requested>,
    /// The current subscription has not been answered yet (a temporary failure).
    unanswered: bool,
    /// What was last sent, and its version and nonce.
    last: Option<Resources>,
    version: u64,
    sent: u64,
    ended: bool,
    _slot: StreamSlot,
}

/// What woke the stream.
enum Event {
    Request(Option<Result<Box<DiscoveryRequest>, Status>>),
    Changed,
    SourceStopped,
    Stopping,
}

impl SecretStream {
    pub(super) fn new(
        shared: Arc<Shared>,
        attested: Attested,
        requests: Streaming<DiscoveryRequest>,
        slot: StreamSlot,
    ) -> Self {
        let mut changes = shared.changes();
        changes.mark_unchanged();
        let stopping = shared.stopping.clone();
        Self {
            shared,
            attested,
            requests,
            changes,
            stopping,
            mode: ValidationMode::of(None),
            subscribed: None,
            unanswered: false,
            last: None,
            version: 0,
            sent: 0,
            ended: false,
            _slot: slot,
        }
    }

    pub(super) fn into_response_stream(self) -> ResponseStream<DiscoveryResponse> {
        Box::pin(futures::stream::unfold(self, |mut stream| async move {
            let item = stream.next_message().await?;
            Some((item, stream))
        }))
    }

    async fn next_message(&mut self) -> Option<Result<DiscoveryResponse, Status>> {
        if self.ended {
            return None;
        }
        let end = loop {
            let event = tokio::select! {
                _ = stopped(&mut self.stopping) => Event::Stopping,
                request = self.requests.next() => Event::Request(request.map(|r| r.map(Box::new))),
                changed = self.changes.changed() => match changed {
                    Ok(()) => Event::Changed,
                    Err(_) => Event::SourceStopped,
                },
            };
            let outcome = match event {
                Event::Stopping => Err(SdsRefusal::ShuttingDown),
                Event::SourceStopped => Err(SdsRefusal::SourceStopped),
                // Envoy closed its side: the stream is over, without an error.
                Event::Request(None) => {
                    self.ended = true;
                    return None;
                }
                Event::Request(Some(Err(status))) => Err(SdsRefusal::RequestStream(status)),
                Event::Request(Some(Ok(request))) => self.on_request(*request).await,
                Event::Changed => {
                    self.changes.borrow_and_update();
                    self.on_change().await
                }
            };
            match outcome {
                Ok(Some(response)) => return Some(Ok(response)),
                Ok(None) => {}
                Err(refusal) => break refusal,
            }
        };
        self.ended = true;
        tracing::debug!(reason = %end, "SDS stream ended");
        Some(Err(end.to_status()))
    }

    /// A request: a (re)subscription to answer, or an ACK/NACK of what was sent.
    async fn on_request(
        &mut self,
        request: DiscoveryRequest,
    ) -> Result<Option<DiscoveryResponse>, SdsRefusal> {
        tracing::debug!(
            names = request.resource_names.len(),
            version = %request.version_info,
            nonce = %request.response_nonce,
            "SDS request"
        );
        if let Some(detail) = &request.error_detail {
            tracing::warn!(
                version = %request.version_info,
                nonce = %request.response_nonce,
                detail = %bounded(&detail.message),
                "Envoy rejected the secrets sent (NACK); they are not sent again until they change"
            );
        }
        if self.sent > 0 && request.response_nonce != self.sent.to_string() {
            tracing::debug!(nonce = %request.response_nonce, "SDS request with a stale nonce ignored");
            return Ok(None);
        }
        let requested = requested_of(&request)?;
        let mode = match node_of(&request) {
            Some(node) => ValidationMode::of(Some(node)),
            None => self.mode,
        };
        let resubscribed = self.subscribed.as_ref() != Some(&requested) || mode != self.mode;
        self.mode = mode;
        self.subscribed = Some(requested);
        if resubscribed {
            self.unanswered = true;
        }
        if !self.unanswered {
            // An ACK or NACK of the current subscription: nothing to send.
            return Ok(None);
        }
        self.answer().await
    }

    /// A change: the current subscription's answer, if it differs from the last one sent
    /// (or nothing was sent for it yet).
    async fn on_change(&mut self) -> Result<Option<DiscoveryResponse>, SdsRefusal> {
        if self.subscribed.is_none() {
            return Ok(None);
        }
        self.answer().await
    }

    async fn answer(&mut self) -> Result<Option<DiscoveryResponse>, SdsRefusal> {
        let Some(requested) = &self.subscribed else {
            return Ok(None);
        };
        let resources = match self
            .shared
            .answer(&self.attested, requested, self.mode)
            .await
        {
            Ok(resources) => resources,
            Err(refusal) if refusal.ends_stream() => return Err(refusal),
            Err(refusal) => {
                // The last answer (if any) stays valid; a later change brings the next.
                tracing::warn!(reason = %refusal, detail = %refusal.message(), "SDS answer deferred");
                return Ok(None);
            }
        };
        let changed = self.last.as_ref() != Some(&resources);
        if !changed && !self.unanswered {
            return Ok(None);
        }
        if changed {
            self.version += 1;
        }
        self.sent += 1;
        self.unanswered = false;
        let response = DiscoveryResponse {
            version_info: self.version.to_string(),
            resources: resources.to_any(),
            type_url: secret_type_url(),
            nonce: self.sent.to_string(),
            ..DiscoveryResponse::default()
        };
        tracing::debug!(
            version = self.version,
            nonce = self.sent,
            names = ?resources.names(),
            mode = %self.mode,
            "SDS response"
        );
        self.last = Some(resources);
        Ok(Some(response))
    }
}

fn bounded(s: &str) -> &str {
    if s.len() <= LOGGED_DETAIL_LEN {
        return s;
    }
    let mut end = LOGGED_DETAIL_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Resolves when `stopping` turns `true`; never, if its sender is gone without saying so.
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    if stopping.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}
