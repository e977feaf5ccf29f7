//! The `lanyard.identity.v1.NodeIdentity` gRPC service: node attestation, minting, and the
//! bundle and node feeds. The bundle feed comes in two forms: `WatchBundle`, and `SyncBundle`,
//! on which the agent acknowledges each bundle it installed ([`crate::bundle_acks`]).
//!
//! Who the caller is comes only from the TLS layer: the client certificate (if any) was
//! verified against our bundle during the handshake; here we read its SPIFFE ID, accept only
//! agent IDs of our trust domain, and re-check the agent on every call.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::{Stream, StreamExt};
use lanyard_proto::convert::unix_seconds;
use lanyard_proto::identity::v1 as wire;
use lanyard_proto::identity::v1::node_identity_server::NodeIdentity;
use lanyard_svid::ca::{CLOCK_SKEW_BACKDATE, SignedSvid};
use lanyard_svid::csr::VerifiedCsr;
use lanyard_svid::reserved::{AgentIdentity, agent_id, parse_agent_id};
use lanyard_svid::x509::X509Svid;
use lanyard_svid::{SpiffeId, TrustDomain};
use tonic::{Request, Response, Status, Streaming};

use crate::authority::{ActiveMaterial, Authority};
use crate::bundle_acks::{BundleAcks, ValidAck};
use crate::entry_store::EntryStore;
use crate::k8s::pods::{PodIndex, PodLookup};
use crate::metrics::ServerMetrics;
use crate::mint_policy::{MintPolicy, MintRefusal, PodClaim, WorkloadClaim};
use crate::node_attest::{AttestRefusal, NodeAttestor};
use crate::node_feed::{NodeFeed, NodeStream};
use crate::rate_limit::RateLimiter;
use crate::registry_view::{RegistrationSnapshot, Registrations};

/// Most CSRs in one `MintX509SVIDs` call.
pub const MAX_BATCH: usize = 500;
/// Most audiences in one `MintJWTSVID` call, and longest audience.
const MAX_AUDIENCES: usize = 16;
const MAX_AUDIENCE_LEN: usize = 1024;
/// `BundleAck`s per second per node on `SyncBundle`, and the burst: an agent acknowledges
/// each bundle change and each change of the roots its SVIDs chain to, far less often.
const ACK_RATE_LIMIT: f64 = 1.0;
const ACK_BURST: u32 = 16;

/// Settings the service needs from the configuration.
pub struct ServiceSettings {
    pub trust_domain: TrustDomain,
    pub x509_ttl: Duration,
    pub jwt_ttl: Duration,
    pub node_ttl: Duration,
    /// The longest lifetime anything is issued for, fixed at start: CA rotation phases wait
    /// this long for SVIDs under an old root (the CA report says so), so a LanyardIdentity's
    /// or a reloaded entry's longer TTL is shortened to it.
    pub max_svid_ttl: Duration,
    /// The static entries in force (reloadable).
    pub entries: EntryStore,
    /// What names pods' identities (the `LanyardIdentity` informers, or fixed).
    pub registrations: Registrations,
    /// SVIDs per second per node.
    pub mint_rate_limit: f64,
    /// Node attestations per second per source address.
    pub attest_rate_limit: f64,
    /// `--jwt-issuer`: the `iss` claim of JWT-SVIDs.
    pub jwt_issuer: Option<String>,
    /// The federated trust domains' bundles, sent to agents beside our own.
    pub federated: crate::federation::FederatedBundles,
}

pub struct IdentityService {
    settings: ServiceSettings,
    authority: Arc<Authority>,
    attestor: Arc<NodeAttestor>,
    /// `None` in data-dir mode.
    pods: Option<PodIndex>,
    metrics: Arc<ServerMetrics>,
    /// Attestations per peer IP address (the caller has no identity yet).
    attest_limiter: RateLimiter<std::net::IpAddr>,
    /// Signatures per node.
    mint_limiter: RateLimiter<String>,
    /// What each agent acknowledged on `SyncBundle`.
    acks: Arc<BundleAcks>,
    /// `BundleAck`s per node.
    ack_limiter: Arc<RateLimiter<String>>,
}

