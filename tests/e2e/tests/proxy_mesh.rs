//! Two `lanyard-proxy` processes meshing two echo apps through a real `lanyard-agent` and
//! `lanyard-server` (data-dir mode, join token). Each proxy runs as its own uid, so the agent
//! attests it from the kernel's peer credentials and it gets its own SPIFFE ID:
//!
//! - A (`/client`) originates mTLS to B (`/server`): the echo comes back and both taps say
//!   `tls=true` with the other side's ID; B's metrics count it;
//! - plaintext straight to B (permissive) reaches its app; to S (strict: `--allow /client`)
//!   it is refused and S's app never sees it, while A's mTLS through S works;
//! - refused: an ID outside S's `--allow` (a probe holding the agent's `/probe` SVID), an
//!   outbound peer presenting another ID than `id=` (A's tap `unexpected_id`, nothing reaches
//!   the app), and a client SVID from another trust domain (a second server and agent for
//!   `other.org`; B's tap `unknown_trust_domain`, and the other domain's own proxy refuses B);
//! - a server-speaks-first app works through B's inbound, plain (after the detection
//!   timeout) and meshed (at once).
//!
//! The in-process tests (proxy/tests/mesh.rs) cover each case against a fake Workload API;
//! these show the same with real SVIDs from the real agent and real processes.

use std::os::unix::fs::PermissionsExt;

use lanyard_e2e::client::RunAs;
use lanyard_e2e::echo::EchoApp;
use lanyard_e2e::probe::{Identity, bundle_from_pem_file};
use lanyard_e2e::proxy::{Launch, Proxy, assert_refused, field, finish, round_trip};
use lanyard_e2e::stack::{Agent, Server, TRUST_DOMAIN};

const CLIENT_UID: u32 = 2101;
const SERVER_UID: u32 = 2102;
const STRICT_UID: u32 = 2103;
const OTHER_UID: u32 = 2104;

fn id(path: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}{path}")
}

/// `[[entries]]` giving each `(spiffe_id, uid)` its ID on every node.
fn entries(list: &[(&str, u32)]) -> String {
    list.iter()
        .map(|(id, uid)| {
            format!(
                "[[entries]]\nspiffe_id = \"{id}\"\nselectors = [\"unix:uid:{uid}\"]\nnodes = [\"*\"]\n"
            )
        })
        .collect()
}

/// A temp dir other uids can traverse to the agent's socket (0777 in a 0755 dir).
fn shared_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn as_uid(uid: u32) -> Launch<'static> {
    Launch {
        uid: Some(uid),
        ..Launch::default()
    }
}

