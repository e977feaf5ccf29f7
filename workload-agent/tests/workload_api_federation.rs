//! Federated bundles through the agent, end to end on its side: the server's bundle feed (a
//! fake `SyncBundle` stream carrying `federated_bundles`) into the real certificate manager,
//! the node view's `federates_with` (a static entry selecting this test process) into its
//! entitlements, and the real Workload API on a Unix socket, read with the generated client
//! and with the Rust `spiffe` crate. The fake server (tests/support) signs the SVIDs.
//!
//! py-spiffe's view of a federated bundle is in grpc_core_workload_api.rs (over the fake
//! identity source, whose entitlements federate as told).

#[path = "support/fake_server.rs"]
#[allow(dead_code)]
mod fake_server;
mod workload_api_support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fake_server::{FakeServer, TD};
use futures::StreamExt as _;
use futures::stream::BoxStream;
use lanyard_agent::attest::WorkloadAttestor;
use lanyard_agent::identities::WorkloadIdentities;
use lanyard_agent::manager::resolve::NodeView;
use lanyard_agent::manager::{CertificateManager, ManagerSettings};
use lanyard_agent::metrics::AgentMetrics;
use lanyard_agent::server_client::federated::FederatedFeed;
use lanyard_agent::server_client::feeds::{AckSource, BundleFeed};
use lanyard_agent::server_client::{BundleFeedApi, BundleStream};
use lanyard_agent::socket::{self, ConnectionLimits, ServeError, Services};
use lanyard_agent::workload_api::{Limits, WorkloadApiMetrics};
use lanyard_proto::identity::v1 as wire;
use lanyard_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use lanyard_proto::workload::{
    JwtBundlesRequest, JwtBundlesResponse, ValidateJwtsvidRequest, X509BundlesRequest,
    X509BundlesResponse, X509svidRequest, X509svidResponse,
};
use lanyard_svid::jwt::JwtSigner;
use lanyard_svid::{BundleSet, RootCa, TrustBundle, TrustDomain};
use spiffe::TrustDomain as ClientTd;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Streaming};
use workload_api_support::{client_at, eventually, install_ring, req, within};

const B: &str = "b.test";
const C: &str = "c.test";

type Feed = mpsc::UnboundedSender<Result<wire::WatchBundleResponse, tonic::Status>>;

/// The server's bundle half: the first `SyncBundle` is the test's stream; reopens wait forever.
struct FeedApi(
    Mutex<Option<mpsc::UnboundedReceiver<Result<wire::WatchBundleResponse, tonic::Status>>>>,
);

#[tonic::async_trait]
impl BundleFeedApi for FeedApi {
    async fn open_sync_bundle(
        &self,
        _acks: BoxStream<'static, wire::BundleAck>,
    ) -> Result<BundleStream, tonic::Status> {
        Ok(match self.0.lock().unwrap().take() {
            Some(rx) => UnboundedReceiverStream::new(rx).boxed(),
            None => futures::stream::pending().boxed(),
        })
    }

    async fn open_watch_bundle(&self) -> Result<BundleStream, tonic::Status> {
        Err(tonic::Status::unavailable("not in this test"))
    }
}

struct NoAcks;

impl AckSource for NoAcks {
    fn current(&self) -> Option<wire::BundleAck> {
        None
    }
}

/// A foreign trust domain: a root and a JWT signer, whose bundle can be re-rooted.
struct Foreign {
    td: TrustDomain,
    root: RootCa,
    jwt: JwtSigner,
}

impl Foreign {
    fn new(name: &str) -> Self {
        let td = TrustDomain::new(name).unwrap();
        let root = RootCa::generate(&td, Duration::from_secs(3600), SystemTime::now()).unwrap();
        let (jwt, _) = JwtSigner::generate().unwrap();
        Self { td, root, jwt }
    }

    fn bundle(&self) -> TrustBundle {
        let mut bundle =
            TrustBundle::from_x509_authorities(self.td.clone(), [self.root.cert_der().clone()]);
        bundle.add_jwt_authority(self.jwt.authority());
        bundle
    }

    /// A new root (the domain rotated); the JWT key stays.
    fn rotate(&mut self) {
        self.root =
            RootCa::generate(&self.td, Duration::from_secs(3600), SystemTime::now()).unwrap();
    }

