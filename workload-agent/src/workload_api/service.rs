//! The `SpiffeWorkloadAPI` gRPC service: every RPC of `spec/workload-api.md`.
//!
//! Every call, in this order:
//! 1. the `workload.spiffe.io: true` metadata (else `InvalidArgument`, before anything else);
//! 2. attestation of the caller from the connection's peer credentials (pinned at accept, see
//!    [`super::socket`]), on every call: a refused attestation is `Unavailable` (the process
//!    is gone, `/proc` unreadable...) or `PermissionDenied` (the PID now belongs to another
//!    process, an untrustworthy cgroup), with the typed reason in the message;
//! 3. what the caller is entitled to ([`WorkloadIdentities::resolve`]); none:
//!    `PermissionDenied` "no identity issued", which clients retry with backoff.
//!
//! Who may read bundles. As in SPIRE (without its `allow_unauthenticated_verifiers` option),
//! the bundle streams (FetchX509Bundles, FetchJWTBundles) need a caller with at least one
//! identity, and end with "no identity issued" when it loses the last one: bundles are not
//! secret, but an agent answering only its workloads gives an attacker on the node nothing
//! to enumerate trust domains with. ValidateJWTSVID needs an attested caller but no identity
//! of its own: a pure verifier (one that holds no SVID) is a legitimate caller.
//!
//! Streams (FetchX509SVID and the bundle streams) send the full current state at once, then
//! again after each [`WorkloadIdentities::changes`] tick whose state differs from what was
//! last sent. They are counted per caller ([`StreamLimiter`]); the slot lives in the stream's
//! task, which ends when the client goes away, so a disconnect frees it. When the agent shuts
//! down, every stream ends with `Unavailable`, so clients reconnect to the next agent.
//!
//! Every refusal is a [`Refusal`], whose `Display` is the metric label.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use lanyard_proto::WORKLOAD_API_HEADER;
use lanyard_proto::workload::spiffe_workload_api_server::{
    SpiffeWorkloadApi, SpiffeWorkloadApiServer,
};
use lanyard_proto::workload::{
    JwtBundlesRequest, JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse,
    ValidateJwtsvidRequest, ValidateJwtsvidResponse, WitBundlesRequest, WitBundlesResponse,
    WitsvidRequest, WitsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svidRequest,
    X509svidResponse,
};
use lanyard_svid::SpiffeId;
use lanyard_svid::jwt::{JwtError, MAX_AUDIENCES};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

use super::convert::{self, ConvertError};
use super::limits::{CallerKey, Limits, StreamLimiter, StreamSlot, TooManyStreams};
use super::metrics::{OpenStreamGauge, WorkloadApiMetrics};
use super::socket::CallerInfo;
use crate::attest::{AttestError, Attested, PeerCred, WorkloadAttestor};
use crate::identities::{Entitlement, IdentityError, WorkloadIdentities};

/// Longest audience accepted (one value).
pub const MAX_AUDIENCE_LEN: usize = 1024;

/// Why a call was refused. `Display` is a snake_case metric label; [`Refusal::message`] is
/// the status message, [`Refusal::code`] its gRPC code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    #[error("missing_header")]
    MissingHeader,
    #[error("bad_header")]
    BadHeader,
    /// The kernel gave no credentials for the connection.
    #[error("no_peer_credentials")]
    NoPeerCredentials,
    /// Attestation failed; `label` is the [`AttestError`] label.
    #[error("attestation_{label}")]
    Attestation {
        label: &'static str,
        message: String,
        denied: bool,
    },
    #[error("no_identity")]
    NoIdentity,
    /// A `spiffe_id` the caller is not entitled to.
    #[error("not_entitled")]
    NotEntitled { spiffe_id: String },
    #[error("not_ready")]
    NotReady(String),
    #[error("agent_not_attested")]
    AgentNotAttested,
    #[error("server_refused")]
    ServerRefused(String),
    #[error("too_many_streams")]
    TooManyStreams(TooManyStreams),
    #[error("missing_audience")]
    MissingAudience,
    #[error("bad_audience")]
    BadAudience(String),
    #[error("bad_spiffe_id")]
    BadSpiffeId(String),
    #[error("missing_svid")]
    MissingSvid,
    /// ValidateJWTSVID refused the token; the label is the [`JwtError`] label.
    #[error("jwt_{0}")]
    InvalidJwt(JwtError),
    #[error("unimplemented")]
    Unimplemented,
    #[error("shutting_down")]
    ShuttingDown,
    /// The identity source stopped (the agent is going down).
    #[error("source_stopped")]
    SourceStopped,
    /// What the manager handed over cannot be served.
    #[error("{0}")]
    Convert(ConvertError),
}

