//! A server and an agent on loopback, started as the real binaries, as the local stack and a
//! node off Kubernetes run them: a data-dir server with static entries, a join token from
//! `lanyard-server token generate`, an agent serving the Workload API on a socket in a temp dir.
//! In cluster mode on the kube fixture: server replicas (`--replica-name`) and one agent per
//! node, each with its pod, bound token and the bundle ConfigMap as its trust bundle file.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::binary;
use crate::process::{Process, run_ok};

pub const TRUST_DOMAIN: &str = "example.org";

/// A running `lanyard-server` in data-dir mode.
pub struct Server {
    pub process: Process,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
}

impl Server {
    /// Starts a server whose `--config` holds `config` (TOML: entries, TTLs) in `dir`, on a
    /// port of the kernel's choosing.
    pub fn start(dir: &Path, config: &str) -> Self {
        Self::start_on(dir, config, "127.0.0.1:0")
    }

    /// As [`Server::start`], listening on `listen` (e.g. the address of a server that was
    /// killed, so agents pointed at it find the new one: the listener sets `SO_REUSEADDR`).
    pub fn start_on(dir: &Path, config: &str, listen: &str) -> Self {
        Self::start_in_domain(dir, TRUST_DOMAIN, config, listen, &[])
    }

    /// As [`Server::start`], with `extra` flags for `run` (e.g. OIDC discovery, lifetimes).
    pub fn start_with(dir: &Path, config: &str, extra: &[&str]) -> Self {
        Self::start_in_domain(dir, TRUST_DOMAIN, config, "127.0.0.1:0", extra)
    }

    /// A server in cluster mode (`--kube`), its kube client from the kubeconfig at
    /// `kubeconfig`, reading its CA from `lanyard/lanyard-ca` and its bundle from
    /// `lanyard/lanyard-bundle`, accepting agents of the `lanyard:lanyard-agent` account.
    pub fn start_cluster(dir: &Path, kubeconfig: &Path) -> Self {
        Self::launch_cluster(dir, kubeconfig, &[])
    }

    /// One replica of a cluster-mode server with several: as [`Server::start_cluster`], named
    /// `replica` (`--replica-name`: it reports in ConfigMap `lanyard/lanyard-ca-report-<replica>`),
    /// with `extra` flags (e.g. short SVID lifetimes), its files under `dir/<replica>`.
    pub fn start_replica(dir: &Path, kubeconfig: &Path, replica: &str, extra: &[&str]) -> Self {
        let dir = dir.join(replica);
        std::fs::create_dir_all(&dir).expect("create the replica's directory");
        let mut args = vec!["--replica-name", replica];
        args.extend_from_slice(extra);
        Self::launch_cluster(&dir, kubeconfig, &args)
    }

    fn launch_cluster(dir: &Path, kubeconfig: &Path, extra: &[&str]) -> Self {
        let mut args = vec![
            "--kube",
            "--ca-secret",
            "lanyard/lanyard-ca",
            "--bundle-configmap",
            "lanyard/lanyard-bundle",
            "--agent-sa",
            "lanyard:lanyard-agent",
        ];
        args.extend_from_slice(extra);
        Self::launch(
            dir,
            "127.0.0.1:0",
            &args,
            &[("KUBECONFIG", kubeconfig.to_str().expect("utf-8 path"))],
        )
    }

    /// A data-dir server of `trust_domain` (the others serve [`TRUST_DOMAIN`]) whose
    /// `--config` holds `config`, listening on `listen`, with `extra` flags (e.g.
    /// `--bundle-endpoint`). Started again with the same `dir` and addresses, it is the same
    /// server restarted (its CA is in the data dir).
    pub fn start_in_domain(
        dir: &Path,
        trust_domain: &str,
        config: &str,
        listen: &str,
        extra: &[&str],
    ) -> Self {
        let config_path = dir.join("server.toml");
        std::fs::write(&config_path, config).expect("write server config");
        let config_arg = config_path.to_str().expect("utf-8 path").to_owned();
        let mut args = vec!["--config", &config_arg];
        args.extend_from_slice(extra);
        Self::launch_in(dir, trust_domain, listen, &args, &[])
    }

    fn launch(dir: &Path, listen: &str, extra: &[&str], envs: &[(&str, &str)]) -> Self {
        Self::launch_in(dir, TRUST_DOMAIN, listen, extra, envs)
    }

