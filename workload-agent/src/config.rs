//! `lanyard-agent run` configuration: flags, `LANYARD_*` environment variables and the TOML
//! file given by `--config`, merged in that order of precedence (the same rule and approach as
//! `lanyard-server`'s), then validated into an [`AgentConfig`].

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use lanyard_daemon::address::{HostPort, deserialize_listen, parse_listen};
use lanyard_daemon::config_file;
use lanyard_daemon::config_merge::{OptionError, Origin, Provenance, invalid};
use lanyard_svid::TrustDomain;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::csi::CsiConfig;
use crate::node_svid::AttestMethod;

// Where the Workload API socket goes unless told otherwise: where clients look by default.
use lanyard_client::endpoint::DEFAULT_SOCKET;

/// Why a configuration is refused: the agent has no reasons beyond those all daemons share.
pub type ConfigError = OptionError;

/// The raw `run` options, all optional so the three sources can be merged; see
/// [`RunArgs::resolve`]. `Debug` never shows the join token.
#[derive(Args, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunArgs {
    /// TOML file with any of these options (keys use `_` for `-`).
    #[arg(long, env = "LANYARD_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// lanyard-server's gRPC address, `HOST:PORT`: a name (resolved at each connect), an IP
    /// address or `[IPv6]:PORT`, e.g. `lanyard-server.lanyard.svc:8081`.
    #[arg(long, env = "LANYARD_SERVER")]
    pub server: Option<String>,

    /// PEM file with the trust domain's root certificates, to trust the server on first
    /// contact (afterwards the server's bundle is used).
    #[arg(long, env = "LANYARD_TRUST_BUNDLE")]
    pub trust_bundle: Option<PathBuf>,

    /// Trust domain [default: the one named by the trust bundle's roots (their `spiffe://` URI
    /// SAN)]
    #[arg(long, env = "LANYARD_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,

    /// Single-use join token (`lanyard-server token generate`). Not needed when the data dir
    /// holds a valid node SVID. Prefer `--join-token-file` or `LANYARD_JOIN_TOKEN`: a flag's
    /// value is readable by every local user in /proc/PID/cmdline until the agent scrubs it at
    /// startup. Values starting with `-` are accepted (`--join-token -x...`, `--join-token=-x...`).
    #[arg(
        long,
        env = "LANYARD_JOIN_TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub join_token: Option<String>,

    /// File holding the join token (surrounding whitespace ignored); keep it 0600.
    #[arg(long, env = "LANYARD_JOIN_TOKEN_FILE")]
    pub join_token_file: Option<PathBuf>,

    /// Projected ServiceAccount token file (Kubernetes), re-read at every attestation.
    #[arg(long, env = "LANYARD_K8S_TOKEN_PATH")]
    pub k8s_token_path: Option<PathBuf>,

    /// Path of the Workload API Unix socket [default: /run/lanyard/sockets/agent.sock]
    #[arg(long, env = "LANYARD_SOCKET")]
    pub socket: Option<PathBuf>,

    /// Directory for the node SVID (so a join-token agent survives a restart).
    #[arg(long, env = "LANYARD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// IP address and port of the HTTP listener for /healthz, /readyz and /metrics
    /// (e.g. `0.0.0.0:9090`); none without it.
    #[arg(long, env = "LANYARD_HEALTH", value_parser = parse_listen)]
    #[serde(default, deserialize_with = "deserialize_listen")]
    pub health: Option<SocketAddr>,

    /// The node this agent runs on (on Kubernetes, from the downward API's `spec.nodeName`).
    /// When given, the agent refuses to serve if its node SVID names another node.
    #[arg(long, env = "LANYARD_NODE_NAME")]
    pub node_name: Option<String>,

    /// Serve the CSI node plugin `csi.lanyard.dev` on this Unix socket, for the kubelet (in a
    /// cluster: /var/lib/kubelet/plugins/csi.lanyard.dev/csi.sock); none without it. Needs
    /// --node-name (the CSI node ID). Published volumes are kept in `volumes/` beside it.
    #[arg(long, env = "LANYARD_CSI_SOCKET")]
    pub csi_socket: Option<PathBuf>,

    /// The kubelet's pods directory: the CSI plugin mounts only on target paths that resolve
    /// inside a pod's directory under it [default: /var/lib/kubelet/pods]
    #[arg(long, env = "LANYARD_CSI_PODS_DIR")]
    pub csi_pods_dir: Option<PathBuf>,
}

