//! The Workload API's watch streams share one response per change and identity set, through
//! the real service (attestation from `/proc` of this process, with a per-test uid standing
//! for distinct workloads), and never hand one caller's SVID to another.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use lanyard_proto::WORKLOAD_API_HEADER;
use lanyard_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApi;
use lanyard_proto::workload::{X509BundlesRequest, X509svidRequest};
use lanyard_svid::selector::Selector;
use lanyard_svid::{
    BundleSet, Issuer, KeyAlgorithm, KeyAndCsr, RootCa, SpiffeId, TrustBundle, TrustDomain,
    VerifiedCsr, X509Svid,
};
use tokio::sync::watch;
use tokio_stream::StreamExt as _;
use tonic::{Code, Request};

use super::shared_responses::BuildCounts;
use super::{Limits, ResponseStream, WorkloadApiMetrics, WorkloadApiService};
use crate::attest::{Attested, PeerCred, WorkloadAttestor};
use crate::identities::{Entitlement, IdentityError, WorkloadIdentities};
use crate::socket::Caller;

const WAIT: Duration = Duration::from_secs(20);
const UID_WEB: u32 = 61_001;
const UID_DB: u32 = 61_002;

struct Pki {
    td: TrustDomain,
    root: RootCa,
    issuer: Issuer,
}

impl Pki {
    fn new() -> Self {
        let now = SystemTime::now();
        let td = TrustDomain::new("example.org").unwrap();
        let root = RootCa::generate(&td, Duration::from_secs(3600), now).unwrap();
        let issuer = root
            .issue_intermediate(Duration::from_secs(1800), now)
            .unwrap();
        Self { td, root, issuer }
    }

    fn svid(&self, id: &SpiffeId) -> Arc<X509Svid> {
        let key = KeyAndCsr::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let csr = VerifiedCsr::from_der(&key.csr_der).unwrap();
        let signed = self
            .issuer
            .sign_x509_svid(&csr, id, Duration::from_secs(600), SystemTime::now())
            .unwrap();
        Arc::new(X509Svid::parse(signed.cert_chain, Some(key.private_key_pkcs8)).unwrap())
    }
}

/// Entitles `unix:uid:UID_WEB` to `web` and `unix:uid:UID_DB` to `db` (while `db_entitled`),
/// counting what the service asks.
struct Identities {
    pki: Pki,
    svids: Mutex<HashMap<SpiffeId, Arc<X509Svid>>>,
    bundles: Mutex<Arc<BundleSet>>,
    db_entitled: Mutex<bool>,
    /// The federated trust domains `web`'s registration names.
    web_federates_with: Mutex<Vec<TrustDomain>>,
    view_version: AtomicU64,
    changes: watch::Sender<u64>,
    resolves: AtomicUsize,
    svid_reads: AtomicUsize,
}

impl Identities {
    fn new() -> Arc<Self> {
        let pki = Pki::new();
        let bundles = Arc::new(BundleSet::from(TrustBundle::from_x509_authorities(
            pki.td.clone(),
            [pki.root.cert_der().clone()],
        )));
        let svids = [web(&pki), db(&pki)]
            .into_iter()
            .map(|id| (id.clone(), pki.svid(&id)))
            .collect();
        Arc::new(Self {
            pki,
            svids: Mutex::new(svids),
            bundles: Mutex::new(bundles),
            db_entitled: Mutex::new(true),
            web_federates_with: Mutex::new(Vec::new()),
            view_version: AtomicU64::new(1),
            changes: watch::channel(0).0,
            resolves: AtomicUsize::new(0),
            svid_reads: AtomicUsize::new(0),
        })
    }

    fn rotate(&self, id: &SpiffeId) -> Arc<X509Svid> {
        let svid = self.pki.svid(id);
        self.svids.lock().unwrap().insert(id.clone(), svid.clone());
        self.changes.send_modify(|n| *n += 1);
        svid
    }

    fn set_db_entitled(&self, entitled: bool) {
        *self.db_entitled.lock().unwrap() = entitled;
        self.view_version.fetch_add(1, Ordering::SeqCst);
        self.changes.send_modify(|n| *n += 1);
    }

    /// Holds `bundle` beside ours (replacing that domain's), and says so.
    fn hold(&self, bundle: TrustBundle) {
        let mut bundles = self.bundles.lock().unwrap();
        let mut set = (**bundles).clone();
        set.insert(bundle);
        *bundles = Arc::new(set);
        drop(bundles);
        self.changes.send_modify(|n| *n += 1);
    }

    fn svid_of(&self, id: &SpiffeId) -> Arc<X509Svid> {
        self.svids.lock().unwrap()[id].clone()
    }
}

fn web(pki: &Pki) -> SpiffeId {
    pki.td.id("/web").unwrap()
}

fn db(pki: &Pki) -> SpiffeId {
    pki.td.id("/db").unwrap()
}

