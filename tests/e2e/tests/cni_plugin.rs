//! The `lanyard-cni` plugin invoked exactly as a container runtime invokes it (a clean
//! environment with the `CNI_*` variables, the conflist entry with `prevResult` on stdin, a
//! real network namespace), looking pods up in the Kubernetes API fixture through the
//! kubeconfig its own installer (`lanyard-cni install`, a real process) wrote from a
//! `lanyard-cni` ServiceAccount token bound by the RBAC `lanyard install --cni` renders:
//!
//! - ADD on a pod annotated `inject: enabled` + `redirect: cni` installs exactly the rules the
//!   init container's `lanyard-redirect` installs with the same parameters (both families'
//!   `iptables-save -t nat` compared), and prints `prevResult` byte for byte; again, nothing
//!   changes;
//! - CHECK passes, then fails with CNI error 104 naming a rule deleted by hand;
//! - DEL removes every rule (the namespace is as fresh as an untouched one), again, and once
//!   the namespace is gone;
//! - pods without the annotation, with `redirect: init`, on the host network, and containers
//!   that are no pods are left alone (prevResult echoed, nat tables untouched);
//! - a pod not in the API is "try again later" (11), a token without the RBAC 100, bad
//!   annotations 101;
//! - malformed JSON, an unknown CNI_COMMAND, a missing CNI_NETNS, no prevResult, an oversized
//!   configuration all get CNI error results and a non-zero exit, never a panic;
//! - the installer adds its entry to the node's conflist, puts it back when the cluster's
//!   plugin rewrites the file, follows the token, and on SIGTERM removes entry, kubeconfig and
//!   binary.
//!
//! Needs root, `ip`, `iptables` and `ip6tables`; without them it fails saying so, unless
//! `LANYARD_SKIP_NETNS_TESTS=1`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube_fixture::{FixtureOptions, KubeFixture};
use lanyard_cli::install::{InstallOptions, RedirectMode, rbac};
use lanyard_e2e::DEADLINE;
use lanyard_e2e::cluster::pod;
use lanyard_e2e::netns::{
    self, Netns, cni_binary, cni_conflist, cni_stdin, pod_cni_args, prev_result, run_cni,
};
use lanyard_e2e::process::Process;
use lanyard_redirect::{REDIRECT_ANNOTATION, REDIRECT_CNI, REDIRECT_INIT, RedirectConfig};

/// The cluster's own plugin's conflist on the test node, before the installer runs.
const CLUSTER_CONFLIST: &str = r#"{"cniVersion": "1.0.0", "name": "k8s-pod-network", "plugins": [{"type": "ptp", "ipam": {"type": "host-local", "subnet": "10.251.0.0/16"}}]}"#;

/// Waits until `check` holds, failing after [`DEADLINE`] with `what`.
fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        // Each check reads a few files; this only paces them.
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The node: the fixture with `lanyard install --cni`'s RBAC and ServiceAccount, and a
/// running `lanyard-cni install` that has put its entry into the node's conflist.
struct Node {
    installer: Process,
    dir: tempfile::TempDir,
}

impl Node {
    fn bin(&self) -> PathBuf {
        self.dir.path().join("opt/cni/bin")
    }
    fn conf(&self) -> PathBuf {
        self.dir.path().join("etc/cni/net.d")
    }
    fn sa(&self) -> PathBuf {
        self.dir.path().join("sa")
    }
    fn conflist_path(&self) -> PathBuf {
        self.conf().join("10-ptp.conflist")
    }
    fn conflist(&self) -> String {
        std::fs::read_to_string(self.conflist_path()).unwrap()
    }
    fn kubeconfig(&self) -> PathBuf {
        self.conf().join("lanyard-cni.d/kubeconfig")
    }
    /// Whether the conflist ends with the `lanyard-cni` entry.
    fn has_entry(&self) -> bool {
        serde_json::from_str::<serde_json::Value>(&self.conflist())
            .ok()
            .and_then(|v| v["plugins"].as_array().cloned())
            .and_then(|p| p.last().cloned())
            .is_some_and(|last| last["type"] == "lanyard-cni")
    }
    /// The stdin of one invocation, from the conflist the installer left.
    fn stdin(&self, prev: Option<&str>) -> Vec<u8> {
        cni_stdin(&self.conflist(), prev)
    }
}