impl std::fmt::Debug for RunArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunArgs")
            .field("config", &self.config)
            .field("server", &self.server)
            .field("trust_bundle", &self.trust_bundle)
            .field("trust_domain", &self.trust_domain)
            .field(
                "join_token",
                &self.join_token.as_ref().map(|_| "<redacted>"),
            )
            .field("join_token_file", &self.join_token_file)
            .field("k8s_token_path", &self.k8s_token_path)
            .field("socket", &self.socket)
            .field("data_dir", &self.data_dir)
            .field("health", &self.health)
            .field("node_name", &self.node_name)
            .field("csi_socket", &self.csi_socket)
            .field("csi_pods_dir", &self.csi_pods_dir)
            .finish()
    }
}

/// A validated agent configuration.
#[derive(Debug)]
pub struct AgentConfig {
    /// `HOST:PORT`, checked by [`HostPort`]; the name is resolved at each connect.
    pub server: String,
    pub trust_bundle: PathBuf,
    /// `None`: taken from the trust bundle's roots.
    pub trust_domain: Option<TrustDomain>,
    /// `None`: only a node SVID saved in `data_dir` can be used.
    pub method: Option<AttestMethod>,
    pub socket: PathBuf,
    pub data_dir: Option<PathBuf>,
    pub health: Option<SocketAddr>,
    /// The node the node SVID must name, if known.
    pub node_name: Option<String>,
    /// The CSI node plugin, when `--csi-socket` is given.
    pub csi: Option<CsiConfig>,
}

impl RunArgs {
    /// Merges the `--config` file under the flags and environment, then validates.
    pub fn resolve(mut self) -> Result<AgentConfig, ConfigError> {
        let mut provenance = Provenance::default();
        if let Some(path) = self.config.clone() {
            let file: RunArgs = config_file::read(&path)?;
            lanyard_daemon::fill_unset!(provenance, Origin::File(path), self, file;
                server, trust_bundle, trust_domain, join_token, join_token_file, k8s_token_path, socket,
                data_dir, health, node_name, csi_socket, csi_pods_dir);
        }
        self.validate().map_err(|e| provenance.name_origin(e))
    }

    fn validate(self) -> Result<AgentConfig, ConfigError> {
        let server = self.server.ok_or(ConfigError::Missing("server"))?;
        // The server client takes (and strips) an `https://` prefix and a trailing `/`.
        let host_port = server
            .strip_prefix("https://")
            .unwrap_or(&server)
            .trim_end_matches('/');
        let server = host_port
            .parse::<HostPort>()
            .map_err(|e| invalid("server", e))?
            .to_string();
        let trust_bundle = self
            .trust_bundle
            .ok_or(ConfigError::Missing("trust-bundle"))?;
        let trust_domain = self
            .trust_domain
            .as_deref()
            .map(TrustDomain::new)
            .transpose()
            .map_err(|e| invalid("trust-domain", e))?;
        let join_token = match (self.join_token, self.join_token_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "join-token-file",
                    "give either --join-token or --join-token-file, not both",
                ));
            }
            (Some(token), None) => Some(token),
            (None, Some(path)) => {
                let text = Zeroizing::new(std::fs::read_to_string(&path).map_err(|e| {
                    invalid(
                        "join-token-file",
                        format!("reading {}: {e}", path.display()),
                    )
                })?);
                Some(text.trim().to_owned())
            }
            (None, None) => None,
        };
        let method = match (join_token, self.k8s_token_path) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "join-token",
                    "give either a join token or --k8s-token-path, not both",
                ));
            }
            (Some(token), None) => {
                let token = Zeroizing::new(token);
                if token.trim().is_empty() {
                    return Err(invalid("join-token", "is empty"));
                }
                Some(AttestMethod::JoinToken(token))
            }
            (None, Some(token_path)) => Some(AttestMethod::K8sPsat { token_path }),
            // Only a node SVID saved by an earlier run can do; without a data dir there is none.
            (None, None) if self.data_dir.is_some() => None,
            (None, None) => return Err(ConfigError::Missing("join-token")),
        };
        let csi = csi_config(
            self.csi_socket,
            self.csi_pods_dir,
            self.node_name.as_deref(),
        )?;
        Ok(AgentConfig {
            server,
            trust_bundle,
            trust_domain,
            method,
            socket: self.socket.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
            data_dir: self.data_dir,
            health: self.health,
            node_name: self.node_name,
            csi,
        })
    }
}