impl Refusal {
    pub fn code(&self) -> Code {
        match self {
            Self::MissingHeader
            | Self::BadHeader
            | Self::MissingAudience
            | Self::BadAudience(_)
            | Self::BadSpiffeId(_)
            | Self::MissingSvid
            | Self::InvalidJwt(_) => Code::InvalidArgument,
            Self::Attestation { denied: true, .. }
            | Self::NoIdentity
            | Self::NotEntitled { .. }
            | Self::ServerRefused(_) => Code::PermissionDenied,
            Self::NoPeerCredentials
            | Self::Attestation { denied: false, .. }
            | Self::NotReady(_)
            | Self::AgentNotAttested
            | Self::ShuttingDown
            | Self::SourceStopped
            | Self::Convert(_) => Code::Unavailable,
            Self::TooManyStreams(_) => Code::ResourceExhausted,
            Self::Unimplemented => Code::Unimplemented,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Self::MissingHeader => {
                format!("security header missing: set metadata {WORKLOAD_API_HEADER}: true")
            }
            Self::BadHeader => format!(
                "security header invalid: metadata {WORKLOAD_API_HEADER} must be exactly one \
                 value `true`"
            ),
            Self::NoPeerCredentials => {
                "the kernel gave no peer credentials for this connection".to_owned()
            }
            Self::Attestation { label, message, .. } => {
                format!("workload attestation failed ({label}): {message}")
            }
            // Exactly this text: the Rust client matches it to retry with backoff.
            Self::NoIdentity => "no identity issued".to_owned(),
            Self::NotEntitled { spiffe_id } => {
                format!("this workload is not entitled to {spiffe_id}")
            }
            Self::NotReady(why) => IdentityError::NotReady(why.clone()).message(),
            Self::AgentNotAttested => IdentityError::AgentNotAttested.message(),
            Self::ServerRefused(why) => IdentityError::Refused(why.clone()).message(),
            Self::TooManyStreams(e) => e.message(),
            Self::MissingAudience => "audience is required".to_owned(),
            Self::BadAudience(why) => format!("bad audience: {why}"),
            Self::BadSpiffeId(why) => format!("spiffe_id is not a SPIFFE ID: {why}"),
            Self::MissingSvid => "svid (the token to validate) is required".to_owned(),
            Self::InvalidJwt(e) => format!("invalid JWT-SVID ({}): {}", e.label(), e.message()),
            Self::Unimplemented => "Lanyard does not serve WIT-SVIDs".to_owned(),
            Self::ShuttingDown => "the agent is shutting down; reconnect".to_owned(),
            Self::SourceStopped => "the agent's identity source stopped; reconnect".to_owned(),
            Self::Convert(e) => e.message(),
        }
    }

    pub fn to_status(&self) -> Status {
        Status::new(self.code(), self.message())
    }

    /// Whether an open stream ends on this refusal (else the last state stays served and
    /// the next change is awaited).
    fn ends_stream(&self) -> bool {
        matches!(self, Self::NoIdentity | Self::NotEntitled { .. })
    }
}

impl From<IdentityError> for Refusal {
    fn from(e: IdentityError) -> Self {
        match e {
            IdentityError::NoIdentity => Self::NoIdentity,
            IdentityError::NotReady(why) => Self::NotReady(why),
            IdentityError::Refused(why) => Self::ServerRefused(why),
            IdentityError::AgentNotAttested => Self::AgentNotAttested,
        }
    }
}

impl From<AttestError> for Refusal {
    fn from(e: AttestError) -> Self {
        attestation_refusal(&e)
    }
}