    fn launch_in(
        dir: &Path,
        trust_domain: &str,
        listen: &str,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Self {
        let data_dir = dir.join("server");
        let mut args = vec![
            "run",
            "--trust-domain",
            trust_domain,
            "--listen",
            listen,
            "--data-dir",
            data_dir.to_str().expect("utf-8 path"),
        ];
        args.extend_from_slice(extra);
        let process = Process::start(&binary("lanyard-server"), &args, envs);
        let addr = process.listener("grpc");
        Self {
            process,
            addr,
            data_dir,
        }
    }

    /// `lanyard-server token generate --node NODE`.
    pub fn join_token(&self, node: &str) -> String {
        run_ok(
            &binary("lanyard-server"),
            &[
                "token",
                "generate",
                "--data-dir",
                self.data_dir_str(),
                "--node",
                node,
            ],
        )
        .trim()
        .to_owned()
    }

    /// Writes the trust bundle (`lanyard-server bundle show`) to `path`.
    pub fn write_bundle(&self, path: &Path) {
        let pem = run_ok(
            &binary("lanyard-server"),
            &["bundle", "show", "--data-dir", self.data_dir_str()],
        );
        std::fs::write(path, pem).expect("write bundle");
    }

    fn data_dir_str(&self) -> &str {
        self.data_dir.to_str().expect("utf-8 path")
    }
}

/// How an agent attests to the server.
#[derive(Debug, Clone, Copy)]
pub enum Attestation<'a> {
    /// A join token, passed in `LANYARD_JOIN_TOKEN` (never on the command line, where other
    /// local users could read it; and a token is one argument whatever it starts with).
    JoinToken(&'a str),
    /// `--k8s-token-path`: a projected ServiceAccount token file.
    K8sTokenFile(&'a Path),
    /// Neither: only the node SVID an earlier run saved in the data dir can do.
    Saved,
}

/// A cluster-mode server and a `k8s_psat` agent on `fixture` (seeded by
/// [`crate::cluster::seed`]), as an installed cluster runs them: the server with its
/// ServiceAccount's API token (so RBAC applies), the agent on node-1 with a projected token
/// bound to its pod, trusting the seeded root. Files under `dir`. Blocks until both serve.
pub fn start_in_cluster(
    dir: &Path,
    fixture: &kube_fixture::KubeFixture,
    seeded: &crate::cluster::Seeded,
) -> (Server, Agent) {
    let kubeconfig = fixture
        .write_kubeconfig(
            "lanyard-server",
            &fixture.issue_api_token("lanyard", "lanyard-server"),
        )
        .expect("write the server's kubeconfig");
    let server = Server::start_cluster(dir, &kubeconfig);
    let token_path = dir.join("token");
    std::fs::write(&token_path, crate::cluster::agent_token(fixture, seeded))
        .expect("write the agent's token");
    std::fs::set_permissions(&token_path, std::fs::Permissions::from_mode(0o600))
        .expect("chmod the agent's token");
    let bundle_path = dir.join("root.pem");
    std::fs::write(&bundle_path, seeded.root.cert_pem()).expect("write the bundle");
    let agent = Agent::launch(
        dir,
        server.addr,
        &bundle_path,
        Attestation::K8sTokenFile(&token_path),
    );
    (server, agent)
}

/// A kubeconfig for the server's ServiceAccount (`lanyard:lanyard-server`), so the server runs
/// under the RBAC `lanyard install` renders (seeded by [`crate::cluster::server_rbac`]).
pub fn server_kubeconfig(fixture: &kube_fixture::KubeFixture) -> PathBuf {
    fixture
        .write_kubeconfig(
            "lanyard-server",
            &fixture.issue_api_token("lanyard", "lanyard-server"),
        )
        .expect("write the server's kubeconfig")
}

/// The agent of `node`, as the DaemonSet's pod there runs it: pod `lanyard/lanyard-agent-<node>`
/// (created when absent), a projected token bound to it, and as `--trust-bundle` the bundle
/// ConfigMap as kubelet projects it ([`project_bundle`], refreshed here), against the server at
/// `server`. Files under `dir`, the same on every call, so a restart finds them (a stopped
/// agent started again by calling this once more).
pub fn start_node_agent(
    dir: &Path,
    fixture: &kube_fixture::KubeFixture,
    node: &str,
    server: SocketAddr,
) -> Agent {
    use k8s_openapi::api::core::v1::Pod;
    std::fs::create_dir_all(dir).expect("create the agent's directory");
    let store = fixture.store();
    let pod_name = format!("lanyard-agent-{node}");
    let pod = match store.get::<Pod>("lanyard", &pod_name) {
        Ok(pod) => pod,
        Err(_) => store
            .create(&crate::cluster::pod(
                "lanyard",
                &pod_name,
                "lanyard-agent",
                node,
                None,
            ))
            .expect("create the agent's pod"),
    };
    let token = fixture.issue_service_account_token(
        "lanyard",
        "lanyard-agent",
        Some(kube_fixture::TokenBinding {
            pod_name,
            pod_uid: pod.metadata.uid.expect("the fixture assigns UIDs"),
            node_name: Some(node.into()),
        }),
        &["lanyard-server"],
        std::time::Duration::from_secs(3600),
    );
    let token_path = dir.join("token");
    std::fs::write(&token_path, token).expect("write the agent's token");
    std::fs::set_permissions(&token_path, std::fs::Permissions::from_mode(0o600))
        .expect("chmod the agent's token");
    let bundle_path = dir.join("bundle.pem");
    project_bundle(fixture, &bundle_path);
    Agent::launch(
        dir,
        server,
        &bundle_path,
        Attestation::K8sTokenFile(&token_path),
    )
}

/// Writes `bundle.pem` of ConfigMap `lanyard/lanyard-bundle` to `path`, as kubelet refreshes
/// a ConfigMap volume (replacing the file whole).
pub fn project_bundle(fixture: &kube_fixture::KubeFixture, path: &Path) {
    use k8s_openapi::api::core::v1::ConfigMap;
    let configmap: ConfigMap = fixture
        .store()
        .get("lanyard", "lanyard-bundle")
        .expect("the bundle ConfigMap exists");
    let pem = configmap
        .data
        .and_then(|mut data| data.remove("bundle.pem"))
        .expect("the bundle ConfigMap has bundle.pem");
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, pem).expect("write the projected bundle");
    std::fs::rename(&tmp, path).expect("replace the projected bundle");
}

/// A running `lanyard-agent`.
pub struct Agent {
    pub process: Process,
    pub socket: PathBuf,
    /// Its `/healthz`, `/readyz` and `/metrics` listener.
    pub health: SocketAddr,
    pub data_dir: PathBuf,
}

impl Agent {
    /// Starts an agent for `node` against `server`, attested by a fresh join token, its files
    /// under `dir`.
    pub fn start(dir: &Path, server: &Server, node: &str) -> Self {
        let bundle = dir.join("bundle.pem");
        server.write_bundle(&bundle);
        let token = server.join_token(node);
        Self::launch(dir, server.addr, &bundle, Attestation::JoinToken(&token))
    }

