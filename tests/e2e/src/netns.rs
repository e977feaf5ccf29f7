//! Network namespaces for the transparent-proxy tests: a namespace per "pod", two of them
//! joined by a veth pair, or any number plugged into a "node" namespace's bridge; the pod's
//! redirect rules installed by running the very binary the injected init container runs
//! (`lanyard-redirect`, from `target/<profile>/`), or by invoking the `lanyard-cni` plugin as
//! a container runtime does (`CNI_*` variables, the configuration on stdin: [`run_cni`]); the
//! namespace's nat tables as `iptables-save` prints them; and sockets of this test process
//! opened inside a namespace (`setns` on a short-lived thread, so no other thread of the test
//! changes namespace).
//!
//! Everything is removed on drop: deleting a namespace deletes its end of the veth pair (and
//! so the pair) and its iptables rules. Processes started in a namespace must be dropped
//! first (declare the namespaces before them).

use std::fs::File;
use std::io;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::DEADLINE;

/// Set to `1` to skip the network-namespace tests where namespaces or iptables cannot work.
pub const SKIP_ENV: &str = "LANYARD_SKIP_NETNS_TESTS";

/// The injected init container's program, as cargo built it.
pub fn redirect_binary() -> PathBuf {
    crate::binary("lanyard-redirect")
}

/// The node's CNI plugin (and its installer), as cargo built it.
pub fn cni_binary() -> PathBuf {
    crate::binary("lanyard-cni")
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
        ("ip6tables", "--version", "iptables"),
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

    /// The namespace's file, what a runtime passes as `CNI_NETNS`.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// The nat tables of both families, as `iptables-save -t nat` and `ip6tables-save -t nat`
    /// print them in this namespace, without the comments and packet counters (which differ
    /// between two namespaces holding the same rules).
    pub fn nat_rules(&self) -> String {
        let mut rules = String::new();
        for save in ["iptables-save", "ip6tables-save"] {
            let output = Command::new("ip")
                .args(["netns", "exec", &self.name, save, "-t", "nat"])
                .stdin(Stdio::null())
                .output()
                .expect("running iptables-save");
            assert!(
                output.status.success(),
                "{save} in {}: {}",
                self.name,
                String::from_utf8_lossy(&output.stderr)
            );
            rules.push_str(&format!("# {save}\n"));
            for line in String::from_utf8_lossy(&output.stdout).lines() {
                if line.starts_with('#') {
                    continue;
                }
                // `:CHAIN POLICY [packets:bytes]`
                let line = match line.rfind(" [") {
                    Some(at) if line.starts_with(':') => &line[..at],
                    _ => line,
                };
                rules.push_str(line);
                rules.push('\n');
            }
        }
        rules
    }

    /// Runs `iptables` (or `ip6tables`, by `command`) with `args` in this namespace, failing
    /// the test if it fails.
    pub fn iptables(&self, command: &str, args: &[&str]) {
        let output = Command::new("ip")
            .args(["netns", "exec", &self.name, command, "-w"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running iptables");
        assert!(
            output.status.success(),
            "{command} {args:?} in {}: {}",
            self.name,
            String::from_utf8_lossy(&output.stderr)
        );
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

/// What one `lanyard-cni` invocation did.
#[derive(Debug)]
pub struct CniRun {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CniRun {
    /// The CNI error result's `code`, failing the test unless the run failed with one on
    /// stdout (`cniVersion`, `code`, `msg`).
    pub fn error_code(&self) -> u64 {
        assert!(!self.status.success(), "expected a failure: {self:?}");
        let result: serde_json::Value = serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("no CNI error result on stdout ({e}): {self:?}"));
        assert!(result["cniVersion"].is_string(), "{self:?}");
        assert!(result["msg"].is_string(), "{self:?}");
        result["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no code: {self:?}"))
    }

    /// Fails the test unless the run succeeded.
    pub fn assert_success(&self) -> &Self {
        assert!(self.status.success(), "lanyard-cni failed: {self:?}");
        self
    }
}

/// One invocation of the `lanyard-cni` plugin exactly as a container runtime makes it: a
/// clean environment holding `PATH` and the `CNI_*` variables (`CNI_COMMAND` = `command`,
/// `CNI_NETNS` = `netns` when given, `CNI_ARGS` = `cni_args`, container ID and interface),
/// `config` on stdin, the result read from stdout.
pub fn run_cni(command: &str, netns: Option<&Path>, cni_args: &str, config: &[u8]) -> CniRun {
    let mut cmd = Command::new(cni_binary());
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", "0123456789abcdef")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_ARGS", cni_args)
        .env("CNI_PATH", "/opt/cni/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(netns) = netns {
        cmd.env("CNI_NETNS", netns);
    }
    let mut child = cmd.spawn().expect("running lanyard-cni");
    let mut stdin = child.stdin.take().expect("piped");
    // The plugin may refuse before reading everything: a broken pipe is its answer.
    let _ = stdin.write_all(config);
    drop(stdin);
    let output = child.wait_with_output().expect("waiting for lanyard-cni");
    CniRun {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The node's conflist as `lanyard-cni install` leaves it: the cluster's plugin, then the
/// `lanyard-cni` entry reading `kubeconfig`.
pub fn cni_conflist(kubeconfig: &Path) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "plugins": [
            {"type": "ptp", "ipam": {"type": "host-local", "subnet": "10.251.0.0/16"}},
            {"type": "lanyard-cni", "kubeconfig": kubeconfig, "log_level": "debug"},
        ],
    })
    .to_string()
}

/// What a runtime writes to the `lanyard-cni` entry's stdin for `conflist` (libcni's way):
/// the entry with the list's `cniVersion` and `name`, and `prev_result` (the previous plugin's
/// result, spliced in as it is, spacing included) as `prevResult`.
pub fn cni_stdin(conflist: &str, prev_result: Option<&str>) -> Vec<u8> {
    let list: serde_json::Value = serde_json::from_str(conflist).expect("a conflist");
    let mut entry = list["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .find(|p| p["type"] == "lanyard-cni")
        .expect("the lanyard-cni entry")
        .clone();
    entry["cniVersion"] = list["cniVersion"].clone();
    entry["name"] = list["name"].clone();
    let mut text = entry.to_string();
    if let Some(prev) = prev_result {
        text.pop(); // the closing brace
        text.push_str(&format!(",\"prevResult\":{prev}}}"));
    }
    text.into_bytes()
}

/// A previous plugin's result for a pod at `ip` in `netns`, as the cluster's plugin returns
/// it (odd spacing kept, to show it is echoed byte for byte).
pub fn prev_result(netns: &Netns, ip: &str) -> String {
    format!(
        r#"{{"cniVersion":"1.0.0", "interfaces":[{{"name":"eth0","sandbox":"{}"}}],"ips":[{{"address":"{ip}/24","interface":0}}]}}"#,
        netns.path().display()
    )
}

/// `CNI_ARGS` as the kubelet's runtime sets them for pod `namespace/name`.
pub fn pod_cni_args(namespace: &str, name: &str) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};\
         K8S_POD_INFRA_CONTAINER_ID=0123456789abcdef"
    )
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
