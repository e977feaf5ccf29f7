//! The node SVID keeper's timing on tokio's paused clock, against a fake server that signs
//! hour-long node SVIDs or fails as told: the first attestation uses the join token; the
//! renewal (with the node SVID) comes at half the lifetime, within the jitter; a failing
//! server is retried with growing backoff, the SVID kept meanwhile and withdrawn when it
//! expires (not a backoff period later), never earlier.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use lanyard_agent::metrics::AgentMetrics;
use lanyard_agent::node_svid::{AttestMethod, NodeSvidKeeper};
use lanyard_agent::server_client::{AttestApi, ServerError};
use lanyard_proto::identity::v1 as wire;
use lanyard_proto::identity::v1::attest_node_request::Method;
use lanyard_svid::csr::VerifiedCsr;
use lanyard_svid::tls::SvidStore;
use lanyard_svid::{BundleSet, Issuer, RootCa, SpiffeId, TrustBundle, TrustDomain};
use tokio::sync::watch;
use tokio::time::Instant;
use zeroize::Zeroizing;

const TD: &str = "example.org";
const AGENT_ID: &str = "spiffe://example.org/lanyard/agent/join_token/node-1";
const NODE_TTL: Duration = Duration::from_secs(3600);
const MINUTE: Duration = Duration::from_secs(60);

/// Which way an `AttestNode` call attested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    JoinToken,
    Renewal,
    Other,
}

/// Signs node SVIDs for [`AGENT_ID`], or answers `Unavailable` while `failing`; records each
/// call with its (tokio) time.
struct FakeServer {
    issuer: Issuer,
    failing: AtomicBool,
    calls: Mutex<Vec<(Instant, Kind)>>,
    count: watch::Sender<usize>,
}

impl FakeServer {
    fn new(root: &RootCa) -> Self {
        Self {
            issuer: root
                .issue_intermediate(Duration::from_secs(86_400), SystemTime::now())
                .unwrap(),
            failing: AtomicBool::new(false),
            calls: Mutex::new(Vec::new()),
            count: watch::channel(0).0,
        }
    }

    fn calls(&self) -> Vec<(Instant, Kind)> {
        self.calls.lock().unwrap().clone()
    }

    /// Waits (in virtual time, at most `within`) until `n` calls have been made.
    async fn wait_calls(&self, n: usize, within: Duration) {
        let mut count = self.count.subscribe();
        tokio::time::timeout(within, count.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| panic!("no call {n} within {within:?}: {:?}", self.calls()))
            .unwrap();
    }
}

#[tonic::async_trait]
impl AttestApi for FakeServer {
    async fn attest_node(
        &self,
        request: wire::AttestNodeRequest,
    ) -> Result<wire::AttestNodeResponse, ServerError> {
        let kind = match request.method {
            Some(Method::JoinToken(_)) => Kind::JoinToken,
            Some(Method::RenewWithNodeSvid(true)) => Kind::Renewal,
            _ => Kind::Other,
        };
        self.calls.lock().unwrap().push((Instant::now(), kind));
        self.count.send_modify(|c| *c += 1);
        if self.failing.load(Ordering::SeqCst) {
            return Err(ServerError::Unavailable("the fake server is down".into()));
        }
        let csr = VerifiedCsr::from_der(&request.csr).unwrap();
        let signed = self
            .issuer
            .sign_x509_svid(
                &csr,
                &SpiffeId::parse(AGENT_ID).unwrap(),
                NODE_TTL,
                SystemTime::now(),
            )
            .unwrap();
        Ok(wire::AttestNodeResponse {
            svid: Some(wire::X509Svid {
                spiffe_id: signed.spiffe_id.to_string(),
                cert_chain: signed.cert_chain.iter().map(|c| c.to_vec()).collect(),
                expires_at: lanyard_proto::convert::unix_seconds(signed.not_after),
            }),
            bundle: None,
        })
    }

    fn reconnect(&self) {}
}

#[tokio::test(start_paused = true)]
async fn renews_at_half_life_then_keeps_the_svid_until_it_expires_while_the_server_is_down() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let td = TrustDomain::new(TD).unwrap();
    let root = RootCa::generate(&td, Duration::from_secs(30 * 86_400), SystemTime::now()).unwrap();
    let server = Arc::new(FakeServer::new(&root));
    let store = Arc::new(SvidStore::new(BundleSet::from(
        TrustBundle::from_x509_authorities(td.clone(), [root.cert_der().clone()]),
    )));
    let keeper = Arc::new(NodeSvidKeeper::new(
        server.clone(),
        store,
        td,
        Some(AttestMethod::JoinToken(Zeroizing::new("a-token".into()))),
        None,
        AgentMetrics::unregistered(),
        Box::new(|_| {}),
    ));

    // First attestation: the join token.
    let start = Instant::now();
    keeper.start().await.unwrap();
    assert_eq!(keeper.current().unwrap().spiffe_id().to_string(), AGENT_ID);
    let renewals = tokio::spawn(keeper.clone().run_renewals());

    // The renewal comes at half the lifetime (30 min), give or take the 10% jitter.
    server.wait_calls(2, 40 * MINUTE).await;
    let calls = server.calls();
    assert_eq!(calls[0].1, Kind::JoinToken);
    assert_eq!(calls[1].1, Kind::Renewal, "renewed with the node SVID");
    let renewed_after = calls[1].0 - start;
    assert!(
        renewed_after >= 27 * MINUTE && renewed_after <= 33 * MINUTE,
        "renewed after {renewed_after:?}"
    );
    let renewed = Instant::now();

    // The server goes down: renewals start failing half an hour later, and are retried with
    // growing gaps; the SVID is served until it expires, an hour after the renewal.
    server.failing.store(true, Ordering::SeqCst);
    let mut current = keeper.subscribe();
    tokio::time::timeout(2 * NODE_TTL, current.wait_for(|svid| svid.is_none()))
        .await
        .expect("the expired node SVID was withdrawn")
        .unwrap();
    let withdrawn_after = Instant::now() - renewed;
    assert!(
        withdrawn_after >= NODE_TTL - MINUTE && withdrawn_after <= NODE_TTL + MINUTE,
        "withdrawn after {withdrawn_after:?}"
    );
    let failed: Vec<Instant> = server.calls()[2..].iter().map(|(at, _)| *at).collect();
    assert!(failed.len() >= 3, "retried: {failed:?}");
    let first_failure = failed[0] - renewed;
    assert!(
        first_failure >= 27 * MINUTE && first_failure <= 33 * MINUTE,
        "first retry after {first_failure:?}"
    );
    let gaps: Vec<Duration> = failed.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.windows(2).take(4).all(|g| g[1] >= g[0]),
        "backoff grows: {gaps:?}"
    );

    // Back up: the retries go on, so the keeper serves a node SVID once more (the fake takes
    // the spent join token; a real server would want a new one, which the keeper logs).
    server.failing.store(false, Ordering::SeqCst);
    tokio::time::timeout(NODE_TTL, current.wait_for(|svid| svid.is_some()))
        .await
        .expect("attested again once the server was back")
        .unwrap();
    renewals.abort();
}