#[tonic::async_trait]
impl WorkloadIdentities for Identities {
    fn resolve(&self, attested: &Attested) -> Vec<Entitlement> {
        self.resolves.fetch_add(1, Ordering::SeqCst);
        let mut federates_with = Vec::new();
        let id = if attested.selectors.contains(&Selector::uid(UID_WEB)) {
            federates_with = self.web_federates_with.lock().unwrap().clone();
            web(&self.pki)
        } else if attested.selectors.contains(&Selector::uid(UID_DB))
            && *self.db_entitled.lock().unwrap()
        {
            db(&self.pki)
        } else {
            return Vec::new();
        };
        vec![Entitlement {
            spiffe_id: id,
            workload: Default::default(),
            x509_ttl: None,
            hint: String::new(),
            federates_with,
        }]
    }

    async fn x509_svids(
        &self,
        entitlements: &[Entitlement],
    ) -> Result<Vec<Arc<X509Svid>>, IdentityError> {
        self.svid_reads.fetch_add(1, Ordering::SeqCst);
        let svids = self.svids.lock().unwrap();
        Ok(entitlements
            .iter()
            .map(|e| svids[&e.spiffe_id].clone())
            .collect())
    }

    async fn jwt_svid(&self, _: &Entitlement, _: &[String]) -> Result<String, IdentityError> {
        Err(IdentityError::NotReady("not in this test".into()))
    }

    fn bundles(&self) -> Arc<BundleSet> {
        self.bundles.lock().unwrap().clone()
    }

    fn own_bundles(&self) -> Arc<BundleSet> {
        let all = self.bundles();
        Arc::new(BundleSet::from(all.get(&self.pki.td).unwrap().clone()))
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn view_version(&self) -> Option<u64> {
        Some(self.view_version.load(Ordering::SeqCst))
    }
}

fn service(identities: Arc<Identities>) -> (WorkloadApiService, watch::Sender<bool>) {
    let (stop, stopping) = watch::channel(false);
    let service = WorkloadApiService::new(
        identities,
        &Limits::default(),
        WorkloadApiMetrics::default(),
        stopping,
    );
    (service, stop)
}

/// A request from this process, as a caller with `uid` (its `unix:uid` selector), admitted
/// as the socket's admission layer would: attested, the [`Caller`] in its extensions.
async fn request_as<T>(uid: u32, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(WORKLOAD_API_HEADER, "true".parse().unwrap());
    // SAFETY: getpid and getgid have no preconditions.
    let (pid, gid) = unsafe { (libc::getpid(), libc::getgid()) };
    let attestor = WorkloadAttestor::default();
    let cred = attestor
        .pin(PeerCred::new(Some(pid), uid, gid))
        .expect("this process pins");
    let attested = attestor.attest(cred).await.expect("this process attests");
    request.extensions_mut().insert(Caller { cred, attested });
    request
}

async fn open_svid_stream(
    service: &WorkloadApiService,
    uid: u32,
) -> ResponseStream<lanyard_proto::workload::X509svidResponse> {
    service
        .fetch_x509svid(request_as(uid, X509svidRequest {}).await)
        .await
        .expect("stream opens")
        .into_inner()
}

async fn next<M>(stream: &mut ResponseStream<M>) -> Result<M, tonic::Status> {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("a message in time")
        .expect("the stream goes on")
}

/// The SPIFFE ID and private key a stream sent.
fn sent(message: &lanyard_proto::workload::X509svidResponse) -> (String, Vec<u8>) {
    assert_eq!(message.svids.len(), 1);
    let svid = &message.svids[0];
    (svid.spiffe_id.clone(), svid.x509_svid_key.clone())
}

fn expected(svid: &X509Svid) -> (String, Vec<u8>) {
    (
        svid.spiffe_id().to_string(),
        svid.private_key_pkcs8().unwrap().to_vec(),
    )
}

#[tokio::test]
async fn streams_of_one_identity_share_each_build_and_never_see_another_identity() {
    let identities = Identities::new();
    let (service, _stop) = service(identities.clone());
    let (web_id, db_id) = (web(&identities.pki), db(&identities.pki));

    let mut web_a = open_svid_stream(&service, UID_WEB).await;
    let mut web_b = open_svid_stream(&service, UID_WEB).await;
    let mut db_a = open_svid_stream(&service, UID_DB).await;
    let web_first = expected(&identities.svid_of(&web_id));
    let db_first = expected(&identities.svid_of(&db_id));
    assert_eq!(sent(&next(&mut web_a).await.unwrap()), web_first);
    assert_eq!(sent(&next(&mut web_b).await.unwrap()), web_first);
    assert_eq!(sent(&next(&mut db_a).await.unwrap()), db_first);
    // Two identity sets: two builds, two reads of the source, for three streams.
    assert_eq!(
        service.responses_built(),
        BuildCounts {
            x509_svid: 2,
            ..Default::default()
        }
    );
    assert_eq!(identities.svid_reads.load(Ordering::SeqCst), 2);

    // A rotation of `web`: both web streams get the new SVID from one build.
    let resolves_before = identities.resolves.load(Ordering::SeqCst);
    let web_rotated = expected(&identities.rotate(&web_id));
    assert_eq!(sent(&next(&mut web_a).await.unwrap()), web_rotated);
    assert_eq!(sent(&next(&mut web_b).await.unwrap()), web_rotated);
    assert_eq!(service.responses_built().x509_svid, 3);
    assert_eq!(identities.svid_reads.load(Ordering::SeqCst), 3);
    // The node view did not move: the streams kept their resolution.
    assert_eq!(identities.resolves.load(Ordering::SeqCst), resolves_before);

    // The db stream slept through that change (its state did not change), and next gets its
    // own rotation, never web's.
    let db_rotated = expected(&identities.rotate(&db_id));
    let db_update = sent(&next(&mut db_a).await.unwrap());
    assert_eq!(db_update, db_rotated);
    assert_ne!(db_update.1, web_rotated.1);
    assert_ne!(db_update.1, web_first.1);

    // A view change re-resolves: db loses its identity and its stream ends, web goes on.
    identities.set_db_entitled(false);
    let ended = next(&mut db_a).await.unwrap_err();
    assert_eq!(ended.code(), Code::PermissionDenied);
    assert_eq!(ended.message(), "no identity issued");
    assert!(identities.resolves.load(Ordering::SeqCst) > resolves_before);
    let web_again = expected(&identities.rotate(&web_id));
    assert_eq!(sent(&next(&mut web_a).await.unwrap()), web_again);
    assert_eq!(sent(&next(&mut web_b).await.unwrap()), web_again);
}

#[tokio::test]
async fn bundle_streams_of_different_callers_share_one_build() {
    let identities = Identities::new();
    let (service, stop) = service(identities.clone());
    let mut streams = Vec::new();
    for uid in [UID_WEB, UID_WEB, UID_DB] {
        streams.push(
            service
                .fetch_x509_bundles(request_as(uid, X509BundlesRequest {}).await)
                .await
                .expect("stream opens")
                .into_inner(),
        );
    }
    for stream in &mut streams {
        let bundles = next(stream).await.unwrap().bundles;
        assert_eq!(bundles.len(), 1, "{bundles:?}");
    }
    assert_eq!(service.responses_built().x509_bundles, 1);
    // A caller with no identity may not read bundles at all.
    let refused = service
        .fetch_x509_bundles(request_as(61_999, X509BundlesRequest {}).await)
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.code(), Code::PermissionDenied);

