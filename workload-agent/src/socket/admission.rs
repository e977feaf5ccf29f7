//! The one admission layer of the agent's socket: a tower layer on the tonic server that every
//! call of every service mounted by [`super::serve()`] goes through, before the service sees it.
//!
//! For a call to a mounted service's known method, in this order (as SPIRE's endpoint
//! middleware does):
//! 1. the `workload.spiffe.io: true` metadata, for a service that requires it
//!    ([`AdmissionPolicy::requires_header`]: the SPIFFE Workload API does; Envoy SDS does not,
//!    since Envoy never sends it, as SPIRE exempts SDS from it); missing or wrong is refused
//!    here;
//! 2. the caller, from the connection's peer credentials (pinned at accept, see
//!    [`super::accept`]), attested once for the call; a refused attestation is refused here.
//!    On a pod's own socket the attestor is handed that socket's pod (known from the CSI
//!    mount, see [`super::pods`]): it is the caller's pod, and a caller whose cgroup names
//!    another pod is refused (`attestation_pod_mismatch`);
//! 3. the attested [`Caller`] is put in the request's extensions, where the service reads it
//!    ([`Caller::of`]). Services never read peer credentials themselves.
//!
//! Every call (to any path) also counts as an open stream of its connection from the moment
//! it reaches this layer until its response body is dropped ([`super::idle`]).
//!
//! Request bodies. A refused call is answered without polling its body; h2 holds what the
//! client sent of it within the stream and connection receive windows
//! ([`super::ConnectionLimits::stream_window_bytes`], `connection_window_bytes`, 64 KiB each)
//! and frees it when the request is dropped. Nothing here or below decodes a body before the
//! call is admitted.
//!
//! How a refusal is answered (its gRPC code, message, trailers and metrics) is the service's
//! own: each mounted service describes itself with an [`AdmissionPolicy`]. Calls to a service
//! or method nobody mounted pass through untouched (tonic answers `Unimplemented`), so an
//! unknown name never becomes a metric label.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http::HeaderMap;
use http_body_util::BodyExt as _;
use lanyard_proto::WORKLOAD_API_HEADER;
use tonic::Status;
use tonic::body::Body;
use tower::{Layer, Service};

use super::accept::PinnedPeer;
use super::caller::Caller;
use crate::attest::{AttestError, PeerCred, PinnedProcess, SocketOrigin, WorkloadAttestor};

/// Why the admission layer refused a call. Each service turns it into its own refusal.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AdmissionRefusal {
    #[error("missing_header")]
    MissingHeader,
    #[error("bad_header")]
    BadHeader,
    /// The kernel gave no credentials for the connection (or the call did not come through
    /// the socket's accept loop).
    #[error("no_peer_credentials")]
    NoPeerCredentials,
    /// Pinning at accept or attesting the call failed.
    #[error("attestation_{}", .0.label())]
    Attestation(Arc<AttestError>),
}

