//! The `SpiffeWorkloadAPI` gRPC service: every RPC of `spec/workload-api.md`, over
//! [`WorkloadIdentities`].
//!
//! Every call is admitted by the socket's admission layer first ([`crate::socket::admission`]):
//! the `workload.spiffe.io: true` metadata (else `InvalidArgument`, before anything else),
//! then attestation of the caller (a refused attestation is `Unavailable`, e.g. the process is
//! gone, or `PermissionDenied`, e.g. the PID now belongs to another process). This service
//! describes itself to that layer ([`WorkloadApiService::admission_policy`]) and reads the
//! attested [`Caller`] from the request. Then: what the caller is entitled to
//! ([`WorkloadIdentities::resolve`]); none: `PermissionDenied` "no identity issued", which
//! clients retry with backoff.
//!
//! Who may read bundles. As in SPIRE (without its `allow_unauthenticated_verifiers` option),
//! the bundle streams (FetchX509Bundles, FetchJWTBundles) need a caller with at least one
//! identity, and end with "no identity issued" when it loses the last one: bundles are not
//! secret, but an agent answering only its workloads gives an attacker on the node nothing
//! to enumerate trust domains with. ValidateJWTSVID needs an attested caller but no identity
//! of its own: a pure verifier (one that holds no SVID) is a legitimate caller, validating
//! against our own trust domain's bundle only.
//!
//! Which bundles a caller is served ([`served_bundles`]): our own trust domain's, plus the
//! federated ones its identities' registrations name (`federates_with`), never others, in
//! every place (`X509SVIDResponse.federated_bundles`, FetchX509Bundles, FetchJWTBundles and
//! ValidateJWTSVID). A stream re-sends when what its caller is served changes, and only
//! then: a change of a federated domain it is not served builds the same response again,
//! which is not sent twice ([`super::watch_stream`]).
//!
//! Streams ([`super::watch_stream`]): the responses themselves are built once per change and
//! shared by every stream that sends the same one ([`SharedResponses`]), so a change costs one
//! build per distinct identity set, not one per stream. Streams are counted per caller
//! ([`StreamLimiter`]).
//!
//! Every refusal is a [`Refusal`], whose `Display` is the metric label.

use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

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
use lanyard_svid::jwt::MAX_AUDIENCES;
use tokio::sync::watch;
use tonic::server::NamedService;
use tonic::{Code, Request, Response, Status};

use super::convert;
use super::jwt_cache::{JwtCache, MintBudget};
use super::limits::Limits;
use super::metrics::WorkloadApiMetrics;
use super::refusal::Refusal;
use super::shared_responses::{BuildCounts, Purpose, SharedResponse, SharedResponses};
use super::watch_stream::{
    Opened, ResponseStream, StreamCaller, StreamGuards, WatchStream, Watched,
};
use crate::identities::{Entitlement, WorkloadIdentities, federation_key, served_bundles};
use crate::socket::{AdmissionPolicy, AdmissionRefusal, Caller, StreamLimiter};

/// Longest audience accepted (one value).
pub const MAX_AUDIENCE_LEN: usize = 1024;

/// The Workload API service. Build it with [`WorkloadApiService::new`], then serve it with
/// [`WorkloadApiService::into_server`] (which applies the message size limits).
#[derive(Clone)]
pub struct WorkloadApiService {
    shared: Arc<Shared>,
}

struct Shared {
    identities: Arc<dyn WorkloadIdentities>,
    streams: StreamLimiter,
    metrics: WorkloadApiMetrics,
    /// Turns `true` when the agent shuts down: every stream then ends.
    stopping: watch::Receiver<bool>,
    /// The stream responses of the current change, built once each.
    responses: SharedResponses,
    /// FetchJWTSVID: minted tokens by (identity, audience set), and each caller's share of
    /// the node's mint budget (see [`super::jwt_cache`]).
    jwt_cache: JwtCache,
    mint_budget: MintBudget,
}

impl WorkloadApiService {
    /// `stopping` turns `true` when the agent shuts down (see [`crate::socket::serve()`]).
    pub fn new(
        identities: Arc<dyn WorkloadIdentities>,
        limits: &Limits,
        metrics: WorkloadApiMetrics,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                identities,
                streams: StreamLimiter::new(limits.streams_per_caller),
                metrics,
                stopping,
                responses: SharedResponses::new(),
                jwt_cache: JwtCache::new(limits.jwt.cached_tokens),
                mint_budget: MintBudget::new(limits.jwt.mints_per_second, limits.jwt.mint_burst),
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
            Err(refusal) => Err(refused(&self.shared.metrics, method, &refusal)),
        }
    }

    /// How the socket's admission layer is to treat calls to this service.
    pub fn admission_policy(&self) -> WorkloadApiAdmission {
        WorkloadApiAdmission {
            metrics: self.shared.metrics.clone(),
        }
    }
}