    fn token(&self, audience: &str) -> String {
        let subject = self.td.id("/client").unwrap();
        self.jwt
            .mint(
                &subject,
                &[audience.to_owned()],
                Duration::from_secs(300),
                SystemTime::now(),
            )
            .unwrap()
    }
}

/// The agent's side: manager, bundle feed and Workload API on a socket.
struct Node {
    server: Arc<FakeServer>,
    manager: CertificateManager,
    feed: Feed,
    socket: PathBuf,
    _dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
}

impl Node {
    async fn start() -> Self {
        install_ring();
        let td = TrustDomain::new(TD).unwrap();
        let server = Arc::new(FakeServer::new(Duration::from_secs(3600)));
        let manager = CertificateManager::new(
            server.clone(),
            ManagerSettings::default(),
            AgentMetrics::unregistered(),
        );
        manager.set_attested(true);
        manager.spawn();
        let (feed, messages) = mpsc::unbounded_channel();
        let bundle_feed = BundleFeed {
            api: Arc::new(FeedApi(Mutex::new(Some(messages)))),
            acks: Arc::new(NoAcks),
            changes: futures::stream::pending().boxed(),
            metrics: AgentMetrics::unregistered(),
            federated: FederatedFeed::new(td.clone(), {
                let manager = manager.clone();
                move |set| manager.set_federated_bundles(set)
            }),
        };
        let own = manager.clone();
        bundle_feed.spawn(move |b: &wire::Bundle| {
            own.set_bundles(BundleSet::from(TrustBundle::try_from(b).unwrap()));
        });

        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let (stop, stopped) = oneshot::channel::<()>();
        let identities: Arc<dyn WorkloadIdentities> = Arc::new(manager.clone());
        let task = tokio::spawn({
            let socket = socket.clone();
            async move {
                socket::serve(
                    &socket,
                    Arc::new(WorkloadAttestor::default()),
                    ConnectionLimits::default(),
                    Services::new().workload_api(
                        identities,
                        Limits::default(),
                        WorkloadApiMetrics::default(),
                    ),
                    async {
                        let _ = stopped.await;
                    },
                )
                .await
            }
        });
        let path = socket.clone();
        eventually("the socket to be bound", || {
            let exists = path.exists();
            async move { exists.then_some(()) }
        })
        .await;
        Self {
            server,
            manager,
            feed,
            socket,
            _dir: dir,
            stop: Some(stop),
            task,
        }
    }

    /// Sends a bundle message: our own bundle and `federated`; waits until the manager holds
    /// exactly the federated domains expected (`federated`'s, minus our own domain).
    async fn send(&self, federated: &[TrustBundle]) {
        let own = self.server.bundles();
        let own = own.iter().next().unwrap();
        self.feed
            .send(Ok(wire::WatchBundleResponse {
                bundle: Some(wire::Bundle::from(own)),
                federated_bundles: federated.iter().map(wire::Bundle::from).collect(),
            }))
            .unwrap();
        let mut expected = BundleSet::new();
        for b in federated.iter().filter(|b| b.trust_domain().name() != TD) {
            expected.insert(b.clone());
        }
        let manager = self.manager.clone();
        eventually("the federated set to be installed", || {
            let done = *manager.federated_bundles() == expected
                && manager.bundles().get(own.trust_domain()) == Some(own);
            async move { done.then_some(()) }
        })
        .await;
    }

    /// The node view: one static entry selecting this process, federating with `domains`.
    fn register(&self, domains: &[&str]) {
        let td = TrustDomain::new(TD).unwrap();
        let entry = wire::StaticEntry {
            spiffe_id: format!("spiffe://{TD}/web"),
            selectors: vec![workload_api_support::my_uid_selector().to_string()],
            federates_with: domains.iter().map(|d| d.to_string()).collect(),
            ..Default::default()
        };
        let view = wire::WatchNodeResponse {
            node_name: "node-1".into(),
            entries: vec![entry],
            ..Default::default()
        };
        self.manager.set_view(NodeView::from_wire(&view, &td));
    }

    async fn client(&self) -> SpiffeWorkloadApiClient<Channel> {
        client_at(&self.socket).await
    }

