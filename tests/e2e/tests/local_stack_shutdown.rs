//! Ctrl-C of the local stack (`lanyard-local`, what `./deploy/local/run` starts), over real
//! processes: every child starts with SIGINT and SIGTERM unblocked, stops by itself on the
//! SIGTERM it is sent (exit status 0, none killed after the 8 s grace period), and the stack
//! is gone well within that grace period. When the children inherited a mask with both
//! signals blocked, every stop took 8-10 s and ended in SIGKILL.

use std::time::{Duration, Instant};

use lanyard_e2e::binary;
use lanyard_e2e::process::Process;

/// What a stop may take: the children need milliseconds; the grace period is 8 s, and the
/// server's own drain limit 5 s.
const STOP_BOUND: Duration = Duration::from_secs(3);

/// The pids of `pid`'s children, from every one of its threads.
fn child_pids(pid: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("its threads") {
        let path = task.expect("a thread").path().join("children");
        // A thread that ended since the listing has no file any more.
        if let Ok(list) = std::fs::read_to_string(path) {
            children.extend(list.split_whitespace().map(|p| p.parse::<u32>().unwrap()));
        }
    }
    children
}

/// The name and blocked-signal mask (`SigBlk`) of process `pid`.
fn name_and_blocked(pid: u32) -> (String, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("its status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} in {status}"))
            .trim()
            .to_owned()
    };
    let blocked = u64::from_str_radix(&field("SigBlk:"), 16).expect("hex mask");
    (field("Name:"), blocked)
}

fn signal_bit(signal: i32) -> u64 {
    1 << (signal - 1)
}

/// SIGKILLs the stack's children when the test fails before lanyard-local stopped them: they
/// have process groups of their own, which dropping the `Process` does not reach.
struct KillLeftovers(Vec<u32>);

impl Drop for KillLeftovers {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // Only a pid that still runs one of our binaries (a reaped child's pid may be
            // reused; a zombie has no exe).
            let ours = std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| {
                exe.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("lanyard-"))
            });
            if ours {
                // SAFETY: kill(2) on a live process running a lanyard binary; no memory is
                // touched.
                unsafe {
                    libc::kill(pid as i32, libc::SIGKILL);
                }
            }
        }
    }
}

#[test]
fn ctrl_c_stops_the_local_stack_and_every_child_cleanly() {
    let mut local = Process::start(&binary("lanyard-local"), &["--interval", "1"], &[]);
    // Up: a request went through both proxies. The first request already succeeds (the stack
    // waits until both proxies hold their SVIDs).
    let first = local.wait_for_line("the client app's first request", |line| {
        line.starts_with("client app").then(|| line.to_owned())
    });
    let children = child_pids(local.pid());
    let _leftovers = KillLeftovers(children.clone());
    assert!(
        first.starts_with("client app got: hello"),
        "the first request failed: {first}"
    );
    let mut names = Vec::new();
    for &pid in &children {
        let (name, blocked) = name_and_blocked(pid);
        for (signal, label) in [(libc::SIGINT, "SIGINT"), (libc::SIGTERM, "SIGTERM")] {
            assert_eq!(
                blocked & signal_bit(signal),
                0,
                "{name} (pid {pid}) started with {label} blocked (SigBlk {blocked:016x})"
            );
        }
        names.push(name);
    }
    names.sort();
    assert_eq!(
        names,
        [
            "lanyard-agent",
            "lanyard-proxy",
            "lanyard-proxy",
            "lanyard-server"
        ],
        "lanyard-local's children"
    );

    // A terminal's Ctrl-C: SIGINT to the foreground process group, lanyard-local's (each
    // child has a group of its own, so only lanyard-local's SIGTERM reaches them).
    let start = Instant::now();
    // SAFETY: kill(2) on the process group of our own child, which has not been reaped.
    let sent = unsafe { libc::kill(-(local.pid() as i32), libc::SIGINT) };
    assert_eq!(sent, 0, "{}", std::io::Error::last_os_error());
    let status = local.wait();
    let took = start.elapsed();

    let out = local.stdout_lines().join("\n");
    assert!(
        status.success(),
        "lanyard-local: {status}\n{out}\n{}",
        local.stderr_text()
    );
    assert!(
        took < STOP_BOUND,
        "the stop took {took:?} (bound {STOP_BOUND:?}):\n{out}"
    );
    for name in [
        "lanyard-server",
        "lanyard-agent",
        "web proxy",
        "client proxy",
    ] {
        let wanted = format!("stopped {name}: exit status: 0 ");
        assert!(
            out.lines().any(|l| l.starts_with(&wanted)),
            "{name} did not stop by itself with status 0:\n{out}"
        );
    }
    assert!(
        !out.lines().any(|l| l.starts_with("killed ")),
        "a child was killed after the grace period:\n{out}"
    );
    assert!(
        out.contains("stopped; every process is gone"),
        "no final report:\n{out}"
    );
    // Reaped by lanyard-local, not left running or reparented.
    for &pid in &children {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "child {pid} is still there after lanyard-local exited"
        );
    }
}
