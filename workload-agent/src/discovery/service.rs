//! The `lanyard.discovery.v1.Discovery` service on the agent's Unix socket.
//!
//! Who may call. Any local caller that holds at least one identity (the same rule as the
//! Workload API's bundle streams): discovery reveals which addresses are meshed and as which
//! IDs, i.e. cluster topology, so it is shown only to meshed workloads, never to any process
//! on the node. The caller is attested on every call, by the socket's admission layer
//! ([`crate::socket::admission`], told how by [`DiscoveryService::admission_policy`]), which
//! hands the attested [`Caller`] down in the request. The `workload.spiffe.io` header is not
//! required: this is not the Workload API.
//!
//! `Resolve` answers from the cache; a destination not yet cached is followed on the server
//! and the call waits (bounded) for its first answer. `Watch` sends the current answer, then
//! every change, and ends with `Unavailable` when the answer expires (the server unreachable
//! for longer than the TTL) or the agent stops. Open watches are bounded per caller.
//!
//! Every refusal, at the start of a call or ending a `Watch`, carries the response metadata
//! (trailer) [`REFUSAL_TRAILER`] whose value is the refusal's label ([`DiscoveryRefusal`]'s
//! `Display`, e.g. `expired`), as documented on `Discovery` in `discovery.proto`. Callers
//! decide on it, never on the status message, which is for people.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use lanyard_proto::discovery::v1 as wire;
use lanyard_proto::discovery::v1::discovery_server::{Discovery, DiscoveryServer};
use lanyard_proto::discovery_destination::{Destination, DestinationError};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::server::NamedService;
use tonic::{Code, Request, Response, Status};

use crate::attest::AttestError;
use crate::identities::WorkloadIdentities;
use crate::server_client::discovery_cache::{Cached, DiscoveryCache, SubscribeError};
use crate::socket::{
    AdmissionPolicy, AdmissionRefusal, Caller, CallerKey, StreamLimiter, StreamSlot,
};

/// The response metadata key naming why a call was refused or a `Watch` ended: a
/// [`DiscoveryRefusal`] label (shared with callers through the wire crate).
pub use lanyard_proto::discovery::REFUSAL_TRAILER;

/// Largest request accepted (a destination is a few dozen bytes).
const MAX_REQUEST_BYTES: usize = 1024;
/// Largest answer sent (a Service with 2000 endpoints is about 200 KiB).
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// Why a call was refused. `Display` is a snake_case metric label.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DiscoveryRefusal {
    #[error("no_peer_credentials")]
    NoPeerCredentials,
    #[error("attestation_{label}")]
    Attestation {
        label: &'static str,
        message: String,
    },
    #[error("no_identity")]
    NoIdentity,
    #[error("bad_destination")]
    BadDestination(DestinationError),
    #[error("too_many_watches")]
    TooManyWatches { limit: usize },
    /// The agent's cache is full of destinations in use.
    #[error("too_many_destinations")]
    TooManyDestinations { limit: usize },
    /// This caller holds its share of the agent's cache already
    /// ([`crate::server_client::discovery_cache::CacheSettings::max_per_caller`]).
    #[error("caller_destination_budget")]
    CallerDestinationBudget { limit: usize },
    /// No answer from the server within the first-answer timeout.
    #[error("not_ready")]
    NotReady,
    /// The answer outlived its TTL while the server was unreachable.
    #[error("expired")]
    Expired,
    #[error("shutting_down")]
    ShuttingDown,
}