impl IdentityService {
    pub fn new(
        settings: ServiceSettings,
        authority: Arc<Authority>,
        attestor: Arc<NodeAttestor>,
        pods: Option<PodIndex>,
        metrics: Arc<ServerMetrics>,
        acks: Arc<BundleAcks>,
    ) -> Self {
        Self {
            acks,
            ack_limiter: Arc::new(RateLimiter::new(ACK_RATE_LIMIT, ACK_BURST)),
            // A node starting many pods at once fits in the burst.
            mint_limiter: RateLimiter::new(
                settings.mint_rate_limit,
                (settings.mint_rate_limit * 4.0) as u32,
            ),
            // A fleet of agents restarting behind one address fits in the burst.
            attest_limiter: RateLimiter::new(
                settings.attest_rate_limit,
                (settings.attest_rate_limit * 4.0) as u32,
            ),
            settings,
            authority,
            attestor,
            pods,
            metrics,
        }
    }

    fn material(&self) -> Result<Arc<ActiveMaterial>, Status> {
        self.authority
            .active()
            .ok_or_else(|| Status::unavailable("the CA is not loaded yet; retry"))
    }

    fn refuse_attest(&self, refusal: AttestRefusal) -> Status {
        self.metrics.refused("attest_node", &refusal);
        tracing::info!(reason = %refusal, "node attestation refused");
        let message = format!("{refusal}: {}", refusal.message());
        if refusal.is_transient() {
            Status::unavailable(message)
        } else {
            Status::permission_denied(message)
        }
    }

    /// The calling agent, from its verified client certificate, re-checked now (also used by
    /// the discovery feed).
    pub(crate) fn caller_agent<T>(
        &self,
        rpc: &'static str,
        request: &Request<T>,
    ) -> Result<AgentIdentity, Status> {
        self.caller_agent_since(rpc, request)
            .map(|(agent, _)| agent)
    }

    /// A feed for the calling agent: `stream`, ended with the refusal's status as soon as the
    /// agent's node SVID stops being good (an eviction), rather than running on.
    pub(crate) fn feed_for<R, M, I>(
        &self,
        rpc: &'static str,
        request: &Request<R>,
        stream: impl FnOnce(AgentIdentity) -> I,
    ) -> Result<EndOnRevocation<I>, Status>
    where
        I: Stream<Item = Result<M, Status>> + Send + Unpin + 'static,
    {
        let (agent, issued_at) = self.caller_agent_since(rpc, request)?;
        let revoked = self.attestor.revoked(&agent, issued_at);
        Ok(EndOnRevocation {
            inner: stream(agent),
            revoked: Some(revoked),
            metrics: self.metrics.clone(),
            rpc,
        })
    }

    fn caller_agent_since<T>(
        &self,
        rpc: &'static str,
        request: &Request<T>,
    ) -> Result<(AgentIdentity, SystemTime), Status> {
        let refuse = |reason: &'static str, status: Status| {
            self.metrics.refused(rpc, reason);
            status
        };
        let certs = request.peer_certs().ok_or_else(|| {
            refuse(
                "no_client_certificate",
                Status::unauthenticated(
                    "no_client_certificate: present a node SVID (attest first)",
                ),
            )
        })?;
        let svid = X509Svid::parse(certs.to_vec(), None).map_err(|e| {
            refuse(
                "bad_client_certificate",
                Status::unauthenticated(format!("bad_client_certificate: {}", e.message())),
            )
        })?;
        let id = svid.spiffe_id();
        let agent = parse_agent_id(id)
            .filter(|_| id.trust_domain() == &self.settings.trust_domain)
            .ok_or_else(|| {
                refuse(
                    "not_an_agent",
                    Status::permission_denied(format!(
                        "not_an_agent: only node agents may call {rpc}; {id} is not one"
                    )),
                )
            })?;
        let issued_at = svid.not_before() + CLOCK_SKEW_BACKDATE;
        self.attestor
            .check_agent(&agent, issued_at)
            .map_err(|refusal| {
                self.metrics.refused(rpc, &refusal);
                let message = format!("{refusal}: {}", refusal.message());
                if refusal.is_transient() {
                    Status::unavailable(message)
                } else {
                    Status::permission_denied(message)
                }
            })?;
        Ok((agent, issued_at))
    }

    /// The policy over `entries` and `registrations` (taken once per call, so a batch is
    /// decided against one state).
    fn policy<'a>(
        &'a self,
        entries: &'a [crate::entries::StaticEntry],
        registrations: &'a RegistrationSnapshot,
    ) -> MintPolicy<'a> {
        MintPolicy {
            entries,
            pods: self.pods.as_ref().map(|p| p as &dyn PodLookup),
            registrations,
        }
    }

    fn audit(&self, kind: &'static str, svid: &SignedSvid, node: &str) {
        self.metrics.issued(kind);
        tracing::info!(
            target: "audit",
            kind,
            spiffe_id = %svid.spiffe_id,
            serial = %svid.serial_hex,
            node,
            expires_at = unix_seconds(svid.not_after),
            "issued X.509-SVID"
        );
    }

    fn node_feed(&self) -> NodeFeed {
        NodeFeed {
            entries: self.settings.entries.clone(),
            pods: self.pods.clone(),
            registrations: self.settings.registrations.clone(),
        }
    }
}

