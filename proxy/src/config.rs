//! `lanyard-proxy run` configuration: flags, `LANYARD_*` environment variables and the TOML
//! file given by `--config`, merged in that order of precedence (the same approach as
//! lanyard-server's config), then validated into a [`ProxyConfig`].
//!
//! Repeatable options are comma separated in the environment and arrays in the file. An
//! `--outbound` value itself contains a comma (`L=D,id=ID`), so list items starting with
//! `id=` belong to the item before them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use lanyard_daemon::address::{HostPort, deserialize_listen, parse_listen};
use lanyard_daemon::config_file;
use lanyard_daemon::config_merge::{OptionError, Origin, Provenance, invalid};
use lanyard_svid::SpiffeId;
use lanyard_svid::tls::AllowPolicy;
use serde::Deserialize;

use crate::probes::MetricsAccess;

pub const DEFAULT_ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 4191);
pub const DEFAULT_DETECT_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// A proxied connection silent both ways this long is closed: Envoy's TCP proxy default, long
/// enough for pooled database and RPC connections between their own keepalives.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// The standard variable SPIFFE clients read the Workload API address from.
pub use lanyard_proto::SPIFFE_ENDPOINT_SOCKET;
/// Listeners per kind: far above any sidecar's needs.
const MAX_LISTENERS: usize = 256;

/// Why a configuration is refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Option(#[from] OptionError),
    #[error(
        "nothing to proxy: give at least one of --inbound, --outbound, --transparent-inbound, --transparent-outbound"
    )]
    NoListeners,
}