impl DiscoveryRefusal {
    pub fn code(&self) -> Code {
        match self {
            Self::NoIdentity => Code::PermissionDenied,
            Self::Attestation { .. } | Self::NoPeerCredentials => Code::Unavailable,
            Self::BadDestination(_) => Code::InvalidArgument,
            Self::TooManyWatches { .. }
            | Self::TooManyDestinations { .. }
            | Self::CallerDestinationBudget { .. } => Code::ResourceExhausted,
            Self::NotReady | Self::Expired | Self::ShuttingDown => Code::Unavailable,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Self::NoPeerCredentials => "the kernel gave no peer credentials".into(),
            Self::Attestation { label, message } => {
                format!("workload attestation failed ({label}): {message}")
            }
            Self::NoIdentity => {
                "no identity issued: discovery answers only callers that hold an identity".into()
            }
            Self::BadDestination(e) => e.message().into(),
            Self::TooManyWatches { limit } => {
                format!("this caller already has {limit} open discovery watches")
            }
            Self::TooManyDestinations { limit } => {
                format!("the agent follows {limit} destinations already; retry later")
            }
            Self::CallerDestinationBudget { limit } => format!(
                "this caller looked up {limit} destinations recently, its share of the agent's \
                 cache; retry later"
            ),
            Self::NotReady => "no answer from the server yet; retry".into(),
            Self::Expired => {
                "the cached answer expired while the server is unreachable; retry".into()
            }
            Self::ShuttingDown => "the agent is shutting down; reconnect".into(),
        }
    }

    /// `label: message`, the form the server's refusals take too, with the label again in
    /// the [`REFUSAL_TRAILER`] metadata for programs.
    pub fn to_status(&self) -> Status {
        let mut metadata = MetadataMap::new();
        // Labels are snake_case ASCII, always a valid metadata value.
        if let Ok(label) = MetadataValue::try_from(self.to_string()) {
            metadata.insert(REFUSAL_TRAILER, label);
        }
        Status::with_metadata(self.code(), format!("{self}: {}", self.message()), metadata)
    }
}

/// How a `Resolve` call or a `Watch` open was answered from the cache. `Display` is a metric
/// label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResolveResult {
    /// A valid answer was already cached.
    #[error("cache_hit")]
    CacheHit,
    /// The call waited for the server's first answer, and got it.
    #[error("resolved")]
    Resolved,
    /// No answer within the first-answer timeout (or the agent stopping meanwhile).
    #[error("unavailable")]
    Unavailable,
    /// The cached answer outlived its TTL while the server is unreachable.
    #[error("expired")]
    Expired,
}

/// The service. Serve it with [`DiscoveryService::into_server`].
#[derive(Clone)]
pub struct DiscoveryService {
    shared: Arc<Shared>,
}

struct Shared {
    cache: Arc<DiscoveryCache>,
    identities: Arc<dyn WorkloadIdentities>,
    watches: StreamLimiter,
    stopping: watch::Receiver<bool>,
}

impl DiscoveryService {
    /// `watches_per_caller` bounds open `Watch` streams per caller (uid, pod); `stopping`
    /// turns `true` when the agent shuts down.
    pub fn new(
        cache: Arc<DiscoveryCache>,
        identities: Arc<dyn WorkloadIdentities>,
        watches_per_caller: usize,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                cache,
                identities,
                watches: StreamLimiter::new(watches_per_caller),
                stopping,
            }),
        }
    }

    pub fn into_server(self) -> DiscoveryServer<Self> {
        DiscoveryServer::new(self)
            .max_decoding_message_size(MAX_REQUEST_BYTES)
            .max_encoding_message_size(MAX_RESPONSE_BYTES)
    }

    /// How the socket's admission layer is to treat calls to this service.
    pub fn admission_policy(&self) -> DiscoveryAdmission {
        DiscoveryAdmission
    }
}

/// `Discovery` as the socket's admission layer sees it: no `workload.spiffe.io` header, an
/// attested caller on every call, refusals answered as [`DiscoveryRefusal`]s (trailer
/// included).
pub struct DiscoveryAdmission;

impl AdmissionPolicy for DiscoveryAdmission {
    fn service_name(&self) -> &'static str {
        <DiscoveryServer<DiscoveryService> as NamedService>::NAME
    }

    fn method(&self, name: &str) -> Option<&'static str> {
        ["Resolve", "Watch"].into_iter().find(|m| *m == name)
    }

    fn requires_header(&self) -> bool {
        false
    }

    fn attests(&self, _method: &'static str) -> bool {
        true
    }

    fn refuse(&self, method: &'static str, refusal: AdmissionRefusal) -> Status {
        let refusal = DiscoveryRefusal::from(refusal);
        tracing::debug!(method, reason = %refusal, "discovery call refused");
        refusal.to_status()
    }
}

