//! Shared by the `workload_api_*` tests: a test PKI, a fake [`WorkloadIdentities`], and the
//! real Workload API served on a Unix socket in a tempdir, attesting callers from `/proc` (so
//! this test process attests as itself).
#![allow(dead_code)] // each test file uses a different part

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use lanyard_agent::attest::{Attested, WorkloadAttestor};
use lanyard_agent::identities::{Entitlement, IdentityError, WorkloadIdentities};
use lanyard_agent::socket::{self, ConnectionLimits, ServeError, Services};
use lanyard_agent::workload_api::{Limits, WorkloadApiMetrics};
use lanyard_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use lanyard_svid::jwt::JwtSigner;
use lanyard_svid::selector::Selector;
use lanyard_svid::{
    BundleSet, KeyAlgorithm, KeyAndCsr, RootCa, SpiffeId, TrustBundle, TrustDomain, VerifiedCsr,
    X509Svid,
};
use tokio::sync::{oneshot, watch};
use tonic::transport::Channel;

/// Every wait in these tests is bounded by this.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub fn install_ring() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Waits for `fut`, failing the test after [`DEADLINE`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Polls `check` until it returns `Some`, failing after [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    within(what, async {
        loop {
            if let Some(value) = check().await {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// A trust domain with a root, an issuing intermediate and a JWT signer, plus a federated
/// domain with a root only.
pub struct Pki {
    pub td: TrustDomain,
    pub root: RootCa,
    pub issuer: lanyard_svid::Issuer,
    pub jwt: JwtSigner,
    pub federated: RootCa,
}

impl Pki {
    pub fn new() -> Self {
        let now = SystemTime::now();
        let td = TrustDomain::new("example.org").unwrap();
        let root = RootCa::generate(&td, Duration::from_secs(24 * 3600), now).unwrap();
        let issuer = root
            .issue_intermediate(Duration::from_secs(12 * 3600), now)
            .unwrap();
        let (jwt, _pkcs8) = JwtSigner::generate().unwrap();
        let federated_td = TrustDomain::new("partner.test").unwrap();
        let federated =
            RootCa::generate(&federated_td, Duration::from_secs(24 * 3600), now).unwrap();
        Self {
            td,
            root,
            issuer,
            jwt,
            federated,
        }
    }

    pub fn id(&self, path: &str) -> SpiffeId {
        self.td.id(path).unwrap()
    }

    /// A fresh X.509-SVID (new key) for `id`.
    pub fn svid(&self, id: &SpiffeId) -> Arc<X509Svid> {
        let key = KeyAndCsr::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let csr = VerifiedCsr::from_der(&key.csr_der).unwrap();
        let signed = self
            .issuer
            .sign_x509_svid(&csr, id, Duration::from_secs(3600), SystemTime::now())
            .unwrap();
        Arc::new(X509Svid::parse(signed.cert_chain, Some(key.private_key_pkcs8)).unwrap())
    }

    pub fn bundles(&self) -> BundleSet {
        let mut own =
            TrustBundle::from_x509_authorities(self.td.clone(), [self.root.cert_der().clone()]);
        own.add_jwt_authority(self.jwt.authority());
        let mut set = BundleSet::from(own);
        set.insert(TrustBundle::from_x509_authorities(
            self.federated.trust_domain().clone(),
            [self.federated.cert_der().clone()],
        ));
        set
    }
}

pub fn entitlement(id: &SpiffeId) -> Entitlement {
    Entitlement {
        spiffe_id: id.clone(),
        workload: Default::default(),
        x509_ttl: None,
        hint: String::new(),
        federates_with: Vec::new(),
    }
}

/// An entitlement to `id` whose registration federates with `domains`.
pub fn federating(id: &SpiffeId, domains: &[&TrustDomain]) -> Entitlement {
    Entitlement {
        federates_with: domains.iter().map(|d| (*d).clone()).collect(),
        ..entitlement(id)
    }
}

struct State {
    entitlements: Vec<Entitlement>,
    svids: HashMap<SpiffeId, Arc<X509Svid>>,
    bundles: Arc<BundleSet>,
    /// Every caller seen by `resolve`, to check attestation happened.
    resolved_for: Vec<Attested>,
}

/// A [`WorkloadIdentities`] whose entitlements and SVIDs the test sets.
pub struct FakeIdentities {
    pub pki: Pki,
    state: Mutex<State>,
    changes: watch::Sender<u64>,
}

impl FakeIdentities {
    /// Entitled to `ids` (first = default), each with an SVID.
    pub fn new(pki: Pki, ids: &[SpiffeId]) -> Arc<Self> {
        let svids = ids.iter().map(|id| (id.clone(), pki.svid(id))).collect();
        let state = State {
            entitlements: ids.iter().map(entitlement).collect(),
            svids,
            bundles: Arc::new(pki.bundles()),
            resolved_for: Vec::new(),
        };
        Arc::new(Self {
            pki,
            state: Mutex::new(state),
            changes: watch::channel(0).0,
        })
    }

    fn bump(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// Entitled to `ids` (first = default), each with an SVID, every one federating with the
    /// Pki's federated domain (`partner.test`).
    pub fn federating(pki: Pki, ids: &[SpiffeId]) -> Arc<Self> {
        let partner = pki.federated.trust_domain().clone();
        let this = Self::new(pki, ids);
        this.state.lock().unwrap().entitlements =
            ids.iter().map(|id| federating(id, &[&partner])).collect();
        this
    }

    /// Replaces every bundle held (own and federated) and announces the change.
    pub fn set_bundles(&self, bundles: BundleSet) {
        self.state.lock().unwrap().bundles = Arc::new(bundles);
        self.bump();
    }

    /// Replaces the entitlements (SVIDs made for new IDs) and announces the change.
    pub fn set_entitled(&self, ids: &[SpiffeId]) {
        {
            let mut state = self.state.lock().unwrap();
            state.entitlements = ids.iter().map(entitlement).collect();
            for id in ids {
                if !state.svids.contains_key(id) {
                    let svid = self.pki.svid(id);
                    state.svids.insert(id.clone(), svid);
                }
            }
        }
        self.bump();
    }

    /// Replaces the entitlements with `entitlements` as given (hints and all; SVIDs made for
    /// new IDs) and announces the change.
    pub fn set_entitlements(&self, entitlements: Vec<Entitlement>) {
        {
            let mut state = self.state.lock().unwrap();
            for e in &entitlements {
                if !state.svids.contains_key(&e.spiffe_id) {
                    let svid = self.pki.svid(&e.spiffe_id);
                    state.svids.insert(e.spiffe_id.clone(), svid);
                }
            }
            state.entitlements = entitlements;
        }
        self.bump();
    }

    /// Issues a new SVID for `id` and announces it; returns it.
    pub fn rotate(&self, id: &SpiffeId) -> Arc<X509Svid> {
        let svid = self.pki.svid(id);
        self.state
            .lock()
            .unwrap()
            .svids
            .insert(id.clone(), svid.clone());
        self.bump();
        svid
    }

    /// Announces a change that changes nothing.
    pub fn tick(&self) {
        self.bump();
    }

    pub fn svid_of(&self, id: &SpiffeId) -> Arc<X509Svid> {
        self.state.lock().unwrap().svids[id].clone()
    }

    pub fn resolved_for(&self) -> Vec<Attested> {
        self.state.lock().unwrap().resolved_for.clone()
    }
}

#[tonic::async_trait]
impl WorkloadIdentities for FakeIdentities {
    fn resolve(&self, attested: &Attested) -> Vec<Entitlement> {
        let mut state = self.state.lock().unwrap();
        state.resolved_for.push(attested.clone());
        state.entitlements.clone()
    }

    async fn x509_svids(
        &self,
        entitlements: &[Entitlement],
    ) -> Result<Vec<Arc<X509Svid>>, IdentityError> {
        let state = self.state.lock().unwrap();
        entitlements
            .iter()
            .map(|e| {
                state
                    .svids
                    .get(&e.spiffe_id)
                    .cloned()
                    .ok_or_else(|| IdentityError::NotReady("not minted".into()))
            })
            .collect()
    }

    async fn jwt_svid(
        &self,
        entitlement: &Entitlement,
        audience: &[String],
    ) -> Result<String, IdentityError> {
        self.pki
            .jwt
            .mint(
                &entitlement.spiffe_id,
                audience,
                Duration::from_secs(300),
                SystemTime::now(),
            )
            .map_err(|e| IdentityError::Refused(e.to_string()))
    }

    fn bundles(&self) -> Arc<BundleSet> {
        self.state.lock().unwrap().bundles.clone()
    }

    /// The Pki's own trust domain's bundle: `partner.test` is a federated one.
    fn own_bundles(&self) -> Arc<BundleSet> {
        let all = self.bundles();
        Arc::new(
            all.get(&self.pki.td)
                .map(|own| BundleSet::from(own.clone()))
                .unwrap_or_default(),
        )
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

/// The Workload API served by [`socket::serve()`] on a socket in a tempdir.
pub struct Agent {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub metrics: WorkloadApiMetrics,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
}

impl Agent {
    pub async fn start(identities: Arc<FakeIdentities>, limits: Limits) -> Self {
        Self::start_with(identities, limits, WorkloadAttestor::default()).await
    }

    /// With an attestor of the test's choosing (e.g. over a fixture /proc).
    pub async fn start_with(
        identities: Arc<FakeIdentities>,
        limits: Limits,
        attestor: WorkloadAttestor,
    ) -> Self {
        Self::start_full(identities, limits, ConnectionLimits::default(), attestor).await
    }

    /// With connection limits of the test's choosing too.
    pub async fn start_full(
        identities: Arc<FakeIdentities>,
        limits: Limits,
        connection_limits: ConnectionLimits,
        attestor: WorkloadAttestor,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // A subdirectory that does not exist yet: serve creates it.
        let socket = dir.path().join("sockets").join("agent.sock");
        let metrics = WorkloadApiMetrics::default();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn({
            let socket = socket.clone();
            let metrics = metrics.clone();
            async move {
                socket::serve(
                    &socket,
                    Arc::new(attestor),
                    connection_limits,
                    Services::new().workload_api(identities, limits, metrics),
                    async {
                        let _ = stopped.await;
                    },
                )
                .await
            }
        });
        let agent = Self {
            dir,
            socket,
            metrics,
            stop: Some(stop),
            task,
        };
        let path = agent.socket.clone();
        eventually("the socket to be bound", || {
            let exists = path.exists();
            async move { exists.then_some(()) }
        })
        .await;
        agent
    }

    /// A raw generated client (no header added: each test sets its own).
    pub async fn raw_client(&self) -> SpiffeWorkloadApiClient<Channel> {
        client_at(&self.socket).await
    }

    /// The `spiffe` crate's client, as a third-party workload would use it.
    pub async fn spiffe_client(&self) -> spiffe::WorkloadApiClient {
        within(
            "the spiffe client to connect",
            spiffe::WorkloadApiClient::connect_to(format!("unix://{}", self.socket.display())),
        )
        .await
        .unwrap()
    }

    /// Stops the server and waits for `serve` to return.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        self.shutdown().await
    }

    /// Stops the server, keeping the tempdir (to look at what is left in it).
    pub async fn shutdown(&mut self) -> Result<(), ServeError> {
        let _ = self.stop.take().expect("stopped once").send(());
        within("serve to return", &mut self.task).await.unwrap()
    }
}

pub async fn client_at(socket: &Path) -> SpiffeWorkloadApiClient<Channel> {
    let channel = within("connect", lanyard_client::channel::connect(socket))
        .await
        .unwrap();
    SpiffeWorkloadApiClient::new(channel)
}

/// A request carrying the Workload API header.
pub fn req<T>(message: T) -> tonic::Request<T> {
    lanyard_client::channel::request(message, DEADLINE)
}

/// The unix uid selector of this test process.
pub fn my_uid_selector() -> Selector {
    // SAFETY: getuid cannot fail and touches no memory.
    Selector::uid(unsafe { libc::getuid() })
}