/// The raw `run` options; every field optional so the three sources can be merged.
#[derive(Args, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunArgs {
    /// TOML file with any of these options (keys use `_` for `-`; repeatables as arrays).
    #[arg(long, env = "LANYARD_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// The Workload API socket: a path or `unix:///path` (else SPIFFE_ENDPOINT_SOCKET).
    #[arg(long, env = "LANYARD_WORKLOAD_SOCKET")]
    pub workload_socket: Option<String>,

    /// `LISTEN=TARGET`: accept on LISTEN (`IP:PORT`), deliver to the app at TARGET
    /// (`HOST:PORT`); repeatable.
    #[arg(long, env = "LANYARD_INBOUND", value_delimiter = ',')]
    #[serde(default)]
    pub inbound: Vec<String>,

    /// `LISTEN=DEST[,id=SPIFFE_ID]`: accept the app's connections on LISTEN (`IP:PORT`) and
    /// send them to DEST (`HOST:PORT`), over mTLS expecting SPIFFE_ID when given; repeatable.
    #[arg(long, env = "LANYARD_OUTBOUND")]
    #[serde(default)]
    pub outbound: Vec<String>,

    /// Which client IDs inbound mTLS accepts, comma separated: `any` (every workload of this
    /// proxy's own trust domain), an ID, `PREFIX*`. A peer of another (federated) trust
    /// domain needs an ID or PREFIX* rule of its domain. Without `any`, inbound listeners are
    /// strict [default: any]
    #[arg(long, env = "LANYARD_ALLOW")]
    #[serde(default, deserialize_with = "deserialize_allow")]
    pub allow: Option<String>,

    /// Close inbound connections that do not start mTLS instead of forwarding them.
    #[arg(long, env = "LANYARD_STRICT")]
    #[serde(default)]
    pub strict: bool,

    /// Inbound target ports forwarded without protocol detection; repeatable.
    #[arg(long, env = "LANYARD_OPAQUE_PORT", value_delimiter = ',')]
    #[serde(default)]
    pub opaque_port: Vec<u16>,

    /// Port (all addresses: 0.0.0.0 and, where the pod has IPv6, [::]) receiving the pod's
    /// inbound traffic redirected by iptables and ip6tables.
    #[arg(long, env = "LANYARD_TRANSPARENT_INBOUND")]
    pub transparent_inbound: Option<u16>,

    /// Port (loopback: 127.0.0.1 and, where the pod has IPv6, [::1]) receiving the app's
    /// outbound traffic redirected by iptables and ip6tables.
    #[arg(long, env = "LANYARD_TRANSPARENT_OUTBOUND")]
    pub transparent_outbound: Option<u16>,

    /// Do not ask the agent's Discovery service about transparent outbound destinations
    /// (they all go plaintext `no_discovery`).
    #[arg(long, env = "LANYARD_NO_DISCOVERY")]
    #[serde(default)]
    pub no_discovery: bool,

    /// IP address and port of the tap listener; loopback only unless --admin-allow-remote
    /// [default: 127.0.0.1:4191]
    #[arg(long, env = "LANYARD_ADMIN", value_parser = parse_listen)]
    #[serde(default, deserialize_with = "deserialize_listen")]
    pub admin: Option<SocketAddr>,

    /// Allow a non-loopback --admin address: the tap is unauthenticated, and shows every
    /// connection's peers and identities to whoever can reach it.
    #[arg(long, env = "LANYARD_ADMIN_ALLOW_REMOTE")]
    #[serde(default)]
    pub admin_allow_remote: bool,

    /// IP address and port of the HTTP listener for /metrics, /healthz and /readyz
    /// (e.g. `127.0.0.1:4192`); none without it. /metrics answer loopback callers only
    /// unless --metrics-allow-remote.
    #[arg(long, env = "LANYARD_METRICS", value_parser = parse_listen)]
    #[serde(default, deserialize_with = "deserialize_listen")]
    pub metrics: Option<SocketAddr>,

    /// Serve /metrics to callers beyond the loopback address too (plaintext: every peer's
    /// connection counts); /healthz and /readyz are served to all callers either way.
    #[arg(long, env = "LANYARD_METRICS_ALLOW_REMOTE")]
    #[serde(default)]
    pub metrics_allow_remote: bool,

    /// How long inbound detection waits for the client's first bytes (e.g. `1s`, `300ms`)
    /// [default: 1s]
    #[arg(long, env = "LANYARD_DETECT_TIMEOUT")]
    pub detect_timeout: Option<String>,

    /// Limit on each TLS handshake and on each connect to a target [default: 10s]
    #[arg(long, env = "LANYARD_HANDSHAKE_TIMEOUT")]
    pub handshake_timeout: Option<String>,

    /// Connections handled at once, all listeners together; more are closed at accept. One
    /// inbound source address (an IPv6 /64) may hold a quarter of them [default: 10000]
    #[arg(long, env = "LANYARD_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Close a proxied connection after this long without a byte either way (e.g. `1h`,
    /// `90s`); it closes between one and two of these after its last byte [default: 1h]
    #[arg(long, env = "LANYARD_IDLE_TIMEOUT")]
    pub idle_timeout: Option<String>,
}

/// An explicit inbound listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundListener {
    pub listen: SocketAddr,
    /// `HOST:PORT` of the application.
    pub target: String,
}

/// An explicit outbound listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundListener {
    pub listen: SocketAddr,
    /// `HOST:PORT` to dial.
    pub destination: String,
    /// The server's SPIFFE ID: mTLS is used exactly when it is known.
    pub expected_id: Option<SpiffeId>,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub workload_socket: PathBuf,
    pub inbound: Vec<InboundListener>,
    pub outbound: Vec<OutboundListener>,
    pub allow: AllowPolicy,
    /// `--strict`, or implied by a restrictive `--allow`.
    pub strict: bool,
    pub opaque_ports: Vec<u16>,
    /// The IPv4 address of the transparent inbound listener (`0.0.0.0:P`); `start` adds
    /// `[::]` on the same port where the namespace has IPv6.
    pub transparent_inbound: Option<SocketAddr>,
    /// The IPv4 address of the transparent outbound listener (`127.0.0.1:P`); `start` adds
    /// `[::1]` on the same port where the namespace has IPv6.
    pub transparent_outbound: Option<SocketAddr>,
    /// Look transparent outbound destinations up in the agent's Discovery service.
    pub discovery: bool,
    pub admin: SocketAddr,
    pub metrics: Option<SocketAddr>,
    /// Who may read `/metrics` on the metrics listener.
    pub metrics_access: MetricsAccess,
    pub detect_timeout: Duration,
    pub handshake_timeout: Duration,
    pub max_connections: usize,
    pub idle_timeout: Duration,
}