    /// Starts an agent against the server at `server`, trusting the roots in `bundle`, its
    /// socket and data dir under `dir` (the same paths each time, so a restart finds its
    /// saved node SVID). Returns once the Workload API socket accepts.
    pub fn launch(dir: &Path, server: SocketAddr, bundle: &Path, how: Attestation<'_>) -> Self {
        let socket = dir.join("sockets").join("agent.sock");
        let data_dir = dir.join("agent");
        let server = server.to_string();
        let mut args = vec![
            "run",
            "--server",
            &server,
            "--trust-bundle",
            bundle.to_str().expect("utf-8 path"),
            "--socket",
            socket.to_str().expect("utf-8 path"),
            "--data-dir",
            data_dir.to_str().expect("utf-8 path"),
            "--health",
            "127.0.0.1:0",
        ];
        let mut envs = Vec::new();
        match how {
            Attestation::JoinToken(token) => envs.push(("LANYARD_JOIN_TOKEN", token)),
            Attestation::K8sTokenFile(path) => {
                args.extend(["--k8s-token-path", path.to_str().expect("utf-8 path")])
            }
            Attestation::Saved => {}
        }
        let process = Process::start(&binary("lanyard-agent"), &args, &envs);
        let health = process.listener("health");
        process.wait_for_line("its Workload API socket", |line| {
            (line.starts_with("listening on unix:") && line.ends_with("(workload-api)"))
                .then_some(())
        });
        Self {
            process,
            socket,
            health,
            data_dir,
        }
    }

    /// The agent's Prometheus metrics text.
    pub fn metrics(&self) -> String {
        crate::client::http_get(self.health, "/metrics")
    }
}