/// Counts a refused call and its reason; the status to answer.
fn refused(metrics: &WorkloadApiMetrics, method: &'static str, refusal: &Refusal) -> Status {
    metrics.answered(method, refusal.code());
    metrics.refused(method, &refusal.to_string());
    tracing::debug!(method, reason = %refusal, "workload API call refused");
    refusal.to_status()
}

/// The gRPC methods of `SpiffeWorkloadAPI`, as named on the wire and in metrics.
const METHODS: [&str; 7] = [
    "FetchX509SVID",
    "FetchX509Bundles",
    "FetchJWTSVID",
    "FetchJWTBundles",
    "ValidateJWTSVID",
    "FetchWITSVID",
    "FetchWITBundles",
];

/// The Workload API as the socket's admission layer sees it: the `workload.spiffe.io` header
/// on every call, an attested caller on every call but the (unimplemented) WIT ones, and
/// refusals answered and counted as the service's own ([`Refusal`]).
pub struct WorkloadApiAdmission {
    metrics: WorkloadApiMetrics,
}

impl AdmissionPolicy for WorkloadApiAdmission {
    fn service_name(&self) -> &'static str {
        <SpiffeWorkloadApiServer<WorkloadApiService> as NamedService>::NAME
    }

    fn method(&self, name: &str) -> Option<&'static str> {
        METHODS.into_iter().find(|m| *m == name)
    }

    fn requires_header(&self) -> bool {
        true
    }

    fn attests(&self, method: &'static str) -> bool {
        !matches!(method, "FetchWITSVID" | "FetchWITBundles")
    }

    fn refuse(&self, method: &'static str, refusal: AdmissionRefusal) -> Status {
        refused(&self.metrics, method, &Refusal::from(refusal))
    }
}

impl Shared {
    /// JWT-SVIDs for `chosen` (entitlements `caller` holds) and `audience`: cached ones while
    /// more than half their lifetime remains, the others minted by the server if the caller's
    /// share of the node's mint budget allows all of them.
    async fn jwt_svids(
        &self,
        caller: &Caller,
        chosen: &[&Entitlement],
        audience: &[String],
    ) -> Result<Vec<String>, Refusal> {
        let cached: Vec<Option<String>> = chosen
            .iter()
            .map(|e| self.jwt_cache.get(e, audience))
            .collect();
        let misses: Vec<&Entitlement> = chosen
            .iter()
            .zip(&cached)
            .filter(|(_, t)| t.is_none())
            .map(|(e, _)| *e)
            .collect();
        let key = caller.key();
        self.mint_budget
            .take(&key, u32::try_from(misses.len()).unwrap_or(u32::MAX))
            .map_err(|e| {
                tracing::info!(uid = key.uid, pod_uid = ?key.pod_uid, "JWT-SVID mints refused: caller over its share of the mint budget");
                Refusal::RateLimited(e)
            })?;
        let identities = &self.identities;
        let minted =
            futures::future::try_join_all(misses.iter().map(|e| identities.jwt_svid(e, audience)))
                .await?;
        for (e, token) in misses.iter().zip(&minted) {
            self.jwt_cache.insert(e, audience, token);
        }
        let mut minted = minted.into_iter();
        Ok(cached
            .into_iter()
            .map(|t| t.or_else(|| minted.next()).unwrap_or_default())
            .collect())
    }

    /// The bundles a caller entitled to `entitlements` is served, as of now.
    fn served(&self, entitlements: &[Entitlement]) -> lanyard_svid::BundleSet {
        served_bundles(
            &self.identities.own_bundles(),
            &self.identities.bundles(),
            entitlements,
        )
    }

    /// The caller the admission layer attested for this call.
    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Refusal> {
        Caller::of(request)
            .cloned()
            .ok_or(Refusal::NoPeerCredentials)
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
            let bundles = self.served(entitlements);
            convert::x509_svid_response(&svids, entitlements, &bundles).map_err(Refusal::Convert)
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
        let entitlements = self.entitlements(caller)?;
        let key = federation_key(entitlements);
        let build = || async { Ok(convert::x509_bundles_response(&self.served(entitlements))) };
        self.responses
            .x509_bundles(generation, &key, purpose, build)
            .await
    }

