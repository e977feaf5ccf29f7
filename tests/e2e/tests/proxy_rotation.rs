//! SVID rotation under open connections, over real processes: two `lanyard-proxy` processes
//! (A `/client` outbound, B `/server` inbound, each its own uid) whose entries have a 4 s
//! X.509-SVID lifetime, so the real agent renews them every few seconds.
//!
//! - A connection through A and B opened before the rotation keeps working after it, and
//!   still after the certificate B presented on it has expired;
//! - B's `lanyard_proxy_svid_updates_total` counts the rotation;
//! - a new connection afterwards is served with the new certificate (read by a probe with the
//!   agent's `/probe` SVID on a full handshake), and new connections through A still verify.
//!
//! A root added to the bundle is shown over real processes in `proxy_live_root.rs`.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant, SystemTime};

use lanyard_e2e::DEADLINE;
use lanyard_e2e::client::RunAs;
use lanyard_e2e::echo::EchoApp;
use lanyard_e2e::probe::{Identity, server_leaf};
use lanyard_e2e::proxy::{Launch, Proxy, field, finish, round_trip};
use lanyard_e2e::stack::{Agent, Server, TRUST_DOMAIN};
use lanyard_svid::X509Svid;

const CLIENT_UID: u32 = 2111;
const SERVER_UID: u32 = 2112;
const UPDATES: &str = "lanyard_proxy_svid_updates_total";

fn entry(path: &str, uid: u32, ttl: Option<&str>) -> String {
    let ttl = ttl
        .map(|t| format!("x509_ttl = \"{t}\"\n"))
        .unwrap_or_default();
    format!(
        "[[entries]]\nspiffe_id = \"spiffe://{TRUST_DOMAIN}{path}\"\nselectors = [\"unix:uid:{uid}\"]\nnodes = [\"*\"]\n{ttl}"
    )
}

/// Polls `check` every 100 ms until it gives `Some`, failing after the deadline.
fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn open_connections_survive_rotation_and_new_ones_see_the_new_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = [
        entry("/client", CLIENT_UID, Some("4s")),
        entry("/server", SERVER_UID, Some("4s")),
        entry("/probe", 0, None),
    ]
    .concat();
    let server = Server::start(tmp.path(), &config);
    let agent = Agent::start(tmp.path(), &server, "node-1");
    let server_id = format!("spiffe://{TRUST_DOMAIN}/server");
    let as_uid = |uid| Launch {
        uid: Some(uid),
        ..Launch::default()
    };

    let app = EchoApp::start(None);
    let b = Proxy::start(
        &agent.socket,
        as_uid(SERVER_UID),
        &["--inbound", &format!("127.0.0.1:0={}", app.addr)],
    );
    let b_in = b.addr("inbound");
    let mut a = Proxy::start(
        &agent.socket,
        as_uid(CLIENT_UID),
        &["--outbound", &format!("127.0.0.1:0={b_in},id={server_id}")],
    );
    a.wait_ready();
    b.wait_ready();

    // The connection held across the rotation.
    let mut held = a.connect(a.addr("outbound"));
    assert_eq!(round_trip(&mut held, b"before"), b"before");

    // What B presents now, to a full handshake.
    let probe = Identity::fetch(&agent.socket, RunAs::Me);
    let first = server_leaf(&probe.dial(b.connect(b_in), &server_id).unwrap());
    let first_svid = X509Svid::parse(vec![first.clone()], None).unwrap();
    assert_eq!(first_svid.spiffe_id().to_string(), server_id);
    let updates = b.metric(UPDATES);
    assert!(updates >= 1.0, "{updates}");

    // The agent renews at about half the 4 s life: a new connection presents a new leaf.
    let second = eventually("B to present a renewed certificate", || {
        let mut tls = probe.dial(b.connect(b_in), &server_id).ok()?;
        let leaf = server_leaf(&tls);
        // Verified by the probe's SPIFFE verifier (same ID, chains to the server's root).
        (leaf != first).then(|| {
            assert_eq!(round_trip(&mut tls, b"new"), b"new");
            leaf
        })
    });
    let second_svid = X509Svid::parse(vec![second], None).unwrap();
    assert_eq!(second_svid.spiffe_id().to_string(), server_id);
    assert!(second_svid.not_after() > first_svid.not_after());
    assert!(b.metric(UPDATES) > updates);

    // The held connection still works, even once the certificate it was opened with expired.
    assert_eq!(round_trip(&mut held, b"after"), b"after");
    eventually("the first certificate to expire", || {
        (SystemTime::now() > first_svid.not_after()).then_some(())
    });
    assert_eq!(round_trip(&mut held, b"expired"), b"expired");
    finish(&mut held);
    let line = a.tap.next_line();
    assert_eq!(field(&line, "tls"), "true", "{line}");
    assert_eq!(field(&line, "bytes_in"), "18", "{line}");

    // New connections through A verify B's current certificate with A's current one.
    let mut fresh = a.connect(a.addr("outbound"));
    assert_eq!(round_trip(&mut fresh, b"fresh"), b"fresh");
    finish(&mut fresh);
    assert_eq!(field(&a.tap.next_line(), "peer"), server_id);
}