impl RunArgs {
    /// Merges the `--config` file under the flags and environment, then validates;
    /// `spiffe_endpoint_socket` is the value of `SPIFFE_ENDPOINT_SOCKET`, the last fallback.
    pub fn resolve(
        mut self,
        spiffe_endpoint_socket: Option<String>,
    ) -> Result<ProxyConfig, ConfigError> {
        let mut provenance = Provenance::default();
        if let Some(path) = self.config.clone() {
            let file: RunArgs = config_file::read(&path).map_err(OptionError::from)?;
            lanyard_daemon::fill_unset!(provenance, Origin::File(path), self, file;
                workload_socket, inbound, outbound, allow, strict, opaque_port,
                transparent_inbound, transparent_outbound, no_discovery, admin,
                admin_allow_remote, metrics, metrics_allow_remote, detect_timeout, handshake_timeout,
                max_connections, idle_timeout);
        }
        // The variable all SPIFFE clients read comes below our own sources.
        let spiffe = Origin::Env(SPIFFE_ENDPOINT_SOCKET);
        let socket = &mut self.workload_socket;
        provenance.fill(&spiffe, "workload_socket", socket, spiffe_endpoint_socket);
        self.validate().map_err(|e| match e {
            ConfigError::Option(e) => provenance.name_origin(e).into(),
            other => other,
        })
    }

