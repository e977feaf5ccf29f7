//! Certificate manager behaviour against a fake server: first mints and the cache, shared
//! identities, batching and bounded concurrency, refusals, JWT-SVIDs, and the change signal.

#[path = "support/fake_server.rs"]
#[allow(dead_code)]
mod fake_server;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use fake_server::{FakeServer, Mode, entry, pod};
use lanyard_agent::identities::{IdentityError, WorkloadIdentities};
use lanyard_agent::manager::{CertificateManager, ManagerSettings};
use lanyard_agent::metrics::AgentMetrics;
use lanyard_svid::{BundleSet, PeerRole, verify_peer};

const UID_A: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const UID_B: &str = "aaaaaaaa-0000-4000-8000-000000000002";

fn manager(server: Arc<FakeServer>, settings: ManagerSettings) -> CertificateManager {
    let manager = CertificateManager::new(server, settings, AgentMetrics::unregistered());
    manager.set_attested(true);
    manager.spawn();
    manager
}

#[tokio::test(start_paused = true)]
async fn first_mint_then_cache_and_one_svid_per_identity() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = Arc::new(FakeServer::new(Duration::from_secs(3600)));
    let m = manager(server.clone(), ManagerSettings::default());

    let web = m.x509_svids(&[entry("/web")]).await.unwrap();
    assert_eq!(web[0].spiffe_id().to_string(), "spiffe://example.org/web");
    assert!(web[0].private_key_pkcs8().is_some());
    let id = verify_peer(
        web[0].chain(),
        &server.bundles(),
        SystemTime::now(),
        PeerRole::Client,
    )
    .unwrap();
    assert_eq!(&id, web[0].spiffe_id());

    let again = m.x509_svids(&[entry("/web")]).await.unwrap();
    assert!(Arc::ptr_eq(&again[0], &web[0]), "served from the cache");
    assert_eq!(server.calls().len(), 1);

    // Two pods with one service account share one SVID (one mint).
    let a = m
        .x509_svids(&[pod("shop", "cart", "cart-a", UID_A)])
        .await
        .unwrap();
    let b = m
        .x509_svids(&[pod("shop", "cart", "cart-b", UID_B)])
        .await
        .unwrap();
    assert!(Arc::ptr_eq(&a[0], &b[0]));
    assert_eq!(server.calls().len(), 2);

    // Several at once, in the order asked.
    let both = m.x509_svids(&[entry("/web"), entry("/db")]).await.unwrap();
    let ids: Vec<String> = both
        .iter()
        .map(|s| s.spiffe_id().path().to_owned())
        .collect();
    assert_eq!(ids, ["/web", "/db"]);
    assert_eq!(m.identities().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn csrs_are_batched_with_bounded_concurrency() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = Arc::new(FakeServer::new(Duration::from_secs(3600)));
    *server.delay.lock().unwrap() = Duration::from_millis(500);
    let settings = ManagerSettings {
        batch_size: 10,
        max_in_flight: 2,
        ..ManagerSettings::default()
    };
    let m = manager(server.clone(), settings);
    let wanted: Vec<_> = (0..45).map(|i| entry(&format!("/w{i}"))).collect();
    let svids = m.x509_svids(&wanted).await.unwrap();
    assert_eq!(svids.len(), 45);
    let calls = server.calls();
    assert!(calls.iter().all(|c| c.ids.len() <= 10), "batch over 10");
    assert_eq!(
        calls.iter().map(|c| c.ids.len()).sum::<usize>(),
        45,
        "each identity minted once"
    );
    assert_eq!(server.max_in_flight.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn refusal_answers_the_waiting_caller_at_once() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = Arc::new(FakeServer::new(Duration::from_secs(3600)));
    server.set_mode(Mode::Refuse("entry_not_assigned_to_node"));
    let metrics = AgentMetrics::unregistered();
    let m = CertificateManager::new(server.clone(), ManagerSettings::default(), metrics.clone());
    m.set_attested(true);
    m.spawn();
    let start = tokio::time::Instant::now();
    match m.x509_svids(&[entry("/nope")]).await {
        Err(IdentityError::NotReady(why)) => {
            assert!(why.starts_with("entry_not_assigned_to_node"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "waited for the full deadline"
    );
    let refused = metrics
        .renewal_failures
        .get_or_create(&vec![("reason", "entry_not_assigned_to_node".to_owned())])
        .get();
    assert_eq!(refused, 1);
}

#[tokio::test(start_paused = true)]
async fn one_refused_identity_does_not_cost_the_caller_its_others() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = Arc::new(FakeServer::new(Duration::from_secs(3600)));
    server.set_mode(Mode::RefuseId("/bad"));
    let m = manager(server.clone(), ManagerSettings::default());
    let start = tokio::time::Instant::now();
    let held = m
        .x509_svids(&[entry("/bad"), entry("/web"), entry("/db")])
        .await
        .unwrap();
    let ids: Vec<&str> = held.iter().map(|s| s.spiffe_id().path()).collect();
    assert_eq!(ids, ["/web", "/db"], "the others, in order");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "waited for the full deadline"
    );
    // Alone, the refused identity is still an error naming the reason.
    match m.x509_svids(&[entry("/bad")]).await {
        Err(IdentityError::NotReady(why)) => {
            assert!(why.starts_with("entry_not_assigned_to_node"), "{why}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_refused_pod_claim_falls_back_to_another_pod_of_the_identity() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = Arc::new(FakeServer::new(Duration::from_secs(3600)));
    let m = manager(server.clone(), ManagerSettings::default());
    let mut changes = m.changes();
    m.x509_svids(&[pod("shop", "cart", "cart-a", UID_A)])
        .await
        .unwrap();
    // Pod b names the same identity but the server no longer knows it.
    server.set_mode(Mode::RefusePod("cart-b"));
    let b = pod("shop", "cart", "cart-b", UID_B);
    let served = m.x509_svids(std::slice::from_ref(&b)).await.unwrap();
    assert_eq!(served[0].spiffe_id().path(), "/ns/shop/sa/cart");
    // At renewal, the newest claim (b) is refused and a's claim is used instead.
    changes.mark_unchanged();
    tokio::time::timeout(Duration::from_secs(3600), changes.changed())
        .await
        .unwrap()
        .unwrap();
    let calls = server.calls();
    let tail: Vec<usize> = calls.iter().map(|c| c.ids.len()).collect();
    assert_eq!(tail, [1, 1, 1], "first mint, refused b, then a: {calls:?}");
    let renewed = m.x509_svids(&[b]).await.unwrap();
    assert!(!Arc::ptr_eq(&renewed[0], &served[0]));
}

#[tokio::test(start_paused = true)]
async fn nothing_is_minted_before_the_agent_attests() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = Arc::new(FakeServer::new(Duration::from_secs(3600)));
    let m = CertificateManager::new(
        server.clone(),
        ManagerSettings::default(),
        AgentMetrics::unregistered(),
    );
    m.spawn();
    assert_eq!(
        m.x509_svids(&[entry("/web")]).await.unwrap_err(),
        IdentityError::AgentNotAttested
    );
    assert_eq!(
        m.jwt_svid(&entry("/web"), &["aud".into()])
            .await
            .unwrap_err(),
        IdentityError::AgentNotAttested
    );
    assert!(server.calls().is_empty());
    m.set_attested(true);
    assert!(m.x509_svids(&[entry("/web")]).await.is_ok());
    assert_eq!(
        m.x509_svids(&[]).await.unwrap_err(),
        IdentityError::NoIdentity
    );
}

#[tokio::test(start_paused = true)]
async fn jwt_svids_are_minted_and_refusals_typed() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = Arc::new(FakeServer::new(Duration::from_secs(3600)));
    let m = manager(server.clone(), ManagerSettings::default());
    let token = m
        .jwt_svid(&entry("/web"), &["db".into(), "cache".into()])
        .await
        .unwrap();
    assert_eq!(token, "jwt-for-spiffe://example.org/web-aud-db,cache");
    assert!(matches!(
        m.jwt_svid(&entry("/web"), &[]).await,
        Err(IdentityError::Refused(_))
    ));
    server.set_mode(Mode::Refuse("entry_not_found"));
    match m.jwt_svid(&entry("/web"), &["db".into()]).await {
        Err(IdentityError::Refused(why)) => assert!(why.contains("entry_not_found"), "{why}"),
        other => panic!("{other:?}"),
    }
    server.set_mode(Mode::Unavailable);
    assert!(matches!(
        m.jwt_svid(&entry("/web"), &["db".into()]).await,
        Err(IdentityError::NotReady(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn bundle_and_view_changes_reach_streams_only_when_they_change() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = Arc::new(FakeServer::new(Duration::from_secs(3600)));
    let m = manager(server.clone(), ManagerSettings::default());
    let mut changes = m.changes();
    m.set_bundles(server.bundles());
    assert!(changes.has_changed().unwrap());
    changes.mark_unchanged();
    assert_eq!(*m.bundles(), server.bundles());
    m.set_bundles(server.bundles());
    assert!(
        !changes.has_changed().unwrap(),
        "same bundle bumped the counter"
    );
    m.set_bundles(BundleSet::new());
    assert!(changes.has_changed().unwrap());
    changes.mark_unchanged();

    let view = lanyard_agent::manager::resolve::NodeView {
        node_name: "node-1".into(),
        ..Default::default()
    };
    m.set_view(view.clone());
    assert!(changes.has_changed().unwrap());
    changes.mark_unchanged();
    m.set_view(view);
    assert!(!changes.has_changed().unwrap());
}

#[tokio::test(start_paused = true)]
async fn federated_bundles_are_served_apart_from_ours_and_tick_changes() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = Arc::new(FakeServer::new(Duration::from_secs(3600)));
    let m = manager(server.clone(), ManagerSettings::default());
    m.set_bundles(server.bundles());
    let mut changes = m.changes();
    changes.mark_unchanged();

    let foreign = |name: &str| {
        let td = lanyard_svid::TrustDomain::new(name).unwrap();
        let root =
            lanyard_svid::RootCa::generate(&td, Duration::from_secs(3600), SystemTime::now())
                .unwrap();
        lanyard_svid::TrustBundle::from_x509_authorities(td, [root.cert_der().clone()])
    };
    let b = foreign("b.test");
    m.set_federated_bundles(BundleSet::from(b.clone()));
    assert!(changes.has_changed().unwrap());
    changes.mark_unchanged();
    assert_eq!(*m.own_bundles(), server.bundles(), "ours only");
    let mut all = server.bundles();
    all.insert(b.clone());
    assert_eq!(*m.bundles(), all);
    m.set_federated_bundles(BundleSet::from(b.clone()));
    assert!(!changes.has_changed().unwrap(), "the same set again");

    // A federated bundle of our own domain never shadows ours.
    let mut with_ours = BundleSet::from(b.clone());
    with_ours.insert(foreign(fake_server::TD));
    m.set_federated_bundles(with_ours);
    assert_eq!(*m.bundles(), all);
    assert!(!changes.has_changed().unwrap(), "nothing served changed");

    // A new own bundle keeps the federated ones; an empty federated set drops them.
    m.set_bundles(server.bundles());
    assert_eq!(*m.bundles(), all);
    m.set_federated_bundles(BundleSet::new());
    assert!(changes.has_changed().unwrap());
    assert_eq!(*m.bundles(), server.bundles());
}