fn attestation_refusal(e: &AttestError) -> Refusal {
    // A different process behind the PID, or a cgroup claiming a pod it cannot prove, is a
    // denial; anything else (gone, unreadable) is a temporary failure the client may retry.
    let denied = matches!(e, AttestError::PidReused { .. } | AttestError::Cgroup(..));
    Refusal::Attestation {
        label: e.label(),
        message: e.message(),
        denied,
    }
}

/// A streaming RPC's message stream.
pub type ResponseStream<M> = Pin<Box<dyn Stream<Item = Result<M, Status>> + Send + 'static>>;

/// The Workload API service. Build it with [`WorkloadApiService::new`], then serve it with
/// [`WorkloadApiService::into_server`] (which applies the message size limits).
#[derive(Clone)]
pub struct WorkloadApiService {
    shared: Arc<Shared>,
}

struct Shared {
    identities: Arc<dyn WorkloadIdentities>,
    attestor: Arc<WorkloadAttestor>,
    streams: StreamLimiter,
    metrics: WorkloadApiMetrics,
    /// Turns `true` when the agent shuts down: every stream then ends.
    stopping: watch::Receiver<bool>,
}

/// An attested caller.
struct Caller {
    cred: PeerCred,
    attested: Attested,
}

impl Caller {
    fn key(&self) -> CallerKey {
        CallerKey {
            uid: self.cred.uid,
            pod_uid: self.attested.pod.as_ref().map(|p| p.pod_uid().to_owned()),
        }
    }
}

impl WorkloadApiService {
    /// `stopping` turns `true` when the agent shuts down (see [`super::serve`]).
    pub fn new(
        identities: Arc<dyn WorkloadIdentities>,
        attestor: Arc<WorkloadAttestor>,
        limits: &Limits,
        metrics: WorkloadApiMetrics,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                identities,
                attestor,
                streams: StreamLimiter::new(limits.streams_per_caller),
                metrics,
                stopping,
            }),
        }
    }

    /// The tonic service, with the request and response size bounds of `limits`.
    pub fn into_server(self, limits: &Limits) -> SpiffeWorkloadApiServer<Self> {
        SpiffeWorkloadApiServer::new(self)
            .max_decoding_message_size(limits.max_request_bytes)
            .max_encoding_message_size(limits.max_response_bytes)
    }

    /// Runs `call`, and counts its outcome.
    async fn observe<T>(
        &self,
        method: &'static str,
        call: impl Future<Output = Result<T, Refusal>>,
    ) -> Result<Response<T>, Status> {
        match call.await {
            Ok(value) => {
                self.shared.metrics.answered(method, Code::Ok);
                Ok(Response::new(value))
            }
            Err(refusal) => {
                self.shared.metrics.answered(method, refusal.code());
                self.shared.metrics.refused(method, &refusal.to_string());
                tracing::debug!(method, reason = %refusal, "workload API call refused");
                Err(refusal.to_status())
            }
        }
    }
}

impl Shared {
    /// Header, then attestation: the common start of every call.
    async fn admit<T>(&self, request: &Request<T>) -> Result<Caller, Refusal> {
        check_header(request)?;
        let (cred, pin_error) = caller_credentials(request);
        if let Some(e) = pin_error {
            return Err(attestation_refusal(&e));
        }
        let cred = cred.ok_or(Refusal::NoPeerCredentials)?;
        let attested = self.attestor.attest(cred).await?;
        Ok(Caller { cred, attested })
    }

    fn resolve(&self, caller: &Caller) -> Result<Vec<Entitlement>, Refusal> {
        let entitlements = self.identities.resolve(&caller.attested);
        if entitlements.is_empty() {
            Err(Refusal::NoIdentity)
        } else {
            Ok(entitlements)
        }
    }

    async fn x509_state(&self, attested: &Attested) -> Result<X509svidResponse, Refusal> {
        let entitlements = self.identities.resolve(attested);
        if entitlements.is_empty() {
            return Err(Refusal::NoIdentity);
        }
        let svids = self.identities.x509_svids(&entitlements).await?;
        if svids.is_empty() {
            return Err(Refusal::NoIdentity);
        }
        let bundles = self.identities.bundles();
        convert::x509_svid_response(&svids, &bundles).map_err(Refusal::Convert)
    }