/// What the admission layer needs to know of a service mounted on the socket.
pub trait AdmissionPolicy: Send + Sync + 'static {
    /// The gRPC service name (the first segment of its paths), e.g. `SpiffeWorkloadAPI`.
    fn service_name(&self) -> &'static str;
    /// The method's name as the service labels it, when `name` is one of its methods.
    fn method(&self, name: &str) -> Option<&'static str>;
    /// Whether calls must carry `workload.spiffe.io: true`.
    fn requires_header(&self) -> bool;
    /// Whether `method` needs an attested caller (`false`: the header check only).
    fn attests(&self, method: &'static str) -> bool;
    /// The answer to a refused call of `method` (counting it, if the service counts).
    fn refuse(&self, method: &'static str, refusal: AdmissionRefusal) -> Status;
}

/// The admission layer; see the module docs.
#[derive(Clone)]
pub struct AdmissionLayer {
    attestor: Arc<WorkloadAttestor>,
    policies: Arc<[Arc<dyn AdmissionPolicy>]>,
}

impl AdmissionLayer {
    pub fn new(attestor: Arc<WorkloadAttestor>, policies: Vec<Arc<dyn AdmissionPolicy>>) -> Self {
        Self {
            attestor,
            policies: policies.into(),
        }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admission {
            inner,
            layer: self.clone(),
        }
    }
}

/// The admission layer around the services' router.
#[derive(Clone)]
pub struct Admission<S> {
    inner: S,
    layer: AdmissionLayer,
}

impl<S> Service<http::Request<Body>> for Admission<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // The clone is not known to be ready; the one polled ready goes with this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        // The stream is open (for the idle timeout) until its response body is dropped.
        let open = request
            .extensions()
            .get::<PinnedPeer>()
            .map(|peer| peer.activity.stream_opened());
        let Some((policy, method)) = self.policy_of(request.uri().path()) else {
            let call = inner.call(request);
            return Box::pin(async move { Ok(counted(call.await?, open)) });
        };
        // What the checks need is taken out first: the request body is not `Sync`, so the
        // request itself cannot be borrowed across the attestation's await.
        let checked = check(policy.as_ref(), method, &request);
        let attestor = self.layer.attestor.clone();
        Box::pin(async move {
            let admitted = match checked {
                Ok(Some(peer)) => attest(&attestor, peer).await.map(Some),
                Ok(None) => Ok(None),
                Err(refusal) => Err(refusal),
            };
            match admitted {
                Ok(Some(caller)) => {
                    request.extensions_mut().insert(caller);
                }
                Ok(None) => {}
                Err(refusal) => {
                    // The request (and whatever h2 holds of its body) is dropped unread here.
                    return Ok(counted(policy.refuse(method, refusal).into_http(), open));
                }
            }
            Ok(counted(inner.call(request).await?, open))
        })
    }
}

/// `response`, holding `open` (the stream's count on its connection) until its body is
/// dropped: the end of the call, or of the stream for a streaming one.
fn counted(
    response: http::Response<Body>,
    open: Option<super::idle::OpenStream>,
) -> http::Response<Body> {
    let Some(open) = open else {
        return response;
    };
    response.map(|body| {
        Body::new(body.map_frame(move |frame| {
            let _held = &open;
            frame
        }))
    })
}

/// Whom the admission layer attests: the process pinned at accept, or (outside the socket's
/// accept loop) credentials with a start time at most; and the socket it came in on.
enum ToAttest {
    Pinned(Arc<PinnedProcess>, SocketOrigin),
    Cred(PeerCred, SocketOrigin),
}

impl<S> Admission<S> {
    fn policy_of(&self, path: &str) -> Option<(Arc<dyn AdmissionPolicy>, &'static str)> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        let policy = self
            .layer
            .policies
            .iter()
            .find(|p| p.service_name() == service)?;
        Some((policy.clone(), policy.method(method)?))
    }
}

/// The header check, then the pinned caller to attest; `None` for a method that needs no
/// attested caller.
fn check(
    policy: &dyn AdmissionPolicy,
    method: &'static str,
    request: &http::Request<Body>,
) -> Result<Option<ToAttest>, AdmissionRefusal> {
    if policy.requires_header() {
        check_header(request.headers())?;
    }
    if !policy.attests(method) {
        return Ok(None);
    }
    let peer = request
        .extensions()
        .get::<PinnedPeer>()
        .ok_or(AdmissionRefusal::NoPeerCredentials)?;
    if let Some(e) = &peer.pin_error {
        return Err(AdmissionRefusal::Attestation(e.clone()));
    }
    let origin = match &peer.socket_pod {
        Some(pod) => SocketOrigin::Pod(pod.uid().to_owned()),
        None => SocketOrigin::Node,
    };
    if let Some(pinned) = &peer.pinned {
        return Ok(Some(ToAttest::Pinned(pinned.clone(), origin)));
    }
    peer.cred
        .map(|cred| Some(ToAttest::Cred(cred, origin)))
        .ok_or(AdmissionRefusal::NoPeerCredentials)
}

