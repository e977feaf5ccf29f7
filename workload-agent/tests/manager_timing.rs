//! Certificate manager timing on tokio's paused clock: renewal at half-life within the jitter
//! bounds, backoff growth and cap while the server is down, a still-valid SVID kept until it
//! expires, and idle identities dropped instead of renewed.

#[path = "support/fake_server.rs"]
#[allow(dead_code)]
mod fake_server;

use std::sync::Arc;
use std::time::Duration;

use fake_server::{FakeServer, Mode, entry};
use lanyard_agent::identities::{IdentityError, WorkloadIdentities};
use lanyard_agent::manager::{CertificateManager, ManagerSettings};
use lanyard_agent::metrics::AgentMetrics;
use tokio::sync::watch;
use tokio::time::Instant;

fn start(
    server: Arc<FakeServer>,
    settings: ManagerSettings,
) -> (CertificateManager, Arc<AgentMetrics>) {
    let metrics = AgentMetrics::unregistered();
    let manager = CertificateManager::new(server, settings, metrics.clone());
    manager.set_attested(true);
    manager.spawn();
    (manager, metrics)
}

/// Waits for the next change, failing the test after `within` (of paused time).
async fn next_change(rx: &mut watch::Receiver<u64>, within: Duration) {
    tokio::time::timeout(within, rx.changed())
        .await
        .expect("no change in time")
        .expect("manager gone");
}

fn failures(metrics: &AgentMetrics, reason: &str) -> u64 {
    metrics
        .renewal_failures
        .get_or_create(&vec![("reason", reason.to_owned())])
        .get()
}

#[tokio::test(start_paused = true)]
async fn renews_at_half_life_within_jitter_and_streams_see_each_rotation() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = Arc::new(FakeServer::new(Duration::from_secs(100)));
    let (manager, metrics) = start(server.clone(), ManagerSettings::default());
    let web = [entry("/web")];
    let mut changes = manager.changes();

    let mut current = manager.x509_svids(&web).await.unwrap();
    changes.mark_unchanged();
    let mut received_at = Instant::now();
    for round in 0..4 {
        next_change(&mut changes, Duration::from_secs(200)).await;
        let elapsed = received_at.elapsed();
        // Half of 100 s ±10%, with a second of slack for whole-second certificate times.
        assert!(
            elapsed >= Duration::from_secs(44) && elapsed <= Duration::from_secs(56),
            "round {round}: renewed after {elapsed:?}"
        );
        // A stream re-reads on the change and gets the new SVID.
        let renewed = manager.x509_svids(&web).await.unwrap();
        assert!(
            !Arc::ptr_eq(&renewed[0], &current[0]),
            "round {round}: not rotated"
        );
        assert_ne!(renewed[0].leaf(), current[0].leaf());
        assert_ne!(
            renewed[0].private_key_pkcs8(),
            current[0].private_key_pkcs8(),
            "a new key at each renewal"
        );
        current = renewed;
        received_at = Instant::now();
    }
    assert_eq!(server.calls().len(), 5);
    assert_eq!(metrics.rotations.get(), 5);
    assert_eq!(manager.identities().len(), 1, "a read identity is kept");
}

#[tokio::test(start_paused = true)]
async fn backoff_grows_to_its_cap_and_the_valid_svid_is_served_until_it_expires() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = Arc::new(FakeServer::new(Duration::from_secs(100)));
    let settings = ManagerSettings {
        backoff_initial: Duration::from_secs(1),
        backoff_max: Duration::from_secs(8),
        ..ManagerSettings::default()
    };
    let (manager, metrics) = start(server.clone(), settings);
    let web = [entry("/web")];
    let t0 = Instant::now();
    let first = manager.x509_svids(&web).await.unwrap();
    server.set_mode(Mode::Unavailable);

    // Past the renewal point, still before expiry: renewals fail, the SVID stays served.
    tokio::time::sleep(Duration::from_secs(90)).await;
    let served = manager.x509_svids(&web).await.unwrap();
    assert!(Arc::ptr_eq(&served[0], &first[0]), "the valid SVID is kept");
    assert!(failures(&metrics, "unavailable") >= 5);

    let times: Vec<Instant> = server.calls().iter().skip(1).map(|c| c.at).collect();
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    // Bases 1, 2, 4, 8, 8, ...; each delay is drawn from [0.8 * base, base].
    let bases = [1u64, 2, 4, 8, 8, 8];
    assert!(gaps.len() >= bases.len(), "{gaps:?}");
    for (gap, base) in gaps.iter().zip(bases) {
        let base = Duration::from_secs(base);
        assert!(
            *gap >= base.mul_f64(0.8) && *gap <= base,
            "gap {gap:?} outside [0.8, 1] x {base:?}: {gaps:?}"
        );
    }

    // Expiry withdraws it: streams are told, and callers get `NotReady` (after the next failure).
    let mut changes = manager.changes();
    tokio::time::sleep_until(t0 + Duration::from_secs(101)).await;
    assert!(
        changes.has_changed().unwrap(),
        "expiry must reach the streams"
    );
    changes.mark_unchanged();
    match manager.x509_svids(&web).await {
        Err(IdentityError::NotReady(why)) => assert!(why.contains("unavailable"), "{why}"),
        other => panic!("expected NotReady, got {other:?}"),
    }
    assert_eq!(metrics.svids_cached.get(), 0);

    // The server comes back: the next retry (at most 8 s away) succeeds.
    server.set_mode(Mode::Sign);
    next_change(&mut changes, Duration::from_secs(9)).await;
    let back = manager.x509_svids(&web).await.unwrap();
    assert_ne!(back[0].leaf(), first[0].leaf(), "a new SVID");
}

#[tokio::test(start_paused = true)]
async fn an_identity_nobody_reads_is_dropped_instead_of_renewed() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = Arc::new(FakeServer::new(Duration::from_secs(3600)));
    let (manager, metrics) = start(server.clone(), ManagerSettings::default());
    // A one-shot fetch (e.g. `api fetch x509`), never read again.
    manager.x509_svids(&[entry("/once")]).await.unwrap();
    assert_eq!(manager.identities().len(), 1);
    // Renewal would be at ~30 min; the idle timeout (10 min) has passed by then.
    tokio::time::sleep(Duration::from_secs(2400)).await;
    assert!(manager.identities().is_empty(), "idle identity kept");
    assert_eq!(server.calls().len(), 1, "an idle identity was renewed");
    assert_eq!(metrics.svids_cached.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_identity_asked_for_within_the_idle_timeout_is_renewed() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = Arc::new(FakeServer::new(Duration::from_secs(600)));
    let (manager, _) = start(server.clone(), ManagerSettings::default());
    manager.x509_svids(&[entry("/polled")]).await.unwrap();
    // A client polling every 2 minutes (not streaming) keeps it alive across renewals.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(120)).await;
        manager.x509_svids(&[entry("/polled")]).await.unwrap();
    }
    // 20 minutes of 10-minute SVIDs renewed at ~5 minutes: about 4 renewals.
    let calls = server.calls().len();
    assert!((4..=6).contains(&calls), "{calls} mints");
}