    fn x509_bundles_state(&self, attested: &Attested) -> Result<X509BundlesResponse, Refusal> {
        if self.identities.resolve(attested).is_empty() {
            return Err(Refusal::NoIdentity);
        }
        Ok(convert::x509_bundles_response(&self.identities.bundles()))
    }

    fn jwt_bundles_state(&self, attested: &Attested) -> Result<JwtBundlesResponse, Refusal> {
        if self.identities.resolve(attested).is_empty() {
            return Err(Refusal::NoIdentity);
        }
        convert::jwt_bundles_response(&self.identities.bundles()).map_err(Refusal::Convert)
    }
}

fn check_header<T>(request: &Request<T>) -> Result<(), Refusal> {
    let mut values = request.metadata().get_all(WORKLOAD_API_HEADER).iter();
    match (values.next(), values.next()) {
        (None, _) => Err(Refusal::MissingHeader),
        (Some(value), None) if value.as_bytes() == b"true" => Ok(()),
        _ => Err(Refusal::BadHeader),
    }
}

/// The caller's credentials: from our own accept loop ([`CallerInfo`], pinned), or from
/// tonic's plain Unix-socket connect info when served some other way (unpinned).
fn caller_credentials<T>(request: &Request<T>) -> (Option<PeerCred>, Option<Arc<AttestError>>) {
    if let Some(info) = request.extensions().get::<CallerInfo>() {
        return (info.cred, info.pin_error.clone());
    }
    if let Some(info) = request
        .extensions()
        .get::<tonic::transport::server::UdsConnectInfo>()
    {
        return (info.peer_cred.map(PeerCred::from), None);
    }
    (None, None)
}

/// Validates the requested audiences: at least one, none empty, bounded.
fn check_audiences(audiences: &[String]) -> Result<(), Refusal> {
    if audiences.is_empty() {
        return Err(Refusal::MissingAudience);
    }
    if audiences.len() > MAX_AUDIENCES {
        return Err(Refusal::BadAudience(format!(
            "{} audiences, more than the {MAX_AUDIENCES} allowed",
            audiences.len()
        )));
    }
    for (index, audience) in audiences.iter().enumerate() {
        if audience.is_empty() {
            return Err(Refusal::BadAudience(format!("audience {index} is empty")));
        }
        if audience.len() > MAX_AUDIENCE_LEN {
            return Err(Refusal::BadAudience(format!(
                "audience {index} is longer than {MAX_AUDIENCE_LEN} bytes"
            )));
        }
    }
    Ok(())
}

/// Resolves when `stopping` turns `true`; never, if its sender is gone without saying so.
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    if stopping.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// What a watch stream holds for its lifetime: its caller slot and its gauge.
struct StreamGuards {
    _slot: StreamSlot,
    _gauge: OpenStreamGauge,
}

