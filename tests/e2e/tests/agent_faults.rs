//! Faults over real processes (DESIGN §4): a `lanyard-agent` attested by join token to a
//! `lanyard-server`, serving this test (uid entry, 10 s X.509-SVIDs) through the Rust
//! `spiffe` crate.
//!
//! - The server is killed: the agent keeps serving its cached SVID, and its metrics count
//!   the failed renewals. A new server on the same data dir (same CA) and the same address
//!   comes back: renewals resume, the new SVID chains to the same root.
//! - The server is killed again and stays down: the SVID is served until it expires, and
//!   not after.
//! - With a server back, the agent is killed and restarted on the same data dir without a
//!   join token (the single-use token is spent): it attests with its saved node SVID, and an
//!   `X509Source` that was connected to the old agent reconnects and gets an identity.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use lanyard_e2e::DEADLINE;
use lanyard_e2e::client::metric;
use lanyard_e2e::stack::{Agent, Attestation, Server, TRUST_DOMAIN};
use lanyard_e2e::wait::eventually;
use lanyard_svid::bundle::certificates_from_pem;
use lanyard_svid::{BundleSet, PeerRole, TrustBundle, TrustDomain, verify_peer};

/// The failed-renewal counter for "the server is unreachable".
const RENEWAL_FAILURES: &str = "lanyard_agent_svid_renewal_failures_total{reason=\"unavailable\"}";

fn config() -> String {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    format!(
        "[[entries]]\nspiffe_id = \"spiffe://{TRUST_DOMAIN}/faulty\"\nselectors = [\"unix:uid:{uid}\"]\nnodes = [\"*\"]\nx509_ttl = \"10s\"\n"
    )
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// An SVID as this test compares them: leaf, chain, expiry.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    leaf: Vec<u8>,
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    not_after: SystemTime,
}

fn seen(svid: &spiffe::X509Svid) -> Seen {
    let chain: Vec<_> = svid
        .cert_chain()
        .iter()
        .map(|c| rustls::pki_types::CertificateDer::from(c.as_ref().to_vec()))
        .collect();
    let parsed = lanyard_svid::X509Svid::parse(chain.clone(), None).expect("a valid SVID");
    Seen {
        leaf: svid.leaf().as_ref().to_vec(),
        chain,
        not_after: parsed.not_after(),
    }
}

async fn fetch(client: &spiffe::WorkloadApiClient) -> Result<Seen, String> {
    match tokio::time::timeout(DEADLINE, client.fetch_x509_svid()).await {
        Ok(Ok(svid)) => Ok(seen(&svid)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

fn roots(bundle_pem: &Path) -> BundleSet {
    let roots = certificates_from_pem(&std::fs::read(bundle_pem).unwrap()).unwrap();
    BundleSet::from(TrustBundle::from_x509_authorities(
        TrustDomain::new(TRUST_DOMAIN).unwrap(),
        roots,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_outage_expiry_and_agent_restart() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tmp.path();
    let config = config();

    let mut server = blocking(|| Server::start(dir, &config));
    let addr = server.addr;
    let agent = blocking(|| Agent::start(dir, &server, "node-1"));
    let bundle = roots(&dir.join("bundle.pem"));
    let client =
        spiffe::WorkloadApiClient::connect_to(format!("unix://{}", agent.socket.display()))
            .await
            .unwrap();
    let first = eventually("a first SVID", || async { fetch(&client).await.ok() }).await;
    assert_eq!(
        verify_peer(&first.chain, &bundle, SystemTime::now(), PeerRole::Client)
            .unwrap()
            .path(),
        "/faulty"
    );
    let failures_before = metric(&blocking(|| agent.metrics()), RENEWAL_FAILURES).unwrap_or(0.0);

    // The server dies. Renewal (due at about half of the 10 s) fails and is counted...
    blocking(|| server.process.kill());
    eventually("a failed renewal in the agent's metrics", || {
        let text = blocking(|| agent.metrics());
        async move { (metric(&text, RENEWAL_FAILURES)? > failures_before).then_some(()) }
    })
    .await;
    // ...and the cached SVID is still what workloads get.
    let cached = fetch(&client).await.expect("the cached SVID is served");
    assert_eq!(
        cached, first,
        "the agent served something else than its cached SVID"
    );
    assert!(SystemTime::now() < first.not_after);

    // A new server on the same data dir and address: the agent's renewals resume.
    let mut server = blocking(|| Server::start_on(dir, &config, &addr.to_string()));
    assert_eq!(server.addr, addr);
    let renewed = eventually("a renewed SVID from the new server", || async {
        let now = fetch(&client).await.ok()?;
        (now.leaf != first.leaf && now.not_after > first.not_after).then_some(now)
    })
    .await;
    assert_eq!(
        verify_peer(&renewed.chain, &bundle, SystemTime::now(), PeerRole::Client)
            .unwrap()
            .path(),
        "/faulty",
        "the new server signs under the same root"
    );

    // Down again, for good: the SVID is served until it expires, then no longer.
    blocking(|| server.process.kill());
    let mut last = renewed.clone();
    let refused_at = loop {
        match fetch(&client).await {
            Ok(now) => {
                assert_eq!(now, last, "nothing can renew while the server is down");
                assert!(
                    SystemTime::now() < last.not_after + Duration::from_secs(1),
                    "an expired SVID is still served"
                );
                last = now;
            }
            Err(e) => break (SystemTime::now(), e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The agent's clock for expiry starts when the SVID arrived: never later than NotAfter.
    assert!(
        refused_at.0 + Duration::from_secs(1) >= renewed.not_after,
        "the SVID was withdrawn {:?} before it expired: {}",
        renewed
            .not_after
            .duration_since(refused_at.0)
            .unwrap_or_default(),
        refused_at.1
    );

    // The server is back; the agent is killed and restarted without a join token.
    let _server = blocking(|| Server::start_on(dir, &config, &addr.to_string()));
    let source = spiffe::X509Source::builder()
        .endpoint(format!("unix://{}", agent.socket.display()))
        .reconnect_backoff(Duration::from_millis(100), Duration::from_secs(1))
        .build();
    let source = tokio::time::timeout(DEADLINE, source)
        .await
        .expect("X509Source built in time")
        .expect("X509Source gets an identity");
    let before = source.svid().unwrap().leaf().as_ref().to_vec();
    let mut updates = source.updated();
    let mut agent = agent;
    blocking(|| agent.process.kill());
    let bundle_path = dir.join("bundle.pem");
    let agent = blocking(|| Agent::launch(dir, addr, &bundle_path, Attestation::Saved));
    let deadline = Instant::now() + DEADLINE;
    let after = loop {
        if let Ok(svid) = source.svid()
            && svid.leaf().as_ref() != before.as_slice()
        {
            break svid;
        }
        assert!(
            Instant::now() < deadline,
            "the source never got an identity from the restarted agent"
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), updates.changed()).await;
    };
    assert_eq!(after.spiffe_id().path(), "/faulty");
    drop(agent);
    source.shutdown().await;
}