    async fn x509_stream(&self) -> Streaming<X509svidResponse> {
        let mut client = self.client().await;
        within(
            "FetchX509SVID",
            client.fetch_x509svid(req(X509svidRequest {})),
        )
        .await
        .unwrap()
        .into_inner()
    }

    async fn x509_bundles_stream(&self) -> Streaming<X509BundlesResponse> {
        let mut client = self.client().await;
        within(
            "FetchX509Bundles",
            client.fetch_x509_bundles(req(X509BundlesRequest {})),
        )
        .await
        .unwrap()
        .into_inner()
    }

    async fn jwt_bundles_stream(&self) -> Streaming<JwtBundlesResponse> {
        let mut client = self.client().await;
        within(
            "FetchJWTBundles",
            client.fetch_jwt_bundles(req(JwtBundlesRequest {})),
        )
        .await
        .unwrap()
        .into_inner()
    }

    /// The first X.509-SVID response, its X.509 bundles and its JWT bundles, as the trust
    /// domain IDs each carries (for the SVID response: its federated bundles).
    async fn three_places(&self) -> [BTreeSet<String>; 3] {
        let svid = next(&mut self.x509_stream().await).await;
        let x509 = next(&mut self.x509_bundles_stream().await).await;
        let jwt = next(&mut self.jwt_bundles_stream().await).await;
        [
            svid.federated_bundles.into_keys().collect(),
            x509.bundles.into_keys().collect(),
            jwt.bundles.into_keys().collect(),
        ]
    }