/// Serves `first` at once, then `next()` after every change that alters it, until the
/// client leaves, the caller loses its identity, or the agent stops.
fn watch_stream<M, F, Fut>(
    shared: Arc<Shared>,
    method: &'static str,
    guards: StreamGuards,
    mut changes: watch::Receiver<u64>,
    first: M,
    mut next: F,
) -> ResponseStream<M>
where
    M: PartialEq + Clone + Send + 'static,
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<M, Refusal>> + Send,
{
    // One message in flight: each carries the full state, so a slow reader loses nothing.
    let (tx, rx) = mpsc::channel(1);
    let mut stopping = shared.stopping.clone();
    tokio::spawn(async move {
        let _guards = guards;
        if tx.send(Ok(first.clone())).await.is_err() {
            return;
        }
        let mut last = first;
        let end = loop {
            tokio::select! {
                _ = tx.closed() => break None,
                _ = stopped(&mut stopping) => break Some(Refusal::ShuttingDown),
                changed = changes.changed() => {
                    if changed.is_err() {
                        break Some(Refusal::SourceStopped);
                    }
                    match next().await {
                        Ok(state) if state == last => {}
                        Ok(state) => {
                            if tx.send(Ok(state.clone())).await.is_err() {
                                break None;
                            }
                            last = state;
                        }
                        Err(refusal) if refusal.ends_stream() => break Some(refusal),
                        Err(refusal) => {
                            // Keep serving the last state (still valid); the manager ticks
                            // `changes` again when it has something new.
                            tracing::warn!(method, reason = %refusal, detail = %refusal.message(), "workload API stream update skipped");
                        }
                    }
                }
            }
        };
        if let Some(refusal) = end {
            shared.metrics.refused(method, &refusal.to_string());
            let _ = tx.send(Err(refusal.to_status())).await;
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

impl WorkloadApiService {
    /// Admission for a stream: attest, take a stream slot, subscribe to changes before the
    /// first state is read (so no change between the two is missed).
    async fn open_stream<T>(
        &self,
        method: &'static str,
        request: &Request<T>,
    ) -> Result<(Caller, StreamGuards, watch::Receiver<u64>), Refusal> {
        let caller = self.shared.admit(request).await?;
        let slot = self
            .shared
            .streams
            .acquire(caller.key())
            .map_err(Refusal::TooManyStreams)?;
        let mut changes = self.shared.identities.changes();
        changes.borrow_and_update();
        let guards = StreamGuards {
            _slot: slot,
            _gauge: self.shared.metrics.stream_opened(method),
        };
        Ok((caller, guards, changes))
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApiService {
    type FetchX509SVIDStream = ResponseStream<X509svidResponse>;
    type FetchX509BundlesStream = ResponseStream<X509BundlesResponse>;
    type FetchJWTBundlesStream = ResponseStream<JwtBundlesResponse>;
    type FetchWITSVIDStream = ResponseStream<WitsvidResponse>;
    type FetchWITBundlesStream = ResponseStream<WitBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        const METHOD: &str = "FetchX509SVID";
        self.observe(METHOD, async {
            let (caller, guards, changes) = self.open_stream(METHOD, &request).await?;
            let first = self.shared.x509_state(&caller.attested).await?;
            let shared = self.shared.clone();
            let attested = caller.attested;
            let next = move || {
                let shared = shared.clone();
                let attested = attested.clone();
                async move { shared.x509_state(&attested).await }
            };
            Ok(watch_stream(
                self.shared.clone(),
                METHOD,
                guards,
                changes,
                first,
                next,
            ))
        })
        .await
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        const METHOD: &str = "FetchX509Bundles";
        self.observe(METHOD, async {
            let (caller, guards, changes) = self.open_stream(METHOD, &request).await?;
            let first = self.shared.x509_bundles_state(&caller.attested)?;
            let shared = self.shared.clone();
            let attested = caller.attested;
            let next = move || std::future::ready(shared.x509_bundles_state(&attested));
            Ok(watch_stream(
                self.shared.clone(),
                METHOD,
                guards,
                changes,
                first,
                next,
            ))
        })
        .await
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        const METHOD: &str = "FetchJWTBundles";
        self.observe(METHOD, async {
            let (caller, guards, changes) = self.open_stream(METHOD, &request).await?;
            let first = self.shared.jwt_bundles_state(&caller.attested)?;
            let shared = self.shared.clone();
            let attested = caller.attested;
            let next = move || std::future::ready(shared.jwt_bundles_state(&attested));
            Ok(watch_stream(
                self.shared.clone(),
                METHOD,
                guards,
                changes,
                first,
                next,
            ))
        })
        .await
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        self.observe("FetchJWTSVID", async {
            let caller = self.shared.admit(&request).await?;
            let body = request.get_ref();
            check_audiences(&body.audience)?;
            let wanted = if body.spiffe_id.is_empty() {
                None
            } else {
                Some(
                    SpiffeId::parse(&body.spiffe_id)
                        .map_err(|e| Refusal::BadSpiffeId(e.to_string()))?,
                )
            };
            let entitlements = self.shared.resolve(&caller)?;
            let chosen: Vec<&Entitlement> = match &wanted {
                None => entitlements.iter().collect(),
                Some(id) => entitlements
                    .iter()
                    .filter(|e| &e.spiffe_id == id)
                    .take(1)
                    .collect(),
            };
            if chosen.is_empty() {
                return Err(Refusal::NotEntitled {
                    spiffe_id: body.spiffe_id.clone(),
                });
            }
            let identities = &self.shared.identities;
            let tokens = futures::future::try_join_all(
                chosen
                    .iter()
                    .map(|e| identities.jwt_svid(e, &body.audience)),
            )
            .await?;
            let svids = chosen
                .iter()
                .zip(tokens)
                .map(|(e, token)| Jwtsvid {
                    spiffe_id: e.spiffe_id.to_string(),
                    svid: token,
                    hint: String::new(),
                })
                .collect();
            Ok(JwtsvidResponse { svids })
        })
        .await
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        self.observe("ValidateJWTSVID", async {
            self.shared.admit(&request).await?;
            let body = request.get_ref();
            if body.audience.is_empty() {
                return Err(Refusal::MissingAudience);
            }
            if body.svid.is_empty() {
                return Err(Refusal::MissingSvid);
            }
            let bundles = self.shared.identities.bundles();
            let validated = lanyard_svid::jwt::validate(
                &body.svid,
                &body.audience,
                &bundles,
                SystemTime::now(),
            )
            .map_err(Refusal::InvalidJwt)?;
            Ok(convert::validate_response(&validated))
        })
        .await
    }

    async fn fetch_witsvid(
        &self,
        request: Request<WitsvidRequest>,
    ) -> Result<Response<Self::FetchWITSVIDStream>, Status> {
        self.observe("FetchWITSVID", async {
            check_header(&request)?;
            Err::<Self::FetchWITSVIDStream, _>(Refusal::Unimplemented)
        })
        .await
    }

    async fn fetch_wit_bundles(
        &self,
        request: Request<WitBundlesRequest>,
    ) -> Result<Response<Self::FetchWITBundlesStream>, Status> {
        self.observe("FetchWITBundles", async {
            check_header(&request)?;
            Err::<Self::FetchWITBundlesStream, _>(Refusal::Unimplemented)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_with(values: &[&str]) -> Request<()> {
        let mut request = Request::new(());
        for v in values {
            request
                .metadata_mut()
                .append(WORKLOAD_API_HEADER, v.parse().unwrap());
        }
        request
    }

    #[test]
    fn header_must_be_exactly_one_true() {
        assert!(check_header(&request_with(&["true"])).is_ok());
        assert!(matches!(
            check_header(&request_with(&[])),
            Err(Refusal::MissingHeader)
        ));
        for bad in [&["false"][..], &["TRUE"], &["true", "true"], &["1"]] {
            assert!(
                matches!(check_header(&request_with(bad)), Err(Refusal::BadHeader)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn audiences_are_checked() {
        assert!(check_audiences(&["a".into()]).is_ok());
        assert!(matches!(
            check_audiences(&[]),
            Err(Refusal::MissingAudience)
        ));
        assert!(matches!(
            check_audiences(&["a".into(), String::new()]),
            Err(Refusal::BadAudience(_))
        ));
        assert!(matches!(
            check_audiences(&["x".repeat(MAX_AUDIENCE_LEN + 1)]),
            Err(Refusal::BadAudience(_))
        ));
        assert!(matches!(
            check_audiences(&vec!["a".to_owned(); MAX_AUDIENCES + 1]),
            Err(Refusal::BadAudience(_))
        ));
    }

    #[test]
    fn no_identity_text_and_codes() {
        assert_eq!(Refusal::NoIdentity.message(), "no identity issued");
        assert_eq!(Refusal::NoIdentity.code(), Code::PermissionDenied);
        assert_eq!(Refusal::MissingHeader.code(), Code::InvalidArgument);
        assert_eq!(
            Refusal::TooManyStreams(TooManyStreams { limit: 1 }).code(),
            Code::ResourceExhausted
        );
        assert_eq!(
            Refusal::from(IdentityError::NotReady("x".into())).code(),
            Code::Unavailable
        );
        assert_eq!(Refusal::NoIdentity.to_string(), "no_identity");
    }
}