impl From<AdmissionRefusal> for DiscoveryRefusal {
    fn from(refusal: AdmissionRefusal) -> Self {
        match refusal {
            // Never sent here (discovery needs no header); kept total.
            AdmissionRefusal::MissingHeader
            | AdmissionRefusal::BadHeader
            | AdmissionRefusal::NoPeerCredentials => Self::NoPeerCredentials,
            AdmissionRefusal::Attestation(e) => attestation_refusal(&e),
        }
    }
}

impl Shared {
    /// The caller the admission layer attested, if it holds an identity; its stream-budget
    /// key.
    fn admit<T>(&self, request: &Request<T>) -> Result<CallerKey, DiscoveryRefusal> {
        let caller = Caller::of(request).ok_or(DiscoveryRefusal::NoPeerCredentials)?;
        if self.identities.resolve(&caller.attested).is_empty() {
            return Err(DiscoveryRefusal::NoIdentity);
        }
        Ok(caller.key())
    }

    fn subscribe(
        &self,
        caller: &CallerKey,
        request: &wire::ResolveRequest,
    ) -> Result<(Destination, watch::Receiver<Option<Cached>>), DiscoveryRefusal> {
        let destination = Destination::from_wire(request.destination.as_ref())
            .map_err(DiscoveryRefusal::BadDestination)?;
        let rx = self
            .cache
            .subscribe(destination, caller)
            .map_err(|e| match e {
                SubscribeError::CacheFull { limit } => {
                    DiscoveryRefusal::TooManyDestinations { limit }
                }
                SubscribeError::CallerBudget { limit } => {
                    DiscoveryRefusal::CallerDestinationBudget { limit }
                }
            })?;
        Ok((destination, rx))
    }

    /// Waits (bounded) for the first answer; a valid answer or why there is none. Counted
    /// in the cache's metrics by [`ResolveResult`].
    async fn first_answer(
        &self,
        rx: &mut watch::Receiver<Option<Cached>>,
    ) -> Result<Cached, DiscoveryRefusal> {
        let timeout = self.cache.settings().first_answer_timeout;
        let (answer, result) = first_answer(rx, timeout).await;
        self.cache.metrics().resolved(result);
        answer
    }
}

/// The first answer from `rx` (waiting at most `timeout` for the server's), and how it came.
async fn first_answer(
    rx: &mut watch::Receiver<Option<Cached>>,
    timeout: std::time::Duration,
) -> (Result<Cached, DiscoveryRefusal>, ResolveResult) {
    let held = rx.borrow().clone();
    let (cached, result) = match held {
        Some(cached) => (cached, ResolveResult::CacheHit),
        None => match tokio::time::timeout(timeout, rx.wait_for(Option::is_some)).await {
            Ok(Ok(answer)) => (
                answer.clone().expect("waited for Some"),
                ResolveResult::Resolved,
            ),
            Ok(Err(_)) => {
                return (
                    Err(DiscoveryRefusal::ShuttingDown),
                    ResolveResult::Unavailable,
                );
            }
            Err(_) => return (Err(DiscoveryRefusal::NotReady), ResolveResult::Unavailable),
        },
    };
    if cached.is_valid(Instant::now()) {
        (Ok(cached), result)
    } else {
        (Err(DiscoveryRefusal::Expired), ResolveResult::Expired)
    }
}

fn attestation_refusal(e: &AttestError) -> DiscoveryRefusal {
    DiscoveryRefusal::Attestation {
        label: e.label(),
        message: e.message(),
    }
}

