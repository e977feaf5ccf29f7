//! Transparent proxying as an injected pod gets it: two network namespaces ("pods" A and B)
//! joined by a veth pair (10.251.7.1/30 and .2), each with the redirect rules installed by
//! running `lanyard-redirect` (the very binary `lanyard inject`'s init container
//! runs), each with a `lanyard-proxy` process inside it as the uid the rules exempt, getting
//! its SVID from a real agent (whose socket is a path, reachable from any namespace):
//!
//! - A's app dials A's explicit mTLS outbound (`id=` B's ID) towards B's app at
//!   10.251.7.2:8080: B's PREROUTING rule sends it to B's `--transparent-inbound`, which reads
//!   the original destination (`SO_ORIGINAL_DST`), detects mTLS and delivers it to the app:
//!   B's tap says `dst=10.251.7.2:8080 tls=true peer=<A's ID>`.
//! - A's app dials 10.251.7.2:8080 directly: A's OUTPUT rule sends it to A's
//!   `--transparent-outbound`, which reaches the original destination in plaintext (no
//!   discovery yet: `reason=no_discovery`, `dst=10.251.7.2:8080`, `src=` the app's socket);
//!   B's transparent inbound detects plaintext and forwards it (`no_tls_from_remote`).
//!
//! Needs root, `ip` and `iptables`; without them it fails saying so, unless
//! `LANYARD_SKIP_NETNS_TESTS=1`. Namespaces (and with them the veth pair and the rules) are
//! deleted on drop, after the processes in them.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;

use lanyard_e2e::echo::EchoApp;
use lanyard_e2e::netns::{self, Netns};
use lanyard_e2e::proxy::{Launch, Proxy, field, finish, round_trip};
use lanyard_e2e::stack::{Agent, Server, TRUST_DOMAIN};

const A_UID: u32 = 2201;
const B_UID: u32 = 2202;
/// `lanyard-redirect`'s default proxy ports.
const INBOUND_PORT: &str = "4143";
const OUTBOUND_PORT: &str = "4140";

fn entry(path: &str, uid: u32) -> String {
    format!(
        "[[entries]]\nspiffe_id = \"spiffe://{TRUST_DOMAIN}{path}\"\nselectors = [\"unix:uid:{uid}\"]\nnodes = [\"*\"]\n"
    )
}

#[test]
fn redirected_inbound_and_outbound_traffic_goes_through_the_proxies() {
    if !netns::available_or_skip() {
        return;
    }
    // Declared first, dropped last: after every process inside them has been killed.
    let pid = std::process::id();
    let ns_a = Netns::create(&format!("lanyard-e2e-{pid}-a"));
    let ns_b = Netns::create(&format!("lanyard-e2e-{pid}-b"));
    ns_a.link("10.251.7.1/30", &ns_b, "10.251.7.2/30");
    for (ns, uid) in [(&ns_a, A_UID), (&ns_b, B_UID)] {
        let printed = ns.install_redirect(&[
            ("PROXY_UID", &uid.to_string()),
            ("PROXY_INBOUND_PORT", INBOUND_PORT),
            ("PROXY_OUTBOUND_PORT", OUTBOUND_PORT),
        ]);
        assert!(printed.contains("REDIRECT"), "{printed}");
    }

    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = Server::start(
        tmp.path(),
        &(entry("/pod-a", A_UID) + &entry("/pod-b", B_UID)),
    );
    let agent = Agent::start(tmp.path(), &server, "node-1");
    let (id_a, id_b) = (
        format!("spiffe://{TRUST_DOMAIN}/pod-a"),
        format!("spiffe://{TRUST_DOMAIN}/pod-b"),
    );

    let app_b_addr: SocketAddr = "10.251.7.2:8080".parse().unwrap();
    let app_b = EchoApp::serve(ns_b.bind("0.0.0.0:8080".parse().unwrap()), None);
    let pod_args = [
        "--transparent-inbound",
        INBOUND_PORT,
        "--transparent-outbound",
        OUTBOUND_PORT,
    ];
    let mut b = Proxy::start(
        &agent.socket,
        Launch {
            uid: Some(B_UID),
            netns: Some(&ns_b),
            cgroup: None,
        },
        &pod_args,
    );
    let meshed = format!("127.0.0.1:0={app_b_addr},id={id_b}");
    let mut a = Proxy::start(
        &agent.socket,
        Launch {
            uid: Some(A_UID),
            netns: Some(&ns_a),
            cgroup: None,
        },
        &[&pod_args[..], &["--outbound", &meshed]].concat(),
    );
    a.wait_ready();
    b.wait_ready();

    // Meshed: A's explicit outbound originates mTLS; B's redirected inbound terminates it.
    let mut conn = a.connect(a.addr("outbound"));
    assert_eq!(round_trip(&mut conn, b"meshed"), b"meshed");
    finish(&mut conn);
    let line = a.tap.next_line();
    assert_eq!(field(&line, "tls"), "true", "{line}");
    assert_eq!(field(&line, "peer"), id_b, "{line}");
    let line = b.tap.next_line();
    assert!(line.starts_with("proxy=in "), "{line}");
    assert!(field(&line, "src").starts_with("10.251.7.1:"), "{line}");
    assert_eq!(field(&line, "dst"), app_b_addr.to_string(), "{line}");
    assert_eq!(field(&line, "tls"), "true", "{line}");
    assert_eq!(field(&line, "peer"), id_a, "{line}");

    // Transparent: A's app dials B's app itself; both redirects apply.
    let mut conn = ns_a.connect(app_b_addr).unwrap();
    conn.set_read_timeout(Some(lanyard_e2e::DEADLINE)).unwrap();
    let app_socket = conn.local_addr().unwrap();
    assert_eq!(round_trip(&mut conn, b"plain"), b"plain");
    finish(&mut conn);
    let line = a.tap.next_line();
    assert!(line.starts_with("proxy=out "), "{line}");
    assert_eq!(field(&line, "src"), app_socket.to_string(), "{line}");
    assert_eq!(field(&line, "dst"), app_b_addr.to_string(), "{line}");
    assert_eq!(field(&line, "tls"), "false", "{line}");
    assert_eq!(field(&line, "reason"), "no_discovery", "{line}");
    let line = b.tap.next_line();
    assert!(line.starts_with("proxy=in "), "{line}");
    assert_eq!(field(&line, "dst"), app_b_addr.to_string(), "{line}");
    assert_eq!(field(&line, "reason"), "no_tls_from_remote", "{line}");
    assert_eq!(app_b.accepted(), 2);

    drop(a);
    drop(b);
    drop(app_b);
}
