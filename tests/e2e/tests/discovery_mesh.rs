//! Discovery end to end: injected pods find each other's identities with no `id=` anywhere.
//!
//! A "node" network namespace holds a bridge (10.251.8.254/24); four "pods", each its own
//! namespace plugged into it, are described to a `lanyard-server` process in cluster mode by
//! the Kubernetes API fixture:
//!
//! | pod         | IP          | service account | injected | runs                         |
//! |-------------|-------------|-----------------|----------|------------------------------|
//! | `client-1`  | 10.251.8.1  | `client`        | yes      | the test's "app" connections |
//! | `backend-1` | 10.251.8.2  | `backend`       | yes      | echo app on :8080            |
//! | `backend-2` | 10.251.8.3  | `backend`       | yes      | echo app on :8080            |
//! | `legacy-1`  | 10.251.8.4  | `legacy`        | no       | echo app on :8080            |
//!
//! Services: `backend` (ClusterIP 10.96.0.10:80 -> endpoints :8080) and `legacy`
//! (10.96.0.20:80 -> `legacy-1`:8080); the node's own address 10.251.8.254:8080 runs an echo
//! app no Kubernetes object names.
//!
//! Injected pods have the redirect rules, installed either by the init container's
//! `lanyard-redirect` or (the second test, pods annotated `lanyard.dev/redirect: cni` with the
//! proxy's uid) by the node's `lanyard-cni` plugin, invoked with `ADD` as a container runtime
//! does after the cluster's plugin, looking the pod up in the fixture with the
//! `lanyard-cni` ServiceAccount's RBAC; and a
//! `lanyard-proxy` process with only `--transparent-inbound`/`--transparent-outbound`, as
//! `lanyard inject` configures it, running in the pod's proxy container cgroup, so the agent
//! (a `lanyard-agent` process attested by a projected ServiceAccount token) gives it its pod's
//! identity. The client pod's app connections then show, in its proxy's tap:
//!
//! - to `backend-1`'s pod IP: mTLS, peer `.../sa/backend` (and `backend-1`'s tap: peer
//!   `.../sa/client`);
//! - to the `backend` Service: mTLS to the endpoint the proxy picked;
//! - to the `legacy` Service and to `legacy-1`'s IP: plaintext `not_meshed`;
//! - to the node's address: plaintext `no_discovery`;
//! - scaling `backend` to both pods: connections reach `backend-2` too; scaling it down to
//!   `backend-2` and deleting `backend-1`: the Service only reaches `backend-2`, and the pod
//!   IP of `backend-1` (known meshed) is refused `meshed_destination_gone`, never plaintext,
//!   and its app sees no more connections.
//!
//! Needs root, `ip`, `iptables` and the cgroup v1 `pids` hierarchy; without them it fails
//! saying so, unless `LANYARD_SKIP_NETNS_TESTS=1` / `LANYARD_SKIP_CGROUP_TESTS=1`.

use std::io::Write;
use std::net::{Shutdown, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube_fixture::{FixtureOptions, KubeFixture};
use lanyard_cli::install::{InstallOptions, RedirectMode, rbac};
use lanyard_e2e::DEADLINE;
use lanyard_e2e::cgroup::{CgroupDirs, fresh_container_id, pids_root_or_skip};
use lanyard_e2e::client::{RunAs, api_until};
use lanyard_e2e::cluster::{endpoint_slice, injected, pod, seed, service, with_ip};
use lanyard_e2e::echo::EchoApp;
use lanyard_e2e::netns::{
    self, Netns, cni_conflist, cni_stdin, pod_cni_args, prev_result, run_cni,
};
use lanyard_e2e::proxy::{Launch, Proxy, field, read_to_end_or_error};
use lanyard_e2e::stack::{TRUST_DOMAIN, start_in_cluster};
use lanyard_redirect::{REDIRECT_ANNOTATION, REDIRECT_CNI, RedirectConfig};

const CLIENT_IP: &str = "10.251.8.1";
const BACKEND_1_IP: &str = "10.251.8.2";
const BACKEND_2_IP: &str = "10.251.8.3";
const LEGACY_IP: &str = "10.251.8.4";
const NODE_CIDR: &str = "10.251.8.254/24";
const APP_PORT: u16 = 8080;
const BACKEND_SERVICE: &str = "10.96.0.10:80";
const LEGACY_SERVICE: &str = "10.96.0.20:80";
/// `lanyard-redirect`'s default proxy ports.
const INBOUND_PORT: &str = "4143";
const OUTBOUND_PORT: &str = "4140";

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn app_addr(ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), APP_PORT)
}

