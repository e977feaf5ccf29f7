//! Transparent proxying as an injected pod gets it: two network namespaces ("pods" A and B)
//! joined by a veth pair (10.251.7.1/30 and .2; in the dual-stack test also
//! fd00:251:7::1/64 and ::2), each with the redirect rules installed by running
//! `lanyard-redirect` (the very binary `lanyard inject`'s init container runs; it installs
//! every rule through iptables and ip6tables), each with a `lanyard-proxy` process inside it as
//! the uid the rules exempt, getting its SVID from a real agent (whose socket is a path,
//! reachable from any namespace). For each of B's app addresses:
//!
//! - A's app dials A's explicit mTLS outbound (`id=` B's ID) towards B's app at that address:
//!   B's PREROUTING rule sends it to B's `--transparent-inbound`, which reads the original
//!   destination (`SO_ORIGINAL_DST`, or `IP6T_SO_ORIGINAL_DST` on its `[::]` socket), detects
//!   mTLS and delivers it to the app: B's tap says `dst=<B's app> tls=true peer=<A's ID>`.
//! - A's app dials B's app directly: A's OUTPUT rule sends it to A's `--transparent-outbound`
//!   (`127.0.0.1`, or `[::1]` for IPv6), which asks discovery (the agent, then the server: no
//!   cluster behind it, so `Unknown`) and reaches the original destination in plaintext
//!   (`reason=no_discovery`, `dst=` B's app, `src=` the app's socket); B's transparent
//!   inbound detects plaintext and forwards it (`no_tls_from_remote`).
//!
//! A third test runs the proxy in a namespace without IPv6: it listens on IPv4 only and says
//! so, instead of failing.
//!
//! Needs root, `ip`, `iptables` and `ip6tables`; without them it fails saying so, unless
//! `LANYARD_SKIP_NETNS_TESTS=1`. Namespaces (and with them the veth pair and the rules) are
//! deleted on drop, after the processes in them.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lanyard_e2e::echo::EchoApp;
use lanyard_e2e::netns::{self, Netns};
use lanyard_e2e::proxy::{Launch, Proxy, field, finish, round_trip};
use lanyard_e2e::stack::{Agent, Server, TRUST_DOMAIN};

const A_UID: u32 = 2201;
const B_UID: u32 = 2202;
/// `lanyard-redirect`'s default proxy ports.
const INBOUND_PORT: &str = "4143";
const OUTBOUND_PORT: &str = "4140";
const POD_ARGS: [&str; 4] = [
    "--transparent-inbound",
    INBOUND_PORT,
    "--transparent-outbound",
    OUTBOUND_PORT,
];

fn entry(path: &str, uid: u32) -> String {
    format!(
        "[[entries]]\nspiffe_id = \"spiffe://{TRUST_DOMAIN}{path}\"\nselectors = [\"unix:uid:{uid}\"]\nnodes = [\"*\"]\n"
    )
}