/// The CSI plugin's configuration, when `--csi-socket` is given.
fn csi_config(
    socket: Option<PathBuf>,
    pods_dir: Option<PathBuf>,
    node_name: Option<&str>,
) -> Result<Option<CsiConfig>, ConfigError> {
    let Some(socket) = socket else {
        if pods_dir.is_some() {
            return Err(invalid(
                "csi-pods-dir",
                "applies to the CSI plugin only: give --csi-socket too",
            ));
        }
        return Ok(None);
    };
    if !socket.is_absolute() {
        return Err(invalid("csi-socket", "give an absolute path"));
    }
    let node_id = node_name.filter(|n| !n.is_empty()).ok_or_else(|| {
        invalid(
            "csi-socket",
            "needs --node-name (the node's name is the CSI node ID)",
        )
    })?;
    let state_dir = crate::csi::state_dir_of(&socket)
        .ok_or_else(|| invalid("csi-socket", "the socket path has no parent directory"))?;
    if state_dir.as_os_str().len() > crate::csi::state::MAX_STATE_DIR_LEN {
        return Err(invalid(
            "csi-socket",
            format!(
                "is in a directory too long for the CSI plugin: pods' socket paths under it \
                 must fit in a Unix socket address; use a directory of at most {} bytes",
                crate::csi::state::MAX_STATE_DIR_LEN - "/volumes".len()
            ),
        ));
    }
    let pods_dir = pods_dir.unwrap_or_else(|| PathBuf::from(crate::csi::DEFAULT_PODS_DIR));
    if !pods_dir.is_absolute() {
        return Err(invalid("csi-pods-dir", "give an absolute path"));
    }
    Ok(Some(CsiConfig {
        socket,
        pods_dir,
        node_id: node_id.to_owned(),
        state_dir,
    }))
}