/// A feed that ends with the refusal's status once its agent is revoked (see
/// [`IdentityService::feed_for`]).
pub(crate) struct EndOnRevocation<I> {
    inner: I,
    /// `None` once the revocation was reported: the stream is over.
    revoked: Option<Pin<Box<dyn std::future::Future<Output = AttestRefusal> + Send + 'static>>>,
    metrics: Arc<ServerMetrics>,
    rpc: &'static str,
}

impl<M, I> Stream for EndOnRevocation<I>
where
    I: Stream<Item = Result<M, Status>> + Unpin,
{
    type Item = Result<M, Status>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let Some(revoked) = self.revoked.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(refusal) = revoked.as_mut().poll(cx) {
            self.revoked = None;
            self.metrics.refused(self.rpc, &refusal);
            tracing::info!(rpc = self.rpc, reason = %refusal, "feed ended: agent revoked");
            return Poll::Ready(Some(Err(Status::permission_denied(format!(
                "{refusal}: {}",
                refusal.message()
            )))));
        }
        self.inner.poll_next_unpin(cx)
    }
}

/// The bundle now (once the CA is loaded) with every federated bundle held, then again on
/// every change of either.
fn bundle_stream(
    ours: tokio::sync::watch::Receiver<Option<Arc<lanyard_svid::TrustBundle>>>,
    federated: tokio::sync::watch::Receiver<Arc<lanyard_svid::BundleSet>>,
) -> impl Stream<Item = Result<wire::WatchBundleResponse, Status>> + Send + Unpin + 'static {
    struct State {
        ours: tokio::sync::watch::Receiver<Option<Arc<lanyard_svid::TrustBundle>>>,
        federated: tokio::sync::watch::Receiver<Arc<lanyard_svid::BundleSet>>,
        /// The federated set's sender is gone: only our bundle is followed.
        federated_closed: bool,
        first: bool,
    }
    let state = State {
        ours,
        federated,
        federated_closed: false,
        first: true,
    };
    Box::pin(futures::stream::unfold(state, |mut s| async move {
        loop {
            if !s.first {
                if s.federated_closed {
                    s.ours.changed().await.ok()?;
                } else {
                    tokio::select! {
                        changed = s.ours.changed() => changed.ok()?,
                        changed = s.federated.changed() => {
                            if changed.is_err() {
                                s.federated_closed = true;
                            }
                        }
                    }
                }
            }
            s.first = false;
            let Some(bundle) = s.ours.borrow_and_update().clone() else {
                continue;
            };
            let federated = s.federated.borrow_and_update().clone();
            let response = wire::WatchBundleResponse {
                bundle: Some(wire::Bundle::from(bundle.as_ref())),
                federated_bundles: federated.iter().map(wire::Bundle::from).collect(),
            };
            return Some((Ok(response), s));
        }
    }))
}

/// A stream that keeps `_held` alive as long as itself (a registration whose drop says the
/// stream is over).
struct Holding<S, H> {
    inner: S,
    _held: H,
}

