//! The `envoy.service.secret.v3.SecretDiscoveryService` gRPC service over
//! [`WorkloadIdentities`].
//!
//! Every call is admitted by the socket's admission layer first ([`crate::socket::admission`])
//! without the `workload.spiffe.io` header (Envoy does not send it; SPIRE exempts SDS from it
//! too), the caller attested exactly as for the Workload API and handed down as a [`Caller`].
//! A caller holding no identity is refused `PermissionDenied` "no identity issued".
//!
//! - `StreamSecrets`: see [`super::stream`].
//! - `FetchSecrets`: one answer, `version_info` and `nonce` empty (as SPIRE).
//! - `DeltaSecrets`: `Unimplemented` (as SPIRE).

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use tokio::sync::watch;
use tonic::server::NamedService;
use tonic::{Request, Response, Status, Streaming};

use super::limits::SdsLimits;
use super::names::Requested;
use super::node::ValidationMode;
use super::refusal::SdsRefusal;
use super::secrets::{self, Resources, Snapshot, secret_type_url};
use super::stream::{ResponseStream, SecretStream};
use crate::attest::Attested;
use crate::identities::{WorkloadIdentities, bundles_for};
use crate::socket::{AdmissionPolicy, AdmissionRefusal, Caller, StreamLimiter};

/// The SDS service. Build it with [`SdsService::new`], serve it with
/// [`SdsService::into_server`] (which applies the message size bounds).
#[derive(Clone)]
pub struct SdsService {
    shared: Arc<Shared>,
    limits: SdsLimits,
}

pub(super) struct Shared {
    identities: Arc<dyn WorkloadIdentities>,
    pub(super) streams: StreamLimiter,
    /// Turns `true` when the agent shuts down: every stream then ends.
    pub(super) stopping: watch::Receiver<bool>,
}

impl SdsService {
    /// `stopping` turns `true` when the agent shuts down (see [`crate::socket::serve()`]).
    pub fn new(
        identities: Arc<dyn WorkloadIdentities>,
        limits: SdsLimits,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                identities,
                streams: StreamLimiter::new(limits.streams_per_caller),
                stopping,
            }),
            limits,
        }
    }

    /// The tonic service, with the request and response size bounds.
    pub fn into_server(self) -> SecretDiscoveryServiceServer<Self> {
        let limits = self.limits.clone();
        SecretDiscoveryServiceServer::new(self)
            .max_decoding_message_size(limits.max_request_bytes)
            .max_encoding_message_size(limits.max_response_bytes)
    }

    /// How the socket's admission layer is to treat calls to this service.
    pub fn admission_policy(&self) -> SdsAdmission {
        SdsAdmission
    }
}

/// The gRPC methods of the service, as named on the wire and in logs.
const METHODS: [&str; 3] = ["StreamSecrets", "FetchSecrets", "DeltaSecrets"];

/// SDS as the socket's admission layer sees it: no `workload.spiffe.io` header (Envoy does
/// not send it), an attested caller on every call but the unimplemented `DeltaSecrets`.
pub struct SdsAdmission;

impl AdmissionPolicy for SdsAdmission {
    fn service_name(&self) -> &'static str {
        <SecretDiscoveryServiceServer<SdsService> as NamedService>::NAME
    }

    fn method(&self, name: &str) -> Option<&'static str> {
        METHODS.into_iter().find(|m| *m == name)
    }

    fn requires_header(&self) -> bool {
        false
    }

    fn attests(&self, method: &'static str) -> bool {
        method != "DeltaSecrets"
    }

    fn refuse(&self, method: &'static str, refusal: AdmissionRefusal) -> Status {
        refused(method, &SdsRefusal::from(refusal))
    }
}

/// Logs a refused call; the status to answer.
pub(super) fn refused(method: &'static str, refusal: &SdsRefusal) -> Status {
    tracing::debug!(method, reason = %refusal, "SDS call refused");
    refusal.to_status()
}

impl Shared {
    /// The Secrets answering `requested` for `attested`, now.
    pub(super) async fn answer(
        &self,
        attested: &Attested,
        requested: &Requested,
        mode: ValidationMode,
    ) -> Result<Resources, SdsRefusal> {
        let entitlements = self.identities.resolve(attested);
        if entitlements.is_empty() {
            return Err(SdsRefusal::NoIdentity);
        }
        let svids = if requested.wants_certificates() {
            self.identities.x509_svids(&entitlements).await?
        } else {
            Vec::new()
        };
        let bundles = bundles_for(&self.identities.bundles(), &entitlements);
        secrets::build(
            requested,
            &Snapshot {
                entitlements: &entitlements,
                svids: &svids,
                bundles: &bundles,
            },
            mode,
        )
    }

