//! The `lanyard-redirect` binary against a recording `IPTABLES` and `IP6TABLES`: one small
//! script under both names that appends its name, arguments and exit code to a file and keeps
//! which chains exist (per name), so removals fail on a first run (nothing to remove) and
//! succeed on a second, as the real commands do. Checks the exact commands, the idempotent
//! re-run, what is printed, IPv4 only where `ip6tables -t nat -S` fails (`NO_IPV6=1`), and
//! every refusal.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lanyard_redirect::{Coverage, Iptables, RedirectConfig, removal_steps, steps};

struct Recorder {
    dir: tempfile::TempDir,
}

impl Recorder {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let script = format!(
            r#"#!/bin/sh
# Records "NAME ARGS => RC". Chains live as files, per NAME; -D/-F/-X of a missing chain fails
# like iptables. NO_IPV6=1: ip6tables finds no nat table.
name=$(basename "$0")
state='{state}'/"$name"
log='{log}'
mkdir -p "$state"
rc=0
chain=""
prev=""
for a in "$@"; do
    case "$prev" in -N|-F|-X) chain="$a" ;; -D) ;; esac
    prev="$a"
done
case " $* " in
    *" -D PREROUTING "*) [ -e "$state/LANYARD_INBOUND" ] || rc=1 ;;
    *" -D OUTPUT "*) [ -e "$state/LANYARD_OUTBOUND" ] || rc=1 ;;
    *" -F "*) [ -e "$state/$chain" ] || rc=1 ;;
    *" -X "*) if [ -e "$state/$chain" ]; then rm "$state/$chain"; else rc=1; fi ;;
    *" -N "*) if [ -e "$state/$chain" ]; then rc=1; else : > "$state/$chain"; fi ;;
esac
if [ "$name" = ip6tables ] && [ "${{NO_IPV6:-}}" = 1 ]; then
    rc=3
    echo "ip6tables v1.8.9 (legacy): can't initialize ip6tables table \`nat': Table does not exist" >&2
fi
if [ -n "${{FAIL_ON:-}}" ]; then
    case " $* " in *" $FAIL_ON "*) rc=4 ;; esac
fi
echo "$name $* => $rc" >> "$log"
[ "$rc" = 0 ] || echo "iptables: recorder says no ($rc)" >&2
exit "$rc"
"#,
            state = dir.path().join("state").display(),
            log = dir.path().join("log").display(),
        );
        std::fs::create_dir(dir.path().join("state")).unwrap();
        for name in ["iptables", "ip6tables"] {
            let program = dir.path().join(name);
            std::fs::write(&program, &script).unwrap();
            std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Self { dir }
    }

    fn program(&self) -> PathBuf {
        self.dir.path().join("iptables")
    }

    fn program6(&self) -> PathBuf {
        self.dir.path().join("ip6tables")
    }

    fn iptables(&self) -> Iptables {
        Iptables::new(self.program(), self.program6())
    }

    /// Every call so far, then forgets them.
    fn take_calls(&self) -> Vec<String> {
        let log = self.dir.path().join("log");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        text.lines().map(str::to_owned).collect()
    }

    fn run(&self, env: &[(&str, &str)], args: &[&str]) -> Output {
        redirect(&self.program(), &self.program6(), env, args)
    }
}