#[test]
fn two_proxies_through_a_real_agent() {
    let tmp = shared_tempdir();
    let config = entries(&[
        (&id("/client"), CLIENT_UID),
        (&id("/server"), SERVER_UID),
        (&id("/strict"), STRICT_UID),
        (&id("/probe"), 0),
    ]);
    let server = Server::start(tmp.path(), &config);
    let agent = Agent::start(tmp.path(), &server, "node-1");
    let socket = agent.socket.as_path();

    let app = EchoApp::start(None);
    let banner_app = EchoApp::start(Some(b"220 ready\n"));
    let strict_app = EchoApp::start(None);
    let b = Proxy::start(
        socket,
        as_uid(SERVER_UID),
        &[
            "--inbound",
            &format!("127.0.0.1:0={}", app.addr),
            "--inbound",
            &format!("127.0.0.1:0={}", banner_app.addr),
        ],
    );
    let s = Proxy::start(
        socket,
        as_uid(STRICT_UID),
        &[
            "--inbound",
            &format!("127.0.0.1:0={}", strict_app.addr),
            "--allow",
            &id("/client"),
        ],
    );
    let (b_echo, b_banner) = (b.addrs("inbound")[0], b.addrs("inbound")[1]);
    let s_in = s.addr("inbound");
    let mut a = Proxy::start(
        socket,
        as_uid(CLIENT_UID),
        &[
            "--outbound",
            &format!("127.0.0.1:0={b_echo},id={}", id("/server")),
            "--outbound",
            &format!("127.0.0.1:0={b_banner},id={}", id("/server")),
            "--outbound",
            &format!("127.0.0.1:0={s_in},id={}", id("/strict")),
            "--outbound",
            &format!("127.0.0.1:0={b_echo},id={}", id("/somebody-else")),
        ],
    );
    let (mut b, mut s) = (b, s);
    for p in [&a, &b, &s] {
        p.wait_ready();
    }
    let out = a.addrs("outbound");

    // A -> B over mTLS, each tap naming the other side's real SVID ID.
    let mut conn = a.connect(out[0]);
    assert_eq!(round_trip(&mut conn, b"ping over mtls"), b"ping over mtls");
    finish(&mut conn);
    let line = a.tap.next_line();
    assert!(line.starts_with("proxy=out "), "{line}");
    assert_eq!(field(&line, "tls"), "true", "{line}");
    assert_eq!(field(&line, "peer"), id("/server"), "{line}");
    assert_eq!(field(&line, "dst"), b_echo.to_string(), "{line}");
    let line = b.tap.next_line();
    assert!(line.starts_with("proxy=in "), "{line}");
    assert_eq!(field(&line, "tls"), "true", "{line}");
    assert_eq!(field(&line, "peer"), id("/client"), "{line}");
    assert_eq!(field(&line, "dst"), app.addr.to_string(), "{line}");
    assert_eq!(field(&line, "bytes_in"), "14", "{line}");
    assert_eq!(
        b.metric("lanyard_proxy_connections_total{direction=\"in\",tls=\"true\",reason=\"mtls\"}"),
        1.0
    );

    // Plaintext to the permissive B reaches the app.
    let mut conn = b.connect(b_echo);
    assert_eq!(
        round_trip(&mut conn, b"GET / HTTP/1.1\r\n\r\n"),
        b"GET / HTTP/1.1\r\n\r\n"
    );
    finish(&mut conn);
    let line = b.tap.next_line();
    assert_eq!(field(&line, "tls"), "false", "{line}");
    assert_eq!(field(&line, "reason"), "no_tls_from_remote", "{line}");

    // Plaintext to the strict S is refused before the app.
    let mut conn = s.connect(s_in);
    assert_refused(&mut conn, b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(field(&s.tap.next_line(), "reason"), "plaintext_refused");
    // An ID outside S's --allow: the probe's real SVID verifies, and is not allowed.
    let probe = Identity::fetch(socket, RunAs::Me);
    assert_eq!(probe.svid.spiffe_id().to_string(), id("/probe"));
    let mut tls = probe
        .dial(s.connect(s_in), &id("/strict"))
        .expect("the handshake completes before S judges the probe (TLS 1.3)");
    assert_refused(&mut tls, b"let me in");
    let line = s.tap.next_line();
    assert_eq!(field(&line, "tls"), "false", "{line}");
    assert_eq!(field(&line, "reason"), "id_not_allowed", "{line}");
    assert_eq!(strict_app.accepted(), 0);
    // The allowed A gets through S.
    let mut conn = a.connect(out[2]);
    assert_eq!(round_trip(&mut conn, b"allowed"), b"allowed");
    finish(&mut conn);
    assert_eq!(field(&a.tap.next_line(), "peer"), id("/strict"));
    assert_eq!(field(&s.tap.next_line(), "peer"), id("/client"));
    assert_eq!(strict_app.accepted(), 1);

    // A expects another ID than B's: refused by A, nothing in plaintext, nothing at the app.
    let before = app.accepted();
    let mut conn = a.connect(out[3]);
    assert_refused(&mut conn, b"secret");
    let line = a.tap.next_line();
    assert_eq!(field(&line, "tls"), "false", "{line}");
    assert_eq!(field(&line, "reason"), "unexpected_id", "{line}");
    assert_eq!(field(&b.tap.next_line(), "reason"), "handshake_failed");
    assert_eq!(app.accepted(), before);

    // Server speaks first: plain, the banner comes after the detection timeout...
    let mut conn = b.connect(b_banner);
    let mut banner = [0u8; 10];
    std::io::Read::read_exact(&mut conn, &mut banner).unwrap();
    assert_eq!(&banner, b"220 ready\n");
    assert_eq!(round_trip(&mut conn, b"HELO x"), b"HELO x");
    finish(&mut conn);
    assert_eq!(field(&b.tap.next_line(), "reason"), "detect_timeout");
    // ...and through the mesh, A's ClientHello decides at once.
    let mut conn = a.connect(out[1]);
    std::io::Read::read_exact(&mut conn, &mut banner).unwrap();
    assert_eq!(&banner, b"220 ready\n");
    finish(&mut conn);
    assert_eq!(field(&a.tap.next_line(), "tls"), "true");
    let line = b.tap.next_line();
    assert_eq!(field(&line, "peer"), id("/client"), "{line}");
    assert_eq!(field(&line, "dst"), banner_app.addr.to_string(), "{line}");

    drop(a);
    drop(s);
    drop(b);
    drop(agent);
    drop(server);
}

#[test]
fn a_client_svid_from_another_trust_domain_is_refused() {
    let tmp = shared_tempdir();
    let ours = tmp.path().join("ours");
    let theirs = tmp.path().join("theirs");
    for dir in [&ours, &theirs] {
        std::fs::create_dir(dir).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let server = Server::start(&ours, &entries(&[(&id("/server"), SERVER_UID)]));
    let agent = Agent::start(&ours, &server, "node-1");
    let other_server = Server::start_in_domain(
        &theirs,
        "other.org",
        &entries(&[
            ("spiffe://other.org/client", OTHER_UID),
            ("spiffe://other.org/probe", 0),
        ]),
        "127.0.0.1:0",
        &[],
    );
    let other_agent = Agent::start(&theirs, &other_server, "node-9");

    let app = EchoApp::start(None);
    let mut b = Proxy::start(
        &agent.socket,
        as_uid(SERVER_UID),
        &["--inbound", &format!("127.0.0.1:0={}", app.addr)],
    );
    b.wait_ready();
    let b_in = b.addr("inbound");

    // A probe holding other.org's real SVID, trusting example.org as well (the servers have
    // no federation, so the test federates): B refuses it.
    let our_roots = tmp.path().join("example-org.pem");
    server.write_bundle(&our_roots);
    let probe = Identity::fetch(&other_agent.socket, RunAs::Me)
        .trusting(bundle_from_pem_file(TRUST_DOMAIN, &our_roots));
    assert_eq!(
        probe.svid.spiffe_id().to_string(),
        "spiffe://other.org/probe"
    );
    let mut tls = probe
        .dial(b.connect(b_in), &id("/server"))
        .expect("the probe accepts B's example.org SVID");
    assert_refused(&mut tls, b"hello");
    let line = b.tap.next_line();
    assert_eq!(field(&line, "tls"), "false", "{line}");
    assert_eq!(field(&line, "reason"), "unknown_trust_domain", "{line}");

    // other.org's own proxy, expecting B's ID, refuses B's SVID from a domain it does not
    // trust; B sees an abandoned handshake.
    let mut other = Proxy::start(
        &other_agent.socket,
        as_uid(OTHER_UID),
        &[
            "--outbound",
            &format!("127.0.0.1:0={b_in},id={}", id("/server")),
        ],
    );
    other.wait_ready();
    let mut conn = other.connect(other.addr("outbound"));
    assert_refused(&mut conn, b"hello");
    let line = other.tap.next_line();
    assert_eq!(field(&line, "tls"), "false", "{line}");
    assert_eq!(field(&line, "reason"), "unknown_trust_domain", "{line}");
    assert_eq!(field(&b.tap.next_line(), "reason"), "handshake_failed");
    assert_eq!(app.accepted(), 0);
}