    // Shutdown ends every stream with Unavailable.
    stop.send(true).unwrap();
    for stream in &mut streams {
        assert_eq!(next(stream).await.unwrap_err().code(), Code::Unavailable);
        assert!(stream.next().await.is_none());
    }
}

/// A bundle of `name` under a fresh root.
fn foreign(name: &str) -> TrustBundle {
    let td = TrustDomain::new(name).unwrap();
    let root = RootCa::generate(&td, Duration::from_secs(3600), SystemTime::now()).unwrap();
    TrustBundle::from_x509_authorities(td, [root.cert_der().clone()])
}

#[tokio::test]
async fn bundle_streams_resend_only_when_a_domain_they_are_served_changes() {
    use futures::FutureExt as _;
    let identities = Identities::new();
    let partner = foreign("partner.test");
    *identities.web_federates_with.lock().unwrap() = vec![partner.trust_domain().clone()];
    identities.hold(partner.clone());
    let (service, _stop) = service(identities.clone());
    let open = |uid| {
        let service = service.clone();
        async move {
            service
                .fetch_x509_bundles(request_as(uid, X509BundlesRequest {}).await)
                .await
                .expect("stream opens")
                .into_inner()
        }
    };
    let (mut federating, mut plain) = (open(UID_WEB).await, open(UID_DB).await);
    let keys = |m: &lanyard_proto::workload::X509BundlesResponse| {
        let mut keys: Vec<String> = m.bundles.keys().cloned().collect();
        keys.sort();
        keys
    };
    let first = next(&mut federating).await.unwrap();
    assert_eq!(
        keys(&first),
        ["spiffe://example.org", "spiffe://partner.test"]
    );
    assert_eq!(
        keys(&next(&mut plain).await.unwrap()),
        ["spiffe://example.org"]
    );
    assert_eq!(
        service.responses_built().x509_bundles,
        2,
        "one per federation key"
    );

    // A domain neither is served: both streams build, find nothing new, and send nothing
    // (every step is ready at once, so a message would be there now).
    identities.hold(foreign("unrelated.test"));
    assert!(
        federating.next().now_or_never().is_none(),
        "nothing to resend"
    );
    assert!(plain.next().now_or_never().is_none(), "nothing to resend");

    // partner.test rotates: only the stream served it sends, its new root.
    let rotated = foreign("partner.test");
    identities.hold(rotated.clone());
    let update = next(&mut federating).await.unwrap();
    assert_eq!(
        update.bundles["spiffe://partner.test"],
        rotated.x509_authorities_der()
    );
    assert!(
        plain.next().now_or_never().is_none(),
        "not served partner.test"
    );
}