impl<S: Stream + Unpin, H: Unpin> Stream for Holding<S, H> {
    type Item = S::Item;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<S::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

/// Reads one `SyncBundle` stream's acknowledgements.
struct AckReader {
    /// Gone once the response stream is dropped.
    registration: std::sync::Weak<crate::bundle_acks::SyncRegistration>,
    limiter: Arc<RateLimiter<String>>,
    metrics: Arc<ServerMetrics>,
    /// Ends the response stream with this status.
    end: tokio::sync::oneshot::Sender<Status>,
}

impl AckReader {
    /// Until the agent stops sending, the connection breaks, the response stream is dropped
    /// (`gone` resolves), or the agent sends too fast (the stream is ended).
    async fn run(
        self,
        mut inbound: Streaming<wire::BundleAck>,
        mut gone: tokio::sync::oneshot::Receiver<()>,
    ) {
        const RPC: &str = "sync_bundle";
        loop {
            let ack = tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(ack)) => ack,
                    // The agent closed its side (it may still read bundles) or went away.
                    Ok(None) | Err(_) => return,
                },
                _ = &mut gone => return,
            };
            let Some(registration) = self.registration.upgrade() else {
                return;
            };
            let node = registration.node();
            if !self.limiter.try_acquire(&node.to_owned(), 1) {
                self.metrics.refused(RPC, "rate_limited");
                tracing::warn!(
                    node,
                    "SyncBundle ended: the agent sends acknowledgements faster than {ACK_RATE_LIMIT} a second"
                );
                let _ = self.end.send(Status::resource_exhausted(format!(
                    "rate_limited: at most {ACK_RATE_LIMIT} bundle acknowledgements a second (burst {ACK_BURST})"
                )));
                return;
            }
            match ValidAck::parse(&ack) {
                Ok(valid) => {
                    tracing::debug!(node, version = %valid.version, roots = valid.svid_roots.len(), "bundle acknowledged");
                    registration.record(valid, SystemTime::now());
                }
                Err(refusal) => {
                    self.metrics.refused(RPC, &refusal);
                    tracing::warn!(node, reason = %refusal, "bundle acknowledgement ignored: {}", refusal.message());
                }
            }
        }
    }
}

fn claim_from_wire(workload: Option<&wire::Workload>) -> Result<WorkloadClaim, MintRefusal> {
    let workload = workload.ok_or(MintRefusal::NoWorkload)?;
    let pod_claim = |p: &wire::Pod| PodClaim {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        uid: p.uid.clone(),
        service_account: p.service_account.clone(),
    };
    match &workload.kind {
        Some(wire::workload::Kind::Pod(p)) => Ok(WorkloadClaim::Pod(pod_claim(p))),
        Some(wire::workload::Kind::EntrySpiffeId(id)) => Ok(WorkloadClaim::Entry {
            spiffe_id: id.clone(),
            pod: workload.entry_pod.as_ref().map(pod_claim),
        }),
        None => Err(MintRefusal::NoWorkload),
    }
}