    fn validate(self) -> Result<ProxyConfig, ConfigError> {
        let workload_socket = parse_socket(
            self.workload_socket
                .as_deref()
                .ok_or(OptionError::Missing("workload-socket"))?,
        )
        .map_err(|e| invalid("workload-socket", e))?;

        let inbound = split_items(&self.inbound, false)
            .iter()
            .map(|item| parse_inbound(item).map_err(|e| invalid("inbound", e)))
            .collect::<Result<Vec<_>, _>>()?;
        let outbound = split_items(&self.outbound, true)
            .iter()
            .map(|item| parse_outbound(item).map_err(|e| invalid("outbound", e)))
            .collect::<Result<Vec<_>, _>>()?;
        if inbound.len() > MAX_LISTENERS || outbound.len() > MAX_LISTENERS {
            return Err(invalid(
                "inbound",
                format!("at most {MAX_LISTENERS} listeners of each kind"),
            )
            .into());
        }
        if inbound.is_empty()
            && outbound.is_empty()
            && self.transparent_inbound.is_none()
            && self.transparent_outbound.is_none()
        {
            return Err(ConfigError::NoListeners);
        }

        let allow: AllowPolicy = match self.allow.as_deref() {
            None => AllowPolicy::any(),
            Some(text) => text.parse().map_err(|e| invalid("allow", e))?,
        };
        let strict = self.strict || allow.is_restrictive();
        if strict && !self.opaque_port.is_empty() {
            return Err(invalid(
                "opaque-port",
                "opaque ports are forwarded as plaintext without detection, which a strict \
                 listener (--strict or a restrictive --allow) must refuse",
            )
            .into());
        }
        if self.opaque_port.contains(&0) {
            return Err(invalid("opaque-port", "port 0 is not a port").into());
        }

        let detect_timeout = parse_timeout(
            self.detect_timeout.as_deref(),
            "detect-timeout",
            DEFAULT_DETECT_TIMEOUT,
            Duration::from_millis(10)..=Duration::from_secs(60),
        )?;
        let handshake_timeout = parse_timeout(
            self.handshake_timeout.as_deref(),
            "handshake-timeout",
            DEFAULT_HANDSHAKE_TIMEOUT,
            Duration::from_millis(100)..=Duration::from_secs(300),
        )?;
        let idle_timeout = parse_timeout(
            self.idle_timeout.as_deref(),
            "idle-timeout",
            DEFAULT_IDLE_TIMEOUT,
            Duration::from_millis(100)..=Duration::from_secs(7 * 24 * 3600),
        )?;
        let admin = self.admin.unwrap_or(DEFAULT_ADMIN);
        if !admin.ip().to_canonical().is_loopback() && !self.admin_allow_remote {
            return Err(invalid(
                "admin",
                format!(
                    "{admin} is not a loopback address, and the tap it serves is unauthenticated \
                     (every connection's addresses and peer IDs); pass --admin-allow-remote \
                     (LANYARD_ADMIN_ALLOW_REMOTE, `admin_allow_remote` in --config) to serve it there"
                ),
            )
            .into());
        }
        let max_connections = match self.max_connections {
            None => DEFAULT_MAX_CONNECTIONS,
            Some(n) if (1..=1_000_000).contains(&n) => n,
            Some(_) => return Err(invalid("max-connections", "must be 1 to 1000000").into()),
        };

        Ok(ProxyConfig {
            workload_socket,
            inbound,
            outbound,
            allow,
            strict,
            opaque_ports: self.opaque_port,
            // Redirected inbound traffic arrives on the pod's own addresses.
            transparent_inbound: self
                .transparent_inbound
                .map(|p| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), p)),
            transparent_outbound: self
                .transparent_outbound
                .map(|p| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), p)),
            discovery: !self.no_discovery,
            admin,
            metrics: self.metrics,
            metrics_access: if self.metrics_allow_remote {
                MetricsAccess::Everyone
            } else {
                MetricsAccess::Loopback
            },
            detect_timeout,
            handshake_timeout,
            max_connections,
            idle_timeout,
        })
    }
}

/// `allow` in the file: one string of comma-separated rules, or an array of rules.
fn deserialize_allow<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct Rules;
    impl<'de> serde::de::Visitor<'de> for Rules {
        type Value = String;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a string of comma-separated rules or an array of rules")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<String, A::Error> {
            let mut rules = Vec::new();
            while let Some(rule) = seq.next_element::<String>()? {
                rules.push(rule);
            }
            Ok(rules.join(","))
        }
    }
    d.deserialize_any(Rules).map(Some)
}

/// Splits comma-separated list items; with `join_id`, an `id=` item joins the one before.
fn split_items(values: &[String], join_id: bool) -> Vec<String> {
    let mut items: Vec<String> = Vec::new();
    for part in values.iter().flat_map(|v| v.split(',')) {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        match items.last_mut() {
            Some(last) if join_id && part.starts_with("id=") => {
                last.push(',');
                last.push_str(part);
            }
            _ => items.push(part.to_owned()),
        }
    }
    items
}

/// A Workload API address, by the one parser of them ([`lanyard_client::endpoint::parse`]).
pub fn parse_socket(text: &str) -> Result<PathBuf, String> {
    lanyard_client::endpoint::parse(text).map_err(|e| e.to_string())
}

/// `HOST:PORT` to dial, by the shared parser; kept in its written form (`[v6]:port`).
fn check_host_port(text: &str) -> Result<String, String> {
    text.parse::<HostPort>()
        .map(|hp| hp.to_string())
        .map_err(|e| e.to_string())
}

fn parse_listen_pair(item: &str) -> Result<(SocketAddr, &str), String> {
    let (listen, rest) = item
        .split_once('=')
        .ok_or_else(|| format!("{item:?} is not LISTEN=TARGET"))?;
    let listen = parse_listen(listen).map_err(|e| e.to_string())?;
    Ok((listen, rest))
}