/// Adds `cidr` to `ns`'s `eth0` (made by [`Netns::link`]) without duplicate address
/// detection, so the address is usable at once rather than tentative for a second or two.
fn add_ipv6(ns: &Netns, cidr: &str) {
    let output = Command::new("ip")
        .args(["-n", ns.name(), "addr", "add", cidr, "dev", "eth0", "nodad"])
        .stdin(Stdio::null())
        .output()
        .expect("running ip");
    assert!(
        output.status.success(),
        "adding {cidr} in {}: {}",
        ns.name(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Two meshed pods: A and B's redirect rules, server and agent, B's echo app, and both proxies
/// ready, A's with an explicit mTLS outbound to each of B's app addresses.
struct Pods<'a> {
    ns_a: &'a Netns,
    a: Proxy<'a>,
    b: Proxy<'a>,
    app_b: EchoApp,
    /// B's app addresses, in the order of A's explicit outbound listeners.
    targets: Vec<SocketAddr>,
    id_a: String,
    id_b: String,
    _agent: Agent,
    _server: Server,
    _tmp: tempfile::TempDir,
}

impl<'a> Pods<'a> {
    /// `ns_a` and `ns_b` are linked and addressed already; B's app listens on `app_listen`
    /// and is dialled at `targets`.
    fn start(
        ns_a: &'a Netns,
        ns_b: &'a Netns,
        app_listen: SocketAddr,
        targets: &[SocketAddr],
    ) -> Self {
        for (ns, uid) in [(ns_a, A_UID), (ns_b, B_UID)] {
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

        let app_b = EchoApp::serve(ns_b.bind(app_listen), None);
        let b = Proxy::start(
            &agent.socket,
            Launch {
                uid: Some(B_UID),
                netns: Some(ns_b),
                cgroup: None,
            },
            &POD_ARGS,
        );
        let mut a_args: Vec<String> = POD_ARGS.map(String::from).to_vec();
        for target in targets {
            a_args.push("--outbound".into());
            a_args.push(format!("127.0.0.1:0={target},id={id_b}"));
        }
        let a_args: Vec<&str> = a_args.iter().map(String::as_str).collect();
        let a = Proxy::start(
            &agent.socket,
            Launch {
                uid: Some(A_UID),
                netns: Some(ns_a),
                cgroup: None,
            },
            &a_args,
        );
        a.wait_ready();
        b.wait_ready();
        Self {
            ns_a,
            a,
            b,
            app_b,
            targets: targets.to_vec(),
            id_a,
            id_b,
            _agent: agent,
            _server: server,
            _tmp: tmp,
        }
    }

    /// Meshed: A's explicit outbound `n` originates mTLS to B's app; B's redirected inbound
    /// terminates it and reads B's app as the original destination.
    fn check_meshed(&mut self, n: usize) {
        let target = self.targets[n];
        let mut conn = self.a.connect(self.a.addrs("outbound")[n]);
        assert_eq!(round_trip(&mut conn, b"meshed"), b"meshed");
        finish(&mut conn);
        let line = self.a.tap.next_line();
        assert_eq!(field(&line, "dst"), target.to_string(), "{line}");
        assert_eq!(field(&line, "tls"), "true", "{line}");
        assert_eq!(field(&line, "peer"), self.id_b, "{line}");
        let line = self.b.tap.next_line();
        assert!(line.starts_with("proxy=in "), "{line}");
        let src: SocketAddr = field(&line, "src").parse().unwrap();
        assert_eq!(src.is_ipv6(), target.is_ipv6(), "{line}");
        assert_eq!(field(&line, "dst"), target.to_string(), "{line}");
        assert_eq!(field(&line, "tls"), "true", "{line}");
        assert_eq!(field(&line, "peer"), self.id_a, "{line}");
    }

    /// Transparent: A's app dials B's app itself; both redirects apply.
    fn check_transparent(&mut self, target: SocketAddr) {
        let mut conn = self.ns_a.connect(target).unwrap();
        conn.set_read_timeout(Some(lanyard_e2e::DEADLINE)).unwrap();
        let app_socket = conn.local_addr().unwrap();
        assert_eq!(round_trip(&mut conn, b"plain"), b"plain");
        finish(&mut conn);
        let line = self.a.tap.next_line();
        assert!(line.starts_with("proxy=out "), "{line}");
        assert_eq!(field(&line, "src"), app_socket.to_string(), "{line}");
        assert_eq!(field(&line, "dst"), target.to_string(), "{line}");
        assert_eq!(field(&line, "tls"), "false", "{line}");
        assert_eq!(field(&line, "reason"), "no_discovery", "{line}");
        let line = self.b.tap.next_line();
        assert!(line.starts_with("proxy=in "), "{line}");
        // From A's proxy's own connection, on A's address of the same family.
        let src: SocketAddr = field(&line, "src").parse().unwrap();
        assert_eq!(src.ip(), app_socket.ip(), "{line}");
        assert_eq!(field(&line, "dst"), target.to_string(), "{line}");
        assert_eq!(field(&line, "reason"), "no_tls_from_remote", "{line}");
    }
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

    let app_b_addr: SocketAddr = "10.251.7.2:8080".parse().unwrap();
    let mut pods = Pods::start(&ns_a, &ns_b, "0.0.0.0:8080".parse().unwrap(), &[app_b_addr]);
    pods.check_meshed(0);
    pods.check_transparent(app_b_addr);
    assert_eq!(pods.app_b.accepted(), 2);
}

#[test]
fn ipv6_traffic_is_redirected_and_proxied_beside_ipv4() {
    if !netns::available_or_skip() {
        return;
    }
    let pid = std::process::id();
    let ns_a = Netns::create(&format!("lanyard-e2e-{pid}-6a"));
    let ns_b = Netns::create(&format!("lanyard-e2e-{pid}-6b"));
    ns_a.link("10.251.7.1/30", &ns_b, "10.251.7.2/30");
    add_ipv6(&ns_a, "fd00:251:7::1/64");
    add_ipv6(&ns_b, "fd00:251:7::2/64");

    let v6: SocketAddr = "[fd00:251:7::2]:8080".parse().unwrap();
    let v4: SocketAddr = "10.251.7.2:8080".parse().unwrap();
    // B's app on both families, as a dual-stack server listens.
    let mut pods = Pods::start(&ns_a, &ns_b, "[::]:8080".parse().unwrap(), &[v6, v4]);
    for proxy in [&pods.a, &pods.b] {
        let ports = |role| {
            let mut addrs: Vec<String> = proxy.addrs(role).iter().map(|a| a.to_string()).collect();
            addrs.sort();
            addrs
        };
        assert_eq!(ports("transparent-inbound"), ["0.0.0.0:4143", "[::]:4143"]);
        assert_eq!(
            ports("transparent-outbound"),
            ["127.0.0.1:4140", "[::1]:4140"]
        );
    }

    pods.check_meshed(0);
    pods.check_transparent(v6);
    // IPv4 still reaches its own sockets beside the IPv6 ones on the same ports.
    pods.check_meshed(1);
    pods.check_transparent(v4);
    assert_eq!(pods.app_b.accepted(), 4);
}

#[test]
fn a_pod_without_ipv6_gets_ipv4_listeners_and_one_line_saying_so() {
    if !netns::available_or_skip() {
        return;
    }
    let pid = std::process::id();
    let ns = Netns::create(&format!("lanyard-e2e-{pid}-4only"));
    for key in ["all", "default", "lo"] {
        let status = Command::new("ip")
            .args(["netns", "exec", ns.name(), "sysctl", "-q", "-w"])
            .arg(format!("net.ipv6.conf.{key}.disable_ipv6=1"))
            .status()
            .expect("running sysctl");
        assert!(status.success(), "disabling IPv6 ({key}) in {}", ns.name());
    }
    assert!(
        ns.run(|| std::net::TcpListener::bind("[::1]:0")).is_err(),
        "::1 is still there"
    );

    let tmp = tempfile::tempdir().unwrap();
    // No agent: listening does not wait for one.
    let proxy = Proxy::start(
        &tmp.path().join("agent.sock"),
        Launch {
            uid: None,
            netns: Some(&ns),
            cgroup: None,
        },
        &POD_ARGS,
    );
    assert_eq!(
        proxy.addrs("transparent-outbound"),
        ["127.0.0.1:4140".parse::<SocketAddr>().unwrap()]
    );
    assert!(
        proxy
            .addrs("transparent-inbound")
            .contains(&"0.0.0.0:4143".parse().unwrap())
    );
    // The line is logged before the listeners are announced; stderr is read by its own thread.
    let deadline = Instant::now() + lanyard_e2e::DEADLINE;
    loop {
        let stderr = proxy.process.stderr_text();
        let said: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("no IPv6 in this network namespace"))
            .collect();
        if let [line] = said[..] {
            assert!(line.contains("[::1]:4140"), "{line}");
            break;
        }
        assert!(said.is_empty(), "more than one line: {said:?}");
        assert!(
            Instant::now() < deadline,
            "no line saying IPv6 is missing; stderr:\n{stderr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(proxy);
}
