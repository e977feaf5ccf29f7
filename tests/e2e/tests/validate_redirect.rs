//! `lanyard-proxy validate-redirect` (the injected `lanyard-validate` init container) in a real
//! network namespace, run as `lanyard inject` runs it: uid 2103, the rules' parameters in its
//! environment. The pod namespace has an address and a default route through a veth pair, as
//! a pod does.
//!
//! - With the rules `lanyard-redirect` installs (the same the CNI plugin installs): it passes,
//!   saying the IPv4 redirect is in place.
//! - Without rules: it fails, naming the IPv4 outbound redirect.
//! - With the rules but the probe's port skipped by SKIP_OUTBOUND_PORTS: it probes another
//!   port and passes.
//! - As the proxy's uid (whose connections the rules exempt): it refuses to judge.
//! - IPv6: with an IPv6 address and route, it checks IPv6 too: passes with both families'
//!   rules, fails naming IPv6 when only the IPv4 rules are there.

use std::process::{Command, Output, Stdio};

use lanyard_e2e::netns::{self, Netns};

const VALIDATOR_UID: &str = "2103";

/// A pod namespace `name` joined to a peer, IPv4 (and IPv6 with `v6`), with default routes.
fn pod(name: &str, peer: &Netns, subnet: u8, v6: bool) -> Netns {
    let ns = Netns::create(name);
    ns.link(
        &format!("10.252.{subnet}.1/30"),
        peer,
        &format!("10.252.{subnet}.2/30"),
    );
    ip(
        &ns,
        &[
            "route",
            "add",
            "default",
            "via",
            &format!("10.252.{subnet}.2"),
        ],
    );
    if v6 {
        ip(
            &ns,
            &[
                "addr",
                "add",
                &format!("fd00:252:{subnet}::1/64"),
                "dev",
                "eth0",
                "nodad",
            ],
        );
        ip(
            peer,
            &[
                "addr",
                "add",
                &format!("fd00:252:{subnet}::2/64"),
                "dev",
                "eth0",
                "nodad",
            ],
        );
        ip(
            &ns,
            &[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &format!("fd00:252:{subnet}::2"),
            ],
        );
    }
    ns
}

fn ip(ns: &Netns, args: &[&str]) {
    let out = Command::new("ip")
        .args(["-n", ns.name()])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn in_ns(ns: &Netns, program: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns.name(), program])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The validator as the injected container runs it, with `env`.
fn validate(ns: &Netns, uid: &str, env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), "setpriv"])
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
        ])
        .arg(lanyard_e2e::binary("lanyard-proxy"))
        .args(["validate-redirect", "--timeout", "2s"])
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The environment `lanyard inject` gives the validator by default.
const ENV: &[(&str, &str)] = &[
    ("PROXY_UID", "2102"),
    ("PROXY_INBOUND_PORT", "4143"),
    ("PROXY_OUTBOUND_PORT", "4140"),
    ("SKIP_INBOUND_PORTS", "4143,4192"),
    ("SKIP_OUTBOUND_PORTS", ""),
];

#[test]
fn passes_with_the_rules_and_fails_without() {
    if !netns::available_or_skip() {
        return;
    }
    let peer = Netns::create("lv-peer4");
    let ns = pod("lv-pod4", &peer, 1, false);

    let (ok, stderr) = validate(&ns, VALIDATOR_UID, ENV);
    assert!(!ok, "passed without rules: {stderr}");
    assert!(
        stderr.contains("validate-redirect: the IPv4 outbound redirect is missing (nat OUTPUT rules to 127.0.0.1:4140)"),
        "{stderr}"
    );
    assert!(stderr.contains("192.0.2.1:80"), "{stderr}");

    let env: Vec<(&str, &str)> = ENV.to_vec();
    ns.install_redirect(&env);
    let (ok, stderr) = validate(&ns, VALIDATOR_UID, ENV);
    assert!(ok, "failed with the rules: {stderr}");
    assert!(
        stderr.contains(
            "IPv4 outbound redirect in place: a connection to 192.0.2.1:80 arrived at 127.0.0.1:4140"
        ),
        "{stderr}"
    );

    // A skipped port 80 is not probed (it would go out unredirected): the next one is.
    let skip = [("SKIP_OUTBOUND_PORTS", "80")];
    let env: Vec<(&str, &str)> = ENV
        .iter()
        .copied()
        .filter(|(k, _)| *k != "SKIP_OUTBOUND_PORTS")
        .chain(skip)
        .collect();
    ns.install_redirect(&env);
    let (ok, stderr) = validate(&ns, VALIDATOR_UID, &env);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("192.0.2.1:81 arrived"), "{stderr}");

    // The proxy's own uid is exempt from the rules: its verdict would mean nothing.
    let (ok, stderr) = validate(&ns, "2102", ENV);
    assert!(!ok);
    assert!(
        stderr.contains("running as uid 2102, the proxy's"),
        "{stderr}"
    );

    // The rules removed again (the nat table flushed): missing again.
    let flushed = in_ns(&ns, "iptables", &["-t", "nat", "-F", "OUTPUT"]);
    assert!(flushed.status.success());
    let (ok, stderr) = validate(&ns, VALIDATOR_UID, ENV);
    assert!(
        !ok && stderr.contains("the IPv4 outbound redirect is missing"),
        "{stderr}"
    );
}

#[test]
fn ipv6_is_checked_when_the_pod_has_it() {
    if !netns::available_or_skip() {
        return;
    }
    let peer = Netns::create("lv-peer6");
    let ns = pod("lv-pod6", &peer, 2, true);
    let env: Vec<(&str, &str)> = ENV.to_vec();
    let printed = ns.install_redirect(&env);
    let (ok, stderr) = validate(&ns, VALIDATOR_UID, ENV);
    assert!(
        ok,
        "failed with both families' rules: {stderr}\n(lanyard-redirect said: {printed})"
    );
    assert!(
        stderr.contains("IPv4 outbound redirect in place"),
        "{stderr}"
    );
    assert!(
        stderr.contains("IPv6 outbound redirect in place: a connection to [2001:db8::1]:80 arrived at [::1]:4140"),
        "{stderr}"
    );

    // Only IPv4's rules: IPv6 traffic would leave unredirected.
    let flushed = in_ns(&ns, "ip6tables", &["-t", "nat", "-F", "OUTPUT"]);
    assert!(flushed.status.success());
    let (ok, stderr) = validate(&ns, VALIDATOR_UID, ENV);
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("the IPv6 outbound redirect is missing (nat OUTPUT rules to [::1]:4140)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("IPv4 outbound redirect in place"),
        "{stderr}"
    );
}