fn response(destination: Destination, cached: &Cached) -> wire::ResolveResponse {
    wire::ResolveResponse {
        destination: Some(destination.to_wire()),
        resolution: Some(cached.resolution.clone()),
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<wire::ResolveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Discovery for DiscoveryService {
    async fn resolve(
        &self,
        request: Request<wire::ResolveRequest>,
    ) -> Result<Response<wire::ResolveResponse>, Status> {
        let shared = &self.shared;
        let result = async {
            let caller = shared.admit(&request)?;
            let (destination, mut rx) = shared.subscribe(&caller, request.get_ref())?;
            let cached = shared.first_answer(&mut rx).await?;
            Ok(response(destination, &cached))
        }
        .await;
        result.map(Response::new).map_err(|r: DiscoveryRefusal| {
            tracing::debug!(reason = %r, "discovery resolve refused");
            r.to_status()
        })
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<wire::ResolveRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let shared = self.shared.clone();
        let setup = async {
            let caller = shared.admit(&request)?;
            let slot = shared
                .watches
                .acquire(caller.clone())
                .map_err(|e| DiscoveryRefusal::TooManyWatches { limit: e.limit })?;
            let (destination, mut rx) = shared.subscribe(&caller, request.get_ref())?;
            let first = shared.first_answer(&mut rx).await?;
            Ok::<_, DiscoveryRefusal>((slot, destination, rx, first))
        };
        let (slot, destination, rx, first) = setup.await.map_err(|r| {
            tracing::debug!(reason = %r, "discovery watch refused");
            r.to_status()
        })?;
        let (tx, out) = mpsc::channel(4);
        tokio::spawn(follow_answer(
            shared.stopping.clone(),
            slot,
            destination,
            rx,
            first,
            tx,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }
}

/// Resolves when `stopping` turns `true`; never, if its sender is gone without saying so.
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    if stopping.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Sends `first`, then every changed answer, until the client leaves, the answer expires,
/// or the agent stops. Holds the caller's watch slot while it runs.
async fn follow_answer(
    mut stopping: watch::Receiver<bool>,
    _slot: StreamSlot,
    destination: Destination,
    mut rx: watch::Receiver<Option<Cached>>,
    first: Cached,
    tx: mpsc::Sender<Result<wire::ResolveResponse, Status>>,
) {
    if tx.send(Ok(response(destination, &first))).await.is_err() {
        return;
    }
    rx.mark_unchanged();
    let mut sent = first.resolution;
    let mut valid_until = first.valid_until;
    loop {
        let expiry = async {
            match valid_until {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    let _ = tx.send(Err(DiscoveryRefusal::ShuttingDown.to_status())).await;
                    return;
                }
                let Some(cached) = rx.borrow_and_update().clone() else { continue };
                valid_until = cached.valid_until;
                if cached.resolution != sent {
                    if tx.send(Ok(response(destination, &cached))).await.is_err() {
                        return;
                    }
                    sent = cached.resolution;
                }
            }
            () = expiry => {
                let _ = tx.send(Err(DiscoveryRefusal::Expired.to_status())).await;
                return;
            }
            () = stopped(&mut stopping) => {
                let _ = tx.send(Err(DiscoveryRefusal::ShuttingDown.to_status())).await;
                return;
            }
            () = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use wire::resolution::Kind;

    fn answer(valid_until: Option<Instant>) -> Cached {
        Cached {
            resolution: wire::Resolution {
                kind: Some(Kind::Unknown(wire::Unknown {})),
            },
            valid_until,
        }
    }

    fn trailer(status: &Status) -> Option<&str> {
        status
            .metadata()
            .get(REFUSAL_TRAILER)
            .and_then(|v| v.to_str().ok())
    }

    #[test]
    fn refusals_carry_their_label_in_the_trailer() {
        let expired = DiscoveryRefusal::Expired.to_status();
        assert_eq!(
            REFUSAL_TRAILER, "lanyard-discovery-refusal",
            "the documented key"
        );
        assert_eq!(expired.code(), Code::Unavailable);
        assert_eq!(trailer(&expired), Some("expired"));
        assert_eq!(
            DiscoveryRefusal::Expired.to_string(),
            lanyard_proto::discovery::REFUSAL_EXPIRED,
            "what the proxy reads as expiry"
        );
        for (refusal, label) in [
            (DiscoveryRefusal::NotReady, "not_ready"),
            (DiscoveryRefusal::ShuttingDown, "shutting_down"),
            (DiscoveryRefusal::NoIdentity, "no_identity"),
            (
                DiscoveryRefusal::CallerDestinationBudget { limit: 2048 },
                "caller_destination_budget",
            ),
            (
                DiscoveryRefusal::TooManyDestinations { limit: 16_384 },
                "too_many_destinations",
            ),
        ] {
            assert_eq!(trailer(&refusal.to_status()), Some(label));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_watch_whose_answer_expires_ends_with_the_expired_trailer() {
        let (stop_tx, stopping) = watch::channel(false);
        let slot = StreamLimiter::new(1)
            .acquire(CallerKey {
                uid: 1,
                pod_uid: None,
            })
            .unwrap();
        let destination = Destination {
            address: "10.0.0.1".parse().unwrap(),
            port: 80,
        };
        let until = Instant::now() + Duration::from_secs(60);
        let (answers, rx) = watch::channel(Some(answer(Some(until))));
        let (tx, mut out) = mpsc::channel(4);
        let task = tokio::spawn(follow_answer(
            stopping,
            slot,
            destination,
            rx,
            answer(Some(until)),
            tx,
        ));
        assert!(
            out.recv().await.unwrap().is_ok(),
            "the current answer first"
        );
        let status = out.recv().await.unwrap().unwrap_err();
        assert_eq!(Instant::now(), until, "ended at the expiry, not before");
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(trailer(&status), Some("expired"));
        task.await.unwrap();
        drop((answers, stop_tx));
    }

    #[tokio::test(start_paused = true)]
    async fn a_watch_ended_by_the_agent_stopping_is_not_expired() {
        let (stop_tx, stopping) = watch::channel(false);
        let slot = StreamLimiter::new(1)
            .acquire(CallerKey {
                uid: 1,
                pod_uid: None,
            })
            .unwrap();
        let destination = Destination {
            address: "10.0.0.1".parse().unwrap(),
            port: 80,
        };
        let (_answers, rx) = watch::channel(Some(answer(None)));
        let (tx, mut out) = mpsc::channel(4);
        tokio::spawn(follow_answer(
            stopping,
            slot,
            destination,
            rx,
            answer(None),
            tx,
        ));
        assert!(out.recv().await.unwrap().is_ok());
        stop_tx.send(true).unwrap();
        let status = out.recv().await.unwrap().unwrap_err();
        assert_eq!(trailer(&status), Some("shutting_down"));
    }

    #[tokio::test(start_paused = true)]
    async fn first_answers_are_told_apart() {
        let timeout = Duration::from_secs(3);
        let now = Instant::now();

        let (_tx, mut rx) = watch::channel(Some(answer(None)));
        let (got, result) = first_answer(&mut rx, timeout).await;
        assert!(got.is_ok());
        assert_eq!(result, ResolveResult::CacheHit);

        let (_tx, mut rx) = watch::channel(Some(answer(Some(now))));
        let (got, result) = first_answer(&mut rx, timeout).await;
        assert!(matches!(got, Err(DiscoveryRefusal::Expired)));
        assert_eq!(result, ResolveResult::Expired);

        let (tx, mut rx) = watch::channel(None);
        let answered = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            tx.send(Some(answer(None))).unwrap();
            tx
        });
        let (got, result) = first_answer(&mut rx, timeout).await;
        assert!(got.is_ok());
        assert_eq!(result, ResolveResult::Resolved);
        drop(answered.await.unwrap());

        let (_tx, mut rx) = watch::channel(None::<Cached>);
        let (got, result) = first_answer(&mut rx, timeout).await;
        assert!(matches!(got, Err(DiscoveryRefusal::NotReady)));
        assert_eq!(result, ResolveResult::Unavailable);
        assert_eq!(Instant::now(), now + Duration::from_secs(1) + timeout);
    }

    #[test]
    fn resolve_results_count_under_their_labels() {
        let cache = DiscoveryCache::new(Default::default());
        for result in [
            ResolveResult::CacheHit,
            ResolveResult::CacheHit,
            ResolveResult::Expired,
        ] {
            cache.metrics().resolved(result);
        }
        let count = |label: &str| {
            cache
                .metrics()
                .resolves
                .get_or_create(&vec![("result", label.to_owned())])
                .get()
        };
        assert_eq!(count("cache_hit"), 2);
        assert_eq!(count("expired"), 1);
        assert_eq!(count("resolved"), 0);
    }
}
