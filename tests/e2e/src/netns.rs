//! Network namespaces for the transparent-proxy tests: a namespace per "pod", two of them
//! joined by a veth pair, or any number plugged into a "node" namespace's bridge; the pod's
//! redirect rules installed by running the very binary the injected init container runs
//! (`lanyard-redirect`, from `target/<profile>/`); and sockets of this test process opened
//! inside a namespace (`setns` on a short-lived thread, so no other thread of the test changes
//! namespace).
//!
//! Everything is removed on drop: deleting a namespace deletes its end of the veth pair (and
//! so the pair) and its iptables rules. Processes started in a namespace must be dropped
//! first (declare the namespaces before them).

use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::DEADLINE;

/// Set to `1` to skip the network-namespace tests where namespaces or iptables cannot work.
pub const SKIP_ENV: &str = "LANYARD_SKIP_NETNS_TESTS";

/// The injected init container's program, as cargo built it.
pub fn redirect_binary() -> PathBuf {
    crate::binary("lanyard-redirect")
}

/// `true` when the namespace tests can run here; `false` (skip) only when
/// [`SKIP_ENV`]`=1`; otherwise a failure saying what is missing.
pub fn available_or_skip() -> bool {
    let missing = missing_prerequisite();
    match (missing, std::env::var(SKIP_ENV).as_deref() == Ok("1")) {
        (None, _) => true,
        (Some(why), true) => {
            eprintln!("skipping a network-namespace test ({SKIP_ENV}=1): {why}");
            false
        }
        (Some(why), false) => panic!(
            "the network-namespace tests cannot run here: {why}. Run as root with `ip` \
             (iproute2) and `iptables` installed (`./scripts/test` installs them as root on Debian; `scripts/prerequisites` lists them), or set {SKIP_ENV}=1 \
             to skip them"
        ),
    }
}

fn missing_prerequisite() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    for (tool, flag, package) in [
        ("ip", "-V", "iproute2"),
        ("iptables", "--version", "iptables"),
    ] {
        let found = Command::new(tool)
            .arg(flag)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!("`{tool}` is not installed (package {package})"));
        }
    }
    None
}

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Netns {
    name: String,
    /// Host-side veth interfaces made so far by [`Netns::plug`] (their names are numbered).
    plugged: AtomicU32,
}

impl Netns {
    /// Creates namespace `name` with its loopback up. A namespace of that name left behind
    /// by an earlier, killed run is replaced.
    pub fn create(name: &str) -> Self {
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", name]);
        let ns = Self {
            name: name.into(),
            plugged: AtomicU32::new(0),
        };
        ip(&["-n", name, "link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Joins `self` and `peer` with a veth pair (`eth0` in each), addressed `self_cidr` and
    /// `peer_cidr` (e.g. `10.251.7.1/30`), both up.
    pub fn link(&self, self_cidr: &str, peer: &Netns, peer_cidr: &str) {
        ip(&[
            "-n", &self.name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
            "netns", &peer.name,
        ]);
        for (ns, cidr) in [(self, self_cidr), (peer, peer_cidr)] {
            ip(&["-n", &ns.name, "addr", "add", cidr, "dev", "eth0"]);
            ip(&["-n", &ns.name, "link", "set", "eth0", "up"]);
        }
    }

    /// Makes this namespace a node's pod network: a bridge `br0`, up, holding `cidr` (the
    /// node's own address on it, e.g. `10.251.8.254/24`). Pods join with [`Netns::plug`].
    pub fn bridge(&self, cidr: &str) {
        ip(&["-n", &self.name, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &self.name, "addr", "add", cidr, "dev", "br0"]);
        ip(&["-n", &self.name, "link", "set", "br0", "up"]);
    }

    /// Plugs `pod` into this namespace's bridge (see [`Netns::bridge`]) with a veth pair:
    /// `eth0` in `pod`, addressed `pod_cidr`, and a default route through it, so an address no
    /// interface holds (a Service's ClusterIP) is routable and meets the pod's redirect rules,
    /// as it would under kube-proxy.
    pub fn plug(&self, pod: &Netns, pod_cidr: &str) {
        let n = self.plugged.fetch_add(1, Ordering::Relaxed);
        let host_side = format!("veth{n}");
        ip(&[
            "-n", &pod.name, "link", "add", "eth0", "type", "veth", "peer", "name", &host_side,
            "netns", &self.name,
        ]);
        ip(&["-n", &self.name, "link", "set", &host_side, "master", "br0"]);
        ip(&["-n", &self.name, "link", "set", &host_side, "up"]);
        ip(&["-n", &pod.name, "addr", "add", pod_cidr, "dev", "eth0"]);
        ip(&["-n", &pod.name, "link", "set", "eth0", "up"]);
        ip(&["-n", &pod.name, "route", "add", "default", "dev", "eth0"]);
    }

    /// Runs the init container's `lanyard-redirect` in this namespace with `env` (e.g.
    /// `PROXY_UID`), and the system's iptables; returns what it printed (the rules).
    pub fn install_redirect(&self, env: &[(&str, &str)]) -> String {
        let output = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .arg(redirect_binary())
            .env_remove("IPTABLES")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("running lanyard-redirect");
        assert!(
            output.status.success(),
            "lanyard-redirect failed in {}: {}",
            self.name,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The arguments that run a program in this namespace: `ip netns exec NAME`.
    pub fn exec_prefix(&self) -> Vec<String> {
        vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.name.clone(),
        ]
    }

    /// Runs `f` on a new thread that has entered this namespace: sockets it creates live in
    /// the namespace (and stay there when used from other threads).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = Path::new("/run/netns").join(&self.name);
        let file = File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: setns on this thread only (a network namespace may be entered
                    // by one thread of a multithreaded process); the fd is open for the call.
                    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(
                        rc,
                        0,
                        "setns into {}: {}",
                        self.name,
                        io::Error::last_os_error()
                    );
                    f()
                })
                .join()
                .expect("the thread in the namespace panicked")
        })
    }

    /// A TCP connection to `addr` opened from inside this namespace.
    pub fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        self.run(|| TcpStream::connect_timeout(&addr, DEADLINE))
    }

    /// A TCP listener bound to `addr` inside this namespace.
    pub fn bind(&self, addr: SocketAddr) -> TcpListener {
        self.run(|| TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("binding {addr} in {}: {e}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A TCP connection to `addr` from `netns`, or from this process's own namespace.
pub fn connect_from(netns: Option<&Netns>, addr: SocketAddr) -> io::Result<TcpStream> {
    match netns {
        Some(ns) => ns.connect(addr),
        None => TcpStream::connect_timeout(&addr, DEADLINE),
    }
}

fn ip(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running ip");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}