    pub(super) fn changes(&self) -> watch::Receiver<u64> {
        self.identities.changes()
    }
}

/// The request's names, after checking its `type_url` (empty or the Secret's).
pub(super) fn requested_of(request: &DiscoveryRequest) -> Result<Requested, SdsRefusal> {
    if !request.type_url.is_empty() && request.type_url != secret_type_url() {
        return Err(SdsRefusal::WrongTypeUrl(request.type_url.clone()));
    }
    Ok(Requested::parse(&request.resource_names)?)
}

/// The caller the admission layer attested for this call.
fn caller<T>(request: &Request<T>) -> Result<Caller, SdsRefusal> {
    Caller::of(request)
        .cloned()
        .ok_or_else(|| SdsRefusal::from(AdmissionRefusal::NoPeerCredentials))
}

impl SdsService {
    async fn fetch(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<DiscoveryResponse, SdsRefusal> {
        let caller = caller(&request)?;
        let body = request.get_ref();
        let requested = requested_of(body)?;
        let mode = ValidationMode::of(body.node.as_ref());
        let resources = self
            .shared
            .answer(&caller.attested, &requested, mode)
            .await?;
        tracing::debug!(names = ?resources.names(), %mode, "FetchSecrets answered");
        Ok(DiscoveryResponse {
            version_info: String::new(),
            resources: resources.to_any(),
            type_url: secret_type_url(),
            nonce: String::new(),
            ..DiscoveryResponse::default()
        })
    }

    async fn open_stream(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<ResponseStream<DiscoveryResponse>, SdsRefusal> {
        let caller = caller(&request)?;
        // Refused at once, like the Workload API: a caller without identity gets nothing.
        if self.shared.identities.resolve(&caller.attested).is_empty() {
            return Err(SdsRefusal::NoIdentity);
        }
        let slot = self
            .shared
            .streams
            .acquire(caller.key())
            .map_err(SdsRefusal::TooManyStreams)?;
        let stream = SecretStream::new(
            self.shared.clone(),
            caller.attested,
            request.into_inner(),
            slot,
        );
        Ok(stream.into_response_stream())
    }
}

#[tonic::async_trait]
impl SecretDiscoveryService for SdsService {
    type DeltaSecretsStream = ResponseStream<DeltaDiscoveryResponse>;
    type StreamSecretsStream = ResponseStream<DiscoveryResponse>;

    async fn delta_secrets(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        drop(request);
        Err(refused("DeltaSecrets", &SdsRefusal::DeltaUnimplemented))
    }

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        self.open_stream(request)
            .await
            .map(Response::new)
            .map_err(|r| refused("StreamSecrets", &r))
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        self.fetch(request)
            .await
            .map(Response::new)
            .map_err(|r| refused("FetchSecrets", &r))
    }
}

/// The node a request names, if any (Envoy sends it on a stream's first request).
pub(super) fn node_of(request: &DiscoveryRequest) -> Option<&Node> {
    request.node.as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_knows_the_methods_and_skips_the_header() {
        let policy = SdsAdmission;
        assert_eq!(
            policy.service_name(),
            "envoy.service.secret.v3.SecretDiscoveryService"
        );
        for method in METHODS {
            assert_eq!(policy.method(method), Some(method));
        }
        assert_eq!(policy.method("Bogus"), None);
        assert!(!policy.requires_header());
        assert!(policy.attests("StreamSecrets"));
        assert!(policy.attests("FetchSecrets"));
        assert!(!policy.attests("DeltaSecrets"));
    }

    #[test]
    fn type_url_is_checked() {
        let mut request = DiscoveryRequest::default();
        assert_eq!(requested_of(&request).unwrap(), Requested::Everything);
        request.type_url = secret_type_url();
        assert!(requested_of(&request).is_ok());
        request.type_url = "type.googleapis.com/envoy.config.cluster.v3.Cluster".into();
        assert!(matches!(
            requested_of(&request),
            Err(SdsRefusal::WrongTypeUrl(_))
        ));
    }
}
