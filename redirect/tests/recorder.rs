//! The `lanyard-redirect` binary against a recording `IPTABLES`: a small script that appends
//! its arguments and exit code to a file and keeps which chains exist, so removals fail on a
//! first run (nothing to remove) and succeed on a second, as the real iptables does. Checks
//! the exact commands, the idempotent re-run, what is printed, and every refusal.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lanyard_redirect::{Iptables, RedirectConfig, steps};

struct Recorder {
    dir: tempfile::TempDir,
}

impl Recorder {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let script = format!(
            r#"#!/bin/sh
# Records "ARGS => RC". Chains live as files; -D/-F/-X of a missing chain fails like iptables.
state='{state}'
log='{log}'
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
if [ -n "${{FAIL_ON:-}}" ]; then
    case " $* " in *" $FAIL_ON "*) rc=4 ;; esac
fi
echo "$* => $rc" >> "$log"
[ "$rc" = 0 ] || echo "iptables: recorder says no ($rc)" >&2
exit "$rc"
"#,
            state = dir.path().join("state").display(),
            log = dir.path().join("log").display(),
        );
        std::fs::create_dir(dir.path().join("state")).unwrap();
        let program = dir.path().join("iptables");
        std::fs::write(&program, script).unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self { dir }
    }

    fn program(&self) -> PathBuf {
        self.dir.path().join("iptables")
    }

    /// Every call so far, then forgets them.
    fn take_calls(&self) -> Vec<String> {
        let log = self.dir.path().join("log");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        text.lines().map(str::to_owned).collect()
    }

    fn run(&self, env: &[(&str, &str)], args: &[&str]) -> Output {
        redirect(&self.program(), env, args)
    }
}

fn redirect(iptables: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lanyard-redirect"))
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("IPTABLES", iptables)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The calls of one run with `skip_in`/`skip_out`, given whether an earlier run's chains exist.
fn expected_calls(earlier: bool) -> Vec<String> {
    let gone = if earlier { "0" } else { "1" };
    [
        format!("-w -t nat -D PREROUTING -p tcp -j LANYARD_INBOUND => {gone}"),
        format!("-w -t nat -D OUTPUT -p tcp -j LANYARD_OUTBOUND => {gone}"),
        format!("-w -t nat -F LANYARD_INBOUND => {gone}"),
        format!("-w -t nat -X LANYARD_INBOUND => {gone}"),
        format!("-w -t nat -F LANYARD_OUTBOUND => {gone}"),
        format!("-w -t nat -X LANYARD_OUTBOUND => {gone}"),
        "-w -t nat -N LANYARD_INBOUND => 0".into(),
        "-w -t nat -A LANYARD_INBOUND -p tcp --dport 4143 -j RETURN => 0".into(),
        "-w -t nat -A LANYARD_INBOUND -p tcp --dport 4192 -j RETURN => 0".into(),
        "-w -t nat -A LANYARD_INBOUND -p tcp -j REDIRECT --to-ports 4143 => 0".into(),
        "-w -t nat -A PREROUTING -p tcp -j LANYARD_INBOUND => 0".into(),
        "-w -t nat -N LANYARD_OUTBOUND => 0".into(),
        "-w -t nat -A LANYARD_OUTBOUND -m owner --uid-owner 2102 -j RETURN => 0".into(),
        "-w -t nat -A LANYARD_OUTBOUND -o lo -j RETURN => 0".into(),
        "-w -t nat -A LANYARD_OUTBOUND -d 127.0.0.0/8 -j RETURN => 0".into(),
        "-w -t nat -A LANYARD_OUTBOUND -p tcp --dport 5432 -j RETURN => 0".into(),
        "-w -t nat -A LANYARD_OUTBOUND -p tcp -j REDIRECT --to-ports 4140 => 0".into(),
        "-w -t nat -A OUTPUT -p tcp -j LANYARD_OUTBOUND => 0".into(),
    ]
    .to_vec()
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
    // It prints each rule it installed (without -w), then done.
    let printed = text(&first.stdout);
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 13, "{printed}");
    assert_eq!(lines[0], "iptables -t nat -N LANYARD_INBOUND");
    assert_eq!(
        lines[3],
        "iptables -t nat -A LANYARD_INBOUND -p tcp -j REDIRECT --to-ports 4143"
    );
    assert_eq!(lines[12], "lanyard-redirect: done");

    // Again: the same commands, and this time the removals find the earlier rules.
    let second = recorder.run(&ENV, &[]);
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert_eq!(recorder.take_calls(), expected_calls(true));
    assert_eq!(second.stdout, first.stdout);
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
    Iptables::new(recorder.program())
        .apply(&steps(&config).unwrap(), |s| installed.push(s.to_string()))
        .unwrap();
    assert_eq!(recorder.take_calls(), expected_calls(false));
    assert_eq!(installed.len(), 12);
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
    assert!(calls.contains(
        &"-w -t nat -A LANYARD_OUTBOUND -m owner --uid-owner 7 -j RETURN => 0".to_owned()
    ));
    let skips: Vec<_> = calls.iter().filter(|c| c.contains("--dport")).collect();
    assert_eq!(
        skips,
        ["-w -t nat -A LANYARD_OUTBOUND -p tcp --dport 5432 -j RETURN => 0"]
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
        "-w -t nat -A OUTPUT -p tcp -j LANYARD_OUTBOUND => 4"
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
fn a_missing_iptables_is_an_error_even_for_removals() {
    let out = redirect(Path::new("/nonexistent/iptables"), &[], &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "running `/nonexistent/iptables -w -t nat -D PREROUTING -p tcp -j LANYARD_INBOUND`"
        ),
        "{stderr}"
    );
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
    let program = recorder.program().display().to_string();
    let lines: Vec<String> = printed
        .lines()
        .map(|l| l.replace(&program, "IPT"))
        .collect();
    let expected: Vec<String> = expected_calls(false)
        .iter()
        .enumerate()
        .map(|(i, call)| {
            let command = format!("IPT {}", call.rsplit_once(" => ").unwrap().0);
            if i < 6 {
                format!("{command}  # removes an earlier run's rules; may find nothing")
            } else {
                command
            }
        })
        .collect();
    assert_eq!(lines, expected);
}
