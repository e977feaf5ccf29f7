//! A server and an agent on loopback, started as the real binaries, as the local stack and a
//! node off Kubernetes run them: a data-dir server with static entries, a join token from
//! `lanyard-server token generate`, an agent serving the Workload API on a socket in a temp dir.

use std::net::SocketAddr;
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
    /// Starts a server whose `--config` holds `config` (TOML: entries, TTLs) in `dir`.
    pub fn start(dir: &Path, config: &str) -> Self {
        let data_dir = dir.join("server");
        let config_path = dir.join("server.toml");
        std::fs::write(&config_path, config).expect("write server config");
        let process = Process::start(
            &binary("lanyard-server"),
            &[
                "run",
                "--trust-domain",
                TRUST_DOMAIN,
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                data_dir.to_str().expect("utf-8 path"),
                "--config",
                config_path.to_str().expect("utf-8 path"),
            ],
            &[],
        );
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

/// A running `lanyard-agent`, attested by join token.
pub struct Agent {
    pub process: Process,
    pub socket: PathBuf,
}

impl Agent {
    /// Starts an agent for `node` against `server`, its files under `dir`.
    pub fn start(dir: &Path, server: &Server, node: &str) -> Self {
        let bundle = dir.join("bundle.pem");
        server.write_bundle(&bundle);
        let token = server.join_token(node);
        let socket = dir.join("sockets").join("agent.sock");
        let data_dir = dir.join("agent");
        let process = Process::start(
            &binary("lanyard-agent"),
            &[
                "run",
                "--server",
                &server.addr.to_string(),
                "--trust-bundle",
                bundle.to_str().expect("utf-8 path"),
                "--join-token",
                &token,
                "--socket",
                socket.to_str().expect("utf-8 path"),
                "--data-dir",
                data_dir.to_str().expect("utf-8 path"),
            ],
            &[],
        );
        process.wait_for_line("its Workload API socket", |line| {
            (line.starts_with("listening on unix:") && line.ends_with("(workload-api)"))
                .then_some(())
        });
        Self { process, socket }
    }
}