/// Overwrites every occurrence of `secret` in this process's command line (what other users
/// read in `/proc/PID/cmdline`) with `*`, in place: the kernel shows the argument area of our
/// own memory, so rewriting it through `/proc/self/mem` (no unsafe code) hides the secret from
/// then on. Returns how many occurrences were overwritten. There is a window between exec and
/// this call; that is why `--join-token-file` and `LANYARD_JOIN_TOKEN` are the recommended forms.
pub fn scrub_from_cmdline(secret: &str) -> std::io::Result<usize> {
    use std::io::{Read, Seek, SeekFrom, Write};
    if secret.is_empty() {
        return Ok(0);
    }
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the parenthesised command name start at field 3; arg_start/arg_end are 48/49.
    let after_comm = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let field = |n: usize| -> std::io::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| std::io::Error::other("unexpected /proc/self/stat layout"))
    };
    let (start, end) = (field(48)?, field(49)?);
    let mut mem = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/proc/self/mem")?;
    let mut args = vec![0u8; end.saturating_sub(start) as usize];
    mem.seek(SeekFrom::Start(start))?;
    mem.read_exact(&mut args)?;
    let needle = secret.as_bytes();
    let mut found = 0;
    let mut at = 0;
    while let Some(pos) = args[at..].windows(needle.len()).position(|w| w == needle) {
        let pos = at + pos;
        args[pos..pos + needle.len()].fill(b'*');
        found += 1;
        at = pos + needle.len();
    }
    if found > 0 {
        mem.seek(SeekFrom::Start(start))?;
        mem.write_all(&args)?;
    }
    args.fill(0);
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_starting_with_a_dash_is_a_value_in_both_forms() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            run: RunArgs,
        }
        for argv in [
            &["x", "--join-token", "-Fabc_def", "--server", "s:1"][..],
            &["x", "--join-token=-Fabc_def", "--server", "s:1"][..],
        ] {
            let cli = Cli::try_parse_from(argv).unwrap();
            assert_eq!(cli.run.join_token.as_deref(), Some("-Fabc_def"));
            assert_eq!(cli.run.server.as_deref(), Some("s:1"));
        }
    }

    #[test]
    fn the_token_can_come_from_a_file_but_not_from_two_places() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "lj1.abc\n").unwrap();
        let from_file = RunArgs {
            join_token: None,
            join_token_file: Some(path.clone()),
            ..args()
        };
        match from_file.resolve().unwrap().method {
            Some(AttestMethod::JoinToken(t)) => assert_eq!(t.as_str(), "lj1.abc"),
            other => panic!("{other:?}"),
        }
        let both = RunArgs {
            join_token_file: Some(path),
            ..args()
        };
        assert!(both.resolve().unwrap_err().to_string().contains("not both"));
    }

    fn args() -> RunArgs {
        RunArgs {
            server: Some("127.0.0.1:8081".into()),
            trust_bundle: Some("/etc/lanyard/bundle.pem".into()),
            join_token: Some("tok".into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_apply() {
        let c = args().resolve().unwrap();
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
        assert!(matches!(c.method, Some(AttestMethod::JoinToken(_))));
        assert_eq!(c.trust_domain, None);
    }

    #[test]
    fn missing_required_flag_is_named() {
        let err = RunArgs::default().resolve().unwrap_err();
        assert_eq!(
            err.to_string(),
            "--server is required (flag, LANYARD_SERVER or `server` in --config)"
        );
        let no_method = RunArgs {
            join_token: None,
            ..args()
        };
        assert!(matches!(
            no_method.resolve().unwrap_err(),
            ConfigError::Missing("join-token")
        ));
        // With a data dir, a saved node SVID may do instead.
        let restart = RunArgs {
            join_token: None,
            data_dir: Some("/var/lib/lanyard".into()),
            ..args()
        };
        assert!(restart.resolve().unwrap().method.is_none());
    }

    #[test]
    fn flags_win_over_file_and_file_fills_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            "server = \"file:1\"\nsocket = \"/tmp/file.sock\"\nhealth = \"127.0.0.1:9090\"\n",
        )
        .unwrap();
        let c = RunArgs {
            config: Some(path),
            ..args()
        }
        .resolve()
        .unwrap();
        assert_eq!(c.server, "127.0.0.1:8081");
        assert_eq!(c.socket, PathBuf::from("/tmp/file.sock"));
        assert_eq!(c.health, Some("127.0.0.1:9090".parse().unwrap()));
    }

    #[test]
    fn bad_values_are_refused() {
        let both = RunArgs {
            k8s_token_path: Some("/var/run/token".into()),
            ..args()
        };
        assert!(both.resolve().unwrap_err().to_string().contains("not both"));
        let bad_td = || RunArgs {
            trust_domain: Some("Not A Domain".into()),
            ..args()
        };
        assert!(
            bad_td()
                .resolve()
                .unwrap_err()
                .to_string()
                .contains("--trust-domain")
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "sever = \"x\"\n").unwrap();
        let typo = RunArgs {
            config: Some(path.clone()),
            ..args()
        };
        assert!(typo.resolve().unwrap_err().to_string().contains("sever"));
        // A bad value from the file names the file, one from a flag or variable says so.
        std::fs::write(&path, "trust_domain = \"Not A Domain\"\n").unwrap();
        let from_file = RunArgs {
            config: Some(path.clone()),
            ..args()
        };
        let err = from_file.resolve().unwrap_err().to_string();
        assert!(
            err.starts_with("--trust-domain: ")
                && err.ends_with(&format!("(from `trust_domain` in {})", path.display())),
            "{err}"
        );
        let err = bad_td().resolve().unwrap_err().to_string();
        assert!(
            err.ends_with("(from the flag or LANYARD_TRUST_DOMAIN)"),
            "{err}"
        );
    }

    #[test]
    fn the_server_is_host_port_and_health_an_ip_address() {
        for (given, kept) in [
            (
                "lanyard-server.lanyard.svc:8081",
                "lanyard-server.lanyard.svc:8081",
            ),
            ("https://server.example:8081/", "server.example:8081"),
            ("[fd00::1]:8081", "[fd00::1]:8081"),
        ] {
            let c = RunArgs {
                server: Some(given.into()),
                ..args()
            }
            .resolve()
            .unwrap();
            assert_eq!(c.server, kept);
        }
        for bad in ["server", "server:0", "::1:8081", ""] {
            let err = RunArgs {
                server: Some(bad.into()),
                ..args()
            }
            .resolve()
            .unwrap_err()
            .to_string();
            assert!(
                err.starts_with(&format!("--server: {bad:?} is not HOST:PORT")),
                "{err}"
            );
        }
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            run: RunArgs,
        }
        let err = Cli::try_parse_from(["x", "--health", "localhost:9090"])
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("give an IP address and port to listen on, e.g. 0.0.0.0:8081"),
            "{err}"
        );
    }

    #[test]
    fn help_states_the_default_socket() {
        use clap::CommandFactory;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            run: RunArgs,
        }
        let help = Cli::command().render_help().to_string();
        assert!(
            help.contains(&format!("[default: {DEFAULT_SOCKET}]")),
            "{help}"
        );
    }

    #[test]
    fn the_csi_plugin_needs_a_node_name_and_keeps_its_state_beside_its_socket() {
        assert_eq!(args().resolve().unwrap().csi, None);
        let csi = |socket: &str, node: Option<&str>| RunArgs {
            csi_socket: Some(socket.into()),
            node_name: node.map(Into::into),
            ..args()
        };
        let c = csi(
            "/var/lib/kubelet/plugins/csi.lanyard.dev/csi.sock",
            Some("node-1"),
        )
        .resolve()
        .unwrap()
        .csi
        .unwrap();
        assert_eq!(c.node_id, "node-1");
        assert_eq!(c.pods_dir, PathBuf::from("/var/lib/kubelet/pods"));
        assert_eq!(
            c.state_dir,
            PathBuf::from("/var/lib/kubelet/plugins/csi.lanyard.dev/volumes")
        );

        let err = csi("/p/csi.sock", None).resolve().unwrap_err().to_string();
        assert!(err.contains("needs --node-name"), "{err}");
        let err = csi("csi.sock", Some("n"))
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(err.contains("absolute"), "{err}");
        let long = format!("/{}/csi.sock", "d".repeat(80));
        let err = csi(&long, Some("n")).resolve().unwrap_err().to_string();
        assert!(err.contains("too long for the CSI plugin"), "{err}");
        let alone = RunArgs {
            csi_pods_dir: Some("/pods".into()),
            ..args()
        };
        let err = alone.resolve().unwrap_err().to_string();
        assert!(err.contains("give --csi-socket too"), "{err}");
    }

    #[test]
    fn the_csi_flags_have_their_variables_and_pods_dir_default_in_help() {
        use clap::CommandFactory;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            run: RunArgs,
        }
        let help = Cli::command().render_long_help().to_string();
        for want in [
            "--csi-socket",
            "LANYARD_CSI_SOCKET",
            "--csi-pods-dir",
            "LANYARD_CSI_PODS_DIR",
            "[default: /var/lib/kubelet/pods]",
        ] {
            assert!(help.contains(want), "{want} missing from:\n{help}");
        }
    }

    #[test]
    fn debug_never_shows_the_join_token() {
        let a = RunArgs {
            join_token: Some("s3cret".into()),
            ..args()
        };
        assert!(!format!("{a:?}").contains("s3cret"));
        assert!(!format!("{:?}", a.resolve().unwrap()).contains("s3cret"));
    }
}