fn sa_id(sa: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/default/sa/{sa}")
}

/// The `backend` Service's EndpointSlice listing `ready_ips`.
fn backend_slice(ready_ips: &[&str]) -> EndpointSlice {
    let endpoints: Vec<(&str, bool)> = ready_ips.iter().map(|ip| (*ip, true)).collect();
    endpoint_slice("default", "backend-x1", "backend", "http", 8080, &endpoints)
}

/// One connection from the client pod's app to `addr`: sends a message, half-closes, reads
/// until the end. Returns whether the message came back, and the client proxy's tap line
/// for the connection.
fn exchange(client: &Netns, proxy: &mut Proxy<'_>, addr: SocketAddr) -> (bool, String) {
    let mut conn = client
        .connect(addr)
        .unwrap_or_else(|e| panic!("connecting to {addr} from the client pod: {e}"));
    conn.set_read_timeout(Some(DEADLINE)).unwrap();
    let sent = conn.write_all(b"ping").is_ok();
    let _ = conn.shutdown(Shutdown::Write);
    let (got, _) = read_to_end_or_error(&mut conn);
    (sent && got == b"ping", proxy.tap.next_line())
}

/// Repeats `attempt` until it returns `Some`, failing after [`DEADLINE`] with `what`.
fn until<T>(what: &str, mut attempt: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(done) = attempt() {
            return done;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        // Each attempt is a whole connection; this only paces the retries.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A pod's proxy as `lanyard inject` configures it (transparent listeners only, no `id=`),
/// running as `uid` in the pod's namespace and proxy container cgroup.
fn injected_proxy<'a>(socket: &Path, uid: u32, netns: &'a Netns, cgroup: &'a Path) -> Proxy<'a> {
    Proxy::start(
        socket,
        Launch {
            uid: Some(uid),
            netns: Some(netns),
            cgroup: Some(cgroup),
        },
        &[
            "--transparent-inbound",
            INBOUND_PORT,
            "--transparent-outbound",
            OUTBOUND_PORT,
        ],
    )
}

/// A pod namespace plugged into `node`'s bridge at `ip`.
fn pod_netns(node: &Netns, name: &str, ip: &str) -> Netns {
    let ns = Netns::create(&format!("{}-{name}", node.name()));
    node.plug(&ns, &format!("{ip}/24"));
    ns
}

/// What installs the injected pods' redirect rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RedirectBy {
    /// The `lanyard-init` container's `lanyard-redirect`.
    InitContainer,
    /// The node's `lanyard-cni` plugin (`ADD`).
    CniPlugin,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_pods_talk_mtls_found_through_discovery() {
    discovery_end_to_end(RedirectBy::InitContainer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_pods_talk_mtls_found_through_discovery_with_the_cni_plugin() {
    discovery_end_to_end(RedirectBy::CniPlugin).await;
}

/// `pod`'s annotations for `redirect`: with the CNI plugin, `lanyard.dev/redirect: cni` and
/// the rules' parameters (the proxy runs as `uid`), as `lanyard inject --redirect cni` writes.
fn redirect_annotations(mut pod: Pod, redirect: RedirectBy, uid: u32) -> Pod {
    if redirect == RedirectBy::CniPlugin {
        let config = RedirectConfig {
            proxy_uid: uid,
            inbound_port: INBOUND_PORT.parse().unwrap(),
            outbound_port: OUTBOUND_PORT.parse().unwrap(),
            ..Default::default()
        };
        let annotations = pod
            .metadata
            .annotations
            .get_or_insert_with(Default::default);
        annotations.insert(REDIRECT_ANNOTATION.into(), REDIRECT_CNI.into());
        annotations.extend(config.to_annotations().map(|(k, v)| (k.to_owned(), v)));
    }
    pod
}

/// The kubeconfig the CNI plugin reads on the node: a token of the `lanyard-cni`
/// ServiceAccount, bound by the RBAC `lanyard install --cni` renders.
fn cni_kubeconfig(fixture: &KubeFixture) -> std::path::PathBuf {
    let mut options = InstallOptions::defaults();
    options.redirect = RedirectMode::Cni;
    let mut docs = rbac::service_accounts(&options);
    docs.extend(rbac::cni_rbac(&options));
    fixture
        .apply_yaml(&lanyard_cli::yaml::write_stream(&docs))
        .expect("apply the CNI plugin's RBAC");
    let token = fixture.issue_api_token("lanyard", "lanyard-cni");
    fixture.write_kubeconfig("lanyard-cni", &token).unwrap()
}

async fn discovery_end_to_end(redirect: RedirectBy) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if !netns::available_or_skip() {
        return;
    }
    let Some(pids) = pids_root_or_skip() else {
        return;
    };
    // Declared first, dropped last: cgroups and namespaces go after every process in them.
    let mut cgroups = CgroupDirs::default();
    let tag = match redirect {
        RedirectBy::InitContainer => "lyd",
        RedirectBy::CniPlugin => "lyn",
    };
    let node = Netns::create(&format!("{tag}{}", std::process::id()));
    node.bridge(NODE_CIDR);
    let client_ns = pod_netns(&node, "client", CLIENT_IP);
    let backend_1_ns = pod_netns(&node, "b1", BACKEND_1_IP);
    let backend_2_ns = pod_netns(&node, "b2", BACKEND_2_IP);
    let legacy_ns = pod_netns(&node, "legacy", LEGACY_IP);
    // Injected pods: their proxies run as uid 2300 + i, which their rules exempt.
    let meshed = [
        (&client_ns, 2301u32),
        (&backend_1_ns, 2302),
        (&backend_2_ns, 2303),
    ];
    if redirect == RedirectBy::InitContainer {
        for (ns, uid) in meshed {
            ns.install_redirect(&[
                ("PROXY_UID", &uid.to_string()),
                ("PROXY_INBOUND_PORT", INBOUND_PORT),
                ("PROXY_OUTBOUND_PORT", OUTBOUND_PORT),
            ]);
        }
    }

    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tmp.path();

    // The cluster as the API server holds it.
    let fixture = KubeFixture::start(FixtureOptions::default()).await.unwrap();
    let seeded = blocking(|| seed(&fixture));
    let store = fixture.store();
    let uid_of = |p: &Pod| p.metadata.uid.clone().expect("the fixture assigns UIDs");
    // Each injected pod's proxy container, and the cgroup its proxy process runs in.
    let mut proxy_cgroup = |name: &str, sa: &str, ip: &str, uid: u32| {
        let cid = fresh_container_id();
        let created = store
            .create(&redirect_annotations(
                injected(with_ip(pod("default", name, sa, "node-1", None), ip), &cid),
                redirect,
                uid,
            ))
            .unwrap();
        cgroups.container(&pids, &uid_of(&created), &cid)
    };
    let client_cg = proxy_cgroup("client-1", "client", CLIENT_IP, 2301);
    let backend_1_cg = proxy_cgroup("backend-1", "backend", BACKEND_1_IP, 2302);
    let backend_2_cg = proxy_cgroup("backend-2", "backend", BACKEND_2_IP, 2303);
    store
        .create(&with_ip(
            pod("default", "legacy-1", "legacy", "node-1", None),
            LEGACY_IP,
        ))
        .unwrap();
    store
        .create(&service("default", "backend", "10.96.0.10", 80, "http"))
        .unwrap();
    store.create(&backend_slice(&[BACKEND_1_IP])).unwrap();
    store
        .create(&service("default", "legacy", "10.96.0.20", 80, "http"))
        .unwrap();
    store
        .create(&endpoint_slice(
            "default",
            "legacy-x1",
            "legacy",
            "http",
            8080,
            &[(LEGACY_IP, true)],
        ))
        .unwrap();

    // The CNI plugin's ADD for each pod, after the cluster's plugin (whose result it passes
    // on); the unmeshed pod too, which it leaves alone.
    if redirect == RedirectBy::CniPlugin {
        let conflist = cni_conflist(&cni_kubeconfig(&fixture));
        let pods = [
            (&client_ns, "client-1", CLIENT_IP),
            (&backend_1_ns, "backend-1", BACKEND_1_IP),
            (&backend_2_ns, "backend-2", BACKEND_2_IP),
            (&legacy_ns, "legacy-1", LEGACY_IP),
        ];
        let legacy_before = legacy_ns.nat_rules();
        blocking(|| {
            for (ns, name, ip) in pods {
                let prev = prev_result(ns, ip);
                let add = run_cni(
                    "ADD",
                    Some(&ns.path()),
                    &pod_cni_args("default", name),
                    &cni_stdin(&conflist, Some(&prev)),
                );
                add.assert_success();
                assert_eq!(add.stdout, prev, "{name}");
            }
        });
        assert_eq!(
            legacy_ns.nat_rules(),
            legacy_before,
            "the unmeshed pod is left alone"
        );
        assert!(client_ns.nat_rules().contains("--uid-owner 2301"));
    }

    // The server and the agent, as an installed cluster runs them.
    let (server, agent) = blocking(|| start_in_cluster(dir, &fixture, &seeded));

    // The apps, and the proxies.
    let backend_1_app = EchoApp::serve(backend_1_ns.bind("0.0.0.0:8080".parse().unwrap()), None);
    let backend_2_app = EchoApp::serve(backend_2_ns.bind("0.0.0.0:8080".parse().unwrap()), None);
    let legacy_app = EchoApp::serve(legacy_ns.bind("0.0.0.0:8080".parse().unwrap()), None);
    let node_app = EchoApp::serve(node.bind("0.0.0.0:8080".parse().unwrap()), None);
    let socket = &agent.socket;
    let mut client = blocking(|| injected_proxy(socket, 2301, &client_ns, &client_cg));
    let mut backend_1 = blocking(|| injected_proxy(socket, 2302, &backend_1_ns, &backend_1_cg));
    let mut backend_2 = blocking(|| injected_proxy(socket, 2303, &backend_2_ns, &backend_2_cg));
    blocking(|| {
        for proxy in [&client, &backend_1, &backend_2] {
            proxy.wait_ready();
        }
    });
    // Discovery is in once the agent answers for the client pod as its proxy would ask.
    let answer = blocking(|| {
        api_until(
            &agent.socket,
            &["resolve", &app_addr(BACKEND_1_IP).to_string()],
            RunAs::InCgroup(&client_cg),
            |o| o.success,
        )
    });
    assert_eq!(
        answer.stdout.trim(),
        format!("meshed_pod default/backend-1 {}", sa_id("backend")),
        "{answer:?}"
    );

    blocking(|| {
        // Pod IP of a meshed pod: mTLS both ways, each side sees the other's pod identity.
        let (echoed, line) = exchange(&client_ns, &mut client, app_addr(BACKEND_1_IP));
        assert!(echoed, "{line}");
        assert!(line.starts_with("proxy=out "), "{line}");
        assert_eq!(
            field(&line, "dst"),
            app_addr(BACKEND_1_IP).to_string(),
            "{line}"
        );
        assert_eq!(field(&line, "tls"), "true", "{line}");
        assert_eq!(field(&line, "peer"), sa_id("backend"), "{line}");
        let line = backend_1.tap.next_line();
        assert!(line.starts_with("proxy=in "), "{line}");
        assert!(
            field(&line, "src").starts_with(&format!("{CLIENT_IP}:")),
            "{line}"
        );
        assert_eq!(field(&line, "tls"), "true", "{line}");
        assert_eq!(field(&line, "peer"), sa_id("client"), "{line}");

        // The Service: the proxy dials its one ready endpoint itself, with mTLS.
        let (echoed, line) = exchange(&client_ns, &mut client, BACKEND_SERVICE.parse().unwrap());
        assert!(echoed, "{line}");
        assert_eq!(
            field(&line, "dst"),
            app_addr(BACKEND_1_IP).to_string(),
            "{line}"
        );
        assert_eq!(field(&line, "tls"), "true", "{line}");
        assert_eq!(field(&line, "peer"), sa_id("backend"), "{line}");
        let line = backend_1.tap.next_line();
        assert_eq!(field(&line, "peer"), sa_id("client"), "{line}");
        assert_eq!(backend_1_app.accepted(), 2);

        // An unmeshed endpoint and an unmeshed pod: plaintext, saying why.
        for dst in [LEGACY_SERVICE.parse().unwrap(), app_addr(LEGACY_IP)] {
            let (echoed, line) = exchange(&client_ns, &mut client, dst);
            assert!(echoed, "{line}");
            assert_eq!(
                field(&line, "dst"),
                app_addr(LEGACY_IP).to_string(),
                "{line}"
            );
            assert_eq!(field(&line, "tls"), "false", "{line}");
            assert_eq!(field(&line, "reason"), "not_meshed", "{line}");
        }
        assert_eq!(legacy_app.accepted(), 2);

        // An address no Kubernetes object names: plaintext, no_discovery.
        let node_addr = app_addr(NODE_CIDR.split('/').next().unwrap());
        let (echoed, line) = exchange(&client_ns, &mut client, node_addr);
        assert!(echoed, "{line}");
        assert_eq!(field(&line, "tls"), "false", "{line}");
        assert_eq!(field(&line, "reason"), "no_discovery", "{line}");
        assert_eq!(node_app.accepted(), 1);
    });

    // Scale up: backend-2 becomes a ready endpoint; the proxy's round robin reaches it.
    store
        .apply(&backend_slice(&[BACKEND_1_IP, BACKEND_2_IP]))
        .unwrap();
    blocking(|| {
        until("a Service connection reaches backend-2", || {
            let (echoed, line) =
                exchange(&client_ns, &mut client, BACKEND_SERVICE.parse().unwrap());
            assert!(echoed, "{line}");
            assert_eq!(field(&line, "tls"), "true", "{line}");
            assert_eq!(field(&line, "peer"), sa_id("backend"), "{line}");
            (field(&line, "dst") == app_addr(BACKEND_2_IP).to_string()).then_some(())
        });
        let line = backend_2.tap.next_line();
        assert!(line.starts_with("proxy=in "), "{line}");
        assert_eq!(field(&line, "peer"), sa_id("client"), "{line}");
        assert_eq!(backend_2_app.accepted(), 1);
    });

    // Scale down: backend-1 leaves the Service and its pod is deleted (what the endpoint
    // controller and a ReplicaSet do); its proxy and app keep running, so only discovery
    // can stop traffic to it.
    store.apply(&backend_slice(&[BACKEND_2_IP])).unwrap();
    store.delete::<Pod>("default", "backend-1").unwrap();
    blocking(|| {
        // With two endpoints the round robin alternates; two backend-2 picks in a row mean
        // the smaller set is in.
        let mut in_a_row = 0;
        until("Service connections stop alternating to backend-1", || {
            let (echoed, line) =
                exchange(&client_ns, &mut client, BACKEND_SERVICE.parse().unwrap());
            assert!(echoed, "{line}");
            if field(&line, "dst") == app_addr(BACKEND_2_IP).to_string() {
                in_a_row += 1;
            } else {
                in_a_row = 0;
            }
            (in_a_row == 2).then_some(())
        });
        let backend_1_seen = backend_1_app.accepted();
        for _ in 0..4 {
            let (echoed, line) =
                exchange(&client_ns, &mut client, BACKEND_SERVICE.parse().unwrap());
            assert!(echoed, "{line}");
            assert_eq!(
                field(&line, "dst"),
                app_addr(BACKEND_2_IP).to_string(),
                "{line}"
            );
            assert_eq!(field(&line, "tls"), "true", "{line}");
        }
        assert_eq!(
            backend_1_app.accepted(),
            backend_1_seen,
            "backend-1 left the Service"
        );
        // The deleted pod's IP was known meshed: refused, never sent in plaintext.
        let line = until("the deleted pod's address is refused", || {
            let (echoed, line) = exchange(&client_ns, &mut client, app_addr(BACKEND_1_IP));
            if field(&line, "tls") == "true" {
                assert!(echoed, "{line}");
                return None;
            }
            assert!(!echoed, "a refused connection was answered: {line}");
            Some(line)
        });
        assert_eq!(field(&line, "reason"), "meshed_destination_gone", "{line}");
        let seen_after = backend_1_app.accepted();
        let (echoed, line) = exchange(&client_ns, &mut client, app_addr(BACKEND_1_IP));
        assert!(!echoed, "{line}");
        assert_eq!(field(&line, "reason"), "meshed_destination_gone", "{line}");
        assert_eq!(
            backend_1_app.accepted(),
            seen_after,
            "the deleted pod's app was reached"
        );
    });

    drop(client);
    drop(backend_1);
    drop(backend_2);
    drop(agent);
    drop(server);
    drop(fixture);
}