/// Attests the caller, once for this call.
async fn attest(attestor: &WorkloadAttestor, peer: ToAttest) -> Result<Caller, AdmissionRefusal> {
    let (cred, attested) = match peer {
        ToAttest::Pinned(pinned, origin) => (
            pinned.cred,
            attestor.attest_pinned_from(pinned, origin).await,
        ),
        ToAttest::Cred(cred, origin) => (cred, attestor.attest_from(cred, origin).await),
    };
    let attested = attested.map_err(|e| AdmissionRefusal::Attestation(Arc::new(e)))?;
    Ok(Caller { cred, attested })
}

/// `workload.spiffe.io` must be present exactly once, with the value `true`.
fn check_header(headers: &HeaderMap) -> Result<(), AdmissionRefusal> {
    let mut values = headers.get_all(WORKLOAD_API_HEADER).iter();
    match (values.next(), values.next()) {
        (None, _) => Err(AdmissionRefusal::MissingHeader),
        (Some(value), None) if value.as_bytes() == b"true" => Ok(()),
        _ => Err(AdmissionRefusal::BadHeader),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_with(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(WORKLOAD_API_HEADER, v.parse().unwrap());
        }
        headers
    }

    #[test]
    fn header_must_be_exactly_one_true() {
        assert!(check_header(&headers_with(&["true"])).is_ok());
        assert!(matches!(
            check_header(&headers_with(&[])),
            Err(AdmissionRefusal::MissingHeader)
        ));
        for bad in [&["false"][..], &["TRUE"], &["true", "true"], &["1"]] {
            assert!(
                matches!(
                    check_header(&headers_with(bad)),
                    Err(AdmissionRefusal::BadHeader)
                ),
                "{bad:?}"
            );
        }
    }

    /// A policy like the Workload API's: header required, refusals as `InvalidArgument`
    /// (header) or `Unavailable` (anything else).
    struct HeaderPolicy;

    impl AdmissionPolicy for HeaderPolicy {
        fn service_name(&self) -> &'static str {
            "Svc"
        }
        fn method(&self, name: &str) -> Option<&'static str> {
            (name == "Call").then_some("Call")
        }
        fn requires_header(&self) -> bool {
            true
        }
        fn attests(&self, _method: &'static str) -> bool {
            true
        }
        fn refuse(&self, _method: &'static str, refusal: AdmissionRefusal) -> Status {
            match refusal {
                AdmissionRefusal::MissingHeader | AdmissionRefusal::BadHeader => {
                    Status::invalid_argument(refusal.to_string())
                }
                other => Status::unavailable(other.to_string()),
            }
        }
    }

    /// A policy like SDS's: no header, every call attested.
    struct NoHeaderPolicy;

    impl AdmissionPolicy for NoHeaderPolicy {
        fn service_name(&self) -> &'static str {
            "Open"
        }
        fn method(&self, name: &str) -> Option<&'static str> {
            (name == "Call").then_some("Call")
        }
        fn requires_header(&self) -> bool {
            false
        }
        fn attests(&self, _method: &'static str) -> bool {
            true
        }
        fn refuse(&self, _method: &'static str, refusal: AdmissionRefusal) -> Status {
            Status::unavailable(refusal.to_string())
        }
    }

    /// Runs one call through the layer over a service that counts the calls reaching it and
    /// records the caller it was handed.
    async fn call(
        path: &str,
        header: bool,
        peer: Option<PinnedPeer>,
    ) -> (http::Response<Body>, usize, Option<Caller>) {
        use std::sync::Mutex;
        let reached = Arc::new(Mutex::new((0usize, None::<Caller>)));
        let seen = reached.clone();
        let inner = tower::service_fn(move |request: http::Request<Body>| {
            let seen = seen.clone();
            async move {
                let mut seen = seen.lock().unwrap();
                seen.0 += 1;
                seen.1 = request.extensions().get::<Caller>().cloned();
                Ok::<_, std::convert::Infallible>(http::Response::new(Body::empty()))
            }
        });
        let layer = AdmissionLayer::new(
            Arc::new(WorkloadAttestor::default()),
            vec![Arc::new(HeaderPolicy), Arc::new(NoHeaderPolicy)],
        );
        let mut request = http::Request::builder().uri(path);
        if header {
            request = request.header(WORKLOAD_API_HEADER, "true");
        }
        let mut request = request.body(Body::empty()).unwrap();
        if let Some(peer) = peer {
            request.extensions_mut().insert(peer);
        }
        let response = layer.layer(inner).call(request).await.unwrap();
        let (count, caller) = reached.lock().unwrap().clone();
        (response, count, caller)
    }

    fn grpc_status(response: &http::Response<Body>) -> Option<&str> {
        response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
    }

    fn this_process() -> PinnedPeer {
        // SAFETY: getpid, getuid and getgid have no preconditions.
        let (pid, uid, gid) = unsafe { (libc::getpid(), libc::getuid(), libc::getgid()) };
        let cred = WorkloadAttestor::default()
            .pin(PeerCred::new(Some(pid), uid, gid))
            .unwrap();
        PinnedPeer::from_cred(Some(cred))
    }

    #[tokio::test]
    async fn refused_calls_never_reach_the_service() {
        let (response, reached, _) = call("/Svc/Call", false, Some(this_process())).await;
        assert_eq!(grpc_status(&response), Some("3"), "InvalidArgument");
        assert_eq!(reached, 0);

        let (response, reached, _) = call("/Svc/Call", true, None).await;
        assert_eq!(grpc_status(&response), Some("14"), "no peer: Unavailable");
        assert_eq!(reached, 0);

        let gone = PinnedPeer {
            pin_error: Some(Arc::new(AttestError::NoPid)),
            ..PinnedPeer::from_cred(None)
        };
        let (response, reached, _) = call("/Svc/Call", true, Some(gone)).await;
        assert_eq!(grpc_status(&response), Some("14"));
        assert_eq!(reached, 0);
    }

    #[tokio::test]
    async fn an_admitted_call_carries_its_attested_caller() {
        let peer = this_process();
        let (response, reached, caller) = call("/Svc/Call", true, Some(peer.clone())).await;
        assert_eq!(grpc_status(&response), None);
        assert_eq!(reached, 1);
        let caller = caller.expect("the caller is handed down");
        assert_eq!(caller.cred, peer.cred.unwrap());
        assert!(!caller.attested.selectors.is_empty());
    }

    #[tokio::test]
    async fn the_header_is_checked_per_service() {
        // Without the header: refused by the service that requires it, admitted (and
        // attested) by the one that does not.
        let (response, reached, _) = call("/Svc/Call", false, Some(this_process())).await;
        assert_eq!(grpc_status(&response), Some("3"));
        assert_eq!(reached, 0);
        let (response, reached, caller) = call("/Open/Call", false, Some(this_process())).await;
        assert_eq!(grpc_status(&response), None);
        assert_eq!(reached, 1);
        assert!(caller.is_some(), "attested all the same");
        // Attestation still applies to it.
        let (response, reached, _) = call("/Open/Call", false, None).await;
        assert_eq!(grpc_status(&response), Some("14"));
        assert_eq!(reached, 0);
    }

    #[tokio::test]
    async fn unknown_services_and_methods_pass_through_unadmitted() {
        for path in ["/Other/Call", "/Svc/Bogus", "/nonsense"] {
            let (_, reached, caller) = call(path, false, None).await;
            assert_eq!(reached, 1, "{path}");
            assert!(caller.is_none(), "{path}");
        }
    }

    #[test]
    fn refusal_labels() {
        assert_eq!(
            AdmissionRefusal::MissingHeader.to_string(),
            "missing_header"
        );
        let gone = AdmissionRefusal::Attestation(Arc::new(AttestError::NoPid));
        assert_eq!(
            gone.to_string(),
            format!("attestation_{}", AttestError::NoPid.label())
        );
    }
}