fn redirect(iptables: &Path, ip6tables: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lanyard-redirect"))
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("IPTABLES", iptables)
        .env("IP6TABLES", ip6tables)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// One family's calls of a run with the skip ports of [`ENV`], given whether an earlier run's
/// chains exist.
fn family_calls(cmd: &str, loopback: &str, earlier: bool) -> Vec<String> {
    let gone = if earlier { "0" } else { "1" };
    [
        format!("{cmd} -w -t nat -D PREROUTING -p tcp -j LANYARD_INBOUND => {gone}"),
        format!("{cmd} -w -t nat -D OUTPUT -p tcp -j LANYARD_OUTBOUND => {gone}"),
        format!("{cmd} -w -t nat -F LANYARD_INBOUND => {gone}"),
        format!("{cmd} -w -t nat -X LANYARD_INBOUND => {gone}"),
        format!("{cmd} -w -t nat -F LANYARD_OUTBOUND => {gone}"),
        format!("{cmd} -w -t nat -X LANYARD_OUTBOUND => {gone}"),
        format!("{cmd} -w -t nat -N LANYARD_INBOUND => 0"),
        format!("{cmd} -w -t nat -A LANYARD_INBOUND -p tcp --dport 4143 -j RETURN => 0"),
        format!("{cmd} -w -t nat -A LANYARD_INBOUND -p tcp --dport 4192 -j RETURN => 0"),
        format!("{cmd} -w -t nat -A LANYARD_INBOUND -p tcp -j REDIRECT --to-ports 4143 => 0"),
        format!("{cmd} -w -t nat -A PREROUTING -p tcp -j LANYARD_INBOUND => 0"),
        format!("{cmd} -w -t nat -N LANYARD_OUTBOUND => 0"),
        format!("{cmd} -w -t nat -A LANYARD_OUTBOUND -m owner --uid-owner 2102 -j RETURN => 0"),
        format!("{cmd} -w -t nat -A LANYARD_OUTBOUND -o lo -j RETURN => 0"),
        format!("{cmd} -w -t nat -A LANYARD_OUTBOUND -d {loopback} -j RETURN => 0"),
        format!("{cmd} -w -t nat -A LANYARD_OUTBOUND -p tcp --dport 5432 -j RETURN => 0"),
        format!("{cmd} -w -t nat -A LANYARD_OUTBOUND -p tcp -j REDIRECT --to-ports 4140 => 0"),
        format!("{cmd} -w -t nat -A OUTPUT -p tcp -j LANYARD_OUTBOUND => 0"),
    ]
    .to_vec()
}

/// The calls of one run: IPv4's, the IPv6 probe, IPv6's.
fn expected_calls(earlier: bool) -> Vec<String> {
    let mut calls = family_calls("iptables", "127.0.0.0/8", earlier);
    calls.push("ip6tables -w -t nat -S => 0".into());
    calls.extend(family_calls("ip6tables", "::1/128", earlier));
    calls
}

const ENV: [(&str, &str); 5] = [
    ("PROXY_UID", "2102"),
    ("PROXY_INBOUND_PORT", "4143"),
    ("PROXY_OUTBOUND_PORT", "4140"),
    ("SKIP_INBOUND_PORTS", "4143,4192"),
    ("SKIP_OUTBOUND_PORTS", "5432"),
];

#[test]
fn the_exact_commands_and_an_idempotent_rerun() {
    let recorder = Recorder::new();
    let first = recorder.run(&ENV, &[]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert_eq!(recorder.take_calls(), expected_calls(false));
    // It prints each rule it installed (without -w), IPv4's then IPv6's, then done.
    let printed = text(&first.stdout);
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 25, "{printed}");
    assert_eq!(lines[0], "iptables -t nat -N LANYARD_INBOUND");
    assert_eq!(
        lines[3],
        "iptables -t nat -A LANYARD_INBOUND -p tcp -j REDIRECT --to-ports 4143"
    );
    assert_eq!(lines[12], "ip6tables -t nat -N LANYARD_INBOUND");
    assert_eq!(
        lines[20],
        "ip6tables -t nat -A LANYARD_OUTBOUND -d ::1/128 -j RETURN"
    );
    assert_eq!(lines[24], "lanyard-redirect: done (ipv4_ipv6)");

    // Again: the same commands, and this time the removals find the earlier rules.
    let second = recorder.run(&ENV, &[]);
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert_eq!(recorder.take_calls(), expected_calls(true));
    assert_eq!(second.stdout, first.stdout);
}

/// A namespace without an IPv6 nat table: the IPv4 rules, the probe, nothing more for IPv6,
/// success, and a line saying IPv6 was left alone with ip6tables' words.
#[test]
fn without_ipv6_only_ipv4_is_redirected_and_it_says_so() {
    let recorder = Recorder::new();
    let mut env = ENV.to_vec();
    env.push(("NO_IPV6", "1"));
    let out = recorder.run(&env, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut expected = family_calls("iptables", "127.0.0.0/8", false);
    expected.push("ip6tables -w -t nat -S => 3".into());
    assert_eq!(recorder.take_calls(), expected);
    let printed = text(&out.stdout);
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 14, "{printed}");
    assert!(lines[..12].iter().all(|l| l.starts_with("iptables ")));
    let program6 = recorder.program6();
    assert_eq!(
        lines[12],
        format!(
            "lanyard-redirect: IPv4 only, IPv6 left alone: this network namespace has no IPv6 \
             nat table (`{} -w -t nat -S` failed (exit status: 3): ip6tables v1.8.9 (legacy): \
             can't initialize ip6tables table `nat': Table does not exist; iptables: recorder \
             says no (3))",
            program6.display()
        )
    );
    assert_eq!(lines[13], "lanyard-redirect: done (ipv4_only)");
}

#[test]
fn the_library_runs_the_same_commands() {
    let recorder = Recorder::new();
    let config = RedirectConfig {
        skip_inbound_ports: vec![4143, 4192],
        skip_outbound_ports: vec![5432],
        ..Default::default()
    };
    let mut installed = Vec::new();
    let coverage = recorder
        .iptables()
        .apply(&steps(&config).unwrap(), |s| installed.push(s.to_string()))
        .unwrap();
    assert_eq!(coverage, Coverage::Both);
    assert_eq!(recorder.take_calls(), expected_calls(false));
    assert_eq!(installed.len(), 24);

    // The removal steps alone (the CNI plugin's DEL) undo both families.
    recorder.iptables().apply(&removal_steps(), |_| {}).unwrap();
    let calls = recorder.take_calls();
    assert_eq!(calls.len(), 13, "{calls:#?}");
    assert!(
        calls.iter().all(|c| c.ends_with(" => 0")
            && (c.contains(" -D ")
                || c.contains(" -F ")
                || c.contains(" -X ")
                || c.contains(" -S"))),
        "{calls:#?}"
    );
    // Removing again finds nothing, and succeeds.
    recorder.iptables().apply(&removal_steps(), |_| {}).unwrap();
    let calls = recorder.take_calls();
    assert_eq!(
        calls.iter().filter(|c| c.ends_with(" => 1")).count(),
        12,
        "{calls:#?}"
    );
}

#[test]
fn flags_win_over_the_environment() {
    let recorder = Recorder::new();
    let out = recorder.run(
        &[("PROXY_UID", "9"), ("SKIP_OUTBOUND_PORTS", "1,2")],
        &["--proxy-uid", "7", "--skip-outbound-ports", "5432"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let calls = recorder.take_calls();
    for cmd in ["iptables", "ip6tables"] {
        assert!(calls.contains(&format!(
            "{cmd} -w -t nat -A LANYARD_OUTBOUND -m owner --uid-owner 7 -j RETURN => 0"
        )));
    }
    let skips: Vec<_> = calls.iter().filter(|c| c.contains("--dport")).collect();
    assert_eq!(
        skips,
        [
            "iptables -w -t nat -A LANYARD_OUTBOUND -p tcp --dport 5432 -j RETURN => 0",
            "ip6tables -w -t nat -A LANYARD_OUTBOUND -p tcp --dport 5432 -j RETURN => 0"
        ]
    );
}

#[test]
fn a_failing_rule_stops_the_run_with_the_command_and_its_stderr() {
    let recorder = Recorder::new();
    let mut env = ENV.to_vec();
    env.push(("FAIL_ON", "-A OUTPUT"));
    let out = recorder.run(&env, &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let program = recorder.program();
    assert!(
        stderr.contains(&format!(
            "`{} -w -t nat -A OUTPUT -p tcp -j LANYARD_OUTBOUND` failed",
            program.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("recorder says no (4)"), "{stderr}");
    assert!(!text(&out.stdout).contains("done"));
    assert_eq!(
        recorder.take_calls().last().unwrap(),
        "iptables -w -t nat -A OUTPUT -p tcp -j LANYARD_OUTBOUND => 4"
    );

    // A failure of an install step in the middle: nothing after it runs.
    let recorder = Recorder::new();
    let mut env = ENV.to_vec();
    env.push(("FAIL_ON", "-N LANYARD_OUTBOUND"));
    let out = recorder.run(&env, &[]);
    assert!(!out.status.success());
    let calls = recorder.take_calls();
    assert_eq!(calls.len(), 12, "{calls:#?}");
}

#[test]
fn a_missing_iptables_or_ip6tables_is_an_error_even_for_removals() {
    let recorder = Recorder::new();
    let out = redirect(
        Path::new("/nonexistent/iptables"),
        &recorder.program6(),
        &[],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "running `/nonexistent/iptables -w -t nat -D PREROUTING -p tcp -j LANYARD_INBOUND`"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("(is iptables installed?)"), "{stderr}");

    // Without ip6tables the IPv4 rules go in, then the run fails: a namespace that may carry
    // IPv6 is not left with IPv6 passing in plaintext.
    let out = redirect(
        &recorder.program(),
        Path::new("/nonexistent/ip6tables"),
        &[],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("running `/nonexistent/ip6tables -w -t nat -S`"),
        "{stderr}"
    );
    assert!(stderr.contains("(is ip6tables installed?)"), "{stderr}");
}

#[test]
fn bad_parameters_run_nothing() {
    for (var, value, says) in [
        (
            "SKIP_INBOUND_PORTS",
            "80;reboot",
            "SKIP_INBOUND_PORTS: not a port: \"80;reboot\"",
        ),
        ("PROXY_UID", "root", "PROXY_UID: not a uid: \"root\""),
        (
            "PROXY_OUTBOUND_PORT",
            "70000",
            "PROXY_OUTBOUND_PORT: not a port: \"70000\"",
        ),
    ] {
        let recorder = Recorder::new();
        let out = recorder.run(&[(var, value)], &[]);
        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        assert!(text(&out.stderr).contains(says), "{}", text(&out.stderr));
        assert!(recorder.take_calls().is_empty(), "{var}={value}");
    }
}

#[test]
fn dry_run_prints_every_command_and_runs_none() {
    let recorder = Recorder::new();
    let out = recorder.run(&ENV, &["--dry-run"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(recorder.take_calls().is_empty());
    let printed = text(&out.stdout);
    let dir = format!("{}/", recorder.dir.path().display());
    let lines: Vec<String> = printed.lines().map(|l| l.replace(&dir, "")).collect();
    let expected: Vec<String> = expected_calls(false)
        .iter()
        .filter(|call| !call.ends_with(" -S => 0"))
        .map(|call| {
            let command = call.rsplit_once(" => ").unwrap().0.to_owned();
            if call.ends_with(" => 1") {
                format!("{command}  # removes an earlier run's rules; may find nothing")
            } else {
                command
            }
        })
        .collect();
    assert_eq!(lines, expected);
}