    async fn validate(&self, token: String) -> Result<String, tonic::Status> {
        let mut client = self.client().await;
        within(
            "ValidateJWTSVID",
            client.validate_jwtsvid(req(ValidateJwtsvidRequest {
                audience: "web".into(),
                svid: token,
            })),
        )
        .await
        .map(|r| r.into_inner().spiffe_id)
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        within("serve to return", &mut self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

async fn next<M>(stream: &mut Streaming<M>) -> M {
    within("the next stream message", stream.message())
        .await
        .unwrap()
        .expect("the stream ended")
}

fn ids(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| format!("spiffe://{n}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_federating_with_b_gets_b_everywhere_and_one_without_does_not() {
    let node = Node::start().await;
    let (b, c) = (Foreign::new(B), Foreign::new(C));
    node.register(&[B]);
    node.send(&[b.bundle(), c.bundle()]).await;

    // B (named) in all three places; C (held, not named) in none.
    let [svid_federated, x509, jwt] = node.three_places().await;
    assert_eq!(svid_federated, ids(&[B]));
    assert_eq!(x509, ids(&[TD, B]));
    assert_eq!(jwt, ids(&[TD, B]));
    let svid = next(&mut node.x509_stream().await).await;
    assert_eq!(
        svid.federated_bundles[&format!("spiffe://{B}")],
        b.root.cert_der().to_vec(),
        "B's roots as concatenated DER"
    );

    // The `spiffe` crate sees B in its X.509 context and its bundle sets, and not C.
    let client = within(
        "the spiffe client to connect",
        spiffe::WorkloadApiClient::connect_to(format!("unix://{}", node.socket.display())),
    )
    .await
    .unwrap();
    let context = within("fetch_x509_context", client.fetch_x509_context())
        .await
        .unwrap();
    let (b_td, c_td) = (ClientTd::new(B).unwrap(), ClientTd::new(C).unwrap());
    let in_context = context.bundle_set().get(&b_td).expect("B in the context");
    assert_eq!(
        in_context.authorities()[0].as_ref(),
        b.root.cert_der().as_ref()
    );
    assert!(context.bundle_set().get(&c_td).is_none());
    let jwt_bundles = within("fetch_jwt_bundles", client.fetch_jwt_bundles())
        .await
        .unwrap();
    let b_jwt = jwt_bundles.get(&b_td).expect("B's JWT bundle");
    assert!(b_jwt.find_jwt_authority(b.jwt.key_id()).is_some());
    assert!(jwt_bundles.get(&c_td).is_none());

    // ValidateJWTSVID: B's tokens validate for a workload federating with B; C's do not.
    assert_eq!(
        node.validate(b.token("web")).await.unwrap(),
        format!("spiffe://{B}/client")
    );
    let refused = node.validate(c.token("web")).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);

    // The registration no longer federates: B is gone from every place, and its tokens are
    // refused.
    node.register(&[]);
    let [svid_federated, x509, jwt] = node.three_places().await;
    assert!(svid_federated.is_empty());
    assert_eq!(x509, ids(&[TD]));
    assert_eq!(jwt, ids(&[TD]));
    let refused = node.validate(b.token("web")).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);

    // No identity at all: the bundle streams refuse as before; validation of B is refused.
    node.manager.set_view(NodeView::default());
    let mut client = node.client().await;
    let no_identity = within(
        "FetchX509Bundles",
        client.fetch_x509_bundles(req(X509BundlesRequest {})),
    )
    .await;
    let status = match no_identity {
        Ok(response) => response.into_inner().message().await.unwrap_err(),
        Err(status) => status,
    };
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(status.message(), "no identity issued");
    let refused = node.validate(b.token("web")).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_federated_bundle_for_our_own_domain_is_ignored() {
    let node = Node::start().await;
    let b = Foreign::new(B);
    node.register(&[B]);
    // A federated "example.org" bundle under a root that is not ours.
    let impostor = Foreign::new(TD);
    node.send(&[impostor.bundle(), b.bundle()]).await;

    // Our bundle is still the server's own; the impostor's root is served nowhere.
    let own = node.server.bundles();
    let own_der = own.iter().next().unwrap().x509_authorities_der();
    assert_eq!(*node.manager.own_bundles(), own);
    let svid = next(&mut node.x509_stream().await).await;
    assert_eq!(svid.svids[0].bundle, own_der);
    assert_eq!(
        svid.federated_bundles.keys().collect::<Vec<_>>(),
        [&format!("spiffe://{B}")]
    );
    let x509 = next(&mut node.x509_bundles_stream().await).await;
    assert_eq!(x509.bundles[&format!("spiffe://{TD}")], own_der);
    // Its JWT key neither: its tokens for our domain do not validate.
    let forged = impostor.token("web");
    let refused = node.validate(forged).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_follow_b_and_lose_it_when_the_server_drops_it() {
    let node = Node::start().await;
    let (mut b, c) = (Foreign::new(B), Foreign::new(C));
    node.register(&[B]);
    node.send(&[b.bundle()]).await;
    let b_id = format!("spiffe://{B}");

    let mut svids = node.x509_stream().await;
    let mut x509 = node.x509_bundles_stream().await;
    let mut jwt = node.jwt_bundles_stream().await;
    let first = next(&mut svids).await;
    assert_eq!(first.federated_bundles[&b_id], b.root.cert_der().to_vec());
    next(&mut x509).await;
    let first_jwt = next(&mut jwt).await;

    // C arrives (not served here), then B rotates: the next message of each stream is B's
    // new root. A stream that re-sent for C would have sent B's old root first.
    node.send(&[b.bundle(), c.bundle()]).await;
    b.rotate();
    node.send(&[b.bundle(), c.bundle()]).await;
    let update = next(&mut svids).await;
    assert_eq!(update.federated_bundles[&b_id], b.root.cert_der().to_vec());
    assert_eq!(
        update.svids[0].x509_svid, first.svids[0].x509_svid,
        "same SVID"
    );
    let update = next(&mut x509).await;
    assert_eq!(update.bundles[&b_id], b.root.cert_der().to_vec());
    assert!(!update.bundles.contains_key(&format!("spiffe://{C}")));

    // The server drops B: the next messages no longer carry it.
    node.send(&[c.bundle()]).await;
    let update = next(&mut svids).await;
    assert!(
        update.federated_bundles.is_empty(),
        "{:?}",
        update.federated_bundles.keys()
    );
    let update = next(&mut x509).await;
    assert_eq!(
        update.bundles.into_keys().collect::<BTreeSet<_>>(),
        ids(&[TD])
    );
    // The JWT bundles did not change with B's root (its JWT key stayed): the next message is
    // B's removal.
    let update = next(&mut jwt).await;
    assert_ne!(update, first_jwt);
    assert_eq!(
        update.bundles.into_keys().collect::<BTreeSet<_>>(),
        ids(&[TD])
    );
    node.stop().await;
}
