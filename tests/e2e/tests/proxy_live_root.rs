//! A root added to the trust bundle is trusted by a running `lanyard-proxy` without a
//! restart, over real processes. Data-dir mode has no way to add a root to a running server,
//! so this runs the server in cluster mode against the Kubernetes API fixture, where the
//! trust anchors live in the `lanyard-bundle` ConfigMap the server watches:
//!
//! - a `lanyard-server` (cluster mode) and a `lanyard-agent` (`k8s_psat`) on node-1, and a
//!   proxy B in front of an echo app, placed in the container cgroup of pod `web-1`, so it
//!   holds the pod identity `spiffe://example.org/ns/default/sa/web`;
//! - a client SVID issued under a second root of example.org (a root rotation in progress,
//!   made by the test) is refused by B: `untrusted_chain`;
//! - the second root is added to the ConfigMap: server -> agent (WatchBundle) -> Workload API
//!   -> proxy; the same client is then accepted (`tls=true peer=...`) by the same process,
//!   still presenting the same certificate.
//!
//! Needs root and the cgroup v1 `pids` hierarchy (as agent_pods.rs); without them it fails
//! saying so, unless `LANYARD_SKIP_CGROUP_TESTS=1`.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::Pod;
use kube_fixture::{FixtureOptions, KubeFixture};
use lanyard_e2e::DEADLINE;
use lanyard_e2e::cgroup::{CgroupDirs, fresh_container_id, pids_root_or_skip};
use lanyard_e2e::cluster::{bundle_configmap, pod, seed};
use lanyard_e2e::echo::EchoApp;
use lanyard_e2e::probe::{Identity, server_leaf};
use lanyard_e2e::proxy::{Launch, Proxy, assert_refused, field, read_to_end_or_error};
use lanyard_e2e::stack::{TRUST_DOMAIN, start_in_cluster};
use lanyard_svid::ca::RootCa;
use lanyard_svid::{
    BundleSet, KeyAlgorithm, KeyAndCsr, SpiffeId, TrustBundle, TrustDomain, VerifiedCsr, X509Svid,
};

const DAY: Duration = Duration::from_secs(86_400);
const WEB: &str = "spiffe://example.org/ns/default/sa/web";
const NEWCOMER: &str = "spiffe://example.org/ns/default/sa/newcomer";

/// An SVID for `id` issued under a fresh intermediate of `root`.
fn svid_under(root: &RootCa, id: &str) -> X509Svid {
    let now = SystemTime::now();
    let issuer = root.issue_intermediate(DAY, now).unwrap();
    let key = KeyAndCsr::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let csr = VerifiedCsr::from_der(&key.csr_der).unwrap();
    let signed = issuer
        .sign_x509_svid(&csr, &SpiffeId::parse(id).unwrap(), DAY, now)
        .unwrap();
    X509Svid::parse(signed.cert_chain, Some(key.private_key_pkcs8)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_added_to_the_bundle_is_trusted_without_restart() {
    let Some(pids) = pids_root_or_skip() else {
        return;
    };
    // Declared first, dropped last: the cgroups go after every process in them has exited.
    let mut cgroups = CgroupDirs::default();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tmp.path();

    let fixture = KubeFixture::start(FixtureOptions::default()).await.unwrap();
    tokio::task::block_in_place(|| {
        let seeded = seed(&fixture);
        let root = &seeded.root;
        let td = TrustDomain::new(TRUST_DOMAIN).unwrap();
        let store = fixture.store();
        let cid = fresh_container_id();
        let web = store
            .create(&pod("default", "web-1", "web", "node-1", Some(&cid)))
            .unwrap();
        let uid = |p: &Pod| p.metadata.uid.clone().expect("the fixture assigns UIDs");

        let (server, agent) = start_in_cluster(dir, &fixture, &seeded);

        // B: in web-1's container cgroup, so the agent gives it web-1's identity.
        let app = EchoApp::start(None);
        let container = cgroups.container(&pids, &uid(&web), &cid);
        let mut b = Proxy::start(
            &agent.socket,
            Launch {
                cgroup: Some(&container),
                ..Launch::default()
            },
            &["--inbound", &format!("127.0.0.1:0={}", app.addr)],
        );
        b.wait_ready();
        let b_in = b.addr("inbound");

        // A client whose SVID chains to a second root, trusting the first (B's).
        let new_root = RootCa::generate(&td, DAY * 30, SystemTime::now()).unwrap();
        let newcomer = Identity {
            svid: svid_under(&new_root, NEWCOMER),
            bundles: BundleSet::from(TrustBundle::from_x509_authorities(
                td.clone(),
                [root.cert_der().clone()],
            )),
        };
        let mut tls = newcomer
            .dial(b.connect(b_in), WEB)
            .expect("the newcomer accepts B's SVID");
        let presented = server_leaf(&tls);
        assert_refused(&mut tls, b"too early");
        let line = b.tap.next_line();
        assert_eq!(field(&line, "tls"), "false", "{line}");
        assert_eq!(field(&line, "reason"), "untrusted_chain", "{line}");
        assert_eq!(app.accepted(), 0);

        // The operator adds the new root to the bundle; nothing restarts.
        store
            .apply(&bundle_configmap(&(root.cert_pem() + &new_root.cert_pem())))
            .unwrap();
        let deadline = Instant::now() + DEADLINE;
        loop {
            let mut tls = newcomer.dial(b.connect(b_in), WEB).unwrap();
            assert_eq!(server_leaf(&tls), presented, "B kept its SVID");
            // Send, then close our side so the connection (and its tap line) ends either way;
            // while B still refuses, the sends may find the connection closed already.
            let _ = std::io::Write::write_all(&mut tls, b"trusted?");
            tls.conn.send_close_notify();
            let _ = std::io::Write::flush(&mut tls);
            let _ = tls.sock.shutdown(std::net::Shutdown::Write);
            let (got, _) = read_to_end_or_error(&mut tls);
            let line = b.tap.next_line();
            if got == b"trusted?" {
                assert_eq!(field(&line, "tls"), "true", "{line}");
                assert_eq!(field(&line, "peer"), NEWCOMER, "{line}");
                break;
            }
            assert!(got.is_empty(), "{got:?}");
            assert_eq!(field(&line, "reason"), "untrusted_chain", "{line}");
            assert!(
                Instant::now() < deadline,
                "the new root never reached the proxy"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(app.accepted(), 1);
        drop(b);
        drop(agent);
        drop(server);
    });
    drop(fixture);
}
