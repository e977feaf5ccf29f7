//! The `lanyard-redirect` binary against the real iptables and ip6tables, in a fresh network
//! namespace (`unshare --net`): run twice, each nat table holds exactly one copy of the rules;
//! `--check` finds them in place, then names a rule deleted by hand and an added one.
//!
//! Needs root, `unshare` (util-linux), `iptables` and `ip6tables`; without them it fails
//! saying so, unless `LANYARD_SKIP_NETNS_TESTS=1` (the same switch as the end-to-end
//! namespace tests).

use std::process::{Command, Stdio};

const SKIP_ENV: &str = "LANYARD_SKIP_NETNS_TESTS";

fn available_or_skip() -> bool {
    let works = ["iptables", "ip6tables"].iter().all(|command| {
        Command::new("unshare")
            .args(["--net", command, "-w", "-t", "nat", "-S"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    match (works, std::env::var(SKIP_ENV).as_deref() == Ok("1")) {
        (true, _) => true,
        (false, true) => {
            eprintln!(
                "skipping: cannot run iptables and ip6tables in a new network namespace ({SKIP_ENV}=1)"
            );
            false
        }
        (false, false) => panic!(
            "cannot run iptables and ip6tables in a new network namespace: run as root with \
             `unshare` (util-linux) and `iptables` installed, or set {SKIP_ENV}=1 to skip"
        ),
    }
}

/// The `-N`/`-A` lines of one `-S` listing between `from` and `to` (or the end).
fn rules<'a>(stdout: &'a str, from: &str, to: Option<&str>) -> Vec<&'a str> {
    let start = stdout
        .find(from)
        .unwrap_or_else(|| panic!("{from}: {stdout}"))
        + from.len();
    let rest = &stdout[start..];
    let end = to.and_then(|t| rest.find(t)).unwrap_or(rest.len());
    rest[..end]
        .lines()
        .filter(|l| l.starts_with("-N ") || l.starts_with("-A "))
        .collect()
}

/// What `iptables -S` lists for the rules with the test's skip ports, `loopback` for the
/// family's loopback destination as iptables prints it.
fn expected(loopback: &str) -> Vec<String> {
    [
        "-N LANYARD_INBOUND",
        "-N LANYARD_OUTBOUND",
        "-A PREROUTING -p tcp -j LANYARD_INBOUND",
        "-A OUTPUT -p tcp -j LANYARD_OUTBOUND",
        "-A LANYARD_INBOUND -p tcp -m tcp --dport 4143 -j RETURN",
        "-A LANYARD_INBOUND -p tcp -m tcp --dport 4192 -j RETURN",
        "-A LANYARD_INBOUND -p tcp -j REDIRECT --to-ports 4143",
        "-A LANYARD_OUTBOUND -m owner --uid-owner 2102 -j RETURN",
        "-A LANYARD_OUTBOUND -o lo -j RETURN",
        "-A LANYARD_OUTBOUND -d LOOPBACK -j RETURN",
        "-A LANYARD_OUTBOUND -p tcp -m tcp --dport 5432 -j RETURN",
        "-A LANYARD_OUTBOUND -p tcp -j REDIRECT --to-ports 4140",
    ]
    .iter()
    .map(|l| l.replace("LOOPBACK", loopback))
    .collect()
}

#[test]
fn two_runs_leave_one_copy_of_the_rules_in_each_family() {
    if !available_or_skip() {
        return;
    }
    // One namespace for both runs and the listings: the namespace lives as long as `sh`.
    let out = Command::new("unshare")
        .args([
            "--net",
            "sh",
            "-c",
            "\"$0\" >/dev/null && \"$0\" && echo '# ipv4' && iptables -w -t nat -S \
             && echo '# ipv6' && ip6tables -w -t nat -S",
            env!("CARGO_BIN_EXE_lanyard-redirect"),
        ])
        .env("SKIP_INBOUND_PORTS", "4143,4192")
        .env("SKIP_OUTBOUND_PORTS", "5432")
        .env_remove("IPTABLES")
        .env_remove("IP6TABLES")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        rules(&stdout, "# ipv4", Some("# ipv6")),
        expected("127.0.0.0/8"),
        "{stdout}"
    );
    assert_eq!(
        rules(&stdout, "# ipv6", None),
        expected("::1/128"),
        "{stdout}"
    );
    // The second run printed what it installed, for both families.
    assert!(
        stdout.contains("lanyard-redirect: done (ipv4_ipv6)"),
        "{stdout}"
    );
}

#[test]
fn check_finds_the_rules_then_each_difference() {
    if !available_or_skip() {
        return;
    }
    // Install; check (0); delete IPv6's outbound REDIRECT and add a rule to IPv4's inbound
    // chain; check again (3, naming both); remove the chains; check (3, naming them).
    let script = r#"
        "$0" >/dev/null || exit 10
        "$0" --check; echo "rc=$?"
        ip6tables -w -t nat -D LANYARD_OUTBOUND -p tcp -j REDIRECT --to-ports 4140 || exit 11
        iptables -w -t nat -I LANYARD_INBOUND 1 -p tcp --dport 22 -j RETURN || exit 12
        "$0" --check; echo "rc=$?"
        iptables -w -t nat -D PREROUTING -p tcp -j LANYARD_INBOUND || exit 13
        iptables -w -t nat -F LANYARD_INBOUND && iptables -w -t nat -X LANYARD_INBOUND || exit 14
        "$0" --check; echo "rc=$?"
    "#;
    let out = Command::new("unshare")
        .args([
            "--net",
            "sh",
            "-c",
            script,
            env!("CARGO_BIN_EXE_lanyard-redirect"),
        ])
        .env("SKIP_OUTBOUND_PORTS", "5432")
        .env_remove("IPTABLES")
        .env_remove("IP6TABLES")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "lanyard-redirect: the rules are in place (ipv4_ipv6)",
            "rc=0",
            "lanyard-redirect: ipv4: chain LANYARD_INBOUND holds 2 rules where Lanyard installs 1",
            "lanyard-redirect: ipv6: chain LANYARD_OUTBOUND holds 4 rules where Lanyard installs 5",
            "lanyard-redirect: ipv6: chain LANYARD_OUTBOUND does not end with its REDIRECT",
            "lanyard-redirect: ipv6: rule missing: ip6tables -t nat -A LANYARD_OUTBOUND -p tcp -j REDIRECT --to-ports 4140",
            "rc=3",
            "lanyard-redirect: ipv4: chain LANYARD_INBOUND is missing",
            "lanyard-redirect: ipv4: rule missing: iptables -t nat -A PREROUTING -p tcp -j LANYARD_INBOUND",
            "lanyard-redirect: ipv6: chain LANYARD_OUTBOUND holds 4 rules where Lanyard installs 5",
            "lanyard-redirect: ipv6: chain LANYARD_OUTBOUND does not end with its REDIRECT",
            "lanyard-redirect: ipv6: rule missing: ip6tables -t nat -A LANYARD_OUTBOUND -p tcp -j REDIRECT --to-ports 4140",
            "rc=3",
        ],
        "{stdout}"
    );
}
