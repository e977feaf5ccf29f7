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
//! last sent. The caller is attested once, when its stream opens; its entitlements are
//! resolved again after a change (only after a node view change when the source tells
//! [`WorkloadIdentities::view_version`]). The responses themselves are built once per change
//! and shared by every stream that sends the same one ([`SharedResponses`]), so a change costs
//! one build per distinct identity set, not one per stream. A stream is the response body
//! itself (no task of its own): it computes its next message only when the HTTP/2 connection
//! polls it, so a slow reader holds back nothing but itself, and it always gets the latest
//! state. Streams are counted per caller ([`StreamLimiter`]); the slot lives in the stream,
//! which the server drops when the client goes away, so a disconnect frees it. When the agent
//! shuts down, every stream ends with `Unavailable`, so clients reconnect to the next agent.
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
use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Code, Request, Response, Status};

use super::convert::{self, ConvertError};
use super::limits::{CallerKey, Limits, StreamLimiter, StreamSlot, TooManyStreams};
use super::metrics::{OpenStreamGauge, WorkloadApiMetrics};
use super::shared_responses::{BuildCounts, Purpose, SharedResponse, SharedResponses, WipeSecrets};
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
    /// The stream responses of the current change, built once each.
    responses: SharedResponses,
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
                responses: SharedResponses::new(),
            }),
        }
    }

    /// How many stream responses were built so far (each shared by every stream that sent
    /// it): for tests and diagnostics.
    pub fn responses_built(&self) -> BuildCounts {
        self.shared.responses.builds()
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

    /// The caller's entitlements, re-resolved only when the node view may have changed;
    /// `NoIdentity` when there are none.
    fn entitlements<'c>(&self, caller: &'c mut StreamCaller) -> Result<&'c [Entitlement], Refusal> {
        let version = self.identities.view_version();
        let current = matches!(
            (&caller.resolved, version),
            (Some((Some(at), _)), Some(now)) if *at == now
        );
        if !current {
            caller.resolved = Some((version, self.identities.resolve(&caller.attested)));
        }
        match &caller.resolved {
            Some((_, entitlements)) if !entitlements.is_empty() => Ok(entitlements),
            _ => Err(Refusal::NoIdentity),
        }
    }

    async fn x509_state(
        &self,
        caller: &mut StreamCaller,
        generation: u64,
        purpose: Purpose,
    ) -> Result<SharedResponse<X509svidResponse>, Refusal> {
        let entitlements = self.entitlements(caller)?;
        let build = || async {
            let svids = self.identities.x509_svids(entitlements).await?;
            if svids.is_empty() {
                return Err(Refusal::NoIdentity);
            }
            let bundles = self.identities.bundles();
            convert::x509_svid_response(&svids, &bundles).map_err(Refusal::Convert)
        };
        self.responses
            .x509_svid(generation, entitlements, purpose, build)
            .await
    }

    async fn x509_bundles_state(
        &self,
        caller: &mut StreamCaller,
        generation: u64,
        purpose: Purpose,
    ) -> Result<SharedResponse<X509BundlesResponse>, Refusal> {
        self.entitlements(caller)?;
        let build = || async { Ok(convert::x509_bundles_response(&self.identities.bundles())) };
        self.responses
            .x509_bundles(generation, purpose, build)
            .await
    }

    async fn jwt_bundles_state(
        &self,
        caller: &mut StreamCaller,
        generation: u64,
        purpose: Purpose,
    ) -> Result<SharedResponse<JwtBundlesResponse>, Refusal> {
        self.entitlements(caller)?;
        let build = || async {
            convert::jwt_bundles_response(&self.identities.bundles()).map_err(Refusal::Convert)
        };
        self.responses.jwt_bundles(generation, purpose, build).await
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

/// The caller of one watch stream (attested when the stream opened), and the entitlements
/// it last resolved to, with the node view version they are valid for (`None`: unknown, so
/// resolved again at every change).
struct StreamCaller {
    attested: Attested,
    resolved: Option<(Option<u64>, Vec<Entitlement>)>,
}

/// A message a watch stream sends: how to get the caller's current one.
trait Watched: WipeSecrets + PartialEq + Clone + Send + Sync + 'static {
    fn current(
        shared: &Shared,
        caller: &mut StreamCaller,
        generation: u64,
        purpose: Purpose,
    ) -> impl Future<Output = Result<SharedResponse<Self>, Refusal>> + Send;
}

impl Watched for X509svidResponse {
    fn current(
        shared: &Shared,
        caller: &mut StreamCaller,
        generation: u64,
        purpose: Purpose,
    ) -> impl Future<Output = Result<SharedResponse<Self>, Refusal>> + Send {
        shared.x509_state(caller, generation, purpose)
    }
}

impl Watched for X509BundlesResponse {
    fn current(
        shared: &Shared,
        caller: &mut StreamCaller,
        generation: u64,
        purpose: Purpose,
    ) -> impl Future<Output = Result<SharedResponse<Self>, Refusal>> + Send {
        shared.x509_bundles_state(caller, generation, purpose)
    }
}

impl Watched for JwtBundlesResponse {
    fn current(
        shared: &Shared,
        caller: &mut StreamCaller,
        generation: u64,
        purpose: Purpose,
    ) -> impl Future<Output = Result<SharedResponse<Self>, Refusal>> + Send {
        shared.jwt_bundles_state(caller, generation, purpose)
    }
}

/// One open watch stream: sends its first state, then its state after every change that
/// alters it, until the client leaves (the server drops it), the caller loses its identity,
/// or the agent stops.
struct WatchStream<M: Watched> {
    shared: Arc<Shared>,
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

impl<M: Watched> WatchStream<M> {
    fn into_response_stream(self) -> ResponseStream<M> {
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
            match M::current(&self.shared, &mut self.caller, generation, Purpose::Update).await {
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
        self.shared.metrics.refused(self.method, &end.to_string());
        Some(Err(end.to_status()))
    }
}

impl WorkloadApiService {
    /// Admission for a stream: attest, take a stream slot, subscribe to changes before the
    /// first state is read (so no change between the two is missed), then that first state.
    async fn open_stream<M: Watched, T>(
        &self,
        method: &'static str,
        request: &Request<T>,
    ) -> Result<ResponseStream<M>, Refusal> {
        let caller = self.shared.admit(request).await?;
        let slot = self
            .shared
            .streams
            .acquire(caller.key())
            .map_err(Refusal::TooManyStreams)?;
        let mut changes = self.shared.identities.changes();
        let generation = *changes.borrow_and_update();
        let mut stream_caller = StreamCaller {
            attested: caller.attested,
            resolved: None,
        };
        let first =
            M::current(&self.shared, &mut stream_caller, generation, Purpose::First).await?;
        let stream = WatchStream {
            shared: self.shared.clone(),
            method,
            caller: stream_caller,
            changes,
            stopping: self.shared.stopping.clone(),
            unsent: Some(first.clone()),
            last: first,
            ended: false,
            _guards: StreamGuards {
                _slot: slot,
                _gauge: self.shared.metrics.stream_opened(method),
            },
        };
        Ok(stream.into_response_stream())
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
        self.observe(METHOD, self.open_stream(METHOD, &request))
            .await
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        const METHOD: &str = "FetchX509Bundles";
        self.observe(METHOD, self.open_stream(METHOD, &request))
            .await
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        const METHOD: &str = "FetchJWTBundles";
        self.observe(METHOD, self.open_stream(METHOD, &request))
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