    async fn jwt_bundles_state(
        &self,
        caller: &mut StreamCaller,
        generation: u64,
        purpose: Purpose,
    ) -> Result<SharedResponse<JwtBundlesResponse>, Refusal> {
        let entitlements = self.entitlements(caller)?;
        let key = federation_key(entitlements);
        let build = || async {
            convert::jwt_bundles_response(&self.served(entitlements)).map_err(Refusal::Convert)
        };
        self.responses
            .jwt_bundles(generation, &key, purpose, build)
            .await
    }
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

impl Watched<Shared> for X509svidResponse {
    fn current(
        source: &Shared,
        caller: &mut StreamCaller,
        generation: u64,
        purpose: Purpose,
    ) -> impl Future<Output = Result<SharedResponse<Self>, Refusal>> + Send {
        source.x509_state(caller, generation, purpose)
    }
}

impl Watched<Shared> for X509BundlesResponse {
    fn current(
        source: &Shared,
        caller: &mut StreamCaller,
        generation: u64,
        purpose: Purpose,
    ) -> impl Future<Output = Result<SharedResponse<Self>, Refusal>> + Send {
        source.x509_bundles_state(caller, generation, purpose)
    }
}

impl Watched<Shared> for JwtBundlesResponse {
    fn current(
        source: &Shared,
        caller: &mut StreamCaller,
        generation: u64,
        purpose: Purpose,
    ) -> impl Future<Output = Result<SharedResponse<Self>, Refusal>> + Send {
        source.jwt_bundles_state(caller, generation, purpose)
    }
}

impl WorkloadApiService {
    /// Admission for a stream: attest, take a stream slot, subscribe to changes before the
    /// first state is read (so no change between the two is missed), then that first state.
    async fn open_stream<M: Watched<Shared>, T>(
        &self,
        method: &'static str,
        request: &Request<T>,
    ) -> Result<ResponseStream<M>, Refusal> {
        let caller = self.shared.caller(request)?;
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
        let stream = WatchStream::new(Opened {
            source: self.shared.clone(),
            metrics: self.shared.metrics.clone(),
            method,
            caller: stream_caller,
            changes,
            stopping: self.shared.stopping.clone(),
            first,
            guards: StreamGuards {
                _slot: slot,
                _gauge: self.shared.metrics.stream_opened(method),
            },
        });
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
            let caller = self.shared.caller(&request)?;
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
            let tokens = self
                .shared
                .jwt_svids(&caller, &chosen, &body.audience)
                .await?;
            // The same hints as the X.509-SVIDs, unique within this response too.
            let hints = convert::unique_hints(chosen.iter().map(|e| e.hint.as_str()));
            let svids = chosen
                .iter()
                .zip(tokens)
                .zip(hints)
                .map(|((e, token), hint)| Jwtsvid {
                    spiffe_id: e.spiffe_id.to_string(),
                    svid: token,
                    hint,
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
            let caller = self.shared.caller(&request)?;
            let body = request.get_ref();
            if body.audience.is_empty() {
                return Err(Refusal::MissingAudience);
            }
            if body.svid.is_empty() {
                return Err(Refusal::MissingSvid);
            }
            // Validated against the caller's own bundles, as SPIRE's agent does
            // (`getWorkloadBundles`: the agent's trust domain bundle plus the federated
            // bundles of the registration entries matching the caller): a workload federating
            // with B may validate B's JWT-SVIDs, one that does not may not, and a pure
            // verifier without an identity validates our own trust domain's only (before
            // federation, that was everything it could validate, so it keeps that).
            let entitlements = self.shared.identities.resolve(&caller.attested);
            let bundles = self.shared.served(&entitlements);
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
            let _ = request;
            Err::<Self::FetchWITSVIDStream, _>(Refusal::Unimplemented)
        })
        .await
    }

    async fn fetch_wit_bundles(
        &self,
        request: Request<WitBundlesRequest>,
    ) -> Result<Response<Self::FetchWITBundlesStream>, Status> {
        self.observe("FetchWITBundles", async {
            let _ = request;
            Err::<Self::FetchWITBundlesStream, _>(Refusal::Unimplemented)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_is_known_to_admission() {
        let policy = WorkloadApiAdmission {
            metrics: WorkloadApiMetrics::default(),
        };
        assert_eq!(policy.service_name(), "SpiffeWorkloadAPI");
        for method in METHODS {
            assert_eq!(policy.method(method), Some(method));
        }
        assert_eq!(policy.method("Bogus"), None);
        assert!(!policy.attests("FetchWITSVID"));
        assert!(policy.attests("FetchJWTSVID"));
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
}
