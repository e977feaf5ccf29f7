//! The `lanyard-redirect` binary against the real iptables, in a fresh network namespace
//! (`unshare --net`): run twice, the nat table holds exactly one copy of the rules.
//!
//! Needs root, `unshare` (util-linux) and `iptables`; without them it fails saying so, unless
//! `LANYARD_SKIP_NETNS_TESTS=1` (the same switch as the end-to-end namespace tests).

use std::process::{Command, Stdio};

const SKIP_ENV: &str = "LANYARD_SKIP_NETNS_TESTS";

fn available_or_skip() -> bool {
    let works = Command::new("unshare")
        .args(["--net", "iptables", "-w", "-t", "nat", "-S"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    match (works, std::env::var(SKIP_ENV).as_deref() == Ok("1")) {
        (true, _) => true,
        (false, true) => {
            eprintln!("skipping: cannot run iptables in a new network namespace ({SKIP_ENV}=1)");
            false
        }
        (false, false) => panic!(
            "cannot run iptables in a new network namespace: run as root with `unshare` \
             (util-linux) and `iptables` installed, or set {SKIP_ENV}=1 to skip"
        ),
    }
}

#[test]
fn two_runs_leave_one_copy_of_the_rules() {
    if !available_or_skip() {
        return;
    }
    // One namespace for both runs and the listing: the namespace lives as long as `sh`.
    let out = Command::new("unshare")
        .args([
            "--net",
            "sh",
            "-c",
            "\"$0\" >/dev/null && \"$0\" && iptables -w -t nat -S",
            env!("CARGO_BIN_EXE_lanyard-redirect"),
        ])
        .env("SKIP_INBOUND_PORTS", "4143,4192")
        .env("SKIP_OUTBOUND_PORTS", "5432")
        .env_remove("IPTABLES")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rules: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("-N ") || l.starts_with("-A "))
        .collect();
    assert_eq!(
        rules,
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
            "-A LANYARD_OUTBOUND -d 127.0.0.0/8 -j RETURN",
            "-A LANYARD_OUTBOUND -p tcp -m tcp --dport 5432 -j RETURN",
            "-A LANYARD_OUTBOUND -p tcp -j REDIRECT --to-ports 4140",
        ],
        "{stdout}"
    );
    // The second run printed what it installed.
    assert!(stdout.contains("lanyard-redirect: done"), "{stdout}");
}