fn svid_to_wire(svid: &SignedSvid) -> wire::X509Svid {
    wire::X509Svid {
        spiffe_id: svid.spiffe_id.to_string(),
        cert_chain: svid
            .cert_chain
            .iter()
            .map(|c| c.as_ref().to_vec())
            .collect(),
        expires_at: unix_seconds(svid.not_after),
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl NodeIdentity for IdentityService {
    async fn attest_node(
        &self,
        request: Request<wire::AttestNodeRequest>,
    ) -> Result<Response<wire::AttestNodeResponse>, Status> {
        let now = SystemTime::now();
        if let Some(addr) = request.remote_addr()
            && !self.attest_limiter.try_acquire(&addr.ip(), 1)
        {
            self.metrics.refused("attest_node", "rate_limited");
            return Err(Status::resource_exhausted(
                "rate_limited: too many attestations from this address",
            ));
        }
        let material = self.material()?;
        // Check the CSR before consuming anything (a join token is single-use).
        let csr = VerifiedCsr::from_der(&request.get_ref().csr).map_err(|e| {
            let reason = format!("csr_{}", e.label());
            self.metrics.refused("attest_node", &reason);
            Status::invalid_argument(format!("{reason}: {}", e.message()))
        })?;
        use wire::attest_node_request::Method;
        let agent = match &request.get_ref().method {
            Some(Method::JoinToken(token)) => self.attestor.attest_join_token(token, now),
            Some(Method::K8sPsatToken(token)) => self.attestor.attest_k8s_psat(token).await,
            Some(Method::RenewWithNodeSvid(_)) => {
                let certs = request.peer_certs().ok_or_else(|| {
                    self.metrics.refused("attest_node", "no_client_certificate");
                    Status::unauthenticated(
                        "no_client_certificate: renewal needs the current node SVID",
                    )
                })?;
                let svid = X509Svid::parse(certs.to_vec(), None).map_err(|e| {
                    Status::unauthenticated(format!("bad_client_certificate: {}", e.message()))
                })?;
                let current = parse_agent_id(svid.spiffe_id())
                    .filter(|_| svid.spiffe_id().trust_domain() == &self.settings.trust_domain)
                    .ok_or_else(|| {
                        Status::permission_denied("not_an_agent: renewal needs a node SVID")
                    })?;
                self.attestor
                    .renew(&current, svid.not_before() + CLOCK_SKEW_BACKDATE)
            }
            None => {
                self.metrics.refused("attest_node", "no_method");
                return Err(Status::invalid_argument(
                    "no_method: set one attestation method",
                ));
            }
        }
        .map_err(|r| self.refuse_attest(r))?;

        let id: SpiffeId = agent_id(&self.settings.trust_domain, agent.method, &agent.node)
            .map_err(|e| Status::internal(e.to_string()))?;
        let signed = material
            .issuer
            .sign_x509_svid(&csr, &id, self.settings.node_ttl, now)
            .map_err(|e| Status::internal(format!("signing failed: {}", e.message())))?;
        self.audit("node", &signed, &agent.node);
        Ok(Response::new(wire::AttestNodeResponse {
            svid: Some(svid_to_wire(&signed)),
            bundle: Some(wire::Bundle::from(material.bundle.as_ref())),
        }))
    }

    async fn mint_x509svi_ds(
        &self,
        request: Request<wire::MintX509SvidsRequest>,
    ) -> Result<Response<wire::MintX509SvidsResponse>, Status> {
        const RPC: &str = "mint_x509_svids";
        let agent = self.caller_agent(RPC, &request)?;
        let items = &request.get_ref().requests;
        if items.len() > MAX_BATCH {
            self.metrics.refused(RPC, "batch_too_large");
            return Err(Status::invalid_argument(format!(
                "batch_too_large: {} requests; at most {MAX_BATCH} per call",
                items.len()
            )));
        }
        if !self
            .mint_limiter
            .try_acquire(&agent.node, items.len() as u32)
        {
            self.metrics.refused(RPC, "rate_limited");
            return Err(Status::resource_exhausted(
                "rate_limited: too many mints from this node",
            ));
        }
        let material = self.material()?;
        let now = SystemTime::now();
        let (entries, registrations) = (
            self.settings.entries.current(),
            self.settings.registrations.current(),
        );
        let policy = self.policy(&entries, &registrations);
        let results = items
            .iter()
            .map(|item| {
                let refusal = |reason: String, message: String| {
                    self.metrics.refused(RPC, &reason);
                    wire::mint_x509_svid_result::Result::Refusal(wire::Refusal { reason, message })
                };
                let outcome = match claim_from_wire(item.workload.as_ref())
                    .and_then(|claim| policy.decide(&agent, &claim))
                {
                    Err(r) => refusal(r.to_string(), r.message()),
                    Ok(decision) => match VerifiedCsr::from_der(&item.csr) {
                        Err(e) => refusal(format!("csr_{}", e.label()), e.message()),
                        Ok(csr) => {
                            let ttl = decision
                                .x509_ttl
                                .unwrap_or(self.settings.x509_ttl)
                                .min(self.settings.max_svid_ttl);
                            // The SPIFFE ID stays the only URI SAN; DNS names are added.
                            match material.issuer.sign_x509_svid_with_dns(
                                &csr,
                                &decision.spiffe_id,
                                &decision.dns_names,
                                ttl,
                                now,
                            ) {
                                Ok(signed) => {
                                    self.audit("x509", &signed, &agent.node);
                                    wire::mint_x509_svid_result::Result::Svid(svid_to_wire(&signed))
                                }
                                Err(e) => refusal(format!("csr_{}", e.label()), e.message()),
                            }
                        }
                    },
                };
                wire::MintX509SvidResult {
                    result: Some(outcome),
                }
            })
            .collect();
        Ok(Response::new(wire::MintX509SvidsResponse { results }))
    }

    async fn mint_jwtsvid(
        &self,
        request: Request<wire::MintJwtSvidRequest>,
    ) -> Result<Response<wire::MintJwtSvidResponse>, Status> {
        const RPC: &str = "mint_jwt_svid";
        let agent = self.caller_agent(RPC, &request)?;
        let audience = &request.get_ref().audience;
        if audience.is_empty()
            || audience.len() > MAX_AUDIENCES
            || audience
                .iter()
                .any(|a| a.is_empty() || a.len() > MAX_AUDIENCE_LEN)
        {
            self.metrics.refused(RPC, "bad_audience");
            return Err(Status::invalid_argument(format!(
                "bad_audience: give 1 to {MAX_AUDIENCES} non-empty audiences"
            )));
        }
        if !self.mint_limiter.try_acquire(&agent.node, 1) {
            self.metrics.refused(RPC, "rate_limited");
            return Err(Status::resource_exhausted(
                "rate_limited: too many mints from this node",
            ));
        }
        let material = self.material()?;
        let (entries, registrations) = (
            self.settings.entries.current(),
            self.settings.registrations.current(),
        );
        let decision = claim_from_wire(request.get_ref().workload.as_ref())
            .and_then(|claim| self.policy(&entries, &registrations).decide(&agent, &claim))
            .map_err(|r| {
                self.metrics.refused(RPC, &r);
                if r.is_transient() {
                    Status::unavailable(format!("{r}: {}", r.message()))
                } else {
                    Status::permission_denied(format!("{r}: {}", r.message()))
                }
            })?;
        let now = SystemTime::now();
        let ttl = decision
            .jwt_ttl
            .unwrap_or(self.settings.jwt_ttl)
            .min(self.settings.max_svid_ttl);
        let token = material
            .jwt
            .mint_with_issuer(
                &decision.spiffe_id,
                audience,
                ttl,
                now,
                self.settings.jwt_issuer.as_deref(),
            )
            .map_err(|e| Status::internal(format!("signing failed: {e}")))?;
        self.metrics.issued("jwt");
        let expires_at = unix_seconds(now + ttl);
        tracing::info!(target: "audit", kind = "jwt", spiffe_id = %decision.spiffe_id, node = %agent.node, expires_at, "issued JWT-SVID");
        Ok(Response::new(wire::MintJwtSvidResponse {
            spiffe_id: decision.spiffe_id.to_string(),
            token,
            expires_at,
        }))
    }

    type WatchBundleStream = BoxStream<wire::WatchBundleResponse>;

    async fn watch_bundle(
        &self,
        request: Request<wire::WatchBundleRequest>,
    ) -> Result<Response<Self::WatchBundleStream>, Status> {
        let bundles = self.authority.subscribe_bundle();
        let stream = self.feed_for("watch_bundle", &request, |agent| Holding {
            inner: bundle_stream(bundles, self.settings.federated.subscribe()),
            // Counted as an agent that never acknowledges, while the stream lives.
            _held: self.acks.register_watch(&agent.node),
        })?;
        Ok(Response::new(Box::pin(stream)))
    }

    type SyncBundleStream = BoxStream<wire::WatchBundleResponse>;

    /// `WatchBundle`'s stream, and the agent's acknowledgements read beside it: each valid
    /// one is recorded for the agent's node until the stream ends; a malformed one is ignored
    /// (logged, counted as a refusal); more than [`ACK_BURST`] at once, then more than
    /// [`ACK_RATE_LIMIT`] a second, end the stream with `ResourceExhausted`.
    async fn sync_bundle(
        &self,
        request: Request<Streaming<wire::BundleAck>>,
    ) -> Result<Response<Self::SyncBundleStream>, Status> {
        const RPC: &str = "sync_bundle";
        let bundles = self.authority.subscribe_bundle();
        let (end_tx, end_rx) = tokio::sync::oneshot::channel::<Status>();
        let (gone_tx, gone_rx) = tokio::sync::oneshot::channel::<()>();
        let mut registration = None;
        let stream = self.feed_for(RPC, &request, |agent| {
            let held = Arc::new(self.acks.register_sync(&agent.node));
            registration = Some(Arc::downgrade(&held));
            // The reader's refusal, if any, ends the stream after the bundles sent so far.
            let refusal =
                futures::stream::once(end_rx).filter_map(|r| std::future::ready(r.ok().map(Err)));
            Holding {
                inner: futures::stream::select(
                    bundle_stream(bundles, self.settings.federated.subscribe()),
                    refusal,
                ),
                // Dropped when the stream ends: the agent is forgotten, the reader stops.
                _held: (held, gone_tx),
            }
        })?;
        let registration = registration.expect("feed_for calls back on success");
        let reader = AckReader {
            registration,
            limiter: self.ack_limiter.clone(),
            metrics: self.metrics.clone(),
            end: end_tx,
        };
        tokio::spawn(reader.run(request.into_inner(), gone_rx));
        Ok(Response::new(Box::pin(stream)))
    }

    type WatchNodeStream = NodeStream;

    async fn watch_node(
        &self,
        request: Request<wire::WatchNodeRequest>,
    ) -> Result<Response<Self::WatchNodeStream>, Status> {
        let feed = self.node_feed();
        let stream = self.feed_for("watch_node", &request, |agent| feed.stream(agent))?;
        Ok(Response::new(Box::pin(stream)))
    }
}