fn parse_inbound(item: &str) -> Result<InboundListener, String> {
    let (listen, target) = parse_listen_pair(item)?;
    Ok(InboundListener {
        listen,
        target: check_host_port(target)?,
    })
}

fn parse_outbound(item: &str) -> Result<OutboundListener, String> {
    let (listen, rest) = parse_listen_pair(item)?;
    let (destination, expected_id) = match rest.split_once(',') {
        None => (rest, None),
        Some((dest, option)) => {
            let id = option
                .strip_prefix("id=")
                .ok_or_else(|| format!("{option:?}: the only option is id=SPIFFE_ID"))?;
            let id = SpiffeId::parse(id).map_err(|e| format!("id={id}: {e}"))?;
            if id.is_trust_domain_id() {
                return Err(format!("id={id}: a workload ID needs a path"));
            }
            (dest, Some(id))
        }
    };
    Ok(OutboundListener {
        listen,
        destination: check_host_port(destination)?,
        expected_id,
    })
}

fn parse_timeout(
    text: Option<&str>,
    flag: &'static str,
    default: Duration,
    range: std::ops::RangeInclusive<Duration>,
) -> Result<Duration, OptionError> {
    let Some(text) = text else {
        return Ok(default);
    };
    let d = humantime::parse_duration(text).map_err(|e| invalid(flag, format!("{text:?}: {e}")))?;
    if !range.contains(&d) {
        return Err(invalid(
            flag,
            format!(
                "{text:?} must be between {} and {}",
                humantime::format_duration(*range.start()),
                humantime::format_duration(*range.end())
            ),
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> RunArgs {
        RunArgs {
            workload_socket: Some("/run/agent.sock".into()),
            inbound: vec!["127.0.0.1:0=127.0.0.1:8080".into()],
            ..Default::default()
        }
    }

    #[test]
    fn defaults_apply() {
        let c = args().resolve(None).unwrap();
        assert_eq!(c.workload_socket, PathBuf::from("/run/agent.sock"));
        assert_eq!(c.allow, AllowPolicy::any());
        assert!(!c.strict);
        assert_eq!(c.admin, DEFAULT_ADMIN);
        assert_eq!(c.detect_timeout, DEFAULT_DETECT_TIMEOUT);
        assert_eq!(c.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(c.idle_timeout, DEFAULT_IDLE_TIMEOUT);
        assert_eq!(c.inbound[0].target, "127.0.0.1:8080");
    }

    #[test]
    fn a_remote_admin_address_needs_the_explicit_flag_from_any_source() {
        let remote = || RunArgs {
            admin: Some("0.0.0.0:4191".parse().unwrap()),
            ..args()
        };
        let err = remote().resolve(None).unwrap_err().to_string();
        assert!(
            err.starts_with("--admin: 0.0.0.0:4191 is not a loopback address")
                && err.contains("--admin-allow-remote"),
            "{err}"
        );
        for admin in ["10.1.2.3:1", "[::]:1"] {
            let err = RunArgs {
                admin: Some(admin.parse().unwrap()),
                ..args()
            }
            .resolve(None)
            .unwrap_err();
            assert!(err.to_string().starts_with("--admin"), "{admin}: {err}");
        }
        for admin in ["127.0.0.2:1", "[::1]:1", "[::ffff:127.0.0.1]:1"] {
            RunArgs {
                admin: Some(admin.parse().unwrap()),
                ..args()
            }
            .resolve(None)
            .unwrap();
        }
        let c = RunArgs {
            admin_allow_remote: true,
            ..remote()
        }
        .resolve(None)
        .unwrap();
        assert_eq!(c.admin, "0.0.0.0:4191".parse().unwrap());
        // The file's key works too, and a remote address from the file is named as such.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        std::fs::write(&path, "admin = \"0.0.0.0:4191\"\n").unwrap();
        let err = RunArgs {
            config: Some(path.clone()),
            ..args()
        }
        .resolve(None)
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(&format!("(from `admin` in {})", path.display())),
            "{err}"
        );
        std::fs::write(
            &path,
            "admin = \"0.0.0.0:4191\"\nadmin_allow_remote = true\n",
        )
        .unwrap();
        let c = RunArgs {
            config: Some(path),
            ..args()
        }
        .resolve(None)
        .unwrap();
        assert!(!c.admin.ip().is_loopback());
    }

    #[test]
    fn listen_and_target_addresses_use_the_shared_parsers() {
        let c = RunArgs {
            inbound: vec!["[::]:4143=localhost:8080".into()],
            outbound: vec!["127.0.0.1:0=web.shop.svc.cluster.local:80".into()],
            ..args()
        }
        .resolve(None)
        .unwrap();
        assert_eq!(c.inbound[0].target, "localhost:8080");
        assert_eq!(c.outbound[0].destination, "web.shop.svc.cluster.local:80");
        for (inbound, message) in [
            (
                "localhost:4143=127.0.0.1:8080",
                "give an IP address and port to listen on, e.g. 0.0.0.0:8081",
            ),
            (
                "127.0.0.1:0=web",
                "\"web\" is not HOST:PORT: there is no port",
            ),
            ("127.0.0.1:0=::1:80", "an IPv6 address goes in brackets"),
        ] {
            let err = RunArgs {
                inbound: vec![inbound.into()],
                ..args()
            }
            .resolve(None)
            .unwrap_err()
            .to_string();
            assert!(
                err.starts_with("--inbound: ") && err.contains(message),
                "{err}"
            );
        }
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            run: RunArgs,
        }
        for flag in ["--admin", "--metrics"] {
            let err = Cli::try_parse_from(["x", flag, "localhost:4191"])
                .err()
                .unwrap()
                .to_string();
            assert!(
                err.contains("give an IP address and port to listen on"),
                "{flag}: {err}"
            );
        }
    }

    /// Defaults applied after merging (so that the file can still set them) are stated in
    /// the help, and they are the ones the code applies.
    #[test]
    fn help_states_the_defaults_applied_after_parsing() {
        use clap::CommandFactory;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            run: RunArgs,
        }
        let help = Cli::command().render_help().to_string();
        let duration = |d: Duration| humantime::format_duration(d).to_string();
        for (flag, default) in [
            ("--admin", DEFAULT_ADMIN.to_string()),
            ("--detect-timeout", duration(DEFAULT_DETECT_TIMEOUT)),
            ("--handshake-timeout", duration(DEFAULT_HANDSHAKE_TIMEOUT)),
            ("--idle-timeout", duration(DEFAULT_IDLE_TIMEOUT)),
            ("--max-connections", DEFAULT_MAX_CONNECTIONS.to_string()),
            ("--allow", AllowPolicy::any().to_string()),
        ] {
            let start = help.find(&format!("{flag} <")).expect(flag);
            let end = help[start + 2..]
                .find("\n  -")
                .map_or(help.len(), |i| i + start + 2);
            let entry = &help[start..end];
            assert!(
                entry.contains(&format!("[default: {default}]")),
                "{flag} must show [default: {default}]:\n{entry}"
            );
        }
    }

    #[test]
    fn idle_timeout_is_parsed_and_bounded() {
        let c = RunArgs {
            idle_timeout: Some("90s".into()),
            ..args()
        }
        .resolve(None)
        .unwrap();
        assert_eq!(c.idle_timeout, Duration::from_secs(90));
        let err = RunArgs {
            idle_timeout: Some("1ms".into()),
            ..args()
        }
        .resolve(None)
        .unwrap_err();
        assert!(err.to_string().starts_with("--idle-timeout"), "{err}");
    }

    #[test]
    fn outbound_items_keep_their_id_through_comma_splitting() {
        let c = RunArgs {
            outbound: vec![
                "127.0.0.1:1=10.0.0.1:80,id=spiffe://td/api,127.0.0.1:2=db.local:5432".into(),
                "127.0.0.1:3=[::1]:443,id=spiffe://td/web".into(),
            ],
            ..args()
        }
        .resolve(None)
        .unwrap();
        assert_eq!(c.outbound.len(), 3);
        assert_eq!(
            c.outbound[0].expected_id,
            Some(SpiffeId::parse("spiffe://td/api").unwrap())
        );
        assert_eq!(c.outbound[1].destination, "db.local:5432");
        assert_eq!(c.outbound[1].expected_id, None);
        assert_eq!(c.outbound[2].destination, "[::1]:443");
    }

    #[test]
    fn restrictive_allow_implies_strict_and_refuses_opaque_ports() {
        let c = RunArgs {
            allow: Some("spiffe://td/ns/*".into()),
            ..args()
        }
        .resolve(None)
        .unwrap();
        assert!(c.strict);
        let err = RunArgs {
            strict: true,
            opaque_port: vec![3306],
            ..args()
        }
        .resolve(None)
        .unwrap_err();
        assert!(err.to_string().starts_with("--opaque-port"), "{err}");
        assert!(
            RunArgs {
                allow: Some("web".into()),
                ..args()
            }
            .resolve(None)
            .unwrap_err()
            .to_string()
            .starts_with("--allow")
        );
    }

    #[test]
    fn allow_is_a_list_of_rules_from_flag_or_file() {
        use lanyard_svid::tls::AllowRule;
        const PARTNER: &str = "spiffe://partner.example/ns/pay/sa/api";
        // `any` plus a foreign ID: still permissive, so not strict.
        let c = RunArgs {
            allow: Some(format!("any,{PARTNER}")),
            ..args()
        }
        .resolve(None)
        .unwrap();
        assert_eq!(c.allow.rules().len(), 2);
        assert_eq!(
            c.allow.rules()[1],
            AllowRule::Exact(SpiffeId::parse(PARTNER).unwrap())
        );
        assert!(!c.strict);
        assert_eq!(c.allow.to_string(), format!("any,{PARTNER}"));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        let from_file = |toml: &str| {
            std::fs::write(&path, toml).unwrap();
            RunArgs {
                config: Some(path.clone()),
                ..args()
            }
            .resolve(None)
        };
        for toml in [
            format!("allow = \"any,{PARTNER}\"\n"),
            format!("allow = [\"any\", \"{PARTNER}\"]\n"),
        ] {
            let c = from_file(&toml).unwrap();
            assert_eq!(c.allow.to_string(), format!("any,{PARTNER}"), "{toml}");
        }
        let c = from_file("allow = [\"spiffe://td/ns/*\"]\n").unwrap();
        assert!(c.strict, "no `any` rule: strict");
        // A bad rule is named, and so is where it came from.
        let err = from_file("allow = [\"any\", \"partner\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("--allow: rule \"partner\" ")
                && err.ends_with(&format!("(from `allow` in {})", path.display())),
            "{err}"
        );
        let err = from_file("allow = []\n").unwrap_err().to_string();
        assert!(err.starts_with("--allow: no rule"), "{err}");
        let err = from_file("allow = 3\n").unwrap_err().to_string();
        assert!(err.contains("comma-separated rules"), "{err}");
        let err = RunArgs {
            allow: Some("any,spiffe://partner.example".into()),
            ..args()
        }
        .resolve(None)
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("--allow: rule \"spiffe://partner.example\" names a trust domain")
                && err.ends_with("(from the flag or LANYARD_ALLOW)"),
            "{err}"
        );
    }

    #[test]
    fn socket_sources_and_forms() {
        let err = RunArgs {
            workload_socket: None,
            ..args()
        }
        .resolve(None)
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "--workload-socket is required (flag, LANYARD_WORKLOAD_SOCKET or `workload_socket` in --config)"
        );
        let c = RunArgs {
            workload_socket: None,
            ..args()
        }
        .resolve(Some("unix:///tmp/a.sock".into()))
        .unwrap();
        assert_eq!(c.workload_socket, PathBuf::from("/tmp/a.sock"));
        assert_eq!(parse_socket("unix:/x").unwrap(), PathBuf::from("/x"));
        assert!(parse_socket("tcp://127.0.0.1:1").is_err());
        assert!(parse_socket("relative.sock").is_err());
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_fills_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        std::fs::write(
            &path,
            r#"
workload_socket = "/from/file.sock"
outbound = ["127.0.0.1:0=127.0.0.1:9,id=spiffe://td/x"]
opaque_port = [25, 3306]
detect_timeout = "250ms"
metrics = "127.0.0.1:0"
"#,
        )
        .unwrap();
        let c = RunArgs {
            config: Some(path),
            ..args()
        }
        .resolve(None)
        .unwrap();
        assert_eq!(c.workload_socket, PathBuf::from("/run/agent.sock"));
        assert_eq!(c.outbound.len(), 1);
        assert_eq!(c.opaque_ports, [25, 3306]);
        assert_eq!(c.detect_timeout, Duration::from_millis(250));
        assert!(c.metrics.is_some());
    }

    #[test]
    fn a_bad_value_names_where_it_came_from() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        std::fs::write(&path, "inbound = [\"127.0.0.1:1\"]\n").unwrap();
        let from_file = |inbound: Vec<String>| {
            RunArgs {
                config: Some(path.clone()),
                inbound,
                ..args()
            }
            .resolve(None)
            .unwrap_err()
            .to_string()
        };
        let err = from_file(vec![]);
        let in_file = format!("(from `inbound` in {})", path.display());
        assert!(
            err.starts_with("--inbound: ") && err.ends_with(&in_file),
            "{err}"
        );
        let err = from_file(vec!["127.0.0.1:2".into()]);
        assert!(err.ends_with("(from the flag or LANYARD_INBOUND)"), "{err}");
        let err = RunArgs {
            workload_socket: None,
            ..args()
        }
        .resolve(Some("relative.sock".into()))
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("--workload-socket: ")
                && err.ends_with("(from SPIFFE_ENDPOINT_SOCKET)"),
            "{err}"
        );
    }

    #[test]
    fn unknown_file_keys_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        std::fs::write(&path, "inbund = []\n").unwrap();
        let err = RunArgs {
            config: Some(path),
            ..args()
        }
        .resolve(None)
        .unwrap_err();
        assert!(err.to_string().contains("inbund"), "{err}");

        for (bad, flag) in [
            (
                RunArgs {
                    inbound: vec!["127.0.0.1:1".into()],
                    ..args()
                },
                "--inbound",
            ),
            (
                RunArgs {
                    inbound: vec!["127.0.0.1:1=nohost".into()],
                    ..args()
                },
                "--inbound",
            ),
            (
                RunArgs {
                    outbound: vec!["127.0.0.1:1=h:1,sni=x".into()],
                    ..args()
                },
                "--outbound",
            ),
            (
                RunArgs {
                    outbound: vec!["127.0.0.1:1=h:1,id=spiffe://td".into()],
                    ..args()
                },
                "--outbound",
            ),
            (
                RunArgs {
                    detect_timeout: Some("1ms".into()),
                    ..args()
                },
                "--detect-timeout",
            ),
            (
                RunArgs {
                    max_connections: Some(0),
                    ..args()
                },
                "--max-connections",
            ),
        ] {
            let err = bad.resolve(None).unwrap_err().to_string();
            assert!(err.starts_with(flag), "{flag}: {err}");
        }
        let none = RunArgs {
            inbound: vec![],
            ..args()
        };
        assert!(matches!(
            none.resolve(None).unwrap_err(),
            ConfigError::NoListeners
        ));
    }
}