fn start_node(fixture: &KubeFixture) -> Node {
    let mut options = InstallOptions::defaults();
    options.redirect = RedirectMode::Cni;
    let mut docs = rbac::service_accounts(&options);
    docs.extend(rbac::cni_rbac(&options));
    fixture
        .apply_yaml(&lanyard_cli::yaml::write_stream(&docs))
        .expect("apply the CNI plugin's ServiceAccount and RBAC");
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let node = |p: &str| dir.path().join(p);
    for d in ["opt/cni/bin", "etc/cni/net.d", "sa"] {
        std::fs::create_dir_all(node(d)).unwrap();
    }
    std::fs::write(
        node("sa/token"),
        fixture.issue_api_token("lanyard", "lanyard-cni"),
    )
    .unwrap();
    std::fs::write(node("sa/ca.crt"), fixture.ca_pem()).unwrap();
    std::fs::write(node("etc/cni/net.d/10-ptp.conflist"), CLUSTER_CONFLIST).unwrap();
    let conf = node("etc/cni/net.d").display().to_string();
    let port = fixture.addr().port().to_string();
    let installer = Process::start(
        &cni_binary(),
        &[
            "install",
            "--host-bin-dir",
            &node("opt/cni/bin").display().to_string(),
            "--host-conf-dir",
            &conf,
            // The test's node sees its conf dir where the installer does.
            "--node-conf-dir",
            &conf,
            "--service-account-dir",
            &node("sa").display().to_string(),
            "--poll-interval",
            "50ms",
            "--log-level",
            "debug",
        ],
        &[
            ("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
            ("KUBERNETES_SERVICE_PORT", &port),
        ],
    );
    let node = Node { installer, dir };
    until("the installer adds its conflist entry", || node.has_entry());
    node
}

/// A pod on node-1 with `annotations`.
fn annotated(name: &str, annotations: &[(&str, String)]) -> Pod {
    let mut p = pod("default", name, "web", "node-1", None);
    p.metadata.annotations = Some(
        annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    );
    p
}

fn injected(redirect: Option<&str>, config: &RedirectConfig) -> Vec<(&'static str, String)> {
    let mut annotations = vec![(
        lanyard_proto::inject::INJECT_ANNOTATION,
        lanyard_proto::inject::INJECT_ENABLED.to_owned(),
    )];
    if let Some(redirect) = redirect {
        annotations.push((REDIRECT_ANNOTATION, redirect.to_owned()));
    }
    annotations.extend(config.to_annotations());
    annotations
}

/// Parameters unlike the defaults, so that a plugin falling back to them would show.
fn custom_config() -> RedirectConfig {
    RedirectConfig {
        proxy_uid: 2305,
        inbound_port: 5143,
        outbound_port: 5140,
        skip_inbound_ports: vec![4192, 22],
        skip_outbound_ports: vec![5432],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_installs_the_init_containers_rules_check_finds_them_del_removes_them() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if !netns::available_or_skip() {
        return;
    }
    let tag = std::process::id();
    let by_cni = Netns::create(&format!("lyc{tag}-a"));
    let by_init = Netns::create(&format!("lyc{tag}-b"));
    let fresh = Netns::create(&format!("lyc{tag}-c"));
    let fixture = KubeFixture::start(FixtureOptions::default()).await.unwrap();
    let node = blocking(|| start_node(&fixture));
    // The binary the runtime runs is the one the installer placed.
    assert_eq!(
        std::fs::read(node.bin().join("lanyard-cni")).unwrap(),
        std::fs::read(cni_binary()).unwrap()
    );
    let config = custom_config();
    fixture
        .store()
        .create(&annotated("web-1", &injected(Some(REDIRECT_CNI), &config)))
        .unwrap();
    let args = pod_cni_args("default", "web-1");
    let prev = prev_result(&by_cni, "10.251.9.1");

    blocking(|| {
        let untouched = fresh.nat_rules();
        let add = run_cni("ADD", Some(&by_cni.path()), &args, &node.stdin(Some(&prev)));
        add.assert_success();
        assert_eq!(add.stdout, prev, "prevResult is echoed byte for byte");
        assert!(add.stderr.contains("redirect installed"), "{}", add.stderr);

        // Exactly what the init container installs with the same parameters.
        let env = config.to_env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        by_init.install_redirect(&env);
        let rules = by_cni.nat_rules();
        assert_eq!(rules, by_init.nat_rules());
        for expected in [
            "-A LANYARD_INBOUND -p tcp -j REDIRECT --to-ports 5143",
            "-A LANYARD_OUTBOUND -m owner --uid-owner 2305 -j RETURN",
            "-A LANYARD_OUTBOUND -d 127.0.0.0/8 -j RETURN",
            "-A LANYARD_OUTBOUND -d ::1/128 -j RETURN",
            "-A LANYARD_OUTBOUND -p tcp -m tcp --dport 5432 -j RETURN",
        ] {
            assert!(rules.contains(expected), "{expected} missing:\n{rules}");
        }
        assert_ne!(rules, untouched);

        // ADD again (a runtime retrying): the same single copy.
        run_cni("ADD", Some(&by_cni.path()), &args, &node.stdin(Some(&prev))).assert_success();
        assert_eq!(by_cni.nat_rules(), by_init.nat_rules());

        // CHECK: in place; then one rule deleted by hand is reported, with code 104.
        let check = run_cni(
            "CHECK",
            Some(&by_cni.path()),
            &args,
            &node.stdin(Some(&prev)),
        );
        check.assert_success();
        assert_eq!(check.stdout, "");
        by_cni.iptables(
            "ip6tables",
            &[
                "-t",
                "nat",
                "-D",
                "LANYARD_OUTBOUND",
                "-p",
                "tcp",
                "-j",
                "REDIRECT",
                "--to-ports",
                "5140",
            ],
        );
        let check = run_cni(
            "CHECK",
            Some(&by_cni.path()),
            &args,
            &node.stdin(Some(&prev)),
        );
        assert_eq!(check.error_code(), 104, "{check:?}");
        assert!(
            check.stdout.contains(
                "ipv6: rule missing: ip6tables -t nat -A LANYARD_OUTBOUND -p tcp -j REDIRECT --to-ports 5140"
            ),
            "{check:?}"
        );

        // DEL: nothing of Lanyard's is left; again; and once the namespace is gone.
        let del = run_cni("DEL", Some(&by_cni.path()), &args, &node.stdin(Some(&prev)));
        del.assert_success();
        assert_eq!(del.stdout, "");
        assert_eq!(by_cni.nat_rules(), untouched);
        run_cni("DEL", Some(&by_cni.path()), &args, &node.stdin(Some(&prev))).assert_success();
        let gone = Path::new("/run/netns/lanyard-test-no-such-namespace");
        run_cni("DEL", Some(gone), &args, &node.stdin(Some(&prev))).assert_success();
        run_cni("DEL", None, &args, &node.stdin(None)).assert_success();
        // CHECK after DEL reports the missing chains.
        let check = run_cni(
            "CHECK",
            Some(&by_cni.path()),
            &args,
            &node.stdin(Some(&prev)),
        );
        assert_eq!(check.error_code(), 104, "{check:?}");
        assert!(
            check
                .stdout
                .contains("ipv4: chain LANYARD_INBOUND is missing"),
            "{check:?}"
        );
    });
    drop(node);
    drop(fixture);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_not_meant_for_the_plugin_are_left_alone_and_lookup_failures_are_errors() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if !netns::available_or_skip() {
        return;
    }
    let tag = std::process::id();
    let ns = Netns::create(&format!("lyc{tag}-d"));
    let fixture = KubeFixture::start(FixtureOptions::default()).await.unwrap();
    let node = blocking(|| start_node(&fixture));
    let config = custom_config();
    let store = fixture.store();
    store.create(&annotated("plain", &[])).unwrap();
    store
        .create(&annotated("init", &injected(Some(REDIRECT_INIT), &config)))
        .unwrap();
    store
        .create(&annotated("older-inject", &injected(None, &config)))
        .unwrap();
    store
        .create(&annotated(
            "cni-not-injected",
            &[(REDIRECT_ANNOTATION, REDIRECT_CNI.to_owned())],
        ))
        .unwrap();
    let mut host = annotated("host", &injected(Some(REDIRECT_CNI), &config));
    host.spec.as_mut().unwrap().host_network = Some(true);
    store.create(&host).unwrap();
    let bad: Vec<(&str, String)> = injected(Some(REDIRECT_CNI), &config)
        .into_iter()
        .map(|(k, v)| match k {
            "lanyard.dev/proxy-uid" => (k, "root".to_owned()),
            _ => (k, v),
        })
        .collect();
    store.create(&annotated("bad", &bad)).unwrap();
    store
        .create(&annotated(
            "ebpf",
            &[
                (lanyard_proto::inject::INJECT_ANNOTATION, "enabled".into()),
                (REDIRECT_ANNOTATION, "ebpf".into()),
            ],
        ))
        .unwrap();

    blocking(|| {
        let untouched = ns.nat_rules();
        let prev = prev_result(&ns, "10.251.9.2");
        let stdin = node.stdin(Some(&prev));
        for (args, label) in [
            (pod_cni_args("default", "plain"), "no_annotation"),
            (pod_cni_args("default", "init"), "redirect_init"),
            (pod_cni_args("default", "older-inject"), "redirect_init"),
            (pod_cni_args("default", "cni-not-injected"), "no_annotation"),
            (pod_cni_args("default", "host"), "host_network"),
            ("IgnoreUnknown=1".to_owned(), "not_kubernetes"),
        ] {
            let add = run_cni("ADD", Some(&ns.path()), &args, &stdin);
            add.assert_success();
            assert_eq!(add.stdout, prev, "{args}");
            assert!(
                add.stderr.contains(&format!("decision={label}")),
                "{args}: {}",
                add.stderr
            );
            assert_eq!(ns.nat_rules(), untouched, "{args}");
            let check = run_cni("CHECK", Some(&ns.path()), &args, &stdin);
            check.assert_success();
        }
        // The node's own namespace is never touched, whatever the pod says.
        // `/proc/self` as the plugin resolves it: its own namespace, the node's.
        let own = Path::new("/proc/self/ns/net");
        let add = run_cni("ADD", Some(own), &pod_cni_args("default", "plain"), &stdin);
        add.assert_success();
        assert!(
            add.stderr.contains("decision=host_network"),
            "{}",
            add.stderr
        );

        // A pod the API does not know (yet): try again later.
        let missing = run_cni(
            "ADD",
            Some(&ns.path()),
            &pod_cni_args("default", "nope"),
            &stdin,
        );
        assert_eq!(missing.error_code(), 11, "{missing:?}");
        // Bad annotations: 101, naming the annotation.
        for (name, says) in [
            ("bad", "lanyard.dev/proxy-uid: not a uid: \\\"root\\\""),
            (
                "ebpf",
                "lanyard.dev/redirect: \\\"ebpf\\\" is not a redirect mode",
            ),
        ] {
            let run = run_cni(
                "ADD",
                Some(&ns.path()),
                &pod_cni_args("default", name),
                &stdin,
            );
            assert_eq!(run.error_code(), 101, "{run:?}");
            assert!(run.stdout.contains(says), "{run:?}");
        }
        assert_eq!(ns.nat_rules(), untouched);

        // A kubeconfig whose identity has no RBAC: 100, not "try again".
        let nobody = fixture
            .write_kubeconfig("nobody", &fixture.issue_api_token("default", "nobody"))
            .unwrap();
        let conflist = cni_conflist(&nobody);
        let run = run_cni(
            "ADD",
            Some(&ns.path()),
            &pod_cni_args("default", "plain"),
            &cni_stdin(&conflist, Some(&prev)),
        );
        assert_eq!(run.error_code(), 100, "{run:?}");
        assert!(
            run.stdout.contains("403") || run.stdout.contains("forbidden"),
            "{run:?}"
        );
    });
    drop(node);
    drop(fixture);
}

/// Without a cluster: what is malformed is refused with the spec's codes.
#[test]
fn malformed_invocations_get_cni_error_results() {
    if !netns::available_or_skip() {
        return;
    }
    let ns = Netns::create(&format!("lyc{}-e", std::process::id()));
    let conflist = cni_conflist(Path::new("/nonexistent/kubeconfig"));
    let prev = prev_result(&ns, "10.251.9.3");
    let good = cni_stdin(&conflist, Some(&prev));
    let args = pod_cni_args("default", "web-1");
    let path = ns.path();
    /// What is wrong, CNI_COMMAND, CNI_NETNS, stdin, the expected code.
    type Case<'a> = (&'a str, &'a str, Option<&'a Path>, Vec<u8>, u64);
    let cases: Vec<Case<'_>> = vec![
        (
            "malformed JSON",
            "ADD",
            Some(&path),
            b"{\"cniVersion\": \"1.0.0\",".to_vec(),
            6,
        ),
        (
            "not JSON at all",
            "ADD",
            Some(&path),
            b"\xff\xfe".to_vec(),
            6,
        ),
        ("empty stdin", "ADD", Some(&path), Vec::new(), 6),
        ("unknown command", "STATUS", Some(&path), good.clone(), 4),
        ("lowercase command", "add", Some(&path), good.clone(), 4),
        ("no CNI_NETNS", "ADD", None, good.clone(), 4),
        ("no CNI_NETNS for CHECK", "CHECK", None, good.clone(), 4),
        (
            "no prevResult",
            "ADD",
            Some(&path),
            cni_stdin(&conflist, None),
            7,
        ),
        (
            "unsupported version",
            "ADD",
            Some(&path),
            cni_stdin(&conflist.replace("1.0.0", "0.2.0"), Some(&prev)),
            1,
        ),
        (
            "oversized",
            "ADD",
            Some(&path),
            format!("{{\"pad\": \"{}\"}}", "x".repeat(2 * 1024 * 1024)).into_bytes(),
            7,
        ),
    ];
    for (what, command, netns, stdin, code) in cases {
        let run = run_cni(command, netns, &args, &stdin);
        assert_eq!(run.error_code(), code, "{what}: {run:?}");
        assert!(!run.stderr.contains("panicked"), "{what}: {run:?}");
    }
    // No CNI_COMMAND at all.
    let run = run_cni("", Some(&path), &args, &good);
    assert_eq!(run.error_code(), 4, "{run:?}");
    // VERSION needs nothing.
    let run = run_cni("VERSION", None, "", b"{\"cniVersion\":\"1.0.0\"}");
    run.assert_success();
    let version: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(version["cniVersion"], "1.0.0");
    assert!(
        version["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&"1.0.0".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_installer_keeps_its_entry_follows_the_token_and_removes_itself() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fixture = KubeFixture::start(FixtureOptions::default()).await.unwrap();
    let mut node = blocking(|| start_node(&fixture));
    blocking(|| {
        let kubeconfig = node.kubeconfig();
        let mode = std::fs::metadata(&kubeconfig).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // The entry names the kubeconfig, and the plugin's lookups through it work (the
        // other tests); the cluster's plugin entry is still first.
        let list: serde_json::Value = serde_json::from_str(&node.conflist()).unwrap();
        assert_eq!(list["plugins"][0]["type"], "ptp");
        assert_eq!(
            list["plugins"][1]["kubeconfig"],
            kubeconfig.display().to_string()
        );
        assert_eq!(list["plugins"].as_array().unwrap().len(), 2);

        // The cluster's plugin rewrites its file: the entry comes back, once.
        std::fs::write(node.conflist_path(), CLUSTER_CONFLIST).unwrap();
        until("the entry is back", || node.has_entry());
        let list: serde_json::Value = serde_json::from_str(&node.conflist()).unwrap();
        assert_eq!(list["plugins"].as_array().unwrap().len(), 2);

        // The token rotates: the kubeconfig follows.
        std::fs::write(node.sa().join("token"), "rotated-token").unwrap();
        until("the kubeconfig holds the new token", || {
            std::fs::read_to_string(&kubeconfig).is_ok_and(|t| t.contains("rotated-token"))
        });

        // SIGTERM: entry, kubeconfig and binary go; the process exits 0.
        // SAFETY: kill(2) on our own child; no memory is touched.
        unsafe {
            libc::kill(node.installer.pid() as i32, libc::SIGTERM);
        }
        let status = node.installer.wait();
        assert!(
            status.success(),
            "{status:?}: {}",
            node.installer.stderr_text()
        );
        let list: serde_json::Value = serde_json::from_str(&node.conflist()).unwrap();
        assert_eq!(
            list,
            serde_json::from_str::<serde_json::Value>(CLUSTER_CONFLIST).unwrap()
        );
        assert!(!kubeconfig.exists());
        assert!(!node.conf().join("lanyard-cni.d").exists());
        assert!(!node.bin().join("lanyard-cni").exists());
    });
    drop(node);
    drop(fixture);
}
